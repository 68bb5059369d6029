//! Hedged requests: a latency tail cut off by asking a second backend.
//!
//! Three backends each answer 5 % of requests after 200 ms and the rest at
//! once. The same 300 GETs, one after another, go through two upstreams over
//! them: one plain, one with `hedge = { delay = "20ms" }`, which sends a late
//! request to another backend after 20 ms and takes the first answer. The
//! latencies of both are printed.
//!
//! ```text
//! cargo run -p examples --example hedging
//! ```
//!
//! Exits 1 if the hedged p99 is not under 100 ms while the plain one is
//! 200 ms or more, or a request failed. (The first 10 requests cannot be
//! hedged: the hedge budget, 10 % of the requests, has to fill first.)

use std::sync::Arc;
use std::time::Duration;

use detour_proxy::server::upstream::{Upstream as DUpstream, UpstreamConfig};
use detour_proxy::testkit::client::RawConnection;
use detour_proxy::testkit::{Behavior, Upstream};
use examples::{check, serve, shutdown, Fallible};
use tokio::time::Instant;

const REQUESTS: usize = 300;

#[tokio::main]
async fn main() -> Fallible<()> {
    let mut backends = Vec::new();
    for (seed, name) in (0..).zip(["A", "B", "C"]) {
        // Each picks its own slow requests (a seed of its own).
        let slow = Behavior::slow_share(5, Duration::from_millis(200)).seeded(seed);
        let b = Upstream::start(slow).await?;
        println!(
            "backend {name} on {}: 5 % of answers after 200 ms",
            b.addr()
        );
        backends.push(b);
    }
    let mut p99 = Vec::new();
    for (label, hedge) in [("plain", ""), ("hedged", "hedge = { delay = \"20ms\" }")] {
        let up = upstream(&backends, hedge)?;
        let server = serve(up).await?;
        let mut took = latencies(server.addr()).await?;
        took.sort();
        let at = |q: f64| took[((q * took.len() as f64).ceil() as usize).clamp(1, took.len()) - 1];
        println!(
            "{label:>7}: p50 {:>8.1?}  p99 {:>8.1?}  max {:>8.1?}",
            at(0.5),
            at(0.99),
            at(1.0)
        );
        p99.push(at(0.99));
        shutdown(server).await?;
    }
    check(
        p99[0] >= Duration::from_millis(200),
        "the plain p99 shows the tail",
    )?;
    check(
        p99[1] < Duration::from_millis(100),
        "hedging cut the tail off",
    )?;
    Ok(())
}

/// An upstream over `backends`, round robin, with `extra` lines of config.
fn upstream(backends: &[Upstream], extra: &str) -> Fallible<Arc<DUpstream>> {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ addr = \"{}\" }}", b.addr()))
        .collect();
    let text = format!("backends = [{}]\n{extra}", list.join(", "));
    let config: UpstreamConfig = toml::from_str(&text)?;
    Ok(Arc::new(DUpstream::from_config("app", &config)?))
}

/// How long each of [`REQUESTS`] GETs took, one after another on one
/// keep-alive connection; an error if any was not a 200.
async fn latencies(proxy: std::net::SocketAddr) -> Fallible<Vec<Duration>> {
    let mut conn = RawConnection::connect(proxy).await?;
    let mut took = Vec::with_capacity(REQUESTS);
    for i in 0..REQUESTS {
        let t = Instant::now();
        let req = format!("GET /item/{i} HTTP/1.1\r\nhost: demo\r\n\r\n");
        conn.send(req.as_bytes()).await?;
        let resp = conn.read_response().await?;
        if resp.status != 200 {
            return Err(format!("request {i} answered {}", resp.status).into());
        }
        took.push(t.elapsed());
    }
    Ok(took)
}
