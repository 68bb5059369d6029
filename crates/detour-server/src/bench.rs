//! Entry points for the crate's criterion benches (`benches/`): the
//! crate-private header forwarding and path normalization, wrapped. Hidden from the docs and not a
//! stable API.

use std::net::SocketAddr;

use http::{request, HeaderMap};

use crate::config::{ForwardingConfig, PathsConfig};
use crate::proxy::forward::{strip_hop_by_hop, Forwarding};
use crate::proxy::path::{normalize_target, PathPolicy};

/// The request-side header forwarding with the default settings
/// (`X-Forwarded-*`, `Via`, hop-by-hop headers removed).
pub struct Forwarder(Forwarding);

impl Forwarder {
    /// Forwarding as a default server config sets it up.
    pub fn new() -> Self {
        Forwarder(Forwarding::new(ForwardingConfig::default(), "detour"))
    }

    /// The head sent upstream for a client's request head.
    pub fn upstream_head(
        &self,
        down: &request::Parts,
        client: Option<SocketAddr>,
    ) -> request::Parts {
        self.0.upstream_head(down, client, false)
    }
}

impl Default for Forwarder {
    fn default() -> Self {
        Forwarder::new()
    }
}

/// The response side: hop-by-hop headers removed from an upstream response.
pub fn strip_response(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers, false);
}

/// Request path normalization with the default `[server.paths]`.
pub struct PathNormalizer(PathPolicy);

impl PathNormalizer {
    /// Normalization as a default server config sets it up.
    pub fn new() -> Self {
        PathNormalizer(PathPolicy::from(&PathsConfig::default()))
    }

    /// Normalize the target of `parts` in place; `false` when it is refused.
    pub fn normalize(&self, parts: &mut request::Parts) -> bool {
        normalize_target(parts, self.0).is_ok()
    }
}

impl Default for PathNormalizer {
    fn default() -> Self {
        PathNormalizer::new()
    }
}
