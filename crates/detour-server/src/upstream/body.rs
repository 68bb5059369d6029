//! The request body as the upstream connection reads it: fed chunk by chunk
//! through a one-slot channel by the engine's body pump, which gives
//! backpressure both ways.
//!
//! It belongs to the upstream side (the pools and the dialer are typed by it);
//! the engine only holds the sending end.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

/// A frame on its way upstream; `None` marks the end of the body. A channel
/// that closes without that mark means the upload was cut short, and the
/// upstream connection is aborted rather than told the body is complete (a
/// truncated chunked body must never look whole to a backend).
pub(crate) type UpFrame = Option<Frame<Bytes>>;

/// The request body as the upstream connection reads it.
#[derive(Debug)]
pub struct UpstreamBody {
    rx: Option<mpsc::Receiver<UpFrame>>,
    len: Option<u64>,
}

impl UpstreamBody {
    /// A body with nothing in it.
    pub(crate) fn empty() -> Self {
        UpstreamBody {
            rx: None,
            len: Some(0),
        }
    }

    /// A body fed through `rx`, of `len` bytes when that is known.
    pub(crate) fn channel(rx: mpsc::Receiver<UpFrame>, len: Option<u64>) -> Self {
        UpstreamBody { rx: Some(rx), len }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(None);
        };
        match rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Some(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(Some(None)) => {
                self.rx = None;
                Poll::Ready(None)
            }
            Poll::Ready(None) => {
                self.rx = None;
                Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "request body cut short",
                ))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rx.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.len {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
