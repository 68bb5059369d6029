//! Programmable, faulty HTTP/1.1 upstreams for testing Detour proxies.
//!
//! An [`Upstream`] is a real server on `127.0.0.1` (ephemeral port) whose [`Behavior`]
//! decides, request by request, how it answers or how it breaks: refused connections,
//! resets after the request or after N response bytes, hangs, black holes, slow heads and
//! slow bodies, answers before the request body, idle closes, status sequences with
//! `Retry-After`, echoes, huge bodies, protocol upgrades. It speaks HTTP/1.1 directly over
//! TCP rather than through hyper, so faults land exactly on the byte and the packet (RST
//! versus FIN) they claim to. It records what it read, so a test can assert which backend
//! saw which request and how many times.
//!
//! # Layout
//! - [`Upstream`]: start, inspect, change, kill and restart a fake backend.
//! - [`Behavior`]: what it does with connections and requests.
//! - [`Recorded`]: one request as the upstream read it.
//! - [`client`]: a raw client to send exact (even malformed) bytes and read responses.
//!
//! Every response carries `x-upstream: <addr>` and echoes `x-request-id`, so a test can
//! tell which backend answered and [`Upstream::count_for`] can count one request's tries.
//!
//! # Example
//! ```
//! use detour_testkit::client::RawConnection;
//! use detour_testkit::{Behavior, Upstream};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let upstream = Upstream::start(Behavior::status_sequence([503, 200])).await?;
//! let mut conn = RawConnection::connect(upstream.addr()).await?;
//! let request = b"GET / HTTP/1.1\r\nhost: test\r\nx-request-id: r1\r\n\r\n";
//!
//! conn.send(request).await?;
//! assert_eq!(conn.read_response().await?.status, 503);
//! conn.send(request).await?;
//! let retried = conn.read_response().await?;
//! assert_eq!(retried.status, 200);
//! assert_eq!(retried.header("x-upstream"), Some(upstream.addr().to_string().as_str()));
//! assert_eq!(upstream.count_for("r1"), 2);
//!
//! upstream.set_behavior(Behavior::refuse());
//! assert!(RawConnection::connect(upstream.addr()).await.is_err());
//! # Ok(())
//! # }
//! ```
#![deny(unsafe_code)] // `alloc` alone allows it, for its `GlobalAlloc`
#![warn(missing_docs)]

pub mod alloc;
mod behavior;
pub mod client;
mod connection;
pub mod etcd;
mod http1;
mod journal;
pub mod kube_api;
pub mod memory;
mod upstream;

use std::sync::{Mutex, MutexGuard, PoisonError};

pub use behavior::Behavior;
pub use journal::Recorded;
pub use upstream::Upstream;

/// Locks a mutex, ignoring poisoning: every critical section here leaves its data
/// consistent, so a panic elsewhere (a failing test) must not cascade.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
