//! The HTTP server against hostile or unlucky conditions, with a real PostgreSQL and real
//! sockets on 127.0.0.1: API pages bounded in bytes (and the memory of the process serving
//! them), thousands of connections that never finish their request, `/ready` when every
//! relay is paused, and `/ready` when PostgreSQL goes away and comes back.

mod common;

use bigbrotr::db::Pool;
use bigbrotr::embedded_pg::EmbeddedPg;
use bigbrotr::http::{Http, Server};
use bigbrotr::pipeline::Pipeline;
use bigbrotr::state::EngineState;
use bigbrotr_testkit::gen::{sign, GenEvent};
use bigbrotr_testkit::relay::{Behavior, TestRelay};
use common::*;
use nostr::JsonUtil;
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Stores a signed event with plain SQL (the sync path caps bodies at 512 KB; the API must
/// also cope with what an older or differently configured engine archived).
async fn store(pool: &Pool, e: &GenEvent) {
    let v: Value = serde_json::from_str(&e.json).expect("generated json");
    let c = pool.get().await.expect("conn");
    c.execute(
        "INSERT INTO events (id, pubkey, created_at, kind, tags, content, sig)
         VALUES ($1, $2, $3, $4, $5::text::jsonb, $6, $7)",
        &[
            &e.id.to_vec(),
            &e.pubkey.to_vec(),
            &e.created_at,
            &i32::from(e.kind),
            &v["tags"].to_string(),
            &v["content"].as_str().expect("content"),
            &hex::decode(v["sig"].as_str().expect("sig")).expect("sig hex"),
        ],
    )
    .await
    .expect("insert event");
}

/// A signed kind-1 event by `key` at `created_at` whose content is `len` bytes; `n` tells
/// apart events of the same second and size.
fn big_event(key: &secp256k1::Keypair, created_at: i64, len: usize, n: usize) -> GenEvent {
    let content: String = std::iter::repeat_n('x', len).collect();
    sign(
        key,
        created_at,
        1,
        &[vec!["n".into(), n.to_string()]],
        &content,
    )
}

/// An EngineState for a finished pipeline (the counters stay readable).
async fn idle_state(pool: &Pool, db: &str) -> Arc<EngineState> {
    let pipeline = Pipeline::start(&config(db), pool.clone());
    let stats = pipeline.stats.clone();
    pipeline.finish().await.expect("drain");
    let state = Arc::new(EngineState::new(stats));
    state.ready.store(true, Relaxed);
    state
}

/// An in-process server on 127.0.0.1 with `tune` applied to the configuration.
async fn serve(
    pool: &Pool,
    db: &str,
    state: Arc<EngineState>,
    tune: impl FnOnce(&mut bigbrotr::config::Config),
) -> Server {
    let mut cfg = config(db);
    cfg.http.listen = "127.0.0.1:0".into();
    tune(&mut cfg);
    let http = Http::bind(&cfg, db, pool.clone())
        .await
        .expect("bind")
        .expect("http configured");
    http.spawn(state)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// GET `url`: status and body bytes.
async fn get(c: &reqwest::Client, url: &str) -> (u16, Vec<u8>) {
    let r = c.get(url).send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.bytes().await.expect("body").to_vec())
}

/// A port free on 127.0.0.1 right now (for the binary's `http.listen`).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The `bigbrotr` binary running `sync` (long-running, HTTP on `port`) for `relay`, with
/// `extra` TOML appended to the test configuration; its log goes to `dir`/bigbrotr.log.
struct Binary {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Binary {
    fn start(dir: &std::path::Path, db: &str, relay: &str, extra: &[(&str, &str)]) -> Binary {
        let port = free_port();
        let cfg = write_config_file(dir, "bigbrotr.toml", db, 50);
        let mut text = std::fs::read_to_string(&cfg).expect("read config");
        let listen = format!("listen = \"127.0.0.1:{port}\"\n");
        let mut sections: Vec<(&str, String)> = vec![("http", listen)];
        for (section, lines) in extra {
            match sections.iter_mut().find(|(s, _)| s == section) {
                Some((_, l)) => l.push_str(lines),
                None => sections.push((section, lines.to_string())),
            }
        }
        for (section, lines) in sections {
            let header = format!("[{section}]\n");
            if text.contains(&header) {
                text = text.replacen(&header, &format!("{header}{lines}\n"), 1);
            } else {
                text.push_str(&format!("\n{header}{lines}\n"));
            }
        }
        std::fs::write(&cfg, text).expect("write config");
        let log = dir.join("bigbrotr.log");
        let child = Command::new(env!("CARGO_BIN_EXE_bigbrotr"))
            .arg("--config")
            .arg(&cfg)
            .args(["sync", "--relay", relay])
            .env("BIGBROTR_LOG", "info,tokio_postgres=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn bigbrotr");
        Binary { child, port, log }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits until /health answers (the server is up), or panics with the log.
    async fn wait_healthy(&mut self, c: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            assert!(self.alive(), "bigbrotr exited:\n{}", self.log());
            if let Ok(r) = c.get(self.url("/health")).send().await {
                if r.status().as_u16() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no /health within 60 s:\n{}", self.log());
    }

    /// Peak resident memory (VmHWM) in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of one sample in a Prometheus exposition text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

// ---------------------------------------------------------------------------------------
// 1. API pages bounded in bytes
// ---------------------------------------------------------------------------------------

/// One walked page: its size, its events (verified), and its flags.
struct Page {
    bytes: usize,
    ids: Vec<String>,
    truncated: bool,
    cursor: Option<String>,
}

async fn events_page(c: &reqwest::Client, base: &str, query: &str) -> Page {
    let (status, body) = get(c, &format!("{base}/api/events?{query}")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).expect("page is JSON");
    let mut ids = Vec::new();
    for e in v["events"].as_array().expect("events") {
        let ev = nostr::Event::from_json(e.to_string()).expect("nostr parses an API event");
        ev.verify().expect("API event verifies");
        ids.push(ev.id.to_hex());
    }
    Page {
        bytes: body.len(),
        ids,
        truncated: v["truncated"].as_bool().expect("truncated flag"),
        cursor: v["cursor"].as_str().map(str::to_string),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_pages_are_bounded_in_bytes_and_walk_every_event_once() {
    const BUDGET: usize = 1 << 20;
    let (pool, db) = test_db().await;
    let key = secp256k1::Keypair::from_secret_bytes([9u8; 32]).expect("key");
    let mut all = Vec::new();
    let mut sizes = std::collections::HashMap::new();
    // Newest first: small ones, then 200 KB ones (several per second, so a cut falls
    // inside a second), two larger than the whole budget, then small ones again.
    for i in 0..10 {
        all.push(big_event(&key, 1_700_010_000 - i, 100, 0));
    }
    for i in 0..30usize {
        all.push(big_event(&key, 1_700_009_000 - i as i64 / 3, 200_000, i));
    }
    all.push(big_event(&key, 1_700_008_000, 1_500_000, 1));
    all.push(big_event(&key, 1_700_008_000, 1_300_000, 2));
    for i in 0..10 {
        all.push(big_event(&key, 1_700_007_000 - i, 100, 0));
    }
    for e in &all {
        store(&pool, e).await;
        sizes.insert(hex::encode(e.id), e.json.len());
    }
    let largest = sizes.values().copied().max().unwrap_or(0);

    let server = serve(&pool, &db, idle_state(&pool, &db).await, |c| {
        c.http.max_response_bytes = BUDGET;
    })
    .await;
    let base = format!("http://{}", server.addr());
    let c = client();

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let (mut truncated_pages, mut alone_pages) = (0, 0);
    for _ in 0..200 {
        let mut q = format!("authors={}&limit=500", hex::encode(all[0].pubkey));
        if let Some(cur) = &cursor {
            q.push_str(&format!("&cursor={cur}"));
        }
        let p = events_page(&c, &base, &q).await;
        assert!(
            !p.ids.is_empty(),
            "a page with a cursor before it is never empty"
        );
        assert!(
            p.bytes <= BUDGET || p.ids.len() == 1,
            "a page of {} events is {} bytes, over the {BUDGET} budget",
            p.ids.len(),
            p.bytes
        );
        assert!(p.bytes <= BUDGET + largest + 1024);
        if p.ids.len() == 1 && p.bytes > BUDGET {
            alone_pages += 1;
        }
        if p.truncated {
            truncated_pages += 1;
            assert!(p.cursor.is_some(), "a truncated page continues");
        }
        seen.extend(p.ids);
        cursor = p.cursor;
        if cursor.is_none() {
            break;
        }
    }
    assert!(cursor.is_none(), "the walk ends");
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no event twice");
    assert_same_ids(&unique, &ids(&all), "every event once");
    assert!(truncated_pages >= 5, "{truncated_pages} truncated pages");
    assert_eq!(alone_pages, 2, "each oversized event comes alone");

    // A page cut by rows, not bytes, is not `truncated`.
    let p = events_page(&c, &base, "limit=3").await;
    assert_eq!(p.ids.len(), 3);
    assert!(!p.truncated && p.cursor.is_some());

    // The OpenAPI document says so.
    let (_, doc) = get(&c, &format!("{base}/openapi.json")).await;
    let doc = String::from_utf8_lossy(&doc);
    assert!(doc.contains("max_response_bytes") && doc.contains("truncated"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_pages_are_bounded_in_bytes_too() {
    let (pool, db) = test_db().await;
    let urls: Vec<_> = (0..40)
        .map(|i| relay_url(&format!("wss://relay-{i:02}.example.com")))
        .collect();
    bigbrotr::register_relays(&pool, &urls)
        .await
        .expect("register");
    let server = serve(&pool, &db, idle_state(&pool, &db).await, |c| {
        c.http.max_response_bytes = 1024;
    })
    .await;
    let base = format!("http://{}", server.addr());
    let c = client();
    let (mut seen, mut after, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        let mut u = format!("{base}/api/relays?limit=500");
        if let Some(a) = &after {
            u.push_str(&format!("&after={}", urlencode(a)));
        }
        let (status, body) = get(&c, &u).await;
        assert_eq!(status, 200);
        assert!(body.len() <= 1024, "{} bytes", body.len());
        let v: Value = serde_json::from_slice(&body).expect("json");
        let relays = v["relays"].as_array().expect("relays");
        assert!(!relays.is_empty());
        seen.extend(
            relays
                .iter()
                .map(|r| r["url"].as_str().expect("url").to_string()),
        );
        pages += 1;
        after = v["next"].as_str().map(str::to_string);
        assert_eq!(v["truncated"].as_bool(), Some(after.is_some()));
        if after.is_none() || pages > 100 {
            break;
        }
    }
    let want: Vec<String> = urls.iter().map(|u| u.to_string()).collect();
    assert_eq!(seen, want, "every relay once, in order");
    assert!(pages > 5);
    server.shutdown().await;
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// 8 parallel `limit=500` requests over 100 events of 500 KB: the process serving them
/// stays far below what whole pages would take (each would be ~50 MB of body alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_big_pages_keep_the_process_small() {
    let (pool, db) = test_db().await;
    let key = secp256k1::Keypair::from_secret_bytes([11u8; 32]).expect("key");
    let events: Vec<GenEvent> = (0..100)
        .map(|i| big_event(&key, 1_700_000_000 + i, 500_000, 0))
        .collect();
    for e in &events {
        store(&pool, e).await;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bin = Binary::start(dir.path(), &db, "ws://127.0.0.1:9", &[]);
    let c = client();
    bin.wait_healthy(&c).await;
    let before = bin.peak_rss_kib();
    let author = hex::encode(events[0].pubkey);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (c, u) = (
            c.clone(),
            bin.url(&format!("/api/events?authors={author}&limit=500")),
        );
        tasks.push(tokio::spawn(async move { get(&c, &u).await }));
    }
    for t in tasks {
        let (status, body) = t.await.expect("task");
        assert_eq!(status, 200);
        assert!(body.len() <= 4 << 20, "{} bytes", body.len());
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["truncated"], Value::Bool(true));
    }
    let after = bin.peak_rss_kib();
    eprintln!("peak RSS of bigbrotr: {before} KiB before the 8 requests, {after} KiB after");
    // Whole pages would be 8 × ~50 MB of JSON plus the rows behind them (3 GB measured
    // before the byte budget); bounded pages are 8 × 4 MiB.
    assert!(after < 400 * 1024, "peak RSS {after} KiB");
}

// ---------------------------------------------------------------------------------------
// 2. Connections that never finish their request
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_half_requests_cannot_take_the_server() {
    const IDLE: usize = 2000;
    let (_pool, db) = test_db().await;
    let relay = TestRelay::start(Vec::new(), Behavior::default())
        .await
        .expect("relay");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bin = Binary::start(
        dir.path(),
        &db,
        &relay.url(),
        &[(
            "http",
            "max_connections = 500\nheader_timeout_ms = 2000\nidle_timeout_ms = 3000\n",
        )],
    );
    let c = client();
    bin.wait_healthy(&c).await;

    // 2,000 connections that start a request and never finish its head.
    let addr = format!("127.0.0.1:{}", bin.port);
    let mut idle = Vec::with_capacity(IDLE);
    let opened = Instant::now();
    for _ in 0..IDLE {
        match tokio::net::TcpStream::connect(&addr).await {
            Ok(mut s) => {
                let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await;
                idle.push(s);
            }
            Err(e) => panic!("connect {}: {e}", idle.len()),
        }
    }
    eprintln!("{IDLE} idle connections opened in {:?}", opened.elapsed());

    // /health still answers (retrying while the slots are full: shed connections are
    // refused at once, idle ones leave after the header timeout).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut answered = None;
    let asked = Instant::now();
    while Instant::now() < deadline {
        let quick = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        if let Ok(r) = quick.get(bin.url("/health")).send().await {
            if r.status().as_u16() == 200 {
                answered = Some(asked.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answered = answered.unwrap_or_else(|| panic!("/health never answered:\n{}", bin.log()));
    eprintln!("/health answered {answered:?} after the idle connections were opened");

    // Every idle connection is closed by the server: refused at accept (503) or after
    // the header timeout.
    let mut closed = 0;
    let close_deadline = Instant::now() + Duration::from_secs(20);
    for s in &mut idle {
        let mut buf = [0u8; 256];
        let left = close_deadline.saturating_duration_since(Instant::now());
        loop {
            match tokio::time::timeout(left, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    closed += 1;
                    break;
                }
                Ok(Ok(_)) => continue, // a 503 or 408 before the close
                Err(_) => break,
            }
        }
    }
    assert_eq!(closed, IDLE, "idle connections closed by the server");
    assert!(bin.alive(), "the process survived:\n{}", bin.log());

    let (status, text) = get(&c, &bin.url("/metrics")).await;
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&text);
    let shed = sample(&text, "bigbrotr_http_connections_shed_total").unwrap_or(0.0);
    let timed_out = sample(&text, "bigbrotr_http_header_timeouts_total").unwrap_or(0.0);
    let idle_closed = sample(&text, "bigbrotr_http_idle_closed_total").unwrap_or(0.0);
    eprintln!("shed {shed}, header timeouts {timed_out}, idle closed {idle_closed}");
    assert!(shed >= 1.0 && timed_out >= 1.0, "{shed} {timed_out}");
    assert!(shed + timed_out + idle_closed >= IDLE as f64);
    assert!(sample(&text, "bigbrotr_http_connections_open") <= Some(500.0));
    assert!(bin.log().contains("file-descriptor limit"));
    drop(bin);
    relay.stop().await;
}

// ---------------------------------------------------------------------------------------
// 3. /ready
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_503_while_every_relay_is_paused_and_200_once_one_is_archived() {
    let (_pool, db) = test_db().await;
    // A relay port with nothing listening yet: every run fails at once and is paused.
    let port = free_port();
    let relay = format!("ws://127.0.0.1:{port}");
    let dir = tempfile::tempdir().expect("tempdir");
    // One failed connection gives a run up; it is paused `sync.interval` (4 s), doubling up
    // to `finder.pause_max` (8 s).
    let mut bin = Binary::start(
        dir.path(),
        &db,
        &relay,
        &[
            ("sync", "interval = 4.0\nmax_failures = 1\n"),
            ("finder", "pause_max = 8.0\n"),
        ],
    );
    let c = client();
    bin.wait_healthy(&c).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut not_ready = None;
    while Instant::now() < deadline {
        let (status, body) = get(&c, &bin.url("/ready")).await;
        if status == 503 {
            not_ready = Some(String::from_utf8_lossy(&body).to_string());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let body = not_ready.unwrap_or_else(|| panic!("/ready stayed 200:\n{}", bin.log()));
    assert!(body.contains("no relay is being archived"), "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["relays"], 1);
    assert_eq!(v["archiving"], 0);

    // The relay comes up: its next run connects, and /ready turns 200.
    let up = TestRelay::start_on(port, Vec::new(), Behavior::default())
        .await
        .expect("relay on the same port");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ready = false;
    while Instant::now() < deadline {
        let (status, _) = get(&c, &bin.url("/ready")).await;
        if status == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ready, "/ready never recovered:\n{}", bin.log());
    let (_, body) = get(&c, &bin.url("/ready")).await;
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["archiving"], 1, "{v}");
    drop(bin);
    up.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_the_database_within_a_second() {
    // A private cluster: the shared one is never stopped.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        use std::os::unix::fs::PermissionsExt;
        // The server may run as another user (as root, `postgres`): let it reach its dir.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }
    let pg_dir = dir.path().join("pg");
    let pg = EmbeddedPg::start(&pg_dir, 0, "ready", true)
        .await
        .expect("private cluster");
    let port = pg.port();
    let url = pg.url("ready");
    let pool = bigbrotr::db::connect(&url, 2).await.expect("pool");
    bigbrotr::db::migrate(&pool).await.expect("migrate");
    let state = idle_state(&pool, &url).await;
    let server = serve(&pool, &url, state, |c| c.http.api = false).await;
    let ready_url = format!("http://{}/ready", server.addr());
    let c = client();
    let wait_for = |want: u16, limit: Duration| {
        let (c, u) = (c.clone(), ready_url.clone());
        async move {
            let start = Instant::now();
            while start.elapsed() < limit {
                let (status, _) = get(&c, &u).await;
                if status == want {
                    return Some(start.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            None
        }
    };
    assert!(wait_for(200, Duration::from_secs(10)).await.is_some());

    pg.stop().await.expect("stop PostgreSQL");
    let down = wait_for(503, Duration::from_secs(10)).await;
    assert!(down.is_some(), "/ready stays 200 with PostgreSQL stopped");

    // Keep probing while it is down, so the probe has failed many times.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, body) = get(&c, &ready_url).await;
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));

    let pg = EmbeddedPg::start(&pg_dir, port, "ready", true)
        .await
        .expect("restart");
    let back = wait_for(200, Duration::from_secs(20)).await;
    eprintln!("/ready answered 200 {back:?} after PostgreSQL was back");
    let back = back.expect("/ready never recovered");
    // A failed probe is retried every 250 ms with a 1-s timeout, however often it failed (no
    // growing backoff): the margin above that is for a loaded machine, not for the engine.
    assert!(back < Duration::from_secs(6), "{back:?}");
    server.shutdown().await;
    drop(pool);
    pg.stop().await.expect("stop");
}
