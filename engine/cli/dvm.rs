//! `bigbrotr dvm`: answer NIP-90 job requests from the archive until Ctrl-C.

use bigbrotr::config::Config;

/// `bigbrotr dvm`.
pub async fn run(cfg: &Config) -> anyhow::Result<()> {
    // A missing key or relay list fails before the database is started.
    bigbrotr::dvm::settings(cfg)?;
    let archive = bigbrotr::open_database(cfg).await?;
    let stop = super::stop_on_signals(cfg);
    bigbrotr::dvm::run_forever(cfg, &archive.url, stop).await
}
