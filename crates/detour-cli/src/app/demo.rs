//! `detour demo`: three local backends, the proxy with retries, health checks
//! and breakers, steady GET traffic, and failures injected one after another
//! — a backend killed, one blackholed, one answering 503 — each brought back,
//! with the state shown live and a summary at the end.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use detour_server::Stop;
use detour_testkit::client::RawConnection;
use detour_testkit::{Behavior, Upstream};
use tokio::time::Instant;

use super::config::Config;
use super::status::{Breaker, Health};

/// How long each phase lasts, and the client concurrency.
#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    /// Length of each of the five phases.
    pub phase: Duration,
    /// Concurrent keep-alive clients.
    pub clients: usize,
    /// Pause between a client's requests.
    pub pause: Duration,
    /// Print the live table.
    pub live: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            phase: Duration::from_secs(5),
            clients: 8,
            pause: Duration::from_millis(5),
            live: true,
        }
    }
}

/// What the demo saw.
#[derive(Debug, Default, Clone)]
pub struct DemoSummary {
    /// GETs sent.
    pub requests: u64,
    /// Answers that were not 2xx, or no answer at all.
    pub client_errors: u64,
    /// Retries and failovers the proxy made (from its metrics).
    pub retries: u64,
    /// Requests each backend answered.
    pub served_by: BTreeMap<String, u64>,
    /// Client-side latency over the whole run: p50, p99, max.
    pub latency: [Duration; 3],
    /// Per failure injected: (what, time until the proxy marked the backend
    /// out of service, time from its repair until it was back in service).
    pub detection: Vec<(String, Option<Duration>, Option<Duration>)>,
}

/// p50, p99 and max of `samples` (sorted here).
fn percentiles(samples: &mut [Duration]) -> [Duration; 3] {
    if samples.is_empty() {
        return [Duration::ZERO; 3];
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    [at(0.5), at(0.99), samples[samples.len() - 1]]
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    served: Mutex<BTreeMap<SocketAddr, u64>>,
    /// Latencies since the last live line, and over the whole run.
    recent: Mutex<Vec<Duration>>,
    all: Mutex<Vec<Duration>>,
}

fn demo_config(backends: &[SocketAddr]) -> Config {
    let list: Vec<String> = backends
        .iter()
        .map(|a| format!("{{ addr = \"{a}\" }}"))
        .collect();
    let text = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
grace_period = "2s"

[admin]
listen = "127.0.0.1:0"

[log]
access_log = false
level = "warn"

[upstreams.app]
lb = "round_robin"
backends = [{backends}]

[upstreams.app.retry]
max_retries = 3
base_delay = "20ms"
per_try_timeout = "400ms"
budget_ratio = 0.5

[upstreams.app.health]
kind = "http"
path = "/"
interval = "500ms"
timeout = "250ms"
rise = 2
fall = 2

[upstreams.app.outlier]
consecutive_5xx = 5
base_ejection = "3s"
max_ejection_percent = 34

[upstreams.app.breaker]
consecutive_failures = 5
open_for = "3s"
half_open_successes = 3

[[routes]]
upstream = "app"
"#,
        backends = list.join(", ")
    );
    // The text is ours and valid; a failure here is a bug worth a panic.
    #[allow(clippy::expect_used)]
    Config::from_toml(&text, None).expect("the demo's own configuration is valid")
}

async fn client(addr: SocketAddr, counters: Arc<Counters>, pause: Duration, until: Instant) {
    let mut conn: Option<RawConnection> = None;
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match RawConnection::connect(addr).await {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(pause).await;
                    continue;
                }
            },
        };
        let req = format!("GET /demo/{n} HTTP/1.1\r\nhost: demo\r\n\r\n");
        counters.requests.fetch_add(1, Ordering::Relaxed);
        let sent = Instant::now();
        let r = match c.send(req.as_bytes()).await {
            Ok(()) => c.read_response().await,
            Err(e) => Err(e),
        };
        let took = sent.elapsed();
        if let Ok(mut v) = counters.recent.lock() {
            v.push(took);
        }
        if let Ok(mut v) = counters.all.lock() {
            v.push(took);
        }
        match r {
            Ok(r) if (200..300).contains(&r.status) => {
                if let Some(up) = r.header("x-upstream").and_then(|u| u.parse().ok()) {
                    if let Ok(mut s) = counters.served.lock() {
                        *s.entry(up).or_default() += 1;
                    }
                }
                if r.header("connection") == Some("close") {
                    conn = None;
                }
            }
            Ok(_) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
        }
        tokio::time::sleep(pause).await;
    }
}

fn retries_from(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("detour_retries_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Backend names, in the order of their addresses.
const NAMES: [&str; 3] = ["A", "B", "C"];

/// The script: each phase's title, and the fault injected as it begins.
const SCRIPT: [(&str, u32); 5] = [
    ("all three backends healthy", 0),
    ("B is killed (stops listening, resets its connections)", 1),
    ("B is back; C is blackholed (accepts, never answers)", 2),
    ("C is back; A answers 503 to everything", 3),
    ("A is healthy again: everything recovers", 4),
];

/// When each backend went out of service or back in: (since the start,
/// backend index, in service).
type Timeline = Arc<Mutex<Vec<(Duration, usize, bool)>>>;

/// What the phases share: the backends, the proxy's state, the clients'
/// counters and the metrics.
struct Stage {
    ups: Vec<Upstream>,
    addrs: Vec<SocketAddr>,
    app: Arc<super::state::App>,
    counters: Arc<Counters>,
    metrics: Option<detour_proxy::metrics::MetricsHandle>,
    start: Instant,
    live: bool,
    /// Requests, errors and requests per backend at the last live line.
    last: (u64, u64, BTreeMap<SocketAddr, u64>),
}

impl Stage {
    fn name_of(&self, a: SocketAddr) -> &'static str {
        self.addrs
            .iter()
            .position(|x| *x == a)
            .map_or("?", |i| NAMES[i])
    }

    fn retries(&self) -> u64 {
        self.metrics
            .as_ref()
            .map_or(0, |m| retries_from(&m.render()))
    }
}

/// Run the demo. `metrics` is the recorder's handle (retry counts come from it).
///
/// # Errors
/// A backend or the proxy could not start.
pub async fn run(
    opts: DemoOptions,
    metrics: Option<detour_proxy::metrics::MetricsHandle>,
) -> Result<DemoSummary, Box<dyn std::error::Error + Send + Sync>> {
    let mut ups = Vec::new();
    for _ in 0..3 {
        ups.push(Upstream::start(Behavior::ok()).await?);
    }
    let addrs: Vec<SocketAddr> = ups.iter().map(Upstream::addr).collect();
    let running = super::start(&demo_config(&addrs), None, metrics.clone(), None)?;
    let proxy = running.addr();
    if opts.live {
        print_intro(&opts, proxy, &addrs, running.admin_addr);
    }
    let counters = Arc::new(Counters::default());
    let until = Instant::now() + opts.phase * SCRIPT.len() as u32;
    let tasks: Vec<_> = (0..opts.clients)
        .map(|_| tokio::spawn(client(proxy, Arc::clone(&counters), opts.pause, until)))
        .collect();
    let mut stage = Stage {
        ups,
        addrs,
        app: Arc::clone(&running.app),
        counters,
        metrics,
        start: Instant::now(),
        live: opts.live,
        last: (0, 0, BTreeMap::new()),
    };
    let timeline = Timeline::default();
    let watcher = spawn_watcher(&stage, Arc::clone(&timeline), until);
    let mut phase_starts = Vec::new();
    for (title, step) in SCRIPT {
        phase_starts.push(stage.start.elapsed());
        stage.inject(step).await?;
        stage.watch_phase(title, opts.phase).await;
    }
    for t in tasks {
        let _ = t.await;
    }
    let _ = watcher.await;
    let summary = stage.summary(&timeline, &phase_starts);
    tokio::task::spawn_blocking(move || running.stop(Stop::Graceful)).await?;
    if opts.live {
        print_summary(&summary);
    }
    Ok(summary)
}

fn print_intro(
    opts: &DemoOptions,
    proxy: SocketAddr,
    addrs: &[SocketAddr],
    admin: Option<SocketAddr>,
) {
    println!(
        "detour demo: proxy on {proxy}, backends A={} B={} C={}",
        addrs[0], addrs[1], addrs[2]
    );
    if let Some(a) = admin {
        println!("admin API on http://{a}/status and /metrics while it runs");
    }
    println!(
        "{} clients send GETs; each phase lasts {:?}.\n",
        opts.clients, opts.phase
    );
}

/// Sample, every 10 ms until `until`, whether each backend is in service
/// (healthy and its breaker closed), and write every change to `timeline`.
fn spawn_watcher(stage: &Stage, timeline: Timeline, until: Instant) -> tokio::task::JoinHandle<()> {
    let (app, addrs, start) = (Arc::clone(&stage.app), stage.addrs.clone(), stage.start);
    tokio::spawn(async move {
        let mut was = [true; 3];
        while Instant::now() < until {
            if let Some(up) = app.current().upstreams.get("app") {
                for b in up.backends().iter() {
                    let Some(i) = addrs.iter().position(|a| *a == b.addr()) else {
                        continue;
                    };
                    let now = app.health("app", b) == Health::Healthy
                        && Breaker::of(b) == Breaker::Closed;
                    if now != was[i] {
                        was[i] = now;
                        if let Ok(mut t) = timeline.lock() {
                            t.push((start.elapsed(), i, now));
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

impl Stage {
    /// The fault of script step `step`.
    async fn inject(&mut self, step: u32) -> std::io::Result<()> {
        let ups = &mut self.ups;
        match step {
            1 => ups[1].kill().await,
            2 => {
                ups[1].restart().await?;
                ups[2].set_behavior(Behavior::blackhole());
            }
            3 => {
                ups[2].set_behavior(Behavior::ok());
                ups[0].set_behavior(Behavior::status(503));
            }
            4 => ups[0].set_behavior(Behavior::ok()),
            _ => {}
        }
        Ok(())
    }

    /// Wait out one phase, printing a line a second when live.
    async fn watch_phase(&mut self, title: &str, length: Duration) {
        if self.live {
            println!("== {:>4.1}s  {title}", self.start.elapsed().as_secs_f64());
            println!(
                "   time   req/s  errors  p99 ms  retries | share of traffic, health/breaker per backend"
            );
        }
        let c = Arc::clone(&self.counters);
        let phase_end = Instant::now() + length;
        while Instant::now() < phase_end {
            tokio::time::sleep(Duration::from_secs(1).min(phase_end - Instant::now())).await;
            let reqs = c.requests.load(Ordering::Relaxed);
            let errs = c.errors.load(Ordering::Relaxed);
            let served = c.served.lock().map(|s| s.clone()).unwrap_or_default();
            let mut recent = c
                .recent
                .lock()
                .map(|mut v| std::mem::take(&mut *v))
                .unwrap_or_default();
            let p99 = percentiles(&mut recent)[1];
            let last = &self.last;
            if self.live {
                println!(
                    "  {:>5.1}s {:>6} {:>7} {:>7.1} {:>8} | {}",
                    self.start.elapsed().as_secs_f64(),
                    reqs - last.0,
                    errs - last.1,
                    p99.as_secs_f64() * 1e3,
                    self.retries(),
                    self.columns(&served, &last.2)
                );
            }
            self.last = (reqs, errs, served);
        }
    }

    /// Each backend's share of the requests served since `before`, and its
    /// health and breaker.
    fn columns(
        &self,
        served: &BTreeMap<SocketAddr, u64>,
        before: &BTreeMap<SocketAddr, u64>,
    ) -> String {
        let state = self.app.current();
        let Some(up) = state.upstreams.get("app") else {
            return String::new();
        };
        let total: u64 = served.values().sum::<u64>() - before.values().sum::<u64>();
        let mut cols = Vec::new();
        for b in up.backends().iter() {
            let now_n = served.get(&b.addr()).copied().unwrap_or(0);
            let was = before.get(&b.addr()).copied().unwrap_or(0);
            let share = if total == 0 {
                0.0
            } else {
                (now_n - was) as f64 * 100.0 / total as f64
            };
            cols.push(format!(
                "{} {:>3.0}% {}/{}",
                self.name_of(b.addr()),
                share,
                self.app.health("app", b),
                Breaker::of(b)
            ));
        }
        cols.join("   ")
    }

    /// The run's figures, with each fault's detection and recovery times
    /// read from `timeline`.
    fn summary(&self, timeline: &Timeline, phase_starts: &[Duration]) -> DemoSummary {
        // (what, backend, broken at, repaired at)
        let faults = [
            ("B killed", 1, phase_starts[1], phase_starts[2]),
            ("C blackholed", 2, phase_starts[2], phase_starts[3]),
            ("A answering 503", 0, phase_starts[3], phase_starts[4]),
        ];
        let timeline = timeline.lock().map(|t| t.clone()).unwrap_or_default();
        let detection = faults
            .iter()
            .map(|&(what, i, broken, repaired)| {
                let first = |from: Duration, in_service: bool| {
                    timeline
                        .iter()
                        .find(|&&(t, j, s)| j == i && s == in_service && t >= from)
                        .map(|&(t, ..)| t - from)
                };
                (
                    what.to_string(),
                    first(broken, false),
                    first(repaired, true),
                )
            })
            .collect();
        let c = &self.counters;
        let mut all = c
            .all
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        let served = c.served.lock().map(|s| s.clone()).unwrap_or_default();
        DemoSummary {
            requests: c.requests.load(Ordering::Relaxed),
            client_errors: c.errors.load(Ordering::Relaxed),
            retries: self.retries(),
            served_by: served
                .iter()
                .map(|(a, n)| (self.name_of(*a).to_string(), *n))
                .collect(),
            latency: percentiles(&mut all),
            detection,
        }
    }
}

fn print_summary(summary: &DemoSummary) {
    println!(
        "\nsummary: {} GETs, {} client-visible errors, {} retries/failovers by the proxy",
        summary.requests, summary.client_errors, summary.retries
    );
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    let [p50, p99, max] = summary.latency;
    println!(
        "client latency: p50 {}, p99 {}, max {}",
        ms(p50),
        ms(p99),
        ms(max)
    );
    for (name, n) in &summary.served_by {
        println!("  backend {name} answered {n}");
    }
    let opt = |d: Option<Duration>| d.map_or("not seen".to_string(), ms);
    for (what, out, back) in &summary.detection {
        println!(
            "  {what}: out of service after {}, back in service {} after its repair",
            opt(*out),
            opt(*back)
        );
    }
    if summary.client_errors == 0 {
        println!("every GET succeeded while backends died, hung and failed.");
    }
}
