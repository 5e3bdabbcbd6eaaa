//! Deployment gates: before a run's first deployment to an environment starts, the run's
//! [`Gatekeeper`] (lent by the face: the terminal, the server) decides whether it may go.
//! One decision covers every step of the run that deploys to that environment. The wait
//! runs on its own task, so the rest of the run goes on meanwhile; the scheduler applies
//! the approval timeout and the wait timer, and tells the gatekeeper when the run's
//! deployments to the environment ended.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::events::{DeploymentStatus, GateOutcome, Level, RunEvent};
use super::{Cancel, StepStatus, StepSummary};
use crate::pipeline::{EnvironmentRules, Event};
use crate::plan::Plan;

/// What a gatekeeper is asked: may this run deploy to this environment now?
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GateRequest {
    /// The run's id (`ORCH_RUN_ID`).
    pub run_id: String,
    /// The step (its key in the file) whose deployment asked first.
    pub step: String,
    pub environment: String,
    pub approvers: Vec<String>,
    /// How many of `approvers` must approve; 0: no approval is needed.
    pub required: usize,
    #[serde(with = "secs")]
    pub timeout: Duration,
    pub order: crate::pipeline::DeployOrder,
    pub commit: String,
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub event: Event,
    /// An explicit redeploy or rollback: an older commit may deploy.
    pub redeploy: bool,
}

mod secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        <u64 as serde::Deserialize>::deserialize(d).map(Duration::from_secs)
    }
}

impl GateRequest {
    /// The request for `environment`, first asked for by `step`.
    pub fn new(plan: &Plan, step: &str, environment: &str, rules: &EnvironmentRules, redeploy: bool) -> Self {
        let ctx = &plan.context;
        GateRequest {
            run_id: ctx.run_id.clone(),
            step: step.to_string(),
            environment: environment.to_string(),
            approvers: rules.approval.as_ref().map(|a| a.approvers.clone()).unwrap_or_default(),
            required: rules.approval.as_ref().map_or(0, |a| a.required),
            timeout: rules.approval.as_ref().map_or(crate::pipeline::DEFAULT_APPROVAL_TIMEOUT, |a| a.timeout),
            order: rules.order,
            commit: ctx.commit.clone(),
            branch: ctx.branch.clone(),
            tag: ctx.tag.clone(),
            event: ctx.event(),
            redeploy,
        }
    }

    pub fn needs_approval(&self) -> bool {
        self.required > 0
    }
}

/// What a gatekeeper decided.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum GateDecision {
    /// The deployment may start; `by`: who approved (empty when no approval was needed).
    Go { by: Vec<String> },
    /// Not this run (e.g. superseded by a newer commit): its steps for the environment are
    /// skipped with the reason.
    Refuse { reason: String },
    /// Rejected, timed out, or no one can approve: its steps fail with the reason.
    Fail { reason: String, by: Vec<String> },
}

/// Decides a run's deployments. Lent by the face through `RunOptions::gate`.
pub trait Gatekeeper: Send + Sync {
    /// May the deployment start? May wait (for approvals, for the environment to free),
    /// saying why through `notes`. The future is dropped when the run is cancelled or the
    /// approval times out.
    fn decide(&self, req: GateRequest, notes: GateNotes) -> BoxFuture<'static, GateDecision>;
    /// The run's deployments to the environment ended (after a `Go`), with the worst
    /// status: a lock can be released, the live commit recorded.
    fn finished(&self, req: GateRequest, status: DeploymentStatus) -> BoxFuture<'static, ()>;
}

/// What a gatekeeper says while a deployment waits ("waiting for its turn: run 12 deploys
/// there"): sent as `GateNote` events, each new text once.
#[derive(Clone)]
pub struct GateNotes {
    events: mpsc::Sender<RunEvent>,
    step: String,
    environment: String,
    steps: Vec<String>,
    last: Arc<std::sync::Mutex<Option<String>>>,
}

impl GateNotes {
    /// Notes of the gate `step` asked for `environment`, which `steps` wait for.
    pub fn new(events: mpsc::Sender<RunEvent>, step: &str, environment: &str, steps: Vec<String>) -> GateNotes {
        GateNotes { events, step: step.to_string(), environment: environment.to_string(), steps, last: Arc::default() }
    }

    /// Says `text` unless it was the last thing said. Does not wait: a full event channel
    /// loses the note (it is said when the wait changes again).
    pub fn say(&self, text: &str) {
        // A poisoned lock only means a panic elsewhere while saying; the value is whole.
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_deref() == Some(text) {
            return;
        }
        let note = RunEvent::GateNote {
            step: self.step.clone(),
            environment: self.environment.clone(),
            steps: self.steps.clone(),
            note: text.to_string(),
        };
        if self.events.try_send(note).is_ok() {
            *last = Some(text.to_string());
        }
    }
}

/// Where a run's gate for one environment stands.
pub(super) enum Gate {
    Waiting,
    Go,
    Refused(String),
    Failed(String),
}

/// A run's gates, by environment, and what is left of its deployments to each.
pub(super) struct Gates {
    by_env: std::collections::HashMap<String, (Gate, GateRequest)>,
    /// Variants to deploy to the environment not ended yet, and the worst status.
    left: std::collections::HashMap<String, (usize, DeploymentStatus)>,
}

impl Gates {
    pub(super) fn new(plan: &Plan) -> Gates {
        let mut left = std::collections::HashMap::new();
        for s in &plan.steps {
            if let Some(e) = &s.environment {
                left.entry(e.name.clone()).or_insert((0, DeploymentStatus::Success)).0 += 1;
            }
        }
        Gates { by_env: Default::default(), left }
    }

    pub(super) fn get(&self, env: &str) -> Option<&Gate> {
        self.by_env.get(env).map(|(g, _)| g)
    }

    pub(super) fn asked(&mut self, req: GateRequest) {
        self.by_env.insert(req.environment.clone(), (Gate::Waiting, req));
    }

    pub(super) fn decided(&mut self, env: &str, decision: GateDecision) {
        if let Some((g, _)) = self.by_env.get_mut(env) {
            *g = match decision {
                GateDecision::Go { .. } => Gate::Go,
                GateDecision::Refuse { reason } => Gate::Refused(reason),
                GateDecision::Fail { reason, .. } => Gate::Failed(reason),
            };
        }
    }

    /// A variant deploying to `env` ended; when it was the last one and the gate let it go,
    /// the gatekeeper is told.
    pub(super) async fn ended(&mut self, env: &str, summary: &StepSummary, gatekeeper: Option<&Arc<dyn Gatekeeper>>) {
        let Some((left, worst)) = self.left.get_mut(env) else { return };
        *left = left.saturating_sub(1);
        let this = match summary.status {
            StepStatus::Passed | StepStatus::Skipped => DeploymentStatus::Success,
            StepStatus::Failed | StepStatus::TimedOut => DeploymentStatus::Failure,
            StepStatus::Cancelled => DeploymentStatus::Cancelled,
            StepStatus::Error => DeploymentStatus::Error,
        };
        *worst = (*worst).max(this);
        if *left > 0 {
            return;
        }
        if let (Some(g), Some((Gate::Go, req))) = (gatekeeper, self.by_env.get(env)) {
            g.finished(req.clone(), *worst).await;
        }
    }
}

/// The wait for one gate, on its own task: ask (with the approval timeout), then the wait
/// timer; cancellation ends either. Sends `GateWaiting`/`GateDecided` when approval is
/// needed, and `GateDecided` for any refusal.
pub(super) async fn wait(
    gatekeeper: Option<Arc<dyn Gatekeeper>>,
    req: GateRequest,
    steps: Vec<String>,
    wait: Option<Duration>,
    events: mpsc::Sender<RunEvent>,
    cancel: Cancel,
) -> GateDecision {
    let (step, environment) = (req.step.clone(), req.environment.clone());
    let notes = GateNotes::new(events.clone(), &step, &environment, steps.clone());
    if req.needs_approval() {
        let _ = events
            .send(RunEvent::GateWaiting {
                step: step.clone(),
                environment: environment.clone(),
                steps,
                approvers: req.approvers.clone(),
                required: req.required,
                timeout: req.timeout,
            })
            .await;
    }
    let asked = req.needs_approval();
    let timeout = req.timeout;
    let decide = async {
        match &gatekeeper {
            Some(g) if asked => match tokio::time::timeout(timeout, g.decide(req, notes)).await {
                Ok(d) => d,
                Err(_) => GateDecision::Fail {
                    reason: format!(
                        "environment `{environment}`: no approval within {} (approval.timeout)",
                        crate::pipeline::format_duration(timeout)
                    ),
                    by: Vec::new(),
                },
            },
            Some(g) => g.decide(req, notes).await,
            None if asked => GateDecision::Fail {
                reason: format!("environment `{environment}` needs approval, and this runner has no one to ask"),
                by: Vec::new(),
            },
            None => GateDecision::Go { by: Vec::new() },
        }
    };
    let decision = tokio::select! {
        d = decide => d,
        _ = cancel.graceful.cancelled() => {
            if asked {
                let _ = events.send(RunEvent::GateDecided {
                    step, environment,
                    outcome: GateOutcome::Cancelled,
                    by: Vec::new(),
                    reason: Some("the run was cancelled".into()),
                }).await;
            }
            return GateDecision::Fail { reason: "the run was cancelled".into(), by: Vec::new() };
        }
    };
    let (outcome, by, reason) = match &decision {
        GateDecision::Go { by } => (GateOutcome::Approved, by.clone(), None),
        GateDecision::Refuse { reason } => (GateOutcome::Refused, Vec::new(), Some(reason.clone())),
        GateDecision::Fail { reason, by } => (GateOutcome::Failed, by.clone(), Some(reason.clone())),
    };
    if asked || outcome != GateOutcome::Approved {
        let _ =
            events.send(RunEvent::GateDecided { step, environment: environment.clone(), outcome, by, reason }).await;
    }
    if let (GateDecision::Go { .. }, Some(w)) = (&decision, wait) {
        let message = format!(
            "environment `{environment}`: waiting {} (its wait timer) before deploying",
            crate::pipeline::format_duration(w)
        );
        let _ = events.send(RunEvent::RunMessage { level: Level::Info, message }).await;
        tokio::select! {
            _ = tokio::time::sleep(w) => {}
            _ = cancel.graceful.cancelled() => {
                return GateDecision::Fail { reason: "the run was cancelled".into(), by: Vec::new() };
            }
        }
    }
    decision
}
