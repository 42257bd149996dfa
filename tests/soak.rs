//! Soak: the real binary (`bigbrotr run`) for a configurable time against many relays on
//! 127.0.0.1 that receive live events, misbehave in rotation and restart, while the HTTP API
//! and the DVM answer a steady query load. It reports bigbrotr's RSS and CPU time as it goes,
//! and asserts at the end: the archive holds exactly the events the relays hold (ids and
//! every (event, relay) sighting), no invalid event got in, bigbrotr never exited, the API
//! never failed (503 is allowed shedding), every DVM job got its result, RSS after warm-up
//! stayed within a generous bound, and SIGTERM ends the process with exit 0.
//!
//! The default is the CI version (about 2–3 minutes in all). The full version is chosen by
//! environment variables, e.g.
//! `SOAK_SECS=3600 SOAK_RELAYS=1000 cargo test --release --test soak -- --nocapture`.
//! Knobs (defaults in brackets): SOAK_SECS [120], SOAK_RELAYS [50], SOAK_EVENTS_PER_RELAY
//! [200], SOAK_RATE events/s published [20], SOAK_RESTART_EVERY s [12], SOAK_RESTARTS relays
//! per round [relays/25, at least 1], SOAK_SAMPLE_EVERY s [15, or 60 past 10 minutes],
//! SOAK_WARMUP s [30, or 300 past 10 minutes], SOAK_FINAL_WAIT s [60 + relays/10],
//! SOAK_MAX_PARALLEL (`sync.max_parallel`) [relays / 2, at least 1: fewer backfill slots than
//! relays, so every relay beyond them must get its turn once the first ones go live].

mod common;

use bigbrotr_testkit::gen::{generate, sign, with_bad_id, with_bad_sig, GenEvent, GenSpec};
use bigbrotr_testkit::relay::{Behavior, TestRelay};
use common::*;
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

const MIB: f64 = 1024.0 * 1024.0;

/// The run's size, from the environment.
#[derive(Debug, Clone)]
struct Settings {
    secs: u64,
    relays: usize,
    events_per_relay: usize,
    rate: u64,
    restart_every: u64,
    restarts: usize,
    sample_every: u64,
    warmup: u64,
    final_wait: u64,
    max_parallel: usize,
}

fn env_num(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Settings {
        let secs = env_num("SOAK_SECS", 120).max(10);
        let relays = (env_num("SOAK_RELAYS", 50) as usize).max(2);
        let long = secs > 600;
        Settings {
            secs,
            relays,
            events_per_relay: env_num("SOAK_EVENTS_PER_RELAY", 200) as usize,
            rate: env_num("SOAK_RATE", 20).max(1),
            restart_every: env_num("SOAK_RESTART_EVERY", 12).max(1),
            restarts: (env_num("SOAK_RESTARTS", (relays as u64 / 25).max(1)) as usize)
                .clamp(1, relays / 2),
            sample_every: env_num("SOAK_SAMPLE_EVERY", if long { 60 } else { 15 }).max(1),
            warmup: env_num("SOAK_WARMUP", if long { 300 } else { 30 }),
            final_wait: env_num("SOAK_FINAL_WAIT", 60 + relays as u64 / 10),
            max_parallel: env_num("SOAK_MAX_PARALLEL", (relays as u64 / 2).max(1)) as usize,
        }
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Raises this process's open-file soft limit to the hard limit (bigbrotr inherits it).
fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit on our own process with a valid struct.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every platform
        let cur = r.rlim_cur as u64;
        cur
    }
}

/// The misbehaviours a relay rotates through: after each of them the relay's events can
/// still all be obtained (the end check is exact equality).
fn behavior(k: usize, bad: &[GenEvent]) -> (&'static str, Behavior) {
    let d = Behavior::default();
    match k % 10 {
        0 => ("compliant", d),
        1 => (
            "garbage",
            Behavior {
                garbage_frames: 8,
                ..d
            },
        ),
        2 => (
            "duplicates",
            Behavior {
                duplicates: true,
                ..d
            },
        ),
        3 => (
            "notices+oversized",
            Behavior {
                notice_on_req: true,
                huge_frame: Some(600_000),
                ..d
            },
        ),
        4 => (
            "out_of_range",
            Behavior {
                out_of_range: 5,
                ..d
            },
        ),
        5 => (
            "deep_frame",
            Behavior {
                deep_frame: Some(5_000),
                ..d
            },
        ),
        6 => (
            "disconnects",
            Behavior {
                disconnect_after: Some(40),
                disconnect_connections: 2,
                ..d
            },
        ),
        7 => (
            "rate_limited",
            Behavior {
                closed: Some("rate-limited: slow down".into()),
                closed_times: 2,
                ..d
            },
        ),
        8 => (
            "pings",
            Behavior {
                ping_every: Some(Duration::from_millis(300)),
                ..d
            },
        ),
        _ => (
            "bad_sigs",
            Behavior {
                bad_sig: bad.to_vec(),
                ..d
            },
        ),
    }
}

/// One relay endpoint: its fixed port, the events it holds (kept here so a restart serves
/// the same store), and the running relay unless it is down for a restart.
struct Slot {
    port: u16,
    url: String,
    events: Vec<GenEvent>,
    relay: Option<TestRelay>,
}

type Slots = Arc<Vec<Mutex<Slot>>>;

/// Starts a relay on `port`, retrying the bind for a while (a restart rebinds the port).
async fn start_on_retry(port: u16, events: Vec<GenEvent>, b: Behavior) -> TestRelay {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match TestRelay::start_on(port, events.clone(), b.clone()).await {
            Ok(r) => return r,
            Err(e) if Instant::now() < deadline => {
                eprintln!("soak: rebinding 127.0.0.1:{port}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("cannot rebind test relay on 127.0.0.1:{port}: {e}"),
        }
    }
}

/// A free port below the ephemeral range (so no outgoing connection can take a relay's port
/// while it is down), probing upwards from `from`.
fn free_port(from: &mut u16) -> u16 {
    while *from < 32_700 {
        let p = *from;
        *from += 1;
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free port below 32700");
}

/// Publishes `rate` events a second (created_at = now, every tenth batch dated 10 s back) to
/// random relays, a tenth of them to a second relay too; returns the distinct events published.
async fn publisher(slots: Slots, stop: Arc<AtomicBool>, rate: u64) -> u64 {
    let mut rng = StdRng::seed_from_u64(7);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let (mut published, mut n) = (0u64, 0u64);
    while !stop.load(Relaxed) {
        tick.tick().await;
        n += 1;
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        if due <= published {
            continue;
        }
        let count = (due - published).min(rate.max(10)) as usize;
        let back = if n % 10 == 0 { 10 } else { 0 };
        let events = generate(&GenSpec {
            count,
            seed: 1_000_000 + n,
            authors: 3,
            kinds: vec![1, 7],
            content_len: (10, 200),
            tags_per_event: (0, 3),
            start_ts: now() - back,
            spread_secs: 1,
        });
        for ev in events {
            let first = rng.random_range(0..slots.len());
            let mut targets = vec![first];
            if rng.random_bool(0.1) {
                targets.push((first + rng.random_range(1..slots.len())) % slots.len());
            }
            for t in targets {
                let mut s = slots[t].lock().await;
                s.events.push(ev.clone());
                // A relay down for a restart gets it in its store when it comes back.
                if let Some(r) = &s.relay {
                    r.publish(ev.clone());
                }
            }
            published += 1;
        }
    }
    published
}

/// Every `every` seconds, restarts `per_round` relays that are not already down: stop, a pause
/// of 2–4 s, then the same port and store with the next misbehaviour. Returns the restarts.
async fn restarter(
    slots: Slots,
    stop: Arc<AtomicBool>,
    every: u64,
    per_round: usize,
    bad: Arc<Vec<GenEvent>>,
) -> u64 {
    let mut rng = StdRng::seed_from_u64(11);
    let down: Arc<std::sync::Mutex<HashSet<usize>>> = Arc::default();
    let mut tasks = JoinSet::new();
    let mut next_behavior = 1usize;
    let mut restarts = 0u64;
    let mut round_at = Instant::now() + Duration::from_secs(every);
    while !stop.load(Relaxed) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        while tasks.try_join_next().is_some() {}
        if Instant::now() < round_at {
            continue;
        }
        round_at += Duration::from_secs(every);
        for _ in 0..per_round {
            let idx = rng.random_range(0..slots.len());
            if !down.lock().expect("down set").insert(idx) {
                continue;
            }
            restarts += 1;
            next_behavior += 1;
            let (k, pause) = (next_behavior, rng.random_range(2000..4000u64));
            let (slots, down, bad) = (slots.clone(), down.clone(), bad.clone());
            tasks.spawn(async move {
                let old = slots[idx].lock().await.relay.take();
                if let Some(r) = old {
                    r.stop().await;
                }
                tokio::time::sleep(Duration::from_millis(pause)).await;
                let mut s = slots[idx].lock().await;
                let (_, b) = behavior(k, &bad);
                let r = start_on_retry(s.port, s.events.clone(), b).await;
                s.relay = Some(r);
                drop(s);
                down.lock().expect("down set").remove(&idx);
            });
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("restart task");
    }
    restarts
}

#[derive(Default, Debug)]
struct ApiStats {
    ok: u64,
    shed: u64,
    bad: Vec<String>,
    errors: Vec<String>,
}

/// Queries the HTTP server about four times a second until `stop`.
async fn api_load(base: String, author: String, stop: Arc<AtomicBool>) -> ApiStats {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client");
    let paths = [
        "/health".to_string(),
        "/ready".to_string(),
        "/metrics".to_string(),
        "/api/events?limit=50".to_string(),
        format!("/api/events?authors={author}&limit=50"),
        "/api/stats".to_string(),
    ];
    let mut stats = ApiStats::default();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut i = 0usize;
    while !stop.load(Relaxed) {
        tick.tick().await;
        let path = &paths[i % paths.len()];
        i += 1;
        match client.get(format!("{base}{path}")).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body = resp.text().await.unwrap_or_default();
                match status {
                    200..=299 => {
                        if path.starts_with("/api/events") {
                            let v: serde_json::Value = match serde_json::from_str(&body) {
                                Ok(v) => v,
                                Err(e) => {
                                    stats.bad.push(format!("{path}: 200 but not JSON ({e})"));
                                    continue;
                                }
                            };
                            let n = v["events"].as_array().map_or(usize::MAX, Vec::len);
                            if n > 50 {
                                stats.bad.push(format!("{path}: 200 with {n} events"));
                                continue;
                            }
                        }
                        stats.ok += 1;
                    }
                    503 => stats.shed += 1,
                    _ => stats.bad.push(format!(
                        "{path} -> {status}: {}",
                        body.chars().take(200).collect::<String>()
                    )),
                }
            }
            Err(e) => stats.errors.push(format!("{path}: {e}")),
        }
    }
    stats
}

fn keypair(b: u8) -> secp256k1::Keypair {
    secp256k1::Keypair::from_secret_bytes([b; 32]).expect("key")
}

fn pk_hex(k: &secp256k1::Keypair) -> String {
    hex::encode(k.x_only_public_key().0.to_byte_array())
}

/// Publishes a count job (kind 5900) for the DVM every 3 s, from four customers in turn (well
/// inside the per-customer rate limit); returns the request ids.
async fn dvm_load(relay: Arc<TestRelay>, dvm_pk: String, stop: Arc<AtomicBool>) -> Vec<String> {
    let customers: Vec<secp256k1::Keypair> = (1..=4).map(keypair).collect();
    let mut ids = Vec::new();
    let mut i = 0usize;
    // The DVM reads requests newer than its start; give it a moment to connect.
    tokio::time::sleep(Duration::from_secs(3)).await;
    while !stop.load(Relaxed) {
        let tags = vec![
            vec![
                "param".to_string(),
                "filter".to_string(),
                r#"{"kinds":[1]}"#.to_string(),
            ],
            vec!["p".to_string(), dvm_pk.clone()],
        ];
        let req = sign(&customers[i % customers.len()], now(), 5900, &tags, "");
        i += 1;
        ids.push(hex::encode(req.id));
        relay.publish(req);
        for _ in 0..15 {
            if stop.load(Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    ids
}

/// Kinds of the DVM's answers on `url`, by the request id of their `e` tag.
async fn dvm_answers(url: &str, dvm_pk: &str) -> HashMap<String, Vec<u64>> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect to the DVM relay");
    let req = serde_json::json!(["REQ", "a", {"kinds": [6900, 7000], "authors": [dvm_pk]}]);
    ws.send(Message::text(req.to_string()))
        .await
        .expect("send REQ to the DVM relay");
    let mut out: HashMap<String, Vec<u64>> = HashMap::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("DVM relay answers within 10 s");
        let Some(Ok(Message::Text(t))) = msg else {
            panic!("DVM relay closed before EOSE: {msg:?}");
        };
        let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("relay frame is JSON");
        if v[0] == "EOSE" {
            break;
        }
        if v[0] != "EVENT" {
            continue;
        }
        let kind = v[2]["kind"].as_u64().expect("answer kind");
        let tags = v[2]["tags"].as_array().cloned().unwrap_or_default();
        for t in tags {
            if t[0] == "e" {
                if let Some(id) = t[1].as_str() {
                    out.entry(id.to_string()).or_default().push(kind);
                }
            }
        }
    }
    let _ = ws.close(None).await;
    out
}

/// (VmRSS in bytes, user+system CPU seconds, threads, open fds) of `pid`.
fn proc_sample(pid: u32) -> Option<(u64, f64, u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let rss = field("VmRSS:")? * 1024;
    let threads = field("Threads:")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    Some((rss, ticks as f64 / hz, threads, fds))
}

/// Named metric values.
type Figures = Vec<(String, f64)>;

/// Sums of a few engine counters from /metrics (over relays), and rejections by reason.
fn metrics_digest(text: &str) -> (Figures, Figures) {
    let wanted = [
        "bigbrotr_relay_connects_total",
        "bigbrotr_relay_failures_total",
        "bigbrotr_relay_notices_total",
        "bigbrotr_relay_closed_total",
        "bigbrotr_relay_events_received_total",
        "bigbrotr_verify_signatures_verified_total",
        "bigbrotr_verify_signatures_skipped_total",
        "bigbrotr_dedupe_duplicates_total",
        "bigbrotr_sink_batches_total",
    ];
    let mut sums: Vec<(String, f64)> = wanted.iter().map(|w| (w.to_string(), 0.0)).collect();
    let mut reasons: Vec<(String, f64)> = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, val)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = val.parse::<f64>() else {
            continue;
        };
        let name = key.split('{').next().unwrap_or(key);
        if let Some(e) = sums.iter_mut().find(|(n, _)| n == name) {
            e.1 += v;
        }
        if name == "bigbrotr_relay_events_rejected_total" {
            let reason = key
                .split("reason=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("?")
                .to_string();
            match reasons.iter_mut().find(|(r, _)| *r == reason) {
                Some(e) => e.1 += v,
                None => reasons.push((reason, v)),
            }
        }
    }
    reasons.retain(|(_, v)| *v > 0.0);
    (sums, reasons)
}

/// The last `n` bytes of a log file, for failure messages.
fn tail(path: &Path, n: usize) -> String {
    let s = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(&s[s.len().saturating_sub(n)..]).to_string()
}

/// Panics with the log tail if bigbrotr has exited.
fn assert_running(child: &mut Child, log: &Path, when: &str) {
    if let Some(status) = child.try_wait().expect("try_wait") {
        panic!(
            "bigbrotr exited ({status}) {when}; it must run without restarts\n{}",
            tail(log, 8000)
        );
    }
}

fn sigterm(child: &Child) {
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
}

#[allow(clippy::too_many_arguments)]
fn write_config(
    dir: &Path,
    db: &str,
    seeds: &Path,
    http_port: u16,
    max_parallel: usize,
    dvm_key: &str,
    dvm_relay: &str,
) -> std::path::PathBuf {
    let path = dir.join("soak.toml");
    let text = format!(
        r#"
[database]
url = "{db}"
pool_size = 6

[sync]
allow_local = true
limit = 500
max_parallel = {max_parallel}
max_failures = 5
interval = 5.0
live_checkpoint = 5.0

[sync.timeouts.clearnet]
connect = 5.0
idle = 10.0
relay = 600.0

[pipeline]
verify_threads = 2
pin_cores = false

[batch]
max_age_ms = 200

[seeds]
file = "{seeds}"

[finder]
refresh = 2.0
pause_max = 10.0
backoff = 5.0
backoff_max = 10.0
validate_timeout = 5.0

[monitor]
interval = 15.0
timeout_clearnet = 5.0

[analytics]
interval = 5.0

[http]
listen = "127.0.0.1:{http_port}"

[shutdown]
grace = 5.0

[dvm]
enabled = true
private_key = "{dvm_key}"
relays = ["{dvm_relay}"]
"#,
        seeds = seeds.display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn fmt_mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / MIB)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_run_against_restarting_misbehaving_relays() {
    let s = Settings::from_env();
    let nofile = raise_nofile();
    eprintln!("soak: {s:?}, RLIMIT_NOFILE {nofile}");
    let (pool, db) = test_db().await;
    let dir = tempfile::tempdir().expect("tempdir");

    // Initial stores: a few hundred events per relay, some of them shared by several relays.
    let base_ts = now() - 3 * 86_400;
    let unique = generate(&GenSpec {
        count: s.relays * s.events_per_relay,
        seed: 501,
        authors: 40,
        kinds: vec![1, 7],
        content_len: (10, 300),
        tags_per_event: (0, 3),
        start_ts: base_ts,
        spread_secs: 3 * 86_400 - 60,
    });
    let shared = generate(&GenSpec {
        count: (s.relays * 10).max(200),
        seed: 502,
        authors: 10,
        kinds: vec![1, 7],
        content_len: (10, 300),
        tags_per_event: (0, 3),
        start_ts: base_ts,
        spread_secs: 3 * 86_400 - 60,
    });
    // Invalid copies of events no relay holds: served beside the real ones, never archived.
    let bad: Vec<GenEvent> = generate(&GenSpec {
        count: 4,
        seed: 503,
        kinds: vec![1],
        start_ts: now() - 30,
        spread_secs: 20,
        ..GenSpec::default()
    })
    .iter()
    .enumerate()
    .map(|(i, e)| {
        if i % 2 == 0 {
            with_bad_sig(e)
        } else {
            with_bad_id(e)
        }
    })
    .collect();
    let bad = Arc::new(bad);
    let author = hex::encode(unique[0].pubkey);

    let mut rng = StdRng::seed_from_u64(504);
    let mut port = 10_000 + rng.random_range(0..(32_000 - 10_000 - 2 * s.relays as u16 - 100));
    let mut slots = Vec::with_capacity(s.relays);
    for (i, chunk) in unique.chunks(s.events_per_relay.max(1)).enumerate() {
        if i >= s.relays {
            break;
        }
        let mut events = chunk.to_vec();
        for _ in 0..30 {
            events.push(shared[rng.random_range(0..shared.len())].clone());
        }
        let p = free_port(&mut port);
        let (_, b) = behavior(i, &bad);
        let relay = start_on_retry(p, events.clone(), b).await;
        let url = relay_url(&relay.url()).to_string();
        slots.push(Mutex::new(Slot {
            port: p,
            url,
            events,
            relay: Some(relay),
        }));
    }
    assert_eq!(slots.len(), s.relays, "one slot per relay");
    let slots: Slots = Arc::new(slots);
    let seeds = dir.path().join("seeds.txt");
    let mut list = String::new();
    for slot in slots.iter() {
        list.push_str(&slot.lock().await.url);
        list.push('\n');
    }
    std::fs::write(&seeds, list).expect("write seeds");

    let dvm_relay = Arc::new(
        TestRelay::start(Vec::new(), Behavior::default())
            .await
            .expect("DVM relay"),
    );
    let dvm_key = keypair(0x42);
    let dvm_pk = pk_hex(&dvm_key);
    let http_port = free_port(&mut port);
    let cfg = write_config(
        dir.path(),
        &db,
        &seeds,
        http_port,
        s.max_parallel,
        &hex::encode(dvm_key.secret_key().to_secret_bytes()),
        &dvm_relay.url(),
    );
    let log = dir.path().join("bigbrotr.log");
    let log_file = std::fs::File::create(&log).expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_bigbrotr"))
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .env("BIGBROTR_LOG", "warn")
        .stdout(Stdio::from(log_file.try_clone().expect("log file")))
        .stderr(Stdio::from(log_file))
        .spawn()
        .expect("spawn bigbrotr run");
    let pid = child.id();
    let base = format!("http://127.0.0.1:{http_port}");

    // Up: /health answers.
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let up_by = Instant::now() + Duration::from_secs(60);
    loop {
        assert_running(&mut child, &log, "while starting");
        if let Ok(r) = probe.get(format!("{base}/health")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(
            Instant::now() < up_by,
            "/health did not answer within 60 s\n{}",
            tail(&log, 8000)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let t0 = Instant::now();

    let stop = Arc::new(AtomicBool::new(false));
    let api_stop = Arc::new(AtomicBool::new(false));
    let pub_task = tokio::spawn(publisher(slots.clone(), stop.clone(), s.rate));
    let restart_task = tokio::spawn(restarter(
        slots.clone(),
        stop.clone(),
        s.restart_every,
        s.restarts,
        bad.clone(),
    ));
    let api_task = tokio::spawn(api_load(base.clone(), author, api_stop.clone()));
    let dvm_task = tokio::spawn(dvm_load(dvm_relay.clone(), dvm_pk.clone(), stop.clone()));

    // (seconds since start, RSS bytes, CPU seconds)
    let mut samples: Vec<(u64, u64, f64)> = Vec::new();
    let mut next_sample = s.sample_every;
    while t0.elapsed() < Duration::from_secs(s.secs) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_running(&mut child, &log, "during the soak");
        let t = t0.elapsed().as_secs();
        if t >= next_sample {
            next_sample += s.sample_every;
            let (rss, cpu, threads, fds) = proc_sample(pid).expect("bigbrotr's /proc entry");
            let c = pool.get().await.expect("conn");
            let n: i64 = c
                .query_one("SELECT count(*) FROM events", &[])
                .await
                .expect("count")
                .get(0);
            eprintln!(
                "soak t={t:>5}s rss={} cpu={cpu:.1}s threads={threads} fds={fds} archived={n}",
                fmt_mib(rss)
            );
            samples.push((t, rss, cpu));
        }
    }

    // Quiesce: no more publishing or restarts (in-flight restarts finish first).
    stop.store(true, Relaxed);
    let published = pub_task.await.expect("publisher");
    let restarts = restart_task.await.expect("restarter");
    let dvm_requests = dvm_task.await.expect("DVM load");
    let mut want_ids = BTreeSet::new();
    let mut want_sightings = BTreeSet::new();
    let mut held = 0usize;
    for slot in slots.iter() {
        let slot = slot.lock().await;
        assert!(slot.relay.is_some(), "every relay is up again");
        held += slot.events.len();
        for e in &slot.events {
            let id = hex::encode(e.id);
            want_sightings.insert((id.clone(), slot.url.clone()));
            want_ids.insert(id);
        }
    }
    eprintln!(
        "soak: stopped publishing after {:.0} s: {published} live events published, {} distinct events on {} relays ({held} held), {restarts} relay restarts; waiting for the archive",
        t0.elapsed().as_secs_f64(),
        want_ids.len(),
        s.relays
    );

    // The archive catches up with everything the relays hold.
    let waited = Instant::now();
    let (mut got_ids, mut got_sightings);
    loop {
        assert_running(&mut child, &log, "while catching up");
        got_ids = event_ids(&pool).await;
        got_sightings = sightings(&pool).await;
        if (got_ids == want_ids && got_sightings == want_sightings)
            || waited.elapsed() > Duration::from_secs(s.final_wait)
        {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let catch_up = waited.elapsed();
    if got_ids != want_ids || got_sightings != want_sightings {
        // Which relays are behind: the first few, with their counts.
        let mut behind = Vec::new();
        for slot in slots.iter() {
            let slot = slot.lock().await;
            let missing = slot
                .events
                .iter()
                .filter(|e| !got_sightings.contains(&(hex::encode(e.id), slot.url.clone())))
                .count();
            if missing > 0 {
                behind.push(format!(
                    "{} missing {missing} of {}",
                    slot.url,
                    slot.events.len()
                ));
            }
        }
        eprintln!(
            "soak: {} relays behind after {catch_up:?}: {:?}\n--- bigbrotr log tail ---\n{}",
            behind.len(),
            behind.iter().take(10).collect::<Vec<_>>(),
            tail(&log, 6000)
        );
    }
    assert_same_ids(&got_ids, &want_ids, "archive = union of the relays' events");
    let missing_s = want_sightings.difference(&got_sightings).count();
    let extra_s = got_sightings.difference(&want_sightings).count();
    assert!(
        missing_s == 0 && extra_s == 0,
        "sightings: {} recorded, {} served; {missing_s} missing (e.g. {:?}), {extra_s} unexpected (e.g. {:?})",
        got_sightings.len(),
        want_sightings.len(),
        want_sightings.difference(&got_sightings).next(),
        got_sightings.difference(&want_sightings).next()
    );
    let reverified = reverify_all(&pool).await;
    assert_eq!(reverified, want_ids.len(), "every stored event re-verifies");
    let (rss_end, cpu_end, threads_end, fds_end) =
        proc_sample(pid).expect("bigbrotr's /proc entry");

    // Every DVM job got its result (the relay it publishes to never restarts).
    let mut answers = HashMap::new();
    let dvm_by = Instant::now() + Duration::from_secs(30);
    let mut unanswered = dvm_requests.len();
    while Instant::now() < dvm_by {
        answers = dvm_answers(&dvm_relay.url(), &dvm_pk).await;
        unanswered = dvm_requests
            .iter()
            .filter(|id| !answers.get(*id).is_some_and(|k| k.contains(&6900)))
            .count();
        if unanswered == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    let metrics = probe
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("/metrics body");
    let (counters, rejected) = metrics_digest(&metrics);
    api_stop.store(true, Relaxed);
    let api = api_task.await.expect("API load");
    assert_running(&mut child, &log, "at the end");

    // SIGTERM: exit 0 within 15 s.
    sigterm(&child);
    let term = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if term.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "bigbrotr still running 15 s after SIGTERM\n{}",
                tail(&log, 8000)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let exit_after = term.elapsed();

    // Summary.
    let post: Vec<&(u64, u64, f64)> = samples.iter().filter(|x| x.0 >= s.warmup).collect();
    let first = post.first().map_or(rss_end, |x| x.1);
    let (min, max) = post
        .iter()
        .fold((u64::MAX, 0u64), |(lo, hi), x| (lo.min(x.1), hi.max(x.1)));
    let (min, max) = if post.is_empty() {
        (rss_end, rss_end)
    } else {
        (min, max)
    };
    let spread_lo = (min as f64 / first as f64 - 1.0) * 100.0;
    let spread_hi = (max as f64 / first as f64 - 1.0) * 100.0;
    let log_lines = std::fs::read_to_string(&log)
        .map(|t| t.lines().count())
        .unwrap_or(0);
    eprintln!(
        "\nsoak summary: {} s, {} relays, {} initial events per relay (+30 shared)\n\
         published live: {published}; archived: {} events = relays' union {} (sightings {}), caught up {:.1} s after the last publish\n\
         relay restarts: {restarts}; bigbrotr restarts: 0 (pid {pid} ran throughout), exit {status} {:.1} s after SIGTERM\n\
         RSS after warm-up ({} s, {} samples): first {}, min {}, max {} ({spread_lo:+.1} % / {spread_hi:+.1} %); at the end {}\n\
         CPU: {cpu_end:.1} s user+system ({:.1} % of one core over the run); threads {threads_end}, fds {fds_end}\n\
         API: {} ok, {} shed (503), {} bad, {} transport errors; DVM: {} jobs, {} unanswered\n\
         log lines at warn: {log_lines}\n\
         engine counters (sums over relays): {counters:?}\n\
         rejected by reason: {rejected:?}",
        s.secs,
        s.relays,
        s.events_per_relay,
        got_ids.len(),
        want_ids.len(),
        got_sightings.len(),
        catch_up.as_secs_f64(),
        exit_after.as_secs_f64(),
        s.warmup,
        post.len(),
        fmt_mib(first),
        fmt_mib(min),
        fmt_mib(max),
        fmt_mib(rss_end),
        cpu_end / t0.elapsed().as_secs_f64() * 100.0,
        api.ok,
        api.shed,
        api.bad.len(),
        api.errors.len(),
        dvm_requests.len(),
        unanswered,
    );
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n{}",
        tail(&log, 8000)
    );
    assert!(
        api.bad.is_empty() && api.errors.is_empty(),
        "API failures: {:?} / {:?}",
        api.bad.iter().take(5).collect::<Vec<_>>(),
        api.errors.iter().take(5).collect::<Vec<_>>()
    );
    assert!(api.ok > 0, "the API answered");
    assert!(
        !rejected.is_empty(),
        "the misbehaviours were seen: some input was rejected"
    );
    assert!(
        !dvm_requests.is_empty() && unanswered == 0,
        "DVM: {unanswered} of {} jobs without a result; answers {answers:?}",
        dvm_requests.len()
    );
    assert!(
        max as f64 <= 1.5 * first as f64 + 16.0 * MIB,
        "RSS grew after warm-up: first {}, max {} (samples {:?})",
        fmt_mib(first),
        fmt_mib(max),
        samples
    );
}
