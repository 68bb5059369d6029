//! The breaker's state word and the transitions it reports.
//!
//! The whole state lives in one `AtomicU64`, so admission is a load (closed)
//! or a compare-and-swap (half-open), never a lock:
//!
//! ```text
//!  63                               18 17              2 1  0
//! +-----------------------------------+-----------------+----+
//! | payload (46 bits)                 | era (16 bits)   |mode|
//! +-----------------------------------+-----------------+----+
//!   closed:    0
//!   open:      the instant it may half-open, in ms since the breaker's epoch
//!   half-open: probes in flight (bits 0..16), successes (bits 16..32)
//! ```
//!
//! The era changes on every transition. It keeps a compare-and-swap from
//! succeeding on a word that merely looks the same as one read before an
//! open/close cycle, and it lets an [`Admission`](super::Admission) tell
//! whether its outcome still belongs to the state it was admitted in.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use detour_core::GateState;

const MODE_MASK: u64 = 0b11;
const ERA_SHIFT: u32 = 2;
const ERA_MASK: u64 = 0xffff;
const PAYLOAD_SHIFT: u32 = 18;
const PAYLOAD_MASK: u64 = (1 << 46) - 1;

/// The mode bits of a [`Word`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

/// One value of the breaker's state word.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Word(pub(crate) u64);

impl Word {
    fn pack(mode: Mode, era: u16, payload: u64) -> Word {
        Word(
            mode as u64
                | (u64::from(era) << ERA_SHIFT)
                | ((payload & PAYLOAD_MASK) << PAYLOAD_SHIFT),
        )
    }

    pub(crate) fn closed(era: u16) -> Word {
        Word::pack(Mode::Closed, era, 0)
    }

    /// Open until `until_ms` (saturates at 2^46 ms, some 2 000 years).
    pub(crate) fn open(era: u16, until_ms: u64) -> Word {
        Word::pack(Mode::Open, era, until_ms.min(PAYLOAD_MASK))
    }

    pub(crate) fn half_open(era: u16, probes: u16, successes: u16) -> Word {
        Word::pack(
            Mode::HalfOpen,
            era,
            u64::from(probes) | (u64::from(successes) << 16),
        )
    }

    pub(crate) fn mode(self) -> Mode {
        match self.0 & MODE_MASK {
            0 => Mode::Closed,
            1 => Mode::Open,
            _ => Mode::HalfOpen,
        }
    }

    pub(crate) fn era(self) -> u16 {
        // Masked to 16 bits first, so the cast cannot truncate.
        ((self.0 >> ERA_SHIFT) & ERA_MASK) as u16
    }

    fn payload(self) -> u64 {
        (self.0 >> PAYLOAD_SHIFT) & PAYLOAD_MASK
    }

    /// Open: when it may half-open, in nanoseconds since the epoch.
    pub(crate) fn until_nanos(self) -> u64 {
        self.payload().saturating_mul(1_000_000)
    }

    /// Half-open: probes in flight.
    pub(crate) fn probes(self) -> u16 {
        (self.payload() & 0xffff) as u16
    }

    /// Half-open: successful probes so far.
    pub(crate) fn successes(self) -> u16 {
        ((self.payload() >> 16) & 0xffff) as u16
    }

    pub(crate) fn with_probes(self, probes: u16) -> Word {
        Word::half_open(self.era(), probes, self.successes())
    }

    pub(crate) fn with_successes(self, successes: u16) -> Word {
        Word::half_open(self.era(), self.probes(), successes)
    }

    /// The next era, for the word a transition installs.
    pub(crate) fn next_era(self) -> u16 {
        self.era().wrapping_add(1)
    }

    pub(crate) fn gate_state(self) -> GateState {
        match self.mode() {
            Mode::Closed => GateState::Closed,
            Mode::Open => GateState::Open,
            Mode::HalfOpen => GateState::HalfOpen,
        }
    }
}

impl fmt::Debug for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Word");
        d.field("mode", &self.mode()).field("era", &self.era());
        match self.mode() {
            Mode::Closed => {}
            Mode::Open => {
                d.field("until_ms", &self.payload());
            }
            Mode::HalfOpen => {
                d.field("probes", &self.probes())
                    .field("successes", &self.successes());
            }
        }
        d.finish()
    }
}

/// A state's name for logs and metric labels: `closed`, `open`, `half_open`.
pub fn state_name(s: GateState) -> &'static str {
    match s {
        GateState::Closed => "closed",
        GateState::Open => "open",
        GateState::HalfOpen => "half_open",
    }
}

/// Why a breaker changed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransitionReason {
    /// Closed → open: `consecutive_failures` failures in a row.
    ConsecutiveFailures,
    /// Closed → open: the failure rate over the window reached its threshold.
    FailureRate,
    /// Closed → open: the slow-call rate over the window reached its threshold.
    SlowCallRate,
    /// Open → half-open: the open period ran out (noticed on the first
    /// admission or state query after it did).
    OpenElapsed,
    /// Open → half-open: an active health check saw the backend come back.
    BackendRecovered,
    /// Half-open → open: a probe failed.
    ProbeFailed,
    /// Half-open → closed: `half_open_successes` probes succeeded.
    ProbesSucceeded,
    /// Half-open → closed: the backend's removal slot was lost and the
    /// upstream's removal cap refused it again, so it must stay in service.
    RemovalRefused,
    /// → closed: [`CircuitBreaker::reset`](super::CircuitBreaker::reset).
    Reset,
}

impl TransitionReason {
    /// A stable snake_case name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            TransitionReason::ConsecutiveFailures => "consecutive_failures",
            TransitionReason::FailureRate => "failure_rate",
            TransitionReason::SlowCallRate => "slow_call_rate",
            TransitionReason::OpenElapsed => "open_elapsed",
            TransitionReason::BackendRecovered => "backend_recovered",
            TransitionReason::ProbeFailed => "probe_failed",
            TransitionReason::ProbesSucceeded => "probes_succeeded",
            TransitionReason::RemovalRefused => "removal_refused",
            TransitionReason::Reset => "reset",
        }
    }
}

impl fmt::Display for TransitionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change of a breaker's state, as given to
/// [`BreakerRegistry::on_transition`](crate::BreakerRegistry::on_transition)
/// callbacks. Every transition is also a `tracing` event and a metric.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Transition {
    /// The backend's address; `None` for a standalone breaker.
    pub addr: Option<SocketAddr>,
    /// The upstream's name, when the registry has one
    /// ([`BreakerRegistry::with_upstream`](crate::BreakerRegistry::with_upstream)).
    pub upstream: Option<Arc<str>>,
    /// The state before.
    pub from: GateState,
    /// The state after.
    pub to: GateState,
    /// Why.
    pub reason: TransitionReason,
    /// How long it stays open, when `to` is open (jitter included).
    pub open_for: Option<Duration>,
    /// Times this breaker has opened so far, this transition included.
    pub trips: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        let w = Word::closed(7);
        assert_eq!((w.mode(), w.era()), (Mode::Closed, 7));
        let w = Word::open(u16::MAX, 123_456);
        assert_eq!((w.mode(), w.era()), (Mode::Open, u16::MAX));
        assert_eq!(w.until_nanos(), 123_456_000_000);
        assert_eq!(w.next_era(), 0, "eras wrap");
        let w = Word::half_open(3, 2, 9);
        assert_eq!(
            (w.mode(), w.probes(), w.successes()),
            (Mode::HalfOpen, 2, 9)
        );
        let w = w.with_probes(u16::MAX).with_successes(u16::MAX);
        assert_eq!(
            (w.era(), w.probes(), w.successes()),
            (3, u16::MAX, u16::MAX)
        );
        assert_eq!(Word::open(1, u64::MAX).payload(), PAYLOAD_MASK, "saturates");
    }
}
