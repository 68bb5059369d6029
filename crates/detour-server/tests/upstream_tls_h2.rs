//! Upstream TLS and HTTP/2 through real sockets: SNI and verification
//! (configured CA, off), ALPN choosing h2 or http/1.1, many streams over one
//! pooled connection, and HTTP/2 failover: refused streams are retried for
//! any method, other resets only for safe requests, GOAWAY drains a
//! connection without failing its streams; uploads over TLS on both HTTP/1.1
//! clients.
#![allow(clippy::unwrap_used)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use detour_server::upstream::Upstream;
use detour_server::{HttpProxy, Server, ServerHandle};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use support::h2backend::{H2Backend, Mode};
use support::tls::{server_tls, TestCert};
use support::{send, upstream, Selecting};

fn serve(up: &Arc<Upstream>) -> ServerHandle {
    let mut cfg = support::base_config();
    cfg.listen = vec!["127.0.0.1:0".parse().unwrap()];
    let proxy = HttpProxy::builder(Selecting { up: Arc::clone(up) })
        .config(cfg.clone())
        .build();
    Server::new(cfg).start(proxy).unwrap()
}

/// An HTTP/1.1-only TLS backend (ALPN offers http/1.1 alone) answering
/// each request with `answer`'s body; counts requests and connections.
async fn tls_h1_server<F, Fut>(
    cert: &TestCert,
    answer: F,
) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>)
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Bytes> + Send + 'static,
{
    let config = server_tls(cert, &[b"http/1.1"]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (requests, conns) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (r, c) = (Arc::clone(&requests), Arc::clone(&conns));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            c.fetch_add(1, Ordering::SeqCst);
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&config));
            let (r, answer) = (Arc::clone(&r), answer.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req| {
                    r.fetch_add(1, Ordering::SeqCst);
                    let body = answer(req);
                    async move { Ok::<_, Infallible>(http::Response::new(Full::new(body.await))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, requests, conns)
}

/// [`tls_h1_server`] answering with the request's HTTP version; counts
/// requests.
async fn tls_h1_backend(cert: &TestCert) -> (SocketAddr, Arc<AtomicUsize>) {
    let (addr, requests, _) = tls_h1_server(cert, |req| {
        let v = format!("{:?}", req.version());
        async move { Bytes::from(v) }
    })
    .await;
    (addr, requests)
}

fn get(path: &str, id: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nx-request-id: {id}\r\n\r\n")
}

fn post(path: &str, id: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\nx-request-id: {id}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn tls_h2_upstream_multiplexes_many_requests_over_one_connection() {
    let cert = TestCert::new(&["backend.test"]);
    let backend =
        H2Backend::start_with(Mode::Ok, Some(server_tls(&cert, &[b"h2", b"http/1.1"]))).await;
    let extra = format!(
        "http2 = true\ntls = {{ sni = \"backend.test\", ca = {:?} }}",
        cert.cert.display().to_string()
    );
    let up = upstream("app", &[backend.addr()], &extra);
    let h = serve(&up);
    let r = send(h.addr(), &get("/warm", "w")).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"h2 ok");
    let mut tasks = Vec::new();
    for i in 0..50 {
        let addr = h.addr();
        tasks.push(tokio::spawn(async move {
            send(addr, &get("/many", &format!("m{i}")))
                .await
                .unwrap()
                .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(backend.seen().len(), 51);
    assert_eq!(backend.connections(), 1, "one multiplexed connection");
    // The backend saw an HTTP/2 request with :authority from Host, no Host.
    let s = &backend.seen()[0];
    assert!(s.headers.get("host").is_none());
}

#[tokio::test]
async fn alpn_falls_back_to_http11_when_the_backend_only_speaks_it() {
    let cert = TestCert::new(&["localhost"]);
    let (addr, count) = tls_h1_backend(&cert).await;
    let extra = format!(
        "http2 = true\ntls = {{ sni = \"localhost\", ca = {:?} }}",
        cert.cert.display().to_string()
    );
    let up = upstream("app", &[addr], &extra);
    let h = serve(&up);
    for i in 0..3 {
        let r = send(h.addr(), &get("/", &format!("a{i}"))).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"HTTP/1.1");
    }
    assert_eq!(count.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn verification_refuses_an_unknown_certificate_unless_turned_off() {
    let cert = TestCert::new(&["localhost"]);
    let other = TestCert::new(&["localhost"]);
    let (addr, count) = tls_h1_backend(&cert).await;
    // Trusting another CA: the handshake fails, nothing reaches the backend,
    // and the client gets 502 naming a TLS error.
    let extra = format!(
        "tls = {{ sni = \"localhost\", ca = {:?} }}\nretry = {{ max_retries = 1 }}",
        other.cert.display().to_string()
    );
    let h = serve(&upstream("app", &[addr], &extra));
    let r = send(h.addr(), &get("/", "v1")).await.unwrap();
    assert_eq!(r.status, 502);
    assert!(
        r.header("proxy-status")
            .unwrap()
            .contains("tls_protocol_error"),
        "{:?}",
        r.header("proxy-status")
    );
    // The right CA but the wrong name: refused too.
    let extra = format!(
        "tls = {{ sni = \"elsewhere.test\", ca = {:?} }}",
        cert.cert.display().to_string()
    );
    let h = serve(&upstream("app", &[addr], &extra));
    assert_eq!(send(h.addr(), &get("/", "v2")).await.unwrap().status, 502);
    assert_eq!(count.load(Ordering::SeqCst), 0);
    // verify = false accepts it.
    let h = serve(&upstream("app", &[addr], "tls = { verify = false }"));
    assert_eq!(send(h.addr(), &get("/", "v3")).await.unwrap().status, 200);
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn h2c_upstream_by_prior_knowledge() {
    let backend = H2Backend::start(Mode::Ok).await;
    let h = serve(&upstream("app", &[backend.addr()], "http2 = true"));
    let r = send(h.addr(), &post("/up", "p1", "payload")).await.unwrap();
    assert_eq!(r.status, 200);
    let s = backend.seen();
    assert_eq!(s.len(), 1);
    assert_eq!(&s[0].body[..], b"payload");
    assert_eq!(s[0].method, "POST");
}

#[tokio::test]
async fn a_refused_stream_is_retried_whatever_the_method_and_delivered_once() {
    let refusing = H2Backend::start(Mode::Refuse).await;
    let good = H2Backend::start(Mode::Ok).await;
    let h = serve(&upstream(
        "app",
        &[refusing.addr(), good.addr()],
        "http2 = true",
    ));
    for i in 0..6 {
        let id = format!("post-{i}");
        let r = send(h.addr(), &post("/pay", &id, "once")).await.unwrap();
        assert_eq!(r.status, 200, "{id}");
        assert_eq!(good.count_for(&id), 1, "{id} delivered exactly once");
    }
    assert!(
        refusing.refused() >= 1,
        "round robin sent some to the refusing backend"
    );
    assert!(refusing.seen().is_empty());
}

#[tokio::test]
async fn another_reset_retries_only_safe_requests() {
    let resetting = H2Backend::start(Mode::ResetAfterBody(h2::Reason::INTERNAL_ERROR)).await;
    let good = H2Backend::start(Mode::Ok).await;
    // One backend at a time, the resetting one first.
    let h = serve(&upstream("app", &[resetting.addr()], "http2 = true"));
    let r = send(h.addr(), &post("/pay", "np", "x")).await.unwrap();
    assert_eq!(
        r.status, 502,
        "a POST whose stream was reset is not retried"
    );
    assert_eq!(resetting.count_for("np"), 1);
    let both = upstream("app", &[resetting.addr(), good.addr()], "http2 = true");
    let h = serve(&both);
    for i in 0..4 {
        let id = format!("get-{i}");
        let r = send(h.addr(), &get("/read", &id)).await.unwrap();
        assert_eq!(r.status, 200, "a GET is retried on the other backend");
        assert_eq!(good.count_for(&id), 1);
    }
    for i in 0..4 {
        let id = format!("post-{i}");
        let r = send(h.addr(), &post("/pay", &id, "x")).await.unwrap();
        let total = good.count_for(&id) + resetting.count_for(&id);
        assert_eq!(total, 1, "{id} reached exactly one backend");
        if resetting.count_for(&id) == 1 {
            assert_eq!(r.status, 502);
        }
    }
}

#[tokio::test]
async fn goaway_drains_the_connection_without_failing_streams_in_flight() {
    let backend = H2Backend::start(Mode::GoAwayAt {
        n: 3,
        delay: Duration::from_millis(300),
    })
    .await;
    let h = serve(&upstream("app", &[backend.addr()], "http2 = true"));
    assert_eq!(
        send(h.addr(), &get("/warm", "w")).await.unwrap().status,
        200
    );
    // Concurrent POSTs: the third triggers GOAWAY and answers late; the
    // others either finished, or were refused (above the last stream id)
    // and retried on a fresh connection. None fails, none is doubled.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let addr = h.addr();
        tasks.push(tokio::spawn(async move {
            let id = format!("g{i}");
            (send(addr, &post("/p", &id, "b")).await.unwrap().status, id)
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        let (status, id) = t.await.unwrap();
        assert_eq!(status, 200, "{id}");
        assert_eq!(backend.count_for(&id), 1, "{id}");
    }
    // The connection that sent GOAWAY left the pool: later requests went on
    // a new one.
    assert!(backend.connections() >= 2, "{}", backend.connections());
    assert_eq!(
        send(h.addr(), &get("/after", "a")).await.unwrap().status,
        200
    );
}

/// A hand-made HTTP/2 backend: it answers each request's HEADERS with
/// `GOAWAY(last_stream_id = 0)`, so every stream is above the last one it
/// will process. Counts the streams it saw.
async fn goaway_zero_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let s = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                let mut preface = [0u8; 24];
                if tcp.read_exact(&mut preface).await.is_err() {
                    return;
                }
                // Our SETTINGS (empty).
                let _ = tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await;
                loop {
                    let mut head = [0u8; 9];
                    if tcp.read_exact(&mut head).await.is_err() {
                        return;
                    }
                    let len = (usize::from(head[0]) << 16)
                        | (usize::from(head[1]) << 8)
                        | usize::from(head[2]);
                    let mut payload = vec![0u8; len];
                    if tcp.read_exact(&mut payload).await.is_err() {
                        return;
                    }
                    match head[3] {
                        // SETTINGS without ACK: acknowledge.
                        4 if head[4] & 1 == 0 => {
                            let _ = tcp.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await;
                        }
                        // HEADERS: GOAWAY, last stream 0, NO_ERROR.
                        1 => {
                            s.fetch_add(1, Ordering::SeqCst);
                            let _ = tcp
                                .write_all(&[0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
                                .await;
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn a_stream_above_goaway_last_stream_id_is_retried_for_a_post() {
    let (going, streams) = goaway_zero_backend().await;
    let good = H2Backend::start(Mode::Ok).await;
    let h = serve(&upstream("app", &[going, good.addr()], "http2 = true"));
    for i in 0..4 {
        let id = format!("post-{i}");
        let r = send(h.addr(), &post("/pay", &id, "once")).await.unwrap();
        assert_eq!(r.status, 200, "{id}");
        assert_eq!(good.count_for(&id), 1, "{id} delivered exactly once");
    }
    assert!(
        streams.load(Ordering::SeqCst) >= 1,
        "some went to the GOAWAY backend first"
    );
}

/// [`tls_h1_server`] answering with the request's body; counts connections.
async fn tls_h1_echo_backend(cert: &TestCert) -> (SocketAddr, Arc<AtomicUsize>) {
    use http_body_util::BodyExt;
    let (addr, _, conns) = tls_h1_server(cert, |req| async move {
        req.into_body().collect().await.unwrap().to_bytes()
    })
    .await;
    (addr, conns)
}

/// Uploads over TLS on each HTTP/1.1 client: a body of many TLS records
/// with a length, and a chunked one, arrive whole, and the connection is
/// reused after each.
#[tokio::test]
async fn uploads_over_tls_arrive_whole_on_both_http1_clients() {
    use detour_server::config::Http1Client;
    let cert = TestCert::new(&["localhost"]);
    for client in [Http1Client::Native, Http1Client::Hyper] {
        let (addr, conns) = tls_h1_echo_backend(&cert).await;
        let extra = format!(
            "tls = {{ sni = \"localhost\", ca = {:?} }}",
            cert.cert.display().to_string()
        );
        let up = upstream("app", &[addr], &extra);
        let mut cfg = support::base_config();
        cfg.listen = vec!["127.0.0.1:0".parse().unwrap()];
        cfg.pool.http1_client = client;
        let proxy = HttpProxy::builder(Selecting {
            up: Arc::clone(&up),
        })
        .config(cfg.clone())
        .build();
        let h = Server::new(cfg).start(proxy).unwrap();
        let big: String = (0..200_000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let mut c = detour_testkit::client::RawConnection::connect(h.addr())
            .await
            .unwrap();
        for i in 0..3 {
            c.send(post("/", &format!("big{i}"), &big).as_bytes())
                .await
                .unwrap();
            let r = c.read_response().await.unwrap();
            assert_eq!(r.status, 200, "{client:?}");
            assert!(
                r.body == big.as_bytes(),
                "{client:?}: {} bytes back",
                r.body.len()
            );
            let chunked = format!(
                "POST / HTTP/1.1\r\nhost: localhost\r\nx-request-id: c{i}\r\n\
                 transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            );
            c.send(chunked.as_bytes()).await.unwrap();
            let r = c.read_response().await.unwrap();
            assert_eq!(
                (r.status, r.body.as_slice()),
                (200, &b"hello world"[..]),
                "{client:?}"
            );
        }
        assert_eq!(
            conns.load(Ordering::SeqCst),
            1,
            "{client:?}: one connection, reused"
        );
        drop(h);
    }
}
