//! A reload builds every [`Upstream`] anew; [`Upstream::inherit`] hands the
//! new one what the old one learnt about the backends both have, so a reload
//! never puts a failing backend back in service nor a recovering one at full
//! load. [`Upstream::set_weight`] swaps one backend for a reweighted copy
//! the same way.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use detour_core::BackendState;
use tokio::time::Instant;

use super::Upstream;

impl Upstream {
    /// Take over from `prev`, the upstream this one replaces, what it learnt
    /// about each backend at an address both have:
    ///
    /// - the breaker's state: an open breaker stays open for the time it had
    ///   left, a half-open one keeps probing ([`BreakerMemory`]);
    /// - an outlier ejection in force, until the same end, and the ejection
    ///   multiplier ([`OutlierDetector::resume`]);
    /// - the slow-start ramp (when the backend came back into service);
    /// - an operator's drain mark, the latency average, and the outcomes of its
    ///   last attempts (the failure spread's history, `detour_core::spread`);
    /// - a weight set at run time ([`set_weight`](Self::set_weight)), unless
    ///   this upstream's configuration gives the backend another weight than
    ///   it had.
    ///
    /// Removals still go through this upstream's removal cap. Active check
    /// verdicts are not carried: call this after [`first_round`], whose
    /// verdicts are newer (and which also brings in discovered backends).
    ///
    /// [`BreakerMemory`]: detour_breaker::BreakerMemory
    /// [`OutlierDetector::resume`]: detour_health::OutlierDetector::resume
    /// [`first_round`]: Self::first_round
    pub fn inherit(&self, prev: &Upstream) {
        let now = Instant::now();
        self.lb.adopt_weights(&prev.lb.weight_overrides());
        let old = prev.backends();
        let old: HashMap<SocketAddr, &BackendState> =
            old.iter().map(|b| (b.addr(), b.state())).collect();
        let ejections: HashMap<_, _> = prev
            .outlier
            .status()
            .into_iter()
            .map(|s| (s.addr, s))
            .collect();
        for b in self.backends().iter() {
            let addr = b.addr();
            let Some(was) = old.get(&addr) else {
                continue;
            };
            inherit_state(b.state(), was, was.is_draining());
            let breakers = self.breakers.as_ref().zip(prev.breakers.as_ref());
            if let Some((mine, theirs)) = breakers {
                if let (Some(new), Some(old)) = (mine.breaker(addr), theirs.breaker(addr)) {
                    new.resume(&old.memory());
                }
            }
            if let Some(status) = ejections.get(&addr) {
                self.outlier.resume(status, now);
            }
        }
        // Tier loads and panic mode see the carried removals at once.
        self.lb.refresh_health(now);
    }

    /// Give the backend at `addr` the weight `weight` (0: no new requests)
    /// from now on, live: [`LoadBalancer::set_weight`] swaps in a reweighted
    /// copy, which keeps everything [`inherit`](Self::inherit) keeps across a
    /// reload (breaker, ejection, drain mark, slow start, latency, recent
    /// outcomes); requests in flight finish on the old copy. A reload keeps
    /// the weight while the configuration gives the backend the weight it
    /// had; so does discovery.
    ///
    /// Returns `false`, changing nothing, when the upstream has no backend
    /// at `addr`.
    ///
    /// [`LoadBalancer::set_weight`]: detour_lb::LoadBalancer::set_weight
    pub fn set_weight(&self, addr: SocketAddr, weight: u32) -> bool {
        let before = self.backends();
        let Some(old) = before.iter().find(|b| b.addr() == addr) else {
            return false;
        };
        // Read before the swap: the balancer marks the replaced copy draining.
        let drained = old.state().is_draining();
        let ejection = self.outlier.status().into_iter().find(|s| s.addr == addr);
        if !self.lb.set_weight(addr, weight) {
            return false;
        }
        let now = Instant::now();
        if let Some(new) = self.backends().iter().find(|b| b.addr() == addr) {
            if !Arc::ptr_eq(new, old) {
                inherit_state(new.state(), old.state(), drained);
            }
        }
        if let Some(status) = ejection {
            self.outlier.resume(&status, now);
        }
        self.lb.refresh_health(now);
        true
    }
}

/// The per-backend facts of `was` that outlive a reload, onto `now`;
/// `drained`: whether an operator drained it.
fn inherit_state(now: &BackendState, was: &BackendState, drained: bool) {
    if drained {
        now.set_draining(true);
    }
    if let Some(at) = was.recovered_at() {
        now.mark_recovered(at);
    }
    if let Some(latency) = was.latency_ewma() {
        now.record_latency(latency);
    }
    now.history().copy_from(was.history());
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use detour_core::{AttemptOutcome, CommitPoint, ErrorKind, GateState, Observer, OutcomeClass};
    use tokio::time::advance;

    use super::*;
    use crate::upstream::UpstreamConfig;

    fn config() -> UpstreamConfig {
        toml::from_str(
            r#"
backends = [
  { addr = "127.0.0.1:1" }, { addr = "127.0.0.1:2" },
  { addr = "127.0.0.1:3" }, { addr = "127.0.0.1:4" },
]
breaker = { open_for = "30s", jitter = 0.0 }
outlier = { base_ejection = "30s", jitter = 0.0, max_ejection_percent = 100 }
slow_start = { window = "60s" }
"#,
        )
        .unwrap()
    }

    fn refused(addr: SocketAddr) -> AttemptOutcome<'static> {
        AttemptOutcome {
            backend: None,
            addr,
            upstream: "app",
            class: OutcomeClass::BackendFailure(ErrorKind::ConnectRefused),
            status: None,
            latency: Duration::from_millis(1),
            commit: CommitPoint::NotConnected,
            attempt: 1,
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn state(up: &Upstream, port: u16) -> std::sync::Arc<detour_core::Backend> {
        let all = up.backends();
        let found = all.iter().find(|b| b.addr() == addr(port)).cloned();
        found.unwrap()
    }

    /// Open the breaker of `:port` (five failures in a row).
    fn trip(up: &Upstream, port: u16) {
        let breaker = up.breakers().unwrap().breaker(addr(port)).unwrap();
        for _ in 0..5 {
            breaker.record_failure(Duration::ZERO);
        }
        assert_eq!(breaker.state(), GateState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn what_the_old_upstream_learnt_goes_on_in_the_new_one() {
        let old = Upstream::from_config("app", &config()).unwrap();
        // :1's breaker opens; :2 is ejected; :3 is drained; :4 ramps up.
        trip(&old, 1);
        for _ in 0..5 {
            old.outlier().on_attempt(&refused(addr(2)));
        }
        state(&old, 3).state().set_draining(true);
        for failed in [true, true, false] {
            state(&old, 4).state().history().record(failed);
        }
        let ramp_start = Instant::now();
        state(&old, 4).state().mark_recovered(ramp_start);
        advance(Duration::from_secs(10)).await;

        let new = Upstream::from_config("app", &config()).unwrap();
        new.inherit(&old);
        let breaker = new.breakers().unwrap().breaker(addr(1)).unwrap();
        assert_eq!(breaker.state(), GateState::Open);
        assert_eq!(breaker.retry_after(), Some(Duration::from_secs(20)));
        let ejected = state(&new, 2);
        assert_eq!(
            ejected.state().ejected_until(Instant::now()),
            Some(ramp_start + Duration::from_secs(30))
        );
        assert!(state(&new, 3).state().is_draining());
        let ramp = |up: &Upstream| state(up, 4).state().recovered_at();
        assert!(ramp(&new).is_some());
        assert_eq!(ramp(&new), ramp(&old), "the ramp goes on from where it was");
        assert_eq!(state(&new, 4).state().history().recent(), (3, 2));
        let now = Instant::now();
        for p in [1, 2, 3] {
            assert!(state(&new, p).try_admit(now).is_none(), ":{p} stays out");
        }

        // The breaker lets a probe through when the old one would have.
        advance(Duration::from_secs(20)).await;
        assert!(state(&new, 1).try_admit(Instant::now()).is_some());
        assert_eq!(breaker.state(), GateState::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn new_addresses_start_afresh() {
        let old = Upstream::from_config("app", &config()).unwrap();
        trip(&old, 1);
        let mut moved = config();
        moved.backends.retain(|b| b.addr != addr(1));
        moved.backends.push(detour_lb::BackendSpec::new(addr(5)));
        let new = Upstream::from_config("app", &moved).unwrap();
        new.inherit(&old);
        for b in new.backends().iter() {
            assert!(b.try_admit(Instant::now()).is_some(), "{}", b.addr());
        }
    }
}
