//! The archive as a read-only Nostr relay, against a real PostgreSQL and the real HTTP server:
//! rust-nostr's `nostr-sdk` fetches events by filters (tags, authors, kinds, since/until,
//! limit), counts them (NIP-45) and reconciles with NIP-77 against the endpoint; every answer
//! equals the same filter evaluated by brute force over the archived events. Also the NIP-11
//! document, and `EVENT` refused as a read-only archive.

mod common;

use bigbrotr::http::{Http, Server};
use bigbrotr::state::EngineState;
use bigbrotr::sync::{sync_once, SyncOptions as ArchiveSync};
use bigbrotr_testkit::gen::{sign, GenEvent};
use bigbrotr_testkit::relay::{Behavior, TestRelay};
use common::*;
use nostr_sdk::prelude::*;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// Longest any one exchange with the endpoint may take.
const WAIT: Duration = Duration::from_secs(30);

/// An archived event and its tags, for the brute force.
struct Ev {
    gen: GenEvent,
    tags: Vec<Vec<String>>,
}

fn h(n: u64) -> String {
    format!("{n:064x}")
}

/// 500 events from 3 authors over few seconds (ties broken by id), with `p`, `e` and `t` tags
/// by formula, plus one whose tag and content hold U+0000 (archived with raw_canonical).
fn corpus() -> Vec<Ev> {
    let keys: Vec<::secp256k1::Keypair> = (1..=3u8)
        .map(|i| ::secp256k1::Keypair::from_secret_bytes([i; 32]).expect("key"))
        .collect();
    let mut out = Vec::new();
    for i in 0..500u64 {
        let x = i.wrapping_mul(2654435761) % 1000;
        let mut tags: Vec<Vec<String>> = Vec::new();
        if x % 2 == 0 {
            tags.push(vec!["p".into(), h(x % 7)]);
        }
        if x % 3 == 0 {
            tags.push(vec!["e".into(), h(x % 5), "wss://hint.example".into()]);
        }
        if x % 5 == 0 {
            tags.push(vec!["t".into(), format!("topic{}", x % 4)]);
        }
        let created_at = 1_700_000_000 + (x % 60) as i64;
        let kind = [1u16, 7, 1111, 30023][(x % 4) as usize];
        if kind == 30023 {
            tags.push(vec!["d".into(), format!("d{i}")]);
        }
        let key = &keys[(i % 3) as usize];
        let gen = sign(key, created_at, kind, &tags, &format!("note {i}"));
        out.push(Ev { gen, tags });
    }
    let nul = vec![
        vec!["t".into(), "nul\u{0}tag".into()],
        vec!["p".into(), h(3)],
    ];
    out.push(Ev {
        gen: sign(&keys[0], 1_700_000_030, 1, &nul, "x\u{0}y"),
        tags: nul,
    });
    out
}

async fn archive(pool: &bigbrotr::db::Pool, db: &str, evs: &[Ev]) {
    let relay = TestRelay::start(
        evs.iter().map(|e| e.gen.clone()).collect(),
        Behavior::default(),
    )
    .await
    .expect("relay");
    sync_once(
        &config(db),
        pool.clone(),
        vec![relay_url(&relay.url())],
        &ArchiveSync::default(),
        None,
    )
    .await
    .expect("sync");
    let want: BTreeSet<String> = evs.iter().map(|e| hex::encode(e.gen.id)).collect();
    assert_same_ids(&event_ids(pool).await, &want, "archive");
}

async fn serve(pool: &bigbrotr::db::Pool, db: &str) -> Server {
    let mut cfg = config(db);
    cfg.http.listen = "127.0.0.1:0".into();
    cfg.http.max_limit = 200;
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

/// A filter as the brute force reads it.
#[derive(Clone, Default)]
struct Want {
    authors: Option<Vec<[u8; 32]>>,
    kinds: Option<Vec<u16>>,
    tags: Vec<(&'static str, Vec<String>)>,
    since: Option<i64>,
    until: Option<i64>,
    limit: Option<usize>,
}

/// The matching ids, newest first and ties by id descending (the endpoint's order), at most
/// `limit`.
fn brute(evs: &[Ev], w: &Want, cap: usize) -> Vec<[u8; 32]> {
    let mut m: Vec<&Ev> = evs
        .iter()
        .filter(|e| w.authors.as_ref().is_none_or(|a| a.contains(&e.gen.pubkey)))
        .filter(|e| w.kinds.as_ref().is_none_or(|k| k.contains(&e.gen.kind)))
        .filter(|e| w.since.is_none_or(|s| e.gen.created_at >= s))
        .filter(|e| w.until.is_none_or(|u| e.gen.created_at <= u))
        .filter(|e| {
            w.tags.iter().all(|(l, vals)| {
                e.tags
                    .iter()
                    .any(|t| t.len() >= 2 && t[0] == *l && vals.contains(&t[1]))
            })
        })
        .collect();
    m.sort_by_key(|e| std::cmp::Reverse((e.gen.created_at, e.gen.id)));
    m.into_iter()
        .take(w.limit.unwrap_or(cap).min(cap))
        .map(|e| e.gen.id)
        .collect()
}

/// The same filter for nostr-sdk.
fn to_filter(w: &Want) -> Filter {
    let mut f = Filter::new();
    if let Some(a) = &w.authors {
        f = f.authors(
            a.iter()
                .map(|b| PublicKey::from_slice(b).expect("author key")),
        );
    }
    if let Some(k) = &w.kinds {
        f = f.kinds(k.iter().map(|k| Kind::from(*k)));
    }
    for (l, vals) in &w.tags {
        let letter = SingleLetterTag::from_char(l.chars().next().expect("letter")).expect("tag");
        f = f.custom_tags(letter, vals.clone());
    }
    if let Some(s) = w.since {
        f = f.since(Timestamp::from(s as u64));
    }
    if let Some(u) = w.until {
        f = f.until(Timestamp::from(u as u64));
    }
    if let Some(l) = w.limit {
        f = f.limit(l);
    }
    f
}

fn cases(evs: &[Ev]) -> Vec<(&'static str, Want)> {
    let author = |i: usize| evs[i].gen.pubkey;
    vec![
        ("no condition (limit capped at max_limit)", Want::default()),
        (
            "#p one value",
            Want {
                tags: vec![("p", vec![h(3)])],
                ..Want::default()
            },
        ),
        (
            "#p two values, limit",
            Want {
                tags: vec![("p", vec![h(1), h(5)])],
                limit: Some(17),
                ..Want::default()
            },
        ),
        (
            "#e with kinds",
            Want {
                tags: vec![("e", vec![h(2)])],
                kinds: Some(vec![1, 7]),
                ..Want::default()
            },
        ),
        (
            "#t and #p together",
            Want {
                tags: vec![
                    ("t", vec!["topic0".into(), "topic2".into()]),
                    ("p", vec![h(0)]),
                ],
                ..Want::default()
            },
        ),
        (
            "#t with U+0000",
            Want {
                tags: vec![("t", vec!["nul\u{0}tag".into()])],
                ..Want::default()
            },
        ),
        (
            "authors and kinds",
            Want {
                authors: Some(vec![author(0), author(1)]),
                kinds: Some(vec![1111]),
                ..Want::default()
            },
        ),
        (
            // Read author by author, each cut at the limit, then merged: the cut falls inside
            // a second shared by several events (ties by id).
            "two authors with a limit",
            Want {
                authors: Some(vec![author(1), author(0), author(1)]),
                limit: Some(25),
                ..Want::default()
            },
        ),
        (
            "three authors, kinds, a window and a limit",
            Want {
                authors: Some(vec![author(0), author(1), author(2)]),
                kinds: Some(vec![1, 1111]),
                since: Some(1_700_000_005),
                until: Some(1_700_000_040),
                limit: Some(33),
                ..Want::default()
            },
        ),
        (
            "since/until window with limit",
            Want {
                since: Some(1_700_000_010),
                until: Some(1_700_000_020),
                limit: Some(40),
                ..Want::default()
            },
        ),
        (
            "author, #t, since",
            Want {
                authors: Some(vec![author(2)]),
                tags: vec![("t", vec!["topic1".into(), "topic3".into()])],
                since: Some(1_700_000_030),
                ..Want::default()
            },
        ),
        (
            "nothing matches",
            Want {
                tags: vec![("p", vec![h(999)])],
                ..Want::default()
            },
        ),
    ]
}

/// nostr-sdk against the endpoint: every fetch and count equals the brute force, events
/// verify (nostr-sdk checks ids and signatures), the U+0000 event comes back exactly as
/// signed, and NIP-77 finds exactly the ids the client lacks, then fetches them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nostr_sdk_fetches_counts_and_reconciles() {
    let (pool, db) = test_db().await;
    let evs = corpus();
    archive(&pool, &db, &evs).await;
    let server = serve(&pool, &db).await;
    let url = format!("ws://{}", server.addr());

    // NIP-11 on the same URL.
    let http = reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .expect("http client");
    let r = http
        .get(format!("http://{}/", server.addr()))
        .header("accept", "application/nostr+json")
        .send()
        .await
        .expect("nip11");
    assert_eq!(r.status().as_u16(), 200);
    let doc: serde_json::Value = r.json().await.expect("nip11 json");
    for nip in [1, 11, 45, 77] {
        assert!(
            doc["supported_nips"]
                .as_array()
                .expect("nips")
                .contains(&nip.into()),
            "{doc}"
        );
    }
    assert_eq!(doc["limitation"]["max_limit"], 200);
    assert_eq!(doc["limitation"]["restricted_writes"], true);
    // Without the nostr accept header: a short text, not the document.
    let plain = http
        .get(format!("http://{}/", server.addr()))
        .send()
        .await
        .expect("plain");
    assert_eq!(plain.status().as_u16(), 200);
    assert!(plain
        .text()
        .await
        .expect("text")
        .contains("read-only Nostr relay"));

    // /openapi.json documents every filter parameter of /api/events.
    let doc: serde_json::Value = http
        .get(format!("http://{}/openapi.json", server.addr()))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("openapi json");
    let names: BTreeSet<String> = doc["paths"]["/api/events"]["get"]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect();
    for p in [
        "ids", "authors", "kinds", "since", "until", "limit", "cursor", "#e", "#p", "#t",
    ] {
        assert!(
            names.contains(p),
            "/api/events lacks parameter {p}: {names:?}"
        );
    }

    let client = Client::default();
    client.add_relay(&url).await.expect("add relay");
    client.connect().await;
    let relay = client.relay(&url).await.expect("relay");
    relay
        .try_connect(WAIT)
        .await
        .expect("connects to the endpoint");

    for (what, w) in cases(&evs) {
        let want = brute(&evs, &w, 200);
        let got = relay
            .fetch_events(to_filter(&w), WAIT, ReqExitPolicy::ExitOnEOSE)
            .await
            .unwrap_or_else(|e| panic!("{what}: fetch: {e}"));
        let got: BTreeSet<[u8; 32]> = got.iter().map(|e| e.id.to_bytes()).collect();
        let want_set: BTreeSet<[u8; 32]> = want.iter().copied().collect();
        assert_eq!(got.len(), want.len(), "{what}: number of events");
        assert_eq!(got, want_set, "{what}: events");
        // COUNT ignores limit.
        let all = Want {
            limit: None,
            ..w.clone()
        };
        let n = relay
            .count_events(to_filter(&all), WAIT)
            .await
            .unwrap_or_else(|e| panic!("{what}: count: {e}"));
        assert_eq!(n, brute(&evs, &all, usize::MAX).len(), "{what}: COUNT");
    }

    // The U+0000 event is the signed one, byte for byte in content and tags.
    let nul = evs.last().expect("nul event");
    let got = relay
        .fetch_events(
            Filter::new().id(EventId::from_byte_array(nul.gen.id)),
            WAIT,
            ReqExitPolicy::ExitOnEOSE,
        )
        .await
        .expect("fetch nul");
    let ev = got.first().expect("the U+0000 event");
    assert_eq!(ev.content, "x\u{0}y");
    assert_eq!(ev.tags.clone().to_vec()[0].as_slice(), ["t", "nul\u{0}tag"]);
    ev.verify().expect("verifies");

    // NIP-77: the client holds 99 % of the kind-1 events plus 3 the archive never saw.
    let kind1: Vec<&Ev> = evs.iter().filter(|e| e.gen.kind == 1).collect();
    let mut items: Vec<(EventId, Timestamp)> = Vec::new();
    let mut lacking = BTreeSet::new();
    for (i, e) in kind1.iter().enumerate() {
        if i % 100 == 7 {
            lacking.insert(e.gen.id);
        } else {
            items.push((
                EventId::from_byte_array(e.gen.id),
                Timestamp::from(e.gen.created_at as u64),
            ));
        }
    }
    let mut extra = BTreeSet::new();
    for n in 0..3u64 {
        let id = [n as u8 + 1; 32];
        extra.insert(id);
        items.push((
            EventId::from_byte_array(id),
            Timestamp::from(1_700_000_000 + n),
        ));
    }
    let filter = Filter::new().kind(Kind::TextNote);
    let dry = SyncOptions::new()
        .direction(SyncDirection::Down)
        .initial_timeout(WAIT)
        .dry_run();
    let rec = relay
        .sync_with_items(filter.clone(), items.clone(), &dry)
        .await
        .expect("reconcile");
    let remote: BTreeSet<[u8; 32]> = rec.remote.iter().map(|i| i.to_bytes()).collect();
    let local: BTreeSet<[u8; 32]> = rec.local.iter().map(|i| i.to_bytes()).collect();
    assert_eq!(remote, lacking, "ids the archive has and the client lacks");
    assert_eq!(local, extra, "ids the client has and the archive lacks");
    // Not a dry run: the lacking events are fetched (REQ by ids) and verified by nostr-sdk.
    let down = SyncOptions::new()
        .direction(SyncDirection::Down)
        .initial_timeout(WAIT);
    let rec = relay
        .sync_with_items(filter, items, &down)
        .await
        .expect("sync down");
    let received: BTreeSet<[u8; 32]> = rec.received.iter().map(|i| i.to_bytes()).collect();
    assert_eq!(received, lacking, "fetched after reconciliation");

    // Writes are refused, and the connection keeps serving.
    let key = Keys::generate();
    let note = EventBuilder::text_note("hello")
        .sign_with_keys(&key)
        .expect("sign");
    let sent = relay.send_event(&note).await;
    let err = sent
        .expect_err("a read-only archive refuses EVENT")
        .to_string();
    assert!(err.contains("blocked: read-only archive"), "{err}");
    let n = relay
        .count_events(Filter::new(), WAIT)
        .await
        .expect("count after EVENT");
    assert_eq!(n, evs.len());

    client.shutdown().await;
    server.shutdown().await;
}
