//! A backend that closes after every byte offset of its answer, through the
//! engine on both HTTP/1.1 upstream clients: where the close falls decides
//! the commit point, and the commit point decides retry safety.
//!
//! - before the whole head: the request was sent and not answered, so a GET
//!   goes to the next backend and a POST is answered 502, delivered once;
//! - after the head, before the body's end: the answer has begun, nothing
//!   is retried, and the client gets the head and the bytes that came, then
//!   a close;
//! - at the end: the whole answer.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use detour_server::config::Http1Client;
use detour_testkit::client::send_raw;
use detour_testkit::{Behavior, Upstream};
use support::{config, get, post, shut, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0123456789";

/// A backend that reads each request whole, writes the first `cut` bytes of
/// [`ANSWER`], and closes; it counts the requests it read.
async fn cutting_backend(cut: Arc<AtomicUsize>, seen: Arc<AtomicUsize>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (cut, seen) = (cut.clone(), seen.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !request_complete(&buf) {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                seen.fetch_add(1, Ordering::SeqCst);
                let _ = s.write_all(&ANSWER[..cut.load(Ordering::SeqCst)]).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// A head, and the body its `content-length` announces.
fn request_complete(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    buf.len() >= end + 4 + len
}

/// What the client got: the status, and the body bytes after the head.
fn split(raw: &[u8]) -> (u16, Vec<u8>) {
    let status = std::str::from_utf8(&raw[9..12]).unwrap().parse().unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    (status, raw[end..].to_vec())
}

async fn every_offset(client: Http1Client) {
    let head_len = ANSWER.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let (cut, seen) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let a = cutting_backend(cut.clone(), seen.clone()).await;
    let b = Upstream::start(Behavior::ok()).await.unwrap();
    for k in 0..=ANSWER.len() {
        cut.store(k, Ordering::SeqCst);
        for is_post in [false, true] {
            seen.store(0, Ordering::SeqCst);
            let mut c = config();
            c.pool.http1_client = client;
            // A fresh proxy: its round robin starts at the cutting backend.
            let p = start(&[a, b.addr()], c);
            let id = format!("{client:?}-{k}-{is_post}");
            // The client closes after the answer, so it ends at the close.
            let req = if is_post {
                post("/", &id, "data")
            } else {
                get("/", &id)
            }
            .replacen("\r\n", "\r\nconnection: close\r\n", 1);
            let raw = send_raw(p.addr(), req.as_bytes()).await.unwrap();
            assert!(
                raw.len() > 12,
                "{client:?}, close after {k} bytes, post {is_post}: {raw:?}"
            );
            let (status, body) = split(&raw);
            let sent = seen.load(Ordering::SeqCst) + b.count_for(&id);
            let case =
                format!("{client:?}, close after {k} bytes, post {is_post}: {status} {body:?}");
            if k < head_len && is_post {
                assert_eq!((status, sent), (502, 1), "{case}");
            } else if k < head_len {
                assert_eq!((status, sent), (200, 2), "{case}");
                assert_eq!(b.count_for(&id), 1, "{case}");
            } else {
                assert_eq!((status, sent), (200, 1), "{case}");
                assert_eq!(body, &ANSWER[head_len..k], "{case}");
            }
            shut(p.handle).await;
        }
    }
}

#[tokio::test]
async fn hyper_commits_where_the_close_falls() {
    every_offset(Http1Client::Hyper).await;
}

#[tokio::test]
async fn native_commits_where_the_close_falls() {
    every_offset(Http1Client::Native).await;
}
