//! The tag index of events that predate migration 013: `event_tags` rows for every archived
//! event, written in bounded batches while the engine runs.
//!
//! The sink indexes the events it inserts, in their own transaction; this walks the rest in
//! id order, `batch` events per transaction, with its position (`after`, the last id done)
//! in `service_state` ('tag_index') written in the same transaction, so a restart resumes
//! where it stopped. Rows already there (events the sink wrote meanwhile) are absorbed by
//! the unique index. When a batch comes back short, every event that predates the migration
//! is indexed: `done` turns true and from then on tag filters are answered from
//! `event_tags` (`filter_sql::tag_index_ready`); before, they scan `events.tags` as they did.

use crate::db::Pool;
use std::time::Duration;
use tokio::sync::watch;

/// Service name of the backfill's progress in `service_state`.
pub const SERVICE: &str = "tag_index";

/// Events per backfill transaction.
pub const BATCH: i64 = 2000;

/// One backfill step: indexes the next `batch` events by id. Returns the events read, or
/// `None` when the backfill had already finished (or another process holds the step).
pub async fn step(pool: &Pool, batch: i64) -> anyhow::Result<Option<u64>> {
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    // The row lock serialises several engines on one archive.
    let Some(state) = tx
        .query_opt(
            "SELECT payload FROM service_state WHERE service_name = $1 AND state_key = '' \
             FOR UPDATE SKIP LOCKED",
            &[&SERVICE],
        )
        .await?
    else {
        return Ok(None);
    };
    let payload: serde_json::Value = state.get(0);
    let off = payload.get("off").and_then(|v| v.as_bool()) == Some(true);
    if off || payload.get("done").and_then(|v| v.as_bool()) == Some(true) {
        return Ok(None);
    }
    let after = payload
        .get("after")
        .and_then(|v| v.as_str())
        .and_then(|h| hex::decode(h).ok())
        .unwrap_or_default();
    let rows = tx
        .query(
            "SELECT id, created_at, kind, coalesce(tags::text, '[]'), raw_canonical FROM events \
             WHERE id > $1 ORDER BY id LIMIT $2",
            &[&after, &batch],
        )
        .await?;
    let (mut keys, mut times, mut ids, mut kinds) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in &rows {
        let id: Vec<u8> = r.get(0);
        let created_at: i64 = r.get(1);
        let kind: i32 = r.get(2);
        let canonical: Option<String> = r.get(4);
        let k = match canonical {
            // The exact tags, U+0000 included (the jsonb copy has U+FFFD).
            Some(c) => canonical_tag_keys(&c),
            None => bigbrotr_stages::sink::tag_keys(&r.get::<_, String>(3)),
        };
        for key in k {
            keys.push(key.to_vec());
            times.push(created_at);
            ids.push(id.clone());
            kinds.push(kind);
        }
    }
    if !keys.is_empty() {
        tx.execute(
            "INSERT INTO event_tags (tag, created_at, event_id, kind) \
             SELECT * FROM unnest($1::bytea[], $2::int8[], $3::bytea[], $4::int4[]) \
             ON CONFLICT DO NOTHING",
            &[&keys, &times, &ids, &kinds],
        )
        .await?;
    }
    let last = rows
        .last()
        .map(|r| hex::encode(r.get::<_, Vec<u8>>(0)))
        .unwrap_or_else(|| hex::encode(&after));
    let done = (rows.len() as i64) < batch;
    tx.execute(
        "UPDATE service_state SET payload = jsonb_build_object('done', $2::boolean, 'after', $3::text), \
         updated_at = now_epoch() WHERE service_name = $1 AND state_key = ''",
        &[&SERVICE, &done, &last],
    )
    .await?;
    tx.commit().await?;
    if done {
        tracing::info!("tag index: backfill finished; tag filters now use event_tags");
    }
    Ok(Some(rows.len() as u64))
}

/// Turns the tag index off or on as `[archive] tag_index` says, at start. Off: tag filters
/// stop using it at once (they scan `events.tags`) and the backfill does not run. On again
/// after being off: the events archived meanwhile have no rows, so the backfill walks the
/// whole archive again (rows already there are absorbed) and tag filters scan until it is
/// done. Every process writing to one archive must agree on the setting.
pub async fn configure(pool: &Pool, on: bool) -> anyhow::Result<()> {
    let conn = pool.get().await?;
    let sql = if on {
        "UPDATE service_state SET payload = jsonb_build_object('done', false, 'after', ''), \
         updated_at = now_epoch() \
         WHERE service_name = $1 AND state_key = '' AND (payload->>'off')::boolean IS TRUE \
         RETURNING 1"
    } else {
        "UPDATE service_state SET payload = jsonb_build_object('done', false, 'after', '', 'off', true), \
         updated_at = now_epoch() \
         WHERE service_name = $1 AND state_key = '' AND (payload->>'off')::boolean IS NOT TRUE \
         RETURNING 1"
    };
    // An unnamed statement, as at every start (PgBouncer in transaction mode).
    let changed = conn
        .query_typed(sql, &[(&SERVICE, tokio_postgres::types::Type::TEXT)])
        .await?;
    if !changed.is_empty() {
        match on {
            true => tracing::info!("tag index turned on: indexing the archive in the background"),
            false => tracing::info!("tag index turned off: tag filters scan events.tags"),
        }
    }
    Ok(())
}

/// The index keys of an event from its canonical serialization
/// `[0,"<pubkey>",created_at,kind,tags,content]`.
fn canonical_tag_keys(canonical: &str) -> Vec<[u8; 16]> {
    use serde::de::IgnoredAny;
    type Canonical = (
        IgnoredAny,
        IgnoredAny,
        IgnoredAny,
        IgnoredAny,
        Vec<Vec<String>>,
        IgnoredAny,
    );
    match serde_json::from_str::<Canonical>(canonical) {
        Ok((_, _, _, _, tags, _)) => bigbrotr_stages::sink::tag_keys_of(
            tags.iter()
                .filter(|t| !t.is_empty())
                .map(|t| (t[0].as_str(), t.get(1).map(|v| v.as_str()))),
        ),
        Err(_) => Vec::new(),
    }
}

/// Runs the backfill to its end (or until `stop`), a batch at a time; errors are logged and
/// retried. Returns at once on an archive already indexed.
pub async fn run(pool: Pool, mut stop: watch::Receiver<bool>) {
    let mut total = 0u64;
    loop {
        if *stop.borrow() {
            return;
        }
        let wait = match step(&pool, BATCH).await {
            Ok(None) => return,
            Ok(Some(n)) => {
                total += n;
                if total % (BATCH as u64 * 100) < n {
                    tracing::info!(events = total, "tag index: backfill progress");
                }
                Duration::from_millis(5)
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "tag index: backfill step failed; retrying");
                Duration::from_secs(5)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
    }
}
