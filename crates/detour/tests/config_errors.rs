//! Every bad configuration value is refused at load, naming its field (and,
//! for syntax and type errors, its line); the binary's `--test` says so.
#![allow(clippy::unwrap_used)]

use detour::app::Config;

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
    Config::from_toml(&with_file, None).unwrap();
}
