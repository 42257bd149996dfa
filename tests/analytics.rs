//! The summary-backed statistics views against a real PostgreSQL: at every step (rows not
//! folded yet, folded in batches of any size, re-inserted, orphans deleted, rows of a
//! transaction still open, rows older than the summaries) each view returns exactly what the
//! plain views of sql/005 compute from events and events_relays; the refresher stage and the
//! orphan cleanup run on their schedule in bounded batches; the views can be timed.

mod common;

use bigbrotr::analytics::{self, Orphans};
use bigbrotr::db::Pool;
use bigbrotr::sync::{sync_once, SyncOptions};
use bigbrotr_testkit::gen::{sign, GenEvent};
use bigbrotr_testkit::relay::{Behavior, TestRelay};
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// The plain views of sql/005_views.sql, verbatim: the reference every summary-backed view
/// must match.
const REFERENCE: [(&str, &str); 7] = [
    (
        "events_statistics",
        "SELECT
            count(*)                                                        AS total_events,
            count(DISTINCT e.pubkey)                                        AS unique_pubkeys,
            count(DISTINCT e.kind)                                          AS unique_kinds,
            count(*) FILTER (WHERE event_category(e.kind) = 'regular')      AS regular_events,
            count(*) FILTER (WHERE event_category(e.kind) = 'replaceable')  AS replaceable_events,
            count(*) FILTER (WHERE event_category(e.kind) = 'ephemeral')    AS ephemeral_events,
            count(*) FILTER (WHERE event_category(e.kind) = 'addressable')  AS addressable_events,
            count(*) FILTER (WHERE event_category(e.kind) = 'other')        AS other_events,
            min(e.created_at)                                               AS earliest_event_timestamp,
            max(e.created_at)                                               AS latest_event_timestamp,
            count(*) FILTER (WHERE e.created_at >= t.now_s - 3600)          AS events_last_hour,
            count(*) FILTER (WHERE e.created_at >= t.now_s - 86400)         AS events_last_24h,
            count(*) FILTER (WHERE e.created_at >= t.now_s - 604800)        AS events_last_7d
        FROM events AS e
        CROSS JOIN (SELECT now_epoch() AS now_s) AS t",
    ),
    (
        "relays_statistics",
        "SELECT
            r.url                          AS relay_url,
            r.network,
            r.inserted_at,
            coalesce(ev.event_count, 0)    AS event_count,
            ev.first_seen_at,
            ev.last_seen_at,
            rtt.avg_rtt_open,
            rtt.avg_rtt_read,
            rtt.avg_rtt_write
        FROM relays AS r
        LEFT JOIN (
            SELECT er.relay_url,
                   count(*)        AS event_count,
                   min(er.seen_at) AS first_seen_at,
                   max(er.seen_at) AS last_seen_at
            FROM events_relays AS er
            GROUP BY er.relay_url
        ) AS ev ON ev.relay_url = r.url
        LEFT JOIN LATERAL (
            SELECT round(avg(n.rtt_open), 2)  AS avg_rtt_open,
                   round(avg(n.rtt_read), 2)  AS avg_rtt_read,
                   round(avg(n.rtt_write), 2) AS avg_rtt_write
            FROM (
                SELECT m.nip66_id
                FROM relay_metadata AS m
                WHERE m.relay_url = r.url AND m.nip66_id IS NOT NULL
                ORDER BY m.generated_at DESC
                LIMIT 10
            ) AS recent
            JOIN nip66 AS n ON n.id = recent.nip66_id
        ) AS rtt ON TRUE",
    ),
    (
        "kind_counts_total",
        "SELECT e.kind, count(*) AS event_count, count(DISTINCT e.pubkey) AS unique_pubkeys
        FROM events AS e
        GROUP BY e.kind",
    ),
    (
        "kind_counts_by_relay",
        "SELECT e.kind, er.relay_url, count(*) AS event_count
        FROM events_relays AS er
        JOIN events AS e ON e.id = er.event_id
        GROUP BY e.kind, er.relay_url",
    ),
    (
        "pubkey_counts_total",
        "SELECT encode(e.pubkey, 'hex') AS pubkey_hex, count(*) AS event_count,
               count(DISTINCT e.kind) AS unique_kinds
        FROM events AS e
        GROUP BY e.pubkey",
    ),
    (
        "pubkey_counts_by_relay",
        "SELECT encode(e.pubkey, 'hex') AS pubkey_hex, er.relay_url, count(*) AS event_count
        FROM events_relays AS er
        JOIN events AS e ON e.id = er.event_id
        GROUP BY e.pubkey, er.relay_url",
    ),
    (
        "relay_metadata_latest",
        "SELECT
            r.url AS relay_url, r.network, r.inserted_at, rm.generated_at, rm.nip11_id,
            rm.nip66_id, n11.name, n11.description, n11.banner, n11.icon, n11.pubkey,
            n11.contact, n11.supported_nips, n11.software, n11.version, n11.privacy_policy,
            n11.terms_of_service, n11.limitation, n11.extra_fields, n11.raw AS nip11_raw,
            n66.rtt_open, n66.rtt_read, n66.rtt_write, n66.openable, n66.readable,
            n66.writable, n66.dns, n66.tls, n66.http, n66.geo, n66.raw AS nip66_raw
        FROM relays AS r
        CROSS JOIN LATERAL (
            SELECT m.generated_at, m.nip11_id, m.nip66_id
            FROM relay_metadata AS m
            WHERE m.relay_url = r.url
            ORDER BY m.generated_at DESC
            LIMIT 1
        ) AS rm
        LEFT JOIN nip11 AS n11 ON n11.id = rm.nip11_id
        LEFT JOIN nip66 AS n66 ON n66.id = rm.nip66_id",
    ),
];

/// Longest wait for transactions of other tests (the cluster is shared) to end.
const WAIT: Duration = Duration::from_secs(60);

/// Asserts that every view returns exactly the rows (as a multiset, with the same column
/// types) its reference returns, both read in one snapshot and at one `now()`. Returns the
/// number of rows of each view, so callers can check the comparison was not vacuous.
async fn assert_exact(pool: &Pool, when: &str) -> BTreeMap<&'static str, i64> {
    let mut conn = pool.get().await.expect("conn");
    let tx = conn
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .expect("begin");
    let mut sizes = BTreeMap::new();
    let mut wrong = Vec::new();
    for (view, reference) in REFERENCE {
        let diff: Vec<String> = tx
            .query(
                &format!(
                    "SELECT d.side || ' ' || d.row FROM (
                         SELECT 'view only:' AS side, to_jsonb(x)::text AS row
                         FROM (SELECT * FROM {view} EXCEPT ALL ({reference})) AS x
                         UNION ALL
                         SELECT 'reference only:', to_jsonb(y)::text
                         FROM (({reference}) EXCEPT ALL SELECT * FROM {view}) AS y
                     ) AS d ORDER BY 1 LIMIT 6"
                ),
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("{when}: comparing {view}: {e}"))
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !diff.is_empty() {
            wrong.push(format!("{view}: {}", diff.join("\n    ")));
        }
        let n: i64 = tx
            .query_one(&format!("SELECT count(*) FROM {view}"), &[])
            .await
            .expect("count")
            .get(0);
        sizes.insert(view, n);
    }
    tx.rollback().await.expect("rollback");
    assert!(
        wrong.is_empty(),
        "{when}: views differ from the plain aggregates:\n  {}",
        wrong.join("\n  ")
    );
    sizes
}

/// With the refresher further behind than `view_tail`, every view answers as of
/// watermark + view_tail: exactly the plain aggregates over the rows numbered up to that
/// (all of relay_metadata for relay_metadata_latest, which never lags; earliest/latest
/// timestamps, always current, left out).
async fn assert_as_of_view_bound(pool: &Pool, when: &str) {
    let conn = pool.get().await.expect("conn");
    let bounded = |table: &str| {
        format!(
            "(SELECT * FROM {table}
              WHERE ingest_seq IS NULL OR ingest_seq <= analytics_view_bound())"
        )
    };
    let mut wrong = Vec::new();
    for (view, reference) in REFERENCE {
        let reference = if view == "relay_metadata_latest" {
            reference.to_string()
        } else {
            reference
                .replace(
                    "FROM events AS e",
                    &format!("FROM {} AS e", bounded("events")),
                )
                .replace(
                    "JOIN events AS e",
                    &format!("JOIN {} AS e", bounded("events")),
                )
                .replace(
                    "FROM events_relays AS er",
                    &format!("FROM {} AS er", bounded("events_relays")),
                )
                .replace(
                    "FROM relay_metadata AS m",
                    &format!("FROM {} AS m", bounded("relay_metadata")),
                )
        };
        let row = "to_jsonb(x) - ARRAY['earliest_event_timestamp', 'latest_event_timestamp']";
        let diff: Vec<String> = conn
            .query(
                &format!(
                    "SELECT d::text FROM (
                         (SELECT {row} FROM {view} AS x EXCEPT ALL SELECT {row} FROM ({reference}) AS x)
                         UNION ALL
                         (SELECT {row} FROM ({reference}) AS x EXCEPT ALL SELECT {row} FROM {view} AS x)
                     ) AS t (d) LIMIT 6"
                ),
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("{when}: comparing {view}: {e}"))
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !diff.is_empty() {
            wrong.push(format!("{view}: {}", diff.join("\n    ")));
        }
    }
    assert!(
        wrong.is_empty(),
        "{when}: views differ from the aggregates as of the view bound:\n  {}",
        wrong.join("\n  ")
    );
}

/// Every row of every keyed view, as JSON text.
async fn view_rows(pool: &Pool) -> BTreeMap<&'static str, BTreeSet<String>> {
    let c = pool.get().await.expect("conn");
    let mut out = BTreeMap::new();
    for (view, _) in REFERENCE {
        if view == "events_statistics" {
            continue;
        }
        let rows = c
            .query(&format!("SELECT to_jsonb(v)::text FROM {view} AS v"), &[])
            .await
            .expect("rows")
            .iter()
            .map(|r| r.get(0))
            .collect();
        out.insert(view, rows);
    }
    out
}

/// (total_events, unique_pubkeys, unique_kinds) of events_statistics.
async fn totals(pool: &Pool) -> (i64, i64, i64) {
    let r = pool
        .get()
        .await
        .expect("conn")
        .query_one(
            "SELECT total_events, unique_pubkeys, unique_kinds FROM events_statistics",
            &[],
        )
        .await
        .expect("stats");
    (r.get(0), r.get(1), r.get(2))
}

/// Refreshes until everything committed is folded.
async fn refresh_everything(pool: &Pool, batch: u32) -> analytics::RefreshReport {
    let r = analytics::refresh_all(pool, batch, WAIT, None)
        .await
        .expect("refresh");
    assert!(r.caught_up && !r.waiting, "refresh did not finish: {r:?}");
    let st = analytics::status(pool).await.expect("status");
    assert_eq!(st.pending(), 0, "{st:?}");
    r
}

fn now() -> i64 {
    bigbrotr::stages::model::now_secs()
}

fn key(n: u8) -> secp256k1::Keypair {
    secp256k1::Keypair::from_secret_bytes([n; 32]).expect("key")
}

/// Signed events of 5 authors over many kinds (every NIP-01 category and "other"), created
/// from years ago to a minute ago, with a cluster around each window boundary of
/// events_statistics (an hour, a day, a week ago) so the partial first minute matters.
fn events(n: usize, salt: &str) -> Vec<GenEvent> {
    let kinds = [0u16, 1, 1, 1, 3, 7, 7, 45, 1111, 10002, 20001, 30023, 40001];
    let now = now();
    (0..n)
        .map(|i| {
            let created_at = match i % 6 {
                0 => now - 3600 + (i as i64 % 240) - 120,
                1 => now - 86_400 + (i as i64 % 240) - 120,
                2 => now - 604_800 + (i as i64 % 240) - 120,
                3 => now - (i as i64 * 7919) % 10_000_000,
                4 => now - 60 - i as i64,
                _ => 1_600_000_000 + i as i64 * 61,
            };
            sign(
                &key(1 + (i % 5) as u8),
                created_at,
                kinds[i % kinds.len()],
                &[vec!["t".into(), salt.into()]],
                &format!("{salt} {i}"),
            )
        })
        .collect()
}

/// The fields of a generated event insert_event needs.
struct Fields {
    id: Vec<u8>,
    pubkey: Vec<u8>,
    created_at: i64,
    kind: i32,
    tags: serde_json::Value,
    content: String,
    sig: Vec<u8>,
}

fn fields(e: &GenEvent) -> Fields {
    let v: serde_json::Value = serde_json::from_str(&e.json).expect("json");
    Fields {
        id: e.id.to_vec(),
        pubkey: e.pubkey.to_vec(),
        created_at: e.created_at,
        kind: i32::from(e.kind),
        tags: v["tags"].clone(),
        content: v["content"].as_str().expect("content").to_string(),
        sig: hex::decode(v["sig"].as_str().expect("sig")).expect("hex"),
    }
}

/// Records `e` seen on `relay` through the SQL procedure insert_event.
async fn insert_event(c: &impl tokio_postgres::GenericClient, e: &GenEvent, relay: &str) {
    let f = fields(e);
    c.execute(
        "SELECT insert_event($1, $2, $3, $4, $5, $6, $7, $8, 'clearnet', 1, $9)",
        &[
            &f.id,
            &f.pubkey,
            &f.created_at,
            &f.kind,
            &f.tags,
            &f.content,
            &f.sig,
            &relay,
            &(1_700_000_000 + f.created_at % 1000),
        ],
    )
    .await
    .expect("insert_event");
}

/// Stores `e` without any sighting (an orphan).
async fn insert_orphan(c: &impl tokio_postgres::GenericClient, e: &GenEvent) {
    let f = fields(e);
    c.execute(
        "INSERT INTO events (id, pubkey, created_at, kind, tags, content, sig)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &f.id,
            &f.pubkey,
            &f.created_at,
            &f.kind,
            &f.tags,
            &f.content,
            &f.sig,
        ],
    )
    .await
    .expect("insert orphan");
}

/// Records a sighting without its event (it arrives later).
async fn insert_sighting(c: &impl tokio_postgres::GenericClient, e: &GenEvent, relay: &str) {
    c.execute(
        "INSERT INTO events_relays (event_id, relay_url, seen_at) VALUES ($1, $2, 5)",
        &[&e.id.to_vec(), &relay],
    )
    .await
    .expect("insert sighting");
}

/// `n` monitoring snapshots of `relay` (NIP-11 document and check result with RTTs), one
/// minute apart from `t0`; every third has no check result, every fourth no document.
async fn insert_checks(c: &impl tokio_postgres::GenericClient, relay: &str, t0: i64, n: i64) {
    for i in 0..n {
        let nip11 = (i % 4 != 3).then(|| {
            serde_json::json!({"name": format!("relay {relay}"), "supported_nips": [1, 11, i % 3]})
        });
        let nip66 = (i % 3 != 2).then(|| {
            serde_json::json!({"rtt_open": 10 + (i * 37) % 300, "rtt_read": 5 + (i * 11) % 90,
                               "openable": true, "readable": i % 2 == 0, "check": i})
        });
        c.execute(
            "SELECT insert_relay_metadata($1, 'clearnet', 1, $2, $3, $4)",
            &[&relay, &(t0 + i * 60), &nip11, &nip66],
        )
        .await
        .expect("insert_relay_metadata");
    }
}

/// Syncs `relays` into the archive through the real pipeline.
async fn sync(pool: &Pool, db: &str, relays: &[&TestRelay]) {
    let urls: Vec<_> = relays.iter().map(|r| relay_url(&r.url())).collect();
    bigbrotr::register_relays(pool, &urls)
        .await
        .expect("register");
    sync_once(
        &config(db),
        pool.clone(),
        urls,
        &SyncOptions::default(),
        None,
    )
    .await
    .expect("sync");
}

/// Events in the archive without any sighting.
async fn orphan_count(pool: &Pool) -> i64 {
    pool.get()
        .await
        .expect("conn")
        .query_one(
            "SELECT count(*) FROM events AS e
             WHERE NOT EXISTS (SELECT 1 FROM events_relays AS s WHERE s.event_id = e.id)",
            &[],
        )
        .await
        .expect("orphans")
        .get(0)
}

/// The archive of the main test: three relays synced through the pipeline (overlapping
/// contents), sightings on a fourth relay written by insert_event, orphans, a sighting whose
/// event is not there yet, and monitoring snapshots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_match_the_plain_aggregates_at_every_step() {
    let (pool, db) = test_db().await;
    let all = events(240, "main");
    let a = TestRelay::start(all[..120].to_vec(), Behavior::default())
        .await
        .expect("relay a");
    let b = TestRelay::start(all[80..200].to_vec(), Behavior::default())
        .await
        .expect("relay b");
    let c = TestRelay::start(all[150..].to_vec(), Behavior::default())
        .await
        .expect("relay c");
    sync(&pool, &db, &[&a, &b, &c]).await;
    let extra = "wss://extra.example.com";
    let conn = pool.get().await.expect("conn");
    for e in all.iter().step_by(3) {
        insert_event(&*conn, e, extra).await;
    }
    let orphans = events(9, "orphan");
    for e in &orphans {
        insert_orphan(&*conn, e).await;
    }
    let late = events(4, "late");
    for e in &late {
        insert_sighting(&*conn, e, &a.url()).await;
    }
    insert_checks(&*conn, &a.url(), 1_700_000_000, 14).await;
    insert_checks(&*conn, extra, 1_700_000_000, 5).await;
    // From a client whose clock is ahead: counted in every window, as by the plain view.
    let future = sign(&key(9), now() + 5000, 1, &[], "from the future");
    insert_event(&*conn, &future, extra).await;

    // Nothing folded yet: the views read everything from the tail.
    let st = analytics::status(&pool).await.expect("status");
    assert!(
        st.pending_events >= 240 && st.pending_sightings > 240,
        "{st:?}"
    );
    let sizes = assert_exact(&pool, "before any refresh").await;
    assert_eq!(totals(&pool).await.0, 250);
    for (view, n) in &sizes {
        assert!(
            *n > 0,
            "{view} is empty: the comparison would prove nothing"
        );
    }

    // Folded 7 rows at a time, exact after every transaction.
    let deadline = Instant::now() + WAIT;
    let mut steps = 0;
    loop {
        let step = analytics::refresh_step(&pool, 7).await.expect("step");
        assert!(step.rows() <= 7, "{step:?}");
        steps += 1;
        assert_exact(&pool, &format!("after step {steps}")).await;
        if step.caught_up && !step.waiting {
            break;
        }
        assert!(Instant::now() < deadline, "refresh never caught up");
        if step.rows() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(steps > 50, "{steps} steps for ~900 rows in batches of 7");
    assert_eq!(analytics::status(&pool).await.expect("status").pending(), 0);

    // Rows arriving after the fold: the late events (their sightings were folded before
    // them), new sightings of folded events, newer snapshots.
    for e in &late {
        insert_orphan(&*conn, e).await;
    }
    for e in all.iter().skip(1).step_by(5) {
        insert_event(&*conn, e, "wss://another.example.com").await;
    }
    insert_checks(&*conn, &a.url(), 1_800_000_000, 3).await;
    assert_exact(&pool, "new rows on top of the summaries").await;
    refresh_everything(&pool, 1000).await;
    assert_exact(&pool, "after folding the new rows").await;

    // Re-inserting everything changes nothing: no row is written, so nothing is counted.
    let before = (view_rows(&pool).await, totals(&pool).await);
    sync(&pool, &db, &[&a, &b, &c]).await;
    for e in all.iter().step_by(3) {
        insert_event(&*conn, e, extra).await;
    }
    for e in &orphans {
        conn.execute(
            "INSERT INTO events (id, pubkey, created_at, kind, tags, content, sig)
             SELECT id, pubkey, created_at, kind, tags, content, sig FROM events WHERE id = $1
             ON CONFLICT (id) DO NOTHING",
            &[&e.id.to_vec()],
        )
        .await
        .expect("re-insert orphan");
    }
    let st = analytics::status(&pool).await.expect("status");
    assert_eq!(
        (st.pending_events, st.pending_sightings),
        (0, 0),
        "a duplicate got a number: {st:?}"
    );
    refresh_everything(&pool, 1000).await;
    assert_eq!((view_rows(&pool).await, totals(&pool).await), before);
    assert_exact(&pool, "after re-inserting").await;

    // Orphans: deleted in batches of at most 2, every folded one taken out of the summaries.
    assert_eq!(orphan_count(&pool).await, 9);
    let (total, authors, _) = totals(&pool).await;
    let mut deleted = 0;
    loop {
        let n = analytics::delete_orphans(&pool, Orphans::Events, 2)
            .await
            .expect("delete");
        assert!(n <= 2, "{n} deleted by a batch of 2");
        if n == 0 {
            break;
        }
        deleted += n;
        assert_exact(&pool, &format!("after deleting {deleted} orphans")).await;
    }
    assert_eq!(deleted, 9);
    assert_eq!(orphan_count(&pool).await, 0);
    let after = totals(&pool).await;
    assert_eq!(after.0, total - 9);
    assert_eq!(after.1, authors, "every author still has events");

    drop(conn);
    for r in [a, b, c] {
        r.stop().await;
    }
}

/// A refresh interrupted after any transaction leaves exact views: folded one row at a time,
/// compared after each; orphans deleted both before and after they were folded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_stopped_after_any_batch_is_exact() {
    let (pool, _db) = test_db().await;
    let conn = pool.get().await.expect("conn");
    let evs = events(24, "one");
    for (i, e) in evs.iter().enumerate() {
        insert_event(&*conn, e, "wss://one.example.com").await;
        if i % 3 == 0 {
            insert_event(&*conn, e, "wss://two.example.com").await;
        }
    }
    let orphans = events(4, "one-orphan");
    insert_orphan(&*conn, &orphans[0]).await;
    insert_orphan(&*conn, &orphans[1]).await;
    insert_checks(&*conn, "wss://one.example.com", 1_700_000_000, 4).await;
    // An orphan deleted before it was ever folded.
    assert_eq!(
        analytics::delete_orphans(&pool, Orphans::Events, 1)
            .await
            .expect("delete"),
        1
    );
    assert_exact(&pool, "orphan deleted from the tail").await;

    let deadline = Instant::now() + WAIT;
    let mut folded = 0;
    loop {
        let step = analytics::refresh_step(&pool, 1).await.expect("step");
        assert!(step.rows() <= 1, "{step:?}");
        folded += step.rows();
        assert_exact(&pool, &format!("after {folded} rows")).await;
        if step.caught_up && !step.waiting {
            break;
        }
        assert!(Instant::now() < deadline, "refresh never caught up");
        if step.rows() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // 24 events, 32 sightings, 1 orphan left, 4 snapshots.
    assert_eq!(folded, 24 + 32 + 1 + 4);

    // The remaining orphan is folded by now; deleting it takes it out of the summaries.
    insert_orphan(&*conn, &orphans[2]).await;
    assert_eq!(
        analytics::delete_orphans(&pool, Orphans::Events, 10)
            .await
            .expect("delete"),
        2
    );
    assert_exact(&pool, "folded and unfolded orphans deleted").await;
    assert_eq!(totals(&pool).await.0, 24);
}

/// Numbers are handed out in one order and committed in another: a transaction holding a
/// low number while later ones commit must not be skipped by the watermark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_an_open_transaction_are_folded_once_it_commits() {
    let (pool, db) = test_db().await;
    let evs = events(6, "open");
    let (mut slow, conn) = tokio_postgres::connect(&db, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let driver = tokio::spawn(conn);
    let tx = slow.transaction().await.expect("begin");
    insert_event(&tx, &evs[0], "wss://slow.example.com").await;
    insert_event(&tx, &evs[1], "wss://slow.example.com").await;

    // Later numbers, committed first.
    let c = pool.get().await.expect("conn");
    for e in &evs[2..] {
        insert_event(&*c, e, "wss://fast.example.com").await;
    }
    for _ in 0..5 {
        let step = analytics::refresh_step(&pool, 1000).await.expect("step");
        assert!(
            step.waiting,
            "the open transaction must hold the bound back: {step:?}"
        );
        assert_exact(&pool, "while a writer is open").await;
    }
    let st = analytics::status(&pool).await.expect("status");
    assert!(
        st.pending_events >= 4,
        "nothing past the open transaction's rows may be folded yet: {st:?}"
    );
    assert_eq!(totals(&pool).await.0, 4);

    tx.commit().await.expect("commit");
    refresh_everything(&pool, 1000).await;
    assert_exact(&pool, "after the slow writer committed").await;
    assert_eq!(totals(&pool).await.0, 6);
    let per_relay: BTreeMap<String, i64> = pool
        .get()
        .await
        .expect("conn")
        .query("SELECT relay_url, event_count FROM relays_statistics", &[])
        .await
        .expect("relays_statistics")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        per_relay,
        BTreeMap::from([
            ("wss://fast.example.com".to_string(), 4),
            ("wss://slow.example.com".to_string(), 2)
        ])
    );
    drop(slow);
    let _ = driver.await;
}

/// Writers committing in parallel (numbers commit out of order), a refresher folding a few
/// rows at a time and the orphan cleanup, all at once: no row is skipped or counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_refresher_and_cleanup_stay_exact() {
    let (pool, _db) = test_db().await;
    {
        let c = pool.get().await.expect("conn");
        for e in &events(6, "race-orphan") {
            insert_orphan(&*c, e).await;
        }
    }
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let c = pool.get().await.expect("conn");
                let relay = format!("wss://writer{w}.example.com");
                for (i, e) in events(150, &format!("race{w}")).iter().enumerate() {
                    insert_event(&*c, e, &relay).await;
                    if i % 20 == 0 {
                        insert_checks(&*c, &relay, 1_700_000_000 + i as i64, 1).await;
                    }
                }
            })
        })
        .collect();
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let refresher = {
        let (pool, done) = (pool.clone(), done_rx.clone());
        tokio::spawn(async move {
            let mut steps = 0u64;
            while !*done.borrow() {
                analytics::refresh_step(&pool, 1 + (steps % 4) as u32)
                    .await
                    .expect("step");
                steps += 1;
            }
            steps
        })
    };
    let cleaner = {
        let (pool, done) = (pool.clone(), done_rx.clone());
        tokio::spawn(async move {
            let mut deleted = 0;
            while !*done.borrow() {
                deleted += analytics::delete_orphans(&pool, Orphans::Events, 1)
                    .await
                    .expect("delete");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            deleted
        })
    };
    for w in writers {
        w.await.expect("writer");
    }
    done_tx.send(true).expect("done");
    let steps = refresher.await.expect("refresher");
    let deleted = cleaner.await.expect("cleaner")
        + analytics::cleanup_orphans(&pool, 100, None)
            .await
            .expect("cleanup")
            .events;
    assert!(steps > 0);
    assert_eq!(deleted, 6);
    refresh_everything(&pool, 1000).await;
    assert_exact(&pool, "after concurrent writers").await;
    assert_eq!(totals(&pool).await.0, 600);
}

/// An archive written before migration 008: its rows carry no number and are counted by the
/// migration's initial build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_counts_rows_written_before_it() {
    let pg = bigbrotr_testkit::cluster::shared_for_tests()
        .await
        .expect("cluster");
    let url = pg.create_database("t").await.expect("db");
    let pool = bigbrotr::db::connect(&url, 4).await.expect("pool");
    {
        let c = pool.get().await.expect("conn");
        migrate_below(&c, 8).await;
        let evs = events(30, "old");
        for (i, e) in evs.iter().enumerate() {
            insert_event(&*c, e, "wss://old.example.com").await;
            if i % 2 == 0 {
                insert_event(&*c, e, "wss://older.example.com").await;
            }
        }
        insert_orphan(&*c, &events(1, "old-orphan")[0]).await;
        insert_checks(&*c, "wss://old.example.com", 1_700_000_000, 12).await;
    }
    let newest = bigbrotr::db::migrations().last().map_or(0, |m| m.0);
    assert_eq!(
        bigbrotr::db::migrate(&pool).await.expect("migrate"),
        (8..=newest).collect::<Vec<i32>>()
    );
    let st = analytics::status(&pool).await.expect("status");
    assert_eq!(st.pending(), 0, "all counted by the initial build: {st:?}");
    assert!(st.rebuilt_at.is_some());
    let sizes = assert_exact(&pool, "after migrating an old archive").await;
    assert_eq!(sizes["relays_statistics"], 2);
    assert_eq!(totals(&pool).await.0, 31);

    // The old rows are folded: deleting the old orphan decrements the summaries.
    assert_eq!(
        analytics::delete_orphans(&pool, Orphans::Events, 5)
            .await
            .expect("delete"),
        1
    );
    assert_exact(&pool, "old orphan deleted").await;
    assert_eq!(totals(&pool).await.0, 30);
}

/// `bigbrotr run`'s stage: refreshes every interval while writers keep committing, and cleans
/// orphans (events, NIP-11 documents, check results) on its own schedule in bounded batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stage_refreshes_and_cleans_on_schedule() {
    let (pool, db) = test_db().await;
    let mut cfg = config(&db);
    cfg.analytics.interval = bigbrotr::config::Seconds::from_millis(100);
    cfg.analytics.batch = 5;
    cfg.analytics.orphan_interval = bigbrotr::config::Seconds::from_millis(200);
    cfg.analytics.orphan_batch = 2;
    {
        let c = pool.get().await.expect("conn");
        for e in &events(7, "stage-orphan") {
            insert_orphan(&*c, e).await;
        }
        // Documents no snapshot references.
        c.batch_execute(
            "SELECT insert_nip11('{\"name\": \"unreferenced\"}');
             SELECT insert_nip66('{\"rtt_open\": 1}');",
        )
        .await
        .expect("orphan documents");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stage = {
        let (cfg, pool) = (cfg.clone(), pool.clone());
        tokio::spawn(async move { analytics::run_forever(&cfg, &pool, stop_rx).await })
    };
    // A writer committing one event per transaction meanwhile.
    let evs = events(60, "stage");
    {
        let c = pool.get().await.expect("conn");
        for (i, e) in evs.iter().enumerate() {
            insert_event(&*c, e, "wss://stage.example.com").await;
            if i % 10 == 0 {
                insert_checks(&*c, "wss://stage.example.com", 1_700_000_000 + i as i64, 1).await;
            }
        }
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let st = analytics::status(&pool).await.expect("status");
        let docs: i64 = pool
            .get()
            .await
            .expect("conn")
            .query_one(
                "SELECT (SELECT count(*) FROM nip11 WHERE name = 'unreferenced')
                      + (SELECT count(*) FROM nip66 WHERE rtt_open = 1)",
                &[],
            )
            .await
            .expect("docs")
            .get(0);
        if st.pending() == 0 && orphan_count(&pool).await == 0 && docs == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stage did not catch up: {st:?}, orphan documents {docs}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_tx.send(true).expect("stop");
    stage.await.expect("join").expect("stage");
    assert_exact(&pool, "after the stage caught up").await;
    assert_eq!(totals(&pool).await.0, 60);
}

/// A cleanup of many orphans never deletes more than a batch per transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_cleanup_is_bounded_per_transaction() {
    let (pool, _db) = test_db().await;
    {
        let c = pool.get().await.expect("conn");
        for e in &events(11, "bounded") {
            insert_orphan(&*c, e).await;
        }
        insert_event(&*c, &events(1, "kept")[0], "wss://kept.example.com").await;
    }
    refresh_everything(&pool, 100).await;
    let report = analytics::cleanup_orphans(&pool, 3, None)
        .await
        .expect("cleanup");
    assert_eq!(report.events, 11);
    // 3 + 3 + 3 + 2 for the events, then one empty call each for the documents.
    assert_eq!(report.batches, 4 + 2);
    assert_eq!(orphan_count(&pool).await, 0);
    assert_exact(&pool, "after the cleanup").await;
    assert_eq!(totals(&pool).await.0, 1);
}

/// The refresher and the cleanup refuse isolation levels in which they could miss what the
/// other committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_snapshot_isolation() {
    let (pool, _db) = test_db().await;
    let mut conn = pool.get().await.expect("conn");
    for f in [
        "analytics_refresh(10)",
        "delete_orphan_events(10)",
        "analytics_rebuild()",
    ] {
        let tx = conn
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .start()
            .await
            .expect("begin");
        insert_orphan(&tx, &events(1, f)[0]).await;
        let e = tx
            .query_one(&format!("SELECT {f}"), &[])
            .await
            .expect_err(f);
        let msg = e.as_db_error().map(|d| d.message()).unwrap_or_default();
        assert!(msg.contains("READ COMMITTED"), "{f}: {e:?}");
        tx.rollback().await.expect("rollback");
    }
}

/// Further behind than `view_tail`, the views answer as of watermark + view_tail in one
/// consistent cut (never slower, never inexact about that point), and are exact again once
/// the refresher catches up; relay_metadata_latest never lags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_view_tail_the_views_answer_as_of_the_bound() {
    let (pool, _db) = test_db().await;
    analytics::set_view_tail(&pool, 7).await.expect("view_tail");
    let c = pool.get().await.expect("conn");
    let evs = events(20, "lag");
    for (i, e) in evs.iter().enumerate() {
        insert_event(&*c, e, "wss://lag.example.com").await;
        if i % 4 == 0 {
            insert_checks(
                &*c,
                "wss://lag.example.com",
                1_700_000_000 + i as i64 * 600,
                2,
            )
            .await;
        }
        // A sighting whose event comes later, and the other way round, across the bound.
        if i == 2 {
            insert_sighting(&*c, &evs[19], "wss://early.example.com").await;
        }
    }
    let st = analytics::status(&pool).await.expect("status");
    assert!(st.views_lag && st.view_tail == 7, "{st:?}");
    assert_as_of_view_bound(&pool, "7 numbers merged").await;
    assert!(
        totals(&pool).await.0 < 20,
        "the views must not see every event yet"
    );
    let latest: i64 = c
        .query_one(
            "SELECT generated_at FROM relay_metadata_latest WHERE relay_url = 'wss://lag.example.com'",
            &[],
        )
        .await
        .expect("latest")
        .get(0);
    assert_eq!(latest, 1_700_000_000 + 16 * 600 + 60, "never lags");

    // Folded a few rows at a time: a consistent cut after every step, exact at the end.
    let deadline = Instant::now() + WAIT;
    loop {
        let step = analytics::refresh_step(&pool, 5).await.expect("step");
        assert_as_of_view_bound(&pool, "while catching up").await;
        if step.caught_up && !step.waiting {
            break;
        }
        assert!(Instant::now() < deadline, "refresh never caught up");
        if step.rows() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let st = analytics::status(&pool).await.expect("status");
    assert!(!st.views_lag, "{st:?}");
    assert_exact(&pool, "caught up").await;
    assert_eq!(totals(&pool).await.0, 20);
}

/// `bigbrotr analytics explain`: every view is timed, with its plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_times_every_view() {
    let (pool, _db) = test_db().await;
    {
        let c = pool.get().await.expect("conn");
        for e in &events(12, "explain") {
            insert_event(&*c, e, "wss://explain.example.com").await;
        }
        insert_checks(&*c, "wss://explain.example.com", 1_700_000_000, 3).await;
    }
    refresh_everything(&pool, 100).await;
    let timings = analytics::explain(&pool, 2).await.expect("explain");
    let views: BTreeSet<&str> = timings.iter().map(|t| t.view).collect();
    let expected: BTreeSet<&str> = REFERENCE.iter().map(|(v, _)| *v).collect();
    assert_eq!(views, expected);
    for t in &timings {
        assert!(
            t.first_ms >= 0.0 && t.median_ms >= 0.0 && t.max_ms >= t.median_ms,
            "{t:?}"
        );
        assert!(t.plan.contains("Execution Time"), "{}", t.plan);
    }
    let stats = timings
        .iter()
        .find(|t| t.view == "events_statistics")
        .expect("events_statistics timed");
    assert_eq!(stats.rows, 1);
    // The busiest author was picked for the lookups: they find it.
    let lookup = timings
        .iter()
        .find(|t| t.view == "pubkey_counts_total" && t.sql.contains("WHERE"))
        .expect("author lookup");
    assert_eq!(lookup.rows, 1, "{}", lookup.sql);
    let table = analytics::render_timings(&timings, true);
    assert_eq!(
        table.lines().filter(|l| l.starts_with("| ")).count(),
        timings.len() + 1
    );
}

/// Rows of `analytics_early_sightings` (sql/011: folded sightings whose event is not folded yet).
async fn early_sightings(pool: &Pool) -> i64 {
    pool.get()
        .await
        .expect("conn")
        .query_one("SELECT count(*) FROM analytics_early_sightings", &[])
        .await
        .expect("early sightings")
        .get(0)
}

/// The set-based fold (sql/011): a sighting folded before its event is remembered and paired
/// when the event folds, in batches of one row or one large batch, across a rebuild; the lag
/// counts what is not folded and returns to 0; the batch grows with the backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sightings_folded_before_their_events_are_paired_later() {
    let (pool, _db) = test_db().await;
    let conn = pool.get().await.expect("conn");
    let evs = events(12, "early");
    for (i, e) in evs.iter().enumerate() {
        insert_sighting(&*conn, e, "wss://early.example.com").await;
        if i % 2 == 0 {
            insert_sighting(&*conn, e, "wss://second.example.com").await;
        }
    }
    let lag = analytics::lag(&pool).await.expect("lag");
    assert!(lag.seq >= 18, "{lag:?}");
    assert!(lag.seconds >= 0.0, "{lag:?}");
    refresh_everything(&pool, 5).await;
    assert_eq!(early_sightings(&pool).await, 18);
    assert_exact(&pool, "sightings folded before their events").await;

    // Half the events arrive (insert_event adds the sighting already stored: not written),
    // folded a row at a time.
    for e in &evs[..6] {
        insert_event(&*conn, e, "wss://early.example.com").await;
    }
    assert_exact(&pool, "events behind their folded sightings").await;
    refresh_everything(&pool, 1).await;
    assert_exact(&pool, "half the events folded").await;
    assert_eq!(early_sightings(&pool).await, 18 - (6 + 3));

    // A rebuild recomputes what is still waiting for its event.
    analytics::rebuild(&pool).await.expect("rebuild");
    assert_eq!(early_sightings(&pool).await, 9);
    assert_exact(&pool, "after a rebuild").await;

    // The rest, with a new sighting of an event folded before, in one large batch.
    for e in &evs[6..] {
        insert_event(&*conn, e, "wss://early.example.com").await;
    }
    insert_sighting(&*conn, &evs[1], "wss://third.example.com").await;
    refresh_everything(&pool, 1_000_000).await;
    assert_exact(&pool, "every event folded").await;
    assert_eq!(early_sightings(&pool).await, 0);
    assert_eq!(totals(&pool).await.0, 12);
    let lag = analytics::lag(&pool).await.expect("lag");
    assert_eq!((lag.seq, lag.seconds), (0, 0.0), "{lag:?}");

    assert_eq!(analytics::step_batch(50_000, 0), 50_000);
    assert_eq!(analytics::step_batch(50_000, 300_000), 300_000);
    assert_eq!(
        analytics::step_batch(50_000, i64::MAX),
        50_000 * analytics::CATCH_UP_FACTOR
    );
}
