//! Heap allocations per proxied keep-alive request, counted on the proxy's
//! worker thread only, through an `Upstream` with its ordinary defaults
//! (round robin, outlier detection, breakers, retry budget, metrics handles).
//!
//! The bound is what the engine needs today plus a little headroom; a change
//! that adds allocations to the request path fails here.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use detour_core::{HttpPeer, ProxyHttp, Result, Session};
use detour_server::upstream::{Upstream, UpstreamConfig};
use detour_server::{HttpProxy, Server, ServerConfig, Stop};
use detour_testkit::alloc;
use detour_testkit::client::RawConnection;
use detour_testkit::{Behavior, Upstream as Backend};

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

struct App {
    up: Arc<Upstream>,
}

impl ProxyHttp for App {
    type CTX = ();
    fn new_ctx(&self) {
        // Only the worker thread's allocations are counted.
        alloc::watch_this_thread();
    }
    async fn upstream_peer(&self, s: &mut Session, _: &mut ()) -> Result<HttpPeer> {
        self.up.select(s).await
    }
}

/// The most allocations one proxied keep-alive GET may cost. Measured: 15
/// (docs/src/performance.md lists them); most are hyper's own (its header
/// read timer, buffer splits, the body channel) and the header map copy sent
/// upstream.
const BOUND: f64 = 20.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_request_costs_a_bounded_number_of_allocations() {
    let backend = Backend::start(Behavior::ok()).await.unwrap();
    let cfg: UpstreamConfig =
        toml::from_str(&format!("backends = [{{ addr = \"{}\" }}]", backend.addr())).unwrap();
    let up = Arc::new(Upstream::from_config("app", &cfg).unwrap());
    let mut server_cfg = ServerConfig::default();
    server_cfg.listen = vec!["127.0.0.1:0".parse().unwrap()];
    let proxy = HttpProxy::builder(App {
        up: Arc::clone(&up),
    })
    .upstream(Arc::clone(&up))
    .config(server_cfg.clone())
    .build();
    let handle = Server::new(server_cfg).start(proxy).unwrap();
    let addr: SocketAddr = handle.addrs()[0];

    let mut conn = RawConnection::connect(addr).await.unwrap();
    let mut send = async |n: usize| {
        for _ in 0..n {
            conn.send(
                b"GET /item HTTP/1.1\r\nhost: alloc.test\r\nuser-agent: t\r\naccept: */*\r\n\r\n",
            )
            .await
            .unwrap();
            let r = tokio::time::timeout(Duration::from_secs(5), conn.read_response())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(r.status, 200);
        }
    };
    // Warm up: the upstream connection pooled, buffers grown, handles made.
    send(200).await;
    let before = alloc::on_watched_threads();
    const N: usize = 2000;
    send(N).await;
    let per_request = (alloc::on_watched_threads() - before) as f64 / N as f64;
    println!("allocations per proxied keep-alive request: {per_request:.2}");
    assert!(
        before > 0,
        "the worker thread was never marked: nothing was counted"
    );
    assert!(
        per_request <= BOUND,
        "{per_request:.2} allocations per request, bound {BOUND}"
    );

    handle.stop(Stop::Immediate);
    tokio::task::spawn_blocking(move || handle.join())
        .await
        .unwrap();
}
