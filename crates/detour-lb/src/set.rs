//! One immutable snapshot of an upstream's backends: the groups the failover
//! strategy made, each with its algorithm's table, and a cached view of the
//! groups' health. A load balancer swaps whole snapshots (arc-swap), so a
//! selection sees one consistent set without a lock.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use detour_core::{Backend, GateState};
use tokio::time::Instant;

/// Load shares are in basis points: 10 000 = 100 %.
pub(crate) const FULL: u32 = 10_000;

/// Backends selected from together, with the algorithm's table over them.
#[derive(Debug)]
pub(crate) struct Group<T> {
    pub(crate) members: Box<[Arc<Backend>]>,
    pub(crate) table: T,
}

/// A snapshot of the set.
#[derive(Debug)]
pub(crate) struct BackendSet<T> {
    /// Every backend, weight 0 included, sorted by address.
    pub(crate) backends: Arc<[Arc<Backend>]>,
    /// The failover groups, most preferred first (backends of weight > 0).
    pub(crate) groups: Box<[Group<T>]>,
    /// All backends of weight > 0 in one group, when there are several
    /// groups (panic mode and `select_with` walk it); otherwise `groups[0]`
    /// is that group.
    pub(crate) all: Option<Group<T>>,
    pub(crate) health: HealthView,
}

impl<T> BackendSet<T> {
    pub(crate) fn empty() -> Self {
        BackendSet {
            backends: Arc::from(Vec::new()),
            groups: Box::default(),
            all: None,
            health: HealthView::new(0, Instant::now()),
        }
    }

    /// The group of every selectable backend.
    pub(crate) fn everyone(&self) -> Option<&Group<T>> {
        self.all.as_ref().or(self.groups.first())
    }
}

/// Whether a backend counts as available for tier loads and panic mode:
/// health check passing, not ejected, not draining, breaker not open.
fn counts_as_available(b: &Backend, now: Instant) -> bool {
    b.state().is_available(now)
        && b.state()
            .gate()
            .is_none_or(|g| g.state() != GateState::Open)
}

/// Whether an unavailable backend still counts as available for panic mode:
/// it is passively removed during a concentrated failure (some backends
/// failing, others clearly healthy: `detour_core::spread`). Its removal may
/// go past the ceiling on purpose, and the healthy backends left must carry
/// the traffic rather than panic mode spreading it back over the failing
/// ones. Tier loads do not count it: a tier that lost backends still spills
/// to the next.
fn removal_trusted(b: &Backend) -> bool {
    let s = b.state();
    s.is_passively_removed()
        && !s.check_failed()
        && !s.is_draining()
        && s.removal_cap()
            .is_some_and(|c| c.spread().trusts_removals())
}

/// The cached result of an O(N) scan of the groups' health: how the load is
/// shared between groups and whether the set is in panic mode. One selection
/// at a time recomputes it (elected by a flag it swaps);
/// the others keep using the previous view, so no one waits.
#[derive(Debug)]
pub(crate) struct HealthView {
    created: Instant,
    /// Nanoseconds after `created` (+1) of the last scan; 0 = never.
    stamp: AtomicU64,
    /// Per group: the end of its load range in `0..FULL` (cumulative).
    cumulative: Box<[AtomicU32]>,
    /// Per group: scratch for the scan's healths.
    health: Box<[AtomicU32]>,
    panic: AtomicBool,
    /// Set while one selection rescans.
    scanning: AtomicBool,
}

/// What one scan found about panic mode.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PanicScan {
    pub(crate) panic: bool,
    /// Backends that count as available (trusted removals included).
    pub(crate) available: u64,
    pub(crate) total: u64,
}

/// What the scan needs to know.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HealthParams {
    pub(crate) refresh: Duration,
    pub(crate) overprovisioning: f64,
    pub(crate) panic_threshold: u8,
}

impl HealthView {
    pub(crate) fn new(groups: usize, created: Instant) -> Self {
        HealthView {
            created,
            stamp: AtomicU64::new(0),
            cumulative: (0..groups).map(|_| AtomicU32::new(0)).collect(),
            health: (0..groups).map(|_| AtomicU32::new(0)).collect(),
            panic: AtomicBool::new(false),
            scanning: AtomicBool::new(false),
        }
    }

    /// Rescan if the view is older than `refresh` (or `force`); what the
    /// scan counted when this call made one.
    pub(crate) fn ensure_fresh<T>(
        &self,
        groups: &[Group<T>],
        now: Instant,
        p: HealthParams,
        force: bool,
    ) -> Option<PanicScan> {
        let now_ns = now.saturating_duration_since(self.created).as_nanos() as u64 + 1;
        let stamp = self.stamp.load(Ordering::Acquire);
        let refresh = p.refresh.as_nanos().min(u128::from(u64::MAX)) as u64;
        if stamp != 0 && now_ns.saturating_sub(stamp) < refresh && !force {
            return None;
        }
        if self.scanning.swap(true, Ordering::Acquire) {
            // Another selection is rescanning; use the view we have.
            return None;
        }
        let scan = self.scan(groups, now, p);
        self.stamp.store(now_ns, Ordering::Release);
        self.scanning.store(false, Ordering::Release);
        Some(scan)
    }

    fn scan<T>(&self, groups: &[Group<T>], now: Instant, p: HealthParams) -> PanicScan {
        let (mut total, mut available, mut sum, mut trusted_all) = (0u64, 0u64, 0u64, 0u64);
        for (g, group) in groups.iter().enumerate() {
            let t = group.members.len() as u64;
            let (mut a, mut trusted) = (0u64, 0u64);
            for b in group.members.iter() {
                if counts_as_available(b, now) {
                    a += 1;
                } else if removal_trusted(b) {
                    trusted += 1;
                }
            }
            total += t;
            available += a;
            trusted_all += trusted;
            let h = ((a as f64 * f64::from(FULL) * p.overprovisioning) / t.max(1) as f64)
                .min(f64::from(FULL)) as u32;
            self.health[g].store(h, Ordering::Relaxed);
            sum += u64::from(h);
        }
        let mut end = 0u64;
        let mut prefix = 0u64;
        for g in 0..groups.len() {
            let h = u64::from(self.health[g].load(Ordering::Relaxed));
            if sum < u64::from(FULL) {
                // Not enough health anywhere: scale the loads up in
                // proportion so that they still add up to 100 %.
                prefix += h;
                end = (prefix * u64::from(FULL)).checked_div(sum).unwrap_or(0);
            } else {
                end = (end + h).min(u64::from(FULL));
            }
            self.cumulative[g].store(end as u32, Ordering::Relaxed);
        }
        // Trusted removals count only while something is really available:
        // with nothing left, panic mode is the last resort as ever.
        if available > 0 {
            available += trusted_all;
        }
        let panic = p.panic_threshold > 0 && available * 100 < u64::from(p.panic_threshold) * total;
        self.panic.store(panic, Ordering::Release);
        PanicScan {
            panic,
            available,
            total,
        }
    }

    /// Whether the set is in panic mode.
    pub(crate) fn panic(&self) -> bool {
        self.panic.load(Ordering::Acquire)
    }

    /// The group whose load range holds `pick` (in `0..FULL`); group 0 when
    /// no group has any load.
    pub(crate) fn group_for(&self, pick: u32) -> usize {
        self.cumulative
            .iter()
            .position(|end| pick < end.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// The load share of each group in basis points, for reports and tests.
    pub(crate) fn loads(&self) -> Vec<u32> {
        let mut prev = 0;
        self.cumulative
            .iter()
            .map(|end| {
                let end = end.load(Ordering::Relaxed);
                let share = end.saturating_sub(prev);
                prev = end.max(prev);
                share
            })
            .collect()
    }
}
