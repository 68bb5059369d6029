//! The HTTP check: one request on a fresh connection, judged by its status
//! and, optionally, its body.

use std::sync::Arc;
use std::time::Duration;

use detour_core::connect::{ClientExchange, Connect, ExchangeRequest};
use detour_core::Backend;
use http::header::{HOST, USER_AGENT};
use http::HeaderValue;
use tokio::time::Instant;

use super::check::{CheckFailure, CheckFailureKind, HealthCheck};
use super::config::{HealthConfig, StatusRange};
use super::exchange::Http1Exchange;
use detour_core::InvalidConfig;

/// How much of a body is searched for `body_contains`.
const BODY_LIMIT: usize = 64 * 1024;

/// Sends `method path` with a `Host` header and passes when the status is
/// accepted and, if asked, the body contains the expected text. Each check
/// opens a fresh connection, so the backend's accept path is part of what is
/// checked.
///
/// The request goes through a [`ClientExchange`]: the server's own (the
/// upstream's TLS and HTTP/2, as traffic dials) when one is given
/// ([`with_exchange`](Self::with_exchange)), otherwise plain-TCP HTTP/1.1
/// over a [`Connect`] ([`from_config`](Self::from_config)).
#[derive(Clone)]
pub struct HttpCheck {
    exchange: Arc<dyn ClientExchange>,
    /// Boxed: a header map is large, and checks are moved around whole.
    request: Box<ExchangeRequest>,
    timeout: Duration,
    expected: Arc<[StatusRange]>,
    body_contains: Option<Arc<str>>,
}

impl std::fmt::Debug for HttpCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpCheck")
            .field("request", &self.request)
            .field("expected", &self.expected)
            .field("body_contains", &self.body_contains)
            .finish_non_exhaustive()
    }
}

impl HttpCheck {
    /// The HTTP check `config` describes (its `method`, `path`, `host`,
    /// `expected_statuses`, `body_contains` and `timeout`), in plain HTTP/1.1
    /// over `connector`.
    ///
    /// # Errors
    /// [`InvalidConfig`] when the configuration does not validate.
    pub fn from_config<C: Connect>(
        config: &HealthConfig,
        connector: C,
    ) -> Result<Self, InvalidConfig> {
        Self::with_exchange(config, Arc::new(Http1Exchange::new(connector)))
    }

    /// The HTTP check `config` describes, sent through `exchange`.
    ///
    /// # Errors
    /// [`InvalidConfig`] when the configuration does not validate.
    pub fn with_exchange(
        config: &HealthConfig,
        exchange: Arc<dyn ClientExchange>,
    ) -> Result<Self, InvalidConfig> {
        let config = config.clone().validate()?;
        let mut request = ExchangeRequest::new(config.parsed_method()?, config.parsed_path()?);
        // Without a configured Host, the exchange names the backend's address.
        if let Some(h) = &config.host {
            let host = HeaderValue::from_str(h)
                .map_err(|_| InvalidConfig::new("health.host", "not a valid Host"))?;
            request.headers.insert(HOST, host);
        }
        request
            .headers
            .insert(USER_AGENT, HeaderValue::from_static("detour-health"));
        if config.body_contains.is_some() {
            request.body_limit = BODY_LIMIT;
        }
        Ok(HttpCheck {
            exchange,
            request: Box::new(request),
            timeout: config.timeout,
            expected: config.expected_statuses.into(),
            body_contains: config.body_contains.map(Into::into),
        })
    }
}

impl HealthCheck for HttpCheck {
    async fn check(&self, backend: &Backend) -> Result<(), CheckFailure> {
        let start = Instant::now();
        let resp = self
            .exchange
            .exchange(backend.addr(), &self.request, self.timeout)
            .await
            .map_err(|e| {
                // An exchange that ran out the check's time is the check's
                // timeout, whichever of the two timers noticed first.
                if e.kind().is_timeout() && start.elapsed() >= self.timeout {
                    CheckFailure::timeout(self.timeout)
                } else {
                    CheckFailure::from_error(&e)
                }
            })?;
        let status = resp.status.as_u16();
        if !self.expected.iter().any(|r| r.contains(status)) {
            return Err(CheckFailure::new(
                CheckFailureKind::Status(status),
                format!("status {status}"),
            ));
        }
        match &self.body_contains {
            Some(needle) if !contains(&resp.body, needle.as_bytes()) => Err(CheckFailure::new(
                CheckFailureKind::Body,
                format!("body does not contain {needle:?}"),
            )),
            _ => Ok(()),
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}
