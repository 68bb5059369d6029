//! The state machine under tokio's paused clock: every transition.

use std::sync::atomic::AtomicUsize;
use std::sync::Mutex as StdMutex;

use detour_core::ErrorKind;
use tokio::time::advance;

use super::*;

const MS: Duration = Duration::from_millis(1);
const FAST: Duration = Duration::from_millis(5);

/// The default config without jitter, so open periods are exact.
fn cfg() -> BreakerConfig {
    BreakerConfig {
        jitter: 0.0,
        ..BreakerConfig::default()
    }
}

fn breaker(cfg: BreakerConfig) -> CircuitBreaker {
    CircuitBreaker::new(cfg).unwrap().with_seed(7)
}

fn fail(b: &CircuitBreaker, n: u32) {
    for _ in 0..n {
        b.record_failure(FAST);
    }
}

fn succeed(b: &CircuitBreaker, n: u32) {
    for _ in 0..n {
        b.record_success(FAST);
    }
}

/// Record every transition of `b`.
fn log(b: &CircuitBreaker) -> Arc<StdMutex<Vec<Transition>>> {
    let seen = Arc::new(StdMutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    b.on_transition(move |t| s.lock().unwrap().push(t.clone()));
    seen
}

/// Open `b` by consecutive failures and let its open period run out.
async fn to_half_open(b: &CircuitBreaker) {
    fail(b, b.config().consecutive_failures);
    assert_eq!(b.state(), GateState::Open);
    advance(b.config().max_open_for).await;
    assert_eq!(b.state(), GateState::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_trip_and_a_success_starts_the_count_again() {
    let b = breaker(cfg());
    let seen = log(&b);
    fail(&b, 4);
    succeed(&b, 1);
    fail(&b, 4);
    assert_eq!(
        b.state(),
        GateState::Closed,
        "4 + 4 failures, not 5 in a row"
    );
    assert!(b.try_acquire().is_some());
    fail(&b, 1);
    assert_eq!(b.state(), GateState::Open);
    assert!(b.try_acquire().is_none());
    assert!(!AdmissionGate::try_admit(&b));
    assert_eq!(b.trips(), 1);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].from, seen[0].to, seen[0].reason),
        (
            GateState::Closed,
            GateState::Open,
            TransitionReason::ConsecutiveFailures
        )
    );
    assert_eq!(seen[0].open_for, Some(Duration::from_secs(30)));
    assert_eq!(seen[0].addr, None);
}

#[tokio::test(start_paused = true)]
async fn failure_rate_over_a_count_window_needs_the_minimum_of_calls() {
    let b = breaker(BreakerConfig {
        consecutive_failures: 0,
        failure_rate: Some(FailureRate {
            threshold: 0.5,
            min_calls: 10,
            window: Window::Calls(20),
        }),
        ..cfg()
    });
    let seen = log(&b);
    fail(&b, 4);
    assert_eq!(
        b.state(),
        GateState::Closed,
        "100 % of 4 calls: under min_calls"
    );
    succeed(&b, 16);
    // The window holds 20 calls: 4 more successes push the 4 failures out.
    succeed(&b, 4);
    fail(&b, 9);
    assert_eq!(
        b.state(),
        GateState::Closed,
        "9 of 20 (had the first failures stayed, the 6th would have tripped)"
    );
    fail(&b, 1);
    assert_eq!(b.state(), GateState::Open, "10 of the last 20 calls");
    assert_eq!(
        seen.lock().unwrap()[0].reason,
        TransitionReason::FailureRate
    );
}

#[tokio::test(start_paused = true)]
async fn failure_rate_over_a_time_window_forgets_old_calls() {
    let b = breaker(BreakerConfig {
        consecutive_failures: 0,
        failure_rate: Some(FailureRate {
            threshold: 0.5,
            min_calls: 6,
            window: Window::Time(Duration::from_secs(10)),
        }),
        ..cfg()
    });
    let seen = log(&b);
    fail(&b, 5);
    assert_eq!(b.state(), GateState::Closed, "5 calls: under the minimum");
    // 11 s later those failures have left the window: had they stayed,
    // 7 failures of 10 calls would trip below.
    advance(Duration::from_secs(11)).await;
    succeed(&b, 3);
    fail(&b, 2);
    assert_eq!(b.state(), GateState::Closed, "2 of 5 in the window");
    // Within the window calls add up: 3 of 6 is 50 %.
    advance(Duration::from_secs(3)).await;
    fail(&b, 1);
    assert_eq!(b.state(), GateState::Open);
    assert_eq!(
        seen.lock().unwrap()[0].reason,
        TransitionReason::FailureRate
    );
}

#[tokio::test(start_paused = true)]
async fn slow_calls_trip_by_their_share() {
    let b = breaker(BreakerConfig {
        consecutive_failures: 0,
        slow_call: Some(SlowCall {
            slower_than: Duration::from_secs(1),
            threshold: 0.5,
            min_calls: 4,
            window: Window::Calls(10),
        }),
        ..cfg()
    });
    let seen = log(&b);
    b.record_success(Duration::from_millis(999));
    b.record_success(Duration::from_secs(1));
    b.record_success(Duration::from_millis(10));
    assert_eq!(b.state(), GateState::Closed, "under the minimum");
    // A failed call that was slow is slow too.
    b.record_failure(Duration::from_secs(3));
    assert_eq!(b.state(), GateState::Open, "2 of 4 took 1 s or more");
    assert_eq!(
        seen.lock().unwrap()[0].reason,
        TransitionReason::SlowCallRate
    );
}

#[tokio::test(start_paused = true)]
async fn slow_call_rate_over_a_time_window() {
    let b = breaker(BreakerConfig {
        consecutive_failures: 0,
        slow_call: Some(SlowCall {
            slower_than: Duration::from_millis(200),
            threshold: 1.0,
            min_calls: 3,
            window: Window::Time(Duration::from_secs(1)),
        }),
        ..cfg()
    });
    let slow = Duration::from_millis(250);
    b.record_success(slow);
    b.record_success(slow);
    advance(Duration::from_secs(2)).await;
    b.record_success(slow);
    assert_eq!(
        b.state(),
        GateState::Closed,
        "the first two left the window"
    );
    b.record_success(slow);
    b.record_success(slow);
    assert_eq!(b.state(), GateState::Open);
}

#[tokio::test(start_paused = true)]
async fn open_becomes_half_open_after_open_for() {
    let b = breaker(cfg());
    let seen = log(&b);
    fail(&b, 5);
    assert_eq!(b.retry_after(), Some(Duration::from_secs(30)));
    advance(Duration::from_secs(30) - MS).await;
    assert!(b.try_acquire().is_none(), "1 ms before the end");
    assert_eq!(b.retry_after(), Some(MS));
    advance(MS).await;
    let probe = b.try_acquire().expect("half-open admits a probe");
    assert!(probe.is_probe());
    assert_eq!(b.state(), GateState::HalfOpen);
    assert_eq!(b.retry_after(), None);
    let seen = seen.lock().unwrap();
    assert_eq!(
        (seen[1].from, seen[1].to, seen[1].reason),
        (
            GateState::Open,
            GateState::HalfOpen,
            TransitionReason::OpenElapsed
        )
    );
}

#[tokio::test(start_paused = true)]
async fn jitter_shortens_the_open_period_within_its_bounds() {
    let mut shortest = Duration::MAX;
    let mut longest = Duration::ZERO;
    for seed in 0..40 {
        let b = CircuitBreaker::new(BreakerConfig {
            jitter: 0.5,
            ..BreakerConfig::default()
        })
        .unwrap()
        .with_seed(seed);
        let seen = log(&b);
        fail(&b, 5);
        let open_for = seen.lock().unwrap()[0].open_for.unwrap();
        assert!(
            open_for >= Duration::from_secs(15) && open_for <= Duration::from_secs(30),
            "{open_for:?}"
        );
        shortest = shortest.min(open_for);
        longest = longest.max(open_for);
        // The breaker honours the period it announced (to the millisecond).
        assert_eq!(
            b.retry_after().unwrap().as_millis(),
            open_for.as_nanos().div_ceil(1_000_000)
        );
        advance(open_for.saturating_sub(MS)).await;
        assert_eq!(b.state(), GateState::Open);
        advance(MS * 2).await;
        assert_eq!(b.state(), GateState::HalfOpen);
    }
    assert!(
        longest - shortest > Duration::from_secs(5),
        "jitter spreads periods: {shortest:?}..{longest:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn repeated_trips_grow_the_open_period_up_to_its_cap() {
    let b = breaker(BreakerConfig {
        open_for: Duration::from_secs(10),
        open_multiplier: 2.0,
        max_open_for: Duration::from_secs(50),
        half_open_successes: 1,
        ..cfg()
    });
    let seen = log(&b);
    fail(&b, 5);
    // Each probe fails: 10, 20, 40, then capped at 50.
    for _ in 0..4 {
        let d = b.retry_after().unwrap();
        advance(d).await;
        b.try_acquire().expect("probe").failure();
    }
    let periods: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .filter_map(|t| t.open_for)
        .map(|d| d.as_secs())
        .collect();
    assert_eq!(periods, [10, 20, 40, 50, 50]);
    assert_eq!(b.trips(), 5);

    // A trip soon after closing still counts as repeated...
    advance(Duration::from_secs(50)).await;
    b.try_acquire().expect("probe").success();
    assert_eq!(b.state(), GateState::Closed);
    advance(Duration::from_secs(10)).await;
    fail(&b, 5);
    assert_eq!(b.retry_after(), Some(Duration::from_secs(50)));
    // ...one after max_open_for of calm starts again from open_for.
    advance(Duration::from_secs(50)).await;
    b.try_acquire().expect("probe").success();
    advance(Duration::from_secs(51)).await;
    fail(&b, 5);
    assert_eq!(b.retry_after(), Some(Duration::from_secs(10)));
}

#[tokio::test(start_paused = true)]
async fn half_open_closes_after_the_configured_successes() {
    let b = breaker(cfg());
    let seen = log(&b);
    to_half_open(&b).await;
    for i in 0..3 {
        assert_eq!(b.state(), GateState::HalfOpen, "after {i} successes");
        let probe = b.try_acquire().expect("one probe at a time");
        assert!(b.try_acquire().is_none(), "half_open_probes = 1");
        probe.success();
    }
    assert_eq!(b.state(), GateState::Closed);
    let a = b.try_acquire().unwrap();
    assert!(!a.is_probe());
    assert!(b.try_acquire().is_some(), "closed admits everyone");
    let last = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        (last.from, last.to, last.reason),
        (
            GateState::HalfOpen,
            GateState::Closed,
            TransitionReason::ProbesSucceeded
        )
    );
    // The counters start afresh: four failures do not trip.
    drop(a);
    fail(&b, 4);
    assert_eq!(b.state(), GateState::Closed);
}

#[tokio::test(start_paused = true)]
async fn half_open_reopens_on_any_failure() {
    let b = breaker(cfg());
    to_half_open(&b).await;
    b.try_acquire().unwrap().success();
    b.try_acquire().unwrap().success();
    b.try_acquire().unwrap().failure();
    assert_eq!(b.state(), GateState::Open, "two successes, then a failure");
    assert_eq!(b.trips(), 2);
    advance(Duration::from_secs(30)).await;
    // Successes from the last half-open period are forgotten.
    b.try_acquire().unwrap().success();
    assert_eq!(b.state(), GateState::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_frees_its_slot_and_counts_nothing() {
    let b = breaker(cfg());
    to_half_open(&b).await;
    let probe = b.try_acquire().unwrap();
    assert!(b.try_acquire().is_none());
    drop(probe); // the request was cancelled
    assert_eq!(b.snapshot().probes_in_flight, 0);
    let probe = b.try_acquire().expect("the slot is free again");
    probe.success();
    assert_eq!(b.state(), GateState::HalfOpen, "1 success of 3");

    // The same through the AdmissionGate (a Permit's drop calls release).
    assert!(AdmissionGate::try_admit(&b));
    assert!(!AdmissionGate::try_admit(&b));
    AdmissionGate::release(&b);
    assert!(AdmissionGate::try_admit(&b));
    AdmissionGate::release(&b);
}

#[tokio::test(start_paused = true)]
async fn with_no_traffic_the_clock_alone_half_opens_it() {
    let b = breaker(cfg());
    fail(&b, 5);
    // Nobody asks for an hour: no timer ran, yet the breaker is not stuck.
    advance(Duration::from_secs(3_600)).await;
    assert_eq!(b.snapshot().state, GateState::HalfOpen);
    assert_eq!(b.snapshot().half_open_in, None);
    assert!(b.try_acquire().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_recovered_backend_half_opens_at_once() {
    let b = breaker(cfg());
    let seen = log(&b);
    fail(&b, 5);
    advance(Duration::from_secs(1)).await;
    AdmissionGate::on_backend_recovered(&b);
    assert_eq!(b.state(), GateState::HalfOpen);
    assert!(b.try_acquire().is_some());
    assert_eq!(
        seen.lock().unwrap()[1].reason,
        TransitionReason::BackendRecovered
    );
    // Only an open breaker moves.
    let closed = breaker(cfg());
    AdmissionGate::on_backend_recovered(&closed);
    assert_eq!(closed.state(), GateState::Closed);
}

/// Only a half-open period that a check began is vouched for: not one the
/// open period's end began, not the next after a failed probe, not a
/// closed breaker.
#[tokio::test(start_paused = true)]
async fn only_a_check_vouches_for_a_half_open_breaker() {
    let b = breaker(cfg());
    assert!(!b.half_open_by_check());
    fail(&b, 5);
    assert!(!b.half_open_by_check(), "open");
    AdmissionGate::on_backend_recovered(&b);
    assert!(b.half_open_by_check());
    assert!(AdmissionGate::half_open_by_check(&b));
    // A failed probe opens it again; its open period then runs out.
    b.try_acquire().unwrap().failure();
    assert_eq!(b.state(), GateState::Open);
    assert!(!b.half_open_by_check());
    advance(b.config().max_open_for).await;
    assert_eq!(b.state(), GateState::HalfOpen);
    assert!(!b.half_open_by_check(), "half-open by the clock");
    // Probes close it.
    for _ in 0..b.config().half_open_successes {
        b.try_acquire().unwrap().success();
    }
    assert_eq!(b.state(), GateState::Closed);
    assert!(!b.half_open_by_check());

    let timed = breaker(cfg());
    to_half_open(&timed).await;
    assert!(!timed.half_open_by_check());
    // Its backend then seen back by a check (a status page read the state
    // first, which half-opened it): vouched for from then on.
    AdmissionGate::on_backend_recovered(&timed);
    assert_eq!(timed.state(), GateState::HalfOpen);
    assert!(timed.half_open_by_check());
}

#[tokio::test(start_paused = true)]
async fn calls_from_before_the_trip_do_not_decide_half_open() {
    let b = breaker(cfg());
    let old = b.try_acquire().unwrap();
    to_half_open(&b).await;
    // The old admission ends now: it belongs to the closed era.
    old.failure();
    assert_eq!(b.state(), GateState::HalfOpen);
    // An outcome reported with its latency (the engine's way): a call that
    // began before the half-open period is not a probe.
    b.record_failure(Duration::from_secs(10));
    assert_eq!(b.state(), GateState::HalfOpen);
    b.record_failure(Duration::ZERO);
    assert_eq!(b.state(), GateState::Open);
}

#[tokio::test(start_paused = true)]
async fn record_outcome_counts_what_the_config_says() {
    let b = breaker(cfg());
    for class in [
        OutcomeClass::Local(ErrorKind::CircuitOpen),
        OutcomeClass::Local(ErrorKind::ConnectionClosed), // a stale pooled connection
        OutcomeClass::Local(ErrorKind::DownstreamClosed),
        OutcomeClass::Local(ErrorKind::BudgetExhausted),
        OutcomeClass::Local(ErrorKind::Overloaded),
        OutcomeClass::Local(ErrorKind::NoPeer),
    ] {
        for _ in 0..10 {
            b.record_outcome(class, FAST);
        }
    }
    assert_eq!(b.snapshot().consecutive_failures, 0, "Local never counts");
    for _ in 0..10 {
        b.record_outcome(
            OutcomeClass::BackendFailure(ErrorKind::HttpStatus(500)),
            FAST,
        );
    }
    assert_eq!(
        b.state(),
        GateState::Closed,
        "a 500 is not a breaker failure"
    );
    for _ in 0..4 {
        b.record_outcome(
            OutcomeClass::BackendFailure(ErrorKind::HttpStatus(503)),
            FAST,
        );
    }
    b.record_outcome(
        OutcomeClass::BackendFailure(ErrorKind::HttpStatus(500)),
        FAST,
    );
    assert_eq!(
        b.snapshot().consecutive_failures,
        0,
        "a 500 answered: success"
    );
    for _ in 0..4 {
        b.record_outcome(
            OutcomeClass::BackendFailure(ErrorKind::ConnectRefused),
            FAST,
        );
    }
    b.record_outcome(OutcomeClass::Success, FAST);
    assert_eq!(b.snapshot().consecutive_failures, 0);
    for _ in 0..5 {
        b.record_outcome(OutcomeClass::BackendFailure(ErrorKind::ReadTimeout), FAST);
    }
    assert_eq!(b.state(), GateState::Open);

    // An error kind left out of failure_kinds is ignored, not a success.
    let b = breaker(BreakerConfig {
        failure_kinds: vec![FailureKind::ConnectRefused],
        ..cfg()
    });
    for _ in 0..4 {
        b.record_outcome(
            OutcomeClass::BackendFailure(ErrorKind::ConnectRefused),
            FAST,
        );
    }
    b.record_outcome(OutcomeClass::BackendFailure(ErrorKind::ReadTimeout), FAST);
    assert_eq!(b.snapshot().consecutive_failures, 4);
    b.record_outcome(
        OutcomeClass::BackendFailure(ErrorKind::ConnectRefused),
        FAST,
    );
    assert_eq!(b.state(), GateState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_disabled_breaker_admits_everything() {
    let b = breaker(BreakerConfig {
        enabled: false,
        ..cfg()
    });
    fail(&b, 100);
    assert_eq!(b.state(), GateState::Closed);
    assert!(b.try_acquire().is_some());
}

#[tokio::test(start_paused = true)]
async fn reset_closes_from_any_state() {
    let b = breaker(cfg());
    let seen = log(&b);
    fail(&b, 5);
    b.reset();
    assert_eq!(b.state(), GateState::Closed);
    assert_eq!(
        seen.lock().unwrap().last().unwrap().reason,
        TransitionReason::Reset
    );
    to_half_open(&b).await;
    b.reset();
    assert_eq!(b.state(), GateState::Closed);
    b.reset();
    assert_eq!(
        seen.lock().unwrap().len(),
        5,
        "resetting a closed one is no transition"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_tasks_get_exactly_the_probe_slots() {
    const PROBES: usize = 3;
    let b = Arc::new(
        CircuitBreaker::new(BreakerConfig {
            half_open_probes: PROBES as u32,
            half_open_successes: 10,
            ..cfg()
        })
        .unwrap(),
    );
    fail(&b, 5);
    // Half-open without waiting for the clock (this runtime's clock is real).
    AdmissionGate::on_backend_recovered(&*b);
    let admitted = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(64));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (b, admitted, barrier) =
                (Arc::clone(&b), Arc::clone(&admitted), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                let a = b.try_acquire_owned();
                if a.is_some() {
                    admitted.fetch_add(1, Ordering::SeqCst);
                }
                // Hold the slot until every task has tried.
                barrier.wait().await;
                a
            })
        })
        .collect();
    let mut held = Vec::new();
    for t in tasks {
        held.extend(t.await.unwrap());
    }
    assert_eq!(admitted.load(Ordering::SeqCst), PROBES);
    assert_eq!(b.snapshot().probes_in_flight, PROBES as u32);
    drop(held);
    assert_eq!(b.snapshot().probes_in_flight, 0, "every slot came back");
}

#[test]
fn racing_threads_through_the_gate_get_exactly_the_probe_slots() {
    const PROBES: u32 = 4;
    let b = CircuitBreaker::new(BreakerConfig {
        half_open_probes: PROBES,
        ..cfg()
    })
    .unwrap();
    fail(&b, 5);
    AdmissionGate::on_backend_recovered(&b);
    for _round in 0..50 {
        let admitted = AtomicUsize::new(0);
        let barrier = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    barrier.wait();
                    let mut mine = 0;
                    for _ in 0..100 {
                        if AdmissionGate::try_admit(&b) {
                            mine += 1;
                        }
                    }
                    admitted.fetch_add(mine, Ordering::SeqCst);
                });
            }
        });
        assert_eq!(admitted.load(Ordering::SeqCst), PROBES as usize);
        for _ in 0..PROBES {
            AdmissionGate::release(&b);
        }
        assert_eq!(b.snapshot().probes_in_flight, 0);
    }
}

#[test]
fn recording_races_with_trips_and_closes_without_wedging() {
    // Threads fail and succeed at random while another keeps recovering the
    // backend: whatever interleaving, the breaker ends in a state it can
    // leave, with no probe slot lost.
    let b = CircuitBreaker::new(BreakerConfig {
        consecutive_failures: 2,
        half_open_probes: 2,
        half_open_successes: 2,
        ..cfg()
    })
    .unwrap();
    std::thread::scope(|s| {
        for t in 0..3u64 {
            let b = &b;
            s.spawn(move || {
                let mut rng = fastrand::Rng::with_seed(t);
                for _ in 0..20_000 {
                    if let Some(a) = b.try_acquire() {
                        if rng.bool() {
                            a.success();
                        } else if rng.u8(..10) == 0 {
                            drop(a);
                        } else {
                            a.failure();
                        }
                    }
                    if rng.u8(..50) == 0 {
                        AdmissionGate::on_backend_recovered(b);
                    }
                }
            });
        }
    });
    AdmissionGate::on_backend_recovered(&b);
    let s = b.snapshot();
    assert_eq!(s.probes_in_flight, 0, "{s:?}");
    assert!(s.trips > 0);
    if s.state == GateState::HalfOpen {
        b.try_acquire().unwrap().success();
        b.try_acquire().unwrap().success();
    }
    assert_eq!(b.state(), GateState::Closed);
}
