//! Deterministic generation of validly signed Nostr events for tests, benches and the test relay.

use std::collections::HashSet;
use std::io::{BufRead, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use secp256k1::{Keypair, SecretKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A signed event ready to serve: its id, created_at and the wire JSON of the event object.
#[derive(Clone, Debug)]
pub struct GenEvent {
    /// The event id (sha256 of the NIP-01 serialization, unless made with [`with_bad_id`]).
    pub id: [u8; 32],
    /// The author's x-only public key.
    pub pubkey: [u8; 32],
    /// Unix seconds.
    pub created_at: i64,
    /// The event kind.
    pub kind: u16,
    /// The event object as sent on the wire, without the surrounding relay message.
    pub json: String,
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenSpec {
    /// Number of distinct events.
    pub count: usize,
    /// Number of distinct authors (keypairs); 0 is treated as 1.
    pub authors: usize,
    /// Kinds to pick from uniformly; empty is treated as `[1]`.
    pub kinds: Vec<u16>,
    /// Content length in bytes, inclusive range (min, max).
    pub content_len: (usize, usize),
    /// Number of random tags, inclusive range (min, max); addressable kinds get an extra `d` tag.
    pub tags_per_event: (usize, usize),
    /// Earliest created_at.
    pub start_ts: i64,
    /// created_at is uniform in `[start_ts, start_ts + spread_secs)`.
    pub spread_secs: i64,
    /// Everything generated is a function of this seed (and the other fields).
    pub seed: u64,
}

impl Default for GenSpec {
    fn default() -> Self {
        GenSpec {
            count: 1000,
            authors: 50,
            kinds: vec![1, 7, 0, 3, 10002, 30023],
            content_len: (20, 400),
            tags_per_event: (0, 4),
            start_ts: 1_700_000_000,
            spread_secs: 86_400 * 30,
            seed: 1,
        }
    }
}

/// Borrowed view used to emit the wire JSON in the canonical field order.
#[derive(Serialize)]
struct WireOut<'a> {
    id: &'a str,
    pubkey: &'a str,
    created_at: i64,
    kind: u16,
    tags: &'a [Vec<String>],
    content: &'a str,
    sig: &'a str,
}

/// Owned view used to read events back (from files or fault-injection copies).
#[derive(Deserialize)]
struct WireIn {
    id: String,
    pubkey: String,
    created_at: i64,
    kind: u16,
    tags: Vec<Vec<String>>,
    content: String,
    sig: String,
}

/// Signs one event (id = sha256 of the NIP-01 serialization computed with serde_json, which matches NIP-01 byte for byte).
pub fn sign(
    keypair: &Keypair,
    created_at: i64,
    kind: u16,
    tags: &[Vec<String>],
    content: &str,
) -> GenEvent {
    let pubkey = keypair.x_only_public_key().0.to_byte_array();
    sign_with(
        keypair,
        &pubkey,
        &hex::encode(pubkey),
        created_at,
        kind,
        tags,
        content,
    )
}

/// Like [`sign`], with the pubkey precomputed since generation signs many events per author.
fn sign_with(
    keypair: &Keypair,
    pubkey: &[u8; 32],
    pubkey_hex: &str,
    created_at: i64,
    kind: u16,
    tags: &[Vec<String>],
    content: &str,
) -> GenEvent {
    let id = event_id(pubkey_hex, created_at, kind, tags, content);
    // No aux randomness: the signature must be a pure function of the seed for determinism.
    let sig = secp256k1::schnorr::sign_no_aux_rand(&id, keypair).to_byte_array();
    let id_hex = hex::encode(id);
    let sig_hex = hex::encode(sig);
    let json = wire_json(
        &id_hex, pubkey_hex, created_at, kind, tags, content, &sig_hex,
    );
    GenEvent {
        id,
        pubkey: *pubkey,
        created_at,
        kind,
        json,
    }
}

/// The NIP-01 id: serde_json's compact output is exactly the NIP-01 serialization.
fn event_id(
    pubkey_hex: &str,
    created_at: i64,
    kind: u16,
    tags: &[Vec<String>],
    content: &str,
) -> [u8; 32] {
    let ser = serde_json::to_string(&(0u8, pubkey_hex, created_at, kind, tags, content))
        .expect("serializing strings and integers cannot fail");
    Sha256::digest(ser.as_bytes()).into()
}

fn wire_json(
    id: &str,
    pubkey: &str,
    created_at: i64,
    kind: u16,
    tags: &[Vec<String>],
    content: &str,
    sig: &str,
) -> String {
    let w = WireOut {
        id,
        pubkey,
        created_at,
        kind,
        tags,
        content,
        sig,
    };
    serde_json::to_string(&w).expect("serializing strings and integers cannot fail")
}

/// splitmix64 finaliser: decorrelates (seed, stream, index) so that e.g. seed 2 chunk 0 differs from seed 1 chunk 1.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b
        .wrapping_add(0x9E37_79B9_7F4A_7C15)
        .wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Events per chunk: fixed so that output does not depend on the number of cores.
const CHUNK: usize = 256;

const WORDS: &[&str] = &[
    "nostr",
    "relay",
    "zap",
    "bitcoin",
    "hello",
    "world",
    "gm",
    "note",
    "the",
    "a",
    "of",
    "and",
    "freedom",
    "protocol",
    "event",
    "signed",
    "key",
    "archive",
    "stream",
    "pipeline",
    "coffee",
    "today",
    "build",
    "ship",
    "test",
    "why",
    "not",
    "lightning",
    "sats",
    "pura",
    "vida",
];

/// Pieces that exercise every escaping rule of NIP-01 plus the characters serializers get wrong.
const SPECIAL: &[&str] = &[
    "é",
    "日本語",
    "🎉",
    "Ωμέγα",
    "\"",
    "\\",
    "\n",
    "\r\n",
    "\t",
    "\u{8}",
    "\u{c}",
    "\u{1}",
    "\u{1f}",
    "\u{7f}",
    "\u{2028}",
    "/",
    "</script>",
    "\\n",
    "\"quoted\"",
    "ﬁ",
];

const TOPICS: &[&str] = &[
    "nostr",
    "bitcoin",
    "café",
    "日本語",
    "zap\"quote",
    "back\\slash",
    "tab\there",
    "photography",
    "grownostr",
    "art",
];

fn content(rng: &mut StdRng, len: usize, allow_nul: bool) -> String {
    let mut s = String::with_capacity(len + 16);
    while s.len() < len {
        if !s.is_empty() && rng.random_bool(0.1) {
            if allow_nul && rng.random_bool(0.2) {
                s.push('\u{0}');
            } else {
                s.push_str(SPECIAL[rng.random_range(0..SPECIAL.len())]);
            }
        } else {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(WORDS[rng.random_range(0..WORDS.len())]);
        }
    }
    let mut cut = len;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    // Pad after cutting a multi-byte char so the byte length is exactly what was drawn.
    while s.len() < len {
        s.push('.');
    }
    s
}

fn random_hex32(rng: &mut StdRng) -> String {
    let mut b = [0u8; 32];
    rng.fill_bytes(&mut b);
    hex::encode(b)
}

fn relay_hint(rng: &mut StdRng) -> String {
    format!("wss://relay{}.example.com", rng.random_range(0..20u32))
}

fn tags(rng: &mut StdRng, spec: &GenSpec, kind: u16, authors_hex: &[String]) -> Vec<Vec<String>> {
    let (lo, hi) = ordered(spec.tags_per_event);
    let n = rng.random_range(lo..=hi);
    let mut tags = Vec::with_capacity(n + 1);
    if (30000..40000).contains(&kind) {
        tags.push(vec![
            "d".to_string(),
            format!("article-{}", rng.random_range(0..1000u32)),
        ]);
    }
    for _ in 0..n {
        let t = match kind {
            10002 => {
                let mut t = vec!["r".to_string(), relay_hint(rng)];
                match rng.random_range(0..3u8) {
                    0 => t.push("read".into()),
                    1 => t.push("write".into()),
                    _ => {}
                }
                t
            }
            3 => vec![
                "p".to_string(),
                authors_hex[rng.random_range(0..authors_hex.len())].clone(),
                relay_hint(rng),
            ],
            _ => match rng.random_range(0..3u8) {
                0 => vec![
                    "e".to_string(),
                    random_hex32(rng),
                    "wss://relay.example.com".to_string(),
                ],
                1 => vec![
                    "p".to_string(),
                    authors_hex[rng.random_range(0..authors_hex.len())].clone(),
                ],
                _ => vec![
                    "t".to_string(),
                    TOPICS[rng.random_range(0..TOPICS.len())].to_string(),
                ],
            },
        };
        tags.push(t);
    }
    tags
}

fn ordered((a, b): (usize, usize)) -> (usize, usize) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

struct Author {
    keypair: Keypair,
    pubkey: [u8; 32],
    pubkey_hex: String,
}

fn derive_authors(seed: u64, n: usize, threads: usize) -> Vec<Author> {
    let mut rng = StdRng::seed_from_u64(mix(seed, 0xA07B0));
    let mut secrets = Vec::with_capacity(n);
    while secrets.len() < n {
        let mut b = [0u8; 32];
        rng.fill_bytes(&mut b);
        // Scalar validity is cheap to check here; the expensive keypair derivation runs in parallel below.
        if let Ok(sk) = SecretKey::from_secret_bytes(b) {
            secrets.push(sk);
        }
    }
    let per = n.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = secrets
            .chunks(per)
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|sk| {
                            let keypair = Keypair::from_secret_key(sk);
                            let pubkey = keypair.x_only_public_key().0.to_byte_array();
                            Author {
                                keypair,
                                pubkey,
                                pubkey_hex: hex::encode(pubkey),
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("key derivation thread panicked"))
            .collect()
    })
}

fn gen_chunk(
    spec: &GenSpec,
    authors: &[Author],
    authors_hex: &[String],
    chunk: usize,
) -> Vec<GenEvent> {
    let mut rng = StdRng::seed_from_u64(mix(spec.seed, chunk as u64 + 1));
    let start = chunk * CHUNK;
    let end = (start + CHUNK).min(spec.count);
    let default_kinds = [1u16];
    let kinds: &[u16] = if spec.kinds.is_empty() {
        &default_kinds
    } else {
        &spec.kinds
    };
    let (clo, chi) = ordered(spec.content_len);
    let spread = spec.spread_secs.max(1);
    let mut out = Vec::with_capacity(end - start);
    for _ in start..end {
        let a = &authors[rng.random_range(0..authors.len())];
        let kind = kinds[rng.random_range(0..kinds.len())];
        let created_at = spec.start_ts + rng.random_range(0..spread);
        let tags = tags(&mut rng, spec, kind, authors_hex);
        let len = rng.random_range(clo..=chi);
        // U+0000 only in a small share of events: PostgreSQL text cannot hold it, so it is a rare, targeted case.
        let allow_nul = rng.random_bool(0.02);
        let content = content(&mut rng, len, allow_nul);
        out.push(sign_with(
            &a.keypair,
            &a.pubkey,
            &a.pubkey_hex,
            created_at,
            kind,
            &tags,
            &content,
        ));
    }
    out
}

/// Generates spec.count distinct events, deterministically from spec.seed, using all cores (std::thread::scope over chunks; per-chunk rng seeded from seed+chunk index). Tags include realistic ones: ["e", hex, "wss://relay.example.com"], ["p", hex], ["t", word]; content includes some non-ASCII, quotes, backslashes, newlines and control characters so escaping is exercised.
pub fn generate(spec: &GenSpec) -> Vec<GenEvent> {
    if spec.count == 0 {
        return Vec::new();
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let authors = derive_authors(spec.seed, spec.authors.max(1), threads);
    let authors_hex: Vec<String> = authors.iter().map(|a| a.pubkey_hex.clone()).collect();
    let chunks = spec.count.div_ceil(CHUNK);
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Vec<GenEvent>>> = (0..chunks).map(|_| Mutex::new(Vec::new())).collect();
    std::thread::scope(|s| {
        for _ in 0..threads.min(chunks) {
            s.spawn(|| loop {
                let c = next.fetch_add(1, Ordering::Relaxed);
                if c >= chunks {
                    break;
                }
                let evs = gen_chunk(spec, &authors, &authors_hex, c);
                *results[c].lock().expect("chunk slot poisoned") = evs;
            });
        }
    });
    let mut events: Vec<GenEvent> = Vec::with_capacity(spec.count);
    for r in results {
        events.extend(r.into_inner().expect("chunk slot poisoned"));
    }
    make_distinct(&mut events, &authors);
    events
}

/// Tiny specs (no content, no tags, one author) can draw the same event twice; a nonce tag makes
/// the copy distinct without touching created_at or content, and is deterministic because this pass is sequential.
fn make_distinct(events: &mut [GenEvent], authors: &[Author]) {
    let mut seen: HashSet<[u8; 32]> = HashSet::with_capacity(events.len());
    let mut nonce = 0u64;
    for ev in events.iter_mut() {
        if seen.insert(ev.id) {
            continue;
        }
        let Some(a) = authors.iter().find(|a| a.pubkey == ev.pubkey) else {
            continue;
        };
        let w: WireIn = serde_json::from_str(&ev.json).expect("generated JSON parses");
        loop {
            nonce += 1;
            let mut tags = w.tags.clone();
            tags.push(vec!["nonce".to_string(), nonce.to_string()]);
            let fresh = sign_with(
                &a.keypair,
                &a.pubkey,
                &a.pubkey_hex,
                w.created_at,
                w.kind,
                &tags,
                &w.content,
            );
            if seen.insert(fresh.id) {
                *ev = fresh;
                break;
            }
        }
    }
}

/// Writes events as JSON lines (one event object per line).
pub fn write_jsonl(path: &Path, events: &[GenEvent]) -> anyhow::Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::new(f);
    for ev in events {
        w.write_all(ev.json.as_bytes())?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    Ok(())
}

/// Reads events written by [`write_jsonl`] (or any file of one event object per line); blank lines are skipped.
pub fn read_jsonl(path: &Path) -> anyhow::Result<Vec<GenEvent>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}", path.display(), i + 1))?;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let ev = parse_event(line).with_context(|| format!("{}:{}", path.display(), i + 1))?;
        out.push(ev);
    }
    Ok(out)
}

/// Parses one event object, keeping its text as-is so a file round-trips byte for byte.
pub(crate) fn parse_event(json: &str) -> anyhow::Result<GenEvent> {
    let w: WireIn = serde_json::from_str(json).context("not an event object")?;
    Ok(GenEvent {
        id: hex32(&w.id).context("id")?,
        pubkey: hex32(&w.pubkey).context("pubkey")?,
        created_at: w.created_at,
        kind: w.kind,
        json: json.to_string(),
    })
}

/// Checks a client-published event object (shape, hex fields, id) and returns it with canonical wire JSON.
pub(crate) fn event_from_value(v: serde_json::Value) -> Result<GenEvent, String> {
    let w: WireIn =
        serde_json::from_value(v).map_err(|e| format!("invalid: malformed event: {e}"))?;
    let id = hex32(&w.id).map_err(|_| "invalid: id is not 64 hex chars".to_string())?;
    let pubkey = hex32(&w.pubkey).map_err(|_| "invalid: pubkey is not 64 hex chars".to_string())?;
    if w.sig.len() != 128 || hex::decode(&w.sig).is_err() {
        return Err("invalid: sig is not 128 hex chars".into());
    }
    if event_id(&w.pubkey, w.created_at, w.kind, &w.tags, &w.content) != id {
        return Err("invalid: event id does not match".into());
    }
    Ok(GenEvent {
        id,
        pubkey,
        created_at: w.created_at,
        kind: w.kind,
        json: wire_json(
            &w.id,
            &w.pubkey,
            w.created_at,
            w.kind,
            &w.tags,
            &w.content,
            &w.sig,
        ),
    })
}

/// The tags of an event object, for tag filters; None when the JSON is not an event.
pub(crate) fn event_tags(json: &str) -> Option<Vec<Vec<String>>> {
    #[derive(Deserialize)]
    struct Tags {
        tags: Vec<Vec<String>>,
    }
    serde_json::from_str::<Tags>(json).ok().map(|t| t.tags)
}

fn hex32(s: &str) -> anyhow::Result<[u8; 32]> {
    let mut b = [0u8; 32];
    if s.len() != 64 {
        bail!("expected 64 hex chars, got {}", s.len());
    }
    hex::decode_to_slice(s, &mut b)?;
    Ok(b)
}

fn reparse(ev: &GenEvent) -> WireIn {
    // GenEvents only come from sign/generate/read_jsonl, which all guarantee a parseable object.
    serde_json::from_str(&ev.json).expect("GenEvent.json is an event object")
}

/// A copy of `ev` with a corrupted signature (still well-formed hex, same id) — for fault injection.
pub fn with_bad_sig(ev: &GenEvent) -> GenEvent {
    let w = reparse(ev);
    let mut sig = hex::decode(&w.sig).unwrap_or_else(|_| vec![0u8; 64]);
    sig.resize(64, 0);
    // Flipping a bit of s keeps the format valid but breaks the verification equation.
    sig[63] ^= 0x01;
    let sig_hex = hex::encode(sig);
    GenEvent {
        json: wire_json(
            &w.id,
            &w.pubkey,
            w.created_at,
            w.kind,
            &w.tags,
            &w.content,
            &sig_hex,
        ),
        ..ev.clone()
    }
}

/// A copy of `ev` with a wrong id (well-formed hex, no longer the hash of the content; signature unchanged) — for fault injection.
pub fn with_bad_id(ev: &GenEvent) -> GenEvent {
    let w = reparse(ev);
    let mut id = ev.id;
    id[31] ^= 0x01;
    let id_hex = hex::encode(id);
    GenEvent {
        id,
        json: wire_json(
            &id_hex,
            &w.pubkey,
            w.created_at,
            w.kind,
            &w.tags,
            &w.content,
            &w.sig,
        ),
        ..ev.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secp256k1::schnorr::Signature;
    use secp256k1::XOnlyPublicKey;

    fn small() -> GenSpec {
        GenSpec {
            count: 600,
            authors: 7,
            ..GenSpec::default()
        }
    }

    /// Independent check: recompute the id from the parsed JSON and verify the signature.
    fn valid(ev: &GenEvent) -> bool {
        let w: WireIn = serde_json::from_str(&ev.json).unwrap();
        let ser = serde_json::to_string(&(0, &w.pubkey, w.created_at, w.kind, &w.tags, &w.content))
            .unwrap();
        let id: [u8; 32] = Sha256::digest(ser.as_bytes()).into();
        if hex::encode(id) != w.id || id != ev.id {
            return false;
        }
        let mut sig = [0u8; 64];
        hex::decode_to_slice(&w.sig, &mut sig).unwrap();
        let sig = Signature::from_byte_array(sig);
        let mut pk = [0u8; 32];
        hex::decode_to_slice(&w.pubkey, &mut pk).unwrap();
        let pk = XOnlyPublicKey::from_byte_array(pk).unwrap();
        secp256k1::schnorr::verify(&sig, &id, &pk).is_ok()
    }

    #[test]
    fn ids_hash_and_signatures_verify() {
        let evs = generate(&small());
        assert_eq!(evs.len(), 600);
        for ev in &evs {
            assert!(valid(ev), "invalid event {}", ev.json);
        }
        let ids: HashSet<_> = evs.iter().map(|e| e.id).collect();
        assert_eq!(ids.len(), evs.len());
        let pubkeys: HashSet<_> = evs.iter().map(|e| e.pubkey).collect();
        assert_eq!(pubkeys.len(), 7);
    }

    #[test]
    fn nip01_serialization_matches_spec_escapes() {
        let kp = Keypair::from_secret_bytes([7u8; 32]).unwrap();
        let content = "a\"b\\c\nd\re\tf\u{8}g\u{c}h\u{1}i\u{1f}j/é🎉\u{0}";
        let tags = vec![vec!["t".to_string(), "ü\"".to_string()]];
        let ev = sign(&kp, 1_700_000_000, 1, &tags, content);
        let pk = hex::encode(kp.x_only_public_key().0.to_byte_array());
        // Hand-written NIP-01 serialization: the seven short escapes, \u00XX lowercase for other C0, verbatim otherwise.
        let expected = format!(
            "[0,\"{pk}\",1700000000,1,[[\"t\",\"ü\\\"\"]],\"a\\\"b\\\\c\\nd\\re\\tf\\bg\\fh\\u0001i\\u001fj/é🎉\\u0000\"]"
        );
        let id: [u8; 32] = Sha256::digest(expected.as_bytes()).into();
        assert_eq!(ev.id, id);
        assert!(valid(&ev));
    }

    #[test]
    fn generation_is_deterministic_and_seed_dependent() {
        let a = generate(&small());
        let b = generate(&small());
        assert!(a.iter().zip(&b).all(|(x, y)| x.json == y.json));
        let c = generate(&GenSpec { seed: 2, ..small() });
        assert_ne!(a[0].json, c[0].json);
        // The parallel chunking must not change the output: a shorter run is a prefix of a longer one.
        let d = generate(&GenSpec {
            count: 300,
            ..small()
        });
        assert!(d.iter().zip(&a).all(|(x, y)| x.json == y.json));
    }

    #[test]
    fn content_exercises_escaping() {
        let evs = generate(&GenSpec {
            count: 400,
            ..GenSpec::default()
        });
        let all: String = evs.iter().map(|e| e.json.as_str()).collect();
        for needle in [
            "\\n",
            "\\\"",
            "\\\\",
            "\\t",
            "\\u0001",
            "é",
            "🎉",
            "wss://relay.example.com",
            "[\"t\",",
        ] {
            assert!(all.contains(needle), "no {needle:?} in generated events");
        }
        for ev in &evs {
            let w: WireIn = serde_json::from_str(&ev.json).unwrap();
            assert!((20..=400).contains(&w.content.len()));
            if ev.kind == 30023 {
                assert_eq!(w.tags[0][0], "d");
            }
        }
    }

    #[test]
    fn degenerate_spec_still_yields_distinct_events() {
        let evs = generate(&GenSpec {
            count: 50,
            authors: 1,
            kinds: vec![1],
            content_len: (0, 0),
            tags_per_event: (0, 0),
            spread_secs: 1,
            ..GenSpec::default()
        });
        let ids: HashSet<_> = evs.iter().map(|e| e.id).collect();
        assert_eq!(ids.len(), 50);
        assert!(evs.iter().all(valid));
    }

    #[test]
    fn jsonl_round_trips() {
        let evs = generate(&GenSpec {
            count: 100,
            ..small()
        });
        let path = std::env::temp_dir().join(format!("bigbrotr-gen-{}.jsonl", std::process::id()));
        write_jsonl(&path, &evs).unwrap();
        let back = read_jsonl(&path).unwrap();
        std::fs::remove_file(&path).ok();
        assert_eq!(back.len(), evs.len());
        for (a, b) in evs.iter().zip(&back) {
            assert_eq!(
                (a.id, a.pubkey, a.created_at, a.kind, &a.json),
                (b.id, b.pubkey, b.created_at, b.kind, &b.json)
            );
        }
    }

    #[test]
    fn fault_variants_are_well_formed_but_invalid() {
        let ev = &generate(&GenSpec {
            count: 1,
            ..small()
        })[0];
        let bs = with_bad_sig(ev);
        assert_eq!(bs.id, ev.id);
        assert!(parse_event(&bs.json).is_ok());
        assert_ne!(bs.json, ev.json);
        assert!(!valid(&bs));
        let bi = with_bad_id(ev);
        assert_ne!(bi.id, ev.id);
        assert_eq!(parse_event(&bi.json).unwrap().id, bi.id);
        assert!(!valid(&bi));
    }
}
