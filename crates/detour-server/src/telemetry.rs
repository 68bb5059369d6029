//! The catalogue of every metric family Detour's crates emit, with its kind
//! and its help text, so an exporter can write `# HELP` beside `# TYPE`.
//!
//! Install a `metrics` recorder, then call [`describe`] once: the
//! descriptions are handed to the recorder, which keeps them for the families
//! as they appear. The `detour` binary does this at start.
//!
//! [`BackendSeries`] keeps the series labelled with a backend apart, so that a
//! backend that leaves takes them with it; [`Histograms`] keeps the latency
//! histograms in fixed buckets.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use metrics::Key;
use tokio::time::Instant;

mod histograms;

pub use histograms::{BucketHistogram, Histograms, LATENCY_BUCKETS};

/// What a family measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution of observations.
    Histogram,
}

/// One metric family.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    /// Its name.
    pub name: &'static str,
    /// Its kind.
    pub kind: Kind,
    /// Its help text.
    pub help: &'static str,
}

const fn family(name: &'static str, kind: Kind, help: &'static str) -> Family {
    Family { name, kind, help }
}

/// Every family the engine, the upstreams, health checks, outlier detection
/// and breakers emit, and the gauges the binary sets at each scrape.
pub const FAMILIES: &[Family] = &[
    family("detour_requests_total", Kind::Counter, "Client requests answered, by upstream and status class."),
    family("detour_request_duration_seconds", Kind::Histogram, "Whole client requests, from arrival to the end of the answer."),
    family("detour_upstream_attempts_total", Kind::Counter, "Attempts to backends, by upstream and outcome (success, backend_failure, local)."),
    family("detour_backend_responses_total", Kind::Counter, "Attempts to each backend by how they ended: the status class of the response head, or error when none came."),
    family("detour_upstream_latency_seconds", Kind::Histogram, "Attempts to backends, from their start to the response head."),
    family("detour_retries_total", Kind::Counter, "Retries, by upstream, reason and kind (retry to a backend already tried, failover to another)."),
    family("detour_hedges_total", Kind::Counter, "Hedged requests, by upstream and event: started (a hedge sent), won (its answer went to the client), cancelled (an attempt dropped because another won)."),
    family("detour_upstream_failure_spread", Kind::Gauge, "1 for the upstream's failure spread in force (normal, concentrated, correlated), 0 for the others."),
    family("detour_upstream_spread_changes_total", Kind::Counter, "Changes of an upstream's failure spread, by the state changed to."),
    family("detour_health_transitions_total", Kind::Counter, "Backend state changes from checks and outlier detection (down, up, ejected, unejected)."),
    family("detour_backend_healthy", Kind::Gauge, "1 while the backend serves (checks passing, not drained), 0 otherwise."),
    family("detour_backend_ejected", Kind::Gauge, "1 while outlier detection has the backend ejected."),
    family("detour_backend_in_flight", Kind::Gauge, "Attempts in flight to the backend."),
    family("detour_outlier_ejections_total", Kind::Counter, "Outlier ejections, by upstream and detector."),
    family("detour_outlier_ejections_refused_total", Kind::Counter, "Outlier ejections the removal ceiling refused, by upstream and detector."),
    family("detour_breaker_state", Kind::Gauge, "The backend's circuit breaker: 0 closed, 1 half-open, 2 open."),
    family("detour_breaker_transitions_total", Kind::Counter, "Circuit breaker state changes, by upstream, backend and state changed to."),
    family("detour_breaker_trips_refused_total", Kind::Counter, "Breaker trips the removal ceiling refused (the breaker stayed closed)."),
    family("detour_breakers_open", Kind::Gauge, "Circuit breakers not closed (open or half-open), all upstreams together."),
    family("detour_upstream_panic", Kind::Gauge, "1 while the upstream's balancer is in panic mode (too few backends available: health ignored)."),
    family("detour_upstream_panic_entries_total", Kind::Counter, "Times the upstream's balancer entered panic mode."),
    family("detour_discovery_source_up", Kind::Gauge, "1 while the discovery source's last read succeeded and is wholly in force, 0 when it is starting, degraded or failing (its last good set then stays)."),
    family("detour_discovery_source_age_seconds", Kind::Gauge, "Seconds since the discovery source's last success (for a watch: its last event or progress notification)."),
    family("detour_discovery_source_revision", Kind::Gauge, "The revision of the discovery source's answer in force (etcd's store revision)."),
];

/// Hand every family's description to the installed recorder (a no-op
/// without one). Call it once, after installing the recorder.
pub fn describe() {
    for f in FAMILIES {
        match f.kind {
            Kind::Counter => metrics::describe_counter!(f.name, f.help),
            Kind::Gauge => metrics::describe_gauge!(f.name, f.help),
            Kind::Histogram => metrics::describe_histogram!(f.name, f.help),
        }
    }
}

/// How long the series of a backend that left stay in `/metrics`: long
/// enough for a scrape or two to see their last values, short enough that
/// churn (DNS, file or fleet discovery) cannot grow them without bound.
pub const KEEP_AFTER_LEAVING: Duration = Duration::from_secs(300);

/// The series labelled with a `backend`, kept apart from the exporter's own
/// registry so that a backend that leaves its upstream can take them with it
/// (the Prometheus exporter cannot remove a series).
///
/// A recorder layer (the facade's `detour_proxy::metrics::install`) hands every
/// counter and gauge whose key has a `backend` label to [`BackendSeries::global`],
/// and appends [`render`](Self::render) to the exporter's page. An upstream
/// reports its membership ([`keep_only`](Self::keep_only)); a backend's
/// series go [`KEEP_AFTER_LEAVING`] after it left. Without the
/// layer nothing registers here and the calls cost a lock on membership
/// changes only.
#[derive(Debug, Default)]
pub struct BackendSeries {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    series: HashMap<Key, Series>,
    /// Each upstream's members as last reported: a series that appears for
    /// a backend not among them (an event arriving late) is born leaving.
    members: HashMap<String, Vec<String>>,
}

#[derive(Debug)]
struct Series {
    kind: Kind,
    value: Arc<AtomicU64>,
    upstream: String,
    backend: String,
    left_at: Option<Instant>,
}

impl BackendSeries {
    /// The process's registry.
    pub fn global() -> &'static BackendSeries {
        static GLOBAL: OnceLock<BackendSeries> = OnceLock::new();
        GLOBAL.get_or_init(BackendSeries::default)
    }

    /// Whether `key` names a per-backend series (it has a `backend` label).
    pub fn owns(key: &Key) -> bool {
        key.labels().any(|l| l.key() == "backend")
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every change under the lock is a plain insert or remove: a
        // poisoned map is still whole.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn value(&self, key: &Key, kind: Kind) -> Arc<AtomicU64> {
        let label = |name: &str| {
            key.labels()
                .find(|l| l.key() == name)
                .map(|l| l.value().to_string())
                .unwrap_or_default()
        };
        let mut inner = self.lock();
        if let Some(s) = inner.series.get(key) {
            return Arc::clone(&s.value);
        }
        let (upstream, backend) = (label("upstream"), label("backend"));
        let gone = inner
            .members
            .get(&upstream)
            .is_some_and(|m| !m.contains(&backend));
        let series = Series {
            kind,
            value: Arc::new(AtomicU64::new(0)),
            upstream,
            backend,
            left_at: gone.then(Instant::now),
        };
        let value = Arc::clone(&series.value);
        inner.series.insert(key.clone(), series);
        value
    }

    /// The counter of `key`, made at 0 if new.
    pub fn counter(&self, key: &Key) -> metrics::Counter {
        metrics::Counter::from_arc(self.value(key, Kind::Counter))
    }

    /// The gauge of `key`, made at 0 if new.
    pub fn gauge(&self, key: &Key) -> metrics::Gauge {
        metrics::Gauge::from_arc(self.value(key, Kind::Gauge))
    }

    /// `members` are `upstream`'s backends as of `now`: the series of any
    /// other backend of `upstream` are marked as left (they go once
    /// [`KEEP_AFTER_LEAVING`] has passed), and those of a member that came
    /// back are kept. An upstream a reload removed keeps no member.
    pub fn keep_only(&self, upstream: &str, members: &[SocketAddr], now: Instant) {
        let members: Vec<String> = members.iter().map(SocketAddr::to_string).collect();
        let mut inner = self.lock();
        inner.members.insert(upstream.to_string(), members.clone());
        for s in inner.series.values_mut() {
            if s.upstream != upstream {
                continue;
            }
            if members.contains(&s.backend) {
                s.left_at = None;
            } else if s.left_at.is_none() {
                s.left_at = Some(now);
            }
        }
    }

    /// Series held now.
    pub fn len(&self) -> usize {
        self.lock().series.len()
    }

    /// Whether no series is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drop the series of backends that left [`KEEP_AFTER_LEAVING`] ago or
    /// more, then write the rest in the Prometheus text format, with the help
    /// texts of [`FAMILIES`].
    pub fn render(&self, now: Instant) -> String {
        let mut inner = self.lock();
        let all = &mut inner.series;
        all.retain(|_, s| {
            s.left_at
                .is_none_or(|at| now.saturating_duration_since(at) < KEEP_AFTER_LEAVING)
        });
        let mut by_family: BTreeMap<&str, Vec<(&Key, &Series)>> = BTreeMap::new();
        for (key, s) in all.iter() {
            by_family.entry(key.name()).or_default().push((key, s));
        }
        let mut out = String::new();
        for (name, mut series) in by_family {
            series.sort_by(|a, b| a.0.cmp(b.0));
            let kind = series.first().map_or(Kind::Counter, |(_, s)| s.kind);
            write_family(&mut out, name, kind, &series);
        }
        out
    }
}

/// The help text of the family `name` in [`FAMILIES`].
fn help_of(name: &str) -> Option<&'static str> {
    FAMILIES.iter().find(|f| f.name == name).map(|f| f.help)
}

/// `key`'s labels as the text format writes them, `name="value"` each.
fn label_pairs(key: &Key) -> impl Iterator<Item = String> + '_ {
    key.labels()
        .map(|l| format!("{}=\"{}\"", l.key(), escape(l.value())))
}

/// One family in the Prometheus text format.
fn write_family(out: &mut String, name: &str, kind: Kind, series: &[(&Key, &Series)]) {
    use std::fmt::Write as _;
    if let Some(help) = help_of(name) {
        let _ = writeln!(out, "# HELP {name} {help}");
    }
    let word = if kind == Kind::Gauge {
        "gauge"
    } else {
        "counter"
    };
    let _ = writeln!(out, "# TYPE {name} {word}");
    for (key, s) in series {
        let labels: Vec<String> = label_pairs(key).collect();
        let bits = s.value.load(Ordering::Relaxed);
        let value = match s.kind {
            Kind::Gauge => f64::from_bits(bits).to_string(),
            _ => bits.to_string(),
        };
        let _ = writeln!(out, "{name}{{{}}} {value}", labels.join(","));
    }
    out.push('\n');
}

/// A label value as the text format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `"detour_…"` name in the crates' sources is catalogued (the
    /// binary's `detour_build_info` is described where it is set).
    #[test]
    fn every_family_in_the_sources_is_catalogued() {
        let crates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut names = std::collections::BTreeSet::new();
        let mut dirs = vec![crates];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() && !path.ends_with("tests") && !path.ends_with("target") {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    for piece in text.split("\"detour_").skip(1) {
                        let name: String = piece
                            .chars()
                            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                            .collect();
                        if !name.is_empty() && piece[name.len()..].starts_with('"') {
                            names.insert(format!("detour_{name}"));
                        }
                    }
                }
            }
        }
        names.remove("detour_build_info");
        let missing: Vec<_> = names
            .iter()
            .filter(|n| !FAMILIES.iter().any(|f| f.name == n.as_str()))
            .collect();
        assert!(names.len() >= 15, "{names:?}");
        assert!(missing.is_empty(), "not catalogued: {missing:?}");
    }

    fn key(name: &'static str, upstream: &'static str, backend: &'static str) -> Key {
        Key::from_parts(
            name,
            vec![
                metrics::Label::new("upstream", upstream),
                metrics::Label::new("backend", backend),
            ],
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_backend_that_left_takes_its_series_after_a_while() {
        let reg = BackendSeries::default();
        let a = key("detour_backend_responses_total", "app", "10.0.0.1:80");
        let b = key("detour_backend_in_flight", "app", "10.0.0.2:80");
        assert!(BackendSeries::owns(&a));
        assert!(!BackendSeries::owns(&Key::from_name(
            "detour_requests_total"
        )));
        reg.counter(&a).increment(3);
        reg.gauge(&b).set(2.0);
        let page = reg.render(Instant::now());
        assert!(page.contains("# HELP detour_backend_responses_total "));
        assert!(page.contains("# TYPE detour_backend_responses_total counter\n"));
        assert!(page.contains(
            "detour_backend_responses_total{upstream=\"app\",backend=\"10.0.0.1:80\"} 3\n"
        ));
        assert!(page.contains("# TYPE detour_backend_in_flight gauge\n"));
        assert!(page.contains("backend=\"10.0.0.2:80\"} 2\n"));

        // 10.0.0.2 leaves: shown for KEEP_AFTER_LEAVING, then gone.
        let only_a: [SocketAddr; 1] = [([10, 0, 0, 1], 80).into()];
        reg.keep_only("app", &only_a, Instant::now());
        tokio::time::advance(KEEP_AFTER_LEAVING - Duration::from_secs(1)).await;
        assert_eq!(reg.render(Instant::now()).matches("10.0.0.2:80").count(), 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        let page = reg.render(Instant::now());
        assert!(!page.contains("10.0.0.2:80"), "{page}");
        assert!(page.contains("10.0.0.1:80"));
        assert_eq!(reg.len(), 1);

        // A backend that comes back before the time is up keeps its series.
        reg.keep_only("app", &[], Instant::now());
        tokio::time::advance(Duration::from_secs(10)).await;
        reg.keep_only("app", &only_a, Instant::now());
        tokio::time::advance(KEEP_AFTER_LEAVING).await;
        assert!(reg.render(Instant::now()).contains("10.0.0.1:80\"} 3"));
        // A series that first appears for a backend that already left (a
        // late event) is born leaving.
        let late = key("detour_backend_in_flight", "app", "10.0.0.9:80");
        reg.gauge(&late).set(1.0);
        assert_eq!(reg.len(), 2);
        tokio::time::advance(KEEP_AFTER_LEAVING).await;
        assert!(!reg.render(Instant::now()).contains("10.0.0.9:80"));
        assert_eq!(reg.len(), 1);
        // Another upstream's membership does not touch it.
        reg.keep_only("other", &[], Instant::now());
        tokio::time::advance(KEEP_AFTER_LEAVING).await;
        assert_eq!(reg.len(), 1);
    }
}
