//! `bigbrotr bench --workers N`: the bench's corpus and relays archived by N `bigbrotr run`
//! child processes of this executable sharing the registry as a fleet (issue 13), and
//! `--idle-relays`: what the fleet costs the database at idle.
//!
//! Ingestion: the bench starts its relays and database as the in-process bench does, writes
//! one configuration per worker (the bench's own file with `[fleet]` on a short heartbeat,
//! finder, monitor and DVM off, no seeds, its own HTTP port for `/metrics`), spawns the
//! workers, and registers the relays once every worker has joined (so the first lease takes
//! already divide them fairly). It polls the workers' `/metrics` every 100 ms until they have
//! inserted every served event and sighting, checks the archive in the database as the
//! in-process bench does, reads each worker's verify counters and the relays it holds, and
//! stops them (SIGTERM, SIGKILL after a bounded wait). The time runs from the registration
//! to the poll that saw the last row committed; it includes the workers' registry re-read and
//! first lease heartbeat (reported apart as the pickup). Duplicate verifications are the
//! signatures verified across workers minus the distinct events archived: the
//! never-verify-twice cache is per process.
//!
//! Idle: the registry holds `idle_relays` relays on 127.0.0.1 port 1 (refused at once), the
//! workers run with the configured `[fleet]` timings; once every relay is leased, each worker
//! holds its fair share and two more heartbeats passed, the bench counts the database's transactions (`pg_stat_database`) and
//! the workers' lease statements (`bigbrotr_fleet_queries_total`) over `idle_secs`.

use crate::bench::{self, BenchSpec};
use crate::config::Config;
use anyhow::{bail, Context};
use bigbrotr_stages::model::{Event, RelayUrl};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Heartbeat of the ingestion workers: leases spread within a second or two.
const HEARTBEAT_SECS: f64 = 0.5;
/// Lease TTL of the ingestion workers.
const TTL_SECS: f64 = 5.0;
/// Registry re-read period of the ingestion workers (`finder.refresh`; 1 s is its floor).
const REFRESH_SECS: f64 = 1.0;
/// Longest the workers may take to join the fleet.
const JOIN_WAIT: Duration = Duration::from_secs(120);
/// Time between two polls of the workers' `/metrics`.
const POLL: Duration = Duration::from_millis(100);
/// Longest a worker may take to exit after SIGTERM before it is killed.
const STOP_WAIT: Duration = Duration::from_secs(30);
/// Largest `/metrics` answer read.
const MAX_METRICS_BYTES: u64 = 8 << 20;
/// Longest one `/metrics` request may take.
const METRICS_TIMEOUT: Duration = Duration::from_secs(5);

/// One worker's figures, from its `/metrics` just before it was stopped.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkerFigures {
    /// Its `fleet.worker` name.
    pub name: String,
    /// Relays it held when the archive was complete.
    pub relays: Vec<String>,
    /// Signatures it verified.
    pub verified: u64,
    /// Signatures it skipped as already verified (by itself).
    pub skipped: u64,
    /// Seconds its verify threads were busy (summed over threads).
    pub verify_busy_s: f64,
    /// verified ÷ verify_busy_s: its verify rate while busy.
    pub verify_per_busy_s: f64,
    /// Events it inserted (new to the archive).
    pub events_inserted: u64,
    /// Sightings it inserted.
    pub sightings_inserted: u64,
    /// CPU seconds the process used (user + system, from /proc).
    pub cpu_s: f64,
    /// How it ended: "exit 0", "killed after 30 s", …
    pub exit: String,
}

/// The fleet ingestion's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FleetReport {
    /// Worker processes.
    pub workers: usize,
    /// Distinct events archived (checked in the database).
    pub events: u64,
    /// Sightings archived (checked: one per served event per relay).
    pub sightings: u64,
    /// Seconds from the spawn of the workers until all had joined the fleet (not counted
    /// in `seconds`).
    pub startup_s: f64,
    /// Seconds from the registration of the relays (every worker joined) to the last row
    /// committed.
    pub seconds: f64,
    /// Seconds from the registration to the first row committed: the registry re-read
    /// and the first lease heartbeat (included in `seconds`).
    pub pickup_s: f64,
    /// events ÷ seconds: the whole fleet.
    pub events_per_sec: f64,
    /// Schnorr verifications per second on one core, measured in this run.
    pub verify_per_core: f64,
    /// Cores of this machine.
    pub cores: usize,
    /// verify_per_core × cores.
    pub verify_limit: f64,
    /// events_per_sec ÷ verify_limit.
    pub ratio: f64,
    /// Signatures verified, all workers.
    pub verified: u64,
    /// verified − distinct events archived: signatures verified by more than one worker
    /// (or again by one worker after a relay moved to it mid-pass).
    pub duplicate_verifications: i64,
    /// Lease grants and takeovers recorded during the run (`fleet_lease_history`); more
    /// than the relays means relays moved between workers.
    pub lease_grants: u64,
    /// Each worker.
    pub per_worker: Vec<WorkerFigures>,
    /// The `--setup-sql` file applied after the migrations.
    pub setup_sql: Option<String>,
}

impl FleetReport {
    /// Human-readable report.
    pub fn render(&self, spec: &BenchSpec) -> String {
        let mut s = format!(
            "bench: {} events, {} relays, overlap {:.2}, {} workers (bigbrotr run processes){}\n\
             fleet     {:>12.0} events/s  ({} events, {} sightings in {:.2}s from the relays' registration to the last commit)\n\
             startup   {:>12.2}s        (spawn until every worker joined; not counted); first commit {:.2}s after the registration\n\
             verify limit {:>9.0} sig/s  ({:.0} sig/s/core × {} cores, same run); ratio {:.2}\n\
             signatures verified {} in all; duplicate verifications {} (verified − distinct events)\n\
             lease grants {} (relays {}; more means relays moved between workers)\n",
            spec.events,
            spec.relays,
            spec.overlap,
            self.workers,
            self.setup_sql
                .as_deref()
                .map(|f| format!(", setup SQL {f}"))
                .unwrap_or_default(),
            self.events_per_sec,
            self.events,
            self.sightings,
            self.seconds,
            self.startup_s,
            self.pickup_s,
            self.verify_limit,
            self.verify_per_core,
            self.cores,
            self.ratio,
            self.verified,
            self.duplicate_verifications,
            self.lease_grants,
            spec.relays,
        );
        s.push_str(
            "worker        relays   verified  skipped  verify busy  sig/s busy     events  sightings   CPU s  exit\n",
        );
        for w in &self.per_worker {
            s.push_str(&format!(
                "{:<12} {:>7} {:>10} {:>8} {:>11.2}s {:>11.0} {:>10} {:>10} {:>7.1}  {}\n",
                w.name,
                w.relays.len(),
                w.verified,
                w.skipped,
                w.verify_busy_s,
                w.verify_per_busy_s,
                w.events_inserted,
                w.sightings_inserted,
                w.cpu_s,
                w.exit,
            ));
        }
        s
    }
}

/// The idle measurement's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IdleReport {
    /// Worker processes (0: the database alone, the baseline).
    pub workers: usize,
    /// Relays in the registry (all refusing connections).
    pub relays: usize,
    /// Length of the measured window.
    pub seconds: f64,
    /// `fleet.heartbeat_secs` of the workers.
    pub heartbeat_secs: f64,
    /// `fleet.lease_ttl_secs` of the workers.
    pub lease_ttl_secs: f64,
    /// Transactions committed in the bench database during the window (`pg_stat_database`;
    /// includes the two the probe itself runs).
    pub xact_commit: i64,
    /// Transactions rolled back.
    pub xact_rollback: i64,
    /// Rows updated (lease renewals update one row per lease held).
    pub tup_updated: i64,
    /// Rows inserted.
    pub tup_inserted: i64,
    /// (commits + rollbacks) ÷ seconds.
    pub xact_per_sec: f64,
    /// Lease statements run by the workers in the window (`bigbrotr_fleet_queries_total`).
    pub fleet_queries: u64,
    /// fleet_queries ÷ seconds.
    pub fleet_queries_per_sec: f64,
    /// Relay leases held per worker at the end of the window.
    pub leases: Vec<(String, u64)>,
}

impl IdleReport {
    /// Human-readable report.
    pub fn render(&self) -> String {
        let mut s = format!(
            "idle: {} workers, {} relays refusing connections, heartbeat {}s, TTL {}s, {:.1}s measured\n\
             transactions {:>8.2} /s  ({} committed, {} rolled back; pg_stat_database, probe included)\n\
             lease statements {:>4.2} /s  ({}; bigbrotr_fleet_queries_total, all workers)\n\
             rows updated {:>8.1} /s  ({}), inserted {}\n",
            self.workers,
            self.relays,
            self.heartbeat_secs,
            self.lease_ttl_secs,
            self.seconds,
            self.xact_per_sec,
            self.xact_commit,
            self.xact_rollback,
            self.fleet_queries_per_sec,
            self.fleet_queries,
            self.tup_updated as f64 / self.seconds.max(1e-9),
            self.tup_updated,
            self.tup_inserted,
        );
        for (w, n) in &self.leases {
            s.push_str(&format!("  {w}: {n} relay leases\n"));
        }
        s
    }
}

/// A worker process, stopped (and killed if need be) on drop.
struct Worker {
    name: String,
    child: Option<Child>,
    port: u16,
    log: PathBuf,
    /// Its last `/metrics` sample.
    last: Metrics,
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Worker {
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Fails when the process ended before it was asked to.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(c) = &mut self.child {
            if let Some(status) = c.try_wait()? {
                self.child = None;
                bail!(
                    "bench worker {} exited early ({status}); its log: {}",
                    self.name,
                    self.log.display()
                );
            }
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after [`STOP_WAIT`]; how it ended.
    async fn stop(&mut self) -> String {
        let Some(mut c) = self.child.take() else {
            return "gone".into();
        };
        if let Ok(pid) = i32::try_from(c.id()) {
            // SAFETY: kill has no memory preconditions; the pid is our own child, not reaped.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let asked = Instant::now();
        while asked.elapsed() < STOP_WAIT {
            match c.try_wait() {
                Ok(Some(status)) => return status.to_string(),
                Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => return format!("wait failed: {e}"),
            }
        }
        let _ = c.kill();
        let _ = c.wait();
        format!("killed after {} s", STOP_WAIT.as_secs())
    }
}

/// The counters of one `/metrics` answer the bench reads, summed over labels.
#[derive(Debug, Default, Clone)]
struct Metrics {
    values: BTreeMap<String, f64>,
}

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let mut values = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let name = name.split('{').next().unwrap_or(name);
            if let Ok(v) = value.trim().parse::<f64>() {
                *values.entry(name.to_string()).or_insert(0.0) += v;
            }
        }
        Metrics { values }
    }

    fn get(&self, name: &str) -> f64 {
        self.values.get(name).copied().unwrap_or(0.0)
    }

    fn count(&self, name: &str) -> u64 {
        self.get(name).max(0.0) as u64
    }
}

/// One bounded `GET /metrics` (HTTP/1.0: the answer ends with the connection).
async fn scrape(port: u16) -> anyhow::Result<Metrics> {
    let get = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        s.take(MAX_METRICS_BYTES).read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(METRICS_TIMEOUT, get)
        .await
        .context("/metrics timed out")??;
    let text = String::from_utf8_lossy(&buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("/metrics: no HTTP answer");
    };
    if !head.starts_with("HTTP/1.") || !head.contains(" 200 ") {
        bail!(
            "/metrics: {}",
            head.lines().next().unwrap_or("empty answer")
        );
    }
    Ok(Metrics::parse(body))
}

/// CPU seconds (user + system) of process `pid` so far, from /proc.
fn process_cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name may hold spaces: fields count from the last ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz.max(1.0)
}

/// `fleet.lease_ttl_secs`, `fleet.heartbeat_secs` and, when set, `finder.refresh` of the
/// workers.
type Timings = (f64, f64, Option<f64>);

/// The workers' configuration: the bench's own file (when it has one) with the keys a bench
/// worker needs set over it.
fn worker_config(
    cfg: &Config,
    url: &str,
    dir: &Path,
    name: &str,
    port: u16,
    fleet: Timings,
) -> anyhow::Result<PathBuf> {
    let mut root = match &cfg.source {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read {}", p.display()))?
            .parse::<toml::Table>()
            .with_context(|| format!("cannot parse {}", p.display()))?,
        None => toml::Table::new(),
    };
    let seeds = dir.join("no-seeds.txt");
    std::fs::write(&seeds, "").with_context(|| format!("cannot write {}", seeds.display()))?;
    let mut set = |section: &str, key: &str, v: toml::Value| -> anyhow::Result<()> {
        let t = root
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(t) = t.as_table_mut() else {
            bail!("[{section}] in the configuration is not a table");
        };
        t.insert(key.to_string(), v);
        Ok(())
    };
    use toml::Value::{Boolean, Float, String as Str};
    set("database", "url", Str(url.to_string()))?;
    set("sync", "allow_local", Boolean(true))?;
    set("seeds", "file", Str(seeds.display().to_string()))?;
    set("finder", "enabled", Boolean(false))?;
    set("monitor", "enabled", Boolean(false))?;
    set("dvm", "enabled", Boolean(false))?;
    set("http", "listen", Str(format!("127.0.0.1:{port}")))?;
    set("http", "api", Boolean(false))?;
    set("http", "relay", Boolean(false))?;
    set("fleet", "worker", Str(name.to_string()))?;
    set("fleet", "lease_ttl_secs", Float(fleet.0))?;
    set("fleet", "heartbeat_secs", Float(fleet.1))?;
    if let Some(r) = fleet.2 {
        set("finder", "refresh", Float(r))?;
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml::to_string(&root)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Spawns `n` `bigbrotr run` workers on `url`; their output goes to `<dir>/<name>.log`.
fn spawn_workers(
    cfg: &Config,
    url: &str,
    dir: &Path,
    n: usize,
    fleet: Timings,
) -> anyhow::Result<Vec<Worker>> {
    let exe = std::env::current_exe().context("cannot find the bigbrotr executable")?;
    let mut workers = Vec::new();
    for i in 0..n {
        let name = format!("bench-w{i}");
        let port = bench::free_port()?;
        let config = worker_config(cfg, url, dir, &name, port, fleet)?;
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let child = Command::new(&exe)
            .arg("--config")
            .arg(&config)
            .arg("run")
            .env(
                "BIGBROTR_LOG",
                std::env::var("BIGBROTR_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .spawn()
            .context("cannot start a bench worker")?;
        workers.push(Worker {
            name,
            child: Some(child),
            port,
            log,
            last: Metrics::default(),
        });
    }
    Ok(workers)
}

/// Scrapes every worker that answers; keeps the last sample of those that do not (yet).
async fn poll(workers: &mut [Worker]) -> anyhow::Result<()> {
    for w in workers.iter_mut() {
        w.check_alive()?;
        if let Ok(m) = scrape(w.port).await {
            w.last = m;
        }
    }
    Ok(())
}

fn sum(workers: &[Worker], name: &str) -> u64 {
    workers.iter().map(|w| w.last.count(name)).sum()
}

/// Relay leases held now, per worker.
async fn leases(pool: &crate::db::Pool) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let rows = pool
        .get()
        .await?
        .query(
            "SELECT worker, key FROM fleet_leases WHERE kind = 'relay' AND expires_at > now() ORDER BY key",
            &[],
        )
        .await?;
    let mut held: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in rows {
        held.entry(r.try_get(0)?).or_default().push(r.try_get(1)?);
    }
    Ok(held)
}

/// Runs the fleet ingestion bench.
pub async fn run(cfg: &Config, spec: &BenchSpec) -> anyhow::Result<FleetReport> {
    if spec.relays == 0 || spec.events == 0 || spec.workers == 0 {
        bail!("the fleet bench needs at least one relay, one event and one worker");
    }
    let events = bench::corpus(spec)?;
    let mut served = bench::start_relays(spec, &events).await?;
    let sample: Vec<Event> = events
        .iter()
        .take(20_000)
        .filter_map(|e| Event::parse_json(e.json.as_bytes()).ok())
        .collect();
    let verify_per_core = bench::measure_verify_per_core(&sample);
    drop(sample);
    drop(events);

    let (url, embedded) = bench::bench_database(spec).await?;
    let pool = crate::db::connect(&url, 2).await?;
    bench::prepare_database(cfg, spec, &pool).await?;

    let want_events = served.ids.n;
    let want_sightings = served.frames as u64;
    let spawned = Instant::now();
    let mut workers = spawn_workers(
        cfg,
        &url,
        &spec.dir,
        spec.workers,
        (TTL_SECS, HEARTBEAT_SECS, Some(REFRESH_SECS)),
    )?;
    // The relays are registered once every worker has joined, so the first lease takes
    // already divide them fairly (a worker alone takes every relay, then hands the surplus
    // over, and the relays it hands over are partly fetched twice).
    loop {
        for w in &mut workers {
            w.check_alive()?;
        }
        let live: i64 = pool
            .get()
            .await?
            .query_one(
                "SELECT count(*) FROM fleet_workers WHERE expires_at > now()",
                &[],
            )
            .await?
            .get(0);
        if live as usize >= spec.workers {
            break;
        }
        if spawned.elapsed() > JOIN_WAIT {
            bail!(
                "fleet bench: {live} of {} workers joined within {}s; their logs are {}/bench-w*.log",
                spec.workers,
                JOIN_WAIT.as_secs(),
                spec.dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let startup_s = spawned.elapsed().as_secs_f64();
    crate::register_relays(&pool, &served.relays).await?;
    let started = Instant::now();
    let limit = Duration::from_secs(120) + Duration::from_millis(5 * spec.events as u64);
    let mut pickup_s = None;
    let seconds = loop {
        poll(&mut workers).await?;
        let (ev, si) = (
            sum(&workers, "bigbrotr_sink_events_inserted_total"),
            sum(&workers, "bigbrotr_sink_sightings_inserted_total"),
        );
        if ev > 0 && pickup_s.is_none() {
            pickup_s = Some(started.elapsed().as_secs_f64());
        }
        if ev >= want_events && si >= want_sightings {
            break started.elapsed().as_secs_f64();
        }
        if started.elapsed() > limit {
            bail!(
                "fleet bench: after {:.0}s the workers inserted {ev} of {want_events} events and \
                 {si} of {want_sightings} sightings; their logs are {}/bench-w*.log",
                started.elapsed().as_secs_f64(),
                spec.dir.display()
            );
        }
        tokio::time::sleep(POLL).await;
    };
    // Counters after the last commit, the relays held, the CPU used; then stop everyone.
    poll(&mut workers).await?;
    let held = leases(&pool).await?;
    let grants: i64 = pool
        .get()
        .await?
        .query_one(
            "SELECT count(*) FROM fleet_lease_history WHERE kind = 'relay' AND event IN ('acquired', 'taken')",
            &[],
        )
        .await?
        .get(0);
    let cpu: Vec<f64> = workers
        .iter()
        .map(|w| w.pid().map_or(0.0, process_cpu_secs))
        .collect();
    let mut exits = Vec::new();
    for w in &mut workers {
        exits.push(w.stop().await);
    }
    served.children = bench::Relays(Vec::new());
    let (n, sightings) = bench::check_archive(&pool, &served, false).await?;
    if let (false, Some(pg)) = (spec.keep, &embedded) {
        drop(pool);
        bench::drop_bench_database(pg, &url).await;
    }

    let per_worker: Vec<WorkerFigures> = workers
        .iter()
        .zip(cpu)
        .zip(exits)
        .map(|((w, cpu_s), exit)| {
            let m = &w.last;
            let busy = m.get("bigbrotr_verify_busy_seconds_total");
            let verified = m.count("bigbrotr_verify_signatures_verified_total");
            WorkerFigures {
                name: w.name.clone(),
                relays: held.get(&w.name).cloned().unwrap_or_default(),
                verified,
                skipped: m.count("bigbrotr_verify_signatures_skipped_total"),
                verify_busy_s: busy,
                verify_per_busy_s: verified as f64 / busy.max(1e-9),
                events_inserted: m.count("bigbrotr_sink_events_inserted_total"),
                sightings_inserted: m.count("bigbrotr_sink_sightings_inserted_total"),
                cpu_s,
                exit,
            }
        })
        .collect();
    let verified: u64 = per_worker.iter().map(|w| w.verified).sum();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let verify_limit = verify_per_core * cores as f64;
    let seconds = seconds.max(1e-9);
    let eps = n as f64 / seconds;
    Ok(FleetReport {
        workers: spec.workers,
        events: n as u64,
        sightings: sightings as u64,
        startup_s,
        seconds,
        pickup_s: pickup_s.unwrap_or(seconds),
        events_per_sec: eps,
        verify_per_core,
        cores,
        verify_limit,
        ratio: eps / verify_limit.max(1e-9),
        verified,
        duplicate_verifications: verified as i64 - n,
        lease_grants: grants.max(0) as u64,
        per_worker,
        setup_sql: spec.setup_sql.as_ref().map(|p| p.display().to_string()),
    })
}

/// `pg_stat_database` counters of the bench database: commits, rollbacks, rows updated, rows
/// inserted.
async fn db_counters(pool: &crate::db::Pool) -> anyhow::Result<[i64; 4]> {
    let r = pool
        .get()
        .await?
        .query_one(
            "SELECT xact_commit, xact_rollback, tup_updated, tup_inserted
             FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await?;
    Ok([r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?])
}

/// Runs the idle measurement: `spec.idle_relays` refusing relays, `spec.workers` workers (0:
/// none, the database's own baseline) for `spec.idle_secs`.
pub async fn idle(cfg: &Config, spec: &BenchSpec) -> anyhow::Result<IdleReport> {
    if spec.idle_relays == 0 || spec.idle_secs == 0 {
        bail!("the idle measurement needs --idle-relays and --idle-secs above 0");
    }
    std::fs::create_dir_all(&spec.dir)
        .with_context(|| format!("cannot create {}", spec.dir.display()))?;
    let (url, embedded) = bench::bench_database(spec).await?;
    let pool = crate::db::connect(&url, 2).await?;
    bench::prepare_database(cfg, spec, &pool).await?;
    let relays = (0..spec.idle_relays)
        .map(|i| RelayUrl::parse(&format!("ws://127.0.0.1:1/r{i}"), true))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("idle relay URL: {e}"))?;
    crate::register_relays(&pool, &relays).await?;

    let (ttl, heartbeat) = (
        cfg.fleet.ttl().as_secs_f64(),
        cfg.fleet.heartbeat().as_secs_f64(),
    );
    let mut workers = spawn_workers(cfg, &url, &spec.dir, spec.workers, (ttl, heartbeat, None))?;
    // Settle: every relay leased, none above its worker's fair share, then two more heartbeats.
    let settle_limit = Duration::from_secs(120) + cfg.fleet.ttl() * 10;
    let t = Instant::now();
    let mut settled = spec.workers == 0;
    while !settled {
        poll(&mut workers).await?;
        let held = leases(&pool).await?;
        let leased: usize = held.values().map(Vec::len).sum();
        let share = crate::fleet::fair_share(spec.idle_relays, spec.workers as u64, true);
        settled = leased >= spec.idle_relays && held.values().all(|r| r.len() <= share);
        if !settled && t.elapsed() > settle_limit {
            bail!(
                "idle bench: {leased} of {} relays leased after {:.0}s; logs in {}",
                spec.idle_relays,
                t.elapsed().as_secs_f64(),
                spec.dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(cfg.fleet.heartbeat() * 2).await;

    poll(&mut workers).await?;
    let q0 = sum(&workers, "bigbrotr_fleet_queries_total");
    let c0 = db_counters(&pool).await?;
    let w0 = Instant::now();
    let mut next = Instant::now();
    while w0.elapsed() < Duration::from_secs(spec.idle_secs) {
        for w in &mut workers {
            w.check_alive()?;
        }
        next += Duration::from_secs(1);
        tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
    }
    let c1 = db_counters(&pool).await?;
    let seconds = w0.elapsed().as_secs_f64();
    poll(&mut workers).await?;
    let q1 = sum(&workers, "bigbrotr_fleet_queries_total");
    let held = leases(&pool).await?;
    for w in &mut workers {
        w.stop().await;
    }
    if let (false, Some(pg)) = (spec.keep, &embedded) {
        drop(pool);
        bench::drop_bench_database(pg, &url).await;
    }
    let d = |i: usize| c1[i] - c0[i];
    Ok(IdleReport {
        workers: spec.workers,
        relays: spec.idle_relays,
        seconds,
        heartbeat_secs: heartbeat,
        lease_ttl_secs: ttl,
        xact_commit: d(0),
        xact_rollback: d(1),
        tup_updated: d(2),
        tup_inserted: d(3),
        xact_per_sec: (d(0) + d(1)) as f64 / seconds,
        fleet_queries: q1.saturating_sub(q0),
        fleet_queries_per_sec: q1.saturating_sub(q0) as f64 / seconds,
        leases: held.into_iter().map(|(w, r)| (w, r.len() as u64)).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_over_labels_and_comments_skipped() {
        let m = Metrics::parse(
            "# HELP x y\n# TYPE x counter\nbigbrotr_a 3\nbigbrotr_b{relay=\"ws://a b\"} 2\n\
             bigbrotr_b{relay=\"c\"} 5.5\nbroken\n",
        );
        assert_eq!(m.count("bigbrotr_a"), 3);
        assert_eq!(m.get("bigbrotr_b"), 7.5);
        assert_eq!(m.get("missing"), 0.0);
    }

    #[test]
    fn own_cpu_time_is_read_from_proc() {
        // Burn a little CPU so the figure cannot be 0 on a coarse clock.
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(x);
        assert!(process_cpu_secs(std::process::id()) > 0.0);
    }
}
