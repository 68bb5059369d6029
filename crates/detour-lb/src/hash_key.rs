//! Which part of a request a consistent-hash selection keys on.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use http::header::{COOKIE, HOST};
use http::request::Parts;
use http::HeaderName;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::hash::{StableHasher, DOMAIN_KEY};
use crate::InvalidConfig;

/// The part of a request whose hash picks the backend, parsed from strings
/// such as `"header:x-user"`.
///
/// | string | hashes |
/// |---|---|
/// | `header:NAME` | the first value of header `NAME`, as bytes |
/// | `cookie:NAME` | the value of cookie `NAME` (all `Cookie` headers searched) |
/// | `query:NAME` | the value of query parameter `NAME`, as sent (not percent-decoded) |
/// | `path` | the URI path |
/// | `uri` | the path and query |
/// | `host` | the host (URI authority, else the `Host` header), lower-cased, without port |
/// | `client_ip` | the client's IP address (not its port) |
/// | `method` | the method |
///
/// **When the part is absent** (no such header, cookie or parameter),
/// [`hash`](Self::hash) falls back to the client IP: a client without a
/// session cookie still sticks to one backend, and the result stays
/// deterministic, which a random fallback would not be. Use
/// [`try_hash`](Self::try_hash) to choose another fallback.
///
/// Hashing never allocates and gives the same value on every host and run
/// (see [`hash_bytes`](crate::hash_bytes)), so several proxies agree.
///
/// ```
/// use detour_lb::HashKey;
/// let key: HashKey = "cookie:session".parse().unwrap();
/// let (parts, ()) = http::Request::builder()
///     .uri("/cart")
///     .header("cookie", "theme=dark; session=abc123")
///     .body(())
///     .unwrap()
///     .into_parts();
/// let client = "192.0.2.7:50000".parse().unwrap();
/// assert_eq!(key.try_hash(&parts, client), Some(detour_lb::hash_bytes(b"abc123")));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HashKey {
    /// A request header's first value.
    Header(HeaderName),
    /// A cookie's value.
    Cookie(Box<str>),
    /// A query parameter's raw value.
    Query(Box<str>),
    /// The URI path.
    Path,
    /// The URI path and query.
    Uri,
    /// The host, lower-cased, without port.
    Host,
    /// The client's IP address.
    ClientIp,
    /// The request method.
    Method,
}

impl HashKey {
    /// The hash of this part of the request, falling back to the client IP's
    /// hash when the part is absent.
    pub fn hash(&self, parts: &Parts, client: SocketAddr) -> u64 {
        self.try_hash(parts, client)
            .unwrap_or_else(|| hash_ip(client.ip()))
    }

    /// The hash of this part of the request, or `None` when it is absent.
    pub fn try_hash(&self, parts: &Parts, client: SocketAddr) -> Option<u64> {
        match self {
            HashKey::Header(name) => parts.headers.get(name).map(|v| hash(v.as_bytes())),
            HashKey::Cookie(name) => parts
                .headers
                .get_all(COOKIE)
                .iter()
                .find_map(|v| find_pair(v.as_bytes(), b';', name.as_bytes()))
                .map(hash),
            HashKey::Query(name) => parts
                .uri
                .query()
                .and_then(|q| find_pair(q.as_bytes(), b'&', name.as_bytes()))
                .map(hash),
            HashKey::Path => Some(hash(parts.uri.path().as_bytes())),
            HashKey::Uri => Some(hash(
                parts
                    .uri
                    .path_and_query()
                    .map_or(parts.uri.path(), |pq| pq.as_str())
                    .as_bytes(),
            )),
            HashKey::Host => {
                let host = match parts.uri.host() {
                    Some(h) => h.as_bytes(),
                    None => strip_port(parts.headers.get(HOST)?.as_bytes()),
                };
                let mut h = StableHasher::new(DOMAIN_KEY);
                for &b in host {
                    h.write_u8(b.to_ascii_lowercase());
                }
                Some(h.finish())
            }
            HashKey::ClientIp => Some(hash_ip(client.ip())),
            HashKey::Method => Some(hash(parts.method.as_str().as_bytes())),
        }
    }
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = StableHasher::new(DOMAIN_KEY);
    h.write(bytes);
    h.finish()
}

fn hash_ip(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => hash(&v4.octets()),
        // An IPv4-mapped IPv6 client is the same client.
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => hash(&v4.octets()),
            None => hash(&v6.octets()),
        },
    }
}

/// The value of `name` in `name=value` pairs separated by `sep` (spaces
/// around pairs ignored).
fn find_pair<'a>(list: &'a [u8], sep: u8, name: &[u8]) -> Option<&'a [u8]> {
    list.split(|&b| b == sep).find_map(|pair| {
        let pair = pair.trim_ascii();
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        (k == name).then_some(v)
    })
}

/// `host[:port]` or `[v6]:port` without the port.
fn strip_port(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        return match host.iter().position(|&b| b == b']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.iter().rposition(|&b| b == b':') {
        Some(colon) => &host[..colon],
        None => host,
    }
}

impl FromStr for HashKey {
    type Err = InvalidConfig;

    fn from_str(s: &str) -> Result<Self, InvalidConfig> {
        let bad = |why: &str| InvalidConfig::new("hash_key", format!("{s:?}: {why}"));
        if let Some((kind, name)) = s.split_once(':') {
            if name.is_empty() {
                return Err(bad("the name after ':' is empty"));
            }
            return match kind {
                "header" => HeaderName::from_bytes(name.as_bytes())
                    .map(HashKey::Header)
                    .map_err(|_| bad("not a valid header name")),
                "cookie" => Ok(HashKey::Cookie(name.into())),
                "query" => Ok(HashKey::Query(name.into())),
                _ => Err(bad("expected header:, cookie: or query:")),
            };
        }
        match s {
            "path" => Ok(HashKey::Path),
            "uri" => Ok(HashKey::Uri),
            "host" => Ok(HashKey::Host),
            "client_ip" => Ok(HashKey::ClientIp),
            "method" => Ok(HashKey::Method),
            _ => Err(bad(
                "expected header:NAME, cookie:NAME, query:NAME, path, uri, host, client_ip or method",
            )),
        }
    }
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashKey::Header(n) => write!(f, "header:{n}"),
            HashKey::Cookie(n) => write!(f, "cookie:{n}"),
            HashKey::Query(n) => write!(f, "query:{n}"),
            HashKey::Path => f.write_str("path"),
            HashKey::Uri => f.write_str("uri"),
            HashKey::Host => f.write_str("host"),
            HashKey::ClientIp => f.write_str("client_ip"),
            HashKey::Method => f.write_str("method"),
        }
    }
}

impl<'de> Deserialize<'de> for HashKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for HashKey {
    /// The form it is read from (`header:x-user`, `client_ip`).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    const CLIENT: &str = "198.51.100.9:4000";

    #[test]
    fn each_key_reads_its_part() {
        let c: SocketAddr = CLIENT.parse().unwrap();
        let p = parts(
            "/a/b?user=u1&x=2",
            &[
                ("x-user", "alice"),
                ("cookie", "a=1"),
                ("cookie", "sid=s-9; b=2"),
                ("host", "Example.COM:8443"),
            ],
        );
        let k = |s: &str| s.parse::<HashKey>().unwrap().try_hash(&p, c);
        assert_eq!(k("header:x-user"), Some(hash(b"alice")));
        assert_eq!(k("cookie:sid"), Some(hash(b"s-9")));
        assert_eq!(k("query:user"), Some(hash(b"u1")));
        assert_eq!(k("path"), Some(hash(b"/a/b")));
        assert_eq!(k("uri"), Some(hash(b"/a/b?user=u1&x=2")));
        assert_eq!(k("host"), Some(hash(b"example.com")));
        assert_eq!(k("method"), Some(hash(b"GET")));
        assert_eq!(k("client_ip"), Some(hash(&[198, 51, 100, 9])));
        assert_eq!(k("cookie:none"), None);
        assert_eq!(k("query:use"), None, "a prefix is not the name");
    }

    #[test]
    fn an_absent_part_falls_back_to_the_client_ip() {
        let c: SocketAddr = CLIENT.parse().unwrap();
        let p = parts("/", &[]);
        let key: HashKey = "header:x-user".parse().unwrap();
        assert_eq!(key.hash(&p, c), HashKey::ClientIp.hash(&p, c));
        let other: SocketAddr = "198.51.100.9:1".parse().unwrap();
        assert_eq!(key.hash(&p, c), key.hash(&p, other), "the port is ignored");
    }

    #[test]
    fn host_comes_from_the_authority_or_the_header_without_port() {
        let c: SocketAddr = CLIENT.parse().unwrap();
        let abs = parts("http://EXAMPLE.com:80/x", &[]);
        assert_eq!(HashKey::Host.try_hash(&abs, c), Some(hash(b"example.com")));
        let v6 = parts("/", &[("host", "[::1]:8080")]);
        assert_eq!(HashKey::Host.try_hash(&v6, c), Some(hash(b"[::1]")));
    }

    #[test]
    fn bad_keys_are_refused_with_the_field_named() {
        for bad in ["header:", "header:bad header", "body", "cookie", "tls:sni"] {
            let err = bad.parse::<HashKey>().unwrap_err();
            assert_eq!(err.field, "hash_key", "{bad}");
        }
    }

    proptest! {
        #[test]
        fn parse_and_display_round_trip(name in "[a-z][a-z0-9-]{0,20}", kind in 0usize..8) {
            let s = match kind {
                0 => format!("header:{name}"),
                1 => format!("cookie:{name}"),
                2 => format!("query:{name}"),
                3 => "path".into(),
                4 => "uri".into(),
                5 => "host".into(),
                6 => "client_ip".into(),
                _ => "method".into(),
            };
            let key: HashKey = s.parse().unwrap();
            prop_assert_eq!(key.to_string(), s);
        }
    }
}
