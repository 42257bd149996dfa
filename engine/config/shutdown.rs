//! `[shutdown]`: how long a stop may take.

use super::Seconds;
use serde::Deserialize;
use std::time::Duration;

/// `[shutdown]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Shutdown {
    /// Seconds from the first SIGINT/SIGTERM to exit, whatever is still running: work not
    /// committed by then is fetched again next time (no cursor ever claims it).
    pub grace: Seconds,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            grace: Seconds::new(5),
        }
    }
}

impl Shutdown {
    /// The grace period.
    pub fn grace(&self) -> Duration {
        self.grace.get()
    }
}
