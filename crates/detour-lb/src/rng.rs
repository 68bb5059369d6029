//! Where selection's randomness comes from: a per-thread generator on the hot
//! path (no lock, no shared cache line), or a seeded sequence for tests.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// The random source a [`Selection`](crate::Selection) draws from: a small,
/// fast generator (wyrand, through `fastrand`), seeded per thread on the hot
/// path, or from a fixed seed in tests.
#[derive(Debug, Clone)]
pub struct Rng(fastrand::Rng);

impl Rng {
    /// A generator with a fixed seed: the same draws on every run.
    pub fn with_seed(seed: u64) -> Self {
        Rng(fastrand::Rng::with_seed(seed))
    }

    /// 64 random bits.
    #[inline]
    pub fn u64(&mut self) -> u64 {
        self.0.u64(..)
    }

    /// A uniform draw from `0..n`.
    ///
    /// # Panics
    /// When `n` is 0.
    #[inline]
    pub fn below(&mut self, n: usize) -> usize {
        self.0.usize(..n)
    }

    /// A uniform draw from `[0, 1)`.
    #[inline]
    pub fn f64(&mut self) -> f64 {
        self.0.f64()
    }
}

/// The golden-ratio increment: consecutive seeds far apart.
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

thread_local! {
    // The state of this thread's generator; 0 = not seeded yet. A const
    // initializer without a destructor: using it never allocates.
    static LOCAL: Cell<u64> = const { Cell::new(0) };
}

/// A source of [`Rng`]s for one load balancer.
#[derive(Debug)]
pub(crate) enum RngSource {
    /// Each thread keeps its own generator, seeded from the OS entropy that
    /// `fastrand` gathers once per thread.
    ThreadLocal,
    /// Every selection takes the next seed of one deterministic sequence
    /// (single-threaded tests get the same choices on every run).
    Seeded(AtomicU64),
}

impl RngSource {
    /// Run `f` with a generator from this source.
    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Rng) -> R) -> R {
        match self {
            RngSource::ThreadLocal => {
                let mut seed = LOCAL.with(Cell::get);
                if seed == 0 {
                    seed = fastrand::u64(..) | 1;
                }
                let mut rng = Rng::with_seed(seed);
                let out = f(&mut rng);
                LOCAL.with(|c| c.set(rng.0.get_seed()));
                out
            }
            RngSource::Seeded(next) => {
                let mut rng = Rng::with_seed(next.fetch_add(GAMMA, Ordering::Relaxed));
                f(&mut rng)
            }
        }
    }
}
