//! The budget the engine spends retries and hedges from.

/// A retry budget the engine consults (`detour-breaker`'s `RetryBudget`
/// implements it): every client request is deposited once, and every retry
/// must be withdrawn; when the budget is spent the engine stops retrying.
pub trait RetryBudgetGate: Send + Sync + 'static {
    /// A client request began (its first attempt).
    ///
    /// `now` is a time the engine already holds, so the hot path reads no
    /// extra clock.
    fn deposit(&self, now: tokio::time::Instant);
    /// May one more retry happen now? `true` spends it.
    fn try_withdraw(&self, now: tokio::time::Instant) -> bool;
}
