//! The DVM's wiring (NIP-90): the stage (`stages/dvm`) answered from the archive.
//!
//! Jobs read through their own small pool of read-only connections (the HTTP API's role and
//! connection settings, see [`crate::http::reader_config`]) whose `statement_timeout` is the
//! DVM's `job_timeout`, so a job the stage has given up on does not keep running in
//! PostgreSQL. Every query is bounded: events jobs by `dvm.max_limit` rows and
//! `dvm.max_result_bytes` of content, statistics by `dvm.max_limit` rows, filters by
//! `dvm.max_filter_values`.

use crate::config::{Config, Millis};
use crate::db::Pool;
use crate::faults::Faults;
use crate::filter_sql::{
    push, refs, stored_tags_and_content, Conditions, FilterSql, SqlParams, StoredError,
};
use anyhow::Context;
use bb8_postgres::PostgresConnectionManager;
use bigbrotr_stages::dvm::{
    self as stage, Announcement, Answer, Backend, CustomerLimits, DvmSettings, DvmStats, Filter,
    Job, Limits,
};
use bigbrotr_stages::model::canonical::write_tags;
use bigbrotr_stages::model::{now_secs, Event};
use futures_util::TryStreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

/// Longest a job waits for a pooled connection (it also counts against `job_timeout`).
const CHECKOUT: Duration = Duration::from_secs(5);

/// Fewest bytes an event's JSON takes besides its content: the 64-digit id and pubkey, the
/// 128-digit sig, the field names, `[]` tags and one-digit numbers come to 333; rounded down
/// so that the events query's size estimate stays a lower bound.
const JSON_FLOOR: i64 = 320;

/// The `d` tag of the NIP-89 announcement.
pub const HANDLER_ID: &str = "bigbrotr-archive";

/// The stage settings from `[dvm]` and `[net]`. Errors name the key.
pub fn settings(cfg: &Config) -> anyhow::Result<DvmSettings> {
    let d = &cfg.dvm;
    let keypair = d.keypair().ok_or_else(|| {
        anyhow::anyhow!(
            "key `dvm.private_key` (or BIGBROTR_DVM_PRIVATE_KEY) must be a 64-digit hex secret key to sign the DVM's answers"
        )
    })?;
    if d.relays.is_empty() {
        anyhow::bail!("key `dvm.relays` is empty: the DVM needs relays to read requests from");
    }
    let relays = d.relay_urls();
    Ok(DvmSettings {
        keypair,
        relays,
        transport: cfg.net.transport(),
        connect_timeout: cfg.sync.timeouts.clearnet.connect.get(),
        job_timeout: d.job_timeout.get(),
        max_concurrent_jobs: d.max_concurrent_jobs,
        max_queued_jobs: d.max_queued_jobs,
        customers: CustomerLimits {
            jobs_per_minute: d.per_customer_jobs_per_minute,
            burst: d.per_customer_burst,
            max_jobs: d.per_customer_max_jobs,
            max_customers: d.max_customers,
        },
        max_request_bytes: d.max_request_bytes,
        limits: Limits {
            max_limit: d.max_limit,
            max_filter_values: d.max_filter_values,
        },
        announce: d.announce.then(|| Announcement {
            identifier: HANDLER_ID.to_string(),
            name: d.name.clone(),
            about: d.about.clone(),
        }),
        since: now_secs(),
    })
}

/// The DVM's read-only pool: the API's connection settings with `statement_timeout` =
/// `dvm.job_timeout`, one connection per concurrent job.
pub async fn reader_pool(cfg: &Config, archive_url: &str) -> anyhow::Result<Pool> {
    let mut http = cfg.http.clone();
    let ms = cfg.dvm.job_timeout.get().as_millis().max(1);
    http.statement_timeout_ms = Millis::new(u64::try_from(ms).unwrap_or(u64::MAX));
    let mut config = crate::http::reader_config(&http, archive_url)?;
    config.application_name("bigbrotr-dvm");
    let who = config.get_user().unwrap_or("(default user)").to_string();
    let hint = "set `http.readonly_database_url` to a role that can read the archive";
    let probe = tokio::time::timeout(CHECKOUT * 2, config.connect(NoTls))
        .await
        .map_err(|_| anyhow::anyhow!("DVM: no answer from PostgreSQL as {who}; {hint}"))?
        .map_err(|e| anyhow::anyhow!("DVM: cannot connect to PostgreSQL as {who}: {e}; {hint}"))?;
    drop(probe);
    let size = u32::try_from(cfg.dvm.max_concurrent_jobs.max(1)).unwrap_or(u32::MAX);
    bb8::Pool::builder()
        .max_size(size)
        .connection_timeout(CHECKOUT)
        .build(PostgresConnectionManager::new(config, NoTls))
        .await
        .with_context(|| format!("DVM: cannot open a connection pool as {who}"))
}

/// Answers jobs from the archive.
pub struct ArchiveBackend {
    pool: Pool,
    max_result_bytes: usize,
    tag_index: crate::filter_sql::TagIndexReady,
}

impl ArchiveBackend {
    /// A backend reading through `pool`; events jobs stop adding events past
    /// `max_result_bytes` of content.
    pub fn new(pool: Pool, max_result_bytes: usize) -> ArchiveBackend {
        ArchiveBackend {
            pool,
            max_result_bytes,
            tag_index: crate::filter_sql::TagIndexReady::default(),
        }
    }
}

/// The customer's message for a database error; the detail goes to the log.
fn db_error(e: &tokio_postgres::Error) -> String {
    match e.code() {
        Some(c) if *c == SqlState::QUERY_CANCELED => {
            "the query ran past the job's time limit: narrow the filter".into()
        }
        Some(c)
            if *c == SqlState::CHARACTER_NOT_IN_REPERTOIRE
                || *c == SqlState::UNTRANSLATABLE_CHARACTER =>
        {
            "the filter holds a character the archive cannot search for".into()
        }
        _ => {
            tracing::warn!(error = %e, "DVM: archive query failed");
            "the archive is unavailable".into()
        }
    }
}

type Conn<'a> = bb8::PooledConnection<'a, PostgresConnectionManager<NoTls>>;

impl ArchiveBackend {
    async fn conn(&self) -> Result<Conn<'_>, String> {
        self.pool.get().await.map_err(|e| match e {
            bb8::RunError::User(e) => db_error(&e),
            bb8::RunError::TimedOut => "the archive is busy: try again later".into(),
        })
    }

    async fn count(&self, f: &Filter) -> Result<Answer, String> {
        let mut params = SqlParams::new();
        let conn = self.conn().await?;
        let tag_index = !f.tags.is_empty() && self.tag_index.get(&conn).await;
        let FilterSql {
            from, conditions, ..
        } = conditions(f, tag_index, &mut params);
        let sql = format!("SELECT count(*) FROM {from} WHERE TRUE{conditions}");
        let row = conn
            .query_one(&sql, &refs(&params))
            .await
            .map_err(|e| db_error(&e))?;
        let n: i64 = row.try_get(0).map_err(|e| db_error(&e))?;
        Ok(serde_json::json!({ "count": n }).to_string().into())
    }

    /// The newest matching events, as a JSON array, cut before it grows past
    /// `max_result_bytes` (then tagged `["truncated","max_result_bytes",<bytes>]`).
    ///
    /// Memory stays near the budget whatever the events' sizes: the query itself stops
    /// sending rows once a lower bound of the events' JSON so far passes the budget (one
    /// row past it, to tell a cut answer from a complete one), and rows are read one at a
    /// time from the stream and dropped once appended.
    async fn events(&self, f: &Filter, limit: u64) -> Result<Answer, String> {
        if limit == 0 {
            return Ok(String::from("[]").into());
        }
        let mut params = SqlParams::new();
        let conn = self.conn().await?;
        let tag_index = !f.tags.is_empty() && self.tag_index.get(&conn).await;
        let FilterSql {
            from, conditions, ..
        } = conditions(f, tag_index, &mut params);
        let n = push(
            Box::new(i64::try_from(limit).unwrap_or(i64::MAX)),
            &mut params,
        );
        let budget = push(
            Box::new(i64::try_from(self.max_result_bytes).unwrap_or(i64::MAX)),
            &mut params,
        );
        // NIP-01 order: newest first, ties broken by the lowest id. `before` is a lower bound
        // of the JSON of the events ahead of a row (content bytes, which JSON escaping never
        // shrinks, plus the fixed fields); `octet_length` reads a TOASTed value's size without
        // fetching it.
        let sql = format!(
            "SELECT s.id, s.pubkey, s.created_at, s.kind, s.tags, s.content, s.sig, s.raw_canonical
             FROM (SELECT e.id, e.pubkey, e.created_at, e.kind, e.tags::text AS tags, e.content,
                          e.sig, e.raw_canonical,
                          coalesce(sum(octet_length(e.content) + {JSON_FLOOR}) OVER (
                              ORDER BY e.created_at DESC, e.id ASC
                              ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before
                   FROM {from} WHERE TRUE{conditions}
                   ORDER BY e.created_at DESC, e.id ASC LIMIT ${n}) AS s
             WHERE s.before <= ${budget}
             ORDER BY s.created_at DESC, s.id ASC"
        );
        let rows = conn
            .query_raw(&sql, refs(&params))
            .await
            .map_err(|e| db_error(&e))?;
        futures_util::pin_mut!(rows);
        let mut out = String::from("[");
        let mut buf = Vec::new();
        let mut truncated = false;
        while let Some(row) = rows.try_next().await.map_err(|e| db_error(&e))? {
            let ev = event_from_row(&row)?;
            drop(row);
            if ev.compute_id(&mut buf) != ev.id {
                // Cannot happen for rows the pipeline stored; never hand out what would not verify.
                tracing::warn!(id = %hex::encode(ev.id), "DVM: archived event does not match its id; left out");
                continue;
            }
            let json = ev.to_json();
            drop(ev);
            if out.len() + json.len() + 2 > self.max_result_bytes {
                truncated = true;
                break;
            }
            if out.len() > 1 {
                out.push(',');
            }
            out.push_str(&json);
        }
        // Dropping the stream mid-way leaves the rest (at most one row, see the query) to
        // the connection, which discards it.
        out.push(']');
        let mut answer = Answer::from(out);
        if truncated {
            answer.tags.push(vec![
                "truncated".into(),
                "max_result_bytes".into(),
                self.max_result_bytes.to_string(),
            ]);
        }
        Ok(answer)
    }

    async fn relay_stats(&self, relay: Option<&str>, limit: u64) -> Result<Answer, String> {
        let conn = self.conn().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let row = conn
            .query_one(
                "SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.event_count DESC, s.relay_url), '[]'::jsonb)
                 FROM (SELECT * FROM relays_statistics
                       WHERE $1::text IS NULL OR relay_url = $1
                       ORDER BY event_count DESC, relay_url LIMIT $2) AS s",
                &[&relay, &limit],
            )
            .await
            .map_err(|e| db_error(&e))?;
        let v: serde_json::Value = row.try_get(0).map_err(|e| db_error(&e))?;
        if let Some(url) = relay {
            if v.as_array().is_none_or(Vec::is_empty) {
                return Err(format!("relay {url} is not in the archive"));
            }
        }
        Ok(v.to_string().into())
    }

    async fn archive_stats(&self) -> Result<Answer, String> {
        let conn = self.conn().await?;
        let row = conn
            .query_one("SELECT to_jsonb(s) FROM events_statistics AS s", &[])
            .await
            .map_err(|e| db_error(&e))?;
        let v: serde_json::Value = row.try_get(0).map_err(|e| db_error(&e))?;
        Ok(v.to_string().into())
    }
}

impl Backend for ArchiveBackend {
    async fn run(&self, job: &Job) -> Result<Answer, String> {
        match job {
            Job::Count(f) => self.count(f).await,
            Job::Events { filter, limit } => self.events(filter, *limit).await,
            Job::RelayStats { relay, limit } => self.relay_stats(relay.as_deref(), *limit).await,
            Job::ArchiveStats => self.archive_stats().await,
        }
    }
}

/// The WHERE condition of a NIP-01 filter over `events AS e`, its values appended to
/// `params`. An empty list in a job's filter matches nothing.
fn conditions(f: &Filter, tag_index: bool, params: &mut SqlParams) -> FilterSql {
    let bytes = |v: &Vec<[u8; 32]>| v.iter().map(|b| b.to_vec()).collect::<Vec<Vec<u8>>>();
    Conditions {
        ids: f.ids.as_ref().map(bytes),
        authors: f.authors.as_ref().map(bytes),
        kinds: f
            .kinds
            .as_ref()
            .map(|k| k.iter().map(|k| i32::from(*k)).collect()),
        since: f.since,
        until: f.until,
        tags: f
            .tags
            .iter()
            .map(|(l, v)| (l.to_string(), v.as_slice()))
            .collect(),
        before: None,
        tag_index,
        // No per-author cut: the DVM orders ties by the lowest id (NIP-01), the cut by the
        // highest.
        limit: None,
    }
    .build(params)
}

/// Rebuilds the signed event of an `events` row; rows with `raw_canonical` (U+0000 in
/// content or tags) are read from the canonical text, so the event is exactly the signed one.
fn event_from_row(r: &tokio_postgres::Row) -> Result<Event, String> {
    let bad = |what: &str| {
        tracing::warn!("DVM: {what}");
        "the archive holds an unreadable event".to_string()
    };
    let (tags, content) = stored_tags_and_content(r).map_err(|e| match e {
        StoredError::Db(e) => db_error(&e),
        StoredError::Malformed(column) => bad(&format!("malformed {column}")),
        StoredError::NoBody => {
            "this archive is metadata-only: it keeps no event bodies to return".to_string()
        }
    })?;
    let fixed =
        |col: usize| -> Result<Vec<u8>, String> { r.try_get(col).map_err(|e| db_error(&e)) };
    let id: [u8; 32] = fixed(0)?
        .try_into()
        .map_err(|_| bad("id is not 32 bytes"))?;
    let pubkey: [u8; 32] = fixed(1)?
        .try_into()
        .map_err(|_| bad("pubkey is not 32 bytes"))?;
    let sig: [u8; 64] = fixed(6)?
        .try_into()
        .map_err(|_| bad("sig is not 64 bytes"))?;
    let kind: i32 = r.try_get(3).map_err(|e| db_error(&e))?;
    let mut tags_json = Vec::new();
    write_tags(
        &mut tags_json,
        tags.iter().map(|t| t.iter().map(String::as_str)),
    );
    Ok(Event {
        id,
        pubkey,
        sig,
        created_at: r.try_get(2).map_err(|e| db_error(&e))?,
        kind: u16::try_from(kind).map_err(|_| bad("kind out of range"))?,
        tags_json: String::from_utf8_lossy(&tags_json)
            .into_owned()
            .into_boxed_str(),
        content: content.into_boxed_str(),
    })
}

/// A running DVM.
pub struct RunningDvm {
    /// Its counters.
    pub stats: Arc<DvmStats>,
    /// The public key requests must `p`-tag (hex).
    pub pubkey: String,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RunningDvm {
    /// Stops it: closes the relay connections and drops jobs still running.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Starts the DVM over the archive at `archive_url`: checks `[dvm]`, opens the read-only
/// pool, connects to `dvm.relays`.
pub async fn start(cfg: &Config, archive_url: &str) -> anyhow::Result<RunningDvm> {
    start_under(cfg, archive_url, &Faults::default()).await
}

/// [`start`], with the DVM's task reporting a panic to `faults` as the `dvm` stage, so that
/// inside a run it stops the process with an error naming it.
pub async fn start_under(
    cfg: &Config,
    archive_url: &str,
    faults: &Faults,
) -> anyhow::Result<RunningDvm> {
    let settings = settings(cfg)?;
    let pool = reader_pool(cfg, archive_url).await?;
    let backend = Arc::new(ArchiveBackend::new(pool, cfg.dvm.max_result_bytes));
    let stats = Arc::new(DvmStats::default());
    let pubkey = hex::encode(settings.keypair.x_only_public_key().0.to_byte_array());
    tracing::info!(
        pubkey = %pubkey,
        relays = settings.relays.len(),
        kinds = ?stage::jobs::SUPPORTED,
        "DVM answering job requests"
    );
    let (stop, rx) = watch::channel(false);
    let task = faults.spawn("dvm", stage::run(settings, backend, stats.clone(), rx));
    Ok(RunningDvm {
        stats,
        pubkey,
        stop,
        task,
    })
}

/// Runs the DVM until `stop` turns true (or its sender is dropped).
pub async fn run_forever(
    cfg: &Config,
    archive_url: &str,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let dvm = start(cfg, archive_url).await?;
    let _ = stop.wait_for(|s| *s).await;
    dvm.stop().await;
    Ok(())
}
