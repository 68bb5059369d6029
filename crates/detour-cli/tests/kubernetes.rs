//! The `detour` binary fed by Kubernetes EndpointSlices, through
//! `detour_testkit::kube_api::FakeKubeApi` (a contract test: a local server
//! answering the list and watch calls as the API server does; no API server
//! runs in CI): a rolling update under load — new pods become ready, old
//! ones terminate while still serving, then go — answers every request.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use detour_testkit::kube_api::{FakeKubeApi, Slice};
use detour_testkit::{Behavior, Upstream};
use tokio::time::Instant;

/// A slice of Service `api` holding one pod at `b` (port `http`).
fn pod(name: &str, b: &Upstream, ready: bool, serving: bool, terminating: bool) -> Slice {
    let addr = b.addr();
    Slice::new(name, "api").port("http", addr.port()).endpoint(
        &addr.ip().to_string(),
        ready,
        serving,
        terminating,
        Some("zone-a"),
    )
}

async fn members(admin: SocketAddr) -> Vec<(SocketAddr, u64)> {
    let r = support::admin(admin, "GET", "/status", &[]).await;
    let s: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let mut v: Vec<(SocketAddr, u64)> = s["upstreams"]["app"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["addr"].as_str().unwrap().parse().unwrap(),
                b["weight"].as_u64().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

async fn until(admin: SocketAddr, want: &[(&Upstream, u64)]) {
    let mut want: Vec<(SocketAddr, u64)> = want.iter().map(|(b, w)| (b.addr(), *w)).collect();
    want.sort();
    let start = Instant::now();
    while members(admin).await != want {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}, want {want:?}",
            members(admin).await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_answers_every_request() {
    let api = FakeKubeApi::start("prod").await.unwrap();
    let dir = support::temp_dir("kubernetes");
    std::fs::write(dir.join("kubeconfig.yaml"), api.kubeconfig()).unwrap();
    let mut old = Vec::new();
    let mut new = Vec::new();
    for i in 0..2 {
        old.push(
            Upstream::start(Behavior::ok().with_header("x-pod", format!("old-{i}")))
                .await
                .unwrap(),
        );
        new.push(
            Upstream::start(Behavior::ok().with_header("x-pod", format!("new-{i}")))
                .await
                .unwrap(),
        );
    }
    for (i, b) in old.iter().enumerate() {
        api.put(pod(&format!("old-{i}"), b, true, true, false));
    }
    let file = dir.join("detour.toml");
    std::fs::write(
        &file,
        r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1
grace_period = "1s"
[admin]
listen = "127.0.0.1:0"
[log]
access_log = false
[upstreams.app.discovery]
kubernetes = { service = "api", namespace = "prod", port = "http", kubeconfig = "kubeconfig.yaml" }
[[routes]]
upstream = "app"
"#,
    )
    .unwrap();
    let d = support::start(&file);
    let admin = d.admin.unwrap();
    until(admin, &[(&old[0], 1), (&old[1], 1)]).await;

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let traffic = tokio::spawn(support::keep_sending(vec![d.addr], stop));

    // Pod by pod: the new one starts (not ready), becomes ready; the old
    // one terminates (still serving: it drains), then its pod is gone.
    for i in 0..2 {
        api.put(pod(&format!("new-{i}"), &new[i], false, false, false));
        api.put(pod(&format!("new-{i}"), &new[i], true, true, false));
        api.put(pod(&format!("old-{i}"), &old[i], false, true, true));
        tokio::time::sleep(Duration::from_millis(300)).await;
        api.delete(&format!("old-{i}"));
        old[i].kill().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    until(admin, &[(&new[0], 1), (&new[1], 1)]).await;
    stop_tx.send_replace(true);
    let (ok, failed) = traffic.await.unwrap();
    println!(
        "rolling update through the fake API server: {ok} requests answered 200, {failed} failed"
    );
    assert_eq!(failed, 0);
    assert!(ok > 50, "{ok}");
    let r = support::admin(admin, "GET", "/status", &[]).await;
    let s: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let source = &s["upstreams"]["app"]["discovery"][0];
    assert_eq!(source["state"], "ok", "{source}");
    assert_eq!(source["source"], "kubernetes prod/api:http");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_pods_serve_when_none_is_ready() {
    let api = FakeKubeApi::start("prod").await.unwrap();
    let dir = support::temp_dir("kubernetes-terminating");
    std::fs::write(dir.join("kubeconfig.yaml"), api.kubeconfig()).unwrap();
    let b = Upstream::start(Behavior::ok()).await.unwrap();
    let c = Upstream::start(Behavior::ok()).await.unwrap();
    api.put(pod("a", &b, true, true, false));
    api.put(pod("c", &c, false, true, true));
    let file = dir.join("detour.toml");
    let kubeconfig = dir.join("kubeconfig.yaml");
    std::fs::write(
        &file,
        format!(
            r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1
[admin]
listen = "127.0.0.1:0"
[log]
access_log = false
[upstreams.app.discovery]
kubernetes = {{ service = "api", namespace = "prod", port = "http", kubeconfig = "{}" }}
[[routes]]
upstream = "app"
"#,
            kubeconfig.display()
        ),
    )
    .unwrap();
    let d = support::start(&file);
    let admin = d.admin.unwrap();
    // One ready, one terminating: the terminating one drains.
    until(admin, &[(&b, 1), (&c, 0)]).await;
    // Both terminating, neither ready: both keep taking traffic.
    api.put(pod("a", &b, false, true, true));
    until(admin, &[(&b, 1), (&c, 1)]).await;
    for _ in 0..10 {
        let r = support::send(d.addr, "GET", "/", &["host: app".into()]).await;
        assert_eq!(r.status, 200);
    }
    assert!(c.requests() > 0, "the terminating pods took traffic");
    // One ready again: the other drains.
    api.put(pod("a", &b, true, true, false));
    until(admin, &[(&b, 1), (&c, 0)]).await;
}
