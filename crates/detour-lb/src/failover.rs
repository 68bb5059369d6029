//! Failover strategies: how traffic is shared between groups of backends
//! (priority tiers, localities), when the balancer stops trusting health
//! (panic threshold), and how a backend that just came back is eased in
//! (slow start).
//!
//! # Tiers and the overprovisioning factor
//!
//! [`Failover::Priority`] and [`Failover::Locality`] split the set into
//! ordered groups. Each group's *health* is its share of available backends
//! times the overprovisioning factor (Envoy's, 1.4 by default), capped at
//! 100 %: a group with 75 % of its backends up still counts as able to carry
//! all of its traffic (75 × 1.4 = 105). Groups then take load in order, each
//! up to its health, and the remainder spills to the next:
//!
//! ```text
//! load(g) = min(100 − load of the groups before g, health(g))
//! ```
//!
//! With tier 0 at 50 % up (health 70) and tier 1 fully up, tier 0 gets 70 %
//! of the requests and tier 1 the other 30 %. If the groups' healths add up to
//! less than 100, the loads are scaled up in proportion so that they do (as
//! Envoy normalizes its priority load). This follows Envoy's
//! "priority levels" (`envoy/docs/root/intro/arch_overview/upstream/load_balancing/priority.rst`).
//!
//! A request that finds nothing in its group falls over to the other groups
//! in order, so the shares above are a preference, never a reason to fail.
//!
//! # Panic threshold
//!
//! When fewer than `panic_threshold` % of the upstream's backends are
//! available (health check passing, not ejected, not draining, breaker not
//! open), the balancer stops trusting those signals and spreads the traffic
//! over *all* backends of weight > 0 (through
//! [`Backend::try_admit_ignoring_health`]), still avoiding the ones this
//! request already tried while any other remains. A few healthy backends then
//! do not collapse under the whole load, and detection that was wrong (a
//! broken health check) does not turn into a total outage. `0` turns this off:
//! the selection then returns `None` (the engine answers 503), unless a
//! backend whose breaker a check half-opened is only at its probe limit
//! ([`LoadBalancer::select`](crate::LoadBalancer::select), step 5).
//!
//! # Slow start
//!
//! A backend that came back into service ([`BackendState::recovered_at`]) is
//! accepted, when selection offers it, only with probability
//!
//! ```text
//! p = max(min_factor, (elapsed / window) ^ (1 / aggression))
//! ```
//!
//! and otherwise passed over for the next candidate, so its share ramps from
//! `min_factor` of its normal share to all of it over `window`. Acceptance
//! probability rather than an effective weight was chosen because it works
//! the same for every algorithm, consistent hashing and P2C included, and
//! needs no table rebuild while the ramp runs. If every candidate of a group
//! is passed over, the first one is taken anyway: slow start delays traffic,
//! it never refuses it.
//!
//! [`Backend::try_admit_ignoring_health`]: detour_core::Backend::try_admit_ignoring_health
//! [`BackendState::recovered_at`]: detour_core::BackendState::recovered_at

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use detour_core::{check_duration, Backend, Zero};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::InvalidConfig;

/// Envoy's default overprovisioning factor.
pub const DEFAULT_OVERPROVISIONING: f64 = 1.4;

/// How traffic is shared between groups of backends.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Failover {
    /// One group: every backend takes traffic (the default).
    #[default]
    ActiveActive,
    /// Groups by [`Backend::priority`](detour_core::Backend::priority), 0
    /// first: a lower tier takes traffic only as the higher ones' health
    /// falls (see the [module docs](self)).
    Priority(PriorityTiers),
    /// Groups by [`Backend::locality`](detour_core::Backend::locality): the
    /// local one first, then the others in a configured order.
    Locality(LocalityOrder),
}

/// Active-passive through priority tiers.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PriorityTiers {
    /// How much a tier's available share is trusted to carry; ≥ 1.0.
    /// Default 1.4 (Envoy's): a tier keeps all its traffic while at least
    /// 1/1.4 ≈ 71.4 % of it is up.
    pub overprovisioning: f64,
}

impl Default for PriorityTiers {
    fn default() -> Self {
        PriorityTiers {
            overprovisioning: DEFAULT_OVERPROVISIONING,
        }
    }
}

/// Geographic failover: the local region first, then the others in order.
///
/// Groups: `local`; then each locality of `order`; then any other locality
/// (alphabetically); then backends without a locality. Between groups the
/// load spills exactly as between priority tiers.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct LocalityOrder {
    /// This proxy's locality. Default empty (must be set).
    pub local: String,
    /// The other localities, nearest first. Default empty.
    pub order: Vec<String>,
    /// As for [`PriorityTiers::overprovisioning`]. Default 1.4.
    pub overprovisioning: f64,
}

impl Default for LocalityOrder {
    fn default() -> Self {
        LocalityOrder {
            local: String::new(),
            order: Vec::new(),
            overprovisioning: DEFAULT_OVERPROVISIONING,
        }
    }
}

impl LocalityOrder {
    /// The local locality first, then `order`.
    pub fn new(
        local: impl Into<String>,
        order: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        LocalityOrder {
            local: local.into(),
            order: order.into_iter().map(Into::into).collect(),
            overprovisioning: DEFAULT_OVERPROVISIONING,
        }
    }
}

impl Failover {
    /// Priority tiers with the given overprovisioning factor.
    pub fn priority(overprovisioning: f64) -> Self {
        Failover::Priority(PriorityTiers { overprovisioning })
    }

    /// Locality order: `local` first, then `order`, factor 1.4.
    pub fn locality(
        local: impl Into<String>,
        order: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Failover::Locality(LocalityOrder::new(local, order))
    }

    pub(crate) fn overprovisioning(&self) -> f64 {
        match self {
            Failover::ActiveActive => DEFAULT_OVERPROVISIONING,
            Failover::Priority(p) => p.overprovisioning,
            Failover::Locality(l) => l.overprovisioning,
        }
    }

    /// Split `backends` into groups, most preferred first. Empty groups are
    /// never returned.
    pub(crate) fn partition(&self, backends: &[Arc<Backend>]) -> Vec<Vec<Arc<Backend>>> {
        match self {
            Failover::ActiveActive => {
                if backends.is_empty() {
                    Vec::new()
                } else {
                    vec![backends.to_vec()]
                }
            }
            Failover::Priority(_) => {
                let mut tiers: BTreeMap<u32, Vec<Arc<Backend>>> = BTreeMap::new();
                for b in backends {
                    tiers.entry(b.priority()).or_default().push(Arc::clone(b));
                }
                tiers.into_values().collect()
            }
            Failover::Locality(l) => {
                // (rank, name for the unlisted ones) orders the groups.
                let mut groups: BTreeMap<(usize, &str), Vec<Arc<Backend>>> = BTreeMap::new();
                let unlisted = l.order.len() + 1;
                for b in backends {
                    let key = match b.locality() {
                        Some(loc) if loc == l.local => (0, ""),
                        Some(loc) => match l.order.iter().position(|o| o == loc) {
                            Some(i) => (i + 1, ""),
                            None => (unlisted, loc),
                        },
                        None => (unlisted + 1, ""),
                    };
                    groups.entry(key).or_default().push(Arc::clone(b));
                }
                groups.into_values().collect()
            }
        }
    }

    pub(crate) fn validate(&self) -> Result<(), InvalidConfig> {
        let factor_ok = |f: f64| f.is_finite() && f >= 1.0;
        match self {
            Failover::ActiveActive => Ok(()),
            Failover::Priority(p) if !factor_ok(p.overprovisioning) => Err(InvalidConfig::new(
                "failover.overprovisioning",
                "must be a finite number ≥ 1.0",
            )),
            Failover::Priority(_) => Ok(()),
            Failover::Locality(l) if !factor_ok(l.overprovisioning) => Err(InvalidConfig::new(
                "failover.overprovisioning",
                "must be a finite number ≥ 1.0",
            )),
            Failover::Locality(l) if l.local.is_empty() => Err(InvalidConfig::new(
                "failover.local",
                "must name this proxy's locality",
            )),
            Failover::Locality(_) => Ok(()),
        }
    }
}

/// Slow start for recovered backends (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SlowStart {
    /// How long the ramp lasts. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// The share a backend starts the ramp with, in (0, 1]. Default 0.1.
    pub min_factor: f64,
    /// The ramp's shape: 1.0 is linear, above 1.0 ramps faster early on.
    /// Default 1.0.
    pub aggression: f64,
}

impl Default for SlowStart {
    fn default() -> Self {
        SlowStart {
            window: Duration::from_secs(30),
            min_factor: 0.1,
            aggression: 1.0,
        }
    }
}

impl SlowStart {
    /// A linear ramp over `window`, starting at 10 %.
    pub fn new(window: Duration) -> Self {
        SlowStart {
            window,
            ..SlowStart::default()
        }
    }

    /// Set the starting share.
    pub fn with_min_factor(mut self, min_factor: f64) -> Self {
        self.min_factor = min_factor;
        self
    }

    /// Set the ramp's shape.
    pub fn with_aggression(mut self, aggression: f64) -> Self {
        self.aggression = aggression;
        self
    }

    /// The probability of accepting `backend` at `now`: 1.0 outside a ramp.
    pub fn acceptance(&self, backend: &Backend, now: Instant) -> f64 {
        let Some(at) = backend.state().recovered_at() else {
            return 1.0;
        };
        let elapsed = now.saturating_duration_since(at);
        if elapsed >= self.window {
            return 1.0;
        }
        let progress = elapsed.as_secs_f64() / self.window.as_secs_f64();
        progress
            .powf(1.0 / self.aggression)
            .max(self.min_factor)
            .min(1.0)
    }

    pub(crate) fn validate(&self) -> Result<(), InvalidConfig> {
        check_duration("slow_start.window", self.window, Zero::Refused)?;
        if !(self.min_factor > 0.0 && self.min_factor <= 1.0) {
            return Err(InvalidConfig::new(
                "slow_start.min_factor",
                "must be in (0, 1]",
            ));
        }
        if !(self.aggression.is_finite() && self.aggression > 0.0) {
            return Err(InvalidConfig::new(
                "slow_start.aggression",
                "must be above zero",
            ));
        }
        Ok(())
    }
}

/// Everything about a load balancer except its algorithm.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct LbOptions {
    /// How traffic is shared between groups. Default active-active.
    pub failover: Failover,
    /// Below this percentage of available backends, selection ignores
    /// health, ejection and breakers. 0 turns panic mode off. Default 50
    /// (Envoy's).
    pub panic_threshold: u8,
    /// Slow start for recovered backends. Default off.
    pub slow_start: Option<SlowStart>,
    /// How long a computed view of the groups' health (tier loads, panic
    /// mode) is reused before a selection recomputes it, an O(N) scan.
    /// Default 100 ms. Individual backends are always checked at admission;
    /// this only delays how fast load shifts between tiers and into or out of
    /// panic mode. A selection that finds nothing recomputes at once.
    #[serde(with = "humantime_serde")]
    pub health_refresh: Duration,
}

impl Default for LbOptions {
    fn default() -> Self {
        LbOptions {
            failover: Failover::ActiveActive,
            panic_threshold: 50,
            slow_start: None,
            health_refresh: Duration::from_millis(100),
        }
    }
}

impl LbOptions {
    /// Set the failover strategy.
    pub fn with_failover(mut self, failover: Failover) -> Self {
        self.failover = failover;
        self
    }

    /// Set the panic threshold in percent (0 = off).
    pub fn with_panic_threshold(mut self, percent: u8) -> Self {
        self.panic_threshold = percent;
        self
    }

    /// Turn slow start on.
    pub fn with_slow_start(mut self, slow_start: SlowStart) -> Self {
        self.slow_start = Some(slow_start);
        self
    }

    /// Set how long a health view is reused.
    pub fn with_health_refresh(mut self, refresh: Duration) -> Self {
        self.health_refresh = refresh;
        self
    }

    /// Reject nonsense.
    ///
    /// # Errors
    /// A [`InvalidConfig`] naming the field.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        check_duration("health_refresh", self.health_refresh, Zero::Allowed)?;
        if self.panic_threshold > 100 {
            return Err(InvalidConfig::new(
                "panic_threshold",
                "is a percentage: 0 to 100",
            ));
        }
        self.failover.validate()?;
        if let Some(s) = &self.slow_start {
            s.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(port: u16, priority: u32, loc: Option<&str>) -> Arc<Backend> {
        let mut b = Backend::new(([10, 0, 0, 1], port).into()).with_priority(priority);
        if let Some(l) = loc {
            b = b.with_locality(l);
        }
        Arc::new(b)
    }

    fn ports(groups: &[Vec<Arc<Backend>>]) -> Vec<Vec<u16>> {
        groups
            .iter()
            .map(|g| g.iter().map(|b| b.addr().port()).collect())
            .collect()
    }

    #[test]
    fn localities_go_local_then_configured_order_then_the_rest() {
        let set = [
            b(1, 0, Some("us-east")),
            b(2, 0, Some("eu-west")),
            b(3, 0, None),
            b(4, 0, Some("ap-south")),
            b(5, 0, Some("eu-central")),
            b(6, 0, Some("af-south")),
            b(7, 0, Some("eu-west")),
        ];
        let f = Failover::locality("eu-west", ["eu-central", "us-east"]);
        assert_eq!(
            ports(&f.partition(&set)),
            [vec![2, 7], vec![5], vec![1], vec![6], vec![4], vec![3]]
        );
    }

    #[test]
    fn priority_tiers_are_ordered_by_priority() {
        let set = [b(1, 2, None), b(2, 0, None), b(3, 1, None), b(4, 0, None)];
        assert_eq!(
            ports(&Failover::priority(1.4).partition(&set)),
            [vec![2, 4], vec![3], vec![1]]
        );
    }

    #[test]
    fn options_parse_from_toml_and_nonsense_is_refused() {
        let o: LbOptions = toml::from_str(
            r#"
            panic_threshold = 30
            health_refresh = "250ms"
            failover = { kind = "locality", local = "eu", order = ["us"] }
            slow_start = { window = "1m", min_factor = 0.2 }
            "#,
        )
        .unwrap();
        assert_eq!(o.panic_threshold, 30);
        assert_eq!(o.failover, Failover::locality("eu", ["us"]));
        assert_eq!(o.slow_start.unwrap().window, Duration::from_secs(60));
        o.validate().unwrap();

        let bad = |s: &str| {
            toml::from_str::<LbOptions>(s)
                .unwrap()
                .validate()
                .unwrap_err()
                .field
        };
        assert_eq!(bad("panic_threshold = 101"), "panic_threshold");
        assert_eq!(
            bad("failover = { kind = \"priority\", overprovisioning = 0.5 }"),
            "failover.overprovisioning"
        );
        assert_eq!(bad("failover = { kind = \"locality\" }"), "failover.local");
        assert_eq!(bad("slow_start = { window = \"0s\" }"), "slow_start.window");
        assert_eq!(
            bad("slow_start = { window = \"400d\" }"),
            "slow_start.window"
        );
        assert_eq!(bad("health_refresh = \"400d\""), "health_refresh");
        assert_eq!(
            bad("slow_start = { min_factor = 0.0 }"),
            "slow_start.min_factor"
        );
        assert!(
            toml::from_str::<LbOptions>("panic = 1").is_err(),
            "unknown fields"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_slow_start_ramp_is_linear_from_min_factor() {
        let s = SlowStart::new(Duration::from_secs(10)).with_min_factor(0.1);
        let fresh = Backend::new(([10, 0, 0, 1], 1).into());
        assert_eq!(s.acceptance(&fresh, Instant::now()), 1.0, "never recovered");
        let start = Instant::now();
        fresh.state().mark_recovered(start);
        // Instants are stored with nanosecond precision: compare loosely.
        let at = |secs: u64| s.acceptance(&fresh, start + Duration::from_secs(secs));
        assert!((at(0) - 0.1).abs() < 1e-6);
        assert!((at(5) - 0.5).abs() < 1e-6);
        assert!((at(9) - 0.9).abs() < 1e-6);
        assert_eq!(at(11), 1.0);
        let fast = s.with_aggression(2.0);
        let t = start + Duration::from_millis(2_500);
        assert!((fast.acceptance(&fresh, t) - 0.5).abs() < 1e-6, "√0.25");
    }
}
