//! `cargo xtask chaos`: Detour, nginx and HAProxy run in front of three
//! testkit backends through scripted faults under steady load, side by side.
//!
//! Each run — one proxy, one scenario — starts three fresh backends
//! ([`detour_testkit::Upstream`], in this process) and a fresh proxy process
//! on free loopback ports, sends GETs and POSTs at a steady rate for the
//! scenario's length while its script breaks and repairs backends, stops the
//! proxy, and reads the backends' journals. Every request carries its own
//! `x-request-id`, so the journals tell how many attempts each one cost, when
//! a broken backend stopped (and a repaired one started) getting client
//! traffic, and whether any POST was delivered twice.
//!
//! The figures are printed per scenario as markdown tables and written to
//! `target/chaos/latest.md` (plus a timestamped copy). The run fails if
//! Detour answered an idempotent request with an error while a healthy
//! backend existed, or delivered a POST twice; nginx and HAProxy are the
//! comparison and never fail it. See `docs/src/chaos.md`.
//!
//! Layout: [`scenario`] (the scripts), [`load`] (the clients), [`measure`]
//! (figures from samples and journals), [`proxy`] (configurations and
//! processes), [`report`] (tables).

mod load;
mod measure;
mod proxy;
mod report;
mod scenario;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use detour_testkit::{Behavior, Upstream};
use tokio::time::{sleep_until, Instant};

use load::LoadShape;
use measure::{measure, Outcome, Seen};
use proxy::{ensure_program, Hop, Kind, Proxy, Tuning};
use report::Row;
use scenario::{Action, Bar, Clients, Scenario};

const USAGE: &str = "\
usage: cargo xtask chaos [--only detour,nginx,haproxy] [--scenario NAME,...] [--secs N]
                         [--no-build] [--detour-log] [--http1-client native|hyper]

  --only LIST       proxies to run (default: all three; nginx and HAProxy are
                    installed with apt-get when absent and root or sudo allows)
  --scenario LIST   scenarios to run (default: all): killed, blackholed, 503,
                    flapping, slow, all-down, comes-back, post-reset,
                    bad-canary, bad-canary-2of3, bad-canary-1of3,
                    correlated, chained, latency-tail
  --secs N          load length of each run, at least 4 (default 8)
  --no-build        use target/release/detour as it is
  --detour-log      keep Detour's access log (target/chaos/work/...), to see
                    every attempt of every request
  --http1-client C  Detour's HTTP/1.1 upstream client: native (default) or
                    hyper ([server.pool] http1_client)

Exits 1 if Detour answered a GET with an error while a healthy backend
existed, or delivered a POST twice.";

/// Command-line options.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Options {
    /// Proxies to run, in table order.
    pub(crate) only: Vec<Kind>,
    /// Scenarios to run, in their order.
    pub(crate) scenarios: Vec<&'static str>,
    /// Load length of each run.
    pub(crate) length: Duration,
    /// Build Detour first.
    pub(crate) build: bool,
    /// Keep Detour's access log.
    pub(crate) detour_log: bool,
    /// hyper's HTTP/1.1 upstream client instead of Detour's own.
    pub(crate) hyper_client: bool,
    /// Print the usage.
    pub(crate) help: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            only: Kind::ALL.to_vec(),
            scenarios: scenario::NAMES.to_vec(),
            length: Duration::from_secs(8),
            build: true,
            detour_log: false,
            hyper_client: false,
            help: false,
        }
    }
}

impl Options {
    /// Parses the arguments after `chaos`.
    ///
    /// # Errors
    /// An unknown option, a missing or bad value, with what was expected.
    pub(crate) fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options::default();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
                _ => (arg.as_str(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| it.next().cloned())
                    .ok_or_else(|| format!("{flag} needs a value"))
            };
            match flag {
                "--only" => {
                    let v = value()?;
                    let mut picked = Vec::new();
                    for n in v.split(',') {
                        picked.push(Kind::parse(n).ok_or_else(|| format!("no proxy {n:?}"))?);
                    }
                    o.only = Kind::ALL
                        .into_iter()
                        .filter(|k| picked.contains(k))
                        .collect();
                }
                "--scenario" => {
                    let v = value()?;
                    let mut picked = Vec::new();
                    for n in v.split(',').map(str::trim) {
                        match scenario::NAMES.iter().find(|s| s.eq_ignore_ascii_case(n)) {
                            Some(name) => picked.push(*name),
                            None => return Err(format!("no scenario {n:?}")),
                        }
                    }
                    // Keep the usual order whatever the order given.
                    o.scenarios = scenario::NAMES
                        .into_iter()
                        .filter(|n| picked.contains(n))
                        .collect();
                }
                "--secs" => {
                    let v = value()?;
                    let secs: u64 =
                        v.parse().ok().filter(|s| *s >= 4).ok_or_else(|| {
                            format!("--secs: expected a whole number ≥ 4, got {v:?}")
                        })?;
                    o.length = Duration::from_secs(secs);
                }
                "--no-build" => o.build = false,
                "--detour-log" => o.detour_log = true,
                "--http1-client" => {
                    o.hyper_client = match value()?.as_str() {
                        "native" => false,
                        "hyper" => true,
                        v => return Err(format!("--http1-client: hyper or native, not {v:?}")),
                    }
                }
                "-h" | "--help" => o.help = true,
                other => return Err(format!("unknown option {other:?}")),
            }
        }
        if o.only.is_empty() || o.scenarios.is_empty() {
            return Err("nothing to run".into());
        }
        Ok(o)
    }
}

/// Runs `cargo xtask chaos` with the arguments after `chaos`.
pub(crate) fn main(args: &[String]) -> ExitCode {
    let opts = match Options::parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("chaos: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if opts.help {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let root = workspace_root();
    let target = target_dir(&root);
    let mut programs = Vec::new();
    for kind in &opts.only {
        let program = match kind {
            Kind::Detour => detour_binary(&root, &target, opts.build),
            Kind::Nginx => ensure_program("nginx", "nginx"),
            Kind::Haproxy => ensure_program("haproxy", "haproxy"),
        };
        match program {
            Ok(p) => programs.push((*kind, Ok(p))),
            Err(e) if *kind == Kind::Detour => {
                eprintln!("chaos: {e}");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("chaos: {} skipped: {e}", kind.name());
                programs.push((*kind, Err(format!("skipped: {e}"))));
            }
        }
    }
    let out_dir = target.join("chaos");
    let work = out_dir.join("work");
    // Only ever our own scratch directory from an earlier run.
    let _ = fs::remove_dir_all(&work);
    if let Err(e) = fs::create_dir_all(&work) {
        eprintln!("chaos: {}: {e}", work.display());
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chaos: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let results = runtime.block_on(async {
        tokio::select! {
            r = run_all(&opts, &programs, &work) => Some(r),
            // Dropping `run_all` drops every proxy guard and backend: nothing
            // outlives the harness.
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    let Some(results) = results else {
        eprintln!("chaos: interrupted; every proxy stopped");
        return ExitCode::from(130);
    };
    let (verdict, failed) = verdict(&results);
    let text = document(&opts, &results, &verdict, started.elapsed());
    println!("{}", verdict.join("\n"));
    match write_results(&out_dir, &text) {
        Ok(path) => println!("chaos: tables written to {}", path.display()),
        Err(e) => eprintln!("chaos: could not write the tables: {e}"),
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Every scenario through every proxy, printing each table as it is done.
async fn run_all(
    opts: &Options,
    programs: &[(Kind, Result<PathBuf, String>)],
    work: &Path,
) -> Vec<(Scenario, Vec<Row>)> {
    let mut results = Vec::new();
    for name in &opts.scenarios {
        let Some(sc) = scenario::scenario(name, opts.length) else {
            continue;
        };
        let mut rows = Vec::new();
        for (kind, program) in programs {
            let outcome = match program {
                Ok(program) => {
                    eprintln!("chaos: {} through {} ...", sc.name, kind.name());
                    let dir = work.join(format!("{}-{}", sc.name, kind.name().to_lowercase()));
                    run_one(
                        *kind,
                        program,
                        &sc,
                        &dir,
                        (opts.detour_log, opts.hyper_client),
                    )
                    .await
                }
                Err(why) => Err(why.clone()),
            };
            rows.push(Row {
                proxy: kind.name(),
                outcome,
            });
        }
        println!("{}", report::table(&sc, &rows));
        results.push((sc, rows));
    }
    results
}

/// One scenario through one proxy.
async fn run_one(
    kind: Kind,
    program: &Path,
    sc: &Scenario,
    dir: &Path,
    (detour_log, hyper_client): (bool, bool),
) -> Result<Outcome, String> {
    let mut backends = Vec::new();
    for _ in 0..sc.backends {
        let up = Upstream::start(Behavior::ok())
            .await
            .map_err(|e| format!("a backend cannot start: {e}"))?;
        backends.push(up);
    }
    for &b in &sc.dead_at_start {
        if let Some(up) = backends.get(b) {
            up.kill().await;
        }
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(Upstream::addr).collect();
    // A bound on the proxy's life should this process die without stopping it.
    let limit = sc.length + Duration::from_secs(60);
    // In a chain the inner proxy fronts the backends and the clients reach
    // the outer one; both are checked and stopped alike.
    let mut inner = None;
    let tuning = |hop| Tuning {
        access_log: detour_log,
        hop,
        hedge: sc.hedge,
        hyper_client,
    };
    let mut proxy = if sc.chain {
        let dir_in = dir.join("inner");
        let i = Proxy::start(kind, program, &dir_in, &addrs, limit, tuning(Hop::Inner)).await?;
        let front = [i.addr];
        inner = Some(i);
        Proxy::start(kind, program, dir, &front, limit, tuning(Hop::Outer)).await?
    } else {
        Proxy::start(kind, program, dir, &addrs, limit, tuning(Hop::Only)).await?
    };
    let t0 = Instant::now();
    let script = async {
        for step in &sc.steps {
            sleep_until(t0 + step.at).await;
            let Some(up) = backends.get(step.backend) else {
                continue;
            };
            match step.action {
                Action::Kill => up.kill().await,
                Action::Restart => up
                    .restart()
                    .await
                    .map_err(|e| format!("backend {} cannot restart: {e}", up.addr()))?,
                other => {
                    // Seeded by backend: a share (fail_share, slow_share)
                    // picks other requests on each, as independent
                    // backends would.
                    if let Some(b) = other.behavior() {
                        up.set_behavior(b.seeded(step.backend as u64));
                    }
                }
            }
        }
        Ok::<(), String>(())
    };
    let clients = async {
        match sc.clients {
            Clients::Steady => {
                load::run(proxy.addr, LoadShape::default(), t0, t0 + sc.length).await
            }
            Clients::Closed(n) => load::run_closed(proxy.addr, n, t0, t0 + sc.length).await,
        }
    };
    let (run, scripted) = tokio::join!(clients, script);
    // A proxy that died under the load is a finding, not a row of errors.
    for p in std::iter::once(&mut proxy).chain(inner.as_mut()) {
        if let Some(status) = p.ended() {
            return Err(format!(
                "{} ended during the run ({status}): {}",
                kind.name(),
                p.log_tail()
            ));
        }
        p.stop();
    }
    scripted?;
    let seen = journals(&backends, t0);
    let mut outcome = measure(&run.samples, &seen, &sc.windows(), sc.backends, sc.length);
    outcome.harness_stall = run.harness_stall;
    Ok(outcome)
}

/// What the backends read of the clients' requests (not health checks nor
/// the readiness probe), times counted from `t0`.
fn journals(backends: &[Upstream], t0: Instant) -> Vec<Seen> {
    let mut seen = Vec::new();
    for (i, up) in backends.iter().enumerate() {
        for r in up.received() {
            if !r.path.starts_with(load::PATH_PREFIX) {
                continue;
            }
            seen.push(Seen {
                backend: i,
                id: r.header("x-request-id").unwrap_or_default().to_string(),
                post: r.method == "POST",
                at: r.at.saturating_duration_since(t0),
            });
        }
    }
    seen
}

/// One line per way a Detour run failed the bar, or one `PASS` line; and
/// whether anything failed.
fn verdict(results: &[(Scenario, Vec<Row>)]) -> (Vec<String>, bool) {
    let mut lines = Vec::new();
    for (sc, rows) in results {
        for row in rows.iter().filter(|r| r.proxy == Kind::Detour.name()) {
            match &row.outcome {
                Err(e) => lines.push(format!("FAIL {}: Detour did not run: {e}", sc.name)),
                Ok(o) => lines.extend(failures(sc, o)),
            }
        }
    }
    let failed = !lines.is_empty();
    if !failed {
        let ran = results
            .iter()
            .any(|(_, rows)| rows.iter().any(|r| r.proxy == Kind::Detour.name()));
        lines.push(if ran {
            "PASS: Detour answered every GET while a backend was healthy, delivered every POST at most once, found the healthy backends in the partial outages and did not storm in the correlated one".into()
        } else {
            "PASS: Detour was not run (--only)".into()
        });
    }
    (lines, failed)
}

/// The ways Detour's run of `sc` missed the scenario's bar, one line each.
fn failures(sc: &Scenario, o: &Outcome) -> Vec<String> {
    let mut lines = Vec::new();
    let name = sc.name;
    if o.duplicate_posts > 0 {
        lines.push(format!(
            "FAIL {name}: Detour delivered {} POST(s) more than once",
            o.duplicate_posts
        ));
    }
    let settled = |what: &str| format!("FAIL {name}: no settled figures ({what})");
    match sc.bar {
        Bar::NoErrorWhileHealthy => {
            if o.unexcused_get_errors > 0 {
                let first: Vec<String> = o
                    .unexcused
                    .iter()
                    .map(|(at, answer)| format!("{answer} at {}", report::human(*at)))
                    .collect();
                lines.push(format!(
                    "FAIL {name}: Detour answered {} GET(s) with an error while a healthy backend existed (first: {})",
                    o.unexcused_get_errors,
                    first.join(", ")
                ));
            }
        }
        Bar::Served(min) => match o.settled {
            None => lines.push(settled("the fault is too short")),
            Some(s) => {
                if s.served < min {
                    lines.push(format!(
                        "FAIL {name}: Detour served {:.1} % after the first second (at least {:.0} % expected)",
                        s.served * 100.0,
                        min * 100.0
                    ));
                }
                if let Some(gap) = s.healthy_gap.filter(|g| *g >= HEALTHY_IDLE_LIMIT) {
                    lines.push(format!(
                        "FAIL {name}: a healthy backend went {} without traffic: it was taken out",
                        report::human(gap)
                    ));
                }
            }
        },
        Bar::Tail {
            max_p99,
            max_attempts,
        } => {
            if o.latency[1] > max_p99 {
                lines.push(format!(
                    "FAIL {name}: Detour's client p99 was {} (at most {})",
                    report::human(o.latency[1]),
                    report::human(max_p99)
                ));
            }
            if o.attempts_per_request > max_attempts {
                lines.push(format!(
                    "FAIL {name}: Detour sent {:.2} backend attempts per request (at most {max_attempts:.2})",
                    o.attempts_per_request
                ));
            }
            if o.get_errors > 0 {
                lines.push(format!(
                    "FAIL {name}: Detour failed {} GET(s)",
                    o.get_errors
                ));
            }
        }
        Bar::NoStorm {
            max_attempts,
            min_served,
        } => match o.settled {
            None => lines.push(settled("the fault is too short")),
            Some(s) => {
                if s.attempts_per_request > max_attempts {
                    lines.push(format!(
                        "FAIL {name}: Detour sent {:.2} backend attempts per request after the first second (at most {max_attempts:.2})",
                        s.attempts_per_request
                    ));
                }
                if s.served < min_served {
                    lines.push(format!(
                        "FAIL {name}: Detour served {:.1} % after the first second (at least {:.0} %)",
                        s.served * 100.0,
                        min_served * 100.0
                    ));
                }
            }
        },
    }
    lines
}

/// A healthy backend idle this long in a partial outage was taken out of
/// rotation (an ejection or an open breaker lasts 2 s here).
const HEALTHY_IDLE_LIMIT: Duration = Duration::from_secs(1);

/// The whole report, as written to `target/chaos/latest.md`.
fn document(
    opts: &Options,
    results: &[(Scenario, Vec<Row>)],
    verdict: &[String],
    took: Duration,
) -> String {
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let shape = LoadShape::default();
    let mut text = format!(
        "# cargo xtask chaos, {date}\n\n\
         `cargo xtask chaos{args}`: {secs} s of load per run, {rate:.0} requests/s arriving \
         at a steady rate ({gets} streams of GETs, {posts} of POSTs, one every {every} ms each) \
         over keep-alive connections (the partial-outage scenarios: {closed} closed-loop \
         clients sending GETs), three backends (five in bad-canary), {per_try} ms per attempt; \
         took {took:.0} s.\n\n",
        closed = scenario::CLOSED_CLIENTS,
        args = std::env::args()
            .skip(2)
            .map(|a| format!(" {a}"))
            .collect::<String>(),
        secs = opts.length.as_secs(),
        rate = shape.rate(),
        gets = shape.get_streams,
        posts = shape.post_streams,
        every = shape.every.as_millis(),
        per_try = proxy::PER_TRY_MS,
        took = took.as_secs_f64(),
    );
    for (sc, rows) in results {
        text.push_str(&report::table(sc, rows));
        text.push('\n');
    }
    for line in verdict {
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// Writes `latest.md` and a timestamped copy; returns the former's path.
fn write_results(dir: &Path, text: &str) -> std::io::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let latest = dir.join("latest.md");
    fs::write(&latest, text)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    fs::write(dir.join(format!("chaos-{stamp}.md")), text)?;
    Ok(latest)
}

/// The workspace root: xtask's manifest directory's parent.
fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(Path::to_path_buf).unwrap_or(here)
}

/// Cargo's target directory, as `CARGO_TARGET_DIR` says or `<root>/target`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// Builds `detour` in release mode (unless told not to) and returns its path.
fn detour_binary(root: &Path, target: &Path, build: bool) -> Result<PathBuf, String> {
    if build {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let args = ["build", "--release", "-p", "detour-cli", "--bin", "detour"];
        eprintln!("$ cargo {}", args.join(" "));
        let ok = Command::new(cargo)
            .args(args)
            .current_dir(root)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err("building detour failed".into());
        }
    }
    let bin = target.join("release").join("detour");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{} does not exist (drop --no-build)",
            bin.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, String> {
        Options::parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn outcome(unexcused: usize, duplicates: usize) -> Outcome {
        Outcome {
            requests: 10,
            posts: 2,
            get_errors: unexcused,
            post_errors: 0,
            unexcused_get_errors: unexcused,
            latency: [Duration::ZERO; 3],
            attempts_per_request: 1.0,
            stops: vec![],
            back: vec![],
            duplicate_posts: duplicates,
            settled: None,
            unexcused: vec![],
            harness_stall: Duration::ZERO,
        }
    }

    #[test]
    fn only_detour_can_fail_the_run() {
        let Some(sc) = scenario::scenario("503", Duration::from_secs(8)) else {
            panic!("503 is a scenario");
        };
        let row = |proxy, outcome| Row { proxy, outcome };
        let others_fail = vec![(
            sc.clone(),
            vec![
                row("Detour", Ok(outcome(0, 0))),
                row("nginx", Ok(outcome(5, 1))),
                row("HAProxy", Err("skipped: not installed".into())),
            ],
        )];
        let (lines, failed) = verdict(&others_fail);
        assert!(!failed);
        assert!(lines[0].starts_with("PASS"));
        let detour_fails = vec![
            (sc.clone(), vec![row("Detour", Ok(outcome(2, 1)))]),
            (sc, vec![row("Detour", Err("did not start".into()))]),
        ];
        let (lines, failed) = verdict(&detour_fails);
        assert!(failed);
        assert_eq!(lines.len(), 3, "{lines:?}");
    }

    #[test]
    fn defaults_run_everything() {
        assert_eq!(parse(&[]), Ok(Options::default()));
        assert_eq!(Options::default().scenarios.len(), scenario::NAMES.len());
    }

    #[test]
    fn options_pick_proxies_and_scenarios() {
        let o = parse(&["--only", "detour", "--scenario=503,killed", "--secs", "5"]);
        let Ok(o) = o else {
            panic!("valid options: {o:?}");
        };
        assert_eq!(o.only, [Kind::Detour]);
        assert_eq!(o.scenarios, ["killed", "503"]);
        assert_eq!(o.length, Duration::from_secs(5));
        assert!(parse(&["--secs", "2"]).is_err());
        assert!(parse(&["--scenario", "meteor"]).is_err());
        assert!(parse(&["--only", "envoy"]).is_err());
        assert!(parse(&["--frobnicate"]).is_err());
    }
}
