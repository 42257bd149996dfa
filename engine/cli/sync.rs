//! `bigbrotr sync`: one pass over some relays (`--once`), or the long-running sync without the
//! monitor and the DVM.

use bigbrotr::config::Config;
use bigbrotr::db::Pool;
use bigbrotr::service::{self, Parts};
use bigbrotr::stages::model::relay::UrlError;
use bigbrotr::stages::model::RelayUrl;
use bigbrotr::sync::{self, SyncOptions};
use clap::Args;

/// Flags of `bigbrotr sync`.
#[derive(Args, Debug)]
pub struct SyncArgs {
    /// One pass: backfill every relay up to now (or --until), drain, exit.
    #[arg(long)]
    once: bool,
    /// Sync this relay (repeatable); default: every relay in the registry.
    #[arg(long = "relay", value_name = "URL")]
    relays: Vec<String>,
    /// Oldest created_at to fetch (unix seconds).
    #[arg(long)]
    since: Option<i64>,
    /// Newest created_at to fetch (unix seconds); an explicit range leaves cursors alone.
    #[arg(long)]
    until: Option<i64>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

impl SyncArgs {
    /// Refuses flags that cannot work, before the configuration is read.
    pub fn check(&self) -> anyhow::Result<()> {
        // An empty range would sync nothing and move no cursor: refuse it before any work.
        if let (Some(since), Some(until)) = (self.since, self.until) {
            if since > until {
                anyhow::bail!(
                    "--since {since} is after --until {until}: the range is empty (since must be <= until)"
                );
            }
        }
        Ok(())
    }
}

/// `bigbrotr sync`.
pub async fn run(cfg: &Config, args: SyncArgs) -> anyhow::Result<()> {
    let archive = bigbrotr::open_database(cfg).await?;
    let pool = archive.pool.clone();
    let mut urls = Vec::new();
    for r in &args.relays {
        let u = RelayUrl::parse(r, cfg.sync.allow_local).map_err(|e| {
            anyhow::anyhow!(
                "--relay {r}: {e}{}",
                if matches!(e, UrlError::Local) {
                    " (set sync.allow_local = true or BIGBROTR_ALLOW_LOCAL=1)"
                } else {
                    ""
                }
            )
        })?;
        urls.push(u);
    }
    bigbrotr::register_relays(&pool, &urls).await?;
    let stop = super::stop_on_signals(cfg);
    if args.once {
        if urls.is_empty() {
            bigbrotr::seed_if_empty(cfg, &pool).await?;
            urls = registry(&pool, cfg).await?;
        }
        let opts = SyncOptions {
            since: args.since,
            until: args.until,
            progress: !args.quiet,
        };
        let report = sync::sync_once(cfg, pool, urls, &opts, Some(stop)).await?;
        print!("{}", report.render());
        return Ok(());
    }
    let http = bigbrotr::http::Http::bind(cfg, &archive.url, pool.clone()).await?;
    let parts = Parts {
        // As in `run`: the statistics views stay current beside a long-running sync.
        analytics: cfg.analytics.enabled,
        http,
        ..Parts::sync(urls)
    };
    service::run(cfg, pool, parts, stop, |_| {}).await
}

/// The registry's relays this process can reach (overlay relays only through a proxy).
async fn registry(pool: &Pool, cfg: &Config) -> anyhow::Result<Vec<RelayUrl>> {
    let rows = bigbrotr::db::list_relays(pool).await?;
    Ok(rows
        .into_iter()
        .filter_map(|(u, _)| RelayUrl::parse(&u, cfg.sync.allow_local).ok())
        .filter(|u| !u.network().is_overlay() || !cfg.net.socks5.is_empty())
        .collect())
}
