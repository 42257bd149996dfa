//! What a running engine shares with its observers (HTTP health/metrics/API) and side stages:
//! stage counters, the relays being synced, readiness.

use crate::pipeline::Stats;
use bigbrotr_stages::model::Relay;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::RwLock;
use std::time::Instant;

/// Shared engine state; cheap to read, updated by the supervisor.
pub struct EngineState {
    /// Stage counters of the pipeline.
    pub pipeline: Stats,
    /// Relay contexts by normalized URL (connected or paused).
    pub relays: RwLock<HashMap<String, Relay>>,
    /// Relays whose connector is running now.
    pub running: RwLock<std::collections::HashSet<String>>,
    /// When the engine started.
    pub started: Instant,
    /// True once the pipeline is running (false again while draining).
    pub ready: AtomicBool,
}

impl EngineState {
    /// State for a freshly started pipeline.
    pub fn new(pipeline: Stats) -> EngineState {
        EngineState {
            pipeline,
            relays: RwLock::new(HashMap::new()),
            running: RwLock::new(Default::default()),
            started: Instant::now(),
            ready: AtomicBool::new(false),
        }
    }

    /// True while the pipeline accepts events.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed)
    }

    /// A snapshot of the relay contexts.
    pub fn relays(&self) -> Vec<Relay> {
        self.relays
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}
