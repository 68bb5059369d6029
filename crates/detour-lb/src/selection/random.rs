//! Weighted random selection: each pick independent, each backend chosen with
//! probability `weight / Σ weights`, in O(1) through an alias table (M. D.
//! Vose, "A linear algorithm for generating random numbers with a given
//! distribution", IEEE TSE 1991), or a plain uniform draw when all weights
//! are equal. No shared state is written on a pick.

use std::sync::Arc;

use crate::Rng;
use detour_core::Backend;

use super::{coprime_stride, sweep, Sampler, Seen, Selection};

/// Weighted random selection (see the [module docs](self)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WeightedRandom;

/// The alias table of a [`WeightedRandom`] set.
#[derive(Debug)]
pub struct WeightedRandomTable {
    sampler: Sampler,
}

impl Selection for WeightedRandom {
    type Table = WeightedRandomTable;

    fn build(&self, backends: &[Arc<Backend>], _rng: &mut Rng) -> WeightedRandomTable {
        WeightedRandomTable {
            sampler: Sampler::new(backends),
        }
    }

    #[inline]
    fn walk<'a, R>(
        &self,
        table: &WeightedRandomTable,
        backends: &'a [Arc<Backend>],
        _key: u64,
        rng: &mut Rng,
        mut visit: impl FnMut(&'a Arc<Backend>) -> Option<R>,
    ) -> Option<R> {
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let first = table.sampler.sample(rng) % n;
        if let Some(r) = visit(&backends[first]) {
            return Some(r);
        }
        let mut seen = Seen::new();
        seen.push(first);
        let stride = coprime_stride(n, rng.u64());
        sweep(backends, first + stride, stride, &seen, visit)
    }
}
