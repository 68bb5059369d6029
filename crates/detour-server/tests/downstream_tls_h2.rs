//! Downstream TLS and HTTP/2 through real sockets: ALPN picks h2 or
//! http/1.1, SNI picks the certificate, certificates reload without a
//! restart, cleartext HTTP/2 by prior knowledge, the rapid-reset defence,
//! and GOAWAY on drain.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use detour_server::{AppProtocol, ListenerConfig, ServerConfig, Stop};
use detour_testkit::{Behavior, Upstream};
use support::tls::{client_config, h1_get, tls_connect, H2Client, TestCert};
use support::{send, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn listener_config(listeners: Vec<ListenerConfig>) -> ServerConfig {
    let mut c = support::base_config();
    c.listen = Vec::new();
    c.listeners = listeners;
    c.validate().unwrap()
}

fn local() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test]
async fn tls_listener_speaks_h2_and_http11_by_alpn() {
    let backend = Upstream::start(Behavior::ok().with_body("hello"))
        .await
        .unwrap();
    let cert = TestCert::new(&["localhost"]);
    let c = listener_config(vec![
        ListenerConfig::new(local()).with_tls(&cert.cert, &cert.key)
    ]);
    let p = start(&[backend.addr()], c);

    let tls = tls_connect(p.addr(), "localhost", client_config(&[&cert.der], &[b"h2"]))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, _task) = H2Client::handshake(tls, "localhost", "https").await;
    let a = h2.get("/over-h2").await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.version, http::Version::HTTP_2);
    assert_eq!(&a.body[..], b"hello");
    // Many streams on the one connection.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut c = h2.clone();
        tasks.push(tokio::spawn(async move {
            c.get(&format!("/s{i}")).await.unwrap().status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }

    let tls = tls_connect(
        p.addr(),
        "localhost",
        client_config(&[&cert.der], &[b"http/1.1"]),
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let a = h1_get(tls, "localhost", "/over-h1").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.version, http::Version::HTTP_11);

    // No ALPN at all: HTTP/1.1.
    let tls = tls_connect(p.addr(), "localhost", client_config(&[&cert.der], &[]))
        .await
        .unwrap();
    assert_eq!(h1_get(tls, "localhost", "/no-alpn").await.status, 200);

    let seen: Vec<String> = backend.received().iter().map(|r| r.path.clone()).collect();
    assert!(seen.contains(&"/over-h2".to_string()), "{seen:?}");
    assert!(seen.contains(&"/over-h1".to_string()), "{seen:?}");
    assert_eq!(backend.requests(), 23);
}

#[tokio::test]
async fn sni_picks_the_certificate_by_its_names() {
    let backend = Upstream::start(Behavior::ok()).await.unwrap();
    let a = TestCert::new(&["a.test"]);
    let b = TestCert::new(&["b.test", "*.b.test"]);
    let c = listener_config(vec![ListenerConfig::new(local())
        .with_tls(&a.cert, &a.key)
        .with_tls(&b.cert, &b.key)]);
    let p = start(&[backend.addr()], c);
    let roots = [&a.der, &b.der];
    for (sni, want) in [
        ("a.test", &a.der),
        ("b.test", &b.der),
        ("www.b.test", &b.der),
    ] {
        let tls = tls_connect(p.addr(), sni, client_config(&roots, &[b"h2"]))
            .await
            .unwrap();
        let served = &tls.get_ref().1.peer_certificates().unwrap()[0];
        assert_eq!(served, want, "{sni}");
    }
    // An unknown name gets the first (default) certificate, which the client
    // then refuses for the name: the handshake fails, the server lives on.
    let err = tls_connect(p.addr(), "c.test", client_config(&roots, &[b"h2"])).await;
    assert!(err.is_err());
    let tls = tls_connect(p.addr(), "a.test", client_config(&roots, &[b"h2"]))
        .await
        .unwrap();
    let (mut h2, _t) = H2Client::handshake(tls, "a.test", "https").await;
    assert_eq!(h2.get("/").await.unwrap().status, 200);
}

#[tokio::test]
async fn certificates_reload_for_new_connections_without_a_restart() {
    let backend = Upstream::start(Behavior::ok()).await.unwrap();
    let dir = support::tls::temp_dir();
    let old = TestCert::in_dir(&dir, &["localhost"]);
    let c = listener_config(vec![
        ListenerConfig::new(local()).with_tls(&old.cert, &old.key)
    ]);
    let p = start(&[backend.addr()], c.clone());
    let open = tls_connect(p.addr(), "localhost", client_config(&[&old.der], &[b"h2"]))
        .await
        .unwrap();
    let (mut kept, _t) = H2Client::handshake(open, "localhost", "https").await;

    // New files at the same paths, then a reload.
    let new = TestCert::in_dir(&dir, &["localhost"]);
    assert_ne!(old.der, new.der);
    assert_eq!(p.handle.reload_tls(&c).unwrap(), 1);
    let tls = tls_connect(p.addr(), "localhost", client_config(&[&new.der], &[b"h2"]))
        .await
        .unwrap();
    assert_eq!(&tls.get_ref().1.peer_certificates().unwrap()[0], &new.der);
    // The connection opened before the reload carries on.
    assert_eq!(kept.get("/still").await.unwrap().status, 200);

    // A bad file is refused with the field named, and nothing changes.
    std::fs::write(&new.key, "not a key").unwrap();
    let e = p.handle.reload_tls(&c).unwrap_err();
    assert_eq!(
        e.field.as_deref(),
        Some("server.listeners[0].tls.key"),
        "{e}"
    );
    let tls = tls_connect(p.addr(), "localhost", client_config(&[&new.der], &[b"h2"]))
        .await
        .unwrap();
    assert_eq!(&tls.get_ref().1.peer_certificates().unwrap()[0], &new.der);
}

#[tokio::test]
async fn cleartext_h2_by_prior_knowledge_and_mixed_listeners() {
    let backend = Upstream::start(Behavior::ok()).await.unwrap();
    let c = listener_config(vec![
        ListenerConfig::new(local()).with_protocols(&[AppProtocol::H2]),
        ListenerConfig::new(local()).with_protocols(&[AppProtocol::H2, AppProtocol::Http11]),
    ]);
    let p = start(&[backend.addr()], c);
    let (h2_only, mixed) = (p.handle.addrs()[0], p.handle.addrs()[1]);
    let (mut h2, _t) = H2Client::h2c(h2_only).await;
    let a = h2.get("/h2c").await.unwrap();
    assert_eq!((a.status, a.version), (200, http::Version::HTTP_2));
    let (mut h2, _t) = H2Client::h2c(mixed).await;
    assert_eq!(h2.get("/mixed-h2").await.unwrap().status, 200);
    let r = send(mixed, "GET /mixed-h1 HTTP/1.1\r\nhost: h\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    // The framing guard still watches HTTP/1.1 on a mixed listener.
    let r = send(
        mixed,
        "POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(backend.requests(), 3);
}

/// Raw HTTP/2 frames for the rapid-reset flood.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[tokio::test]
async fn a_rapid_reset_flood_gets_goaway_and_the_server_serves_on() {
    let backend = Upstream::start(Behavior::ok()).await.unwrap();
    let c = listener_config(vec![
        ListenerConfig::new(local()).with_protocols(&[AppProtocol::H2])
    ]);
    let p = start(&[backend.addr()], c);
    let mut tcp = tokio::net::TcpStream::connect(p.addr()).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[])); // SETTINGS
                                     // GET / with :authority h, HPACK: indexed :method GET, :scheme http,
                                     // :path /, then :authority as a literal without indexing.
    let headers = [0x82, 0x86, 0x84, 0x01, 0x01, b'h'];
    for i in 0..2000u32 {
        let id = 2 * i + 1;
        out.extend(frame(1, 0x5, id, &headers)); // HEADERS, END_STREAM|END_HEADERS
        out.extend(frame(3, 0, id, &8u32.to_be_bytes())); // RST_STREAM CANCEL
    }
    // The server may close before it read everything: a failed write is fine.
    let _ = tcp.write_all(&out).await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the connection was not closed");
    // Find a GOAWAY frame with ENHANCE_YOUR_CALM (0xb).
    let mut at = 0;
    let mut goaway = None;
    while at + 9 <= got.len() {
        let len = (usize::from(got[at]) << 16)
            | (usize::from(got[at + 1]) << 8)
            | usize::from(got[at + 2]);
        if got[at + 3] == 7 && at + 9 + 8 <= got.len() {
            let code = u32::from_be_bytes(got[at + 13..at + 17].try_into().unwrap());
            goaway = Some(code);
        }
        at += 9 + len;
    }
    assert_eq!(goaway, Some(0xb), "expected GOAWAY(ENHANCE_YOUR_CALM)");
    // Far fewer than 2000 requests reached the backend.
    assert!(
        backend.requests() < 200,
        "{} reached the backend",
        backend.requests()
    );
    // And everyone else is served.
    let (mut h2, _t) = H2Client::h2c(p.addr()).await;
    assert_eq!(h2.get("/after").await.unwrap().status, 200);
}

#[tokio::test]
async fn draining_sends_goaway_and_finishes_streams_in_flight() {
    let backend = Upstream::start(Behavior::slow(Duration::from_millis(400)))
        .await
        .unwrap();
    let mut c = listener_config(vec![
        ListenerConfig::new(local()).with_protocols(&[AppProtocol::H2])
    ]);
    c.grace_period = Duration::from_secs(5);
    let p = start(&[backend.addr()], c);
    let (h2, conn) = H2Client::h2c(p.addr()).await;
    let mut inflight = h2.clone();
    let req = tokio::spawn(async move { inflight.get("/slow").await });
    backend.wait_for_requests(1).await;
    p.handle.stop(Stop::Graceful);
    let a = req.await.unwrap().unwrap();
    assert_eq!(a.status, 200, "the stream in flight finished");
    // GOAWAY ended the connection once its stream was done.
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .unwrap()
        .unwrap();
    let mut late = h2.clone();
    assert!(late.get("/late").await.is_err());
}

#[tokio::test]
async fn curl_over_tls_h2_and_http11_when_installed() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("curl not installed: skipped");
        return;
    }
    let backend = Upstream::start(Behavior::ok().with_body("via curl"))
        .await
        .unwrap();
    let cert = TestCert::new(&["localhost"]);
    let c = listener_config(vec![
        ListenerConfig::new(local()).with_tls(&cert.cert, &cert.key)
    ]);
    let p = start(&[backend.addr()], c);
    let url = format!("https://localhost:{}/curl", p.addr().port());
    let resolve = format!("localhost:{}:127.0.0.1", p.addr().port());
    for (flag, want) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", flag, "--cacert"])
            .arg(&cert.cert)
            .args([
                "--resolve",
                &resolve,
                "-w",
                "\n%{http_version} %{http_code}",
                &url,
            ])
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{flag}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(text, format!("via curl\n{want} 200"), "{flag}");
    }
}

/// Runs h2load (nghttp2) against `url`; `None` when it is not installed.
async fn h2load(url: &str, extra: &[&str]) -> Option<String> {
    let out = tokio::process::Command::new("h2load")
        .args(["-n", "4000", "-c", "4", "-m", "16"])
        .args(extra)
        .arg(url)
        .output()
        .await
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_through_the_proxy_over_h2c_and_tls() {
    let backend = Upstream::start(Behavior::ok()).await.unwrap();
    let cert = TestCert::new(&["localhost"]);
    let c = listener_config(vec![
        ListenerConfig::new(local()).with_protocols(&[AppProtocol::H2]),
        ListenerConfig::new(local()).with_tls(&cert.cert, &cert.key),
    ]);
    let p = start(&[backend.addr()], c);
    let (h2c, tls) = (p.handle.addrs()[0], p.handle.addrs()[1]);
    let Some(out) = h2load(&format!("http://{h2c}/"), &[]).await else {
        eprintln!("h2load not installed: skipped");
        return;
    };
    assert!(out.contains("4000 succeeded, 0 failed, 0 errored"), "{out}");
    let out = h2load(&format!("https://localhost:{}/", tls.port()), &[])
        .await
        .unwrap();
    // h2load does not verify certificates; it negotiates h2 by ALPN.
    assert!(out.contains("Application protocol: h2"), "{out}");
    assert!(out.contains("4000 succeeded, 0 failed, 0 errored"), "{out}");
}

#[tokio::test]
async fn upgrades_still_tunnel_over_tls_http11() {
    let backend = Upstream::start(Behavior::upgrade()).await.unwrap();
    let cert = TestCert::new(&["localhost"]);
    let c = listener_config(vec![
        ListenerConfig::new(local()).with_tls(&cert.cert, &cert.key)
    ]);
    let p = start(&[backend.addr()], c);
    let mut tls = tls_connect(
        p.addr(),
        "localhost",
        client_config(&[&cert.der], &[b"http/1.1"]),
    )
    .await
    .unwrap();
    tls.write_all(
        b"GET /ws HTTP/1.1\r\nhost: h\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tls.write_all(b"ping over tls").await.unwrap();
    let mut echoed = [0u8; 13];
    tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"ping over tls");
}

#[tokio::test]
async fn the_stream_limit_is_advertised_to_clients() {
    let backend = Upstream::start(Behavior::ok()).await.unwrap();
    let mut c = support::base_config();
    c.listen = Vec::new();
    c.listeners = vec![ListenerConfig::new(local()).with_protocols(&[AppProtocol::H2])];
    c.http2.max_concurrent_streams = 7;
    let p = start(&[backend.addr()], c.validate().unwrap());
    let tcp = tokio::net::TcpStream::connect(p.addr()).await.unwrap();
    let (client, mut conn) = h2::client::handshake(tcp).await.unwrap();
    // Drive the connection until the server's SETTINGS arrived.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while conn.max_concurrent_send_streams() != 7 && tokio::time::Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(20), &mut conn).await;
    }
    assert_eq!(conn.max_concurrent_send_streams(), 7);
    drop(client);
}

/// Send a POST declaring `declared` body bytes on `client`: `first` bytes at
/// once without END_STREAM, then, after a pause long enough for the proxy to
/// forward what it has, `then` bytes with END_STREAM. Returns the status, or
/// `None` when the stream failed.
async fn post_in_two_steps(
    client: &h2::client::SendRequest<bytes::Bytes>,
    declared: usize,
    first: usize,
    then: usize,
) -> Option<u16> {
    let req = http::Request::builder()
        .method("POST")
        .uri("http://test/two-steps")
        .header("content-length", declared)
        .body(())
        .unwrap();
    let mut c = client.clone().ready().await.unwrap();
    let (resp, mut send) = c.send_request(req, false).unwrap();
    if first > 0 {
        send.send_data(vec![b'a'; first].into(), false).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = send.send_data(vec![b'b'; then].into(), true);
    let answer = tokio::time::timeout(Duration::from_secs(5), resp)
        .await
        .expect("an answer or a reset in time");
    answer.ok().map(|r| r.status().as_u16())
}

#[tokio::test]
async fn an_h2_body_longer_than_its_content_length_never_reaches_the_backend_whole() {
    // The declared length is reached before the stream ends, then more DATA
    // comes: the stream fails (RFC 9113 §8.1.1), and the backend must not
    // have had a whole request by then. The last declared bytes (or, for an
    // empty body, the head itself) wait for END_STREAM.
    let backend = Upstream::start(Behavior::ok()).await.unwrap();
    let c = listener_config(vec![
        ListenerConfig::new(local()).with_protocols(&[AppProtocol::H2])
    ]);
    let p = start(&[backend.addr()], c);
    let tcp = tokio::net::TcpStream::connect(p.addr()).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);

    for declared in [0, 5] {
        let status = post_in_two_steps(&client, declared, declared, 1).await;
        assert!(
            status.is_none_or(|s| s >= 400),
            "declared {declared}, sent more: {status:?}"
        );
    }
    let whole: Vec<_> = backend
        .received()
        .into_iter()
        .filter(|r| r.body_len == 5 || r.header("content-length") == Some("0"))
        .collect();
    assert!(
        whole.is_empty(),
        "the backend had whole requests: {whole:?}"
    );

    // The same bodies ended as declared, END_STREAM coming late: they wait
    // for it, then go.
    let before = backend.requests();
    assert_eq!(post_in_two_steps(&client, 0, 0, 0).await, Some(200));
    assert_eq!(post_in_two_steps(&client, 5, 5, 0).await, Some(200));
    assert_eq!(post_in_two_steps(&client, 5, 3, 2).await, Some(200));
    let late: Vec<u64> = backend.received()[before..]
        .iter()
        .map(|r| r.body_len)
        .collect();
    assert_eq!(late, [0, 5, 5]);
}
