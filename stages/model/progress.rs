//! Sync progress per relay: a cursor that advances only past committed events.
//!
//! The connector opens an epoch for each REQ window and closes it with the number of events
//! it passed on and the cursor state that holds once they are all in the database. Verify
//! (for rejections) and the sink (after commit) complete events of an epoch. Windows finish
//! in order: the committed state is the `after` state of the newest window whose events, and
//! those of every earlier window, are all completed.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

/// An interrupted backward walk over (`until`, `end`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Upper end of the walk: everything in (`until`, `end`] is archived.
    pub end: i64,
    /// How far down the walk got (inclusive bound of what remains).
    pub until: i64,
}

/// A relay's persisted sync position.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorState {
    /// Every event with `created_at <= synced_until` (within the configured start) is archived.
    pub synced_until: Option<i64>,
    /// A walk in progress above `synced_until`.
    pub pending: Option<Pending>,
}

#[derive(Debug)]
struct Window {
    emitted: Option<u64>,
    done: u64,
    after: Option<CursorState>,
}

#[derive(Debug)]
struct Inner {
    base: u64,
    windows: VecDeque<Window>,
    committed: CursorState,
    dirty: bool,
}

/// Tracks which windows of one relay are fully committed.
#[derive(Debug)]
pub struct Progress {
    inner: Mutex<Inner>,
}

impl Progress {
    /// Starts from a persisted state.
    pub fn new(state: CursorState) -> Progress {
        Progress {
            inner: Mutex::new(Inner {
                base: 0,
                windows: VecDeque::new(),
                committed: state,
                dirty: false,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the counters half-updated in a way that
        // matters more than stopping, so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a window; events passed on for it carry the returned epoch.
    pub fn open(&self) -> u64 {
        let mut g = self.lock();
        g.windows.push_back(Window {
            emitted: None,
            done: 0,
            after: None,
        });
        g.base + g.windows.len() as u64 - 1
    }

    /// Closes a window: `emitted` events were passed on; `after` (if any) is the cursor state
    /// once they and every earlier window are committed.
    /// Returns true if this made the committed state change (and nobody was told yet).
    pub fn close(&self, epoch: u64, emitted: u64, after: Option<CursorState>) -> bool {
        let mut g = self.lock();
        if let Some(i) = epoch.checked_sub(g.base) {
            if let Some(w) = g.windows.get_mut(i as usize) {
                w.emitted = Some(emitted);
                w.after = after;
            }
        }
        advance(&mut g)
    }

    /// Marks `n` events of `epoch` as done (committed or rejected). Returns true if this made
    /// the committed state change while it was clean.
    pub fn complete(&self, epoch: u64, n: u64) -> bool {
        let mut g = self.lock();
        if let Some(i) = epoch.checked_sub(g.base) {
            if let Some(w) = g.windows.get_mut(i as usize) {
                w.done += n;
            }
        }
        advance(&mut g)
    }

    /// The committed state, if it changed since the last call.
    pub fn take_dirty(&self) -> Option<CursorState> {
        let mut g = self.lock();
        if g.dirty {
            g.dirty = false;
            Some(g.committed)
        } else {
            None
        }
    }

    /// The committed state.
    pub fn committed(&self) -> CursorState {
        self.lock().committed
    }

    /// True while some window has events not yet committed or rejected.
    pub fn in_flight(&self) -> bool {
        !self.lock().windows.is_empty()
    }
}

fn advance(g: &mut Inner) -> bool {
    let was_dirty = g.dirty;
    while let Some(front) = g.windows.front() {
        match front.emitted {
            Some(e) if front.done >= e => {
                if let Some(a) = front.after {
                    g.committed = a;
                    g.dirty = true;
                }
                g.windows.pop_front();
                g.base += 1;
            }
            _ => break,
        }
    }
    g.dirty && !was_dirty
}

/// Which relay and window an event belongs to; completed exactly once downstream.
#[derive(Debug, Clone)]
pub struct Ticket {
    /// The relay.
    pub relay: Arc<super::RelayCtx>,
    /// The window.
    pub epoch: u64,
}

impl Ticket {
    /// Marks this event done (rejected, or committed); true if the relay's cursor moved.
    pub fn complete(&self) -> bool {
        self.relay.progress.complete(self.epoch, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(n: i64) -> Option<CursorState> {
        Some(CursorState {
            synced_until: Some(n),
            pending: None,
        })
    }

    #[test]
    fn advances_only_in_order() {
        let p = Progress::new(CursorState::default());
        let a = p.open();
        let b = p.open();
        p.complete(b, 2);
        p.close(b, 2, st(20));
        assert_eq!(p.take_dirty(), None, "b done but a still open");
        p.complete(a, 1);
        p.close(a, 3, st(10));
        assert_eq!(p.take_dirty(), None);
        p.complete(a, 2);
        assert_eq!(p.take_dirty(), st(20));
        assert!(!p.in_flight());
    }

    #[test]
    fn interrupted_window_keeps_state() {
        let p = Progress::new(st(5).unwrap_or_default());
        let a = p.open();
        p.close(a, 0, None);
        assert_eq!(p.take_dirty(), None);
        assert_eq!(p.committed(), st(5).unwrap_or_default());
    }
}
