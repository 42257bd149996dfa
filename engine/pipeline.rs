//! The data path of a sync, wired in one place: verify → dedupe → batch → sink, and the
//! connectors that feed it. [`crate::service`] composes it with the supervisor, the finder and
//! the side stages into the topology of a whole run (its module doc draws all of it).
//!
//! ```text
//! connect ×N ──RawEvent──► verify pool ──Verified──► dedupe ──Item──► batch ──Batch──► sink
//!     ▲  (bounded)             (bounded)              │ (bounded)       (bounded)     │
//!     │                                               └─ relay hints ──► finder       │
//!     │                                                  (bounded, optional, lossy)   │
//!     └──────────── cursor acks: a relay's progress advances past committed events ◄──┘
//! ```
//!
//! Every arrow is a bounded flume channel: a slow database fills them, the verify threads
//! block, and the connectors stop reading their sockets. The hints channel is the exception
//! that never pushes back: dedupe drops (and counts) a hint when the finder is behind. Shutdown runs front to back: the
//! connectors stop, each stage drains its input and closes its output, the sink commits the
//! last batch and persists the cursors. Every stage runs under its name through
//! [`Faults`]: one that panics or fails makes [`Pipeline::finish`] return an error naming it.

use crate::config::Config;
use crate::db::Pool;
use crate::faults::Faults;
use bigbrotr_stages::connect::{Archive, Connector, SyncConfig};
use bigbrotr_stages::dedupe::{Dedupe, DedupeStats};
use bigbrotr_stages::model::{RawEvent, Relay, CHUNK};
use bigbrotr_stages::sink::SinkStats;
use bigbrotr_stages::verify::VerifyStats;
use bigbrotr_stages::{batch, sink, verify};
use std::sync::Arc;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Counters of every stage, for progress lines, reports and metrics.
#[derive(Clone)]
pub struct Stats {
    /// Verify pool.
    pub verify: Arc<VerifyStats>,
    /// Dedupe.
    pub dedupe: Arc<DedupeStats>,
    /// Sink.
    pub sink: Arc<SinkStats>,
    /// Depth of each channel: (name, events queued (chunks × CHUNK, an upper bound), capacity
    /// in events).
    pub depths: Arc<dyn Fn() -> Vec<(&'static str, usize, usize)> + Send + Sync>,
    /// The sink's feed of committed events (subscribe for live events).
    pub committed: sink::Committed,
}

/// Committed batches a live subscriber may fall behind by before it is told it lagged: the
/// memory held for a slow subscriber is at most this many batches.
const LIVE_BATCHES: usize = 16;

/// A running pipeline: hand it connectors, then `finish` it.
pub struct Pipeline {
    raw_tx: flume::Sender<Vec<RawEvent>>,
    /// What reconciliation reads, shared by every connector (one in-flight id set).
    archive: Arc<Archive>,
    cursor_tx: flume::Sender<Relay>,
    stop_tx: watch::Sender<bool>,
    /// Completes when each verify thread has ended.
    verify_done: Vec<oneshot::Receiver<()>>,
    /// Dedupe, batch and sink, in pipeline order.
    tasks: Vec<JoinHandle<()>>,
    faults: Faults,
    /// Stage counters.
    pub stats: Stats,
}

impl Pipeline {
    /// Starts verify, dedupe, batch and sink; connectors are added with [`Pipeline::connector`].
    pub fn start(cfg: &Config, pool: Pool) -> Pipeline {
        Self::start_with_hints(cfg, pool, None, Faults::default())
    }

    /// Like [`Pipeline::start`]; dedupe also sends the relay URLs named by new events on
    /// `hints` (for the finder), and the stages report their failures to `faults`.
    pub fn start_with_hints(
        cfg: &Config,
        pool: Pool,
        hints: Option<flume::Sender<String>>,
        faults: Faults,
    ) -> Pipeline {
        let p = &cfg.pipeline;
        // Events move in chunks of up to CHUNK: the bounds are configured in events.
        let chunks = |events: usize| (events / CHUNK).max(1);
        let (raw_tx, raw_rx) = flume::bounded::<Vec<RawEvent>>(chunks(p.raw_channel));
        let (verified_tx, verified_rx) = flume::bounded(chunks(p.verified_channel));
        let (item_tx, item_rx) = flume::bounded(chunks(p.item_channel));
        let (batch_tx, batch_rx) = flume::bounded(p.batch_channel);
        // One message per relay at most while its cursor is dirty, so bounded by the relay count.
        let (cursor_tx, cursor_rx) = flume::unbounded::<Relay>();
        let (stop_tx, _) = watch::channel(false);

        let pool_v = verify::spawn(
            &cfg.verify(),
            raw_rx.clone(),
            verified_tx,
            cursor_tx.clone(),
        );
        let mut dedupe = Dedupe::new(p.dedupe_capacity);
        if let Some(tx) = hints {
            dedupe = dedupe.with_hints(tx);
        }
        let dedupe_stats = dedupe.stats.clone();
        let sink_stats = Arc::new(SinkStats::default());
        let (committed, _) = tokio::sync::broadcast::channel(LIVE_BATCHES);

        let archive = Archive::new(pool.clone());
        let verify_done = pool_v
            .threads
            .into_iter()
            .map(|t| faults.watch_thread("verify", t))
            .collect();
        let tasks = vec![
            faults.spawn("dedupe", dedupe.run(verified_rx.clone(), item_tx)),
            faults.spawn("batch", batch::run(cfg.batch(), item_rx.clone(), batch_tx)),
            faults.spawn(
                "sink",
                sink::run(
                    pool,
                    batch_rx.clone(),
                    cursor_rx,
                    sink_stats.clone(),
                    p.sink_writers,
                    cfg.archive.layout(),
                    committed.clone(),
                ),
            ),
        ];

        let caps = (
            p.raw_channel,
            p.verified_channel,
            p.item_channel,
            p.batch_channel,
        );
        let depths = Arc::new(move || {
            vec![
                ("raw", raw_rx.len() * CHUNK, caps.0),
                ("verified", verified_rx.len() * CHUNK, caps.1),
                ("items", item_rx.len() * CHUNK, caps.2),
                ("batches", batch_rx.len(), caps.3),
            ]
        });
        Pipeline {
            raw_tx,
            archive,
            cursor_tx,
            stop_tx,
            verify_done,
            tasks,
            faults,
            stats: Stats {
                verify: pool_v.stats,
                dedupe: dedupe_stats,
                sink: sink_stats,
                depths,
                committed,
            },
        }
    }

    /// A connector for `relay` feeding this pipeline.
    pub fn connector(&self, relay: Relay, sync: Arc<SyncConfig>) -> Connector {
        Connector::new(
            relay,
            sync,
            self.raw_tx.clone(),
            self.cursor_tx.clone(),
            self.stop_tx.subscribe(),
        )
        .with_archive(Some(self.archive.clone()))
    }

    /// A connector for `relay` that stops when `stop` turns true (or its sender is dropped),
    /// for supervisors that stop relays one by one; [`Pipeline::stop`] does not reach it.
    pub fn connector_with_stop(
        &self,
        relay: Relay,
        sync: Arc<SyncConfig>,
        stop: watch::Receiver<bool>,
    ) -> Connector {
        Connector::new(
            relay,
            sync,
            self.raw_tx.clone(),
            self.cursor_tx.clone(),
            stop,
        )
        .with_archive(Some(self.archive.clone()))
    }

    /// Asks every connector to stop (they close their windows without advancing cursors).
    pub fn stop(&self) {
        let _ = self.stop_tx.send(true);
    }

    /// The sender behind [`Pipeline::stop`], for signal handlers.
    pub fn stop_sender(&self) -> watch::Sender<bool> {
        self.stop_tx.clone()
    }

    /// A receiver that turns true when [`Pipeline::stop`] is called.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop_tx.subscribe()
    }

    /// Where the stages report their failures.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Drains every stage and waits for the sink's last commit. Call after the connectors
    /// have returned. A stage that panicked or failed (now or earlier) makes this return an
    /// error naming it, without waiting for stages stuck behind it.
    pub async fn finish(self) -> anyhow::Result<()> {
        let Pipeline {
            raw_tx,
            cursor_tx,
            verify_done,
            tasks,
            faults,
            ..
        } = self;
        drop(raw_tx);
        drop(cursor_tx);
        let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
        let drained = async move {
            for done in verify_done {
                let _ = done.await;
            }
            for t in tasks {
                let _ = t.await;
            }
        };
        tokio::select! {
            () = drained => {}
            _ = faults.wait() => {
                // A dead stage leaves the ones before it blocked on a full channel.
                for a in aborts {
                    a.abort();
                }
            }
        }
        match faults.first() {
            Some(what) => Err(anyhow::anyhow!(what)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool that never connects: these pipelines see no event, so the sink never asks.
    fn idle_pool() -> Pool {
        let manager = bb8_postgres::PostgresConnectionManager::new(
            tokio_postgres::Config::new(),
            tokio_postgres::NoTls,
        );
        bb8::Pool::builder().build_unchecked(manager)
    }

    #[tokio::test]
    async fn an_idle_pipeline_drains_cleanly() {
        let p = Pipeline::start(&Config::default(), idle_pool());
        p.finish().await.expect("clean drain");
    }

    #[tokio::test]
    async fn a_stage_that_panics_fails_the_drain_naming_it() {
        let mut p = Pipeline::start(&Config::default(), idle_pool());
        // Stands in for the sink dying mid-run; the stages before it keep running.
        let dead = p
            .faults
            .spawn("sink", crate::faults::tests::boom("disk on fire"));
        p.tasks.push(dead);
        let err = p.finish().await.expect_err("a panicked stage is an error");
        assert_eq!(err.to_string(), "sink stage panicked: disk on fire");
    }

    #[tokio::test]
    async fn a_stage_that_fails_fails_the_drain_naming_it() {
        let mut p = Pipeline::start(&Config::default(), idle_pool());
        // A stage that never ends: the drain must not wait for it once another has failed.
        let stuck = p.faults.spawn("batch", std::future::pending::<()>());
        let failed = p
            .faults
            .spawn("dedupe", async { Err::<(), _>("output closed") });
        p.tasks.insert(0, stuck);
        p.tasks.push(failed);
        let err = tokio::time::timeout(std::time::Duration::from_secs(10), p.finish())
            .await
            .expect("the drain stops at the failure")
            .expect_err("a failed stage is an error");
        assert_eq!(err.to_string(), "dedupe stage failed: output closed");
    }
}
