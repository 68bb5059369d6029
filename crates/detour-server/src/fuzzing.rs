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
