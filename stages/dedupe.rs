//! dedupe: one body per event id, every (id, relay) sighting kept.
//!
//! The same event reaches us from many relays; only the first copy travels on with its body,
//! later copies become bare sightings for `events_relays`. The set of ids is bounded (two
//! generations); an id forgotten and seen again costs only a redundant body that the
//! database's `ON CONFLICT DO NOTHING` absorbs.

use crate::model::{Item, Sighting, Verified};
use crate::verify::SeenSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Dedupe counters.
#[derive(Debug, Default)]
pub struct DedupeStats {
    /// Events passed on with their body.
    pub bodies: AtomicU64,
    /// Copies passed on as sightings only.
    pub duplicates: AtomicU64,
}

/// The dedupe stage state.
pub struct Dedupe {
    ids: SeenSet,
    /// Counters.
    pub stats: Arc<DedupeStats>,
}

impl Dedupe {
    /// A stage remembering about `capacity` ids.
    pub fn new(capacity: usize) -> Dedupe {
        Dedupe {
            ids: SeenSet::new(capacity),
            stats: Arc::new(DedupeStats::default()),
        }
    }

    /// Classifies one verified event.
    pub fn process(&self, v: Verified) -> Item {
        // Ids are SHA-256 outputs already checked by verify: their first 16 bytes are a
        // collision-resistant key without further hashing.
        let mut k = [0u8; 16];
        k.copy_from_slice(&v.event.id[..16]);
        let key = u128::from_le_bytes(k);
        let sighting = Sighting {
            id: v.event.id,
            ticket: v.ticket,
            seen_at: v.seen_at,
        };
        if self.ids.insert(key) {
            self.stats.bodies.fetch_add(1, Relaxed);
            Item::Body(v.event, sighting)
        } else {
            self.stats.duplicates.fetch_add(1, Relaxed);
            Item::Sighting(sighting)
        }
    }

    /// Runs until the input closes or the output is dropped.
    pub async fn run(self, input: flume::Receiver<Verified>, output: flume::Sender<Item>) {
        while let Ok(v) = input.recv_async().await {
            if output.send_async(self.process(v)).await.is_err() {
                break;
            }
        }
    }
}
