//! The one error every `validate()` of the Detour crates returns, and the one
//! bound every duration setting is held to.

use std::fmt;
use std::time::Duration;

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

/// The longest duration any Detour setting accepts: 365 days.
///
/// humantime parses up to `u64::MAX` seconds, but a deadline, an ejection or
/// a sleep is an `Instant + duration`, and an `Instant` overflows (and
/// panics) a few hundred years from its origin. A year is far beyond any
/// timeout or period that makes sense and keeps every such sum far from
/// overflow; durations that grow (backoff, ejections, open breakers) are
/// capped by a setting that is itself held to this bound.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Whether a duration setting may be zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zero {
    /// Zero means something (no delay, no wait, close at once).
    Allowed,
    /// Zero cannot work: a timeout that expires at once, an interval that
    /// spins.
    Refused,
}

/// Check the duration setting `field`: at most [`MAX_DURATION`], and above
/// zero unless `zero` allows it.
///
/// Every `validate()` in the workspace calls this for every duration a user
/// can write, before the checks that compare durations with each other, so
/// an absurd value is reported as itself.
///
/// # Errors
/// [`InvalidConfig`] naming `field`.
///
/// ```
/// use std::time::Duration;
/// use detour_core::{check_duration, Zero};
///
/// assert!(check_duration("read_timeout", Duration::from_secs(60), Zero::Refused).is_ok());
/// let e = check_duration("read_timeout", Duration::ZERO, Zero::Refused).unwrap_err();
/// assert_eq!(e.field, "read_timeout");
/// let huge = Duration::from_secs(10_000_000_000_000_000_000);
/// assert!(check_duration("base_delay", huge, Zero::Allowed).is_err());
/// ```
pub fn check_duration(
    field: &'static str,
    value: Duration,
    zero: Zero,
) -> Result<(), InvalidConfig> {
    if zero == Zero::Refused && value.is_zero() {
        return Err(InvalidConfig::new(field, "must be longer than zero"));
    }
    if value > MAX_DURATION {
        return Err(InvalidConfig::new(
            field,
            format!(
                "{} is longer than the maximum of 365 days",
                humantime_serde::re::humantime::format_duration(value)
            ),
        ));
    }
    Ok(())
}

/// [`check_duration`] for an optional setting: absent is always fine.
///
/// # Errors
/// [`InvalidConfig`] naming `field`.
pub fn check_optional_duration(
    field: &'static str,
    value: Option<Duration>,
    zero: Zero,
) -> Result<(), InvalidConfig> {
    value.map_or(Ok(()), |v| check_duration(field, v, zero))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_inclusive_and_names_the_field() {
        assert_eq!(check_duration("f", MAX_DURATION, Zero::Refused), Ok(()));
        let over = MAX_DURATION + Duration::from_nanos(1);
        let e = check_duration("a.b", over, Zero::Allowed).unwrap_err();
        assert_eq!(e.field, "a.b");
        assert!(e.reason.contains("365 days"), "{e}");
        let most = Duration::new(u64::MAX, 999_999_999);
        assert_eq!(
            check_duration("f", most, Zero::Allowed).unwrap_err().field,
            "f"
        );
    }

    #[test]
    fn zero_is_refused_only_when_asked() {
        assert_eq!(check_duration("f", Duration::ZERO, Zero::Allowed), Ok(()));
        let e = check_duration("t", Duration::ZERO, Zero::Refused).unwrap_err();
        assert_eq!(e.to_string(), "t: must be longer than zero");
        assert_eq!(check_optional_duration("t", None, Zero::Refused), Ok(()));
        assert!(check_optional_duration("t", Some(Duration::ZERO), Zero::Refused).is_err());
    }

    #[test]
    fn instants_survive_the_maximum() {
        // What the bound is for: a far deadline is still a valid instant,
        // even grown a thousand times (the largest breaker/ejection growth).
        let now = tokio::time::Instant::now();
        assert!(now.checked_add(MAX_DURATION * 1000).is_some());
    }
}
