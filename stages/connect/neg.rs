//! NIP-77 reconciliation: the archive learns what a relay holds without downloading it.
//!
//! For a time range, the connector builds a negentropy set of the (created_at, id) pairs the
//! archive holds *for this relay* (`events_relays`, one index-only range scan) and exchanges
//! fingerprints with the relay (`NEG-OPEN`/`NEG-MSG`). What the relay holds and the archive
//! lacks for it is then either
//! - a **known body** (`events` already holds the id, from another relay): recorded as a
//!   sighting of this relay at once, without a download, since an id is the SHA-256 of the
//!   signed event; or
//! - a **missing body**: fetched with `REQ {ids}` through the same verify → dedupe → batch →
//!   sink pipeline as every other event.
//!
//! Missing ids are brought level as the exchange goes (every [`DRAIN_AT`] of them), so a relay
//! holding millions of events the archive lacks costs no more memory than one holding a few.
//! A range whose set is too large for one exchange (the archive's side past [`ITEMS_CAP`], or
//! the relay's `NEG-ERR blocked`) is split in two by time. A relay
//! that does not answer, answers with an error, or answers garbage falls back to the walk,
//! and that is remembered for the process ([`RelayCtx::nip77`](crate::model::RelayCtx)).
//!
//! Connectors reconciling overlapping relays at the same time share an [`Archive`]: an id one
//! of them is fetching is not fetched by the others, which wait for its commit and record a
//! sighting instead, so eight relays holding the same events cost one download of each.

use super::{Connector, Fail, Session};
use crate::model::relay::{NIP77_NO, NIP77_UNKNOWN, NIP77_YES};
use crate::model::{now_secs, stats::inc, CursorState, Fallback, Reason};
use crate::relay::message::{self, RelayMsg};
use crate::sink::Pool;
use negentropy::{Id, Negentropy, NegentropyStorageVector};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most (created_at, id) pairs of the archive's side in one reconciliation (40 bytes each in
/// the negentropy set): a larger range is split by time.
pub(crate) const ITEMS_CAP: usize = 50_000;
/// Missing ids are looked up and fetched, mid-exchange, once this many have gathered.
pub(crate) const DRAIN_AT: usize = 5_000;
/// The frame size limit our side of negentropy keeps to (bytes before hex): a NEG-MSG is
/// then at most ~100 KB of text, under strfry's default 128 KiB payload limit.
const FRAME_LIMIT: u64 = 50_000;
/// Rounds after which a reconciliation that has not converged is abandoned as malformed
/// (an honest exchange of a 250,000-item range takes a handful).
const MAX_ROUNDS: u32 = 1_000;
/// How long the first NEG-OPEN of a relay may go unanswered before it is taken as "does not
/// speak NIP-77" (many relays ignore unknown messages silently).
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// The least a reconciliation reply is waited for, whatever the idle timeout: a relay
/// fingerprints up to a whole range before it answers, which can take longer than the gap
/// between two frames of a REQ reply on a loaded relay.
const NEG_REPLY_MIN: Duration = Duration::from_secs(10);
/// Reconciliations whose sets are held at once in the whole process (each up to
/// [`ITEMS_CAP`] items of 40 bytes, about 2 MiB): with hundreds of relays syncing, memory
/// stays a few tens of MiB whatever their size.
const RECONCILE_SLOTS: usize = 16;
/// Ids looked up in `events` per query.
const LOOKUP_CHUNK: usize = 1_000;
/// REQs by id in flight at once on one connection.
const FETCH_IN_FLIGHT: usize = 4;
/// How long an id another connector fetched may take to be committed before this one
/// fetches it itself (the other's events may have failed verification).
const CLAIM_GRACE: Duration = Duration::from_secs(5);
/// Poll period while waiting for another connector's fetch to be committed.
const CLAIM_POLL: Duration = Duration::from_millis(200);

/// Ids being fetched by some connector of this process, and those fetched recently.
#[derive(Default)]
struct InFlight {
    /// `None` while being fetched; `Some(t)` once the fetch was handed to the pipeline at `t`.
    ids: HashMap<[u8; 32], Option<Instant>>,
    /// Released ids in release order, to forget them after [`CLAIM_GRACE`].
    released: VecDeque<(Instant, [u8; 32])>,
}

impl InFlight {
    fn prune(&mut self, now: Instant) {
        while let Some(&(t, id)) = self.released.front() {
            if now.duration_since(t) < CLAIM_GRACE {
                break;
            }
            self.released.pop_front();
            if self.ids.get(&id) == Some(&Some(t)) {
                self.ids.remove(&id);
            }
        }
    }

    fn busy(&self, id: &[u8; 32], now: Instant) -> bool {
        match self.ids.get(id) {
            Some(None) => true,
            Some(Some(t)) => now.duration_since(*t) < CLAIM_GRACE,
            None => false,
        }
    }
}

/// The archive as reconciliation sees it: what it holds for a relay, which bodies it holds,
/// and which ids are being fetched by the connectors of this process.
pub struct Archive {
    pool: Pool,
    inflight: Mutex<InFlight>,
    slots: Arc<tokio::sync::Semaphore>,
}

impl Archive {
    /// An archive reader over `pool`, shared by every connector of a pipeline.
    pub fn new(pool: Pool) -> Arc<Archive> {
        Arc::new(Archive {
            pool,
            inflight: Mutex::new(InFlight::default()),
            slots: Arc::new(tokio::sync::Semaphore::new(RECONCILE_SLOTS)),
        })
    }

    fn inflight(&self) -> std::sync::MutexGuard<'_, InFlight> {
        // The map holds no invariant a panic could break half-way.
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The (created_at, id) pairs recorded for `relay` in [since, until], ascending, at most
    /// `cap + 1` (so a caller can tell the cap was reached).
    pub(crate) async fn relay_items(
        &self,
        relay: &str,
        since: i64,
        until: i64,
        kinds: Option<&[u16]>,
        cap: usize,
    ) -> Result<Vec<(i64, [u8; 32])>, String> {
        let c = self.pool.get().await.map_err(|e| e.to_string())?;
        let limit = (cap as i64).saturating_add(1);
        let rows = match kinds {
            // The index holds no kind: a kind-restricted run joins `events` (slower, rare).
            Some(k) => {
                let kinds: Vec<i32> = k.iter().map(|&k| i32::from(k)).collect();
                c.query(
                    "SELECT er.created_at, er.event_id FROM events_relays er \
                     JOIN events e ON e.id = er.event_id \
                     WHERE er.relay_url = $1 AND er.created_at BETWEEN $2 AND $3 \
                       AND e.kind = ANY($4) \
                     ORDER BY er.created_at, er.event_id LIMIT $5",
                    &[&relay, &since, &until, &kinds, &limit],
                )
                .await
            }
            None => {
                c.query(
                    "SELECT created_at, event_id FROM events_relays \
                     WHERE relay_url = $1 AND created_at BETWEEN $2 AND $3 \
                     ORDER BY created_at, event_id LIMIT $4",
                    &[&relay, &since, &until, &limit],
                )
                .await
            }
        }
        .map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let t: i64 = r.get(0);
            let id: &[u8] = r.get(1);
            if let Ok(id) = <[u8; 32]>::try_from(id) {
                out.push((t, id));
            }
        }
        Ok(out)
    }

    /// How many sightings of `relay` the archive holds with created_at in [since, until].
    pub(crate) async fn relay_count(
        &self,
        relay: &str,
        since: i64,
        until: i64,
        kinds: Option<&[u16]>,
    ) -> Result<u64, String> {
        let c = self.pool.get().await.map_err(|e| e.to_string())?;
        let row = match kinds {
            Some(k) => {
                let kinds: Vec<i32> = k.iter().map(|&k| i32::from(k)).collect();
                c.query_one(
                    "SELECT count(*) FROM events_relays er JOIN events e ON e.id = er.event_id \
                     WHERE er.relay_url = $1 AND er.created_at BETWEEN $2 AND $3 \
                       AND e.kind = ANY($4)",
                    &[&relay, &since, &until, &kinds],
                )
                .await
            }
            None => {
                c.query_one(
                    "SELECT count(*) FROM events_relays \
                     WHERE relay_url = $1 AND created_at BETWEEN $2 AND $3",
                    &[&relay, &since, &until],
                )
                .await
            }
        }
        .map_err(|e| e.to_string())?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }

    /// Records a sighting of `relay` for every id of `ids` whose body the archive holds;
    /// returns those ids and how many sightings were new.
    pub(crate) async fn record_known(
        &self,
        relay: &str,
        ids: &[[u8; 32]],
        seen_at: i64,
    ) -> Result<(Vec<[u8; 32]>, u64), String> {
        if ids.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let c = self.pool.get().await.map_err(|e| e.to_string())?;
        let list: Vec<&[u8]> = ids.iter().map(|i| &i[..]).collect();
        // Only ids present in `events` get a sighting: a relay's claim alone invents nothing.
        // A sighting written without created_at (by hand, before 012) gets it here.
        let rows = c
            .query(
                "WITH k AS (SELECT id, created_at FROM events WHERE id = ANY($1)), \
                 ins AS (INSERT INTO events_relays (event_id, relay_url, seen_at, created_at) \
                         SELECT id, $2, $3, created_at FROM k \
                         ON CONFLICT (event_id, relay_url) DO UPDATE \
                            SET created_at = EXCLUDED.created_at \
                          WHERE events_relays.created_at IS NULL \
                         RETURNING 1) \
                 SELECT id, (SELECT count(*) FROM ins) FROM k",
                &[&list, &relay, &seen_at],
            )
            .await
            .map_err(|e| e.to_string())?;
        let mut known = Vec::with_capacity(rows.len());
        let mut inserted = 0i64;
        for r in rows {
            let id: &[u8] = r.get(0);
            inserted = r.get(1);
            if let Ok(id) = <[u8; 32]>::try_from(id) {
                known.push(id);
            }
        }
        Ok((known, inserted.max(0) as u64))
    }

    /// Splits `ids` into those this caller now fetches and those another connector is
    /// fetching (or fetched moments ago).
    fn claim(&self, ids: &[[u8; 32]]) -> (Vec<[u8; 32]>, Vec<[u8; 32]>) {
        let now = Instant::now();
        let mut g = self.inflight();
        g.prune(now);
        let (mut mine, mut others) = (Vec::new(), Vec::new());
        for id in ids {
            if g.busy(id, now) {
                others.push(*id);
            } else {
                g.ids.insert(*id, None);
                mine.push(*id);
            }
        }
        (mine, others)
    }

    /// Marks a fetch as handed to the pipeline: others wait [`CLAIM_GRACE`] for its commit.
    fn release(&self, ids: &[[u8; 32]]) {
        let now = Instant::now();
        let mut g = self.inflight();
        for id in ids {
            g.ids.insert(*id, Some(now));
            g.released.push_back((now, *id));
        }
        g.prune(now);
    }

    fn any_busy(&self, ids: &[[u8; 32]]) -> bool {
        let now = Instant::now();
        let g = self.inflight();
        ids.iter().any(|id| g.busy(id, now))
    }
}

/// How one reconciliation of a range ended.
enum Range {
    /// Converged: the ids the relay holds that the archive lacks for it and were not yet
    /// brought level, and whether those already were completely.
    Done(Vec<[u8; 32]>, bool),
    /// Too many items for one round: split the range.
    TooMany,
    /// The relay does not speak NIP-77 (properly): use the walk.
    Fallback(Fallback, String),
}

/// A frame of a reconciliation, owned (the parsed value borrows the session's buffer).
enum NegIn {
    /// NEG-MSG for our subscription: its bytes, or `None` when not hex.
    Msg(Option<Vec<u8>>),
    Err(String),
    Closed(String),
    Notice(String),
    Skip,
}

/// One REQ by ids in flight.
struct IdReq {
    asked: HashSet<[u8; 32]>,
    epoch: u64,
    emitted: u64,
}

impl Connector {
    fn nip77(&self) -> u8 {
        self.relay.nip77.load(Relaxed)
    }

    fn fall_back(&self, why: Fallback, detail: &str) {
        self.relay.nip77.store(NIP77_NO, Relaxed);
        self.relay.stats.fallback(why);
        tracing::info!(relay = %self.relay.url, reason = why.as_str(), detail, "no NIP-77 reconciliation; walking");
    }

    /// Whether this pass reconciles before it walks.
    pub(super) fn reconciles(&self) -> bool {
        self.archive.is_some()
            && self.cfg.reconcile
            && self.cfg.use_cursor
            && self.nip77() != NIP77_NO
    }

    /// Reconciles [since, top] with the relay and brings the archive level with it: missing
    /// bodies go to the pipeline, known ones become sightings. Returns whether the whole
    /// range was reconciled (the cursor may then claim `top`); `false` means the relay fell
    /// back to the walk, or a range could not be reconciled.
    pub(super) async fn reconcile(
        &mut self,
        sess: &mut Session,
        since: i64,
        top: i64,
    ) -> Result<bool, Fail> {
        let Some(archive) = self.archive.clone() else {
            return Ok(false);
        };
        let url = self.relay.url.to_string();
        let kinds = self.cfg.kinds.clone();
        let mut complete = true;
        let mut ranges = vec![(since, top)];
        while let Some((lo, mut hi)) = ranges.pop() {
            if lo > hi {
                continue;
            }
            // The set and the exchange hold a slot; fetching the missing bodies does not.
            let slot = tokio::select! {
                _ = self.stop.changed() => return Err(Fail::Stop),
                p = archive.slots.clone().acquire_owned() => p,
            };
            if self.stopped() {
                return Err(Fail::Stop);
            }
            let mut items = match archive
                .relay_items(&url, lo, hi, kinds.as_deref(), ITEMS_CAP)
                .await
            {
                Ok(v) => v,
                Err(e) => {
                    // Not the relay's fault: walk this pass, try again next pass.
                    self.relay.stats.fallback(Fallback::Archive);
                    tracing::warn!(relay = %url, error = %e, "cannot read the archive for reconciliation; walking");
                    return Ok(false);
                }
            };
            if items.len() > ITEMS_CAP {
                // Cut where the set is full, at a second boundary: the rows read are used,
                // not read again for two halves.
                let t = items[ITEMS_CAP].0;
                let k = items.partition_point(|(c, _)| *c < t);
                if k == 0 {
                    drop(slot);
                    tracing::warn!(relay = %url, second = t, "more events in one second than one reconciliation holds; that second is left to the walk");
                    complete = false;
                    ranges.push((t.saturating_add(1), hi));
                    ranges.push((lo, t - 1));
                    continue;
                }
                items.truncate(k);
                ranges.push((t, hi));
                hi = t - 1;
            }
            let outcome = self.reconcile_range(sess, &archive, lo, hi, items).await?;
            drop(slot);
            match outcome {
                Range::Done(missing, level) => {
                    if !level || !self.bring_level(sess, &archive, missing).await? {
                        complete = false;
                    }
                }
                Range::TooMany if lo < hi => {
                    let mid = lo + (hi - lo) / 2;
                    ranges.push((mid + 1, hi));
                    ranges.push((lo, mid));
                }
                Range::TooMany => {
                    tracing::warn!(relay = %url, second = lo, "more events in one second than one reconciliation holds; that second is left to the walk");
                    complete = false;
                }
                Range::Fallback(why, detail) => {
                    self.fall_back(why, &detail);
                    return Ok(false);
                }
            }
        }
        Ok(complete)
    }

    /// Moves the cursor to `top` once everything reconciled so far is committed (the claim
    /// window closes after the fetch windows, and windows complete in order).
    pub(super) fn claim_reconciled(&mut self, pos: &mut CursorState, top: i64) {
        let top = top.max(self.claimed.unwrap_or(i64::MIN));
        *pos = match pos.pending {
            // (until, end] was walked before; below `top` is reconciled now.
            Some(p) if top < p.until => CursorState {
                synced_until: pos.synced_until.max(Some(top)),
                pending: Some(p),
            },
            Some(p) => CursorState {
                synced_until: Some(top.max(p.end)),
                pending: None,
            },
            None => CursorState {
                synced_until: pos.synced_until.max(Some(top)),
                pending: None,
            },
        };
        self.claim_cap = Some(self.claim_cap.unwrap_or(i64::MIN).max(top));
        let after = self.claimable(*pos);
        let epoch = self.relay.progress.open();
        self.close_window(epoch, 0, Some(after));
    }

    /// One negentropy exchange over [lo, hi] against `items` (the archive's side).
    async fn reconcile_range(
        &mut self,
        sess: &mut Session,
        archive: &Archive,
        lo: i64,
        hi: i64,
        items: Vec<(i64, [u8; 32])>,
    ) -> Result<Range, Fail> {
        let mut storage = NegentropyStorageVector::with_capacity(items.len());
        for (t, id) in items {
            // created_at is never negative in the archive (the parser refuses it).
            let _ = storage.insert(t.max(0) as u64, Id::from_byte_array(id));
        }
        if storage.seal().is_err() {
            return Ok(Range::Fallback(Fallback::Malformed, "cannot seal".into()));
        }
        let mut neg = match Negentropy::owned(storage, FRAME_LIMIT) {
            Ok(n) => n,
            Err(e) => return Ok(Range::Fallback(Fallback::Malformed, e.to_string())),
        };
        let init = match neg.initiate() {
            Ok(m) => m,
            Err(e) => return Ok(Range::Fallback(Fallback::Malformed, e.to_string())),
        };
        sess.subs += 1;
        let sub = format!("neg{}", sess.subs);
        let filter = self.filter_json(lo, Some(hi), None);
        let open = format!(
            "[\"NEG-OPEN\",\"{sub}\",{filter},\"{}\"]",
            hex::encode(&init)
        );
        let probing = self.nip77() == NIP77_UNKNOWN;
        if let Err(e) = self.send_neg(sess, open).await {
            return Err(self.lost(probing, e));
        }
        let reply_wait = self.cfg.idle_timeout.max(NEG_REPLY_MIN);
        let first_wait = if probing { PROBE_TIMEOUT } else { reply_wait };
        let mut reply_by = tokio::time::Instant::now() + first_wait;
        let mut answered = false;
        let mut level = true;
        let mut rounds = 1u32;
        let (mut have, mut need): (Vec<Id>, Vec<Id>) = (Vec::new(), Vec::new());
        let relay = self.relay.clone();
        let stats = &relay.stats;
        loop {
            let now = tokio::time::Instant::now();
            let wait_until = match self.wait_limit(now, reply_by) {
                Ok(w) => w,
                Err(Fail::NoProgress) => {
                    return Err(self.stalled(answered, probing, &sub, sess).await)
                }
                Err(e) => return Err(e),
            };
            let next = tokio::select! {
                _ = self.stop.changed() => return Err(Fail::Stop),
                r = tokio::time::timeout_at(wait_until, futures_util::StreamExt::next(&mut sess.ws)) => r,
            };
            let msg = match next {
                Err(_) => {
                    if self
                        .deadline
                        .is_some_and(|d| tokio::time::Instant::now() >= d)
                    {
                        return Err(Fail::Deadline);
                    }
                    if !answered && probing {
                        return Ok(self
                            .abandon(sess, &sub, Fallback::Silent, "no answer to NEG-OPEN")
                            .await);
                    }
                    return Err(self.stalled(answered, probing, &sub, sess).await);
                }
                Ok(None) => {
                    return Err(
                        self.lost(probing && !answered, Fail::Io("connection closed".into()))
                    )
                }
                Ok(Some(Err(e))) => {
                    return Err(self.lost(probing && !answered, Fail::Io(e.to_string())))
                }
                Ok(Some(Ok(m))) => m,
            };
            let data = match self.payload(&msg) {
                Ok(Some(d)) => d,
                Ok(None) => continue,
                Err(e) => return Err(self.lost(probing && !answered, e)),
            };
            let v = match message::decode(data, &mut sess.buf, &mut sess.buffers) {
                Ok(v) => v,
                Err(reason) => {
                    stats.reject(reason);
                    continue;
                }
            };
            // Owned first: the parsed value borrows the session's buffer.
            let got = match message::parse(&v) {
                Some(RelayMsg::NegMsg(s, hexmsg)) if s == sub => {
                    NegIn::Msg(hex::decode(hexmsg).ok())
                }
                Some(RelayMsg::NegErr(s, reason)) if s == sub => NegIn::Err(reason.to_string()),
                Some(RelayMsg::Closed(s, m)) if s == sub => NegIn::Closed(m.to_string()),
                Some(RelayMsg::Notice(m)) => NegIn::Notice(m.to_string()),
                Some(RelayMsg::Event(..)) => {
                    inc(&stats.events_received);
                    stats.reject(Reason::Unrequested);
                    NegIn::Skip
                }
                None => {
                    stats.reject(Reason::Malformed);
                    NegIn::Skip
                }
                _ => NegIn::Skip,
            };
            drop(v);
            match got {
                NegIn::Msg(bytes) => {
                    stats
                        .neg_bytes_received
                        .fetch_add(data.len() as u64, Relaxed);
                    answered = true;
                    let Some(bytes) = bytes else {
                        return Ok(self
                            .abandon(sess, &sub, Fallback::Malformed, "NEG-MSG is not hex")
                            .await);
                    };
                    let out = match neg.reconcile_with_ids(&bytes, &mut have, &mut need) {
                        Ok(o) => o,
                        Err(e) => {
                            let why = format!("NEG-MSG: {e}");
                            return Ok(self.abandon(sess, &sub, Fallback::Malformed, &why).await);
                        }
                    };
                    self.relay.nip77.store(NIP77_YES, Relaxed);
                    stats.neg_extra.fetch_add(have.len() as u64, Relaxed);
                    have.clear();
                    match out {
                        None => {
                            self.neg_close(sess, &sub).await;
                            stats.neg_missing.fetch_add(need.len() as u64, Relaxed);
                            return Ok(Range::Done(
                                need.into_iter().map(|i| i.to_bytes()).collect(),
                                level,
                            ));
                        }
                        Some(m) => {
                            if need.len() >= DRAIN_AT {
                                // Brought level now, before the next round: the relay keeps
                                // its side of the exchange open meanwhile.
                                let ids: Vec<[u8; 32]> =
                                    need.drain(..).map(|i| i.to_bytes()).collect();
                                stats.neg_missing.fetch_add(ids.len() as u64, Relaxed);
                                if !self.bring_level(sess, archive, ids).await? {
                                    level = false;
                                }
                            }
                            rounds += 1;
                            if rounds > MAX_ROUNDS {
                                return Ok(self
                                    .abandon(sess, &sub, Fallback::Malformed, "does not converge")
                                    .await);
                            }
                            let frame = format!("[\"NEG-MSG\",\"{sub}\",\"{}\"]", hex::encode(&m));
                            self.send_neg(sess, frame).await?;
                            reply_by = tokio::time::Instant::now() + reply_wait;
                        }
                    }
                }
                NegIn::Err(reason) => {
                    stats
                        .neg_bytes_received
                        .fetch_add(data.len() as u64, Relaxed);
                    if reason.starts_with("blocked") {
                        self.relay.nip77.store(NIP77_YES, Relaxed);
                        return Ok(Range::TooMany);
                    }
                    return Ok(Range::Fallback(
                        Fallback::Unsupported,
                        format!("NEG-ERR: {reason}"),
                    ));
                }
                NegIn::Closed(m) => {
                    inc(&stats.closed);
                    return Ok(Range::Fallback(
                        Fallback::Unsupported,
                        format!("CLOSED: {m}"),
                    ));
                }
                NegIn::Notice(m) => {
                    inc(&stats.notices);
                    // A relay without NIP-77 says so with a NOTICE ("unknown message"); once
                    // it has answered a reconciliation, a NOTICE is only a notice.
                    if probing && !answered {
                        return Ok(Range::Fallback(
                            Fallback::Unsupported,
                            format!("NOTICE: {m}"),
                        ));
                    }
                }
                NegIn::Skip => {}
            }
        }
    }

    /// A connection lost on the first NEG-OPEN: some relays hang up on a message they do not
    /// know, so the next connection walks instead of probing again forever.
    fn lost(&self, on_probe: bool, e: Fail) -> Fail {
        if on_probe {
            self.fall_back(
                Fallback::Unsupported,
                &format!("{} on NEG-OPEN", e.describe()),
            );
        }
        e
    }

    /// A relay that answered NEG-OPEN stopped answering: remembered, so the next connection
    /// walks instead (this one may hold half an exchange).
    async fn stalled(&self, answered: bool, probing: bool, sub: &str, sess: &mut Session) -> Fail {
        if !answered && probing {
            self.fall_back(Fallback::Silent, "no answer to NEG-OPEN");
        } else {
            self.fall_back(Fallback::Stalled, "stopped answering NEG-MSG");
        }
        self.neg_close(sess, sub).await;
        Fail::Idle
    }

    /// Ends an exchange that went wrong and reports the fallback.
    async fn abandon(&self, sess: &mut Session, sub: &str, why: Fallback, detail: &str) -> Range {
        self.neg_close(sess, sub).await;
        Range::Fallback(why, detail.to_string())
    }

    async fn neg_close(&self, sess: &mut Session, sub: &str) {
        let _ = self.send(sess, format!("[\"NEG-CLOSE\",\"{sub}\"]")).await;
    }

    async fn send_neg(&self, sess: &mut Session, frame: String) -> Result<(), Fail> {
        let stats = &self.relay.stats;
        inc(&stats.neg_rounds);
        stats.neg_bytes_sent.fetch_add(frame.len() as u64, Relaxed);
        self.send(sess, frame).await
    }

    /// Known bodies become sightings; missing ones are fetched (once per process: an id
    /// another connector is fetching is waited for instead). Returns whether every missing
    /// id is now archived or on its way (a relay that claims ids it does not serve leaves
    /// the range incomplete, and the cursor then does not claim it).
    async fn bring_level(
        &mut self,
        sess: &mut Session,
        archive: &Archive,
        missing: Vec<[u8; 32]>,
    ) -> Result<bool, Fail> {
        if missing.is_empty() {
            return Ok(true);
        }
        let url = self.relay.url.to_string();
        let mut deferred: Vec<[u8; 32]> = Vec::new();
        let mut unserved: Vec<[u8; 32]> = Vec::new();
        let per_req = self.cfg.limit.clamp(1, 500);
        let mut queue: Vec<[u8; 32]> = Vec::new();
        if self.cfg.fetch_known_bodies {
            // Every sighting is of a body this relay served: no shortcut through the archive
            // or through another connector's download.
            for batch in missing.chunks(per_req * FETCH_IN_FLIGHT) {
                unserved.extend(self.fetch_ids(sess, batch, per_req).await?);
            }
            return self.finish_unserved(sess, archive, unserved, per_req).await;
        }
        for chunk in missing.chunks(LOOKUP_CHUNK) {
            let rest = self.record_known(archive, &url, chunk).await?;
            let (mine, others) = archive.claim(&rest);
            deferred.extend(others);
            queue.extend(mine);
            if queue.len() >= per_req * FETCH_IN_FLIGHT {
                let batch = std::mem::take(&mut queue);
                unserved.extend(self.fetch_claimed(sess, archive, &batch, per_req).await?);
            }
        }
        if !queue.is_empty() {
            unserved.extend(self.fetch_claimed(sess, archive, &queue, per_req).await?);
        }
        // Ids another connector was fetching: recorded once committed, fetched here if that
        // fetch came to nothing.
        let give_up_at = tokio::time::Instant::now() + self.cfg.idle_timeout.max(CLAIM_GRACE * 2);
        while !deferred.is_empty() {
            let still_missing: HashSet<[u8; 32]> = self
                .record_known(archive, &url, &deferred)
                .await?
                .into_iter()
                .collect();
            deferred.retain(|id| still_missing.contains(id));
            if deferred.is_empty() {
                break;
            }
            if !archive.any_busy(&deferred) || tokio::time::Instant::now() >= give_up_at {
                let batch = std::mem::take(&mut deferred);
                unserved.extend(self.fetch_claimed(sess, archive, &batch, per_req).await?);
                break;
            }
            if self.sleep_or_stop(CLAIM_POLL).await {
                return Err(Fail::Stop);
            }
        }
        self.finish_unserved(sess, archive, unserved, per_req).await
    }

    /// Asks once more for the ids a relay did not serve, a few at a time (for relays that cap
    /// how many ids a REQ returns); returns whether none is left unserved.
    async fn finish_unserved(
        &mut self,
        sess: &mut Session,
        archive: &Archive,
        mut unserved: Vec<[u8; 32]>,
        per_req: usize,
    ) -> Result<bool, Fail> {
        let url = self.relay.url.to_string();
        if !unserved.is_empty() {
            let per_req = per_req.min(50);
            unserved = self
                .fetch_claimed(sess, archive, &unserved, per_req)
                .await?;
            self.relay
                .stats
                .ids_unserved
                .fetch_add(unserved.len() as u64, Relaxed);
            if !unserved.is_empty() {
                tracing::debug!(relay = %url, ids = unserved.len(), "relay claimed ids it does not serve");
            }
        }
        Ok(unserved.is_empty())
    }

    /// Claims `ids` (another connector may have taken some meanwhile: fetched anyway, the
    /// seen gate makes that cheap), fetches them, and releases the claim; returns the ids
    /// the relay did not serve.
    async fn fetch_claimed(
        &mut self,
        sess: &mut Session,
        archive: &Archive,
        ids: &[[u8; 32]],
        per_req: usize,
    ) -> Result<Vec<[u8; 32]>, Fail> {
        let (mine, _) = archive.claim(ids);
        let r = self.fetch_ids(sess, ids, per_req).await;
        archive.release(&mine);
        r
    }

    /// Records the known ones among `ids` as sightings; returns the rest (bodies to fetch).
    async fn record_known(
        &self,
        archive: &Archive,
        url: &str,
        ids: &[[u8; 32]],
    ) -> Result<Vec<[u8; 32]>, Fail> {
        let (known, inserted) = archive
            .record_known(url, ids, now_secs())
            .await
            .map_err(|e| Fail::Io(format!("archive: {e}")))?;
        self.relay
            .stats
            .sightings_without_body
            .fetch_add(inserted, Relaxed);
        let known: HashSet<[u8; 32]> = known.into_iter().collect();
        Ok(ids
            .iter()
            .filter(|i| !known.contains(*i))
            .copied()
            .collect())
    }

    /// Fetches `ids` with `REQ {ids}` (`per_req` ids each, [`FETCH_IN_FLIGHT`] at once); the
    /// events go through the pipeline. An event the relay sends that was not asked for is
    /// rejected; an id it claimed and does not serve is counted.
    async fn fetch_ids(
        &mut self,
        sess: &mut Session,
        ids: &[[u8; 32]],
        per_req: usize,
    ) -> Result<Vec<[u8; 32]>, Fail> {
        let mut queue = ids.chunks(per_req);
        let mut open: HashMap<String, IdReq> = HashMap::new();
        let mut unserved = Vec::new();
        let res = self
            .fetch_loop(sess, &mut queue, &mut open, &mut unserved)
            .await;
        // Whatever was counted as emitted must reach verify, or its window never completes.
        let flushed = self.flush(sess).await;
        for (_, r) in open.drain() {
            self.close_window(r.epoch, r.emitted, None);
        }
        res.and(flushed).map(|()| unserved)
    }

    async fn fetch_loop(
        &mut self,
        sess: &mut Session,
        queue: &mut std::slice::Chunks<'_, [u8; 32]>,
        open: &mut HashMap<String, IdReq>,
        unserved: &mut Vec<[u8; 32]>,
    ) -> Result<(), Fail> {
        let mut progress_by = tokio::time::Instant::now() + self.cfg.idle_timeout;
        loop {
            while open.len() < FETCH_IN_FLIGHT {
                let Some(chunk) = queue.next() else { break };
                sess.subs += 1;
                let sub = format!("bb{}", sess.subs);
                let list: Vec<String> = chunk
                    .iter()
                    .map(|i| format!("\"{}\"", hex::encode(i)))
                    .collect();
                let mut filter = format!("{{\"ids\":[{}]", list.join(","));
                if let Some(k) = &self.cfg.kinds {
                    let ks: Vec<String> = k.iter().map(|k| k.to_string()).collect();
                    filter.push_str(&format!(",\"kinds\":[{}]", ks.join(",")));
                }
                filter.push('}');
                let epoch = self.relay.progress.open();
                open.insert(
                    sub.clone(),
                    IdReq {
                        asked: chunk.iter().copied().collect(),
                        epoch,
                        emitted: 0,
                    },
                );
                inc(&self.relay.stats.reqs);
                self.send(sess, format!("[\"REQ\",\"{sub}\",{filter}]"))
                    .await?;
            }
            if open.is_empty() {
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            let wait_until = self.wait_limit(now, progress_by)?;
            let next = match Self::ready_frame(sess) {
                Some(m) => Ok(m),
                None => {
                    self.flush(sess).await?;
                    tokio::select! {
                        _ = self.stop.changed() => return Err(Fail::Stop),
                        r = tokio::time::timeout_at(wait_until, futures_util::StreamExt::next(&mut sess.ws)) => r,
                    }
                }
            };
            let msg = match next {
                Err(_) => return Err(self.wait_failure(progress_by, false)),
                Ok(None) => return Err(Fail::Io("connection closed".into())),
                Ok(Some(Err(e))) => {
                    if matches!(e, tokio_tungstenite::tungstenite::Error::Capacity(_)) {
                        self.relay.stats.reject(Reason::Oversized);
                    }
                    return Err(Fail::Io(e.to_string()));
                }
                Ok(Some(Ok(m))) => m,
            };
            let Some(data) = self.payload(&msg)? else {
                continue;
            };
            let stats = &self.relay.stats;
            if data.len() > self.cfg.max_event_bytes {
                stats.reject(Reason::Oversized);
                continue;
            }
            let v = match message::decode(data, &mut sess.buf, &mut sess.buffers) {
                Ok(v) => v,
                Err(reason) => {
                    stats.reject(reason);
                    continue;
                }
            };
            let Some(parsed) = message::parse(&v) else {
                stats.reject(Reason::Malformed);
                continue;
            };
            // Owned first: the parsed value borrows the session's buffer.
            enum Got {
                Event(u64, crate::model::Event),
                Done(String, Option<String>),
                Skip,
            }
            let got = match parsed {
                RelayMsg::Event(s, ev) => {
                    inc(&stats.events_received);
                    match (open.get_mut(s), ev) {
                        (None, _) => {
                            stats.reject(Reason::Unrequested);
                            Got::Skip
                        }
                        (Some(_), Err(e)) => {
                            stats.reject(e.into());
                            Got::Skip
                        }
                        // Only the ids asked, each once: a relay cannot slip in other events,
                        // nor repeat one to stall the request.
                        (Some(req), Ok(ev)) => {
                            if req.asked.remove(&ev.id) {
                                req.emitted += 1;
                                Got::Event(req.epoch, ev.to_owned_event(&mut sess.scratch))
                            } else {
                                stats.reject(Reason::Unrequested);
                                Got::Skip
                            }
                        }
                    }
                }
                RelayMsg::Eose(s) if open.contains_key(s) => Got::Done(s.to_string(), None),
                RelayMsg::Closed(s, m) if open.contains_key(s) => {
                    Got::Done(s.to_string(), Some(m.to_string()))
                }
                RelayMsg::Notice(_) => {
                    inc(&stats.notices);
                    Got::Skip
                }
                _ => Got::Skip,
            };
            drop(v);
            match got {
                Got::Event(epoch, ev) => {
                    inc(&self.relay.stats.bodies_fetched);
                    progress_by = tokio::time::Instant::now() + self.cfg.idle_timeout;
                    self.emit(sess, ev, epoch).await?;
                }
                Got::Done(sub, closed) => {
                    if let Some(r) = open.remove(&sub) {
                        unserved.extend(r.asked.iter().copied());
                        self.flush(sess).await?;
                        self.close_window(r.epoch, r.emitted, None);
                    }
                    progress_by = tokio::time::Instant::now() + self.cfg.idle_timeout;
                    match closed {
                        Some(m) => {
                            inc(&self.relay.stats.closed);
                            if m.starts_with("rate-limited") || m.starts_with("auth-required") {
                                return Err(Self::closed_fail(m));
                            }
                        }
                        None => {
                            let _ = self.send(sess, format!("[\"CLOSE\",\"{sub}\"]")).await;
                        }
                    }
                }
                Got::Skip => {}
            }
        }
    }
}
