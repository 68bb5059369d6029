//! Error classification for the upstream side: what a failure of hyper's
//! client (a handshake, a send, a response body read) actually was, as an
//! [`ErrorKind`] the retry rules can judge.
//!
//! It lives with the dialing and the pools rather than with the engine, so the
//! upstream side reads on its own: the engine calls in, nothing here calls out.

use detour_core::{Error, ErrorKind};

/// Classify an error from hyper's client side by what actually happened.
pub(crate) fn classify_hyper(e: hyper::Error) -> Error {
    let mut io_kind = None;
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    let mut h2 = None;
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
            break;
        }
        if let Some(k) = h2_kind(s) {
            h2 = Some(k);
            break;
        }
        src = s.source();
    }
    let kind = if e.is_parse() || e.is_parse_status() {
        ErrorKind::InvalidResponse
    } else if let Some(k) = h2 {
        k
    } else if let Some(k) = io_kind {
        ErrorKind::from_io(k)
    } else if e.is_timeout() {
        ErrorKind::ReadTimeout
    } else {
        ErrorKind::ConnectionClosed
    };
    Error::upstream(kind).cause(e)
}

/// The kind of an HTTP/2 failure found in an error's source chain.
///
/// A stream the upstream refused (`REFUSED_STREAM`), and one above the last
/// stream id of the upstream's `GOAWAY` (or opened after it), were provably
/// not processed: [`ErrorKind::StreamRefused`], retried whatever the method.
/// Any other reset is [`ErrorKind::ConnectionReset`], retried only for safe
/// requests, as on HTTP/1.1.
fn h2_kind(err: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
    let e = err.downcast_ref::<h2::Error>()?;
    if e.is_reset() && e.reason() == Some(h2::Reason::REFUSED_STREAM) {
        return Some(ErrorKind::StreamRefused);
    }
    if e.is_go_away() && e.is_remote() {
        return Some(ErrorKind::StreamRefused);
    }
    if e.is_reset() || e.is_go_away() {
        return Some(ErrorKind::ConnectionReset);
    }
    if e.is_io() {
        return e.get_io().map(|io| ErrorKind::from_io(io.kind()));
    }
    None
}
