//! What the hooks see and answer, through real sockets: `fail_to_proxy_response`
//! makes the whole error response (a JSON page), and `logging` reads the
//! status the client got and the body bytes sent.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use detour_core::{Error, HttpPeer, ProxyHttp, Result, Session};
use detour_server::{HttpProxy, Server, ServerHandle};
use detour_testkit::{Behavior, Upstream as Backend};
use http::{Response, StatusCode};
use support::{config, get, send, shut};

/// What `logging` saw of one request: status, body bytes sent, error type.
type Seen = (Option<u16>, u64, Option<&'static str>);

/// One backend; errors answered as JSON; every request's end written down.
struct JsonErrors {
    backend: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl ProxyHttp for JsonErrors {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _s: &mut Session, _: &mut ()) -> Result<HttpPeer> {
        Ok(HttpPeer::new(self.backend, "app"))
    }

    fn fail_to_proxy_response(
        &self,
        _session: &mut Session,
        err: &Error,
        status: StatusCode,
        _ctx: &mut (),
    ) -> Option<Response<Bytes>> {
        let body = format!(
            "{{\"status\":{},\"error\":\"{}\"}}",
            status.as_u16(),
            err.proxy_status_type()
        );
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Bytes::from(body))
            .ok()
    }

    fn logging(&self, session: &mut Session, err: Option<&Error>, _ctx: &mut ()) {
        let status = session.response_status().map(|s| s.as_u16());
        let error = err.map(Error::proxy_status_type);
        self.seen
            .lock()
            .unwrap()
            .push((status, session.body_bytes_sent(), error));
    }
}

fn serve(backend: SocketAddr) -> (ServerHandle, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = JsonErrors {
        backend,
        seen: Arc::clone(&seen),
    };
    let proxy = HttpProxy::builder(app).config(config()).build();
    (Server::new(config()).start(proxy).unwrap(), seen)
}

/// The `n`-th request's end as `logging` saw it, waiting (5 s at most) for
/// it: a streamed body's end is logged just after its last bytes went out.
async fn logged(seen: &Mutex<Vec<Seen>>, n: usize) -> Seen {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(s) = seen.lock().unwrap().get(n) {
            return *s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "request {n} never logged"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_to_proxy_answers_with_a_whole_json_response() {
    let backend = Backend::start(Behavior::refuse()).await.unwrap();
    let (h, seen) = serve(backend.addr());
    let r = send(h.addr(), &get("/x", "json-1")).await.unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r#"{"status":502,"error":"connection_refused"}"#;
    assert_eq!(String::from_utf8_lossy(&r.body), body);
    // What the engine adds to every error response is still there.
    let proxy_status = r.header("proxy-status").unwrap();
    assert!(
        proxy_status.contains("error=connection_refused"),
        "{proxy_status}"
    );
    assert_eq!(r.header("x-request-id"), Some("json-1"));
    let expected = (Some(502), body.len() as u64, Some("connection_refused"));
    assert_eq!(logged(&seen, 0).await, expected);
    shut(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_reads_the_status_and_the_bytes_sent() {
    let backend = Backend::start(Behavior::large(100_000)).await.unwrap();
    let (h, seen) = serve(backend.addr());
    let r = send(h.addr(), &get("/big", "big-1")).await.unwrap();
    assert_eq!((r.status, r.body.len()), (200, 100_000));
    assert_eq!(logged(&seen, 0).await, (Some(200), 100_000, None));

    backend.set_behavior(Behavior::status(404).with_body("not here"));
    let r = send(h.addr(), &get("/gone", "gone-1")).await.unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(logged(&seen, 1).await, (Some(404), 8, None));
    shut(h).await;
}
