//! The retry decision on the request path: is the request safe to repeat, may
//! this failed attempt be retried, how long to back off.
//! `cargo bench -p detour-core --bench retry`.
#![allow(clippy::unwrap_used)]
// `criterion_group!` makes a public function it cannot document.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use detour_core::retry::{decide, AttemptFacts};
use detour_core::{CommitPoint, ErrorKind, RetryPolicy};
use http::{HeaderMap, HeaderValue, Method};

fn bench(c: &mut Criterion) {
    let policy = RetryPolicy::default();
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("example.com"));
    headers.insert("accept", HeaderValue::from_static("*/*"));

    let mut g = c.benchmark_group("retry");
    g.bench_function("is_safe GET", |b| {
        b.iter(|| policy.is_safe(black_box(&Method::GET), black_box(&headers)))
    });
    g.bench_function("is_safe POST", |b| {
        b.iter(|| policy.is_safe(black_box(&Method::POST), black_box(&headers)))
    });
    let refused = AttemptFacts {
        kind: ErrorKind::ConnectRefused,
        commit: CommitPoint::NotConnected,
        safe: false,
        replay_intact: true,
        reused: false,
    };
    g.bench_function("decide: connect refused", |b| {
        b.iter(|| decide(black_box(&policy), black_box(&refused)))
    });
    let status = AttemptFacts {
        kind: ErrorKind::HttpStatus(503),
        commit: CommitPoint::ResponseStarted,
        safe: true,
        replay_intact: true,
        reused: true,
    };
    g.bench_function("decide: 503 on a GET", |b| {
        b.iter(|| decide(black_box(&policy), black_box(&status)))
    });
    let unsafe_sent = AttemptFacts {
        kind: ErrorKind::ConnectionReset,
        commit: CommitPoint::RequestSent,
        safe: false,
        replay_intact: true,
        reused: false,
    };
    g.bench_function("decide: reset after a POST was sent", |b| {
        b.iter(|| decide(black_box(&policy), black_box(&unsafe_sent)))
    });
    g.bench_function("retries_status 200", |b| {
        b.iter(|| policy.retries_status(black_box(200)))
    });
    let mut rng = fastrand::Rng::with_seed(7);
    g.bench_function("backoff", |b| {
        b.iter(|| policy.backoff(black_box(2), &mut rng))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
