//! The one drain path of every downstream connection, HTTP/1.1 or HTTP/2,
//! cleartext or TLS: drive the connection to its end, and shut it down
//! gracefully when the server drains (or goes away) or, for HTTP/2, when it
//! has been idle too long.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::send_timeout::StreamExec;
use crate::waker_slot::WakerSlot;

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
/// guard instead.)
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
    let mut clock = idle.map(IdleClock::new);
    let flag = Arc::new(WakeFlag::default());
    let flag_waker = Waker::from(Arc::clone(&flag));
    loop {
        if !draining && *drain.borrow_and_update() {
            draining = true;
            match linger {
                Some(l) => shutdown_at = Some(Instant::now() + l),
                None => conn.as_mut().shutdown(),
            }
        }
        // One timer for both clocks: each sleeping connection holds it.
        let idle_due = clock
            .as_ref()
            .filter(|c| !draining || c.closing.is_some())
            .map(|c| c.next_check);
        let due = match (shutdown_at, idle_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // A new watch future is polled once, to register.
        flag.woken.store(true, Ordering::Release);
        tokio::select! {
            biased;
            r = conn.as_mut() => return Some(r),
            changed = WhenWoken::new(drain.changed(), &flag, &flag_waker), if !draining => {
                if changed.is_err() {
                    // The server is gone: treat it as a drain.
                    draining = true;
                    conn.as_mut().shutdown();
                }
            }
            () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                let now = Instant::now();
                if shutdown_at.is_some_and(|at| now >= at) {
                    shutdown_at = None;
                    conn.as_mut().shutdown();
                }
                let Some(c) = clock.as_mut().filter(|_| idle_due.is_some_and(|at| now >= at)) else {
                    continue;
                };
                match c.check(now) {
                    IdleVerdict::Open => {}
                    IdleVerdict::Close => {
                        tracing::debug!(?client, "HTTP/2 connection idle for keepalive_timeout; closing");
                        draining = true;
                        conn.as_mut().shutdown();
                    }
                    IdleVerdict::Drop => {
                        tracing::debug!(?client, "HTTP/2 connection did not close after GOAWAY; dropping it");
                        return None;
                    }
                }
            }
        }
    }
}

/// Set when a [`WhenWoken`] future's own waker fires, and wakes the task.
#[derive(Default)]
struct WakeFlag {
    woken: AtomicBool,
    /// The task to wake, as last polled.
    task: WakerSlot,
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

pin_project_lite::pin_project! {
    /// `fut`, polled only when it woke the task (or is new), with a waker of
    /// its own that says so. Every connection waits on the one drain watch,
    /// and a poll of the watch's `changed()` takes the watch's lock (shared by
    /// all the server's connections); the connection task is woken for every
    /// read and write of every request, and would poll it each time.
    struct WhenWoken<'w, F> {
        #[pin]
        fut: F,
        flag: &'w WakeFlag,
        waker: &'w Waker,
    }
}

impl<'w, F> WhenWoken<'w, F> {
    fn new(fut: F, flag: &'w WakeFlag, waker: &'w Waker) -> Self {
        WhenWoken { fut, flag, waker }
    }
}

impl<F: Future> Future for WhenWoken<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        this.flag.task.register(cx.waker());
        // Looked at after the task is stored: a wake between the two finds
        // the task there and wakes it.
        if !this.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.fut.poll(&mut Context::from_waker(this.waker))
    }
}

/// The idle clock of a multiplexed connection, checked a few times per idle
/// period: it closes between `idle` and 1.25 × `idle` after the last stream
/// ended.
struct IdleClock {
    close: IdleClose,
    tick: Duration,
    next_check: Instant,
    /// Since when the connection has had no stream, as last checked.
    quiet_since: Option<Instant>,
    /// When the connection was asked to close for being idle.
    closing: Option<Instant>,
}

/// What an idle check found.
enum IdleVerdict {
    Open,
    /// Idle too long: ask it to close.
    Close,
    /// Asked to close an idle period ago and still open: drop it.
    Drop,
}

impl IdleClock {
    fn new(close: IdleClose) -> Self {
        let tick = (close.idle / 4).max(Duration::from_millis(10));
        let now = Instant::now();
        IdleClock {
            close,
            tick,
            next_check: now + tick,
            quiet_since: Some(now),
            closing: None,
        }
    }

    fn check(&mut self, now: Instant) -> IdleVerdict {
        self.next_check = now + self.tick;
        let idle = self.close.idle;
        if let Some(at) = self.closing {
            if now - at >= idle {
                return IdleVerdict::Drop;
            }
        } else if self.close.streams.live_streams() > 0 {
            self.quiet_since = None;
        } else if now - *self.quiet_since.get_or_insert(now) >= idle {
            self.closing = Some(now);
            return IdleVerdict::Close;
        }
        IdleVerdict::Open
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Counts the wakes of the task polling a future.
    #[derive(Default)]
    struct TaskWakes(AtomicUsize);

    impl Wake for TaskWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    pin_project_lite::pin_project! {
        /// `fut`, counting its polls.
        struct Counted<'c, F> {
            #[pin]
            fut: F,
            polls: &'c AtomicUsize,
        }
    }

    impl<F: Future> Future for Counted<'_, F> {
        type Output = F::Output;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            let this = self.project();
            this.polls.fetch_add(1, Ordering::SeqCst);
            this.fut.poll(cx)
        }
    }

    #[test]
    fn the_drain_watch_is_polled_only_when_it_woke_the_task() {
        let (tx, mut rx) = watch::channel(false);
        let flag = Arc::new(WakeFlag::default());
        let flag_waker = Waker::from(Arc::clone(&flag));
        let task = Arc::new(TaskWakes::default());
        let task_waker = Waker::from(Arc::clone(&task));
        let mut cx = Context::from_waker(&task_waker);
        let polls = AtomicUsize::new(0);

        flag.woken.store(true, Ordering::Release);
        let counted = Counted {
            fut: rx.changed(),
            polls: &polls,
        };
        let mut fut = std::pin::pin!(WhenWoken::new(counted, &flag, &flag_waker));
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "a new future is polled once"
        );
        // The task woken for something else (a read, a write).
        for _ in 0..3 {
            assert!(fut.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "not polled on others' wakes"
        );

        tx.send_replace(true);
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "the drain wakes the task");
        assert!(matches!(fut.as_mut().poll(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }
}
