//! An in-memory network for driving the engine under tokio's paused clock.
//!
//! Real sockets and a paused clock do not mix (tokio jumps time forward while a
//! loopback peer has not answered yet), so engine tests of backoff and deadlines
//! plug [`MemoryConnector`] into the proxy instead of TCP. Each address of a
//! [`MemoryNet`] is a backend with a [`MemBehavior`]; connections are
//! `tokio::io::duplex` pipes served by hyper, and every delay is a
//! `tokio::time::sleep`, so the paused clock controls it exactly.
//!
//! ```
//! use detour_testkit::memory::{MemBehavior, MemoryNet};
//!
//! let net = MemoryNet::new();
//! let addr = "10.0.0.1:80".parse().unwrap();
//! net.set(addr, MemBehavior::status(200));
//! assert_eq!(net.requests(addr), 0);
//! ```

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use detour_core::connect::Connect;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::DuplexStream;
use tokio::time::Instant;

/// What an in-memory backend does.
#[derive(Debug, Clone)]
pub enum MemBehavior {
    /// Connections are refused.
    Refuse,
    /// Connecting never completes.
    ConnectHang,
    /// Answer each request with the next status of the list (the last repeats),
    /// after `delay`, with these extra headers.
    Statuses {
        /// Statuses in order.
        statuses: Vec<u16>,
        /// Wait before answering.
        delay: Duration,
        /// Extra response headers.
        headers: Vec<(String, String)>,
    },
    /// Read the request, never answer.
    Hang,
    /// Read the request, then drop the connection without answering.
    CloseAfterRequest,
}

impl MemBehavior {
    /// Always answer `status` at once.
    pub fn status(status: u16) -> Self {
        MemBehavior::Statuses {
            statuses: vec![status],
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }

    /// Answer these statuses in order (the last repeats).
    pub fn sequence(statuses: impl Into<Vec<u16>>) -> Self {
        MemBehavior::Statuses {
            statuses: statuses.into(),
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }

    /// Answer `status` after `delay`.
    pub fn slow(status: u16, delay: Duration) -> Self {
        MemBehavior::Statuses {
            statuses: vec![status],
            delay,
            headers: Vec::new(),
        }
    }

    /// Add a response header (for `Statuses`).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        if let MemBehavior::Statuses { headers, .. } = &mut self {
            headers.push((name.to_string(), value.to_string()));
        }
        self
    }
}

/// One request an in-memory backend read.
#[derive(Debug, Clone)]
pub struct MemRequest {
    /// When the request head arrived (tokio time: exact under a paused clock).
    pub at: Instant,
    /// The method.
    pub method: String,
    /// The path and query.
    pub path: String,
    /// The `x-request-id` header, if any.
    pub request_id: Option<String>,
    /// The `Host` header, if any.
    pub host: Option<String>,
    /// The body's length.
    pub body_len: usize,
}

#[derive(Default)]
struct Backend {
    behavior: Option<MemBehavior>,
    served: usize,
    log: Vec<MemRequest>,
}

/// A set of in-memory backends keyed by address. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct MemoryNet {
    backends: Arc<Mutex<HashMap<SocketAddr, Backend>>>,
}

impl std::fmt::Debug for MemoryNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryNet").finish_non_exhaustive()
    }
}

impl MemoryNet {
    /// An empty network: every address refuses.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Backend>> {
        self.backends.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Set (or change) the behaviour of the backend at `addr`.
    pub fn set(&self, addr: SocketAddr, behavior: MemBehavior) {
        self.lock().entry(addr).or_default().behavior = Some(behavior);
    }

    /// Requests the backend at `addr` read so far.
    pub fn requests(&self, addr: SocketAddr) -> usize {
        self.lock().get(&addr).map_or(0, |b| b.log.len())
    }

    /// The requests the backend at `addr` read, oldest first.
    pub fn log(&self, addr: SocketAddr) -> Vec<MemRequest> {
        self.lock()
            .get(&addr)
            .map_or_else(Vec::new, |b| b.log.clone())
    }

    /// A connector for the proxy under test.
    pub fn connector(&self) -> MemoryConnector {
        MemoryConnector { net: self.clone() }
    }

    fn behavior(&self, addr: SocketAddr) -> MemBehavior {
        self.lock()
            .get(&addr)
            .and_then(|b| b.behavior.clone())
            .unwrap_or(MemBehavior::Refuse)
    }

    async fn serve(
        &self,
        addr: SocketAddr,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, io::Error> {
        let (parts, body) = req.into_parts();
        let at = Instant::now();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let (behavior, nth) = {
            let mut all = self.lock();
            let b = all.entry(addr).or_default();
            b.log.push(MemRequest {
                at,
                method: parts.method.to_string(),
                path: parts.uri.to_string(),
                request_id: parts
                    .headers
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                host: parts
                    .headers
                    .get(http::header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                body_len: body.len(),
            });
            b.served += 1;
            (
                b.behavior.clone().unwrap_or(MemBehavior::Refuse),
                b.served - 1,
            )
        };
        match behavior {
            MemBehavior::Statuses {
                statuses,
                delay,
                headers,
            } => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let status = statuses
                    .get(nth)
                    .or(statuses.last())
                    .copied()
                    .unwrap_or(200);
                let mut resp =
                    Response::new(Full::new(Bytes::from(format!("{status} from {addr}\n"))));
                *resp.status_mut() = hyper::StatusCode::from_u16(status)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                for (k, v) in headers {
                    if let (Ok(k), Ok(v)) = (
                        http::HeaderName::from_bytes(k.as_bytes()),
                        http::HeaderValue::from_str(&v),
                    ) {
                        resp.headers_mut().append(k, v);
                    }
                }
                resp.headers_mut().insert(
                    "x-upstream",
                    http::HeaderValue::from_str(&addr.to_string())
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
                );
                Ok(resp)
            }
            MemBehavior::Hang => std::future::pending().await,
            // An error from the service makes hyper drop the connection unanswered.
            _ => Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "closed after request",
            )),
        }
    }
}

/// The proxy side of a [`MemoryNet`]: implements `detour_core::connect::Connect`.
#[derive(Debug, Clone)]
pub struct MemoryConnector {
    net: MemoryNet,
}

impl Connect for MemoryConnector {
    type Io = DuplexStream;

    async fn connect(&self, addr: SocketAddr) -> io::Result<DuplexStream> {
        match self.net.behavior(addr) {
            MemBehavior::Refuse => return Err(io::ErrorKind::ConnectionRefused.into()),
            MemBehavior::ConnectHang => std::future::pending::<()>().await,
            _ => {}
        }
        let (client, server) = tokio::io::duplex(64 * 1024);
        let net = self.net.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let net = net.clone();
                async move { net.serve(addr, req).await }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server), service)
                .await;
        });
        Ok(client)
    }
}
