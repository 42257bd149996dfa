//! `[dvm]`: the NIP-90 data vending machine answering job requests from the archive.

use super::{check_all, relay_urls, Relay, Seconds, SecretKey};
use bigbrotr_stages::model::RelayUrl;
use serde::Deserialize;

/// `[dvm]`: the NIP-90 data vending machine answering job requests from the archive.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Dvm {
    /// Run the DVM inside `bigbrotr run` (`bigbrotr dvm` runs it alone).
    pub enabled: bool,
    /// Hex secret key signing results, feedback and the announcement; requests must `p`-tag
    /// its public key. Env `BIGBROTR_DVM_PRIVATE_KEY`.
    pub private_key: SecretKey,
    /// Relays read for job requests and published to.
    pub relays: Vec<Relay>,
    /// Most events an events job returns (and relays a relay statistics job lists).
    pub max_limit: u64,
    /// Most values in one filter (`ids`, `authors`, `kinds` and tag values together).
    pub max_filter_values: usize,
    /// Jobs running at once (also the size of the DVM's database pool).
    pub max_concurrent_jobs: usize,
    /// Jobs waiting for a slot; requests beyond get a `busy` error feedback.
    pub max_queued_jobs: usize,
    /// Requests one customer (pubkey) may make per minute on average (0 = no rate limit);
    /// beyond, a `rate-limited` error feedback.
    pub per_customer_jobs_per_minute: u32,
    /// Requests one customer may make at once before the per-minute rate applies.
    pub per_customer_burst: u32,
    /// Jobs of one customer running or waiting at once (0 = only the global bounds).
    pub per_customer_max_jobs: usize,
    /// Customers whose rate and jobs are remembered; beyond, idle ones are forgotten.
    pub max_customers: usize,
    /// Seconds one job may run (also the `statement_timeout` of its queries).
    pub job_timeout: Seconds,
    /// Largest job request accepted (bytes of its JSON).
    pub max_request_bytes: usize,
    /// Largest content of an events job's result (bytes); events past it are left out.
    pub max_result_bytes: usize,
    /// Publish a NIP-89 announcement (kind 31990) with one `k` tag per job kind.
    pub announce: bool,
    /// The announcement's name.
    pub name: String,
    /// The announcement's description.
    pub about: String,
}

impl Default for Dvm {
    fn default() -> Self {
        Dvm {
            enabled: false,
            private_key: SecretKey::default(),
            relays: Vec::new(),
            max_limit: 500,
            max_filter_values: 1000,
            max_concurrent_jobs: 4,
            max_queued_jobs: 16,
            per_customer_jobs_per_minute: 30,
            per_customer_burst: 10,
            per_customer_max_jobs: 4,
            max_customers: 10_000,
            job_timeout: Seconds::new(10),
            max_request_bytes: 64 << 10,
            max_result_bytes: 512 << 10,
            announce: true,
            name: "bigbrotr archive".into(),
            about: "Counts, events and statistics from a bigbrotr Nostr archive (NIP-90 kinds 5900-5903)".into(),
        }
    }
}

impl Dvm {
    /// Checks the `[dvm]` values; errors name `file` and the key.
    pub fn validate(&self, file: &str) -> anyhow::Result<()> {
        self.job_timeout.check_positive(file, "dvm.job_timeout")?;
        check_all(
            file,
            &[
                (self.max_limit >= 1, "dvm.max_limit", "must be at least 1"),
                (
                    self.max_filter_values >= 1,
                    "dvm.max_filter_values",
                    "must be at least 1",
                ),
                (
                    self.max_concurrent_jobs >= 1,
                    "dvm.max_concurrent_jobs",
                    "must be at least 1",
                ),
                (
                    self.max_request_bytes >= 1024,
                    "dvm.max_request_bytes",
                    "must be at least 1024",
                ),
                (
                    self.max_result_bytes >= 1024,
                    "dvm.max_result_bytes",
                    "must be at least 1024",
                ),
            ],
        )?;
        if self.per_customer_burst == 0 {
            anyhow::bail!("{file}: key `dvm.per_customer_burst` must be at least 1");
        }
        // Customers with a job are never forgotten (their job count must hold): the table
        // must have room for every job the DVM can hold at once.
        let jobs = self
            .max_concurrent_jobs
            .saturating_add(self.max_queued_jobs);
        if self.max_customers < jobs {
            anyhow::bail!("{file}: key `dvm.max_customers` must be at least dvm.max_concurrent_jobs + dvm.max_queued_jobs ({jobs})");
        }
        if self.enabled && !self.private_key.is_set() {
            anyhow::bail!("{file}: key `dvm.enabled` needs `dvm.private_key` (or BIGBROTR_DVM_PRIVATE_KEY) to sign the answers");
        }
        if self.enabled && self.relays.is_empty() {
            anyhow::bail!("{file}: key `dvm.enabled` needs `dvm.relays` to read job requests from");
        }
        Ok(())
    }

    /// The signing key, when `private_key` is a valid hex secret key.
    pub fn keypair(&self) -> Option<secp256k1::Keypair> {
        self.private_key.keypair()
    }

    /// `relays`, as the stages take them.
    pub fn relay_urls(&self) -> Vec<RelayUrl> {
        relay_urls(&self.relays)
    }
}
