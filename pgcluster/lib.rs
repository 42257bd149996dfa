//! Embedded PostgreSQL.
//!
//! Without `database.url` bigbrotr still needs somewhere to archive, so it runs its own cluster
//! from the installed server binaries; `bigbrotr bench` and the test suite (through
//! `bigbrotr-testkit`) reuse the same code for their throwaway clusters. A managed directory
//! looks like this:
//!
//! ```text
//! <dir>/data/          PGDATA (mode 0700, owned by the server's OS user)
//! <dir>/run/           unix socket and postgres.log: the server's OS user must write there
//! <dir>/port           the auto-picked port, so a restart keeps the same address
//! <dir>/initdb.done    written after initdb succeeded, so an interrupted initdb is redone
//! <dir>/lock           flock'ed while starting, so concurrent processes never race initdb
//! ```
//!
//! PostgreSQL refuses to run as root, so as root every server binary runs as the `postgres`
//! OS user (through `runuser`, else `su`).

pub mod conninfo;

use std::collections::hash_map::RandomState;
use std::ffi::{CString, OsStr, OsString};
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use std::{env, fs};

use anyhow::{anyhow, bail, Context, Result};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

const DATA_SUBDIR: &str = "data";
const RUN_SUBDIR: &str = "run";
const LOG_NAME: &str = "postgres.log";
const PORT_FILE: &str = "port";
const INIT_MARKER: &str = "initdb.done";
const LOCK_FILE: &str = "lock";
const BIN_ENV: &str = "BIGBROTR_PG_BIN";
const SERVER_USER: &str = "postgres";
/// The database every cluster has; admin connections go there.
pub const MAINTENANCE_DB: &str = "postgres";

/// initdb with fsync on, on a small machine busy with builds, can take a long while.
const INITDB_TIMEOUT: Duration = Duration::from_secs(300);
const PG_CTL_WAIT_SECS: u64 = 120;
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Crash recovery of a large archive outlasts any normal start; keep waiting while it runs.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(3600);
const LOCK_TIMEOUT: Duration = Duration::from_secs(600);
/// `pg_ctl -l` only ever appends; a long-running container would grow the log without bound.
const LOG_ROTATE_BYTES: u64 = 16 << 20;
/// `sun_path` is 108 bytes including the NUL; a longer socket path makes the server fail.
const SUN_PATH_MAX: usize = 107;
/// An auto-picked port can be taken by someone else between probing and binding it.
const PORT_ATTEMPTS: usize = 3;
/// Identifiers longer than this are silently truncated by PostgreSQL.
const MAX_IDENT: usize = 63;

/// A PostgreSQL cluster this process manages (initdb'ed on first use, started, stopped on drop only if `stop_on_drop`).
#[derive(Debug)]
pub struct EmbeddedPg {
    root: PathBuf,
    data_dir: PathBuf,
    run_dir: PathBuf,
    bin_dir: PathBuf,
    port: u16,
    runner: Runner,
    /// Set by `start` only when it launched the server, so a handle that attached to a server someone else started never takes it down.
    pub stop_on_drop: bool,
    stopped: AtomicBool,
}

impl EmbeddedPg {
    /// Finds the server binaries: `pg_ctl` on PATH, else the highest version under /usr/lib/postgresql/*/bin (also honour env BIGBROTR_PG_BIN). Error message tells the user to install PostgreSQL or set database.url.
    pub fn find_bin_dir() -> Result<PathBuf> {
        if let Some(dir) = env::var_os(BIN_ENV).filter(|v| !v.is_empty()) {
            let dir = PathBuf::from(dir);
            if has_server_binaries(&dir) {
                return Ok(dir);
            }
            bail!(
                "{BIN_ENV}={} does not contain the PostgreSQL server binaries (pg_ctl, initdb, postgres)",
                dir.display()
            );
        }
        if let Some(pg_ctl) = find_in_path("pg_ctl") {
            // Follow symlinks: initdb and postgres live next to the real pg_ctl, not the link.
            let real = fs::canonicalize(&pg_ctl).unwrap_or(pg_ctl);
            if let Some(dir) = real.parent().filter(|d| has_server_binaries(d)) {
                return Ok(dir.to_path_buf());
            }
        }
        installed_bin_dirs().pop().map(|i| i.dir).ok_or_else(|| {
            anyhow!(
                "PostgreSQL server binaries not found (looked for pg_ctl on PATH, in ${BIN_ENV} and under \
                 /usr/lib/postgresql/*/bin): install PostgreSQL (e.g. `apt-get install postgresql`), point \
                 {BIN_ENV} at its bin directory, or set database.url to use an existing server"
            )
        })
    }

    /// Finds a PostgreSQL client program (`pg_dump`, `pg_restore`, `psql`): in $BIGBROTR_PG_BIN, else the highest version under /usr/lib/postgresql/*/bin or /usr/pgsql-*/bin (a newer client reads and dumps older servers, not the reverse), else on PATH.
    pub fn find_client_bin(name: &str) -> Result<PathBuf> {
        if let Some(dir) = env::var_os(BIN_ENV).filter(|v| !v.is_empty()) {
            let dir = PathBuf::from(dir);
            let path = dir.join(name);
            if is_executable(&path) {
                return Ok(path);
            }
            bail!("{BIN_ENV}={} has no {name}", dir.display());
        }
        let mut best: Option<(Vec<u32>, PathBuf)> = None;
        for (parent, name_prefix) in [("/usr/lib/postgresql", ""), ("/usr", "pgsql-")] {
            let Ok(entries) = fs::read_dir(parent) else {
                continue;
            };
            for entry in entries.flatten() {
                let file_name = entry.file_name();
                let key = file_name
                    .to_str()
                    .and_then(|n| n.strip_prefix(name_prefix))
                    .and_then(version_key);
                let path = entry.path().join("bin").join(name);
                if let Some(key) = key.filter(|_| is_executable(&path)) {
                    if best.as_ref().is_none_or(|(k, _)| key > *k) {
                        best = Some((key, path));
                    }
                }
            }
        }
        best.map(|(_, p)| p)
            .or_else(|| find_in_path(name))
            .ok_or_else(|| {
                anyhow!(
                    "{name} not found (looked in ${BIN_ENV}, /usr/lib/postgresql/*/bin and on PATH): install the \
                     PostgreSQL client tools (e.g. `apt-get install postgresql-client`) or point {BIN_ENV} at them"
                )
            })
    }

    /// Ensures a cluster exists in `dir` and runs on 127.0.0.1:`port` (0 = a free port, remembered for restarts), reusing a running server, and that database `db_name` exists; `fast` trades durability for speed (tests) and only applies when this call creates or starts the cluster.
    pub async fn start(dir: &Path, port: u16, db_name: &str, fast: bool) -> Result<EmbeddedPg> {
        let owner = server_owner()?;
        let runner = Runner::detect(owner.is_some())?;
        // Commands run with the managed dir as cwd, so a relative path would resolve twice.
        let root = std::path::absolute(dir)
            .with_context(|| format!("invalid PostgreSQL directory {}", dir.display()))?;
        create_dir_for_server(&root, owner)?;
        let _lock = lock_exclusive(&root.join(LOCK_FILE)).await?;

        let data_dir = root.join(DATA_SUBDIR);
        let run_dir = root.join(RUN_SUBDIR);
        prepare_private_dir(&run_dir, owner)?;
        prepare_private_dir(&data_dir, owner)?;
        let bin_dir = bin_dir_for(&data_dir)?;
        let mut pg = EmbeddedPg {
            root,
            data_dir,
            run_dir,
            bin_dir,
            port,
            runner,
            stop_on_drop: false,
            stopped: AtomicBool::new(false),
        };
        if owner.is_some() {
            pg.check_server_user_access().await?;
        }

        match pg.running_postmaster().await? {
            Some(pm) => {
                if port != 0 && port != pm.port {
                    tracing::warn!(
                        requested = port,
                        running = pm.port,
                        "PostgreSQL in {} is already running on another port; using it as is",
                        pg.data_dir.display()
                    );
                }
                tracing::debug!(
                    port = pm.port,
                    "reusing running PostgreSQL in {}",
                    pg.data_dir.display()
                );
                pg.port = pm.port;
            }
            None => {
                pg.ensure_initialised(fast, owner).await?;
                pg.launch(port, fast).await?;
            }
        }
        pg.wait_ready().await?;
        pg.ensure_database(db_name).await?;
        Ok(pg)
    }

    /// libpq key=value connection string for `db`: "host=127.0.0.1 port=N user=postgres dbname=DB".
    pub fn url(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={SERVER_USER} dbname={}",
            self.port,
            conninfo::value(db)
        )
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates a fresh database with a unique name (prefix + pid + counter + random) and returns its connection string; used by tests to isolate from each other on one shared cluster.
    pub async fn create_database(&self, prefix: &str) -> Result<String> {
        let name = unique_db_name(prefix);
        let client = self.connect(MAINTENANCE_DB).await?;
        client
            .batch_execute(&format!("CREATE DATABASE {}", conninfo::quote_ident(&name)))
            .await
            .with_context(|| format!("could not create database {name}"))?;
        Ok(self.url(&name))
    }

    /// Stops the cluster (pg_ctl stop -m fast).
    pub async fn stop(&self) -> Result<()> {
        if read_postmaster(&self.data_dir).is_some() {
            let limit = Duration::from_secs(PG_CTL_WAIT_SECS + 30);
            let out = self.run("pg_ctl", self.stop_args(), limit).await?;
            // pg_ctl also fails when the server went away on its own meanwhile: that is fine.
            if !out.status.success() && read_postmaster(&self.data_dir).is_some() {
                bail!(
                    "could not stop PostgreSQL in {}: {}",
                    self.data_dir.display(),
                    describe(&out)
                );
            }
        }
        self.stopped.store(true, Ordering::Release);
        Ok(())
    }

    /// Another handle to the same server that never stops it, for callers that keep the
    /// original (e.g. in a process-wide cache).
    pub fn attached_handle(&self) -> EmbeddedPg {
        EmbeddedPg {
            root: self.root.clone(),
            data_dir: self.data_dir.clone(),
            run_dir: self.run_dir.clone(),
            bin_dir: self.bin_dir.clone(),
            port: self.port,
            runner: self.runner.clone(),
            stop_on_drop: false,
            stopped: AtomicBool::new(false),
        }
    }

    fn log_file(&self) -> PathBuf {
        self.run_dir.join(LOG_NAME)
    }

    /// `None` when the path would overflow `sun_path`: the server then listens on TCP only.
    fn socket_dir(&self) -> Option<&Path> {
        let socket_len = self.run_dir.as_os_str().len() + "/.s.PGSQL.65535".len();
        (socket_len <= SUN_PATH_MAX).then_some(self.run_dir.as_path())
    }

    fn stop_args(&self) -> Vec<OsString> {
        let mut args = os_args(["stop", "-m", "fast", "-w", "-t"]);
        args.push(PG_CTL_WAIT_SECS.to_string().into());
        args.push("-D".into());
        args.push(self.data_dir.clone().into());
        args
    }

    fn command(&self, program: &str, args: &[OsString]) -> std::process::Command {
        let mut cmd = self.runner.command(&self.bin_dir.join(program), args);
        // Own process group: a Ctrl-C meant for bigbrotr or cargo must not hit the postmaster,
        // which would otherwise inherit the terminal's foreground group from pg_ctl.
        cmd.current_dir(&self.root).process_group(0);
        cmd
    }

    async fn run(&self, program: &str, args: Vec<OsString>, limit: Duration) -> Result<Output> {
        let mut cmd = tokio::process::Command::from(self.command(program, &args));
        cmd.kill_on_drop(true);
        tokio::time::timeout(limit, cmd.output())
            .await
            .map_err(|_| anyhow!("{program} did not finish within {}s", limit.as_secs()))?
            .with_context(|| format!("could not run {}", self.bin_dir.join(program).display()))
    }

    /// A parent directory closed to the server's OS user (e.g. /root, mode 0700) would otherwise
    /// surface as an obscure initdb or startup failure.
    async fn check_server_user_access(&self) -> Result<()> {
        let args = vec![
            OsString::from("-c"),
            OsString::from(r#"test -x "$1" && test -w "$2""#),
            OsString::from("sh"),
            self.root.clone().into(),
            self.run_dir.clone().into(),
        ];
        let mut cmd =
            tokio::process::Command::from(self.runner.command(Path::new("/bin/sh"), &args));
        cmd.current_dir("/").kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
            .await
            .map_err(|_| anyhow!("checking the {SERVER_USER} user's access timed out"))?
            .context("could not run a command as the postgres user")?;
        if !out.status.success() {
            bail!(
                "the `{SERVER_USER}` OS user (PostgreSQL refuses to run as root) cannot reach {}: \
                 choose a data directory outside root-only directories such as /root, or set database.url ({})",
                self.root.display(),
                describe(&out)
            );
        }
        Ok(())
    }

    /// `Some` only for a live postmaster: pg_ctl vouches for it, and the pid must not have been
    /// recycled by another program (common after a container restart).
    async fn running_postmaster(&self) -> Result<Option<Postmaster>> {
        let pid_file = self.data_dir.join("postmaster.pid");
        if !pid_file.exists() {
            return Ok(None);
        }
        let args = vec!["status".into(), "-D".into(), self.data_dir.clone().into()];
        let out = self.run("pg_ctl", args, Duration::from_secs(30)).await?;
        if !out.status.success() {
            return Ok(None);
        }
        match read_pid_file(&self.data_dir) {
            Some(pm) if is_postmaster(pm.pid) => Ok(Some(pm)),
            Some(pm) => {
                tracing::warn!(
                    pid = pm.pid,
                    "{} names a process that is not PostgreSQL; removing the stale pid file",
                    pid_file.display()
                );
                fs::remove_file(&pid_file)
                    .with_context(|| format!("could not remove stale {}", pid_file.display()))?;
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn ensure_initialised(&self, fast: bool, owner: Option<Owner>) -> Result<()> {
        let marker = self.root.join(INIT_MARKER);
        let has_version = self.data_dir.join("PG_VERSION").exists();
        // postmaster.opts is written by pg_ctl start, never by initdb: a cluster that has run once
        // is complete even without our marker, and must never be wiped.
        if has_version && (marker.exists() || self.data_dir.join("postmaster.opts").exists()) {
            return Ok(());
        }
        if fs::read_dir(&self.data_dir)
            .with_context(|| format!("could not read {}", self.data_dir.display()))?
            .next()
            .is_some()
        {
            tracing::warn!(
                "{} holds an unfinished initdb; recreating it",
                self.data_dir.display()
            );
            fs::remove_dir_all(&self.data_dir)
                .with_context(|| format!("could not remove {}", self.data_dir.display()))?;
            prepare_private_dir(&self.data_dir, owner)?;
        }
        let _ = fs::remove_file(&marker);

        tracing::info!("creating PostgreSQL cluster in {}", self.data_dir.display());
        let mut args: Vec<OsString> = vec!["-D".into(), self.data_dir.clone().into()];
        args.extend(os_args([
            "-A",
            "trust",
            "-U",
            SERVER_USER,
            "-E",
            "UTF8",
            "--no-locale",
        ]));
        if fast {
            args.push("-N".into());
        }
        let out = self.run("initdb", args, INITDB_TIMEOUT).await?;
        if !out.status.success() {
            bail!(
                "initdb failed in {}: {}",
                self.data_dir.display(),
                describe(&out)
            );
        }
        fs::write(&marker, b"").with_context(|| format!("could not write {}", marker.display()))?;
        Ok(())
    }

    async fn launch(&mut self, requested: u16, fast: bool) -> Result<()> {
        let auto = requested == 0;
        let mut port = if auto {
            match self.remembered_port().filter(|p| port_is_free(*p)) {
                Some(p) => p,
                None => free_port()?,
            }
        } else {
            requested
        };
        let log = self.log_file();
        for attempt in 1..=PORT_ATTEMPTS {
            rotate_log(&log);
            let log_offset = fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
            let mut args = os_args(["start", "-w", "-t"]);
            args.push(PG_CTL_WAIT_SECS.to_string().into());
            args.extend([
                "-D".into(),
                self.data_dir.clone().into(),
                "-l".into(),
                log.clone().into(),
            ]);
            args.extend(["-o".into(), self.server_options(port, fast)]);
            let out = self
                .run("pg_ctl", args, Duration::from_secs(PG_CTL_WAIT_SECS + 30))
                .await?;
            // pg_ctl also fails when it merely gave up waiting: a server still in crash recovery
            // is alive, and wait_ready keeps waiting for it.
            if out.status.success() || read_postmaster(&self.data_dir).is_some() {
                tracing::info!(port, "started PostgreSQL in {}", self.data_dir.display());
                self.port = port;
                self.stop_on_drop = true;
                // An exit that skips drops (shutdown grace passed, second signal) still stops
                // the server this process started.
                let mut stop = self.command("pg_ctl", &self.stop_args());
                stop.stdout(Stdio::null()).stderr(Stdio::null());
                STARTED.lock().unwrap_or_else(|p| p.into_inner()).push(stop);
                if auto {
                    let file = self.root.join(PORT_FILE);
                    fs::write(&file, format!("{port}\n"))
                        .with_context(|| format!("could not write {}", file.display()))?;
                }
                return Ok(());
            }
            let fresh = read_from(&log, log_offset);
            let port_taken = fresh.contains("Address already in use");
            if auto && port_taken && attempt < PORT_ATTEMPTS {
                tracing::debug!(
                    port,
                    "port was taken before PostgreSQL could bind it; picking another"
                );
                port = free_port()?;
                continue;
            }
            let hint = if port_taken {
                format!(" (port {port} is in use by another program: configure another port, or 0 for a free one)")
            } else {
                String::new()
            };
            bail!(
                "could not start PostgreSQL in {}{hint}: {}\nserver log:\n{}",
                self.data_dir.display(),
                describe(&out),
                log_tail(&log)
            );
        }
        bail!("could not find a free port for PostgreSQL")
    }

    fn server_options(&self, port: u16, fast: bool) -> OsString {
        // pg_ctl hands this string to /bin/sh, hence the quoting.
        let mut opts = OsString::from(format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c max_connections=200 -k "
        ));
        match self.socket_dir() {
            Some(dir) => opts.push(shell_quote(dir.as_os_str())),
            None => opts.push("''"),
        }
        opts.push(format!(
            " -c shared_buffers={}MB",
            shared_buffers_mb(memory_limit())
        ));
        if fast {
            opts.push(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        opts
    }

    fn remembered_port(&self) -> Option<u16> {
        fs::read_to_string(self.root.join(PORT_FILE))
            .ok()?
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
    }

    async fn wait_ready(&self) -> Result<()> {
        let started = Instant::now();
        let mut last_note = started;
        loop {
            let err = match self.connect(MAINTENANCE_DB).await {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            let Some(pm) = read_postmaster(&self.data_dir) else {
                bail!(
                    "PostgreSQL in {} exited before accepting connections ({err:#})\nserver log:\n{}",
                    self.data_dir.display(),
                    log_tail(&self.log_file())
                );
            };
            let elapsed = started.elapsed();
            if elapsed > READY_TIMEOUT {
                if pm.status != "starting" || elapsed > RECOVERY_TIMEOUT {
                    bail!(
                        "PostgreSQL in {} did not accept connections within {}s ({err:#})\nserver log:\n{}",
                        self.data_dir.display(),
                        elapsed.as_secs(),
                        log_tail(&self.log_file())
                    );
                }
                if last_note.elapsed() > Duration::from_secs(30) {
                    tracing::info!(
                        waited_s = elapsed.as_secs(),
                        "PostgreSQL is still starting (crash recovery?)"
                    );
                    last_note = Instant::now();
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn connect(&self, db: &str) -> Result<tokio_postgres::Client> {
        let conninfo = format!("{} connect_timeout=10", self.url(db));
        let (client, connection) = tokio_postgres::connect(&conninfo, NoTls)
            .await
            .with_context(|| format!("could not connect to PostgreSQL on port {}", self.port))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("embedded PostgreSQL admin connection ended: {e}");
            }
        });
        Ok(client)
    }

    async fn ensure_database(&self, db: &str) -> Result<()> {
        let client = self.connect(MAINTENANCE_DB).await?;
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db])
            .await
            .context("could not list databases")?
            .is_some();
        if exists {
            return Ok(());
        }
        match client
            .batch_execute(&format!("CREATE DATABASE {}", conninfo::quote_ident(db)))
            .await
        {
            Ok(()) => Ok(()),
            // Another process attached to the same cluster created it first.
            Err(e)
                if e.code() == Some(&SqlState::DUPLICATE_DATABASE)
                    || e.code() == Some(&SqlState::UNIQUE_VIOLATION) =>
            {
                Ok(())
            }
            Err(e) => Err(e).with_context(|| format!("could not create database {db}")),
        }
    }

    /// Drops the databases made by [`create_database`](Self::create_database) whose creating
    /// process has exited: every test makes a database nobody drops, and without this a shared
    /// cluster would grow by megabytes per test forever. The creator's pid is in the name, so
    /// once it has exited the database is garbage. Failures only delay the cleanup, so they are
    /// not errors.
    pub async fn drop_orphaned_databases(&self) {
        let Ok(client) = self.connect(MAINTENANCE_DB).await else {
            return;
        };
        let Ok(rows) = client
            .query(
                "SELECT datname::text FROM pg_database WHERE NOT datistemplate",
                &[],
            )
            .await
        else {
            return;
        };
        let me = std::process::id();
        for row in rows {
            let Ok(name) = row.try_get::<_, String>(0) else {
                continue;
            };
            let Some(pid) = database_creator(&name) else {
                continue;
            };
            if pid == me || process_exists(pid) {
                continue;
            }
            let sql = format!("DROP DATABASE IF EXISTS {}", conninfo::quote_ident(&name));
            match client.batch_execute(&sql).await {
                Ok(()) => tracing::debug!("dropped orphaned test database {name}"),
                Err(e) => tracing::debug!("could not drop orphaned test database {name}: {e}"),
            }
        }
    }
}

/// `pg_ctl stop` for every cluster this process launched, for exits that skip drops.
static STARTED: Mutex<Vec<std::process::Command>> = Mutex::new(Vec::new());

/// Stops every cluster this process launched; for exits that skip drops (shutdown grace
/// passed, second signal), which would otherwise leave the server to crash recovery next time.
pub fn stop_started_clusters() {
    let stops = std::mem::take(&mut *STARTED.lock().unwrap_or_else(|p| p.into_inner()));
    for mut stop in stops {
        let _ = stop.status();
    }
}

impl Drop for EmbeddedPg {
    fn drop(&mut self) {
        if !self.stop_on_drop
            || self.stopped.load(Ordering::Acquire)
            || read_postmaster(&self.data_dir).is_none()
        {
            return;
        }
        // Blocking on purpose: drop often runs as the process exits, where a spawned async stop
        // would never get to run and the server would be left to crash recovery next time.
        let mut cmd = self.command("pg_ctl", &self.stop_args());
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        match cmd.status() {
            Ok(status) if status.success() => {}
            Ok(status) => tracing::warn!(
                "pg_ctl stop for {} failed: {status}",
                self.data_dir.display()
            ),
            Err(e) => tracing::warn!(
                "could not run pg_ctl stop for {}: {e}",
                self.data_dir.display()
            ),
        }
    }
}

/// How server binaries are launched: directly, or as the `postgres` user when we are root.
#[derive(Clone, Debug)]
enum Runner {
    Direct,
    RunUser(PathBuf),
    Su(PathBuf),
}

impl Runner {
    fn detect(as_server_user: bool) -> Result<Self> {
        if !as_server_user {
            return Ok(Self::Direct);
        }
        if let Some(p) = find_program("runuser", &["/usr/sbin/runuser", "/sbin/runuser"]) {
            return Ok(Self::RunUser(p));
        }
        if let Some(p) = find_program("su", &["/bin/su", "/usr/bin/su"]) {
            return Ok(Self::Su(p));
        }
        bail!(
            "running as root, PostgreSQL must run as the `{SERVER_USER}` user, but neither runuser \
             nor su was found: install util-linux, run bigbrotr as another user, or set database.url"
        )
    }

    fn command(&self, program: &Path, args: &[OsString]) -> std::process::Command {
        let mut cmd = match self {
            Self::Direct => {
                let mut cmd = std::process::Command::new(program);
                cmd.args(args);
                cmd
            }
            Self::RunUser(runuser) => {
                let mut cmd = std::process::Command::new(runuser);
                cmd.args(["-u", SERVER_USER, "--"]).arg(program).args(args);
                cmd
            }
            Self::Su(su) => {
                // su only takes a shell command line, so every argument is quoted into one.
                let mut line = shell_quote(program.as_os_str());
                for arg in args {
                    line.push(" ");
                    line.push(shell_quote(arg));
                }
                let mut cmd = std::process::Command::new(su);
                cmd.args(["-s", "/bin/sh", "-c"]).arg(line).arg(SERVER_USER);
                cmd
            }
        };
        cmd.stdin(Stdio::null());
        cmd
    }
}

#[derive(Clone, Copy, Debug)]
struct Owner {
    uid: u32,
    gid: u32,
}

/// `Some` when we are root and the server must run as (and its files belong to) `postgres`.
fn server_owner() -> Result<Option<Owner>> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = CString::new(SERVER_USER)?;
    // SAFETY: an all-zero passwd is a valid out-parameter for getpwnam_r.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and buf's length is passed along with it;
    // the reentrant variant keeps concurrent lookups in other threads from clobbering ours.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 {
        bail!(
            "could not look up the `{SERVER_USER}` OS user: {}",
            std::io::Error::from_raw_os_error(rc)
        );
    }
    if found.is_null() {
        bail!(
            "running as root, but PostgreSQL refuses to run as root and there is no `{SERVER_USER}` \
             OS user to run it as: create one (`useradd --system {SERVER_USER}`), run bigbrotr as an \
             unprivileged user, or set database.url"
        );
    }
    Ok(Some(Owner {
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    }))
}

/// Creates `dir` and gives the server user the directories we had to create, so it can work
/// there; directories that already existed keep their owner.
fn create_dir_for_server(dir: &Path, owner: Option<Owner>) -> Result<()> {
    let mut missing = Vec::new();
    let mut cursor = Some(dir);
    while let Some(p) = cursor.filter(|p| !p.exists()) {
        missing.push(p.to_path_buf());
        cursor = p.parent();
    }
    fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    if let Some(o) = owner {
        for p in &missing {
            std::os::unix::fs::chown(p, Some(o.uid), Some(o.gid))
                .with_context(|| format!("could not hand {} to {SERVER_USER}", p.display()))?;
        }
    }
    Ok(())
}

/// The server insists on owning its data directory with no access for others.
fn prepare_private_dir(dir: &Path, owner: Option<Owner>) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    if let Some(o) = owner {
        std::os::unix::fs::chown(dir, Some(o.uid), Some(o.gid))
            .with_context(|| format!("could not hand {} to {SERVER_USER}", dir.display()))?;
    }
    let mode = fs::metadata(dir)
        .with_context(|| format!("could not stat {}", dir.display()))?
        .permissions()
        .mode()
        & 0o777;
    // 0750 is PostgreSQL's group-access mode; leave it alone rather than fight the operator.
    if mode != 0o700 && mode != 0o750 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("could not make {} private", dir.display()))?;
    }
    Ok(())
}

async fn lock_exclusive(path: &Path) -> Result<fs::File> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("could not open lock file {}", path.display()))?;
    let deadline = Instant::now() + LOCK_TIMEOUT;
    loop {
        // SAFETY: the descriptor stays open for as long as `file` lives. Non-blocking so that
        // waiting does not stall a runtime thread; the lock dies with the descriptor, so a
        // crashed holder cannot wedge everyone else.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(file);
        }
        let err = std::io::Error::last_os_error();
        let busy = matches!(err.raw_os_error(), Some(code) if code == libc::EWOULDBLOCK || code == libc::EINTR);
        if !busy {
            return Err(err).with_context(|| format!("could not lock {}", path.display()));
        }
        if Instant::now() >= deadline {
            bail!(
                "another process has held {} for over {}s while starting PostgreSQL",
                path.display(),
                LOCK_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Debug)]
struct Postmaster {
    pid: i32,
    port: u16,
    status: String,
}

/// postmaster.pid: line 1 pid, 4 port, 8 status ("starting", "ready", "stopping", ...).
fn read_pid_file(data_dir: &Path) -> Option<Postmaster> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    Some(Postmaster {
        pid: lines.first()?.parse().ok().filter(|p| *p > 0)?,
        port: lines.get(3)?.parse().ok()?,
        status: lines.get(7).copied().unwrap_or("starting").to_owned(),
    })
}

/// The live postmaster of `data_dir`, if any; cheap enough to poll.
fn read_postmaster(data_dir: &Path) -> Option<Postmaster> {
    read_pid_file(data_dir).filter(|pm| is_postmaster(pm.pid))
}

fn is_postmaster(pid: i32) -> bool {
    if !pid_alive(pid) {
        return false;
    }
    // Without /proc (not Linux) trust the pid; with it, a recycled pid is recognisable.
    match fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) => matches!(comm.trim(), "postgres" | "postmaster"),
        Err(_) => true,
    }
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists; nothing is delivered.
    if unsafe { libc::kill(pid, 0) } == 0 {
        return true;
    }
    // EPERM: it exists but belongs to someone else.
    std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn process_exists(pid: u32) -> bool {
    i32::try_from(pid).map(pid_alive).unwrap_or(false)
}

/// Where the cluster must come from: an explicit $BIGBROTR_PG_BIN, else the binaries of the
/// major version that created the cluster (a newer PostgreSQL installed next to it cannot open
/// it), else the best installed.
fn bin_dir_for(data_dir: &Path) -> Result<PathBuf> {
    let cluster_version = fs::read_to_string(data_dir.join("PG_VERSION"))
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty());
    let Some(cluster_version) = cluster_version else {
        return EmbeddedPg::find_bin_dir();
    };
    let matching = env::var_os(BIN_ENV)
        .is_none()
        .then(|| {
            installed_bin_dirs()
                .into_iter()
                .find(|i| i.version == cluster_version)
        })
        .flatten();
    let bin_dir = match matching {
        Some(i) => i.dir,
        None => EmbeddedPg::find_bin_dir()?,
    };
    if let Some(server_version) = binary_version(&bin_dir) {
        if !version_matches(&cluster_version, &server_version) {
            bail!(
                "the cluster in {} was created by PostgreSQL {cluster_version}, but the server binaries \
                 in {} are version {server_version}: install PostgreSQL {cluster_version} (or point \
                 {BIN_ENV} at it), or upgrade the cluster with pg_upgrade",
                data_dir.display(),
                bin_dir.display()
            );
        }
    }
    Ok(bin_dir)
}

/// "15.18" from `pg_ctl --version` ("pg_ctl (PostgreSQL) 15.18 (Debian ...)").
fn binary_version(bin_dir: &Path) -> Option<String> {
    let out = std::process::Command::new(bin_dir.join("pg_ctl"))
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (_, rest) = text.split_once("(PostgreSQL)")?;
    rest.split_whitespace().next().map(str::to_owned)
}

/// PG_VERSION holds the major version: "15" (or "9.6" before 10); the binaries report "15.18".
fn version_matches(cluster: &str, server: &str) -> bool {
    server
        .strip_prefix(cluster)
        .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
}

struct Installed {
    version: String,
    key: Vec<u32>,
    dir: PathBuf,
}

/// Versioned installs (Debian/Ubuntu, then PGDG RPM layout), ascending by version.
fn installed_bin_dirs() -> Vec<Installed> {
    let mut found = Vec::new();
    let layouts: [(&str, &str, &str); 2] = [
        ("/usr/lib/postgresql", "", "bin"),
        ("/usr", "pgsql-", "bin"),
    ];
    for (parent, name_prefix, bin) in layouts {
        let Ok(entries) = fs::read_dir(parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(version) = name.to_str().and_then(|n| n.strip_prefix(name_prefix)) else {
                continue;
            };
            let Some(key) = version_key(version) else {
                continue;
            };
            let dir = entry.path().join(bin);
            if has_server_binaries(&dir) {
                found.push(Installed {
                    version: version.to_owned(),
                    key,
                    dir,
                });
            }
        }
    }
    found.sort_by(|a, b| a.key.cmp(&b.key));
    found
}

/// Numeric, so that 10 sorts above 9.6.
fn version_key(version: &str) -> Option<Vec<u32>> {
    version.split('.').map(|part| part.parse().ok()).collect()
}

fn has_server_binaries(dir: &Path) -> bool {
    ["pg_ctl", "initdb", "postgres"]
        .iter()
        .all(|b| is_executable(&dir.join(b)))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn find_program(name: &str, fallbacks: &[&str]) -> Option<PathBuf> {
    // sbin is often missing from PATH in containers and cron, where runuser still exists.
    find_in_path(name).or_else(|| {
        fallbacks
            .iter()
            .map(PathBuf::from)
            .find(|p| is_executable(p))
    })
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).context("could not find a free TCP port")?;
    Ok(listener.local_addr()?.port())
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn rotate_log(log: &Path) {
    if fs::metadata(log).is_ok_and(|m| m.len() > LOG_ROTATE_BYTES) {
        let mut old = log.as_os_str().to_owned();
        old.push(".old");
        if let Err(e) = fs::rename(log, &old) {
            tracing::debug!("could not rotate {}: {e}", log.display());
        }
    }
}

fn read_from(path: &Path, offset: u64) -> String {
    let mut text = Vec::new();
    if let Ok(mut file) = fs::File::open(path) {
        if file.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = file.read_to_end(&mut text);
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// The last lines of the server log: the reason a start failed is almost always at its end.
fn log_tail(path: &Path) -> String {
    const TAIL_BYTES: u64 = 4096;
    const TAIL_LINES: usize = 30;
    let len = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(_) => return format!("(no server log at {})", path.display()),
    };
    let text = read_from(path, len.saturating_sub(TAIL_BYTES));
    let lines: Vec<&str> = text.lines().collect();
    // The first line is likely cut in the middle when we started mid-file.
    let skip = usize::from(len > TAIL_BYTES && lines.len() > 1);
    let start = lines.len().saturating_sub(TAIL_LINES).max(skip);
    lines[start..].join("\n")
}

/// `shared_buffers` of an embedded cluster, in MB: an eighth of `memory` bytes, from 128 MB
/// (PostgreSQL's default) to 1 GB. The default holds little of a growing archive's indexes,
/// whose inserts land on random pages: the tag index cost 17 % of ingestion with 128 MB and
/// 7 % with 1 GB (1M events, BENCHMARKS.md "What the tag index costs on ingestion").
fn shared_buffers_mb(memory: u64) -> u64 {
    (memory / 8 / (1 << 20)).clamp(128, 1024)
}

/// The memory this process may use: the machine's, or its cgroup's limit when lower (a
/// container's `--memory`); 0 when neither can be read.
fn memory_limit() -> u64 {
    let machine = fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("MemTotal:"))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
            .map(|kb| kb.saturating_mul(1024))
    });
    // cgroup v2, then v1 ("max" and v1's huge "unlimited" number both mean no limit).
    let group = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|p| fs::read_to_string(p).ok()?.trim().parse::<u64>().ok());
    match (machine, group) {
        (Some(m), Some(g)) => m.min(g),
        (m, g) => m.or(g).unwrap_or(0),
    }
}

fn describe(out: &Output) -> String {
    let mut text = format!("{}", out.status);
    for stream in [&out.stderr, &out.stdout] {
        let s = String::from_utf8_lossy(stream);
        let s = s.trim();
        if !s.is_empty() {
            let cut = s.len().saturating_sub(2000);
            let cut = (cut..s.len())
                .find(|i| s.is_char_boundary(*i))
                .unwrap_or(s.len());
            text.push('\n');
            text.push_str(&s[cut..]);
        }
    }
    text
}

fn os_args<const N: usize>(args: [&str; N]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn shell_quote(s: &OsStr) -> OsString {
    let mut out = Vec::with_capacity(s.len() + 2);
    out.push(b'\'');
    for &b in s.as_bytes() {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    OsString::from_vec(out)
}

/// `<prefix>_<pid>_<counter>_<random>`: the pid lets a later process recognise databases whose
/// creator has exited; the random part keeps names unique across pid reuse and checkouts.
fn unique_db_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // 20 chars leaves room for the u32 pid, a u64 counter and the suffix within 63 bytes.
    let mut clean: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(20)
        .collect();
    if clean.is_empty() {
        clean.push_str("db");
    }
    let name = format!(
        "{clean}_{}_{}_{:08x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        random_u32()
    );
    debug_assert!(name.len() <= MAX_IDENT);
    name
}

/// The creating pid of a database named by [`EmbeddedPg::create_database`], `None` for any
/// other name.
pub fn database_creator(name: &str) -> Option<u32> {
    let mut parts = name.rsplitn(4, '_');
    let random = parts.next()?;
    let counter = parts.next()?;
    let pid = parts.next()?;
    let prefix = parts.next()?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let well_formed = !prefix.is_empty()
        && random.len() == 8
        && random
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && digits(counter)
        && digits(pid);
    if well_formed {
        pid.parse().ok()
    } else {
        None
    }
}

fn random_u32() -> u32 {
    let mut hasher = RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    hasher.write_u128(nanos);
    hasher.finish() as u32
}

#[cfg(test)]
mod tests {
    #[test]
    fn shared_buffers_are_an_eighth_of_memory_within_bounds() {
        use super::shared_buffers_mb;
        assert_eq!(shared_buffers_mb(0), 128);
        assert_eq!(shared_buffers_mb(512 << 20), 128);
        assert_eq!(shared_buffers_mb(4 << 30), 512);
        assert_eq!(shared_buffers_mb(24 << 30), 1024);
        assert!(super::memory_limit() > 0, "/proc/meminfo is readable here");
    }

    use super::*;

    #[test]
    fn database_names_are_short_unique_and_recognisable() {
        let a = unique_db_name("Some Test-Name that is far too long for postgres");
        let b = unique_db_name("Some Test-Name that is far too long for postgres");
        assert_ne!(a, b);
        assert!(a.len() <= MAX_IDENT);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'));
        assert_eq!(database_creator(&a), Some(std::process::id()));
        assert_eq!(
            database_creator(&unique_db_name("")),
            Some(std::process::id())
        );
        for other in [
            "postgres",
            "bigbrotr",
            "a_1_2_3",
            "x_12_3_zzzzzzzz",
            "_1_2_0123abcd",
        ] {
            assert_eq!(database_creator(other), None, "{other}");
        }
    }

    #[test]
    fn conninfo_quotes_only_when_needed() {
        assert_eq!(conninfo::value("bigbrotr"), "bigbrotr");
        assert_eq!(conninfo::value(""), "''");
        assert_eq!(conninfo::value("a b"), "'a b'");
        assert_eq!(conninfo::value(r"it's\"), r"'it\'s\\'");
    }

    #[test]
    fn versions_compare_numerically_and_by_major() {
        assert!(version_key("10") > version_key("9.6"));
        assert!(version_key("16") > version_key("15"));
        assert_eq!(version_key("beta"), None);
        assert!(version_matches("15", "15.18"));
        assert!(version_matches("9.6", "9.6.24"));
        assert!(version_matches("17", "17beta1"));
        assert!(!version_matches("15", "16.2"));
        assert!(!version_matches("1", "15.2"));
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(
            shell_quote(OsStr::new("/a b/c")),
            OsString::from("'/a b/c'")
        );
        assert_eq!(
            shell_quote(OsStr::new("it's")),
            OsString::from(r"'it'\''s'")
        );
    }
}
