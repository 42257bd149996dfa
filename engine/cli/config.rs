//! `bigbrotr config check`: what the process would run with.

use bigbrotr::config::Config;
use clap::Subcommand;

/// Subcommands of `bigbrotr config`.
#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Load and validate the configuration (file and BIGBROTR_* environment), then print the
    /// effective values with secrets masked.
    Check,
}

/// `bigbrotr config`.
pub fn run(cfg: &Config, cmd: ConfigCmd) -> anyhow::Result<()> {
    match cmd {
        ConfigCmd::Check => print!("{}", check(cfg)?),
    }
    Ok(())
}

/// `config check`: what the process would run with, secrets masked; connection strings must
/// parse (Config::load does not open them).
fn check(cfg: &Config) -> anyhow::Result<String> {
    use std::fmt::Write;
    let source = super::source;
    let mut shown = cfg.clone();
    for (key, url) in [
        ("database.url", &mut shown.database.url),
        (
            "http.readonly_database_url",
            &mut shown.http.readonly_database_url,
        ),
    ] {
        if url.is_empty() {
            continue;
        }
        if url.parse::<tokio_postgres::Config>().is_err() {
            anyhow::bail!(
                "{}: key `{key}` is not a valid connection string",
                source(cfg)
            );
        }
        *url = bigbrotr::conninfo::render_masked(url);
    }
    let mut out = String::new();
    writeln!(out, "configuration OK: {}", source(cfg))?;
    let database = if shown.database.url.is_empty() {
        format!(
            "(embedded cluster in {})",
            shown.embedded.data_dir.display()
        )
    } else {
        shown.database.url.clone()
    };
    writeln!(out, "database.url = {database}")?;
    writeln!(out, "http.listen = {}", shown.http.listen)?;
    writeln!(
        out,
        "http.readonly_database_url = {}",
        shown.http.readonly_database_url
    )?;
    writeln!(out, "net.socks5 = {}", shown.net.socks5)?;
    writeln!(out, "seeds.file = {}", shown.seeds.file.display())?;
    writeln!(out, "{shown:#?}")?;
    Ok(out)
}
