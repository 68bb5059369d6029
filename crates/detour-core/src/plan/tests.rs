//! The planner against the design's failure-semantics table, row by row,
//! with every expected answer written out by hand.

use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::retry::RetryOn;
use CommitPoint::*;
use ErrorKind::*;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn armed(policy: RetryPolicy, safe: bool) -> Planner {
    let mut p = Planner::new();
    p.arm(Arc::new(policy), safe);
    p
}

fn failed(kind: ErrorKind, commit: CommitPoint) -> Report {
    Report::new(Outcome::Failed { kind, commit })
}

fn answered(status: u16) -> Report {
    Report::new(Outcome::Answered(status))
}

/// One attempt with `report` under the default policy: whose failure it was,
/// and what was decided (no upstream limits in play).
fn one(safe: bool, report: Report) -> (Option<OutcomeClass>, Decision) {
    one_with(RetryPolicy::default(), safe, report)
}

fn one_with(policy: RetryPolicy, safe: bool, report: Report) -> (Option<OutcomeClass>, Decision) {
    let t = Instant::now();
    let mut p = armed(policy, safe);
    let id = p.begin(addr(1), t);
    let class = p.settle(id, report, t);
    (class, p.next(id, Limits::none(), t))
}

const RETRY: Decision = Decision::Retry;
const NOT_SAFE: Decision = Decision::Stop(NoRetry::NotSafe);
const NOT_LISTED: Decision = Decision::Stop(NoRetry::NotRetriable);
const NO_BODY: Decision = Decision::Stop(NoRetry::BodyNotReplayable);
const COMMITTED: Decision = Decision::Stop(NoRetry::Committed);
const DECLINED: Decision = Decision::Stop(NoRetry::Declined);

fn backend(kind: ErrorKind) -> Option<OutcomeClass> {
    Some(OutcomeClass::BackendFailure(kind))
}

fn local(kind: ErrorKind) -> Option<OutcomeClass> {
    Some(OutcomeClass::Local(kind))
}

/// Row 1: never reached the upstream — retried, any method (a POST here).
#[test]
fn row_never_reached_the_upstream_is_retried_for_any_method() {
    let post = false;
    assert_eq!(
        one(post, failed(ConnectRefused, NotConnected)),
        (backend(ConnectRefused), RETRY)
    );
    assert_eq!(
        one(post, failed(ConnectTimeout, NotConnected)),
        (backend(ConnectTimeout), RETRY)
    );
    assert_eq!(
        one(post, failed(TlsHandshake, Connected)),
        (backend(TlsHandshake), RETRY)
    );
    // HTTP/2 REFUSED_STREAM (or above GOAWAY's last stream id), however far
    // the bytes got.
    assert_eq!(
        one(post, failed(StreamRefused, RequestSent)),
        (backend(StreamRefused), RETRY)
    );
    // hyper handed the unsent request back: Connected, nothing written.
    assert_eq!(
        one(post, failed(ConnectionClosed, Connected)),
        (backend(ConnectionClosed), RETRY)
    );
}

/// Row 2: request bytes written, no response byte — only safe requests whose
/// body is still whole.
#[test]
fn row_request_written_is_retried_only_when_safe_and_replayable() {
    for kind in [ConnectionReset, ReadTimeout, ConnectionClosed] {
        assert_eq!(one(true, failed(kind, RequestSent)), (backend(kind), RETRY));
        assert_eq!(
            one(false, failed(kind, RequestSent)),
            (backend(kind), NOT_SAFE)
        );
        assert_eq!(
            one(true, failed(kind, RequestPartiallySent)),
            (backend(kind), RETRY)
        );
    }
    let mut spent = failed(ConnectionReset, RequestSent);
    spent.replay_intact = false;
    assert_eq!(one(true, spent), (backend(ConnectionReset), NO_BODY));
    // Even an unsent request cannot go again without its whole body.
    let mut unsent = failed(ConnectRefused, NotConnected);
    unsent.replay_intact = false;
    assert_eq!(one(false, unsent), (backend(ConnectRefused), NO_BODY));
}

/// Row 3: a retriable status (502/503/504) — only safe requests, before
/// anything went downstream; else the answer passes on as it came.
#[test]
fn row_retriable_status_is_retried_only_when_safe() {
    for status in [502, 503, 504] {
        let s = HttpStatus(status);
        assert_eq!(one(true, answered(status)), (backend(s), RETRY));
        assert_eq!(one(false, answered(status)), (backend(s), NOT_SAFE));
    }
    // A status the policy does not list, that a hook wanted retried anyway:
    // the ceiling refuses it.
    assert_eq!(
        one(true, answered(500)),
        (backend(HttpStatus(500)), NOT_LISTED)
    );
    // should_retry_response declined (its default for an unlisted status):
    // delivered as it is. A 5xx still counts against the backend.
    let mut declined = answered(500);
    declined.hint = RetryHint::Never;
    assert_eq!(
        one(true, declined),
        (backend(HttpStatus(500)), Decision::Deliver)
    );
    let mut ok = answered(200);
    ok.hint = RetryHint::Never;
    assert_eq!(
        one(false, ok),
        (Some(OutcomeClass::Success), Decision::Deliver)
    );
}

/// Row 4: any response byte went downstream — never.
#[test]
fn row_response_forwarded_is_never_retried() {
    assert_eq!(
        one(true, failed(ConnectionReset, ResponseForwarded)),
        (backend(ConnectionReset), COMMITTED)
    );
    assert_eq!(
        one(true, failed(HttpStatus(503), ResponseForwarded)),
        (backend(HttpStatus(503)), COMMITTED)
    );
}

/// The keep-alive race: a pooled connection the backend had closed is no
/// one's failure; it is retried on a fresh connection (an unsafe request
/// only if nothing was written).
#[test]
fn a_stale_pooled_connection_is_free_and_asks_for_a_fresh_connection() {
    let stale = |kind, commit| Report {
        reused: true,
        ..failed(kind, commit)
    };
    assert_eq!(
        one(false, stale(ConnectionReset, Connected)),
        (local(ConnectionReset), RETRY)
    );
    assert_eq!(
        one(true, stale(ConnectionClosed, RequestSent)),
        (local(ConnectionClosed), RETRY)
    );
    assert_eq!(
        one(false, stale(ConnectionClosed, RequestSent)),
        (backend(ConnectionClosed), NOT_SAFE)
    );
    // Once response bytes arrived, a close is the backend's.
    assert_eq!(
        one(true, stale(ConnectionClosed, ResponseStarted)),
        (backend(ConnectionClosed), RETRY)
    );

    let t = Instant::now();
    let mut p = armed(RetryPolicy::default(), true);
    let first = p.begin(addr(1), t);
    p.settle(first, stale(ConnectionClosed, RequestSent), t);
    assert!(p.fresh_connection());
    assert_eq!(p.next(first, Limits::none(), t), RETRY);
    let s = p.schedule(first, addr(1), None, t).unwrap();
    assert_eq!(
        (s.wait, s.counted),
        (Duration::ZERO, false),
        "no backoff, not counted"
    );
    let second = p.begin(addr(1), t);
    p.settle(second, failed(ReadTimeout, RequestSent), t);
    assert!(!p.fresh_connection());
}

/// A hook's or the error's `RetryHint::Never`, and an error the engine
/// charges to no backend.
#[test]
fn hints_and_local_errors() {
    let mut never = failed(ConnectRefused, NotConnected);
    never.hint = RetryHint::Never;
    assert_eq!(one(false, never), (backend(ConnectRefused), DECLINED));
    let mut client = failed(ClientTimeout, RequestPartiallySent);
    client.by_backend = false;
    client.hint = RetryHint::Never;
    assert_eq!(one(true, client), (local(ClientTimeout), DECLINED));
}

/// `retry_on` is authoritative: leaving connect failures out stops those
/// retries too. Only what no entry names stays retried: a refused HTTP/2
/// stream, and a stale pooled connection.
#[test]
fn retry_on_narrows_connect_failures_too() {
    let narrow = || RetryPolicy {
        retry_on: vec![RetryOn::ReadTimeout],
        ..RetryPolicy::default()
    };
    let cases = [
        (failed(ConnectRefused, NotConnected), false, NOT_LISTED),
        (failed(ConnectTimeout, NotConnected), true, NOT_LISTED),
        (failed(TlsHandshake, Connected), true, NOT_LISTED),
        (failed(ReadTimeout, RequestSent), true, RETRY),
        (failed(StreamRefused, RequestSent), false, RETRY),
        (
            Report {
                reused: true,
                ..failed(ConnectionClosed, Connected)
            },
            false,
            RETRY,
        ),
    ];
    for (report, safe, expected) in cases {
        assert_eq!(one_with(narrow(), safe, report).1, expected, "{report:?}");
    }
}

/// `max_retries` counts retries after the first attempt; stale connections
/// do not count.
#[test]
fn max_retries_ends_the_attempts() {
    let t = Instant::now();
    let policy = RetryPolicy {
        max_retries: 2,
        ..RetryPolicy::default()
    };
    let mut p = armed(policy, true);
    let mut decisions = Vec::new();
    for port in 1..=3 {
        let id = p.begin(addr(port), t);
        p.settle(id, failed(ConnectRefused, NotConnected), t);
        decisions.push(p.next(id, Limits::none(), t));
    }
    assert_eq!(
        decisions,
        [RETRY, RETRY, Decision::Stop(NoRetry::RetriesExhausted)]
    );

    let mut p = armed(
        RetryPolicy {
            max_retries: 1,
            ..RetryPolicy::default()
        },
        true,
    );
    let a = p.begin(addr(1), t);
    let stale = Report {
        reused: true,
        ..failed(ConnectionReset, Connected)
    };
    p.settle(a, stale, t);
    assert_eq!(p.next(a, Limits::none(), t), RETRY);
    let b = p.begin(addr(1), t);
    p.settle(b, failed(ConnectRefused, NotConnected), t);
    assert_eq!(
        p.next(b, Limits::none(), t),
        RETRY,
        "the stale one was free"
    );
}

/// Failover to another backend is immediate; going back to one already
/// tried waits a jittered backoff; `Retry-After` is honoured within
/// `max_delay`; no wait runs past the deadline.
#[test]
fn backoff_retry_after_and_the_deadline() {
    let t = Instant::now();
    let mut p = armed(RetryPolicy::default(), true);
    let a = p.begin(addr(1), t);
    p.settle(a, answered(503), t);
    assert_eq!(p.next(a, Limits::none(), t), RETRY);
    let over = p.schedule(a, addr(2), None, t).unwrap();
    assert_eq!(
        (over.choice, over.wait, over.counted),
        (Choice::Failover, Duration::ZERO, true)
    );
    let b = p.begin(addr(2), t);
    assert_eq!(p.attempt(b).unwrap().choice, Choice::Failover);
    p.settle(b, answered(503), t);
    assert_eq!(p.next(b, Limits::none(), t), RETRY);
    // Retry number 2 (third attempt): 200 ms × (1 − 0.5 u), u in [0, 1).
    let again = p.schedule(b, addr(1), None, t).unwrap();
    assert_eq!(again.choice, Choice::Retry);
    assert!(
        again.wait > Duration::from_millis(100) && again.wait <= Duration::from_millis(200),
        "{:?}",
        again.wait
    );
    // Retry-After longer than the backoff is the wait; beyond max_delay (5 s)
    // it ends the retries.
    let ra = p.schedule(b, addr(1), Some(Duration::from_secs(2)), t);
    assert_eq!(ra.unwrap().wait, Duration::from_secs(2));
    assert_eq!(
        p.schedule(b, addr(1), Some(Duration::from_secs(6)), t),
        Err(NoRetry::RetryAfterTooLong)
    );
    assert_eq!(
        p.attempt(b).unwrap().decision,
        Some(Decision::Stop(NoRetry::RetryAfterTooLong))
    );

    // A deadline 150 ms away: a 2 s wait would pass it.
    let mut p = armed(RetryPolicy::default(), true);
    p.narrow_deadline(t + Duration::from_millis(150));
    let a = p.begin(addr(1), t);
    p.settle(a, answered(503), t);
    assert_eq!(p.next(a, Limits::none(), t), RETRY);
    assert_eq!(
        p.schedule(a, addr(1), Some(Duration::from_secs(2)), t),
        Err(NoRetry::OutOfTime)
    );
    // At the deadline, nothing more is tried.
    let at = t + Duration::from_millis(150);
    assert_eq!(
        p.next(a, Limits::none(), at),
        Decision::Stop(NoRetry::OutOfTime)
    );
}

/// Time spent waiting for the client's body moves the deadline on; a hook
/// may narrow it, never widen it.
#[test]
fn the_deadline_moves_by_client_time_and_only_narrows() {
    let t = Instant::now();
    let mut p = Planner::new();
    p.narrow_deadline(t + Duration::from_secs(1));
    p.add_client_time(Duration::from_millis(300));
    assert_eq!(p.deadline(), Some(t + Duration::from_millis(1300)));
    p.narrow_deadline(t + Duration::from_secs(5));
    assert_eq!(p.deadline(), Some(t + Duration::from_millis(1300)));
    p.narrow_deadline(t + Duration::from_millis(500));
    assert_eq!(p.deadline(), Some(t + Duration::from_millis(500)));
}

struct Gate(AtomicU32);

impl RetryBudgetGate for Gate {
    fn deposit(&self, _: Instant) {}
    fn try_withdraw(&self, _: Instant) -> bool {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// The upstream's limits: the budget, failure spread, and free failover of
/// attempts that never reached a backend.
#[test]
fn the_budget_and_the_spread() {
    let t = Instant::now();
    let empty = Gate(AtomicU32::new(0));
    let limits = |spread, members| Limits {
        spread,
        members,
        budget: Some(&empty),
    };
    let decide_on = |report: Report, l: Limits<'_>| {
        let mut p = armed(RetryPolicy::default(), true);
        let id = p.begin(addr(1), t);
        p.settle(id, report, t);
        p.next(id, l, t)
    };
    let reached = failed(ReadTimeout, RequestSent);
    let unsent = failed(ConnectRefused, NotConnected);
    assert_eq!(
        decide_on(reached, limits(Spread::Normal, Some(3))),
        Decision::Stop(NoRetry::BudgetExhausted)
    );
    assert_eq!(
        decide_on(unsent, limits(Spread::Normal, Some(3))),
        RETRY,
        "unsent, with untried backends: free"
    );
    assert_eq!(
        decide_on(unsent, limits(Spread::Normal, Some(1))),
        Decision::Stop(NoRetry::BudgetExhausted),
        "unsent, nothing untried: the budget decides"
    );
    assert_eq!(
        decide_on(reached, limits(Spread::Correlated, Some(3))),
        Decision::Stop(NoRetry::CorrelatedFailure)
    );
    assert_eq!(
        decide_on(reached, limits(Spread::Concentrated, Some(3))),
        RETRY,
        "concentrated failure bypasses the budget"
    );
    let one_left = Gate(AtomicU32::new(1));
    let l = Limits {
        budget: Some(&one_left),
        ..Limits::none()
    };
    assert_eq!(decide_on(reached, l), RETRY);
    assert_eq!(one_left.0.load(Ordering::Relaxed), 0, "the retry was paid");
}

/// Attempts have identities, settle in any order, and a cancelled attempt
/// is charged to no one.
#[test]
fn attempts_in_flight_together_settle_in_any_order() {
    let t = Instant::now();
    let later = t + Duration::from_millis(30);
    let mut p = armed(RetryPolicy::default(), true);
    let a = p.begin(addr(1), t);
    let b = p.begin(addr(2), later);
    assert_eq!((a.number(), b.number(), p.in_flight()), (1, 2, 2));
    assert_eq!(p.current().unwrap().peer, addr(2));
    assert_eq!(
        p.settle(b, answered(200), later),
        Some(OutcomeClass::Success)
    );
    p.cancel(a, later);
    assert_eq!(p.in_flight(), 0);
    assert_eq!(p.attempt(a).unwrap().outcome, Some(Outcome::Cancelled));
    assert_eq!(
        p.settle(a, failed(ConnectionReset, RequestSent), later),
        None,
        "a cancelled attempt's late outcome is not reported"
    );
    assert_eq!(p.attempt(a).unwrap().outcome, Some(Outcome::Cancelled));
    assert_eq!(p.settle(AttemptId(9), answered(200), t), None);
}

/// The history says where each attempt went, what happened, and why.
#[test]
fn the_history_reads_as_one_line() {
    let t = Instant::now();
    let mut p = armed(RetryPolicy::default(), false);
    let a = p.begin(addr(1), t);
    p.settle(a, failed(ConnectRefused, NotConnected), t);
    assert_eq!(p.next(a, Limits::none(), t), RETRY);
    p.schedule(a, addr(2), None, t).unwrap();
    let b = p.begin(addr(2), t);
    let late = t + Duration::from_micros(2_340);
    p.settle(b, failed(ConnectionReset, RequestSent), late);
    assert_eq!(p.next(b, Limits::none(), late), NOT_SAFE);
    assert_eq!(
        p.to_string(),
        "#1 127.0.0.1:1 first connection_refused@not_connected 0.0ms retried wait=0ms; \
         #2 127.0.0.1:2 failover connection_terminated@request_sent 2.3ms stop=not_safe"
    );
    assert_eq!(
        Decision::Stop(NoRetry::NotSafe).to_string(),
        "not retried: request already sent and not safe to repeat"
    );
    assert_eq!(p.last_error(), Some(ConnectionReset));
    assert_eq!(p.tried(), &[addr(1), addr(2)]);
}

/// An unarmed planner (no policy yet) retries nothing.
#[test]
fn an_unarmed_planner_retries_nothing() {
    let t = Instant::now();
    let mut p = Planner::new();
    let id = p.begin(addr(1), t);
    assert_eq!(
        p.settle(id, failed(ConnectRefused, NotConnected), t),
        local(ConnectRefused)
    );
    assert_eq!(p.next(id, Limits::none(), t), NOT_LISTED);
}

fn marked(status: u16) -> Report {
    Report {
        hop_retried: true,
        ..answered(status)
    }
}

fn tiered(group: u16) -> Option<Pick> {
    Some(Pick {
        grouping: crate::pick::Grouping::Priority,
        group,
        ..Pick::default()
    })
}

/// A trusted hop below retried: not again in the same failover group; one
/// failover to another group, and no more.
#[test]
fn a_hop_that_retried_below_is_not_retried_again_in_its_group() {
    let t = Instant::now();
    let budget = Gate(AtomicU32::new(5));
    let limits = || Limits {
        budget: Some(&budget),
        ..Limits::none()
    };
    // One group (active-active, or no pick said): stop, budget untouched.
    for pick in [None, Some(Pick::default())] {
        let mut p = armed(RetryPolicy::default(), true);
        let id = p.begin_picked(addr(1), pick, t);
        p.settle(id, marked(503), t);
        assert_eq!(p.next(id, limits(), t), Decision::Stop(NoRetry::HopRetried));
        assert_eq!(p.avoid_group(), None);
    }
    assert_eq!(budget.0.load(Ordering::Relaxed), 5, "no retry was paid");
    // Priority tiers: one failover, outside tier 0, paid from the budget.
    let mut p = armed(RetryPolicy::default(), true);
    let id = p.begin_picked(addr(1), tiered(0), t);
    p.settle(id, marked(503), t);
    assert_eq!(p.next(id, limits(), t), RETRY);
    assert_eq!(p.avoid_group(), Some(0));
    assert_eq!(budget.0.load(Ordering::Relaxed), 4);
    // The failover's answer is marked too: that was the one.
    let id = p.begin_picked(addr(2), tiered(1), t);
    p.settle(id, marked(503), t);
    assert_eq!(p.next(id, limits(), t), Decision::Stop(NoRetry::HopRetried));
    assert!(
        p.to_string()
            .contains("503 0.0ms hop_retried stop=hop_retried"),
        "{p}"
    );
    // An unmarked answer is retried as ever.
    let mut p = armed(RetryPolicy::default(), true);
    let id = p.begin_picked(addr(1), None, t);
    p.settle(id, answered(503), t);
    assert_eq!(p.next(id, limits(), t), RETRY);
    assert_eq!(p.avoid_group(), None);
    // The safety ceiling comes first: an unsafe request is never retried.
    let mut p = armed(RetryPolicy::default(), false);
    let id = p.begin_picked(addr(1), tiered(0), t);
    p.settle(id, marked(503), t);
    assert_eq!(p.next(id, limits(), t), NOT_SAFE);
}

/// This hop's own `retried` parameter: the retries made, 0 when a limit of
/// its own stopped it, absent when retrying was not its job.
#[test]
fn retried_here_says_whether_retrying_was_done_at_this_hop() {
    let t = Instant::now();
    let spent = Gate(AtomicU32::new(0));
    let no_budget = Limits {
        budget: Some(&spent),
        ..Limits::none()
    };
    // Unarmed, or a policy that never retries.
    assert_eq!(Planner::new().retried_here(), None);
    let mut p = armed(RetryPolicy::none(), true);
    let id = p.begin(addr(1), t);
    p.settle(id, answered(503), t);
    p.next(id, Limits::none(), t);
    assert_eq!(p.retried_here(), None);
    // Delivered at once, or an outcome the policy does not retry.
    for (status, safe) in [(200, true), (500, true), (503, false)] {
        let mut p = armed(RetryPolicy::default(), safe);
        let id = p.begin(addr(1), t);
        p.settle(id, answered(status), t);
        p.next(id, Limits::none(), t);
        assert_eq!(p.retried_here(), None, "{status} safe={safe}");
    }
    // The budget said no: retried=0.
    let mut p = armed(RetryPolicy::default(), true);
    let id = p.begin(addr(1), t);
    p.settle(id, answered(503), t);
    assert_eq!(
        p.next(id, no_budget, t),
        Decision::Stop(NoRetry::BudgetExhausted)
    );
    assert_eq!(p.retried_here(), Some(0));
    // Two retries, whatever the last answer; a stale connection's is free.
    let mut p = armed(RetryPolicy::default(), true);
    let id = p.begin(addr(1), t);
    p.settle(
        id,
        Report {
            reused: true,
            ..failed(ConnectionClosed, RequestSent)
        },
        t,
    );
    assert_eq!(p.next(id, Limits::none(), t), RETRY);
    for port in [1, 2] {
        let id = p.begin(addr(port), t);
        p.settle(id, answered(503), t);
        p.next(id, Limits::none(), t);
    }
    let id = p.begin(addr(3), t);
    p.settle(id, answered(200), t);
    p.next(id, Limits::none(), t);
    assert_eq!(p.retried_here(), Some(2), "{p}");
}

/// A hedge that failed and was superseded says nothing of what this hop
/// decided: the survivor's decision makes the `retried` parameter.
#[test]
fn retried_here_reads_past_a_superseded_hedge() {
    let t = Instant::now();
    let spent = Gate(AtomicU32::new(0));
    let no_budget = Limits {
        budget: Some(&spent),
        ..Limits::none()
    };
    let mut p = armed(RetryPolicy::default(), true);
    let first = p.begin(addr(1), t);
    let hedge = p.begin_hedge(addr(2), None, t);
    p.settle(hedge, failed(ConnectRefused, NotConnected), t);
    p.supersede(hedge);
    p.settle(first, answered(503), t);
    assert_eq!(
        p.next(first, no_budget, t),
        Decision::Stop(NoRetry::BudgetExhausted)
    );
    assert_eq!(p.retried_here(), Some(0), "{p}");
    assert!(
        p.to_string()
            .contains("hedge connection_refused@not_connected 0.0ms superseded"),
        "{p}"
    );
}
