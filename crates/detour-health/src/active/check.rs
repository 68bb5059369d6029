//! The [`HealthCheck`] trait, its failure type, and [`BoxHealthCheck`], which
//! erases a check's type. The built-in checks depend on this module, never
//! the other way round.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use detour_core::{Backend, Error, ErrorKind};

/// One probe of one backend: passes with `Ok(())`, fails with the reason.
///
/// The checker applies the configured timeout around [`check`](Self::check),
/// so an implementation need not; a check that overruns it fails with
/// [`CheckFailureKind::Timeout`]. Implement it for anything the built-in TCP and
/// HTTP checks cannot express (a gRPC health service, a query against a
/// database).
///
/// ```
/// use detour_core::Backend;
/// use detour_health::{CheckFailure, HealthCheck};
///
/// /// Backends tagged `maintenance` fail their checks.
/// struct Maintenance;
///
/// impl HealthCheck for Maintenance {
///     async fn check(&self, backend: &Backend) -> Result<(), CheckFailure> {
///         match backend.metadata().get("maintenance") {
///             Some(_) => Err(CheckFailure::custom("in maintenance")),
///             None => Ok(()),
///         }
///     }
/// }
/// ```
///
/// # Cancel safety
/// The future is dropped when the timeout or the checker's shutdown comes
/// first; it must not leave anything behind that needs it to complete.
pub trait HealthCheck: Send + Sync + 'static {
    /// Probe `backend` once.
    fn check(&self, backend: &Backend) -> impl Future<Output = Result<(), CheckFailure>> + Send;
}

impl<H: HealthCheck> HealthCheck for Arc<H> {
    async fn check(&self, backend: &Backend) -> Result<(), CheckFailure> {
        (**self).check(backend).await
    }
}

/// What kind of failure a check saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckFailureKind {
    /// The connection failed or broke, or the answer was not HTTP: refused,
    /// reset, closed early, invalid response.
    Transport(ErrorKind),
    /// The check did not finish within its timeout.
    Timeout,
    /// The backend answered with a status the check does not accept.
    Status(u16),
    /// The body did not contain the expected text.
    Body,
    /// A custom check's own reason.
    Custom,
    /// The check itself panicked.
    Panicked,
}

/// Why a check failed: a [`kind`](Self::kind) to match on and a message for
/// people (events and logs carry it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFailure {
    kind: CheckFailureKind,
    message: Cow<'static, str>,
}

impl CheckFailure {
    /// A failure of `kind` described by `message`.
    pub fn new(kind: CheckFailureKind, message: impl Into<Cow<'static, str>>) -> Self {
        CheckFailure {
            kind,
            message: message.into(),
        }
    }

    /// A custom check's failure.
    pub fn custom(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(CheckFailureKind::Custom, message)
    }

    /// A transport failure of `kind`, described by the kind itself.
    pub fn transport(kind: ErrorKind) -> Self {
        Self::new(CheckFailureKind::Transport(kind), kind.to_string())
    }

    /// A transport failure from an I/O error.
    pub fn io(err: &std::io::Error) -> Self {
        let kind = ErrorKind::from_io(err.kind());
        match kind {
            // The kind says all there is to say.
            ErrorKind::ConnectRefused | ErrorKind::ConnectionReset => Self::transport(kind),
            _ => Self::new(CheckFailureKind::Transport(kind), format!("{kind}: {err}")),
        }
    }

    /// A transport failure from a [`detour_core::Error`] (what a
    /// [`ClientExchange`](detour_core::connect::ClientExchange) fails with):
    /// its kind, and its context and causes for people. A refused or reset
    /// connection with nothing more to say is described by the kind alone.
    pub fn from_error(err: &Error) -> Self {
        let kind = err.kind();
        let mut message = kind.to_string();
        if let Some(context) = err.context_str() {
            message.push_str(": ");
            message.push_str(context);
        }
        let mut plain = err.context_str().is_none();
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            // An I/O cause of the same kind repeats what the kind says.
            plain &= cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| ErrorKind::from_io(io.kind()) == kind);
            let _ = write!(message, ": {cause}");
            source = cause.source();
        }
        match kind {
            ErrorKind::ConnectRefused | ErrorKind::ConnectionReset if plain => {
                Self::transport(kind)
            }
            _ => Self::new(CheckFailureKind::Transport(kind), message),
        }
    }

    /// The check overran `timeout`.
    pub fn timeout(timeout: Duration) -> Self {
        Self::new(
            CheckFailureKind::Timeout,
            format!("timed out after {timeout:?}"),
        )
    }

    /// What kind of failure it was.
    pub fn kind(&self) -> CheckFailureKind {
        self.kind
    }

    /// The description.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CheckFailure {}

type BoxedResult<'a> = Pin<Box<dyn Future<Output = Result<(), CheckFailure>> + Send + 'a>>;

/// The object-safe face of [`HealthCheck`], so checks of different types can
/// share one [`BoxHealthCheck`].
trait DynHealthCheck: Send + Sync + 'static {
    fn check_boxed<'a>(&'a self, backend: &'a Backend) -> BoxedResult<'a>;
}

impl<H: HealthCheck> DynHealthCheck for H {
    fn check_boxed<'a>(&'a self, backend: &'a Backend) -> BoxedResult<'a> {
        Box::pin(self.check(backend))
    }
}

/// Any [`HealthCheck`] behind one type (one allocation per check), for a
/// server that picks each upstream's check at run time.
#[derive(Clone)]
pub struct BoxHealthCheck(Arc<dyn DynHealthCheck>);

impl BoxHealthCheck {
    /// Box `check`.
    pub fn new(check: impl HealthCheck) -> Self {
        BoxHealthCheck(Arc::new(check))
    }
}

impl fmt::Debug for BoxHealthCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoxHealthCheck").finish_non_exhaustive()
    }
}

impl HealthCheck for BoxHealthCheck {
    async fn check(&self, backend: &Backend) -> Result<(), CheckFailure> {
        self.0.check_boxed(backend).await
    }
}
