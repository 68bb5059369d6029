//! An upstream's metrics and event lines: client requests, attempts, the
//! failure spread and panic mode.
//!
//! Handles on the request path are made at first use, not when the upstream
//! is built ([`Lazy`]): a library user who installs a recorder after building
//! the upstreams still gets every series. [`prime`] makes them when the
//! server starts the upstream's services, so the series exist (at 0) from
//! then on. The `metrics` crate resolves a handle against the recorder
//! installed at that moment; the recorder must therefore be installed before
//! `Server::start`, in whatever order relative to the upstreams.
//!
//! Rare events (a change of failure spread, entering or leaving panic mode)
//! look their series up when they happen, so they need no handles kept.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use detour_core::spread::{SpreadHook, Verdict};
use detour_core::{AddrMap, AttemptOutcome, Backend, OutcomeClass, Spread};
use detour_lb::PanicChange;

use crate::telemetry::BackendSeries;

/// Metric handles made on first use from the upstream's name. After that,
/// reaching them costs one atomic load ([`OnceLock::get`]).
pub(crate) struct Lazy<T> {
    upstream: Arc<str>,
    make: fn(&str) -> T,
    handles: OnceLock<T>,
}

impl<T> Lazy<T> {
    pub(crate) fn new(upstream: &str, make: fn(&str) -> T) -> Self {
        Lazy {
            upstream: Arc::from(upstream),
            make,
            handles: OnceLock::new(),
        }
    }

    /// The handles, made now if this is the first use.
    pub(crate) fn get(&self) -> &T {
        self.handles.get_or_init(|| (self.make)(&self.upstream))
    }
}

/// `detour_requests_total{upstream, status}` by status class and
/// `detour_request_duration_seconds{upstream}`.
struct RequestHandles {
    by_class: [metrics::Counter; 5],
    duration: metrics::Histogram,
}

fn request_handles(name: &str) -> RequestHandles {
    let class = |c: &'static str| metrics::counter!("detour_requests_total", "upstream" => name.to_string(), "status" => c);
    RequestHandles {
        by_class: [
            class("1xx"),
            class("2xx"),
            class("3xx"),
            class("4xx"),
            class("5xx"),
        ],
        duration: metrics::histogram!("detour_request_duration_seconds", "upstream" => name.to_string()),
    }
}

/// Client-request metrics of one upstream (`detour_requests_total` by status
/// class, `detour_request_duration_seconds`). Their handles are made at the
/// first request or when the server starts, whichever comes first, so
/// recording a request only bumps atomics.
pub struct RequestMetrics(Lazy<RequestHandles>);

impl std::fmt::Debug for RequestMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestMetrics")
    }
}

impl RequestMetrics {
    /// Metrics labelled `upstream = name`.
    pub fn new(name: &str) -> Self {
        RequestMetrics(Lazy::new(name, request_handles))
    }

    /// One client request answered with `status` after `elapsed`.
    pub fn record(&self, status: u16, elapsed: Duration) {
        let h = self.0.get();
        let i = usize::from((status / 100).clamp(1, 5)) - 1;
        h.by_class[i].increment(1);
        h.duration.record(elapsed.as_secs_f64());
    }

    /// Make the series now (at 0).
    pub(crate) fn prime(&self) {
        self.0.get();
    }
}

/// `detour_upstream_attempts_total{upstream, outcome}` and
/// `detour_upstream_latency_seconds{upstream}`.
pub(crate) struct AttemptHandles {
    ok: metrics::Counter,
    failed: metrics::Counter,
    local: metrics::Counter,
    latency: metrics::Histogram,
}

pub(crate) fn attempt_handles(name: &str) -> AttemptHandles {
    let outcome = |o: &'static str| metrics::counter!("detour_upstream_attempts_total", "upstream" => name.to_string(), "outcome" => o);
    AttemptHandles {
        ok: outcome("success"),
        failed: outcome("backend_failure"),
        local: outcome("local"),
        latency: metrics::histogram!("detour_upstream_latency_seconds", "upstream" => name.to_string()),
    }
}

impl AttemptHandles {
    /// Count one attempt.
    pub(crate) fn record(&self, o: &AttemptOutcome<'_>) {
        match o.class {
            OutcomeClass::Success => self.ok.increment(1),
            OutcomeClass::BackendFailure(_) => self.failed.increment(1),
            OutcomeClass::Local(_) => self.local.increment(1),
        }
        if o.status.is_some() {
            self.latency.record(o.latency.as_secs_f64());
        }
    }
}

/// The `class` label of `detour_backend_responses_total`: the response
/// head's status class, or `error` when none came.
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// `detour_backend_responses_total{upstream, backend, class}`: every attempt
/// to each backend by how it ended. The series of every member exist at 0 once
/// the server has started the upstream, and a backend that leaves takes its
/// handles with it.
pub(crate) struct BackendCounters {
    upstream: Arc<str>,
    /// Set when the server starts the upstream: handles made before would
    /// miss a recorder installed later.
    primed: AtomicBool,
    by_backend: ArcSwap<AddrMap<Arc<[metrics::Counter; 6]>>>,
}

impl BackendCounters {
    pub(crate) fn new(upstream: &str) -> Self {
        BackendCounters {
            upstream: Arc::from(upstream),
            primed: AtomicBool::new(false),
            by_backend: ArcSwap::from_pointee(AddrMap::default()),
        }
    }

    /// Make the series of `backends` (at 0) from now on.
    pub(crate) fn prime(&self, backends: &[Arc<Backend>]) {
        self.primed.store(true, Ordering::Release);
        self.members(backends);
    }

    /// The membership changed: handles for newcomers, none kept for leavers,
    /// whose series go after a while ([`BackendSeries::keep_only`]).
    pub(crate) fn members(&self, backends: &[Arc<Backend>]) {
        if !self.primed.load(Ordering::Acquire) {
            return;
        }
        let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
        BackendSeries::global().keep_only(&self.upstream, &addrs, tokio::time::Instant::now());
        let old = self.by_backend.load();
        let map = backends
            .iter()
            .map(|b| {
                let addr = b.addr();
                let handles = old
                    .get(&addr)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(self.handles(addr)));
                (addr, handles)
            })
            .collect();
        self.by_backend.store(Arc::new(map));
    }

    fn handles(&self, addr: SocketAddr) -> [metrics::Counter; 6] {
        // The backend's event counters exist from now on too, at 0.
        for to in ["down", "up", "ejected", "unejected"] {
            metrics::counter!(
                "detour_health_transitions_total",
                "upstream" => self.upstream.to_string(),
                "backend" => addr.to_string(),
                "to" => to,
            )
            .increment(0);
        }
        CLASSES.map(|class| {
            metrics::counter!(
                "detour_backend_responses_total",
                "upstream" => self.upstream.to_string(),
                "backend" => addr.to_string(),
                "class" => class,
            )
        })
    }

    /// Count one attempt.
    pub(crate) fn record(&self, o: &AttemptOutcome<'_>) {
        let map = self.by_backend.load();
        if let Some(handles) = map.get(&o.addr) {
            let i = o
                .status
                .map_or(5, |s| usize::from((s / 100).clamp(1, 5)) - 1);
            handles[i].increment(1);
        }
    }
}

const SPREADS: [Spread; 3] = [Spread::Normal, Spread::Concentrated, Spread::Correlated];

/// Set `detour_upstream_failure_spread{upstream, state}`: 1 for `now`, 0 for
/// the other states.
pub(crate) fn set_spread_gauge(upstream: &str, now: Spread) {
    for state in SPREADS {
        metrics::gauge!(
            "detour_upstream_failure_spread",
            "upstream" => upstream.to_string(),
            "state" => state.as_str(),
        )
        .set(if state == now { 1.0 } else { 0.0 });
    }
}

/// The event of a change of an upstream's failure spread: a log line (a
/// warning on entering concentrated or correlated failure), the
/// `detour_upstream_failure_spread{upstream, state}` gauge (1 for the state in
/// force, 0 for the others) and `detour_upstream_spread_changes_total{upstream, to}`.
pub(crate) fn spread_events(upstream: &str) -> SpreadHook {
    let name: Arc<str> = Arc::from(upstream);
    Arc::new(move |before: Verdict, after: Verdict| {
        set_spread_gauge(&name, after.spread);
        metrics::counter!(
            "detour_upstream_spread_changes_total",
            "upstream" => name.to_string(),
            "to" => after.spread.as_str(),
        )
        .increment(1);
        let (healthy, failing) = (after.healthy, after.failing);
        match after.spread {
            Spread::Concentrated => tracing::warn!(
                upstream = &*name, healthy, failing,
                "failure is concentrated: retries go past the budget and failing backends may be removed past the ceiling"
            ),
            Spread::Correlated => tracing::warn!(
                upstream = &*name, failing,
                "failure is correlated across every backend: retries of requests that reached a backend stop (correlated_brake)"
            ),
            Spread::Normal => tracing::info!(
                upstream = &*name, from = before.spread.as_str(),
                "failure spread back to normal"
            ),
        }
    })
}

/// `detour_upstream_panic{upstream}`: 1 while the upstream's balancer is in
/// panic mode, else 0.
pub(crate) fn set_panic_gauge(upstream: &str, in_panic: bool) {
    metrics::gauge!("detour_upstream_panic", "upstream" => upstream.to_string()).set(if in_panic {
        1.0
    } else {
        0.0
    });
}

/// `detour_upstream_panic_entries_total{upstream}`: times the balancer
/// entered panic mode.
fn panic_entries(upstream: &str) -> metrics::Counter {
    metrics::counter!("detour_upstream_panic_entries_total", "upstream" => upstream.to_string())
}

/// Make the upstream's event counters (breaker transitions, outlier
/// ejections and their refusals by detector) at 0, so alerts on them see 0
/// rather than no data before the first event.
pub(crate) fn prime_events(upstream: &str) {
    for to in ["open", "half_open", "closed"] {
        metrics::counter!(
            "detour_breaker_transitions_total", "to" => to, "upstream" => upstream.to_string()
        )
        .increment(0);
    }
    for reason in [
        "consecutive_5xx",
        "consecutive_gateway_failure",
        "consecutive_local_origin_failure",
        "success_rate",
        "failure_percentage",
    ] {
        for family in [
            "detour_outlier_ejections_total",
            "detour_outlier_ejections_refused_total",
        ] {
            metrics::counter!(family, "upstream" => upstream.to_string(), "reason" => reason)
                .increment(0);
        }
    }
}

/// Make the panic series when the upstream starts serving: the gauge at
/// `in_panic`, the entries counter at 0, or at 1 with a warning when it
/// starts in panic mode (changes before that, during the first round of
/// checks, are not reported: no request saw them).
pub(crate) fn prime_panic(upstream: &str, in_panic: bool) {
    set_panic_gauge(upstream, in_panic);
    panic_entries(upstream).increment(u64::from(in_panic));
    if in_panic {
        tracing::warn!(
            upstream,
            "starting in panic mode: too few backends available, selection ignores health checks, ejections and breakers"
        );
    }
}

/// The event of entering or leaving panic mode once `serving` is set: a
/// warning either way (while in panic mode, selection ignores health checks,
/// ejections and breakers), the `detour_upstream_panic` gauge and, on entry,
/// `detour_upstream_panic_entries_total`.
pub(crate) fn panic_events(
    upstream: &str,
    serving: Arc<AtomicBool>,
) -> impl Fn(&PanicChange) + Send + Sync + 'static {
    let name: Arc<str> = Arc::from(upstream);
    move |c: &PanicChange| {
        if !serving.load(Ordering::Relaxed) {
            return;
        }
        set_panic_gauge(&name, c.in_panic);
        let (available, total, threshold) = (c.available, c.total, c.threshold);
        if c.in_panic {
            panic_entries(&name).increment(1);
            tracing::warn!(
                upstream = &*name, available, total, threshold_percent = threshold,
                "entering panic mode: too few backends available, selection now ignores health checks, ejections and breakers"
            );
        } else {
            tracing::warn!(
                upstream = &*name, available, total, threshold_percent = threshold,
                "leaving panic mode: enough backends available again, selection honours health checks, ejections and breakers"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use detour_core::Backend;
    use metrics::Key;

    use crate::telemetry::{BackendSeries, KEEP_AFTER_LEAVING};
    use crate::upstream::{Upstream, UpstreamConfig};

    fn series_of(backend: &str) -> Key {
        Key::from_parts(
            "detour_backend_responses_total",
            vec![
                metrics::Label::new("upstream", "series-test"),
                metrics::Label::new("backend", backend.to_string()),
                metrics::Label::new("class", "2xx"),
            ],
        )
    }

    /// A backend that leaves its upstream (here through the load balancer,
    /// as discovery does) takes its series after a while.
    #[tokio::test(start_paused = true)]
    async fn a_departed_backend_s_series_go_after_a_while() {
        let config: UpstreamConfig =
            toml::from_str(r#"backends = [{ addr = "127.0.0.1:1" }, { addr = "127.0.0.1:2" }]"#)
                .unwrap();
        let up = std::sync::Arc::new(Upstream::from_config("series-test", &config).unwrap());
        let _services = up.start_services(&tokio::runtime::Handle::current());
        let global = BackendSeries::global();
        global.counter(&series_of("127.0.0.1:2")).increment(1);
        let shown = |port: &str| {
            global
                .render(tokio::time::Instant::now())
                .contains(&format!("backend=\"127.0.0.1:{port}\""))
        };
        assert!(shown("2"));
        up.load_balancer()
            .update([Backend::new(([127, 0, 0, 1], 1).into())]);
        tokio::time::advance(KEEP_AFTER_LEAVING - Duration::from_secs(1)).await;
        assert!(shown("2"), "still shown for a while");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!shown("2"), "gone");
    }
}
