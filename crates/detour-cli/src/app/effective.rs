//! The effective configuration as an operator reads it: what
//! `detour --dump-config` and `GET /config` print (every default filled in,
//! secrets redacted), and which changes a reload cannot apply live.
//!
//! Both work on the configuration serialized to a TOML table, so a key added
//! to any config struct is dumped and compared without a line here.

use std::collections::BTreeSet;

use toml::{Table, Value};

use super::config::Config;

/// What a secret's value is replaced with.
pub const REDACTED: &str = "<redacted>";

/// Key names whose values are secrets, alone or as a `_suffix`
/// (`token`, `admin_token`, `password`, `client_secret`).
const SECRET_WORDS: [&str; 3] = ["token", "password", "secret"];

/// The parts of the file a reload does not apply: the listeners and workers
/// and everything else the running server was built with (`[server]`, less
/// the retry policy that upstreams inherit and the TLS listeners'
/// certificate files, which a reload does re-read), the admin listener and
/// logging.
pub const RESTART_ONLY: [&str; 3] = ["server", "admin", "log"];

/// Whether the value under `key` is a secret.
fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| {
        key == *w
            || key
                .strip_suffix(w)
                .is_some_and(|rest| rest.ends_with('_') || rest.ends_with('-'))
    })
}

/// `config` as a TOML table.
///
/// # Errors
/// A value TOML cannot hold (an integer above `i64::MAX`).
fn table(config: &Config) -> Result<Table, toml::ser::Error> {
    Table::try_from(config)
}

/// Replace every secret in `table`, at any depth.
fn redact(table: &mut Table) {
    for (k, v) in table.iter_mut() {
        match v {
            Value::Table(t) => redact(t),
            Value::Array(items) => items
                .iter_mut()
                .filter_map(Value::as_table_mut)
                .for_each(redact),
            _ if is_secret(k) => *v = Value::String(REDACTED.into()),
            _ => {}
        }
    }
}

/// `config` as a TOML file with every default written out and every secret
/// replaced by [`REDACTED`], after a `# ` comment line per line of
/// `heading`. Loading it gives the same configuration, secrets aside.
///
/// # Errors
/// A value TOML cannot hold (an integer above `i64::MAX`).
pub fn to_toml(config: &Config, heading: &str) -> Result<String, toml::ser::Error> {
    let mut all = table(config)?;
    redact(&mut all);
    let mut out = String::new();
    for line in heading.lines() {
        out.push_str("# ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    // Plain top-level keys first (after a table header they would belong to
    // that table), then the tables in the order the docs present them.
    let (mut tables, plain): (Table, Table) = all.into_iter().partition(|(_, v)| is_table_like(v));
    out.push_str(&toml::to_string(&plain)?);
    let ordered = TABLE_ORDER.iter().map(|k| k.to_string());
    let rest: Vec<String> = tables
        .keys()
        .filter(|k| !TABLE_ORDER.contains(&k.as_str()))
        .cloned()
        .collect();
    for key in ordered.chain(rest) {
        if let Some(v) = tables.remove(&key) {
            let mut one = Table::new();
            one.insert(key, v);
            out.push('\n');
            out.push_str(&toml::to_string(&one)?);
        }
    }
    Ok(out)
}

/// The order of the top-level tables in a dump: the file's own order.
const TABLE_ORDER: [&str; 5] = ["server", "admin", "log", "upstreams", "routes"];

/// A table, or an array of tables (`[[routes]]`): what TOML writes under a
/// header of its own.
fn is_table_like(v: &Value) -> bool {
    match v {
        Value::Table(_) => true,
        Value::Array(items) => !items.is_empty() && items.iter().all(Value::is_table),
        _ => false,
    }
}

/// The fields, dotted, that differ between `old` and `new` and that a reload
/// cannot apply to a running process (see [`RESTART_ONLY`]). Values are not
/// named, so nothing secret leaks into a log line.
pub fn not_applied_live(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(old_t), Ok(new_t)) = (table(old), table(new)) else {
        // Unreachable for a validated config; the reload still applies.
        return vec!["(the configuration could not be compared)".into()];
    };
    let mut changed = BTreeSet::new();
    for key in RESTART_ONLY {
        diff(key, old_t.get(key), new_t.get(key), &mut changed);
    }
    changed
        .into_iter()
        .filter(|field| !applied_live(field, old))
        .collect()
}

/// The configuration a process runs after reloading `new` over `old`: `new`
/// with the parts only a restart applies (see [`RESTART_ONLY`]) still as in
/// `old`. This is what `GET /config` shows after a reload.
pub fn running(old: &Config, new: &Config) -> Config {
    let mut server = old.server.clone();
    server.retry = new.server.retry.clone();
    for (i, listener) in server.listeners.iter_mut().enumerate() {
        if listener.tls.is_some() {
            // Validated by the reload: a TLS listener keeps TLS, and its
            // files are the new ones.
            if let Some(tls) = new.server.listeners.get(i).and_then(|l| l.tls.clone()) {
                listener.tls = Some(tls);
            }
        }
    }
    Config {
        server,
        admin: old.admin.clone(),
        log: old.log.clone(),
        ..new.clone()
    }
}

/// Whether a reload applies a change of `field`: the retry policy
/// (upstreams inherit it), and the certificate files of a listener that
/// already serves TLS (re-read on reload).
fn applied_live(field: &str, old: &Config) -> bool {
    if field == "server.retry" || field.starts_with("server.retry.") {
        return true;
    }
    old.server
        .listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| l.tls.is_some())
        .any(|(i, _)| {
            let at = format!("server.listeners[{i}].tls");
            field == at
                || field.starts_with(&format!("{at}["))
                || field.starts_with(&format!("{at}."))
        })
}

/// Add to `out` the dotted paths under `at` whose values differ: tables
/// key by key, arrays of the same length item by item, anything else whole.
fn diff(at: &str, old: Option<&Value>, new: Option<&Value>, out: &mut BTreeSet<String>) {
    match (old, new) {
        (Some(Value::Table(a)), Some(Value::Table(b))) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                diff(&format!("{at}.{k}"), a.get(k), b.get(k), out);
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b)))
            if a.len() == b.len() && a.iter().chain(b).all(Value::is_table) =>
        {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(&format!("{at}[{i}]"), Some(x), Some(y), out);
            }
        }
        (a, b) if a != b => {
            out.insert(at.to_string());
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[server]
listen = ["127.0.0.1:0"]
[admin]
listen = "127.0.0.1:0"
token = "hunter2"
[upstreams.app]
backends = [{ addr = "127.0.0.1:9001", metadata = { api_token = "t0k" } }]
[[routes]]
upstream = "app"
retry = { max_retries = 1 }
"#;

    fn load(text: &str) -> Config {
        Config::from_toml(text, None).unwrap()
    }

    #[test]
    fn secrets_are_redacted_and_defaults_written_out() {
        let dump = to_toml(&load(BASE), "heading\nsecond").unwrap();
        assert!(dump.starts_with("# heading\n# second\n"), "{dump}");
        assert!(!dump.contains("hunter2") && !dump.contains("t0k"), "{dump}");
        assert!(dump.contains("token = \"<redacted>\""), "{dump}");
        assert!(dump.contains("api_token = \"<redacted>\""), "{dump}");
        for default in [
            "grace_period = \"10s\"",
            "max_retries = 3",
            "consecutive_failures = 5",
            "access_log = true",
        ] {
            assert!(dump.contains(default), "{default} missing:\n{dump}");
        }
        assert!(is_secret("Password") && is_secret("client-secret"));
        assert!(!is_secret("tokens_per_second") && !is_secret("sec"));
    }

    #[test]
    fn a_dump_loads_back_to_the_same_dump() {
        let first = to_toml(&load(BASE), "x").unwrap();
        let second = to_toml(&load(&first), "x").unwrap();
        assert_eq!(first, second);
    }

    #[test]
    fn restart_only_changes_are_named_field_by_field() {
        let old = load(BASE);
        let new = load(
            &BASE
                .replace(
                    "listen = [\"127.0.0.1:0\"]",
                    "listen = [\"127.0.0.1:0\"]\nthreads = 2\n[server.retry]\nmax_retries = 1",
                )
                .replace(
                    "token = \"hunter2\"",
                    "token = \"other\"\nmax_connections = 8",
                )
                .replace(
                    "[upstreams.app]",
                    "[log]\nlevel = \"debug\"\n[upstreams.app]",
                )
                .replace("9001", "9002"),
        );
        assert_eq!(
            not_applied_live(&old, &new),
            [
                "admin.max_connections",
                "admin.token",
                "log.level",
                "server.threads"
            ]
        );
        assert!(not_applied_live(&old, &old).is_empty());
        // What runs is the old for those fields and the new for the rest.
        let running = running(&old, &new);
        assert_eq!(running.server.threads, 1);
        assert_eq!(running.server.retry.max_retries, 1);
        assert_eq!(running.upstreams["app"].backends[0].addr.port(), 9002);
        assert!(not_applied_live(&old, &running).is_empty());
        assert_eq!(
            not_applied_live(&running, &new),
            not_applied_live(&old, &new)
        );
    }
}
