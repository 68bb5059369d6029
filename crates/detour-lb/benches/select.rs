//! The cost of one selection, per algorithm, at 3, 100 and 10 000 backends:
//! the raw walk (`select_with`, accepting the first candidate), the full
//! policy (`select`: failover view, admission, permit), and `select` with two
//! threads selecting from the same load balancer at once.
//!
//! `cargo bench -p detour-lb -- --warm-up-time 1 --measurement-time 2`
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Barrier;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use detour_core::Backend;
use detour_lb::{
    Algorithm, AnyLoadBalancer, Ketama, LeastRequest, LoadBalancer, Maglev, PeakEwma, RoundRobin,
    WeightedRandom,
};
use tokio::time::Instant;

const SIZES: [usize; 3] = [3, 100, 10_000];

fn algorithms() -> [Algorithm; 6] {
    [
        Algorithm::RoundRobin(RoundRobin),
        Algorithm::Random(WeightedRandom),
        Algorithm::LeastRequest(LeastRequest),
        Algorithm::PeakEwma(PeakEwma::default()),
        Algorithm::ConsistentHash(Ketama::default()),
        Algorithm::Maglev(Maglev::default()),
    ]
}

fn load_balancer(algorithm: Algorithm, n: usize) -> AnyLoadBalancer {
    let lb = LoadBalancer::new(algorithm);
    lb.update((0..n).map(|i| {
        Backend::new(SocketAddr::from((
            [10, (i >> 16) as u8, (i >> 8) as u8, i as u8],
            80,
        )))
    }));
    lb
}

fn bench(c: &mut Criterion) {
    for algorithm in algorithms() {
        let mut raw = c.benchmark_group(format!("select_with/{algorithm}"));
        for n in SIZES {
            let lb = load_balancer(algorithm, n);
            let mut key = 0u64;
            raw.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                b.iter(|| {
                    key = key.wrapping_add(1);
                    black_box(lb.select_with(black_box(key), |_| true))
                });
            });
        }
        raw.finish();

        let mut full = c.benchmark_group(format!("select/{algorithm}"));
        for n in SIZES {
            let lb = load_balancer(algorithm, n);
            let now = Instant::now();
            let mut key = 0u64;
            full.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                b.iter(|| {
                    key = key.wrapping_add(1);
                    black_box(lb.select(black_box(key), &[], now))
                });
            });
        }
        full.finish();

        let mut shared = c.benchmark_group(format!("select_2_threads/{algorithm}"));
        for n in SIZES {
            let lb = load_balancer(algorithm, n);
            let now = Instant::now();
            shared.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                // Each thread makes `iters` selections at the same time as
                // the other; the time per selection is the slower thread's.
                b.iter_custom(|iters| {
                    let start = Barrier::new(2);
                    std::thread::scope(|s| {
                        let run = |seed: u64| {
                            let (lb, start) = (&lb, &start);
                            move || {
                                start.wait();
                                let t = Instant::now();
                                for i in 0..iters {
                                    black_box(lb.select(black_box(seed ^ i), &[], now));
                                }
                                t.elapsed()
                            }
                        };
                        let a = s.spawn(run(1));
                        let b = s.spawn(run(2 << 40));
                        let (a, b) = (a.join(), b.join());
                        a.unwrap_or_default().max(b.unwrap_or_default())
                    })
                });
            });
        }
        shared.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = bench
}
criterion_main!(benches);
