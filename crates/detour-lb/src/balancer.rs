//! [`LoadBalancer`]: a backend set swapped atomically on updates, one
//! selection algorithm, and the failover options around it.

use std::fmt;
use std::iter;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::Rng;
use arc_swap::ArcSwap;
use detour_core::{Backend, Grouping, Permit, Pick};
use tokio::time::Instant;

use crate::failover::{Failover, LbOptions};
use crate::hash::mix64;
use crate::rng::RngSource;
use crate::selection::{Algorithm, Selection};
use crate::set::{BackendSet, Group, HealthParams, HealthView, PanicScan, FULL};
use crate::InvalidConfig;

mod weights;

pub use weights::WeightOverride;

/// Keeps the tier pick of a hashing algorithm apart from its ring position.
const TIER_SALT: u64 = 0x7f4a_7c15_9e37_79b9;

type UpdateHook = Box<dyn Fn(&[Arc<Backend>]) + Send + Sync>;
type PanicHook = Box<dyn Fn(&PanicChange) + Send + Sync>;

/// A load balancer entered or left panic mode (see
/// [`LoadBalancer::on_panic`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PanicChange {
    /// `true`: entered panic mode (selection now ignores health, ejection and
    /// breakers); `false`: left it.
    pub in_panic: bool,
    /// Backends that counted as available at the scan that decided.
    pub available: u64,
    /// Backends of weight > 0 at that scan.
    pub total: u64,
    /// The panic threshold, in percent of `total`.
    pub threshold: u8,
}

/// A load balancer whose algorithm is chosen at run time (from a config file).
pub type AnyLoadBalancer = LoadBalancer<Algorithm>;

/// The backends of one upstream and how to choose among them.
///
/// Selection reads an immutable snapshot of the set through `arc-swap`: no
/// lock, no allocation, safe from any number of threads.
/// [`update`](Self::update) builds a new snapshot and swaps it in whole.
///
/// ```
/// use std::sync::Arc;
/// use detour_core::{Backend, HttpPeer};
/// use detour_lb::{AnyLoadBalancer, Failover, LbOptions};
/// use tokio::time::Instant;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // Algorithm and options as a config file would give them.
/// let options = LbOptions::default()
///     .with_failover(Failover::priority(1.4))
///     .with_panic_threshold(50);
/// let lb = AnyLoadBalancer::try_new("least_request".parse()?, options)?;
/// lb.update([
///     Backend::new("10.0.0.1:80".parse()?),
///     Backend::new("10.0.0.2:80".parse()?),
///     Backend::new("10.0.1.1:80".parse()?).with_priority(1),
/// ]);
///
/// // First attempt, then a retry that must go elsewhere.
/// let first = lb.select(0, &[], Instant::now()).expect("a backend");
/// let tried = [first.backend().addr()];
/// let retry = lb.select(0, &tried, Instant::now()).expect("another backend");
/// assert_ne!(retry.backend().addr(), tried[0]);
/// let peer = HttpPeer::admitted(retry, "api");
/// # let _ = peer;
/// # Ok(())
/// # }
/// ```
pub struct LoadBalancer<S: Selection = Algorithm> {
    selection: S,
    options: LbOptions,
    set: ArcSwap<BackendSet<S::Table>>,
    rng: RngSource,
    /// Serializes updates and holds the update hooks. Never touched by
    /// selection.
    hooks: Mutex<Vec<UpdateHook>>,
    /// Whether the last health scan (of any snapshot) found panic mode: a
    /// new snapshot starts a fresh view, and this is what tells whether its
    /// first scan changed anything.
    panicking: AtomicBool,
    /// Hear entries into and exits from panic mode. Locked only on such a
    /// change, never on an ordinary selection.
    panic_hooks: Mutex<Vec<PanicHook>>,
    /// Weights an operator set at run time, by address (see
    /// [`set_weight`](Self::set_weight)). Locked by updates only.
    weights: Mutex<weights::Overrides>,
}

impl<S: Selection + fmt::Debug> fmt::Debug for LoadBalancer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadBalancer")
            .field("selection", &self.selection)
            .field("options", &self.options)
            .field("backends", &self.set.load().backends.len())
            .finish_non_exhaustive()
    }
}

/// What an [`update`](LoadBalancer::update) changed.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Changes {
    /// Backends that joined the set (new addresses, or an address whose
    /// weight, priority, locality or metadata changed).
    pub added: Vec<Arc<Backend>>,
    /// Backends that left the set. They are draining: their in-flight
    /// requests finish, no new request goes to them.
    pub removed: Vec<Arc<Backend>>,
}

impl Changes {
    /// Whether the update changed nothing.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

impl<S: Selection> LoadBalancer<S> {
    /// An empty load balancer with the default [`LbOptions`]: active-active,
    /// panic threshold 50 %, no slow start.
    pub fn new(selection: S) -> Self {
        LoadBalancer {
            selection,
            options: LbOptions::default(),
            set: ArcSwap::from_pointee(BackendSet::empty()),
            rng: RngSource::ThreadLocal,
            hooks: Mutex::new(Vec::new()),
            panicking: AtomicBool::new(false),
            panic_hooks: Mutex::new(Vec::new()),
            weights: Mutex::new(weights::Overrides::default()),
        }
    }

    /// An empty load balancer with `options`.
    ///
    /// # Errors
    /// A [`InvalidConfig`] when the algorithm's parameters or the options make
    /// no sense.
    pub fn try_new(selection: S, options: LbOptions) -> Result<Self, InvalidConfig> {
        selection.validate()?;
        options.validate()?;
        Ok(LoadBalancer {
            options,
            ..LoadBalancer::new(selection)
        })
    }

    /// Draw every random choice from one sequence seeded by `seed` instead
    /// of a per-thread generator: a single-threaded test then sees the same
    /// choices on every run. (Shared by all threads through one atomic, so
    /// not for production.)
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = RngSource::Seeded(seed.into());
        self
    }

    /// The algorithm.
    pub fn selection(&self) -> &S {
        &self.selection
    }

    /// The options.
    pub fn options(&self) -> &LbOptions {
        &self.options
    }

    /// The current backends, weight 0 included, sorted by address.
    pub fn backends(&self) -> Arc<[Arc<Backend>]> {
        Arc::clone(&self.set.load().backends)
    }

    /// The share of new requests each failover group gets now, in basis
    /// points (10 000 = 100 %), most preferred group first. For status pages
    /// and tests; it rescans the groups' health.
    pub fn group_loads(&self, now: Instant) -> Vec<u32> {
        let set = self.set.load();
        self.rescan(&set, now, true);
        set.health.loads()
    }

    /// Whether the set is in panic mode now (too few backends available);
    /// rescans the groups' health.
    pub fn in_panic(&self, now: Instant) -> bool {
        let set = self.set.load();
        self.rescan(&set, now, true);
        set.health.panic()
    }

    /// Recompute the groups' health now, e.g. right after a round of health
    /// checks, instead of within [`LbOptions::health_refresh`].
    pub fn refresh_health(&self, now: Instant) {
        let set = self.set.load();
        self.rescan(&set, now, true);
    }

    /// Run `hook` each time the balancer enters or leaves panic mode, as a
    /// health scan finds it (a selection, [`refresh_health`](Self::refresh_health)
    /// or [`in_panic`](Self::in_panic)). The balancer has no name; the owner
    /// that registers the hook knows which upstream it is and logs or counts
    /// the change. Hooks run on the task whose scan saw the change; they
    /// must not call `on_panic` themselves.
    pub fn on_panic(&self, hook: impl Fn(&PanicChange) + Send + Sync + 'static) {
        self.panic_hooks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::new(hook));
    }

    /// Rescan `set`'s health when due (or `force`), and tell the panic hooks
    /// when the scan changed panic mode.
    fn rescan(&self, set: &BackendSet<S::Table>, now: Instant, force: bool) {
        let params = self.health_params();
        let Some(scan) = set.health.ensure_fresh(&set.groups, now, params, force) else {
            return;
        };
        self.note_panic(scan);
    }

    fn note_panic(&self, scan: PanicScan) {
        if self.panicking.swap(scan.panic, Ordering::AcqRel) == scan.panic {
            return;
        }
        let change = PanicChange {
            in_panic: scan.panic,
            available: scan.available,
            total: scan.total,
            threshold: self.options.panic_threshold,
        };
        let hooks = self
            .panic_hooks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for hook in hooks.iter() {
            hook(&change);
        }
    }

    /// Run `hook` with the whole set after every update that changes it, and
    /// once now if the set is not empty. That is where a server attaches
    /// breakers ([`BackendState::set_gate`] keeps the first gate, so
    /// attaching to every backend of the set is safe) and removal caps
    /// ([`RemovalCap::attach`]) to new backends.
    ///
    /// Hooks run one at a time, in the order they were added, on the task
    /// that called `update`; they must not call `update` or `on_update`
    /// themselves (the update lock is held).
    ///
    /// [`BackendState::set_gate`]: detour_core::BackendState::set_gate
    /// [`RemovalCap::attach`]: detour_core::RemovalCap::attach
    pub fn on_update(&self, hook: impl Fn(&[Arc<Backend>]) + Send + Sync + 'static) {
        let mut hooks = self.hooks.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.backends();
        if !current.is_empty() {
            hook(&current);
        }
        hooks.push(Box::new(hook));
    }

    /// Replace the set with `backends` (duplicates by address: the first
    /// wins).
    ///
    /// - An address that remains with the same weight, priority, locality and
    ///   metadata keeps its `Arc<Backend>`, so its health, ejection, breaker,
    ///   in-flight count and latency carry on.
    /// - An address whose descriptors changed gets the new `Backend`; the
    ///   active check's verdict, the latency EWMA, the recovery time and the
    ///   breaker gate carry over to it (an outlier ejection does not: it
    ///   belongs to the old backend's removal slot), and the old one drains.
    /// - A backend that left is set draining: requests holding its
    ///   [`Permit`] finish, no new one is admitted.
    /// - A backend added to a non-empty set is marked recovered now, so slow
    ///   start ramps it in.
    ///
    /// A weight set with [`set_weight`](Self::set_weight) applies to the
    /// address for as long as `backends` gives it the weight it had then.
    ///
    /// Nothing is swapped when nothing changed. Update hooks run after the
    /// swap.
    pub fn update<I>(&self, backends: I) -> Changes
    where
        I: IntoIterator,
        I::Item: Into<Arc<Backend>>,
    {
        let hooks = self.hooks.lock().unwrap_or_else(PoisonError::into_inner);
        self.update_locked(&hooks, backends.into_iter().map(Into::into).collect())
    }

    /// [`update`](Self::update), with the update lock held as `hooks`.
    fn update_locked(&self, hooks: &[UpdateHook], incoming: Vec<Arc<Backend>>) -> Changes {
        let now = Instant::now();
        let old = self.set.load_full();
        let mut incoming = self.apply_weights(incoming);
        // Stable sort: of duplicates, the first given stays first.
        incoming.sort_by_key(|b| b.addr());
        incoming.dedup_by(|later, first| {
            let dup = later.addr() == first.addr();
            if dup {
                tracing::warn!(addr = %later.addr(), "duplicate backend address; keeping the first");
            }
            dup
        });

        let mut changes = Changes::default();
        let mut next = Vec::with_capacity(incoming.len());
        for b in incoming {
            match old.backends.binary_search_by_key(&b.addr(), |o| o.addr()) {
                Ok(i)
                    if Arc::ptr_eq(&old.backends[i], &b)
                        || same_descriptors(&old.backends[i], &b) =>
                {
                    next.push(Arc::clone(&old.backends[i]));
                }
                Ok(i) => {
                    carry_over(&old.backends[i], &b, now);
                    changes.removed.push(Arc::clone(&old.backends[i]));
                    changes.added.push(Arc::clone(&b));
                    next.push(b);
                }
                Err(_) => {
                    if !old.backends.is_empty() && b.state().recovered_at().is_none() {
                        b.state().mark_recovered(now);
                    }
                    changes.added.push(Arc::clone(&b));
                    next.push(b);
                }
            }
        }
        for o in old.backends.iter() {
            if next.binary_search_by_key(&o.addr(), |b| b.addr()).is_err() {
                changes.removed.push(Arc::clone(o));
            }
        }
        if changes.is_empty() {
            return changes;
        }
        for gone in &changes.removed {
            gone.state().set_draining(true);
        }
        let set = self.build_set(next);
        let current = Arc::clone(&set.backends);
        self.set.store(Arc::new(set));
        tracing::debug!(
            added = changes.added.len(),
            removed = changes.removed.len(),
            total = current.len(),
            "backend set updated"
        );
        for hook in hooks.iter() {
            hook(&current);
        }
        changes
    }

    fn build_set(&self, backends: Vec<Arc<Backend>>) -> BackendSet<S::Table> {
        let live: Vec<Arc<Backend>> = backends
            .iter()
            .filter(|b| b.weight() > 0)
            .cloned()
            .collect();
        let parts = self.options.failover.partition(&live);
        self.rng.with(|rng| {
            let groups: Box<[Group<S::Table>]> = parts
                .into_iter()
                .map(|members| Group {
                    table: self.selection.build(&members, rng),
                    members: members.into_boxed_slice(),
                })
                .collect();
            let all = (groups.len() > 1).then(|| Group {
                table: self.selection.build(&live, rng),
                members: live.into_boxed_slice(),
            });
            BackendSet {
                health: HealthView::new(groups.len(), Instant::now()),
                backends: Arc::from(backends),
                groups,
                all,
            }
        })
    }

    fn health_params(&self) -> HealthParams {
        HealthParams {
            refresh: self.options.health_refresh,
            overprovisioning: self.options.failover.overprovisioning(),
            panic_threshold: self.options.panic_threshold,
        }
    }

    /// Walk unique candidates of the whole set (every backend of weight >
    /// 0, all failover groups) in the algorithm's order and return the first
    /// that `accept` takes. At most one offer per backend.
    ///
    /// This is the raw primitive: no health check, no failover group, no
    /// panic mode; `accept` decides everything. Use [`select`](Self::select)
    /// for the full policy.
    pub fn select_with(
        &self,
        key: u64,
        mut accept: impl FnMut(&Arc<Backend>) -> bool,
    ) -> Option<Arc<Backend>> {
        let set = self.set.load();
        let group = set.everyone()?;
        self.rng.with(|rng| {
            self.selection
                .walk(&group.table, &group.members, key, rng, |b| {
                    accept(b).then(|| Arc::clone(b))
                })
        })
    }

    /// Choose a backend for one attempt and admit it.
    ///
    /// `key` is the request's hash key ([`HashKey::hash`]) for consistent
    /// hashing, ignored by the other algorithms; `tried` are the addresses
    /// this request already tried ([`Session::tried`]).
    ///
    /// 1. Panic mode (fewer than `panic_threshold` % available): any backend
    ///    not tried yet, admitted ignoring health, ejection and breakers
    ///    ([`Backend::try_admit_ignoring_health`]); a tried one only when no
    ///    other admits.
    /// 2. Otherwise the failover strategy picks a group (by its load share);
    ///    the algorithm walks it for a backend not tried yet that
    ///    [`Backend::try_admit`] admits (health, ejection, draining, breaker
    ///    gate), with slow start passing over recovering backends at random;
    ///    then the other groups in order.
    /// 3. None untried: a tried backend that admits, rather than nothing.
    /// 4. Still none: the health view is rescanned; if that shows panic
    ///    mode, step 1.
    /// 5. Still none and no panic: a backend whose breaker an active check
    ///    half-opened (it saw the backend come back), with all its probes in
    ///    flight, is taken past its probe limit
    ///    ([`Backend::try_admit_beyond_probes`]), untried first; several
    ///    backends recovering at once must not refuse requests. Else `None`
    ///    (the engine answers 503).
    ///
    /// The permit is held for the attempt (e.g. in
    /// [`HttpPeer::admitted`](detour_core::HttpPeer::admitted)).
    ///
    /// [`HashKey::hash`]: crate::HashKey::hash
    /// [`Session::tried`]: detour_core::Session::tried
    pub fn select(&self, key: u64, tried: &[SocketAddr], now: Instant) -> Option<Permit> {
        self.select_explained(key, tried, now)
            .map(|(permit, _)| permit)
    }

    /// [`select`](Self::select), saying why the backend was chosen: its
    /// group, whether the request spilled there, how many candidates were
    /// passed over (with consistent hashing: owner or rehash), how many of
    /// them this request had tried, panic mode.
    pub fn select_explained(
        &self,
        key: u64,
        tried: &[SocketAddr],
        now: Instant,
    ) -> Option<(Permit, Pick)> {
        self.select_outside(key, tried, None, now)
    }

    /// [`select_explained`](Self::select_explained) from outside failover
    /// group `avoid` (a [`Pick::group`]), when set: a trusted proxy below
    /// already retried within it ([`Planner::avoid_group`]). Panic mode
    /// ignores the groups, so it is not entered then: `None` rather than a
    /// backend inside `avoid`.
    ///
    /// [`Planner::avoid_group`]: detour_core::Planner::avoid_group
    pub fn select_outside(
        &self,
        key: u64,
        tried: &[SocketAddr],
        avoid: Option<u16>,
        now: Instant,
    ) -> Option<(Permit, Pick)> {
        let set = self.set.load();
        if set.groups.is_empty() {
            return None;
        }
        self.rescan(&set, now, false);
        let mut tally = Tally::new(tried);
        let avoid = avoid.map(usize::from);
        let chosen = self.rng.with(|rng| {
            if !set.health.panic() {
                let first = self.first_group(&set, key, rng);
                let order = Order { first, avoid };
                if let Some(c) = self.select_normal(&set, key, order, &mut tally, now, rng) {
                    return Some(c);
                }
                // Nothing admitted: the view may be stale. Look again. The
                // walks below count their own candidates.
                self.rescan(&set, now, true);
                tally = Tally::new(tried);
                if !set.health.panic() {
                    return self.select_beyond_probes(&set, key, order, &mut tally, now, rng);
                }
                if avoid.is_some() {
                    return None;
                }
            } else if avoid.is_some() {
                return None;
            }
            self.select_panic(&set, key, &mut tally, rng)
        })?;
        let pick = Pick {
            // Panic mode ignores the groups.
            grouping: match self.options.failover {
                _ if chosen.panic => Grouping::None,
                Failover::ActiveActive => Grouping::None,
                Failover::Priority(_) => Grouping::Priority,
                Failover::Locality(_) => Grouping::Locality,
            },
            group: u16::try_from(chosen.group).unwrap_or(u16::MAX),
            spilled: chosen.spilled,
            hashed: self.selection.hashes_key(),
            passed: tally.offered.saturating_sub(1),
            excluded: tally.excluded,
            panic: chosen.panic,
            beyond_probes: chosen.beyond_probes,
            again: chosen.again,
        };
        Some((chosen.permit, pick))
    }

    /// The group a request is dealt to by the groups' load shares (by its
    /// key with consistent hashing).
    fn first_group(&self, set: &BackendSet<S::Table>, key: u64, rng: &mut Rng) -> usize {
        let n = set.groups.len();
        if n == 1 {
            return 0;
        }
        let pick = if self.selection.hashes_key() {
            (mix64(key ^ TIER_SALT) % u64::from(FULL)) as u32
        } else {
            rng.below(FULL as usize) as u32
        };
        set.health.group_for(pick).min(n - 1)
    }

    fn select_normal(
        &self,
        set: &BackendSet<S::Table>,
        key: u64,
        order: Order,
        tally: &mut Tally<'_>,
        now: Instant,
        rng: &mut Rng,
    ) -> Option<Chosen> {
        let first = order.first;
        let order = order.groups(set.groups.len());
        for g in order.clone() {
            if let Some(p) = self.admit_untried(&set.groups[g], key, tally, now, rng) {
                return Some(Chosen::normal(p, g, first, false));
            }
        }
        if tally.tried.is_empty() {
            return None;
        }
        let (p, g) = self.first_admitted(set, key, order, rng, |b| {
            tally.offered = tally.offered.saturating_add(1);
            b.try_admit(now)
        })?;
        Some(Chosen::normal(p, g, first, true))
    }

    /// The first backend `admit` takes, walking the groups in `order`; with
    /// the group it is in.
    fn first_admitted(
        &self,
        set: &BackendSet<S::Table>,
        key: u64,
        order: impl Iterator<Item = usize>,
        rng: &mut Rng,
        mut admit: impl FnMut(&Arc<Backend>) -> Option<Permit>,
    ) -> Option<(Permit, usize)> {
        order.into_iter().find_map(|g| {
            let group = &set.groups[g];
            self.selection
                .walk(&group.table, &group.members, key, rng, &mut admit)
                .map(|p| (p, g))
        })
    }

    /// One group's walk for an untried backend that admits, with slow start.
    fn admit_untried(
        &self,
        group: &Group<S::Table>,
        key: u64,
        tally: &mut Tally<'_>,
        now: Instant,
        rng: &mut Rng,
    ) -> Option<Permit> {
        let Some(slow) = &self.options.slow_start else {
            return self
                .selection
                .walk(&group.table, &group.members, key, rng, |b| {
                    if tally.offer(b) {
                        None
                    } else {
                        b.try_admit(now)
                    }
                });
        };
        // A separate generator for the slow-start draws: the walk holds `rng`.
        let mut lottery = Rng::with_seed(rng.u64());
        let mut passed_over: Option<&Arc<Backend>> = None;
        let found = self
            .selection
            .walk(&group.table, &group.members, key, rng, |b| {
                if tally.offer(b) || !b.state().is_available(now) {
                    return None;
                }
                let p = slow.acceptance(b, now);
                if p < 1.0 && lottery.f64() >= p {
                    passed_over.get_or_insert(b);
                    return None;
                }
                b.try_admit(now)
            });
        // Slow start delays traffic; it never refuses the last candidate.
        found.or_else(|| passed_over.and_then(|b| b.try_admit(now)))
    }

    /// Step 5: the view is not in panic mode, yet nothing admitted. When the
    /// backends it counts as available are half-open breakers with all their
    /// probes in flight, and a check saw them come back (several recovering
    /// at once), take one past its probe limit rather than refuse a request
    /// those backends can serve: untried first, in the groups' usual order.
    /// A probe slot freed since is taken as a plain admission. Open
    /// breakers, breakers half-open by the clock alone, failed checks,
    /// ejections and draining still refuse.
    fn select_beyond_probes(
        &self,
        set: &BackendSet<S::Table>,
        key: u64,
        order: Order,
        tally: &mut Tally<'_>,
        now: Instant,
        rng: &mut Rng,
    ) -> Option<Chosen> {
        for again in [false, true] {
            if again && tally.tried.is_empty() {
                break;
            }
            let mut beyond = false;
            let groups = order.groups(set.groups.len());
            let found = self.first_admitted(set, key, groups, rng, |b| {
                if again {
                    tally.offered = tally.offered.saturating_add(1);
                } else if tally.offer(b) {
                    return None;
                }
                // The walks stop at the first admission, so the flag speaks
                // for the one taken.
                let normal = b.try_admit(now);
                beyond = normal.is_none();
                normal.or_else(|| b.try_admit_beyond_probes(now))
            });
            if let Some((permit, g)) = found {
                return Some(Chosen {
                    beyond_probes: beyond,
                    ..Chosen::normal(permit, g, order.first, again)
                });
            }
        }
        None
    }

    fn select_panic(
        &self,
        set: &BackendSet<S::Table>,
        key: u64,
        tally: &mut Tally<'_>,
        rng: &mut Rng,
    ) -> Option<Chosen> {
        let group = set.everyone()?;
        let untried = self
            .selection
            .walk(&group.table, &group.members, key, rng, |b| {
                if tally.offer(b) {
                    None
                } else {
                    b.try_admit_ignoring_health()
                }
            });
        if let Some(p) = untried {
            return Some(Chosen::panic(p, false));
        }
        if tally.tried.is_empty() {
            return None;
        }
        self.selection
            .walk(&group.table, &group.members, key, rng, |b| {
                tally.offered = tally.offered.saturating_add(1);
                b.try_admit_ignoring_health()
            })
            .map(|p| Chosen::panic(p, true))
    }
}

/// The order a request walks the failover groups in: the group it was
/// dealt to, then the others by rank, leaving out `avoid`.
#[derive(Clone, Copy)]
struct Order {
    first: usize,
    avoid: Option<usize>,
}

impl Order {
    fn groups(self, n: usize) -> impl Iterator<Item = usize> + Clone {
        let Order { first, avoid } = self;
        iter::once(first)
            .chain((0..n).filter(move |&g| g != first))
            .filter(move |&g| Some(g) != avoid)
    }
}

/// What a selection's walks saw: candidates offered, and how many of them
/// the request had tried.
struct Tally<'t> {
    tried: &'t [SocketAddr],
    offered: u16,
    excluded: u16,
}

impl<'t> Tally<'t> {
    fn new(tried: &'t [SocketAddr]) -> Self {
        Tally {
            tried,
            offered: 0,
            excluded: 0,
        }
    }

    /// Count `b` as offered; whether the request tried it already.
    fn offer(&mut self, b: &Backend) -> bool {
        self.offered = self.offered.saturating_add(1);
        let tried = self.tried.contains(&b.addr());
        if tried {
            self.excluded = self.excluded.saturating_add(1);
        }
        tried
    }
}

/// A backend admitted, and where it came from.
struct Chosen {
    permit: Permit,
    group: usize,
    spilled: bool,
    panic: bool,
    beyond_probes: bool,
    again: bool,
}

impl Chosen {
    fn normal(permit: Permit, group: usize, first: usize, again: bool) -> Self {
        Chosen {
            permit,
            group,
            spilled: group != first,
            panic: false,
            beyond_probes: false,
            again,
        }
    }

    fn panic(permit: Permit, again: bool) -> Self {
        Chosen {
            permit,
            group: 0,
            spilled: false,
            panic: true,
            beyond_probes: false,
            again,
        }
    }
}

fn same_descriptors(a: &Backend, b: &Backend) -> bool {
    a.weight() == b.weight()
        && a.priority() == b.priority()
        && a.locality() == b.locality()
        && a.metadata() == b.metadata()
}

/// Facts about an address that outlive a change of its descriptors.
fn carry_over(old: &Backend, new: &Backend, now: Instant) {
    let (o, n) = (old.state(), new.state());
    if o.check_failed() {
        n.set_check_failed(true);
    }
    if let Some(latency) = o.latency_ewma() {
        if n.latency_ewma().is_none() {
            n.record_latency(latency);
        }
    }
    if let Some(at) = o.recovered_at() {
        if n.recovered_at().is_none() {
            n.mark_recovered(at.min(now));
        }
    }
    if let Some(gate) = o.gate() {
        // A gate already on the new backend wins; nothing to do then.
        let _ = n.set_gate(Arc::clone(gate));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use detour_core::{AdmissionGate, GateState};

    use super::*;
    use crate::failover::{Failover, SlowStart};
    use crate::selection::{Ketama, Maglev, RoundRobin, WeightedRandom};

    fn addr(i: usize) -> SocketAddr {
        SocketAddr::from(([10, 0, (i / 200) as u8, (i % 200) as u8 + 1], 80))
    }

    fn lb<S: Selection>(s: S, options: LbOptions, backends: Vec<Backend>) -> LoadBalancer<S> {
        let lb = LoadBalancer::try_new(s, options).unwrap().with_seed(7);
        lb.update(backends);
        lb
    }

    /// Share of `count` selections (permits dropped at once) whose backend
    /// satisfies `pred`.
    fn share<S: Selection>(
        lb: &LoadBalancer<S>,
        count: usize,
        now: Instant,
        pred: impl Fn(&Backend) -> bool,
    ) -> f64 {
        let hits = (0..count)
            .filter(|&i| {
                let p = lb.select(i as u64, &[], now).expect("a backend");
                pred(p.backend())
            })
            .count();
        hits as f64 / count as f64
    }

    fn two_tiers(per_tier: usize) -> Vec<Backend> {
        (0..2 * per_tier)
            .map(|i| Backend::new(addr(i)).with_priority((i / per_tier) as u32))
            .collect()
    }

    fn down(lb: &LoadBalancer<impl Selection>, which: impl Fn(usize) -> bool) {
        for (i, b) in lb.backends().iter().enumerate() {
            b.state().set_check_failed(which(i));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_selection_says_why_it_chose() {
        let now = Instant::now();
        // Consistent hashing: the key's owner, then a rehash past it.
        let ring = lb(
            Ketama::default(),
            LbOptions::default(),
            (0..5).map(|i| Backend::new(addr(i))).collect(),
        );
        let (owner, pick) = ring.select_explained(42, &[], now).unwrap();
        assert_eq!(pick.to_string(), "owner");
        let owner = owner.backend().addr();
        let (_, pick) = ring.select_explained(42, &[owner], now).unwrap();
        assert_eq!((pick.hashed, pick.passed, pick.excluded), (true, 1, 1));
        assert_eq!(pick.to_string(), "rehash=1,excluded=1");

        // Tiers: tier 0 all down, so every request spills to tier 1.
        let options = LbOptions::default()
            .with_failover(Failover::priority(1.4))
            .with_panic_threshold(0);
        let tiers = lb(RoundRobin, options, two_tiers(2));
        down(&tiers, |i| i < 2);
        let (p, pick) = tiers.select_explained(0, &[], now).unwrap();
        assert_eq!(p.backend().priority(), 1);
        assert_eq!(
            (pick.grouping, pick.group, pick.panic),
            (Grouping::Priority, 1, false)
        );
        assert!(pick.to_string().starts_with("tier=1"), "{pick}");

        // Panic mode: health ignored, groups too.
        let panicking = lb(
            RoundRobin,
            LbOptions::default(),
            (0..4).map(|i| Backend::new(addr(i))).collect(),
        );
        down(&panicking, |_| true);
        let (_, pick) = panicking.select_explained(0, &[], now).unwrap();
        assert!(pick.panic && pick.grouping == Grouping::None, "{pick:?}");
        assert_eq!(pick.to_string(), "panic");

        // Every backend tried: one is taken again.
        let lb = lb(
            RoundRobin,
            LbOptions::default(),
            vec![Backend::new(addr(0))],
        );
        let (_, pick) = lb.select_explained(0, &[addr(0)], now).unwrap();
        assert!(pick.again, "{pick:?}");
        assert_eq!(pick.to_string(), "passed=1,excluded=1,again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lower_tier_takes_only_what_the_higher_cannot_carry() {
        let options = LbOptions::default().with_failover(Failover::priority(1.4));
        let lb = lb(RoundRobin, options, two_tiers(10));
        let now = Instant::now();
        assert_eq!(lb.group_loads(now), [10_000, 0]);

        // 8 of 10 up: 80 % × 1.4 ≥ 100 %, tier 0 keeps everything.
        down(&lb, |i| i < 2);
        assert_eq!(lb.group_loads(now), [10_000, 0]);
        assert_eq!(share(&lb, 2_000, now, |b| b.priority() == 1), 0.0);

        // 5 of 10 up: tier 0 carries 70 %, the rest spills to tier 1.
        down(&lb, |i| i < 5);
        assert_eq!(lb.group_loads(now), [7_000, 3_000]);
        let spilled = share(&lb, 20_000, now, |b| b.priority() == 1);
        assert!((spilled - 0.30).abs() < 0.02, "{spilled}");

        // Tier 0 all down: everything on tier 1.
        down(&lb, |i| i < 10);
        assert_eq!(lb.group_loads(now), [0, 10_000]);
        assert_eq!(share(&lb, 1_000, now, |b| b.priority() == 1), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn tier_loads_are_normalized_when_no_tier_is_healthy_enough() {
        let options = LbOptions::default()
            .with_failover(Failover::priority(1.4))
            .with_panic_threshold(0);
        let lb = lb(WeightedRandom, options, two_tiers(10));
        // 2 of 10 up in each tier: health 28 % each, scaled to 50/50.
        down(&lb, |i| i % 10 >= 2);
        let now = Instant::now();
        assert_eq!(lb.group_loads(now), [5_000, 5_000]);
        let lower = share(&lb, 10_000, now, |b| b.priority() == 1);
        assert!((lower - 0.5).abs() < 0.03, "{lower}");
    }

    #[tokio::test(start_paused = true)]
    async fn localities_fail_over_in_the_configured_order() {
        let regions = ["eu-west", "eu-central", "us-east"];
        let backends = (0..9)
            .map(|i| Backend::new(addr(i)).with_locality(regions[i / 3]))
            .collect();
        let options = LbOptions::default()
            .with_failover(Failover::locality("eu-west", ["eu-central", "us-east"]))
            .with_panic_threshold(0);
        let lb = lb(RoundRobin, options, backends);
        let now = Instant::now();
        let region = |lb: &LoadBalancer<RoundRobin>| {
            let p = lb.select(0, &[], now).unwrap();
            p.backend().locality().unwrap().to_owned()
        };
        assert_eq!(region(&lb), "eu-west");
        down(&lb, |i| i < 3);
        lb.refresh_health(now);
        for _ in 0..50 {
            assert_eq!(
                region(&lb),
                "eu-central",
                "the next region in order, never the last"
            );
        }
        down(&lb, |i| i < 6);
        lb.refresh_health(now);
        assert_eq!(region(&lb), "us-east");
    }

    #[tokio::test(start_paused = true)]
    async fn slow_start_ramps_a_recovered_backend_in() {
        let options = LbOptions::default()
            .with_slow_start(SlowStart::new(Duration::from_secs(10)).with_min_factor(0.1));
        let lb = lb(
            RoundRobin,
            options,
            (0..2).map(|i| Backend::new(addr(i))).collect(),
        );
        let recovered = Arc::clone(&lb.backends()[0]);
        recovered.state().mark_recovered(Instant::now());
        let mut shares = Vec::new();
        for _ in 0..3 {
            let s = share(&lb, 10_000, Instant::now(), |b| {
                b.addr() == recovered.addr()
            });
            shares.push(s);
            tokio::time::advance(Duration::from_secs(5)).await;
        }
        // Half the picks offer it first; it accepts with p = 0.1, 0.5, 1.
        for (got, want) in shares.iter().zip([0.05, 0.25, 0.5]) {
            assert!((got - want).abs() < 0.02, "{shares:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn slow_start_never_refuses_the_only_backend() {
        let options = LbOptions::default()
            .with_slow_start(SlowStart::new(Duration::from_secs(10)).with_min_factor(0.01));
        let lb = lb(RoundRobin, options, vec![Backend::new(addr(0))]);
        lb.backends()[0].state().mark_recovered(Instant::now());
        assert_eq!(share(&lb, 100, Instant::now(), |_| true), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn panic_mode_spreads_over_all_but_avoids_what_was_tried() {
        let lb = lb(
            RoundRobin,
            LbOptions::default(),
            (0..4).map(|i| Backend::new(addr(i))).collect(),
        );
        let now = Instant::now();
        down(&lb, |i| i > 0); // 25 % available < 50 %
        assert!(lb.in_panic(now));
        let mut seen = [0usize; 4];
        for _ in 0..400 {
            let p = lb.select(0, &[], now).unwrap();
            let i = (0..4).position(|i| addr(i) == p.backend().addr()).unwrap();
            seen[i] += 1;
        }
        assert!(seen.iter().all(|&c| c > 50), "spread over all: {seen:?}");

        let tried = [addr(0), addr(1), addr(2)];
        for _ in 0..20 {
            let p = lb.select(0, &tried, now).unwrap();
            assert_eq!(p.backend().addr(), addr(3), "the untried one, down or not");
        }
        let all = [addr(0), addr(1), addr(2), addr(3)];
        assert!(
            lb.select(0, &all, now).is_some(),
            "a tried one rather than nothing"
        );

        // Draining is respected even in panic.
        for b in lb.backends().iter() {
            b.state().set_draining(true);
        }
        assert!(lb.select(0, &[], now).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn without_panic_mode_the_answer_is_none() {
        let options = LbOptions::default().with_panic_threshold(0);
        let lb = lb(
            RoundRobin,
            options,
            (0..4).map(|i| Backend::new(addr(i))).collect(),
        );
        let now = Instant::now();
        down(&lb, |i| i > 0);
        for _ in 0..20 {
            assert_eq!(lb.select(0, &[], now).unwrap().backend().addr(), addr(0));
        }
        // The only healthy one was tried: it again, rather than a down one.
        assert_eq!(
            lb.select(0, &[addr(0)], now).unwrap().backend().addr(),
            addr(0)
        );
        down(&lb, |_| true);
        assert!(lb.select(0, &[], now).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_view_does_not_hide_panic_mode() {
        let options = LbOptions::default().with_health_refresh(Duration::from_secs(3600));
        let lb = lb(
            RoundRobin,
            options,
            (0..4).map(|i| Backend::new(addr(i))).collect(),
        );
        let now = Instant::now();
        assert!(lb.select(0, &[], now).is_some());
        down(&lb, |_| true);
        // The cached view still says healthy; finding nothing rescans it.
        assert!(
            lb.select(0, &[], now).is_some(),
            "panic mode, found on the miss"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn panic_hooks_hear_each_entry_and_exit_once() {
        let lb = lb(
            RoundRobin,
            LbOptions::default(),
            (0..4).map(|i| Backend::new(addr(i))).collect(),
        );
        let heard = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&heard);
        lb.on_panic(move |c| log.lock().unwrap().push(*c));
        let now = Instant::now();
        assert!(lb.select(0, &[], now).is_some());
        down(&lb, |i| i > 0);
        for _ in 0..5 {
            lb.refresh_health(now);
            assert!(lb.select(0, &[], now).is_some());
        }
        // A new snapshot starts a fresh view: still in panic, no new entry.
        lb.update((0..5).map(|i| Backend::new(addr(i))));
        down(&lb, |i| i > 0);
        lb.refresh_health(now);
        down(&lb, |_| false);
        lb.refresh_health(now);
        lb.refresh_health(now);
        let heard = heard.lock().unwrap();
        let entered = PanicChange {
            in_panic: true,
            available: 1,
            total: 4,
            threshold: 50,
        };
        let left = PanicChange {
            in_panic: false,
            available: 5,
            total: 5,
            threshold: 50,
        };
        assert_eq!(*heard, [entered, left]);
    }

    struct Open;
    impl AdmissionGate for Open {
        fn try_admit(&self) -> bool {
            false
        }
        fn release(&self) {}
        fn state(&self) -> GateState {
            GateState::Open
        }
    }

    /// A half-open breaker admitting one probe at a time; `by_check`: an
    /// active check began its half-open period.
    #[derive(Default)]
    struct OneProbe {
        taken: std::sync::atomic::AtomicU32,
        by_check: bool,
    }
    impl OneProbe {
        fn by_check() -> Arc<Self> {
            Arc::new(OneProbe {
                by_check: true,
                ..OneProbe::default()
            })
        }
    }
    impl AdmissionGate for OneProbe {
        fn try_admit(&self) -> bool {
            self.taken
                .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        }
        fn release(&self) {
            self.taken.store(0, Ordering::SeqCst);
        }
        fn state(&self) -> GateState {
            GateState::HalfOpen
        }
        fn half_open_by_check(&self) -> bool {
            self.by_check
        }
    }

    /// Two of three backends just came back together (a check saw each, so
    /// their breakers are half-open with one probe each), the third still
    /// down: the view counts two of three available, so no panic mode. With
    /// both probes in flight a third request is still served, by a
    /// half-open backend past its limit, untried first; a freed probe slot
    /// is taken as a plain probe again.
    #[tokio::test(start_paused = true)]
    async fn half_open_backends_with_their_probes_taken_still_serve() {
        let lb = lb(
            RoundRobin,
            LbOptions::default(),
            (0..3).map(|i| Backend::new(addr(i))).collect(),
        );
        let backends = lb.backends();
        for b in &backends[..2] {
            b.state().set_gate(OneProbe::by_check()).ok().unwrap();
        }
        backends[2].state().set_check_failed(true);
        let now = Instant::now();
        let (first, pick) = lb.select_explained(0, &[], now).unwrap();
        assert!(!pick.beyond_probes && !pick.panic);
        let (second, _) = lb.select_explained(0, &[], now).unwrap();
        assert_ne!(first.backend().addr(), second.backend().addr());

        let (third, pick) = lb.select_explained(0, &[], now).expect("served");
        assert!(pick.beyond_probes && !pick.panic && !pick.again, "{pick}");
        assert!(pick.to_string().contains("beyond-probes"), "{pick}");
        // Counted by its own walk: at most the two others passed over.
        assert!(pick.passed <= 2 && pick.excluded == 0, "{pick}");
        assert_ne!(third.backend().addr(), backends[2].addr());
        // Its permit holds no probe slot: dropping it frees none.
        drop(third);
        let (_, pick) = lb.select_explained(0, &[], now).unwrap();
        assert!(pick.beyond_probes, "{pick}");

        // A retry goes to the half-open backend it has not tried.
        let tried = [first.backend().addr()];
        let (retry, pick) = lb.select_explained(0, &tried, now).unwrap();
        assert_eq!(retry.backend().addr(), second.backend().addr());
        assert!(pick.beyond_probes && !pick.again, "{pick}");
        assert!(pick.excluded <= 1, "{pick}");
        // Both tried: one of them again rather than nothing.
        let both = [first.backend().addr(), second.backend().addr()];
        let (_, pick) = lb.select_explained(0, &both, now).unwrap();
        assert!(pick.beyond_probes && pick.again, "{pick}");
        assert!(pick.excluded <= 2, "{pick}");

        // A probe slot freed meanwhile is a plain probe, not beyond.
        drop(first);
        let (_, pick) = lb.select_explained(0, &[], now).unwrap();
        assert!(!pick.beyond_probes, "{pick}");
    }

    /// The probe limit holds for a breaker half-open by the clock alone, and
    /// nothing else is passed over: a failed check, an ejection, draining,
    /// an open breaker (panic mode off, so nothing else admits).
    #[tokio::test(start_paused = true)]
    async fn only_backends_a_check_saw_come_back_go_past_their_probes() {
        let now = Instant::now();
        let refusing = |prepare: &dyn Fn(&[Arc<Backend>])| {
            let lb = lb(
                RoundRobin,
                LbOptions::default().with_panic_threshold(0),
                (0..2).map(|i| Backend::new(addr(i))).collect(),
            );
            let backends = lb.backends();
            prepare(&backends);
            // Both probes taken, then a third request.
            let held: Vec<_> = (0..2).filter_map(|_| lb.select(0, &[], now)).collect();
            let third = lb.select_explained(0, &[], now);
            (held.len(), third.map(|(_, p)| p))
        };
        let timed = |b: &[Arc<Backend>]| {
            for b in b {
                b.state()
                    .set_gate(Arc::new(OneProbe::default()))
                    .ok()
                    .unwrap();
            }
        };
        assert_eq!(refusing(&timed), (2, None));
        // Sanity: vouched for by a check, the third is served.
        let checked = |b: &[Arc<Backend>]| {
            for b in b {
                b.state().set_gate(OneProbe::by_check()).ok().unwrap();
            }
        };
        let (held, third) = refusing(&checked);
        assert_eq!(held, 2);
        assert!(third.is_some_and(|p| p.beyond_probes));
        // A failed check, an ejection or draining on both: refused.
        for spoil in [
            (|b: &Backend, _| b.state().set_check_failed(true)) as fn(&Backend, Instant),
            |b, now| b.state().eject_until(now + Duration::from_secs(5)),
            |b, _| b.state().set_draining(true),
        ] {
            let lb = lb(
                RoundRobin,
                LbOptions::default().with_panic_threshold(0),
                (0..2).map(|i| Backend::new(addr(i))).collect(),
            );
            let backends = lb.backends();
            for b in backends.iter() {
                b.state().set_gate(OneProbe::by_check()).ok().unwrap();
            }
            let _held: Vec<_> = (0..2).filter_map(|_| lb.select(0, &[], now)).collect();
            for b in backends.iter() {
                spoil(b, now);
            }
            assert!(lb.select_explained(0, &[], now).is_none());
        }
        // Open breakers: refused.
        let lb = lb(
            RoundRobin,
            LbOptions::default().with_panic_threshold(0),
            (0..2).map(|i| Backend::new(addr(i))).collect(),
        );
        for b in lb.backends().iter() {
            b.state().set_gate(Arc::new(Open)).ok().unwrap();
        }
        assert!(lb.select_explained(0, &[], now).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn open_breakers_count_as_unavailable() {
        let options = LbOptions::default().with_failover(Failover::priority(1.4));
        let lb = lb(RoundRobin, options, two_tiers(2));
        for b in lb.backends().iter().take(2) {
            b.state().set_gate(Arc::new(Open)).ok().unwrap();
        }
        let now = Instant::now();
        assert_eq!(lb.group_loads(now), [0, 10_000]);
        assert_eq!(share(&lb, 100, now, |b| b.priority() == 1), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn consistent_hashing_retries_move_to_other_backends() {
        for lb in [
            &lb(
                Algorithm::ConsistentHash(Ketama::default()),
                LbOptions::default(),
                (0..5).map(|i| Backend::new(addr(i))).collect(),
            ),
            &lb(
                Algorithm::Maglev(Maglev::default()),
                LbOptions::default(),
                (0..5).map(|i| Backend::new(addr(i))).collect(),
            ),
        ] {
            let now = Instant::now();
            for key in 0..200u64 {
                let mut tried = Vec::new();
                for _ in 0..5 {
                    let p = lb.select(key, &tried, now).unwrap();
                    assert!(
                        !tried.contains(&p.backend().addr()),
                        "{}: {tried:?}",
                        lb.selection()
                    );
                    tried.push(p.backend().addr());
                }
                // Deterministic: the same key walks the same way.
                let first = lb.select(key, &[], now).unwrap();
                assert_eq!(first.backend().addr(), tried[0]);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn weight_zero_is_never_selected() {
        let backends = (0..3)
            .map(|i| Backend::new(addr(i)).with_weight(u32::from(i != 1)))
            .collect();
        let lb = lb(RoundRobin, LbOptions::default(), backends);
        let now = Instant::now();
        down(&lb, |_| true); // panic mode too
        for _ in 0..100 {
            assert_ne!(lb.select(0, &[], now).unwrap().backend().addr(), addr(1));
            assert_ne!(lb.select_with(0, |_| true).unwrap().addr(), addr(1));
        }
        assert!(lb.select_with(0, |b| b.addr() == addr(1)).is_none());
    }

    #[tokio::test]
    async fn updates_keep_state_drain_the_departed_and_call_hooks() {
        let lb = LoadBalancer::new(RoundRobin);
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        lb.on_update(move |set| {
            c.fetch_add(set.len(), std::sync::atomic::Ordering::SeqCst);
        });
        let changes = lb.update((0..3).map(|i| Backend::new(addr(i))));
        assert_eq!(changes.added.len(), 3);
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
        let kept = Arc::clone(&lb.backends()[1]);
        kept.state().set_check_failed(true);
        let leaving = Arc::clone(&lb.backends()[2]);
        assert!(
            leaving.state().recovered_at().is_none(),
            "the first set is not 'recovered'"
        );

        // Same set again: nothing changes, no hook.
        assert!(lb.update((0..3).map(|i| Backend::new(addr(i)))).is_empty());
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);

        // addr(2) leaves, addr(3) joins, addr(0) changes weight.
        let changes = lb.update([
            Backend::new(addr(0)).with_weight(5),
            Backend::new(addr(1)),
            Backend::new(addr(3)),
        ]);
        assert_eq!(changes.added.len(), 2);
        assert_eq!(changes.removed.len(), 2);
        let now_set = lb.backends();
        assert!(
            Arc::ptr_eq(&now_set[1], &kept),
            "the same Arc, state and all"
        );
        assert!(now_set[1].state().check_failed());
        assert!(leaving.state().is_draining());
        assert_eq!(now_set[0].weight(), 5);
        assert!(
            now_set[2].state().recovered_at().is_some(),
            "a joiner slow-starts"
        );
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 6);
    }
}
