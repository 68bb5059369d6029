//! Every listener enforces the same limits, through real sockets: the plain
//! HTTP/1.1 listener, the mixed HTTP/1.1 + HTTP/2 one and TLS answer an
//! oversized head with 431 and a slow head with 408; an idle keep-alive
//! connection is closed without a word after its own `keepalive_timeout`;
//! and the framing guard keeps watching after an upgrade that did not happen.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use detour_server::{AppProtocol, ListenerConfig, ServerConfig};
use detour_testkit::client::{send_raw, RawConnection};
use detour_testkit::{Behavior, Upstream};
use support::tls::{client_config, tls_connect, TestCert};
use support::{config, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A plain listener, a mixed one and a TLS one (HTTP/1.1 by ALPN).
fn three_listeners(cert: &TestCert, mut c: ServerConfig) -> ServerConfig {
    c.listeners = vec![
        ListenerConfig::new(local()).with_protocols(&[AppProtocol::Http11, AppProtocol::H2]),
        ListenerConfig::new(local()).with_tls(&cert.cert, &cert.key),
    ];
    c.validate().unwrap()
}

/// Send `bytes` on the listener `which` (0 plain, 1 mixed, 2 TLS) and read
/// everything until the server closes.
async fn exchange(addrs: &[SocketAddr], which: usize, cert: &TestCert, bytes: &[u8]) -> Vec<u8> {
    if which < 2 {
        return send_raw(addrs[which], bytes).await.unwrap_or_default();
    }
    let mut tls = tls_connect(
        addrs[2],
        "localhost",
        client_config(&[&cert.der], &[b"http/1.1"]),
    )
    .await
    .unwrap();
    // A peer that resets while we still write is an answer too.
    let _ = tls.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    out
}

#[tokio::test]
async fn every_listener_answers_oversized_and_slow_heads() {
    let a = Upstream::start(Behavior::ok()).await.unwrap();
    let cert = TestCert::new(&["localhost"]);
    let mut c = config();
    c.limits.header_read_timeout = Duration::from_millis(400);
    let p = start(&[a.addr()], three_listeners(&cert, c));
    let addrs = p.handle.addrs().to_vec();
    let big = format!(
        "GET / HTTP/1.1\r\nhost: h\r\nx-big: {}\r\n\r\n",
        "a".repeat(390 * 1024)
    );
    for which in 0..3 {
        let answer = exchange(&addrs, which, &cert, big.as_bytes()).await;
        assert!(
            answer.starts_with(b"HTTP/1.1 431 "),
            "listener {which}: {}",
            String::from_utf8_lossy(&answer[..answer.len().min(80)])
        );
        let started = Instant::now();
        let answer = exchange(&addrs, which, &cert, b"GET / HTTP/1.1\r\nhost: h\r\n").await;
        assert!(
            answer.starts_with(b"HTTP/1.1 408 "),
            "listener {which}: {}",
            String::from_utf8_lossy(&answer)
        );
        assert!(started.elapsed() < Duration::from_secs(3));
    }
    assert_eq!(a.requests(), 0);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_closes_silently_after_keepalive_timeout() {
    let a = Upstream::start(Behavior::ok()).await.unwrap();
    let mut c = config();
    c.limits.keepalive_timeout = Duration::from_millis(300);
    c.limits.header_read_timeout = Duration::from_secs(5);
    let p = start(&[a.addr()], c);
    let mut conn = RawConnection::connect(p.addr()).await.unwrap();
    conn.send(b"GET / HTTP/1.1\r\nhost: h\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(conn.read_response().await.unwrap().status, 200);
    let idle = Instant::now();
    let rest = tokio::time::timeout(Duration::from_secs(3), conn.read_to_end())
        .await
        .expect("closed after keepalive_timeout")
        .unwrap();
    assert!(rest.is_empty(), "no unsolicited 408: {rest:?}");
    let took = idle.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

#[tokio::test]
async fn keepalive_and_head_timeouts_are_separate() {
    // A keep-alive wait longer than the head timeout: the idle connection
    // stays open past header_read_timeout, and a head still has only that.
    let a = Upstream::start(Behavior::ok()).await.unwrap();
    let mut c = config();
    c.limits.keepalive_timeout = Duration::from_secs(3);
    c.limits.header_read_timeout = Duration::from_millis(300);
    let p = start(&[a.addr()], c);
    let mut conn = RawConnection::connect(p.addr()).await.unwrap();
    conn.send(b"GET / HTTP/1.1\r\nhost: h\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(conn.read_response().await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_millis(900)).await;
    conn.send(b"GET / HTTP/1.1\r\nhost: h\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        conn.read_response().await.unwrap().status,
        200,
        "still open"
    );
    conn.send(b"GET / HTTP/1.1\r\nhost: h\r\n").await.unwrap();
    let started = Instant::now();
    let rest = tokio::time::timeout(Duration::from_secs(3), conn.read_to_end())
        .await
        .unwrap()
        .unwrap();
    assert!(rest.starts_with(b"HTTP/1.1 408 "), "{rest:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn a_long_response_is_not_cut_by_the_keepalive_timeout() {
    // The body arrives over ~1 s, three keep-alive timeouts.
    let slow = Upstream::start(Behavior::slow_body(Duration::from_millis(300)))
        .await
        .unwrap();
    let mut c = config();
    c.limits.keepalive_timeout = Duration::from_millis(300);
    let p = start(&[slow.addr()], c);
    let r = support::send(p.addr(), &support::get("/", "long"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(!r.body.is_empty());
}

#[tokio::test]
async fn the_framing_guard_watches_on_after_an_upgrade_that_did_not_happen() {
    // An upgrade request answered 200 (not upgraded), then, pipelined on the
    // same connection, a request with conflicting framing.
    let a = Upstream::start(Behavior::ok()).await.unwrap();
    let p = start(&[a.addr()], config());
    let mut conn = RawConnection::connect(p.addr()).await.unwrap();
    conn.send(
        b"GET /ws HTTP/1.1\r\nhost: h\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n\
          POST /smuggle HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(conn.read_response().await.unwrap().status, 200);
    assert_eq!(conn.read_response().await.unwrap().status, 400);
    assert_eq!(
        a.requests(),
        1,
        "the second request never reached the backend"
    );
}
