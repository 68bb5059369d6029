//! Keeping hot atomics apart.

use std::ops::Deref;

/// A value alone in its cache line (128 bytes: two 64-byte lines, as the
/// adjacent-line prefetcher of x86 CPUs pulls them in pairs).
///
/// Counters that every outcome writes would otherwise share a line with the
/// state word that every admission reads, and each write by one thread
/// would evict the line from every other thread's cache.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}
