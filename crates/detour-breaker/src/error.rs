//! A shorthand for the checks of this crate's `validate()`s.

use detour_core::InvalidConfig;

/// `Err(InvalidConfig)` naming `field`.
pub(crate) fn bad<T>(field: &'static str, reason: impl Into<String>) -> Result<T, InvalidConfig> {
    Err(InvalidConfig::new(field, reason))
}
