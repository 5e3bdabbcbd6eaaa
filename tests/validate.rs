//! Golden tests for `orch validate` diagnostics.
//!
//! Every `tests/validate/NAME.yml` is parsed with `orch::pipeline::parse_str` under the file
//! name `NAME.yml`; the rendered error (the `ConfigError`'s Display) must equal
//! `tests/validate/NAME.out` byte for byte. Files named `valid-*.yml` must parse and have no
//! `.out`. With `ORCH_BLESS=1` the `.out` files are (re)written instead of compared.
//!
//! Every mismatch is reported, with a line diff, before the test fails.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("validate")
}

fn blessing() -> bool {
    std::env::var("ORCH_BLESS").is_ok_and(|v| v == "1")
}

/// A line diff (longest common subsequence): ` ` common, `-` expected only, `+` actual only.
fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = String::new();
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            let _ = writeln!(out, "   {}", a[i]);
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            let _ = writeln!(out, " - {}", a[i]);
            i += 1;
        } else {
            let _ = writeln!(out, " + {}", b[j]);
            j += 1;
        }
    }
    if expected.ends_with('\n') != actual.ends_with('\n') {
        let _ = writeln!(out, " (the two differ in the final newline)");
    }
    out
}

#[test]
fn diagnostics_match_golden_files() {
    let dir = cases_dir();
    let mut ymls: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .collect();
    ymls.sort();
    assert!(!ymls.is_empty(), "no test cases in {}", dir.display());

    let bless = blessing();
    let mut failures: Vec<String> = Vec::new();
    let mut checked = 0;
    for yml in &ymls {
        let name = yml.file_name().and_then(|n| n.to_str()).expect("UTF-8 file name").to_string();
        let out_path = yml.with_extension("out");
        let src = fs::read_to_string(yml).unwrap_or_else(|e| panic!("cannot read {}: {e}", yml.display()));
        let expect_valid = name.starts_with("valid-");
        checked += 1;
        match (orch::pipeline::parse_str(&name, &src), expect_valid) {
            (Ok(_), true) => {
                if out_path.exists() {
                    failures.push(format!("{name}: is valid but has a stale {}", out_path.display()));
                }
            }
            (Ok(_), false) => failures.push(format!(
                "{name}: parsed successfully, but only files named `valid-*.yml` may (this case should report errors)"
            )),
            (Err(e), true) => failures.push(format!("{name}: expected to be valid, but:\n{e}")),
            (Err(e), false) => {
                let actual = e.to_string();
                if bless {
                    let old = fs::read_to_string(&out_path).ok();
                    if old.as_deref() != Some(actual.as_str()) {
                        fs::write(&out_path, &actual)
                            .unwrap_or_else(|e| panic!("cannot write {}: {e}", out_path.display()));
                        // Straight to stderr: libtest's capture only takes `print!`s.
                        let _ = writeln!(std::io::stderr(), "blessed {}", out_path.display());
                    }
                    continue;
                }
                match fs::read_to_string(&out_path) {
                    Ok(expected) if expected == actual => {}
                    Ok(expected) => failures.push(format!(
                        "{name}: output differs from {} (- expected, + actual):\n{}",
                        out_path.display(),
                        diff(&expected, &actual)
                    )),
                    Err(_) => failures.push(format!(
                        "{name}: no {} (run with ORCH_BLESS=1 to create it); actual output:\n{actual}",
                        out_path.display()
                    )),
                }
            }
        }
    }

    // Golden files whose pipeline is gone.
    for entry in fs::read_dir(&dir).expect("read cases dir") {
        let p = entry.expect("directory entry").path();
        if p.extension().is_some_and(|x| x == "out") && !p.with_extension("yml").exists() {
            failures.push(format!("{}: has no matching .yml", p.display()));
        }
    }

    if !failures.is_empty() {
        panic!(
            "{} of {checked} validate case(s) failed (ORCH_BLESS=1 rewrites the .out files):\n\n{}",
            failures.len(),
            failures.join("\n\n")
        );
    }
}

#[test]
fn diff_shows_both_sides() {
    let d = diff("a\nb\nc\n", "a\nx\nc\n");
    assert_eq!(d, "   a\n - b\n + x\n   c\n");
}

/// The structured diagnostics agree with the rendered text: one rendered `error:` per
/// diagnostic, and the count line says how many.
#[test]
fn rendered_count_matches_diagnostics() {
    let src = "steps:\n  a:\n    imgae: x\n    commands: [true]\n  b:\n    image: [x]\n";
    let Err(orch::pipeline::ConfigError::Invalid { diagnostics, rendered, .. }) =
        orch::pipeline::parse_str("t.yml", src)
    else {
        panic!("expected an invalid pipeline");
    };
    assert_eq!(rendered.matches("\nerror: ").count() + usize::from(rendered.starts_with("error: ")), diagnostics.len());
    assert!(rendered.ends_with(&format!("t.yml: {} problems found\n", diagnostics.len())), "{rendered}");
}
