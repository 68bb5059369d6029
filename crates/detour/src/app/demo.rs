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

/// Run the demo. `metrics` is the recorder's handle (retry counts come from it).
///
/// # Errors
/// A backend or the proxy could not start.
pub async fn run(
    opts: DemoOptions,
    metrics: Option<crate::metrics::MetricsHandle>,
) -> Result<DemoSummary, Box<dyn std::error::Error + Send + Sync>> {
    let names = ["A", "B", "C"];
    let mut ups = Vec::new();
    for _ in 0..3 {
        ups.push(Upstream::start(Behavior::ok()).await?);
    }
    let addrs: Vec<SocketAddr> = ups.iter().map(Upstream::addr).collect();
    let name_of = |a: SocketAddr| addrs.iter().position(|x| *x == a).map_or("?", |i| names[i]);
    let config = demo_config(&addrs);
    let running = super::start(&config, None, metrics.clone(), None)?;
    let proxy = running.addr();
    let app = Arc::clone(&running.app);
    if opts.live {
        println!(
            "detour demo: proxy on {proxy}, backends A={} B={} C={}",
            addrs[0], addrs[1], addrs[2]
        );
        if let Some(a) = running.admin_addr {
            println!("admin API on http://{a}/status and /metrics while it runs");
        }
        println!(
            "{} clients send GETs; each phase lasts {:?}.\n",
            opts.clients, opts.phase
        );
    }

    let counters = Arc::new(Counters::default());
    let phases = 5u32;
    let until = Instant::now() + opts.phase * phases;
    let mut tasks = Vec::new();
    for _ in 0..opts.clients {
        tasks.push(tokio::spawn(client(
            proxy,
            Arc::clone(&counters),
            opts.pause,
            until,
        )));
    }

    let script: [(&str, u32); 5] = [
        ("all three backends healthy", 0),
        ("B is killed (stops listening, resets its connections)", 1),
        ("B is back; C is blackholed (accepts, never answers)", 2),
        ("C is back; A answers 503 to everything", 3),
        ("A is healthy again: everything recovers", 4),
    ];
    let start = Instant::now();
    // Samples, every 10 ms, whether each backend is in service (healthy and
    // its breaker closed), and logs every change with its time.
    let timeline: Arc<Mutex<Vec<(Duration, usize, bool)>>> = Arc::default();
    let watcher = {
        let (app, timeline, addrs) = (Arc::clone(&app), Arc::clone(&timeline), addrs.clone());
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
    };
    let mut phase_starts = Vec::new();
    let mut last = (0u64, 0u64, BTreeMap::new());
    for (title, step) in script {
        phase_starts.push(start.elapsed());
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
        if opts.live {
            println!("== {:>4.1}s  {title}", start.elapsed().as_secs_f64());
            println!(
                "   time   req/s  errors  p99 ms  retries | share of traffic, health/breaker per backend"
            );
        }
        let phase_end = Instant::now() + opts.phase;
        while Instant::now() < phase_end {
            tokio::time::sleep(Duration::from_secs(1).min(phase_end - Instant::now())).await;
            let reqs = counters.requests.load(Ordering::Relaxed);
            let errs = counters.errors.load(Ordering::Relaxed);
            let served = counters
                .served
                .lock()
                .map(|s| s.clone())
                .unwrap_or_default();
            let retries = metrics.as_ref().map_or(0, |m| retries_from(&m.render()));
            let mut recent = counters
                .recent
                .lock()
                .map(|mut v| std::mem::take(&mut *v))
                .unwrap_or_default();
            let p99 = percentiles(&mut recent)[1];
            if opts.live {
                let state = app.current();
                let mut cols = Vec::new();
                if let Some(up) = state.upstreams.get("app") {
                    let total: u64 = served.values().sum::<u64>() - last.2.values().sum::<u64>();
                    for b in up.backends().iter() {
                        let now_n = served.get(&b.addr()).copied().unwrap_or(0);
                        let was = last.2.get(&b.addr()).copied().unwrap_or(0);
                        let share = if total == 0 {
                            0.0
                        } else {
                            (now_n - was) as f64 * 100.0 / total as f64
                        };
                        cols.push(format!(
                            "{} {:>3.0}% {}/{}",
                            name_of(b.addr()),
                            share,
                            app.health("app", b),
                            Breaker::of(b)
                        ));
                    }
                }
                println!(
                    "  {:>5.1}s {:>6} {:>7} {:>7.1} {:>8} | {}",
                    start.elapsed().as_secs_f64(),
                    reqs - last.0,
                    errs - last.1,
                    p99.as_secs_f64() * 1e3,
                    retries,
                    cols.join("   ")
                );
            }
            last = (reqs, errs, served);
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let _ = watcher.await;
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
    let mut all = counters
        .all
        .lock()
        .map(|mut v| std::mem::take(&mut *v))
        .unwrap_or_default();
    let served = counters
        .served
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    let summary = DemoSummary {
        requests: counters.requests.load(Ordering::Relaxed),
        client_errors: counters.errors.load(Ordering::Relaxed),
        retries: metrics.as_ref().map_or(0, |m| retries_from(&m.render())),
        served_by: served
            .iter()
            .map(|(a, n)| (name_of(*a).to_string(), *n))
            .collect(),
        latency: percentiles(&mut all),
        detection,
    };
    tokio::task::spawn_blocking(move || running.stop(Stop::Graceful)).await?;
    if opts.live {
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
    Ok(summary)
}
