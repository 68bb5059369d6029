//! A per-worker pool of HTTP/2 upstream connections: one multiplexed
//! connection per peer, shared by every request to it.
//!
//! Unlike the HTTP/1.1 idle pool nothing is checked out exclusively: a
//! request takes a clone of the connection's sender. A connection leaves the
//! pool once it is closed, which includes the upstream's `GOAWAY`: hyper then
//! stops taking new requests on it while the streams in flight finish, and
//! the next request opens a fresh connection.

use std::net::SocketAddr;
use std::sync::Mutex;

use detour_core::AddrMap;

use crate::upstream::dial::H2Sender;

/// Live HTTP/2 connections keyed by peer address.
#[derive(Default)]
pub(crate) struct H2Pool {
    conns: Mutex<AddrMap<H2Sender>>,
}

impl H2Pool {
    /// A sender on the live connection to `addr`, if there is one.
    pub(crate) fn checkout(&self, addr: SocketAddr) -> Option<H2Sender> {
        // Short critical section, never held across an await.
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        match conns.get(&addr) {
            Some(s) if !s.is_closed() => Some(s.clone()),
            Some(_) => {
                // Closed or told to go away: drain it out of the pool.
                conns.remove(&addr);
                None
            }
            None => None,
        }
    }

    /// Share a new connection to `addr` (unless a live one is already there,
    /// which then stays: this one serves its own request and ends).
    pub(crate) fn insert(&self, addr: SocketAddr, sender: &H2Sender) {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        match conns.get(&addr) {
            Some(s) if !s.is_closed() => {}
            _ => {
                conns.insert(addr, sender.clone());
            }
        }
    }
}
