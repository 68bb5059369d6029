//! Arbitrary text through both config loaders; the invariants are in
//! `crates/detour-cli/tests/invariants/mod.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/detour-cli/tests/invariants/mod.rs"]
mod invariants;

fuzz_target!(|text: &str| {
    invariants::config(text);
});
