//! `/metrics` of the binary as a process: every family has `# HELP` and
//! `# TYPE`, and the build and the process describe themselves.
#![allow(clippy::unwrap_used)]

mod support;

use detour_testkit::client::RawConnection;
use detour_testkit::{Behavior, Upstream};

/// The family a sample line belongs to (histograms' series folded in).
fn family(sample: &str) -> &str {
    let name = sample.split(['{', ' ']).next().unwrap_or_default();
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

/// The value of the first sample of `name`.
fn value(text: &str, name: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_says_what_it_is_and_the_process_is_described() {
    let a = Upstream::start(Behavior::ok()).await.unwrap();
    let b = Upstream::start(Behavior::status(503)).await.unwrap();
    let dir = support::temp_dir("metrics");
    let file = dir.join("detour.toml");
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess_log = false\n\
         [upstreams.app]\nbackends = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}]\n[[routes]]\nupstream = \"app\"\n",
        a.addr(),
        b.addr()
    );
    std::fs::write(&file, config).unwrap();
    let mut d = support::start(&file);
    // Traffic, retries and a breaker or two: most families appear.
    let mut conn = RawConnection::connect(d.addr).await.unwrap();
    for _ in 0..20 {
        conn.send(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .unwrap();
        conn.read_response().await.unwrap();
    }
    let got = support::admin(d.admin.unwrap(), "GET", "/metrics", &[]).await;
    let text = String::from_utf8(got.body.to_vec()).unwrap();
    let families: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(family)
        .collect();
    assert!(families.len() >= 10, "{families:?}");
    for f in &families {
        assert!(text.contains(&format!("# TYPE {f} ")), "no TYPE for {f}");
        assert!(text.contains(&format!("# HELP {f} ")), "no HELP for {f}");
    }
    assert!(text.contains(&format!(
        "detour_build_info{{version=\"{}\"",
        env!("CARGO_PKG_VERSION")
    )));
    // Per backend, by class: A answered 200s, B 503s, and the other classes
    // are there at 0.
    let series = |addr: std::net::SocketAddr, class: &str| {
        format!("detour_backend_responses_total{{upstream=\"app\",backend=\"{addr}\",class=\"{class}\"}}")
    };
    assert!(value(&text, &series(a.addr(), "2xx")) > 0.0);
    assert!(value(&text, &series(b.addr(), "5xx")) > 0.0);
    assert_eq!(value(&text, &series(a.addr(), "4xx")), 0.0);
    assert_eq!(value(&text, &series(b.addr(), "error")), 0.0);
    // Event counters exist at 0 before their first event.
    let down = format!(
        "detour_health_transitions_total{{upstream=\"app\",backend=\"{}\",to=\"down\"}}",
        a.addr()
    );
    assert_eq!(value(&text, &down), 0.0);
    assert_eq!(
        value(
            &text,
            "detour_outlier_ejections_total{upstream=\"app\",reason=\"success_rate\"}"
        ),
        0.0
    );
    assert!(value(&text, "process_open_fds") >= 3.0);
    assert!(value(&text, "process_resident_memory_bytes") > 1e6);
    assert!(value(&text, "process_cpu_seconds_total") > 0.0);
    assert!(value(&text, "process_start_time_seconds") > 1.7e9);
    d.child.kill().unwrap();
    let _ = d.child.wait();
}
