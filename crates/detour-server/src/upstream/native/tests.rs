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
            inner: Box::pin(exchange(H1Conn::new(near), &pool)),
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
