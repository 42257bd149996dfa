//! The Nostr model shared by the stages: events, canonical serialization, relay identity,
//! signing, per-relay statistics and the cursor progress tracker.

pub mod canonical;
pub mod event;
pub mod json;
pub mod progress;
pub mod relay;
pub mod sign;
pub mod stats;

pub use event::{Event, EventRef, ParseError};
pub use progress::{CursorState, Progress, Ticket};
pub use relay::{Network, RelayCtx, RelayUrl};
pub use sign::SignedEvent;
pub use stats::{Fallback, Reason, RelayStats};

use std::sync::Arc;

/// Most events carried by one channel message between stages. Moving events in chunks keeps
/// the cost of waking a stage (a futex and a context switch, several microseconds) off the
/// per-event path; a chunk is sent as soon as its producer has nothing more ready, so batching
/// adds no waiting.
pub const CHUNK: usize = 64;

/// An event as received from a relay, parsed but not yet checked.
#[derive(Debug)]
pub struct RawEvent {
    /// The parsed event (claimed id, not yet recomputed).
    pub event: Event,
    /// Where it came from and which sync window it belongs to.
    pub ticket: Ticket,
    /// Unix seconds when the frame was received.
    pub seen_at: i64,
}

/// An event whose id and signature have been checked.
#[derive(Debug)]
pub struct Verified {
    /// The event, now known to be authentic.
    pub event: Event,
    /// Where it came from and which sync window it belongs to.
    pub ticket: Ticket,
    /// Unix seconds when the frame was received.
    pub seen_at: i64,
}

/// One (event, relay) sighting to record in `events_relays`.
#[derive(Debug)]
pub struct Sighting {
    /// The event id.
    pub id: [u8; 32],
    /// The relay and sync window, acknowledged once the sighting is committed.
    pub ticket: Ticket,
    /// Unix seconds when the frame was received.
    pub seen_at: i64,
    /// The event's `created_at`, kept with the sighting so reconciliation can range-scan what
    /// a relay holds without joining `events`.
    pub created_at: i64,
}

/// What dedupe passes on: the first copy of an event carries its body, later copies only a sighting.
#[derive(Debug)]
pub enum Item {
    /// First time this id is seen: store the event and its sighting.
    Body(Event, Sighting),
    /// Another relay (or a repeat) delivered an event already on its way to the database.
    Sighting(Sighting),
}

/// A unit of work for the sink: bodies and sightings committed in one transaction.
#[derive(Debug, Default)]
pub struct Batch {
    /// Event bodies, at most one per id within the batch.
    pub events: Vec<Event>,
    /// Every sighting in the batch, including those of `events`.
    pub sightings: Vec<Sighting>,
}

impl Batch {
    /// Rows the batch will write (bodies + sightings).
    pub fn rows(&self) -> usize {
        self.events.len() + self.sightings.len()
    }
}

/// Shared handle to a relay's context.
pub type Relay = Arc<RelayCtx>;

/// Current unix time in seconds.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
