//! Circuit breakers: a gate in the request path plus a small state machine.
//!
//! ```text
//!             trip policy fires              open period ran out
//!   CLOSED ─────────────────────▶ OPEN ─────────────────────────▶ HALF-OPEN
//!     ▲    (consecutive failures,   ▲    (lazily, on admission)       │
//!     │     failure rate,           │    or on_backend_recovered      │
//!     │     slow-call rate)         └──────── any probe fails ────────┤
//!     └─────────────────── half_open_successes probes succeed ────────┘
//! ```
//!
//! The pattern is Michael Nygard's (*Release It!*, 2007). The count and time
//! windows, the minimum number of calls and the slow-call rate follow
//! Resilience4j's `CircuitBreaker`; the open period that grows on repeated
//! trips, with jitter, follows Envoy's outlier ejection; keeping the gate (a
//! word read on admission) apart from the policies that move it follows
//! linkerd2-proxy's `gate` and `breaker` modules.
//!
//! # Layout
//! - [`config`]: [`BreakerConfig`] and its trip policies.
//! - [`state`]: the packed state word and the [`Transition`]s it reports.
//! - `window`: the lock-free sliding windows of the rate policies.
//! - [`registry`]: [`BreakerRegistry`], one breaker per backend, fed by the
//!   engine's [`Observer`](detour_core::Observer) stream.
//! - `carry`: [`BreakerMemory`], what a breaker hands to the one replacing
//!   it when a reload rebuilds the upstream.
//!
//! # Cost
//! Admission while closed is one atomic load; releasing is one more. Recording
//! a success or a failure while closed is a few relaxed atomics (plus a clock
//! read only for time windows). Nothing on those paths allocates or locks; a
//! short mutex is taken only to change state.

mod carry;
pub mod config;
pub mod registry;
pub mod state;
mod window;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::Duration;

use detour_core::{AdmissionGate, Backend, GateState, OutcomeClass, Removal};
use tokio::time::Instant;

pub use self::carry::BreakerMemory;
pub use self::config::{BreakerConfig, FailureKind, FailureRate, SlowCall, Window};
use self::config::{FailureSet, Verdict};
pub use self::registry::{BreakerRegistry, GateTaken};
use self::state::{state_name, Mode, Word};
pub use self::state::{Transition, TransitionReason};
use self::window::RateWindow;
use crate::clock::{duration_nanos, Epoch};
use crate::pad::Padded;
use detour_core::InvalidConfig;

/// The gauge of breakers that are open or half-open.
const OPEN_GAUGE: &str = "detour_breakers_open";

/// A transition callback.
type TransitionFn = dyn Fn(&Transition) + Send + Sync + 'static;

/// Where transitions are reported; shared by all breakers of a registry.
#[derive(Default)]
pub(crate) struct Listeners {
    callback: RwLock<Option<Arc<TransitionFn>>>,
}

impl Listeners {
    pub(crate) fn set(&self, f: Arc<TransitionFn>) {
        *self
            .callback
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(f);
    }

    fn get(&self) -> Option<Arc<TransitionFn>> {
        self.callback
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The trip thresholds, unpacked from the config for the recording path.
#[derive(Debug, Clone, Copy)]
struct Policy {
    enabled: bool,
    consecutive: u32,
    failure_rate: Option<(f64, u32)>,
    /// (slower than, in ns; threshold; min calls)
    slow_call: Option<(u64, f64, u32)>,
    probes: u16,
    successes: u16,
    /// Whether recording needs the clock (a time window is configured).
    needs_clock: bool,
}

/// State that only changes with a transition, under the breaker's mutex.
#[derive(Debug)]
struct Inner {
    rng: fastrand::Rng,
    /// How many times the open period has grown: 0 is `open_for`.
    level: u32,
    /// When the breaker last closed (ns since the epoch).
    closed_at: Option<u64>,
    /// The backend whose removal slot and recovery time the breaker updates.
    /// Weak, so that the backend (which holds the breaker as its gate) and
    /// the breaker do not keep each other alive.
    backend: Weak<Backend>,
}

/// What an admission was granted in: the state's era, and whether it holds
/// one of the half-open probe slots.
#[derive(Debug, Clone, Copy)]
struct Ticket {
    era: u16,
    probe: bool,
}

/// A circuit breaker: closed (admits), open (refuses), half-open (admits a
/// bounded number of probes).
///
/// Use it alone — [`try_acquire`](Self::try_acquire), then
/// [`Admission::success`] or [`Admission::failure`] — or let a
/// [`BreakerRegistry`] install it as a backend's
/// [`AdmissionGate`] and feed it from the engine's outcomes.
///
/// ```
/// use std::time::Duration;
/// use detour_breaker::{BreakerConfig, CircuitBreaker};
/// use detour_core::GateState;
///
/// let mut cfg = BreakerConfig::default();
/// cfg.consecutive_failures = 2;
/// let breaker = CircuitBreaker::new(cfg).unwrap();
/// for _ in 0..2 {
///     let admission = breaker.try_acquire().expect("closed");
///     // ... call the service; it failed:
///     admission.failure();
/// }
/// assert_eq!(breaker.state(), GateState::Open);
/// assert!(breaker.try_acquire().is_none());
/// assert!(breaker.retry_after().unwrap() <= Duration::from_secs(30));
/// ```
pub struct CircuitBreaker {
    /// Read by every admission: kept apart from what every outcome writes.
    word: Padded<AtomicU64>,
    consecutive: Padded<AtomicU32>,
    failure_window: Option<RateWindow>,
    slow_window: Option<RateWindow>,
    /// When the current half-open period began (ns since the epoch).
    half_open_since: AtomicU64,
    /// The era of the half-open period an active check began (era + 1; 0:
    /// none), see [`half_open_by_check`](Self::half_open_by_check).
    checked_era: AtomicU32,
    trips: AtomicU64,
    /// A trip was refused by the removal cap and has not been logged since.
    refused: AtomicBool,
    epoch: Epoch,
    policy: Policy,
    failures: FailureSet,
    config: BreakerConfig,
    addr: Option<SocketAddr>,
    upstream: Option<Arc<str>>,
    inner: Mutex<Inner>,
    listeners: Arc<Listeners>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("addr", &self.addr)
            .field("word", &self.load())
            .field("consecutive", &self.consecutive.load(Ordering::Relaxed))
            .field("trips", &self.trips())
            .finish_non_exhaustive()
    }
}

/// A breaker's state for status pages.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerSnapshot {
    /// The backend's address (`None` for a standalone breaker).
    pub addr: Option<SocketAddr>,
    /// Closed, open or half-open.
    pub state: GateState,
    /// Times it has opened since it was made.
    pub trips: u64,
    /// While open: time left until it lets probes through.
    pub half_open_in: Option<Duration>,
    /// Failures in a row counted while closed.
    pub consecutive_failures: u32,
    /// While half-open: probes in flight.
    pub probes_in_flight: u32,
}

impl CircuitBreaker {
    /// A standalone breaker (no backend: nothing caps its removal).
    ///
    /// # Errors
    /// [`InvalidConfig`] when `config` does not [validate](BreakerConfig::validate).
    pub fn new(config: BreakerConfig) -> Result<Self, InvalidConfig> {
        config.validate()?;
        Ok(Self::build(config, None, None, Arc::default()))
    }

    /// A breaker from a validated config.
    pub(crate) fn build(
        config: BreakerConfig,
        addr: Option<SocketAddr>,
        upstream: Option<Arc<str>>,
        listeners: Arc<Listeners>,
    ) -> Self {
        let failure_window = config
            .failure_rate
            .as_ref()
            .map(|r| RateWindow::new(r.window));
        let slow_window = config.slow_call.as_ref().map(|s| RateWindow::new(s.window));
        let needs_clock = failure_window.as_ref().is_some_and(RateWindow::needs_clock)
            || slow_window.as_ref().is_some_and(RateWindow::needs_clock);
        let policy = Policy {
            enabled: config.enabled,
            consecutive: config.consecutive_failures,
            failure_rate: config
                .failure_rate
                .as_ref()
                .map(|r| (r.threshold, r.min_calls)),
            slow_call: config
                .slow_call
                .as_ref()
                .map(|s| (duration_nanos(s.slower_than), s.threshold, s.min_calls)),
            // Validated to fit 16 bits; saturate anyway rather than wrap.
            probes: u16::try_from(config.half_open_probes).unwrap_or(u16::MAX),
            successes: u16::try_from(config.half_open_successes).unwrap_or(u16::MAX),
            needs_clock,
        };
        CircuitBreaker {
            word: Padded(AtomicU64::new(Word::closed(0).0)),
            consecutive: Padded(AtomicU32::new(0)),
            failure_window,
            slow_window,
            half_open_since: AtomicU64::new(0),
            checked_era: AtomicU32::new(0),
            trips: AtomicU64::new(0),
            refused: AtomicBool::new(false),
            epoch: Epoch::now(),
            policy,
            failures: FailureSet::new(&config),
            config,
            addr,
            upstream,
            inner: Mutex::new(Inner {
                rng: fastrand::Rng::new(),
                level: 0,
                closed_at: None,
                backend: Weak::new(),
            }),
            listeners,
        }
    }

    /// Seed the jitter's random numbers, for reproducible open periods.
    pub fn with_seed(self, seed: u64) -> Self {
        self.lock().rng = fastrand::Rng::with_seed(seed);
        self
    }

    /// Call `f` on every transition of this breaker. For a breaker that
    /// belongs to a [`BreakerRegistry`] this is the registry's callback,
    /// shared by all its breakers (see [`BreakerRegistry::on_transition`]).
    pub fn on_transition(&self, f: impl Fn(&Transition) + Send + Sync + 'static) {
        self.listeners.set(Arc::new(f));
    }

    /// The configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The backend's address, for a breaker of a registry.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The upstream's name, for a breaker of a named registry
    /// ([`BreakerRegistry::with_upstream`]).
    pub fn upstream(&self) -> Option<&str> {
        self.upstream.as_deref()
    }

    /// Times the breaker has opened.
    pub fn trips(&self) -> u64 {
        self.trips.load(Ordering::Relaxed)
    }

    /// The state now. An open breaker whose open period ran out becomes
    /// half-open here (and reports it), so a status page never shows a breaker
    /// as open after it would already admit a probe.
    pub fn state(&self) -> GateState {
        let w = self.load();
        if w.mode() == Mode::Open && self.epoch.elapsed_nanos() >= w.until_nanos() {
            self.leave_open(w, TransitionReason::OpenElapsed, false);
            return self.load().gate_state();
        }
        w.gate_state()
    }

    /// Whether it is half-open because an active check saw its backend come
    /// back (`on_backend_recovered`), rather than because its open period
    /// ran out. Such a breaker's probe limit may give way when every backend
    /// available is at its limit (see `Backend::try_admit_beyond_probes`).
    pub fn half_open_by_check(&self) -> bool {
        let w = self.load();
        w.mode() == Mode::HalfOpen
            && self.checked_era.load(Ordering::Acquire) == u32::from(w.era()) + 1
    }

    /// While open: the time until it lets probes through (zero when that time
    /// has come and the next admission will do it). `None` when closed or
    /// half-open.
    pub fn retry_after(&self) -> Option<Duration> {
        let w = self.load();
        (w.mode() == Mode::Open).then(|| {
            Duration::from_nanos(w.until_nanos().saturating_sub(self.epoch.elapsed_nanos()))
        })
    }

    /// The state, trips and timers, for a status page.
    pub fn snapshot(&self) -> BreakerSnapshot {
        let state = self.state();
        let w = self.load();
        BreakerSnapshot {
            addr: self.addr,
            state,
            trips: self.trips(),
            half_open_in: self.retry_after(),
            consecutive_failures: self.consecutive.load(Ordering::Relaxed),
            probes_in_flight: if w.mode() == Mode::HalfOpen {
                u32::from(w.probes())
            } else {
                0
            },
        }
    }

    /// Ask to make one call. `None` while open, or while half-open with every
    /// probe slot taken. Record the outcome on the [`Admission`]; dropping it
    /// without one (a cancelled call) frees its slot and records nothing.
    pub fn try_acquire(&self) -> Option<Admission<'_>> {
        self.admit().map(|ticket| Admission {
            breaker: self,
            ticket,
            started: self.start_clock(),
        })
    }

    /// [`try_acquire`](Self::try_acquire) for an `Arc`-held breaker: the
    /// admission can move to another task.
    pub fn try_acquire_owned(self: &Arc<Self>) -> Option<OwnedAdmission> {
        self.admit().map(|ticket| OwnedAdmission {
            breaker: Arc::clone(self),
            ticket,
            started: self.start_clock(),
        })
    }

    /// Record a successful call that took `latency` (admitted through the
    /// [`AdmissionGate`] or not admitted through this breaker at all).
    pub fn record_success(&self, latency: Duration) {
        self.record(false, latency, None);
    }

    /// Record a failed call that took `latency`.
    pub fn record_failure(&self, latency: Duration) {
        self.record(true, latency, None);
    }

    /// Record an attempt's outcome as the engine classifies it: `Local`
    /// outcomes never count; a backend failure counts when its status is in
    /// [`failure_statuses`](BreakerConfig::failure_statuses) or its error in
    /// [`failure_kinds`](BreakerConfig::failure_kinds). Any other status is a
    /// success (the backend answered); any other error is ignored.
    pub fn record_outcome(&self, class: OutcomeClass, latency: Duration) {
        let verdict = match class {
            OutcomeClass::Success => Verdict::Success,
            OutcomeClass::BackendFailure(kind) => self.failures.judge(kind),
            OutcomeClass::Local(_) => Verdict::Ignore,
        };
        match verdict {
            Verdict::Success => self.record(false, latency, None),
            Verdict::Failure => self.record(true, latency, None),
            Verdict::Ignore => {}
        }
    }

    /// Close the breaker now, whatever its state (an operator's override).
    pub fn reset(&self) {
        let w = self.load();
        if w.mode() != Mode::Closed {
            self.close(w, TransitionReason::Reset);
        }
    }

    // ---- admission ----------------------------------------------------------

    /// When an [`Admission`] starts, if its latency matters: only the
    /// slow-call policy reads it (an admission's era already says which state
    /// its outcome belongs to), so without one no clock is read.
    fn start_clock(&self) -> Option<Instant> {
        self.policy.slow_call.map(|_| Instant::now())
    }

    fn load(&self) -> Word {
        Word(self.word.load(Ordering::Acquire))
    }

    fn cas(&self, cur: Word, new: Word) -> Result<(), Word> {
        self.word
            .compare_exchange(cur.0, new.0, Ordering::AcqRel, Ordering::Acquire)
            .map(drop)
            .map_err(Word)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The guarded data is plain values, valid after any panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn admit(&self) -> Option<Ticket> {
        let mut w = self.load();
        loop {
            match w.mode() {
                Mode::Closed => {
                    return Some(Ticket {
                        era: w.era(),
                        probe: false,
                    })
                }
                Mode::Open => {
                    // The open period is judged lazily, here, so a breaker
                    // needs no timer and cannot stay open for want of one.
                    if self.epoch.elapsed_nanos() < w.until_nanos() {
                        return None;
                    }
                    match self.leave_open(w, TransitionReason::OpenElapsed, true) {
                        Some(era) => return Some(Ticket { era, probe: true }),
                        None => w = self.load(),
                    }
                }
                Mode::HalfOpen => {
                    if w.probes() >= self.policy.probes {
                        return None;
                    }
                    match self.cas(w, w.with_probes(w.probes() + 1)) {
                        Ok(()) => {
                            return Some(Ticket {
                                era: w.era(),
                                probe: true,
                            })
                        }
                        Err(actual) => w = actual,
                    }
                }
            }
        }
    }

    /// Open → half-open, taking the first probe slot when `take_probe`.
    /// Returns the new era, or `None` if another thread moved the state first.
    fn leave_open(&self, from: Word, reason: TransitionReason, take_probe: bool) -> Option<u16> {
        let next = Word::half_open(from.next_era(), u16::from(take_probe), 0);
        self.cas(from, next).ok()?;
        self.half_open_since
            .store(self.epoch.elapsed_nanos(), Ordering::Release);
        match reason {
            TransitionReason::BackendRecovered => self.vouch(next.era()),
            _ => self.checked_era.store(0, Ordering::Release),
        }
        self.emit(Transition {
            addr: self.addr,
            upstream: self.upstream.clone(),
            from: GateState::Open,
            to: GateState::HalfOpen,
            reason,
            open_for: None,
            trips: self.trips(),
        });
        Some(next.era())
    }

    /// Release a slot taken through the [`AdmissionGate`], which cannot say
    /// which admission it was. While half-open, it frees a probe slot. A
    /// permit taken while closed and released during a later half-open period
    /// frees one too, so such a period may admit more probes than configured
    /// (never fewer: a released slot is never lost, so a cancelled request
    /// cannot wedge the breaker).
    fn release_untracked(&self) {
        let mut w = self.load();
        while w.mode() == Mode::HalfOpen && w.probes() > 0 {
            match self.cas(w, w.with_probes(w.probes() - 1)) {
                Ok(()) => return,
                Err(actual) => w = actual,
            }
        }
    }

    /// Release an [`Admission`]: exact, since the ticket says whether it held
    /// a probe slot of the current half-open period.
    fn release_ticket(&self, t: Ticket) {
        if !t.probe {
            return;
        }
        let mut w = self.load();
        while w.mode() == Mode::HalfOpen && w.era() == t.era && w.probes() > 0 {
            match self.cas(w, w.with_probes(w.probes() - 1)) {
                Ok(()) => return,
                Err(actual) => w = actual,
            }
        }
    }

    // ---- recording ----------------------------------------------------------

    /// Record one outcome. `era` is the admission's, when known: an outcome
    /// admitted in an earlier state says nothing about this one.
    fn record(&self, failed: bool, latency: Duration, era: Option<u16>) {
        if !self.policy.enabled {
            return;
        }
        let w = self.load();
        if era.is_some_and(|e| e != w.era()) {
            return;
        }
        match w.mode() {
            Mode::Closed => self.record_closed(w, failed, latency),
            // Calls admitted before the trip finishing now: already judged.
            Mode::Open => {}
            Mode::HalfOpen => {
                if era.is_none() && !self.started_while_half_open(latency) {
                    return;
                }
                if failed {
                    self.trip(w, TransitionReason::ProbeFailed);
                } else {
                    self.probe_succeeded(w);
                }
            }
        }
    }

    /// Whether a call that ended now after `latency` began in the current
    /// half-open period: only those are probes. A call admitted before the
    /// trip may still be running (a slow timeout); its failure must not
    /// re-open the breaker, nor its success close it.
    fn started_while_half_open(&self, latency: Duration) -> bool {
        let started = self
            .epoch
            .elapsed_nanos()
            .saturating_sub(duration_nanos(latency));
        started >= self.half_open_since.load(Ordering::Acquire)
    }

    fn record_closed(&self, w: Word, failed: bool, latency: Duration) {
        let p = &self.policy;
        let now = if p.needs_clock {
            self.epoch.elapsed_nanos()
        } else {
            0
        };
        let mut reason = None;
        if failed {
            let n = self
                .consecutive
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_add(1);
            if p.consecutive != 0 && n >= p.consecutive {
                reason = Some(TransitionReason::ConsecutiveFailures);
            }
        } else if self.consecutive.load(Ordering::Relaxed) != 0 {
            // Load first: a success while nothing is counted writes nothing,
            // so the cache line stays shared between threads.
            self.consecutive.store(0, Ordering::Relaxed);
            self.refused.store(false, Ordering::Relaxed);
        }
        if let (Some(win), Some((threshold, min_calls))) = (&self.failure_window, p.failure_rate) {
            win.record(failed, now);
            if failed && reason.is_none() && win.tally(now).reaches(threshold, min_calls) {
                reason = Some(TransitionReason::FailureRate);
            }
        }
        if let (Some(win), Some((slower_than, threshold, min_calls))) =
            (&self.slow_window, p.slow_call)
        {
            let slow = duration_nanos(latency) >= slower_than;
            win.record(slow, now);
            if slow && reason.is_none() && win.tally(now).reaches(threshold, min_calls) {
                reason = Some(TransitionReason::SlowCallRate);
            }
        }
        if let Some(reason) = reason {
            self.trip(w, reason);
        }
    }

    fn probe_succeeded(&self, mut w: Word) {
        let era = w.era();
        loop {
            let successes = w.successes().saturating_add(1);
            match self.cas(w, w.with_successes(successes)) {
                Ok(()) => {
                    if successes >= self.policy.successes {
                        self.close(w, TransitionReason::ProbesSucceeded);
                    }
                    return;
                }
                Err(actual) => {
                    if actual.mode() != Mode::HalfOpen || actual.era() != era {
                        return;
                    }
                    w = actual;
                }
            }
        }
    }

    // ---- transitions --------------------------------------------------------

    /// Closed or half-open → open. Taken under the mutex, so that the removal
    /// slot is acquired and the state published as one step against a close
    /// releasing it.
    fn trip(&self, from: Word, reason: TransitionReason) {
        let mut inner = self.lock();
        let mut cur = self.load();
        // Only transitions change the era, and those from closed or half-open
        // happen under this lock: same era, same state.
        if cur.era() != from.era() || cur.mode() != from.mode() {
            return;
        }
        if let Some(backend) = inner.backend.upgrade() {
            if !backend.state().try_remove(Removal::BreakerOpen) {
                if from.mode() == Mode::HalfOpen {
                    // A half-open breaker holds its slot from the trip; if it
                    // was lost and the cap refuses it, stay in service.
                    let t = self.close_locked(&mut inner, cur, TransitionReason::RemovalRefused);
                    drop(inner);
                    self.emit(t);
                } else {
                    drop(inner);
                    self.trip_refused(reason);
                }
                return;
            }
        }
        let now = self.epoch.elapsed_nanos();
        let max_open = duration_nanos(self.config.max_open_for);
        let repeated = from.mode() == Mode::HalfOpen
            || inner
                .closed_at
                .is_some_and(|c| now.saturating_sub(c) < max_open);
        let level = if repeated {
            inner.level.saturating_add(1)
        } else {
            0
        };
        let open_for = self.open_period(level, &mut inner.rng);
        let until_ms = now
            .saturating_add(duration_nanos(open_for))
            .div_ceil(1_000_000);
        loop {
            match self.cas(cur, Word::open(cur.next_era(), until_ms)) {
                Ok(()) => break,
                // Only the probe count can have moved (admissions are lock-free).
                Err(actual) => cur = actual,
            }
        }
        inner.level = level;
        let trips = self.trips.fetch_add(1, Ordering::Relaxed) + 1;
        self.refused.store(false, Ordering::Relaxed);
        drop(inner);
        self.emit(Transition {
            addr: self.addr,
            upstream: self.upstream.clone(),
            from: from.gate_state(),
            to: GateState::Open,
            reason,
            open_for: Some(open_for),
            trips,
        });
    }

    /// `open_for × multiplier^level`, capped, then jittered downward.
    fn open_period(&self, level: u32, rng: &mut fastrand::Rng) -> Duration {
        let c = &self.config;
        let exp = i32::try_from(level.min(1_000)).unwrap_or(1_000);
        let grown = c.open_for.as_secs_f64() * c.open_multiplier.powi(exp);
        let capped = grown.min(c.max_open_for.as_secs_f64());
        let jittered = capped * (1.0 - c.jitter * rng.f64());
        Duration::try_from_secs_f64(jittered).unwrap_or(c.max_open_for)
    }

    /// The removal cap said no: the breaker stays closed and keeps counting,
    /// so it trips on the next failure once the cap has room again.
    fn trip_refused(&self, reason: TransitionReason) {
        match &self.upstream {
            Some(u) => metrics::counter!(
                "detour_breaker_trips_refused_total", "upstream" => u.to_string()
            )
            .increment(1),
            None => metrics::counter!("detour_breaker_trips_refused_total").increment(1),
        }
        if !self.refused.swap(true, Ordering::Relaxed) {
            tracing::info!(
                upstream = self.upstream.as_deref(),
                backend = self.addr.map(tracing::field::display),
                reason = reason.as_str(),
                "circuit breaker stays closed: the upstream's removal cap is used up"
            );
        }
    }

    /// Half-open (or open, for a reset) → closed.
    fn close(&self, from: Word, reason: TransitionReason) {
        let mut inner = self.lock();
        let cur = self.load();
        if cur.mode() == Mode::Closed || cur.era() != from.era() {
            return;
        }
        let t = self.close_locked(&mut inner, cur, reason);
        drop(inner);
        self.emit(t);
    }

    fn close_locked(
        &self,
        inner: &mut Inner,
        mut cur: Word,
        reason: TransitionReason,
    ) -> Transition {
        // Counters start afresh: nothing is recorded into them while open or
        // half-open, so this is the one place to clear them.
        self.consecutive.store(0, Ordering::Relaxed);
        for w in [&self.failure_window, &self.slow_window]
            .into_iter()
            .flatten()
        {
            w.reset();
        }
        self.refused.store(false, Ordering::Relaxed);
        loop {
            match self.cas(cur, Word::closed(cur.next_era())) {
                Ok(()) => break,
                // Probe counts move lock-free, and a reset may race the
                // lock-free open → half-open.
                Err(actual) => cur = actual,
            }
        }
        inner.closed_at = Some(self.epoch.elapsed_nanos());
        if let Some(backend) = inner.backend.upgrade() {
            backend.state().restore(Removal::BreakerOpen);
            backend.state().mark_recovered(Instant::now());
        }
        Transition {
            addr: self.addr,
            upstream: self.upstream.clone(),
            from: cur.gate_state(),
            to: GateState::Closed,
            reason,
            open_for: None,
            trips: self.trips(),
        }
    }

    /// Mark half-open period `era` as begun, or confirmed, by an active
    /// check. Stored after the state word moved: a reader in between sees
    /// an older era and answers no, erring toward the probe limit.
    pub(crate) fn vouch(&self, era: u16) {
        self.checked_era
            .store(u32::from(era) + 1, Ordering::Release);
    }

    /// An active check saw the backend come back: open → half-open at once.
    /// A breaker already half-open (its open period ran out first, read by
    /// a status page or an admission) is vouched for from now on.
    fn backend_recovered(&self) {
        let mut w = self.load();
        if w.mode() == Mode::HalfOpen {
            self.vouch(w.era());
            return;
        }
        while w.mode() == Mode::Open {
            if self
                .leave_open(w, TransitionReason::BackendRecovered, false)
                .is_some()
            {
                return;
            }
            w = self.load();
        }
    }

    /// Bind the breaker to `backend` (a registry's attach). If it is open or
    /// half-open, its removal slot moves from the old backend to the new one.
    pub(crate) fn bind(&self, backend: &Arc<Backend>) {
        let mut inner = self.lock();
        let old = inner.backend.upgrade();
        if old.as_ref().is_some_and(|o| Arc::ptr_eq(o, backend)) {
            return;
        }
        inner.backend = Arc::downgrade(backend);
        let cur = self.load();
        if cur.mode() == Mode::Closed {
            return;
        }
        if let Some(old) = old {
            old.state().restore(Removal::BreakerOpen);
        }
        if !backend.state().try_remove(Removal::BreakerOpen) {
            let t = self.close_locked(&mut inner, cur, TransitionReason::RemovalRefused);
            drop(inner);
            self.emit(t);
        }
    }

    /// Forget the backend, giving back its removal slot.
    pub(crate) fn unbind(&self) {
        let mut inner = self.lock();
        if let Some(old) = inner.backend.upgrade() {
            old.state().restore(Removal::BreakerOpen);
        }
        inner.backend = Weak::new();
    }

    /// Report a transition: a `tracing` event, metrics, the callback. Called
    /// with no lock held, so the callback may use the breaker or its registry.
    fn emit(&self, t: Transition) {
        let backend = t.addr.map(tracing::field::display);
        let upstream = t.upstream.as_deref();
        let (from, to) = (state_name(t.from), state_name(t.to));
        match t.to {
            GateState::Open => tracing::warn!(
                upstream,
                backend,
                from,
                reason = t.reason.as_str(),
                open_for = ?t.open_for,
                trips = t.trips,
                "circuit breaker opened"
            ),
            GateState::HalfOpen => tracing::info!(
                upstream,
                backend,
                reason = t.reason.as_str(),
                "circuit breaker half-open: probing"
            ),
            GateState::Closed => tracing::info!(
                upstream,
                backend,
                from,
                reason = t.reason.as_str(),
                "circuit breaker closed"
            ),
        }
        match upstream {
            Some(u) => metrics::counter!(
                "detour_breaker_transitions_total", "to" => to, "upstream" => u.to_owned()
            )
            .increment(1),
            None => metrics::counter!("detour_breaker_transitions_total", "to" => to).increment(1),
        }
        // Breakers out of normal service (open or half-open). The per-backend
        // state gauge is the binary's to publish, at scrape time.
        match (t.from, t.to) {
            (GateState::Closed, _) => metrics::gauge!(OPEN_GAUGE).increment(1.0),
            (_, GateState::Closed) => metrics::gauge!(OPEN_GAUGE).decrement(1.0),
            _ => {}
        }
        if let Some(f) = self.listeners.get() {
            f(&t);
        }
    }
}

impl Drop for CircuitBreaker {
    fn drop(&mut self) {
        if self.load().mode() != Mode::Closed {
            metrics::gauge!(OPEN_GAUGE).decrement(1.0);
        }
    }
}

impl AdmissionGate for CircuitBreaker {
    fn try_admit(&self) -> bool {
        self.admit().is_some()
    }

    fn release(&self) {
        self.release_untracked();
    }

    fn state(&self) -> GateState {
        CircuitBreaker::state(self)
    }

    fn retry_after(&self) -> Option<Duration> {
        CircuitBreaker::retry_after(self)
    }

    fn on_backend_recovered(&self) {
        self.backend_recovered();
    }

    fn half_open_by_check(&self) -> bool {
        CircuitBreaker::half_open_by_check(self)
    }
}

fn latency(started: Option<Instant>) -> Duration {
    started.map_or(Duration::ZERO, |s| s.elapsed())
}

/// One admitted call of a standalone [`CircuitBreaker`]. Record how it went
/// with [`success`](Self::success) or [`failure`](Self::failure); dropping it
/// without either (a cancelled call) frees its slot and records nothing.
///
/// The call's latency (for the slow-call policy) is measured from
/// [`CircuitBreaker::try_acquire`] (only when that policy is configured). An outcome is only counted in the state
/// the call was admitted in, so a call admitted before a trip cannot close or
/// re-open the breaker later.
#[must_use = "dropping an admission releases it at once, recording nothing"]
#[derive(Debug)]
pub struct Admission<'a> {
    breaker: &'a CircuitBreaker,
    ticket: Ticket,
    started: Option<Instant>,
}

impl Admission<'_> {
    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.ticket.probe
    }

    /// The call succeeded.
    pub fn success(self) {
        self.breaker
            .record(false, latency(self.started), Some(self.ticket.era));
    }

    /// The call failed.
    pub fn failure(self) {
        self.breaker
            .record(true, latency(self.started), Some(self.ticket.era));
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.breaker.release_ticket(self.ticket);
    }
}

/// [`Admission`] holding an `Arc` of its breaker, from
/// [`CircuitBreaker::try_acquire_owned`].
#[must_use = "dropping an admission releases it at once, recording nothing"]
#[derive(Debug)]
pub struct OwnedAdmission {
    breaker: Arc<CircuitBreaker>,
    ticket: Ticket,
    started: Option<Instant>,
}

impl OwnedAdmission {
    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.ticket.probe
    }

    /// The call succeeded.
    pub fn success(self) {
        self.breaker
            .record(false, latency(self.started), Some(self.ticket.era));
    }

    /// The call failed.
    pub fn failure(self) {
        self.breaker
            .record(true, latency(self.started), Some(self.ticket.era));
    }
}

impl Drop for OwnedAdmission {
    fn drop(&mut self) {
        self.breaker.release_ticket(self.ticket);
    }
}

#[cfg(test)]
mod tests;
