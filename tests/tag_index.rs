//! The tag index (migration 013): NIP-01 tag filters answered from `event_tags` equal the
//! same filters evaluated by brute force over the generated events, for events archived by
//! the pipeline, events with U+0000 in a tag, and an archive indexed by the backfill.

mod common;

use bigbrotr::filter_sql::{refs, tag_index_ready, Conditions, SqlParams};
use bigbrotr::sync::{sync_once, SyncOptions};
use bigbrotr_testkit::gen::{sign, GenEvent};
use bigbrotr_testkit::relay::{Behavior, TestRelay};
use common::*;

/// An event and its tags, for the brute force.
struct Ev {
    gen: GenEvent,
    tags: Vec<Vec<String>>,
}

fn corpus() -> Vec<Ev> {
    let key = secp256k1::Keypair::from_secret_bytes([9u8; 32]).expect("key");
    let mut out = Vec::new();
    for i in 0..400u64 {
        let mut tags: Vec<Vec<String>> = Vec::new();
        let x = i.wrapping_mul(2654435761) % 1000;
        if x % 2 == 0 {
            tags.push(vec!["p".into(), format!("{:064x}", x % 7)]);
        }
        if x % 3 == 0 {
            tags.push(vec![
                "e".into(),
                format!("{:064x}", x % 5),
                "wss://h".into(),
            ]);
        }
        if x % 5 == 0 {
            tags.push(vec!["t".into(), format!("topic{}", x % 4)]);
            tags.push(vec!["t".into(), format!("topic{}", x % 4)]);
        }
        tags.push(vec!["alt".into(), "not indexed".into()]);
        // Few distinct seconds: ties broken by id.
        let created_at = 1_700_000_000 + (x % 40) as i64;
        let kind = [1u16, 7, 1111][(x % 3) as usize];
        let gen = sign(&key, created_at, kind, &tags, &format!("n{i}"));
        out.push(Ev { gen, tags });
    }
    let nul = vec![
        vec!["t".into(), "nul\u{0}tag".into()],
        vec!["p".into(), format!("{:064x}", 3)],
    ];
    out.push(Ev {
        gen: sign(&key, 1_700_000_050, 1, &nul, "x\u{0}y"),
        tags: nul,
    });
    out
}

/// The filter by brute force: ids newest first, ties by id descending, at most `limit`.
fn brute(
    evs: &[Ev],
    tags: &[(&str, Vec<String>)],
    kinds: Option<&[u16]>,
    limit: usize,
) -> Vec<Vec<u8>> {
    let mut m: Vec<&Ev> = evs
        .iter()
        .filter(|e| kinds.is_none_or(|k| k.contains(&e.gen.kind)))
        .filter(|e| {
            tags.iter().all(|(l, vals)| {
                e.tags
                    .iter()
                    .any(|t| t.len() >= 2 && t[0] == *l && vals.contains(&t[1]))
            })
        })
        .collect();
    m.sort_by_key(|e| std::cmp::Reverse((e.gen.created_at, e.gen.id)));
    m.into_iter()
        .take(limit)
        .map(|e| e.gen.id.to_vec())
        .collect()
}

async fn query(
    pool: &bigbrotr::db::Pool,
    tags: &[(&str, Vec<String>)],
    kinds: Option<&[u16]>,
    limit: i64,
    tag_index: bool,
) -> Vec<Vec<u8>> {
    let mut params = SqlParams::new();
    let f = Conditions {
        kinds: kinds.map(|k| k.iter().map(|k| i32::from(*k)).collect()),
        tags: tags
            .iter()
            .map(|(l, v)| (l.to_string(), v.as_slice()))
            .collect(),
        tag_index,
        ..Conditions::default()
    }
    .build(&mut params);
    let sql = format!(
        "SELECT e.id FROM {} WHERE TRUE{} ORDER BY e.created_at DESC, e.id DESC LIMIT {limit}",
        f.from, f.conditions
    );
    let conn = pool.get().await.expect("conn");
    conn.query(&sql, &refs(&params))
        .await
        .expect("query")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

type Case = (
    Vec<(&'static str, Vec<String>)>,
    Option<&'static [u16]>,
    i64,
);

fn filters() -> Vec<Case> {
    let h = |n: u64| format!("{n:064x}");
    vec![
        (vec![("p", vec![h(3)])], None, 100),
        (vec![("p", vec![h(3)])], None, 7),
        (vec![("p", vec![h(1), h(2), h(1)])], None, 100),
        (vec![("e", vec![h(0)])], Some(&[7][..]), 100),
        (vec![("t", vec!["topic1".into()])], None, 100),
        (
            vec![
                ("t", vec!["topic0".into(), "topic2".into()]),
                ("p", vec![h(0), h(2)]),
            ],
            None,
            50,
        ),
        (vec![("t", vec!["nul\u{0}tag".into()])], None, 10),
        (vec![("t", vec!["nul\u{FFFD}tag".into()])], None, 10),
        (vec![("p", vec![])], None, 10),
        (vec![("a", vec!["not indexed".into()])], None, 10),
    ]
}

async fn check(pool: &bigbrotr::db::Pool, evs: &[Ev], tag_index: bool) {
    for (tags, kinds, limit) in filters() {
        let want = brute(evs, &tags, kinds, limit as usize);
        let got = query(pool, &tags, kinds, limit, tag_index).await;
        assert_eq!(
            got, want,
            "filter {tags:?} kinds {kinds:?} limit {limit} index {tag_index}"
        );
    }
}

async fn sync(pool: &bigbrotr::db::Pool, db: &str, evs: &[Ev]) {
    let relay = TestRelay::start(
        evs.iter().map(|e| e.gen.clone()).collect(),
        Behavior::default(),
    )
    .await
    .expect("relay");
    sync_once(
        &config(db),
        pool.clone(),
        vec![relay_url(&relay.url())],
        &SyncOptions::default(),
        None,
    )
    .await
    .expect("sync");
}

/// Events synced through the pipeline are indexed by the sink: every tag filter from the
/// index equals the brute force (ids, order, limit), the U+0000 tag found by its exact value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_filters_from_the_index_equal_brute_force() {
    let (pool, db) = test_db().await;
    assert!(
        tag_index_ready(&pool.get().await.expect("conn")).await,
        "empty archive: ready"
    );
    let evs = corpus();
    sync(&pool, &db, &evs).await;
    let nul = query(&pool, &[("t", vec!["nul\u{0}tag".into()])], None, 10, true).await;
    assert_eq!(nul.len(), 1);
    check(&pool, &evs, true).await;
    check(&pool, &evs, false).await;
}

/// An archive whose events predate the index: answers stay the same before, during (with the
/// sink writing) and after the backfill, which then marks the index ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_keeps_answers_while_writes_go_on() {
    let (pool, db) = test_db().await;
    let evs = corpus();
    let (old, new) = evs.split_at(250);
    sync(&pool, &db, old).await;
    // As if migrated from 012: no tag rows, backfill not done.
    {
        let c = pool.get().await.expect("conn");
        c.batch_execute(
            "TRUNCATE event_tags; UPDATE service_state SET payload = '{\"done\":false,\"after\":\"\"}' \
             WHERE service_name = 'tag_index'",
        )
        .await
        .expect("reset");
        assert!(!tag_index_ready(&c).await);
    }
    check(&pool, old, false).await;
    // Half the backfill, then new events through the pipeline, then the rest.
    let n = bigbrotr::tag_backfill::step(&pool, 100)
        .await
        .expect("step");
    assert_eq!(n, Some(100));
    assert!(!tag_index_ready(&pool.get().await.expect("conn")).await);
    sync(&pool, &db, new).await;
    check(&pool, &evs, false).await;
    let (_tx, rx) = tokio::sync::watch::channel(false);
    bigbrotr::tag_backfill::run(pool.clone(), rx).await;
    assert!(tag_index_ready(&pool.get().await.expect("conn")).await);
    check(&pool, &evs, true).await;
    let c = pool.get().await.expect("conn");
    let rows: i64 = c
        .query_one("SELECT count(*) FROM event_tags", &[])
        .await
        .expect("count")
        .get(0);
    let want: usize = evs
        .iter()
        .map(|e| {
            let mut s: Vec<(&str, &str)> = e
                .tags
                .iter()
                .filter(|t| t[0].len() == 1)
                .map(|t| (t[0].as_str(), t[1].as_str()))
                .collect();
            s.sort();
            s.dedup();
            s.len()
        })
        .sum();
    assert_eq!(rows as usize, want);
}

/// `[archive] tag_index = false`: the sink writes no rows and tag filters scan (still equal to
/// the brute force); turned on again, the backfill indexes what was archived meanwhile and
/// filters use the index again, with every row there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tag_index_can_be_turned_off_and_on_again() {
    let (pool, db) = test_db().await;
    let evs = corpus();
    let (old, new) = evs.split_at(200);
    sync(&pool, &db, old).await;
    let rows = |pool: bigbrotr::db::Pool| async move {
        pool.get()
            .await
            .expect("conn")
            .query_one("SELECT count(*) FROM event_tags", &[])
            .await
            .expect("count")
            .get::<_, i64>(0)
    };
    let indexed_old = rows(pool.clone()).await;
    assert!(indexed_old > 0);

    bigbrotr::tag_backfill::configure(&pool, false)
        .await
        .expect("off");
    assert!(!tag_index_ready(&pool.get().await.expect("conn")).await);
    let mut cfg = config(&db);
    cfg.archive.tag_index = false;
    let relay = TestRelay::start(
        new.iter().map(|e| e.gen.clone()).collect(),
        Behavior::default(),
    )
    .await
    .expect("relay");
    sync_once(
        &cfg,
        pool.clone(),
        vec![relay_url(&relay.url())],
        &SyncOptions::default(),
        None,
    )
    .await
    .expect("sync");
    assert_eq!(
        rows(pool.clone()).await,
        indexed_old,
        "no rows written while off"
    );
    // The backfill does not run while the index is off; answers come from the scan.
    let (_tx, rx) = tokio::sync::watch::channel(false);
    bigbrotr::tag_backfill::run(pool.clone(), rx.clone()).await;
    assert!(!tag_index_ready(&pool.get().await.expect("conn")).await);
    check(&pool, &evs, false).await;

    bigbrotr::tag_backfill::configure(&pool, true)
        .await
        .expect("on");
    assert!(!tag_index_ready(&pool.get().await.expect("conn")).await);
    bigbrotr::tag_backfill::run(pool.clone(), rx).await;
    assert!(tag_index_ready(&pool.get().await.expect("conn")).await);
    check(&pool, &evs, true).await;
    assert!(rows(pool.clone()).await > indexed_old);
    // Configuring the same setting again changes nothing.
    bigbrotr::tag_backfill::configure(&pool, true)
        .await
        .expect("on again");
    assert!(tag_index_ready(&pool.get().await.expect("conn")).await);
}

/// A metadata-only archive keeps its tags only in the tag index: turning both off is refused.
#[test]
fn a_metadata_only_archive_needs_the_tag_index() {
    let e = bigbrotr::config::Config::parse(
        "[archive]\nbodies = false\ntag_index = false\n",
        std::path::Path::new("x.toml"),
    )
    .and_then(|mut c| {
        c.source = Some("x.toml".into());
        c.validate()
    })
    .expect_err("refused");
    assert!(format!("{e:#}").contains("archive.tag_index"), "{e:#}");
}

/// Migrations 016 and 017 advise pre-building their indexes `CONCURRENTLY`; one that such a
/// build left invalid is rebuilt by 017 rather than kept by `IF NOT EXISTS` and never used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_017_rebuilds_an_index_a_failed_concurrent_build_left_invalid() {
    let pg = bigbrotr_testkit::cluster::shared_for_tests()
        .await
        .expect("cluster");
    let url = pg.create_database("t").await.expect("db");
    let pool = bigbrotr::db::connect(&url, 2).await.expect("pool");
    let c = pool.get().await.expect("conn");
    migrate_below(&c, 17).await;
    // Pre-built as 017 advises, then marked as a failed concurrent build leaves it.
    c.batch_execute(
        "CREATE UNIQUE INDEX event_tags_tag_created_at_id_kind_idx
             ON event_tags (tag, created_at, event_id) INCLUDE (kind);
         UPDATE pg_index SET indisvalid = false
          WHERE indexrelid IN ('event_tags_tag_created_at_id_kind_idx'::regclass,
                               'events_created_at_id_idx'::regclass)",
    )
    .await
    .expect("invalid indexes");
    let newest = bigbrotr::db::migrations().last().map_or(0, |m| m.0);
    assert_eq!(
        bigbrotr::db::migrate(&pool).await.expect("migrate"),
        (17..=newest).collect::<Vec<i32>>()
    );
    let rows = c
        .query(
            "SELECT c.relname::text, i.indisvalid AND i.indisready
               FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
              WHERE c.relname IN ('event_tags_tag_created_at_id_kind_idx',
                                  'events_created_at_id_idx', 'event_tags_tag_created_at_idx')
              ORDER BY 1",
            &[],
        )
        .await
        .expect("indexes");
    let got: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        vec![
            ("event_tags_tag_created_at_id_kind_idx".to_string(), true),
            ("events_created_at_id_idx".to_string(), true),
        ],
        "both rebuilt and valid, the old tag index gone"
    );
}
