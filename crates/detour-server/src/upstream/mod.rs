//! The upstream side: how connections are made ([`Connect`]) and kept ([`pool`]).

pub(crate) mod pool;

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Makes transport connections to upstream peers.
///
/// The engine applies the connect timeout around [`connect`](Connect::connect)
/// and speaks HTTP over what it returns. Tests plug in an in-memory connector
/// (see `detour-testkit`) to drive the engine under a paused clock.
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
