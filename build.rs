//! Records the git commit the binary is built from, for `orch --version`.
//!
//! Sets `ORCH_GIT_COMMIT` to `git rev-parse --short HEAD`, or to "unknown" when git or the
//! repository is absent (a build from a source tarball). Cargo reruns this when HEAD moves:
//! on a checkout (`HEAD`) and on a commit (the branch's ref file and its directory, or
//! `packed-refs`).

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=ORCH_GIT_COMMIT={commit}");
    // Only files that exist: a missing one would make cargo rerun this on every build.
    let mut watch = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
        // The branch's directory too: a branch packed by `git gc` gets its ref file back
        // at the next commit, which no watch on a file that did not exist would see.
        if let Some((dir, _)) = r.rsplit_once('/') {
            watch.push(dir.to_string());
        }
        watch.push(r);
    }
    for name in watch {
        if let Some(path) = git(&["rev-parse", "--git-path", &name])
            && PathBuf::from(&path).exists()
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
