//! Bounded sets of recently seen 128-bit keys, shared by verify's seen gate (verified
//! (id, sig) pairs), dedupe (event ids) and dedupe's relay hints (URLs sent to the finder).
//! Memory is fixed by the capacity: keys live in two generations per shard, and when the young
//! one fills the old one is dropped.

use std::collections::HashSet;
use std::sync::Mutex;

/// Shards of a set: a lock covers one, so threads rarely meet on the same one.
pub(crate) const SHARDS: usize = 64;

/// Keys per generation per shard for a set of about `capacity` keys, rounded down to what a
/// hash table holds at its maximum load (7/8) of a power-of-two bucket count: 15,625 keys would
/// take 32,768 buckets (half empty), 14,336 fill 16,384. Memory is then fixed by the capacity.
pub(crate) fn keys_per_generation(capacity: usize) -> usize {
    let want = (capacity / SHARDS / 2).max(14);
    let mut buckets = 16usize;
    while buckets * 2 / 8 * 7 <= want {
        buckets *= 2;
    }
    buckets / 8 * 7
}

/// Two generations of keys: when the young one is full it becomes the old one (the old one is
/// dropped) and a young one starts at its final size, so it never reallocates while it fills.
#[derive(Debug, Default)]
pub(crate) struct Generations {
    young: HashSet<u128>,
    old: HashSet<u128>,
}

impl Generations {
    pub(crate) fn contains(&self, key: u128) -> bool {
        self.young.contains(&key) || self.old.contains(&key)
    }

    /// Inserts `key` (at most `per_generation` keys a generation); false if it was present.
    pub(crate) fn insert(&mut self, key: u128, per_generation: usize) -> bool {
        if self.contains(key) {
            return false;
        }
        if self.young.len() >= per_generation {
            self.old = std::mem::replace(&mut self.young, HashSet::with_capacity(per_generation));
        }
        self.young.insert(key)
    }
}

/// A bounded set of 128-bit keys in two generations: when the young one fills, the old one is
/// dropped. Memory is fixed by capacity; recently inserted keys are always found.
#[derive(Debug)]
pub struct SeenSet {
    shards: Vec<Mutex<Generations>>,
    per_shard: usize,
}

impl SeenSet {
    /// A set remembering about `capacity` keys.
    pub fn new(capacity: usize) -> SeenSet {
        SeenSet {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: keys_per_generation(capacity),
        }
    }

    fn shard(&self, key: u128) -> std::sync::MutexGuard<'_, Generations> {
        self.shards[(key as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// True if `key` is present.
    pub fn contains(&self, key: u128) -> bool {
        self.shard(key).contains(key)
    }

    /// Inserts `key`; returns false if it was already present.
    pub fn insert(&self, key: u128) -> bool {
        self.shard(key).insert(key, self.per_shard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_fill_their_tables() {
        use super::keys_per_generation as k;
        assert_eq!(k(2_000_000), 14_336);
        assert_eq!(k(0), 14);
        for cap in [0, 1_000, 65_536, 2_000_000, 10_000_000] {
            let n = k(cap);
            let mut set = std::collections::HashSet::<u128>::with_capacity(n);
            let buckets = set.capacity();
            set.extend(0..n as u128);
            assert_eq!(set.capacity(), buckets, "{cap}: {n} keys grew the table");
            assert!(
                n * 64 * 2 <= cap.max(14 * 128),
                "{cap}: {n} per generation exceeds it"
            );
        }
    }

    #[test]
    fn seen_set_is_bounded_and_remembers_recent() {
        let s = SeenSet::new(SHARDS * 2 * 16);
        for k in 0..100_000u128 {
            s.insert(k);
        }
        assert!(s.contains(99_999));
        assert!(!s.contains(0));
        let total: usize = s
            .shards
            .iter()
            .map(|m| {
                let g = m.lock().expect("lock");
                g.young.len() + g.old.len()
            })
            .sum();
        assert!(total <= SHARDS * 2 * 16);
    }
}
