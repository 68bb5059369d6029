//! Every attempt explained, through the binary: a client presenting the
//! admin token in `detour-explain` gets the attempt history in
//! `detour-attempts`; the asking header never reaches a backend, whatever
//! its value; `/debug/requests` keeps the retried and failed requests.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;

use detour_testkit::client::RawResponse;
use detour_testkit::{Behavior, Upstream};
use serde_json::Value;

const SECRET: &str = "t0ken-s3cret";

fn config(dead: SocketAddr, live: SocketAddr) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\ngrace_period = \"1s\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{SECRET}\"\n\
         [log]\naccess_log = false\n\
         [upstreams.app]\nbackends = [{{ addr = \"{dead}\" }}, {{ addr = \"{live}\" }}]\n\
         [[routes]]\nupstream = \"app\"\n"
    )
}

/// An address nothing listens on: connections to it are refused.
async fn nowhere() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

async fn get(addr: SocketAddr, explain: Option<&str>) -> RawResponse {
    let mut headers = vec!["host: app.test".to_string()];
    if let Some(v) = explain {
        headers.push(format!("detour-explain: {v}"));
    }
    support::send(addr, "GET", "/x", &headers).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_the_token_sees_every_attempt_and_the_token_stays_here() {
    let live = Upstream::start(Behavior::ok()).await.unwrap();
    let dead = nowhere().await;
    let dir = support::temp_dir("explain");
    let file = dir.join("detour.toml");
    std::fs::write(&file, config(dead, live.addr())).unwrap();
    let mut d = support::start(&file);
    let admin = d.admin.unwrap();

    // Round robin: within a few requests one goes to the dead backend first
    // and fails over.
    let mut failed_over = None;
    for _ in 0..6 {
        let r = get(d.addr, Some(SECRET)).await;
        assert_eq!(r.status, 200);
        let history = r.header("detour-attempts").unwrap().to_string();
        assert!(history.starts_with("#1 "), "{history}");
        if history.contains("connection_refused") {
            failed_over = Some(history);
            break;
        }
    }
    let history = failed_over.expect("one request met the dead backend first");
    // The failover's parenthesis says why the balancer chose the live one
    // (e.g. `passed=1,excluded=1` when its walk met the dead one first).
    let want = [
        format!("#1 {dead} first connection_refused@not_connected "),
        "retried wait=".to_string(),
        format!("#2 {} failover", live.addr()),
        " 200 ".to_string(),
    ];
    for part in &want {
        assert!(history.contains(part.as_str()), "{part:?} in {history}");
    }

    // A wrong token: no history, and the header is still kept from the backend.
    let r = get(d.addr, Some("guess")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("detour-attempts"), None);
    let r = get(d.addr, None).await;
    assert_eq!(r.header("detour-attempts"), None);
    let received = live.received();
    assert!(received.len() >= 3);
    for req in &received {
        assert!(
            req.headers
                .iter()
                .all(|(n, v)| !n.eq_ignore_ascii_case("detour-explain") && v != SECRET),
            "the asking header reached a backend: {:?}",
            req.headers
        );
    }

    // The retried request is kept for the admin API, with its history.
    let bearer = format!("authorization: Bearer {SECRET}");
    let r = support::admin(admin, "GET", "/debug/requests", &[&bearer]).await;
    assert_eq!(r.status, 200);
    let doc: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(doc["capacity"], 100);
    let kept = doc["requests"].as_array().unwrap();
    assert!(!kept.is_empty(), "{doc}");
    assert!(
        kept.iter().all(|k| k["attempts"]
            .as_str()
            .unwrap()
            .contains("connection_refused")),
        "only retried or failed requests are kept: {doc}"
    );
    assert_eq!(kept[0]["path"], "/x");
    assert_eq!(kept[0]["status"], 200);
    let r = support::admin(admin, "GET", "/debug/requests", &[]).await;
    assert_eq!(r.status, 401, "the admin token is required");

    d.child.kill().unwrap();
    let _ = d.child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detour_s_own_error_answer_is_explained_too() {
    let (a, b) = (nowhere().await, nowhere().await);
    let dir = support::temp_dir("explain-502");
    let file = dir.join("detour.toml");
    std::fs::write(&file, config(a, b)).unwrap();
    let mut d = support::start(&file);
    let r = get(d.addr, Some(SECRET)).await;
    assert!(r.status >= 502, "{}", r.status);
    let history = r.header("detour-attempts").unwrap();
    assert!(
        history.contains("first connection_refused@not_connected")
            && history.contains("failover connection_refused@not_connected")
            && history.contains("stop="),
        "{history}"
    );
    d.child.kill().unwrap();
    let _ = d.child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
