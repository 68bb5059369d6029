//! A counting global allocator, for tests that bound the allocations of a
//! code path.
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: detour_testkit::alloc::Counting = detour_testkit::alloc::Counting;
//!
//! let before = detour_testkit::alloc::on_this_thread();
//! select_a_backend();
//! assert_eq!(detour_testkit::alloc::on_this_thread(), before);
//! ```
//!
//! Every thread counts its own allocations ([`on_this_thread`]). A thread the
//! test cannot run code on afterwards, such as a server's worker, calls
//! [`watch_this_thread`] from code it runs (a hook); its allocations then
//! also add up in [`on_watched_threads`], readable from anywhere.
// The one place in the crate with `unsafe`: an `unsafe impl GlobalAlloc` that
// forwards to `System`. The crate's `[lints]` lower the workspace's "forbid"
// to "deny" for this module alone to allow it.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

thread_local! {
    // Const-initialised, no destructor: touching them never allocates.
    static COUNT: Cell<u64> = const { Cell::new(0) };
    static WATCHED: Cell<bool> = const { Cell::new(false) };
}

/// Allocations made on watched threads.
static WATCHED_COUNT: AtomicU64 = AtomicU64::new(0);

/// A global allocator that counts allocations and reallocations (not frees)
/// and forwards everything to the system allocator.
#[derive(Debug, Clone, Copy)]
pub struct Counting;

/// Allocations this thread has made so far.
pub fn on_this_thread() -> u64 {
    COUNT.with(Cell::get)
}

/// From now on, this thread's allocations also count in [`on_watched_threads`].
pub fn watch_this_thread() {
    WATCHED.with(|w| w.set(true));
}

/// Allocations made so far on threads that called [`watch_this_thread`].
pub fn on_watched_threads() -> u64 {
    WATCHED_COUNT.load(Ordering::Relaxed)
}

fn count() {
    // `try_with`: the allocator may run while the thread is being torn down.
    let _ = COUNT.try_with(|c| c.set(c.get() + 1));
    if WATCHED.try_with(Cell::get).unwrap_or(false) {
        WATCHED_COUNT.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments, so
// `System`'s guarantees carry over unchanged; counting touches only
// thread-locals without destructors and an atomic, which neither allocate
// nor unwind.
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
