//! A raw HTTP/1.1 client for tests: sends bytes exactly as given (malformed ones too) and
//! reads responses byte-exactly, so a test sees what a server really sent.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use crate::http1::{find_header, BodyReader, Conn, ResponseHead};

/// How long [`send_raw`] waits for the server to close.
pub const SEND_RAW_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `addr`, writes `bytes`, then reads until the server closes, or
/// [`SEND_RAW_TIMEOUT`] passes, and returns everything read.
///
/// A server that keeps the connection open makes this wait the whole timeout: send
/// `Connection: close` to get an answer quickly.
///
/// ```
/// use detour_testkit::{client, Behavior, Upstream};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let upstream = Upstream::start(Behavior::ok()).await?;
/// let answer = client::send_raw(upstream.addr(), b"NONSENSE\r\n\r\n").await?;
/// assert!(answer.starts_with(b"HTTP/1.1 400 "));
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// If connecting or writing fails, or reading fails before the end (for instance
/// `ConnectionReset`).
pub async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> io::Result<Vec<u8>> {
    let deadline = Instant::now() + SEND_RAW_TIMEOUT;
    let mut conn = RawConnection::connect(addr).await?;
    conn.send(bytes).await?;
    loop {
        match timeout_at(deadline, conn.conn.fill()).await {
            Ok(Ok(0)) | Err(_) => return Ok(conn.conn.buf.to_vec()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// A response as received.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// The header fields in order, names spelled as sent.
    pub headers: Vec<(String, String)>,
    /// The body, with chunked framing removed.
    pub body: Vec<u8>,
}

impl RawResponse {
    fn without_body(head: ResponseHead) -> Self {
        RawResponse {
            status: head.status,
            headers: head.headers,
            body: Vec::new(),
        }
    }

    /// The first value of header field `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// One client connection that writes raw bytes and reads responses one at a time, for
/// keep-alive and upgrade conversations.
///
/// ```
/// use detour_testkit::{client::RawConnection, Behavior, Upstream};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let upstream = Upstream::start(Behavior::ok()).await?;
/// let mut conn = RawConnection::connect(upstream.addr()).await?;
/// for _ in 0..2 {
///     conn.send(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n").await?;
///     assert_eq!(conn.read_response().await?.status, 200);
/// }
/// assert_eq!(upstream.connections(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct RawConnection {
    conn: Conn<TcpStream>,
}

impl RawConnection {
    /// Connects to `addr`.
    ///
    /// # Errors
    /// If the connection fails (`ConnectionRefused` when nothing listens).
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(RawConnection {
            conn: Conn::new(stream),
        })
    }

    /// Writes `bytes` as they are.
    ///
    /// # Errors
    /// If the write fails.
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.conn.io.write_all(bytes).await
    }

    /// Closes the sending side (FIN); reading goes on.
    ///
    /// # Errors
    /// If the shutdown fails.
    pub async fn shutdown_write(&mut self) -> io::Result<()> {
        self.conn.io.shutdown().await
    }

    /// Reads the next final response, head and body, skipping `100 Continue` and other
    /// interim responses (but not `101`, which ends HTTP on this connection). The body is
    /// delimited as the head says; for the response to a HEAD request use
    /// [`read_response_head`](Self::read_response_head) instead.
    ///
    /// # Errors
    /// `UnexpectedEof` if the server closes first, `InvalidData` if it sends something
    /// that is not HTTP/1.1, or the socket's error (such as `ConnectionReset`).
    pub async fn read_response(&mut self) -> io::Result<RawResponse> {
        let head = self.read_final_head().await?;
        let mut body = BodyReader::new(head.body_kind()?);
        let mut response = RawResponse::without_body(head);
        while let Some(chunk) = body.next_chunk(&mut self.conn).await? {
            response.body.extend_from_slice(&chunk);
        }
        Ok(response)
    }

    /// Reads the next final response's head only (the body stays unread), skipping
    /// interim responses other than `101`.
    ///
    /// # Errors
    /// As [`read_response`](Self::read_response).
    pub async fn read_response_head(&mut self) -> io::Result<RawResponse> {
        Ok(RawResponse::without_body(self.read_final_head().await?))
    }

    async fn read_final_head(&mut self) -> io::Result<ResponseHead> {
        loop {
            let head = self
                .conn
                .read_response_head()
                .await?
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            if head.status == 101 || !(100..200).contains(&head.status) {
                return Ok(head);
            }
        }
    }

    /// Reads exactly `n` bytes (after any response already read).
    ///
    /// # Errors
    /// `UnexpectedEof` if the server closes first, or the socket's error.
    pub async fn read_exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.conn.buf.len() < n {
            if self.conn.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(self.conn.buf.split_to(n).to_vec())
    }

    /// Reads everything until the server closes: `Ok` with an empty vector means the server
    /// closed cleanly right after the last response.
    ///
    /// # Errors
    /// The socket's error, such as `ConnectionReset` when the server aborts.
    pub async fn read_to_end(&mut self) -> io::Result<Vec<u8>> {
        while self.conn.fill().await? > 0 {}
        Ok(self.conn.buf.split().to_vec())
    }
}
