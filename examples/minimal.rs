//! The smallest proxy worth running: one upstream with health checks,
//! outlier detection, breakers and retries, served until a signal.
//!
//! ```text
//! BACKENDS=127.0.0.1:9001,127.0.0.1:9002 cargo run -p examples --bin minimal -- -c proxy.toml
//! ```

use std::sync::Arc;

use detour_proxy::health::HealthConfig;
use detour_proxy::lb::BackendSpec;
use detour_proxy::server::upstream::{Upstream, UpstreamConfig};
use detour_proxy::server::{HttpProxy, Server};
use detour_proxy::{HttpPeer, ProxyHttp, Result, Session};

/// Every request goes to the backend the upstream chooses.
struct App {
    up: Arc<Upstream>,
}

impl ProxyHttp for App {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, session: &mut Session, _ctx: &mut ()) -> Result<HttpPeer> {
        self.up.select(session).await
    }
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    // `-c FILE` for the [server] table (listen addresses, threads, limits).
    let server = Server::from_args();
    let mut config = UpstreamConfig::default();
    let backends = std::env::var("BACKENDS").unwrap_or("127.0.0.1:9001,127.0.0.1:9002".into());
    for addr in backends.split(',') {
        config.backends.push(BackendSpec::new(addr.trim().parse()?));
    }
    config.health = Some(HealthConfig::http("/healthz"));
    let up = Arc::new(Upstream::from_config("app", &config)?);
    // Registered here, the upstream's checks, outlier sweeps and discovery
    // run for as long as the server does.
    let proxy = HttpProxy::builder(App {
        up: Arc::clone(&up),
    })
    .upstream(up)
    .config(server.config().clone())
    .build();
    server.run_forever(proxy)?;
    Ok(())
}
