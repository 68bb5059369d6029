//! The native connection's reuse rule under cancellation: an exchange
//! dropped after any number of polls never leaves a half-used connection in
//! the pool, and one that completes always does.
#![allow(clippy::unwrap_used)]

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::time::sleep;

use super::{send, H1Conn};
use crate::upstream::UpstreamBody;

/// `inner`, dropped unfinished after `left` polls.
struct Limit<F> {
    inner: Pin<Box<F>>,
    left: usize,
}

impl<F: Future> Future for Limit<F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        self.left -= 1;
        self.inner.as_mut().poll(cx).map(Some)
    }
}

/// A keep-alive backend: for each request (head and 6-byte body) it
/// answers `answer-N` in three writes, a millisecond apart.
async fn backend(mut io: DuplexStream) {
    let mut buf = Vec::new();
    for n in 1.. {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                if buf.len() >= end + 4 + 6 {
                    buf.drain(..end + 4 + 6);
                    break;
                }
            }
            let mut chunk = [0u8; 512];
            match io.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        }
        let body = format!("answer-{n}");
        let wire = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        for part in wire.as_bytes().chunks(wire.len() / 3 + 1) {
            if io.write_all(part).await.is_err() {
                return;
            }
            sleep(Duration::from_millis(1)).await;
        }
    }
}

/// A POST whose 6-byte body comes in two frames, a millisecond apart.
fn request() -> Request<UpstreamBody> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let _ = tx.send(Some(Frame::data(Bytes::from_static(b"abc")))).await;
        sleep(Duration::from_millis(1)).await;
        let _ = tx.send(Some(Frame::data(Bytes::from_static(b"def")))).await;
        let _ = tx.send(None).await;
    });
    let mut req = Request::new(UpstreamBody::channel(rx, Some(6)));
    *req.method_mut() = http::Method::POST;
    req.headers_mut()
        .insert(http::header::HOST, http::HeaderValue::from_static("b"));
    req
}

/// The pool: boxed connections, as the engine's pool holds them.
#[allow(clippy::vec_box)]
type Pool = RefCell<Vec<Box<H1Conn>>>;

/// One exchange as the engine runs it: send, read the body, pool the
/// connection if it may be reused. The body, as received.
async fn exchange(conn: Box<H1Conn>, pool: &Pool) -> Vec<u8> {
    let resp = send(conn, request()).await.unwrap();
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        got.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    if let Some(c) = body.take_reusable() {
        pool.borrow_mut().push(c);
    }
    got
}

#[tokio::test(start_paused = true)]
async fn an_exchange_dropped_after_any_poll_pools_nothing_half_used() {
    let mut completed = false;
    for polls in 1..10_000 {
        let (near, far) = tokio::io::duplex(64 * 1024);
        tokio::spawn(backend(far));
        let pool = RefCell::new(Vec::new());
        let first = Limit {
            inner: Box::pin(exchange(H1Conn::new(near, true), &pool)),
            left: polls,
        }
        .await;
        let pooled = pool.borrow_mut().pop();
        match (first, pooled) {
            (None, None) => {}
            (None, Some(_)) => {
                panic!("a connection was pooled by an exchange cut after {polls} polls")
            }
            (Some(_), None) => panic!("a completed exchange did not pool its connection"),
            (Some(body), Some(mut conn)) => {
                assert_eq!(body, b"answer-1");
                // The pooled connection is clean: the next answer is the
                // next request's, whole.
                assert!(conn.is_usable());
                let again = RefCell::new(Vec::new());
                assert_eq!(exchange(conn, &again).await, b"answer-2");
                completed = true;
                println!("the exchange completes after {polls} polls");
                break;
            }
        }
    }
    assert!(completed, "the exchange never completed");
}

/// A transport that, like rustls, takes every write into a buffer of its
/// own and sends it only when flushed; and, like a slow socket, makes every
/// other flush wait a turn.
struct FlushToSend {
    inner: DuplexStream,
    held: Vec<u8>,
    stall: bool,
}

impl tokio::io::AsyncRead for FlushToSend {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for FlushToSend {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.held.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        this.stall = !this.stall;
        if this.stall && !this.held.is_empty() {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        while !this.held.is_empty() {
            let n = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, &this.held))?;
            this.held.drain(..n);
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_flush(cx)
    }
}

/// Everything `io` receives until `end` appears, then `answer`.
async fn answer_after(mut io: DuplexStream, end: &'static [u8], answer: &'static [u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !got.windows(end.len()).any(|w| w == end) {
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    let _ = io.write_all(answer).await;
    std::future::pending::<()>().await;
    got
}

/// A chunked POST: `frames`, then the end (with `trailers`), or no end at
/// all when `cut` (the client's upload cut short).
fn chunked_post(
    frames: &'static [&'static [u8]],
    trailers: Option<http::HeaderMap>,
    cut: bool,
) -> Request<UpstreamBody> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        for f in frames {
            let _ = tx.send(Some(Frame::data(Bytes::from_static(f)))).await;
            sleep(Duration::from_millis(1)).await;
        }
        if let Some(t) = trailers {
            let _ = tx.send(Some(Frame::trailers(t))).await;
        }
        if !cut {
            let _ = tx.send(None).await;
        }
    });
    let mut req = Request::new(UpstreamBody::channel(rx, None));
    *req.method_mut() = http::Method::POST;
    req.headers_mut()
        .insert(http::header::HOST, http::HeaderValue::from_static("b"));
    req
}

#[tokio::test(start_paused = true)]
async fn a_transport_that_sends_on_flush_gets_the_whole_upload() {
    let (near, far) = tokio::io::duplex(64 * 1024);
    let backend = tokio::spawn(async move {
        answer_after(
            far,
            b"0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        )
        .await
    });
    let io = FlushToSend {
        inner: near,
        held: Vec::new(),
        stall: false,
    };
    let req = chunked_post(&[b"abc", b"def"], None, false);
    let resp = tokio::time::timeout(Duration::from_secs(10), send(H1Conn::new(io, false), req))
        .await
        .expect("the upload's last bytes were flushed")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let pool = RefCell::new(Vec::new());
    let mut body = resp.into_body();
    while poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
        .await
        .is_some()
    {}
    if let Some(c) = body.take_reusable() {
        pool.borrow_mut().push(c);
    }
    assert_eq!(
        pool.borrow().len(),
        1,
        "flushed whole, the connection is reusable"
    );
    backend.abort();
}

#[tokio::test(start_paused = true)]
async fn an_upload_cut_short_after_an_early_answer_ends_the_exchange() {
    let (near, mut far) = tokio::io::duplex(64 * 1024);
    // The backend answers with a body that never ends, before the upload.
    let req = chunked_post(&[b"abc"], None, true);
    let sending = tokio::spawn(send(H1Conn::new(near, true), req));
    let mut head = [0u8; 256];
    let _ = far.read(&mut head).await.unwrap();
    far.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n")
        .await
        .unwrap();
    let resp = sending.await.unwrap().unwrap();
    let mut body = resp.into_body();
    let mut failed = false;
    for _ in 0..10 {
        match tokio::time::timeout(
            Duration::from_secs(5),
            poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)),
        )
        .await
        {
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_))) => {
                failed = true;
                break;
            }
            Ok(None) | Err(_) => break,
        }
    }
    assert!(failed, "the answer ends with an error");
    assert!(body.take_reusable().is_none());
    // The backend sees the connection closed: the request never finished.
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), far.read_to_end(&mut rest))
        .await
        .expect("the connection is closed")
        .unwrap();
    assert!(!String::from_utf8_lossy(&rest[..n]).contains("0\r\n\r\n"));
}

#[tokio::test(start_paused = true)]
async fn only_declared_trailers_allowed_in_a_trailer_are_sent() {
    let (near, mut far) = tokio::io::duplex(64 * 1024);
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = std::sync::Arc::clone(&received);
    tokio::spawn(async move {
        let mut chunk = [0u8; 1024];
        while let Ok(n @ 1..) = far.read(&mut chunk).await {
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    let mut t = http::HeaderMap::new();
    t.insert("x-sum", http::HeaderValue::from_static("9"));
    t.insert("content-length", http::HeaderValue::from_static("5"));
    t.insert("x-undeclared", http::HeaderValue::from_static("1"));
    let mut req = chunked_post(&[b"abc"], Some(t), false);
    req.headers_mut().insert(
        http::header::TRAILER,
        http::HeaderValue::from_static("x-sum, content-length"),
    );
    let sending = tokio::spawn(send(H1Conn::new(near, true), req));
    sleep(Duration::from_millis(50)).await;
    sending.abort();
    let wire = String::from_utf8(received.lock().unwrap().clone()).unwrap();
    let trailer_part = wire
        .split("\r\n0\r\n")
        .nth(1)
        .expect("the last chunk was sent");
    assert_eq!(trailer_part, "x-sum: 9\r\n\r\n", "{wire:?}");
}

/// A keep-alive backend that answers its first request with a head and a
/// body each larger than a read (`big`), and its second with a small one.
async fn big_then_small(mut io: DuplexStream, big: usize) {
    let filler = "x".repeat(big);
    let body = "b".repeat(big);
    let answers = [
        format!(
            "HTTP/1.1 200 OK\r\nx-filler: {filler}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ),
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nsmall".to_string(),
    ];
    let mut buf = Vec::new();
    for answer in answers {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut chunk = [0u8; 512];
            match io.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        }
        buf.clear();
        if io.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_pooled_connection_holds_no_read_buffer_and_heads_span_reads() {
    let big = 3 * super::conn::READ_CHUNK;
    let (near, far) = tokio::io::duplex(4 * 1024);
    tokio::spawn(big_then_small(far, big));
    let get = || {
        let mut req = Request::new(UpstreamBody::empty());
        req.headers_mut()
            .insert(http::header::HOST, http::HeaderValue::from_static("b"));
        req
    };
    let mut conn = H1Conn::new(near, true);
    for expected in [big, 5] {
        let resp = send(conn, get()).await.unwrap();
        let head_filler = resp.headers().get("x-filler").map(|v| v.len());
        assert_eq!(head_filler, (expected == big).then_some(big));
        let mut body = resp.into_body();
        let mut got = 0;
        let mut last = Bytes::new();
        while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            last = frame.unwrap().into_data().unwrap();
            got += last.len();
        }
        assert_eq!(got, expected);
        conn = body.take_reusable().expect("the connection is reusable");
        drop(body);
        // Idle in the pool, it keeps no buffer, not even a share of the one
        // its last bytes came in: a connection waiting on a backend costs no
        // read buffer either (it reads into the stack).
        assert_eq!(conn.buffer_capacity(), 0);
        assert!(
            last.is_unique(),
            "the pooled connection still shares the read buffer"
        );
    }
}
