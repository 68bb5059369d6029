//! Forwarding headers: what a proxy removes, adds and checks on the way through.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, Method, StatusCode, Uri, Version};

use crate::config::ForwardingConfig;

/// Headers that describe one hop and never travel further (RFC 9110 §7.6.1),
/// plus the old `Proxy-Connection`.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Whether the request asks for a protocol upgrade (WebSocket and friends).
pub(crate) fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

/// Whether a `Connection` header lists `token` (case-insensitive).
pub(crate) fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Remove hop-by-hop headers and those the `Connection` header names. When
/// `upgrade` is set, `Upgrade` and `Connection: upgrade` are kept so the next hop
/// sees the upgrade request (or response).
///
/// One pass over the names (comparisons, no hashing) finds which of these
/// headers are present; only those are then removed. Most messages carry none
/// or only `Connection: keep-alive`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let mut seen = 0u16;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            seen |= 1 << i;
        } else if name == header::UPGRADE {
            seen |= 1 << HOP_BY_HOP.len();
        }
    }
    if seen & 1 != 0 {
        // `Connection` may name further headers; the usual tokens (keep-alive,
        // close, upgrade) are handled without building names.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| {
                !t.is_empty()
                    && !["keep-alive", "close", "upgrade"]
                        .iter()
                        .any(|k| t.eq_ignore_ascii_case(k))
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if seen & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if seen & (1 << HOP_BY_HOP.len()) != 0 {
        headers.remove(header::UPGRADE);
    }
}

/// Why a downstream request is refused before any hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadRequest {
    pub(crate) status: StatusCode,
    pub(crate) reason: &'static str,
}

/// Check what hyper's parser lets through but a careful proxy refuses:
/// request smuggling vectors (conflicting or duplicate framing) and bodies over
/// the limit.
pub(crate) fn check_request(
    parts: &request::Parts,
    max_body: u64,
) -> Result<Option<u64>, BadRequest> {
    let bad = |reason| {
        Err(BadRequest {
            status: StatusCode::BAD_REQUEST,
            reason,
        })
    };
    if let Some(seen) = parts.extensions.get::<crate::framing::AmbiguousFraming>() {
        return bad(seen.0);
    }
    let te = parts.headers.get_all(header::TRANSFER_ENCODING);
    let te_count = te.iter().count();
    let cl = parts.headers.get_all(header::CONTENT_LENGTH);
    let mut cl_iter = cl.iter();
    let cl_value = cl_iter.next();
    if cl_iter.next().is_some() {
        return bad("duplicate Content-Length");
    }
    if te_count > 0 && cl_value.is_some() {
        return bad("both Content-Length and Transfer-Encoding");
    }
    if te_count > 0 && parts.version == Version::HTTP_10 {
        return bad("Transfer-Encoding in an HTTP/1.0 request");
    }
    let len = match cl_value {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) {
            Some(n) => Some(n),
            None => return bad("malformed Content-Length"),
        },
    };
    if parts.uri.authority().is_none()
        && !parts.headers.contains_key(header::HOST)
        && parts.version == Version::HTTP_11
    {
        return bad("missing Host");
    }
    if parts.method == Method::CONNECT {
        return Err(BadRequest {
            status: StatusCode::METHOD_NOT_ALLOWED,
            reason: "CONNECT is not proxied",
        });
    }
    if let Some(n) = len {
        if max_body != 0 && n > max_body {
            return Err(BadRequest {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                reason: "request body over the limit",
            });
        }
    }
    Ok(len)
}

/// Generates request ids: a random per-process prefix and a counter, as 32 hex
/// digits, written without any formatting machinery.
pub(crate) struct RequestIds {
    prefix: u64,
    counter: AtomicU64,
}

impl RequestIds {
    pub(crate) fn new() -> Self {
        RequestIds {
            prefix: fastrand::u64(..),
            counter: AtomicU64::new(fastrand::u64(..)),
        }
    }

    pub(crate) fn next(&self) -> HeaderValue {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 32];
        let hex = b"0123456789abcdef";
        for (i, word) in [self.prefix, n].into_iter().enumerate() {
            for j in 0..16 {
                buf[i * 16 + j] = hex[((word >> (60 - 4 * j)) & 0xf) as usize];
            }
        }
        // Invariant: 32 ASCII hex digits are always a valid header value.
        HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
    }
}

/// Everything needed to write forwarding headers, prepared once.
pub(crate) struct Forwarding {
    pub(crate) config: ForwardingConfig,
    pub(crate) via: HeaderValue,
    pub(crate) request_id: HeaderName,
}

impl Forwarding {
    pub(crate) fn new(config: ForwardingConfig, proxy_name: &str) -> Self {
        // Invariant: both were validated with the server config.
        let via = HeaderValue::from_str(&format!("1.1 {proxy_name}"))
            .unwrap_or_else(|_| HeaderValue::from_static("1.1 detour"));
        let request_id = HeaderName::from_bytes(config.request_id_header.as_bytes())
            .unwrap_or_else(|_| HeaderName::from_static("x-request-id"));
        Forwarding {
            config,
            via,
            request_id,
        }
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.config.trusted_proxies.iter().any(|n| n.contains(ip))
    }

    /// Build the head sent upstream from the client's head.
    pub(crate) fn upstream_head(
        &self,
        down: &request::Parts,
        client: Option<SocketAddr>,
        upgrade: bool,
    ) -> request::Parts {
        let mut headers = down.headers.clone();
        // Room for what is added below (Host, X-Forwarded-*, Via, Connection):
        // the map grows once here rather than insert by insert.
        headers.reserve(6);
        strip_hop_by_hop(&mut headers, upgrade);
        // `TE: trailers` is end to end in practice: gRPC servers want it.
        // Only HTTP/2 clients (gRPC) are looked at, so HTTP/1.1 pays nothing.
        if down.version == Version::HTTP_2
            && down
                .headers
                .get(header::TE)
                .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"))
        {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        let present = Present::scan(&headers);
        // We answer `Expect: 100-continue` ourselves: the client's body is read
        // only once an upstream is connected.
        if present.expect {
            headers.remove(header::EXPECT);
        }
        if !present.host {
            if let Some(auth) = down.uri.authority() {
                if let Ok(v) = HeaderValue::from_str(auth.as_str()) {
                    headers.insert(header::HOST, v);
                }
            }
        }
        if self.config.x_forwarded {
            self.add_x_forwarded(&mut headers, down, client, present);
        }
        if self.config.via {
            headers.append(header::VIA, self.via.clone());
        }
        let uri = match down.uri.path_and_query() {
            // Origin form: the upstream sees `/path?query`, never our authority.
            Some(pq) if down.uri.authority().is_some() => {
                Uri::from_maybe_shared(bytes::Bytes::copy_from_slice(pq.as_str().as_bytes()))
                    .unwrap_or_else(|_| down.uri.clone())
            }
            _ => down.uri.clone(),
        };
        let mut head = http::Request::new(()).into_parts().0;
        head.method = down.method.clone();
        head.uri = uri;
        head.version = Version::HTTP_11;
        head.headers = headers;
        head
    }

    fn add_x_forwarded(
        &self,
        headers: &mut HeaderMap,
        down: &request::Parts,
        client: Option<SocketAddr>,
        present: Present,
    ) {
        let Some(client) = client else { return };
        let ip = client.ip().to_canonical();
        let trusted = self.trusted(ip);
        let xff = HeaderName::from_static("x-forwarded-for");
        let xfp = HeaderName::from_static("x-forwarded-proto");
        let xfh = HeaderName::from_static("x-forwarded-host");
        let prev = if present.xff && trusted {
            headers.get(&xff).and_then(|v| v.to_str().ok())
        } else {
            None
        };
        let value = match prev {
            Some(prev) => HeaderValue::from_str(&format!("{prev}, {ip}")).ok(),
            None => Some(client_ip_value(ip)),
        };
        if let Some(v) = value {
            headers.insert(xff, v);
        }
        if !(trusted && present.xfp) {
            headers.insert(xfp, HeaderValue::from_static("http"));
        }
        if !(trusted && present.xfh) {
            match down.headers.get(header::HOST) {
                Some(h) => {
                    headers.insert(xfh, h.clone());
                }
                None if present.xfh => {
                    headers.remove(xfh);
                }
                None => {}
            }
        }
    }
}

/// Which of the headers the forwarding looks at a request carries, found in
/// one pass over the names instead of one hash lookup each.
#[derive(Debug, Clone, Copy, Default)]
struct Present {
    expect: bool,
    host: bool,
    xff: bool,
    xfp: bool,
    xfh: bool,
}

impl Present {
    fn scan(headers: &HeaderMap) -> Present {
        let mut p = Present::default();
        for name in headers.keys() {
            match name.as_str() {
                "expect" => p.expect = true,
                "host" => p.host = true,
                "x-forwarded-for" => p.xff = true,
                "x-forwarded-proto" => p.xfp = true,
                "x-forwarded-host" => p.xfh = true,
                _ => {}
            }
        }
        p
    }
}

/// The `X-Forwarded-For` value naming one client address. Formatting an
/// address costs more than the rest of the header work, and a connection's
/// requests all come from one address: each worker thread keeps the last
/// value and hands out cheap clones of it.
fn client_ip_value(ip: IpAddr) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((cached, v)) = last.as_ref() {
            if *cached == ip {
                return v.clone();
            }
        }
        // Invariant: an IP address formats to ASCII digits, dots, colons and
        // hex letters, always a valid header value.
        let v = HeaderValue::from_str(&ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        *last = Some((ip, v.clone()));
        v
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(raw: &[(&str, &str)]) -> request::Parts {
        let mut b = http::Request::builder().uri("/a?b=1");
        for (k, v) in raw {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn fwd(trusted: &[&str]) -> Forwarding {
        let config = ForwardingConfig {
            trusted_proxies: trusted.iter().map(|s| s.parse().unwrap()).collect(),
            ..ForwardingConfig::default()
        };
        Forwarding::new(config, "detour")
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let p = parts(&[
            ("host", "example.com"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
            ("expect", "100-continue"),
        ]);
        let up = fwd(&[]).upstream_head(&p, Some("10.0.0.9:5000".parse().unwrap()), false);
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "upgrade",
            "expect",
        ] {
            assert!(!up.headers.contains_key(gone), "{gone} survived");
        }
        assert_eq!(up.headers["x-kept"], "yes");
        assert_eq!(up.headers["host"], "example.com");
        assert_eq!(up.headers["via"], "1.1 detour");
        assert_eq!(up.headers["x-forwarded-for"], "10.0.0.9");
        assert_eq!(up.headers["x-forwarded-proto"], "http");
        assert_eq!(up.headers["x-forwarded-host"], "example.com");
        assert_eq!(up.uri, "/a?b=1");
    }

    #[test]
    fn upgrade_survives_stripping() {
        let p = parts(&[
            ("host", "h"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert!(is_upgrade_request(&p.headers));
        let up = fwd(&[]).upstream_head(&p, None, true);
        assert_eq!(up.headers["upgrade"], "websocket");
        assert_eq!(up.headers["connection"], "upgrade");
    }

    #[test]
    fn x_forwarded_is_trusted_only_from_configured_proxies() {
        let p = parts(&[
            ("host", "h"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
        ]);
        let untrusted = fwd(&[]).upstream_head(&p, Some("10.0.0.9:1".parse().unwrap()), false);
        assert_eq!(untrusted.headers["x-forwarded-for"], "10.0.0.9");
        assert_eq!(untrusted.headers["x-forwarded-proto"], "http");
        let trusted =
            fwd(&["10.0.0.0/8"]).upstream_head(&p, Some("10.0.0.9:1".parse().unwrap()), false);
        assert_eq!(trusted.headers["x-forwarded-for"], "1.2.3.4, 10.0.0.9");
        assert_eq!(trusted.headers["x-forwarded-proto"], "https");
    }

    #[test]
    fn smuggling_vectors_are_refused() {
        let both = parts(&[
            ("host", "h"),
            ("content-length", "5"),
            ("transfer-encoding", "chunked"),
        ]);
        assert_eq!(
            check_request(&both, 0).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        let mut dup = parts(&[("host", "h"), ("content-length", "5")]);
        dup.headers
            .append("content-length", HeaderValue::from_static("5"));
        assert!(check_request(&dup, 0).is_err());
        let big = parts(&[("host", "h"), ("content-length", "100")]);
        assert_eq!(
            check_request(&big, 10).unwrap_err().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(check_request(&big, 0).unwrap(), Some(100));
    }

    #[test]
    fn request_ids_are_unique_hex() {
        let ids = RequestIds::new();
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.to_str().unwrap().bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
