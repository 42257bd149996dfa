//! Crash safety: `kill -9` at arbitrary moments, then a restart, ends with the same archive as
//! an uninterrupted run; at every instant the persisted cursor claims only committed events.
//! SIGTERM drains the pipeline and exits cleanly.

mod common;

use bigbrotr_testkit::gen::{generate, GenEvent, GenSpec};
use bigbrotr_testkit::relay::{Behavior, TestRelay};
use common::*;
use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn spawn_sync(cfg: &std::path::Path, relay: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_bigbrotr"))
        .args(["--config"])
        .arg(cfg)
        .args(["sync", "--once", "--quiet", "--relay", relay])
        .env("BIGBROTR_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bigbrotr")
}

/// The persisted cursor must only cover events that are in the archive.
async fn assert_cursor_honest(pool: &bigbrotr::db::Pool, relay: &str, events: &[GenEvent]) {
    let c = pool.get().await.expect("conn");
    let row = c
        .query_opt(
            "SELECT payload FROM service_state WHERE service_name = 'synchronizer' AND state_key = $1",
            &[&relay],
        )
        .await
        .expect("query");
    let Some(row) = row else { return };
    let st: bigbrotr::stages::model::CursorState =
        serde_json::from_value(row.get::<_, serde_json::Value>(0)).expect("cursor json");
    let archived = event_ids(pool).await;
    let claimed: BTreeSet<String> = events
        .iter()
        .filter(|e| {
            st.synced_until.is_some_and(|s| e.created_at <= s)
                || st
                    .pending
                    .is_some_and(|p| e.created_at > p.until && e.created_at <= p.end)
        })
        .map(|e| hex::encode(e.id))
        .collect();
    let missing = claimed.difference(&archived).count();
    assert_eq!(
        missing,
        0,
        "cursor {st:?} claims {} events but {missing} of them are not archived",
        claimed.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_ends_with_the_same_archive() {
    let events = generate(&GenSpec {
        count: 40_000,
        seed: 11,
        ..GenSpec::default()
    });
    let relay = TestRelay::start(events.clone(), Behavior::default())
        .await
        .expect("relay");
    let url = relay.url();
    let (pool, db) = test_db().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = common::write_config_file(dir.path(), "bigbrotr.toml", &db, 100);

    let mut killed_mid_run = 0;
    for delay_ms in [300u64, 700, 1100, 1600] {
        let mut child = spawn_sync(&cfg, &url);
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        if child.try_wait().expect("wait").is_none() {
            killed_mid_run += 1;
        }
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        assert_cursor_honest(&pool, &url, &events).await;
    }
    let out = common::wait_within(
        spawn_sync(&cfg, &url),
        Duration::from_secs(180),
        "final run",
    );
    assert!(
        out.status.success(),
        "final run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        killed_mid_run >= 2,
        "the runs finished before they could be killed"
    );

    assert_same_ids(
        &event_ids(&pool).await,
        &ids(&events),
        "archive after kills",
    );
    let s = sightings(&pool).await;
    assert_eq!(s.len(), events.len(), "exactly one sighting per event");
    assert!(s.iter().all(|(_, r)| r == &url));
    assert_eq!(reverify_all(&pool).await, events.len());
    assert_cursor_honest(&pool, &url, &events).await;
    let c = pool.get().await.expect("conn");
    let payload: serde_json::Value = c
        .query_one(
            "SELECT payload FROM service_state WHERE service_name = 'synchronizer' AND state_key = $1",
            &[&url],
        )
        .await
        .expect("cursor row")
        .get(0);
    assert!(
        payload["synced_until"].is_i64(),
        "synced to the end: {payload}"
    );
    assert!(
        payload["pending"].is_null(),
        "no walk left pending: {payload}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_cleanly() {
    let events = generate(&GenSpec {
        count: 30_000,
        seed: 12,
        ..GenSpec::default()
    });
    let relay = TestRelay::start(events.clone(), Behavior::default())
        .await
        .expect("relay");
    let url = relay.url();
    let (pool, db) = test_db().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = common::write_config_file(dir.path(), "bigbrotr.toml", &db, 100);

    let child = spawn_sync(&cfg, &url);
    tokio::time::sleep(Duration::from_millis(800)).await;
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let out = common::wait_within(child, Duration::from_secs(60), "sync after SIGTERM");
    assert!(
        out.status.success(),
        "exit after SIGTERM: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_cursor_honest(&pool, &url, &events).await;
    let partial = event_ids(&pool).await.len();

    let out = common::wait_within(spawn_sync(&cfg, &url), Duration::from_secs(180), "resume");
    assert!(out.status.success());
    assert_same_ids(
        &event_ids(&pool).await,
        &ids(&events),
        "archive after resume",
    );
    assert_eq!(sightings(&pool).await.len(), events.len());
    eprintln!(
        "archived {partial} events before SIGTERM, all {} after resume",
        events.len()
    );
}
