//! Analytics: keeps the summary tables behind the statistics views current, deletes orphans on
//! a schedule, and times the views.
//!
//! The SQL side is `sql/008_summaries.sql` and `sql/009_analytics_bounds.sql`: every new row of
//! `events`, `events_relays` and `relay_metadata` is numbered (`ingest_seq`), and
//! `analytics_refresh(batch)` folds at most `batch` of them into the summaries in one
//! transaction, moving the watermark with them. The views read the summaries and merge up to
//! `view_tail` rows above the watermark, so they are exact while this stage keeps up, off the
//! ingestion hot path. `sql/011_analytics_fold.sql` makes the fold set-based (its cost grows
//! with the summary rows it touches, not the rows behind them) and adds `analytics_lag`.

use crate::config::Config;
use crate::db::Pool;
use anyhow::Context;
use std::fmt::Write as _;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;

/// Pause before asking again when the only rows left wait for an in-flight transaction.
const WAIT_POLL: Duration = Duration::from_millis(50);

/// The rows of `sql`, sent as an unnamed statement: every query here runs outside a
/// transaction, which PgBouncer in transaction mode may serve on a server connection where a
/// named prepared statement does not exist (before PgBouncer 1.21).
async fn rows(
    conn: &tokio_postgres::Client,
    sql: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> anyhow::Result<Vec<Row>> {
    Ok(conn.query_typed(sql, params).await?)
}

/// The only row of `sql` (see [`rows`]).
async fn one(
    conn: &tokio_postgres::Client,
    sql: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> anyhow::Result<Row> {
    let mut r = rows(conn, sql, params).await?;
    if r.len() != 1 {
        anyhow::bail!("expected one row from `{sql}`, got {}", r.len());
    }
    Ok(r.remove(0))
}

/// What one `analytics_refresh` call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FoldStep {
    /// Events folded into the summaries.
    pub events: u64,
    /// Sightings (`events_relays` rows) folded.
    pub sightings: u64,
    /// Monitoring snapshots (`relay_metadata` rows) folded.
    pub snapshots: u64,
    /// Nothing proven safe is left to fold.
    pub caught_up: bool,
    /// Some rows wait for transactions that were in flight; a later call folds them.
    pub waiting: bool,
}

impl FoldStep {
    /// Rows folded by this step.
    pub fn rows(&self) -> u64 {
        self.events + self.sightings + self.snapshots
    }
}

/// What a series of refresh steps did.
#[derive(Debug, Clone, Default)]
pub struct RefreshReport {
    /// `analytics_refresh` calls (transactions).
    pub steps: u64,
    /// Events folded.
    pub events: u64,
    /// Sightings folded.
    pub sightings: u64,
    /// Snapshots folded.
    pub snapshots: u64,
    /// The last step found nothing proven safe left to fold.
    pub caught_up: bool,
    /// The last step left rows waiting for in-flight transactions.
    pub waiting: bool,
    /// Wall time.
    pub elapsed: Duration,
}

impl RefreshReport {
    fn add(&mut self, s: FoldStep) {
        self.steps += 1;
        self.events += s.events;
        self.sightings += s.sightings;
        self.snapshots += s.snapshots;
        self.caught_up = s.caught_up;
        self.waiting = s.waiting;
    }

    /// One line for the operator.
    pub fn render(&self) -> String {
        let rows = self.events + self.sightings + self.snapshots;
        let secs = self.elapsed.as_secs_f64();
        format!(
            "folded {} events, {} sightings, {} snapshots in {} transactions, {:.1}s ({:.0} rows/s){}\n",
            self.events,
            self.sightings,
            self.snapshots,
            self.steps,
            secs,
            if secs > 0.0 { rows as f64 / secs } else { 0.0 },
            match (self.caught_up, self.waiting) {
                (true, false) => "; caught up",
                (true, true) => "; caught up to the rows proven safe, newer rows wait for in-flight transactions",
                _ => "; not caught up yet",
            }
        )
    }
}

/// Folds at most `batch` new rows into the summaries, in one transaction.
pub async fn refresh_step(pool: &Pool, batch: u32) -> anyhow::Result<FoldStep> {
    let batch = i32::try_from(batch.max(1)).unwrap_or(i32::MAX);
    let conn = pool
        .get()
        .await
        .context("cannot get a database connection to refresh the analytics")?;
    let row = one(
        &conn,
        "SELECT * FROM analytics_refresh($1)",
        &[(&batch, Type::INT4)],
    )
    .await
    .context("analytics_refresh failed")?;
    let count = |name: &str| -> anyhow::Result<u64> {
        let v: i64 = row
            .try_get(name)
            .with_context(|| format!("bad analytics_refresh column {name}"))?;
        Ok(u64::try_from(v).unwrap_or(0))
    };
    Ok(FoldStep {
        events: count("events_folded")?,
        sightings: count("sightings_folded")?,
        snapshots: count("snapshots_folded")?,
        caught_up: row
            .try_get("caught_up")
            .context("bad analytics_refresh row")?,
        waiting: row
            .try_get("waiting")
            .context("bad analytics_refresh row")?,
    })
}

/// How much larger than `analytics.batch` a transaction may grow while the refresher is behind.
pub const CATCH_UP_FACTOR: u32 = 20;

/// The batch for the next step: the numbers waiting past the watermark (`lag_seq`), at least
/// `batch`, at most `batch × CATCH_UP_FACTOR`. A fold costs per summary row it touches as much
/// as per row it reads (sql/011_analytics_fold.sql), so folding a backlog in a few large
/// transactions is several times cheaper than in many small ones.
pub fn step_batch(batch: u32, lag_seq: i64) -> u32 {
    let base = batch.max(1);
    let cap = base.saturating_mul(CATCH_UP_FACTOR);
    u32::try_from(lag_seq.max(0))
        .unwrap_or(u32::MAX)
        .clamp(base, cap)
}

/// Refreshes in bounded steps until nothing proven safe is left, `budget` is spent, or `stop`
/// is set; rows of transactions still in flight are left for a later call. Steps fold up to
/// the backlog, `batch` to `batch × CATCH_UP_FACTOR` rows each (see [`step_batch`]).
pub async fn refresh(
    pool: &Pool,
    batch: u32,
    budget: Option<Duration>,
    stop: Option<&watch::Receiver<bool>>,
) -> anyhow::Result<RefreshReport> {
    let start = Instant::now();
    let mut report = RefreshReport::default();
    loop {
        let backlog = lag(pool).await.map(|l| l.seq).unwrap_or(0);
        let step = refresh_step(pool, step_batch(batch, backlog)).await?;
        report.add(step);
        let over = budget.is_some_and(|b| start.elapsed() >= b);
        let stopped = stop.is_some_and(|s| *s.borrow());
        if step.caught_up || over || stopped {
            break;
        }
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

/// How far the summaries are behind the archive (`analytics_lag`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Lag {
    /// Numbers handed out past the watermark: rows not folded yet (and numbers drawn by
    /// duplicates that were never written).
    pub seq: i64,
    /// Age in seconds of the oldest row not folded yet, an upper bound from the refresher's
    /// marks (0 when nothing is past the watermark).
    pub seconds: f64,
}

/// Reads `analytics_lag` (two one-row reads, no scan).
pub async fn lag(pool: &Pool) -> anyhow::Result<Lag> {
    let conn = pool
        .get()
        .await
        .context("cannot get a database connection to read the analytics lag")?;
    let r = one(&conn, "SELECT lag_seq, lag_seconds FROM analytics_lag", &[])
        .await
        .context("cannot read analytics_lag")?;
    Ok(Lag {
        seq: r.try_get(0)?,
        seconds: r.try_get(1)?,
    })
}

/// Refreshes until every row committed before the call is folded, waiting for the
/// transactions that were in flight. Under steady ingestion new ones keep coming: the wait
/// stops after `wait_limit` without anything to fold (the report says whether rows were still
/// waiting), or when `stop` is set.
pub async fn refresh_all(
    pool: &Pool,
    batch: u32,
    wait_limit: Duration,
    stop: Option<&watch::Receiver<bool>>,
) -> anyhow::Result<RefreshReport> {
    let start = Instant::now();
    let mut report = RefreshReport::default();
    let mut idle_since = Instant::now();
    loop {
        let backlog = lag(pool).await.map(|l| l.seq).unwrap_or(0);
        let step = refresh_step(pool, step_batch(batch, backlog)).await?;
        report.add(step);
        if step.caught_up && !step.waiting {
            break;
        }
        if stop.is_some_and(|s| *s.borrow()) {
            break;
        }
        if step.rows() > 0 {
            idle_since = Instant::now();
        } else if idle_since.elapsed() >= wait_limit {
            break;
        } else {
            tokio::time::sleep(WAIT_POLL).await;
        }
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Recomputes every summary from the base tables (blocks ingestion while it runs); returns the
/// number of events counted.
pub async fn rebuild(pool: &Pool) -> anyhow::Result<u64> {
    let conn = pool
        .get()
        .await
        .context("cannot get a database connection to rebuild the analytics")?;
    let n: i64 = one(&conn, "SELECT analytics_rebuild()", &[])
        .await
        .context("analytics_rebuild failed")?
        .try_get(0)
        .context("bad analytics_rebuild result")?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Sets how many numbers past the watermark the statistics views merge
/// (`analytics_state.view_tail`, see `analytics.view_tail`).
pub async fn set_view_tail(pool: &Pool, view_tail: u32) -> anyhow::Result<()> {
    let conn = pool
        .get()
        .await
        .context("cannot get a database connection to configure the analytics")?;
    let n = i64::from(view_tail);
    rows(
        &conn,
        "UPDATE analytics_state SET view_tail = $1 WHERE view_tail <> $1",
        &[(&n, Type::INT8)],
    )
    .await
    .context("cannot set analytics_state.view_tail")?;
    Ok(())
}

/// The orphans the cleanup deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Orphans {
    /// Events without any `events_relays` row (`delete_orphan_events`).
    Events,
    /// NIP-11 documents no snapshot references (`delete_orphan_nip11`).
    Nip11,
    /// Check results no snapshot references (`delete_orphan_nip66`).
    Nip66,
}

impl Orphans {
    fn function(self) -> &'static str {
        match self {
            Orphans::Events => "delete_orphan_events",
            Orphans::Nip11 => "delete_orphan_nip11",
            Orphans::Nip66 => "delete_orphan_nip66",
        }
    }
}

/// Deletes at most `batch` orphans of one kind, in one transaction; returns how many.
pub async fn delete_orphans(pool: &Pool, what: Orphans, batch: u32) -> anyhow::Result<u64> {
    let batch = i32::try_from(batch.max(1)).unwrap_or(i32::MAX);
    let conn = pool
        .get()
        .await
        .context("cannot get a database connection to delete orphans")?;
    let f = what.function();
    let n: i32 = one(&conn, &format!("SELECT {f}($1)"), &[(&batch, Type::INT4)])
        .await
        .with_context(|| format!("{f} failed"))?
        .try_get(0)
        .with_context(|| format!("bad {f} result"))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// What an orphan cleanup deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Events without sightings.
    pub events: u64,
    /// Unreferenced NIP-11 documents.
    pub nip11: u64,
    /// Unreferenced check results.
    pub nip66: u64,
    /// Transactions used.
    pub batches: u64,
}

impl CleanupReport {
    /// One line for the operator.
    pub fn render(&self) -> String {
        format!(
            "orphans deleted: {} events, {} NIP-11 documents, {} check results ({} transactions)\n",
            self.events, self.nip11, self.nip66, self.batches
        )
    }
}

/// Deletes every orphan in transactions of at most `batch` rows (so neither ingestion nor the
/// refresher waits long on one), until none is left or `stop` is set.
pub async fn cleanup_orphans(
    pool: &Pool,
    batch: u32,
    stop: Option<&watch::Receiver<bool>>,
) -> anyhow::Result<CleanupReport> {
    let mut report = CleanupReport::default();
    for what in [Orphans::Events, Orphans::Nip11, Orphans::Nip66] {
        loop {
            if stop.is_some_and(|s| *s.borrow()) {
                return Ok(report);
            }
            let n = delete_orphans(pool, what, batch).await?;
            report.batches += 1;
            match what {
                Orphans::Events => report.events += n,
                Orphans::Nip11 => report.nip11 += n,
                Orphans::Nip66 => report.nip66 += n,
            }
            // A short batch means the search found no more candidates.
            if n < u64::from(batch.max(1)) {
                break;
            }
        }
    }
    Ok(report)
}

/// The refresher's progress (`analytics_status`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// Rows numbered up to this are folded.
    pub watermark: i64,
    /// Rows numbered up to this are proven final.
    pub safe_seq: i64,
    /// A candidate bound waiting for in-flight transactions.
    pub pending_seq: Option<i64>,
    /// Numbers past the watermark the views merge.
    pub view_tail: i64,
    /// Rows lie past watermark + view_tail: the views answer as of that point.
    pub views_lag: bool,
    /// Events not folded yet.
    pub pending_events: i64,
    /// Sightings not folded yet.
    pub pending_sightings: i64,
    /// Snapshots not folded yet.
    pub pending_snapshots: i64,
    /// Unix seconds of the last refresh.
    pub refreshed_at: Option<i64>,
    /// Unix seconds of the last rebuild.
    pub rebuilt_at: Option<i64>,
}

impl Status {
    /// Rows the views currently merge from the base tables.
    pub fn pending(&self) -> i64 {
        self.pending_events + self.pending_sightings + self.pending_snapshots
    }

    /// A few lines for the operator.
    pub fn render(&self) -> String {
        format!(
            "watermark {} (proven safe up to {}{}); not folded yet: {} events, {} sightings, {} snapshots; views {}; last refresh {}, last rebuild {}\n",
            self.watermark,
            self.safe_seq,
            self.pending_seq
                .map(|p| format!(", {p} awaiting in-flight transactions"))
                .unwrap_or_default(),
            self.pending_events,
            self.pending_sightings,
            self.pending_snapshots,
            if self.views_lag {
                format!(
                    "lag (they merge {} numbers past the watermark)",
                    self.view_tail
                )
            } else {
                "exact".into()
            },
            self.refreshed_at.map_or("never".into(), |t| t.to_string()),
            self.rebuilt_at.map_or("never".into(), |t| t.to_string()),
        )
    }
}

/// Reads `analytics_status`.
pub async fn status(pool: &Pool) -> anyhow::Result<Status> {
    let conn = pool
        .get()
        .await
        .context("cannot get a database connection to read the analytics status")?;
    let r = one(
        &conn,
        "SELECT watermark, safe_seq, pending_seq, pending_events, pending_sightings,
                pending_snapshots, refreshed_at, rebuilt_at, view_tail, views_lag
         FROM analytics_status",
        &[],
    )
    .await
    .context("cannot read analytics_status")?;
    Ok(Status {
        watermark: r.try_get(0)?,
        safe_seq: r.try_get(1)?,
        pending_seq: r.try_get(2)?,
        pending_events: r.try_get(3)?,
        pending_sightings: r.try_get(4)?,
        pending_snapshots: r.try_get(5)?,
        refreshed_at: r.try_get(6)?,
        rebuilt_at: r.try_get(7)?,
        view_tail: r.try_get(8)?,
        views_lag: r.try_get(9)?,
    })
}

/// One tick of [`run_forever`]: refreshes until caught up; when the only rows left wait for
/// the sink's in-flight transaction (a candidate bound was just taken), polls until it commits
/// (at most a fifth of the interval), so a tick folds what was written up to about its start
/// rather than up to the previous tick.
async fn refresh_tick(
    pool: &Pool,
    batch: u32,
    interval: Duration,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<RefreshReport> {
    let start = Instant::now();
    let mut total = RefreshReport::default();
    loop {
        let r = refresh(pool, batch, None, Some(stop)).await?;
        total.steps += r.steps;
        total.events += r.events;
        total.sightings += r.sightings;
        total.snapshots += r.snapshots;
        total.caught_up = r.caught_up;
        total.waiting = r.waiting;
        let folded = r.events + r.sightings + r.snapshots > 0;
        if folded || !r.waiting || *stop.borrow() || start.elapsed() >= interval / 5 {
            break;
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
    total.elapsed = start.elapsed();
    Ok(total)
}

/// Long-running mode: a refresh every `analytics.interval` seconds and an orphan cleanup every
/// `analytics.orphan_interval` seconds, until `stop` is set. A refresh folds back-to-back
/// until it has caught up with every row proven safe, in transactions that grow with the
/// backlog (see [`step_batch`]), so it keeps up with a bulk load; rows of transactions still
/// in flight wait for the next tick. Failures are logged and retried at the next tick.
pub async fn run_forever(
    cfg: &Config,
    pool: &Pool,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let a = &cfg.analytics;
    // Events that predate the tag index (migration 013) are indexed beside the refresher;
    // the task ends when the backfill has (at once on an archive already indexed).
    tokio::spawn(crate::tag_backfill::run(pool.clone(), stop.clone()));
    set_view_tail(pool, a.view_tail).await?;
    let interval = a.interval.get().max(Duration::from_millis(1));
    let orphan_every = a.orphan_interval.nonzero();
    let mut next_cleanup = orphan_every.map(|d| tokio::time::Instant::now() + d);
    loop {
        let tick = tokio::time::Instant::now();
        match refresh_tick(pool, a.batch, interval, &stop).await {
            Ok(r) if r.events + r.sightings + r.snapshots > 0 => {
                tracing::info!("analytics: {}", r.render().trim_end())
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "analytics refresh failed"),
        }
        if let (Some(every), Some(due)) = (orphan_every, next_cleanup) {
            if tick >= due && !*stop.borrow() {
                match cleanup_orphans(pool, a.orphan_batch, Some(&stop)).await {
                    Ok(r) if r.events + r.nip11 + r.nip66 > 0 => {
                        tracing::info!("analytics: {}", r.render().trim_end())
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "orphan cleanup failed"),
                }
                next_cleanup = Some(tokio::time::Instant::now() + every);
            }
        }
        if *stop.borrow() {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep_until(tick + interval) => {}
            _ = stop.wait_for(|v| *v) => return Ok(()),
        }
    }
}

/// One query timed by [`explain`].
#[derive(Debug, Clone)]
pub struct Timing {
    /// The view it reads.
    pub view: &'static str,
    /// The query.
    pub sql: String,
    /// Rows returned.
    pub rows: u64,
    /// Execution time of the first run, milliseconds.
    pub first_ms: f64,
    /// Median execution time of the following runs, milliseconds.
    pub median_ms: f64,
    /// Slowest of the following runs, milliseconds.
    pub max_ms: f64,
    /// Planning time of the first run, milliseconds.
    pub planning_ms: f64,
    /// The plan of the last run (EXPLAIN ANALYZE, BUFFERS, text).
    pub plan: String,
}

/// The queries timed for each view: what the HTTP API, the monitor and the metrics ask, and
/// the lookups a user of the large views makes (by relay, by author, top N). The busiest relay
/// and author are taken from the archive.
pub async fn explain_queries(pool: &Pool) -> anyhow::Result<Vec<(&'static str, String)>> {
    let conn = pool
        .get()
        .await
        .context("cannot get a database connection")?;
    let relay: Option<String> = rows(
        &conn,
        "SELECT relay_url FROM analytics_relays ORDER BY event_count DESC, relay_url LIMIT 1",
        &[],
    )
    .await?
    .first()
    .map(|r| r.try_get(0))
    .transpose()?;
    let author: Option<String> = rows(
        &conn,
        "SELECT pubkey_hex FROM analytics_pubkeys ORDER BY event_count DESC, pubkey_hex LIMIT 1",
        &[],
    )
    .await?
    .first()
    .map(|r| r.try_get(0))
    .transpose()?;
    let relay = quote(relay.as_deref().unwrap_or("wss://relay.example.com"));
    let author = quote(&author.unwrap_or_else(|| "0".repeat(64)));
    Ok(vec![
        ("events_statistics", "SELECT * FROM events_statistics".into()),
        (
            "kind_counts_total",
            "SELECT kind, event_count, unique_pubkeys FROM kind_counts_total ORDER BY event_count DESC, kind LIMIT 100".into(),
        ),
        ("kind_counts_total", "SELECT * FROM kind_counts_total".into()),
        (
            "pubkey_counts_total",
            "SELECT pubkey_hex, event_count, unique_kinds FROM pubkey_counts_total ORDER BY event_count DESC, pubkey_hex LIMIT 100".into(),
        ),
        (
            "pubkey_counts_total",
            format!("SELECT * FROM pubkey_counts_total WHERE pubkey_hex = {author}"),
        ),
        (
            "relays_statistics",
            "SELECT * FROM relays_statistics ORDER BY event_count DESC, relay_url LIMIT 100".into(),
        ),
        ("relays_statistics", "SELECT * FROM relays_statistics".into()),
        (
            "kind_counts_by_relay",
            format!("SELECT * FROM kind_counts_by_relay WHERE relay_url = {relay}"),
        ),
        (
            "kind_counts_by_relay",
            "SELECT * FROM kind_counts_by_relay WHERE kind = 1 ORDER BY event_count DESC LIMIT 100".into(),
        ),
        (
            "kind_counts_by_relay",
            "SELECT * FROM kind_counts_by_relay ORDER BY event_count DESC LIMIT 100".into(),
        ),
        (
            "pubkey_counts_by_relay",
            format!("SELECT * FROM pubkey_counts_by_relay WHERE relay_url = {relay} ORDER BY event_count DESC LIMIT 100"),
        ),
        (
            "pubkey_counts_by_relay",
            format!("SELECT * FROM pubkey_counts_by_relay WHERE pubkey_hex = {author}"),
        ),
        (
            "pubkey_counts_by_relay",
            "SELECT * FROM pubkey_counts_by_relay ORDER BY event_count DESC LIMIT 100".into(),
        ),
        ("relay_metadata_latest", "SELECT * FROM relay_metadata_latest".into()),
        (
            "relay_metadata_latest",
            format!("SELECT * FROM relay_metadata_latest WHERE relay_url = {relay}"),
        ),
    ])
}

/// A SQL string literal.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Runs each query of [`explain_queries`] under `EXPLAIN (ANALYZE, BUFFERS)` `1 + runs` times:
/// the first run (colder caches) and the median and maximum of the others.
pub async fn explain(pool: &Pool, runs: u32) -> anyhow::Result<Vec<Timing>> {
    let queries = explain_queries(pool).await?;
    let conn = pool
        .get()
        .await
        .context("cannot get a database connection")?;
    let mut out = Vec::with_capacity(queries.len());
    for (view, sql) in queries {
        let mut times = Vec::new();
        let mut first = (0.0, 0.0, 0);
        for i in 0..=runs {
            let row = one(
                &conn,
                &format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}"),
                &[],
            )
            .await
            .with_context(|| format!("EXPLAIN ANALYZE {sql}"))?;
            let doc: serde_json::Value = row.try_get(0).context("EXPLAIN output")?;
            let top = &doc[0];
            let exec = top["Execution Time"].as_f64().unwrap_or(f64::NAN);
            if i == 0 {
                first = (
                    exec,
                    top["Planning Time"].as_f64().unwrap_or(f64::NAN),
                    top["Plan"]["Actual Rows"].as_u64().unwrap_or(0),
                );
            } else {
                times.push(exec);
            }
        }
        let plan = rows(&conn, &format!("EXPLAIN (ANALYZE, BUFFERS) {sql}"), &[])
            .await
            .with_context(|| format!("EXPLAIN ANALYZE {sql}"))?
            .iter()
            .filter_map(|r| r.try_get::<_, String>(0).ok())
            .collect::<Vec<_>>()
            .join("\n");
        times.sort_by(f64::total_cmp);
        let median = if times.is_empty() {
            first.0
        } else {
            times[times.len() / 2]
        };
        out.push(Timing {
            view,
            sql,
            rows: first.2,
            first_ms: first.0,
            median_ms: median,
            max_ms: times.last().copied().unwrap_or(first.0),
            planning_ms: first.1,
            plan,
        });
    }
    Ok(out)
}

/// The timings as a Markdown table (with the plans after it when `plans`).
pub fn render_timings(timings: &[Timing], plans: bool) -> String {
    let mut s = String::from(
        "| view | query | rows | first run (ms) | median (ms) | max (ms) | planning (ms) |\n|---|---|---:|---:|---:|---:|---:|\n",
    );
    for t in timings {
        let _ = writeln!(
            s,
            "| {} | `{}` | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            t.view, t.sql, t.rows, t.first_ms, t.median_ms, t.max_ms, t.planning_ms
        );
    }
    if plans {
        for t in timings {
            let _ = write!(s, "\n### {}\n\n```\n{}\n```\n", t.sql, t.plan);
        }
    }
    s
}

/// The archive's size, for reports: (events, sightings, relays, snapshots); events and
/// sightings from the summaries plus the tail (cheap, unlike `count(*)` of the base tables).
pub async fn archive_size(pool: &Pool) -> anyhow::Result<(i64, i64, i64, i64)> {
    let conn = pool
        .get()
        .await
        .context("cannot get a database connection")?;
    let r = one(
        &conn,
        "SELECT (SELECT total_events FROM events_statistics),
                    (SELECT coalesce(sum(event_count), 0)::BIGINT FROM analytics_relays)
                      + (SELECT count(*) FROM events_relays
                         WHERE ingest_seq > analytics_watermark()),
                    (SELECT count(*) FROM relays),
                    (SELECT count(*) FROM relay_metadata)",
        &[],
    )
    .await
    .context("cannot measure the archive")?;
    Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?))
}
