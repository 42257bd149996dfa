//! `bigbrotr config check` and argument checks as an operator meets them: the real binary,
//! a configuration file on disk, the environment. Nothing here opens a database: every
//! refusal happens before any connection, which is the point.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch directory for this test's configuration files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bigbrotr-config-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Runs the binary with `args`, the configuration `file`, and `env` on top of a clean
/// `BIGBROTR_*` environment.
fn bigbrotr(file: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bigbrotr"));
    cmd.arg("--config").arg(file).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("BIGBROTR_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    // `config check` and refused starts end at once; a minute means it hung.
    common::output_within(&mut cmd, std::time::Duration::from_secs(60), "bigbrotr")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write config");
    p
}

#[test]
fn config_check_refuses_infinite_negative_huge_and_out_of_range_values() {
    let dir = scratch("durations");
    let cases = [
        (
            "[sync.timeouts.clearnet]\nconnect = inf\n",
            "sync.timeouts.clearnet.connect",
        ),
        (
            "[sync.timeouts.tor]\nidle = -3.0\n",
            "sync.timeouts.tor.idle",
        ),
        ("[sync]\ninterval = nan\n", "sync.interval"),
        ("[dvm]\njob_timeout = 1e30\n", "dvm.job_timeout"),
        ("[http]\nread_connections = 0\n", "http.read_connections"),
        ("[http]\nread_connections = 5000\n", "http.read_connections"),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let file = write(&dir, &format!("bad{i}.toml"), text);
        let out = bigbrotr(&file, &[], &["config", "check"]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{text} was accepted");
        assert!(
            err.contains(&format!("`{key}`")) && err.contains(&*file.to_string_lossy()),
            "{text}: the error names the key and the file: {err}"
        );
        assert!(!err.contains("panicked"), "{text}: {err}");
    }
}

#[test]
fn config_check_accepts_a_partial_timeouts_table() {
    let dir = scratch("partial");
    let file = write(
        &dir,
        "partial.toml",
        "[sync.timeouts.clearnet]\nidle = 7.5\n",
    );
    let out = bigbrotr(&file, &[], &["config", "check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    let clearnet = shown
        .split_once("clearnet: Timeouts {")
        .and_then(|(_, rest)| rest.split_once('}'))
        .map(|(block, _)| block.to_string())
        .unwrap_or_else(|| panic!("clearnet timeouts shown: {shown}"));
    // The key given, and the defaults of the keys left out (15 s connect, 1800 s relay).
    for want in ["idle: 7.5s", "connect: 15s", "relay: 1800s"] {
        assert!(clearnet.contains(want), "{want} in {clearnet}");
    }
}

#[test]
fn boolean_environment_variables_accept_only_true_false_1_0() {
    let dir = scratch("env");
    let file = write(&dir, "empty.toml", "");
    let out = bigbrotr(
        &file,
        &[("BIGBROTR_ALLOW_LOCAL", "maybe")],
        &["config", "check"],
    );
    assert!(!out.status.success(), "maybe was accepted");
    assert!(
        stderr(&out).contains("BIGBROTR_ALLOW_LOCAL"),
        "{}",
        stderr(&out)
    );
    for v in ["1", "TRUE", "0", "false"] {
        let out = bigbrotr(&file, &[("BIGBROTR_ALLOW_LOCAL", v)], &["config", "check"]);
        assert!(out.status.success(), "{v}: {}", stderr(&out));
        let shown = String::from_utf8_lossy(&out.stdout);
        let want = format!("allow_local: {}", v == "1" || v == "TRUE");
        assert!(shown.contains(&want), "{v}: {want} in {shown}");
    }
}

#[test]
fn sync_refuses_since_after_until_before_connecting() {
    let dir = scratch("range");
    // A database that does not exist: the refusal must come before any connection attempt.
    let file = write(
        &dir,
        "nodb.toml",
        "[database]\nurl = \"host=127.0.0.1 port=1 user=nobody dbname=none connect_timeout=1\"\n",
    );
    let out = bigbrotr(
        &file,
        &[],
        &["sync", "--once", "--since", "2000", "--until", "1000"],
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "an empty range was accepted");
    assert!(
        err.contains("--since 2000") && err.contains("--until 1000"),
        "{err}"
    );
    assert!(!err.contains("connect"), "refused before connecting: {err}");
}
