//! Clients that are slow on purpose, through real sockets: a client that
//! stops reading its response (`send_timeout`), and one whose request body
//! stalls or trickles (`client_body_timeout`, `client_body_min_rate`). Each
//! ends as the client's fault: its slot is freed, nothing is retried, and no
//! backend is charged.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use detour_testkit::client::RawConnection;
use detour_testkit::{Behavior, Upstream};
use support::{config, start};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// A client connection with a small receive buffer that sends `request` and
/// then never reads.
async fn non_reader(addr: SocketAddr, request: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    s
}

#[tokio::test]
async fn clients_that_stop_reading_lose_their_slots_within_the_send_timeout() {
    let big = Upstream::start(Behavior::large(50 << 20)).await.unwrap();
    let mut c = config();
    c.limits.max_connections = 20;
    c.limits.send_timeout = Duration::from_secs(2);
    let p = start(&[big.addr()], c);
    let get = "GET /big HTTP/1.1\r\nhost: t\r\n\r\n";
    let mut stuck = Vec::new();
    for _ in 0..20 {
        stuck.push(non_reader(p.addr(), get).await);
    }
    // Every slot is taken once the backend has all 20 requests.
    tokio::time::timeout(Duration::from_secs(5), big.wait_for_requests(20))
        .await
        .unwrap();
    let stalled_at = Instant::now();
    // A new client queues in the backlog until a slot frees, then is served.
    let mut next = RawConnection::connect(p.addr()).await.unwrap();
    next.send(get.as_bytes()).await.unwrap();
    let head = tokio::time::timeout(Duration::from_secs(10), next.read_response_head())
        .await
        .expect("a slot must free up")
        .unwrap();
    assert_eq!(head.status, 200);
    let waited = stalled_at.elapsed();
    assert!(
        waited < Duration::from_secs(3),
        "slots held for {waited:?} with send_timeout = 2s"
    );
    // Twenty more at once: every slot of the stuck clients is free again.
    let mut fresh = Vec::new();
    for _ in 0..19 {
        let mut c = RawConnection::connect(p.addr()).await.unwrap();
        c.send(get.as_bytes()).await.unwrap();
        fresh.push(c);
    }
    for c in &mut fresh {
        let head = tokio::time::timeout(Duration::from_secs(5), c.read_response_head())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(head.status, 200);
    }
    // The stuck clients' exchanges ended as their own fault.
    let failures = p.recorder.0.lock().unwrap().iter().filter(|o| o.1).count();
    assert_eq!(
        failures, 0,
        "a client that stopped reading is not the backend's fault"
    );
    drop(stuck);
}

#[tokio::test]
async fn a_quiet_response_is_not_a_slow_reader() {
    // The backend sends its body slowly (one chunk every 300 ms): the client
    // has nothing to read in between, which is not a stalled send.
    let slow = Upstream::start(Behavior::slow_body(Duration::from_millis(300)))
        .await
        .unwrap();
    let mut c = config();
    c.limits.send_timeout = Duration::from_millis(200);
    let p = start(&[slow.addr()], c);
    let r = support::send(p.addr(), &support::get("/", "quiet"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(!r.body.is_empty());
}

/// Send a request head with `len` bytes of body declared, then `sent` bytes
/// of it, one every `gap`.
async fn trickle(addr: SocketAddr, len: usize, sent: usize, gap: Duration) -> RawConnection {
    let mut c = RawConnection::connect(addr).await.unwrap();
    let head = format!("PUT /up HTTP/1.1\r\nhost: t\r\ncontent-length: {len}\r\n\r\n");
    c.send(head.as_bytes()).await.unwrap();
    for _ in 0..sent {
        tokio::time::sleep(gap).await;
        if c.send(b"x").await.is_err() {
            break;
        }
    }
    c
}

fn two_backends_config() -> detour_server::ServerConfig {
    let mut c = config();
    // A short per-try timeout, which a slow upload used to run out.
    c.retry.per_try_timeout = Some(Duration::from_secs(1));
    c
}

#[tokio::test]
async fn a_trickling_upload_gets_408_and_no_backend_is_charged() {
    let a = Upstream::start(Behavior::ok()).await.unwrap();
    let b = Upstream::start(Behavior::ok()).await.unwrap();
    let mut c = two_backends_config();
    c.limits.client_body_min_rate = 100;
    c.limits.client_body_min_rate_window = Duration::from_secs(1);
    let p = start(&[a.addr(), b.addr()], c);
    let started = Instant::now();
    // 1 byte every 0.25 s: 4 bytes/s against a minimum of 100.
    let send = tokio::spawn(trickle(p.addr(), 1000, 40, Duration::from_millis(250)));
    let mut client = send.await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), client.read_response())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 408);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cut by the rate well before the upload would end"
    );
    assert_eq!(
        a.requests() + b.requests(),
        1,
        "the client's fault is not retried elsewhere"
    );
    let failures = p.recorder.0.lock().unwrap().iter().filter(|o| o.1).count();
    assert_eq!(failures, 0, "nor charged to the backend");
}

#[tokio::test]
async fn a_stalled_upload_gets_408_after_client_body_timeout() {
    let a = Upstream::start(Behavior::ok()).await.unwrap();
    let mut c = two_backends_config();
    c.limits.client_body_timeout = Duration::from_millis(1500);
    let p = start(&[a.addr()], c);
    let mut client = RawConnection::connect(p.addr()).await.unwrap();
    client
        .send(b"PUT /up HTTP/1.1\r\nhost: t\r\ncontent-length: 10\r\n\r\nhalf!")
        .await
        .unwrap();
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), client.read_response())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 408);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(a.requests(), 1);
    let failures = p.recorder.0.lock().unwrap().iter().filter(|o| o.1).count();
    assert_eq!(failures, 0);
}

#[tokio::test]
async fn a_slow_but_steady_upload_is_not_cut_by_the_per_try_timeout() {
    // 20 bytes over 2 s: twice the 1 s per-try timeout, but the time went to
    // waiting for the client, which the per-try timer does not count.
    let a = Upstream::start(Behavior::ok()).await.unwrap();
    let b = Upstream::start(Behavior::ok()).await.unwrap();
    let mut c = two_backends_config();
    c.limits.client_body_min_rate = 0;
    let p = start(&[a.addr(), b.addr()], c);
    let mut client = trickle(p.addr(), 20, 20, Duration::from_millis(100)).await;
    let r = tokio::time::timeout(Duration::from_secs(5), client.read_response())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200);
    let seen: Vec<_> = a.received().into_iter().chain(b.received()).collect();
    assert_eq!(seen.len(), 1, "one attempt");
    assert_eq!(seen[0].body_len, 20);
}

#[tokio::test]
async fn a_client_that_vanishes_mid_upload_is_not_retried_nor_charged() {
    let a = Upstream::start(Behavior::ok()).await.unwrap();
    let b = Upstream::start(Behavior::ok()).await.unwrap();
    let p = start(&[a.addr(), b.addr()], two_backends_config());
    let client = trickle(p.addr(), 100, 3, Duration::from_millis(50)).await;
    tokio::time::timeout(Duration::from_secs(2), async {
        while a.requests() + b.requests() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    drop(client);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(a.requests() + b.requests(), 1);
    let failures = p.recorder.0.lock().unwrap().iter().filter(|o| o.1).count();
    assert_eq!(failures, 0);
}

#[tokio::test]
async fn an_http2_stream_whose_window_stays_shut_is_reset_and_the_connection_serves_on() {
    use detour_server::{AppProtocol, ListenerConfig};
    let big = Upstream::start(Behavior::large(10 << 20)).await.unwrap();
    let mut c = config();
    c.listen = Vec::new();
    c.listeners = vec![
        ListenerConfig::new("127.0.0.1:0".parse().unwrap()).with_protocols(&[AppProtocol::H2])
    ];
    c.limits.send_timeout = Duration::from_secs(1);
    let p = start(&[big.addr()], c.validate().unwrap());
    let tcp = TcpStream::connect(p.addr()).await.unwrap();
    // Streams get a 16 KiB window the client never opens again; the
    // connection's window is wide, so only the stream is stuck.
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(16 * 1024)
        .initial_connection_window_size(64 << 20)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let get = || http::Request::get("http://t/big").body(()).unwrap();
    let (resp, _) = client.send_request(get(), true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let started = Instant::now();
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(5), body.data())
            .await
            .expect("the stuck stream must be reset")
        {
            Some(Ok(_)) => continue,
            Some(Err(e)) => break e,
            None => panic!("the stream ended instead of being reset"),
        }
    };
    assert_eq!(err.reason(), Some(h2::Reason::CANCEL), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // The connection itself serves on.
    let mut client = client.ready().await.unwrap();
    let (resp, _) = client.send_request(get(), true).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), resp)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let failures = p.recorder.0.lock().unwrap().iter().filter(|o| o.1).count();
    assert_eq!(failures, 0);
}

#[tokio::test]
async fn a_tunnel_whose_client_stops_reading_is_closed() {
    // A WebSocket-style tunnel to an echoing backend: the client keeps
    // sending and never reads, so the echo piles up towards it.
    let echo = Upstream::start(Behavior::upgrade()).await.unwrap();
    let mut c = config();
    c.limits.send_timeout = Duration::from_secs(1);
    let p = start(&[echo.addr()], c);
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(p.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let closed = support::write_until_closed(&mut s, Duration::from_secs(20)).await;
    assert!(closed, "the tunnel was never closed");
    assert!(started.elapsed() < Duration::from_secs(10));
    tokio::time::timeout(Duration::from_secs(2), p.proxy.tunnels_closed())
        .await
        .expect("the tunnel ended");
}

#[tokio::test]
async fn a_backend_that_gives_up_on_a_slow_upload_is_not_charged() {
    // Two backends that read the head, wait 1 s for the body and close (a
    // backend's own body timeout).
    let mut addrs = Vec::new();
    let heads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..2 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(listener.local_addr().unwrap());
        let heads = std::sync::Arc::clone(&heads);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let heads = std::sync::Arc::clone(&heads);
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut buf = [0u8; 1024];
                    if s.read(&mut buf).await.unwrap_or(0) > 0 {
                        heads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                });
            }
        });
    }
    let p = start(&addrs, config());
    // 1 byte every 0.25 s: far below client_body_min_rate (500 B/s).
    let mut client = trickle(p.addr(), 100, 12, Duration::from_millis(250)).await;
    let r = tokio::time::timeout(Duration::from_secs(10), client.read_response())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 408);
    assert_eq!(
        heads.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "not retried on the other backend"
    );
    let failures = p.recorder.0.lock().unwrap().iter().filter(|o| o.1).count();
    assert_eq!(failures, 0, "not charged to the backend that gave up");
}
