//! Where one attempt goes, and its timeouts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, Permit};
use crate::invalid::{check_duration, check_optional_duration, Zero};
use crate::observe::Observer;
use crate::pick::Pick;
use crate::retry::RetryPolicy;
use crate::InvalidConfig;

/// Timeouts and connection options for one peer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PeerOptions {
    /// TCP connect timeout. Default 3 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// TLS handshake timeout. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub tls_timeout: Duration,
    /// Longest time from the start of an attempt (connect and upload
    /// included) until the response head, and longest silence while reading the
    /// response body. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// Longest time the upstream may take to accept the request body while
    /// the client is still sending it (an idle gap of the upload). Default 60 s.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// How long an idle pooled connection is kept (capped further by the
    /// upstream's `Keep-Alive: timeout=`). Default 30 s.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Time limit of one attempt until response headers; overrides the retry
    /// policy's when set. Default none.
    #[serde(with = "humantime_serde")]
    pub per_try_timeout: Option<Duration>,
}

impl Default for PeerOptions {
    fn default() -> Self {
        PeerOptions {
            connect_timeout: Duration::from_secs(3),
            tls_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(30),
            per_try_timeout: None,
        }
    }
}

impl PeerOptions {
    /// Check every timeout: each at most [`MAX_DURATION`](crate::MAX_DURATION),
    /// and above zero except `idle_timeout` (0 keeps no idle connection).
    ///
    /// # Errors
    /// [`InvalidConfig`] naming the first field (`read_timeout`, …) whose
    /// value cannot work.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        check_duration("connect_timeout", self.connect_timeout, Zero::Refused)?;
        check_duration("tls_timeout", self.tls_timeout, Zero::Refused)?;
        check_duration("read_timeout", self.read_timeout, Zero::Refused)?;
        check_duration("write_timeout", self.write_timeout, Zero::Refused)?;
        check_duration("idle_timeout", self.idle_timeout, Zero::Allowed)?;
        check_optional_duration("per_try_timeout", self.per_try_timeout, Zero::Refused)
    }
}

/// TLS to a peer: the server name to send (SNI) and verify, and the client
/// configuration to handshake with.
///
/// The configuration is opaque to this crate (which does no I/O of its own):
/// `detour-server`'s `tls::TlsClient::peer_tls` makes one, built once per
/// upstream, so a peer only carries two reference counts.
#[derive(Clone)]
pub struct PeerTls {
    /// The name sent as SNI and checked against the certificate (a DNS name
    /// or an IP address).
    pub server_name: Arc<str>,
    /// The TLS client configuration (a `rustls::ClientConfig`).
    pub client: Arc<dyn std::any::Any + Send + Sync>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// The destination of one attempt.
pub struct HttpPeer {
    /// Address to connect to.
    pub addr: SocketAddr,
    /// The upstream's name, used in `Proxy-Status` (never the address).
    pub upstream: Arc<str>,
    /// Timeouts and options.
    pub options: PeerOptions,
    /// TLS to the peer; cleartext when `None`.
    pub tls: Option<PeerTls>,
    /// Speak HTTP/2: with TLS, offer `h2` first in ALPN (the peer may still
    /// choose HTTP/1.1); in cleartext, HTTP/2 by prior knowledge (h2c).
    /// HTTP/2 connections are shared by concurrent requests.
    pub http2: bool,
    backend: Option<Arc<Backend>>,
    permit: Option<Permit>,
    budget: Option<Arc<dyn RetryBudgetGate>>,
    observer: Option<Arc<dyn Observer>>,
    policy: Option<Arc<RetryPolicy>>,
    guard: Option<Box<dyn Send + Sync>>,
    pick: Option<Pick>,
    hedging: Option<Arc<crate::hedge::Hedging>>,
}

impl std::fmt::Debug for HttpPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpPeer")
            .field("addr", &self.addr)
            .field("upstream", &self.upstream)
            .field("options", &self.options)
            .field("tls", &self.tls)
            .field("http2", &self.http2)
            .field("admitted", &self.permit.is_some())
            .field("budget", &self.budget.is_some())
            .finish_non_exhaustive()
    }
}

pub use crate::budget::RetryBudgetGate;

impl HttpPeer {
    /// A peer at `addr`, part of upstream `upstream`, with default options.
    pub fn new(addr: SocketAddr, upstream: impl Into<Arc<str>>) -> Self {
        HttpPeer {
            addr,
            upstream: upstream.into(),
            options: PeerOptions::default(),
            tls: None,
            http2: false,
            backend: None,
            permit: None,
            budget: None,
            observer: None,
            policy: None,
            guard: None,
            pick: None,
            hedging: None,
        }
    }

    /// A peer for an admitted backend; the permit is held until the attempt
    /// ends, and the attempt's outcome is reported against this backend.
    pub fn admitted(permit: Permit, upstream: impl Into<Arc<str>>) -> Self {
        let backend = Arc::clone(permit.backend());
        HttpPeer {
            addr: backend.addr(),
            upstream: upstream.into(),
            options: PeerOptions::default(),
            tls: None,
            http2: false,
            backend: Some(backend),
            permit: Some(permit),
            budget: None,
            observer: None,
            policy: None,
            guard: None,
            pick: None,
            hedging: None,
        }
    }

    /// A peer for `backend` without admission (the caller decided).
    pub fn for_backend(backend: Arc<Backend>, upstream: impl Into<Arc<str>>) -> Self {
        HttpPeer {
            addr: backend.addr(),
            upstream: upstream.into(),
            options: PeerOptions::default(),
            tls: None,
            http2: false,
            backend: Some(backend),
            permit: None,
            budget: None,
            observer: None,
            policy: None,
            guard: None,
            pick: None,
            hedging: None,
        }
    }

    /// Speak TLS to the peer.
    pub fn with_tls(mut self, tls: PeerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Speak HTTP/2 to the peer (see [`HttpPeer::http2`]).
    pub fn with_http2(mut self, http2: bool) -> Self {
        self.http2 = http2;
        self
    }

    /// Replace the options.
    pub fn with_options(mut self, options: PeerOptions) -> Self {
        self.options = options;
        self
    }

    /// Spend retries of this request from `budget` (the engine deposits the
    /// request at its first attempt and withdraws before every retry).
    pub fn with_budget(mut self, budget: Arc<dyn RetryBudgetGate>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Hedge requests to this peer's upstream by `hedging`
    /// ([`crate::hedge`]).
    pub fn with_hedging(mut self, hedging: Arc<crate::hedge::Hedging>) -> Self {
        self.hedging = Some(hedging);
        self
    }

    /// The hedging of this peer's upstream, if it hedges.
    pub fn hedging(&self) -> Option<&Arc<crate::hedge::Hedging>> {
        self.hedging.as_ref()
    }

    /// The retry budget this peer's upstream spends from, if any.
    pub fn budget(&self) -> Option<&Arc<dyn RetryBudgetGate>> {
        self.budget.as_ref()
    }

    /// Report this attempt's outcome to `observer` as well as to the proxy's
    /// own observers: how an upstream's breakers and outlier detection hear
    /// of its attempts without any registration.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Retry with `policy` unless the `retry_policy` hook chose one: how an
    /// upstream's own retry settings apply (read from the first attempt's peer).
    pub fn with_policy(mut self, policy: Arc<RetryPolicy>) -> Self {
        self.policy = Some(policy);
        self
    }

    /// The retry policy this peer's upstream asks for, if any.
    pub fn policy(&self) -> Option<&Arc<RetryPolicy>> {
        self.policy.as_ref()
    }

    /// The peer's own observer, if any.
    pub fn observer(&self) -> Option<&Arc<dyn Observer>> {
        self.observer.as_ref()
    }

    /// Hold `guard` (a concurrency-limit permit, say) for as long as the
    /// attempt lasts; it is dropped with the peer.
    pub fn with_guard(mut self, guard: impl Send + Sync + 'static) -> Self {
        self.guard = Some(Box::new(guard));
        self
    }

    /// Say why the balancer chose this peer (kept in the attempt history).
    pub fn with_pick(mut self, pick: Pick) -> Self {
        self.pick = Some(pick);
        self
    }

    /// Why the balancer chose this peer, when one said.
    pub fn pick(&self) -> Option<Pick> {
        self.pick
    }

    /// The backend whose state this attempt's outcome updates, if any.
    pub fn backend(&self) -> Option<&Arc<Backend>> {
        self.backend.as_ref()
    }

    /// Give up the admission permit and any guard early (the attempt is over).
    pub fn release(&mut self) {
        self.permit = None;
        self.guard = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_that_cannot_work_are_refused() {
        assert_eq!(PeerOptions::default().validate(), Ok(()));
        let zero = PeerOptions {
            read_timeout: Duration::ZERO,
            ..Default::default()
        };
        assert_eq!(zero.validate().unwrap_err().field, "read_timeout");
        let huge = PeerOptions {
            connect_timeout: Duration::from_secs(10_000_000_000_000_000_000),
            ..Default::default()
        };
        assert_eq!(huge.validate().unwrap_err().field, "connect_timeout");
        let no_idle = PeerOptions {
            idle_timeout: Duration::ZERO,
            ..Default::default()
        };
        assert_eq!(no_idle.validate(), Ok(()));
    }
}
