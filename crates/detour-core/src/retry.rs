//! The retry policy and the one pure function that decides whether a failed
//! attempt may be tried again.
//!
//! The decision is a *ceiling* (see the Failure semantics in the design): it says
//! whether another attempt is allowed at all. Within it, the attempt
//! [`Planner`](crate::plan::Planner) checks the retry count, the deadline, the
//! retry budget ([`admit_retry`]) and the backends already tried.

use std::time::Duration;

use http::{HeaderMap, Method};
use serde::{Deserialize, Serialize};

use crate::commit::CommitPoint;
use crate::error::{ErrorKind, FailureKind};
use crate::invalid::{check_duration, check_optional_duration, Zero};
use crate::spread::Spread;
use crate::InvalidConfig;

/// An error kind a policy may list as retriable (the config names are
/// snake_case): the same kinds a breaker may count as failures.
pub type RetryOn = FailureKind;

/// The default retriable errors: refused, TLS handshake failed, reset (and
/// broken pipe), closed, and every timeout — the list users know from the
/// failover seed, with the handshake that is part of connecting.
pub const DEFAULT_RETRY_ON: [RetryOn; 7] = [
    RetryOn::ConnectRefused,
    RetryOn::ConnectTimeout,
    RetryOn::TlsHandshake,
    RetryOn::ConnectionReset,
    RetryOn::ConnectionClosed,
    RetryOn::ReadTimeout,
    RetryOn::WriteTimeout,
];

/// How and when failed requests are retried.
///
/// Every field has a documented default; [`RetryPolicy::validate`] rejects
/// nonsense with the field named.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Retries after the first attempt. Default 3.
    pub max_retries: u32,
    /// Backoff before the first retry to an already-tried backend. Default 100 ms.
    #[serde(with = "humantime_serde")]
    pub base_delay: Duration,
    /// Growth of the backoff per retry. Default 2.0.
    pub multiplier: f64,
    /// Ceiling of one backoff. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Share of each backoff that is randomised, 0.0–1.0: the wait is
    /// `delay × (1 − jitter × u)` for a uniform `u` in [0, 1). Default 0.5.
    pub jitter: f64,
    /// Error kinds that may be retried. Default: refused, connect timeout, TLS
    /// handshake, reset, closed, read timeout, write timeout. The list is
    /// authoritative: a kind left out is not retried, connect failures
    /// included (a policy may only narrow the ceiling).
    pub retry_on: Vec<RetryOn>,
    /// Upstream statuses that may be retried (safe requests only, before anything
    /// went downstream). Default 502, 503, 504.
    pub retry_on_status: Vec<u16>,
    /// Time limit of one attempt, from its start until response headers.
    /// Default none (the peer's timeouts apply).
    #[serde(with = "humantime_serde")]
    pub per_try_timeout: Option<Duration>,
    /// Time limit of all attempts together, until response headers. Default none.
    #[serde(with = "humantime_serde")]
    pub deadline: Option<Duration>,
    /// Largest request body kept for replay; a longer body can only be sent once.
    /// Default 128 KiB.
    pub replay_buffer_limit: usize,
    /// Honour an upstream's `Retry-After` (capped by the time left). Default true.
    pub honour_retry_after: bool,
    /// Methods safe to retry once request bytes were written. Default: the
    /// idempotent methods of RFC 9110 (GET, HEAD, OPTIONS, TRACE, PUT, DELETE).
    pub safe_methods: Vec<String>,
    /// Treat a request carrying `Idempotency-Key` as safe. Default false.
    pub idempotency_key: bool,
    /// Retry budget: retries allowed as a share of recent requests, so an
    /// outage costs the backends at most `1 + ratio` times the normal load.
    /// Default 0.2. With `budget_min_per_second`, 0 turns the budget off.
    /// (The budget itself lives with the upstream; `detour-breaker` keeps it.)
    pub budget_ratio: f64,
    /// Retries allowed per second whatever the traffic. Default 10. A new
    /// budget also lends 10 s of them once, until its traffic earns as much.
    pub budget_min_per_second: u32,
    /// How far back the budget counts. Default 1 s: the budget follows the
    /// traffic of the moment, so the healthy traffic before an outage cannot
    /// pay for retries during it (see `detour-breaker`'s `RetryBudget`).
    #[serde(with = "humantime_serde")]
    pub budget_window: Duration,
    /// Stop retrying attempts that reached a backend while the upstream's
    /// failure is correlated: every backend failing at a similar, substantial
    /// rate ([`crate::spread`]), where a retry elsewhere cannot help and only
    /// adds load. Attempts that never reached a backend still fail over.
    /// Default true.
    pub correlated_brake: bool,
    /// `Proxy-Status` member names of proxies below this one whose
    /// `retried` parameter is honoured: an answer so marked by one of them
    /// is not retried within the same failover group (one failover to
    /// another priority tier or locality stays allowed), so in a chain only
    /// one hop retries. List only proxies you run: the marker is believed.
    /// Default empty ([`crate::hops`]).
    pub trusted_hops: Vec<String>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            base_delay: Duration::from_millis(100),
            multiplier: 2.0,
            max_delay: Duration::from_secs(5),
            jitter: 0.5,
            retry_on: DEFAULT_RETRY_ON.to_vec(),
            retry_on_status: vec![502, 503, 504],
            per_try_timeout: None,
            deadline: None,
            replay_buffer_limit: 128 * 1024,
            honour_retry_after: true,
            safe_methods: ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            idempotency_key: false,
            budget_ratio: 0.2,
            budget_min_per_second: 10,
            budget_window: Duration::from_secs(1),
            correlated_brake: true,
            trusted_hops: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn none() -> Self {
        RetryPolicy {
            max_retries: 0,
            ..Default::default()
        }
    }

    /// Check every field.
    ///
    /// # Errors
    /// [`InvalidConfig`] naming the first field whose value makes no sense.
    pub fn validate(self) -> Result<Self, InvalidConfig> {
        check_duration("base_delay", self.base_delay, Zero::Allowed)?;
        check_duration("max_delay", self.max_delay, Zero::Allowed)?;
        check_optional_duration("per_try_timeout", self.per_try_timeout, Zero::Refused)?;
        check_optional_duration("deadline", self.deadline, Zero::Refused)?;
        check_duration("budget_window", self.budget_window, Zero::Refused)?;
        let bad = |field, reason: String| Err(InvalidConfig { field, reason });
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return bad(
                "multiplier",
                format!("must be >= 1.0, got {}", self.multiplier),
            );
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return bad(
                "jitter",
                format!("must be within 0.0..=1.0, got {}", self.jitter),
            );
        }
        if self.max_delay < self.base_delay {
            return bad(
                "max_delay",
                format!(
                    "{:?} is shorter than base_delay {:?}",
                    self.max_delay, self.base_delay
                ),
            );
        }
        if let Some(s) = self
            .retry_on_status
            .iter()
            .find(|s| !(100..600).contains(*s))
        {
            return bad("retry_on_status", format!("{s} is not an HTTP status"));
        }
        if !(self.budget_ratio.is_finite() && self.budget_ratio >= 0.0) {
            return bad(
                "budget_ratio",
                format!("must be 0 or more, got {}", self.budget_ratio),
            );
        }
        if let (Some(t), Some(d)) = (self.per_try_timeout, self.deadline) {
            if t > d {
                return bad(
                    "per_try_timeout",
                    format!("{t:?} is longer than the deadline {d:?}"),
                );
            }
        }
        if let Some(h) = self
            .trusted_hops
            .iter()
            .find(|h| !crate::hops::is_member_name(h))
        {
            return bad(
                "trusted_hops",
                format!("{h:?} is not a Proxy-Status member name (letters, digits and -._:/ only)"),
            );
        }
        for m in &self.safe_methods {
            if Method::from_bytes(m.as_bytes()).is_err() {
                return bad("safe_methods", format!("{m:?} is not an HTTP method"));
            }
        }
        Ok(self)
    }

    /// Whether `kind` is in the retriable list (statuses go through
    /// [`retries_status`](Self::retries_status)).
    pub fn retries_kind(&self, kind: ErrorKind) -> bool {
        match kind {
            ErrorKind::HttpStatus(s) => self.retries_status(s),
            k => RetryOn::of(k).is_some_and(|r| self.retry_on.contains(&r)),
        }
    }

    /// Whether an upstream answer with `status` may be retried.
    pub fn retries_status(&self, status: u16) -> bool {
        self.retry_on_status.contains(&status)
    }

    /// Whether a request is safe to send twice: its method is declared safe,
    /// or the policy honours `Idempotency-Key` and the request carries one.
    pub fn is_safe(&self, method: &Method, headers: &HeaderMap) -> bool {
        let method_safe = self.safe_methods.iter().any(|m| m == method.as_str());
        method_safe || (self.idempotency_key && headers.contains_key("idempotency-key"))
    }

    /// The backoff before retry number `retry` (1 for the first retry), with
    /// jitter drawn from `rng`.
    pub fn backoff(&self, retry: u32, rng: &mut fastrand::Rng) -> Duration {
        let exp = retry.saturating_sub(1).min(64) as i32;
        let raw = self.base_delay.as_secs_f64() * self.multiplier.powi(exp);
        let capped = raw.min(self.max_delay.as_secs_f64());
        let jittered = capped * (1.0 - self.jitter * rng.f64());
        Duration::from_secs_f64(jittered.max(0.0))
    }
}

/// The facts about one failed attempt that decide whether it may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptFacts {
    /// What went wrong (an [`ErrorKind::HttpStatus`] for a retriable status).
    pub kind: ErrorKind,
    /// How far the attempt got.
    pub commit: CommitPoint,
    /// Whether the request is safe to deliver twice ([`RetryPolicy::is_safe`]).
    pub safe: bool,
    /// Whether the replay buffer still holds the whole request body.
    pub replay_intact: bool,
    /// Whether the attempt used a pooled (reused) connection.
    pub reused: bool,
}

impl AttemptFacts {
    /// Whether the request may have reached the backend: something was
    /// written and the upstream did not refuse the stream.
    pub fn reached_backend(&self) -> bool {
        !(self.commit.request_unsent()
            || (self.kind.never_reached_upstream() && self.commit < CommitPoint::ResponseStarted))
    }
}

/// Why no retry is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRetry {
    /// Response bytes already went downstream.
    Committed,
    /// Request bytes were written and the request is not safe to repeat.
    NotSafe,
    /// The request body was longer than the replay buffer, or already consumed.
    BodyNotReplayable,
    /// The policy does not list this error kind or status.
    NotRetriable,
    /// The retry budget is spent.
    BudgetExhausted,
    /// The upstream's failure is correlated and the policy's
    /// `correlated_brake` is on.
    CorrelatedFailure,
    /// A hook, or the error itself, said never to retry
    /// ([`RetryHint::Never`](crate::RetryHint::Never)).
    Declined,
    /// The policy's `max_retries` are spent.
    RetriesExhausted,
    /// The deadline passed, or the wait before the next attempt would pass it.
    OutOfTime,
    /// No backend could take the retry.
    NoPeer,
    /// The upstream asked (`Retry-After`) for a wait longer than `max_delay`.
    RetryAfterTooLong,
    /// A trusted proxy below already did the retrying (its `Proxy-Status`
    /// member carries `retried`), and no other failover group is left to
    /// try ([`crate::hops`]).
    HopRetried,
}

impl NoRetry {
    /// A short name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            NoRetry::Committed => "committed",
            NoRetry::NotSafe => "not_safe",
            NoRetry::BodyNotReplayable => "body_not_replayable",
            NoRetry::NotRetriable => "not_retriable",
            NoRetry::BudgetExhausted => "budget_exhausted",
            NoRetry::CorrelatedFailure => "correlated_failure",
            NoRetry::Declined => "declined",
            NoRetry::RetriesExhausted => "retries_exhausted",
            NoRetry::OutOfTime => "out_of_time",
            NoRetry::NoPeer => "no_peer",
            NoRetry::RetryAfterTooLong => "retry_after_too_long",
            NoRetry::HopRetried => "hop_retried",
        }
    }
}

impl std::fmt::Display for NoRetry {
    /// Why, in words: "request already sent and not safe to repeat".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NoRetry::Committed => "response bytes already went to the client",
            NoRetry::NotSafe => "request already sent and not safe to repeat",
            NoRetry::BodyNotReplayable => "request body no longer held for a replay",
            NoRetry::NotRetriable => "the policy does not retry this outcome",
            NoRetry::BudgetExhausted => "retry budget spent",
            NoRetry::CorrelatedFailure => "every backend is failing alike",
            NoRetry::Declined => "a hook or the error said never",
            NoRetry::RetriesExhausted => "max_retries spent",
            NoRetry::OutOfTime => "no time left before the deadline",
            NoRetry::NoPeer => "no backend left for a retry",
            NoRetry::RetryAfterTooLong => "Retry-After beyond max_delay",
            NoRetry::HopRetried => "a trusted proxy below already retried",
        })
    }
}

/// What the limits need to know about a retry the ceiling ([`decide`])
/// allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryLimits {
    /// The failed attempt may have reached its backend
    /// ([`AttemptFacts::reached_backend`]).
    pub reached_backend: bool,
    /// The failure was a stale pooled connection.
    pub stale_connection: bool,
    /// The upstream has backends this request has not tried yet, so the
    /// retry can fail over to one of them.
    pub untried_remain: bool,
    /// The failed attempt's upstream's failure spread now.
    pub spread: Spread,
}

/// Whether the limits allow a retry the ceiling allowed; `withdraw` spends
/// one retry from the upstream's budget and says whether there was one.
///
/// * a stale pooled connection → yes, free (it says nothing about the backend);
/// * an attempt that never reached a backend → yes, free, while untried
///   backends remain: it always fails over; going back to a backend already
///   tried, the budget decides;
/// * correlated failure with `correlated_brake` on → no;
/// * concentrated failure → yes: healthy backends exist and a retry finds
///   them (the retry is still withdrawn when the budget has one, so the
///   budget counts it);
/// * otherwise → the budget decides.
///
/// The retry count and the deadline are the caller's.
///
/// # Errors
/// [`NoRetry::CorrelatedFailure`] or [`NoRetry::BudgetExhausted`]: why the
/// limits refuse.
pub fn admit_retry(
    policy: &RetryPolicy,
    limits: RetryLimits,
    withdraw: impl FnOnce() -> bool,
) -> Result<(), NoRetry> {
    if limits.stale_connection || (!limits.reached_backend && limits.untried_remain) {
        return Ok(());
    }
    if !limits.reached_backend {
        return if withdraw() {
            Ok(())
        } else {
            Err(NoRetry::BudgetExhausted)
        };
    }
    match limits.spread {
        Spread::Correlated if policy.correlated_brake => Err(NoRetry::CorrelatedFailure),
        Spread::Concentrated => {
            let _ = withdraw();
            Ok(())
        }
        _ if withdraw() => Ok(()),
        _ => Err(NoRetry::BudgetExhausted),
    }
}

/// The retry decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Another attempt is allowed.
    Retry {
        /// The failure is a pooled connection the backend had already closed:
        /// it says nothing about the backend, so it is not counted against it.
        stale_connection: bool,
    },
    /// No other attempt, and why.
    Stop(NoRetry),
}

impl RetryDecision {
    /// Whether another attempt is allowed.
    pub fn is_retry(self) -> bool {
        matches!(self, RetryDecision::Retry { .. })
    }
}

/// Decide whether a failed attempt may be tried again. Pure: the same facts and
/// policy always give the same answer.
///
/// * response bytes went downstream → never;
/// * the replay buffer no longer holds the whole body → never;
/// * the request provably did not reach the upstream (not connected, or
///   connected with nothing written) → yes, any method, if `retry_on` lists
///   the kind (connect failures too: the list is authoritative);
/// * an HTTP/2 stream the upstream refused (`StreamRefused`: REFUSED_STREAM,
///   or above a GOAWAY's last stream id) → yes, any method: the protocol says
///   it was not processed, and no `retry_on` entry names it;
/// * otherwise → only a safe request whose body is still replayable, and only
///   for a retriable kind or status.
///
/// A pooled connection that turns out closed or reset before any response byte
/// is a stale connection: it is retried even if the policy does not list the
/// kind (for a request already written, only a safe one), and it is not
/// counted against the backend.
pub fn decide(policy: &RetryPolicy, f: &AttemptFacts) -> RetryDecision {
    if f.commit >= CommitPoint::ResponseForwarded {
        return RetryDecision::Stop(NoRetry::Committed);
    }
    let stale = f.reused
        && f.commit < CommitPoint::ResponseStarted
        && matches!(
            f.kind,
            ErrorKind::ConnectionClosed | ErrorKind::ConnectionReset
        );
    if !f.replay_intact {
        // Even an unsent request cannot go again once client bytes it pulled
        // are gone: the retry would carry a truncated body.
        return RetryDecision::Stop(NoRetry::BodyNotReplayable);
    }
    // An HTTP/2 stream the upstream refused (REFUSED_STREAM, or above a
    // GOAWAY's last stream id) was provably not processed, however far the
    // bytes got.
    let refused = f.kind.never_reached_upstream() && f.commit < CommitPoint::ResponseStarted;
    if f.commit.request_unsent() || refused {
        // Nothing was written: the upstream cannot have acted on the request.
        if stale || policy.retries_kind(f.kind) || f.kind == ErrorKind::StreamRefused {
            return RetryDecision::Retry {
                stale_connection: stale,
            };
        }
        return RetryDecision::Stop(NoRetry::NotRetriable);
    }
    if !f.safe {
        return RetryDecision::Stop(NoRetry::NotSafe);
    }
    if stale || policy.retries_kind(f.kind) {
        RetryDecision::Retry {
            stale_connection: stale,
        }
    } else {
        RetryDecision::Stop(NoRetry::NotRetriable)
    }
}

/// Parse a `Retry-After` value (delta-seconds or an HTTP date) into a wait
/// from `now` (wall clock, used only for the date form).
pub fn parse_retry_after(
    value: &http::HeaderValue,
    now: std::time::SystemTime,
) -> Option<Duration> {
    let s = value.to_str().ok()?.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(s).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use CommitPoint::*;

    #[test]
    fn safety_of_methods_and_idempotency_key() {
        let mut headers = HeaderMap::new();
        let p = RetryPolicy::default();
        assert!(p.is_safe(&Method::GET, &headers));
        assert!(p.is_safe(&Method::PUT, &headers));
        assert!(!p.is_safe(&Method::POST, &headers));
        headers.insert("idempotency-key", "abc".parse().unwrap());
        assert!(!p.is_safe(&Method::POST, &headers));
        let p = RetryPolicy {
            idempotency_key: true,
            ..RetryPolicy::default()
        }
        .validate()
        .unwrap();
        assert!(p.is_safe(&Method::POST, &headers));
        let p = RetryPolicy {
            safe_methods: vec!["POST".into(), "PURGE".into()],
            ..RetryPolicy::default()
        }
        .validate()
        .unwrap();
        assert!(p.is_safe(&Method::POST, &HeaderMap::new()));
        assert!(!p.is_safe(&Method::GET, &HeaderMap::new()));
        assert!(p.is_safe(&Method::from_bytes(b"PURGE").unwrap(), &HeaderMap::new()));
    }

    #[test]
    fn backoff_grows_caps_and_jitters_within_bounds() {
        let p = RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        let mut rng = fastrand::Rng::with_seed(7);
        let d: Vec<_> = (1..=8)
            .map(|r| p.backoff(r, &mut rng).as_millis())
            .collect();
        assert_eq!(d, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        let p = RetryPolicy::default();
        for r in 1..10 {
            let full = (100.0 * 2f64.powi(r as i32 - 1)).min(5000.0);
            let got = p.backoff(r, &mut rng).as_secs_f64() * 1000.0;
            assert!(got <= full + 1e-6 && got >= full * 0.5 - 1e-6, "{r}: {got}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let e = RetryPolicy {
            per_try_timeout: Some(Duration::from_secs(5)),
            deadline: Some(Duration::from_secs(1)),
            ..RetryPolicy::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "per_try_timeout");
        let e = RetryPolicy {
            multiplier: 0.5,
            ..RetryPolicy::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "multiplier");
        let e = RetryPolicy {
            retry_on_status: vec![999],
            ..RetryPolicy::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "retry_on_status");
    }

    #[test]
    fn deserializes_with_humantime_and_rejects_unknown_keys() {
        let p: RetryPolicy = toml::from_str(
            r#"max_retries = 2
               base_delay = "50ms"
               retry_on = ["connect_refused"]
               deadline = "2s""#,
        )
        .unwrap();
        let p = p.validate().unwrap();
        assert_eq!(p.max_retries, 2);
        assert_eq!(p.base_delay, Duration::from_millis(50));
        assert_eq!(p.deadline, Some(Duration::from_secs(2)));
        assert!(p.retries_kind(ErrorKind::ConnectRefused));
        assert!(!p.retries_kind(ErrorKind::ConnectionReset));
        assert!(toml::from_str::<RetryPolicy>("max_retrys = 2").is_err());
    }

    #[test]
    fn retry_after_forms() {
        let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let v = http::HeaderValue::from_static("7");
        assert_eq!(parse_retry_after(&v, now), Some(Duration::from_secs(7)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        let v = http::HeaderValue::from_str(&date).unwrap();
        assert_eq!(parse_retry_after(&v, now), Some(Duration::from_secs(30)));
        let v = http::HeaderValue::from_static("soon");
        assert_eq!(parse_retry_after(&v, now), None);
    }

    #[test]
    fn the_limits_brake_correlated_failure_and_free_concentrated_failover() {
        let policy = RetryPolicy::default();
        let limits = |reached, stale, spread| RetryLimits {
            reached_backend: reached,
            stale_connection: stale,
            untried_remain: true,
            spread,
        };
        let spent = || false;
        let left = || true;
        // The budget decides in the normal state.
        assert_eq!(
            admit_retry(&policy, limits(true, false, Spread::Normal), left),
            Ok(())
        );
        assert_eq!(
            admit_retry(&policy, limits(true, false, Spread::Normal), spent),
            Err(NoRetry::BudgetExhausted)
        );
        // Concentrated: healthy backends exist; the budget does not stop it.
        assert_eq!(
            admit_retry(&policy, limits(true, false, Spread::Concentrated), spent),
            Ok(())
        );
        // Correlated: no retry of an attempt that reached a backend...
        assert_eq!(
            admit_retry(&policy, limits(true, false, Spread::Correlated), left),
            Err(NoRetry::CorrelatedFailure)
        );
        // ...but one that never reached it always fails over, and a stale
        // connection is free.
        for spread in [Spread::Normal, Spread::Concentrated, Spread::Correlated] {
            assert_eq!(
                admit_retry(&policy, limits(false, false, spread), spent),
                Ok(())
            );
            assert_eq!(
                admit_retry(&policy, limits(true, true, spread), spent),
                Ok(())
            );
        }
        // Back to a backend already tried, an unsent attempt pays the budget
        // (and the brake still does not stop it).
        let back = RetryLimits {
            untried_remain: false,
            ..limits(false, false, Spread::Correlated)
        };
        assert_eq!(admit_retry(&policy, back, left), Ok(()));
        assert_eq!(
            admit_retry(&policy, back, spent),
            Err(NoRetry::BudgetExhausted)
        );
        // The brake can be turned off: the budget decides again.
        let off = RetryPolicy {
            correlated_brake: false,
            ..RetryPolicy::default()
        };
        assert_eq!(
            admit_retry(&off, limits(true, false, Spread::Correlated), left),
            Ok(())
        );
        assert_eq!(
            admit_retry(&off, limits(true, false, Spread::Correlated), spent),
            Err(NoRetry::BudgetExhausted)
        );
    }

    #[test]
    fn an_unsent_or_refused_attempt_never_reached_the_backend() {
        let facts = |kind, commit| AttemptFacts {
            kind,
            commit,
            safe: true,
            replay_intact: true,
            reused: false,
        };
        assert!(!facts(ErrorKind::ConnectRefused, NotConnected).reached_backend());
        assert!(!facts(ErrorKind::ConnectionReset, Connected).reached_backend());
        assert!(facts(ErrorKind::ConnectionReset, RequestSent).reached_backend());
        assert!(facts(ErrorKind::HttpStatus(503), ResponseStarted).reached_backend());
    }
}
