//! Consistent hashing on a Ketama ring.
//!
//! Each backend owns points on a 64-bit ring, as many as its share of the
//! weight (160 per backend of average weight by default, as libketama: Richard
//! Jones, last.fm, 2007; after Karger et al., "Consistent Hashing and Random
//! Trees", STOC 1997). A key goes to the owner of the first point at or after
//! it. When a backend leaves, only the keys it owned move (about 1/N of
//! them), each to the next owner clockwise; the others stay.
//!
//! A refused candidate (tried already, down) moves the walk on clockwise to the
//! next *distinct* owner, so a retry lands on a different backend and the
//! keys of a failed backend spread over several others rather than piling onto
//! one. After eight distinct owners (or 512 points) the
//! walk finishes with a sweep seeded by the key, so it stays deterministic.
//!
//! Points are placed by the crate's stable hash of the backend's address and
//! the point's number, so every proxy builds the same ring.

use std::sync::Arc;

use crate::Rng;
use detour_core::Backend;

use super::{sweep_rest, Seen, Selection, SEEN_MAX};
use crate::hash::{mix64, write_addr, StableHasher, DOMAIN_RING};
use crate::ConfigError;

/// Points walked at most before the walk falls back to the sweep.
const RING_STEPS: usize = 64 * SEEN_MAX;
/// Keeps the sweep's order apart from the ring position.
const SWEEP_SALT: u64 = 0x5851_f42d_4c95_7f2d;

/// Ketama consistent hashing (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ketama {
    /// Ring points per backend of average weight. Default 160. More points
    /// even out the shares (the spread is about `1/√points`) at the cost of
    /// memory (12 bytes a point) and a slightly longer binary search.
    pub points_per_backend: u32,
    /// Upper bound on the ring's size. Default 2^20. A large set gets fewer
    /// points per backend rather than an unbounded ring.
    pub max_points: u32,
}

impl Default for Ketama {
    fn default() -> Self {
        Ketama {
            points_per_backend: 160,
            max_points: 1 << 20,
        }
    }
}

impl Ketama {
    /// Set the ring points per backend of average weight.
    pub fn with_points_per_backend(mut self, points: u32) -> Self {
        self.points_per_backend = points;
        self
    }

    /// Set the upper bound on the ring's size.
    pub fn with_max_points(mut self, points: u32) -> Self {
        self.max_points = points;
        self
    }
}

/// The ring of a [`Ketama`] set: point hashes, sorted, and their owners.
#[derive(Debug)]
pub struct KetamaTable {
    hashes: Box<[u64]>,
    owners: Box<[u32]>,
    /// `index[b]` is the first point whose top `bits` bits are ≥ `b`, so a
    /// lookup binary-searches only its bucket (about four points) instead of
    /// the whole ring: two cache misses instead of twenty on a large ring.
    index: Box<[u32]>,
    shift: u32,
}

impl KetamaTable {
    /// The number of points on the ring.
    pub fn points(&self) -> usize {
        self.hashes.len()
    }
}

impl Selection for Ketama {
    type Table = KetamaTable;

    fn build(&self, backends: &[Arc<Backend>], _rng: &mut Rng) -> KetamaTable {
        let n = backends.len() as u128;
        let total: u128 = backends.iter().map(|b| u128::from(b.weight())).sum();
        let target = (u128::from(self.points_per_backend.max(1)) * n)
            .min(u128::from(self.max_points.max(1)));
        let mut points: Vec<(u64, u32)> = Vec::new();
        for (i, b) in backends.iter().enumerate() {
            let count = (target * u128::from(b.weight()) / total.max(1)).max(1) as u32;
            for p in 0..count {
                let mut h = StableHasher::new(DOMAIN_RING);
                write_addr(&mut h, b.addr());
                h.write_u32(p);
                points.push((h.finish(), i as u32));
            }
        }
        points.sort_unstable();
        let (hashes, owners): (Vec<u64>, Vec<u32>) = points.into_iter().unzip();
        // About four points a bucket.
        let bits = (usize::BITS - hashes.len().leading_zeros())
            .saturating_sub(3)
            .min(22);
        let shift = 64 - bits;
        let buckets = 1usize << bits;
        let mut index = Vec::with_capacity(buckets + 1);
        let mut pos = 0;
        for b in 0..buckets as u64 {
            while pos < hashes.len() && bucket(hashes[pos], shift) < b {
                pos += 1;
            }
            index.push(pos as u32);
        }
        index.push(hashes.len() as u32);
        KetamaTable {
            hashes: hashes.into_boxed_slice(),
            owners: owners.into_boxed_slice(),
            index: index.into_boxed_slice(),
            shift,
        }
    }

    #[inline]
    fn walk<'a, R>(
        &self,
        table: &KetamaTable,
        backends: &'a [Arc<Backend>],
        key: u64,
        _rng: &mut Rng,
        mut visit: impl FnMut(&'a Arc<Backend>) -> Option<R>,
    ) -> Option<R> {
        let n = backends.len();
        let len = table.hashes.len();
        if n == 0 || len == 0 {
            return None;
        }
        // Mix the key: callers may pass small integers, which would all land
        // in one arc of the ring.
        let point = mix64(key);
        let b = bucket(point, table.shift) as usize;
        let (lo, hi) = (table.index[b] as usize, table.index[b + 1] as usize);
        let mut pos = lo + table.hashes[lo..hi].partition_point(|&h| h < point);
        let mut seen = Seen::new();
        let want = n.min(SEEN_MAX);
        for _ in 0..len.min(RING_STEPS) {
            if seen.len() >= want {
                break;
            }
            if pos >= len {
                pos = 0;
            }
            let owner = table.owners[pos] as usize % n;
            if !seen.contains(owner) {
                seen.push(owner);
                if let Some(r) = visit(&backends[owner]) {
                    return Some(r);
                }
            }
            pos += 1;
        }
        sweep_rest(backends, key, SWEEP_SALT, &seen, visit)
    }

    fn hashes_key(&self) -> bool {
        true
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.points_per_backend == 0 {
            return Err(ConfigError::new(
                "ketama.points_per_backend",
                "must be at least 1",
            ));
        }
        if self.max_points == 0 {
            return Err(ConfigError::new("ketama.max_points", "must be at least 1"));
        }
        Ok(())
    }
}

/// The bucket of a ring position: its top `64 - shift` bits.
#[inline]
fn bucket(point: u64, shift: u32) -> u64 {
    point.checked_shr(shift).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_index_finds_what_a_full_binary_search_finds() {
        for n in [1usize, 2, 7, 100] {
            let bs: Vec<Arc<Backend>> = (0..n)
                .map(|i| Arc::new(Backend::new(([10, 0, 0, i as u8], 80).into())))
                .collect();
            let t = Ketama::default().build(&bs, &mut Rng::with_seed(0));
            let mut rng = Rng::with_seed(5);
            for _ in 0..5_000 {
                let key = rng.u64();
                let point = mix64(key);
                let full = t.hashes.partition_point(|&h| h < point) % t.hashes.len();
                let got = Ketama::default().walk(&t, &bs, key, &mut rng, |b| Some(b.addr()));
                assert_eq!(got, Some(bs[t.owners[full] as usize].addr()), "n={n}");
            }
        }
    }
}
