//! `bigbrotr bench` end to end on a small corpus: its own relay processes, the real database,
//! its archive check, and figures consistent with what the database holds.

mod common;

use common::{output_within, test_db};
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_archives_checks_and_reports_consistent_figures() {
    let (pool, url) = test_db().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = output_within(
        Command::new(env!("CARGO_BIN_EXE_bigbrotr"))
            .args([
                "bench",
                "--events",
                "3000",
                "--relays",
                "3",
                "--overlap",
                "0.5",
            ])
            .args(["--json", "--dir"])
            .arg(dir.path())
            .args(["--database-url", &url])
            .env("BIGBROTR_LOG", "warn"),
        std::time::Duration::from_secs(600),
        "bigbrotr bench",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("frames/s") && stdout.contains("verify limit"),
        "{stdout}"
    );
    let report: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON report in:\n{stdout}"));
    let c = pool.get().await.expect("conn");
    let events: i64 = c
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .expect("count")
        .get(0);
    let sightings: i64 = c
        .query_one("SELECT count(*) FROM events_relays", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(events, 3000);
    assert_eq!(report["events"], 3000, "{report}");
    let frames = report["frames"].as_u64().expect("frames");
    // Each relay holds its third plus half of the corpus; a few boundary re-reads are allowed.
    assert!(
        frames >= sightings as u64 && frames <= sightings as u64 * 105 / 100,
        "{frames} frames for {sightings} sightings"
    );
    assert!(
        sightings > 3000 * 3 / 2,
        "overlap gives extra sightings: {sightings}"
    );
    assert_eq!(
        report["verified"], 3000,
        "each distinct event verified once: {report}"
    );
    assert!(report["events_per_sec"].as_f64().expect("eps") > 0.0);
    assert!(report["verify_limit"].as_f64().expect("limit") > 0.0);
    assert!(report["peak_rss_mib"].as_f64().expect("rss") > 0.0);

    // The same database again: it holds an archive now, so the bench refuses it and writes
    // nothing (a real archive's URL given by mistake gets no test events).
    let again = output_within(
        Command::new(env!("CARGO_BIN_EXE_bigbrotr"))
            .args(["bench", "--events", "3000", "--relays", "1", "--dir"])
            .arg(dir.path())
            .args(["--database-url", &url])
            .env("BIGBROTR_LOG", "warn"),
        std::time::Duration::from_secs(300),
        "bigbrotr bench on an archive",
    );
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success(), "refused: {stderr}");
    assert!(
        stderr.contains("--database-url") && stderr.contains("empty database"),
        "{stderr}"
    );
    let after: i64 = c
        .query_one("SELECT count(*) FROM events_relays", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(after, sightings, "nothing written");
}

/// `bench --workers 2`: two `bigbrotr run` processes share the relays as a fleet; the archive
/// is complete and the report's per-worker counts add up to what the database holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_with_two_workers_archives_everything_and_its_counts_add_up() {
    let (pool, url) = test_db().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = output_within(
        Command::new(env!("CARGO_BIN_EXE_bigbrotr"))
            .args(["bench", "--events", "600", "--relays", "3"])
            .args(["--overlap", "0.4", "--workers", "2", "--json", "--dir"])
            .arg(dir.path())
            .args(["--database-url", &url])
            .env("BIGBROTR_LOG", "warn"),
        std::time::Duration::from_secs(600),
        "bigbrotr bench --workers 2",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON report in:\n{stdout}"));
    let c = pool.get().await.expect("conn");
    let count = |sql: &'static str| {
        let c = &c;
        async move { c.query_one(sql, &[]).await.expect(sql).get::<_, i64>(0) as u64 }
    };
    let events = count("SELECT count(*) FROM events").await;
    let sightings = count("SELECT count(*) FROM events_relays").await;
    assert_eq!(events, 600);
    assert_eq!(report["events"], 600, "{report}");
    assert_eq!(report["sightings"].as_u64(), Some(sightings), "{report}");
    assert!(
        sightings > 600,
        "overlap gives extra sightings: {sightings}"
    );

    let workers = report["per_worker"].as_array().expect("per_worker");
    assert_eq!(workers.len(), 2, "{report}");
    let field = |w: &serde_json::Value, k: &str| w[k].as_u64().unwrap_or_else(|| panic!("{k}"));
    // Each relay held by exactly one worker when the archive was complete.
    let mut relays: Vec<&str> = workers
        .iter()
        .flat_map(|w| w["relays"].as_array().expect("relays"))
        .map(|r| r.as_str().expect("url"))
        .collect();
    relays.sort_unstable();
    relays.dedup();
    let held: usize = workers
        .iter()
        .map(|w| w["relays"].as_array().expect("relays").len())
        .sum();
    assert_eq!((held, relays.len()), (3, 3), "{report}");
    // The workers' inserts are the archive; their verifications cover it, the excess being
    // the duplicates the report gives.
    let inserted: u64 = workers.iter().map(|w| field(w, "events_inserted")).sum();
    let sighted: u64 = workers.iter().map(|w| field(w, "sightings_inserted")).sum();
    let verified: u64 = workers.iter().map(|w| field(w, "verified")).sum();
    assert_eq!((inserted, sighted), (events, sightings), "{report}");
    assert_eq!(report["verified"].as_u64(), Some(verified), "{report}");
    let dups = report["duplicate_verifications"].as_i64().expect("dups");
    assert!(dups >= 0, "{report}");
    assert_eq!(verified, events + dups as u64, "{report}");
    for w in workers {
        assert_eq!(
            w["exit"], "exit status: 0",
            "workers stop on SIGTERM: {report}"
        );
    }
    // Each worker's output went to its log file in the bench directory.
    assert!(dir.path().join("bench-w0.log").exists() && dir.path().join("bench-w1.log").exists());
}

/// `--setup-sql scripts/partition-events.sql`: the archive's tables become hash-partitioned
/// (16 ways) with the same columns, indexes and triggers, and a bench whose relays all hold
/// the same events (the staged `ON CONFLICT` path after the direct COPY) archives them, its
/// check passing and the analytics summaries folding every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_archive_from_the_setup_script_syncs_and_checks() {
    let (pool, url) = test_db().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/partition-events.sql");
    let c = pool.get().await.expect("conn");
    let shape = "SELECT count(*) FROM pg_indexes WHERE tablename IN ('events', 'events_relays', 'event_tags')";
    let indexes: i64 = c.query_one(shape, &[]).await.expect("indexes").get(0);
    let triggers = "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal \
                    AND tgrelid IN ('events'::regclass, 'events_relays'::regclass, 'event_tags'::regclass)";
    let trig: i64 = c.query_one(triggers, &[]).await.expect("triggers").get(0);
    let out = output_within(
        Command::new(env!("CARGO_BIN_EXE_bigbrotr"))
            .args([
                "bench",
                "--events",
                "800",
                "--relays",
                "2",
                "--overlap",
                "1",
            ])
            .args(["--setup-sql", script, "--json", "--dir"])
            .arg(dir.path())
            .args(["--database-url", &url])
            .env("BIGBROTR_LOG", "warn"),
        std::time::Duration::from_secs(600),
        "bigbrotr bench --setup-sql",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kinds: Vec<(String, String)> = c
        .query(
            "SELECT relname::text, relkind::text FROM pg_class \
             WHERE relname IN ('events', 'events_relays', 'event_tags') ORDER BY relname",
            &[],
        )
        .await
        .expect("relkind")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(kinds.iter().all(|(_, k)| k == "p"), "{kinds:?}");
    let parts: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_inherits WHERE inhparent IN \
             ('events'::regclass, 'events_relays'::regclass, 'event_tags'::regclass)",
            &[],
        )
        .await
        .expect("partitions")
        .get(0);
    assert_eq!(parts, 48);
    // The parents keep their indexes (same names) and triggers.
    assert_eq!(
        c.query_one(shape, &[])
            .await
            .expect("indexes")
            .get::<_, i64>(0),
        indexes
    );
    assert_eq!(
        c.query_one(triggers, &[])
            .await
            .expect("triggers")
            .get::<_, i64>(0),
        trig
    );
    let n: i64 = c
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .expect("count")
        .get(0);
    let spread: i64 = c
        .query_one("SELECT count(DISTINCT tableoid) FROM events_relays", &[])
        .await
        .expect("spread")
        .get(0);
    assert_eq!(n, 800);
    assert_eq!(spread, 16, "sightings spread over every partition");
    let report: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON report in:\n{stdout}"));
    assert_eq!(report["sightings"], 1600, "{report}");
    assert!(
        report["analytics_caught_up_s"].is_number(),
        "the summaries folded the partitioned tables: {report}"
    );
    // A second run of the script refuses (the tables are partitioned and hold rows).
    let again = std::fs::read_to_string(script).expect("script");
    let err = c
        .batch_execute(&again)
        .await
        .expect_err("second run refused");
    assert!(format!("{err:?}").contains("partition-events"), "{err:?}");
}

/// A `--setup-sql` file that fails stops the bench before any figure, naming the file and
/// PostgreSQL's error, and leaves the archive's tables as the migrations made them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_setup_sql_stops_the_bench_and_names_the_file() {
    let (pool, url) = test_db().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.sql");
    std::fs::write(
        &bad,
        "BEGIN; ALTER TABLE events_relays RENAME TO gone; SELECT no_such_function(); COMMIT;",
    )
    .expect("write");
    let out = output_within(
        Command::new(env!("CARGO_BIN_EXE_bigbrotr"))
            .args(["bench", "--events", "50", "--relays", "1", "--workers", "1"])
            .arg("--setup-sql")
            .arg(&bad)
            .arg("--dir")
            .arg(dir.path())
            .args(["--database-url", &url])
            .env("BIGBROTR_LOG", "warn"),
        std::time::Duration::from_secs(300),
        "bigbrotr bench --setup-sql bad.sql",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the bench must fail: {stderr}");
    assert!(
        stderr.contains("bad.sql") && stderr.contains("no_such_function"),
        "{stderr}"
    );
    let c = pool.get().await.expect("conn");
    let kept: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname = 'events_relays' AND relkind = 'r'",
            &[],
        )
        .await
        .expect("relkind")
        .get(0);
    assert_eq!(kept, 1, "the failed file's transaction was rolled back");
    // No worker was started: none joined the fleet.
    let workers: i64 = c
        .query_one("SELECT count(*) FROM fleet_workers", &[])
        .await
        .expect("workers")
        .get(0);
    assert_eq!(workers, 0);
}
