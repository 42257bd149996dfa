//! One file per subcommand family, like strfry's one `cmd_*.cpp` per command: each holds its
//! flags and what the subcommand does; `main.rs` only parses and dispatches.

pub mod analytics;
pub mod bench;
pub mod config;
pub mod db;
pub mod dvm;
pub mod finder;
pub mod fleet;
pub mod monitor;
pub mod run;
pub mod sync;
pub mod tools;

use bigbrotr::config::Config;
use tokio::sync::watch;

/// Where the configuration came from, for messages.
pub fn source(cfg: &Config) -> String {
    cfg.source
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "(built-in defaults)".into())
}

/// A stop signal that SIGINT/SIGTERM turn true (see `sync::stop_on_signals`).
pub fn stop_on_signals(cfg: &Config) -> watch::Receiver<bool> {
    let (stop_tx, stop_rx) = watch::channel(false);
    bigbrotr::sync::stop_on_signals(stop_tx, cfg.shutdown.grace());
    stop_rx
}
