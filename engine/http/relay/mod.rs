//! The archive as a read-only Nostr relay, on the HTTP server's own port: `ws://host:port/`.
//!
//! - `REQ` answers the stored events matching its filters (NIP-01, rebuilt exactly as signed), newest first, then `EOSE`; `limit` is
//!   capped at `http.max_limit` (and is that cap when absent). The subscription stays open
//!   until `CLOSE`, so it counts in `http.relay_max_subscriptions`, and gets the matching
//!   events the sink commits after its `EOSE` ([`live`]: the sink's committed feed).
//! - `COUNT` (NIP-45) answers `{"count": n}`, the distinct events matching any filter.
//! - `NEG-OPEN`/`NEG-MSG`/`NEG-CLOSE` (NIP-77): the server side of a negentropy
//!   reconciliation over the (created_at, id) pairs matching the filter, at most
//!   `http.relay_max_neg_ids` of them (a larger set is `NEG-ERR "blocked: ..."`), at most
//!   `http.relay_max_neg_sessions` open on the whole server.
//! - `EVENT` is answered `["OK", id, false, "blocked: read-only archive"]`; anything else
//!   (AUTH, unknown verbs, malformed JSON, binary frames) gets a `NOTICE` saying why, and the
//!   connection keeps serving.
//!
//! Every query uses the REST API's read-only pool (role `bigbrotr_reader`,
//! `statement_timeout`), so a client can neither write nor run unbounded; a query that fails
//! closes its subscription with `CLOSED "error: ..."`.
//!
//! Bounds: message size before parsing (`http.relay_max_message_bytes`; twice that closes the
//! socket unread) and JSON nesting ([`json::MAX_DEPTH`]); filters per request, values per
//! filter; subscriptions and reconciliations per connection; relay connections on the server
//! (`http.relay_max_connections`, each also one of `http.max_connections`); an idle timeout;
//! and a queue of at most `http.relay_max_outbound_bytes` towards a client that does not read,
//! past which the connection is closed. A REQ that finds the queue full gives its database
//! connection back while it waits, and then resumes after the last event sent, so a client
//! slower than the archive holds none of the read pool's few connections.

pub mod live;
pub mod negstore;
pub mod query;

use super::server::ConnSlot;
use super::{AppState, Reader, ReaderConn};
use crate::config;
use axum::extract::rejection::ExtensionRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, State};
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bigbrotr_stages::dvm::jobs::Filter;
use bigbrotr_stages::model::{json, Event};
use bigbrotr_stages::sink::Committed;
use futures_util::{SinkExt, StreamExt};
use negentropy::{Id, Item, Negentropy};
use negstore::SummedStorage;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, watch, OwnedSemaphorePermit, Semaphore};

/// NIPs the endpoint answers, for NIP-11.
pub const SUPPORTED_NIPS: [u16; 4] = [1, 11, 45, 77];

/// Longest subscription id accepted (NIP-01).
const MAX_SUB_ID: usize = 64;

/// Reconciliations one connection may hold at once.
const NEG_PER_CONNECTION: usize = 2;

/// Longest the endpoint waits for a pooled connection before a query is refused.
const CHECKOUT: Duration = Duration::from_secs(5);

/// Longest a closing connection waits for its queued messages to be taken.
const FINAL_FLUSH: Duration = Duration::from_secs(2);

/// Longest an answer waits for room in a client's full outbound queue (at most the idle
/// timeout) before the client is taken as not reading and closed: the query holds one of the
/// API's few database connections meanwhile.
const MAX_STALL: Duration = Duration::from_secs(5);

/// Counters of the relay endpoint.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Relay connections open now.
    pub open: AtomicU64,
    /// Relay connections accepted.
    pub accepted: AtomicU64,
    /// Upgrades refused because `http.relay_max_connections` were open.
    pub refused: AtomicU64,
    /// Connections closed because their outbound queue was full (a client not reading).
    pub slow_closed: AtomicU64,
    /// Connections closed by the idle timeout.
    pub idle_closed: AtomicU64,
    /// REQ subscriptions answered (EOSE sent).
    pub reqs: AtomicU64,
    /// Events sent.
    pub events_sent: AtomicU64,
    /// COUNT requests answered.
    pub counts: AtomicU64,
    /// NIP-77 messages answered (NEG-OPEN and NEG-MSG).
    pub neg_msgs: AtomicU64,
    /// Messages answered with a NOTICE (malformed, unknown, too large).
    pub notices: AtomicU64,
    /// Live events sent after EOSE (also counted in `events_sent`).
    pub live_events: AtomicU64,
    /// Live subscriptions closed because their connection fell behind the feed.
    pub live_lagged: AtomicU64,
    /// Times a REQ found its client's queue full and gave its database connection back
    /// while the client caught up (then went on after the last event sent).
    pub req_stalls: AtomicU64,
}

/// The relay endpoint's settings and shared state.
pub struct Relay {
    name: String,
    description: String,
    max_limit: u64,
    max_subscriptions: usize,
    max_filters: usize,
    max_filter_values: usize,
    max_message_bytes: usize,
    max_outbound_bytes: usize,
    idle_timeout: Duration,
    max_neg_ids: usize,
    frame_limit: u64,
    connections: Arc<Semaphore>,
    neg_sessions: Arc<Semaphore>,
    /// Whether the archive keeps event bodies (`[archive] bodies`): a metadata-only archive
    /// answers COUNT and NIP-77, and refuses REQ.
    bodies: bool,
    /// Whether `event_tags` is complete (asked at most every few seconds).
    tag_index: crate::filter_sql::TagIndexReady,
    stop: watch::Receiver<bool>,
    /// Its counters.
    pub stats: RelayStats,
}

impl Relay {
    /// The endpoint of `[http]`, stopping its connections when `stop` turns true.
    pub fn new(http: &config::Http, bodies: bool, stop: watch::Receiver<bool>) -> Relay {
        // A NEG-MSG carries a frame hex-encoded in a JSON array: keep it within the message
        // size clients are told (max_message_length), and within negentropy's 4096 minimum.
        let frame_limit = u64::try_from(http.relay_max_message_bytes / 2)
            .unwrap_or(u64::MAX)
            .saturating_sub(1024)
            .max(4096);
        Relay {
            name: http.relay_name.clone(),
            description: if bodies {
                http.relay_description.clone()
            } else {
                format!(
                    "{} (metadata-only: no event bodies are kept; COUNT and NIP-77 answer, REQ does not)",
                    http.relay_description
                )
            },
            bodies,
            max_limit: u64::from(http.max_limit.max(1)),
            max_subscriptions: http.relay_max_subscriptions.max(1),
            max_filters: http.relay_max_filters.max(1),
            max_filter_values: http.relay_max_filter_values.max(1),
            max_message_bytes: http.relay_max_message_bytes.max(1024),
            max_outbound_bytes: http.relay_max_outbound_bytes.max(1024),
            idle_timeout: http
                .relay_idle_timeout_ms
                .get()
                .max(Duration::from_millis(1)),
            max_neg_ids: http.relay_max_neg_ids.max(1),
            frame_limit,
            connections: Arc::new(Semaphore::new(http.relay_max_connections.max(1))),
            neg_sessions: Arc::new(Semaphore::new(http.relay_max_neg_sessions.max(1))),
            tag_index: crate::filter_sql::TagIndexReady::default(),
            stop,
            stats: RelayStats::default(),
        }
    }

    /// The NIP-11 document.
    pub fn nip11(&self) -> Value {
        json!({
            "name": self.name,
            "description": self.description,
            "supported_nips": SUPPORTED_NIPS,
            "software": "bigbrotr",
            "version": env!("CARGO_PKG_VERSION"),
            "limitation": {
                "max_message_length": self.max_message_bytes,
                "max_subscriptions": self.max_subscriptions,
                "max_filters": self.max_filters,
                "max_limit": self.max_limit,
                "max_subid_length": MAX_SUB_ID,
                "default_limit": self.max_limit,
                "auth_required": false,
                "payment_required": false,
                "restricted_writes": true,
            },
        })
    }
}

/// `GET /`: the WebSocket relay on an upgrade, its NIP-11 document for `Accept:
/// application/nostr+json`, else a short text saying what this address is.
pub async fn root(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    slot: Result<Extension<ConnSlot>, ExtensionRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let wants_html = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/html"));
    let Some(relay) = s.relay.clone() else {
        if wants_html {
            return axum::response::Redirect::to("dashboard/").into_response();
        }
        return super::api::not_found().await.into_response();
    };
    if let Ok(ws) = ws {
        let Ok(permit) = relay.connections.clone().try_acquire_owned() else {
            relay.stats.refused.fetch_add(1, Relaxed);
            return super::api::ApiError::unavailable(
                "too many relay connections (http.relay_max_connections); try again later",
            )
            .into_response();
        };
        let Some(pool) = s.reader.clone() else {
            return super::api::ApiError::unavailable("the archive is not readable here")
                .into_response();
        };
        let slot = slot.ok().map(|Extension(s)| s);
        let feed = s.engine.pipeline.committed.clone();
        // tungstenite refuses (and closes on) a message over twice the limit before holding
        // it whole; between the two, the message is answered with a NOTICE.
        let hard = relay.max_message_bytes.saturating_mul(2);
        return ws
            .max_message_size(hard)
            .max_frame_size(hard)
            // The writer sends one message at a time and flushes it, so tungstenite's buffer
            // holds at most one message (of any archived size); the queue before it is bounded
            // by `http.relay_max_outbound_bytes`.
            .write_buffer_size(64 << 10)
            .on_upgrade(move |socket| async move {
                relay.stats.accepted.fetch_add(1, Relaxed);
                relay.stats.open.fetch_add(1, Relaxed);
                Session::new(relay.clone(), pool, feed).serve(socket).await;
                relay.stats.open.fetch_sub(1, Relaxed);
                drop(permit);
                drop(slot);
            });
    }
    let wants_nip11 = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/nostr+json"));
    if wants_nip11 {
        return (
            StatusCode::OK,
            [
                (CONTENT_TYPE, "application/nostr+json"),
                (axum::http::header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
                (axum::http::header::ACCESS_CONTROL_ALLOW_HEADERS, "*"),
                (axum::http::header::ACCESS_CONTROL_ALLOW_METHODS, "GET"),
            ],
            relay.nip11().to_string(),
        )
            .into_response();
    }
    if wants_html {
        return axum::response::Redirect::to("dashboard/").into_response();
    }
    (
        StatusCode::OK,
        [(CONTENT_TYPE, "text/plain; charset=utf-8")],
        "bigbrotr: a read-only Nostr relay over this archive (connect a Nostr client to ws:// \
         on this address; NIP-11 with Accept: application/nostr+json). REST API: /openapi.json\n",
    )
        .into_response()
}

/// Why a connection ends early.
#[derive(Debug)]
enum End {
    /// The outbound queue is full: the client does not read.
    Slow,
    /// The writer ended (the client went away).
    Gone,
}

/// Messages towards the client, bounded in queued bytes: a message waits for room at most
/// `stall`, after which the client is taken as not reading and the connection closed.
struct Outbox {
    tx: mpsc::UnboundedSender<(Message, u32)>,
    room: Arc<Semaphore>,
    cap: u32,
    stall: Duration,
}

impl Outbox {
    /// Queues `text` once there is room (a message larger than the whole queue waits for
    /// the queue to empty, then goes alone).
    async fn send(&self, text: String) -> Result<(), End> {
        let n = self.cost(&text);
        match tokio::time::timeout(self.stall, self.room.acquire_many(n)).await {
            Ok(Ok(p)) => p.forget(),
            Ok(Err(_)) => return Err(End::Gone),
            Err(_) => return Err(End::Slow),
        }
        self.tx
            .send((Message::Text(text.into()), n))
            .map_err(|_| End::Gone)
    }

    /// The queue room `text` takes: its size, at most the whole queue.
    fn cost(&self, text: &str) -> u32 {
        u32::try_from(text.len())
            .unwrap_or(u32::MAX)
            .clamp(1, self.cap)
    }

    /// Queues `text` if there is room now; else gives it back (`Ok(Some)`) to be sent with
    /// [`Outbox::send`] once the caller has let go of what it must not hold while waiting.
    fn try_send(&self, text: String) -> Result<Option<String>, End> {
        let n = self.cost(&text);
        match self.room.try_acquire_many(n) {
            Ok(p) => p.forget(),
            Err(tokio::sync::TryAcquireError::NoPermits) => return Ok(Some(text)),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(End::Gone),
        }
        self.tx
            .send((Message::Text(text.into()), n))
            .map(|()| None)
            .map_err(|_| End::Gone)
    }
}

/// How a stretch of a REQ's stored events ended.
enum Stretch {
    /// The filter's events are all sent.
    Done,
    /// The client's queue is full: `msg` (the event at `at`, the `taken`-th row of the
    /// stretch) waits to be sent, and the rest comes after `at`.
    Full {
        msg: String,
        at: (i64, Vec<u8>),
        taken: u64,
    },
    /// The archive failed: the reason to send in `CLOSED`.
    Failed(String),
}

/// Streams the stored events of `f` (at most `limit`, after `before`) into `out` while the
/// client's queue has room; `seen` drops the events an earlier filter of the REQ sent.
#[allow(clippy::too_many_arguments)]
async fn stretch(
    relay: &Relay,
    conn: &query::Conn<'_>,
    f: &Filter,
    tag_index: bool,
    limit: u64,
    before: Option<(i64, Vec<u8>)>,
    prefix: &str,
    mut seen: Option<&mut HashSet<[u8; 32]>>,
    out: &Outbox,
) -> Result<Stretch, End> {
    let rows = match query::events(conn, f, tag_index, limit, before).await {
        Ok(r) => r,
        Err(e) => return Ok(Stretch::Failed(db_reason(&e))),
    };
    let mut rows = std::pin::pin!(rows);
    let mut taken = 0u64;
    loop {
        let row = match rows.next().await {
            None => return Ok(Stretch::Done),
            Some(Ok(r)) => r,
            Some(Err(e)) => return Ok(Stretch::Failed(db_reason(&e))),
        };
        taken += 1;
        let (ev, at) = match (query::event_json(&row), query::position(&row)) {
            (Ok(Some(ev)), Ok(at)) => (ev, at),
            (Ok(None), _) => continue,
            (Err(e), _) | (_, Err(e)) => return Ok(Stretch::Failed(db_reason(&e))),
        };
        drop(row);
        let (id, json) = ev;
        if let Some(seen) = seen.as_deref_mut() {
            if !seen.insert(id) {
                continue;
            }
        }
        let mut msg = String::with_capacity(prefix.len() + json.len() + 1);
        msg.push_str(prefix);
        msg.push_str(&json);
        msg.push(']');
        match out.try_send(msg)? {
            None => {
                relay.stats.events_sent.fetch_add(1, Relaxed);
            }
            // Dropping the stream mid-way leaves the rest of the rows to the connection,
            // which discards them.
            Some(msg) => return Ok(Stretch::Full { msg, at, taken }),
        }
    }
}

/// One NIP-77 reconciliation, holding its share of `http.relay_max_neg_sessions`.
struct NegSession {
    neg: Negentropy<'static, SummedStorage>,
    _permit: OwnedSemaphorePermit,
}

/// One relay connection's state.
struct Session {
    relay: Arc<Relay>,
    pool: Reader,
    /// Open subscriptions and their filters (empty while the REQ's stored events are sent).
    subs: HashMap<String, Vec<Filter>>,
    negs: HashMap<String, NegSession>,
    /// The sink's feed, subscribed to while a subscription is open.
    feed: Committed,
    live: Option<broadcast::Receiver<Arc<[Event]>>>,
}

/// What woke a connection up.
enum Wake {
    Client(Result<Option<Result<Message, axum::Error>>, tokio::time::error::Elapsed>),
    Live(Result<Arc<[Event]>, RecvError>),
}

/// The next committed batch, or never when the connection holds no subscription.
async fn next_live(
    live: &mut Option<broadcast::Receiver<Arc<[Event]>>>,
) -> Result<Arc<[Event]>, RecvError> {
    match live {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// `["NOTICE", text]`.
fn notice(text: &str) -> String {
    json!(["NOTICE", text]).to_string()
}

/// `["CLOSED", sub, text]`.
fn closed(sub: &str, text: &str) -> String {
    json!(["CLOSED", sub, text]).to_string()
}

/// `["NEG-ERR", sub, text]`.
fn neg_err(sub: &str, text: &str) -> String {
    json!(["NEG-ERR", sub, text]).to_string()
}

/// A connection of the read-only pool, or the reason to send.
async fn checkout(pool: &Reader) -> Result<ReaderConn<'_>, String> {
    match pool.get(CHECKOUT).await {
        Ok(c) => Ok(c),
        Err(bb8::RunError::User(e)) => Err(db_reason(&e)),
        Err(bb8::RunError::TimedOut) => Err("error: the archive is busy; try again later".into()),
    }
}

impl Relay {
    /// Whether tag filters can use the tag index (not asked for filters without tags).
    async fn tag_index(&self, conn: &query::Conn<'_>, filters: &[Filter]) -> bool {
        if filters.iter().all(|f| f.tags.is_empty()) {
            return false;
        }
        self.tag_index.get(conn).await
    }
}

/// What a client is told about a failed query.
fn db_reason(e: &tokio_postgres::Error) -> String {
    format!("error: {}", super::api::ApiError::from_db(e).message())
}

impl Session {
    fn new(relay: Arc<Relay>, pool: Reader, feed: Committed) -> Session {
        Session {
            relay,
            pool,
            subs: HashMap::new(),
            negs: HashMap::new(),
            feed,
            live: None,
        }
    }

    /// Sends the events of a committed batch that match an open subscription; on a lag,
    /// closes the live subscriptions with the reason (their clients resubscribe with `since`).
    async fn deliver(
        &mut self,
        batch: Result<Arc<[Event]>, RecvError>,
        out: &Outbox,
    ) -> Result<(), End> {
        let events = match batch {
            Ok(b) => b,
            Err(RecvError::Closed) => {
                self.live = None;
                return Ok(());
            }
            Err(RecvError::Lagged(n)) => {
                let live: Vec<String> = self
                    .subs
                    .iter()
                    .filter(|(_, f)| !f.is_empty())
                    .map(|(s, _)| s.clone())
                    .collect();
                for sub in live {
                    self.subs.remove(&sub);
                    self.relay.stats.live_lagged.fetch_add(1, Relaxed);
                    out.send(closed(
                        &sub,
                        &format!("error: this connection fell behind the archive's live events ({n} batches missed); subscribe again with since to catch up"),
                    ))
                    .await?;
                }
                if self.subs.is_empty() {
                    self.live = None;
                }
                return Ok(());
            }
        };
        for ev in events.iter() {
            let mut keys = live::EventKeys::new(ev);
            let mut json: Option<String> = None;
            for (sub, filters) in &self.subs {
                if !filters.iter().any(|f| live::matches(f, &mut keys)) {
                    continue;
                }
                let body = json.get_or_insert_with(|| ev.to_json());
                out.send(format!("[\"EVENT\",{},{body}]", json!(sub)))
                    .await?;
                self.relay.stats.events_sent.fetch_add(1, Relaxed);
                self.relay.stats.live_events.fetch_add(1, Relaxed);
            }
        }
        Ok(())
    }

    /// Serves the socket until the client leaves, idles past the timeout, stops reading, or
    /// the server stops.
    async fn serve(mut self, socket: WebSocket) {
        let (mut sink, mut stream) = socket.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<(Message, u32)>();
        let cap = u32::try_from(self.relay.max_outbound_bytes).unwrap_or(u32::MAX);
        let room = Arc::new(Semaphore::new(cap as usize));
        let out = Outbox {
            tx,
            room: room.clone(),
            cap,
            stall: self.relay.idle_timeout.min(MAX_STALL),
        };
        let writer = tokio::spawn(async move {
            while let Some((msg, n)) = rx.recv().await {
                if sink.send(msg).await.is_err() {
                    break;
                }
                room.add_permits(n as usize);
            }
            let _ = sink.close().await;
        });
        let mut stop = self.relay.stop.clone();
        let idle = self.relay.idle_timeout;
        let end = loop {
            let wake = tokio::select! {
                n = tokio::time::timeout(idle, stream.next()) => Wake::Client(n),
                b = next_live(&mut self.live) => Wake::Live(b),
                // A dropped server handle detaches the server: only a real stop ends sockets.
                _ = async {
                    if stop.wait_for(|s| *s).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                } => break None,
                _ = out.tx.closed() => break Some(End::Gone),
            };
            let next = match wake {
                Wake::Client(n) => n,
                Wake::Live(b) => match self.deliver(b, &out).await {
                    Ok(()) => continue,
                    Err(e) => break Some(e),
                },
            };
            let msg = match next {
                Err(_) => {
                    self.relay.stats.idle_closed.fetch_add(1, Relaxed);
                    let _ = out
                        .send(notice("closing: idle past the relay's timeout"))
                        .await;
                    break None;
                }
                Ok(None) | Ok(Some(Err(_))) => break Some(End::Gone),
                Ok(Some(Ok(m))) => m,
            };
            let r = match msg {
                Message::Text(t) => self.handle(t.as_str(), &out).await,
                Message::Binary(_) => {
                    self.relay.stats.notices.fetch_add(1, Relaxed);
                    out.send(notice(
                        "error: binary frames are not supported; send JSON text",
                    ))
                    .await
                }
                Message::Close(_) => break Some(End::Gone),
                // tungstenite answers pings itself.
                Message::Ping(_) | Message::Pong(_) => Ok(()),
            };
            if let Err(e) = r {
                break Some(e);
            }
        };
        if matches!(end, Some(End::Slow)) {
            self.relay.stats.slow_closed.fetch_add(1, Relaxed);
            tracing::debug!("relay client does not read its answers: closed");
            writer.abort();
        } else {
            // Let what is queued go (a NOTICE, the end of an answer), then close; a client
            // that does not take it within FINAL_FLUSH is dropped.
            drop(out);
            let abort = writer.abort_handle();
            if tokio::time::timeout(idle.min(FINAL_FLUSH), writer)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }

    /// Answers one text message.
    async fn handle(&mut self, text: &str, out: &Outbox) -> Result<(), End> {
        let relay = self.relay.clone();
        if text.len() > relay.max_message_bytes {
            relay.stats.notices.fetch_add(1, Relaxed);
            return out
                .send(notice(&format!(
                    "error: message of {} bytes is larger than the relay's limit of {} bytes",
                    text.len(),
                    relay.max_message_bytes
                )))
                .await;
        }
        if json::check_depth(text.as_bytes()).is_err() {
            relay.stats.notices.fetch_add(1, Relaxed);
            return out
                .send(notice(&format!(
                    "error: JSON nested deeper than {} levels",
                    json::MAX_DEPTH
                )))
                .await;
        }
        let v: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                relay.stats.notices.fetch_add(1, Relaxed);
                return out
                    .send(notice(&format!("error: message is not valid JSON: {e}")))
                    .await;
            }
        };
        let Some(arr) = v.as_array() else {
            relay.stats.notices.fetch_add(1, Relaxed);
            return out
                .send(notice(
                    "error: a message must be a JSON array whose first element is its type",
                ))
                .await;
        };
        let verb = arr.first().and_then(Value::as_str).unwrap_or("");
        match verb {
            "REQ" | "COUNT" | "NEG-OPEN" | "NEG-MSG" | "NEG-CLOSE" | "CLOSE" => {
                let Some(sub) = arr
                    .get(1)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty() && s.chars().count() <= MAX_SUB_ID)
                else {
                    relay.stats.notices.fetch_add(1, Relaxed);
                    return out.send(notice(&format!(
                        "error: {verb} needs a subscription id, a string of 1 to {MAX_SUB_ID} characters"
                    ))).await;
                };
                let sub = sub.to_string();
                match verb {
                    "REQ" => self.req(&sub, &arr[2..], out).await,
                    "COUNT" => self.count(&sub, &arr[2..], out).await,
                    "NEG-OPEN" => self.neg_open(&sub, &arr[2..], out).await,
                    "NEG-MSG" => self.neg_msg(&sub, &arr[2..], out).await,
                    "NEG-CLOSE" => {
                        self.negs.remove(&sub);
                        Ok(())
                    }
                    _ => {
                        self.subs.remove(&sub);
                        if self.subs.is_empty() {
                            self.live = None;
                        }
                        Ok(())
                    }
                }
            }
            "EVENT" => {
                let id = arr
                    .get(1)
                    .and_then(|e| e.get("id"))
                    .and_then(Value::as_str)
                    .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
                    .unwrap_or("");
                out.send(json!(["OK", id, false, "blocked: read-only archive"]).to_string())
                    .await
            }
            "AUTH" => {
                relay.stats.notices.fetch_add(1, Relaxed);
                out.send(notice(
                    "AUTH is not needed: this relay is a read-only archive open to everyone",
                ))
                .await
            }
            _ => {
                relay.stats.notices.fetch_add(1, Relaxed);
                let shown: String = verb.chars().take(32).collect();
                out.send(notice(&format!(
                    "error: unknown message type {shown:?}; this relay answers REQ, CLOSE, COUNT, NEG-OPEN, NEG-MSG, NEG-CLOSE (EVENT is refused: read-only archive)"
                ))).await
            }
        }
    }

    /// The filters of a REQ or COUNT, or the CLOSED reason.
    fn filters(&self, raw: &[Value]) -> Result<Vec<Filter>, String> {
        let relay = &self.relay;
        if raw.is_empty() {
            return Err("invalid: at least one filter is needed".into());
        }
        if raw.len() > relay.max_filters {
            return Err(format!(
                "invalid: {} filters; at most {} in one request",
                raw.len(),
                relay.max_filters
            ));
        }
        raw.iter()
            .map(|v| {
                query::parse_filter(v, relay.max_limit, relay.max_filter_values)
                    .map_err(|e| format!("invalid: {e}"))
            })
            .collect()
    }

    async fn req(&mut self, sub: &str, raw: &[Value], out: &Outbox) -> Result<(), End> {
        let relay = self.relay.clone();
        if !relay.bodies {
            return out
                .send(closed(
                    sub,
                    "unsupported: this archive is metadata-only and keeps no event bodies; COUNT and NEG-OPEN work",
                ))
                .await;
        }
        if !self.subs.contains_key(sub) && self.subs.len() >= relay.max_subscriptions {
            return out.send(closed(
                sub,
                &format!(
                    "error: too many subscriptions: at most {} open on one connection; CLOSE one first",
                    relay.max_subscriptions
                ),
            )).await;
        }
        let filters = match self.filters(raw) {
            Ok(f) => f,
            Err(why) => {
                self.subs.remove(sub);
                return out.send(closed(sub, &why)).await;
            }
        };
        // Pending (no filters) until EOSE: live events committed meanwhile wait in the feed.
        self.subs.insert(sub.to_string(), Vec::new());
        if self.live.is_none() {
            self.live = Some(self.feed.subscribe());
        }
        let pool = self.pool.clone();
        let first = match checkout(&pool).await {
            Ok(c) => c,
            Err(why) => {
                self.subs.remove(sub);
                return out.send(closed(sub, &why)).await;
            }
        };
        let tag_index = relay.tag_index(&first, &filters).await;
        // Taken again after a pause on a full client queue (see `Stretch::Full`).
        let mut conn = Some(first);
        let prefix = format!("[\"EVENT\",{},", json!(sub));
        let mut seen: HashSet<[u8; 32]> = HashSet::new();
        let multi = filters.len() > 1;
        for f in &filters {
            let mut left = f.limit.unwrap_or(relay.max_limit).min(relay.max_limit);
            let mut before = None;
            while left > 0 {
                let c = match conn {
                    Some(ref c) => c,
                    None => match checkout(&pool).await {
                        Ok(c) => conn.insert(c),
                        Err(why) => {
                            self.subs.remove(sub);
                            return out.send(closed(sub, &why)).await;
                        }
                    },
                };
                let seen = multi.then_some(&mut seen);
                match stretch(
                    &relay,
                    c,
                    f,
                    tag_index,
                    left,
                    before.take(),
                    &prefix,
                    seen,
                    out,
                )
                .await?
                {
                    Stretch::Done => break,
                    Stretch::Full { msg, at, taken } => {
                        // A client slower than the archive must not hold one of its few read
                        // connections while it catches up (a few such clients would stall
                        // every REST and relay reader for as long as they do not read): give
                        // it back, wait for room, then go on after the event just sent.
                        conn = None;
                        relay.stats.req_stalls.fetch_add(1, Relaxed);
                        out.send(msg).await?;
                        relay.stats.events_sent.fetch_add(1, Relaxed);
                        left = left.saturating_sub(taken);
                        before = Some(at);
                    }
                    Stretch::Failed(why) => {
                        drop(conn.take());
                        self.subs.remove(sub);
                        return out.send(closed(sub, &why)).await;
                    }
                }
            }
        }
        drop(conn);
        relay.stats.reqs.fetch_add(1, Relaxed);
        out.send(json!(["EOSE", sub]).to_string()).await?;
        // Open until CLOSE: from now on, committed events matching a filter are sent.
        self.subs.insert(sub.to_string(), filters);
        Ok(())
    }

    async fn count(&mut self, sub: &str, raw: &[Value], out: &Outbox) -> Result<(), End> {
        let relay = self.relay.clone();
        let filters = match self.filters(raw) {
            Ok(f) => f,
            Err(why) => return out.send(closed(sub, &why)).await,
        };
        let pool = self.pool.clone();
        let conn = match checkout(&pool).await {
            Ok(c) => c,
            Err(why) => return out.send(closed(sub, &why)).await,
        };
        let tag_index = relay.tag_index(&conn, &filters).await;
        let answer = match query::count(&conn, &filters, tag_index).await {
            Ok(n) => {
                self.relay.stats.counts.fetch_add(1, Relaxed);
                json!(["COUNT", sub, {"count": n}]).to_string()
            }
            Err(e) => closed(sub, &db_reason(&e)),
        };
        // Given back before the answer may wait for room in a slow client's queue.
        drop(conn);
        out.send(answer).await
    }

    async fn neg_open(&mut self, sub: &str, raw: &[Value], out: &Outbox) -> Result<(), End> {
        let relay = self.relay.clone();
        // A NEG-OPEN on an open id replaces that reconciliation (NIP-77).
        self.negs.remove(sub);
        let (Some(filter), Some(initial), 2) =
            (raw.first(), raw.get(1).and_then(Value::as_str), raw.len())
        else {
            return out.send(neg_err(
                sub,
                "error: NEG-OPEN takes a subscription id, one filter and an initial message (hex)",
            )).await;
        };
        let Ok(initial) = hex::decode(initial) else {
            return out
                .send(neg_err(sub, "error: the initial message is not hex"))
                .await;
        };
        let filter = match query::parse_filter(filter, u64::MAX, relay.max_filter_values) {
            Ok(f) => f,
            Err(e) => return out.send(neg_err(sub, &format!("invalid: {e}"))).await,
        };
        if self.negs.len() >= NEG_PER_CONNECTION {
            return out.send(neg_err(
                sub,
                &format!("blocked: at most {NEG_PER_CONNECTION} reconciliations open on one connection; NEG-CLOSE one first"),
            )).await;
        }
        let Ok(permit) = relay.neg_sessions.clone().try_acquire_owned() else {
            return out
                .send(neg_err(
                    sub,
                    "blocked: too many reconciliations in progress on this server; try again later",
                ))
                .await;
        };
        let pool = self.pool.clone();
        let conn = match checkout(&pool).await {
            Ok(c) => c,
            Err(why) => return out.send(neg_err(sub, &why)).await,
        };
        let tag_index = relay.tag_index(&conn, std::slice::from_ref(&filter)).await;
        let items = query::neg_items(&conn, &filter, tag_index, relay.max_neg_ids).await;
        // Given back before any answer may wait for room in a slow client's queue.
        drop(conn);
        let items = match items {
            Ok(i) => i,
            Err(e) => return out.send(neg_err(sub, &db_reason(&e))).await,
        };
        if items.len() > relay.max_neg_ids {
            return out
                .send(neg_err(
                    sub,
                    &format!(
                        "blocked: more than {} events match this filter; narrow it (since/until)",
                        relay.max_neg_ids
                    ),
                ))
                .await;
        }
        let storage = SummedStorage::new(
            items
                .into_iter()
                .map(|(ts, id)| Item::with_timestamp_and_id(ts, Id::from_byte_array(id)))
                .collect(),
        );
        let neg = Negentropy::owned(storage, relay.frame_limit);
        let mut neg = match neg {
            Ok(n) => n,
            Err(e) => return out.send(neg_err(sub, &format!("error: {e}"))).await,
        };
        match neg.reconcile(&initial) {
            Ok(reply) => {
                relay.stats.neg_msgs.fetch_add(1, Relaxed);
                self.negs.insert(
                    sub.to_string(),
                    NegSession {
                        neg,
                        _permit: permit,
                    },
                );
                out.send(json!(["NEG-MSG", sub, hex::encode(reply)]).to_string())
                    .await
            }
            Err(e) => out.send(neg_err(sub, &format!("error: {e}"))).await,
        }
    }

    async fn neg_msg(&mut self, sub: &str, raw: &[Value], out: &Outbox) -> Result<(), End> {
        let Some(session) = self.negs.get_mut(sub) else {
            return out
                .send(neg_err(
                    sub,
                    "closed: no reconciliation is open with this id (send NEG-OPEN)",
                ))
                .await;
        };
        let Some(Ok(msg)) = raw.first().and_then(Value::as_str).map(hex::decode) else {
            self.negs.remove(sub);
            return out
                .send(neg_err(sub, "error: NEG-MSG takes a message in hex"))
                .await;
        };
        match session.neg.reconcile(&msg) {
            Ok(reply) => {
                self.relay.stats.neg_msgs.fetch_add(1, Relaxed);
                out.send(json!(["NEG-MSG", sub, hex::encode(reply)]).to_string())
                    .await
            }
            Err(e) => {
                self.negs.remove(sub);
                out.send(neg_err(sub, &format!("error: {e}"))).await
            }
        }
    }
}
