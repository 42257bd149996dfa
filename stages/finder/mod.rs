//! finder: discovers relays and validates them before they enter the registry.
//!
//! Sources: the seed file (re-read when it changes), HTTP relay lists (each with its own
//! cooldown and a response size cap), relay hints in events as they flow through dedupe (a
//! bounded channel of URL strings), and a one-time catch-up pass over the events archived
//! before the finder ran (keyset pages over `events`, progress in `service_state`).
//!
//! A new URL becomes a candidate (`candidates` table). A validation ([`validate`]) that gets
//! EOSE, or CLOSED `auth-required`, for `REQ {limit:1}` moves it into `relays` and announces
//! it on the `found` channel; failures back off exponentially and the candidate is dropped
//! after `max_attempts`, leaving a tombstone that is forgotten after `forget_after`.

pub mod hints;
pub mod sources;
mod store;
mod validate;

pub use store::StoreError;

use crate::model::{now_secs, Network, RelayUrl};
use crate::relay::TransportConfig;
use crate::sink::Pool;
use sources::HttpSource;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

/// Why a finder step failed; the loop logs it, counts database errors and goes on.
#[derive(Debug, thiserror::Error)]
pub enum FinderError {
    /// A statement on the finder's tables failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The seed file could not be read.
    #[error("cannot read seed file {}: {source}", path.display())]
    SeedFile {
        /// The configured seed file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The HTTP client for relay lists could not be built.
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(reqwest::Error),
    /// A relay list could not be fetched or read.
    #[error(transparent)]
    List(#[from] sources::ListError),
}

/// How the finder works (the engine builds it from `[finder]`, `[sync]` and `[net]`).
#[derive(Debug, Clone)]
pub struct FinderConfig {
    /// Accept loopback/private relays.
    pub allow_local: bool,
    /// The seed relay list (one URL per line), re-read when its modification time changes.
    pub seed_file: Option<PathBuf>,
    /// HTTP relay lists.
    pub http: Vec<HttpSource>,
    /// Largest HTTP list response, in bytes.
    pub max_response_bytes: usize,
    /// Total budget of one HTTP list fetch.
    pub http_timeout: Duration,
    /// Socket limits and the SOCKS5 proxy for overlay relays and lists.
    pub transport: TransportConfig,
    /// Validations running at once.
    pub validate_concurrency: usize,
    /// Budget of one validation (connect + REQ + EOSE) of a clearnet or local relay.
    pub validate_timeout: Duration,
    /// Budget of one validation of a relay reached through the proxy.
    pub validate_timeout_overlay: Duration,
    /// Failed validations before a candidate is dropped.
    pub max_attempts: u32,
    /// Wait after the first failed validation, in seconds; doubles with each failure.
    pub backoff: f64,
    /// Longest wait between validations, in seconds.
    pub backoff_max: f64,
    /// Most active candidates; new ones beyond are refused (counted).
    pub max_candidates: usize,
    /// Seconds after which a dropped candidate is forgotten (and can be found again).
    pub forget_after: f64,
    /// Run the catch-up pass over already archived events.
    pub catchup: bool,
    /// Events per catch-up page.
    pub catchup_batch: usize,
}

impl Default for FinderConfig {
    fn default() -> Self {
        FinderConfig {
            allow_local: false,
            seed_file: None,
            http: Vec::new(),
            max_response_bytes: 8 << 20,
            http_timeout: Duration::from_secs(30),
            transport: TransportConfig::default(),
            validate_concurrency: 20,
            validate_timeout: Duration::from_secs(15),
            validate_timeout_overlay: Duration::from_secs(60),
            max_attempts: 5,
            backoff: 600.0,
            backoff_max: 86_400.0,
            max_candidates: 100_000,
            forget_after: 30.0 * 86_400.0,
            catchup: true,
            catchup_batch: 2000,
        }
    }
}

impl FinderConfig {
    /// Networks whose candidates can be validated with this configuration.
    pub fn networks(&self) -> Vec<&'static str> {
        let mut n = vec![Network::Clearnet.as_str()];
        if self.allow_local {
            n.push(Network::Local.as_str());
        }
        if self.transport.socks5.is_some() {
            n.extend([Network::Tor, Network::I2p, Network::Loki].map(Network::as_str));
        }
        n
    }
}

/// Finder counters.
#[derive(Debug, Default)]
pub struct FinderStats {
    /// Hint strings received from the pipeline.
    pub hints_received: AtomicU64,
    /// URLs (hints, list entries, seed lines) refused by normalization.
    pub urls_refused: AtomicU64,
    /// New candidates recorded.
    pub candidates_added: AtomicU64,
    /// URLs not recorded because `max_candidates` active candidates exist.
    pub candidates_over_cap: AtomicU64,
    /// Candidates validated (now in `relays`).
    pub validated: AtomicU64,
    /// Failed validations.
    pub validations_failed: AtomicU64,
    /// Candidates dropped after `max_attempts` failures.
    pub dropped: AtomicU64,
    /// HTTP lists fetched and parsed.
    pub lists_fetched: AtomicU64,
    /// HTTP list fetches that failed (transport, status, size, shape).
    pub lists_failed: AtomicU64,
    /// Archived events scanned by the catch-up pass.
    pub archive_scanned: AtomicU64,
    /// Validated relays not announced because the `found` channel was full (the registry
    /// still finds them in `relays`).
    pub found_dropped: AtomicU64,
    /// Database errors (the loop goes on).
    pub db_errors: AtomicU64,
}

/// What `run_once` did.
#[derive(Debug, Default)]
pub struct OnceReport {
    /// Per HTTP list: its name and the URLs it listed, or why it failed.
    pub lists: Vec<(String, Result<usize, FinderError>)>,
    /// Relay lines in the seed file.
    pub seeds: usize,
    /// Archived events scanned by the catch-up pass.
    pub archive_scanned: u64,
    /// New candidates.
    pub candidates_added: u64,
    /// Candidates validated.
    pub validated: u64,
    /// Failed validations.
    pub failed: u64,
    /// Candidates dropped.
    pub dropped: u64,
}

impl OnceReport {
    /// Human-readable summary.
    pub fn render(&self) -> String {
        let mut s = format!(
            "finder: {} seed lines, {} archived events scanned, {} new candidates; {} validated, {} failed validations, {} dropped\n",
            self.seeds,
            self.archive_scanned,
            self.candidates_added,
            self.validated,
            self.failed,
            self.dropped
        );
        for (name, r) in &self.lists {
            match r {
                Ok(n) => s.push_str(&format!("  {name}: {n} URLs\n")),
                Err(e) => s.push_str(&format!("  {name}: failed: {e}\n")),
            }
        }
        s
    }
}

/// The finder stage.
#[derive(Clone)]
pub struct Finder {
    cfg: Arc<FinderConfig>,
    pool: Pool,
    found: Option<flume::Sender<RelayUrl>>,
    wake: Arc<Notify>,
    /// Counters.
    pub stats: Arc<FinderStats>,
}

/// Hint URLs remembered by the hint intake so repeats cost no database round trip.
const RECENT_HINTS: usize = 50_000;
/// Hint URLs written per database round trip.
const HINT_BATCH: usize = 500;
/// Longest a hint waits before its batch is written.
const HINT_FLUSH: Duration = Duration::from_millis(500);
/// Longest the loops sleep before looking again (seed file changes, newly due candidates).
const TICK: Duration = Duration::from_secs(30);
/// Pause between two catch-up pages.
const CATCHUP_PAUSE: Duration = Duration::from_millis(20);
/// Longest wait before a list whose last fetch failed is tried again (its cooldown, if
/// shorter, applies).
const LIST_RETRY: Duration = Duration::from_secs(3600);

impl Finder {
    /// A finder over `pool`; validated relays are announced on `found` (bounded; a full
    /// channel is counted, the relay is in `relays` either way).
    pub fn new(cfg: FinderConfig, pool: Pool, found: Option<flume::Sender<RelayUrl>>) -> Finder {
        Finder {
            cfg: Arc::new(cfg),
            pool,
            found,
            wake: Arc::new(Notify::new()),
            stats: Arc::new(FinderStats::default()),
        }
    }

    /// Normalizes URLs, counting refusals; keeps the first of duplicates.
    fn normalize<'a>(
        &self,
        urls: impl IntoIterator<Item = &'a str>,
    ) -> Vec<(String, &'static str)> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for u in urls {
            match RelayUrl::parse(u, self.cfg.allow_local) {
                Ok(r) => {
                    if seen.insert(r.clone()) {
                        out.push((r.to_string(), r.network().as_str()));
                    }
                }
                Err(e) => {
                    self.stats.urls_refused.fetch_add(1, Relaxed);
                    tracing::debug!(url = u, error = %e, "refused relay URL");
                }
            }
        }
        out
    }

    /// Records normalized URLs as candidates from `source`, within `max_candidates`.
    /// Returns how many were new.
    pub async fn add(
        &self,
        urls: Vec<(String, &'static str)>,
        source: &str,
    ) -> Result<u64, FinderError> {
        if urls.is_empty() {
            return Ok(0);
        }
        let active = store::active_candidates(&self.pool).await?;
        let room = usize::try_from((self.cfg.max_candidates as i64 - active).max(0)).unwrap_or(0);
        let mut urls = urls;
        if urls.len() > room {
            // Some may already be known (and cost no room), but the cap must hold.
            self.stats
                .candidates_over_cap
                .fetch_add((urls.len() - room) as u64, Relaxed);
            urls.truncate(room);
        }
        let n = store::add_candidates(&self.pool, &urls, source, now_secs()).await?;
        self.stats.candidates_added.fetch_add(n, Relaxed);
        if n > 0 {
            self.wake.notify_one();
        }
        Ok(n)
    }

    /// Adds raw URL strings from `source` (normalized here).
    pub async fn add_raw<'a>(
        &self,
        urls: impl IntoIterator<Item = &'a str>,
        source: &str,
    ) -> Result<u64, FinderError> {
        let n = self.normalize(urls);
        self.add(n, source).await
    }

    /// Reads the seed file and adds its relays; returns the number of lines read.
    pub async fn seeds_once(&self) -> Result<usize, FinderError> {
        let Some(path) = &self.cfg.seed_file else {
            return Ok(0);
        };
        let text =
            tokio::fs::read_to_string(path)
                .await
                .map_err(|source| FinderError::SeedFile {
                    path: path.clone(),
                    source,
                })?;
        let lines = sources::parse_seed_text(&text);
        let n = lines.len();
        self.add_raw(lines, "seeds").await?;
        Ok(n)
    }

    /// Fetches one HTTP list and adds its relays; records the fetch time (cooldown).
    pub async fn fetch_list(
        &self,
        client: &reqwest::Client,
        src: &HttpSource,
    ) -> Result<usize, FinderError> {
        let now = now_secs();
        let res = sources::fetch(client, src, self.cfg.max_response_bytes).await;
        let (payload, out) = match res {
            Ok(list) => {
                self.stats.lists_fetched.fetch_add(1, Relaxed);
                let n = list.urls.len();
                if list.skipped > 0 {
                    tracing::debug!(list = %src.url, skipped = list.skipped, "list elements without a URL");
                }
                let added = self
                    .add_raw(list.urls.iter().map(String::as_str), &src.name())
                    .await?;
                tracing::info!(list = %src.url, urls = n, new = added, "fetched relay list");
                (
                    serde_json::json!({"fetched_at": now, "urls": n, "new": added}),
                    Ok(n),
                )
            }
            Err(e) => {
                self.stats.lists_failed.fetch_add(1, Relaxed);
                tracing::warn!(list = %src.url, error = %e, "relay list fetch failed");
                (
                    serde_json::json!({"fetched_at": now, "error": e.to_string()}),
                    Err(FinderError::List(e)),
                )
            }
        };
        store::save_state(&self.pool, &format!("source:{}", src.url), &payload, now).await?;
        out
    }

    /// When `src` may be fetched again: its cooldown after the last recorded fetch, or
    /// sooner (at most [`LIST_RETRY`]) after a failed one.
    async fn list_due_at(&self, src: &HttpSource) -> Result<i64, FinderError> {
        let st = store::load_state(&self.pool, &format!("source:{}", src.url)).await?;
        let last = st
            .as_ref()
            .and_then(|v| v.get("fetched_at"))
            .and_then(|v| v.as_i64());
        let failed = st.as_ref().is_some_and(|v| v.get("error").is_some());
        let mut wait = src.cooldown.max(Duration::from_secs(1));
        if failed {
            wait = wait.min(LIST_RETRY);
        }
        Ok(match last {
            Some(t) => t.saturating_add(i64::try_from(wait.as_secs()).unwrap_or(i64::MAX)),
            None => 0,
        })
    }

    /// Scans archived events for hints from the saved position until done or `stop`;
    /// returns the number of events scanned by this call.
    pub async fn catch_up(&self, stop: &watch::Receiver<bool>) -> Result<u64, FinderError> {
        let st = store::load_state(&self.pool, "catchup").await?;
        if st
            .as_ref()
            .and_then(|v| v.get("done"))
            .and_then(|v| v.as_bool())
            == Some(true)
        {
            return Ok(0);
        }
        let mut after: Vec<u8> = st
            .as_ref()
            .and_then(|v| v.get("after"))
            .and_then(|v| v.as_str())
            .and_then(|h| hex::decode(h).ok())
            .unwrap_or_default();
        let mut total: u64 = st
            .as_ref()
            .and_then(|v| v.get("scanned"))
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        let batch = self.cfg.catchup_batch.max(1);
        let mut scanned_now = 0u64;
        loop {
            if *stop.borrow() {
                return Ok(scanned_now);
            }
            let page = store::archive_page(&self.pool, &after, batch).await?;
            let mut found: Vec<String> = Vec::new();
            for row in &page {
                hints::extract(
                    row.kind,
                    &row.tags,
                    row.content.as_deref().unwrap_or(""),
                    &mut |u| found.push(u.to_string()),
                );
            }
            if let Some(last) = page.last() {
                after = last.id.clone();
            }
            let n = page.len() as u64;
            scanned_now += n;
            total += n;
            self.stats.archive_scanned.fetch_add(n, Relaxed);
            self.add_raw(found.iter().map(String::as_str), "archive")
                .await?;
            let done = page.len() < batch;
            let payload = serde_json::json!({
                "after": hex::encode(&after),
                "scanned": total,
                "done": done,
            });
            store::save_state(&self.pool, "catchup", &payload, now_secs()).await?;
            if done {
                tracing::info!(scanned = total, "finder: archive catch-up complete");
                return Ok(scanned_now);
            }
            // A short breath between pages so a large archive's scan never crowds out the
            // sink's transactions.
            tokio::time::sleep(CATCHUP_PAUSE).await;
        }
    }

    /// Validates one candidate and records the result; returns Ok(true) if it was validated.
    pub async fn validate_one(&self, url: &str) -> Result<bool, FinderError> {
        let now = now_secs();
        let parsed = match RelayUrl::parse(url, self.cfg.allow_local) {
            Ok(u) => u,
            Err(e) => {
                store::drop_candidate(&self.pool, url, &format!("refused: {e}"), now).await?;
                self.stats.dropped.fetch_add(1, Relaxed);
                return Ok(false);
            }
        };
        let timeout = if parsed.network().is_overlay() {
            self.cfg.validate_timeout_overlay
        } else {
            self.cfg.validate_timeout
        };
        match validate::validate(&parsed, &self.cfg.transport, timeout).await {
            Ok(v) => {
                store::promote(
                    &self.pool,
                    parsed.as_str(),
                    parsed.network().as_str(),
                    now_secs(),
                )
                .await?;
                self.stats.validated.fetch_add(1, Relaxed);
                tracing::info!(relay = %parsed, result = ?v, "validated new relay");
                if let Some(tx) = &self.found {
                    if tx.try_send(parsed).is_err() {
                        self.stats.found_dropped.fetch_add(1, Relaxed);
                    }
                }
                Ok(true)
            }
            Err(e) => {
                self.stats.validations_failed.fetch_add(1, Relaxed);
                tracing::debug!(relay = %parsed, error = %e, "validation failed");
                let dropped = store::record_failure(
                    &self.pool,
                    parsed.as_str(),
                    &e.to_string(),
                    now_secs(),
                    self.cfg.backoff.max(1.0),
                    self.cfg.backoff_max.max(1.0),
                    self.cfg.max_attempts.max(1),
                )
                .await?;
                if dropped {
                    self.stats.dropped.fetch_add(1, Relaxed);
                    tracing::debug!(relay = %parsed, "candidate dropped after too many failed validations");
                }
                Ok(false)
            }
        }
    }

    /// Validates every candidate due now, once each, `validate_concurrency` at a time.
    pub async fn validate_due(&self) -> Result<(u64, u64), FinderError> {
        let networks = self.cfg.networks();
        let due = store::due_candidates(
            &self.pool,
            now_secs(),
            &networks,
            &[],
            self.cfg.max_candidates,
        )
        .await?;
        let mut set = JoinSet::new();
        let (mut ok, mut failed) = (0u64, 0u64);
        let mut it = due.into_iter();
        loop {
            while set.len() < self.cfg.validate_concurrency.max(1) {
                let Some(url) = it.next() else { break };
                let me = self.clone();
                set.spawn(async move { me.validate_one(&url).await });
            }
            match set.join_next().await {
                None => break,
                Some(Ok(Ok(true))) => ok += 1,
                Some(Ok(Ok(false))) => failed += 1,
                Some(Ok(Err(e))) => {
                    self.stats.db_errors.fetch_add(1, Relaxed);
                    tracing::warn!(error = %e, "finder: recording a validation failed");
                }
                Some(Err(e)) => tracing::warn!(error = %e, "finder: validation task failed"),
            }
        }
        Ok((ok, failed))
    }

    /// One pass: the seed file, every HTTP list (cooldowns ignored, fetch times recorded),
    /// the archive catch-up to its end, then one validation of every due candidate.
    pub async fn run_once(&self) -> Result<OnceReport, FinderError> {
        let before = (
            self.stats.candidates_added.load(Relaxed),
            self.stats.dropped.load(Relaxed),
        );
        let mut report = OnceReport {
            seeds: self.seeds_once().await?,
            ..OnceReport::default()
        };
        if !self.cfg.http.is_empty() {
            let client =
                sources::http_client(self.cfg.transport.socks5.as_deref(), self.cfg.http_timeout)?;
            for src in &self.cfg.http {
                let r = self.fetch_list(&client, src).await;
                report.lists.push((src.name(), r));
            }
        }
        if self.cfg.catchup {
            let (_tx, rx) = watch::channel(false);
            report.archive_scanned = self.catch_up(&rx).await?;
        }
        let (ok, failed) = self.validate_due().await?;
        report.validated = ok;
        report.failed = failed;
        report.candidates_added = self.stats.candidates_added.load(Relaxed) - before.0;
        report.dropped = self.stats.dropped.load(Relaxed) - before.1;
        Ok(report)
    }

    /// Runs until `stop`: hint intake (if `hints` is given), the seed file and HTTP lists on
    /// their cooldowns, the archive catch-up, and the validator.
    pub async fn run(self, hints: Option<flume::Receiver<String>>, stop: watch::Receiver<bool>) {
        let mut tasks = JoinSet::new();
        if let Some(rx) = hints {
            tasks.spawn(self.clone().hint_intake(rx, stop.clone()));
        }
        tasks.spawn(self.clone().sources_loop(stop.clone()));
        if self.cfg.catchup {
            let me = self.clone();
            let st = stop.clone();
            tasks.spawn(async move {
                if let Err(e) = me.catch_up(&st).await {
                    me.stats.db_errors.fetch_add(1, Relaxed);
                    tracing::warn!(error = %e, "finder: archive catch-up stopped; it resumes at the next start");
                }
            });
        }
        tasks.spawn(self.clone().validator(stop.clone()));
        while tasks.join_next().await.is_some() {}
    }

    async fn sleep_or_stop(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
        if *stop.borrow() {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            r = stop.changed() => r.is_err() || *stop.borrow(),
        }
    }

    async fn hint_intake(self, rx: flume::Receiver<String>, mut stop: watch::Receiver<bool>) {
        // Two generations of recently recorded URLs: bounded, and a URL seen constantly
        // stays remembered.
        let mut recent: (HashSet<String>, HashSet<String>) = Default::default();
        let mut buf: Vec<(String, &'static str)> = Vec::new();
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let flush_at = deadline.unwrap_or_else(|| tokio::time::Instant::now() + TICK);
            let closed = tokio::select! {
                r = rx.recv_async() => match r {
                    Ok(s) => {
                        self.stats.hints_received.fetch_add(1, Relaxed);
                        match RelayUrl::parse(&s, self.cfg.allow_local) {
                            Ok(u) => {
                                let key = u.to_string();
                                if !recent.0.contains(&key) && !recent.1.contains(&key) {
                                    if recent.0.len() >= RECENT_HINTS / 2 {
                                        recent.1 = std::mem::take(&mut recent.0);
                                    }
                                    recent.0.insert(key.clone());
                                    buf.push((key, u.network().as_str()));
                                    deadline.get_or_insert_with(|| tokio::time::Instant::now() + HINT_FLUSH);
                                }
                            }
                            Err(_) => {
                                self.stats.urls_refused.fetch_add(1, Relaxed);
                            }
                        }
                        false
                    }
                    Err(_) => true,
                },
                _ = tokio::time::sleep_until(flush_at) => false,
                r = stop.changed() => r.is_err() || *stop.borrow(),
            };
            let due = deadline.is_some_and(|d| d <= tokio::time::Instant::now());
            if !buf.is_empty() && (closed || due || buf.len() >= HINT_BATCH) {
                let batch = std::mem::take(&mut buf);
                if let Err(e) = self.add(batch.clone(), "hint").await {
                    self.stats.db_errors.fetch_add(1, Relaxed);
                    tracing::warn!(error = %e, "finder: cannot record hinted relays");
                    // Forget them so a later hint retries.
                    for (u, _) in &batch {
                        recent.0.remove(u);
                        recent.1.remove(u);
                    }
                }
                deadline = None;
            }
            if closed {
                break;
            }
        }
    }

    async fn sources_loop(self, mut stop: watch::Receiver<bool>) {
        let client = if self.cfg.http.is_empty() {
            None
        } else {
            match sources::http_client(self.cfg.transport.socks5.as_deref(), self.cfg.http_timeout)
            {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "finder: HTTP relay lists disabled");
                    None
                }
            }
        };
        let mut seed_mtime: Option<SystemTime> = None;
        loop {
            if let Some(path) = &self.cfg.seed_file {
                let mtime = tokio::fs::metadata(path)
                    .await
                    .and_then(|m| m.modified())
                    .ok();
                if mtime.is_some() && mtime != seed_mtime {
                    match self.seeds_once().await {
                        Ok(_) => seed_mtime = mtime,
                        Err(e) => tracing::warn!(error = %e, "finder: seed file not read"),
                    }
                }
            }
            let mut sleep = TICK;
            if let Some(client) = &client {
                for src in &self.cfg.http {
                    let now = now_secs();
                    let due_at = match self.list_due_at(src).await {
                        Ok(t) => t,
                        Err(e) => {
                            self.stats.db_errors.fetch_add(1, Relaxed);
                            tracing::warn!(error = %e, "finder: cannot read list state");
                            continue;
                        }
                    };
                    if due_at <= now {
                        if let Err(e) = self.fetch_list(client, src).await {
                            tracing::debug!(list = %src.url, error = %e, "list not used");
                        }
                        sleep = sleep.min(src.cooldown.max(Duration::from_secs(1)));
                    } else {
                        sleep = sleep.min(Duration::from_secs((due_at - now) as u64));
                    }
                }
            }
            if Self::sleep_or_stop(&mut stop, sleep).await {
                break;
            }
        }
    }

    async fn validator(self, mut stop: watch::Receiver<bool>) {
        let networks = self.cfg.networks();
        let conc = self.cfg.validate_concurrency.max(1);
        let mut set: JoinSet<(String, Result<bool, FinderError>)> = JoinSet::new();
        let mut busy: HashSet<String> = HashSet::new();
        let mut next_forget = tokio::time::Instant::now();
        loop {
            if *stop.borrow() {
                break;
            }
            if tokio::time::Instant::now() >= next_forget {
                let before = now_secs() - self.cfg.forget_after.max(0.0) as i64;
                if let Err(e) = store::forget_dropped(&self.pool, before).await {
                    tracing::debug!(error = %e, "finder: cannot forget old tombstones");
                }
                next_forget = tokio::time::Instant::now() + Duration::from_secs(3600);
            }
            let mut wait = TICK;
            if set.len() < conc {
                let busy_v: Vec<String> = busy.iter().cloned().collect();
                match store::due_candidates(
                    &self.pool,
                    now_secs(),
                    &networks,
                    &busy_v,
                    conc - set.len(),
                )
                .await
                {
                    Ok(due) => {
                        for url in due {
                            busy.insert(url.clone());
                            let me = self.clone();
                            set.spawn(async move {
                                let r = me.validate_one(&url).await;
                                (url, r)
                            });
                        }
                    }
                    Err(e) => {
                        self.stats.db_errors.fetch_add(1, Relaxed);
                        tracing::warn!(error = %e, "finder: cannot read candidates");
                    }
                }
                if set.len() < conc {
                    if let Ok(Some(t)) = store::next_due(&self.pool, &networks).await {
                        let secs = (t - now_secs()).max(0) as u64;
                        // A candidate due now but busy would spin: look again after a second.
                        wait = wait.min(Duration::from_secs(secs.max(1)));
                    }
                }
            }
            tokio::select! {
                r = set.join_next(), if !set.is_empty() => {
                    match r {
                        Some(Ok((url, res))) => {
                            busy.remove(&url);
                            if let Err(e) = res {
                                self.stats.db_errors.fetch_add(1, Relaxed);
                                tracing::warn!(error = %e, "finder: recording a validation failed");
                            }
                        }
                        Some(Err(e)) => {
                            // The task's URL is unknown here: rebuild busy from the running set.
                            tracing::warn!(error = %e, "finder: validation task failed");
                            if set.is_empty() {
                                busy.clear();
                            }
                        }
                        None => {}
                    }
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                r = stop.changed() => {
                    if r.is_err() || *stop.borrow() { break; }
                }
            }
        }
        set.shutdown().await;
    }
}
