//! Every bad configuration value is refused at load, naming its field (and,
//! for syntax and type errors, its line); the binary's `--test` says so.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use detour_cli::app::Config;

const GOOD: &str = r#"
[server]
listen = ["127.0.0.1:0"]

[upstreams.app]
backends = [{ addr = "127.0.0.1:9001" }]

[[routes]]
upstream = "app"
"#;

fn with(extra: &str) -> String {
    format!("{GOOD}\n{extra}")
}

#[track_caller]
fn refused(text: &str, field: &str) {
    match Config::from_toml(text, None) {
        Ok(_) => panic!("accepted a bad configuration (expected an error about {field}):\n{text}"),
        Err(e) => {
            let shown = e.to_string();
            assert!(
                shown.contains(field),
                "the error should name {field:?}, got: {shown}"
            );
        }
    }
}

#[test]
fn the_good_configuration_loads() {
    let c = Config::from_toml(GOOD, None).unwrap();
    assert_eq!(c.upstreams.len(), 1);
}

#[test]
fn bad_values_name_their_field() {
    let cases: &[(&str, &str)] = &[
        // Unknown keys are errors, not silence.
        ("[admin]\nlisten = \"127.0.0.1:1\"\ntokn = \"x\"", "tokn"),
        ("[upstreams.app.retry]\nmax_retrys = 2", "max_retrys"),
        ("[upstreams.app.health]\nintervl = \"1s\"", "intervl"),
        ("[upstreams.app.breaker]\nopen_fr = \"1s\"", "open_fr"),
        (
            "[upstreams.app.outlier]\nconsecutive_5x = 1",
            "consecutive_5x",
        ),
        // Values out of range.
        (
            "[upstreams.app.retry]\nmultiplier = 0.5",
            "upstreams.app.retry.multiplier",
        ),
        (
            "[upstreams.app.retry]\nbudget_ratio = -1.0",
            "upstreams.app.retry",
        ),
        (
            "[upstreams.app.health]\nrise = 0",
            "upstreams.app.health.rise",
        ),
        (
            "[upstreams.app.health]\ntimeout = \"0s\"",
            "upstreams.app.health",
        ),
        (
            "[upstreams.app.breaker]\nconsecutive_failures = 0",
            "upstreams.app.breaker",
        ),
        (
            "[upstreams.app.outlier]\nmax_ejection_percent = 101",
            "upstreams.app.outlier",
        ),
        // Types and syntax.
        (
            "[upstreams.app.retry]\nbase_delay = \"soon\"",
            "upstreams.app.retry",
        ),
        (
            "[upstreams.app.health]\nkind = \"udp\"",
            "upstreams.app.health.kind",
        ),
        ("[log]\nformat = \"xml\"", "log.format"),
        ("[log]\nlevel = \"info,,=\"", "log.level"),
    ];
    for (extra, field) in cases {
        refused(&with(extra), field);
    }
    refused(
        &GOOD.replace("[server]\n", "[server]\nthreads = 0\n"),
        "server.threads",
    );
    // Counts that become semaphores, which panic past 2^61 permits.
    for (table, field) in [
        ("[server.limits]", "server.limits.max_connections"),
        ("[admin]", "admin.max_connections"),
    ] {
        for n in ["0", "9000000000000000000"] {
            let key = field.rsplit('.').next().unwrap();
            refused(&with(&format!("{table}\n{key} = {n}")), field);
        }
    }
    refused(
        &GOOD.replace("[server]\n", "[server]\nlisten = [\"nowhere\"]\n"),
        "server.listen",
    );
}

#[test]
fn cross_references_are_checked() {
    refused(
        "[server]\n[upstreams.app]\nbackends=[{addr=\"127.0.0.1:1\"}]\n[[routes]]\nupstream = \"nope\"",
        "routes[0].upstream",
    );
    refused(
        "[upstreams.app]\nlb = \"maglev\"\nbackends=[{addr=\"127.0.0.1:1\"}]\n[[routes]]\nupstream=\"app\"",
        "upstreams.app.hash_key",
    );
    refused(
        "[upstreams.app]\nlb = \"fastest\"\nbackends=[{addr=\"127.0.0.1:1\"}]\n[[routes]]\nupstream=\"app\"",
        "upstreams.app.lb",
    );
    refused(
        "[upstreams.app]\nbackends=[]\n[[routes]]\nupstream=\"app\"",
        "upstreams.app.backends",
    );
    refused(
        "[upstreams.app]\nbackends=[{addr=\"nowhere\"}]\n[[routes]]\nupstream=\"app\"",
        "upstreams.app.backends",
    );
    refused(
        "[upstreams.app]\nbackends=[{addr=\"127.0.0.1:1\"}]\n[[routes]]\nupstream=\"app\"\nhost=\"a*b\"",
        "routes[0].host",
    );
    refused(
        "[upstreams.app]\nbackends=[{addr=\"127.0.0.1:1\"}]\n[[routes]]\nupstream=\"app\"\npath_prefix=\"api\"",
        "routes[0].path_prefix",
    );
    refused(
        "[upstreams.app]\nbackends=[{addr=\"127.0.0.1:1\"}]",
        "routes",
    );
}

#[test]
fn syntax_errors_name_the_line() {
    let text = "[server]\nlisten = [\"127.0.0.1:0\"]\nthreads = \"two\"\n";
    let e = Config::from_toml(text, Some(std::path::Path::new("x.toml")))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("x.toml"), "{e}");
    assert!(e.contains("line 3"), "{e}");
    assert!(e.contains("server.threads"), "{e}");
}

#[test]
fn the_linter_warns_and_strict_refuses() {
    let dir = std::env::temp_dir().join(format!("detour-lint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("risky.toml");
    std::fs::write(
        &file,
        with("[upstreams.app.retry]\nbudget_ratio = 0.0\nbudget_min_per_second = 0\ndeadline = \"5s\""),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_detour");
    let run = |extra: &[&str]| {
        std::process::Command::new(bin)
            .args(["--config", file.to_str().unwrap(), "--test"])
            .args(extra)
            .output()
            .unwrap()
    };
    let lenient = run(&[]);
    let err = String::from_utf8_lossy(&lenient.stderr);
    assert!(lenient.status.success(), "{err}");
    assert!(
        err.contains("warning: upstreams.app.retry.max_retries, upstreams.app.retry.budget_ratio")
            && err.contains("retry budget"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&lenient.stdout).contains("configuration ok, 1 warning(s)"));
    let strict = run(&["--strict"]);
    assert_eq!(strict.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&strict.stderr).contains("refused by --strict"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_binary_test_flag_exits_zero_or_names_the_fault() {
    let dir = std::env::temp_dir().join(format!("detour-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    let bad = dir.join("bad.toml");
    std::fs::write(&good, GOOD).unwrap();
    std::fs::write(&bad, with("[upstreams.app.retry]\nmax_delay = \"forever\"")).unwrap();
    let bin = env!("CARGO_BIN_EXE_detour");
    let ok = std::process::Command::new(bin)
        .args(["--config", good.to_str().unwrap(), "--test"])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let no = std::process::Command::new(bin)
        .args(["--config", bad.to_str().unwrap(), "--test"])
        .output()
        .unwrap();
    assert!(!no.status.success());
    let err = String::from_utf8_lossy(&no.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("upstreams.app.retry"),
        "{err}"
    );
    let help = std::process::Command::new(bin)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("demo") && help.contains("--config") && help.contains("--test"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_documented_example_loads() {
    // The configuration the binary's issue and guide show, key for key.
    let text = r#"
[server]
listen = ["127.0.0.1:8080"]
threads = 1
grace_period = "10s"

[admin]
listen = "127.0.0.1:9901"

[upstreams.app]
lb = "round_robin"
hash_key = "header:x-user"
backends = [{ addr = "127.0.0.1:9001", weight = 1, priority = 0, region = "eu" }]

[upstreams.app.retry]
max_retries = 3
base_delay = "100ms"
multiplier = 2.0
max_delay = "5s"
per_try_timeout = "1s"
deadline = "10s"
retry_on_status = [502, 503, 504]
budget_ratio = 0.2

[upstreams.app.health]
kind = "http"
path = "/healthz"
interval = "1s"
timeout = "500ms"
rise = 2
fall = 3

[upstreams.app.outlier]
consecutive_5xx = 5
base_ejection = "30s"
max_ejection_percent = 50

[upstreams.app.breaker]
consecutive_failures = 5
open_for = "30s"
half_open_successes = 3

[[routes]]
host = "*"
path_prefix = "/"
upstream = "app"
"#;
    let c = Config::from_toml(text, None).unwrap();
    let app = &c.upstreams["app"];
    assert_eq!(app.backends[0].locality.as_deref(), Some("eu"));
    assert_eq!(app.retry.budget_ratio, 0.2);
    let with_dns = text.replace(
        "backends = [{ addr = \"127.0.0.1:9001\", weight = 1, priority = 0, region = \"eu\" }]",
        "discovery = { dns = \"app.internal:80\", interval = \"5s\" }",
    );
    let c = Config::from_toml(&with_dns, None).unwrap();
    assert_eq!(
        c.upstreams["app"].discovery.as_ref().unwrap().dns,
        ["app.internal:80"]
    );
    let with_file = text.replace(
        "backends = [{ addr = \"127.0.0.1:9001\", weight = 1, priority = 0, region = \"eu\" }]",
        "discovery = { file = \"backends.toml\" }",
    );
    // A relative path is the file's directory's; with no file, it is refused.
    let c = Config::from_toml(&with_file, Some(Path::new("/etc/detour/detour.toml"))).unwrap();
    assert_eq!(
        c.upstreams["app"]
            .discovery
            .as_ref()
            .unwrap()
            .file
            .as_deref(),
        Some(Path::new("/etc/detour/backends.toml"))
    );
    refused(&with_file, "upstreams.app.discovery.file");
}

/// The longest duration humantime reads: `Duration::MAX`.
const LONGEST: &str = "18446744073709551615s 999999999ns";

/// One duration setting: where it is declared, where the binary's file has
/// it, and whether zero is refused too.
struct DurationSetting {
    /// The declaring source file, under `crates/`.
    file: &'static str,
    /// The field's name in that file.
    field: &'static str,
    /// Every dotted path the binary's file reaches it by; empty when it is
    /// a library setting the binary does not expose (its crate's tests
    /// cover it).
    written_at: &'static [&'static str],
    /// Zero cannot work (a timeout, an interval).
    zero_refused: bool,
}

const fn setting(
    file: &'static str,
    field: &'static str,
    written_at: &'static [&'static str],
    zero_refused: bool,
) -> DurationSetting {
    DurationSetting {
        file,
        field,
        written_at,
        zero_refused,
    }
}

const CORE_PEER: &str = "detour-core/src/peer.rs";
const CORE_RETRY: &str = "detour-core/src/retry.rs";
const CORE_HEDGE: &str = "detour-core/src/hedge.rs";
const SERVER: &str = "detour-server/src/config.rs";
const UPSTREAM: &str = "detour-server/src/upstream/group/config.rs";
const ETCD: &str = "detour-server/src/upstream/group/etcd.rs";
const KUBERNETES: &str = "detour-server/src/upstream/group/kubernetes.rs";
const HEALTH: &str = "detour-health/src/active/config.rs";
const OUTLIER: &str = "detour-health/src/outlier/config.rs";
const BREAKER: &str = "detour-breaker/src/breaker/config.rs";
const BUDGET: &str = "detour-breaker/src/budget/config.rs";
const LIMIT: &str = "detour-breaker/src/limit/config.rs";
const FAILOVER: &str = "detour-lb/src/failover.rs";
const APP: &str = "detour-cli/src/app/config/mod.rs";

/// Every duration a user can write. A duration field added anywhere in the
/// crates without a line here fails `every_duration_field_is_listed`; one
/// listed here without a bound fails `every_duration_is_bounded`.
const DURATIONS: &[DurationSetting] = &[
    setting(
        CORE_HEDGE,
        "min_delay",
        &["upstreams.app.hedge.min_delay"],
        false,
    ),
    setting(SERVER, "grace_period", &["server.grace_period"], false),
    setting(
        SERVER,
        "keep_alive_interval",
        &["server.http2.keep_alive_interval"],
        true,
    ),
    setting(
        SERVER,
        "keep_alive_timeout",
        &["server.http2.keep_alive_timeout"],
        true,
    ),
    setting(
        SERVER,
        "header_read_timeout",
        &["server.limits.header_read_timeout"],
        true,
    ),
    setting(
        SERVER,
        "keepalive_timeout",
        &["server.limits.keepalive_timeout"],
        true,
    ),
    setting(
        SERVER,
        "send_timeout",
        &["server.limits.send_timeout"],
        true,
    ),
    setting(
        SERVER,
        "client_body_timeout",
        &["server.limits.client_body_timeout"],
        true,
    ),
    setting(
        SERVER,
        "client_body_min_rate_window",
        &["server.limits.client_body_min_rate_window"],
        true,
    ),
    setting(
        SERVER,
        "unsafe_max_idle",
        &["server.pool.unsafe_max_idle"],
        false,
    ),
    setting(
        APP,
        "header_read_timeout",
        &["admin.header_read_timeout"],
        true,
    ),
    setting(
        CORE_RETRY,
        "base_delay",
        &[
            "server.retry.base_delay",
            "upstreams.app.retry.base_delay",
            "routes[0].retry.base_delay",
        ],
        false,
    ),
    setting(
        CORE_RETRY,
        "max_delay",
        &[
            "server.retry.max_delay",
            "upstreams.app.retry.max_delay",
            "routes[0].retry.max_delay",
        ],
        false,
    ),
    setting(
        CORE_RETRY,
        "per_try_timeout",
        &[
            "server.retry.per_try_timeout",
            "upstreams.app.retry.per_try_timeout",
            "routes[0].retry.per_try_timeout",
        ],
        true,
    ),
    setting(
        CORE_RETRY,
        "deadline",
        &[
            "server.retry.deadline",
            "upstreams.app.retry.deadline",
            "routes[0].retry.deadline",
        ],
        true,
    ),
    setting(
        CORE_RETRY,
        "budget_window",
        &[
            "server.retry.budget_window",
            "upstreams.app.retry.budget_window",
            "routes[0].retry.budget_window",
        ],
        true,
    ),
    setting(
        CORE_PEER,
        "connect_timeout",
        &[
            "upstreams.app.timeouts.connect_timeout",
            "routes[0].timeouts.connect_timeout",
        ],
        true,
    ),
    setting(
        CORE_PEER,
        "tls_timeout",
        &[
            "upstreams.app.timeouts.tls_timeout",
            "routes[0].timeouts.tls_timeout",
        ],
        true,
    ),
    setting(
        CORE_PEER,
        "read_timeout",
        &[
            "upstreams.app.timeouts.read_timeout",
            "routes[0].timeouts.read_timeout",
        ],
        true,
    ),
    setting(
        CORE_PEER,
        "write_timeout",
        &[
            "upstreams.app.timeouts.write_timeout",
            "routes[0].timeouts.write_timeout",
        ],
        true,
    ),
    setting(
        CORE_PEER,
        "idle_timeout",
        &[
            "upstreams.app.timeouts.idle_timeout",
            "routes[0].timeouts.idle_timeout",
        ],
        false,
    ),
    setting(
        CORE_PEER,
        "per_try_timeout",
        &[
            "upstreams.app.timeouts.per_try_timeout",
            "routes[0].timeouts.per_try_timeout",
        ],
        true,
    ),
    setting(
        UPSTREAM,
        "interval",
        &["upstreams.app.discovery.interval"],
        true,
    ),
    // Need a whole etcd table around them: `etcd_settings_are_checked`.
    setting(ETCD, "timeout", &[], true),
    setting(ETCD, "progress_interval", &[], true),
    // Needs a whole Kubernetes table: `kubernetes_settings_are_checked`.
    setting(KUBERNETES, "timeout", &[], true),
    setting(
        FAILOVER,
        "window",
        &["upstreams.app.slow_start.window"],
        true,
    ),
    // Built by the upstream from its own defaults; LbOptions::validate bounds it.
    setting(FAILOVER, "health_refresh", &[], false),
    // The binary writes it as retry.budget_window (listed above).
    setting(BUDGET, "window", &[], true),
    setting(HEALTH, "interval", &["upstreams.app.health.interval"], true),
    setting(HEALTH, "timeout", &["upstreams.app.health.timeout"], true),
    setting(
        HEALTH,
        "fast_interval",
        &["upstreams.app.health.fast_interval"],
        true,
    ),
    setting(
        OUTLIER,
        "interval",
        &["upstreams.app.outlier.interval"],
        true,
    ),
    setting(
        OUTLIER,
        "base_ejection",
        &["upstreams.app.outlier.base_ejection"],
        true,
    ),
    setting(
        OUTLIER,
        "max_ejection",
        &["upstreams.app.outlier.max_ejection"],
        true,
    ),
    setting(
        BREAKER,
        "open_for",
        &["upstreams.app.breaker.open_for"],
        true,
    ),
    setting(
        BREAKER,
        "max_open_for",
        &["upstreams.app.breaker.max_open_for"],
        true,
    ),
    setting(
        BREAKER,
        "slower_than",
        &["upstreams.app.breaker.slow_call.slower_than"],
        true,
    ),
    // `window` is a count or a duration (FailureRate's and SlowCall's).
    setting(
        BREAKER,
        "window",
        &[
            "upstreams.app.breaker.failure_rate.window",
            "upstreams.app.breaker.slow_call.window",
        ],
        true,
    ),
    setting(
        LIMIT,
        "max_wait",
        &["upstreams.app.concurrency.max_wait"],
        false,
    ),
];

/// `GOOD` with `path` (dotted, `routes[0].x` indexing the array) set to `value`.
fn good_with(path: &str, value: &str) -> String {
    let mut doc: toml::Table = toml::from_str(GOOD).unwrap();
    let mut table = &mut doc;
    let segments: Vec<&str> = path.split('.').collect();
    let (last, parents) = segments.split_last().unwrap();
    for seg in parents {
        table = match seg.split_once('[') {
            Some((name, index)) => {
                let i: usize = index.trim_end_matches(']').parse().unwrap();
                table[name].as_array_mut().unwrap()[i]
                    .as_table_mut()
                    .unwrap()
            }
            None => table
                .entry(seg.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .unwrap(),
        };
    }
    table.insert(last.to_string(), toml::Value::String(value.into()));
    toml::to_string(&doc).unwrap()
}

#[track_caller]
fn refused_naming_exactly(text: &str, field: &str) {
    match Config::from_toml(text, None) {
        Ok(_) => panic!("accepted {field} in:\n{text}"),
        Err(e) => assert_eq!(e.field.as_deref(), Some(field), "{e}\n{text}"),
    }
}

#[test]
fn every_duration_is_bounded() {
    let longest = humantime_serde::re::humantime::parse_duration(LONGEST).unwrap();
    assert_eq!(longest, std::time::Duration::MAX);
    let mut checked = 0;
    for d in DURATIONS {
        for path in d.written_at {
            refused_naming_exactly(&good_with(path, LONGEST), path);
            refused_naming_exactly(&good_with(path, "10000000000000000000s"), path);
            refused_naming_exactly(&good_with(path, "366days"), path);
            if d.zero_refused {
                refused_naming_exactly(&good_with(path, "0s"), path);
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 52, "every path in DURATIONS was tried");
    // The bound itself is allowed: a year is long, not wrong.
    Config::from_toml(&good_with("server.grace_period", "365days"), None).unwrap();
    Config::from_toml(
        &good_with("upstreams.app.outlier.max_ejection", "365days"),
        None,
    )
    .unwrap();
}

/// The `with = "humantime_serde"` fields and `Window` fields of every
/// source file under `crates/`, as (file, field).
fn declared_durations() -> std::collections::BTreeSet<(String, String)> {
    let crates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = std::collections::BTreeSet::new();
    let mut dirs = vec![crates.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if path.is_dir() && !["target", "tests", "benches"].contains(&name.as_str()) {
                dirs.push(path);
            } else if name.ends_with(".rs") {
                let rel = path
                    .strip_prefix(&crates)
                    .unwrap()
                    .to_string_lossy()
                    .to_string();
                let text = std::fs::read_to_string(&path).unwrap();
                let mut pending = false;
                for line in text.lines().map(str::trim) {
                    pending |= line.starts_with("#[serde(") && line.contains("\"humantime_serde\"");
                    let Some((field, ty)) = line
                        .strip_prefix("pub ")
                        .and_then(|l| l.split_once(':'))
                        .filter(|(f, _)| f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                    else {
                        continue;
                    };
                    if pending || ty.trim() == "Window," {
                        found.insert((rel.clone(), field.to_string()));
                    }
                    pending = false;
                }
            }
        }
    }
    found
}

#[test]
fn every_duration_field_is_listed() {
    let declared = declared_durations();
    let listed: std::collections::BTreeSet<(String, String)> = DURATIONS
        .iter()
        .map(|d| (d.file.to_string(), d.field.to_string()))
        .collect();
    assert!(
        declared.len() >= 30,
        "the scan found the fields: {declared:?}"
    );
    let unlisted: Vec<_> = declared.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "duration fields without a line in DURATIONS (bound them with \
         detour_core::check_duration and list them): {unlisted:?}"
    );
    let stale: Vec<_> = listed.difference(&declared).collect();
    assert!(
        stale.is_empty(),
        "DURATIONS lists fields that are gone: {stale:?}"
    );
}

#[test]
fn huge_durations_never_reach_the_running_proxy() {
    // A Config deserialized without `from_toml` skips validation: `start`
    // must still refuse it, not panic later on `Instant + duration`.
    for path in [
        "upstreams.app.timeouts.read_timeout",
        "routes[0].retry.max_delay",
        "server.grace_period",
        "upstreams.app.outlier.base_ejection",
        "upstreams.app.breaker.open_for",
    ] {
        let text = good_with(path, "10000000000000000000s");
        let unchecked: Config = toml::from_str(&text).unwrap();
        let e = detour_cli::app::start(&unchecked, None, None, None).unwrap_err();
        assert!(e.to_string().contains(path), "{path}: {e}");
    }
    // And the binary refuses the file, naming the field, without a panic.
    let dir = std::env::temp_dir().join(format!("detour-huge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("huge.toml");
    std::fs::write(
        &file,
        good_with(
            "upstreams.app.timeouts.read_timeout",
            "10000000000000000000s",
        ),
    )
    .unwrap();
    for args in [vec!["--test"], vec![]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_detour"))
            .args(["--config", file.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("upstreams.app.timeouts.read_timeout"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_file_without_routes_is_refused_unless_asked_for() {
    let e = Config::from_toml("", None).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("routes"), "{e}");
    let e = Config::from_toml("[server]\nlisten = [\"127.0.0.1:0\"]\n", None).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("routes"), "{e}");
    let c = Config::from_toml("allow_no_routes = true\n", None).unwrap();
    assert!(c.routes.is_empty());
}

#[test]
fn retry_policies_inherit_key_by_key() {
    let text = r#"
[server.retry]
max_retries = 1
base_delay = "7ms"
budget_ratio = 0.5
[upstreams.a]
backends = [{ addr = "127.0.0.1:1" }]
retry = { base_delay = "20ms" }
[upstreams.b]
backends = [{ addr = "127.0.0.1:2" }]
[[routes]]
path_prefix = "/a"
upstream = "a"
retry = { max_delay = "1s" }
[[routes]]
upstream = "b"
"#;
    let c = Config::from_toml(text, None).unwrap();
    let a = &c.upstreams["a"].retry;
    assert_eq!(a.max_retries, 1, "from [server.retry]");
    assert_eq!(
        a.base_delay,
        std::time::Duration::from_millis(20),
        "its own"
    );
    assert_eq!(a.budget_ratio, 0.5, "the budget too");
    let b = &c.upstreams["b"].retry;
    assert_eq!((b.max_retries, b.base_delay.as_millis()), (1, 7));
    let route = c.routes[0].retry.as_ref().unwrap();
    assert_eq!(route.max_retries, 1, "from the upstream, from the server");
    assert_eq!(
        route.base_delay,
        std::time::Duration::from_millis(20),
        "the upstream's"
    );
    assert_eq!(
        route.max_delay,
        std::time::Duration::from_secs(1),
        "its own"
    );
}

#[test]
fn a_route_cannot_carry_a_retry_budget() {
    let text = r#"
[upstreams.a]
backends = [{ addr = "127.0.0.1:1" }]
[[routes]]
upstream = "a"
retry = { max_retries = 2, budget_ratio = 0.5 }
"#;
    let e = Config::from_toml(text, None).unwrap_err();
    assert_eq!(
        e.field.as_deref(),
        Some("routes[0].retry.budget_ratio"),
        "{e}"
    );
}

/// `upstreams.NAME.discovery.etcd`: each bad field refused by its name.
#[test]
fn etcd_settings_are_checked() {
    let with = |etcd: &str| format!("{GOOD}\n[upstreams.app.discovery.etcd]\n{etcd}\n");
    let good = "endpoints = [\"127.0.0.1:2379\"]\nprefix = \"/detour/app/\"";
    Config::from_toml(&with(good), None).unwrap();
    let at = "upstreams.app.discovery.etcd";
    let cases = [
        ("endpoints = []\nprefix = \"/p/\"", "endpoints"),
        ("endpoints = [\"no-port\"]\nprefix = \"/p/\"", "endpoints[0]"),
        ("endpoints = [\"a:1\", \"http://\"]\nprefix = \"/p/\"", "endpoints[1]"),
        ("endpoints = [\"a:1\"]\nprefix = \"\"", "prefix"),
        ("endpoints = [\"a:1\"]\nprefix = \"/p/\"\nuser = \"u\"", "user"),
        (
            "endpoints = [\"a:1\"]\nprefix = \"/p/\"\nuser = \"u\"\npassword_file = \"/nonexistent/pw\"",
            "password_file",
        ),
        (
            "endpoints = [\"http://a:1\"]\nprefix = \"/p/\"\ntls = { ca = \"/nonexistent/ca.pem\" }",
            "endpoints[0]",
        ),
        (
            "endpoints = [\"https://a:1\"]\nprefix = \"/p/\"\ntls = { ca = \"/nonexistent/ca.pem\" }",
            "tls.ca",
        ),
        (
            "endpoints = [\"https://a:1\"]\nprefix = \"/p/\"\ntls = { cert = \"/c.pem\" }",
            "tls.cert",
        ),
    ];
    for (etcd, field) in cases {
        refused_naming_exactly(&with(etcd), &format!("{at}.{field}"));
    }
    for field in ["timeout", "progress_interval"] {
        for value in ["0s", "366days", LONGEST] {
            let etcd = format!("{good}\n{field} = \"{value}\"");
            refused_naming_exactly(&with(&etcd), &format!("{at}.{field}"));
        }
    }
}

/// `upstreams.NAME.discovery.kubernetes`: each bad field refused by its name.
#[test]
fn kubernetes_settings_are_checked() {
    let with = |k: &str| format!("{GOOD}\n[upstreams.app.discovery.kubernetes]\n{k}\n");
    let good = "service = \"api\"\nnamespace = \"prod\"\nport = \"http\"";
    Config::from_toml(&with(good), None).unwrap();
    let numbered = "service = \"api\"\nnamespace = \"prod\"\nport = 8080";
    Config::from_toml(&with(numbered), None).unwrap();
    let at = "upstreams.app.discovery.kubernetes";
    let cases = [
        ("service = \"Api\"\nnamespace = \"prod\"\nport = \"http\"", "service"),
        ("service = \"api\"\nnamespace = \"\"\nport = \"http\"", "namespace"),
        ("service = \"api\"\nnamespace = \"prod\"\nport = 0", "port"),
        ("service = \"api\"\nnamespace = \"prod\"\nport = \"-x\"", "port"),
        (
            "service = \"api\"\nnamespace = \"prod\"\nport = \"http\"\nkubeconfig = \"/nonexistent/k.yaml\"",
            "kubeconfig",
        ),
    ];
    for (k, field) in cases {
        refused_naming_exactly(&with(k), &format!("{at}.{field}"));
    }
    for value in ["0s", "366days", LONGEST] {
        let k = format!("{good}\ntimeout = \"{value}\"");
        refused_naming_exactly(&with(&k), &format!("{at}.timeout"));
    }
}
