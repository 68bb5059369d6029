//! The vocabulary every Detour crate speaks. No I/O of its own beyond the
//! plain TCP connector every dialer shares.
//!
//! A user implements [`ProxyHttp`] — only [`new_ctx`](ProxyHttp::new_ctx) and
//! [`upstream_peer`](ProxyHttp::upstream_peer) are required — and hands it to
//! `detour-server`, which runs connections, pooling and the retry loop.
//!
//! # Layout
//! - [`proxy`]: the [`ProxyHttp`] hooks, in the order the engine calls them.
//! - [`session`]: the downstream request as hooks see it ([`Session`]).
//! - [`error`]: one [`Error`] type with an [`ErrorKind`] to match on.
//! - [`commit`]: how far an attempt got ([`CommitPoint`]).
//! - [`retry`]: [`RetryPolicy`] and the pure safety ceiling [`retry::decide`].
//! - [`plan`]: the attempt [`Planner`], which makes every decision about a
//!   request's attempts and keeps their history.
//! - [`backend`]: [`Backend`] and its lock-free [`BackendState`], admission [`Permit`]s.
//! - [`peer`]: [`HttpPeer`] and [`PeerOptions`], where one attempt goes.
//! - [`connect`]: the [`Connect`](connect::Connect) trait every dialer takes, and
//!   [`ClientExchange`](connect::ClientExchange), one request on a connection of
//!   its own (how active HTTP checks dial like the engine).
//! - [`observe`]: [`AttemptOutcome`], its [`OutcomeClass`] and the
//!   [`Observer`] trait.
//! - [`hedge`]: hedged requests: [`HedgeConfig`] and an upstream's [`Hedging`].
//! - [`hops`]: hop-aware retries, the `retried` parameter of `Proxy-Status`.
//! - [`spread`]: how failure is spread across an upstream's backends
//!   (concentrated or correlated), from each backend's recent attempts.
//!
//! ```
//! use detour_core::retry::{decide, AttemptFacts, RetryDecision};
//! use detour_core::{CommitPoint, ErrorKind, RetryPolicy};
//!
//! // A POST whose bytes reached the upstream is never sent anywhere else.
//! let facts = AttemptFacts {
//!     kind: ErrorKind::ConnectionReset,
//!     commit: CommitPoint::RequestSent,
//!     safe: false,
//!     replay_intact: true,
//!     reused: false,
//! };
//! assert!(!decide(&RetryPolicy::default(), &facts).is_retry());
//! ```
#![warn(missing_docs)]

mod addr_hash;
pub mod backend;
pub mod budget;
mod clock;
pub mod commit;
pub mod connect;
pub mod error;
pub mod hedge;
pub mod hops;
mod invalid;
pub mod observe;
mod outcome;
pub mod peer;
pub mod pick;
pub mod plan;
pub mod proxy;
pub mod retry;
pub mod session;
pub mod spread;

pub use addr_hash::{AddrHash, AddrHasher, AddrMap};
pub use backend::{AdmissionGate, Backend, BackendState, GateState, Permit, Removal, RemovalCap};
pub use commit::CommitPoint;
pub use error::{BoxError, Chain, Error, ErrorKind, ErrorSide, FailureKind, Result, RetryHint};
pub use hedge::{HedgeConfig, Hedging};
pub use invalid::{check_duration, check_optional_duration, InvalidConfig, Zero, MAX_DURATION};
pub use observe::{AttemptOutcome, Observer, OutcomeClass};
pub use peer::{HttpPeer, PeerOptions, PeerTls, RetryBudgetGate};
pub use pick::{Grouping, Pick};
pub use plan::{Attempt, AttemptId, Decision, Outcome, Planner};
pub use proxy::ProxyHttp;
pub use retry::{RetryDecision, RetryPolicy};
pub use session::{EngineKey, RawUri, Session};
pub use spread::{FailureSpread, Spread};
