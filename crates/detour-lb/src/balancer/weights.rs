//! Weights an operator sets at run time (an admin API), over the ones the
//! backends' source gives (a configuration file, discovery).
//!
//! A weight is a descriptor of a [`Backend`]: the selection tables are
//! built from it. Changing it swaps in a [`Backend::reweighted`] copy through
//! the ordinary update, which carries the backend's state over, so selection
//! never reads a weight that moves under it. The override is kept by address
//! and applied again at every later update (a discovery round would otherwise
//! undo it) until the source itself changes that backend's weight: then the
//! source is the newer word, and the override is dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError};

use detour_core::Backend;

use super::LoadBalancer;
use crate::selection::Selection;

/// A weight set at run time over the one the source gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightOverride {
    /// The weight the source gave the backend when the override was set.
    pub given: u32,
    /// The weight in force.
    pub weight: u32,
}

/// Overrides by address.
pub(super) type Overrides = HashMap<SocketAddr, WeightOverride>;

impl<S: Selection> LoadBalancer<S> {
    /// Give the backend at `addr` the weight `weight` (0: no new requests,
    /// as for a configured weight 0) from now on, keeping its state
    /// (health, breaker, ejection mark, in-flight requests finish as they
    /// are). Later updates keep it while they give the backend the weight it
    /// had from its source; an update that changes that weight wins.
    ///
    /// Returns `false`, changing nothing, when no backend has that address.
    pub fn set_weight(&self, addr: SocketAddr, weight: u32) -> bool {
        let hooks = self.hooks.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.backends();
        let Some(b) = current.iter().find(|b| b.addr() == addr) else {
            return false;
        };
        {
            let mut overrides = self.weights.lock().unwrap_or_else(PoisonError::into_inner);
            let given = overrides.get(&addr).map_or(b.weight(), |o| o.given);
            overrides.insert(addr, WeightOverride { given, weight });
        }
        let next = current
            .iter()
            .map(|o| {
                if o.addr() == addr {
                    Arc::new(o.reweighted(weight))
                } else {
                    Arc::clone(o)
                }
            })
            .collect();
        self.update_locked(&hooks, next);
        true
    }

    /// The weights set at run time that are in force, by address.
    pub fn weight_overrides(&self) -> Vec<(SocketAddr, WeightOverride)> {
        let overrides = self.weights.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<_> = overrides.iter().map(|(a, o)| (*a, *o)).collect();
        all.sort_by_key(|(a, _)| *a);
        all
    }

    /// Take over `overrides` (those of the balancer this one replaces, on a
    /// reload) and apply them to the current backends: each holds while
    /// this balancer's source gives the backend the weight it had.
    pub fn adopt_weights(&self, overrides: &[(SocketAddr, WeightOverride)]) {
        if overrides.is_empty() {
            return;
        }
        let hooks = self.hooks.lock().unwrap_or_else(PoisonError::into_inner);
        self.weights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(overrides.iter().copied());
        self.update_locked(&hooks, self.backends().to_vec());
    }

    /// `incoming` with the overrides applied. An override whose address is
    /// gone, or whose backend the source now gives another weight, ends.
    pub(super) fn apply_weights(&self, incoming: Vec<Arc<Backend>>) -> Vec<Arc<Backend>> {
        let mut overrides = self.weights.lock().unwrap_or_else(PoisonError::into_inner);
        if overrides.is_empty() {
            return incoming;
        }
        let mut kept = Overrides::with_capacity(overrides.len());
        let out = incoming
            .into_iter()
            .map(|b| {
                let Some(o) = overrides.get(&b.addr()).copied() else {
                    return b;
                };
                // The balancer's own set carries the override's weight; the
                // source carries `given`. Anything else is a new word.
                if b.weight() != o.given && b.weight() != o.weight {
                    tracing::info!(
                        backend = %b.addr(),
                        weight = b.weight(),
                        "the backend's source changed its weight; the weight set at run time ends"
                    );
                    return b;
                }
                kept.insert(b.addr(), o);
                if b.weight() == o.weight {
                    b
                } else {
                    Arc::new(b.reweighted(o.weight))
                }
            })
            .collect();
        *overrides = kept;
        out
    }
}

#[cfg(test)]
mod tests {
    use detour_core::Backend;
    use tokio::time::Instant;

    use super::*;
    use crate::selection::RoundRobin;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn weight_of(lb: &LoadBalancer<RoundRobin>, port: u16) -> u32 {
        let all = lb.backends();
        let b = all.iter().find(|b| b.addr() == addr(port));
        b.map_or(u32::MAX, |b| b.weight())
    }

    /// Which ports `n` selections pick, in order.
    fn picks(lb: &LoadBalancer<RoundRobin>, n: usize) -> Vec<u16> {
        (0..n)
            .map(|_| {
                let p = lb.select(0, &[], Instant::now()).expect("a backend");
                p.backend().addr().port()
            })
            .collect()
    }

    #[tokio::test]
    async fn a_weight_set_at_run_time_steers_selection_and_keeps_state() {
        let lb = LoadBalancer::new(RoundRobin);
        lb.update([Backend::new(addr(1)), Backend::new(addr(2))]);
        let before = Arc::clone(&lb.backends()[0]);
        before.state().set_check_failed(true);
        assert!(lb.set_weight(addr(1), 3));
        assert_eq!(weight_of(&lb, 1), 3);
        let after = Arc::clone(&lb.backends()[0]);
        assert!(!Arc::ptr_eq(&before, &after));
        assert!(after.state().check_failed(), "state carried over");
        after.state().set_check_failed(false);
        let got = picks(&lb, 8);
        assert_eq!(got.iter().filter(|&&p| p == 1).count(), 6, "{got:?}");

        assert!(lb.set_weight(addr(1), 0));
        assert!(picks(&lb, 4).iter().all(|&p| p == 2));
        assert!(!lb.set_weight(addr(9), 1), "no such backend");
    }

    #[tokio::test]
    async fn an_override_outlives_updates_until_the_source_changes_the_weight() {
        let lb = LoadBalancer::new(RoundRobin);
        let source = |w: u32| [Backend::new(addr(1)).with_weight(w), Backend::new(addr(2))];
        lb.update(source(1));
        lb.set_weight(addr(1), 0);
        lb.update(source(1));
        assert_eq!(weight_of(&lb, 1), 0, "a discovery round keeps it");
        assert_eq!(lb.weight_overrides().len(), 1);

        let successor = LoadBalancer::new(RoundRobin);
        successor.update(source(1));
        successor.adopt_weights(&lb.weight_overrides());
        assert_eq!(weight_of(&successor, 1), 0, "a reload keeps it");

        successor.update(source(4));
        assert_eq!(weight_of(&successor, 1), 4, "the source's new weight wins");
        assert!(successor.weight_overrides().is_empty());
        successor.update(source(1));
        assert_eq!(weight_of(&successor, 1), 1);
    }

    #[tokio::test]
    async fn an_override_ends_with_its_backend() {
        let lb = LoadBalancer::new(RoundRobin);
        lb.update([Backend::new(addr(1)), Backend::new(addr(2))]);
        lb.set_weight(addr(1), 5);
        lb.update([Backend::new(addr(2))]);
        lb.update([Backend::new(addr(1)), Backend::new(addr(2))]);
        assert_eq!(weight_of(&lb, 1), 1);
    }
}
