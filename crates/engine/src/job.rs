//! A job: one attempt of a run, as the server hands it to whoever executes it (its own
//! worker, or an `orch agent` on another machine). The server has fetched the commit,
//! planned the pipeline and read the secrets; the job carries the facts, and [`prepare`]
//! turns them and the checkout into the same planned run on every executor.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cache::CacheStore;
use crate::exec::{Isolation, Workspace};
use crate::plan::{Context, Selection};
use crate::sched::{CacheSettings, StepSummary};
use crate::setup::{self, Prepared, Secrets, Settings, Setup, SetupError};

/// What an agent and the server agree a job means. Bumped when an older agent would run a
/// newer job wrongly; the server gives no job to an agent that says less (2: a job carries
/// the trusted rules of its environments, which an agent must plan with).
pub const PROTOCOL: u32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Job {
    /// The server's run id.
    pub run: i64,
    /// The attempt this job is: a report for another attempt is refused.
    pub attempt: i64,
    /// The id Docker objects are labelled with.
    pub docker_run_id: String,
    pub context: Context,
    /// The secret values the steps name; `None`: withheld on purpose (a pull request from a
    /// fork), so the steps that name one error.
    pub secrets: Option<HashMap<String, String>>,
    /// Steps at once.
    pub jobs: usize,
    /// Between SIGTERM and SIGKILL of a cancelled step.
    pub grace_ms: u64,
    /// Output kept per step (0: no limit).
    pub log_limit: u64,
    pub isolation: Isolation,
    /// Steps kept from an earlier run (a re-run of the failed steps).
    pub reuse: HashMap<String, StepSummary>,
    /// The cache scopes the run reads (the first is written), in the executor's own store.
    pub cache_scopes: Vec<String>,
    /// The labels an executor needs (the plan's `runs_on`).
    pub labels: Vec<String>,
    /// How often an agent reports at least, events or not (its lease's heartbeat).
    #[serde(default = "default_heartbeat")]
    pub heartbeat_ms: u64,
    /// The environment rules the server trusts in place of the checkout's own (a run not
    /// on the default branch): every executor plans with them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environments: Option<crate::pipeline::model::TrustedEnvironments>,
}

fn default_heartbeat() -> u64 {
    5000
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("no .orch.yml in the checkout")]
    NoPipeline,
    #[error("{0}")]
    Config(#[from] crate::pipeline::ConfigError),
    #[error("{0}")]
    Setup(#[from] SetupError),
    #[error("{0}")]
    Git(#[from] crate::git::GitError),
}

/// Plans the job's run from the checkout at `source` (its `.orch.yml`, its files for the
/// workspace), with its run directory at `run_dir` and caches in `cache`.
pub fn prepare(job: &Job, source: &Path, run_dir: &Path, cache: Option<Arc<CacheStore>>) -> Result<Prepared, JobError> {
    let file = source.join(".orch.yml");
    if !file.is_file() {
        return Err(JobError::NoPipeline);
    }
    let mut pipeline = crate::pipeline::load_file(&file)?;
    if let Some(trusted) = &job.environments {
        pipeline.govern_environments(trusted);
    }
    let files = crate::git::workspace_files(source)?;
    Ok(setup::prepare(Setup {
        pipeline: &pipeline,
        context: job.context.clone(),
        selection: Selection::default(),
        env: Vec::new(),
        secrets: match &job.secrets {
            Some(values) => Secrets::Values(values.clone()),
            None => Secrets::Withheld,
        },
        settings: Settings {
            jobs: job.jobs,
            grace: Duration::from_millis(job.grace_ms),
            log_limit: job.log_limit,
            isolation: job.isolation.clone(),
        },
        run_dir: run_dir.to_path_buf(),
        docker_run_id: job.docker_run_id.clone(),
        workspace: Workspace::Copy { root: source.to_path_buf(), files, base: None },
        cache: cache.map(|store| CacheSettings { store, scopes: job.cache_scopes.clone() }),
        source_root: Some(source.to_path_buf()),
        reuse: job.reuse.clone(),
    })?)
}

/// Whether an executor with `have` labels may take a job that needs `need`.
pub fn fits(need: &[String], have: &[String]) -> bool {
    need.iter().all(|l| have.contains(l))
}

/// Labels from a comma-separated list (`ORCH_LABELS=linux,big`): trimmed, empty ones
/// dropped, sorted, each once.
pub fn parse_labels(list: &[String]) -> Vec<String> {
    let mut v: Vec<String> =
        list.iter().flat_map(|s| s.split(',')).map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_needs_all_its_labels() {
        let have = parse_labels(&["linux, big".into(), "gpu".into(), "linux".into()]);
        assert_eq!(have, ["big", "gpu", "linux"]);
        assert!(fits(&[], &[]));
        assert!(fits(&["linux".into(), "gpu".into()], &have));
        assert!(!fits(&["arm".into()], &have));
        assert!(!fits(&["linux".into()], &[]));
    }
}
