//! dedupe: one body per event id, every (id, relay) sighting kept.
//!
//! The same event reaches us from many relays; only the first copy travels on with its body,
//! later copies become bare sightings for `events_relays`. The set of ids is bounded (two
//! generations); an id forgotten and seen again costs only a redundant body that the
//! database's `ON CONFLICT DO NOTHING` absorbs.
//!
//! Optionally ([`Dedupe::with_hints`]) the relay URLs named by each new event (see
//! [`crate::finder::hints`]) go out on a bounded channel for the finder. The hot path only
//! pays a substring scan: an event is parsed for hints only when its tags (or a kind 3
//! content) contain a `ws://`/`wss://` URL; a URL sent recently is not sent again, and a full
//! channel drops the hint (counted) rather than slowing the pipeline.

use crate::finder::hints;
use crate::model::{Event, Item, Sighting, Verified};
use crate::seen::SeenSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Dedupe counters.
#[derive(Debug, Default)]
pub struct DedupeStats {
    /// Events passed on with their body.
    pub bodies: AtomicU64,
    /// Copies passed on as sightings only.
    pub duplicates: AtomicU64,
    /// Relay hints sent to the finder.
    pub hints_sent: AtomicU64,
    /// Relay hints dropped because the hints channel was full.
    pub hints_dropped: AtomicU64,
}

/// Hint URLs remembered so the same relay is not sent again and again.
const RECENT_HINTS: usize = 65_536;

/// The optional hints output.
struct Hints {
    tx: flume::Sender<String>,
    recent: SeenSet,
}

/// The dedupe stage state.
pub struct Dedupe {
    ids: SeenSet,
    hints: Option<Hints>,
    /// Counters.
    pub stats: Arc<DedupeStats>,
}

impl Dedupe {
    /// A stage remembering about `capacity` ids.
    pub fn new(capacity: usize) -> Dedupe {
        Dedupe {
            ids: SeenSet::new(capacity),
            hints: None,
            stats: Arc::new(DedupeStats::default()),
        }
    }

    /// Also sends the relay URLs found in each new event on `tx` (bounded; never blocks).
    pub fn with_hints(mut self, tx: flume::Sender<String>) -> Dedupe {
        self.hints = Some(Hints {
            tx,
            recent: SeenSet::new(RECENT_HINTS),
        });
        self
    }

    fn send_hints(&self, h: &Hints, ev: &Event) {
        if !hints::may_carry_hints(ev.kind, &ev.tags_json, &ev.content) {
            return;
        }
        hints::extract(ev.kind, &ev.tags_json, &ev.content, &mut |url| {
            let key = xxhash_rust::xxh3::xxh3_128(url.as_bytes());
            if h.recent.contains(key) {
                return;
            }
            match h.tx.try_send(url.to_string()) {
                Ok(()) => {
                    h.recent.insert(key);
                    self.stats.hints_sent.fetch_add(1, Relaxed);
                }
                Err(flume::TrySendError::Full(_)) => {
                    self.stats.hints_dropped.fetch_add(1, Relaxed);
                }
                // The finder is gone (shutdown): nothing to count.
                Err(flume::TrySendError::Disconnected(_)) => {}
            }
        });
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
            created_at: v.event.created_at,
        };
        if self.ids.insert(key) {
            self.stats.bodies.fetch_add(1, Relaxed);
            if let Some(h) = &self.hints {
                self.send_hints(h, &v.event);
            }
            Item::Body(v.event, sighting)
        } else {
            self.stats.duplicates.fetch_add(1, Relaxed);
            Item::Sighting(sighting)
        }
    }

    /// Runs until the input closes or the output is dropped.
    pub async fn run(
        self,
        input: flume::Receiver<Vec<Verified>>,
        output: flume::Sender<Vec<Item>>,
    ) {
        while let Ok(chunk) = input.recv_async().await {
            let items: Vec<Item> = chunk.into_iter().map(|v| self.process(v)).collect();
            if output.send_async(items).await.is_err() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CursorState, RelayCtx, RelayUrl, Ticket};

    fn verified(n: u8, kind: u16, tags_json: &str) -> Verified {
        let relay = RelayCtx::new(
            RelayUrl::parse("wss://source.example", false).expect("url"),
            CursorState::default(),
        );
        Verified {
            event: Event {
                id: [n; 32],
                pubkey: [1; 32],
                sig: [2; 64],
                created_at: 1,
                kind,
                tags_json: tags_json.into(),
                content: "".into(),
            },
            ticket: Ticket { relay, epoch: 0 },
            seen_at: 1,
        }
    }

    #[test]
    fn hints_are_sent_once_and_dropped_when_full() {
        let (tx, rx) = flume::bounded(2);
        let d = Dedupe::new(1000).with_hints(tx);
        let e = |url: &str| format!(r#"[["e","{}","{url}"]]"#, "ab".repeat(32));
        d.process(verified(1, 1, &e("wss://a.example")));
        // Same hint again (another event): not sent twice.
        d.process(verified(2, 1, &e("wss://a.example")));
        // A duplicate event is not scanned at all.
        d.process(verified(2, 1, &e("wss://dup.example")));
        d.process(verified(3, 1, &e("wss://b.example")));
        // Channel full: dropped and counted, remembered as not sent.
        d.process(verified(4, 1, &e("wss://c.example")));
        d.process(verified(5, 1, r#"[["t","nostr"]]"#));
        assert_eq!(d.stats.hints_sent.load(Relaxed), 2);
        assert_eq!(d.stats.hints_dropped.load(Relaxed), 1);
        let got: Vec<String> = rx.drain().collect();
        assert_eq!(got, vec!["wss://a.example", "wss://b.example"]);
        d.process(verified(6, 1, &e("wss://c.example")));
        assert_eq!(rx.try_recv().ok().as_deref(), Some("wss://c.example"));
    }
}
