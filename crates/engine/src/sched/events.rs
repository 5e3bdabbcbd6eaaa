//! What happens during a run, as a stream of events: the only interface between the
//! scheduler and whoever shows or stores a run (the terminal, JSON lines, log files, the
//! server's recorder). The JSON form of these events is `orch ci --json`'s documented,
//! stable schema, and it reads back (`Deserialize`): the stream can cross a process
//! boundary, in order, as an agent on another machine will send it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::exec::Stream;
use crate::plan::SkippedStep;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RunEvent {
    RunStarted {
        run_id: String,
        steps: Vec<StepInfo>,
        skipped: Vec<SkippedStep>,
        jobs: usize,
    },
    /// An attempt of a step started (its container is running).
    StepStarted {
        step: String,
        attempt: u32,
        attempts: u32,
    },
    /// Lines of a step's output, secrets masked: `text` is one or more whole lines, each
    /// ending with `\n` (what one read of the output finished; `orch ci --json` writes
    /// them as `step_log` objects, a line each).
    StepOutput {
        step: String,
        stream: Stream,
        text: String,
    },
    /// An attempt failed with a retryable exit code; another follows.
    StepRetrying {
        step: String,
        attempt: u32,
        exit_code: i64,
    },
    StepFinished(StepSummary),
    /// A cache lookup before a step: `hit` false is a miss.
    CacheRestored {
        step: String,
        key: String,
        hit: bool,
        fallback: bool,
        size: u64,
    },
    /// A cache entry written after a step passed.
    CacheSaved {
        step: String,
        key: String,
        size: u64,
    },
    /// Files kept from a step that passed.
    ArtifactsCollected {
        step: String,
        dir: String,
        files: Vec<crate::exec::ArtifactFile>,
    },
    /// A step with an `environment` started deploying: its first variant is starting.
    DeploymentStarted {
        /// The step's key in the file (a matrix step's base name).
        step: String,
        environment: String,
        url: Option<String>,
    },
    /// A deployment ended: the step's last variant ended.
    DeploymentFinished {
        step: String,
        environment: String,
        url: Option<String>,
        status: DeploymentStatus,
    },
    /// A deployment waits for approval before it starts (the rest of the run goes on).
    GateWaiting {
        /// The step (its key in the file) that asked first; one approval covers every
        /// step of the run that deploys to the environment.
        step: String,
        environment: String,
        /// Every planned step (by its name: matrix variants one by one) that deploys to
        /// the environment and waits with it.
        #[serde(default)]
        steps: Vec<String>,
        approvers: Vec<String>,
        required: usize,
        /// Seconds the gate waits before it fails.
        #[serde(serialize_with = "secs", deserialize_with = "from_secs")]
        timeout: Duration,
    },
    /// What a deployment's gate waits for, as its gatekeeper says (e.g. its turn: another
    /// run deploys to the environment); said again only when it changes.
    GateNote {
        step: String,
        environment: String,
        /// The steps that wait with it, as in `GateWaiting`.
        #[serde(default)]
        steps: Vec<String>,
        note: String,
    },
    /// A gate was decided: approved (by whom), refused (the steps are skipped), failed
    /// (rejected, timed out: the steps fail) or cancelled with the run.
    GateDecided {
        step: String,
        environment: String,
        outcome: GateOutcome,
        by: Vec<String>,
        reason: Option<String>,
    },
    /// Something that concerns the whole run (e.g. a cleanup problem).
    RunMessage {
        level: Level,
        message: String,
    },
    RunFinished {
        status: RunStatus,
        #[serde(serialize_with = "secs", deserialize_with = "from_secs")]
        duration: Duration,
        steps: Vec<StepSummary>,
    },
}

/// How a deployment ended, worst variant first: `error` over `cancelled` over `failure`
/// over `success`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentStatus {
    Success,
    Failure,
    Cancelled,
    Error,
}

/// How a deployment gate was decided.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GateOutcome {
    Approved,
    Refused,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Info,
    Warning,
    Error,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepInfo {
    pub name: String,
    pub stage: String,
    pub needs: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Passed,
    Failed,
    TimedOut,
    Cancelled,
    /// The step could not run: missing image, daemon gone, ...
    Error,
    Skipped,
}

impl StepStatus {
    /// How people read it (`timed out`); the wire spelling is serde's (`timed_out`).
    pub fn label(self) -> &'static str {
        match self {
            StepStatus::Passed => "passed",
            StepStatus::Failed => "failed",
            StepStatus::TimedOut => "timed out",
            StepStatus::Cancelled => "cancelled",
            StepStatus::Error => "error",
            StepStatus::Skipped => "skipped",
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepSummary {
    pub step: String,
    pub status: StepStatus,
    pub exit_code: Option<i64>,
    /// Attempts made (0 for a skipped step).
    pub attempts: u32,
    /// The step failed but `allow_failure` let the run go on.
    pub allowed_failure: bool,
    /// Why it was skipped, or what went wrong.
    pub message: Option<String>,
    /// When the step started, from the start of the run.
    #[serde(serialize_with = "secs", deserialize_with = "from_secs")]
    pub started: Duration,
    #[serde(serialize_with = "secs", deserialize_with = "from_secs")]
    pub duration: Duration,
    /// Artifacts kept from the step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<crate::exec::ArtifactFile>,
    /// Whether steps that need this one see it as failed: the scheduler's own bookkeeping,
    /// not part of the stream (it reads back as false).
    #[serde(skip)]
    pub blocks_dependents: bool,
}

impl StepSummary {
    /// A summary of `step` with `status` and `message`, and nothing else yet: no exit code,
    /// no attempt, no time, no artifacts; it blocks what needs it when it did not pass.
    pub fn new(step: impl Into<String>, status: StepStatus, message: Option<String>) -> StepSummary {
        StepSummary {
            step: step.into(),
            status,
            exit_code: None,
            attempts: 0,
            allowed_failure: false,
            message,
            started: Duration::ZERO,
            duration: Duration::ZERO,
            artifacts: Vec::new(),
            blocks_dependents: status != StepStatus::Passed,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Success,
    Failure,
    Cancelled,
    /// Infrastructure: the run could not be carried out.
    Error,
}

impl RunStatus {
    pub fn exit_code(self) -> u8 {
        use crate::exit;
        match self {
            RunStatus::Success => exit::SUCCESS,
            RunStatus::Failure => exit::FAILED,
            RunStatus::Cancelled => exit::INTERRUPTED,
            RunStatus::Error => exit::INFRA,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Success => "success",
            RunStatus::Failure => "failure",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Error => "error",
        }
    }
}

/// `3 passed, 1 failed (unit), 2 skipped`: a run's steps in one line. With `names`, the
/// steps that did not pass are named.
pub fn tally(steps: &[StepSummary], names: bool) -> String {
    let mut parts = vec![format!("{} passed", steps.iter().filter(|s| s.status == StepStatus::Passed).count())];
    for (st, word) in [
        (StepStatus::Failed, "failed"),
        (StepStatus::TimedOut, "timed out"),
        (StepStatus::Error, "errored"),
        (StepStatus::Cancelled, "cancelled"),
        (StepStatus::Skipped, "skipped"),
    ] {
        let which: Vec<&str> = steps.iter().filter(|s| s.status == st).map(|s| s.step.as_str()).collect();
        match (which.len(), names && st != StepStatus::Skipped) {
            (0, _) => {}
            (n, true) => parts.push(format!("{n} {word} ({})", which.join(", "))),
            (n, false) => parts.push(format!("{n} {word}")),
        }
    }
    parts.join(", ")
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

fn from_secs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = f64::deserialize(d)?;
    Duration::try_from_secs_f64(s).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `orch ci --json` writes reads back as the same events: the stream can be sent
    /// to another process (an agent's to its server) and consumed there as here.
    #[test]
    fn events_read_back_from_their_json() {
        let summary = StepSummary {
            exit_code: Some(3),
            attempts: 2,
            started: Duration::from_millis(1500),
            duration: Duration::from_millis(2250),
            artifacts: vec![crate::exec::ArtifactFile { path: "dist/app".into(), size: 12 }],
            blocks_dependents: false,
            ..StepSummary::new("t[v=a b]", StepStatus::TimedOut, Some("timed out after 1s".into()))
        };
        let events = vec![
            RunEvent::RunStarted {
                run_id: "r".into(),
                steps: vec![StepInfo { name: "a".into(), stage: "build".into(), needs: vec![] }],
                skipped: vec![SkippedStep {
                    name: "d".into(),
                    step: "d".into(),
                    stage: "deploy".into(),
                    reason: "branch `x` is not `main`".into(),
                }],
                jobs: 2,
            },
            RunEvent::StepStarted { step: "a".into(), attempt: 1, attempts: 2 },
            RunEvent::StepOutput { step: "a".into(), stream: Stream::Stderr, text: "héllo \u{1b}[31m\n\nx\n".into() },
            RunEvent::StepRetrying { step: "a".into(), attempt: 1, exit_code: 137 },
            RunEvent::CacheRestored { step: "a".into(), key: "k".into(), hit: true, fallback: false, size: 9 },
            RunEvent::CacheSaved { step: "a".into(), key: "k".into(), size: 9 },
            RunEvent::ArtifactsCollected { step: "a".into(), dir: "/x".into(), files: summary.artifacts.clone() },
            RunEvent::RunMessage { level: Level::Warning, message: "m".into() },
            RunEvent::StepFinished(summary.clone()),
            RunEvent::RunFinished {
                status: RunStatus::Failure,
                duration: Duration::from_millis(4000),
                steps: vec![summary],
            },
        ];
        for ev in events {
            let text = serde_json::to_string(&ev).unwrap();
            let back: RunEvent = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(back, ev, "{text}");
        }
    }
}
