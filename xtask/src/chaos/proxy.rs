//! The three proxies under test: their configurations, finding (or
//! installing) their binaries, and running them as child processes that are
//! always stopped, even when the harness fails half-way.
//!
//! All three get the same knobs where they have them: one worker, three
//! backends round-robin, keep-alive to the backends, a 400 ms limit per
//! attempt, up to four attempts, retries on connection failures, timeouts and
//! 502/503/504 for idempotent requests only, active checks every 500 ms with
//! fall 2 / rise 2 where the proxy has them, and 2 s for passive removal.

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tokio::time::{sleep, Instant};

pub(crate) use crate::sys::{ensure_program, free_port, running_as_root, Guard};

/// Per-attempt limit for every proxy (Detour's `per_try_timeout`, nginx's
/// connect/read/send timeouts, HAProxy's `timeout connect` and `timeout server`).
pub(crate) const PER_TRY_MS: u64 = 400;

/// Where a proxy stands: alone, or in a chain of two of the same kind (the
/// inner in front of the backends, the outer in front of the inner).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hop {
    /// The only proxy.
    Only,
    /// The proxy in front of the backends, behind another.
    Inner,
    /// The proxy the clients reach, in front of another.
    Outer,
}

/// What a run changes in Detour's configuration (the other proxies have no
/// such knobs and run as they are).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tuning {
    /// Keep Detour's access log, which lists every attempt.
    pub(crate) access_log: bool,
    /// Where the proxy stands in a chain.
    pub(crate) hop: Hop,
    /// Hedge requests after 30 ms (`[upstreams.app.hedge] delay = "30ms"`).
    pub(crate) hedge: bool,
    /// hyper's HTTP/1.1 upstream client (`http1_client = "hyper"`) instead
    /// of Detour's own.
    pub(crate) hyper_client: bool,
}

/// The delay of Detour's hedges when a scenario hedges.
pub(crate) const HEDGE_DELAY_MS: u64 = 30;

/// The proxies compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `target/release/detour` with a generated TOML file.
    Detour,
    /// Debian's nginx.
    Nginx,
    /// Debian's HAProxy.
    Haproxy,
}

impl Kind {
    /// Every kind, in table order.
    pub(crate) const ALL: [Kind; 3] = [Kind::Detour, Kind::Nginx, Kind::Haproxy];

    /// The name in the tables.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Detour => "Detour",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "HAProxy",
        }
    }

    /// Parses a name given to `--only` (any case).
    pub(crate) fn parse(s: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s.trim()))
    }

    /// The configuration file's name in the run's directory.
    fn file_name(self) -> &'static str {
        match self {
            Kind::Detour => "detour.toml",
            Kind::Nginx => "nginx.conf",
            Kind::Haproxy => "haproxy.cfg",
        }
    }

    /// The configuration for a proxy listening on `127.0.0.1:port` in front
    /// of `backends`, with its files (pid, logs, temp) under `dir`.
    /// `tuning` changes only Detour's (see [`detour_config`]).
    pub(crate) fn config(
        self,
        port: u16,
        backends: &[SocketAddr],
        dir: &Path,
        tuning: Tuning,
    ) -> String {
        match self {
            Kind::Detour => detour_config(port, backends, tuning),
            Kind::Nginx => nginx_config(port, backends, dir, running_as_root()),
            Kind::Haproxy => haproxy_config(port, backends),
        }
    }

    /// The command line that runs `program` in the foreground with `config`.
    fn command(self, program: &Path, config: &Path) -> Command {
        let mut cmd = Command::new(program);
        match self {
            Kind::Detour => cmd.arg("--config").arg(config),
            Kind::Nginx => cmd.arg("-c").arg(config).args(["-g", "daemon off;"]),
            Kind::Haproxy => cmd.arg("-f").arg(config).arg("-db"),
        };
        cmd
    }
}

/// Detour: the defaults, plus what the comparison needs. Outlier ejection and
/// breakers stay on with their default thresholds; only their 30 s periods
/// are cut to 2 s (the same as nginx's `fail_timeout` here), or a backend
/// taken out could not come back within a run. The access log is off, as it
/// is for the others, unless asked for (it lists every attempt).
///
/// In a chain both hops turn the correlated-failure brake off (it would
/// stop every retry in the chained scenario, leaving nothing to compare);
/// nothing else changes, so each hop's retry budget keeps its defaults. The
/// outer one trusts the inner's `retried` marker
/// (`trusted_hops = ["detour"]`), so only one hop retries.
///
/// A hedging run adds `[upstreams.app.hedge]` with a fixed delay of
/// [`HEDGE_DELAY_MS`] and the other keys at their defaults.
pub(crate) fn detour_config(port: u16, backends: &[SocketAddr], tuning: Tuning) -> String {
    let access_log = tuning.access_log;
    let h1 = if tuning.hyper_client {
        "hyper"
    } else {
        "native"
    };
    let hedge = if tuning.hedge {
        format!("[upstreams.app.hedge]\ndelay = \"{HEDGE_DELAY_MS}ms\"\n\n")
    } else {
        String::new()
    };
    let chain = match tuning.hop {
        Hop::Only => "",
        Hop::Inner => "correlated_brake = false\n",
        Hop::Outer => "correlated_brake = false\ntrusted_hops = [\"detour\"]\n",
    };
    let level = if access_log {
        "warn,detour::access=info"
    } else {
        "warn"
    };
    let list: Vec<String> = backends
        .iter()
        .map(|a| format!("{{ addr = \"{a}\" }}"))
        .collect();
    format!(
        r#"# Generated by `cargo xtask chaos`.
[server]
listen = ["127.0.0.1:{port}"]
threads = 1
grace_period = "1s"

[server.pool]
http1_client = "{h1}"

[admin]
enabled = false

[log]
access_log = {access_log}
level = "{level}"

[upstreams.app]
lb = "round_robin"
backends = [{backends}]

[upstreams.app.retry]
max_retries = 3
per_try_timeout = "{PER_TRY_MS}ms"
{chain}
[upstreams.app.timeouts]
connect_timeout = "{PER_TRY_MS}ms"

[upstreams.app.health]
kind = "http"
path = "/healthz"
interval = "500ms"
timeout = "250ms"
rise = 2
fall = 2

[upstreams.app.outlier]
base_ejection = "2s"

[upstreams.app.breaker]
open_for = "2s"

{hedge}[[routes]]
upstream = "app"
"#,
        backends = list.join(", ")
    )
}

/// nginx as its users set up failover: passive only (active checks are in
/// the commercial version), `max_fails`/`fail_timeout` per server,
/// `proxy_next_upstream` on errors, timeouts and 502/503/504 — which nginx
/// applies to non-idempotent requests only when the request never left, as
/// long as `non_idempotent` is not added — and keep-alive to the backends.
pub(crate) fn nginx_config(port: u16, backends: &[SocketAddr], dir: &Path, root: bool) -> String {
    let d = dir.display();
    let mut servers = String::new();
    for a in backends {
        // Writing to a String cannot fail.
        let _ = writeln!(servers, "        server {a} max_fails=2 fail_timeout=2s;");
    }
    // As root, nginx's workers would switch to `nobody`, who may not reach
    // the run directory; this harness is no production setup.
    let user = if root { "user root;\n" } else { "" };
    format!(
        r#"# Generated by `cargo xtask chaos`.
{user}worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000;

    upstream app {{
{servers}        keepalive 32;
    }}

    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error timeout http_502 http_503 http_504;
            proxy_next_upstream_tries 4;
            proxy_connect_timeout {PER_TRY_MS}ms;
            proxy_send_timeout {PER_TRY_MS}ms;
            proxy_read_timeout {PER_TRY_MS}ms;
        }}
    }}
}}
"#
    )
}

/// HAProxy as its documentation suggests for failover: active HTTP checks,
/// `retries` with `option redispatch 1` (every retry may go to another
/// server), layer-7 retries with `retry-on`, and `disable-l7-retry` for POSTs
/// (the documentation's own example for keeping them from being replayed).
pub(crate) fn haproxy_config(port: u16, backends: &[SocketAddr]) -> String {
    let mut servers = String::new();
    for (i, a) in backends.iter().enumerate() {
        let name = char::from(b'a' + (i % 26) as u8);
        // Writing to a String cannot fail.
        let _ = writeln!(servers, "    server {name} {a} check");
    }
    format!(
        r#"# Generated by `cargo xtask chaos`.
global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect {PER_TRY_MS}ms
    timeout server {PER_TRY_MS}ms
    timeout client 30s
    timeout http-keep-alive 30s
    timeout check 250ms
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout 502 503 504

frontend chaos
    bind 127.0.0.1:{port}
    default_backend app

backend app
    balance roundrobin
    http-request disable-l7-retry if METH_POST
    option httpchk
    http-check send meth GET uri /healthz ver HTTP/1.1 hdr host chaos
    http-check expect status 200
    default-server inter 500ms fall 2 rise 2
{servers}"#
    )
}

/// A proxy running in front of the backends.
#[derive(Debug)]
pub(crate) struct Proxy {
    /// Where clients connect.
    pub(crate) addr: SocketAddr,
    guard: Guard,
    log: PathBuf,
}

impl Proxy {
    /// Writes `kind`'s configuration under `dir`, starts `program` with it,
    /// and waits until it answers a GET. The process ends after `limit`
    /// whatever happens. `tuning` is for Detour only.
    ///
    /// # Errors
    /// The configuration cannot be written, the program does not start, or it
    /// does not answer within 10 s (with the end of its log).
    pub(crate) async fn start(
        kind: Kind,
        program: &Path,
        dir: &Path,
        backends: &[SocketAddr],
        limit: Duration,
        tuning: Tuning,
    ) -> Result<Proxy, String> {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let port = free_port()?;
        let config = dir.join(kind.file_name());
        fs::write(&config, kind.config(port, backends, dir, tuning))
            .map_err(|e| format!("{}: {e}", config.display()))?;
        let log = dir.join(format!("{}.log", kind.name().to_ascii_lowercase()));
        let guard = Guard::spawn(kind.name(), kind.command(program, &config), &log, limit)?;
        let mut proxy = Proxy {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            guard,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if proxy.guard.exited() {
                return Err(format!(
                    "{} exited at start ({}): {}",
                    kind.name(),
                    proxy.guard.status(),
                    proxy.log_tail()
                ));
            }
            if tokio::net::TcpStream::connect(proxy.addr).await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} does not listen on {}: {}",
                    kind.name(),
                    proxy.addr,
                    proxy.log_tail()
                ));
            }
            sleep(Duration::from_millis(20)).await;
        }
        super::load::wait_ready(proxy.addr, Duration::from_secs(10))
            .await
            .map_err(|e| format!("{}: {e}; {}", kind.name(), proxy.log_tail()))?;
        Ok(proxy)
    }

    /// How the proxy's process ended, if it has (on its own: it is never
    /// told to before [`stop`](Self::stop)).
    pub(crate) fn ended(&mut self) -> Option<String> {
        self.guard.exited().then(|| self.guard.status())
    }

    /// Stops the proxy now.
    pub(crate) fn stop(&mut self) {
        self.guard.stop();
    }

    /// The last lines of the proxy's output, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        let text = strip_ansi(&fs::read_to_string(&self.log).unwrap_or_default());
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
        if tail.is_empty() {
            format!("(nothing in {})", self.log.display())
        } else {
            tail
        }
    }
}

/// `text` without terminal colour sequences (`ESC [ … letter`), which
/// Detour's log carries even into a file.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip up to and including the sequence's final letter.
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuning(hop: Hop) -> Tuning {
        Tuning {
            access_log: false,
            hop,
            hedge: false,
            hyper_client: false,
        }
    }

    #[test]
    fn a_hedging_run_hedges_after_30_ms() {
        let c = detour_config(
            8080,
            &backends(),
            Tuning {
                hedge: true,
                ..tuning(Hop::Only)
            },
        );
        let t: toml::Table = c.parse().unwrap();
        assert_eq!(
            t["upstreams"]["app"]["hedge"]["delay"].as_str(),
            Some("30ms")
        );
        assert!(!detour_config(8080, &backends(), tuning(Hop::Only)).contains("hedge"));
    }

    fn backends() -> Vec<SocketAddr> {
        (0..3)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 9001 + i)))
            .collect()
    }

    #[test]
    fn detour_config_lists_every_backend_and_the_per_try_timeout() {
        let c = detour_config(8080, &backends(), tuning(Hop::Only));
        assert!(c.contains(r#"listen = ["127.0.0.1:8080"]"#));
        assert!(c.contains(
            r#"backends = [{ addr = "127.0.0.1:9001" }, { addr = "127.0.0.1:9002" }, { addr = "127.0.0.1:9003" }]"#
        ));
        assert!(c.contains(r#"per_try_timeout = "400ms""#));
        assert!(c.contains("access_log = false"));
        // Loopback only.
        assert!(!c.contains("0.0.0.0"));
        assert!(!c.contains("trusted_hops") && !c.contains("correlated_brake"));
    }

    #[test]
    fn a_chain_of_detours_retries_at_one_hop() {
        let inner = detour_config(8080, &backends(), tuning(Hop::Inner));
        let outer = detour_config(8081, &backends()[..1], tuning(Hop::Outer));
        for c in [&inner, &outer] {
            assert!(c.contains("correlated_brake = false\n"), "{c}");
            assert!(
                !c.contains("budget"),
                "the budgets keep their defaults: {c}"
            );
            // Still valid TOML with the lines in the retry table.
            let t: toml::Table = c.parse().unwrap();
            assert!(t["upstreams"]["app"]["retry"]
                .get("correlated_brake")
                .is_some());
        }
        assert!(!inner.contains("trusted_hops"));
        let t: toml::Table = outer.parse().unwrap();
        assert_eq!(
            t["upstreams"]["app"]["retry"]["trusted_hops"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn nginx_config_keeps_its_files_in_the_run_directory() {
        let c = nginx_config(8080, &backends(), Path::new("/tmp/run"), false);
        assert!(c.contains("listen 127.0.0.1:8080;"));
        assert!(c.contains("server 127.0.0.1:9002 max_fails=2 fail_timeout=2s;"));
        assert!(c.contains("pid /tmp/run/nginx.pid;"));
        assert!(c.contains("proxy_next_upstream error timeout http_502 http_503 http_504;"));
        // nginx must keep its rule of never replaying a sent POST.
        assert!(!c.contains("non_idempotent"));
        assert!(!c.contains("user root"));
        assert!(nginx_config(1, &backends(), Path::new("/x"), true)
            .starts_with("# Generated by `cargo xtask chaos`.\nuser root;\n"));
        // Every brace closes.
        assert_eq!(c.matches('{').count(), c.matches('}').count());
    }

    #[test]
    fn haproxy_config_checks_every_server_and_spares_posts() {
        let c = haproxy_config(8080, &backends());
        assert!(c.contains("bind 127.0.0.1:8080"));
        assert!(c.contains("server a 127.0.0.1:9001 check"));
        assert!(c.contains("server c 127.0.0.1:9003 check"));
        assert!(c.contains("default-server inter 500ms fall 2 rise 2"));
        assert!(c.contains("http-request disable-l7-retry if METH_POST"));
    }

    #[test]
    fn colours_are_stripped_from_logs() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m ok"),
            "2026  INFO ok"
        );
    }

    #[test]
    fn only_names_parse_in_any_case() {
        assert_eq!(Kind::parse("haproxy"), Some(Kind::Haproxy));
        assert_eq!(Kind::parse(" NGINX"), Some(Kind::Nginx));
        assert_eq!(Kind::parse("envoy"), None);
    }
}
