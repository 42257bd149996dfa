//! The pipeline, wired in one place:
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
//! last batch and persists the cursors.

use crate::config::Config;
use crate::db::Pool;
use bigbrotr_stages::connect::{Archive, Connector, SyncConfig};
use bigbrotr_stages::dedupe::{Dedupe, DedupeStats};
use bigbrotr_stages::model::{RawEvent, Relay, CHUNK};
use bigbrotr_stages::sink::SinkStats;
use bigbrotr_stages::verify::VerifyStats;
use bigbrotr_stages::{batch, sink, verify};
use std::sync::Arc;
use tokio::sync::watch;
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
}

/// A running pipeline: hand it connectors, then `finish` it.
pub struct Pipeline {
    raw_tx: flume::Sender<Vec<RawEvent>>,
    /// What reconciliation reads, shared by every connector (one in-flight id set).
    archive: Arc<Archive>,
    cursor_tx: flume::Sender<Relay>,
    stop_tx: watch::Sender<bool>,
    verify_threads: Vec<std::thread::JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
    /// Stage counters.
    pub stats: Stats,
}

impl Pipeline {
    /// Starts verify, dedupe, batch and sink; connectors are added with [`Pipeline::connector`].
    pub fn start(cfg: &Config, pool: Pool) -> Pipeline {
        Self::start_with_hints(cfg, pool, None)
    }

    /// Like [`Pipeline::start`]; dedupe also sends the relay URLs named by new events on
    /// `hints` (for the finder).
    pub fn start_with_hints(
        cfg: &Config,
        pool: Pool,
        hints: Option<flume::Sender<String>>,
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

        let archive = Archive::new(pool.clone());
        let tasks = vec![
            tokio::spawn(dedupe.run(verified_rx.clone(), item_tx)),
            tokio::spawn(batch::run(cfg.batch(), item_rx.clone(), batch_tx)),
            tokio::spawn(sink::run(
                pool,
                batch_rx.clone(),
                cursor_rx,
                sink_stats.clone(),
                p.sink_writers,
            )),
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
            verify_threads: pool_v.threads,
            tasks,
            stats: Stats {
                verify: pool_v.stats,
                dedupe: dedupe_stats,
                sink: sink_stats,
                depths,
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

    /// Drains every stage and waits for the sink's last commit. Call after the connectors
    /// have returned.
    pub async fn finish(self) {
        drop(self.raw_tx);
        drop(self.cursor_tx);
        let threads = self.verify_threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
