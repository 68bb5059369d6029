//! Passive outlier detection fed with attempt outcomes, under tokio's paused
//! clock: the consecutive detectors, ejection length and its growth and decay,
//! the removal ceiling, success rate and failure percentage, and what never
//! counts.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use detour_core::{
    AttemptOutcome, Backend, CommitPoint, ErrorKind, Observer, OutcomeClass, Removal,
};
use detour_health::{EjectCause, EventKind, HealthEvent, OutlierConfig, OutlierDetector};
use tokio::sync::oneshot;
use tokio::time::{advance, sleep, sleep_until, Instant};

fn backends(n: u8) -> Vec<Arc<Backend>> {
    (1..=n)
        .map(|i| Arc::new(Backend::new(SocketAddr::from(([10, 0, 0, i], 80)))))
        .collect()
}

/// No jitter; the statistics off unless a test turns them on.
fn config() -> OutlierConfig {
    let mut c = OutlierConfig::default();
    c.jitter = 0.0;
    c.success_rate.enabled = false;
    c
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<HealthEvent>>>);

impl Recorder {
    fn seen(&self) -> Vec<HealthEvent> {
        self.0.lock().unwrap().clone()
    }
}

fn detector(config: OutlierConfig, members: &[Arc<Backend>]) -> (Arc<OutlierDetector>, Recorder) {
    let events = Recorder::default();
    let sink = Arc::clone(&events.0);
    let d = OutlierDetector::new(config)
        .unwrap()
        .upstream("app")
        .on_event(move |e| sink.lock().unwrap().push(e.clone()));
    d.attach(members);
    (Arc::new(d), events)
}

fn report(d: &OutlierDetector, b: &Arc<Backend>, class: OutcomeClass, status: Option<u16>) {
    d.on_attempt(&AttemptOutcome {
        backend: Some(b),
        addr: b.addr(),
        upstream: "app",
        class,
        status,
        latency: Duration::from_millis(5),
        commit: CommitPoint::ResponseStarted,
        attempt: 1,
    });
}

fn status(d: &OutlierDetector, b: &Arc<Backend>, s: u16, times: usize) {
    let class = if s >= 500 {
        OutcomeClass::BackendFailure(ErrorKind::HttpStatus(s))
    } else {
        OutcomeClass::Success
    };
    for _ in 0..times {
        report(d, b, class, Some(s));
    }
}

fn failure(d: &OutlierDetector, b: &Arc<Backend>, kind: ErrorKind, times: usize) {
    for _ in 0..times {
        report(d, b, OutcomeClass::BackendFailure(kind), None);
    }
}

fn ejected(b: &Backend) -> bool {
    b.state().ejected_until(Instant::now()).is_some()
}

fn ejections(events: &Recorder) -> Vec<(SocketAddr, EjectCause, String)> {
    events
        .seen()
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::Ejected { cause, .. } => Some((e.backend, cause, e.reason)),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn consecutive_5xx_eject_at_once_and_a_success_resets_the_count() {
    let bs = backends(4);
    let (d, events) = detector(config(), &bs);
    let b = &bs[0];
    status(&d, b, 503, 4);
    status(&d, b, 200, 1);
    status(&d, b, 500, 4);
    assert!(!ejected(b), "the streak was broken");
    let now = Instant::now();
    status(&d, b, 500, 1);
    assert!(ejected(b));
    assert!(b.try_admit(Instant::now()).is_none());
    assert_eq!(
        b.state().ejected_until(now),
        Some(now + Duration::from_secs(30))
    );
    assert!(b.state().is_removed_for(Removal::Ejected));
    assert_eq!(d.cap().removed(), 1);
    assert_eq!(
        ejections(&events),
        vec![(
            b.addr(),
            EjectCause::Consecutive5xx,
            "5 consecutive 5xx; ejected for 30.0s".to_string()
        )]
    );
    // Failures of requests already in flight do not eject it again.
    status(&d, b, 500, 10);
    assert_eq!(ejections(&events).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn connect_failures_are_gateway_failures_and_resets_are_local_origin() {
    let bs = backends(4);
    let mut c = config();
    c.max_ejection_percent = 100;
    let (d, events) = detector(c, &bs);
    failure(&d, &bs[0], ErrorKind::ConnectRefused, 5);
    status(&d, &bs[1], 502, 2);
    failure(&d, &bs[1], ErrorKind::ConnectTimeout, 2);
    status(&d, &bs[1], 504, 1);
    // Resets and read timeouts are not gateway failures, but five in a row
    // are local-origin failures; a 404 answer in between breaks that streak.
    failure(&d, &bs[2], ErrorKind::ConnectionReset, 4);
    status(&d, &bs[2], 404, 1);
    failure(&d, &bs[2], ErrorKind::ReadTimeout, 4);
    assert!(!ejected(&bs[2]));
    failure(&d, &bs[2], ErrorKind::ReadTimeout, 1);
    assert_eq!(
        ejections(&events),
        vec![
            (
                bs[0].addr(),
                EjectCause::ConsecutiveGatewayFailure,
                "5 consecutive gateway failures; ejected for 30.0s".to_string()
            ),
            (
                bs[1].addr(),
                EjectCause::ConsecutiveGatewayFailure,
                "5 consecutive gateway failures; ejected for 30.0s".to_string()
            ),
            (
                bs[2].addr(),
                EjectCause::ConsecutiveLocalOriginFailure,
                "5 consecutive local-origin failures: last read timeout; ejected for 30.0s"
                    .to_string()
            ),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_threshold_of_zero_disables_its_detector() {
    let bs = backends(4);
    let mut c = config();
    c.consecutive_5xx = 0;
    c.consecutive_gateway_failure = 0;
    let (d, events) = detector(c, &bs);
    status(&d, &bs[0], 503, 50);
    assert!(!ejected(&bs[0]));
    failure(&d, &bs[0], ErrorKind::ConnectRefused, 5);
    assert_eq!(
        ejections(&events)[0].1,
        EjectCause::ConsecutiveLocalOriginFailure
    );
}

#[tokio::test(start_paused = true)]
async fn local_outcomes_never_eject_nor_break_a_streak() {
    let bs = backends(4);
    let mut c = config();
    c.success_rate.enabled = true;
    c.success_rate.min_hosts = 1;
    c.success_rate.request_volume = 1;
    c.failure_percentage.enabled = true;
    c.failure_percentage.min_hosts = 1;
    c.failure_percentage.request_volume = 1;
    let (d, events) = detector(c, &bs);
    let b = &bs[0];
    for kind in [
        ErrorKind::CircuitOpen,
        ErrorKind::BudgetExhausted,
        ErrorKind::Overloaded,
        ErrorKind::NoPeer,
        ErrorKind::DownstreamClosed,
        ErrorKind::DeadlineExceeded,
        // A stale pooled connection is reported as Local.
        ErrorKind::ConnectionClosed,
        ErrorKind::ConnectRefused,
    ] {
        for _ in 0..100 {
            report(&d, b, OutcomeClass::Local(kind), None);
        }
    }
    // A kind Detour raises itself never counts, even if misreported.
    failure(&d, b, ErrorKind::CircuitOpen, 100);
    d.sweep(Instant::now());
    assert!(ejections(&events).is_empty());
    let st = &d.status()[0];
    assert_eq!(
        (
            st.consecutive_5xx,
            st.consecutive_gateway_failure,
            st.consecutive_local_origin_failure
        ),
        (0, 0, 0)
    );

    // Local outcomes between failures do not reset the streak either.
    status(&d, b, 500, 4);
    report(&d, b, OutcomeClass::Local(ErrorKind::Overloaded), None);
    status(&d, b, 500, 1);
    assert!(ejected(b));
}

#[tokio::test(start_paused = true)]
async fn ejections_end_on_time_under_run() {
    let bs = backends(4);
    let mut c = config();
    c.base_ejection = Duration::from_secs(25);
    let (d, events) = detector(c, &bs);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(Arc::clone(&d).run(async move {
        let _ = stopped.await;
    }));
    let start = Instant::now();
    status(&d, &bs[0], 500, 5);
    sleep_until(start + Duration::from_millis(24_900)).await;
    assert!(bs[0].state().is_removed_for(Removal::Ejected));
    // 25 s is not a sweep time (10, 20, 30): run wakes for the ejection's end.
    sleep_until(start + Duration::from_millis(25_001)).await;
    assert!(!bs[0].state().is_removed_for(Removal::Ejected));
    assert_eq!(d.cap().removed(), 0);
    assert!(bs[0].try_admit(Instant::now()).is_some());
    assert_eq!(
        bs[0].state().recovered_at(),
        Some(start + Duration::from_secs(25)),
        "slow start ramps from the end of the ejection"
    );
    let last = events.seen().pop().unwrap();
    assert_eq!(
        (last.kind, last.at - start, last.reason.as_str()),
        (
            EventKind::Unejected,
            Duration::from_secs(25),
            "ejection expired"
        )
    );
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn repeated_ejections_grow_and_the_multiplier_decays_while_it_behaves() {
    let bs = backends(4);
    let b = &bs[0];
    let (d, _events) = detector(config(), &bs);
    let length = |b: &Backend| {
        let now = Instant::now();
        b.state().ejected_until(now).map(|u| u - now)
    };

    status(&d, b, 500, 5);
    assert_eq!(length(b), Some(Duration::from_secs(30)));
    advance(Duration::from_secs(30)).await;
    d.sweep(Instant::now());
    assert!(!b.state().is_removed_for(Removal::Ejected));

    // Back at once and failing again: twice as long.
    status(&d, b, 500, 5);
    assert_eq!(length(b), Some(Duration::from_secs(60)));
    assert_eq!(d.status()[0].ejections, 2);
    advance(Duration::from_secs(60)).await;
    d.sweep(Instant::now());

    // Failing right after: three times.
    status(&d, b, 500, 5);
    assert_eq!(length(b), Some(Duration::from_secs(90)));
    advance(Duration::from_secs(90)).await;
    d.sweep(Instant::now());
    assert_eq!(d.status()[0].ejections, 3);

    // Behaving: one interval after the ejection's end the multiplier starts
    // dropping by one per interval.
    advance(Duration::from_secs(5)).await;
    d.sweep(Instant::now());
    assert_eq!(d.status()[0].ejections, 3, "not a whole interval yet");
    for expected in [2, 1] {
        advance(Duration::from_secs(10)).await;
        d.sweep(Instant::now());
        assert_eq!(d.status()[0].ejections, expected);
    }
    status(&d, b, 500, 5);
    assert_eq!(length(b), Some(Duration::from_secs(60)), "2 × base again");
}

#[tokio::test(start_paused = true)]
async fn ejections_never_exceed_the_maximum() {
    let bs = backends(4);
    let mut c = config();
    c.max_ejection = Duration::from_secs(70);
    let (d, _events) = detector(c, &bs);
    let b = &bs[0];
    for expected in [30, 60, 70, 70] {
        status(&d, b, 500, 5);
        let now = Instant::now();
        assert_eq!(
            b.state().ejected_until(now),
            Some(now + Duration::from_secs(expected))
        );
        advance(Duration::from_secs(expected)).await;
        d.sweep(Instant::now());
    }
    // The count stopped at ceil(70 / 30) = 3, so it decays back quickly.
    assert_eq!(d.status()[0].ejections, 3);
}

#[tokio::test(start_paused = true)]
async fn jitter_shortens_ejections_within_bounds() {
    let bs = backends(10);
    let mut c = config();
    c.jitter = 0.5;
    c.max_ejection_percent = 100;
    let events = Recorder::default();
    let sink = Arc::clone(&events.0);
    let d = OutlierDetector::new(c)
        .unwrap()
        .seed(3)
        .on_event(move |e| sink.lock().unwrap().push(e.clone()));
    d.attach(&bs);
    let now = Instant::now();
    for b in &bs {
        status(&d, b, 500, 5);
    }
    let lengths: Vec<Duration> = bs
        .iter()
        .map(|b| b.state().ejected_until(now).unwrap() - now)
        .collect();
    assert!(
        lengths
            .iter()
            .all(|l| *l > Duration::from_secs(15) && *l <= Duration::from_secs(30)),
        "{lengths:?}"
    );
    assert!(lengths.windows(2).any(|w| w[0] != w[1]), "{lengths:?}");
}

#[tokio::test(start_paused = true)]
async fn the_removal_ceiling_bounds_ejections_however_many_fail() {
    let bs = backends(3);
    let mut c = config();
    c.max_ejection_percent = 34;
    let (d, events) = detector(c, &bs);
    for _ in 0..3 {
        for b in &bs {
            status(&d, b, 503, 5);
            failure(&d, b, ErrorKind::ConnectRefused, 5);
        }
    }
    let out: Vec<_> = bs.iter().filter(|b| ejected(b)).collect();
    assert_eq!(out.len(), 1, "3 backends at 34 %: one may go");
    assert_eq!(d.cap().removed(), 1);
    assert_eq!(ejections(&events).len(), 1);

    // When the first comes back, a backend that still fails takes its slot.
    advance(Duration::from_secs(30)).await;
    d.sweep(Instant::now());
    assert_eq!(d.cap().removed(), 0);
    status(&d, &bs[2], 503, 1);
    assert!(ejected(&bs[2]), "its streak went on while it was refused");
    assert_eq!(d.cap().removed(), 1);
}

#[tokio::test(start_paused = true)]
async fn open_breakers_and_ejections_share_the_ceiling() {
    let bs = backends(3);
    let mut c = config();
    c.max_ejection_percent = 34;
    let (d, _events) = detector(c, &bs);
    // A breaker (another crate) removes backend 1 through the same cap.
    assert!(bs[0].state().try_remove(Removal::BreakerOpen));
    status(&d, &bs[1], 500, 5);
    assert!(!ejected(&bs[1]), "the ceiling is taken by the breaker");
    // The backend behind the open breaker holds its slot already.
    status(&d, &bs[0], 500, 5);
    assert!(ejected(&bs[0]));
    assert_eq!(d.cap().removed(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_backend_far_below_its_peers_success_rate_is_ejected_at_the_sweep() {
    let bs = backends(7);
    let mut c = config();
    c.success_rate.enabled = true;
    c.consecutive_5xx = 0;
    let (d, events) = detector(c, &bs);
    for b in &bs[..5] {
        status(&d, b, 200, 100);
    }
    for _ in 0..50 {
        status(&d, &bs[5], 200, 1);
        status(&d, &bs[5], 500, 1);
    }
    // Below the request volume (99 < 100): not judged, however bad.
    status(&d, &bs[6], 500, 99);
    assert!(ejections(&events).is_empty(), "nothing before the sweep");
    d.sweep(Instant::now());
    let out = ejections(&events);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].0, bs[5].addr());
    assert_eq!(out[0].1, EjectCause::SuccessRate);
    assert!(
        out[0].2.starts_with("success rate 50.0% below 56.3%"),
        "{}",
        out[0].2
    );
    // The interval's counts start over.
    assert!(d
        .status()
        .iter()
        .all(|s| s.interval_successes == 0 && s.interval_failures == 0));
}

#[tokio::test(start_paused = true)]
async fn too_few_backends_with_volume_are_not_judged_by_success_rate() {
    let bs = backends(4);
    let mut c = config();
    c.success_rate.enabled = true;
    c.consecutive_5xx = 0;
    let (d, events) = detector(c, &bs);
    for b in &bs[..3] {
        status(&d, b, 200, 200);
    }
    status(&d, &bs[3], 500, 200);
    d.sweep(Instant::now());
    assert!(ejections(&events).is_empty(), "4 backends < min_hosts 5");
}

#[tokio::test(start_paused = true)]
async fn failure_percentage_ejects_above_the_threshold_when_enabled() {
    let bs = backends(5);
    let mut c = config();
    c.consecutive_5xx = 0;
    c.consecutive_gateway_failure = 0;
    c.failure_percentage.enabled = true;
    let (d, events) = detector(c.clone(), &bs);
    for b in &bs[..4] {
        status(&d, b, 200, 60);
    }
    status(&d, &bs[4], 200, 6);
    status(&d, &bs[4], 503, 54);
    d.sweep(Instant::now());
    let out = ejections(&events);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].0, out[0].1),
        (bs[4].addr(), EjectCause::FailurePercentage)
    );

    // Off by default.
    c.failure_percentage = OutlierConfig::default().failure_percentage;
    let bs = backends(5);
    let (d, events) = detector(c, &bs);
    status(&d, &bs[0], 503, 60);
    for b in &bs[1..] {
        status(&d, b, 200, 60);
    }
    d.sweep(Instant::now());
    assert!(ejections(&events).is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_ejection_ended_by_a_health_check_can_start_again_at_once() {
    let bs = backends(4);
    let (d, _events) = detector(config(), &bs);
    let b = &bs[0];
    status(&d, b, 500, 5);
    // What the health checker does when the backend comes back.
    b.state().clear_ejection();
    b.state().restore(Removal::Ejected);
    assert_eq!(d.cap().removed(), 0);
    advance(Duration::from_secs(1)).await;
    status(&d, b, 500, 5);
    let now = Instant::now();
    assert_eq!(
        b.state().ejected_until(now),
        Some(now + Duration::from_secs(60)),
        "the second ejection in a row"
    );
    assert_eq!(d.cap().removed(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_ejection_ended_by_a_health_check_is_not_announced_twice_and_starts_decaying() {
    let bs = backends(4);
    let (d, events) = detector(config(), &bs);
    let b = &bs[0];
    status(&d, b, 500, 5);
    advance(Duration::from_secs(5)).await;
    b.state().clear_ejection();
    b.state().restore(Removal::Ejected);
    advance(Duration::from_secs(1)).await;
    d.sweep(Instant::now());
    assert_eq!(d.status()[0].ejected_until, None);
    // A whole interval in service since the check ended it (t=6 → 16).
    advance(Duration::from_secs(10)).await;
    d.sweep(Instant::now());
    assert_eq!(d.status()[0].ejections, 0);
    // Past the original end (t=30): nothing more to announce.
    advance(Duration::from_secs(20)).await;
    d.sweep(Instant::now());
    assert!(events.seen().iter().all(|e| e.kind != EventKind::Unejected));
    assert_eq!(b.state().recovered_at(), None);
}

#[tokio::test(start_paused = true)]
async fn outcomes_of_other_backends_and_upstreams_are_ignored() {
    let bs = backends(4);
    let (d, events) = detector(config(), &bs);
    // Same address, another Backend (another upstream, or replaced).
    let twin = Arc::new(Backend::new(bs[0].addr()));
    status(&d, &twin, 500, 10);
    // No backend handle: judged by the upstream's name.
    for upstream in ["other", "app"] {
        for _ in 0..5 {
            d.on_attempt(&AttemptOutcome {
                backend: None,
                addr: bs[1].addr(),
                upstream,
                class: OutcomeClass::BackendFailure(ErrorKind::HttpStatus(500)),
                status: Some(500),
                latency: Duration::from_millis(1),
                commit: CommitPoint::ResponseStarted,
                attempt: 1,
            });
        }
    }
    let out = ejections(&events);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, bs[1].addr());
}

#[tokio::test(start_paused = true)]
async fn a_departing_backend_frees_its_slot_of_the_ceiling() {
    let bs = backends(4);
    let (d, _events) = detector(config(), &bs);
    status(&d, &bs[0], 500, 5);
    assert_eq!(d.cap().removed(), 1);
    d.attach(&bs[1..]);
    assert_eq!(d.cap().removed(), 0);
    assert_eq!(d.cap().total(), 3);
    assert_eq!(d.status().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_run() {
    let bs = backends(2);
    let (d, _events) = detector(config(), &bs);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(Arc::clone(&d).run(async move {
        let _ = stopped.await;
    }));
    sleep(Duration::from_secs(25)).await;
    assert!(!task.is_finished());
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_millis(1), task)
        .await
        .expect("run returns at shutdown")
        .unwrap();
}
