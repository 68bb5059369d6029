//! Retry budgets: retries as a share of recent requests, so that retries
//! cannot multiply an outage.
//!
//! Without a budget, every request to a failing upstream becomes
//! `1 + max_retries` attempts exactly when the upstream can least take them.
//! A budget caps retries at `ratio × requests + min_per_second × window` over
//! a sliding window (1 s by default, so it follows the traffic of the
//! moment); once it is spent the engine stops retrying and passes the failure
//! on. A new budget, whose window has seen no traffic yet, also lends
//! [`START_SECONDS`] of the minimum until its traffic earns as much.
//!
//! The model is Finagle's `RetryBudget` (a percentage of requests plus a
//! minimum per second over a time-to-live), which tower's `TpsBudget` also
//! follows. Unlike Finagle's token bucket, the window here is 10 time buckets
//! of atomic counters: recording is one compare-and-swap, and nothing locks.

pub mod config;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

pub use self::config::BudgetConfig;
use crate::clock::{duration_nanos, Divider, Epoch};
use crate::pad::Padded;
use detour_core::InvalidConfig;

/// Buckets of the window.
const BUCKETS: u64 = 10;
/// A bucket is `step (32 bits) | count (32 bits)`.
const LOW: u64 = 0xffff_ffff;
/// Seconds of `min_per_second` a new budget lends.
pub const START_SECONDS: u32 = 10;

/// A retry budget: retries allowed as a ratio of recent requests plus a
/// minimum per second. Lock-free; share it (in an `Arc`) between workers.
///
/// Call [`record_request`](Self::record_request) once per request (not per
/// attempt) and [`try_withdraw`](Self::try_withdraw) before each retry.
///
/// **The loan.** A proxy that starts (or an upstream that is added) into a
/// partial outage has no traffic in its window to earn retries with, yet
/// must find the working backends. So a new budget lends `min_per_second ×`
/// [`START_SECONDS`] retries beyond its window, spent only when the window
/// refuses. The loan ends for good at the first withdrawal at which the
/// ratio alone earns as much in one window: from then on the budget pays
/// for itself, and no saved-up credit can pay for an outage that slowed the
/// clients down.
///
/// ```
/// use detour_breaker::{BudgetConfig, RetryBudget};
///
/// let mut cfg = BudgetConfig::default();
/// cfg.ratio = 0.5;
/// cfg.min_per_second = 0;
/// let budget = RetryBudget::new(cfg).unwrap();
/// for _ in 0..4 {
///     budget.record_request();
/// }
/// assert!(budget.try_withdraw());
/// assert!(budget.try_withdraw());
/// assert!(!budget.try_withdraw(), "half of 4 requests is 2 retries");
/// ```
pub struct RetryBudget {
    requests: Padded<[AtomicU64; BUCKETS as usize]>,
    retries: Padded<[AtomicU64; BUCKETS as usize]>,
    step: Divider,
    ratio: f64,
    /// `min_per_second × window`, in retries.
    reserve: f64,
    /// What is left of the loan (0 once it ended).
    loan: AtomicU64,
    epoch: Epoch,
    config: BudgetConfig,
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RetryBudget {
    /// A budget with nothing recorded yet (the minimum and the loan are
    /// available at once).
    ///
    /// # Errors
    /// [`InvalidConfig`] when `config` does not [validate](BudgetConfig::validate).
    pub fn new(config: BudgetConfig) -> Result<Self, InvalidConfig> {
        config.validate()?;
        Ok(RetryBudget {
            requests: Default::default(),
            retries: Default::default(),
            step: Divider::new(duration_nanos(config.window) / BUCKETS),
            ratio: config.ratio,
            reserve: f64::from(config.min_per_second) * config.window.as_secs_f64(),
            loan: AtomicU64::new(lent(&config)),
            epoch: Epoch::now(),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BudgetConfig {
        &self.config
    }

    /// Count one request. Call once per downstream request, before or after
    /// its first attempt; retries are not requests.
    pub fn record_request(&self) {
        self.record_request_at(Instant::now());
    }

    /// [`record_request`](Self::record_request) at a time the caller already
    /// read (saves a clock read on the request path).
    pub fn record_request_at(&self, now: Instant) {
        add(&self.requests, self.step(now));
    }

    /// Spend one retry if the budget allows it. `false` means: do not retry.
    pub fn try_withdraw(&self) -> bool {
        self.try_withdraw_at(Instant::now())
    }

    /// [`try_withdraw`](Self::try_withdraw) at a time the caller already read.
    pub fn try_withdraw_at(&self, now: Instant) -> bool {
        let step = self.step(now);
        let earned = self.earned(step);
        if self.loan.load(Ordering::Relaxed) > 0 && earned >= lent(&self.config) as f64 {
            // The ratio pays for itself now: the loan ends for good.
            self.loan.store(0, Ordering::Relaxed);
        }
        self.try_window(step, earned + self.reserve) || self.try_loan()
    }

    /// Spend one of the window's `allowance` retries in `step`, if one is left.
    fn try_window(&self, step: u64, allowance: f64) -> bool {
        // Spent already: refuse with reads only, so an exhausted budget under
        // load does not turn every refusal into two contended writes.
        if (sum(&self.retries, step) + 1) as f64 > allowance {
            return false;
        }
        // Reserve first, then check with the reservation counted: two
        // threads racing for the last retry cannot both get it (at worst both
        // give theirs back), so the budget is never overspent.
        add(&self.retries, step);
        let spent = sum(&self.retries, step);
        if spent as f64 <= allowance {
            true
        } else {
            take_back(&self.retries, step);
            false
        }
    }

    /// Spend one retry of the loan, if any is left.
    fn try_loan(&self) -> bool {
        self.loan
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Retries still allowed now.
    pub fn remaining(&self) -> u64 {
        self.remaining_at(Instant::now())
    }

    /// [`remaining`](Self::remaining) at `now`.
    pub fn remaining_at(&self, now: Instant) -> u64 {
        let step = self.step(now);
        // `as` saturates a float to the integer range (and NaN to 0).
        let window = ((self.earned(step) + self.reserve).floor() as u64)
            .saturating_sub(sum(&self.retries, step));
        window.saturating_add(self.loan.load(Ordering::Acquire))
    }

    /// The retries the ratio earns over the window ending in `step`.
    fn earned(&self, step: u64) -> f64 {
        self.ratio * sum(&self.requests, step) as f64
    }

    fn step(&self, now: Instant) -> u64 {
        self.step.div(self.epoch.nanos(now))
    }
}

/// The retries a new budget with `config` lends.
fn lent(config: &BudgetConfig) -> u64 {
    u64::from(config.min_per_second) * u64::from(START_SECONDS)
}

/// One more in `step`'s bucket (emptied first if it held an older step).
fn add(buckets: &[AtomicU64; BUCKETS as usize], step: u64) {
    let tag = step & LOW;
    // In bounds: the index is taken modulo the array's length.
    let b = &buckets[(step % BUCKETS) as usize];
    let mut cur = b.load(Ordering::Relaxed);
    loop {
        let count = if cur >> 32 == tag { cur & LOW } else { 0 };
        let next = (tag << 32) | (count + 1).min(LOW);
        match b.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return,
            Err(actual) => cur = actual,
        }
    }
}

/// Undo an [`add`] in `step`, unless the bucket has moved on since.
fn take_back(buckets: &[AtomicU64; BUCKETS as usize], step: u64) {
    let tag = step & LOW;
    let b = &buckets[(step % BUCKETS) as usize];
    let mut cur = b.load(Ordering::Relaxed);
    while cur >> 32 == tag && cur & LOW > 0 {
        match b.compare_exchange_weak(cur, cur - 1, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return,
            Err(actual) => cur = actual,
        }
    }
}

/// The counts of the last `BUCKETS` steps up to `step`.
fn sum(buckets: &[AtomicU64; BUCKETS as usize], step: u64) -> u64 {
    let tag = step & LOW;
    buckets
        .iter()
        .map(|b| b.load(Ordering::Acquire))
        .filter(|v| tag.wrapping_sub(v >> 32) & LOW < BUCKETS)
        .map(|v| v & LOW)
        .sum()
}

/// The window's step length, for tests.
/// The engine deposits every client request and withdraws every retry.
impl detour_core::RetryBudgetGate for RetryBudget {
    fn deposit(&self, now: Instant) {
        self.record_request_at(now);
    }

    fn try_withdraw(&self, now: Instant) -> bool {
        self.try_withdraw_at(now)
    }
}

#[cfg(test)]
fn step_len(b: &RetryBudget) -> std::time::Duration {
    std::time::Duration::from_nanos(b.step.divisor())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;
    use tokio::time::advance;

    fn budget(ratio: f64, min_per_second: u32, window_s: u64) -> RetryBudget {
        RetryBudget::new(BudgetConfig {
            ratio,
            min_per_second,
            window: Duration::from_secs(window_s),
        })
        .unwrap()
    }

    fn drain(b: &RetryBudget) -> u32 {
        let mut n = 0;
        while b.try_withdraw() {
            n += 1;
            assert!(n < 1_000_000, "a budget must run out");
        }
        n
    }

    #[tokio::test(start_paused = true)]
    async fn the_ratio_allows_a_share_of_requests() {
        let b = budget(0.2, 0, 10);
        assert!(!b.try_withdraw(), "no requests, no minimum: no retry");
        for _ in 0..100 {
            b.record_request();
        }
        assert_eq!(b.remaining(), 20);
        assert_eq!(drain(&b), 20);
        assert_eq!(b.remaining(), 0);
        // More requests earn more retries.
        for _ in 0..10 {
            b.record_request();
        }
        assert_eq!(drain(&b), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_minimum_per_second_is_there_without_traffic() {
        let b = budget(0.2, 10, 10);
        assert_eq!(drain(&b), 200, "10/s over a 10 s window, and the loan");
        advance(Duration::from_secs(5)).await;
        assert!(
            !b.try_withdraw(),
            "spent retries stay counted for the window"
        );
        advance(Duration::from_secs(6)).await;
        assert_eq!(drain(&b), 100, "and leave it after the window");
    }

    #[tokio::test(start_paused = true)]
    async fn the_loan_helps_a_new_budget_until_its_traffic_earns_as_much() {
        // 200 requests earn 40 retries, the minimum 10: the loan's 100 on top.
        let b = RetryBudget::new(BudgetConfig::default()).unwrap();
        for _ in 0..200 {
            b.record_request();
        }
        assert_eq!(b.remaining(), 150);
        assert_eq!(drain(&b), 150);
        advance(Duration::from_secs(60)).await;
        assert_eq!(b.remaining(), 10, "a loan spent is not lent again");
        // 1 000 requests earn 200, more than the loan: it ends unspent.
        let b = RetryBudget::new(BudgetConfig::default()).unwrap();
        for _ in 0..1_000 {
            b.record_request();
        }
        assert_eq!(drain(&b), 210);
        advance(Duration::from_secs(60)).await;
        assert_eq!(b.remaining(), 10, "the loan ended when the ratio earned it");
    }

    /// 10 s of healthy traffic at 1 500 requests a second, then 10 s of an
    /// outage during which the clients slow to 200 a second and every
    /// request asks for three retries. Returns the requests and the retries
    /// granted in the outage after its first second (when the window may
    /// still hold healthy traffic).
    fn retries_after_a_drop(b: &RetryBudget) -> (u32, u32) {
        let tick = Duration::from_millis(50);
        let mut now = Instant::now();
        for _ in 0..200 {
            for _ in 0..75 {
                b.record_request_at(now);
            }
            now += tick;
        }
        let (mut requests, mut granted) = (0u32, 0u32);
        for t in 0..200 {
            for _ in 0..10 {
                b.record_request_at(now);
                let won = (0..3).filter(|_| b.try_withdraw_at(now)).count() as u32;
                if t >= 20 {
                    requests += 1;
                    granted += won;
                }
            }
            now += tick;
        }
        (requests, granted)
    }

    #[test]
    fn the_default_budget_binds_against_the_outage_s_own_traffic() {
        let b = RetryBudget::new(BudgetConfig::default()).unwrap();
        let (requests, granted) = retries_after_a_drop(&b);
        // Over the outage's last 9 s: the ratio of its requests (and of one
        // window before them), plus 10 a second; the loan ended at the first
        // retry, which the healthy traffic before had earned.
        let bound = 0.2 * f64::from(requests + 200) + 10.0 * 10.0;
        assert!(f64::from(granted) <= bound, "{granted} > {bound}");
        // A 10 s window lets the healthy traffic before pay for the retries
        // of most of the outage: more than twice as many.
        let long = budget(0.2, 10, 10);
        let (_, long_granted) = retries_after_a_drop(&long);
        assert!(
            long_granted > 2 * granted,
            "{long_granted} against {granted}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requests_age_out_of_the_window() {
        let b = budget(0.5, 0, 10);
        for _ in 0..40 {
            b.record_request();
        }
        advance(Duration::from_secs(5)).await;
        for _ in 0..10 {
            b.record_request();
        }
        assert_eq!(b.remaining(), 25);
        // 10.5 s on, the first 40 have left the window; the 10 at 5 s remain.
        advance(Duration::from_millis(5_500)).await;
        assert_eq!(b.remaining(), 5);
        assert_eq!(drain(&b), 5);
        advance(Duration::from_secs(10)).await;
        assert_eq!(b.remaining(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_is_kept_in_ten_steps() {
        let b = budget(1.0, 0, 10);
        assert_eq!(step_len(&b), Duration::from_secs(1));
        b.record_request();
        // Still counted 9.999 s later, gone at 10 s: it ages out with its step.
        advance(Duration::from_millis(9_999)).await;
        assert_eq!(b.remaining(), 1);
        advance(Duration::from_millis(1)).await;
        assert_eq!(b.remaining(), 0);
    }

    #[test]
    fn racing_threads_never_overspend() {
        let b = budget(0.0, 10, 10);
        // Spend the loan first, so the threads race for the window's 100.
        while b.try_loan() {}
        let won = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100 {
                        if b.try_withdraw() {
                            won.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        // 400 tries against 100 retries: never more than 100 granted (an
        // unlucky race may refuse a few that were affordable).
        let won = won.into_inner();
        assert!((90..=100).contains(&won), "{won}");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Advance(u64),
        Requests(u32),
        Withdraw(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u64..3_000).prop_map(Op::Advance),
            (0u32..50).prop_map(Op::Requests),
            (0u32..50).prop_map(Op::Withdraw),
        ]
    }

    proptest! {
        /// At every granted retry, the retries granted over the part of the
        /// window the buckets always cover (the last `window − step`) are at
        /// most the window's and the loan's (`min × START_SECONDS`). The
        /// window's are `ratio × requests + min × window`, the requests those
        /// of the window before its last grant: that grant fell in the
        /// covered part, so of the last `window + covered` at most.
        #[test]
        fn withdrawals_never_exceed_the_allowance(
            ratio in 0.0f64..2.0,
            min in 0u32..20,
            window_s in 1u64..20,
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let b = budget(ratio, min, window_s);
            let window = Duration::from_secs(window_s);
            let covered = window - step_len(&b);
            let mut now = Instant::now();
            // The requests of the last `window + covered` and the retries
            // granted in the covered part, oldest first (time only moves
            // forward).
            let mut requests = std::collections::VecDeque::new();
            let mut granted = std::collections::VecDeque::new();
            for op in ops {
                match op {
                    Op::Advance(ms) => now += Duration::from_millis(ms),
                    Op::Requests(n) => for _ in 0..n {
                        b.record_request_at(now);
                        requests.push_back(now);
                    },
                    Op::Withdraw(n) => for _ in 0..n {
                        if !b.try_withdraw_at(now) {
                            continue;
                        }
                        granted.push_back(now);
                        while requests.front().is_some_and(|&t| now.duration_since(t) >= window + covered) {
                            requests.pop_front();
                        }
                        while granted.front().is_some_and(|&t| now.duration_since(t) >= covered) {
                            granted.pop_front();
                        }
                        let allowed = ratio * requests.len() as f64
                            + f64::from(min) * window_s as f64
                            + f64::from(min * START_SECONDS);
                        prop_assert!(
                            granted.len() as f64 <= allowed + 1e-9,
                            "{} retries granted against an allowance of {allowed}",
                            granted.len()
                        );
                    },
                }
            }
            // Two windows on, everything recorded has aged out.
            let later = now + window * 2;
            let fresh = (f64::from(min) * window_s as f64).floor() as u64;
            let loan = b.loan.load(Ordering::Relaxed);
            prop_assert!(loan <= u64::from(min * START_SECONDS));
            prop_assert_eq!(b.remaining_at(later), fresh + loan);
        }
    }
}
