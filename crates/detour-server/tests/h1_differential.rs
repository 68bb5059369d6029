//! The native HTTP/1.1 upstream client against hyper's (`tests/invariants/`,
//! `same_h1_answer`): generated upstream responses — `Content-Length`,
//! chunked with extensions and trailers, close-delimited, `1xx` heads,
//! `HEAD`/`204`/`304` with and without bodies, and the malformed framings
//! the testkit and the failure-semantics suite know — cut into reads at
//! random, with stray bytes after them or a close, through both clients.
//! Each must give the same status, headers, body bytes, trailers and reuse
//! decision, refuse the same responses, and put the same bytes on the wire.
//!
//! `PROPTEST_CASES` sets the case count (default 1,024 each).
#![allow(clippy::unwrap_used)]

mod invariants;

use detour_server::fuzzing::{H1Answer, H1BodyEnd, H1Script};
use http::{HeaderMap, HeaderValue, Method};
use proptest::prelude::*;

fn cases() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1024);
    ProptestConfig::with_cases(cases)
}

/// How the response says where its body ends, and how the body is sent.
#[derive(Debug, Clone)]
enum Framing {
    /// No framing header: to the close.
    None,
    /// `Content-Length` lines (as written) over a plain body.
    Length(Vec<String>),
    /// `Transfer-Encoding` lines (as written) over a chunked body.
    Chunked(Vec<String>),
    /// `Transfer-Encoding` lines whose last coding is not `chunked`, over a
    /// plain body: to the close.
    Other(Vec<String>),
    /// Both: chunked wins.
    Both(String),
}

/// `Content-Length` lines for a body of `n` bytes: right, wrong, repeated,
/// listed, conflicting, or not a number.
fn lengths(n: usize) -> impl Strategy<Value = Vec<String>> {
    (0usize..12, 1usize..4).prop_map(move |(pick, off)| match pick {
        0..=3 => vec![n.to_string()],
        4 => vec![(n + off).to_string()],
        5 => vec![n.saturating_sub(off).to_string()],
        6 => vec![n.to_string(), n.to_string()],
        7 => vec![format!("{n}, {n}")],
        8 => vec![n.to_string(), (n + off).to_string()],
        9 => vec![format!("+{n}")],
        10 => vec![format!("0x{n:x}")],
        _ => vec![String::new()],
    })
}

fn framing(n: usize) -> impl Strategy<Value = Framing> {
    let chunked = prop::sample::select(vec![
        vec!["chunked".to_string()],
        vec!["gzip, chunked".into()],
        vec!["CHUNKED".into()],
        vec!["gzip".into(), "chunked".into()],
        vec!["chunked".into(), "chunked".into()],
    ]);
    let other = prop::sample::select(vec![
        vec!["gzip".to_string()],
        vec!["chunked, gzip".into()],
        vec!["chunked".into(), "gzip".into()],
        vec!["identity".into()],
    ]);
    prop_oneof![
        1 => Just(Framing::None),
        4 => lengths(n).prop_map(Framing::Length),
        4 => chunked.prop_map(Framing::Chunked),
        1 => other.prop_map(Framing::Other),
        1 => Just(Framing::Both(n.to_string())),
    ]
}

/// A chunked body's damage, if any.
#[derive(Debug, Clone, Copy)]
enum Damage {
    None,
    /// A chunk size that is not hex.
    BadSize,
    /// A chunk's data runs past its size.
    LongChunk,
    /// A bare LF inside a chunk extension.
    LfInExtension,
    /// A chunk size that overflows.
    Overflow,
    /// The last chunk's CRLF is a bare LF.
    BareLf,
    /// No last chunk at all.
    NoLastChunk,
}

/// A chunked encoding of `body`, in chunks of `size` bytes.
fn chunked(body: &[u8], size: usize, ext: &str, trailers: &[String], damage: Damage) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, chunk) in body.chunks(size.max(1)).enumerate() {
        match damage {
            Damage::BadSize if i == 0 => out.extend_from_slice(b"zz"),
            Damage::Overflow if i == 0 => out.extend_from_slice(b"11111111111111111"),
            _ => out.extend_from_slice(format!("{:x}", chunk.len()).as_bytes()),
        }
        out.extend_from_slice(ext.as_bytes());
        if matches!(damage, Damage::LfInExtension) && i == 0 {
            out.extend_from_slice(b";a\nb");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(chunk);
        if matches!(damage, Damage::LongChunk) && i == 0 {
            out.push(b'X');
        }
        out.extend_from_slice(b"\r\n");
    }
    if matches!(damage, Damage::NoLastChunk) {
        return out;
    }
    out.extend_from_slice(b"0");
    out.extend_from_slice(ext.as_bytes());
    out.extend_from_slice(b"\r\n");
    for t in trailers {
        out.extend_from_slice(t.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(if matches!(damage, Damage::BareLf) {
        b"\n"
    } else {
        b"\r\n"
    });
    out
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        12 => Just(Damage::None),
        1 => Just(Damage::BadSize),
        1 => Just(Damage::LongChunk),
        1 => Just(Damage::LfInExtension),
        1 => Just(Damage::Overflow),
        1 => Just(Damage::BareLf),
        1 => Just(Damage::NoLastChunk),
    ]
}

/// Header lines besides the framing: ordinary ones, `Connection`, and a few
/// httparse refuses or treats specially.
fn extra_lines() -> impl Strategy<Value = Vec<String>> {
    let good = prop::sample::select(vec![
        "server: test",
        "x-a: 1",
        "x-a: 2",
        "set-cookie: a=b",
        "x-empty:",
        "x-tab:\tv",
        "x-obs: caf\u{e9}",
        "connection: close",
        "connection: keep-alive",
        "Connection: Keep-Alive, Upgrade",
    ]);
    let bad = prop::sample::select(vec![
        "x-fold: a\r\n b",
        "bad name: v",
        "x-space : v",
        "x-bare-lf: a\nx-b: c",
        ": no-name",
    ]);
    let line = prop_oneof![8 => good, 1 => bad];
    prop::collection::vec(line.prop_map(String::from), 0..4)
}

/// The backend's whole answer.
#[derive(Debug, Clone)]
struct Answer {
    informational: Vec<u16>,
    version: &'static str,
    status: u16,
    lines: Vec<String>,
    framing: Framing,
    body: Vec<u8>,
    chunk: usize,
    ext: &'static str,
    trailers: Vec<String>,
    damage: Damage,
    /// Bytes after the response: nothing, a second answer, or noise.
    after: &'static str,
    /// Keep this many bytes of the wire (all of it when longer).
    cut: usize,
}

fn answer() -> impl Strategy<Value = Answer> {
    let body = prop::collection::vec(any::<u8>(), 0..64);
    body.prop_flat_map(|body| {
        let n = body.len();
        (
            (
                prop::collection::vec(prop::sample::select(vec![100u16, 102, 103]), 0..3),
                prop::sample::select(vec!["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]),
                prop::sample::select(vec![200u16, 200, 201, 204, 206, 301, 304, 404, 500, 503]),
                extra_lines(),
                framing(n),
            ),
            (
                Just(body),
                1usize..40,
                prop::sample::select(vec!["", ";a=b", ";x", ";q=\"s t\""]),
                prop::collection::vec(
                    prop::sample::select(vec!["x-sum: 9", "x-b: 2", "bad trailer"])
                        .prop_map(String::from),
                    0..3,
                ),
                damage(),
                prop::sample::select(vec![
                    "",
                    "",
                    "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
                    "junk",
                ]),
                prop_oneof![4 => Just(usize::MAX), 1 => 0usize..200],
            ),
        )
            .prop_map(
                |(
                    (informational, version, status, lines, framing),
                    (body, chunk, ext, trailers, damage, after, cut),
                )| Answer {
                    informational,
                    version,
                    status,
                    lines,
                    framing,
                    body,
                    chunk,
                    ext,
                    trailers,
                    damage,
                    after,
                    cut,
                },
            )
    })
}

impl Answer {
    fn wire(&self) -> Vec<u8> {
        let mut w = Vec::new();
        for code in &self.informational {
            w.extend_from_slice(format!("HTTP/1.1 {code} Info\r\nx-i: {code}\r\n\r\n").as_bytes());
        }
        w.extend_from_slice(format!("{} {} Status\r\n", self.version, self.status).as_bytes());
        for line in &self.lines {
            w.extend_from_slice(line.as_bytes());
            w.extend_from_slice(b"\r\n");
        }
        let body = match &self.framing {
            Framing::None => self.body.clone(),
            Framing::Length(values) => {
                for v in values {
                    w.extend_from_slice(format!("content-length: {v}\r\n").as_bytes());
                }
                self.body.clone()
            }
            Framing::Other(codings) => {
                for c in codings {
                    w.extend_from_slice(format!("transfer-encoding: {c}\r\n").as_bytes());
                }
                self.body.clone()
            }
            Framing::Chunked(codings) => {
                for c in codings {
                    w.extend_from_slice(format!("transfer-encoding: {c}\r\n").as_bytes());
                }
                self.chunked()
            }
            Framing::Both(len) => {
                w.extend_from_slice(
                    format!("transfer-encoding: chunked\r\ncontent-length: {len}\r\n").as_bytes(),
                );
                self.chunked()
            }
        };
        w.extend_from_slice(b"\r\n");
        w.extend_from_slice(&body);
        w.extend_from_slice(self.after.as_bytes());
        w.truncate(self.cut);
        w
    }

    fn chunked(&self) -> Vec<u8> {
        chunked(
            &self.body,
            self.chunk,
            self.ext,
            &self.trailers,
            self.damage,
        )
    }
}

/// `wire` cut at `cuts` (taken modulo its length) into the backend's reads.
fn reads(wire: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    at.extend([0, wire.len()]);
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| wire[w[0]..w[1]].to_vec()).collect()
}

fn script(method: Method, wire: &[u8], cuts: &[usize], close: bool) -> H1Script {
    H1Script {
        method,
        upload: Vec::new(),
        upload_len_known: false,
        upload_trailers: None,
        reads: reads(wire, cuts),
        close,
    }
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn both_clients_answer_alike(
        answer in answer(),
        head in any::<bool>(),
        cuts in prop::collection::vec(any::<usize>(), 0..4),
        close in any::<bool>(),
    ) {
        let method = if head { Method::HEAD } else { Method::GET };
        invariants::same_h1_answer(&script(method, &answer.wire(), &cuts, close));
    }

    #[test]
    fn uploads_reach_the_backend_alike(
        frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..4),
        known in any::<bool>(),
        trailers in any::<bool>(),
        early in any::<bool>(),
    ) {
        // The backend answers at once, or only after a pause (on the paused
        // clock: once the upload was written).
        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec();
        let reads = if early { vec![reply] } else { vec![Vec::new(), reply] };
        let mut t = HeaderMap::new();
        t.insert("x-sum", HeaderValue::from_static("9"));
        invariants::same_h1_answer(&H1Script {
            method: Method::POST,
            upload: frames,
            upload_len_known: known,
            upload_trailers: trailers.then_some(t),
            reads,
            close: false,
        });
    }
}

/// The generator reaches the cases that matter: answers both clients give
/// whole and reuse, bodies both refuse midway, heads both refuse, answers
/// that wait for more. (A generator that only made refusals would make the
/// property above hold trivially.)
#[test]
fn the_generator_covers_every_kind_of_answer() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut reused, mut failed, mut refused, mut waiting) = (0, 0, 0, 0);
    let strategy = (answer(), any::<bool>());
    for _ in 0..300 {
        let (answer, close) = strategy.new_tree(&mut runner).unwrap().current();
        let s = script(Method::GET, &answer.wire(), &[], close);
        let (hyper, _) = invariants::h1_outcomes(&s);
        match hyper.answer {
            H1Answer::Response(r) if r.reusable => reused += 1,
            H1Answer::Response(r) if r.end == H1BodyEnd::Failed => failed += 1,
            H1Answer::Response(r) if r.end == H1BodyEnd::Waiting => waiting += 1,
            H1Answer::NoHead(_) => refused += 1,
            H1Answer::Waiting => waiting += 1,
            H1Answer::Response(_) => {}
        }
    }
    println!("reused {reused}, body failed {failed}, refused {refused}, waiting {waiting}");
    for (what, n) in [
        ("reused", reused),
        ("failed", failed),
        ("refused", refused),
        ("waiting", waiting),
    ] {
        assert!(n >= 10, "only {n} of 300 answers {what}");
    }
}

/// Limits both clients share, and the native client's own (hyper's client
/// has no limit on 1xx heads and allows a larger head).
#[test]
fn limits() {
    let native = |wire: Vec<u8>| {
        invariants::h1_outcomes(&script(Method::GET, &wire, &[], false))
            .1
            .answer
    };
    let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..=100 {
        many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"content-length: 0\r\n\r\n");
    let (hyper, _) = invariants::h1_outcomes(&script(Method::GET, &many, &[], false));
    assert!(matches!(hyper.answer, H1Answer::NoHead(_)), "{hyper:?}");
    assert!(matches!(native(many), H1Answer::NoHead(_)));

    let mut info = Vec::new();
    for _ in 0..17 {
        info.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    info.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
    let answer = native(info);
    assert!(
        matches!(answer, H1Answer::NoHead(ref why) if why.contains("informational")),
        "{answer:?}"
    );

    let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
    big.extend_from_slice(format!("x-big: {}\r\n", "v".repeat(70 * 1024)).as_bytes());
    big.extend_from_slice(b"content-length: 0\r\n\r\n");
    assert!(matches!(native(big), H1Answer::NoHead(ref why) if why.contains("head over")));
}

/// The switch is what `h1_exchange` obeys (a differential test between a
/// client and itself would prove nothing).
#[test]
fn the_two_clients_are_different_code() {
    // hyper's client reports a closed connection in its own words.
    let s = script(Method::GET, b"HTTP/1.1 200", &[], true);
    let (hyper, native) = invariants::h1_outcomes(&s);
    let (H1Answer::NoHead(a), H1Answer::NoHead(b)) = (&hyper.answer, &native.answer) else {
        panic!("{hyper:?} {native:?}");
    };
    assert_ne!(a, b);
}
