//! gRPC awareness: statuses that count, `grpc-timeout`, and errors a gRPC
//! client can read.
//!
//! A gRPC call is an HTTP/2 request with `content-type: application/grpc…`
//! (so the HTTP/1.1 path never pays for any of this: the version is checked
//! first). Its outcome is the `grpc-status`, not the HTTP status (always
//! 200). Following the gRPC spec's HTTP mapping, `UNAVAILABLE` (14) is
//! reported to breakers, outlier detection and metrics as its HTTP
//! equivalent, 503:
//!
//! * in the response headers (a trailers-only answer), nothing has gone to
//!   the client yet: it is a retriable 503 for the retry policy, retried when
//!   the request is safe (a route or upstream that lists `POST` among its
//!   `safe_methods` declares its gRPC methods safe);
//! * in the trailers, the response has started: it passes through to the
//!   client as it is and is never retried, but the attempt's outcome is only
//!   reported once the trailers arrive, as a failure.
//!
//! `grpc-timeout` shortens the request's deadline. When Detour itself fails
//! a call, the client gets a gRPC answer (HTTP 200, `grpc-status`
//! `DEADLINE_EXCEEDED` for a timeout, `UNAVAILABLE` otherwise), not a page.

use std::sync::Arc;
use std::time::Duration;

use detour_core::{CommitPoint, Error, ErrorKind, HttpPeer, Observer, OutcomeClass};
use http::header::{self, HeaderMap, HeaderValue};

use super::charge::Charge;
use http::{request, response, StatusCode, Version};

/// `INTERNAL`: the `grpc-status` of a call Detour refused as malformed.
pub(crate) const INTERNAL: u32 = 13;
/// `DEADLINE_EXCEEDED`.
pub(crate) const DEADLINE_EXCEEDED: u32 = 4;
/// `UNAVAILABLE`.
pub(crate) const UNAVAILABLE: u32 = 14;

fn has_grpc_content_type(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Whether a downstream request is a gRPC call.
pub(crate) fn is_call(req: &request::Parts) -> bool {
    req.version == Version::HTTP_2 && has_grpc_content_type(&req.headers)
}

/// The `grpc-status` in `headers`, if any.
pub(crate) fn status_in(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The HTTP status a gRPC response head stands for: 503 for `UNAVAILABLE`
/// in the headers, else its own.
pub(crate) fn effective_status(head: &response::Parts) -> u16 {
    if has_grpc_content_type(&head.headers) && status_in(&head.headers) == Some(UNAVAILABLE) {
        503
    } else {
        head.status.as_u16()
    }
}

/// Whether the outcome of this gRPC response is only known from its
/// trailers (no `grpc-status` in the head).
pub(crate) fn outcome_in_trailers(head: &response::Parts) -> bool {
    head.status == StatusCode::OK
        && has_grpc_content_type(&head.headers)
        && !head.headers.contains_key("grpc-status")
}

/// Parse `grpc-timeout`: up to 8 digits and a unit (`H`, `M`, `S`, `m`,
/// `u`, `n`).
pub(crate) fn parse_timeout(v: &HeaderValue) -> Option<Duration> {
    let s = v.as_bytes();
    let (&unit, digits) = s.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The `grpc-timeout` of a gRPC call, if it sent one.
pub(crate) fn timeout(req: &request::Parts) -> Option<Duration> {
    req.headers.get("grpc-timeout").and_then(parse_timeout)
}

/// The gRPC status for an error Detour answers with.
pub(crate) fn status_for(kind: ErrorKind) -> u32 {
    match kind {
        k if k.is_timeout() => DEADLINE_EXCEEDED,
        ErrorKind::InvalidRequest
        | ErrorKind::DownstreamClosed
        | ErrorKind::ClientTimeout
        | ErrorKind::Custom => INTERNAL,
        _ => UNAVAILABLE,
    }
}

/// Turn an error answer into a gRPC one: HTTP 200, trailers-only, with
/// `grpc-status` and `grpc-message`.
pub(crate) fn shape_error(head: &mut response::Parts, err: &Error) {
    head.status = StatusCode::OK;
    head.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    head.headers
        .insert("grpc-status", HeaderValue::from(status_for(err.kind())));
    // The kind's text is plain ASCII: nothing to percent-encode.
    if let Ok(msg) = HeaderValue::from_str(&format!("detour: {}", err.kind())) {
        head.headers.insert("grpc-message", msg);
    }
}

/// An attempt whose outcome waits for the trailers of its response.
pub(crate) struct Pending {
    pub(crate) observers: Vec<Arc<dyn Observer>>,
    pub(crate) latency: Duration,
    pub(crate) attempt: u32,
}

impl Pending {
    /// The response ended: with these trailers, or (`None`) without any,
    /// after `err` if it broke off.
    pub(crate) fn report(self, peer: &HttpPeer, trailers: Option<&HeaderMap>, err: Option<&Error>) {
        let (class, status) = match (trailers.map(status_in), err) {
            (Some(Some(UNAVAILABLE)), _) => (
                OutcomeClass::BackendFailure(ErrorKind::HttpStatus(503)),
                Some(503),
            ),
            (Some(_), _) => (OutcomeClass::Success, Some(200)),
            (None, Some(e)) if e.caused_by_backend() => {
                (OutcomeClass::BackendFailure(e.kind()), None)
            }
            (None, Some(e)) => (OutcomeClass::Local(e.kind()), None),
            (None, None) => (
                OutcomeClass::BackendFailure(ErrorKind::InvalidResponse),
                None,
            ),
        };
        let charge = Charge {
            class,
            status,
            latency: self.latency,
            commit: CommitPoint::ResponseForwarded,
            attempt: self.attempt,
            at: tokio::time::Instant::now(),
        };
        super::charge::charge(&self.observers, peer, charge);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_by_the_spec() {
        let t = |s: &'static str| parse_timeout(&HeaderValue::from_static(s));
        assert_eq!(t("100m"), Some(Duration::from_millis(100)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("3M"), Some(Duration::from_secs(180)));
        assert_eq!(t("5u"), Some(Duration::from_micros(5)));
        assert_eq!(t("7n"), Some(Duration::from_nanos(7)));
        assert_eq!(t("123456789m"), None, "at most 8 digits");
        assert_eq!(t("m"), None);
        assert_eq!(t("10x"), None);
        assert_eq!(t("-1S"), None);
    }

    #[test]
    fn statuses_map_to_http_and_back() {
        let mut head = http::Response::new(()).into_parts().0;
        head.headers.insert(
            "content-type",
            HeaderValue::from_static("application/grpc+proto"),
        );
        head.headers.insert("grpc-status", HeaderValue::from(14));
        assert_eq!(effective_status(&head), 503);
        head.headers.insert("grpc-status", HeaderValue::from(5));
        assert_eq!(effective_status(&head), 200);
        assert!(!outcome_in_trailers(&head));
        head.headers.remove("grpc-status");
        assert!(outcome_in_trailers(&head));
        assert_eq!(status_for(ErrorKind::DeadlineExceeded), DEADLINE_EXCEEDED);
        assert_eq!(status_for(ErrorKind::ReadTimeout), DEADLINE_EXCEEDED);
        assert_eq!(status_for(ErrorKind::CircuitOpen), UNAVAILABLE);
        assert_eq!(status_for(ErrorKind::ConnectRefused), UNAVAILABLE);
    }
}
