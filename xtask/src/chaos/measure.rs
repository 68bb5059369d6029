//! From what the clients saw and what the backends read to the figures in the
//! table. Everything here is pure, so it is tested on made-up runs.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::load::{Answer, Method, Sample};
use super::scenario::{all_down, Window};

/// How many unexcused errors a row keeps the details of.
const UNEXCUSED_KEPT: usize = 5;

/// One request attempt a backend read (health checks and the readiness probe
/// left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    /// Index of the backend that read it.
    pub(crate) backend: usize,
    /// Its `x-request-id`.
    pub(crate) id: String,
    /// A POST: a second delivery is a duplicate.
    pub(crate) post: bool,
    /// When the backend read its head, since the load started.
    pub(crate) at: Duration,
}

/// A time measured over the fault windows of a run, worst window first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timing {
    /// No window this figure can be measured on (see the column's notes).
    NotApplicable,
    /// The worst window's time.
    After(Duration),
    /// In some window it did not happen before the run ended.
    Never,
}

impl Timing {
    /// The worse of two: `Never` beats any time, a longer time a shorter one.
    fn worst(self, other: Timing) -> Timing {
        match (self, other) {
            (Timing::Never, _) | (_, Timing::Never) => Timing::Never,
            (Timing::After(a), Timing::After(b)) => Timing::After(a.max(b)),
            (Timing::NotApplicable, t) | (t, Timing::NotApplicable) => t,
        }
    }
}

/// The figures of one proxy in one scenario: one row of the table.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outcome {
    /// Client requests sent.
    pub(crate) requests: usize,
    /// Of which POSTs.
    pub(crate) posts: usize,
    /// GETs that got no `2xx`.
    pub(crate) get_errors: usize,
    /// POSTs that got no `2xx`.
    pub(crate) post_errors: usize,
    /// GETs that got no `2xx` although at least one backend was healthy for
    /// the whole time the request was in flight: what fails the run for Detour.
    pub(crate) unexcused_get_errors: usize,
    /// Client latency (errors included): p50, p99, max.
    pub(crate) latency: [Duration; 3],
    /// Requests the backends read, per client request.
    pub(crate) attempts_per_request: f64,
    /// From a fault to the last client request the broken backend read
    /// before its repair: one figure per fault time (the worst backend's),
    /// for those it can be measured on.
    pub(crate) stops: Vec<Timing>,
    /// From a repair to the first client request the backend read again
    /// before it broke again: one figure per repair time (the worst backend's).
    pub(crate) back: Vec<Timing>,
    /// POSTs that some backend read more than once, or more than one backend read.
    pub(crate) duplicate_posts: usize,
    /// The first few unexcused GET errors: when they were sent and what came
    /// back, for the report.
    pub(crate) unexcused: Vec<(Duration, Answer)>,
    /// From one second after the first fault to its repair, when the proxy
    /// has had the time to find out; `None` when the fault is shorter.
    pub(crate) settled: Option<Settled>,
    /// The harness's own longest stall during the run (see
    /// [`load::Run::harness_stall`](super::load::Run::harness_stall)); set by
    /// the caller.
    pub(crate) harness_stall: Duration,
}

/// How long after a fault the "settled" figures start: what a proxy does in
/// the first second is detection; what it does after is its answer.
pub(crate) const SETTLE: Duration = Duration::from_secs(1);

/// The figures of the settled part of a fault: from [`SETTLE`] after it
/// began to its repair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Settled {
    /// Client requests sent in it.
    pub(crate) requests: usize,
    /// The share of them answered with a `2xx`.
    pub(crate) served: f64,
    /// Requests the backends read in it, per client request sent in it.
    pub(crate) attempts_per_request: f64,
    /// The longest a backend that was never broken went without a client
    /// request in it (`None` if every backend was broken): a healthy
    /// backend taken out of rotation shows here.
    pub(crate) healthy_gap: Option<Duration>,
}

/// The settled figures of the first fault (see [`Settled`]).
fn settled(
    samples: &[Sample],
    seen: &[Seen],
    windows: &[Window],
    backends: usize,
    length: Duration,
) -> Option<Settled> {
    let first = windows.iter().min_by_key(|w| w.from)?;
    let (from, to) = (first.from + SETTLE, first.to.unwrap_or(length).min(length));
    if from >= to {
        return None;
    }
    let inside = |t: Duration| t >= from && t < to;
    let sent: Vec<&Sample> = samples.iter().filter(|s| inside(s.start)).collect();
    let read = seen.iter().filter(|s| inside(s.at)).count();
    let n = sent.len().max(1) as f64;
    let healthy_gap = (0..backends)
        .filter(|b| {
            !windows
                .iter()
                .any(|w| w.backend == *b && w.from < to && w.to.is_none_or(|t| t > from))
        })
        .map(|b| {
            let mut at: Vec<Duration> = seen
                .iter()
                .filter(|s| s.backend == b && inside(s.at))
                .map(|s| s.at)
                .collect();
            at.push(from);
            at.push(to);
            at.sort();
            at.windows(2).map(|p| p[1] - p[0]).max().unwrap_or_default()
        })
        .max();
    Some(Settled {
        requests: sent.len(),
        served: sent.iter().filter(|s| s.ok()).count() as f64 / n,
        attempts_per_request: read as f64 / n,
        healthy_gap,
    })
}

/// Nearest-rank p50, p99 and max of `samples` (sorted here); zeros if empty.
pub(crate) fn percentiles(samples: &mut [Duration]) -> [Duration; 3] {
    samples.sort_unstable();
    let n = samples.len();
    if n == 0 {
        return [Duration::ZERO; 3];
    }
    // Nearest rank: the smallest value with at least q·n values at or below it.
    let rank = |q: f64| ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
    [samples[rank(0.50)], samples[rank(0.99)], samples[n - 1]]
}

/// POST ids read more than once, across all backends.
pub(crate) fn duplicate_posts(seen: &[Seen]) -> usize {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for s in seen.iter().filter(|s| s.post) {
        *count.entry(s.id.as_str()).or_default() += 1;
    }
    count.values().filter(|&&n| n > 1).count()
}

/// From the fault to the last client request the backend read before its
/// repair (zero if it read none). Not measurable for a killed backend, which
/// cannot see attempts refused by the kernel, nor for one dead from the start.
fn stops(w: &Window, seen: &[Seen], end: Duration) -> Timing {
    if w.refuses || w.from_start {
        return Timing::NotApplicable;
    }
    let to = w.to.unwrap_or(end);
    let last = seen
        .iter()
        .filter(|s| s.backend == w.backend && s.at >= w.from && s.at < to)
        .map(|s| s.at)
        .max();
    Timing::After(last.map_or(Duration::ZERO, |t| t - w.from))
}

/// From the repair to the first client request the backend read after it,
/// before it broke again (`windows` holds its next fault, if any).
fn back(w: &Window, seen: &[Seen], windows: &[Window]) -> Timing {
    let Some(to) = w.to else {
        return Timing::NotApplicable;
    };
    let next_fault = windows
        .iter()
        .filter(|v| v.backend == w.backend && v.from >= to)
        .map(|v| v.from)
        .min()
        .unwrap_or(Duration::MAX);
    seen.iter()
        .filter(|s| s.backend == w.backend && s.at >= to && s.at < next_fault)
        .map(|s| s.at)
        .min()
        .map_or(Timing::Never, |t| Timing::After(t - to))
}

/// `figure` of every window, grouped by the time `key` gives it (windows
/// without one are left out), the worst of each group, in time order; groups
/// where nothing could be measured are left out.
fn per_time(
    windows: &[Window],
    key: impl Fn(&Window) -> Option<Duration>,
    figure: impl Fn(&Window) -> Timing,
) -> Vec<Timing> {
    let mut groups: BTreeMap<Duration, Timing> = BTreeMap::new();
    for w in windows {
        if let Some(k) = key(w) {
            let t = groups.entry(k).or_insert(Timing::NotApplicable);
            *t = t.worst(figure(w));
        }
    }
    groups
        .into_values()
        .filter(|t| *t != Timing::NotApplicable)
        .collect()
}

/// The row for one run of `length` over `backends` backends, whose faults
/// were `windows`.
pub(crate) fn measure(
    samples: &[Sample],
    seen: &[Seen],
    windows: &[Window],
    backends: usize,
    length: Duration,
) -> Outcome {
    let none_healthy = all_down(windows, backends, length);
    // Excused: some instant of the request's flight had no healthy backend.
    let excused = |s: &Sample| {
        let end = s.start + s.latency;
        none_healthy.iter().any(|&(a, z)| s.start < z && a <= end)
    };
    let failed_gets = samples
        .iter()
        .filter(|s| s.method == Method::Get && !s.ok());
    let unexcused: Vec<&Sample> = failed_gets.clone().filter(|s| !excused(s)).collect();
    let mut latencies: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    let requests = samples.len();
    Outcome {
        requests,
        posts: samples.iter().filter(|s| s.method == Method::Post).count(),
        get_errors: failed_gets.count(),
        post_errors: samples
            .iter()
            .filter(|s| s.method == Method::Post && !s.ok())
            .count(),
        unexcused_get_errors: unexcused.len(),
        unexcused: unexcused
            .iter()
            .take(UNEXCUSED_KEPT)
            .map(|s| (s.start, s.answer))
            .collect(),
        latency: percentiles(&mut latencies),
        attempts_per_request: if requests == 0 {
            0.0
        } else {
            seen.len() as f64 / requests as f64
        },
        stops: per_time(windows, |w| Some(w.from), |w| stops(w, seen, length)),
        back: per_time(windows, |w| w.to, |w| back(w, seen, windows)),
        duplicate_posts: duplicate_posts(seen),
        settled: settled(samples, seen, windows, backends, length),
        harness_stall: Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn seen(backend: usize, id: &str, post: bool, at: u64) -> Seen {
        Seen {
            backend,
            id: id.into(),
            post,
            at: ms(at),
        }
    }

    fn sample(method: Method, start: u64, latency: u64, ok: bool) -> Sample {
        Sample {
            method,
            start: ms(start),
            latency: ms(latency),
            answer: Answer::Status(if ok { 200 } else { 502 }),
        }
    }

    fn window(backend: usize, from: u64, to: Option<u64>, refuses: bool) -> Window {
        Window {
            backend,
            from: ms(from),
            to: to.map(ms),
            refuses,
            from_start: false,
        }
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut v: Vec<Duration> = (1..=100).rev().map(ms).collect();
        assert_eq!(percentiles(&mut v), [ms(50), ms(99), ms(100)]);
        let mut one = vec![ms(7)];
        assert_eq!(percentiles(&mut one), [ms(7); 3]);
        assert_eq!(percentiles(&mut []), [Duration::ZERO; 3]);
        let mut two = vec![ms(1), ms(9)];
        assert_eq!(percentiles(&mut two), [ms(1), ms(9), ms(9)]);
    }

    #[test]
    fn only_posts_seen_twice_are_duplicates() {
        let s = [
            seen(0, "a", true, 1),
            seen(1, "a", true, 2), // retried elsewhere: duplicate
            seen(0, "b", false, 3),
            seen(1, "b", false, 4), // a retried GET is fine
            seen(2, "c", true, 5),
            seen(2, "d", true, 6),
            seen(2, "d", true, 7), // twice on the same backend: duplicate
        ];
        assert_eq!(duplicate_posts(&s), 2);
    }

    #[test]
    fn stops_and_back_are_measured_from_the_window_edges() {
        let w = window(1, 1000, Some(3000), false);
        let s = [
            seen(1, "x", false, 900),
            seen(1, "y", false, 1040), // last one the broken backend read
            seen(0, "z", false, 2000),
            seen(1, "v", false, 3120), // first one after the repair
            seen(1, "u", false, 3500),
        ];
        assert_eq!(stops(&w, &s, ms(8000)), Timing::After(ms(40)));
        assert_eq!(back(&w, &s, &[w]), Timing::After(ms(120)));
        assert_eq!(back(&w, &s[..3], &[w]), Timing::Never);
        // Broken again before it got anything: not seen in that window.
        let again = window(1, 3100, None, true);
        assert_eq!(back(&w, &s, &[w, again]), Timing::Never);
        // A killed backend cannot see the attempts it refuses.
        let killed = window(1, 1000, Some(3000), true);
        assert_eq!(stops(&killed, &s, ms(8000)), Timing::NotApplicable);
        assert_eq!(stops(&w, &[], ms(8000)), Timing::After(Duration::ZERO));
    }

    #[test]
    fn windows_at_the_same_time_give_one_figure() {
        let windows = [
            window(0, 2000, Some(5000), true),
            window(1, 2000, Some(5000), true),
            window(1, 6000, Some(7000), true),
        ];
        let s = [
            seen(0, "a", false, 5010),
            seen(1, "b", false, 5030),
            seen(1, "c", false, 7002),
        ];
        let back = per_time(&windows, |w| w.to, |w| back(w, &s, &windows));
        assert_eq!(back, [Timing::After(ms(30)), Timing::After(ms(2))]);
        let stops = per_time(&windows, |w| Some(w.from), |w| stops(w, &s, ms(8000)));
        assert!(stops.is_empty(), "killed backends: nothing to measure");
    }

    #[test]
    fn the_worst_window_wins() {
        let a = Timing::After(ms(5));
        assert_eq!(a.worst(Timing::After(ms(9))), Timing::After(ms(9)));
        assert_eq!(a.worst(Timing::NotApplicable), a);
        assert_eq!(a.worst(Timing::Never), Timing::Never);
        assert_eq!(
            Timing::NotApplicable.worst(Timing::NotApplicable),
            Timing::NotApplicable
        );
    }

    #[test]
    fn errors_are_excused_only_while_every_backend_is_down() {
        let windows: Vec<Window> = (0..3).map(|b| window(b, 2000, Some(5000), true)).collect();
        let samples = [
            sample(Method::Get, 100, 1, true),
            sample(Method::Get, 1990, 20, false), // in flight when all went down
            sample(Method::Get, 3000, 1, false),  // all down
            sample(Method::Get, 5001, 1, false),  // after the repair: not excused
            sample(Method::Post, 3000, 1, false), // POST errors are never the gate
        ];
        let o = measure(&samples, &[], &windows, 3, ms(8000));
        assert_eq!(o.requests, 5);
        assert_eq!(o.posts, 1);
        assert_eq!((o.get_errors, o.post_errors), (3, 1));
        assert_eq!(o.unexcused_get_errors, 1);
        assert_eq!(o.unexcused, [(ms(5001), Answer::Status(502))]);
    }

    #[test]
    fn with_one_backend_down_every_get_error_counts() {
        let windows = [window(1, 2000, Some(5000), false)];
        let samples = [
            sample(Method::Get, 2500, 400, false),
            sample(Method::Get, 2600, 1, true),
        ];
        let seen = [
            seen(1, "c0-1", false, 2500),
            seen(0, "c0-1", false, 2900),
            seen(2, "c0-2", false, 2600),
        ];
        let o = measure(&samples, &seen, &windows, 3, ms(8000));
        assert_eq!(o.unexcused_get_errors, 1);
        assert!((o.attempts_per_request - 1.5).abs() < 1e-9);
        assert_eq!(o.stops, [Timing::After(ms(500))]);
        assert_eq!(o.back, [Timing::Never]);
        assert_eq!(o.duplicate_posts, 0);
    }

    #[test]
    fn settled_figures_start_a_second_into_the_fault() {
        let windows = [window(0, 2000, Some(5000), false)];
        let samples = [
            sample(Method::Get, 2500, 1, false), // detection: left out
            sample(Method::Get, 3000, 1, true),
            sample(Method::Get, 3500, 1, true),
            sample(Method::Get, 4000, 1, false),
            sample(Method::Get, 4500, 1, true),
            sample(Method::Get, 5000, 1, true), // repaired: left out
        ];
        let seen = [
            seen(0, "a", false, 2500),
            seen(1, "b", false, 3000),
            seen(1, "c", false, 3500),
            seen(0, "d", false, 4000),
            seen(2, "d", false, 4000),
            seen(1, "e", false, 4500),
        ];
        let s = settled(&samples, &seen, &windows, 3, ms(8000));
        let Some(s) = s else {
            panic!("a 3 s fault has a settled part");
        };
        assert_eq!(s.requests, 4);
        assert!((s.served - 0.75).abs() < 1e-9);
        assert!((s.attempts_per_request - 1.25).abs() < 1e-9);
        // Backend 2 read one request at 4000 in [3000, 5000): a 1 s gap.
        assert_eq!(s.healthy_gap, Some(ms(1000)));
        let short = [window(0, 2000, Some(2500), false)];
        assert!(settled(&samples, &seen, &short, 3, ms(8000)).is_none());
    }
}
