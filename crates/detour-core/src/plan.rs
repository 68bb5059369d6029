//! The attempt planner: every decision about a request's attempts, made
//! without I/O and without reading a clock.
//!
//! The engine drives a [`Planner`] through each attempt:
//!
//! 1. [`begin`](Planner::begin) an attempt to the peer a hook chose;
//! 2. connect, send and await — the engine's part;
//! 3. [`settle`](Planner::settle) the attempt with what happened: the
//!    planner says whose failure it was ([`OutcomeClass`]) and the engine
//!    reports that to the backend's state and the observers;
//! 4. ask [`next`](Planner::next) whether another attempt may follow (the
//!    safety ceiling of [`decide`], the hooks' hint, stale connections,
//!    `max_retries`, the deadline, the retry budget, how failure is spread
//!    over the upstream, and a trusted proxy below that already retried —
//!    [`crate::hops`]);
//! 5. when it may, choose the next peer and [`schedule`](Planner::schedule)
//!    it: failing over is immediate, going back to a backend already tried
//!    waits a backoff with jitter (or the upstream's `Retry-After`, within
//!    `max_delay`), and no wait runs past the deadline.
//!
//! Attempts have identities ([`AttemptId`]) and may be in flight together
//! (hedging): outcomes settle in any order, and an attempt the engine
//! [`cancel`](Planner::cancel)s has an outcome of its own that is no
//! backend's failure. Every step is written to the request's attempt history
//! ([`Planner::attempts`]), which hooks and the access log read through
//! [`Session::attempts`](crate::Session::attempts): the one record of where a
//! request went and why.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::commit::CommitPoint;
use crate::error::{ErrorKind, RetryHint};
use crate::observe::OutcomeClass;
use crate::peer::RetryBudgetGate;
use crate::pick::{Grouping, Pick};
use crate::retry::{admit_retry, decide, AttemptFacts, NoRetry, RetryLimits, RetryPolicy};
use crate::spread::Spread;

/// One attempt of a request: 1 for the first, in the order they began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptId(u32);

impl AttemptId {
    /// The attempt's number, 1 for the first.
    pub fn number(self) -> u32 {
        self.0
    }
}

/// Why an attempt went where it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Choice {
    /// The request's first attempt.
    First,
    /// A backend this request had not tried, after a failure.
    Failover,
    /// A backend this request had already tried, again.
    Retry,
    /// A hedge: another backend, while an earlier attempt is still in
    /// flight ([`crate::hedge`]).
    Hedge,
}

impl Choice {
    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Choice::First => "first",
            Choice::Failover => "failover",
            Choice::Retry => "retry",
            Choice::Hedge => "hedge",
        }
    }
}

/// What happened to an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// A response head arrived with this status (for gRPC, the status its
    /// `grpc-status` maps to).
    Answered(u16),
    /// The attempt failed with `kind`, having got as far as `commit`.
    Failed {
        /// What went wrong.
        kind: ErrorKind,
        /// How far the attempt got.
        commit: CommitPoint,
    },
    /// The engine stopped the attempt itself (another attempt won, or the
    /// request ended): nobody's failure, never charged to a backend.
    Cancelled,
}

impl Outcome {
    /// How far the attempt got (a response head is
    /// [`ResponseStarted`](CommitPoint::ResponseStarted)).
    pub fn commit(self) -> Option<CommitPoint> {
        match self {
            Outcome::Answered(_) => Some(CommitPoint::ResponseStarted),
            Outcome::Failed { commit, .. } => Some(commit),
            Outcome::Cancelled => None,
        }
    }

    /// The outcome as an error kind: a status is
    /// [`HttpStatus`](ErrorKind::HttpStatus); `None` when cancelled.
    pub fn kind(self) -> Option<ErrorKind> {
        match self {
            Outcome::Answered(status) => Some(ErrorKind::HttpStatus(status)),
            Outcome::Failed { kind, .. } => Some(kind),
            Outcome::Cancelled => None,
        }
    }
}

/// What was decided once an attempt settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Its response goes to the client as it is.
    Deliver,
    /// Another attempt follows.
    Retry,
    /// No other attempt follows, for this reason; the client gets this
    /// attempt's response (a retriable status, passed on as it came) or an
    /// error made from its failure.
    Stop(NoRetry),
    /// It failed while another attempt of the request (a hedge) was still
    /// in flight: that one carries on.
    Superseded,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Deliver => f.write_str("delivered"),
            Decision::Retry => f.write_str("retried"),
            Decision::Stop(why) => write!(f, "not retried: {why}"),
            Decision::Superseded => f.write_str("superseded by an attempt in flight"),
        }
    }
}

/// One attempt in a request's history.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Attempt {
    /// Which attempt.
    pub id: AttemptId,
    /// The address it went to (and whose backend its outcome was charged to).
    pub peer: SocketAddr,
    /// Why it went there.
    pub choice: Choice,
    /// Why the balancer chose that backend, when it said.
    pub pick: Option<Pick>,
    /// When it began.
    pub started: Instant,
    /// When it settled; `None` while in flight.
    pub ended: Option<Instant>,
    /// Whether it used a pooled connection.
    pub reused: bool,
    /// What happened; `None` while in flight.
    pub outcome: Option<Outcome>,
    /// The failure was a pooled connection the backend had already closed:
    /// no one's failure, retried on a fresh connection without counting.
    pub stale: bool,
    /// Its answer carries a trusted proxy's `retried` marker: a hop below
    /// already did the retrying ([`crate::hops`]).
    pub hop_retried: bool,
    /// What was decided on it; `None` until decided.
    pub decision: Option<Decision>,
    /// The wait before the attempt that followed it.
    pub wait: Duration,
    /// The safety ceiling's answer on it (`Ok`: another attempt is allowed
    /// at all), kept between settling and deciding.
    ceiling: Result<(), Decision>,
}

impl fmt::Display for Attempt {
    /// `#2 10.0.0.5:8080 failover connection_refused@not_connected 0.3ms
    /// retried wait=0ms`: one attempt on one line (the time is how long it
    /// took, left out while it is in flight).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} {} {}", self.id.0, self.peer, self.choice.as_str())?;
        if let Some(pick) = self.pick.filter(|p| !p.is_plain()) {
            write!(f, "({pick})")?;
        }
        match self.outcome {
            None => f.write_str(" in_flight")?,
            Some(Outcome::Answered(status)) => write!(f, " {status}")?,
            Some(Outcome::Failed { kind, commit }) => {
                write!(f, " {}@{}", kind.proxy_status_type(), commit.as_str())?;
            }
            Some(Outcome::Cancelled) => f.write_str(" cancelled")?,
        }
        if let Some(ended) = self.ended {
            let took = ended.saturating_duration_since(self.started);
            write!(f, " {:.1}ms", took.as_secs_f64() * 1e3)?;
        }
        if self.stale {
            f.write_str(" stale")?;
        }
        if self.hop_retried {
            f.write_str(" hop_retried")?;
        }
        match self.decision {
            None | Some(Decision::Deliver) => {}
            Some(Decision::Retry) => write!(f, " retried wait={}ms", self.wait.as_millis())?,
            Some(Decision::Stop(why)) => write!(f, " stop={}", why.as_str())?,
            Some(Decision::Superseded) => f.write_str(" superseded")?,
        }
        Ok(())
    }
}

/// What the engine knows about an attempt when it settles.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// What happened.
    pub outcome: Outcome,
    /// Whether it used a pooled connection.
    pub reused: bool,
    /// Whether the replay buffer still holds the whole request body.
    pub replay_intact: bool,
    /// The hooks' word: [`RetryHint::Never`] when the error says never, or
    /// `should_retry_response` declined the answer.
    pub hint: RetryHint,
    /// For a failure: whether the backend caused it
    /// ([`Error::caused_by_backend`](crate::Error::caused_by_backend)).
    pub by_backend: bool,
    /// The wait the answer's `Retry-After` asks for.
    pub retry_after: Option<Duration>,
    /// The answer carries a trusted proxy's `retried` marker
    /// ([`crate::hops::marked_retried`]).
    pub hop_retried: bool,
}

impl Report {
    /// A report of `outcome` on a new connection, with the body intact, no
    /// hint, caused by the backend, and no `Retry-After`.
    pub fn new(outcome: Outcome) -> Self {
        Report {
            outcome,
            reused: false,
            replay_intact: true,
            hint: RetryHint::Default,
            by_backend: true,
            retry_after: None,
            hop_retried: false,
        }
    }
}

/// What the upstream's limits need once an attempt was reported: read after
/// the report, so that it counts.
#[derive(Clone, Copy)]
pub struct Limits<'a> {
    /// How failure is spread over the attempt's upstream now.
    pub spread: Spread,
    /// How many backends the upstream has, when it keeps count.
    pub members: Option<u32>,
    /// The upstream's retry budget, when it has one.
    pub budget: Option<&'a dyn RetryBudgetGate>,
}

impl Limits<'_> {
    /// No spread, no count, no budget.
    pub fn none() -> Self {
        Limits {
            spread: Spread::Normal,
            members: None,
            budget: None,
        }
    }
}

/// The next attempt, as [`Planner::schedule`] set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheduled {
    /// Failover (a backend not tried yet) or retry (one already tried).
    pub choice: Choice,
    /// How long to wait before it.
    pub wait: Duration,
    /// Whether it counts as a retry (a stale connection's does not).
    pub counted: bool,
}

/// A request's attempts: the first inline (most requests make one, and
/// then allocate nothing for it), the rest on the heap.
#[derive(Debug, Clone, Default)]
// Unboxed on purpose: boxing the first attempt would cost every request an
// allocation.
#[allow(clippy::large_enum_variant)]
enum History {
    #[default]
    Empty,
    One(Attempt),
    Many(Vec<Attempt>),
}

impl History {
    fn as_slice(&self) -> &[Attempt] {
        match self {
            History::Empty => &[],
            History::One(a) => std::slice::from_ref(a),
            History::Many(v) => v,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [Attempt] {
        match self {
            History::Empty => &mut [],
            History::One(a) => std::slice::from_mut(a),
            History::Many(v) => v,
        }
    }

    fn push(&mut self, a: Attempt) {
        match self {
            History::Empty => *self = History::One(a),
            History::Many(v) => v.push(a),
            History::One(_) => {
                if let History::One(first) = std::mem::take(self) {
                    *self = History::Many(vec![first, a]);
                }
            }
        }
    }
}

/// The distinct addresses a request has tried, oldest first: the first few
/// inline, the rest on the heap.
#[derive(Debug, Clone)]
enum Tried {
    Inline(u8, [SocketAddr; INLINE_TRIED]),
    Heap(Vec<SocketAddr>),
}

const INLINE_TRIED: usize = 3;

impl Default for Tried {
    fn default() -> Self {
        Tried::Inline(0, [SocketAddr::from(([0, 0, 0, 0], 0)); INLINE_TRIED])
    }
}

impl Tried {
    fn as_slice(&self) -> &[SocketAddr] {
        match self {
            Tried::Inline(len, addrs) => &addrs[..usize::from(*len)],
            Tried::Heap(v) => v,
        }
    }

    /// Add `addr` unless it is there already.
    fn insert(&mut self, addr: SocketAddr) {
        if self.as_slice().contains(&addr) {
            return;
        }
        match self {
            Tried::Inline(len, addrs) if usize::from(*len) < INLINE_TRIED => {
                addrs[usize::from(*len)] = addr;
                *len += 1;
            }
            Tried::Inline(_, addrs) => {
                let mut v = addrs.to_vec();
                v.push(addr);
                *self = Tried::Heap(v);
            }
            Tried::Heap(v) => v.push(addr),
        }
    }
}

/// Every decision about one request's attempts; see the [module
/// docs](self).
///
/// Synchronous, with no I/O and no clock reads: the engine passes every
/// time in. A planner starts unarmed (no policy: nothing is retried) until
/// the engine [`arm`](Planner::arm)s it with the request's policy.
#[derive(Debug, Default)]
pub struct Planner {
    policy: Option<Arc<RetryPolicy>>,
    safe: bool,
    /// The deadline as set (by the policy, gRPC or hooks), moved on by the
    /// time attempts spent waiting for the client.
    deadline: Option<Instant>,
    history: History,
    tried: Tried,
    body_replayable: bool,
    /// The failover group the next attempts must avoid: a trusted hop
    /// below retried there already.
    avoid_group: Option<u16>,
}

impl Planner {
    /// An unarmed planner, as a new [`Session`](crate::Session) holds.
    pub fn new() -> Self {
        Planner {
            body_replayable: true,
            ..Planner::default()
        }
    }

    /// Arm the planner with the request's `policy`, and whether the request
    /// is safe to deliver twice ([`RetryPolicy::is_safe`]).
    pub fn arm(&mut self, policy: Arc<RetryPolicy>, safe: bool) {
        self.policy = Some(policy);
        self.safe = safe;
    }

    /// The request's retry policy, once armed.
    pub fn policy(&self) -> Option<&RetryPolicy> {
        self.policy.as_deref()
    }

    /// Whether the request is safe to deliver twice.
    pub fn is_safe(&self) -> bool {
        self.safe
    }

    /// Whether the request body can still be sent again in full.
    pub fn body_replayable(&self) -> bool {
        self.body_replayable
    }

    /// The deadline of the attempts, moved on by the time they spent
    /// waiting for the client's body.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left at `now` before the deadline (`None`: no deadline).
    pub fn time_left(&self, now: Instant) -> Option<Duration> {
        self.deadline().map(|d| d.saturating_duration_since(now))
    }

    /// Set or shorten the deadline: a later one than the current is ignored.
    pub fn narrow_deadline(&mut self, at: Instant) {
        self.deadline = Some(self.deadline.map_or(at, |d| d.min(at)));
    }

    /// Move the deadline on by time an attempt spent waiting for the client
    /// (its own limits govern that time, not the backend's).
    pub fn add_client_time(&mut self, waited: Duration) {
        self.deadline = self.deadline.map(|d| d + waited);
    }

    /// The attempts so far, oldest first.
    pub fn attempts(&self) -> &[Attempt] {
        self.history.as_slice()
    }

    /// One attempt.
    pub fn attempt(&self, id: AttemptId) -> Option<&Attempt> {
        self.attempts().get(id.0 as usize - 1)
    }

    /// The attempt begun last.
    pub fn current(&self) -> Option<&Attempt> {
        self.attempts().last()
    }

    /// The distinct addresses tried, oldest first.
    pub fn tried(&self) -> &[SocketAddr] {
        self.tried.as_slice()
    }

    /// Whether `addr` was tried.
    pub fn was_tried(&self, addr: SocketAddr) -> bool {
        self.tried().contains(&addr)
    }

    /// The error of the last attempt that settled with one: a failure, or a
    /// status the policy retries.
    pub fn last_error(&self) -> Option<ErrorKind> {
        let policy = self.policy()?;
        self.attempts().iter().rev().find_map(|a| match a.outcome? {
            Outcome::Failed { kind, .. } => Some(kind),
            Outcome::Answered(s) if policy.retries_status(s) => Some(ErrorKind::HttpStatus(s)),
            _ => None,
        })
    }

    /// Attempts in flight (begun, not settled).
    pub fn in_flight(&self) -> usize {
        self.attempts()
            .iter()
            .filter(|a| a.outcome.is_none())
            .count()
    }

    /// Whether the next attempt must open a fresh connection: the last one
    /// settled found its pooled connection stale.
    pub fn fresh_connection(&self) -> bool {
        self.attempts()
            .iter()
            .rev()
            .find(|a| a.outcome.is_some())
            .is_some_and(|a| a.stale)
    }

    /// Begin an attempt to `peer` at `now`.
    pub fn begin(&mut self, peer: SocketAddr, now: Instant) -> AttemptId {
        self.begin_picked(peer, None, now)
    }

    /// [`begin`](Self::begin), with why the balancer chose `peer`.
    pub fn begin_picked(
        &mut self,
        peer: SocketAddr,
        pick: Option<Pick>,
        now: Instant,
    ) -> AttemptId {
        let choice = match (self.attempts().is_empty(), self.was_tried(peer)) {
            (true, _) => Choice::First,
            (false, true) => Choice::Retry,
            (false, false) => Choice::Failover,
        };
        self.push(peer, choice, pick, now)
    }

    /// Begin a hedge to `peer` at `now`, while an earlier attempt is still
    /// in flight. Counted against `max_retries` like any attempt.
    pub fn begin_hedge(&mut self, peer: SocketAddr, pick: Option<Pick>, now: Instant) -> AttemptId {
        self.push(peer, Choice::Hedge, pick, now)
    }

    /// Attempt `id` failed while another was in flight, which carries on:
    /// no decision follows from it.
    pub fn supersede(&mut self, id: AttemptId) {
        if let Some(rec) = self.record(id) {
            rec.decision = Some(Decision::Superseded);
        }
    }

    fn push(
        &mut self,
        peer: SocketAddr,
        choice: Choice,
        pick: Option<Pick>,
        now: Instant,
    ) -> AttemptId {
        let len = self.attempts().len();
        let id = AttemptId(u32::try_from(len + 1).unwrap_or(u32::MAX));
        self.tried.insert(peer);
        self.history.push(Attempt {
            id,
            peer,
            choice,
            pick,
            started: now,
            ended: None,
            reused: false,
            outcome: None,
            stale: false,
            hop_retried: false,
            decision: None,
            wait: Duration::ZERO,
            ceiling: Err(Decision::Deliver),
        });
        id
    }

    fn record(&mut self, id: AttemptId) -> Option<&mut Attempt> {
        self.history
            .as_mut_slice()
            .get_mut((id.0 as usize).checked_sub(1)?)
    }

    /// Settle attempt `id` with `report` at `now`: what happened is written
    /// to the history, and the answer is whose failure it was — the class
    /// the engine reports to the backend's state and the observers (`None`:
    /// report nothing, it was cancelled). Settling twice keeps the first.
    pub fn settle(&mut self, id: AttemptId, report: Report, now: Instant) -> Option<OutcomeClass> {
        if !report.replay_intact {
            self.body_replayable = false;
        }
        let (class, ceiling, stale) = judge(self.policy.as_deref(), self.safe, &report);
        let rec = self.record(id)?;
        if rec.outcome.is_some() {
            return None;
        }
        rec.ended = Some(now);
        rec.reused = report.reused;
        rec.outcome = Some(report.outcome);
        rec.ceiling = ceiling;
        rec.stale = stale;
        rec.hop_retried = report.hop_retried;
        class
    }

    /// The engine cancelled attempt `id` at `now` (another won, or the
    /// request ended): its outcome is [`Outcome::Cancelled`], charged to no
    /// one.
    pub fn cancel(&mut self, id: AttemptId, now: Instant) {
        if let Some(rec) = self.record(id) {
            if rec.outcome.is_none() {
                rec.ended = Some(now);
                rec.outcome = Some(Outcome::Cancelled);
            }
        }
    }

    /// Cancel every attempt still in flight at `now` (the request ended).
    pub fn cancel_in_flight(&mut self, now: Instant) {
        for rec in self.history.as_mut_slice() {
            if rec.outcome.is_none() {
                rec.ended = Some(now);
                rec.outcome = Some(Outcome::Cancelled);
            }
        }
    }

    /// Whether another attempt may follow settled attempt `id`, with the
    /// upstream's `limits` read after its report, at `now`. The decision is
    /// written to the history; [`Decision::Retry`] means "choose a peer and
    /// [`schedule`](Self::schedule) it".
    pub fn next(&mut self, id: AttemptId, limits: Limits<'_>, now: Instant) -> Decision {
        let decision = self.judge_next(id, limits, now);
        let mut avoid = None;
        if let Some(rec) = self.record(id) {
            rec.decision = Some(decision);
            if rec.hop_retried && decision == Decision::Retry {
                avoid = rec.pick.map(|p| p.group);
            }
        }
        if avoid.is_some() {
            self.avoid_group = avoid;
        }
        decision
    }

    /// The failover group (a [`Pick::group`]) the next attempt must come
    /// from outside of, when a trusted hop below already retried within it
    /// ([`crate::hops`]). A balancer that cannot honour it (panic mode)
    /// chooses nothing rather than a backend inside it.
    pub fn avoid_group(&self) -> Option<u16> {
        self.avoid_group
    }

    /// The value of this hop's `retried` parameter in `Proxy-Status`
    /// ([`crate::hops`]): the retries made, when retrying this request was
    /// this hop's job and it is done — it retried, or a limit of its own
    /// stopped it (budget, `max_retries`, deadline, the correlated brake, no
    /// backend left, a hop below that already retried). `None` when the
    /// planner is unarmed, its policy never retries (`max_retries = 0`), or
    /// the policy does not retry the outcome.
    pub fn retried_here(&self) -> Option<u32> {
        if self.policy()?.max_retries == 0 {
            return None;
        }
        let attempts = self.attempts();
        // A stale pooled connection's retry is free: the request never
        // reached that backend. Hedges are not retries.
        let stale = attempts.iter().filter(|a| a.stale).count();
        let retries = attempts
            .iter()
            .filter(|a| matches!(a.choice, Choice::Failover | Choice::Retry))
            .count()
            .saturating_sub(stale);
        if retries > 0 {
            return Some(u32::try_from(retries).unwrap_or(u32::MAX));
        }
        // The last attempt with a decision of its own: a superseded or
        // cancelled hedge says nothing about what this hop decided.
        let last = attempts
            .iter()
            .rev()
            .find(|a| !matches!(a.decision, None | Some(Decision::Superseded)))?;
        match last.decision? {
            Decision::Stop(
                NoRetry::BudgetExhausted
                | NoRetry::CorrelatedFailure
                | NoRetry::RetriesExhausted
                | NoRetry::OutOfTime
                | NoRetry::NoPeer
                | NoRetry::RetryAfterTooLong
                | NoRetry::HopRetried,
            ) => Some(0),
            _ => None,
        }
    }

    fn judge_next(&self, id: AttemptId, limits: Limits<'_>, now: Instant) -> Decision {
        let (Some(policy), Some(rec)) = (self.policy(), self.attempt(id)) else {
            return Decision::Stop(NoRetry::NotRetriable);
        };
        if let Err(d) = rec.ceiling {
            return d;
        }
        if rec.hop_retried {
            // A trusted hop below retried: at most one failover, and only to
            // another failover group.
            let again = self.attempts().iter().any(|a| a.id != id && a.hop_retried);
            let grouped = rec.pick.is_some_and(|p| p.grouping != Grouping::None);
            if again || !grouped {
                return Decision::Stop(NoRetry::HopRetried);
            }
        }
        let begun = u32::try_from(self.attempts().len()).unwrap_or(u32::MAX);
        // Stale-connection retries are free.
        let stale = self.attempts().iter().filter(|a| a.stale).count();
        let stale = u32::try_from(stale).unwrap_or(u32::MAX);
        if begun.saturating_sub(1).saturating_sub(stale) >= policy.max_retries {
            return Decision::Stop(NoRetry::RetriesExhausted);
        }
        if self.time_left(now).is_some_and(|t| t.is_zero()) {
            return Decision::Stop(NoRetry::OutOfTime);
        }
        let facts = rec.outcome.and_then(|o| Some((o.kind()?, o.commit()?)));
        let reached = facts.is_none_or(|(kind, commit)| {
            AttemptFacts {
                kind,
                commit,
                safe: self.safe,
                replay_intact: true,
                reused: rec.reused,
            }
            .reached_backend()
        });
        let untried_remain = limits
            .members
            .is_none_or(|n| (self.tried().len() as u64) < u64::from(n));
        let retry_limits = RetryLimits {
            reached_backend: reached,
            stale_connection: rec.stale,
            untried_remain,
            spread: limits.spread,
        };
        let at = rec.ended.unwrap_or(now);
        let withdraw = || limits.budget.is_none_or(|b| b.try_withdraw(at));
        match admit_retry(policy, retry_limits, withdraw) {
            Ok(()) => Decision::Retry,
            Err(why) => Decision::Stop(why),
        }
    }

    /// No peer could be chosen for the retry [`next`](Self::next) allowed
    /// after attempt `id`.
    pub fn no_peer(&mut self, id: AttemptId) {
        if let Some(rec) = self.record(id) {
            rec.decision = Some(Decision::Stop(NoRetry::NoPeer));
        }
    }

    /// Schedule the retry after attempt `id` to `next_peer` at `now`: how
    /// long to wait first, or why it cannot happen after all (a
    /// `Retry-After` beyond `max_delay`, a wait past the deadline). The wait
    /// and any change of decision are written to the history.
    ///
    /// # Errors
    /// [`NoRetry::RetryAfterTooLong`] or [`NoRetry::OutOfTime`]: the retry
    /// cannot happen after all (also [`NoRetry::NotRetriable`] for an
    /// unarmed planner).
    pub fn schedule(
        &mut self,
        id: AttemptId,
        next_peer: SocketAddr,
        retry_after: Option<Duration>,
        now: Instant,
    ) -> Result<Scheduled, NoRetry> {
        let result = self.plan_wait(id, next_peer, retry_after, now);
        if let Some(rec) = self.record(id) {
            match result {
                Ok(s) => rec.wait = s.wait,
                Err(why) => rec.decision = Some(Decision::Stop(why)),
            }
        }
        result
    }

    fn plan_wait(
        &mut self,
        id: AttemptId,
        next_peer: SocketAddr,
        retry_after: Option<Duration>,
        now: Instant,
    ) -> Result<Scheduled, NoRetry> {
        let stale = self.attempt(id).is_some_and(|a| a.stale);
        let again = self.was_tried(next_peer);
        let begun = u32::try_from(self.attempts().len()).unwrap_or(u32::MAX);
        let Some(policy) = self.policy.as_deref() else {
            return Err(NoRetry::NotRetriable);
        };
        let mut wait = Duration::ZERO;
        if again && !stale {
            wait = policy.backoff(begun, &mut fastrand::Rng::new());
            if let Some(ra) = retry_after.filter(|_| policy.honour_retry_after) {
                // Honoured, but never past max_delay (nor the deadline below):
                // a longer wish ends the retries and passes the answer on.
                if ra > policy.max_delay {
                    return Err(NoRetry::RetryAfterTooLong);
                }
                wait = wait.max(ra);
            }
        }
        let left = self.deadline.map(|d| d.saturating_duration_since(now));
        if left.is_some_and(|left| wait >= left) {
            return Err(NoRetry::OutOfTime);
        }
        let choice = if again {
            Choice::Retry
        } else {
            Choice::Failover
        };
        Ok(Scheduled {
            choice,
            wait,
            counted: !stale,
        })
    }
}

impl fmt::Display for Planner {
    /// The history, one attempt after another, separated by `; `.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.attempts().iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{a}")?;
        }
        Ok(())
    }
}

/// Whose failure a settled attempt was, the safety ceiling's answer on it,
/// and whether it was a stale pooled connection.
fn judge(
    policy: Option<&RetryPolicy>,
    safe: bool,
    report: &Report,
) -> (Option<OutcomeClass>, Result<(), Decision>, bool) {
    let Some(policy) = policy else {
        let class = report.outcome.kind().map(OutcomeClass::Local);
        return (class, Err(Decision::Stop(NoRetry::NotRetriable)), false);
    };
    let (kind, commit) = match report.outcome {
        Outcome::Cancelled => return (None, Err(Decision::Stop(NoRetry::Declined)), false),
        Outcome::Answered(status) => {
            // Every 5xx is reported as the backend's failure, and so is a
            // status the policy retries; breakers and outlier detection
            // filter by their own status lists.
            let listed = policy.retries_status(status);
            let class = if listed || status >= 500 {
                OutcomeClass::BackendFailure(ErrorKind::HttpStatus(status))
            } else {
                OutcomeClass::Success
            };
            if report.hint == RetryHint::Never {
                return (Some(class), Err(Decision::Deliver), false);
            }
            (ErrorKind::HttpStatus(status), CommitPoint::ResponseStarted)
        }
        Outcome::Failed { kind, .. } if report.hint == RetryHint::Never => {
            let class = if report.by_backend {
                OutcomeClass::BackendFailure(kind)
            } else {
                OutcomeClass::Local(kind)
            };
            return (Some(class), Err(Decision::Stop(NoRetry::Declined)), false);
        }
        Outcome::Failed { kind, commit } => (kind, commit),
    };
    let facts = AttemptFacts {
        kind,
        commit,
        safe,
        replay_intact: report.replay_intact,
        reused: report.reused,
    };
    let decided = decide(policy, &facts);
    let stale = matches!(
        decided,
        crate::RetryDecision::Retry {
            stale_connection: true
        }
    );
    let class = match report.outcome {
        Outcome::Answered(status) if policy.retries_status(status) || status >= 500 => {
            OutcomeClass::BackendFailure(kind)
        }
        Outcome::Answered(_) => OutcomeClass::Success,
        _ if stale || !report.by_backend => OutcomeClass::Local(kind),
        _ => OutcomeClass::BackendFailure(kind),
    };
    let ceiling = match decided {
        crate::RetryDecision::Retry { .. } => Ok(()),
        crate::RetryDecision::Stop(why) => Err(Decision::Stop(why)),
    };
    (Some(class), ceiling, stale)
}

#[cfg(test)]
mod tests;
