//! Latency of the archive as a relay, over REST and over the relay endpoint, on a generated
//! archive (BENCHMARKS.md, "Archive as a relay"). It prints figures instead of asserting
//! them; it asserts that every query is answered (no 503) and that NIP-77 finds exactly the
//! ids the client lacks. CI runs it on a small archive it generates; the 5M-event run is
//! ignored, as it needs an archive built beforehand:
//!
//! ```sh
//! psql "$URL" -v events=1000000 -f scripts/gen-archive.sql && psql "$URL" -c 'VACUUM ANALYZE'
//! BENCH_ARCHIVE_URL="$URL" cargo test --release --test relay_endpoint_bench -- --ignored --nocapture
//! ```
//!
//! Every wait is bounded (a request 60 s, the whole reconciliation 10 min).

mod common;

use bigbrotr::http::{Http, Server};
use bigbrotr::state::EngineState;
use futures_util::{SinkExt, StreamExt};
use negentropy::{Id, Negentropy, NegentropyStorageVector};
use serde_json::{json, Value};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const WAIT: Duration = Duration::from_secs(60);

/// How much to measure.
struct Plan {
    /// Sequential rounds over each row's values.
    rounds: usize,
    /// Concurrent clients of the concurrency columns.
    clients: usize,
    /// Newest ids the NIP-77 client reconciles over (it holds 99 % of them).
    neg_ids: i64,
    /// Only the NIP-77 part.
    only_neg: bool,
    /// Percentage of the archive's pages sampled for hot values (1 % of 5M events is plenty).
    sample_pct: f64,
}

/// Hot values of tag `letter` in a `pct` % sample of the archive, most used first.
async fn hot_values(pool: &bigbrotr::db::Pool, letter: &str, n: i64, pct: f64) -> Vec<String> {
    let c = pool.get().await.expect("conn");
    c.query(
        &format!(
            "SELECT t->>1, count(*) FROM (SELECT tags FROM events TABLESAMPLE SYSTEM ({pct})) AS e,
                    jsonb_array_elements(e.tags) AS t
             WHERE t->>0 = $1 AND jsonb_typeof(t->1) = 'string'
             GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT $2"
        ),
        &[&letter, &n],
    )
    .await
    .expect("sample")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// One REST request: milliseconds and events; `None` when answered 503 (the API's pool of
/// connections busy past its checkout limit, or the statement timeout).
async fn rest_once(c: &reqwest::Client, base: &str, q: &str) -> Option<(f64, usize)> {
    let t = Instant::now();
    let r = c
        .get(format!("{base}/api/events?{q}"))
        .send()
        .await
        .expect("request");
    if r.status().as_u16() == 503 {
        return None;
    }
    assert_eq!(r.status().as_u16(), 200, "{q}");
    let body = r.bytes().await.expect("body");
    // Timed at the last byte: parsing the answer is the client's work, not the server's.
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    // Counted without building the events: 50 clients' parsing shares the server's 2 cores.
    #[derive(serde::Deserialize)]
    struct Page {
        events: Vec<serde::de::IgnoredAny>,
    }
    let page: Page = serde_json::from_slice(&body).expect("json");
    Some((ms, page.events.len()))
}

async fn connect(addr: &str) -> Ws {
    // Nagle off, as on the server: a REQ written right after a CLOSE must not wait for the
    // CLOSE's (delayed) ACK.
    tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async_with_config(format!("ws://{addr}/"), None, true),
    )
    .await
    .expect("in time")
    .expect("ws")
    .0
}

async fn next_text(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("answer in time")
        {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).expect("json"),
            Some(Ok(_)) => continue,
            other => panic!("connection ended: {other:?}"),
        }
    }
}

/// One REQ: milliseconds and events; `None` when CLOSED (busy pool or statement timeout).
async fn relay_once(ws: &mut Ws, filter: &Value) -> Option<(f64, usize)> {
    let t = Instant::now();
    ws.send(Message::Text(
        json!(["REQ", "b", filter]).to_string().into(),
    ))
    .await
    .expect("send");
    let mut n = 0;
    // Messages told apart by their first bytes: 50 clients parsing every event in full would
    // take CPU from the server they measure (on the same 2 cores).
    loop {
        let m = loop {
            match tokio::time::timeout(WAIT, ws.next())
                .await
                .expect("answer in time")
            {
                Some(Ok(Message::Text(t))) => break t,
                Some(Ok(_)) => continue,
                other => panic!("connection ended: {other:?}"),
            }
        };
        let m = m.as_str();
        if m.starts_with("[\"EVENT\"") {
            n += 1;
        } else if m.starts_with("[\"EOSE\"") {
            break;
        } else if m.starts_with("[\"CLOSED\"") {
            return None;
        } else {
            panic!("unexpected {m}");
        }
    }
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    ws.send(Message::Text(json!(["CLOSE", "b"]).to_string().into()))
        .await
        .expect("close");
    Some((ms, n))
}

/// Latencies of one case, and the requests refused (503 / CLOSED).
#[derive(Default)]
struct Lat {
    ms: Vec<f64>,
    failed: usize,
    events: usize,
}

impl Lat {
    fn add(&mut self, r: Option<(f64, usize)>) {
        match r {
            Some((ms, n)) => {
                self.ms.push(ms);
                self.events += n;
            }
            None => self.failed += 1,
        }
    }

    fn merge(&mut self, o: Lat) {
        self.ms.extend(o.ms);
        self.failed += o.failed;
        self.events += o.events;
    }

    fn show(&mut self) -> String {
        let (p50, p95) = (pct(&mut self.ms, 0.5), pct(&mut self.ms, 0.95));
        if self.failed > 0 {
            format!(
                "{p50:.1} / {p95:.1} ({} of {})",
                self.failed,
                self.failed + self.ms.len()
            )
        } else {
            format!("{p50:.1} / {p95:.1}")
        }
    }
}

/// The cases: tag letter, kinds (7 for `#e`, 1 otherwise, as in "Tag index").
fn cases() -> Vec<(&'static str, Option<u16>)> {
    vec![
        ("e", None),
        ("p", None),
        ("t", None),
        ("e", Some(7)),
        ("p", Some(1)),
        ("t", Some(1)),
    ]
}

fn rest_query(letter: &str, v: &str, kind: Option<u16>) -> String {
    let mut q = format!(
        "%23{letter}={}&limit=100",
        form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
    );
    if let Some(k) = kind {
        q.push_str(&format!("&kinds={k}"));
    }
    q
}

fn relay_filter(letter: &str, v: &str, kind: Option<u16>) -> Value {
    let mut f = json!({ format!("#{letter}"): [v], "limit": 100 });
    if let Some(k) = kind {
        f["kinds"] = json!([k]);
    }
    f
}

/// The bench on an archive of 20,000 events it generates (`scripts/gen-archive.sql`): every
/// query of the 5M-event bench runs and is answered, at a smaller scale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_bench_runs_on_a_small_generated_archive() {
    let (pool, url) = common::test_db().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gen-archive.sql");
    let psql = ["/usr/lib/postgresql/15/bin/psql", "psql"]
        .into_iter()
        .find(|p| !p.starts_with('/') || std::path::Path::new(p).exists())
        .expect("psql");
    let out = common::output_within(
        std::process::Command::new(psql).args([
            "-X",
            "-q",
            "-d",
            &url,
            "-v",
            "events=20000",
            "-v",
            "relays=50",
            "-v",
            "authors=500",
            "-v",
            "checks=1",
            "-v",
            "chunk=20000",
            "-f",
            script,
        ]),
        Duration::from_secs(300),
        "psql gen-archive.sql",
    );
    assert!(
        out.status.success(),
        "gen-archive.sql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    pool.get()
        .await
        .expect("conn")
        .batch_execute("VACUUM ANALYZE")
        .await
        .expect("analyze");
    drop(pool);
    bench(
        &url,
        Plan {
            rounds: 1,
            clients: 5,
            neg_ids: 10_000,
            only_neg: false,
            sample_pct: 100.0,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs BENCH_ARCHIVE_URL: a 5M-event archive from scripts/gen-archive.sql (21 min to build); CI runs the same bench on 20,000 events"]
async fn archive_as_a_relay_latency() {
    let Ok(url) = std::env::var("BENCH_ARCHIVE_URL") else {
        eprintln!("set BENCH_ARCHIVE_URL to a database filled by scripts/gen-archive.sql");
        return;
    };
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<i64>().ok());
    let plan = Plan {
        rounds: env("BENCH_ROUNDS").map_or(3, |r| r.max(1) as usize),
        clients: 50,
        neg_ids: env("BENCH_NEG_IDS").unwrap_or(1_000_000),
        only_neg: std::env::var("BENCH_ONLY_NEG").is_ok(),
        sample_pct: 1.0,
    };
    bench(&url, plan).await;
}

async fn bench(url: &str, plan: Plan) {
    let url = url.to_string();
    let pool = bigbrotr::db::connect(&url, 2).await.expect("pool");
    let total: i64 = pool
        .get()
        .await
        .expect("conn")
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .expect("count")
        .get(0);
    let mut cfg = common::config(&url);
    cfg.http.listen = "127.0.0.1:0".into();
    cfg.http.relay_max_neg_ids = 1_100_000;
    let http = Http::bind(&cfg, &url, pool.clone())
        .await
        .expect("bind")
        .expect("http");
    let pipeline = bigbrotr::pipeline::Pipeline::start(&cfg, pool.clone());
    let stats = pipeline.stats.clone();
    pipeline.finish().await.expect("drain");
    let state = Arc::new(EngineState::new(stats));
    state.ready.store(true, Relaxed);
    let server: Server = http.spawn(state);
    let addr = server.addr().to_string();
    let base = format!("http://{addr}");
    let rest = reqwest::Client::builder()
        .timeout(WAIT)
        .pool_max_idle_per_host(64)
        .build()
        .expect("client");
    println!("archive: {total} events");
    {
        // Transport alone: a message answered without the database.
        let mut ws = connect(&server.addr().to_string()).await;
        let mut t_ms = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            ws.send(Message::Text("[\"PING\"]".to_string().into()))
                .await
                .expect("send");
            let v = next_text(&mut ws).await;
            assert_eq!(v[0], "NOTICE");
            t_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        println!("NOTICE round trip p50 {:.2} ms", pct(&mut t_ms, 0.5));
        let mut c_ms = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            ws.send(Message::Text(
                json!(["COUNT", "c", {"kinds": [65000]}]).to_string().into(),
            ))
            .await
            .expect("send");
            let v = next_text(&mut ws).await;
            assert_eq!(v[0], "COUNT");
            c_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        println!("COUNT (empty) round trip p50 {:.2} ms", pct(&mut c_ms, 0.5));
        let mut r_ms = Vec::new();
        for _ in 0..20 {
            r_ms.push(
                relay_once(&mut ws, &json!({"kinds": [65000]}))
                    .await
                    .expect("EOSE")
                    .0,
            );
        }
        println!("REQ (empty) round trip p50 {:.2} ms", pct(&mut r_ms, 0.5));
    }
    let rounds = plan.rounds;
    let mut values = std::collections::HashMap::new();
    for l in ["e", "p", "t"] {
        values.insert(l, hot_values(&pool, l, 30, plan.sample_pct).await);
    }
    println!(
        "| query | REST p50 / p95 (ms) | relay p50 / p95 (ms) | REST, {n} clients p50 / p95 (failed) | relay, {n} clients p50 / p95 (failed) | events per answer (mean) |",
        n = plan.clients
    );
    println!("|---|---|---|---|---|---|");
    let only_neg = plan.only_neg;
    for (letter, kind) in cases().into_iter().filter(|_| !only_neg) {
        let vals = &values[letter];
        // Warm both paths once.
        for v in vals {
            rest_once(&rest, &base, &rest_query(letter, v, kind)).await;
        }
        let (mut r, mut w) = (Lat::default(), Lat::default());
        for _ in 0..rounds {
            for v in vals {
                r.add(rest_once(&rest, &base, &rest_query(letter, v, kind)).await);
            }
        }
        let mut ws = connect(&addr).await;
        for _ in 0..rounds {
            for v in vals {
                w.add(relay_once(&mut ws, &relay_filter(letter, v, kind)).await);
            }
        }
        // Concurrent clients, each through every value once.
        let mut tasks = Vec::new();
        for c in 0..plan.clients {
            let (rest, base, vals) = (rest.clone(), base.clone(), vals.clone());
            tasks.push(tokio::spawn(async move {
                let mut out = Lat::default();
                for i in 0..vals.len() {
                    let v = &vals[(i + c) % vals.len()];
                    out.add(rest_once(&rest, &base, &rest_query(letter, v, kind)).await);
                }
                out
            }));
        }
        let mut rc = Lat::default();
        for t in tasks {
            rc.merge(t.await.expect("task"));
        }
        let mut tasks = Vec::new();
        for c in 0..plan.clients {
            let (addr, vals) = (addr.clone(), vals.clone());
            tasks.push(tokio::spawn(async move {
                let mut ws = connect(&addr).await;
                let mut out = Lat::default();
                for i in 0..vals.len() {
                    let v = &vals[(i + c) % vals.len()];
                    out.add(relay_once(&mut ws, &relay_filter(letter, v, kind)).await);
                }
                out
            }));
        }
        let mut wc = Lat::default();
        for t in tasks {
            wc.merge(t.await.expect("task"));
        }
        let name = match kind {
            Some(k) => format!("`#{letter}` + kinds [{k}]"),
            None => format!("`#{letter}`"),
        };
        println!(
            "| {name} | {} | {} | {} | {} | {:.0} |",
            r.show(),
            w.show(),
            rc.show(),
            wc.show(),
            r.events as f64 / r.ms.len().max(1) as f64,
        );
    }

    // Every documented REST filter, alone and combined, on hot values: each must answer (no
    // 503 from the statement timeout), timed as p50 / max over 5 requests.
    if !only_neg {
        let c = pool.get().await.expect("conn");
        let hex_col = |sql: String| {
            let c = &c;
            async move {
                c.query(&sql, &[])
                    .await
                    .expect(&sql)
                    .iter()
                    .map(|r| hex::encode(r.get::<_, Vec<u8>>(0)))
                    .collect::<Vec<String>>()
            }
        };
        let authors = hex_col(format!(
            "SELECT pubkey FROM events TABLESAMPLE SYSTEM ({}) GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 100",
            plan.sample_pct
        ))
        .await;
        let ids = hex_col(format!(
            "SELECT id FROM events TABLESAMPLE SYSTEM ({}) LIMIT 100",
            plan.sample_pct / 10.0
        ))
        .await;
        let newest: i64 = c
            .query_one("SELECT max(created_at) FROM events", &[])
            .await
            .expect("newest")
            .get(0);
        let (p, t, e) = (&values["p"], &values["t"], &values["e"]);
        let day = newest - 86_400;
        let enc = |v: &[String]| v.join(",");
        let combos: Vec<(&str, String)> = vec![
            ("newest page", "limit=100".into()),
            ("ids (100)", format!("ids={}", enc(&ids))),
            ("authors (1)", format!("authors={}", authors[0])),
            (
                "authors (3, the hottest)",
                format!("authors={}", enc(&authors[..3])),
            ),
            (
                "authors (3) + kinds",
                format!("authors={}&kinds=1", enc(&authors[..3])),
            ),
            ("authors (20)", format!("authors={}", enc(&authors[..20]))),
            ("authors (100)", format!("authors={}", enc(&authors))),
            ("kinds", "kinds=1&limit=100".into()),
            (
                "kinds + since/until (a day)",
                format!("kinds=7&since={day}&until={newest}"),
            ),
            ("authors + kinds", format!("authors={}&kinds=1", authors[0])),
            (
                "authors (100) + kinds + since",
                format!("authors={}&kinds=1,7&since={day}", enc(&authors)),
            ),
            ("#p (30 values)", format!("%23p={}", enc(p))),
            (
                "#p + authors",
                format!("%23p={}&authors={}", p[0], enc(&authors)),
            ),
            (
                "#p + #t (two tag filters)",
                format!("%23p={}&%23t={}", p[0], t[0]),
            ),
            (
                "#e + kinds + since/until",
                format!("%23e={}&kinds=7&since={day}&until={newest}", e[0]),
            ),
            (
                "#t + until (old page)",
                format!("%23t={}&until={}", t[0], newest - 30 * 86_400),
            ),
            ("tag_p alias + kinds", format!("tag_p={}&kinds=1", p[1])),
        ];
        println!("\n| REST filter (limit 100) | p50 / max (ms) | events |\n|---|---|---|");
        for (name, q) in &combos {
            let mut ms = Vec::new();
            let mut n = 0;
            let mut cursor = None;
            for _ in 0..5 {
                let (t, k) = rest_once(&rest, &base, q)
                    .await
                    .unwrap_or_else(|| panic!("503 for {name}: {q}"));
                ms.push(t);
                n = k;
            }
            if *name == "#p (30 values)" {
                // The next page through the cursor, with the same filter.
                let bytes = rest
                    .get(format!("{base}/api/events?{q}"))
                    .send()
                    .await
                    .expect("page")
                    .bytes()
                    .await
                    .expect("body");
                let body: Value = serde_json::from_slice(&bytes).expect("json");
                cursor = body["cursor"].as_str().map(str::to_string);
            }
            let max = ms.iter().copied().fold(0.0, f64::max);
            println!("| {name} | {:.1} / {max:.1} | {n} |", pct(&mut ms, 0.5));
            if let Some(cur) = cursor {
                let q2 = format!("{q}&cursor={cur}");
                let mut ms = Vec::new();
                for _ in 0..5 {
                    let (t, k) = rest_once(&rest, &base, &q2).await.expect("page 2 answered");
                    ms.push(t);
                    n = k;
                }
                let max = ms.iter().copied().fold(0.0, f64::max);
                println!(
                    "| #p (30 values), page 2 by cursor | {:.1} / {max:.1} | {n} |",
                    pct(&mut ms, 0.5)
                );
            }
        }
    }

    // NIP-77: the client holds 99 % of the newest `BENCH_NEG_IDS` (default 1,000,000) ids.
    let want: i64 = plan.neg_ids.min(total);
    let since: i64 = pool
        .get()
        .await
        .expect("conn")
        .query_one(
            "SELECT created_at FROM events ORDER BY created_at DESC OFFSET $1 LIMIT 1",
            &[&(want - 1).max(0)],
        )
        .await
        .expect("since")
        .get(0);
    let rows = pool
        .get()
        .await
        .expect("conn")
        .query(
            "SELECT created_at, id FROM events WHERE created_at >= $1",
            &[&since],
        )
        .await
        .expect("ids");
    let mut storage = NegentropyStorageVector::with_capacity(rows.len());
    let mut lacking = 0usize;
    for (i, r) in rows.iter().enumerate() {
        if i % 100 == 0 {
            lacking += 1;
            continue;
        }
        let id: Vec<u8> = r.get(1);
        let id: [u8; 32] = id.try_into().expect("32 bytes");
        storage
            .insert(r.get::<_, i64>(0) as u64, Id::from_byte_array(id))
            .expect("insert");
    }
    let matching = rows.len();
    drop(rows);
    storage.seal().expect("seal");
    // The client's frame limit (bytes before hex; 0 = none): each round's frame stays under it.
    let frame: u64 = std::env::var("BENCH_NEG_FRAME")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60_000);
    let mut neg = Negentropy::owned(storage, frame).expect("negentropy");
    let mut ws = connect(&addr).await;
    let mut msg = hex::encode(neg.initiate().expect("initiate"));
    let filter = json!({ "since": since });
    let (mut server_ms, mut rounds_n, mut first_ms) = (0.0f64, 0u32, 0.0f64);
    let (mut have, mut need) = (Vec::new(), Vec::new());
    let started = Instant::now();
    loop {
        let out = if rounds_n == 0 {
            json!(["NEG-OPEN", "n", filter, msg])
        } else {
            json!(["NEG-MSG", "n", msg])
        };
        let t = Instant::now();
        ws.send(Message::Text(out.to_string().into()))
            .await
            .expect("send");
        let v = next_text(&mut ws).await;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if rounds_n == 0 {
            first_ms = ms;
        }
        server_ms += ms;
        rounds_n += 1;
        assert_eq!(v[0], "NEG-MSG", "{v}");
        let reply = hex::decode(v[2].as_str().expect("hex")).expect("hex");
        match neg
            .reconcile_with_ids(&reply, &mut have, &mut need)
            .expect("reconcile")
        {
            Some(next) => msg = hex::encode(next),
            None => break,
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "reconciliation runs too long"
        );
    }
    assert_eq!(need.len(), lacking, "the ids the client lacks");
    assert!(have.is_empty());
    println!(
        "\nNIP-77 (client frame limit {frame}): {matching} archived ids, client holds {} (99 %): {} rounds, server time {:.0} ms \
         (NEG-OPEN with loading the ids {:.0} ms), wall {:.0} ms, {} ids found missing",
        matching - lacking,
        rounds_n,
        server_ms,
        first_ms,
        started.elapsed().as_secs_f64() * 1000.0,
        need.len()
    );
    server.shutdown().await;
}
