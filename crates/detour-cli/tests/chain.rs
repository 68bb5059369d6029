//! Two `detour` processes in a chain (client → outer → inner → backends):
//! only one hop retries. The inner marks its `Proxy-Status` member with
//! `retried`; an outer that trusts it does not retry within the same tier,
//! one that does not trust it retries as before, and a failover to another
//! priority tier stays allowed.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;

use detour_testkit::client::RawResponse;
use detour_testkit::{Behavior, Upstream};

/// A proxy in front of `backends` (TOML inline tables), with `retry` lines
/// in its upstream's retry table and `upstream` lines in the upstream.
fn config(backends: &str, upstream: &str, retry: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\ngrace_period = \"1s\"\n\
         [admin]\nenabled = false\n[log]\naccess_log = false\n\
         [upstreams.app]\nbackends = [{backends}]\n{upstream}\n\
         [upstreams.app.retry]\nbase_delay = \"10ms\"\ncorrelated_brake = false\n{retry}\n\
         [[routes]]\nupstream = \"app\"\n"
    )
}

fn addr(a: SocketAddr) -> String {
    format!("{{ addr = \"{a}\" }}")
}

fn start(name: &str, text: &str) -> support::Detour {
    let dir = support::temp_dir(name);
    let file = dir.join("detour.toml");
    std::fs::write(&file, text).unwrap();
    support::start(&file)
}

async fn get(proxy: SocketAddr) -> RawResponse {
    support::send(proxy, "GET", "/x", &["host: app.test".to_string()]).await
}

/// Client requests the backends read (health checks would not be counted:
/// none are configured here).
fn read(backends: &[&Upstream]) -> usize {
    backends.iter().map(|b| b.received().len()).sum()
}

/// Every `Proxy-Status` line of `r`, in order.
fn proxy_status(r: &RawResponse) -> Vec<&str> {
    r.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("proxy-status"))
        .map(|(_, v)| v.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outer_proxy_that_trusts_the_inner_does_not_retry_what_it_retried() {
    let a = Upstream::start(Behavior::status(503)).await.unwrap();
    let b = Upstream::start(Behavior::status(503)).await.unwrap();
    let both = format!("{}, {}", addr(a.addr()), addr(b.addr()));
    let inner = start("chain-inner", &config(&both, "", "max_retries = 1"));
    let front = addr(inner.addr);
    let trusting = start(
        "chain-trusting",
        &config(&front, "", "max_retries = 2\ntrusted_hops = [\"detour\"]"),
    );
    let plain = start("chain-plain", &config(&front, "", "max_retries = 2"));

    // Trusted: the inner's two attempts are all the backends see.
    let r = get(trusting.addr).await;
    assert_eq!(r.status, 503);
    assert_eq!(read(&[&a, &b]), 2, "inner: first attempt and one retry");
    // The inner's member first (it retried once), then the outer's (its
    // retrying was done below: retried=0).
    assert_eq!(
        proxy_status(&r),
        [
            "detour; received-status=503; next-hop=\"app\"; retried=1",
            "detour; received-status=503; next-hop=\"app\"; retried=0",
        ]
    );

    // Not trusted: the outer retries the inner twice, 3 × 2 attempts.
    let r = get(plain.addr).await;
    assert_eq!(r.status, 503);
    assert_eq!(read(&[&a, &b]), 2 + 6, "outer 3 attempts × inner 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failover_to_another_priority_tier_stays_allowed() {
    let failing = Upstream::start(Behavior::status(503)).await.unwrap();
    let standby = Upstream::start(Behavior::ok()).await.unwrap();
    let inner = start(
        "chain-tier0",
        &config(&addr(failing.addr()), "", "max_retries = 1"),
    );
    let backup = start(
        "chain-tier1",
        &config(&addr(standby.addr()), "", "max_retries = 1"),
    );
    let tiers = format!(
        "{{ addr = \"{}\", priority = 0 }}, {{ addr = \"{}\", priority = 1 }}",
        inner.addr, backup.addr
    );
    let outer = start(
        "chain-tiered",
        &config(
            &tiers,
            "failover = { kind = \"priority\" }",
            "max_retries = 2\ntrusted_hops = [\"detour\"]",
        ),
    );
    let r = get(outer.addr).await;
    assert_eq!(r.status, 200, "{r:?}");
    // Tier 0's inner retried its one backend; the outer then failed over
    // once, to tier 1, instead of going back to tier 0.
    assert_eq!(failing.received().len(), 2);
    assert_eq!(standby.received().len(), 1);
    // The outer retried (failed over once): it says so.
    assert_eq!(
        proxy_status(&r),
        ["detour; next-hop=\"app\"; retried=1"],
        "{r:?}"
    );
}
