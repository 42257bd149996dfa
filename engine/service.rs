//! The topology of a long-running sync (`bigbrotr run`, and `bigbrotr sync` without `--once`):
//! every channel and task of the run is created here, as a named handle, in one start order
//! and one shutdown order. The stages themselves know nothing of this wiring.
//!
//! ```text
//!   seeds file, HTTP lists ──► finder ◄──────────── hints (bounded, lossy) ─────────────┐
//!                              │ (candidates table; validates relays)                   │
//!                              │ found (bounded)                                        │
//!                              ▼                                                        │
//!   monitor ──limits──► supervisor: the registry (relays table + live relay set)        │
//!   (NIP-11/66 checks,         │ start / stop / pause / retune one connector per relay  │
//!    relay_metadata)           ▼                                                        │
//!                        connect ×N ──RawEvent──► verify pool (OS threads)              │
//!                              ▲                       │ Verified                       │
//!                              │                       ▼                                │
//!                              │                    dedupe ─────────────────────────────┘
//!                              │                       │ Item
//!                              │                       ▼
//!                              │                    batch
//!                              │                       │ Batch
//!                              │                       ▼
//!                              └── cursor acks ◄─── sink (COPY, commit, cursors)
//!
//!   beside them, reading the archive: analytics (summary tables, orphan cleanup),
//!   DVM (NIP-90 jobs over relays), HTTP (health, metrics, API; also reads the engine state)
//! ```
//!
//! The feedback loops close through the registry: the finder announces validated relays on
//! `found` and the supervisor starts connectors for them (the finder learns relays from the
//! hints dedupe extracts from new events); the monitor's checks (NIP-11 limits,
//! reachability) are read by the supervisor, which stops, pauses or retunes connectors.
//! Every arrow between pipeline stages is a bounded channel (see [`crate::pipeline`]).
//!
//! Start order: the monitor and the analytics refresher (they only read and write the
//! archive), the DVM (a bad `[dvm]` fails the start), the cursors and the finder's table, the
//! pipeline (sink, batch, dedupe, verify threads), the engine state (ready; the HTTP endpoint,
//! bound by the caller, starts serving it), the finder, and last the supervisor, which runs on
//! the calling task and starts the connectors.
//!
//! Shutdown order, on the stop signal or the first stage failure: the supervisor stops
//! starting connectors and the engine reports not ready; the finder is told to stop; every
//! connector is stopped and awaited, then the finder; the pipeline drains front to back
//! (the sink commits the last batch and persists the cursors); the monitor and the analytics
//! refresher, stopped by the same signal, are awaited; the DVM is stopped. The HTTP endpoint
//! keeps answering (not ready) until the process exits. A stage that panicked or failed makes
//! [`run`] return an error naming it.

use crate::config::Config;
use crate::db::Pool;
use crate::faults::Faults;
use crate::http::Http;
use crate::pipeline::Pipeline;
use crate::registry::{LimitsSource, MonitorLimits, Supervisor};
use crate::state::EngineState;
use bigbrotr_stages::model::RelayUrl;
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Validated relays announced by the finder, buffered for the supervisor.
const FOUND_CHANNEL: usize = 1024;

/// What a run includes besides the connectors, the pipeline and the supervisor.
pub struct Parts {
    /// Sync only these relays (and run no finder); empty: the whole registry, with the finder
    /// when `finder.enabled`.
    pub explicit: Vec<RelayUrl>,
    /// Where the supervisor reads relay limits (the monitor's checks, or a test's source).
    pub limits: Arc<dyn LimitsSource>,
    /// Run the monitor beside the sync.
    pub monitor: bool,
    /// Run the analytics refresher beside the sync.
    pub analytics: bool,
    /// Answer NIP-90 jobs from the archive at this connection string.
    pub dvm: Option<String>,
    /// The HTTP endpoint, bound already; it serves once the pipeline runs.
    pub http: Option<Http>,
}

impl Parts {
    /// Connectors, pipeline, supervisor and finder only; relay limits from the monitor's checks.
    pub fn sync(explicit: Vec<RelayUrl>) -> Parts {
        Parts {
            explicit,
            limits: Arc::new(MonitorLimits),
            monitor: false,
            analytics: false,
            dvm: None,
            http: None,
        }
    }
}

/// The side stages of a run, started before the pipeline and stopped after it.
struct Side {
    monitor: Option<JoinHandle<()>>,
    analytics: Option<JoinHandle<()>>,
    dvm: Option<crate::dvm::RunningDvm>,
}

impl Side {
    async fn stop(self) {
        if let Some(m) = self.monitor {
            let _ = m.await;
        }
        if let Some(a) = self.analytics {
            let _ = a.await;
        }
        if let Some(d) = self.dvm {
            d.stop().await;
        }
    }
}

/// A side stage: its error is logged (`what`) and the sync goes on; its panic stops the run.
fn spawn_side<F>(faults: &Faults, name: &'static str, what: &'static str, task: F) -> JoinHandle<()>
where
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    faults.spawn(name, async move {
        if let Err(e) = task.await {
            tracing::warn!(error = %format!("{e:#}"), "{what}");
        }
    })
}

/// Runs the whole topology until `stop` turns true (or its sender is dropped) or a stage
/// fails; `on_start` receives the shared engine state once the pipeline runs.
pub async fn run(
    cfg: &Config,
    pool: Pool,
    parts: Parts,
    stop: watch::Receiver<bool>,
    on_start: impl FnOnce(Arc<EngineState>),
) -> anyhow::Result<()> {
    let faults = Faults::default();
    // One signal for every task: the caller's stop, or the first stage failure.
    let (halt_tx, halt) = watch::channel(false);
    let halter = {
        let (faults, mut stop) = (faults.clone(), stop);
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {}
                _ = faults.wait() => {}
            }
            let _ = halt_tx.send(true);
        })
    };

    let monitor = parts.monitor.then(|| {
        let (cfg, pool, halt) = (cfg.clone(), pool.clone(), halt.clone());
        spawn_side(&faults, "monitor", "monitor stopped", async move {
            crate::monitor::run_forever(&cfg, &pool, halt).await
        })
    });
    let analytics = parts.analytics.then(|| {
        let (cfg, pool, halt) = (cfg.clone(), pool.clone(), halt.clone());
        spawn_side(
            &faults,
            "analytics",
            "analytics refresher stopped",
            async move { crate::analytics::run_forever(&cfg, &pool, halt).await },
        )
    });
    let finder_on = parts.explicit.is_empty() && cfg.finder.enabled;
    let started = async {
        let dvm = match &parts.dvm {
            Some(url) => Some(crate::dvm::start(cfg, url).await?),
            None => None,
        };
        let cursors = crate::sync::load_cursors(&pool).await?;
        if finder_on {
            crate::finder::ensure_schema(&pool).await?;
        }
        anyhow::Ok((dvm, cursors))
    };
    let (dvm, cursors) = match started.await {
        Ok(v) => v,
        Err(e) => {
            // Closing the halt signal stops the monitor and the refresher started above.
            halter.abort();
            return Err(e);
        }
    };
    let side = Side {
        monitor,
        analytics,
        dvm,
    };
    let (hints_tx, hints_rx) = if finder_on {
        let (t, r) = flume::bounded(cfg.finder.hints_channel.max(1));
        (Some(t), Some(r))
    } else {
        (None, None)
    };
    let pipeline = Pipeline::start_with_hints(cfg, pool.clone(), hints_tx, faults.clone());
    let state = Arc::new(EngineState::new(pipeline.stats.clone()));
    state.ready.store(true, Relaxed);
    if let Some(h) = parts.http {
        // Dropping the handle detaches the server: it serves until the process exits,
        // answering /ready with 503 while the pipeline drains.
        drop(h.spawn(state.clone()));
    }
    on_start(state.clone());

    let (finder_stop, finder_stop_rx) = watch::channel(false);
    let (found_tx, found_rx) = if finder_on {
        let (t, r) = flume::bounded(FOUND_CHANNEL);
        (Some(t), Some(r))
    } else {
        (None, None)
    };
    let finder = finder_on.then(|| {
        let f = crate::finder::new(cfg, pool.clone(), found_tx);
        faults.spawn("finder", f.run(hints_rx, finder_stop_rx))
    });

    let mut supervisor = Supervisor::new(
        cfg,
        pool.clone(),
        &pipeline,
        state.clone(),
        cursors,
        parts.limits,
        parts.explicit,
    );
    supervisor.run(found_rx, halt.clone()).await;

    state.ready.store(false, Relaxed);
    let _ = finder_stop.send(true);
    supervisor.shutdown().await;
    drop(supervisor);
    if let Some(f) = finder {
        let _ = f.await;
    }
    pipeline.stop();
    let drained = pipeline.finish().await;
    side.stop().await;
    halter.abort();
    drained?;
    match faults.first() {
        Some(what) => Err(anyhow::anyhow!(what)),
        None => Ok(()),
    }
}
