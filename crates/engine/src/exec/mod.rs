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
//! - Everything a backend creates for a run carries the run's id ([`LABEL_RUN`]) so
//!   `orch gc` can find leftovers of a killed orch. The one shared object, the steps'
//!   network (`docker::steps_network`), carries [`LABEL_SHARED`] instead and stays.

pub mod base;
pub mod docker;
pub mod fake;
pub mod firewall;
pub mod isolation;

pub use isolation::Isolation;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::confined::{Kind, Root, plain_components};

/// Label on every container, network and volume: the run it belongs to.
pub const LABEL_RUN: &str = "orch.run";
/// Label: the step (containers only).
pub const LABEL_STEP: &str = "orch.step";
/// Label: pid of the orch process that owns the run (to tell stale runs from live ones).
pub const LABEL_PID: &str = "orch.pid";
/// Label: host name of that process.
pub const LABEL_HOST: &str = "orch.host";
/// Label on what orch keeps between runs (the steps' network): what it is for.
pub const LABEL_SHARED: &str = "orch.shared";

/// What a run shares between its steps.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub run_id: String,
    pub workspace: Workspace,
    /// Whether the run's network is one the firewall keeps from the host.
    pub block_host: bool,
    /// The image of the run's first step when steps follow one another (a `needs` chain):
    /// a backend that can may start a network lane with it while the workspace is filled,
    /// for those steps to share one after another (see `docker.rs`, lanes).
    pub lane_image: Option<String>,
}

/// Where the workspace's initial content comes from.
#[derive(Debug, Clone)]
pub enum Workspace {
    /// Copy these files (relative to `root`) into a fresh volume: the user's tree is
    /// never written to. With `base` (a directory of orch's own), a backend that can may
    /// keep the files mirrored there between runs and give each run a copy-on-write layer
    /// over them instead ([`base`]).
    Copy { root: PathBuf, files: Vec<PathBuf>, base: Option<PathBuf> },
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
    /// What the step's (and its services') containers are allowed.
    pub isolation: Isolation,
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
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// The network lane the step's container joined (backend-defined), freed once it ends.
    pub lane: Option<(String, u64)>,
    /// Finishes when the step's output stream has ended.
    pub(crate) pump: Option<tokio::task::JoinHandle<()>>,
}

/// Which stream a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// The daemon stopped or restarted while a step ran: the step's own result is unknown.
    #[error("the Docker daemon went away while the step ran ({detail}); its result is unknown")]
    DaemonLost { detail: String },
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

/// A terminal lent to [`Backend::shell`]: keystrokes in, screen out. Whoever made it keeps
/// the terminal in raw mode while it lives and restores it when it is dropped.
pub struct ShellIo {
    pub input: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    /// What the shell prints (the caller masks secrets on the way).
    pub output: Box<dyn std::io::Write + Send>,
    /// The terminal's size (columns, rows), and later sizes as the window changes.
    pub size: Option<(u16, u16)>,
    pub resized: Option<mpsc::Receiver<(u16, u16)>>,
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
    /// Opens an interactive shell for `step` on `io` and returns its exit code once it
    /// ends: in the step's image (`after`: `None`), or in what the stopped step container
    /// `after` left (its file system), with the step's environment, services, workspace
    /// and working directory. Everything it makes is removed before it returns.
    fn shell(
        &self,
        step: &StepSpec,
        after: Option<&StepHandle>,
        io: ShellIo,
    ) -> impl Future<Output = Result<i64, BackendError>> + Send;
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

/// The most files one step's artifacts may hold.
pub const MAX_ARTIFACT_FILES: usize = 1_000_000;

/// Unpacks the entries of `tar` (paths relative to the workspace after `rebase`) that match
/// one of `patterns` (or lie under a matching directory) into `dest`. Returns the files, and
/// the hard links whose target was not unpacked (the caller fetches those one by one);
/// `matched` says which patterns matched something.
///
/// Every write goes through `dest` (a [`Root`]): whatever names, `..`, links or hard links
/// the archive holds, the kernel keeps the writes inside it. On top of that, a link whose
/// target leaves the workspace is refused (so the artifact tree is safe to follow with any
/// tool), absolute links into the workspace become relative ones, and devices, FIFOs and
/// sockets are not unpacked at all.
pub fn extract_matching(
    tar: impl std::io::Read,
    rebase: &str,
    patterns: &[globset::GlobMatcher],
    dest: &Root,
    matched: &mut [bool],
    strip: &str,
) -> Result<(Vec<ArtifactFile>, Vec<String>), String> {
    let mut archive = tar::Archive::new(tar);
    let mut files = Vec::new();
    let mut unresolved = Vec::new();
    let refused = |rel: &str, target: &str| format!("`{rel}` is a link to `{target}`, outside the workspace: refused");
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(rel) = archive_rel(&raw, rebase, strip) else { continue };
        if !matches_any(patterns, &rel, matched) {
            continue;
        }
        if plain_components(Path::new(&rel)).is_err() {
            return Err(format!("`{rel}` leaves the workspace: refused"));
        }
        let kind = entry.header().entry_type();
        let link = entry.link_name_bytes().map(|t| String::from_utf8_lossy(&t).into_owned()).unwrap_or_default();
        if kind.is_hard_link() {
            // A hard link names another entry of the archive: link to it if it was kept.
            let Some(target_rel) = archive_rel(&link, rebase, strip) else {
                return Err(refused(&rel, &link));
            };
            if plain_components(Path::new(&target_rel)).is_err() {
                return Err(refused(&rel, &link));
            }
            match dest.kind(&target_rel) {
                Ok(Some((Kind::File, _))) => {
                    // Kept as a copy: the artifact files stay independent of each other.
                    let mut from = dest.open_file(&target_rel).map_err(|e| e.to_string())?;
                    let mode = from.metadata().map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
                    let mut to = dest.create_file(&rel, mode.unwrap_or(0o644)).map_err(|e| e.to_string())?;
                    let size = std::io::copy(&mut from, &mut to).map_err(|e| format!("`{rel}`: {e}"))?;
                    files.push(ArtifactFile { path: rel, size });
                }
                Ok(_) => unresolved.push(rel),
                Err(e) => return Err(e.to_string()),
            }
            continue;
        }
        if kind.is_symlink() {
            let base = Path::new(&rel).parent().unwrap_or(Path::new(""));
            let target = match link.strip_prefix(crate::plan::WORKSPACE) {
                // An absolute link into the workspace: relative, so it means the same here.
                Some(rest) if link.starts_with('/') && (rest.is_empty() || rest.starts_with('/')) => {
                    let inside = Path::new(rest.trim_start_matches('/'));
                    if escapes(inside) {
                        return Err(refused(&rel, &link));
                    }
                    relative_from(base, inside)
                }
                _ if link.starts_with('/') || link.is_empty() || escapes(&base.join(&link)) => {
                    return Err(refused(&rel, &link));
                }
                _ => std::path::PathBuf::from(&link),
            };
            dest.symlink(&target, &rel).map_err(|e| e.to_string())?;
            files.push(ArtifactFile { path: rel, size: 0 });
            continue;
        }
        if kind.is_dir() || !(kind.is_file() || kind == tar::EntryType::Continuous) {
            // Directories come with their files; devices, FIFOs and sockets are not kept.
            continue;
        }
        let size = entry.header().size().unwrap_or(0);
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let mut out = dest.create_file(&rel, mode).map_err(|e| e.to_string())?;
        std::io::copy(&mut entry, &mut out).map_err(|e| format!("`{rel}`: {e}"))?;
        if let Ok(mtime) = entry.header().mtime() {
            let _ = out.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(mtime));
        }
        files.push(ArtifactFile { path: rel, size });
    }
    Ok((files, unresolved))
}

/// An archive entry's path relative to the workspace: `strip` (a leading directory) taken
/// off, `rebase` put in front, no trailing `/`. `None` for entries outside `strip`.
fn archive_rel(raw: &str, rebase: &str, strip: &str) -> Option<String> {
    let raw = if strip.is_empty() {
        raw.to_string()
    } else {
        let rest = raw.strip_prefix(strip)?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        rest.trim_start_matches('/').to_string()
    };
    if raw.is_empty() {
        return None;
    }
    let rel = if rebase.is_empty() { raw } else { format!("{rebase}/{raw}") };
    // `a/./b`, `a//b`, `./a` and `a/.` are the files `a/b` and `a`: matched, written and
    // reported under that name. A leading `/` stays, to be refused.
    let lead = if rel.starts_with('/') { "/" } else { "" };
    let parts: Vec<&str> = rel.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    (!parts.is_empty()).then(|| format!("{lead}{}", parts.join("/")))
}

/// Whether `rel`, or a directory above it, matches one of `patterns` (each hit recorded).
fn matches_any(patterns: &[globset::GlobMatcher], rel: &str, matched: &mut [bool]) -> bool {
    let mut hit = false;
    for (i, m) in patterns.iter().enumerate() {
        let mut p = Path::new(rel);
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
    hit
}

/// The relative link from directory `base` to `target` (both relative to one root).
fn relative_from(base: &Path, target: &Path) -> std::path::PathBuf {
    let b: Vec<_> = base.components().collect();
    let t: Vec<_> = target.components().collect();
    let common = b.iter().zip(&t).take_while(|(x, y)| x == y).count();
    let mut out = std::path::PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
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
    // Written as the names it is matched against are (`archive_rel`): `./dist/*` is `dist/*`.
    let lead = if pattern.starts_with('/') { "/" } else { "" };
    let parts: Vec<&str> = pattern.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    globset::GlobBuilder::new(&format!("{lead}{}", parts.join("/")))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// One archive entry, its name (and link name) written raw, as a hostile archive has
    /// them: the tar crate's builder refuses `..` and absolute names.
    enum E<'a> {
        File(&'a str, &'a str),
        Link(&'a str, &'a str),
        Hard(&'a str, &'a str),
        Dir(&'a str),
        Char(&'a str),
        Fifo(&'a str),
    }

    fn archive(entries: &[E]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_old();
            let (name, link, data, kind): (&str, &str, &[u8], tar::EntryType) = match e {
                E::File(n, d) => (n, "", d.as_bytes(), tar::EntryType::Regular),
                E::Link(n, t) => (n, t, b"", tar::EntryType::Symlink),
                E::Hard(n, t) => (n, t, b"", tar::EntryType::Link),
                E::Dir(n) => (n, "", b"", tar::EntryType::Directory),
                E::Char(n) => (n, "", b"", tar::EntryType::Char),
                E::Fifo(n) => (n, "", b"", tar::EntryType::Fifo),
            };
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            h.set_entry_type(kind);
            h.set_mode(0o4755);
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    struct Unpacked {
        result: Result<(Vec<ArtifactFile>, Vec<String>), String>,
        dest: tempfile::TempDir,
        outside: tempfile::TempDir,
    }

    impl Unpacked {
        fn outside_is_untouched(&self) {
            let left: Vec<_> = std::fs::read_dir(self.outside.path()).unwrap().flatten().map(|e| e.path()).collect();
            assert!(left.is_empty(), "written outside: {left:?}");
            let parent = self.dest.path().parent().unwrap();
            for name in ["pwned", "etc"] {
                assert!(!parent.join(name).exists(), "{name} written beside the destination");
            }
        }
        fn err(&self) -> &str {
            self.result.as_ref().err().map(String::as_str).unwrap_or("")
        }
    }

    /// Unpacks `entries` with the pattern `**` (everything); `{OUT}` in names and links is
    /// a directory outside the destination.
    fn unpack(entries: &[E], patterns: &[&str]) -> Unpacked {
        let outside = tempfile::tempdir().unwrap();
        let dest = tempfile::tempdir().unwrap();
        let out = outside.path().display().to_string();
        let owned: Vec<(String, String, u8)> = entries
            .iter()
            .map(|e| {
                let (a, b, k) = match e {
                    E::File(n, d) => (n, *d, 0),
                    E::Link(n, t) => (n, *t, 1),
                    E::Hard(n, t) => (n, *t, 2),
                    E::Dir(n) => (n, "", 3),
                    E::Char(n) => (n, "", 4),
                    E::Fifo(n) => (n, "", 5),
                };
                (a.replace("{OUT}", &out), b.replace("{OUT}", &out), k)
            })
            .collect();
        let es: Vec<E> = owned
            .iter()
            .map(|(a, b, k)| match k {
                0 => E::File(a, b),
                1 => E::Link(a, b),
                2 => E::Hard(a, b),
                3 => E::Dir(a),
                4 => E::Char(a),
                _ => E::Fifo(a),
            })
            .collect();
        let bytes = archive(&es);
        let matchers: Vec<_> = patterns.iter().map(|p| artifact_matcher(p).unwrap()).collect();
        let mut matched = vec![false; matchers.len()];
        let root = Root::open(dest.path()).unwrap();
        let result = extract_matching(&bytes[..], "", &matchers, &root, &mut matched, "");
        Unpacked { result, dest, outside }
    }

    #[test]
    fn a_chain_of_dot_dot_links_cannot_carry_a_write_out() {
        // The reported attack: links that are each harmless on paper, then a file through them.
        let mut es = vec![E::Link("a/s", ".."), E::Link("a/t1", "s/..")];
        let names: Vec<(String, String)> = (2..=20).map(|i| (format!("a/t{i}"), format!("t{}/..", i - 1))).collect();
        es.extend(names.iter().map(|(n, t)| E::Link(n, t)));
        es.push(E::File("a/t20/pwned", "x"));
        let u = unpack(&es, &["**"]);
        assert!(u.result.is_err(), "{:?}", u.result);
        u.outside_is_untouched();
    }

    #[test]
    fn absolute_links_names_and_dot_dot_are_refused() {
        for (es, what) in [
            (vec![E::Link("x", "{OUT}"), E::File("x/pwned", "x")], "absolute link, then a file through it"),
            (vec![E::Link("x", "../../.."), E::File("x/pwned", "x")], "climbing link"),
            (vec![E::File("../pwned", "x")], "`..` in a name"),
            (vec![E::File("a/../../pwned", "x")], "`..` inside a name"),
            (vec![E::File("{OUT}/pwned", "x")], "absolute name"),
            (vec![E::Hard("h", "../../etc/passwd")], "hard link out"),
            (vec![E::Hard("h", "{OUT}/x")], "hard link to an absolute path"),
        ] {
            let u = unpack(&es, &["**"]);
            assert!(u.err().contains("refused") || u.err().contains("out"), "{what}: {:?}", u.result);
            u.outside_is_untouched();
        }
    }

    #[test]
    fn a_directory_made_by_one_pattern_is_not_a_way_out_for_another() {
        // The first pattern keeps a link to a directory (inside on paper); the second
        // pattern's file would land through it.
        let u = unpack(&[E::Link("a/d", "../.."), E::File("a/d/pwned", "x")], &["a/*", "a/d/pwned"]);
        assert!(u.result.is_err(), "{:?}", u.result);
        u.outside_is_untouched();
    }

    #[test]
    fn a_hard_link_to_a_link_does_not_read_through_it() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s3cret").unwrap();
        let target = outside.path().join("secret").display().to_string();
        // The symlink is refused (absolute, outside): nothing is copied from it.
        let u = unpack(&[E::Link("l", &target), E::Hard("h", "l")], &["h"]);
        let (files, unresolved) = u.result.as_ref().expect("the link itself is not matched");
        assert!(files.is_empty(), "{files:?}");
        assert_eq!(unresolved, &["h"]);
        assert!(!u.dest.path().join("h").exists());
    }

    #[test]
    fn devices_and_fifos_are_not_made_and_modes_lose_setuid() {
        let u = unpack(&[E::Char("dev"), E::Fifo("fifo"), E::File("bin/tool", "#!/bin/sh\n")], &["**"]);
        let (files, _) = u.result.as_ref().unwrap();
        assert_eq!(files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["bin/tool"]);
        assert!(!u.dest.path().join("dev").exists() && !u.dest.path().join("fifo").exists());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(u.dest.path().join("bin/tool")).unwrap().permissions(),
        );
        assert_eq!(mode & 0o7777, 0o755);
    }

    #[test]
    fn links_inside_are_kept_and_absolute_workspace_links_become_relative() {
        let u = unpack(
            &[
                E::File("site/sub/page.html", "hi"),
                E::Link("site/index.html", "sub/page.html"),
                E::Link("site/abs.html", "/workspace/site/sub/page.html"),
                E::Hard("site/copy.html", "site/sub/page.html"),
            ],
            &["site/"],
        );
        let (files, unresolved) = u.result.as_ref().unwrap();
        assert!(unresolved.is_empty());
        let names: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(names, ["site/sub/page.html", "site/index.html", "site/abs.html", "site/copy.html"]);
        let d = u.dest.path();
        assert_eq!(std::fs::read_link(d.join("site/abs.html")).unwrap(), Path::new("sub/page.html"));
        assert_eq!(std::fs::read_to_string(d.join("site/index.html")).unwrap(), "hi");
        assert_eq!(std::fs::read_to_string(d.join("site/copy.html")).unwrap(), "hi");
    }

    #[test]
    fn names_with_dot_components_are_reported_as_written() {
        // Found by the `extract` fuzz target: `a/.` was written as `a` and reported as `a/.`.
        let u = unpack(&[E::File("a/.", "x"), E::File("./b//c/.", "y"), E::Link("./l/", "b/./c")], &["**"]);
        let (files, _) = u.result.as_ref().unwrap();
        assert_eq!(files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["a", "b/c", "l"]);
        assert_eq!(std::fs::read_to_string(u.dest.path().join("a")).unwrap(), "x");
        assert_eq!(std::fs::read_to_string(u.dest.path().join("l")).unwrap(), "y");
        assert_eq!(archive_rel("/x/./y", "", ""), Some("/x/y".to_string()), "an absolute name stays one");
        assert_eq!(archive_rel("workspace/./", "", "workspace"), None);
        assert_eq!(archive_rel("./x", "a", ""), Some("a/x".to_string()));
    }

    #[test]
    fn patterns_are_written_as_names_are() {
        // `./a/*` matches what the archive calls `./a/s`, reported as `a/s`.
        let u = unpack(&[E::File("./a/s", "x"), E::File("./b/t", "y")], &["./a/*", "b//t/"]);
        let (files, _) = u.result.as_ref().unwrap();
        assert_eq!(files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["a/s", "b/t"]);
    }

    #[test]
    fn relative_links_between_directories() {
        assert_eq!(relative_from(Path::new("a/b"), Path::new("a/c/f")), Path::new("../c/f"));
        assert_eq!(relative_from(Path::new(""), Path::new("x")), Path::new("x"));
        assert_eq!(relative_from(Path::new("a"), Path::new("a")), Path::new("."));
    }
}
