//! verify: recompute the id, skip what was already verified, check the signature.
//!
//! Runs on OS threads pinned to cores (schnorr verification is ~85 % of an event's CPU cost
//! and must not share a core with the async runtime's scheduling). Input and output are
//! bounded flume channels used in blocking mode.

use crate::model::{stats::inc, Event, RawEvent, Reason, Relay, Verified};
use crate::seen::{keys_per_generation, Generations, SHARDS};
use secp256k1::{schnorr::Signature, XOnlyPublicKey};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Verify pool settings.
#[derive(Debug, Clone)]
pub struct VerifyConfig {
    /// Worker threads (0 = one per core).
    pub threads: usize,
    /// Pin each worker to a core.
    pub pin_cores: bool,
    /// How many verified (id, sig) pairs to remember (16 bytes each, two generations).
    pub seen_capacity: usize,
    /// Parsed author keys cached per thread.
    pub pubkey_cache: usize,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            threads: 0,
            pin_cores: true,
            seen_capacity: 4_000_000,
            pubkey_cache: 65_536,
        }
    }
}

/// Pool-wide counters.
#[derive(Debug, Default)]
pub struct VerifyStats {
    /// Signatures checked.
    pub verified: AtomicU64,
    /// Signatures skipped: the same (id, sig) was verified before.
    pub skipped: AtomicU64,
    /// Events rejected (bad id or bad signature).
    pub rejected: AtomicU64,
    /// Nanoseconds spent working (not waiting), summed over threads.
    pub busy_ns: AtomicU64,
}

/// The (id, sig) key of the seen gate, keyed with a per-process random seed so a relay cannot
/// aim collisions at it. Including the signature means a copy with a forged signature is
/// verified (and rejected) rather than waved through on its id alone.
pub fn seen_key(seed: u64, ev: &Event) -> u128 {
    let mut buf = [0u8; 96];
    buf[..32].copy_from_slice(&ev.id);
    buf[32..].copy_from_slice(&ev.sig);
    xxhash_rust::xxh3::xxh3_128_with_seed(&buf, seed)
}

/// Outcome of checking one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Signature verified now.
    Verified,
    /// Already verified earlier; skipped.
    Skipped,
    /// Rejected for this reason.
    Rejected(Reason),
}

#[derive(Debug, Default)]
struct GateShard {
    /// Keys verified.
    verified: Generations,
    /// Keys being verified right now, with the copies that arrived meanwhile.
    inflight: HashMap<u128, Vec<RawEvent>>,
}

/// What the gate says about an event whose id checked out.
pub enum Admit {
    /// Verified before: skip the signature.
    Seen(RawEvent),
    /// Nobody verified it yet: verify it, then call [`Gate::finish`].
    Verify(RawEvent),
    /// Another thread is verifying the same (id, sig) now: the event waits for that result.
    Parked,
}

/// The seen gate shared by the verify threads: remembers verified (id, sig) keys (bounded, two
/// generations) and parks copies that arrive while the same key is being verified, so a
/// signature is never checked twice even when two threads get copies at the same moment. A
/// copy has the same key, hence the same verification result, as the one being checked.
#[derive(Debug)]
pub struct Gate {
    shards: Vec<Mutex<GateShard>>,
    per_shard: usize,
}

impl Gate {
    /// A gate remembering about `capacity` verified keys.
    pub fn new(capacity: usize) -> Gate {
        Gate {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(GateShard::default()))
                .collect(),
            per_shard: keys_per_generation(capacity),
        }
    }

    fn shard(&self, key: u128) -> std::sync::MutexGuard<'_, GateShard> {
        self.shards[(key as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// True if `key` was verified.
    pub fn is_verified(&self, key: u128) -> bool {
        self.shard(key).verified.contains(key)
    }

    /// Decides what to do with `raw`, whose id has been recomputed and matches.
    pub fn admit(&self, key: u128, raw: RawEvent) -> Admit {
        let mut g = self.shard(key);
        if g.verified.contains(key) {
            return Admit::Seen(raw);
        }
        if let Some(waiting) = g.inflight.get_mut(&key) {
            waiting.push(raw);
            return Admit::Parked;
        }
        g.inflight.insert(key, Vec::new());
        Admit::Verify(raw)
    }

    /// Records the result for `key` and hands back the copies that waited for it.
    pub fn finish(&self, key: u128, ok: bool) -> Vec<RawEvent> {
        let mut g = self.shard(key);
        let waiting = g.inflight.remove(&key).unwrap_or_default();
        if ok {
            g.verified.insert(key, self.per_shard);
        }
        waiting
    }
}

/// Per-thread verifier state: scratch buffer and author key cache.
pub struct Verifier {
    gate: Arc<Gate>,
    seed: u64,
    buf: Vec<u8>,
    keys: HashMap<[u8; 32], Option<XOnlyPublicKey>>,
    key_cap: usize,
}

impl Verifier {
    /// A verifier sharing `gate` with its siblings.
    pub fn new(gate: Arc<Gate>, seed: u64, key_cap: usize) -> Verifier {
        Verifier {
            gate,
            seed,
            buf: Vec::with_capacity(4096),
            keys: HashMap::new(),
            key_cap: key_cap.max(1),
        }
    }

    /// Recomputes the id; on success returns the gate key.
    pub fn check_id(&mut self, ev: &Event) -> Result<u128, Reason> {
        if ev.compute_id(&mut self.buf) != ev.id {
            return Err(Reason::BadId);
        }
        Ok(seen_key(self.seed, ev))
    }

    /// Verifies the signature (author keys cached).
    pub fn check_sig(&mut self, ev: &Event) -> bool {
        if self.keys.len() >= self.key_cap {
            self.keys.clear();
        }
        let pk = *self
            .keys
            .entry(ev.pubkey)
            .or_insert_with(|| XOnlyPublicKey::from_byte_array(ev.pubkey).ok());
        let Some(pk) = pk else { return false };
        let sig = Signature::from_byte_array(ev.sig);
        secp256k1::schnorr::verify(&sig, &ev.id, &pk).is_ok()
    }

    /// Whole check of one event outside the pool (benches, tools): id, gate, signature.
    pub fn check(&mut self, ev: &Event) -> Check {
        let key = match self.check_id(ev) {
            Ok(k) => k,
            Err(r) => return Check::Rejected(r),
        };
        if self.gate.is_verified(key) {
            return Check::Skipped;
        }
        if !self.check_sig(ev) {
            return Check::Rejected(Reason::BadSig);
        }
        self.gate
            .shard(key)
            .verified
            .insert(key, self.gate.per_shard);
        Check::Verified
    }
}

/// Handles to a running verify pool.
pub struct VerifyPool {
    /// Worker threads; they exit when the input channel closes.
    pub threads: Vec<std::thread::JoinHandle<()>>,
    /// Pool counters.
    pub stats: Arc<VerifyStats>,
}

struct Worker {
    verifier: Verifier,
    gate: Arc<Gate>,
    stats: Arc<VerifyStats>,
    output: flume::Sender<Vec<Verified>>,
    out: Vec<Verified>,
    cursor_tx: flume::Sender<Relay>,
}

impl Worker {
    fn pass(&mut self, raw: RawEvent, verified_now: bool) {
        let relay = &raw.ticket.relay;
        if verified_now {
            inc(&self.stats.verified);
            inc(&relay.stats.verified);
        } else {
            inc(&self.stats.skipped);
            inc(&relay.stats.verify_skipped);
        }
        self.out.push(Verified {
            event: raw.event,
            ticket: raw.ticket,
            seen_at: raw.seen_at,
        });
    }

    /// Sends what the last chunk produced; false when the output is gone.
    fn flush(&mut self) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let chunk = std::mem::replace(&mut self.out, Vec::with_capacity(crate::model::CHUNK));
        self.output.send(chunk).is_ok()
    }

    fn reject(&self, raw: RawEvent, reason: Reason) {
        let relay = &raw.ticket.relay;
        inc(&self.stats.rejected);
        relay.stats.reject(reason);
        tracing::debug!(relay = %relay.url, reason = reason.as_str(), id = %hex::encode(raw.event.id), "rejected event");
        if raw.ticket.complete() {
            let _ = self.cursor_tx.send(raw.ticket.relay.clone());
        }
    }

    /// Handles one event (its output is collected for [`Worker::flush`]).
    fn handle(&mut self, raw: RawEvent) {
        let key = match self.verifier.check_id(&raw.event) {
            Ok(k) => k,
            Err(r) => {
                self.reject(raw, r);
                return;
            }
        };
        match self.gate.admit(key, raw) {
            Admit::Seen(raw) => self.pass(raw, false),
            Admit::Parked => {}
            Admit::Verify(raw) => {
                let ok = self.verifier.check_sig(&raw.event);
                let waiting = self.gate.finish(key, ok);
                if ok {
                    self.pass(raw, true);
                    for w in waiting {
                        self.pass(w, false);
                    }
                } else {
                    self.reject(raw, Reason::BadSig);
                    for w in waiting {
                        self.reject(w, Reason::BadSig);
                    }
                }
            }
        }
    }
}

/// Starts the pool: `RawEvent`s in, `Verified` out. A rejected event completes its ticket here
/// (it will never reach the sink); if that moves the relay's cursor, the relay is sent on
/// `cursor_tx` so the sink persists it.
pub fn spawn(
    cfg: &VerifyConfig,
    input: flume::Receiver<Vec<RawEvent>>,
    output: flume::Sender<Vec<Verified>>,
    cursor_tx: flume::Sender<Relay>,
) -> VerifyPool {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let n = if cfg.threads == 0 {
        cores.len().max(1)
    } else {
        cfg.threads
    };
    let gate = Arc::new(Gate::new(cfg.seen_capacity));
    let seed: u64 = rand::random();
    let stats = Arc::new(VerifyStats::default());
    let threads = (0..n)
        .map(|i| {
            let input = input.clone();
            let core = if cfg.pin_cores && !cores.is_empty() {
                Some(cores[i % cores.len()])
            } else {
                None
            };
            let mut worker = Worker {
                verifier: Verifier::new(gate.clone(), seed, cfg.pubkey_cache),
                gate: gate.clone(),
                stats: stats.clone(),
                output: output.clone(),
                out: Vec::with_capacity(crate::model::CHUNK),
                cursor_tx: cursor_tx.clone(),
            };
            std::thread::Builder::new()
                .name(format!("verify-{i}"))
                .spawn(move || {
                    if let Some(c) = core {
                        core_affinity::set_for_current(c);
                    }
                    while let Ok(chunk) = input.recv() {
                        let t = Instant::now();
                        for raw in chunk {
                            worker.handle(raw);
                        }
                        worker
                            .stats
                            .busy_ns
                            .fetch_add(t.elapsed().as_nanos() as u64, Relaxed);
                        if !worker.flush() {
                            break;
                        }
                    }
                })
                .unwrap_or_else(|e| panic!("cannot spawn verify thread: {e}"))
        })
        .collect();
    VerifyPool { threads, stats }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bip340_official_vectors() {
        let csv = include_str!("testdata/bip340-vectors.csv");
        let mut n = 0;
        for line in csv.lines().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            let pk: [u8; 32] = hex::decode(f[2]).expect("hex").try_into().expect("32");
            let msg = hex::decode(f[4]).expect("hex");
            let sig: [u8; 64] = hex::decode(f[5]).expect("hex").try_into().expect("64");
            let expected = f[6] == "TRUE";
            let ok = XOnlyPublicKey::from_byte_array(pk)
                .map(|pk| {
                    secp256k1::schnorr::verify(&Signature::from_byte_array(sig), &msg, &pk).is_ok()
                })
                .unwrap_or(false);
            assert_eq!(ok, expected, "vector {}", f[0]);
            if !f[1].is_empty() {
                let kp = secp256k1::Keypair::from_secret_bytes(
                    hex::decode(f[1]).expect("hex").try_into().expect("32"),
                )
                .expect("key");
                let aux: [u8; 32] = hex::decode(f[3]).expect("hex").try_into().expect("32");
                let s = secp256k1::schnorr::sign_with_aux_rand(&msg, &kp, &aux);
                assert_eq!(s.to_byte_array(), sig, "signing vector {}", f[0]);
            }
            n += 1;
        }
        assert_eq!(n, 19);
    }

    fn raw(ev: &Event) -> RawEvent {
        use crate::model::{CursorState, RelayCtx, RelayUrl, Ticket};
        let relay = RelayCtx::new(
            RelayUrl::parse("ws://127.0.0.1:1", true).expect("url"),
            CursorState::default(),
        );
        RawEvent {
            event: ev.clone(),
            ticket: Ticket { relay, epoch: 0 },
            seen_at: 0,
        }
    }

    #[test]
    fn gate_parks_copies_while_one_is_verified() {
        let ev = Event::parse_json(include_bytes!("testdata/event.json")).expect("event");
        let gate = Gate::new(1024);
        let key = 42u128;
        assert!(matches!(gate.admit(key, raw(&ev)), Admit::Verify(_)));
        assert!(matches!(gate.admit(key, raw(&ev)), Admit::Parked));
        assert!(matches!(gate.admit(key, raw(&ev)), Admit::Parked));
        assert_eq!(gate.finish(key, true).len(), 2, "both copies handed back");
        assert!(matches!(gate.admit(key, raw(&ev)), Admit::Seen(_)));
        // A failed key is not remembered: a later copy is verified (and fails) again.
        assert!(matches!(gate.admit(7, raw(&ev)), Admit::Verify(_)));
        assert_eq!(gate.finish(7, false).len(), 0);
        assert!(matches!(gate.admit(7, raw(&ev)), Admit::Verify(_)));
    }
}
