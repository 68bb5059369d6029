//! The admin listener's accept loop and its connections, built to survive
//! hostile neighbours on the same host:
//!
//! - at most `max_connections` are served at once; the next client waits in
//!   the kernel's accept queue until one closes (it is not accepted and then
//!   starved);
//! - a client has `header_read_timeout` to send each request head, which in
//!   hyper also bounds how long a keep-alive connection may sit idle between
//!   requests, and a connection lives at most [`CONNECTION_LIFETIME`], so a
//!   client that stops reading cannot hold its slot for ever;
//! - when `accept` fails (`EMFILE`/`ENFILE` at the descriptor limit, and any
//!   other error), the loop pauses, 10 ms doubling to 1 s, and logs at most
//!   once a second with the number of failures it kept quiet. Without the
//!   pause, one pending connection at the descriptor limit makes `accept`
//!   fail at once, forever, and the loop spins writing a line each time.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::Admin;

/// The first pause after a failed `accept`.
const FIRST_PAUSE: Duration = Duration::from_millis(10);

/// The longest pause after a failed `accept`; also the shortest time between
/// two log lines about failed accepts.
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// The longest an admin connection is served. Admin requests take
/// milliseconds and a scraper simply reconnects, so this only ever ends a
/// connection whose client stopped reading its answer.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// What bounds the listener's connections (from `[admin]`).
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time to send a request head; also the longest idle keep-alive time.
    pub header_read_timeout: Duration,
}

/// Serve the admin API on `listener` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    admin: Admin,
    limits: ListenerLimits,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut backoff = AcceptBackoff::default();
    let mut accept = || async { listener.accept().await.map(|(s, _)| s) };
    while let Some((stream, slot)) =
        next_connection(&mut accept, &slots, &mut backoff, &mut stop).await
    {
        let admin = admin.clone();
        tokio::spawn(serve_connection(stream, admin, limits, slot));
    }
}

/// Wait for a free slot, then for a connection, pausing after each failed
/// accept. `None` once `stop` changes (or its sender is gone).
async fn next_connection<C, F>(
    accept: &mut impl FnMut() -> F,
    slots: &Arc<Semaphore>,
    backoff: &mut AcceptBackoff,
    stop: &mut watch::Receiver<bool>,
) -> Option<(C, OwnedSemaphorePermit)>
where
    F: Future<Output = io::Result<C>>,
{
    // The slot is taken before accepting: at the cap, clients wait in the
    // kernel's queue instead of holding a descriptor here.
    let slot = tokio::select! {
        biased;
        _ = stop.changed() => return None,
        s = Arc::clone(slots).acquire_owned() => s.ok()?,
    };
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => return None,
            r = accept() => r,
        };
        match accepted {
            Ok(conn) => {
                backoff.succeeded();
                return Some((conn, slot));
            }
            Err(e) => {
                let pause = backoff.failed(&e, Instant::now());
                tokio::select! {
                    biased;
                    _ = stop.changed() => return None,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// One connection: HTTP/1.1 with the header read timeout, for at most
/// [`CONNECTION_LIFETIME`]. `slot` is released when it ends.
async fn serve_connection(
    stream: TcpStream,
    admin: Admin,
    limits: ListenerLimits,
    slot: OwnedSemaphorePermit,
) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let service = hyper::service::service_fn(move |req| {
        let admin = admin.clone();
        async move { Ok::<_, Infallible>(admin.handle(req, local).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
    drop(slot);
}

/// The pause after failed accepts, and when to say so.
#[derive(Debug)]
struct AcceptBackoff {
    /// The pause after the next failure.
    pause: Duration,
    /// No log line before this.
    quiet_until: Option<Instant>,
    /// Failures not logged since the last line.
    unlogged: u64,
    /// Lines written (for tests).
    lines: u64,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff {
            pause: FIRST_PAUSE,
            quiet_until: None,
            unlogged: 0,
            lines: 0,
        }
    }
}

impl AcceptBackoff {
    /// An accept failed at `now` with `error`: how long to pause. Logs at
    /// most once per [`MAX_PAUSE`].
    fn failed(&mut self, error: &io::Error, now: Instant) -> Duration {
        if self.quiet_until.is_none_or(|t| now >= t) {
            tracing::warn!(
                %error,
                failures_since_last_report = self.unlogged,
                pause_ms = self.pause.as_millis(),
                "admin accept failed (at the descriptor limit?); pausing before the next accept"
            );
            self.quiet_until = Some(now + MAX_PAUSE);
            self.unlogged = 0;
            self.lines += 1;
        } else {
            self.unlogged += 1;
        }
        let pause = self.pause;
        self.pause = (pause * 2).min(MAX_PAUSE);
        pause
    }

    /// An accept succeeded: the next failure pauses briefly again. The log
    /// limit stays, so errors alternating with successes still log once a
    /// second at most.
    fn succeeded(&mut self) {
        self.pause = FIRST_PAUSE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn emfile() -> io::Error {
        io::Error::from_raw_os_error(24)
    }

    #[tokio::test(start_paused = true)]
    async fn failing_accepts_pause_and_log_once_a_second() {
        let attempts = AtomicU32::new(0);
        let mut accept = || {
            attempts.fetch_add(1, Ordering::Relaxed);
            async { Err::<(), _>(emfile()) }
        };
        let slots = Arc::new(Semaphore::new(4));
        let mut backoff = AcceptBackoff::default();
        let (_tx, mut stop) = watch::channel(false);
        let run = next_connection(&mut accept, &slots, &mut backoff, &mut stop);
        let waited = tokio::time::timeout(Duration::from_secs(5), run).await;
        assert!(waited.is_err(), "no connection ever came");
        // Pauses of 10, 20, 40, …, 640 ms, then 1 s: 11 attempts in 5 s
        // (a spinning loop makes millions).
        assert_eq!(attempts.load(Ordering::Relaxed), 11);
        // At most one line a second: the first, then one per second.
        assert!(backoff.lines <= 5, "{} lines", backoff.lines);
        assert!(backoff.lines >= 4, "{} lines", backoff.lines);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_pause_but_not_the_log_limit() {
        let mut b = AcceptBackoff::default();
        let t0 = Instant::now();
        assert_eq!(b.failed(&emfile(), t0), Duration::from_millis(10));
        assert_eq!(b.failed(&emfile(), t0), Duration::from_millis(20));
        b.succeeded();
        assert_eq!(b.failed(&emfile(), t0), Duration::from_millis(10));
        assert_eq!((b.lines, b.unlogged), (1, 2));
        assert_eq!(
            b.failed(&emfile(), t0 + MAX_PAUSE),
            Duration::from_millis(20)
        );
        assert_eq!((b.lines, b.unlogged), (2, 0));
        for _ in 0..20 {
            b.failed(&emfile(), t0 + MAX_PAUSE);
        }
        assert_eq!(b.pause, MAX_PAUSE, "the pause stops growing at 1 s");
    }

    #[tokio::test(start_paused = true)]
    async fn no_accept_without_a_free_slot() {
        let attempts = AtomicU32::new(0);
        let mut accept = || {
            attempts.fetch_add(1, Ordering::Relaxed);
            async { Ok::<_, io::Error>(()) }
        };
        let slots = Arc::new(Semaphore::new(1));
        let mut backoff = AcceptBackoff::default();
        let (tx, mut stop) = watch::channel(false);
        let first = next_connection(&mut accept, &slots, &mut backoff, &mut stop).await;
        assert!(first.is_some());
        let second = next_connection(&mut accept, &slots, &mut backoff, &mut stop);
        let waited = tokio::time::timeout(Duration::from_secs(1), second).await;
        assert!(waited.is_err(), "the cap holds the second connection back");
        assert_eq!(attempts.load(Ordering::Relaxed), 1);
        drop(first);
        let third = next_connection(&mut accept, &slots, &mut backoff, &mut stop).await;
        assert!(third.is_some(), "a closed connection frees its slot");
        tx.send_replace(true);
        assert!(
            next_connection(&mut accept, &slots, &mut backoff, &mut stop)
                .await
                .is_none()
        );
    }
}
