//! The `config` fuzz target's invariants (`tests/invariants/`) as a proptest
//! harness, so stable Rust checks them in `cargo test`: generated config
//! files (tables, keys and values the loaders know, edge values, and noise)
//! through the binary's and the library's loaders.
//!
//! `PROPTEST_CASES` sets the case count (default 64, to keep the suite
//! fast); `cargo xtask fuzz` raises it when it cannot run cargo-fuzz.

mod invariants;

use proptest::prelude::*;

fn cases() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(64);
    ProptestConfig::with_cases(cases)
}

/// A `key = value` line under one of the tables, with a value of the right
/// kind or not.
fn line() -> impl Strategy<Value = String> {
    let table = prop::sample::select(vec![
        "server",
        "server.limits",
        "server.paths",
        "server.http2",
        "server.forwarding",
        "server.retry",
        "server.pool",
        "admin",
        "log",
        "upstreams.a",
        "upstreams.a.retry",
        "upstreams.a.health",
    ]);
    let key = prop::sample::select(vec![
        "listen",
        "threads",
        "grace_period",
        "proxy_name",
        "max_connections",
        "max_header_size",
        "max_uri_size",
        "max_body_size",
        "header_read_timeout",
        "keepalive_timeout",
        "send_timeout",
        "normalize",
        "merge_slashes",
        "encoded_slashes",
        "upgrade_protocols",
        "request_id_header",
        "trusted_proxies",
        "max_concurrent_streams",
        "max_retries",
        "base_delay",
        "multiplier",
        "max_delay",
        "deadline",
        "enabled",
        "token",
        "level",
        "lb",
        "backends",
        "interval",
    ]);
    let value = prop::sample::select(vec![
        "0",
        "1",
        "-1",
        "18446744073709551615",
        "9223372036854775807",
        "1e308",
        "nan",
        "inf",
        "0.5",
        "true",
        "\"\"",
        "\"0s\"",
        "\"1s\"",
        "\"1000000000000s\"",
        "\"100ms\"",
        "\"keep\"",
        "\"reject\"",
        "\"h2c\"",
        "[\"127.0.0.1:0\"]",
        "[\"h2c\"]",
        "[\"websocket\"]",
        "[\"10.0.0.0/33\"]",
        "\"127.0.0.1:9901\"",
        "\"0.0.0.0:9901\"",
        "\"maglev\"",
        "\"info,x=[\"",
        "[{ addr = \"127.0.0.1:1\" }]",
        "[]",
        "{}",
    ]);
    (table, key, value).prop_map(|(t, k, v)| format!("[{t}]\n{k} = {v}\n"))
}

/// A route to upstream `a` (or to none).
fn route() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["a", "b"]),
        prop::sample::select(vec!["/", "x", "/api"]),
        prop::sample::select(vec!["*", "*.example.com", "a..b", ""]),
    )
        .prop_map(|(up, prefix, host)| {
            format!(
                "[[routes]]\nupstream = \"{up}\"\npath_prefix = \"{prefix}\"\nhost = \"{host}\"\n"
            )
        })
}

fn document() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (prop::collection::vec(line(), 0..8), prop::collection::vec(route(), 0..2))
            .prop_map(|(lines, routes)| {
                // A table may appear once only: merge a table's keys.
                let mut tables: Vec<(String, Vec<String>)> = Vec::new();
                for l in lines {
                    let (head, kv) = l.split_once('\n').unwrap_or((&l, ""));
                    match tables.iter_mut().find(|(t, _)| t == head) {
                        Some((_, kvs)) => {
                            let key = kv.split(' ').next();
                            if !kvs.iter().any(|k| k.split(' ').next() == key) {
                                kvs.push(kv.to_string());
                            }
                        }
                        None => tables.push((head.to_string(), vec![kv.to_string()])),
                    }
                }
                let mut doc: String = tables
                    .into_iter()
                    .map(|(t, kvs)| format!("{t}\n{}", kvs.concat()))
                    .collect();
                doc.push_str(&routes.concat());
                doc
            }),
        1 => any::<String>(),
    ]
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn config_loading_never_panics_and_accepted_configs_revalidate(doc in document()) {
        invariants::config(&doc);
    }
}

/// The harness is not vacuous: a full config is accepted by both loaders,
/// and a bad one by neither.
#[test]
fn the_invariants_hold_on_a_full_config() {
    let full = r#"
[server]
listen = ["127.0.0.1:0"]
[server.limits]
max_uri_size = 4096
[server.paths]
merge_slashes = true
[upstreams.app]
backends = [{ addr = "127.0.0.1:9001" }]
[[routes]]
upstream = "app"
path_prefix = "/api"
"#;
    invariants::config(full);
    assert!(detour_cli::app::config::Config::from_toml(full, None).is_ok());
    let bad = "[server]\nthreads = 0\n";
    invariants::config(bad);
    assert!(detour_server::ServerConfig::from_toml(bad).is_err());
}
