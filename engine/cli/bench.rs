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
    /// Benchmark against this server (a fresh database is created on it) instead of the embedded cluster.
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
    };
    let report = bigbrotr::bench::run(cfg, &spec).await?;
    print!("{}", report.render(&spec));
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}
