#![no_main]
//! The `interp` target: see tests/fuzz_checks/mod.rs (`fuzz_checks::interp`) for the input and
//! the invariants, shared with the stable replay of the corpus (tests/fuzz_corpora.rs).

#[path = "../../tests/fuzz_checks/mod.rs"]
mod fuzz_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::interp(data));
