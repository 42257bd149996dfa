//! `bigbrotr fleet status`: the workers sharing this archive, their relays and roles.

use bigbrotr::config::Config;
use clap::Subcommand;

/// `bigbrotr fleet …`
#[derive(Subcommand, Debug)]
pub enum FleetCmd {
    /// Workers (live first), the relay leases and roles each holds, relays nobody leases.
    Status,
}

/// `bigbrotr fleet`.
pub async fn run(cfg: &Config, cmd: FleetCmd) -> anyhow::Result<()> {
    match cmd {
        FleetCmd::Status => {
            let archive = bigbrotr::open_database(cfg).await?;
            let (workers, unleased) = bigbrotr::fleet::status(&archive.pool).await?;
            print!("{}", render(&workers, unleased));
            Ok(())
        }
    }
}

fn render(workers: &[bigbrotr::fleet::WorkerStatus], unleased: i64) -> String {
    let live = workers.iter().filter(|w| w.live).count();
    let mut s = format!(
        "{live} live workers ({} known); {unleased} registry relays leased by no one\n",
        workers.len()
    );
    s.push_str(&format!(
        "{:<32} {:>5} {:>8} {:>7} {:>9}  {}\n",
        "worker", "live", "pid", "relays", "beat_age", "roles"
    ));
    for w in workers {
        s.push_str(&format!(
            "{:<32} {:>5} {:>8} {:>7} {:>8.1}s  {}{}\n",
            w.worker,
            if w.live { "yes" } else { "no" },
            w.pid,
            w.relays,
            w.heartbeat_age,
            if w.roles.is_empty() {
                "-".to_string()
            } else {
                w.roles.join(",")
            },
            if w.registry { "" } else { " (--relay list)" },
        ));
    }
    s
}
