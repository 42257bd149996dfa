//! The container files, checked without a Docker engine: the Dockerfile's shape and build
//! inputs, docker-compose.yml parsed and its bigbrotr environment run through the real
//! binary's configuration loading, the PgBouncer wiring, and the postgres init script run
//! against a real server.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// One Dockerfile instruction: keyword (upper-case) and its arguments.
#[derive(Debug, Clone)]
struct Instr {
    op: String,
    args: String,
}

/// The Dockerfile's stages, each a list of instructions (continuations joined, comments
/// dropped).
fn dockerfile_stages() -> Vec<Vec<Instr>> {
    let text = read("Dockerfile");
    let mut logical = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => {
                cur.push_str(head);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                logical.push(std::mem::take(&mut cur));
            }
        }
    }
    let mut stages: Vec<Vec<Instr>> = Vec::new();
    for l in logical {
        let (op, args) = l.split_once(char::is_whitespace).unwrap_or((&l, ""));
        let ins = Instr {
            op: op.to_ascii_uppercase(),
            args: args.trim().to_string(),
        };
        if ins.op == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .expect("the Dockerfile starts with FROM")
            .push(ins);
    }
    stages
}

fn find<'a>(stage: &'a [Instr], op: &str) -> Vec<&'a Instr> {
    stage.iter().filter(|i| i.op == op).collect()
}

/// `KEY=value` pairs of every ENV instruction of a stage.
fn env_of(stage: &[Instr]) -> BTreeMap<String, String> {
    find(stage, "ENV")
        .iter()
        .flat_map(|i| i.args.split_whitespace())
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

/// The JSON-array form of ENTRYPOINT/CMD/HEALTHCHECK CMD.
fn json_args(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("exec form expected, got {s:?}: {e}"))
}

/// (source, destination) of a COPY, flags (`--from=…`) split off.
fn copy_parts(args: &str) -> (Option<String>, Vec<String>, String) {
    let mut from = None;
    let mut words: Vec<String> = Vec::new();
    for w in args.split_whitespace() {
        if let Some(f) = w.strip_prefix("--from=") {
            from = Some(f.to_string());
        } else if !w.starts_with("--") {
            words.push(w.to_string());
        }
    }
    let dst = words.pop().expect("COPY destination");
    (from, words, dst)
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| {
            p.trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_a_health_check() {
    let stages = dockerfile_stages();
    assert!(stages.len() >= 2, "multi-stage build");
    let build = &stages[0];
    let runtime = stages.last().expect("runtime stage");
    let from = &build[0].args;
    assert!(
        from.to_ascii_lowercase().ends_with(" as build"),
        "first stage is `FROM … AS build`: {from}"
    );
    assert!(
        !runtime[0].args.starts_with("rust:"),
        "the runtime image carries no toolchain: {}",
        runtime[0].args
    );

    // The build stage compiles the binary where the runtime stage copies it from.
    let workdir = find(build, "WORKDIR")
        .last()
        .map(|i| i.args.clone())
        .expect("build WORKDIR");
    let runs: Vec<&str> = find(build, "RUN").iter().map(|i| i.args.as_str()).collect();
    assert!(
        runs.iter()
            .any(|r| r.contains("cargo build --release") && r.contains("--bin bigbrotr")),
        "{runs:?}"
    );
    let (_, srcs, dst) = find(runtime, "COPY")
        .iter()
        .map(|i| copy_parts(&i.args))
        .find(|(from, _, _)| from.as_deref() == Some("build"))
        .expect("COPY --from=build");
    assert_eq!(srcs, vec![format!("{workdir}/target/release/bigbrotr")]);
    let entry = json_args(&find(runtime, "ENTRYPOINT").last().expect("ENTRYPOINT").args);
    assert_eq!(entry[0], dst, "the entrypoint is the copied binary");

    // Every build input exists, and every file the sources embed is among the inputs (a
    // missing one would only fail inside `docker build`).
    let mut inputs = Vec::new();
    for i in find(build, "COPY") {
        let (_, srcs, _) = copy_parts(&i.args);
        for s in srcs {
            assert!(repo().join(&s).exists(), "build input {s} exists");
            inputs.push(repo().join(s.trim_end_matches('/')));
        }
    }
    for i in find(runtime, "COPY") {
        let (from, srcs, _) = copy_parts(&i.args);
        if from.is_none() {
            for s in srcs {
                assert!(repo().join(&s).exists(), "runtime input {s} exists");
            }
        }
    }
    let mut embedded = Vec::new();
    for dir in ["engine", "stages", "pgcluster", "testkit"] {
        collect_includes(&repo().join(dir), &mut embedded);
    }
    assert!(!embedded.is_empty(), "the sources embed the migrations");
    for path in embedded {
        assert!(
            inputs.iter().any(|i| path.starts_with(i)),
            "{} is embedded by the sources but not copied into the build stage",
            path.display()
        );
    }

    // Crates patched from the tree (`[patch.crates-io]` paths) are build inputs too.
    let manifest: toml::Value = toml::from_str(&read("Cargo.toml")).expect("Cargo.toml");
    let patched = manifest
        .get("patch")
        .and_then(|p| p.get("crates-io"))
        .and_then(toml::Value::as_table)
        .cloned()
        .unwrap_or_default();
    for (name, spec) in patched {
        if let Some(path) = spec.get("path").and_then(toml::Value::as_str) {
            assert!(
                inputs.iter().any(|i| repo().join(path).starts_with(i)),
                "patched crate {name} ({path}) is not copied into the build stage"
            );
        }
    }

    // Non-root, created in the image.
    let user = find(runtime, "USER").last().expect("USER").args.clone();
    assert!(
        user != "root" && user != "0" && !user.starts_with("0:"),
        "{user}"
    );
    assert!(
        find(runtime, "RUN")
            .iter()
            .any(|r| r.args.contains("useradd") && r.args.contains(&user)),
        "user {user} is created"
    );

    // The health check asks /health on the port the image listens on, with the image's curl.
    let env = env_of(runtime);
    let listen = env
        .get("BIGBROTR_HTTP_LISTEN")
        .expect("BIGBROTR_HTTP_LISTEN");
    let hc = find(runtime, "HEALTHCHECK")
        .last()
        .expect("HEALTHCHECK")
        .args
        .clone();
    let cmd = &hc[hc.find("CMD").expect("HEALTHCHECK … CMD") + 3..];
    let cmd = json_args(cmd.trim());
    assert_eq!(cmd[0], "curl");
    assert!(
        find(runtime, "RUN")
            .iter()
            .any(|r| r.args.contains("apt-get install") && r.args.contains(" curl")),
        "curl is installed in the runtime image"
    );
    let url = cmd.iter().find(|a| a.starts_with("http://")).expect("URL");
    assert!(url.ends_with("/health"), "{url}");
    assert_eq!(port_of(url.trim_end_matches("/health")), port_of(listen));
    let exposed = &find(runtime, "EXPOSE").last().expect("EXPOSE").args;
    assert_eq!(port_of(exposed), port_of(listen));
    assert!(env.contains_key("BIGBROTR_CONFIG"), "configuration by file");
}

/// Files named by `include_str!`/`include_bytes!` under `dir`, resolved.
fn collect_includes(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = entry.path();
        if p.is_dir() {
            collect_includes(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&p).expect("read source");
            for marker in ["include_str!(\"", "include_bytes!(\""] {
                for (at, _) in text.match_indices(marker) {
                    let rest = &text[at + marker.len()..];
                    let rel = &rest[..rest.find('"').expect("closing quote")];
                    let base = p.parent().expect("parent");
                    let full = std::fs::canonicalize(base.join(rel))
                        .unwrap_or_else(|e| panic!("{} embeds {rel}: {e}", p.display()));
                    out.push(full);
                }
            }
        }
    }
}

fn compose() -> serde_yaml::Value {
    serde_yaml::from_str(&read("docker-compose.yml")).expect("docker-compose.yml parses")
}

fn service<'a>(c: &'a serde_yaml::Value, name: &str) -> &'a serde_yaml::Value {
    let s = &c["services"][name];
    assert!(s.is_mapping(), "service {name} is defined");
    s
}

fn str_of(v: &serde_yaml::Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v:?}"))
}

/// Compose interpolation with every variable unset: `${X:-default}` / `${X-default}` give
/// the default, `${X}` nothing, `$$` a dollar.
fn interpolate(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').expect("closing brace");
            let expr = &body[..end];
            if let Some((_, default)) = expr.split_once(":-").or_else(|| expr.split_once('-')) {
                out.push_str(default);
            }
            rest = &body[end + 1..];
        } else {
            panic!("bare ${{…}} forms only: {s}");
        }
    }
    out.push_str(rest);
    out
}

/// A service's environment (map or list form), interpolated with the defaults.
fn environment(svc: &serde_yaml::Value) -> BTreeMap<String, String> {
    let env = &svc["environment"];
    let mut out = BTreeMap::new();
    if let Some(m) = env.as_mapping() {
        for (k, v) in m {
            let v = match v {
                serde_yaml::Value::Null => String::new(),
                serde_yaml::Value::String(s) => s.clone(),
                other => serde_yaml::to_string(other)
                    .expect("scalar")
                    .trim()
                    .to_string(),
            };
            out.insert(str_of(k).to_string(), interpolate(&v));
        }
    } else if let Some(list) = env.as_sequence() {
        for item in list {
            let (k, v) = str_of(item).split_once('=').expect("KEY=value");
            out.insert(k.to_string(), interpolate(v));
        }
    }
    out
}

/// (host path, container path) of a service's bind mounts (`./x:/y[:ro]`).
fn bind_mounts(svc: &serde_yaml::Value) -> Vec<(PathBuf, String)> {
    svc["volumes"]
        .as_sequence()
        .map(|v| v.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|v| {
            let s = str_of(v);
            let mut parts = s.split(':');
            let src = parts.next()?;
            let dst = parts.next()?;
            src.starts_with("./")
                .then(|| (repo().join(&src[2..]), dst.to_string()))
        })
        .collect()
}

fn condition(svc: &serde_yaml::Value, dep: &str) -> String {
    str_of(&svc["depends_on"][dep]["condition"]).to_string()
}

#[test]
fn compose_file_parses_and_wires_postgres_pgbouncer_tor_and_bigbrotr() {
    let c = compose();
    let pg = service(&c, "postgres");
    assert!(str_of(&pg["image"]).starts_with("postgres:"));
    let hc = serde_yaml::to_string(&pg["healthcheck"]["test"]).expect("healthcheck");
    assert!(hc.contains("pg_isready"), "{hc}");
    let data = pg["volumes"]
        .as_sequence()
        .expect("postgres volumes")
        .iter()
        .map(str_of)
        .find(|v| v.ends_with(":/var/lib/postgresql/data"))
        .expect("a volume for the data directory");
    let volume = data.split(':').next().expect("volume name");
    assert!(
        c["volumes"].get(volume).is_some(),
        "named volume {volume} declared"
    );

    let bouncer = service(&c, "pgbouncer");
    assert!(str_of(&bouncer["image"]).contains("pgbouncer"));
    assert!(bouncer["healthcheck"]["test"].is_sequence());
    assert_eq!(condition(bouncer, "postgres"), "service_healthy");

    let tor = service(&c, "tor");
    assert!(str_of(&tor["image"]).contains("tor"));

    let bb = service(&c, "bigbrotr");
    let build = &bb["build"];
    let context = build.as_str().or_else(|| build["context"].as_str());
    assert_eq!(context, Some("."), "bigbrotr is built from this Dockerfile");
    assert_eq!(str_of(&bb["restart"]), "unless-stopped");
    assert_eq!(condition(bb, "postgres"), "service_healthy");
    assert_eq!(condition(bb, "pgbouncer"), "service_healthy");
    assert_eq!(condition(bb, "tor"), "service_started");
    let env = environment(bb);
    assert_eq!(env["BIGBROTR_SOCKS5"], "tor:9050");
    assert_eq!(env["BIGBROTR_HTTP_LISTEN"], "0.0.0.0:8080");
    let db: tokio_postgres::Config = env["BIGBROTR_DATABASE_URL"].parse().expect("database URL");
    assert!(
        matches!(&db.get_hosts()[0], tokio_postgres::config::Host::Tcp(h) if h == "pgbouncer"),
        "the writer goes through PgBouncer"
    );

    // Every file a service mounts is in the repository.
    for name in ["postgres", "pgbouncer", "tor", "bigbrotr"] {
        for (host, _) in bind_mounts(service(&c, name)) {
            assert!(host.exists(), "{name} mounts {}", host.display());
        }
    }
    let torrc = read("docker/torrc");
    let socks = torrc
        .lines()
        .find(|l| l.starts_with("SocksPort"))
        .expect("SocksPort");
    assert_eq!(port_of(socks), port_of(&env["BIGBROTR_SOCKS5"]));
    assert!(bind_mounts(tor)
        .iter()
        .any(|(h, d)| h.ends_with("docker/torrc") && d == "/etc/tor/torrc"));
}

/// `[section]` → key → value of an ini file.
fn ini(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = line.split_once('=').expect("key = value");
        out.entry(section.clone())
            .or_default()
            .insert(k.trim().to_string(), v.trim().to_string());
    }
    out
}

#[test]
fn pgbouncer_config_serves_the_database_bigbrotr_connects_to() {
    let c = compose();
    let env = environment(service(&c, "bigbrotr"));
    let url: tokio_postgres::Config = env["BIGBROTR_DATABASE_URL"].parse().expect("URL");
    let ini = ini(&read("docker/pgbouncer.ini"));
    let pgb = &ini["pgbouncer"];
    assert_eq!(pgb["pool_mode"], "transaction");
    let prepared: u32 = pgb["max_prepared_statements"].parse().expect("number");
    assert!(
        prepared > 0,
        "protocol-level prepared statements are tracked"
    );
    assert_eq!(
        pgb["listen_port"].parse::<u16>().expect("port"),
        url.get_ports()[0]
    );
    let dbname = url.get_dbname().expect("dbname");
    let target = ini["databases"]
        .get(dbname)
        .unwrap_or_else(|| panic!("pgbouncer serves {dbname}"));
    assert!(target.contains("host=postgres"), "{target}");

    // The user bigbrotr logs in as is in the auth file, with the password compose gives it,
    // and the auth file is mounted where the ini says.
    let user = url.get_user().expect("user");
    let password =
        String::from_utf8(url.get_password().expect("password").to_vec()).expect("utf-8");
    let userlist = read("docker/userlist.txt");
    let entry = format!("\"{user}\" \"{password}\"");
    assert!(
        userlist.lines().any(|l| l.trim() == entry),
        "{entry} in docker/userlist.txt"
    );
    let mounts = bind_mounts(service(&c, "pgbouncer"));
    assert!(mounts.iter().any(|(_, d)| *d == pgb["auth_file"]));
    assert!(mounts
        .iter()
        .any(|(h, d)| h.ends_with("docker/pgbouncer.ini") && d == "/etc/pgbouncer/pgbouncer.ini"));

    // The API's read-only role connects to PostgreSQL directly (PgBouncer refuses the
    // `options` startup parameter the API sets).
    let reader: tokio_postgres::Config = env["BIGBROTR_HTTP_READONLY_DATABASE_URL"]
        .parse()
        .expect("reader URL");
    assert!(
        matches!(&reader.get_hosts()[0], tokio_postgres::config::Host::Tcp(h) if h == "postgres")
    );
    assert_eq!(reader.get_user(), Some("bigbrotr_reader"));
    let pg_env = environment(service(&c, "postgres"));
    assert_eq!(
        reader.get_password(),
        Some(pg_env["BIGBROTR_READER_PASSWORD"].as_bytes())
    );
    assert_eq!(
        url.get_password(),
        Some(pg_env["POSTGRES_PASSWORD"].as_bytes())
    );
}

/// The container's environment for the bigbrotr service: the image's ENV, then compose's,
/// with container paths mapped to the files they come from in this repository.
fn container_env() -> BTreeMap<String, String> {
    let stages = dockerfile_stages();
    let runtime = stages.last().expect("runtime stage");
    let c = compose();
    let bb = service(&c, "bigbrotr");
    let mut env = env_of(runtime);
    env.extend(environment(bb));
    // Later sources win, as in the container: compose mounts over the image's files.
    let mut paths: Vec<(String, PathBuf)> = Vec::new();
    for i in find(runtime, "COPY") {
        let (from, srcs, dst) = copy_parts(&i.args);
        if from.is_none() && srcs.len() == 1 {
            paths.push((dst, repo().join(&srcs[0])));
        }
    }
    for (host, dst) in bind_mounts(bb) {
        paths.push((dst, host));
    }
    for v in env.values_mut() {
        if let Some((dst, host)) = paths.iter().rev().find(|(d, _)| v.starts_with(d.as_str())) {
            let mapped = host.join(v[dst.len()..].trim_start_matches('/'));
            *v = mapped.to_string_lossy().trim_end_matches('/').to_string();
        }
    }
    env
}

fn config_check(env: &BTreeMap<String, String>) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    Command::new(env!("CARGO_BIN_EXE_bigbrotr"))
        .args(["config", "check"])
        .env_clear()
        .envs(env)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("run bigbrotr config check")
}

#[test]
fn the_binary_accepts_the_compose_environment() {
    let env = container_env();
    let config = PathBuf::from(&env["BIGBROTR_CONFIG"]);
    assert!(config.is_file(), "{} exists", config.display());
    let seeds = PathBuf::from(&env["BIGBROTR_SEEDS"]);
    assert!(seeds.is_file(), "{} exists", seeds.display());

    let out = config_check(&env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "config check refused the compose environment: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with(&format!("configuration OK: {}", config.display())),
        "{stdout}"
    );
    for line in [
        "database.url = host=pgbouncer port=5432 user=bigbrotr dbname=bigbrotr password=***",
        "http.listen = 0.0.0.0:8080",
        "http.readonly_database_url = host=postgres port=5432 user=bigbrotr_reader dbname=bigbrotr password=***",
        "net.socks5 = tor:9050",
        &format!("seeds.file = {}", seeds.display()),
    ] {
        assert!(stdout.lines().any(|l| l == line), "`{line}` in:\n{stdout}");
    }
    assert!(!stdout.contains("password=bigbrotr"), "secrets are masked");

    // The check really validates: a broken value is refused, naming the key.
    let mut broken = env.clone();
    broken.insert("BIGBROTR_HTTP_LISTEN".into(), "everywhere".into());
    let out = config_check(&broken);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("http.listen"), "{err}");
    let mut broken = env;
    broken.insert("BIGBROTR_DATABASE_URL".into(), "host='unterminated".into());
    let out = config_check(&broken);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("database.url"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_init_script_gives_the_reader_role_a_password() {
    let (pool, url) = common::test_db().await;
    let pg: tokio_postgres::Config = url.parse().expect("url");
    let psql = bigbrotr::embedded_pg::EmbeddedPg::find_client_bin("psql").expect("psql");
    let path = format!(
        "{}:{}",
        psql.parent().expect("bin dir").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = repo().join("docker/postgres-init/10-bigbrotr-reader.sh");
    // As the postgres image runs it (`POSTGRES_USER`, `POSTGRES_DB`), on the test server.
    let out = Command::new("sh")
        .arg(&script)
        .env("PATH", path)
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", pg.get_ports()[0].to_string())
        .env("POSTGRES_USER", pg.get_user().expect("user"))
        .env("POSTGRES_DB", pg.get_dbname().expect("dbname"))
        .env("BIGBROTR_READER_PASSWORD", "it's a secret")
        .stdin(Stdio::null())
        .output()
        .expect("run the init script");
    assert!(
        out.status.success(),
        "init script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = pool.get().await.expect("conn");
    let row = c
        .query_one(
            "SELECT rolcanlogin, rolpassword IS NOT NULL FROM pg_authid WHERE rolname = 'bigbrotr_reader'",
            &[],
        )
        .await
        .expect("role");
    assert!(row.get::<_, bool>(0), "the reader can log in");
    assert!(row.get::<_, bool>(1), "the reader has a password");
}

/// `bigbrotr backup` runs pg_dump inside the container, and pg_dump must be at least the
/// server's major version: the runtime stage installs the PostgreSQL client of the major the
/// compose file's `postgres` image runs, and checks the binary is where `find_client_bin`
/// looks (`/usr/lib/postgresql/<major>/bin`).
#[test]
fn the_runtime_image_ships_pg_dump_of_the_compose_servers_major() {
    let stages = dockerfile_stages();
    let runtime = stages.last().expect("runtime stage");
    let major = find(runtime, "ARG")
        .iter()
        .find_map(|i| i.args.strip_prefix("PG_MAJOR=").map(str::to_string))
        .expect("ARG PG_MAJOR=<n> in the runtime stage");
    let c = compose();
    let image = str_of(&service(&c, "postgres")["image"]).to_string();
    let server_major = image
        .split(':')
        .nth(1)
        .and_then(|tag| tag.split(['-', '.']).next())
        .expect("postgres image tag names a major version");
    assert_eq!(
        major, server_major,
        "client {major} for server image {image}"
    );
    let runs: Vec<&str> = find(runtime, "RUN")
        .iter()
        .map(|i| i.args.as_str())
        .collect();
    assert!(
        runs.iter()
            .any(|r| r.contains("postgresql-client-${PG_MAJOR}")
                && r.contains("/usr/lib/postgresql/${PG_MAJOR}/bin/pg_dump")),
        "{runs:?}"
    );
}
