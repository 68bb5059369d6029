//! One accepted connection: read requests, act out the behavior, and end the connection
//! the way the behavior says (FIN, RST, or silence).

use std::future::pending;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep, timeout};

use crate::behavior::{Action, Installed};
use crate::http1::{
    self, BodyKind, BodyReader, Conn, HeadBuilder, ReadError, RequestHead, LAST_CHUNK,
};
use crate::journal::Journal;

/// How long a closing connection keeps reading, and discarding, what the client still
/// sends. Closing a socket with unread bytes sends RST instead of FIN, and a RST can make
/// the client drop a response it has not read yet (RFC 9112 §9.6, "lingering close").
const LINGER: Duration = Duration::from_secs(1);

/// Pieces a [`Behavior::slow_body`](crate::Behavior::slow_body) body is cut into.
const SLOW_BODY_PIECES: usize = 4;

/// The least body length a [`Behavior::reset_after_bytes`](crate::Behavior::reset_after_bytes) response announces.
const TRUNCATED_BODY_LEN: usize = 1000;

/// Body bytes for generated bodies, written again and again instead of allocated.
static FILLER: [u8; 16 * 1024] = [b'x'; 16 * 1024];

/// How a connection ends.
#[derive(Debug)]
enum Stop {
    /// Clean close: FIN, after a lingering read of what the client still sends.
    Close,
    /// Abortive close: RST.
    Reset,
    /// The client left or the socket failed: just close.
    Drop,
}

impl From<io::Error> for Stop {
    fn from(_: io::Error) -> Self {
        Stop::Drop
    }
}

impl From<ReadError> for Stop {
    fn from(_: ReadError) -> Self {
        Stop::Drop
    }
}

/// What a connection task needs of the upstream that accepted it. The
/// upstream implements it, so connections do not depend on the upstream's
/// own state type (and the upstream, which spawns them, on connections only).
pub(crate) trait Site: Send + Sync {
    /// The address the upstream listens on.
    fn addr(&self) -> SocketAddr;
    /// Where requests and connections are recorded.
    fn journal(&self) -> &Journal;
    /// The behavior for a request whose head was just read.
    fn installed(&self) -> Arc<Installed>;
}

/// Serves one connection until the behavior ends it, the client leaves, or the upstream
/// is killed (`kill` changes), which resets it wherever it is.
pub(crate) async fn run(stream: TcpStream, shared: Arc<dyn Site>, mut kill: watch::Receiver<u64>) {
    // Faults are placed at byte boundaries; Nagle's algorithm would blur them.
    let _ = stream.set_nodelay(true);
    let mut conn = Conn::new(stream);
    let stop = tokio::select! {
        _ = kill.changed() => Stop::Reset,
        stop = serve(&mut conn, &*shared) => stop,
    };
    let mut stream = conn.into_inner();
    match stop {
        Stop::Reset => reset(stream),
        Stop::Drop => drop(stream),
        Stop::Close => {
            let killed = tokio::select! {
                _ = kill.changed() => true,
                () = linger_close(&mut stream) => false,
            };
            if killed {
                reset(stream);
            }
        }
    }
}

/// Closes with RST: with a zero linger time, `close` drops unsent data and aborts.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Sends FIN, then reads and discards until the client closes too, for at most [`LINGER`].
async fn linger_close(stream: &mut TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut discard = vec![0; 8 * 1024];
    let _ = timeout(LINGER, async {
        while matches!(stream.read(&mut discard).await, Ok(n) if n > 0) {}
    })
    .await;
}

async fn serve(conn: &mut Conn<TcpStream>, shared: &dyn Site) -> Stop {
    loop {
        if let Err(stop) = serve_one(conn, shared).await {
            return stop;
        }
    }
}

/// Waits for a request and answers it; `Ok` means the connection is ready for the next.
async fn serve_one(conn: &mut Conn<TcpStream>, shared: &dyn Site) -> Result<(), Stop> {
    let waiting = shared.installed();
    if matches!(waiting.behavior.action, Action::Blackhole) {
        return pending().await;
    }
    // Bytes of the next request already buffered mean the connection is not idle.
    if let Some(idle) = waiting.behavior.idle_close.filter(|_| conn.buf.is_empty()) {
        match timeout(idle, conn.fill()).await {
            Err(_) | Ok(Ok(0)) => return Err(Stop::Close),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
    }
    if let Some(racy) = waiting
        .behavior
        .racy_idle_close
        .filter(|_| conn.buf.is_empty())
    {
        let since = tokio::time::Instant::now();
        match conn.fill().await {
            Ok(0) => return Err(Stop::Close),
            Ok(_) if since.elapsed() >= racy => return Err(Stop::Reset),
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let head = match conn.read_request_head().await {
        Ok(Some(head)) => head,
        Ok(None) => return Err(Stop::Close),
        Err(ReadError::Io(e)) => return Err(e.into()),
        Err(ReadError::Malformed(why)) => return Err(bad_request(conn, shared, &why).await),
    };
    let record = shared.journal().record(&head);
    let installed = shared.installed();
    Exchange {
        shared,
        installed: &installed,
        head: &head,
        record,
    }
    .run(conn)
    .await
}

/// Answers a request that could not be parsed: `400`, then close.
async fn bad_request(conn: &mut Conn<TcpStream>, shared: &dyn Site, why: &str) -> Stop {
    let mut head = HeadBuilder::new(400);
    head.header("x-upstream", shared.addr())
        .header("content-length", why.len())
        .header("connection", "close");
    let mut response = head.finish();
    response.extend_from_slice(why.as_bytes());
    match conn.io.write_all(&response).await {
        Ok(()) => Stop::Close,
        Err(e) => e.into(),
    }
}

/// How a response body is delimited on the wire.
#[derive(Clone, Copy, Debug)]
enum Framing {
    Length(u64),
    Chunked,
    /// Delimited by closing the connection: chunked bodies for HTTP/1.0 clients.
    UntilClose,
    /// No body and no framing fields: 1xx, 204 and 304 responses.
    None,
}

/// Where a response body goes once its head is written.
#[derive(Debug)]
struct Sink {
    framing: Framing,
    /// HEAD responses announce a body but do not send it.
    suppress: bool,
    /// Close the connection after this response.
    close: bool,
}

impl Sink {
    async fn write(&self, io: &mut TcpStream, data: &[u8]) -> io::Result<()> {
        match self.framing {
            _ if self.suppress => Ok(()),
            Framing::None => Ok(()),
            Framing::Chunked => http1::write_chunk(io, data).await,
            Framing::Length(_) | Framing::UntilClose => io.write_all(data).await,
        }
    }

    /// Ends the body; `Ok` if the connection stays open for another request.
    async fn finish(self, io: &mut TcpStream) -> Result<(), Stop> {
        if matches!(self.framing, Framing::Chunked) && !self.suppress {
            io.write_all(LAST_CHUNK).await?;
        }
        io.flush().await?;
        if self.close {
            Err(Stop::Close)
        } else {
            Ok(())
        }
    }
}

/// One request being answered.
struct Exchange<'a> {
    shared: &'a dyn Site,
    installed: &'a Installed,
    head: &'a RequestHead,
    /// Index of this request in the journal.
    record: usize,
}

impl Exchange<'_> {
    async fn run(&self, conn: &mut Conn<TcpStream>) -> Result<(), Stop> {
        let behavior = &self.installed.behavior;
        if let Some(prefix) = &behavior.healthy_path {
            if self.head.target.starts_with(prefix.as_str()) {
                self.read_body(conn).await?;
                return self.reply(conn, 200, false).await;
            }
        }
        match &behavior.action {
            Action::Share { status, percent } => {
                let status = self.installed.next_in_share(*status, *percent);
                self.read_body(conn).await?;
                self.reply(conn, status, false).await
            }
            Action::SlowShare { delay, percent } => {
                let slow = self.installed.next_is_in(*percent);
                self.read_body(conn).await?;
                if slow {
                    sleep(*delay).await;
                }
                self.reply(conn, 200, false).await
            }
            Action::Reply(status) => {
                self.read_body(conn).await?;
                self.reply(conn, *status, false).await
            }
            Action::Sequence(statuses) => {
                // Numbered when the head is read, the order requests arrived in.
                let status = self.installed.next_in_sequence(statuses);
                self.read_body(conn).await?;
                self.reply(conn, status, false).await
            }
            // Refuse installed while this connection was open: no answer, a reset.
            Action::Refuse => Err(Stop::Reset),
            Action::ResetAfterRequest => {
                self.read_body(conn).await?;
                Err(Stop::Reset)
            }
            Action::ResetAfterBytes(n) => {
                self.read_body(conn).await?;
                self.truncated(conn, *n).await
            }
            Action::Hang => {
                self.read_body(conn).await?;
                pending().await
            }
            Action::Blackhole => pending().await,
            Action::Slow(delay) => {
                self.read_body(conn).await?;
                sleep(*delay).await;
                self.reply(conn, 200, false).await
            }
            Action::SlowBody(delay) => {
                self.read_body(conn).await?;
                self.slow_body(conn, *delay).await
            }
            Action::AnswerBeforeBody(status) => self.reply(conn, *status, true).await,
            Action::Echo => self.echo(conn).await,
            Action::Large(len) => {
                self.read_body(conn).await?;
                self.large(conn, *len).await
            }
            Action::Upgrade => match self.head.header("upgrade") {
                Some(protocol) => self.upgrade(conn, protocol).await,
                None => {
                    self.read_body(conn).await?;
                    self.reply(conn, 200, false).await
                }
            },
        }
    }

    /// Prepares to read the body: refuses bad framing, sends `100 Continue` if awaited.
    async fn open_body(&self, conn: &mut Conn<TcpStream>) -> Result<BodyReader, Stop> {
        let kind = match self.head.body_kind() {
            Ok(kind) => kind,
            Err(ReadError::Malformed(why)) => {
                return Err(bad_request(conn, self.shared, &why).await)
            }
            Err(ReadError::Io(e)) => return Err(e.into()),
        };
        if kind != BodyKind::Empty && self.head.expects_continue() {
            conn.io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        Ok(BodyReader::new(kind))
    }

    /// Reads and discards the whole body, recording its length.
    async fn read_body(&self, conn: &mut Conn<TcpStream>) -> Result<(), Stop> {
        let mut body = self.open_body(conn).await?;
        match body.drain(conn).await {
            Ok(len) => {
                self.shared.journal().set_body_len(self.record, len);
                Ok(())
            }
            Err(ReadError::Malformed(why)) => Err(bad_request(conn, self.shared, &why).await),
            Err(ReadError::Io(e)) => Err(e.into()),
        }
    }

    /// The response head: status line, `x-upstream`, the echoed `x-request-id`, the
    /// behavior's own fields, then framing and connection management. Returns it with the
    /// sink for the body.
    fn head(&self, status: u16, framing: Framing, force_close: bool) -> (Vec<u8>, Sink) {
        let framing = match framing {
            _ if http1::is_bodiless(status) => Framing::None,
            // HTTP/1.0 has no chunked coding (RFC 9112 §7).
            Framing::Chunked if self.head.minor_version == 0 => Framing::UntilClose,
            framing => framing,
        };
        let close =
            force_close || self.head.wants_close() || matches!(framing, Framing::UntilClose);
        let mut head = self.common_head(status);
        match framing {
            Framing::Length(len) => {
                head.header("content-length", len);
            }
            Framing::Chunked => {
                head.header("transfer-encoding", "chunked");
            }
            Framing::UntilClose | Framing::None => {}
        }
        if close {
            head.header("connection", "close");
        } else {
            if self.head.minor_version == 0 {
                head.header("connection", "keep-alive");
            }
            if let Some(secs) = self.installed.behavior.keep_alive_hint {
                head.header("keep-alive", format_args!("timeout={secs}"));
            }
        }
        let sink = Sink {
            framing,
            suppress: self.head.method.eq_ignore_ascii_case("HEAD"),
            close,
        };
        (head.finish(), sink)
    }

    /// Status line and the fields every response of this exchange carries.
    fn common_head(&self, status: u16) -> HeadBuilder {
        let mut head = HeadBuilder::new(status);
        head.header("x-upstream", self.shared.addr());
        if let Some(id) = self.head.header("x-request-id") {
            head.header("x-request-id", id);
        }
        for (name, value) in &self.installed.behavior.headers {
            head.header(name, value);
        }
        head
    }

    async fn start(
        &self,
        conn: &mut Conn<TcpStream>,
        status: u16,
        framing: Framing,
    ) -> Result<Sink, Stop> {
        let (head, sink) = self.head(status, framing, false);
        conn.io.write_all(&head).await?;
        Ok(sink)
    }

    /// The configured body, or `ok from <addr>` / `<status> from <addr>`.
    fn body_text(&self, status: u16) -> Bytes {
        self.installed.behavior.body.clone().unwrap_or_else(|| {
            let text = match status {
                200 => format!("ok from {}", self.shared.addr()),
                _ => format!("{status} from {}", self.shared.addr()),
            };
            Bytes::from(text)
        })
    }

    /// A whole response with a `Content-Length` body, sent in one write.
    async fn reply(
        &self,
        conn: &mut Conn<TcpStream>,
        status: u16,
        force_close: bool,
    ) -> Result<(), Stop> {
        let body = self.body_text(status);
        let (mut response, sink) =
            self.head(status, Framing::Length(body.len() as u64), force_close);
        if !sink.suppress && !matches!(sink.framing, Framing::None) {
            response.extend_from_slice(&body);
        }
        conn.io.write_all(&response).await?;
        sink.finish(&mut conn.io).await
    }

    /// The first `n` bytes of a response promising more, then a reset.
    async fn truncated(&self, conn: &mut Conn<TcpStream>, n: usize) -> Result<(), Stop> {
        let body_len = n.max(TRUNCATED_BODY_LEN);
        let (head, _sink) = self.head(200, Framing::Length(body_len as u64), false);
        let from_head = n.min(head.len());
        conn.io.write_all(&head[..from_head]).await?;
        write_filler(&mut conn.io, (n - from_head) as u64).await?;
        conn.io.flush().await?;
        Err(Stop::Reset)
    }

    async fn slow_body(&self, conn: &mut Conn<TcpStream>, delay: Duration) -> Result<(), Stop> {
        let body = self.body_text(200);
        let sink = self.start(conn, 200, Framing::Chunked).await?;
        let piece = body.len().div_ceil(SLOW_BODY_PIECES).max(1);
        for part in body.chunks(piece) {
            sleep(delay).await;
            sink.write(&mut conn.io, part).await?;
        }
        sink.finish(&mut conn.io).await
    }

    /// Streams the request body back as it arrives.
    async fn echo(&self, conn: &mut Conn<TcpStream>) -> Result<(), Stop> {
        let mut body = self.open_body(conn).await?;
        let framing = match body.kind() {
            BodyKind::Empty => Framing::Length(0),
            BodyKind::Length(len) => Framing::Length(len),
            BodyKind::Chunked | BodyKind::UntilClose => Framing::Chunked,
        };
        let sink = self.start(conn, 200, framing).await?;
        // Once the head is out, a broken body can only end the connection (`From`).
        while let Some(chunk) = body.next_chunk(conn).await? {
            sink.write(&mut conn.io, &chunk).await?;
        }
        self.shared
            .journal()
            .set_body_len(self.record, body.bytes_read());
        sink.finish(&mut conn.io).await
    }

    async fn large(&self, conn: &mut Conn<TcpStream>, len: u64) -> Result<(), Stop> {
        let sink = self.start(conn, 200, Framing::Length(len)).await?;
        if !sink.suppress {
            write_filler(&mut conn.io, len).await?;
        }
        sink.finish(&mut conn.io).await
    }

    /// `101 Switching Protocols`, then everything received is sent back until EOF.
    async fn upgrade(&self, conn: &mut Conn<TcpStream>, protocol: &str) -> Result<(), Stop> {
        self.read_body(conn).await?;
        let mut head = self.common_head(101);
        head.header("connection", "upgrade")
            .header("upgrade", protocol);
        conn.io.write_all(&head.finish()).await?;
        // Bytes that came right behind the request head belong to the new protocol.
        if !conn.buf.is_empty() {
            let early = conn.buf.split();
            conn.io.write_all(&early).await?;
        }
        let (mut from_client, mut to_client) = conn.io.split();
        tokio::io::copy(&mut from_client, &mut to_client).await?;
        Err(Stop::Close)
    }
}

/// Writes `len` bytes of [`FILLER`].
async fn write_filler(io: &mut TcpStream, mut len: u64) -> io::Result<()> {
    while len > 0 {
        let n = usize::try_from(len).map_or(FILLER.len(), |l| l.min(FILLER.len()));
        io.write_all(&FILLER[..n]).await?;
        len -= n as u64;
    }
    Ok(())
}
