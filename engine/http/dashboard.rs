//! `/dashboard/`: a read-only page served by the engine itself (HTML, CSS and JavaScript
//! embedded in the binary, no build step, no CDN), and the two JSON endpoints it polls that the
//! REST API lacks: `/api/dashboard/overview` (archive totals and their history, ingest rates,
//! channel depths, verify load, analytics lag) and `/api/dashboard/relays` (every registry relay
//! with its newest check, NIP-11 facts, sightings and the engine's live counters).
//!
//! Every call stays cheap on a large archive: totals come from the analytics summaries plus
//! the tail the views merge (bounded by `analytics.view_tail`), relay rows from the registry
//! and `relay_metadata_latest` (one row per relay, at most [`MAX_RELAYS`] sent), live figures from
//! the engine's atomics. The history is sampled by this process every [`SAMPLE_EVERY`] into
//! two bounded rings, so a page opened late still sees the last hour finely and the last week
//! coarsely. The page also reads `/api/stats/kinds` and `/api/stats/pubkeys`.

use super::api::ApiError;
use super::AppState;
use axum::extract::{RawQuery, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use bigbrotr_stages::model::stats::Reason;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use utoipa::ToSchema;

/// Most relays one `/api/dashboard/relays` answer lists (those with the most sightings); the
/// counts by network and status cover the whole registry.
pub const MAX_RELAYS: usize = 500;

/// How often the sampler records the archive's totals and the engine's counters.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// Fine samples kept: one hour at [`SAMPLE_EVERY`].
const FINE_SAMPLES: usize = 360;

/// Every how many fine samples a coarse one is kept (5 minutes).
const COARSE_EVERY: u64 = 30;

/// Coarse samples kept: seven days at 5 minutes.
const COARSE_SAMPLES: usize = 2016;

/// Longest the sampler's totals query may take; a slow database skips a sample.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(3);

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const APP_CSS: &str = include_str!("dashboard/app.css");

/// The archive's totals: events and sightings, as the statistics views count them.
const TOTALS_SQL: &str = "SELECT
    (SELECT total_events FROM analytics_state)
      + (SELECT count(*) FROM events AS e
         WHERE e.ingest_seq > analytics_watermark() AND e.ingest_seq <= analytics_view_bound()),
    (SELECT coalesce(sum(event_count), 0)::int8 FROM analytics_relays)
      + (SELECT count(*) FROM events_relays AS s
         WHERE s.ingest_seq > analytics_watermark() AND s.ingest_seq <= analytics_view_bound()),
    (SELECT count(*) FROM relays)";

/// One point of the archive's history.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct Sample {
    /// Unix seconds.
    pub t: i64,
    /// Events in the archive.
    pub events: i64,
    /// Sightings (`events_relays` rows) in the archive.
    pub sightings: i64,
}

/// What the sampler keeps between samples to turn counters into rates.
struct Counters {
    at: Instant,
    busy_ns: u64,
    events: u64,
    sightings: u64,
    committed: HashMap<String, u64>,
}

/// Rates over the last sampling interval.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Rates {
    /// New events committed per second.
    pub events_per_sec: f64,
    /// New sightings committed per second.
    pub sightings_per_sec: f64,
    /// Verify threads busy on average (busy seconds per second).
    pub verify_busy_threads: f64,
    /// Seconds the rates are measured over (0 before the second sample).
    pub interval_secs: f64,
}

/// The sampler's state, shared with the handlers.
#[derive(Default)]
struct History {
    fine: VecDeque<Sample>,
    coarse: VecDeque<Sample>,
    taken: u64,
    last: Option<Counters>,
    rates: Rates,
    relay_rates: HashMap<String, f64>,
}

/// What the dashboard's handlers see.
struct Dash {
    app: Arc<AppState>,
    history: Mutex<History>,
}

/// Adds the page, its assets and its endpoints to `r`, and starts the sampler (when called
/// inside a Tokio runtime); the sampler ends with the server's state.
pub fn mount(r: Router<Arc<AppState>>, app: &Arc<AppState>) -> Router<Arc<AppState>> {
    let dash = Arc::new(Dash {
        app: app.clone(),
        history: Mutex::new(History::default()),
    });
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(sample_forever(Arc::downgrade(&dash)));
    }
    let routes = Router::new()
        // Relative, so the redirect also works behind a path prefix.
        .route(
            "/dashboard",
            get(|| async { Redirect::permanent("dashboard/") }),
        )
        .route(
            "/dashboard/",
            get(|| async { asset("text/html", INDEX_HTML) }),
        )
        .route(
            "/dashboard/index.html",
            get(|| async { asset("text/html", INDEX_HTML) }),
        )
        .route(
            "/dashboard/app.js",
            get(|| async { asset("text/javascript", APP_JS) }),
        )
        .route(
            "/dashboard/app.css",
            get(|| async { asset("text/css", APP_CSS) }),
        )
        .route("/api/dashboard/overview", get(overview))
        .route("/api/dashboard/relays", get(relays))
        .with_state(dash);
    r.merge(routes)
}

/// An embedded file; `no-cache` so a new binary's page is seen at the next load.
fn asset(kind: &str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, format!("{kind}; charset=utf-8")),
            (CACHE_CONTROL, "no-cache".to_string()),
        ],
        body,
    )
        .into_response()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Samples every [`SAMPLE_EVERY`] until the dashboard's state is gone.
async fn sample_forever(dash: Weak<Dash>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(d) = dash.upgrade() else { return };
        sample(&d).await;
    }
}

/// Records the engine's counters (rates) and, when the database answers in time, the
/// archive's totals.
async fn sample(d: &Dash) {
    let engine = &d.app.engine;
    let p = &engine.pipeline;
    let now = Counters {
        at: Instant::now(),
        busy_ns: p.verify.busy_ns.load(Relaxed),
        events: p.sink.events_inserted.load(Relaxed),
        sightings: p.sink.sightings_inserted.load(Relaxed),
        committed: engine
            .relays()
            .iter()
            .map(|r| (r.url.to_string(), r.stats.committed.load(Relaxed)))
            .collect(),
    };
    let totals = match d.app.reader.as_ref() {
        Some(pool) => tokio::time::timeout(SAMPLE_TIMEOUT, totals(pool.pool()))
            .await
            .ok(),
        None => None,
    };
    let Ok(mut h) = d.history.lock() else { return };
    if let Some(prev) = h.last.take() {
        let dt = now.at.duration_since(prev.at).as_secs_f64();
        if dt > 0.0 {
            let per_sec = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
            h.rates = Rates {
                events_per_sec: per_sec(now.events, prev.events),
                sightings_per_sec: per_sec(now.sightings, prev.sightings),
                verify_busy_threads: per_sec(now.busy_ns, prev.busy_ns) / 1e9,
                interval_secs: dt,
            };
            h.relay_rates = now
                .committed
                .iter()
                .map(|(url, c)| {
                    let before = prev.committed.get(url).copied().unwrap_or(*c);
                    (url.clone(), per_sec(*c, before))
                })
                .collect();
        }
    }
    h.last = Some(now);
    if let Some(Ok((events, sightings, _))) = totals {
        let s = Sample {
            t: unix_now(),
            events,
            sightings,
        };
        if h.taken % COARSE_EVERY == 0 {
            if h.coarse.len() == COARSE_SAMPLES {
                h.coarse.pop_front();
            }
            h.coarse.push_back(s);
        }
        h.taken += 1;
        if h.fine.len() == FINE_SAMPLES {
            h.fine.pop_front();
        }
        h.fine.push_back(s);
    }
}

/// Events, sightings and registry relays (see [`TOTALS_SQL`]).
async fn totals(pool: &crate::db::Pool) -> Result<(i64, i64, i64), ApiError> {
    let conn = pool.get().await.map_err(checkout)?;
    let r = conn.query_one(TOTALS_SQL, &[]).await?;
    Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))
}

/// A failed checkout of the read-only pool as the API answers it.
fn checkout(e: bb8::RunError<tokio_postgres::Error>) -> ApiError {
    match e {
        bb8::RunError::User(e) => ApiError::from_db(&e),
        bb8::RunError::TimedOut => {
            ApiError::unavailable("the database is busy: no API connection free in time")
        }
    }
}

fn reader(d: &Dash) -> Result<&crate::db::Pool, ApiError> {
    d.app
        .reader
        .as_ref()
        .map(super::Reader::pool)
        .ok_or_else(|| ApiError::unavailable("the API is disabled (http.api = false)"))
}

fn no_params(q: Option<&str>) -> Result<(), ApiError> {
    match q {
        Some(q) if !q.is_empty() => Err(ApiError::bad_request("this endpoint takes no parameters")),
        _ => Ok(()),
    }
}

/// A pipeline channel's fill.
#[derive(Debug, Serialize, ToSchema)]
pub struct Channel {
    /// Channel name (as in `bigbrotr_channel_depth`).
    pub name: String,
    /// Events waiting (an upper bound).
    pub depth: usize,
    /// Bound in events.
    pub capacity: usize,
}

/// The analytics refresher's lag.
#[derive(Debug, Serialize, ToSchema)]
pub struct Lag {
    /// Rows not folded into the summaries yet.
    pub rows: i64,
    /// Age in seconds of the oldest row not folded yet (upper bound).
    pub seconds: f64,
}

/// The `/api/dashboard/overview` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Overview {
    /// Unix seconds of the answer.
    pub now: i64,
    /// Seconds since the engine started.
    pub uptime_seconds: f64,
    /// The pipeline accepts events.
    pub ready: bool,
    /// Events in the archive.
    pub events: i64,
    /// Sightings in the archive.
    pub sightings: i64,
    /// Relays in the registry.
    pub relays: i64,
    /// Relays whose connector runs now.
    pub relays_running: usize,
    /// Relays the engine holds counters for.
    pub relays_tracked: usize,
    /// Rates over the last sampling interval.
    pub rates: Rates,
    /// Pipeline channels.
    pub channels: Vec<Channel>,
    /// Signatures verified since start.
    pub verify_verified: u64,
    /// Signatures not verified again (already verified) since start.
    pub verify_skipped: u64,
    /// Events rejected by verification since start.
    pub verify_rejected: u64,
    /// Failed batch attempts since start.
    pub sink_retries: u64,
    /// Batches committed since start.
    pub sink_batches: u64,
    /// Mean seconds per committed batch since start.
    pub sink_batch_seconds: f64,
    /// The analytics lag (null when it cannot be read).
    pub analytics_lag: Option<Lag>,
    /// Archive totals over time: every 5 minutes for a week, then every 10 s for the last hour.
    pub history: Vec<Sample>,
    /// Events per hour of `created_at` over the last 7 days (`[hour_start, events]`, folded
    /// events only).
    pub hourly: Vec<[i64; 2]>,
}

/// The archive's totals now and over time, ingest rates, pipeline fill, verify load and the
/// analytics lag.
#[utoipa::path(get, path = "/api/dashboard/overview", tag = "dashboard",
    responses(
        (status = 200, description = "The dashboard's summary", body = Overview),
        (status = 503, description = "Database unavailable or statement timeout", body = super::api::ErrorBody)))]
async fn overview(
    State(d): State<Arc<Dash>>,
    RawQuery(q): RawQuery,
) -> Result<Json<Overview>, ApiError> {
    no_params(q.as_deref())?;
    let pool = reader(&d)?;
    let conn = pool.get().await.map_err(checkout)?;
    let t = conn.query_one(TOTALS_SQL, &[]).await?;
    let hourly = conn
        .query(
            "SELECT hour_start, event_count FROM analytics_hours
             WHERE hour_start >= (extract(epoch FROM now())::int8 / 3600 - 168) * 3600
             ORDER BY hour_start",
            &[],
        )
        .await?
        .iter()
        .map(|r| Ok([r.try_get(0)?, r.try_get(1)?]))
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    drop(conn);
    let lag = match tokio::time::timeout(Duration::from_secs(1), crate::analytics::lag(pool)).await
    {
        Ok(Ok(l)) => Some(Lag {
            rows: l.seq,
            seconds: l.seconds,
        }),
        _ => None,
    };
    let e = &d.app.engine;
    let p = &e.pipeline;
    let channels = (p.depths)()
        .into_iter()
        .map(|(name, depth, capacity)| Channel {
            name: name.to_string(),
            depth,
            capacity,
        })
        .collect();
    let batches = p.sink.batches.load(Relaxed);
    let write_s = p.sink.write_ns.load(Relaxed) as f64 / 1e9;
    let (history, rates) = match d.history.lock() {
        Ok(h) => {
            let first_fine = h.fine.front().map_or(i64::MAX, |s| s.t);
            let mut v: Vec<Sample> = h
                .coarse
                .iter()
                .filter(|s| s.t < first_fine)
                .copied()
                .collect();
            v.extend(h.fine.iter().copied());
            (v, h.rates.clone())
        }
        Err(_) => (Vec::new(), Rates::default()),
    };
    Ok(Json(Overview {
        now: unix_now(),
        uptime_seconds: e.started.elapsed().as_secs_f64(),
        ready: e.is_ready(),
        events: t.try_get(0)?,
        sightings: t.try_get(1)?,
        relays: t.try_get(2)?,
        relays_running: e.running.read().map_or(0, |r| r.len()),
        relays_tracked: e.relays.read().map_or(0, |r| r.len()),
        rates,
        channels,
        verify_verified: p.verify.verified.load(Relaxed),
        verify_skipped: p.verify.skipped.load(Relaxed),
        verify_rejected: p.verify.rejected.load(Relaxed),
        sink_retries: p.sink.retries.load(Relaxed),
        sink_batches: batches,
        sink_batch_seconds: if batches > 0 {
            write_s / batches as f64
        } else {
            0.0
        },
        analytics_lag: lag,
        history,
        hourly,
    }))
}

/// One registry relay as the dashboard shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct DashRelay {
    /// Normalized URL.
    pub url: String,
    /// clearnet, tor, i2p, loki or local.
    pub network: String,
    /// `up` (connector running), `paused` (held by the engine, not running), else from the
    /// newest check: `reachable`, `unreachable`, `unknown`, `unchecked`.
    pub status: String,
    /// Unix seconds of the newest check.
    pub checked_at: Option<i64>,
    /// Milliseconds to open the WebSocket at the newest check.
    pub rtt_open: Option<i32>,
    /// Milliseconds for a REQ to be answered at the newest check.
    pub rtt_read: Option<i32>,
    /// NIP-11 name.
    pub name: Option<String>,
    /// NIP-11 software.
    pub software: Option<String>,
    /// NIP-11 version.
    pub version: Option<String>,
    /// NIP-11 supported_nips.
    pub supported_nips: Option<Vec<i32>>,
    /// NIP-11 limitation.auth_required.
    pub auth_required: Option<bool>,
    /// NIP-11 limitation.payment_required.
    pub payment_required: Option<bool>,
    /// Sightings of the relay in the archive.
    pub events: i64,
    /// Unix seconds of the newest sighting.
    pub last_seen_at: Option<i64>,
    /// Sightings committed from the relay since the engine started.
    pub committed: u64,
    /// Sightings committed per second over the last sampling interval.
    pub rate: f64,
    /// Connection or protocol failures since the engine started.
    pub failures: u64,
    /// Connections opened since the engine started.
    pub connects: u64,
    /// Inputs rejected since the engine started, by reason (only reasons with some).
    pub rejected: HashMap<String, u64>,
}

/// Registry relays of one network and status.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusCount {
    /// Network.
    pub network: String,
    /// Status, as in [`DashRelay::status`].
    pub status: String,
    /// How many relays.
    pub relays: u64,
}

/// The `/api/dashboard/relays` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct DashRelays {
    /// Relays in the registry.
    pub total: u64,
    /// The whole registry by network and status.
    pub by_status: Vec<StatusCount>,
    /// The relays with the most sightings (ties by URL), at most 500.
    pub relays: Vec<DashRelay>,
    /// True when the registry holds more relays than listed.
    pub truncated: bool,
}

/// The registry by network and status, and its relays with the most sightings (up to 500)
/// with their status, newest check, NIP-11 facts, sightings, ingest rate and rejections by
/// reason.
#[utoipa::path(get, path = "/api/dashboard/relays", tag = "dashboard",
    responses(
        (status = 200, description = "The relays", body = DashRelays),
        (status = 503, description = "Database unavailable or statement timeout", body = super::api::ErrorBody)))]
async fn relays(
    State(d): State<Arc<Dash>>,
    RawQuery(q): RawQuery,
) -> Result<Json<DashRelays>, ApiError> {
    no_params(q.as_deref())?;
    let pool = reader(&d)?;
    let conn = pool.get().await.map_err(checkout)?;
    let rows = conn
        .query(
            "SELECT s.relay_url, s.network, l.generated_at, l.openable, l.readable,
                    l.rtt_open, l.rtt_read, l.name, l.software, l.version, l.supported_nips,
                    CASE jsonb_typeof(l.limitation->'auth_required')
                         WHEN 'boolean' THEN (l.limitation->>'auth_required')::bool END,
                    CASE jsonb_typeof(l.limitation->'payment_required')
                         WHEN 'boolean' THEN (l.limitation->>'payment_required')::bool END,
                    s.event_count, s.last_seen_at
             FROM relays_statistics AS s
             LEFT JOIN relay_metadata_latest AS l ON l.relay_url = s.relay_url
             ORDER BY s.event_count DESC, s.relay_url",
            &[],
        )
        .await?;
    drop(conn);
    let truncated = rows.len() > MAX_RELAYS;
    let engine = &d.app.engine;
    let held: HashMap<String, bigbrotr_stages::model::Relay> =
        engine.relays.read().map(|m| m.clone()).unwrap_or_default();
    let running = engine.running.read().map(|r| r.clone()).unwrap_or_default();
    let rates = d
        .history
        .lock()
        .map(|h| h.relay_rates.clone())
        .unwrap_or_default();
    let mut out = Vec::with_capacity(rows.len().min(MAX_RELAYS));
    let mut by_status: std::collections::BTreeMap<(String, &'static str), u64> = Default::default();
    for (i, r) in rows.iter().enumerate() {
        let url: String = r.try_get(0)?;
        let network: String = r.try_get(1)?;
        let checked_at: Option<i64> = r.try_get(2)?;
        let openable: Option<bool> = r.try_get(3)?;
        let ctx = held.get(&url);
        let status = if running.contains(&url) {
            "up"
        } else if ctx.is_some() {
            "paused"
        } else {
            match (checked_at, openable) {
                (None, _) => "unchecked",
                (Some(_), None) => "unknown",
                (Some(_), Some(false)) => "unreachable",
                (Some(_), Some(true)) => "reachable",
            }
        };
        *by_status.entry((network.clone(), status)).or_default() += 1;
        if i >= MAX_RELAYS {
            continue;
        }
        let (committed, failures, connects, rejected) = match ctx {
            Some(c) => (
                c.stats.committed.load(Relaxed),
                c.stats.failures.load(Relaxed),
                c.stats.connects.load(Relaxed),
                Reason::ALL
                    .iter()
                    .map(|x| (x.as_str().to_string(), c.stats.rejected(*x)))
                    .filter(|(_, n)| *n > 0)
                    .collect(),
            ),
            None => (0, 0, 0, HashMap::new()),
        };
        out.push(DashRelay {
            rate: rates.get(&url).copied().unwrap_or(0.0),
            url,
            network,
            status: status.to_string(),
            checked_at,
            rtt_open: r.try_get(5)?,
            rtt_read: r.try_get(6)?,
            name: r.try_get(7)?,
            software: r.try_get(8)?,
            version: r.try_get(9)?,
            supported_nips: r.try_get(10)?,
            auth_required: r.try_get(11)?,
            payment_required: r.try_get(12)?,
            events: r.try_get(13)?,
            last_seen_at: r.try_get(14)?,
            committed,
            failures,
            connects,
            rejected,
        });
    }
    Ok(Json(DashRelays {
        total: rows.len() as u64,
        by_status: by_status
            .into_iter()
            .map(|((network, status), relays)| StatusCount {
                network,
                status: status.to_string(),
                relays,
            })
            .collect(),
        relays: out,
        truncated,
    }))
}

/// The dashboard's endpoints for the OpenAPI document (merged into it by `/openapi.json`'s
/// caller when wanted).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(overview, relays),
    components(schemas(Overview, Sample, Rates, Channel, Lag, DashRelay, StatusCount, DashRelays)),
    tags((name = "dashboard", description = "What the built-in dashboard page (/dashboard/) polls"))
)]
pub struct DashboardDoc;

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::OpenApi;

    #[test]
    fn documents_both_endpoints() {
        let doc = serde_json::to_value(DashboardDoc::openapi()).expect("json");
        for p in ["/api/dashboard/overview", "/api/dashboard/relays"] {
            assert!(doc["paths"][p]["get"].is_object(), "{p} undocumented");
        }
    }

    #[test]
    fn assets_reference_each_other() {
        assert!(INDEX_HTML.contains("href=\"app.css\"") && INDEX_HTML.contains("src=\"app.js\""));
        // The page fetches relative to /dashboard/, so it works behind a path prefix too.
        assert!(APP_JS.contains("\"../api/\""));
        assert!(
            !APP_JS.contains("innerHTML"),
            "hostile text must never become HTML"
        );
    }
}
