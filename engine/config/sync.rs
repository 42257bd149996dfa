//! `[sync]`, `[sync.timeouts.*]` and `[[sync.overrides]]`: how relays are synced.

use super::{check_all, Config, Relay, Seconds};
use bigbrotr_stages::connect::SyncConfig;
use bigbrotr_stages::model::{Network, RelayUrl};
use serde::Deserialize;

/// Timeouts for one network, in seconds.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// TCP + TLS + WebSocket handshake.
    pub connect: Seconds,
    /// Longest silence while waiting for a reply.
    pub idle: Seconds,
    /// Budget of one relay's backfill, held inside the connection (0 = unbounded); live
    /// subscriptions after it have no end.
    pub relay: Seconds,
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
    connect: Option<Seconds>,
    idle: Option<Seconds>,
    relay: Option<Seconds>,
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
                connect: Seconds::new(15),
                idle: Seconds::new(30),
                relay: Seconds::new(1800),
            },
            tor: Timeouts {
                connect: Seconds::new(60),
                idle: Seconds::new(60),
                relay: Seconds::new(3600),
            },
        }
    }
}

/// `[[sync.overrides]]`: settings for one relay.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Override {
    /// The relay (normalized at load).
    pub url: Relay,
    /// REQ limit for this relay.
    pub limit: Option<usize>,
    /// Handshake timeout, seconds.
    pub connect: Option<Seconds>,
    /// Idle timeout, seconds.
    pub idle: Option<Seconds>,
    /// Per-relay budget, seconds.
    pub relay: Option<Seconds>,
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
    pub interval: Seconds,
    /// In live mode, seconds between cursor checkpoints.
    pub live_checkpoint: Seconds,
    /// Accept loopback/private relay addresses (tests, benches, private deployments).
    pub allow_local: bool,
    /// Reconcile with NIP-77 before walking, where the relay speaks it.
    pub reconcile: bool,
    /// Download bodies the archive already holds from other relays anyway.
    pub fetch_known_bodies: bool,
    /// Relays without NIP-77: seconds below the cursor walked again each pass (0 = off).
    pub recheck_horizon: Seconds,
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
            interval: Seconds::new(900),
            live_checkpoint: Seconds::new(60),
            allow_local: false,
            reconcile: true,
            fetch_known_bodies: false,
            recheck_horizon: Seconds::new(86_400),
            timeouts: NetworkTimeouts::default(),
            overrides: Vec::new(),
        }
    }
}

impl Sync {
    /// Checks the `[sync]` values; errors name `file` and the key.
    pub fn validate(&self, file: &str) -> anyhow::Result<()> {
        let networks = [
            ("clearnet", &self.timeouts.clearnet),
            ("tor", &self.timeouts.tor),
        ];
        for (net, t) in networks {
            t.connect
                .check_positive(file, &format!("sync.timeouts.{net}.connect"))?;
            t.idle
                .check_positive(file, &format!("sync.timeouts.{net}.idle"))?;
        }
        for (i, o) in self.overrides.iter().enumerate() {
            for (k, v) in [("connect", o.connect), ("idle", o.idle)] {
                if let Some(v) = v {
                    v.check_positive(file, &format!("sync.overrides[{i}].{k}"))?;
                }
            }
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
        )
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
            connect_timeout: t.connect.get(),
            idle_timeout: t.idle.get(),
            relay_timeout: t.relay.nonzero(),
            max_event_bytes: self.sync.max_event_bytes,
            max_failures: self.sync.max_failures,
            live_checkpoint: self.sync.live_checkpoint.max(Seconds::new(1)).get(),
            reconcile: self.sync.reconcile,
            fetch_known_bodies: self.sync.fetch_known_bodies,
            recheck_horizon: self.sync.recheck_horizon.whole_secs(),
            transport: self.net.transport(),
            ..SyncConfig::default()
        };
        for o in self.sync.overrides.iter().filter(|o| &o.url.0 == url) {
            if let Some(v) = o.limit {
                c.limit = v.max(1);
            }
            if let Some(v) = o.connect {
                c.connect_timeout = v.get();
            }
            if let Some(v) = o.idle {
                c.idle_timeout = v.get();
            }
            if let Some(v) = o.relay {
                c.relay_timeout = v.nonzero();
            }
        }
        c
    }
}
