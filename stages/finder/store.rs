//! The finder's tables: `candidates` (sql/006_candidates.sql), `relays` (validated relays
//! enter it), `service_state` rows with service_name = 'finder' (list fetch times, archive
//! catch-up progress), and keyset pages over `events` for the catch-up pass.

use crate::sink::Pool;
use tokio_postgres::types::{ToSql, Type};

/// `service_state.service_name` of the finder.
pub(crate) const FINDER_SERVICE: &str = "finder";

/// A finder statement that failed: what it was doing, and the database's error.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct StoreError {
    what: &'static str,
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// The result of a finder statement.
pub(crate) type DbResult<T> = Result<T, StoreError>;

fn err<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError {
        what,
        source: Box::new(e),
    }
}

type Conn<'a> =
    bb8::PooledConnection<'a, bb8_postgres::PostgresConnectionManager<tokio_postgres::NoTls>>;

async fn conn(pool: &Pool) -> DbResult<Conn<'_>> {
    pool.get().await.map_err(err("database connection"))
}

/// Active (not dropped) candidates.
pub(crate) async fn active_candidates(pool: &Pool) -> DbResult<i64> {
    let c = conn(pool).await?;
    let row = c
        .query_one(
            "SELECT count(*) FROM candidates WHERE dropped_at IS NULL",
            &[],
        )
        .await
        .map_err(err("count candidates"))?;
    Ok(row.get(0))
}

/// Adds `(url, network)` pairs as candidates found in `source`, skipping URLs already in
/// `relays` or already candidates (tombstones included). Returns how many were new.
pub(crate) async fn add_candidates(
    pool: &Pool,
    rows: &[(String, &'static str)],
    source: &str,
    now: i64,
) -> DbResult<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let c = conn(pool).await?;
    let mut new = 0;
    for chunk in rows.chunks(1000) {
        let urls: Vec<&str> = chunk.iter().map(|(u, _)| u.as_str()).collect();
        let nets: Vec<&str> = chunk.iter().map(|(_, n)| *n).collect();
        let params: [(&(dyn ToSql + Sync), Type); 4] = [
            (&urls, Type::TEXT_ARRAY),
            (&nets, Type::TEXT_ARRAY),
            (&source, Type::TEXT),
            (&now, Type::INT8),
        ];
        new += c
            .execute_typed(
                "INSERT INTO candidates (url, network, source, inserted_at, next_attempt_at)
                 SELECT t.url, t.network, $3, $4, $4
                 FROM UNNEST($1::TEXT[], $2::TEXT[]) AS t (url, network)
                 WHERE NOT EXISTS (SELECT 1 FROM relays r WHERE r.url = t.url)
                 ON CONFLICT (url) DO NOTHING",
                &params,
            )
            .await
            .map_err(err("insert candidates"))?;
    }
    Ok(new)
}

/// Up to `limit` active candidates due at `now` on `networks`, not in `busy`, oldest due first.
pub(crate) async fn due_candidates(
    pool: &Pool,
    now: i64,
    networks: &[&str],
    busy: &[String],
    limit: usize,
) -> DbResult<Vec<String>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let c = conn(pool).await?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = c
        .query(
            "SELECT url FROM candidates
             WHERE dropped_at IS NULL AND next_attempt_at <= $1
               AND network = ANY($2::TEXT[]) AND url <> ALL($3::TEXT[])
             ORDER BY next_attempt_at, url LIMIT $4",
            &[&now, &networks, &busy, &limit],
        )
        .await
        .map_err(err("select due candidates"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// When the next active candidate on `networks` becomes due.
pub(crate) async fn next_due(pool: &Pool, networks: &[&str]) -> DbResult<Option<i64>> {
    let c = conn(pool).await?;
    let row = c
        .query_one(
            "SELECT min(next_attempt_at) FROM candidates
             WHERE dropped_at IS NULL AND network = ANY($1::TEXT[])",
            &[&networks],
        )
        .await
        .map_err(err("next due candidate"))?;
    Ok(row.get(0))
}

/// A validated candidate enters `relays` and leaves `candidates`, in one transaction.
/// Returns true if the relay is new to `relays`.
pub(crate) async fn promote(pool: &Pool, url: &str, network: &str, now: i64) -> DbResult<bool> {
    let mut c = conn(pool).await?;
    let tx = c.transaction().await.map_err(err("begin"))?;
    let n = tx
        .execute(
            "INSERT INTO relays (url, network, inserted_at) VALUES ($1, $2, $3)
             ON CONFLICT (url) DO NOTHING",
            &[&url, &network, &now],
        )
        .await
        .map_err(err("insert relay"))?;
    tx.execute("DELETE FROM candidates WHERE url = $1", &[&url])
        .await
        .map_err(err("delete candidate"))?;
    tx.commit().await.map_err(err("commit"))?;
    Ok(n > 0)
}

/// Records a failed validation: the next attempt waits `backoff · 2^(attempts)` seconds
/// (at most `backoff_max`); the attempt that reaches `max_attempts` drops the candidate.
/// Returns true if it was dropped.
pub(crate) async fn record_failure(
    pool: &Pool,
    url: &str,
    error: &str,
    now: i64,
    backoff: f64,
    backoff_max: f64,
    max_attempts: u32,
) -> DbResult<bool> {
    let c = conn(pool).await?;
    let max_attempts = i32::try_from(max_attempts).unwrap_or(i32::MAX);
    let error: String = error.chars().take(500).collect();
    let row = c
        .query_opt(
            "UPDATE candidates SET
                 attempts = attempts + 1,
                 last_error = $2,
                 next_attempt_at = $3 + LEAST($4::FLOAT8 * power(2::FLOAT8, LEAST(attempts, 40)), $5::FLOAT8)::BIGINT,
                 dropped_at = CASE WHEN attempts + 1 >= $6 THEN $3 ELSE NULL END
             WHERE url = $1
             RETURNING dropped_at IS NOT NULL",
            &[&url, &error, &now, &backoff, &backoff_max, &max_attempts],
        )
        .await
        .map_err(err("record failed validation"))?;
    Ok(row.is_some_and(|r| r.get::<_, bool>(0)))
}

/// Drops a candidate at once (e.g. its URL is no longer acceptable).
pub(crate) async fn drop_candidate(pool: &Pool, url: &str, error: &str, now: i64) -> DbResult<()> {
    let c = conn(pool).await?;
    c.execute(
        "UPDATE candidates SET dropped_at = $3, last_error = $2 WHERE url = $1",
        &[&url, &error, &now],
    )
    .await
    .map_err(err("drop candidate"))?;
    Ok(())
}

/// Forgets tombstones dropped before `before`, so their URLs can be found again.
pub(crate) async fn forget_dropped(pool: &Pool, before: i64) -> DbResult<u64> {
    let c = conn(pool).await?;
    c.execute(
        "DELETE FROM candidates WHERE dropped_at IS NOT NULL AND dropped_at < $1",
        &[&before],
    )
    .await
    .map_err(err("forget dropped candidates"))
}

/// The finder's state row `key`.
pub(crate) async fn load_state(pool: &Pool, key: &str) -> DbResult<Option<serde_json::Value>> {
    let c = conn(pool).await?;
    let row = c
        .query_opt(
            "SELECT payload FROM service_state WHERE service_name = $1 AND state_key = $2",
            &[&FINDER_SERVICE, &key],
        )
        .await
        .map_err(err("read finder state"))?;
    Ok(row.map(|r| r.get(0)))
}

/// Writes the finder's state row `key`.
pub(crate) async fn save_state(
    pool: &Pool,
    key: &str,
    payload: &serde_json::Value,
    now: i64,
) -> DbResult<()> {
    let c = conn(pool).await?;
    c.execute(
        "INSERT INTO service_state (service_name, state_key, payload, updated_at)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (service_name, state_key)
         DO UPDATE SET payload = EXCLUDED.payload, updated_at = EXCLUDED.updated_at",
        &[&FINDER_SERVICE, &key, payload, &now],
    )
    .await
    .map_err(err("write finder state"))?;
    Ok(())
}

/// One archived event as the catch-up pass sees it.
#[derive(Debug)]
pub(crate) struct ArchivedRow {
    /// Event id.
    pub(crate) id: Vec<u8>,
    /// Kind.
    pub(crate) kind: u16,
    /// Tags as JSON text.
    pub(crate) tags: String,
    /// Content, only for kinds whose content can carry hints (kind 3).
    pub(crate) content: Option<String>,
}

/// Up to `limit` archived events with id greater than `after`, by id (keyset pagination:
/// each page costs the same however far the scan is).
pub(crate) async fn archive_page(
    pool: &Pool,
    after: &[u8],
    limit: usize,
) -> DbResult<Vec<ArchivedRow>> {
    let c = conn(pool).await?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = c
        .query(
            // A metadata-only archive keeps no tags (NULL): nothing to mine there.
            "SELECT id, kind, coalesce(tags::TEXT, '[]'), CASE WHEN kind = 3 THEN content END
             FROM events WHERE id > $1 ORDER BY id LIMIT $2",
            &[&after, &limit],
        )
        .await
        .map_err(err("read archived events"))?;
    Ok(rows
        .iter()
        .map(|r| ArchivedRow {
            id: r.get(0),
            kind: u16::try_from(r.get::<_, i32>(1)).unwrap_or(0),
            tags: r.get(2),
            content: r.get(3),
        })
        .collect())
}
