//! The monitor side stage: relay URLs in, [`CheckResult`]s out. For each relay it resolves
//! the name (DNS facts with TTLs), fetches the NIP-11 document, inspects the TLS certificate
//! of `wss://` relays, runs the NIP-66 WebSocket checks (open, read, write) and, when
//! configured, looks the address up in GeoIP/ASN databases. Overlay networks go through the
//! SOCKS5 proxy. Each network has its own concurrency bound.
//!
//! The stage knows nothing of the database: the engine stores the results
//! (`insert_relay_metadata`) and publishes the NIP-66 events built by [`nip66`].

mod checks;
mod dns;
mod geo;
mod net;
pub mod nip11;
pub mod nip66;
pub mod publish;
mod tls;

use crate::model::{now_secs, Network, RelayUrl};
use crate::relay::transport::TransportConfig;
use hickory_resolver::TokioResolver;
use secp256k1::Keypair;
use serde_json::{Map, Value};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Everything a [`Checker`] needs.
#[derive(Debug, Clone)]
pub struct MonitorSettings {
    /// Proxy, socket and message limits (the SOCKS5 proxy is used for overlay networks).
    pub transport: TransportConfig,
    /// Budget of each check step for clearnet and local relays.
    pub timeout_clearnet: Duration,
    /// Budget of each check step for overlay relays (Tor, I2P, Lokinet).
    pub timeout_overlay: Duration,
    /// Largest NIP-11 body accepted.
    pub nip11_max_bytes: usize,
    /// Extra trusted CA certificates (PEM), besides the webpki roots.
    pub tls_ca_pem: Option<Vec<u8>>,
    /// Nameserver for the DNS check; `None` = the system's.
    pub dns_server: Option<SocketAddr>,
    /// GeoIP2/GeoLite2 City database.
    pub geoip_db: Option<PathBuf>,
    /// GeoIP2/GeoLite2 ASN database.
    pub asn_db: Option<PathBuf>,
    /// Signs the write probe; `None` skips the write check.
    pub keypair: Option<Keypair>,
    /// Kind of the write probe.
    pub write_kind: u16,
}

impl Default for MonitorSettings {
    fn default() -> Self {
        MonitorSettings {
            transport: TransportConfig::default(),
            timeout_clearnet: Duration::from_secs(10),
            timeout_overlay: Duration::from_secs(30),
            nip11_max_bytes: 256 << 10,
            tls_ca_pem: None,
            dns_server: None,
            geoip_db: None,
            asn_db: None,
            keypair: None,
            write_kind: 20166,
        }
    }
}

impl MonitorSettings {
    /// The per-step budget for relays of `network`.
    pub fn timeout_for(&self, network: Network) -> Duration {
        if network.is_overlay() {
            self.timeout_overlay
        } else {
            self.timeout_clearnet
        }
    }
}

/// One check of one relay: what goes into `relay_metadata` and the kind 30166 event.
#[derive(Debug, Clone)]
pub struct CheckResult {
    /// The relay.
    pub relay: RelayUrl,
    /// Unix seconds when the check started.
    pub generated_at: i64,
    /// The NIP-11 document (a JSON object without U+0000), if one was obtained.
    pub nip11: Option<Value>,
    /// The lenient reading of [`CheckResult::nip11`].
    pub info: Option<nip11::Nip11Info>,
    /// The check result in the shape `insert_nip66` expects: `rtt_open`, `rtt_read`,
    /// `rtt_write`, `openable`, `readable`, `writable`, `dns`, `tls`, `http`, `geo`, plus
    /// `network`, `auth_required` (when the relay asked for NIP-42 authentication) and the
    /// details of each WebSocket step (`open`, `read`, `write`).
    pub nip66: Value,
    /// Milliseconds to open the WebSocket.
    pub rtt_open: Option<u32>,
    /// Milliseconds for the REQ to be answered.
    pub rtt_read: Option<u32>,
    /// Milliseconds for the EVENT to be accepted.
    pub rtt_write: Option<u32>,
    /// The WebSocket opened.
    pub openable: bool,
    /// The REQ was answered.
    pub readable: bool,
    /// The probe was accepted; `None` when not tried (no key).
    pub writable: Option<bool>,
    /// The relay asked for NIP-42 authentication while being checked.
    pub auth_observed: bool,
    /// Geohash of the relay's address, when a GeoIP database located it.
    pub geohash: Option<String>,
}

impl CheckResult {
    /// True when the relay answered at all (WebSocket or NIP-11): worth a kind 30166.
    pub fn is_online(&self) -> bool {
        self.openable || self.nip11.is_some()
    }
}

/// Runs checks; shared by all concurrent checks (resolver, TLS roots and databases are
/// loaded once).
pub struct Checker {
    settings: MonitorSettings,
    tls: net::Tls,
    // A host without a usable DNS configuration still gets every other check; the DNS check
    // then reports why it could not run.
    resolver: Result<TokioResolver, String>,
    geo: geo::GeoDb,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker")
            .field("settings", &self.settings)
            .field("geo", &self.geo)
            .finish_non_exhaustive()
    }
}

/// Why the monitor could not start; a check itself never fails (its result says what went
/// wrong).
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// The extra CA file is unusable, or the TLS configuration could not be built.
    #[error("TLS CA file: {0}")]
    TlsCa(String),
    /// A GeoIP/ASN database could not be opened.
    #[error("cannot open {}: {source}", path.display())]
    GeoDb {
        /// The database file.
        path: PathBuf,
        /// Why it could not be read.
        source: maxminddb::MaxMindDbError,
    },
}

impl Checker {
    /// Loads the TLS roots, the resolver and the GeoIP databases; errors say which failed.
    pub fn new(settings: MonitorSettings) -> Result<Checker, MonitorError> {
        let tls = net::Tls::new(settings.tls_ca_pem.as_deref()).map_err(MonitorError::TlsCa)?;
        let resolver = dns::resolver(settings.dns_server, settings.timeout_clearnet);
        let geo = geo::GeoDb::open(settings.geoip_db.as_deref(), settings.asn_db.as_deref())?;
        Ok(Checker {
            settings,
            tls,
            resolver,
            geo,
        })
    }

    /// The settings in use.
    pub fn settings(&self) -> &MonitorSettings {
        &self.settings
    }

    /// The checks this checker performs, as named in kind 10166 `c` tags.
    pub fn check_names(&self) -> Vec<String> {
        let mut c = vec!["open", "read"];
        if self.settings.keypair.is_some() {
            c.push("write");
        }
        c.extend(["nip11", "dns", "ssl"]);
        if self.geo.is_enabled() {
            c.push("geo");
        }
        c.into_iter().map(String::from).collect()
    }

    /// Checks one relay. Never fails: whatever went wrong is in the result.
    pub async fn check(&self, relay: &RelayUrl) -> CheckResult {
        let generated_at = now_secs();
        let network = relay.network();
        let timeout = self.settings.timeout_for(network);
        let mut raw = Map::new();
        raw.insert("network".into(), Value::String(network.as_str().into()));

        let host = relay.host_port().map(|(h, _)| h);
        let literal: Option<IpAddr> = host.as_deref().and_then(|h| h.parse().ok());
        let mut addrs: Vec<IpAddr> = literal.into_iter().collect();
        // Overlay names are the proxy's to resolve, and local names (localhost) are the
        // system's: only public names get the DNS check.
        if let (Some(h), None, Network::Clearnet) = (&host, literal, network) {
            match &self.resolver {
                Ok(resolver) => {
                    let d = dns::check(resolver, h, timeout).await;
                    addrs = d.addrs;
                    raw.insert("dns".into(), d.json);
                }
                Err(e) => {
                    raw.insert("dns".into(), serde_json::json!({ "error": nip11::note(e) }));
                }
            }
        }

        let fetch_cfg = nip11::FetchConfig {
            transport: self.settings.transport.clone(),
            tls: self.tls.clone(),
            timeout,
            max_bytes: self.settings.nip11_max_bytes,
        };
        let ws_cfg = checks::WsConfig {
            transport: self.settings.transport.clone(),
            tls: self.tls.clone(),
            timeout,
            keypair: self.settings.keypair,
            write_kind: self.settings.write_kind,
        };
        let tls_probe = async {
            if relay.is_tls() {
                Some(tls::check(relay, &addrs, &self.tls, &self.settings.transport, timeout).await)
            } else {
                None
            }
        };
        let (fetched, tls_facts, ws) = tokio::join!(
            nip11::fetch(relay, &addrs, &fetch_cfg),
            tls_probe,
            checks::check(relay, &addrs, &ws_cfg)
        );

        let mut geohash = None;
        if self.geo.is_enabled() && !network.is_overlay() {
            if let Some(ip) = addrs.first() {
                let g = self.geo.lookup(*ip);
                geohash = g.get("geohash").and_then(Value::as_str).map(String::from);
                raw.insert("geo".into(), g);
            }
        }

        let num = |v: Option<u32>| v.map(Value::from).unwrap_or(Value::Null);
        raw.insert("rtt_open".into(), num(ws.rtt_open));
        raw.insert("rtt_read".into(), num(ws.rtt_read));
        raw.insert("rtt_write".into(), num(ws.rtt_write));
        raw.insert("openable".into(), Value::Bool(ws.openable));
        raw.insert("readable".into(), Value::Bool(ws.readable));
        raw.insert(
            "writable".into(),
            ws.writable.map(Value::Bool).unwrap_or(Value::Null),
        );
        raw.insert("http".into(), fetched.http);
        if let Some(t) = tls_facts {
            raw.insert("tls".into(), t);
        }
        for (k, v) in ws.details {
            raw.insert(k, v);
        }
        if ws.auth_required {
            raw.insert("auth_required".into(), Value::Bool(true));
        }
        let info = fetched.doc.as_ref().map(nip11::Nip11Info::from_value);
        CheckResult {
            relay: relay.clone(),
            generated_at,
            nip11: fetched.doc,
            info,
            nip66: Value::Object(raw),
            rtt_open: ws.rtt_open,
            rtt_read: ws.rtt_read,
            rtt_write: ws.rtt_write,
            openable: ws.openable,
            readable: ws.readable,
            writable: ws.writable,
            auth_observed: ws.auth_required,
            geohash,
        }
    }
}

/// How many relays are checked at once, per network.
#[derive(Debug, Clone, Copy)]
pub struct Parallelism {
    /// Clearnet and local relays.
    pub clearnet: usize,
    /// Overlay relays (Tor, I2P, Lokinet), which share the proxy.
    pub overlay: usize,
}

/// Checks every relay received on `input` and sends the results to `output`, at most
/// `par.clearnet` clearnet and `par.overlay` overlay checks at a time; returns when `input`
/// is closed and drained and every check has been delivered (or `output` was dropped).
pub async fn run(
    checker: Arc<Checker>,
    input: flume::Receiver<RelayUrl>,
    output: flume::Sender<CheckResult>,
    par: Parallelism,
) {
    let clearnet = Arc::new(Semaphore::new(par.clearnet.max(1)));
    let overlay = Arc::new(Semaphore::new(par.overlay.max(1)));
    // Tasks waiting for their network's turn are bounded too, so a long input of one network
    // cannot pile up unbounded while the other is busy.
    let pending = Arc::new(Semaphore::new(
        (par.clearnet.max(1) + par.overlay.max(1)) * 2,
    ));
    let mut tasks = tokio::task::JoinSet::new();
    while let Ok(relay) = input.recv_async().await {
        let Ok(slot) = pending.clone().acquire_owned().await else {
            break;
        };
        let sem = if relay.network().is_overlay() {
            overlay.clone()
        } else {
            clearnet.clone()
        };
        let checker = checker.clone();
        let output = output.clone();
        tasks.spawn(async move {
            let _slot = slot;
            let Ok(_permit) = sem.acquire_owned().await else {
                return;
            };
            let r = checker.check(&relay).await;
            let _ = output.send_async(r).await;
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}
