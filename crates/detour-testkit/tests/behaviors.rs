//! Every behavior, observed from a raw client over real loopback sockets.

mod support;

use std::time::Duration;

use detour_testkit::client::{send_raw, RawConnection};
use detour_testkit::{Behavior, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use support::{assert_refused, assert_reset, get, request, soon};

async fn connect(upstream: &Upstream) -> RawConnection {
    soon(RawConnection::connect(upstream.addr()))
        .await
        .expect("connect")
}

#[tokio::test]
async fn ok_answers_with_its_address_and_keeps_the_connection() {
    let started = Instant::now();
    let upstream = Upstream::start(Behavior::ok()).await.unwrap();
    let addr = upstream.addr().to_string();
    let mut conn = connect(&upstream).await;
    for i in 0..3 {
        conn.send(&get("/a?b=1", &[&format!("x-request-id: r{i}")]))
            .await
            .unwrap();
        let res = soon(conn.read_response()).await.unwrap();
        assert_eq!(res.status, 200);
        assert_eq!(res.body, format!("ok from {addr}").as_bytes());
        assert_eq!(res.header("x-upstream"), Some(addr.as_str()));
        assert_eq!(res.header("x-request-id"), Some(format!("r{i}").as_str()));
        assert_eq!(res.header("connection"), None);
    }
    assert_eq!(upstream.connections(), 1);
    assert_eq!(upstream.requests(), 3);
    let seen = upstream.received();
    assert_eq!(seen.len(), 3);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("GET", "/a?b=1")
    );
    assert_eq!(seen[0].header("HOST"), Some("test"));
    // Heads are stamped as they are read, in order.
    assert!(seen[0].at >= started);
    assert!(seen.windows(2).all(|w| w[0].at <= w[1].at));
    assert!(seen[2].at <= Instant::now());
}

#[tokio::test]
async fn client_connection_close_ends_the_connection_after_the_response() {
    let upstream = Upstream::start(Behavior::ok()).await.unwrap();
    let mut conn = connect(&upstream).await;
    conn.send(&get("/", &["connection: close"])).await.unwrap();
    let res = soon(conn.read_response()).await.unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.header("connection"), Some("close"));
    assert!(
        soon(conn.read_to_end()).await.unwrap().is_empty(),
        "clean FIN"
    );
}

#[tokio::test]
async fn http10_closes_unless_asked_to_keep_alive() {
    let upstream = Upstream::start(Behavior::ok()).await.unwrap();
    let answer = soon(send_raw(upstream.addr(), b"GET / HTTP/1.0\r\n\r\n"))
        .await
        .unwrap();
    let text = String::from_utf8(answer).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");

    let mut conn = connect(&upstream).await;
    for _ in 0..2 {
        conn.send(b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let res = soon(conn.read_response()).await.unwrap();
        assert_eq!(res.header("connection"), Some("keep-alive"));
    }
}

#[tokio::test]
async fn status_with_extra_headers_and_body() {
    let upstream = Upstream::start(
        Behavior::status(503)
            .with_header("Retry-After", "2")
            .with_body("busy"),
    )
    .await
    .unwrap();
    let mut conn = connect(&upstream).await;
    conn.send(&get("/", &[])).await.unwrap();
    let res = soon(conn.read_response()).await.unwrap();
    assert_eq!(res.status, 503);
    assert_eq!(res.header("retry-after"), Some("2"));
    assert_eq!(res.body, b"busy");
}

#[tokio::test]
async fn status_default_bodies() {
    let upstream = Upstream::start(Behavior::status(502)).await.unwrap();
    let mut conn = connect(&upstream).await;
    conn.send(&get("/", &[])).await.unwrap();
    let res = soon(conn.read_response()).await.unwrap();
    assert_eq!(res.body, format!("502 from {}", upstream.addr()).as_bytes());

    upstream.set_behavior(Behavior::status(204));
    conn.send(&get("/", &[])).await.unwrap();
    let res = soon(conn.read_response()).await.unwrap();
    assert_eq!((res.status, res.header("content-length")), (204, None));
    // Nothing was sent as a body: the connection is in step for another request.
    conn.send(&get("/", &[])).await.unwrap();
    assert_eq!(soon(conn.read_response()).await.unwrap().status, 204);
}

#[tokio::test]
async fn status_sequence_counts_requests_across_connections() {
    let upstream = Upstream::start(Behavior::status_sequence(vec![503, 503, 200]))
        .await
        .unwrap();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let mut conn = connect(&upstream).await;
        conn.send(&get("/", &["connection: close"])).await.unwrap();
        statuses.push(soon(conn.read_response()).await.unwrap().status);
    }
    assert_eq!(statuses, [503, 503, 200, 200]);
    assert_eq!(upstream.connections(), 4);

    // Installing a sequence again starts it again.
    upstream.set_behavior(Behavior::status_sequence([500, 200]));
    let mut conn = connect(&upstream).await;
    for expected in [500, 200, 200] {
        conn.send(&get("/", &[])).await.unwrap();
        assert_eq!(soon(conn.read_response()).await.unwrap().status, expected);
    }
}

#[tokio::test]
async fn refuse_never_listens() {
    let upstream = Upstream::start(Behavior::refuse()).await.unwrap();
    assert_refused(upstream.addr()).await;
    assert_eq!(upstream.connections(), 0);
}

#[tokio::test]
async fn switching_to_refuse_and_back() {
    let upstream = Upstream::start(Behavior::ok()).await.unwrap();
    let mut open = connect(&upstream).await;
    open.send(&get("/", &[])).await.unwrap();
    soon(open.read_response()).await.unwrap();

    upstream.set_behavior(Behavior::refuse());
    assert_refused(upstream.addr()).await;
    // The connection opened before stays open, but a request on it is reset.
    open.send(&get("/", &[])).await.unwrap();
    assert_reset(soon(open.read_response()).await);

    upstream.set_behavior(Behavior::ok());
    let mut conn = connect(&upstream).await;
    conn.send(&get("/", &[])).await.unwrap();
    assert_eq!(soon(conn.read_response()).await.unwrap().status, 200);
}

#[tokio::test]
async fn reset_after_request_reads_everything_then_resets() {
    let upstream = Upstream::start(Behavior::reset_after_request())
        .await
        .unwrap();
    let mut conn = connect(&upstream).await;
    conn.send(&request("POST", "/upload", &["x-request-id: p1"], b"hello"))
        .await
        .unwrap();
    assert_reset(soon(conn.read_response()).await);
    assert_eq!(upstream.requests(), 1);
    assert_eq!(upstream.count_for("p1"), 1);
    assert_eq!(upstream.received()[0].body_len, 5);
}

/// Reads until the socket fails; returns what arrived and the error.
async fn read_until_error(stream: &mut TcpStream) -> (Vec<u8>, std::io::Error) {
    let mut got = Vec::new();
    let mut buf = [0; 4096];
    loop {
        match soon(stream.read(&mut buf)).await {
            Ok(0) => panic!("clean EOF after {} bytes, expected a reset", got.len()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, e),
        }
    }
}

#[tokio::test]
async fn reset_after_bytes_cuts_the_head() {
    let upstream = Upstream::start(Behavior::reset_after_bytes(20))
        .await
        .unwrap();
    let mut stream = TcpStream::connect(upstream.addr()).await.unwrap();
    stream.write_all(&get("/", &[])).await.unwrap();
    let (got, err) = read_until_error(&mut stream).await;
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    assert_eq!(got, b"HTTP/1.1 200 OK\r\nx-u");
}

#[tokio::test]
async fn reset_after_bytes_cuts_the_body() {
    let upstream = Upstream::start(Behavior::reset_after_bytes(300))
        .await
        .unwrap();
    let mut stream = TcpStream::connect(upstream.addr()).await.unwrap();
    stream.write_all(&get("/", &[])).await.unwrap();
    let (got, err) = read_until_error(&mut stream).await;
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    assert_eq!(got.len(), 300);
    let text = String::from_utf8(got).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("content-length: 1000"), "{head}");
    assert!(!body.is_empty() && body.bytes().all(|b| b == b'x'));
}

#[tokio::test]
async fn hang_reads_the_request_and_never_answers() {
    let upstream = Upstream::start(Behavior::hang()).await.unwrap();
    let mut conn = connect(&upstream).await;
    conn.send(&request("POST", "/", &[], b"abc")).await.unwrap();
    soon(upstream.wait_for_requests(1)).await;
    assert!(timeout(Duration::from_millis(300), conn.read_response())
        .await
        .is_err());
    upstream.kill().await;
    assert_reset(soon(conn.read_response()).await);
    assert_eq!(upstream.received()[0].body_len, 3);
}

#[tokio::test]
async fn blackhole_accepts_but_never_reads() {
    let upstream = Upstream::start(Behavior::blackhole()).await.unwrap();
    let mut conn = connect(&upstream).await;
    conn.send(&get("/", &[])).await.unwrap();
    assert!(timeout(Duration::from_millis(300), conn.read_response())
        .await
        .is_err());
    assert_eq!(upstream.connections(), 1);
    assert_eq!(upstream.requests(), 0);
}

#[tokio::test]
async fn slow_waits_before_answering() {
    let upstream = Upstream::start(Behavior::slow(Duration::from_millis(200)))
        .await
        .unwrap();
    let mut conn = connect(&upstream).await;
    let started = Instant::now();
    conn.send(&get("/", &[])).await.unwrap();
    let res = soon(conn.read_response()).await.unwrap();
    assert_eq!(res.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn slow_body_sends_the_head_at_once_and_the_body_in_pieces() {
    let delay = Duration::from_millis(100);
    let upstream = Upstream::start(Behavior::slow_body(delay).with_body("0123456789ab"))
        .await
        .unwrap();
    let mut conn = connect(&upstream).await;
    let started = Instant::now();
    conn.send(&get("/", &["connection: close"])).await.unwrap();
    let head = soon(conn.read_response_head()).await.unwrap();
    let head_after = started.elapsed();
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    let body = soon(conn.read_to_end()).await.unwrap();
    let body_after = started.elapsed();
    assert_eq!(
        body,
        b"3\r\n012\r\n3\r\n345\r\n3\r\n678\r\n3\r\n9ab\r\n0\r\n\r\n"
    );
    assert!(head_after < delay, "head took {head_after:?}");
    assert!(body_after >= delay * 4, "body took {body_after:?}");
}

#[tokio::test]
async fn answer_before_body_answers_then_closes_cleanly() {
    let upstream = Upstream::start(Behavior::answer_before_body(413))
        .await
        .unwrap();
    let mut conn = connect(&upstream).await;
    conn.send(
        b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 100000\r\nexpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let res = soon(conn.read_response()).await.unwrap();
    assert_eq!(res.status, 413);
    assert_eq!(res.header("connection"), Some("close"));
    // A client that sends its body anyway still gets a clean close, not a reset.
    conn.send(&[b'b'; 10_000]).await.unwrap();
    assert!(soon(conn.read_to_end()).await.unwrap().is_empty());
    assert_eq!(upstream.requests(), 1);
    assert_eq!(upstream.received()[0].body_len, 0);
}

#[tokio::test]
async fn close_idle_after_closes_idle_keep_alive_connections() {
    let idle = Duration::from_millis(200);
    let upstream = Upstream::start(
        Behavior::ok()
            .close_idle_after(idle)
            .advertise_keep_alive(1),
    )
    .await
    .unwrap();
    let mut conn = connect(&upstream).await;
    // Requests closer together than the idle time keep the connection.
    for i in 0..3 {
        if i > 0 {
            tokio::time::sleep(idle / 2).await;
        }
        conn.send(&get("/", &[])).await.unwrap();
        let res = soon(conn.read_response()).await.unwrap();
        assert_eq!(res.header("keep-alive"), Some("timeout=1"));
    }
    let idle_since = Instant::now();
    assert!(
        soon(conn.read_to_end()).await.unwrap().is_empty(),
        "clean FIN"
    );
    // The server's timer started just before `idle_since`; allow for that.
    assert!(
        idle_since.elapsed() >= idle * 3 / 4,
        "{:?}",
        idle_since.elapsed()
    );
    assert_eq!(upstream.connections(), 1);

    // A connection that never sends a request is closed too.
    let mut silent = connect(&upstream).await;
    let started = Instant::now();
    assert!(soon(silent.read_to_end()).await.unwrap().is_empty());
    assert!(started.elapsed() >= idle);
}

#[tokio::test]
async fn echo_sends_back_length_and_chunked_bodies() {
    let upstream = Upstream::start(Behavior::echo()).await.unwrap();
    let mut conn = connect(&upstream).await;
    conn.send(&request("PUT", "/", &[], b"hello world"))
        .await
        .unwrap();
    let res = soon(conn.read_response()).await.unwrap();
    assert_eq!(res.header("content-length"), Some("11"));
    assert_eq!(res.body, b"hello world");

    conn.send(b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        .await
        .unwrap();
    let res = soon(conn.read_response()).await.unwrap();
    assert_eq!(res.header("transfer-encoding"), Some("chunked"));
    assert_eq!(res.body, b"hello world");

    conn.send(&get("/", &[])).await.unwrap();
    let res = soon(conn.read_response()).await.unwrap();
    assert_eq!(
        (res.header("content-length"), res.body.len()),
        (Some("0"), 0)
    );

    let lens: Vec<u64> = upstream.received().iter().map(|r| r.body_len).collect();
    assert_eq!(lens, [11, 11, 0]);
}

#[tokio::test]
async fn echo_streams_a_body_larger_than_the_socket_buffers() {
    const LEN: usize = 8 * 1024 * 1024;
    let pattern = |i: usize| (i % 251) as u8;
    let upstream = Upstream::start(Behavior::echo()).await.unwrap();
    let stream = TcpStream::connect(upstream.addr()).await.unwrap();
    let (mut rx, mut tx) = stream.into_split();
    let writer = tokio::spawn(async move {
        let head = format!(
            "POST / HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-length: {LEN}\r\n\r\n"
        );
        tx.write_all(head.as_bytes()).await.unwrap();
        let body: Vec<u8> = (0..LEN).map(pattern).collect();
        for piece in body.chunks(64 * 1024) {
            tx.write_all(piece).await.unwrap();
        }
        tx
    });

    let mut head = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    let mut body_seen = 0;
    loop {
        let n = soon(rx.read(&mut buf)).await.unwrap();
        if n == 0 {
            break;
        }
        let mut data = &buf[..n];
        // Bytes up to the head's empty line are head, the rest body.
        let mut used = 0;
        while used < data.len() && !head.ends_with(b"\r\n\r\n") {
            head.push(data[used]);
            used += 1;
        }
        data = &data[used..];
        for &b in data {
            assert_eq!(b, pattern(body_seen), "byte {body_seen}");
            body_seen += 1;
        }
    }
    drop(soon(writer).await.unwrap());
    let head = String::from_utf8(head).unwrap();
    assert!(
        head.contains(&format!("content-length: {LEN}\r\n")),
        "{head}"
    );
    assert_eq!(body_seen, LEN);
    assert_eq!(upstream.received()[0].body_len, LEN as u64);
}

#[tokio::test]
async fn large_generates_a_body_of_the_given_length() {
    const LEN: u64 = 3 * 1024 * 1024 + 7;
    let upstream = Upstream::start(Behavior::large(LEN)).await.unwrap();
    let mut conn = connect(&upstream).await;
    conn.send(&get("/", &[])).await.unwrap();
    let res = soon(conn.read_response()).await.unwrap();
    assert_eq!(res.body.len() as u64, LEN);
    assert!(res.body.iter().all(|&b| b == b'x'));

    // HEAD announces the length and sends nothing, so the connection stays in step.
    conn.send(&request("HEAD", "/", &[], b"")).await.unwrap();
    let head = soon(conn.read_response_head()).await.unwrap();
    assert_eq!(
        head.header("content-length"),
        Some(LEN.to_string().as_str())
    );
    conn.send(&get("/", &["connection: close"])).await.unwrap();
    assert_eq!(
        soon(conn.read_response()).await.unwrap().body.len() as u64,
        LEN
    );
}

#[tokio::test]
async fn upgrade_switches_protocols_and_echoes_raw_bytes() {
    let upstream = Upstream::start(Behavior::upgrade()).await.unwrap();
    let mut conn = connect(&upstream).await;
    conn.send(&get("/", &[])).await.unwrap();
    assert_eq!(soon(conn.read_response()).await.unwrap().status, 200);

    conn.send(&get(
        "/ws",
        &[
            "connection: upgrade",
            "upgrade: websocket",
            "x-request-id: u1",
        ],
    ))
    .await
    .unwrap();
    let res = soon(conn.read_response_head()).await.unwrap();
    assert_eq!(res.status, 101);
    assert_eq!(res.header("upgrade"), Some("websocket"));
    assert_eq!(res.header("connection"), Some("upgrade"));
    assert_eq!(res.header("x-request-id"), Some("u1"));
    conn.send(b"ping \x00\xff").await.unwrap();
    assert_eq!(soon(conn.read_exact(7)).await.unwrap(), b"ping \x00\xff");
    conn.shutdown_write().await.unwrap();
    assert!(soon(conn.read_to_end()).await.unwrap().is_empty());
}

#[tokio::test]
async fn expect_continue_gets_100_before_the_body_is_sent() {
    let upstream = Upstream::start(Behavior::ok()).await.unwrap();
    let mut conn = connect(&upstream).await;
    conn.send(b"PUT / HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        soon(conn.read_exact(25)).await.unwrap(),
        b"HTTP/1.1 100 Continue\r\n\r\n"
    );
    conn.send(b"hello").await.unwrap();
    assert_eq!(soon(conn.read_response()).await.unwrap().status, 200);
    assert_eq!(upstream.received()[0].body_len, 5);
}

#[tokio::test]
async fn chunked_request_bodies_keep_the_connection_in_step() {
    let upstream = Upstream::start(Behavior::ok()).await.unwrap();
    let mut conn = connect(&upstream).await;
    conn.send(b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\ntrailer: 1\r\n\r\n")
        .await
        .unwrap();
    conn.send(&get("/second", &[])).await.unwrap();
    assert_eq!(soon(conn.read_response()).await.unwrap().status, 200);
    assert_eq!(soon(conn.read_response()).await.unwrap().status, 200);
    let seen = upstream.received();
    assert_eq!((seen[0].body_len, seen[1].path.as_str()), (3, "/second"));
}

#[tokio::test]
async fn count_for_counts_by_request_id() {
    let upstream = Upstream::start(Behavior::ok()).await.unwrap();
    for id in ["a", "b", "a"] {
        let mut conn = connect(&upstream).await;
        conn.send(&get("/", &[&format!("X-Request-Id: {id}")]))
            .await
            .unwrap();
        soon(conn.read_response()).await.unwrap();
    }
    assert_eq!(upstream.count_for("a"), 2);
    assert_eq!(upstream.count_for("b"), 1);
    assert_eq!(upstream.count_for("c"), 0);
    assert_eq!(upstream.requests(), 3);
}

#[tokio::test]
async fn malformed_requests_get_400_and_close() {
    let upstream = Upstream::start(Behavior::ok()).await.unwrap();
    let too_long = get("/", &[&format!("x-big: {}", "a".repeat(70 * 1024))]);
    let cases: [&[u8]; 4] = [
        b"NONSENSE\r\n\r\n",
        b"GET / HTTP/1.1\r\ncontent-length: nope\r\n\r\n",
        b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        &too_long,
    ];
    for case in cases {
        let answer = soon(send_raw(upstream.addr(), case)).await.unwrap();
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");
    }
    // Still serving.
    let mut conn = connect(&upstream).await;
    conn.send(&get("/", &[])).await.unwrap();
    assert_eq!(soon(conn.read_response()).await.unwrap().status, 200);
}
