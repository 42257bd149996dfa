//! bigbrotr engine: CLI support, configuration, pipeline wiring and supervision, database
//! pool and migrations. The embedded PostgreSQL lives in `bigbrotr-pgcluster` (re-exported as
//! [`embedded_pg`], with [`conninfo`]); the test relay, the event generator and the shared test
//! cluster live in `bigbrotr-testkit`, which `bigbrotr bench`, `testrelay` and `gen` use.
//!
//! The run, top down (imports point down or sideways, never up; no cycles): the binary (`main.rs` parses,
//! `cli/` holds one file per subcommand family) → [`service`] (the topology of a long-running
//! sync: every channel and task, one start and shutdown order) → [`registry`] (the relay set
//! and its connector supervisor), [`finder`], [`monitor`], [`analytics`], [`dvm`], [`http`] →
//! [`pipeline`] (verify → dedupe → batch → sink, and the connectors feeding it; also used by
//! the one-shot [`sync`]) → [`faults`] (named stage tasks whose failure stops the run).

pub mod analytics;
pub mod backup;
pub mod bench;
pub mod bench_fleet;
pub mod config;
pub use bigbrotr_pgcluster::conninfo;
pub mod db;
pub mod dvm;
pub mod faults;
pub mod filter_sql;
pub mod finder;
pub mod fleet;
pub mod http;
pub mod monitor;
pub mod pipeline;
pub mod registry;
pub mod service;
pub mod state;
pub mod sync;
pub mod tag_backfill;

pub use bigbrotr_pgcluster as embedded_pg;
pub use bigbrotr_stages as stages;

use bigbrotr_stages::model::{Network, RelayUrl};
use std::path::Path;

/// An open archive. Keep it alive while the database is in use: when bigbrotr started the
/// embedded cluster itself, dropping this stops it.
pub struct Archive {
    /// Writer pool.
    pub pool: db::Pool,
    /// The embedded cluster, when no database URL is configured.
    pub embedded: Option<embedded_pg::EmbeddedPg>,
    /// The connection string in use.
    pub url: String,
}

/// Opens the archive: the configured database, or the embedded cluster when none is
/// configured; applies pending migrations.
pub async fn open_database(cfg: &config::Config) -> anyhow::Result<Archive> {
    let mut embedded = None;
    let url = if cfg.database.url.is_empty() {
        let pg = embedded_pg::EmbeddedPg::start(
            &cfg.embedded.data_dir,
            cfg.embedded.port,
            &cfg.embedded.db_name,
            false,
        )
        .await?;
        let url = pg.url(&cfg.embedded.db_name);
        tracing::info!(
            "embedded PostgreSQL running (data in {}); connect with: psql '{url}'",
            cfg.embedded.data_dir.display()
        );
        embedded = Some(pg);
        url
    } else {
        cfg.database.url.clone()
    };
    let pool = db::connect(&url, cfg.database.pool_size).await?;
    let applied = db::migrate(&pool).await?;
    if !applied.is_empty() {
        tracing::info!(?applied, "applied schema migrations");
    }
    db::ensure_archive_mode(&pool, cfg.archive.bodies, &cfg.name()).await?;
    tag_backfill::configure(&pool, cfg.archive.tag_index).await?;
    Ok(Archive {
        pool,
        embedded,
        url,
    })
}

/// Reads a relay list file: one URL per line, `#` comments; returns the normalized relays and
/// the number of lines refused.
pub fn read_relay_list(path: &Path, allow_local: bool) -> anyhow::Result<(Vec<RelayUrl>, usize)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read relay list {}: {e}", path.display()))?;
    let mut out = Vec::new();
    let mut refused = 0;
    let mut seen = std::collections::HashSet::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        match RelayUrl::parse(line, allow_local) {
            Ok(u) => {
                if seen.insert(u.clone()) {
                    out.push(u);
                }
            }
            Err(e) => {
                refused += 1;
                tracing::debug!(url = line, error = %e, "refused relay URL");
            }
        }
    }
    Ok((out, refused))
}

/// Adds relays to the registry; returns how many were new.
pub async fn register_relays(pool: &db::Pool, relays: &[RelayUrl]) -> anyhow::Result<u64> {
    let rows: Vec<(String, String)> = relays
        .iter()
        .map(|u| (u.to_string(), network_name(u.network()).to_string()))
        .collect();
    db::insert_relays(pool, &rows, stages::model::now_secs()).await
}

/// Loads the seed relays into an empty registry (first start without `init`).
pub async fn seed_if_empty(cfg: &config::Config, pool: &db::Pool) -> anyhow::Result<()> {
    if !db::list_relays(pool).await?.is_empty() {
        return Ok(());
    }
    match read_relay_list(&cfg.seeds.file, cfg.sync.allow_local) {
        Ok((relays, _)) => {
            let n = register_relays(pool, &relays).await?;
            tracing::info!(new = n, file = %cfg.seeds.file.display(), "registry was empty: loaded the seed relays");
        }
        Err(e) => {
            tracing::warn!(error = %e, "registry is empty and the seed list is unreadable (key `seeds.file`)")
        }
    }
    Ok(())
}

fn network_name(n: Network) -> &'static str {
    n.as_str()
}
