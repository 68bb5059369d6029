//! Shared helpers for the real-socket tests: a round-robin proxy over testkit
//! upstreams, started on 127.0.0.1:0, and a raw HTTP/1.1 client.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use detour_core::{
    AttemptOutcome, Backend, Error, ErrorKind, HttpPeer, Observer, ProxyHttp, Result, Session,
};
use detour_server::upstream::{Upstream, UpstreamConfig};
use detour_server::{HttpProxy, Server, ServerConfig, ServerHandle};
use detour_testkit::client::{RawConnection, RawResponse};

pub mod h2backend;
pub mod tls;

/// A proxy whose every peer comes from one [`Upstream`]: its load balancing,
/// health, breakers and retry policy.
pub struct Selecting {
    pub up: Arc<Upstream>,
}

impl ProxyHttp for Selecting {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, s: &mut Session, _: &mut ()) -> Result<HttpPeer> {
        self.up.select(s).await
    }
}

/// An [`Upstream`] named `name` over `backends`, with `extra` TOML lines of
/// its config.
pub fn upstream(name: &str, backends: &[SocketAddr], extra: &str) -> Arc<Upstream> {
    let list: Vec<String> = backends
        .iter()
        .map(|a| format!("{{ addr = \"{a}\" }}"))
        .collect();
    let text = format!("backends = [{}]\n{extra}", list.join(", "));
    let cfg: UpstreamConfig = toml::from_str(&text).unwrap();
    Arc::new(Upstream::from_config(name, &cfg).unwrap())
}

/// Round robin over the backends, skipping those already tried for the
/// request while others remain.
pub struct RoundRobin {
    pub backends: Vec<Arc<Backend>>,
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn new(addrs: &[SocketAddr]) -> Self {
        RoundRobin {
            backends: addrs.iter().map(|a| Arc::new(Backend::new(*a))).collect(),
            next: AtomicUsize::new(0),
        }
    }
}

impl ProxyHttp for RoundRobin {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, s: &mut Session, _: &mut ()) -> Result<HttpPeer> {
        let n = self.backends.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let all = (0..n).map(|i| &self.backends[(start + i) % n]);
        let pick = all
            .clone()
            .find(|b| !s.was_tried(b.addr()))
            .or_else(|| all.clone().next())
            .ok_or_else(|| Error::internal(ErrorKind::NoPeer))?;
        Ok(HttpPeer::for_backend(Arc::clone(pick), "app"))
    }
}

/// Records every attempt outcome.
#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<(SocketAddr, bool, Option<u16>)>>);

impl Observer for Recorder {
    fn on_attempt(&self, o: &AttemptOutcome<'_>) {
        self.0
            .lock()
            .unwrap()
            .push((o.addr, o.class.is_backend_failure(), o.status));
    }
}

pub struct Proxy {
    pub handle: ServerHandle,
    pub proxy: HttpProxy<RoundRobin>,
    pub recorder: Arc<Recorder>,
}

impl Proxy {
    pub fn addr(&self) -> SocketAddr {
        self.handle.addr()
    }
}

/// The server configuration every test starts from: the defaults, with the
/// HTTP/1.1 upstream client named by `DETOUR_TEST_HTTP1_CLIENT` (`native` or
/// `hyper`; unset: the default, `native`), so `.ci/run` runs the suites on
/// both.
pub fn base_config() -> ServerConfig {
    let mut c = ServerConfig::default();
    if let Ok(client) = std::env::var("DETOUR_TEST_HTTP1_CLIENT") {
        c.pool.http1_client = toml::Value::String(client)
            .try_into()
            .expect("DETOUR_TEST_HTTP1_CLIENT is hyper or native");
    }
    c
}

pub fn config() -> ServerConfig {
    let mut c = base_config();
    c.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c
}

pub fn start(addrs: &[SocketAddr], config: ServerConfig) -> Proxy {
    let recorder = Arc::new(Recorder::default());
    let proxy = HttpProxy::builder(RoundRobin::new(addrs))
        .config(config.clone())
        .observer(recorder.clone())
        .build();
    let handle = Server::new(config).start(proxy.clone()).unwrap();
    Proxy {
        handle,
        proxy,
        recorder,
    }
}

/// Stop `h` at once and wait for its workers (off the test's runtime).
pub async fn shut(h: ServerHandle) {
    h.stop(detour_server::Stop::Immediate);
    tokio::task::spawn_blocking(move || h.join()).await.unwrap();
}

/// One request on a fresh connection.
pub async fn send(addr: SocketAddr, raw: &str) -> std::io::Result<RawResponse> {
    let mut c = RawConnection::connect(addr).await?;
    c.send(raw.as_bytes()).await?;
    c.read_response().await
}

pub fn get(path: &str, id: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: test\r\nx-request-id: {id}\r\n\r\n")
}

pub fn post(path: &str, id: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: test\r\nx-request-id: {id}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Write on `s` until the peer closes (a write fails); `false` if it is
/// still open after `within`. The kernel buffers fill both ways first, so
/// this takes a few megabytes.
pub async fn write_until_closed(
    s: &mut tokio::net::TcpStream,
    within: std::time::Duration,
) -> bool {
    use tokio::io::AsyncWriteExt;
    let chunk = vec![b'x'; 64 * 1024];
    tokio::time::timeout(within, async { while s.write_all(&chunk).await.is_ok() {} })
        .await
        .is_ok()
}
