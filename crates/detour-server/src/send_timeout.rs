//! Clients that stop reading: `[server.limits] send_timeout`.
//!
//! A client that never reads its response would otherwise hold its
//! connection slot, an upstream connection and buffered bytes for as long as
//! it likes. Two places see such a client:
//!
//! * **The socket.** [`SendTimeout`] wraps every downstream connection, under
//!   TLS when there is TLS. While a write cannot go out (the kernel's send
//!   buffer is full) and none of it has gone for `send_timeout`, the write
//!   fails with `TimedOut`. That ends an HTTP/1.1 connection, an upgraded
//!   tunnel, or an HTTP/2 connection whose whole socket is stuck.
//! * **One HTTP/2 stream.** A client may keep its connection flowing but
//!   never open one stream's flow-control window. hyper then holds that
//!   stream's next chunk and stops asking the response body for more.
//!   [`StreamExec`] runs each stream's task and watches for exactly that: the
//!   body handed out a data frame, and for `send_timeout` it was not asked for
//!   another. The task is then dropped, which resets the stream
//!   (`RST_STREAM` with `CANCEL`) and leaves the connection's other streams
//!   alone.
//!
//! Time with nothing to send (a quiet tunnel, a server-sent-event stream
//! waiting for its next event) never counts: only a pending write arms the
//! timer, and any byte written disarms it.
//!
//! Either way the response body is dropped before its end, so the upstream
//! connection is closed rather than pooled, and the backend is not charged:
//! the exchange ends as the client's fault.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::lazy_timer::LazyTimer;

/// A timer that runs while something waits, and is disarmed by progress.
struct StallTimer {
    timeout: Duration,
    timer: LazyTimer,
    armed: bool,
}

impl StallTimer {
    fn new(timeout: Duration) -> Self {
        StallTimer {
            timeout,
            timer: LazyTimer::default(),
            armed: false,
        }
    }

    /// Start a fresh wait of `timeout` from now.
    fn restart(&mut self) {
        self.timer.set(Instant::now() + self.timeout);
        self.armed = true;
    }

    /// Arm the timer unless it already runs.
    fn arm(&mut self) {
        if !self.armed {
            self.restart();
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }

    /// Whether the armed timer ran out (registers `cx` for when it will).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.armed && self.timer.fired(cx)
    }
}

/// A downstream connection whose writes fail once none of their bytes could
/// go out for the send timeout.
pub(crate) struct SendTimeout<I> {
    inner: I,
    timer: StallTimer,
}

impl<I> SendTimeout<I> {
    pub(crate) fn new(inner: I, timeout: Duration) -> Self {
        SendTimeout {
            inner,
            timer: StallTimer::new(timeout),
        }
    }

    /// The connection inside.
    pub(crate) fn get_ref(&self) -> &I {
        &self.inner
    }

    fn watch<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => {
                self.timer.arm();
                if self.timer.expired(cx) {
                    tracing::debug!("client took no bytes within send_timeout; closing");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client took no bytes within send_timeout",
                    )));
                }
                Poll::Pending
            }
            ready => {
                self.timer.disarm();
                ready
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for SendTimeout<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for SendTimeout<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What a response body did last while its stream's task was polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyEvent {
    /// Not polled during this poll of the task.
    Untouched,
    /// Handed out a data frame: hyper holds bytes to send.
    GaveFrame,
    /// Had nothing to give (waiting for the upstream) or ended.
    Idle,
}

thread_local! {
    /// Written by the response body, read by the [`StreamExec`] task that
    /// polled it: a poll runs on one thread from start to end, so the value
    /// read after a poll is what the body did during it.
    static BODY_EVENT: Cell<BodyEvent> = const { Cell::new(BodyEvent::Untouched) };
}

/// The response body handed out a data frame.
pub(crate) fn body_gave_frame() {
    BODY_EVENT.with(|e| e.set(BodyEvent::GaveFrame));
}

/// The response body had nothing to give, or ended.
pub(crate) fn body_idle() {
    BODY_EVENT.with(|e| e.set(BodyEvent::Idle));
}

/// The executor of downstream HTTP/2 streams: each stream's task is watched
/// for a client that stopped taking that stream's bytes (see the module
/// docs), and dropped — resetting the stream — after the send timeout.
///
/// It also counts its connection's live streams, so a connection without
/// any can be closed once idle for the keep-alive timeout.
#[derive(Debug, Clone)]
pub(crate) struct StreamExec {
    send_timeout: Duration,
    live: Arc<AtomicUsize>,
}

impl StreamExec {
    pub(crate) fn new(send_timeout: Duration) -> Self {
        StreamExec {
            send_timeout,
            live: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Streams of the connection running now.
    pub(crate) fn live_streams(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }
}

/// Counts one live stream while held.
struct LiveStream(Arc<AtomicUsize>);

impl Drop for LiveStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(self.task(fut));
    }
}

impl StreamExec {
    /// The task [`execute`](hyper::rt::Executor::execute) spawns for a
    /// stream's future, counted live from now.
    fn task<F: Future>(&self, fut: F) -> Watched<F> {
        self.live.fetch_add(1, Ordering::Relaxed);
        Watched {
            fut,
            timer: StallTimer::new(self.send_timeout),
            _live: LiveStream(Arc::clone(&self.live)),
        }
    }
}

pin_project_lite::pin_project! {
    /// A stream's task: its future, reset (dropped) when the stream's client
    /// took none of its bytes for the send timeout.
    ///
    /// A struct rather than an `async` block: a block that pins the future it
    /// captured keeps it twice in its state, and this task lives once per
    /// stream in flight (each holds a request's whole future).
    struct Watched<F> {
        #[pin]
        fut: F,
        timer: StallTimer,
        _live: LiveStream,
    }
}

impl<F: Future> Future for Watched<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        BODY_EVENT.with(|e| e.set(BodyEvent::Untouched));
        if this.fut.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        match BODY_EVENT.with(Cell::get) {
            // New bytes were taken: a new wait for room starts.
            BodyEvent::GaveFrame => this.timer.restart(),
            BodyEvent::Idle => this.timer.disarm(),
            BodyEvent::Untouched => {}
        }
        if this.timer.expired(cx) {
            tracing::debug!(
                "HTTP/2 client took no bytes of a stream within send_timeout; resetting it"
            );
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn a_stream_task_holds_its_future_once() {
        // A future with 4 KB of state, as a request's future has 5 KB.
        let big = async {
            let state = [7u8; 4096];
            tokio::task::yield_now().await;
            state.len()
        };
        let inner = std::mem::size_of_val(&big);
        let exec = StreamExec::new(Duration::from_secs(1));
        let task = exec.task(big);
        let size = std::mem::size_of_val(&task);
        assert_eq!(exec.live_streams(), 1);
        drop(task);
        assert_eq!(exec.live_streams(), 0);
        assert!(inner >= 4096, "the test future is {inner} B");
        assert!(size < inner + 256, "{size} B to hold a {inner} B future");
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_cannot_go_out_fails_after_the_timeout() {
        // A duplex pipe with a 16-byte buffer that nobody reads.
        let (a, _b) = tokio::io::duplex(16);
        let mut w = SendTimeout::new(a, Duration::from_secs(5));
        w.write_all(&[0; 16]).await.unwrap();
        let started = Instant::now();
        let err = w.write_all(&[0; 1]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn progress_disarms_the_timer() {
        use tokio::io::AsyncReadExt;
        let (a, mut b) = tokio::io::duplex(16);
        let mut w = SendTimeout::new(a, Duration::from_secs(5));
        // The reader takes 16 bytes every 4 s: slower than the writer, but
        // never stuck for 5 s.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let mut total = 0;
            while total < 64 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                total += b.read(&mut buf).await.unwrap();
            }
            total
        });
        w.write_all(&[7; 64]).await.unwrap();
        assert_eq!(reader.await.unwrap(), 64);
    }
}
