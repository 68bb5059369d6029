//! What an upstream saw: connections accepted and requests read.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::http1::{find_header, RequestHead};
use crate::lock;

/// One request as an upstream read it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Recorded {
    /// The method, e.g. `GET`.
    pub method: String,
    /// The request target as sent, e.g. `/search?q=1`.
    pub path: String,
    /// The header fields in the order received, names spelled as sent.
    pub headers: Vec<(String, String)>,
    /// Body bytes read (decoded, without chunk framing). Zero until the body has been read,
    /// and for behaviors that do not read it ([`answer_before_body`], [`blackhole`]).
    ///
    /// [`answer_before_body`]: crate::Behavior::answer_before_body
    /// [`blackhole`]: crate::Behavior::blackhole
    pub body_len: u64,
    /// When the upstream finished reading the head, so a test can tell when a backend
    /// stopped or started getting traffic relative to a fault it injected.
    pub at: Instant,
}

impl Recorded {
    /// The first value of header field `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// Counters and records, shared by the handle and the connection tasks.
#[derive(Debug)]
pub(crate) struct Journal {
    connections: AtomicUsize,
    /// Requests read so far; a watch so tests can wait for a count without polling.
    requests: watch::Sender<usize>,
    received: Mutex<Vec<Recorded>>,
}

impl Journal {
    pub(crate) fn new() -> Self {
        Journal {
            connections: AtomicUsize::new(0),
            requests: watch::Sender::new(0),
            received: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn connection_accepted(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a request whose head was just read; returns its index for
    /// [`set_body_len`](Self::set_body_len).
    pub(crate) fn record(&self, head: &RequestHead) -> usize {
        let index = {
            let mut received = lock(&self.received);
            received.push(Recorded {
                method: head.method.clone(),
                path: head.target.clone(),
                headers: head.headers.clone(),
                body_len: 0,
                at: Instant::now(),
            });
            received.len() - 1
        };
        // Counted after the record exists, so whoever sees the count finds the record.
        self.requests.send_modify(|n| *n += 1);
        index
    }

    pub(crate) fn set_body_len(&self, index: usize, len: u64) {
        if let Some(recorded) = lock(&self.received).get_mut(index) {
            recorded.body_len = len;
        }
    }

    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    pub(crate) fn requests(&self) -> usize {
        *self.requests.borrow()
    }

    pub(crate) async fn wait_for_requests(&self, n: usize) {
        let mut requests = self.requests.subscribe();
        // The sender lives as long as `self`, so `wait_for` cannot fail while we borrow it.
        let _ = requests.wait_for(|&seen| seen >= n).await;
    }

    pub(crate) fn count_for(&self, request_id: &str) -> usize {
        lock(&self.received)
            .iter()
            .filter(|r| r.header("x-request-id") == Some(request_id))
            .count()
    }

    pub(crate) fn received(&self) -> Vec<Recorded> {
        lock(&self.received).clone()
    }
}
