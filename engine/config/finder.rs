//! `[finder]`, `[[finder.http]]` and `[seeds]`: relay discovery and the relay registry.

use super::{check_all, check_seconds, Zero};
use serde::Deserialize;
use std::path::PathBuf;

/// `[[finder.http]]`: one HTTP relay list.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FinderHttp {
    /// The list's http(s) URL.
    pub url: String,
    /// Dot-separated path to the array of relays in the JSON document ("" = top level).
    #[serde(default)]
    pub json_path: String,
    /// Seconds between two fetches of this list.
    #[serde(default = "default_list_cooldown")]
    pub cooldown: f64,
}

fn default_list_cooldown() -> f64 {
    86_400.0
}

/// `[finder]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Finder {
    /// Run the finder inside `run` (and `sync` over the whole registry).
    pub enabled: bool,
    /// HTTP relay lists.
    pub http: Vec<FinderHttp>,
    /// Largest HTTP list response (bytes).
    pub max_response_bytes: usize,
    /// Seconds allowed for one HTTP list fetch.
    pub http_timeout: f64,
    /// Candidate validations at once.
    pub validate_concurrency: usize,
    /// Seconds for one validation of a clearnet/local relay (connect, REQ, EOSE).
    pub validate_timeout: f64,
    /// Seconds for one validation through the SOCKS5 proxy.
    pub validate_timeout_tor: f64,
    /// Failed validations before a candidate is dropped.
    pub max_attempts: u32,
    /// Seconds before a failed candidate is tried again; doubles with each failure.
    pub backoff: f64,
    /// Longest wait between two validations of a candidate, seconds.
    pub backoff_max: f64,
    /// Most active candidates.
    pub max_candidates: usize,
    /// Seconds after which a dropped candidate is forgotten (and may be found again).
    pub forget_after: f64,
    /// Relay hints buffered between dedupe and the finder (beyond: dropped and counted).
    pub hints_channel: usize,
    /// Scan the events archived before the finder ran for relay hints (once).
    pub catchup: bool,
    /// Events per catch-up page.
    pub catchup_batch: usize,
    /// Seconds between re-reads of the relays table and of the relays' limits by the
    /// connector supervisor (newly validated relays are started at once regardless).
    pub refresh: f64,
    /// Longest pause of a relay whose connector keeps failing, seconds (the pause starts at
    /// `sync.interval` and doubles).
    pub pause_max: f64,
}

impl Default for Finder {
    fn default() -> Self {
        Finder {
            enabled: true,
            http: Vec::new(),
            max_response_bytes: 8 << 20,
            http_timeout: 30.0,
            validate_concurrency: 20,
            validate_timeout: 15.0,
            validate_timeout_tor: 60.0,
            max_attempts: 5,
            backoff: 600.0,
            backoff_max: 86_400.0,
            max_candidates: 100_000,
            forget_after: 30.0 * 86_400.0,
            hints_channel: 4096,
            catchup: true,
            catchup_batch: 2000,
            refresh: 60.0,
            pause_max: 86_400.0,
        }
    }
}

/// `[seeds]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Seeds {
    /// One relay URL per line; `#` comments.
    pub file: PathBuf,
}

impl Default for Seeds {
    fn default() -> Self {
        Seeds {
            file: PathBuf::from("seeds/relays.txt"),
        }
    }
}

impl Finder {
    /// Checks the `[finder]` values; errors name `file` and the key.
    pub fn validate(&self, file: &str) -> anyhow::Result<()> {
        let durations = [
            ("finder.http_timeout", self.http_timeout, Zero::Refused),
            (
                "finder.validate_timeout",
                self.validate_timeout,
                Zero::Refused,
            ),
            (
                "finder.validate_timeout_tor",
                self.validate_timeout_tor,
                Zero::Refused,
            ),
            ("finder.backoff", self.backoff, Zero::Allowed),
            ("finder.backoff_max", self.backoff_max, Zero::Allowed),
            ("finder.forget_after", self.forget_after, Zero::Allowed),
            ("finder.refresh", self.refresh, Zero::Allowed),
            ("finder.pause_max", self.pause_max, Zero::Allowed),
        ];
        for (key, v, zero) in durations {
            check_seconds(file, key, v, zero)?;
        }
        check_all(
            file,
            &[
                (
                    self.validate_concurrency >= 1,
                    "finder.validate_concurrency",
                    "must be at least 1",
                ),
                (
                    self.max_attempts >= 1,
                    "finder.max_attempts",
                    "must be at least 1",
                ),
                (
                    self.hints_channel >= 1,
                    "finder.hints_channel",
                    "must be at least 1",
                ),
                (
                    self.catchup_batch >= 1,
                    "finder.catchup_batch",
                    "must be at least 1",
                ),
                (
                    self.max_response_bytes >= 1,
                    "finder.max_response_bytes",
                    "must be at least 1",
                ),
            ],
        )?;
        for (i, h) in self.http.iter().enumerate() {
            let lower = h.url.to_ascii_lowercase();
            if !(lower.starts_with("http://") || lower.starts_with("https://")) {
                anyhow::bail!(
                    "{file}: key `finder.http[{i}].url` must be an http:// or https:// URL, got {:?}",
                    h.url
                );
            }
            check_seconds(
                file,
                &format!("finder.http[{i}].cooldown"),
                h.cooldown,
                Zero::Allowed,
            )?;
        }
        Ok(())
    }
}
