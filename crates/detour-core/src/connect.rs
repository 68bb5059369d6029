//! How transport connections to upstreams are made.
//!
//! The trait lives here, in the vocabulary crate, so that everything that
//! dials a backend — the server's engine, `detour-health`'s active checks —
//! takes the same connector, and tests can swap in an in-memory one
//! (`detour-testkit`'s `MemoryConnector`) to run under a paused clock.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Makes transport connections to upstream peers.
///
/// Callers apply their own timeout around [`connect`](Connect::connect) and
/// speak HTTP over what it returns.
pub trait Connect: Send + Sync + 'static {
    /// The connection type.
    type Io: AsyncRead + AsyncWrite + Send + Unpin + 'static;

    /// Open a connection to `addr`.
    ///
    /// # Errors
    /// The I/O error of the attempt; `ConnectionRefused` is reported as a
    /// refused connection, anything else as a failed connect.
    fn connect(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

/// The default connector: plain TCP with `TCP_NODELAY`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpConnector;

impl Connect for TcpConnector {
    type Io = TcpStream;

    async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}
