//! Failover with Detour's hooks, the way a user writes it.
//!
//! A proxy over three backends: round robin that skips backends already tried
//! for this request and backends it has set aside after connection failures.
//! The engine does the rest: retries on another backend, backoff, timeouts.
//!
//! Run the live demo (starts its own backends, breaks them, shows failover):
//!
//! ```text
//! cargo run -p examples --example failover
//! ```
//!
//! Or proxy to backends of your own:
//!
//! ```text
//! cargo run -p examples --example failover -- --listen 127.0.0.1:8080 \
//!     --backend 127.0.0.1:9001 --backend 127.0.0.1:9002 --backend 127.0.0.1:9003
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use detour_proxy::server::{HttpProxy, Server, ServerConfig, Stop};
use detour_proxy::testkit::client::RawConnection;
use detour_proxy::testkit::{Behavior, Upstream};
use detour_proxy::{Backend, Error, ErrorKind, HttpPeer, PeerOptions, ProxyHttp, Result, Session};
use tokio::time::Instant;

/// The user's proxy: three backends, failover in the hooks.
struct Failover {
    backends: Vec<Arc<Backend>>,
    next: AtomicUsize,
    /// How long a backend that refused a connection is set aside.
    set_aside: Duration,
    retries: AtomicU64,
}

/// Per request: which backend this attempt went to.
#[derive(Default)]
struct Ctx {
    attempts: Vec<SocketAddr>,
}

impl ProxyHttp for Failover {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<HttpPeer> {
        let n = self.backends.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        // First choice: a backend not tried yet for this request that may take
        // traffic; failing that, any tried one (the engine backs off first).
        let candidates = (0..n).map(|i| &self.backends[(start + i) % n]);
        let fresh = candidates
            .clone()
            .filter(|b| !session.was_tried(b.addr()))
            .find_map(|b| b.try_admit(now));
        let permit = fresh
            .or_else(|| candidates.clone().find_map(|b| b.try_admit(now)))
            .ok_or_else(|| Error::internal(ErrorKind::NoPeer).context("every backend set aside"))?;
        if session.attempt() > 0 {
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
        ctx.attempts.push(permit.backend().addr());
        let mut options = PeerOptions::default();
        options.connect_timeout = Duration::from_millis(500);
        Ok(HttpPeer::admitted(permit, "app").with_options(options))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        _ctx: &mut Ctx,
        err: Error,
    ) -> Error {
        // A backend that refuses connections is set aside for a while, so the
        // next requests do not pay for trying it.
        if let Some(b) = peer.backend() {
            b.state().eject_until(Instant::now() + self.set_aside);
            println!(
                "  ! {} refused a connection: set aside for {:?}",
                b.addr(),
                self.set_aside
            );
        }
        err
    }

    fn logging(&self, session: &mut Session, err: Option<&Error>, ctx: &mut Ctx) {
        if ctx.attempts.len() > 1 || err.is_some() {
            let outcome = err.map_or_else(|| "ok".to_string(), |e| e.to_string());
            println!(
                "  {} {} tried {:?}: {}",
                session.method(),
                session.uri(),
                ctx.attempts,
                outcome
            );
        }
    }
}

fn parse_args() -> Option<(SocketAddr, Vec<SocketAddr>)> {
    let mut args = std::env::args().skip(1);
    let mut listen = None;
    let mut backends = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().and_then(|v| v.parse().ok()),
            "--backend" => backends.extend(args.next().and_then(|v| v.parse::<SocketAddr>().ok())),
            "-h" | "--help" => {
                println!(
                    "usage: failover [--listen ADDR --backend ADDR...]  (no arguments: live demo)"
                );
                std::process::exit(0);
            }
            other => {
                eprintln!("unknown argument {other:?}; try --help");
                std::process::exit(2);
            }
        }
    }
    listen.map(|l| (l, backends))
}

fn proxy_for(backends: &[SocketAddr]) -> Failover {
    Failover {
        backends: backends
            .iter()
            .map(|a| Arc::new(Backend::new(*a)))
            .collect(),
        next: AtomicUsize::new(0),
        set_aside: Duration::from_secs(2),
        retries: AtomicU64::new(0),
    }
}

fn main() {
    if let Some((listen, backends)) = parse_args() {
        if backends.is_empty() {
            eprintln!("give at least one --backend");
            std::process::exit(2);
        }
        let mut config = ServerConfig::default();
        config.listen = vec![listen];
        let proxy = HttpProxy::builder(proxy_for(&backends))
            .config(config.clone())
            .build();
        println!("proxying {listen} → {backends:?}; Ctrl-C stops");
        if let Err(e) = Server::new(config).run_forever(proxy) {
            eprintln!("cannot start: {e}");
            std::process::exit(1);
        }
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(e) = rt.block_on(demo()) {
        eprintln!("demo failed: {e}");
        std::process::exit(1);
    }
}

/// Send `n` GETs over one keep-alive connection; count what the client saw.
async fn drive(proxy: SocketAddr, n: usize, tally: &mut Tally) -> std::io::Result<()> {
    let mut conn = RawConnection::connect(proxy).await?;
    for i in 0..n {
        let req = format!("GET /item/{i} HTTP/1.1\r\nhost: demo\r\n\r\n");
        conn.send(req.as_bytes()).await?;
        let resp = conn.read_response().await?;
        tally.requests += 1;
        if resp.status == 200 {
            let who = resp.header("x-upstream").unwrap_or("?").to_string();
            *tally.by_backend.entry(who).or_default() += 1;
        } else {
            tally.errors += 1;
            println!("  client saw {}", resp.status);
        }
        if resp.header("connection") == Some("close") {
            conn = RawConnection::connect(proxy).await?;
        }
    }
    Ok(())
}

#[derive(Default)]
struct Tally {
    requests: u64,
    errors: u64,
    by_backend: std::collections::BTreeMap<String, u64>,
}

impl Tally {
    fn show(&mut self, phase: &str) {
        println!(
            "  → {phase}: {} requests so far, {} client errors, this phase served by {:?}\n",
            self.requests, self.errors, self.by_backend
        );
        self.by_backend.clear();
    }
}

async fn demo() -> std::io::Result<()> {
    let a = Upstream::start(Behavior::ok()).await?;
    let b = Upstream::start(Behavior::ok()).await?;
    let c = Upstream::start(Behavior::ok()).await?;
    let addrs = [a.addr(), b.addr(), c.addr()];
    println!("backends: A={} B={} C={}", addrs[0], addrs[1], addrs[2]);

    let mut config = ServerConfig::default();
    config.listen = vec!["127.0.0.1:0".parse().expect("a literal address")];
    let proxy = HttpProxy::builder(proxy_for(&addrs))
        .config(config.clone())
        .build();
    let server = Server::new(config).start(proxy.clone())?;
    let at = server.addr();
    println!("proxy listening on {at}\n");
    let mut tally = Tally::default();

    println!("1. all three backends healthy");
    drive(at, 30, &mut tally).await?;
    tally.show("healthy");

    println!("2. backend B is killed (stops listening, resets its connections)");
    b.kill().await;
    drive(at, 30, &mut tally).await?;
    tally.show("B dead");

    println!("3. backend C starts answering 503: GETs are retried on another backend");
    c.set_behavior(Behavior::status(503));
    drive(at, 30, &mut tally).await?;
    tally.show("B dead, C 503");

    println!("4. B comes back, C recovers");
    b.restart().await?;
    c.set_behavior(Behavior::ok());
    tokio::time::sleep(Duration::from_secs(2)).await; // B's set-aside ends
    drive(at, 30, &mut tally).await?;
    tally.show("recovered");

    let retries = proxy.hooks().retries.load(Ordering::Relaxed);
    println!(
        "summary: {} requests, {} client errors, {} retries to another backend",
        tally.requests, tally.errors, retries
    );
    server.stop(Stop::Graceful);
    server.join();
    if tally.errors > 0 {
        return Err(std::io::Error::other("the client saw errors"));
    }
    Ok(())
}
