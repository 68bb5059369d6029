//! Every message forwarded as the RFCs require, through real sockets:
//! upgrades only to what was offered and allowed, framing never altered,
//! bodies of every method, one exact Host, targets in the form their method
//! takes, response lengths as one value, truthful forwarding headers, and
//! Detour's own HTTP version towards its client.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use detour_server::{AppProtocol, ListenerConfig, ServerConfig};
use detour_testkit::client::{RawConnection, RawResponse};
use detour_testkit::{Behavior, Upstream};
use support::tls::{client_config, h1_get, tls_connect, TestCert};
use support::{config, send, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend that answers every request head it reads with `response`, as
/// bytes; `close` ends the connection after each answer (HTTP/1.0 style).
async fn raw_backend(response: &'static [u8], close: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        if s.write_all(response).await.is_err() {
                            return;
                        }
                        if close {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// One request through a proxy in front of a backend that answers every
/// request with `response` (see [`raw_backend`]), and the client's answer.
async fn through(response: &'static [u8], request: &str) -> RawResponse {
    let p = start(&[raw_backend(response, true).await], config());
    send(p.addr(), request).await.unwrap()
}

const GET: &str = "GET / HTTP/1.1\r\nhost: h\r\n\r\n";

async fn up(b: Behavior) -> Upstream {
    Upstream::start(b).await.unwrap()
}

#[tokio::test]
async fn h2c_and_unlisted_upgrades_are_not_forwarded() {
    let a = up(Behavior::upgrade()).await;
    let p = start(&[a.addr()], config());
    for offer in ["h2c", "foo"] {
        let raw = format!(
            "GET / HTTP/1.1\r\nhost: h\r\nconnection: upgrade, http2-settings\r\nupgrade: {offer}\r\nhttp2-settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
        );
        let r = send(p.addr(), &raw).await.unwrap();
        assert_eq!(r.status, 200, "goes on as plain HTTP/1.1");
        let seen = a.received().pop().unwrap();
        assert_eq!(seen.header("upgrade"), None, "{offer} not forwarded");
        assert_eq!(seen.header("http2-settings"), None);
    }
    // A listed protocol still upgrades.
    let raw = "GET / HTTP/1.1\r\nhost: h\r\nconnection: upgrade\r\nupgrade: h2c, websocket\r\n\r\n";
    let r = send(p.addr(), raw).await.unwrap();
    assert_eq!(r.status, 101);
    assert_eq!(
        a.received().pop().unwrap().header("upgrade"),
        Some("websocket")
    );
}

#[tokio::test]
async fn a_101_to_a_protocol_not_offered_is_a_502_and_nothing_is_tunnelled() {
    // An h2c upgrade request (not forwarded as one) answered with 101.
    let r = through(
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
        "GET / HTTP/1.1\r\nhost: h\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 502);
    let r = through(
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n",
        "GET / HTTP/1.1\r\nhost: h\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 502, "websocket offered, h2c chosen");
}

#[tokio::test]
async fn a_response_with_length_and_coding_keeps_its_whole_chunked_body() {
    let r = through(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n\r\n", GET).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello world");
    assert_ne!(r.header("content-length"), Some("5"));
}

#[tokio::test]
async fn a_response_transfer_coding_other_than_chunked_is_refused() {
    let r = through(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n5\r\nzzzzz\r\n0\r\n\r\n",
        GET,
    )
    .await;
    assert_eq!(r.status, 502);
    let ps = r.header("proxy-status").unwrap();
    assert!(ps.contains("error=http_response_transfer_coding"), "{ps}");
}

#[tokio::test]
async fn request_transfer_codings_detour_cannot_pass_on_are_refused() {
    let a = up(Behavior::ok()).await;
    let p = start(&[a.addr()], config());
    let cases = [
        (
            "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            501,
        ),
        (
            "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: gzip\r\n\r\n",
            400,
        ),
        (
            "POST / HTTP/1.0\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
    ];
    for (raw, status) in cases {
        let mut c = RawConnection::connect(p.addr()).await.unwrap();
        c.send(raw.as_bytes()).await.unwrap();
        let r = c.read_response().await.unwrap();
        assert_eq!(r.status, status, "{raw:?}");
        // And the connection closes.
        assert!(c.read_to_end().await.map_or(true, |rest| rest.is_empty()));
    }
    assert_eq!(a.requests(), 0);
}

#[tokio::test]
async fn bodies_of_every_method_reach_the_backend() {
    let a = up(Behavior::ok()).await;
    let p = start(&[a.addr()], config());
    for method in ["GET", "HEAD", "OPTIONS", "DELETE"] {
        let raw = format!(
            "{method} /m HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        let mut c = RawConnection::connect(p.addr()).await.unwrap();
        c.send(raw.as_bytes()).await.unwrap();
        let r = c.read_response_head().await.unwrap();
        assert_eq!(r.status, 200, "{method}");
        let seen = a.received().pop().unwrap();
        assert_eq!((seen.method.as_str(), seen.body_len), (method, 5));
    }
    // HTTP/2: DATA without content-length.
    let c = h2_listener_config();
    let p = start(&[a.addr()], c);
    let tcp = TcpStream::connect(p.addr()).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::get("http://h/h2-get").body(()).unwrap();
    let (resp, mut body) = client.send_request(req, false).unwrap();
    body.send_data(Bytes::from_static(b"hello"), true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    let seen = a.received().pop().unwrap();
    assert_eq!((seen.method.as_str(), seen.body_len), ("GET", 5));
}

fn h2_listener_config() -> ServerConfig {
    let mut c = config();
    c.listen = Vec::new();
    c.listeners = vec![
        ListenerConfig::new("127.0.0.1:0".parse().unwrap()).with_protocols(&[AppProtocol::H2])
    ];
    c.validate().unwrap()
}

#[tokio::test]
async fn host_is_exact_on_http11() {
    let a = up(Behavior::ok()).await;
    let p = start(&[a.addr()], config());
    let two = "GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n";
    assert_eq!(send(p.addr(), two).await.unwrap().status, 400);
    let none = "GET / HTTP/1.1\r\n\r\n";
    assert_eq!(send(p.addr(), none).await.unwrap().status, 400);
    assert_eq!(a.requests(), 0);
    let absolute = "GET http://example.com/x?y=1 HTTP/1.1\r\nhost: other\r\n\r\n";
    assert_eq!(send(p.addr(), absolute).await.unwrap().status, 200);
    let seen = a.received().pop().unwrap();
    assert_eq!(seen.header("host"), Some("example.com"));
    assert_eq!(seen.path, "/x?y=1");
    assert_eq!(seen.header("x-forwarded-host"), Some("example.com"));
}

#[tokio::test]
async fn host_and_cookies_on_http2() {
    let a = up(Behavior::ok()).await;
    let p = start(&[a.addr()], h2_listener_config());
    let tcp = TcpStream::connect(p.addr()).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::get("http://example.com/")
        .header("host", "evil.example")
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    assert_eq!(
        resp.await.unwrap().status(),
        400,
        "host differs from :authority"
    );
    assert_eq!(a.requests(), 0);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::get("http://example.com/c")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    let seen = a.received().pop().unwrap();
    assert_eq!(seen.header("host"), Some("example.com"));
    assert_eq!(seen.header("x-forwarded-host"), Some("example.com"));
    assert_eq!(seen.header("cookie"), Some("a=1; b=2"));
}

#[tokio::test]
async fn forwarding_headers_tell_the_truth() {
    let a = up(Behavior::ok()).await;
    let cert = TestCert::new(&["localhost"]);
    let mut c = config();
    c.listeners =
        vec![ListenerConfig::new("127.0.0.1:0".parse().unwrap()).with_tls(&cert.cert, &cert.key)];
    let p = start(&[a.addr()], c.validate().unwrap());
    let (plain, tls_addr) = (p.handle.addrs()[0], p.handle.addrs()[1]);
    let tls = tls_connect(
        tls_addr,
        "localhost",
        client_config(&[&cert.der], &[b"http/1.1"]),
    )
    .await
    .unwrap();
    assert_eq!(h1_get(tls, "localhost", "/s").await.status, 200);
    let seen = a.received().pop().unwrap();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    // A client's Connection cannot remove Detour's request id or the Host.
    let raw = "GET / HTTP/1.1\r\nhost: h\r\nconnection: x-request-id, host\r\n\r\n";
    assert_eq!(send(plain, raw).await.unwrap().status, 200);
    let seen = a.received().pop().unwrap();
    assert_eq!(seen.header("host"), Some("h"));
    assert_eq!(seen.header("x-request-id").map(str::len), Some(32));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
}

#[tokio::test]
async fn an_http11_client_hears_http11_from_an_http10_backend() {
    let b = raw_backend(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", true).await;
    let p = start(&[b], config());
    let mut c = TcpStream::connect(p.addr()).await.unwrap();
    for _ in 0..3 {
        c.write_all(b"GET / HTTP/1.1\r\nhost: h\r\n\r\n")
            .await
            .unwrap();
        // Read one whole answer: head, then its 2-byte body.
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") || !got.ends_with(b"ok") {
            let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_ne!(n, 0, "the connection stays open");
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8(got).unwrap().to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 200"), "{text}");
        assert!(!text.contains("connection: close"), "{text}");
    }
}

#[tokio::test]
async fn trace_connect_and_long_targets() {
    let a = up(Behavior::ok()).await;
    let p = start(&[a.addr()], config());
    for method in ["TRACE", "CONNECT"] {
        let target = if method == "CONNECT" { "h:443" } else { "/" };
        let raw = format!("{method} {target} HTTP/1.1\r\nhost: h\r\n\r\n");
        let r = send(p.addr(), &raw).await.unwrap();
        assert_eq!(r.status, 405, "{method}");
        let allow = r.header("allow").unwrap();
        assert!(allow.contains("GET") && !allow.contains(method), "{allow}");
    }
    let long = format!("GET /{} HTTP/1.1\r\nhost: h\r\n\r\n", "a".repeat(10_000));
    assert_eq!(send(p.addr(), &long).await.unwrap().status, 414);
    assert_eq!(a.requests(), 0);
}

/// The values of every field named `name`, in order.
fn fields<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The status of one HTTP/2 request on a fresh connection.
async fn h2_status(addr: SocketAddr, req: http::Request<()>) -> u16 {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    resp.await.unwrap().status().as_u16()
}

#[tokio::test]
async fn a_host_that_is_not_host_and_port_is_refused() {
    let a = up(Behavior::ok()).await;
    let p = start(&[a.addr()], config());
    for host in ["evil@admin.internal", "admin.internal/x", "a:80:80", ""] {
        let raw = format!("GET / HTTP/1.1\r\nhost: {host}\r\n\r\n");
        assert_eq!(send(p.addr(), &raw).await.unwrap().status, 400, "{host:?}");
    }
    let userinfo = "GET http://x@admin.internal/ HTTP/1.1\r\nhost: a\r\n\r\n";
    assert_eq!(send(p.addr(), userinfo).await.unwrap().status, 400);
    assert_eq!(a.requests(), 0);
    let ipv6 = "GET / HTTP/1.1\r\nhost: [::1]:8080\r\n\r\n";
    assert_eq!(send(p.addr(), ipv6).await.unwrap().status, 200);
    assert_eq!(
        a.received().pop().unwrap().header("host"),
        Some("[::1]:8080")
    );
}

#[tokio::test]
async fn http2_authority_is_checked_and_compared_as_an_origin() {
    let a = up(Behavior::ok()).await;
    let p = start(&[a.addr()], h2_listener_config());
    let req = http::Request::get("http://x@admin.internal/")
        .body(())
        .unwrap();
    assert_eq!(h2_status(p.addr(), req).await, 400, "userinfo");
    assert_eq!(a.requests(), 0);
    // The same origin spelled otherwise: the backend gets :authority.
    for host in ["A.Example", "a.example:80"] {
        let req = http::Request::get("http://a.example/")
            .header("host", host)
            .body(())
            .unwrap();
        assert_eq!(h2_status(p.addr(), req).await, 200, "{host}");
        let seen = a.received().pop().unwrap();
        assert_eq!(fields(&seen.headers, "host"), ["a.example"]);
    }
    let req = http::Request::get("http://a.example/")
        .header("host", "a.example:8080")
        .body(())
        .unwrap();
    assert_eq!(h2_status(p.addr(), req).await, 400, "another port");
}

#[tokio::test]
async fn targets_in_the_wrong_form_and_folded_methods_are_refused() {
    let a = up(Behavior::ok()).await;
    let p = start(&[a.addr()], config());
    for raw in [
        "GET admin.internal:80 HTTP/1.1\r\nhost: h\r\n\r\n",
        "DELETE * HTTP/1.1\r\nhost: h\r\n\r\n",
    ] {
        assert_eq!(send(p.addr(), raw).await.unwrap().status, 400, "{raw:?}");
    }
    for method in ["trace", "TrAcE", "connect"] {
        let target = if method == "connect" { "h:443" } else { "/" };
        let raw = format!("{method} {target} HTTP/1.1\r\nhost: h\r\n\r\n");
        let r = send(p.addr(), &raw).await.unwrap();
        assert_eq!(r.status, 405, "{method}");
        assert!(r.header("allow").is_some(), "{method}");
    }
    assert_eq!(a.requests(), 0);
    let options = "OPTIONS * HTTP/1.1\r\nhost: h\r\n\r\n";
    assert_eq!(send(p.addr(), options).await.unwrap().status, 200);
    let seen = a.received().pop().unwrap();
    assert_eq!((seen.method.as_str(), seen.path.as_str()), ("OPTIONS", "*"));
}

#[tokio::test]
async fn max_uri_size_counts_the_same_on_http11_and_http2() {
    let a = up(Behavior::ok()).await;
    let mut c = h2_listener_config();
    c.limits.max_uri_size = 64;
    c.listen = vec!["127.0.0.1:0".parse().unwrap()];
    let p = start(&[a.addr()], c.validate().unwrap());
    let (h1, h2) = (p.handle.addrs()[0], p.handle.addrs()[1]);
    for (len, status) in [(64, 200), (65, 414)] {
        let path = format!("/{}", "a".repeat(len - 1));
        let raw = format!("GET {path} HTTP/1.1\r\nhost: h\r\n\r\n");
        assert_eq!(send(h1, &raw).await.unwrap().status, status, "h1 {len}");
        let req = http::Request::get(format!("http://a-long-authority.example{path}"))
            .body(())
            .unwrap();
        assert_eq!(h2_status(h2, req).await, status, "h2 {len}");
    }
}

#[tokio::test]
async fn a_repeated_response_length_reaches_the_client_as_one() {
    for response in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\nhello",
    ] {
        let r = through(response, GET).await;
        assert_eq!(r.status, 200);
        assert_eq!(fields(&r.headers, "content-length"), ["5"]);
        assert_eq!(r.body, b"hello");
    }
    // HEAD on HTTP/1.1: hyper writes no head with a list there.
    let b = raw_backend(b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n", true).await;
    let p = start(&[b], config());
    let mut c = RawConnection::connect(p.addr()).await.unwrap();
    c.send(b"HEAD / HTTP/1.1\r\nhost: h\r\n\r\n").await.unwrap();
    let r = c.read_response_head().await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(fields(&r.headers, "content-length"), ["5"]);
    // HTTP/2: the client would reset the stream (PROTOCOL_ERROR).
    let b = raw_backend(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\nhello",
        true,
    )
    .await;
    let p = start(&[b], h2_listener_config());
    let tcp = TcpStream::connect(p.addr()).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::get("http://h/").body(()).unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], "5");
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while let Some(chunk) = body.data().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(got, b"hello");
}

#[tokio::test]
async fn response_lengths_that_differ_or_belong_to_no_body() {
    let r = through(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
        GET,
    )
    .await;
    assert_eq!(r.status, 502);
    let r = through(b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n", GET).await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("content-length"), None);
}

#[tokio::test]
async fn an_empty_or_doubled_response_chunked_is_refused() {
    for response in [
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: \r\n\r\nhello"[..],
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        let r = through(response, GET).await;
        assert_eq!(r.status, 502);
        let ps = r.header("proxy-status").unwrap();
        assert!(ps.contains("error=http_response_transfer_coding"), "{ps}");
    }
}

#[tokio::test]
async fn upgrade_fields_are_one_list() {
    let a = up(Behavior::upgrade()).await;
    let p = start(&[a.addr()], config());
    for offer in [
        "upgrade: websocket\r\nupgrade: h2c",
        "upgrade: h2c\r\nupgrade: websocket",
    ] {
        let raw = format!("GET / HTTP/1.1\r\nhost: h\r\nconnection: upgrade\r\n{offer}\r\n\r\n");
        let mut c = RawConnection::connect(p.addr()).await.unwrap();
        c.send(raw.as_bytes()).await.unwrap();
        let r = c.read_response_head().await.unwrap();
        assert_eq!(r.status, 101, "{offer:?}");
        let seen = a.received().pop().unwrap();
        assert_eq!(fields(&seen.headers, "upgrade"), ["websocket"], "{offer:?}");
    }
    // A 101 whose second Upgrade field was not offered.
    let r = through(
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\nupgrade: h2c\r\n\r\n",
        "GET / HTTP/1.1\r\nhost: h\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 502);
}

#[tokio::test]
async fn an_http10_upgrade_is_a_plain_request() {
    let a = up(Behavior::upgrade()).await;
    let p = start(&[a.addr()], config());
    let raw = "GET / HTTP/1.0\r\nhost: h\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n";
    assert_eq!(send(p.addr(), raw).await.unwrap().status, 200);
    let seen = a.received().pop().unwrap();
    assert_eq!(seen.header("upgrade"), None);
}
