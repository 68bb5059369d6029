//! The HTTP check: one request on a fresh HTTP/1.1 connection (hyper's client
//! connection), judged by its status and, optionally, its body.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use detour_core::connect::{Connect, TcpConnector};
use detour_core::{Backend, ErrorKind};
use http::header::{CONNECTION, HOST, USER_AGENT};
use http::{HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::check::{CheckFailure, CheckFailureKind, HealthCheck};
use super::config::{HealthConfig, StatusRange};
use super::tcp::connect_failure;
use detour_core::InvalidConfig;

/// How much of a body is searched for `body_contains`.
const BODY_LIMIT: usize = 64 * 1024;

/// Sends `method path` with a `Host` header and passes when the status is
/// accepted and, if asked, the body contains the expected text. Each check
/// opens a fresh connection (`Connection: close`), so the backend's accept
/// path is part of what is checked.
#[derive(Debug, Clone)]
pub struct HttpCheck<C = TcpConnector> {
    connector: C,
    method: Method,
    uri: Uri,
    host: Option<HeaderValue>,
    expected: Arc<[StatusRange]>,
    body_contains: Option<Arc<str>>,
}

impl<C: Connect> HttpCheck<C> {
    /// The HTTP check `config` describes (its `method`, `path`, `host`,
    /// `expected_statuses` and `body_contains`), dialling through `connector`.
    ///
    /// # Errors
    /// [`InvalidConfig`] when the configuration does not validate.
    pub fn from_config(config: &HealthConfig, connector: C) -> Result<Self, InvalidConfig> {
        let config = config.clone().validate()?;
        let host = match &config.host {
            Some(h) => Some(
                HeaderValue::from_str(h)
                    .map_err(|_| InvalidConfig::new("health.host", "not a valid Host"))?,
            ),
            None => None,
        };
        Ok(HttpCheck {
            connector,
            method: config.parsed_method()?,
            uri: config.parsed_path()?,
            host,
            expected: config.expected_statuses.into(),
            body_contains: config.body_contains.map(Into::into),
        })
    }

    async fn judge(&self, resp: http::Response<Incoming>) -> Result<(), CheckFailure> {
        let status = resp.status().as_u16();
        if !self.expected.iter().any(|r| r.contains(status)) {
            return Err(CheckFailure::new(
                CheckFailureKind::Status(status),
                format!("status {status}"),
            ));
        }
        match &self.body_contains {
            Some(needle) => body_contains(resp.into_body(), needle).await,
            None => Ok(()),
        }
    }
}

impl<C: Connect> HealthCheck for HttpCheck<C> {
    async fn check(&self, backend: &Backend) -> Result<(), CheckFailure> {
        let addr = backend.addr();
        let io = self
            .connector
            .connect(addr)
            .await
            .map_err(|e| connect_failure(&e))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
                .await
                .map_err(|e| hyper_failure(&e))?;
        let host = match &self.host {
            Some(h) => h.clone(),
            None => HeaderValue::try_from(addr.to_string())
                .map_err(|e| CheckFailure::custom(format!("no Host for {addr}: {e}")))?,
        };
        let req = Request::builder()
            .method(self.method.clone())
            .uri(self.uri.clone())
            .header(HOST, host)
            .header(USER_AGENT, "detour-health")
            .header(CONNECTION, "close")
            .body(Empty::new())
            .map_err(|e| CheckFailure::custom(format!("cannot build the request: {e}")))?;
        let exchange = async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| hyper_failure(&e))?;
            self.judge(resp).await
        };
        // The connection future does the I/O and must be polled until the
        // body is read; it runs in this task (not spawned), so a check cut by
        // its timeout leaves no connection behind.
        let mut conn = std::pin::pin!(conn);
        let mut exchange = std::pin::pin!(exchange);
        let mut conn_done = false;
        std::future::poll_fn(|cx| {
            if !conn_done && conn.as_mut().poll(cx).is_ready() {
                // Its error, if any, reaches the exchange as a closed channel.
                conn_done = true;
            }
            exchange.as_mut().poll(cx)
        })
        .await
    }
}

async fn body_contains(mut body: Incoming, needle: &str) -> Result<(), CheckFailure> {
    let needle_bytes = needle.as_bytes();
    let mut seen: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| hyper_failure(&e))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        // Search only where a new match can start.
        let from = seen
            .len()
            .saturating_sub(needle_bytes.len().saturating_sub(1));
        let take = data.len().min(BODY_LIMIT - seen.len());
        seen.extend_from_slice(&data[..take]);
        if seen[from..]
            .windows(needle_bytes.len())
            .any(|w| w == needle_bytes)
        {
            return Ok(());
        }
        if seen.len() >= BODY_LIMIT {
            break;
        }
    }
    Err(CheckFailure::new(
        CheckFailureKind::Body,
        format!("body does not contain {needle:?}"),
    ))
}

fn hyper_failure(err: &hyper::Error) -> CheckFailure {
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return CheckFailure::io(io);
        }
        source = s.source();
    }
    let kind = if err.is_parse() || err.is_parse_status() {
        ErrorKind::InvalidResponse
    } else {
        ErrorKind::ConnectionClosed
    };
    CheckFailure::new(CheckFailureKind::Transport(kind), format!("{kind}: {err}"))
}
