//! Arbitrary backend bytes, cut into reads, through both HTTP/1.1 upstream
//! clients (hyper's and Detour's own): the same answer, body, trailers and
//! reuse decision. The invariant is in
//! `crates/detour-server/tests/invariants/mod.rs` (`same_h1_answer`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/detour-server/tests/invariants/mod.rs"]
mod invariants;

fuzz_target!(|data: &[u8]| {
    if let Some(script) = invariants::h1_script(data) {
        invariants::same_h1_answer(&script);
    }
});
