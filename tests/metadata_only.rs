//! Metadata-only archives (`[archive] bodies = false`): a sync keeps the same ids, sightings,
//! authors, times, kinds and tag-index rows as a whole archive of the same relay, with
//! `tags`, `content` and `sig` empty; the API answers with the metadata fields; an existing
//! archive cannot be switched to the other mode.

mod common;

use bigbrotr::config::Config;
use bigbrotr::db::Pool;
use bigbrotr::http::Http;
use bigbrotr::pipeline::Pipeline;
use bigbrotr::state::EngineState;
use bigbrotr::sync::{sync_once, SyncOptions};
use bigbrotr_testkit::gen::{generate, sign, GenEvent, GenSpec};
use bigbrotr_testkit::relay::{Behavior, TestRelay};
use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Generated events with `p` and `t` tags, plus one with U+0000 in content and a tag (the
/// case a whole archive stores through `raw_canonical`).
fn corpus() -> Vec<GenEvent> {
    let mut evs = generate(&GenSpec {
        count: 300,
        authors: 5,
        kinds: vec![1, 7, 30023],
        seed: 7,
        ..GenSpec::default()
    });
    let key = secp256k1::Keypair::from_secret_bytes([5u8; 32]).expect("key");
    for i in 0..20u64 {
        let tags = vec![
            vec!["p".to_string(), format!("{:064x}", i % 3)],
            vec!["t".to_string(), format!("topic{}", i % 2)],
        ];
        evs.push(sign(
            &key,
            1_700_000_000 + i as i64,
            1,
            &tags,
            &format!("n{i}"),
        ));
    }
    let nul = vec![vec!["t".to_string(), "a\u{0}b".to_string()]];
    evs.push(sign(&key, 1_700_000_100, 1, &nul, "x\u{0}y"));
    evs
}

fn metadata_config(db: &str) -> Config {
    let mut cfg = config(db);
    cfg.archive.bodies = false;
    cfg
}

async fn sync(cfg: &Config, pool: &Pool, relays: &[&TestRelay]) {
    let report = sync_once(
        cfg,
        pool.clone(),
        relays.iter().map(|r| relay_url(&r.url())).collect(),
        &SyncOptions::default(),
        None,
    )
    .await
    .expect("sync");
    assert!(report.events_inserted > 0, "{report:?}");
}

/// (id, pubkey, created_at, kind) of every event.
async fn metadata(pool: &Pool) -> BTreeSet<(Vec<u8>, Vec<u8>, i64, i32)> {
    let c = pool.get().await.expect("conn");
    c.query("SELECT id, pubkey, created_at, kind FROM events", &[])
        .await
        .expect("query")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

async fn tag_rows(pool: &Pool) -> BTreeSet<(Vec<u8>, i64, Vec<u8>, i32)> {
    let c = pool.get().await.expect("conn");
    c.query(
        "SELECT tag, created_at, event_id, kind FROM event_tags",
        &[],
    )
    .await
    .expect("query")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

async fn count(pool: &Pool, sql: &str) -> i64 {
    pool.get()
        .await
        .expect("conn")
        .query_one(sql, &[])
        .await
        .expect(sql)
        .get(0)
}

/// The same two relays synced into a whole and a metadata-only archive: the same ids,
/// sightings, metadata and tag-index rows; no body column filled in the second; and the disk
/// the second saves is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metadata_only_sync_keeps_the_same_ids_sightings_and_tag_index() {
    let evs = corpus();
    let (a, b) = evs.split_at(200);
    // Overlapping relays: sightings of one event on two relays.
    let r1 = TestRelay::start(a.to_vec(), Behavior::default())
        .await
        .expect("relay");
    let mut second = b.to_vec();
    second.extend_from_slice(&a[..50]);
    let r2 = TestRelay::start(second, Behavior::default())
        .await
        .expect("relay");

    let (whole, whole_db) = test_db().await;
    let (meta, meta_db) = test_db().await;
    sync(&config(&whole_db), &whole, &[&r1, &r2]).await;
    sync(&metadata_config(&meta_db), &meta, &[&r1, &r2]).await;

    assert_same_ids(&event_ids(&meta).await, &ids(&evs), "metadata-only archive");
    assert_eq!(event_ids(&meta).await, event_ids(&whole).await);
    assert_eq!(sightings(&meta).await, sightings(&whole).await);
    assert_eq!(metadata(&meta).await, metadata(&whole).await);
    assert_eq!(tag_rows(&meta).await, tag_rows(&whole).await);
    assert!(!tag_rows(&meta).await.is_empty());
    assert_eq!(
        count(
            &meta,
            "SELECT count(*) FROM events WHERE tags IS NOT NULL OR content IS NOT NULL \
             OR sig IS NOT NULL OR raw_canonical IS NOT NULL"
        )
        .await,
        0,
        "no body column is filled"
    );
    assert_eq!(
        count(&whole, "SELECT count(*) FROM events WHERE sig IS NULL").await,
        0
    );
    // The whole archive re-verifies (its bodies are real); the other has none to re-verify.
    assert_eq!(reverify_all(&whole).await, evs.len());
    let size =
        |pool: Pool| async move { count(&pool, "SELECT pg_total_relation_size('events')").await };
    let (w, m) = (size(whole.clone()).await, size(meta.clone()).await);
    println!(
        "events table with indexes: whole {w} bytes, metadata-only {m} bytes, {} events",
        evs.len()
    );
    assert!(m < w, "metadata-only stores less ({m} vs {w})");
}

/// The API of a metadata-only archive answers with id, pubkey, created_at and kind, filters
/// (tags included, through the tag index) as a whole archive does, and leaves out `tags`,
/// `content` and `sig`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_of_a_metadata_only_archive_answers_metadata_fields() {
    let evs = corpus();
    let relay = TestRelay::start(evs.clone(), Behavior::default())
        .await
        .expect("relay");
    let (whole, whole_db) = test_db().await;
    let (meta, meta_db) = test_db().await;
    sync(&config(&whole_db), &whole, &[&relay]).await;
    sync(&metadata_config(&meta_db), &meta, &[&relay]).await;

    let serve = |pool: Pool, db: String, cfg: Config| async move {
        let pipeline = Pipeline::start(&cfg, pool.clone());
        let stats = pipeline.stats.clone();
        pipeline.finish().await.expect("drain");
        let state = Arc::new(EngineState::new(stats));
        state.ready.store(true, Relaxed);
        let mut cfg = cfg;
        cfg.http.listen = "127.0.0.1:0".into();
        Http::bind(&cfg, &db, pool)
            .await
            .expect("bind")
            .expect("http configured")
            .spawn(state)
    };
    let s_whole = serve(whole.clone(), whole_db.clone(), config(&whole_db)).await;
    let s_meta = serve(meta.clone(), meta_db.clone(), metadata_config(&meta_db)).await;
    let http = reqwest::Client::new();
    let get = |addr: std::net::SocketAddr, path: &str| {
        let req = http.get(format!("http://{addr}{path}"));
        async move {
            let r = req.send().await.expect("request");
            assert_eq!(r.status().as_u16(), 200);
            r.json::<Value>().await.expect("json")
        }
    };
    let p1 = format!("{:064x}", 1);
    for path in [
        "/api/events?limit=100".to_string(),
        "/api/events?kinds=1&limit=50".to_string(),
        format!("/api/events?%23p={p1}&limit=100"),
        "/api/events?%23t=topic0&kinds=1&limit=100".to_string(),
    ] {
        let w = get(s_whole.addr(), &path).await;
        let m = get(s_meta.addr(), &path).await;
        let (we, me) = (
            w["events"].as_array().expect("events"),
            m["events"].as_array().expect("events"),
        );
        assert!(!we.is_empty(), "{path}: {w}");
        assert_eq!(we.len(), me.len(), "{path}");
        for (x, y) in we.iter().zip(me) {
            for k in ["id", "pubkey", "created_at", "kind"] {
                assert_eq!(x[k], y[k], "{path}: {k}");
            }
            for k in ["tags", "content", "sig"] {
                assert!(x.get(k).is_some(), "{path}: whole has {k}");
                assert!(y.get(k).is_none(), "{path}: metadata-only has no {k}: {y}");
            }
        }
    }
    s_whole.shutdown().await;
    s_meta.shutdown().await;
}

/// The mode is recorded at the first start and an archive cannot be switched: a whole archive
/// refuses `bodies = false` and a metadata-only one refuses `bodies = true`, naming the key,
/// and nothing is written under the refused setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_an_existing_archive_is_refused() {
    let relay = TestRelay::start(corpus(), Behavior::default())
        .await
        .expect("relay");
    for bodies in [true, false] {
        let (pool, db) = test_db().await;
        let mut cfg = config(&db);
        cfg.archive.bodies = bodies;
        // First start: the mode is recorded (an empty archive takes the configuration's).
        bigbrotr::open_database(&cfg).await.expect("first start");
        sync(&cfg, &pool, &[&relay]).await;
        bigbrotr::open_database(&cfg)
            .await
            .expect("same mode again");
        let before = count(&pool, "SELECT count(*) FROM events").await;

        let mut other = cfg.clone();
        other.archive.bodies = !bodies;
        other.source = Some("switch.toml".into());
        let e = match bigbrotr::open_database(&other).await {
            Ok(_) => panic!("bodies = {} accepted on a {bodies} archive", !bodies),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            e.contains("switch.toml")
                && e.contains("archive.bodies")
                && e.contains("cannot be switched"),
            "{e}"
        );
        assert_eq!(count(&pool, "SELECT count(*) FROM events").await, before);
    }
    // An archive with events from before the mode was recorded keeps them whole.
    let (pool, db) = test_db().await;
    sync(&config(&db), &pool, &[&relay]).await;
    let mut cfg = config(&db);
    cfg.archive.bodies = false;
    let e = match bigbrotr::open_database(&cfg).await {
        Ok(_) => panic!("a whole archive without a record accepted bodies = false"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("keeps whole events"), "{e}");
}
