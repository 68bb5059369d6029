//! [`HealthChecker`]: runs an upstream's active checks and applies their verdicts
//! to each backend's shared state.
//!
//! Each backend has its own schedule: `interval` while its state is settled,
//! `fast_interval` while it is changing (between its first contrary result and
//! the `rise`/`fall` threshold), both with jitter that only shortens the wait,
//! so the interval stays an upper bound. Every check that is due runs at once,
//! each in its own task under the check timeout, so one hanging backend never
//! delays the others.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use detour_core::connect::{ClientExchange, Connect};
use detour_core::{Backend, Removal};
use tokio::sync::Notify;
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;

use super::check::{CheckFailure, CheckFailureKind, HealthCheck};
use super::config::HealthConfig;
use super::configured::ConfiguredCheck;
use crate::event::{EventCallback, EventKind, Events, HealthEvent};
use detour_core::InvalidConfig;

type BackendList = Box<dyn Fn() -> Vec<Arc<Backend>> + Send + Sync>;

/// The active checks of one upstream.
///
/// The server builds one per upstream, runs [`first_round`](Self::first_round)
/// before opening its listeners, then spawns [`run`](Self::run) with its
/// shutdown signal.
///
/// Verdicts are written to [`detour_core::BackendState`]: down is
/// `set_check_failed(true)`; up is `set_check_failed(false)`, `mark_recovered`
/// (slow start), the gate's `on_backend_recovered()` (an open breaker goes
/// half-open at once) and, with `unejects`, the end of an outlier ejection.
///
/// ```
/// use std::sync::Arc;
/// use detour_core::{connect::TcpConnector, Backend};
/// use detour_health::{HealthChecker, HealthConfig};
///
/// # async fn demo() -> Result<(), detour_health::InvalidConfig> {
/// let backends = vec![Arc::new(Backend::new("127.0.0.1:9001".parse().unwrap()))];
/// let list = backends.clone();
/// let checker = Arc::new(
///     HealthChecker::from_config(HealthConfig::http("/healthz"), TcpConnector, move || list.clone())?
///         .upstream("app")
///         .on_event(|e| eprintln!("{} {}: {}", e.backend, e.kind.as_str(), e.reason)),
/// );
/// checker.first_round().await; // before the listeners open
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let task = tokio::spawn(Arc::clone(&checker).run(async move { let _ = stopped.await; }));
/// // ... serve ...
/// let _ = stop.send(());
/// let _ = task.await;
/// # Ok(()) }
/// ```
pub struct HealthChecker<H = ConfiguredCheck> {
    config: HealthConfig,
    check: Arc<H>,
    backends: BackendList,
    events: Events,
    state: Mutex<State>,
    wake: Notify,
}

impl<H> std::fmt::Debug for HealthChecker<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthChecker")
            .field("upstream", self.events.upstream())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

struct State {
    tracks: HashMap<usize, Track>,
    /// The addresses of the tracked backends.
    addrs: HashSet<SocketAddr>,
    rng: fastrand::Rng,
}

/// The checker's view of one backend.
struct Track {
    backend: Arc<Backend>,
    verdict: Verdict,
    /// Whether a check ever passed: a backend that was never up comes up on
    /// its first pass (as Envoy does for new hosts), so start-up needs one
    /// round, not `rise` of them.
    ever_passed: bool,
    /// Consecutive results contrary to the verdict.
    streak: u32,
    next_due: Instant,
    last_check: Option<Instant>,
    last_failure: Option<CheckFailure>,
}

/// What the active checks say about a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// New, not checked yet, and not taking traffic until its first pass
    /// (`initially_healthy = false`).
    Pending,
    /// Up.
    Up,
    /// Down.
    Down,
}

/// One backend's active-check status, for status pages.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BackendHealth {
    /// The backend's address.
    pub addr: SocketAddr,
    /// What the checks say.
    pub verdict: Verdict,
    /// Consecutive results contrary to the verdict (the backend is changing
    /// state while this is above zero).
    pub streak: u32,
    /// When its last check finished.
    pub last_check: Option<Instant>,
    /// Why its last failed check failed.
    pub last_failure: Option<String>,
}

/// A transition decided under the lock, carried out after it.
struct Change {
    backend: Arc<Backend>,
    to: Verdict,
    reason: String,
    /// Record the recovery for slow start (not for backends coming up in the
    /// start-up round: there is no traffic yet to ramp against).
    mark_recovered: bool,
}

/// The checks in flight, each a task that owns its backend.
struct InFlight {
    set: JoinSet<(usize, Arc<Backend>, Result<(), CheckFailure>)>,
    ids: HashMap<tokio::task::Id, (usize, Arc<Backend>)>,
    keys: HashSet<usize>,
}

impl InFlight {
    fn new() -> Self {
        InFlight {
            set: JoinSet::new(),
            ids: HashMap::new(),
            keys: HashSet::new(),
        }
    }
}

type Joined = Result<
    (
        tokio::task::Id,
        (usize, Arc<Backend>, Result<(), CheckFailure>),
    ),
    JoinError,
>;

fn key_of(b: &Arc<Backend>) -> usize {
    // The map's entry (or the check task) holds the Arc, so the address cannot
    // be reused by another backend while the key is in use.
    Arc::as_ptr(b) as usize
}

fn plural(n: u32, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

impl<C: Connect> HealthChecker<ConfiguredCheck<C>> {
    /// The checker `config` describes (TCP or HTTP), dialling through
    /// `connector`, over the backends `backends` returns (called before every
    /// scheduling pass, so discovery changes are picked up).
    ///
    /// # Errors
    /// [`InvalidConfig`] when the configuration does not validate.
    pub fn from_config(
        config: HealthConfig,
        connector: C,
        backends: impl Fn() -> Vec<Arc<Backend>> + Send + Sync + 'static,
    ) -> Result<Self, InvalidConfig> {
        let check = ConfiguredCheck::from_config(&config, connector)?;
        Self::new(config, check, backends)
    }

    /// Like [`from_config`](Self::from_config), with HTTP checks sent through
    /// `exchange` — the server's own dialing, so an upstream with TLS or
    /// HTTP/2 is checked the way its traffic reaches it. TCP checks still
    /// dial through `connector`.
    ///
    /// # Errors
    /// [`InvalidConfig`] when the configuration does not validate.
    pub fn from_config_with_exchange(
        config: HealthConfig,
        connector: C,
        exchange: Arc<dyn ClientExchange>,
        backends: impl Fn() -> Vec<Arc<Backend>> + Send + Sync + 'static,
    ) -> Result<Self, InvalidConfig> {
        let check = ConfiguredCheck::from_config_with_exchange(&config, connector, exchange)?;
        Self::new(config, check, backends)
    }
}

impl<H: HealthCheck> HealthChecker<H> {
    /// A checker running `check` with `config`'s timings over the backends
    /// `backends` returns (called before every scheduling pass, so discovery
    /// changes are picked up; call [`backends_changed`](Self::backends_changed)
    /// to have new backends checked at once).
    ///
    /// # Errors
    /// [`InvalidConfig`] when the configuration does not validate.
    pub fn new(
        config: HealthConfig,
        check: H,
        backends: impl Fn() -> Vec<Arc<Backend>> + Send + Sync + 'static,
    ) -> Result<Self, InvalidConfig> {
        Ok(HealthChecker {
            config: config.validate()?,
            check: Arc::new(check),
            backends: Box::new(backends),
            events: Events::new("default".into()),
            state: Mutex::new(State {
                tracks: HashMap::new(),
                addrs: HashSet::new(),
                rng: fastrand::Rng::new(),
            }),
            wake: Notify::new(),
        })
    }

    /// Name the upstream (events and metric labels). Default `default`.
    pub fn upstream(mut self, name: impl Into<Arc<str>>) -> Self {
        self.events.set_upstream(name.into());
        self
    }

    /// Call `callback` on every transition (after tracing and metrics).
    pub fn on_event(mut self, callback: impl Fn(&HealthEvent) + Send + Sync + 'static) -> Self {
        self.events.set_callback(Arc::new(callback));
        self
    }

    /// Call an already-shared callback on every transition.
    pub fn on_event_shared(mut self, callback: EventCallback) -> Self {
        self.events.set_callback(callback);
        self
    }

    /// Seed the jitter's random numbers (for reproducible schedules).
    pub fn seed(self, seed: u64) -> Self {
        self.lock().rng = fastrand::Rng::with_seed(seed);
        self
    }

    /// The configuration in force.
    pub fn config(&self) -> &HealthConfig {
        &self.config
    }

    /// Prepare a backend before it is published to selection: unless
    /// `initially_healthy`, it is marked check-failed, so it takes no traffic
    /// before its first passing check. (The checker does the same when it
    /// first sees a backend; calling this closes the gap between publishing
    /// and the checker's next pass.) A backend the checker already tracks
    /// keeps its verdict: an update that adds one backend must not take the
    /// others down, and a copy of a tracked backend with a new weight or new
    /// metadata (same address) keeps the verdict its predecessor had.
    pub fn prepare(&self, backend: &Backend) {
        if self.config.initially_healthy {
            return;
        }
        // The same key as `key_of`: the address of the shared `Backend`.
        let key = std::ptr::from_ref(backend) as usize;
        let st = self.lock();
        if !st.tracks.contains_key(&key) && !st.addrs.contains(&backend.addr()) {
            backend.state().set_check_failed(true);
        }
    }

    /// The backend list changed: have [`run`](Self::run) look at it now, so new
    /// backends are checked at once.
    pub fn backends_changed(&self) {
        self.wake.notify_one();
    }

    /// Check every backend once, concurrently, and apply the verdicts; returns
    /// when all checks finished, so within about the check timeout. The server
    /// calls it before opening its listeners, so no request meets a backend of
    /// unknown health. A backend that passes comes up (one pass suffices for a
    /// new backend); one that fails is down.
    ///
    /// # Cancel safety
    /// Dropping the future cancels the checks in flight; verdicts already
    /// applied stay.
    pub async fn first_round(&self) {
        let mut inflight = InFlight::new();
        self.dispatch(&mut inflight, true, true);
        while let Some(joined) = inflight.set.join_next_with_id().await {
            self.finish(&mut inflight, joined, true);
        }
    }

    /// Check backends on their schedules until `shutdown` completes. The server
    /// spawns it and owns it; checks in flight are cancelled at shutdown.
    ///
    /// # Cancel safety
    /// Dropping the future stops checking, like `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut inflight = InFlight::new();
        let mut refresh = true;
        loop {
            let next = self.dispatch(&mut inflight, false, refresh);
            refresh = tokio::select! {
                biased;
                () = &mut shutdown => return,
                Some(joined) = inflight.set.join_next_with_id() => {
                    self.finish(&mut inflight, joined, false);
                    false
                }
                () = tokio::time::sleep_until(next) => true,
                () = self.wake.notified() => true,
            };
        }
    }

    /// Every backend's status, for status pages.
    pub fn status(&self) -> Vec<BackendHealth> {
        let st = self.lock();
        let mut all: Vec<_> = st
            .tracks
            .values()
            .map(|t| BackendHealth {
                addr: t.backend.addr(),
                verdict: t.verdict,
                streak: t.streak,
                last_check: t.last_check,
                last_failure: t.last_failure.as_ref().map(|f| f.to_string()),
            })
            .collect();
        all.sort_by_key(|b| b.addr);
        all
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave the schedule inconsistent (every
        // update is a plain field store), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pick up the backend list, start the checks that are due (all of them
    /// when `all`), and return when the next one will be due.
    fn dispatch(&self, inflight: &mut InFlight, all: bool, refresh: bool) -> Instant {
        // The list is asked for only when the loop woke for time or a change,
        // not after every finished check.
        let list = refresh.then(|| (self.backends)());
        let now = Instant::now();
        let mut next = now + self.config.interval;
        let mut due = Vec::new();
        {
            let mut st = self.lock();
            if let Some(list) = list {
                let old = std::mem::take(&mut st.tracks);
                st.tracks = self.retrack(old, list, now);
                st.addrs = st.tracks.values().map(|t| t.backend.addr()).collect();
            }
            for (&key, t) in &st.tracks {
                if inflight.keys.contains(&key) {
                    continue;
                }
                if all || t.next_due <= now {
                    due.push((key, Arc::clone(&t.backend)));
                } else {
                    next = next.min(t.next_due);
                }
            }
        }
        let timeout = self.config.timeout;
        for (key, backend) in due {
            let check = Arc::clone(&self.check);
            let b = Arc::clone(&backend);
            let handle = inflight.set.spawn(async move {
                let result = match tokio::time::timeout(timeout, check.check(&b)).await {
                    Ok(r) => r,
                    Err(_) => Err(CheckFailure::timeout(timeout)),
                };
                (key, b, result)
            });
            inflight.ids.insert(handle.id(), (key, backend));
            inflight.keys.insert(key);
        }
        next
    }

    /// The tracks of `list`: a backend already tracked keeps its track; one
    /// that replaced a tracked backend at the same address (a weight or
    /// metadata change swaps in a copy) takes its predecessor's track, so it
    /// keeps its verdict instead of waiting for a first check; the rest
    /// start new.
    fn retrack(
        &self,
        mut old: HashMap<usize, Track>,
        list: Vec<Arc<Backend>>,
        now: Instant,
    ) -> HashMap<usize, Track> {
        let by_addr: HashMap<SocketAddr, usize> =
            old.iter().map(|(k, t)| (t.backend.addr(), *k)).collect();
        let mut tracks = HashMap::with_capacity(list.len());
        for b in list {
            let key = key_of(&b);
            if tracks.contains_key(&key) {
                continue;
            }
            let track = match old.remove(&key) {
                Some(t) => t,
                None => match by_addr.get(&b.addr()).and_then(|k| old.remove(k)) {
                    Some(mut t) => {
                        b.state().set_check_failed(t.verdict != Verdict::Up);
                        t.backend = b;
                        t
                    }
                    None => self.new_track(b, now),
                },
            };
            tracks.insert(key, track);
        }
        tracks
    }

    fn new_track(&self, backend: Arc<Backend>, now: Instant) -> Track {
        let verdict = if self.config.initially_healthy {
            Verdict::Up
        } else {
            backend.state().set_check_failed(true);
            Verdict::Pending
        };
        self.events
            .gauge_healthy(backend.addr(), verdict == Verdict::Up);
        Track {
            backend,
            verdict,
            ever_passed: false,
            streak: 0,
            next_due: now,
            last_check: None,
            last_failure: None,
        }
    }

    /// Apply one finished check.
    fn finish(&self, inflight: &mut InFlight, joined: Joined, startup: bool) {
        let (key, backend, result) = match joined {
            Ok((id, (key, backend, result))) => {
                inflight.ids.remove(&id);
                (key, backend, result)
            }
            Err(e) => {
                let Some((key, backend)) = inflight.ids.remove(&e.id()) else {
                    return;
                };
                let failure = if e.is_panic() {
                    CheckFailure::new(CheckFailureKind::Panicked, "the check panicked")
                } else {
                    CheckFailure::new(CheckFailureKind::Custom, "the check was cancelled")
                };
                (key, backend, Err(failure))
            }
        };
        inflight.keys.remove(&key);
        let at = Instant::now();
        if let Some(change) = self.judge(key, &backend, result, at, startup) {
            self.carry_out(change, at);
        }
    }

    /// Fold one result into the backend's track; returns the transition it
    /// causes, if any.
    fn judge(
        &self,
        key: usize,
        backend: &Arc<Backend>,
        result: Result<(), CheckFailure>,
        at: Instant,
        startup: bool,
    ) -> Option<Change> {
        let cfg = &self.config;
        let mut guard = self.lock();
        let st = &mut *guard;
        let track = st.tracks.get_mut(&key)?;
        if !Arc::ptr_eq(&track.backend, backend) {
            return None; // a result for a backend that left the set
        }
        track.last_check = Some(at);
        let mut change = None;
        match result {
            Ok(()) => {
                let first = !track.ever_passed;
                track.ever_passed = true;
                if track.verdict == Verdict::Up {
                    track.streak = 0;
                } else {
                    track.streak += 1;
                    if first || track.streak >= cfg.rise {
                        let reason = if first {
                            "first passing check".to_string()
                        } else {
                            plural(track.streak, "passing check", "consecutive passing checks")
                        };
                        change = Some(Change {
                            backend: Arc::clone(backend),
                            to: Verdict::Up,
                            reason,
                            mark_recovered: !(startup && first),
                        });
                        track.verdict = Verdict::Up;
                        track.streak = 0;
                    }
                }
            }
            Err(failure) => {
                match track.verdict {
                    Verdict::Down => track.streak = 0,
                    Verdict::Pending => {
                        // Not a change of admission (it took no traffic), but
                        // operators want to hear that a new backend failed.
                        change = Some(Change {
                            backend: Arc::clone(backend),
                            to: Verdict::Down,
                            reason: format!("first check failed: {failure}"),
                            mark_recovered: false,
                        });
                        track.verdict = Verdict::Down;
                        track.streak = 0;
                    }
                    Verdict::Up => {
                        track.streak += 1;
                        if track.streak >= cfg.fall {
                            change = Some(Change {
                                backend: Arc::clone(backend),
                                to: Verdict::Down,
                                reason: format!(
                                    "{}: {failure}",
                                    plural(
                                        track.streak,
                                        "failed check",
                                        "consecutive failed checks"
                                    )
                                ),
                                mark_recovered: false,
                            });
                            track.verdict = Verdict::Down;
                            track.streak = 0;
                        }
                    }
                }
                track.last_failure = Some(failure);
            }
        }
        let changing = track.streak > 0;
        track.next_due = at + cfg.wait(changing, st.rng.f64());
        change
    }

    /// Write a transition to the backend's state and publish it. Runs outside
    /// the lock: the callback is user code.
    fn carry_out(&self, change: Change, at: Instant) {
        let b = &change.backend;
        let state = b.state();
        match change.to {
            Verdict::Down | Verdict::Pending => {
                state.set_check_failed(true);
                self.events
                    .emit(b.addr(), EventKind::Down, change.reason, at);
            }
            Verdict::Up => {
                let ejected =
                    state.is_removed_for(Removal::Ejected) || state.ejected_until(at).is_some();
                let uneject = self.config.unejects && ejected;
                if uneject {
                    state.clear_ejection();
                    state.restore(Removal::Ejected);
                }
                if let Some(gate) = state.gate() {
                    gate.on_backend_recovered();
                }
                if change.mark_recovered {
                    state.mark_recovered(at);
                }
                // Last, so the backend is admitted only once everything else
                // is in place.
                state.set_check_failed(false);
                self.events.emit(b.addr(), EventKind::Up, change.reason, at);
                if uneject {
                    self.events.emit(
                        b.addr(),
                        EventKind::Unejected,
                        "a health check saw the backend come back".into(),
                        at,
                    );
                }
            }
        }
    }
}
