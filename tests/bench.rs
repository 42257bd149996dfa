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
}
