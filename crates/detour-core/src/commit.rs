//! How far an attempt got before it ended.

/// How far one attempt to an upstream got. The retry decision depends on it:
/// the later the commit point, the fewer requests may be retried.
///
/// Ordered: `NotConnected < Connected < … < ResponseForwarded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CommitPoint {
    /// No connection was established (or the request was handed back unsent).
    NotConnected,
    /// Connected, but not one byte of the request was written.
    Connected,
    /// Part of the request was written.
    RequestPartiallySent,
    /// The whole request was written; no response byte has arrived.
    RequestSent,
    /// The upstream's response head arrived; nothing was sent downstream yet.
    ResponseStarted,
    /// Response bytes went downstream: the request is committed to this upstream.
    ResponseForwarded,
}

impl CommitPoint {
    /// All commit points, in order (handy for table-driven tests).
    pub const ALL: [CommitPoint; 6] = [
        CommitPoint::NotConnected,
        CommitPoint::Connected,
        CommitPoint::RequestPartiallySent,
        CommitPoint::RequestSent,
        CommitPoint::ResponseStarted,
        CommitPoint::ResponseForwarded,
    ];

    /// Whether the upstream provably did not process the request.
    pub fn request_unsent(self) -> bool {
        self <= CommitPoint::Connected
    }

    /// A short name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            CommitPoint::NotConnected => "not_connected",
            CommitPoint::Connected => "connected",
            CommitPoint::RequestPartiallySent => "request_partially_sent",
            CommitPoint::RequestSent => "request_sent",
            CommitPoint::ResponseStarted => "response_started",
            CommitPoint::ResponseForwarded => "response_forwarded",
        }
    }
}
