//! What a fake upstream does with the connections and requests it gets.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

/// What an [`Upstream`](crate::Upstream) does with each connection and request.
///
/// Pick one action with a constructor, then refine it with the modifiers
/// ([`with_header`](Behavior::with_header), [`with_body`](Behavior::with_body),
/// [`close_idle_after`](Behavior::close_idle_after),
/// [`advertise_keep_alive`](Behavior::advertise_keep_alive)). Change it on a running
/// upstream with [`Upstream::set_behavior`](crate::Upstream::set_behavior); requests whose
/// head is read after the change get the new behavior.
///
/// Every response an upstream sends carries `x-upstream: <its address>` and, if the request
/// had one, the same `x-request-id`. Unless said otherwise, the request body is read in full
/// before answering, and connections are kept alive as HTTP/1.1 says: until the client sends
/// `Connection: close` (or speaks HTTP/1.0 without keep-alive).
///
/// ```
/// use std::time::Duration;
/// use detour_testkit::Behavior;
///
/// let busy = Behavior::status(503).with_header("retry-after", "2").with_body("busy");
/// let flaky = Behavior::status_sequence([503, 503, 200]);
/// let stingy = Behavior::ok().close_idle_after(Duration::from_millis(200));
/// # let _ = (busy, flaky, stingy);
/// ```
#[derive(Clone, Debug)]
pub struct Behavior {
    pub(crate) action: Action,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Option<Bytes>,
    pub(crate) idle_close: Option<Duration>,
    pub(crate) racy_idle_close: Option<Duration>,
    pub(crate) keep_alive_hint: Option<u64>,
    pub(crate) healthy_path: Option<String>,
    pub(crate) share_seed: u64,
}

/// The one thing a behavior does per request. See the constructors for each meaning.
#[derive(Clone, Debug)]
pub(crate) enum Action {
    Reply(u16),
    Sequence(Arc<[u16]>),
    Share { status: u16, percent: u8 },
    SlowShare { delay: Duration, percent: u8 },
    Refuse,
    ResetAfterRequest,
    ResetAfterBytes(usize),
    Hang,
    Blackhole,
    Slow(Duration),
    SlowBody(Duration),
    AnswerBeforeBody(u16),
    Echo,
    Large(u64),
    Upgrade,
}

impl Default for Behavior {
    /// [`Behavior::ok`].
    fn default() -> Self {
        Behavior::ok()
    }
}

impl Behavior {
    fn new(action: Action) -> Self {
        Behavior {
            action,
            headers: Vec::new(),
            body: None,
            idle_close: None,
            racy_idle_close: None,
            keep_alive_hint: None,
            healthy_path: None,
            share_seed: 0,
        }
    }

    /// Answer `200 OK` with the body `ok from <addr>` (see [`with_body`](Self::with_body)),
    /// framed by `Content-Length`.
    pub fn ok() -> Self {
        Behavior::status(200)
    }

    /// Answer `status`, with the body `<status> from <addr>` (`ok from <addr>` for 200)
    /// unless [`with_body`](Self::with_body) says otherwise. 1xx, 204 and 304 responses
    /// have no body. Add fields such as `Retry-After` with
    /// [`with_header`](Self::with_header).
    pub fn status(status: u16) -> Self {
        Behavior::new(Action::Reply(status))
    }

    /// Answer the Nth request with the Nth status, then keep repeating the last one.
    ///
    /// Requests are counted across all connections, from the moment this behavior was
    /// installed, in the order their heads were read. An empty sequence answers 200.
    pub fn status_sequence(statuses: impl Into<Vec<u16>>) -> Self {
        Behavior::new(Action::Sequence(statuses.into().into()))
    }

    /// Answer `status` to `percent` % of requests and `200` to the others.
    /// Which requests fail is decided by a fixed pseudo-random sequence over
    /// the requests' order of arrival (counted as for
    /// [`status_sequence`](Self::status_sequence)), so a run is repeatable
    /// and the failures do not come in a regular pattern. `percent` above
    /// 100 counts as 100.
    pub fn fail_share(status: u16, percent: u8) -> Self {
        Behavior::new(Action::Share {
            status,
            percent: percent.min(100),
        })
    }

    /// Answer `200`, after `delay` to `percent` % of requests and at once to
    /// the others: a latency tail. Which requests are slow is decided as for
    /// [`fail_share`](Self::fail_share).
    pub fn slow_share(percent: u8, delay: Duration) -> Self {
        Behavior::new(Action::SlowShare {
            delay,
            percent: percent.min(100),
        })
    }

    /// Do not listen: connection attempts are refused.
    ///
    /// Installed on a running upstream, it closes the listening socket; connections already
    /// open stay open, but a request on one of them is answered by a reset. Installing an
    /// answering behavior afterwards listens again on the same address.
    pub fn refuse() -> Self {
        Behavior::new(Action::Refuse)
    }

    /// Read the whole request, then reset the connection (the client sees `ECONNRESET`).
    pub fn reset_after_request() -> Self {
        Behavior::new(Action::ResetAfterRequest)
    }

    /// Read the whole request, send the first `n` bytes of a `200` response whose
    /// `Content-Length` promises `max(n, 1000)` bytes of `x`, then reset the connection.
    ///
    /// `n` counts head bytes too, so a small `n` cuts the head itself. The client receives
    /// all `n` bytes before the reset only if they fit in the socket buffers (keep `n`
    /// under 64 KiB); a reset drops whatever is still queued.
    pub fn reset_after_bytes(n: usize) -> Self {
        Behavior::new(Action::ResetAfterBytes(n))
    }

    /// Read the whole request and never answer; the connection stays open until the
    /// upstream is killed or dropped.
    pub fn hang() -> Self {
        Behavior::new(Action::Hang)
    }

    /// Accept connections but never read from them nor answer. Requests are not counted,
    /// since their heads are never read.
    pub fn blackhole() -> Self {
        Behavior::new(Action::Blackhole)
    }

    /// Read the whole request, wait `delay`, then answer like [`ok`](Self::ok).
    pub fn slow(delay: Duration) -> Self {
        Behavior::new(Action::Slow(delay))
    }

    /// Read the whole request and send the `200` head at once, then the body (as for
    /// [`ok`](Self::ok)) in four chunked-encoding pieces, waiting `chunk_delay` before each,
    /// so the whole body takes four times `chunk_delay`.
    pub fn slow_body(chunk_delay: Duration) -> Self {
        Behavior::new(Action::SlowBody(chunk_delay))
    }

    /// As soon as the request head is read, answer `status` with `Connection: close`
    /// without reading the body (nor sending `100 Continue`), then close.
    ///
    /// The upstream keeps discarding what the client still sends for a moment before
    /// closing, so the client reads the answer rather than a reset.
    pub fn answer_before_body(status: u16) -> Self {
        Behavior::new(Action::AnswerBeforeBody(status))
    }

    /// Answer `200` with the request body sent back as it arrives, never holding all of it:
    /// with the request's `Content-Length` if it had one, chunked if it was chunked.
    ///
    /// The upstream stops reading while the client is not reading the echo, so a client
    /// must read and write at the same time for bodies larger than the socket buffers.
    pub fn echo() -> Self {
        Behavior::new(Action::Echo)
    }

    /// Answer `200` with a body of `len` bytes of `x`, generated as it is written (memory
    /// use does not grow with `len`), framed by `Content-Length`.
    pub fn large(len: u64) -> Self {
        Behavior::new(Action::Large(len))
    }

    /// Accept protocol upgrades: a request carrying `Upgrade: <protocol>` gets
    /// `101 Switching Protocols` with `Connection: upgrade` and the same `Upgrade`, and from
    /// then on every byte received is sent back until the client closes its side. Requests
    /// without `Upgrade` are answered like [`ok`](Self::ok).
    pub fn upgrade() -> Self {
        Behavior::new(Action::Upgrade)
    }

    /// Add a header field to every response this behavior sends (the name and value are
    /// written as given, unchecked).
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Replace the default body of [`ok`](Self::ok), [`status`](Self::status),
    /// [`status_sequence`](Self::status_sequence), [`slow`](Self::slow),
    /// [`slow_body`](Self::slow_body), [`answer_before_body`](Self::answer_before_body) and
    /// the non-upgrade answers of [`upgrade`](Self::upgrade). Other behaviors ignore it.
    #[must_use]
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Close a connection with a clean FIN once it has waited `idle` for a request without
    /// receiving a byte of one, whether before its first request or between two.
    #[must_use]
    pub fn close_idle_after(mut self, idle: Duration) -> Self {
        self.idle_close = Some(idle);
        self
    }

    /// Model the keep-alive race deterministically: a request arriving on a connection
    /// that has been idle for at least `idle` is met with a reset, unread, as if the
    /// server's idle close had crossed the request on the wire. The request is not
    /// recorded (the server never processed it). A client that sends a non-idempotent
    /// request on such a connection cannot know whether it was processed.
    #[must_use]
    pub fn racy_idle_close(mut self, idle: Duration) -> Self {
        self.racy_idle_close = Some(idle);
        self
    }

    /// Send `Keep-Alive: timeout=<secs>` on every response that keeps the connection open.
    ///
    /// This only announces a timeout; it does not enforce one. Combine it with
    /// [`close_idle_after`](Self::close_idle_after) to keep the promise, or not, to test
    /// what a client does with a server that closes earlier than it said.
    #[must_use]
    pub fn advertise_keep_alive(mut self, secs: u64) -> Self {
        self.keep_alive_hint = Some(secs);
        self
    }

    /// Answer `200` at once to every request whose path starts with `prefix`,
    /// whatever the behavior does with the others: a health check that
    /// passes while the backend fails its real traffic (a bad deploy whose
    /// health endpoint still works).
    pub fn healthy_on(mut self, prefix: impl Into<String>) -> Self {
        self.healthy_path = Some(prefix.into());
        self
    }

    /// Pick a share's requests ([`fail_share`](Self::fail_share),
    /// [`slow_share`](Self::slow_share)) from sequence `seed` instead of
    /// sequence 0. Backends given the same share and the same seed pick the
    /// same request numbers: under round robin they would all fail (or
    /// stall) the same round of requests together.
    pub fn seeded(mut self, seed: u64) -> Self {
        self.share_seed = seed;
        self
    }

    /// Whether this behavior refuses connections (see [`refuse`](Self::refuse)).
    pub fn refuses(&self) -> bool {
        matches!(self.action, Action::Refuse)
    }
}

/// A behavior as installed on an upstream, with the state it keeps across requests.
/// Installing a behavior again starts that state afresh.
#[derive(Debug)]
pub(crate) struct Installed {
    pub(crate) behavior: Behavior,
    sequence_position: AtomicUsize,
}

impl Installed {
    pub(crate) fn new(behavior: Behavior) -> Arc<Self> {
        Arc::new(Installed {
            behavior,
            sequence_position: AtomicUsize::new(0),
        })
    }

    /// The status of the next request under [`Behavior::fail_share`].
    pub(crate) fn next_in_share(&self, status: u16, percent: u8) -> u16 {
        if self.next_is_in(percent) {
            status
        } else {
            200
        }
    }

    /// Whether the next request is among the `percent` % a share picks.
    pub(crate) fn next_is_in(&self, percent: u8) -> bool {
        let n = self.sequence_position.fetch_add(1, Ordering::Relaxed) as u64;
        // splitmix64 of the request's number (and the seed): uniform, and
        // the same each run.
        let seed = self.behavior.share_seed.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let mut z = (n ^ seed)
            .wrapping_add(1)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        z % 100 < u64::from(percent)
    }

    /// The status of the next request under a status sequence.
    pub(crate) fn next_in_sequence(&self, statuses: &[u16]) -> u16 {
        let n = self.sequence_position.fetch_add(1, Ordering::Relaxed);
        statuses.get(n).or(statuses.last()).copied().unwrap_or(200)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_repeats_its_last_status() {
        let installed = Installed::new(Behavior::status_sequence([503, 503, 200]));
        let Action::Sequence(statuses) = installed.behavior.action.clone() else {
            panic!("not a sequence");
        };
        let seen: Vec<u16> = (0..5)
            .map(|_| installed.next_in_sequence(&statuses))
            .collect();
        assert_eq!(seen, [503, 503, 200, 200, 200]);
    }

    #[test]
    fn empty_sequence_answers_200() {
        let installed = Installed::new(Behavior::status_sequence(Vec::new()));
        assert_eq!(installed.next_in_sequence(&[]), 200);
    }

    #[test]
    fn modifiers_accumulate() {
        let b = Behavior::status(503)
            .with_header("retry-after", "2")
            .with_body("busy")
            .close_idle_after(Duration::from_millis(5))
            .advertise_keep_alive(3);
        assert_eq!(b.headers, [("retry-after".to_owned(), "2".to_owned())]);
        assert_eq!(b.body.as_deref(), Some(&b"busy"[..]));
        assert_eq!(b.idle_close, Some(Duration::from_millis(5)));
        assert_eq!(b.keep_alive_hint, Some(3));
        assert!(!b.refuses());
        assert!(Behavior::refuse().refuses());
    }

    #[test]
    fn a_fail_share_fails_about_its_share() {
        let installed = Installed::new(Behavior::fail_share(503, 80));
        let failed = (0..10_000)
            .filter(|_| installed.next_in_share(503, 80) == 503)
            .count();
        assert!((7_700..8_300).contains(&failed), "{failed} of 10000");
        let never = Installed::new(Behavior::fail_share(503, 0));
        assert!((0..100).all(|_| never.next_in_share(503, 0) == 200));
        // Another seed, another pick of about the same share.
        let picks = |seed| {
            let i = Installed::new(Behavior::fail_share(503, 50).seeded(seed));
            (0..64).map(|_| i.next_is_in(50)).collect::<Vec<_>>()
        };
        assert_eq!(picks(0), picks(0));
        assert_ne!(picks(0), picks(1));
    }
}
