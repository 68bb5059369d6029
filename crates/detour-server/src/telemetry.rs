//! The catalogue of every metric family Detour's crates emit, with its kind
//! and its help text, so an exporter can write `# HELP` beside `# TYPE`.
//!
//! Install a `metrics` recorder, then call [`describe`] once: the
//! descriptions are handed to the recorder, which keeps them for the families
//! as they appear. The `detour` binary does this at start.

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
}
