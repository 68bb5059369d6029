//! The `408 Request Timeout` for a client too slow to send its request head.
//!
//! hyper closes such a connection without a word, dropping the connection it
//! was given. [`Reclaim`] hands the connection back when hyper drops it, so
//! the server can still write `408` on it (through TLS too), as RFC 9110
//! suggests, before it closes.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The answer to a client too slow to send its request head.
pub(crate) const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// Where a [`Reclaim`] leaves its connection when dropped.
pub(crate) type Slot<I> = Arc<Mutex<Option<I>>>;

/// A connection that goes back to its [`Slot`] instead of closing when
/// dropped.
pub(crate) struct Reclaim<I> {
    /// Invariant: `Some` until dropped.
    inner: Option<I>,
    slot: Slot<I>,
}

impl<I> Reclaim<I> {
    pub(crate) fn new(inner: I) -> (Self, Slot<I>) {
        let slot = Arc::new(Mutex::new(None));
        let me = Reclaim {
            inner: Some(inner),
            slot: Arc::clone(&slot),
        };
        (me, slot)
    }

    fn io(&mut self) -> io::Result<&mut I> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl<I> Drop for Reclaim<I> {
    fn drop(&mut self) {
        if let Some(io) = self.inner.take() {
            if let Ok(mut slot) = self.slot.lock() {
                *slot = Some(io);
            }
        }
    }
}

/// Write the `408` on the connection left in `slot` (best effort, bounded),
/// then close it.
pub(crate) async fn send_request_timeout<I: AsyncWrite + Unpin>(slot: &Slot<I>) {
    let io = slot.lock().ok().and_then(|mut s| s.take());
    if let Some(mut io) = io {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            io.write_all(REQUEST_TIMEOUT).await?;
            io.shutdown().await
        })
        .await;
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Reclaim<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.io()?).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Reclaim<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.io()?).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.io()?).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(I::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.io()?).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.io()?).poll_shutdown(cx)
    }
}
