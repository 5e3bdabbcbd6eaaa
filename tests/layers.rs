//! The architecture's lines that the crates alone do not draw (see docs/ARCHITECTURE.md,
//! "Architecture invariants"): each rule lists the files it covers and what they must not
//! say. A rule broken fails here, naming the file and the line.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `.rs` files under `dir` (relative to the repository), recursively.
fn files(dir: &str) -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap_or_else(|e| panic!("{}: {e}", d.display())).flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join(dir), &mut out);
    out.sort();
    out
}

/// Lines of code (comments left out) in `files` that contain one of `words`.
fn offenders(files: &[PathBuf], words: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        // Tests may do what the code may not (a temp dir, a clock).
        let code = text.split("\n#[cfg(test)]").next().unwrap_or("");
        for (i, line) in code.lines().enumerate() {
            let l = line.trim_start();
            if l.starts_with("//") {
                continue;
            }
            for w in words {
                if l.contains(w) {
                    let rel = f.strip_prefix(root()).unwrap_or(f);
                    out.push(format!("{}:{}: `{w}` in `{}`", rel.display(), i + 1, l));
                }
            }
        }
    }
    out
}

fn except(mut files: Vec<PathBuf>, names: &[&str]) -> Vec<PathBuf> {
    files.retain(|f| !names.iter().any(|n| f.ends_with(n)));
    files
}

#[test]
fn the_planner_is_pure() {
    // No I/O, no clock, no environment, no Docker: `orch plan` and `orch ci` cannot disagree.
    let bad = offenders(
        &files("crates/lang/src/plan"),
        &["std::fs", "std::env", "SystemTime", "Instant::", "std::process", "tokio", "std::net", "crate::exec"],
    );
    assert!(bad.is_empty(), "the planner does I/O:\n{}", bad.join("\n"));
}

#[test]
fn only_one_file_knows_the_yaml_parser() {
    let bad = offenders(&except(files("crates"), &["pipeline/yaml.rs"]), &["serde_yaml"]);
    assert!(bad.is_empty(), "serde_yaml outside pipeline/yaml.rs:\n{}", bad.join("\n"));
}

#[test]
fn the_scheduler_never_talks_to_docker() {
    let bad = offenders(&files("crates/engine/src/sched"), &["bollard", "exec::docker", "DockerBackend"]);
    assert!(bad.is_empty(), "the scheduler knows Docker:\n{}", bad.join("\n"));
}

#[test]
fn reporters_only_read_events() {
    let bad = offenders(
        &files("crates/engine/src/report"),
        &["execute(", "Backend", "exec::docker", "sched::Cancel", "CancellationToken"],
    );
    assert!(bad.is_empty(), "a reporter calls back into the engine:\n{}", bad.join("\n"));
}

#[test]
fn sql_lives_in_the_database_module() {
    let server = except(
        files("crates/server/src"),
        &["server/db.rs", "server/db/sql.rs", "server/db/throwaway.rs", "server/status.rs"],
    );
    let bad = offenders(&server, &["rusqlite", "SELECT ", "UPDATE ", "INSERT ", "DELETE FROM"]);
    assert!(bad.is_empty(), "SQL outside server/db.rs:\n{}", bad.join("\n"));
}

#[test]
fn runs_are_set_up_in_one_place() {
    // `orch ci` builds its runs with setup::prepare, the server's worker and `orch agent`
    // theirs with job::prepare (which calls it); no face plans and executes on its own.
    let faces: Vec<PathBuf> = files("src").into_iter().chain(files("crates/server/src")).collect();
    let bad = offenders(&faces, &["RunOptions {"]);
    let executes: Vec<String> = offenders(&faces, &["sched::execute("]);
    assert!(bad.is_empty(), "a face builds a run by hand:\n{}", bad.join("\n"));
    assert_eq!(
        executes.len(),
        3,
        "sched::execute is called by orch ci, the worker and the agent only:\n{}",
        executes.join("\n")
    );
    let jobs = offenders(&faces, &["job::prepare("]);
    assert_eq!(jobs.len(), 2, "the worker and the agent set their jobs up with job::prepare:\n{}", jobs.join("\n"));
}

#[test]
fn faces_do_not_import_faces() {
    // The command line dispatches to `orch ci`; never the other way round.
    let bad = offenders(&except(files("src"), &["cli.rs", "main.rs", "lib.rs"]), &["crate::cli::"]);
    assert!(bad.is_empty(), "a face imports the command line:\n{}", bad.join("\n"));
}

#[test]
fn host_paths_from_pipelines_go_through_a_root() {
    // Code that unpacks archives or reads a checkout does it beneath a confined::Root:
    // no `unpack` of a tar entry to a path, no `dest.join(` of an archive name.
    let bad = offenders(&files("crates"), &["entry.unpack(", ".unpack_in("]);
    assert!(bad.is_empty(), "an archive unpacked to a plain path:\n{}", bad.join("\n"));
}
