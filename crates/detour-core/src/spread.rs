//! How failure is spread across an upstream's backends, which tells two
//! partial outages apart that look alike to a retry budget:
//!
//! - **Concentrated**: some backends fail and others are clearly healthy (a
//!   bad canary, a broken deploy). Retrying elsewhere works, so retries are
//!   not held back by the budget, and the failing backends may be removed
//!   beyond the upstream's removal ceiling, as long as a clearly healthy
//!   backend stays in service.
//! - **Correlated**: every backend fails at a similar, substantial rate (a
//!   shared dependency down, an overload). Retrying elsewhere cannot help and
//!   only multiplies the load, so retries of attempts that reached a backend
//!   stop (the *correlated brake*, `RetryPolicy::correlated_brake`).
//!
//! The signal is each backend's last [`HISTORY`] attempts ([`History`], kept
//! in its [`BackendState`](crate::BackendState)), not a count over the
//! upstream: a count cannot say whether the failures sit on a few backends or
//! on all of them. [`classify`] is the pure rule; [`FailureSpread`] applies it
//! to an upstream's members at most once per [`STEP`] (sooner after
//! [`EARLY_AFTER_FAILURES`] failures under a normal verdict). It reads them through
//! [`SpreadMember`], which [`Backend`](crate::Backend) implements, so the
//! spread never depends on the backend module that owns a history.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::to_nanos;

/// Attempts each backend's history remembers.
pub const HISTORY: u32 = 56;
/// Attempts in its history before a backend's failure rate is trusted.
pub const MIN_ATTEMPTS: u32 = 20;
/// A backend failing at most this share of its recent attempts is clearly
/// healthy.
pub const HEALTHY_AT_MOST: f64 = 0.10;
/// ...and failing at most [`LATEST_HEALTHY_FAILURES`] of its last
/// [`LATEST`] attempts: a history still full of the successes from before
/// an outage must not vouch for a backend that fails now. Otherwise, at the
/// start of an outage of every backend, the first one removed makes the
/// failure look concentrated, retries go past the budget, their backoff
/// slows the traffic, and the stale histories then turn over too slowly to
/// end it (seen for about a second in the chaos `chained` scenario).
pub const LATEST: u32 = 8;
/// See [`LATEST`].
pub const LATEST_HEALTHY_FAILURES: u32 = 1;
/// A backend failing at least this share of its recent attempts is failing.
pub const FAILING_AT_LEAST: f64 = 0.50;
/// In a correlated failure every backend fails at least this share...
pub const CORRELATED_AT_LEAST: f64 = 0.25;
/// ...and the best backend fails at least this fraction as often as the
/// worst: the failure is spread evenly.
pub const CORRELATED_EVENNESS: f64 = 0.5;
/// How often an upstream is classified again, at most...
pub const STEP: Duration = Duration::from_millis(100);
/// ...unless its verdict is normal and this many failures were recorded
/// since the last classification: at a high request rate a step holds
/// hundreds of requests, and an outage must not wait for the clock to be
/// told apart (a failure-free upstream never pays for this).
pub const EARLY_AFTER_FAILURES: u32 = 16;
/// An upstream with no attempt for this long forgets its histories: what
/// they say is too old to steer retries.
pub const FORGET_AFTER: Duration = Duration::from_secs(60);

/// How failure is spread across an upstream's backends now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum Spread {
    /// No clear pattern (or too few attempts to tell): the retry budget and
    /// the removal ceiling apply as configured.
    #[default]
    Normal = 0,
    /// Some backends fail while others are clearly healthy.
    Concentrated = 1,
    /// Every backend fails at a similar, substantial rate.
    Correlated = 2,
}

impl Spread {
    /// The name in logs, metrics and status pages: `normal`, `concentrated`,
    /// `correlated`.
    pub fn as_str(self) -> &'static str {
        match self {
            Spread::Normal => "normal",
            Spread::Concentrated => "concentrated",
            Spread::Correlated => "correlated",
        }
    }

    fn from_bits(bits: u64) -> Spread {
        match bits & 0xff {
            1 => Spread::Concentrated,
            2 => Spread::Correlated,
            _ => Spread::Normal,
        }
    }
}

impl fmt::Display for Spread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One backend's last [`HISTORY`] attempts: a bit per attempt (1 = failed)
/// and how many bits are filled, in one atomic word. Lock-free.
#[derive(Debug, Default)]
pub struct History(AtomicU64);

/// The history's bits; the count sits above them.
const BITS: u64 = (1 << HISTORY) - 1;

/// Of history word `v`, the last `last` attempts (fewer when fewer were
/// made) and how many of them failed.
fn failures_among(v: u64, last: u32) -> (u32, u32) {
    let count = (v >> HISTORY).min(u64::from(last)) as u32;
    let window = if count >= HISTORY {
        BITS
    } else {
        (1u64 << count) - 1
    };
    (count, (v & window).count_ones())
}

impl History {
    /// Remember one attempt, forgetting the oldest when full.
    pub fn record(&self, failed: bool) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                let count = (v >> HISTORY).min(u64::from(HISTORY));
                let bits = ((v << 1) | u64::from(failed)) & BITS;
                Some((((count + 1).min(u64::from(HISTORY))) << HISTORY) | bits)
            });
    }

    /// Failures among the last [`LATEST`] attempts (fewer when fewer were
    /// made).
    pub fn latest_failures(&self) -> u32 {
        failures_among(self.0.load(Ordering::Relaxed), LATEST).1
    }

    /// Attempts and failures remembered now.
    pub fn recent(&self) -> (u32, u32) {
        failures_among(self.0.load(Ordering::Relaxed), HISTORY)
    }

    /// The history as one backend's [`Member`], read at once.
    fn member(&self, removed: bool) -> Member {
        let v = self.0.load(Ordering::Relaxed);
        let (attempts, failures) = failures_among(v, HISTORY);
        Member {
            attempts,
            failures,
            latest_failures: failures_among(v, LATEST).1,
            removed,
        }
    }

    /// Take over `other`'s attempts (a reload hands a backend's history to
    /// the backend that replaces it).
    pub fn copy_from(&self, other: &History) {
        self.0
            .store(other.0.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Forget everything.
    pub fn clear(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

/// One backend as [`classify`] sees it. Backends the active checks took
/// out, draining ones and those of weight 0 are left out by the caller:
/// they take no traffic whatever the spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Attempts in its history.
    pub attempts: u32,
    /// Of which failed.
    pub failures: u32,
    /// Failures among its last [`LATEST`] attempts.
    pub latest_failures: u32,
    /// Passively removed now (ejected, or its breaker open): it left for
    /// failing, so it counts as failing whatever its history says.
    pub removed: bool,
}

impl Member {
    fn rate(self) -> Option<f64> {
        if self.removed {
            Some(1.0)
        } else if self.attempts >= MIN_ATTEMPTS {
            Some(f64::from(self.failures) / f64::from(self.attempts))
        } else {
            None
        }
    }

    /// In service, enough attempts, failing at most [`HEALTHY_AT_MOST`], and
    /// at most [`LATEST_HEALTHY_FAILURES`] of its last [`LATEST`].
    pub fn is_healthy(self) -> bool {
        !self.removed
            && self.latest_failures <= LATEST_HEALTHY_FAILURES
            && self.rate().is_some_and(|r| r <= HEALTHY_AT_MOST)
    }
}

/// The classification of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Verdict {
    /// The state.
    pub spread: Spread,
    /// Backends in service and clearly healthy.
    pub healthy: u32,
    /// Backends failing (removed, or failing at least [`FAILING_AT_LEAST`]).
    pub failing: u32,
}

/// The rule. Only backends with enough attempts (or passively removed) are
/// judged, and at least two must be:
///
/// - **Concentrated** when at least one is clearly healthy (in service,
///   failing at most [`HEALTHY_AT_MOST`]) and at least one is failing
///   (removed, or failing at least [`FAILING_AT_LEAST`]).
/// - **Correlated** when none is clearly healthy, at least one in service is
///   judged, every judged backend fails at least [`CORRELATED_AT_LEAST`], and
///   the best fails at least [`CORRELATED_EVENNESS`] times as often as the
///   worst (a removed backend counts as failing every attempt).
/// - **Normal** otherwise.
pub fn classify(members: &[Member]) -> Verdict {
    let (mut judged, mut live, mut healthy, mut failing) = (0u32, 0u32, 0u32, 0u32);
    let (mut best, mut worst) = (1.0f64, 0.0f64);
    for m in members {
        let Some(rate) = m.rate() else { continue };
        judged += 1;
        live += u32::from(!m.removed);
        healthy += u32::from(m.is_healthy());
        failing += u32::from(rate >= FAILING_AT_LEAST);
        best = best.min(rate);
        worst = worst.max(rate);
    }
    let spread = if judged < 2 {
        Spread::Normal
    } else if healthy > 0 && failing > 0 {
        Spread::Concentrated
    } else if healthy == 0
        && live > 0
        && best >= CORRELATED_AT_LEAST
        && best >= CORRELATED_EVENNESS * worst
    {
        Spread::Correlated
    } else {
        Spread::Normal
    };
    Verdict {
        spread,
        healthy,
        failing,
    }
}

/// One backend of an upstream as [`FailureSpread`] reads it.
/// [`Backend`](crate::Backend) implements it; the spread holds its members
/// weakly, so a backend gone from the upstream is simply skipped.
pub trait SpreadMember: Send + Sync {
    /// Whether the backend takes traffic at all now. Backends of weight 0,
    /// taken out by the active checks, or draining are left out of
    /// [`classify`]: they take no traffic whatever the spread.
    fn in_rotation(&self) -> bool;
    /// The backend's last attempts.
    fn history(&self) -> &History;
    /// Whether the backend is passively removed now (ejected, or its
    /// breaker open).
    fn is_passively_removed(&self) -> bool;
}

/// Called with `(before, after)` when an upstream's spread changes.
pub type SpreadHook = Arc<dyn Fn(Verdict, Verdict) + Send + Sync>;

/// An upstream's failure spread: its members' histories classified at most
/// once per [`STEP`], by whichever caller first notices the step has passed;
/// everyone else reads the last verdict from one atomic.
///
/// [`RemovalCap`](crate::RemovalCap) owns one per upstream: it learns the
/// members from [`RemovalCap::attach`](crate::RemovalCap::attach), and its
/// ceiling and the retry decision both read the verdict.
pub struct FailureSpread {
    members: Mutex<Vec<Weak<dyn SpreadMember>>>,
    /// Failures recorded since the last classification.
    failures: AtomicU32,
    /// `step << 32 | healthy << 16 | failing << 8 | spread`; step 0 = never.
    verdict: AtomicU64,
    classifying: AtomicBool,
    hook: OnceLock<SpreadHook>,
}

impl fmt::Debug for FailureSpread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailureSpread")
            .field("verdict", &self.last())
            .finish_non_exhaustive()
    }
}

impl Default for FailureSpread {
    fn default() -> Self {
        FailureSpread {
            members: Mutex::new(Vec::new()),
            failures: AtomicU32::new(0),
            verdict: AtomicU64::new(0),
            classifying: AtomicBool::new(false),
            hook: OnceLock::new(),
        }
    }
}

fn pack(step: u64, v: Verdict) -> u64 {
    (step << 32)
        | (u64::from(v.healthy.min(0xffff)) << 16)
        | (u64::from(v.failing.min(0xff)) << 8)
        | v.spread as u64
}

fn unpack(bits: u64) -> Verdict {
    Verdict {
        spread: Spread::from_bits(bits),
        healthy: ((bits >> 16) & 0xffff) as u32,
        failing: ((bits >> 8) & 0xff) as u32,
    }
}

impl FailureSpread {
    /// Call `hook` on every change of the verdict's state (the upstream's
    /// event: a log line, a gauge). Only the first hook set is kept. It runs
    /// inline on the request path: keep it quick.
    pub fn on_change(&self, hook: SpreadHook) {
        let _ = self.hook.set(hook);
    }

    /// Make `backends` the members classified.
    pub fn set_members<M: SpreadMember + 'static>(&self, backends: &[Arc<M>]) {
        let weak = backends
            .iter()
            .map(|b| Arc::downgrade(b) as Weak<dyn SpreadMember>)
            .collect();
        *self.members.lock().unwrap_or_else(|e| e.into_inner()) = weak;
    }

    /// The last verdict, without classifying again.
    pub fn last(&self) -> Verdict {
        unpack(self.verdict.load(Ordering::Acquire))
    }

    /// The verdict at `now`: the last one, or a new one if a [`STEP`] has
    /// passed since (one caller classifies; the others read the last).
    pub fn at(&self, now: Instant) -> Verdict {
        self.classify_at(now, false)
    }

    /// [`at`](Self::at), after a failure was recorded: a normal verdict is
    /// also classified again once [`EARLY_AFTER_FAILURES`] failures have
    /// been recorded since the last classification, step or no step.
    pub fn at_failure(&self, now: Instant) -> Verdict {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let early = failures >= EARLY_AFTER_FAILURES && self.last().spread == Spread::Normal;
        self.classify_at(now, early)
    }

    fn classify_at(&self, now: Instant, early: bool) -> Verdict {
        let step = to_nanos(now) / STEP.as_nanos() as u64 + 1;
        let bits = self.verdict.load(Ordering::Acquire);
        let last_step = bits >> 32;
        if (last_step == step && !early) || self.classifying.swap(true, Ordering::Acquire) {
            return unpack(bits);
        }
        // Another caller may have classified this step between our load and
        // our taking the flag: theirs stands, and its change was announced.
        let bits = self.verdict.load(Ordering::Acquire);
        let last_step = bits >> 32;
        if last_step == step && (!early || self.failures.load(Ordering::Relaxed) == 0) {
            self.classifying.store(false, Ordering::Release);
            return unpack(bits);
        }
        self.failures.store(0, Ordering::Relaxed);
        let idle = step.saturating_sub(last_step) * STEP.as_nanos() as u64;
        let forget = last_step != 0 && idle >= FORGET_AFTER.as_nanos() as u64;
        let verdict = classify(&self.members(forget));
        self.verdict.store(pack(step, verdict), Ordering::Release);
        self.classifying.store(false, Ordering::Release);
        let before = unpack(bits);
        if before.spread != verdict.spread {
            if let Some(hook) = self.hook.get() {
                hook(before, verdict);
            }
        }
        verdict
    }

    /// The members in rotation, as [`classify`] sees them; their histories
    /// are cleared first when `forget`.
    fn members(&self, forget: bool) -> Vec<Member> {
        let members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        members
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|b| b.in_rotation())
            .map(|b| {
                if forget {
                    b.history().clear();
                }
                b.history().member(b.is_passively_removed())
            })
            .collect()
    }

    /// Whether passive removal may go past the ceiling to take `history`'s
    /// backend out: the verdict now is concentrated, a clearly healthy
    /// backend is in service, and this one is failing on enough attempts to
    /// judge (so it is not one of the healthy).
    pub fn allows_overflow(&self, history: &History) -> bool {
        let v = self.at(Instant::now());
        let (attempts, failures) = history.recent();
        v.spread == Spread::Concentrated
            && v.healthy > 0
            && attempts >= MIN_ATTEMPTS
            && f64::from(failures) >= FAILING_AT_LEAST * f64::from(attempts)
    }

    /// Whether a passively removed backend should still count as available
    /// for the panic threshold: the failure is concentrated and clearly
    /// healthy backends remain, so too few available does not mean the
    /// signals are wrong. Classifies again if a step has passed, so a
    /// healthy backend that has since failed its check (and gets no
    /// attempts to refresh the verdict) is not counted on.
    pub fn trusts_removals(&self) -> bool {
        let v = self.at(Instant::now());
        v.spread == Spread::Concentrated && v.healthy > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member whose failures are the oldest of its attempts (none among
    /// its latest unless every attempt failed).
    fn m(attempts: u32, failures: u32) -> Member {
        Member {
            attempts,
            failures,
            latest_failures: failures.saturating_sub(attempts.saturating_sub(LATEST)),
            removed: false,
        }
    }

    const OUT: Member = Member {
        attempts: 0,
        failures: 0,
        latest_failures: 0,
        removed: true,
    };

    #[test]
    fn the_history_keeps_the_last_attempts() {
        let h = History::default();
        assert_eq!(h.recent(), (0, 0));
        h.record(true);
        h.record(false);
        assert_eq!(h.recent(), (2, 1));
        for _ in 0..HISTORY {
            h.record(false);
        }
        assert_eq!(h.recent(), (HISTORY, 0), "the old failure fell out");
        for _ in 0..10 {
            h.record(true);
        }
        assert_eq!(h.recent(), (HISTORY, 10));
        h.clear();
        assert_eq!(h.recent(), (0, 0));
    }

    #[test]
    fn four_failing_one_healthy_is_concentrated() {
        let v = classify(&[m(56, 56), m(56, 50), OUT, OUT, m(56, 0)]);
        assert_eq!(v.spread, Spread::Concentrated);
        assert_eq!((v.healthy, v.failing), (1, 4));
    }

    /// An outage of every backend has just begun: one is removed already,
    /// the others' histories are still mostly the successes from before,
    /// but their latest attempts fail. Nobody is clearly healthy, so the
    /// failure is not concentrated (retries stay within the budget).
    #[test]
    fn a_history_of_old_successes_does_not_vouch_for_a_failing_backend() {
        let failing_now = |failures| Member {
            attempts: HISTORY,
            failures,
            latest_failures: failures,
            removed: false,
        };
        let v = classify(&[OUT, failing_now(2), failing_now(3)]);
        assert_eq!((v.spread, v.healthy), (Spread::Normal, 0));
        // One failure lately is still healthy (a 2 % failure rate shows one
        // in its last eight about one time in seven).
        let v = classify(&[OUT, failing_now(1), failing_now(3)]);
        assert_eq!((v.spread, v.healthy), (Spread::Concentrated, 1));
        // The history counts them in order.
        let h = History::default();
        for _ in 0..HISTORY {
            h.record(false);
        }
        assert_eq!(h.latest_failures(), 0);
        h.record(true);
        h.record(true);
        assert_eq!((h.recent(), h.latest_failures()), ((HISTORY, 2), 2));
        for _ in 0..LATEST - 1 {
            h.record(false);
        }
        assert_eq!(h.latest_failures(), 1, "one fell out of the latest");
        let young = History::default();
        young.record(true);
        assert_eq!(young.latest_failures(), 1);
    }

    #[test]
    fn all_failing_alike_is_correlated() {
        assert_eq!(
            classify(&[m(56, 45), m(56, 42), m(56, 47)]).spread,
            Spread::Correlated
        );
        // A removed backend counts as failing every attempt: 0.8 is even
        // enough with 1.0.
        assert_eq!(
            classify(&[m(56, 45), m(56, 44), OUT]).spread,
            Spread::Correlated
        );
    }

    #[test]
    fn uneven_or_light_failure_is_normal() {
        // 30 % against 90 %: not even, and nobody clearly healthy.
        assert_eq!(classify(&[m(56, 17), m(56, 50)]).spread, Spread::Normal);
        // Everyone fails a little: retries work, the budget bounds them.
        assert_eq!(classify(&[m(56, 8), m(56, 9)]).spread, Spread::Normal);
        // Healthy everywhere.
        assert_eq!(classify(&[m(56, 0), m(56, 1)]).spread, Spread::Normal);
    }

    #[test]
    fn too_few_attempts_say_nothing() {
        assert_eq!(classify(&[m(5, 5), m(56, 0)]).spread, Spread::Normal);
        assert_eq!(classify(&[m(56, 50)]).spread, Spread::Normal);
        assert_eq!(classify(&[]).spread, Spread::Normal);
        // Everyone removed: nothing in service to judge.
        assert_eq!(classify(&[OUT, OUT]).spread, Spread::Normal);
    }

    #[test]
    fn a_verdict_survives_packing() {
        let v = Verdict {
            spread: Spread::Correlated,
            healthy: 300,
            failing: 7,
        };
        assert_eq!(unpack(pack(12345, v)), v);
        assert_eq!(pack(12345, v) >> 32, 12345);
    }
}
