//! Active HTTP checks dial like the engine, through real sockets: an
//! upstream with `tls`, `http2` or both has HTTP checks, each on a fresh
//! connection of its own (TLS with the upstream's CA and SNI, HTTP/2 when
//! the upstream speaks it) that is closed once the answer is read. A
//! backend answering the check path 200 is up, one answering 503 or failing
//! the TLS handshake is down.
#![allow(clippy::unwrap_used)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use detour_health::HealthEvent;
use detour_server::upstream::{EventHook, Upstream, UpstreamConfig};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::tls::{server_tls, TestCert};
use support::upstream;
use tokio::time::Instant;

/// Long enough for any check on a loaded machine; the waits end as soon
/// as the state they wait for is there.
const CAP: Duration = Duration::from_secs(15);

/// What a check backend saw: the version and path of every request, and
/// its connections (made, and still open).
#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<(http::Version, String, Option<String>)>>,
    connections: AtomicUsize,
    open: AtomicUsize,
}

/// A backend answering every request with `status` (changeable), over TLS
/// with `tls` when given, in HTTP/2 when `h2` (by ALPN, or prior knowledge
/// in cleartext), else HTTP/1.1.
struct CheckBackend {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CheckBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CheckBackend {
    async fn start(tls: Option<Arc<rustls::ServerConfig>>, h2: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(200));
        let seen = Arc::new(Seen::default());
        let (st, sn) = (Arc::clone(&status), Arc::clone(&seen));
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                sn.connections.fetch_add(1, Ordering::SeqCst);
                let (st, sn, tls) = (Arc::clone(&st), Arc::clone(&sn), tls.clone());
                tokio::spawn(async move {
                    sn.open.fetch_add(1, Ordering::SeqCst);
                    match tls {
                        Some(cfg) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                            if let Ok(s) = acceptor.accept(tcp).await {
                                serve(s, h2, st, Arc::clone(&sn)).await;
                            }
                        }
                        None => serve(tcp, h2, st, Arc::clone(&sn)).await,
                    }
                    sn.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        CheckBackend {
            addr,
            status,
            seen,
            task,
        }
    }

    fn requests(&self) -> Vec<(http::Version, String, Option<String>)> {
        self.seen.requests.lock().unwrap().clone()
    }
}

async fn serve<I>(io: I, h2: bool, status: Arc<AtomicU16>, seen: Arc<Seen>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| req.uri().authority().map(|a| a.to_string()));
        seen.requests
            .lock()
            .unwrap()
            .push((req.version(), req.uri().path().to_owned(), host));
        let mut resp = http::Response::new(Full::new(Bytes::from_static(b"checked")));
        *resp.status_mut() = http::StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap();
        async move { Ok::<_, Infallible>(resp) }
    });
    let io = TokioIo::new(io);
    if h2 {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc)
            .await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .await;
    }
}

/// The `[health]` table every test uses: an HTTP check of `/healthz`, one
/// result enough either way, checked every 100 ms.
const HEALTH: &str = "\n[health]\nkind = \"http\"\npath = \"/healthz\"\n\
     interval = \"100ms\"\nfast_interval = \"100ms\"\ntimeout = \"2s\"\nrise = 1\nfall = 1\n";

/// Wait until `backend` of `up` is down (`true`) or up (`false`) by its
/// checks; panics after [`CAP`].
async fn wait_until_down(up: &Upstream, backend: SocketAddr, down: bool) {
    let start = Instant::now();
    loop {
        let b = up.backends().iter().find(|b| b.addr() == backend).cloned();
        if b.as_ref().unwrap().state().check_failed() == down {
            return;
        }
        assert!(
            start.elapsed() < CAP,
            "{backend} never went {} within {CAP:?}",
            if down { "down" } else { "up" }
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until no connection to `backend` is open; panics after [`CAP`].
async fn wait_until_closed(backend: &CheckBackend) {
    let start = Instant::now();
    while backend.seen.open.load(Ordering::SeqCst) > 0 {
        assert!(start.elapsed() < CAP, "a check's connection stayed open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The whole story on one upstream: up while `/healthz` answers 200, down
/// once it answers 503, up again at 200; every check on a connection of its
/// own, spoken in `version`, and none left open once the checks stop.
async fn checks_follow_the_status(backend: &CheckBackend, extra: &str, version: http::Version) {
    let up = upstream("app", &[backend.addr], &format!("{extra}{HEALTH}"));
    up.first_round().await;
    wait_until_down(&up, backend.addr, false).await;
    let services = up.start_services(&tokio::runtime::Handle::current());

    backend.status.store(503, Ordering::SeqCst);
    wait_until_down(&up, backend.addr, true).await;
    backend.status.store(200, Ordering::SeqCst);
    wait_until_down(&up, backend.addr, false).await;
    drop(services);

    let requests = backend.requests();
    assert!(requests.len() >= 3, "{requests:?}");
    for (v, path, host) in &requests {
        assert_eq!((*v, path.as_str()), (version, "/healthz"));
        // The Host (or :authority) names the backend, as the check says.
        assert_eq!(host.as_deref(), Some(backend.addr.to_string().as_str()));
    }
    wait_until_closed(backend).await;
    // Never pooled: every check made a connection of its own.
    assert_eq!(
        backend.seen.connections.load(Ordering::SeqCst),
        backend.requests().len()
    );
}

fn tls_extra(cert: &TestCert, http2: bool) -> String {
    format!(
        "http2 = {http2}\ntls = {{ sni = \"backend.test\", ca = {:?} }}",
        cert.cert.display().to_string()
    )
}

#[tokio::test]
async fn http_checks_reach_a_tls_upstream() {
    let cert = TestCert::new(&["backend.test"]);
    let backend = CheckBackend::start(Some(server_tls(&cert, &[b"http/1.1"])), false).await;
    checks_follow_the_status(&backend, &tls_extra(&cert, false), http::Version::HTTP_11).await;
}

#[tokio::test]
async fn http_checks_reach_a_tls_http2_upstream_in_http2() {
    let cert = TestCert::new(&["backend.test"]);
    let backend = CheckBackend::start(Some(server_tls(&cert, &[b"h2"])), true).await;
    checks_follow_the_status(&backend, &tls_extra(&cert, true), http::Version::HTTP_2).await;
}

#[tokio::test]
async fn http_checks_reach_a_cleartext_http2_upstream_by_prior_knowledge() {
    let backend = CheckBackend::start(None, true).await;
    checks_follow_the_status(&backend, "http2 = true", http::Version::HTTP_2).await;
}

#[tokio::test]
async fn a_backend_failing_the_tls_handshake_is_down() {
    // The check trusts one CA; the backend shows another certificate.
    let trusted = TestCert::new(&["backend.test"]);
    let other = TestCert::new(&["backend.test"]);
    for http2 in [false, true] {
        let alpn: &[&[u8]] = if http2 { &[b"h2"] } else { &[b"http/1.1"] };
        let backend = CheckBackend::start(Some(server_tls(&other, alpn)), http2).await;
        let good = CheckBackend::start(Some(server_tls(&trusted, alpn)), http2).await;
        let extra = format!("{}{HEALTH}", tls_extra(&trusted, http2));
        let text = format!(
            "backends = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}]\n{extra}",
            backend.addr, good.addr
        );
        let config: UpstreamConfig = toml::from_str(&text).unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let heard = Arc::clone(&events);
        let hook: EventHook = Arc::new(move |e: &HealthEvent| {
            heard.lock().unwrap().push((e.backend, e.reason.clone()));
        });
        let up = Upstream::from_config_with_events("app", &config, hook).unwrap();
        up.first_round().await;
        wait_until_down(&up, backend.addr, true).await;
        wait_until_down(&up, good.addr, false).await;
        let events = events.lock().unwrap().clone();
        assert!(
            events
                .iter()
                .any(|(a, why)| *a == backend.addr && why.contains("TLS handshake failed")),
            "{events:?}"
        );
        assert!(backend.requests().is_empty(), "no request without TLS");
    }
}

/// A connector that reaches `to` whatever address it is asked for, and
/// counts its dials: a stand-in for a proxy's own transport (a tunnel, a
/// sidecar, a socket in another namespace).
struct Redirect {
    to: SocketAddr,
    dials: Arc<AtomicUsize>,
}

impl detour_server::Connect for Redirect {
    type Io = tokio::net::TcpStream;

    async fn connect(&self, _addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        self.dials.fetch_add(1, Ordering::SeqCst);
        tokio::net::TcpStream::connect(self.to).await
    }
}

#[tokio::test]
async fn checks_dial_through_the_proxy_s_connector() {
    let backend = CheckBackend::start(None, false).await;
    // The configured address has no listener: only the connector reaches
    // the backend.
    let nowhere = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    for kind in ["http", "tcp"] {
        let health = HEALTH.replace("kind = \"http\"", &format!("kind = \"{kind}\""));
        let up = upstream("app", &[nowhere], &health);
        let dials = Arc::new(AtomicUsize::new(0));
        let proxy = detour_server::HttpProxy::builder(support::Selecting {
            up: Arc::clone(&up),
        })
        .upstream(Arc::clone(&up))
        .connector(Redirect {
            to: backend.addr,
            dials: Arc::clone(&dials),
        })
        .build();
        up.first_round().await;
        wait_until_down(&up, nowhere, false).await;
        assert!(
            dials.load(Ordering::SeqCst) >= 1,
            "{kind}: dialled through it"
        );
        drop(proxy);
    }
    assert!(!backend.requests().is_empty(), "the HTTP check reached it");

    // Not registered with a proxy: plain TCP to the configured address.
    let up = upstream("app", &[nowhere], HEALTH);
    up.first_round().await;
    wait_until_down(&up, nowhere, true).await;
}
