//! `[analytics]`: the summary refresher and the orphan cleanup.

use super::{check_all, Seconds};
use serde::Deserialize;

/// `[analytics]`: the refresher of the summary tables behind the statistics views
/// (sql/008_summaries.sql) and the scheduled orphan cleanup.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Analytics {
    /// Run the refresher and the orphan cleanup inside `bigbrotr run`.
    pub enabled: bool,
    /// Seconds between two refreshes.
    pub interval: Seconds,
    /// Rows folded into the summaries per transaction.
    pub batch: u32,
    /// Seconds between two orphan cleanups (0 = never).
    pub orphan_interval: Seconds,
    /// Rows deleted per orphan cleanup transaction.
    pub orphan_batch: u32,
    /// Rows not folded yet that the statistics views merge (past them, the views lag).
    pub view_tail: u32,
}

impl Default for Analytics {
    fn default() -> Self {
        Analytics {
            enabled: true,
            interval: Seconds::new(5),
            batch: 50_000,
            orphan_interval: Seconds::new(86_400),
            orphan_batch: 10_000,
            view_tail: 2_000,
        }
    }
}

impl Analytics {
    /// Checks the `[analytics]` values; errors name `file` and the key.
    pub fn validate(&self, file: &str) -> anyhow::Result<()> {
        self.interval.check_positive(file, "analytics.interval")?;
        check_all(
            file,
            &[
                (self.batch >= 1, "analytics.batch", "must be at least 1"),
                (
                    self.orphan_batch >= 1,
                    "analytics.orphan_batch",
                    "must be at least 1",
                ),
            ],
        )
    }
}
