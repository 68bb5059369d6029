//! `KubernetesDiscovery` against `detour_testkit::kube_api::FakeKubeApi`, a
//! local server answering the EndpointSlice list and watch calls as the
//! API server does (a contract test: no API server runs in CI): the list,
//! then watch events; ready, terminating and not-ready endpoints; an
//! expired resource version (an in-stream 410) that forces a re-list; the
//! API server down — the set stays — and back.
#![cfg(feature = "kubernetes")]
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use detour_lb::discovery::{KubernetesDiscovery, KubernetesOptions, SourceState};
use detour_lb::ServiceDiscovery;
use detour_testkit::kube_api::{FakeKubeApi, Slice};
use tokio::time::Instant;

struct Kubeconfig(std::path::PathBuf);

impl Drop for Kubeconfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn fake(name: &str) -> (FakeKubeApi, Kubeconfig) {
    let api = FakeKubeApi::start("prod").await.unwrap();
    let path = std::env::temp_dir().join(format!("detour-kube-{}-{name}.yaml", std::process::id()));
    std::fs::write(&path, api.kubeconfig()).unwrap();
    (api, Kubeconfig(path))
}

fn source(k: &Kubeconfig) -> KubernetesDiscovery {
    KubernetesDiscovery::new(
        KubernetesOptions::new("api", "prod", "http")
            .with_kubeconfig(&k.0)
            .with_timeout(Duration::from_secs(3)),
    )
}

/// (last octet, weight) of each backend.
async fn set(d: &KubernetesDiscovery) -> Vec<(u8, u32)> {
    let mut v: Vec<(u8, u32)> = d
        .discover()
        .await
        .unwrap()
        .iter()
        .map(|b| match b.addr() {
            SocketAddr::V4(a) => (a.ip().octets()[3], b.weight()),
            SocketAddr::V6(_) => (0, b.weight()),
        })
        .collect();
    v.sort_unstable();
    v
}

async fn until(d: &KubernetesDiscovery, want: &[(u8, u32)]) -> Duration {
    let start = Instant::now();
    loop {
        if set(d).await == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "still {:?}, want {want:?}",
            set(d).await
        );
        let _ = tokio::time::timeout(Duration::from_millis(50), d.changed()).await;
    }
}

fn pod(slice: &str, last: u8, ready: bool, serving: bool, terminating: bool) -> Slice {
    Slice::new(slice, "api")
        .port("http", 8080)
        .port("metrics", 9090)
        .endpoint(
            &format!("10.1.0.{last}"),
            ready,
            serving,
            terminating,
            Some("zone-a"),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_then_follows_the_slices_of_one_service() {
    let (api, k) = fake("follow").await;
    api.put(pod("api-1", 1, true, true, false));
    api.put(pod("api-2", 2, false, false, false));
    api.put(
        Slice::new("other-1", "other")
            .port("http", 8080)
            .endpoint("10.9.9.9", true, true, false, None),
    );
    let d = source(&k);
    assert_eq!(set(&d).await, [(1, 1)], "ready only, this service only");
    let b = d.discover().await.unwrap();
    assert_eq!(
        b[0].addr(),
        "10.1.0.1:8080".parse().unwrap(),
        "the port named http"
    );
    assert_eq!(b[0].locality(), Some("zone-a"));
    assert_eq!(d.status().state, SourceState::Ok);

    // A rollout: the new pod becomes ready, the old one terminates (it
    // drains: weight 0), then goes.
    api.put(pod("api-2", 2, true, true, false));
    let t = until(&d, &[(1, 1), (2, 1)]).await;
    api.put(pod("api-1", 1, false, true, true));
    until(&d, &[(1, 0), (2, 1)]).await;
    api.delete("api-1");
    until(&d, &[(2, 1)]).await;
    println!("a watch event reached the set in {t:?}");

    // A terminating pod beside a ready one drains; once every pod is
    // terminating, the serving ones take the traffic (KEP-1669).
    api.put(pod("api-3", 3, false, true, true));
    until(&d, &[(2, 1), (3, 0)]).await;
    api.put(pod("api-2", 2, false, true, true));
    until(&d, &[(2, 1), (3, 1)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_resource_version_forces_a_relist() {
    let (api, k) = fake("expired").await;
    api.put(pod("api-1", 1, true, true, false));
    let d = source(&k);
    assert_eq!(set(&d).await, [(1, 1)]);
    let lists = api.lists();
    // The open watch is told 410 (history compacted): only a new list, and
    // a watch from its version, show what changed since.
    // Once the watch is open: its resource version expires under it.
    let start = Instant::now();
    while api.open_watches() == 0 {
        assert!(start.elapsed() < Duration::from_secs(3), "no watch opened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    api.expire_watches();
    api.put(pod("api-2", 2, true, true, false));
    api.delete("api-1");
    // The new list replaces the set whole: api-1 goes though no watch said so.
    until(&d, &[(2, 1)]).await;
    assert!(api.lists() > lists, "a 410 makes the watcher list again");
    // And the watch after the re-list works.
    api.put(pod("api-3", 3, true, true, false));
    until(&d, &[(2, 1), (3, 1)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_down_keeps_the_set() {
    let (api, k) = fake("down").await;
    api.put(pod("api-1", 1, true, true, false));
    api.put(pod("api-2", 2, true, true, false));
    let d = source(&k);
    assert_eq!(set(&d).await, [(1, 1), (2, 1)]);
    let start = Instant::now();
    while api.open_watches() == 0 {
        assert!(start.elapsed() < Duration::from_secs(3), "no watch opened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    api.set_down(true);
    let start = Instant::now();
    while d.status().state != SourceState::Failing {
        assert!(start.elapsed() < Duration::from_secs(5), "{:?}", d.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..5 {
        assert_eq!(set(&d).await, [(1, 1), (2, 1)]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    api.set_down(false);
    // Back, with nothing changed: the source says ok again all the same.
    let start = Instant::now();
    while d.status().state != SourceState::Ok {
        assert!(start.elapsed() < Duration::from_secs(8), "{:?}", d.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    api.delete("api-1");
    until(&d, &[(2, 1)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slice_without_the_port_is_named() {
    let (api, k) = fake("portless").await;
    api.put(pod("api-1", 1, true, true, false));
    api.put(
        Slice::new("api-2", "api")
            .port("grpc", 9000)
            .endpoint("10.1.0.2", true, true, false, None),
    );
    let d = source(&k);
    assert_eq!(set(&d).await, [(1, 1)]);
    let status = d.status();
    assert_eq!(status.state, SourceState::Degraded);
    let error = status.error.unwrap();
    assert!(
        error.contains("api-2") && error.contains("\"http\""),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_api_server_is_an_error_naming_the_source() {
    let (api, k) = fake("none").await;
    drop(api);
    let d = KubernetesDiscovery::new(
        KubernetesOptions::new("api", "prod", "http")
            .with_kubeconfig(&k.0)
            .with_timeout(Duration::from_millis(500)),
    );
    let e = d.discover().await.unwrap_err();
    assert!(e.to_string().contains("kubernetes prod/api:http"), "{e}");
}
