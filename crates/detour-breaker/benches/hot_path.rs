//! The request-path costs of breakers, budgets and limits, on one thread and
//! on two threads hitting the same object. `cargo bench -p detour-breaker`.
#![allow(clippy::unwrap_used)]
// `criterion_group!` makes a public function it cannot document.
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use detour_breaker::{
    BreakerConfig, BreakerRegistry, BudgetConfig, CircuitBreaker, ConcurrencyLimit, FailureRate,
    LimitConfig, RetryBudget, SlowCall, Window,
};
use detour_core::{
    AdmissionGate, AttemptOutcome, Backend, CommitPoint, ErrorKind, Observer, OutcomeClass,
};
use tokio::time::Instant;

const LATENCY: Duration = Duration::from_millis(3);

/// The default breaker, except that failures never trip it: these loops
/// measure the closed state.
fn never_trips() -> BreakerConfig {
    let mut cfg = BreakerConfig::default();
    cfg.consecutive_failures = u32::MAX;
    cfg
}

/// Every policy on: consecutive failures, a failure rate over the last 100
/// calls, a slow-call rate over 10 s. A success follows each failure, so the
/// rate stays at 50 % and it never trips.
fn all_policies() -> BreakerConfig {
    let mut cfg = never_trips();
    let mut rate = FailureRate::default();
    rate.threshold = 0.9;
    rate.window = Window::Calls(100);
    cfg.failure_rate = Some(rate);
    let mut slow = SlowCall::default();
    slow.window = Window::Time(Duration::from_secs(10));
    cfg.slow_call = Some(slow);
    cfg
}

fn budget() -> RetryBudget {
    RetryBudget::new(BudgetConfig::default()).unwrap()
}

fn single(c: &mut Criterion) {
    let mut g = c.benchmark_group("single");
    let b = CircuitBreaker::new(never_trips()).unwrap();
    g.bench_function("breaker_closed_admit_release", |i| {
        i.iter(|| {
            black_box(AdmissionGate::try_admit(&b));
            AdmissionGate::release(&b);
        })
    });
    g.bench_function("breaker_record_success", |i| {
        i.iter(|| b.record_success(black_box(LATENCY)))
    });
    g.bench_function("breaker_record_failure_closed", |i| {
        i.iter(|| b.record_failure(black_box(LATENCY)))
    });
    g.bench_function("breaker_guard_acquire_success", |i| {
        i.iter(|| b.try_acquire().unwrap().success())
    });
    let all = CircuitBreaker::new(all_policies()).unwrap();
    g.bench_function("breaker_all_policies_failure_then_success", |i| {
        i.iter(|| {
            all.record_failure(black_box(LATENCY));
            all.record_success(black_box(LATENCY));
        })
    });

    let reg = BreakerRegistry::new(never_trips()).unwrap();
    let backend = Arc::new(Backend::new(SocketAddr::from(([127, 0, 0, 1], 9))));
    reg.attach(&backend).unwrap();
    let now = Instant::now();
    g.bench_function("backend_try_admit_drop_gated", |i| {
        i.iter(|| drop(black_box(backend.try_admit(now))))
    });
    let ok = AttemptOutcome {
        backend: Some(&backend),
        addr: backend.addr(),
        upstream: "app",
        class: OutcomeClass::Success,
        status: Some(200),
        latency: LATENCY,
        commit: CommitPoint::ResponseStarted,
        attempt: 1,
    };
    g.bench_function("registry_on_attempt", |i| {
        i.iter(|| reg.on_attempt(black_box(&ok)))
    });
    let failed = AttemptOutcome {
        class: OutcomeClass::BackendFailure(ErrorKind::HttpStatus(502)),
        status: Some(502),
        ..ok.clone()
    };
    g.bench_function("registry_on_attempt_failure", |i| {
        i.iter(|| reg.on_attempt(black_box(&failed)))
    });

    let bud = budget();
    g.bench_function("budget_record_withdraw", |i| {
        i.iter(|| {
            bud.record_request();
            black_box(bud.try_withdraw());
        })
    });
    g.bench_function("budget_record_at", |i| {
        i.iter(|| bud.record_request_at(black_box(now)))
    });
    // The engine already holds the attempt's start time: the `_at` forms
    // save both clock reads.
    g.bench_function("budget_record_withdraw_at", |i| {
        i.iter(|| {
            bud.record_request_at(black_box(now));
            black_box(bud.try_withdraw_at(black_box(now)));
        })
    });

    // The reference: one clock read (tokio's, which these benches build with
    // its test-util feature, as dev-dependencies enable it).
    g.bench_function("reference_clock_now", |i| {
        i.iter(|| black_box(Instant::now()))
    });

    let limit = ConcurrencyLimit::new(LimitConfig::default()).unwrap();
    g.bench_function("limit_try_acquire_drop", |i| {
        i.iter(|| drop(black_box(limit.try_acquire())))
    });
    g.finish();
}

/// Time `op` run `iters` times on each of two threads at once; the result is
/// the slower thread's time, so per iteration it is the cost of one operation
/// while another thread does the same to the same object.
fn on_two_threads(iters: u64, op: &(dyn Fn() + Sync)) -> Duration {
    let start = Barrier::new(2);
    std::thread::scope(|s| {
        let run = || {
            start.wait();
            let t = Instant::now();
            for _ in 0..iters {
                op();
            }
            t.elapsed()
        };
        let other = s.spawn(run);
        let mine = run();
        mine.max(other.join().unwrap())
    })
}

fn two_threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("two_threads");
    let b = CircuitBreaker::new(never_trips()).unwrap();
    g.bench_function("breaker_closed_admit_release", |i| {
        i.iter_custom(|n| {
            on_two_threads(n, &|| {
                black_box(AdmissionGate::try_admit(&b));
                AdmissionGate::release(&b);
            })
        })
    });
    g.bench_function("breaker_record_success", |i| {
        i.iter_custom(|n| on_two_threads(n, &|| b.record_success(black_box(LATENCY))))
    });
    g.bench_function("breaker_record_failure_closed", |i| {
        i.iter_custom(|n| on_two_threads(n, &|| b.record_failure(black_box(LATENCY))))
    });
    let all = CircuitBreaker::new(all_policies()).unwrap();
    g.bench_function("breaker_all_policies_failure_then_success", |i| {
        i.iter_custom(|n| {
            on_two_threads(n, &|| {
                all.record_failure(black_box(LATENCY));
                all.record_success(black_box(LATENCY));
            })
        })
    });
    let reg = BreakerRegistry::new(never_trips()).unwrap();
    let backend = Arc::new(Backend::new(SocketAddr::from(([127, 0, 0, 1], 9))));
    reg.attach(&backend).unwrap();
    let ok = AttemptOutcome {
        backend: Some(&backend),
        addr: backend.addr(),
        upstream: "app",
        class: OutcomeClass::Success,
        status: Some(200),
        latency: LATENCY,
        commit: CommitPoint::ResponseStarted,
        attempt: 1,
    };
    g.bench_function("registry_on_attempt", |i| {
        i.iter_custom(|n| on_two_threads(n, &|| reg.on_attempt(black_box(&ok))))
    });
    g.bench_function("reference_clock_now", |i| {
        i.iter_custom(|n| {
            on_two_threads(n, &|| {
                black_box(Instant::now());
            })
        })
    });
    let bud = budget();
    g.bench_function("budget_record_withdraw", |i| {
        i.iter_custom(|n| {
            on_two_threads(n, &|| {
                bud.record_request();
                black_box(bud.try_withdraw());
            })
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = single, two_threads
}
criterion_main!(benches);
