//! What a discovery source says about itself: [`SourceStatus`].

use std::time::{Duration, SystemTime};

/// How a discovery source is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SourceState {
    /// No answer yet: the source has not finished its first read.
    Starting,
    /// Its last read (or watch) succeeded and its answer is in force.
    Ok,
    /// It answers, but its answer is not wholly in force: it would have
    /// emptied the upstream, or some of its entries were refused.
    Degraded,
    /// Its last read failed (unreachable, an error, a dead watch): its last
    /// good answer stays in force.
    Failing,
}

impl SourceState {
    /// The word `/status` and the logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceState::Starting => "starting",
            SourceState::Ok => "ok",
            SourceState::Degraded => "degraded",
            SourceState::Failing => "failing",
        }
    }
}

/// One discovery source's state, for `/status` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SourceStatus {
    /// What the source is: `static`, `dns NAME`, `file PATH`,
    /// `etcd ENDPOINTS PREFIX`.
    pub source: String,
    /// How it is doing.
    pub state: SourceState,
    /// How many backends its answer in force holds.
    pub backends: usize,
    /// When it last answered successfully (for a watch: its last event or
    /// progress notification).
    pub last_success: Option<SystemTime>,
    /// The revision of its answer in force, where the source has one
    /// (etcd's store revision).
    pub revision: Option<i64>,
    /// Why it is degraded or failing.
    pub error: Option<String>,
}

impl SourceStatus {
    /// A source named `source` that has not answered yet.
    pub fn starting(source: impl Into<String>) -> Self {
        SourceStatus {
            source: source.into(),
            state: SourceState::Starting,
            backends: 0,
            last_success: None,
            revision: None,
            error: None,
        }
    }

    /// How long ago the last success was, at `now` (`None` before the first).
    pub fn age(&self, now: SystemTime) -> Option<Duration> {
        self.last_success
            .map(|t| now.duration_since(t).unwrap_or(Duration::ZERO))
    }
}
