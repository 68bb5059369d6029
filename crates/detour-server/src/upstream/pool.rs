//! A per-worker pool of idle HTTP/1.1 upstream connections.
//!
//! Last in, first out: the most recently used connection is the least likely to
//! have been closed by the backend. A connection is dropped (not reused) once it
//! is closed, older than its idle limit, or — for a request that is not safe to
//! repeat — idle for longer than the unsafe-reuse window.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use detour_core::AddrMap;
use hyper::client::conn::http1::SendRequest;
use tokio::time::Instant;

use crate::upstream::native::H1Conn;
use crate::upstream::UpstreamBody;

/// An HTTP/1.1 request sender for one upstream connection.
pub(crate) type Sender = SendRequest<UpstreamBody>;

/// A connection that can go back to the idle pool.
pub(crate) enum PoolConn {
    /// hyper's sender for a connection its own task drives.
    Hyper(Sender),
    /// A native connection.
    Native(Box<H1Conn>),
}

struct Idle {
    sender: PoolConn,
    since: Instant,
    expires: Instant,
}

/// Idle connections keyed by peer address, oldest at the front of each
/// queue and freshest at the back.
pub(crate) struct Pool {
    idle: Mutex<AddrMap<VecDeque<Idle>>>,
    max_idle_per_peer: usize,
}

impl Pool {
    pub(crate) fn new(max_idle_per_peer: usize) -> Self {
        Pool {
            idle: Mutex::new(AddrMap::default()),
            max_idle_per_peer,
        }
    }

    /// Take the freshest usable idle connection to `addr`. With
    /// `max_idle = Some(d)`, only a connection idle for less than `d` qualifies.
    pub(crate) fn checkout(
        &self,
        addr: SocketAddr,
        max_idle: Option<Duration>,
    ) -> Option<PoolConn> {
        let now = Instant::now();
        // Short critical section, never held across an await.
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(&addr)?;
        while let Some(conn) = list.pop_back() {
            if conn.sender.is_closed() || conn.expires <= now {
                continue;
            }
            if max_idle.is_some_and(|d| now.duration_since(conn.since) >= d) {
                // Older ones lie below: keep this one for safe requests.
                list.push_back(conn);
                return None;
            }
            return Some(conn.sender);
        }
        None
    }

    /// Return a connection after its response was read to the end. It is kept
    /// for at most `keep_for`.
    pub(crate) fn checkin(&self, addr: SocketAddr, sender: PoolConn, keep_for: Duration) {
        if sender.is_closed() || keep_for.is_zero() || self.max_idle_per_peer == 0 {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(addr).or_default();
        // Prune from the old end only, so a check-in costs O(1) however many
        // connections are idle; closed ones further in are skipped (and
        // dropped) by `checkout`.
        while list
            .front()
            .is_some_and(|c| c.expires <= now || c.sender.is_closed())
        {
            list.pop_front();
        }
        if list.len() >= self.max_idle_per_peer {
            list.pop_front();
        }
        list.push_back(Idle {
            sender,
            since: now,
            expires: now + keep_for,
        });
    }
}

impl PoolConn {
    /// Whether the connection is known to be closed. hyper's task watches
    /// its connection; a native one is looked at when it is checked out
    /// ([`H1Conn::is_usable`](crate::upstream::native::H1Conn::is_usable)).
    fn is_closed(&self) -> bool {
        match self {
            PoolConn::Hyper(s) => s.is_closed(),
            PoolConn::Native(_) => false,
        }
    }
}

/// `Keep-Alive` (no constant in `http`): a constant, since `from_static`
/// outside one parses the name at every call.
pub(crate) const KEEP_ALIVE: http::HeaderName = http::HeaderName::from_static("keep-alive");

/// How long an upstream connection may stay idle: our own limit, capped below
/// the backend's advertised `Keep-Alive: timeout=N` so we never reuse a
/// connection the backend is about to close.
pub(crate) fn keep_alive_limit(ours: Duration, headers: &http::HeaderMap) -> Duration {
    let advertised = headers
        .get(KEEP_ALIVE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',')
                .filter_map(|p| p.trim().strip_prefix("timeout="))
                .find_map(|n| n.trim().parse::<u64>().ok())
        });
    match advertised {
        // Leave a margin for the time the response spent in flight.
        Some(secs) => {
            let theirs = Duration::from_secs(secs);
            ours.min(
                theirs
                    .saturating_sub(Duration::from_millis(500))
                    .max(theirs / 2),
            )
        }
        None => ours,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_header_caps_the_idle_time() {
        let mut h = http::HeaderMap::new();
        let ours = Duration::from_secs(30);
        assert_eq!(keep_alive_limit(ours, &h), ours);
        h.insert("keep-alive", "timeout=5, max=100".parse().unwrap());
        assert_eq!(keep_alive_limit(ours, &h), Duration::from_millis(4500));
        h.insert("keep-alive", "timeout=1".parse().unwrap());
        assert_eq!(keep_alive_limit(ours, &h), Duration::from_millis(500));
        h.insert("keep-alive", "timeout=0".parse().unwrap());
        assert_eq!(keep_alive_limit(ours, &h), Duration::ZERO);
    }
}
