//! A registry wired the way the engine wires it: breakers as backend gates,
//! fed through the `Observer` stream, under a shared removal cap.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use detour_breaker::{BreakerConfig, BreakerRegistry, Transition, TransitionReason};
use detour_core::{
    AttemptOutcome, Backend, CommitPoint, ErrorKind, GateState, Observer, OutcomeClass, Permit,
    Removal, RemovalCap,
};
use tokio::time::{advance, Instant};

fn backends(n: u16) -> Vec<Arc<Backend>> {
    (1..=n)
        .map(|p| Arc::new(Backend::new(SocketAddr::from(([127, 0, 0, 1], p)))))
        .collect()
}

fn registry() -> BreakerRegistry {
    let mut cfg = BreakerConfig::default();
    cfg.jitter = 0.0;
    BreakerRegistry::new(cfg).unwrap().with_upstream("app")
}

/// Report one attempt to `obs` as the engine does. The paused clock does not
/// move while an attempt runs here, so its latency is zero: a probe's latency
/// never reaches back before its own admission.
fn report(obs: &impl Observer, backend: &Arc<Backend>, class: OutcomeClass) {
    let status = match class {
        OutcomeClass::BackendFailure(ErrorKind::HttpStatus(s)) => Some(s),
        OutcomeClass::Success => Some(200),
        _ => None,
    };
    obs.on_attempt(&AttemptOutcome {
        backend: Some(backend),
        addr: backend.addr(),
        upstream: "app",
        class,
        status,
        latency: Duration::ZERO,
        commit: CommitPoint::ResponseStarted,
        attempt: 1,
    });
}

const REFUSED: OutcomeClass = OutcomeClass::BackendFailure(ErrorKind::ConnectRefused);

fn admit(b: &Arc<Backend>) -> Option<Permit> {
    b.try_admit(Instant::now())
}

#[tokio::test(start_paused = true)]
async fn the_removal_cap_keeps_all_but_one_breaker_closed() {
    let reg = registry();
    let bs = backends(3);
    Arc::new(RemovalCap::new(34)).attach(&bs);
    for b in &bs {
        reg.attach(b).unwrap();
    }
    // Every backend fails five times in a row.
    for _ in 0..5 {
        for b in &bs {
            report(&reg, b, REFUSED);
        }
    }
    let open: Vec<_> = bs
        .iter()
        .filter(|b| reg.breaker(b.addr()).unwrap().state() == GateState::Open)
        .collect();
    assert_eq!(open.len(), 1, "34 % of 3 backends: one may be removed");
    assert_eq!(open[0].addr(), bs[0].addr(), "the first to trip");
    assert!(admit(&bs[0]).is_none());
    assert!(admit(&bs[1]).is_some(), "refused removal: stays in service");
    assert!(admit(&bs[2]).is_some());
    assert_eq!(bs[0].state().removal_cap().unwrap().removed(), 1);

    // The first recovers: open_for, then three probes through its gate.
    advance(Duration::from_secs(30)).await;
    for _ in 0..3 {
        let p = admit(&bs[0]).expect("a probe");
        assert!(admit(&bs[0]).is_none(), "one probe at a time");
        report(&reg, &bs[0], OutcomeClass::Success);
        drop(p);
    }
    assert_eq!(
        reg.breaker(bs[0].addr()).unwrap().state(),
        GateState::Closed
    );
    assert_eq!(bs[0].state().removal_cap().unwrap().removed(), 0);
    assert_eq!(
        bs[0].state().recovered_at(),
        Some(Instant::now()),
        "closing marks the backend recovered (slow start)"
    );
    // The others kept counting: one more failure trips the second at once.
    report(&reg, &bs[1], REFUSED);
    assert_eq!(reg.breaker(bs[1].addr()).unwrap().state(), GateState::Open);
    report(&reg, &bs[2], REFUSED);
    assert_eq!(
        reg.breaker(bs[2].addr()).unwrap().state(),
        GateState::Closed,
        "the slot is taken again"
    );
}

#[tokio::test(start_paused = true)]
async fn permits_hold_probe_slots_and_a_cancelled_request_leaks_none() {
    let reg = registry();
    let b = &backends(1)[0];
    reg.attach(b).unwrap();
    for _ in 0..5 {
        report(&reg, b, REFUSED);
    }
    advance(Duration::from_secs(30)).await;
    let probe = admit(b).expect("half-open");
    assert!(admit(b).is_none());
    assert_eq!(b.state().in_flight(), 1);
    drop(probe); // cancelled: no outcome
    assert_eq!(b.state().in_flight(), 0);
    let probe = admit(b).expect("the slot came back");
    report(&reg, b, OutcomeClass::Success);
    drop(probe);
    let breaker = reg.breaker(b.addr()).unwrap();
    assert_eq!(breaker.state(), GateState::HalfOpen);
    let probe = admit(b).unwrap();
    report(
        &reg,
        b,
        OutcomeClass::BackendFailure(ErrorKind::HttpStatus(503)),
    );
    drop(probe);
    assert_eq!(
        breaker.state(),
        GateState::Open,
        "any failed probe re-opens"
    );
    assert_eq!(breaker.trips(), 2);
}

#[tokio::test(start_paused = true)]
async fn only_what_the_backend_caused_counts() {
    let reg = registry();
    let b = &backends(1)[0];
    let breaker = reg.attach(b).unwrap();
    for kind in [
        ErrorKind::CircuitOpen,
        ErrorKind::BudgetExhausted,
        ErrorKind::Overloaded,
        ErrorKind::NoPeer,
        ErrorKind::DownstreamClosed,
        ErrorKind::DeadlineExceeded,
        ErrorKind::ConnectionClosed, // a stale pooled connection is Local
    ] {
        for _ in 0..10 {
            report(&reg, b, OutcomeClass::Local(kind));
        }
    }
    for _ in 0..10 {
        report(
            &reg,
            b,
            OutcomeClass::BackendFailure(ErrorKind::HttpStatus(500)),
        );
    }
    assert_eq!(breaker.state(), GateState::Closed);
    assert_eq!(breaker.snapshot().consecutive_failures, 0);
    for _ in 0..4 {
        report(
            &reg,
            b,
            OutcomeClass::BackendFailure(ErrorKind::HttpStatus(502)),
        );
    }
    report(
        &reg,
        b,
        OutcomeClass::BackendFailure(ErrorKind::ReadTimeout),
    );
    assert_eq!(breaker.state(), GateState::Open);
}

#[tokio::test(start_paused = true)]
async fn retry_after_snapshot_and_transitions() {
    let reg = registry();
    let bs = backends(3);
    for b in &bs {
        reg.attach(b).unwrap();
    }
    let seen: Arc<Mutex<Vec<Transition>>> = Arc::default();
    let reg = Arc::new(reg);
    {
        // The callback may use the registry: no lock is held while it runs.
        let seen = Arc::clone(&seen);
        let weak = Arc::downgrade(&reg);
        reg.on_transition(move |t| {
            let r = weak.upgrade().unwrap();
            assert!(r.snapshot().len() == 3);
            seen.lock().unwrap().push(t.clone());
        });
    }
    assert_eq!(reg.retry_after(), None, "nothing open");
    for _ in 0..5 {
        report(&*reg, &bs[2], REFUSED);
    }
    advance(Duration::from_secs(10)).await;
    for _ in 0..5 {
        report(&*reg, &bs[0], REFUSED);
    }
    assert_eq!(
        reg.retry_after(),
        Some(Duration::from_secs(20)),
        "the first open breaker to half-open"
    );
    let snap = reg.snapshot();
    let addrs: Vec<_> = snap.iter().map(|s| s.addr.unwrap()).collect();
    assert_eq!(addrs, bs.iter().map(|b| b.addr()).collect::<Vec<_>>());
    assert_eq!(snap[0].state, GateState::Open);
    assert_eq!(snap[0].half_open_in, Some(Duration::from_secs(30)));
    assert_eq!(snap[1].state, GateState::Closed);
    assert_eq!(snap[1].trips, 0);
    assert_eq!(snap[2].trips, 1);
    assert_eq!(snap[2].half_open_in, Some(Duration::from_secs(20)));

    // An active check sees bs[0] come back: half-open at once.
    bs[0].state().gate().unwrap().on_backend_recovered();
    assert_eq!(reg.retry_after(), Some(Duration::from_secs(20)));
    let seen = seen.lock().unwrap();
    let summary: Vec<_> = seen
        .iter()
        .map(|t| {
            assert_eq!(t.upstream.as_deref(), Some("app"));
            (t.addr.unwrap().port(), t.from, t.to, t.reason)
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                3,
                GateState::Closed,
                GateState::Open,
                TransitionReason::ConsecutiveFailures
            ),
            (
                1,
                GateState::Closed,
                GateState::Open,
                TransitionReason::ConsecutiveFailures
            ),
            (
                1,
                GateState::Open,
                GateState::HalfOpen,
                TransitionReason::BackendRecovered
            ),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_breaker_does_not_keep_its_backend_alive() {
    let reg = registry();
    let b = backends(1).pop().unwrap();
    let breaker = reg.attach(&b).unwrap();
    let weak = Arc::downgrade(&b);
    drop(b);
    assert!(
        weak.upgrade().is_none(),
        "no Backend → gate → Backend cycle"
    );
    // A breaker whose backend is gone still works on its own.
    for _ in 0..5 {
        breaker.record_failure(Duration::ZERO);
    }
    assert_eq!(breaker.state(), GateState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_breaker_open_without_its_slot_gives_way_to_the_cap() {
    // Two backends share a 50 % cap. A's breaker opens; the set is rebuilt
    // and A's new value finds the cap taken by B's ejection: A's breaker
    // must close rather than exceed the cap.
    let reg = registry();
    let bs = backends(2);
    let cap = Arc::new(RemovalCap::new(50));
    cap.attach(&bs);
    reg.attach(&bs[0]).unwrap();
    for _ in 0..5 {
        report(&reg, &bs[0], REFUSED);
    }
    assert!(bs[0].state().is_removed_for(Removal::BreakerOpen));
    let fresh_a = Arc::new(Backend::new(bs[0].addr()));
    cap.attach(&[Arc::clone(&fresh_a), Arc::clone(&bs[1])]);
    // A's old value gives its slot back on rebind; B takes it first here.
    bs[0].state().restore(Removal::BreakerOpen);
    assert!(bs[1].state().try_remove(Removal::Ejected));
    let breaker = reg.attach(&fresh_a).unwrap();
    assert_eq!(breaker.state(), GateState::Closed);
    assert!(admit(&fresh_a).is_some());
    assert_eq!(cap.removed(), 1);
}
