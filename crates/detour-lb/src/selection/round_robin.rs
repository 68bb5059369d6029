//! Smooth weighted round robin.
//!
//! nginx's smooth weighted round robin (Maxim Dounin, nginx commit 52327e0627f4,
//! 2012) interleaves the backends so that, over one cycle of `Σ weights`
//! picks, each gets exactly its weight and the heavy ones are spread out
//! (weights 5, 1, 1 give `a a b a c a a`, not `a a a a a b c`). Done as nginx
//! does it, a pick is O(N) and needs the whole set's counters updated under a
//! lock.
//!
//! Here the cycle is computed once per backend set, and a pick is one atomic
//! `fetch_add` on a cursor plus an index: O(1), lock-free. Each thread keeps
//! to one of eight cursors (each on its own cache line), so worker threads do
//! not fight over one counter; every cursor walks the same exact cycle.
//!
//! - All weights equal: no table at all, the cursor modulo N.
//! - Otherwise the weights are divided by their GCD and nginx's algorithm
//!   generates one cycle, when that costs at most 2^24 steps (`Σw × N`).
//!   Beyond that the cycle is generated in O(Σw log N) by stride scheduling
//!   (earliest virtual deadline first, deadlines at `(k + ½)/w`, as Envoy's
//!   EDF scheduler does): the same exact counts per cycle, a slightly different
//!   interleaving.
//! - A cycle is at most 2^18 slots (1 MiB). Larger weight sums are scaled down
//!   proportionally (every backend keeps at least one slot), so the shares are
//!   then exact to within one slot in 2^18.

use std::cell::Cell;
use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::Rng;
use detour_core::Backend;

use super::{coprime_stride, sweep, Seen, Selection};

/// Largest cycle table, in slots.
const MAX_CYCLE: u64 = 1 << 18;
/// Largest `Σw × N` generated with nginx's O(N)-per-step algorithm.
const NGINX_BUDGET: u64 = 1 << 24;

/// Smooth weighted round robin (see the [module docs](self)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundRobin;

/// The precomputed cycle of a [`RoundRobin`] set and its cursors.
#[derive(Debug)]
pub struct RoundRobinTable {
    cursors: Box<[Cursor]>,
    cycle: Cycle,
}

/// One cursor per cache line: threads on different stripes never contend.
#[derive(Debug)]
#[repr(align(64))]
struct Cursor(AtomicUsize);

/// Cursor stripes per table. Each thread always uses the same one, so a
/// thread's picks follow the cycle exactly; with several threads each
/// stripe's picks do, and the sum converges to the weights as well.
const STRIPES: usize = 8;

thread_local! {
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's stripe, handed out in turn on first use.
#[inline]
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    STRIPE.with(|s| {
        if s.get() == usize::MAX {
            s.set(NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES);
        }
        s.get()
    })
}

#[derive(Debug)]
enum Cycle {
    /// Equal weights: slot `i` is backend `i`.
    Plain(usize),
    /// Backend index per slot.
    Slots(Box<[u32]>),
}

impl RoundRobinTable {
    /// The number of picks after which the order repeats.
    pub fn cycle_len(&self) -> usize {
        match &self.cycle {
            Cycle::Plain(n) => *n,
            Cycle::Slots(s) => s.len(),
        }
    }
}

impl Selection for RoundRobin {
    type Table = RoundRobinTable;

    fn build(&self, backends: &[Arc<Backend>], rng: &mut Rng) -> RoundRobinTable {
        let cycle = build_cycle(backends);
        let len = match &cycle {
            Cycle::Plain(n) => *n,
            Cycle::Slots(s) => s.len(),
        };
        // A random start, so that proxies started together do not all send
        // their first requests to the same backend; the stripes spread out
        // over the cycle from there.
        let start = rng.below(len.max(1));
        RoundRobinTable {
            cursors: (0..STRIPES)
                .map(|i| Cursor(AtomicUsize::new(start + i * len / STRIPES)))
                .collect(),
            cycle,
        }
    }

    #[inline]
    fn walk<'a, R>(
        &self,
        table: &RoundRobinTable,
        backends: &'a [Arc<Backend>],
        _key: u64,
        rng: &mut Rng,
        mut visit: impl FnMut(&'a Arc<Backend>) -> Option<R>,
    ) -> Option<R> {
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let pos = table.cursors[stripe()].0.fetch_add(1, Ordering::Relaxed);
        let first = match &table.cycle {
            Cycle::Plain(len) => pos % len,
            Cycle::Slots(slots) => slots[pos % slots.len()] as usize,
        } % n;
        if let Some(r) = visit(&backends[first]) {
            return Some(r);
        }
        // Refused: the rest in a random order, so a failed backend's share
        // spreads over all the others rather than doubling its neighbour's.
        let mut seen = Seen::new();
        seen.push(first);
        let stride = coprime_stride(n, rng.u64());
        sweep(backends, first + stride, stride, &seen, visit)
    }
}

fn build_cycle(backends: &[Arc<Backend>]) -> Cycle {
    let n = backends.len();
    let first = backends.first().map_or(1, |b| b.weight());
    if backends.iter().all(|b| b.weight() == first) {
        return Cycle::Plain(n);
    }
    let g = backends
        .iter()
        .fold(0u64, |g, b| gcd(g, u64::from(b.weight())))
        .max(1);
    let mut weights: Vec<u64> = backends.iter().map(|b| u64::from(b.weight()) / g).collect();
    let mut total: u64 = weights.iter().sum();
    if total > MAX_CYCLE {
        for w in &mut weights {
            *w = ((u128::from(*w) * u128::from(MAX_CYCLE) / u128::from(total)) as u64).max(1);
        }
        total = weights.iter().sum();
    }
    let slots = if total.saturating_mul(n as u64) <= NGINX_BUDGET {
        nginx_cycle(&weights, total)
    } else {
        edf_cycle(&weights, total)
    };
    Cycle::Slots(slots.into_boxed_slice())
}

/// One cycle of nginx's smooth weighted round robin: each step, every
/// backend's current weight grows by its weight, the largest is picked (the
/// first on ties) and loses the total.
fn nginx_cycle(weights: &[u64], total: u64) -> Vec<u32> {
    let mut current = vec![0i64; weights.len()];
    let mut slots = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += *w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        slots.push(best as u32);
    }
    slots
}

/// A backend's next virtual deadline, `(2k + 1) / (2w)` after `k` picks.
#[derive(Debug, PartialEq, Eq)]
struct Deadline {
    num: u64,
    weight: u64,
    index: u32,
}

impl Ord for Deadline {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        // Earliest deadline first (the heap is a max-heap: reversed), then
        // the lowest index.
        let a = u128::from(self.num) * u128::from(other.weight);
        let b = u128::from(other.num) * u128::from(self.weight);
        b.cmp(&a).then(other.index.cmp(&self.index))
    }
}

impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

/// One cycle by stride scheduling: O(Σw log N).
fn edf_cycle(weights: &[u64], total: u64) -> Vec<u32> {
    let mut heap: BinaryHeap<Deadline> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| Deadline {
            num: 1,
            weight: w,
            index: i as u32,
        })
        .collect();
    let mut slots = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let Some(mut next) = heap.pop() else { break };
        slots.push(next.index);
        next.num += 2;
        heap.push(next);
    }
    slots
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(weights: &[u32]) -> Vec<Arc<Backend>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                Arc::new(Backend::new(([10, 0, 0, 1], i as u16 + 1).into()).with_weight(w))
            })
            .collect()
    }

    fn first_picks(weights: &[u32], count: usize) -> Vec<u16> {
        let bs = set(weights);
        let table = RoundRobinTable {
            cursors: (0..STRIPES).map(|_| Cursor(AtomicUsize::new(0))).collect(),
            cycle: build_cycle(&bs),
        };
        let mut rng = Rng::with_seed(1);
        (0..count)
            .map(|_| {
                RoundRobin
                    .walk(&table, &bs, 0, &mut rng, |b| Some(b.addr().port()))
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn the_cycle_is_nginx_smooth_order() {
        // nginx's documented example: weights 5, 1, 1 -> a a b a c a a.
        assert_eq!(first_picks(&[5, 1, 1], 7), [1, 1, 2, 1, 3, 1, 1]);
        assert_eq!(first_picks(&[1, 1, 1], 4), [1, 2, 3, 1]);
    }

    #[test]
    fn stride_scheduling_gives_exact_counts_and_spreads_the_heavy() {
        let weights = [7u64, 3, 1, 1];
        let slots = edf_cycle(&weights, 12);
        for (i, w) in weights.iter().enumerate() {
            assert_eq!(
                slots.iter().filter(|&&s| s as usize == i).count() as u64,
                *w
            );
        }
        // The heaviest is interleaved: never more than three in a row.
        assert!(
            !slots.windows(4).any(|w| w.iter().all(|&s| s == 0)),
            "{slots:?}"
        );
        assert_eq!(slots, [0, 1, 0, 0, 0, 1, 2, 3, 0, 0, 1, 0]);
    }

    #[test]
    fn huge_weight_sums_are_scaled_into_a_bounded_cycle() {
        let bs = set(&[u32::MAX, u32::MAX - 1, 1]);
        let Cycle::Slots(slots) = build_cycle(&bs) else {
            panic!("unequal weights");
        };
        assert!(slots.len() as u64 <= MAX_CYCLE + 3);
        assert!(slots.contains(&2), "every backend keeps a slot");
    }
}
