//! Hedged requests: when a safe request's answer is late, send the same
//! request to another backend and take whichever answers first.
//!
//! [`HedgeConfig`] is the `[upstreams.NAME.hedge]` table; [`Hedging`] is
//! what an upstream hands the engine on each peer: whether a request may be
//! hedged, how long to wait before each hedge (fixed, or a percentile of the
//! upstream's observed latency with a floor), and a budget that keeps
//! hedges to a share of the requests.
//!
//! The engine hedges only a request whose replay buffer is intact and that
//! has no body (so no attempt is still reading the client while another
//! starts), whose method is listed (default: GET, HEAD, OPTIONS — safe in
//! RFC 9110 §9.2.1's sense) and that carries no `Idempotency-Key` (a server
//! that deduplicates may answer a concurrent duplicate with 409). A hook
//! can turn hedging on or off per request with
//! [`Session::set_hedging`](crate::Session::set_hedging).

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::time::Instant;

use crate::budget::RetryBudgetGate;
use crate::invalid::InvalidConfig;

/// How long a request waits for an answer before it is hedged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HedgeDelay {
    /// A fixed delay (`"30ms"`).
    Fixed(Duration),
    /// A percentile of the upstream's recent attempt latencies (`"p95"`),
    /// never below the config's `min_delay`.
    Percentile(f64),
}

impl FromStr for HedgeDelay {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(p) = s.strip_prefix('p') {
            let p: f64 = p.parse().map_err(|_| {
                format!("{s:?} is neither a duration nor a percentile like \"p95\"")
            })?;
            if !(50.0..=99.9).contains(&p) {
                return Err(format!("percentile {p} is outside 50..=99.9"));
            }
            return Ok(HedgeDelay::Percentile(p));
        }
        humantime_serde::re::humantime::parse_duration(s)
            .map(HedgeDelay::Fixed)
            .map_err(|e| format!("{s:?} is neither a duration nor a percentile like \"p95\": {e}"))
    }
}

impl fmt::Display for HedgeDelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HedgeDelay::Fixed(d) => {
                write!(f, "{}", humantime_serde::re::humantime::format_duration(*d))
            }
            HedgeDelay::Percentile(p) => write!(f, "p{p}"),
        }
    }
}

impl Serialize for HedgeDelay {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HedgeDelay {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The `[upstreams.NAME.hedge]` table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HedgeConfig {
    /// Wait this long for an answer before each hedge: a duration, or a
    /// percentile of the upstream's observed latency (`"p95"`). Default
    /// `"p95"`.
    pub delay: HedgeDelay,
    /// The floor of an adaptive delay. Default 10 ms.
    #[serde(with = "humantime_serde")]
    pub min_delay: Duration,
    /// Hedges per request at most (attempts in flight together: one more).
    /// Default 1.
    pub max_extra: u32,
    /// Hedges at most this share of the upstream's requests. Default 0.1.
    pub budget_ratio: f64,
    /// Methods that may be hedged. Default GET, HEAD, OPTIONS.
    pub methods: Vec<String>,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        HedgeConfig {
            delay: HedgeDelay::Percentile(95.0),
            min_delay: Duration::from_millis(10),
            max_extra: 1,
            budget_ratio: 0.1,
            methods: ["GET", "HEAD", "OPTIONS"].map(String::from).to_vec(),
        }
    }
}

/// The most hedges a request may have.
pub const MAX_EXTRA: u32 = 4;

impl HedgeConfig {
    /// Check every field.
    ///
    /// # Errors
    /// [`InvalidConfig`] naming the first field whose value makes no sense.
    pub fn validate(self) -> Result<Self, InvalidConfig> {
        let bad = |field, reason: String| Err(InvalidConfig { field, reason });
        if let HedgeDelay::Fixed(d) = self.delay {
            crate::check_duration("delay", d, crate::Zero::Refused)?;
        }
        crate::check_duration("min_delay", self.min_delay, crate::Zero::Allowed)?;
        if !(1..=MAX_EXTRA).contains(&self.max_extra) {
            return bad(
                "max_extra",
                format!("must be within 1..={MAX_EXTRA}, got {}", self.max_extra),
            );
        }
        if !(self.budget_ratio.is_finite() && (0.0..=1.0).contains(&self.budget_ratio)) {
            return bad(
                "budget_ratio",
                format!("must be within 0.0..=1.0, got {}", self.budget_ratio),
            );
        }
        for m in &self.methods {
            if Method::from_bytes(m.as_bytes()).is_err() {
                return bad("methods", format!("{m:?} is not an HTTP method"));
            }
        }
        Ok(self)
    }
}

/// An upstream's hedging, shared by its peers: the config, the budget, and
/// the latency it has observed.
pub struct Hedging {
    config: HedgeConfig,
    budget: Arc<dyn RetryBudgetGate>,
    latency: LatencyTracker,
}

impl fmt::Debug for Hedging {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hedging")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Hedging {
    /// Hedging by `config`, its hedges paid from `budget` (a budget with
    /// the config's `budget_ratio`; the upstream makes it).
    pub fn new(config: HedgeConfig, budget: Arc<dyn RetryBudgetGate>) -> Self {
        Hedging {
            config,
            budget,
            latency: LatencyTracker::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &HedgeConfig {
        &self.config
    }

    /// Whether a request with `method` and `headers` may be hedged by the
    /// upstream's rules (the engine also requires no body, and a hook may
    /// override): its method is listed and it carries no `Idempotency-Key`.
    pub fn applies(&self, method: &Method, headers: &HeaderMap) -> bool {
        self.config.methods.iter().any(|m| m == method.as_str())
            && !headers.contains_key("idempotency-key")
    }

    /// How long to wait for an answer before the next hedge.
    pub fn delay(&self) -> Duration {
        match self.config.delay {
            HedgeDelay::Fixed(d) => d,
            HedgeDelay::Percentile(p) => self
                .latency
                .quantile(p / 100.0)
                .map_or(self.config.min_delay, |q| q.max(self.config.min_delay)),
        }
    }

    /// The most hedges of one request.
    pub fn max_extra(&self) -> u32 {
        self.config.max_extra
    }

    /// A request that may be hedged began: it pays into the budget.
    pub fn deposit(&self, now: Instant) {
        self.budget.deposit(now);
    }

    /// May one more hedge start now? `true` spends it.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        self.budget.try_withdraw(now)
    }

    /// An attempt to the upstream got its response head after `latency`.
    pub fn observe(&self, latency: Duration) {
        self.latency.record(latency);
    }
}

/// Recent latencies in logarithmic buckets (4 per doubling, from 64 µs to
/// about 17 min): lock-free to record, and halved every
/// [`LatencyTracker::HALF_LIFE`] samples so it follows the upstream.
#[derive(Debug)]
struct LatencyTracker {
    buckets: [AtomicU64; BUCKETS],
    samples: AtomicU64,
}

const BUCKETS: usize = 96;
/// The lower bound of bucket 0, in microseconds.
const BASE_MICROS: f64 = 64.0;
const PER_DOUBLING: f64 = 4.0;

impl Default for LatencyTracker {
    fn default() -> Self {
        LatencyTracker {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            samples: AtomicU64::new(0),
        }
    }
}

impl LatencyTracker {
    /// Samples between two halvings of every count.
    const HALF_LIFE: u64 = 2048;
    /// Samples needed before a quantile is believed.
    const WARM: u64 = 32;

    fn bucket(latency: Duration) -> usize {
        let micros = latency.as_secs_f64() * 1e6;
        if micros <= BASE_MICROS {
            return 0;
        }
        let b = ((micros / BASE_MICROS).log2() * PER_DOUBLING).floor();
        // In range by the `min`; the float is finite and positive here.
        (b as usize).min(BUCKETS - 1)
    }

    /// The upper bound of bucket `b`.
    fn upper(b: usize) -> Duration {
        let micros = BASE_MICROS * ((b + 1) as f64 / PER_DOUBLING).exp2();
        Duration::from_secs_f64(micros / 1e6)
    }

    fn record(&self, latency: Duration) {
        self.buckets[Self::bucket(latency)].fetch_add(1, Ordering::Relaxed);
        let n = self.samples.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(Self::HALF_LIFE) {
            for b in &self.buckets {
                // A racing increment may be halved or not: either is fine
                // for a decaying estimate.
                let v = b.load(Ordering::Relaxed);
                b.store(v / 2, Ordering::Relaxed);
            }
        }
    }

    /// The latency below which a share `q` of the recent samples fall (an
    /// upper bound, to a quarter-doubling); `None` until warm.
    fn quantile(&self, q: f64) -> Option<Duration> {
        if self.samples.load(Ordering::Relaxed) < Self::WARM {
            return None;
        }
        // Two passes over the counters, no copy: a sample recorded between
        // them shifts the answer by at most one bucket.
        let count = |b: &AtomicU64| b.load(Ordering::Relaxed);
        let total: u64 = self.buckets.iter().map(count).sum();
        if total == 0 {
            return None;
        }
        let want = (q * total as f64).ceil() as u64;
        let mut seen = 0;
        for (b, c) in self.buckets.iter().map(count).enumerate() {
            seen += c;
            if seen >= want {
                return Some(Self::upper(b));
            }
        }
        Some(Self::upper(BUCKETS - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Always;
    impl RetryBudgetGate for Always {
        fn deposit(&self, _: Instant) {}
        fn try_withdraw(&self, _: Instant) -> bool {
            true
        }
    }

    fn hedging(config: HedgeConfig) -> Hedging {
        Hedging::new(config, Arc::new(Always))
    }

    #[test]
    fn delays_parse_as_durations_or_percentiles() {
        assert_eq!(
            "30ms".parse(),
            Ok(HedgeDelay::Fixed(Duration::from_millis(30)))
        );
        assert_eq!("p95".parse(), Ok(HedgeDelay::Percentile(95.0)));
        assert_eq!("p99.5".parse(), Ok(HedgeDelay::Percentile(99.5)));
        for bad in ["p5", "p100", "pxx", "soon", ""] {
            assert!(bad.parse::<HedgeDelay>().is_err(), "{bad}");
        }
        assert_eq!(HedgeDelay::Percentile(95.0).to_string(), "p95");
        assert_eq!(
            HedgeDelay::Fixed(Duration::from_millis(30)).to_string(),
            "30ms"
        );
    }

    #[test]
    fn validation_names_the_field() {
        let field = |c: HedgeConfig| c.validate().unwrap_err().field;
        let d = HedgeConfig::default;
        assert_eq!(
            field(HedgeConfig {
                max_extra: 0,
                ..d()
            }),
            "max_extra"
        );
        assert_eq!(
            field(HedgeConfig {
                budget_ratio: 1.5,
                ..d()
            }),
            "budget_ratio"
        );
        let methods = vec!["G ET".into()];
        assert_eq!(field(HedgeConfig { methods, ..d() }), "methods");
        let delay = HedgeDelay::Fixed(Duration::ZERO);
        assert_eq!(field(HedgeConfig { delay, ..d() }), "delay");
        // Bounded like every duration (the fixed delay is parsed by hand,
        // so the binary's duration scan does not see it).
        let delay = HedgeDelay::Fixed(crate::MAX_DURATION + Duration::from_secs(1));
        assert_eq!(field(HedgeConfig { delay, ..d() }), "delay");
        assert!(HedgeConfig::default().validate().is_ok());
    }

    #[test]
    fn only_listed_methods_without_an_idempotency_key_apply() {
        let h = hedging(HedgeConfig::default());
        let none = HeaderMap::new();
        assert!(h.applies(&Method::GET, &none));
        assert!(h.applies(&Method::HEAD, &none));
        assert!(!h.applies(&Method::POST, &none));
        assert!(!h.applies(&Method::PUT, &none), "idempotent is not safe");
        let mut keyed = HeaderMap::new();
        keyed.insert("idempotency-key", "k1".parse().unwrap());
        assert!(!h.applies(&Method::GET, &keyed));
    }

    #[test]
    fn an_adaptive_delay_follows_the_latency_with_a_floor() {
        let h = hedging(HedgeConfig::default());
        // Cold: the floor.
        assert_eq!(h.delay(), Duration::from_millis(10));
        // 95 fast answers at 20 ms, 5 slow at 400 ms: p95 is about 20 ms.
        for i in 0..100 {
            h.observe(Duration::from_millis(if i % 20 == 0 { 400 } else { 20 }));
        }
        let d = h.delay();
        assert!(
            d >= Duration::from_millis(20) && d < Duration::from_millis(25),
            "{d:?}"
        );
        // Fast answers: the floor again.
        let h = hedging(HedgeConfig::default());
        for _ in 0..100 {
            h.observe(Duration::from_micros(300));
        }
        assert_eq!(h.delay(), Duration::from_millis(10));
        // Fixed is fixed.
        let h = hedging(HedgeConfig {
            delay: HedgeDelay::Fixed(Duration::from_millis(30)),
            ..HedgeConfig::default()
        });
        h.observe(Duration::from_secs(1));
        assert_eq!(h.delay(), Duration::from_millis(30));
    }

    #[test]
    fn the_tracker_forgets_by_halving() {
        let t = LatencyTracker::default();
        for _ in 0..LatencyTracker::HALF_LIFE {
            t.record(Duration::from_millis(100));
        }
        // Halved at the last sample: 1024 left at 100 ms.
        for _ in 0..LatencyTracker::HALF_LIFE - 1 {
            t.record(Duration::from_millis(1));
        }
        let p50 = t.quantile(0.5).unwrap();
        assert!(p50 < Duration::from_millis(2), "{p50:?}");
    }
}
