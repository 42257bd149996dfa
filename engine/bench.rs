//! `bigbrotr bench`: a self-contained end-to-end ingestion benchmark that needs no network.
//!
//! It generates validly signed events (cached on disk, signing is the slow part), starts
//! local relays in their own processes (`bigbrotr testrelay`), archives them into PostgreSQL
//! (a fresh database on the embedded cluster, or on a given server), checks the result in the
//! database, and reports throughput next to this machine's verify limit measured in the same
//! run. The analytics refresher runs beside the sync unless `analytics.enabled = false`; the
//! report gives its lag when the sync ended and how long it took to fold the rest.

use crate::config::{Config, Seconds};
use crate::sync::{sync_once, SyncOptions};
use anyhow::{bail, Context};
use bigbrotr_stages::model::{Event, RelayUrl};
use bigbrotr_stages::verify::{Gate, Verifier};
use bigbrotr_testkit::gen::{self, GenEvent, GenSpec};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: f64 = 1024.0 * 1024.0;

/// Longest the bench waits after the sync for the analytics refresher to catch up.
const ANALYTICS_WAIT: Duration = Duration::from_secs(600);

/// What to benchmark.
#[derive(Debug, Clone)]
pub struct BenchSpec {
    /// Distinct events in the corpus.
    pub events: usize,
    /// Relays serving them.
    pub relays: usize,
    /// Fraction of the corpus every relay holds besides its own share (0 = disjoint shares,
    /// 1 = every relay holds every event).
    pub overlap: f64,
    /// Kinds to generate.
    pub kinds: Vec<u16>,
    /// Content size range in bytes.
    pub content: (usize, usize),
    /// Seed of the corpus.
    pub seed: u64,
    /// Where corpora and the bench cluster live.
    pub dir: PathBuf,
    /// Archive into this (empty) database instead of the embedded cluster's.
    pub database_url: Option<String>,
    /// Keep the bench database afterwards.
    pub keep: bool,
    /// The relays speak NIP-77 (reconciliation) instead of only NIP-01.
    pub nip77: bool,
    /// After the pass, sync the unchanged relays again and report what that costs.
    pub resync: bool,
    /// SQL applied to the bench database right after the migrations (e.g.
    /// `scripts/partition-events.sql`), so one binary measures two schema layouts.
    pub setup_sql: Option<PathBuf>,
    /// 0: one in-process sync; N: N `bigbrotr run` child processes as a fleet
    /// ([`crate::bench_fleet`]).
    pub workers: usize,
    /// With `idle_secs`: measure the fleet's database load at idle over this many
    /// registered relays that refuse connections, instead of an ingestion.
    pub idle_relays: usize,
    /// Seconds the idle measurement lasts.
    pub idle_secs: u64,
}

/// Measured figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// Distinct events archived (checked in the database).
    pub events: u64,
    /// EVENT frames received from all relays.
    pub frames: u64,
    /// Wall time of the sync pass.
    pub seconds: f64,
    /// Distinct events kept per second.
    pub events_per_sec: f64,
    /// Frames received per second.
    pub frames_per_sec: f64,
    /// Schnorr verifications per second on one core, measured in this run.
    pub verify_per_core: f64,
    /// Cores available to this process.
    pub cores: usize,
    /// verify_per_core × cores.
    pub verify_limit: f64,
    /// events_per_sec ÷ verify_limit.
    pub ratio: f64,
    /// Cores not used by PostgreSQL and the relay processes during the sync (measured).
    pub cores_left: f64,
    /// verify_per_core × cores_left.
    pub verify_limit_left: f64,
    /// events_per_sec ÷ verify_limit_left.
    pub ratio_left: f64,
    /// CPU seconds used by everything but the engine (PostgreSQL, relays) during the sync.
    pub others_cpu_s: f64,
    /// Peak resident memory of the engine (this process), MiB.
    pub peak_rss_mib: f64,
    /// Resident memory when the sync started (the runtime, database pool and relay handles), MiB.
    pub base_rss_mib: f64,
    /// Seconds the verify threads were busy (summed).
    pub verify_busy_s: f64,
    /// Seconds the sink spent writing (COPY + INSERT + commit).
    pub sink_write_s: f64,
    /// Events received ÷ events kept, per relay.
    pub overfetch: Vec<(String, f64)>,
    /// Sightings (event, relay) in the archive.
    pub sightings: u64,
    /// Sightings per second of the pass.
    pub sightings_per_sec: f64,
    /// Sightings recorded by reconciliation without downloading the body.
    pub sightings_without_body: u64,
    /// Bytes of every frame received, and NIP-77 bytes sent: the pass's traffic.
    pub wire_bytes: u64,
    /// NIP-77 bytes sent and received.
    pub neg_bytes: u64,
    /// The second pass over the unchanged relays (`--resync`).
    pub resync: Option<Resync>,
    /// Signatures verified / skipped as already seen.
    pub verified: u64,
    /// Signatures skipped.
    pub skipped: u64,
    /// The analytics refresher ran beside the sync (`analytics.enabled`), as in `bigbrotr sync`.
    pub analytics: bool,
    /// Numbers past the analytics watermark when the sync ended (rows not folded yet).
    pub analytics_lag_rows: i64,
    /// Age in seconds of the oldest row not folded yet when the sync ended (upper bound).
    pub analytics_lag_s: f64,
    /// Seconds after the sync ended until the refresher had folded every row (None: the
    /// refresher did not run, or did not catch up within the wait).
    pub analytics_caught_up_s: Option<f64>,
}

impl BenchReport {
    /// Human-readable report.
    pub fn render(&self, spec: &BenchSpec) -> String {
        let mut s = format!(
            "bench: {} events, {} relays, overlap {:.2}\n\
             kept      {:>12.0} events/s  ({} events in {:.2}s)\n\
             received  {:>12.0} frames/s  ({} frames)\n\
             verify limit {:>9.0} sig/s  ({:.0} sig/s/core × {} cores, same run)\n\
             ratio     {:>12.2}  (kept ÷ verify limit)\n\
             cores left {:>11.2}  (PostgreSQL + relays used {:.1} CPU-s); ratio to their limit {:.2}\n\
             signatures verified {} / skipped {}\n\
             peak RSS  {:>12.1} MiB  ({:.1} MiB before the sync)\n\
             stage time: verify busy {:.2}s (summed over threads), sink write {:.2}s\n",
            spec.events,
            spec.relays,
            spec.overlap,
            self.events_per_sec,
            self.events,
            self.seconds,
            self.frames_per_sec,
            self.frames,
            self.verify_limit,
            self.verify_per_core,
            self.cores,
            self.ratio,
            self.cores_left,
            self.others_cpu_s,
            self.ratio_left,
            self.verified,
            self.skipped,
            self.peak_rss_mib,
            self.base_rss_mib,
            self.verify_busy_s,
            self.sink_write_s,
        );
        let worst = self
            .overfetch
            .iter()
            .map(|(_, r)| *r)
            .fold(0.0f64, f64::max);
        s.push_str(&format!(
            "over-fetch (received ÷ kept) worst relay {worst:.4}\n"
        ));
        s.push_str(&format!(
            "sightings {:>11.0} /s       ({} sightings, {} recorded without a download; relays {})\n\
             traffic   {:>12.1} MiB     ({:.1} MiB of it NIP-77)\n",
            self.sightings_per_sec,
            self.sightings,
            self.sightings_without_body,
            if spec.nip77 { "speak NIP-77" } else { "NIP-01 only" },
            self.wire_bytes as f64 / MIB,
            self.neg_bytes as f64 / MIB,
        ));
        if let Some(r) = &self.resync {
            s.push_str(&format!(
                "re-sync of the unchanged relays: {:.3}s ({:.2} % of the first pass), {:.1} KiB on the wire ({:.3} % of it), {} event frames, {} new rows\n",
                r.seconds,
                100.0 * r.seconds / self.seconds.max(1e-9),
                r.wire_bytes as f64 / 1024.0,
                100.0 * r.wire_bytes as f64 / (self.wire_bytes.max(1)) as f64,
                r.frames,
                r.events_inserted,
            ));
        }
        s.push_str(&format!(
            "analytics lag at the end of the sync: {} rows, {:.1}s{}\n",
            self.analytics_lag_rows,
            self.analytics_lag_s,
            match (self.analytics, self.analytics_caught_up_s) {
                (false, _) => "; refresher off (analytics.enabled = false)".to_string(),
                (true, Some(t)) => format!("; refresher caught up {t:.1}s after the sync"),
                (true, None) => "; refresher did not catch up".to_string(),
            }
        ));
        s
    }
}

/// A second pass over unchanged relays.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Resync {
    /// Wall time of the pass.
    pub seconds: f64,
    /// Its traffic (frames received, NIP-77 bytes sent).
    pub wire_bytes: u64,
    /// EVENT frames it received.
    pub frames: u64,
    /// New rows it wrote (must be 0).
    pub events_inserted: u64,
}

/// An order-independent digest of a set of distinct event ids: their count and the wrapping sums
/// of their two halves. Ids are SHA-256 outputs, so a different set (an id missing, another in
/// its place) changes the sums except with negligible probability.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdSetDigest {
    pub(crate) n: u64,
    lo: u128,
    hi: u128,
}

impl IdSetDigest {
    fn add(&mut self, id: &[u8; 32]) {
        let (lo, hi) = (id.first_chunk::<16>(), id.last_chunk::<16>());
        let half = |b: Option<&[u8; 16]>| b.map_or(0, |b| u128::from_le_bytes(*b));
        self.n += 1;
        self.lo = self.lo.wrapping_add(half(lo));
        self.hi = self.hi.wrapping_add(half(hi));
    }
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`).
pub fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

/// Resident set size of this process now, in MiB (Linux `VmRSS`).
pub fn rss_mib() -> f64 {
    status_mib("VmRSS:")
}

fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(field)).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Busy CPU time of the whole machine so far (all cores, from /proc/stat), in seconds.
fn machine_busy_secs() -> f64 {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = text.lines().next() else {
        return 0.0;
    };
    // user nice system idle iowait irq softirq steal …
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 8 {
        return 0.0;
    }
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    busy / hz.max(1.0)
}

/// CPU time used by this process (all threads), in seconds.
fn own_cpu_secs() -> f64 {
    // SAFETY: getrusage writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// Returns freed heap to the OS and restarts the peak-RSS counter, so the figure covers the
/// sync alone and not the corpus loaded before it.
fn reset_peak_rss() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Single-core schnorr verifications per second over `events` (all distinct, none cached).
pub fn measure_verify_per_core(events: &[Event]) -> f64 {
    let seen = Arc::new(Gate::new(events.len() * 2 + 1024));
    let mut v = Verifier::new(seen, rand::random(), 65_536);
    let t = Instant::now();
    let mut ok = 0u64;
    for e in events {
        if matches!(v.check(e), bigbrotr_stages::verify::Check::Verified) {
            ok += 1;
        }
    }
    ok as f64 / t.elapsed().as_secs_f64().max(1e-9)
}

fn corpus_path(spec: &BenchSpec) -> PathBuf {
    let kinds: Vec<String> = spec.kinds.iter().map(|k| k.to_string()).collect();
    spec.dir.join(format!(
        "corpus-{}-{}-{}-{}-{}.jsonl",
        spec.events,
        spec.seed,
        kinds.join("_"),
        spec.content.0,
        spec.content.1
    ))
}

/// Loads the corpus from the cache or generates (and caches) it.
pub fn corpus(spec: &BenchSpec) -> anyhow::Result<Vec<GenEvent>> {
    let path = corpus_path(spec);
    if path.exists() {
        let evs = gen::read_jsonl(&path)?;
        if evs.len() == spec.events {
            return Ok(evs);
        }
    }
    std::fs::create_dir_all(&spec.dir)
        .with_context(|| format!("cannot create {}", spec.dir.display()))?;
    eprintln!(
        "generating {} signed events (cached in {})...",
        spec.events,
        path.display()
    );
    let evs = gen::generate(&GenSpec {
        count: spec.events,
        seed: spec.seed,
        kinds: spec.kinds.clone(),
        content_len: spec.content,
        authors: (spec.events / 20).clamp(1, 10_000),
        ..GenSpec::default()
    });
    gen::write_jsonl(&path, &evs)?;
    Ok(evs)
}

/// Which corpus indexes relay `r` of `n` serves: its own share, plus the overlap fraction of
/// the others' (taken deterministically).
fn shard(total: usize, n: usize, r: usize, overlap: f64) -> Vec<usize> {
    (0..total)
        .filter(|i| {
            i % n == r || {
                let h = (*i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
                (h as f64 / (1u64 << 53) as f64) < overlap
            }
        })
        .collect()
}

pub(crate) struct Relays(pub(crate) Vec<Child>);

impl Drop for Relays {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_listening(port: u16) -> anyhow::Result<()> {
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("bench relay on port {port} did not start")
}

/// The bench relays, one process per shard, and what they serve.
pub(crate) struct Served {
    /// The relay processes (killed on drop).
    pub(crate) children: Relays,
    /// Their URLs.
    pub(crate) relays: Vec<RelayUrl>,
    /// Frames they send in all (one per event per relay serving it).
    pub(crate) frames: usize,
    /// The ids some relay serves.
    pub(crate) ids: IdSetDigest,
}

/// Starts one `bigbrotr testrelay` process per shard of `events` and waits until each listens.
pub(crate) async fn start_relays(spec: &BenchSpec, events: &[GenEvent]) -> anyhow::Result<Served> {
    let exe = std::env::current_exe().context("cannot find the bigbrotr executable")?;
    let mut children = Relays(Vec::new());
    let mut ports = Vec::new();
    let mut frames = 0usize;
    // Corpus events some relay serves; their ids are checked through a digest, so the bench
    // holds no per-event state while it measures the engine's memory.
    let mut served = vec![false; events.len()];
    for r in 0..spec.relays {
        let idx = shard(events.len(), spec.relays, r, spec.overlap);
        frames += idx.len();
        let shard_events: Vec<GenEvent> = idx.iter().map(|&i| events[i].clone()).collect();
        for &i in &idx {
            served[i] = true;
        }
        let path = spec.dir.join(format!("shard-{r}.jsonl"));
        gen::write_jsonl(&path, &shard_events)?;
        let port = free_port()?;
        let mut cmd = Command::new(&exe);
        cmd.args(["testrelay", "--port", &port.to_string(), "--events"])
            .arg(&path);
        if spec.nip77 {
            cmd.arg("--nip77");
        }
        let child = cmd
            .env("BIGBROTR_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start a bench relay")?;
        children.0.push(child);
        ports.push(port);
    }
    let mut relays = Vec::new();
    for port in ports {
        wait_listening(port).await?;
        relays.push(RelayUrl::parse(&format!("ws://127.0.0.1:{port}"), true)?);
    }
    let mut ids = IdSetDigest::default();
    for (e, _) in events.iter().zip(&served).filter(|(_, s)| **s) {
        ids.add(&e.id);
    }
    Ok(Served {
        children,
        relays,
        frames,
        ids,
    })
}

/// The database the bench archives into: `spec.database_url`, or a fresh embedded cluster.
pub(crate) async fn bench_database(
    spec: &BenchSpec,
) -> anyhow::Result<(String, Option<crate::embedded_pg::EmbeddedPg>)> {
    if let Some(u) = &spec.database_url {
        refuse_an_archive(u).await?;
        return Ok((u.clone(), None));
    }
    let pg = crate::embedded_pg::EmbeddedPg::start(&spec.dir.join("postgres"), 0, "bigbrotr", true)
        .await?;
    let u = pg.create_database("bench").await?;
    Ok((u, Some(pg)))
}

/// Refuses a `--database-url` database that already holds events: the bench writes its own
/// corpus there and checks the archive equals it, so a real archive's URL given by mistake
/// would get a million test events (and a reused bench database fails the check).
async fn refuse_an_archive(url: &str) -> anyhow::Result<()> {
    let shown = crate::conninfo::mask(url);
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("--database-url: cannot connect to {shown}"))?;
    tokio::spawn(conn);
    let held = client
        .query_one(
            "SELECT to_regclass('public.events') IS NOT NULL \
             AND EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = to_regclass('public.events') \
                         AND (c.reltuples > 0 OR pg_relation_size(c.oid) > 0))",
            &[],
        )
        .await
        .with_context(|| format!("--database-url: cannot inspect {shown}"))?
        .get::<_, bool>(0);
    if held {
        bail!(
            "--database-url: {shown} already holds an events table with rows; the bench needs an \
             empty database of its own (CREATE DATABASE bench), never an archive"
        );
    }
    Ok(())
}

/// Drops the bench database of an embedded cluster (best effort: the figures are taken).
pub(crate) async fn drop_bench_database(pg: &crate::embedded_pg::EmbeddedPg, url: &str) {
    let Ok((client, conn)) =
        tokio_postgres::connect(&pg.url("postgres"), tokio_postgres::NoTls).await
    else {
        return;
    };
    tokio::spawn(conn);
    let db = url
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("dbname="))
        .unwrap_or("")
        .trim_matches('\'')
        .to_string();
    if !db.is_empty() {
        let _ = client
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
            .await;
    }
}

/// Migrates the bench database, applies `--setup-sql`, records the archive mode and the tag
/// index setting, as `bigbrotr init` would.
pub(crate) async fn prepare_database(
    cfg: &Config,
    spec: &BenchSpec,
    pool: &crate::db::Pool,
) -> anyhow::Result<()> {
    crate::db::migrate(pool).await?;
    if let Some(path) = &spec.setup_sql {
        let sql = std::fs::read_to_string(path)
            .with_context(|| format!("--setup-sql: cannot read {}", path.display()))?;
        pool.get()
            .await?
            .batch_execute(&sql)
            .await
            .with_context(|| format!("--setup-sql {} failed", path.display()))?;
    }
    crate::db::ensure_archive_mode(pool, cfg.archive.bodies, "bench").await?;
    crate::tag_backfill::configure(pool, cfg.archive.tag_index).await?;
    Ok(())
}

/// Waits (at most [`ANALYTICS_WAIT`]) for the refresher to fold what the sync archived,
/// then stops it; the seconds it took, or `None` if it did not catch up.
async fn analytics_catch_up(
    pool: &crate::db::Pool,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    stop: tokio::sync::watch::Sender<bool>,
) -> anyhow::Result<Option<f64>> {
    let synced = Instant::now();
    let mut caught_up = None;
    while synced.elapsed() < ANALYTICS_WAIT {
        if crate::analytics::lag(pool).await?.seq == 0 {
            caught_up = Some(synced.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(true);
    task.await.context("analytics refresher task")??;
    Ok(caught_up)
}

/// Checks the archive against what the relays served before any figure is printed: the
/// events and sightings counted, the ids, and the summaries when the refresher caught up.
/// Returns the events and sightings counted.
pub(crate) async fn check_archive(
    pool: &crate::db::Pool,
    served: &Served,
    summaries_folded: bool,
) -> anyhow::Result<(i64, i64)> {
    let conn = pool.get().await?;
    let n: i64 = conn
        .query_one("SELECT count(*) FROM events", &[])
        .await?
        .get(0);
    let sightings: i64 = conn
        .query_one("SELECT count(*) FROM events_relays", &[])
        .await?
        .get(0);
    if n as u64 != served.ids.n {
        bail!(
            "bench check failed: {} events archived, {} expected",
            n,
            served.ids.n
        );
    }
    if sightings as usize != served.frames {
        bail!(
            "bench check failed: {sightings} sightings, {} expected",
            served.frames
        );
    }
    if summaries_folded {
        let r = conn
            .query_one(
                "SELECT (SELECT total_events FROM analytics_state),
                        (SELECT coalesce(sum(event_count), 0)::BIGINT FROM analytics_relays)",
                &[],
            )
            .await?;
        let (folded, folded_sightings): (i64, i64) = (r.get(0), r.get(1));
        if folded != n || folded_sightings != sightings {
            bail!(
                "bench check failed: the analytics summaries count {folded} events and \
                 {folded_sightings} sightings, the archive {n} and {sightings}"
            );
        }
    }
    let mut archived = IdSetDigest::default();
    let rows = conn
        .query_raw("SELECT id FROM events", std::iter::empty::<i64>())
        .await?;
    futures_util::pin_mut!(rows);
    while let Some(r) = futures_util::TryStreamExt::try_next(&mut rows).await? {
        let id: &[u8] = r.get(0);
        let Ok(id) = <[u8; 32]>::try_from(id) else {
            bail!("bench check failed: malformed id in the archive");
        };
        archived.add(&id);
    }
    if archived != served.ids {
        bail!("bench check failed: the archived ids are not the ids served");
    }
    Ok((n, sightings))
}

/// Bytes the engine received from relays plus its NIP-77 messages sent.
fn wire_bytes(r: &crate::sync::SyncReport) -> u64 {
    r.relays
        .iter()
        .map(|x| x.bytes_received + x.neg_bytes_sent)
        .sum()
}

/// The second, unchanged sync of `--resync`: what an up-to-date archive costs.
async fn resync(
    cfg: &Config,
    pool: &crate::db::Pool,
    relays: Vec<RelayUrl>,
) -> anyhow::Result<Resync> {
    let again = sync_once(cfg, pool.clone(), relays, &SyncOptions::default(), None).await?;
    Ok(Resync {
        seconds: again.elapsed.as_secs_f64(),
        wire_bytes: wire_bytes(&again),
        frames: again.relays.iter().map(|r| r.received).sum(),
        events_inserted: again.events_inserted,
    })
}

/// Runs the benchmark.
pub async fn run(cfg: &Config, spec: &BenchSpec) -> anyhow::Result<BenchReport> {
    if spec.relays == 0 || spec.events == 0 {
        bail!("bench needs at least one relay and one event");
    }
    let events = corpus(spec)?;
    let mut served = start_relays(spec, &events).await?;

    // The verify limit of this machine, measured now.
    let sample: Vec<Event> = events
        .iter()
        .take(20_000)
        .filter_map(|e| Event::parse_json(e.json.as_bytes()).ok())
        .collect();
    let verify_per_core = measure_verify_per_core(&sample);
    drop(sample);
    drop(events);

    let (url, embedded) = bench_database(spec).await?;
    let pool = crate::db::connect(&url, cfg.database.pool_size).await?;
    prepare_database(cfg, spec, &pool).await?;
    let mut cfg = cfg.clone();
    cfg.sync.allow_local = true;
    cfg.database.url = url.clone();

    // The analytics refresher beside the sync, as `bigbrotr sync` and `run` run it.
    let analytics = cfg.analytics.enabled;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let refresher = analytics.then(|| {
        let (mut acfg, pool) = (cfg.clone(), pool.clone());
        acfg.analytics.orphan_interval = Seconds::new(0);
        tokio::spawn(async move { crate::analytics::run_forever(&acfg, &pool, stop_rx).await })
    });

    reset_peak_rss();
    let base_rss = rss_mib();
    let busy0 = machine_busy_secs();
    let own0 = own_cpu_secs();
    let options = SyncOptions {
        progress: true,
        ..Default::default()
    };
    let report = sync_once(&cfg, pool.clone(), served.relays.clone(), &options, None).await?;
    let peak = peak_rss_mib();
    let others_cpu = ((machine_busy_secs() - busy0) - (own_cpu_secs() - own0)).max(0.0);
    let resync = match spec.resync {
        true => Some(resync(&cfg, &pool, served.relays.clone()).await?),
        false => None,
    };
    // The relays are done: stop them before the checks, so they take no CPU from the refresher.
    served.children = Relays(Vec::new());

    // The analytics lag when the sync ended, and how long the refresher took to fold the rest.
    let lag_end = crate::analytics::lag(&pool).await?;
    let caught_up = match refresher {
        Some(task) => analytics_catch_up(&pool, task, stop_tx).await?,
        None => None,
    };
    let (n, sightings) = check_archive(&pool, &served, caught_up.is_some()).await?;
    if let (false, Some(pg)) = (spec.keep, &embedded) {
        drop(pool);
        drop_bench_database(pg, &url).await;
    }

    let frames: u64 = report.relays.iter().map(|r| r.received).sum();
    let secs = report.elapsed.as_secs_f64().max(1e-9);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let limit = verify_per_core * cores as f64;
    let eps = n as f64 / secs;
    // Cores left to the engine: what PostgreSQL and the relay processes did not use.
    let cores_left = (cores as f64 - others_cpu / secs).clamp(0.1, cores as f64);
    let limit_left = verify_per_core * cores_left;
    Ok(BenchReport {
        events: n as u64,
        frames,
        seconds: secs,
        events_per_sec: eps,
        frames_per_sec: frames as f64 / secs,
        verify_per_core,
        cores,
        verify_limit: limit,
        ratio: eps / limit.max(1e-9),
        cores_left,
        verify_limit_left: limit_left,
        ratio_left: eps / limit_left.max(1e-9),
        others_cpu_s: others_cpu,
        peak_rss_mib: peak,
        base_rss_mib: base_rss,
        verify_busy_s: report.verify_busy.as_secs_f64(),
        sink_write_s: report.sink_write.as_secs_f64(),
        overfetch: report
            .relays
            .iter()
            .map(|r| {
                (
                    r.url.clone(),
                    r.received as f64 / (r.committed.max(1)) as f64,
                )
            })
            .collect(),
        sightings: sightings as u64,
        sightings_per_sec: sightings as f64 / secs,
        sightings_without_body: report.relays.iter().map(|r| r.sightings_without_body).sum(),
        wire_bytes: wire_bytes(&report),
        neg_bytes: report.relays.iter().map(|r| r.neg_bytes).sum(),
        resync,
        verified: report.verified,
        skipped: report.verify_skipped,
        analytics,
        analytics_lag_rows: lag_end.seq,
        analytics_lag_s: lag_end.seconds,
        analytics_caught_up_s: caught_up,
    })
}

/// Default corpus directory.
pub fn default_dir() -> PathBuf {
    Path::new("data").join("bench")
}
