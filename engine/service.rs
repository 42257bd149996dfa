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
//!                                                      │ committed (broadcast, lossy:
//!                                                      ▼  a laggard is told, never waited on)
//!                                            HTTP relay endpoint (live events after EOSE)
//!
//!   beside them, reading the archive: analytics (summary tables, orphan cleanup),
//!   DVM (NIP-90 jobs over relays), HTTP (health, metrics, API, the archive as a relay;
//!   also reads the engine state)
//! ```
//!
//! The feedback loops close through the registry: the finder announces validated relays on
//! `found` and the supervisor starts connectors for them (the finder learns relays from the
//! hints dedupe extracts from new events); the monitor's checks (NIP-11 limits,
//! reachability) are read by the supervisor, which stops, pauses or retunes connectors.
//! Every arrow between pipeline stages is a bounded channel (see [`crate::pipeline`]).
//!
//! In a fleet (several processes on one database, `crate::fleet`), the process first joins
//! it (its worker row), then keeps a heartbeat task that holds the role leases: the monitor,
//! the analytics refresher, the DVM and the finder each run only while this worker holds
//! their role, and the supervisor syncs only the relays it leases. The process leaves the
//! fleet (drops its leases) once the pipeline has drained.
//!
//! Start order: the monitor and the analytics refresher (they only read and write the
//! archive), the DVM (a bad `[dvm]` fails the start), the cursors and the finder's table, the
//! pipeline (verify threads, dedupe, batch, sink), the engine state (ready; the HTTP endpoint,
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
use crate::fleet::{Fleet, Role, Roles};
use crate::http::Http;
use crate::pipeline::Pipeline;
use crate::registry::{LimitsSource, MonitorLimits, Supervisor};
use crate::state::EngineState;
use bigbrotr_stages::model::{CursorState, RelayUrl};
use std::collections::HashMap;
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

/// The DVM, run while this worker holds its role.
fn spawn_dvm(
    cfg: &Config,
    url: &str,
    faults: &Faults,
    roles: Roles,
    halt: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let (cfg, url, inner) = (cfg.clone(), url.to_string(), faults.clone());
    let stage = crate::fleet::gated(Role::Dvm, roles, halt, move |mut stop| {
        let (cfg, url, faults) = (cfg.clone(), url.clone(), inner.clone());
        async move {
            let dvm = crate::dvm::start_under(&cfg, &url, &faults).await?;
            let _ = stop.wait_for(|s| *s).await;
            dvm.stop().await;
            Ok(())
        }
    });
    spawn_side(faults, "dvm-role", "DVM stopped", stage)
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
    let (limits, explicit) = (parts.limits.clone(), parts.explicit.clone());
    let mut service = Service::start(cfg, &pool, parts, stop, on_start).await?;
    let found = service.found.take();
    let fleet = service.fleet.clone();
    // The supervisor borrows the pipeline's inlet, so it runs here rather than as a task.
    let mut supervisor = Supervisor::new(
        cfg,
        pool,
        &service.pipeline,
        service.state.clone(),
        std::mem::take(&mut service.cursors),
        limits,
        explicit,
    )
    .with_fleet(fleet);
    supervisor.run(found, service.halt.clone()).await;
    service.stop_intake();
    supervisor.shutdown().await;
    drop(supervisor);
    service.drain().await
}

/// Every task and channel of a running service, by name. The supervisor and its connectors,
/// which borrow the pipeline, run in [`run`] between [`Service::start`] and
/// [`Service::drain`].
struct Service {
    /// The first stage failure.
    faults: Faults,
    /// Turns true on the caller's stop or the first failure; every task watches it.
    halt: watch::Receiver<bool>,
    /// Forwards the caller's stop and the first failure to `halt`.
    halter: JoinHandle<()>,
    /// The monitor: its checks reach the supervisor as relay limits, through the database.
    monitor: Option<JoinHandle<()>>,
    /// The analytics refresher: summary tables and orphan cleanup.
    analytics: Option<JoinHandle<()>>,
    /// The DVM, while this worker holds its role: its relay connections and jobs.
    dvm: Option<JoinHandle<()>>,
    /// This process in the fleet.
    fleet: Arc<Fleet>,
    /// The fleet heartbeat: the worker row and the role leases.
    roles_task: JoinHandle<()>,
    /// Persisted relay cursors, handed to the supervisor.
    cursors: HashMap<String, CursorState>,
    /// Verify pool, dedupe, batch and sink; the connectors' inlet and the cursor channel.
    pipeline: Pipeline,
    /// What the HTTP endpoint and other observers read.
    state: Arc<EngineState>,
    /// The finder, when the whole registry is synced.
    finder: Option<JoinHandle<()>>,
    /// Stops the finder before the connectors, so no new relay arrives while they stop.
    finder_stop: watch::Sender<bool>,
    /// finder → supervisor: validated relays to start connectors for.
    found: Option<flume::Receiver<RelayUrl>>,
}

impl Service {
    /// Starts everything but the supervisor, in the start order of the module doc.
    async fn start(
        cfg: &Config,
        pool: &Pool,
        parts: Parts,
        stop: watch::Receiver<bool>,
        on_start: impl FnOnce(Arc<EngineState>),
    ) -> anyhow::Result<Service> {
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
        let finder_on = parts.explicit.is_empty() && cfg.finder.enabled;
        // Join the fleet before anything runs: the other workers count this one at once.
        let fleet = Fleet::new(cfg, pool.clone(), parts.explicit.is_empty());
        if let Err(e) = fleet.beat().await {
            halter.abort();
            return Err(e.context("cannot join the fleet"));
        }
        tracing::info!(worker = %fleet.worker, "joined the fleet");
        let wants: Vec<Role> = [
            (finder_on, Role::Finder),
            (parts.monitor, Role::Monitor),
            (parts.analytics, Role::Analytics),
            (parts.dvm.is_some(), Role::Dvm),
        ]
        .into_iter()
        .filter_map(|(on, r)| on.then_some(r))
        .collect();
        let (roles_task, roles) = crate::fleet::spawn_roles(fleet.clone(), wants, halt.clone());
        let monitor = parts.monitor.then(|| {
            let (cfg, pool) = (cfg.clone(), pool.clone());
            let stage =
                crate::fleet::gated(Role::Monitor, roles.clone(), halt.clone(), move |stop| {
                    let (cfg, pool) = (cfg.clone(), pool.clone());
                    async move { crate::monitor::run_forever(&cfg, &pool, stop).await }
                });
            spawn_side(&faults, "monitor", "monitor stopped", stage)
        });
        let analytics = parts.analytics.then(|| {
            let (cfg, pool) = (cfg.clone(), pool.clone());
            let stage =
                crate::fleet::gated(Role::Analytics, roles.clone(), halt.clone(), move |stop| {
                    let (cfg, pool) = (cfg.clone(), pool.clone());
                    async move { crate::analytics::run_forever(&cfg, &pool, stop).await }
                });
            spawn_side(&faults, "analytics", "analytics refresher stopped", stage)
        });
        let started = async {
            let dvm = match &parts.dvm {
                Some(url) => {
                    // A bad `[dvm]` fails the start, whichever worker will run it.
                    crate::dvm::settings(cfg)?;
                    Some(spawn_dvm(cfg, url, &faults, roles.clone(), halt.clone()))
                }
                None => None,
            };
            let cursors = crate::sync::load_cursors(pool).await?;
            if finder_on {
                crate::finder::ensure_schema(pool).await?;
            }
            anyhow::Ok((dvm, cursors))
        };
        let (dvm, cursors) = match started.await {
            Ok(v) => v,
            Err(e) => {
                // Closing the halt signal stops the monitor and the refresher started above.
                halter.abort();
                roles_task.abort();
                return Err(e);
            }
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
        let (found_tx, found) = if finder_on {
            let (t, r) = flume::bounded(FOUND_CHANNEL);
            (Some(t), Some(r))
        } else {
            (None, None)
        };
        let finder = finder_on.then(|| {
            let (cfg, pool) = (cfg.clone(), pool.clone());
            let stage =
                crate::fleet::gated(Role::Finder, roles.clone(), finder_stop_rx, move |stop| {
                    let f = crate::finder::new(&cfg, pool.clone(), found_tx.clone());
                    let hints = hints_rx.clone();
                    async move {
                        f.run(hints, stop).await;
                        Ok(())
                    }
                });
            faults.spawn("finder", stage)
        });
        Ok(Service {
            faults,
            halt,
            halter,
            monitor,
            analytics,
            dvm,
            fleet,
            roles_task,
            cursors,
            pipeline,
            state,
            finder,
            finder_stop,
            found,
        })
    }

    /// First steps of the shutdown, before the connectors stop: not ready, finder stopping.
    fn stop_intake(&self) {
        self.state.ready.store(false, Relaxed);
        let _ = self.finder_stop.send(true);
    }

    /// The rest of the shutdown, once the connectors have stopped: the finder, the pipeline
    /// (front to back), the side stages; then the first stage failure, if any.
    async fn drain(self) -> anyhow::Result<()> {
        if let Some(f) = self.finder {
            let _ = f.await;
        }
        self.pipeline.stop();
        let drained = self.pipeline.finish().await;
        // They saw `halt` with the connectors.
        for side in [self.monitor, self.analytics, self.dvm]
            .into_iter()
            .flatten()
        {
            let _ = side.await;
        }
        self.roles_task.abort();
        // Last: the sink wrote the final cursors under the leases.
        if let Err(e) = self.fleet.leave().await {
            tracing::warn!(error = %format!("{e:#}"), "cannot leave the fleet; its leases expire by themselves");
        }
        self.halter.abort();
        drained?;
        match self.faults.first() {
            Some(what) => Err(anyhow::anyhow!(what)),
            None => Ok(()),
        }
    }
}
