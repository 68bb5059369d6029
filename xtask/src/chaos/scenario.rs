//! The scripted faults: which backend breaks how and when, and the windows of
//! time that follow from the script (when each backend was broken, when none
//! was healthy).
//!
//! Every scenario has the same shape, in eighths of its length `L`: a healthy
//! lead-in until `2L/8`, the fault until `5L/8`, then the repair and `3L/8` to
//! see the backend come back. The exceptions are said where they are defined.

use std::time::Duration;

use detour_testkit::Behavior;

/// Backends behind every proxy, named A, B, C… in the tables: three, except
/// in the bad-canary scenario, which has five.
pub(crate) const BACKENDS: usize = 3;

/// The most backends a scenario has.
const MOST_BACKENDS: usize = 5;

/// The path every proxy's health checks ask for: the partial-outage
/// scenarios' backends keep answering it with `200`.
pub(crate) const HEALTH_PATH: &str = "/healthz";

/// The share of requests each backend fails in the correlated scenario.
pub(crate) const CORRELATED_PERCENT: u8 = 80;

/// The share of requests each backend answers late in the latency-tail
/// scenario, and how late.
pub(crate) const TAIL_PERCENT: u8 = 5;
/// See [`TAIL_PERCENT`].
pub(crate) const TAIL_DELAY: Duration = Duration::from_millis(350);

/// How long a slow backend waits before answering: well past every proxy's
/// 400 ms per-try timeout, so a proxy that waits for it is visibly slow.
pub(crate) const SLOW_DELAY: Duration = Duration::from_secs(1);

/// What a scripted step does to one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Stop listening and reset every open connection (`Upstream::kill`):
    /// connection attempts are refused by the kernel from then on.
    Kill,
    /// Listen again on the same port after a kill (`Upstream::restart`).
    Restart,
    /// Accept connections, read requests, never answer (`Behavior::hang`).
    Hang,
    /// Answer `503 Service Unavailable` to everything.
    Unavailable,
    /// Answer `200` after [`SLOW_DELAY`].
    Slow,
    /// Read the whole request, then reset the connection.
    ResetAfterRequest,
    /// Answer `503` to every client request while the health checks pass.
    UnavailableChecksPass,
    /// Fail [`CORRELATED_PERCENT`] % of client requests with `503` while the
    /// health checks pass.
    FailShareChecksPass,
    /// Answer [`TAIL_PERCENT`] % of requests after [`TAIL_DELAY`], the rest
    /// at once.
    SlowShare,
    /// Answer `200` at once again.
    Heal,
}

impl Action {
    /// The behavior this step installs, for the steps that change behavior
    /// rather than the listener.
    pub(crate) fn behavior(self) -> Option<Behavior> {
        match self {
            Action::Kill | Action::Restart => None,
            Action::Hang => Some(Behavior::hang()),
            Action::Unavailable => Some(Behavior::status(503)),
            Action::Slow => Some(Behavior::slow(SLOW_DELAY)),
            Action::ResetAfterRequest => Some(Behavior::reset_after_request()),
            Action::UnavailableChecksPass => Some(Behavior::status(503).healthy_on(HEALTH_PATH)),
            Action::FailShareChecksPass => {
                Some(Behavior::fail_share(503, CORRELATED_PERCENT).healthy_on(HEALTH_PATH))
            }
            Action::SlowShare => Some(Behavior::slow_share(TAIL_PERCENT, TAIL_DELAY)),
            Action::Heal => Some(Behavior::ok()),
        }
    }

    /// Whether the backend is broken after this step.
    fn breaks(self) -> bool {
        !matches!(self, Action::Restart | Action::Heal)
    }
}

/// One step of a script: at `at` after the load started, do `action` to
/// backend `backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Step {
    /// Time since the load started.
    pub(crate) at: Duration,
    /// Index of the backend (0 = A).
    pub(crate) backend: usize,
    /// What happens to it.
    pub(crate) action: Action,
}

/// How the clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Clients {
    /// The steady open loop of GETs and POSTs (see `load`).
    Steady,
    /// This many closed-loop clients sending GETs, each waiting for its
    /// answer before the next: the partial-outage scenarios, as measured in
    /// their issue.
    Closed(usize),
}

/// What Detour must do in a scenario for the run to pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Bar {
    /// No GET error while a healthy backend existed, no POST twice.
    NoErrorWhileHealthy,
    /// At least this share served from one second after the fault to the
    /// repair, and no healthy backend left without traffic for a second.
    Served(f64),
    /// From one second after the fault to the repair: at most
    /// `max_attempts` backend attempts per client request, at least
    /// `min_served` of the requests served.
    NoStorm { max_attempts: f64, min_served: f64 },
    /// Over the whole run: client p99 at most `max_p99`, at most
    /// `max_attempts` backend attempts per client request, no error.
    Tail {
        max_p99: Duration,
        max_attempts: f64,
    },
}

/// A named script of faults under steady load.
#[derive(Debug, Clone)]
pub(crate) struct Scenario {
    /// Short name, used by `--scenario`.
    pub(crate) name: &'static str,
    /// One line saying what happens, with times.
    pub(crate) summary: String,
    /// Backends killed before the proxy starts.
    pub(crate) dead_at_start: Vec<usize>,
    /// The faults and repairs, in time order.
    pub(crate) steps: Vec<Step>,
    /// How long the load runs.
    pub(crate) length: Duration,
    /// Backends behind the proxy.
    pub(crate) backends: usize,
    /// How the clients send.
    pub(crate) clients: Clients,
    /// What Detour must do.
    pub(crate) bar: Bar,
    /// Two proxies of the kind in a chain (clients → outer → inner →
    /// backends) instead of one.
    pub(crate) chain: bool,
    /// Detour hedges its requests (see `proxy::Tuning`).
    pub(crate) hedge: bool,
}

/// Every scenario's name, in the order they run.
pub(crate) const NAMES: [&str; 14] = [
    "killed",
    "blackholed",
    "503",
    "flapping",
    "slow",
    "all-down",
    "comes-back",
    "post-reset",
    "bad-canary",
    "bad-canary-2of3",
    "bad-canary-1of3",
    "correlated",
    "chained",
    "latency-tail",
];

/// Closed-loop clients in the partial-outage scenarios.
pub(crate) const CLOSED_CLIENTS: usize = 8;

/// The scenario called `name`, for a load of `length`.
pub(crate) fn scenario(name: &str, length: Duration) -> Option<Scenario> {
    let e = length / 8;
    let (fault, repair) = (2 * e, 5 * e);
    // The partial outages: several backends fail while passing their checks.
    let failing = |n: usize| {
        (0..n)
            .map(|b| step(fault, b, Action::UnavailableChecksPass))
            .chain((0..n).map(|b| step(repair, b, Action::Heal)))
            .collect::<Vec<_>>()
    };
    let letters = |n: usize| -> String {
        let names: Vec<String> = (0..n).map(|b| letter(b).to_string()).collect();
        names.join(", ")
    };
    let canary = |backends: usize, n: usize| {
        format!(
            "{} of {backends} backends ({}) answer 503 to every client request while their health checks pass, from {} to {}; {} {} healthy",
            n,
            letters(n),
            secs(fault),
            secs(repair),
            (n..backends).map(|b| letter(b).to_string()).collect::<Vec<_>>().join(" and "),
            if backends - n == 1 { "stays" } else { "stay" }
        )
    };
    let partial = |backends, n| {
        (
            canary(backends, n),
            vec![],
            failing(n),
            backends,
            Clients::Closed(CLOSED_CLIENTS),
            Bar::Served(0.95),
        )
    };
    let steady = |(summary, dead, steps): (String, Vec<usize>, Vec<Step>)| {
        (
            summary,
            dead,
            steps,
            BACKENDS,
            Clients::Steady,
            Bar::NoErrorWhileHealthy,
        )
    };
    let (summary, dead_at_start, steps, backends, clients, bar) = match name {
        "bad-canary" => partial(5, 4),
        "bad-canary-2of3" => partial(3, 2),
        "bad-canary-1of3" => partial(3, 1),
        "correlated" | "chained" | "latency-tail" => every_backend(name, fault, repair)?,
        other => steady(steady_faults(other, e)?),
    };
    Some(Scenario {
        name: NAMES.iter().find(|n| **n == name)?,
        summary,
        dead_at_start,
        steps,
        length,
        backends,
        clients,
        bar,
        chain: name == "chained",
        hedge: name == "latency-tail",
    })
}

/// What a scenario's script makes of it: summary, backends dead at the
/// start, steps, backends, clients, bar.
type Script = (String, Vec<usize>, Vec<Step>, usize, Clients, Bar);

/// The scenarios where every backend misbehaves alike (under closed-loop
/// clients): `correlated`, `chained` and `latency-tail`, with the fault
/// from `fault` to `repair` where there is one.
fn every_backend(name: &str, fault: Duration, repair: Duration) -> Option<Script> {
    // Every backend fails a share of client requests while its checks pass.
    let fail_share = || {
        (0..BACKENDS)
            .map(|b| step(fault, b, Action::FailShareChecksPass))
            .chain((0..BACKENDS).map(|b| step(repair, b, Action::Heal)))
            .collect::<Vec<_>>()
    };
    Some(match name {
        "correlated" => (
            format!(
                "A, B and C each fail {CORRELATED_PERCENT} % of client requests with 503 while their health checks pass, from {} to {}",
                secs(fault),
                secs(repair)
            ),
            vec![],
            fail_share(),
            BACKENDS,
            Clients::Closed(CLOSED_CLIENTS),
            Bar::NoStorm {
                max_attempts: 1.05,
                min_served: 0.15,
            },
        ),
        "chained" => (
            format!(
                "two proxies in a chain (clients → outer → inner → A, B, C), the correlated brake off on both; A, B and C each fail {CORRELATED_PERCENT} % of client requests with 503 while their health checks pass, from {} to {}",
                secs(fault),
                secs(repair)
            ),
            vec![],
            fail_share(),
            BACKENDS,
            Clients::Closed(CLOSED_CLIENTS),
            Bar::NoStorm {
                max_attempts: 1.25,
                min_served: 0.15,
            },
        ),
        "latency-tail" => (
            format!(
                "A, B and C each answer {TAIL_PERCENT} % of requests after {} and the rest at once, for the whole run; Detour hedges after {} ms",
                secs(TAIL_DELAY),
                crate::chaos::proxy::HEDGE_DELAY_MS
            ),
            vec![],
            (0..BACKENDS)
                .map(|b| step(Duration::ZERO, b, Action::SlowShare))
                .collect(),
            BACKENDS,
            Clients::Closed(CLOSED_CLIENTS),
            Bar::Tail {
                max_p99: Duration::from_millis(120),
                max_attempts: 1.15,
            },
        ),
        _ => return None,
    })
}

/// The faults of the one-backend scenarios (and all-down, comes-back), in
/// eighths `e` of the run: summary, backends dead at the start, steps.
fn steady_faults(name: &str, e: Duration) -> Option<(String, Vec<usize>, Vec<Step>)> {
    let (fault, repair) = (2 * e, 5 * e);
    let one =
        |broken: Action, healed: Action| vec![step(fault, 1, broken), step(repair, 1, healed)];
    Some(match name {
        "killed" => (
            format!(
                "B is killed (refuses connections, open ones reset) at {}, restarted at {}",
                secs(fault),
                secs(repair)
            ),
            vec![],
            one(Action::Kill, Action::Restart),
        ),
        "blackholed" => (
            format!(
                "B accepts and reads requests but never answers from {} to {}",
                secs(fault),
                secs(repair)
            ),
            vec![],
            one(Action::Hang, Action::Heal),
        ),
        "503" => (
            format!(
                "B answers 503 to everything from {} to {}",
                secs(fault),
                secs(repair)
            ),
            vec![],
            one(Action::Unavailable, Action::Heal),
        ),
        "flapping" => (
            format!(
                "B is killed at {}, back at {}, killed at {}, back at {}",
                secs(fault),
                secs(3 * e),
                secs(4 * e),
                secs(repair)
            ),
            vec![],
            vec![
                step(fault, 1, Action::Kill),
                step(3 * e, 1, Action::Restart),
                step(4 * e, 1, Action::Kill),
                step(repair, 1, Action::Restart),
            ],
        ),
        "slow" => (
            format!(
                "B answers after {} (beyond the 400 ms per-try timeout) from {} to {}",
                secs(SLOW_DELAY),
                secs(fault),
                secs(repair)
            ),
            vec![],
            one(Action::Slow, Action::Heal),
        ),
        "all-down" => (
            format!(
                "A, B and C are killed at {}, all restarted at {}",
                secs(fault),
                secs(repair)
            ),
            vec![],
            (0..BACKENDS)
                .map(|b| step(fault, b, Action::Kill))
                .chain((0..BACKENDS).map(|b| step(repair, b, Action::Restart)))
                .collect(),
        ),
        // The proxy starts with B already dead, and it comes back at the
        // usual fault time, leaving 6/8 of the run to see traffic return.
        "comes-back" => (
            format!(
                "B is dead before the proxy starts and comes back at {}",
                secs(fault)
            ),
            vec![1],
            vec![step(fault, 1, Action::Restart)],
        ),
        "post-reset" => (
            format!(
                "B reads each request, then resets the connection, from {} to {}",
                secs(fault),
                secs(repair)
            ),
            vec![],
            one(Action::ResetAfterRequest, Action::Heal),
        ),
        _ => return None,
    })
}

fn step(at: Duration, backend: usize, action: Action) -> Step {
    Step {
        at,
        backend,
        action,
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Backend `b`'s name in the tables: A, B, C…
pub(crate) fn letter(b: usize) -> char {
    char::from(b'A' + (b % 26) as u8)
}

/// A stretch of time during which one backend was broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    /// Index of the backend.
    pub(crate) backend: usize,
    /// When it broke (zero if it was dead before the load started).
    pub(crate) from: Duration,
    /// When it was repaired; `None` if it stayed broken to the end.
    pub(crate) to: Option<Duration>,
    /// Killed: connection attempts are refused by the kernel, so the backend
    /// cannot see (nor count) the attempts a proxy still makes.
    pub(crate) refuses: bool,
    /// Broken since before the proxy started.
    pub(crate) from_start: bool,
}

impl Scenario {
    /// The windows during which each backend was broken, from the script.
    pub(crate) fn windows(&self) -> Vec<Window> {
        let mut open: [Option<Window>; MOST_BACKENDS] = [None; MOST_BACKENDS];
        for &b in &self.dead_at_start {
            if let Some(slot) = open.get_mut(b) {
                *slot = Some(Window {
                    backend: b,
                    from: Duration::ZERO,
                    to: None,
                    refuses: true,
                    from_start: true,
                });
            }
        }
        let mut done = Vec::new();
        let mut steps = self.steps.clone();
        steps.sort_by_key(|s| s.at);
        for s in steps {
            let Some(slot) = open.get_mut(s.backend) else {
                continue;
            };
            // A new fault on a broken backend ends the old window first.
            if let Some(mut w) = slot.take() {
                w.to = Some(s.at);
                done.push(w);
            }
            if s.action.breaks() {
                *slot = Some(Window {
                    backend: s.backend,
                    from: s.at,
                    to: None,
                    refuses: s.action == Action::Kill,
                    from_start: false,
                });
            }
        }
        done.extend(open.into_iter().flatten());
        done.sort_by_key(|w| (w.from, w.backend));
        done
    }
}

/// The intervals, within `[0, end)`, during which all `backends` were broken
/// at once: the only time a client error is excused.
pub(crate) fn all_down(
    windows: &[Window],
    backends: usize,
    end: Duration,
) -> Vec<(Duration, Duration)> {
    let mut cuts: Vec<Duration> = vec![Duration::ZERO, end];
    for w in windows {
        cuts.push(w.from.min(end));
        cuts.push(w.to.unwrap_or(end).min(end));
    }
    cuts.sort();
    cuts.dedup();
    let broken_at = |t: Duration, b: usize| {
        windows
            .iter()
            .any(|w| w.backend == b && w.from <= t && w.to.is_none_or(|to| t < to))
    };
    let mut out: Vec<(Duration, Duration)> = Vec::new();
    for pair in cuts.windows(2) {
        let (a, z) = (pair[0], pair[1]);
        // Between two cuts nothing changes, so its start speaks for it.
        if (0..backends).all(|b| broken_at(a, b)) {
            match out.last_mut() {
                Some(last) if last.1 == a => last.1 = z,
                _ => out.push((a, z)),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Duration = Duration::from_secs(8);

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn every_name_has_a_scenario() {
        for name in NAMES {
            let Some(sc) = scenario(name, L) else {
                panic!("no scenario {name}");
            };
            assert_eq!(sc.name, name);
            assert!(sc
                .steps
                .iter()
                .all(|st| st.at < L && st.backend < sc.backends));
            assert!(sc.backends <= MOST_BACKENDS);
        }
        assert!(scenario("nonsense", L).is_none());
    }

    #[test]
    fn a_fault_and_its_repair_make_one_window() {
        let w = scenario("503", L)
            .map(|sc| sc.windows())
            .unwrap_or_default();
        assert_eq!(
            w,
            [Window {
                backend: 1,
                from: s(2),
                to: Some(s(5)),
                refuses: false,
                from_start: false
            }]
        );
    }

    #[test]
    fn flapping_makes_two_refusing_windows() {
        let w = scenario("flapping", L)
            .map(|sc| sc.windows())
            .unwrap_or_default();
        let spans: Vec<_> = w.iter().map(|w| (w.from, w.to, w.refuses)).collect();
        assert_eq!(spans, [(s(2), Some(s(3)), true), (s(4), Some(s(5)), true)]);
    }

    #[test]
    fn dead_at_start_opens_a_window_at_zero() {
        let w = scenario("comes-back", L)
            .map(|sc| sc.windows())
            .unwrap_or_default();
        assert_eq!(w.len(), 1);
        assert!(w[0].from_start && w[0].refuses);
        assert_eq!((w[0].from, w[0].to), (Duration::ZERO, Some(s(2))));
    }

    #[test]
    fn all_down_is_where_every_backend_is_broken() {
        let sc = scenario("all-down", L);
        let w = sc.map(|sc| sc.windows()).unwrap_or_default();
        assert_eq!(all_down(&w, BACKENDS, L), [(s(2), s(5))]);
        // One backend down never leaves none healthy.
        let one = scenario("killed", L)
            .map(|sc| sc.windows())
            .unwrap_or_default();
        assert!(all_down(&one, BACKENDS, L).is_empty());
    }

    #[test]
    fn overlapping_windows_intersect() {
        let w = |backend, from, to| Window {
            backend,
            from: s(from),
            to,
            refuses: true,
            from_start: false,
        };
        let windows = [w(0, 1, Some(s(4))), w(1, 2, Some(s(6))), w(1, 7, None)];
        assert_eq!(all_down(&windows, 2, L), [(s(2), s(4))]);
        let tail = [w(0, 6, None), w(1, 7, None)];
        assert_eq!(all_down(&tail, 2, L), [(s(7), L)]);
    }
}
