//! Every attempt explained: a request's attempt history (where each attempt
//! went and why, what happened, how far it got, what was decided on it and
//! the wait before the next) as one line of text, shown three ways.
//!
//! - In the access log, as its `attempts` field (see [`super::proxy`]).
//! - To a client that asks: a request carrying [`EXPLAIN_REQUEST`] with the
//!   admin token as its value gets its history in [`EXPLAIN_RESPONSE`]. The
//!   token is compared in constant time, and the asking header is removed
//!   before the request goes upstream whatever its value, so the token never
//!   reaches a backend (or its logs). Without an admin token nobody can ask.
//! - At `GET /debug/requests` on the admin API: the last [`RECENT`] requests
//!   that were retried or failed ([`Recent`]).

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use detour_core::{Error, Session};
use http::{HeaderName, HeaderValue};

use super::secret::constant_time_eq;

/// The request header that asks for the history; its value is the admin
/// token.
pub const EXPLAIN_REQUEST: HeaderName = HeaderName::from_static("detour-explain");

/// The response header that carries the history to a client that asked.
pub const EXPLAIN_RESPONSE: HeaderName = HeaderName::from_static("detour-attempts");

/// How many retried or failed requests `/debug/requests` keeps.
pub const RECENT: usize = 100;

/// Remove every [`EXPLAIN_REQUEST`] header from the request; whether one of
/// them presented `token`.
pub fn asked(session: &mut Session, token: Option<&str>) -> bool {
    let headers = &mut session.req_mut().headers;
    if !headers.contains_key(&EXPLAIN_REQUEST) {
        return false;
    }
    let given: Vec<HeaderValue> = match headers.entry(EXPLAIN_REQUEST) {
        http::header::Entry::Occupied(e) => e.remove_entry_mult().1.collect(),
        http::header::Entry::Vacant(_) => Vec::new(),
    };
    let Some(token) = token else {
        return false;
    };
    given
        .iter()
        .any(|v| constant_time_eq(v.as_bytes(), token.as_bytes()))
}

/// The history as a header value (`none` before any attempt).
pub fn header_value(session: &Session) -> HeaderValue {
    let text = history(session);
    // The history is addresses, numbers and snake_case words: always a
    // valid value; `none` should that ever change.
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("none"))
}

/// The history as one line, `none` before any attempt.
pub fn history(session: &Session) -> String {
    if session.attempts().is_empty() {
        "none".to_string()
    } else {
        session.planner().to_string()
    }
}

/// Whether `/debug/requests` keeps this request: more than one attempt, an
/// error, or a 5xx.
pub fn worth_keeping(session: &Session, err: Option<&Error>, status: u16) -> bool {
    session.attempts().len() > 1 || err.is_some() || status >= 500
}

/// The last [`RECENT`] retried or failed requests, newest last.
#[derive(Debug, Default)]
pub struct Recent {
    kept: Mutex<VecDeque<serde_json::Value>>,
}

/// What [`Recent::keep`] records of one request.
#[derive(Debug)]
pub struct Kept<'a> {
    /// The request.
    pub session: &'a Session,
    /// Its request id.
    pub request_id: Option<&'a str>,
    /// The status sent downstream (0: none was).
    pub status: u16,
    /// The upstream its route chose.
    pub upstream: Option<&'a str>,
    /// The error that ended it.
    pub error: Option<&'a Error>,
}

impl Recent {
    /// Keep `request`, forgetting the oldest beyond [`RECENT`].
    pub fn keep(&self, request: &Kept<'_>) {
        let s = request.session;
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let entry = serde_json::json!({
            "at_unix_ms": at_ms,
            "request_id": request.request_id,
            "method": s.method().as_str(),
            "host": s.host(),
            "path": s.uri().path(),
            "status": request.status,
            "upstream": request.upstream,
            "error": request.error.map(|e| e.proxy_status_type()),
            "duration_ms": (s.elapsed().as_secs_f64() * 1e4).round() / 10.0,
            "attempts": history(s),
        });
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.len() == RECENT {
            kept.pop_front();
        }
        kept.push_back(entry);
    }

    /// The `/debug/requests` document: the requests kept, newest first.
    pub fn to_json(&self) -> serde_json::Value {
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let requests: Vec<serde_json::Value> = kept.iter().rev().cloned().collect();
        serde_json::json!({ "capacity": RECENT, "requests": requests })
    }
}
