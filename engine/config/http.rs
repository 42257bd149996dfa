//! `[http]`: health, readiness, metrics and the read-only REST API.

use super::{check_all, Millis};
use serde::Deserialize;

/// `[http]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// `host:port` to serve /health, /ready, /metrics and the API on; empty = no HTTP server.
    pub listen: String,
    /// Serve the read-only REST API and /openapi.json (health and metrics are always served).
    pub api: bool,
    /// Largest `limit` an API request may ask for (larger ones are capped).
    pub max_limit: u32,
    /// `statement_timeout` of the API's database connections, in milliseconds.
    pub statement_timeout_ms: Millis,
    /// Connection string for the API; empty = the archive's server as role `bigbrotr_reader`.
    pub readonly_database_url: String,
    /// Database connections the REST API and the relay endpoint read with, shared; requests
    /// beyond them wait in arrival order (at most 5 s, then 503 / "busy").
    pub read_connections: u32,
    /// Largest API page in bytes: a page is cut (`truncated`) before it grows past this,
    /// except that one event larger than it is still returned alone.
    pub max_response_bytes: usize,
    /// HTTP connections served at once; more are closed at accept (clamped to a quarter of
    /// the process's file-descriptor limit, so relay sockets always have room).
    pub max_connections: usize,
    /// Milliseconds a client has to send a whole request head (also the keep-alive idle
    /// time between two requests); slower connections are closed.
    pub header_timeout_ms: Millis,
    /// Milliseconds a connection may move no byte while no request is being handled
    /// (a client that stops reading its answer, or sending its body) before it is closed.
    pub idle_timeout_ms: Millis,
    /// Milliseconds a request may take from its head to its answer; past it, 503.
    pub request_timeout_ms: Millis,
    /// Serve the archive as a read-only Nostr relay (NIP-01 REQ, NIP-45 COUNT, NIP-77
    /// negentropy) on `ws://<listen>/`, with its NIP-11 document on the same URL.
    pub relay: bool,
    /// The relay's NIP-11 `name`.
    pub relay_name: String,
    /// The relay's NIP-11 `description`.
    pub relay_description: String,
    /// Relay WebSocket connections open at once (each also takes one of `max_connections`).
    pub relay_max_connections: usize,
    /// Subscriptions (REQ) open at once on one relay connection.
    pub relay_max_subscriptions: usize,
    /// Filters in one REQ or COUNT.
    pub relay_max_filters: usize,
    /// Values in one filter, all lists together (ids, authors, kinds, tag values).
    pub relay_max_filter_values: usize,
    /// Largest client message in bytes; a larger one is answered with a NOTICE (one over
    /// twice this closes the connection, unread).
    pub relay_max_message_bytes: usize,
    /// Bytes queued for a relay client that does not read; past it the connection is closed.
    pub relay_max_outbound_bytes: usize,
    /// Milliseconds a relay connection may send nothing before it is closed.
    pub relay_idle_timeout_ms: Millis,
    /// Most archived ids one NIP-77 reconciliation holds (40 bytes each); a filter matching
    /// more is answered `NEG-ERR blocked:`.
    pub relay_max_neg_ids: usize,
    /// NIP-77 reconciliations open at once on the whole server.
    pub relay_max_neg_sessions: usize,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            listen: String::new(),
            api: true,
            max_limit: 500,
            statement_timeout_ms: Millis::new(5000),
            readonly_database_url: String::new(),
            read_connections: 4,
            max_response_bytes: 4 << 20,
            max_connections: 1024,
            header_timeout_ms: Millis::new(10_000),
            idle_timeout_ms: Millis::new(60_000),
            request_timeout_ms: Millis::new(30_000),
            relay: true,
            relay_name: "bigbrotr archive".into(),
            relay_description: "A read-only archive of the Nostr network".into(),
            relay_max_connections: 256,
            relay_max_subscriptions: 20,
            relay_max_filters: 10,
            relay_max_filter_values: 1000,
            relay_max_message_bytes: 524_288,
            relay_max_outbound_bytes: 4 << 20,
            relay_idle_timeout_ms: Millis::new(300_000),
            relay_max_neg_ids: 500_000,
            relay_max_neg_sessions: 4,
        }
    }
}

impl Http {
    /// Checks the `[http]` values that parse but make no sense; errors name `file` and the key.
    pub fn validate(&self, file: &str) -> anyhow::Result<()> {
        if !self.listen.is_empty() && self.listen.parse::<std::net::SocketAddr>().is_err() {
            anyhow::bail!(
                "{file}: key `http.listen` must be ip:port (e.g. \"127.0.0.1:8080\") or empty, got {:?}",
                self.listen
            );
        }
        check_all(
            file,
            &[
                (self.max_limit >= 1, "http.max_limit", "must be at least 1"),
                (
                    (1..=100).contains(&self.read_connections),
                    "http.read_connections",
                    "must be between 1 and 100 (each is a PostgreSQL connection)",
                ),
                (
                    self.max_response_bytes >= 1024,
                    "http.max_response_bytes",
                    "must be at least 1024",
                ),
                (
                    self.max_connections >= 1,
                    "http.max_connections",
                    "must be at least 1",
                ),
                (
                    self.header_timeout_ms.is_positive(),
                    "http.header_timeout_ms",
                    "must be at least 1",
                ),
                (
                    self.idle_timeout_ms.is_positive(),
                    "http.idle_timeout_ms",
                    "must be at least 1",
                ),
                (
                    self.request_timeout_ms.is_positive(),
                    "http.request_timeout_ms",
                    "must be at least 1",
                ),
                (
                    (1..=self.max_connections).contains(&self.relay_max_connections),
                    "http.relay_max_connections",
                    "must be between 1 and http.max_connections",
                ),
                (
                    self.relay_max_subscriptions >= 1,
                    "http.relay_max_subscriptions",
                    "must be at least 1",
                ),
                (
                    self.relay_max_filters >= 1,
                    "http.relay_max_filters",
                    "must be at least 1",
                ),
                (
                    self.relay_max_filter_values >= 1,
                    "http.relay_max_filter_values",
                    "must be at least 1",
                ),
                (
                    self.relay_max_message_bytes >= 16_384,
                    "http.relay_max_message_bytes",
                    "must be at least 16384 (NIP-77 frames are at least 4096 bytes, hex-encoded)",
                ),
                (
                    self.relay_max_outbound_bytes >= 1024,
                    "http.relay_max_outbound_bytes",
                    "must be at least 1024",
                ),
                (
                    self.relay_idle_timeout_ms.is_positive(),
                    "http.relay_idle_timeout_ms",
                    "must be at least 1",
                ),
                (
                    self.relay_max_neg_ids >= 1,
                    "http.relay_max_neg_ids",
                    "must be at least 1",
                ),
                (
                    self.relay_max_neg_sessions >= 1,
                    "http.relay_max_neg_sessions",
                    "must be at least 1",
                ),
            ],
        )
    }
}
