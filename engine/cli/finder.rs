//! `bigbrotr finder --once`: one discovery pass (the continuous finder runs inside `run`).

use bigbrotr::config::Config;
use clap::Args;

/// Flags of `bigbrotr finder`.
#[derive(Args, Debug)]
pub struct FinderArgs {
    /// Run every source once, validate the due candidates, print a report and exit.
    #[arg(long)]
    once: bool,
}

/// `bigbrotr finder`.
pub async fn run(cfg: &Config, args: FinderArgs) -> anyhow::Result<()> {
    if !args.once {
        anyhow::bail!(
            "the finder runs continuously inside `bigbrotr run`; use `bigbrotr finder --once` for one pass"
        );
    }
    let archive = bigbrotr::open_database(cfg).await?;
    let report = bigbrotr::finder::run_once(cfg, archive.pool.clone()).await?;
    print!("{}", report.render());
    Ok(())
}
