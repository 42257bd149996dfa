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
//! The monitor's view arrives through [`LimitsSource`]: [`MonitorLimits`] reads the monitor's
//! newest checks (relays it never checked are readable, with no limit); tests plug in their
//! own source, and [`NoLimits`] ignores limits altogether.

use crate::config::Config;
use crate::db::Pool;
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
}

impl Entry {
    fn readable(&self) -> bool {
        self.limits.is_none_or(|l| l.readable())
    }
}

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
        }
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
            .filter(|(_, e)| e.run.is_none() && e.next_at <= now && e.readable())
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
        self.running_dirty = true;
        let progressed = e.ctx.stats.committed.load(Relaxed) > run.committed_at_start;
        match (run.then, &outcome) {
            (Some(Then::Restart), _) => e.next_at = now,
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
            self.start_due();
            self.publish_running();
            let wake = self
                .entries
                .values()
                .filter(|e| e.run.is_none() && e.readable())
                .map(|e| e.next_at)
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

    /// Stops every connector and waits for them.
    pub async fn shutdown(&mut self) {
        for e in self.entries.values() {
            if let Some(run) = &e.run {
                let _ = run.stop.send(true);
            }
        }
        while self.tasks.join_next().await.is_some() {}
        if let Ok(mut r) = self.state.running.write() {
            r.clear();
        }
    }
}
