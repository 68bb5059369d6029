//! Active health checks against in-memory backends under tokio's paused clock:
//! thresholds, schedules, concurrency, start-up, recovery side effects and
//! shutdown. Every duration asserted is virtual time, so it is exact.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use detour_core::{AdmissionGate, Backend, GateState, Removal, RemovalCap};
use detour_health::{
    CheckFailure, CheckFailureKind, ConfiguredCheck, EventKind, HealthCheck, HealthChecker,
    HealthConfig, HealthEvent, StatusRange, Verdict,
};
use detour_testkit::memory::{MemBehavior, MemoryConnector, MemoryNet};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, Instant};

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n], 80))
}

fn backend(n: u8) -> Arc<Backend> {
    Arc::new(Backend::new(addr(n)))
}

/// interval 10 s, fast interval 2 s, timeout 1 s, rise 2, fall 3, no jitter.
fn config() -> HealthConfig {
    let mut c = HealthConfig::http("/healthz");
    c.interval = Duration::from_secs(10);
    c.fast_interval = Duration::from_secs(2);
    c.timeout = Duration::from_secs(1);
    c.jitter = 0.0;
    c
}

type Checker = HealthChecker<ConfiguredCheck<MemoryConnector>>;

/// Events seen, as (kind, seconds since `start`, reason).
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<HealthEvent>>>);

impl Recorder {
    fn callback(&self) -> impl Fn(&HealthEvent) + Send + Sync + 'static {
        let events = Arc::clone(&self.0);
        move |e| events.lock().unwrap().push(e.clone())
    }

    fn seen(&self, start: Instant) -> Vec<(EventKind, Duration, SocketAddr, String)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|e| (e.kind, e.at - start, e.backend, e.reason.clone()))
            .collect()
    }
}

fn checker(
    net: &MemoryNet,
    config: HealthConfig,
    backends: &[Arc<Backend>],
    events: &Recorder,
) -> Arc<Checker> {
    let list = backends.to_vec();
    Arc::new(
        HealthChecker::from_config(config, net.connector(), move || list.clone())
            .unwrap()
            .upstream("app")
            .on_event(events.callback()),
    )
}

/// A checker over `members`, a list the test changes as it goes.
fn changing_checker(
    net: &MemoryNet,
    members: &Arc<Mutex<Vec<Arc<Backend>>>>,
    events: &Recorder,
) -> Arc<Checker> {
    let list = Arc::clone(members);
    Arc::new(
        HealthChecker::from_config(config(), net.connector(), move || {
            list.lock().unwrap().clone()
        })
        .unwrap()
        .on_event(events.callback()),
    )
}

fn spawn_run<H: HealthCheck>(
    checker: &Arc<HealthChecker<H>>,
) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(Arc::clone(checker).run(async move {
        let _ = stopped.await;
    }));
    (stop, task)
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Request times at `a`, in seconds since `start`.
fn request_times(net: &MemoryNet, a: SocketAddr, start: Instant) -> Vec<Duration> {
    net.log(a).iter().map(|r| r.at - start).collect()
}

#[tokio::test(start_paused = true)]
async fn fall_and_rise_thresholds_give_hysteresis() {
    let net = MemoryNet::new();
    let events = Recorder::default();
    let b = backend(1);
    net.set(b.addr(), MemBehavior::status(200));
    let start = Instant::now();
    let checker = checker(&net, config(), std::slice::from_ref(&b), &events);
    checker.first_round().await;
    assert!(
        b.try_admit(Instant::now()).is_some(),
        "up after its first pass"
    );
    let (stop, task) = spawn_run(&checker);

    // Checks fail from t=10 s: at 10, 12 (fast), 14 → down on the third.
    net.set(b.addr(), MemBehavior::Refuse);
    sleep_until(start + secs(13.5)).await;
    assert!(
        b.try_admit(Instant::now()).is_some(),
        "two failures are not enough"
    );
    sleep_until(start + secs(14.5)).await;
    assert!(b.try_admit(Instant::now()).is_none(), "down after three");
    assert_eq!(checker.status()[0].verdict, Verdict::Down);

    // Passing again: next check at 24 (settled: the normal interval), then
    // 26 (fast) → up on the second pass.
    net.set(b.addr(), MemBehavior::status(200));
    sleep_until(start + secs(25.5)).await;
    assert!(
        b.try_admit(Instant::now()).is_none(),
        "one pass is not enough"
    );
    sleep_until(start + secs(26.5)).await;
    assert!(b.try_admit(Instant::now()).is_some(), "up after two");

    assert_eq!(
        events.seen(start),
        vec![
            (
                EventKind::Up,
                secs(0.0),
                b.addr(),
                "first passing check".to_string()
            ),
            (
                EventKind::Down,
                secs(14.0),
                b.addr(),
                "3 consecutive failed checks: connection refused".to_string()
            ),
            (
                EventKind::Up,
                secs(26.0),
                b.addr(),
                "2 consecutive passing checks".to_string()
            ),
        ]
    );
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_fast_interval_applies_only_while_a_backend_changes_state() {
    let net = MemoryNet::new();
    let events = Recorder::default();
    let b = backend(1);
    // Passes, then one failure and a pass that settles it again, then
    // failures all the way down.
    net.set(b.addr(), MemBehavior::sequence([200, 200, 500, 200, 500]));
    let start = Instant::now();
    let checker = checker(&net, config(), std::slice::from_ref(&b), &events);
    checker.first_round().await;
    let (stop, task) = spawn_run(&checker);
    sleep_until(start + secs(60.5)).await;
    // 0: first round. 10: pass. 20: fail (changing) → 22: pass (settled) →
    // 32: fail → 34 → 36: down (settled) → 46 → 56.
    assert_eq!(
        request_times(&net, b.addr(), start),
        [0.0, 10.0, 20.0, 22.0, 32.0, 34.0, 36.0, 46.0, 56.0].map(secs)
    );
    let kinds: Vec<_> = events.seen(start).into_iter().map(|e| (e.0, e.1)).collect();
    assert_eq!(
        kinds,
        vec![(EventKind::Up, secs(0.0)), (EventKind::Down, secs(36.0))]
    );
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn jitter_only_shortens_the_interval() {
    let net = MemoryNet::new();
    let b = backend(1);
    net.set(b.addr(), MemBehavior::status(200));
    let mut c = config();
    c.jitter = 0.5;
    let list = vec![Arc::clone(&b)];
    let checker = Arc::new(
        HealthChecker::from_config(c, net.connector(), move || list.clone())
            .unwrap()
            .seed(7),
    );
    let start = Instant::now();
    checker.first_round().await;
    let (stop, task) = spawn_run(&checker);
    sleep_until(start + secs(100.0)).await;
    let times = request_times(&net, b.addr(), start);
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() >= 10, "{gaps:?}");
    assert!(
        gaps.iter().all(|g| *g >= secs(5.0) && *g <= secs(10.0)),
        "{gaps:?}"
    );
    assert!(
        gaps.windows(2).any(|w| w[0] != w[1]),
        "the waits vary: {gaps:?}"
    );
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn all_due_backends_are_checked_concurrently() {
    let net = MemoryNet::new();
    let events = Recorder::default();
    let backends: Vec<_> = (1..=10).map(backend).collect();
    for b in &backends {
        net.set(b.addr(), MemBehavior::slow(200, Duration::from_secs(1)));
    }
    let mut c = config();
    c.timeout = Duration::from_secs(2);
    let first = checker(&net, c, &backends, &events);
    let start = Instant::now();
    first.first_round().await;
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(1),
        "ten one-second checks take one second"
    );
    assert!(backends
        .iter()
        .all(|b| b.try_admit(Instant::now()).is_some()));

    // The same under `run`: ten backends that hang, each check cut by the
    // 1 s timeout, all at once.
    for b in &backends {
        net.set(b.addr(), MemBehavior::Hang);
    }
    let mut c = config();
    c.fall = 1;
    c.initially_healthy = true;
    let events = Recorder::default();
    let second = checker(&net, c, &backends, &events);
    let start = Instant::now();
    let (stop, task) = spawn_run(&second);
    sleep(secs(1.5)).await;
    let seen = events.seen(start);
    assert_eq!(seen.len(), 10, "{seen:?}");
    for (kind, at, _, reason) in seen {
        assert_eq!((kind, at), (EventKind::Down, secs(1.0)));
        assert_eq!(reason, "1 failed check: timed out after 1s");
    }
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_first_round_is_bounded_by_the_check_timeout() {
    let net = MemoryNet::new();
    let events = Recorder::default();
    let (hung_connect, hung_answer, healthy, refusing) =
        (backend(1), backend(2), backend(3), backend(4));
    net.set(hung_connect.addr(), MemBehavior::ConnectHang);
    net.set(hung_answer.addr(), MemBehavior::Hang);
    net.set(healthy.addr(), MemBehavior::status(204));
    // backend 4 is unknown to the network: refused.
    let all = [
        Arc::clone(&hung_connect),
        Arc::clone(&hung_answer),
        Arc::clone(&healthy),
        Arc::clone(&refusing),
    ];
    let mut c = config();
    c.timeout = Duration::from_millis(500);
    let checker = checker(&net, c, &all, &events);
    let start = Instant::now();
    checker.first_round().await;
    assert_eq!(start.elapsed(), Duration::from_millis(500));

    let now = Instant::now();
    assert!(healthy.try_admit(now).is_some());
    for b in [&hung_connect, &hung_answer, &refusing] {
        assert!(b.try_admit(now).is_none(), "{} is down", b.addr());
    }
    let mut seen = events.seen(start);
    seen.sort_by_key(|e| e.2);
    let expected = vec![
        (
            EventKind::Down,
            secs(0.5),
            addr(1),
            "first check failed: timed out after 500ms".to_string(),
        ),
        (
            EventKind::Down,
            secs(0.5),
            addr(2),
            "first check failed: timed out after 500ms".to_string(),
        ),
        (
            EventKind::Up,
            secs(0.0),
            addr(3),
            "first passing check".to_string(),
        ),
        (
            EventKind::Down,
            secs(0.0),
            addr(4),
            "first check failed: connection refused".to_string(),
        ),
    ];
    assert_eq!(seen, expected);
    // No slow start for backends that came up before any traffic.
    assert_eq!(healthy.state().recovered_at(), None);
}

#[derive(Default)]
struct FakeGate {
    recovered: AtomicU32,
}

impl AdmissionGate for FakeGate {
    fn try_admit(&self) -> bool {
        true
    }
    fn release(&self) {}
    fn state(&self) -> GateState {
        GateState::Closed
    }
    fn on_backend_recovered(&self) {
        self.recovered.fetch_add(1, Ordering::SeqCst);
    }
}

/// A backend that is down, ejected and behind a gate, coming back.
async fn recover(unejects: bool) -> (Arc<Backend>, Arc<FakeGate>, Arc<RemovalCap>, Recorder) {
    let net = MemoryNet::new();
    let events = Recorder::default();
    let (b, other) = (backend(1), backend(2));
    let gate = Arc::new(FakeGate::default());
    b.state().set_gate(gate.clone()).ok().unwrap();
    let cap = Arc::new(RemovalCap::new(50));
    cap.attach(&[Arc::clone(&b), Arc::clone(&other)]);
    assert!(b.state().try_remove(Removal::Ejected));
    b.state()
        .eject_until(Instant::now() + Duration::from_secs(300));
    net.set(b.addr(), MemBehavior::Refuse);

    let mut c = config();
    c.unejects = unejects;
    let start = Instant::now();
    let checker = checker(&net, c, std::slice::from_ref(&b), &events);
    checker.first_round().await;
    assert_eq!(gate.recovered.load(Ordering::SeqCst), 0);
    net.set(b.addr(), MemBehavior::status(200));
    let (stop, task) = spawn_run(&checker);
    // Down since the first round; a new backend comes up on its first pass,
    // at t=10.
    sleep_until(start + secs(10.5)).await;
    stop.send(()).unwrap();
    task.await.unwrap();
    assert!(!b.state().check_failed());
    assert_eq!(b.state().recovered_at(), Some(start + secs(10.0)));
    (b, gate, cap, events)
}

#[tokio::test(start_paused = true)]
async fn coming_back_ends_the_ejection_and_tells_the_gate() {
    let start = Instant::now();
    let (b, gate, cap, events) = recover(true).await;
    assert_eq!(gate.recovered.load(Ordering::SeqCst), 1);
    assert_eq!(b.state().ejected_until(Instant::now()), None);
    assert!(!b.state().is_removed_for(Removal::Ejected));
    assert_eq!(cap.removed(), 0, "the ceiling's slot is free again");
    assert!(b.try_admit(Instant::now()).is_some());
    let kinds: Vec<_> = events
        .seen(start)
        .into_iter()
        .map(|e| (e.0, e.1, e.3))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (
                EventKind::Down,
                secs(0.0),
                "first check failed: connection refused".to_string()
            ),
            (EventKind::Up, secs(10.0), "first passing check".to_string()),
            (
                EventKind::Unejected,
                secs(10.0),
                "a health check saw the backend come back".to_string()
            ),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn without_unejects_the_ejection_runs_its_course() {
    let (b, gate, cap, _events) = recover(false).await;
    assert_eq!(gate.recovered.load(Ordering::SeqCst), 1);
    assert!(b.state().ejected_until(Instant::now()).is_some());
    assert!(b.state().is_removed_for(Removal::Ejected));
    assert_eq!(cap.removed(), 1);
    assert!(b.try_admit(Instant::now()).is_none(), "still ejected");
}

#[tokio::test(start_paused = true)]
async fn a_passing_check_does_not_end_the_ejection_of_a_backend_that_stayed_up() {
    // Ejected for its traffic while its health endpoint is fine: passes that
    // change nothing must not undo the ejection.
    let net = MemoryNet::new();
    let events = Recorder::default();
    let b = backend(1);
    net.set(b.addr(), MemBehavior::status(200));
    let checker = checker(&net, config(), std::slice::from_ref(&b), &events);
    checker.first_round().await;
    b.state()
        .eject_until(Instant::now() + Duration::from_secs(300));
    let (stop, task) = spawn_run(&checker);
    sleep(secs(35.0)).await;
    assert!(b.state().ejected_until(Instant::now()).is_some());
    assert_eq!(net.requests(b.addr()), 4);
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_new_backend_takes_no_traffic_before_its_first_pass() {
    let net = MemoryNet::new();
    let events = Recorder::default();
    let (a, b, c) = (backend(1), backend(2), backend(3));
    net.set(a.addr(), MemBehavior::status(200));
    net.set(b.addr(), MemBehavior::Refuse);
    net.set(c.addr(), MemBehavior::slow(200, Duration::from_millis(300)));
    let members = Arc::new(Mutex::new(vec![Arc::clone(&a)]));
    let checker = changing_checker(&net, &members, &events);
    checker.first_round().await;
    let (stop, task) = spawn_run(&checker);
    sleep(secs(1.0)).await;

    // Prepared before it is published: never admitted before a pass.
    checker.prepare(&b);
    assert!(b.try_admit(Instant::now()).is_none());
    members.lock().unwrap().push(Arc::clone(&b));
    checker.backends_changed();
    sleep(secs(0.1)).await;
    assert_eq!(checker.status()[1].verdict, Verdict::Down);
    assert!(b.try_admit(Instant::now()).is_none());

    // Not prepared: the checker marks it pending as soon as it sees it.
    members.lock().unwrap().push(Arc::clone(&c));
    checker.backends_changed();
    sleep(secs(0.1)).await;
    assert!(c.state().check_failed());
    assert_eq!(checker.status()[2].verdict, Verdict::Pending);
    assert!(c.try_admit(Instant::now()).is_none());
    sleep(secs(0.3)).await;
    assert!(c.try_admit(Instant::now()).is_some(), "one pass suffices");

    // b comes back: one pass suffices for a backend that was never up.
    net.set(b.addr(), MemBehavior::status(200));
    sleep(secs(10.0)).await;
    assert!(b.try_admit(Instant::now()).is_some());
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_reweighted_copy_keeps_its_predecessor_s_verdict() {
    let net = MemoryNet::new();
    let events = Recorder::default();
    let (a, b) = (backend(1), backend(2));
    net.set(a.addr(), MemBehavior::status(200));
    net.set(b.addr(), MemBehavior::Refuse);
    let members = Arc::new(Mutex::new(vec![Arc::clone(&a), Arc::clone(&b)]));
    let checker = changing_checker(&net, &members, &events);
    checker.first_round().await;
    let (stop, task) = spawn_run(&checker);
    sleep(secs(1.0)).await;
    let checks_of_a = net.requests(a.addr());

    // An operator changes both weights: the balancer swaps in copies (state
    // carried over by the balancer, as `carry_over` does) and prepares them.
    let a2 = Arc::new(a.reweighted(5));
    let b2 = Arc::new(b.reweighted(5));
    b2.state().set_check_failed(b.state().check_failed());
    checker.prepare(&a2);
    checker.prepare(&b2);
    assert!(a2.try_admit(Instant::now()).is_some(), "up stays up");
    assert!(b2.try_admit(Instant::now()).is_none(), "down stays down");
    *members.lock().unwrap() = vec![Arc::clone(&a2), Arc::clone(&b2)];
    checker.backends_changed();
    sleep(secs(0.1)).await;
    let status = checker.status();
    assert_eq!(
        (status[0].verdict, status[1].verdict),
        (Verdict::Up, Verdict::Down)
    );
    assert!(a2.try_admit(Instant::now()).is_some());
    assert_eq!(
        net.requests(a.addr()),
        checks_of_a,
        "no extra check: the copy keeps its predecessor's schedule"
    );
    // b's track goes on, and its checks now judge the copy.
    net.set(b.addr(), MemBehavior::status(200));
    sleep(secs(21.0)).await;
    assert!(b2.try_admit(Instant::now()).is_some());
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn initially_healthy_backends_take_traffic_at_once() {
    let net = MemoryNet::new();
    let b = backend(1);
    net.set(b.addr(), MemBehavior::Refuse);
    let mut c = config();
    c.initially_healthy = true;
    let checker = checker(&net, c, std::slice::from_ref(&b), &Recorder::default());
    checker.first_round().await;
    assert!(
        b.try_admit(Instant::now()).is_some(),
        "one failure of three does not take it down"
    );
    assert_eq!(checker.status()[0].streak, 1);
    assert_eq!(
        checker.status()[0].last_failure.as_deref(),
        Some("connection refused")
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_run_even_with_checks_in_flight() {
    let net = MemoryNet::new();
    let b = backend(1);
    net.set(b.addr(), MemBehavior::Hang);
    let mut c = config();
    c.timeout = Duration::from_secs(5);
    let checker = checker(&net, c, std::slice::from_ref(&b), &Recorder::default());
    let (stop, task) = spawn_run(&checker);
    sleep(secs(1.0)).await;
    assert_eq!(net.requests(b.addr()), 1, "a check is hanging");
    stop.send(()).unwrap();
    tokio::time::timeout(secs(0.1), task)
        .await
        .expect("run returns at shutdown")
        .unwrap();
    sleep(secs(60.0)).await;
    assert_eq!(net.requests(b.addr()), 1, "no check after shutdown");
}

#[tokio::test(start_paused = true)]
async fn backends_that_leave_are_no_longer_checked() {
    let net = MemoryNet::new();
    let (a, b) = (backend(1), backend(2));
    net.set(a.addr(), MemBehavior::status(200));
    net.set(b.addr(), MemBehavior::status(200));
    let members = Arc::new(Mutex::new(vec![Arc::clone(&a), Arc::clone(&b)]));
    let list = Arc::clone(&members);
    let checker = Arc::new(
        HealthChecker::from_config(config(), net.connector(), move || {
            list.lock().unwrap().clone()
        })
        .unwrap(),
    );
    checker.first_round().await;
    let (stop, task) = spawn_run(&checker);
    members.lock().unwrap().pop();
    sleep(secs(25.0)).await;
    assert_eq!(net.requests(a.addr()), 3);
    assert_eq!(net.requests(b.addr()), 1);
    assert_eq!(checker.status().len(), 1);
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_http_check_sends_the_configured_request() {
    let net = MemoryNet::new();
    let b = backend(1);
    net.set(b.addr(), MemBehavior::status(200));
    let mut c = config();
    c.method = "HEAD".into();
    c.path = "/healthz?deep=1".into();
    c.host = Some("app.internal".into());
    let check = ConfiguredCheck::from_config(&c, net.connector()).unwrap();
    check.check(&b).await.unwrap();
    let c = config(); // default Host: the backend's address
    let check = ConfiguredCheck::from_config(&c, net.connector()).unwrap();
    check.check(&b).await.unwrap();
    let log = net.log(b.addr());
    assert_eq!(log[0].method, "HEAD");
    assert_eq!(log[0].path, "/healthz?deep=1");
    assert_eq!(log[0].host.as_deref(), Some("app.internal"));
    assert_eq!(log[1].method, "GET");
    assert_eq!(log[1].host.as_deref(), Some("10.0.0.1:80"));
}

#[tokio::test(start_paused = true)]
async fn the_http_check_judges_status_and_body() {
    let net = MemoryNet::new();
    let b = backend(1);
    let kind = |r: Result<(), CheckFailure>| r.map_err(|f| f.kind());
    let check = |c: &HealthConfig| ConfiguredCheck::from_config(c, net.connector()).unwrap();

    net.set(b.addr(), MemBehavior::status(503));
    let r = check(&config()).check(&b).await;
    assert_eq!(r.clone().unwrap_err().to_string(), "status 503");
    assert_eq!(kind(r), Err(CheckFailureKind::Status(503)));

    net.set(b.addr(), MemBehavior::status(301));
    assert_eq!(kind(check(&config()).check(&b).await), Ok(()), "3xx passes");
    let mut only_204 = config();
    only_204.expected_statuses = vec![StatusRange::single(204)];
    assert_eq!(
        kind(check(&only_204).check(&b).await),
        Err(CheckFailureKind::Status(301))
    );

    // The in-memory backend answers "<status> from <addr>".
    net.set(b.addr(), MemBehavior::status(200));
    let mut body = config();
    body.body_contains = Some("from 10.0.0.1".into());
    assert_eq!(kind(check(&body).check(&b).await), Ok(()));
    body.body_contains = Some("all good".into());
    let r = check(&body).check(&b).await;
    assert_eq!(
        r.clone().unwrap_err().to_string(),
        "body does not contain \"all good\""
    );
    assert_eq!(kind(r), Err(CheckFailureKind::Body));

    net.set(b.addr(), MemBehavior::Refuse);
    assert_eq!(
        kind(check(&config()).check(&b).await),
        Err(CheckFailureKind::Transport(
            detour_core::ErrorKind::ConnectRefused
        ))
    );
    net.set(b.addr(), MemBehavior::CloseAfterRequest);
    assert!(matches!(
        kind(check(&config()).check(&b).await),
        Err(CheckFailureKind::Transport(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn the_tcp_check_only_needs_a_connection() {
    let net = MemoryNet::new();
    let b = backend(1);
    let check = ConfiguredCheck::from_config(&HealthConfig::tcp(), net.connector()).unwrap();
    net.set(b.addr(), MemBehavior::status(500));
    assert!(check.check(&b).await.is_ok());
    assert_eq!(net.requests(b.addr()), 0, "no request is sent");
    net.set(b.addr(), MemBehavior::Refuse);
    assert_eq!(
        check.check(&b).await.unwrap_err().to_string(),
        "connection refused"
    );
}

/// A custom check that answers from a script.
struct Scripted(Mutex<Vec<Result<(), &'static str>>>);

impl HealthCheck for Scripted {
    async fn check(&self, _backend: &Backend) -> Result<(), CheckFailure> {
        let next = self.0.lock().unwrap().remove(0);
        match next {
            Ok(()) => Ok(()),
            Err("panic") => panic!("scripted panic"),
            Err(why) => Err(CheckFailure::custom(why)),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn custom_checks_plug_in_and_their_reasons_reach_the_events() {
    let b = backend(1);
    let events = Recorder::default();
    let script = Scripted(Mutex::new(vec![
        Ok(()),
        Err("replication lag 40s"),
        Err("panic"),
        Ok(()),
    ]));
    let mut c = config();
    c.fall = 2;
    c.rise = 1;
    let list = vec![Arc::clone(&b)];
    let checker = Arc::new(
        HealthChecker::new(c, script, move || list.clone())
            .unwrap()
            .on_event(events.callback()),
    );
    let start = Instant::now();
    checker.first_round().await;
    let (stop, task) = spawn_run(&checker);
    sleep_until(start + secs(12.5)).await;
    assert!(b.state().check_failed());
    sleep_until(start + secs(22.5)).await;
    assert!(!b.state().check_failed());
    stop.send(()).unwrap();
    task.await.unwrap();
    let seen: Vec<_> = events.seen(start).into_iter().map(|e| (e.1, e.3)).collect();
    assert_eq!(
        seen,
        vec![
            (secs(0.0), "first passing check".to_string()),
            (
                secs(12.0),
                "2 consecutive failed checks: the check panicked".to_string()
            ),
            (secs(22.0), "1 passing check".to_string()),
        ]
    );
}

#[tokio::test]
async fn nonsense_configuration_is_refused_with_the_field_named() {
    let mut c = config();
    c.fall = 0;
    let err = HealthChecker::from_config(c, MemoryNet::new().connector(), Vec::new)
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.to_string(), "health.fall: must be at least 1");
}
