//! Several `bigbrotr run` processes on one archive (`engine/fleet.rs`): relay leases, fair
//! share, takeover of a dead or stalled worker's relays, fencing of cursor writes, role
//! failover, and the same through PgBouncer in transaction mode. Real processes, real
//! PostgreSQL, relays on 127.0.0.1 (the test relay and rust-nostr's).

mod common;

use bigbrotr::fleet::{Fleet, RELAY};
use bigbrotr::stages::model::{CursorState, RelayCtx};
use bigbrotr_testkit::gen::{generate, GenEvent, GenSpec};
use bigbrotr_testkit::relay::{Behavior, TestRelay};
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// Lease TTL and heartbeat of the workers in these tests.
const TTL: f64 = 3.0;
const HEARTBEAT: f64 = 0.5;

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// A worker's configuration: local relays, small pages (so a sync lasts long enough to be
/// interrupted), no finder, the monitor only when asked.
fn write_fleet_config(dir: &Path, name: &str, db: &str, monitor: bool) -> PathBuf {
    let path = dir.join(name);
    let text = format!(
        r#"
[database]
url = "{db}"
pool_size = 6

[sync]
allow_local = true
limit = 100

[sync.timeouts.clearnet]
connect = 3.0
idle = 5.0
relay = 300.0

[pipeline]
verify_threads = 1
pin_cores = false

[batch]
max_rows = 2000
max_age_ms = 100

[seeds]
file = "{seeds}"

[finder]
enabled = false

[monitor]
enabled = {monitor}
interval = 3600.0
timeout_clearnet = 3.0

[analytics]
interval = 2.0

[fleet]
lease_ttl_secs = {TTL}
heartbeat_secs = {HEARTBEAT}
"#,
        seeds = dir.join("no-seeds.txt").display(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// A `bigbrotr run` worker, its log in a file (read by the checks, never a pipe that could fill).
struct Worker {
    child: Option<Child>,
    pid: i32,
    log: PathBuf,
    /// When it was killed (unix ms), if it was.
    killed_at: Option<u128>,
}

impl Worker {
    fn spawn(cfg: &Path, log: PathBuf) -> Worker {
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_bigbrotr"))
            .arg("--config")
            .arg(cfg)
            .arg("run")
            .env("BIGBROTR_LOG", "info,tokio_postgres=warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().expect("log fd")))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("spawn bigbrotr run");
        Worker {
            pid: child.id() as i32,
            child: Some(child),
            log,
            killed_at: None,
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid, sig);
        }
    }

    fn kill9(&mut self) {
        self.killed_at = Some(now_ms());
        if let Some(c) = self.child.take() {
            self.signal(libc::SIGKILL);
            let out = wait_within(c, Duration::from_secs(30), "worker after SIGKILL");
            assert!(!out.status.success());
        }
    }

    /// SIGTERM, then waits (bounded) for a clean exit.
    fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            self.signal(libc::SIGTERM);
            let out = wait_within(c, Duration::from_secs(60), "worker after SIGTERM");
            assert!(
                out.status.success(),
                "worker {} exit {:?}:\n{}",
                self.pid,
                out.status,
                self.log_text()
            );
        }
    }

    fn log_text(&self) -> String {
        let raw = std::fs::read_to_string(&self.log).unwrap_or_default();
        strip_ansi(&raw)
    }

    fn assert_running(&mut self, when: &str) {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                panic!(
                    "worker {} exited {when} ({status}):\n{}",
                    self.pid,
                    self.log_text()
                );
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGCONT first: a stopped process does not die of SIGKILL until continued on
            // some systems' accounting, and a test that failed mid-way may leave it stopped.
            self.signal(libc::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|t| t.strip_prefix(name)?.strip_prefix('='))
}

/// The connector intervals a worker's log shows: relay → [(start ms, end ms)]. An interval
/// still open ends when the worker was killed, else never.
fn intervals(w: &Worker) -> BTreeMap<String, Vec<(u128, u128)>> {
    let mut open: BTreeMap<String, u128> = BTreeMap::new();
    let mut out: BTreeMap<String, Vec<(u128, u128)>> = BTreeMap::new();
    for line in w.log_text().lines() {
        let started = line.contains("fleet: connector started");
        let ended = line.contains("fleet: connector ended");
        if !started && !ended {
            continue;
        }
        let (Some(relay), Some(at)) = (field(line, "relay"), field(line, "at_ms")) else {
            continue;
        };
        let at: u128 = at.parse().expect("at_ms");
        if started {
            open.insert(relay.to_string(), at);
        } else if let Some(s) = open.remove(relay) {
            out.entry(relay.to_string()).or_default().push((s, at));
        }
    }
    let end = w.killed_at.unwrap_or(u128::MAX);
    for (relay, s) in open {
        out.entry(relay).or_default().push((s, end));
    }
    out
}

/// No relay was synced by two workers at once, by the workers' own logs; returns how many
/// connector runs were seen.
fn assert_no_overlap(workers: &[&Worker]) -> usize {
    let mut all: BTreeMap<String, Vec<(u128, u128, i32)>> = BTreeMap::new();
    for w in workers {
        for (relay, ivs) in intervals(w) {
            for (s, e) in ivs {
                all.entry(relay.clone()).or_default().push((s, e, w.pid));
            }
        }
    }
    let mut runs = 0;
    for (relay, mut ivs) in all {
        ivs.sort();
        runs += ivs.len();
        for pair in ivs.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert!(
                a.2 == b.2 || a.1 <= b.0,
                "{relay} synced by workers {} ({}..{}) and {} ({}..{}) at once",
                a.2,
                a.0,
                a.1,
                b.2,
                b.0,
                b.1
            );
        }
    }
    runs
}

/// Replays the lease history: a lease is granted only when nobody holds it, taken over only
/// after it expired, released only by its holder. Returns the takeovers.
async fn assert_history_consistent(pool: &bigbrotr::db::Pool) -> usize {
    let c = pool.get().await.expect("conn");
    let rows = c
        .query(
            "SELECT key, event, worker, epoch, prev_worker, prev_epoch,
                    prev_expires_at <= at, id
             FROM fleet_lease_history WHERE kind = 'relay' ORDER BY id",
            &[],
        )
        .await
        .expect("history");
    let mut holder: BTreeMap<String, (String, i64)> = BTreeMap::new();
    let mut takeovers = 0;
    for r in rows {
        let (key, event, worker, epoch): (String, String, String, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let id: i64 = r.get(7);
        match event.as_str() {
            "acquired" => {
                assert!(
                    !holder.contains_key(&key),
                    "history {id}: {key} granted to {worker} while held by {:?}",
                    holder.get(&key)
                );
                holder.insert(key, (worker, epoch));
            }
            "taken" => {
                let prev = (r.get::<_, Option<String>>(4), r.get::<_, Option<i64>>(5));
                let expired: Option<bool> = r.get(6);
                assert_eq!(
                    expired,
                    Some(true),
                    "history {id}: {key} taken before it expired"
                );
                assert_eq!(
                    holder.get(&key).map(|(w, e)| (Some(w.clone()), Some(*e))),
                    Some(prev),
                    "history {id}: takeover of {key} names another grant"
                );
                holder.insert(key, (worker, epoch));
                takeovers += 1;
            }
            "released" => {
                assert_eq!(
                    holder.remove(&key),
                    Some((worker, epoch)),
                    "history {id}: {key} released by a worker that did not hold it"
                );
            }
            other => panic!("unknown history event {other}"),
        }
    }
    takeovers
}

/// Live relay leases by worker pid.
async fn leases_by_pid(pool: &bigbrotr::db::Pool) -> BTreeMap<i32, usize> {
    let c = pool.get().await.expect("conn");
    c.query(
        "SELECT w.pid, count(*)::int8 FROM fleet_leases l JOIN fleet_workers w USING (worker)
         WHERE l.kind = 'relay' AND l.expires_at > now() GROUP BY w.pid",
        &[],
    )
    .await
    .expect("leases")
    .iter()
    .map(|r| (r.get::<_, i32>(0), r.get::<_, i64>(1) as usize))
    .collect()
}

/// The pid of the worker holding `role`, if a live one does.
async fn role_holder(pool: &bigbrotr::db::Pool, role: &str) -> Option<i32> {
    let c = pool.get().await.expect("conn");
    c.query_opt(
        "SELECT w.pid FROM fleet_leases l JOIN fleet_workers w USING (worker)
         WHERE l.kind = 'role' AND l.key = $1 AND l.expires_at > now()",
        &[&role],
    )
    .await
    .expect("role")
    .map(|r| r.get(0))
}

/// Polls `check` every 200 ms until it holds; fails naming `what` after `limit` (a bound
/// against hangs, not a timing assertion).
async fn wait_for<F, Fut>(limit: Duration, what: &str, workers: &mut [&mut Worker], mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return;
        }
        for w in workers.iter_mut() {
            w.assert_running(what);
        }
        if start.elapsed() > limit {
            let logs: Vec<String> = workers
                .iter()
                .map(|w| {
                    let t = w.log_text();
                    let tail = &t[t.len().saturating_sub(3000)..];
                    format!("--- worker {} ---\n{tail}", w.pid)
                })
                .collect();
            panic!("{what}: not within {limit:?}\n{}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Six relays (five test relays, one rust-nostr relay): each has events of its own, and the
/// even ones share a common set. Returns the relays' URLs, the expected sightings and the
/// relays themselves (kept alive by the caller).
struct Six {
    urls: Vec<String>,
    union: BTreeSet<String>,
    sightings: BTreeSet<(String, String)>,
    _test: Vec<TestRelay>,
    _nostr: nostr_relay_builder::LocalRelay,
}

async fn six_relays(per_relay: usize, delay: Duration) -> Six {
    // Regular kinds only: rust-nostr's relay keeps one replaceable event per author, so it
    // would hold fewer events than it was given.
    let kinds = vec![1, 7, 1111];
    let shared = generate(&GenSpec {
        count: per_relay,
        seed: 500,
        kinds: kinds.clone(),
        ..GenSpec::default()
    });
    let mut sets: Vec<Vec<GenEvent>> = Vec::new();
    for i in 0..6u64 {
        let mut own = generate(&GenSpec {
            count: per_relay,
            seed: 600 + i,
            kinds: kinds.clone(),
            ..GenSpec::default()
        });
        if i % 2 == 0 {
            own.extend(shared.iter().cloned());
        }
        sets.push(own);
    }
    let mut test = Vec::new();
    let mut urls = Vec::new();
    for set in &sets[..5] {
        let r = TestRelay::start(
            set.clone(),
            Behavior {
                req_delay: Some(delay),
                ..Behavior::default()
            },
        )
        .await
        .expect("test relay");
        urls.push(relay_url(&r.url()).to_string());
        test.push(r);
    }
    let nostr = nostr_relay(&sets[5]).await;
    urls.push(relay_url(&nostr.url().await.to_string()).to_string());
    let mut union = BTreeSet::new();
    let mut sightings = BTreeSet::new();
    for (set, url) in sets.iter().zip(&urls) {
        for e in set {
            union.insert(hex::encode(e.id));
            sightings.insert((hex::encode(e.id), url.clone()));
        }
    }
    Six {
        urls,
        union,
        sightings,
        _test: test,
        _nostr: nostr,
    }
}

async fn register(pool: &bigbrotr::db::Pool, urls: &[String]) {
    let urls: Vec<_> = urls.iter().map(|u| relay_url(u)).collect();
    bigbrotr::register_relays(pool, &urls)
        .await
        .expect("register relays");
}

async fn archive_is(pool: &bigbrotr::db::Pool, want: &BTreeSet<(String, String)>) -> bool {
    let got = sightings(pool).await;
    if got == *want {
        return true;
    }
    if std::env::var_os("FLEET_TEST_DEBUG").is_some() {
        let mut per: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for (_, u) in want {
            per.entry(u).or_default().0 += 1;
        }
        for (_, u) in got.iter().filter(|s| want.contains(s)) {
            if let Some(e) = per.get_mut(u.as_str()) {
                e.1 += 1;
            }
        }
        let cursors = bigbrotr::sync::load_cursors(pool).await.unwrap_or_default();
        for (u, (w, g)) in per {
            eprintln!("{u}: want {w} got {g} cursor {:?}", cursors.get(u));
        }
        eprintln!("extra sightings: {}", got.difference(want).count());
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_six_relays_and_finish_a_killed_workers_relays() {
    let six = six_relays(2500, Duration::from_millis(150)).await;
    let (pool, db) = test_db().await;
    register(&pool, &six.urls).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_fleet_config(dir.path(), "bigbrotr.toml", &db, false);
    let mut ws: Vec<Worker> = (0..3)
        .map(|i| Worker::spawn(&cfg, dir.path().join(format!("w{i}.log"))))
        .collect();

    // Fair share: 6 relays over 3 workers is 2 each.
    {
        let pool = pool.clone();
        let pids: Vec<i32> = ws.iter().map(|w| w.pid).collect();
        let mut refs: Vec<&mut Worker> = ws.iter_mut().collect();
        wait_for(
            Duration::from_secs(60),
            "2 relays per worker",
            &mut refs,
            || {
                let (pool, pids) = (pool.clone(), pids.clone());
                async move {
                    let l = leases_by_pid(&pool).await;
                    pids.iter().all(|p| l.get(p) == Some(&2))
                }
            },
        )
        .await;
    }
    // `bigbrotr fleet status` shows the same.
    let out = output_within(
        Command::new(env!("CARGO_BIN_EXE_bigbrotr"))
            .arg("--config")
            .arg(&cfg)
            .args(["fleet", "status"])
            .env("BIGBROTR_LOG", "warn"),
        Duration::from_secs(60),
        "bigbrotr fleet status",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with("3 live workers"), "{text}");
    for w in &ws {
        assert!(
            text.lines()
                .any(|l| l.contains(&format!(" {} ", w.pid)) && l.contains(" 2 ")),
            "worker {} with 2 relays in:\n{text}",
            w.pid
        );
    }
    let before = event_ids(&pool).await.len();
    assert!(
        before < six.union.len(),
        "the relays were synced before the kill ({before} of {})",
        six.union.len()
    );

    // kill -9 one worker mid-sync: the two others finish its relays.
    ws[0].kill9();
    {
        let pool = pool.clone();
        let want = six.sightings.clone();
        let (a, b) = ws.split_at_mut(1);
        let _ = a;
        let mut refs: Vec<&mut Worker> = b.iter_mut().collect();
        wait_for(
            Duration::from_secs(240),
            "the archive equals the union of the relays",
            &mut refs,
            || {
                let (pool, want) = (pool.clone(), want.clone());
                async move { archive_is(&pool, &want).await }
            },
        )
        .await;
        let pids: Vec<i32> = b.iter().map(|w| w.pid).collect();
        let mut refs: Vec<&mut Worker> = b.iter_mut().collect();
        wait_for(
            Duration::from_secs(60),
            "3 relays per surviving worker",
            &mut refs,
            || {
                let (pool, pids) = (pool.clone(), pids.clone());
                async move {
                    let l = leases_by_pid(&pool).await;
                    pids.iter().all(|p| l.get(p) == Some(&3))
                }
            },
        )
        .await;
    }
    for w in &mut ws[1..] {
        w.stop();
    }

    assert_same_ids(
        &event_ids(&pool).await,
        &six.union,
        "archive after the kill",
    );
    assert_eq!(
        sightings(&pool).await,
        six.sightings,
        "one sighting per relay copy"
    );
    assert_eq!(reverify_all(&pool).await, six.union.len());
    let refs: Vec<&Worker> = ws.iter().collect();
    let runs = assert_no_overlap(&refs);
    assert!(runs >= 6, "every relay had a connector ({runs} runs)");
    let takeovers = assert_history_consistent(&pool).await;
    // The killed worker's two relays were taken over (after its leases expired), unless its
    // same-machine death was noticed first and its leases dropped (then granted afresh).
    let c = pool.get().await.expect("conn");
    let moved: i64 = c
        .query_one(
            "SELECT count(DISTINCT key) FROM fleet_lease_history
             WHERE kind = 'relay' AND event IN ('acquired', 'taken')
               AND worker <> ALL(SELECT worker FROM fleet_lease_history
                                 WHERE worker LIKE '%-' || $1::text)
               AND key IN (SELECT key FROM fleet_lease_history
                           WHERE worker LIKE '%-' || $1::text)",
            &[&ws[0].pid.to_string()],
        )
        .await
        .expect("moved")
        .get(0);
    assert!(
        moved >= 2,
        "the killed worker's relays went to others ({moved}, {takeovers} takeovers)"
    );
    // Everyone left cleanly but the killed worker: no live lease remains.
    assert!(leases_by_pid(&pool).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_role_moves_to_another_worker_when_its_holder_is_killed() {
    let events = generate(&GenSpec {
        count: 300,
        seed: 700,
        ..GenSpec::default()
    });
    let relay = TestRelay::start(events.clone(), Behavior::default())
        .await
        .expect("relay");
    let (pool, db) = test_db().await;
    register(&pool, &[relay_url(&relay.url()).to_string()]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_fleet_config(dir.path(), "bigbrotr.toml", &db, true);
    let mut ws: Vec<Worker> = (0..2)
        .map(|i| Worker::spawn(&cfg, dir.path().join(format!("w{i}.log"))))
        .collect();

    let holder = {
        let pool = pool.clone();
        let mut refs: Vec<&mut Worker> = ws.iter_mut().collect();
        wait_for(
            Duration::from_secs(60),
            "a worker holds the monitor role",
            &mut refs,
            || {
                let pool = pool.clone();
                async move { role_holder(&pool, "monitor").await.is_some() }
            },
        )
        .await;
        role_holder(&pool, "monitor").await.expect("holder")
    };
    // One role per stage: the analytics refresher runs once too.
    assert!(role_holder(&pool, "analytics").await.is_some());
    let (victim, survivor) = if ws[0].pid == holder { (0, 1) } else { (1, 0) };
    assert_eq!(ws[victim].pid, holder);
    assert!(
        !ws[survivor]
            .log_text()
            .contains("fleet role taken role=\"monitor\""),
        "the monitor ran on one worker only"
    );
    ws[victim].kill9();
    let survivor_pid = ws[survivor].pid;
    {
        let pool = pool.clone();
        let mut refs: Vec<&mut Worker> = vec![&mut ws[survivor]];
        wait_for(
            Duration::from_secs(60),
            "the surviving worker takes the monitor role",
            &mut refs,
            || {
                let pool = pool.clone();
                async move { role_holder(&pool, "monitor").await == Some(survivor_pid) }
            },
        )
        .await;
    }
    // It runs the monitor: its log shows the role taken and a pass over the registry.
    {
        let log = dir.path().join(format!("w{survivor}.log"));
        let mut refs: Vec<&mut Worker> = vec![&mut ws[survivor]];
        wait_for(
            Duration::from_secs(60),
            "the new monitor checks the relay",
            &mut refs,
            || {
                let text = strip_ansi(&std::fs::read_to_string(&log).unwrap_or_default());
                async move {
                    text.contains("fleet role taken role=\"monitor\"")
                        && text.contains("monitor: 1 relays checked")
                }
            },
        )
        .await;
    }
    // The relay's lease may have expired with the role: the survivor archives it after that.
    {
        let pool = pool.clone();
        let want = events.len();
        let mut refs: Vec<&mut Worker> = vec![&mut ws[survivor]];
        wait_for(
            Duration::from_secs(60),
            "the survivor archives the relay",
            &mut refs,
            || {
                let pool = pool.clone();
                async move { event_ids(&pool).await.len() >= want }
            },
        )
        .await;
    }
    ws[survivor].stop();
    assert_same_ids(&event_ids(&pool).await, &ids(&events), "archive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_lease_holder_cannot_move_the_cursor() {
    let (pool, db) = test_db().await;
    let url = relay_url("ws://127.0.0.1:9");
    register(&pool, &[url.to_string()]).await;
    let mut cfg = config(&db);
    cfg.fleet.lease_ttl_secs = bigbrotr::config::Seconds::new(30);
    cfg.fleet.heartbeat_secs = bigbrotr::config::Seconds::new(10);
    let a = Fleet::new(&cfg, pool.clone(), true);
    let b = Fleet::new(&cfg, pool.clone(), true);
    assert_ne!(a.worker, b.worker);
    a.beat().await.expect("a joins");
    b.beat().await.expect("b joins");
    let key = vec![url.to_string()];
    let (_, ea) = a.acquire(RELAY, &key, 1).await.expect("a takes")[0].clone();
    assert!(
        b.acquire(RELAY, &key, 1).await.expect("b tries").is_empty(),
        "a live lease is not granted twice"
    );

    let ctx_a = RelayCtx::new(url.clone(), CursorState::default());
    ctx_a.fence.store(ea, Relaxed);
    let c = pool.get().await.expect("conn");
    let st = |until: i64| CursorState {
        synced_until: Some(until),
        ..CursorState::default()
    };
    assert!(bigbrotr::stages::sink::write_cursor(&c, &ctx_a, &st(100))
        .await
        .expect("write"));

    // a stalls: its lease expires and b takes the relay over.
    c.execute(
        "UPDATE fleet_leases SET expires_at = now() - interval '1 second' WHERE key = $1",
        &[&url.to_string()],
    )
    .await
    .expect("expire");
    let (_, eb) = b.acquire(RELAY, &key, 1).await.expect("b takes")[0].clone();
    assert!(eb > ea);
    let ctx_b = RelayCtx::new(url.clone(), CursorState::default());
    ctx_b.fence.store(eb, Relaxed);
    assert!(bigbrotr::stages::sink::write_cursor(&c, &ctx_b, &st(200))
        .await
        .expect("write"));
    // a wakes up with an older position: fenced, nothing written.
    assert!(!bigbrotr::stages::sink::write_cursor(&c, &ctx_a, &st(150))
        .await
        .expect("write"));
    // a's renewal shows the lease is gone; its release of the old grant removes nothing.
    assert!(a.renew(RELAY).await.expect("renew").is_empty());
    a.release(RELAY, &url.to_string(), ea)
        .await
        .expect("release");
    let cursors = bigbrotr::sync::load_cursors(&pool).await.expect("cursors");
    assert_eq!(cursors[url.as_str()].synced_until, Some(200));
    assert_eq!(b.renew(RELAY).await.expect("renew")[url.as_str()], eb);
    // A relay without any cursor row yet is not created by a stale writer either.
    let other = relay_url("ws://127.0.0.1:10");
    let ctx = RelayCtx::new(other.clone(), CursorState::default());
    ctx.fence.store(ea, Relaxed);
    assert!(!bigbrotr::stages::sink::write_cursor(&c, &ctx, &st(1))
        .await
        .expect("write"));
    assert!(!bigbrotr::sync::load_cursors(&pool)
        .await
        .expect("cursors")
        .contains_key(other.as_str()));
    assert_eq!(assert_history_consistent(&pool).await, 1);
    a.leave().await.expect("leave");
    b.leave().await.expect("leave");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_worker_loses_its_relays_and_cannot_move_their_cursors() {
    let six = six_relays(2000, Duration::from_millis(150)).await;
    let urls = &six.urls[..4];
    let want: BTreeSet<(String, String)> = six
        .sightings
        .iter()
        .filter(|(_, u)| urls.contains(u))
        .cloned()
        .collect();
    let (pool, db) = test_db().await;
    register(&pool, urls).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_fleet_config(dir.path(), "bigbrotr.toml", &db, false);
    let mut ws: Vec<Worker> = (0..2)
        .map(|i| Worker::spawn(&cfg, dir.path().join(format!("w{i}.log"))))
        .collect();
    {
        let pool = pool.clone();
        let pids: Vec<i32> = ws.iter().map(|w| w.pid).collect();
        let mut refs: Vec<&mut Worker> = ws.iter_mut().collect();
        wait_for(
            Duration::from_secs(60),
            "2 relays per worker",
            &mut refs,
            || {
                let (pool, pids) = (pool.clone(), pids.clone());
                async move {
                    let l = leases_by_pid(&pool).await;
                    pids.iter().all(|p| l.get(p) == Some(&2))
                }
            },
        )
        .await;
    }
    // Freeze worker 0 mid-sync: no heartbeat, its leases expire, worker 1 takes them.
    ws[0].signal(libc::SIGSTOP);
    let stalled_pid = ws[0].pid;
    let other_pid = ws[1].pid;
    {
        let pool = pool.clone();
        let mut refs: Vec<&mut Worker> = vec![&mut ws[1]];
        wait_for(
            Duration::from_secs(60),
            "the live worker takes every relay",
            &mut refs,
            || {
                let pool = pool.clone();
                async move { leases_by_pid(&pool).await.get(&other_pid) == Some(&4) }
            },
        )
        .await;
        let want = want.clone();
        let pool2 = pool.clone();
        let mut refs: Vec<&mut Worker> = vec![&mut ws[1]];
        wait_for(
            Duration::from_secs(240),
            "the archive equals the union",
            &mut refs,
            || {
                let (pool, want) = (pool2.clone(), want.clone());
                async move { archive_is(&pool, &want).await }
            },
        )
        .await;
    }
    let cursors_before = bigbrotr::sync::load_cursors(&pool).await.expect("cursors");
    // Wake it: it finds its leases gone, stops those connectors, and its cursor writes (the
    // windows it had in flight) are refused.
    ws[0].signal(libc::SIGCONT);
    {
        let mut refs: Vec<&mut Worker> = ws.iter_mut().collect();
        wait_for(
            Duration::from_secs(60),
            "the stalled worker notices",
            &mut refs,
            || {
                let log = std::fs::read_to_string(dir.path().join("w0.log")).unwrap_or_default();
                async move { strip_ansi(&log).matches("relay lease lost").count() >= 2 }
            },
        )
        .await;
    }
    // A few heartbeats for anything it still had to write.
    tokio::time::sleep(Duration::from_secs_f64(HEARTBEAT * 6.0)).await;
    let cursors_after = bigbrotr::sync::load_cursors(&pool).await.expect("cursors");
    for (relay, before) in &cursors_before {
        let after = cursors_after[relay];
        assert!(
            after.synced_until >= before.synced_until,
            "{relay}: the cursor went back from {before:?} to {after:?}"
        );
    }
    // The fair share comes back: two each again.
    {
        let pool = pool.clone();
        let mut refs: Vec<&mut Worker> = ws.iter_mut().collect();
        wait_for(
            Duration::from_secs(60),
            "2 relays per worker again",
            &mut refs,
            || {
                let pool = pool.clone();
                async move {
                    let l = leases_by_pid(&pool).await;
                    l.get(&stalled_pid) == Some(&2) && l.get(&other_pid) == Some(&2)
                }
            },
        )
        .await;
    }
    for w in &mut ws {
        w.stop();
    }
    assert_eq!(sightings(&pool).await, want, "archive exact");
    assert!(
        assert_history_consistent(&pool).await >= 2,
        "the stalled worker's leases were taken over"
    );
    let refs: Vec<&Worker> = ws.iter().collect();
    // The stalled worker's connectors ran until it noticed; the other worker's runs never
    // overlap each other, and the stalled one's cursor writes were fenced (checked above).
    let _ = refs;
    let log = ws[0].log_text();
    assert!(log.contains("relay lease lost"), "{log}");
    eprintln!(
        "stalled worker: {} cursor writes fenced after it woke up",
        log.matches("cursor not written").count()
    );
}

// --- PgBouncer in transaction mode (as tests/backup.rs starts it) ---

/// `pgbouncer` from PATH or Debian's /usr/sbin.
fn pgbouncer_bin() -> PathBuf {
    let from_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("pgbouncer"))
            .find(|p| p.is_file())
    });
    from_path
        .or_else(|| Some(PathBuf::from("/usr/sbin/pgbouncer")).filter(|p| p.is_file()))
        .expect(
            "pgbouncer is not installed: scripts/test (ensure-postgres --tests) installs it as root \
             (apt-get install pgbouncer)",
        )
}

fn pgbouncer_version(bin: &Path) -> (u32, u32) {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .expect("pgbouncer --version");
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.split_whitespace().nth(1).unwrap_or("0.0");
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn shipped_pgbouncer_settings() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/pgbouncer.ini"))
            .expect("docker/pgbouncer.ini");
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        if section == "pgbouncer" {
            let (k, v) = line.split_once('=').expect("key = value");
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

struct Bouncer {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_pgbouncer(dir: &Path, pg_port: u16) -> Bouncer {
    use std::os::unix::fs::PermissionsExt;
    let bin = pgbouncer_bin();
    let version = pgbouncer_version(&bin);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let userlist = dir.join("userlist.txt");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/docker/userlist.txt"),
        &userlist,
    )
    .expect("copy userlist");
    let mut ini =
        format!("[databases]\n* = host=127.0.0.1 port={pg_port} user=postgres\n\n[pgbouncer]\n");
    let mut mode = None;
    for (k, v) in shipped_pgbouncer_settings() {
        match k.as_str() {
            "listen_addr" | "listen_port" | "auth_file" | "logfile" | "pidfile" => continue,
            "max_prepared_statements" if version < (1, 21) => continue,
            "pool_mode" => mode = Some(v.clone()),
            _ => {}
        }
        ini.push_str(&format!("{k} = {v}\n"));
    }
    assert_eq!(mode.as_deref(), Some("transaction"), "shipped pool_mode");
    ini.push_str(&format!(
        "listen_addr = 127.0.0.1\nlisten_port = {port}\nauth_file = {}\nunix_socket_dir =\n",
        userlist.display()
    ));
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        ini.push_str("user = postgres\n");
    }
    let ini_path = dir.join("pgbouncer.ini");
    std::fs::write(&ini_path, ini).expect("write ini");
    for p in [dir, &userlist, &ini_path] {
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let log = dir.join("pgbouncer.log");
    let log_file = std::fs::File::create(&log).expect("log file");
    let child = Command::new(&bin)
        .arg(&ini_path)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log fd"))
        .stderr(log_file)
        .spawn()
        .expect("spawn pgbouncer");
    let mut bouncer = Bouncer { child, port, log };
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return bouncer;
        }
        if let Some(status) = bouncer.child.try_wait().expect("wait") {
            panic!(
                "pgbouncer exited ({status}):\n{}",
                std::fs::read_to_string(&bouncer.log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "pgbouncer did not listen on {port}:\n{}",
        std::fs::read_to_string(&bouncer.log).unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_through_pgbouncer_in_transaction_mode() {
    let six = six_relays(1500, Duration::from_millis(50)).await;
    let pg = bigbrotr_testkit::cluster::shared_for_tests()
        .await
        .expect("cluster");
    let direct_url = pg.create_database("fleetbouncer").await.expect("fresh db");
    let dbname = direct_url
        .rsplit("dbname=")
        .next()
        .expect("dbname")
        .to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let bouncer = start_pgbouncer(dir.path(), pg.port()).await;
    let url = format!(
        "host=127.0.0.1 port={} user=bigbrotr password=bigbrotr dbname={dbname}",
        bouncer.port
    );
    let pool = bigbrotr::db::connect(&direct_url, 4)
        .await
        .expect("direct pool");
    bigbrotr::db::migrate(&pool).await.expect("migrate");
    register(&pool, &six.urls).await;
    let cfg = write_fleet_config(dir.path(), "bigbrotr.toml", &url, false);
    let mut ws: Vec<Worker> = (0..2)
        .map(|i| Worker::spawn(&cfg, dir.path().join(format!("w{i}.log"))))
        .collect();
    {
        let pool = pool.clone();
        let pids: Vec<i32> = ws.iter().map(|w| w.pid).collect();
        let want = six.sightings.clone();
        let mut refs: Vec<&mut Worker> = ws.iter_mut().collect();
        wait_for(
            Duration::from_secs(240),
            "both workers share the relays and the archive is complete",
            &mut refs,
            || {
                let (pool, pids, want) = (pool.clone(), pids.clone(), want.clone());
                async move {
                    let l = leases_by_pid(&pool).await;
                    pids.iter().all(|p| l.get(p) == Some(&3)) && archive_is(&pool, &want).await
                }
            },
        )
        .await;
    }
    for w in &mut ws {
        w.stop();
    }
    assert_same_ids(
        &event_ids(&pool).await,
        &six.union,
        "archive through pgbouncer",
    );
    assert_eq!(sightings(&pool).await, six.sightings);
    let refs: Vec<&Worker> = ws.iter().collect();
    assert_no_overlap(&refs);
    assert_history_consistent(&pool).await;
    let cursors = bigbrotr::sync::load_cursors(&pool).await.expect("cursors");
    assert_eq!(
        cursors.len(),
        6,
        "every relay's cursor was written through the pooler"
    );
    drop(bouncer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_name_held_by_a_live_process_is_refused() {
    let (pool, db) = test_db().await;
    let mut cfg = config(&db);
    cfg.fleet.worker = "archiver".into();
    let f = Fleet::new(&cfg, pool.clone(), true);
    let c = pool.get().await.expect("conn");
    // A live worker of that name on another machine.
    c.execute(
        "INSERT INTO fleet_workers (worker, host, boot, pid, registry, expires_at)
         VALUES ($1, 'elsewhere', 'other-boot', 1, true, now() + interval '1 minute')",
        &[&f.worker],
    )
    .await
    .expect("insert");
    let e = f.beat().await.expect_err("the name is taken").to_string();
    assert!(e.contains("in use") && e.contains("fleet.worker"), "{e}");
    // Once it has expired, the name is free again.
    c.execute(
        "UPDATE fleet_workers SET expires_at = now() - interval '1 second' WHERE worker = $1",
        &[&f.worker],
    )
    .await
    .expect("expire");
    assert_eq!(f.beat().await.expect("joins"), 1);
    f.leave().await.expect("leave");
}
