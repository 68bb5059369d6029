//! Detour's server: listeners, the HTTP engine, the upstream pool, and the
//! retry loop that drives a user's [`ProxyHttp`](detour_core::ProxyHttp) hooks.
//!
//! # Layout
//! Requests flow one way, downstream → engine → upstream; no module uses one
//! to its left (`tests/module_cycles.rs` keeps every crate free of cycles).
//! - [`server`]: [`Server`] — config file + command line, workers, signals.
//! - [`proxy`]: [`HttpProxy`] — serves downstream HTTP/1.1 and HTTP/2 (cleartext
//!   or TLS; one drain path for all) and runs the hooks in the engine.
//! - [`upstream`]: the [`Connect`] trait, dialing, the per-worker connection
//!   pools, the upstream body type, error classification, and [`Upstream`](upstream::Upstream).
//! - [`config`]: [`ServerConfig`], validated at load with the field named
//!   ([`ConfigError`]).
//! - [`tls`]: certificates for TLS listeners (reloadable) and TLS to upstreams.
//! - [`telemetry`]: every metric family emitted, with its help text.
//!
//! # Platforms
//! Unix only (Linux, macOS, the BSDs): [`Server`] drains on SIGTERM, stops
//! on SIGINT and reloads on SIGHUP through `tokio::signal::unix`, and the
//! crate does not build elsewhere.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use detour_core::{HttpPeer, ProxyHttp, Result, Session};
//! use detour_server::upstream::{Upstream, UpstreamConfig};
//! use detour_server::{HttpProxy, Server};
//!
//! struct App { up: Arc<Upstream> }
//! impl ProxyHttp for App {
//!     type CTX = ();
//!     fn new_ctx(&self) {}
//!     async fn upstream_peer(&self, s: &mut Session, _c: &mut ()) -> Result<HttpPeer> {
//!         self.up.select(s).await
//!     }
//! }
//!
//! let server = Server::from_args();
//! let config: UpstreamConfig = toml::from_str(r#"backends = [{ addr = "127.0.0.1:9001" }]"#).unwrap();
//! let up = Arc::new(Upstream::from_config("app", &config).unwrap());
//! // Registered, its health checks, outlier sweeps and discovery run with the server.
//! let proxy = HttpProxy::builder(App { up: Arc::clone(&up) })
//!     .upstream(up)
//!     .config(server.config().clone())
//!     .build();
//! server.run_forever(proxy).unwrap();
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

#[doc(hidden)]
pub mod bench;
pub mod config;
mod error;
mod framing;
#[doc(hidden)]
pub mod fuzzing;
mod io;
mod lazy_timer;
mod listener;
pub mod proxy;
mod send_timeout;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod upgrade;
pub mod upstream;
mod waker_slot;

pub use config::{AppProtocol, ConfigError, Http2Config, ListenerConfig, ServerConfig};
pub use proxy::{HttpProxy, HttpProxyBuilder, ProxyBody};
pub use server::{Opt, Server, ServerHandle, Stop, TlsReloader};
pub use upstream::{Connect, TcpConnector};
