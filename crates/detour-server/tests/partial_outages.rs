//! Partial outages whose health checks keep passing, through real sockets:
//! failure concentrated on some backends (the healthy ones must be found)
//! and failure correlated across all (no retry storm). See
//! `detour_core::spread` and the failover chapter.
//!
//! Each test runs a warm-up phase (the first second of an outage, when
//! detection happens), then a measured phase of 8 closed-loop clients, and
//! counts answers and the attempts the backends read; no assertion depends
//! on how long anything took.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use detour_core::Spread;
use detour_server::upstream::Upstream;
use detour_server::{HttpProxy, Server, ServerHandle};
use detour_testkit::client::RawConnection;
use detour_testkit::{Behavior, Upstream as Backend};
use support::{shut, upstream, Selecting};

const CLIENTS: usize = 8;
const HEALTH: &str = "/healthz";

/// Checks every 200 ms on `/healthz`, which every backend here passes.
const CHECKS: &str =
    "[health]\nkind = \"http\"\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\n";

fn serve(up: &Arc<Upstream>) -> ServerHandle {
    let mut cfg = support::base_config();
    cfg.listen = vec!["127.0.0.1:0".parse().unwrap()];
    let proxy = HttpProxy::builder(Selecting { up: Arc::clone(up) })
        .upstream(Arc::clone(up))
        .config(cfg.clone())
        .build();
    Server::new(cfg).start(proxy).unwrap()
}

/// Client requests the backends read (health checks left out).
fn attempts(backends: &[Backend]) -> usize {
    backends
        .iter()
        .flat_map(|b| b.received())
        .filter(|r| !r.path.starts_with(HEALTH))
        .count()
}

/// `CLIENTS` clients, each sending `each` GETs one after the other on its
/// own keep-alive connection; returns how many got a 200.
async fn load(proxy: std::net::SocketAddr, each: usize) -> usize {
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(tokio::spawn(async move {
            let mut conn = RawConnection::connect(proxy).await.unwrap();
            let mut ok = 0;
            for _ in 0..each {
                let req = b"GET /work HTTP/1.1\r\nhost: t\r\n\r\n";
                conn.send(req).await.unwrap();
                let r = conn.read_response().await.unwrap();
                ok += usize::from(r.status == 200);
            }
            ok
        }));
    }
    let mut ok = 0;
    for c in clients {
        ok += c.await.unwrap();
    }
    ok
}

/// What the measured phase saw.
struct Measured {
    served: f64,
    attempts_per_request: f64,
    /// Every failure-spread verdict the upstream gave while under load
    /// (read every 5 ms), warm-up included.
    spreads: Vec<Spread>,
}

/// Warm up with 8 × `warm` requests, then measure 8 × `each`.
async fn run(up: &Arc<Upstream>, backends: &[Backend], warm: usize, each: usize) -> Measured {
    let h = serve(up);
    // The verdict is read while the load runs: once the failing backends
    // are out, their failures age out of the histories, and a verdict read
    // only after the load depends on how long the machine took over it.
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sampler = tokio::spawn({
        let (up, seen) = (Arc::clone(up), Arc::clone(&seen));
        async move {
            loop {
                let spread = up.failure_spread().spread;
                {
                    let mut seen = seen.lock().unwrap();
                    if !seen.contains(&spread) {
                        seen.push(spread);
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    });
    load(h.addr(), warm).await;
    let before = attempts(backends);
    let ok = load(h.addr(), each).await;
    let made = attempts(backends) - before;
    sampler.abort();
    shut(h).await;
    let n = (CLIENTS * each) as f64;
    let spreads = seen.lock().unwrap().clone();
    Measured {
        served: ok as f64 / n,
        attempts_per_request: made as f64 / n,
        spreads,
    }
}

async fn backends(failing: usize, healthy: usize, fails: Behavior) -> Vec<Backend> {
    let mut all = Vec::new();
    for _ in 0..failing {
        all.push(
            Backend::start(fails.clone().healthy_on(HEALTH))
                .await
                .unwrap(),
        );
    }
    for _ in 0..healthy {
        all.push(Backend::start(Behavior::ok()).await.unwrap());
    }
    all
}

/// `failing` of `failing + healthy` backends answer 503 to every request
/// while passing their checks: nearly every request is served once the
/// first ones found out, the healthy backends are never removed, and the
/// failing ones are removed past the 50 % ceiling.
async fn concentrated(failing: usize, healthy: usize) {
    let bs = backends(failing, healthy, Behavior::status(503)).await;
    let addrs: Vec<_> = bs.iter().map(Backend::addr).collect();
    let up = upstream("app", &addrs, CHECKS);
    let m = run(&up, &bs, 25, 100).await;
    println!(
        "{failing} of {} failing: served {:.1} %, {:.2} attempts per request",
        failing + healthy,
        m.served * 100.0,
        m.attempts_per_request
    );
    assert!(m.served >= 0.95, "served {:.3}", m.served);
    // Past the ejection ceiling (half the backends) only a concentrated
    // verdict lets the failing ones all go. Below it, outlier detection may
    // take the failing one out before a classification sees its failures
    // (only backends in rotation are classified): the verdict may then stay
    // normal, and nothing needs it.
    if 2 * failing > failing + healthy {
        assert!(
            m.spreads.contains(&Spread::Concentrated),
            "verdicts under load: {:?}",
            m.spreads
        );
    }
    let all = up.backends();
    for b in all.iter().filter(|b| addrs[failing..].contains(&b.addr())) {
        assert!(
            !b.state().is_passively_removed(),
            "the healthy {} was removed",
            b.addr()
        );
    }
    let removed = all
        .iter()
        .filter(|b| b.state().is_passively_removed())
        .count();
    assert_eq!(removed, failing, "every failing backend is out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_of_five_failing_the_healthy_one_serves() {
    concentrated(4, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_three_failing_the_healthy_one_serves() {
    concentrated(2, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_failing_the_healthy_ones_serve() {
    concentrated(1, 2).await;
}

/// Every backend fails 80 % of requests: retries stop, so the backends see
/// about one attempt per request, and their own success share is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_failing_alike_does_not_storm() {
    let bs = backends(3, 0, Behavior::fail_share(503, 80)).await;
    let addrs: Vec<_> = bs.iter().map(Backend::addr).collect();
    let up = upstream("app", &addrs, CHECKS);
    let m = run(&up, &bs, 25, 100).await;
    println!(
        "correlated: served {:.1} %, {:.3} attempts per request",
        m.served * 100.0,
        m.attempts_per_request
    );
    assert_eq!(up.failure_spread().spread, Spread::Correlated);
    assert!(
        m.attempts_per_request <= 1.05,
        "{:.3} attempts per request",
        m.attempts_per_request
    );
    assert!(m.served >= 0.15, "served {:.3}", m.served);
}

/// The same with `correlated_brake = false`: the budget alone bounds the
/// retries, at its ratio and more (what the brake saves).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_brake_the_budget_alone_bounds_retries() {
    let bs = backends(3, 0, Behavior::fail_share(503, 80)).await;
    let addrs: Vec<_> = bs.iter().map(Backend::addr).collect();
    let extra = format!("{CHECKS}[retry]\ncorrelated_brake = false\n");
    let up = upstream("app", &addrs, &extra);
    let m = run(&up, &bs, 25, 100).await;
    println!(
        "correlated, no brake: served {:.1} %, {:.3} attempts per request",
        m.served * 100.0,
        m.attempts_per_request
    );
    assert!(
        m.attempts_per_request > 1.1,
        "{:.3} attempts per request",
        m.attempts_per_request
    );
}

/// One backend failing while the others fail too, if less (30 %): nobody is
/// clearly healthy, so the removal ceiling holds (1 of 3 at 50 %) and the
/// spread stays normal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_clearly_healthy_backend_the_ceiling_holds() {
    let mut bs = backends(1, 0, Behavior::status(503)).await;
    bs.extend(backends(2, 0, Behavior::fail_share(503, 30)).await);
    let addrs: Vec<_> = bs.iter().map(Backend::addr).collect();
    let up = upstream("app", &addrs, CHECKS);
    run(&up, &bs, 25, 100).await;
    assert_eq!(up.failure_spread().spread, Spread::Normal);
    let removed = up
        .backends()
        .iter()
        .filter(|b| b.state().is_passively_removed())
        .count();
    assert!(removed <= 1, "{removed} of 3 removed past the ceiling");
}
