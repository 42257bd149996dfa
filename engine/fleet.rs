//! Several bigbrotr processes sharing one archive: relay and role leases held in PostgreSQL
//! (`sql/014_fleet.sql`). Every statement of the fleet is in this module.
//!
//! A worker (`bigbrotr run`, long-running `bigbrotr sync`) registers a row in `fleet_workers`
//! and pushes its expiry forward every `fleet.heartbeat_secs`. It syncs a relay only while it
//! holds that relay's lease and runs a side stage (finder, monitor, analytics, DVM) only while
//! it holds that role's lease. Leases are rows with an expiry compared with the database's
//! clock, renewed in single statements: nothing stays held on a connection, so PgBouncer in
//! transaction mode works, and no session-level advisory lock is used.
//!
//! - **Fair share.** A registry worker holds `ceil(relays / live registry workers)` relay
//!   leases: below it, it takes free or expired ones; above it, it stops the surplus
//!   connectors and releases their leases. A new worker gets its share within a few
//!   heartbeats; a dead worker's leases expire after `fleet.lease_ttl_secs` and, once its
//!   worker row has expired too, the others' share grows to cover them. A dead worker on the
//!   same machine (same boot and pid namespace, pid gone) is dropped at once.
//! - **Fencing.** Taking a lease draws a new epoch; the relay's context carries it, and the
//!   sink writes the relay's cursor only while the lease still has that epoch
//!   (`stages/sink.rs`). A worker that stalled past its lease cannot move a cursor another
//!   worker advanced since; what it still commits is absorbed as duplicates.
//! - **Self-fencing.** A worker whose renewals fail for most of the TTL stops its connectors
//!   and side stages before another worker may take their leases.
//!
//! With a single worker every relay and role is taken at the first heartbeat: the engine
//! behaves as without a fleet.

use crate::config::Config;
use crate::db::Pool;
use anyhow::Context;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_postgres::types::{ToSql, Type};

/// `fleet_leases.kind` of a relay lease (key: the relay URL).
pub const RELAY: &str = "relay";
/// `fleet_leases.kind` of a role lease (key: [`Role::as_str`]).
pub const ROLE: &str = "role";

/// How long lease history is kept.
const HISTORY_DAYS: f64 = 7.0;
/// Heartbeats between prunes of the history and of long-dead worker rows.
const PRUNE_EVERY: u64 = 60;
/// Part of the TTL after which a worker whose renewals keep failing gives its leases up.
const SELF_FENCE: f64 = 0.8;

/// A side stage that runs on one worker of the fleet at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Relay discovery.
    Finder,
    /// Relay health checks.
    Monitor,
    /// The summary refresher.
    Analytics,
    /// The NIP-90 data vending machine.
    Dvm,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Finder, Role::Monitor, Role::Analytics, Role::Dvm];

    /// The lease key and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Finder => "finder",
            Role::Monitor => "monitor",
            Role::Analytics => "analytics",
            Role::Dvm => "dvm",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// This process's fleet figures, for `/metrics`.
#[derive(Debug)]
pub struct Gauges {
    /// True once a worker of this process joined a fleet.
    pub joined: AtomicBool,
    /// Relay leases held.
    pub relays_held: AtomicU64,
    /// Live workers at the last heartbeat (registry workers and `sync --relay` ones).
    pub live_workers: AtomicU64,
    /// 1 per role held, in [`Role::ALL`] order.
    pub roles: [AtomicBool; 4],
    /// Relay leases taken.
    pub acquired: AtomicU64,
    /// Relay leases given back (surplus, shutdown).
    pub released: AtomicU64,
    /// Relay leases found taken by another worker (this one stalled or lost the database).
    pub lost: AtomicU64,
    /// Lease statements run (heartbeats, renewals, takes, releases).
    pub queries: AtomicU64,
}

/// The process's [`Gauges`].
pub static GAUGES: Gauges = Gauges {
    joined: AtomicBool::new(false),
    relays_held: AtomicU64::new(0),
    live_workers: AtomicU64::new(0),
    roles: [
        AtomicBool::new(false),
        AtomicBool::new(false),
        AtomicBool::new(false),
        AtomicBool::new(false),
    ],
    acquired: AtomicU64::new(0),
    released: AtomicU64::new(0),
    lost: AtomicU64::new(0),
    queries: AtomicU64::new(0),
};

/// Workers started by this process (in-process tests start several services).
static STARTED: AtomicU64 = AtomicU64::new(0);

/// One worker of the fleet: its name and the lease statements.
#[derive(Debug)]
pub struct Fleet {
    pool: Pool,
    /// The worker's name.
    pub worker: String,
    host: String,
    boot: String,
    pid: i32,
    registry: bool,
    /// How long a lease lasts without renewal.
    pub ttl: Duration,
    /// Time between heartbeats.
    pub heartbeat: Duration,
    beats: AtomicU64,
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length; gethostname NUL-terminates or truncates.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The kernel boot and pid namespace this process's pid belongs to; empty when unknown.
fn boot_id() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let ns = std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if boot.trim().is_empty() || ns.is_empty() {
        String::new()
    } else {
        format!("{}/{ns}", boot.trim())
    }
}

/// False only when `pid` certainly names no process here.
fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return true;
    }
    // SAFETY: signal 0 checks for existence and sends nothing.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

fn count() {
    GAUGES.queries.fetch_add(1, Relaxed);
}

impl Fleet {
    /// The worker of this process from `[fleet]`; `registry`: it syncs the whole registry
    /// (its share counts in the fair share), not a `--relay` list.
    pub fn new(cfg: &Config, pool: Pool, registry: bool) -> Arc<Fleet> {
        let pid = std::process::id() as i32;
        let host = hostname();
        let n = STARTED.fetch_add(1, Relaxed);
        let base = if cfg.fleet.worker.is_empty() {
            format!("{host}-{pid}")
        } else {
            cfg.fleet.worker.clone()
        };
        let worker = if n == 0 {
            base
        } else {
            format!("{base}.{}", n + 1)
        };
        Arc::new(Fleet {
            pool,
            worker,
            host,
            boot: boot_id(),
            pid,
            registry,
            ttl: cfg.fleet.ttl(),
            heartbeat: cfg.fleet.heartbeat(),
            beats: AtomicU64::new(0),
        })
    }

    fn ttl_secs(&self) -> f64 {
        self.ttl.as_secs_f64()
    }

    async fn conn(&self) -> anyhow::Result<bb8::PooledConnection<'_, ConnManager>> {
        self.pool
            .get()
            .await
            .context("cannot get a database connection for the fleet leases")
    }

    /// Registers or refreshes this worker's row, drops dead workers of this machine, prunes
    /// old history now and then. Returns the live workers.
    pub async fn beat(&self) -> anyhow::Result<u64> {
        let conn = self.conn().await?;
        count();
        let same = conn
            .query_typed(
                "SELECT host, boot, pid FROM fleet_workers WHERE worker = $1 AND expires_at > now()",
                &[(&self.worker, Type::TEXT)],
            )
            .await
            .context("cannot read the worker's row")?;
        if let Some(r) = same.first() {
            let (host, boot, pid): (String, String, i32) =
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
            let ours = host == self.host && boot == self.boot && pid == self.pid;
            let dead_here = !boot.is_empty() && boot == self.boot && !pid_alive(pid);
            if !ours && !dead_here {
                anyhow::bail!(
                    "fleet worker name {:?} is in use by a live process (host {host}, pid {pid}): \
                     give each process its own `fleet.worker`, or leave it empty",
                    self.worker
                );
            }
        }
        let params: [(&(dyn ToSql + Sync), Type); 6] = [
            (&self.worker, Type::TEXT),
            (&self.host, Type::TEXT),
            (&self.boot, Type::TEXT),
            (&self.pid, Type::INT4),
            (&self.registry, Type::BOOL),
            (&self.ttl_secs(), Type::FLOAT8),
        ];
        count();
        conn.execute_typed(
            "INSERT INTO fleet_workers (worker, host, boot, pid, registry, started_at, heartbeat_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, now(), now(), now() + make_interval(secs => $6))
             ON CONFLICT (worker) DO UPDATE SET host = EXCLUDED.host, boot = EXCLUDED.boot,
                 pid = EXCLUDED.pid, registry = EXCLUDED.registry,
                 heartbeat_at = now(), expires_at = EXCLUDED.expires_at",
            &params,
        )
        .await
        .context("cannot record the worker's heartbeat")?;
        GAUGES.joined.store(true, Relaxed);
        if !self.boot.is_empty() {
            count();
            let rows = conn
                .query_typed(
                    "SELECT worker, pid FROM fleet_workers WHERE boot = $1 AND worker <> $2",
                    &[(&self.boot, Type::TEXT), (&self.worker, Type::TEXT)],
                )
                .await
                .context("cannot read the workers of this machine")?;
            for r in rows {
                let (w, pid): (String, i32) = (r.try_get(0)?, r.try_get(1)?);
                if !pid_alive(pid) {
                    tracing::info!(worker = %w, pid, "worker of this machine is gone: dropping its leases");
                    self.drop_worker(&conn, &w).await?;
                }
            }
        }
        if self.beats.fetch_add(1, Relaxed) % PRUNE_EVERY == 0 {
            count();
            conn.execute_typed(
                "WITH h AS (DELETE FROM fleet_lease_history
                            WHERE at < now() - make_interval(days => $1::int))
                 DELETE FROM fleet_workers
                 WHERE expires_at < now() - make_interval(days => $1::int)",
                &[(&(HISTORY_DAYS as i32), Type::INT4)],
            )
            .await
            .context("cannot prune the lease history")?;
        }
        count();
        let live: i64 = conn
            .query_typed(
                "SELECT count(*) FROM fleet_workers WHERE expires_at > now()",
                &[],
            )
            .await
            .context("cannot count the live workers")?
            .first()
            .map(|r| r.try_get(0))
            .transpose()?
            .unwrap_or(0);
        GAUGES.live_workers.store(live.max(0) as u64, Relaxed);
        Ok(live.max(0) as u64)
    }

    async fn drop_worker(&self, conn: &tokio_postgres::Client, worker: &str) -> anyhow::Result<()> {
        count();
        conn.execute_typed(
            "WITH l AS (DELETE FROM fleet_leases WHERE worker = $1)
             DELETE FROM fleet_workers WHERE worker = $1",
            &[(&worker, Type::TEXT)],
        )
        .await
        .with_context(|| format!("cannot drop worker {worker}"))?;
        Ok(())
    }

    /// Live workers that sync the whole registry (the fair share divides among them).
    pub async fn registry_workers(&self) -> anyhow::Result<u64> {
        let conn = self.conn().await?;
        count();
        let n: i64 = conn
            .query_typed(
                "SELECT count(*) FROM fleet_workers WHERE registry AND expires_at > now()",
                &[],
            )
            .await
            .context("cannot count the live workers")?
            .first()
            .map(|r| r.try_get(0))
            .transpose()?
            .unwrap_or(0);
        Ok(n.max(0) as u64)
    }

    /// Pushes the expiry of every lease of `kind` this worker holds; returns them (key →
    /// epoch). A lease missing from the answer was taken by another worker.
    pub async fn renew(&self, kind: &str) -> anyhow::Result<HashMap<String, i64>> {
        let conn = self.conn().await?;
        count();
        let rows = conn
            .query_typed(
                "UPDATE fleet_leases SET expires_at = now() + make_interval(secs => $3)
                 WHERE kind = $1 AND worker = $2
                 RETURNING key, epoch",
                &[
                    (&kind, Type::TEXT),
                    (&self.worker, Type::TEXT),
                    (&self.ttl_secs(), Type::FLOAT8),
                ],
            )
            .await
            .context("cannot renew the leases")?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Takes at most `max` of `keys` whose lease is free or expired; returns those taken
    /// (key → new epoch). Concurrent workers never get the same key: the conflict clause
    /// re-checks the expiry on the row another worker may have just taken.
    pub async fn acquire(
        &self,
        kind: &str,
        keys: &[String],
        max: usize,
    ) -> anyhow::Result<Vec<(String, i64)>> {
        if keys.is_empty() || max == 0 {
            return Ok(Vec::new());
        }
        let mut uniq: Vec<&str> = keys.iter().map(String::as_str).collect();
        uniq.sort_unstable();
        uniq.dedup();
        let conn = self.conn().await?;
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let params: [(&(dyn ToSql + Sync), Type); 5] = [
            (&kind, Type::TEXT),
            (&uniq, Type::TEXT_ARRAY),
            (&self.worker, Type::TEXT),
            (&max, Type::INT8),
            (&self.ttl_secs(), Type::FLOAT8),
        ];
        count();
        // Each worker walks the free keys in its own order, so workers starting together
        // rarely contend for the same rows.
        let rows = conn
            .query_typed(
                "WITH want AS (
                     SELECT k FROM unnest($2::text[]) AS k
                     WHERE NOT EXISTS (SELECT 1 FROM fleet_leases l
                                       WHERE l.kind = $1 AND l.key = k AND l.expires_at > now())
                     ORDER BY md5($3 || k)
                     LIMIT $4)
                 INSERT INTO fleet_leases (kind, key, worker, epoch, acquired_at, expires_at)
                 SELECT $1, k, $3, nextval('fleet_epoch'), now(), now() + make_interval(secs => $5)
                 FROM want
                 ON CONFLICT (kind, key) DO UPDATE
                     SET worker = EXCLUDED.worker, epoch = EXCLUDED.epoch,
                         acquired_at = EXCLUDED.acquired_at, expires_at = EXCLUDED.expires_at
                     WHERE fleet_leases.expires_at <= now()
                 RETURNING key, epoch",
                &params,
            )
            .await
            .context("cannot take leases")?;
        let got: Vec<(String, i64)> = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<anyhow::Result<_>>()?;
        if kind == RELAY {
            GAUGES.acquired.fetch_add(got.len() as u64, Relaxed);
        }
        Ok(got)
    }

    /// Gives a lease back (only the grant `epoch`: a lease another worker took since stays).
    pub async fn release(&self, kind: &str, key: &str, epoch: i64) -> anyhow::Result<()> {
        let conn = self.conn().await?;
        count();
        conn.execute_typed(
            "DELETE FROM fleet_leases WHERE kind = $1 AND key = $2 AND worker = $3 AND epoch = $4",
            &[
                (&kind, Type::TEXT),
                (&key, Type::TEXT),
                (&self.worker, Type::TEXT),
                (&epoch, Type::INT8),
            ],
        )
        .await
        .context("cannot release a lease")?;
        if kind == RELAY {
            GAUGES.released.fetch_add(1, Relaxed);
        }
        Ok(())
    }

    /// Leaves the fleet: every lease of this worker and its row (the others take over at
    /// their next heartbeat instead of waiting for the TTL).
    pub async fn leave(&self) -> anyhow::Result<()> {
        let conn = self.conn().await?;
        self.drop_worker(&conn, &self.worker).await?;
        GAUGES.relays_held.store(0, Relaxed);
        for r in &GAUGES.roles {
            r.store(false, Relaxed);
        }
        Ok(())
    }
}

type ConnManager = bb8_postgres::PostgresConnectionManager<tokio_postgres::NoTls>;

/// Loads the cursors of `keys` (relays this worker just took: another worker may have moved
/// them since this process started).
pub async fn load_cursors_for(
    pool: &Pool,
    keys: &[String],
) -> anyhow::Result<HashMap<String, bigbrotr_stages::model::CursorState>> {
    let conn = pool.get().await?;
    count();
    let rows = conn
        .query_typed(
            "SELECT state_key, payload FROM service_state
             WHERE service_name = $1 AND state_key = ANY($2)",
            &[
                (&bigbrotr_stages::sink::CURSOR_SERVICE, Type::TEXT),
                (&keys, Type::TEXT_ARRAY),
            ],
        )
        .await?;
    let mut out = HashMap::new();
    for r in rows {
        let key: String = r.try_get(0)?;
        let payload: serde_json::Value = r.try_get(1)?;
        match serde_json::from_value(payload) {
            Ok(st) => {
                out.insert(key, st);
            }
            Err(e) => tracing::warn!(relay = %key, error = %e, "unreadable cursor; starting over"),
        }
    }
    Ok(out)
}

/// Roles this worker holds now, published by [`spawn_roles`].
pub type Roles = watch::Receiver<HashSet<Role>>;

/// The worker's heartbeat: its row, and the leases of the roles it `wants` (renewed, or taken
/// when free). Runs until `halt`; the roles it holds are published on the returned receiver.
pub fn spawn_roles(
    fleet: Arc<Fleet>,
    wants: Vec<Role>,
    mut halt: watch::Receiver<bool>,
) -> (tokio::task::JoinHandle<()>, Roles) {
    let (tx, rx) = watch::channel(HashSet::new());
    let task = tokio::spawn(async move {
        let mut last_ok = Instant::now();
        loop {
            let started = Instant::now();
            match role_beat(&fleet, &wants).await {
                Ok(held) => {
                    last_ok = started;
                    publish(&tx, held);
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), worker = %fleet.worker, "fleet heartbeat failed");
                    if started.duration_since(last_ok) >= fleet.ttl.mul_f64(SELF_FENCE) {
                        // Past this, another worker may take the roles: stop them first.
                        publish(&tx, HashSet::new());
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(fleet.heartbeat) => {}
                _ = halt.wait_for(|h| *h) => break,
            }
        }
    });
    (task, rx)
}

fn publish(tx: &watch::Sender<HashSet<Role>>, held: HashSet<Role>) {
    for r in Role::ALL {
        GAUGES.roles[r.index()].store(held.contains(&r), Relaxed);
    }
    tx.send_if_modified(|cur| {
        if *cur == held {
            false
        } else {
            for r in Role::ALL {
                match (cur.contains(&r), held.contains(&r)) {
                    (false, true) => tracing::info!(role = r.as_str(), "fleet role taken"),
                    (true, false) => tracing::warn!(role = r.as_str(), "fleet role lost"),
                    _ => {}
                }
            }
            *cur = held;
            true
        }
    });
}

async fn role_beat(fleet: &Fleet, wants: &[Role]) -> anyhow::Result<HashSet<Role>> {
    fleet.beat().await?;
    if wants.is_empty() {
        return Ok(HashSet::new());
    }
    let renewed = fleet.renew(ROLE).await?;
    let mut held: HashSet<Role> = wants
        .iter()
        .copied()
        .filter(|r| renewed.contains_key(r.as_str()))
        .collect();
    let missing: Vec<String> = wants
        .iter()
        .filter(|r| !held.contains(r))
        .map(|r| r.as_str().to_string())
        .collect();
    for (key, _) in fleet.acquire(ROLE, &missing, missing.len()).await? {
        if let Some(r) = Role::ALL.into_iter().find(|r| r.as_str() == key) {
            held.insert(r);
        }
    }
    Ok(held)
}

/// Runs a side stage while this worker holds `role`: `start` is called with a stop signal
/// each time the role is taken, and the signal turns true when it is lost or on `halt`.
/// Returns on `halt`.
pub async fn gated<F, Fut>(
    role: Role,
    mut roles: Roles,
    mut halt: watch::Receiver<bool>,
    mut start: F,
) -> anyhow::Result<()>
where
    F: FnMut(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    loop {
        tokio::select! {
            _ = halt.wait_for(|h| *h) => return Ok(()),
            r = roles.wait_for(|s| s.contains(&role)) => {
                if r.is_err() {
                    return Ok(());
                }
            }
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let stage = start(stop_rx);
        tokio::pin!(stage);
        enum End {
            ByItself(anyhow::Result<()>),
            Halt,
            Lost,
        }
        let end = tokio::select! {
            r = &mut stage => End::ByItself(r),
            _ = halt.wait_for(|h| *h) => End::Halt,
            _ = roles.wait_for(|s| !s.contains(&role)) => End::Lost,
        };
        match end {
            End::ByItself(r) => {
                if let Err(e) = r {
                    tracing::warn!(role = role.as_str(), error = %format!("{e:#}"), "side stage stopped");
                }
                // It ended by itself: keep the role (another worker would fail alike) until the end.
                let _ = halt.wait_for(|h| *h).await;
                return Ok(());
            }
            End::Halt => {
                let _ = stop_tx.send(true);
                let _ = stage.await;
                return Ok(());
            }
            End::Lost => {
                tracing::warn!(role = role.as_str(), "role lost: stopping the side stage");
                let _ = stop_tx.send(true);
                let _ = stage.await;
            }
        }
    }
}

/// One worker's row in [`status`].
#[derive(Debug, Clone)]
pub struct WorkerStatus {
    /// Its name.
    pub worker: String,
    /// Its host.
    pub host: String,
    /// Its process id.
    pub pid: i32,
    /// Syncs the whole registry (not a `--relay` list).
    pub registry: bool,
    /// Its heartbeat is current.
    pub live: bool,
    /// Seconds since its last heartbeat.
    pub heartbeat_age: f64,
    /// Relay leases it holds (not expired).
    pub relays: i64,
    /// Roles it holds (not expired).
    pub roles: Vec<String>,
}

/// The fleet as the database sees it: workers (live first), relays not leased by anyone.
pub async fn status(pool: &Pool) -> anyhow::Result<(Vec<WorkerStatus>, i64)> {
    let conn = pool.get().await?;
    let rows = conn
        .query_typed(
            "SELECT w.worker, w.host, w.pid, w.registry, w.expires_at > now(),
                    extract(epoch FROM now() - w.heartbeat_at)::float8,
                    (SELECT count(*) FROM fleet_leases l
                      WHERE l.worker = w.worker AND l.kind = 'relay' AND l.expires_at > now()),
                    ARRAY(SELECT l.key FROM fleet_leases l
                           WHERE l.worker = w.worker AND l.kind = 'role' AND l.expires_at > now()
                           ORDER BY l.key)
             FROM fleet_workers w
             ORDER BY w.expires_at > now() DESC, w.worker",
            &[],
        )
        .await
        .context("cannot read the fleet (is the schema migrated?)")?;
    let workers = rows
        .iter()
        .map(|r| {
            Ok(WorkerStatus {
                worker: r.try_get(0)?,
                host: r.try_get(1)?,
                pid: r.try_get(2)?,
                registry: r.try_get(3)?,
                live: r.try_get(4)?,
                heartbeat_age: r.try_get(5)?,
                relays: r.try_get(6)?,
                roles: r.try_get(7)?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let unleased: i64 = conn
        .query_typed(
            "SELECT count(*) FROM relays r WHERE NOT EXISTS (
                 SELECT 1 FROM fleet_leases l
                 WHERE l.kind = 'relay' AND l.key = r.url AND l.expires_at > now())",
            &[],
        )
        .await?
        .first()
        .map(|r| r.try_get(0))
        .transpose()?
        .unwrap_or(0);
    Ok((workers, unleased))
}

/// The relay lease state of one supervisor: when it renews next, when it last succeeded.
#[derive(Debug)]
pub struct RelayLeases {
    /// The worker.
    pub fleet: Arc<Fleet>,
    /// Next heartbeat.
    pub next_at: Instant,
    /// Start of the last renewal that succeeded.
    pub last_ok: Instant,
}

impl RelayLeases {
    /// Lease state for `fleet`, renewing at once.
    pub fn new(fleet: Arc<Fleet>) -> RelayLeases {
        let now = Instant::now();
        RelayLeases {
            fleet,
            next_at: now,
            last_ok: now,
        }
    }

    /// True when renewals failed for so long that another worker may soon take the leases.
    pub fn must_self_fence(&self, attempt: Instant) -> bool {
        attempt.duration_since(self.last_ok) >= self.fleet.ttl.mul_f64(SELF_FENCE)
    }
}

/// How many relay leases a worker should hold: `ceil(relays / workers)` for a registry
/// worker, all of its own list for a `--relay` worker.
pub fn fair_share(relays: usize, registry_workers: u64, registry: bool) -> usize {
    if !registry {
        return relays;
    }
    let w = usize::try_from(registry_workers.max(1)).unwrap_or(usize::MAX);
    relays.div_ceil(w)
}

impl Fleet {
    /// True when this worker syncs the whole registry.
    pub fn is_registry(&self) -> bool {
        self.registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fair_share_covers_every_relay() {
        for relays in 0..50usize {
            for workers in 1..8u64 {
                let share = fair_share(relays, workers, true);
                assert!(share * workers as usize >= relays);
                assert!(share <= relays.div_ceil(workers as usize));
            }
        }
        assert_eq!(fair_share(6, 3, true), 2);
        assert_eq!(fair_share(6, 0, true), 6);
        assert_eq!(fair_share(5, 3, false), 5);
    }

    #[test]
    fn this_process_is_alive_and_pid_zero_is_never_reaped() {
        assert!(pid_alive(std::process::id() as i32));
        assert!(pid_alive(0));
    }
}
