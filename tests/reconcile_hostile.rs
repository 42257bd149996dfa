//! Reconciliation (NIP-77) against relays that speak it badly: each is counted, bounded, falls
//! back to the walk where it must, and the archive ends holding exactly the relay's valid
//! events — never an id the relay only claimed, never an event it was not asked for.

mod common;

use bigbrotr::sync::{sync_once, SyncOptions, SyncReport};
use bigbrotr_testkit::gen::{generate, GenSpec};
use bigbrotr_testkit::relay::{Behavior, NegMode, TestRelay};
use common::*;
use std::sync::atomic::Ordering::Relaxed;

fn spec(count: usize, seed: u64) -> GenSpec {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    GenSpec {
        count,
        seed,
        kinds: vec![1, 7],
        start_ts: now - 60 * 86_400,
        spread_secs: 58 * 86_400,
        ..GenSpec::default()
    }
}

/// Syncs one relay once and checks the archive holds exactly `events`.
async fn sync_exactly(
    relay: &TestRelay,
    events: &[bigbrotr_testkit::gen::GenEvent],
    what: &str,
) -> (SyncReport, bigbrotr::db::Pool) {
    let (pool, db) = test_db().await;
    let cfg = config(&db);
    let report = sync_once(
        &cfg,
        pool.clone(),
        vec![relay_url(&relay.url())],
        &SyncOptions::default(),
        None,
    )
    .await
    .expect("sync");
    print!("{}", report.render());
    assert_same_ids(&event_ids(&pool).await, &ids(events), what);
    assert_eq!(
        sightings(&pool).await.len(),
        events.len(),
        "{what}: sightings"
    );
    (report, pool)
}

async fn relay(events: &[bigbrotr_testkit::gen::GenEvent], b: Behavior) -> TestRelay {
    TestRelay::start(events.to_vec(), b)
        .await
        .expect("test relay")
}

/// `NEG-ERR blocked` above 300 events: the ranges are split by time until each fits, and the
/// relay is still reconciled (not walked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_ranges_are_split_until_they_fit() {
    let events = generate(&spec(2_000, 81));
    let r = relay(
        &events,
        Behavior {
            neg: NegMode::BlockedAbove(300),
            ..Default::default()
        },
    )
    .await;
    let (report, _) = sync_exactly(&r, &events, "blocked").await;
    let x = &report.relays[0];
    assert!(x.neg_fallbacks.is_empty(), "{:?}", x.neg_fallbacks);
    assert_eq!(x.neg_missing, 2_000);
    assert_eq!(x.bodies_fetched, 2_000);
    assert!(
        r.counters().neg_opens.load(Relaxed) >= 2_000 / 300,
        "split into several ranges"
    );
}

/// Every way of not speaking NIP-77 properly ends in the walk, counted by reason, with the
/// whole archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_that_speak_nip77_badly_fall_back_to_the_walk() {
    let events = generate(&spec(3_000, 82));
    let cases: Vec<(NegMode, &str)> = vec![
        (NegMode::Unsupported, "unsupported"),
        (NegMode::Error, "unsupported"),
        (NegMode::Malformed, "malformed"),
        (NegMode::Oversized(200_000), "malformed"),
        // Beyond net.max_message_bytes (4 MiB): the connection fails on the probe.
        (NegMode::Oversized(5 << 20), "unsupported"),
        (NegMode::Silent, "silent"),
        (NegMode::StallAfterOpen, "stalled"),
    ];
    for (mode, reason) in cases {
        let what = format!("{mode:?}");
        let r = relay(
            &events,
            Behavior {
                neg: mode,
                ..Default::default()
            },
        )
        .await;
        let started = std::time::Instant::now();
        let (report, _) = sync_exactly(&r, &events, &what).await;
        let x = &report.relays[0];
        assert_eq!(
            x.neg_fallbacks,
            vec![(reason, 1)],
            "{what}: one fallback, by reason"
        );
        assert_eq!(x.bodies_fetched, 0, "{what}");
        // Bounded: a probe or a reply is waited for at most 10 s (the test config's idle is 2 s).
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{what} took {:?}",
            started.elapsed()
        );
        assert!(
            r.counters().neg_opens.load(Relaxed) <= 2,
            "{what}: the relay is not probed again and again"
        );
        r.stop().await;
    }
}

/// A relay that claims ids it does not hold: they are asked for, never served, counted as
/// unserved, and nothing is stored for them; the cursor does not claim the range, so the walk
/// runs and the archive holds exactly the relay's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_claimed_but_not_served_are_counted_and_never_stored() {
    let events = generate(&spec(1_000, 83));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let phantoms: Vec<(i64, [u8; 32])> = (0u8..10)
        .map(|i| (now - 10 * 86_400 - i64::from(i), [i.wrapping_add(7); 32]))
        .collect();
    let r = relay(
        &events,
        Behavior {
            neg: NegMode::Normal,
            neg_phantoms: phantoms.clone(),
            ..Default::default()
        },
    )
    .await;
    let (report, pool) = sync_exactly(&r, &events, "phantoms").await;
    let x = &report.relays[0];
    assert_eq!(x.neg_missing, 1_010);
    assert_eq!(x.ids_unserved, 10);
    assert_eq!(x.bodies_fetched, 1_000);
    let c = pool.get().await.expect("conn");
    for (_, id) in &phantoms {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM events_relays WHERE event_id = $1",
                &[&&id[..]],
            )
            .await
            .expect("query")
            .get(0);
        assert_eq!(n, 0, "no sighting for an id the relay only claimed");
    }
}

/// A relay that answers a fetch by id with other events: each is rejected as unrequested (it
/// was not asked for), the ids count as unserved, and the walk archives the relay exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_events_served_for_asked_ids_are_rejected() {
    let events = generate(&spec(1_200, 84));
    let r = relay(
        &events,
        Behavior {
            neg: NegMode::Normal,
            ids_serve_others: true,
            ..Default::default()
        },
    )
    .await;
    let (report, _) = sync_exactly(&r, &events, "serve others").await;
    let x = &report.relays[0];
    assert_eq!(x.bodies_fetched, 0);
    assert!(x.ids_unserved > 0);
    let unrequested = x
        .rejections
        .iter()
        .find(|(k, _)| *k == "unrequested")
        .map_or(0, |(_, n)| *n);
    assert!(unrequested > 0, "{:?}", x.rejections);
}

/// A compliant relay that gains events between two passes is reconciled, not walked: the
/// second pass fetches exactly the new events, by id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_relay_reconciles_like_a_third_party_one() {
    let events = generate(&spec(2_500, 85));
    let r = relay(
        &events,
        Behavior {
            neg: NegMode::Normal,
            ..Default::default()
        },
    )
    .await;
    let (first, pool) = sync_exactly(&r, &events, "first").await;
    assert_eq!(first.relays[0].bodies_fetched, 2_500);
    let late = generate(&spec(30, 86));
    for e in &late {
        r.publish(e.clone());
    }
    // sync_once reads only the pool; the URL in the configuration is not used.
    let second = sync_once(
        &config("unused"),
        pool.clone(),
        vec![relay_url(&r.url())],
        &SyncOptions::default(),
        None,
    )
    .await
    .expect("second pass");
    print!("{}", second.render());
    assert_eq!(second.relays[0].received, 30);
    assert_eq!(second.relays[0].neg_missing, 30);
    assert_eq!(event_ids(&pool).await.len(), 2_530);
}

/// A relay without NIP-77 that answers exact NIP-45 COUNTs gains 40 events dated 40 days back
/// (far below the one-day recheck horizon): the next pass finds the window by COUNT, re-walks
/// only that, and archives them; an approximate COUNT is not trusted (the horizon is walked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_finds_the_windows_a_relay_without_nip77_gained_events_in() {
    use bigbrotr_testkit::relay::CountMode;
    let events = generate(&spec(3_000, 91));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let late = generate(&GenSpec {
        count: 40,
        seed: 92,
        kinds: vec![1],
        start_ts: now - 40 * 86_400,
        spread_secs: 600,
        ..GenSpec::default()
    });
    for (mode, found) in [(CountMode::Exact, true), (CountMode::Approximate, false)] {
        let r = relay(
            &events,
            Behavior {
                count: mode.clone(),
                ..Default::default()
            },
        )
        .await;
        let (first, pool) = sync_exactly(&r, &events, "first pass").await;
        assert_eq!(first.relays[0].neg_fallbacks, vec![("unsupported", 1)]);
        for e in &late {
            r.publish(e.clone());
        }
        let second = sync_once(
            &config("unused"),
            pool.clone(),
            vec![relay_url(&r.url())],
            &SyncOptions::default(),
            None,
        )
        .await
        .expect("second pass");
        print!("{}", second.render());
        let x = &second.relays[0];
        let got = event_ids(&pool).await.len();
        if found {
            assert_eq!(got, 3_040, "{mode:?}: the late events are archived");
            assert!(x.recheck_windows >= 1);
            assert!(
                x.received < 3_000 / 4,
                "{mode:?}: only the differing windows are walked again ({} events received)",
                x.received
            );
        } else {
            assert_eq!(got, 3_000, "{mode:?}: beyond the horizon, not found");
            assert_eq!(x.recheck_windows, 0);
        }
        r.stop().await;
    }
}
