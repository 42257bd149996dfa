//! The sync pipeline against the project's own fault-injecting relay (testkit/relay.rs):
//! every misbehaviour of `Behavior` is exercised through `sync_once` into a real PostgreSQL,
//! and each test asserts the exact archive, the exact provenance, that every stored event
//! re-verifies, and the exact rejection counts the relay's documented behaviour implies.

mod common;

use bigbrotr::config::Config;
use bigbrotr::db::Pool;
use bigbrotr::stages::connect::Outcome;
use bigbrotr::sync::{sync_once, RelayReport, SyncOptions, SyncReport};
use bigbrotr_testkit::gen::{generate, with_bad_id, with_bad_sig, GenEvent, GenSpec};
use bigbrotr_testkit::relay::{Behavior, TestRelay};
use common::*;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// Regular kinds only (nothing replaceable), created_at spread over 30 days from 1_700_000_000.
fn spec(count: usize, seed: u64) -> GenSpec {
    GenSpec {
        count,
        seed,
        kinds: vec![1, 7, 1111],
        ..GenSpec::default()
    }
}

/// The normalized URL the archive records for a relay.
fn norm(url: &str) -> String {
    relay_url(url).as_str().to_string()
}

/// One pass over `urls`; a hang (e.g. a batch that can never commit) fails the test instead of
/// blocking it forever.
async fn run_with(cfg: &Config, pool: &Pool, urls: &[String], opts: &SyncOptions) -> SyncReport {
    let relays = urls.iter().map(|u| relay_url(u)).collect();
    let report = tokio::time::timeout(
        Duration::from_secs(90),
        sync_once(cfg, pool.clone(), relays, opts, None),
    )
    .await
    .expect("sync_once did not finish within 90 s")
    .expect("sync_once");
    print!("{}", report.render());
    report
}

async fn run(cfg: &Config, pool: &Pool, urls: &[String]) -> SyncReport {
    run_with(cfg, pool, urls, &SyncOptions::default()).await
}

/// The report of the relay at `url`.
fn relay_of<'a>(report: &'a SyncReport, url: &str) -> &'a RelayReport {
    let n = norm(url);
    report
        .relays
        .iter()
        .find(|r| r.url == n)
        .unwrap_or_else(|| panic!("no report for {n}"))
}

/// Rejections of one reason (0 when absent).
fn rej(r: &RelayReport, reason: &str) -> u64 {
    r.rejections
        .iter()
        .find(|(k, _)| *k == reason)
        .map_or(0, |(_, n)| *n)
}

/// Every (id, relay) pair a relay holding `events` serves.
fn served(events: &[GenEvent], url: &str) -> BTreeSet<(String, String)> {
    let n = norm(url);
    events
        .iter()
        .map(|e| (hex::encode(e.id), n.clone()))
        .collect()
}

/// Asserts two sighting sets are equal, reporting sizes and a few differences.
fn assert_same_sightings(
    got: &BTreeSet<(String, String)>,
    want: &BTreeSet<(String, String)>,
    what: &str,
) {
    if got != want {
        let missing: Vec<_> = want.difference(got).take(3).collect();
        let extra: Vec<_> = got.difference(want).take(3).collect();
        panic!(
            "{what}: got {} sightings, want {}; {} missing (e.g. {missing:?}), {} unexpected (e.g. {extra:?})",
            got.len(),
            want.len(),
            want.difference(got).count(),
            got.difference(want).count()
        );
    }
}

/// The relay's order: newest first, ties by lowest id (so `limit` keeps a prefix of this).
fn newest_first(events: &[GenEvent]) -> Vec<&GenEvent> {
    let mut v: Vec<&GenEvent> = events.iter().collect();
    v.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
    v
}

/// The persisted cursor payload of a relay, if any.
async fn cursor_payload(pool: &Pool, url: &str) -> Option<serde_json::Value> {
    let c = pool.get().await.expect("conn");
    c.query_opt(
        "SELECT payload FROM service_state WHERE service_name = 'synchronizer' AND state_key = $1",
        &[&norm(url)],
    )
    .await
    .expect("query")
    .map(|r| r.get(0))
}

/// The stored signature (hex) of one event.
async fn stored_sig(pool: &Pool, id: &[u8; 32]) -> String {
    let c = pool.get().await.expect("conn");
    c.query_one(
        "SELECT encode(sig, 'hex') FROM events WHERE id = $1",
        &[&&id[..]],
    )
    .await
    .expect("query")
    .get(0)
}

/// The `sig` field of an event's wire JSON.
fn sig_of(e: &GenEvent) -> String {
    let v: serde_json::Value = serde_json::from_str(&e.json).expect("event json");
    v["sig"].as_str().expect("sig").to_string()
}

/// The full-archive checks shared by the tests: exactly `want` stored, exactly `want_sightings`,
/// and every stored event re-verifies independently.
async fn assert_archive(
    pool: &Pool,
    want: &BTreeSet<String>,
    want_sightings: &BTreeSet<(String, String)>,
) {
    assert_same_ids(&event_ids(pool).await, want, "archive");
    assert_same_sightings(&sightings(pool).await, want_sightings, "provenance");
    assert_eq!(reverify_all(pool).await, want.len(), "re-verified events");
}

fn reqs(relay: &TestRelay) -> u64 {
    relay.counters().reqs.load(Relaxed)
}

fn connections(relay: &TestRelay) -> u64 {
    relay.counters().connections.load(Relaxed)
}

fn events_sent(relay: &TestRelay) -> u64 {
    relay.counters().events_sent.load(Relaxed)
}

// ---------------------------------------------------------------------------------------------
// 1. Garbage frames
// ---------------------------------------------------------------------------------------------

/// 16 garbage frames per REQ (the 16 variants of relay::garbage, each once), interleaved
/// with 2,000 valid events. Classified by the connector as:
///   malformed  10 (not JSON, truncated, object, ["EVENT"], ["EVENT",sub], string created_at,
///                  missing fields, event not an object, null, [42,sub])
///   too_deep    1 (1000-deep array, refused before parsing)
///   bad_hex     3 (non-hex id, 3-char sig, 62-char id)
///   bad_number  1 (kind 70000)
///   bad_tags    1 (tag with a number)
/// 9 of the 16 are EVENT messages for our subscription and count as received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frames_are_counted_by_reason_and_never_archived() {
    let events = generate(&spec(2000, 101));
    let relay = TestRelay::start(
        events.clone(),
        Behavior {
            garbage_frames: 16,
            ..Default::default()
        },
    )
    .await
    .expect("relay");
    let (pool, db) = test_db().await;
    let cfg = config(&db);
    let report = run(&cfg, &pool, &[relay.url()]).await;
    let r = relay_of(&report, &relay.url());
    assert_eq!(r.outcome, Outcome::Synced);
    assert_archive(&pool, &ids(&events), &served(&events, &relay.url())).await;

    let n = reqs(&relay);
    assert_eq!(r.reqs, n, "REQs sent = REQs the relay received");
    assert!(
        (5..=8).contains(&n),
        "2000 events at limit 500 take ~6 REQs, took {n}"
    );
    assert_eq!(connections(&relay), 1);
    assert_eq!(
        r.rejections,
        vec![
            ("malformed", 10 * n),
            ("bad_hex", 3 * n),
            ("bad_tags", n),
            ("bad_number", n),
            ("too_deep", n),
        ],
        "16 garbage frames per REQ, by reason"
    );
    assert_eq!(r.received, events_sent(&relay) + 9 * n);
    assert_eq!(r.emitted, 2000, "each valid event passed on once");
    assert_eq!(r.received, r.emitted + r.refetched + 9 * n);
    assert_eq!(report.events_inserted, 2000);
    assert_eq!(report.verified, 2000);
    relay.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Bad signatures and wrong ids
// ---------------------------------------------------------------------------------------------

/// Fault copies placed so each is delivered exactly once: 10 bad-sig and 10 bad-id copies of
/// OTHER events, all newer than every served event (so only the first REQ, whose window
/// reaches "now", covers them), plus a bad-sig copy of the newest served event (same id,
/// different signature; the relay sends it right after the valid one). Expected: bad_sig 11,
/// bad_id 10, nothing else; the served event keeps exactly one sighting and its valid signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_and_ids_are_rejected_exactly_once_each() {
    let events = generate(&spec(2000, 102));
    let newest_valid = events.iter().map(|e| e.created_at).max().unwrap_or(0);
    let others = generate(&GenSpec {
        count: 20,
        seed: 1102,
        kinds: vec![1],
        start_ts: newest_valid + 100,
        spread_secs: 1000,
        ..GenSpec::default()
    });
    let top = newest_first(&events)[0].clone();
    let mut bad: Vec<GenEvent> = others[..10].iter().map(with_bad_sig).collect();
    bad.extend(others[10..].iter().map(with_bad_id));
    bad.push(with_bad_sig(&top));
    let relay = TestRelay::start(
        events.clone(),
        Behavior {
            bad_sig: bad,
            ..Default::default()
        },
    )
    .await
    .expect("relay");
    let (pool, db) = test_db().await;
    let cfg = config(&db);
    let report = run(&cfg, &pool, &[relay.url()]).await;
    let r = relay_of(&report, &relay.url());
    assert_eq!(r.outcome, Outcome::Synced);
    assert_archive(&pool, &ids(&events), &served(&events, &relay.url())).await;
    assert_eq!(r.rejections, vec![("bad_id", 10), ("bad_sig", 11)]);
    assert_eq!(
        events_sent(&relay),
        r.received,
        "every EVENT frame the relay sent was received"
    );
    // Padded replies (more events than asked) are trusted only down to their limit-th newest
    // event, so a few events are read twice; none is lost.
    assert!(
        r.emitted >= 2000 + 21,
        "each valid event and each fault copy at least once"
    );
    assert_eq!(report.verified, 2000);
    // Valid events read twice (padding cut) are skipped by the seen gate, never re-verified.
    assert_eq!(report.verify_skipped, r.emitted - 2021);
    // The forged copy shares the id: the stored row is the validly signed one.
    assert_eq!(stored_sig(&pool, &top.id).await, sig_of(&top));
    let top_sightings = sightings(&pool)
        .await
        .into_iter()
        .filter(|(id, _)| *id == hex::encode(top.id))
        .count();
    assert_eq!(top_sightings, 1);
    relay.stop().await;
}

/// Realistic placement: the fault copies (of other events, and of served events) fall inside
/// the windows being walked, so a reply holds `limit` valid events plus fault events older
/// than the limit-th one. The archive must still be exactly the valid events: invalid input
/// must not steer the walk past valid events the relay serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_events_inside_the_walked_windows_do_not_make_the_walk_skip_valid_events() {
    let events = generate(&spec(2000, 103));
    let others = generate(&spec(30, 1103));
    let mut bad: Vec<GenEvent> = others[..15].iter().map(with_bad_sig).collect();
    bad.extend(others[15..].iter().map(with_bad_id));
    // Bad-sig copies of served events spread over the whole history.
    let order = newest_first(&events);
    for i in [0, 250, 499, 500, 501, 1000, 1500, 1999] {
        bad.push(with_bad_sig(order[i]));
    }
    let relay = TestRelay::start(
        events.clone(),
        Behavior {
            bad_sig: bad,
            ..Default::default()
        },
    )
    .await
    .expect("relay");
    let (pool, db) = test_db().await;
    let cfg = config(&db);
    let report = run(&cfg, &pool, &[relay.url()]).await;
    let r = relay_of(&report, &relay.url());
    // Spell out the consequence before the detailed comparison: losing events while reporting
    // Synced with a cursor at "now" means later passes never fetch them either.
    let archived = event_ids(&pool).await.len();
    let payload = cursor_payload(&pool, &relay.url()).await;
    assert_eq!(
        archived, 2000,
        "archived {archived} of 2000 valid events; outcome {:?}; persisted cursor {payload:?}",
        r.outcome
    );
    assert_eq!(r.outcome, Outcome::Synced);
    assert_archive(&pool, &ids(&events), &served(&events, &relay.url())).await;
    for i in [0, 250, 499, 500, 501, 1000, 1500, 1999] {
        assert_eq!(stored_sig(&pool, &order[i].id).await, sig_of(order[i]));
    }
    // Every fault copy is delivered at least once and rejected every time it is passed on.
    assert!(rej(r, "bad_sig") >= 15 + 8, "bad_sig {}", rej(r, "bad_sig"));
    assert!(rej(r, "bad_id") >= 15, "bad_id {}", rej(r, "bad_id"));
    assert_eq!(
        r.emitted,
        r.verified + r.verify_skipped + rej(r, "bad_sig") + rej(r, "bad_id"),
        "every event passed on is verified, skipped or rejected"
    );
    assert_eq!(report.verified, 2000);
    relay.stop().await;
}

/// Minimal form of the previous test: ONE forged event (a bad-sig copy of another event),
/// older than every served event. Every REQ of a correct walk covers it (all windows start at
/// the floor, 0), so it is rejected exactly once per REQ, and it must not make the walk jump
/// from the first window straight to its created_at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_old_forged_event_does_not_make_the_walk_skip_the_history() {
    let events = generate(&spec(2000, 118));
    let oldest = events.iter().map(|e| e.created_at).min().unwrap_or(0);
    let other = generate(&GenSpec {
        count: 1,
        seed: 1118,
        start_ts: oldest - 10,
        spread_secs: 1,
        ..spec(1, 1118)
    });
    let relay = TestRelay::start(
        events.clone(),
        Behavior {
            bad_sig: vec![with_bad_sig(&other[0])],
            ..Default::default()
        },
    )
    .await
    .expect("relay");
    let (pool, db) = test_db().await;
    let cfg = config(&db);
    // A fixed upper bound: no catch-up REQ above it, so every REQ starts at the floor.
    let opts = SyncOptions {
        until: Some(bigbrotr::stages::model::now_secs()),
        ..Default::default()
    };
    let report = run_with(&cfg, &pool, &[relay.url()], &opts).await;
    let r = relay_of(&report, &relay.url());
    assert_eq!(r.outcome, Outcome::Synced);
    assert_archive(&pool, &ids(&events), &served(&events, &relay.url())).await;
    // The forged copy is rejected in every reply that carries it, except where it sits at a
    // window boundary already processed (then it is recognised by (id, sig) and not re-sent).
    assert_eq!(r.rejections.len(), 1, "{:?}", r.rejections);
    let (reason, n) = r.rejections[0];
    assert_eq!(reason, "bad_sig");
    assert!(
        (1..=reqs(&relay)).contains(&n),
        "{n} bad_sig for {} REQs",
        reqs(&relay)
    );
    relay.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Two relays, one sending every event twice, sharing half the events
// ---------------------------------------------------------------------------------------------

/// 3,000 events: R1 (compliant) holds the first 2,000, R2 (every EVENT frame twice) the last
/// 2,000. Returns (all, R1's, R2's, R1, R2).
async fn two_relays_sharing_half(
    seed: u64,
) -> (
    Vec<GenEvent>,
    Vec<GenEvent>,
    Vec<GenEvent>,
    TestRelay,
    TestRelay,
) {
    let all = generate(&spec(3000, seed));
    let a = all[..2000].to_vec();
    let b = all[1000..].to_vec();
    let r1 = TestRelay::start(a.clone(), Behavior::default())
        .await
        .expect("relay 1");
    let r2 = TestRelay::start(
        b.clone(),
        Behavior {
            duplicates: true,
            ..Default::default()
        },
    )
    .await
    .expect("relay 2");
    (all, a, b, r1, r2)
}

/// R1 (compliant) holds events[0..2000], R2 (duplicates: every EVENT frame twice) holds
/// events[1000..3000]. The union is archived, provenance is exact for both, and each distinct
/// event is verified once: 3,000 verified; the other 3,000 deliveries (the shared 1,000 from the
/// second relay, and R2's 2,000 second copies) are skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_and_duplicated_events_are_verified_once_with_exact_provenance() {
    let (all, a, b, r1, r2) = two_relays_sharing_half(104).await;
    let (pool, db) = test_db().await;
    let cfg = config(&db);
    let report = run(&cfg, &pool, &[r1.url(), r2.url()]).await;
    let (x1, x2) = (relay_of(&report, &r1.url()), relay_of(&report, &r2.url()));
    assert_eq!(x1.outcome, Outcome::Synced);
    assert_eq!(x2.outcome, Outcome::Synced);
    let mut want_sightings = served(&a, &r1.url());
    want_sightings.extend(served(&b, &r2.url()));
    assert_archive(&pool, &ids(&all), &want_sightings).await;
    assert!(x1.rejections.is_empty() && x2.rejections.is_empty());
    assert_eq!(x1.emitted, 2000);
    assert_eq!(
        x2.emitted, 4000,
        "both copies of each of R2's events passed on"
    );
    assert_eq!(report.events_inserted, 3000);
    assert_eq!(report.sightings_inserted, 4000);
    assert_eq!(
        (report.verified, report.verify_skipped),
        (3000, 3000),
        "each distinct event verified once; every re-delivery skipped"
    );
    r1.stop().await;
    r2.stop().await;
}

/// The same two relays through many small batches written by four sink writers at once:
/// commits land out of order and R2's duplicate copies collide in concurrent transactions
/// (waits, fallbacks to staging), yet the archive, the provenance and both cursors are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sink_writers_keep_the_archive_and_cursors_exact() {
    let (all, a, b, r1, r2) = two_relays_sharing_half(105).await;
    let (pool, db) = test_db().await;
    let mut cfg = config(&db);
    cfg.batch.max_rows = 40;
    cfg.pipeline.sink_writers = 4;
    cfg.database.pool_size = 6;
    let report = run(&cfg, &pool, &[r1.url(), r2.url()]).await;
    let mut want_sightings = served(&a, &r1.url());
    want_sightings.extend(served(&b, &r2.url()));
    assert_archive(&pool, &ids(&all), &want_sightings).await;
    assert_eq!(report.events_inserted, 3000);
    assert_eq!(report.sightings_inserted, 4000);
    for r in [&r1, &r2] {
        assert_eq!(relay_of(&report, &r.url()).outcome, Outcome::Synced);
        let payload = cursor_payload(&pool, &r.url()).await.expect("cursor");
        assert!(
            payload["synced_until"].is_i64() && payload["pending"].is_null(),
            "{}: {payload}",
            r.url()
        );
    }
    r1.stop().await;
    r2.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4-6. Relays that lie about limit / range
// ---------------------------------------------------------------------------------------------

/// A relay that ignores `limit` sends the whole range on the first REQ: all archived once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_ignoring_limit_is_archived_once() {
    let events = generate(&spec(2000, 105));
    let relay = TestRelay::start(
        events.clone(),
        Behavior {
            ignore_limit: true,
            ..Default::default()
        },
    )
    .await
    .expect("relay");
    let (pool, db) = test_db().await;
    let cfg = config(&db);
    let report = run(&cfg, &pool, &[relay.url()]).await;
    let r = relay_of(&report, &relay.url());
    assert_eq!(r.outcome, Outcome::Synced);
    assert_archive(&pool, &ids(&events), &served(&events, &relay.url())).await;
    assert!(r.rejections.is_empty());
    assert_eq!(r.emitted, 2000);
    assert_eq!(r.received, events_sent(&relay));
    assert_eq!(r.received, r.emitted + r.refetched);
    // Everything in the first reply; the second only re-reads the oldest second. (A third,
    // empty REQ happens when the pass crosses a second: the connector then catches up on
    // (previous now, new now].)
    assert!(r.reqs == 2 || r.reqs == 3, "{} REQs", r.reqs);
    assert_eq!(report.verified, 2000);
    relay.stop().await;
}

/// A relay capping every reply at 100 while we ask 500: the cap is detected by the
/// confirmation REQ and the walk continues at 100 per window; all archived once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_capping_below_the_limit_is_detected_and_archived_fully() {
    let events = generate(&spec(2000, 106));
    let relay = TestRelay::start(
        events.clone(),
        Behavior {
            max_limit: Some(100),
            ..Default::default()
        },
    )
    .await
    .expect("relay");
    let (pool, db) = test_db().await;
    let cfg = config(&db);
    let report = run(&cfg, &pool, &[relay.url()]).await;
    let r = relay_of(&report, &relay.url());
    assert_eq!(r.outcome, Outcome::Synced);
    assert_archive(&pool, &ids(&events), &served(&events, &relay.url())).await;
    assert!(r.rejections.is_empty());
    assert_eq!(r.emitted, 2000);
    assert_eq!(r.received, r.emitted + r.refetched);
    // 100 + 99 per further window: ~21 windows plus the final confirmation.
    assert!(
        (20..=24).contains(&r.reqs),
        "cap adapted: {} REQs for 2000 events at 100 per reply",
        r.reqs
    );
    relay.stop().await;
}

/// A relay adding 3 stored events from outside [since, until] to every reply. With a floor in
/// the middle of the history both sides exist for every REQ, so exactly 3 per REQ are
/// rejected as out_of_range, and the archive is exactly the events at or above the floor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_events_are_rejected_three_per_req() {
    let events = generate(&spec(3000, 107));
    let order = newest_first(&events);
    let since = order[2000].created_at;
    let inside: Vec<GenEvent> = events
        .iter()
        .filter(|e| e.created_at >= since)
        .cloned()
        .collect();
    assert!(inside.len() > 2000 && inside.len() < 2010);
    let relay = TestRelay::start(
        events.clone(),
        Behavior {
            out_of_range: 3,
            ..Default::default()
        },
    )
    .await
    .expect("relay");
    let (pool, db) = test_db().await;
    let cfg = config(&db);
    let opts = SyncOptions {
        since: Some(since),
        ..Default::default()
    };
    let report = run_with(&cfg, &pool, &[relay.url()], &opts).await;
    let r = relay_of(&report, &relay.url());
    assert_eq!(r.outcome, Outcome::Synced);
    assert_archive(&pool, &ids(&inside), &served(&inside, &relay.url())).await;
    let n = reqs(&relay);
    assert_eq!(r.reqs, n);
    assert_eq!(r.rejections, vec![("out_of_range", 3 * n)]);
    assert_eq!(r.emitted, inside.len() as u64);
    assert_eq!(r.received, events_sent(&relay));
    relay.stop().await;
}

/// Edge of the "ignores `until`" heuristic: 997 events, so the second window holds 498 in
/// range (ranks 500..997) and the relay adds 3 newer out-of-range events. The relay honours
/// `until` (the 498 are exactly the window), so this must not be mistaken for a relay that
/// ignores it: Synced, all archived, cursor at the bottom.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_extras_in_a_nearly_full_window_are_not_taken_for_ignoring_until() {
    let events = generate(&spec(997, 117));
    let relay = TestRelay::start(
        events.clone(),
        Behavior {
            out_of_range: 3,
            ..Default::default()
        },
    )
    .await
    .expect("relay");
    let (pool, db) = test_db().await;
    let cfg = config(&db);
    let report = run(&cfg, &pool, &[relay.url()]).await;
    let r = relay_of(&report, &relay.url());
    assert_archive(&pool, &ids(&events), &served(&events, &relay.url())).await;
    assert_eq!(r.outcome, Outcome::Synced, "{}", report.render());
    let payload = cursor_payload(&pool, &relay.url()).await.expect("cursor");
    assert!(payload["synced_until"].is_i64(), "{payload}");
    assert!(payload["pending"].is_null(), "{payload}");
    relay.stop().await;
}

/// A relay ignoring `until` answers the second window with the newest events again: the
/// connector gives up on it without claiming progress it did not make. The archive holds
/// exactly the first reply (the 500 newest), the cursor is pending at the oldest of them,
/// and synced_until stays null.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_ignoring_until_is_given_up_without_advancing_the_cursor() {
    let events = generate(&spec(2000, 111));
    let order = newest_first(&events);
    let first: Vec<GenEvent> = order[..500].iter().map(|e| (*e).clone()).collect();
    let t500 = order[499].created_at;
    let relay = TestRelay::start(
        events.clone(),
        Behavior {
            ignore_until: true,
            ..Default::default()
        },
    )
    .await
    .expect("relay");
    let (pool, db) = test_db().await;
    let cfg = config(&db);
    let report = run(&cfg, &pool, &[relay.url()]).await;
    let r = relay_of(&report, &relay.url());
    match &r.outcome {
        Outcome::GaveUp(why) => assert!(why.to_string().contains("`until`"), "{why}"),
        o => panic!("expected GaveUp, got {o:?}"),
    }
    assert_archive(&pool, &ids(&first), &served(&first, &relay.url())).await;
    // Two windows, then a probe (`limit: 1`) that confirms the relay ignores `until`.
    assert_eq!(r.reqs, 3);
    assert_eq!(reqs(&relay), 3);
    // The second reply: the same 500, of which those newer than `until` are out of range and
    // the one(s) at `until` are boundary re-reads.
    let above = first.iter().filter(|e| e.created_at > t500).count() as u64;
    assert_eq!(r.rejections, vec![("out_of_range", above)]);
    assert_eq!(r.emitted, 500);
    let payload = cursor_payload(&pool, &relay.url())
        .await
        .expect("a cursor is persisted for the first window");
    assert!(
        payload["synced_until"].is_null(),
        "cursor claims the relay synced to the bottom: {payload}"
    );
    assert_eq!(payload["pending"]["until"], t500, "{payload}");
    relay.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 7-8. Hangs and disconnects
// ---------------------------------------------------------------------------------------------

/// The first connection stops after 300 events and stays open: the idle timeout (2 s) ends
/// it, the connector reconnects and reads everything; the 300 re-deliveries skip verification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_relay_is_reconnected_after_the_idle_timeout() {
    let events = generate(&spec(2000, 108));
    let relay = TestRelay::start(
        events.clone(),
        Behavior {
            hang_after: Some(300),
            hang_connections: 1,
            ..Default::default()
        },
    )
    .await
    .expect("relay");
    let (pool, db) = test_db().await;
    let cfg = config(&db);
    let report = run(&cfg, &pool, &[relay.url()]).await;
    let r = relay_of(&report, &relay.url());
    assert_eq!(r.outcome, Outcome::Synced);
    assert_archive(&pool, &ids(&events), &served(&events, &relay.url())).await;
    assert!(r.rejections.is_empty());
    assert_eq!(connections(&relay), 2);
    assert_eq!(
        r.emitted, 2300,
        "the 300 of the hung window are passed on again"
    );
    assert_eq!((report.verified, report.verify_skipped), (2000, 300));
    assert_eq!(report.events_inserted, 2000);
    assert_eq!(report.sightings_inserted, 2000);
    relay.stop().await;
}

/// The relay drops the TCP connection (no close frame) after 700 events on each of its first
/// two connections: the connector resumes from its last complete window each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnecting_relay_is_resumed_until_synced() {
    let events = generate(&spec(2000, 109));
    let relay = TestRelay::start(
        events.clone(),
        Behavior {
            disconnect_after: Some(700),
            disconnect_connections: 2,
            ..Default::default()
        },
    )
    .await
    .expect("relay");
    let (pool, db) = test_db().await;
    let cfg = config(&db);
    let report = run(&cfg, &pool, &[relay.url()]).await;
    let r = relay_of(&report, &relay.url());
    assert_eq!(r.outcome, Outcome::Synced);
    assert_archive(&pool, &ids(&events), &served(&events, &relay.url())).await;
    assert!(r.rejections.is_empty());
    assert_eq!(connections(&relay), 3);
    // Each cut window (200 events into it) is re-read from its start on the next connection.
    assert_eq!(r.emitted, 2000 + 200 + 200);
    assert_eq!((report.verified, report.verify_skipped), (2000, 400));
    assert_eq!(report.events_inserted, 2000);
    relay.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 9. Huge frames
// ---------------------------------------------------------------------------------------------

/// One 200 KiB NOTICE per REQ, above max_event_bytes (64 KiB) but below the message limit
/// (1 MiB): rejected as oversized, the connection stays, everything is archived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_over_the_event_limit_are_rejected_and_the_connection_stays() {
    let events = generate(&spec(2000, 110));
    let relay = TestRelay::start(
        events.clone(),
        Behavior {
            huge_frame: Some(200 << 10),
            ..Default::default()
        },
    )
    .await
    .expect("relay");
    let (pool, db) = test_db().await;
    let mut cfg = config(&db);
    cfg.sync.max_event_bytes = 64 << 10;
    cfg.net.max_message_bytes = 1 << 20;
    cfg.net.max_frame_bytes = 1 << 20;
    let report = run(&cfg, &pool, &[relay.url()]).await;
    let r = relay_of(&report, &relay.url());
    assert_eq!(r.outcome, Outcome::Synced);
    assert_archive(&pool, &ids(&events), &served(&events, &relay.url())).await;
    assert_eq!(connections(&relay), 1);
    let n = reqs(&relay);
    assert_eq!(r.reqs, n);
    assert_eq!(r.rejections, vec![("oversized", n)]);
    // An oversized frame counts as a reply event, so a few replies look padded and are cut at
    // their limit-th newest event: a handful of events are read twice, none is lost.
    assert!(r.emitted >= 2000);
    relay.stop().await;
}

/// A 2 MiB frame on every REQ of every connection, above the 1 MiB message limit: each
/// connection dies (counted oversized), the relay is given up after max_failures (4), and the
/// compliant relay in the same pass is archived completely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_over_the_socket_limit_give_up_that_relay_only() {
    let bad_events = generate(&spec(500, 1110));
    let good_events = generate(&spec(2000, 2110));
    let bad = TestRelay::start(
        bad_events.clone(),
        Behavior {
            huge_frame: Some(2 << 20),
            ..Default::default()
        },
    )
    .await
    .expect("relay");
    let good = TestRelay::start(good_events.clone(), Behavior::default())
        .await
        .expect("relay");
    let (pool, db) = test_db().await;
    let mut cfg = config(&db);
    cfg.sync.max_event_bytes = 64 << 10;
    cfg.net.max_message_bytes = 1 << 20;
    cfg.net.max_frame_bytes = 1 << 20;
    let report = run(&cfg, &pool, &[bad.url(), good.url()]).await;
    let rb = relay_of(&report, &bad.url());
    let rg = relay_of(&report, &good.url());
    assert!(matches!(rb.outcome, Outcome::GaveUp(_)), "{:?}", rb.outcome);
    assert_eq!(rg.outcome, Outcome::Synced);
    assert_archive(
        &pool,
        &ids(&good_events),
        &served(&good_events, &good.url()),
    )
    .await;
    assert_eq!(connections(&bad), 4, "max_failures = 4 connections");
    assert_eq!(reqs(&bad), 4);
    assert_eq!(rb.rejections, vec![("oversized", 4)]);
    assert_eq!((rb.received, rb.emitted), (0, 0));
    assert!(rg.rejections.is_empty());
    assert_eq!(report.events_inserted, 2000);
    bad.stop().await;
    good.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 10. CLOSED
// ---------------------------------------------------------------------------------------------

/// The first two REQs are answered `CLOSED rate-limited:`; the connector backs off (≥ 1 s),
/// reconnects and syncs everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_relay_is_retried_and_synced() {
    let events = generate(&spec(2000, 112));
    let relay = TestRelay::start(
        events.clone(),
        Behavior {
            closed: Some("rate-limited: slow down".into()),
            closed_times: 2,
            ..Default::default()
        },
    )
    .await
    .expect("relay");
    let (pool, db) = test_db().await;
    let cfg = config(&db);
    let started = std::time::Instant::now();
    let report = run(&cfg, &pool, &[relay.url()]).await;
    let r = relay_of(&report, &relay.url());
    assert_eq!(r.outcome, Outcome::Synced);
    assert_archive(&pool, &ids(&events), &served(&events, &relay.url())).await;
    assert!(r.rejections.is_empty());
    assert_eq!(connections(&relay), 3);
    assert_eq!(r.reqs, reqs(&relay));
    assert_eq!(r.emitted, 2000);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "backed off at least 1 s per rate-limit"
    );
    relay.stop().await;
}

/// Every REQ answered `CLOSED auth-required:`: given up at once, nothing archived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_required_relay_is_given_up_at_once() {
    let events = generate(&spec(500, 113));
    let relay = TestRelay::start(
        events.clone(),
        Behavior {
            closed: Some("auth-required: members only".into()),
            closed_times: 0,
            ..Default::default()
        },
    )
    .await
    .expect("relay");
    let (pool, db) = test_db().await;
    let cfg = config(&db);
    let report = run(&cfg, &pool, &[relay.url()]).await;
    let r = relay_of(&report, &relay.url());
    match &r.outcome {
        Outcome::GaveUp(why) => assert!(
            matches!(
                why,
                bigbrotr::stages::connect::GiveUpReason::AuthRequired(_)
            ) && why.to_string().contains("auth-required"),
            "{why}"
        ),
        o => panic!("expected GaveUp, got {o:?}"),
    }
    assert_archive(&pool, &BTreeSet::new(), &BTreeSet::new()).await;
    assert_eq!((connections(&relay), reqs(&relay)), (1, 1));
    assert_eq!(report.events_inserted, 0);
    assert!(cursor_payload(&pool, &relay.url()).await.is_none());
    relay.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 12. NOTICE before each reply
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_before_replies_are_harmless() {
    let events = generate(&spec(2000, 114));
    let relay = TestRelay::start(
        events.clone(),
        Behavior {
            notice_on_req: true,
            ..Default::default()
        },
    )
    .await
    .expect("relay");
    let (pool, db) = test_db().await;
    let cfg = config(&db);
    let report = run(&cfg, &pool, &[relay.url()]).await;
    let r = relay_of(&report, &relay.url());
    assert_eq!(r.outcome, Outcome::Synced);
    assert_archive(&pool, &ids(&events), &served(&events, &relay.url())).await;
    assert!(r.rejections.is_empty());
    assert_eq!(r.emitted, 2000);
    assert_eq!(connections(&relay), 1);
    relay.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 13. U+0000
// ---------------------------------------------------------------------------------------------

/// True if the event's content or any tag string contains U+0000.
fn has_nul(e: &GenEvent) -> bool {
    let v: serde_json::Value = serde_json::from_str(&e.json).expect("event json");
    let content = v["content"].as_str().unwrap_or_default().contains('\0');
    let tags = v["tags"].as_array().is_some_and(|ts| {
        ts.iter().any(|t| {
            t.as_array().is_some_and(|t| {
                t.iter()
                    .any(|s| s.as_str().is_some_and(|s| s.contains('\0')))
            })
        })
    });
    content || tags
}

/// Validly signed events whose content or tags contain U+0000 are stored losslessly:
/// raw_canonical is set exactly for them and they re-verify from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_with_nul_are_stored_losslessly() {
    let mut events = generate(&spec(2000, 115));
    let kp = secp256k1::Keypair::from_secret_bytes([7u8; 32]).expect("key");
    events.push(bigbrotr_testkit::gen::sign(
        &kp,
        1_700_000_500,
        1,
        &[],
        "a\u{0}b",
    ));
    events.push(bigbrotr_testkit::gen::sign(
        &kp,
        1_700_000_600,
        1,
        &[vec!["t".to_string(), "x\u{0}y".to_string()]],
        "nul in a tag only",
    ));
    events.push(bigbrotr_testkit::gen::sign(
        &kp,
        1_700_000_700,
        1,
        &[vec!["t".to_string(), "\u{0}".to_string()]],
        "\u{0}",
    ));
    let with_nul: BTreeSet<String> = events
        .iter()
        .filter(|e| has_nul(e))
        .map(|e| hex::encode(e.id))
        .collect();
    assert!(
        with_nul.len() > 3,
        "gen makes some NUL events too: {}",
        with_nul.len()
    );
    let relay = TestRelay::start(events.clone(), Behavior::default())
        .await
        .expect("relay");
    let (pool, db) = test_db().await;
    let cfg = config(&db);
    let report = run(&cfg, &pool, &[relay.url()]).await;
    let r = relay_of(&report, &relay.url());
    assert_eq!(r.outcome, Outcome::Synced);
    assert_archive(&pool, &ids(&events), &served(&events, &relay.url())).await;
    assert!(r.rejections.is_empty());
    let c = pool.get().await.expect("conn");
    let raw: BTreeSet<String> = c
        .query(
            "SELECT encode(id, 'hex') FROM events WHERE raw_canonical IS NOT NULL",
            &[],
        )
        .await
        .expect("query")
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    assert_same_ids(&raw, &with_nul, "events with raw_canonical");
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM events WHERE raw_canonical IS NOT NULL",
            &[],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(n as usize, with_nul.len());
    relay.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 14. Cursor resume
// ---------------------------------------------------------------------------------------------

/// Sync A (in the past); the cursor ends `live_lag` (60 s) below the first pass's "now" (an
/// event reaching the relay late, dated in that last minute, is fetched by the next pass).
/// Then B is published with
/// created_at just above that cursor (and, after a short wait, not in the future): the second
/// pass asks only for (cursor, now] and receives exactly B plus the boundary re-read of its
/// oldest second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_pass_fetches_only_what_is_newer_than_the_cursor() {
    let a = generate(&spec(2000, 116));
    let relay = TestRelay::start(a.clone(), Behavior::default())
        .await
        .expect("relay");
    let (pool, db) = test_db().await;
    let cfg = config(&db);
    let first = run(&cfg, &pool, &[relay.url()]).await;
    assert_eq!(relay_of(&first, &relay.url()).outcome, Outcome::Synced);
    assert_archive(&pool, &ids(&a), &served(&a, &relay.url())).await;
    let payload = cursor_payload(&pool, &relay.url()).await.expect("cursor");
    let cursor = payload["synced_until"]
        .as_i64()
        .unwrap_or_else(|| panic!("first pass synced to the bottom: {payload}"));
    assert!(payload["pending"].is_null(), "{payload}");

    let b = generate(&GenSpec {
        start_ts: cursor + 1,
        spread_secs: 3,
        ..spec(200, 1116)
    });
    let newest_b = b.iter().map(|e| e.created_at).max().unwrap_or(cursor);
    while bigbrotr::stages::model::now_secs() <= newest_b {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for e in &b {
        relay.publish(e.clone());
    }
    let second = run(&cfg, &pool, &[relay.url()]).await;
    let r = relay_of(&second, &relay.url());
    assert_eq!(r.outcome, Outcome::Synced);
    let mut all = a.clone();
    all.extend(b.iter().cloned());
    assert_archive(&pool, &ids(&all), &served(&all, &relay.url())).await;
    let oldest_b = b.iter().map(|e| e.created_at).min().unwrap_or(cursor);
    let at_oldest = b.iter().filter(|e| e.created_at == oldest_b).count() as u64;
    assert_eq!(r.emitted, 200, "only B passed on");
    assert_eq!(
        r.received,
        200 + at_oldest,
        "B once, plus the confirmation re-read of its oldest second"
    );
    // The window and its confirmation (plus an empty catch-up REQ if a second passed).
    assert!(r.reqs == 2 || r.reqs == 3, "{} REQs", r.reqs);
    assert_eq!(second.events_inserted, 200);
    let payload = cursor_payload(&pool, &relay.url()).await.expect("cursor");
    // The second pass started after newest_b; it claims its start minus live_lag.
    assert!(
        payload["synced_until"]
            .as_i64()
            .is_some_and(|s| s >= newest_b + 1 - 60 && s < newest_b),
        "{payload}"
    );
    relay.stop().await;
}
