//! The finder wired to the engine: its settings from `[finder]`, `[sync]`, `[net]` and
//! `[seeds]`, its table, the long-running task inside `run`, and `bigbrotr finder --once`.

use crate::config::Config;
use crate::db::Pool;
use anyhow::Context;
use bigbrotr_stages::finder::sources::HttpSource;
use bigbrotr_stages::finder::{Finder, FinderConfig, FinderStats, OnceReport};
use bigbrotr_stages::model::RelayUrl;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The candidates table (sql/006_candidates.sql, written to be re-applied safely).
const SCHEMA: &str = include_str!("../sql/006_candidates.sql");

/// Advisory lock serializing [`ensure_schema`] across engines ("bbfinder" in ASCII).
const SCHEMA_LOCK_KEY: i64 = 0x6262_6669_6e64_6572;

/// Creates the finder's table if it is missing (idempotent; safe with concurrent engines).
pub async fn ensure_schema(pool: &Pool) -> anyhow::Result<()> {
    let mut c = pool
        .get()
        .await
        .context("cannot get a database connection for the finder's table")?;
    let tx = c.transaction().await.context("begin")?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK_KEY])
        .await
        .context("cannot take the finder schema lock")?;
    tx.batch_execute(SCHEMA)
        .await
        .context("cannot create the candidates table (sql/006_candidates.sql)")?;
    tx.commit().await.context("commit")?;
    Ok(())
}

/// The finder's settings from the configuration.
pub fn finder_config(cfg: &Config) -> FinderConfig {
    let f = &cfg.finder;
    FinderConfig {
        allow_local: cfg.sync.allow_local,
        seed_file: Some(cfg.seeds.file.clone()),
        http: f
            .http
            .iter()
            .map(|h| HttpSource {
                url: h.url.clone(),
                json_path: h.json_path.clone(),
                cooldown: h.cooldown.get(),
            })
            .collect(),
        max_response_bytes: f.max_response_bytes,
        http_timeout: f.http_timeout.get(),
        transport: cfg.net.transport(),
        validate_concurrency: f.validate_concurrency.max(1),
        validate_timeout: f.validate_timeout.get(),
        validate_timeout_overlay: f.validate_timeout_tor.get(),
        max_attempts: f.max_attempts.max(1),
        backoff: f.backoff.get().as_secs_f64(),
        backoff_max: f.backoff_max.get().as_secs_f64(),
        max_candidates: f.max_candidates,
        forget_after: f.forget_after.get().as_secs_f64(),
        catchup: f.catchup,
        catchup_batch: f.catchup_batch.max(1),
    }
}

/// The long-running finder from the configuration; validated relays are announced on `found`.
pub fn new(cfg: &Config, pool: Pool, found: Option<flume::Sender<RelayUrl>>) -> Finder {
    Finder::new(finder_config(cfg), pool, found)
}

/// Starts the long-running finder: hint intake from `hints`, sources on their cooldowns,
/// the archive catch-up, and the validator; validated relays are announced on `found`.
pub fn spawn(
    cfg: &Config,
    pool: Pool,
    hints: Option<flume::Receiver<String>>,
    found: Option<flume::Sender<RelayUrl>>,
    stop: watch::Receiver<bool>,
) -> (JoinHandle<()>, Arc<FinderStats>) {
    let finder = new(cfg, pool, found);
    let stats = finder.stats.clone();
    (tokio::spawn(finder.run(hints, stop)), stats)
}

/// `bigbrotr finder --once`: the seed file, every HTTP list, the archive catch-up, then one
/// validation of every due candidate.
pub async fn run_once(cfg: &Config, pool: Pool) -> anyhow::Result<OnceReport> {
    ensure_schema(&pool).await?;
    let finder = Finder::new(finder_config(cfg), pool, None);
    finder.run_once().await.map_err(|e| anyhow::anyhow!(e))
}
