//! Configuration: `config/bigbrotr.toml` (every key documented there), environment overrides,
//! validation. Errors name the file and the key.
//!
//! One file per section: each holds the section's keys with their defaults (the only place
//! a default is written besides the shipped file, which a test keeps equal to them), its
//! checks, and its conversion into the settings of the stage it configures. Everything is
//! checked once, at load; the conversions then only translate.

mod analytics;
mod archive;
mod database;
mod dvm;
mod finder;
mod fleet;
mod http;
mod monitor;
mod net;
mod pipeline;
mod shutdown;
mod sync;
mod types;

pub use analytics::Analytics;
pub use archive::Archive;
pub use database::{Database, Embedded};
pub use dvm::Dvm;
pub use finder::{Finder, FinderHttp, Seeds};
pub use fleet::Fleet;
pub use http::Http;
pub use monitor::Monitor;
pub use net::Net;
pub use pipeline::{Batch, Pipeline};
pub use shutdown::Shutdown;
pub use sync::{NetworkTimeouts, Override, Sync, Timeouts};
pub use types::{relay_urls, Millis, Relay, Seconds, SecretKey, MAX_SECONDS};

use anyhow::{bail, Context};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the archive lives.
    pub database: Database,
    /// The self-managed PostgreSQL used when `database.url` is empty.
    pub embedded: Embedded,
    /// Channel bounds and verify pool.
    pub pipeline: Pipeline,
    /// Batching before the COPY sink.
    pub batch: Batch,
    /// How relays are synced.
    pub sync: Sync,
    /// Socket limits and proxy.
    pub net: Net,
    /// Seed relay list.
    pub seeds: Seeds,
    /// Relay health checks (NIP-11, NIP-66) and NIP-66 publishing.
    pub monitor: Monitor,
    /// Relay discovery (seed file, HTTP lists, hints in events) and the relay registry.
    pub finder: Finder,
    /// Health, readiness, metrics and the read-only REST API.
    pub http: Http,
    /// The summary refresher behind the statistics views, and the orphan cleanup.
    pub analytics: Analytics,
    /// The NIP-90 data vending machine answering job requests from the archive.
    pub dvm: Dvm,
    /// How long a stop may take.
    pub shutdown: Shutdown,
    /// What of each event is kept (whole, or metadata only).
    pub archive: Archive,
    /// Several processes sharing one archive: worker name, lease TTL, heartbeat.
    pub fleet: Fleet,
    /// The file this was read from (for error messages).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// Reads a boolean environment variable: true/false/1/0 (any case). Anything else is an
/// error naming the variable, so a typo does not silently mean "false".
fn env_bool(name: &str, value: &str) -> anyhow::Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => bail!("environment variable {name}={value:?} must be true, false, 1 or 0"),
    }
}

/// Fails naming `file` and the first key of `checks` (`(holds, key, why)`) that does not hold.
pub(crate) fn check_all(file: &str, checks: &[(bool, &str, &str)]) -> anyhow::Result<()> {
    match checks.iter().find(|(ok, _, _)| !ok) {
        Some((_, key, why)) => bail!("{file}: key `{key}` {why}"),
        None => Ok(()),
    }
}

impl Config {
    /// Reads `path`, or `config/bigbrotr.toml` if present, or the defaults; then applies
    /// `BIGBROTR_*` environment overrides and validates.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let default_path = Path::new("config/bigbrotr.toml");
        let chosen = match path {
            Some(p) => Some(p.to_path_buf()),
            None if default_path.exists() => Some(default_path.to_path_buf()),
            None => None,
        };
        let mut cfg = match &chosen {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read configuration file {}", p.display()))?;
                Self::parse(&text, p)?
            }
            None => Config::default(),
        };
        cfg.source = chosen;
        cfg.apply_env()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses TOML text; errors name `file` and the offending key.
    pub fn parse(text: &str, file: &Path) -> anyhow::Result<Config> {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let msg = inner.message().to_string();
            let line = inner
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
            match line {
                Some(l) => anyhow::anyhow!("{}:{l}: key `{key}`: {msg}", file.display()),
                None => anyhow::anyhow!("{}: key `{key}`: {msg}", file.display()),
            }
        })
    }

    /// The file this configuration was read from, or "(built-in defaults)": for error messages.
    pub fn name(&self) -> String {
        match &self.source {
            Some(p) => p.display().to_string(),
            None => "(built-in defaults)".into(),
        }
    }

    fn apply_env(&mut self) -> anyhow::Result<()> {
        if let Ok(v) = std::env::var("BIGBROTR_DATABASE_URL") {
            self.database.url = v;
        }
        if let Ok(v) = std::env::var("BIGBROTR_DATA_DIR") {
            self.embedded.data_dir = PathBuf::from(v);
        }
        if let Ok(v) = std::env::var("BIGBROTR_SOCKS5") {
            self.net.socks5 = v;
        }
        if let Ok(v) = std::env::var("BIGBROTR_SEEDS") {
            self.seeds.file = PathBuf::from(v);
        }
        if let Ok(v) = std::env::var("BIGBROTR_HTTP_LISTEN") {
            self.http.listen = v;
        }
        if let Ok(v) = std::env::var("BIGBROTR_HTTP_READONLY_DATABASE_URL") {
            self.http.readonly_database_url = v;
        }
        if let Ok(v) = std::env::var("BIGBROTR_ALLOW_LOCAL") {
            self.sync.allow_local = env_bool("BIGBROTR_ALLOW_LOCAL", &v)?;
        }
        if let Ok(v) = std::env::var("BIGBROTR_MONITOR_PRIVATE_KEY") {
            self.monitor.private_key = SecretKey::parse(&v).map_err(|e| {
                anyhow::anyhow!("environment variable BIGBROTR_MONITOR_PRIVATE_KEY {e}")
            })?;
        }
        if let Ok(v) = std::env::var("BIGBROTR_DVM_PRIVATE_KEY") {
            self.dvm.private_key = SecretKey::parse(&v).map_err(|e| {
                anyhow::anyhow!("environment variable BIGBROTR_DVM_PRIVATE_KEY {e}")
            })?;
        }
        Ok(())
    }

    /// Checks values that parse but make no sense: each section's own keys, then the few
    /// bounds that tie two sections together.
    pub fn validate(&self) -> anyhow::Result<()> {
        let f = self.name();
        self.database.validate(&f)?;
        self.pipeline.validate(&f)?;
        self.batch.validate(&f)?;
        self.sync.validate(&f)?;
        self.net.validate(&f)?;
        self.http.validate(&f)?;
        self.finder.validate(&f)?;
        self.monitor.validate(&f)?;
        self.analytics.validate(&f)?;
        self.dvm.validate(&f)?;
        self.archive.validate(&f)?;
        self.fleet.validate(&f)?;
        check_all(
            &f,
            &[
                (
                    self.pipeline.sink_writers < self.database.pool_size as usize,
                    "pipeline.sink_writers",
                    "must be below database.pool_size (cursor writes need a connection too)",
                ),
                (
                    self.sync.max_event_bytes <= self.net.max_message_bytes,
                    "sync.max_event_bytes",
                    "must not exceed net.max_message_bytes",
                ),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bigbrotr_stages::model::RelayUrl;
    use std::time::Duration;

    #[test]
    fn shipped_config_parses_and_validates() {
        let text = include_str!("../../config/bigbrotr.toml");
        let cfg = Config::parse(text, Path::new("config/bigbrotr.toml")).expect("parse");
        cfg.validate().expect("valid");
    }

    /// The shipped file documents the defaults; it must say what the binary does without it.
    #[test]
    fn shipped_config_equals_the_built_in_defaults() {
        let text = include_str!("../../config/bigbrotr.toml");
        let shipped = Config::parse(text, Path::new("config/bigbrotr.toml")).expect("parse");
        let defaults = Config::default();
        for (section, a, b) in [
            (
                "database",
                format!("{:?}", shipped.database),
                format!("{:?}", defaults.database),
            ),
            (
                "embedded",
                format!("{:?}", shipped.embedded),
                format!("{:?}", defaults.embedded),
            ),
            (
                "pipeline",
                format!("{:?}", shipped.pipeline),
                format!("{:?}", defaults.pipeline),
            ),
            (
                "batch",
                format!("{:?}", shipped.batch),
                format!("{:?}", defaults.batch),
            ),
            (
                "sync",
                format!("{:?}", shipped.sync),
                format!("{:?}", defaults.sync),
            ),
            (
                "net",
                format!("{:?}", shipped.net),
                format!("{:?}", defaults.net),
            ),
            (
                "seeds",
                format!("{:?}", shipped.seeds),
                format!("{:?}", defaults.seeds),
            ),
            (
                "monitor",
                format!("{:?}", shipped.monitor),
                format!("{:?}", defaults.monitor),
            ),
            (
                "finder",
                format!("{:?}", shipped.finder),
                format!("{:?}", defaults.finder),
            ),
            (
                "http",
                format!("{:?}", shipped.http),
                format!("{:?}", defaults.http),
            ),
            (
                "analytics",
                format!("{:?}", shipped.analytics),
                format!("{:?}", defaults.analytics),
            ),
            (
                "dvm",
                format!("{:?}", shipped.dvm),
                format!("{:?}", defaults.dvm),
            ),
            (
                "shutdown",
                format!("{:?}", shipped.shutdown),
                format!("{:?}", defaults.shutdown),
            ),
            (
                "archive",
                format!("{:?}", shipped.archive),
                format!("{:?}", defaults.archive),
            ),
            (
                "fleet",
                format!("{:?}", shipped.fleet),
                format!("{:?}", defaults.fleet),
            ),
        ] {
            assert_eq!(
                a, b,
                "[{section}] in config/bigbrotr.toml differs from the defaults"
            );
        }
        assert!(
            shipped == defaults,
            "config/bigbrotr.toml differs from the defaults"
        );
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = Config::parse("[sync]\nlimit = \"many\"\n", Path::new("x.toml"))
            .expect_err("bad type")
            .to_string();
        assert!(e.contains("x.toml") && e.contains("sync.limit"), "{e}");
        let e = Config::parse("[sync]\nlimitt = 5\n", Path::new("x.toml"))
            .expect_err("unknown key")
            .to_string();
        assert!(e.contains("x.toml") && e.contains("limitt"), "{e}");
        let mut c = Config::default();
        c.sync.limit = 0;
        c.source = Some(PathBuf::from("y.toml"));
        let e = c.validate().expect_err("zero").to_string();
        assert!(e.contains("y.toml") && e.contains("sync.limit"), "{e}");
    }

    /// Parses and validates `text` as file x.toml, returning the error message.
    fn load_error(text: &str) -> String {
        let parsed = Config::parse(text, Path::new("x.toml")).and_then(|mut c| {
            c.source = Some(PathBuf::from("x.toml"));
            c.validate()
        });
        format!("{:#}", parsed.expect_err(text))
    }

    #[test]
    fn non_finite_negative_and_huge_durations_are_refused_naming_the_key() {
        let cases = [
            (
                "[sync.timeouts.clearnet]\nconnect = inf\n",
                "sync.timeouts.clearnet.connect",
            ),
            (
                "[sync.timeouts.tor]\nidle = nan\n",
                "sync.timeouts.tor.idle",
            ),
            (
                "[sync.timeouts.clearnet]\nrelay = -1.0\n",
                "sync.timeouts.clearnet.relay",
            ),
            (
                "[sync.timeouts.clearnet]\nconnect = 0\n",
                "sync.timeouts.clearnet.connect",
            ),
            ("[sync]\ninterval = 1e300\n", "sync.interval"),
            ("[sync]\nlive_checkpoint = -inf\n", "sync.live_checkpoint"),
            (
                "[[sync.overrides]]\nurl = \"wss://a.example\"\nidle = inf\n",
                "sync.overrides[0].idle",
            ),
            ("[finder]\nbackoff_max = 1e20\n", "finder.backoff_max"),
            (
                "[finder]\nvalidate_timeout = 0\n",
                "finder.validate_timeout",
            ),
            (
                "[[finder.http]]\nurl = \"https://x.example\"\ncooldown = nan\n",
                "finder.http[0].cooldown",
            ),
            ("[monitor]\ntimeout_tor = nan\n", "monitor.timeout_tor"),
            (
                "[analytics]\norphan_interval = inf\n",
                "analytics.orphan_interval",
            ),
            ("[dvm]\njob_timeout = 1e12\n", "dvm.job_timeout"),
            ("[fleet]\nlease_ttl_secs = 0\n", "fleet.lease_ttl_secs"),
            ("[fleet]\nheartbeat_secs = nan\n", "fleet.heartbeat_secs"),
        ];
        for (text, key) in cases {
            let e = load_error(text);
            assert!(
                e.contains("x.toml") && e.contains(&format!("`{key}`")),
                "{text}: {e}"
            );
            assert!(e.contains("seconds"), "{e}");
        }
        // The limits themselves are accepted: 0 where it means "none", ten years at most.
        let ok = "[sync.timeouts.clearnet]\nrelay = 0\n[analytics]\norphan_interval = 0\n[finder]\nforget_after = 315360000\n";
        let c = Config::parse(ok, Path::new("x.toml")).expect("parse");
        c.validate().expect("edges are valid");
    }

    #[test]
    fn a_partial_timeouts_table_keeps_the_other_defaults() {
        let text = "[sync.timeouts.clearnet]\nidle = 7.5\n\n[sync.timeouts.tor]\nrelay = 10\n";
        let c = Config::parse(text, Path::new("x.toml")).expect("a partial table parses");
        c.validate().expect("valid");
        let d = NetworkTimeouts::default();
        let (cl, tor) = (&c.sync.timeouts.clearnet, &c.sync.timeouts.tor);
        assert_eq!(
            (cl.connect, cl.idle, cl.relay),
            (
                d.clearnet.connect,
                Seconds::from_millis(7500),
                d.clearnet.relay
            )
        );
        assert_eq!(
            (tor.connect, tor.idle, tor.relay),
            (d.tor.connect, d.tor.idle, Seconds::new(10))
        );
        // An unknown key in such a table is still an error naming it.
        let e = Config::parse("[sync.timeouts.tor]\nconect = 1\n", Path::new("x.toml"))
            .expect_err("typo");
        assert!(e.to_string().contains("conect"), "{e}");
    }

    #[test]
    fn fleet_heartbeat_must_be_below_the_lease_ttl() {
        let e = load_error("[fleet]\nlease_ttl_secs = 10\nheartbeat_secs = 10\n");
        assert!(
            e.contains("`fleet.heartbeat_secs`") && e.contains("lease_ttl_secs"),
            "{e}"
        );
        let ok = "[fleet]\nworker = \"a\"\nlease_ttl_secs = 3\nheartbeat_secs = 1\n";
        let c = Config::parse(ok, Path::new("x.toml")).expect("parse");
        c.validate().expect("heartbeat below the TTL is valid");
    }

    #[test]
    fn dvm_customer_limits_are_checked() {
        let e = load_error("[dvm]\nmax_customers = 10\n");
        assert!(
            e.contains("`dvm.max_customers`") && e.contains("(20)"),
            "{e}"
        );
        let e = load_error("[dvm]\nper_customer_burst = 0\n");
        assert!(e.contains("`dvm.per_customer_burst`"), "{e}");
        let ok = "[dvm]\nper_customer_jobs_per_minute = 0\nper_customer_max_jobs = 0\n";
        let c = Config::parse(ok, Path::new("x.toml")).expect("parse");
        c.validate().expect("0 turns the per-customer limits off");
    }

    #[test]
    fn boolean_environment_values_are_strict() {
        for (v, want) in [
            ("1", true),
            ("true", true),
            ("TRUE", true),
            (" True ", true),
        ] {
            assert_eq!(env_bool("BIGBROTR_ALLOW_LOCAL", v).expect(v), want);
        }
        for (v, want) in [("0", false), ("false", false), ("False", false)] {
            assert_eq!(env_bool("BIGBROTR_ALLOW_LOCAL", v).expect(v), want);
        }
        for v in ["maybe", "yes", "", "2", "on"] {
            let e = env_bool("BIGBROTR_ALLOW_LOCAL", v)
                .expect_err(v)
                .to_string();
            assert!(e.contains("BIGBROTR_ALLOW_LOCAL"), "{e}");
        }
    }

    #[test]
    fn overrides_apply_per_relay() {
        let text = "[[sync.overrides]]\nurl = \"wss://Relay.Damus.io/\"\nidle = 99\nlimit = 100\n";
        let cfg = Config::parse(text, Path::new("x.toml")).expect("parse");
        let damus = RelayUrl::parse("wss://relay.damus.io", false).expect("url");
        let other = RelayUrl::parse("wss://nos.lol", false).expect("url");
        assert_eq!(
            cfg.sync_for(&damus, true).idle_timeout,
            Duration::from_secs(99)
        );
        assert_eq!(cfg.sync_for(&damus, true).limit, 100);
        assert_eq!(cfg.sync_for(&other, true).limit, 500);
    }
}
