//! Lock-free sliding windows of (calls, bad calls) for the rate policies.
//!
//! A count window keeps one byte per call in a ring: recording swaps the
//! oldest call's byte for the new one and moves two counters by the
//! difference. A time window keeps 10 buckets, each one atomic word holding
//! its step number and both counts, updated with one compare-and-swap; a
//! bucket whose step number is stale counts as empty.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use super::config::Window;
use crate::clock::{duration_nanos, Divider};
use crate::pad::Padded;

/// Buckets of a time window.
const BUCKETS: u64 = 10;

/// A slot of the count ring: never written, a good call, a bad call.
const EMPTY: u8 = 0;
const GOOD: u8 = 1;
const BAD: u8 = 2;

/// Bits of a time bucket: step (24) | calls (20) | bad (20).
const COUNT_BITS: u32 = 20;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const STEP_MASK: u64 = (1 << 24) - 1;

/// Calls and bad calls in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) calls: u64,
    pub(crate) bad: u64,
}

impl Tally {
    /// Whether `bad / calls` reached `threshold` over at least `min_calls`.
    pub(crate) fn reaches(self, threshold: f64, min_calls: u32) -> bool {
        // Precision: both counts stay far below 2^53.
        self.calls >= u64::from(min_calls) && self.bad as f64 >= threshold * self.calls as f64
    }
}

#[derive(Debug)]
pub(crate) enum RateWindow {
    Count(CountWindow),
    Time(TimeWindow),
}

impl RateWindow {
    pub(crate) fn new(w: Window) -> Self {
        match w {
            Window::Calls(n) => RateWindow::Count(CountWindow::new(n as usize)),
            Window::Time(d) => RateWindow::Time(TimeWindow::new(duration_nanos(d))),
        }
    }

    /// Whether [`record`](Self::record) and [`tally`](Self::tally) need the
    /// clock (a count window does not, so it costs no clock read).
    pub(crate) fn needs_clock(&self) -> bool {
        matches!(self, RateWindow::Time(_))
    }

    pub(crate) fn record(&self, bad: bool, now_ns: u64) {
        match self {
            RateWindow::Count(c) => c.record(bad),
            RateWindow::Time(t) => t.record(bad, now_ns),
        }
    }

    pub(crate) fn tally(&self, now_ns: u64) -> Tally {
        match self {
            RateWindow::Count(c) => c.tally(),
            RateWindow::Time(t) => t.tally(now_ns),
        }
    }

    pub(crate) fn reset(&self) {
        match self {
            RateWindow::Count(c) => c.reset(),
            RateWindow::Time(t) => t.reset(),
        }
    }
}

/// The last N calls.
#[derive(Debug)]
pub(crate) struct CountWindow {
    slots: Box<[AtomicU8]>,
    next: Padded<AtomicUsize>,
    counts: Padded<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    /// Signed, and read clamped at 0: a record racing a reset may move a
    /// counter by one the wrong way, which must not wrap it around.
    calls: AtomicI64,
    bad: AtomicI64,
}

impl CountWindow {
    fn new(len: usize) -> Self {
        CountWindow {
            slots: (0..len.max(1)).map(|_| AtomicU8::new(EMPTY)).collect(),
            next: Padded::default(),
            counts: Padded::default(),
        }
    }

    fn record(&self, bad: bool) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let new = if bad { BAD } else { GOOD };
        // `i` < len by the modulo above.
        let slot = &self.slots[i];
        // The same outcome as the call it replaces (the steady state): write
        // nothing, so the ring's lines stay shared between threads.
        let mut old = slot.load(Ordering::Relaxed);
        if old != new {
            old = slot.swap(new, Ordering::Relaxed);
        }
        let c = &self.counts;
        if old == EMPTY {
            c.calls.fetch_add(1, Ordering::Relaxed);
        }
        match (old == BAD, bad) {
            (false, true) => {
                c.bad.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                c.bad.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    fn tally(&self) -> Tally {
        let get = |a: &AtomicI64| u64::try_from(a.load(Ordering::Relaxed)).unwrap_or(0);
        Tally {
            calls: get(&self.counts.calls),
            bad: get(&self.counts.bad),
        }
    }

    fn reset(&self) {
        for s in self.slots.iter() {
            s.store(EMPTY, Ordering::Relaxed);
        }
        self.counts.calls.store(0, Ordering::Relaxed);
        self.counts.bad.store(0, Ordering::Relaxed);
    }
}

/// The calls of the last `BUCKETS × step` nanoseconds.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    buckets: Padded<[AtomicU64; BUCKETS as usize]>,
    step: Divider,
}

fn unpack(b: u64) -> (u64, u64, u64) {
    (
        b >> (2 * COUNT_BITS),
        (b >> COUNT_BITS) & COUNT_MAX,
        b & COUNT_MAX,
    )
}

fn pack(step: u64, calls: u64, bad: u64) -> u64 {
    ((step & STEP_MASK) << (2 * COUNT_BITS))
        | (calls.min(COUNT_MAX) << COUNT_BITS)
        | bad.min(COUNT_MAX)
}

impl TimeWindow {
    fn new(window_ns: u64) -> Self {
        TimeWindow {
            buckets: Default::default(),
            step: Divider::new(window_ns / BUCKETS),
        }
    }

    fn record(&self, bad: bool, now_ns: u64) {
        let step = self.step.div(now_ns);
        let tag = step & STEP_MASK;
        // In bounds: the index is taken modulo the array's length.
        let bucket = &self.buckets[(step % BUCKETS) as usize];
        let mut cur = bucket.load(Ordering::Relaxed);
        loop {
            let (t, calls, n_bad) = unpack(cur);
            let (calls, n_bad) = if t == tag { (calls, n_bad) } else { (0, 0) };
            let next = pack(tag, calls + 1, n_bad + u64::from(bad));
            match bucket.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    fn tally(&self, now_ns: u64) -> Tally {
        let tag = self.step.div(now_ns) & STEP_MASK;
        let mut sum = Tally { calls: 0, bad: 0 };
        for b in self.buckets.iter() {
            let (t, calls, bad) = unpack(b.load(Ordering::Relaxed));
            // A bucket counts while its step is one of the last BUCKETS.
            if tag.wrapping_sub(t) & STEP_MASK < BUCKETS {
                sum.calls += calls;
                sum.bad += bad;
            }
        }
        sum
    }

    fn reset(&self) {
        for b in self.buckets.iter() {
            b.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_count_window_forgets_the_oldest_call() {
        let w = RateWindow::new(Window::Calls(4));
        for bad in [true, true, false, false] {
            w.record(bad, 0);
        }
        assert_eq!(w.tally(0), Tally { calls: 4, bad: 2 });
        w.record(false, 0);
        w.record(false, 0);
        assert_eq!(w.tally(0), Tally { calls: 4, bad: 0 });
        w.record(true, 0);
        assert_eq!(w.tally(0), Tally { calls: 4, bad: 1 });
        w.reset();
        assert_eq!(w.tally(0), Tally { calls: 0, bad: 0 });
        assert!(!w.needs_clock());
    }

    #[test]
    fn a_time_window_forgets_old_steps() {
        // 1 s window: 10 steps of 100 ms.
        let w = RateWindow::new(Window::Time(std::time::Duration::from_secs(1)));
        assert!(w.needs_clock());
        w.record(true, 0);
        w.record(false, 50 * MS);
        w.record(true, 450 * MS);
        assert_eq!(w.tally(450 * MS), Tally { calls: 3, bad: 2 });
        // At 1.05 s the step of 0–100 ms has left the window.
        assert_eq!(w.tally(1_050 * MS), Tally { calls: 1, bad: 1 });
        // Recording into a recycled bucket starts it from zero.
        w.record(false, 1_020 * MS);
        assert_eq!(w.tally(1_050 * MS), Tally { calls: 2, bad: 1 });
        assert_eq!(w.tally(5_000 * MS), Tally { calls: 0, bad: 0 });
    }

    #[test]
    fn tallies_judge_against_the_minimum() {
        let t = Tally { calls: 10, bad: 5 };
        assert!(t.reaches(0.5, 10));
        assert!(!t.reaches(0.5, 11));
        assert!(!t.reaches(0.6, 1));
    }
}
