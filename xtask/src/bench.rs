//! `cargo xtask bench`: Detour, nginx and HAProxy side by side under wrk.
//!
//! One fast backend (nginx answering `return 200`) and three proxies in front of
//! it, each on one worker thread. The load generator and the backend share one
//! core, each proxy gets the other (when the machine has two or more). Every
//! round runs every target at every connection count, in an order that rotates
//! from round to round; the table shows medians over rounds.
//!
//! CPU time is read from `/proc/PID/task/TID/schedstat` (nanoseconds) for the
//! proxy's processes and threads before and after each run, so CPU per request
//! counts only the proxy's own work, whatever else the machine does. Memory is
//! the highest `RssAnon` (anonymous resident memory, so the binary's own code
//! pages do not count) sampled every 100 ms during the run (all the proxy's
//! processes added up).
//!
//! Results: a markdown table on stdout and in `target/bench/latest.md`, one row
//! per target and connection count appended to `xtask/bench-history.tsv` (kept
//! in the repository, so the next run compares Detour with its own last run),
//! and the section between the `bench:start` and `bench:end` markers of
//! `docs/src/performance.md` replaced with the new table.

// A synchronous harness driving processes in real time: no tokio clock to pause.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::sys::{ensure_program, find_program, free_port, Guard};

mod idle;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Options from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// Rounds; the table shows the median of each figure.
    pub rounds: usize,
    /// Length of one wrk run.
    pub duration: Duration,
    /// Keep-alive connections, one set of runs each.
    pub connections: Vec<usize>,
    /// Targets to run (names as in the table, lower case).
    pub only: Option<Vec<String>>,
    /// Do not touch `docs/src/performance.md` or the history file.
    pub dry: bool,
    /// Idle keep-alive connections held beside 64 busy ones in the last
    /// row; 0 leaves the row out.
    pub idle: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rounds: 3,
            duration: Duration::from_secs(10),
            connections: vec![64, 256],
            only: None,
            dry: false,
            idle: 10_000,
        }
    }
}

impl Options {
    /// Parse `--rounds N --secs N --conns 64,256 --only detour,nginx --idle N --dry`.
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match a.as_str() {
                "--rounds" => o.rounds = parse_num(&value("--rounds")?, "--rounds")?,
                "--secs" => {
                    o.duration = Duration::from_secs(parse_num(&value("--secs")?, "--secs")? as u64)
                }
                "--conns" => {
                    o.connections = value("--conns")?
                        .split(',')
                        .map(|c| parse_num(c, "--conns"))
                        .collect::<Result<_, _>>()?
                }
                "--only" => {
                    o.only = Some(
                        value("--only")?
                            .split(',')
                            .map(|s| s.trim().to_ascii_lowercase())
                            .collect(),
                    )
                }
                "--dry" => o.dry = true,
                "--idle" => {
                    let v = value("--idle")?;
                    o.idle = if v.trim() == "0" {
                        0
                    } else {
                        parse_num(&v, "--idle")?
                    }
                }
                other => return Err(format!("unknown option {other}")),
            }
        }
        if o.rounds == 0 || o.connections.is_empty() || o.duration.is_zero() {
            return Err("--rounds, --secs and --conns must be positive".into());
        }
        Ok(o)
    }
}

fn parse_num(s: &str, name: &str) -> Result<usize, String> {
    s.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{name}: expected a positive number, got {s:?}"))
}

/// One wrk run against one target.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    cpu_us_per_req: Option<f64>,
    rss_mb: Option<f64>,
}

/// What `wrk --latency` printed, reduced to the figures we keep.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct WrkOutput {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    errors: u64,
}

/// Parse wrk's text output.
fn parse_wrk(out: &str) -> Option<WrkOutput> {
    let mut w = WrkOutput::default();
    let mut seen = (false, false, false);
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            w.rps = v.trim().parse().ok()?;
            seen.0 = true;
        } else if let Some(v) = t.strip_prefix("50%") {
            w.p50_ms = parse_duration_ms(v.trim())?;
            seen.1 = true;
        } else if let Some(v) = t.strip_prefix("99%") {
            w.p99_ms = parse_duration_ms(v.trim())?;
            seen.2 = true;
        } else if t.contains("requests in") {
            w.requests = t.split_whitespace().next()?.parse().ok()?;
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            w.errors += v.trim().parse::<u64>().ok()?;
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for part in v.split(',') {
                if let Some(n) = part.split_whitespace().nth(1) {
                    w.errors += n.parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    (seen.0 && seen.1 && seen.2).then_some(w)
}

/// "1.23ms", "812.00us", "1.02s" → milliseconds.
fn parse_duration_ms(s: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    num.trim().parse::<f64>().ok().map(|v| v * scale)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

// ---------------------------------------------------------------------------
// Processes

/// A process and all its descendants (nginx's worker, the proxy under
/// `timeout` and `taskset`).
fn family(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        all.extend(children_of(all[i]));
        i += 1;
    }
    all
}

fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let p = t.path().join("children");
        if let Ok(s) = fs::read_to_string(p) {
            out.extend(s.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        }
    }
    out
}

/// CPU time of every thread of `pids`, in nanoseconds.
fn cpu_ns(pids: &[u32]) -> u64 {
    let mut total = 0;
    for pid in pids {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            if let Ok(s) = fs::read_to_string(t.path().join("schedstat")) {
                total += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total
}

/// Anonymous resident memory (`RssAnon`) of `pids` added up, in kB: the
/// heap and stacks, not the binary's own code pages.
fn anon_kb(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("RssAnon:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .sum()
}

fn wait_listening(port: u16, what: &str) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{what} is not listening on {addr} after 15 s"))
}

/// Send one GET and check for a 200, so a target is known to work before it
/// is measured.
fn check_ok(port: u16, what: &str) -> Result<(), String> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    while Instant::now() < deadline {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
            let mut buf = String::new();
            s.read_to_string(&mut buf)?;
            Ok(buf)
        })();
        match attempt {
            Ok(r) if r.starts_with("HTTP/1.1 200") => return Ok(()),
            Ok(r) => last = r.lines().next().unwrap_or("").to_string(),
            Err(e) => last = e.to_string(),
        }
        thread::sleep(Duration::from_millis(100));
    }
    Err(format!("{what} does not answer 200 on port {port}: {last}"))
}

/// `taskset -c CORE` in front of a command when pinning is possible.
fn pinned(core: Option<usize>, program: &str) -> Command {
    match core {
        Some(c) if find_program("taskset").is_some() => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", &c.to_string(), program]);
            cmd
        }
        _ => Command::new(program),
    }
}

// ---------------------------------------------------------------------------
// Configurations

fn nginx_backend_conf(dir: &Path, port: u16) -> String {
    format!(
        "worker_processes 1;\ndaemon off;\npid {d}/backend.pid;\nerror_log {d}/backend-error.log warn;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 10000000;\n  keepalive_timeout 300s;\n\
           client_body_temp_path {d}/b-body;\n  proxy_temp_path {d}/b-proxy;\n\
           fastcgi_temp_path {d}/b-fcgi;\n  uwsgi_temp_path {d}/b-uwsgi;\n  scgi_temp_path {d}/b-scgi;\n\
           server {{\n    listen 127.0.0.1:{port};\n\
             location / {{ return 200 \"hello from the bench backend\\n\"; }}\n  }}\n}}\n",
        d = dir.display()
    )
}

/// nginx as its users run it in front of one backend: upstream keep-alive,
/// retries on errors and timeouts (its default), passive health checks
/// (`max_fails`), no access log, one worker, `max_conns` connections.
fn nginx_proxy_conf(dir: &Path, ports: Ports, backend: u16, max_conns: usize) -> String {
    let Ports { h1: port, h2c, tls } = ports;
    format!(
        "worker_processes 1;\ndaemon off;\npid {d}/proxy.pid;\nerror_log {d}/proxy-error.log warn;\n\
         events {{ worker_connections {max_conns}; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 10000000;\n\
           client_body_temp_path {d}/p-body;\n  proxy_temp_path {d}/p-proxy;\n\
           fastcgi_temp_path {d}/p-fcgi;\n  uwsgi_temp_path {d}/p-uwsgi;\n  scgi_temp_path {d}/p-scgi;\n\
           upstream app {{\n    server 127.0.0.1:{backend} max_fails=3 fail_timeout=10s;\n\
             keepalive 1024;\n    keepalive_requests 10000000;\n  }}\n\
           server {{\n    listen 127.0.0.1:{port};\n    listen 127.0.0.1:{h2c} http2;\n\
             listen 127.0.0.1:{tls} ssl http2;\n    ssl_certificate {d}/cert.pem;\n\
             ssl_certificate_key {d}/key.pem;\n    location / {{\n\
               proxy_pass http://app;\n      proxy_http_version 1.1;\n\
               proxy_set_header Connection \"\";\n\
               proxy_next_upstream error timeout http_502 http_503 http_504;\n\
               proxy_next_upstream_tries 4;\n    }}\n  }}\n}}\n",
        d = dir.display()
    )
}

/// HAProxy as its users run it: one thread, active health checks, retries
/// with redispatch, connection reuse, no log, `max_conns` connections.
fn haproxy_conf(dir: &Path, ports: Ports, backend: u16, max_conns: usize) -> String {
    let Ports { h1: port, h2c, tls } = ports;
    format!(
        "global\n  nbthread 1\n  maxconn {max_conns}\n  no strict-limits\n\n\
         defaults\n  mode http\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n\
           option http-keep-alive\n  http-reuse safe\n  retries 3\n  option redispatch\n\
           retry-on conn-failure empty-response response-timeout 502 503 504\n\n\
         frontend fe\n  bind 127.0.0.1:{port}\n  bind 127.0.0.1:{h2c} proto h2\n\
           bind 127.0.0.1:{tls} ssl crt {d}/combined.pem alpn h2,http/1.1\n  default_backend app\n\n\
         backend app\n  option httpchk GET /\n\
           server b1 127.0.0.1:{backend} check inter 1s fall 3 rise 2\n",
        d = dir.display()
    )
}

/// Detour's ordinary configuration: one worker, retries, active health
/// checks, outlier detection and breakers on (their defaults), no access log,
/// `max_conns` connections. `h1` is the HTTP/1.1 upstream client: `hyper` or
/// `native`.
fn detour_conf(
    dir: &Path,
    ports: Ports,
    admin: u16,
    backend: u16,
    h1: &str,
    max_conns: usize,
) -> String {
    let Ports { h1: port, h2c, tls } = ports;
    format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\nthreads = 1\n\n\
         [server.limits]\nmax_connections = {max_conns}\n\n\
         [[server.listeners]]\naddr = \"127.0.0.1:{h2c}\"\nprotocols = [\"h2\"]\n\n\
         [[server.listeners]]\naddr = \"127.0.0.1:{tls}\"\n\
         tls = {{ cert = \"{d}/cert.pem\", key = \"{d}/key.pem\" }}\nprotocols = [\"h2\", \"http/1.1\"]\n\n\
         [server.pool]\nmax_idle_per_peer = 1024\nhttp1_client = \"{h1}\"\n\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n\n\
         [log]\naccess_log = false\nlevel = \"warn\"\n\n\
         [upstreams.app]\nbackends = [{{ addr = \"127.0.0.1:{backend}\" }}]\n\n\
         [upstreams.app.health]\ninterval = \"1s\"\npath = \"/\"\nfall = 3\nrise = 2\n\n\
         [[routes]]\nupstream = \"app\"\n",
        d = dir.display()
    )
}

/// A proxy's listening ports: HTTP/1.1, HTTP/2 by prior knowledge, TLS.
#[derive(Debug, Clone, Copy)]
struct Ports {
    h1: u16,
    h2c: u16,
    tls: u16,
}

impl Ports {
    fn free() -> Result<Ports, String> {
        Ok(Ports {
            h1: free_port()?,
            h2c: free_port()?,
            tls: free_port()?,
        })
    }
}

/// A self-signed certificate for 127.0.0.1 and localhost, by openssl:
/// `cert.pem`, `key.pem` and both in `combined.pem` (HAProxy's form).
fn make_certificate(dir: &Path) -> Result<(), String> {
    let ok = Command::new("openssl")
        .current_dir(dir)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return Err("openssl could not make a test certificate".into());
    }
    let read = |f: &str| fs::read_to_string(dir.join(f)).map_err(|e| format!("{f}: {e}"));
    let combined = format!("{}{}", read("cert.pem")?, read("key.pem")?);
    fs::write(dir.join("combined.pem"), combined).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------
// The run

/// A proxy (or the backend itself) that wrk is pointed at.
struct Target {
    name: &'static str,
    port: u16,
    /// HTTP/2 by prior knowledge, and HTTP/2 over TLS (not for `direct`).
    h2c_port: Option<u16>,
    tls_port: Option<u16>,
    /// `None` for the direct row: nothing in between to measure.
    proc: Option<Guard>,
}

impl Target {
    fn proxy(name: &'static str, ports: Ports, proc: Guard) -> Target {
        Target {
            name,
            port: ports.h1,
            h2c_port: Some(ports.h2c),
            tls_port: Some(ports.tls),
            proc: Some(proc),
        }
    }
}

/// Start everything, measure, write the results. Returns whether it ran.
pub fn run(root: &Path, opts: &Options) -> Result<(), String> {
    ensure_program("wrk", "wrk")?;
    ensure_program("h2load", "nghttp2-client")?;
    let nginx = ensure_program("nginx", "nginx")?;
    let haproxy = ensure_program("haproxy", "haproxy")?;
    let (detour_bin, floor_bin) = build_binaries(root)?;

    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    // Load generator and backend on core 0, the proxy under test on core 1.
    let (gen_core, proxy_core) = if cores >= 2 {
        (Some(0), Some(1))
    } else {
        (None, None)
    };

    // Every proxy inherits this process's open-files limit: enough for the
    // idle row's connections, their upstream side and the busy ones.
    // (HAProxy counts two descriptors per connection, client and server.)
    let files = idle::raise_open_files((opts.idle as u64 * 3).max(65_536));
    if opts.idle > 0 && files < opts.idle as u64 + 4096 {
        return Err(format!(
            "{} idle connections need an open-files limit of at least {}, and this one is {files} \
             (raise `ulimit -n`, or pass a smaller `--idle`)",
            opts.idle,
            opts.idle + 4096
        ));
    }
    let dir = root.join("target/bench/run");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    ensure_program("openssl", "openssl")?;
    make_certificate(&dir)?;
    // Every process ends with the run, or at the latest when this limit
    // passes should the harness itself be killed. Generous on purpose: it
    // only matters then, and a limit that ran out mid-run killed the
    // backend under the idle rows (`--rounds 5 --secs 15` took 29 minutes
    // against a limit of 27). Each round runs every target at each
    // connection count and on both HTTP/2 loads; the idle rows run each
    // proxy twice more, with warm-ups and settling between.
    let runs = opts.rounds * (opts.connections.len() * 6 + 10) + 5 * 4 + 12;
    let limit = Duration::from_secs(runs as u64 * (opts.duration.as_secs() + 2) + 600);
    let setup = Setup {
        dir,
        limit,
        proxy_core,
        nginx: nginx.to_string_lossy().into_owned(),
        haproxy: haproxy.to_string_lossy().into_owned(),
        detour_bin,
        floor_bin,
        max_conns: opts.idle + 4096,
    };
    let backend_port = free_port()?;
    let conf = setup.write("backend.conf", nginx_backend_conf(&setup.dir, backend_port))?;
    let mut cmd = pinned(gen_core, &setup.nginx);
    cmd.args(["-e", "stderr", "-c"]).arg(&conf);
    let _backend = setup.spawn("backend", cmd)?;
    wait_listening(backend_port, "the backend")?;

    let targets = setup.start_targets(opts, backend_port)?;
    for t in &targets {
        check_ok(t.port, t.name)?;
    }
    // Warm-up: connection pools filled, caches and allocator arenas grown.
    for t in &targets {
        wrk(gen_core, t, 256, Duration::from_secs(2))?;
    }
    let loads: Vec<Load> = opts
        .connections
        .iter()
        .map(|&c| Load::H1(c))
        .chain([Load::H2(H2::Clear), Load::H2(H2::Tls)])
        .collect();
    let samples = measure(gen_core, &targets, &loads, opts)?;
    let rows = summarize(&targets, &loads, &samples);
    let mut idle_rows = Vec::new();
    if opts.idle > 0 {
        // Fresh proxies: memory freed after the loads above would be taken
        // up again by the idle connections and hide what they cost.
        drop(targets);
        let targets = setup.start_targets(opts, backend_port)?;
        for t in &targets {
            check_ok(t.port, t.name)?;
        }
        for t in targets.iter().filter(|t| t.proc.is_some()) {
            println!(
                "idle · {} · {} idle connections beside 64 busy",
                t.name, opts.idle
            );
            let r = idle::measure(gen_core, t, opts.idle, opts.duration)?;
            println!(
                "idle · {:<12} {:.2} kB per idle connection, busy p99 {:.2} ms alone, {:.2} ms beside, {} of {} still open",
                r.target,
                r.per_conn_kb(),
                r.p99_alone_ms,
                r.p99_beside_ms,
                r.still_open,
                r.held
            );
            idle_rows.push(r);
        }
    }
    write_results(root, opts, &rows, &idle_rows, cores)
}

/// Build the detour binary and the hyper floor (release); their paths.
fn build_binaries(root: &Path) -> Result<(PathBuf, PathBuf), String> {
    println!("building the detour binary and the hyper floor (release)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for (package, kind, name) in [
        ("detour-cli", "--bin", "detour"),
        ("detour-server", "--example", "hyper_floor"),
    ] {
        let built = Command::new(&cargo)
            .current_dir(root)
            .args(["build", "--release", "--quiet", "-p", package, kind, name])
            .status()
            .is_ok_and(|s| s.success());
        if !built {
            return Err(format!(
                "cargo build --release -p {package} {kind} {name} failed"
            ));
        }
    }
    Ok((
        root.join("target/release/detour"),
        root.join("target/release/examples/hyper_floor"),
    ))
}

/// Where the run keeps its files and how it starts the proxies.
struct Setup {
    dir: PathBuf,
    limit: Duration,
    proxy_core: Option<usize>,
    nginx: String,
    haproxy: String,
    detour_bin: PathBuf,
    floor_bin: PathBuf,
    /// Every proxy's connection limit (the idle row's connections and more).
    max_conns: usize,
}

impl Setup {
    fn write(&self, name: &str, text: String) -> Result<PathBuf, String> {
        let p = self.dir.join(name);
        fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(p)
    }

    fn spawn(&self, name: &str, cmd: Command) -> Result<Guard, String> {
        Guard::spawn(name, cmd, &self.dir.join(format!("{name}.log")), self.limit)
    }

    /// Start every proxy `opts` asks for, in front of the backend.
    fn start_targets(&self, opts: &Options, backend_port: u16) -> Result<Vec<Target>, String> {
        let dir = &self.dir;
        let proxy_core = self.proxy_core;
        let (nginx, haproxy) = (&self.nginx, &self.haproxy);
        let (detour_bin, floor_bin) = (&self.detour_bin, &self.floor_bin);
        let write = |name: &str, text: String| self.write(name, text);
        let spawn = |name: &str, cmd: Command| self.spawn(name, cmd);
        let wanted = |name: &str| {
            opts.only
                .as_ref()
                .is_none_or(|o| o.iter().any(|n| n == &name.to_ascii_lowercase()))
        };
        let mut targets = Vec::new();
        if wanted("direct") {
            targets.push(Target {
                name: "direct",
                port: backend_port,
                h2c_port: None,
                tls_port: None,
                proc: None,
            });
        }
        // Detour with each HTTP/1.1 upstream client: its own (the default)
        // and hyper's (`--only detour,hyper`).
        for (key, name, h1) in [
            ("detour", "Detour", "native"),
            ("hyper", "Detour hyper", "hyper"),
        ] {
            if !wanted(key) {
                continue;
            }
            let ports = Ports::free()?;
            let admin = free_port()?;
            let conf = write(
                &format!("{key}.toml"),
                detour_conf(dir, ports, admin, backend_port, h1, self.max_conns),
            )?;
            let mut cmd = pinned(proxy_core, &detour_bin.to_string_lossy());
            cmd.arg("--config").arg(&conf);
            let p = spawn(key, cmd)?;
            targets.push(Target::proxy(name, ports, p));
        }
        if wanted("floor") {
            // hyper's server and client with nothing in between: what any proxy
            // built on them costs at least (crates/detour-server/examples).
            let port = free_port()?;
            let mut cmd = pinned(proxy_core, &floor_bin.to_string_lossy());
            cmd.arg(format!("127.0.0.1:{port}"))
                .arg(format!("127.0.0.1:{backend_port}"));
            let p = spawn("floor", cmd)?;
            targets.push(Target {
                name: "hyper floor",
                port,
                h2c_port: None,
                tls_port: None,
                proc: Some(p),
            });
        }
        if wanted("nginx") {
            let ports = Ports::free()?;
            let conf = write(
                "proxy.conf",
                nginx_proxy_conf(dir, ports, backend_port, self.max_conns),
            )?;
            let mut cmd = pinned(proxy_core, nginx);
            cmd.args(["-e", "stderr", "-c"]).arg(&conf);
            let p = spawn("nginx", cmd)?;
            targets.push(Target::proxy("nginx", ports, p));
        }
        if wanted("haproxy") {
            let ports = Ports::free()?;
            let conf = write(
                "haproxy.cfg",
                haproxy_conf(dir, ports, backend_port, self.max_conns),
            )?;
            let mut cmd = pinned(proxy_core, haproxy);
            cmd.arg("-db").arg("-f").arg(&conf);
            let p = spawn("haproxy", cmd)?;
            targets.push(Target::proxy("HAProxy", ports, p));
        }
        Ok(targets)
    }
}

/// Every round of every load against every target.
fn measure(
    gen_core: Option<usize>,
    targets: &[Target],
    loads: &[Load],
    opts: &Options,
) -> Result<BTreeMap<(Load, &'static str), Vec<Sample>>, String> {
    let mut samples: BTreeMap<(Load, &'static str), Vec<Sample>> = BTreeMap::new();
    // Every round of one load before the next load: RSS only grows, so an
    // HTTP/1.1 row measured after an HTTP/2 round (a thousand streams in
    // flight) would report that load's memory, not its own.
    for &load in loads {
        for round in 0..opts.rounds {
            for i in 0..targets.len() {
                let t = &targets[(i + round) % targets.len()];
                let s = match load {
                    Load::H1(conns) => wrk(gen_core, t, conns, opts.duration)?,
                    Load::H2(mode) => match h2load(gen_core, t, mode, opts.duration)? {
                        Some(s) => s,
                        None => continue,
                    },
                };
                let (fast, slow) = load.latency_names();
                println!(
                    "round {} · {:>6} · {:<8} {:>9.0} req/s  {fast} {:>6.2} ms  {slow} {:>7.2} ms  cpu {}  rss {}  errors {}",
                    round + 1,
                    load.key(),
                    t.name,
                    s.rps,
                    s.p50_ms,
                    s.p99_ms,
                    s.cpu_us_per_req.map_or("-".into(), |c| format!("{c:.1} µs/req")),
                    s.rss_mb.map_or("-".into(), |r| format!("{r:.1} MB")),
                    s.errors
                );
                samples.entry((load, t.name)).or_default().push(s);
            }
        }
    }

    Ok(samples)
}

/// Print the table, and (unless a dry run) append it to the history and
/// the performance chapter.
fn write_results(
    root: &Path,
    opts: &Options,
    rows: &[Row],
    idle: &[idle::IdleRow],
    cores: usize,
) -> Result<(), String> {
    let commit = git(root, &["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = git(root, &["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|s| !s.is_empty());
    let commit = if dirty {
        format!("{commit}+dirty")
    } else {
        commit
    };
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let history_path = root.join("xtask/bench-history.tsv");
    let history = fs::read_to_string(&history_path).unwrap_or_default();
    let previous = last_detour_run(&history);
    let mut table = render(rows, opts, &commit, &date, cores, previous.as_ref());
    idle::table(&mut table, idle);
    println!("\n{table}");

    let out = root.join("target/bench");
    fs::write(out.join("latest.md"), &table).map_err(|e| e.to_string())?;
    if !opts.dry {
        append_history(&history_path, &history, rows, &commit, &date)?;
        update_doc(&root.join("docs/src/performance.md"), &table)?;
        println!(
            "wrote {}, docs/src/performance.md and target/bench/latest.md",
            history_path.display()
        );
    }
    Ok(())
}

fn git(root: &Path, args: &[&str]) -> Option<String> {
    let o = Command::new("git")
        .current_dir(root)
        .args(args)
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// Run a load generator against `t`, with the target's CPU time (ns) and
/// peak RSS (kB) measured around it. Returns the generator's stdout.
fn measured(t: &Target, mut cmd: Command, what: &str) -> Result<(String, u64, u64), String> {
    let pids = t.proc.as_ref().map(|g| family(g.pid())).unwrap_or_default();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = Arc::clone(&stop);
        let pids = pids.clone();
        thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(anon_kb(&pids));
                thread::sleep(Duration::from_millis(100));
            }
            peak.max(anon_kb(&pids))
        })
    };
    let cpu_before = cpu_ns(&pids);
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running {what}: {e}"));
    let cpu_after = cpu_ns(&pids);
    stop.store(true, Ordering::Relaxed);
    let peak_kb = sampler.join().unwrap_or(0);
    let out = out?;
    Ok((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        cpu_after.saturating_sub(cpu_before),
        peak_kb,
    ))
}

/// CPU per request and RSS, for a proxy that served `requests`.
fn per_request(t: &Target, requests: u64, cpu_ns: u64, peak_kb: u64) -> (Option<f64>, Option<f64>) {
    let measured = t.proc.is_some() && requests > 0;
    (
        measured.then(|| cpu_ns as f64 / 1000.0 / requests as f64),
        measured.then(|| peak_kb as f64 / 1024.0),
    )
}

/// One wrk run (HTTP/1.1 keep-alive).
fn wrk(core: Option<usize>, t: &Target, conns: usize, d: Duration) -> Result<Sample, String> {
    let mut cmd = pinned(core, "wrk");
    cmd.args([
        "-t1",
        &format!("-c{conns}"),
        &format!("-d{}s", d.as_secs()),
        "--latency",
        &format!("http://127.0.0.1:{}/", t.port),
    ]);
    let (text, cpu, peak) = measured(t, cmd, "wrk")?;
    let w = parse_wrk(&text).ok_or_else(|| format!("cannot read wrk's output:\n{text}"))?;
    let (cpu_us_per_req, rss_mb) = per_request(t, w.requests, cpu, peak);
    Ok(Sample {
        rps: w.rps,
        p50_ms: w.p50_ms,
        p99_ms: w.p99_ms,
        errors: w.errors,
        cpu_us_per_req,
        rss_mb,
    })
}

/// The HTTP/2 loads: 10 connections with 100 concurrent streams each, in
/// cleartext (prior knowledge) and over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum H2 {
    Clear,
    Tls,
}

impl H2 {
    fn label(self) -> &'static str {
        match self {
            H2::Clear => "h2c",
            H2::Tls => "h2 TLS",
        }
    }
}

/// One measured load: wrk over HTTP/1.1 keep-alive with this many
/// connections, or h2load over HTTP/2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Load {
    H1(usize),
    H2(H2),
}

impl Load {
    /// The load as the tables and the history file name it: `64`, `h2c`, `h2-TLS`.
    fn key(self) -> String {
        match self {
            Load::H1(conns) => conns.to_string(),
            Load::H2(mode) => mode.label().replace(' ', "-"),
        }
    }

    /// What the two latency figures are: wrk gives percentiles, h2load a
    /// mean and a maximum.
    fn latency_names(self) -> (&'static str, &'static str) {
        match self {
            Load::H1(_) => ("p50", "p99"),
            Load::H2(_) => ("mean", "max"),
        }
    }
}

/// One h2load run. h2load reports no percentiles: the sample's `p50_ms` is
/// the mean time per request and `p99_ms` the slowest.
fn h2load(
    core: Option<usize>,
    t: &Target,
    mode: H2,
    d: Duration,
) -> Result<Option<Sample>, String> {
    let url = match (mode, t.h2c_port, t.tls_port) {
        (H2::Clear, Some(p), _) => format!("http://127.0.0.1:{p}/"),
        (H2::Tls, _, Some(p)) => format!("https://127.0.0.1:{p}/"),
        _ => return Ok(None),
    };
    let mut cmd = pinned(core, "h2load");
    cmd.args(["-c10", "-m100", "-t1", "-D", &d.as_secs().to_string(), &url]);
    let (text, cpu, peak) = measured(t, cmd, "h2load")?;
    let h = parse_h2load(&text).ok_or_else(|| format!("cannot read h2load's output:\n{text}"))?;
    let (cpu_us_per_req, rss_mb) = per_request(t, h.requests, cpu, peak);
    Ok(Some(Sample {
        rps: h.rps,
        p50_ms: h.mean_ms,
        p99_ms: h.max_ms,
        errors: h.errors,
        cpu_us_per_req,
        rss_mb,
    }))
}

/// What h2load printed, reduced to the figures we keep.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct H2loadOutput {
    rps: f64,
    requests: u64,
    errors: u64,
    mean_ms: f64,
    max_ms: f64,
}

fn parse_h2load(out: &str) -> Option<H2loadOutput> {
    let mut h = H2loadOutput::default();
    let (mut rps, mut reqs, mut times) = (false, false, false);
    for line in out.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("finished in") {
            // "finished in 10.00s, 31234.50 req/s, 1.23MB/s"
            let v = rest.split(',').nth(1)?.trim().strip_suffix("req/s")?;
            h.rps = v.trim().parse().ok()?;
            rps = true;
        } else if let Some(rest) = t.strip_prefix("requests:") {
            // "312 total, 312 started, 312 done, 310 succeeded, 2 failed, 0 errored, 0 timeout"
            for part in rest.split(',') {
                let mut w = part.split_whitespace();
                let (Some(n), Some(what)) = (w.next(), w.next()) else {
                    continue;
                };
                let n: u64 = n.parse().ok()?;
                match what {
                    "succeeded" => h.requests = n,
                    "failed" | "errored" | "timeout" => h.errors += n,
                    _ => {}
                }
            }
            reqs = true;
        } else if let Some(rest) = t.strip_prefix("time for request:") {
            // min max mean sd +/-sd
            let v: Vec<&str> = rest.split_whitespace().collect();
            h.max_ms = parse_duration_ms(v.get(1)?)?;
            h.mean_ms = parse_duration_ms(v.get(2)?)?;
            times = true;
        }
    }
    (rps && reqs && times).then_some(h)
}

/// Medians per target and load.
#[derive(Debug, Clone)]
struct Row {
    target: String,
    load: Load,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us: Option<f64>,
    rss_mb: Option<f64>,
    errors: u64,
}

fn summarize(
    targets: &[Target],
    loads: &[Load],
    samples: &BTreeMap<(Load, &'static str), Vec<Sample>>,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for &load in loads {
        for t in targets {
            let Some(s) = samples.get(&(load, t.name)) else {
                continue;
            };
            let pick = |f: fn(&Sample) -> Option<f64>| median(s.iter().filter_map(f).collect());
            rows.push(Row {
                target: t.name.to_string(),
                load,
                rps: pick(|s| Some(s.rps)).unwrap_or(0.0),
                p50_ms: pick(|s| Some(s.p50_ms)).unwrap_or(0.0),
                p99_ms: pick(|s| Some(s.p99_ms)).unwrap_or(0.0),
                cpu_us: pick(|s| s.cpu_us_per_req),
                rss_mb: pick(|s| s.rss_mb),
                errors: s.iter().map(|s| s.errors).sum(),
            });
        }
    }
    rows
}

/// Detour's rows from the most recent run in the history: load key → (commit, rps, cpu µs).
type Previous = BTreeMap<String, (String, f64, f64)>;

fn last_detour_run(history: &str) -> Option<Previous> {
    let mut runs: Vec<(String, Previous)> = Vec::new();
    for line in history.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split('\t').collect();
        // date commit target load rps p50 p99 cpu rss errors
        if f.len() < 10 || f[2] != "Detour" {
            continue;
        }
        let (load, Ok(rps), Ok(cpu)) = (f[3].to_string(), f[4].parse(), f[7].parse()) else {
            continue;
        };
        let key = format!("{} {}", f[0], f[1]);
        match runs.last_mut() {
            Some((k, m)) if *k == key => {
                m.insert(load, (f[1].to_string(), rps, cpu));
            }
            _ => runs.push((key, BTreeMap::from([(load, (f[1].to_string(), rps, cpu))]))),
        }
    }
    runs.pop().map(|(_, m)| m)
}

fn append_history(
    path: &Path,
    existing: &str,
    rows: &[Row],
    commit: &str,
    date: &str,
) -> Result<(), String> {
    let mut text = existing.to_string();
    if text.is_empty() {
        text.push_str(
            "# date\tcommit\ttarget\tconns\trps\tp50_ms\tp99_ms\tcpu_us_per_req\trss_mb\terrors\n",
        );
    }
    for r in rows {
        let _ = writeln!(
            text,
            "{date}\t{commit}\t{}\t{}\t{:.0}\t{:.3}\t{:.3}\t{}\t{}\t{}",
            r.target,
            r.load.key(),
            r.rps,
            r.p50_ms,
            r.p99_ms,
            r.cpu_us.map_or("-".into(), |c| format!("{c:.2}")),
            r.rss_mb.map_or("-".into(), |c| format!("{c:.1}")),
            r.errors
        );
    }
    fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn render(
    rows: &[Row],
    opts: &Options,
    commit: &str,
    date: &str,
    cores: usize,
    previous: Option<&Previous>,
) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "Run {date}, commit `{commit}`, {cores} cores: `cargo xtask bench --rounds {} --secs {} --conns {}`; \
         wrk `-t1 --latency`, HTTP/1.1 keep-alive, medians of {} rounds. \
         Proxies pinned to core 1, wrk and the backend to core 0.\n",
        opts.rounds,
        opts.duration.as_secs(),
        opts.connections
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(","),
        opts.rounds
    );
    let (h1, h2): (Vec<Row>, Vec<Row>) = rows
        .iter()
        .cloned()
        .partition(|r| matches!(r.load, Load::H1(_)));
    table(&mut t, &h1, "conns", ("p50", "p99"));
    if !h2.is_empty() {
        let _ = writeln!(
            t,
            "\nHTTP/2 (`h2load -c10 -m100 -t1`: 10 connections × 100 streams; to the backend every proxy speaks HTTP/1.1; h2load gives a mean and a maximum, no percentiles):\n"
        );
        table(&mut t, &h2, "load", ("mean", "max"));
    }
    if let Some(prev) = previous {
        let _ = writeln!(t);
        for r in rows.iter().filter(|r| r.target == "Detour") {
            if let (Some((c, rps, cpu)), Some(now)) = (prev.get(&r.load.key()), r.cpu_us) {
                let _ = writeln!(
                    t,
                    "- Detour at {} against its last run (`{c}`): req/s {:+.1} %, CPU/req {:+.1} %{}",
                    r.load.key(),
                    (r.rps / rps - 1.0) * 100.0,
                    (now / cpu - 1.0) * 100.0,
                    if now > cpu * 1.05 {
                        " — **regression**"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    t
}

/// One markdown table of `rows`, with ratios to nginx's row of the same load.
fn table(t: &mut String, rows: &[Row], load: &str, (fast, slow): (&str, &str)) {
    let _ = writeln!(
        t,
        "| target | {load} | req/s | {fast} | {slow} | CPU/req | anon RSS | errors | req/s vs nginx | CPU vs nginx | {slow} vs nginx |"
    );
    let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let nginx = rows
            .iter()
            .find(|n| n.target == "nginx" && n.load == r.load);
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 && r.target != "nginx" && r.target != "direct" => {
                format!("{:.2}×", a / b)
            }
            _ => String::new(),
        };
        let _ = writeln!(
            t,
            "| {} | {} | {:.0} | {:.2} ms | {:.2} ms | {} | {} | {} | {} | {} | {} |",
            r.target,
            match r.load {
                Load::H1(c) => c.to_string(),
                Load::H2(m) => m.label().to_string(),
            },
            r.rps,
            r.p50_ms,
            r.p99_ms,
            r.cpu_us.map_or("–".into(), |c| format!("{c:.1} µs")),
            r.rss_mb.map_or("–".into(), |m| format!("{m:.1} MB")),
            r.errors,
            ratio(Some(r.rps), nginx.map(|n| n.rps)),
            ratio(r.cpu_us, nginx.and_then(|n| n.cpu_us)),
            ratio(Some(r.p99_ms), nginx.map(|n| n.p99_ms)),
        );
    }
}

/// Replace the text between the bench markers of the performance page.
fn update_doc(path: &Path, table: &str) -> Result<(), String> {
    const START: &str = "<!-- bench:start -->";
    const END: &str = "<!-- bench:end -->";
    let doc = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (Some(a), Some(b)) = (doc.find(START), doc.find(END)) else {
        return Err(format!("{}: missing {START} / {END}", path.display()));
    };
    let new = format!(
        "{}{START}\n{table}{END}{}",
        &doc[..a],
        &doc[b + END.len()..]
    );
    fs::write(path, new).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 10s test @ http://127.0.0.1:18082/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.23ms  300.00us   9.80ms   90.00%
    Req/Sec    52.10k     1.20k   54.00k    70.00%
  Latency Distribution
     50%    1.19ms
     75%    1.30ms
     90%    1.45ms
     99%  812.00us
  521000 requests in 10.00s, 80.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  52100.00
Transfer/sec:      8.00MB
";

    #[test]
    fn wrk_output_is_read() {
        let w = parse_wrk(WRK).expect("parsed");
        assert_eq!(w.rps, 52100.0);
        assert!((w.p50_ms - 1.19).abs() < 1e-9);
        assert!((w.p99_ms - 0.812).abs() < 1e-9);
        assert_eq!(w.requests, 521000);
        assert_eq!(w.errors, 7);
        assert!(parse_wrk("garbage").is_none());
    }

    #[test]
    fn h2load_output_is_read() {
        let out = "finished in 10.00s, 31234.50 req/s, 1.23MB/s
requests: 312345 total, 312345 started, 312345 done, 312300 succeeded, 40 failed, 5 errored, 0 timeout
status codes: 312300 2xx, 0 3xx, 0 4xx, 45 5xx
time for request:      1.23ms     12.34ms      3.21ms       1.11ms    70.00%
";
        let h = parse_h2load(out).expect("parsed");
        assert_eq!(h.rps, 31234.5);
        assert_eq!(h.requests, 312300);
        assert_eq!(h.errors, 45);
        assert!((h.mean_ms - 3.21).abs() < 1e-9);
        assert!((h.max_ms - 12.34).abs() < 1e-9);
        assert!(parse_h2load("finished in 1s").is_none());
    }

    #[test]
    fn durations_and_medians() {
        assert_eq!(parse_duration_ms("2.00s"), Some(2000.0));
        assert_eq!(parse_duration_ms("1.50m"), Some(90_000.0));
        assert_eq!(parse_duration_ms("x"), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn options_are_checked() {
        let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let o = Options::parse(&args("--rounds 5 --secs 3 --conns 64,128 --only detour")).unwrap();
        assert_eq!((o.rounds, o.duration.as_secs()), (5, 3));
        assert_eq!(o.connections, vec![64, 128]);
        assert_eq!(o.only, Some(vec!["detour".to_string()]));
        assert_eq!(o.idle, 10_000);
        assert_eq!(Options::parse(&args("--idle 0")).unwrap().idle, 0);
        assert_eq!(Options::parse(&args("--idle 500")).unwrap().idle, 500);
        assert!(Options::parse(&args("--idle x")).is_err());
        assert!(Options::parse(&args("--rounds 0")).is_err());
        assert!(Options::parse(&args("--conns")).is_err());
        assert!(Options::parse(&args("--bogus")).is_err());
    }

    #[test]
    fn the_last_detour_run_is_found() {
        let h = "# header\n\
                 2026-01-01T00:00:00Z\taaa\tDetour\t64\t40000\t1\t2\t24.00\t9.0\t0\n\
                 2026-01-01T00:00:00Z\taaa\tnginx\t64\t50000\t1\t2\t18.00\t5.0\t0\n\
                 2026-01-02T00:00:00Z\tbbb\tDetour\t64\t45000\t1\t2\t20.00\t9.0\t0\n\
                 2026-01-02T00:00:00Z\tbbb\tDetour\t256\t44000\t1\t2\t21.00\t12.0\t0\n";
        let p = last_detour_run(h).unwrap();
        assert_eq!(p.get("64"), Some(&("bbb".to_string(), 45000.0, 20.0)));
        assert_eq!(p.get("256").map(|v| v.2), Some(21.0));
        assert!(last_detour_run("").is_none());
    }

    #[test]
    fn the_doc_section_is_replaced() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("perf.md");
        fs::write(
            &p,
            "# P\n<!-- bench:start -->\nold\n<!-- bench:end -->\ntail\n",
        )
        .unwrap();
        update_doc(&p, "new\n").unwrap();
        assert_eq!(
            fs::read_to_string(&p).unwrap(),
            "# P\n<!-- bench:start -->\nnew\n<!-- bench:end -->\ntail\n"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
