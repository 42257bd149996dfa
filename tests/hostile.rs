//! Hostile relays against the real binary: a frame that would overflow a recursive parser, a
//! relay that never lets a request finish, one that pings without end, one that stops reading,
//! and events published while a long-running sync hands over from backfill to live. The engine
//! must neither crash nor hang nor lose an event, and archive the valid events beside them.

mod common;

use bigbrotr_testkit::gen::{generate, GenEvent, GenSpec};
use bigbrotr_testkit::relay::{Behavior, TestRelay};
use common::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bigbrotr(cfg: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bigbrotr"));
    c.arg("--config")
        .arg(cfg)
        .args(args)
        .env("BIGBROTR_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn sigterm(child: &Child) {
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
}

fn spec(count: usize, seed: u64) -> GenSpec {
    GenSpec {
        count,
        seed,
        kinds: vec![1, 7],
        ..GenSpec::default()
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A relay that answers every REQ with a 100,000-level array before its 1,500 events: the sync
/// pass and a finder pass that validates the relay both finish with exit 0, the events are all
/// archived, and the frames are counted as `too_deep`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_nested_100000_deep_is_counted_and_never_crashes() {
    let events = generate(&spec(1500, 901));
    let relay = TestRelay::start(
        events.clone(),
        Behavior {
            deep_frame: Some(100_000),
            ..Default::default()
        },
    )
    .await
    .expect("relay");
    let (pool, db) = test_db().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config_file(dir.path(), "bigbrotr.toml", &db, 50);

    let child = bigbrotr(&cfg, &["sync", "--once", "--relay", &relay.url()])
        .spawn()
        .expect("spawn");
    let out = wait_within(child, Duration::from_secs(120), "sync --once");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sync exit {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("too_deep"),
        "report names the rejection:\n{stdout}"
    );
    assert_same_ids(&event_ids(&pool).await, &ids(&events), "archive");

    // The finder validates the relay with its own reader: the deep frame comes first there.
    let seeds = dir.path().join("seeds.txt");
    std::fs::write(&seeds, format!("{}\n", relay.url())).expect("seeds");
    let cfg2 = dir.path().join("finder.toml");
    let text = std::fs::read_to_string(&cfg).expect("read cfg")
        + &format!("\n[seeds]\nfile = \"{}\"\n", seeds.display());
    std::fs::write(&cfg2, text).expect("write cfg");
    let child = bigbrotr(&cfg2, &["finder", "--once"])
        .spawn()
        .expect("spawn");
    let out = wait_within(child, Duration::from_secs(120), "finder --once");
    assert!(
        out.status.success(),
        "finder exit {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    relay.stop().await;
}

/// Four relays that never let a request finish — one streams events newer than `until` without
/// end, one pings every 200 ms and answers nothing, one floods pings, one stops reading after
/// the first REQ — beside a compliant relay with 2,000 events: `sync --once` with `relay = 6`
/// and `idle = 2` ends on its own, gives each hostile relay up, and archives every event of the
/// good one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_ends_within_its_deadlines_whatever_the_relays_send() {
    let events = generate(&spec(2000, 902));
    let good = TestRelay::start(events.clone(), Behavior::default())
        .await
        .expect("good relay");
    let hostile = [
        Behavior {
            flood_newer: true,
            ..Default::default()
        },
        Behavior {
            ping_every: Some(Duration::from_millis(200)),
            hang_after: Some(0),
            ..Default::default()
        },
        Behavior {
            ping_every: Some(Duration::from_millis(1)),
            hang_after: Some(0),
            ..Default::default()
        },
        Behavior {
            stop_reading: true,
            ..Default::default()
        },
    ];
    let mut relays = Vec::new();
    for b in hostile {
        relays.push(
            TestRelay::start(generate(&spec(300, 903)), b)
                .await
                .expect("hostile relay"),
        );
    }
    let (pool, db) = test_db().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config_file(dir.path(), "bigbrotr.toml", &db, 50);
    let text = std::fs::read_to_string(&cfg)
        .expect("read")
        .replace("idle = 3.0\nrelay = 300.0", "idle = 2.0\nrelay = 6.0");
    std::fs::write(&cfg, text).expect("write");

    let mut args = vec!["sync".to_string(), "--once".to_string()];
    for r in relays.iter().chain(std::iter::once(&good)) {
        args.push("--relay".into());
        args.push(r.url());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let child = bigbrotr(&cfg, &args).spawn().expect("spawn");
    // Generous: the deadlines are 6 s a relay; a hang is what fails.
    let out = wait_within(child, Duration::from_secs(90), "sync --once");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("pass took {:?}\n{stdout}", started.elapsed());
    assert!(out.status.success(), "exit {:?}", out.status);
    assert_same_ids(
        &event_ids(&pool).await,
        &ids(&events),
        "good relay archived",
    );
    for r in &relays {
        let line = stdout
            .lines()
            .find(|l| l.contains(&format!("127.0.0.1:{}", r.port())))
            .unwrap_or_else(|| panic!("no report line for {}", r.url()));
        assert!(line.contains("gave up"), "hostile relay given up: {line}");
    }
    for r in relays {
        r.stop().await;
    }
    good.stop().await;
}

/// A long-running `sync` against a relay that never reads after its first REQ: SIGTERM ends
/// the process promptly (the close handshake is bounded) with exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_prompt_when_a_relay_stops_reading() {
    let stuck = TestRelay::start(
        generate(&spec(10, 904)),
        Behavior {
            stop_reading: true,
            ..Default::default()
        },
    )
    .await
    .expect("relay");
    let (_pool, db) = test_db().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config_file(dir.path(), "bigbrotr.toml", &db, 50);
    let child = bigbrotr(&cfg, &["sync", "--relay", &stuck.url()])
        .spawn()
        .expect("spawn");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sigterm(&child);
    let out = wait_within(child, Duration::from_secs(20), "sync after SIGTERM");
    assert!(
        out.status.success(),
        "exit {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stuck.stop().await;
}

/// Publishes events dated "now" (and a fifth of them dated 10 s ago, as if they reached the
/// relay late) for 8 s while a long-running `sync` starts, backfills 3,000 older events and
/// hands over to its live subscription: after SIGTERM the archive holds every event the relay
/// holds, and the persisted cursor claims none it lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backfill_to_live_handoff_loses_nothing() {
    let base = generate(&spec(3000, 905));
    let relay = TestRelay::start(base.clone(), Behavior::default())
        .await
        .expect("relay");
    let (pool, db) = test_db().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config_file(dir.path(), "bigbrotr.toml", &db, 50);

    let mut published: Vec<GenEvent> = Vec::new();
    let publish_tick = |i: u64, published: &mut Vec<GenEvent>| {
        let t = now();
        for (k, start) in [(0u64, t), (1, t - 10)] {
            let evs = generate(&GenSpec {
                count: if k == 0 { 16 } else { 4 },
                seed: 10_000 + i * 2 + k,
                authors: 3,
                kinds: vec![1],
                content_len: (10, 40),
                tags_per_event: (0, 1),
                start_ts: start,
                spread_secs: 1,
            });
            for e in evs {
                relay.publish(e.clone());
                published.push(e);
            }
        }
    };
    // Publishing starts before the process and goes on through its backfill and hand-off.
    let mut tick = 0u64;
    for _ in 0..5 {
        publish_tick(tick, &mut published);
        tick += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let child = bigbrotr(&cfg, &["sync", "--relay", &relay.url()])
        .spawn()
        .expect("spawn");
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        publish_tick(tick, &mut published);
        tick += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the live subscription deliver and the sink commit.
    let want: std::collections::BTreeSet<String> = ids(&base)
        .into_iter()
        .chain(published.iter().map(|e| hex::encode(e.id)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while event_ids(&pool).await.len() < want.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sigterm(&child);
    let out = wait_within(child, Duration::from_secs(30), "sync after SIGTERM");
    assert!(
        out.status.success(),
        "exit {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "{} events backfilled, {} published during the hand-off",
        base.len(),
        published.len()
    );
    assert_same_ids(&event_ids(&pool).await, &want, "archive after the hand-off");

    // The cursor claims nothing the archive lacks.
    let c = pool.get().await.expect("conn");
    let row = c
        .query_one(
            "SELECT payload FROM service_state WHERE service_name = 'synchronizer' AND state_key = $1",
            &[&relay_url(&relay.url()).as_str()],
        )
        .await
        .expect("cursor");
    let st: bigbrotr::stages::model::CursorState =
        serde_json::from_value(row.get::<_, serde_json::Value>(0)).expect("cursor json");
    let claimed_max = st.synced_until.expect("a cursor");
    assert!(
        claimed_max <= now() - 60 + 1,
        "a live cursor stays sync.live_lag behind now: {st:?}"
    );
    relay.stop().await;
}

/// A TCP forwarder to PostgreSQL that can be frozen: once frozen it forwards nothing more in
/// either direction and accepts connections it never serves — a database that stops
/// answering without closing anything, the hardest case for a shutdown.
struct FreezableProxy {
    port: u16,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FreezableProxy {
    async fn start(target_port: u16) -> FreezableProxy {
        use std::sync::atomic::Ordering::Relaxed;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (f, c) = (frozen.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (f, c) = (f.clone(), c.clone());
                tokio::spawn(async move {
                    let Ok(server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await
                    else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    type Flag = std::sync::Arc<std::sync::atomic::AtomicBool>;
                    let pump = |f: Flag, c: Flag| {
                        move |mut r: tokio::net::tcp::OwnedReadHalf,
                              mut w: tokio::net::tcp::OwnedWriteHalf| async move {
                            let mut buf = vec![0u8; 16 << 10];
                            loop {
                                let n = match r.read(&mut buf).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => n,
                                };
                                while f.load(Relaxed) {
                                    if c.load(Relaxed) {
                                        // Dropping both halves closes both sockets.
                                        return;
                                    }
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                }
                                if w.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    };
                    tokio::join!(pump(f.clone(), c.clone())(cr, sw), pump(f, c)(sr, cw));
                });
            }
        });
        FreezableProxy { port, frozen, cut }
    }

    fn freeze(&self) {
        self.frozen
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Closes every frozen connection, as the end of a network partition or a TCP timeout
    /// would: PostgreSQL then rolls back the transactions the dead client left open. Until
    /// then they hold their uncommitted rows, and a resumed sync inserting the same events
    /// would wait on them.
    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// SIGTERM while the database has stopped answering mid-sync, with batches in flight: the
/// process exits within `shutdown.grace` (2 s here; the test allows 20 s), and after the
/// database answers again a second run completes the archive: the cursor claimed nothing that
/// was not committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_within_the_grace_while_the_database_hangs() {
    let events = generate(&spec(40_000, 906));
    let relay = TestRelay::start(events.clone(), Behavior::default())
        .await
        .expect("relay");
    let (pool, db) = test_db().await;
    let port: u16 = db
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("port="))
        .and_then(|p| p.parse().ok())
        .expect("port in the test database URL");
    let proxy = FreezableProxy::start(port).await;
    let proxied = db.replace(&format!("port={port}"), &format!("port={}", proxy.port));
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config_file(dir.path(), "bigbrotr.toml", &proxied, 50);
    let text = std::fs::read_to_string(&cfg).expect("read") + "\n[shutdown]\ngrace = 2.0\n";
    std::fs::write(&cfg, text).expect("write");

    let child = bigbrotr(&cfg, &["sync", "--relay", &relay.url()])
        .spawn()
        .expect("spawn");
    // Wait until some events are committed, then cut the database off mid-stream.
    let deadline = Instant::now() + Duration::from_secs(60);
    while event_ids(&pool).await.len() < 2_000 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.freeze();
    tokio::time::sleep(Duration::from_millis(500)).await;
    sigterm(&child);
    let stopped = Instant::now();
    let out = wait_within(child, Duration::from_secs(20), "sync after SIGTERM");
    eprintln!("exited {:?} after SIGTERM", stopped.elapsed());
    assert!(
        out.status.success(),
        "exit {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let partial = event_ids(&pool).await.len();
    proxy.cut();
    // Direct to the database now: the rest is fetched, nothing is missing.
    let cfg2 = write_config_file(dir.path(), "direct.toml", &db, 50);
    let out = output_within(
        &mut bigbrotr(&cfg2, &["sync", "--once", "--relay", &relay.url()]),
        Duration::from_secs(180),
        "resume after the database returns",
    );
    assert!(out.status.success(), "resume: {:?}", out.status);
    assert_same_ids(
        &event_ids(&pool).await,
        &ids(&events),
        "archive after resume",
    );
    eprintln!(
        "{partial} events committed before the freeze, all {} after resume",
        events.len()
    );
    relay.stop().await;
}
