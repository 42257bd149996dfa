//! Configuration: `config/bigbrotr.toml` (every key documented there), environment overrides,
//! validation. Errors name the file and the key.

use anyhow::{bail, Context};
use bigbrotr_stages::batch::BatchConfig;
use bigbrotr_stages::connect::SyncConfig;
use bigbrotr_stages::model::{Network, RelayUrl};
use bigbrotr_stages::relay::TransportConfig;
use bigbrotr_stages::verify::VerifyConfig;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Default)]
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
    /// The file this was read from (for error messages).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `[database]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Database {
    /// libpq connection string or postgres:// URL; empty = embedded cluster.
    pub url: String,
    /// Connections in the writer pool.
    pub pool_size: u32,
}

impl Default for Database {
    fn default() -> Self {
        Database {
            url: String::new(),
            pool_size: 8,
        }
    }
}

/// `[embedded]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Embedded {
    /// Directory holding the cluster (created on first start).
    pub data_dir: PathBuf,
    /// TCP port on 127.0.0.1 (0 = pick a free one once and remember it).
    pub port: u16,
    /// Database name.
    pub db_name: String,
}

impl Default for Embedded {
    fn default() -> Self {
        Embedded {
            data_dir: PathBuf::from("data/postgres"),
            port: 0,
            db_name: "bigbrotr".into(),
        }
    }
}

/// `[pipeline]`
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Batch {
    /// Rows (bodies + sightings) per COPY batch.
    pub max_rows: usize,
    /// Longest a row waits for its batch, in milliseconds.
    pub max_age_ms: u64,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            max_rows: 10_000,
            max_age_ms: 500,
        }
    }
}

/// Timeouts for one network, in seconds.
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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

/// `[net]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Net {
    /// SOCKS5 proxy `host:port` for Tor/I2P/Lokinet relays (empty = those are skipped).
    pub socks5: String,
    /// Largest WebSocket message (bytes); the connection fails beyond it.
    pub max_message_bytes: usize,
    /// Largest WebSocket frame (bytes).
    pub max_frame_bytes: usize,
    /// Write buffer per connection (bytes).
    pub write_buffer_bytes: usize,
}

impl Default for Net {
    fn default() -> Self {
        Net {
            socks5: String::new(),
            max_message_bytes: 4 << 20,
            max_frame_bytes: 4 << 20,
            write_buffer_bytes: 128 << 10,
        }
    }
}

/// `[http]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// `host:port` to serve /health, /ready, /metrics and the API on; empty = no HTTP server.
    pub listen: String,
    /// Serve the read-only REST API and /openapi.json (health and metrics are always served).
    pub api: bool,
    /// Largest `limit` an API request may ask for (larger ones are capped).
    pub max_limit: u32,
    /// `statement_timeout` of the API's database connections, in milliseconds.
    pub statement_timeout_ms: u64,
    /// Connection string for the API; empty = the archive's server as role `bigbrotr_reader`.
    pub readonly_database_url: String,
    /// Largest API page in bytes: a page is cut (`truncated`) before it grows past this,
    /// except that one event larger than it is still returned alone.
    pub max_response_bytes: usize,
    /// HTTP connections served at once; more are closed at accept (clamped to a quarter of
    /// the process's file-descriptor limit, so relay sockets always have room).
    pub max_connections: usize,
    /// Milliseconds a client has to send a whole request head (also the keep-alive idle
    /// time between two requests); slower connections are closed.
    pub header_timeout_ms: u64,
    /// Milliseconds a connection may move no byte while no request is being handled
    /// (a client that stops reading its answer, or sending its body) before it is closed.
    pub idle_timeout_ms: u64,
    /// Milliseconds a request may take from its head to its answer; past it, 503.
    pub request_timeout_ms: u64,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            listen: String::new(),
            api: true,
            max_limit: 500,
            statement_timeout_ms: 5000,
            readonly_database_url: String::new(),
            max_response_bytes: 4 << 20,
            max_connections: 1024,
            header_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            request_timeout_ms: 30_000,
        }
    }
}

/// `[[finder.http]]`: one HTTP relay list.
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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

/// `[analytics]`: the refresher of the summary tables behind the statistics views
/// (sql/008_summaries.sql) and the scheduled orphan cleanup.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Analytics {
    /// Run the refresher and the orphan cleanup inside `bigbrotr run`.
    pub enabled: bool,
    /// Seconds between two refreshes.
    pub interval: f64,
    /// Rows folded into the summaries per transaction.
    pub batch: u32,
    /// Seconds between two orphan cleanups (0 = never).
    pub orphan_interval: f64,
    /// Rows deleted per orphan cleanup transaction.
    pub orphan_batch: u32,
    /// Rows not folded yet that the statistics views merge (past them, the views lag).
    pub view_tail: u32,
}

impl Default for Analytics {
    fn default() -> Self {
        Analytics {
            enabled: true,
            interval: 5.0,
            batch: 50_000,
            orphan_interval: 86_400.0,
            orphan_batch: 10_000,
            view_tail: 2_000,
        }
    }
}

impl Analytics {
    /// Checks the `[analytics]` values; errors name `file` and the key.
    pub fn validate(&self, file: &str) -> anyhow::Result<()> {
        let checks: [(bool, &str, &str); 4] = [
            (
                self.interval > 0.0 && self.interval.is_finite(),
                "interval",
                "must be a positive number of seconds",
            ),
            (self.batch >= 1, "batch", "must be at least 1"),
            (
                self.orphan_interval >= 0.0 && self.orphan_interval.is_finite(),
                "orphan_interval",
                "must be a number of seconds >= 0",
            ),
            (self.orphan_batch >= 1, "orphan_batch", "must be at least 1"),
        ];
        for (ok, key, msg) in checks {
            if !ok {
                bail!("{file}: key `analytics.{key}` {msg}");
            }
        }
        Ok(())
    }
}

/// `[seeds]`
#[derive(Debug, Clone, Deserialize)]
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

/// `[monitor]`
#[derive(Clone, Deserialize)]
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
        let checks: [(bool, &str, &str); 6] = [
            (self.interval > 0.0, "interval", "must be positive"),
            (
                self.max_parallel_clearnet >= 1,
                "max_parallel_clearnet",
                "must be at least 1",
            ),
            (
                self.max_parallel_tor >= 1,
                "max_parallel_tor",
                "must be at least 1",
            ),
            (
                self.timeout_clearnet > 0.0,
                "timeout_clearnet",
                "must be positive",
            ),
            (self.timeout_tor > 0.0, "timeout_tor", "must be positive"),
            (
                self.nip11_max_bytes >= 1024,
                "nip11_max_bytes",
                "must be at least 1024",
            ),
        ];
        for (ok, key, msg) in checks {
            if !ok {
                bail!("{file}: key `monitor.{key}` {msg}");
            }
        }
        if !self.private_key.is_empty() && self.keypair().is_none() {
            bail!("{file}: key `monitor.private_key` (or BIGBROTR_MONITOR_PRIVATE_KEY) must be a 64-digit hex secret key");
        }
        if !self.dns_server.is_empty() && self.dns_server.parse::<std::net::SocketAddr>().is_err() {
            bail!(
                "{file}: key `monitor.dns_server` must be ip:port (e.g. \"9.9.9.9:53\") or empty, got {:?}",
                self.dns_server
            );
        }
        for (i, u) in self.publish_relays.iter().enumerate() {
            if let Err(e) = RelayUrl::parse(u, true) {
                bail!("{file}: key `monitor.publish_relays[{i}]`: {u:?} is not a relay URL ({e})");
            }
        }
        if !self.publish_relays.is_empty() && self.private_key.is_empty() {
            bail!("{file}: key `monitor.publish_relays` needs `monitor.private_key` to sign the events");
        }
        Ok(())
    }

    /// The signing key, when `private_key` is a valid hex secret key.
    pub fn keypair(&self) -> Option<secp256k1::Keypair> {
        let bytes: [u8; 32] = hex::decode(self.private_key.trim()).ok()?.try_into().ok()?;
        secp256k1::Keypair::from_secret_bytes(bytes).ok()
    }
}

/// `[shutdown]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Shutdown {
    /// Seconds from the first SIGINT/SIGTERM to exit, whatever is still running: work not
    /// committed by then is fetched again next time (no cursor ever claims it).
    pub grace: f64,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown { grace: 5.0 }
    }
}

impl Shutdown {
    /// The grace period.
    pub fn grace(&self) -> Duration {
        secs(self.grace)
    }
}

/// `[dvm]`: the NIP-90 data vending machine answering job requests from the archive.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dvm {
    /// Run the DVM inside `bigbrotr run` (`bigbrotr dvm` runs it alone).
    pub enabled: bool,
    /// Hex secret key signing results, feedback and the announcement; requests must `p`-tag
    /// its public key. Env `BIGBROTR_DVM_PRIVATE_KEY`.
    pub private_key: String,
    /// Relays read for job requests and published to.
    pub relays: Vec<String>,
    /// Most events an events job returns (and relays a relay statistics job lists).
    pub max_limit: u64,
    /// Most values in one filter (`ids`, `authors`, `kinds` and tag values together).
    pub max_filter_values: usize,
    /// Jobs running at once (also the size of the DVM's database pool).
    pub max_concurrent_jobs: usize,
    /// Jobs waiting for a slot; requests beyond get a `busy` error feedback.
    pub max_queued_jobs: usize,
    /// Requests one customer (pubkey) may make per minute on average (0 = no rate limit);
    /// beyond, a `rate-limited` error feedback.
    pub per_customer_jobs_per_minute: u32,
    /// Requests one customer may make at once before the per-minute rate applies.
    pub per_customer_burst: u32,
    /// Jobs of one customer running or waiting at once (0 = only the global bounds).
    pub per_customer_max_jobs: usize,
    /// Customers whose rate and jobs are remembered; beyond, idle ones are forgotten.
    pub max_customers: usize,
    /// Seconds one job may run (also the `statement_timeout` of its queries).
    pub job_timeout: f64,
    /// Largest job request accepted (bytes of its JSON).
    pub max_request_bytes: usize,
    /// Largest content of an events job's result (bytes); events past it are left out.
    pub max_result_bytes: usize,
    /// Publish a NIP-89 announcement (kind 31990) with one `k` tag per job kind.
    pub announce: bool,
    /// The announcement's name.
    pub name: String,
    /// The announcement's description.
    pub about: String,
}

impl Default for Dvm {
    fn default() -> Self {
        Dvm {
            enabled: false,
            private_key: String::new(),
            relays: Vec::new(),
            max_limit: 500,
            max_filter_values: 1000,
            max_concurrent_jobs: 4,
            max_queued_jobs: 16,
            per_customer_jobs_per_minute: 30,
            per_customer_burst: 10,
            per_customer_max_jobs: 4,
            max_customers: 10_000,
            job_timeout: 10.0,
            max_request_bytes: 64 << 10,
            max_result_bytes: 512 << 10,
            announce: true,
            name: "bigbrotr archive".into(),
            about: "Counts, events and statistics from a bigbrotr Nostr archive (NIP-90 kinds 5900-5903)".into(),
        }
    }
}

impl std::fmt::Debug for Dvm {
    // Hand-written so that printing the configuration never prints the secret key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dvm")
            .field("enabled", &self.enabled)
            .field(
                "private_key",
                &if self.private_key.is_empty() {
                    ""
                } else {
                    "***"
                },
            )
            .field("relays", &self.relays)
            .field("max_limit", &self.max_limit)
            .field("max_filter_values", &self.max_filter_values)
            .field("max_concurrent_jobs", &self.max_concurrent_jobs)
            .field("max_queued_jobs", &self.max_queued_jobs)
            .field(
                "per_customer_jobs_per_minute",
                &self.per_customer_jobs_per_minute,
            )
            .field("per_customer_burst", &self.per_customer_burst)
            .field("per_customer_max_jobs", &self.per_customer_max_jobs)
            .field("max_customers", &self.max_customers)
            .field("job_timeout", &self.job_timeout)
            .field("max_request_bytes", &self.max_request_bytes)
            .field("max_result_bytes", &self.max_result_bytes)
            .field("announce", &self.announce)
            .field("name", &self.name)
            .field("about", &self.about)
            .finish()
    }
}

impl Dvm {
    /// Checks the `[dvm]` values; errors name `file` and the key.
    pub fn validate(&self, file: &str) -> anyhow::Result<()> {
        let checks: [(bool, &str, &str); 6] = [
            (self.max_limit >= 1, "max_limit", "must be at least 1"),
            (
                self.max_filter_values >= 1,
                "max_filter_values",
                "must be at least 1",
            ),
            (
                self.max_concurrent_jobs >= 1,
                "max_concurrent_jobs",
                "must be at least 1",
            ),
            (
                self.job_timeout > 0.0 && self.job_timeout.is_finite(),
                "job_timeout",
                "must be a positive number of seconds",
            ),
            (
                self.max_request_bytes >= 1024,
                "max_request_bytes",
                "must be at least 1024",
            ),
            (
                self.max_result_bytes >= 1024,
                "max_result_bytes",
                "must be at least 1024",
            ),
        ];
        for (ok, key, msg) in checks {
            if !ok {
                bail!("{file}: key `dvm.{key}` {msg}");
            }
        }
        if self.per_customer_burst == 0 {
            bail!("{file}: key `dvm.per_customer_burst` must be at least 1");
        }
        // Customers with a job are never forgotten (their job count must hold): the table
        // must have room for every job the DVM can hold at once.
        let jobs = self
            .max_concurrent_jobs
            .saturating_add(self.max_queued_jobs);
        if self.max_customers < jobs {
            bail!("{file}: key `dvm.max_customers` must be at least dvm.max_concurrent_jobs + dvm.max_queued_jobs ({jobs})");
        }
        if !self.private_key.is_empty() && self.keypair().is_none() {
            bail!("{file}: key `dvm.private_key` (or BIGBROTR_DVM_PRIVATE_KEY) must be a 64-digit hex secret key");
        }
        for (i, u) in self.relays.iter().enumerate() {
            if let Err(e) = RelayUrl::parse(u, true) {
                bail!("{file}: key `dvm.relays[{i}]`: {u:?} is not a relay URL ({e})");
            }
        }
        if self.enabled && self.private_key.is_empty() {
            bail!("{file}: key `dvm.enabled` needs `dvm.private_key` (or BIGBROTR_DVM_PRIVATE_KEY) to sign the answers");
        }
        if self.enabled && self.relays.is_empty() {
            bail!("{file}: key `dvm.enabled` needs `dvm.relays` to read job requests from");
        }
        Ok(())
    }

    /// The signing key, when `private_key` is a valid hex secret key.
    pub fn keypair(&self) -> Option<secp256k1::Keypair> {
        let bytes: [u8; 32] = hex::decode(self.private_key.trim()).ok()?.try_into().ok()?;
        secp256k1::Keypair::from_secret_bytes(bytes).ok()
    }
}

fn secs(v: f64) -> Duration {
    Duration::from_secs_f64(v.max(0.0))
}

/// Longest duration any key may give, in seconds (ten years): beyond it a deadline is no
/// deadline, and `Instant + Duration` arithmetic downstream could overflow and panic.
pub const MAX_SECONDS: f64 = 315_360_000.0;

/// Whether a duration key may be 0.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Zero {
    /// 0 has a meaning (never, no budget, no wait).
    Allowed,
    /// 0 would make every wait fail at once or loop without pause.
    Refused,
}

/// Checks one duration key, in seconds: finite, not negative, at most [`MAX_SECONDS`], and
/// positive when `zero` is refused. `Duration::from_secs_f64` panics on inf and NaN, so this
/// runs at load rather than when the value is first used.
fn check_seconds(file: &str, key: &str, v: f64, zero: Zero) -> anyhow::Result<()> {
    let ok = (0.0..=MAX_SECONDS).contains(&v) && (zero == Zero::Allowed || v > 0.0);
    if !ok {
        let low = match zero {
            Zero::Allowed => "0",
            Zero::Refused => "above 0",
        };
        bail!("{file}: key `{key}` must be a number of seconds from {low} to {MAX_SECONDS} (ten years), got {v}");
    }
    Ok(())
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

    fn name(&self) -> String {
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
            self.monitor.private_key = v;
        }
        if let Ok(v) = std::env::var("BIGBROTR_DVM_PRIVATE_KEY") {
            self.dvm.private_key = v;
        }
        Ok(())
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> anyhow::Result<()> {
        let f = self.name();
        self.validate_durations(&f)?;
        self.monitor.validate(&f)?;
        self.analytics.validate(&f)?;
        self.dvm.validate(&f)?;
        let checks: [(bool, &str, &str); 11] = [
            (self.sync.limit >= 1, "sync.limit", "must be at least 1"),
            (
                self.sync.max_parallel >= 1,
                "sync.max_parallel",
                "must be at least 1",
            ),
            (
                self.batch.max_rows >= 1,
                "batch.max_rows",
                "must be at least 1",
            ),
            (
                self.pipeline.raw_channel >= 1,
                "pipeline.raw_channel",
                "must be at least 1",
            ),
            (
                self.pipeline.verified_channel >= 1,
                "pipeline.verified_channel",
                "must be at least 1",
            ),
            (
                self.pipeline.item_channel >= 1,
                "pipeline.item_channel",
                "must be at least 1",
            ),
            (
                self.pipeline.batch_channel >= 1,
                "pipeline.batch_channel",
                "must be at least 1",
            ),
            (
                self.database.pool_size >= 2,
                "database.pool_size",
                "must be at least 2",
            ),
            (
                self.pipeline.sink_writers >= 1,
                "pipeline.sink_writers",
                "must be at least 1",
            ),
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
        ];
        for (ok, key, msg) in checks {
            if !ok {
                bail!("{f}: key `{key}` {msg}");
            }
        }
        if !self.net.socks5.is_empty() && !self.net.socks5.contains(':') {
            bail!(
                "{f}: key `net.socks5` must be host:port, got {:?}",
                self.net.socks5
            );
        }
        if !self.http.listen.is_empty() && self.http.listen.parse::<std::net::SocketAddr>().is_err()
        {
            bail!(
                "{f}: key `http.listen` must be ip:port (e.g. \"127.0.0.1:8080\") or empty, got {:?}",
                self.http.listen
            );
        }
        if self.http.max_limit == 0 {
            bail!("{f}: key `http.max_limit` must be at least 1");
        }
        // The byte budget and the connection bounds (`config::Http::validate` in crate::http).
        self.http.validate(&f)?;
        let fnd = &self.finder;
        let finder_checks: [(bool, &str, &str); 5] = [
            (
                fnd.validate_concurrency >= 1,
                "finder.validate_concurrency",
                "must be at least 1",
            ),
            (
                fnd.max_attempts >= 1,
                "finder.max_attempts",
                "must be at least 1",
            ),
            (
                fnd.hints_channel >= 1,
                "finder.hints_channel",
                "must be at least 1",
            ),
            (
                fnd.catchup_batch >= 1,
                "finder.catchup_batch",
                "must be at least 1",
            ),
            (
                fnd.max_response_bytes >= 1,
                "finder.max_response_bytes",
                "must be at least 1",
            ),
        ];
        for (ok, key, msg) in finder_checks {
            if !ok {
                bail!("{f}: key `{key}` {msg}");
            }
        }
        for (i, h) in fnd.http.iter().enumerate() {
            let lower = h.url.to_ascii_lowercase();
            if !(lower.starts_with("http://") || lower.starts_with("https://")) {
                bail!(
                    "{f}: key `finder.http[{i}].url` must be an http:// or https:// URL, got {:?}",
                    h.url
                );
            }
            if h.cooldown.is_nan() || h.cooldown < 0.0 {
                bail!("{f}: key `finder.http[{i}].cooldown` must be a number of seconds >= 0");
            }
        }
        for (i, o) in self.sync.overrides.iter().enumerate() {
            if let Err(e) = RelayUrl::parse(&o.url, true) {
                bail!(
                    "{f}: key `sync.overrides[{i}].url`: {:?} is not a relay URL ({e})",
                    o.url
                );
            }
        }
        Ok(())
    }

    /// Every duration key (seconds as a float): finite, in range, positive where 0 would be
    /// nonsense. The first bad one is named with its file.
    fn validate_durations(&self, f: &str) -> anyhow::Result<()> {
        use Zero::{Allowed, Refused};
        let (s, fnd, m, a) = (&self.sync, &self.finder, &self.monitor, &self.analytics);
        let mut keys: Vec<(String, f64, Zero)> = vec![
            ("sync.interval".into(), s.interval, Allowed),
            ("sync.live_checkpoint".into(), s.live_checkpoint, Allowed),
            ("sync.recheck_horizon".into(), s.recheck_horizon, Allowed),
            ("finder.http_timeout".into(), fnd.http_timeout, Refused),
            (
                "finder.validate_timeout".into(),
                fnd.validate_timeout,
                Refused,
            ),
            (
                "finder.validate_timeout_tor".into(),
                fnd.validate_timeout_tor,
                Refused,
            ),
            ("finder.backoff".into(), fnd.backoff, Allowed),
            ("finder.backoff_max".into(), fnd.backoff_max, Allowed),
            ("finder.forget_after".into(), fnd.forget_after, Allowed),
            ("finder.refresh".into(), fnd.refresh, Allowed),
            ("finder.pause_max".into(), fnd.pause_max, Allowed),
            ("monitor.interval".into(), m.interval, Refused),
            (
                "monitor.timeout_clearnet".into(),
                m.timeout_clearnet,
                Refused,
            ),
            ("monitor.timeout_tor".into(), m.timeout_tor, Refused),
            ("analytics.interval".into(), a.interval, Refused),
            (
                "analytics.orphan_interval".into(),
                a.orphan_interval,
                Allowed,
            ),
            ("dvm.job_timeout".into(), self.dvm.job_timeout, Refused),
            ("shutdown.grace".into(), self.shutdown.grace, Allowed),
        ];
        for (net, t) in [("clearnet", &s.timeouts.clearnet), ("tor", &s.timeouts.tor)] {
            let key = |k: &str| format!("sync.timeouts.{net}.{k}");
            keys.push((key("connect"), t.connect, Refused));
            keys.push((key("idle"), t.idle, Refused));
            keys.push((key("relay"), t.relay, Allowed));
        }
        for (i, o) in s.overrides.iter().enumerate() {
            let key = |k: &str| format!("sync.overrides[{i}].{k}");
            let each = [
                ("connect", o.connect, Refused),
                ("idle", o.idle, Refused),
                ("relay", o.relay, Allowed),
            ];
            for (k, v, zero) in each {
                if let Some(v) = v {
                    keys.push((key(k), v, zero));
                }
            }
        }
        for (i, h) in fnd.http.iter().enumerate() {
            keys.push((format!("finder.http[{i}].cooldown"), h.cooldown, Allowed));
        }
        for (key, v, zero) in keys {
            check_seconds(f, &key, v, zero)?;
        }
        Ok(())
    }

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
            max_age: Duration::from_millis(self.batch.max_age_ms),
        }
    }

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
            transport: TransportConfig {
                max_message_bytes: self.net.max_message_bytes,
                max_frame_bytes: self.net.max_frame_bytes,
                write_buffer_bytes: self.net.write_buffer_bytes,
                socks5: (!self.net.socks5.is_empty()).then(|| self.net.socks5.clone()),
                proxy_all: false,
            },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_parses_and_validates() {
        let text = include_str!("../config/bigbrotr.toml");
        let cfg = Config::parse(text, Path::new("config/bigbrotr.toml")).expect("parse");
        cfg.validate().expect("valid");
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
            (d.clearnet.connect, 7.5, d.clearnet.relay)
        );
        assert_eq!(
            (tor.connect, tor.idle, tor.relay),
            (d.tor.connect, d.tor.idle, 10.0)
        );
        // An unknown key in such a table is still an error naming it.
        let e = Config::parse("[sync.timeouts.tor]\nconect = 1\n", Path::new("x.toml"))
            .expect_err("typo");
        assert!(e.to_string().contains("conect"), "{e}");
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
