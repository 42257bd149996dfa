//! Completeness for relays without NIP-77: find the already archived ranges a relay gained
//! events in since they were walked, and walk those again without moving the cursor.
//!
//! Where the relay answers exact NIP-45 `COUNT`s, its count over [since, cursor] is compared
//! with the archive's sightings of it (one index-only count); a window where the relay holds
//! more is halved until the windows that differ are small, and only those are re-walked.
//! Otherwise a recent horizon (`sync.recheck_horizon`) below the cursor is re-walked each pass.
//! Either way the bytes are counted apart from the first walk.

use super::neg::PROBE_TIMEOUT;
use super::{Connector, Fail, Session};
use crate::model::relay::{NIP77_NO, NIP77_UNKNOWN, NIP77_YES};
use crate::model::{stats::inc, CursorState};
use crate::relay::message::{self, RelayMsg};
use std::sync::atomic::Ordering::Relaxed;

/// Most COUNT requests one pass spends narrowing down windows; past it, the windows left are
/// re-walked whole.
const MAX_COUNTS: u32 = 256;
/// A differing window this narrow (seconds) is re-walked rather than halved again.
const MIN_WINDOW: i64 = 3_600;

impl Connector {
    /// Re-walks, once a run, what the relay gained below the cursor the run started from
    /// (relays that were not reconciled): by COUNT where the relay answers it, else the
    /// recent horizon. The cursor does not move.
    pub(super) async fn recheck(
        &mut self,
        sess: &mut Session,
        limit: &mut usize,
        failures: &mut u32,
    ) -> Result<(), Fail> {
        let Some(top) = self.recheck_top else {
            return Ok(());
        };
        let before = self.relay.stats.bytes_received.load(Relaxed);
        let r = match self.windows_by_count(sess, top, *limit).await {
            Ok(Some(windows)) => {
                let mut r = Ok(());
                for (lo, hi) in windows {
                    inc(&self.relay.stats.recheck_windows);
                    r = self.rewalk(sess, lo, hi, limit, failures).await;
                    if r.is_err() {
                        break;
                    }
                }
                r
            }
            Ok(None) => {
                let lo = self
                    .cfg
                    .floor
                    .max(top.saturating_sub(self.cfg.recheck_horizon));
                self.rewalk(sess, lo, top, limit, failures).await
            }
            Err(e) => Err(e),
        };
        let spent = self
            .relay
            .stats
            .bytes_received
            .load(Relaxed)
            .saturating_sub(before);
        self.relay.stats.recheck_bytes.fetch_add(spent, Relaxed);
        if r.is_ok() {
            self.recheck_top = None;
        }
        r
    }

    /// Walks [lo, hi] again; its windows move no cursor.
    async fn rewalk(
        &mut self,
        sess: &mut Session,
        lo: i64,
        hi: i64,
        limit: &mut usize,
        failures: &mut u32,
    ) -> Result<(), Fail> {
        if lo > hi || self.cfg.recheck_horizon <= 0 {
            return Ok(());
        }
        let mut scratch = CursorState {
            synced_until: Some(lo - 1),
            pending: None,
        };
        self.claiming = false;
        let r = self
            .walk(sess, &mut scratch, lo, hi, hi, limit, failures)
            .await;
        self.claiming = true;
        r
    }

    /// The windows of [floor, top] where the relay's COUNT exceeds the archive's sightings of
    /// it, or `None` when the relay does not answer exact COUNTs (or there is no archive).
    async fn windows_by_count(
        &mut self,
        sess: &mut Session,
        top: i64,
        limit: usize,
    ) -> Result<Option<Vec<(i64, i64)>>, Fail> {
        let Some(archive) = self.archive.clone() else {
            return Ok(None);
        };
        if self.relay.nip45.load(Relaxed) == NIP77_NO || self.cfg.recheck_horizon <= 0 {
            return Ok(None);
        }
        let url = self.relay.url.to_string();
        let kinds = self.cfg.kinds.clone();
        let mut out = Vec::new();
        let mut spent = 0u32;
        let mut stack = vec![(self.cfg.floor, top)];
        while let Some((lo, hi)) = stack.pop() {
            if lo > hi {
                continue;
            }
            if spent >= MAX_COUNTS {
                out.push((lo, hi));
                continue;
            }
            spent += 1;
            let Some(theirs) = self.count(sess, lo, hi).await? else {
                return Ok(None);
            };
            let ours = match archive.relay_count(&url, lo, hi, kinds.as_deref()).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(relay = %url, error = %e, "cannot count the archive; re-walking the horizon");
                    return Ok(None);
                }
            };
            // Fewer on the relay: deleted or expired events, nothing to fetch.
            if theirs <= ours {
                continue;
            }
            if hi - lo <= MIN_WINDOW || theirs <= 2 * limit as u64 {
                out.push((lo, hi));
            } else {
                let mid = lo + (hi - lo) / 2;
                stack.push((mid + 1, hi));
                stack.push((lo, mid));
            }
        }
        Ok(Some(out))
    }

    /// One NIP-45 COUNT over [lo, hi]; `None` when the relay does not answer an exact count
    /// (remembered for the process).
    async fn count(&mut self, sess: &mut Session, lo: i64, hi: i64) -> Result<Option<u64>, Fail> {
        let probing = self.relay.nip45.load(Relaxed) == NIP77_UNKNOWN;
        sess.subs += 1;
        let sub = format!("cnt{}", sess.subs);
        let filter = self.filter_json(lo, Some(hi), None);
        inc(&self.relay.stats.count_queries);
        self.send(sess, format!("[\"COUNT\",\"{sub}\",{filter}]"))
            .await?;
        let wait = if probing {
            self.cfg.idle_timeout.min(PROBE_TIMEOUT)
        } else {
            self.cfg.idle_timeout
        };
        let answer_by = tokio::time::Instant::now() + wait;
        let unsupported = |c: &Connector| {
            c.relay.nip45.store(NIP77_NO, Relaxed);
            Ok(None)
        };
        loop {
            let wait_until = match self.wait_limit(tokio::time::Instant::now(), answer_by) {
                Ok(w) => w,
                Err(Fail::NoProgress) => return unsupported(self),
                Err(e) => return Err(e),
            };
            let next = tokio::select! {
                _ = self.stop.changed() => return Err(Fail::Stop),
                r = tokio::time::timeout_at(wait_until, futures_util::StreamExt::next(&mut sess.ws)) => r,
            };
            let msg = match next {
                Err(_) => return unsupported(self),
                Ok(None) => return Err(Fail::Io("connection closed".into())),
                Ok(Some(Err(e))) => return Err(Fail::Io(e.to_string())),
                Ok(Some(Ok(m))) => m,
            };
            let Some(data) = self.payload(&msg)? else {
                continue;
            };
            let stats = &self.relay.stats;
            let v = match message::decode(data, &mut sess.buf, &mut sess.buffers) {
                Ok(v) => v,
                Err(reason) => {
                    stats.reject(reason);
                    continue;
                }
            };
            match message::parse(&v) {
                Some(RelayMsg::Count(s, n, approximate)) if s == sub => {
                    return match n {
                        Some(n) if !approximate => {
                            self.relay.nip45.store(NIP77_YES, Relaxed);
                            Ok(Some(n))
                        }
                        _ => unsupported(self),
                    };
                }
                Some(RelayMsg::Closed(s, _)) if s == sub => {
                    inc(&stats.closed);
                    return unsupported(self);
                }
                Some(RelayMsg::Notice(_)) => {
                    inc(&stats.notices);
                    if probing {
                        return unsupported(self);
                    }
                }
                _ => {}
            }
        }
    }
}
