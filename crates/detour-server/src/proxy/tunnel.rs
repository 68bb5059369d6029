//! Byte tunnels for upgraded connections (WebSocket and friends).
//!
//! After a `101 Switching Protocols` the connection is no longer HTTP: bytes are
//! copied both ways until either side closes, the tunnel is idle for longer than
//! its idle timeout (a write that cannot go out for that long counts as idle:
//! a peer that stops reading does not hold the tunnel), or the server's
//! shutdown grace period ends. Never pooled. A tunnel keeps its client's
//! connection slot ([`ConnSlot`]) until it ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

/// A downstream connection's place under `max_connections`. The request
/// that asks for an upgrade carries it, so the tunnel that outlives the HTTP
/// connection keeps the place until it ends.
#[derive(Clone)]
pub(crate) struct ConnSlot {
    /// Held for its drop: the place is given back when the last holder goes.
    _place: Arc<dyn Send + Sync>,
}

impl ConnSlot {
    pub(crate) fn new(place: Arc<dyn Send + Sync>) -> Self {
        ConnSlot { _place: place }
    }
}

/// Counts one live tunnel for as long as it is held, so a graceful drain can
/// wait for tunnels as it waits for requests.
pub(crate) struct Live(watch::Sender<usize>);

impl Live {
    pub(crate) fn new(count: &watch::Sender<usize>) -> Self {
        count.send_modify(|n| *n += 1);
        Live(count.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Wait for both sides to finish upgrading, then copy bytes until done.
///
/// The two directions are pumped concurrently: a pump blocked writing one way
/// (a peer that does not read) never stops the other way from being read. A
/// single loop that writes one direction before reading the other can
/// deadlock against an echoing peer, with neither side's write ever timing
/// out where the client's `send_timeout` watches.
pub(crate) async fn run(
    down: OnUpgrade,
    up: OnUpgrade,
    idle: Duration,
    mut hard_stop: watch::Receiver<bool>,
) {
    let (down, up) = match tokio::join!(down, up) {
        (Ok(d), Ok(u)) => (d, u),
        (d, u) => {
            tracing::debug!(
                down_ok = d.is_ok(),
                up_ok = u.is_ok(),
                "upgrade did not complete"
            );
            return;
        }
    };
    if *hard_stop.borrow() {
        return;
    }
    let (mut down_r, mut down_w) = tokio::io::split(TokioIo::new(down));
    let (mut up_r, mut up_w) = tokio::io::split(TokioIo::new(up));
    let activity = Activity::new();
    let both = async {
        tokio::try_join!(
            pump(&mut down_r, &mut up_w, idle, &activity),
            pump(&mut up_r, &mut down_w, idle, &activity),
        )
    };
    tokio::select! {
        _ = both => {}
        () = activity.idle_for(idle) => tracing::debug!("upgraded tunnel idle, closing"),
        _ = hard_stop.changed() => {}
    }
}

/// When bytes last moved through a tunnel, either way.
struct Activity {
    start: Instant,
    /// Nanoseconds after `start` of the last read.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let n = self.start.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
        self.last.store(n, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }

    /// Completes once nothing has moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let deadline = self.last() + idle;
            tokio::time::sleep_until(deadline).await;
            if self.last() + idle <= Instant::now() {
                return;
            }
        }
    }
}

/// Copy `from` to `to` until `from` ends (then shut `to`'s write side, a
/// half-close) or either side fails.
///
/// # Errors
/// `to` failed or took no bytes within `idle`.
async fn pump<R, W>(from: &mut R, to: &mut W, idle: Duration, activity: &Activity) -> Result<(), ()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // A failed read ends this direction like an end of stream: the other
        // may still have bytes to deliver (a half-close).
        let n = from.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        activity.touch();
        if !write_within(to, &buf[..n], idle).await {
            return Err(());
        }
    }
}

/// Write `bytes` whole within `limit`: `false` when the peer failed or took
/// none of them in time.
async fn write_within<W: tokio::io::AsyncWrite + Unpin>(
    to: &mut W,
    bytes: &[u8],
    limit: Duration,
) -> bool {
    match tokio::time::timeout(limit, to.write_all(bytes)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            tracing::debug!(
                "upgraded tunnel: a peer took no bytes within the idle timeout; closing"
            );
            false
        }
    }
}
