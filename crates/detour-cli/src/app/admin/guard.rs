//! Who may use the admin API: the checks every request but `/healthz`
//! passes before it reaches an endpoint, in this order.
//!
//! 1. **Host** (DNS rebinding): a page on `evil.example` whose name
//!    re-resolves to 127.0.0.1 reaches the loopback listener with
//!    `Host: evil.example:9901`. Only the address the connection came in on
//!    (`ip:port`), `localhost:port` and the names in `[admin] allowed_hosts`
//!    are served; anything else, or no Host at all, gets `421`.
//! 2. **Origin** (cross-site requests): a browser lets any page POST to
//!    `http://127.0.0.1:9901/...` without reading the answer, which is enough
//!    to drain a backend. A request that changes state (any method but GET
//!    and HEAD) with an `Origin` other than the admin's own, or with
//!    `Sec-Fetch-Site: cross-site` / `same-site`, gets `403`. Clients that
//!    are not browsers send neither header and pass.
//! 3. **Token**: with `[admin] token` set, `Authorization: Bearer <token>`
//!    (the scheme in any case, RFC 9110 §11.1), compared in constant time;
//!    else `401`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;

use super::text;
use crate::app::secret::constant_time_eq;

/// The checks, with what they compare against.
#[derive(Debug, Clone)]
pub struct Guard {
    token: Option<Arc<str>>,
    /// `[admin] allowed_hosts`, lowercased.
    allowed_hosts: Arc<[String]>,
}

/// Why a request is turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The Host is not one of the admin's own names.
    MisdirectedHost,
    /// A state-changing request from another origin.
    CrossOrigin,
    /// The token is missing or wrong.
    Unauthorized,
}

impl Refusal {
    /// The answer the client gets.
    pub fn response(self) -> Response<Full<Bytes>> {
        match self {
            Refusal::MisdirectedHost => text(
                StatusCode::MISDIRECTED_REQUEST,
                "the Host header does not name this admin listener",
            ),
            Refusal::CrossOrigin => text(
                StatusCode::FORBIDDEN,
                "cross-origin requests may not change state",
            ),
            Refusal::Unauthorized => {
                let mut r = text(StatusCode::UNAUTHORIZED, "a bearer token is required");
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
                r
            }
        }
    }
}

impl Guard {
    /// Checks for a listener whose token is `token` and whose extra host
    /// names are `allowed_hosts`.
    pub fn new(token: Option<&str>, allowed_hosts: &[String]) -> Self {
        Guard {
            token: token.map(Arc::from),
            allowed_hosts: allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        }
    }

    /// Run the three checks on `req`, which came in on the connection whose
    /// local address is `local`.
    ///
    /// # Errors
    /// The first check that fails.
    pub fn check<B>(&self, req: &Request<B>, local: SocketAddr) -> Result<(), Refusal> {
        let headers = req.headers();
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| self.host_allowed(h, local))
            .ok_or(Refusal::MisdirectedHost)?;
        let changes_state = !matches!(*req.method(), Method::GET | Method::HEAD);
        if changes_state && !same_origin(headers, host) {
            return Err(Refusal::CrossOrigin);
        }
        if !self.authorized(headers) {
            return Err(Refusal::Unauthorized);
        }
        Ok(())
    }

    /// `host` (a Host header) names `local` by address or as `localhost`,
    /// with its port, or is one of the configured names (any port).
    fn host_allowed(&self, host: &str, local: SocketAddr) -> bool {
        let Ok(authority) = host.parse::<http::uri::Authority>() else {
            return false;
        };
        let name = authority.host().to_ascii_lowercase();
        if self.allowed_hosts.contains(&name) {
            return true;
        }
        if authority.port_u16().unwrap_or(80) != local.port() {
            return false;
        }
        let ip = name.trim_start_matches('[').trim_end_matches(']');
        name == "localhost"
            || ip
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.to_canonical() == local.ip().to_canonical())
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
    }
}

/// The credentials of an `Authorization: Bearer <token>` value; the scheme
/// matches in any case (RFC 9110 §11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// No `Origin` and no cross-site `Sec-Fetch-Site` (a client that is not a
/// browser), or an `Origin` that is `http(s)://` + the request's own Host.
fn same_origin(headers: &HeaderMap, host: &str) -> bool {
    let fetch_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    if matches!(fetch_site.as_deref(), Some("cross-site" | "same-site")) {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    ["http://", "https://"].iter().any(|scheme| {
        origin
            .get(..scheme.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
            && origin[scheme.len()..].eq_ignore_ascii_case(host)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> SocketAddr {
        "127.0.0.1:9901".parse().unwrap()
    }

    fn req(method: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri("/status");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn hosts_are_the_listener_s_own_names() {
        let g = Guard::new(None, &["Admin.Internal".into()]);
        for ok in [
            "127.0.0.1:9901",
            "localhost:9901",
            "LOCALHOST:9901",
            "admin.internal",
            "admin.internal:8443",
        ] {
            assert!(g.host_allowed(ok, local()), "{ok}");
        }
        for bad in [
            "evil.example:9901",
            "127.0.0.1:9902",
            "localhost",
            "127.0.0.2:9901",
            "127.0.0.1.evil.example:9901",
            "",
        ] {
            assert!(!g.host_allowed(bad, local()), "{bad}");
        }
        let v6: SocketAddr = "[::1]:9901".parse().unwrap();
        assert!(g.host_allowed("[::1]:9901", v6));
        assert!(!g.host_allowed("[::2]:9901", v6));
        assert_eq!(
            g.check(&req("GET", &[]), local()),
            Err(Refusal::MisdirectedHost),
            "no Host at all"
        );
    }

    #[test]
    fn state_changes_must_come_from_the_same_origin() {
        let g = Guard::new(None, &[]);
        let host = ("host", "127.0.0.1:9901");
        let check = |m: &str, extra: &[(&str, &str)]| {
            let mut h = vec![host];
            h.extend_from_slice(extra);
            g.check(&req(m, &h), local())
        };
        assert_eq!(check("POST", &[]), Ok(()), "curl sends no Origin");
        assert_eq!(
            check("POST", &[("origin", "http://127.0.0.1:9901")]),
            Ok(())
        );
        assert_eq!(check("POST", &[("sec-fetch-site", "same-origin")]), Ok(()));
        assert_eq!(check("POST", &[("sec-fetch-site", "none")]), Ok(()));
        let refused = Err(Refusal::CrossOrigin);
        assert_eq!(check("POST", &[("origin", "http://evil.example")]), refused);
        assert_eq!(check("POST", &[("origin", "null")]), refused);
        assert_eq!(
            check("DELETE", &[("origin", "http://localhost:9901")]),
            refused
        );
        assert_eq!(check("POST", &[("sec-fetch-site", "cross-site")]), refused);
        assert_eq!(check("PUT", &[("sec-fetch-site", "same-site")]), refused);
        // Reading is harmless: the browser keeps a cross-origin answer from
        // the page anyway.
        assert_eq!(check("GET", &[("origin", "http://evil.example")]), Ok(()));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_the_token_exact() {
        let g = Guard::new(Some("s3cret"), &[]);
        let with = |auth: &str| {
            g.check(
                &req(
                    "GET",
                    &[("host", "localhost:9901"), ("authorization", auth)],
                ),
                local(),
            )
        };
        for ok in ["Bearer s3cret", "bearer s3cret", "BEARER  s3cret "] {
            assert_eq!(with(ok), Ok(()), "{ok}");
        }
        for bad in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "Basic s3cret",
            "Bearer",
            "s3cret",
        ] {
            assert_eq!(with(bad), Err(Refusal::Unauthorized), "{bad}");
        }
    }
}
