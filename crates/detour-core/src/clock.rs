//! Instants as plain numbers, so lock-free state can keep them in an atomic.
//!
//! Every instant is stored as nanoseconds since one process-wide base, taken
//! from `tokio::time::Instant` the first time it is needed (so a paused test
//! clock moves stored instants too). A leaf: it depends on nothing else in the
//! crate, and both backend state and the failure spread read time through it.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

/// The process-wide base that atomics store instants against.
fn clock_base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// `at` as nanoseconds since the clock base, never 0 (0 means "unset").
pub(crate) fn to_nanos(at: Instant) -> u64 {
    (at.saturating_duration_since(clock_base()).as_nanos() as u64).max(1)
}

/// The instant `n` nanoseconds after the clock base.
pub(crate) fn from_nanos(n: u64) -> Instant {
    clock_base() + Duration::from_nanos(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_instant_survives_the_round_trip_and_is_never_zero() {
        let at = Instant::now() + Duration::from_millis(1500);
        assert_eq!(from_nanos(to_nanos(at)), at);
        assert!(to_nanos(clock_base()) >= 1, "0 is kept for unset");
    }
}
