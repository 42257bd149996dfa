//! NIP-77 (negentropy) and NIP-45 (COUNT) on the project's fault-injecting test relay, driven by
//! a raw WebSocket client with the `negentropy` crate as the reconciling side: the compliant modes
//! find exactly the differences and count exactly the stored matches, and every misbehaviour does
//! what it says.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bigbrotr_testkit::gen::{generate, GenEvent, GenSpec};
use bigbrotr_testkit::relay::{Behavior, CountMode, NegMode, TestRelay};
use futures_util::{SinkExt, StreamExt};
use negentropy::{Id, Negentropy, NegentropyStorageVector};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Item = (i64, [u8; 32]);

const START: i64 = 1_700_000_000;

fn events(count: usize, seed: u64) -> Vec<GenEvent> {
    events_from(START, count, seed)
}

/// Signed events dated from `start` on.
fn events_from(start: i64, count: usize, seed: u64) -> Vec<GenEvent> {
    generate(&GenSpec {
        count,
        authors: 5,
        kinds: vec![1],
        content_len: (5, 30),
        tags_per_event: (0, 0),
        start_ts: start,
        spread_secs: 100_000,
        seed,
    })
}

fn items(evs: &[GenEvent]) -> Vec<Item> {
    evs.iter().map(|e| (e.created_at, e.id)).collect()
}

fn ids(evs: &[GenEvent]) -> BTreeSet<[u8; 32]> {
    evs.iter().map(|e| e.id).collect()
}

async fn relay(evs: &[GenEvent], b: Behavior) -> TestRelay {
    TestRelay::start(evs.to_vec(), b).await.unwrap()
}

fn neg(mode: NegMode) -> Behavior {
    Behavior {
        neg: mode,
        ..Default::default()
    }
}

async fn connect(r: &TestRelay) -> Ws {
    connect_async(r.url()).await.unwrap().0
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The next JSON frame, or None after `ms` of silence; the socket must not end.
async fn next(ws: &mut Ws, ms: u64) -> Option<Value> {
    loop {
        match tokio::time::timeout(Duration::from_millis(ms), ws.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Text(t)))) => {
                return Some(serde_json::from_str(t.as_str()).expect("relay sent non-JSON"))
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            other => panic!("socket ended or odd frame: {other:?}"),
        }
    }
}

async fn expect(ws: &mut Ws) -> Value {
    next(ws, 3000).await.expect("no answer within 3 s")
}

fn client(items: &[Item]) -> Negentropy<'static, NegentropyStorageVector> {
    let mut s = NegentropyStorageVector::with_capacity(items.len());
    for &(t, id) in items {
        s.insert(t as u64, Id::from_byte_array(id)).unwrap();
    }
    s.seal().unwrap();
    Negentropy::owned(s, 60_000).unwrap()
}

#[derive(Debug)]
struct Outcome {
    /// Ids the client holds and the relay lacks.
    have: BTreeSet<[u8; 32]>,
    /// Ids the relay holds and the client lacks.
    need: BTreeSet<[u8; 32]>,
    /// NEG-MSG frames the client sent after NEG-OPEN.
    msgs: u64,
}

/// A whole NIP-77 reconciliation of `mine` against the relay's set for `filter`; Err is the
/// NEG-ERR reason (or what else went wrong).
async fn reconcile(
    ws: &mut Ws,
    sub: &str,
    filter: Value,
    mine: &[Item],
) -> Result<Outcome, String> {
    let mut n = client(mine);
    let init = n.initiate().unwrap();
    send(ws, json!(["NEG-OPEN", sub, filter, hex::encode(init)])).await;
    let (mut have, mut need, mut msgs) = (Vec::new(), Vec::new(), 0);
    loop {
        let v = expect(ws).await;
        match v[0].as_str() {
            Some("NEG-MSG") if v[1] == sub => {
                let bytes = hex::decode(v[2].as_str().unwrap()).map_err(|e| e.to_string())?;
                match n
                    .reconcile_with_ids(&bytes, &mut have, &mut need)
                    .map_err(|e| e.to_string())?
                {
                    Some(out) => {
                        send(ws, json!(["NEG-MSG", sub, hex::encode(out)])).await;
                        msgs += 1;
                    }
                    None => break,
                }
            }
            Some("NEG-ERR") if v[1] == sub => return Err(v[2].as_str().unwrap().to_string()),
            _ => return Err(format!("unexpected frame {v}")),
        }
    }
    send(ws, json!(["NEG-CLOSE", sub])).await;
    let set = |v: Vec<Id>| v.into_iter().map(Id::to_bytes).collect::<BTreeSet<_>>();
    Ok(Outcome {
        have: set(have),
        need: set(need),
        msgs,
    })
}

/// The ids of the EVENT frames for `sub` until its EOSE.
async fn req_ids(ws: &mut Ws, sub: &str, filter: Value) -> Vec<[u8; 32]> {
    send(ws, json!(["REQ", sub, filter])).await;
    let mut out = Vec::new();
    loop {
        let v = expect(ws).await;
        match v[0].as_str() {
            Some("EVENT") if v[1] == sub => {
                let mut id = [0u8; 32];
                hex::decode_to_slice(v[2]["id"].as_str().unwrap(), &mut id).unwrap();
                out.push(id);
            }
            Some("EOSE") if v[1] == sub => return out,
            _ => panic!("unexpected frame {v}"),
        }
    }
}

#[tokio::test]
async fn normal_finds_exactly_the_differences() {
    let evs = events(2010, 77);
    let (held, extra) = evs.split_at(2000);
    let r = relay(held, neg(NegMode::Normal)).await;
    let mut ws = connect(&r).await;

    // The client has 1,900 of the relay's 2,000 plus 10 the relay lacks.
    let mut mine = items(&held[100..]);
    mine.extend(items(extra));
    let o = reconcile(&mut ws, "n1", json!({}), &mine).await.unwrap();
    assert_eq!(o.need, ids(&held[..100]));
    assert_eq!(o.have, ids(extra));
    assert!(o.msgs >= 1, "2,000 items take more than one round");
    let rounds = o.msgs;

    // Exactly the relay's set: nothing either way, and the sub id can be reused after NEG-CLOSE.
    let o = reconcile(&mut ws, "n1", json!({}), &items(held))
        .await
        .unwrap();
    assert!(o.need.is_empty() && o.have.is_empty(), "{o:?}");

    // A backdated publish is in the next reconciliation's set (the client's one older item
    // is a made-up id: negentropy never checks ids).
    let backdated = events_from(START - 200_000, 1, 79).remove(0);
    assert!(backdated.created_at < START);
    r.publish(backdated.clone());
    let mine_old = (START - 300_000, [9u8; 32]);
    let o = reconcile(&mut ws, "n2", json!({"until": START - 1}), &[mine_old])
        .await
        .unwrap();
    assert_eq!(o.need, BTreeSet::from([backdated.id]));
    assert_eq!(o.have, BTreeSet::from([mine_old.1]));

    let c = r.counters();
    assert_eq!(c.neg_opens.load(Relaxed), 3);
    assert!(c.neg_msgs.load(Relaxed) >= rounds);
    assert!(c.neg_bytes_sent.load(Relaxed) > 0);
    assert_eq!(c.events_sent.load(Relaxed), 0);
    assert_eq!(c.published.load(Relaxed), 1);
    r.stop().await;

    // A small frame limit: the same answer, in more rounds.
    let r = relay(
        held,
        Behavior {
            neg: NegMode::Normal,
            neg_frame_limit: 4096,
            ..Default::default()
        },
    )
    .await;
    let mut ws = connect(&r).await;
    let o = reconcile(&mut ws, "n1", json!({}), &mine).await.unwrap();
    assert_eq!(o.need, ids(&held[..100]));
    assert_eq!(o.have, ids(extra));
    assert!(o.msgs > rounds, "{} rounds vs {rounds}", o.msgs);
    r.stop().await;
}

#[tokio::test]
async fn blocked_above_refuses_big_filters_only() {
    let evs = events(2000, 81);
    let r = relay(&evs, neg(NegMode::BlockedAbove(100))).await;
    let mut ws = connect(&r).await;
    let err = reconcile(&mut ws, "b", json!({}), &items(&evs))
        .await
        .unwrap_err();
    assert!(err.starts_with("blocked"), "{err}");
    assert_eq!(err, "blocked: too many query results");

    // A window of at most 100: reconciled, and `limit` is ignored (the whole window counts).
    let mut ts: Vec<i64> = evs.iter().map(|e| e.created_at).collect();
    ts.sort();
    let (since, until) = (ts[500], ts[580]);
    let window: Vec<GenEvent> = evs
        .iter()
        .filter(|e| e.created_at >= since && e.created_at <= until)
        .cloned()
        .collect();
    assert!((60..=100).contains(&window.len()), "{}", window.len());
    let filter = json!({"since": since, "until": until, "limit": 1});
    let o = reconcile(&mut ws, "b", filter, &items(&window[5..]))
        .await
        .unwrap();
    assert_eq!(o.need, ids(&window[..5]));
    assert!(o.have.is_empty());
    assert_eq!(r.counters().neg_opens.load(Relaxed), 2);
    r.stop().await;
}

#[tokio::test]
async fn unsupported_by_default_and_error_mode() {
    let evs = events(50, 82);
    let r = relay(&evs, Behavior::default()).await;
    let mut ws = connect(&r).await;
    send(&mut ws, json!(["NEG-OPEN", "u", {}, "6100"])).await;
    assert_eq!(
        expect(&mut ws).await,
        json!(["NOTICE", "unsupported message type: NEG-OPEN"])
    );
    send(&mut ws, json!(["NEG-MSG", "u", "6100"])).await;
    assert_eq!(
        expect(&mut ws).await,
        json!(["NOTICE", "unsupported message type: NEG-MSG"])
    );
    send(&mut ws, json!(["NEG-CLOSE", "u"])).await;
    assert_eq!(
        expect(&mut ws).await,
        json!(["NOTICE", "unsupported message type: NEG-CLOSE"])
    );
    let c = r.counters();
    assert_eq!(
        (c.neg_opens.load(Relaxed), c.neg_msgs.load(Relaxed)),
        (1, 1)
    );
    assert_eq!(c.neg_bytes_sent.load(Relaxed), 0);
    r.stop().await;

    let r = relay(&evs, neg(NegMode::Error)).await;
    let mut ws = connect(&r).await;
    let err = reconcile(&mut ws, "e", json!({}), &items(&evs))
        .await
        .unwrap_err();
    assert_eq!(err, "error: negentropy disabled");
    let frame = json!(["NEG-ERR", "e", "error: negentropy disabled"]).to_string();
    assert_eq!(
        r.counters().neg_bytes_sent.load(Relaxed),
        frame.len() as u64
    );
    r.stop().await;
}

#[tokio::test]
async fn malformed_and_oversized_replies() {
    let evs = events(200, 83);
    let r = relay(&evs, neg(NegMode::Malformed)).await;
    let mut ws = connect(&r).await;
    // First open: not hex at all.
    let err = reconcile(&mut ws, "m", json!({}), &items(&evs))
        .await
        .unwrap_err();
    assert!(err.contains("Invalid character"), "{err}");
    // Second: valid hex, but negentropy rejects it.
    let err = reconcile(&mut ws, "m", json!({}), &items(&evs))
        .await
        .unwrap_err();
    assert!(err.contains("Unexpected mode"), "{err}");
    // Third: not hex again.
    send(&mut ws, json!(["NEG-OPEN", "m", {}, "6100"])).await;
    let v = expect(&mut ws).await;
    assert_eq!(v[0], "NEG-MSG");
    assert!(hex::decode(v[2].as_str().unwrap()).is_err());
    r.stop().await;

    let r = relay(&evs, neg(NegMode::Oversized(200_000))).await;
    let mut ws = connect(&r).await;
    send(&mut ws, json!(["NEG-OPEN", "o", {}, "6100"])).await;
    let v = expect(&mut ws).await;
    assert_eq!((&v[0], &v[1]), (&json!("NEG-MSG"), &json!("o")));
    let payload = v[2].as_str().unwrap();
    assert_eq!(payload.len(), 200_000);
    let bytes = hex::decode(payload).unwrap();
    assert!(client(&items(&evs))
        .reconcile_with_ids(&bytes, &mut Vec::new(), &mut Vec::new())
        .is_err());
    assert_eq!(
        r.counters().neg_bytes_sent.load(Relaxed),
        v.to_string().len() as u64
    );
    r.stop().await;
}

#[tokio::test]
async fn silent_and_stall_after_open() {
    let evs = events(2000, 84);
    let r = relay(&evs, neg(NegMode::Silent)).await;
    let mut ws = connect(&r).await;
    send(&mut ws, json!(["NEG-OPEN", "s", {}, "6100"])).await;
    assert_eq!(next(&mut ws, 1000).await, None);
    // Still answering everything else.
    assert_eq!(req_ids(&mut ws, "r", json!({"limit": 3})).await.len(), 3);
    assert_eq!(r.counters().neg_opens.load(Relaxed), 1);
    assert_eq!(r.counters().neg_bytes_sent.load(Relaxed), 0);
    r.stop().await;

    let r = relay(&evs, neg(NegMode::StallAfterOpen)).await;
    let mut ws = connect(&r).await;
    // The client lacks 100, so one round cannot settle it.
    let mut n = client(&items(&evs[100..]));
    send(
        &mut ws,
        json!(["NEG-OPEN", "s", {}, hex::encode(n.initiate().unwrap())]),
    )
    .await;
    let v = expect(&mut ws).await;
    assert_eq!(v[0], "NEG-MSG");
    let bytes = hex::decode(v[2].as_str().unwrap()).unwrap();
    let out = n
        .reconcile_with_ids(&bytes, &mut Vec::new(), &mut Vec::new())
        .unwrap()
        .expect("a second round is needed");
    send(&mut ws, json!(["NEG-MSG", "s", hex::encode(out)])).await;
    assert_eq!(next(&mut ws, 1000).await, None);
    assert_eq!(req_ids(&mut ws, "r", json!({"limit": 2})).await.len(), 2);
    let c = r.counters();
    assert_eq!(
        (c.neg_opens.load(Relaxed), c.neg_msgs.load(Relaxed)),
        (1, 1)
    );
    r.stop().await;
}

#[tokio::test]
async fn phantoms_are_claimed_but_never_served() {
    let evs = events(500, 85);
    let fake = events(3, 86);
    let mut phantoms = items(&fake);
    // One phantom before the window asked below.
    phantoms[2].0 = START - 1000;
    let r = relay(
        &evs,
        Behavior {
            neg: NegMode::Normal,
            neg_phantoms: phantoms.clone(),
            ..Default::default()
        },
    )
    .await;
    let mut ws = connect(&r).await;
    let o = reconcile(&mut ws, "p", json!({}), &items(&evs))
        .await
        .unwrap();
    assert_eq!(o.need, ids(&fake));
    assert!(o.have.is_empty());
    let o = reconcile(&mut ws, "p", json!({"since": START}), &items(&evs))
        .await
        .unwrap();
    assert_eq!(o.need, ids(&fake[..2]));

    let asked: Vec<String> = fake.iter().map(|e| hex::encode(e.id)).collect();
    assert!(req_ids(&mut ws, "q", json!({"ids": asked}))
        .await
        .is_empty());
    // A real id is still served.
    let got = req_ids(&mut ws, "q2", json!({"ids": [hex::encode(evs[7].id)]})).await;
    assert_eq!(got, vec![evs[7].id]);
    let c = r.counters();
    assert_eq!((c.id_reqs.load(Relaxed), c.ids_asked.load(Relaxed)), (2, 4));
    assert_eq!(c.events_sent.load(Relaxed), 1);
    r.stop().await;
}

#[tokio::test]
async fn ids_serve_others_answers_with_the_wrong_events() {
    let evs = events(50, 87);
    let r = relay(
        &evs,
        Behavior {
            ids_serve_others: true,
            ..Default::default()
        },
    )
    .await;
    let mut ws = connect(&r).await;
    let asked = [evs[0].id, evs[1].id];
    let got = req_ids(
        &mut ws,
        "x",
        json!({"ids": [hex::encode(asked[0]), hex::encode(asked[1])]}),
    )
    .await;
    assert_eq!(got.len(), 2);
    let stored = ids(&evs);
    for id in &got {
        assert!(!asked.contains(id));
        assert!(stored.contains(id));
    }
    // A filter without ids is served normally.
    assert_eq!(req_ids(&mut ws, "y", json!({})).await.len(), 50);
    let c = r.counters();
    assert_eq!((c.id_reqs.load(Relaxed), c.ids_asked.load(Relaxed)), (1, 2));
    assert_eq!(c.events_sent.load(Relaxed), 52);
    r.stop().await;
}

#[tokio::test]
async fn hostile_client_messages_get_neg_err_not_a_crash() {
    let evs = events(300, 88);
    let r = relay(&evs, neg(NegMode::Normal)).await;
    let mut ws = connect(&r).await;
    let err_of = |v: Value, sub: &str| {
        assert_eq!((&v[0], &v[1]), (&json!("NEG-ERR"), &json!(sub)), "{v}");
        v[2].as_str().unwrap().to_string()
    };

    let cases = [
        (
            json!(["NEG-OPEN", "h", {}, "zz"]),
            "error: initial message is not hex",
        ),
        (
            json!(["NEG-OPEN", "h", {}, "abc"]),
            "error: initial message is not hex",
        ),
        (
            json!(["NEG-OPEN", "h", {}, 42]),
            "error: initial message is not hex",
        ),
        (
            json!(["NEG-OPEN", "h", {}]),
            "error: initial message is not hex",
        ),
        (json!(["NEG-OPEN", "h"]), "error: NEG-OPEN without a filter"),
        (
            json!(["NEG-OPEN", "h", [], "61"]),
            "error: invalid filter: filter is not an object",
        ),
        (
            json!(["NEG-OPEN", "h", {}, ""]),
            "error: negentropy: parse ends prematurely",
        ),
        (
            json!(["NEG-OPEN", "h", {}, "ff"]),
            "error: negentropy: invalid negentropy protocol version byte",
        ),
        (
            json!(["NEG-OPEN", "h", {}, "61000007"]),
            "error: negentropy: Unexpected mode: 7",
        ),
        (
            json!(["NEG-OPEN", "h", {}, "610005"]),
            "error: negentropy: parse ends prematurely",
        ),
        (
            json!(["NEG-MSG", "h", "6100"]),
            "closed: no such negentropy subscription",
        ),
    ];
    for (msg, want) in cases {
        send(&mut ws, msg.clone()).await;
        assert_eq!(err_of(expect(&mut ws).await, "h"), want, "for {msg}");
    }
    send(&mut ws, json!(["NEG-OPEN", 7, {}, "61"])).await;
    assert_eq!(expect(&mut ws).await[0], "NOTICE");

    // An open session hit by a bad NEG-MSG is closed by its NEG-ERR.
    let mut n = client(&items(&evs[10..]));
    let init = hex::encode(n.initiate().unwrap());
    send(&mut ws, json!(["NEG-OPEN", "h", {}, init])).await;
    assert_eq!(expect(&mut ws).await[0], "NEG-MSG");
    send(&mut ws, json!(["NEG-MSG", "h", "not hex"])).await;
    assert_eq!(
        err_of(expect(&mut ws).await, "h"),
        "error: message is not hex"
    );
    send(&mut ws, json!(["NEG-MSG", "h", "6100"])).await;
    assert!(err_of(expect(&mut ws).await, "h").starts_with("closed:"));

    // NEG-CLOSE ends a session too.
    send(&mut ws, json!(["NEG-OPEN", "h", {}, init])).await;
    assert_eq!(expect(&mut ws).await[0], "NEG-MSG");
    send(&mut ws, json!(["NEG-CLOSE", "h"])).await;
    send(&mut ws, json!(["NEG-MSG", "h", "6100"])).await;
    assert!(err_of(expect(&mut ws).await, "h").starts_with("closed:"));

    // Still a working relay, and a good reconciliation on the same socket.
    assert_eq!(req_ids(&mut ws, "r", json!({"limit": 4})).await.len(), 4);
    let o = reconcile(&mut ws, "ok", json!({}), &items(&evs[10..]))
        .await
        .unwrap();
    assert_eq!(o.need, ids(&evs[..10]));
    r.stop().await;

    // A frame limit negentropy refuses is a NEG-ERR on every open.
    let r = relay(
        &evs,
        Behavior {
            neg: NegMode::Normal,
            neg_frame_limit: 100,
            ..Default::default()
        },
    )
    .await;
    let mut ws = connect(&r).await;
    let err = reconcile(&mut ws, "f", json!({}), &items(&evs))
        .await
        .unwrap_err();
    assert_eq!(err, "error: Frame size limit too small");
    r.stop().await;
}

fn count_mode(mode: CountMode) -> Behavior {
    Behavior {
        count: mode,
        ..Default::default()
    }
}

/// One signed event dated exactly `at`.
fn event_at(at: i64, seed: u64) -> GenEvent {
    let ev = generate(&GenSpec {
        count: 1,
        authors: 1,
        kinds: vec![1],
        content_len: (5, 30),
        tags_per_event: (0, 0),
        start_ts: at,
        spread_secs: 1,
        seed,
    })
    .remove(0);
    assert_eq!(ev.created_at, at);
    ev
}

/// The stored events in `[since, until]`.
fn in_window(evs: &[GenEvent], since: i64, until: i64) -> usize {
    evs.iter()
        .filter(|e| e.created_at >= since && e.created_at <= until)
        .count()
}

/// Sends a COUNT and returns the relay's answer frame.
async fn count(ws: &mut Ws, sub: &str, filters: &[Value]) -> Value {
    let mut msg = vec![json!("COUNT"), json!(sub)];
    msg.extend_from_slice(filters);
    send(ws, Value::Array(msg)).await;
    expect(ws).await
}

/// The `n` of a `["COUNT", sub, {"count": n}]` answer without `approximate`.
async fn exact(ws: &mut Ws, sub: &str, filters: &[Value]) -> u64 {
    let v = count(ws, sub, filters).await;
    assert_eq!((&v[0], &v[1]), (&json!("COUNT"), &json!(sub)), "{v}");
    let obj = v[2].as_object().expect("COUNT answer is not an object");
    assert_eq!(obj.len(), 1, "{v}");
    obj["count"].as_u64().expect("count is not a number")
}

#[tokio::test]
async fn count_unsupported_by_default() {
    let evs = events(50, 90);
    let r = relay(&evs, Behavior::default()).await;
    let mut ws = connect(&r).await;
    let v = count(&mut ws, "c", &[json!({})]).await;
    assert_eq!(v, json!(["NOTICE", "unsupported message type: COUNT"]));
    // A broken COUNT gets the same NOTICE: nothing of it is read.
    send(&mut ws, json!(["COUNT"])).await;
    assert_eq!(
        expect(&mut ws).await,
        json!(["NOTICE", "unsupported message type: COUNT"])
    );
    // Still a working relay.
    assert_eq!(req_ids(&mut ws, "r", json!({})).await.len(), 50);
    let c = r.counters();
    assert_eq!(c.counts.load(Relaxed), 2);
    assert_eq!(c.reqs.load(Relaxed), 1);
    r.stop().await;
}

#[tokio::test]
async fn count_exact_counts_the_store() {
    let evs = events(500, 91);
    // max_limit and ignore_until shape REQ replies only: COUNT ignores them.
    let r = relay(
        &evs,
        Behavior {
            count: CountMode::Exact,
            max_limit: Some(10),
            ..Default::default()
        },
    )
    .await;
    let mut ws = connect(&r).await;
    assert_eq!(exact(&mut ws, "all", &[json!({})]).await, 500);
    assert_eq!(exact(&mut ws, "all", &[json!({"limit": 3})]).await, 500);
    assert_eq!(req_ids(&mut ws, "r", json!({})).await.len(), 10);
    // Closed, so the publishes below are not delivered to it.
    send(&mut ws, json!(["CLOSE", "r"])).await;

    let mut ts: Vec<i64> = evs.iter().map(|e| e.created_at).collect();
    ts.sort();
    let (since, until) = (ts[100], ts[299]);
    let want = in_window(&evs, since, until);
    assert!((200..=210).contains(&want), "{want}");
    let window = json!({"since": since, "until": until});
    assert_eq!(
        exact(&mut ws, "w", std::slice::from_ref(&window)).await,
        want as u64
    );
    let only_since = in_window(&evs, since, i64::MAX) as u64;
    assert_eq!(
        exact(&mut ws, "w", &[json!({"since": since})]).await,
        only_since
    );
    let only_until = in_window(&evs, i64::MIN, until) as u64;
    assert_eq!(
        exact(&mut ws, "w", &[json!({"until": until})]).await,
        only_until
    );
    // An empty window and an inverted one.
    assert_eq!(exact(&mut ws, "w", &[json!({"until": START - 1})]).await, 0);
    assert_eq!(
        exact(&mut ws, "w", &[json!({"since": until, "until": since})]).await,
        0
    );

    // The other fields are matched too.
    let author = evs[0].pubkey;
    let by_author = evs.iter().filter(|e| e.pubkey == author).count() as u64;
    assert!((1..500).contains(&by_author), "{by_author}");
    let f = json!({"authors": [hex::encode(author)]});
    assert_eq!(exact(&mut ws, "a", &[f]).await, by_author);
    assert_eq!(exact(&mut ws, "k", &[json!({"kinds": [7]})]).await, 0);
    let asked =
        json!({"ids": [hex::encode(evs[3].id), hex::encode(evs[4].id), hex::encode([7u8; 32])]});
    assert_eq!(exact(&mut ws, "i", &[asked]).await, 2);

    // Several filters: an event matching more than one counts once.
    let (mid, end) = (ts[200], ts[399]);
    let overlap = json!({"since": mid, "until": end});
    let union = in_window(&evs, since, end) as u64;
    assert_eq!(exact(&mut ws, "u", &[window.clone(), overlap]).await, union);
    let disjoint = json!({"until": START + 1000});
    let both = want as u64 + in_window(&evs, i64::MIN, START + 1000) as u64;
    assert!(ts[100] > START + 1000, "the windows overlap");
    assert_eq!(exact(&mut ws, "u", &[window.clone(), disjoint]).await, both);
    // No filter matches nothing.
    assert_eq!(exact(&mut ws, "none", &[]).await, 0);

    // A backdated publish (dated inside the window, older than most of the store) is counted
    // by the next COUNT of its window, and of everything; once, however often it is published.
    let backdated = event_at(since + 1, 92);
    assert!(!evs.iter().any(|e| e.id == backdated.id));
    r.publish(backdated.clone());
    r.publish(backdated);
    assert_eq!(
        exact(&mut ws, "w", std::slice::from_ref(&window)).await,
        want as u64 + 1
    );
    assert_eq!(exact(&mut ws, "all", &[json!({})]).await, 501);
    // One before the whole store: only windows reaching back that far see it.
    r.publish(event_at(START - 50_000, 93));
    assert_eq!(
        exact(&mut ws, "old", &[json!({"until": START - 1})]).await,
        1
    );
    assert_eq!(exact(&mut ws, "w", &[window]).await, want as u64 + 1);
    assert_eq!(exact(&mut ws, "all", &[json!({})]).await, 502);

    let c = r.counters();
    assert_eq!(c.counts.load(Relaxed), 18);
    assert_eq!(c.reqs.load(Relaxed), 1);
    assert_eq!(c.published.load(Relaxed), 3);
    assert_eq!(c.events_sent.load(Relaxed), 10);
    r.stop().await;
}

#[tokio::test]
async fn count_approximate_and_closed() {
    let evs = events(500, 94);
    let r = relay(&evs, count_mode(CountMode::Approximate)).await;
    let mut ws = connect(&r).await;
    assert_eq!(
        count(&mut ws, "a", &[json!({})]).await,
        json!(["COUNT", "a", {"count": 500, "approximate": true}])
    );
    let until = START + 50_000;
    let want = in_window(&evs, i64::MIN, until);
    assert!((200..300).contains(&want), "{want}");
    assert_eq!(
        count(&mut ws, "a", &[json!({"until": until, "limit": 1})]).await,
        json!(["COUNT", "a", {"count": want, "approximate": true}])
    );
    assert_eq!(r.counters().counts.load(Relaxed), 2);
    r.stop().await;

    let r = relay(&evs, count_mode(CountMode::Closed)).await;
    let mut ws = connect(&r).await;
    assert_eq!(
        count(&mut ws, "c", &[json!({})]).await,
        json!(["CLOSED", "c", "error: count disabled"])
    );
    assert_eq!(
        count(&mut ws, "c2", &[json!({"since": START})]).await,
        json!(["CLOSED", "c2", "error: count disabled"])
    );
    // Still a working relay.
    assert_eq!(req_ids(&mut ws, "r", json!({"limit": 5})).await.len(), 5);
    let c = r.counters();
    assert_eq!(c.counts.load(Relaxed), 2);
    assert_eq!(c.events_sent.load(Relaxed), 5);
    r.stop().await;
}

#[tokio::test]
async fn hostile_count_messages_get_closed_or_notice_not_a_crash() {
    let evs = events(100, 95);
    let r = relay(&evs, count_mode(CountMode::Exact)).await;
    let mut ws = connect(&r).await;
    let long = "x".repeat(65);
    let cases = [
        (
            json!(["COUNT", "h", []]),
            json!(["CLOSED", "h", "invalid: filter is not an object"]),
        ),
        (
            json!(["COUNT", "h", {}, 5]),
            json!(["CLOSED", "h", "invalid: filter is not an object"]),
        ),
        (
            json!(["COUNT", "h", {"since": "yesterday"}]),
            json!(["CLOSED", "h", "invalid: since is not a number"]),
        ),
        (
            json!(["COUNT", "h", {"kinds": 1}]),
            json!(["CLOSED", "h", "invalid: kinds is not an array"]),
        ),
        (
            json!(["COUNT", "", {}]),
            json!(["CLOSED", "", "invalid: subscription id must be 1-64 chars"]),
        ),
        (
            json!(["COUNT", long, {}]),
            json!([
                "CLOSED",
                long,
                "invalid: subscription id must be 1-64 chars"
            ]),
        ),
        (
            json!(["COUNT"]),
            json!(["NOTICE", "invalid: COUNT without a subscription id"]),
        ),
        (
            json!(["COUNT", 7, {}]),
            json!(["NOTICE", "invalid: COUNT without a subscription id"]),
        ),
        // Unknown fields are ignored, as in a REQ.
        (
            json!(["COUNT", "h", {"search": "x"}]),
            json!(["COUNT", "h", {"count": 100}]),
        ),
    ];
    for (msg, want) in &cases {
        send(&mut ws, msg.clone()).await;
        assert_eq!(&expect(&mut ws).await, want, "for {msg}");
    }
    // Still a working relay on the same socket.
    assert_eq!(exact(&mut ws, "ok", &[json!({})]).await, 100);
    assert_eq!(req_ids(&mut ws, "r", json!({"limit": 4})).await.len(), 4);
    assert_eq!(r.counters().counts.load(Relaxed), cases.len() as u64 + 1);
    r.stop().await;
}
