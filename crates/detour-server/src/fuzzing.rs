//! Entry points for the fuzz targets (`fuzz/`) and the property tests that
//! mirror them: the crate-private framing scanner, request checks, path
//! normalization and framing of responses, wrapped. Hidden from the docs and
//! not a stable API: the invariants live with the targets, not here.

use http::{request, HeaderMap, Method, Uri, Version};

use crate::config::{LimitsConfig, PathsConfig};
use crate::framing::Scanner;
use crate::proxy::forward;
use crate::proxy::path::{self, Normalized, PathPolicy};

/// Header fields a head may carry for [`check_request_head`]: as many as the
/// framing guard parses.
const MAX_HEADERS: usize = 128;

/// What the framing guard's scanner made of one connection's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramingScan {
    /// The index (0-based) of the first request it marked ambiguous, which
    /// the engine refuses with 400.
    pub first_bad: Option<u64>,
    /// The scanner's whole state afterwards (phase, partial head, requests
    /// followed), rendered with `Debug` so two scans can be compared. Not a
    /// format to parse.
    pub state: String,
}

/// Feed `chunks`, in order, to a fresh framing scanner that allows heads of
/// `max_head` bytes, as the guard does with a connection's reads.
pub fn scan_framing(chunks: &[&[u8]], max_head: usize) -> FramingScan {
    let mut scanner = Scanner::new(max_head);
    for chunk in chunks {
        scanner.feed(chunk);
    }
    let first_bad = scanner.first_bad();
    FramingScan {
        first_bad,
        state: format!("{scanner:?}"),
    }
}

/// A request head [`check_request_head`] accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedHead {
    /// The method.
    pub method: Method,
    /// The HTTP version of the request line.
    pub version: Version,
    /// The target after path normalization.
    pub target: String,
    /// Whether normalization changed the target.
    pub rewritten: bool,
    /// The declared body length (`Content-Length`), if any.
    pub body_len: Option<u64>,
    /// The header fields, as parsed.
    pub headers: HeaderMap,
}

/// Why [`check_request_head`] did not accept a head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadRefusal {
    /// Not a complete head httparse parses into `http` types: hyper refuses
    /// it before Detour sees it.
    Unparsed,
    /// Refused by Detour's checks with this status and reason.
    Refused {
        /// The status the client gets.
        status: u16,
        /// Why.
        reason: &'static str,
    },
}

/// Parse an HTTP/1.x request head (httparse, then `http` types) and run the
/// checks the engine runs before any hook: `check_request` with the default
/// `[server.limits]`, then path normalization under `paths`.
///
/// # Errors
/// [`HeadRefusal`]: unparsed, or the status and reason of the refusal.
pub fn check_request_head(head: &[u8], paths: &PathsConfig) -> Result<CheckedHead, HeadRefusal> {
    let mut parts = parse_head(head).ok_or(HeadRefusal::Unparsed)?;
    let refused = |b: forward::BadRequest| HeadRefusal::Refused {
        status: b.status.as_u16(),
        reason: b.reason,
    };
    let body_len = forward::check_request(&parts, &LimitsConfig::default()).map_err(refused)?;
    let before = parts.uri.clone();
    path::normalize_target(&mut parts, PathPolicy::from(paths)).map_err(refused)?;
    Ok(CheckedHead {
        rewritten: parts.uri != before,
        target: parts.uri.to_string(),
        method: parts.method,
        version: parts.version,
        body_len,
        headers: parts.headers,
    })
}

fn parse_head(head: &[u8]) -> Option<request::Parts> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return None;
    }
    let mut builder = http::Request::builder()
        .method(Method::from_bytes(req.method?.as_bytes()).ok()?)
        .uri(Uri::try_from(req.path?).ok()?)
        .version(match req.version? {
            0 => Version::HTTP_10,
            _ => Version::HTTP_11,
        });
    for h in req.headers.iter() {
        builder = builder.header(h.name, h.value);
    }
    Some(builder.body(()).ok()?.into_parts().0)
}

/// What path normalization made of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathOutcome {
    /// Already normal.
    Unchanged,
    /// The normal form.
    Rewritten(String),
    /// Refused with 400, and why.
    Refused(&'static str),
}

/// Normalize `path` (without its query) under `paths`.
pub fn normalize_path(path: &str, paths: &PathsConfig) -> PathOutcome {
    match path::normalize_path(path, PathPolicy::from(paths)) {
        Normalized::Unchanged => PathOutcome::Unchanged,
        Normalized::Rewritten(p) => PathOutcome::Rewritten(p),
        Normalized::Refused(why) => PathOutcome::Refused(why),
    }
}

/// Narrow a request's `Upgrade` to `allowed`, as the engine does; whether an
/// upgrade is still asked for.
/// The request is taken as HTTP/1.1, the only version that upgrades.
pub fn filter_upgrade(headers: &mut HeaderMap, allowed: &[String]) -> bool {
    let mut parts = http::Request::new(()).into_parts().0;
    parts.version = Version::HTTP_11;
    parts.headers = std::mem::take(headers);
    let upgrade = forward::filter_upgrade(&mut parts, allowed);
    *headers = parts.headers;
    upgrade
}

/// The framing check of a `200` upstream response's headers; whether it
/// passes.
pub fn check_response_framing(headers: &mut HeaderMap) -> bool {
    forward::check_response_framing(http::StatusCode::OK, headers).is_ok()
}

/// A scripted HTTP/1.1 exchange for [`h1_exchange`]: the request a client
/// sends, and the backend's answer as the reads it arrives in.
#[derive(Debug, Clone)]
pub struct H1Script {
    /// The request's method (its target is `/`).
    pub method: Method,
    /// The request body's frames (none: no body) ...
    pub upload: Vec<Vec<u8>>,
    /// ... its length declared up front (else it goes chunked) ...
    pub upload_len_known: bool,
    /// ... and its trailers (sent only with a chunked body).
    pub upload_trailers: Option<HeaderMap>,
    /// The backend's bytes, each written on its own after the one before
    /// was read.
    pub reads: Vec<Vec<u8>>,
    /// The backend closes after its last write; otherwise it stays open.
    pub close: bool,
}

/// What a client made of an [`H1Script`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H1Outcome {
    /// The answer, or why there is none.
    pub answer: H1Answer,
    /// Every byte the backend received, in order.
    pub received: Vec<u8>,
}

/// The client's answer to a scripted exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum H1Answer {
    /// The exchange failed before a response head; the client's reason.
    NoHead(String),
    /// Neither a head nor a failure: the client still waits.
    Waiting,
    /// A response head, and what followed it.
    Response(H1Response),
}

/// A response as a client delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H1Response {
    /// Its status.
    pub status: u16,
    /// Its version.
    pub version: Version,
    /// Its header fields, in order.
    pub headers: HeaderMap,
    /// The body's bytes, up to its end or failure.
    pub body: Vec<u8>,
    /// How the body ended.
    pub end: H1BodyEnd,
    /// Its trailers.
    pub trailers: Option<HeaderMap>,
    /// Whether the connection can carry the next request, as the pool
    /// would decide it.
    pub reusable: bool,
}

/// How a response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H1BodyEnd {
    /// At its framing's end.
    Complete,
    /// With an error.
    Failed,
    /// It did not: the client still waits for more.
    Waiting,
}

/// Run `script` through one HTTP/1.1 client over an in-memory connection.
/// Meant for a current-thread runtime with a paused clock (tokio's
/// `test-util`): it then waits only while something can still happen, and
/// "waiting" is an answer of its own, reached at no cost in real time.
pub async fn h1_exchange(client: crate::config::Http1Client, script: &H1Script) -> H1Outcome {
    h1::exchange(client, script).await
}

/// [`h1_exchange`]'s innards.
mod h1 {
    use std::future::poll_fn;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use bytes::Bytes;
    use http::{HeaderMap, Request};
    use http_body::{Body, Frame};
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::sync::mpsc;
    use tokio::time::{sleep, timeout};

    use super::{H1Answer, H1BodyEnd, H1Outcome, H1Response, H1Script};
    use crate::config::Http1Client;
    use crate::upstream::native::{self, H1Conn};
    use crate::upstream::UpstreamBody;

    /// How long "waiting" lasts (on the paused clock: no real time).
    const PATIENCE: Duration = Duration::from_secs(60);
    /// Between the backend's writes, and before the reuse decision: long
    /// enough for everything runnable to run.
    const SETTLE: Duration = Duration::from_millis(1);

    pub(super) async fn exchange(client: Http1Client, script: &H1Script) -> H1Outcome {
        let (near, far) = tokio::io::duplex(256 * 1024);
        let received = Arc::new(Mutex::new(Vec::new()));
        let backend = tokio::spawn(backend(far, script.clone(), received.clone()));
        let req = request(script);
        let answer = match client {
            Http1Client::Native => native_answer(near, req).await,
            _ => hyper_answer(near, req).await,
        };
        sleep(SETTLE).await;
        backend.abort();
        let received = received.lock().map(|r| r.clone()).unwrap_or_default();
        H1Outcome { answer, received }
    }

    /// The backend: every read recorded; once the request head is in (a
    /// backend answers requests, and bytes before one are an answer to
    /// nothing), the script's writes, one at a time.
    async fn backend(io: DuplexStream, script: H1Script, received: Arc<Mutex<Vec<u8>>>) {
        let (mut rd, mut wr) = tokio::io::split(io);
        let (head_in, mut head_seen) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = rd.read(&mut buf).await {
                if let Ok(mut r) = received.lock() {
                    r.extend_from_slice(&buf[..n]);
                    if r.windows(4).any(|w| w == b"\r\n\r\n") {
                        let _ = head_in.send(true);
                    }
                }
            }
        });
        if head_seen.wait_for(|seen| *seen).await.is_err() {
            return;
        }
        for chunk in &script.reads {
            if wr.write_all(chunk).await.is_err() {
                return;
            }
            sleep(SETTLE).await;
        }
        if script.close {
            let _ = wr.shutdown().await;
        } else {
            std::future::pending::<()>().await;
        }
    }

    fn request(script: &H1Script) -> Request<UpstreamBody> {
        let body = if script.upload.is_empty() && script.upload_trailers.is_none() {
            UpstreamBody::empty()
        } else {
            let (tx, rx) = mpsc::channel(script.upload.len() + 2);
            let len: usize = script.upload.iter().map(Vec::len).sum();
            for frame in &script.upload {
                let _ = tx.try_send(Some(Frame::data(Bytes::from(frame.clone()))));
            }
            if let Some(t) = &script.upload_trailers {
                let _ = tx.try_send(Some(Frame::trailers(t.clone())));
            }
            let _ = tx.try_send(None);
            UpstreamBody::channel(rx, script.upload_len_known.then_some(len as u64))
        };
        let mut req = Request::new(body);
        *req.method_mut() = script.method.clone();
        *req.uri_mut() = http::Uri::from_static("/");
        req.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_static("backend"),
        );
        if script.upload_trailers.is_some() {
            req.headers_mut().insert(
                http::header::TRAILER,
                http::HeaderValue::from_static("x-sum"),
            );
        }
        req
    }

    async fn hyper_answer(io: DuplexStream, req: Request<UpstreamBody>) -> H1Answer {
        let Ok((mut sender, conn)) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
        else {
            return H1Answer::NoHead("handshake".into());
        };
        tokio::spawn(conn.with_upgrades());
        let resp = match timeout(PATIENCE, sender.send_request(req)).await {
            Err(_) => return H1Answer::Waiting,
            Ok(Err(e)) => return H1Answer::NoHead(chain(&e)),
            Ok(Ok(resp)) => resp,
        };
        let (parts, mut body) = resp.into_parts();
        let (bytes, trailers, end) = read_body(&mut body).await;
        sleep(SETTLE).await;
        let reusable = end == H1BodyEnd::Complete && sender.is_ready();
        response(parts, bytes, trailers, end, reusable)
    }

    async fn native_answer(io: DuplexStream, req: Request<UpstreamBody>) -> H1Answer {
        let resp = match timeout(PATIENCE, native::send(H1Conn::new(io, true), req)).await {
            Err(_) => return H1Answer::Waiting,
            Ok(Err(e)) => return H1Answer::NoHead(chain(&e.err)),
            Ok(Ok(resp)) => resp,
        };
        let (parts, mut body) = resp.into_parts();
        let (bytes, trailers, end) = read_body(&mut body).await;
        let conn = body.take_reusable();
        sleep(SETTLE).await;
        let reusable = end == H1BodyEnd::Complete && conn.is_some_and(|mut c| c.is_usable());
        response(parts, bytes, trailers, end, reusable)
    }

    fn response(
        parts: http::response::Parts,
        body: Vec<u8>,
        trailers: Option<HeaderMap>,
        end: H1BodyEnd,
        reusable: bool,
    ) -> H1Answer {
        H1Answer::Response(H1Response {
            status: parts.status.as_u16(),
            version: parts.version,
            headers: parts.headers,
            body,
            end,
            trailers,
            reusable,
        })
    }

    /// An error and its causes, in one line.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut text = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
        text
    }

    /// A body read to its end, its failure, or until it waits too long.
    async fn read_body<B>(body: &mut B) -> (Vec<u8>, Option<HeaderMap>, H1BodyEnd)
    where
        B: Body<Data = Bytes> + Unpin,
    {
        let (mut bytes, mut trailers) = (Vec::new(), None);
        loop {
            let next = poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx));
            match timeout(PATIENCE, next).await {
                Err(_) => return (bytes, trailers, H1BodyEnd::Waiting),
                Ok(None) => return (bytes, trailers, H1BodyEnd::Complete),
                Ok(Some(Err(_))) => return (bytes, trailers, H1BodyEnd::Failed),
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => bytes.extend_from_slice(&data),
                    Err(frame) => trailers = frame.into_trailers().ok().or(trailers),
                },
            }
        }
    }
}
