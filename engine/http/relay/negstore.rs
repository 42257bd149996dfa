//! The relay endpoint's NIP-77 storage: the sorted (created_at, id) items of a reconciliation
//! plus a running sum of the ids every [`BLOCK`] items, so that a range's fingerprint costs one
//! 256-bit subtraction and at most `2 × BLOCK` additions instead of one addition per id.
//!
//! negentropy's own `NegentropyStorageVector` adds up every id of a range on each
//! `fingerprint` call; a server answering a client with small frames is asked for ranges
//! spanning the whole set every round (a split's 16 buckets, the "rest of the set" when a frame
//! fills), which made a 1,000,000-id reconciliation cost ~2 s of additions. Written by hand
//! because negentropy ships no such storage (its fingerprint types are exported by the one-line
//! patch in `vendor/negentropy`).

use negentropy::{Accumulator, Bound, Error, Fingerprint, Id, Item, NegentropyStorageBase};

/// Items between two stored running sums: the memory is `32 / BLOCK` bytes per item (1 byte
/// here) and a fingerprint adds at most `2 × BLOCK` ids at the range's ends.
const BLOCK: usize = 32;

/// A 256-bit little-endian number, as negentropy's accumulator reads an id.
type Sum = [u64; 4];

/// Sealed, sorted items and their running sums.
#[derive(Debug, Default)]
pub struct SummedStorage {
    items: Vec<Item>,
    /// `sums[k]` = the sum of the ids of `items[..k * BLOCK]` (mod 2^256).
    sums: Vec<Sum>,
}

fn lanes(id: &Id) -> Sum {
    let b = id.as_bytes();
    let mut out = [0u64; 4];
    for (i, lane) in out.iter_mut().enumerate() {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[i * 8..i * 8 + 8]);
        *lane = u64::from_le_bytes(w);
    }
    out
}

fn add(a: &mut Sum, b: &Sum) {
    let mut carry = false;
    for (x, y) in a.iter_mut().zip(b) {
        let (s, c1) = x.overflowing_add(*y);
        let (s, c2) = s.overflowing_add(u64::from(carry));
        *x = s;
        carry = c1 | c2;
    }
}

fn sub(a: &Sum, b: &Sum) -> Sum {
    let mut out = [0u64; 4];
    let mut borrow = false;
    for i in 0..4 {
        let (d, b1) = a[i].overflowing_sub(b[i]);
        let (d, b2) = d.overflowing_sub(u64::from(borrow));
        out[i] = d;
        borrow = b1 | b2;
    }
    out
}

impl SummedStorage {
    /// Sorts and dedupes `items` (negentropy's order: created_at, then id) and sums them.
    pub fn new(mut items: Vec<Item>) -> SummedStorage {
        items.sort_unstable();
        items.dedup();
        let mut sums = Vec::with_capacity(items.len() / BLOCK + 1);
        let mut acc: Sum = [0; 4];
        sums.push(acc);
        for chunk in items.chunks(BLOCK) {
            for it in chunk {
                add(&mut acc, &lanes(&it.id));
            }
            if chunk.len() == BLOCK {
                sums.push(acc);
            }
        }
        SummedStorage { items, sums }
    }

    /// The sum of the ids of `items[begin..end]`.
    fn sum(&self, begin: usize, end: usize) -> Sum {
        let mut acc: Sum = [0; 4];
        let (b, e) = (begin.div_ceil(BLOCK), end / BLOCK);
        if b >= e {
            for it in &self.items[begin..end] {
                add(&mut acc, &lanes(&it.id));
            }
            return acc;
        }
        acc = sub(&self.sums[e], &self.sums[b]);
        for it in self.items[begin..b * BLOCK]
            .iter()
            .chain(&self.items[e * BLOCK..end])
        {
            add(&mut acc, &lanes(&it.id));
        }
        acc
    }

    fn check(&self, begin: usize, end: usize) -> Result<(), Error> {
        if begin > end || end > self.items.len() {
            return Err(Error::BadRange);
        }
        Ok(())
    }
}

impl NegentropyStorageBase for SummedStorage {
    fn size(&self) -> Result<usize, Error> {
        Ok(self.items.len())
    }

    fn get_item(&self, i: usize) -> Result<Option<Item>, Error> {
        Ok(self.items.get(i).copied())
    }

    fn iterate(
        &self,
        begin: usize,
        end: usize,
        cb: &mut dyn FnMut(Item, usize) -> Result<bool, Error>,
    ) -> Result<(), Error> {
        self.check(begin, end)?;
        for (i, it) in self.items[begin..end].iter().enumerate() {
            if !cb(*it, begin + i)? {
                break;
            }
        }
        Ok(())
    }

    fn find_lower_bound(&self, first: usize, last: usize, value: &Bound) -> usize {
        let last = last.min(self.items.len());
        let first = first.min(last);
        first + self.items[first..last].partition_point(|it| *it < value.item)
    }

    fn fingerprint(&self, begin: usize, end: usize) -> Result<Fingerprint, Error> {
        self.check(begin, end)?;
        let s = self.sum(begin, end);
        let mut bytes = [0u8; 32];
        for (i, lane) in s.iter().enumerate() {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&lane.to_le_bytes());
        }
        let mut acc = Accumulator::new();
        acc.add(&bytes)?;
        acc.get_fingerprint((end - begin) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use negentropy::{Negentropy, NegentropyStorageVector};

    fn id(n: u64) -> [u8; 32] {
        let mut b = [0u8; 32];
        // Spread bits over all lanes so carries between them are exercised.
        for (i, chunk) in b.chunks_mut(8).enumerate() {
            let v = n
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .rotate_left(i as u32 * 13)
                | (u64::MAX << 60);
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    fn items(n: u64) -> Vec<Item> {
        (0..n)
            .map(|i| Item::with_timestamp_and_id(1_000 + i / 3, Id::from_byte_array(id(i))))
            .collect()
    }

    #[test]
    fn every_range_fingerprint_equals_the_vectors() {
        let its = items(300);
        let ours = SummedStorage::new(its.clone());
        let mut theirs = NegentropyStorageVector::new();
        for it in &its {
            theirs.insert(it.timestamp, it.id).expect("insert");
        }
        theirs.seal().expect("seal");
        for begin in 0..=300 {
            for end in (begin..=300).step_by(7).chain([300]) {
                assert_eq!(
                    *ours.fingerprint(begin, end).expect("ours"),
                    *theirs.fingerprint(begin, end).expect("theirs"),
                    "{begin}..{end}"
                );
            }
        }
        assert!(ours.fingerprint(5, 4).is_err());
        assert!(ours.fingerprint(0, 301).is_err());
        for probe in [0, 999, 1_000, 1_050, 1_099, 1_100, u64::MAX] {
            let b = Bound::with_timestamp(probe);
            assert_eq!(
                ours.find_lower_bound(0, 300, &b),
                theirs.find_lower_bound(0, 300, &b)
            );
        }
    }

    /// A client with 99 % of the server's ids, small frames: the server on SummedStorage finds
    /// exactly the differences, as with the crate's own storage.
    #[test]
    fn reconciles_against_a_vector_client() {
        let all = items(20_000);
        let server = SummedStorage::new(all.clone());
        let mut client = NegentropyStorageVector::new();
        let mut missing = Vec::new();
        for (i, it) in all.iter().enumerate() {
            if i % 100 == 7 {
                missing.push(it.id);
            } else {
                client.insert(it.timestamp, it.id).expect("insert");
            }
        }
        let extra = Id::from_byte_array([7u8; 32]);
        client.insert(5, extra).expect("insert");
        client.seal().expect("seal");
        let mut c = Negentropy::owned(client, 4_096).expect("client");
        let mut s = Negentropy::owned(server, 8_192).expect("server");
        let mut msg = c.initiate().expect("initiate");
        let (mut have, mut need) = (Vec::new(), Vec::new());
        for _ in 0..1_000 {
            let reply = s.reconcile(&msg).expect("server round");
            match c
                .reconcile_with_ids(&reply, &mut have, &mut need)
                .expect("client round")
            {
                Some(next) => msg = next,
                None => break,
            }
        }
        need.sort();
        missing.sort();
        assert_eq!(need, missing);
        assert_eq!(have, vec![extra]);
    }
}
