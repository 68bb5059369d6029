//! Backoff, deadlines and Retry-After under tokio's paused clock, over the
//! in-memory connector (never real sockets: see STYLE.md).
#![allow(clippy::unwrap_used)] // tests may unwrap

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use detour_core::{Error, ErrorKind, HttpPeer, ProxyHttp, Result, RetryPolicy, Session};
use detour_server::HttpProxy;
use detour_testkit::memory::{MemBehavior, MemoryConnector, MemoryNet};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;

/// Tries each backend once in order, then goes back to the first.
struct InOrder(Vec<SocketAddr>);

impl ProxyHttp for InOrder {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, s: &mut Session, _: &mut ()) -> Result<HttpPeer> {
        let addr = self
            .0
            .iter()
            .find(|a| !s.was_tried(**a))
            .or(self.0.first())
            .copied()
            .ok_or_else(|| Error::internal(ErrorKind::NoPeer))?;
        Ok(HttpPeer::new(addr, "app"))
    }
}

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n], 80))
}

fn proxy(
    net: &MemoryNet,
    backends: Vec<SocketAddr>,
    policy: RetryPolicy,
) -> HttpProxy<InOrder, MemoryConnector> {
    let mut config = support::base_config();
    config.retry = policy.validate().unwrap();
    HttpProxy::builder(InOrder(backends))
        .config(config)
        .connector(net.connector())
        .build()
}

fn no_jitter() -> RetryPolicy {
    let mut p = RetryPolicy::default();
    p.jitter = 0.0;
    p
}

async fn get(p: &HttpProxy<InOrder, MemoryConnector>) -> (u16, http::HeaderMap, String) {
    // An HTTP/1.1 request carries Host, absolute-form target or not.
    let req = http::Request::get("http://example/x")
        .header("host", "example")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = p.handle(req, None).await;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn offsets(net: &MemoryNet, a: SocketAddr, t0: Instant) -> Vec<u128> {
    net.log(a)
        .iter()
        .map(|r| r.at.duration_since(t0).as_millis())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_when_retrying_the_same_backend() {
    let net = MemoryNet::new();
    net.set(addr(1), MemBehavior::sequence([503, 503, 503, 200]));
    let p = proxy(&net, vec![addr(1)], no_jitter());
    let t0 = Instant::now();
    let (status, _, _) = get(&p).await;
    assert_eq!(status, 200);
    // base 100 ms, multiplier 2: waits of 100, 200 and 400 ms.
    assert_eq!(offsets(&net, addr(1), t0), vec![0, 100, 300, 700]);
}

#[tokio::test(start_paused = true)]
async fn failover_to_a_different_backend_is_immediate() {
    let net = MemoryNet::new();
    net.set(addr(1), MemBehavior::status(503));
    net.set(addr(2), MemBehavior::status(503));
    net.set(addr(3), MemBehavior::status(200));
    let p = proxy(&net, vec![addr(1), addr(2), addr(3)], no_jitter());
    let t0 = Instant::now();
    let (status, headers, _) = get(&p).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-upstream"], addr(3).to_string());
    assert_eq!(offsets(&net, addr(1), t0), vec![0]);
    assert_eq!(offsets(&net, addr(2), t0), vec![0]);
    assert_eq!(offsets(&net, addr(3), t0), vec![0]);
}

#[tokio::test(start_paused = true)]
async fn refused_connections_fail_over_without_waiting() {
    let net = MemoryNet::new();
    net.set(addr(1), MemBehavior::Refuse);
    net.set(addr(2), MemBehavior::status(200));
    let p = proxy(&net, vec![addr(1), addr(2)], no_jitter());
    let t0 = Instant::now();
    assert_eq!(get(&p).await.0, 200);
    assert_eq!(offsets(&net, addr(2), t0), vec![0]);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_bounds_every_attempt_and_every_wait() {
    let net = MemoryNet::new();
    net.set(addr(1), MemBehavior::Hang);
    let mut policy = no_jitter();
    policy.per_try_timeout = Some(Duration::from_secs(1));
    policy.deadline = Some(Duration::from_millis(2500));
    let p = proxy(&net, vec![addr(1)], policy);
    let t0 = Instant::now();
    let (status, headers, _) = get(&p).await;
    let took = t0.elapsed();
    assert_eq!(status, 504);
    assert!(headers["proxy-status"]
        .to_str()
        .unwrap()
        .contains("error=connection_timeout"));
    // Attempts at 0, 1.1 s (1 s try + 100 ms backoff) and 2.3 s (+200 ms);
    // the third is cut by the deadline at 2.5 s.
    assert_eq!(offsets(&net, addr(1), t0), vec![0, 1100, 2300]);
    assert_eq!(took, Duration::from_millis(2500));
}

#[tokio::test(start_paused = true)]
async fn per_try_timeout_alone_maps_to_504_after_all_retries() {
    let net = MemoryNet::new();
    net.set(addr(1), MemBehavior::slow(200, Duration::from_secs(10)));
    net.set(addr(2), MemBehavior::slow(200, Duration::from_secs(10)));
    let mut policy = no_jitter();
    policy.per_try_timeout = Some(Duration::from_millis(300));
    policy.max_retries = 1;
    let p = proxy(&net, vec![addr(1), addr(2)], policy);
    let t0 = Instant::now();
    let (status, headers, _) = get(&p).await;
    assert_eq!(status, 504);
    assert!(headers["proxy-status"]
        .to_str()
        .unwrap()
        .contains("connection_read_timeout"));
    assert_eq!(t0.elapsed(), Duration::from_millis(600));
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_toward_the_same_backend() {
    let net = MemoryNet::new();
    net.set(
        addr(1),
        MemBehavior::sequence([503, 200]).with_header("retry-after", "2"),
    );
    let p = proxy(&net, vec![addr(1)], no_jitter());
    let t0 = Instant::now();
    assert_eq!(get(&p).await.0, 200);
    assert_eq!(offsets(&net, addr(1), t0), vec![0, 2000]);
}

#[tokio::test(start_paused = true)]
async fn retry_after_past_the_deadline_passes_the_upstream_answer_on() {
    let net = MemoryNet::new();
    net.set(
        addr(1),
        MemBehavior::status(503).with_header("retry-after", "60"),
    );
    let mut policy = no_jitter();
    policy.deadline = Some(Duration::from_secs(5));
    let p = proxy(&net, vec![addr(1)], policy);
    let t0 = Instant::now();
    let (status, headers, body) = get(&p).await;
    assert_eq!(status, 503);
    assert_eq!(headers["retry-after"], "60");
    assert!(body.contains("503 from"), "the upstream's own body: {body}");
    // Not retried because of a limit of its own (Retry-After beyond
    // max_delay): retrying was this proxy's job, done (`retried=0`).
    assert_eq!(
        headers["proxy-status"],
        "detour; received-status=503; next-hop=\"app\"; retried=0"
    );
    assert_eq!(net.requests(addr(1)), 1);
    assert_eq!(t0.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn jittered_backoff_stays_within_its_bounds() {
    let net = MemoryNet::new();
    net.set(addr(1), MemBehavior::sequence([503, 503, 200]));
    let p = proxy(&net, vec![addr(1)], RetryPolicy::default());
    let t0 = Instant::now();
    assert_eq!(get(&p).await.0, 200);
    let at = offsets(&net, addr(1), t0);
    assert_eq!(at.len(), 3);
    // jitter 0.5: the first wait is in [50, 100] ms, the second in [100, 200].
    assert!((50..=100).contains(&at[1]), "{at:?}");
    assert!((100..=200).contains(&(at[2] - at[1])), "{at:?}");
}

/// `/slow…` to the second backend, anything else to the first; the
/// digits after the letters are the read timeout in seconds.
struct ByPath;

impl ProxyHttp for ByPath {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, s: &mut Session, _: &mut ()) -> Result<HttpPeer> {
        let path = s.req().uri.path();
        let n = if path.starts_with("/slow") { 2 } else { 1 };
        let secs: u64 = path
            .trim_start_matches(|c: char| c.is_alphabetic() || c == '/')
            .parse()
            .unwrap();
        let mut peer = HttpPeer::new(addr(n), "app");
        peer.options.read_timeout = Duration::from_secs(secs);
        Ok(peer)
    }
}

/// One client connection's requests take turns with one attempt timer
/// (moved on for each, not made anew): each attempt that hangs is still cut
/// at exactly its own read timeout, whether the timer was last set for a
/// later deadline, an earlier one that has not come, or one that has passed.
#[tokio::test(start_paused = true)]
async fn requests_on_one_client_connection_are_each_timed_from_their_own_start() {
    let net = MemoryNet::new();
    net.set(addr(1), MemBehavior::status(200));
    net.set(addr(2), MemBehavior::Hang);
    let mut config = support::base_config();
    let mut policy = no_jitter();
    policy.max_retries = 0;
    config.retry = policy.validate().unwrap();
    let p = HttpProxy::builder(ByPath)
        .config(config)
        .connector(net.connector())
        .build();
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let (_drain_tx, drain) = tokio::sync::watch::channel(false);
    let client = Some(SocketAddr::from(([192, 0, 2, 1], 5000)));
    tokio::spawn(async move { p.serve_connection(server_io, client, drain).await });
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(client_io))
            .await
            .unwrap();
    tokio::spawn(conn);

    // Each step: the path, the wait before it, its status and how long it took.
    let steps = [
        ("/fast10", 0, 200, 0),
        // The timer still waits for 10 s after the last request: moved to
        // an earlier deadline.
        ("/slow1", 0, 504, 1000),
        // Fired: registered again, for 10 s; then moved earlier, to 3 s.
        ("/fast10", 0, 200, 0),
        ("/slow3", 0, 504, 3000),
        // Fired: registered again, for 1 s after this request...
        ("/fast1", 0, 200, 0),
        // ...and moved later by this one, 300 ms on, to 2 s after it.
        ("/slow2", 300, 504, 2000),
        // Well past the last deadline: the timer fired, and is set again.
        ("/slow1", 5000, 504, 1000),
        ("/fast10", 0, 200, 0),
    ];
    for (path, wait, want, took_ms) in steps {
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let req = http::Request::get(path)
            .header("host", "example")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let t0 = Instant::now();
        let resp = tokio::time::timeout(Duration::from_secs(30), send.send_request(req))
            .await
            .expect("answered before the test's own limit")
            .unwrap();
        let status = resp.status().as_u16();
        resp.into_body().collect().await.unwrap();
        assert_eq!((path, status), (path, want));
        assert_eq!(
            t0.elapsed(),
            Duration::from_millis(took_ms),
            "{path} after {wait} ms"
        );
    }
}
