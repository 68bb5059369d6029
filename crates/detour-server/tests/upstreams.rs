//! `Upstream` through the engine over real sockets: consistent-hash retries,
//! health checks under load, breakers, the retry budget.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use detour_core::{AttemptOutcome, Observer};
use detour_server::upstream::Upstream;
use detour_server::{HttpProxy, Server, ServerHandle};
use detour_testkit::client::{RawConnection, RawResponse};
use detour_testkit::{Behavior, Upstream as Backend};
use support::{shut, upstream, Selecting};
use tokio::time::Instant;

/// Every attempt: when, where.
#[derive(Default)]
struct Attempts(Mutex<Vec<(Instant, SocketAddr)>>);

impl Observer for Attempts {
    fn on_attempt(&self, o: &AttemptOutcome<'_>) {
        self.0.lock().unwrap().push((Instant::now(), o.addr));
    }
}

fn serve(up: &Arc<Upstream>, attempts: &Arc<Attempts>) -> ServerHandle {
    let mut cfg = support::base_config();
    cfg.listen = vec!["127.0.0.1:0".parse().unwrap()];
    let proxy = HttpProxy::builder(Selecting { up: Arc::clone(up) })
        .upstream(Arc::clone(up))
        .config(cfg.clone())
        .observer(Arc::clone(attempts) as Arc<dyn Observer>)
        .build();
    Server::new(cfg).start(proxy).unwrap()
}

async fn get(conn: &mut RawConnection, user: &str) -> RawResponse {
    let req = format!("GET /u HTTP/1.1\r\nhost: t\r\nx-user: {user}\r\n\r\n");
    conn.send(req.as_bytes()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), conn.read_response())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consistent_hash_retry_reaches_a_different_backend() {
    let bs = [
        Backend::start(Behavior::ok()).await.unwrap(),
        Backend::start(Behavior::ok()).await.unwrap(),
        Backend::start(Behavior::ok()).await.unwrap(),
    ];
    let addrs: Vec<_> = bs.iter().map(Backend::addr).collect();
    let up = upstream("app", 
        &addrs,
        "lb = \"maglev\"\nhash_key = \"header:x-user\"\n[retry]\nbase_delay = \"1ms\"\n[outlier]\nconsecutive_5xx = 1000\nconsecutive_gateway_failure = 1000\n[breaker]\nenabled = false",
    );
    let attempts = Arc::new(Attempts::default());
    let h = serve(&up, &attempts);
    let mut c = RawConnection::connect(h.addr()).await.unwrap();
    // The same user sticks to one backend.
    let home: SocketAddr = get(&mut c, "alice")
        .await
        .header("x-upstream")
        .unwrap()
        .parse()
        .unwrap();
    for _ in 0..5 {
        let r = get(&mut c, "alice").await;
        assert_eq!(r.header("x-upstream"), Some(home.to_string().as_str()));
    }
    // Its backend fails: the retry moves to another one, not the same.
    let i = addrs.iter().position(|a| *a == home).unwrap();
    bs[i].set_behavior(Behavior::status(503));
    let before = bs[i].requests();
    let r = get(&mut c, "alice").await;
    assert_eq!(r.status, 200);
    assert_ne!(r.header("x-upstream"), Some(home.to_string().as_str()));
    assert_eq!(bs[i].requests() - before, 1, "tried once, then elsewhere");
    shut(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_stops_getting_traffic_within_the_check_bound_and_returns() {
    let a = Backend::start(Behavior::ok()).await.unwrap();
    let b = Backend::start(Behavior::ok()).await.unwrap();
    let (interval, fall, rise) = (Duration::from_millis(200), 2u32, 2u32);
    let up = upstream("app", 
        &[a.addr(), b.addr()],
        "[retry]\nbase_delay = \"1ms\"\n[health]\nkind = \"http\"\npath = \"/\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nfall = 2\nrise = 2\nfast_interval = \"200ms\"",
    );
    let attempts = Arc::new(Attempts::default());
    let h = serve(&up, &attempts);
    let addr = h.addr();
    let load = tokio::spawn(async move {
        let mut c = RawConnection::connect(addr).await.unwrap();
        let mut errors = 0;
        let end = Instant::now() + Duration::from_millis(3500);
        while Instant::now() < end {
            if get(&mut c, "x").await.status != 200 {
                errors += 1;
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        errors
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Instant::now();
    b.kill().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let back = Instant::now();
    b.restart().await.unwrap();
    assert_eq!(load.await.unwrap(), 0, "no GET failed");
    let log = attempts.0.lock().unwrap().clone();
    let last_while_down = log
        .iter()
        .filter(|(t, a)| *a == b.addr() && *t >= killed && *t < back)
        .map(|(t, _)| *t)
        .max();
    // Measured against the bound, with 150 ms for scheduling on a busy machine.
    let slack = Duration::from_millis(150);
    if let Some(t) = last_while_down {
        let took = t - killed;
        println!("last attempt to the dead backend {took:?} after the kill");
        assert!(
            took <= interval * fall + interval + slack,
            "a dead backend got attempts for {took:?}"
        );
    }
    let first_after = log
        .iter()
        .filter(|(t, a)| *a == b.addr() && *t >= back)
        .map(|(t, _)| *t)
        .min()
        .expect("the backend got traffic again");
    let took = first_after - back;
    println!("first attempt to the returned backend {took:?} after its restart");
    assert!(
        took <= interval * rise + interval + slack,
        "traffic came back after {took:?}"
    );
    shut(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_trips_its_breaker_gets_probes_then_full_traffic() {
    let a = Backend::start(Behavior::ok()).await.unwrap();
    let b = Backend::start(Behavior::status(503)).await.unwrap();
    let up = upstream("app", 
        &[a.addr(), b.addr()],
        "[retry]\nmax_retries = 0\n[outlier]\nconsecutive_5xx = 1000\nconsecutive_gateway_failure = 1000\n[breaker]\nconsecutive_failures = 5\nopen_for = \"400ms\"\njitter = 0.0\nhalf_open_successes = 3",
    );
    let attempts = Arc::new(Attempts::default());
    let h = serve(&up, &attempts);
    let mut c = RawConnection::connect(h.addr()).await.unwrap();
    let reg = Arc::clone(up.breakers().unwrap());
    let state = || reg.breaker(b.addr()).unwrap().state();
    // Trips after exactly 5 failures.
    while b.requests() < 5 {
        get(&mut c, "x").await;
    }
    assert_eq!(b.requests(), 5);
    assert_eq!(state(), detour_core::GateState::Open);
    // No traffic while open.
    for _ in 0..20 {
        assert_eq!(get(&mut c, "x").await.status, 200);
    }
    assert_eq!(b.requests(), 5, "no request reaches an open breaker");
    // Half-open after open_for: only probes, and it closes after 3 successes.
    b.set_behavior(Behavior::ok());
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(state(), detour_core::GateState::HalfOpen);
    let mut n = 0;
    while state() != detour_core::GateState::Closed {
        get(&mut c, "x").await;
        n += 1;
        assert!(n < 50, "the breaker never closed");
    }
    assert_eq!(b.requests(), 5 + 3, "exactly the three probes");
    // Full traffic again: round robin shares evenly.
    let before = (a.requests(), b.requests());
    for _ in 0..20 {
        get(&mut c, "x").await;
    }
    assert_eq!(b.requests() - before.1, 10);
    assert_eq!(a.requests() - before.0, 10);
    shut(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_bounds_attempts_when_everything_fails() {
    let bs = [
        Backend::start(Behavior::status(503)).await.unwrap(),
        Backend::start(Behavior::status(503)).await.unwrap(),
    ];
    let addrs: Vec<_> = bs.iter().map(Backend::addr).collect();
    let up = upstream("app", 
        &addrs,
        "[retry]\nmax_retries = 3\ncorrelated_brake = false\nbase_delay = \"1ms\"\nmax_delay = \"2ms\"\nbudget_ratio = 0.2\nbudget_min_per_second = 1\nbudget_window = \"1s\"\n[outlier]\nconsecutive_5xx = 100000\nconsecutive_gateway_failure = 100000\nsuccess_rate = { enabled = false }\n[breaker]\nenabled = false",
    );
    let attempts = Arc::new(Attempts::default());
    let h = serve(&up, &attempts);
    let mut c = RawConnection::connect(h.addr()).await.unwrap();
    let total = |bs: &[Backend]| bs.iter().map(Backend::requests).sum::<usize>();
    // Warm the window up.
    let warm_until = Instant::now() + Duration::from_millis(1100);
    while Instant::now() < warm_until {
        assert_eq!(
            get(&mut c, "x").await.status,
            503,
            "the upstream's 503 passes through"
        );
    }
    let (start, t0) = (total(&bs), Instant::now());
    let n = 300;
    for _ in 0..n {
        get(&mut c, "x").await;
    }
    let secs = t0.elapsed().as_secs_f64().ceil();
    let made = total(&bs) - start;
    let bound = (n as f64 * 1.2 + secs * 1.0 + 2.0) as usize;
    assert!(made > n, "some retries happened ({made})");
    assert!(
        made <= bound,
        "{made} attempts for {n} requests: over the budget's bound {bound}"
    );
    shut(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_breaker_open_answers_503_with_retry_after() {
    let bs = [
        Backend::start(Behavior::status(503)).await.unwrap(),
        Backend::start(Behavior::status(503)).await.unwrap(),
    ];
    let addrs: Vec<_> = bs.iter().map(Backend::addr).collect();
    // Panic mode and the removal ceiling would (rightly) keep traffic flowing;
    // both off, every breaker may open.
    let up = upstream("app", 
        &addrs,
        "panic_threshold = 0\n[retry]\nmax_retries = 0\n[outlier]\nmax_ejection_percent = 100\nconsecutive_5xx = 1000\nconsecutive_gateway_failure = 1000\n[breaker]\nconsecutive_failures = 2\nopen_for = \"20s\"\njitter = 0.0",
    );
    let attempts = Arc::new(Attempts::default());
    let h = serve(&up, &attempts);
    let mut c = RawConnection::connect(h.addr()).await.unwrap();
    for _ in 0..4 {
        assert_eq!(get(&mut c, "x").await.status, 503);
    }
    let before: usize = bs.iter().map(Backend::requests).sum();
    assert_eq!(before, 4);
    let r = get(&mut c, "x").await;
    assert_eq!(r.status, 503);
    let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((19..=20).contains(&after), "Retry-After: {after}");
    assert!(
        r.header("proxy-status").unwrap().contains("error="),
        "{:?}",
        r.header("proxy-status")
    );
    let now: usize = bs.iter().map(Backend::requests).sum();
    assert_eq!(now, before, "Detour answered itself");
    shut(h).await;
}

/// The breaker states of `addrs`, in order.
fn states(up: &Upstream, addrs: &[SocketAddr]) -> Vec<detour_core::GateState> {
    let reg = up.breakers().unwrap();
    addrs
        .iter()
        .map(|&a| reg.breaker(a).unwrap().state())
        .collect()
}

/// Poll `cond` every 10 ms for up to 5 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < end, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Both backends fail: their breakers open and their checks mark them down.
/// Then both come back, and the checks move both breakers to half-open (one
/// probe each) together, as after a whole-upstream outage. Four requests at
/// once: two are the probes, and the other two are served past the probe
/// limit instead of being refused with a 503 while both backends are up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breakers_a_check_half_opens_together_refuse_no_request() {
    let bs = [
        Backend::start(Behavior::ok()).await.unwrap(),
        Backend::start(Behavior::ok()).await.unwrap(),
    ];
    let addrs: Vec<_> = bs.iter().map(Backend::addr).collect();
    // Panic mode off, so it does not hide the half-open state; a long open
    // period, so only the checks half-open the breakers.
    let up = upstream(
        "app",
        &addrs,
        "panic_threshold = 0\n[retry]\nmax_retries = 0\n[outlier]\nmax_ejection_percent = 100\nconsecutive_5xx = 1000\nconsecutive_gateway_failure = 1000\n[breaker]\nconsecutive_failures = 2\nopen_for = \"60s\"\njitter = 0.0\nhalf_open_probes = 1\nhalf_open_successes = 3\n[health]\nkind = \"http\"\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"200ms\"\nfall = 1\nrise = 1",
    );
    let attempts = Arc::new(Attempts::default());
    let h = serve(&up, &attempts);
    let mut c = RawConnection::connect(h.addr()).await.unwrap();
    // Failing, first while the checks still pass (so the requests reach
    // both backends and trip both breakers), then the checks too.
    for b in &bs {
        b.set_behavior(Behavior::status(503).healthy_on("/healthz"));
    }
    for _ in 0..4 {
        assert_eq!(get(&mut c, "x").await.status, 503);
    }
    assert_eq!(states(&up, &addrs), [detour_core::GateState::Open; 2]);
    for b in &bs {
        b.set_behavior(Behavior::status(503));
    }
    let down = |up: &Upstream| up.backends().iter().all(|b| b.state().check_failed());
    eventually("both checked down", || down(&up)).await;
    // Back, slow enough that the probes are still in flight when the other
    // requests arrive; the checks pass at once.
    for b in &bs {
        b.set_behavior(Behavior::slow(Duration::from_millis(300)).healthy_on("/healthz"));
    }
    eventually("both checked up and half-open", || {
        !up.backends().iter().any(|b| b.state().check_failed())
            && states(&up, &addrs) == [detour_core::GateState::HalfOpen; 2]
    })
    .await;
    let answers = all_at_once(h.addr(), 4).await;
    assert_eq!(answers, [200; 4], "every request served");
    // The four that tripped the breakers and these four (not the checks).
    let proxied = |b: &Backend| b.received().iter().filter(|r| r.path == "/u").count();
    assert_eq!(bs.iter().map(proxied).sum::<usize>(), 4 + 4);
    shut(h).await;
}

/// A breaker half-open only because its open period ran out keeps its
/// probe limit: with both probes in flight, two more requests are refused
/// (panic mode off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breakers_half_open_by_the_clock_keep_their_probe_limit() {
    let bs = [
        Backend::start(Behavior::status(503)).await.unwrap(),
        Backend::start(Behavior::status(503)).await.unwrap(),
    ];
    let addrs: Vec<_> = bs.iter().map(Backend::addr).collect();
    let up = upstream(
        "app",
        &addrs,
        "panic_threshold = 0\n[retry]\nmax_retries = 0\n[outlier]\nmax_ejection_percent = 100\nconsecutive_5xx = 1000\nconsecutive_gateway_failure = 1000\n[breaker]\nconsecutive_failures = 2\nopen_for = \"100ms\"\njitter = 0.0\nhalf_open_probes = 1",
    );
    let attempts = Arc::new(Attempts::default());
    let h = serve(&up, &attempts);
    let mut c = RawConnection::connect(h.addr()).await.unwrap();
    for _ in 0..4 {
        assert_eq!(get(&mut c, "x").await.status, 503);
    }
    assert_eq!(states(&up, &addrs), [detour_core::GateState::Open; 2]);
    for b in &bs {
        b.set_behavior(Behavior::slow(Duration::from_secs(1)));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut answers = all_at_once(h.addr(), 4).await;
    answers.sort_unstable();
    assert_eq!(answers, [200, 200, 503, 503]);
    shut(h).await;
}

/// `n` GETs on `n` connections to `addr`, sent at once; their statuses.
async fn all_at_once(addr: SocketAddr, n: usize) -> Vec<u16> {
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(RawConnection::connect(addr).await.unwrap());
    }
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut c| tokio::spawn(async move { get(&mut c, "x").await.status }))
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}
