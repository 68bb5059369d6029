//! The one error every `validate()` of this crate returns.

use std::fmt;

/// A configuration value that makes no sense, with the field named as it is
/// written in config (`breaker.open_for`, `budget.ratio`, `limit.max_pending`).
///
/// Returned by [`BreakerConfig::validate`](crate::BreakerConfig::validate),
/// [`BudgetConfig::validate`](crate::BudgetConfig::validate),
/// [`LimitConfig::validate`](crate::LimitConfig::validate) and the
/// constructors that take those configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidConfig {
    field: &'static str,
    reason: String,
}

impl InvalidConfig {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> Self {
        InvalidConfig {
            field,
            reason: reason.into(),
        }
    }

    /// The field at fault, with its table: `breaker.open_for`.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// Why the value was refused: `must be > 0`.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for InvalidConfig {}

/// A shorthand for the checks: `Err(InvalidConfig)` naming `field`.
pub(crate) fn bad<T>(field: &'static str, reason: impl Into<String>) -> Result<T, InvalidConfig> {
    Err(InvalidConfig::new(field, reason))
}
