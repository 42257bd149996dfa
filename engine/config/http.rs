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
}

impl Default for Http {
    fn default() -> Self {
        Http {
            listen: String::new(),
            api: true,
            max_limit: 500,
            statement_timeout_ms: Millis::new(5000),
            readonly_database_url: String::new(),
            max_response_bytes: 4 << 20,
            max_connections: 1024,
            header_timeout_ms: Millis::new(10_000),
            idle_timeout_ms: Millis::new(60_000),
            request_timeout_ms: Millis::new(30_000),
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
            ],
        )
    }
}
