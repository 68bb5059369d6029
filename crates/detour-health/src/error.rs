//! The one error type of this crate's configuration.

use std::fmt;

/// A configuration value that makes no sense, found by `validate()`.
///
/// Bad configuration is rejected when it is loaded, with the field named,
/// never discovered under traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidConfig {
    /// The field at fault, as named in the configuration file, with its table
    /// (`health.rise`, `outlier.success_rate.stdev_factor`).
    pub field: &'static str,
    /// Why the value was refused.
    pub reason: String,
}

impl InvalidConfig {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> Self {
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
