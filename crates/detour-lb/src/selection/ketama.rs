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
//!
//! # Layout
//!
//! A lookup is bound by cache misses, not by arithmetic, so the ring is laid
//! out for as few of them as possible:
//!
//! - Each point is one `u64`: the top 44 bits of its hash, then the 20-bit
//!   index of its owner. The points sort by position, and the search and the
//!   owner read touch the same cache line. Positions are compared at 44-bit
//!   resolution (the key's hash is truncated the same way), which changes
//!   nothing but the order of points that collide in those bits, and that
//!   order is still fixed by the owners' addresses. The 20 bits cap the ring
//!   at [`MAX_BACKENDS`] owners (see there).
//! - A bucket index maps the top bits of a position to the first point at or
//!   after the bucket's start, with four to eight points a bucket on average:
//!   a lookup reads two adjacent 4-byte index entries, then binary-searches
//!   the few points between them, one or two cache lines, and has its owner.
//! - The ring is capped at 2¹⁹ points by default ([`Ketama::max_points`]):
//!   4 MiB of ring and 256 KiB of index at 10 000 backends. Past a few
//!   megabytes a lookup pays for the ring's size in cache and TLB misses, the
//!   largest cost it has: with 2²⁰ points a lookup took 1.5 to 1.7 times as
//!   long in the crate's benchmark.
//!
//! The previous layout, separate position and owner arrays of up to 2²⁰
//! points (12 MiB), missed the cache in the index and in each array.

use std::sync::Arc;

use crate::Rng;
use detour_core::Backend;

use super::{sweep_rest, Seen, Selection, SEEN_MAX};
use crate::hash::{mix64, write_addr, StableHasher, DOMAIN_RING};
use crate::InvalidConfig;

/// Points walked at most before the walk falls back to the sweep.
const RING_STEPS: usize = 64 * SEEN_MAX;
/// Keeps the sweep's order apart from the ring position.
const SWEEP_SALT: u64 = 0x5851_f42d_4c95_7f2d;
/// The low bits of a ring point that hold its owner's index.
const OWNER_BITS: u32 = 20;
const OWNER_MASK: u64 = (1 << OWNER_BITS) - 1;
/// A bucket of the index holds `2^BUCKET_POINTS_LOG2` to twice as many points
/// on average: four to eight, 32 to 64 bytes, one or two cache lines.
const BUCKET_POINTS_LOG2: u32 = 2;
/// The index never has more than `2^MAX_BUCKET_BITS` buckets (64 MiB).
const MAX_BUCKET_BITS: u32 = 24;

/// The most backends a Ketama ring can hold: 2²⁰ (1 048 576), the owners a
/// ring point's 20 owner bits can name.
///
/// A larger set still works: the first `MAX_BACKENDS` backends by address get
/// points on the ring, the rest are reached only by the sweep that ends a
/// walk (after a refusal), and building the ring logs a warning. Use
/// [`Maglev`](super::Maglev) for sets that large.
pub const MAX_BACKENDS: usize = 1 << OWNER_BITS;

/// The largest accepted [`Ketama::max_points`]: 2²⁶ points (512 MiB of ring).
pub const MAX_RING_POINTS: u32 = 1 << 26;

/// Ketama consistent hashing (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ketama {
    /// Ring points per backend of average weight. Default 160. More points
    /// even out the shares (the spread is about `1/√points`) at the cost of
    /// memory (8 to 9 bytes a point, with the index).
    pub points_per_backend: u32,
    /// Upper bound on the ring's size. Default 2^19 (4 MiB of ring), at most
    /// [`MAX_RING_POINTS`]. A large set gets fewer points per backend rather
    /// than an unbounded ring (but always at least one): above 3 276 backends
    /// of equal weight, fewer than 160 each (52 at 10 000). That keeps a
    /// lookup within reach of the caches and the TLB, as Maglev's table of the
    /// same size is; the price is a wider spread of the shares (about 14 %
    /// at 52 points, against 10 % at 104). A backend's departure still moves
    /// only its own keys.
    pub max_points: u32,
}

impl Default for Ketama {
    fn default() -> Self {
        Ketama {
            points_per_backend: 160,
            max_points: 1 << 19,
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

    /// The ring's points for `backends`, packed (see [`pack`]) and sorted.
    /// Only the first `owners` backends get points.
    fn ring_points(&self, backends: &[Arc<Backend>], owners: usize) -> Vec<u64> {
        let backends = &backends[..backends.len().min(owners)];
        let n = backends.len() as u128;
        let total: u128 = backends.iter().map(|b| u128::from(b.weight())).sum();
        let target = (u128::from(self.points_per_backend.max(1)) * n)
            .min(u128::from(self.max_points.clamp(1, MAX_RING_POINTS)));
        let mut points = Vec::new();
        for (i, b) in backends.iter().enumerate() {
            let count = (target * u128::from(b.weight()) / total.max(1)).max(1) as u32;
            for p in 0..count {
                let mut h = StableHasher::new(DOMAIN_RING);
                write_addr(&mut h, b.addr());
                h.write_u32(p);
                points.push(pack(h.finish(), i));
            }
        }
        points.sort_unstable();
        points
    }
}

/// The ring of a [`Ketama`] set: its points, sorted, each packing a position
/// and an owner (see the [module docs](self#layout)), and the bucket index.
#[derive(Debug)]
pub struct KetamaTable {
    ring: Box<[u64]>,
    /// `index[b]` is the first point whose bucket is ≥ `b` (the ring's length
    /// when there is none), and one more entry holds the ring's length, so a
    /// lookup binary-searches only `index[b]..index[b + 1]`, a few points.
    index: Box<[u32]>,
    shift: u32,
}

impl KetamaTable {
    /// The number of points on the ring.
    pub fn points(&self) -> usize {
        self.ring.len()
    }

    fn new(ring: Vec<u64>) -> Self {
        // Every index entry is a position in the ring or its length: at most
        // MAX_RING_POINTS + MAX_BACKENDS points, far below u32::MAX.
        debug_assert!(u32::try_from(ring.len()).is_ok());
        let bits = ring
            .len()
            .checked_ilog2()
            .unwrap_or(0)
            .saturating_sub(BUCKET_POINTS_LOG2)
            .min(MAX_BUCKET_BITS);
        let shift = 64 - bits;
        let buckets = 1usize << bits;
        let mut index = Vec::with_capacity(buckets + 1);
        let mut pos = 0;
        for b in 0..buckets as u64 {
            while pos < ring.len() && bucket(ring[pos], shift) < b {
                pos += 1;
            }
            index.push(pos as u32);
        }
        index.push(ring.len() as u32);
        KetamaTable {
            ring: ring.into_boxed_slice(),
            index: index.into_boxed_slice(),
            shift,
        }
    }

    /// The position in the ring of the first point at or after `point`
    /// (wrapping to 0 past the last).
    #[inline]
    fn first_at_or_after(&self, point: u64) -> usize {
        // A packed point is at or after the key when its 44 position bits
        // are, whatever its owner bits.
        let probe = point & !OWNER_MASK;
        let b = bucket(point, self.shift) as usize;
        let (lo, hi) = (self.index[b] as usize, self.index[b + 1] as usize);
        // The point sought is in the key's bucket or, past its last point, is
        // the first of the next non-empty bucket: `hi`. `partition_point`
        // searches without branching on the data, which a short scan cannot
        // (its exit is a mispredicted branch on most lookups).
        let pos = lo + self.ring[lo..hi].partition_point(|&p| p < probe);
        if pos == self.ring.len() {
            0
        } else {
            pos
        }
    }
}

impl Selection for Ketama {
    type Table = KetamaTable;

    fn build(&self, backends: &[Arc<Backend>], _rng: &mut Rng) -> KetamaTable {
        if backends.len() > MAX_BACKENDS {
            tracing::warn!(
                backends = backends.len(),
                max = MAX_BACKENDS,
                "ketama ring holds at most {MAX_BACKENDS} backends; the rest are reached only after refusals (use maglev)"
            );
        }
        KetamaTable::new(self.ring_points(backends, MAX_BACKENDS))
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
        let len = table.ring.len();
        if n == 0 || len == 0 {
            return None;
        }
        // Mix the key: callers may pass small integers, which would all land
        // in one arc of the ring.
        let mut pos = table.first_at_or_after(mix64(key));
        let mut seen = Seen::new();
        let want = n.min(SEEN_MAX);
        for _ in 0..len.min(RING_STEPS) {
            if seen.len() >= want {
                break;
            }
            if pos >= len {
                pos = 0;
            }
            let owner = owner(table.ring[pos]);
            // `get`: a table built from another slice names owners beyond
            // this one; skip them rather than panic.
            if let Some(b) = backends.get(owner) {
                if !seen.contains(owner) {
                    seen.push(owner);
                    if let Some(r) = visit(b) {
                        return Some(r);
                    }
                }
            }
            pos += 1;
        }
        sweep_rest(backends, key, SWEEP_SALT, &seen, visit)
    }

    fn hashes_key(&self) -> bool {
        true
    }

    fn validate(&self) -> Result<(), InvalidConfig> {
        if self.points_per_backend == 0 {
            return Err(InvalidConfig::new(
                "ketama.points_per_backend",
                "must be at least 1",
            ));
        }
        if self.max_points == 0 || self.max_points > MAX_RING_POINTS {
            return Err(InvalidConfig::new(
                "ketama.max_points",
                format!("must be between 1 and {MAX_RING_POINTS}"),
            ));
        }
        Ok(())
    }
}

/// A ring point as one word: the top 44 bits of its position, then its
/// owner's index (below [`MAX_BACKENDS`]).
#[inline]
fn pack(position: u64, owner: usize) -> u64 {
    debug_assert!(owner < MAX_BACKENDS);
    (position & !OWNER_MASK) | (owner as u64 & OWNER_MASK)
}

/// The owner's index of a packed ring point.
#[inline]
fn owner(point: u64) -> usize {
    (point & OWNER_MASK) as usize
}

/// The bucket of a ring position: its top `64 - shift` bits.
#[inline]
fn bucket(point: u64, shift: u32) -> u64 {
    point.checked_shr(shift).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: usize) -> Vec<Arc<Backend>> {
        (0..n)
            .map(|i| {
                Arc::new(Backend::new(
                    ([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 80).into(),
                ))
            })
            .collect()
    }

    /// The owner of the first point at or after `key` by a binary search of
    /// the whole ring, with positions compared at 44-bit resolution.
    fn reference_owner(t: &KetamaTable, key: u64) -> usize {
        let probe = mix64(key) & !OWNER_MASK;
        let full = t.ring.partition_point(|&p| p < probe) % t.ring.len();
        owner(t.ring[full])
    }

    #[test]
    fn the_bucket_index_finds_what_a_full_binary_search_finds() {
        for n in [1usize, 2, 7, 100, 3_000] {
            let bs = set(n);
            let t = Ketama::default().build(&bs, &mut Rng::with_seed(0));
            let mut rng = Rng::with_seed(5);
            for _ in 0..5_000 {
                let key = rng.u64();
                let got = Ketama::default().walk(&t, &bs, key, &mut rng, |b| Some(b.addr()));
                assert_eq!(got, Some(bs[reference_owner(&t, key)].addr()), "n={n}");
            }
        }
    }

    #[test]
    fn keys_past_the_last_point_wrap_to_the_first() {
        let bs = set(5);
        let t = Ketama::default().build(&bs, &mut Rng::with_seed(0));
        let last = t.ring[t.ring.len() - 1];
        assert_eq!(t.first_at_or_after(u64::MAX), 0);
        assert_eq!(t.first_at_or_after(last | OWNER_MASK), t.ring.len() - 1);
        assert_eq!(t.first_at_or_after(0), 0);
    }

    #[test]
    fn points_pack_position_and_owner_in_one_sorted_word() {
        let bs = set(50);
        let t = Ketama::default().build(&bs, &mut Rng::with_seed(0));
        assert_eq!(t.points(), 50 * 160);
        assert!(t.ring.windows(2).all(|w| w[0] <= w[1]), "sorted");
        let mut per_owner = vec![0usize; bs.len()];
        for &p in t.ring.iter() {
            per_owner[owner(p)] += 1;
        }
        assert!(per_owner.iter().all(|&c| c == 160), "{per_owner:?}");
        assert_eq!(owner(pack(u64::MAX, MAX_BACKENDS - 1)), MAX_BACKENDS - 1);
        assert_eq!(pack(u64::MAX, 0) >> OWNER_BITS, u64::MAX >> OWNER_BITS);
    }

    #[test]
    fn points_and_keys_follow_the_weights() {
        let weights = [1u32, 2, 3, 4];
        let bs: Vec<Arc<Backend>> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Arc::new(Backend::new(([10, 0, 2, i as u8], 80).into()).with_weight(w)))
            .collect();
        let t = Ketama::default().build(&bs, &mut Rng::with_seed(0));
        let mut points = [0usize; 4];
        for &p in t.ring.iter() {
            points[owner(p)] += 1;
        }
        // 160 points per backend of average weight (2.5): 64 per unit.
        assert_eq!(points, [64, 128, 192, 256]);
        let mut keys = [0f64; 4];
        const KEYS: u64 = 40_000;
        for key in 0..KEYS {
            let got = Ketama::default().walk(&t, &bs, key, &mut Rng::with_seed(0), |b| {
                bs.iter().position(|x| Arc::ptr_eq(x, b))
            });
            keys[got.expect("every key has an owner")] += 1.0;
        }
        for (k, w) in keys.iter().zip(weights) {
            let share = k / KEYS as f64;
            let want = f64::from(w) / 10.0;
            // The spread of a share is about 1/√points: within 25 % here.
            assert!((share - want).abs() < want * 0.25, "{keys:?}");
        }
    }

    #[test]
    fn a_capped_ring_still_moves_only_the_departed_backends_keys() {
        const N: usize = 10_000;
        let all = set(N);
        let gone = 1_234;
        let rest: Vec<Arc<Backend>> = all
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != gone)
            .map(|(_, b)| Arc::clone(b))
            .collect();
        let k = Ketama::default();
        let before = k.build(&all, &mut Rng::with_seed(0));
        let after = k.build(&rest, &mut Rng::with_seed(0));
        // 2^19 points: 52 a backend.
        assert_eq!(before.points(), N * 52);
        // The departed backend's share is its arcs of the ring.
        let mut share = 0f64;
        let mut prev = before.ring[before.ring.len() - 1] & !OWNER_MASK;
        for &p in before.ring.iter() {
            let pos = p & !OWNER_MASK;
            if owner(p) == gone {
                share += pos.wrapping_sub(prev) as f64 / 2f64.powi(64);
            }
            prev = pos;
        }
        let ideal = 1.0 / N as f64;
        assert!(share > ideal * 0.55 && share < ideal * 1.6, "{share}");
        let mut rng = Rng::with_seed(0);
        for key in 0..20_000u64 {
            let a = k.walk(&before, &all, key, &mut rng, |b| Some(b.addr()));
            let b = k.walk(&after, &rest, key, &mut rng, |b| Some(b.addr()));
            assert!(a == b || a == Some(all[gone].addr()), "key {key} moved");
        }
    }

    #[test]
    fn backends_past_the_owner_limit_get_no_points() {
        let bs = set(10);
        let points = Ketama::default().ring_points(&bs, 4);
        assert_eq!(points.len(), 4 * 160);
        assert!(points.iter().all(|&p| owner(p) < 4));
    }

    #[test]
    fn large_sets_are_capped_at_max_points() {
        let bs = set(3_000);
        let t = Ketama::default()
            .with_max_points(1 << 16)
            .build(&bs, &mut Rng::with_seed(0));
        // 21 points each (2^16 / 3000, rounded down).
        assert_eq!(t.points(), 3_000 * 21);
        assert!(Ketama::default().with_max_points(0).validate().is_err());
        assert!(Ketama::default()
            .with_max_points(MAX_RING_POINTS + 1)
            .validate()
            .is_err());
        assert!(Ketama::default()
            .with_max_points(MAX_RING_POINTS)
            .validate()
            .is_ok());
    }
}
