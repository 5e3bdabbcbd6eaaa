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
use std::path::PathBuf;
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
    /// An image that exists locally, used to populate the workspace.
    pub helper_image: String,
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
}

/// A started step attempt.
#[derive(Debug)]
pub struct StepHandle {
    pub id: String,
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
    #[error("image `{image}` is not available locally; orch does not pull images: build it first (see runners/images)")]
    ImageMissing { image: String },
    #[error("image `{image}` has no /bin/sh, which orch needs to run commands")]
    NoShell { image: String },
    #[error("docker: {0}")]
    Api(String),
    #[error("workspace: {0}")]
    Workspace(String),
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
