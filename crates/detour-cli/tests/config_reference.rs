//! The configuration chapter's "Every key" table stays true: every key that
//! `detour --dump-config` writes for a configuration with every table
//! present is in it.
#![allow(clippy::unwrap_used)]

mod support;

const FULL: &str = r#"
[server]
listen = ["127.0.0.1:8080"]
[upstreams.app]
backends = [{ addr = "127.0.0.1:9001" }]
[upstreams.app.health]
kind = "http"
path = "/healthz"
[upstreams.app.concurrency]
[upstreams.app.discovery]
[upstreams.app.hedge]
[[routes]]
upstream = "app"
"#;

/// Every key of `table` as the reference names it: dotted, the upstream's
/// name as `NAME`, an array of tables' entries as `[]`.
fn keys(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
    for (k, v) in table {
        let key = match (prefix, k.as_str()) {
            ("upstreams", _) => "upstreams.NAME".to_string(),
            ("", _) => k.clone(),
            _ => format!("{prefix}.{k}"),
        };
        match v {
            toml::Value::Table(t) => keys(&key, t, out),
            toml::Value::Array(a) if a.first().is_some_and(toml::Value::is_table) => {
                if let Some(toml::Value::Table(t)) = a.first() {
                    keys(&format!("{key}[]"), t, out);
                }
            }
            _ => out.push(key),
        }
    }
}

#[test]
fn every_dumped_key_is_in_the_reference_table() {
    let dir = support::temp_dir("config-reference");
    let file = dir.join("full.toml");
    std::fs::write(&file, FULL).unwrap();
    let out = support::detour()
        .args(["--config", file.to_str().unwrap(), "--dump-config"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump: toml::Table = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    let mut all = Vec::new();
    keys("", &dump, &mut all);
    assert!(all.len() > 100, "the dump has every table: {}", all.len());

    let doc = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/src/configuration.md"
    );
    let doc = std::fs::read_to_string(doc).unwrap();
    let table = doc.split("## Every key").nth(1).unwrap();
    let missing: Vec<&String> = all
        .iter()
        .filter(|k| !table.contains(&format!("| `{k}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "not in the reference table: {missing:?}"
    );
}
