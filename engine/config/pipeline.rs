//! `[pipeline]` and `[batch]`: channel bounds, the verify pool, batching before the sink.

use super::{check_all, Config, Millis};
use bigbrotr_stages::batch::BatchConfig;
use bigbrotr_stages::verify::VerifyConfig;
use serde::Deserialize;

/// `[pipeline]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Pipeline {
    /// connect → verify channel bound (events).
    pub raw_channel: usize,
    /// verify → dedupe channel bound (events).
    pub verified_channel: usize,
    /// dedupe → batch channel bound (items).
    pub item_channel: usize,
    /// batch → sink channel bound (batches).
    pub batch_channel: usize,
    /// Batches the sink writes at once, each on its own connection.
    pub sink_writers: usize,
    /// Verify threads (0 = one per core).
    pub verify_threads: usize,
    /// Pin verify threads to cores.
    pub pin_cores: bool,
    /// Verified (id, sig) pairs remembered to skip re-verification.
    pub seen_capacity: usize,
    /// Ids remembered by dedupe.
    pub dedupe_capacity: usize,
    /// Author keys cached per verify thread.
    pub pubkey_cache: usize,
}

impl Default for Pipeline {
    fn default() -> Self {
        Pipeline {
            raw_channel: 4096,
            verified_channel: 4096,
            item_channel: 4096,
            batch_channel: 2,
            sink_writers: 2,
            verify_threads: 0,
            pin_cores: true,
            seen_capacity: 2_000_000,
            dedupe_capacity: 2_000_000,
            pubkey_cache: 65_536,
        }
    }
}

/// `[batch]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Batch {
    /// Rows (bodies + sightings) per COPY batch.
    pub max_rows: usize,
    /// Longest a row waits for its batch, in milliseconds.
    pub max_age_ms: Millis,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            max_rows: 10_000,
            max_age_ms: Millis::new(500),
        }
    }
}

impl Pipeline {
    /// Checks the `[pipeline]` values; errors name `file` and the key.
    pub fn validate(&self, file: &str) -> anyhow::Result<()> {
        check_all(
            file,
            &[
                (
                    self.raw_channel >= 1,
                    "pipeline.raw_channel",
                    "must be at least 1",
                ),
                (
                    self.verified_channel >= 1,
                    "pipeline.verified_channel",
                    "must be at least 1",
                ),
                (
                    self.item_channel >= 1,
                    "pipeline.item_channel",
                    "must be at least 1",
                ),
                (
                    self.batch_channel >= 1,
                    "pipeline.batch_channel",
                    "must be at least 1",
                ),
                (
                    self.sink_writers >= 1,
                    "pipeline.sink_writers",
                    "must be at least 1",
                ),
            ],
        )
    }
}

impl Batch {
    /// Checks the `[batch]` values; errors name `file` and the key.
    pub fn validate(&self, file: &str) -> anyhow::Result<()> {
        check_all(
            file,
            &[(self.max_rows >= 1, "batch.max_rows", "must be at least 1")],
        )
    }
}

impl Config {
    /// Verify pool settings.
    pub fn verify(&self) -> VerifyConfig {
        VerifyConfig {
            threads: self.pipeline.verify_threads,
            pin_cores: self.pipeline.pin_cores,
            seen_capacity: self.pipeline.seen_capacity,
            pubkey_cache: self.pipeline.pubkey_cache,
        }
    }

    /// Batch stage settings.
    pub fn batch(&self) -> BatchConfig {
        BatchConfig {
            max_rows: self.batch.max_rows,
            max_age: self.batch.max_age_ms.get(),
        }
    }
}
