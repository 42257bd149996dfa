//! `[shutdown]`: how long a stop may take.

use super::{check_seconds, secs, Zero};
use serde::Deserialize;
use std::time::Duration;

/// `[shutdown]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Shutdown {
    /// Seconds from the first SIGINT/SIGTERM to exit, whatever is still running: work not
    /// committed by then is fetched again next time (no cursor ever claims it).
    pub grace: f64,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown { grace: 5.0 }
    }
}

impl Shutdown {
    /// Checks the `[shutdown]` values; errors name `file` and the key.
    pub fn validate(&self, file: &str) -> anyhow::Result<()> {
        check_seconds(file, "shutdown.grace", self.grace, Zero::Allowed)
    }

    /// The grace period.
    pub fn grace(&self) -> Duration {
        secs(self.grace)
    }
}
