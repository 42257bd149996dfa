//! Database access: the connection pool, the schema migrations compiled from `sql/`, and the relay registry queries.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context};
use bb8_postgres::PostgresConnectionManager;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::NoTls;

/// A pool of PostgreSQL connections (no TLS): the stages' one pool type.
pub use bigbrotr_stages::sink::Pool;

/// How long `connect` waits for the first connection before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Advisory lock key serializing migrations across engines ("bbtrmigr" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x6262_7472_6d69_6772;

/// Rows per `INSERT … SELECT FROM UNNEST` round trip in `insert_relays`.
const RELAY_CHUNK: usize = 1000;

/// The schema files, in application order.
static MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "extensions_and_utils",
        include_str!("../sql/001_extensions_and_utils.sql"),
    ),
    (2, "tables", include_str!("../sql/002_tables.sql")),
    (3, "indexes", include_str!("../sql/003_indexes.sql")),
    (4, "procedures", include_str!("../sql/004_procedures.sql")),
    (5, "views", include_str!("../sql/005_views.sql")),
    (6, "candidates", include_str!("../sql/006_candidates.sql")),
    (
        7,
        "readonly_role",
        include_str!("../sql/007_readonly_role.sql"),
    ),
    (8, "summaries", include_str!("../sql/008_summaries.sql")),
    (
        9,
        "analytics_bounds",
        include_str!("../sql/009_analytics_bounds.sql"),
    ),
    (
        10,
        "sightings_index",
        include_str!("../sql/010_sightings_index.sql"),
    ),
    (
        11,
        "analytics_fold",
        include_str!("../sql/011_analytics_fold.sql"),
    ),
    (12, "reconcile", include_str!("../sql/012_reconcile.sql")),
    (13, "tag_index", include_str!("../sql/013_tag_index.sql")),
    (14, "fleet", include_str!("../sql/014_fleet.sql")),
    (
        15,
        "metadata_only",
        include_str!("../sql/015_metadata_only.sql"),
    ),
    (
        16,
        "created_at_id_index",
        include_str!("../sql/016_created_at_id_index.sql"),
    ),
    (
        17,
        "tag_index_kind",
        include_str!("../sql/017_tag_index_kind.sql"),
    ),
];

/// Opens a pool of `size` connections to `url` (a libpq-style key=value string or a postgres:// URL); fails fast with a message naming the URL (password masked) if the server is unreachable.
pub async fn connect(url: &str, size: u32) -> anyhow::Result<Pool> {
    let shown = crate::conninfo::mask(url);
    if size == 0 {
        bail!("database pool size must be at least 1 (connecting to {shown})");
    }
    let config = tokio_postgres::Config::from_str(url)
        .with_context(|| format!("invalid database connection string {shown}"))?;

    // Probe once with a deadline so an unreachable server is reported at
    // start-up with its real cause, not as a pool checkout timeout later.
    let probe = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(NoTls))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "cannot connect to PostgreSQL at {shown}: no answer within {}s",
                CONNECT_TIMEOUT.as_secs()
            )
        })?
        .with_context(|| format!("cannot connect to PostgreSQL at {shown}"))?;
    drop(probe);

    let manager = PostgresConnectionManager::new(config, NoTls);
    bb8::Pool::builder()
        .max_size(size)
        .connection_timeout(CONNECT_TIMEOUT.saturating_mul(3))
        .build(manager)
        .await
        .with_context(|| format!("cannot open a connection pool to PostgreSQL at {shown}"))
}

/// Records whether the archive keeps whole events (`bodies`) at its first start, and refuses
/// a start under the other setting: an archive half whole and half metadata-only would answer
/// some queries with events and others without. `file` is the configuration's name, for the
/// error. An archive that already holds events from before the mode was recorded keeps them
/// whole.
pub async fn ensure_archive_mode(pool: &Pool, bodies: bool, file: &str) -> anyhow::Result<()> {
    let conn = pool
        .get()
        .await
        .context("cannot get a database connection to check the archive mode")?;
    // Unnamed statements (query_typed): PgBouncer in transaction mode before 1.21 loses
    // named ones between transactions.
    let rows = conn
        .query_typed(
            "WITH rec AS ( \
                 INSERT INTO service_state (service_name, state_key, payload, updated_at) \
                 SELECT 'archive', 'mode', \
                        jsonb_build_object('bodies', EXISTS (SELECT 1 FROM events) OR $1), \
                        now_epoch() \
                 ON CONFLICT (service_name, state_key) DO NOTHING \
                 RETURNING payload) \
             SELECT coalesce((SELECT (payload->>'bodies')::BOOLEAN FROM rec), \
                             (SELECT (payload->>'bodies')::BOOLEAN FROM service_state \
                              WHERE service_name = 'archive' AND state_key = 'mode'))",
            &[(&bodies, tokio_postgres::types::Type::BOOL)],
        )
        .await
        .context("cannot read or record the archive mode")?;
    let mut recorded: Option<bool> = rows.first().and_then(|r| r.get(0));
    if recorded.is_none() {
        // Another engine recorded it at the same moment: our INSERT waited for its commit and
        // did nothing, but the statement's snapshot predates that commit. A new statement
        // sees the row.
        let rows = conn
            .query_typed(
                "SELECT (payload->>'bodies')::BOOLEAN FROM service_state \
                 WHERE service_name = 'archive' AND state_key = 'mode'",
                &[],
            )
            .await
            .context("cannot read the archive mode")?;
        recorded = rows.first().and_then(|r| r.get(0));
    }
    match recorded {
        Some(r) if r != bodies => {
            let (was, what) = match r {
                true => ("true", "keeps whole events"),
                false => ("false", "is metadata-only"),
            };
            anyhow::bail!(
                "{file}: key `archive.bodies` is {bodies}, but this archive {what} (it was \
                 created with archive.bodies = {was}): an existing archive cannot be switched; \
                 set archive.bodies = {was}, or point the engine at a new database"
            )
        }
        Some(_) => Ok(()),
        None => anyhow::bail!("the archive mode record in service_state is malformed"),
    }
}

/// The migrations compiled into the binary: (version, name, sql) from include_str! of each sql/ file, in order.
pub fn migrations() -> &'static [(i32, &'static str, &'static str)] {
    MIGRATIONS
}

/// Applies pending migrations in order, each in its own transaction, under a pg_advisory_xact_lock / pg_advisory_lock so two engines starting at once do not race; records each in schema_migrations(version INT PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now()); re-running is a no-op. Returns the versions it applied.
pub async fn migrate(pool: &Pool) -> anyhow::Result<Vec<i32>> {
    let mut conn = pool
        .get()
        .await
        .context("cannot get a database connection to run migrations")?;

    let mut applied = Vec::new();
    for &(version, name, sql) in migrations() {
        // One transaction per migration, holding a transaction-scoped
        // advisory lock: a concurrent engine waits here, then sees the
        // version recorded and skips it. The lock ends with the transaction,
        // so nothing stays held on the pooled connection, even on error.
        let tx = conn
            .transaction()
            .await
            .context("cannot begin a migration transaction")?;
        // Unnamed (typed) statements throughout: several engines starting at once through a
        // transaction-mode PgBouncer before 1.21 would otherwise collide on prepared
        // statement names left on a shared server connection.
        tx.execute_typed(
            "SELECT pg_advisory_xact_lock($1)",
            &[(&MIGRATION_LOCK_KEY, Type::INT8)],
        )
        .await
        .context("cannot take the migration lock")?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version     INT          PRIMARY KEY,
                 name        TEXT         NOT NULL,
                 applied_at  TIMESTAMPTZ  NOT NULL DEFAULT now()
             )",
        )
        .await
        .context("cannot create schema_migrations")?;

        let recorded = tx
            .query_typed_opt(
                "SELECT name FROM schema_migrations WHERE version = $1",
                &[(&version, Type::INT4)],
            )
            .await
            .context("cannot read schema_migrations")?;
        if let Some(row) = recorded {
            let recorded_name: String = row.try_get(0).context("bad schema_migrations row")?;
            if recorded_name != name {
                tracing::warn!(
                    version,
                    recorded = %recorded_name,
                    compiled = name,
                    "migration recorded under another name; not re-applied"
                );
            }
            tx.commit()
                .await
                .context("cannot end a migration transaction")?;
            continue;
        }

        tracing::info!(version, name, "applying migration");
        tx.batch_execute(sql)
            .await
            .with_context(|| format!("migration {version:03}_{name} failed"))?;
        tx.execute_typed(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[(&version, Type::INT4), (&name, Type::TEXT)],
        )
        .await
        .with_context(|| format!("cannot record migration {version:03}_{name}"))?;
        tx.commit()
            .await
            .with_context(|| format!("cannot commit migration {version:03}_{name}"))?;
        applied.push(version);
    }

    let newest_known = migrations().last().map_or(0, |m| m.0);
    // Unnamed (typed) statements: a transaction-mode PgBouncer before 1.21 may run a named
    // statement's execution on another server connection than its preparation.
    let newest_recorded: Option<i32> = conn
        .query_typed("SELECT max(version) FROM schema_migrations", &[])
        .await
        .context("cannot read schema_migrations")?
        .first()
        .map(|r| r.try_get(0))
        .transpose()
        .context("bad schema_migrations row")?
        .flatten();
    if let Some(v) = newest_recorded.filter(|&v| v > newest_known) {
        tracing::warn!(
            recorded = v,
            known = newest_known,
            "database schema is newer than this binary"
        );
    }
    Ok(applied)
}

/// Inserts relay URLs (already normalized) with their network, ignoring duplicates, in one round trip per 1000 (use UNNEST arrays). Returns how many were new.
pub async fn insert_relays(
    pool: &Pool,
    relays: &[(String, String)],
    inserted_at: i64,
) -> anyhow::Result<u64> {
    if relays.is_empty() {
        return Ok(0);
    }
    let conn = pool
        .get()
        .await
        .context("cannot get a database connection to insert relays")?;

    let mut new = 0u64;
    for chunk in relays.chunks(RELAY_CHUNK) {
        let urls: Vec<&str> = chunk.iter().map(|(u, _)| u.as_str()).collect();
        let networks: Vec<&str> = chunk.iter().map(|(_, n)| n.as_str()).collect();
        let params: [(&(dyn ToSql + Sync), Type); 3] = [
            (&urls, Type::TEXT_ARRAY),
            (&networks, Type::TEXT_ARRAY),
            (&inserted_at, Type::INT8),
        ];
        new += conn
            .execute_typed(
                "INSERT INTO relays (url, network, inserted_at)
                 SELECT t.url, t.network, $3
                 FROM UNNEST($1::TEXT[], $2::TEXT[]) AS t (url, network)
                 ON CONFLICT (url) DO NOTHING",
                &params,
            )
            .await
            .with_context(|| format!("cannot insert {} relays", chunk.len()))?;
    }
    Ok(new)
}

/// Reads the relays table: (url, network).
pub async fn list_relays(pool: &Pool) -> anyhow::Result<Vec<(String, String)>> {
    let conn = pool
        .get()
        .await
        .context("cannot get a database connection to list relays")?;
    let rows = conn
        .query_typed("SELECT url, network FROM relays ORDER BY url", &[])
        .await
        .context("cannot read the relays table")?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get::<_, String>(0).context("bad relays.url")?,
                row.try_get::<_, String>(1).context("bad relays.network")?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_ordered_and_complete() {
        let m = migrations();
        assert!(!m.is_empty());
        for (i, (version, name, sql)) in m.iter().enumerate() {
            assert_eq!(*version, i32::try_from(i + 1).unwrap_or(i32::MAX));
            assert!(!name.is_empty());
            assert!(!sql.trim().is_empty());
        }
    }
}
