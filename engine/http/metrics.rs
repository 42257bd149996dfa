//! `/metrics`: the engine's counters in the Prometheus text exposition format (0.0.4),
//! written by hand from the live atomics, so a scrape costs no query; the registry counts
//! by network and monitor status come from a cache refreshed at most once a minute.

use super::{AppState, Reader};
use crate::db::Pool;
use crate::state::EngineState;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use bigbrotr_stages::model::stats::{Fallback, Reason};
use bigbrotr_stages::model::{Network, RelayUrl};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the registry counts are recomputed (they scan `relays` and the latest check
/// of each relay).
const REGISTRY_REFRESH: Duration = Duration::from_secs(60);

/// Longest the registry count query may take; a scrape never waits longer for it.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(3);

/// Every network, so a network with no relay shows 0 rather than disappearing.
const NETWORKS: [Network; 5] = [
    Network::Clearnet,
    Network::Tor,
    Network::I2p,
    Network::Loki,
    Network::Local,
];

/// Relays of the registry with one network and monitor status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryCount {
    /// `relays.network`.
    pub network: String,
    /// From the newest check: `readable`, `openable` (connects but does not answer a
    /// REQ), `unreachable`, `unknown` (checked without a connection result), `unchecked`.
    pub status: String,
    /// How many relays.
    pub relays: i64,
}

/// The registry counts and when they were last attempted.
#[derive(Default)]
pub struct RegistryCache {
    data: std::sync::RwLock<Option<Vec<RegistryCount>>>,
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
}

impl RegistryCache {
    /// The counts, refreshed first when older than a minute. Concurrent scrapes do not
    /// queue behind a refresh: they get the previous counts.
    pub async fn current(&self, pool: &Pool) -> Option<Vec<RegistryCount>> {
        if let Ok(mut last) = self.last_attempt.try_lock() {
            if last.is_none_or(|t| t.elapsed() >= REGISTRY_REFRESH) {
                *last = Some(Instant::now());
                match tokio::time::timeout(REGISTRY_TIMEOUT, registry_counts(pool)).await {
                    Ok(Ok(v)) => {
                        if let Ok(mut d) = self.data.write() {
                            *d = Some(v);
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "registry counts for /metrics failed")
                    }
                    Err(_) => tracing::debug!("registry counts for /metrics timed out"),
                }
            }
        }
        self.data.read().ok().and_then(|d| d.clone())
    }
}

/// Counts `relays` by network and status of the newest check (`relay_metadata_latest`).
async fn registry_counts(pool: &Pool) -> anyhow::Result<Vec<RegistryCount>> {
    let conn = pool.get().await?;
    let rows = conn
        .query(
            "SELECT r.network,
                    CASE WHEN l.relay_url IS NULL THEN 'unchecked'
                         WHEN l.openable IS NULL THEN 'unknown'
                         WHEN NOT l.openable THEN 'unreachable'
                         WHEN l.readable THEN 'readable'
                         ELSE 'openable' END AS status,
                    count(*)
             FROM relays AS r
             LEFT JOIN relay_metadata_latest AS l ON l.relay_url = r.url
             GROUP BY 1, 2
             ORDER BY 1, 2",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(RegistryCount {
                network: r.try_get(0)?,
                status: r.try_get(1)?,
                relays: r.try_get(2)?,
            })
        })
        .collect()
}

/// Prometheus metrics of the pipeline, each relay, and the registry.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4", body = String, content_type = "text/plain")))]
pub async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    let pool = s.reader.as_ref().map(Reader::pool).unwrap_or(&s.pool);
    let registry = s.registry.current(pool).await;
    let mut body = render(&s.engine, registry.as_deref());
    body.push_str(&render_connections(&s.conns));
    if let Some(relay) = &s.relay {
        body.push_str(&render_relay_endpoint(&relay.stats));
    }
    if let Some(lag) = ANALYTICS_LAG.current(&s.pool).await {
        body.push_str(&render_analytics_lag(&lag));
    }
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
        .into_response()
}

/// How often the analytics lag is read again (two one-row reads).
const LAG_REFRESH: Duration = Duration::from_secs(5);

/// Longest the analytics lag query may take; a scrape never waits longer for it.
const LAG_TIMEOUT: Duration = Duration::from_secs(1);

/// The analytics lag, read at most every `LAG_REFRESH` (one per process: every server of a
/// process reads the same archive).
static ANALYTICS_LAG: LagCache = LagCache {
    data: std::sync::RwLock::new(None),
    last_attempt: tokio::sync::Mutex::const_new(None),
};

struct LagCache {
    data: std::sync::RwLock<Option<crate::analytics::Lag>>,
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
}

impl LagCache {
    /// The lag, read again first when older than `LAG_REFRESH`; concurrent scrapes get the
    /// previous value. None until a read has succeeded (a database without the migration).
    async fn current(&self, pool: &Pool) -> Option<crate::analytics::Lag> {
        if let Ok(mut last) = self.last_attempt.try_lock() {
            if last.is_none_or(|t| t.elapsed() >= LAG_REFRESH) {
                *last = Some(Instant::now());
                match tokio::time::timeout(LAG_TIMEOUT, crate::analytics::lag(pool)).await {
                    Ok(Ok(v)) => {
                        if let Ok(mut d) = self.data.write() {
                            *d = Some(v);
                        }
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "analytics lag for /metrics failed"),
                    Err(_) => tracing::debug!("analytics lag for /metrics timed out"),
                }
            }
        }
        self.data.read().ok().and_then(|d| *d)
    }
}

/// The relay endpoint's counters (`http.relay`): clients that reach the archive with Nostr
/// tools, and the bounds that cut the misbehaving ones off.
pub fn render_relay_endpoint(r: &super::relay::RelayStats) -> String {
    let mut e = Expo {
        out: String::with_capacity(2048),
    };
    let load = |a: &AtomicU64| a.load(Relaxed);
    e.single(
        "bigbrotr_relay_endpoint_connections_open",
        "gauge",
        "Relay endpoint connections open now (at most http.relay_max_connections).",
        load(&r.open),
    );
    e.single(
        "bigbrotr_relay_endpoint_connections_accepted_total",
        "counter",
        "Relay endpoint connections accepted.",
        load(&r.accepted),
    );
    e.single(
        "bigbrotr_relay_endpoint_connections_refused_total",
        "counter",
        "Relay endpoint upgrades refused (503) because http.relay_max_connections were open.",
        load(&r.refused),
    );
    let name = "bigbrotr_relay_endpoint_closed_total";
    e.family(
        name,
        "counter",
        "Relay endpoint connections closed by the server, by reason (slow: a client not reading its answers; idle: http.relay_idle_timeout_ms).",
    );
    e.sample(name, &[("reason", "slow")], load(&r.slow_closed));
    e.sample(name, &[("reason", "idle")], load(&r.idle_closed));
    let name = "bigbrotr_relay_endpoint_requests_total";
    e.family(
        name,
        "counter",
        "Relay endpoint requests answered, by verb (REQ up to its EOSE, COUNT, NEG: NEG-OPEN and NEG-MSG).",
    );
    e.sample(name, &[("verb", "req")], load(&r.reqs));
    e.sample(name, &[("verb", "count")], load(&r.counts));
    e.sample(name, &[("verb", "neg")], load(&r.neg_msgs));
    e.single(
        "bigbrotr_relay_endpoint_events_sent_total",
        "counter",
        "Archived events sent to relay endpoint clients.",
        load(&r.events_sent),
    );
    e.single(
        "bigbrotr_relay_endpoint_live_events_total",
        "counter",
        "Events sent to open subscriptions after their EOSE, as the sink committed them (also in events_sent).",
        load(&r.live_events),
    );
    e.single(
        "bigbrotr_relay_endpoint_live_lagged_total",
        "counter",
        "Subscriptions closed because their connection fell behind the live feed (the client is told to resubscribe with since).",
        load(&r.live_lagged),
    );
    e.single(
        "bigbrotr_relay_endpoint_req_stalls_total",
        "counter",
        "Times a REQ found its client's outbound queue full and gave its database connection back until the client read (a slow reader holds no read connection).",
        load(&r.req_stalls),
    );
    e.single(
        "bigbrotr_relay_endpoint_notices_total",
        "counter",
        "Relay endpoint messages answered with a NOTICE (malformed, unknown verb, too large).",
        load(&r.notices),
    );
    e.out
}

/// The analytics refresher's lag as two gauges.
pub fn render_analytics_lag(lag: &crate::analytics::Lag) -> String {
    let mut e = Expo {
        out: String::with_capacity(512),
    };
    e.single(
        "bigbrotr_analytics_lag_rows",
        "gauge",
        "Rows not folded into the analytics summaries yet (insertion numbers past the watermark).",
        lag.seq,
    );
    e.single(
        "bigbrotr_analytics_lag_seconds",
        "gauge",
        "Age in seconds of the oldest row not folded yet (upper bound; 0 when nothing waits).",
        format!("{:.3}", lag.seconds),
    );
    e.out
}

/// Writes the exposition text: each family's HELP and TYPE once, then its samples.
struct Expo {
    out: String,
}

impl Expo {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_label(&mut self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// One unlabelled sample under its own family.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// Label values escape backslash, double quote and newline (the format's only escapes).
fn escape_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Relaxed)
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// A per-relay counter: metric name, help, and how to read it from the relay's stats.
type RelayCounter = (
    &'static str,
    &'static str,
    fn(&bigbrotr_stages::model::stats::RelayStats) -> u64,
);

/// The per-relay counters, in output order.
const RELAY_COUNTERS: [RelayCounter; 24] = [
    (
        "bigbrotr_relay_frames_total",
        "WebSocket frames received from the relay.",
        |s| load(&s.frames),
    ),
    (
        "bigbrotr_relay_events_received_total",
        "EVENT messages received from the relay, before any check.",
        |s| load(&s.events_received),
    ),
    (
        "bigbrotr_relay_events_emitted_total",
        "Events of the relay passed on to verification.",
        |s| load(&s.events_emitted),
    ),
    (
        "bigbrotr_relay_events_refetched_total",
        "Window-boundary events received again and dropped by the connector.",
        |s| load(&s.refetched),
    ),
    (
        "bigbrotr_relay_events_verified_total",
        "Events of the relay whose id and signature checked out.",
        |s| load(&s.verified),
    ),
    (
        "bigbrotr_relay_signatures_skipped_total",
        "Events of the relay whose signature was already verified (not checked again).",
        |s| load(&s.verify_skipped),
    ),
    (
        "bigbrotr_relay_events_committed_total",
        "Sightings from the relay committed to the database.",
        |s| load(&s.committed),
    ),
    (
        "bigbrotr_relay_reqs_total",
        "REQ messages sent to the relay.",
        |s| load(&s.reqs),
    ),
    (
        "bigbrotr_relay_notices_total",
        "NOTICE messages received from the relay.",
        |s| load(&s.notices),
    ),
    (
        "bigbrotr_relay_closed_total",
        "CLOSED messages received from the relay.",
        |s| load(&s.closed),
    ),
    (
        "bigbrotr_relay_connects_total",
        "Connections opened to the relay, reconnects included.",
        |s| load(&s.connects),
    ),
    (
        "bigbrotr_relay_failures_total",
        "Connection or protocol failures of the relay (timeouts, disconnects, oversized frames).",
        |s| load(&s.failures),
    ),
    (
        "bigbrotr_relay_bytes_received_total",
        "Bytes of every frame received from the relay.",
        |s| load(&s.bytes_received),
    ),
    (
        "bigbrotr_relay_neg_rounds_total",
        "NIP-77 messages sent to the relay (NEG-OPEN and NEG-MSG).",
        |s| load(&s.neg_rounds),
    ),
    (
        "bigbrotr_relay_neg_bytes_sent_total",
        "Bytes of NIP-77 frames sent to the relay.",
        |s| load(&s.neg_bytes_sent),
    ),
    (
        "bigbrotr_relay_neg_bytes_received_total",
        "Bytes of NIP-77 frames received from the relay.",
        |s| load(&s.neg_bytes_received),
    ),
    (
        "bigbrotr_relay_neg_missing_total",
        "Ids the relay holds that the archive had not recorded for it (found by reconciliation).",
        |s| load(&s.neg_missing),
    ),
    (
        "bigbrotr_relay_neg_extra_total",
        "Ids recorded for the relay that it no longer holds (found by reconciliation).",
        |s| load(&s.neg_extra),
    ),
    (
        "bigbrotr_relay_bodies_fetched_total",
        "Events fetched by id after reconciliation (bodies the archive lacked).",
        |s| load(&s.bodies_fetched),
    ),
    (
        "bigbrotr_relay_sightings_without_body_total",
        "Sightings recorded from reconciliation without downloading the body.",
        |s| load(&s.sightings_without_body),
    ),
    (
        "bigbrotr_relay_ids_unserved_total",
        "Ids the relay claimed in reconciliation but did not serve when asked.",
        |s| load(&s.ids_unserved),
    ),
    (
        "bigbrotr_relay_recheck_bytes_total",
        "Bytes received re-walking already archived ranges of a relay without NIP-77.",
        |s| load(&s.recheck_bytes),
    ),
    (
        "bigbrotr_relay_count_queries_total",
        "NIP-45 COUNT requests sent to find the windows a relay without NIP-77 gained events in.",
        |s| load(&s.count_queries),
    ),
    (
        "bigbrotr_relay_recheck_windows_total",
        "Windows re-walked because the relay's COUNT exceeded the archive's sightings of it.",
        |s| load(&s.recheck_windows),
    ),
];

/// The whole exposition text for `engine`, plus the registry counts when known.
pub fn render(engine: &EngineState, registry: Option<&[RegistryCount]>) -> String {
    let mut e = Expo {
        out: String::with_capacity(8192),
    };
    e.single(
        "bigbrotr_ready",
        "gauge",
        "1 while the pipeline accepts events.",
        u8::from(engine.is_ready()),
    );
    e.single(
        "bigbrotr_uptime_seconds",
        "gauge",
        "Seconds since the engine started.",
        engine.started.elapsed().as_secs_f64(),
    );

    let p = &engine.pipeline;
    let depths = (p.depths)();
    e.family(
        "bigbrotr_channel_depth",
        "gauge",
        "Items waiting in a pipeline channel.",
    );
    for (name, depth, _) in &depths {
        e.sample("bigbrotr_channel_depth", &[("channel", name)], depth);
    }
    e.family(
        "bigbrotr_channel_capacity",
        "gauge",
        "Bound of a pipeline channel.",
    );
    for (name, _, cap) in &depths {
        e.sample("bigbrotr_channel_capacity", &[("channel", name)], cap);
    }

    let v = &p.verify;
    e.single(
        "bigbrotr_verify_busy_seconds_total",
        "counter",
        "Time the verify threads spent working, summed over threads.",
        secs(load(&v.busy_ns)),
    );
    e.single(
        "bigbrotr_verify_signatures_verified_total",
        "counter",
        "Schnorr signatures verified.",
        load(&v.verified),
    );
    e.single(
        "bigbrotr_verify_signatures_skipped_total",
        "counter",
        "Signatures not verified again because the same (id, sig) already was.",
        load(&v.skipped),
    );
    e.single(
        "bigbrotr_verify_rejected_total",
        "counter",
        "Events rejected by verification (bad id or bad signature).",
        load(&v.rejected),
    );
    let d = &p.dedupe;
    e.single(
        "bigbrotr_dedupe_bodies_total",
        "counter",
        "Events passed on with their body (first copy).",
        load(&d.bodies),
    );
    e.single(
        "bigbrotr_dedupe_duplicates_total",
        "counter",
        "Copies passed on as sightings only.",
        load(&d.duplicates),
    );
    let k = &p.sink;
    e.single(
        "bigbrotr_sink_batches_total",
        "counter",
        "Batches committed.",
        load(&k.batches),
    );
    e.single(
        "bigbrotr_sink_rows_total",
        "counter",
        "Rows offered to the database (bodies + sightings), new or absorbed as duplicates.",
        load(&k.rows),
    );
    e.single(
        "bigbrotr_sink_events_inserted_total",
        "counter",
        "New rows in events.",
        load(&k.events_inserted),
    );
    e.single(
        "bigbrotr_sink_sightings_inserted_total",
        "counter",
        "New rows in events_relays.",
        load(&k.sightings_inserted),
    );
    e.single(
        "bigbrotr_sink_write_seconds_total",
        "counter",
        "Time spent in COPY + INSERT + commit; divide its rate by the batches rate for the latency of a batch.",
        secs(load(&k.write_ns)),
    );
    e.single(
        "bigbrotr_sink_retries_total",
        "counter",
        "Failed batch attempts, retried.",
        load(&k.retries),
    );
    e.single(
        "bigbrotr_sink_cursor_writes_total",
        "counter",
        "Relay cursor rows written.",
        load(&k.cursor_writes),
    );
    e.single(
        "bigbrotr_fleet_cursor_fenced_total",
        "counter",
        "Cursor writes refused because the relay's lease moved to another worker.",
        load(&k.cursor_fenced),
    );

    let mut relays = engine.relays();
    relays.sort_by(|a, b| a.url.as_str().cmp(b.url.as_str()));
    let running: std::collections::HashSet<String> =
        engine.running.read().map(|r| r.clone()).unwrap_or_default();

    e.family(
        "bigbrotr_relays_connected",
        "gauge",
        "Relays whose connector is running, by network.",
    );
    let mut by_net = [0u64; NETWORKS.len()];
    for url in &running {
        let net = engine
            .relays
            .read()
            .ok()
            .and_then(|m| m.get(url).map(|r| r.url.network()))
            .or_else(|| RelayUrl::parse(url, true).ok().map(|u| u.network()));
        if let Some(i) = net.and_then(|n| NETWORKS.iter().position(|x| *x == n)) {
            by_net[i] += 1;
        }
    }
    for (n, count) in NETWORKS.iter().zip(by_net) {
        e.sample(
            "bigbrotr_relays_connected",
            &[("network", n.as_str())],
            count,
        );
    }
    e.single(
        "bigbrotr_relays_tracked",
        "gauge",
        "Relays the engine holds counters for (running or waiting to run again).",
        relays.len(),
    );

    e.family(
        "bigbrotr_relay_running",
        "gauge",
        "1 while the relay's connector is running.",
    );
    for r in &relays {
        e.sample(
            "bigbrotr_relay_running",
            &[("relay", r.url.as_str())],
            u8::from(running.contains(r.url.as_str())),
        );
    }
    for (name, help, get) in RELAY_COUNTERS {
        e.family(name, "counter", help);
        for r in &relays {
            e.sample(name, &[("relay", r.url.as_str())], get(&r.stats));
        }
    }
    e.family(
        "bigbrotr_relay_events_rejected_total",
        "counter",
        "Inputs from the relay rejected, by reason.",
    );
    for r in &relays {
        for reason in Reason::ALL {
            e.sample(
                "bigbrotr_relay_events_rejected_total",
                &[("relay", r.url.as_str()), ("reason", reason.as_str())],
                r.stats.rejected(reason),
            );
        }
    }
    e.family(
        "bigbrotr_relay_neg_fallbacks_total",
        "counter",
        "Times reconciliation (NIP-77) gave way to the walk for the relay, by reason.",
    );
    for r in &relays {
        for why in Fallback::ALL {
            e.sample(
                "bigbrotr_relay_neg_fallbacks_total",
                &[("relay", r.url.as_str()), ("reason", why.as_str())],
                r.stats.fallbacks(why),
            );
        }
    }

    render_fleet(&mut e, &crate::fleet::GAUGES);

    if let Some(reg) = registry {
        e.family(
            "bigbrotr_registry_relays",
            "gauge",
            "Relays in the registry by network and status of their newest monitor check (refreshed every minute).",
        );
        for c in reg {
            e.sample(
                "bigbrotr_registry_relays",
                &[("network", &c.network), ("status", &c.status)],
                c.relays,
            );
        }
    }
    e.out
}

/// This process's place in the fleet (`crate::fleet`): its leases, roles and lease traffic.
fn render_fleet(e: &mut Expo, g: &crate::fleet::Gauges) {
    if !g.joined.load(Relaxed) {
        return;
    }
    e.single(
        "bigbrotr_fleet_leases_held",
        "gauge",
        "Relay leases this worker holds (it syncs only these relays).",
        load(&g.relays_held),
    );
    e.single(
        "bigbrotr_fleet_workers_live",
        "gauge",
        "Workers whose heartbeat was current at this worker's last heartbeat.",
        load(&g.live_workers),
    );
    e.family(
        "bigbrotr_fleet_roles",
        "gauge",
        "1 while this worker holds the role (the side stage runs here).",
    );
    for r in crate::fleet::Role::ALL {
        let held = g.roles[r as usize].load(Relaxed);
        e.sample(
            "bigbrotr_fleet_roles",
            &[("role", r.as_str())],
            u8::from(held),
        );
    }
    for (name, help, v) in [
        (
            "bigbrotr_fleet_leases_acquired_total",
            "Relay leases taken (free, expired or handed over).",
            &g.acquired,
        ),
        (
            "bigbrotr_fleet_leases_released_total",
            "Relay leases given back (surplus over the fair share, relays that left).",
            &g.released,
        ),
        (
            "bigbrotr_fleet_leases_lost_total",
            "Relay leases found taken by another worker (this one stalled or lost the database).",
            &g.lost,
        ),
        (
            "bigbrotr_fleet_queries_total",
            "Lease statements run (heartbeats, renewals, takes, releases).",
            &g.queries,
        ),
    ] {
        e.single(name, "counter", help, load(v));
    }
}

/// The HTTP server's own connection counters (see [`super::server`]).
pub fn render_connections(c: &super::server::ConnStats) -> String {
    let mut e = Expo {
        out: String::with_capacity(1024),
    };
    let load = |a: &AtomicU64| a.load(Relaxed);
    e.single(
        "bigbrotr_http_connections_open",
        "gauge",
        "HTTP connections being served (at most http.max_connections).",
        load(&c.open),
    );
    e.single(
        "bigbrotr_http_connections_accepted_total",
        "counter",
        "HTTP connections accepted and served.",
        load(&c.accepted),
    );
    e.single(
        "bigbrotr_http_connections_shed_total",
        "counter",
        "HTTP connections closed at accept because http.max_connections were open.",
        load(&c.shed),
    );
    e.single(
        "bigbrotr_http_accept_errors_total",
        "counter",
        "Failed accepts (EMFILE when file descriptors ran out, ...).",
        load(&c.accept_errors),
    );
    e.single(
        "bigbrotr_http_header_timeouts_total",
        "counter",
        "HTTP connections closed for a request head not sent in time (http.header_timeout_ms) or malformed.",
        load(&c.header_timeouts),
    );
    e.single(
        "bigbrotr_http_idle_closed_total",
        "counter",
        "HTTP connections closed after http.idle_timeout_ms without a byte moved.",
        load(&c.idle_closed),
    );
    e.single(
        "bigbrotr_http_request_timeouts_total",
        "counter",
        "HTTP requests answered 503 past http.request_timeout_ms.",
        load(&c.request_timeouts),
    );
    e.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_label_values() {
        let mut s = String::new();
        escape_label(&mut s, "a\\b\"c\nd");
        assert_eq!(s, "a\\\\b\\\"c\\nd");
    }

    #[test]
    fn writes_families_and_samples() {
        let mut e = Expo { out: String::new() };
        e.family("x_total", "counter", "An x.");
        e.sample("x_total", &[("relay", "wss://a"), ("reason", "bad_sig")], 3);
        e.single("y", "gauge", "A y.", 1.5);
        assert_eq!(
            e.out,
            "# HELP x_total An x.\n# TYPE x_total counter\nx_total{relay=\"wss://a\",reason=\"bad_sig\"} 3\n\
             # HELP y A y.\n# TYPE y gauge\ny 1.5\n"
        );
    }
}
