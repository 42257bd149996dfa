//! The project's own NIP-01 relay for tests and benches: serves a fixed event set fast, and misbehaves on demand.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use negentropy::{Id, Negentropy, NegentropyStorageVector};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::gen::{self, GenEvent};

/// How the relay misbehaves; all default to a compliant relay (one without NIP-77 or NIP-45).
#[derive(Clone, Debug)]
pub struct Behavior {
    /// Sends every matching event regardless of `limit`.
    pub ignore_limit: bool,
    /// Ignores `until` (so the newest events come first), still honouring `limit` unless `ignore_limit`.
    pub ignore_until: bool,
    /// Silently caps each filter's results at this many, like a relay whose NIP-11 max_limit is lower than asked.
    pub max_limit: Option<usize>,
    /// Per REQ, additionally sends up to this many stored events from outside every filter's [since, until].
    pub out_of_range: usize,
    /// Per REQ, interleaves this many garbage frames among the events.
    pub garbage_frames: usize,
    /// Extra (fault) events sent in every reply whose filters' created_at range they fall in.
    pub bad_sig: Vec<GenEvent>,
    /// Sends every EVENT frame of a reply twice in a row.
    pub duplicates: bool,
    /// On each REQ, stops after this many EVENT frames (no EOSE, no live events) and keeps the socket open.
    pub hang_after: Option<usize>,
    /// Hangs only on the first N connections (0 = all connections).
    pub hang_connections: usize,
    /// Closes the TCP connection (no close frame) right after this many EVENT frames on a connection.
    pub disconnect_after: Option<usize>,
    /// Disconnects only on the first N connections (0 = all).
    pub disconnect_connections: usize,
    /// Per REQ, sends one NOTICE frame of exactly this many bytes before the events.
    pub huge_frame: Option<usize>,
    /// Answers the first `closed_times` REQs with `["CLOSED", sub, <this>]`.
    pub closed: Option<String>,
    /// How many REQs (counted across all connections) get CLOSED; 0 = every REQ.
    pub closed_times: usize,
    /// Sends a NOTICE before each reply.
    pub notice_on_req: bool,
    /// Per REQ, sends one frame holding a JSON array nested this many levels deep (a stack
    /// overflow for a parser that recurses without a bound) before the reply.
    pub deep_frame: Option<usize>,
    /// Answers every REQ that has an `until` with an endless stream of EVENT frames dated
    /// after it (no EOSE): the request never makes progress.
    pub flood_newer: bool,
    /// Sends a WebSocket ping this often, whatever else it does (with `hang_after: Some(0)`,
    /// a relay that answers nothing but keeps the socket busy).
    pub ping_every: Option<Duration>,
    /// After the first REQ, never reads or writes again and keeps the socket open: the
    /// client's sends and its close handshake find nobody reading.
    pub stop_reading: bool,
    /// NIP-77: how the relay answers NEG-OPEN/NEG-MSG (default: unsupported, a NOTICE as today).
    pub neg: NegMode,
    /// Frame size limit the relay's negentropy uses for its replies (0 = unlimited; default
    /// 60_000 as rust-nostr). 1..4096 is refused by negentropy: every NEG-OPEN gets a NEG-ERR.
    pub neg_frame_limit: u64,
    /// Ids (created_at, id) the relay claims in reconciliation but does not hold: REQ by ids
    /// never returns them. They join a NEG-OPEN's items when their created_at is within the
    /// filter's since/until (the filter's other fields are not checked against them).
    pub neg_phantoms: Vec<(i64, [u8; 32])>,
    /// A REQ whose filter has `ids` is answered with other stored events (not the asked ones)
    /// instead: per such filter, up to as many as it asks for, newest first, then EOSE.
    pub ids_serve_others: bool,
    /// NIP-45: how the relay answers COUNT (default: unsupported, a NOTICE as today).
    pub count: CountMode,
    /// Waits this long before answering each REQ: a slow relay, whose sync lasts long enough
    /// to be interrupted (fleet takeovers, kills mid-sync).
    pub req_delay: Option<Duration>,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            ignore_limit: false,
            ignore_until: false,
            max_limit: None,
            out_of_range: 0,
            garbage_frames: 0,
            bad_sig: Vec::new(),
            duplicates: false,
            hang_after: None,
            hang_connections: 0,
            disconnect_after: None,
            disconnect_connections: 0,
            huge_frame: None,
            closed: None,
            closed_times: 0,
            notice_on_req: false,
            deep_frame: None,
            flood_newer: false,
            ping_every: None,
            stop_reading: false,
            neg: NegMode::Unsupported,
            neg_frame_limit: 60_000,
            neg_phantoms: Vec::new(),
            ids_serve_others: false,
            count: CountMode::Unsupported,
            req_delay: None,
        }
    }
}

/// How the test relay speaks NIP-77.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum NegMode {
    /// No NIP-77: NEG-OPEN gets a NOTICE (today's behaviour).
    #[default]
    Unsupported,
    /// Compliant.
    Normal,
    /// Compliant, but `["NEG-ERR", sub, "blocked: too many query results"]` when the filter matches more than this many events.
    BlockedAbove(usize),
    /// Every NEG-OPEN gets `["NEG-ERR", sub, "error: negentropy disabled"]`.
    Error,
    /// Answers NEG-OPEN with a NEG-MSG whose payload is not valid negentropy (the first open: not hex at all; later: valid hex of garbage bytes, alternating; opens are counted across all connections).
    Malformed,
    /// Answers NEG-OPEN with a NEG-MSG of this many hex characters (valid hex, garbage content; an odd count is rounded down).
    Oversized(usize),
    /// Never answers NEG-OPEN (keeps the connection open, still answers other messages).
    Silent,
    /// Answers NEG-OPEN correctly, then never answers a NEG-MSG.
    StallAfterOpen,
}

/// How the test relay answers NIP-45 COUNT.
///
/// A COUNT counts the stored events only: the REQ misbehaviours (`ignore_limit`, `max_limit`,
/// `ignore_until`, `ids_serve_others`, `bad_sig`, `out_of_range`, `closed`, …) and the
/// `neg_phantoms` play no part in it.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum CountMode {
    /// No NIP-45: COUNT gets a NOTICE.
    #[default]
    Unsupported,
    /// `["COUNT", sub, {"count": n}]` with n = the number of stored events matching any of the filters (limit ignored, as NIP-45 says).
    Exact,
    /// Like Exact but adds `"approximate": true` to the answer object.
    Approximate,
    /// Answers `["CLOSED", sub, "error: count disabled"]`.
    Closed,
}

/// Counters the tests assert on.
#[derive(Debug, Default)]
pub struct RelayCounters {
    /// WebSocket handshakes completed.
    pub connections: AtomicU64,
    /// REQ messages received (including those answered with CLOSED).
    pub reqs: AtomicU64,
    /// EVENT frames carrying an event (stored, duplicate, out-of-range, bad_sig or live); garbage excluded.
    pub events_sent: AtomicU64,
    /// Every frame sent: EVENT, EOSE, OK, NOTICE, CLOSED, garbage and huge frames.
    pub frames_sent: AtomicU64,
    /// Events accepted by `publish` or a client EVENT answered OK true (duplicates included).
    pub published: AtomicU64,
    /// NEG-OPEN messages received (whatever the `NegMode`, `Unsupported` included).
    pub neg_opens: AtomicU64,
    /// Client NEG-MSG messages received (whatever the `NegMode`).
    pub neg_msgs: AtomicU64,
    /// Bytes (of the whole JSON text) of the NEG-MSG and NEG-ERR frames sent.
    pub neg_bytes_sent: AtomicU64,
    /// REQ messages with at least one filter holding `ids` (including those answered with CLOSED).
    pub id_reqs: AtomicU64,
    /// Total entries of the `ids` arrays in those REQs.
    pub ids_asked: AtomicU64,
    /// COUNT messages received (whatever the `CountMode`, `Unsupported` included).
    pub counts: AtomicU64,
}

/// Events newest first, ties by lowest id, so a since/until window is a contiguous slice.
#[derive(Default)]
struct Store {
    events: Vec<Arc<GenEvent>>,
    /// Every stored event by id: a REQ by ids (thousands of them, as reconciliation sends)
    /// is answered by lookups, not by scanning the store once per id.
    ids: HashMap<[u8; 32], Arc<GenEvent>>,
    /// Bumped per stored event so a subscription only gets live events newer than its snapshot.
    seq: u64,
}

fn order_key(e: &GenEvent) -> (std::cmp::Reverse<i64>, [u8; 32]) {
    (std::cmp::Reverse(e.created_at), e.id)
}

impl Store {
    fn insert(&mut self, ev: Arc<GenEvent>) -> Option<u64> {
        if self.ids.contains_key(&ev.id) {
            return None;
        }
        self.ids.insert(ev.id, ev.clone());
        let key = order_key(&ev);
        let pos = self.events.partition_point(|e| order_key(e) < key);
        self.events.insert(pos, ev);
        self.seq += 1;
        Some(self.seq)
    }

    /// Index of the first event with created_at <= until.
    fn upper(&self, until: Option<i64>) -> usize {
        until.map_or(0, |u| self.events.partition_point(|e| e.created_at > u))
    }

    /// Index one past the last event with created_at >= since.
    fn lower(&self, since: Option<i64>) -> usize {
        since.map_or(self.events.len(), |s| {
            self.events.partition_point(|e| e.created_at >= s)
        })
    }
}

#[derive(Clone)]
struct Live {
    seq: u64,
    ev: Arc<GenEvent>,
}

struct Shared {
    store: RwLock<Store>,
    live: broadcast::Sender<Live>,
    behavior: Behavior,
    counters: RelayCounters,
}

impl Shared {
    fn publish(&self, ev: GenEvent) {
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        let ev = Arc::new(ev);
        let seq = match self.store.write() {
            Ok(mut s) => s.insert(ev.clone()),
            Err(p) => p.into_inner().insert(ev.clone()),
        };
        if let Some(seq) = seq {
            // No receivers is normal (no connection open yet).
            let _ = self.live.send(Live { seq, ev });
        }
    }

    fn read_store(&self) -> std::sync::RwLockReadGuard<'_, Store> {
        // A panicked writer cannot leave the Vec half-sorted (insert is one call), so poison is harmless.
        self.store.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// A parsed NIP-01 filter; absent fields match everything.
#[derive(Clone, Debug, Default)]
struct Filter {
    ids: Option<Vec<[u8; 32]>>,
    authors: Option<Vec<[u8; 32]>>,
    kinds: Option<Vec<u64>>,
    tags: Vec<(String, Vec<String>)>,
    since: Option<i64>,
    until: Option<i64>,
    limit: Option<usize>,
}

fn hex_list(v: &Value) -> Result<Vec<[u8; 32]>, String> {
    let arr = v.as_array().ok_or("expected an array of hex strings")?;
    // An entry that is not exact 64-char hex can never match, so it is dropped rather than rejected.
    Ok(arr
        .iter()
        .filter_map(|x| x.as_str())
        .filter(|s| s.len() == 64)
        .filter_map(|s| {
            let mut b = [0u8; 32];
            hex::decode_to_slice(s, &mut b).ok().map(|_| b)
        })
        .collect())
}

fn int(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_u64().map(|u| u.min(i64::MAX as u64) as i64))
        .or_else(|| v.as_f64().map(|f| f as i64))
}

impl Filter {
    fn parse(v: &Value) -> Result<Filter, String> {
        let obj = v.as_object().ok_or("filter is not an object")?;
        let mut f = Filter::default();
        for (k, v) in obj {
            match k.as_str() {
                "ids" => f.ids = Some(hex_list(v)?),
                "authors" => f.authors = Some(hex_list(v)?),
                "kinds" => {
                    let arr = v.as_array().ok_or("kinds is not an array")?;
                    f.kinds = Some(arr.iter().filter_map(|k| k.as_u64()).collect());
                }
                "since" => f.since = Some(int(v).ok_or("since is not a number")?),
                "until" => f.until = Some(int(v).ok_or("until is not a number")?),
                "limit" => f.limit = Some(int(v).ok_or("limit is not a number")?.max(0) as usize),
                t if t.len() == 2 && t.starts_with('#') => {
                    let arr = v.as_array().ok_or("tag filter is not an array")?;
                    let vals = arr
                        .iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect();
                    f.tags.push((t[1..].to_string(), vals));
                }
                // Unknown fields (search, …) are ignored the way most relays do.
                _ => {}
            }
        }
        Ok(f)
    }

    fn in_range(&self, t: i64) -> bool {
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t <= u)
    }

    fn matches(&self, e: &GenEvent) -> bool {
        if !self.in_range(e.created_at) {
            return false;
        }
        if self.ids.as_ref().is_some_and(|ids| !ids.contains(&e.id)) {
            return false;
        }
        if self
            .authors
            .as_ref()
            .is_some_and(|a| !a.contains(&e.pubkey))
        {
            return false;
        }
        if self
            .kinds
            .as_ref()
            .is_some_and(|k| !k.contains(&(e.kind as u64)))
        {
            return false;
        }
        if !self.tags.is_empty() {
            // Parsed lazily: only tag queries pay for it.
            let Some(tags) = gen::event_tags(&e.json) else {
                return false;
            };
            return self.tags.iter().all(|(name, vals)| {
                tags.iter()
                    .any(|t| t.first() == Some(name) && t.get(1).is_some_and(|v| vals.contains(v)))
            });
        }
        true
    }
}

/// Runs one filter against the store, applying the limit-related misbehaviours.
fn query(store: &Store, f: &Filter, b: &Behavior) -> Vec<Arc<GenEvent>> {
    let mut f = f.clone();
    if b.ignore_until {
        f.until = None;
    }
    let mut limit = if b.ignore_limit { None } else { f.limit };
    if let Some(m) = b.max_limit {
        limit = Some(limit.map_or(m, |l| l.min(m)));
    }
    let limit = limit.unwrap_or(usize::MAX);
    if b.ids_serve_others {
        if let Some(ids) = &f.ids {
            return store
                .events
                .iter()
                .filter(|e| !ids.contains(&e.id))
                .take(ids.len())
                .cloned()
                .collect();
        }
    }
    if let Some(ids) = &f.ids {
        let mut found: Vec<Arc<GenEvent>> = ids
            .iter()
            .filter_map(|id| store.ids.get(id))
            .filter(|e| f.matches(e))
            .cloned()
            .collect();
        found.sort_by_key(|e| order_key(e));
        found.dedup_by_key(|e| e.id);
        found.truncate(limit);
        return found;
    }
    let (lo, hi) = (store.upper(f.until), store.lower(f.since));
    if lo >= hi || limit == 0 {
        return Vec::new();
    }
    store.events[lo..hi]
        .iter()
        .filter(|e| f.matches(e))
        .take(limit)
        .cloned()
        .collect()
}

/// NIP-45: how many stored events match any of `filters` (each counted once; `limit` ignored).
/// Only the slice between the widest `until` and the widest `since` is scanned.
fn count_matching(store: &Store, filters: &[Filter]) -> u64 {
    let lo = filters.iter().map(|f| store.upper(f.until)).min();
    let hi = filters.iter().map(|f| store.lower(f.since)).max();
    let (Some(lo), Some(hi)) = (lo, hi) else {
        return 0;
    };
    if lo >= hi {
        return 0;
    }
    store.events[lo..hi]
        .iter()
        .filter(|e| filters.iter().any(|f| f.matches(e)))
        .count() as u64
}

/// Everything a REQ reply sends, in order, before the garbage is interleaved.
fn build_reply(store: &Store, filters: &[Filter], b: &Behavior) -> Vec<Arc<GenEvent>> {
    let mut seen = HashSet::new();
    let mut matched: Vec<Arc<GenEvent>> = Vec::new();
    for f in filters {
        for e in query(store, f, b) {
            if seen.insert(e.id) {
                matched.push(e);
            }
        }
    }
    if filters.len() > 1 {
        matched.sort_by_key(|e| order_key(e));
    }
    // Fault events go in by time so the stream still looks ordered; a stable sort puts them after the real event of the same second.
    for bad in &b.bad_sig {
        if filters.iter().any(|f| f.in_range(bad.created_at)) {
            matched.push(Arc::new(bad.clone()));
        }
    }
    if !b.bad_sig.is_empty() {
        matched.sort_by_key(|e| std::cmp::Reverse(e.created_at));
    }

    let (mut above, mut below) = (Vec::new(), Vec::new());
    if b.out_of_range > 0 && !filters.is_empty() {
        // Outside every filter: older than the smallest since, or newer than the largest until.
        let min_since = filters.iter().map(|f| f.since).min().flatten();
        let min_since = if filters.iter().any(|f| f.since.is_none()) {
            None
        } else {
            min_since
        };
        let max_until = if filters.iter().any(|f| f.until.is_none()) {
            None
        } else {
            filters.iter().filter_map(|f| f.until).max()
        };
        let mut older = match min_since {
            Some(s) => store.events[store.lower(Some(s))..].iter(),
            None => [].iter(),
        }
        .filter(|e| !seen.contains(&e.id));
        let mut newer = match max_until {
            Some(u) => store.events[..store.upper(Some(u))].iter().rev(),
            None => [].iter().rev(),
        }
        .filter(|e| !seen.contains(&e.id));
        let (mut older_done, mut newer_done) = (false, false);
        while above.len() + below.len() < b.out_of_range && !(older_done && newer_done) {
            if !older_done {
                match older.next() {
                    Some(e) => below.push(e.clone()),
                    None => older_done = true,
                }
            }
            if above.len() + below.len() < b.out_of_range && !newer_done {
                match newer.next() {
                    Some(e) => above.push(e.clone()),
                    None => newer_done = true,
                }
            }
        }
        above.reverse();
    }
    let mut out = above;
    out.extend(matched);
    out.extend(below);
    out
}

const FAKE_PK: &str = "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";
const FAKE_ID: &str = "5c83da77af1dec6d7289834998ad7aafbd9e2191396d75ec3cc27f5a77226f36";
const FAKE_SIG: &str = "908a15e46fb4d8675bab026fc230a0e3542bfade63da02d542fb78b2a8513fcd0092619a2c8c1221e581946e0191f2af505dfdf8657a414dbca329186f009262";

fn fake_event(id: &str, created_at: &str, kind: &str, tags: &str, sig: &str) -> String {
    format!(
        r#"{{"id":{id},"pubkey":"{FAKE_PK}","created_at":{created_at},"kind":{kind},"tags":{tags},"content":"garbage","sig":{sig}}}"#
    )
}

/// The j-th garbage frame of a reply; every variant is something a client must survive and none is a valid event.
fn garbage(j: usize, sub: &str) -> String {
    let id = format!("\"{FAKE_ID}\"");
    let sig = format!("\"{FAKE_SIG}\"");
    let ev = |e: String| format!(r#"["EVENT",{sub},{e}]"#);
    match j % 16 {
        0 => "this is not json".to_string(),
        1 => format!(r#"["EVENT",{sub},{{"id":"5c83da77af1d"#),
        2 => format!(r#"{{"EVENT":{sub}}}"#),
        3 => r#"["EVENT"]"#.to_string(),
        4 => format!(r#"["EVENT",{sub}]"#),
        5 => ev(fake_event(
            &format!("\"{}\"", "zz".repeat(32)),
            "1700000000",
            "1",
            "[]",
            &sig,
        )),
        6 => ev(fake_event(&id, "\"1700000000\"", "1", "[]", &sig)),
        7 => ev(fake_event(&id, "1700000000", "70000", "[]", &sig)),
        8 => ev(fake_event(&id, "1700000000", "1", r#"[["e",1]]"#, &sig)),
        9 => ev(format!(r#"{{"id":{id},"pubkey":"{FAKE_PK}"}}"#)),
        10 => format!(r#"["EVENT",{sub},"not an object"]"#),
        11 => format!("{}{}", "[".repeat(1000), "]".repeat(1000)),
        12 => "null".to_string(),
        13 => ev(fake_event(&id, "1700000000", "1", "[]", "\"xyz\"")),
        14 => format!(r#"[42,{sub}]"#),
        _ => ev(fake_event(
            &format!("\"{}\"", &FAKE_ID[..62]),
            "1700000000",
            "1",
            "[]",
            &sig,
        )),
    }
}

fn notice(msg: &str) -> String {
    serde_json::to_string(&("NOTICE", msg)).unwrap_or_else(|_| r#"["NOTICE",""]"#.into())
}

/// A relay-side negentropy session, kept per (connection, sub) for the NEG-MSG follow-ups.
type NegSession = Negentropy<'static, NegentropyStorageVector>;

/// Garbage negentropy of `len` bytes: the right protocol version byte, an infinite bound and
/// then mode 7 (no such mode), so a reader fails on it; the rest is pseudo-random filler.
fn neg_garbage(len: usize) -> Vec<u8> {
    let mut out = vec![0x61, 0x00, 0x00, 0x07];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(x as u8);
    }
    out.truncate(len);
    out
}

/// The negentropy timestamp of a created_at (negative ones, which Nostr does not allow, clamp to 0).
fn neg_ts(created_at: i64) -> u64 {
    created_at.max(0) as u64
}

/// Answers a NEG-OPEN: the items of `filter` (stored events, `limit` ignored, plus the phantoms
/// in its since/until), sealed, reconciled against the client's initial message. Errors are the
/// NEG-ERR reason.
fn neg_open(
    store: &Store,
    filter: &Filter,
    b: &Behavior,
    initial: &[u8],
) -> Result<(NegSession, Vec<u8>), String> {
    let (lo, hi) = (store.upper(filter.until), store.lower(filter.since));
    let events = if lo < hi { &store.events[lo..hi] } else { &[] };
    let mut storage = NegentropyStorageVector::with_capacity(events.len());
    let mut matched = 0usize;
    for e in events.iter().filter(|e| filter.matches(e)) {
        matched += 1;
        if let NegMode::BlockedAbove(max) = b.neg {
            if matched > max {
                return Err("blocked: too many query results".into());
            }
        }
        storage
            .insert(neg_ts(e.created_at), Id::from_byte_array(e.id))
            .map_err(|e| format!("error: {e}"))?;
    }
    for (t, id) in b.neg_phantoms.iter().filter(|(t, _)| filter.in_range(*t)) {
        storage
            .insert(neg_ts(*t), Id::from_byte_array(*id))
            .map_err(|e| format!("error: {e}"))?;
    }
    storage.seal().map_err(|e| format!("error: {e}"))?;
    let mut neg =
        Negentropy::owned(storage, b.neg_frame_limit).map_err(|e| format!("error: {e}"))?;
    let reply = neg_reconcile(&mut neg, initial)?;
    Ok((neg, reply))
}

/// One relay-side reconciliation step; a negentropy error (or, defensively, a panic) on the
/// client's bytes is a NEG-ERR reason, never a crash.
fn neg_reconcile(neg: &mut NegSession, msg: &[u8]) -> Result<Vec<u8>, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| neg.reconcile(msg))) {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(e)) => Err(format!("error: negentropy: {e}")),
        Err(_) => Err("error: negentropy failed on this message".into()),
    }
}

/// Frames fed before a flush: amortises the syscall while keeping latency low for small replies.
const FLUSH_EVERY: usize = 64;

struct Sub {
    filters: Vec<Filter>,
    prefix: String,
    snapshot: u64,
}

/// Why a connection loop stopped sending.
enum Stop {
    /// Close the TCP connection now (disconnect_after).
    Disconnect,
    /// Keep the socket open but never touch it again (stop_reading).
    Hold,
    /// Socket error or peer gone.
    Gone,
}

struct Conn {
    ws: WebSocketStream<TcpStream>,
    shared: Arc<Shared>,
    idx: u64,
    events_on_conn: usize,
    unflushed: usize,
    subs: HashMap<String, Sub>,
    /// Open NIP-77 sessions by sub id.
    negs: HashMap<String, NegSession>,
}

impl Conn {
    fn applies(limit: usize, idx: u64) -> bool {
        limit == 0 || idx <= limit as u64
    }

    fn disconnect_due(&self) -> bool {
        let b = &self.shared.behavior;
        b.disconnect_after.is_some_and(|d| {
            self.events_on_conn >= d && Self::applies(b.disconnect_connections, self.idx)
        })
    }

    async fn frame(&mut self, text: String) -> Result<(), Stop> {
        self.ws
            .feed(Message::text(text))
            .await
            .map_err(|_| Stop::Gone)?;
        self.shared
            .counters
            .frames_sent
            .fetch_add(1, Ordering::Relaxed);
        self.unflushed += 1;
        if self.unflushed >= FLUSH_EVERY {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Stop> {
        self.unflushed = 0;
        self.ws.flush().await.map_err(|_| Stop::Gone)
    }

    async fn event(&mut self, prefix: &str, ev: &GenEvent) -> Result<(), Stop> {
        if self.disconnect_due() {
            return Err(Stop::Disconnect);
        }
        let mut s = String::with_capacity(prefix.len() + ev.json.len() + 1);
        s.push_str(prefix);
        s.push_str(&ev.json);
        s.push(']');
        self.frame(s).await?;
        self.shared
            .counters
            .events_sent
            .fetch_add(1, Ordering::Relaxed);
        self.events_on_conn += 1;
        if self.disconnect_due() {
            return Err(Stop::Disconnect);
        }
        Ok(())
    }

    async fn handle_text(&mut self, text: &str) -> Result<(), Stop> {
        let Ok(Value::Array(mut msg)) = serde_json::from_str::<Value>(text) else {
            self.frame(notice("invalid: message is not a JSON array"))
                .await?;
            return self.flush().await;
        };
        match msg.first().and_then(Value::as_str) {
            Some("REQ") => self.handle_req(&msg).await?,
            Some("CLOSE") => {
                if let Some(sub) = msg.get(1).and_then(Value::as_str) {
                    self.subs.remove(sub);
                }
            }
            Some("EVENT") if msg.len() >= 2 => {
                let raw_id = msg[1].get("id").and_then(Value::as_str).map(String::from);
                let reply = match gen::event_from_value(msg.swap_remove(1)) {
                    Ok(ev) => {
                        let id = hex::encode(ev.id);
                        let dup = self.shared.read_store().ids.contains_key(&ev.id);
                        self.shared.publish(ev);
                        let m = if dup {
                            "duplicate: already have this event"
                        } else {
                            ""
                        };
                        serde_json::to_string(&("OK", id, true, m))
                    }
                    Err(why) => match raw_id {
                        Some(id) => serde_json::to_string(&("OK", id, false, why)),
                        None => Ok(notice(&why)),
                    },
                };
                if let Ok(r) = reply {
                    self.frame(r).await?;
                }
            }
            Some("NEG-OPEN") => {
                let n = self
                    .shared
                    .counters
                    .neg_opens
                    .fetch_add(1, Ordering::Relaxed)
                    + 1;
                self.handle_neg_open(&msg, n).await?
            }
            Some("NEG-MSG") => {
                self.shared
                    .counters
                    .neg_msgs
                    .fetch_add(1, Ordering::Relaxed);
                self.handle_neg_msg(&msg).await?
            }
            Some("NEG-CLOSE") if self.shared.behavior.neg != NegMode::Unsupported => {
                if let Some(sub) = msg.get(1).and_then(Value::as_str) {
                    self.negs.remove(sub);
                }
            }
            Some("COUNT") => {
                self.shared.counters.counts.fetch_add(1, Ordering::Relaxed);
                self.handle_count(&msg).await?
            }
            other => self.unsupported(other).await?,
        }
        self.flush().await
    }

    /// NIP-45 COUNT, answered per `Behavior::count`.
    async fn handle_count(&mut self, msg: &[Value]) -> Result<(), Stop> {
        let mode = self.shared.behavior.count.clone();
        if mode == CountMode::Unsupported {
            return self.unsupported(Some("COUNT")).await;
        }
        let Some(sub) = msg.get(1).and_then(Value::as_str).map(String::from) else {
            return self
                .frame(notice("invalid: COUNT without a subscription id"))
                .await;
        };
        let closed = |why: &str| serde_json::to_string(&("CLOSED", &sub, why)).unwrap_or_default();
        if sub.is_empty() || sub.chars().count() > 64 {
            return self
                .frame(closed("invalid: subscription id must be 1-64 chars"))
                .await;
        }
        if mode == CountMode::Closed {
            return self.frame(closed("error: count disabled")).await;
        }
        let filters: Result<Vec<Filter>, String> = msg.iter().skip(2).map(Filter::parse).collect();
        let filters = match filters {
            Ok(f) => f,
            Err(why) => return self.frame(closed(&format!("invalid: {why}"))).await,
        };
        let n = count_matching(&self.shared.read_store(), &filters);
        let answer = if mode == CountMode::Approximate {
            serde_json::json!({"count": n, "approximate": true})
        } else {
            serde_json::json!({"count": n})
        };
        let r = serde_json::to_string(&("COUNT", &sub, answer)).unwrap_or_default();
        self.frame(r).await
    }

    async fn unsupported(&mut self, what: Option<&str>) -> Result<(), Stop> {
        let what = what.unwrap_or("non-string");
        self.frame(notice(&format!("unsupported message type: {what}")))
            .await
    }

    /// A NEG-MSG or NEG-ERR frame, counted in `neg_bytes_sent`.
    async fn neg_frame(&mut self, kind: &str, sub: &str, payload: &str) -> Result<(), Stop> {
        let Ok(text) = serde_json::to_string(&(kind, sub, payload)) else {
            return Ok(());
        };
        self.shared
            .counters
            .neg_bytes_sent
            .fetch_add(text.len() as u64, Ordering::Relaxed);
        self.frame(text).await
    }

    /// `n`: this NEG-OPEN's number across the relay (1 = the first).
    async fn handle_neg_open(&mut self, msg: &[Value], n: u64) -> Result<(), Stop> {
        let mode = self.shared.behavior.neg.clone();
        if mode == NegMode::Unsupported {
            return self.unsupported(Some("NEG-OPEN")).await;
        }
        let Some(sub) = msg.get(1).and_then(Value::as_str).map(String::from) else {
            return self
                .frame(notice("invalid: NEG-OPEN without a subscription id"))
                .await;
        };
        // A NEG-OPEN for an open sub id replaces it, whatever it is answered with.
        self.negs.remove(&sub);
        match mode {
            NegMode::Silent => return Ok(()),
            NegMode::Error => {
                return self
                    .neg_frame("NEG-ERR", &sub, "error: negentropy disabled")
                    .await
            }
            NegMode::Malformed => {
                let payload = if n % 2 == 1 {
                    "not hex: this is no negentropy".to_string()
                } else {
                    hex::encode(neg_garbage(64))
                };
                return self.neg_frame("NEG-MSG", &sub, &payload).await;
            }
            NegMode::Oversized(chars) => {
                let payload = hex::encode(neg_garbage(chars / 2));
                return self.neg_frame("NEG-MSG", &sub, &payload).await;
            }
            NegMode::Unsupported
            | NegMode::Normal
            | NegMode::BlockedAbove(_)
            | NegMode::StallAfterOpen => {}
        }
        if sub.is_empty() || sub.chars().count() > 64 {
            return self
                .neg_frame("NEG-ERR", &sub, "error: subscription id must be 1-64 chars")
                .await;
        }
        let filter = match msg.get(2).map(Filter::parse) {
            Some(Ok(f)) => f,
            Some(Err(why)) => {
                return self
                    .neg_frame("NEG-ERR", &sub, &format!("error: invalid filter: {why}"))
                    .await
            }
            None => {
                return self
                    .neg_frame("NEG-ERR", &sub, "error: NEG-OPEN without a filter")
                    .await
            }
        };
        let Some(Ok(initial)) = msg.get(3).and_then(Value::as_str).map(hex::decode) else {
            return self
                .neg_frame("NEG-ERR", &sub, "error: initial message is not hex")
                .await;
        };
        let opened = {
            let store = self.shared.read_store();
            neg_open(&store, &filter, &self.shared.behavior, &initial)
        };
        match opened {
            Ok((neg, reply)) => {
                self.negs.insert(sub.clone(), neg);
                self.neg_frame("NEG-MSG", &sub, &hex::encode(reply)).await
            }
            Err(why) => self.neg_frame("NEG-ERR", &sub, &why).await,
        }
    }

    async fn handle_neg_msg(&mut self, msg: &[Value]) -> Result<(), Stop> {
        let mode = self.shared.behavior.neg.clone();
        if mode == NegMode::Unsupported {
            return self.unsupported(Some("NEG-MSG")).await;
        }
        let Some(sub) = msg.get(1).and_then(Value::as_str).map(String::from) else {
            return self
                .frame(notice("invalid: NEG-MSG without a subscription id"))
                .await;
        };
        if mode == NegMode::StallAfterOpen {
            return Ok(());
        }
        let Some(neg) = self.negs.get_mut(&sub) else {
            return self
                .neg_frame("NEG-ERR", &sub, "closed: no such negentropy subscription")
                .await;
        };
        let res = match msg.get(2).and_then(Value::as_str).map(hex::decode) {
            Some(Ok(bytes)) => neg_reconcile(neg, &bytes),
            _ => Err("error: message is not hex".to_string()),
        };
        match res {
            Ok(reply) => self.neg_frame("NEG-MSG", &sub, &hex::encode(reply)).await,
            Err(why) => {
                // A NEG-ERR ends the session.
                self.negs.remove(&sub);
                self.neg_frame("NEG-ERR", &sub, &why).await
            }
        }
    }

    async fn handle_req(&mut self, msg: &[Value]) -> Result<(), Stop> {
        let counters = &self.shared.counters;
        let req_no = counters.reqs.fetch_add(1, Ordering::Relaxed) + 1;
        let asked: Vec<usize> = msg
            .iter()
            .skip(2)
            .filter_map(|f| f.get("ids").and_then(Value::as_array).map(Vec::len))
            .collect();
        if !asked.is_empty() {
            counters.id_reqs.fetch_add(1, Ordering::Relaxed);
            counters
                .ids_asked
                .fetch_add(asked.iter().sum::<usize>() as u64, Ordering::Relaxed);
        }
        let b = self.shared.behavior.clone();
        if let Some(d) = b.req_delay {
            tokio::time::sleep(d).await;
        }
        if b.notice_on_req {
            self.frame(notice("test relay: notice before reply"))
                .await?;
        }
        let Some(sub) = msg.get(1).and_then(Value::as_str).map(String::from) else {
            return self
                .frame(notice("invalid: REQ without a subscription id"))
                .await;
        };
        let sub_json = serde_json::to_string(&sub).unwrap_or_else(|_| "\"\"".into());
        // A new REQ with the same id replaces the old one, whatever it is answered with.
        self.subs.remove(&sub);
        if sub.is_empty() || sub.chars().count() > 64 {
            let r =
                format!(r#"["CLOSED",{sub_json},"invalid: subscription id must be 1-64 chars"]"#);
            return self.frame(r).await;
        }
        if let Some(reason) = &b.closed {
            if b.closed_times == 0 || req_no <= b.closed_times as u64 {
                let r = serde_json::to_string(&("CLOSED", &sub, reason)).unwrap_or_default();
                return self.frame(r).await;
            }
        }
        let filters: Result<Vec<Filter>, String> = msg[2..].iter().map(Filter::parse).collect();
        let filters = match filters {
            Ok(f) => f,
            Err(why) => {
                let r = serde_json::to_string(&("CLOSED", &sub, format!("invalid: {why}")))
                    .unwrap_or_default();
                return self.frame(r).await;
            }
        };
        if b.stop_reading {
            return Err(Stop::Hold);
        }
        if let Some(depth) = b.deep_frame {
            self.frame(format!("{}{}", "[".repeat(depth), "]".repeat(depth)))
                .await?;
        }
        if b.flood_newer {
            if let Some(u) = filters.iter().filter_map(|f| f.until).max() {
                return self.flood_newer(&sub_json, u).await;
            }
        }
        let (events, snapshot) = {
            let store = self.shared.read_store();
            (build_reply(&store, &filters, &b), store.seq)
        };

        if let Some(n) = b.huge_frame {
            let s = if n >= 13 {
                format!(r#"["NOTICE","{}"]"#, "x".repeat(n - 13))
            } else {
                "x".repeat(n)
            };
            self.frame(s).await?;
        }

        let prefix = format!(r#"["EVENT",{sub_json},"#);
        let hang = b
            .hang_after
            .filter(|_| Self::applies(b.hang_connections, self.idx));
        let copies = if b.duplicates { 2 } else { 1 };
        let (n, g) = (events.len(), b.garbage_frames);
        let mut next_garbage = 0;
        let mut sent = 0;
        for (i, ev) in events.iter().enumerate() {
            // Garbage j goes before event floor((j+1)*n/(g+1)): spread evenly, the rest before EOSE.
            while next_garbage < g && (next_garbage + 1) * n / (g + 1) <= i {
                self.frame(garbage(next_garbage, &sub_json)).await?;
                next_garbage += 1;
            }
            for _ in 0..copies {
                if hang.is_some_and(|h| sent >= h) {
                    // Hung: nothing more for this subscription, not even live events.
                    return self.flush().await;
                }
                self.event(&prefix, ev).await?;
                sent += 1;
            }
        }
        if hang.is_some_and(|h| sent >= h) {
            return self.flush().await;
        }
        while next_garbage < g {
            self.frame(garbage(next_garbage, &sub_json)).await?;
            next_garbage += 1;
        }
        self.frame(format!(r#"["EOSE",{sub_json}]"#)).await?;
        self.flush().await?;
        self.subs.insert(
            sub,
            Sub {
                filters,
                prefix,
                snapshot,
            },
        );
        Ok(())
    }

    /// EVENT frames dated after `until`, without end (until the client goes away or the relay
    /// stops): stored events newer than `until` in turn, or a fake one when there are none.
    async fn flood_newer(&mut self, sub_json: &str, until: i64) -> Result<(), Stop> {
        let newer: Vec<Arc<GenEvent>> = {
            let store = self.shared.read_store();
            store.events[..store.upper(Some(until))].to_vec()
        };
        let prefix = format!(r#"["EVENT",{sub_json},"#);
        let fake = format!(
            "{prefix}{}]",
            fake_event(
                &format!("\"{FAKE_ID}\""),
                &(until + 1000).to_string(),
                "1",
                "[]",
                &format!("\"{FAKE_SIG}\"")
            )
        );
        for i in 0usize.. {
            match newer.get(i % newer.len().max(1)) {
                Some(ev) => self.event(&prefix, ev).await?,
                None => self.frame(fake.clone()).await?,
            }
            if i % 4096 == 0 {
                tokio::task::yield_now().await;
            }
        }
        Ok(())
    }

    async fn handle_live(&mut self, live: Live) -> Result<(), Stop> {
        let targets: Vec<String> = self
            .subs
            .values()
            .filter(|s| live.seq > s.snapshot && s.filters.iter().any(|f| f.matches(&live.ev)))
            .map(|s| s.prefix.clone())
            .collect();
        for prefix in targets {
            self.event(&prefix, &live.ev).await?;
        }
        self.flush().await
    }

    async fn run(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
        live: &mut broadcast::Receiver<Live>,
    ) -> Stop {
        let period = self.shared.behavior.ping_every;
        let mut ping = tokio::time::interval(period.unwrap_or(Duration::from_secs(3600)));
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let res = tokio::select! {
                _ = shutdown.changed() => return Stop::Gone,
                _ = ping.tick(), if period.is_some() => {
                    match self.ws.send(Message::Ping(Vec::new().into())).await {
                        Ok(()) => Ok(()),
                        Err(_) => Err(Stop::Gone),
                    }
                }
                msg = self.ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => self.handle_text(t.as_str()).await,
                    // Pongs and close replies are queued by tungstenite; flushing sends them.
                    Some(Ok(Message::Ping(_))) => self.flush().await,
                    Some(Ok(Message::Close(_))) => {
                        let _ = self.flush().await;
                        return Stop::Gone;
                    }
                    Some(Ok(_)) => Ok(()),
                    Some(Err(_)) | None => return Stop::Gone,
                },
                l = live.recv() => match l {
                    Ok(l) => self.handle_live(l).await,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(conn = self.idx, missed = n, "test relay: live events dropped for a slow connection");
                        Ok(())
                    }
                    Err(broadcast::error::RecvError::Closed) => Ok(()),
                },
            };
            if let Err(stop) = res {
                return stop;
            }
        }
    }
}

async fn handle_conn(tcp: TcpStream, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let _ = tcp.set_nodelay(true);
    let config = WebSocketConfig::default()
        .max_message_size(Some(256 << 20))
        .max_frame_size(Some(256 << 20));
    let handshake = tokio_tungstenite::accept_async_with_config(tcp, Some(config));
    let ws = match tokio::time::timeout(Duration::from_secs(10), handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "test relay: handshake failed");
            return;
        }
        Err(_) => return,
    };
    let idx = shared.counters.connections.fetch_add(1, Ordering::Relaxed) + 1;
    // Subscribe before serving anything so no publish can fall between the snapshot and the receiver.
    let mut live = shared.live.subscribe();
    let mut conn = Conn {
        ws,
        shared,
        idx,
        events_on_conn: 0,
        unflushed: 0,
        subs: HashMap::new(),
        negs: HashMap::new(),
    };
    match conn.run(&mut shutdown, &mut live).await {
        Stop::Disconnect => {
            let _ = conn.ws.flush().await;
            // FIN without a WebSocket close frame: the client sees the stream end mid-subscription.
            let _ = conn.ws.get_mut().shutdown().await;
        }
        Stop::Hold => {
            // The socket stays open and unread until the relay stops.
            let _ = shutdown.changed().await;
        }
        Stop::Gone => {}
    }
}

/// A running relay.
pub struct TestRelay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl TestRelay {
    /// Starts on 127.0.0.1:0 (an ephemeral port) serving `events`.
    pub async fn start(events: Vec<GenEvent>, behavior: Behavior) -> anyhow::Result<TestRelay> {
        Self::start_on(0, events, behavior).await
    }

    /// Starts on 127.0.0.1:`port` serving `events` (duplicate ids are served once).
    pub async fn start_on(
        port: u16,
        events: Vec<GenEvent>,
        behavior: Behavior,
    ) -> anyhow::Result<TestRelay> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let mut store = Store::default();
        let mut seen = HashSet::with_capacity(events.len());
        let mut sorted: Vec<Arc<GenEvent>> = events
            .into_iter()
            .filter(|e| seen.insert(e.id))
            .map(Arc::new)
            .collect();
        sorted.sort_by_key(|e| order_key(e));
        drop(seen);
        store.ids = sorted.iter().map(|e| (e.id, e.clone())).collect();
        store.events = sorted;
        // Large enough that a test publishing in bulk does not make a reading connection lag.
        let (live, _) = broadcast::channel(1 << 16);
        let shared = Arc::new(Shared {
            store: RwLock::new(store),
            live,
            behavior,
            counters: RelayCounters::default(),
        });
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, shared.clone(), rx));
        Ok(TestRelay {
            addr,
            shared,
            shutdown,
            task,
        })
    }

    /// ws://127.0.0.1:PORT
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// The port the relay listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Counters the tests assert on.
    pub fn counters(&self) -> &RelayCounters {
        &self.shared.counters
    }

    /// Adds an event directly (no client, no verification): it is stored in order, so any
    /// created_at works, backdated included; later REQs, NEG-OPENs and COUNTs whose filter
    /// matches see it, and it is delivered to open subscriptions whose filter matches (a
    /// backdated event only if it is within their since/until). A known id is counted but not
    /// stored twice; negentropy sessions already open keep the set they were opened with.
    pub fn publish(&self, ev: GenEvent) {
        self.shared.publish(ev);
    }

    /// Stops accepting and closes all connections.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            // Also fires when the TestRelay is dropped without stop(), so a failed test does not leak the relay.
            _ = shutdown.changed() => break,
            r = listener.accept() => match r {
                Ok((tcp, _)) => {
                    conns.spawn(handle_conn(tcp, shared.clone(), shutdown.clone()));
                }
                Err(e) => {
                    // EMFILE and friends are transient; spinning on them would starve the connections.
                    tracing::warn!(error = %e, "test relay: accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
        }
        while conns.try_join_next().is_some() {}
    }
    conns.shutdown().await;
}

/// Runs a relay until ctrl-c / the process is killed; used by `bigbrotr testrelay` in its own process for benches.
pub async fn serve_forever(
    port: u16,
    events: Vec<GenEvent>,
    behavior: Behavior,
) -> anyhow::Result<()> {
    let n = events.len();
    let relay = TestRelay::start_on(port, events, behavior).await?;
    tracing::info!(url = %relay.url(), events = n, "test relay listening");
    tokio::signal::ctrl_c().await?;
    relay.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::{generate, with_bad_id, with_bad_sig, GenSpec};
    use tokio_tungstenite::connect_async;

    type Client = WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

    fn events(count: usize) -> Vec<GenEvent> {
        generate(&GenSpec {
            count,
            authors: 5,
            kinds: vec![1, 7],
            content_len: (5, 60),
            spread_secs: 1000,
            ..GenSpec::default()
        })
    }

    /// The compliant answer to one filter, computed independently of the relay's index.
    fn expected(evs: &[GenEvent], since: i64, until: i64, limit: usize) -> Vec<[u8; 32]> {
        let mut m: Vec<&GenEvent> = evs
            .iter()
            .filter(|e| e.created_at >= since && e.created_at <= until)
            .collect();
        m.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        m.into_iter().take(limit).map(|e| e.id).collect()
    }

    async fn connect(r: &TestRelay) -> Client {
        connect_async(r.url()).await.unwrap().0
    }

    async fn send(ws: &mut Client, v: Value) {
        ws.send(Message::text(v.to_string())).await.unwrap();
    }

    enum Frame {
        Json(Value),
        Raw,
        End,
        Silent,
    }

    async fn next(ws: &mut Client, wait_ms: u64) -> Frame {
        match tokio::time::timeout(Duration::from_millis(wait_ms), ws.next()).await {
            Err(_) => Frame::Silent,
            Ok(None) | Ok(Some(Err(_))) => Frame::End,
            Ok(Some(Ok(Message::Text(t)))) => match serde_json::from_str(t.as_str()) {
                Ok(v) => Frame::Json(v),
                Err(_) => Frame::Raw,
            },
            Ok(Some(Ok(Message::Close(_)))) => Frame::End,
            Ok(Some(Ok(_))) => Frame::Raw,
        }
    }

    /// The ids of EVENT frames for `sub` until EOSE; returns how the reply ended.
    async fn collect(ws: &mut Client, sub: &str) -> (Vec<[u8; 32]>, &'static str) {
        let mut ids = Vec::new();
        loop {
            match next(ws, 2000).await {
                Frame::Json(v) if v[0] == "EVENT" && v[1] == sub => {
                    let mut id = [0u8; 32];
                    hex::decode_to_slice(v[2]["id"].as_str().unwrap(), &mut id).unwrap();
                    ids.push(id);
                }
                Frame::Json(v) if v[0] == "EOSE" && v[1] == sub => return (ids, "eose"),
                Frame::Json(v) if v[0] == "CLOSED" => return (ids, "closed"),
                Frame::Json(_) | Frame::Raw => {}
                Frame::End => return (ids, "end"),
                Frame::Silent => return (ids, "silent"),
            }
        }
    }

    fn window(evs: &[GenEvent]) -> (i64, i64) {
        let mut ts: Vec<i64> = evs.iter().map(|e| e.created_at).collect();
        ts.sort();
        (ts[ts.len() / 4], ts[ts.len() * 3 / 4])
    }

    #[tokio::test]
    async fn compliant_window_in_order_then_eose() {
        let evs = events(400);
        let (since, until) = window(&evs);
        let relay = TestRelay::start(evs.clone(), Behavior::default())
            .await
            .unwrap();
        let mut ws = connect(&relay).await;
        send(
            &mut ws,
            serde_json::json!(["REQ", "s1", {"since": since, "until": until, "limit": 50}]),
        )
        .await;
        let (ids, end) = collect(&mut ws, "s1").await;
        assert_eq!(end, "eose");
        assert_eq!(ids, expected(&evs, since, until, 50));
        // No limit: the whole window.
        send(
            &mut ws,
            serde_json::json!(["REQ", "s2", {"since": since, "until": until}]),
        )
        .await;
        let (ids, _) = collect(&mut ws, "s2").await;
        assert_eq!(ids, expected(&evs, since, until, usize::MAX));
        assert!(ids.len() > 100);
        // Several filters are OR-ed and de-duplicated; kinds and authors are honoured.
        let author = hex::encode(evs[0].pubkey);
        send(
            &mut ws,
            serde_json::json!(["REQ", "s3", {"authors": [author], "kinds": [1]}, {"ids": [hex::encode(evs[0].id)]}]),
        )
        .await;
        let (ids, _) = collect(&mut ws, "s3").await;
        let mut want: Vec<&GenEvent> = evs
            .iter()
            .filter(|e| (e.pubkey == evs[0].pubkey && e.kind == 1) || e.id == evs[0].id)
            .collect();
        want.sort_by_key(|e| order_key(e));
        assert_eq!(ids, want.iter().map(|e| e.id).collect::<Vec<_>>());
        assert_eq!(relay.counters().reqs.load(Ordering::Relaxed), 3);
        relay.stop().await;
    }

    #[tokio::test]
    async fn limit_misbehaviours() {
        let evs = events(300);
        let (since, until) = window(&evs);
        let all = expected(&evs, since, until, usize::MAX);
        let req = serde_json::json!(["REQ", "s", {"since": since, "until": until, "limit": 10}]);

        let relay = TestRelay::start(
            evs.clone(),
            Behavior {
                ignore_limit: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let mut ws = connect(&relay).await;
        send(&mut ws, req.clone()).await;
        assert_eq!(collect(&mut ws, "s").await, (all.clone(), "eose"));
        relay.stop().await;

        let relay = TestRelay::start(
            evs.clone(),
            Behavior {
                max_limit: Some(7),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let mut ws = connect(&relay).await;
        send(&mut ws, req.clone()).await;
        assert_eq!(collect(&mut ws, "s").await, (all[..7].to_vec(), "eose"));
        relay.stop().await;

        let relay = TestRelay::start(
            evs.clone(),
            Behavior {
                ignore_until: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let mut ws = connect(&relay).await;
        send(&mut ws, req.clone()).await;
        assert_eq!(
            collect(&mut ws, "s").await,
            (expected(&evs, since, i64::MAX, 10), "eose")
        );
        relay.stop().await;
    }

    #[tokio::test]
    async fn closed_then_served() {
        let evs = events(50);
        let b = Behavior {
            closed: Some("rate-limited: slow down".into()),
            closed_times: 1,
            ..Default::default()
        };
        let relay = TestRelay::start(evs.clone(), b).await.unwrap();
        let mut ws = connect(&relay).await;
        send(&mut ws, serde_json::json!(["REQ", "s", {}])).await;
        match next(&mut ws, 2000).await {
            Frame::Json(v) => assert_eq!(
                v,
                serde_json::json!(["CLOSED", "s", "rate-limited: slow down"])
            ),
            _ => panic!("expected CLOSED"),
        }
        send(&mut ws, serde_json::json!(["REQ", "s", {}])).await;
        let (ids, end) = collect(&mut ws, "s").await;
        assert_eq!((ids.len(), end), (50, "eose"));
        relay.stop().await;
    }

    #[tokio::test]
    async fn disconnect_after_on_first_connection_only() {
        let evs = events(100);
        let b = Behavior {
            disconnect_after: Some(10),
            disconnect_connections: 1,
            ..Default::default()
        };
        let relay = TestRelay::start(evs.clone(), b).await.unwrap();
        let all = expected(&evs, i64::MIN, i64::MAX, usize::MAX);
        let mut ws = connect(&relay).await;
        send(&mut ws, serde_json::json!(["REQ", "s", {}])).await;
        assert_eq!(collect(&mut ws, "s").await, (all[..10].to_vec(), "end"));
        let mut ws = connect(&relay).await;
        send(&mut ws, serde_json::json!(["REQ", "s", {}])).await;
        assert_eq!(collect(&mut ws, "s").await, (all.clone(), "eose"));
        assert_eq!(relay.counters().connections.load(Ordering::Relaxed), 2);
        assert_eq!(relay.counters().events_sent.load(Ordering::Relaxed), 110);
        relay.stop().await;
    }

    #[tokio::test]
    async fn duplicates_send_each_event_twice() {
        let evs = events(60);
        let relay = TestRelay::start(
            evs.clone(),
            Behavior {
                duplicates: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let mut ws = connect(&relay).await;
        send(&mut ws, serde_json::json!(["REQ", "s", {"limit": 20}])).await;
        let (ids, end) = collect(&mut ws, "s").await;
        let want: Vec<[u8; 32]> = expected(&evs, i64::MIN, i64::MAX, 20)
            .into_iter()
            .flat_map(|i| [i, i])
            .collect();
        assert_eq!((ids, end), (want, "eose"));
        relay.stop().await;
    }

    #[tokio::test]
    async fn hang_after_keeps_socket_open_then_recovers_on_reconnect() {
        let evs = events(100);
        let b = Behavior {
            hang_after: Some(5),
            hang_connections: 1,
            ..Default::default()
        };
        let relay = TestRelay::start(evs.clone(), b).await.unwrap();
        let all = expected(&evs, i64::MIN, i64::MAX, usize::MAX);
        let mut ws = connect(&relay).await;
        send(&mut ws, serde_json::json!(["REQ", "s", {}])).await;
        let mut ids = Vec::new();
        loop {
            match next(&mut ws, 300).await {
                Frame::Json(v) if v[0] == "EVENT" => {
                    ids.push(v[2]["id"].as_str().unwrap().to_string())
                }
                Frame::Silent => break,
                _ => panic!("unexpected frame or end while hung"),
            }
        }
        assert_eq!(ids, all[..5].iter().map(hex::encode).collect::<Vec<_>>());
        // Still open and still reading: unknown messages get a NOTICE.
        send(&mut ws, serde_json::json!(["HELLO"])).await;
        assert!(matches!(next(&mut ws, 2000).await, Frame::Json(v) if v[0] == "NOTICE"));
        let mut ws2 = connect(&relay).await;
        send(&mut ws2, serde_json::json!(["REQ", "s", {}])).await;
        assert_eq!(collect(&mut ws2, "s").await, (all, "eose"));
        relay.stop().await;
    }

    #[tokio::test]
    async fn publish_reaches_live_subscription() {
        let evs = events(30);
        let relay = TestRelay::start(evs[..20].to_vec(), Behavior::default())
            .await
            .unwrap();
        let mut ws = connect(&relay).await;
        send(
            &mut ws,
            serde_json::json!(["REQ", "live", {"kinds": [1, 7], "limit": 0}]),
        )
        .await;
        assert_eq!(collect(&mut ws, "live").await, (vec![], "eose"));
        relay.publish(evs[20].clone());
        match next(&mut ws, 2000).await {
            Frame::Json(v) => {
                assert_eq!(v[0], "EVENT");
                assert_eq!(v[2]["id"], hex::encode(evs[20].id));
            }
            _ => panic!("no live event"),
        }
        // A second client publishes over the socket: it gets OK and the first client gets the event.
        let mut pubr = connect(&relay).await;
        let ev: Value = serde_json::from_str(&evs[21].json).unwrap();
        send(&mut pubr, serde_json::json!(["EVENT", ev])).await;
        match next(&mut pubr, 2000).await {
            Frame::Json(v) => assert_eq!(
                v,
                serde_json::json!(["OK", hex::encode(evs[21].id), true, ""])
            ),
            _ => panic!("no OK"),
        }
        match next(&mut ws, 2000).await {
            Frame::Json(v) => assert_eq!(v[2]["id"], hex::encode(evs[21].id)),
            _ => panic!("no live event from socket publish"),
        }
        // A forged id is refused.
        let bad: Value = serde_json::from_str(&with_bad_id(&evs[22]).json).unwrap();
        send(&mut pubr, serde_json::json!(["EVENT", bad])).await;
        match next(&mut pubr, 2000).await {
            Frame::Json(v) => assert_eq!(v[2], false),
            _ => panic!("no OK"),
        }
        // After CLOSE, nothing more arrives; the stored set grew by the two publishes.
        send(&mut ws, serde_json::json!(["CLOSE", "live"])).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        relay.publish(evs[23].clone());
        assert!(matches!(next(&mut ws, 300).await, Frame::Silent));
        send(&mut ws, serde_json::json!(["REQ", "all", {}])).await;
        assert_eq!(collect(&mut ws, "all").await.0.len(), 23);
        assert_eq!(relay.counters().published.load(Ordering::Relaxed), 3);
        relay.stop().await;
    }

    #[tokio::test]
    async fn garbage_out_of_range_bad_sig_huge_and_notice() {
        let evs = events(200);
        let (since, until) = window(&evs);
        let inside: Vec<&GenEvent> = evs
            .iter()
            .filter(|e| e.created_at >= since && e.created_at <= until)
            .collect();
        let bad = vec![with_bad_sig(inside[0]), with_bad_id(inside[1])];
        let b = Behavior {
            out_of_range: 4,
            garbage_frames: 16,
            bad_sig: bad.clone(),
            huge_frame: Some(1 << 20),
            notice_on_req: true,
            ..Default::default()
        };
        let relay = TestRelay::start(evs.clone(), b).await.unwrap();
        let mut ws = connect(&relay).await;
        send(
            &mut ws,
            serde_json::json!(["REQ", "s", {"since": since, "until": until, "limit": 10}]),
        )
        .await;
        let (mut events, mut garbage, mut notices) = (Vec::new(), 0, 0);
        loop {
            match next(&mut ws, 2000).await {
                Frame::Json(v) if v[0] == "EOSE" => break,
                Frame::Json(v) if v[0] == "NOTICE" => notices += 1,
                // Garbage frames never carry our generated content; the fault copies do.
                Frame::Json(v)
                    if v[0] == "EVENT"
                        && v[1] == "s"
                        && v[2].get("sig").is_some()
                        && v[2]["content"] != "garbage" =>
                {
                    events.push(v[2]["created_at"].as_i64().unwrap())
                }
                Frame::End | Frame::Silent => panic!("reply did not end with EOSE"),
                _ => garbage += 1,
            }
        }
        assert_eq!(garbage, 16);
        // The leading NOTICE plus the 1 MiB one.
        assert_eq!(notices, 2);
        // 10 in range + 2 fault copies + 4 outside.
        assert_eq!(events.len(), 16);
        let outside = events.iter().filter(|&&t| t < since || t > until).count();
        assert_eq!(outside, 4);
        assert_eq!(relay.counters().events_sent.load(Ordering::Relaxed), 16);
        // NOTICE + huge + 16 events + 16 garbage + EOSE.
        assert_eq!(relay.counters().frames_sent.load(Ordering::Relaxed), 35);
        relay.stop().await;
    }
}
