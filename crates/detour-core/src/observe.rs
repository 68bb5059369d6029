//! What the engine reports after every attempt.
//!
//! Breakers, outlier detection and metrics subscribe as [`Observer`]s; the engine
//! calls them for every attempt, so users never wire outcomes by hand.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::Backend;
use crate::commit::CommitPoint;
pub use crate::outcome::OutcomeClass;

/// One attempt's report.
#[derive(Debug, Clone)]
pub struct AttemptOutcome<'a> {
    /// The backend the attempt went to, when the peer carried one.
    pub backend: Option<&'a Arc<Backend>>,
    /// The address the attempt went to.
    pub addr: SocketAddr,
    /// The upstream's name.
    pub upstream: &'a str,
    /// How it ended.
    pub class: OutcomeClass,
    /// The upstream's status, when a response head arrived.
    pub status: Option<u16>,
    /// Time from the attempt's start until its response head or its failure.
    pub latency: Duration,
    /// How far the attempt got.
    pub commit: CommitPoint,
    /// 1 for the first attempt of a request.
    pub attempt: u32,
}

/// Something that wants every attempt's outcome. Called on the request path:
/// keep it cheap and never block.
pub trait Observer: Send + Sync + 'static {
    /// One attempt ended.
    fn on_attempt(&self, outcome: &AttemptOutcome<'_>);
}

impl<F> Observer for F
where
    F: Fn(&AttemptOutcome<'_>) + Send + Sync + 'static,
{
    fn on_attempt(&self, outcome: &AttemptOutcome<'_>) {
        self(outcome)
    }
}
