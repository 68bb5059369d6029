//! Arbitrary bytes, cut into reads, through the framing guard's scanner; the
//! invariants are in `crates/detour-server/tests/invariants/mod.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/detour-server/tests/invariants/mod.rs"]
mod invariants;

fuzz_target!(|data: &[u8]| {
    // The first four bytes pick two cut points; the rest is the connection.
    let (cuts, bytes) = data.split_at(data.len().min(4));
    let cuts: Vec<usize> = cuts
        .chunks(2)
        .map(|c| c.iter().fold(0, |n, b| n << 8 | usize::from(*b)))
        .collect();
    invariants::framing(bytes, &cuts);
});
