//! One concrete error type for everything that can go wrong while proxying.
//!
//! Callers match on [`ErrorKind`] (and [`ErrorSide`]), never on message text. The
//! cause chain is kept: [`std::error::Error::source`] returns the underlying error.

use std::borrow::Cow;
use std::fmt;

/// A boxed error usable as a cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The result type used across Detour.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, as a value callers can match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The upstream refused the TCP connection.
    ConnectRefused,
    /// The TCP connection to the upstream did not complete in time.
    ConnectTimeout,
    /// The TLS handshake with the upstream failed.
    TlsHandshake,
    /// The peer reset the connection (or the write side broke: `EPIPE`).
    ConnectionReset,
    /// The peer closed the connection before the exchange completed.
    ConnectionClosed,
    /// The upstream refused the request unprocessed: an HTTP/2 stream reset
    /// with `REFUSED_STREAM`, or above the last stream id of a `GOAWAY`.
    StreamRefused,
    /// No byte arrived within the read timeout (or the per-try timeout ran out
    /// while waiting for response headers).
    ReadTimeout,
    /// The peer did not accept bytes within the write timeout.
    WriteTimeout,
    /// The upstream's response could not be parsed.
    InvalidResponse,
    /// No backend could be chosen for the request.
    NoPeer,
    /// Every candidate backend's circuit breaker refused the request.
    CircuitOpen,
    /// The retry budget is spent: no further attempt is allowed.
    BudgetExhausted,
    /// A concurrency limit refused the request.
    Overloaded,
    /// The request's overall deadline passed.
    DeadlineExceeded,
    /// The downstream client went away or sent something unusable.
    DownstreamClosed,
    /// The downstream request was malformed (answered with a 4xx).
    InvalidRequest,
    /// The downstream client was too slow: its request body stalled or
    /// trickled below the minimum rate, or it stopped reading the response.
    /// The client's fault, answered `408` (or a close once a response began).
    ClientTimeout,
    /// The upstream answered with this status and a hook or policy treated it as
    /// a failure (for example a retriable 503).
    HttpStatus(u16),
    /// Anything else: a hook's own failure, an internal error.
    Custom,
}

impl ErrorKind {
    /// The RFC 9209 `Proxy-Status` error type that names this kind.
    pub fn proxy_status_type(self) -> &'static str {
        match self {
            ErrorKind::ConnectRefused => "connection_refused",
            ErrorKind::ConnectTimeout => "connection_timeout",
            ErrorKind::TlsHandshake => "tls_protocol_error",
            ErrorKind::ConnectionReset | ErrorKind::ConnectionClosed => "connection_terminated",
            ErrorKind::StreamRefused => "connection_refused",
            ErrorKind::ReadTimeout => "connection_read_timeout",
            ErrorKind::WriteTimeout => "connection_write_timeout",
            ErrorKind::InvalidResponse => "http_protocol_error",
            ErrorKind::NoPeer | ErrorKind::CircuitOpen => "destination_unavailable",
            ErrorKind::BudgetExhausted | ErrorKind::Overloaded => "proxy_internal_response",
            ErrorKind::DeadlineExceeded => "connection_timeout",
            ErrorKind::DownstreamClosed | ErrorKind::InvalidRequest => "proxy_internal_response",
            ErrorKind::ClientTimeout => "http_request_error",
            ErrorKind::HttpStatus(_) => "http_response_status",
            ErrorKind::Custom => "proxy_internal_error",
        }
    }

    /// Whether the request provably never reached the upstream's application when
    /// an attempt fails with this kind (so it may be retried whatever its method).
    pub fn never_reached_upstream(self) -> bool {
        matches!(
            self,
            ErrorKind::ConnectRefused
                | ErrorKind::ConnectTimeout
                | ErrorKind::TlsHandshake
                | ErrorKind::StreamRefused
        )
    }

    /// Whether this kind is raised by Detour itself rather than caused by a
    /// backend. Such errors never count against a backend's health.
    pub fn is_local(self) -> bool {
        matches!(
            self,
            ErrorKind::NoPeer
                | ErrorKind::CircuitOpen
                | ErrorKind::BudgetExhausted
                | ErrorKind::Overloaded
                | ErrorKind::DeadlineExceeded
                | ErrorKind::DownstreamClosed
                | ErrorKind::InvalidRequest
                | ErrorKind::ClientTimeout
                | ErrorKind::Custom
        )
    }

    /// Whether this kind is a timeout of any sort (mapped to 504).
    pub fn is_timeout(self) -> bool {
        matches!(
            self,
            ErrorKind::ConnectTimeout
                | ErrorKind::ReadTimeout
                | ErrorKind::WriteTimeout
                | ErrorKind::DeadlineExceeded
        )
    }

    /// The status Detour answers with when this is the last attempt's error and
    /// no upstream response can be passed on.
    ///
    /// refused / reset / invalid response → 502; any timeout → 504; no backend,
    /// breaker open, budget spent, overload → 503; a bad request or a client
    /// body that broke off → 400; a client too slow to send its body → 408.
    pub fn default_status(self) -> u16 {
        match self {
            k if k.is_timeout() => 504,
            ErrorKind::NoPeer
            | ErrorKind::CircuitOpen
            | ErrorKind::BudgetExhausted
            | ErrorKind::Overloaded => 503,
            ErrorKind::InvalidRequest | ErrorKind::DownstreamClosed => 400,
            ErrorKind::ClientTimeout => 408,
            ErrorKind::HttpStatus(s) if (100..600).contains(&s) => s,
            ErrorKind::Custom => 500,
            _ => 502,
        }
    }
}

impl ErrorKind {
    /// The kind of an I/O failure on an upstream connection.
    pub fn from_io(kind: std::io::ErrorKind) -> ErrorKind {
        use std::io::ErrorKind as Io;
        match kind {
            Io::ConnectionRefused => ErrorKind::ConnectRefused,
            Io::ConnectionReset | Io::BrokenPipe | Io::ConnectionAborted => {
                ErrorKind::ConnectionReset
            }
            Io::TimedOut => ErrorKind::ReadTimeout,
            Io::InvalidData => ErrorKind::InvalidResponse,
            _ => ErrorKind::ConnectionClosed,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::HttpStatus(s) => write!(f, "upstream status {s}"),
            other => {
                let s = match other {
                    ErrorKind::ConnectRefused => "connection refused",
                    ErrorKind::ConnectTimeout => "connect timeout",
                    ErrorKind::TlsHandshake => "TLS handshake failed",
                    ErrorKind::ConnectionReset => "connection reset",
                    ErrorKind::ConnectionClosed => "connection closed",
                    ErrorKind::StreamRefused => "stream refused",
                    ErrorKind::ReadTimeout => "read timeout",
                    ErrorKind::WriteTimeout => "write timeout",
                    ErrorKind::InvalidResponse => "invalid response",
                    ErrorKind::NoPeer => "no backend available",
                    ErrorKind::CircuitOpen => "circuit open",
                    ErrorKind::BudgetExhausted => "retry budget exhausted",
                    ErrorKind::Overloaded => "overloaded",
                    ErrorKind::DeadlineExceeded => "deadline exceeded",
                    ErrorKind::DownstreamClosed => "downstream closed",
                    ErrorKind::InvalidRequest => "invalid request",
                    ErrorKind::ClientTimeout => "client too slow",
                    ErrorKind::Custom => "error",
                    ErrorKind::HttpStatus(_) => unreachable!("handled above"),
                };
                f.write_str(s)
            }
        }
    }
}

/// Which side of the proxy an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorSide {
    /// The client (downstream) side.
    Downstream,
    /// The backend (upstream) side.
    Upstream,
    /// Detour itself (a policy, a hook, a limit).
    Internal,
}

/// Whether the error, on its own, permits another attempt.
///
/// This is the error's *own* opinion; the engine combines it with the commit
/// point, the method and the policy in [`crate::retry::decide`]. It is a
/// value, never a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryHint {
    /// Decide from the kind and the policy (the default).
    Default,
    /// Never retry after this error, whatever the policy says.
    Never,
}

struct Inner {
    kind: ErrorKind,
    side: ErrorSide,
    retry: RetryHint,
    context: Option<Cow<'static, str>>,
    cause: Option<BoxError>,
    retry_after: Option<std::time::Duration>,
    proxy_status: Option<&'static str>,
}

/// Detour's error: a [`kind`](Error::kind) to match on, the [`side`](Error::side)
/// it came from, a retry hint, and an optional context and cause.
///
/// Boxed inside so `Result<T, Error>` stays one pointer wide.
pub struct Error {
    inner: Box<Inner>,
}

impl Error {
    /// A new error of `kind` from `side`.
    pub fn new(kind: ErrorKind, side: ErrorSide) -> Self {
        Error {
            inner: Box::new(Inner {
                kind,
                side,
                retry: RetryHint::Default,
                context: None,
                cause: None,
                retry_after: None,
                proxy_status: None,
            }),
        }
    }

    /// An upstream error of `kind`.
    pub fn upstream(kind: ErrorKind) -> Self {
        Self::new(kind, ErrorSide::Upstream)
    }

    /// An error Detour raises itself.
    pub fn internal(kind: ErrorKind) -> Self {
        Self::new(kind, ErrorSide::Internal)
    }

    /// A downstream error of `kind`.
    pub fn downstream(kind: ErrorKind) -> Self {
        Self::new(kind, ErrorSide::Downstream)
    }

    /// Attach a human-readable context (shown in logs, never matched on).
    pub fn context(mut self, context: impl Into<Cow<'static, str>>) -> Self {
        self.inner.context = Some(context.into());
        self
    }

    /// Attach the underlying cause.
    pub fn cause(mut self, cause: impl Into<BoxError>) -> Self {
        self.inner.cause = Some(cause.into());
        self
    }

    /// Tell the client when to come back (sent as `Retry-After` when Detour
    /// answers with this error: a breaker's time until half-open, say).
    pub fn retry_after(mut self, after: std::time::Duration) -> Self {
        self.inner.retry_after = Some(after);
        self
    }

    /// When the client may come back, if known.
    pub fn retry_after_hint(&self) -> Option<std::time::Duration> {
        self.inner.retry_after
    }

    /// Name the failure more precisely in `Proxy-Status` than the kind's
    /// [`proxy_status_type`](ErrorKind::proxy_status_type) does (an RFC 9209
    /// error type such as `http_response_transfer_coding`).
    pub fn proxy_status(mut self, error_type: &'static str) -> Self {
        self.inner.proxy_status = Some(error_type);
        self
    }

    /// The RFC 9209 error type that names this error in `Proxy-Status`.
    pub fn proxy_status_type(&self) -> &'static str {
        self.inner
            .proxy_status
            .unwrap_or_else(|| self.inner.kind.proxy_status_type())
    }

    /// Forbid any retry after this error.
    pub fn never_retry(mut self) -> Self {
        self.inner.retry = RetryHint::Never;
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// Where the failure came from.
    pub fn side(&self) -> ErrorSide {
        self.inner.side
    }

    /// The error's own retry hint.
    pub fn retry_hint(&self) -> RetryHint {
        self.inner.retry
    }

    /// The context text, if any.
    pub fn context_str(&self) -> Option<&str> {
        self.inner.context.as_deref()
    }

    /// Whether this error was caused by the backend (and so may count against
    /// its health), as opposed to raised by Detour or the client.
    pub fn caused_by_backend(&self) -> bool {
        self.inner.side == ErrorSide::Upstream && !self.inner.kind.is_local()
    }

    /// Classify an I/O error met while talking to an upstream.
    pub fn from_upstream_io(err: std::io::Error) -> Self {
        Self::upstream(ErrorKind::from_io(err.kind())).cause(err)
    }

    /// Classify a failed connect to an upstream: `ConnectTimeout` when the
    /// system timed it out, `ConnectRefused` otherwise (no connection was
    /// made, so nothing was sent, whatever the cause).
    pub fn from_connect_io(err: std::io::Error) -> Self {
        let kind = match err.kind() {
            std::io::ErrorKind::TimedOut => ErrorKind::ConnectTimeout,
            _ => ErrorKind::ConnectRefused,
        };
        Self::upstream(kind).cause(err)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.inner.kind)
            .field("side", &self.inner.side)
            .field("retry", &self.inner.retry)
            .field("context", &self.inner.context)
            .field("cause", &self.inner.cause)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = match self.inner.side {
            ErrorSide::Downstream => "downstream",
            ErrorSide::Upstream => "upstream",
            ErrorSide::Internal => "internal",
        };
        write!(f, "{side} {}", self.inner.kind)?;
        if let Some(ctx) = &self.inner.context {
            write!(f, ": {ctx}")?;
        }
        // The cause is `source()`'s to give, not repeated here; `chain()`
        // writes both for a log line.
        Ok(())
    }
}

/// An [`Error`] and every cause below it, for a log line (see
/// [`Error::chain`]).
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(&'a Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = std::error::Error::source(self.0);
        while let Some(cause) = next {
            write!(f, ": {cause}")?;
            next = cause.source();
        }
        Ok(())
    }
}

impl Error {
    /// This error followed by each of its causes, `: `-separated, for logs:
    /// `upstream connection refused: Connection refused (os error 111)`.
    /// `Display` writes this error alone, as the error guidelines ask (its
    /// cause is [`source`](std::error::Error::source)'s).
    pub fn chain(&self) -> Chain<'_> {
        Chain(self)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .cause
            .as_ref()
            .map(|c| &**c as &(dyn std::error::Error + 'static))
    }
}

/// An error kind that says something about the backend's transport: what a
/// retry policy may list as retriable (`retry_on`) and what a breaker may count
/// as a failure (`failure_kinds`). Config names are snake_case. Statuses and
/// the errors Detour raises itself have no failure kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureKind {
    /// [`ErrorKind::ConnectRefused`].
    ConnectRefused,
    /// [`ErrorKind::ConnectTimeout`].
    ConnectTimeout,
    /// [`ErrorKind::TlsHandshake`].
    TlsHandshake,
    /// [`ErrorKind::ConnectionReset`] (includes a broken pipe).
    ConnectionReset,
    /// [`ErrorKind::ConnectionClosed`].
    ConnectionClosed,
    /// [`ErrorKind::ReadTimeout`] (includes the per-try timeout).
    ReadTimeout,
    /// [`ErrorKind::WriteTimeout`].
    WriteTimeout,
    /// [`ErrorKind::InvalidResponse`].
    InvalidResponse,
}

impl FailureKind {
    /// Every kind.
    pub const ALL: [FailureKind; 8] = [
        FailureKind::ConnectRefused,
        FailureKind::ConnectTimeout,
        FailureKind::TlsHandshake,
        FailureKind::ConnectionReset,
        FailureKind::ConnectionClosed,
        FailureKind::ReadTimeout,
        FailureKind::WriteTimeout,
        FailureKind::InvalidResponse,
    ];

    /// The failure kind of an error kind; `None` for statuses and for the
    /// errors Detour raises itself, which never count against a backend.
    pub fn of(kind: ErrorKind) -> Option<FailureKind> {
        Some(match kind {
            ErrorKind::ConnectRefused => FailureKind::ConnectRefused,
            ErrorKind::ConnectTimeout => FailureKind::ConnectTimeout,
            ErrorKind::TlsHandshake => FailureKind::TlsHandshake,
            ErrorKind::ConnectionReset => FailureKind::ConnectionReset,
            ErrorKind::ConnectionClosed => FailureKind::ConnectionClosed,
            ErrorKind::ReadTimeout => FailureKind::ReadTimeout,
            ErrorKind::WriteTimeout => FailureKind::WriteTimeout,
            ErrorKind::InvalidResponse => FailureKind::InvalidResponse,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_mapping_follows_the_contract() {
        assert_eq!(ErrorKind::ConnectRefused.default_status(), 502);
        assert_eq!(ErrorKind::ConnectionReset.default_status(), 502);
        assert_eq!(ErrorKind::InvalidResponse.default_status(), 502);
        assert_eq!(ErrorKind::ConnectTimeout.default_status(), 504);
        assert_eq!(ErrorKind::ReadTimeout.default_status(), 504);
        assert_eq!(ErrorKind::DeadlineExceeded.default_status(), 504);
        assert_eq!(ErrorKind::NoPeer.default_status(), 503);
        assert_eq!(ErrorKind::CircuitOpen.default_status(), 503);
        assert_eq!(ErrorKind::BudgetExhausted.default_status(), 503);
        assert_eq!(ErrorKind::Overloaded.default_status(), 503);
    }

    #[test]
    fn io_errors_are_classified_and_chained() {
        let e =
            Error::from_upstream_io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(e.kind(), ErrorKind::ConnectRefused);
        assert!(std::error::Error::source(&e).is_some());
        // Display does not repeat the source; the chain writes both.
        let cause = std::io::Error::from(std::io::ErrorKind::ConnectionRefused).to_string();
        assert_eq!(e.to_string(), "upstream connection refused");
        assert_eq!(
            e.chain().to_string(),
            format!("upstream connection refused: {cause}")
        );
        assert!(e.caused_by_backend());
        assert!(!Error::internal(ErrorKind::CircuitOpen).caused_by_backend());
        // A connect that failed never sent anything: refused unless it timed out.
        let connect = |k| Error::from_connect_io(std::io::Error::from(k)).kind();
        assert_eq!(
            connect(std::io::ErrorKind::TimedOut),
            ErrorKind::ConnectTimeout
        );
        assert_eq!(
            connect(std::io::ErrorKind::AddrNotAvailable),
            ErrorKind::ConnectRefused
        );
        assert_eq!(
            std::mem::size_of::<Result<()>>(),
            std::mem::size_of::<usize>()
        );
    }
}
