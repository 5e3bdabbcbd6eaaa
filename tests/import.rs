//! `orch import` on real workflows of public projects (tests/fixtures/import, licences in
//! its LICENSES.md): each translation passes `orch validate`, keeps what it should, and
//! reports every `uses:` line of the workflow at that line. Runs the built binary; no Docker.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ORCH: &str = env!("CARGO_BIN_EXE_orch");

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/import");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    files.sort();
    files
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/import").join(name)
}

fn orch(args: &[&str]) -> Output {
    Command::new(ORCH).args(args).output().expect("orch runs")
}

/// Imports `file` into a temporary `.orch.yml`; returns the text, the report and the dir.
fn import(file: &Path) -> (String, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join(".orch.yml");
    let o = orch(&["import", file.to_str().expect("utf-8 path"), "-o", out.to_str().expect("utf-8 path")]);
    assert_eq!(o.status.code(), Some(0), "{}: {}", file.display(), String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&out).expect("output written");
    (text, String::from_utf8(o.stderr).expect("utf-8 stderr"), dir)
}

fn validate(dir: &Path) {
    let o = orch(&["validate", dir.join(".orch.yml").to_str().expect("utf-8 path")]);
    assert!(o.status.success(), "validate: {}", String::from_utf8_lossy(&o.stderr));
}

/// The 1-based line and column of every `uses:` key of a workflow, from its text.
fn uses_lines(text: &str) -> Vec<(usize, usize)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let t = l.trim_start();
            let t2 = t.strip_prefix("- ").unwrap_or(t);
            t2.starts_with("uses:").then(|| (i + 1, l.len() - t2.len() + 1))
        })
        .collect()
}

#[test]
fn every_fixture_imports_validates_and_reports_each_uses_line() {
    let files = fixtures();
    assert!(files.len() >= 5, "{files:?}");
    for f in files {
        let (text, report, dir) = import(&f);
        validate(dir.path());
        let src = std::fs::read_to_string(&f).expect("fixture");
        let name = f.display().to_string();
        for (line, column) in uses_lines(&src) {
            let at = format!("{name}:{line}:{column}: ");
            assert!(
                report.lines().any(|l| l.starts_with(&at) && l.contains("`uses: ")),
                "{name}: no report for the `uses:` at {line}:{column}:\n{report}"
            );
        }
        assert!(text.starts_with("# .orch.yml translated by `orch import`"), "{text}");
        // Every report line points into the workflow.
        let lines = src.lines().count();
        for l in report.lines().filter(|l| l.starts_with(&name)) {
            let n: usize = l[name.len() + 1..].split(':').next().and_then(|n| n.parse().ok()).expect("a line number");
            assert!((1..=lines).contains(&n), "{l}");
        }
    }
}

#[test]
fn a_matrix_with_exclude_keeps_it() {
    let (text, _, _) = import(&fixture("requests-run-tests.yml"));
    assert!(text.contains("    matrix:\n      python_version:\n"), "{text}");
    assert!(
        text.contains("      exclude:\n        - python_version: pypy-3.11\n          os: windows-latest\n"),
        "{text}"
    );
    assert!(text.contains("timeout: 10m"), "{text}");
}

#[test]
fn a_matrix_of_includes_keeps_them() {
    let (text, _, _) = import(&fixture("ripgrep-ci.yml"));
    assert!(text.contains("      include:\n        - build: pinned\n"), "{text}");
    assert!(text.contains("target: x86_64-unknown-linux-musl"), "{text}");
    let (text, _, _) = import(&fixture("flask-tests.yaml"));
    assert!(text.contains("paths:\n      exclude:\n        - docs/**\n        - README.md\n"), "{text}");
    assert!(text.contains("key: mypy|${hash:pyproject.toml}"), "{text}");
}

#[test]
fn services_needs_and_conditions_are_kept() {
    let (text, report, _) = import(&fixture("sqlx-examples.yml"));
    assert!(text.contains("    needs:\n      - sqlx-cli\n"), "{text}");
    assert!(text.contains("      postgres:\n        image: postgres:latest\n"), "{text}");
    assert!(text.contains("if [ -n \"${offline}\" ]; then"), "{text}");
    assert!(report.contains("reached its services on `localhost`"), "{report}");
    let (text, _, _) = import(&fixture("django-schedule_tests.yml"));
    assert!(text.contains("        ready: pg_isready\n"), "{text}");
    assert!(text.contains("allow_failure: true"), "{text}");
    let (text, _, _) = import(&fixture("rq-valkey.yml"));
    assert!(text.contains("image: valkey/valkey:${valkey_version}"), "{text}");
    assert!(text.contains("ready: valkey-cli ping"), "{text}");
}

#[test]
fn containers_and_job_conditions() {
    let (text, _, _) = import(&fixture("bats-core-tests.yml"));
    assert!(text.contains("  alpine:\n    image: alpine:latest\n"), "{text}");
    assert!(text.contains("  rpm:\n    image: almalinux:8\n"), "{text}");
    assert!(text.contains("    when:\n      event:\n        - pull_request\n"), "{text}");
    // `shell: 'script ... "bash {0}"'` runs the script file through the same wrapper.
    assert!(text.contains("script -q -e -c \"bash /tmp/linux-"), "{text}");
}

#[test]
fn several_files_merge_into_one_pipeline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join(".orch.yml");
    let a = fixture("requests-run-tests.yml");
    let b = fixture("rq-valkey.yml");
    let o = orch(&["import", a.to_str().unwrap(), b.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    validate(dir.path());
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("  valkey-test:\n") && text.contains("  no_chardet:\n"), "{text}");
}

#[test]
fn json_report_and_stdout() {
    let f = fixture("flask-tests.yaml");
    let o = orch(&["import", "--json", "--image", "python:3.12", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert!(v["pipeline"].as_str().unwrap().contains("image: python:3.12"));
    let findings = v["findings"].as_array().unwrap();
    assert!(
        findings.iter().any(|f| f["severity"] == "warning" && f["line"].as_u64().is_some() && f["help"].is_string())
    );
    // Without -o the pipeline goes to stdout, the report to stderr.
    let o = orch(&["import", f.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("# .orch.yml"));
    assert!(String::from_utf8_lossy(&o.stderr).contains(": warning: "));
}

#[test]
fn bad_input_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yml");
    std::fs::write(&bad, "jobs:\n  a: [1, 2\n  b: 3\n").unwrap();
    let o = orch(&["import", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.yml:2:"), "{err}");
    std::fs::write(&bad, "name: x\n").unwrap();
    let o = orch(&["import", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a GitHub Actions workflow"));
    let o = orch(&["import", dir.path().join("missing.yml").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stdout.is_empty());
}
