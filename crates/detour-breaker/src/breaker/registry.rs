//! One breaker per backend, fed by the engine's outcomes.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use detour_core::{AddrMap, AdmissionGate, AttemptOutcome, Backend, Observer, OutcomeClass};

use super::config::BreakerConfig;
use super::state::Transition;
use super::{BreakerSnapshot, CircuitBreaker, Listeners};
use detour_core::InvalidConfig;

/// The circuit breakers of an upstream's backends, keyed by address.
///
/// [`attach`](Self::attach) installs a breaker as a backend's
/// [`AdmissionGate`], so [`Backend::try_admit`] asks it; registered as an
/// [`Observer`], the registry feeds each breaker the outcomes its backend
/// caused. Removal of a backend by its breaker goes through the backend's
/// passive-removal cap ([`detour_core::RemovalCap`]): when the cap is used up,
/// the breaker stays closed.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use detour_breaker::{BreakerConfig, BreakerRegistry};
/// use detour_core::{Backend, GateState};
///
/// let registry = BreakerRegistry::new(BreakerConfig::default()).unwrap();
/// let backend = Arc::new(Backend::new("127.0.0.1:8081".parse().unwrap()));
/// let breaker = registry.attach(&backend).unwrap();
/// for _ in 0..5 {
///     breaker.record_failure(Duration::from_millis(3));
/// }
/// assert_eq!(breaker.state(), GateState::Open);
/// assert!(backend.try_admit(tokio::time::Instant::now()).is_none());
/// assert!(registry.retry_after().is_some());
/// ```
pub struct BreakerRegistry {
    config: BreakerConfig,
    upstream: Option<Arc<str>>,
    /// Read on every outcome without a lock; replaced whole (under `writer`)
    /// when a breaker is added or removed, which is rare.
    breakers: ArcSwap<Map>,
    writer: Mutex<()>,
    listeners: Arc<Listeners>,
}

type Map = AddrMap<Arc<CircuitBreaker>>;

impl fmt::Debug for BreakerRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerRegistry")
            .field("breakers", &self.len())
            .finish_non_exhaustive()
    }
}

/// [`BreakerRegistry::attach`] found another admission gate on the backend
/// (a gate can be installed only once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateTaken {
    /// The backend's address.
    pub addr: SocketAddr,
}

impl fmt::Display for GateTaken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "backend {} already has another admission gate",
            self.addr
        )
    }
}

impl std::error::Error for GateTaken {}

impl BreakerRegistry {
    /// A registry whose breakers all use `config`.
    ///
    /// # Errors
    /// [`InvalidConfig`] when `config` does not [validate](BreakerConfig::validate).
    pub fn new(config: BreakerConfig) -> Result<Self, InvalidConfig> {
        config.validate()?;
        Ok(BreakerRegistry {
            config,
            upstream: None,
            breakers: ArcSwap::from_pointee(Map::default()),
            writer: Mutex::default(),
            listeners: Arc::default(),
        })
    }

    /// Name the upstream whose backends this registry serves: its breakers
    /// put it in their transitions, log events and metric labels. Call it
    /// before the first [`attach`](Self::attach).
    pub fn with_upstream(mut self, name: impl Into<Arc<str>>) -> Self {
        self.upstream = Some(name.into());
        self
    }

    /// The upstream's name, if given.
    pub fn upstream(&self) -> Option<&str> {
        self.upstream.as_deref()
    }

    /// The breakers' configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// Give `backend` a breaker and install it as the backend's admission
    /// gate. Idempotent: attaching the same backend again returns the same
    /// breaker. A new `Backend` value at an address already known (the set
    /// was rebuilt) keeps the address's breaker and its state; an open
    /// breaker's removal slot moves to the new value.
    ///
    /// The breaker holds the backend weakly: the backend holds the breaker
    /// (as its gate), and neither keeps the other alive.
    ///
    /// # Errors
    /// [`GateTaken`] when the backend already has a different gate; the
    /// breaker is registered anyway and still sees outcomes, but does not
    /// gate admission.
    pub fn attach(&self, backend: &Arc<Backend>) -> Result<Arc<CircuitBreaker>, GateTaken> {
        let breaker = self.get_or_create(backend.addr());
        let gate: Arc<dyn AdmissionGate> = breaker.clone();
        let installed = match backend.state().set_gate(gate) {
            Ok(()) => true,
            Err(_) => backend
                .state()
                .gate()
                .is_some_and(|g| std::ptr::addr_eq(Arc::as_ptr(g), Arc::as_ptr(&breaker))),
        };
        if !installed {
            return Err(GateTaken {
                addr: backend.addr(),
            });
        }
        breaker.bind(backend);
        Ok(breaker)
    }

    /// The breaker for `addr`, made (unbound to any backend) if there is
    /// none: for callers that route by address without [`Backend`]s.
    pub fn get_or_create(&self, addr: SocketAddr) -> Arc<CircuitBreaker> {
        if let Some(b) = self.breaker(addr) {
            return b;
        }
        let _writing = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(b) = self.breaker(addr) {
            return b;
        }
        let b = Arc::new(CircuitBreaker::build(
            self.config.clone(),
            Some(addr),
            self.upstream.clone(),
            Arc::clone(&self.listeners),
        ));
        let mut map = Map::clone(&self.breakers.load());
        map.insert(addr, Arc::clone(&b));
        self.breakers.store(Arc::new(map));
        b
    }

    /// Forget the breaker of `addr` (the backend left the upstream), giving
    /// back any removal slot it held. The backend keeps it as its gate.
    pub fn detach(&self, addr: SocketAddr) -> Option<Arc<CircuitBreaker>> {
        let removed = {
            let _writing = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
            let mut map = Map::clone(&self.breakers.load());
            let removed = map.remove(&addr);
            if removed.is_some() {
                self.breakers.store(Arc::new(map));
            }
            removed
        };
        if let Some(b) = &removed {
            b.unbind();
        }
        removed
    }

    /// The breaker of `addr`, if there is one.
    pub fn breaker(&self, addr: SocketAddr) -> Option<Arc<CircuitBreaker>> {
        self.breakers.load().get(&addr).cloned()
    }

    /// Breakers in the registry.
    pub fn len(&self) -> usize {
        self.breakers.load().len()
    }

    /// Whether the registry has no breaker.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn all(&self) -> Vec<Arc<CircuitBreaker>> {
        self.breakers.load().values().cloned().collect()
    }

    /// Every breaker's state, ordered by address, for a status page.
    pub fn snapshot(&self) -> Vec<BreakerSnapshot> {
        let mut v: Vec<_> = self.all().iter().map(|b| b.snapshot()).collect();
        v.sort_by_key(|s| s.addr);
        v
    }

    /// The time until the first open breaker lets probes through: the
    /// `Retry-After` for a 503 when every breaker is open. `None` when no
    /// breaker is open.
    pub fn retry_after(&self) -> Option<Duration> {
        self.all().iter().filter_map(|b| b.retry_after()).min()
    }

    /// Call `f` on every transition of every breaker of this registry
    /// (replacing an earlier callback). It runs on the thread that caused the
    /// transition, with no lock held: keep it short.
    pub fn on_transition(&self, f: impl Fn(&Transition) + Send + Sync + 'static) {
        self.listeners.set(Arc::new(f));
    }
}

impl Observer for BreakerRegistry {
    /// Feed the outcome to the breaker of its address: `Local` outcomes never
    /// count, and the breaker's config decides which failures do (see
    /// [`CircuitBreaker::record_outcome`]). Outcomes for addresses without a
    /// breaker are ignored: a breaker is made by [`attach`](Self::attach) or
    /// [`get_or_create`](Self::get_or_create), never on the request path.
    fn on_attempt(&self, outcome: &AttemptOutcome<'_>) {
        if let OutcomeClass::Local(_) = outcome.class {
            return;
        }
        // No lock: a transition's callback may use the registry, even add a
        // breaker (the map being read stays valid until this guard drops).
        if let Some(b) = self.breakers.load().get(&outcome.addr) {
            b.record_outcome(outcome.class, outcome.latency);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detour_core::{CommitPoint, ErrorKind, GateState};
    use tokio::time::Instant;

    fn outcome(addr: SocketAddr, class: OutcomeClass) -> AttemptOutcome<'static> {
        AttemptOutcome {
            backend: None,
            addr,
            upstream: "app",
            class,
            status: None,
            latency: Duration::from_millis(5),
            commit: CommitPoint::NotConnected,
            attempt: 1,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn attach_is_idempotent_and_keeps_state_across_a_rebuilt_backend() {
        let reg = BreakerRegistry::new(BreakerConfig::default()).unwrap();
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b1 = Arc::new(Backend::new(addr));
        let first = reg.attach(&b1).unwrap();
        let again = reg.attach(&b1).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(reg.len(), 1);
        for _ in 0..5 {
            reg.on_attempt(&outcome(
                addr,
                OutcomeClass::BackendFailure(ErrorKind::ConnectRefused),
            ));
        }
        assert_eq!(first.state(), GateState::Open);
        assert!(b1.state().is_removed_for(detour_core::Removal::BreakerOpen));

        // The set is rebuilt: a new Backend value at the same address.
        let b2 = Arc::new(Backend::new(addr));
        let moved = reg.attach(&b2).unwrap();
        assert!(Arc::ptr_eq(&first, &moved), "the address keeps its breaker");
        assert!(b2.try_admit(Instant::now()).is_none(), "and its state");
        assert!(b2.state().is_removed_for(detour_core::Removal::BreakerOpen));
        assert!(
            !b1.state().is_removed_for(detour_core::Removal::BreakerOpen),
            "the old value gave its removal slot back"
        );
    }

    #[test]
    fn a_foreign_gate_is_reported() {
        struct Never;
        impl AdmissionGate for Never {
            fn try_admit(&self) -> bool {
                false
            }
            fn release(&self) {}
            fn state(&self) -> GateState {
                GateState::Open
            }
        }
        let reg = BreakerRegistry::new(BreakerConfig::default()).unwrap();
        let b = Arc::new(Backend::new("127.0.0.1:2".parse().unwrap()));
        b.state().set_gate(Arc::new(Never)).ok().unwrap();
        let err = reg.attach(&b).unwrap_err();
        assert_eq!(err.addr, b.addr());
        assert!(reg.breaker(b.addr()).is_some(), "registered all the same");
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_addresses_are_ignored_and_detach_gives_the_slot_back() {
        let reg = BreakerRegistry::new(BreakerConfig::default()).unwrap();
        let stranger: SocketAddr = "127.0.0.1:3".parse().unwrap();
        reg.on_attempt(&outcome(
            stranger,
            OutcomeClass::BackendFailure(ErrorKind::ConnectRefused),
        ));
        assert!(reg.is_empty(), "no breaker is made on the request path");

        let b = Arc::new(Backend::new("127.0.0.1:4".parse().unwrap()));
        let breaker = reg.attach(&b).unwrap();
        for _ in 0..5 {
            breaker.record_failure(Duration::ZERO);
        }
        assert!(b.state().is_removed_for(detour_core::Removal::BreakerOpen));
        let gone = reg.detach(b.addr()).unwrap();
        assert!(Arc::ptr_eq(&gone, &breaker));
        assert!(!b.state().is_removed_for(detour_core::Removal::BreakerOpen));
        assert!(reg.breaker(b.addr()).is_none());
    }
}
