//! [`OutlierDetector`]: ejects backends that are up but failing, from the
//! engine's stream of attempt outcomes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use detour_core::{
    AddrHash, AddrMap, AttemptOutcome, Backend, ErrorKind, Observer, OutcomeClass, Removal,
    RemovalCap,
};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::config::OutlierConfig;
use super::stats::{failure_percentage_outliers, success_rate_outliers, Sample};
use crate::event::{EjectCause, EventCallback, EventKind, Events, HealthEvent};
use detour_core::InvalidConfig;

mod carry;

/// Passive outlier detection for one upstream.
///
/// The engine reports every attempt to it (it is an [`Observer`]);
/// consecutive-failure ejections happen at once, on the request path, with
/// nothing but a few atomic operations per attempt. Success rate, failure
/// percentage, the end of ejections and the decay of the ejection multiplier
/// are handled by [`sweep`](Self::sweep), which [`run`](Self::run) calls every
/// interval (and at each ejection's end).
///
/// An ejection lasts `min(n × base_ejection, max_ejection)` (with jitter) for
/// the backend's n-th ejection in a row; n drops by one for every interval
/// the backend spends in service. Every ejection must first take a slot of
/// the upstream's [`RemovalCap`] (shared with the circuit breakers), so
/// passive removal never exceeds `max_ejection_percent`.
///
/// ```
/// use std::sync::Arc;
/// use detour_core::{Backend, Observer};
/// use detour_health::{OutlierConfig, OutlierDetector};
///
/// let backends: Vec<_> = (1..=4)
///     .map(|p| Arc::new(Backend::new(([10, 0, 0, 1], p).into())))
///     .collect();
/// let detector = Arc::new(OutlierDetector::new(OutlierConfig::default())?.upstream("app"));
/// detector.attach(&backends); // again whenever membership changes
/// let observer: Arc<dyn Observer> = detector.clone(); // hand to the engine
/// assert_eq!(detector.cap().total(), 4);
/// // tokio::spawn(detector.run(shutdown));
/// # drop(observer);
/// # Ok::<(), detour_health::InvalidConfig>(())
/// ```
pub struct OutlierDetector {
    config: OutlierConfig,
    max_multiplier: u32,
    cap: Arc<RemovalCap>,
    slots: ArcSwap<AddrMap<Arc<Slot>>>,
    /// Serialises `attach` (membership changes are rare).
    attaching: Mutex<()>,
    events: Events,
    /// When named, outcomes of other upstreams that carry no backend handle
    /// are ignored.
    filter: Option<Arc<str>>,
    rng: Mutex<fastrand::Rng>,
    wake: Notify,
}

impl std::fmt::Debug for OutlierDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutlierDetector")
            .field("upstream", self.events.upstream())
            .field("config", &self.config)
            .field("cap", &self.cap)
            .finish_non_exhaustive()
    }
}

/// One backend's counters. The request path touches only the atomics.
struct Slot {
    backend: Arc<Backend>,
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    successes: AtomicU64,
    failures: AtomicU64,
    /// Taken only to eject, to end an ejection, and by the sweep.
    ejection: Mutex<Ejection>,
}

#[derive(Debug, Default)]
struct Ejection {
    /// Whether this detector's ejection is in force.
    active: bool,
    /// Ejections in a row (the multiplier of the next one's length, minus one).
    count: u32,
    /// The end of the current or last ejection.
    until: Option<Instant>,
}

impl Slot {
    fn new(backend: Arc<Backend>) -> Self {
        Slot {
            backend,
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            consecutive_local: AtomicU32::new(0),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            ejection: Mutex::new(Ejection::default()),
        }
    }

    fn ejection(&self) -> MutexGuard<'_, Ejection> {
        // Every update under this lock is a plain field store, so a poisoned
        // lock still holds a consistent value.
        self.ejection.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reset_consecutive(&self) {
        for c in [
            &self.consecutive_5xx,
            &self.consecutive_gateway,
            &self.consecutive_local,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// Add one; returns the new count.
fn bump(c: &AtomicU32) -> u32 {
    c.fetch_add(1, Ordering::Relaxed).saturating_add(1)
}

/// Reset to zero without dirtying the cache line when it is zero already
/// (the common case on the request path).
fn clear(c: &AtomicU32) {
    if c.load(Ordering::Relaxed) != 0 {
        c.store(0, Ordering::Relaxed);
    }
}

/// What one attempt says about the backend, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Observed {
    /// A response head arrived with `status`; `failure` if it counts as one.
    Response { status: u16, failure: bool },
    /// The backend never answered properly: refused, timed out, reset, closed,
    /// invalid response.
    Transport(ErrorKind),
}

fn observe(class: OutcomeClass, status: Option<u16>) -> Option<Observed> {
    match class {
        OutcomeClass::Local(_) => None,
        // An error Detour raises itself never counts, whoever reported it.
        OutcomeClass::BackendFailure(kind) if kind.is_local() => None,
        OutcomeClass::BackendFailure(ErrorKind::HttpStatus(s)) => Some(Observed::Response {
            status: s,
            failure: true,
        }),
        OutcomeClass::BackendFailure(kind) => Some(Observed::Transport(kind)),
        // A 5xx is a failure for the statistics even if a policy did not
        // class it as one (as in Envoy).
        OutcomeClass::Success => {
            let status = status.unwrap_or(200);
            Some(Observed::Response {
                status,
                failure: status >= 500,
            })
        }
    }
}

/// Failures a gateway answers with 502/503/504 because it could not reach
/// the backend at all.
fn is_connect_failure(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::ConnectRefused | ErrorKind::ConnectTimeout | ErrorKind::TlsHandshake
    )
}

/// One backend's outlier status, for status pages.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OutlierStatus {
    /// The backend's address.
    pub addr: SocketAddr,
    /// The end of the ejection in force, if any.
    pub ejected_until: Option<Instant>,
    /// Ejections in a row (decays while the backend behaves).
    pub ejections: u32,
    /// Consecutive 5xx responses now.
    pub consecutive_5xx: u32,
    /// Consecutive gateway failures now.
    pub consecutive_gateway_failure: u32,
    /// Consecutive local-origin failures now.
    pub consecutive_local_origin_failure: u32,
    /// Successes so far in this interval.
    pub interval_successes: u64,
    /// Failures so far in this interval.
    pub interval_failures: u64,
}

impl OutlierDetector {
    /// A detector with `config`, and a new [`RemovalCap`] of its
    /// `max_ejection_percent` for the upstream.
    ///
    /// # Errors
    /// [`InvalidConfig`] when the configuration does not validate.
    pub fn new(config: OutlierConfig) -> Result<Self, InvalidConfig> {
        let config = config.validate()?;
        Ok(OutlierDetector {
            max_multiplier: config.max_multiplier(),
            cap: Arc::new(RemovalCap::new(config.max_ejection_percent)),
            config,
            slots: ArcSwap::from_pointee(AddrMap::default()),
            attaching: Mutex::new(()),
            events: Events::new("default".into()),
            filter: None,
            rng: Mutex::new(fastrand::Rng::new()),
            wake: Notify::new(),
        })
    }

    /// Name the upstream: events and metric labels carry it, and outcomes of
    /// other upstreams that carry no backend handle are ignored.
    pub fn upstream(mut self, name: impl Into<Arc<str>>) -> Self {
        let name = name.into();
        self.events.set_upstream(Arc::clone(&name));
        self.filter = Some(name);
        self
    }

    /// Call `callback` on every ejection and its end (after tracing and
    /// metrics). Ejections happen on the request path: keep it quick.
    pub fn on_event(mut self, callback: impl Fn(&HealthEvent) + Send + Sync + 'static) -> Self {
        self.events.set_callback(Arc::new(callback));
        self
    }

    /// Call an already-shared callback on every ejection and its end.
    pub fn on_event_shared(mut self, callback: EventCallback) -> Self {
        self.events.set_callback(callback);
        self
    }

    /// Seed the jitter's random numbers (for reproducible ejection lengths).
    pub fn seed(self, seed: u64) -> Self {
        *self.rng.lock().unwrap_or_else(|e| e.into_inner()) = fastrand::Rng::with_seed(seed);
        self
    }

    /// The configuration in force.
    pub fn config(&self) -> &OutlierConfig {
        &self.config
    }

    /// The upstream's passive-removal ceiling. Breakers of the same upstream
    /// share it through each backend's state once [`attach`](Self::attach)
    /// installed it (a backend keeps the first cap it is given).
    pub fn cap(&self) -> Arc<RemovalCap> {
        Arc::clone(&self.cap)
    }

    /// Make `backends` the upstream's members: the cap counts them and is
    /// installed on each, and their counters are kept (or created). Call it
    /// again whenever the membership changes; outcomes of backends not
    /// attached are ignored. A departing backend's ejection ends, freeing its
    /// slot of the cap.
    pub fn attach(&self, backends: &[Arc<Backend>]) {
        let _serial = self.attaching.lock().unwrap_or_else(|e| e.into_inner());
        self.cap.attach(backends);
        let old = self.slots.load_full();
        let mut map = AddrMap::with_capacity_and_hasher(backends.len(), AddrHash);
        for b in backends {
            let slot = old
                .get(&b.addr())
                .filter(|s| Arc::ptr_eq(&s.backend, b))
                .cloned()
                .unwrap_or_else(|| Arc::new(Slot::new(Arc::clone(b))));
            map.insert(b.addr(), slot);
        }
        let map = Arc::new(map);
        // Publish first: an ejection racing with this checks membership under
        // the slot's lock, so it either lands before the loop below undoes it
        // or is refused.
        self.slots.store(Arc::clone(&map));
        for (addr, slot) in old.iter() {
            let kept = map.get(addr).is_some_and(|s| Arc::ptr_eq(s, slot));
            if !kept {
                let mut e = slot.ejection();
                if e.active {
                    e.active = false;
                    slot.backend.state().clear_ejection();
                    slot.backend.state().restore(Removal::Ejected);
                }
            }
        }
        self.wake.notify_one();
    }

    /// Every attached backend's status, for status pages.
    pub fn status(&self) -> Vec<OutlierStatus> {
        let now = Instant::now();
        let slots = self.slots.load();
        let mut all: Vec<_> = slots
            .values()
            .map(|s| {
                let e = s.ejection();
                OutlierStatus {
                    addr: s.backend.addr(),
                    ejected_until: e.until.filter(|&u| e.active && u > now),
                    ejections: e.count,
                    consecutive_5xx: s.consecutive_5xx.load(Ordering::Relaxed),
                    consecutive_gateway_failure: s.consecutive_gateway.load(Ordering::Relaxed),
                    consecutive_local_origin_failure: s.consecutive_local.load(Ordering::Relaxed),
                    interval_successes: s.successes.load(Ordering::Relaxed),
                    interval_failures: s.failures.load(Ordering::Relaxed),
                }
            })
            .collect();
        all.sort_by_key(|s| s.addr);
        all
    }

    /// Evaluate the interval that ends at `now`: end expired ejections, eject
    /// success-rate and failure-percentage outliers (worst first, as far as
    /// the removal ceiling allows), and decay the multiplier of backends that
    /// spent a whole interval in service. [`run`](Self::run) calls it every
    /// `interval`.
    pub fn sweep(&self, now: Instant) {
        let slots = self.slots.load_full();
        let ordered: Vec<&Arc<Slot>> = slots.values().collect();
        self.expire(&ordered, now);

        let samples: Vec<Sample> = ordered
            .iter()
            .map(|s| Sample {
                successes: s.successes.swap(0, Ordering::Relaxed),
                failures: s.failures.swap(0, Ordering::Relaxed),
            })
            .collect();
        // Backends ejected now are out already; they do not count among their
        // peers either (they may carry a few outcomes from before).
        let live: Vec<usize> = (0..ordered.len())
            .filter(|&i| !ordered[i].backend.state().is_removed_for(Removal::Ejected))
            .collect();
        let live_samples: Vec<Sample> = live.iter().map(|&i| samples[i]).collect();
        if self.config.success_rate.enabled {
            for o in success_rate_outliers(&live_samples, &self.config.success_rate) {
                self.eject(
                    ordered[live[o.index]],
                    EjectCause::SuccessRate,
                    o.reason,
                    now,
                );
            }
        }
        if self.config.failure_percentage.enabled {
            for o in failure_percentage_outliers(&live_samples, &self.config.failure_percentage) {
                self.eject(
                    ordered[live[o.index]],
                    EjectCause::FailurePercentage,
                    o.reason,
                    now,
                );
            }
        }

        for s in &ordered {
            let mut e = s.ejection();
            let behaved = !e.active && e.until.is_some_and(|u| u + self.config.interval <= now);
            if behaved && e.count > 0 {
                e.count -= 1;
            }
        }
    }

    /// Sweep every `interval` and end each ejection when it expires, until
    /// `shutdown` completes. The server spawns it and owns it.
    ///
    /// # Cancel safety
    /// Dropping the future stops the sweeps, like `shutdown`; ejections in
    /// force still end on time for selection (their end is a timestamp), but
    /// their slot of the removal ceiling is only freed by a later sweep.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut next_sweep = Instant::now() + self.config.interval;
        loop {
            let wake_at = self.next_expiry().map_or(next_sweep, |e| e.min(next_sweep));
            tokio::select! {
                biased;
                () = &mut shutdown => return,
                () = tokio::time::sleep_until(wake_at) => {}
                () = self.wake.notified() => continue,
            }
            let now = Instant::now();
            if now >= next_sweep {
                self.sweep(now);
                next_sweep = now + self.config.interval;
            } else {
                let slots = self.slots.load_full();
                let ordered: Vec<&Arc<Slot>> = slots.values().collect();
                self.expire(&ordered, now);
            }
        }
    }

    fn next_expiry(&self) -> Option<Instant> {
        let slots = self.slots.load();
        slots
            .values()
            .filter_map(|s| {
                let e = s.ejection();
                e.until.filter(|_| e.active)
            })
            .min()
    }

    /// End the ejections that expired by `now`, and notice the ones someone
    /// else ended (a passing health check).
    fn expire(&self, slots: &[&Arc<Slot>], now: Instant) {
        for s in slots {
            let state = s.backend.state();
            let ended = {
                let mut e = s.ejection();
                if !e.active {
                    continue;
                }
                if !state.is_removed_for(Removal::Ejected) {
                    // Ended elsewhere, and announced there; the multiplier
                    // starts decaying from now.
                    e.active = false;
                    e.until = Some(e.until.map_or(now, |u| u.min(now)));
                    continue;
                }
                match e.until {
                    Some(until) if until <= now => {
                        e.active = false;
                        state.clear_ejection();
                        state.restore(Removal::Ejected);
                        state.mark_recovered(until);
                        until
                    }
                    _ => continue,
                }
            };
            s.reset_consecutive();
            self.events.emit(
                s.backend.addr(),
                EventKind::Unejected,
                "ejection expired".into(),
                ended,
            );
        }
    }

    /// Eject `slot`'s backend for `cause` if the removal ceiling allows.
    fn eject(&self, slot: &Slot, cause: EjectCause, reason: String, now: Instant) -> bool {
        let state = slot.backend.state();
        let (until, length) = {
            let mut e = slot.ejection();
            if state.is_removed_for(Removal::Ejected) {
                return false; // already out
            }
            let member = self
                .slots
                .load()
                .get(&slot.backend.addr())
                .is_some_and(|s| std::ptr::eq(Arc::as_ptr(s), slot));
            if !member {
                return false; // it left the upstream meanwhile
            }
            if e.active {
                // A passing health check ended it before the sweep noticed.
                e.active = false;
                e.until = Some(e.until.map_or(now, |u| u.min(now)));
            }
            if !state.try_remove(Removal::Ejected) {
                drop(e);
                self.events.ejection_refused(slot.backend.addr(), cause);
                return false;
            }
            e.count = e.count.saturating_add(1).min(self.max_multiplier);
            let u = self.rng.lock().unwrap_or_else(|p| p.into_inner()).f64();
            let length = self
                .config
                .ejection_length(e.count)
                .mul_f64(1.0 - self.config.jitter * u);
            let until = now + length;
            state.eject_until(until);
            e.active = true;
            e.until = Some(until);
            (until, length)
        };
        slot.reset_consecutive();
        self.wake.notify_one();
        self.events.emit(
            slot.backend.addr(),
            EventKind::Ejected { cause, until },
            format!("{reason}; ejected for {}", fmt_secs(length)),
            now,
        );
        true
    }

    /// Count one outcome; returns the detector that fired, if any.
    fn count(&self, slot: &Slot, observed: Observed) -> Option<(EjectCause, String)> {
        let cfg = &self.config;
        let (n5, ngw, nlocal) = match observed {
            Observed::Response { status, failure } => {
                if failure {
                    slot.failures.fetch_add(1, Ordering::Relaxed);
                } else {
                    slot.successes.fetch_add(1, Ordering::Relaxed);
                }
                clear(&slot.consecutive_local);
                let n5 = if status >= 500 {
                    bump(&slot.consecutive_5xx)
                } else {
                    clear(&slot.consecutive_5xx);
                    0
                };
                let ngw = if matches!(status, 502..=504) {
                    bump(&slot.consecutive_gateway)
                } else {
                    clear(&slot.consecutive_gateway);
                    0
                };
                (n5, ngw, 0)
            }
            Observed::Transport(kind) => {
                slot.failures.fetch_add(1, Ordering::Relaxed);
                let ngw = if is_connect_failure(kind) {
                    bump(&slot.consecutive_gateway)
                } else {
                    0
                };
                (0, ngw, bump(&slot.consecutive_local))
            }
        };
        let fired = |threshold: u32, n: u32| threshold > 0 && n >= threshold;
        if fired(cfg.consecutive_5xx, n5) {
            Some((EjectCause::Consecutive5xx, format!("{n5} consecutive 5xx")))
        } else if fired(cfg.consecutive_gateway_failure, ngw) {
            Some((
                EjectCause::ConsecutiveGatewayFailure,
                format!("{ngw} consecutive gateway failures"),
            ))
        } else if fired(cfg.consecutive_local_origin_failure, nlocal) {
            let what = match observed {
                Observed::Transport(kind) => format!(": last {kind}"),
                Observed::Response { .. } => String::new(),
            };
            Some((
                EjectCause::ConsecutiveLocalOriginFailure,
                format!("{nlocal} consecutive local-origin failures{what}"),
            ))
        } else {
            None
        }
    }
}

fn fmt_secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

impl Observer for OutlierDetector {
    fn on_attempt(&self, outcome: &AttemptOutcome<'_>) {
        let Some(observed) = observe(outcome.class, outcome.status) else {
            return;
        };
        let slots = self.slots.load();
        let Some(slot) = slots.get(&outcome.addr) else {
            return;
        };
        match outcome.backend {
            // Another backend at the same address (another upstream, or one
            // replaced by discovery) is not this one.
            Some(b) if !Arc::ptr_eq(b, &slot.backend) => return,
            Some(_) => {}
            None => {
                if self
                    .filter
                    .as_deref()
                    .is_some_and(|name| name != outcome.upstream)
                {
                    return;
                }
            }
        }
        if let Some((cause, reason)) = self.count(slot, observed) {
            // Once out, further failures (requests already in flight) do not
            // eject it again.
            if !slot.backend.state().is_removed_for(Removal::Ejected) {
                self.eject(slot, cause, reason, Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_outcomes_and_local_kinds_are_never_observed() {
        for kind in [
            ErrorKind::CircuitOpen,
            ErrorKind::BudgetExhausted,
            ErrorKind::Overloaded,
            ErrorKind::NoPeer,
            ErrorKind::DownstreamClosed,
            ErrorKind::DeadlineExceeded,
            ErrorKind::ConnectionClosed,
        ] {
            assert_eq!(observe(OutcomeClass::Local(kind), None), None);
        }
        assert_eq!(
            observe(OutcomeClass::BackendFailure(ErrorKind::CircuitOpen), None),
            None
        );
        assert_eq!(
            observe(
                OutcomeClass::BackendFailure(ErrorKind::HttpStatus(503)),
                Some(503)
            ),
            Some(Observed::Response {
                status: 503,
                failure: true
            })
        );
        assert_eq!(
            observe(OutcomeClass::Success, Some(404)),
            Some(Observed::Response {
                status: 404,
                failure: false
            })
        );
        assert_eq!(
            observe(OutcomeClass::Success, Some(500)),
            Some(Observed::Response {
                status: 500,
                failure: true
            })
        );
        assert_eq!(
            observe(OutcomeClass::BackendFailure(ErrorKind::ReadTimeout), None),
            Some(Observed::Transport(ErrorKind::ReadTimeout))
        );
    }
}
