//! Arbitrary request heads through `check_request` and path normalization;
//! the invariants are in `crates/detour-server/tests/invariants/mod.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/detour-server/tests/invariants/mod.rs"]
mod invariants;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the `[server.paths]` policy; the rest is the head
    // (and, read as text, a path on its own).
    let Some((&policy, head)) = data.split_first() else {
        return;
    };
    invariants::request_head(head, policy);
    if let Ok(path) = std::str::from_utf8(head) {
        invariants::path(path, policy);
    }
});
