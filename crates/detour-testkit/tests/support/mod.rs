//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::timeout;

/// No exchange in these tests should take anywhere near this long.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// Awaits `fut`, failing the test if it takes longer than [`PATIENCE`].
pub async fn soon<T>(fut: impl Future<Output = T>) -> T {
    timeout(PATIENCE, fut).await.expect("took too long")
}

/// A GET request for `path` with extra header lines (each without CRLF).
pub fn get(path: &str, headers: &[&str]) -> Vec<u8> {
    request("GET", path, headers, b"")
}

/// A request with a `Content-Length` body (none if empty) and extra header lines.
pub fn request(method: &str, path: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nhost: test\r\n");
    for h in headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    if !body.is_empty() {
        out.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// Asserts that connecting to `addr` is refused.
pub async fn assert_refused(addr: SocketAddr) {
    let err = soon(tokio::net::TcpStream::connect(addr))
        .await
        .expect_err("connect should be refused");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
}

/// Asserts that `result` failed with a connection reset.
pub fn assert_reset<T: std::fmt::Debug>(result: io::Result<T>) {
    let err = result.expect_err("expected a reset");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
}
