//! Replays the fuzz corpora (`fuzz/corpus/<target>/`) and the crash reproducers kept as
//! regressions (`fuzz/regressions/<target>/`) through the same invariant checks as the
//! cargo-fuzz targets (`tests/fuzz_checks/mod.rs`), on the stable toolchain, so every
//! `cargo test` covers what the fuzzers found. See `fuzz/README.md`.

mod fuzz_checks;

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        files.extend(entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()));
    }
    files.sort();
    files
}

/// Runs `check` on every input of `target`; names each one that fails.
fn replay(target: &str) {
    let (_, check) = fuzz_checks::TARGETS.iter().find(|(name, _)| *name == target).expect("a target");
    let files = inputs(target);
    assert!(!files.is_empty(), "fuzz/corpus/{target}/ is empty or missing");
    let mut failed = Vec::new();
    for f in &files {
        let data = std::fs::read(f).unwrap();
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            failed.push(f.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} inputs of `{target}` break an invariant:\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
}

#[test]
fn every_target_is_replayed() {
    let names: Vec<&str> = fuzz_checks::TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["load", "webhook", "dotenv", "extract", "interp"]);
    for name in names {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fuzz/fuzz_targets/{name}.rs"));
        assert!(src.is_file(), "no fuzz target for {name}");
    }
}

#[test]
fn load() {
    replay("load");
}

#[test]
fn webhook() {
    replay("webhook");
}

#[test]
fn dotenv() {
    replay("dotenv");
}

#[test]
fn extract() {
    replay("extract");
}

#[test]
fn interp() {
    replay("interp");
}
