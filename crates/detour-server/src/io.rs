//! The `408 Request Timeout` for a client too slow to send its request head.
//!
//! hyper closes such a connection without a word. The worker keeps a second
//! file descriptor for the socket (a `dup`, never read from), so it can still
//! write `408` after hyper has let go of the connection, as RFC 9110
//! suggests. hyper owns the tokio stream itself and reads through tokio's own
//! path: no zeroing of the read buffer, and a short read clears readiness, so
//! no `EAGAIN` read follows each request.

use std::io::Write;
use std::os::fd::AsFd;

use tokio::net::TcpStream;

/// The answer to a client too slow to send its request head.
pub(crate) const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// A duplicate descriptor of a downstream socket, kept to write the 408.
///
/// While it is alive the socket stays open even after hyper drops its stream,
/// so it must be dropped (or [`send`](Self::send) called) as soon as the
/// connection is over.
pub(crate) struct TimeoutNotice(Option<std::net::TcpStream>);

impl TimeoutNotice {
    /// Duplicate the descriptor of `stream`. When that fails (descriptor
    /// limit), the connection is served all the same, only without the 408.
    pub(crate) fn for_stream(stream: &TcpStream) -> Self {
        TimeoutNotice(
            stream
                .as_fd()
                .try_clone_to_owned()
                .ok()
                .map(std::net::TcpStream::from),
        )
    }

    /// Write the 408. Best effort: the socket is non-blocking (the flag is
    /// shared with tokio's descriptor) and the send buffer of a connection
    /// waiting for a request head has room.
    pub(crate) fn send(self) {
        if let Some(mut s) = self.0 {
            let _ = s.write(REQUEST_TIMEOUT);
        }
    }
}
