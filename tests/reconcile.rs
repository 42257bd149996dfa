//! Completeness (NIP-77 reconciliation): the archive holds what each relay holds, including
//! events a relay received after we walked past their created_at, and a relay holding events
//! already archived from another relay costs sightings, not downloads.

mod common;

use bigbrotr::sync::{sync_once, SyncOptions, SyncReport};
use bigbrotr_testkit::gen::{generate, GenEvent, GenSpec};
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// Regular kinds only (a third-party relay keeps one replaceable event per author), dated
/// within the last 60 days and at least 2 days ago: well inside what a pass claims.
fn spec(count: usize, seed: u64) -> GenSpec {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    GenSpec {
        count,
        seed,
        kinds: vec![1, 7, 1111],
        start_ts: now - 60 * 86_400,
        spread_secs: 58 * 86_400,
        ..GenSpec::default()
    }
}

/// Publishes `events` to a relay as a client would (EVENT, wait for each OK).
async fn publish(url: &str, events: &[GenEvent]) {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect to publish");
    for e in events {
        ws.send(Message::text(format!("[\"EVENT\",{}]", e.json)))
            .await
            .expect("send EVENT");
    }
    let mut ok = 0;
    while ok < events.len() {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .expect("OK within 10 s")
            .expect("socket open")
            .expect("frame");
        if let Message::Text(t) = msg {
            let v: serde_json::Value = serde_json::from_str(&t).expect("json");
            if v[0] == "OK" {
                assert_eq!(v[2], true, "relay accepted the event: {t}");
                ok += 1;
            }
        }
    }
    let _ = ws.close(None).await;
}

async fn pass(
    pool: &bigbrotr::db::Pool,
    cfg: &bigbrotr::config::Config,
    urls: &[String],
) -> SyncReport {
    let report = sync_once(
        cfg,
        pool.clone(),
        urls.iter().map(|u| relay_url(u)).collect(),
        &SyncOptions::default(),
        None,
    )
    .await
    .expect("sync");
    print!("{}", report.render());
    report
}

/// A relay (rust-nostr's, which answers NIP-77) gains 60 events dated inside the range a pass
/// already archived: the next pass archives all of them, by id; a pass over the unchanged
/// relay then receives no event at all, only reconciliation frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_events_reach_the_archive_through_reconciliation() {
    let events = generate(&spec(3_000, 31));
    let relay = nostr_relay(&events).await;
    let url = relay.url().await.to_string();
    let (pool, db) = test_db().await;
    let cfg = config(&db);

    let first = pass(&pool, &cfg, std::slice::from_ref(&url)).await;
    assert_same_ids(&event_ids(&pool).await, &ids(&events), "first pass");
    let r = &first.relays[0];
    assert!(r.neg_rounds > 0, "the relay was reconciled");
    assert_eq!(r.neg_missing, 3_000);
    assert_eq!(r.bodies_fetched, 3_000);
    assert!(r.neg_fallbacks.is_empty(), "{:?}", r.neg_fallbacks);

    let late = generate(&spec(60, 32));
    publish(&url, &late).await;
    let second = pass(&pool, &cfg, std::slice::from_ref(&url)).await;
    let mut all = events.clone();
    all.extend(late.iter().cloned());
    assert_same_ids(&event_ids(&pool).await, &ids(&all), "after the late events");
    let r = &second.relays[0];
    assert_eq!(r.neg_missing, 60, "only the late events differ");
    assert_eq!(r.bodies_fetched, 60);
    assert_eq!(r.received, 60, "no event but the late ones travelled");
    assert_eq!(sightings(&pool).await.len(), 3_060);

    let third = pass(&pool, &cfg, std::slice::from_ref(&url)).await;
    let r = &third.relays[0];
    assert_eq!(r.received, 0, "an unchanged relay sends no event");
    assert_eq!(r.neg_missing, 0);
    assert!(r.neg_rounds > 0);
    assert_eq!(third.events_inserted, 0);
    assert!(
        r.bytes_received < 10_000,
        "an unchanged 3,060-event relay costs a few frames: {} bytes",
        r.bytes_received
    );
    assert_eq!(reverify_all(&pool).await, 3_060);
}

/// Three relays holding the same events, synced at once: every body travels about once, and
/// every (event, relay) pair is one sighting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_relays_cost_sightings_not_downloads() {
    let events = generate(&spec(2_000, 41));
    let relays = [
        nostr_relay(&events).await,
        nostr_relay(&events).await,
        nostr_relay(&events).await,
    ];
    let mut urls = Vec::new();
    for r in &relays {
        urls.push(r.url().await.to_string());
    }
    let (pool, db) = test_db().await;
    let cfg = config(&db);
    let report = pass(&pool, &cfg, &urls).await;
    assert_same_ids(&event_ids(&pool).await, &ids(&events), "archive");
    let by_relay = sightings_by_relay(&pool).await;
    assert_eq!(by_relay.len(), 3);
    assert!(
        by_relay.values().all(|&n| n == 2_000),
        "one sighting per (event, relay): {by_relay:?}"
    );
    let received: u64 = report.relays.iter().map(|r| r.received).sum();
    let without_body: u64 = report.relays.iter().map(|r| r.sightings_without_body).sum();
    assert!(
        received <= 2_000 + 2_000 / 100,
        "bodies received {received} for 2,000 distinct events on 3 relays"
    );
    assert!(without_body >= 3 * 2_000 - received);

    // Then one more relay holding the same events joins: all sightings, no download.
    let late = nostr_relay(&events).await;
    let late_url = late.url().await.to_string();
    let r = pass(&pool, &cfg, std::slice::from_ref(&late_url)).await;
    assert_eq!(r.relays[0].received, 0);
    assert_eq!(r.relays[0].sightings_without_body, 2_000);
    assert_eq!(sightings(&pool).await.len(), 8_000);
}

/// A relay without NIP-77 (the project's test relay by default answers NEG-OPEN with a
/// NOTICE) is walked as before, and late events dated within `recheck_horizon` below its
/// cursor are found by the re-walk of that horizon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_without_nip77_falls_back_and_the_recheck_finds_late_events() {
    let events = generate(&spec(1_500, 51));
    let relay = bigbrotr_testkit::relay::TestRelay::start(events.clone(), Default::default())
        .await
        .expect("test relay");
    let url = relay.url();
    let (pool, db) = test_db().await;
    let mut cfg = config(&db);
    cfg.sync.recheck_horizon = bigbrotr::config::Seconds::new(90 * 86_400);
    let first = pass(&pool, &cfg, std::slice::from_ref(&url)).await;
    assert_same_ids(&event_ids(&pool).await, &ids(&events), "first pass");
    assert_eq!(first.relays[0].neg_fallbacks, vec![("unsupported", 1)]);

    let late = generate(&spec(40, 52));
    publish(&url, &late).await;
    let second = pass(&pool, &cfg, std::slice::from_ref(&url)).await;
    let mut all = events.clone();
    all.extend(late.iter().cloned());
    assert_same_ids(&event_ids(&pool).await, &ids(&all), "after the late events");
    assert!(second.relays[0].recheck_bytes > 0);
}

fn bigbrotr(cfg: &std::path::Path, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_bigbrotr"));
    c.arg("--config")
        .arg(cfg)
        .args(args)
        .env("BIGBROTR_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    c
}

async fn wait_for_count(pool: &bigbrotr::db::Pool, n: usize, limit: std::time::Duration) -> usize {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let got = event_ids(pool).await.len();
        if got >= n || std::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A long-running sync that has gone live receives events published to the relay whatever
/// their created_at (here 30 days old): the live subscription does not filter by `since`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_subscription_receives_backdated_events() {
    let events = generate(&spec(1_000, 61));
    let relay = bigbrotr_testkit::relay::TestRelay::start(events.clone(), Default::default())
        .await
        .expect("test relay");
    let (pool, db) = test_db().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config_file(dir.path(), "bigbrotr.toml", &db, 50);
    let mut child = bigbrotr(&cfg, &["sync", "--relay", &relay.url()])
        .spawn()
        .expect("spawn");
    let got = wait_for_count(&pool, 1_000, std::time::Duration::from_secs(30)).await;
    assert_eq!(got, 1_000, "backfill");
    // Live now (the backfill of 1,000 events is long over); events dated 30 days back.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let late = generate(&spec(25, 62));
    for e in &late {
        relay.publish(e.clone());
    }
    let got = wait_for_count(&pool, 1_025, std::time::Duration::from_secs(20)).await;
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
    let mut all = events.clone();
    all.extend(late.iter().cloned());
    assert_eq!(got, 1_025, "backdated events published while live");
    assert_same_ids(&event_ids(&pool).await, &ids(&all), "archive");
    relay.stop().await;
}

/// `kill -9` in the middle of a reconciling pass, then a restart: the archive ends the same as
/// after an uninterrupted pass (every event, one sighting each, all re-verify).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_reconciliation_then_restart_ends_with_the_same_archive() {
    let events = generate(&spec(20_000, 71));
    let relay = nostr_relay(&events).await;
    let url = relay.url().await.to_string();
    let (pool, db) = test_db().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config_file(dir.path(), "bigbrotr.toml", &db, 50);
    let mut child = bigbrotr(&cfg, &["sync", "--once", "--relay", &url])
        .spawn()
        .expect("spawn");
    // Killed as soon as the first events are committed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut at_kill = 0;
    while std::time::Instant::now() < deadline {
        at_kill = event_ids(&pool).await.len();
        if at_kill > 0 || child.try_wait().ok().flatten().is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    eprintln!("killed with {at_kill} of 20000 events committed");
    assert!(at_kill < 20_000, "the kill came before the pass ended");
    let out = output_within(
        &mut bigbrotr(&cfg, &["sync", "--once", "--relay", &url]),
        std::time::Duration::from_secs(180),
        "restart after kill -9",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_ids(
        &event_ids(&pool).await,
        &ids(&events),
        "after kill -9 and restart",
    );
    assert_eq!(sightings(&pool).await.len(), 20_000);
    assert_eq!(reverify_all(&pool).await, 20_000);
}

/// `sync.fetch_known_bodies = true`: every relay's copy is downloaded (and its sighting is of
/// a body the relay served), none is recorded from the id alone; signatures are still
/// verified once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_known_bodies_downloads_every_relays_copy() {
    let events = generate(&spec(1_000, 81));
    let relays = [nostr_relay(&events).await, nostr_relay(&events).await];
    let mut urls = Vec::new();
    for r in &relays {
        urls.push(r.url().await.to_string());
    }
    let (pool, db) = test_db().await;
    let mut cfg = config(&db);
    cfg.sync.fetch_known_bodies = true;
    let report = pass(&pool, &cfg, &urls).await;
    assert_same_ids(&event_ids(&pool).await, &ids(&events), "archive");
    assert_eq!(sightings(&pool).await.len(), 2_000);
    let received: u64 = report.relays.iter().map(|r| r.received).sum();
    let without_body: u64 = report.relays.iter().map(|r| r.sightings_without_body).sum();
    assert_eq!(received, 2_000);
    assert_eq!(without_body, 0);
    assert_eq!(report.verified, 1_000, "each signature verified once");
}
