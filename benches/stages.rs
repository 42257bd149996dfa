//! Per-stage benches on the hot path: parse, id recomputation, verify (new and already-seen
//! ids), dedupe, batch, and the sink's COPY into the real schema (on the embedded cluster).
//!
//! Run: `cargo bench --bench stages` (add `-- sink` etc. to select). Figures and the machine
//! are in BENCHMARKS.md.

use bigbrotr::stages::dedupe::Dedupe;
use bigbrotr::stages::model::{
    CursorState, Event, EventRef, RelayCtx, RelayUrl, Sighting, Ticket, Verified,
};
use bigbrotr::stages::verify::{Check, Gate, Verifier};
use bigbrotr::stages::{batch, sink};
use bigbrotr_testkit::gen::{generate, GenSpec};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::sync::Arc;

fn corpus(n: usize) -> Vec<bigbrotr_testkit::gen::GenEvent> {
    generate(&GenSpec {
        count: n,
        seed: 99,
        ..GenSpec::default()
    })
}

fn frames(evs: &[bigbrotr_testkit::gen::GenEvent]) -> Vec<Vec<u8>> {
    evs.iter()
        .map(|e| format!("[\"EVENT\",\"bb1\",{}]", e.json).into_bytes())
        .collect()
}

fn parsed(evs: &[bigbrotr_testkit::gen::GenEvent]) -> Vec<Event> {
    evs.iter()
        .filter_map(|e| Event::parse_json(e.json.as_bytes()).ok())
        .collect()
}

fn bench_parse(c: &mut Criterion) {
    let evs = corpus(2_000);
    let fr = frames(&evs);
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(fr.len() as u64));
    g.bench_function("relay_message_to_event", |b| {
        let mut buf = Vec::with_capacity(8192);
        let mut scratch = Vec::with_capacity(4096);
        let mut buffers = simd_json::Buffers::default();
        b.iter(|| {
            let mut n = 0usize;
            for f in &fr {
                // The connector's path: depth scan, then simd-json.
                if let Ok(simd_json::BorrowedValue::Array(a)) =
                    bigbrotr::stages::relay::message::decode(f, &mut buf, &mut buffers)
                {
                    if let Some(Ok(r)) = a.get(2).map(EventRef::from_value) {
                        n += r.to_owned_event(&mut scratch).content.len();
                    }
                }
            }
            n
        })
    });
    // The depth bound alone (what every untrusted document pays before it is parsed).
    g.bench_function("depth_scan", |b| {
        b.iter(|| {
            fr.iter()
                .filter(|f| bigbrotr::stages::model::json::check_depth(f).is_ok())
                .count()
        })
    });
    g.finish();
}

fn bench_id(c: &mut Criterion) {
    let evs = parsed(&corpus(2_000));
    let mut g = c.benchmark_group("id");
    g.throughput(Throughput::Elements(evs.len() as u64));
    g.bench_function("canonical_sha256", |b| {
        let mut buf = Vec::with_capacity(4096);
        b.iter(|| {
            evs.iter()
                .filter(|e| e.compute_id(&mut buf) == e.id)
                .count()
        })
    });
    g.finish();
}

fn bench_verify(c: &mut Criterion) {
    let evs = parsed(&corpus(2_000));
    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Elements(evs.len() as u64));
    g.sample_size(10);
    g.bench_function("new_ids", |b| {
        b.iter_batched(
            || Verifier::new(Arc::new(Gate::new(1 << 16)), 1, 65_536),
            |mut v| evs.iter().filter(|e| v.check(e) == Check::Verified).count(),
            BatchSize::LargeInput,
        )
    });
    let mut warm = Verifier::new(Arc::new(Gate::new(1 << 16)), 1, 65_536);
    for e in &evs {
        warm.check(e);
    }
    g.sample_size(50);
    g.bench_function("seen_ids", |b| {
        b.iter(|| {
            evs.iter()
                .filter(|e| warm.check(e) == Check::Skipped)
                .count()
        })
    });
    g.finish();
}

fn relay() -> Arc<RelayCtx> {
    RelayCtx::new(
        RelayUrl::parse("ws://127.0.0.1:1", true).expect("url"),
        CursorState::default(),
    )
}

fn bench_dedupe_batch(c: &mut Criterion) {
    let evs = parsed(&corpus(2_000));
    let r = relay();
    let mut g = c.benchmark_group("dedupe_batch");
    g.throughput(Throughput::Elements(evs.len() as u64));
    g.bench_function("dedupe_and_batch", |b| {
        b.iter_batched(
            || {
                evs.iter()
                    .map(|e| Verified {
                        event: e.clone(),
                        ticket: Ticket {
                            relay: r.clone(),
                            epoch: 0,
                        },
                        seen_at: 0,
                    })
                    .collect::<Vec<_>>()
            },
            |vs| {
                let d = Dedupe::new(1 << 16);
                let mut bt = bigbrotr::stages::model::Batch::default();
                for v in vs {
                    batch::push(&mut bt, d.process(v));
                }
                bt.rows()
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// Unsigned events with unique ids: the sink does not look at signatures, and signing a
/// fresh corpus per iteration would dominate the bench.
fn fake_events(n: usize, salt: u64) -> Vec<Event> {
    // Events holding U+0000 carry raw_canonical, whose hash must equal the id (a CHECK):
    // changing their ids would break it, so they are left out here.
    let base: Vec<Event> = parsed(&corpus(1_000))
        .into_iter()
        .filter(|e| !e.has_nul())
        .collect();
    (0..n)
        .map(|i| {
            let mut e = base[i % base.len()].clone();
            e.id[..8].copy_from_slice(&(i as u64).to_le_bytes());
            e.id[8..16].copy_from_slice(&salt.to_le_bytes());
            e
        })
        .collect()
}

fn bench_sink(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pool = rt.block_on(async {
        let pg = bigbrotr_testkit::cluster::shared_for_tests()
            .await
            .expect("cluster");
        let url = pg.create_database("bench").await.expect("db");
        let pool = bigbrotr::db::connect(&url, 2).await.expect("pool");
        bigbrotr::db::migrate(&pool).await.expect("migrate");
        pool
    });
    let r = relay();
    let n = 5_000usize;
    let mut salt = 0u64;
    let mut g = c.benchmark_group("sink");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(10);
    g.bench_function("copy_5000_events_with_sightings", |b| {
        b.iter_batched(
            || {
                salt += 1;
                let events = fake_events(n, salt);
                let sightings = events
                    .iter()
                    .map(|e| Sighting {
                        id: e.id,
                        ticket: Ticket {
                            relay: r.clone(),
                            epoch: 0,
                        },
                        seen_at: 0,
                        created_at: e.created_at,
                    })
                    .collect();
                bigbrotr::stages::model::Batch { events, sightings }
            },
            |bt| {
                rt.block_on(async {
                    let mut c = pool.get().await.expect("conn");
                    sink::write_batch(&mut c, &bt, sink::Layout::default())
                        .await
                        .expect("write")
                })
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// (created_at, id) pairs as a relay's archive side: `n` items over 60 days, ids hashed.
fn neg_items(n: usize, salt: u64) -> Vec<(u64, [u8; 32])> {
    use sha2::{Digest, Sha256};
    (0..n as u64)
        .map(|i| {
            let id: [u8; 32] = Sha256::digest((i ^ salt.rotate_left(32)).to_le_bytes()).into();
            (1_700_000_000 + (i * 5_184_000 / n as u64), id)
        })
        .collect()
}

fn neg_storage(items: &[(u64, [u8; 32])]) -> negentropy::NegentropyStorageVector {
    let mut st = negentropy::NegentropyStorageVector::with_capacity(items.len());
    for (t, id) in items {
        let _ = st.insert(*t, negentropy::Id::from_byte_array(*id));
    }
    let _ = st.seal();
    st
}

/// Runs a whole reconciliation in memory (client = the archive's side, server = the relay's);
/// returns (rounds, bytes both ways, missing ids).
fn reconcile_in_memory(
    ours: &[(u64, [u8; 32])],
    theirs: &negentropy::NegentropyStorageVector,
) -> (usize, usize, usize) {
    let mut client = negentropy::Negentropy::owned(neg_storage(ours), 50_000).expect("client");
    let mut server = negentropy::Negentropy::borrowed(theirs, 60_000).expect("server");
    let mut msg = client.initiate().expect("initiate");
    let (mut rounds, mut bytes) = (1, msg.len());
    let (mut have, mut need) = (Vec::new(), Vec::new());
    loop {
        let reply = server.reconcile(&msg).expect("server reconcile");
        bytes += reply.len();
        match client
            .reconcile_with_ids(&reply, &mut have, &mut need)
            .expect("client reconcile")
        {
            Some(m) => {
                rounds += 1;
                bytes += m.len();
                msg = m;
            }
            None => return (rounds, bytes, need.len()),
        }
    }
}

/// NIP-77 on the archive's side: building the negentropy set of a range (what the connector
/// does with the rows of one `events_relays` range scan), and whole reconciliations of
/// 100,000 ids against a relay holding the same set or 1 % more.
fn bench_reconcile(c: &mut Criterion) {
    let mut g = c.benchmark_group("reconcile");
    g.sample_size(10);
    let n = 100_000;
    let ours = neg_items(n, 1);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("build_set_100k", |b| b.iter(|| neg_storage(&ours)));
    let same = neg_storage(&ours);
    let (rounds, bytes, missing) = reconcile_in_memory(&ours, &same);
    eprintln!("identical 100k sets: {rounds} rounds, {bytes} bytes, {missing} missing");
    g.bench_function("identical_100k", |b| {
        b.iter(|| reconcile_in_memory(&ours, &same))
    });
    let mut more = ours.clone();
    more.extend(neg_items(n / 100, 2));
    let more = neg_storage(&more);
    let (rounds, bytes, missing) = reconcile_in_memory(&ours, &more);
    eprintln!("100k vs 101k (1 % late events): {rounds} rounds, {bytes} bytes, {missing} missing");
    g.bench_function("one_percent_missing_100k", |b| {
        b.iter(|| reconcile_in_memory(&ours, &more))
    });
    g.finish();
}

/// The relay endpoint's side of NIP-77 (`engine/http/relay/negstore.rs`): a client holding
/// 99 % of 1,000,000 archived ids (frames of 60,000 bytes, nostr-sdk's default) against the
/// server's storage, negentropy's own vector beside the summed one the endpoint uses. Only the
/// server's `reconcile` calls are timed (the client's work is the client's).
fn bench_relay_neg(c: &mut Criterion) {
    use bigbrotr::http::relay::negstore::SummedStorage;
    use negentropy::{Id, Item, Negentropy, NegentropyStorageBase};
    use std::time::{Duration, Instant};
    const SERVER_FRAME: u64 = 524_288 / 2 - 1_024;
    fn server_time<S: NegentropyStorageBase>(
        server: &mut Negentropy<'_, S>,
        client_items: &[(u64, [u8; 32])],
    ) -> (Duration, usize, usize) {
        let mut client = Negentropy::owned(neg_storage(client_items), 60_000).expect("client");
        let mut msg = client.initiate().expect("initiate");
        let (mut spent, mut rounds) = (Duration::ZERO, 1);
        let (mut have, mut need) = (Vec::new(), Vec::new());
        loop {
            let t = Instant::now();
            let reply = server.reconcile(&msg).expect("server reconcile");
            spent += t.elapsed();
            match client
                .reconcile_with_ids(&reply, &mut have, &mut need)
                .expect("client reconcile")
            {
                Some(m) => {
                    rounds += 1;
                    msg = m;
                }
                None => return (spent, rounds, need.len()),
            }
        }
    }
    let mut g = c.benchmark_group("relay_neg");
    g.sample_size(10);
    let n = 1_000_000;
    let all = neg_items(n, 3);
    let client: Vec<(u64, [u8; 32])> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 100 != 50)
        .map(|(_, x)| *x)
        .collect();
    let to_items = || -> Vec<Item> {
        all.iter()
            .map(|(t, id)| Item::with_timestamp_and_id(*t, Id::from_byte_array(*id)))
            .collect()
    };
    g.bench_function("build_summed_1m", |b| {
        b.iter_batched(to_items, SummedStorage::new, BatchSize::LargeInput)
    });
    let vector = neg_storage(&all);
    let summed = SummedStorage::new(to_items());
    let mut v = Negentropy::borrowed(&vector, SERVER_FRAME).expect("server");
    let (_, rounds, missing) = server_time(&mut v, &client);
    eprintln!("1M ids, client with 99 %: {rounds} rounds, {missing} found missing");
    g.bench_function("server_vector_1m_99pct", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let mut s = Negentropy::borrowed(&vector, SERVER_FRAME).expect("server");
                    server_time(&mut s, &client).0
                })
                .sum()
        })
    });
    g.bench_function("server_summed_1m_99pct", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let mut s = Negentropy::borrowed(&summed, SERVER_FRAME).expect("server");
                    server_time(&mut s, &client).0
                })
                .sum()
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_relay_neg,
    bench_reconcile,
    bench_parse,
    bench_id,
    bench_verify,
    bench_dedupe_batch,
    bench_sink
);
criterion_main!(benches);
