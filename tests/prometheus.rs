//! The monitoring files shipped for compose users (`docker/prometheus.yml`, `docker/alerts.yml`,
//! `docker/grafana/`) against the metrics bigbrotr really exports: promtool accepts them, and a
//! real Prometheus (127.0.0.1, temp storage, a 1 s scrape) scraping a running bigbrotr finds
//! data for every Grafana panel's query and every metric the alert rules name, and evaluates
//! every rule without error; so a renamed or dropped metric fails here.

mod common;

use bigbrotr::db::Pool;
use bigbrotr::http::{Http, Server};
use bigbrotr::pipeline::Pipeline;
use bigbrotr::stages::model::{CursorState, RelayCtx};
use bigbrotr::state::EngineState;
use bigbrotr_testkit::gen::{generate, GenSpec};
use bigbrotr_testkit::relay::{Behavior, TestRelay};
use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Grafana panel queries that may return nothing by design, with the reason. Empty: every
/// panel has data against a bigbrotr that synced one relay.
const KNOWN_EMPTY: &[(&str, &str)] = &[];

/// The range Grafana's `$__rate_interval` stands for in the test (several 1 s scrapes).
const RATE_INTERVAL: &str = "30s";

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn promtool_accepts_the_shipped_files() {
    let out = output_within(
        Command::new("promtool")
            .arg("check")
            .arg("config")
            .arg(repo("docker/prometheus.yml")),
        Duration::from_secs(60),
        "promtool check config",
    );
    assert!(
        out.status.success(),
        "promtool check config:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = output_within(
        Command::new("promtool")
            .arg("check")
            .arg("rules")
            .arg(repo("docker/alerts.yml")),
        Duration::from_secs(60),
        "promtool check rules",
    );
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Grafana dashboard: every panel queries the provisioned data source.
#[test]
fn grafana_panels_use_the_provisioned_data_source() {
    let ds: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo(
            "docker/grafana/provisioning/datasources/prometheus.yml",
        ))
        .expect("datasource file"),
    )
    .expect("datasource yaml");
    let uid = ds["datasources"][0]["uid"]
        .as_str()
        .expect("datasource uid");
    let provider: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo("docker/grafana/provisioning/dashboards/bigbrotr.yml"))
            .expect("provider file"),
    )
    .expect("provider yaml");
    assert_eq!(
        provider["providers"][0]["options"]["path"].as_str(),
        Some("/var/lib/grafana/dashboards"),
        "the compose file mounts docker/grafana/dashboards there"
    );
    let panels = grafana_panels();
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let dash = dashboard();
    for p in dash["panels"].as_array().expect("panels") {
        assert_eq!(p["datasource"]["uid"].as_str(), Some(uid), "{}", p["title"]);
        for t in p["targets"].as_array().expect("targets") {
            assert_eq!(t["datasource"]["uid"].as_str(), Some(uid), "{}", p["title"]);
        }
    }
}

fn dashboard() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(repo("docker/grafana/dashboards/bigbrotr.json"))
            .expect("dashboard file"),
    )
    .expect("dashboard json")
}

/// (panel title, query) of every Grafana target.
fn grafana_panels() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in dashboard()["panels"].as_array().expect("panels") {
        let title = p["title"].as_str().expect("title").to_string();
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            out.push((
                title.clone(),
                expr.replace("$__rate_interval", RATE_INTERVAL),
            ));
        }
    }
    out
}

/// (alert name, expression) of every rule in docker/alerts.yml.
fn alert_rules() -> Vec<(String, String)> {
    let doc: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo("docker/alerts.yml")).expect("alerts file"),
    )
    .expect("alerts yaml");
    let mut out = Vec::new();
    for g in doc["groups"].as_sequence().expect("groups") {
        for r in g["rules"].as_sequence().expect("rules") {
            out.push((
                r["alert"].as_str().expect("alert name").to_string(),
                r["expr"].as_str().expect("expr").trim().to_string(),
            ));
        }
    }
    out
}

/// The bigbrotr metric names an expression mentions.
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.starts_with("bigbrotr_"))
        .map(str::to_string)
        .collect()
}

/// Syncs `relay` through a real pipeline with the relay held by the engine as running.
async fn sync_into_state(pool: &Pool, db: &str, relay: &TestRelay) -> Arc<EngineState> {
    let cfg = config(db);
    let url = relay_url(&relay.url());
    bigbrotr::register_relays(pool, std::slice::from_ref(&url))
        .await
        .expect("register");
    let pipeline = Pipeline::start(&cfg, pool.clone());
    let state = Arc::new(EngineState::new(pipeline.stats.clone()));
    let ctx = RelayCtx::new(url.clone(), CursorState::default());
    state
        .relays
        .write()
        .expect("relays")
        .insert(url.to_string(), ctx.clone());
    state
        .running
        .write()
        .expect("running")
        .insert(url.to_string());
    let outcome = pipeline
        .connector(ctx, Arc::new(cfg.sync_for(&url, true)))
        .run()
        .await;
    assert!(
        matches!(outcome, bigbrotr::stages::connect::Outcome::Synced),
        "{outcome:?}"
    );
    pipeline.finish().await.expect("drain");
    state.ready.store(true, Relaxed);
    state
}

async fn serve(pool: &Pool, db: &str, state: Arc<EngineState>) -> Server {
    let mut cfg = config(db);
    cfg.http.listen = "127.0.0.1:0".into();
    Http::bind(&cfg, db, pool.clone())
        .await
        .expect("bind")
        .expect("http configured")
        .spawn(state)
}

/// A running Prometheus, killed when dropped (a failing assertion included).
struct Prometheus {
    child: Option<Child>,
    log: PathBuf,
}

impl Prometheus {
    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Kills it and reaps it (bounded).
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = wait_within(c, Duration::from_secs(30), "prometheus (killed)");
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The shipped prometheus.yml pointed at `target`, scraping every second, its rules from the
/// shipped alerts.yml.
fn test_config(dir: &Path, target: &str) -> PathBuf {
    let mut cfg: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo("docker/prometheus.yml")).expect("prometheus.yml"),
    )
    .expect("prometheus yaml");
    cfg["global"]["scrape_interval"] = "1s".into();
    cfg["global"]["evaluation_interval"] = "1s".into();
    cfg["rule_files"] =
        serde_yaml::Value::Sequence(vec![repo("docker/alerts.yml").display().to_string().into()]);
    let jobs = cfg["scrape_configs"]
        .as_sequence_mut()
        .expect("scrape_configs");
    let job = jobs
        .iter_mut()
        .find(|j| j["job_name"].as_str() == Some("bigbrotr"))
        .expect("a job named bigbrotr (the alerts select up{job=\"bigbrotr\"})");
    job["scrape_interval"] = "1s".into();
    job["scrape_timeout"] = "1s".into();
    job["static_configs"] =
        serde_yaml::from_str(&format!("[{{targets: [\"{target}\"]}}]")).expect("static_configs");
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, serde_yaml::to_string(&cfg).expect("yaml")).expect("write config");
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// `GET /api/v1/<path>` of Prometheus; its `data` on success.
async fn prom(c: &reqwest::Client, base: &str, path: &str, query: &[(&str, &str)]) -> Value {
    let r = c
        .get(format!("{base}/api/v1/{path}"))
        .query(query)
        .send()
        .await
        .unwrap_or_else(|e| panic!("prometheus {path}: {e}"));
    let v: Value = r.json().await.expect("prometheus json");
    assert_eq!(v["status"], "success", "{path} {query:?}: {v}");
    v["data"].clone()
}

async fn instant(c: &reqwest::Client, base: &str, expr: &str) -> Vec<Value> {
    prom(c, base, "query", &[("query", expr)]).await["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_prometheus_finds_data_for_every_panel_and_alert() {
    let events = generate(&GenSpec {
        count: 200,
        authors: 4,
        kinds: vec![1, 7],
        seed: 41,
        ..GenSpec::default()
    });
    let relay = TestRelay::start(events, Behavior::default())
        .await
        .expect("relay");
    let (pool, db) = test_db().await;
    let state = sync_into_state(&pool, &db, &relay).await;
    let server = serve(&pool, &db, state).await;
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let metrics = c
        .get(format!("http://{}/metrics", server.addr()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");

    // Every metric an alert or a panel names is exported (read off bigbrotr directly, so a
    // rename fails with the name even before Prometheus).
    let mut named = BTreeSet::new();
    for (_, e) in grafana_panels().iter().chain(alert_rules().iter()) {
        named.extend(metric_names(e));
    }
    for name in &named {
        assert!(
            metrics.contains(&format!("# TYPE {name} ")),
            "{name} is not exported by /metrics"
        );
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let config = test_config(dir.path(), &server.addr().to_string());
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log = dir.path().join("prometheus.log");
    let file = std::fs::File::create(&log).expect("log file");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::from(file.try_clone().expect("log file")))
        .stderr(Stdio::from(file))
        .spawn()
        .expect("start prometheus (apt-get install prometheus; scripts/ensure-postgres --tests)");
    let mut p = Prometheus {
        child: Some(child),
        log,
    };

    // Ready, scraping, and enough samples for the rates.
    let start = Instant::now();
    let limit = Duration::from_secs(90);
    loop {
        assert!(
            start.elapsed() < limit,
            "prometheus did not collect 10 scrapes of bigbrotr in {limit:?}:\n{}",
            p.log()
        );
        if let Some(Ok(Some(status))) = p.child.as_mut().map(|c| c.try_wait()) {
            panic!("prometheus exited ({status}):\n{}", p.log());
        }
        let ok = match c
            .get(format!("{base}/api/v1/query"))
            .query(&[("query", "count_over_time(bigbrotr_uptime_seconds[1m])")])
            .send()
            .await
        {
            Ok(r) => r
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| {
                    v["data"]["result"][0]["value"][1]
                        .as_str()
                        .map(str::to_string)
                })
                .and_then(|n| n.parse::<f64>().ok())
                .is_some_and(|n| n >= 10.0),
            Err(_) => false,
        };
        if ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let up = instant(&c, &base, "up{job=\"bigbrotr\"}").await;
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0]["value"][1], "1", "bigbrotr's target is down");

    // Every panel's query returns data (or is known-empty by design).
    let mut empty = Vec::new();
    for (title, expr) in grafana_panels() {
        let r = instant(&c, &base, &expr).await;
        let known = KNOWN_EMPTY.iter().any(|(e, _)| *e == expr);
        if r.is_empty() && !known {
            empty.push(format!("{title}: {expr}"));
        }
    }
    assert!(empty.is_empty(), "panels without data: {empty:#?}");

    // Every alert's metrics have series in Prometheus, and every rule evaluates cleanly.
    for (alert, expr) in alert_rules() {
        for name in metric_names(&expr) {
            let r = instant(&c, &base, &format!("count({name})")).await;
            assert!(!r.is_empty(), "{alert}: no series of {name}");
        }
        // The expression itself is valid PromQL over these series (empty is fine: healthy).
        instant(&c, &base, &expr).await;
    }
    let start = Instant::now();
    loop {
        let rules = prom(&c, &base, "rules", &[]).await;
        let all: Vec<Value> = rules["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        assert_eq!(all.len(), alert_rules().len(), "rules loaded: {rules}");
        let bad: Vec<&Value> = all.iter().filter(|r| r["health"] != "ok").collect();
        if bad.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "rules not evaluated cleanly: {bad:#?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A healthy engine fires none of them.
    let firing = instant(&c, &base, "ALERTS{alertstate=\"firing\"}").await;
    assert!(
        firing.is_empty(),
        "alerts firing on a healthy engine: {firing:#?}"
    );

    p.stop();
    server.shutdown().await;
}

/// The compose file's `monitoring` profile: Prometheus and Grafana only with the profile, their
/// files mounted where the configs expect them, and the scrape target on bigbrotr's port.
#[test]
fn compose_monitoring_profile_mounts_the_shipped_files() {
    let compose: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo("docker-compose.yml")).expect("compose file"),
    )
    .expect("compose yaml");
    let mounts = |svc: &str| -> Vec<(String, String)> {
        compose["services"][svc]["volumes"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{svc} volumes"))
            .iter()
            .filter_map(|v| {
                let mut parts = v.as_str()?.split(':');
                let (src, dst) = (parts.next()?, parts.next()?);
                src.starts_with("./")
                    .then(|| (src.trim_start_matches("./").to_string(), dst.to_string()))
            })
            .collect()
    };
    for svc in ["prometheus", "grafana"] {
        let profiles = &compose["services"][svc]["profiles"];
        assert_eq!(
            profiles.as_sequence().map(|p| p.len()),
            Some(1),
            "{svc} profiles"
        );
        assert_eq!(profiles[0].as_str(), Some("monitoring"), "{svc}");
        for (src, _) in mounts(svc) {
            assert!(repo(&src).exists(), "{svc} mounts missing {src}");
        }
    }
    let prom = mounts("prometheus");
    let dst = |src: &str| {
        prom.iter()
            .find(|(s, _)| s == src)
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| panic!("{src} not mounted into prometheus"))
    };
    // rule_files is relative to the config file: alerts.yml must sit beside it.
    let cfg = PathBuf::from(dst("docker/prometheus.yml"));
    let prom_cfg: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo("docker/prometheus.yml")).expect("prometheus.yml"),
    )
    .expect("prometheus yaml");
    let rules = prom_cfg["rule_files"][0].as_str().expect("rule file");
    assert_eq!(
        cfg.parent().expect("dir").join(rules),
        PathBuf::from(dst("docker/alerts.yml"))
    );
    // The scrape target is the bigbrotr service on the port it listens on.
    let listen = compose["services"]["bigbrotr"]["environment"]["BIGBROTR_HTTP_LISTEN"]
        .as_str()
        .expect("BIGBROTR_HTTP_LISTEN");
    let port = listen.rsplit(':').next().expect("port");
    let job = prom_cfg["scrape_configs"]
        .as_sequence()
        .expect("jobs")
        .iter()
        .find(|j| j["job_name"].as_str() == Some("bigbrotr"))
        .expect("bigbrotr job");
    assert_eq!(
        job["static_configs"][0]["targets"][0].as_str(),
        Some(format!("bigbrotr:{port}").as_str())
    );
    // Grafana reads the provisioning and dashboards where the provider file says.
    let graf = mounts("grafana");
    assert!(graf.contains(&(
        "docker/grafana/provisioning".to_string(),
        "/etc/grafana/provisioning".to_string()
    )));
    assert!(graf.contains(&(
        "docker/grafana/dashboards".to_string(),
        "/var/lib/grafana/dashboards".to_string()
    )));
}
