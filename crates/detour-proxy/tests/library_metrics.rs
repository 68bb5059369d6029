//! Metrics for a library user, whatever the order: the upstream is built
//! before the recorder is installed, and `detour_proxy::metrics::serve` still
//! serves every series of it on `/metrics`.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use detour_proxy::server::upstream::{Upstream, UpstreamConfig};
use detour_proxy::server::{HttpProxy, Server, ServerConfig, Stop};
use detour_proxy::testkit::client::RawConnection;
use detour_proxy::testkit::{Behavior, Upstream as Backend};
use detour_proxy::{Error, HttpPeer, ProxyHttp, Result, Session};

/// Every request to the upstream, counted in its request metrics.
struct App {
    up: Arc<Upstream>,
}

impl ProxyHttp for App {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, session: &mut Session, _: &mut ()) -> Result<HttpPeer> {
        self.up.select(session).await
    }

    fn logging(&self, session: &mut Session, _err: Option<&Error>, _: &mut ()) {
        let status = session.response_status().map_or(0, |s| s.as_u16());
        self.up.request_metrics().record(status, session.elapsed());
    }
}

async fn get(addr: std::net::SocketAddr, path: &str) -> detour_proxy::testkit::client::RawResponse {
    let mut c = RawConnection::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
    c.send(req.as_bytes()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), c.read_response())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorder_installed_after_the_upstreams_sees_every_series() {
    let backend = Backend::start(Behavior::ok()).await.unwrap();
    let config: UpstreamConfig =
        toml::from_str(&format!("backends = [{{ addr = \"{}\" }}]", backend.addr())).unwrap();
    let up = Arc::new(Upstream::from_config("app", &config).unwrap());
    // Second, after the upstream was built.
    let metrics = detour_proxy::metrics::serve("127.0.0.1:0".parse().unwrap()).unwrap();

    let mut server = ServerConfig::default();
    server.listen = vec!["127.0.0.1:0".parse().unwrap()];
    let proxy = HttpProxy::builder(App {
        up: Arc::clone(&up),
    })
    .upstream(up)
    .config(server.clone())
    .build();
    let h = tokio::task::spawn_blocking(move || Server::new(server).start(proxy))
        .await
        .unwrap()
        .unwrap();
    for i in 0..3 {
        assert_eq!(get(h.addr(), &format!("/{i}")).await.status, 200);
    }
    // A histogram of the library user's own, with a name and help the text
    // format does not allow as they are.
    metrics::describe_histogram!("my.wait", "Waits.\nMine.");
    metrics::histogram!("my.wait", "in.queue" => "a\"b").record(0.003);
    let page = get(metrics.addr(), "/metrics").await;
    assert_eq!(page.status, 200);
    let text = String::from_utf8_lossy(&page.body);
    for series in [
        "detour_request_duration_seconds_count{upstream=\"app\"} 3",
        "detour_upstream_latency_seconds_count{upstream=\"app\"} 3",
        "# TYPE detour_upstream_latency_seconds histogram",
        "# HELP my_wait Waits.\\nMine.\n# TYPE my_wait histogram\n",
        "my_wait_bucket{in_queue=\"a\\\"b\",le=\"0.0025\"} 0\n",
        "my_wait_bucket{in_queue=\"a\\\"b\",le=\"0.005\"} 1\n",
        "my_wait_count{in_queue=\"a\\\"b\"} 1\n",
        "detour_upstream_attempts_total{upstream=\"app\",outcome=\"success\"} 3",
        "detour_requests_total{upstream=\"app\",status=\"2xx\"} 3",
        "detour_requests_total{upstream=\"app\",status=\"5xx\"} 0",
        "detour_upstream_failure_spread{upstream=\"app\",state=\"normal\"} 1",
        "detour_upstream_panic{upstream=\"app\"} 0",
        "detour_upstream_panic_entries_total{upstream=\"app\"} 0",
    ] {
        assert!(text.contains(series), "no `{series}` in:\n{text}");
    }
    assert_eq!(get(metrics.addr(), "/other").await.status, 404);
    h.stop(Stop::Immediate);
    tokio::task::spawn_blocking(move || h.join()).await.unwrap();
}
