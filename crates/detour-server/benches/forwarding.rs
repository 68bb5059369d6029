//! Header forwarding on the request path: the head sent upstream for a
//! typical browser request and for a bare one, the hop-by-hop clean-up of
//! a typical response, and path normalization (a path with nothing to change,
//! and one to rewrite). `cargo bench -p detour-server --bench forwarding`.
#![allow(clippy::unwrap_used)]
// `criterion_group!` makes a public function it cannot document.
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use detour_server::bench::{strip_response, Forwarder, PathNormalizer};
use http::{HeaderMap, Request};

fn request(headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = Request::builder().uri("/api/items?page=2");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn bench(c: &mut Criterion) {
    let fwd = Forwarder::new();
    let client: SocketAddr = "192.0.2.10:51234".parse().unwrap();
    let bare = request(&[("host", "example.com")]);
    let browser = request(&[
        ("host", "example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/133.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-GB,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("connection", "keep-alive"),
        ("cookie", "session=0123456789abcdef; theme=dark"),
        ("upgrade-insecure-requests", "1"),
        ("x-request-id", "4bf92f3577b34da6a3ce929d0e0e4736"),
    ]);
    let mut g = c.benchmark_group("forwarding");
    g.bench_function("upstream head, Host only", |b| {
        b.iter(|| fwd.upstream_head(black_box(&bare), Some(client)))
    });
    g.bench_function("upstream head, browser request (9 headers)", |b| {
        b.iter(|| fwd.upstream_head(black_box(&browser), Some(client)))
    });
    let mut response = HeaderMap::new();
    for (k, v) in [
        ("server", "nginx/1.22.1"),
        ("date", "Tue, 24 Nov 2026 02:14:45 GMT"),
        ("content-type", "application/json"),
        ("content-length", "1234"),
        ("connection", "keep-alive"),
        ("cache-control", "no-store"),
    ] {
        response.insert(k, v.parse().unwrap());
    }
    g.bench_function("response hop-by-hop strip (6 headers)", |b| {
        b.iter_batched_ref(
            || response.clone(),
            |h| strip_response(black_box(h)),
            BatchSize::SmallInput,
        )
    });
    let paths = PathNormalizer::new();
    let mut plain = request(&[("host", "example.com")]);
    g.bench_function("path normalization, nothing to change", |b| {
        b.iter(|| paths.normalize(black_box(&mut plain)))
    });
    g.bench_function(
        "path normalization, /api/./v1/../items%2Dx rewritten",
        |b| {
            b.iter_batched_ref(
                || {
                    let mut p = request(&[]);
                    p.uri = "/api/./v1/../items%2Dx?page=2".parse().unwrap();
                    p
                },
                |p| paths.normalize(black_box(p)),
                BatchSize::SmallInput,
            )
        },
    );
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
