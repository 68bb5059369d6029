//! Selection allocates nothing: every algorithm, every failover strategy,
//! slow start, panic mode, health rescans and hash keys, counted by a global
//! allocator.
// A counting `GlobalAlloc` is an `unsafe impl`. The workspace forbids unsafe
// code; `crates/detour-lb/Cargo.toml` lowers that to "deny" for this crate's
// targets (the library keeps `#![forbid(unsafe_code)]` in `src/lib.rs`) so
// that this test binary alone can allow it. The impl only forwards to
// `System` and bumps a thread-local counter.
#![allow(unsafe_code)]
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::time::Duration;

use detour_core::Backend;
use detour_lb::{
    Algorithm, Failover, HashKey, Ketama, LbOptions, LeastRequest, LoadBalancer, Maglev, PeakEwma,
    RoundRobin, SlowStart, WeightedRandom,
};
use tokio::time::Instant;

thread_local! {
    // Const-initialized, no destructor: touching it never allocates.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

struct Counting;

fn count() {
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every method forwards to `System` with the caller's arguments, so
// `System`'s guarantees carry over unchanged; counting touches no memory the
// allocator hands out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `ptr` came from this allocator, i.e. from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by this thread while `f` runs.
fn allocations_in(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
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
