//! The DVM side stage (NIP-90): job requests in from the configured relays, signed results
//! and feedback out to them.
//!
//! One task per relay keeps a WebSocket open, subscribes to kinds 5000–5999 tagged `#p` with
//! our key, forwards each request to the dispatcher and sends out whatever the dispatcher and
//! the jobs publish. The dispatcher checks each request (id and signature, addressed to us,
//! not seen before, not encrypted, a supported kind with valid parameters), answers bad ones
//! at once with a kind 7000 `error` feedback, and starts valid ones as jobs on a [`Backend`]
//! (the engine's archive queries): at most `max_concurrent_jobs` run, at most
//! `max_queued_jobs` wait (beyond: a `busy` error), each bounded by `job_timeout`. Each
//! customer (request pubkey) has a token bucket of requests and a bound on its jobs running or
//! waiting ([`limits`]); beyond either, a `rate-limited` error.
//!
//! The stage knows nothing of the database: [`Backend`] answers a [`Job`] with the result's
//! content, or with a message for the customer.

pub mod jobs;
pub mod limits;

pub use jobs::{Filter, InvalidJob, Job, Limits};
pub use limits::CustomerLimits;

use crate::model::sign::{sign, SignedEvent};
use crate::model::{now_secs, Event, RelayUrl};
use crate::relay::transport::{self, TransportConfig, Ws};
use crate::relay::OkReply;
use crate::verify::{Gate, Verifier};
use futures_util::{SinkExt, StreamExt};
use limits::{CustomerJob, Customers, Limited};
use secp256k1::Keypair;
use serde_json::Value;
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

/// The subscription id of the job request subscription on every relay.
const SUB_ID: &str = "bigbrotr-dvm";
/// Requests forwarded by the relay tasks and not yet checked by the dispatcher. Each holds
/// a frame of at most twice `max_request_bytes`, which bounds the memory they take.
const INCOMING_CHANNEL: usize = 64;
/// Events waiting to be sent to one relay; beyond, new ones are dropped (and counted).
const OUTBOX_CHANNEL: usize = 256;
/// Request ids remembered to answer each request once, whichever relays deliver it.
const SEEN_CAPACITY: usize = 65_536;
/// A job still running this long after it arrived gets a `processing` feedback.
const PROCESSING_AFTER: Duration = Duration::from_secs(2);
/// Ping interval; a connection silent for three intervals is considered dead.
const PING_EVERY: Duration = Duration::from_secs(30);
/// Reconnection backoff: first wait, and the longest.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A connection that lived this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// After a reconnection, requests this much older than the last frame seen are asked again
/// (duplicates are recognised by id).
const RESUBSCRIBE_OVERLAP: i64 = 60;
/// Longest wait for the relay tasks and the dispatcher to end after a stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Answers jobs; the engine implements it over the archive.
pub trait Backend: Send + Sync + 'static {
    /// The job's result, or a message for the customer's error feedback.
    fn run(&self, job: &Job) -> impl Future<Output = Result<Answer, String>> + Send;
}

/// A job's result: the content of the result event and tags added to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// The result event's content.
    pub content: String,
    /// Tags appended after the NIP-90 ones (e.g. `["truncated", ...]`).
    pub tags: Vec<Vec<String>>,
}

impl From<String> for Answer {
    fn from(content: String) -> Answer {
        Answer {
            content,
            tags: Vec::new(),
        }
    }
}

/// The NIP-89 announcement (kind 31990) published on every relay when connected.
#[derive(Debug, Clone)]
pub struct Announcement {
    /// The `d` tag: identifies this handler among the key's announcements.
    pub identifier: String,
    /// Display name (content `name`).
    pub name: String,
    /// Description (content `about`).
    pub about: String,
}

/// Everything the stage needs.
#[derive(Debug, Clone)]
pub struct DvmSettings {
    /// Signs results, feedback and the announcement; requests must `p`-tag its public key.
    pub keypair: Keypair,
    /// Where requests are read and answers published.
    pub relays: Vec<RelayUrl>,
    /// Socket limits and proxy.
    pub transport: TransportConfig,
    /// Budget of one connection attempt.
    pub connect_timeout: Duration,
    /// Budget of one job once it runs.
    pub job_timeout: Duration,
    /// Jobs running at once.
    pub max_concurrent_jobs: usize,
    /// Jobs waiting for a slot; a request beyond gets a `busy` error.
    pub max_queued_jobs: usize,
    /// Per-customer request rate and jobs; beyond, a `rate-limited` error.
    pub customers: CustomerLimits,
    /// Largest request event (its JSON) accepted; results embed it in their `request` tag.
    pub max_request_bytes: usize,
    /// Bounds on each job's parameters.
    pub limits: Limits,
    /// Publish a NIP-89 announcement; `None` = do not.
    pub announce: Option<Announcement>,
    /// Oldest request `created_at` asked from the relays (normally the start time).
    pub since: i64,
}

/// What the DVM did, for logs, metrics and tests.
#[derive(Debug, Default)]
pub struct DvmStats {
    /// WebSocket connections opened.
    pub connections: AtomicU64,
    /// Connection attempts that failed.
    pub connect_failures: AtomicU64,
    /// Request events received (every relay's copy).
    pub received: AtomicU64,
    /// Received events that are not events, or not of a request kind.
    pub malformed: AtomicU64,
    /// Frames over twice `max_request_bytes`, dropped unread (smaller requests over the
    /// limit get an error feedback instead).
    pub oversized: AtomicU64,
    /// Requests whose id or signature does not verify (ignored).
    pub bad_signature: AtomicU64,
    /// Requests without our key in a `p` tag (ignored).
    pub not_for_us: AtomicU64,
    /// Copies of requests already handled (ignored).
    pub duplicates: AtomicU64,
    /// Requests answered with an error feedback before running (bad parameters, encryption,
    /// unsupported kind, too large).
    pub refused: AtomicU64,
    /// Requests answered with a `busy` error (every slot and queue place taken).
    pub busy: AtomicU64,
    /// Requests answered with a `rate-limited` error (the customer's bucket was empty or it
    /// had its most jobs running or waiting).
    pub rate_limited: AtomicU64,
    /// Jobs running or waiting now.
    pub in_flight: AtomicU64,
    /// The most jobs ever running or waiting at once (never above `max_concurrent_jobs +
    /// max_queued_jobs`).
    pub in_flight_peak: AtomicU64,
    /// Customers whose limits are remembered now (at most `max_customers`).
    pub customers: AtomicU64,
    /// Jobs started.
    pub jobs_started: AtomicU64,
    /// Jobs answered with a result.
    pub jobs_succeeded: AtomicU64,
    /// Jobs answered with an error feedback from the backend.
    pub jobs_failed: AtomicU64,
    /// Jobs that ran past `job_timeout`.
    pub jobs_timed_out: AtomicU64,
    /// Events the relays accepted (`OK true`).
    pub published: AtomicU64,
    /// Events the relays refused (`OK false`).
    pub publish_rejected: AtomicU64,
    /// Events dropped because a relay's outbox was full (relay down or slow).
    pub publish_dropped: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

/// State shared by the relay tasks, the dispatcher and the jobs.
struct Ctx {
    settings: DvmSettings,
    stats: Arc<DvmStats>,
    pubkey_hex: String,
    outboxes: Vec<flume::Sender<Arc<SignedEvent>>>,
    announcement: Option<Arc<SignedEvent>>,
}

impl Ctx {
    /// Queues `ev` for every relay; a full outbox drops it for that relay.
    fn publish(&self, ev: SignedEvent) {
        let ev = Arc::new(ev);
        for tx in &self.outboxes {
            if tx.try_send(ev.clone()).is_err() {
                inc(&self.stats.publish_dropped);
            }
        }
    }
}

/// A request that passed the checks of who sent it and to whom.
struct Request {
    id_hex: String,
    customer: [u8; 32],
    customer_hex: String,
    kind: u16,
    tags: Vec<Vec<String>>,
    json: String,
    relay: String,
}

impl Request {
    fn reply_tags(&self) -> Vec<Vec<String>> {
        vec![
            vec!["e".into(), self.id_hex.clone(), self.relay.clone()],
            vec!["p".into(), self.customer_hex.clone()],
        ]
    }

    /// The result event: `request`, `e`, `p`, the request's `i` tags, then the answer's.
    fn result(&self, keypair: &Keypair, answer: Answer) -> SignedEvent {
        let mut tags = vec![vec!["request".to_string(), self.json.clone()]];
        tags.extend(self.reply_tags());
        tags.extend(
            self.tags
                .iter()
                .filter(|t| t.first().is_some_and(|n| n == "i"))
                .cloned(),
        );
        tags.extend(answer.tags);
        sign(
            keypair,
            now_secs(),
            jobs::result_kind(self.kind),
            &tags,
            &answer.content,
        )
    }

    /// A kind 7000 feedback with `status` and its message.
    fn feedback(&self, keypair: &Keypair, status: &str, message: &str) -> SignedEvent {
        let mut tags = vec![vec![
            "status".to_string(),
            status.to_string(),
            message.to_string(),
        ]];
        tags.extend(self.reply_tags());
        sign(keypair, now_secs(), jobs::KIND_FEEDBACK, &tags, "")
    }
}

/// The NIP-89 kind 31990 event: `d`, one `k` per supported kind; content = name and about.
pub fn announcement_event(keypair: &Keypair, a: &Announcement, created_at: i64) -> SignedEvent {
    let mut tags = vec![vec!["d".to_string(), a.identifier.clone()]];
    tags.extend(
        jobs::SUPPORTED
            .iter()
            .map(|k| vec!["k".to_string(), k.to_string()]),
    );
    let content = serde_json::json!({"name": a.name, "about": a.about}).to_string();
    sign(
        keypair,
        created_at,
        jobs::KIND_HANDLER_INFO,
        &tags,
        &content,
    )
}

/// Request ids already handled: a bounded FIFO set.
struct SeenIds {
    set: HashSet<[u8; 32]>,
    order: VecDeque<[u8; 32]>,
    cap: usize,
}

impl SeenIds {
    fn new(cap: usize) -> SeenIds {
        SeenIds {
            set: HashSet::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// False when `id` was seen already.
    fn insert(&mut self, id: [u8; 32]) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

/// One request event as a relay delivered it.
struct Incoming {
    relay: String,
    event: Value,
}

/// Runs the DVM until `stop` turns true: one task per relay and the dispatcher.
pub async fn run<B: Backend>(
    settings: DvmSettings,
    backend: Arc<B>,
    stats: Arc<DvmStats>,
    mut stop: watch::Receiver<bool>,
) {
    let pubkey_hex = hex::encode(settings.keypair.x_only_public_key().0.to_byte_array());
    let announcement = settings
        .announce
        .as_ref()
        .map(|a| Arc::new(announcement_event(&settings.keypair, a, now_secs())));
    let (in_tx, in_rx) = flume::bounded::<Incoming>(INCOMING_CHANNEL);
    let mut outbox_rx = Vec::new();
    let mut outboxes = Vec::new();
    for _ in &settings.relays {
        let (tx, rx) = flume::bounded(OUTBOX_CHANNEL);
        outboxes.push(tx);
        outbox_rx.push(rx);
    }
    let ctx = Arc::new(Ctx {
        settings,
        stats,
        pubkey_hex,
        outboxes,
        announcement,
    });
    let mut relays = JoinSet::new();
    for (url, rx) in ctx.settings.relays.iter().zip(outbox_rx) {
        relays.spawn(relay_loop(
            url.clone(),
            ctx.clone(),
            rx,
            in_tx.clone(),
            stop.clone(),
        ));
    }
    drop(in_tx);
    let dispatcher = tokio::spawn(dispatch(ctx, backend, in_rx));
    // A dropped sender means the same as a stop.
    let _ = stop.wait_for(|s| *s).await;
    // The relay tasks see the stop too and close their sockets; the dispatcher ends when the
    // last of them is gone, dropping the jobs still running (nobody would get their results).
    let drain = async {
        while relays.join_next().await.is_some() {}
        let _ = dispatcher.await;
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        relays.shutdown().await;
    }
}

/// Checks requests and starts jobs until every relay task is gone.
async fn dispatch<B: Backend>(ctx: Arc<Ctx>, backend: Arc<B>, incoming: flume::Receiver<Incoming>) {
    let mut verifier = Verifier::new(Arc::new(Gate::new(1024)), rand::random(), 1024);
    let mut seen = SeenIds::new(SEEN_CAPACITY);
    let slots = Arc::new(Semaphore::new(ctx.settings.max_concurrent_jobs.max(1)));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut customers = Customers::new(ctx.settings.customers.clone());
    let mut jobs = JoinSet::new();
    while let Ok(inc_req) = incoming.recv_async().await {
        while jobs.try_join_next().is_some() {}
        let Some(req) = admit(&ctx, &mut verifier, &mut seen, inc_req) else {
            continue;
        };
        let keypair = &ctx.settings.keypair;
        let limited = |why: Limited| {
            inc(&ctx.stats.rate_limited);
            let msg = why.message(&ctx.settings.customers);
            tracing::debug!(id = %req.id_hex, customer = %req.customer_hex, reason = %msg, "DVM: request rate-limited");
            ctx.publish(req.feedback(keypair, "error", &msg));
        };
        // Every request addressed to us costs its customer a token, valid or not: parsing
        // and answering cost too.
        let taken = customers.take(req.customer, Instant::now());
        ctx.stats.customers.store(customers.len() as u64, Relaxed);
        if let Err(why) = taken {
            limited(why);
            continue;
        }
        let refuse = |why: String| {
            inc(&ctx.stats.refused);
            tracing::debug!(id = %req.id_hex, reason = %why, "DVM: request refused");
            ctx.publish(req.feedback(keypair, "error", &why));
        };
        if req.json.len() > ctx.settings.max_request_bytes {
            refuse(format!(
                "request too large: {} bytes, at most {}",
                req.json.len(),
                ctx.settings.max_request_bytes
            ));
            continue;
        }
        if req
            .tags
            .iter()
            .any(|t| t.first().is_some_and(|n| n == "encrypted"))
        {
            refuse("encryption not supported".into());
            continue;
        }
        let job = match jobs::parse_job(req.kind, &req.tags, &ctx.settings.limits) {
            Ok(j) => j,
            Err(why) => {
                refuse(why.0);
                continue;
            }
        };
        let cap = ctx.settings.max_concurrent_jobs.max(1) + ctx.settings.max_queued_jobs;
        if in_flight.load(Relaxed) >= cap {
            inc(&ctx.stats.busy);
            ctx.publish(req.feedback(
                keypair,
                "error",
                &format!("busy: {cap} jobs running or waiting; try again later"),
            ));
            continue;
        }
        let customer_job = match customers.start_job(req.customer, Instant::now()) {
            Ok(j) => j,
            Err(why) => {
                limited(why);
                continue;
            }
        };
        ctx.stats.customers.store(customers.len() as u64, Relaxed);
        let now = in_flight.fetch_add(1, Relaxed) + 1;
        ctx.stats.in_flight.store(now as u64, Relaxed);
        ctx.stats.in_flight_peak.fetch_max(now as u64, Relaxed);
        let guard = InFlight {
            count: in_flight.clone(),
            stats: ctx.stats.clone(),
            _customer: customer_job,
        };
        jobs.spawn(run_job(
            ctx.clone(),
            backend.clone(),
            slots.clone(),
            req,
            job,
            guard,
        ));
    }
    // The relays are gone: nobody would receive the results of the jobs still running.
    jobs.shutdown().await;
}

/// Decrements the in-flight counts (global, and the customer's through its [`CustomerJob`])
/// when a job ends, however it ends.
struct InFlight {
    count: Arc<AtomicUsize>,
    stats: Arc<DvmStats>,
    /// Held for its `Drop`: the customer's job count.
    _customer: CustomerJob,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.count.fetch_sub(1, Relaxed).saturating_sub(1);
        self.stats.in_flight.store(now as u64, Relaxed);
    }
}

/// The checks that decide whether a request is answered at all: a well-formed event of a
/// request kind, a valid id and signature, our key in a `p` tag, not seen before.
fn admit(
    ctx: &Ctx,
    verifier: &mut Verifier,
    seen: &mut SeenIds,
    incoming: Incoming,
) -> Option<Request> {
    let stats = &ctx.stats;
    inc(&stats.received);
    let json = incoming.event.to_string();
    let ev = match Event::parse_json(json.as_bytes()) {
        Ok(ev) if jobs::REQUEST_KINDS.contains(&ev.kind) => ev,
        _ => {
            inc(&stats.malformed);
            return None;
        }
    };
    if verifier.check_id(&ev).is_err() || !verifier.check_sig(&ev) {
        inc(&stats.bad_signature);
        tracing::debug!(relay = %incoming.relay, "DVM: request with a bad id or signature ignored");
        return None;
    }
    let tags: Vec<Vec<String>> = match serde_json::from_str(&ev.tags_json) {
        Ok(t) => t,
        Err(_) => {
            inc(&stats.malformed);
            return None;
        }
    };
    let for_us = tags.iter().any(|t| {
        t.first().is_some_and(|n| n == "p") && t.get(1).is_some_and(|p| *p == ctx.pubkey_hex)
    });
    if !for_us {
        inc(&stats.not_for_us);
        return None;
    }
    if !seen.insert(ev.id) {
        inc(&stats.duplicates);
        return None;
    }
    Some(Request {
        id_hex: hex::encode(ev.id),
        customer: ev.pubkey,
        customer_hex: hex::encode(ev.pubkey),
        kind: ev.kind,
        tags,
        json: ev.to_json(),
        relay: incoming.relay,
    })
}

/// Runs one job: waits for a slot, runs it within the timeout, publishes the result or the
/// error; a `processing` feedback goes out when it takes long.
async fn run_job<B: Backend>(
    ctx: Arc<Ctx>,
    backend: Arc<B>,
    slots: Arc<Semaphore>,
    req: Request,
    job: Job,
    _guard: InFlight,
) {
    let keypair = &ctx.settings.keypair;
    let timeout = ctx.settings.job_timeout;
    let work = async {
        let _permit = slots.acquire_owned().await.ok()?;
        inc(&ctx.stats.jobs_started);
        Some(tokio::time::timeout(timeout, backend.run(&job)).await)
    };
    tokio::pin!(work);
    let outcome = tokio::select! {
        r = &mut work => r,
        _ = tokio::time::sleep(PROCESSING_AFTER) => {
            ctx.publish(req.feedback(keypair, "processing", ""));
            work.await
        }
    };
    match outcome {
        Some(Ok(Ok(answer))) => {
            inc(&ctx.stats.jobs_succeeded);
            ctx.publish(req.result(keypair, answer));
        }
        Some(Ok(Err(why))) => {
            inc(&ctx.stats.jobs_failed);
            ctx.publish(req.feedback(keypair, "error", &why));
        }
        Some(Err(_)) => {
            inc(&ctx.stats.jobs_timed_out);
            let why = format!("job timed out after {} s", timeout.as_secs_f64());
            ctx.publish(req.feedback(keypair, "error", &why));
        }
        // The semaphore is never closed; if it were, the DVM is shutting down.
        None => {}
    }
}

/// Resolves when `stop` turns true or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// How a connection ended.
enum End {
    Stopped,
    Lost(String),
}

/// Keeps one relay connected until `stop`: reconnects with backoff, resubscribing from a
/// little before the last frame seen.
async fn relay_loop(
    url: RelayUrl,
    ctx: Arc<Ctx>,
    outbox: flume::Receiver<Arc<SignedEvent>>,
    incoming: flume::Sender<Incoming>,
    mut stop: watch::Receiver<bool>,
) {
    let mut since = ctx.settings.since;
    let mut backoff = BACKOFF_MIN;
    loop {
        if *stop.borrow() {
            return;
        }
        let connect =
            transport::connect(&url, &ctx.settings.transport, ctx.settings.connect_timeout);
        let ws = tokio::select! {
            r = connect => r,
            _ = stopped(&mut stop) => return,
        };
        let mut last_alive = now_secs();
        let end = match ws {
            Ok(ws) => {
                inc(&ctx.stats.connections);
                tracing::info!(relay = %url, "DVM: connected");
                let opened = Instant::now();
                let end = serve(
                    ws,
                    &url,
                    &ctx,
                    since,
                    &outbox,
                    &incoming,
                    &mut stop,
                    &mut last_alive,
                )
                .await;
                if opened.elapsed() >= STABLE_AFTER {
                    backoff = BACKOFF_MIN;
                }
                since = since.max(last_alive - RESUBSCRIBE_OVERLAP);
                end
            }
            Err(e) => {
                inc(&ctx.stats.connect_failures);
                End::Lost(e.to_string())
            }
        };
        match end {
            End::Stopped => return,
            End::Lost(why) => {
                tracing::warn!(relay = %url, error = %why, retry_in = ?backoff, "DVM: relay connection lost");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped(&mut stop) => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// The request subscription: every job request kind, tagged with our key, since `since`.
fn subscription(pubkey_hex: &str, since: i64) -> String {
    let kinds: Vec<u16> = jobs::REQUEST_KINDS.collect();
    serde_json::json!(["REQ", SUB_ID, {"kinds": kinds, "#p": [pubkey_hex], "since": since}])
        .to_string()
}

/// Serves one open connection until it ends or `stop`.
#[allow(clippy::too_many_arguments)]
async fn serve(
    mut ws: Ws,
    url: &RelayUrl,
    ctx: &Ctx,
    since: i64,
    outbox: &flume::Receiver<Arc<SignedEvent>>,
    incoming: &flume::Sender<Incoming>,
    stop: &mut watch::Receiver<bool>,
    last_alive: &mut i64,
) -> End {
    let lost = |what: &str, e: &dyn std::fmt::Display| End::Lost(format!("{what}: {e}"));
    if let Err(e) = ws
        .send(Message::Text(subscription(&ctx.pubkey_hex, since).into()))
        .await
    {
        return lost("send REQ", &e);
    }
    // After the REQ, so that once the announcement is visible the subscription is in place.
    if let Some(a) = &ctx.announcement {
        if let Err(e) = ws
            .send(Message::Text(format!("[\"EVENT\",{}]", a.json).into()))
            .await
        {
            return lost("send announcement", &e);
        }
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut last_frame = Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = stopped(stop) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                return End::Stopped;
            }
            msg = ws.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None => return End::Lost("closed by the relay".into()),
                    Some(Err(e)) => return lost("receive", &e),
                    Some(Ok(_)) => {
                        last_frame = Instant::now();
                        continue;
                    }
                };
                last_frame = Instant::now();
                *last_alive = now_secs();
                if let Some(end) = on_text(text.as_str(), url, ctx, incoming).await {
                    return end;
                }
            }
            ev = outbox.recv_async() => {
                // The run holds a sender for this outbox in its context: the channel only
                // closes when the DVM is being torn down.
                let Ok(ev) = ev else { return End::Stopped };
                if let Err(e) = ws.send(Message::Text(format!("[\"EVENT\",{}]", ev.json).into())).await {
                    return lost("send", &e);
                }
            }
            _ = ping.tick() => {
                if last_frame.elapsed() > PING_EVERY * 3 {
                    return End::Lost("no frame for three ping intervals".into());
                }
                if let Err(e) = ws.send(Message::Ping(Vec::new().into())).await {
                    return lost("ping", &e);
                }
            }
        }
    }
}

/// Handles one text frame; `Some` ends the connection.
async fn on_text(
    text: &str,
    url: &RelayUrl,
    ctx: &Ctx,
    incoming: &flume::Sender<Incoming>,
) -> Option<End> {
    // Only requests are large: drop the frame before parsing it.
    if text.len() > ctx.settings.max_request_bytes.saturating_mul(2) {
        inc(&ctx.stats.oversized);
        tracing::debug!(relay = %url, bytes = text.len(), "DVM: oversized frame dropped");
        return None;
    }
    let Ok(Value::Array(mut msg)) = serde_json::from_str::<Value>(text) else {
        tracing::debug!(relay = %url, "DVM: frame that is not a JSON array ignored");
        return None;
    };
    let label = msg.first().and_then(Value::as_str).unwrap_or("");
    match label {
        "EVENT" if msg.len() >= 3 && msg[1].as_str() == Some(SUB_ID) => {
            let event = msg.swap_remove(2);
            let item = Incoming {
                relay: url.to_string(),
                event,
            };
            if incoming.send_async(item).await.is_err() {
                return Some(End::Stopped);
            }
        }
        "OK" => {
            let ok = OkReply::from_json(&msg);
            if ok.is_some_and(|ok| ok.accepted) {
                inc(&ctx.stats.published);
            } else {
                inc(&ctx.stats.publish_rejected);
                let why = ok.map_or("", |ok| ok.message);
                tracing::warn!(relay = %url, message = %why, "DVM: relay refused an event");
            }
        }
        "CLOSED" if msg.get(1).and_then(Value::as_str) == Some(SUB_ID) => {
            let why = msg.get(2).and_then(Value::as_str).unwrap_or("").to_string();
            return Some(End::Lost(format!("subscription closed: {why}")));
        }
        "NOTICE" | "EOSE" | "AUTH" => {
            tracing::debug!(relay = %url, frame = %text.chars().take(200).collect::<String>(), "DVM: relay message");
        }
        _ => {}
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_ids_are_bounded_and_remember_recent_ones() {
        let mut s = SeenIds::new(3);
        for i in 0..5u8 {
            assert!(s.insert([i; 32]));
        }
        assert!(!s.insert([4; 32]), "recent id remembered");
        assert!(s.insert([0; 32]), "oldest forgotten");
        assert!(s.set.len() <= 3 && s.order.len() <= 3);
    }

    #[test]
    fn announcement_lists_every_supported_kind() {
        let kp = Keypair::from_secret_bytes([3u8; 32]).expect("key");
        let a = Announcement {
            identifier: "x".into(),
            name: "n".into(),
            about: "a".into(),
        };
        let ev = announcement_event(&kp, &a, 1_700_000_000);
        let v: Value = serde_json::from_str(&ev.json).expect("json");
        assert_eq!(v["kind"], 31990);
        let k: Vec<&str> = v["tags"]
            .as_array()
            .expect("tags")
            .iter()
            .filter(|t| t[0] == "k")
            .filter_map(|t| t[1].as_str())
            .collect();
        assert_eq!(k, ["5900", "5901", "5902", "5903"]);
    }

    #[test]
    fn subscription_asks_every_request_kind_for_our_key() {
        let v: Value = serde_json::from_str(&subscription("ab", 5)).expect("json");
        assert_eq!(v[2]["kinds"].as_array().map(Vec::len), Some(1000));
        assert_eq!(v[2]["#p"][0], "ab");
        assert_eq!(v[2]["since"], 5);
    }
}
