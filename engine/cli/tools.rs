//! Hidden tools for benches and tests: `testrelay` (serve a JSON-lines file as a relay) and
//! `gen` (write signed events). Neither reads the configuration.

use bigbrotr_testkit::{gen, relay as testrelay};
use clap::Args;
use std::path::PathBuf;

/// Flags of `bigbrotr testrelay`.
#[derive(Args, Debug)]
pub struct TestrelayArgs {
    /// Events, one JSON object per line.
    #[arg(long)]
    events: PathBuf,
    /// Port on 127.0.0.1.
    #[arg(long)]
    port: u16,
    /// Answer NIP-77 (negentropy) reconciliation.
    #[arg(long)]
    nip77: bool,
}

/// `bigbrotr testrelay`: serves until killed.
pub async fn testrelay(args: TestrelayArgs) -> anyhow::Result<()> {
    let evs = gen::read_jsonl(&args.events)?;
    eprintln!(
        "serving {} events on ws://127.0.0.1:{}",
        evs.len(),
        args.port
    );
    let behavior = testrelay::Behavior {
        neg: if args.nip77 {
            testrelay::NegMode::Normal
        } else {
            testrelay::NegMode::Unsupported
        },
        ..Default::default()
    };
    testrelay::serve_forever(args.port, evs, behavior).await
}

/// Flags of `bigbrotr gen`.
#[derive(Args, Debug)]
pub struct GenArgs {
    /// How many.
    #[arg(long)]
    count: usize,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
    /// RNG seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// `bigbrotr gen`.
pub fn gen(args: GenArgs) -> anyhow::Result<()> {
    let spec = gen::GenSpec {
        count: args.count,
        seed: args.seed,
        ..Default::default()
    };
    let evs = gen::generate(&spec);
    gen::write_jsonl(&args.out, &evs)?;
    eprintln!("wrote {} events to {}", evs.len(), args.out.display());
    Ok(())
}
