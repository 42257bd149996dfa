//! The NIP-90 DVM against real parts: our test relay on 127.0.0.1 as the DVM's relay, a real
//! PostgreSQL archive, and a customer speaking NIP-01 over a WebSocket. Counts and events
//! are checked against the expected sets computed from the generated events; results and
//! feedback verify with an independent implementation (the `nostr` crate).

mod common;

use bigbrotr::config::{Config, Relay, Seconds, SecretKey};
use bigbrotr::db::Pool;
use bigbrotr::dvm::RunningDvm;
use bigbrotr::stages::dvm::{
    self as stage, Answer, Backend, CustomerLimits, DvmSettings, DvmStats, Job, Limits,
};
use bigbrotr::stages::model::now_secs;
use bigbrotr_testkit::gen::{generate, sign, GenEvent, GenSpec};
use bigbrotr_testkit::relay::{Behavior, TestRelay};
use common::*;
use futures_util::{SinkExt, StreamExt};
use nostr::JsonUtil;
use secp256k1::Keypair;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Longest wait for any one answer: a safety net for a broken DVM, not a measured bound.
const PATIENCE: Duration = Duration::from_secs(60);

const MAIN_RELAY: &str = "wss://archive.example.com";
const SECOND_RELAY: &str = "wss://second.example.com";

fn keypair(b: u8) -> Keypair {
    Keypair::from_secret_bytes([b; 32]).expect("key")
}

fn pk_hex(k: &Keypair) -> String {
    hex::encode(k.x_only_public_key().0.to_byte_array())
}

fn t(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// A job request signed by `customer`, addressed to `dvm`.
fn request(customer: &Keypair, dvm: &str, kind: u16, mut tags: Vec<Vec<String>>) -> GenEvent {
    tags.push(t(&["p", dvm]));
    sign(customer, now_secs(), kind, &tags, "")
}

fn filter_param(f: Value) -> Vec<String> {
    vec!["param".into(), "filter".into(), f.to_string()]
}

/// A generated event parsed back, to compute expected answers independently.
#[derive(Debug, Clone)]
struct Ev {
    id: String,
    pubkey: String,
    created_at: i64,
    kind: u16,
    tags: Vec<Vec<String>>,
    json: Value,
}

fn parse(e: &GenEvent) -> Ev {
    let v: Value = serde_json::from_str(&e.json).expect("generated json");
    Ev {
        id: v["id"].as_str().expect("id").into(),
        pubkey: v["pubkey"].as_str().expect("pubkey").into(),
        created_at: v["created_at"].as_i64().expect("created_at"),
        kind: v["kind"].as_u64().expect("kind") as u16,
        tags: serde_json::from_value(v["tags"].clone()).expect("tags"),
        json: v,
    }
}

/// NIP-01 order: newest first, ties by lowest id.
fn newest(mut evs: Vec<&Ev>, n: usize) -> Vec<String> {
    evs.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
    evs.into_iter().take(n).map(|e| e.id.clone()).collect()
}

/// Events whose content and tags hold U+0000: the archive keeps them in raw_canonical.
fn nul_event() -> GenEvent {
    sign(
        &keypair(7),
        1_700_000_100,
        1,
        &[t(&["t", "nul\u{0}tag"])],
        "before\u{0}after",
    )
}

/// Stores `ev` as seen on `relay` through the archive's own insert_event.
async fn insert(pool: &Pool, ev: &GenEvent, relay: &str) {
    let e = parse(ev);
    let v = &e.json;
    let content = v["content"].as_str().expect("content");
    let has_nul = content.contains('\0') || e.tags.iter().flatten().any(|s| s.contains('\0'));
    let raw = has_nul.then(|| {
        serde_json::to_string(&json!([0, e.pubkey, e.created_at, e.kind, e.tags, content]))
            .expect("canonical")
    });
    let clean = |s: &str| s.replace('\0', "\u{FFFD}");
    let tags: Vec<Vec<String>> = e
        .tags
        .iter()
        .map(|t| t.iter().map(|s| clean(s)).collect())
        .collect();
    let c = pool.get().await.expect("conn");
    c.execute(
        "SELECT insert_event($1, $2, $3, $4, $5, $6, $7, $8, 'clearnet', 1700000000, $9, $10)",
        &[
            &ev.id.to_vec(),
            &ev.pubkey.to_vec(),
            &e.created_at,
            &i32::from(e.kind),
            &serde_json::to_value(&tags).expect("tags"),
            &clean(content),
            &hex::decode(v["sig"].as_str().expect("sig")).expect("sig hex"),
            &relay,
            &1_700_000_500i64,
            &raw,
        ],
    )
    .await
    .expect("insert_event");
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The customer: publishes requests and collects every answer tagged to it.
struct Customer {
    ws: Ws,
    key: Keypair,
    /// Answers (results and feedback) by the request id of their `e` tag, in arrival order.
    answers: HashMap<String, Vec<Value>>,
    announcements: Vec<Value>,
}

impl Customer {
    /// Connects and subscribes to answers tagged with its key and to `dvm`'s announcements.
    async fn connect(url: &str, key: Keypair, dvm: &str) -> Customer {
        let answers = json!({"kinds": [6900, 6901, 6902, 6903, 7000], "#p": [pk_hex(&key)]});
        Customer::connect_with(url, key, dvm, answers).await
    }

    /// An observer of every answer `dvm` signs, whoever the customer (many keys, one socket).
    async fn watch_all(url: &str, key: Keypair, dvm: &str) -> Customer {
        let answers = json!({"kinds": [6900, 6901, 6902, 6903, 7000], "authors": [dvm]});
        Customer::connect_with(url, key, dvm, answers).await
    }

    async fn connect_with(url: &str, key: Keypair, dvm: &str, answers: Value) -> Customer {
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("customer connects");
        let answers = json!(["REQ", "answers", answers]);
        let announce = json!(["REQ", "announce", {"kinds": [31990], "authors": [dvm]}]);
        for m in [answers, announce] {
            ws.send(Message::Text(m.to_string().into()))
                .await
                .expect("send REQ");
        }
        Customer {
            ws,
            key,
            answers: HashMap::new(),
            announcements: Vec::new(),
        }
    }

    async fn publish(&mut self, ev: &GenEvent) {
        self.ws
            .send(Message::Text(format!("[\"EVENT\",{}]", ev.json).into()))
            .await
            .expect("publish");
    }

    /// Reads one frame, filing answers and announcements.
    async fn read_one(&mut self) {
        let msg = tokio::time::timeout(PATIENCE, self.ws.next())
            .await
            .expect("the relay went silent: no answer in time")
            .expect("connection open")
            .expect("frame");
        let Message::Text(text) = msg else { return };
        let v: Value = serde_json::from_str(text.as_str()).expect("relay frame is JSON");
        if v[0] != "EVENT" {
            return;
        }
        let ev = v[2].clone();
        if v[1] == "announce" {
            self.announcements.push(ev);
            return;
        }
        let id = tag(&ev, "e")
            .and_then(|t| t.get(1).cloned())
            .expect("every answer carries an e tag");
        self.answers.entry(id).or_default().push(ev);
    }

    async fn announcement(&mut self) -> Value {
        while self.announcements.is_empty() {
            self.read_one().await;
        }
        self.announcements[0].clone()
    }

    /// Waits for an announcement whose content names `name` (each run signs its own).
    async fn announcement_named(&mut self, name: &str) -> Value {
        loop {
            let found = self.announcements.iter().find(|a| {
                serde_json::from_str::<Value>(a["content"].as_str().unwrap_or(""))
                    .is_ok_and(|c| c["name"] == name)
            });
            if let Some(a) = found {
                return a.clone();
            }
            self.read_one().await;
        }
    }

    /// The final answer to request `id`: its result or error feedback (a `processing`
    /// feedback is skipped).
    async fn answer(&mut self, id: &[u8; 32]) -> Value {
        let id = hex::encode(id);
        loop {
            let done = self.answers.get(&id).and_then(|list| {
                list.iter()
                    .find(|ev| {
                        ev["kind"] != 7000
                            || tag(ev, "status").and_then(|s| s.get(1).cloned())
                                != Some("processing".into())
                    })
                    .cloned()
            });
            if let Some(ev) = done {
                return ev;
            }
            self.read_one().await;
        }
    }

    /// How many answers (of any kind) arrived for `id` so far.
    fn answers_to(&self, id: &[u8; 32]) -> usize {
        self.answers.get(&hex::encode(id)).map_or(0, Vec::len)
    }
}

/// The first tag named `name` of an event object.
fn tag(ev: &Value, name: &str) -> Option<Vec<String>> {
    ev["tags"]
        .as_array()?
        .iter()
        .find(|t| t[0] == name)
        .and_then(|t| serde_json::from_value(t.clone()).ok())
}

/// Checks what every answer must be: signed by the DVM (verifies), tagged with the request
/// (`e` with the relay hint) and the customer (`p`).
fn check_answer(ev: &Value, req: &GenEvent, dvm: &str, relay: &str, customer: &Keypair) {
    let parsed = nostr::Event::from_json(ev.to_string()).expect("nostr parses the answer");
    parsed.verify().expect("the answer verifies");
    assert_eq!(ev["pubkey"], dvm, "signed by the DVM's key");
    assert_eq!(
        tag(ev, "e"),
        Some(vec!["e".into(), hex::encode(req.id), relay.to_string()]),
        "e tag: request id and relay hint"
    );
    assert_eq!(tag(ev, "p"), Some(vec!["p".into(), pk_hex(customer)]));
}

/// A result: the kind is the request's + 1000, the `request` tag holds the request and the
/// `i` tags are copied; returns the content.
fn check_result(ev: &Value, req: &GenEvent, dvm: &str, relay: &str, customer: &Keypair) -> Value {
    check_answer(ev, req, dvm, relay, customer);
    let req_v: Value = serde_json::from_str(&req.json).expect("request json");
    assert_eq!(
        ev["kind"].as_u64(),
        Some(req_v["kind"].as_u64().expect("kind") + 1000),
        "result kind: {ev}"
    );
    let embedded = tag(ev, "request").expect("request tag");
    let embedded: Value = serde_json::from_str(&embedded[1]).expect("request tag holds JSON");
    assert_eq!(
        embedded, req_v,
        "the request tag holds the request as signed"
    );
    let want_i: Vec<&Value> = req_v["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter(|t| t[0] == "i")
        .collect();
    let got_i: Vec<&Value> = ev["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter(|t| t[0] == "i")
        .collect();
    assert_eq!(got_i, want_i, "i tags copied");
    serde_json::from_str(ev["content"].as_str().expect("content")).expect("content is JSON")
}

/// An error feedback: kind 7000, `["status","error",msg]`; returns the message.
fn check_error(ev: &Value, req: &GenEvent, dvm: &str, relay: &str, customer: &Keypair) -> String {
    check_answer(ev, req, dvm, relay, customer);
    assert_eq!(ev["kind"], 7000, "feedback kind: {ev}");
    let status = tag(ev, "status").expect("status tag");
    assert_eq!(status[1], "error", "{ev}");
    status.get(2).cloned().expect("an error message")
}

/// The DVM's configuration for tests: the archive at `db`, the relays, a fixed key.
fn dvm_config(db: &str, relays: &[String], dvm: &Keypair) -> Config {
    let mut cfg = config(db);
    cfg.dvm.enabled = true;
    cfg.dvm.private_key =
        SecretKey::parse(&hex::encode(dvm.secret_key().to_secret_bytes())).expect("key");
    cfg.dvm.relays = relays
        .iter()
        .map(|u| Relay::parse(u).expect("url"))
        .collect();
    cfg.dvm.max_limit = 25;
    cfg.dvm.max_filter_values = 5;
    cfg.dvm.job_timeout = Seconds::new(30);
    // One test customer sends many jobs at once; the per-customer limits have their own tests.
    cfg.dvm.per_customer_jobs_per_minute = 0;
    cfg.dvm.per_customer_max_jobs = 0;
    cfg.validate().expect("valid test configuration");
    cfg
}

/// Starts the DVM on `relays` and a customer on the first; returns once the DVM's
/// announcement is visible, which it sends after subscribing to requests.
async fn start(db: &str, relays: &[String], dvm: &Keypair) -> (RunningDvm, Customer) {
    let cfg = dvm_config(db, relays, dvm);
    let running = bigbrotr::dvm::start(&cfg, db).await.expect("DVM starts");
    let mut customer = Customer::connect(&relays[0], keypair(0x22), &pk_hex(dvm)).await;
    customer.announcement().await;
    (running, customer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_counts_events_and_statistics_from_the_archive() {
    let (pool, db) = test_db().await;
    let mut corpus = generate(&GenSpec {
        count: 240,
        authors: 4,
        kinds: vec![1, 7, 30023],
        seed: 11,
        ..GenSpec::default()
    });
    corpus.push(nul_event());
    for (i, ev) in corpus.iter().enumerate() {
        insert(&pool, ev, MAIN_RELAY).await;
        if i < 100 {
            insert(&pool, ev, SECOND_RELAY).await;
        }
    }
    let all: Vec<Ev> = corpus.iter().map(parse).collect();
    let relay = TestRelay::start(Vec::new(), Behavior::default())
        .await
        .expect("relay");
    let dvm_key = keypair(0x11);
    let dvm = pk_hex(&dvm_key);
    let (running, mut c) = start(&db, &[relay.url()], &dvm_key).await;
    assert_eq!(running.pubkey, dvm);

    // NIP-89: kind 31990 with one k tag per job kind.
    let ann = c.announcement().await;
    nostr::Event::from_json(ann.to_string())
        .expect("announcement parses")
        .verify()
        .expect("announcement verifies");
    let k: BTreeSet<String> = ann["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter(|t| t[0] == "k")
        .map(|t| t[1].as_str().expect("k value").to_string())
        .collect();
    assert_eq!(k, ["5900", "5901", "5902", "5903"].map(String::from).into());
    assert_eq!(
        tag(&ann, "d").map(|d| d[1].clone()).as_deref(),
        Some("bigbrotr-archive")
    );
    let about: Value =
        serde_json::from_str(ann["content"].as_str().expect("content")).expect("json");
    assert_eq!(about["name"], "bigbrotr archive");

    let author = all[0].pubkey.clone();
    let word = all
        .iter()
        .flat_map(|e| e.tags.iter())
        .find(|t| t[0] == "t")
        .map(|t| t[1].clone())
        .expect("a t tag in the corpus");
    let (lo, hi) = (
        all[10].created_at.min(all[20].created_at),
        all[10].created_at.max(all[20].created_at),
    );
    let count_of = |f: &dyn Fn(&Ev) -> bool| all.iter().filter(|e| f(e)).count() as u64;
    let has = |e: &Ev, letter: &str, v: &str| {
        e.tags
            .iter()
            .any(|t| t.len() >= 2 && t[0] == letter && t[1] == v)
    };
    let unknown_id = "00".repeat(32);

    // Count jobs: several filters, each against the count computed here.
    let counts: Vec<(Vec<Vec<String>>, u64)> = vec![
        (vec![filter_param(json!({}))], all.len() as u64),
        (
            vec![filter_param(json!({"kinds": [1]}))],
            count_of(&|e| e.kind == 1),
        ),
        (
            vec![filter_param(
                json!({"authors": [author], "kinds": [7, 30023]}),
            )],
            count_of(&|e| e.pubkey == author && (e.kind == 7 || e.kind == 30023)),
        ),
        (
            vec![filter_param(json!({"#t": [word]}))],
            count_of(&|e| has(e, "t", &word)),
        ),
        (vec![filter_param(json!({"#t": ["nul\u{0}tag"]}))], 1),
        (
            vec![filter_param(json!({"since": lo, "until": hi}))],
            count_of(&|e| e.created_at >= lo && e.created_at <= hi),
        ),
        (
            vec![filter_param(
                json!({"ids": [all[3].id, all[4].id, unknown_id]}),
            )],
            2,
        ),
        // The filter as a text input instead of a param; the i tag is copied to the result.
        (
            vec![t(&["i", &json!({"kinds": [7]}).to_string(), "text"])],
            count_of(&|e| e.kind == 7),
        ),
    ];
    let count_reqs: Vec<(GenEvent, u64)> = counts
        .into_iter()
        .map(|(tags, n)| (request(&c.key.clone(), &dvm, 5900, tags), n))
        .collect();
    for (req, _) in &count_reqs {
        c.publish(req).await;
    }
    let key = c.key;
    for (req, want) in &count_reqs {
        let ans = c.answer(&req.id).await;
        let content = check_result(&ans, req, &dvm, &relay.url(), &key);
        assert_eq!(content, json!({"count": want}), "count for {}", req.json);
    }

    // Events jobs: exactly the expected events, newest first, capped at max_limit (25).
    let kind1: Vec<&Ev> = all.iter().filter(|e| e.kind == 1).collect();
    let by_author: Vec<&Ev> = all.iter().filter(|e| e.pubkey == author).collect();
    assert!(
        by_author.len() > 25 && kind1.len() > 25,
        "the corpus exceeds the cap"
    );
    let nul = parse(&corpus[corpus.len() - 1]);
    let events: Vec<(GenEvent, Vec<String>)> = vec![
        (
            request(
                &key,
                &dvm,
                5901,
                vec![filter_param(json!({"kinds": [1], "limit": 10}))],
            ),
            newest(kind1.clone(), 10),
        ),
        (
            request(
                &key,
                &dvm,
                5901,
                vec![filter_param(json!({"authors": [author]}))],
            ),
            newest(by_author.clone(), 25),
        ),
        (
            request(
                &key,
                &dvm,
                5901,
                vec![filter_param(json!({"kinds": [1], "limit": 1000}))],
            ),
            newest(kind1.clone(), 25),
        ),
        (
            request(
                &key,
                &dvm,
                5901,
                vec![filter_param(json!({"ids": [nul.id]}))],
            ),
            vec![nul.id.clone()],
        ),
        (
            request(
                &key,
                &dvm,
                5901,
                vec![filter_param(json!({"kinds": [1], "limit": 0}))],
            ),
            vec![],
        ),
    ];
    for (req, _) in &events {
        c.publish(req).await;
    }
    let by_id: HashMap<&str, &Ev> = all.iter().map(|e| (e.id.as_str(), e)).collect();
    for (req, want) in &events {
        let ans = c.answer(&req.id).await;
        let content = check_result(&ans, req, &dvm, &relay.url(), &key);
        let got = content.as_array().expect("events job content is an array");
        let got_ids: Vec<String> = got
            .iter()
            .map(|e| {
                let ev = nostr::Event::from_json(e.to_string()).expect("nostr parses an event");
                ev.verify().expect("every returned event verifies");
                ev.id.to_hex()
            })
            .collect();
        assert_eq!(&got_ids, want, "events for {}", req.json);
        for e in got {
            let id = e["id"].as_str().expect("id");
            assert_eq!(e, &by_id[id].json, "returned exactly as signed");
        }
    }

    // Statistics: one relay, every relay, the whole archive.
    let one = request(
        &key,
        &dvm,
        5902,
        vec![t(&["param", "relay", "wss://Second.Example.com/"])],
    );
    let every = request(&key, &dvm, 5902, vec![]);
    let archive = request(&key, &dvm, 5903, vec![]);
    for r in [&one, &every, &archive] {
        c.publish(r).await;
    }
    let v = check_result(&c.answer(&one.id).await, &one, &dvm, &relay.url(), &key);
    let rows = v.as_array().expect("relay stats are an array");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["relay_url"], SECOND_RELAY);
    assert_eq!(rows[0]["event_count"], 100);
    let v = check_result(&c.answer(&every.id).await, &every, &dvm, &relay.url(), &key);
    let rows: Vec<(String, u64)> = v
        .as_array()
        .expect("array")
        .iter()
        .map(|r| {
            (
                r["relay_url"].as_str().expect("url").to_string(),
                r["event_count"].as_u64().expect("count"),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (MAIN_RELAY.to_string(), all.len() as u64),
            (SECOND_RELAY.to_string(), 100)
        ],
        "largest first"
    );
    let v = check_result(
        &c.answer(&archive.id).await,
        &archive,
        &dvm,
        &relay.url(),
        &key,
    );
    assert_eq!(v["total_events"], all.len() as u64);
    assert_eq!(v["unique_kinds"], 3);

    let s = &running.stats;
    assert_eq!(
        s.jobs_succeeded.load(Relaxed),
        (count_reqs.len() + events.len() + 3) as u64
    );
    assert_eq!(s.refused.load(Relaxed) + s.jobs_failed.load(Relaxed), 0);
    assert!(
        s.published.load(Relaxed) >= s.jobs_succeeded.load(Relaxed),
        "the relay accepted every answer"
    );
    running.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_malformed_requests_ignores_foreign_ones_and_keeps_serving() {
    let (pool, db) = test_db().await;
    let corpus = generate(&GenSpec {
        count: 30,
        kinds: vec![1, 7],
        seed: 5,
        ..GenSpec::default()
    });
    for ev in &corpus {
        insert(&pool, ev, MAIN_RELAY).await;
    }
    let a = TestRelay::start(Vec::new(), Behavior::default())
        .await
        .expect("relay a");
    let b = TestRelay::start(Vec::new(), Behavior::default())
        .await
        .expect("relay b");
    let dvm_key = keypair(0x11);
    let dvm = pk_hex(&dvm_key);
    let (running, mut c) = start(&db, &[a.url(), b.url()], &dvm_key).await;
    let key = c.key;
    let hex6: Vec<String> = (1..=6u8).map(|i| hex::encode([i; 32])).collect();

    let bad: Vec<(GenEvent, &str)> = vec![
        (
            request(&key, &dvm, 5900, vec![t(&["param", "filter", "{not json"])]),
            "not valid JSON",
        ),
        (
            request(&key, &dvm, 5950, vec![]),
            "unsupported job kind 5950",
        ),
        (
            request(
                &key,
                &dvm,
                5900,
                vec![filter_param(json!({"ids": ["xyz"]}))],
            ),
            "ids[0]",
        ),
        (
            request(
                &key,
                &dvm,
                5900,
                vec![filter_param(json!({"kinds": [70000]}))],
            ),
            "kinds[0]",
        ),
        (
            request(
                &key,
                &dvm,
                5901,
                vec![filter_param(json!({"authors": hex6}))],
            ),
            "at most 5",
        ),
        (
            request(
                &key,
                &dvm,
                5900,
                vec![filter_param(json!({"since": "yesterday"}))],
            ),
            "since",
        ),
        (request(&key, &dvm, 5900, vec![]), "missing filter"),
        (
            request(&key, &dvm, 5902, vec![t(&["param", "colour", "blue"])]),
            "unknown param",
        ),
        (
            {
                let tags = vec![t(&["encrypted"]), t(&["p", &dvm])];
                sign(&key, now_secs(), 5900, &tags, "aGVsbG8=?iv=aGVsbG8=")
            },
            "encryption not supported",
        ),
        // Over dvm.max_request_bytes (64 KiB) but under twice that: refused with a reason.
        (
            {
                let tags = vec![filter_param(json!({})), t(&["p", &dvm])];
                sign(&key, now_secs(), 5900, &tags, &"x".repeat(70_000))
            },
            "request too large",
        ),
        // Valid, but the backend has nothing to say: an error from the job itself.
        (
            request(
                &key,
                &dvm,
                5902,
                vec![t(&["param", "relay", "wss://nowhere.example.com"])],
            ),
            "not in the archive",
        ),
    ];
    for (req, _) in &bad {
        c.publish(req).await;
    }
    // Ignored: a forged signature, and a request for another DVM. (Signing is deterministic:
    // each request here differs from every other one, so no relay takes one for another's
    // duplicate.)
    let forged = bigbrotr_testkit::gen::with_bad_sig(&request(
        &key,
        &dvm,
        5900,
        vec![filter_param(json!({"kinds": [1, 7]}))],
    ));
    let foreign = {
        let tags = vec![filter_param(json!({})), t(&["p", &pk_hex(&keypair(0x33))])];
        sign(&key, now_secs(), 5900, &tags, "")
    };
    // Over twice the limit: dropped unread.
    let huge = {
        let tags = vec![filter_param(json!({})), t(&["p", &dvm])];
        sign(&key, now_secs(), 5900, &tags, &"x".repeat(200_000))
    };
    c.publish(&forged).await;
    c.publish(&foreign).await;
    c.publish(&huge).await;
    // The same request through both relays is answered once.
    let twice = request(&key, &dvm, 5900, vec![filter_param(json!({"kinds": [7]}))]);
    let mut on_b = Customer::connect(&b.url(), keypair(0x44), &dvm).await;
    on_b.publish(&twice).await;
    // Last on each connection, so the DVM has read everything above when they are answered.
    let final_b = request(&key, &dvm, 5900, vec![filter_param(json!({"kinds": [1]}))]);
    on_b.publish(&final_b).await;
    c.publish(&twice).await;
    let final_a = request(&key, &dvm, 5900, vec![filter_param(json!({}))]);
    c.publish(&final_a).await;

    for (req, want) in &bad {
        let ans = c.answer(&req.id).await;
        let msg = check_error(&ans, req, &dvm, &a.url(), &key);
        assert!(
            msg.contains(want),
            "{}: feedback {msg:?} lacks {want:?}",
            req.json
        );
    }
    let v = check_result(&c.answer(&final_a.id).await, &final_a, &dvm, &a.url(), &key);
    assert_eq!(
        v,
        json!({"count": corpus.len()}),
        "still serving after bad requests"
    );
    // Answered with the hint of the relay that delivered it.
    let v = check_result(&c.answer(&final_b.id).await, &final_b, &dvm, &b.url(), &key);
    let kind1 = corpus.iter().filter(|e| e.kind == 1).count();
    assert_eq!(v, json!({"count": kind1}));
    let ans = c.answer(&twice.id).await;
    let kind7 = corpus.iter().filter(|e| e.kind == 7).count();
    assert_eq!(ans["content"], json!({"count": kind7}).to_string());

    let s = &running.stats;
    assert_eq!(
        s.bad_signature.load(Relaxed),
        1,
        "the forged request was checked and ignored"
    );
    assert_eq!(
        s.duplicates.load(Relaxed),
        1,
        "the second copy was recognised"
    );
    assert_eq!(s.refused.load(Relaxed), bad.len() as u64 - 1);
    assert_eq!(s.jobs_failed.load(Relaxed), 1);
    // Whatever the DVM published for them would have gone out before the final answers.
    assert_eq!(c.answers_to(&forged.id), 0, "no answer to a forged request");
    assert_eq!(
        c.answers_to(&foreign.id),
        0,
        "no answer to another DVM's request"
    );
    assert_eq!(c.answers_to(&huge.id), 0, "no answer to an oversized frame");
    assert_eq!(s.oversized.load(Relaxed), 1);
    assert_eq!(c.answers_to(&twice.id), 1, "one answer per request");
    running.stop().await;
    a.stop().await;
    b.stop().await;
}

/// A backend that holds count jobs until released and never finishes statistics jobs.
struct Gated {
    gate: tokio::sync::Semaphore,
    running: AtomicUsize,
    most: AtomicUsize,
}

impl Backend for Gated {
    async fn run(&self, job: &Job) -> Result<Answer, String> {
        if matches!(job, Job::ArchiveStats) {
            std::future::pending::<()>().await;
        }
        let now = self.running.fetch_add(1, Relaxed) + 1;
        self.most.fetch_max(now, Relaxed);
        let permit = self.gate.acquire().await.map_err(|e| e.to_string())?;
        permit.forget();
        self.running.fetch_sub(1, Relaxed);
        Ok(json!({"count": 1}).to_string().into())
    }
}

impl Gated {
    /// A backend holding every count job until `add_permits`.
    fn closed() -> Arc<Gated> {
        Arc::new(Gated {
            gate: tokio::sync::Semaphore::new(0),
            running: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
        })
    }
}

/// No per-customer limits: the tests of the global bounds send many jobs from one key.
fn no_customer_limits() -> CustomerLimits {
    CustomerLimits {
        jobs_per_minute: 0,
        burst: 1,
        max_jobs: 0,
        max_customers: 10_000,
    }
}

/// Runs the stage itself over `backend` on `relay`.
fn spawn_stage(
    relay: &TestRelay,
    dvm: &Keypair,
    backend: Arc<Gated>,
    name: &str,
    (slots, queue): (usize, usize),
    job_timeout: Duration,
    customers: CustomerLimits,
) -> (
    Arc<DvmStats>,
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let settings = DvmSettings {
        keypair: *dvm,
        relays: vec![relay_url(&relay.url())],
        transport: Default::default(),
        connect_timeout: Duration::from_secs(5),
        job_timeout,
        max_concurrent_jobs: slots,
        max_queued_jobs: queue,
        customers,
        max_request_bytes: 64 << 10,
        limits: Limits::default(),
        announce: Some(stage::Announcement {
            identifier: name.into(),
            name: name.into(),
            about: "test".into(),
        }),
        since: now_secs(),
    };
    let stats = Arc::new(DvmStats::default());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(stage::run(settings, backend, stats.clone(), rx));
    (stats, stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds_concurrent_jobs_queue_and_job_time() {
    let relay = TestRelay::start(Vec::new(), Behavior::default())
        .await
        .expect("relay");
    let dvm_key = keypair(0x12);
    let dvm = pk_hex(&dvm_key);
    let backend = Arc::new(Gated {
        gate: tokio::sync::Semaphore::new(0),
        running: AtomicUsize::new(0),
        most: AtomicUsize::new(0),
    });
    // One job at a time, two waiting: the fourth request is turned away.
    let (stats, stop, task) = spawn_stage(
        &relay,
        &dvm_key,
        backend.clone(),
        "first",
        (1, 2),
        Duration::from_secs(600),
        no_customer_limits(),
    );
    let mut c = Customer::connect(&relay.url(), keypair(0x22), &dvm).await;
    c.announcement_named("first").await;
    let key = c.key;
    let reqs: Vec<GenEvent> = (0..4)
        .map(|i| request(&key, &dvm, 5900, vec![filter_param(json!({"kinds": [i]}))]))
        .collect();
    for r in &reqs {
        c.publish(r).await;
    }
    let msg = check_error(
        &c.answer(&reqs[3].id).await,
        &reqs[3],
        &dvm,
        &relay.url(),
        &key,
    );
    assert!(msg.starts_with("busy"), "{msg}");
    assert_eq!(stats.busy.load(Relaxed), 1);
    backend.gate.add_permits(3);
    for r in &reqs[..3] {
        let v = check_result(&c.answer(&r.id).await, r, &dvm, &relay.url(), &key);
        assert_eq!(v, json!({"count": 1}));
    }
    assert_eq!(
        backend.most.load(Relaxed),
        1,
        "never more than one job at once"
    );
    let _ = stop.send(true);
    task.await.expect("stage ends");

    // A job past its time gets an error, and the DVM goes on serving. A fresh relay: the
    // one above still holds the requests of this second, which a new run would answer.
    relay.stop().await;
    let relay = TestRelay::start(Vec::new(), Behavior::default())
        .await
        .expect("relay");
    let (stats, stop, task) = spawn_stage(
        &relay,
        &dvm_key,
        backend.clone(),
        "second",
        (2, 2),
        Duration::from_millis(300),
        no_customer_limits(),
    );
    let mut c = Customer::connect(&relay.url(), keypair(0x23), &dvm).await;
    let key = c.key;
    c.announcement_named("second").await;
    let slow = request(&key, &dvm, 5903, vec![]);
    let quick = request(&key, &dvm, 5900, vec![filter_param(json!({}))]);
    backend.gate.add_permits(1);
    c.publish(&slow).await;
    c.publish(&quick).await;
    let msg = check_error(&c.answer(&slow.id).await, &slow, &dvm, &relay.url(), &key);
    assert!(msg.contains("timed out"), "{msg}");
    let v = check_result(&c.answer(&quick.id).await, &quick, &dvm, &relay.url(), &key);
    assert_eq!(v, json!({"count": 1}));
    assert_eq!(stats.jobs_timed_out.load(Relaxed), 1);
    let _ = stop.send(true);
    task.await.expect("stage ends");
    relay.stop().await;
}

/// Content that JSON escapes (23 bytes for 20): answers are larger than the content.
const ESCAPED: &str = "large \"quoted\" line\n";

/// An event of about `bytes` bytes of content made of `unit`s.
fn large_event(key: &Keypair, created_at: i64, bytes: usize, unit: &str) -> GenEvent {
    let mut content = format!("{created_at} ");
    while content.len() + unit.len() <= bytes {
        content.push_str(unit);
    }
    sign(key, created_at, 1, &[t(&["t", "large"])], &content)
}

/// Ids of the events of an events result, each verified with the `nostr` crate.
fn verified_ids(content: &Value) -> Vec<String> {
    content
        .as_array()
        .expect("an events result is a JSON array")
        .iter()
        .map(|e| {
            let ev = nostr::Event::from_json(e.to_string()).expect("nostr parses the event");
            ev.verify().expect("the event verifies");
            ev.id.to_hex()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_job_stops_at_the_byte_budget_and_tags_the_result() {
    let (pool, db) = test_db().await;
    let author = keypair(0x31);
    // Twelve events of 250 KB with characters JSON escapes (287.5 KB as JSON): three fit in
    // a 1 MB budget, the fourth would not.
    let evs: Vec<GenEvent> = (0..12)
        .map(|i| large_event(&author, 1_700_000_000 + i, 250_000, ESCAPED))
        .collect();
    for ev in &evs {
        insert(&pool, ev, MAIN_RELAY).await;
    }
    let small = sign(&author, 1_600_000_000, 7, &[], "+");
    insert(&pool, &small, MAIN_RELAY).await;
    let parsed: Vec<Ev> = evs.iter().map(parse).collect();
    let relay = TestRelay::start(Vec::new(), Behavior::default())
        .await
        .expect("relay");
    let dvm_key = keypair(0x13);
    let dvm = pk_hex(&dvm_key);
    let budget = 1_000_000usize;
    let mut cfg = dvm_config(&db, &[relay.url()], &dvm_key);
    cfg.dvm.max_result_bytes = budget;
    let running = bigbrotr::dvm::start(&cfg, &db).await.expect("DVM starts");
    let mut c = Customer::connect(&relay.url(), keypair(0x22), &dvm).await;
    c.announcement().await;
    let key = c.key;

    // Everything: cut by the budget, newest first, whole events, tagged.
    let all = request(&key, &dvm, 5901, vec![filter_param(json!({"kinds": [1]}))]);
    c.publish(&all).await;
    let ev = c.answer(&all.id).await;
    let content = check_result(&ev, &all, &dvm, &relay.url(), &key);
    let text_len = ev["content"].as_str().expect("content").len();
    assert!(
        text_len <= budget,
        "{text_len} bytes over a {budget} budget"
    );
    let ids = verified_ids(&content);
    assert_eq!(
        ids,
        newest(parsed.iter().collect(), 3),
        "the three newest fit"
    );
    assert_eq!(
        tag(&ev, "truncated"),
        Some(t(&["truncated", "max_result_bytes", "1000000"])),
        "a cut result says so: {:?}",
        ev["tags"].as_array().map(|t| t.len())
    );

    // Under the budget: no tag. A limit below the budget is not a cut either.
    for (filter, want) in [
        (json!({"kinds": [7]}), vec![hex::encode(small.id)]),
        (
            json!({"kinds": [1], "limit": 2}),
            newest(parsed.iter().collect(), 2),
        ),
    ] {
        let r = request(&key, &dvm, 5901, vec![filter_param(filter)]);
        c.publish(&r).await;
        let ev = c.answer(&r.id).await;
        let content = check_result(&ev, &r, &dvm, &relay.url(), &key);
        assert_eq!(verified_ids(&content), want);
        assert_eq!(tag(&ev, "truncated"), None, "{}", r.json);
    }

    // One event larger than the whole budget: an empty, tagged answer.
    let huge = large_event(&author, 1_800_000_000, 1_100_000, ESCAPED);
    insert(&pool, &huge, MAIN_RELAY).await;
    // (A filter unlike the first one's: the same request signed in the same second would
    // be the same event, answered once.)
    let r = request(
        &key,
        &dvm,
        5901,
        vec![filter_param(json!({"kinds": [1], "since": 0}))],
    );
    c.publish(&r).await;
    let ev = c.answer(&r.id).await;
    let content = check_result(&ev, &r, &dvm, &relay.url(), &key);
    assert!(verified_ids(&content).is_empty(), "nothing fits");
    assert!(tag(&ev, "truncated").is_some());
    running.stop().await;
    relay.stop().await;
}

/// Peak and current resident memory of process `pid`, in KiB (VmHWM, VmRSS).
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// The `bigbrotr dvm` process answering twenty events jobs over 500 archived events of
/// ~500 KB: what the process holds stays near `max_result_bytes` per running job, however
/// much the filter matches. `BIGBROTR_DVM_BIN` runs another build of the binary (to measure
/// an older one); `DVM_MEMORY_EVENTS` changes the number of archived events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dvm_process_memory_stays_near_the_byte_budget() {
    let events: i64 = std::env::var("DVM_MEMORY_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let (pool, db) = test_db().await;
    let author = keypair(0x32);
    for i in 0..events {
        let ev = large_event(&author, 1_700_000_000 + i, 500_000, "large plain line ");
        insert(&pool, &ev, MAIN_RELAY).await;
    }
    let relay = TestRelay::start(Vec::new(), Behavior::default())
        .await
        .expect("relay");
    let dvm_key = keypair(0x14);
    let dvm = pk_hex(&dvm_key);
    let dir = std::env::temp_dir().join(format!("bigbrotr-dvm-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("dvm.toml");
    let secret = hex::encode(dvm_key.secret_key().to_secret_bytes());
    let jobs: u8 = 20;
    // Twenty customers, one job each (the queue holds all 20); only keys every build knows,
    // so that an older binary can be measured with the same file.
    std::fs::write(
        &file,
        format!(
            r#"
[database]
url = "{db}"
pool_size = 4

[dvm]
private_key = "{secret}"
relays = ["{relay}"]
max_queued_jobs = {jobs}
job_timeout = 120.0
"#,
            relay = relay.url()
        ),
    )
    .expect("config");
    let bin = std::env::var("BIGBROTR_DVM_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_bigbrotr").to_string());
    let mut child = tokio::process::Command::new(&bin)
        .arg("--config")
        .arg(&file)
        .arg("dvm")
        .env("BIGBROTR_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("bigbrotr dvm starts");
    let pid = child.id().expect("pid");
    let mut c = Customer::watch_all(&relay.url(), keypair(0x22), &dvm).await;
    c.announcement().await;
    let (idle_hwm, _) = memory_kib(pid);
    let keys: Vec<Keypair> = (0..jobs).map(|i| keypair(0x40 + i)).collect();
    let reqs: Vec<GenEvent> = keys
        .iter()
        .map(|k| request(k, &dvm, 5901, vec![filter_param(json!({}))]))
        .collect();
    let started = std::time::Instant::now();
    for r in &reqs {
        c.publish(r).await;
    }
    let mut answers = Vec::new();
    for r in &reqs {
        answers.push(c.answer(&r.id).await);
    }
    let elapsed = started.elapsed();
    let (hwm, rss) = memory_kib(pid);
    println!(
        "bigbrotr dvm ({bin}): {jobs} events jobs over {events} events of 500 KB: VmHWM {} MiB \
         (idle {} MiB), VmRSS {} MiB, {} ms",
        hwm / 1024,
        idle_hwm / 1024,
        rss / 1024,
        elapsed.as_millis()
    );
    let _ = child.kill().await;
    for ((ev, r), key) in answers.iter().zip(&reqs).zip(&keys) {
        let content = check_result(ev, r, &dvm, &relay.url(), key);
        let len = ev["content"].as_str().map_or(0, str::len);
        assert!(len <= 512 << 10, "{len} bytes over the default budget");
        assert_eq!(
            verified_ids(&content).len(),
            1,
            "one 500 KB event fits in 512 KiB"
        );
        assert!(tag(ev, "truncated").is_some(), "the cut is flagged");
    }
    // Four jobs at once, each near its 512 KiB budget plus one event and the signed result:
    // tens of MiB over the idle process, not the hundreds the matching rows would take.
    assert!(
        hwm < idle_hwm + 150 * 1024,
        "peak {hwm} KiB, idle {idle_hwm} KiB: the DVM holds more than its byte budgets"
    );
    relay.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_customer_is_rate_limited_while_another_is_served() {
    let relay = TestRelay::start(Vec::new(), Behavior::default())
        .await
        .expect("relay");
    let dvm_key = keypair(0x15);
    let dvm = pk_hex(&dvm_key);

    // The token bucket: a burst of 3, then one a minute.
    let backend = Gated::closed();
    backend.gate.add_permits(1_000);
    let limits = CustomerLimits {
        jobs_per_minute: 1,
        burst: 3,
        max_jobs: 0,
        max_customers: 100,
    };
    let (stats, stop, task) = spawn_stage(
        &relay,
        &dvm_key,
        backend.clone(),
        "bucket",
        (2, 50),
        Duration::from_secs(60),
        limits,
    );
    let mut a = Customer::connect(&relay.url(), keypair(0x22), &dvm).await;
    a.announcement_named("bucket").await;
    let mut b = Customer::connect(&relay.url(), keypair(0x23), &dvm).await;
    let (ka, kb) = (a.key, b.key);
    let flood: Vec<GenEvent> = (0..10)
        .map(|i| request(&ka, &dvm, 5900, vec![filter_param(json!({"kinds": [i]}))]))
        .collect();
    for r in &flood {
        a.publish(r).await;
    }
    let other = request(&kb, &dvm, 5900, vec![filter_param(json!({}))]);
    b.publish(&other).await;
    let (mut served, mut limited) = (0, 0);
    for r in &flood {
        let ev = a.answer(&r.id).await;
        if ev["kind"] == 6900 {
            check_result(&ev, r, &dvm, &relay.url(), &ka);
            served += 1;
        } else {
            let msg = check_error(&ev, r, &dvm, &relay.url(), &ka);
            assert!(msg.starts_with("rate-limited"), "{msg}");
            assert!(msg.contains("per minute"), "{msg}");
            limited += 1;
        }
    }
    assert_eq!((served, limited), (3, 7), "the burst, then limited answers");
    let v = check_result(&b.answer(&other.id).await, &other, &dvm, &relay.url(), &kb);
    assert_eq!(v, json!({"count": 1}), "the other customer is served");
    assert_eq!(stats.rate_limited.load(Relaxed), 7);
    let _ = stop.send(true);
    task.await.expect("stage ends");
    relay.stop().await;

    // The bound on one customer's jobs: two of its jobs wait, the next is turned away while
    // another customer's job still gets a place.
    let relay = TestRelay::start(Vec::new(), Behavior::default())
        .await
        .expect("relay");
    let backend = Gated::closed();
    let limits = CustomerLimits {
        jobs_per_minute: 0,
        burst: 1,
        max_jobs: 2,
        max_customers: 100,
    };
    let (stats, stop, task) = spawn_stage(
        &relay,
        &dvm_key,
        backend.clone(),
        "jobs",
        (1, 10),
        Duration::from_secs(60),
        limits,
    );
    let mut a = Customer::connect(&relay.url(), keypair(0x24), &dvm).await;
    a.announcement_named("jobs").await;
    let mut b = Customer::connect(&relay.url(), keypair(0x25), &dvm).await;
    let (ka, kb) = (a.key, b.key);
    let mine: Vec<GenEvent> = (0..4)
        .map(|i| request(&ka, &dvm, 5900, vec![filter_param(json!({"kinds": [i]}))]))
        .collect();
    for r in &mine {
        a.publish(r).await;
    }
    for r in &mine[2..] {
        let msg = check_error(&a.answer(&r.id).await, r, &dvm, &relay.url(), &ka);
        assert!(
            msg.starts_with("rate-limited") && msg.contains("2 of your jobs"),
            "{msg}"
        );
    }
    let other = request(&kb, &dvm, 5900, vec![filter_param(json!({}))]);
    b.publish(&other).await;
    backend.gate.add_permits(3);
    check_result(&b.answer(&other.id).await, &other, &dvm, &relay.url(), &kb);
    for r in &mine[..2] {
        check_result(&a.answer(&r.id).await, r, &dvm, &relay.url(), &ka);
    }
    assert_eq!(stats.rate_limited.load(Relaxed), 2);
    // Its jobs ended: the customer may queue again.
    let again = request(&ka, &dvm, 5900, vec![filter_param(json!({"kinds": [9]}))]);
    backend.gate.add_permits(1);
    a.publish(&again).await;
    check_result(&a.answer(&again.id).await, &again, &dvm, &relay.url(), &ka);
    let _ = stop.send(true);
    task.await.expect("stage ends");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_fresh_keys_is_bounded_and_the_dvm_stays_responsive() {
    let relay = TestRelay::start(Vec::new(), Behavior::default())
        .await
        .expect("relay");
    let dvm_key = keypair(0x16);
    let dvm = pk_hex(&dvm_key);
    let backend = Gated::closed();
    // Two running, three waiting; a table of eight customers for sixty keys.
    let limits = CustomerLimits {
        jobs_per_minute: 30,
        burst: 10,
        max_jobs: 4,
        max_customers: 8,
    };
    let (stats, stop, task) = spawn_stage(
        &relay,
        &dvm_key,
        backend.clone(),
        "fresh",
        (2, 3),
        Duration::from_secs(60),
        limits,
    );
    let mut watch = Customer::watch_all(&relay.url(), keypair(0x22), &dvm).await;
    watch.announcement_named("fresh").await;
    let flood: Vec<GenEvent> = (0..60u8)
        .map(|i| {
            let k = keypair(0x80 + i);
            request(&k, &dvm, 5900, vec![filter_param(json!({"kinds": [i]}))])
        })
        .collect();
    for r in &flood {
        watch.publish(r).await;
    }
    // Five get a place, the other 55 a busy error, quickly, while no job has finished.
    let mut busy = 0;
    for r in &flood[5..] {
        let msg = check_error(
            &watch.answer(&r.id).await,
            r,
            &dvm,
            &relay.url(),
            &keypair(0x80 + busy as u8 + 5),
        );
        assert!(msg.starts_with("busy"), "{msg}");
        busy += 1;
    }
    assert_eq!(busy, 55);
    assert_eq!(stats.busy.load(Relaxed), 55);
    assert_eq!(stats.in_flight.load(Relaxed), 5, "running and waiting now");
    assert_eq!(
        stats.in_flight_peak.load(Relaxed),
        5,
        "never more than 2 + 3"
    );
    assert!(
        backend.most.load(Relaxed) <= 2,
        "never more than two running"
    );
    assert!(
        stats.customers.load(Relaxed) <= 8,
        "the customer table is bounded"
    );
    // Still responsive: a new customer is answered at once, while every place is taken.
    let late_key = keypair(0x30);
    let late = request(&late_key, &dvm, 5900, vec![filter_param(json!({}))]);
    watch.publish(&late).await;
    let answered = tokio::time::timeout(Duration::from_secs(5), watch.answer(&late.id))
        .await
        .expect("answered within 5 s while saturated");
    assert!(check_error(&answered, &late, &dvm, &relay.url(), &late_key).starts_with("busy"));
    // Once the jobs end, the five admitted get their results and a new customer is served.
    backend.gate.add_permits(6);
    for (i, r) in flood[..5].iter().enumerate() {
        check_result(
            &watch.answer(&r.id).await,
            r,
            &dvm,
            &relay.url(),
            &keypair(0x80 + i as u8),
        );
    }
    let next = request(
        &late_key,
        &dvm,
        5900,
        vec![filter_param(json!({"kinds": [1]}))],
    );
    watch.publish(&next).await;
    let v = check_result(
        &watch.answer(&next.id).await,
        &next,
        &dvm,
        &relay.url(),
        &late_key,
    );
    assert_eq!(v, json!({"count": 1}));
    assert_eq!(stats.in_flight_peak.load(Relaxed), 5);
    let _ = stop.send(true);
    task.await.expect("stage ends");
    relay.stop().await;
}
