//! The engine's HTTP server: `/health`, `/ready`, `/metrics` (Prometheus text), the
//! read-only REST API over the archive with its OpenAPI document at `/openapi.json`, and the
//! archive as a read-only Nostr relay on `ws://<listen>/` ([`relay`]).
//!
//! The API reads through its own small pool connected as the read-only role
//! `bigbrotr_reader` (migration 007), every connection started with `statement_timeout` and
//! `default_transaction_read_only`, so no request can write or run unbounded. Health,
//! readiness and the registry counts in `/metrics` use the engine's pool.
//!
//! Everything a client can make the server hold is bounded (see [`server`]): connections,
//! the time to send a request head, idle connections, a request's duration, and the bytes of
//! an API page (`http.max_response_bytes`).

pub mod api;
pub mod dashboard;
pub mod health;
pub mod metrics;
pub mod relay;
pub mod server;

use crate::config::{self, Config};
use crate::db::Pool;
use crate::state::EngineState;
use anyhow::Context;
use axum::routing::get;
use axum::Router;
use bb8_postgres::PostgresConnectionManager;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

/// The database role the API connects as when `http.readonly_database_url` is empty.
pub const READER_ROLE: &str = "bigbrotr_reader";

/// Longest a request waits for a pooled API connection before it is answered 503.
pub const READER_CHECKOUT: Duration = Duration::from_secs(5);

/// Longest the API's first connection may take at start.
const READER_CONNECT: Duration = Duration::from_secs(10);

/// The API's read-only pool, whose connections go to requests in arrival order. bb8 lets a
/// new request take a connection that was just returned while an earlier one is being woken
/// for it, and the woken one queues again at the back: with 50 clients on 4 connections that
/// made REST's p95 twice its median. A fair semaphore of the pool's size in front restores
/// first come, first served.
#[derive(Clone)]
pub struct Reader {
    pool: Pool,
    turns: Arc<tokio::sync::Semaphore>,
}

/// A connection of the [`Reader`], with the turn it holds until it is returned.
pub struct ReaderConn<'a> {
    // Declared first, so dropped first: the connection is back in the pool before the next
    // request in line is let through.
    conn: bb8::PooledConnection<'a, PostgresConnectionManager<NoTls>>,
    _turn: tokio::sync::SemaphorePermit<'a>,
}

impl<'a> std::ops::Deref for ReaderConn<'a> {
    type Target = bb8::PooledConnection<'a, PostgresConnectionManager<NoTls>>;
    fn deref(&self) -> &Self::Target {
        &self.conn
    }
}

impl Reader {
    /// `pool` (of `size` connections) handed out in arrival order.
    pub fn new(pool: Pool, size: u32) -> Reader {
        Reader {
            pool,
            turns: Arc::new(tokio::sync::Semaphore::new(size.max(1) as usize)),
        }
    }

    /// The underlying pool (for reads that need no fairness: the dashboard, metrics).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The next connection in arrival order, waiting at most `wait` in all.
    pub async fn get(
        &self,
        wait: Duration,
    ) -> Result<ReaderConn<'_>, bb8::RunError<tokio_postgres::Error>> {
        let start = tokio::time::Instant::now();
        let turn = tokio::time::timeout(wait, self.turns.acquire())
            .await
            .map_err(|_| bb8::RunError::TimedOut)?
            .map_err(|_| bb8::RunError::TimedOut)?;
        let left = wait.saturating_sub(start.elapsed());
        let conn = tokio::time::timeout(left, self.pool.get())
            .await
            .map_err(|_| bb8::RunError::TimedOut)??;
        Ok(ReaderConn { conn, _turn: turn })
    }
}

/// What every handler sees.
pub struct AppState {
    /// The running engine's counters and readiness.
    pub engine: Arc<EngineState>,
    /// The engine's (writer) pool: readiness probe and registry counts.
    pub pool: Pool,
    /// The read-only pool of the API; `None` when `http.api` is off.
    pub reader: Option<Reader>,
    /// Largest `limit` honoured.
    pub max_limit: i64,
    /// Registry counts for `/metrics`, refreshed at most once a minute.
    pub registry: metrics::RegistryCache,
    /// Largest API page in bytes (`http.max_response_bytes`).
    pub max_response_bytes: usize,
    /// Connection counters of the server.
    pub conns: Arc<server::ConnStats>,
    /// The readiness probe: its own database connection and the relay watch.
    pub ready: health::ReadyProbe,
    /// The relay endpoint (`http.relay`), reading through `reader`.
    pub relay: Option<Arc<relay::Relay>>,
    /// Whether tag filters may use the tag index, asked at most every few seconds.
    pub tag_index: crate::filter_sql::TagIndexReady,
}

/// A bound, not yet serving, HTTP server: bind it before the pipeline starts (so a busy port
/// fails the start), then [`Http::spawn`] it with the engine's state.
pub struct Http {
    listener: tokio::net::TcpListener,
    pool: Pool,
    reader: Option<Reader>,
    max_limit: u32,
    max_response_bytes: usize,
    limits: server::Limits,
    probe_config: Option<tokio_postgres::Config>,
    live: bool,
    api: bool,
    relay: Option<config::Http>,
    /// `[archive] bodies`: whether the relay endpoint has events to serve.
    bodies: bool,
}

impl Http {
    /// Binds `http.listen` and, when `http.api` is on, opens the API's read-only pool;
    /// `Ok(None)` when `http.listen` is empty (no HTTP server).
    pub async fn bind(cfg: &Config, archive_url: &str, pool: Pool) -> anyhow::Result<Option<Http>> {
        let http = &cfg.http;
        if http.listen.is_empty() {
            return Ok(None);
        }
        let listener = tokio::net::TcpListener::bind(&http.listen)
            .await
            .with_context(|| format!("cannot listen on {} (key `http.listen`)", http.listen))?;
        let reader = if http.api || http.relay {
            Some(Reader::new(
                reader_pool(http, archive_url).await?,
                http.read_connections,
            ))
        } else {
            None
        };
        let nofile = server::nofile_limit();
        let limits = server::Limits::new(http, nofile);
        Ok(Some(Http {
            listener,
            pool,
            reader,
            max_limit: http.max_limit,
            max_response_bytes: http.max_response_bytes.max(1024),
            limits,
            probe_config: health::probe_config(archive_url),
            live: cfg.sync.live,
            api: http.api,
            relay: http.relay.then(|| http.clone()),
            bodies: cfg.archive.bodies,
        }))
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Starts serving with the running engine's state. Dropping the returned [`Server`]
    /// leaves it running until the runtime ends; [`Server::shutdown`] stops it.
    pub fn spawn(self, engine: Arc<EngineState>) -> Server {
        let addr = self
            .listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let api = self.api && self.reader.is_some();
        let conns = Arc::new(server::ConnStats::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let relay = match (&self.relay, &self.reader) {
            (Some(http), Some(_)) => Some(Arc::new(relay::Relay::new(
                http,
                self.bodies,
                stop_rx.clone(),
            ))),
            _ => None,
        };
        let state = Arc::new(AppState {
            engine,
            pool: self.pool,
            reader: self.reader,
            max_limit: i64::from(self.max_limit.max(1)),
            registry: metrics::RegistryCache::default(),
            max_response_bytes: self.max_response_bytes,
            conns: conns.clone(),
            ready: health::ReadyProbe::new(self.probe_config, self.live),
            relay: relay.clone(),
            tag_index: crate::filter_sql::TagIndexReady::default(),
        });
        let app = router(state.clone(), api);
        let listener = self.listener;
        let limits = self.limits;
        tracing::info!(
            %addr,
            api,
            max_connections = limits.max_connections,
            max_response_bytes = self.max_response_bytes,
            "HTTP server listening"
        );
        let task = tokio::spawn(async move {
            // A dropped Server detaches: only an explicit shutdown stops serving (the accept
            // loop and the relay watch both wait for a `true`, not for the sender's drop).
            let watch_relays = health::watch_archiving(state, stop_rx.clone());
            let serving = server::serve(listener, app, limits, conns, stop_rx);
            tokio::join!(watch_relays, serving);
        });
        Server {
            addr,
            stop: stop_tx,
            task,
            relay,
        }
    }
}

/// A serving HTTP server.
pub struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    relay: Option<Arc<relay::Relay>>,
}

impl Server {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The relay endpoint and its counters, when `http.relay` is on.
    pub fn relay(&self) -> Option<&Arc<relay::Relay>> {
        self.relay.as_ref()
    }

    /// Stops accepting connections, lets requests in flight finish, and waits for that.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// The routes: health, readiness and metrics always; the API and its OpenAPI document when
/// `api` is true; the relay endpoint on `/` when `state.relay` is set. Unknown paths get a
/// JSON 404.
pub fn router(state: Arc<AppState>, api: bool) -> Router {
    let mut r = Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(metrics::metrics));
    if api {
        r = r
            .route("/openapi.json", get(api::openapi_json))
            .route("/api/relays", get(api::list_relays))
            .route("/api/relays/{url}/metadata", get(api::relay_metadata))
            .route(
                "/api/relays/{url}/metadata/history",
                get(api::relay_metadata_history),
            )
            .route("/api/events", get(api::events))
            .route("/api/stats", get(api::stats))
            .route("/api/stats/kinds", get(api::stats_kinds))
            .route("/api/stats/pubkeys", get(api::stats_pubkeys))
            .route("/api/stats/relays", get(api::stats_relays));
    }
    // Always routed: without the relay endpoint a browser is still sent to the dashboard.
    r = r.route("/", get(relay::root));
    r = dashboard::mount(r, &state);
    r.fallback(api::not_found).with_state(state)
}

/// The API's connection settings: `http.readonly_database_url`, or the archive's server and
/// database as role [`READER_ROLE`] (no password: the embedded cluster trusts local
/// connections); either way with `statement_timeout` and read-only transactions.
pub fn reader_config(
    http: &config::Http,
    archive_url: &str,
) -> anyhow::Result<tokio_postgres::Config> {
    let mut c = if http.readonly_database_url.is_empty() {
        // Parse errors here would show the writer's password: name the key instead.
        let w = tokio_postgres::Config::from_str(archive_url)
            .map_err(|_| anyhow::anyhow!("the archive's connection string does not parse"))?;
        let mut c = tokio_postgres::Config::new();
        for h in w.get_hosts() {
            match h {
                tokio_postgres::config::Host::Tcp(s) => {
                    c.host(s);
                }
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(p) => {
                    c.host_path(p);
                }
            }
        }
        for a in w.get_hostaddrs() {
            c.hostaddr(*a);
        }
        for p in w.get_ports() {
            c.port(*p);
        }
        // libpq's default database is the user's name: keep the writer's, not the reader's.
        if let Some(db) = w.get_dbname().or(w.get_user()) {
            c.dbname(db);
        }
        if let Some(t) = w.get_connect_timeout() {
            c.connect_timeout(*t);
        }
        c.user(READER_ROLE);
        c
    } else {
        tokio_postgres::Config::from_str(&http.readonly_database_url).map_err(|_| {
            anyhow::anyhow!("key `http.readonly_database_url` is not a valid connection string")
        })?
    };
    let options = format!(
        "{} -c statement_timeout={} -c default_transaction_read_only=on",
        c.get_options().unwrap_or(""),
        http.statement_timeout_ms.as_millis().max(1)
    );
    c.options(options.trim());
    if c.get_application_name().is_none() {
        c.application_name("bigbrotr-api");
    }
    Ok(c)
}

/// Opens the API's read-only pool (see [`reader_config`]); fails at once with a hint when
/// the role cannot connect.
pub async fn reader_pool(http: &config::Http, archive_url: &str) -> anyhow::Result<Pool> {
    let config = reader_config(http, archive_url)?;
    let who = config.get_user().unwrap_or("(default user)").to_string();
    let hint =
        "set `http.readonly_database_url`, or `http.api = false` to serve only health and metrics";
    let probe = tokio::time::timeout(READER_CONNECT, config.connect(NoTls))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "HTTP API: no answer from PostgreSQL as {who} within {}s; {hint}",
                READER_CONNECT.as_secs()
            )
        })?
        .map_err(|e| {
            anyhow::anyhow!("HTTP API: cannot connect to PostgreSQL as {who}: {e}; {hint}")
        })?;
    drop(probe);
    bb8::Pool::builder()
        .max_size(http.read_connections.max(1))
        // bb8 would send an empty query before every checkout: one more round trip per
        // request. A connection the server closed is dropped by `has_broken`; one that breaks
        // unseen fails its request with a 503 and is then dropped.
        .test_on_check_out(false)
        .connection_timeout(READER_CHECKOUT)
        .build(PostgresConnectionManager::new(config, NoTls))
        .await
        .with_context(|| format!("HTTP API: cannot open a connection pool as {who}"))
}
