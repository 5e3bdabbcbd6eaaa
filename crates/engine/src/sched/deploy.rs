//! Deployments: a step with an `environment` is one deployment, however many matrix
//! variants it has. It starts when its first variant starts and ends when its last one
//! ends; a step none of whose variants started deployed nothing and has no events.

use std::collections::HashMap;

use tokio::sync::mpsc;

use super::events::{DeploymentStatus, RunEvent, StepStatus, StepSummary};
use crate::plan::Plan;

struct Deployment {
    environment: String,
    url: Option<String>,
    /// Variants not ended yet.
    left: usize,
    started: bool,
    status: DeploymentStatus,
}

/// The deployments of a run, fed by the dispatcher as steps start and end.
pub(super) struct Deployments {
    /// By the step's key in the file (a matrix step's base name).
    by_step: HashMap<String, Deployment>,
}

impl Deployments {
    pub(super) fn new(plan: &Plan) -> Deployments {
        let mut by_step: HashMap<String, Deployment> = HashMap::new();
        for s in &plan.steps {
            let Some(env) = &s.environment else { continue };
            by_step
                .entry(s.step.clone())
                .or_insert_with(|| Deployment {
                    environment: env.name.clone(),
                    url: env.url.clone(),
                    left: 0,
                    started: false,
                    status: DeploymentStatus::Success,
                })
                .left += 1;
        }
        Deployments { by_step }
    }

    /// A variant of `step` (the file's key) is about to run.
    pub(super) async fn started(&mut self, step: &str, events: &mpsc::Sender<RunEvent>) {
        let Some(d) = self.by_step.get_mut(step) else { return };
        if d.started {
            return;
        }
        d.started = true;
        let _ = events
            .send(RunEvent::DeploymentStarted {
                step: step.to_string(),
                environment: d.environment.clone(),
                url: d.url.clone(),
            })
            .await;
    }

    /// A variant of `step` ended (ran, was skipped or was kept from an earlier run).
    pub(super) async fn ended(&mut self, step: &str, summary: &StepSummary, events: &mpsc::Sender<RunEvent>) {
        let Some(d) = self.by_step.get_mut(step) else { return };
        d.left = d.left.saturating_sub(1);
        let this = match summary.status {
            StepStatus::Passed | StepStatus::Skipped => DeploymentStatus::Success,
            StepStatus::Failed | StepStatus::TimedOut => DeploymentStatus::Failure,
            StepStatus::Cancelled => DeploymentStatus::Cancelled,
            StepStatus::Error => DeploymentStatus::Error,
        };
        d.status = d.status.max(this);
        if d.left == 0 && d.started {
            let _ = events
                .send(RunEvent::DeploymentFinished {
                    step: step.to_string(),
                    environment: d.environment.clone(),
                    url: d.url.clone(),
                    status: d.status,
                })
                .await;
        }
    }
}
