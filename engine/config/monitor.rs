//! `[monitor]`: relay health checks (NIP-11, NIP-66) and NIP-66 publishing.

use super::{check_all, Relay, Seconds, SecretKey};
use serde::Deserialize;

/// `[monitor]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Monitor {
    /// Run the monitor inside `bigbrotr run`.
    pub enabled: bool,
    /// Long-running mode: seconds between two passes over the registry.
    pub interval: Seconds,
    /// Clearnet and local relays checked at once.
    pub max_parallel_clearnet: usize,
    /// Tor/I2P/Lokinet relays checked at once (through `net.socks5`).
    pub max_parallel_tor: usize,
    /// Seconds allowed for each check step (DNS, NIP-11, TLS, open, read, write), clearnet.
    pub timeout_clearnet: Seconds,
    /// The same for overlay networks.
    pub timeout_tor: Seconds,
    /// Largest NIP-11 document fetched (bytes).
    pub nip11_max_bytes: usize,
    /// Hex secret key signing the write probe and the NIP-66 events; empty = no write check,
    /// no publishing. Env `BIGBROTR_MONITOR_PRIVATE_KEY`.
    pub private_key: SecretKey,
    /// Kind of the write probe event.
    pub write_kind: u16,
    /// Relays the kind 30166/10166 events are published to; empty = no publishing.
    pub publish_relays: Vec<Relay>,
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
            interval: Seconds::new(3600),
            max_parallel_clearnet: 50,
            max_parallel_tor: 10,
            timeout_clearnet: Seconds::new(10),
            timeout_tor: Seconds::new(30),
            nip11_max_bytes: 256 << 10,
            private_key: SecretKey::default(),
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

impl Monitor {
    /// Checks the `[monitor]` values; errors name `file` and the key.
    pub fn validate(&self, file: &str) -> anyhow::Result<()> {
        self.interval.check_positive(file, "monitor.interval")?;
        self.timeout_clearnet
            .check_positive(file, "monitor.timeout_clearnet")?;
        self.timeout_tor
            .check_positive(file, "monitor.timeout_tor")?;
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
        if !self.dns_server.is_empty() && self.dns_server.parse::<std::net::SocketAddr>().is_err() {
            anyhow::bail!(
                "{file}: key `monitor.dns_server` must be ip:port (e.g. \"9.9.9.9:53\") or empty, got {:?}",
                self.dns_server
            );
        }
        if !self.publish_relays.is_empty() && !self.private_key.is_set() {
            anyhow::bail!("{file}: key `monitor.publish_relays` needs `monitor.private_key` to sign the events");
        }
        Ok(())
    }

    /// The signing key, when `private_key` is a valid hex secret key.
    pub fn keypair(&self) -> Option<secp256k1::Keypair> {
        self.private_key.keypair()
    }
}
