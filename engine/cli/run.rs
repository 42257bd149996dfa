//! `bigbrotr run`: the long-running service, every stage of [`bigbrotr::service`].

use bigbrotr::config::Config;
use bigbrotr::service::{self, Parts};

/// `bigbrotr run`.
pub async fn run(cfg: &Config) -> anyhow::Result<()> {
    let archive = bigbrotr::open_database(cfg).await?;
    let pool = archive.pool.clone();
    bigbrotr::seed_if_empty(cfg, &pool).await?;
    let stop = super::stop_on_signals(cfg);
    let http = bigbrotr::http::Http::bind(cfg, &archive.url, pool.clone()).await?;
    let parts = Parts {
        // The monitor's findings reach the connectors through the registry.
        monitor: cfg.monitor.enabled,
        analytics: cfg.analytics.enabled,
        // A bad `[dvm]` fails the start rather than going unnoticed.
        dvm: cfg.dvm.enabled.then(|| archive.url.clone()),
        http,
        ..Parts::sync(Vec::new())
    };
    service::run(cfg, pool, parts, stop, |_| {}).await
}
