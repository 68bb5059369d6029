//! Runnable Detour examples live in this package's `examples/` targets.
//!
//! This library is their demo plumbing — test backends, a client that tallies
//! who answered, health events to wait for, checks — kept apart so each
//! example shows only its proxy. None of it is needed to use Detour.

use std::collections::BTreeMap;
use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use detour_proxy::health::{EventKind, HealthEvent};
use detour_proxy::server::upstream::EventHook;
use detour_proxy::testkit::client::RawConnection;
use detour_proxy::testkit::{Behavior, Upstream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What the demos return: any error ends them with exit status 1.
pub type Fallible<T> = Result<T, Box<dyn Error>>;

/// Backend names by address, to print "B" rather than "127.0.0.1:41235".
pub type Names = BTreeMap<SocketAddr, &'static str>;

/// Answers counted by backend name, or by `HTTP <status>` when not 200.
pub type Tally = BTreeMap<String, usize>;

/// Health events as the demo waits for them.
pub type Events = mpsc::UnboundedReceiver<(SocketAddr, EventKind)>;

/// Start one healthy test backend per name on 127.0.0.1:0 and print where.
///
/// # Errors
/// A backend could not bind.
pub async fn backends(names: &[&'static str]) -> Fallible<(Vec<Upstream>, Names)> {
    let mut all = Vec::new();
    let mut by_addr = Names::new();
    for name in names {
        let b = Upstream::start(Behavior::ok()).await?;
        println!("backend {name} on {}", b.addr());
        by_addr.insert(b.addr(), name);
        all.push(b);
    }
    Ok((all, by_addr))
}

/// Send `n` GETs to `proxy`, one connection each, with the extra header
/// lines `headers` (each ending in `\r\n`); tally who answered.
///
/// # Errors
/// The proxy could not be reached or answered something that is not HTTP.
pub async fn send(proxy: SocketAddr, n: usize, names: &Names, headers: &str) -> Fallible<Tally> {
    let mut seen = Tally::new();
    for i in 0..n {
        let mut conn = RawConnection::connect(proxy).await?;
        let req =
            format!("GET /item/{i} HTTP/1.1\r\nhost: demo\r\nconnection: close\r\n{headers}\r\n");
        conn.send(req.as_bytes()).await?;
        let resp = conn.read_response().await?;
        let who = resp
            .header("x-upstream")
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .and_then(|a| names.get(&a));
        let key = match who {
            Some(name) if resp.status == 200 => name.to_string(),
            _ => format!("HTTP {}", resp.status),
        };
        *seen.entry(key).or_default() += 1;
    }
    Ok(seen)
}

/// Requests of `seen` answered 200.
pub fn ok_count(seen: &Tally) -> usize {
    seen.iter()
        .filter(|(k, _)| !k.starts_with("HTTP"))
        .map(|(_, v)| v)
        .sum()
}

/// A hook for [`Upstream::from_config_with_events`] that prints every health
/// event with the time since `t0`, and the receiver to [`wait_for`] them.
///
/// [`Upstream::from_config_with_events`]: detour_proxy::server::upstream::Upstream::from_config_with_events
pub fn health_events(names: &Names, t0: Instant) -> (EventHook, Events) {
    let (tx, rx) = mpsc::unbounded_channel();
    let names = names.clone();
    let hook = Arc::new(move |e: &HealthEvent| {
        let who = names.get(&e.backend).copied().unwrap_or("?");
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "  [{secs:5.2}s] health: {who} is {} ({})",
            e.kind.as_str(),
            e.reason
        );
        let _ = tx.send((e.backend, e.kind));
    });
    (hook, rx)
}

/// Wait (at most 5 s) for the health event `kind` of every one of `backends`.
///
/// # Errors
/// One did not come in time.
pub async fn wait_for(
    events: &mut Events,
    backends: &[SocketAddr],
    kind: EventKind,
) -> Fallible<()> {
    let mut missing = backends.to_vec();
    let wanted = async {
        while !missing.is_empty() {
            let Some((b, k)) = events.recv().await else {
                return false;
            };
            if k == kind {
                missing.retain(|m| *m != b);
            }
        }
        true
    };
    match tokio::time::timeout(Duration::from_secs(5), wanted).await {
        Ok(true) => Ok(()),
        _ => Err(format!("no `{}` event for {backends:?} within 5 s", kind.as_str()).into()),
    }
}

/// Print `✓ what`, or fail the demo with it.
///
/// # Errors
/// `ok` is false.
pub fn check(ok: bool, what: &str) -> Fallible<()> {
    if ok {
        println!("   ✓ {what}");
        Ok(())
    } else {
        Err(format!("expected: {what}").into())
    }
}

/// The whole proxy these examples run: every request goes where the
/// [`Upstream`](detour_proxy::server::upstream::Upstream) chooses. With an
/// `Upstream`, this is all a user writes — its load balancing, health checks,
/// outlier detection, breakers, retry policy and budget come with the peers
/// `select` returns.
pub struct UpstreamProxy {
    /// The upstream every request goes to.
    pub up: Arc<detour_proxy::server::upstream::Upstream>,
}

impl detour_proxy::ProxyHttp for UpstreamProxy {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        session: &mut detour_proxy::Session,
        _: &mut (),
    ) -> detour_proxy::Result<detour_proxy::HttpPeer> {
        self.up.select(session).await
    }
}

/// Serve `up` on 127.0.0.1:0 with [`UpstreamProxy`]. The server runs the
/// first round of health checks before it listens; that blocks, so it runs
/// off the runtime serving the test backends.
///
/// # Errors
/// The server could not start.
pub async fn serve(
    up: Arc<detour_proxy::server::upstream::Upstream>,
) -> Fallible<detour_proxy::server::ServerHandle> {
    let mut config = detour_proxy::server::ServerConfig::default();
    config.listen = vec!["127.0.0.1:0".parse()?];
    let proxy = detour_proxy::server::HttpProxy::builder(UpstreamProxy {
        up: Arc::clone(&up),
    })
    .upstream(up)
    .config(config.clone())
    .build();
    let server =
        tokio::task::spawn_blocking(move || detour_proxy::server::Server::new(config).start(proxy))
            .await??;
    Ok(server)
}

/// Drain the server and wait for it.
///
/// # Errors
/// The waiting task panicked.
pub async fn shutdown(server: detour_proxy::server::ServerHandle) -> Fallible<()> {
    tokio::task::spawn_blocking(move || {
        server.stop(detour_proxy::server::Stop::Graceful);
        server.join();
    })
    .await?;
    Ok(())
}
