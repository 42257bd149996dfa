//! The finder and the relay registry: hint extraction and HTTP list parsing (unit), then,
//! against a real PostgreSQL and relays on 127.0.0.1, discovery from an HTTP list, the seed
//! file, hints in events as they flow and in events archived before the finder ran, ending
//! with the discovered relays synced in the same long-running run; pausing of dead relays and
//! their recovery; the monitor's limits stopping, pausing and retuning connectors; and
//! candidates that never validate being dropped after `max_attempts`.

mod common;

use bigbrotr::config::{Config, FinderHttp, Seconds};
use bigbrotr::db::Pool;
use bigbrotr::registry::{LimitsFuture, LimitsSource, RelayLimits};
use bigbrotr::service::{self, Parts};
use bigbrotr::stages::finder::hints::{extract_vec, may_carry_hints};
use bigbrotr::stages::finder::sources::{fetch, http_client, parse_list, HttpSource, ListError};
use bigbrotr::state::EngineState;
use bigbrotr::sync::{sync_once, SyncOptions};
use bigbrotr_testkit::gen::{generate, sign, GenEvent, GenSpec};
use bigbrotr_testkit::relay::{Behavior, TestRelay};
use common::*;
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

// ---------------------------------------------------------------------------------------
// Unit: hint extraction and list parsing
// ---------------------------------------------------------------------------------------

fn tags_json(tags: &[&[&str]]) -> String {
    serde_json::to_string(tags).expect("json")
}

#[test]
fn hints_from_every_source_kind() {
    let pk = "a".repeat(64);
    // NIP-65 relay list: `r` tags with or without a marker.
    let t = tags_json(&[
        &["r", "wss://write.example", "write"],
        &["r", "wss://both.example"],
    ]);
    assert_eq!(
        extract_vec(10002, &t, ""),
        vec!["wss://write.example", "wss://both.example"]
    );
    // Any tag value that is a ws(s) URL, whatever the kind and tag (BigBrotr parity): an
    // `r` tag naming a relay in a note is a relay; an https reference is not.
    assert_eq!(
        extract_vec(
            1,
            &tags_json(&[&["r", "wss://x.example"], &["r", "https://web.example"]]),
            ""
        ),
        vec!["wss://x.example"]
    );
    // kind 3: `p` relay hints and the legacy relay map in the content.
    let t = tags_json(&[&["p", &pk, "wss://p.example"], &["p", &pk]]);
    let content = r#"{"wss://map1.example":{"read":true,"write":true},"wss://map2.example/":{"read":false,"write":true},"https://not.a.relay":{}}"#;
    assert_eq!(
        extract_vec(3, &t, content),
        vec![
            "wss://p.example",
            "wss://map1.example",
            "wss://map2.example/"
        ]
    );
    // Content of other kinds is never read, and non-map content of kind 3 is ignored.
    assert!(extract_vec(1, "[]", content).is_empty());
    assert!(extract_vec(3, "[]", "wss://in.text.example").is_empty());
    // Third element of e / p / a / q tags in any kind.
    let t = tags_json(&[
        &["e", &"b".repeat(64), "wss://e.example", "reply"],
        &["a", &format!("30023:{pk}:slug"), "ws://a.example"],
        &["q", &"c".repeat(64), "wss://q.example"],
        &["e", &"d".repeat(64), ""],
        &["t", "wss://topic.example"],
    ]);
    assert_eq!(
        extract_vec(1, &t, ""),
        vec![
            "wss://e.example",
            "ws://a.example",
            "wss://q.example",
            "wss://topic.example"
        ]
    );
    // `relay` tags (kind 10050 DM relays, relay sets, auth events).
    let t = tags_json(&[
        &["relay", "wss://dm1.example"],
        &["relay", "wss://dm2.example"],
    ]);
    assert_eq!(
        extract_vec(10050, &t, ""),
        vec!["wss://dm1.example", "wss://dm2.example"]
    );
    // NIP-66 discovery events name their relay in `d`.
    let t = tags_json(&[&["d", "wss://monitored.example"]]);
    assert_eq!(extract_vec(30166, &t, ""), vec!["wss://monitored.example"]);
    assert_eq!(extract_vec(30023, &t, ""), vec!["wss://monitored.example"]);
    // Tags with escapes still parse; mixed case schemes are kept for normalization later.
    let t = tags_json(&[&["t", "say \"hi\"\n"], &["e", &pk, "WSS://Upper.Example"]]);
    assert_eq!(extract_vec(1, &t, ""), vec!["WSS://Upper.Example"]);
    // The hot-path filter: only events naming a ws(s) URL are parsed.
    assert!(!may_carry_hints(1, &tags_json(&[&["e", &pk]]), "wss://x"));
    assert!(may_carry_hints(3, "[]", content));
    assert!(may_carry_hints(
        1,
        &tags_json(&[&["e", &pk, "wss://x"]]),
        ""
    ));
}

#[test]
fn http_lists_parse_with_json_paths() {
    let top = br#"["wss://a.example", {"url": "wss://b.example"}, {"name": "no url"}, 7]"#;
    let p = parse_list(top, "").expect("top-level array");
    assert_eq!(p.urls, vec!["wss://a.example", "wss://b.example"]);
    assert_eq!(p.skipped, 2);

    let one = br#"{"relays": ["wss://c.example"], "count": 1}"#;
    assert_eq!(
        parse_list(one, "relays").expect("relays").urls,
        vec!["wss://c.example"]
    );

    let nested = br#"{"data": {"relays": [{"url": "wss://d.example", "online": true}]}}"#;
    assert_eq!(
        parse_list(nested, "data.relays").expect("nested").urls,
        vec!["wss://d.example"]
    );
    assert!(matches!(
        parse_list(nested, "data.missing"),
        Err(ListError::PathNotFound(_))
    ));
    assert!(matches!(
        parse_list(nested, "data"),
        Err(ListError::NotAnArray(_))
    ));
    assert!(matches!(
        parse_list(b"<html>", ""),
        Err(ListError::NotJson(_))
    ));
}

// ---------------------------------------------------------------------------------------
// Local helpers: an HTTP server, relays, waiting
// ---------------------------------------------------------------------------------------

/// A tiny HTTP/1.1 server on 127.0.0.1 answering every request with `body` (JSON), counting
/// requests.
struct HttpList {
    url: String,
    hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpList {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn http_list(body: String) -> HttpList {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            h.fetch_add(1, Relaxed);
            let body = body.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 << 10 {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    HttpList {
        url: format!("http://{addr}/relays.json"),
        hits,
        task,
    }
}

fn now() -> i64 {
    bigbrotr::stages::model::now_secs()
}

/// `n` plain kind-1 events without tags (no relay hints), distinct per `seed`.
fn plain(n: usize, seed: u64) -> Vec<GenEvent> {
    generate(&GenSpec {
        count: n,
        seed,
        kinds: vec![1],
        tags_per_event: (0, 0),
        ..GenSpec::default()
    })
}

fn key(n: u8) -> secp256k1::Keypair {
    secp256k1::Keypair::from_secret_bytes([n; 32]).expect("key")
}

fn tags(t: &[&[&str]]) -> Vec<Vec<String>> {
    t.iter()
        .map(|x| x.iter().map(|s| s.to_string()).collect())
        .collect()
}

/// Polls `check` every 100 ms until it returns true; panics with `what` after `limit`.
async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A configuration for these tests: local relays, no real seed list, short backoffs.
fn finder_config(db: &str, seeds: &std::path::Path) -> Config {
    let mut cfg = config(db);
    cfg.seeds.file = seeds.to_path_buf();
    cfg.finder.validate_timeout = Seconds::new(3);
    cfg.finder.backoff = Seconds::new(1);
    cfg.finder.backoff_max = Seconds::new(2);
    cfg.finder.refresh = Seconds::new(1);
    cfg.sync.interval = Seconds::new(1);
    cfg.finder.pause_max = Seconds::new(4);
    cfg
}

async fn relays_table(pool: &Pool) -> BTreeSet<String> {
    bigbrotr::db::list_relays(pool)
        .await
        .expect("relays")
        .into_iter()
        .map(|(u, _)| u)
        .collect()
}

/// (attempts, dropped) of a candidate, None if it is not a candidate.
async fn candidate(pool: &Pool, url: &str) -> Option<(i32, bool)> {
    let c = pool.get().await.expect("conn");
    c.query_opt(
        "SELECT attempts, dropped_at IS NOT NULL FROM candidates WHERE url = $1",
        &[&url],
    )
    .await
    .expect("query")
    .map(|r| (r.get(0), r.get(1)))
}

type Running = Arc<Mutex<Option<Arc<EngineState>>>>;

/// Starts `service::run` over the registry in the background.
fn start_run_forever(
    cfg: Config,
    pool: Pool,
) -> (
    watch::Sender<bool>,
    Running,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let state: Running = Arc::new(Mutex::new(None));
    let s = state.clone();
    let h = tokio::spawn(async move {
        service::run(&cfg, pool, Parts::sync(Vec::new()), stop_rx, move |st| {
            *s.lock().expect("lock") = Some(st);
        })
        .await
    });
    (stop_tx, state, h)
}

fn is_running(state: &Running, url: &str) -> bool {
    state
        .lock()
        .expect("lock")
        .as_ref()
        .and_then(|st| st.running.read().ok().map(|r| r.contains(url)))
        .unwrap_or(false)
}

async fn stop_run(stop: watch::Sender<bool>, h: tokio::task::JoinHandle<anyhow::Result<()>>) {
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(30), h)
        .await
        .expect("run_forever stops within 30 s")
        .expect("join")
        .expect("run_forever");
}

// ---------------------------------------------------------------------------------------
// Integration
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn http_list_size_cap_refuses_large_responses() {
    let big = serde_json::to_string(&vec!["wss://x.example"; 1000]).expect("json");
    let srv = http_list(big.clone()).await;
    let client = http_client(None, Duration::from_secs(5)).expect("client");
    let src = HttpSource {
        url: srv.url.clone(),
        json_path: String::new(),
        cooldown: Duration::from_secs(60),
    };
    assert_eq!(
        fetch(&client, &src, 1000).await,
        Err(ListError::TooLarge(1000))
    );
    let ok = fetch(&client, &src, big.len()).await.expect("fits");
    assert_eq!(ok.urls.len(), 1000);
    assert_eq!(srv.hits.load(Relaxed), 2);
}

/// Relays named by an HTTP list, the seed file, hints in events streaming through the
/// pipeline (e/p/a tags, NIP-65 `r`, kind 3 content, `relay` tags) and hints in events
/// archived before the finder ran are validated and synced in one long-running run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_relays_are_validated_and_synced_without_restart() {
    let (pool, db) = test_db().await;
    let t = now();
    let pk = hex::encode(key(1).x_only_public_key().0.to_byte_array());

    // Relays only reachable by discovery, each with its own events.
    let names = [
        "e_hint",
        "r_tag",
        "contacts",
        "p_hint",
        "relay_tag",
        "a_hint",
        "list_obj",
        "list_str",
        "archive",
        "seed",
        "r_note",
    ];
    let mut hidden: HashMap<&str, (TestRelay, BTreeSet<String>)> = HashMap::new();
    for (i, n) in names.iter().enumerate() {
        let evs = plain(15, 100 + i as u64);
        let ids = ids(&evs);
        hidden.insert(
            *n,
            (
                TestRelay::start(evs, Behavior::default())
                    .await
                    .expect("relay"),
                ids,
            ),
        );
    }
    let url = |n: &str| hidden[n].0.url();

    // Events before the finder ran: archived by a one-shot sync of a relay outside the
    // registry; only the catch-up pass can see their hint.
    let old = sign(
        &key(2),
        t - 500,
        1,
        &tags(&[&["e", &"1".repeat(64), &url("archive")]]),
        "old",
    );
    let z = TestRelay::start(vec![old], Behavior::default())
        .await
        .expect("relay z");
    let cfg0 = config(&db);
    sync_once(
        &cfg0,
        pool.clone(),
        vec![relay_url(&z.url())],
        &SyncOptions::default(),
        None,
    )
    .await
    .expect("sync z");
    assert_eq!(event_ids(&pool).await.len(), 1);

    // The registry's one relay serves events that name the others.
    let a_coord = format!("30023:{pk}:post");
    let content = format!(r#"{{"{}":{{"read":true,"write":true}}}}"#, url("contacts"));
    let hinting = vec![
        sign(
            &key(1),
            t - 100,
            1,
            &tags(&[&["e", &"2".repeat(64), &url("e_hint"), "reply"]]),
            "reply",
        ),
        sign(
            &key(1),
            t - 99,
            10002,
            &tags(&[&["r", &url("r_tag"), "read"]]),
            "",
        ),
        sign(
            &key(1),
            t - 98,
            3,
            &tags(&[&["p", &pk, &url("p_hint")]]),
            &content,
        ),
        sign(
            &key(1),
            t - 97,
            10050,
            &tags(&[&["relay", &url("relay_tag")]]),
            "",
        ),
        sign(
            &key(1),
            t - 96,
            1,
            &tags(&[&["a", &a_coord, &url("a_hint")]]),
            "quote",
        ),
        // A relay named in a note's `r` tag (BigBrotr mines every tag value).
        sign(
            &key(1),
            t - 95,
            1,
            &tags(&[&["r", &url("r_note")]]),
            "try this relay",
        ),
    ];
    let hub = TestRelay::start(hinting.clone(), Behavior::default())
        .await
        .expect("hub");
    bigbrotr::register_relays(&pool, &[relay_url(&hub.url())])
        .await
        .expect("register");

    // An HTTP list (objects with `url`, plain strings, junk) and the seed file.
    let list = http_list(format!(
        r#"{{"data":{{"relays":[{{"url":"{}/"}},"{}",42,"https://not.a.relay"]}}}}"#,
        url("list_obj"),
        url("list_str").to_uppercase(),
    ))
    .await;
    let dir = tempfile::tempdir().expect("tmp");
    let seeds = dir.path().join("seeds.txt");
    std::fs::write(&seeds, format!("# test seeds\n{}\n", url("seed"))).expect("seeds");

    let mut cfg = finder_config(&db, &seeds);
    cfg.finder.http = vec![FinderHttp {
        url: list.url.clone(),
        json_path: "data.relays".into(),
        cooldown: Seconds::new(3600),
    }];
    let (stop, state, h) = start_run_forever(cfg, pool.clone());

    wait_for(
        "every discovered relay synced",
        Duration::from_secs(90),
        || {
            let pool = pool.clone();
            let want: Vec<(String, usize)> = names.iter().map(|n| (url(n), 15)).collect();
            async move {
                let by = sightings_by_relay(&pool).await;
                want.iter()
                    .all(|(u, n)| by.get(u).copied().unwrap_or(0) >= *n as i64)
            }
        },
    )
    .await;

    // Every discovered relay was validated into `relays` and its events archived.
    let registry = relays_table(&pool).await;
    let archived = event_ids(&pool).await;
    for n in names {
        let u = url(n);
        assert!(registry.contains(&u), "{n} ({u}) in relays");
        assert_eq!(
            candidate(&pool, &u).await,
            None,
            "{n} is no longer a candidate"
        );
        assert!(hidden[n].1.is_subset(&archived), "{n}'s events archived");
        assert!(is_running(&state, &u), "{n}'s connector runs (live)");
    }
    assert!(ids(&hinting).is_subset(&archived));
    // The list was fetched once (cooldown 1 h); the relay outside the registry stayed out.
    assert_eq!(list.hits.load(Relaxed), 1);
    assert!(!registry.contains(&z.url()));
    let c = pool.get().await.expect("conn");
    let done: serde_json::Value = c
        .query_one(
            "SELECT payload FROM service_state WHERE service_name = 'finder' AND state_key = 'catchup'",
            &[],
        )
        .await
        .expect("catch-up state")
        .get(0);
    assert_eq!(done["done"], serde_json::json!(true));
    stop_run(stop, h).await;
    assert_eq!(reverify_all(&pool).await, archived.len());
}

/// A relay that dies is paused with growing pauses (few connection attempts over a window,
/// where retrying hot would make many), and one that comes back on the same port resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_relay_is_paused_and_resumes() {
    let (pool, db) = test_db().await;
    let dir = tempfile::tempdir().expect("tmp");
    let seeds = dir.path().join("seeds.txt");
    std::fs::write(&seeds, "").expect("seeds");
    let mut cfg = finder_config(&db, &seeds);
    cfg.finder.enabled = false;
    cfg.sync.max_failures = 1;
    cfg.sync.live_checkpoint = Seconds::new(1);

    let first = plain(10, 7);
    let relay = TestRelay::start(first.clone(), Behavior::default())
        .await
        .expect("relay");
    let url = relay.url();
    let port = relay.port();
    bigbrotr::register_relays(&pool, &[relay_url(&url)])
        .await
        .expect("register");
    let (stop, state, h) = start_run_forever(cfg, pool.clone());
    wait_for("first events archived", Duration::from_secs(30), || {
        let pool = pool.clone();
        let want = ids(&first);
        async move { want.is_subset(&event_ids(&pool).await) }
    })
    .await;

    // The relay dies; something on its port now accepts and hangs up at once, counting
    // every connection attempt.
    relay.stop().await;
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("rebind");
    let attempts = Arc::new(AtomicU64::new(0));
    let a = attempts.clone();
    let counter = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            a.fetch_add(1, Relaxed);
            drop(s);
        }
    });
    let window = Duration::from_secs(8);
    let start = Instant::now();
    let mut seen_paused = false;
    while start.elapsed() < window {
        seen_paused |= !is_running(&state, &url);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    counter.abort();
    let _ = counter.await;
    let n = attempts.load(Relaxed);
    println!("{n} connection attempts to the dead relay in {window:?}");
    // Pauses of 1, 2, 4, 4 s: about 3 attempts in 8 s (a fixed 1 s retry would make 8, a hot
    // loop thousands).
    assert!(n >= 1, "the dead relay is still retried");
    assert!(n <= 5, "{n} connection attempts in {window:?}: not paused");
    assert!(
        seen_paused,
        "the dead relay's connector was not running while paused"
    );

    // Back on the same port with new events: the relay resumes without a restart.
    // Created now, after everything the relay's cursor covers.
    let later: Vec<GenEvent> = (0..5)
        .map(|i| sign(&key(3), now(), 1, &[], &format!("after the outage {i}")))
        .collect();
    let mut all = first.clone();
    all.extend(later.iter().cloned());
    let back = TestRelay::start_on(port, all, Behavior::default())
        .await
        .expect("restart on the same port");
    wait_for(
        "events published after the outage archived",
        Duration::from_secs(30),
        || {
            let pool = pool.clone();
            let want = ids(&later);
            async move { want.is_subset(&event_ids(&pool).await) }
        },
    )
    .await;
    assert!(back.counters().connections.load(Relaxed) >= 1);
    stop_run(stop, h).await;
    back.stop().await;
}

/// A limits source the test steers, standing in for the monitor.
#[derive(Clone, Default)]
struct FakeMonitor(Arc<Mutex<HashMap<String, RelayLimits>>>);

impl FakeMonitor {
    fn set(&self, url: &str, l: RelayLimits) {
        self.0.lock().expect("lock").insert(url.to_string(), l);
    }
}

impl LimitsSource for FakeMonitor {
    fn limits<'a>(&'a self, _pool: &'a Pool) -> LimitsFuture<'a> {
        let m = self.0.lock().expect("lock").clone();
        Box::pin(async move { Ok(m) })
    }
}

fn limits(max_limit: Option<usize>, reachable: bool) -> RelayLimits {
    RelayLimits {
        max_limit,
        max_subscriptions: Some(10),
        auth_required: false,
        reachable,
    }
}

/// The monitor's view drives the connectors: `max_limit` is applied (and a change retunes the
/// running connector), an unreachable relay's connector is stopped and not retried, and it
/// resumes when the monitor reaches it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_limits_retune_pause_and_resume_connectors() {
    let (pool, db) = test_db().await;
    let dir = tempfile::tempdir().expect("tmp");
    let seeds = dir.path().join("seeds.txt");
    std::fs::write(&seeds, "").expect("seeds");
    let mut cfg = finder_config(&db, &seeds);
    cfg.finder.enabled = false;

    let evs = plain(40, 11);
    let relay = TestRelay::start(evs.clone(), Behavior::default())
        .await
        .expect("relay");
    let url = relay.url();
    bigbrotr::register_relays(&pool, &[relay_url(&url)])
        .await
        .expect("register");
    let monitor = FakeMonitor::default();
    monitor.set(&url, limits(Some(5), true));

    let (stop_tx, stop_rx) = watch::channel(false);
    let state: Running = Arc::new(Mutex::new(None));
    let s = state.clone();
    let src: Arc<dyn LimitsSource> = Arc::new(monitor.clone());
    let c2 = cfg.clone();
    let p2 = pool.clone();
    let h = tokio::spawn(async move {
        let parts = Parts {
            limits: src,
            ..Parts::sync(Vec::new())
        };
        service::run(&c2, p2, parts, stop_rx, move |st| {
            *s.lock().expect("lock") = Some(st);
        })
        .await
    });

    wait_for("all 40 events archived", Duration::from_secs(30), || {
        let pool = pool.clone();
        let want = ids(&evs);
        async move { want.is_subset(&event_ids(&pool).await) }
    })
    .await;
    // max_limit 5 applied from the start: 40 events take at least 8 REQs.
    assert!(
        relay.counters().reqs.load(Relaxed) >= 8,
        "REQs: {}",
        relay.counters().reqs.load(Relaxed)
    );

    // A new max_limit restarts the connector (a new connection) with it.
    let c0 = relay.counters().connections.load(Relaxed);
    monitor.set(&url, limits(Some(7), true));
    wait_for("connector retuned", Duration::from_secs(15), || {
        let n = relay.counters().connections.load(Relaxed);
        async move { n > c0 }
    })
    .await;

    // Unreachable: the connector stops and nothing connects while the monitor says so.
    monitor.set(&url, limits(Some(7), false));
    wait_for("connector stopped", Duration::from_secs(15), || {
        let r = !is_running(&state, &url);
        async move { r }
    })
    .await;
    let c1 = relay.counters().connections.load(Relaxed);
    let late = sign(&key(4), now(), 1, &[], "published while paused");
    relay.publish(late.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        relay.counters().connections.load(Relaxed),
        c1,
        "no connection to an unreachable relay"
    );
    assert!(!event_ids(&pool).await.contains(&hex::encode(late.id)));

    // Reachable again: the connector resumes and picks up what was missed.
    monitor.set(&url, limits(None, true));
    wait_for(
        "event published while paused archived",
        Duration::from_secs(30),
        || {
            let pool = pool.clone();
            let id = hex::encode(late.id);
            async move { event_ids(&pool).await.contains(&id) }
        },
    )
    .await;
    let _ = stop_tx.send(true);
    tokio::time::timeout(Duration::from_secs(30), h)
        .await
        .expect("stops")
        .expect("join")
        .expect("run");
}

/// Candidates that never validate are tried `max_attempts` times with backoff, then dropped
/// (and a later sighting does not revive them); `CLOSED auth-required` counts as valid;
/// `finder --once` validates in one pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_candidates_are_dropped_after_max_attempts() {
    let (pool, db) = test_db().await;
    bigbrotr::finder::ensure_schema(&pool)
        .await
        .expect("schema");
    let refuses = TestRelay::start(
        Vec::new(),
        Behavior {
            closed: Some("error: no reading here".into()),
            ..Behavior::default()
        },
    )
    .await
    .expect("refusing relay");
    let auth = TestRelay::start(
        Vec::new(),
        Behavior {
            closed: Some("auth-required: sign in first".into()),
            ..Behavior::default()
        },
    )
    .await
    .expect("auth relay");
    let nothing = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let p = l.local_addr().expect("addr").port();
        drop(l);
        format!("ws://127.0.0.1:{p}")
    };
    let good = TestRelay::start(plain(3, 21), Behavior::default())
        .await
        .expect("good relay");

    let dir = tempfile::tempdir().expect("tmp");
    let seeds = dir.path().join("seeds.txt");
    std::fs::write(
        &seeds,
        format!(
            "{}\n{}\n{}\n{}\n",
            refuses.url(),
            auth.url(),
            nothing,
            good.url()
        ),
    )
    .expect("seeds");
    let mut cfg = finder_config(&db, &seeds);
    cfg.finder.max_attempts = 3;
    cfg.finder.backoff = Seconds::new(1);
    cfg.finder.backoff_max = Seconds::new(1);

    // One pass: seeds read, every candidate tried once.
    let report = bigbrotr::finder::run_once(&cfg, pool.clone())
        .await
        .expect("finder --once");
    print!("{}", report.render());
    assert_eq!(report.seeds, 4);
    assert_eq!(report.candidates_added, 4);
    assert_eq!(report.validated, 2);
    assert_eq!(report.failed, 2);
    let registry = relays_table(&pool).await;
    assert!(registry.contains(&good.url()) && registry.contains(&auth.url()));
    assert_eq!(candidate(&pool, &refuses.url()).await, Some((1, false)));

    // The long-running finder keeps retrying with backoff until max_attempts, then drops.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (h, stats) = bigbrotr::finder::spawn(&cfg, pool.clone(), None, None, stop_rx);
    wait_for(
        "both failing candidates dropped",
        Duration::from_secs(60),
        || {
            let pool = pool.clone();
            let (a, b) = (refuses.url(), nothing.clone());
            async move {
                candidate(&pool, &a).await.is_some_and(|c| c.1)
                    && candidate(&pool, &b).await.is_some_and(|c| c.1)
            }
        },
    )
    .await;
    assert_eq!(candidate(&pool, &refuses.url()).await, Some((3, true)));
    assert_eq!(candidate(&pool, &nothing).await, Some((3, true)));
    // Exactly max_attempts validations reached the refusing relay, none after the drop.
    assert_eq!(refuses.counters().reqs.load(Relaxed), 3);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(refuses.counters().reqs.load(Relaxed), 3);
    assert!(stats.dropped.load(Relaxed) >= 2);
    let _ = stop_tx.send(true);
    tokio::time::timeout(Duration::from_secs(10), h)
        .await
        .expect("finder stops")
        .expect("join");

    // Seen again (a hint, a list): the tombstone keeps it out.
    let again = bigbrotr::finder::run_once(&cfg, pool.clone())
        .await
        .expect("again");
    assert_eq!(again.candidates_added, 0);
    assert_eq!(refuses.counters().reqs.load(Relaxed), 3);
    let registry = relays_table(&pool).await;
    assert!(!registry.contains(&refuses.url()) && !registry.contains(&nothing));
}

/// A list's cooldown holds across restarts of the finder: a list fetched within its
/// cooldown is not fetched again, and is once the cooldown has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_cooldown_holds_across_restarts() {
    let (pool, db) = test_db().await;
    let good = TestRelay::start(Vec::new(), Behavior::default())
        .await
        .expect("relay");
    let list = http_list(format!(r#"["{}"]"#, good.url())).await;
    let dir = tempfile::tempdir().expect("tmp");
    let seeds = dir.path().join("seeds.txt");
    std::fs::write(&seeds, "").expect("seeds");
    let mut cfg = finder_config(&db, &seeds);
    cfg.finder.http = vec![FinderHttp {
        url: list.url.clone(),
        json_path: String::new(),
        cooldown: Seconds::new(3600),
    }];
    bigbrotr::finder::ensure_schema(&pool)
        .await
        .expect("schema");

    // First start: the list is fetched and its relay validated.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (h, _) = bigbrotr::finder::spawn(&cfg, pool.clone(), None, None, stop_rx);
    wait_for("listed relay validated", Duration::from_secs(20), || {
        let pool = pool.clone();
        let u = good.url();
        async move { relays_table(&pool).await.contains(&u) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
    assert_eq!(list.hits.load(Relaxed), 1);

    // Restarted within the cooldown: no fetch.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (h, _) = bigbrotr::finder::spawn(&cfg, pool.clone(), None, None, stop_rx);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
    assert_eq!(
        list.hits.load(Relaxed),
        1,
        "fetched again within its cooldown"
    );

    // A short cooldown has passed: fetched again.
    cfg.finder.http[0].cooldown = Seconds::new(1);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (h, _) = bigbrotr::finder::spawn(&cfg, pool.clone(), None, None, stop_rx);
    wait_for("list fetched again", Duration::from_secs(20), || {
        let n = list.hits.load(Relaxed);
        async move { n >= 2 }
    })
    .await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
    assert!(list.hits.load(Relaxed) >= 2);
}
