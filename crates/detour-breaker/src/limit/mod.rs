//! Concurrency limits: at most N requests in flight to an upstream, at most
//! M waiting for a slot, and a refusal (503) for the rest instead of an
//! unbounded queue.

pub mod config;

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use detour_core::{Error, ErrorKind};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use self::config::LimitConfig;
use detour_core::InvalidConfig;

/// Why a [`ConcurrencyLimit`] refused a request. Answer it with 503
/// (`From<Overloaded> for detour_core::Error` gives
/// [`ErrorKind::Overloaded`], which is Detour's own error and never counts
/// against a backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Overloaded {
    /// Every slot was taken and `max_pending` requests were already waiting.
    QueueFull,
    /// The request waited `max_wait` without getting a slot.
    WaitTimedOut,
}

impl fmt::Display for Overloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Overloaded::QueueFull => "concurrency limit reached and its queue is full",
            Overloaded::WaitTimedOut => "concurrency limit reached: waited too long for a slot",
        })
    }
}

impl std::error::Error for Overloaded {}

impl From<Overloaded> for Error {
    fn from(o: Overloaded) -> Error {
        Error::internal(ErrorKind::Overloaded).cause(o)
    }
}

/// A limit on requests in flight (and waiting) for one upstream.
///
/// Waiting requests are served first come, first served (a tokio
/// [`Semaphore`] is fair), and a request that finds a free slot never jumps
/// ahead of one that waits.
///
/// ```
/// use detour_breaker::{ConcurrencyLimit, LimitConfig};
///
/// let mut cfg = LimitConfig::default();
/// cfg.max_in_flight = 1;
/// let limit = ConcurrencyLimit::new(cfg).unwrap();
/// let first = limit.try_acquire().expect("a free slot");
/// assert!(limit.try_acquire().is_none());
/// drop(first);
/// assert!(limit.try_acquire().is_some());
/// ```
#[derive(Debug)]
pub struct ConcurrencyLimit {
    slots: Arc<Semaphore>,
    pending: AtomicU32,
    config: LimitConfig,
}

/// A slot of a [`ConcurrencyLimit`], released on drop.
#[derive(Debug)]
pub struct LimitPermit {
    _slot: OwnedSemaphorePermit,
}

/// Gives a pending place back however the wait ends (a slot, a timeout, or
/// the caller dropping the future).
struct PendingPlace<'a>(&'a AtomicU32);

impl Drop for PendingPlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConcurrencyLimit {
    /// A limit with every slot free.
    ///
    /// # Errors
    /// [`InvalidConfig`] when `config` does not [validate](LimitConfig::validate).
    pub fn new(config: LimitConfig) -> Result<Self, InvalidConfig> {
        config.validate()?;
        Ok(ConcurrencyLimit {
            slots: Arc::new(Semaphore::new(config.max_in_flight as usize)),
            pending: AtomicU32::new(0),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LimitConfig {
        &self.config
    }

    /// Requests holding a slot now.
    pub fn in_flight(&self) -> u32 {
        let free = u32::try_from(self.slots.available_permits()).unwrap_or(u32::MAX);
        self.config.max_in_flight.saturating_sub(free)
    }

    /// Requests waiting for a slot now.
    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Acquire)
    }

    /// A slot if one is free now (and nobody is waiting for one).
    pub fn try_acquire(&self) -> Option<LimitPermit> {
        Arc::clone(&self.slots)
            .try_acquire_owned()
            .ok()
            .map(|s| LimitPermit { _slot: s })
    }

    /// A slot, waiting for one (in order of arrival) when all are taken, for
    /// at most `max_wait`.
    ///
    /// # Errors
    /// [`Overloaded::QueueFull`] at once when `max_pending` requests are
    /// already waiting; [`Overloaded::WaitTimedOut`] after `max_wait`.
    ///
    /// # Cancel safety
    /// Dropping the future gives up its place in the queue; no slot is lost.
    pub async fn acquire(&self) -> Result<LimitPermit, Overloaded> {
        if let Some(p) = self.try_acquire() {
            return Ok(p);
        }
        let mut waiting = self.pending.load(Ordering::Acquire);
        loop {
            if waiting >= self.config.max_pending {
                return Err(Overloaded::QueueFull);
            }
            match self.pending.compare_exchange_weak(
                waiting,
                waiting + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => waiting = actual,
            }
        }
        let _place = PendingPlace(&self.pending);
        let wait = Arc::clone(&self.slots).acquire_owned();
        match tokio::time::timeout(self.config.max_wait, wait).await {
            Ok(Ok(s)) => Ok(LimitPermit { _slot: s }),
            // The semaphore is never closed; treat it as a full queue if it were.
            Ok(Err(_closed)) => Err(Overloaded::QueueFull),
            Err(_elapsed) => Err(Overloaded::WaitTimedOut),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::advance;

    fn limit(max_in_flight: u32, max_pending: u32) -> Arc<ConcurrencyLimit> {
        Arc::new(
            ConcurrencyLimit::new(LimitConfig {
                max_in_flight,
                max_pending,
                max_wait: Duration::from_secs(1),
            })
            .unwrap(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn the_excess_is_refused_at_once() {
        let l = limit(2, 1);
        let a = l.acquire().await.unwrap();
        let _b = l.acquire().await.unwrap();
        assert_eq!(l.in_flight(), 2);
        assert!(l.try_acquire().is_none());
        // One may wait; the next is refused without waiting.
        let waiter = tokio::spawn({
            let l = Arc::clone(&l);
            async move { l.acquire().await.map(drop) }
        });
        tokio::task::yield_now().await;
        assert_eq!(l.pending(), 1);
        let started = tokio::time::Instant::now();
        assert_eq!(l.acquire().await.unwrap_err(), Overloaded::QueueFull);
        assert_eq!(started.elapsed(), Duration::ZERO, "refused at once");
        // A freed slot goes to the waiter, not to a newcomer.
        drop(a);
        assert!(l.try_acquire().is_none(), "the waiter was first");
        waiter.await.unwrap().unwrap();
        assert_eq!(l.pending(), 0);
        assert_eq!(l.in_flight(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn pending_requests_wait_in_order_and_time_out() {
        let l = limit(1, 2);
        let held = l.acquire().await.unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let spawn = |n: u32| {
            let (l, order) = (Arc::clone(&l), Arc::clone(&order));
            tokio::spawn(async move {
                let p = l.acquire().await?;
                order.lock().unwrap().push(n);
                tokio::time::sleep(Duration::from_millis(100)).await;
                drop(p);
                Ok::<_, Overloaded>(())
            })
        };
        let first = spawn(1);
        tokio::task::yield_now().await;
        let second = spawn(2);
        tokio::task::yield_now().await;
        assert_eq!(l.pending(), 2);
        advance(Duration::from_millis(500)).await;
        drop(held);
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        assert_eq!(*order.lock().unwrap(), [1, 2], "first come, first served");

        // Nobody frees the slot: the waiter gives up after max_wait.
        let _held = l.acquire().await.unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(l.acquire().await.unwrap_err(), Overloaded::WaitTimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert_eq!(l.pending(), 0, "the place was given back");
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_permits_and_waits_releases_everything() {
        let l = limit(1, 1);
        let p = l.try_acquire().unwrap();
        {
            let wait = l.acquire();
            tokio::pin!(wait);
            // Poll once so it queues, then cancel it.
            assert!(futures_poll_once(wait.as_mut()).await.is_none());
            assert_eq!(l.pending(), 1);
        }
        assert_eq!(l.pending(), 0, "a cancelled wait leaves the queue");
        drop(p);
        assert_eq!(l.in_flight(), 0);
        let again = l.acquire().await.unwrap();
        assert_eq!(l.in_flight(), 1);
        drop(again);
        assert!(l.try_acquire().is_some());
        let e: Error = Overloaded::QueueFull.into();
        assert_eq!(e.kind(), ErrorKind::Overloaded);
        assert!(e.kind().is_local(), "never counts against a backend");
    }

    /// Poll a future once: `Some` if it finished.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        let mut f = f;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
