//! The backend boundary: how a step becomes a running container and back.
//!
//! The scheduler drives a [`Backend`] and never talks to Docker itself. Contract for every
//! implementation:
//! - `prepare` sets up what a run shares (the workspace); it may be called once per run.
//! - `start` creates and starts one step attempt, and streams its output into `logs` until
//!   the step ends; `wait` returns once the step has exited *and* its output is drained.
//! - `stop` and `remove` are safe to call at any time, more than once, and after a failed
//!   `start`: "already gone" is success.
//! - `destroy` removes everything the run created, whatever state it is in; it is the
//!   cleanup that always runs, and it must be safe to call twice.
//! - Everything a backend creates carries the run's id ([`LABEL_RUN`]) so `orch gc` can find
//!   leftovers of a killed orch.

pub mod docker;
pub mod fake;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

/// Label on every container, network and volume: the run it belongs to.
pub const LABEL_RUN: &str = "orch.run";
/// Label: the step (containers only).
pub const LABEL_STEP: &str = "orch.step";
/// Label: pid of the orch process that owns the run (to tell stale runs from live ones).
pub const LABEL_PID: &str = "orch.pid";
/// Label: host name of that process.
pub const LABEL_HOST: &str = "orch.host";

/// What a run shares between its steps.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub run_id: String,
    pub workspace: Workspace,
}

/// Where the workspace's initial content comes from.
#[derive(Debug, Clone)]
pub enum Workspace {
    /// Copy these files (relative to `root`) into a fresh volume: the user's tree is
    /// never written to.
    Copy { root: PathBuf, files: Vec<PathBuf> },
    /// Mount the directory itself (`orch ci --bind`): fast, and steps write into it.
    Bind(PathBuf),
    /// An empty volume.
    Empty,
}

/// One attempt of one step.
#[derive(Debug, Clone)]
pub struct StepSpec {
    pub run_id: String,
    pub step: String,
    pub attempt: u32,
    pub image: String,
    /// The shell script that runs the step's commands.
    pub script: String,
    pub env: Vec<(String, String)>,
    pub workdir: String,
    /// The directory bound as the workspace (`--bind`); `None`: the run's volume.
    pub bind: Option<PathBuf>,
    /// Sidecars started (and ready) before the step, reachable by name.
    pub services: Vec<ServiceSpec>,
    /// Cached paths put in place before the step starts.
    pub restore: Vec<Restore>,
    /// Cancelled when the run is stopped: `start` gives up waiting (for services) and
    /// removes what it made. `start` is never dropped half-way, so nothing it creates
    /// outlives the run's cleanup.
    pub cancel: tokio_util::sync::CancellationToken,
}

/// A sidecar container of a step.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Host name the step reaches it by.
    pub name: String,
    pub image: String,
    pub env: Vec<(String, String)>,
    pub command: Option<Vec<String>>,
    pub ready: Option<crate::pipeline::Ready>,
}

/// A tar file (as [`Backend::export`] wrote it) to unpack at `path`'s parent, recreating
/// `path` in the container.
#[derive(Debug, Clone)]
pub struct Restore {
    pub tar: PathBuf,
    /// Absolute path in the container.
    pub path: String,
}

/// What [`Backend::collect`] kept, and the (optional) patterns that matched nothing.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    pub files: Vec<ArtifactFile>,
    pub unmatched: Vec<String>,
}

/// A file collected as an artifact.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ArtifactFile {
    /// Relative to the workspace.
    pub path: String,
    pub size: u64,
}

/// A started step attempt.
#[derive(Debug)]
pub struct StepHandle {
    pub id: String,
    /// Service containers and the network they share with the step.
    pub services: Vec<String>,
    pub network: Option<String>,
    /// Finishes when the step's output stream has ended.
    pub(crate) pump: Option<tokio::task::JoinHandle<()>>,
}

/// Which stream a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Raw output, as the container wrote it (not split into lines).
#[derive(Debug)]
pub struct LogChunk {
    pub stream: Stream,
    pub data: bytes::Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub code: i64,
    pub oom_killed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot reach the Docker daemon ({detail}); is it running? (scripts/setup starts it)")]
    Unreachable { detail: String },
    #[error(
        "the Docker daemon's socket refuses this user (permission denied); add the user to the \
         `docker` group and log in again, or run orch as root"
    )]
    Denied,
    #[error("image `{image}` is not available locally; orch does not pull images: build it first (see runners/images)")]
    ImageMissing { image: String },
    #[error("image `{image}` has no /bin/sh, which orch needs to run commands")]
    NoShell { image: String },
    #[error("docker: {0}")]
    Api(String),
    #[error("workspace: {0}")]
    Workspace(String),
    #[error("service `{service}` {reason}{}", if logs.is_empty() { String::new() } else { format!("; its last output:\n{logs}") })]
    ServiceNotReady { service: String, reason: String, logs: String },
    #[error("cancelled while starting")]
    Cancelled,
    #[error("artifacts: {0}")]
    Artifacts(String),
    #[error("cache: {0}")]
    Cache(String),
}

/// What runs steps. See the module docs for the contract.
pub trait Backend: Send + Sync + 'static {
    fn prepare(&self, run: &RunSpec) -> impl Future<Output = Result<(), BackendError>> + Send;
    fn start(
        &self,
        step: &StepSpec,
        logs: mpsc::Sender<LogChunk>,
    ) -> impl Future<Output = Result<StepHandle, BackendError>> + Send;
    fn wait(&self, handle: &mut StepHandle) -> impl Future<Output = Result<ExitInfo, BackendError>> + Send;
    fn stop(&self, handle: &StepHandle, grace: Duration) -> impl Future<Output = Result<(), BackendError>> + Send;
    fn remove(&self, handle: &StepHandle) -> impl Future<Output = Result<(), BackendError>> + Send;
    fn destroy(&self, run_id: &str) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Writes the tar of `path` (absolute, in the stopped step container) to `dest`.
    /// `Ok(false)` when the path does not exist.
    fn export(
        &self,
        handle: &StepHandle,
        path: &str,
        dest: &Path,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send;
    /// Copies the workspace files matching `patterns` (globs relative to the workspace) out
    /// of the stopped step container into `dest`, keeping their relative paths. A pattern
    /// that matches nothing is an error unless `optional`; a symlink leading out of the
    /// workspace is refused.
    fn collect(
        &self,
        handle: &StepHandle,
        patterns: &[String],
        optional: bool,
        dest: &Path,
    ) -> impl Future<Output = Result<Collected, BackendError>> + Send;
}

/// The absolute container path of a cache path: relative paths are in the workspace, `~`
/// is root's home.
pub fn container_path(p: &str) -> String {
    let p = p.trim_end_matches('/');
    if let Some(rest) = p.strip_prefix("~/") {
        format!("/root/{rest}")
    } else if p == "~" {
        "/root".to_string()
    } else if p.starts_with('/') {
        p.to_string()
    } else {
        format!("{}/{}", crate::plan::WORKSPACE, p.trim_start_matches("./"))
    }
}

/// The directory a glob's matches all live under: its components before the first one with
/// a glob character.
pub fn literal_prefix(pattern: &str) -> String {
    let mut parts = Vec::new();
    for c in pattern.trim_end_matches('/').split('/') {
        if c.contains(['*', '?', '[', '{']) {
            break;
        }
        parts.push(c);
    }
    parts.join("/")
}

/// Unpacks the entries of `tar` (paths relative to the workspace after `rebase`) that match
/// one of `patterns` (or lie under a matching directory) into `dest`. Returns the files, and
/// the hard links whose target was not unpacked (the caller fetches those one by one);
/// `matched` says which patterns matched something.
pub fn extract_matching(
    tar: impl std::io::Read,
    rebase: &str,
    patterns: &[globset::GlobMatcher],
    dest: &Path,
    matched: &mut [bool],
    strip: &str,
) -> Result<(Vec<ArtifactFile>, Vec<String>), String> {
    let mut archive = tar::Archive::new(tar);
    let mut files = Vec::new();
    let mut unresolved = Vec::new();
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let raw = entry.path().map_err(|e| e.to_string())?.to_string_lossy().into_owned();
        let raw = if strip.is_empty() {
            raw
        } else {
            match raw.strip_prefix(strip) {
                Some(r) => r.trim_start_matches('/').to_string(),
                None => continue,
            }
        };
        if raw.is_empty() {
            continue;
        }
        let rel = if rebase.is_empty() { raw.clone() } else { format!("{rebase}/{raw}") };
        let rel = rel.trim_end_matches('/').to_string();
        let mut hit = false;
        for (i, m) in patterns.iter().enumerate() {
            let mut p = Path::new(&rel);
            loop {
                if m.is_match(p) {
                    matched[i] = true;
                    hit = true;
                    break;
                }
                match p.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => p = parent,
                    _ => break,
                }
            }
        }
        if !hit {
            continue;
        }
        let kind = entry.header().entry_type();
        if kind.is_hard_link() {
            // A hard link names another entry of the archive: copy that file if it was
            // kept (unpacking the link itself would resolve it against orch's own cwd).
            let target = entry.link_name().map_err(|e| e.to_string())?.map(|t| t.to_string_lossy().into_owned());
            let target = target.unwrap_or_default();
            let target_rel = if rebase.is_empty() { target.clone() } else { format!("{rebase}/{target}") };
            let target_rel = match target_rel.strip_prefix(strip) {
                Some(t) if !strip.is_empty() => t.trim_start_matches('/').to_string(),
                _ => target_rel,
            };
            if escapes(Path::new(&target_rel)) || escapes(Path::new(&rel)) {
                return Err(format!("`{rel}` is a link to `{target}`, outside the workspace: refused"));
            }
            let (from, to) = (dest.join(&target_rel), dest.join(&rel));
            if from.is_file() {
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
                }
                let size = std::fs::copy(&from, &to).map_err(|e| format!("{}: {e}", to.display()))?;
                files.push(ArtifactFile { path: rel, size });
            } else {
                unresolved.push(rel);
            }
            continue;
        }
        if kind.is_symlink() {
            let target = entry.link_name().map_err(|e| e.to_string())?.map(|t| t.to_string_lossy().into_owned());
            let target = target.unwrap_or_default();
            let base = Path::new(&rel).parent().unwrap_or(Path::new(""));
            let inside = match target.strip_prefix(crate::plan::WORKSPACE) {
                Some(rest) if target.starts_with('/') => {
                    rest.is_empty() || rest.starts_with('/') && !escapes(Path::new(rest.trim_start_matches('/')))
                }
                _ => !target.starts_with('/') && !escapes(&base.join(&target)),
            };
            if !inside {
                return Err(format!("`{rel}` is a link to `{target}`, outside the workspace: refused"));
            }
        }
        if kind.is_dir() {
            continue;
        }
        if escapes(Path::new(&rel)) {
            return Err(format!("`{rel}` leaves the workspace: refused"));
        }
        let size = entry.header().size().unwrap_or(0);
        let out = dest.join(&rel);
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        entry.unpack(&out).map_err(|e| format!("{}: {e}", out.display()))?;
        files.push(ArtifactFile { path: rel, size });
    }
    Ok((files, unresolved))
}

/// Whether a relative path climbs above its root with `..`.
fn escapes(p: &Path) -> bool {
    let mut depth: i32 = 0;
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => depth -= 1,
            std::path::Component::Normal(_) => depth += 1,
            std::path::Component::RootDir | std::path::Component::Prefix(_) => return true,
            std::path::Component::CurDir => {}
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

/// A glob matcher for an artifact pattern: `*` stays within one directory, `**` crosses.
pub fn artifact_matcher(pattern: &str) -> Result<globset::GlobMatcher, String> {
    globset::GlobBuilder::new(pattern.trim_end_matches('/'))
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("`{pattern}`: {e}"))
}

/// The shell script for a step: each command echoed (`+ cmd`) and run in order; the first
/// failure ends the step with its exit code.
pub fn script(commands: &[String]) -> String {
    let mut s = String::from("set -e\n");
    for c in commands {
        let quoted = c.replace('\'', r"'\''");
        s.push_str(&format!("printf '+ %s\\n' '{quoted}'\n{c}\n"));
    }
    s
}

/// A container/volume name fragment: `[a-zA-Z0-9_.-]`, other characters become `_`.
pub fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') { c } else { '_' }).collect()
}
