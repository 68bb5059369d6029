//! The admin listener against hostile neighbours, through real sockets on
//! 127.0.0.1: DNS rebinding (Host), cross-origin POSTs, the Bearer scheme in
//! any case, wrong methods, the connection cap, silent clients, and the
//! refusal to listen beyond loopback without a token.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use detour_cli::app::{self, Config, Running};
use detour_server::Stop;
use detour_testkit::client::{RawConnection, RawResponse};
use detour_testkit::{Behavior, Upstream};
use support::send;
use tokio::time::Instant;

fn config_text(backend: SocketAddr, admin: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
[admin]
listen = "127.0.0.1:0"
{admin}
[log]
access_log = false
[upstreams.app]
backends = [{{ addr = "{backend}" }}]
[[routes]]
upstream = "app"
"#
    )
}

async fn start(backend: SocketAddr, admin: &str) -> Running {
    let c = Config::from_toml(&config_text(backend, admin), None).unwrap();
    tokio::task::spawn_blocking(move || app::start(&c, None, None, None).unwrap())
        .await
        .unwrap()
}

async fn stop(r: Running) {
    tokio::task::spawn_blocking(move || r.stop(Stop::Immediate))
        .await
        .unwrap();
}

/// `send` with the Host the admin listener is reached by.
async fn admin(r: &Running, method: &str, path: &str, extra: &[&str]) -> RawResponse {
    support::admin(r.admin_addr.unwrap(), method, path, extra).await
}

fn health_of(doc: &RawResponse) -> String {
    let doc: serde_json::Value = serde_json::from_slice(&doc.body).unwrap();
    doc["upstreams"]["app"]["backends"][0]["health"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_matched_in_any_case() {
    let up = Upstream::start(Behavior::ok()).await.unwrap();
    let r = start(up.addr(), "token = \"s3cret\"").await;
    for auth in ["Bearer s3cret", "bearer s3cret", "BEARER s3cret"] {
        let got = admin(&r, "GET", "/status", &[&format!("authorization: {auth}")]).await;
        assert_eq!(got.status, 200, "{auth}");
    }
    for auth in ["Bearer s3cre", "Basic s3cret", "Bearer"] {
        let got = admin(&r, "GET", "/status", &[&format!("authorization: {auth}")]).await;
        assert_eq!(got.status, 401, "{auth}");
        assert_eq!(got.header("www-authenticate"), Some("Bearer"));
    }
    assert_eq!(admin(&r, "GET", "/status", &[]).await.status, 401);
    assert_eq!(
        admin(&r, "GET", "/healthz", &[]).await.status,
        200,
        "no token"
    );
    stop(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_page_cannot_drain_a_backend() {
    let up = Upstream::start(Behavior::ok()).await.unwrap();
    let r = start(up.addr(), "").await;
    let own = format!("origin: http://{}", r.admin_addr.unwrap());
    let drain = format!("/upstreams/app/backends/{}/drain", up.addr());
    let enable = format!("/upstreams/app/backends/{}/enable", up.addr());
    for hostile in [
        "origin: http://evil.example",
        "origin: null",
        "sec-fetch-site: cross-site",
        "sec-fetch-site: same-site",
    ] {
        let got = admin(&r, "POST", &drain, &[hostile]).await;
        assert_eq!(got.status, 403, "{hostile}");
    }
    let status = admin(&r, "GET", "/status", &[]).await;
    assert_eq!(health_of(&status), "healthy", "nothing was drained");

    // The admin's own origin, and clients that are not browsers, may.
    assert_eq!(admin(&r, "POST", &drain, &[&own]).await.status, 200);
    assert_eq!(
        health_of(&admin(&r, "GET", "/status", &[]).await),
        "draining"
    );
    assert_eq!(admin(&r, "POST", &enable, &[]).await.status, 200);
    let same = "sec-fetch-site: same-origin";
    assert_eq!(admin(&r, "POST", &drain, &[same]).await.status, 200);
    stop(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_host_is_refused() {
    let up = Upstream::start(Behavior::ok()).await.unwrap();
    let r = start(up.addr(), "allowed_hosts = [\"admin.internal\"]").await;
    let addr = r.admin_addr.unwrap();
    let port = addr.port();
    let drain = format!("/upstreams/app/backends/{}/drain", up.addr());
    // DNS rebinding: a name the attacker controls, resolved to 127.0.0.1.
    for host in [
        format!("host: rebind.evil.example:{port}"),
        format!("host: 127.0.0.1:{}", port.wrapping_add(1)),
    ] {
        let got = send(addr, "GET", "/status", std::slice::from_ref(&host)).await;
        assert_eq!(got.status, 421, "{host}");
        let got = send(addr, "POST", &drain, std::slice::from_ref(&host)).await;
        assert_eq!(got.status, 421, "{host}");
    }
    assert_eq!(
        send(addr, "GET", "/status", &[]).await.status,
        421,
        "no Host"
    );
    for host in [
        format!("host: {addr}"),
        format!("host: localhost:{port}"),
        "host: admin.internal".to_string(),
        "host: Admin.Internal:443".to_string(),
    ] {
        let got = send(addr, "GET", "/status", std::slice::from_ref(&host)).await;
        assert_eq!(got.status, 200, "{host}");
    }
    // /healthz answers whatever the Host: probes use any address they know.
    let probe = vec!["host: 10.1.2.3:9901".to_string()];
    assert_eq!(send(addr, "GET", "/healthz", &probe).await.status, 200);
    assert_eq!(
        health_of(&admin(&r, "GET", "/status", &[]).await),
        "healthy"
    );
    stop(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_method_is_405_with_allow() {
    let up = Upstream::start(Behavior::ok()).await.unwrap();
    let r = start(up.addr(), "").await;
    let drain = format!("/upstreams/app/backends/{}/drain", up.addr());
    for (method, path, allow) in [
        ("GET", drain.as_str(), "POST"),
        ("POST", "/status", "GET, HEAD"),
        ("DELETE", "/metrics", "GET, HEAD"),
        ("POST", "/healthz", "GET, HEAD"),
        ("GET", "/reload", "POST"),
        ("POST", "/config", "GET, HEAD"),
    ] {
        let got = admin(&r, method, path, &[]).await;
        assert_eq!(got.status, 405, "{method} {path}");
        assert_eq!(got.header("allow"), Some(allow), "{method} {path}");
    }
    assert_eq!(admin(&r, "GET", "/nope", &[]).await.status, 404);
    assert_eq!(
        health_of(&admin(&r, "GET", "/status", &[]).await),
        "healthy"
    );
    stop(r).await;
}

/// A request on `c` that keeps the connection open, and its answer.
async fn keep_alive_status(c: &mut RawConnection, addr: SocketAddr) -> u16 {
    let raw = format!("GET /status HTTP/1.1\r\nhost: {addr}\r\n\r\n");
    c.send(raw.as_bytes()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), c.read_response())
        .await
        .unwrap()
        .unwrap()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let up = Upstream::start(Behavior::ok()).await.unwrap();
    let r = start(up.addr(), "max_connections = 2").await;
    let addr = r.admin_addr.unwrap();
    let mut first = RawConnection::connect(addr).await.unwrap();
    let mut second = RawConnection::connect(addr).await.unwrap();
    assert_eq!(keep_alive_status(&mut first, addr).await, 200);
    assert_eq!(keep_alive_status(&mut second, addr).await, 200);

    // The third is queued by the kernel, not served.
    let mut third = RawConnection::connect(addr).await.unwrap();
    let raw = format!("GET /status HTTP/1.1\r\nhost: {addr}\r\n\r\n");
    third.send(raw.as_bytes()).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(500), third.read_response()).await;
    assert!(early.is_err(), "served beyond the cap");

    // One closes: the third is served.
    drop(first);
    let late = tokio::time::timeout(Duration::from_secs(5), third.read_response())
        .await
        .expect("served once a slot was free")
        .unwrap();
    assert_eq!(late.status, 200);
    assert_eq!(keep_alive_status(&mut second, addr).await, 200);
    stop(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_connections_are_closed() {
    let up = Upstream::start(Behavior::ok()).await.unwrap();
    let r = start(
        up.addr(),
        "header_read_timeout = \"300ms\"\nmax_connections = 1",
    )
    .await;
    let addr = r.admin_addr.unwrap();

    // A client that connects and says nothing (or half a head) is cut off.
    for opening in ["", "GET /status HTTP/1.1\r\nhost: x"] {
        let mut silent = RawConnection::connect(addr).await.unwrap();
        silent.send(opening.as_bytes()).await.unwrap();
        let t0 = Instant::now();
        let closed = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end()).await;
        assert!(closed.is_ok(), "{opening:?}: still open after 5 s");
        assert!(t0.elapsed() >= Duration::from_millis(250), "{opening:?}");
    }

    // A keep-alive connection left idle after a request is closed too, and
    // its slot (the only one) serves the next client.
    let mut idle = RawConnection::connect(addr).await.unwrap();
    assert_eq!(keep_alive_status(&mut idle, addr).await, 200);
    let closed = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end()).await;
    assert!(closed.is_ok(), "an idle keep-alive connection stayed open");
    assert_eq!(admin(&r, "GET", "/status", &[]).await.status, 200);
    stop(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_loopback_a_token_is_required_to_start() {
    let up = Upstream::start(Behavior::ok()).await.unwrap();
    let open = config_text(up.addr(), "").replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        "[admin]\nlisten = \"0.0.0.0:0\"",
    );
    let e = Config::from_toml(&open, None).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("admin.token"), "{e}");
    // Deserialized without validation, start still refuses it.
    let unchecked: Config = toml::from_str(&open).unwrap();
    let e = tokio::task::spawn_blocking(move || app::start(&unchecked, None, None, None))
        .await
        .unwrap()
        .unwrap_err();
    assert!(e.to_string().contains("admin.token"), "{e}");
    for listen in ["[::]:0", "[::ffff:10.0.0.1]:0", "10.0.0.1:0"] {
        let text = open.replace("0.0.0.0:0", listen);
        let e = Config::from_toml(&text, None).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("admin.token"), "{listen}");
    }
    // With a token it loads; on loopback no token is needed.
    let with_token = open.replace("[log]", "token = \"t\"\n[log]");
    Config::from_toml(&with_token, None).unwrap();
    for listen in ["127.0.0.2:0", "[::1]:0", "[::ffff:127.0.0.1]:0"] {
        let text = open.replace("0.0.0.0:0", listen);
        Config::from_toml(&text, None).unwrap();
    }
}
