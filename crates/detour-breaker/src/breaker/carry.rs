//! Carrying what a breaker learnt to the breaker that replaces it.
//!
//! A configuration reload builds every upstream anew, breakers included. A
//! backend that stays must not lose its breaker's verdict: an open breaker
//! stays open for the time it had left, a half-open one keeps probing, and
//! the open period keeps the growth it had reached. [`CircuitBreaker::memory`]
//! reads that from the old breaker; [`CircuitBreaker::resume`] puts it into
//! the new one, whose own configuration applies from then on.

use std::sync::atomic::Ordering;
use std::time::Duration;

use detour_core::{GateState, Removal};

use super::state::{Mode, Word};
use super::{CircuitBreaker, OPEN_GAUGE};
use crate::clock::duration_nanos;

/// What a breaker learnt: its state, the time an open one has left, how far
/// its open period has grown, and how often it has tripped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerMemory {
    /// Closed, open or half-open.
    pub state: GateState,
    /// While open: the time until it lets probes through.
    pub open_left: Option<Duration>,
    /// Times it has opened.
    pub trips: u64,
    /// Repeated trips so far (the exponent of the open period's growth).
    level: u32,
    /// Half-open because an active check saw the backend come back.
    by_check: bool,
}

impl CircuitBreaker {
    /// What this breaker learnt, to [`resume`](Self::resume) in another.
    pub fn memory(&self) -> BreakerMemory {
        // `state()` first: an open period that ran out is half-open now.
        let state = self.state();
        BreakerMemory {
            state,
            open_left: self.retry_after(),
            trips: self.trips(),
            level: self.lock().level,
            by_check: self.half_open_by_check(),
        }
    }

    /// Take over `memory` from the breaker this one replaces. A closed
    /// breaker becomes open for the time the old one had left (or
    /// half-open, with no probe in flight), taking its backend's removal
    /// slot; when the upstream's removal cap has no room for it, it stays
    /// closed. A breaker that is not closed any more keeps its own state.
    pub fn resume(&self, memory: &BreakerMemory) {
        let mut inner = self.lock();
        inner.level = inner.level.max(memory.level);
        self.trips.fetch_max(memory.trips, Ordering::Relaxed);
        let cur = self.load();
        if cur.mode() != Mode::Closed || memory.state == GateState::Closed || !self.policy.enabled {
            return;
        }
        if let Some(backend) = inner.backend.upgrade() {
            if !backend.state().try_remove(Removal::BreakerOpen) {
                return;
            }
        }
        let now = self.epoch.elapsed_nanos();
        let next = match memory.open_left {
            Some(left) if memory.state == GateState::Open => {
                let until_ms = now.saturating_add(duration_nanos(left)).div_ceil(1_000_000);
                Word::open(cur.next_era(), until_ms)
            }
            _ => {
                self.half_open_since.store(now, Ordering::Release);
                Word::half_open(cur.next_era(), 0, 0)
            }
        };
        // Admissions while closed do not move the word, so only a racing
        // state change could; it happens under the lock held here.
        if self.cas(cur, next).is_ok() {
            metrics::gauge!(OPEN_GAUGE).increment(1.0);
            if memory.by_check && next.mode() == Mode::HalfOpen {
                self.vouch(next.era());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use detour_core::{Backend, GateState, Removal};
    use tokio::time::{advance, Instant};

    use super::*;
    use crate::{BreakerConfig, BreakerRegistry};

    fn tripped(config: &BreakerConfig) -> (BreakerRegistry, Arc<CircuitBreaker>) {
        let reg = BreakerRegistry::new(config.clone()).unwrap();
        let b = Arc::new(Backend::new("127.0.0.1:1".parse().unwrap()));
        let breaker = reg.attach(&b).unwrap();
        for _ in 0..config.consecutive_failures {
            breaker.record_failure(Duration::ZERO);
        }
        assert_eq!(breaker.state(), GateState::Open);
        (reg, breaker)
    }

    fn config() -> BreakerConfig {
        BreakerConfig {
            open_for: Duration::from_secs(30),
            jitter: 0.0,
            ..BreakerConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_stays_open_for_the_time_it_had_left() {
        let (_old_reg, old) = tripped(&config());
        advance(Duration::from_secs(10)).await;
        let memory = old.memory();
        assert_eq!(memory.open_left, Some(Duration::from_secs(20)));

        let reg = BreakerRegistry::new(config()).unwrap();
        let b = Arc::new(Backend::new("127.0.0.1:1".parse().unwrap()));
        let new = reg.attach(&b).unwrap();
        new.resume(&memory);
        assert_eq!(new.state(), GateState::Open);
        assert_eq!(new.trips(), 1);
        assert!(b.try_admit(Instant::now()).is_none());
        assert!(b.state().is_removed_for(Removal::BreakerOpen));
        advance(Duration::from_millis(19_990)).await;
        assert_eq!(new.state(), GateState::Open, "not before its time");
        advance(Duration::from_millis(20)).await;
        assert!(b.try_admit(Instant::now()).is_some(), "then a probe");
        assert_eq!(new.state(), GateState::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_and_closed_carry_as_they_are() {
        let (_r, old) = tripped(&config());
        advance(Duration::from_secs(31)).await;
        let memory = old.memory();
        assert_eq!(
            (memory.state, memory.open_left),
            (GateState::HalfOpen, None)
        );
        let fresh = CircuitBreaker::new(config()).unwrap();
        fresh.resume(&memory);
        assert_eq!(fresh.state(), GateState::HalfOpen);
        assert!(!fresh.half_open_by_check(), "half-open by the clock");
        assert!(fresh.try_acquire().is_some(), "a probe slot is free");
        // Half-opened by a check: still vouched for after the reload.
        let (_r, checked) = tripped(&config());
        detour_core::AdmissionGate::on_backend_recovered(&*checked);
        let vouched = CircuitBreaker::new(config()).unwrap();
        vouched.resume(&checked.memory());
        assert!(vouched.half_open_by_check());

        let closed = CircuitBreaker::new(config()).unwrap().memory();
        let other = CircuitBreaker::new(config()).unwrap();
        other.resume(&closed);
        assert_eq!(other.state(), GateState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn the_removal_cap_of_the_new_upstream_still_rules() {
        let (_r, old) = tripped(&config());
        let reg = BreakerRegistry::new(config()).unwrap();
        let b = Arc::new(Backend::new("127.0.0.1:1".parse().unwrap()));
        // One backend, a cap under 100 %: it may never be removed.
        Arc::new(detour_core::RemovalCap::new(50)).attach(std::slice::from_ref(&b));
        let new = reg.attach(&b).unwrap();
        new.resume(&old.memory());
        assert_eq!(new.state(), GateState::Closed);
        assert!(b.try_admit(Instant::now()).is_some());
    }
}
