//! An upstream response body, from either HTTP/1.1 client, and the
//! connection it came on.
//!
//! The body carries its connection to the end: [`UpBody::take_reusable`]
//! hands it back for the pool once the body was read whole. For hyper the
//! connection is its request sender (hyper's own task reads the body); for
//! the native client it is the connection itself, which the body reads.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use detour_core::Error;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::upstream::classify::classify_hyper;
use crate::upstream::native::H1Body;
use crate::upstream::pool::{PoolConn, Sender};

/// An upstream response body.
#[derive(Debug)]
pub(crate) enum UpBody {
    /// From hyper's client, HTTP/1.1 or HTTP/2; `sender` is the HTTP/1.1
    /// connection to pool at the end (an HTTP/2 one stays in its own pool).
    Hyper {
        body: Incoming,
        sender: Option<Sender>,
    },
    /// From a native HTTP/1.1 connection, which it owns.
    Native(H1Body),
}

impl UpBody {
    /// The connection, for the pool, if the body ended in a way that lets
    /// it carry another request. Call at the body's end, once.
    pub(crate) fn take_reusable(&mut self) -> Option<PoolConn> {
        match self {
            UpBody::Hyper { sender, .. } => sender.take().map(PoolConn::Hyper),
            UpBody::Native(b) => b.take_reusable().map(PoolConn::Native),
        }
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match self.get_mut() {
            UpBody::Hyper { body, .. } => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(classify_hyper))),
            UpBody::Native(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Hyper { body, .. } => body.is_end_stream(),
            UpBody::Native(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Hyper { body, .. } => body.size_hint(),
            UpBody::Native(b) => b.size_hint(),
        }
    }
}
