//! `[finder]`, `[[finder.http]]` and `[seeds]`: relay discovery and the relay registry.

use super::{check_all, Seconds};
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
    pub cooldown: Seconds,
}

fn default_list_cooldown() -> Seconds {
    Seconds::new(86_400)
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
    pub http_timeout: Seconds,
    /// Candidate validations at once.
    pub validate_concurrency: usize,
    /// Seconds for one validation of a clearnet/local relay (connect, REQ, EOSE).
    pub validate_timeout: Seconds,
    /// Seconds for one validation through the SOCKS5 proxy.
    pub validate_timeout_tor: Seconds,
    /// Failed validations before a candidate is dropped.
    pub max_attempts: u32,
    /// Seconds before a failed candidate is tried again; doubles with each failure.
    pub backoff: Seconds,
    /// Longest wait between two validations of a candidate, seconds.
    pub backoff_max: Seconds,
    /// Most active candidates.
    pub max_candidates: usize,
    /// Seconds after which a dropped candidate is forgotten (and may be found again).
    pub forget_after: Seconds,
    /// Relay hints buffered between dedupe and the finder (beyond: dropped and counted).
    pub hints_channel: usize,
    /// Scan the events archived before the finder ran for relay hints (once).
    pub catchup: bool,
    /// Events per catch-up page.
    pub catchup_batch: usize,
    /// Seconds between re-reads of the relays table and of the relays' limits by the
    /// connector supervisor (newly validated relays are started at once regardless).
    pub refresh: Seconds,
    /// Longest pause of a relay whose connector keeps failing, seconds (the pause starts at
    /// `sync.interval` and doubles).
    pub pause_max: Seconds,
}

impl Default for Finder {
    fn default() -> Self {
        Finder {
            enabled: true,
            http: Vec::new(),
            max_response_bytes: 8 << 20,
            http_timeout: Seconds::new(30),
            validate_concurrency: 20,
            validate_timeout: Seconds::new(15),
            validate_timeout_tor: Seconds::new(60),
            max_attempts: 5,
            backoff: Seconds::new(600),
            backoff_max: Seconds::new(86_400),
            max_candidates: 100_000,
            forget_after: Seconds::new(30 * 86_400),
            hints_channel: 4096,
            catchup: true,
            catchup_batch: 2000,
            refresh: Seconds::new(60),
            pause_max: Seconds::new(86_400),
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
        self.http_timeout
            .check_positive(file, "finder.http_timeout")?;
        self.validate_timeout
            .check_positive(file, "finder.validate_timeout")?;
        self.validate_timeout_tor
            .check_positive(file, "finder.validate_timeout_tor")?;
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
        }
        Ok(())
    }
}
