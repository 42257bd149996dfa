//! The archive's database: `init` (schema and seed relays), `backup`, `restore`, and `db`
//! (the embedded cluster).

use bigbrotr::config::Config;
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// `bigbrotr init`: creates or upgrades the schema and loads the seed relays.
pub async fn init(cfg: &Config) -> anyhow::Result<()> {
    use anyhow::Context;
    let archive = bigbrotr::open_database(cfg).await?;
    let pool = archive.pool.clone();
    let (relays, refused) = bigbrotr::read_relay_list(&cfg.seeds.file, cfg.sync.allow_local)
        .with_context(|| format!("key `seeds.file` in {}", super::source(cfg)))?;
    let new = bigbrotr::register_relays(&pool, &relays).await?;
    println!(
        "schema ready; {} seed relays read from {} ({} new in the registry, {} lines refused)",
        relays.len(),
        cfg.seeds.file.display(),
        new,
        refused
    );
    Ok(())
}

/// Flags of `bigbrotr backup`.
#[derive(Args, Debug)]
pub struct BackupArgs {
    /// The archive file to write (replaced only once the dump is complete).
    out: PathBuf,
    /// Dump this database instead of the configured one (connect to PostgreSQL directly,
    /// not through PgBouncer).
    #[arg(long)]
    database_url: Option<String>,
}

/// `bigbrotr backup`.
pub async fn backup(cfg: &Config, args: BackupArgs) -> anyhow::Result<()> {
    let report =
        bigbrotr::backup::backup_configured(cfg, args.database_url.as_deref(), &args.out).await?;
    print!("{}", report.render());
    Ok(())
}

/// Flags of `bigbrotr restore`.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The archive file written by `bigbrotr backup` (or `pg_dump -Fc`).
    input: PathBuf,
    /// Restore into this database instead of the configured one.
    #[arg(long)]
    database_url: Option<String>,
    /// Restore into a database that already holds tables, replacing the objects the
    /// backup contains.
    #[arg(long)]
    force: bool,
}

/// `bigbrotr restore`.
pub async fn restore(cfg: &Config, args: RestoreArgs) -> anyhow::Result<()> {
    let opts = bigbrotr::backup::RestoreOptions { force: args.force };
    let report =
        bigbrotr::backup::restore_configured(cfg, args.database_url.as_deref(), &args.input, &opts)
            .await?;
    print!("{}", report.render());
    Ok(())
}

/// Subcommands of `bigbrotr db`.
#[derive(Subcommand, Debug)]
pub enum DbCmd {
    /// Print the connection string of the archive.
    Url,
    /// Stop the embedded cluster.
    Stop,
}

/// `bigbrotr db`.
pub async fn db(cfg: &Config, cmd: DbCmd) -> anyhow::Result<()> {
    if !cfg.database.url.is_empty() {
        match cmd {
            DbCmd::Url => println!("{}", cfg.database.url),
            DbCmd::Stop => println!("database.url is set: nothing embedded to stop"),
        }
        return Ok(());
    }
    let pg = bigbrotr::embedded_pg::EmbeddedPg::start(
        &cfg.embedded.data_dir,
        cfg.embedded.port,
        &cfg.embedded.db_name,
        false,
    )
    .await?;
    match cmd {
        DbCmd::Url => println!("{}", pg.url(&cfg.embedded.db_name)),
        DbCmd::Stop => {
            pg.stop().await?;
            println!("embedded PostgreSQL stopped");
        }
    }
    Ok(())
}
