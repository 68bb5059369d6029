//! One path for routing, the hooks and the backend: request path
//! normalization, run once per request before any hook.
//!
//! Percent-encoded unreserved characters are decoded first (RFC 3986 §2.3,
//! §6.2.2.2), then dot segments are removed (§5.2.4, §6.2.2.3): in that
//! order, so `/%2e%2e/` is a `..` segment and cannot slip past. Unlike
//! §5.2.4, a `..` that would climb above `/` is refused rather than dropped:
//! no honest client sends one. Nor a dot segment with parameters (`..;x`),
//! which Tomcat and Jetty resolve as `..`. Escapes of other characters are kept byte for
//! byte, hex case included (§6.2.2.1 allows upper-casing them, but a client
//! that signed its path would no longer match). Envoy's `normalize_path`,
//! `merge_slashes` and `path_with_escaped_slashes_action` are the model.
//!
//! The common path (nothing to change) costs one scan and no allocation.

use std::borrow::Cow;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{request, StatusCode, Uri};

use detour_core::RawUri;

use super::forward::BadRequest;
use crate::config::{EncodedSlashes, PathsConfig};

const ABOVE_ROOT: &str = "path climbs above the root";
const BAD_ESCAPE: &str = "malformed percent-encoding in the path";
const ENCODED_NUL: &str = "encoded NUL in the path";
const ENCODED_SLASH: &str = "encoded slash or backslash in the path";
const BACKSLASH: &str = "backslash in the path";
const DOT_PARAMS: &str = "dot segment with parameters in the path";

/// The path rules in effect, copied out of [`PathsConfig`] once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PathPolicy {
    normalize: bool,
    merge_slashes: bool,
    reject_slashes: bool,
}

impl From<&PathsConfig> for PathPolicy {
    fn from(c: &PathsConfig) -> Self {
        PathPolicy {
            normalize: c.normalize,
            merge_slashes: c.merge_slashes,
            reject_slashes: c.encoded_slashes == EncodedSlashes::Reject,
        }
    }
}

/// What normalization made of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Normalized {
    /// Already normal: use it as it is.
    Unchanged,
    /// The normal form.
    Rewritten(String),
    /// Refused (400), and why.
    Refused(&'static str),
}

/// Normalize the request's target in place; the client's target is kept as
/// a [`RawUri`] extension when it changed.
///
/// # Errors
/// A 400 [`BadRequest`] naming why the path is refused.
pub(crate) fn normalize_target(
    parts: &mut request::Parts,
    policy: PathPolicy,
) -> Result<(), BadRequest> {
    let Some(pq) = parts.uri.path_and_query() else {
        // Authority form (CONNECT): no path.
        return Ok(());
    };
    let refuse = |reason| BadRequest {
        status: StatusCode::BAD_REQUEST,
        reason,
    };
    let path = match normalize_path(pq.path(), policy) {
        Normalized::Unchanged => return Ok(()),
        Normalized::Refused(reason) => return Err(refuse(reason)),
        Normalized::Rewritten(path) => path,
    };
    // Cannot fail in practice: the new path is made of the old one's
    // characters and decoded unreserved ones, and is no longer. Refusing
    // beats forwarding a path that was not normalized.
    let target = with_path(&parts.uri, path).ok_or(refuse("invalid path"))?;
    let raw = std::mem::replace(&mut parts.uri, target);
    parts.extensions.insert(RawUri(raw));
    Ok(())
}

/// `uri` with its path replaced (scheme, authority and query kept).
fn with_path(uri: &Uri, mut path: String) -> Option<Uri> {
    if let Some(query) = uri.query() {
        path.push('?');
        path.push_str(query);
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::from_maybe_shared(Bytes::from(path)).ok()?);
    Uri::from_parts(parts).ok()
}

/// Normalize `path` (without its query) under `policy`.
///
/// Only an origin-form path (starting with `/`) is looked at; `*` is left
/// alone.
pub(crate) fn normalize_path(path: &str, policy: PathPolicy) -> Normalized {
    if !path.starts_with('/') || !policy.needs_look(path.as_bytes(), true) {
        return Normalized::Unchanged;
    }
    let decoded = match policy.decode(path) {
        Ok(d) => d,
        Err(reason) => return Normalized::Refused(reason),
    };
    // Decoding may have made dot segments (`%2e%2e`), so look again.
    let resolved = if policy.needs_look(decoded.as_bytes(), false) {
        match policy.resolve_segments(&decoded) {
            Ok(s) => Cow::Owned(s),
            Err(reason) => return Normalized::Refused(reason),
        }
    } else {
        decoded
    };
    match resolved {
        Cow::Borrowed(_) => Normalized::Unchanged,
        Cow::Owned(s) => Normalized::Rewritten(s),
    }
}

impl PathPolicy {
    /// Whether anything in `path` may need work: the one scan every request
    /// pays. Dot segments and (when merging) empty segments are found
    /// exactly; with `escapes`, any `%` (and `\`, when refused) also counts.
    fn needs_look(self, path: &[u8], escapes: bool) -> bool {
        let percent = escapes && (self.normalize || self.reject_slashes);
        let backslash = escapes && self.reject_slashes;
        let mut segment_start = 0;
        for (i, &b) in path.iter().enumerate() {
            match b {
                b'%' if percent => return true,
                b'\\' if backslash => return true,
                b'/' => {
                    let segment = &path[segment_start..i];
                    // An empty segment followed by `/` is a `//` (the one
                    // before the leading slash is not a segment).
                    let empty = segment.is_empty() && i > 0;
                    if (self.merge_slashes && empty) || self.is_dot(segment) {
                        return true;
                    }
                    segment_start = i + 1;
                }
                _ => {}
            }
        }
        self.is_dot(&path[segment_start..])
    }

    /// A dot segment, or one with parameters (see [`is_dot_with_params`]).
    fn is_dot(self, segment: &[u8]) -> bool {
        self.normalize && (matches!(segment, b"." | b"..") || is_dot_with_params(segment))
    }

    /// Check every escape and decode those of unreserved characters. Borrows
    /// `path` when nothing was decoded.
    fn decode(self, path: &str) -> Result<Cow<'_, str>, &'static str> {
        let bytes = path.as_bytes();
        let mut decoded: Option<String> = None;
        // `path[..copied]` is already in `decoded`.
        let mut copied = 0;
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'\\' && self.reject_slashes {
                return Err(BACKSLASH);
            }
            if bytes[i] != b'%' {
                i += 1;
                continue;
            }
            let Some(byte) = hex_pair(bytes.get(i + 1..i + 3)) else {
                if self.normalize {
                    return Err(BAD_ESCAPE);
                }
                i += 1;
                continue;
            };
            match byte {
                b'/' | b'\\' if self.reject_slashes => return Err(ENCODED_SLASH),
                0 if self.normalize => return Err(ENCODED_NUL),
                b if self.normalize && is_unreserved(b) => {
                    let out = decoded.get_or_insert_with(|| String::with_capacity(path.len()));
                    out.push_str(&path[copied..i]);
                    out.push(char::from(b));
                    copied = i + 3;
                }
                _ => {}
            }
            i += 3;
        }
        Ok(match decoded {
            None => Cow::Borrowed(path),
            Some(mut out) => {
                out.push_str(&path[copied..]);
                Cow::Owned(out)
            }
        })
    }

    /// Remove dot segments (when normalizing) and merge empty ones (when
    /// merging) in one pass over the segments of `path` (which starts with
    /// `/`). Merging comes first in effect: `/a//../b` is `/b`.
    fn resolve_segments(self, path: &str) -> Result<String, &'static str> {
        let mut out = String::with_capacity(path.len());
        let mut segments = path[1..].split('/').peekable();
        while let Some(segment) = segments.next() {
            let last = segments.peek().is_none();
            match segment {
                s if self.normalize && is_dot_with_params(s.as_bytes()) => {
                    return Err(DOT_PARAMS);
                }
                "." if self.normalize => {}
                ".." if self.normalize => {
                    let Some(cut) = out.rfind('/') else {
                        return Err(ABOVE_ROOT);
                    };
                    out.truncate(cut);
                }
                "" if self.merge_slashes && !last => continue,
                _ => {
                    out.push('/');
                    out.push_str(segment);
                    continue;
                }
            }
            // A dot segment at the end leaves a directory: `/a/b/..` is `/a/`.
            if last {
                out.push('/');
            }
        }
        if out.is_empty() {
            out.push('/');
        }
        Ok(out)
    }
}

/// `..;x` or `.;x`: a dot segment with path parameters. To RFC 3986 it is
/// an ordinary segment, but Tomcat and Jetty drop `;params` before they
/// resolve dot segments, so `/public/..;/admin` would be matched here under
/// `/public` and served there as `/admin`. Refused, not resolved: no
/// honest client sends one.
fn is_dot_with_params(segment: &[u8]) -> bool {
    matches!(segment, [b'.', b';', ..] | [b'.', b'.', b';', ..])
}

/// The byte two hex digits spell, if `pair` is two hex digits.
fn hex_pair(pair: Option<&[u8]>) -> Option<u8> {
    let &[hi, lo] = pair? else { return None };
    Some(hex_digit(hi)? << 4 | hex_digit(lo)?)
}

fn hex_digit(d: u8) -> Option<u8> {
    match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        b'A'..=b'F' => Some(d - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §2.3: ALPHA / DIGIT / "-" / "." / "_" / "~".
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DEFAULT: PathPolicy = PathPolicy {
        normalize: true,
        merge_slashes: false,
        reject_slashes: true,
    };

    fn norm(path: &str) -> Normalized {
        normalize_path(path, DEFAULT)
    }

    fn rewritten(s: &str) -> Normalized {
        Normalized::Rewritten(s.to_string())
    }

    #[test]
    fn normal_paths_are_unchanged() {
        for p in [
            "/",
            "/admin",
            "/a/b/",
            "/.well-known/acme",
            "/a/b.c/..d/e..",
            "/a//b",
            "/caf%C3%A9",
            "/caf%c3%a9",
            "/a%20b",
            "/a%252e%252e/",
            "*",
        ] {
            assert_eq!(norm(p), Normalized::Unchanged, "{p}");
        }
    }

    #[test]
    fn rfc3986_section_5_4_examples_merged_with_base_b_c_d() {
        // The path each §5.4 reference gets once merged with the base path
        // `/b/c/d;p` (§5.2.3), and the path §5.4 says it resolves to.
        for (merged, want) in [
            ("/b/c/./g", "/b/c/g"),
            ("/b/c/./", "/b/c/"),
            ("/b/c/../", "/b/"),
            ("/b/c/..", "/b/"),
            ("/b/c/../g", "/b/g"),
            ("/b/c/../..", "/"),
            ("/b/c/../../", "/"),
            ("/b/c/../../g", "/g"),
            ("/b/c/./../g", "/b/g"),
            ("/b/c/./g/.", "/b/c/g/"),
            ("/b/c/g/./h", "/b/c/g/h"),
            ("/b/c/g/../h", "/b/c/h"),
            ("/b/c/g;x=1/./y", "/b/c/g;x=1/y"),
            ("/b/c/g;x=1/../y", "/b/c/y"),
            ("/a/b/c/./../../g", "/a/g"),
        ] {
            assert_eq!(norm(merged), rewritten(want), "{merged}");
        }
        for kept in ["/b/c/g.", "/b/c/.g", "/b/c/g..", "/b/c/..g"] {
            assert_eq!(norm(kept), Normalized::Unchanged, "{kept}");
        }
        // §5.4.2 drops the excess `..` of "../../../g"; we refuse it.
        assert_eq!(norm("/b/c/../../../g"), Normalized::Refused(ABOVE_ROOT));
    }

    #[test]
    fn escapes_are_decoded_before_dot_segments_are_removed() {
        assert_eq!(norm("/x/../admin"), rewritten("/admin"));
        assert_eq!(norm("/%61dmin"), rewritten("/admin"));
        assert_eq!(norm("/a/./b/"), rewritten("/a/b/"));
        assert_eq!(norm("/a/%2e%2e/admin"), rewritten("/admin"));
        assert_eq!(norm("/a/%2E%2e/admin"), rewritten("/admin"));
        assert_eq!(norm("/a/.%2E/admin"), rewritten("/admin"));
        assert_eq!(norm("/%7e%2D%5f%30"), rewritten("/~-_0"));
        // Only unreserved escapes are decoded; the rest keep their bytes.
        assert_eq!(norm("/%41%20%3f%c3%a9"), rewritten("/A%20%3f%c3%a9"));
        // `%25` stays, so a decoded path is never decoded again.
        assert_eq!(norm("/%252e%252e/"), Normalized::Unchanged);
        assert_eq!(norm("/%252e%2e/"), rewritten("/%252e./"));
        assert_eq!(norm("/%61%252e"), rewritten("/a%252e"));
    }

    #[test]
    fn climbing_above_the_root_is_refused() {
        for p in [
            "/..",
            "/../etc",
            "/a/../../b",
            "/%2e%2e/",
            "/%2E%2e/admin",
            "/./..",
        ] {
            assert_eq!(norm(p), Normalized::Refused(ABOVE_ROOT), "{p}");
        }
    }

    #[test]
    fn dot_segments_with_parameters_are_refused() {
        for p in [
            "/public/..;/admin",
            "/public/..;jsessionid=1/admin",
            "/a/.;/b",
            "/a/%2e%2e;/b",
            "/a/..;",
        ] {
            assert_eq!(norm(p), Normalized::Refused(DOT_PARAMS), "{p}");
        }
        for p in ["/a/..x;/b", "/a/b;..", "/a/;../b", "/a/...;/b"] {
            assert_eq!(norm(p), Normalized::Unchanged, "{p}");
        }
    }

    #[test]
    fn slashes_backslashes_nul_and_bad_escapes_are_refused() {
        for (p, why) in [
            ("/a%2Fb", ENCODED_SLASH),
            ("/a%2fb", ENCODED_SLASH),
            ("/a%5cb", ENCODED_SLASH),
            ("/a%5Cb", ENCODED_SLASH),
            ("/a\\b", BACKSLASH),
            ("/a%00b", ENCODED_NUL),
            ("/a%zz", BAD_ESCAPE),
            ("/a%2", BAD_ESCAPE),
            ("/a%", BAD_ESCAPE),
            ("/a%%32e", BAD_ESCAPE),
        ] {
            assert_eq!(norm(p), Normalized::Refused(why), "{p}");
        }
    }

    #[test]
    fn kept_slashes_pass_encoded() {
        let keep = PathPolicy {
            reject_slashes: false,
            ..DEFAULT
        };
        assert_eq!(normalize_path("/a%2Fb", keep), Normalized::Unchanged);
        assert_eq!(normalize_path("/a\\b", keep), Normalized::Unchanged);
        assert_eq!(
            normalize_path("/a/%2e%2e%2F../b", keep),
            rewritten("/a/..%2F../b")
        );
    }

    #[test]
    fn merging_slashes_is_an_opt_in() {
        let merge = PathPolicy {
            merge_slashes: true,
            ..DEFAULT
        };
        assert_eq!(normalize_path("//a///b", merge), rewritten("/a/b"));
        assert_eq!(normalize_path("/a//", merge), rewritten("/a/"));
        assert_eq!(normalize_path("//", merge), rewritten("/"));
        assert_eq!(normalize_path("/a//../b", merge), rewritten("/b"));
        assert_eq!(normalize_path("/a/b/", merge), Normalized::Unchanged);
        assert_eq!(norm("/a//../b"), rewritten("/a/b"));
    }

    #[test]
    fn everything_off_leaves_every_path_alone() {
        let off = PathPolicy {
            normalize: false,
            merge_slashes: false,
            reject_slashes: false,
        };
        for p in ["/../x", "/%2e%2e/", "/a%2Fb", "/a%zz", "//a", "/a\\b"] {
            assert_eq!(normalize_path(p, off), Normalized::Unchanged, "{p}");
        }
        let only_reject = PathPolicy {
            reject_slashes: true,
            ..off
        };
        assert_eq!(
            normalize_path("/a%2fb", only_reject),
            Normalized::Refused(ENCODED_SLASH)
        );
        assert_eq!(
            normalize_path("/a%zz/..", only_reject),
            Normalized::Unchanged
        );
        let only_merge = PathPolicy {
            merge_slashes: true,
            ..off
        };
        assert_eq!(
            normalize_path("//a//../%2e/b", only_merge),
            rewritten("/a/../%2e/b")
        );
    }

    fn parts(target: &str) -> request::Parts {
        http::Request::get(target).body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_target_keeps_its_query_and_authority_and_the_raw_one_is_kept() {
        let mut p = parts("/x/../%61dmin?next=/../y&%2e");
        normalize_target(&mut p, DEFAULT).unwrap();
        assert_eq!(p.uri, "/admin?next=/../y&%2e");
        let raw = p.extensions.get::<RawUri>().unwrap();
        assert_eq!(raw.0, "/x/../%61dmin?next=/../y&%2e");

        let mut p = parts("http://example.com/a/./b");
        normalize_target(&mut p, DEFAULT).unwrap();
        assert_eq!(p.uri, "http://example.com/a/b");

        let mut p = parts("/plain?q=1");
        normalize_target(&mut p, DEFAULT).unwrap();
        assert_eq!(p.uri, "/plain?q=1");
        assert!(p.extensions.get::<RawUri>().is_none());

        let err = normalize_target(&mut parts("/../etc"), DEFAULT).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert_eq!(err.reason, ABOVE_ROOT);
    }

    /// Paths built from the pieces normalization cares about.
    fn paths() -> impl Strategy<Value = String> {
        let piece = prop::sample::select(vec![
            "/", ".", "..", "%2e", "%2E", "a", "%61", "%2F", "%20", "%25", "%", "\\", "b.", "~",
            "%7E", "%c3%a9", "é", ";",
        ]);
        prop::collection::vec(piece, 0..16).prop_map(|p| format!("/{}", p.concat()))
    }

    fn policies() -> impl Strategy<Value = PathPolicy> {
        (any::<bool>(), any::<bool>()).prop_map(|(merge_slashes, reject_slashes)| PathPolicy {
            normalize: true,
            merge_slashes,
            reject_slashes,
        })
    }

    proptest! {
        #[test]
        fn normalization_is_idempotent_and_leaves_no_dot_segment(
            path in paths(),
            policy in policies(),
        ) {
            let out = match normalize_path(&path, policy) {
                Normalized::Refused(_) => return Ok(()),
                Normalized::Unchanged => path.clone(),
                Normalized::Rewritten(out) => {
                    prop_assert_eq!(normalize_path(&out, policy), Normalized::Unchanged);
                    out
                }
            };
            prop_assert!(out.starts_with('/'), "{}", out);
            for segment in out.split('/') {
                prop_assert!(segment != "." && segment != "..", "{} from {}", out, path);
                prop_assert!(!is_dot_with_params(segment.as_bytes()), "{} from {}", out, path);
            }
            prop_assert!(!out.to_ascii_lowercase().contains("%2e"), "{}", out);
            if policy.merge_slashes {
                prop_assert!(!out.contains("//"), "{}", out);
            }
        }
    }
}
