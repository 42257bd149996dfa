//! Backup and restore of the archive with PostgreSQL's own tools.
//!
//! `backup` runs `pg_dump -Fc`: one consistent snapshot (a single repeatable-read transaction)
//! of events, provenance, cursors, the relay registry and the schema, even while the engine
//! writes. `restore` runs `pg_restore` into a fresh database (created when missing), then
//! applies the migrations this binary knows, so a dump made by an older bigbrotr comes back
//! up to date. Ownership and privileges are not restored: roles are cluster-wide and may not
//! exist on the target server; the read-only API role's grants are re-applied instead.

use crate::config::Config;
use crate::conninfo;
use crate::embedded_pg::EmbeddedPg;
use anyhow::{anyhow, bail, Context, Result};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::str::FromStr;
use std::time::{Duration, Instant};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

/// How long connecting to the server may take before the command gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Where `CREATE DATABASE` is issued from when the target database does not exist yet.
const MAINTENANCE_DBS: [&str; 2] = ["postgres", "template1"];
/// The migration whose grants are re-applied after a restore (privileges are not restored).
const READER_MIGRATION: &str = "readonly_role";
/// Bytes of a failing tool's stderr kept in the error message.
const STDERR_TAIL: usize = 4000;

/// What `backup` wrote.
#[derive(Debug, Clone)]
pub struct BackupReport {
    /// The archive file.
    pub file: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl BackupReport {
    /// One line for the operator.
    pub fn render(&self) -> String {
        format!(
            "backup written to {} ({:.1} MiB in {:.1}s; restore with `bigbrotr restore {}`)\n",
            self.file.display(),
            self.bytes as f64 / (1 << 20) as f64,
            self.elapsed.as_secs_f64(),
            self.file.display()
        )
    }
}

/// Restore settings.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Replace the contents of a non-empty target (`pg_restore --clean --if-exists`).
    pub force: bool,
}

/// What `restore` did.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    /// The target database (password masked).
    pub target: String,
    /// True when the database did not exist and was created.
    pub created: bool,
    /// Migrations applied on top of the restored schema.
    pub migrated: Vec<i32>,
    /// Rows in `events`.
    pub events: i64,
    /// Rows in `events_relays`.
    pub sightings: i64,
    /// Relay cursors in `service_state`.
    pub cursors: i64,
    /// Rows in `relays`.
    pub relays: i64,
    /// Wall time.
    pub elapsed: Duration,
}

impl RestoreReport {
    /// A summary for the operator.
    pub fn render(&self) -> String {
        format!(
            "restored into {}{} in {:.1}s: {} events, {} sightings, {} relays, {} relay cursors; {}\n",
            self.target,
            if self.created { " (created)" } else { "" },
            self.elapsed.as_secs_f64(),
            self.events,
            self.sightings,
            self.relays,
            self.cursors,
            if self.migrated.is_empty() {
                "schema already current".to_string()
            } else {
                format!("schema brought up to date (migrations {:?})", self.migrated)
            }
        )
    }
}

/// `bigbrotr backup`: dumps the archive named by `database_url`, else `database.url`, else
/// the embedded cluster (started for the dump if it is not running).
pub async fn backup_configured(
    cfg: &Config,
    database_url: Option<&str>,
    out: &Path,
) -> Result<BackupReport> {
    let (url, _embedded) = resolve(cfg, database_url).await?;
    backup(&url, out).await
}

/// `bigbrotr restore`: restores into `database_url`, else `database.url`, else the embedded
/// cluster's database.
pub async fn restore_configured(
    cfg: &Config,
    database_url: Option<&str>,
    input: &Path,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    let (url, _embedded) = resolve(cfg, database_url).await?;
    restore(input, &url, opts).await
}

/// The connection string to use, and the embedded cluster behind it (kept alive by the
/// caller; stopped on drop only if this call started it).
async fn resolve(cfg: &Config, database_url: Option<&str>) -> Result<(String, Option<EmbeddedPg>)> {
    if let Some(url) = database_url.filter(|u| !u.is_empty()) {
        return Ok((url.to_string(), None));
    }
    if !cfg.database.url.is_empty() {
        return Ok((cfg.database.url.clone(), None));
    }
    let pg = EmbeddedPg::start(
        &cfg.embedded.data_dir,
        cfg.embedded.port,
        &cfg.embedded.db_name,
        false,
    )
    .await?;
    Ok((pg.url(&cfg.embedded.db_name), Some(pg)))
}

/// Dumps the database at `url` into `out` (pg_dump custom format). The file appears only
/// when the dump is complete: it is written beside `out` and renamed into place.
pub async fn backup(url: &str, out: &Path) -> Result<BackupReport> {
    let started = Instant::now();
    let pg = tokio_postgres::Config::from_str(url)
        .map_err(|_| anyhow!("the database connection string does not parse"))?;
    let shown = conninfo::display(&pg);
    let pg_dump = EmbeddedPg::find_client_bin("pg_dump")?;
    let partial = partial_path(out)?;
    let mut cmd = client_command(&pg_dump, &pg, "bigbrotr-backup");
    cmd.args(["--format=custom", "--no-password", "--file"])
        .arg(&partial)
        .arg(format!("--dbname={}", conninfo::libpq(&pg)));
    let result = run_tool(cmd, "pg_dump", &shown).await;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, out).with_context(|| {
        format!(
            "cannot move the finished dump {} to {}",
            partial.display(),
            out.display()
        )
    })?;
    let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    Ok(BackupReport {
        file: out.to_path_buf(),
        bytes,
        elapsed: started.elapsed(),
    })
}

/// Restores the archive file `input` into the database at `url`: creates the database when
/// missing, refuses one that already holds tables unless `opts.force`, restores in a single
/// transaction (a failure leaves the target as it was), then migrates.
pub async fn restore(input: &Path, url: &str, opts: &RestoreOptions) -> Result<RestoreReport> {
    let started = Instant::now();
    if !input.is_file() {
        bail!("backup file {} does not exist", input.display());
    }
    let pg = tokio_postgres::Config::from_str(url)
        .map_err(|_| anyhow!("the target connection string does not parse"))?;
    let shown = conninfo::display(&pg);
    let pg_restore = EmbeddedPg::find_client_bin("pg_restore")?;

    let (client, created) = connect_or_create(&pg, &shown).await?;
    let existing = user_objects(&client).await?;
    drop(client);
    if !existing.is_empty() && !opts.force {
        bail!(
            "target database {shown} is not empty ({}): restore into a fresh database (a new \
             --database-url; a missing database is created), or pass --force to replace the \
             objects the backup contains",
            existing.join(", ")
        );
    }

    let mut cmd = client_command(&pg_restore, &pg, "bigbrotr-restore");
    cmd.args([
        "--no-owner",
        "--no-privileges",
        "--single-transaction",
        "--exit-on-error",
        "--no-password",
    ]);
    if opts.force {
        cmd.args(["--clean", "--if-exists"]);
    }
    cmd.arg(format!("--dbname={}", conninfo::libpq(&pg)))
        .arg(input);
    run_tool(cmd, "pg_restore", &shown).await?;

    let pool = crate::db::connect(url, 2).await?;
    let migrated = crate::db::migrate(&pool).await?;
    let conn = pool
        .get()
        .await
        .context("cannot get a connection to the restored database")?;
    // Privileges were skipped: give the API's read-only role its grants back. The migration
    // is idempotent by design (it also runs when several archives share a server).
    if let Some((_, _, sql)) = crate::db::migrations()
        .iter()
        .find(|(_, name, _)| *name == READER_MIGRATION)
    {
        conn.batch_execute(sql)
            .await
            .context("cannot re-apply the read-only role's grants")?;
    }
    let events = count(&conn, "SELECT count(*) FROM events").await?;
    let sightings = count(&conn, "SELECT count(*) FROM events_relays").await?;
    let relays = count(&conn, "SELECT count(*) FROM relays").await?;
    let cursors = count(
        &conn,
        "SELECT count(*) FROM service_state WHERE service_name = 'synchronizer'",
    )
    .await?;
    Ok(RestoreReport {
        target: shown,
        created,
        migrated,
        events,
        sightings,
        cursors,
        relays,
        elapsed: started.elapsed(),
    })
}

async fn count(conn: &tokio_postgres::Client, sql: &str) -> Result<i64> {
    conn.query_one(sql, &[])
        .await
        .with_context(|| format!("cannot count the restored rows ({sql})"))?
        .try_get::<_, i64>(0)
        .context("bad count")
}

/// Connects to the target database, creating it first when the server says it does not exist.
async fn connect_or_create(
    pg: &tokio_postgres::Config,
    shown: &str,
) -> Result<(tokio_postgres::Client, bool)> {
    match connect(pg).await {
        Ok(c) => return Ok((c, false)),
        Err(e) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {}
        Err(e) => return Err(anyhow!(e).context(format!("cannot connect to {shown}"))),
    }
    let name = pg
        .get_dbname()
        .or(pg.get_user())
        .ok_or_else(|| anyhow!("the target connection string names no database"))?
        .to_string();
    let mut last = None;
    for maintenance in MAINTENANCE_DBS {
        let mut admin = pg.clone();
        admin.dbname(maintenance);
        match connect(&admin).await {
            Ok(c) => {
                c.batch_execute(&format!("CREATE DATABASE {}", conninfo::quote_ident(&name)))
                    .await
                    .with_context(|| format!("cannot create database {name} (for {shown})"))?;
                tracing::info!(database = %name, "created the restore target");
                let client = connect(pg)
                    .await
                    .with_context(|| format!("cannot connect to the new database {shown}"))?;
                return Ok((client, true));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(anyhow!(
        "database {name} does not exist and cannot be created: no maintenance database \
         (postgres, template1) reachable on the server ({})",
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}

async fn connect(pg: &tokio_postgres::Config) -> Result<tokio_postgres::Client, ConnectError> {
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, pg.connect(NoTls))
        .await
        .map_err(|_| ConnectError::Timeout)?
        .map_err(ConnectError::Pg)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("restore admin connection ended: {e}");
        }
    });
    Ok(client)
}

/// A connection failure, keeping the server's SQLSTATE when there is one.
#[derive(Debug)]
enum ConnectError {
    Timeout,
    Pg(tokio_postgres::Error),
}

impl ConnectError {
    fn code(&self) -> Option<&SqlState> {
        match self {
            Self::Pg(e) => e.code(),
            Self::Timeout => None,
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout => write!(f, "no answer within {}s", CONNECT_TIMEOUT.as_secs()),
            Self::Pg(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// Up to five relations, functions or extensions a fresh database would not have.
async fn user_objects(client: &tokio_postgres::Client) -> Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT kind || ' ' || name FROM (
                 SELECT 'table' AS kind, c.relname::text AS name
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                   AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
                 UNION ALL
                 SELECT 'function', p.proname::text
                 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
                 UNION ALL
                 SELECT 'extension', extname::text FROM pg_extension WHERE extname <> 'plpgsql'
             ) o ORDER BY kind DESC, name LIMIT 5",
            &[],
        )
        .await
        .context("cannot inspect the target database")?;
    rows.iter()
        .map(|r| r.try_get::<_, String>(0).context("bad catalog row"))
        .collect()
}

/// A client program with the connection's password in its environment (never on its
/// command line, where `ps` would show it).
fn client_command(
    program: &Path,
    pg: &tokio_postgres::Config,
    application: &str,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.stdin(std::process::Stdio::null())
        .env("PGAPPNAME", application)
        .kill_on_drop(true);
    if let Some(pw) = pg.get_password() {
        cmd.env("PGPASSWORD", OsStr::from_bytes(pw));
    }
    cmd
}

async fn run_tool(mut cmd: tokio::process::Command, tool: &str, shown: &str) -> Result<()> {
    let out: Output = cmd
        .output()
        .await
        .with_context(|| format!("cannot run {tool}"))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr = stderr.trim();
    let cut = (stderr.len().saturating_sub(STDERR_TAIL)..=stderr.len())
        .find(|i| stderr.is_char_boundary(*i))
        .unwrap_or(stderr.len());
    let hint = if stderr.contains("version mismatch") || stderr.contains("unsupported version") {
        "\nhint: the client tools must be at least as new as the server (or the tool that wrote \
         the file): install a newer postgresql-client or point BIGBROTR_PG_BIN at its bin directory"
    } else {
        ""
    };
    bail!(
        "{tool} failed for {shown} ({}):\n{}{hint}",
        out.status,
        &stderr[cut..]
    )
}

/// `out` with `.partial` appended, in the same directory so the final rename is atomic.
fn partial_path(out: &Path) -> Result<PathBuf> {
    let name = out
        .file_name()
        .ok_or_else(|| anyhow!("{} is not a file name", out.display()))?;
    let mut partial = name.to_os_string();
    partial.push(".partial");
    Ok(out.with_file_name(partial))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_file_sits_beside_the_target() {
        assert_eq!(
            partial_path(Path::new("/backups/a.dump")).expect("file name"),
            PathBuf::from("/backups/a.dump.partial")
        );
        assert!(partial_path(Path::new("/")).is_err());
    }
}
