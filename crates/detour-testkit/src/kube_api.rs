//! A stand-in for the Kubernetes API server's EndpointSlice endpoints, for
//! contract tests of a watcher (no API server can run in CI): [`FakeKubeApi`]
//! answers the list and watch calls in the API server's shapes —
//!
//! - `GET /apis/discovery.k8s.io/v1/namespaces/NS/endpointslices?labelSelector=…`:
//!   an `EndpointSliceList` with the slices whose labels match and the
//!   list's `resourceVersion`;
//! - the same with `watch=true&resourceVersion=N`: a chunked stream of JSON
//!   lines `{"type":"ADDED|MODIFIED|DELETED","object":…}` for every change
//!   after `N`; a `resourceVersion` older than the oldest event kept is
//!   answered, as the API server does, with an in-stream `ERROR` event
//!   carrying a `Status` with code 410 (Gone), which forces a re-list;
//! - [`expire_watches`](FakeKubeApi::expire_watches) sends that 410 to the
//!   open watches; [`set_down`](FakeKubeApi::set_down) closes the port and
//!   every connection (a dead API server: refused connections; a 503 would
//!   only meet kube-rs's retries).
//!
//! A watch ends after its `timeoutSeconds`, as on the API server. A
//! selector other than `kubernetes.io/service-name=NAME` is answered 400,
//! so a watcher that does not select by service fails the test.
//!
//! What it does not do: bookmarks (`allowWatchBookmarks` is ignored),
//! pagination (`limit`/`continue`: every list is one page), watching from
//! resource version `0` (answered 410, where the API server would replay
//! the state as `ADDED` events; kube-rs's list-then-watch never asks for
//! it), any other resource or verb.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// One EndpointSlice, built for a test.
#[derive(Debug, Clone)]
pub struct Slice {
    name: String,
    service: String,
    ports: Vec<(String, u16)>,
    endpoints: Vec<String>,
}

impl Slice {
    /// A slice `name` of `service`.
    pub fn new(name: impl Into<String>, service: impl Into<String>) -> Self {
        Slice {
            name: name.into(),
            service: service.into(),
            ports: Vec::new(),
            endpoints: Vec::new(),
        }
    }

    /// A port of it: `name` → `port`.
    pub fn port(mut self, name: impl Into<String>, port: u16) -> Self {
        self.ports.push((name.into(), port));
        self
    }

    /// An endpoint at `ip` with these conditions, in `zone`.
    pub fn endpoint(
        mut self,
        ip: &str,
        ready: bool,
        serving: bool,
        terminating: bool,
        zone: Option<&str>,
    ) -> Self {
        let zone = zone.map_or(String::new(), |z| format!(r#","zone":"{z}""#));
        self.endpoints.push(format!(
            r#"{{"addresses":["{ip}"],"conditions":{{"ready":{ready},"serving":{serving},"terminating":{terminating}}}{zone}}}"#
        ));
        self
    }

    fn json(&self, namespace: &str, version: u64) -> String {
        let ports: Vec<String> = self
            .ports
            .iter()
            .map(|(n, p)| format!(r#"{{"name":"{n}","port":{p},"protocol":"TCP"}}"#))
            .collect();
        let ports = format!(r#","ports":[{}]"#, ports.join(","));
        format!(
            r#"{{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{{"name":"{}","namespace":"{namespace}","resourceVersion":"{version}","labels":{{"kubernetes.io/service-name":"{}"}}}},"addressType":"IPv4","endpoints":[{}]{ports}}}"#,
            self.name,
            self.service,
            self.endpoints.join(",")
        )
    }
}

/// What the fake holds.
#[derive(Default)]
struct State {
    /// The resource version of the last change.
    version: u64,
    /// Slices by name, each with the version it was last changed at.
    slices: BTreeMap<String, (Slice, u64)>,
    /// Every change: (version, event type, slice JSON).
    log: Vec<(u64, &'static str, String)>,
    /// Versions before this one were "compacted": watching from them is a 410.
    oldest: u64,
    /// Open watches: an id, the service each selects, its stream.
    watches: Vec<(u64, String, mpsc::UnboundedSender<Bytes>)>,
    next_watch: u64,
    requests: usize,
    lists: usize,
    watch_calls: usize,
}

/// The fake API server (see the [module](self)); stops when dropped.
#[derive(Clone)]
pub struct FakeKubeApi {
    addr: SocketAddr,
    namespace: String,
    state: Arc<Mutex<State>>,
    tasks: Arc<Tasks>,
}

/// The accept loop and the connections' tasks, aborted when the server
/// goes down or is dropped.
#[derive(Default)]
struct Tasks(Mutex<Vec<tokio::task::AbortHandle>>);

impl Tasks {
    fn add(&self, task: tokio::task::AbortHandle) {
        let mut t = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        t.retain(|t| !t.is_finished());
        t.push(task);
    }

    fn abort_all(&self) {
        for t in self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            t.abort();
        }
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.abort_all();
    }
}

impl std::fmt::Debug for FakeKubeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeKubeApi")
            .field("addr", &self.addr)
            .finish()
    }
}

impl FakeKubeApi {
    /// Serve namespace `namespace` on a loopback port.
    ///
    /// # Errors
    /// The port cannot be bound.
    pub async fn start(namespace: &str) -> std::io::Result<FakeKubeApi> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let api = FakeKubeApi {
            addr: listener.local_addr()?,
            namespace: namespace.to_string(),
            state: Arc::new(Mutex::new(State {
                version: 100,
                oldest: 100,
                ..State::default()
            })),
            tasks: Arc::default(),
        };
        api.serve(listener);
        Ok(api)
    }

    /// Accept on `listener` until the server goes down.
    fn serve(&self, listener: TcpListener) {
        // Weakly: the server's handle owns the tasks, not the tasks themselves.
        let (ns, st, tasks) = (
            self.namespace.clone(),
            Arc::clone(&self.state),
            Arc::downgrade(&self.tasks),
        );
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (ns, st) = (ns.clone(), Arc::clone(&st));
                let conn = tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let answer = answer(&ns, &st, &req);
                        async move { Ok::<_, Infallible>(answer) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                match tasks.upgrade() {
                    Some(tasks) => tasks.add(conn.abort_handle()),
                    None => conn.abort(),
                }
            }
        });
        self.tasks.add(accept.abort_handle());
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig file's text that points at this server.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {}\n\
             current-context: fake\nusers:\n- name: fake\n  user:\n    token: test\n",
            self.url(),
            self.namespace
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Add or change `slice` (ADDED or MODIFIED to the watches).
    pub fn put(&self, slice: Slice) {
        let mut s = self.lock();
        s.version += 1;
        let v = s.version;
        let kind = if s.slices.contains_key(&slice.name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let json = slice.json(&self.namespace, v);
        s.slices.insert(slice.name.clone(), (slice.clone(), v));
        s.log.push((v, kind, json.clone()));
        notify(&mut s, &slice.service, kind, &json);
    }

    /// Delete the slice `name` (DELETED to the watches).
    pub fn delete(&self, name: &str) {
        let mut s = self.lock();
        let Some((slice, _)) = s.slices.remove(name) else {
            return;
        };
        s.version += 1;
        let v = s.version;
        let json = slice.json(&self.namespace, v);
        s.log.push((v, "DELETED", json.clone()));
        notify(&mut s, &slice.service, "DELETED", &json);
    }

    /// Forget the history so far (as the API server compacts it) and send
    /// the open watches an `ERROR` event with a 410 Status, closing them.
    pub fn expire_watches(&self) {
        let mut s = self.lock();
        s.oldest = s.version;
        let gone = r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version","reason":"Expired","code":410}}"#;
        for (_, _, tx) in s.watches.drain(..) {
            let _ = tx.send(Bytes::from(format!("{gone}\n")));
        }
    }

    /// Go down (`true`): close the port (connections are refused) and every
    /// open connection, watches included, as a dead API server does. Or
    /// serve again on the same port.
    ///
    /// # Panics
    /// When the port cannot be bound again.
    pub fn set_down(&self, down: bool) {
        if down {
            self.tasks.abort_all();
            self.lock().watches.clear();
        } else {
            let std = std::net::TcpListener::bind(self.addr).expect("bind the port again");
            std.set_nonblocking(true).expect("a non-blocking listener");
            self.serve(TcpListener::from_std(std).expect("a tokio listener"));
        }
    }

    /// How many calls came (while down too).
    pub fn requests(&self) -> usize {
        self.lock().requests
    }

    /// How many list calls came.
    pub fn lists(&self) -> usize {
        self.lock().lists
    }

    /// How many watches are open now.
    pub fn open_watches(&self) -> usize {
        self.lock().watches.len()
    }

    /// How many watch calls came.
    pub fn watch_calls(&self) -> usize {
        self.lock().watch_calls
    }
}

/// Send one event line to the open watches of `service`.
fn notify(s: &mut State, service: &str, kind: &str, json: &str) {
    let line = Bytes::from(format!(r#"{{"type":"{kind}","object":{json}}}"#) + "\n");
    s.watches
        .retain(|(_, svc, tx)| svc != service || tx.send(line.clone()).is_ok());
}

/// A body fed line by line from a channel: a watch's stream.
struct Lines(mpsc::UnboundedReceiver<Bytes>);

impl Body for Lines {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|line| line.map(|b| Ok(Frame::data(b))))
    }
}

/// The fake's answers are whole strings or watch streams.
type Answer = Response<http_body_util::Either<http_body_util::Full<Bytes>, Lines>>;

fn plain(status: StatusCode, body: String) -> Answer {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(http_body_util::Either::Left(http_body_util::Full::new(
            Bytes::from(body),
        )))
        .unwrap_or_else(|_| {
            Response::new(http_body_util::Either::Left(http_body_util::Full::default()))
        })
}

/// The value of `name` in the query `q` (percent-decoded for the few
/// characters a label selector uses).
fn param(q: &str, name: &str) -> Option<String> {
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| {
            v.replace("%2F", "/")
                .replace("%3D", "=")
                .replace("%2f", "/")
                .replace("%3d", "=")
        })
    })
}

fn answer(namespace: &str, state: &Arc<Mutex<State>>, req: &Request<Incoming>) -> Answer {
    let path = format!("/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices");
    if req.uri().path() != path {
        return plain(
            StatusCode::NOT_FOUND,
            format!(
                r#"{{"kind":"Status","code":404,"message":"no {}"}}"#,
                req.uri().path()
            ),
        );
    }
    let q = req.uri().query().unwrap_or("");
    let Some(service) = param(q, "labelSelector").and_then(|s| {
        s.strip_prefix("kubernetes.io/service-name=")
            .map(str::to_string)
    }) else {
        return plain(
            StatusCode::BAD_REQUEST,
            r#"{"kind":"Status","code":400,"message":"select by kubernetes.io/service-name"}"#
                .into(),
        );
    };
    let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
    s.requests += 1;
    if param(q, "watch").as_deref() != Some("true") {
        s.lists += 1;
        let items: Vec<String> = s
            .slices
            .values()
            .filter(|(sl, _)| sl.service == service)
            .map(|(sl, v)| sl.json(namespace, *v))
            .collect();
        let body = format!(
            r#"{{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSliceList","metadata":{{"resourceVersion":"{}"}},"items":[{}]}}"#,
            s.version,
            items.join(",")
        );
        return plain(StatusCode::OK, body);
    }
    s.watch_calls += 1;
    let from: u64 = param(q, "resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (tx, rx) = mpsc::unbounded_channel();
    if from < s.oldest {
        let gone = r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version","reason":"Expired","code":410}}"#;
        let _ = tx.send(Bytes::from(format!("{gone}\n")));
    } else {
        for (v, kind, json) in &s.log {
            if *v > from && json.contains(&format!(r#""kubernetes.io/service-name":"{service}""#)) {
                let _ = tx.send(Bytes::from(
                    format!(r#"{{"type":"{kind}","object":{json}}}"#) + "\n",
                ));
            }
        }
        s.next_watch += 1;
        let id = s.next_watch;
        s.watches.push((id, service, tx));
        // The API server ends a watch after its `timeoutSeconds`.
        if let Some(secs) = param(q, "timeoutSeconds").and_then(|t| t.parse::<u64>().ok()) {
            let state = Arc::clone(state);
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
                let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
                s.watches.retain(|(w, _, _)| *w != id);
            });
        }
    }
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(http_body_util::Either::Right(Lines(rx)))
        .unwrap_or_else(|_| {
            Response::new(http_body_util::Either::Left(http_body_util::Full::default()))
        })
}
