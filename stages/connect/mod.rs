//! connect: one task per relay. Backfills by time windows with `REQ {since, until, limit}`,
//! walking down from the newest second so that a compliant relay is read once, then
//! optionally stays subscribed for live events. Emits [`RawEvent`]s on a bounded channel and
//! records, per window, the cursor state that holds once the window's events are committed.
//!
//! The connector parses each frame once (simd-json): it needs `created_at` and `id` of every
//! event to steer the walk, and the owned event it builds is what verify checks, so nothing
//! is parsed twice.

mod neg;
mod recheck;

use crate::model::{
    now_secs, progress::Pending, stats::inc, CursorState, RawEvent, Reason, Relay, Ticket, CHUNK,
};
use crate::relay::message::{self, RelayMsg};
use crate::relay::{transport, TransportConfig};
use futures_util::{FutureExt, SinkExt, StreamExt};
pub use neg::Archive;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// Longest wait for a polite close: a relay that stopped reading gets no more.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How one relay is synced (the engine resolves per-network and per-relay overrides).
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// `limit` asked in each REQ.
    pub limit: usize,
    /// Oldest `created_at` of interest.
    pub floor: i64,
    /// Fixed upper bound; `None` means "now" (and the persisted cursor is used).
    pub until: Option<i64>,
    /// Read and advance the persisted cursor (off for an explicit `--until` range).
    pub use_cursor: bool,
    /// Only these kinds (None = all).
    pub kinds: Option<Vec<u16>>,
    /// Stay subscribed for new events after the backfill.
    pub live: bool,
    /// TCP + TLS + WebSocket handshake budget.
    pub connect_timeout: Duration,
    /// Longest silence while waiting for a reply before the relay is considered hung.
    pub idle_timeout: Duration,
    /// Budget for the backfill of one run against this relay, enforced inside the connection
    /// (None = unbounded). The live phase that follows has no end by design.
    pub relay_timeout: Option<Duration>,
    /// Frames larger than this are rejected as oversized (the connection stays up).
    pub max_event_bytes: usize,
    /// First reconnect delay; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Consecutive failures before giving up on the relay for this run.
    pub max_failures: u32,
    /// In live mode, how often the cursor is checkpointed.
    pub live_checkpoint: Duration,
    /// How late an event may reach a relay and still be archived by the next pass or the live
    /// subscription: a walk to "now" claims at most `now - live_lag` in the cursor, live
    /// checkpoints stay this far behind, and the live subscription starts this far below the
    /// walk's top (the overlap is absorbed by the seen-id gate and the database).
    pub live_lag: i64,
    /// Keep-alive ping period in live mode.
    pub ping_interval: Duration,
    /// Reconcile with NIP-77 before walking, where the relay speaks it (needs an
    /// [`Archive`]): events a relay received late, dated inside an archived range, are found.
    pub reconcile: bool,
    /// Download bodies the archive already holds from other relays anyway (off: such ids
    /// become sightings without a download).
    pub fetch_known_bodies: bool,
    /// For relays without NIP-77: each pass walks again this many seconds below the cursor,
    /// uncounted in the cursor, to catch events that arrived late (0 = off).
    pub recheck_horizon: i64,
    /// Socket limits and proxy.
    pub transport: TransportConfig,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            limit: 500,
            floor: 0,
            until: None,
            use_cursor: true,
            kinds: None,
            live: false,
            connect_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(30),
            relay_timeout: None,
            max_event_bytes: 512 << 10,
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(300),
            max_failures: 5,
            live_checkpoint: Duration::from_secs(60),
            live_lag: 60,
            ping_interval: Duration::from_secs(30),
            reconcile: true,
            fetch_known_bodies: false,
            recheck_horizon: 86_400,
            transport: TransportConfig::default(),
        }
    }
}

/// How a connector run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Backfilled up to the target (and, in live mode, only on stop).
    Synced,
    /// Stopped by shutdown.
    Cancelled,
    /// Too many failures, a timeout, or a relay we cannot page through.
    GaveUp(GiveUpReason),
}

/// Why a connector gave up on its relay for this run. The text is what the sync report and the
/// logs show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GiveUpReason {
    /// The run's `relay_timeout` passed.
    #[error("relay timeout {0:?}")]
    RelayTimeout(Duration),
    /// `max_failures` connection attempts in a row failed; the last one's error.
    #[error("{0}")]
    Connect(String),
    /// `max_failures` sessions in a row failed; the last one's failure.
    #[error("{0}")]
    Failing(String),
    /// The relay refused the REQ with `CLOSED auth-required:` (NIP-42): retrying cannot help.
    #[error("auth-required: {0}")]
    AuthRequired(String),
    /// The relay answers with events newer than `until`, so it cannot be paged through.
    #[error("relay ignores `until` (answers with newer events than asked)")]
    IgnoresUntil,
    /// The connector's task panicked (set by whoever joins it).
    #[error("connector panicked")]
    Panicked,
}

#[derive(Debug)]
enum Fail {
    Io(String),
    Idle,
    /// Frames kept coming but none of them moved the request forward (events outside the
    /// asked range, pings, notices, events for other subscriptions).
    NoProgress,
    /// The backfill's `relay_timeout` passed.
    Deadline,
    Closed(String),
    RateLimited(String),
    AuthRequired(String),
    IgnoresUntil,
    Stop,
}

impl Fail {
    fn describe(&self) -> String {
        match self {
            Fail::Io(m) => format!("io: {m}"),
            Fail::Idle => "relay went silent (idle timeout)".into(),
            Fail::NoProgress => {
                "no progress within the idle timeout (only frames that do not answer the request)"
                    .into()
            }
            Fail::Closed(m) => format!("CLOSED: {m}"),
            Fail::RateLimited(m) => format!("CLOSED: {m}"),
            Fail::AuthRequired(m) => format!("CLOSED: {m}"),
            Fail::IgnoresUntil => GiveUpReason::IgnoresUntil.to_string(),
            Fail::Stop => "stopped".into(),
            Fail::Deadline => "relay timeout".into(),
        }
    }
}

#[derive(Debug, Default)]
struct WindowResult {
    emitted: u64,
    in_range: usize,
    above: usize,
    total: usize,
    oldest: Option<i64>,
    oldest_ids: HashSet<BKey>,
    /// Ids received at the window's top second (`until`).
    top_ids: HashSet<BKey>,
    /// The newest `limit` created_at values of the reply (min-heap), to cut a reply that
    /// holds more than was asked at its limit-th newest event.
    newest: BinaryHeap<Reverse<i64>>,
    limit: usize,
    epoch: u64,
}

/// An event's identity at a window boundary: id and signature, so a forged copy of an id never
/// hides the valid one.
type BKey = ([u8; 32], [u8; 64]);

struct Session {
    ws: transport::Ws,
    buf: Vec<u8>,
    scratch: Vec<u8>,
    buffers: simd_json::Buffers,
    subs: u64,
    /// Events parsed but not yet handed to verify (sent in chunks).
    pending: Vec<RawEvent>,
}

enum Action {
    None,
    Emit(crate::model::Event),
    Eose,
    Closed(String),
}

/// Syncs one relay into the pipeline.
pub struct Connector {
    relay: Relay,
    cfg: Arc<SyncConfig>,
    out: flume::Sender<Vec<RawEvent>>,
    cursor_tx: flume::Sender<Relay>,
    stop: watch::Receiver<bool>,
    /// The highest `synced_until` claimed so far (persisted or passed to the progress tracker):
    /// claims never move below it.
    claimed: Option<i64>,
    /// The most a walk to "now" may claim: its top minus `live_lag`, so an event that reaches
    /// the relay late, dated inside the walked range's top, is still fetched by the next pass
    /// or by the live subscription.
    claim_cap: Option<i64>,
    /// When the backfill must be over (`relay_timeout`), checked inside the connection.
    deadline: Option<tokio::time::Instant>,
    /// A slot among the relays backfilling at once, held until the live phase begins: a live
    /// subscription lasts forever and must not keep other relays from their backfill.
    backfill_slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// What reconciliation reads and shares with the other connectors (None = walk only).
    archive: Option<Arc<Archive>>,
    /// The next session reconciles [this, now - live_lag] before it walks.
    reconcile_from: Option<i64>,
    /// The cursor at the start of the run: the next walk to "now" re-walks
    /// `recheck_horizon` below it when the relay could not be reconciled.
    recheck_top: Option<i64>,
    /// Off while re-walking an already claimed range: its windows move no cursor.
    claiming: bool,
}

impl Connector {
    /// A connector for `relay` feeding `out`; `cursor_tx` announces cursor moves that happen
    /// without a commit (empty windows); `stop` turns true on shutdown.
    pub fn new(
        relay: Relay,
        cfg: Arc<SyncConfig>,
        out: flume::Sender<Vec<RawEvent>>,
        cursor_tx: flume::Sender<Relay>,
        stop: watch::Receiver<bool>,
    ) -> Connector {
        Connector {
            relay,
            cfg,
            out,
            cursor_tx,
            stop,
            claimed: None,
            claim_cap: None,
            deadline: None,
            backfill_slot: None,
            archive: None,
            reconcile_from: None,
            recheck_top: None,
            claiming: true,
        }
    }

    /// Reconciles through `archive` (NIP-77) where the relay speaks it.
    pub fn with_archive(mut self, archive: Option<Arc<Archive>>) -> Self {
        self.archive = archive;
        self
    }

    /// Holds `slot` (one of the parallel backfills) until the backfill ends and live begins,
    /// or the run ends.
    pub fn with_backfill_slot(mut self, slot: Option<tokio::sync::OwnedSemaphorePermit>) -> Self {
        self.backfill_slot = slot;
        self
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    async fn sleep_or_stop(&mut self, d: Duration) -> bool {
        if self.stopped() {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = self.stop.changed() => true,
        }
    }

    fn backoff(&self, failures: u32) -> Duration {
        let exp = self
            .cfg
            .backoff_min
            .saturating_mul(1u32 << failures.min(16).saturating_sub(1));
        let d = exp.min(self.cfg.backoff_max);
        // Up to 25 % jitter so relays that failed together do not retry together.
        d + d.mul_f64(rand::random::<f64>() * 0.25)
    }

    fn close_window(&self, epoch: u64, emitted: u64, after: Option<CursorState>) {
        let after = if self.cfg.use_cursor && self.claiming {
            after
        } else {
            None
        };
        if self.relay.progress.close(epoch, emitted, after) {
            let _ = self.cursor_tx.send(self.relay.clone());
        }
    }

    /// The part of a walk position that may be persisted: nothing above `claim_cap`, never
    /// below what was already claimed.
    fn claimable(&mut self, pos: CursorState) -> CursorState {
        let Some(cap) = self.claim_cap else {
            return pos;
        };
        let synced_until = pos.synced_until.map(|s| s.min(cap)).max(self.claimed);
        let pending = pos.pending.and_then(|p| {
            // (until, end] is archived; only (until, cap] of it may be claimed.
            (p.until < cap.min(p.end)).then_some(Pending {
                end: p.end.min(cap),
                until: p.until,
            })
        });
        self.claimed = synced_until;
        CursorState {
            synced_until,
            pending,
        }
    }

    /// Sends a frame within the idle timeout: a relay that stops reading cannot hold the
    /// connector on a full socket.
    async fn send_within(&self, sess: &mut Session, msg: Message) -> Result<(), Fail> {
        match tokio::time::timeout(self.cfg.idle_timeout, sess.ws.send(msg)).await {
            Ok(r) => r.map_err(|e| Fail::Io(e.to_string())),
            Err(_) => Err(Fail::Io("send timed out (relay stopped reading)".into())),
        }
    }

    /// Closes politely, but never waits long for a relay that stopped reading.
    async fn close_within(&self, sess: &mut Session) {
        let d = self.cfg.idle_timeout.min(CLOSE_TIMEOUT);
        let _ = tokio::time::timeout(d, sess.ws.close(None)).await;
    }

    fn lo(&self, pos: &CursorState) -> i64 {
        match pos.synced_until {
            Some(s) => self.cfg.floor.max(s.saturating_add(1)),
            None => self.cfg.floor,
        }
    }

    /// Runs until synced, stopped, or given up.
    pub async fn run(mut self) -> Outcome {
        let started = Instant::now();
        let mut pos = if self.cfg.use_cursor {
            self.relay.progress.committed()
        } else {
            CursorState::default()
        };
        self.claimed = pos.synced_until;
        if self.reconciles() {
            self.reconcile_from = Some(self.cfg.floor);
        }
        if self.cfg.use_cursor && self.cfg.recheck_horizon > 0 {
            self.recheck_top = pos.synced_until;
        }
        self.deadline = self
            .cfg
            .relay_timeout
            .map(|t| tokio::time::Instant::now() + t);
        let mut failures = 0u32;
        let mut limit = self.cfg.limit.max(1);
        loop {
            if self.stopped() {
                return Outcome::Cancelled;
            }
            if let Some(t) = self.cfg.relay_timeout {
                if started.elapsed() > t {
                    return Outcome::GaveUp(GiveUpReason::RelayTimeout(t));
                }
            }
            let ws = match transport::connect(
                &self.relay.url,
                &self.cfg.transport,
                self.cfg.connect_timeout,
            )
            .await
            {
                Ok(ws) => ws,
                Err(e) => {
                    failures += 1;
                    inc(&self.relay.stats.failures);
                    tracing::debug!(relay = %self.relay.url, error = %e, failures, "connect failed");
                    if failures >= self.cfg.max_failures {
                        return Outcome::GaveUp(GiveUpReason::Connect(e.to_string()));
                    }
                    if self.sleep_or_stop(self.backoff(failures)).await {
                        return Outcome::Cancelled;
                    }
                    continue;
                }
            };
            inc(&self.relay.stats.connects);
            let mut sess = Session {
                ws,
                buf: Vec::with_capacity(8192),
                scratch: Vec::with_capacity(4096),
                buffers: simd_json::Buffers::default(),
                subs: 0,
                pending: Vec::with_capacity(CHUNK),
            };
            let res = self
                .session(&mut sess, &mut pos, &mut limit, &mut failures)
                .await;
            match res {
                Ok(()) => {
                    self.close_within(&mut sess).await;
                    return Outcome::Synced;
                }
                Err(Fail::Stop) => {
                    self.close_within(&mut sess).await;
                    return Outcome::Cancelled;
                }
                Err(Fail::Deadline) => {
                    self.close_within(&mut sess).await;
                    return Outcome::GaveUp(GiveUpReason::RelayTimeout(
                        self.cfg.relay_timeout.unwrap_or_default(),
                    ));
                }
                Err(Fail::AuthRequired(m)) => {
                    return Outcome::GaveUp(GiveUpReason::AuthRequired(m))
                }
                Err(Fail::IgnoresUntil) => return Outcome::GaveUp(GiveUpReason::IgnoresUntil),
                Err(e) => {
                    failures += 1;
                    inc(&self.relay.stats.failures);
                    tracing::debug!(relay = %self.relay.url, error = %e.describe(), failures, "session failed");
                    if failures >= self.cfg.max_failures {
                        return Outcome::GaveUp(GiveUpReason::Failing(e.describe()));
                    }
                    let mut wait = self.backoff(failures);
                    if matches!(e, Fail::RateLimited(_)) {
                        wait = wait.max(Duration::from_secs(1));
                    }
                    if self.sleep_or_stop(wait).await {
                        return Outcome::Cancelled;
                    }
                }
            }
        }
    }

    async fn session(
        &mut self,
        sess: &mut Session,
        pos: &mut CursorState,
        limit: &mut usize,
        failures: &mut u32,
    ) -> Result<(), Fail> {
        if let Some(since) = self.reconcile_from {
            if self.reconciles() {
                let top = self
                    .cfg
                    .until
                    .unwrap_or_else(|| now_secs().saturating_sub(self.cfg.live_lag.max(0)));
                if self.reconcile(sess, since, top).await? {
                    self.claim_reconciled(pos, top);
                    // Reconciled from the floor: nothing left for a re-walk to find.
                    if since <= self.cfg.floor {
                        self.recheck_top = None;
                    }
                }
            }
            self.reconcile_from = None;
        }
        loop {
            let (lo, u, end) = match pos.pending {
                Some(p) => (self.lo(pos), p.until, p.end),
                None => {
                    let end = self.cfg.until.unwrap_or_else(now_secs);
                    let lo = self.lo(pos);
                    if lo > end {
                        self.recheck(sess, limit, failures).await?;
                        if self.cfg.live {
                            // The pass deadline bounds the backfill; a live subscription has no
                            // end, and the catch-up walks after a reconnect are bounded by the
                            // idle and progress timeouts alone.
                            self.deadline = None;
                            self.backfill_slot = None;
                            return self.live(sess, pos).await;
                        }
                        return Ok(());
                    }
                    if self.cfg.until.is_none() {
                        self.claim_cap = Some(
                            end.saturating_sub(self.cfg.live_lag.max(0))
                                .max(self.claimed.unwrap_or(i64::MIN)),
                        );
                    }
                    (lo, end, end)
                }
            };
            if lo > u {
                // A walk that already reached the bottom: it is complete.
                *pos = CursorState {
                    synced_until: Some(end),
                    pending: None,
                };
                continue;
            }
            self.walk(sess, pos, lo, u, end, limit, failures).await?;
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn walk(
        &mut self,
        sess: &mut Session,
        pos: &mut CursorState,
        lo: i64,
        mut u: i64,
        end: i64,
        limit: &mut usize,
        failures: &mut u32,
    ) -> Result<(), Fail> {
        let mut boundary: HashSet<BKey> = HashSet::new();
        let mut confirming: Option<usize> = None;
        loop {
            let w = self.window(sess, lo, u, *limit, &boundary).await?;
            *failures = 0;
            if let Some(n) = confirming.take() {
                if w.emitted > 0 && n > 0 && n < *limit {
                    tracing::info!(relay = %self.relay.url, asked = *limit, cap = n, "relay caps results below the asked limit; adapting");
                    *limit = n;
                }
            }
            if w.above > 0
                && w.in_range < *limit
                && w.in_range + w.above >= *limit
                && self.ignores_until(sess, lo, u).await?
            {
                // The limit was spent on events newer than `until`, and a probe confirms the
                // relay ignores `until`: nothing below this window can be paged. Keep the
                // cursor where it is.
                self.close_window(w.epoch, w.emitted, None);
                return Err(Fail::IgnoresUntil);
            }
            let done = CursorState {
                synced_until: Some(end),
                pending: None,
            };
            if w.in_range >= *limit {
                let oldest = w.oldest.unwrap_or(u);
                // A compliant reply is the newest `limit` events, so it covers down to its
                // oldest. A reply with more than asked is either a relay ignoring `limit`
                // (everything, newest first: far more than asked) or one padding the reply
                // (with invalid or unrequested events) — then only the newest `limit` are
                // trusted as a contiguous prefix.
                let padded = w.in_range > *limit && w.in_range < 2 * *limit;
                let cut = if padded {
                    w.newest.peek().map(|r| r.0).unwrap_or(oldest)
                } else {
                    oldest
                };
                let next_u = if w.emitted == 0 && cut == u {
                    tracing::warn!(relay = %self.relay.url, second = u, limit = *limit, "more events in one second than the relay returns per request; skipping the rest of that second");
                    boundary.clear();
                    u - 1
                } else {
                    if cut == u {
                        boundary.extend(w.top_ids);
                    } else if padded {
                        // The ids at the cut second are not tracked: the next window fetches
                        // them again (harmless: the seen gate and the database absorb them).
                        boundary.clear();
                    } else {
                        boundary = w.oldest_ids;
                    }
                    cut
                };
                if next_u < lo {
                    *pos = done;
                    let after = self.claimable(*pos);
                    self.close_window(w.epoch, w.emitted, Some(after));
                    return Ok(());
                }
                *pos = CursorState {
                    synced_until: pos.synced_until,
                    pending: Some(Pending { end, until: next_u }),
                };
                let after = self.claimable(*pos);
                self.close_window(w.epoch, w.emitted, Some(after));
                u = next_u;
                continue;
            }
            if w.emitted == 0 {
                *pos = done;
                let after = self.claimable(*pos);
                self.close_window(w.epoch, w.emitted, Some(after));
                return Ok(());
            }
            // A short reply with new events: either the window is exhausted or the relay
            // capped it below our limit. Ask once more below the oldest event to tell.
            let oldest = w.oldest.unwrap_or(u);
            if oldest == u {
                boundary.extend(w.oldest_ids);
            } else {
                boundary = w.oldest_ids;
            }
            confirming = Some(w.in_range);
            *pos = CursorState {
                synced_until: pos.synced_until,
                pending: Some(Pending { end, until: oldest }),
            };
            let after = self.claimable(*pos);
            self.close_window(w.epoch, w.emitted, Some(after));
            u = oldest;
        }
    }

    fn req_json(&self, sub: &str, since: i64, until: Option<i64>, limit: Option<usize>) -> String {
        let f = self.filter_json(since, until, limit);
        format!("[\"REQ\",\"{sub}\",{f}]")
    }

    /// One NIP-01 filter over [since, until] with this sync's kinds.
    fn filter_json(&self, since: i64, until: Option<i64>, limit: Option<usize>) -> String {
        let mut f = format!("{{\"since\":{since}");
        if let Some(u) = until {
            f.push_str(&format!(",\"until\":{u}"));
        }
        if let Some(l) = limit {
            f.push_str(&format!(",\"limit\":{l}"));
        }
        if let Some(k) = &self.cfg.kinds {
            let ks: Vec<String> = k.iter().map(|k| k.to_string()).collect();
            f.push_str(&format!(",\"kinds\":[{}]", ks.join(",")));
        }
        f.push('}');
        f
    }

    async fn send(&self, sess: &mut Session, text: String) -> Result<(), Fail> {
        self.send_within(sess, Message::Text(text.into())).await
    }

    /// Reads one frame and turns it into an action; range checks use [lo, u] (None = live).
    fn handle_frame(
        &self,
        sess: &mut Session,
        data: &[u8],
        sub: &str,
        range: Option<(i64, i64)>,
        boundary: &HashSet<BKey>,
        w: &mut WindowResult,
    ) -> Action {
        let stats = &self.relay.stats;
        inc(&stats.frames);
        stats.bytes_received.fetch_add(data.len() as u64, Relaxed);
        if data.len() > self.cfg.max_event_bytes {
            stats.reject(Reason::Oversized);
            w.total += 1;
            w.in_range += 1;
            return Action::None;
        }
        let v = match message::decode(data, &mut sess.buf, &mut sess.buffers) {
            Ok(v) => v,
            Err(reason) => {
                stats.reject(reason);
                return Action::None;
            }
        };
        let Some(msg) = message::parse(&v) else {
            stats.reject(Reason::Malformed);
            return Action::None;
        };
        match msg {
            RelayMsg::Event(s, ev) => {
                inc(&stats.events_received);
                if s != sub {
                    stats.reject(Reason::Unrequested);
                    return Action::None;
                }
                w.total += 1;
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => {
                        stats.reject(e.into());
                        tracing::debug!(relay = %self.relay.url, reason = Reason::from(e).as_str(), "rejected frame");
                        return Action::None;
                    }
                };
                if let Some((lo, u)) = range {
                    if ev.created_at < lo || ev.created_at > u {
                        if ev.created_at > u {
                            w.above += 1;
                        }
                        stats.reject(Reason::OutOfRange);
                        return Action::None;
                    }
                    w.in_range += 1;
                    let key = (ev.id, ev.sig);
                    match w.oldest {
                        Some(o) if ev.created_at > o => {}
                        Some(o) if ev.created_at == o => {
                            w.oldest_ids.insert(key);
                        }
                        _ => {
                            w.oldest = Some(ev.created_at);
                            w.oldest_ids.clear();
                            w.oldest_ids.insert(key);
                        }
                    }
                    w.newest.push(Reverse(ev.created_at));
                    if w.newest.len() > w.limit.max(1) {
                        w.newest.pop();
                    }
                    if ev.created_at == u {
                        w.top_ids.insert(key);
                    }
                    if ev.created_at == u && boundary.contains(&key) {
                        inc(&stats.refetched);
                        return Action::None;
                    }
                }
                Action::Emit(ev.to_owned_event(&mut sess.scratch))
            }
            RelayMsg::Eose(s) if s == sub => Action::Eose,
            RelayMsg::Closed(s, m) if s == sub => {
                inc(&stats.closed);
                Action::Closed(m.to_string())
            }
            RelayMsg::Notice(m) => {
                inc(&stats.notices);
                tracing::debug!(relay = %self.relay.url, notice = m, "NOTICE");
                Action::None
            }
            _ => Action::None,
        }
    }

    /// Queues an event for verify; a full chunk is sent at once.
    async fn emit(
        &self,
        sess: &mut Session,
        ev: crate::model::Event,
        epoch: u64,
    ) -> Result<(), Fail> {
        sess.pending.push(RawEvent {
            event: ev,
            ticket: Ticket {
                relay: self.relay.clone(),
                epoch,
            },
            seen_at: now_secs(),
        });
        self.relay.stats.events_emitted.fetch_add(1, Relaxed);
        if sess.pending.len() >= CHUNK {
            self.flush(sess).await?;
        }
        Ok(())
    }

    /// A frame already received, taken without waiting while events are queued; `None` when the
    /// socket has nothing ready (or nothing is queued): then the queue is sent before waiting,
    /// so chunks form without holding events back.
    fn ready_frame(
        sess: &mut Session,
    ) -> Option<Option<Result<Message, tokio_tungstenite::tungstenite::Error>>> {
        if sess.pending.is_empty() {
            None
        } else {
            sess.ws.next().now_or_never()
        }
    }

    /// Sends the queued events (the bounded channel applies backpressure here).
    async fn flush(&self, sess: &mut Session) -> Result<(), Fail> {
        if sess.pending.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut sess.pending, Vec::with_capacity(CHUNK));
        self.out.send_async(chunk).await.map_err(|_| Fail::Stop)
    }

    fn closed_fail(m: String) -> Fail {
        if m.starts_with("auth-required") {
            Fail::AuthRequired(m)
        } else if m.starts_with("rate-limited") {
            Fail::RateLimited(m)
        } else {
            Fail::Closed(m)
        }
    }

    async fn window(
        &mut self,
        sess: &mut Session,
        lo: i64,
        u: i64,
        limit: usize,
        boundary: &HashSet<BKey>,
    ) -> Result<WindowResult, Fail> {
        let mut w = WindowResult {
            epoch: self.relay.progress.open(),
            limit,
            ..WindowResult::default()
        };
        sess.subs += 1;
        let sub = format!("bb{}", sess.subs);
        let req = self.req_json(&sub, lo, Some(u), Some(limit));
        inc(&self.relay.stats.reqs);
        if let Err(e) = self.send(sess, req).await {
            self.close_window(w.epoch, 0, None);
            return Err(e);
        }
        let res = self
            .read_until_eose(sess, &sub, lo, u, boundary, &mut w)
            .await;
        // Whatever was counted as emitted must reach verify, or the window never completes.
        let flushed = self.flush(sess).await;
        let res = res.and(flushed);
        if let Err(e) = res {
            self.close_window(w.epoch, w.emitted, None);
            return Err(e);
        }
        let _ = self.send(sess, format!("[\"CLOSE\",\"{sub}\"]")).await;
        Ok(w)
    }

    async fn read_until_eose(
        &mut self,
        sess: &mut Session,
        sub: &str,
        lo: i64,
        u: i64,
        boundary: &HashSet<BKey>,
        w: &mut WindowResult,
    ) -> Result<(), Fail> {
        let mut progress_by = tokio::time::Instant::now() + self.cfg.idle_timeout;
        let mut last_progress = (0u64, 0usize);
        loop {
            // One clock read a frame: it both moves the idle clock (only an answer to the
            // request does: events in range, new or repeated at the boundary; pings, notices
            // and out-of-range events do not) and checks it.
            let now = tokio::time::Instant::now();
            if (w.emitted, w.in_range) != last_progress {
                last_progress = (w.emitted, w.in_range);
                progress_by = now + self.cfg.idle_timeout;
            }
            let wait_until = self.wait_limit(now, progress_by)?;
            let next = match Self::ready_frame(sess) {
                Some(m) => Ok(m),
                None => {
                    self.flush(sess).await?;
                    tokio::select! {
                        _ = self.stop.changed() => return Err(Fail::Stop),
                        r = tokio::time::timeout_at(wait_until, sess.ws.next()) => r,
                    }
                }
            };
            let msg = match next {
                Err(_) => return Err(self.wait_failure(progress_by, w.total > 0)),
                Ok(None) => return Err(Fail::Io("connection closed".into())),
                Ok(Some(Err(e))) => {
                    if matches!(e, tokio_tungstenite::tungstenite::Error::Capacity(_)) {
                        self.relay.stats.reject(Reason::Oversized);
                    }
                    return Err(Fail::Io(e.to_string()));
                }
                Ok(Some(Ok(m))) => m,
            };
            let action = match &msg {
                Message::Text(t) => {
                    self.handle_frame(sess, t.as_bytes(), sub, Some((lo, u)), boundary, w)
                }
                Message::Binary(b) => self.handle_frame(sess, b, sub, Some((lo, u)), boundary, w),
                Message::Close(_) => return Err(Fail::Io("relay closed the connection".into())),
                _ => Action::None,
            };
            match action {
                Action::None => {}
                Action::Emit(ev) => {
                    self.emit(sess, ev, w.epoch).await?;
                    w.emitted += 1;
                }
                Action::Eose => return Ok(()),
                Action::Closed(m) => return Err(Self::closed_fail(m)),
            }
        }
    }

    /// The payload of a frame, counted (frames, bytes); `None` for control frames, an error
    /// when the relay closes. The one place a reply's frame becomes bytes to decode.
    fn payload<'m>(&self, msg: &'m Message) -> Result<Option<&'m [u8]>, Fail> {
        let data: &[u8] = match msg {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
            Message::Close(_) => return Err(Fail::Io("relay closed the connection".into())),
            _ => return Ok(None),
        };
        inc(&self.relay.stats.frames);
        self.relay
            .stats
            .bytes_received
            .fetch_add(data.len() as u64, Relaxed);
        Ok(Some(data))
    }

    /// The latest instant a wait may last: the progress deadline or the pass deadline,
    /// whichever is first; an error once either has passed.
    fn wait_limit(
        &self,
        now: tokio::time::Instant,
        progress_by: tokio::time::Instant,
    ) -> Result<tokio::time::Instant, Fail> {
        if let Some(d) = self.deadline {
            if now >= d {
                return Err(Fail::Deadline);
            }
        }
        if now >= progress_by {
            return Err(Fail::NoProgress);
        }
        Ok(self.deadline.map_or(progress_by, |d| d.min(progress_by)))
    }

    /// Which limit a wait ran into.
    fn wait_failure(&self, progress_by: tokio::time::Instant, got_frames: bool) -> Fail {
        let now = tokio::time::Instant::now();
        match self.deadline {
            Some(d) if now >= d => Fail::Deadline,
            _ if now >= progress_by && got_frames => Fail::NoProgress,
            _ => Fail::Idle,
        }
    }

    /// Asks for one event at or below `u`: a relay that answers only with a newer one ignores
    /// `until`. Tells such a relay apart from one that merely pads its replies.
    async fn ignores_until(&mut self, sess: &mut Session, lo: i64, u: i64) -> Result<bool, Fail> {
        sess.subs += 1;
        let sub = format!("bb{}", sess.subs);
        inc(&self.relay.stats.reqs);
        self.send(sess, self.req_json(&sub, lo, Some(u), Some(1)))
            .await?;
        let mut newer = false;
        let mut within = false;
        // One event and EOSE are asked for: the whole answer gets one idle period.
        let answer_by = tokio::time::Instant::now() + self.cfg.idle_timeout;
        loop {
            let wait_until = self.wait_limit(tokio::time::Instant::now(), answer_by)?;
            let next = tokio::select! {
                _ = self.stop.changed() => return Err(Fail::Stop),
                r = tokio::time::timeout_at(wait_until, sess.ws.next()) => r,
            };
            let msg = match next {
                Err(_) => return Err(self.wait_failure(answer_by, false)),
                Ok(None) => return Err(Fail::Io("connection closed".into())),
                Ok(Some(Err(e))) => return Err(Fail::Io(e.to_string())),
                Ok(Some(Ok(m))) => m,
            };
            let Some(data) = self.payload(&msg)? else {
                continue;
            };
            let v = match message::decode(data, &mut sess.buf, &mut sess.buffers) {
                Ok(v) => v,
                Err(reason) => {
                    self.relay.stats.reject(reason);
                    continue;
                }
            };
            match message::parse(&v) {
                Some(RelayMsg::Event(s, Ok(ev))) if s == sub => {
                    if ev.created_at > u {
                        newer = true;
                    } else if ev.created_at >= lo {
                        within = true;
                    }
                }
                Some(RelayMsg::Eose(s)) if s == sub => break,
                Some(RelayMsg::Closed(s, m)) if s == sub => {
                    return Err(Self::closed_fail(m.to_string()))
                }
                _ => {}
            }
        }
        let _ = self.send(sess, format!("[\"CLOSE\",\"{sub}\"]")).await;
        // Padding relays add newer events but still answer within the range; a relay that
        // ignores `until` spends its one event on a newer one.
        Ok(newer && !within)
    }

    /// Handles one frame of a live subscription.
    async fn live_frame(
        &self,
        sess: &mut Session,
        next: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
        sub: &str,
        epoch: u64,
        emitted: &mut u64,
        got_eose: &mut bool,
    ) -> Result<(), Fail> {
        let msg = match next {
            None => return Err(Fail::Io("connection closed".into())),
            Some(Err(e)) => return Err(Fail::Io(e.to_string())),
            Some(Ok(m)) => m,
        };
        let mut w = WindowResult::default();
        let empty = HashSet::new();
        let action = match &msg {
            Message::Text(t) => self.handle_frame(sess, t.as_bytes(), sub, None, &empty, &mut w),
            Message::Binary(b) => self.handle_frame(sess, b, sub, None, &empty, &mut w),
            Message::Close(_) => return Err(Fail::Io("relay closed the connection".into())),
            _ => Action::None,
        };
        match action {
            Action::None => {}
            Action::Emit(ev) => {
                self.emit(sess, ev, epoch).await?;
                *emitted += 1;
            }
            Action::Eose => *got_eose = true,
            Action::Closed(m) => return Err(Self::closed_fail(m)),
        }
        Ok(())
    }

    async fn live(&mut self, sess: &mut Session, pos: &mut CursorState) -> Result<(), Fail> {
        // Overlap the walk's top by `live_lag`: events dated there that reach the relay after
        // the walk asked for them arrive on this subscription (repeats cost a seen-gate lookup).
        let since = self
            .cfg
            .floor
            .max(self.lo(pos).saturating_sub(self.cfg.live_lag.max(0)));
        sess.subs += 1;
        let sub = format!("bb{}", sess.subs);
        // The second filter (`limit: 0`: nothing stored) matches every event published from
        // now on whatever its created_at, so backdated events arrive too.
        let mut now_on = String::from("{\"limit\":0");
        if let Some(k) = &self.cfg.kinds {
            let ks: Vec<String> = k.iter().map(|k| k.to_string()).collect();
            now_on.push_str(&format!(",\"kinds\":[{}]", ks.join(",")));
        }
        now_on.push('}');
        let req = format!(
            "[\"REQ\",\"{sub}\",{},{now_on}]",
            self.filter_json(since, None, None)
        );
        inc(&self.relay.stats.reqs);
        self.send(sess, req).await?;
        let mut epoch = self.relay.progress.open();
        let mut emitted = 0u64;
        let mut got_eose = false;
        let mut checkpoint = tokio::time::interval(self.cfg.live_checkpoint);
        checkpoint.tick().await;
        let mut ping = tokio::time::interval(self.cfg.ping_interval);
        ping.tick().await;
        let mut last_frame = Instant::now();
        let silence = self.cfg.ping_interval * 3;
        let result = loop {
            if let Some(m) = Self::ready_frame(sess) {
                if let Err(e) = self
                    .live_frame(sess, m, &sub, epoch, &mut emitted, &mut got_eose)
                    .await
                {
                    break Err(e);
                }
                last_frame = Instant::now();
                continue;
            }
            if let Err(e) = self.flush(sess).await {
                break Err(e);
            }
            let next = tokio::select! {
                _ = self.stop.changed() => break Err(Fail::Stop),
                _ = checkpoint.tick() => {
                    let t = now_secs() - self.cfg.live_lag;
                    if got_eose && pos.synced_until.is_none_or(|s| t > s) && t >= since - 1 {
                        *pos = CursorState { synced_until: Some(t), pending: None };
                        self.claimed = self.claimed.max(Some(t));
                        self.close_window(epoch, emitted, Some(*pos));
                        epoch = self.relay.progress.open();
                        emitted = 0;
                    }
                    continue;
                }
                _ = ping.tick() => {
                    if last_frame.elapsed() > silence {
                        break Err(Fail::Idle);
                    }
                    if let Err(e) = self.send_within(sess, Message::Ping(Vec::new().into())).await {
                        break Err(e);
                    }
                    continue;
                }
                m = sess.ws.next() => m,
            };
            last_frame = Instant::now();
            if let Err(e) = self
                .live_frame(sess, next, &sub, epoch, &mut emitted, &mut got_eose)
                .await
            {
                break Err(e);
            }
        };
        let _ = self.flush(sess).await;
        self.close_window(epoch, emitted, None);
        // After a disconnect, walk again from what was claimed, not from the walk's top: the
        // live subscription covered the late arrivals below the top only while it was open.
        if let (Some(s), Some(c)) = (pos.synced_until, self.claimed) {
            pos.synced_until = Some(s.min(c));
        }
        // And reconcile what the connection may have missed before walking again.
        if self.reconciles() {
            self.reconcile_from = Some(since);
        }
        result
    }
}
