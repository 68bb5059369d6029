//! Peak EWMA with the power of two choices.
//!
//! Finagle's and linkerd's latency-aware balancer ("Peak EWMA", Twitter
//! Finagle, 2016; tower's `PeakEwma`): of two weighted random draws, take the
//! backend with the lower `latency × (in flight + 1) / weight`, so a backend
//! that slows down loses traffic before it fails outright. The latency is
//! [`BackendState::latency_ewma`](detour_core::BackendState::latency_ewma),
//! which the engine updates after every attempt; a backend without a sample
//! yet is assumed to answer in `default_rtt`.

use std::sync::Arc;
use std::time::Duration;

use crate::Rng;
use detour_core::Backend;

use super::least_request::p2c_walk;
use super::{Sampler, Selection};
use crate::InvalidConfig;

/// Peak EWMA, power of two choices (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeakEwma {
    /// The latency assumed for a backend with no sample yet. Default 10 ms:
    /// low enough that a new backend gets tried, high enough that it does not
    /// get everything.
    pub default_rtt: Duration,
}

impl Default for PeakEwma {
    fn default() -> Self {
        PeakEwma {
            default_rtt: Duration::from_millis(10),
        }
    }
}

impl PeakEwma {
    /// Set the latency assumed for a backend without a sample.
    pub fn with_default_rtt(default_rtt: Duration) -> Self {
        PeakEwma { default_rtt }
    }
}

/// The weighted sampler of a [`PeakEwma`] set.
#[derive(Debug)]
pub struct PeakEwmaTable {
    sampler: Sampler,
}

impl Selection for PeakEwma {
    type Table = PeakEwmaTable;

    fn build(&self, backends: &[Arc<Backend>], _rng: &mut Rng) -> PeakEwmaTable {
        PeakEwmaTable {
            sampler: Sampler::new(backends),
        }
    }

    #[inline]
    fn walk<'a, R>(
        &self,
        table: &PeakEwmaTable,
        backends: &'a [Arc<Backend>],
        _key: u64,
        rng: &mut Rng,
        visit: impl FnMut(&'a Arc<Backend>) -> Option<R>,
    ) -> Option<R> {
        let default_ns = self.default_rtt.as_nanos().min(u128::from(u64::MAX)) as u64;
        p2c_walk(&table.sampler, backends, rng, visit, |b| {
            let rtt_ns = b
                .state()
                .latency_ewma()
                .map_or(default_ns, |d| {
                    d.as_nanos().min(u128::from(u64::MAX)) as u64
                })
                .max(1);
            let load = u64::from(b.state().in_flight()) + 1;
            (rtt_ns.saturating_mul(load), u64::from(b.weight().max(1)))
        })
    }

    fn validate(&self) -> Result<(), InvalidConfig> {
        if self.default_rtt.is_zero() {
            return Err(InvalidConfig::new(
                "peak_ewma.default_rtt",
                "must be above zero",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slower_backend_loses_the_pick() {
        let bs: Vec<Arc<Backend>> = (1..=2)
            .map(|p| Arc::new(Backend::new(([10, 0, 0, 1], p).into())))
            .collect();
        bs[0].state().record_latency(Duration::from_millis(50));
        bs[1].state().record_latency(Duration::from_millis(5));
        let lb = PeakEwma::default();
        let table = lb.build(&bs, &mut Rng::with_seed(3));
        let mut rng = Rng::with_seed(4);
        let got = lb.walk(&table, &bs, 0, &mut rng, |b| Some(b.addr().port()));
        assert_eq!(got, Some(2));
        // Ten requests in flight on the fast one make it the costlier.
        let now = tokio::time::Instant::now();
        let _held: Vec<_> = (0..10).map(|_| bs[1].try_admit(now).unwrap()).collect();
        let got = lb.walk(&table, &bs, 0, &mut rng, |b| Some(b.addr().port()));
        assert_eq!(got, Some(1));
    }
}
