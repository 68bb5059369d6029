//! gRPC through the proxy over HTTP/2: trailers pass through, `grpc-status`
//! UNAVAILABLE in headers is retried for a safe-declared method, in trailers
//! it is passed on but counted as a failure (and opens the breaker), a
//! `grpc-timeout` shortens the deadline, and Detour's own failures are gRPC
//! answers.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use detour_core::Observer;
use detour_server::upstream::Upstream;
use detour_server::{AppProtocol, HttpProxy, ListenerConfig, Server, ServerHandle};
use http_body_util::Full;
use support::h2backend::{H2Backend, Mode};
use support::tls::{Answer, H2Client};
use support::{Recorder, Selecting};
use tokio::time::Instant;

fn upstream(backends: &[SocketAddr], extra: &str) -> Arc<Upstream> {
    support::upstream("grpc", backends, &format!("http2 = true\n{extra}"))
}

fn serve(up: &Arc<Upstream>, recorder: &Arc<Recorder>) -> ServerHandle {
    let mut cfg = support::base_config();
    cfg.listen = Vec::new();
    cfg.listeners = vec![
        ListenerConfig::new("127.0.0.1:0".parse().unwrap()).with_protocols(&[AppProtocol::H2])
    ];
    let cfg = cfg.validate().unwrap();
    let proxy = HttpProxy::builder(Selecting { up: Arc::clone(up) })
        .config(cfg.clone())
        .observer(Arc::clone(recorder) as Arc<dyn Observer>)
        .build();
    Server::new(cfg).start(proxy).unwrap()
}

async fn call(addr: SocketAddr, id: &str, timeout: Option<&str>) -> Answer {
    let (mut c, _t) = H2Client::h2c(addr).await;
    let mut b = c
        .request("POST", "/pkg.Greeter/SayHello")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-request-id", id);
    if let Some(t) = timeout {
        b = b.header("grpc-timeout", t);
    }
    let req = b
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .unwrap();
    c.send(req).await.unwrap()
}

fn grpc_status(a: &Answer) -> Option<String> {
    a.headers
        .get("grpc-status")
        .or_else(|| a.trailers.as_ref().and_then(|t| t.get("grpc-status")))
        .map(|v| v.to_str().unwrap().to_string())
}

#[tokio::test]
async fn unavailable_in_headers_is_retried_for_a_method_declared_safe() {
    let down = H2Backend::start(Mode::GrpcInHeaders(14)).await;
    let good = H2Backend::start(Mode::GrpcInTrailers(0)).await;
    let up = upstream(
        &[down.addr(), good.addr()],
        "[retry]\nsafe_methods = [\"POST\"]",
    );
    let rec = Arc::new(Recorder::default());
    let h = serve(&up, &rec);
    for i in 0..4 {
        let id = format!("c{i}");
        let a = call(h.addr(), &id, None).await;
        assert_eq!(a.status, 200);
        // Trailers passed through, with the backend's own status.
        let t = a.trailers.as_ref().unwrap_or_else(|| panic!("{a:?}"));
        assert_eq!(t["grpc-status"], "0", "{id}");
        assert_eq!(t["grpc-message"], "from the backend");
        assert_eq!(good.count_for(&id), 1, "{id}");
    }
    assert!(!down.seen().is_empty(), "round robin tried the failing one");
    // gRPC servers want `te: trailers`: it went through.
    assert_eq!(good.seen()[0].headers["te"], "trailers");
    // UNAVAILABLE counted as the backend's failure (as a 503).
    let failures: Vec<_> = rec.0.lock().unwrap().clone();
    assert!(failures
        .iter()
        .any(|(a, failed, s)| *a == down.addr() && *failed && *s == Some(503)));
}

#[tokio::test]
async fn unavailable_in_headers_is_passed_on_when_the_method_is_not_safe() {
    let down = H2Backend::start(Mode::GrpcInHeaders(14)).await;
    let good = H2Backend::start(Mode::GrpcInTrailers(0)).await;
    let up = upstream(&[down.addr(), good.addr()], "");
    let rec = Arc::new(Recorder::default());
    let h = serve(&up, &rec);
    let mut passed_on = 0;
    for i in 0..4 {
        let id = format!("n{i}");
        let a = call(h.addr(), &id, None).await;
        assert_eq!(a.status, 200);
        assert_eq!(down.count_for(&id) + good.count_for(&id), 1, "{id}");
        if down.count_for(&id) == 1 {
            assert_eq!(grpc_status(&a).as_deref(), Some("14"));
            passed_on += 1;
        }
    }
    assert!(passed_on >= 1);
}

#[tokio::test]
async fn unavailable_in_trailers_is_not_retried_but_counts_and_opens_the_breaker() {
    let down = H2Backend::start(Mode::GrpcInTrailers(14)).await;
    let up = upstream(
        &[down.addr()],
        // One backend: let passive removal take all of it (no panic mode,
        // no removal cap) so the breaker can open.
        "panic_threshold = 0\n[outlier]\nmax_ejection_percent = 100\n[retry]\nsafe_methods = [\"POST\"]",
    );
    let rec = Arc::new(Recorder::default());
    let h = serve(&up, &rec);
    for i in 0..5 {
        let id = format!("t{i}");
        let a = call(h.addr(), &id, None).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.trailers.as_ref().unwrap()["grpc-status"], "14");
        assert_eq!(down.count_for(&id), 1, "never retried");
    }
    {
        let seen = rec.0.lock().unwrap();
        assert_eq!(
            seen.len(),
            5,
            "one report per call, at the trailers: {seen:?}"
        );
        assert!(seen.iter().all(|(_, failed, s)| *failed && *s == Some(503)));
    }
    // Five failures opened the backend's breaker: Detour answers itself, in
    // gRPC, without asking the backend.
    let a = call(h.addr(), "after", None).await;
    let breaker = &up.breakers().unwrap().snapshot()[0];
    assert_eq!(breaker.trips, 1, "{breaker:?}");
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["content-type"], "application/grpc");
    assert_eq!(grpc_status(&a).as_deref(), Some("14"));
    assert!(a.headers["grpc-message"]
        .to_str()
        .unwrap()
        .starts_with("detour"));
    assert!(a.body.is_empty());
    assert_eq!(down.count_for("after"), 0);
}

#[tokio::test]
async fn grpc_timeout_shortens_the_deadline_and_answers_deadline_exceeded() {
    let slow = H2Backend::start(Mode::GrpcSlow(Duration::from_secs(3))).await;
    let up = upstream(&[slow.addr()], "");
    let rec = Arc::new(Recorder::default());
    let h = serve(&up, &rec);
    let started = Instant::now();
    let a = call(h.addr(), "slow", Some("200m")).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(took >= Duration::from_millis(190), "{took:?}");
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["content-type"], "application/grpc");
    assert_eq!(grpc_status(&a).as_deref(), Some("4"));
}

#[tokio::test]
async fn a_local_failure_is_a_grpc_unavailable_not_a_page() {
    // Nothing listens there.
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let up = upstream(&[gone], "");
    let rec = Arc::new(Recorder::default());
    let h = serve(&up, &rec);
    let a = call(h.addr(), "x", None).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["content-type"], "application/grpc");
    assert_eq!(grpc_status(&a).as_deref(), Some("14"));
    assert!(a.headers.contains_key("proxy-status"));
    assert!(a.body.is_empty());
}
