//! `[monitor]`: relay health checks (NIP-11, NIP-66) and NIP-66 publishing.

use super::{check_all, check_seconds, Zero};
use bigbrotr_stages::model::RelayUrl;
use serde::Deserialize;

/// `[monitor]`
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Monitor {
    /// Run the monitor inside `bigbrotr run`.
    pub enabled: bool,
    /// Long-running mode: seconds between two passes over the registry.
    pub interval: f64,
    /// Clearnet and local relays checked at once.
    pub max_parallel_clearnet: usize,
    /// Tor/I2P/Lokinet relays checked at once (through `net.socks5`).
    pub max_parallel_tor: usize,
    /// Seconds allowed for each check step (DNS, NIP-11, TLS, open, read, write), clearnet.
    pub timeout_clearnet: f64,
    /// The same for overlay networks.
    pub timeout_tor: f64,
    /// Largest NIP-11 document fetched (bytes).
    pub nip11_max_bytes: usize,
    /// Hex secret key signing the write probe and the NIP-66 events; empty = no write check,
    /// no publishing. Env `BIGBROTR_MONITOR_PRIVATE_KEY`.
    pub private_key: String,
    /// Kind of the write probe event.
    pub write_kind: u16,
    /// Relays the kind 30166/10166 events are published to; empty = no publishing.
    pub publish_relays: Vec<String>,
    /// Nameserver `ip:port` for the DNS check; empty = the system's resolv.conf.
    pub dns_server: String,
    /// PEM file of extra trusted CA certificates (besides the webpki roots); empty = none.
    pub tls_ca_file: String,
    /// MaxMind City database (.mmdb) for geolocation; empty = no geo check.
    pub geoip_db: String,
    /// MaxMind ASN database (.mmdb); empty = no ASN lookup.
    pub asn_db: String,
    /// The monitor's own geohash, announced in kind 10166; empty = none.
    pub geohash: String,
}

impl Default for Monitor {
    fn default() -> Self {
        Monitor {
            enabled: true,
            interval: 3600.0,
            max_parallel_clearnet: 50,
            max_parallel_tor: 10,
            timeout_clearnet: 10.0,
            timeout_tor: 30.0,
            nip11_max_bytes: 256 << 10,
            private_key: String::new(),
            write_kind: 20166,
            publish_relays: Vec::new(),
            dns_server: String::new(),
            tls_ca_file: String::new(),
            geoip_db: String::new(),
            asn_db: String::new(),
            geohash: String::new(),
        }
    }
}

impl std::fmt::Debug for Monitor {
    // Hand-written so that printing the configuration never prints the secret key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("interval", &self.interval)
            .field("max_parallel_clearnet", &self.max_parallel_clearnet)
            .field("max_parallel_tor", &self.max_parallel_tor)
            .field("timeout_clearnet", &self.timeout_clearnet)
            .field("timeout_tor", &self.timeout_tor)
            .field("nip11_max_bytes", &self.nip11_max_bytes)
            .field(
                "private_key",
                &if self.private_key.is_empty() {
                    ""
                } else {
                    "***"
                },
            )
            .field("write_kind", &self.write_kind)
            .field("publish_relays", &self.publish_relays)
            .field("dns_server", &self.dns_server)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("geoip_db", &self.geoip_db)
            .field("asn_db", &self.asn_db)
            .field("geohash", &self.geohash)
            .finish()
    }
}

impl Monitor {
    /// Checks the `[monitor]` values; errors name `file` and the key.
    pub fn validate(&self, file: &str) -> anyhow::Result<()> {
        check_seconds(file, "monitor.interval", self.interval, Zero::Refused)?;
        check_seconds(
            file,
            "monitor.timeout_clearnet",
            self.timeout_clearnet,
            Zero::Refused,
        )?;
        check_seconds(file, "monitor.timeout_tor", self.timeout_tor, Zero::Refused)?;
        check_all(
            file,
            &[
                (
                    self.max_parallel_clearnet >= 1,
                    "monitor.max_parallel_clearnet",
                    "must be at least 1",
                ),
                (
                    self.max_parallel_tor >= 1,
                    "monitor.max_parallel_tor",
                    "must be at least 1",
                ),
                (
                    self.nip11_max_bytes >= 1024,
                    "monitor.nip11_max_bytes",
                    "must be at least 1024",
                ),
            ],
        )?;
        if !self.private_key.is_empty() && self.keypair().is_none() {
            anyhow::bail!("{file}: key `monitor.private_key` (or BIGBROTR_MONITOR_PRIVATE_KEY) must be a 64-digit hex secret key");
        }
        if !self.dns_server.is_empty() && self.dns_server.parse::<std::net::SocketAddr>().is_err() {
            anyhow::bail!(
                "{file}: key `monitor.dns_server` must be ip:port (e.g. \"9.9.9.9:53\") or empty, got {:?}",
                self.dns_server
            );
        }
        for (i, u) in self.publish_relays.iter().enumerate() {
            if let Err(e) = RelayUrl::parse(u, true) {
                anyhow::bail!(
                    "{file}: key `monitor.publish_relays[{i}]`: {u:?} is not a relay URL ({e})"
                );
            }
        }
        if !self.publish_relays.is_empty() && self.private_key.is_empty() {
            anyhow::bail!("{file}: key `monitor.publish_relays` needs `monitor.private_key` to sign the events");
        }
        Ok(())
    }

    /// The signing key, when `private_key` is a valid hex secret key.
    pub fn keypair(&self) -> Option<secp256k1::Keypair> {
        super::keypair(&self.private_key)
    }
}
