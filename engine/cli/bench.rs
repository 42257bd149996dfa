//! `bigbrotr bench`: the end-to-end ingestion benchmark on local relays.

use bigbrotr::config::Config;
use clap::Args;
use std::path::PathBuf;

/// Flags of `bigbrotr bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Distinct events in the corpus.
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Relays serving them (each in its own process).
    #[arg(long, default_value_t = 8)]
    relays: usize,
    /// Fraction of the corpus every relay holds beyond its own share (0 = disjoint, 1 = all relays hold everything).
    #[arg(long, default_value_t = 0.0)]
    overlap: f64,
    /// Kinds to generate (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,7,0,3,10002,30023")]
    kinds: Vec<u16>,
    /// Content size range in bytes, MIN-MAX.
    #[arg(long, default_value = "20-400")]
    content: String,
    /// Corpus seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Directory for the cached corpus and the bench cluster.
    #[arg(long, default_value = "data/bench")]
    dir: PathBuf,
    /// Benchmark into this database (an empty one: a database that holds events is refused) instead of the embedded cluster.
    #[arg(long)]
    database_url: Option<String>,
    /// Print the report as JSON too.
    #[arg(long)]
    json: bool,
    /// The relays speak NIP-77, so the engine reconciles instead of walking.
    #[arg(long)]
    nip77: bool,
    /// After the pass, sync the unchanged relays again and report its time and traffic.
    #[arg(long)]
    resync: bool,
    /// Archive with N `bigbrotr run` child processes sharing the registry as a fleet instead
    /// of one in-process sync (0 = in-process).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Instead of an ingestion: register this many relays that refuse connections, run
    /// --workers workers (0 = none: the database's own baseline) and count the database's
    /// transactions and the lease statements over --idle-secs.
    #[arg(long, default_value_t = 0)]
    idle_relays: usize,
    /// Seconds the --idle-relays measurement lasts.
    #[arg(long, default_value_t = 60)]
    idle_secs: u64,
    /// SQL file applied to the bench database right after the migrations (e.g.
    /// scripts/partition-events.sql).
    #[arg(long, value_name = "FILE")]
    setup_sql: Option<PathBuf>,
}

/// `bigbrotr bench`.
pub async fn run(cfg: &Config, args: BenchArgs) -> anyhow::Result<()> {
    let content = &args.content;
    let (lo, hi) = content
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
        .ok_or_else(|| anyhow::anyhow!("--content {content}: expected MIN-MAX bytes"))?;
    let spec = bigbrotr::bench::BenchSpec {
        events: args.events,
        relays: args.relays,
        overlap: args.overlap.clamp(0.0, 1.0),
        kinds: args.kinds,
        content: (lo, hi),
        seed: args.seed,
        dir: args.dir,
        database_url: args.database_url,
        keep: false,
        nip77: args.nip77,
        resync: args.resync,
        setup_sql: args.setup_sql,
        workers: args.workers,
        idle_relays: args.idle_relays,
        idle_secs: args.idle_secs,
    };
    if spec.idle_relays > 0 {
        let report = bigbrotr::bench_fleet::idle(cfg, &spec).await?;
        print!("{}", report.render());
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        }
        return Ok(());
    }
    if spec.workers > 0 {
        if args.resync {
            anyhow::bail!("--resync is measured by the in-process bench only (not with --workers)");
        }
        let report = bigbrotr::bench_fleet::run(cfg, &spec).await?;
        print!("{}", report.render(&spec));
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        }
        return Ok(());
    }
    let report = bigbrotr::bench::run(cfg, &spec).await?;
    print!("{}", report.render(&spec));
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}
