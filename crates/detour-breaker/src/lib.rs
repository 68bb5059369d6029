//! Circuit breakers, retry budgets and concurrency limits for Detour: the
//! three ways a proxy keeps a failing backend from taking everyone down.
//!
//! - [`CircuitBreaker`] stops sending to a backend that keeps failing (closed
//!   → open), tries it again with a few probes after a while (half-open), and
//!   takes it back when they succeed. [`BreakerRegistry`] keeps one per
//!   backend, installs each as the backend's
//!   [`AdmissionGate`](detour_core::AdmissionGate) and is an
//!   [`Observer`](detour_core::Observer) of the engine's attempt outcomes.
//! - [`RetryBudget`] allows retries as a share of recent requests, so retries
//!   cannot multiply an outage.
//! - [`ConcurrencyLimit`] bounds requests in flight and waiting per upstream,
//!   and refuses the rest at once.
//!
//! Everything on the request path is atomics: no lock, no allocation. This
//! crate depends on `detour-core` only, so a service can use it without the
//! rest of Detour.
//!
//! # Layout
//! - [`breaker`]: [`CircuitBreaker`], its [`BreakerConfig`], [`Transition`]s
//!   and the [`BreakerRegistry`].
//! - [`budget`]: [`RetryBudget`] and [`BudgetConfig`].
//! - [`limit`]: [`ConcurrencyLimit`] and [`LimitConfig`].
//! - [`InvalidConfig`]: what every `validate()` returns, naming the field.
//!
//! ```
//! use std::time::Duration;
//! use detour_breaker::{BreakerConfig, CircuitBreaker, RetryBudget, BudgetConfig};
//!
//! let breaker = CircuitBreaker::new(BreakerConfig::default()).unwrap();
//! let budget = RetryBudget::new(BudgetConfig::default()).unwrap();
//!
//! budget.record_request();
//! let mut attempt = 0;
//! loop {
//!     attempt += 1;
//!     let Some(admission) = breaker.try_acquire() else {
//!         break; // open: fail fast, or go to another backend
//!     };
//!     let ok = attempt > 1; // call the service here
//!     if ok {
//!         admission.success();
//!         break;
//!     }
//!     admission.failure();
//!     if !budget.try_withdraw() {
//!         break; // the retry budget is spent
//!     }
//! }
//! assert_eq!(attempt, 2);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod breaker;
pub mod budget;
mod clock;
mod error;
pub mod limit;
mod pad;

pub use breaker::{
    Admission, BreakerConfig, BreakerMemory, BreakerRegistry, BreakerSnapshot, CircuitBreaker,
    FailureKind, FailureRate, GateTaken, OwnedAdmission, SlowCall, Transition, TransitionReason,
    Window,
};
pub use budget::{BudgetConfig, RetryBudget};
pub use detour_core::InvalidConfig;
pub use limit::{ConcurrencyLimit, LimitConfig, LimitPermit, Overloaded};
