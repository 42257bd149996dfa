//! End-to-end: real relays on 127.0.0.1 → the pipeline → a real PostgreSQL.

mod common;

use bigbrotr::sync::{sync_once, SyncOptions};
use bigbrotr_testkit::gen::{generate, GenSpec};
use common::*;

/// Regular kinds only: a third-party relay keeps just the newest replaceable event per author,
/// which would make "everything the relay holds" differ from "everything generated".
fn spec(count: usize, seed: u64) -> GenSpec {
    GenSpec {
        count,
        seed,
        kinds: vec![1, 7, 1111],
        ..GenSpec::default()
    }
}

/// A third-party relay (rust-nostr) holding 100,000 events: all archived, one provenance row
/// each, every stored event re-verifies, and the relay was asked for each event about once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_everything_from_a_third_party_relay_once() {
    let events = generate(&spec(100_000, 7));
    let relay = nostr_relay(&events).await;
    let url = relay.url().await.to_string();
    let (pool, db) = test_db().await;
    let cfg = config(&db);
    let report = sync_once(
        &cfg,
        pool.clone(),
        vec![relay_url(&url)],
        &SyncOptions::default(),
        None,
    )
    .await
    .expect("sync");
    print!("{}", report.render());
    assert_same_ids(&event_ids(&pool).await, &ids(&events), "archive");
    let by_relay = sightings_by_relay(&pool).await;
    assert_eq!(by_relay.values().sum::<i64>(), 100_000);
    assert_eq!(by_relay.len(), 1);
    assert_eq!(report.events_inserted, 100_000);
    let r = &report.relays[0];
    assert_eq!(r.committed, 100_000);
    assert!(
        r.received <= 100_000 + 100_000 / 50,
        "asked about once: received {} for 100000",
        r.received
    );
    assert_eq!(reverify_all(&pool).await, 100_000);

    // A second pass starts from the committed cursor: nothing new, almost nothing re-read.
    let again = sync_once(
        &cfg,
        pool.clone(),
        vec![relay_url(&url)],
        &SyncOptions::default(),
        None,
    )
    .await
    .expect("sync again");
    assert_eq!(again.events_inserted, 0);
    assert!(again.relays[0].received < 100, "{}", again.render());
}

/// A `.onion` relay is reached through the configured SOCKS5 proxy, which resolves the name
/// (the proxy here sends every `.onion` name to 127.0.0.1, standing in for Tor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_an_onion_relay_through_socks5() {
    let events = generate(&spec(1_500, 8));
    let relay = bigbrotr_testkit::relay::TestRelay::start(events.clone(), Default::default())
        .await
        .expect("relay");
    let proxy = socks_proxy().await;
    let onion = format!(
        "ws://bigbrotrtestrelayxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx.onion:{}",
        relay.port()
    );
    let (pool, db) = test_db().await;
    let mut cfg = config(&db);
    cfg.net.socks5 = proxy.addr.to_string();
    cfg.sync.timeouts.tor = cfg.sync.timeouts.clearnet.clone();
    let url = relay_url(&onion);
    assert_eq!(url.network(), bigbrotr::stages::model::Network::Tor);
    let report = sync_once(&cfg, pool.clone(), vec![url], &SyncOptions::default(), None)
        .await
        .expect("sync");
    assert_same_ids(
        &event_ids(&pool).await,
        &ids(&events),
        "archive through socks5",
    );
    assert!(sightings(&pool).await.iter().all(|(_, r)| r == &onion));
    let names = proxy.names.lock().expect("lock").clone();
    assert!(
        names.iter().any(|n| n.ends_with(".onion")),
        "the proxy resolved the onion name: {names:?}"
    );
    assert_eq!(report.relays[0].committed, 1_500);
}

/// The sink's direct COPY falls back to staging when rows already exist: nothing is written
/// twice and nothing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_copy_falls_back_when_rows_exist() {
    use bigbrotr::stages::model::{Batch, CursorState, Event, RelayCtx, Sighting, Ticket};
    use bigbrotr::stages::sink::{write_batch_adaptive, Layout, WriteMode};
    let (pool, _) = test_db().await;
    let relay = RelayCtx::new(relay_url("ws://127.0.0.1:9"), CursorState::default());
    let make = |evs: &[bigbrotr_testkit::gen::GenEvent]| {
        let events: Vec<Event> = evs
            .iter()
            .map(|e| Event::parse_json(e.json.as_bytes()).expect("parse"))
            .collect();
        let sightings = events
            .iter()
            .map(|e| Sighting {
                id: e.id,
                ticket: Ticket {
                    relay: relay.clone(),
                    epoch: 0,
                },
                seen_at: 1,
                created_at: e.created_at,
            })
            .collect();
        Batch { events, sightings }
    };
    let events = generate(&spec(300, 21));
    let first = make(&events[..200]);
    let mut c = pool.get().await.expect("conn");
    let r = write_batch_adaptive(&mut c, &first, Layout::default(), true)
        .await
        .expect("write");
    assert_eq!(r, (200, 200, WriteMode::Direct));
    // Overlaps the first batch: the direct attempt meets existing rows and falls back.
    let second = make(&events[100..]);
    let r = write_batch_adaptive(&mut c, &second, Layout::default(), true)
        .await
        .expect("write");
    assert_eq!(r, (100, 100, WriteMode::Staged));
    drop(c);
    assert_same_ids(&event_ids(&pool).await, &ids(&events), "archive");
    assert_eq!(sightings(&pool).await.len(), 300);
}
