//! The binary as a process during a concentrated failure (two of three
//! backends answer 503 while their checks pass): the healthy backend serves,
//! and the upstream's failure spread shows in `/status`, in `/metrics` and as
//! a warning in the log.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use detour_testkit::client::RawConnection;
use detour_testkit::{Behavior, Upstream};

fn config(backends: &[SocketAddr]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|a| format!("{{ addr = \"{a}\" }}"))
        .collect();
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
[admin]
listen = "127.0.0.1:0"
[log]
access_log = false
level = "info"
[upstreams.app]
backends = [{}]
[upstreams.app.health]
kind = "http"
path = "/healthz"
interval = "200ms"
timeout = "150ms"
[[routes]]
upstream = "app"
"#,
        list.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concentrated_failure_is_served_and_shown() {
    let failing = Behavior::status(503).healthy_on("/healthz");
    let a = Upstream::start(failing.clone()).await.unwrap();
    let b = Upstream::start(failing).await.unwrap();
    let c = Upstream::start(Behavior::ok()).await.unwrap();
    let dir = support::temp_dir("failure-spread");
    let file = dir.join("detour.toml");
    std::fs::write(&file, config(&[a.addr(), b.addr(), c.addr()])).unwrap();
    let mut d = support::start(&file);
    let admin = d.admin.unwrap();

    let mut conn = RawConnection::connect(d.addr).await.unwrap();
    let mut ok = 0;
    for i in 0..200 {
        let req = format!("GET /w/{i} HTTP/1.1\r\nhost: t\r\n\r\n");
        conn.send(req.as_bytes()).await.unwrap();
        ok += usize::from(conn.read_response().await.unwrap().status == 200);
    }
    // Retries find C from the start; once A and B are out, nothing fails.
    assert!(ok >= 195, "{ok} of 200 served");

    let status = support::admin(admin, "GET", "/status", &[]).await;
    let doc: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    let spread = &doc["upstreams"]["app"]["failure_spread"];
    assert_eq!(spread["state"], "concentrated", "{doc}");
    assert_eq!(spread["healthy"], 1);
    assert_eq!(spread["failing"], 2);

    let metrics = support::admin(admin, "GET", "/metrics", &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    let gauge = text
        .lines()
        .find(|l| {
            l.starts_with("detour_upstream_failure_spread{") && l.contains("state=\"concentrated\"")
        })
        .unwrap_or_else(|| panic!("no gauge in:\n{text}"));
    assert!(gauge.ends_with(" 1"), "{gauge}");

    let warned = std::iter::from_fn(|| d.lines.recv_timeout(Duration::from_secs(5)).ok())
        .any(|l| l.contains("WARN") && l.contains("failure is concentrated"));
    assert!(warned, "the change of state is logged as a warning");
    d.child.kill().unwrap();
    let _ = d.child.wait();
}
