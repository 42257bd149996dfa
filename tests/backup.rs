//! Backup and restore with the real binary (pg_dump / pg_restore against the shared test
//! cluster), and the engine's writes through a real PgBouncer in transaction pooling mode.

mod common;

use bigbrotr::backup::{self, RestoreOptions};
use bigbrotr::embedded_pg::EmbeddedPg;
use bigbrotr::sync::{self, SyncOptions};
use bigbrotr_testkit::gen::{generate, GenEvent, GenSpec};
use bigbrotr_testkit::relay::{Behavior, TestRelay};
use common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn bigbrotr(cfg: &Path, args: &[&str]) -> Output {
    output_within(
        Command::new(env!("CARGO_BIN_EXE_bigbrotr"))
            .arg("--config")
            .arg(cfg)
            .args(args)
            .env("BIGBROTR_LOG", "warn")
            .env_remove("BIGBROTR_DATABASE_URL")
            .stdin(Stdio::null()),
        Duration::from_secs(300),
        &format!("bigbrotr {}", args.join(" ")),
    )
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A connection string for a database that does not exist yet, named so that the shared
/// cluster's cleanup drops it once this test process has exited.
fn missing_database_url(pg: &EmbeddedPg, prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "host=127.0.0.1 port={} user=postgres dbname={prefix}_{}_{}_{:08x}",
        pg.port(),
        std::process::id(),
        u32::MAX - (n % 1000),
        n
    )
}

async fn pool(url: &str) -> bigbrotr::db::Pool {
    bigbrotr::db::connect(url, 4).await.expect("pool")
}

/// Every row of a table as text, in a stable order: equal strings mean equal tables.
async fn table_text(pool: &bigbrotr::db::Pool, table: &str, order: &str) -> Vec<String> {
    let c = pool.get().await.expect("conn");
    c.query(
        &format!("SELECT t::text FROM {table} t ORDER BY {order}"),
        &[],
    )
    .await
    .expect("dump table")
    .iter()
    .map(|r| r.get::<_, String>(0))
    .collect()
}

async fn cursor_synced_until(pool: &bigbrotr::db::Pool, relay: &str) -> i64 {
    let c = pool.get().await.expect("conn");
    let payload: serde_json::Value = c
        .query_one(
            "SELECT payload FROM service_state WHERE service_name = 'synchronizer' AND state_key = $1",
            &[&relay],
        )
        .await
        .expect("cursor row")
        .get(0);
    assert!(payload["pending"].is_null(), "no walk pending: {payload}");
    payload["synced_until"]
        .as_i64()
        .unwrap_or_else(|| panic!("synced_until in {payload}"))
}

/// `received N kept M (refetched R` of the report line of `relay`.
fn report_numbers(report: &str, relay: &str) -> (u64, u64, u64) {
    let line = report
        .lines()
        .find(|l| l.trim_start().starts_with(relay))
        .unwrap_or_else(|| panic!("no report line for {relay} in:\n{report}"));
    let num = |key: &str| -> u64 {
        let rest = &line[line
            .find(key)
            .unwrap_or_else(|| panic!("no `{key}` in {line}"))
            + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .find(|s| !s.is_empty())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no number after `{key}` in {line}"))
    };
    (num("received "), num("kept "), num("refetched "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_restore_into_a_fresh_database_and_resume_from_the_restored_cursor() {
    let old = generate(&GenSpec {
        count: 3000,
        seed: 31,
        ..GenSpec::default()
    });
    let relay = TestRelay::start(old.clone(), Behavior::default())
        .await
        .expect("relay");
    let url = relay.url();
    let (src, src_url) = test_db().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let src_cfg = write_config_file(dir.path(), "source.toml", &src_url, 50);

    ok(
        &bigbrotr(&src_cfg, &["sync", "--once", "--quiet", "--relay", &url]),
        "first sync",
    );
    assert_same_ids(&event_ids(&src).await, &ids(&old), "source archive");

    let file = dir.path().join("archive.dump");
    let out = ok(
        &bigbrotr(&src_cfg, &["backup", file.to_str().expect("utf-8 path")]),
        "backup",
    );
    assert!(out.contains("backup written to"), "{out}");
    assert!(
        std::fs::metadata(&file).expect("dump file").len() > 0,
        "dump is not empty"
    );
    assert!(
        !dir.path().join("archive.dump.partial").exists(),
        "no partial file left behind"
    );

    let pg = bigbrotr_testkit::cluster::shared_for_tests()
        .await
        .expect("cluster");
    let fresh_url = pg.create_database("restored").await.expect("fresh db");
    let out = ok(
        &bigbrotr(
            &src_cfg,
            &[
                "restore",
                file.to_str().expect("utf-8 path"),
                "--database-url",
                &fresh_url,
            ],
        ),
        "restore",
    );
    assert!(out.contains(&format!("{} events", old.len())), "{out}");
    assert!(out.contains("1 relay cursors"), "{out}");

    let dst = pool(&fresh_url).await;
    // Events, provenance, cursors and the registry come back exactly, row for row.
    for (table, order) in [
        ("events", "id"),
        ("events_relays", "event_id, relay_url"),
        ("service_state", "service_name, state_key"),
        ("relays", "url"),
        ("schema_migrations", "version"),
    ] {
        let (a, b) = (
            table_text(&src, table, order).await,
            table_text(&dst, table, order).await,
        );
        assert!(!a.is_empty(), "{table} has rows to compare");
        assert!(
            a == b,
            "{table} differs after restore: {} rows vs {}",
            a.len(),
            b.len()
        );
    }
    assert_eq!(reverify_all(&dst).await, old.len());
    let restored_until = cursor_synced_until(&dst, &url).await;
    assert_eq!(restored_until, cursor_synced_until(&src, &url).await);

    // A restore never lands on an archive by accident.
    let again = bigbrotr(
        &src_cfg,
        &[
            "restore",
            file.to_str().expect("utf-8 path"),
            "--database-url",
            &fresh_url,
        ],
    );
    assert!(!again.status.success(), "restore into a non-empty database");
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("is not empty") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(event_ids(&dst).await.len(), old.len(), "target untouched");

    // The relay gets newer events; the engine, now on the restored archive, fetches only those.
    while bigbrotr::stages::model::now_secs() < restored_until + 2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Newer than the restored cursor, not newer than now.
    let spread = (bigbrotr::stages::model::now_secs() - restored_until - 1).max(1);
    let new: Vec<GenEvent> = generate(&GenSpec {
        count: 300,
        seed: 32,
        start_ts: restored_until + 1,
        spread_secs: spread,
        ..GenSpec::default()
    });
    for e in &new {
        relay.publish(e.clone());
    }
    let dst_cfg = write_config_file(dir.path(), "restored.toml", &fresh_url, 50);
    let report = ok(
        &bigbrotr(&dst_cfg, &["sync", "--once", "--quiet", "--relay", &url]),
        "sync on the restored archive",
    );
    let (received, kept, refetched) = report_numbers(&report, &url);
    assert_eq!(kept, new.len() as u64, "{report}");
    // Refetched = the same new events again at a window's boundary second, recognised by id.
    assert_eq!(
        received - refetched,
        new.len() as u64,
        "only the new events are fetched, none of the restored ones: {report}"
    );
    let all: BTreeSet<String> = ids(&old).union(&ids(&new)).cloned().collect();
    assert_same_ids(
        &event_ids(&dst).await,
        &all,
        "restored archive after resume",
    );
    assert_eq!(sightings(&dst).await.len(), all.len());
    assert!(cursor_synced_until(&dst, &url).await > restored_until);
    // The source archive was left alone by all of this.
    assert_same_ids(&event_ids(&src).await, &ids(&old), "source after restore");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_creates_the_database_and_migrates_an_older_dump() {
    let (src, src_url) = test_db().await;
    {
        let c = src.get().await.expect("conn");
        // An archive made before migrations 6 (candidates) and 7 (reader grants); both are
        // idempotent, so later migrations recorded as applied do not get in the way.
        c.batch_execute(
            "DROP TABLE candidates;
             REVOKE ALL ON ALL TABLES IN SCHEMA public FROM bigbrotr_reader;
             DELETE FROM schema_migrations WHERE version IN (6, 7);
             INSERT INTO relays (url, network, inserted_at) VALUES ('wss://relay.example.com', 'clearnet', 1);",
        )
        .await
        .expect("age the archive");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("old.dump");
    let made = backup::backup(&src_url, &file).await.expect("backup");
    assert_eq!(made.file, file);
    assert!(made.bytes > 0);

    let pg = bigbrotr_testkit::cluster::shared_for_tests()
        .await
        .expect("cluster");
    let target = missing_database_url(&pg, "restoremiss");
    let report = backup::restore(&file, &target, &RestoreOptions::default())
        .await
        .expect("restore into a missing database");
    assert!(report.created, "the database was created");
    assert_eq!(report.migrated, vec![6, 7], "older dump brought up to date");
    assert_eq!(report.relays, 1);

    let dst = pool(&target).await;
    let c = dst.get().await.expect("conn");
    let version: i32 = c
        .query_one("SELECT max(version) FROM schema_migrations", &[])
        .await
        .expect("version")
        .get(0);
    assert_eq!(
        version,
        bigbrotr::db::migrations().last().expect("migrations").0
    );
    let candidates: bool = c
        .query_one("SELECT to_regclass('candidates') IS NOT NULL", &[])
        .await
        .expect("regclass")
        .get(0);
    assert!(candidates, "migration 6 ran on the restored archive");
    let readable: bool = c
        .query_one(
            "SELECT has_table_privilege('bigbrotr_reader', 'events', 'SELECT')",
            &[],
        )
        .await
        .expect("privilege")
        .get(0);
    assert!(readable, "the API role can read the restored archive");

    let refused = backup::restore(&file, &target, &RestoreOptions::default())
        .await
        .expect_err("non-empty target");
    assert!(refused.to_string().contains("is not empty"), "{refused:#}");
    let forced = backup::restore(&file, &target, &RestoreOptions { force: true })
        .await
        .expect("--force replaces the contents");
    assert!(!forced.created);
    assert_eq!(forced.relays, 1);

    let missing = backup::restore(
        &dir.path().join("nope.dump"),
        &target,
        &RestoreOptions::default(),
    )
    .await
    .expect_err("missing file");
    assert!(
        missing.to_string().contains("does not exist"),
        "{missing:#}"
    );
}

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

/// (major, minor) of `pgbouncer --version` ("PgBouncer 1.18.0").
fn pgbouncer_version(bin: &Path) -> (u32, u32) {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .expect("pgbouncer --version");
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("unexpected version output {text:?}"));
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// The `[pgbouncer]` settings of docker/pgbouncer.ini, in order.
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

/// A running pgbouncer; killed (by its pid) when dropped.
struct Bouncer {
    child: std::process::Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts pgbouncer with the shipped settings (docker/pgbouncer.ini, docker/userlist.txt)
/// in front of the shared test cluster; only addresses and the server login differ.
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
    let mut ini = String::from("[databases]\n");
    // The shipped userlist's user and password authenticate the client (scram, as shipped);
    // the test cluster trusts its own superuser for the server side.
    ini.push_str(&format!(
        "* = host=127.0.0.1 port={pg_port} user=postgres\n\n[pgbouncer]\n"
    ));
    let mut mode = None;
    for (k, v) in shipped_pgbouncer_settings() {
        match k.as_str() {
            "listen_addr" | "listen_port" | "auth_file" | "logfile" | "pidfile" => continue,
            // Protocol-level prepared statements are tracked from 1.21 on; older versions
            // refuse the key.
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
        // PgBouncer refuses to run as root; it drops to this user itself after reading its
        // files, so the process we start is the one we stop (runuser would leave it behind).
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
async fn the_engine_archives_through_pgbouncer_in_transaction_mode() {
    let pg = bigbrotr_testkit::cluster::shared_for_tests()
        .await
        .expect("cluster");
    let direct_url = pg.create_database("bouncer").await.expect("fresh db");
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

    // Two relays holding overlapping halves: concurrent connectors, shared sightings, two
    // cursors, and the sink's COPY batches, all through the pooler.
    let events = generate(&GenSpec {
        count: 6000,
        seed: 33,
        ..GenSpec::default()
    });
    let (a, b) = (events[..4000].to_vec(), events[2000..].to_vec());
    let ra = TestRelay::start(a.clone(), Behavior::default())
        .await
        .expect("relay a");
    let rb = TestRelay::start(b.clone(), Behavior::default())
        .await
        .expect("relay b");

    let mut cfg = config(&url);
    cfg.batch.max_rows = 500;
    let pooled = bigbrotr::db::connect(&url, cfg.database.pool_size)
        .await
        .expect("connect through pgbouncer");
    let applied = bigbrotr::db::migrate(&pooled)
        .await
        .expect("migrations through pgbouncer");
    assert_eq!(applied.len(), bigbrotr::db::migrations().len());
    bigbrotr::register_relays(&pooled, &[relay_url(&ra.url()), relay_url(&rb.url())])
        .await
        .expect("register relays through pgbouncer");

    let opts = SyncOptions::default();
    let run = sync::sync_once(
        &cfg,
        pooled.clone(),
        vec![relay_url(&ra.url()), relay_url(&rb.url())],
        &opts,
        None,
    );
    // The sink retries a failing batch forever: a broken pooler would hang, not fail.
    let report = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "sync through pgbouncer did not finish; pgbouncer log:\n{}",
                std::fs::read_to_string(&bouncer.log).unwrap_or_default()
            )
        })
        .expect("sync through pgbouncer");
    assert_eq!(
        report.events_inserted,
        events.len() as u64,
        "{}",
        report.render()
    );
    assert_eq!(
        report.sightings_inserted,
        (a.len() + b.len()) as u64,
        "{}",
        report.render()
    );

    // Checked on a direct connection, past the pooler.
    let direct = pool(&direct_url).await;
    assert_same_ids(
        &event_ids(&direct).await,
        &ids(&events),
        "archive via pgbouncer",
    );
    assert_eq!(sightings(&direct).await.len(), a.len() + b.len());
    assert_eq!(reverify_all(&direct).await, events.len());
    for r in [&ra, &rb] {
        let until = cursor_synced_until(&direct, &r.url()).await;
        assert!(
            until > 1_700_000_000,
            "cursor of {} written: {until}",
            r.url()
        );
    }
    // And the cursors read back through the pooler, as the next pass would.
    let cursors = sync::load_cursors(&pooled)
        .await
        .expect("cursors via pgbouncer");
    assert_eq!(cursors.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_without_a_database_url_dumps_the_embedded_cluster() {
    let (src, src_url) = test_db().await;
    bigbrotr::register_relays(&src, &[relay_url("wss://relay.example.org")])
        .await
        .expect("register");
    let dbname = src_url.rsplit("dbname=").next().expect("dbname");
    // The shared test cluster is an embedded cluster like any other: bigbrotr attaches to it
    // (and, not having started it, leaves it running).
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let cluster = std::env::temp_dir().join(format!("bigbrotr-test-pg-{uid}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("embedded.toml");
    std::fs::write(
        &cfg,
        format!(
            "[database]\nurl = \"\"\n\n[embedded]\ndata_dir = \"{}\"\ndb_name = \"{dbname}\"\n",
            cluster.display()
        ),
    )
    .expect("write config");
    let file = dir.path().join("embedded.dump");
    ok(
        &bigbrotr(&cfg, &["backup", file.to_str().expect("utf-8 path")]),
        "backup of the embedded cluster",
    );
    let pg = bigbrotr_testkit::cluster::shared_for_tests()
        .await
        .expect("cluster");
    let target = missing_database_url(&pg, "restoreemb");
    let report = backup::restore(&file, &target, &RestoreOptions::default())
        .await
        .expect("restore");
    assert_eq!(report.relays, 1);
    assert!(
        report.migrated.is_empty(),
        "a current dump needs no migration"
    );
    assert_eq!(
        table_text(&src, "relays", "url").await,
        table_text(&pool(&target).await, "relays", "url").await
    );
}
