//! The monitor's wiring: relays from the registry into the monitor stage (per-network
//! concurrency), its results into `relay_metadata` through `insert_relay_metadata`, and,
//! when configured, the NIP-66 events to the publish relays. Also what the connectors read
//! back: [`relay_limits`].

use crate::config::{relay_urls, Config};
use crate::db::Pool;
use anyhow::Context;
use bigbrotr_stages::model::SignedEvent;
use bigbrotr_stages::model::{now_secs, RelayUrl};
use bigbrotr_stages::monitor::nip11::{lenient_bool, Limitation};
use bigbrotr_stages::monitor::nip66::{self, Announcement};
use bigbrotr_stages::monitor::publish::{self, PublishReport};
use bigbrotr_stages::monitor::{self as stage, CheckResult, Checker, MonitorSettings, Parallelism};
use bigbrotr_stages::relay::TransportConfig;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Bound of the channels between the registry feed, the stage, the store loop and each
/// publisher (a check result holds up to `monitor.nip11_max_bytes` of document).
const CHANNEL: usize = 64;

/// The stage settings from `[monitor]` and `[net]`; reads the CA file. Errors name the key.
pub fn settings(cfg: &Config) -> anyhow::Result<MonitorSettings> {
    let m = &cfg.monitor;
    let tls_ca_pem =
        if m.tls_ca_file.is_empty() {
            None
        } else {
            Some(std::fs::read(&m.tls_ca_file).with_context(|| {
                format!("key `monitor.tls_ca_file`: cannot read {}", m.tls_ca_file)
            })?)
        };
    let dns_server = if m.dns_server.is_empty() {
        None
    } else {
        Some(m.dns_server.parse().with_context(|| {
            format!(
                "key `monitor.dns_server`: {:?} is not ip:port",
                m.dns_server
            )
        })?)
    };
    let path = |s: &str| (!s.is_empty()).then(|| std::path::PathBuf::from(s));
    Ok(MonitorSettings {
        transport: cfg.net.transport(),
        timeout_clearnet: m.timeout_clearnet.get(),
        timeout_overlay: m.timeout_tor.get(),
        nip11_max_bytes: m.nip11_max_bytes,
        tls_ca_pem,
        dns_server,
        geoip_db: path(&m.geoip_db),
        asn_db: path(&m.asn_db),
        keypair: m.keypair(),
        write_kind: m.write_kind,
    })
}

/// What one pass did.
#[derive(Debug, Clone, Default)]
pub struct PassReport {
    /// Relays checked.
    pub checked: u64,
    /// Relays whose WebSocket opened.
    pub openable: u64,
    /// Relays that answered the REQ.
    pub readable: u64,
    /// Relays that accepted the write probe.
    pub writable: u64,
    /// Relays whose NIP-11 document was obtained.
    pub nip11: u64,
    /// Snapshots written to `relay_metadata` (an existing one for the same second is kept).
    pub stored: u64,
    /// Snapshots that could not be written (database errors, logged).
    pub store_errors: u64,
    /// Kind 30166 events built (one per online relay) when publishing.
    pub events_built: u64,
    /// Per publish relay: accepted, rejected, failed.
    pub published: Vec<PublishReport>,
}

impl PassReport {
    /// A human-readable summary.
    pub fn render(&self) -> String {
        let mut s = format!(
            "monitor: {} relays checked: {} openable, {} readable, {} writable, {} with NIP-11; {} snapshots stored, {} store errors\n",
            self.checked,
            self.openable,
            self.readable,
            self.writable,
            self.nip11,
            self.stored,
            self.store_errors
        );
        for p in &self.published {
            let _ = writeln!(
                s,
                "  published to {}: {} accepted, {} rejected, {} failed{}",
                p.relay,
                p.accepted,
                p.rejected,
                p.failed,
                p.last_error
                    .as_deref()
                    .map(|e| format!(" (last: {e})"))
                    .unwrap_or_default()
            );
        }
        s
    }
}

/// The monitor: a loaded [`Checker`] plus the publishing setup.
pub struct Monitor {
    checker: Arc<Checker>,
    par: Parallelism,
    publish_relays: Vec<RelayUrl>,
    transport: TransportConfig,
    publish_timeout: Duration,
    frequency_secs: u64,
    geohash: Option<String>,
}

impl Monitor {
    /// Loads TLS roots, the resolver and the GeoIP databases per `[monitor]`.
    pub fn new(cfg: &Config) -> anyhow::Result<Monitor> {
        let settings = settings(cfg)?;
        let checker = Checker::new(settings).map_err(|e| anyhow::anyhow!("monitor: {e}"))?;
        let publish_relays = relay_urls(&cfg.monitor.publish_relays);
        Ok(Monitor {
            checker: Arc::new(checker),
            par: Parallelism {
                clearnet: cfg.monitor.max_parallel_clearnet,
                overlay: cfg.monitor.max_parallel_tor,
            },
            publish_relays,
            transport: cfg.net.transport(),
            publish_timeout: cfg.monitor.timeout_clearnet.get(),
            frequency_secs: cfg.monitor.interval.get().as_secs(),
            geohash: (!cfg.monitor.geohash.is_empty()).then(|| cfg.monitor.geohash.clone()),
        })
    }

    /// The checker (for tests and tools that check one relay).
    pub fn checker(&self) -> &Arc<Checker> {
        &self.checker
    }

    /// The kind 10166 announcement of this monitor's setup.
    pub fn announcement(&self) -> Announcement {
        let s = self.checker.settings();
        let ms = |d: Duration| d.as_millis().min(u128::from(u64::MAX)) as u64;
        let t = ms(s.timeout_clearnet);
        let timeouts = self
            .checker
            .check_names()
            .into_iter()
            .filter(|c| c != "geo")
            .map(|c| (c, t))
            .collect();
        Announcement {
            frequency_secs: self.frequency_secs,
            timeouts,
            checks: self.checker.check_names(),
            geohash: self.geohash.clone(),
        }
    }

    /// Checks `relays` once, stores every result, publishes when configured. A `stop` signal
    /// stops feeding new relays and drops the queued ones; checks already running finish and
    /// are stored.
    pub async fn pass(
        &self,
        pool: &Pool,
        relays: Vec<RelayUrl>,
        stop: Option<watch::Receiver<bool>>,
    ) -> anyhow::Result<PassReport> {
        let (in_tx, in_rx) = flume::bounded::<RelayUrl>(CHANNEL);
        let (out_tx, out_rx) = flume::bounded::<CheckResult>(CHANNEL);
        let queued = in_rx.clone();
        let stage_task = tokio::spawn(stage::run(self.checker.clone(), in_rx, out_tx, self.par));
        let feeder = tokio::spawn(async move {
            let mut stop = stop;
            for r in relays {
                if stop.as_ref().is_some_and(|s| *s.borrow()) {
                    // Relays queued but not started are dropped too: a stop waits only for
                    // the checks already running (each bounded by its timeouts).
                    queued.drain();
                    break;
                }
                let sent = match stop.as_mut() {
                    Some(s) => tokio::select! {
                        r = in_tx.send_async(r) => r.is_ok(),
                        _ = s.wait_for(|v| *v) => false,
                    },
                    None => in_tx.send_async(r).await.is_ok(),
                };
                if !sent {
                    queued.drain();
                    break;
                }
            }
        });

        let keypair = self.checker.settings().keypair;
        let mut publishers = Vec::new();
        if let (Some(kp), false) = (&keypair, self.publish_relays.is_empty()) {
            let announce = Arc::new(nip66::announcement_event(
                kp,
                &self.announcement(),
                now_secs(),
            ));
            for relay in &self.publish_relays {
                let (tx, rx) = flume::bounded::<Arc<SignedEvent>>(CHANNEL);
                let task = tokio::spawn(publish::run(
                    relay.clone(),
                    rx,
                    self.transport.clone(),
                    self.publish_timeout,
                ));
                let _ = tx.send_async(announce.clone()).await;
                publishers.push((tx, task));
            }
        }

        let mut report = PassReport::default();
        while let Ok(r) = out_rx.recv_async().await {
            report.checked += 1;
            report.openable += u64::from(r.openable);
            report.readable += u64::from(r.readable);
            report.writable += u64::from(r.writable == Some(true));
            report.nip11 += u64::from(r.nip11.is_some());
            match store(pool, &r).await {
                Ok(true) => report.stored += 1,
                Ok(false) => {}
                Err(e) => {
                    report.store_errors += 1;
                    tracing::warn!(relay = %r.relay, error = %format!("{e:#}"), "monitor: cannot store a check result");
                }
            }
            tracing::debug!(relay = %r.relay, openable = r.openable, readable = r.readable, rtt_open = ?r.rtt_open, "monitor: checked");
            if let (Some(kp), true) = (&keypair, r.is_online() && !publishers.is_empty()) {
                let ev = Arc::new(nip66::discovery_event(kp, &r, now_secs()));
                report.events_built += 1;
                for (tx, _) in &publishers {
                    let _ = tx.send_async(ev.clone()).await;
                }
            }
        }
        for (tx, task) in publishers {
            drop(tx);
            match task.await {
                Ok(p) => report.published.push(p),
                Err(e) => tracing::warn!(error = %e, "monitor: a publisher task failed"),
            }
        }
        let _ = feeder.await;
        let _ = stage_task.await;
        Ok(report)
    }
}

/// Records one check: `insert_relay_metadata` deduplicates the NIP-11 document and the check
/// result by content and adds the snapshot. Returns true if the snapshot was new.
pub async fn store(pool: &Pool, r: &CheckResult) -> anyhow::Result<bool> {
    let conn = pool
        .get()
        .await
        .context("cannot get a database connection to store a check")?;
    let url = r.relay.as_str();
    let network = r.relay.network().as_str();
    let row = conn
        .query_one(
            "SELECT insert_relay_metadata($1, $2, $3, $4, $5, $6)",
            &[
                &url,
                &network,
                &r.generated_at,
                &r.generated_at,
                &r.nip11,
                &r.nip66,
            ],
        )
        .await
        .with_context(|| format!("insert_relay_metadata for {url}"))?;
    row.try_get::<_, bool>(0)
        .context("insert_relay_metadata returned no boolean")
}

/// The registry relays the monitor can reach: local addresses only with `sync.allow_local`,
/// overlay networks only with `net.socks5`.
pub async fn registry_relays(cfg: &Config, pool: &Pool) -> anyhow::Result<Vec<RelayUrl>> {
    let rows = crate::db::list_relays(pool).await?;
    Ok(rows
        .into_iter()
        .filter_map(|(u, _)| RelayUrl::parse(&u, cfg.sync.allow_local).ok())
        .filter(|u| !u.network().is_overlay() || !cfg.net.socks5.is_empty())
        .collect())
}

/// `bigbrotr monitor --once`: one pass over the registry (or `relays` when given).
pub async fn run_once(
    cfg: &Config,
    pool: &Pool,
    relays: Option<Vec<RelayUrl>>,
    stop: Option<watch::Receiver<bool>>,
) -> anyhow::Result<PassReport> {
    let monitor = Monitor::new(cfg)?;
    let relays = match relays {
        Some(r) => r,
        None => registry_relays(cfg, pool).await?,
    };
    monitor.pass(pool, relays, stop).await
}

/// `bigbrotr monitor`: a pass over the registry every `monitor.interval` seconds until `stop`.
pub async fn run_forever(
    cfg: &Config,
    pool: &Pool,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let monitor = Monitor::new(cfg)?;
    let interval = cfg.monitor.interval.get();
    loop {
        let started = tokio::time::Instant::now();
        match registry_relays(cfg, pool).await {
            Ok(relays) => match monitor.pass(pool, relays, Some(stop.clone())).await {
                Ok(r) => tracing::info!("{}", r.render().trim_end()),
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "monitor pass failed"),
            },
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "monitor: cannot read the registry")
            }
        }
        if *stop.borrow() {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep_until(started + interval) => {}
            _ = stop.wait_for(|v| *v) => return Ok(()),
        }
    }
}

/// What the monitor learned that the connectors use to tune their requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayLimits {
    /// NIP-11 `limitation.max_limit`.
    pub max_limit: Option<usize>,
    /// NIP-11 `limitation.max_subscriptions`.
    pub max_subscriptions: Option<usize>,
    /// NIP-11 `limitation.auth_required`, or the relay asked for AUTH during the checks.
    pub auth_required: bool,
    /// The WebSocket opened at the newest check.
    pub reachable: bool,
}

/// The newest check of every checked relay (`relay_metadata_latest`), keyed by URL.
pub async fn relay_limits(pool: &Pool) -> anyhow::Result<HashMap<String, RelayLimits>> {
    let conn = pool
        .get()
        .await
        .context("cannot get a database connection to read relay limits")?;
    let rows = conn
        .query(
            "SELECT relay_url, limitation, openable, nip66_raw FROM relay_metadata_latest",
            &[],
        )
        .await
        .context("cannot read relay_metadata_latest")?;
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
        let url: String = row.try_get(0).context("bad relay_url")?;
        let limitation: Option<Value> = row.try_get(1).context("bad limitation")?;
        let openable: Option<bool> = row.try_get(2).context("bad openable")?;
        let raw: Option<Value> = row.try_get(3).context("bad nip66_raw")?;
        let l = limitation
            .as_ref()
            .map(Limitation::from_value)
            .unwrap_or_default();
        let observed = raw
            .as_ref()
            .and_then(|r| r.get("auth_required"))
            .and_then(lenient_bool)
            .unwrap_or(false);
        out.insert(
            url,
            RelayLimits {
                max_limit: l.max_limit,
                max_subscriptions: l.max_subscriptions,
                auth_required: l.auth_required.unwrap_or(false) || observed,
                reachable: openable.unwrap_or(false),
            },
        );
    }
    Ok(out)
}
