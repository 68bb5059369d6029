//! Least request with the power of two choices.
//!
//! Draw two backends at random (weighted) and take the one with fewer
//! requests in flight per unit of weight (M. Mitzenmacher, "The Power of Two
//! Choices in Randomized Load Balancing", IEEE TPDS 2001). Two choices cut the
//! maximum load exponentially compared with one, and unlike a scan for the
//! global minimum they cost O(1) and do not send every proxy's next request to
//! the same idle backend.

use std::sync::Arc;

use crate::Rng;
use detour_core::Backend;

use super::{coprime_stride, sweep, Sampler, Seen, Selection};

/// Least request, power of two choices (see the [module docs](self)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeastRequest;

/// The weighted sampler of a [`LeastRequest`] set.
#[derive(Debug)]
pub struct LeastRequestTable {
    sampler: Sampler,
}

impl Selection for LeastRequest {
    type Table = LeastRequestTable;

    fn build(&self, backends: &[Arc<Backend>], _rng: &mut Rng) -> LeastRequestTable {
        LeastRequestTable {
            sampler: Sampler::new(backends),
        }
    }

    #[inline]
    fn walk<'a, R>(
        &self,
        table: &LeastRequestTable,
        backends: &'a [Arc<Backend>],
        _key: u64,
        rng: &mut Rng,
        visit: impl FnMut(&'a Arc<Backend>) -> Option<R>,
    ) -> Option<R> {
        p2c_walk(&table.sampler, backends, rng, visit, |b| {
            // (in flight + 1) / weight, compared without division.
            (
                u64::from(b.state().in_flight()) + 1,
                u64::from(b.weight().max(1)),
            )
        })
    }
}

/// The two-choices walk shared by least request and peak EWMA: the better of
/// two weighted draws, then the other, then a sweep over the rest. `cost`
/// returns a fraction `(numerator, denominator)`; the lower fraction wins.
#[inline]
pub(crate) fn p2c_walk<'a, R>(
    sampler: &Sampler,
    backends: &'a [Arc<Backend>],
    rng: &mut Rng,
    mut visit: impl FnMut(&'a Arc<Backend>) -> Option<R>,
    cost: impl Fn(&Backend) -> (u64, u64),
) -> Option<R> {
    let n = backends.len();
    if n == 0 {
        return None;
    }
    if n == 1 {
        return visit(&backends[0]);
    }
    let a = sampler.sample(rng) % n;
    let mut b = sampler.sample(rng) % n;
    if b == a {
        // One more weighted draw, then any other backend: two distinct
        // choices are the point of the algorithm.
        b = sampler.sample(rng) % n;
        if b == a {
            b = (a + 1 + rng.below(n - 1)) % n;
        }
    }
    let (ca, cb) = (cost(&backends[a]), cost(&backends[b]));
    let a_first = u128::from(ca.0) * u128::from(cb.1) <= u128::from(cb.0) * u128::from(ca.1);
    let (first, second) = if a_first { (a, b) } else { (b, a) };
    if let Some(r) = visit(&backends[first]) {
        return Some(r);
    }
    if let Some(r) = visit(&backends[second]) {
        return Some(r);
    }
    let mut seen = Seen::new();
    seen.push(first);
    seen.push(second);
    let stride = coprime_stride(n, rng.u64());
    sweep(backends, rng.below(n), stride, &seen, visit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_less_loaded_of_the_two_goes_first() {
        let bs: Vec<Arc<Backend>> = (1..=2)
            .map(|p| Arc::new(Backend::new(([10, 0, 0, 1], p).into())))
            .collect();
        let now = tokio::time::Instant::now();
        let _busy: Vec<_> = (0..5).map(|_| bs[0].try_admit(now).unwrap()).collect();
        let table = LeastRequest.build(&bs, &mut Rng::with_seed(3));
        let mut rng = Rng::with_seed(9);
        for _ in 0..100 {
            let got = LeastRequest.walk(&table, &bs, 0, &mut rng, |b| Some(b.addr().port()));
            assert_eq!(got, Some(2), "with two backends both are always drawn");
        }
    }
}
