//! Selection algorithms: which backend of a set to try first, and which next
//! when the caller refuses it.
//!
//! Every algorithm implements [`Selection`]: it builds a per-set table once,
//! when the backend set changes, and then [walks](Selection::walk) unique
//! candidates out of it without allocating or locking. The walk is how
//! "not a peer I already tried", "healthy" and "breaker closed" combine with
//! any algorithm: the caller's closure refuses a candidate and the walk moves
//! on, visiting each backend at most once.
//!
//! | algorithm | type | first pick | after a refusal |
//! |---|---|---|---|
//! | smooth weighted round robin | [`RoundRobin`] | next slot of a precomputed cycle, O(1) | a pseudo-random sweep |
//! | weighted random | [`WeightedRandom`] | alias table, O(1) | a pseudo-random sweep |
//! | least request, P2C | [`LeastRequest`] | less loaded of two weighted draws | the other draw, then a sweep |
//! | peak EWMA, P2C | [`PeakEwma`] | lower latency × load of two draws | the other draw, then a sweep |
//! | Ketama ring | [`Ketama`] | bucket index, then a search of a few points, O(1) expected | next distinct owners clockwise, then a sweep |
//! | Maglev | [`Maglev`] | one table lookup, O(1) | rehashed lookups, then a sweep |
//!
//! The "sweep" visits the remaining backends in the order
//! `start, start + s, start + 2s, …` modulo N with `s` coprime to N: every
//! backend exactly once, no memory to remember which were seen.
//!
//! [`Algorithm`] picks one of these at run time (from a config file).

mod algorithm;
pub mod ketama;
pub mod least_request;
pub mod maglev;
pub mod peak_ewma;
pub mod random;
pub mod round_robin;

use std::sync::Arc;

use crate::Rng;
use detour_core::Backend;

use crate::InvalidConfig;

pub use algorithm::{Algorithm, AlgorithmTable};
pub use ketama::{Ketama, KetamaTable};
pub use least_request::{LeastRequest, LeastRequestTable};
pub use maglev::{Maglev, MaglevTable};
pub use peak_ewma::{PeakEwma, PeakEwmaTable};
pub use random::{WeightedRandom, WeightedRandomTable};
pub use round_robin::{RoundRobin, RoundRobinTable};

/// A selection algorithm.
///
/// [`build`](Self::build) runs when the backend set changes (it may allocate
/// and take its time); [`walk`](Self::walk) runs on every request and must not
/// allocate, lock or do more than O(N) work.
pub trait Selection: Send + Sync + 'static {
    /// What the algorithm precomputes for one backend set (a ring, a table, a
    /// cursor). Shared by every thread that selects from the set.
    type Table: Send + Sync + 'static;

    /// Precompute the table for `backends`. The load balancer passes only
    /// backends of weight > 0, sorted by address, never an empty slice.
    fn build(&self, backends: &[Arc<Backend>], rng: &mut Rng) -> Self::Table;

    /// Offer candidates from `backends` (the slice `table` was built from) to
    /// `visit`, best first, until it returns `Some`; return that. Each backend
    /// is offered at most once, so the walk ends after at most
    /// `backends.len()` offers. `key` is the request's hash key (ignored by
    /// algorithms that do not [hash](Self::hashes_key)).
    fn walk<'a, R>(
        &self,
        table: &Self::Table,
        backends: &'a [Arc<Backend>],
        key: u64,
        rng: &mut Rng,
        visit: impl FnMut(&'a Arc<Backend>) -> Option<R>,
    ) -> Option<R>;

    /// Whether the first pick depends only on the key (consistent hashing).
    /// Such an algorithm also gets its failover tier chosen from the key, so a
    /// key keeps its backend while the health of the tiers is steady.
    fn hashes_key(&self) -> bool {
        false
    }

    /// Reject nonsense parameters.
    ///
    /// # Errors
    /// A [`InvalidConfig`] naming the parameter.
    fn validate(&self) -> Result<(), InvalidConfig> {
        Ok(())
    }
}

/// Up to this many candidates of a hashing walk are remembered, so the sweep
/// that follows does not offer them twice.
pub(crate) const SEEN_MAX: usize = 8;

/// A tiny on-stack set of backend indices already offered.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seen {
    idx: [u32; SEEN_MAX],
    len: usize,
}

impl Seen {
    pub(crate) const fn new() -> Self {
        Seen {
            idx: [0; SEEN_MAX],
            len: 0,
        }
    }

    #[inline]
    pub(crate) fn contains(&self, i: usize) -> bool {
        self.idx[..self.len].iter().any(|&s| s as usize == i)
    }

    /// Remember `i`; returns false when full (the caller stops collecting).
    #[inline]
    pub(crate) fn push(&mut self, i: usize) -> bool {
        if self.len == SEEN_MAX {
            return false;
        }
        self.idx[self.len] = i as u32;
        self.len += 1;
        true
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// Offer every index of `backends` not in `seen`, in the order `start`,
/// `start + stride`, … (mod N). `stride` must be coprime to N and below it
/// (or 1), which makes the sequence visit each index exactly once.
#[inline]
pub(crate) fn sweep<'a, R>(
    backends: &'a [Arc<Backend>],
    start: usize,
    stride: usize,
    seen: &Seen,
    mut visit: impl FnMut(&'a Arc<Backend>) -> Option<R>,
) -> Option<R> {
    let n = backends.len();
    if n == 0 {
        return None;
    }
    let mut i = start % n;
    for _ in 0..n {
        if !seen.contains(i) {
            if let Some(r) = visit(&backends[i]) {
                return Some(r);
            }
        }
        i += stride;
        if i >= n {
            i -= n;
        }
    }
    None
}

/// The end of a consistent-hash walk: when the ring or table offered fewer
/// than all backends, sweep the rest in an order derived from `key` (salted
/// per algorithm), so a retry still reaches every backend, deterministically.
#[inline]
pub(crate) fn sweep_rest<'a, R>(
    backends: &'a [Arc<Backend>],
    key: u64,
    salt: u64,
    seen: &Seen,
    visit: impl FnMut(&'a Arc<Backend>) -> Option<R>,
) -> Option<R> {
    let n = backends.len();
    if seen.len() >= n {
        return None;
    }
    let h = crate::hash::mix64(key ^ salt);
    sweep(
        backends,
        h as usize % n,
        coprime_stride(n, h >> 20),
        seen,
        visit,
    )
}

/// A stride in `1..n` coprime to `n` (1 when `n <= 2`), chosen from `seed`.
#[inline]
pub(crate) fn coprime_stride(n: usize, seed: u64) -> usize {
    if n <= 2 {
        return 1;
    }
    let mut s = 1 + (seed % (n as u64 - 1)) as usize;
    // The density of integers coprime to n is above 1/(e^γ ln ln n + 3), so
    // this loop ends after a handful of steps; 1 ends it at the latest.
    while gcd(s, n) != 1 {
        s = if s + 1 >= n { 1 } else { s + 1 };
    }
    s
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Map 32 random bits onto `0..n` without division (Lemire's multiply-shift).
#[inline]
pub(crate) fn scale(bits32: u64, n: usize) -> usize {
    ((bits32 * n as u64) >> 32) as usize
}

/// Weighted sampling in O(1): a uniform draw when all weights are equal,
/// otherwise Vose's alias method (M. D. Vose, "A linear algorithm for
/// generating random numbers with a given distribution", IEEE TSE 1991),
/// built with exact integer arithmetic.
#[derive(Debug)]
pub(crate) enum Sampler {
    Uniform(usize),
    Alias {
        /// Probability (in units of 2^-32) of keeping column `i` rather than
        /// taking its alias; 2^32 = always.
        keep: Box<[u64]>,
        alias: Box<[u32]>,
    },
}

impl Sampler {
    pub(crate) fn new(backends: &[Arc<Backend>]) -> Self {
        let n = backends.len();
        let first = backends.first().map_or(1, |b| b.weight());
        if backends.iter().all(|b| b.weight() == first) {
            return Sampler::Uniform(n);
        }
        let total: u128 = backends.iter().map(|b| u128::from(b.weight())).sum();
        // Column heights scaled so the average is `total`.
        let mut height: Vec<u128> = backends
            .iter()
            .map(|b| u128::from(b.weight()) * n as u128)
            .collect();
        let mut keep = vec![1u64 << 32; n];
        let mut alias: Vec<u32> = (0..n as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| height[i] < total);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            keep[s] = ((height[s] << 32) / total) as u64;
            alias[s] = l as u32;
            height[l] -= total - height[s];
            if height[l] < total {
                large.pop();
                small.push(l);
            }
        }
        // Whatever is left is full up to rounding: always kept.
        Sampler::Alias {
            keep: keep.into_boxed_slice(),
            alias: alias.into_boxed_slice(),
        }
    }

    /// Draw one index, weighted.
    #[inline]
    pub(crate) fn sample(&self, rng: &mut Rng) -> usize {
        let r = rng.u64();
        match self {
            Sampler::Uniform(n) => scale(r >> 32, *n),
            Sampler::Alias { keep, alias } => {
                let i = scale(r >> 32, keep.len());
                if (r & 0xffff_ffff) < keep[i] {
                    i
                } else {
                    alias[i] as usize
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coprime_strides_sweep_every_index_once() {
        for n in 1..60usize {
            for seed in 0..20u64 {
                let s = coprime_stride(n, seed.wrapping_mul(0x9e37_79b9));
                assert!(s >= 1 && (s < n || n <= 1), "n={n} s={s}");
                let bs: Vec<Arc<Backend>> = (0..n)
                    .map(|i| Arc::new(Backend::new(([10, 0, 0, 1], i as u16 + 1).into())))
                    .collect();
                let mut hits = vec![0u32; n];
                let none: Option<()> = sweep(&bs, seed as usize, s, &Seen::new(), |b| {
                    hits[b.addr().port() as usize - 1] += 1;
                    None
                });
                assert!(none.is_none());
                assert!(hits.iter().all(|&h| h == 1), "n={n} s={s} {hits:?}");
            }
        }
    }

    #[test]
    fn the_alias_table_reproduces_the_weights_exactly() {
        let bs: Vec<Arc<Backend>> = [1u32, 2, 3, 10]
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                Arc::new(Backend::new(([10, 0, 0, 1], i as u16 + 1).into()).with_weight(w))
            })
            .collect();
        let Sampler::Alias { keep, alias } = Sampler::new(&bs) else {
            panic!("weights differ: an alias table");
        };
        // Probability mass of each index = its own kept share plus the shares
        // other columns hand to it; exact in units of 2^-32 / n.
        let n = bs.len() as f64;
        let mut mass = [0f64; 4];
        for i in 0..4 {
            let k = keep[i] as f64 / 2f64.powi(32);
            mass[i] += k / n;
            mass[alias[i] as usize] += (1.0 - k) / n;
        }
        for (m, w) in mass.iter().zip([1.0, 2.0, 3.0, 10.0]) {
            assert!((m - w / 16.0).abs() < 1e-9, "{mass:?}");
        }
    }
}
