//! Charging an attempt's outcome to its backend's state and the observers.

use std::sync::Arc;
use std::time::Duration;

use detour_core::{AttemptOutcome, CommitPoint, HttpPeer, Observer, OutcomeClass};
use tokio::time::Instant;

/// One attempt's outcome, as the engine reports it.
pub(crate) struct Charge {
    pub(crate) class: OutcomeClass,
    pub(crate) status: Option<u16>,
    pub(crate) latency: Duration,
    pub(crate) commit: CommitPoint,
    /// The attempt's number (1 for the first).
    pub(crate) attempt: u32,
    /// When it ended (the engine read the clock for its latency already).
    pub(crate) at: Instant,
}

/// Report `c` for an attempt to `peer`: to its backend's state, its
/// upstream's observer and the server's observers.
///
/// The backend is charged only when the attempt went to that backend's own
/// address: a hook that pointed the peer elsewhere charges no backend (the
/// observers still hear of the address it went to).
pub(crate) fn charge(observers: &[Arc<dyn Observer>], peer: &HttpPeer, c: Charge) {
    let backend = peer.backend().filter(|b| b.addr() == peer.addr);
    if let Some(b) = backend {
        b.state().record_attempt(c.class, c.status, c.latency, c.at);
    }
    if observers.is_empty() && peer.observer().is_none() {
        return;
    }
    let outcome = AttemptOutcome {
        backend,
        addr: peer.addr,
        upstream: &peer.upstream,
        class: c.class,
        status: c.status,
        latency: c.latency,
        commit: c.commit,
        attempt: c.attempt,
    };
    if let Some(o) = peer.observer() {
        o.on_attempt(&outcome);
    }
    for o in observers {
        o.on_attempt(&outcome);
    }
}
