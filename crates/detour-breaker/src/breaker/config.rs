//! What trips a breaker, how long it stays open and how it closes again.

use std::fmt;
use std::time::Duration;

use detour_core::ErrorKind;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::error::bad;
use detour_core::{check_duration, InvalidConfig, Zero};

/// The largest count window: one byte per call is kept.
pub const MAX_WINDOW_CALLS: u32 = 10_000;

/// The shortest time window: it is kept in 10 steps of at least 1 ms.
pub const MIN_WINDOW_TIME: Duration = Duration::from_millis(10);

/// Probes and successes are counted in 16 bits of the breaker's state word.
const MAX_HALF_OPEN: u32 = u16::MAX as u32;

/// A circuit breaker's configuration: the `[upstreams.NAME.breaker]` table.
///
/// Every field has a documented default, unknown keys are refused, and
/// [`validate`](Self::validate) names the first field that makes no sense.
///
/// ```
/// let cfg: detour_breaker::BreakerConfig = toml::from_str(r#"
///     consecutive_failures = 3
///     open_for = "10s"
///     half_open_successes = 2
///     failure_rate = { threshold = 0.5, window = "30s", min_calls = 20 }
/// "#).unwrap();
/// cfg.validate().unwrap();
/// assert_eq!(cfg.open_for, std::time::Duration::from_secs(10));
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// Whether the breaker does anything. A disabled breaker admits every
    /// attempt and ignores every outcome. Default true.
    pub enabled: bool,
    /// Trip after this many failures in a row (a success in between starts the
    /// count again). 0 turns this policy off. Default 5.
    pub consecutive_failures: u32,
    /// Trip when the share of failures over a window reaches a threshold.
    /// Default none.
    pub failure_rate: Option<FailureRate>,
    /// Trip when the share of slow calls over a window reaches a threshold.
    /// Default none.
    pub slow_call: Option<SlowCall>,
    /// How long a tripped breaker refuses before it lets probes through.
    /// Default 30 s.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
    /// The ceiling of the open period when it grows (see
    /// [`open_multiplier`](Self::open_multiplier)). Also the cool-down: a trip
    /// more than this long after the breaker last closed starts again from
    /// `open_for`. Default 5 min.
    #[serde(with = "humantime_serde")]
    pub max_open_for: Duration,
    /// Growth of the open period per repeated trip: a re-open from half-open,
    /// or a trip within `max_open_for` of the last close. 1.0 (the default)
    /// keeps it at `open_for`.
    pub open_multiplier: f64,
    /// Share of each open period that is random, 0.0–1.0: the breaker stays
    /// open for `d × (1 − jitter × u)`, `u` uniform in [0, 1), so never longer
    /// than `d` (the same rule as the retry policy's `jitter`). It keeps
    /// breakers that tripped together from probing together. Default 0.1.
    pub jitter: f64,
    /// Probes a half-open breaker lets through at the same time. Default 1:
    /// a backend that is still broken costs one request, not a burst.
    pub half_open_probes: u32,
    /// Successful probes in a row that close a half-open breaker. Any failed
    /// probe opens it again. Default 3.
    pub half_open_successes: u32,
    /// Upstream statuses that count as failures. Default 502, 503, 504: a 500
    /// is usually one request's bug, answered by a backend that is up, so it
    /// counts as a success unless listed here.
    pub failure_statuses: Vec<u16>,
    /// Errors that count as failures. Default: all of them (connect refused and
    /// timed out, TLS handshake, reset, closed, read and write timeouts,
    /// invalid response). A backend error left out of the list is ignored
    /// (neither success nor failure), e.g. `read_timeout` for long polls.
    pub failure_kinds: Vec<FailureKind>,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            consecutive_failures: 5,
            failure_rate: None,
            slow_call: None,
            open_for: Duration::from_secs(30),
            max_open_for: Duration::from_secs(300),
            open_multiplier: 1.0,
            jitter: 0.1,
            half_open_probes: 1,
            half_open_successes: 3,
            failure_statuses: vec![502, 503, 504],
            failure_kinds: FailureKind::ALL.to_vec(),
        }
    }
}

impl BreakerConfig {
    /// Check every field.
    ///
    /// # Errors
    /// [`InvalidConfig`] naming the first field whose value makes no sense,
    /// e.g. `breaker.open_for: must be > 0`.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        check_duration("breaker.open_for", self.open_for, Zero::Refused)?;
        check_duration("breaker.max_open_for", self.max_open_for, Zero::Refused)?;
        if self.max_open_for < self.open_for {
            return bad(
                "breaker.max_open_for",
                format!(
                    "{:?} is shorter than open_for {:?}",
                    self.max_open_for, self.open_for
                ),
            );
        }
        if !(self.open_multiplier.is_finite() && self.open_multiplier >= 1.0) {
            return bad(
                "breaker.open_multiplier",
                format!("must be >= 1.0, got {}", self.open_multiplier),
            );
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return bad(
                "breaker.jitter",
                format!("must be within 0.0..=1.0, got {}", self.jitter),
            );
        }
        if !(1..=MAX_HALF_OPEN).contains(&self.half_open_probes) {
            return bad(
                "breaker.half_open_probes",
                format!(
                    "must be within 1..={MAX_HALF_OPEN}, got {}",
                    self.half_open_probes
                ),
            );
        }
        if !(1..=MAX_HALF_OPEN).contains(&self.half_open_successes) {
            return bad(
                "breaker.half_open_successes",
                format!(
                    "must be within 1..={MAX_HALF_OPEN}, got {}",
                    self.half_open_successes
                ),
            );
        }
        if let Some(s) = self
            .failure_statuses
            .iter()
            .find(|s| !(100..600).contains(*s))
        {
            return bad(
                "breaker.failure_statuses",
                format!("{s} is not an HTTP status"),
            );
        }
        if let Some(r) = &self.failure_rate {
            r.validate()?;
        }
        if let Some(s) = &self.slow_call {
            s.validate()?;
        }
        if self.enabled
            && self.consecutive_failures == 0
            && self.failure_rate.is_none()
            && self.slow_call.is_none()
        {
            return bad(
                "breaker.consecutive_failures",
                "0 turns it off, and no other trip policy (failure_rate, slow_call) is set",
            );
        }
        Ok(())
    }
}

/// Trip when the share of failed calls over a window reaches `threshold`.
///
/// ```toml
/// failure_rate = { threshold = 0.5, window = 100, min_calls = 20 }  # the last 100 calls
/// failure_rate = { threshold = 0.5, window = "30s", min_calls = 20 } # the last 30 s
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct FailureRate {
    /// Share of failures that trips, in (0.0, 1.0]. Default 0.5.
    pub threshold: f64,
    /// Fewest calls in the window before the rate is judged at all, so three
    /// failures out of four calls at night do not trip. Default 20.
    pub min_calls: u32,
    /// The window: a number of calls or a duration. Default the last 100 calls.
    pub window: Window,
}

impl Default for FailureRate {
    fn default() -> Self {
        FailureRate {
            threshold: 0.5,
            min_calls: 20,
            window: Window::Calls(100),
        }
    }
}

impl FailureRate {
    fn validate(&self) -> Result<(), InvalidConfig> {
        check_rate(
            self.threshold,
            self.min_calls,
            self.window,
            [
                "breaker.failure_rate.threshold",
                "breaker.failure_rate.min_calls",
                "breaker.failure_rate.window",
            ],
        )
    }
}

/// Trip when the share of calls slower than `slower_than` over a window
/// reaches `threshold`: a backend that answers, but too slowly to be useful.
///
/// A call's time is the attempt's latency until its response head or its
/// failure; failed calls count too.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SlowCall {
    /// A call that took at least this long is slow. Default 2 s.
    #[serde(with = "humantime_serde")]
    pub slower_than: Duration,
    /// Share of slow calls that trips, in (0.0, 1.0]. Default 0.8.
    pub threshold: f64,
    /// Fewest calls in the window before the rate is judged. Default 20.
    pub min_calls: u32,
    /// The window: a number of calls or a duration. Default the last 100 calls.
    pub window: Window,
}

impl Default for SlowCall {
    fn default() -> Self {
        SlowCall {
            slower_than: Duration::from_secs(2),
            threshold: 0.8,
            min_calls: 20,
            window: Window::Calls(100),
        }
    }
}

impl SlowCall {
    fn validate(&self) -> Result<(), InvalidConfig> {
        check_duration(
            "breaker.slow_call.slower_than",
            self.slower_than,
            Zero::Refused,
        )?;
        check_rate(
            self.threshold,
            self.min_calls,
            self.window,
            [
                "breaker.slow_call.threshold",
                "breaker.slow_call.min_calls",
                "breaker.slow_call.window",
            ],
        )
    }
}

fn check_rate(
    threshold: f64,
    min_calls: u32,
    window: Window,
    [f_threshold, f_min_calls, f_window]: [&'static str; 3],
) -> Result<(), InvalidConfig> {
    if !(threshold > 0.0 && threshold <= 1.0) {
        return bad(
            f_threshold,
            format!("must be within (0.0, 1.0], got {threshold}"),
        );
    }
    if min_calls == 0 {
        return bad(f_min_calls, "must be >= 1");
    }
    match window {
        Window::Calls(n) if !(1..=MAX_WINDOW_CALLS).contains(&n) => bad(
            f_window,
            format!("must hold 1..={MAX_WINDOW_CALLS} calls, got {n}"),
        ),
        Window::Calls(n) if min_calls > n => bad(
            f_min_calls,
            format!("{min_calls} is more than the window's {n} calls: it could never trip"),
        ),
        Window::Time(d) if d < MIN_WINDOW_TIME => bad(
            f_window,
            format!("must be at least {MIN_WINDOW_TIME:?}, got {d:?}"),
        ),
        Window::Time(d) => check_duration(f_window, d, Zero::Refused),
        Window::Calls(_) => Ok(()),
    }
}

/// A sliding window: the last N calls, or the calls of the last duration.
///
/// In config, a number is a count (`window = 100`) and a string is a
/// humantime duration (`window = "30s"`). A time window is kept in 10 steps,
/// so it covers between 9/10 of the duration and all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The last N calls (1..=10 000).
    Calls(u32),
    /// The calls that ended within the last duration (at least 10 ms).
    Time(Duration),
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Window;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a number of calls (100) or a duration ("30s")"#)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Window, E> {
                u32::try_from(n)
                    .map(Window::Calls)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(n), &self))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Window, E> {
                u64::try_from(n)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(n), &self))
                    .and_then(|n| self.visit_u64(n))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Window, E> {
                humantime_serde::re::humantime::parse_duration(s)
                    .map(Window::Time)
                    .map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Window {
    /// A count as a number, a time as a humantime string: the forms it is
    /// read from.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Window::Calls(n) => s.serialize_u32(*n),
            Window::Time(d) => s.collect_str(&humantime_serde::re::humantime::format_duration(*d)),
        }
    }
}

/// A backend error that may count as a breaker failure: the same kinds a retry
/// policy's `retry_on` lists (config names are snake_case).
pub use detour_core::FailureKind;

/// The bit of a failure kind in [`BreakerConfig`]'s kind set.
fn bit(kind: FailureKind) -> u16 {
    1 << (kind as u16)
}

/// What counts as a failure, precomputed from the config so that classifying
/// an outcome is two bit tests.
#[derive(Debug, Clone)]
pub(crate) struct FailureSet {
    kinds: u16,
    /// One bit per status 0..640.
    statuses: [u64; 10],
}

/// How one outcome counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Success,
    Failure,
    Ignore,
}

impl FailureSet {
    pub(crate) fn new(cfg: &BreakerConfig) -> Self {
        let mut set = FailureSet {
            kinds: 0,
            statuses: [0; 10],
        };
        for k in &cfg.failure_kinds {
            set.kinds |= bit(*k);
        }
        for &s in &cfg.failure_statuses {
            if let Some(word) = set.statuses.get_mut(usize::from(s / 64)) {
                *word |= 1 << (s % 64);
            }
        }
        set
    }

    fn has_status(&self, s: u16) -> bool {
        self.statuses
            .get(usize::from(s / 64))
            .is_some_and(|w| w & (1 << (s % 64)) != 0)
    }

    /// How a backend-caused error of `kind` counts. A status not listed is a
    /// success (the backend is up and answered); an error kind not listed is
    /// ignored (it says nothing either way); Detour's own errors never count.
    pub(crate) fn judge(&self, kind: ErrorKind) -> Verdict {
        match kind {
            ErrorKind::HttpStatus(s) if self.has_status(s) => Verdict::Failure,
            ErrorKind::HttpStatus(_) => Verdict::Success,
            k => match FailureKind::of(k) {
                Some(f) if self.kinds & bit(f) != 0 => Verdict::Failure,
                _ => Verdict::Ignore,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = BreakerConfig::default();
        assert!(c.enabled);
        assert_eq!(c.consecutive_failures, 5);
        assert_eq!(c.open_for, Duration::from_secs(30));
        assert_eq!(c.half_open_successes, 3);
        assert_eq!(c.half_open_probes, 1);
        assert_eq!(c.failure_statuses, [502, 503, 504]);
        c.validate().unwrap();
    }

    #[test]
    fn reads_the_keys_the_binary_uses_and_refuses_unknown_ones() {
        let c: BreakerConfig = toml::from_str(
            r#"consecutive_failures = 7
               open_for = "45s"
               half_open_successes = 2"#,
        )
        .unwrap();
        assert_eq!(c.consecutive_failures, 7);
        assert_eq!(c.open_for, Duration::from_secs(45));
        assert_eq!(c.half_open_successes, 2);
        assert_eq!(c.max_open_for, Duration::from_secs(300), "the rest default");
        assert!(toml::from_str::<BreakerConfig>("open_four = \"1s\"").is_err());
        assert!(toml::from_str::<BreakerConfig>("failure_rate = { treshold = 0.5 }").is_err());
    }

    #[test]
    fn a_window_is_a_count_or_a_duration() {
        let c: BreakerConfig = toml::from_str(
            r#"failure_rate = { threshold = 0.25, window = 50, min_calls = 10 }
               slow_call = { slower_than = "300ms", window = "1m" }
               failure_kinds = ["connect_refused", "read_timeout"]"#,
        )
        .unwrap();
        c.validate().unwrap();
        let r = c.failure_rate.unwrap();
        assert_eq!(r.window, Window::Calls(50));
        assert_eq!(r.threshold, 0.25);
        let s = c.slow_call.unwrap();
        assert_eq!(s.window, Window::Time(Duration::from_secs(60)));
        assert_eq!(s.slower_than, Duration::from_millis(300));
        assert_eq!(s.threshold, 0.8);
        assert_eq!(
            c.failure_kinds,
            [FailureKind::ConnectRefused, FailureKind::ReadTimeout]
        );
        let e = toml::from_str::<BreakerConfig>("failure_rate = { window = \"soon\" }");
        assert!(e.is_err());
        let e = toml::from_str::<BreakerConfig>("failure_rate = { window = -3 }");
        assert!(e.is_err());
    }

    #[test]
    fn validate_names_the_field() {
        let field = |c: BreakerConfig| c.validate().unwrap_err().field;
        let mut c = BreakerConfig {
            open_for: Duration::ZERO,
            ..Default::default()
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "breaker.open_for: must be longer than zero"
        );
        c.open_for = detour_core::MAX_DURATION + Duration::from_secs(1);
        assert_eq!(field(c.clone()), "breaker.open_for");
        c.open_for = Duration::from_secs(600);
        assert_eq!(field(c.clone()), "breaker.max_open_for");
        c = BreakerConfig::default();
        c.jitter = 1.5;
        assert_eq!(field(c), "breaker.jitter");
        c = BreakerConfig::default();
        c.open_multiplier = 0.5;
        assert_eq!(field(c), "breaker.open_multiplier");
        c = BreakerConfig::default();
        c.half_open_probes = 0;
        assert_eq!(field(c), "breaker.half_open_probes");
        c = BreakerConfig::default();
        c.half_open_successes = 70_000;
        assert_eq!(field(c), "breaker.half_open_successes");
        c = BreakerConfig::default();
        c.failure_statuses = vec![503, 700];
        assert_eq!(field(c), "breaker.failure_statuses");
        c = BreakerConfig::default();
        c.consecutive_failures = 0;
        assert_eq!(field(c.clone()), "breaker.consecutive_failures");
        c.failure_rate = Some(FailureRate::default());
        c.validate().unwrap();
        c.failure_rate = Some(FailureRate {
            threshold: 0.0,
            ..Default::default()
        });
        assert_eq!(field(c.clone()), "breaker.failure_rate.threshold");
        c.failure_rate = Some(FailureRate {
            min_calls: 200,
            ..Default::default()
        });
        assert_eq!(field(c.clone()), "breaker.failure_rate.min_calls");
        c.failure_rate = Some(FailureRate {
            window: Window::Calls(20_000),
            ..Default::default()
        });
        assert_eq!(field(c.clone()), "breaker.failure_rate.window");
        c.failure_rate = Some(FailureRate {
            window: Window::Time(Duration::from_millis(5)),
            ..Default::default()
        });
        assert_eq!(field(c.clone()), "breaker.failure_rate.window");
        c.failure_rate = None;
        c.slow_call = Some(SlowCall {
            slower_than: Duration::ZERO,
            ..Default::default()
        });
        assert_eq!(field(c), "breaker.slow_call.slower_than");
        // A disabled breaker needs no policy.
        let off = BreakerConfig {
            enabled: false,
            consecutive_failures: 0,
            ..Default::default()
        };
        off.validate().unwrap();
    }

    #[test]
    fn the_failure_set_counts_listed_statuses_and_kinds_only() {
        let set = FailureSet::new(&BreakerConfig::default());
        assert_eq!(set.judge(ErrorKind::HttpStatus(502)), Verdict::Failure);
        assert_eq!(set.judge(ErrorKind::HttpStatus(504)), Verdict::Failure);
        assert_eq!(
            set.judge(ErrorKind::HttpStatus(500)),
            Verdict::Success,
            "a 500 is not a breaker failure by default"
        );
        assert_eq!(set.judge(ErrorKind::ConnectRefused), Verdict::Failure);
        assert_eq!(set.judge(ErrorKind::InvalidResponse), Verdict::Failure);
        for local in [
            ErrorKind::CircuitOpen,
            ErrorKind::BudgetExhausted,
            ErrorKind::Overloaded,
            ErrorKind::NoPeer,
            ErrorKind::DownstreamClosed,
            ErrorKind::DeadlineExceeded,
            ErrorKind::Custom,
        ] {
            assert_eq!(set.judge(local), Verdict::Ignore, "{local:?}");
        }
        let c = BreakerConfig {
            failure_statuses: vec![500, 599],
            failure_kinds: vec![FailureKind::ConnectRefused],
            ..Default::default()
        };
        let set = FailureSet::new(&c);
        assert_eq!(set.judge(ErrorKind::HttpStatus(500)), Verdict::Failure);
        assert_eq!(set.judge(ErrorKind::HttpStatus(599)), Verdict::Failure);
        assert_eq!(set.judge(ErrorKind::HttpStatus(502)), Verdict::Success);
        assert_eq!(set.judge(ErrorKind::ReadTimeout), Verdict::Ignore);
    }
}
