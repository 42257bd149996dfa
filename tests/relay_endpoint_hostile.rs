//! The relay endpoint against misbehaving clients (raw WebSocket, tokio-tungstenite): malformed
//! JSON, unknown verbs, deep nesting, 1,000 subscriptions, filters with 10,000 values, an
//! oversized frame, a client that never reads while large REQs are answered, too many
//! connections, an idle client, oversized and unknown NIP-77 sessions. Each gets a clear
//! NOTICE / CLOSED / NEG-ERR (or its connection closed), and the server keeps serving others.

mod common;

use bigbrotr::http::{Http, Server};
use bigbrotr::state::EngineState;
use bigbrotr::sync::{sync_once, SyncOptions};
use bigbrotr_testkit::gen::{sign, GenEvent};
use bigbrotr_testkit::relay::{Behavior, TestRelay};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Longest any one answer may take.
const WAIT: Duration = Duration::from_secs(30);

/// 1,200 events of ~2 KB each, so a REQ answer is large.
fn corpus() -> Vec<GenEvent> {
    let key = secp256k1::Keypair::from_secret_bytes([5u8; 32]).expect("key");
    let pad = "x".repeat(2000);
    (0..1200u64)
        .map(|i| {
            sign(
                &key,
                1_700_000_000 + i as i64,
                1,
                &[vec!["t".into(), format!("t{}", i % 3)]],
                &format!("{i} {pad}"),
            )
        })
        .collect()
}

async fn archive(pool: &bigbrotr::db::Pool, db: &str, evs: Vec<GenEvent>) {
    let relay = TestRelay::start(evs, Behavior::default())
        .await
        .expect("relay");
    sync_once(
        &config(db),
        pool.clone(),
        vec![relay_url(&relay.url())],
        &SyncOptions::default(),
        None,
    )
    .await
    .expect("sync");
}

async fn serve(
    pool: &bigbrotr::db::Pool,
    db: &str,
    tune: impl FnOnce(&mut bigbrotr::config::Http),
) -> Server {
    let mut cfg = config(db);
    cfg.http.listen = "127.0.0.1:0".into();
    tune(&mut cfg.http);
    let http = Http::bind(&cfg, db, pool.clone())
        .await
        .expect("bind")
        .expect("http configured");
    let pipeline = bigbrotr::pipeline::Pipeline::start(&cfg, pool.clone());
    let stats = pipeline.stats.clone();
    pipeline.finish().await.expect("drain");
    let state = Arc::new(EngineState::new(stats));
    state.ready.store(true, Relaxed);
    http.spawn(state)
}

/// Waits (at most 60 s) until `done`; fails the test with `what` past that.
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..600 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(done(), "{what}");
}

/// Waits (at most 60 s) until the server counts `n` open relay connections.
async fn wait_open(stats: &bigbrotr::http::relay::RelayStats, n: u64) {
    wait_until("closed connections keep their places", || {
        stats.open.load(Relaxed) == n
    })
    .await;
}

/// A client on a 4 KB receive buffer, for a test to leave unread.
async fn never_reading(server: &Server) -> Ws {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("rcvbuf");
    let stream = sock.connect(server.addr()).await.expect("tcp");
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(
            format!("ws://{}/", server.addr()),
            tokio_tungstenite::MaybeTlsStream::Plain(stream),
        ),
    )
    .await
    .expect("in time")
    .expect("handshake");
    ws
}

async fn connect(s: &Server) -> Ws {
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(format!("ws://{}/", s.addr())),
    )
    .await
    .expect("connect in time")
    .expect("websocket");
    ws
}

async fn send(ws: &mut Ws, text: String) {
    tokio::time::timeout(WAIT, ws.send(Message::Text(text.into())))
        .await
        .expect("send in time")
        .expect("send");
}

/// The next JSON message, or `None` when the server closed the connection.
async fn recv(ws: &mut Ws) -> Option<Value> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("an answer in time")
        {
            Some(Ok(Message::Text(t))) => {
                return Some(serde_json::from_str(t.as_str()).expect("server sends JSON"))
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

async fn expect(ws: &mut Ws, verb: &str) -> Value {
    let v = recv(ws)
        .await
        .unwrap_or_else(|| panic!("closed while waiting for {verb}"));
    assert_eq!(v[0], verb, "{v}");
    v
}

/// A REQ answered in full on `ws`: the events, then EOSE.
async fn req_works(ws: &mut Ws, sub: &str, limit: usize) -> usize {
    send(
        ws,
        json!(["REQ", sub, {"kinds": [1], "limit": limit}]).to_string(),
    )
    .await;
    let mut n = 0;
    loop {
        let v = recv(ws).await.expect("answer");
        match v[0].as_str() {
            Some("EVENT") => {
                assert_eq!(v[1], sub);
                n += 1;
            }
            Some("EOSE") => return n,
            _ => panic!("unexpected {v}"),
        }
    }
}

/// Bad messages each get a clear NOTICE, CLOSED or NEG-ERR, and the same connection then
/// answers a REQ in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_get_clear_answers_and_the_connection_keeps_serving() {
    let (pool, db) = test_db().await;
    archive(&pool, &db, corpus()).await;
    let server = serve(&pool, &db, |h| {
        h.relay_max_neg_ids = 100;
    })
    .await;
    let mut ws = connect(&server).await;

    let cases: Vec<(String, &str, &str)> = vec![
        ("{not json".into(), "NOTICE", "error: message is not valid JSON"),
        ("{\"a\":1}".into(), "NOTICE", "error: a message must be a JSON array"),
        ("[\"HELLO\",1]".into(), "NOTICE", "error: unknown message type \"HELLO\""),
        ("[]".into(), "NOTICE", "error: unknown message type"),
        (format!("[\"REQ\",\"s\",{}{}]", "[".repeat(40), "]".repeat(40)), "NOTICE", "error: JSON nested deeper"),
        ("[\"REQ\",\"\",{}]".into(), "NOTICE", "error: REQ needs a subscription id"),
        (json!(["REQ", "x".repeat(65), {}]).to_string(), "NOTICE", "error: REQ needs a subscription id"),
        ("[\"REQ\",\"s\"]".into(), "CLOSED", "invalid: at least one filter"),
        ("[\"REQ\",\"s\",[1]]".into(), "CLOSED", "invalid: a filter must be a JSON object"),
        ("[\"REQ\",\"s\",{\"kinds\":\"one\"}]".into(), "CLOSED", "invalid: filter: kinds must be an array"),
        ("[\"REQ\",\"s\",{\"search\":\"x\"}]".into(), "CLOSED", "invalid: filter: search (NIP-50) is not supported"),
        (json!(["REQ", "s", {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}]).to_string(), "CLOSED", "invalid: 11 filters; at most 10"),
        (json!(["COUNT", "c", {"#t": (0..10_000).map(|i| format!("v{i}")).collect::<Vec<_>>()}]).to_string(), "CLOSED", "invalid: filter has 10000 values"),
        (json!(["REQ", "s", {"authors": (0..10_000).map(|i| format!("{i:064x}")).collect::<Vec<_>>()}]).to_string(), "NOTICE", "error: message of"),
        (json!(["EVENT", {"id": "ab".repeat(32), "kind": 1}]).to_string(), "OK", ""),
        ("[\"AUTH\",{}]".into(), "NOTICE", "AUTH is not needed"),
        (json!(["NEG-MSG", "n", "00"]).to_string(), "NEG-ERR", "closed: no reconciliation is open"),
        (json!(["NEG-OPEN", "n", {"kinds": [1]}, "6100000200"]).to_string(), "NEG-ERR", "blocked: more than 100 events match"),
        (json!(["NEG-OPEN", "n", {"kinds": [1]}, "zz"]).to_string(), "NEG-ERR", "error: the initial message is not hex"),
    ];
    let notice_cases = cases.iter().filter(|c| c.1 == "NOTICE").count();
    for (msg, verb, reason) in cases {
        send(&mut ws, msg.clone()).await;
        let v = expect(&mut ws, verb).await;
        let shown: String = msg.chars().take(80).collect();
        if verb == "OK" {
            assert_eq!(
                v,
                json!(["OK", "ab".repeat(32), false, "blocked: read-only archive"])
            );
            continue;
        }
        let text = v
            .as_array()
            .and_then(|a| a.last())
            .and_then(Value::as_str)
            .unwrap_or("");
        assert!(
            text.starts_with(reason),
            "{shown}: got {v}, want {reason:?}"
        );
    }
    // A binary frame.
    tokio::time::timeout(WAIT, ws.send(Message::Binary(vec![1, 2, 3].into())))
        .await
        .expect("in time")
        .expect("send");
    let v = expect(&mut ws, "NOTICE").await;
    assert!(v[1].as_str().unwrap_or("").contains("binary"), "{v}");

    assert_eq!(req_works(&mut ws, "after", 50).await, 50);
    // A COUNT on the same connection.
    send(&mut ws, json!(["COUNT", "c", {"#t": ["t0"]}]).to_string()).await;
    let v = expect(&mut ws, "COUNT").await;
    assert_eq!(v[2]["count"], 400);

    // /metrics carries the endpoint's counters, as the endpoint counted them.
    let stats = &server.relay().expect("relay on").stats;
    let text = tokio::time::timeout(
        WAIT,
        reqwest::get(format!("http://{}/metrics", server.addr())),
    )
    .await
    .expect("metrics in time")
    .expect("metrics")
    .text()
    .await
    .expect("metrics body");
    let metric = |line: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{line} missing from /metrics:\n{text}"))
    };
    let notices = stats.notices.load(Relaxed);
    assert!(notices as usize > notice_cases, "{notices} notices");
    assert_eq!(metric("bigbrotr_relay_endpoint_notices_total "), notices);
    assert_eq!(
        metric("bigbrotr_relay_endpoint_requests_total{verb=\"count\"} "),
        stats.counts.load(Relaxed)
    );
    assert!(stats.counts.load(Relaxed) >= 1);
    assert_eq!(
        metric("bigbrotr_relay_endpoint_requests_total{verb=\"req\"} "),
        stats.reqs.load(Relaxed)
    );
    assert!(stats.reqs.load(Relaxed) >= 1);
    assert_eq!(metric("bigbrotr_relay_endpoint_connections_open "), 1);
    assert_eq!(
        metric("bigbrotr_relay_endpoint_events_sent_total "),
        stats.events_sent.load(Relaxed)
    );
    server.shutdown().await;
}

/// 1,000 subscriptions on one connection: the first `relay_max_subscriptions` are answered,
/// the rest CLOSED; a CLOSE makes room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscriptions_are_bounded() {
    let (pool, db) = test_db().await;
    archive(&pool, &db, corpus()).await;
    let server = serve(&pool, &db, |_| {}).await;
    let max = 20;
    let mut ws = connect(&server).await;
    for i in 0..1000 {
        send(
            &mut ws,
            json!(["REQ", format!("s{i}"), {"kinds": [1], "limit": 1}]).to_string(),
        )
        .await;
    }
    let (mut eose, mut closed, mut events) = (0, 0, 0);
    while eose + closed < 1000 {
        let v = recv(&mut ws).await.expect("answer");
        match v[0].as_str() {
            Some("EVENT") => events += 1,
            Some("EOSE") => eose += 1,
            Some("CLOSED") => {
                assert!(
                    v[2].as_str()
                        .unwrap_or("")
                        .starts_with("error: too many subscriptions"),
                    "{v}"
                );
                closed += 1;
            }
            _ => panic!("unexpected {v}"),
        }
    }
    assert_eq!((eose, closed, events), (max, 1000 - max, max));
    send(&mut ws, json!(["CLOSE", "s0"]).to_string()).await;
    assert_eq!(req_works(&mut ws, "again", 3).await, 3);
    server.shutdown().await;
}

/// A frame over twice the message limit closes that connection (never held whole); a client
/// that never reads while large REQs are answered is closed once its queue is full; too many
/// connections are refused; an idle one is closed. Another client is served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_slow_excess_and_idle_clients_do_not_stop_the_server() {
    let (pool, db) = test_db().await;
    archive(&pool, &db, corpus()).await;
    let server = serve(&pool, &db, |h| {
        h.relay_max_message_bytes = 65_536;
        h.relay_max_outbound_bytes = 65_536;
        h.relay_max_connections = 4;
        h.relay_idle_timeout_ms = bigbrotr::config::Millis::new(10_000);
        h.max_limit = 500;
    })
    .await;
    let stats = &server.relay().expect("relay on").stats;
    let mut good = connect(&server).await;

    // An oversized frame: the connection is closed, the other one serves.
    let mut big = connect(&server).await;
    let _ = big
        .send(Message::Text(
            format!("[\"REQ\",\"s\",{{\"#t\":[\"{}\"]}}]", "a".repeat(200_000)).into(),
        ))
        .await;
    assert!(
        recv(&mut big).await.is_none(),
        "an oversized frame closes the connection"
    );
    assert_eq!(req_works(&mut good, "g1", 10).await, 10);

    // A client that never reads, with a small receive buffer, asks for ~20 MB.
    let mut slow = never_reading(&server).await;
    for i in 0..20 {
        send(
            &mut slow,
            json!(["REQ", format!("big{i}"), {"kinds": [1], "limit": 500}]).to_string(),
        )
        .await;
    }
    wait_until("the slow client was never closed", || {
        stats.slow_closed.load(Relaxed) > 0
    })
    .await;
    assert_eq!(req_works(&mut good, "g2", 10).await, 10);
    // What it reads now ends before the 20 answers it asked for.
    let mut eose = 0;
    while let Some(v) = recv(&mut slow).await {
        if v[0] == "EOSE" {
            eose += 1;
        }
    }
    assert!(eose < 20, "the slow client was cut off ({eose} EOSE)");

    // Connections past relay_max_connections are refused with 503 (once the closed ones
    // have let go of their places).
    wait_open(stats, 1).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(&server).await);
    }
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/", server.addr())).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 503),
        other => panic!("a fifth relay connection: {:?}", other.map(|_| ())),
    }
    assert!(stats.refused.load(Relaxed) >= 1);
    drop(held);
    // The server lets go of their places when it reads the close; until then a new
    // connection would be the fifth.
    wait_open(stats, 1).await;

    // Idle: the connection is told and closed; `good` was idle too, so reconnect.
    let mut idle = connect(&server).await;
    let v = expect(&mut idle, "NOTICE").await;
    assert!(
        v[1].as_str().unwrap_or("").starts_with("closing: idle"),
        "{v}"
    );
    assert!(recv(&mut idle).await.is_none());
    let mut fresh = connect(&server).await;
    assert_eq!(req_works(&mut fresh, "g3", 500).await, 500);
    // Stopping the server closes open relay connections and does not wait on them.
    tokio::time::timeout(WAIT, server.shutdown())
        .await
        .expect("the server stops with a relay connection open");
    assert!(recv(&mut fresh).await.is_none(), "closed by the stop");
}

/// Clients slower than the archive hold none of its read connections while they catch up.
/// Six clients that never read stall mid-answer, more than the read pool's four
/// connections, and another client is still answered before any of them is closed. A client
/// that reads slowly gets every event of its REQ exactly once, newest first, across many
/// pauses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_hold_no_read_connection_and_miss_nothing() {
    let (pool, db) = test_db().await;
    let evs = corpus();
    let mut newest: Vec<(i64, [u8; 32])> = evs.iter().map(|e| (e.created_at, e.id)).collect();
    newest.sort_unstable_by(|a, b| b.cmp(a));
    let t0: Vec<[u8; 32]> = evs
        .iter()
        .filter(|e| e.json.contains("[\"t\",\"t0\"]"))
        .map(|e| e.id)
        .collect();
    assert_eq!(t0.len(), 400);
    archive(&pool, &db, evs).await;
    let server = serve(&pool, &db, |h| {
        h.relay_max_outbound_bytes = 65_536;
        h.relay_max_connections = 16;
        h.relay_idle_timeout_ms = bigbrotr::config::Millis::new(60_000);
        h.max_limit = 500;
    })
    .await;
    let stats = &server.relay().expect("relay on").stats;

    let mut slow = Vec::new();
    for _ in 0..6 {
        let mut ws = never_reading(&server).await;
        for i in 0..20 {
            send(
                &mut ws,
                json!(["REQ", format!("big{i}"), {"kinds": [1], "limit": 500}]).to_string(),
            )
            .await;
        }
        slow.push(ws);
    }
    wait_until("the six clients never filled their queues", || {
        stats.req_stalls.load(Relaxed) >= 6
    })
    .await;
    // Had each held its read connection while stalled, this REQ would wait behind them
    // until the first was closed.
    let mut good = connect(&server).await;
    assert_eq!(req_works(&mut good, "g", 10).await, 10);
    assert_eq!(
        stats.slow_closed.load(Relaxed),
        0,
        "answered while every stalled client was still open"
    );

    // Slow but reading: nine large REQs, then one of two filters whose events overlap, all
    // read at ~2 MB/s once the server has paused on a full queue, so that the backlog ahead
    // keeps the answers pausing and resuming to the end.
    let stalls = stats.req_stalls.load(Relaxed);
    let mut reader = never_reading(&server).await;
    for i in 0..9 {
        send(
            &mut reader,
            json!(["REQ", format!("r{i}"), {"kinds": [1], "limit": 500}]).to_string(),
        )
        .await;
    }
    send(
        &mut reader,
        json!(["REQ", "all", {"kinds": [1], "limit": 500}, {"#t": ["t0"]}]).to_string(),
    )
    .await;
    wait_until("the reader's answers never filled its queue", || {
        stats.req_stalls.load(Relaxed) > stalls
    })
    .await;
    let mut answers: std::collections::BTreeMap<String, Vec<[u8; 32]>> = Default::default();
    let mut eose = 0;
    while eose < 10 {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let v = recv(&mut reader).await.expect("the reader is served");
        let sub = v[1].as_str().expect("sub").to_string();
        match v[0].as_str() {
            Some("EVENT") => {
                let id = hex::decode(v[2]["id"].as_str().expect("id")).expect("hex");
                answers
                    .entry(sub)
                    .or_default()
                    .push(id.try_into().expect("32 bytes"));
            }
            Some("EOSE") => eose += 1,
            _ => panic!("unexpected {v}"),
        }
    }
    assert!(
        stats.req_stalls.load(Relaxed) > stalls + 2,
        "the answers were paused and resumed"
    );
    // The six that never read are closed 5 s after they stalled; the reader, which read, is not.
    wait_until("the six never-reading clients are closed", || {
        stats.slow_closed.load(Relaxed) >= 6
    })
    .await;
    assert_eq!(
        stats.slow_closed.load(Relaxed),
        6,
        "only the six that never read"
    );
    send(
        &mut reader,
        json!(["COUNT", "c", {"kinds": [1]}]).to_string(),
    )
    .await;
    assert_eq!(expect(&mut reader, "COUNT").await[2]["count"], 1200);
    let first: Vec<[u8; 32]> = newest[..500].iter().map(|x| x.1).collect();
    for i in 0..9 {
        assert_eq!(
            answers[&format!("r{i}")],
            first,
            "r{i}: the newest 500, in order, once"
        );
    }
    let got = &answers["all"];
    assert_eq!(
        got[..500],
        first[..],
        "the newest 500, newest first, none twice"
    );
    let mut want: std::collections::BTreeSet<[u8; 32]> = first.iter().copied().collect();
    want.extend(t0.iter().copied());
    let rest: std::collections::BTreeSet<[u8; 32]> = got[500..].iter().copied().collect();
    assert_eq!(rest.len(), got.len() - 500, "no event twice");
    assert_eq!(
        got.iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        want,
        "every event of both filters"
    );
    drop(slow);
    server.shutdown().await;
}

/// Archives `evs` through a running pipeline (one connector pass over a test relay serving
/// them), as `bigbrotr run` does while the endpoint serves.
async fn archive_live(
    pipeline: &bigbrotr::pipeline::Pipeline,
    cfg: &bigbrotr::config::Config,
    evs: Vec<GenEvent>,
) {
    let relay = TestRelay::start(evs, Behavior::default())
        .await
        .expect("relay");
    let url = relay_url(&relay.url());
    let ctx = bigbrotr::stages::model::RelayCtx::new(
        url.clone(),
        bigbrotr::stages::model::CursorState::default(),
    );
    let outcome = tokio::time::timeout(
        Duration::from_secs(120),
        pipeline
            .connector(ctx, Arc::new(cfg.sync_for(&url, true)))
            .run(),
    )
    .await
    .expect("the pass ends in time");
    assert!(
        matches!(outcome, bigbrotr::stages::connect::Outcome::Synced),
        "{outcome:?}"
    );
}

/// The ids of the next `n` EVENTs on `ws` for subscription `sub`; any other message fails.
async fn live_ids(ws: &mut Ws, sub: &str, n: usize) -> std::collections::BTreeSet<String> {
    let mut got = std::collections::BTreeSet::new();
    while got.len() < n {
        let v = expect(ws, "EVENT").await;
        assert_eq!(v[1], sub, "{v}");
        got.insert(v[2]["id"].as_str().expect("id").to_string());
    }
    got
}

/// After EOSE a subscription stays open: events the engine archives from then on reach it when
/// they match its filters, and only those; CLOSE stops them. A subscriber that never reads
/// while thousands of events are archived is cut off (its queue is bounded), the pipeline is
/// not held back, and the other subscriber gets every matching event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_subscriptions_get_newly_archived_events() {
    let (pool, db) = test_db().await;
    let mut cfg = config(&db);
    cfg.http.listen = "127.0.0.1:0".into();
    cfg.http.relay_max_outbound_bytes = 65_536;
    let http = Http::bind(&cfg, &db, pool.clone())
        .await
        .expect("bind")
        .expect("http configured");
    let pipeline = bigbrotr::pipeline::Pipeline::start(&cfg, pool.clone());
    let state = Arc::new(EngineState::new(pipeline.stats.clone()));
    state.ready.store(true, Relaxed);
    let server = http.spawn(state);
    let stats = &server.relay().expect("relay on").stats;

    let key = secp256k1::Keypair::from_secret_bytes([9u8; 32]).expect("key");
    let ev = |i: i64, kind: u16, t: &str| {
        sign(
            &key,
            1_700_000_000 + i,
            kind,
            &[vec!["t".into(), t.into()]],
            &format!("live {i}"),
        )
    };
    let mut ws = connect(&server).await;
    send(
        &mut ws,
        json!(["REQ", "live", {"kinds": [1], "#t": ["live"]}]).to_string(),
    )
    .await;
    expect(&mut ws, "EOSE").await;
    send(
        &mut ws,
        json!(["REQ", "none", {"#t": ["nothing"]}]).to_string(),
    )
    .await;
    expect(&mut ws, "EOSE").await;

    // Five match; a kind 7 with the tag and a kind 1 with another tag do not.
    let matching: Vec<GenEvent> = (0..5).map(|i| ev(i, 1, "live")).collect();
    let mut batch = matching.clone();
    batch.push(ev(10, 7, "live"));
    batch.push(ev(11, 1, "other"));
    archive_live(&pipeline, &cfg, batch).await;
    let want: std::collections::BTreeSet<String> =
        matching.iter().map(|e| hex::encode(e.id)).collect();
    assert_eq!(live_ids(&mut ws, "live", 5).await, want);
    // Sent as signed: the JSON the relay served, byte for byte, is what the client reads.
    assert_eq!(stats.live_events.load(Relaxed), 5);

    // CLOSE stops "live"; a new subscription for every kind 1 gets the next events, and
    // "live" gets none of them (they would have matched it).
    send(&mut ws, json!(["CLOSE", "live"]).to_string()).await;
    send(
        &mut ws,
        json!(["REQ", "all", {"kinds": [1], "since": 1_700_000_100}]).to_string(),
    )
    .await;
    expect(&mut ws, "EOSE").await;
    let later: Vec<GenEvent> = (100..103).map(|i| ev(i, 1, "live")).collect();
    archive_live(&pipeline, &cfg, later.clone()).await;
    let want: std::collections::BTreeSet<String> =
        later.iter().map(|e| hex::encode(e.id)).collect();
    assert_eq!(live_ids(&mut ws, "all", 3).await, want);

    // A subscriber that never reads, on a small receive buffer, while 4,000 events of ~4 KB
    // are archived: it is closed once its bounded queue is full; `ws` gets them all.
    let mut deaf = never_reading(&server).await;
    send(
        &mut deaf,
        json!(["REQ", "deaf", {"kinds": [1]}]).to_string(),
    )
    .await;
    let slow_before = stats.slow_closed.load(Relaxed);
    let pad = "y".repeat(4000);
    let flood: Vec<GenEvent> = (1000..5000)
        .map(|i| {
            sign(
                &key,
                1_700_000_000 + i,
                1,
                &[vec!["t".into(), "flood".into()]],
                &format!("{i} {pad}"),
            )
        })
        .collect();
    let want: std::collections::BTreeSet<String> =
        flood.iter().map(|e| hex::encode(e.id)).collect();
    // `ws` reads while the events are archived (a reader that waited would be cut off too).
    let ((), got) = tokio::join!(
        archive_live(&pipeline, &cfg, flood.clone()),
        live_ids(&mut ws, "all", flood.len())
    );
    assert_eq!(got, want);
    wait_until("the deaf subscriber was never cut off", || {
        stats.slow_closed.load(Relaxed) > slow_before
    })
    .await;
    drop(deaf);
    assert_eq!(
        event_ids(&pool).await.len(),
        7 + 3 + 4000,
        "everything archived"
    );
    server.shutdown().await;
    pipeline.finish().await.expect("drain");
}
