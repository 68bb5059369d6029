//! Backends and their shared, lock-free state.
//!
//! [`BackendState`] holds independent facts that different crates write: the
//! active health check, outlier ejection, draining, the breaker's gate, in-flight
//! requests and a latency EWMA. Selection asks one question —
//! [`Backend::try_admit`] — and a yes is a [`Permit`] held for the attempt and
//! released on drop, so a cancelled request leaks nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::{from_nanos, to_nanos};
use crate::error::ErrorKind;
use crate::outcome::OutcomeClass;
use crate::spread::{FailureSpread, History, SpreadMember};

/// A gate that may refuse or admit attempts to one backend (a circuit breaker
/// implements it). Admission and release must be cheap and lock-free.
pub trait AdmissionGate: Send + Sync + 'static {
    /// Try to admit one attempt. `true` means admitted: [`release`](Self::release)
    /// will be called exactly once when the attempt's permit is dropped.
    fn try_admit(&self) -> bool;
    /// The admitted attempt ended (completed or cancelled).
    fn release(&self);
    /// The gate's state for reports, as a [`GateState`].
    fn state(&self) -> GateState;
    /// When the gate will next admit, if it is refusing now.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
    /// An active health check just saw the backend come back. A breaker moves
    /// from open to half-open at once, so recovery is bounded by the checks
    /// (DESIGN.md: "Recovery is bounded by the checks").
    fn on_backend_recovered(&self) {}
    /// Whether the gate is half-open because an active health check saw the
    /// backend come back ([`on_backend_recovered`](Self::on_backend_recovered)),
    /// not merely because its open period ran out. Only then may selection
    /// take the backend past its probe limit
    /// ([`Backend::try_admit_beyond_probes`]).
    fn half_open_by_check(&self) -> bool {
        false
    }
}

/// A gate's state, for status pages and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateState {
    /// Admitting normally.
    Closed,
    /// Refusing.
    Open,
    /// Admitting a bounded number of probes.
    HalfOpen,
}

/// The shared state of one backend. Every field is an atomic: readers on the
/// request path never take a lock.
#[derive(Default)]
pub struct BackendState {
    check_failed: AtomicBool,
    ejected_until: AtomicU64,
    draining: AtomicBool,
    in_flight: AtomicU32,
    /// f64 bits of the latency EWMA in microseconds.
    latency_ewma_us: AtomicU64,
    /// Whether the latency EWMA has a first sample.
    latency_seeded: AtomicU8,
    gate: OnceLock<Arc<dyn AdmissionGate>>,
    /// When the backend last came back into service (nanos since the clock
    /// base; 0 = never recorded). Slow start ramps its share from here.
    recovered_at: AtomicU64,
    /// Bits of [`Removal`] reasons currently in force.
    removal: AtomicU8,
    cap: OnceLock<Arc<RemovalCap>>,
    /// The last attempts' outcomes, for the upstream's failure spread.
    history: History,
}

impl fmt::Debug for BackendState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendState")
            .field("check_failed", &self.check_failed())
            .field("draining", &self.is_draining())
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl BackendState {
    /// Whether the active health check currently says the backend is down.
    pub fn check_failed(&self) -> bool {
        self.check_failed.load(Ordering::Relaxed)
    }

    /// Record the active health check's verdict.
    pub fn set_check_failed(&self, failed: bool) {
        self.check_failed.store(failed, Ordering::Relaxed);
    }

    /// Eject the backend (passive outlier detection) until `until`.
    pub fn eject_until(&self, until: Instant) {
        self.ejected_until.store(to_nanos(until), Ordering::Relaxed);
    }

    /// End an ejection now.
    pub fn clear_ejection(&self) {
        self.ejected_until.store(0, Ordering::Relaxed);
    }

    /// The end of the current ejection, if one is in force at `now`.
    pub fn ejected_until(&self, now: Instant) -> Option<Instant> {
        match self.ejected_until.load(Ordering::Relaxed) {
            0 => None,
            n => Some(from_nanos(n)).filter(|&t| t > now),
        }
    }

    /// Whether the backend is draining (takes no new requests).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Start or stop draining.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }

    /// Attempts in flight to this backend right now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Install the admission gate (a circuit breaker). Only the first call wins.
    ///
    /// # Errors
    /// Returns the gate back if one was already installed.
    pub fn set_gate(&self, gate: Arc<dyn AdmissionGate>) -> Result<(), Arc<dyn AdmissionGate>> {
        self.gate.set(gate)
    }

    /// The installed admission gate, if any.
    pub fn gate(&self) -> Option<&Arc<dyn AdmissionGate>> {
        self.gate.get()
    }

    /// The latency EWMA, if any sample was recorded.
    pub fn latency_ewma(&self) -> Option<Duration> {
        (self.latency_seeded.load(Ordering::Relaxed) != 0).then(|| {
            let us = f64::from_bits(self.latency_ewma_us.load(Ordering::Relaxed));
            Duration::from_secs_f64(us / 1e6)
        })
    }

    /// Fold one latency sample into the EWMA (weight 0.1 for the new sample).
    /// Racing updates may lose a sample, which an average tolerates.
    pub fn record_latency(&self, latency: Duration) {
        let sample = latency.as_secs_f64() * 1e6;
        let new = if self.latency_seeded.swap(1, Ordering::Relaxed) == 0 {
            sample
        } else {
            let old = f64::from_bits(self.latency_ewma_us.load(Ordering::Relaxed));
            old + 0.1 * (sample - old)
        };
        self.latency_ewma_us.store(new.to_bits(), Ordering::Relaxed);
    }

    /// Record that the backend came back into service at `at` (a check passed
    /// after failing, an ejection ended, a breaker closed, or it was added).
    /// Selection's slow start ramps the backend's share up from this instant.
    pub fn mark_recovered(&self, at: Instant) {
        self.recovered_at.store(to_nanos(at), Ordering::Relaxed);
    }

    /// When the backend last came back into service, if that was recorded.
    pub fn recovered_at(&self) -> Option<Instant> {
        match self.recovered_at.load(Ordering::Relaxed) {
            0 => None,
            n => Some(from_nanos(n)),
        }
    }

    /// Install the upstream's passive-removal cap (see [`RemovalCap`]). Only
    /// the first call wins; without a cap, passive removal is never refused.
    pub fn set_removal_cap(&self, cap: Arc<RemovalCap>) {
        let _ = self.cap.set(cap);
    }

    /// The upstream's passive-removal cap, if one is installed.
    pub fn removal_cap(&self) -> Option<&Arc<RemovalCap>> {
        self.cap.get()
    }

    /// Ask to remove this backend passively for `reason` (outlier ejection or
    /// an open breaker). Returns `false` when the upstream's cap refuses: the
    /// caller must then leave the backend in service. A backend already removed
    /// for another reason holds its slot already, so this always succeeds.
    pub fn try_remove(&self, reason: Removal) -> bool {
        let bit = reason as u8;
        let held = self.removal.load(Ordering::Acquire);
        if held & bit != 0 {
            return true;
        }
        if held == 0 {
            if let Some(cap) = self.cap.get() {
                if !cap.acquire(&self.history) {
                    return false;
                }
            }
            let before = self.removal.fetch_or(bit, Ordering::AcqRel);
            if before != 0 {
                // Another reason took a slot meanwhile: ours is one too many.
                if let Some(cap) = self.cap.get() {
                    cap.release();
                }
            }
            return true;
        }
        self.removal.fetch_or(bit, Ordering::AcqRel);
        true
    }

    /// End a passive removal for `reason`; the cap's slot is freed when no
    /// reason is left.
    pub fn restore(&self, reason: Removal) {
        let bit = reason as u8;
        let before = self.removal.fetch_and(!bit, Ordering::AcqRel);
        if before == bit {
            if let Some(cap) = self.cap.get() {
                cap.release();
            }
        }
    }

    /// Whether the backend is passively removed now, for any reason.
    pub fn is_passively_removed(&self) -> bool {
        self.removal.load(Ordering::Acquire) != 0
    }

    /// The backend's last attempts, as the failure spread sees them.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Everything the backend's own state learns from one attempt: its
    /// latency when a response head arrived, and its outcome
    /// ([`record_outcome`](Self::record_outcome)). The engine calls it once
    /// per attempt, before the observers hear of it.
    pub fn record_attempt(
        &self,
        class: OutcomeClass,
        status: Option<u16>,
        latency: Duration,
        now: Instant,
    ) {
        if status.is_some() {
            self.record_latency(latency);
        }
        self.record_outcome(class, status, now);
    }

    /// Remember how an attempt to this backend ended, for the upstream's
    /// failure spread ([`crate::spread`]), and let the spread classify again
    /// if its step has passed. A failure is an outcome the backend caused or
    /// a 5xx; outcomes that are not the backend's doing are not remembered.
    pub fn record_outcome(&self, class: OutcomeClass, status: Option<u16>, now: Instant) {
        let failed = match class {
            OutcomeClass::Local(_) => return,
            OutcomeClass::BackendFailure(kind) if kind.is_local() => return,
            // A retriable status below 500 (a 429 a policy lists) is the
            // backend answering as designed, not failing: not remembered.
            OutcomeClass::BackendFailure(ErrorKind::HttpStatus(s)) if s < 500 => return,
            OutcomeClass::BackendFailure(_) => true,
            OutcomeClass::Success => status.is_some_and(|s| s >= 500),
        };
        self.history.record(failed);
        if let Some(cap) = self.cap.get() {
            if failed {
                cap.spread().at_failure(now);
            } else {
                cap.spread().at(now);
            }
        }
    }

    /// Whether the backend is passively removed for `reason` now.
    pub fn is_removed_for(&self, reason: Removal) -> bool {
        self.removal.load(Ordering::Acquire) & reason as u8 != 0
    }

    /// Whether health facts alone (check, ejection, draining) let the backend
    /// take a request at `now`; the gate is not consulted.
    pub fn is_available(&self, now: Instant) -> bool {
        !self.check_failed() && !self.is_draining() && self.ejected_until(now).is_none()
    }
}

/// One backend of an upstream.
#[derive(Debug)]
pub struct Backend {
    addr: SocketAddr,
    weight: u32,
    priority: u32,
    locality: Option<Arc<str>>,
    metadata: BTreeMap<String, String>,
    state: BackendState,
}

impl Backend {
    /// A backend at `addr` with weight 1, priority 0 and no locality.
    pub fn new(addr: SocketAddr) -> Self {
        Backend {
            addr,
            weight: 1,
            priority: 0,
            locality: None,
            metadata: BTreeMap::new(),
            state: BackendState::default(),
        }
    }

    /// Set the weight (0 means drained: never selected).
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Set the priority tier (0 is the highest).
    pub fn with_priority(mut self, priority: u32) -> Self {
        self.priority = priority;
        self
    }

    /// Set the locality (region or zone).
    pub fn with_locality(mut self, locality: impl Into<Arc<str>>) -> Self {
        self.locality = Some(locality.into());
        self
    }

    /// Add a metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The backend's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The same backend (address, priority, locality, metadata) with
    /// `weight`, and a fresh state: what a load balancer swaps in when an
    /// operator changes the weight at run time (it carries the state over).
    pub fn reweighted(&self, weight: u32) -> Backend {
        Backend {
            addr: self.addr,
            weight,
            priority: self.priority,
            locality: self.locality.clone(),
            metadata: self.metadata.clone(),
            state: BackendState::default(),
        }
    }

    /// The backend's weight.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// The backend's priority tier.
    pub fn priority(&self) -> u32 {
        self.priority
    }

    /// The backend's locality.
    pub fn locality(&self) -> Option<&str> {
        self.locality.as_deref()
    }

    /// The backend's metadata.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The backend's shared state.
    pub fn state(&self) -> &BackendState {
        &self.state
    }

    /// May this backend take a request now? Health, ejection, draining and the
    /// gate all must agree; a yes is a permit held for the attempt.
    pub fn try_admit(self: &Arc<Self>, now: Instant) -> Option<Permit> {
        if self.weight == 0 || !self.state.is_available(now) {
            return None;
        }
        self.admit_gated()
    }

    /// Admission in panic mode: ignores the health check, ejection and the
    /// gate (DESIGN.md: when too few backends are available, spread over all),
    /// but still respects draining and weight 0.
    pub fn try_admit_ignoring_health(self: &Arc<Self>) -> Option<Permit> {
        if self.weight == 0 || self.state.is_draining() {
            return None;
        }
        Some(self.permit(false))
    }

    /// Admission past a half-open gate's probe limit, when an active health
    /// check moved the gate to half-open by seeing the backend come back
    /// ([`AdmissionGate::half_open_by_check`]) and the backend is not
    /// ejected or draining. For when the backends the health view counts as
    /// available have all their probes in flight (several recovering at
    /// once), which would otherwise refuse requests the checks say those
    /// backends can serve. A gate half-open only because its open period ran
    /// out keeps its limit. The permit is not the gate's: its outcome still
    /// decides the half-open gate as a probe's would, but it holds no slot.
    pub fn try_admit_beyond_probes(self: &Arc<Self>, now: Instant) -> Option<Permit> {
        // Availability first: reading the gate's state may move it (an open
        // period that ran out turns half-open when asked).
        if self.weight == 0 || !self.state.is_available(now) {
            return None;
        }
        let vouched = self
            .state
            .gate()
            .is_some_and(|g| g.state() == GateState::HalfOpen && g.half_open_by_check());
        vouched.then(|| self.permit(false))
    }

    /// A permit for one attempt, counted in flight; `gated`: the gate
    /// admitted it and hears its release.
    fn permit(self: &Arc<Self>, gated: bool) -> Permit {
        self.state.in_flight.fetch_add(1, Ordering::Relaxed);
        Permit {
            backend: Arc::clone(self),
            gated,
        }
    }

    fn admit_gated(self: &Arc<Self>) -> Option<Permit> {
        let gated = match self.state.gate.get() {
            Some(g) if !g.try_admit() => return None,
            Some(_) => true,
            None => false,
        };
        Some(self.permit(gated))
    }
}

impl SpreadMember for Backend {
    fn in_rotation(&self) -> bool {
        self.weight > 0 && !self.state.check_failed() && !self.state.is_draining()
    }

    fn history(&self) -> &History {
        &self.state.history
    }

    fn is_passively_removed(&self) -> bool {
        self.state.is_passively_removed()
    }
}

/// Why a backend is passively removed. Both reasons share one slot of the
/// upstream's [`RemovalCap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Removal {
    /// Ejected by outlier detection.
    Ejected = 1,
    /// Its circuit breaker is open (or half-open, until it closes).
    BreakerOpen = 2,
}

/// One ceiling over all passive removal in an upstream (DESIGN.md: "Removal
/// has one ceiling"): outlier ejections and open breakers together may take
/// out at most `max_percent` of the upstream's backends, counted *after* the
/// removal. With 3 backends and 34 %, one may be removed, never two; with
/// one backend and anything under 100 %, none. Lock-free.
///
/// The one exception is a concentrated failure ([`crate::spread`]): while
/// some backends fail and others are clearly healthy, a failing backend may
/// be removed past the ceiling, as long as a clearly healthy one stays in
/// service. The cap keeps the upstream's [`FailureSpread`] for that.
#[derive(Debug)]
pub struct RemovalCap {
    total: AtomicU32,
    removed: AtomicU32,
    max_percent: AtomicU32,
    spread: FailureSpread,
}

impl RemovalCap {
    /// A cap of `max_percent` (clamped to 100) over no backends yet.
    pub fn new(max_percent: u32) -> Self {
        RemovalCap {
            total: AtomicU32::new(0),
            removed: AtomicU32::new(0),
            max_percent: AtomicU32::new(max_percent.min(100)),
            spread: FailureSpread::default(),
        }
    }

    /// The upstream's failure spread.
    pub fn spread(&self) -> &FailureSpread {
        &self.spread
    }

    /// Count `backends` as the upstream's members and install this cap on each
    /// (a backend keeps the first cap it was given). Call again whenever the
    /// membership changes.
    pub fn attach(self: &Arc<Self>, backends: &[Arc<Backend>]) {
        self.total.store(backends.len() as u32, Ordering::Release);
        self.spread.set_members(backends);
        for b in backends {
            b.state.set_removal_cap(Arc::clone(self));
        }
    }

    /// Set the number of backends in the upstream.
    pub fn set_total(&self, total: u32) {
        self.total.store(total, Ordering::Release);
    }

    /// Backends in the upstream.
    pub fn total(&self) -> u32 {
        self.total.load(Ordering::Acquire)
    }

    /// Backends passively removed now.
    pub fn removed(&self) -> u32 {
        self.removed.load(Ordering::Acquire)
    }

    /// The ceiling, in percent of the upstream.
    pub fn max_percent(&self) -> u32 {
        self.max_percent.load(Ordering::Relaxed)
    }

    /// Change the ceiling (already-removed backends stay removed).
    pub fn set_max_percent(&self, max_percent: u32) {
        self.max_percent
            .store(max_percent.min(100), Ordering::Relaxed);
    }

    /// Take a slot for the backend whose history is `history`: within the
    /// ceiling, or past it while the spread allows ([`FailureSpread::allows_overflow`]).
    fn acquire(&self, history: &History) -> bool {
        let total = u64::from(self.total());
        let max = u64::from(self.max_percent());
        let mut removed = self.removed.load(Ordering::Acquire);
        loop {
            let within = (u64::from(removed) + 1) * 100 <= max * total;
            if !within && !self.spread.allows_overflow(history) {
                return false;
            }
            match self.removed.compare_exchange_weak(
                removed,
                removed + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => removed = now,
            }
        }
    }

    fn release(&self) {
        // Never wraps: every release follows its own acquire.
        let _ = self
            .removed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| r.checked_sub(1));
    }
}

/// An admission held for one attempt. Dropping it releases the in-flight count
/// and the gate's slot.
#[derive(Debug)]
pub struct Permit {
    backend: Arc<Backend>,
    gated: bool,
}

impl Permit {
    /// The admitted backend.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.backend.state.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.gated {
            if let Some(g) = self.backend.state.gate.get() {
                g.release();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicI32;

    struct TwoProbes(AtomicI32);
    impl AdmissionGate for TwoProbes {
        fn try_admit(&self) -> bool {
            if self.0.fetch_add(1, Ordering::SeqCst) < 2 {
                true
            } else {
                self.0.fetch_sub(1, Ordering::SeqCst);
                false
            }
        }
        fn release(&self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
        fn state(&self) -> GateState {
            GateState::HalfOpen
        }
    }

    fn backend() -> Arc<Backend> {
        Arc::new(Backend::new("127.0.0.1:1".parse().unwrap()))
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_expires_with_the_clock() {
        let b = backend();
        let now = Instant::now();
        b.state().eject_until(now + Duration::from_secs(10));
        assert!(b.try_admit(Instant::now()).is_none());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(b.try_admit(Instant::now()).is_some());
    }

    #[tokio::test]
    async fn permits_count_in_flight_and_release_the_gate_on_drop() {
        let b = backend();
        b.state()
            .set_gate(Arc::new(TwoProbes(AtomicI32::new(0))))
            .ok()
            .unwrap();
        let now = Instant::now();
        let p1 = b.try_admit(now).unwrap();
        let p2 = b.try_admit(now).unwrap();
        assert!(b.try_admit(now).is_none(), "the gate admits exactly two");
        assert_eq!(b.state().in_flight(), 2);
        drop(p1);
        let p3 = b.try_admit(now).unwrap();
        drop((p2, p3));
        assert_eq!(b.state().in_flight(), 0);
    }

    #[tokio::test]
    async fn unhealthy_and_drained_backends_are_refused() {
        let b = backend();
        b.state().set_check_failed(true);
        assert!(b.try_admit(Instant::now()).is_none());
        assert!(b.try_admit_ignoring_health().is_some());
        b.state()
            .set_gate(Arc::new(TwoProbes(AtomicI32::new(2))))
            .ok()
            .unwrap();
        assert!(
            b.try_admit_ignoring_health().is_some(),
            "panic mode ignores the gate"
        );
        b.state().set_draining(true);
        assert!(b.try_admit_ignoring_health().is_none());
        let zero = Arc::new(Backend::new("127.0.0.1:2".parse().unwrap()).with_weight(0));
        assert!(zero.try_admit(Instant::now()).is_none());
    }

    #[test]
    fn the_removal_cap_counts_after_the_removal_and_shares_one_slot_per_backend() {
        let cap = Arc::new(RemovalCap::new(34));
        let bs: Vec<_> = (1..=3)
            .map(|p| Arc::new(Backend::new(([127, 0, 0, 1], p).into())))
            .collect();
        cap.attach(&bs);
        assert!(bs[0].state().try_remove(Removal::Ejected));
        // Removed for a second reason: same slot.
        assert!(bs[0].state().try_remove(Removal::BreakerOpen));
        assert_eq!(cap.removed(), 1);
        assert!(!bs[1].state().try_remove(Removal::Ejected), "2/3 > 34 %");
        assert!(!bs[2].state().try_remove(Removal::BreakerOpen));
        bs[0].state().restore(Removal::Ejected);
        assert_eq!(cap.removed(), 1, "still removed for its breaker");
        bs[0].state().restore(Removal::BreakerOpen);
        assert_eq!(cap.removed(), 0);
        assert!(bs[1].state().try_remove(Removal::Ejected));
        assert!(bs[1].state().is_removed_for(Removal::Ejected));

        let alone = Arc::new(Backend::new(([127, 0, 0, 1], 9).into()));
        Arc::new(RemovalCap::new(99)).attach(std::slice::from_ref(&alone));
        assert!(!alone.state().try_remove(Removal::Ejected), "never all");
        let uncapped = backend();
        assert!(uncapped.state().try_remove(Removal::Ejected));
    }

    #[test]
    fn latency_ewma_moves_toward_samples() {
        let s = BackendState::default();
        assert!(s.latency_ewma().is_none());
        s.record_latency(Duration::from_millis(10));
        s.record_latency(Duration::from_millis(20));
        let v = s.latency_ewma().unwrap().as_secs_f64() * 1000.0;
        assert!((v - 11.0).abs() < 0.01, "{v}");
    }

    #[test]
    fn only_outcomes_the_backend_caused_are_remembered() {
        let s = BackendState::default();
        let now = Instant::now();
        s.record_outcome(OutcomeClass::Success, Some(200), now);
        s.record_outcome(OutcomeClass::Success, Some(500), now);
        s.record_outcome(
            OutcomeClass::BackendFailure(ErrorKind::HttpStatus(503)),
            Some(503),
            now,
        );
        s.record_outcome(
            OutcomeClass::BackendFailure(ErrorKind::ConnectionReset),
            None,
            now,
        );
        assert_eq!(s.history().recent(), (4, 3));
        // Not the backend's doing, or not a failure: left out.
        s.record_outcome(
            OutcomeClass::BackendFailure(ErrorKind::HttpStatus(429)),
            Some(429),
            now,
        );
        s.record_outcome(OutcomeClass::Local(ErrorKind::DownstreamClosed), None, now);
        s.record_outcome(
            OutcomeClass::BackendFailure(ErrorKind::CircuitOpen),
            None,
            now,
        );
        assert_eq!(s.history().recent(), (4, 3));
    }

    /// At a high request rate a whole outage can fit inside one step: a
    /// normal verdict is looked at again after 16 failures, without waiting
    /// for the clock (which does not move here at all).
    #[test]
    fn failures_classify_again_within_a_step() {
        let backends: Vec<Arc<Backend>> = (0..3)
            .map(|i| Arc::new(Backend::new(([127, 0, 0, 1], 8000 + i).into())))
            .collect();
        let cap = Arc::new(RemovalCap::new(50));
        cap.attach(&backends);
        let now = Instant::now();
        assert_eq!(cap.spread().at(now).spread, crate::Spread::Normal);
        let (failing, healthy) = (&backends[0], &backends[1..]);
        // Enough attempts to judge, and a look taken after them.
        let rounds = crate::spread::MIN_ATTEMPTS + crate::spread::EARLY_AFTER_FAILURES;
        for _ in 0..rounds {
            for b in healthy {
                b.state()
                    .record_outcome(OutcomeClass::Success, Some(200), now);
            }
            failing
                .state()
                .record_outcome(OutcomeClass::Success, Some(503), now);
        }
        assert_eq!(cap.spread().last().spread, crate::Spread::Concentrated);
        // The step's own throttle still holds for successes.
        let before = cap.spread().last();
        healthy[0]
            .state()
            .record_outcome(OutcomeClass::Success, Some(200), now);
        assert_eq!(cap.spread().last(), before);
    }
}
