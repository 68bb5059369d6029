//! Instants as plain numbers, so they fit in atomics.

use std::time::Duration;

use tokio::time::Instant;

/// The instant an object was made; times are stored as nanoseconds since it.
///
/// Each breaker and budget has its own epoch rather than one process-wide
/// base: a shared base first read under one test's paused (and advanced)
/// clock could lie in the future of another test's clock, and every later
/// instant would collapse to zero. An object only ever compares instants
/// taken after its own creation, so its own epoch is always in the past.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Epoch(Instant);

impl Epoch {
    pub(crate) fn now() -> Self {
        Epoch(Instant::now())
    }

    /// `at` as nanoseconds since the epoch (0 for anything earlier).
    pub(crate) fn nanos(self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.0).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Nanoseconds since the epoch, now.
    pub(crate) fn elapsed_nanos(self) -> u64 {
        self.nanos(Instant::now())
    }
}

/// A duration in nanoseconds, saturating.
pub(crate) fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Division by a divisor fixed at construction, without a `div` instruction:
/// a 64-bit division costs tens of cycles, a multiplication three, and the
/// time windows divide on every record.
///
/// With `m = ⌊(2⁶⁴ − 1) / d⌋`, `q = ⌊n·m / 2⁶⁴⌋` is `⌊n / d⌋` or one less
/// (`n·m/2⁶⁴ > n/d − n/2⁶⁴ > n/d − 1`), and one comparison corrects it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Divider {
    d: u64,
    m: u64,
}

impl Divider {
    pub(crate) fn new(d: u64) -> Self {
        let d = d.max(1);
        Divider { d, m: u64::MAX / d }
    }

    #[cfg(test)]
    pub(crate) fn divisor(self) -> u64 {
        self.d
    }

    pub(crate) fn div(self, n: u64) -> u64 {
        // The high half of a 128-bit product fits in 64 bits.
        let q = ((u128::from(n) * u128::from(self.m)) >> 64) as u64;
        // q ≤ n / d, so q·d ≤ n: neither side overflows.
        if n - q * self.d >= self.d {
            q + 1
        } else {
            q
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn divides_exactly_at_the_edges() {
        for d in [
            1,
            2,
            3,
            7,
            1 << 20,
            1_000_000,
            999_999_937,
            u64::MAX / 3,
            u64::MAX,
        ] {
            let div = Divider::new(d);
            for n in [0, 1, d - 1, d, d.saturating_add(1), u64::MAX - 1, u64::MAX] {
                assert_eq!(div.div(n), n / d, "{n} / {d}");
            }
        }
        assert_eq!(Divider::new(0).div(5), 5, "0 is taken as 1");
    }

    proptest! {
        #[test]
        fn divides_like_the_operator(n: u64, d in 1u64..) {
            prop_assert_eq!(Divider::new(d).div(n), n / d);
        }

        #[test]
        fn divides_like_the_operator_for_window_steps(n: u64, d in 1_000_000u64..10_000_000_000_000) {
            prop_assert_eq!(Divider::new(d).div(n), n / d);
        }
    }
}
