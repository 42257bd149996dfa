//! `[sync]`, `[sync.timeouts.*]` and `[[sync.overrides]]`: how relays are synced.

use super::{check_all, check_seconds, secs, Config, Zero};
use bigbrotr_stages::connect::SyncConfig;
use bigbrotr_stages::model::{Network, RelayUrl};
use serde::Deserialize;

/// Timeouts for one network, in seconds.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// TCP + TLS + WebSocket handshake.
    pub connect: f64,
    /// Longest silence while waiting for a reply.
    pub idle: f64,
    /// Budget of one relay's backfill, held inside the connection (0 = unbounded); live
    /// subscriptions after it have no end.
    pub relay: f64,
}

/// `[sync.timeouts]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkTimeouts {
    /// Clearnet (and local) relays.
    #[serde(deserialize_with = "clearnet_timeouts")]
    pub clearnet: Timeouts,
    /// Tor, I2P and Lokinet relays (through the proxy).
    #[serde(deserialize_with = "tor_timeouts")]
    pub tor: Timeouts,
}

/// A `[sync.timeouts.<network>]` table as written: every key optional, because the two
/// networks have different defaults and a table naming one key keeps the others' defaults.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialTimeouts {
    connect: Option<f64>,
    idle: Option<f64>,
    relay: Option<f64>,
}

impl PartialTimeouts {
    fn or(self, d: Timeouts) -> Timeouts {
        Timeouts {
            connect: self.connect.unwrap_or(d.connect),
            idle: self.idle.unwrap_or(d.idle),
            relay: self.relay.unwrap_or(d.relay),
        }
    }
}

fn clearnet_timeouts<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Timeouts, D::Error> {
    Ok(PartialTimeouts::deserialize(d)?.or(NetworkTimeouts::default().clearnet))
}

fn tor_timeouts<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Timeouts, D::Error> {
    Ok(PartialTimeouts::deserialize(d)?.or(NetworkTimeouts::default().tor))
}

impl Default for NetworkTimeouts {
    fn default() -> Self {
        NetworkTimeouts {
            clearnet: Timeouts {
                connect: 15.0,
                idle: 30.0,
                relay: 1800.0,
            },
            tor: Timeouts {
                connect: 60.0,
                idle: 60.0,
                relay: 3600.0,
            },
        }
    }
}

/// `[[sync.overrides]]`: settings for one relay.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Override {
    /// The relay (normalized before matching).
    pub url: String,
    /// REQ limit for this relay.
    pub limit: Option<usize>,
    /// Handshake timeout, seconds.
    pub connect: Option<f64>,
    /// Idle timeout, seconds.
    pub idle: Option<f64>,
    /// Per-relay budget, seconds.
    pub relay: Option<f64>,
}

/// `[sync]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Sync {
    /// `limit` per REQ.
    pub limit: usize,
    /// Oldest created_at to archive (unix seconds).
    pub since: i64,
    /// Only these kinds (empty = all).
    pub kinds: Vec<u16>,
    /// Relays backfilling at once (a relay gone live gives its slot back).
    pub max_parallel: usize,
    /// Consecutive failures before a relay is given up for this pass.
    pub max_failures: u32,
    /// Frames larger than this are rejected (bytes).
    pub max_event_bytes: usize,
    /// In long-running mode, stay subscribed after backfill.
    pub live: bool,
    /// In long-running mode, seconds before a relay that failed or finished is synced again.
    pub interval: f64,
    /// In live mode, seconds between cursor checkpoints.
    pub live_checkpoint: f64,
    /// Accept loopback/private relay addresses (tests, benches, private deployments).
    pub allow_local: bool,
    /// Reconcile with NIP-77 before walking, where the relay speaks it.
    pub reconcile: bool,
    /// Download bodies the archive already holds from other relays anyway.
    pub fetch_known_bodies: bool,
    /// Relays without NIP-77: seconds below the cursor walked again each pass (0 = off).
    pub recheck_horizon: f64,
    /// Per-network timeouts.
    pub timeouts: NetworkTimeouts,
    /// Per-relay overrides.
    pub overrides: Vec<Override>,
}

impl Default for Sync {
    fn default() -> Self {
        Sync {
            limit: 500,
            since: 0,
            kinds: Vec::new(),
            max_parallel: 50,
            max_failures: 5,
            max_event_bytes: 512 << 10,
            live: true,
            interval: 900.0,
            live_checkpoint: 60.0,
            allow_local: false,
            reconcile: true,
            fetch_known_bodies: false,
            recheck_horizon: 86_400.0,
            timeouts: NetworkTimeouts::default(),
            overrides: Vec::new(),
        }
    }
}

impl Sync {
    /// Checks the `[sync]` values; errors name `file` and the key.
    pub fn validate(&self, file: &str) -> anyhow::Result<()> {
        use Zero::{Allowed, Refused};
        let mut durations: Vec<(String, f64, Zero)> = vec![
            ("sync.interval".into(), self.interval, Allowed),
            ("sync.live_checkpoint".into(), self.live_checkpoint, Allowed),
            ("sync.recheck_horizon".into(), self.recheck_horizon, Allowed),
        ];
        let networks = [
            ("clearnet", &self.timeouts.clearnet),
            ("tor", &self.timeouts.tor),
        ];
        for (net, t) in networks {
            let key = |k: &str| format!("sync.timeouts.{net}.{k}");
            durations.push((key("connect"), t.connect, Refused));
            durations.push((key("idle"), t.idle, Refused));
            durations.push((key("relay"), t.relay, Allowed));
        }
        for (i, o) in self.overrides.iter().enumerate() {
            let each = [
                ("connect", o.connect, Refused),
                ("idle", o.idle, Refused),
                ("relay", o.relay, Allowed),
            ];
            for (k, v, zero) in each {
                if let Some(v) = v {
                    durations.push((format!("sync.overrides[{i}].{k}"), v, zero));
                }
            }
        }
        for (key, v, zero) in durations {
            check_seconds(file, &key, v, zero)?;
        }
        check_all(
            file,
            &[
                (self.limit >= 1, "sync.limit", "must be at least 1"),
                (
                    self.max_parallel >= 1,
                    "sync.max_parallel",
                    "must be at least 1",
                ),
            ],
        )?;
        for (i, o) in self.overrides.iter().enumerate() {
            if let Err(e) = RelayUrl::parse(&o.url, true) {
                anyhow::bail!(
                    "{file}: key `sync.overrides[{i}].url`: {:?} is not a relay URL ({e})",
                    o.url
                );
            }
        }
        Ok(())
    }
}

impl Config {
    /// The sync settings for one relay: network timeouts, then its override.
    pub fn sync_for(&self, url: &RelayUrl, once: bool) -> SyncConfig {
        let t = match url.network() {
            Network::Tor | Network::I2p | Network::Loki => &self.sync.timeouts.tor,
            _ => &self.sync.timeouts.clearnet,
        };
        let mut c = SyncConfig {
            limit: self.sync.limit,
            floor: self.sync.since,
            until: None,
            use_cursor: true,
            kinds: if self.sync.kinds.is_empty() {
                None
            } else {
                Some(self.sync.kinds.clone())
            },
            live: !once && self.sync.live,
            connect_timeout: secs(t.connect),
            idle_timeout: secs(t.idle),
            relay_timeout: (t.relay > 0.0).then(|| secs(t.relay)),
            max_event_bytes: self.sync.max_event_bytes,
            max_failures: self.sync.max_failures,
            live_checkpoint: secs(self.sync.live_checkpoint.max(1.0)),
            reconcile: self.sync.reconcile,
            fetch_known_bodies: self.sync.fetch_known_bodies,
            recheck_horizon: self.sync.recheck_horizon as i64,
            transport: self.net.transport(),
            ..SyncConfig::default()
        };
        for o in &self.sync.overrides {
            if RelayUrl::parse(&o.url, true).is_ok_and(|u| &u == url) {
                if let Some(v) = o.limit {
                    c.limit = v.max(1);
                }
                if let Some(v) = o.connect {
                    c.connect_timeout = secs(v);
                }
                if let Some(v) = o.idle {
                    c.idle_timeout = secs(v);
                }
                if let Some(v) = o.relay {
                    c.relay_timeout = (v > 0.0).then(|| secs(v));
                }
            }
        }
        c
    }
}
