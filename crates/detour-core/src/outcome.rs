//! How an attempt ended from the backend's point of view ([`OutcomeClass`]).
//!
//! A leaf beside [`crate::error`]: the planner decides the class, a backend's
//! state remembers it, and observers hear it, so none of them has to depend
//! on another to speak of it. Re-exported from [`crate::observe`], where
//! observers meet it.

use crate::error::ErrorKind;

/// How an attempt ended, from the backend's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeClass {
    /// The backend answered, with a status that is not counted as a failure.
    Success,
    /// The backend failed: it caused this error (counts against its health).
    BackendFailure(ErrorKind),
    /// The attempt failed for a reason that is not the backend's fault (Detour's
    /// own refusal, the client leaving, a stale pooled connection).
    Local(ErrorKind),
}

impl OutcomeClass {
    /// Whether this outcome counts against the backend.
    pub fn is_backend_failure(self) -> bool {
        matches!(self, OutcomeClass::BackendFailure(_))
    }
}
