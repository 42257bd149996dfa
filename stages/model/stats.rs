//! Per-relay counters: what a relay sent, what was kept, and why the rest was rejected.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why an input was rejected. Counted per relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Not JSON, or not a NIP-01 message/event.
    Malformed,
    /// A fixed-length hex field is not hex of that length.
    BadHex,
    /// Tags are not arrays of strings.
    BadTags,
    /// kind/created_at out of range or not an integer.
    BadNumber,
    /// The recomputed id differs from the claimed one.
    BadId,
    /// The signature does not verify.
    BadSig,
    /// The event is larger than the configured limit.
    Oversized,
    /// created_at outside the requested [since, until].
    OutOfRange,
    /// An EVENT for a subscription we did not open.
    Unrequested,
    /// JSON nested deeper than [`super::json::MAX_DEPTH`]: refused before parsing.
    TooDeep,
}

impl Reason {
    /// Every reason, in counter order.
    pub const ALL: [Reason; 10] = [
        Reason::Malformed,
        Reason::BadHex,
        Reason::BadTags,
        Reason::BadNumber,
        Reason::BadId,
        Reason::BadSig,
        Reason::Oversized,
        Reason::OutOfRange,
        Reason::Unrequested,
        Reason::TooDeep,
    ];

    /// Stable snake_case name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::BadHex => "bad_hex",
            Reason::BadTags => "bad_tags",
            Reason::BadNumber => "bad_number",
            Reason::BadId => "bad_id",
            Reason::BadSig => "bad_sig",
            Reason::Oversized => "oversized",
            Reason::OutOfRange => "out_of_range",
            Reason::Unrequested => "unrequested",
            Reason::TooDeep => "too_deep",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl From<super::ParseError> for Reason {
    fn from(e: super::ParseError) -> Self {
        match e {
            super::ParseError::Malformed => Reason::Malformed,
            super::ParseError::BadHex => Reason::BadHex,
            super::ParseError::BadTags => Reason::BadTags,
            super::ParseError::BadNumber => Reason::BadNumber,
        }
    }
}

/// Why reconciliation (NIP-77) gave way to the walk for a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fallback {
    /// The relay does not speak NIP-77 (NOTICE, CLOSED or NEG-ERR to NEG-OPEN).
    Unsupported,
    /// No answer to NEG-OPEN within the probe timeout.
    Silent,
    /// A NEG-MSG that is not valid negentropy (bad hex, bad encoding, too many rounds).
    Malformed,
    /// The relay stopped answering in the middle of a reconciliation.
    Stalled,
    /// The archive could not be read (the walk is always safe).
    Archive,
}

impl Fallback {
    /// Every reason, in counter order.
    pub const ALL: [Fallback; 5] = [
        Fallback::Unsupported,
        Fallback::Silent,
        Fallback::Malformed,
        Fallback::Stalled,
        Fallback::Archive,
    ];

    /// Stable snake_case name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::Unsupported => "unsupported",
            Fallback::Silent => "silent",
            Fallback::Malformed => "malformed",
            Fallback::Stalled => "stalled",
            Fallback::Archive => "archive",
        }
    }
}

/// Counters for one relay; all relaxed atomics, read for progress and metrics.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// WebSocket frames received.
    pub frames: AtomicU64,
    /// EVENT messages received (before any check).
    pub events_received: AtomicU64,
    /// Events passed on to verification.
    pub events_emitted: AtomicU64,
    /// Events at a window boundary already received in the previous window (not passed on).
    pub refetched: AtomicU64,
    /// Events whose id and signature checked out.
    pub verified: AtomicU64,
    /// Signatures skipped because the same (id, sig) was verified before.
    pub verify_skipped: AtomicU64,
    /// Sightings committed to the database.
    pub committed: AtomicU64,
    /// REQ messages sent.
    pub reqs: AtomicU64,
    /// NOTICE messages received.
    pub notices: AtomicU64,
    /// CLOSED messages received.
    pub closed: AtomicU64,
    /// Connections opened (including reconnects).
    pub connects: AtomicU64,
    /// Connection or protocol failures (timeouts, disconnects, oversized frames).
    pub failures: AtomicU64,
    /// Bytes of every frame received (events, reconciliation, notices …).
    pub bytes_received: AtomicU64,
    /// NIP-77 messages sent (NEG-OPEN and NEG-MSG): reconciliation rounds.
    pub neg_rounds: AtomicU64,
    /// Bytes of NIP-77 frames sent.
    pub neg_bytes_sent: AtomicU64,
    /// Bytes of NIP-77 frames received.
    pub neg_bytes_received: AtomicU64,
    /// Ids the relay holds that the archive had not recorded for it.
    pub neg_missing: AtomicU64,
    /// Ids the archive had recorded for the relay that it no longer holds (deleted, expired).
    pub neg_extra: AtomicU64,
    /// Events received in answer to a fetch by id (missing bodies).
    pub bodies_fetched: AtomicU64,
    /// Sightings recorded without downloading the body (the archive already held the event).
    pub sightings_without_body: AtomicU64,
    /// Ids the relay claimed in reconciliation but did not serve when asked.
    pub ids_unserved: AtomicU64,
    /// Bytes received by re-walks of already archived ranges (relays without NIP-77).
    pub recheck_bytes: AtomicU64,
    /// NIP-45 COUNT requests sent to find the windows a relay without NIP-77 gained events in.
    pub count_queries: AtomicU64,
    /// Windows re-walked because the relay's COUNT exceeded the archive's sightings.
    pub recheck_windows: AtomicU64,
    neg_fallbacks: [AtomicU64; Fallback::ALL.len()],
    rejected: [AtomicU64; Reason::ALL.len()],
}

impl RelayStats {
    /// Counts one rejection.
    pub fn reject(&self, r: Reason) {
        self.rejected[r.index()].fetch_add(1, Relaxed);
    }

    /// Rejections for one reason.
    pub fn rejected(&self, r: Reason) -> u64 {
        self.rejected[r.index()].load(Relaxed)
    }

    /// Counts one fallback from reconciliation to the walk.
    pub fn fallback(&self, f: Fallback) {
        self.neg_fallbacks[f as usize].fetch_add(1, Relaxed);
    }

    /// Fallbacks for one reason.
    pub fn fallbacks(&self, f: Fallback) -> u64 {
        self.neg_fallbacks[f as usize].load(Relaxed)
    }

    /// Rejections over all reasons.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().map(|a| a.load(Relaxed)).sum()
    }

    /// Non-zero rejection counts by reason name.
    pub fn rejections(&self) -> Vec<(&'static str, u64)> {
        Reason::ALL
            .iter()
            .map(|r| (r.as_str(), self.rejected(*r)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// Shorthand for a relaxed increment.
#[inline]
pub fn inc(a: &AtomicU64) {
    a.fetch_add(1, Relaxed);
}
