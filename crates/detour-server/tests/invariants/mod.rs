//! The invariants the fuzz targets (`fuzz/fuzz_targets/`) and the proptest
//! harnesses (`tests/fuzz_properties.rs`) both check, written once: the fuzz
//! targets include this file by path. Each function panics when an
//! invariant breaks, so a fuzzer reports it as a crash and proptest shrinks it.
#![allow(dead_code)]

use detour_server::config::{EncodedSlashes, Http1Client, PathsConfig};
use detour_server::fuzzing::{
    check_request_head, check_response_framing, filter_upgrade, h1_exchange, normalize_path,
    scan_framing, CheckedHead, H1Answer, H1Outcome, H1Script, HeadRefusal, PathOutcome,
};
use http::header;
use http::Uri;

/// A head limit no input reaches, so the scanner never stops for size.
const UNLIMITED: usize = 1 << 30;

/// Reasons `check_request` gives for the framing the guard also watches.
const GUARDED: [&str; 2] = [
    "duplicate Content-Length",
    "both Content-Length and Transfer-Encoding",
];

/// The framing scanner, fed `data` whole, cut at `cuts` (taken modulo the
/// length), and byte by byte:
/// - never panics;
/// - how the bytes arrive changes nothing: the same verdict and the same
///   state (phase, partial head, requests followed) after each. Only under
///   a head limit no input reaches: at a finite limit a head that comes in
///   pieces stops the scanner where the same head in one read does not
///   (harmless, since hyper refuses such a head with 431 on every listener:
///   `tests/no_desync.rs`, `a_head_too_large_…`);
/// - a smaller head limit only stops it earlier: any verdict it still gives
///   is the unlimited one;
/// - it agrees with `check_request` on the first head: the framing the guard
///   marks is framing `check_request` refuses, and the reverse.
pub fn framing(data: &[u8], cuts: &[usize]) {
    let whole = scan_framing(&[data], UNLIMITED);
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    at.extend([0, data.len()]);
    at.sort_unstable();
    at.dedup();
    let pieces: Vec<&[u8]> = at.windows(2).map(|w| &data[w[0]..w[1]]).collect();
    assert_eq!(scan_framing(&pieces, UNLIMITED), whole, "cut at {at:?}");
    let bytes: Vec<&[u8]> = data.chunks(1).collect();
    assert_eq!(scan_framing(&bytes, UNLIMITED), whole, "byte by byte");

    for limit in [16, 256] {
        let small = scan_framing(&[data], limit);
        assert!(
            small.first_bad.is_none() || small.first_bad == whole.first_bad,
            "head limit {limit}: {:?}, unlimited: {:?}",
            small.first_bad,
            whole.first_bad
        );
    }

    let checked = check_request_head(data, &PathsConfig::default());
    let refused_framing = matches!(
        &checked,
        Err(HeadRefusal::Refused { reason, .. }) if GUARDED.contains(reason)
    );
    if refused_framing {
        assert_eq!(
            whole.first_bad,
            Some(0),
            "check_request refused the framing of the first head ({checked:?}); the guard did not"
        );
    }
    if whole.first_bad == Some(0) {
        assert!(
            refused_framing || checked == Err(HeadRefusal::Unparsed),
            "the guard marked the first head; check_request said {checked:?}"
        );
    }
}

/// `[server.paths]` from the low three bits of `bits`.
pub fn paths_config(bits: u8) -> PathsConfig {
    let mut paths = PathsConfig::default();
    paths.normalize = bits & 1 != 0;
    paths.merge_slashes = bits & 2 != 0;
    paths.encoded_slashes = if bits & 4 != 0 {
        EncodedSlashes::Keep
    } else {
        EncodedSlashes::Reject
    };
    paths
}

/// A request head through `check_request` and path normalization:
/// - never panics;
/// - a refusal is one of the statuses Detour answers heads with;
/// - an accepted head is unambiguous: one `Host` on HTTP/1.1, at most one
///   `Content-Length` and never with `Transfer-Encoding`, which then ends in
///   `chunked` and names nothing else; the declared length is that header;
/// - its target is normal under the policy (see [`normal_path`]), and sent
///   again it is accepted unchanged: normalization is idempotent on what it
///   accepts, query and authority included;
/// - `Upgrade` filtering and the response framing check are idempotent on
///   the same fields, and what they keep is allowed.
pub fn request_head(data: &[u8], bits: u8) {
    let paths = paths_config(bits);
    let head = match check_request_head(data, &paths) {
        Ok(head) => head,
        Err(HeadRefusal::Unparsed) => return,
        Err(HeadRefusal::Refused { status, reason }) => {
            assert!(
                [400, 405, 413, 414, 501].contains(&status),
                "{status} {reason}"
            );
            assert!(!reason.is_empty());
            return;
        }
    };
    let h = &head.headers;
    if head.version == http::Version::HTTP_11 {
        assert_eq!(h.get_all(header::HOST).iter().count(), 1, "{head:?}");
    }
    let lengths: Vec<_> = h.get_all(header::CONTENT_LENGTH).iter().collect();
    let codings: Vec<_> = h.get_all(header::TRANSFER_ENCODING).iter().collect();
    assert!(lengths.len() <= 1, "{head:?}");
    assert!(lengths.is_empty() || codings.is_empty(), "{head:?}");
    if !codings.is_empty() {
        let all: Vec<&[u8]> = codings
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|c| !c.is_empty())
            .collect();
        assert!(
            all.len() == 1 && all[0].eq_ignore_ascii_case(b"chunked"),
            "{head:?}"
        );
    }
    let declared = lengths
        .first()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert_eq!(head.body_len, declared, "{head:?}");

    let uri: Uri = head.target.parse().expect("an accepted target parses");
    normal_path(uri.path(), &paths);
    let again = check_request_head(&resend(&head), &paths)
        .unwrap_or_else(|e| panic!("{head:?} sent again: {e:?}"));
    assert_eq!(again.target, head.target);
    assert!(!again.rewritten, "{head:?} sent again was rewritten");
    assert_eq!(again.body_len, head.body_len);

    let allowed = ["websocket".to_string()];
    let mut fields = head.headers.clone();
    if filter_upgrade(&mut fields, &allowed) {
        let offered = fields
            .get(header::UPGRADE)
            .expect("an upgrade keeps Upgrade");
        let tokens = offered.to_str().expect("was text").split(',');
        for token in tokens.filter(|t| !t.trim().is_empty()) {
            let name = token.split('/').next().unwrap_or("").trim();
            assert!(name.eq_ignore_ascii_case("websocket"), "{offered:?}");
        }
        let once = fields.clone();
        assert!(filter_upgrade(&mut fields, &allowed));
        assert_eq!(fields, once, "filtering twice changed Upgrade");
    } else {
        assert_eq!(fields, head.headers, "a refused upgrade changed the fields");
    }
    let mut response = head.headers.clone();
    let ok = check_response_framing(&mut response);
    if response.contains_key(header::TRANSFER_ENCODING) {
        assert!(!response.contains_key(header::CONTENT_LENGTH));
    }
    let once = response.clone();
    assert_eq!(check_response_framing(&mut response), ok);
    assert_eq!(response, once, "the response check is not idempotent");
}

/// The head of `head` written out again, with its normalized target.
fn resend(head: &CheckedHead) -> Vec<u8> {
    let version = if head.version == http::Version::HTTP_10 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    let mut out = format!("{} {} {version}\r\n", head.method, head.target).into_bytes();
    for (name, value) in head.headers.iter() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// What a path normalization accepted looks like under `paths`: no `.` or
/// `..` segment and no escaped dot when normalizing, no `//` when merging,
/// no escaped slash or backslash when those are refused.
pub fn normal_path(path: &str, paths: &PathsConfig) {
    if !path.starts_with('/') {
        return;
    }
    let lower = path.to_ascii_lowercase();
    if paths.normalize {
        assert!(
            path.split('/').all(|s| s != "." && s != ".."),
            "dot segment in {path}"
        );
        assert!(!lower.contains("%2e"), "escaped dot in {path}");
    }
    if paths.merge_slashes {
        assert!(!path.contains("//"), "// in {path}");
    }
    if paths.encoded_slashes == EncodedSlashes::Reject {
        assert!(
            !path.contains('\\') && !lower.contains("%2f") && !lower.contains("%5c"),
            "slash kept in {path}"
        );
    }
}

/// Path normalization alone, on any text, under the policy `bits` picks:
/// never panics; what it returns is normal and normalizes to itself; with
/// every rule off it changes nothing.
pub fn path(path: &str, bits: u8) {
    let paths = paths_config(bits);
    let out = match normalize_path(path, &paths) {
        PathOutcome::Refused(reason) => {
            assert!(!reason.is_empty());
            assert!(path.starts_with('/'), "refused {path:?}, not origin form");
            return;
        }
        PathOutcome::Unchanged => path.to_string(),
        PathOutcome::Rewritten(out) => {
            assert_ne!(out, path, "rewritten to itself");
            assert_eq!(
                normalize_path(&out, &paths),
                PathOutcome::Unchanged,
                "{out}"
            );
            out
        }
    };
    normal_path(&out, &paths);
    if !paths.normalize && !paths.merge_slashes && paths.encoded_slashes == EncodedSlashes::Keep {
        assert_eq!(out, path);
    }
}

/// Both HTTP/1.1 upstream clients given `script`, each on a fresh
/// current-thread runtime with a paused clock.
pub fn h1_outcomes(script: &H1Script) -> (H1Outcome, H1Outcome) {
    let run = |client| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(h1_exchange(client, script))
    };
    (run(Http1Client::Hyper), run(Http1Client::Native))
}

/// A refusal at one of the native client's own limits (1xx count, head
/// size), which hyper's client sets higher or not at all.
fn native_limit(answer: &H1Answer) -> bool {
    matches!(answer, H1Answer::NoHead(why)
        if why.contains("informational responses") || why.contains("response head over"))
}

/// The native HTTP/1.1 client does what hyper's does with `script`: the
/// same status, version, headers, body bytes, trailers, body end and reuse
/// decision, or a refusal where hyper refuses (the reasons' wording aside),
/// and the same bytes reach the backend. Two differences are allowed: the
/// native client refuses at its own limits first; and it refuses a
/// malformed head as soon as it sees it, where hyper's client, given the
/// head's start in an earlier read, sometimes sees it only at the close (it
/// must then refuse it).
pub fn same_h1_answer(script: &H1Script) {
    let (hyper, native) = h1_outcomes(script);
    if native_limit(&native.answer) {
        return;
    }
    let same = match (&hyper.answer, &native.answer) {
        (H1Answer::NoHead(_), H1Answer::NoHead(_)) => true,
        (H1Answer::Waiting, H1Answer::NoHead(why)) if why.contains("invalid response") => {
            let closed = H1Script {
                close: true,
                ..script.clone()
            };
            matches!(h1_outcomes(&closed).0.answer, H1Answer::NoHead(_))
        }
        (a, b) => a == b,
    };
    assert!(
        same && hyper.received == native.received,
        "the clients differ on {script:?}\nhyper:  {hyper:?}\nnative: {native:?}"
    );
}

/// A scripted exchange from raw bytes (the `h1_client` fuzz target's
/// input): the first byte picks the method (bit 0: `HEAD`, else `GET`),
/// whether the backend closes after (bit 1), and how many cut points follow
/// (bits 2–3), two bytes each; the rest is what the backend sends, cut into
/// reads there.
pub fn h1_script(data: &[u8]) -> Option<H1Script> {
    let (&flags, rest) = data.split_first()?;
    let cuts = usize::from(flags >> 2 & 3);
    if rest.len() < cuts * 2 {
        return None;
    }
    let (cut_bytes, wire) = rest.split_at(cuts * 2);
    let mut at: Vec<usize> = cut_bytes
        .chunks(2)
        .map(|c| (usize::from(c[0]) << 8 | usize::from(c[1])) % (wire.len() + 1))
        .collect();
    at.extend([0, wire.len()]);
    at.sort_unstable();
    at.dedup();
    Some(H1Script {
        method: if flags & 1 == 1 {
            http::Method::HEAD
        } else {
            http::Method::GET
        },
        upload: Vec::new(),
        upload_len_known: false,
        upload_trailers: None,
        reads: at.windows(2).map(|w| wire[w[0]..w[1]].to_vec()).collect(),
        close: flags & 2 == 2,
    })
}
