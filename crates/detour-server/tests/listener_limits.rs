//! Every listener enforces the same limits, through real sockets: the plain
//! HTTP/1.1 listener, the mixed HTTP/1.1 + HTTP/2 one and TLS answer an
//! oversized head with 431 and a slow head with 408; an idle keep-alive
//! connection is closed without a word after its own `keepalive_timeout`;
//! and the framing guard keeps watching after an upgrade that did not happen,
//! or closes the connection when it had to let go of the bytes behind it.
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

/// A connection that has had one request answered and is kept alive.
async fn kept_alive(addr: SocketAddr) -> RawConnection {
    let mut conn = RawConnection::connect(addr).await.unwrap();
    conn.send(b"GET / HTTP/1.1\r\nhost: h\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(conn.read_response().await.unwrap().status, 200);
    conn
}

#[tokio::test]
async fn an_idle_keep_alive_connection_closes_silently_after_keepalive_timeout() {
    let a = Upstream::start(Behavior::ok()).await.unwrap();
    let mut c = config();
    c.limits.keepalive_timeout = Duration::from_millis(300);
    c.limits.header_read_timeout = Duration::from_secs(5);
    let p = start(&[a.addr()], c);
    let mut conn = kept_alive(p.addr()).await;
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
    let mut conn = kept_alive(p.addr()).await;
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

#[tokio::test]
async fn an_upgrade_that_did_not_happen_closes_when_the_guard_let_its_bytes_go() {
    // More than a head's worth of requests pipelined behind an upgrade
    // request: the guard holds at most that much until the answer, so when
    // the answer is not 101 it cannot check or time what follows, and the
    // connection closes after the answer rather than serve them unwatched.
    let a = Upstream::start(Behavior::ok()).await.unwrap();
    let mut c = config();
    c.limits.max_header_size = 8192;
    let p = start(&[a.addr()], c);
    let mut conn = RawConnection::connect(p.addr()).await.unwrap();
    // hyper reads 8 KB at first and more after reads that fill its buffer:
    // a burst of pipelined requests first, so that it reads the upgrade
    // request and what follows it in one go.
    let padded = |path: String| {
        format!(
            "GET {path} HTTP/1.1\r\nhost: h\r\nx-pad: {}\r\n\r\n",
            "p".repeat(400)
        )
    };
    let burst: String = (0..300).map(|i| padded(format!("/warm/{i}"))).collect();
    conn.send(burst.as_bytes()).await.unwrap();
    for _ in 0..300 {
        assert_eq!(conn.read_response().await.unwrap().status, 200);
    }
    let mut bytes =
        b"GET /ws HTTP/1.1\r\nhost: h\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
            .to_vec();
    for i in 0..40 {
        bytes.extend_from_slice(padded(format!("/next/{i}")).as_bytes());
    }
    conn.send(&bytes).await.unwrap();
    let first = conn.read_response().await.unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(first.header("connection"), Some("close"));
    let rest = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end())
        .await
        .expect("the proxy closes the connection")
        .unwrap_or_default();
    assert!(rest.is_empty(), "nothing more is served: {rest:?}");
    assert_eq!(a.requests(), 301);

    // With the requests behind it within a head's worth, it goes on.
    let mut conn = RawConnection::connect(p.addr()).await.unwrap();
    let two = b"GET /ws HTTP/1.1\r\nhost: h\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n\
                GET /next HTTP/1.1\r\nhost: h\r\n\r\n";
    conn.send(two).await.unwrap();
    let first = conn.read_response().await.unwrap();
    assert_eq!((first.status, first.header("connection")), (200, None));
    assert_eq!(conn.read_response().await.unwrap().status, 200);
}

#[tokio::test]
async fn an_upgraded_tunnel_keeps_its_connection_slot() {
    let echo = Upstream::start(Behavior::upgrade()).await.unwrap();
    let mut c = config();
    c.limits.max_connections = 2;
    let p = start(&[echo.addr()], c);
    let upgrade = b"GET / HTTP/1.1\r\nhost: h\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n";
    let mut tunnels = Vec::new();
    for _ in 0..2 {
        let mut t = RawConnection::connect(p.addr()).await.unwrap();
        t.send(upgrade).await.unwrap();
        assert_eq!(t.read_response_head().await.unwrap().status, 101);
        tunnels.push(t);
    }
    // Both places are the tunnels': a third client waits in the backlog.
    let mut third = RawConnection::connect(p.addr()).await.unwrap();
    third
        .send(b"GET / HTTP/1.1\r\nhost: h\r\n\r\n")
        .await
        .unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(700), third.read_response_head()).await;
    assert!(waited.is_err(), "served while two tunnels held both places");
    // A tunnel ends: its place goes to the waiting client.
    drop(tunnels.pop());
    let head = tokio::time::timeout(Duration::from_secs(5), third.read_response_head())
        .await
        .expect("served once a tunnel ended")
        .unwrap();
    assert_eq!(head.status, 200);
}

#[tokio::test]
async fn a_tunnel_whose_backend_stops_reading_is_closed() {
    // The backend answers 101 and then never reads a byte.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(s);
    });
    let up = support::upstream(
        "app",
        &[backend],
        "timeouts = { idle_timeout = \"500ms\", read_timeout = \"500ms\" }",
    );
    let proxy = detour_server::HttpProxy::builder(support::Selecting { up })
        .config(config())
        .build();
    let handle = detour_server::Server::new(config())
        .start(proxy.clone())
        .unwrap();
    let mut s = tokio::net::TcpStream::connect(handle.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: h\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let closed = support::write_until_closed(&mut s, Duration::from_secs(20)).await;
    assert!(closed, "the tunnel was never closed");
    tokio::time::timeout(Duration::from_secs(2), proxy.tunnels_closed())
        .await
        .expect("the tunnel ended");
}

#[tokio::test]
async fn an_http2_connection_without_streams_closes_after_keepalive_timeout() {
    let a = Upstream::start(Behavior::ok()).await.unwrap();
    let mut c = config();
    c.listen = Vec::new();
    c.listeners = vec![ListenerConfig::new(local()).with_protocols(&[AppProtocol::H2])];
    c.limits.keepalive_timeout = Duration::from_millis(400);
    let p = start(&[a.addr()], c.validate().unwrap());
    // Silent from the start: not even the preface.
    let mut silent = tokio::net::TcpStream::connect(p.addr()).await.unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "a silent HTTP/2 connection stays open");
    assert!(started.elapsed() >= Duration::from_millis(350));
    // One request, then quiet: the connection goes away too (GOAWAY).
    let tcp = tokio::net::TcpStream::connect(p.addr()).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::get("http://h/").body(()).unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    let done = tokio::time::timeout(Duration::from_secs(5), driver).await;
    assert!(done.is_ok(), "an idle HTTP/2 connection stays open");
}
