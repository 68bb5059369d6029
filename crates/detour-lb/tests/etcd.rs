//! `EtcdDiscovery` against a real etcd (Debian's `etcd-server`, started on
//! loopback ports by the test): the prefix read whole, then watched; a key
//! on a lease that expires; a bad value left out and named; etcd killed —
//! the set stays and the source says `failing` — and back; etcd frozen (a
//! silent watch) found dead by its missing progress notifications.
#![cfg(feature = "etcd")]
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use detour_lb::discovery::{EtcdDiscovery, EtcdOptions, SourceState};
use detour_lb::ServiceDiscovery;
use detour_testkit::etcd::Etcd;
use etcd_client::{Client, PutOptions};
use tokio::time::Instant;

fn value(port: u16) -> String {
    format!(r#"{{"addr": "10.9.0.1:{port}", "locality": "z{port}"}}"#)
}

async fn addrs(source: &EtcdDiscovery) -> Vec<SocketAddr> {
    let mut a: Vec<_> = source
        .discover()
        .await
        .unwrap()
        .iter()
        .map(|b| b.addr())
        .collect();
    a.sort();
    a
}

fn port_list(ports: &[u16]) -> Vec<SocketAddr> {
    ports
        .iter()
        .map(|p| SocketAddr::from(([10, 9, 0, 1], *p)))
        .collect()
}

/// Wait (at most `within`) until the source's answer is `ports`; the time
/// it took.
async fn until_set(source: &EtcdDiscovery, ports: &[u16], within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if addrs(source).await == port_list(ports) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "still {:?}, want {ports:?}",
            addrs(source).await
        );
        let _ = tokio::time::timeout(Duration::from_millis(50), source.changed()).await;
    }
}

/// Wait (at most 3 s) until the source says `state`; the time it took.
async fn until_state(source: &EtcdDiscovery, state: SourceState) -> Duration {
    let start = Instant::now();
    while source.status().state != state {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            source.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

fn options(etcd: &Etcd, prefix: &str) -> EtcdOptions {
    EtcdOptions::new([etcd.endpoint()], prefix)
        .with_timeout(Duration::from_secs(2))
        .with_progress_interval(Duration::from_millis(300))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_the_prefix_then_follows_the_watch() {
    let etcd = Etcd::start().await;
    let mut client = Client::connect([etcd.endpoint()], None).await.unwrap();
    client.put("/detour/app/a", value(1), None).await.unwrap();
    client.put("/detour/app/b", value(2), None).await.unwrap();
    client.put("/detour/other/c", value(3), None).await.unwrap();

    let source = EtcdDiscovery::new(options(&etcd, "/detour/app/"));
    let backends = source.discover().await.unwrap();
    assert_eq!(backends.len(), 2, "only the keys under the prefix");
    assert_eq!(backends[0].locality(), Some("z1"));
    let status = source.status();
    assert_eq!(status.state, SourceState::Ok);
    assert_eq!(status.backends, 2);
    assert!(status.revision.unwrap() >= 3 && status.last_success.is_some());

    client.put("/detour/app/d", value(4), None).await.unwrap();
    let added = until_set(&source, &[1, 2, 4], Duration::from_secs(3)).await;
    client.delete("/detour/app/a", None).await.unwrap();
    let removed = until_set(&source, &[2, 4], Duration::from_secs(3)).await;
    println!(
        "etcd watch: an added key served after {added:?}, a deleted one gone after {removed:?}"
    );

    // A changed value replaces the backend under that key.
    client.put("/detour/app/b", value(5), None).await.unwrap();
    until_set(&source, &[4, 5], Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_on_an_expired_lease_disappears() {
    let etcd = Etcd::start().await;
    let mut client = Client::connect([etcd.endpoint()], None).await.unwrap();
    let lease = client.lease_grant(2, None).await.unwrap().id();
    let on_lease = PutOptions::new().with_lease(lease);
    client.put("/l/a", value(1), Some(on_lease)).await.unwrap();
    client.put("/l/b", value(2), None).await.unwrap();
    let source = EtcdDiscovery::new(options(&etcd, "/l/"));
    assert_eq!(addrs(&source).await, port_list(&[1, 2]));
    // Nobody keeps the lease alive: it expires (etcd checks leases every
    // 500 ms), and the key with it.
    let gone = until_set(&source, &[2], Duration::from_secs(8)).await;
    println!("a 2 s lease left the set after {gone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_value_is_left_out_and_named() {
    let etcd = Etcd::start().await;
    let mut client = Client::connect([etcd.endpoint()], None).await.unwrap();
    client.put("/b/good", value(1), None).await.unwrap();
    client.put("/b/bad", "10.9.0.1:2", None).await.unwrap();
    client.put("/b/twin", value(1), None).await.unwrap();
    let source = EtcdDiscovery::new(options(&etcd, "/b/"));
    assert_eq!(addrs(&source).await, port_list(&[1]));
    let status = source.status();
    assert_eq!(status.state, SourceState::Degraded);
    let error = status.error.unwrap();
    assert!(
        error.contains("/b/bad") && error.contains("/b/twin"),
        "{error}"
    );
    // Fixed: the source is ok again.
    client.put("/b/bad", value(2), None).await.unwrap();
    client.delete("/b/twin", None).await.unwrap();
    until_set(&source, &[1, 2], Duration::from_secs(3)).await;
    until_state(&source, SourceState::Ok).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_keeps_the_set_and_etcd_back_converges() {
    let mut etcd = Etcd::start().await;
    let mut client = Client::connect([etcd.endpoint()], None).await.unwrap();
    client.put("/k/a", value(1), None).await.unwrap();
    client.put("/k/b", value(2), None).await.unwrap();
    let source = EtcdDiscovery::new(options(&etcd, "/k/"));
    assert_eq!(addrs(&source).await, port_list(&[1, 2]));

    etcd.kill();
    let took = until_state(&source, SourceState::Failing).await;
    println!("etcd killed: the source said failing after {took:?}");
    // The last set stays, from every call, for as long as etcd is gone.
    for _ in 0..5 {
        assert_eq!(addrs(&source).await, port_list(&[1, 2]));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(source.status().error.is_some());

    etcd.restart().await;
    let mut client = Client::connect([etcd.endpoint()], None).await.unwrap();
    client.delete("/k/a", None).await.unwrap();
    client.put("/k/c", value(3), None).await.unwrap();
    let back = until_set(&source, &[2, 3], Duration::from_secs(10)).await;
    println!("etcd back: the source converged {back:?} after the writes");
    assert_eq!(source.status().state, SourceState::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_watch_is_found_dead() {
    let etcd = Etcd::start().await;
    let mut client = Client::connect([etcd.endpoint()], None).await.unwrap();
    client.put("/s/a", value(1), None).await.unwrap();
    let source = EtcdDiscovery::new(options(&etcd, "/s/"));
    assert_eq!(addrs(&source).await, port_list(&[1]));
    // Let a few progress notifications go by: a healthy watch stays ok.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        source.status().state,
        SourceState::Ok,
        "{:?}",
        source.status()
    );

    etcd.freeze(true);
    let took = until_state(&source, SourceState::Failing).await;
    println!("etcd frozen: the watch was called dead after {took:?}");
    // Two progress intervals (600 ms) and slack; the gRPC keep-alive alone
    // (its 2 s timeout) would take longer.
    assert!(took < Duration::from_millis(1500), "{took:?}");
    assert_eq!(addrs(&source).await, port_list(&[1]));
    etcd.freeze(false);

    client.put("/s/b", value(2), None).await.unwrap();
    until_set(&source, &[1, 2], Duration::from_secs(10)).await;
    assert_eq!(source.status().state, SourceState::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_etcd_at_all_is_an_error_naming_the_source() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let source = EtcdDiscovery::new(
        EtcdOptions::new([format!("http://{port}")], "/x/")
            .with_timeout(Duration::from_millis(500)),
    );
    let error = source.discover().await.unwrap_err();
    assert!(error.to_string().contains("etcd http://"), "{error}");
    assert_eq!(source.status().state, SourceState::Failing);
}
