//! The one error every `validate()` of the Detour crates returns.

use std::fmt;

/// A configuration value that makes no sense, with the field named as it is
/// written in config (`health.rise`, `breaker.open_for`, `slow_start.window`,
/// `multiplier` for a retry policy).
///
/// Bad configuration is rejected when it is loaded, never discovered under
/// traffic. The server and the binary put the field under its table
/// (`upstreams.NAME.…`) when they report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidConfig {
    /// The field at fault.
    pub field: &'static str,
    /// Why the value was refused: `must be > 0`.
    pub reason: String,
}

impl InvalidConfig {
    /// `field` holds a value refused for `reason`.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        InvalidConfig {
            field,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for InvalidConfig {}
