//! Liveness (`/health`: the process answers) and readiness (`/ready`: the pipeline runs, a
//! relay is being archived, and the database answers), for load balancers and orchestrators.
//!
//! The database check has its own connection, not the engine's pool: the pool retries a lost
//! server with a backoff of up to half its checkout timeout (15 s), so a probe through it
//! stays red long after PostgreSQL is back. Here a lost connection is replaced at the next
//! probe, so `/ready` turns green within a probe of the database returning. Probes are
//! serialised and their answer reused for [`PROBE_REUSE`], so hammering `/ready` costs the
//! database at most one `SELECT 1` (or one connection attempt) per [`PROBE_REUSE`].

use super::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_postgres::NoTls;
use utoipa::ToSchema;

/// Longest the database check waits (connection and `SELECT 1` together).
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// How long one database check's answer is reused by the next probes.
const PROBE_REUSE: Duration = Duration::from_millis(250);

/// How often the relay watch samples whether a connector runs.
const WATCH_EVERY: Duration = Duration::from_millis(250);

/// How long no relay may be archived before `/ready` says so: a connector that restarts
/// (new limits, the next pass) leaves none running for a moment.
pub const ARCHIVING_GRACE: Duration = Duration::from_secs(3);

/// The `/ready` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// True when the pipeline accepts events, a relay is being archived (or none is known
    /// yet) and the database answers.
    pub ready: bool,
    /// Why it is not ready (absent when ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Seconds since the engine started.
    pub uptime_seconds: u64,
    /// Relays the engine holds (running, paused, or waiting for their next pass).
    pub relays: usize,
    /// Relays whose connector runs now.
    pub archiving: usize,
}

/// The readiness probe's state: its database connection, its last answer, and when a relay
/// was last seen being archived.
pub struct ReadyProbe {
    config: Option<tokio_postgres::Config>,
    client: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
    last: std::sync::Mutex<Option<(Instant, Result<(), String>)>>,
    /// Relays are synced continuously (`sync.live`): none running means none archived.
    live: bool,
    base: Instant,
    /// Milliseconds after `base` when a connector was last seen running (or no relay was
    /// known, which is not a failure either).
    archiving_at_ms: AtomicU64,
}

impl ReadyProbe {
    /// A probe connecting with `config` (the archive's; `None` checks through the engine's
    /// pool instead); `live` is `sync.live`.
    pub fn new(config: Option<tokio_postgres::Config>, live: bool) -> ReadyProbe {
        ReadyProbe {
            config,
            client: tokio::sync::Mutex::new(None),
            last: std::sync::Mutex::new(None),
            live,
            base: Instant::now(),
            archiving_at_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Records that a relay is being archived now (or that none is known).
    fn archiving_now(&self) {
        self.archiving_at_ms.store(self.now_ms(), Relaxed);
    }

    /// How long no relay has been archived while some were known.
    fn not_archiving_for(&self) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.archiving_at_ms.load(Relaxed)),
        )
    }

    /// The database check: a reused recent answer, else `SELECT 1` on the probe's own
    /// connection (opened again when lost), all within [`READY_TIMEOUT`].
    async fn database(&self, pool: &crate::db::Pool) -> Result<(), String> {
        if let Some(r) = self.recent() {
            return r;
        }
        let r = match tokio::time::timeout(READY_TIMEOUT, self.check(pool)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "database: no answer to SELECT 1 within {} ms",
                READY_TIMEOUT.as_millis()
            )),
        };
        if let Ok(mut last) = self.last.lock() {
            *last = Some((Instant::now(), r.clone()));
        }
        r
    }

    fn recent(&self) -> Option<Result<(), String>> {
        let last = self.last.lock().ok()?;
        let (at, r) = last.as_ref()?;
        (at.elapsed() < PROBE_REUSE).then(|| r.clone())
    }

    async fn check(&self, pool: &crate::db::Pool) -> Result<(), String> {
        let Some(config) = &self.config else {
            return probe_pool(pool).await;
        };
        let mut slot = self.client.lock().await;
        // A probe that waited for the lock reuses the answer the holder just stored.
        if let Some(r) = self.recent() {
            return r;
        }
        if slot.as_ref().is_none_or(|c| c.is_closed()) {
            *slot = None;
            let (client, connection) = config
                .connect(NoTls)
                .await
                .map_err(|e| format!("database: cannot connect ({e})"))?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            *slot = Some(client);
        }
        let Some(client) = slot.as_ref() else {
            return Err("database: no connection".to_string());
        };
        let r = client
            .simple_query("SELECT 1")
            .await
            .map(drop)
            .map_err(|e| format!("database: {e}"));
        if r.is_err() {
            // Connect again at the next probe rather than asking a broken connection.
            *slot = None;
        }
        r
    }
}

/// The probe's connection settings: the archive's, with a short connect timeout and its own
/// application name; `None` when the string does not parse (the pool is used then).
pub fn probe_config(archive_url: &str) -> Option<tokio_postgres::Config> {
    let mut c: tokio_postgres::Config = archive_url.parse().ok()?;
    c.connect_timeout(READY_TIMEOUT);
    c.application_name("bigbrotr-ready");
    Some(c)
}

/// Samples, until `stop`, whether a connector runs, so `/ready` can tell a moment between two
/// runs from relays that all stopped (paused after failures, or unreachable).
pub async fn watch_archiving(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(WATCH_EVERY);
    // Detached server (sender dropped without a stop): watch for the rest of the process.
    let mut detached = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let (relays, archiving) = relay_counts(&state);
                if archiving > 0 || relays == 0 {
                    state.ready.archiving_now();
                }
            }
            closed = async { stop.wait_for(|s| *s).await.is_err() }, if !detached => {
                if !closed {
                    return;
                }
                detached = true;
            }
        }
    }
}

/// (relays held, relays whose connector runs).
fn relay_counts(s: &AppState) -> (usize, usize) {
    let relays = s.engine.relays.read().map(|m| m.len()).unwrap_or(0);
    let archiving = s.engine.running.read().map(|r| r.len()).unwrap_or(0);
    (relays, archiving)
}

/// The process is up.
#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "The process answers", body = String, content_type = "text/plain")))]
pub async fn health() -> &'static str {
    "ok"
}

/// Ready to serve: the pipeline is running, a relay is being archived, and the database
/// answers `SELECT 1` within a second.
///
/// With relays known but no connector running for [`ARCHIVING_GRACE`] (all paused after
/// failures, or reported unreachable) it is not ready. An engine that holds no relay (an
/// empty registry while the finder looks) is ready: nothing is failing. With
/// `sync.live = false` relays wait between passes by design, so only the pipeline and the
/// database count.
#[utoipa::path(get, path = "/ready", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready; `reason` says why", body = Readiness)))]
pub async fn ready(State(s): State<Arc<AppState>>) -> Response {
    let uptime_seconds = s.engine.started.elapsed().as_secs();
    let (relays, archiving) = relay_counts(&s);
    if archiving > 0 || relays == 0 {
        s.ready.archiving_now();
    }
    let idle = s.ready.not_archiving_for();
    let reason = if !s.engine.is_ready() {
        Some("pipeline not running (starting or draining)".to_string())
    } else if s.ready.live && relays > 0 && archiving == 0 && idle >= ARCHIVING_GRACE {
        Some(format!(
            "no relay is being archived: none of the {relays} relays has a running connector (paused after failures or reported unreachable) for {} s",
            idle.as_secs()
        ))
    } else {
        s.ready.database(&s.pool).await.err()
    };
    let status = if reason.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        ready: reason.is_none(),
        reason,
        uptime_seconds,
        relays,
        archiving,
    };
    (status, Json(body)).into_response()
}

/// `SELECT 1` through the engine's pool (when the archive's connection string does not parse
/// for the probe's own connection).
async fn probe_pool(pool: &crate::db::Pool) -> Result<(), String> {
    let conn = pool
        .get()
        .await
        .map_err(|e| format!("database: no connection ({e})"))?;
    conn.query_one("SELECT 1", &[])
        .await
        .map(drop)
        .map_err(|e| format!("database: {e}"))
}
