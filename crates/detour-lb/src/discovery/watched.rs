//! A source followed by a task of its own (a watch), shared by the sources
//! that work that way (etcd, Kubernetes): [`Followed`] holds the last
//! [`WatchSnapshot`] the task published, starts the task on first use and
//! stops it when the last clone is dropped.
//!
//! The task publishes a successful read or event with
//! [`Source::publish`] (the entries it knows, whole) and a failure with
//! [`Source::fail`] (the entries stay: a failure never removes anything).
//! Subscribers hear of news only: changed entries or a changed state; a
//! progress notification refreshes `last_success` silently.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::{oneshot, watch};

use super::SourceState;
use crate::{DiscoveryError, DiscoveryErrorKind};

/// What a followed source knows, published whole on each change.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WatchSnapshot<M> {
    /// Bumped on every publication subscribers hear of.
    pub version: u64,
    /// Whether a read has ever succeeded.
    pub synced: bool,
    /// What the source holds, as of the last successful read or event.
    pub entries: Arc<M>,
    /// The store revision the entries are at, where the source has one
    /// (0 before the first read).
    pub revision: i64,
    /// `starting`, `ok` or `failing` (the entries are the last known ones).
    pub state: SourceState,
    /// When the last read, event or progress notification came.
    pub last_success: Option<SystemTime>,
    /// Why the source is failing.
    pub error: Option<String>,
}

/// The task that follows a source, given the source to publish to.
pub(crate) type Run<M, O> = fn(Arc<Source<M, O>>) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// What the clones of a [`Followed`] and its task share.
pub(crate) struct Source<M, O> {
    /// How to reach the source.
    pub(crate) options: O,
    /// How logs and `/status` name it.
    pub(crate) name: String,
    view: watch::Sender<WatchSnapshot<M>>,
    started: AtomicBool,
    stop: Mutex<Option<oneshot::Receiver<()>>>,
    run: Run<M, O>,
}

/// A followed source; cloning shares one task, which stops when the last
/// clone is dropped.
pub(crate) struct Followed<M, O>(Arc<Handle<M, O>>);

impl<M, O> Clone for Followed<M, O> {
    fn clone(&self) -> Self {
        Followed(Arc::clone(&self.0))
    }
}

/// Dropping it (the last clone) stops the task.
struct Handle<M, O> {
    source: Arc<Source<M, O>>,
    _stop: oneshot::Sender<()>,
}

impl<M, O> Followed<M, O>
where
    M: Default + Clone + PartialEq + Send + Sync + 'static,
    O: Send + Sync + 'static,
{
    /// A source named `name`, followed by `run` once first used.
    pub(crate) fn new(name: String, options: O, run: Run<M, O>) -> Self {
        let view = WatchSnapshot {
            version: 0,
            synced: false,
            entries: Arc::new(M::default()),
            revision: 0,
            state: SourceState::Starting,
            last_success: None,
            error: None,
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        let source = Arc::new(Source {
            options,
            name,
            view: watch::Sender::new(view),
            started: AtomicBool::new(false),
            stop: Mutex::new(Some(stop_rx)),
            run,
        });
        Followed(Arc::new(Handle {
            source,
            _stop: stop_tx,
        }))
    }

    pub(crate) fn name(&self) -> &str {
        &self.0.source.name
    }

    pub(crate) fn options(&self) -> &O {
        &self.0.source.options
    }

    /// Follow the snapshots, starting the task if it is not running (so
    /// within a tokio runtime).
    pub(crate) fn subscribe(&self) -> watch::Receiver<WatchSnapshot<M>> {
        self.start();
        self.0.source.view.subscribe()
    }

    /// The snapshot now, without starting anything.
    pub(crate) fn snapshot(&self) -> WatchSnapshot<M> {
        self.0.source.view.borrow().clone()
    }

    /// The snapshot once the first read succeeded, or after `within`.
    pub(crate) async fn first_read(&self, within: Duration) -> WatchSnapshot<M> {
        let mut rx = self.subscribe();
        let _ = tokio::time::timeout(within, rx.wait_for(|v| v.synced)).await;
        let now = rx.borrow().clone();
        now
    }

    /// Start the task, once; it ends when the stop signal fires.
    fn start(&self) {
        let source = &self.0.source;
        if source.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let stop = source
            .stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(stop) = stop {
            let run = (source.run)(Arc::clone(source));
            tokio::spawn(async move {
                tokio::select! {
                    biased;
                    _ = stop => {}
                    () = run => {}
                }
            });
        }
    }
}

impl<M: Clone + PartialEq, O> Source<M, O> {
    /// Publish `entries` at `revision`, the source `ok`. Subscribers hear
    /// of it (and `version` moves) only when the entries or the state
    /// changed.
    pub(crate) fn publish(&self, entries: &M, revision: i64) {
        self.view.send_if_modified(|v| {
            let news = !v.synced || v.state != SourceState::Ok || *v.entries != *entries;
            if news {
                v.version += 1;
                v.entries = Arc::new(entries.clone());
            }
            v.synced = true;
            v.revision = revision;
            v.state = SourceState::Ok;
            v.last_success = Some(SystemTime::now());
            v.error = None;
            news
        });
    }

    /// A failure: keep the entries, say why. Subscribers hear of the change
    /// of state, not of every retry.
    pub(crate) fn fail(&self, why: String) {
        self.view.send_if_modified(|v| {
            let news = v.state != SourceState::Failing;
            if news {
                v.version += 1;
            }
            v.state = SourceState::Failing;
            v.error = Some(why);
            news
        });
    }
}

/// The version of the snapshot the last discovery round answered from:
/// what [`ServiceDiscovery::changed`](super::ServiceDiscovery::changed)
/// compares with. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Seen(Arc<AtomicU64>);

impl Seen {
    /// The snapshot a round answers from: once the first read succeeded
    /// (waiting at most `within`), marked seen.
    ///
    /// # Errors
    /// [`DiscoveryErrorKind::Unavailable`] when the source never answered.
    pub(crate) async fn round<M, O>(
        &self,
        followed: &Followed<M, O>,
        within: Duration,
    ) -> Result<WatchSnapshot<M>, DiscoveryError>
    where
        M: Default + Clone + PartialEq + Send + Sync + 'static,
        O: Send + Sync + 'static,
    {
        let snapshot = followed.first_read(within).await;
        // Seen, answered or not: `changed` waits for the next news.
        self.0.store(snapshot.version, Ordering::Release);
        if snapshot.synced {
            return Ok(snapshot);
        }
        let why = snapshot.error.unwrap_or_else(|| "no answer yet".into());
        Err(DiscoveryError::new(DiscoveryErrorKind::Unavailable, followed.name()).with_source(why))
    }

    /// Completes when `followed` has news since the last round.
    pub(crate) async fn changed<M, O>(&self, followed: &Followed<M, O>)
    where
        M: Default + Clone + PartialEq + Send + Sync + 'static,
        O: Send + Sync + 'static,
    {
        let mut rx = followed.subscribe();
        let seen = self.0.load(Ordering::Acquire);
        if rx.wait_for(|v| v.version != seen).await.is_err() {
            // Cannot happen while `followed` holds the sender; never spin.
            std::future::pending::<()>().await;
        }
    }
}

/// Exponential backoff with jitter: 100 ms doubling to 5 s.
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    pub(crate) fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    pub(crate) fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// The pause before the next attempt: between half and all of the
    /// current step, which then doubles.
    pub(crate) fn next(&mut self) -> Duration {
        let step = self.next;
        self.next = (step * 2).min(Self::MAX);
        step / 2 + step.mul_f64(fastrand::f64() / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new();
        let first = b.next();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..10 {
            b.next();
        }
        let late = b.next();
        assert!(
            late >= Duration::from_millis(2500) && late <= Duration::from_secs(5),
            "{late:?}"
        );
        b.reset();
        assert!(b.next() <= Duration::from_millis(100));
    }
}
