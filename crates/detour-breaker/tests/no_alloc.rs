//! The request-path operations allocate nothing: admission and release,
//! recording outcomes, the retry budget and the concurrency limit, counted by
//! a global allocator that wraps the system one.
//!
//! This file is its own test binary, so its allocator counts nothing else.
//! Counts are per thread, so tests running in parallel do not disturb each
//! other.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use detour_breaker::{
    BreakerConfig, BreakerRegistry, BudgetConfig, CircuitBreaker, ConcurrencyLimit, FailureRate,
    LimitConfig, RetryBudget, SlowCall, Window,
};
use detour_core::{
    AdmissionGate, AttemptOutcome, Backend, CommitPoint, ErrorKind, Observer, OutcomeClass,
};
use detour_testkit::alloc;
use tokio::time::Instant;

#[global_allocator]
static GLOBAL: alloc::Counting = alloc::Counting;

/// Allocations `f` made on this thread, after one warm-up call (first uses
/// may initialise lazily: tracing call sites, the clock).
fn allocations(mut f: impl FnMut()) -> u64 {
    f();
    let before = alloc::on_this_thread();
    for _ in 0..1_000 {
        f();
    }
    alloc::on_this_thread() - before
}

/// A breaker with every policy on, none of which trips in these loops.
fn busy_config() -> BreakerConfig {
    let mut cfg = BreakerConfig::default();
    cfg.consecutive_failures = u32::MAX;
    let mut rate = FailureRate::default();
    rate.threshold = 1.0;
    rate.min_calls = 100;
    rate.window = Window::Calls(100);
    cfg.failure_rate = Some(rate);
    let mut slow = SlowCall::default();
    slow.window = Window::Time(Duration::from_secs(10));
    cfg.slow_call = Some(slow);
    cfg
}

#[test]
fn the_counter_sees_allocations() {
    // Without this, a broken allocator hook would make every test pass.
    let n = allocations(|| drop(std::hint::black_box(Box::new(1u64))));
    assert_eq!(n, 1_000);
}

#[test]
fn breaker_admission_and_recording_do_not_allocate() {
    let b = CircuitBreaker::new(busy_config()).unwrap();
    let fast = Duration::from_millis(3);
    let n = allocations(|| {
        assert!(AdmissionGate::try_admit(&b));
        AdmissionGate::release(&b);
    });
    assert_eq!(n, 0, "gate admit + release");
    let n = allocations(|| b.record_success(fast));
    assert_eq!(n, 0, "record success");
    // A success after each failure keeps the failure rate under 100 %.
    let n = allocations(|| {
        b.record_failure(fast);
        b.record_success(fast);
    });
    assert_eq!(n, 0, "record failure (closed)");
    let n = allocations(|| {
        b.record_outcome(
            OutcomeClass::BackendFailure(ErrorKind::HttpStatus(503)),
            fast,
        );
        b.record_outcome(
            OutcomeClass::BackendFailure(ErrorKind::HttpStatus(500)),
            fast,
        );
        b.record_outcome(OutcomeClass::Local(ErrorKind::CircuitOpen), fast);
    });
    assert_eq!(n, 0, "record outcome");
    let n = allocations(|| b.try_acquire().unwrap().success());
    assert_eq!(n, 0, "standalone admission");
    assert_eq!(
        b.trips(),
        0,
        "nothing tripped: this measured the closed path"
    );
}

#[test]
fn half_open_probes_do_not_allocate() {
    let mut cfg = BreakerConfig::default();
    cfg.half_open_successes = u32::from(u16::MAX);
    let b = CircuitBreaker::new(cfg).unwrap();
    for _ in 0..5 {
        b.record_failure(Duration::ZERO);
    }
    AdmissionGate::on_backend_recovered(&b);
    let n = allocations(|| {
        assert!(AdmissionGate::try_admit(&b));
        assert!(!AdmissionGate::try_admit(&b));
        AdmissionGate::release(&b);
    });
    assert_eq!(n, 0);
}

#[test]
fn backend_permits_and_the_observer_do_not_allocate() {
    let reg = BreakerRegistry::new(busy_config()).unwrap();
    let backend = Arc::new(Backend::new(SocketAddr::from(([127, 0, 0, 1], 9))));
    reg.attach(&backend).unwrap();
    let now = Instant::now();
    let n = allocations(|| drop(backend.try_admit(now).unwrap()));
    assert_eq!(n, 0, "Backend::try_admit through the breaker gate");
    let outcome = |class| AttemptOutcome {
        backend: Some(&backend),
        addr: backend.addr(),
        upstream: "app",
        class,
        status: None,
        latency: Duration::from_millis(2),
        commit: CommitPoint::ResponseStarted,
        attempt: 1,
    };
    let ok = outcome(OutcomeClass::Success);
    let failed = outcome(OutcomeClass::BackendFailure(ErrorKind::ConnectionReset));
    let n = allocations(|| {
        reg.on_attempt(&ok);
        reg.on_attempt(&failed);
    });
    assert_eq!(n, 0, "registry observer");
}

#[test]
fn the_budget_and_the_limit_do_not_allocate() {
    let budget = RetryBudget::new(BudgetConfig::default()).unwrap();
    let n = allocations(|| {
        budget.record_request();
        let _ = budget.try_withdraw();
    });
    assert_eq!(n, 0, "budget record + withdraw");
    // Spent: the refusing path too.
    while budget.try_withdraw() {}
    let n = allocations(|| assert!(!budget.try_withdraw()));
    assert_eq!(n, 0, "budget refusal");

    let limit = ConcurrencyLimit::new(LimitConfig::default()).unwrap();
    let n = allocations(|| drop(limit.try_acquire().unwrap()));
    assert_eq!(n, 0, "limit try_acquire + release");
}
