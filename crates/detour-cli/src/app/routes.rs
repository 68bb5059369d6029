//! Routes: which upstream a request goes to, matched by host and path prefix.
//!
//! Routes are tried in the order the file lists them; the first whose host
//! pattern and path prefix both match wins. A host pattern is `*` (any host),
//! an exact name (`api.example.com`), or a suffix wildcard (`*.example.com`,
//! which matches `a.example.com` but not `example.com`). Matching ignores
//! case and any `:port` on the request's host.
//!
//! A route matches the path the server normalized (`[server.paths]`), the
//! same path its upstream receives; a `raw_path` route matches, and
//! forwards, the path as the client sent it.

use std::sync::Arc;

use detour_core::{PeerOptions, RetryPolicy};
use detour_server::upstream::Upstream;

/// A host pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Any host.
    Any,
    /// Exactly this host (lower case).
    Exact(String),
    /// Any host ending in `.suffix` (lower case, without the dot).
    Suffix(String),
}

impl HostPattern {
    /// Parse `*`, `*.example.com` or `example.com`.
    ///
    /// # Errors
    /// An empty pattern, or a `*` anywhere but alone or at the front.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        if s.is_empty() {
            return Err("must not be empty (use \"*\" for any host)".into());
        }
        if s == "*" {
            return Ok(HostPattern::Any);
        }
        if let Some(rest) = s.strip_prefix("*.") {
            if rest.is_empty() || rest.contains('*') {
                return Err(format!("{s:?}: a wildcard must be \"*\" or \"*.domain\""));
            }
            return Ok(HostPattern::Suffix(rest.to_string()));
        }
        if s.contains('*') {
            return Err(format!("{s:?}: a wildcard must be \"*\" or \"*.domain\""));
        }
        Ok(HostPattern::Exact(s))
    }

    /// Whether `host` (as sent, maybe with a port, maybe a fully qualified
    /// name with its trailing dot) matches.
    pub fn matches(&self, host: Option<&str>) -> bool {
        // `example.com.` names the same host as `example.com`: without this, a
        // trailing dot slips past a host route to the next (catch-all) route.
        let host = host
            .map(strip_port)
            .map(|h| h.strip_suffix('.').unwrap_or(h));
        match (self, host) {
            (HostPattern::Any, _) => true,
            (_, None) => false,
            (HostPattern::Exact(h), Some(got)) => got.eq_ignore_ascii_case(h),
            (HostPattern::Suffix(sfx), Some(got)) => {
                got.len() > sfx.len() + 1
                    && got.as_bytes()[got.len() - sfx.len() - 1] == b'.'
                    && got[got.len() - sfx.len()..].eq_ignore_ascii_case(sfx)
            }
        }
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // "[v6]:port" -> "[v6]"
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    /// Its position in the file (for logs).
    pub index: usize,
    /// The host pattern.
    pub host: HostPattern,
    /// The path prefix (`/` matches everything).
    pub path_prefix: String,
    /// The upstream it sends to.
    pub upstream: Arc<Upstream>,
    /// The retry policy for this route (its own, or its upstream's).
    pub policy: Arc<RetryPolicy>,
    /// Per-attempt timeouts replacing the upstream's, if the route sets them.
    pub timeouts: Option<PeerOptions>,
    /// Match and forward the raw path rather than the normalized one.
    pub raw_path: bool,
}

/// A request's path two ways: as the server normalized it, and as the
/// client sent it (the same string when nothing needed normalizing).
#[derive(Debug, Clone, Copy)]
pub struct RequestPath<'a> {
    /// The normalized path: what routes match and upstreams receive.
    pub normalized: &'a str,
    /// The path as the client sent it, for `raw_path` routes.
    pub raw: &'a str,
}

impl Route {
    /// Whether this route takes a request for `host` and `path`.
    pub fn matches(&self, host: Option<&str>, path: RequestPath<'_>) -> bool {
        self.matches_lazily(|| host, path)
    }

    /// [`matches`](Self::matches), asking for the host only when the
    /// pattern looks at it.
    fn matches_lazily<'h>(
        &self,
        host: impl FnOnce() -> Option<&'h str>,
        path: RequestPath<'_>,
    ) -> bool {
        let path = if self.raw_path {
            path.raw
        } else {
            path.normalized
        };
        path_has_prefix(path, &self.path_prefix)
            && (self.host == HostPattern::Any || self.host.matches(host()))
    }
}

/// `/api` matches `/api`, `/api/` and `/api/x`, not `/apix`; a prefix ending
/// in `/` matches anything below it.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    if prefix == "/" || prefix.is_empty() {
        return true;
    }
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

/// The first route that takes the request.
///
/// `host` is called at most once, and only when a route whose path prefix
/// matches has a host pattern (up to and including the match): finding
/// the `Host` header costs a lookup that path routes alone do not need.
pub fn find<'a, 'h>(
    routes: &'a [Arc<Route>],
    host: impl FnOnce() -> Option<&'h str>,
    path: RequestPath<'_>,
) -> Option<&'a Arc<Route>> {
    let found = std::cell::OnceCell::new();
    let mut host = Some(host);
    let mut lazy = || *found.get_or_init(|| host.take().and_then(|h| h()));
    routes.iter().find(|r| r.matches_lazily(&mut lazy, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        let any = HostPattern::parse("*").unwrap();
        assert!(any.matches(None) && any.matches(Some("x")));
        let exact = HostPattern::parse("API.example.com").unwrap();
        assert!(exact.matches(Some("api.example.com:8080")));
        assert!(!exact.matches(Some("www.example.com")));
        assert!(!exact.matches(None));
        let sfx = HostPattern::parse("*.example.com").unwrap();
        assert!(sfx.matches(Some("a.example.com")));
        assert!(sfx.matches(Some("A.B.Example.com:443")));
        assert!(!sfx.matches(Some("example.com")));
        assert!(!sfx.matches(Some("badexample.com")));
        // A fully qualified name with its trailing dot is the same host.
        assert!(exact.matches(Some("api.example.com.")));
        assert!(exact.matches(Some("API.example.com.:8080")));
        assert!(sfx.matches(Some("a.example.com.")));
        assert!(!exact.matches(Some("api.example.com..")));
        assert!(HostPattern::parse("").is_err());
        assert!(HostPattern::parse("a*.com").is_err());
        assert!(HostPattern::parse("*.").is_err());
        assert!(HostPattern::parse("[::1]")
            .unwrap()
            .matches(Some("[::1]:80")));
    }

    /// The `Host` header is looked for once at most, and not at all while
    /// only routes without a host pattern are tried.
    #[tokio::test]
    async fn the_host_is_read_only_for_a_host_pattern_and_once() {
        let toml = r#"
            [upstreams.app]
            backends = [{ addr = "127.0.0.1:1" }]
            [[routes]]
            path_prefix = "/static"
            upstream = "app"
            [[routes]]
            host = "api.example.com"
            path_prefix = "/api"
            upstream = "app"
            [[routes]]
            host = "*.example.com"
            upstream = "app"
        "#;
        let config = crate::app::Config::from_toml(toml, None).unwrap();
        let state = crate::app::build_state(&config, 1, None).unwrap();
        let routes = &state.routes;
        let find = |host: &'static str, path: &'static str| {
            let asked = std::cell::Cell::new(0);
            let path = RequestPath {
                normalized: path,
                raw: path,
            };
            let found = find(
                routes,
                || {
                    asked.set(asked.get() + 1);
                    Some(host)
                },
                path,
            );
            (found.map(|r| r.index), asked.get())
        };
        assert_eq!(find("x.example.com", "/static/a.css"), (Some(0), 0));
        assert_eq!(find("api.example.com", "/api/v1"), (Some(1), 1));
        // Two host patterns tried, one lookup.
        assert_eq!(find("x.example.com", "/api/v1"), (Some(2), 1));
        assert_eq!(find("other.org", "/"), (None, 1));
    }

    #[test]
    fn path_prefixes_respect_segments() {
        assert!(path_has_prefix("/anything", "/"));
        assert!(path_has_prefix("/api", "/api"));
        assert!(path_has_prefix("/api/v1", "/api"));
        assert!(!path_has_prefix("/apix", "/api"));
        assert!(path_has_prefix("/static/x.css", "/static/"));
        assert!(!path_has_prefix("/static", "/static/"));
    }
}
