//! The relay registry and the connector supervisor that follows it (started by
//! [`crate::service`]).
//!
//! The registry is the `relays` table plus a live in-memory set: one entry per relay with its
//! context (counters, cursor progress), the limits the monitor last reported, and whether a
//! connector runs for it. The supervisor keeps that set and the running connectors in step,
//! without a restart:
//!
//! - a relay validated by the finder (announced on a channel) or found in `relays` at a
//!   periodic re-read gets a connector, if it is readable;
//! - a relay whose connector gives up is paused, `sync.interval` at first and doubling per
//!   consecutive failed run up to `finder.pause_max`, instead of being retried hot; one the
//!   monitor reports unreachable (or auth-required) has its connector stopped and is not
//!   started again until the monitor reports it reachable;
//! - a relay whose limits changed (NIP-11 `max_limit`) has its connector stopped and started
//!   again with the new limit.
//!
//! In a fleet (`crate::fleet`), the supervisor also holds the relay leases: it starts a
//! connector only for a relay it leases, takes its fair share of free leases and releases
//! its surplus at every heartbeat, and stops the connector of a lease another worker took.
//!
//! The monitor's view arrives through [`LimitsSource`]: [`MonitorLimits`] reads the monitor's
//! newest checks (relays it never checked are readable, with no limit); tests plug in their
//! own source, and [`NoLimits`] ignores limits altogether.

use crate::config::Config;
use crate::db::Pool;
use crate::fleet::{RelayLeases, RELAY};
use crate::pipeline::Pipeline;
use crate::state::EngineState;
use bigbrotr_stages::connect::{GiveUpReason, Outcome};
use bigbrotr_stages::model::{CursorState, Relay, RelayCtx, RelayUrl};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What the monitor knows about a relay's limits and health (NIP-11 `limitation`, checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// Largest `limit` the relay honours.
    pub max_limit: Option<usize>,
    /// Most subscriptions at once (a connector holds one).
    pub max_subscriptions: Option<usize>,
    /// The relay wants NIP-42 authentication before serving anything.
    pub auth_required: bool,
    /// The last check reached the relay.
    pub reachable: bool,
}

impl RelayLimits {
    /// True if a connector can read this relay.
    pub fn readable(&self) -> bool {
        self.reachable && !self.auth_required && self.max_subscriptions != Some(0)
    }
}

/// Future returned by [`LimitsSource::limits`].
pub type LimitsFuture<'a> =
    Pin<Box<dyn Future<Output = anyhow::Result<HashMap<String, RelayLimits>>> + Send + 'a>>;

/// Where the supervisor reads relay limits from (the monitor): relay URL → limits. Relays
/// absent from the map are treated as readable with no limit.
pub trait LimitsSource: Send + Sync {
    /// The current limits of every relay the source knows.
    fn limits<'a>(&'a self, pool: &'a Pool) -> LimitsFuture<'a>;
}

/// No monitor: every relay is readable, with no limit.
pub struct NoLimits;

impl LimitsSource for NoLimits {
    fn limits<'a>(&'a self, _pool: &'a Pool) -> LimitsFuture<'a> {
        Box::pin(async { Ok(HashMap::new()) })
    }
}

/// The monitor's newest checks (`monitor::relay_limits`): relays never checked are absent,
/// hence readable.
pub struct MonitorLimits;

impl LimitsSource for MonitorLimits {
    fn limits<'a>(&'a self, pool: &'a Pool) -> LimitsFuture<'a> {
        Box::pin(async move {
            let m = crate::monitor::relay_limits(pool).await?;
            Ok(m.into_iter()
                .map(|(url, l)| {
                    (
                        url,
                        RelayLimits {
                            max_limit: l.max_limit,
                            max_subscriptions: l.max_subscriptions,
                            auth_required: l.auth_required,
                            reachable: l.reachable,
                        },
                    )
                })
                .collect())
        })
    }
}

/// A source from an async function of the pool returning the map.
pub struct FnLimits<F>(pub F);

impl<F, Fut> LimitsSource for FnLimits<F>
where
    F: Fn(Pool) -> Fut + Send + Sync,
    Fut: Future<Output = HashMap<String, RelayLimits>> + Send + 'static,
{
    fn limits<'a>(&'a self, pool: &'a Pool) -> LimitsFuture<'a> {
        let fut = (self.0)(pool.clone());
        Box::pin(async move { Ok(fut.await) })
    }
}

/// The pause after `failures` consecutive failed runs: `sync.interval`, doubling, at most
/// `finder.pause_max`.
pub fn pause_for(cfg: &Config, failures: u32) -> Duration {
    let base = cfg.sync.interval.get().max(Duration::from_secs(1));
    let max = cfg.finder.pause_max.get().max(base);
    base.saturating_mul(1u32 << failures.clamp(1, 20).saturating_sub(1))
        .min(max)
}

/// What to do when a connector the supervisor stopped returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Start it again at once (its limits changed).
    Restart,
    /// Pause it (the monitor reports it unreadable).
    Pause,
    /// Give its lease back (this worker holds more than its fair share).
    Release,
    /// Nothing: its lease was taken by another worker.
    Lost,
}

struct Run {
    stop: watch::Sender<bool>,
    gen: u64,
    limit: usize,
    committed_at_start: u64,
    then: Option<Then>,
}

struct Entry {
    url: RelayUrl,
    ctx: Relay,
    run: Option<Run>,
    next_at: Instant,
    failures: u32,
    limits: Option<RelayLimits>,
    /// The epoch of this worker's lease on the relay (fleet only).
    lease: Option<i64>,
}

impl Entry {
    fn readable(&self) -> bool {
        self.limits.is_none_or(|l| l.readable())
    }
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// How long after its connector ended a surplus lease is given back: the sink commits the
/// connector's last batches and persists the cursor under the lease meanwhile.
const RELEASE_AFTER: Duration = Duration::from_secs(2);

/// The live relay set and its connectors.
pub struct Supervisor<'p> {
    cfg: Config,
    pool: Pool,
    pipeline: &'p Pipeline,
    state: Arc<EngineState>,
    cursors: HashMap<String, CursorState>,
    limits_source: Arc<dyn LimitsSource>,
    explicit: Vec<RelayUrl>,
    entries: HashMap<String, Entry>,
    tasks: JoinSet<(String, u64, Outcome)>,
    sem: Arc<Semaphore>,
    gen: u64,
    running_dirty: bool,
    fleet: Option<RelayLeases>,
    /// Leases to give back once their connector's last commits had time to persist the
    /// cursor: (relay, epoch, not before).
    releases: Vec<(String, i64, Instant)>,
}

impl<'p> Supervisor<'p> {
    /// A supervisor over the whole registry, or only over `explicit` relays if not empty.
    pub fn new(
        cfg: &Config,
        pool: Pool,
        pipeline: &'p Pipeline,
        state: Arc<EngineState>,
        cursors: HashMap<String, CursorState>,
        limits_source: Arc<dyn LimitsSource>,
        explicit: Vec<RelayUrl>,
    ) -> Supervisor<'p> {
        Supervisor {
            sem: Arc::new(Semaphore::new(cfg.sync.max_parallel.max(1))),
            cfg: cfg.clone(),
            pool,
            pipeline,
            state,
            cursors,
            limits_source,
            explicit,
            entries: HashMap::new(),
            tasks: JoinSet::new(),
            gen: 0,
            running_dirty: true,
            fleet: None,
            releases: Vec::new(),
        }
    }

    /// Syncs only the relays this worker leases in the fleet.
    pub fn with_fleet(mut self, fleet: Arc<crate::fleet::Fleet>) -> Supervisor<'p> {
        self.fleet = Some(RelayLeases::new(fleet));
        self
    }

    /// True if the relay may run here: no fleet, or this worker holds its lease.
    fn leased(&self, e: &Entry) -> bool {
        self.fleet.is_none() || e.lease.is_some()
    }

    fn interval(&self) -> Duration {
        self.cfg.sync.interval.get().max(Duration::from_secs(1))
    }

    fn supported(&self, url: &RelayUrl) -> bool {
        !url.network().is_overlay() || !self.cfg.net.socks5.is_empty()
    }

    /// Adds a relay to the live set (no-op if known); it starts at the next pass.
    pub fn add(&mut self, url: RelayUrl) {
        let key = url.to_string();
        if self.entries.contains_key(&key) || !self.supported(&url) {
            return;
        }
        let ctx = RelayCtx::new(
            url.clone(),
            self.cursors.get(&key).copied().unwrap_or_default(),
        );
        if let Ok(mut m) = self.state.relays.write() {
            m.insert(key.clone(), ctx.clone());
        }
        self.entries.insert(
            key,
            Entry {
                url,
                ctx,
                run: None,
                next_at: Instant::now(),
                failures: 0,
                limits: None,
                lease: None,
            },
        );
    }

    fn request_stop(&mut self, key: &str, then: Then) {
        if let Some(run) = self.entries.get_mut(key).and_then(|e| e.run.as_mut()) {
            run.then = Some(then);
            let _ = run.stop.send(true);
        }
    }

    fn desired_limit(&self, e: &Entry) -> usize {
        let base = self.cfg.sync_for(&e.url, false).limit;
        match e.limits.and_then(|l| l.max_limit) {
            Some(m) => base.min(m.max(1)),
            None => base,
        }
    }

    /// Re-reads the relays table (registry mode) and the limits, and applies them.
    async fn refresh(&mut self) {
        if self.explicit.is_empty() {
            match crate::db::list_relays(&self.pool).await {
                Ok(rows) => {
                    let mut present = HashSet::with_capacity(rows.len());
                    for (u, _) in rows {
                        if let Ok(url) = RelayUrl::parse(&u, self.cfg.sync.allow_local) {
                            present.insert(url.to_string());
                            self.add(url);
                        }
                    }
                    let gone: Vec<String> = self
                        .entries
                        .keys()
                        .filter(|k| !present.contains(*k))
                        .cloned()
                        .collect();
                    for k in gone {
                        if let Some(e) = self.entries.get_mut(&k) {
                            match &e.run {
                                Some(run) => {
                                    let _ = run.stop.send(true);
                                }
                                None => {
                                    self.entries.remove(&k);
                                    if let Ok(mut m) = self.state.relays.write() {
                                        m.remove(&k);
                                    }
                                }
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the relay registry"),
            }
        } else {
            for u in self.explicit.clone() {
                self.add(u);
            }
        }
        let limits = match self.limits_source.limits(&self.pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read relay limits; keeping the previous ones");
                return;
            }
        };
        let keys: Vec<String> = self.entries.keys().cloned().collect();
        let now = Instant::now();
        for k in keys {
            let Some(e) = self.entries.get_mut(&k) else {
                continue;
            };
            let new = limits.get(&k).copied();
            let was_readable = e.readable();
            e.limits = new;
            let readable = e.readable();
            if !readable {
                if e.run.as_ref().is_some_and(|r| r.then.is_none()) {
                    tracing::info!(relay = %k, limits = ?new, "relay reported unreadable: stopping its connector");
                    self.request_stop(&k, Then::Pause);
                }
                continue;
            }
            if !was_readable && e.run.is_none() {
                // The monitor reached it again: that is evidence enough to try now.
                tracing::info!(relay = %k, "relay reported reachable again");
                e.next_at = now;
                e.failures = 0;
                continue;
            }
            let running_limit = e.run.as_ref().filter(|r| r.then.is_none()).map(|r| r.limit);
            if let Some(l) = running_limit {
                let want = self.desired_limit(&self.entries[&k]);
                if want != l {
                    tracing::info!(relay = %k, from = l, to = want, "relay limits changed: retuning its connector");
                    self.request_stop(&k, Then::Restart);
                }
            }
        }
    }

    /// Starts a connector for every readable relay that is due.
    fn start_due(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.run.is_none() && e.next_at <= now && e.readable() && self.leased(e))
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            let limit = self.desired_limit(&self.entries[&k]);
            self.gen += 1;
            let gen = self.gen;
            let Some(e) = self.entries.get_mut(&k) else {
                continue;
            };
            let mut sc = self.cfg.sync_for(&e.url, false);
            sc.limit = limit;
            let (stop_tx, stop_rx) = watch::channel(false);
            let conn = self
                .pipeline
                .connector_with_stop(e.ctx.clone(), Arc::new(sc), stop_rx);
            e.run = Some(Run {
                stop: stop_tx,
                gen,
                limit,
                committed_at_start: e.ctx.stats.committed.load(Relaxed),
                then: None,
            });
            if let Some(epoch) = e.lease {
                // `at_ms`: lets tests (tests/fleet.rs) check from the logs of several workers
                // that no relay was ever synced by two of them at once.
                tracing::info!(relay = %k, epoch, at_ms = now_ms(), "fleet: connector started");
            }
            let sem = self.sem.clone();
            let key = k.clone();
            self.tasks.spawn(async move {
                // `sync.max_parallel` bounds the backfills; the connector gives its slot back
                // when it goes live, so live relays never starve the ones still waiting.
                let slot = sem.acquire_owned().await.ok();
                (key, gen, conn.with_backfill_slot(slot).run().await)
            });
            self.running_dirty = true;
        }
    }

    /// Books a connector's end: schedules its next run or its pause.
    fn finished(&mut self, key: String, gen: u64, outcome: Outcome) {
        let now = Instant::now();
        let interval = self.interval();
        let Some(e) = self.entries.get_mut(&key) else {
            return;
        };
        if e.run.as_ref().is_none_or(|r| r.gen != gen) {
            return;
        }
        let Some(run) = e.run.take() else {
            return;
        };
        if self.fleet.is_some() {
            tracing::info!(relay = %key, at_ms = now_ms(), "fleet: connector ended");
        }
        self.running_dirty = true;
        let progressed = e.ctx.stats.committed.load(Relaxed) > run.committed_at_start;
        match (run.then, &outcome) {
            (Some(Then::Restart), _) => e.next_at = now,
            (Some(Then::Release), _) => {
                if let Some(epoch) = e.lease.take() {
                    self.releases
                        .push((key.clone(), epoch, now + RELEASE_AFTER));
                }
                e.next_at = now;
            }
            (Some(Then::Lost), _) => e.next_at = now,
            (Some(Then::Pause), _) => {
                e.failures += 1;
                e.next_at = now + pause_for(&self.cfg, e.failures);
            }
            (None, Outcome::Synced) => {
                e.failures = 0;
                e.next_at = now + interval;
            }
            (None, Outcome::Cancelled) => {
                // Stopped because it left the registry (or on shutdown).
                self.entries.remove(&key);
                if let Ok(mut m) = self.state.relays.write() {
                    m.remove(&key);
                }
            }
            (None, Outcome::GaveUp(why)) => {
                e.failures = if progressed { 1 } else { e.failures + 1 };
                if matches!(why, GiveUpReason::AuthRequired(_)) {
                    e.failures = e.failures.max(20);
                }
                let f = e.failures;
                let pause = pause_for(&self.cfg, f);
                e.next_at = now + pause;
                tracing::info!(relay = %key, reason = %why, failures = f, pause = ?pause, "relay paused");
            }
        }
    }

    fn publish_running(&mut self) {
        if !self.running_dirty {
            return;
        }
        self.running_dirty = false;
        if let Ok(mut r) = self.state.running.write() {
            *r = self
                .entries
                .iter()
                .filter(|(_, e)| e.run.is_some())
                .map(|(k, _)| k.clone())
                .collect();
        }
    }

    /// Runs until `stop`; `found` announces newly validated relays.
    pub async fn run(
        &mut self,
        found: Option<flume::Receiver<RelayUrl>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let refresh_every = self.cfg.finder.refresh.get().max(Duration::from_secs(1));
        let mut refresh_at = Instant::now();
        let mut found = found;
        loop {
            if *stop.borrow() {
                break;
            }
            if Instant::now() >= refresh_at {
                self.refresh().await;
                refresh_at = Instant::now() + refresh_every;
            }
            if self
                .fleet
                .as_ref()
                .is_some_and(|f| Instant::now() >= f.next_at)
            {
                self.fleet_tick().await;
            }
            self.flush_releases().await;
            self.start_due();
            self.publish_running();
            let wake = self
                .entries
                .values()
                .filter(|e| e.run.is_none() && e.readable() && self.leased(e))
                .map(|e| e.next_at)
                .chain(self.fleet.as_ref().map(|f| f.next_at))
                .chain(self.releases.iter().map(|r| r.2))
                .min()
                .map_or(refresh_at, |t| t.min(refresh_at));
            let rx = found.clone();
            tokio::select! {
                r = stop.changed() => {
                    if r.is_err() || *stop.borrow() { break; }
                }
                r = async { match &rx { Some(rx) => rx.recv_async().await, None => std::future::pending().await } } => {
                    match r {
                        Ok(url) => {
                            tracing::info!(relay = %url, "new relay in the registry");
                            self.add(url);
                            while let Some(Ok(more)) = rx.as_ref().map(|rx| rx.try_recv()) {
                                self.add(more);
                            }
                        }
                        Err(_) => found = None,
                    }
                }
                Some(r) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    match r {
                        Ok((key, gen, outcome)) => self.finished(key, gen, outcome),
                        Err(e) => tracing::warn!(error = %e, "connector task failed"),
                    }
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Marks the relay's lease lost (another worker holds it now): its connector stops.
    fn lose(&mut self, key: &str) {
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        if e.lease.take().is_some() {
            crate::fleet::GAUGES.lost.fetch_add(1, Relaxed);
            tracing::warn!(relay = %key, "relay lease lost: stopping its connector");
            if e.run.as_ref().is_some_and(|r| r.then != Some(Then::Lost)) {
                self.request_stop(key, Then::Lost);
            }
        }
    }

    /// One heartbeat of the relay leases: renew them, stop the relays taken by another
    /// worker, then take free leases up to the fair share or release the surplus.
    async fn fleet_tick(&mut self) {
        let Some(fl) = self.fleet.as_mut() else {
            return;
        };
        let fleet = fl.fleet.clone();
        let attempt = Instant::now();
        fl.next_at = attempt + fleet.heartbeat;
        let held = match fleet.renew(RELAY).await {
            Ok(h) => {
                if let Some(fl) = self.fleet.as_mut() {
                    fl.last_ok = attempt;
                }
                h
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot renew the relay leases");
                if self
                    .fleet
                    .as_ref()
                    .is_some_and(|f| f.must_self_fence(attempt))
                {
                    // Another worker may take them soon: stop before it can.
                    let keys: Vec<String> = self
                        .entries
                        .iter()
                        .filter(|(_, e)| e.lease.is_some())
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in keys {
                        self.lose(&k);
                    }
                    crate::fleet::GAUGES.relays_held.store(0, Relaxed);
                }
                return;
            }
        };
        let lost: Vec<String> = self
            .entries
            .iter()
            .filter(|(k, e)| e.lease.is_some_and(|ep| held.get(k.as_str()) != Some(&ep)))
            .map(|(k, _)| k.clone())
            .collect();
        for k in lost {
            self.lose(&k);
        }
        // Leases still ours that this supervisor does not use: kept through a failed renewal
        // (self-fencing dropped them here, not in the database) or left by an earlier process
        // of the same `fleet.worker`. Renewed with their epoch, so nobody took them meanwhile.
        let pending_now: HashSet<String> = self.releases.iter().map(|r| r.0.clone()).collect();
        let adopt: Vec<(String, i64)> = held
            .iter()
            .filter(|(k, _)| {
                self.entries
                    .get(k.as_str())
                    .is_some_and(|e| e.lease.is_none() && e.run.is_none())
                    && !pending_now.contains(*k)
            })
            .map(|(k, ep)| (k.clone(), *ep))
            .collect();
        if !adopt.is_empty() {
            self.take(adopt).await;
        }
        // Leases on relays that left the registry (or this worker's list).
        let pending: HashSet<String> = self.releases.iter().map(|r| r.0.clone()).collect();
        let stray: Vec<(String, i64)> = held
            .iter()
            .filter(|(k, _)| !self.entries.contains_key(k.as_str()) && !pending.contains(*k))
            .map(|(k, ep)| (k.clone(), *ep))
            .collect();
        for (k, ep) in stray {
            if let Err(e) = fleet.release(RELAY, &k, ep).await {
                tracing::warn!(error = %format!("{e:#}"), relay = %k, "cannot release a lease");
            }
        }
        let workers = match fleet.registry_workers().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot count the fleet's workers");
                return;
            }
        };
        let share = crate::fleet::fair_share(self.entries.len(), workers, fleet.is_registry());
        // Leases already being handed over do not count.
        let mine = self
            .entries
            .values()
            .filter(|e| {
                e.lease.is_some() && e.run.as_ref().is_none_or(|r| r.then != Some(Then::Release))
            })
            .count();
        if mine < share {
            let free: Vec<String> = self
                .entries
                .iter()
                .filter(|(k, e)| e.lease.is_none() && e.run.is_none() && !pending.contains(*k))
                .map(|(k, _)| k.clone())
                .collect();
            match fleet.acquire(RELAY, &free, share - mine).await {
                Ok(got) if !got.is_empty() => self.take(got).await,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot take relay leases"),
            }
        } else if mine > share {
            // Idle relays first: giving them back stops no download.
            let mut surplus: Vec<(bool, String)> = self
                .entries
                .iter()
                .filter(|(_, e)| {
                    e.lease.is_some() && e.run.as_ref().is_none_or(|r| r.then.is_none())
                })
                .map(|(k, e)| (e.run.is_some(), k.clone()))
                .collect();
            surplus.sort();
            surplus.truncate(mine - share);
            let now = Instant::now();
            for (running, k) in surplus {
                if running {
                    tracing::info!(relay = %k, share, "more relays than the fair share: handing this one over");
                    self.request_stop(&k, Then::Release);
                } else if let Some(ep) = self.entries.get_mut(&k).and_then(|e| e.lease.take()) {
                    self.releases.push((k, ep, now));
                }
            }
        }
        let held_now = self.entries.values().filter(|e| e.lease.is_some()).count();
        crate::fleet::GAUGES
            .relays_held
            .store(held_now as u64, Relaxed);
    }

    /// Starts syncing relays whose leases were just taken, from their current cursors.
    async fn take(&mut self, got: Vec<(String, i64)>) {
        let keys: Vec<String> = got.iter().map(|g| g.0.clone()).collect();
        let cursors = match crate::fleet::load_cursors_for(&self.pool, &keys).await {
            Ok(c) => c,
            Err(e) => {
                // Without the cursor the relay would start over: give the leases back.
                tracing::warn!(error = %format!("{e:#}"), "cannot read the cursors of taken relays");
                let now = Instant::now();
                self.releases
                    .extend(got.into_iter().map(|(k, ep)| (k, ep, now)));
                return;
            }
        };
        let now = Instant::now();
        for (k, epoch) in got {
            let Some(e) = self.entries.get_mut(&k) else {
                self.releases.push((k, epoch, now));
                continue;
            };
            let ctx = RelayCtx::new(e.url.clone(), cursors.get(&k).copied().unwrap_or_default());
            ctx.fence.store(epoch, Relaxed);
            e.ctx = ctx.clone();
            e.lease = Some(epoch);
            e.next_at = now;
            if let Ok(mut m) = self.state.relays.write() {
                m.insert(k.clone(), ctx);
            }
            tracing::debug!(relay = %k, epoch, "relay lease taken");
        }
    }

    /// Gives back the leases whose time has come.
    async fn flush_releases(&mut self) {
        let Some(fleet) = self.fleet.as_ref().map(|f| f.fleet.clone()) else {
            self.releases.clear();
            return;
        };
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.releases)
            .into_iter()
            .partition(|r| r.2 <= now);
        self.releases = later;
        for (k, ep, _) in due {
            if let Err(e) = fleet.release(RELAY, &k, ep).await {
                // It expires by itself after the TTL.
                tracing::warn!(error = %format!("{e:#}"), relay = %k, "cannot release a lease");
            }
        }
    }

    /// Stops every connector and waits for them.
    pub async fn shutdown(&mut self) {
        for e in self.entries.values() {
            if let Some(run) = &e.run {
                let _ = run.stop.send(true);
            }
        }
        while let Some(r) = self.tasks.join_next().await {
            if let (Some(_), Ok((key, _, _))) = (&self.fleet, r) {
                tracing::info!(relay = %key, at_ms = now_ms(), "fleet: connector ended");
            }
        }
        if let Ok(mut r) = self.state.running.write() {
            r.clear();
        }
    }
}
