//! Selection allocates nothing: every algorithm, every failover strategy,
//! slow start, panic mode, health rescans and hash keys, counted by a global
//! allocator.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use detour_core::Backend;
use detour_lb::{
    Algorithm, Failover, HashKey, Ketama, LbOptions, LeastRequest, LoadBalancer, Maglev, PeakEwma,
    RoundRobin, SlowStart, WeightedRandom,
};
use detour_testkit::alloc;
use tokio::time::Instant;

#[global_allocator]
static GLOBAL: alloc::Counting = alloc::Counting;

/// Allocations made by this thread while `f` runs.
fn allocations_in(f: impl FnOnce()) -> u64 {
    let before = alloc::on_this_thread();
    f();
    alloc::on_this_thread() - before
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 9, (i / 200) as u8, (i % 200) as u8 + 1], 80))
}

#[test]
fn selection_never_allocates() {
    assert_eq!(
        allocations_in(|| drop(std::hint::black_box(vec![1u8]))),
        1,
        "the counter sees allocations"
    );
    let algorithms = [
        Algorithm::RoundRobin(RoundRobin),
        Algorithm::Random(WeightedRandom),
        Algorithm::LeastRequest(LeastRequest),
        Algorithm::PeakEwma(PeakEwma::default()),
        Algorithm::ConsistentHash(Ketama::default()),
        Algorithm::Maglev(Maglev::default()),
    ];
    let strategies = [
        Failover::ActiveActive,
        Failover::priority(1.4),
        Failover::locality("a", ["b"]),
    ];
    let key: HashKey = "cookie:session".parse().unwrap();
    let (req, ()) = http::Request::builder()
        .uri("/x?user=1")
        .header("cookie", "a=b; session=s1")
        .body(())
        .unwrap()
        .into_parts();
    let client: SocketAddr = "192.0.2.1:4000".parse().unwrap();

    for algorithm in algorithms {
        for failover in strategies.clone() {
            let options = LbOptions::default()
                .with_failover(failover.clone())
                .with_slow_start(SlowStart::new(Duration::from_secs(10)))
                .with_health_refresh(Duration::from_millis(1));
            let lb = LoadBalancer::try_new(algorithm, options).unwrap();
            lb.update((0..50).map(|i| {
                Backend::new(addr(i))
                    .with_weight(1 + (i % 4) as u32)
                    .with_priority((i % 2) as u32)
                    .with_locality(if i % 3 == 0 { "a" } else { "b" })
            }));
            let set = lb.backends();
            let start = Instant::now();
            set[3].state().mark_recovered(start);
            set[4].state().record_latency(Duration::from_millis(3));
            let tried = [addr(0), addr(1)];
            // Warm up this thread's lazily created state (arc-swap's debt
            // slots, the RNG seed) outside the count.
            drop(lb.select(1, &tried, start));

            let mut now = start;
            let n = allocations_in(|| {
                for i in 0..2_000u64 {
                    // Health views go stale every millisecond: rescans too.
                    now += Duration::from_micros(300);
                    let k = key.hash(&req, client) ^ i;
                    let permit = lb.select(k, &tried, now);
                    assert!(permit.is_some());
                    let picked = lb.select_with(k, |b| !tried.contains(&b.addr()));
                    assert!(picked.is_some());
                }
                // Panic mode: most backends down.
                for b in set.iter().skip(5) {
                    b.state().set_check_failed(true);
                }
                for i in 0..500u64 {
                    now += Duration::from_micros(300);
                    assert!(lb.select(i, &tried, now).is_some());
                }
                for b in set.iter() {
                    b.state().set_check_failed(false);
                }
            });
            assert_eq!(n, 0, "{algorithm} with {failover:?} allocated {n} times");
        }
    }
}
