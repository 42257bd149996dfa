//! Shared test harness: a real PostgreSQL (one throwaway cluster shared by every test process,
//! a fresh database per test), configurations tuned for 127.0.0.1, and archive checks that
//! re-verify stored events with an independent implementation (the `nostr` crate).
#![allow(dead_code)]

use bigbrotr::config::{Config, Millis, Seconds, Timeouts};
use bigbrotr::db::Pool;
use bigbrotr_testkit::gen::GenEvent;
use nostr::JsonUtil;
use std::collections::{BTreeMap, BTreeSet};

/// A fresh, migrated database on the shared test cluster.
pub async fn test_db() -> (Pool, String) {
    let pg = bigbrotr_testkit::cluster::shared_for_tests()
        .await
        .expect("test cluster");
    let url = pg.create_database("t").await.expect("create database");
    let pool = bigbrotr::db::connect(&url, 6).await.expect("pool");
    bigbrotr::db::migrate(&pool).await.expect("migrate");
    (pool, url)
}

/// A configuration for local relays with short timeouts.
pub fn config(url: &str) -> Config {
    let mut c = Config::default();
    c.database.url = url.to_string();
    c.database.pool_size = 4;
    c.sync.allow_local = true;
    c.sync.max_failures = 4;
    c.sync.limit = 500;
    c.sync.timeouts.clearnet = Timeouts {
        connect: Seconds::new(3),
        idle: Seconds::new(2),
        relay: Seconds::new(120),
    };
    c.pipeline.verify_threads = 2;
    c.pipeline.pin_cores = false;
    c.batch.max_age_ms = Millis::new(50);
    c
}

/// Writes a configuration file `name` in `dir` for the `bigbrotr` binary: the archive at `db`,
/// local relays, short timeouts, batches committed after `max_age_ms`.
pub fn write_config_file(
    dir: &std::path::Path,
    name: &str,
    db: &str,
    max_age_ms: u64,
) -> std::path::PathBuf {
    let path = dir.join(name);
    let text = format!(
        r#"
[database]
url = "{db}"
pool_size = 4

[sync]
allow_local = true
limit = 500

[sync.timeouts.clearnet]
connect = 3.0
idle = 3.0
relay = 300.0

[pipeline]
verify_threads = 2
pin_cores = false

[batch]
max_rows = 2000
max_age_ms = {max_age_ms}
"#
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// Parses a relay URL allowing local addresses.
pub fn relay_url(s: &str) -> bigbrotr::stages::model::RelayUrl {
    bigbrotr::stages::model::RelayUrl::parse(s, true).expect("relay url")
}

/// Applies and records the migrations below `version` on a fresh database, as an archive
/// made by an older bigbrotr: the next `bigbrotr::db::migrate` applies the rest.
#[allow(dead_code)]
pub async fn migrate_below(c: &tokio_postgres::Client, version: i32) {
    c.batch_execute(
        "CREATE TABLE schema_migrations (
             version INT PRIMARY KEY, name TEXT NOT NULL,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await
    .expect("schema_migrations");
    for (v, name, sql) in bigbrotr::db::migrations().iter().filter(|m| m.0 < version) {
        c.batch_execute(sql).await.expect("old migration");
        c.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[v, name],
        )
        .await
        .expect("record");
    }
}

/// Ids (hex) in `events`.
pub async fn event_ids(pool: &Pool) -> BTreeSet<String> {
    let c = pool.get().await.expect("conn");
    c.query("SELECT encode(id, 'hex') FROM events", &[])
        .await
        .expect("query")
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

/// (event id hex, relay url) rows in `events_relays`.
pub async fn sightings(pool: &Pool) -> BTreeSet<(String, String)> {
    let c = pool.get().await.expect("conn");
    c.query(
        "SELECT encode(event_id, 'hex'), relay_url FROM events_relays",
        &[],
    )
    .await
    .expect("query")
    .iter()
    .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
    .collect()
}

/// Sightings per relay.
pub async fn sightings_by_relay(pool: &Pool) -> BTreeMap<String, i64> {
    let c = pool.get().await.expect("conn");
    c.query(
        "SELECT relay_url, count(*) FROM events_relays GROUP BY relay_url",
        &[],
    )
    .await
    .expect("query")
    .iter()
    .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
    .collect()
}

/// Re-verifies every stored event with the `nostr` crate (id and signature); returns how many.
pub async fn reverify_all(pool: &Pool) -> usize {
    let c = pool.get().await.expect("conn");
    let rows = c
        .query(
            "SELECT encode(id,'hex'), encode(pubkey,'hex'), created_at, kind, tags::text, content, encode(sig,'hex'), raw_canonical FROM events",
            &[],
        )
        .await
        .expect("query");
    for r in &rows {
        let id: String = r.get(0);
        let raw: Option<String> = r.get(7);
        let (tags, content): (serde_json::Value, String) = match raw {
            Some(canonical) => {
                use sha2::Digest;
                let h = hex::encode(sha2::Sha256::digest(canonical.as_bytes()));
                assert_eq!(h, id, "raw_canonical hashes to the id");
                let v: serde_json::Value =
                    serde_json::from_str(&canonical).expect("canonical json");
                (v[4].clone(), v[5].as_str().expect("content").to_string())
            }
            None => (
                serde_json::from_str(&r.get::<_, String>(4)).expect("tags"),
                r.get(5),
            ),
        };
        let json = serde_json::json!({
            "id": id,
            "pubkey": r.get::<_, String>(1),
            "created_at": r.get::<_, i64>(2),
            "kind": r.get::<_, i32>(3),
            "tags": tags,
            "content": content,
            "sig": r.get::<_, String>(6),
        });
        let ev = nostr::Event::from_json(json.to_string()).expect("nostr parses stored event");
        ev.verify()
            .unwrap_or_else(|e| panic!("stored event {id} does not verify: {e}"));
    }
    rows.len()
}

/// Hex ids of generated events.
pub fn ids(events: &[GenEvent]) -> BTreeSet<String> {
    events.iter().map(|e| hex::encode(e.id)).collect()
}

/// A third-party relay (rust-nostr's relay builder) on 127.0.0.1 holding `events`.
pub async fn nostr_relay(events: &[GenEvent]) -> nostr_relay_builder::LocalRelay {
    use nostr_relay_builder::prelude::*;
    let db = MemoryDatabase::with_opts(MemoryDatabaseOptions {
        events: true,
        max_events: None,
    });
    for e in events {
        let ev = Event::from_json(&e.json).expect("nostr parses generated event");
        db.save_event(&ev).await.expect("save");
    }
    // The relay builder picks a free port and binds it later: another test can take the port
    // in between (AddrInUse). A new relay (a new port) is tried then; the database is shared.
    let mut attempt = 0;
    loop {
        let builder = RelayBuilder::default()
            .addr(std::net::IpAddr::from([127, 0, 0, 1]))
            .database(db.clone());
        let relay = LocalRelay::new(builder);
        match relay.run().await {
            Ok(()) => return relay,
            Err(nostr_relay_builder::Error::IO(e))
                if attempt < 20 && e.kind() == std::io::ErrorKind::AddrInUse =>
            {
                attempt += 1
            }
            Err(e) => panic!("the rust-nostr relay does not start: {e:?}"),
        }
    }
}

/// Asserts two id sets are equal, reporting sizes and a few differences (never the whole set).
pub fn assert_same_ids(got: &BTreeSet<String>, want: &BTreeSet<String>, what: &str) {
    if got != want {
        let missing: Vec<&String> = want.difference(got).take(3).collect();
        let extra: Vec<&String> = got.difference(want).take(3).collect();
        panic!(
            "{what}: got {} ids, want {}; {} missing (e.g. {missing:?}), {} unexpected (e.g. {extra:?})",
            got.len(),
            want.len(),
            want.difference(got).count(),
            got.difference(want).count()
        );
    }
}

// ---------------------------------------------------------------------------------------
// A SOCKS5 proxy (no auth, CONNECT by name) that sends every `.onion` name to 127.0.0.1,
// standing in for Tor: only the proxy resolves the names.
// ---------------------------------------------------------------------------------------

/// A running SOCKS5 test proxy.
pub struct Socks {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Every name it was asked to CONNECT to.
    pub names: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Socks {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the proxy on 127.0.0.1.
pub async fn socks_proxy() -> Socks {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let names = Arc::new(Mutex::new(Vec::new()));
    let seen = names.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = listener.accept().await else {
                continue;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut hello = [0u8; 2];
                if c.read_exact(&mut hello).await.is_err() {
                    return;
                }
                let mut methods = vec![0u8; usize::from(hello[1])];
                if c.read_exact(&mut methods).await.is_err() || c.write_all(&[5, 0]).await.is_err()
                {
                    return;
                }
                let mut req = [0u8; 4];
                if c.read_exact(&mut req).await.is_err() || req[1] != 1 || req[3] != 3 {
                    return;
                }
                let mut len = [0u8; 1];
                if c.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut name = vec![0u8; usize::from(len[0])];
                let mut port = [0u8; 2];
                if c.read_exact(&mut name).await.is_err() || c.read_exact(&mut port).await.is_err()
                {
                    return;
                }
                let name = String::from_utf8_lossy(&name).to_string();
                seen.lock().expect("lock").push(name.clone());
                let target = name
                    .ends_with(".onion")
                    .then(|| SocketAddr::from(([127, 0, 0, 1], u16::from_be_bytes(port))));
                let upstream = match target {
                    Some(t) => tokio::net::TcpStream::connect(t).await.ok(),
                    None => None,
                };
                let Some(mut up) = upstream else {
                    // Host unreachable.
                    let _ = c.write_all(&[5, 4, 0, 1, 0, 0, 0, 0, 0, 0]).await;
                    return;
                };
                if c.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut up).await;
                }
            });
        }
    });
    Socks { addr, names, task }
}

/// Spawns `cmd` and waits for it at most `limit`, reading its output meanwhile (so a chatty
/// child never blocks on a full pipe); kills it and fails the test naming `what` when it is still
/// running then. Every child a test starts goes through this: a hung child must fail its test,
/// never hang the suite.
pub fn output_within(
    cmd: &mut std::process::Command,
    limit: std::time::Duration,
    what: &str,
) -> std::process::Output {
    try_output_within(cmd, limit, what).unwrap_or_else(|stderr| hung(what, limit, &stderr))
}

/// [`output_within`], but a child still running after `limit` is killed and its stderr
/// returned as the error, for a caller that may try again.
#[allow(dead_code)]
pub fn try_output_within(
    cmd: &mut std::process::Command,
    limit: std::time::Duration,
    what: &str,
) -> Result<std::process::Output, Vec<u8>> {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: spawn: {e}"));
    try_wait_within(child, limit, what)
}

/// Fails the test for a child still running after `limit`, with its stderr.
fn hung(what: &str, limit: std::time::Duration, stderr: &[u8]) -> ! {
    panic!(
        "{what}: still running after {limit:?}\n{}",
        String::from_utf8_lossy(stderr)
    )
}

/// Reads `pipe` to its end on a thread of its own, so the child never blocks on a full pipe.
fn drain<R: std::io::Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// Waits for a spawned `child` (stdout and stderr piped) at most `limit`; kills it and fails the
/// test naming `what` when it is still running then.
pub fn wait_within(
    child: std::process::Child,
    limit: std::time::Duration,
    what: &str,
) -> std::process::Output {
    try_wait_within(child, limit, what).unwrap_or_else(|stderr| hung(what, limit, &stderr))
}

/// [`wait_within`], but a child still running after `limit` is killed and its stderr
/// returned as the error.
fn try_wait_within(
    mut child: std::process::Child,
    limit: std::time::Duration,
    what: &str,
) -> Result<std::process::Output, Vec<u8>> {
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let start = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(err.join().unwrap_or_default());
            }
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(20)),
            Err(e) => panic!("{what}: wait: {e}"),
        }
    };
    Ok(std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}
