//! `[fleet]`: several bigbrotr processes sharing one archive (relay and role leases held in
//! PostgreSQL, see `crate::fleet`).

use super::{check_all, Seconds};
use serde::Deserialize;
use std::time::Duration;

/// `[fleet]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Fleet {
    /// This worker's name in the lease tables; empty: `<host>-<pid>`.
    pub worker: String,
    /// Seconds a lease lasts without a heartbeat: how long a dead worker's relays and roles
    /// wait before another worker takes them.
    pub lease_ttl_secs: Seconds,
    /// Seconds between heartbeats (lease renewals and rebalancing); below `lease_ttl_secs`.
    pub heartbeat_secs: Seconds,
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet {
            worker: String::new(),
            lease_ttl_secs: Seconds::new(30),
            heartbeat_secs: Seconds::new(10),
        }
    }
}

impl Fleet {
    /// Checks the `[fleet]` values; errors name `file` and the key.
    pub fn validate(&self, file: &str) -> anyhow::Result<()> {
        self.lease_ttl_secs
            .check_positive(file, "fleet.lease_ttl_secs")?;
        self.heartbeat_secs
            .check_positive(file, "fleet.heartbeat_secs")?;
        check_all(
            file,
            &[
                (
                    self.heartbeat_secs < self.lease_ttl_secs,
                    "fleet.heartbeat_secs",
                    "must be below fleet.lease_ttl_secs (a lease must be renewed before it expires)",
                ),
                (
                    self.worker.len() <= 200 && !self.worker.chars().any(char::is_control),
                    "fleet.worker",
                    "must be at most 200 characters, without control characters",
                ),
            ],
        )
    }

    /// How long a lease lasts without a heartbeat.
    pub fn ttl(&self) -> Duration {
        self.lease_ttl_secs.get()
    }

    /// Time between heartbeats.
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat_secs.get()
    }
}
