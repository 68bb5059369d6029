//! The `[upstreams.<name>.health]` and `[upstreams.<name>.outlier]` tables as
//! the binary's TOML spells them: durations as strings, status ranges,
//! unknown keys refused, nonsense refused with the field named.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use detour_health::{CheckKind, HealthConfig, OutlierConfig, StatusRange};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Upstream {
    #[serde(default)]
    health: Option<HealthConfig>,
    #[serde(default)]
    outlier: Option<OutlierConfig>,
}

#[derive(Debug, Deserialize)]
struct File {
    upstreams: BTreeMap<String, Upstream>,
}

fn parse(text: &str) -> Result<File, toml::de::Error> {
    toml::from_str(text)
}

#[test]
fn a_full_upstream_section_parses() {
    let file = parse(
        r#"
        [upstreams.app.health]
        kind = "http"
        path = "/healthz"
        method = "HEAD"
        host = "app.internal"
        expected_statuses = [200, "204-299", "3xx"]
        body_contains = "ok"
        interval = "1s"
        timeout = "500ms"
        rise = 3
        fall = 2
        jitter = 0.2
        fast_interval = "250ms"
        initially_healthy = true
        unejects = false

        [upstreams.app.outlier]
        consecutive_5xx = 3
        consecutive_gateway_failure = 0
        consecutive_local_origin_failure = 4
        interval = "5s"
        base_ejection = "10s"
        max_ejection = "2m"
        max_ejection_percent = 34
        jitter = 0.0
        success_rate = { enabled = false, min_hosts = 3, request_volume = 20, stdev_factor = 1.5 }
        failure_percentage = { enabled = true, threshold = 90, min_hosts = 2, request_volume = 10 }

        [upstreams.db.health]
        kind = "tcp"
        "#,
    )
    .unwrap();
    let app = &file.upstreams["app"];
    let h = app.health.clone().unwrap().validate().unwrap();
    assert_eq!(h.kind, CheckKind::Http);
    assert_eq!(h.path, "/healthz");
    assert_eq!(h.method, "HEAD");
    assert_eq!(h.host.as_deref(), Some("app.internal"));
    assert_eq!(
        h.expected_statuses,
        vec![
            StatusRange::single(200),
            StatusRange::new(204, 299),
            StatusRange::new(300, 399)
        ]
    );
    assert_eq!(h.body_contains.as_deref(), Some("ok"));
    assert_eq!(h.interval, Duration::from_secs(1));
    assert_eq!(h.timeout, Duration::from_millis(500));
    assert_eq!((h.rise, h.fall), (3, 2));
    assert_eq!(h.fast_interval, Duration::from_millis(250));
    assert!(h.initially_healthy && !h.unejects);

    let o = app.outlier.clone().unwrap().validate().unwrap();
    assert_eq!(
        (
            o.consecutive_5xx,
            o.consecutive_gateway_failure,
            o.consecutive_local_origin_failure
        ),
        (3, 0, 4)
    );
    assert_eq!(o.interval, Duration::from_secs(5));
    assert_eq!(o.base_ejection, Duration::from_secs(10));
    assert_eq!(o.max_ejection, Duration::from_secs(120));
    assert_eq!(o.max_ejection_percent, 34);
    assert!(!o.success_rate.enabled);
    assert_eq!(o.success_rate.request_volume, 20);
    assert!(o.failure_percentage.enabled);
    assert_eq!(o.failure_percentage.threshold, 90);

    let db = file.upstreams["db"].health.clone().unwrap();
    assert_eq!(db.kind, CheckKind::Tcp);
    assert_eq!(
        db.interval,
        Duration::from_secs(5),
        "defaults fill the rest"
    );
    assert!(file.upstreams["db"].outlier.is_none());
}

#[test]
fn an_empty_table_is_all_defaults() {
    let file = parse("[upstreams.app.health]\n[upstreams.app.outlier]\n").unwrap();
    let h = file.upstreams["app"].health.clone().unwrap();
    let d = HealthConfig::default();
    assert_eq!(
        (h.kind, h.path, h.interval, h.rise, h.fall),
        (d.kind, d.path, d.interval, d.rise, d.fall)
    );
    let o = file.upstreams["app"].outlier.clone().unwrap();
    assert_eq!(o.consecutive_5xx, 5);
    assert_eq!(o.max_ejection_percent, 50);
}

#[test]
fn unknown_keys_and_bad_values_are_refused_at_load() {
    let err = parse("[upstreams.app.health]\nintervall = \"1s\"\n").unwrap_err();
    assert!(err.to_string().contains("intervall"), "{err}");
    let err = parse("[upstreams.app.outlier]\nconsecutive5xx = 3\n").unwrap_err();
    assert!(err.to_string().contains("consecutive5xx"), "{err}");
    let err = parse("[upstreams.app.outlier.success_rate]\nstdev = 2.0\n").unwrap_err();
    assert!(err.to_string().contains("stdev"), "{err}");
    let err = parse("[upstreams.app.health]\ninterval = 5\n").unwrap_err();
    assert!(err.to_string().contains("interval"), "{err}");
    let err = parse("[upstreams.app.health]\nkind = \"grpc\"\n").unwrap_err();
    assert!(err.to_string().contains("grpc"), "{err}");
    let err = parse("[upstreams.app.health]\nexpected_statuses = [\"2xx-\"]\n").unwrap_err();
    assert!(err.to_string().contains("2xx-"), "{err}");
    let err = parse("[upstreams.app.health]\nexpected_statuses = [70000]\n").unwrap_err();
    assert!(err.to_string().contains("70000"), "{err}");
}

#[test]
fn validation_names_the_field_in_the_message() {
    let file = parse(
        r#"
        [upstreams.a.health]
        expected_statuses = [700]
        [upstreams.b.health]
        timeout = "0s"
        [upstreams.c.outlier]
        base_ejection = "1m"
        max_ejection = "30s"
        "#,
    )
    .unwrap();
    let err = |u: &str| {
        let up = &file.upstreams[u];
        match (&up.health, &up.outlier) {
            (Some(h), _) => h.clone().validate().unwrap_err().to_string(),
            (_, Some(o)) => o.clone().validate().unwrap_err().to_string(),
            _ => unreachable!(),
        }
    };
    assert_eq!(
        err("a"),
        "health.expected_statuses: 700 is not within 100-599"
    );
    assert_eq!(err("b"), "health.timeout: must be longer than zero");
    assert_eq!(
        err("c"),
        "outlier.max_ejection: 30s is shorter than base_ejection 60s"
    );
}
