//! A one-shot pass over a set of relays (`sync --once`), the persisted relay cursors, and the
//! process's signal handling and exit hooks. The long-running sync is [`crate::service`].

use crate::config::Config;
use crate::db::Pool;
use crate::pipeline::Pipeline;
use bigbrotr_stages::connect::{GiveUpReason, Outcome};
use bigbrotr_stages::model::{CursorState, Fallback, Relay, RelayCtx, RelayUrl};
use bigbrotr_stages::sink::CURSOR_SERVICE;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// What one sync pass should do beyond the configuration.
#[derive(Debug, Clone, Default)]
pub struct SyncOptions {
    /// Oldest created_at (overrides `sync.since`).
    pub since: Option<i64>,
    /// Newest created_at: an explicit range, synced without reading or moving cursors.
    pub until: Option<i64>,
    /// Print a progress line every second.
    pub progress: bool,
}

/// The result for one relay.
#[derive(Debug, Clone)]
pub struct RelayReport {
    /// The relay.
    pub url: String,
    /// How its connector ended.
    pub outcome: Outcome,
    /// EVENT messages received.
    pub received: u64,
    /// Events passed to verification.
    pub emitted: u64,
    /// Boundary events received again and dropped by the connector.
    pub refetched: u64,
    /// Sightings committed.
    pub committed: u64,
    /// Signatures verified for this relay's events.
    pub verified: u64,
    /// Signatures skipped (already verified).
    pub verify_skipped: u64,
    /// REQs sent.
    pub reqs: u64,
    /// Rejections by reason.
    pub rejections: Vec<(&'static str, u64)>,
    /// Bytes of every frame received.
    pub bytes_received: u64,
    /// NIP-77 messages sent (0: the relay was walked).
    pub neg_rounds: u64,
    /// Bytes of NIP-77 frames sent and received.
    pub neg_bytes: u64,
    /// Bytes of NIP-77 frames sent (what the engine adds to the wire besides small REQs).
    pub neg_bytes_sent: u64,
    /// Ids the relay holds that were not recorded for it.
    pub neg_missing: u64,
    /// Ids recorded for the relay that it no longer holds.
    pub neg_extra: u64,
    /// Events fetched by id after reconciliation.
    pub bodies_fetched: u64,
    /// Sightings recorded without a download.
    pub sightings_without_body: u64,
    /// Ids claimed by the relay and not served.
    pub ids_unserved: u64,
    /// Fallbacks from reconciliation to the walk, by reason.
    pub neg_fallbacks: Vec<(&'static str, u64)>,
    /// Bytes received re-walking already archived ranges (relays without NIP-77).
    pub recheck_bytes: u64,
    /// NIP-45 COUNT requests sent to find the windows to re-walk.
    pub count_queries: u64,
    /// Windows re-walked because the relay's COUNT exceeded the archive's.
    pub recheck_windows: u64,
}

/// The result of a pass.
#[derive(Debug, Clone)]
pub struct SyncReport {
    /// Per relay.
    pub relays: Vec<RelayReport>,
    /// New rows in `events`.
    pub events_inserted: u64,
    /// New rows in `events_relays`, those recorded by reconciliation without a body included.
    pub sightings_inserted: u64,
    /// Signatures verified in total.
    pub verified: u64,
    /// Signatures skipped in total.
    pub verify_skipped: u64,
    /// Time the verify threads spent working, summed over threads.
    pub verify_busy: Duration,
    /// Time the sink spent in COPY + INSERT + commit.
    pub sink_write: Duration,
    /// Batches committed.
    pub batches: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl SyncReport {
    /// Events received over sightings committed (1.0 = every event asked for once).
    pub fn overfetch(&self) -> f64 {
        let rec: u64 = self.relays.iter().map(|r| r.received).sum();
        let kept: u64 = self.relays.iter().map(|r| r.committed).sum();
        if kept == 0 {
            0.0
        } else {
            rec as f64 / kept as f64
        }
    }

    /// Human-readable summary.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        s.push_str(&format!(
            "synced {} relays in {:.1}s: {} new events ({:.0}/s), {} new sightings; signatures verified {} / skipped {}; over-fetch {:.3}\n",
            self.relays.len(),
            secs,
            self.events_inserted,
            self.events_inserted as f64 / secs,
            self.sightings_inserted,
            self.verified,
            self.verify_skipped,
            self.overfetch(),
        ));
        for r in &self.relays {
            let outcome = match &r.outcome {
                Outcome::Synced => "synced".to_string(),
                Outcome::Cancelled => "cancelled".to_string(),
                Outcome::GaveUp(why) => format!("gave up: {why}"),
            };
            let rej: Vec<String> = r
                .rejections
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            s.push_str(&format!(
                "  {}: {outcome}; received {} kept {} (refetched {}, {} REQs){}\n",
                r.url,
                r.received,
                r.committed,
                r.refetched,
                r.reqs,
                if rej.is_empty() {
                    String::new()
                } else {
                    format!("; rejected {}", rej.join(" "))
                }
            ));
            if r.neg_rounds > 0 && r.neg_fallbacks.is_empty() {
                s.push_str(&format!(
                    "    reconciled (NIP-77): {} rounds, {} bytes; missing {} (fetched {}, known {}, unserved {}), extra {}\n",
                    r.neg_rounds,
                    r.neg_bytes,
                    r.neg_missing,
                    r.bodies_fetched,
                    r.sightings_without_body,
                    r.ids_unserved,
                    r.neg_extra,
                ));
            }
            let fb: Vec<String> = r
                .neg_fallbacks
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            if !fb.is_empty() || r.recheck_bytes > 0 {
                s.push_str(&format!(
                    "    walked without NIP-77{}; recheck {} bytes{}\n",
                    if fb.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", fb.join(" "))
                    },
                    r.recheck_bytes,
                    if r.count_queries > 0 {
                        format!(
                            " ({} COUNTs, {} windows re-walked)",
                            r.count_queries, r.recheck_windows
                        )
                    } else {
                        String::new()
                    },
                ));
            }
        }
        s
    }
}

/// Reads every persisted relay cursor.
pub async fn load_cursors(pool: &Pool) -> anyhow::Result<HashMap<String, CursorState>> {
    let conn = pool.get().await?;
    let rows = conn
        .query_typed(
            "SELECT state_key, payload FROM service_state WHERE service_name = $1",
            &[(&CURSOR_SERVICE, tokio_postgres::types::Type::TEXT)],
        )
        .await?;
    let mut out = HashMap::new();
    for r in rows {
        let key: String = r.get(0);
        let payload: serde_json::Value = r.get(1);
        match serde_json::from_value::<CursorState>(payload) {
            Ok(st) => {
                out.insert(key, st);
            }
            Err(e) => tracing::warn!(relay = %key, error = %e, "unreadable cursor; starting over"),
        }
    }
    Ok(out)
}

fn report(relay: &Relay, outcome: Outcome) -> RelayReport {
    let s = &relay.stats;
    RelayReport {
        url: relay.url.to_string(),
        outcome,
        received: s.events_received.load(Relaxed),
        emitted: s.events_emitted.load(Relaxed),
        refetched: s.refetched.load(Relaxed),
        committed: s.committed.load(Relaxed),
        verified: s.verified.load(Relaxed),
        verify_skipped: s.verify_skipped.load(Relaxed),
        reqs: s.reqs.load(Relaxed),
        rejections: s.rejections(),
        bytes_received: s.bytes_received.load(Relaxed),
        neg_rounds: s.neg_rounds.load(Relaxed),
        neg_bytes: s.neg_bytes_sent.load(Relaxed) + s.neg_bytes_received.load(Relaxed),
        neg_bytes_sent: s.neg_bytes_sent.load(Relaxed),
        neg_missing: s.neg_missing.load(Relaxed),
        neg_extra: s.neg_extra.load(Relaxed),
        bodies_fetched: s.bodies_fetched.load(Relaxed),
        sightings_without_body: s.sightings_without_body.load(Relaxed),
        ids_unserved: s.ids_unserved.load(Relaxed),
        neg_fallbacks: Fallback::ALL
            .iter()
            .map(|&f| (f.as_str(), s.fallbacks(f)))
            .filter(|(_, n)| *n > 0)
            .collect(),
        recheck_bytes: s.recheck_bytes.load(Relaxed),
        count_queries: s.count_queries.load(Relaxed),
        recheck_windows: s.recheck_windows.load(Relaxed),
    }
}

/// Turns SIGINT/SIGTERM into a pipeline stop. The process then has `grace` to finish (drain
/// the pipeline, commit, persist cursors); past it, or at a second signal, it exits at once.
/// Exiting early is safe because a cursor never claims an uncommitted event: what was not
/// committed is fetched again by the next run.
pub fn stop_on_signals(stop: tokio::sync::watch::Sender<bool>, grace: std::time::Duration) {
    tokio::spawn(async move {
        wait_signal().await;
        eprintln!(
            "stopping: draining the pipeline for at most {:.1} s (signal again to exit at once)",
            grace.as_secs_f64()
        );
        let _ = stop.send(true);
        tokio::select! {
            _ = wait_signal() => {
                eprintln!("second signal: exiting without draining");
                exit_now(130);
            }
            _ = tokio::time::sleep(grace) => {
                eprintln!(
                    "shutdown grace of {:.1} s passed: exiting; work not committed yet is fetched again next run",
                    grace.as_secs_f64()
                );
                exit_now(0);
            }
        }
    });
}

/// Stops the PostgreSQL clusters this process started (drops will not run), then exits with
/// `code` without waiting for any task.
pub fn exit_now(code: i32) -> ! {
    bigbrotr_pgcluster::stop_started_clusters();
    std::process::exit(code)
}

async fn wait_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn progress_line(
    start: Instant,
    pipeline: &crate::pipeline::Stats,
    done: usize,
    total: usize,
    last: &mut (u64, Instant),
) -> String {
    let kept = pipeline.sink.events_inserted.load(Relaxed);
    let now = Instant::now();
    let rate =
        (kept - last.0.min(kept)) as f64 / now.duration_since(last.1).as_secs_f64().max(1e-3);
    *last = (kept, now);
    let seen = pipeline.verify.verified.load(Relaxed) + pipeline.verify.skipped.load(Relaxed);
    format!(
        "[{:>6.1}s] kept {kept} events ({rate:.0}/s) · checked {seen} · rejected {} · relays {done}/{total} done",
        start.elapsed().as_secs_f64(),
        pipeline.verify.rejected.load(Relaxed),
    )
}

/// Syncs `relays` once (backfill to now or to `opts.until`) and drains the pipeline.
pub async fn sync_once(
    cfg: &Config,
    pool: Pool,
    relays: Vec<RelayUrl>,
    opts: &SyncOptions,
    stop: Option<tokio::sync::watch::Receiver<bool>>,
) -> anyhow::Result<SyncReport> {
    let start = Instant::now();
    let cursors = load_cursors(&pool).await?;
    let pipeline = Pipeline::start(cfg, pool.clone());
    let sem = Arc::new(Semaphore::new(cfg.sync.max_parallel));
    let total = relays.len();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut handles = Vec::new();
    let mut ctxs = Vec::new();
    for url in relays {
        let state = cursors.get(url.as_str()).copied().unwrap_or_default();
        let ctx = RelayCtx::new(url.clone(), state);
        let mut sc = cfg.sync_for(&url, true);
        if let Some(s) = opts.since {
            sc.floor = s;
        }
        if let Some(u) = opts.until {
            sc.until = Some(u);
            sc.use_cursor = false;
        }
        let conn = pipeline.connector(ctx.clone(), Arc::new(sc));
        let sem = sem.clone();
        let done = done.clone();
        ctxs.push(ctx);
        handles.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            let o = conn.run().await;
            done.fetch_add(1, Relaxed);
            o
        }));
    }
    if let Some(mut stop) = stop {
        let p_stop = pipeline.stop_sender();
        tokio::spawn(async move {
            while stop.changed().await.is_ok() {
                if *stop.borrow() {
                    let _ = p_stop.send(true);
                    break;
                }
            }
        });
    }
    let printer = opts.progress.then(|| {
        let stats = pipeline.stats.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let tty = std::io::stderr().is_terminal();
            let mut last = (0u64, Instant::now());
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut n = 0u64;
            loop {
                tick.tick().await;
                n += 1;
                let line = progress_line(start, &stats, done.load(Relaxed), total, &mut last);
                if tty {
                    eprint!("\r{line}   ");
                } else if n % 5 == 0 {
                    eprintln!("{line}");
                }
            }
        })
    });
    let mut outcomes = Vec::new();
    for h in handles {
        outcomes.push(h.await.unwrap_or(Outcome::GaveUp(GiveUpReason::Panicked)));
    }
    let stats = pipeline.stats.clone();
    let drained = pipeline.finish().await;
    if let Some(p) = printer {
        p.abort();
        if std::io::stderr().is_terminal() {
            eprintln!();
        }
    }
    drained?;
    Ok(SyncReport {
        relays: ctxs
            .iter()
            .zip(outcomes)
            .map(|(c, o)| report(c, o))
            .collect(),
        events_inserted: stats.sink.events_inserted.load(Relaxed),
        sightings_inserted: stats.sink.sightings_inserted.load(Relaxed)
            + ctxs
                .iter()
                .map(|c| c.stats.sightings_without_body.load(Relaxed))
                .sum::<u64>(),
        verified: stats.verify.verified.load(Relaxed),
        verify_skipped: stats.verify.skipped.load(Relaxed),
        verify_busy: Duration::from_nanos(stats.verify.busy_ns.load(Relaxed)),
        sink_write: Duration::from_nanos(stats.sink.write_ns.load(Relaxed)),
        batches: stats.sink.batches.load(Relaxed),
        elapsed: start.elapsed(),
    })
}
