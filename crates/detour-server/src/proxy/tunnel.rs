//! Byte tunnels for upgraded connections (WebSocket and friends).
//!
//! After a `101 Switching Protocols` the connection is no longer HTTP: bytes are
//! copied both ways until either side closes, the tunnel is idle for longer than
//! its idle timeout (a write that cannot go out for that long counts as idle:
//! a peer that stops reading does not hold the tunnel), or the server's
//! shutdown grace period ends. Never pooled. A tunnel keeps its client's
//! connection slot ([`ConnSlot`]) until it ends.

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
    let mut down = TokioIo::new(down);
    let mut up = TokioIo::new(up);
    let (mut dbuf, mut ubuf) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let (mut down_open, mut up_open) = (true, true);
    let mut last = Instant::now();
    while down_open || up_open {
        if *hard_stop.borrow() {
            break;
        }
        tokio::select! {
            r = down.read(&mut dbuf), if down_open => match r {
                Ok(0) | Err(_) => {
                    down_open = false;
                    let _ = up.shutdown().await;
                }
                Ok(n) => {
                    last = Instant::now();
                    if !write_within(&mut up, &dbuf[..n], idle).await {
                        break;
                    }
                }
            },
            r = up.read(&mut ubuf), if up_open => match r {
                Ok(0) | Err(_) => {
                    up_open = false;
                    let _ = down.shutdown().await;
                }
                Ok(n) => {
                    last = Instant::now();
                    if !write_within(&mut down, &ubuf[..n], idle).await {
                        break;
                    }
                }
            },
            _ = tokio::time::sleep_until(last + idle) => {
                tracing::debug!("upgraded tunnel idle, closing");
                break;
            }
            _ = hard_stop.changed() => break,
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
