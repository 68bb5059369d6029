//! Hop-aware retries: in a chain of proxies, only one hop retries.
//!
//! Retries at every hop multiply: three hops of three attempts each make
//! 27 attempts of one request on the backends. So a Detour that did the
//! retrying says so in its member of the RFC 9209 `Proxy-Status` header of
//! the response, with a parameter of its own, `retried`:
//!
//! ```text
//! Proxy-Status: detour; received-status=503; next-hop="app"; retried=2
//! ```
//!
//! `retried=N` says "retrying this request was this hop's job, and it is
//! done": it made `N` retries, or made none because a limit of its own said
//! no (its budget, `max_retries`, the deadline, the correlated-failure brake,
//! no backend left). It is absent when the hop does not retry (its
//! `max_retries` is 0) or its policy does not retry that outcome, so an outer
//! hop may then retry as usual.
//!
//! An outer hop that lists the inner one's member name in
//! `retry.trusted_hops` does not retry such an answer within the same
//! failover group; one failover to another priority tier or locality stays
//! allowed (that is an outer tier's job). See [`Planner`](crate::Planner).

/// The `Proxy-Status` parameter that marks a hop that did the retrying.
pub const RETRIED_PARAM: &str = "retried";

/// Whether `values` (the `Proxy-Status` field lines of a response) hold a
/// member named in `trusted` that carries the [`RETRIED_PARAM`] parameter.
///
/// Members are separated by commas and parameters by semicolons, outside
/// quoted strings; a member's name is a token or a quoted string. A line
/// that does not parse as a structured field counts for nothing.
///
/// ```
/// use detour_core::hops::marked_retried;
///
/// let trusted = ["detour".to_string()];
/// let line = br#"detour; received-status=503; next-hop="a, b"; retried=1"#;
/// assert!(marked_retried([&line[..]], &trusted));
/// assert!(!marked_retried([&b"other; retried=1"[..]], &trusted));
/// assert!(!marked_retried([&b"detour; error=connection_refused"[..]], &trusted));
/// ```
pub fn marked_retried<'a>(values: impl IntoIterator<Item = &'a [u8]>, trusted: &[String]) -> bool {
    if trusted.is_empty() {
        return false;
    }
    values.into_iter().any(|line| {
        split_outside_quotes(line, b',').any(|member| {
            let mut parts = split_outside_quotes(member, b';');
            let name = parts
                .next()
                .map(|n| unquote(n.trim_ascii()))
                .unwrap_or_default();
            trusted.iter().any(|t| t.as_bytes() == name)
                && parts.any(|p| {
                    let key = p.split(|&b| b == b'=').next().unwrap_or_default();
                    key.trim_ascii() == RETRIED_PARAM.as_bytes()
                })
        })
    })
}

/// Whether `name` can be a `Proxy-Status` member name as Detour writes it:
/// token characters only (letters, digits and `-._:/*!#$%&'+^`|~`), as
/// `[server] proxy_name` allows.
pub fn is_member_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b))
}

/// The pieces of `s` between `sep`s that are not inside a quoted string
/// (with `\` escapes inside quotes).
fn split_outside_quotes(s: &[u8], sep: u8) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, &b) in s.iter().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                b if b == sep && !quoted => {
                    rest = Some(&s[i + 1..]);
                    return Some(&s[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(s)
    })
}

/// A quoted string's content (escapes left as they are: member names need
/// none); anything else as it is.
fn unquote(s: &[u8]) -> &[u8] {
    match s {
        [b'"', inner @ .., b'"'] => inner,
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marked(line: &str, trusted: &[&str]) -> bool {
        let trusted: Vec<String> = trusted.iter().map(|s| s.to_string()).collect();
        marked_retried([line.as_bytes()], &trusted)
    }

    #[test]
    fn a_trusted_member_with_the_parameter_marks() {
        assert!(marked("detour; retried=2", &["detour"]));
        assert!(marked("detour;retried=0", &["detour"]));
        assert!(marked("edge-1; next-hop=\"app\"; retried", &["edge-1"]));
        assert!(marked("\"detour\"; retried=1", &["detour"]));
    }

    #[test]
    fn any_member_of_the_list_may_carry_it() {
        let line = "inner; received-status=503; retried=1, outer; received-status=503";
        assert!(marked(line, &["inner"]));
        assert!(!marked(line, &["outer"]));
        let two_lines = [
            &b"outer; error=http_response_timeout"[..],
            b"inner; retried=3",
        ];
        assert!(marked_retried(two_lines, &["inner".to_string()]));
    }

    #[test]
    fn nothing_else_marks() {
        // Not trusted, or nobody trusted.
        assert!(!marked("detour; retried=1", &["edge"]));
        assert!(!marked("detour; retried=1", &[]));
        // No parameter: today's Proxy-Status on every relayed 5xx.
        assert!(!marked(
            "detour; received-status=503; next-hop=\"app\"",
            &["detour"]
        ));
        // The word inside a quoted string is a value, not a parameter.
        assert!(!marked("detour; details=\"x; retried=1, y\"", &["detour"]));
        // A name that only begins like the trusted one.
        assert!(!marked("detour2; retried=1", &["detour"]));
        assert!(!marked("", &["detour"]));
        assert!(!marked("\"unterminated; retried=1", &["detour"]));
    }

    #[test]
    fn member_names_are_tokens() {
        for good in ["detour", "edge-1", "lb.example", "*x", "a:b/c", "1edge"] {
            assert!(is_member_name(good), "{good}");
        }
        for bad in ["", "has space", "a,b", "a;b", "\"q\"", "ünï"] {
            assert!(!is_member_name(bad), "{bad}");
        }
    }
}
