//! What the engine promises hooks, through real sockets: `logging` runs
//! exactly once however a request ends, the attempt history is readable from
//! the session, hooks cannot take the engine's key, and an attempt's outcome
//! is charged to the address it went to.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use detour_core::{
    Backend, CommitPoint, Decision, Error, ErrorKind, HttpPeer, Outcome, ProxyHttp, Result, Session,
};
use detour_server::{HttpProxy, Server, ServerHandle, Stop};
use detour_testkit::{Behavior, Upstream as TestBackend};
use support::{config, get, send, shut};
use tokio::io::AsyncWriteExt;

/// What `logging` saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    error: Option<ErrorKind>,
    /// Each attempt: peer, outcome, decision.
    attempts: Vec<(SocketAddr, Option<Outcome>, Option<Decision>)>,
    history: String,
}

/// Tries `backends` in order; writes down every `logging` call and whether
/// a hook could take the engine's key.
struct Recording {
    backends: Vec<SocketAddr>,
    /// When set, the peer's address is this instead of its backend's.
    redirect: Option<SocketAddr>,
    backend_objects: Vec<Arc<Backend>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    key_taken_by_hook: Arc<Mutex<bool>>,
}

impl Recording {
    fn new(backends: Vec<SocketAddr>) -> Self {
        Recording {
            backend_objects: backends
                .iter()
                .map(|a| Arc::new(Backend::new(*a)))
                .collect(),
            backends,
            redirect: None,
            seen: Arc::default(),
            key_taken_by_hook: Arc::default(),
        }
    }
}

impl ProxyHttp for Recording {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, s: &mut Session, _: &mut ()) -> Result<HttpPeer> {
        if s.engine_key().is_some() {
            *self.key_taken_by_hook.lock().unwrap() = true;
        }
        let i = (s.attempt() as usize).min(self.backends.len() - 1);
        let b = Arc::clone(&self.backend_objects[i]);
        let mut peer = HttpPeer::for_backend(b, "app");
        if let Some(to) = self.redirect {
            peer.addr = to;
        }
        Ok(peer)
    }

    fn logging(&self, session: &mut Session, err: Option<&Error>, _ctx: &mut ()) {
        let attempts = session
            .attempts()
            .iter()
            .map(|a| (a.peer, a.outcome, a.decision))
            .collect();
        self.seen.lock().unwrap().push(Seen {
            error: err.map(Error::kind),
            attempts,
            history: session.planner().to_string(),
        });
    }
}

fn serve(app: Recording, grace: Duration) -> ServerHandle {
    let mut c = config();
    c.grace_period = grace;
    let proxy = HttpProxy::builder(app).config(c.clone()).build();
    Server::new(c).start(proxy).unwrap()
}

/// Every `logging` call so far, once `n` arrived (5 s at most), and after a
/// further 200 ms in which no other may come.
async fn logged(seen: &Mutex<Vec<Seen>>, n: usize) -> Vec<Seen> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while seen.lock().unwrap().len() < n {
        assert!(tokio::time::Instant::now() < deadline, "logging never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    seen.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_runs_once_when_the_client_leaves_before_the_response_head() {
    let hang = TestBackend::start(Behavior::hang()).await.unwrap();
    let app = Recording::new(vec![hang.addr()]);
    let seen = Arc::clone(&app.seen);
    let h = serve(app, Duration::from_secs(5));
    let mut c = tokio::net::TcpStream::connect(h.addr()).await.unwrap();
    c.write_all(get("/slow", "gone-1").as_bytes())
        .await
        .unwrap();
    // Wait until the attempt is in flight, then leave.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(c);
    let all = logged(&seen, 1).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].error, Some(ErrorKind::DownstreamClosed), "{all:?}");
    assert_eq!(all[0].attempts.len(), 1);
    assert_eq!(
        all[0].attempts[0].1,
        Some(Outcome::Cancelled),
        "the attempt in flight was cancelled, charged to no one"
    );
    shut(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_runs_once_when_a_drain_is_cut_short() {
    let hang = TestBackend::start(Behavior::hang()).await.unwrap();
    let app = Recording::new(vec![hang.addr()]);
    let seen = Arc::clone(&app.seen);
    let h = serve(app, Duration::from_millis(300));
    let addr = h.addr();
    let client = tokio::spawn(async move { send(addr, &get("/slow", "drain-1")).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.stop(Stop::Graceful);
    let all = logged(&seen, 1).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].error, Some(ErrorKind::DownstreamClosed));
    let _ = client.await;
    tokio::task::spawn_blocking(move || h.join()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_is_in_the_session_and_hooks_cannot_take_the_key() {
    let refused = TestBackend::start(Behavior::refuse()).await.unwrap();
    let ok = TestBackend::start(Behavior::ok()).await.unwrap();
    let app = Recording::new(vec![refused.addr(), ok.addr()]);
    let (seen, key) = (Arc::clone(&app.seen), Arc::clone(&app.key_taken_by_hook));
    let h = serve(app, Duration::from_secs(1));
    let r = send(h.addr(), &get("/", "hist-1")).await.unwrap();
    assert_eq!(r.status, 200);
    let all = logged(&seen, 1).await;
    assert_eq!(all.len(), 1);
    let refused_outcome = Outcome::Failed {
        kind: ErrorKind::ConnectRefused,
        commit: CommitPoint::NotConnected,
    };
    assert_eq!(
        all[0].attempts,
        vec![
            (refused.addr(), Some(refused_outcome), Some(Decision::Retry)),
            (
                ok.addr(),
                Some(Outcome::Answered(200)),
                Some(Decision::Deliver)
            ),
        ]
    );
    let line = &all[0].history;
    // Each attempt: where, why, what happened, how long, what was decided.
    assert!(
        line.contains("first connection_refused@not_connected ")
            && line.contains("ms retried wait="),
        "{line}"
    );
    assert!(
        line.contains("failover 200 ") && line.ends_with("ms"),
        "{line}"
    );
    assert!(!*key.lock().unwrap(), "a hook got the engine's key");
    shut(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_a_hook_sent_elsewhere_is_not_charged_to_the_backend() {
    let ok = TestBackend::start(Behavior::ok()).await.unwrap();
    let refused = TestBackend::start(Behavior::refuse()).await.unwrap();
    // The peer names `ok`'s backend, but the hook points it at `refused`.
    let mut app = Recording::new(vec![ok.addr()]);
    app.redirect = Some(refused.addr());
    let backend = Arc::clone(&app.backend_objects[0]);
    let seen = Arc::clone(&app.seen);
    let h = serve(app, Duration::from_secs(1));
    let r = send(h.addr(), &get("/", "elsewhere-1")).await.unwrap();
    assert_eq!(r.status, 502);
    let all = logged(&seen, 1).await;
    assert!(
        all[0].attempts.iter().all(|a| a.0 == refused.addr()),
        "the history names where the attempts went: {all:?}"
    );
    assert_eq!(
        backend.state().history().recent(),
        (0, 0),
        "ok's backend was charged for attempts that went elsewhere"
    );
    shut(h).await;
}
