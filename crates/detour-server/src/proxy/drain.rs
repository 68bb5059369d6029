//! The one drain path of every downstream connection, HTTP/1.1 or HTTP/2,
//! cleartext or TLS: drive the connection to its end, and shut it down
//! gracefully when the server drains (or goes away) or, for HTTP/2, when it
//! has been idle too long.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::send_timeout::StreamExec;

/// A connection future that can be asked to shut down gracefully: HTTP/1.1
/// finishes the request in flight and closes, HTTP/2 sends GOAWAY and lets
/// the streams in flight finish.
pub(super) trait Graceful: Future {
    /// Ask the connection to close once what is in flight is done.
    fn shutdown(self: Pin<&mut Self>);
}

impl<I, S, E, B> Graceful for http2::Connection<I, S, E>
where
    Self: Future,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B> Graceful for http1::UpgradeableConnection<I, S>
where
    Self: Future,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Close a multiplexed connection that has had no stream for `idle`, as
/// `streams` counts them. (HTTP/1.1 connections are timed by the framing
/// guard and hyper instead.)
pub(super) struct IdleClose {
    /// The executor of the connection's streams, which counts the live ones.
    pub(super) streams: StreamExec,
    /// How long without a stream before the connection is closed.
    pub(super) idle: Duration,
}

/// Drive `conn` to its end; when `drain` turns true (or the server goes
/// away), or — with `idle` — when the connection has had no stream for that
/// long, shut it down gracefully and let it finish. A client that never
/// opens a stream (nor even sends the HTTP/2 preface) is closed the same way.
///
/// With `linger` (HTTP/1.1), a drain does not close the connection at once:
/// the engine answers the next request with `Connection: close` (see
/// `HttpProxy::begin_drain`), after
/// which hyper closes it, and only a connection still open after `linger`
/// is shut down. A client that sends its next request just as the drain
/// begins gets an answer, not a closed connection.
///
/// Returns the connection's own result, or `None` when it was dropped for
/// not closing within the idle period after it was asked to for idleness
/// (a connection still in its handshake cannot be sent a GOAWAY).
///
/// `conn` comes pinned by the caller: taken by value, it would be stored
/// twice in this function's future (the argument's slot and the pinned
/// local), which every idle connection pays for (about 800 bytes on
/// HTTP/1.1).
pub(super) async fn run_until_drained<F>(
    mut conn: Pin<&mut F>,
    mut drain: watch::Receiver<bool>,
    client: Option<SocketAddr>,
    idle: Option<IdleClose>,
    linger: Option<Duration>,
) -> Option<F::Output>
where
    F: Graceful,
{
    let mut draining = false;
    // When a lingering drain shuts the connection down.
    let mut shutdown_at: Option<Instant> = None;
    // Checked a few times per idle period: it closes between `idle` and
    // 1.25 × `idle` after the last stream ended. Without an idle check the
    // timer branch is never enabled.
    let tick = idle.as_ref().map_or(Duration::from_secs(3600), |i| {
        (i.idle / 4).max(Duration::from_millis(10))
    });
    let mut quiet_since = Some(Instant::now());
    // When the connection was asked to close for being idle.
    let mut idle_closing: Option<Instant> = None;
    let mut next_check = Instant::now() + tick;
    loop {
        if !draining && *drain.borrow_and_update() {
            draining = true;
            match linger {
                Some(l) => shutdown_at = Some(Instant::now() + l),
                None => conn.as_mut().shutdown(),
            }
        }
        tokio::select! {
            r = conn.as_mut() => return Some(r),
            () = tokio::time::sleep_until(shutdown_at.unwrap_or(next_check)), if shutdown_at.is_some() => {
                shutdown_at = None;
                conn.as_mut().shutdown();
            }
            changed = drain.changed(), if !draining => {
                if changed.is_err() {
                    // The server is gone: treat it as a drain.
                    draining = true;
                    conn.as_mut().shutdown();
                }
            }
            () = tokio::time::sleep_until(next_check),
                if idle.is_some() && (!draining || idle_closing.is_some()) =>
            {
                let Some(IdleClose { streams, idle }) = &idle else {
                    continue;
                };
                let now = Instant::now();
                next_check = now + tick;
                if let Some(at) = idle_closing {
                    if now - at >= *idle {
                        tracing::debug!(?client, "HTTP/2 connection did not close after GOAWAY; dropping it");
                        return None;
                    }
                } else if streams.live_streams() > 0 {
                    quiet_since = None;
                } else if now - *quiet_since.get_or_insert(now) >= *idle {
                    tracing::debug!(?client, "HTTP/2 connection idle for keepalive_timeout; closing");
                    draining = true;
                    idle_closing = Some(now);
                    conn.as_mut().shutdown();
                }
            }
        }
    }
}
