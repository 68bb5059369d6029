//! Hedged requests through real sockets: the losing attempt's HTTP/1.1
//! connection is closed, never pooled, and its HTTP/2 stream is reset.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use detour_server::upstream::{Upstream, UpstreamConfig};
use detour_server::{HttpProxy, Server, ServerHandle};
use detour_testkit::{Behavior, Upstream as Backend};
use support::h2backend::{H2Backend, Mode};
use support::{send, Selecting};

/// `slow` in the first priority tier, `fast` in the second: the first
/// attempt goes to `slow`, a hedge after 20 ms to `fast` (a budget of one
/// hedge per request, so the first request may be hedged).
fn tiered(slow: SocketAddr, fast: SocketAddr, extra: &str) -> Arc<Upstream> {
    let text = format!(
        "backends = [{{ addr = \"{slow}\", priority = 0 }}, {{ addr = \"{fast}\", priority = 1 }}]\n\
         failover = {{ kind = \"priority\" }}\nhedge = {{ delay = \"20ms\", budget_ratio = 1.0 }}\n{extra}"
    );
    let cfg: UpstreamConfig = toml::from_str(&text).unwrap();
    Arc::new(Upstream::from_config("app", &cfg).unwrap())
}

fn serve(up: &Arc<Upstream>) -> ServerHandle {
    let mut cfg = support::base_config();
    cfg.listen = vec!["127.0.0.1:0".parse().unwrap()];
    let proxy = HttpProxy::builder(Selecting { up: Arc::clone(up) })
        .config(cfg.clone())
        .build();
    Server::new(cfg).start(proxy).unwrap()
}

const GET: &str = "GET /x HTTP/1.1\r\nhost: app\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_losing_http1_connection_is_closed_not_pooled() {
    let slow = Backend::start(Behavior::hang()).await.unwrap();
    let fast = Backend::start(Behavior::ok()).await.unwrap();
    let up = tiered(slow.addr(), fast.addr(), "");
    let h = serve(&up);
    let r = send(h.addrs()[0], GET).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!((slow.received().len(), fast.received().len()), (1, 1));
    assert_eq!(slow.connections(), 1);

    // The slow backend answers again. Had the cancelled connection been
    // pooled, the next request would go out on it, behind the unanswered
    // one; it goes out on a new connection.
    slow.set_behavior(Behavior::ok());
    let r = send(h.addrs()[0], GET).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(slow.received().len(), 2);
    assert_eq!(slow.connections(), 2, "a fresh connection after the cancel");
    support::shut(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_losing_http2_stream_is_reset() {
    let slow = H2Backend::start(Mode::Slow(Duration::from_secs(5))).await;
    let fast = H2Backend::start(Mode::Ok).await;
    let up = tiered(slow.addr(), fast.addr(), "http2 = true");
    let h = serve(&up);
    let r = send(h.addrs()[0], GET).await.unwrap();
    assert_eq!(r.status, 200);
    // The reset reaches the slow backend right after the answer.
    for _ in 0..200 {
        if slow.resets() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(slow.resets(), 1, "the cancelled stream was reset");
    assert_eq!(fast.seen().len(), 1);
    support::shut(h).await;
}
