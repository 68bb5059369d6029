//! Maglev consistent hashing.
//!
//! Google's Maglev (D. E. Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016, §3.4): every backend walks its
//! own permutation of a lookup table of prime size M, and the backends take
//! turns claiming the next free slot of their permutation until the table is
//! full. A key is one table lookup, O(1), and the shares are even to within
//! about N/M. When a backend leaves, its slots go to others and only a few
//! other slots change hands, so about 1/N of the keys move.
//!
//! Weights follow the usual extension of the paper: a backend of weight `w`
//! takes a turn in round `r` only while it has claimed fewer than
//! `r × w / w_max` slots. Turns are ordered with a heap, so building costs
//! O(M log N) whatever the weights.
//!
//! A refused candidate is followed by lookups of the rehashed key (up to 16),
//! then by a sweep seeded by the key, so a retry goes to a different backend
//! and the walk stays deterministic for a key.
//!
//! The table size defaults to the smallest prime at or above
//! `max(65 537, 100 × N)` (the paper's M ≫ N), capped near 2^21 slots
//! (8 MiB); [`Maglev::table_size`] sets it, and must then be a prime.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use crate::Rng;
use detour_core::Backend;

use super::{scale, sweep_rest, Seen, Selection, SEEN_MAX};
use crate::hash::{mix64, write_addr, StableHasher, DOMAIN_MAGLEV_OFFSET, DOMAIN_MAGLEV_SKIP};
use crate::InvalidConfig;

/// The smallest default table (a prime, 2^16 + 1).
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;
/// Automatic sizes stop growing here.
const AUTO_CAP: u64 = 1 << 21;
/// Rehashed lookups before the sweep.
const REHASHES: usize = 2 * SEEN_MAX;
const SWEEP_SALT: u64 = 0x2545_f491_4f6c_dd1d;

/// Maglev consistent hashing (see the [module docs](self)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Maglev {
    /// The lookup table's size: a prime above the number of backends. `None`
    /// (the default) sizes it from the set (see the [module docs](self)).
    pub table_size: Option<u32>,
}

/// The lookup table of a [`Maglev`] set.
#[derive(Debug)]
pub struct MaglevTable {
    entry: Box<[u32]>,
}

impl MaglevTable {
    /// The table's size (a prime).
    pub fn size(&self) -> usize {
        self.entry.len()
    }
}

impl Maglev {
    /// A fixed table size (must be a prime above the number of backends).
    pub fn with_table_size(table_size: u32) -> Self {
        Maglev {
            table_size: Some(table_size),
        }
    }

    fn size_for(&self, n: usize) -> u64 {
        let n = n as u64;
        let auto = || {
            next_prime(
                n.saturating_mul(100)
                    .clamp(u64::from(DEFAULT_TABLE_SIZE), AUTO_CAP)
                    .max(n),
            )
        };
        match self.table_size {
            // A prime size is what makes every permutation visit every slot,
            // so that filling the table ends.
            Some(m) if u64::from(m) >= n && is_prime(u64::from(m)) => u64::from(m),
            Some(m) => {
                tracing::warn!(
                    table_size = m,
                    backends = n,
                    "maglev table size is not a prime above the backend count; sizing it automatically"
                );
                auto()
            }
            None => auto(),
        }
    }
}

impl Selection for Maglev {
    type Table = MaglevTable;

    fn build(&self, backends: &[Arc<Backend>], _rng: &mut Rng) -> MaglevTable {
        let n = backends.len();
        let m = self.size_for(n);
        let mut entry = vec![u32::MAX; m as usize];
        if n == 0 {
            return MaglevTable {
                entry: entry.into_boxed_slice(),
            };
        }
        let perm: Vec<(u64, u64)> = backends
            .iter()
            .map(|b| {
                let mut o = StableHasher::new(DOMAIN_MAGLEV_OFFSET);
                write_addr(&mut o, b.addr());
                let mut s = StableHasher::new(DOMAIN_MAGLEV_SKIP);
                write_addr(&mut s, b.addr());
                (o.finish() % m, s.finish() % (m - 1) + 1)
            })
            .collect();
        let wmax = backends
            .iter()
            .map(|b| u64::from(b.weight()))
            .max()
            .unwrap_or(1)
            .max(1);
        let mut next = vec![0u64; n];
        let mut count = vec![0u64; n];
        // (round in which the backend may take its next slot, its index).
        let mut turns: BinaryHeap<Reverse<(u64, u32)>> =
            (0..n as u32).map(|i| Reverse((1, i))).collect();
        let mut filled = 0u64;
        while filled < m {
            let Some(Reverse((round, i))) = turns.pop() else {
                break;
            };
            let i = i as usize;
            let (offset, skip) = perm[i];
            // A full permutation of 0..m (m prime, skip in 1..m): a free slot
            // turns up within m steps while any is left.
            loop {
                let c = ((u128::from(offset) + u128::from(next[i]) * u128::from(skip))
                    % u128::from(m)) as usize;
                next[i] += 1;
                if entry[c] == u32::MAX {
                    entry[c] = i as u32;
                    break;
                }
            }
            filled += 1;
            count[i] += 1;
            let w = u64::from(backends[i].weight()).max(1);
            let eligible = (u128::from(count[i]) * u128::from(wmax) / u128::from(w)) as u64 + 1;
            turns.push(Reverse((eligible.max(round + 1), i as u32)));
        }
        MaglevTable {
            entry: entry.into_boxed_slice(),
        }
    }

    #[inline]
    fn walk<'a, R>(
        &self,
        table: &MaglevTable,
        backends: &'a [Arc<Backend>],
        key: u64,
        _rng: &mut Rng,
        mut visit: impl FnMut(&'a Arc<Backend>) -> Option<R>,
    ) -> Option<R> {
        let n = backends.len();
        let m = table.entry.len();
        if n == 0 || m == 0 {
            return None;
        }
        let mut h = mix64(key);
        let mut seen = Seen::new();
        let want = n.min(SEEN_MAX);
        for j in 0..REHASHES {
            if seen.len() >= want {
                break;
            }
            let owner = table.entry[scale(h >> 32, m)] as usize % n;
            if !seen.contains(owner) {
                seen.push(owner);
                if let Some(r) = visit(&backends[owner]) {
                    return Some(r);
                }
            }
            h = mix64(h ^ (j as u64 + 1));
        }
        sweep_rest(backends, key, SWEEP_SALT, &seen, visit)
    }

    fn hashes_key(&self) -> bool {
        true
    }

    fn validate(&self) -> Result<(), InvalidConfig> {
        match self.table_size {
            Some(m) if m < 3 || !is_prime(u64::from(m)) => Err(InvalidConfig::new(
                "maglev.table_size",
                format!(
                    "{m} is not a prime (try {})",
                    next_prime(u64::from(m).max(3))
                ),
            )),
            _ => Ok(()),
        }
    }
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

fn next_prime(mut n: u64) -> u64 {
    n = n.max(2);
    while !is_prime(n) {
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(weights: &[u32]) -> Vec<Arc<Backend>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Arc::new(Backend::new(([10, 0, 1, i as u8], 80).into()).with_weight(w)))
            .collect()
    }

    #[test]
    fn the_table_is_full_and_shared_by_weight() {
        let bs = set(&[1, 1, 2]);
        let t = Maglev::default().build(&bs, &mut Rng::with_seed(0));
        assert_eq!(t.size(), 65_537);
        let mut counts = [0usize; 3];
        for &e in t.entry.iter() {
            counts[e as usize] += 1;
        }
        let m = t.size() as f64;
        for (c, share) in counts.iter().zip([0.25, 0.25, 0.5]) {
            assert!((*c as f64 / m - share).abs() < 0.01, "{counts:?}");
        }
    }

    #[test]
    fn table_sizes_must_be_prime() {
        assert!(Maglev::with_table_size(65_536).validate().is_err());
        assert_eq!(
            Maglev::with_table_size(65_536).size_for(3),
            65_537,
            "never a non-prime table"
        );
        assert!(Maglev::with_table_size(65_537).validate().is_ok());
        assert_eq!(next_prime(100 * 1000), 100_003);
        assert_eq!(Maglev::default().size_for(10_000), next_prime(1_000_000));
    }
}
