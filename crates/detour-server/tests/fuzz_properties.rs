//! The fuzz targets' invariants (`tests/invariants/`) as proptest harnesses,
//! so stable Rust checks them in `cargo test`: framing-guard scans of
//! generated connections cut into reads, generated request heads through
//! `check_request` and path normalization, and paths alone.
//!
//! `PROPTEST_CASES` sets the case count (default 64 each, to keep the suite
//! fast); `cargo xtask fuzz` raises it when it cannot run cargo-fuzz.
#![allow(clippy::unwrap_used)]

mod invariants;

use proptest::prelude::*;

fn cases() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(64);
    ProptestConfig::with_cases(cases)
}

/// A line ending: mostly CRLF, sometimes a bare LF or a stray CR.
fn eol() -> impl Strategy<Value = &'static str> {
    prop_oneof![8 => Just("\r\n"), 1 => Just("\n"), 1 => Just("\r")]
}

/// A header line that matters to framing, routing or upgrades (or noise).
fn field() -> impl Strategy<Value = String> {
    let name = prop::sample::select(vec![
        "Content-Length",
        "content-length",
        "Transfer-Encoding",
        "transfer-encoding",
        "Host",
        "Connection",
        "Upgrade",
        "X-A",
        " X-Space",
        "Content-Length ",
    ]);
    let value = prop::sample::select(vec![
        "0",
        "3",
        "5",
        "+3",
        "3, 3",
        "abc",
        "chunked",
        "gzip",
        "chunked, gzip",
        "gzip, chunked",
        " chunked ",
        "a",
        "upgrade",
        "websocket",
        "h2c",
        "",
        "\t",
    ]);
    (name, value, eol(), any::<bool>()).prop_map(|(n, v, eol, fold)| {
        if fold {
            // An obs-fold continuation line.
            format!("{n}: {v}{eol} {v}{eol}")
        } else {
            format!("{n}: {v}{eol}")
        }
    })
}

/// What may follow a head: a length body, chunks (sizes right or wrong), or
/// nothing.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let chunk = (0usize..20, any::<bool>()).prop_map(|(n, ext)| {
        let ext = if ext { ";x=y" } else { "" };
        format!("{n:x}{ext}\r\n{}\r\n", "b".repeat(n)).into_bytes()
    });
    prop_oneof![
        Just(Vec::new()),
        prop::collection::vec(any::<u8>(), 0..12),
        (prop::collection::vec(chunk, 0..4), any::<bool>()).prop_map(|(chunks, trailer)| {
            let mut b = chunks.concat();
            b.extend_from_slice(b"0\r\n");
            if trailer {
                b.extend_from_slice(b"x-t: 1\r\n");
            }
            b.extend_from_slice(b"\r\n");
            b
        }),
        Just(b"zz\r\n".to_vec()),
        Just(b"fffffffffffffffffff\r\n".to_vec()),
    ]
}

/// One request as bytes: a request line, fields, the blank line, a body.
fn request() -> impl Strategy<Value = Vec<u8>> {
    let method = prop::sample::select(vec!["GET", "POST", "PUT", "CONNECT", "HEAD"]);
    let target = prop::sample::select(vec!["/", "/a/../b", "/%2e%2e/x", "*", "http://h/p"]);
    let version = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0", "HTTP/2.0"]);
    (
        method,
        target,
        version,
        eol(),
        prop::collection::vec(field(), 0..5),
        eol(),
        body(),
    )
        .prop_map(|(m, t, v, eol, fields, end, body)| {
            let mut r = format!("{m} {t} {v}{eol}{}{end}", fields.concat()).into_bytes();
            r.extend_from_slice(&body);
            r
        })
}

/// A connection's bytes: pipelined requests, blank lines between some.
fn connection() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec((request(), prop::sample::select(vec!["", "\r\n"])), 1..4)
            .prop_map(|rs| rs.into_iter().flat_map(|(r, gap)| [r, gap.into()]).flatten().collect()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

/// A request head as `request_head` gets it: no body.
fn head() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop::sample::select(vec![
        "/", ".", "..", "%2e", "%2E", "a", "%61", "%2F", "%5c", "%00", "%", "%zz", "\\", "?",
        "?q=/../", "#", "é", "*",
    ]);
    let target = (
        prop::sample::select(vec!["", "http://h", "https://h:8443", "*"]),
        prop::collection::vec(piece, 0..10),
    )
        .prop_map(|(prefix, p)| format!("{prefix}/{}", p.concat()));
    let method = prop::sample::select(vec!["GET", "POST", "TRACE", "CONNECT", "OPTIONS", "X"]);
    let version = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0"]);
    (
        method,
        target,
        version,
        prop::collection::vec(field(), 0..5),
    )
        .prop_map(|(m, t, v, fields)| {
            format!("{m} {t} {v}\r\nhost: h\r\n{}\r\n", fields.concat()).into_bytes()
        })
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn framing_verdicts_do_not_depend_on_how_bytes_arrive(
        data in connection(),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        invariants::framing(&data, &cuts);
    }

    #[test]
    fn accepted_heads_are_unambiguous_and_normal(head in head(), policy in 0u8..8) {
        invariants::request_head(&head, policy);
        // Without the `host` line too, and as bytes mangled at one place.
        let at = head.iter().position(|b| *b == b'\n').map_or(0, |i| i + 1);
        let mut no_host = head[..at].to_vec();
        no_host.extend_from_slice(&head[at + "host: h\r\n".len()..]);
        invariants::request_head(&no_host, policy);
        invariants::framing(&head, &[at]);
    }

    #[test]
    fn path_normalization_is_idempotent_on_what_it_accepts(
        path in prop_oneof![
            prop::collection::vec(
                prop::sample::select(vec!["/", ".", "..", "%2e", "%2E", "a", "%61", "%2F", "%5C",
                    "%25", "%", "%0", "%00", "\\", "é", "~", "%7e"]),
                0..14,
            ).prop_map(|p| format!("/{}", p.concat())),
            any::<String>(),
        ],
        policy in 0u8..8,
    ) {
        invariants::path(&path, policy);
    }
}

/// The harness is not vacuous: the adapters see what the engine sees.
#[test]
fn the_invariants_see_real_verdicts() {
    use detour_server::config::PathsConfig;
    use detour_server::fuzzing::{check_request_head, scan_framing, HeadRefusal};

    let smuggle =
        b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n";
    assert_eq!(scan_framing(&[smuggle], 1 << 16).first_bad, Some(0));
    invariants::framing(smuggle, &[10, 40]);
    let second = b"GET / HTTP/1.1\r\nhost: a\r\n\r\nPOST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\nx";
    assert_eq!(scan_framing(&[second], 1 << 16).first_bad, Some(1));
    invariants::framing(second, &[3]);

    let head = b"GET /a/./b/%2e%2e/c?q=/../x HTTP/1.1\r\nhost: a\r\n\r\n";
    let checked = check_request_head(head, &PathsConfig::default()).unwrap();
    assert_eq!(checked.target, "/a/c?q=/../x");
    assert!(checked.rewritten);
    invariants::request_head(head, 0);
    let above = b"GET /../x HTTP/1.1\r\nhost: a\r\n\r\n";
    assert!(matches!(
        check_request_head(above, &PathsConfig::default()),
        Err(HeadRefusal::Refused { status: 400, .. })
    ));
}
