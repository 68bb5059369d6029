//! A small HTTP/2 backend written with the `h2` crate, for what hyper's
//! server will not do on demand: refuse streams, reset them after reading
//! the request, send GOAWAY mid-traffic, answer gRPC statuses in headers or
//! trailers. Cleartext (prior knowledge) or TLS with ALPN.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use h2::Reason;
use http::{HeaderMap, Response};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// How the backend answers each stream.
#[derive(Debug, Clone)]
pub enum Mode {
    /// 200 with body `h2 ok` (after reading the request body).
    Ok,
    /// Reset every stream with REFUSED_STREAM before reading anything.
    Refuse,
    /// Read the whole request, then reset the stream with this reason.
    ResetAfterBody(Reason),
    /// Answer normally, but the `n`-th request (1-based) of a connection
    /// sends GOAWAY (graceful) and is answered after `delay`.
    GoAwayAt { n: usize, delay: Duration },
    /// gRPC: `200`, `content-type: application/grpc`, and this status in the
    /// response headers (trailers-only).
    GrpcInHeaders(u32),
    /// gRPC: a message, then this status in the trailers.
    GrpcInTrailers(u32),
    /// gRPC: wait, then answer OK (status 0 in the trailers).
    GrpcSlow(Duration),
    /// Answer `200` after this long, unless the client resets the stream
    /// first (counted in [`H2Backend::resets`]).
    Slow(Duration),
}

/// One request as the backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub id: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Default)]
struct State {
    seen: Mutex<Vec<Seen>>,
    refused: AtomicUsize,
    connections: AtomicUsize,
    streams: AtomicUsize,
    resets: AtomicUsize,
}

pub struct H2Backend {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for H2Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl H2Backend {
    /// Cleartext HTTP/2 by prior knowledge.
    pub async fn start(mode: Mode) -> Self {
        Self::start_with(mode, None).await
    }

    /// With TLS (ALPN `h2`) when `tls` is given.
    pub async fn start_with(mode: Mode, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let st = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let st = Arc::clone(&st);
                let mode = mode.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(cfg) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                            if let Ok(s) = acceptor.accept(tcp).await {
                                serve(s, st, mode).await;
                            }
                        }
                        None => serve(tcp, st, mode).await,
                    }
                });
            }
        });
        H2Backend { addr, state, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests that reached the application (refused streams excluded).
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn count_for(&self, id: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.id.as_deref() == Some(id))
            .count()
    }

    pub fn refused(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }

    pub fn resets(&self) -> usize {
        self.state.resets.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }
}

async fn serve<I>(io: I, st: Arc<State>, mode: Mode)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Ok(mut conn) = h2::server::handshake(io).await else {
        return;
    };
    let go_away = Arc::new(Notify::new());
    let mut n = 0usize;
    let mut shutting = false;
    loop {
        let next = tokio::select! {
            r = conn.accept() => r,
            _ = go_away.notified(), if !shutting => {
                shutting = true;
                conn.graceful_shutdown();
                continue;
            }
        };
        let Some(Ok((req, respond))) = next else {
            break;
        };
        n += 1;
        st.streams.fetch_add(1, Ordering::SeqCst);
        let st = Arc::clone(&st);
        let mode = mode.clone();
        let go_away = Arc::clone(&go_away);
        tokio::spawn(handle(req, respond, st, mode, n, go_away));
    }
}

async fn handle(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    st: Arc<State>,
    mode: Mode,
    n: usize,
    go_away: Arc<Notify>,
) {
    if let Mode::Refuse = mode {
        st.refused.fetch_add(1, Ordering::SeqCst);
        respond.send_reset(Reason::REFUSED_STREAM);
        return;
    }
    let (parts, mut body) = req.into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else { return };
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    st.seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        id: parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        headers: parts.headers.clone(),
        body: Bytes::from(data),
    });
    let grpc = |status: u32| {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", status.to_string().parse().unwrap());
        h.insert("grpc-message", "from the backend".parse().unwrap());
        h
    };
    match mode {
        Mode::Refuse => {}
        Mode::ResetAfterBody(reason) => respond.send_reset(reason),
        Mode::Ok | Mode::GoAwayAt { .. } => {
            if let Mode::GoAwayAt { n: at, delay } = mode {
                if n == at {
                    go_away.notify_one();
                    tokio::time::sleep(delay).await;
                }
            }
            let resp = Response::builder().status(200).body(()).unwrap();
            if let Ok(mut s) = respond.send_response(resp, false) {
                let _ = s.send_data(Bytes::from_static(b"h2 ok"), true);
            }
        }
        Mode::GrpcInHeaders(status) => {
            let mut resp = Response::builder()
                .status(200)
                .header("content-type", "application/grpc")
                .body(())
                .unwrap();
            resp.headers_mut().extend(grpc(status));
            let _ = respond.send_response(resp, true);
        }
        Mode::Slow(delay) => {
            let reset = std::future::poll_fn(|cx| respond.poll_reset(cx));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {
                    let resp = Response::builder().status(200).body(()).unwrap();
                    let _ = respond.send_response(resp, true);
                }
                _ = reset => {
                    st.resets.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        Mode::GrpcSlow(delay) => {
            tokio::time::sleep(delay).await;
            let resp = Response::builder()
                .status(200)
                .header("content-type", "application/grpc")
                .body(())
                .unwrap();
            if let Ok(mut s) = respond.send_response(resp, false) {
                let _ = s.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), false);
                let _ = s.send_trailers(grpc(0));
            }
        }
        Mode::GrpcInTrailers(status) => {
            let resp = Response::builder()
                .status(200)
                .header("content-type", "application/grpc")
                .body(())
                .unwrap();
            if let Ok(mut s) = respond.send_response(resp, false) {
                // One empty, uncompressed gRPC message.
                let _ = s.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), false);
                let _ = s.send_trailers(grpc(status));
            }
        }
    }
}
