//! `bigbrotr monitor`: relay health checks, once or every `monitor.interval`.

use bigbrotr::config::Config;
use clap::Args;

/// Flags of `bigbrotr monitor`.
#[derive(Args, Debug)]
pub struct MonitorArgs {
    /// One pass over the registry, print a report and exit; otherwise a pass every
    /// `monitor.interval` seconds until Ctrl-C.
    #[arg(long)]
    once: bool,
}

/// `bigbrotr monitor`.
pub async fn run(cfg: &Config, args: MonitorArgs) -> anyhow::Result<()> {
    let archive = bigbrotr::open_database(cfg).await?;
    let pool = archive.pool.clone();
    bigbrotr::seed_if_empty(cfg, &pool).await?;
    let stop = super::stop_on_signals(cfg);
    if args.once {
        let report = bigbrotr::monitor::run_once(cfg, &pool, None, Some(stop)).await?;
        print!("{}", report.render());
    } else {
        bigbrotr::monitor::run_forever(cfg, &pool, stop).await?;
    }
    Ok(())
}
