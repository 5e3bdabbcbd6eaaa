//! The recorder of a server run: the one consumer of its events (log files, the live feed,
//! step rows, deployment rows, per-step GitHub updates and deployments, the
//! running-containers gauge).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::AppState;
use super::db::{StepRow, StepState};
use crate::github::{Conclusion, DeployState, RunRef, Update};
use crate::sched::events::DeploymentStatus;
use crate::sched::{GateOutcome, RunEvent, StepStatus, StepSummary};

/// Consumes a run's events: the step log files, the live feed of followers, the step rows,
/// the per-step GitHub updates and the running-containers gauge. Lines are flushed to their
/// files before followers hear of them, and a step's row is written before its end is
/// announced.
/// Returns why log lines were lost, if they were (the run is then an error: its record is
/// not whole).
pub(super) async fn record(
    st: Arc<AppState>,
    rr: RunRef,
    logs: PathBuf,
    mut rx: mpsc::Receiver<RunEvent>,
) -> Option<String> {
    use super::live::Item;
    let run_id = rr.id;
    let feed = st.live.start(run_id);
    let mut files = crate::report::logfile::LogFiles::new(logs);
    // Step start offsets, recorded when a step starts (the scheduler's own clock starts a
    // moment later; the final row replaces this with its value).
    let t0 = std::time::Instant::now();
    // Steps with a container up, for `orch_containers_running`.
    let mut up = std::collections::HashSet::new();
    // Deployments started and not ended: by step, (the row, the environment's URL).
    let mut deploying = std::collections::HashMap::new();
    // Who approved each environment's gate in this run: its deployments record them.
    let mut approved: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut items = Vec::new();
        // What is there now, as one batch: one flush, one broadcast.
        while let Some(ev) = next.take() {
            if let Some(w) = files.event(&ev) {
                items.push(Item::Lines { step: w.step, text: w.text.into(), end: w.end });
            }
            match ev {
                RunEvent::StepStarted { step, attempt, .. } => {
                    if up.insert(step.clone()) {
                        st.counters.containers_running.fetch_add(1, Ordering::Relaxed);
                    }
                    let row = StepRow {
                        name: step,
                        stage: None,
                        status: StepState::Running,
                        exit_code: None,
                        attempts: attempt as i64,
                        started: Some(t0.elapsed().as_secs_f64()),
                        duration: None,
                        message: None,
                    };
                    let _ = st.db.upsert_step(run_id, row).await;
                }
                RunEvent::StepFinished(s) => {
                    if up.remove(&s.step) {
                        st.counters.containers_running.fetch_sub(1, Ordering::Relaxed);
                    }
                    let row = step_row(&s);
                    let status = row.status;
                    let _ = st.db.upsert_step(run_id, row).await;
                    st.report
                        .owe(Update::Step {
                            run: rr.clone(),
                            step: s.step.clone(),
                            conclusion: step_conclusion(&s),
                            description: step_line(&s),
                        })
                        .await;
                    items.push(Item::StepDone { step: s.step, status });
                }
                RunEvent::DeploymentStarted { step, environment, url } => {
                    let by = approved.get(&environment).cloned();
                    match st.db.start_deployment(run_id, step.clone(), environment.clone(), url.clone(), by).await {
                        Ok(Some(id)) => {
                            deploying.insert(step.clone(), (id, url.clone(), environment.clone()));
                            if st.cfg.github_deployments {
                                let made = Update::Deployment { run: rr.clone(), deployment: id, step, environment };
                                st.report.owe(made).await;
                                let state = deploy_state(&rr, id, url, DeployState::InProgress, "deploying".into());
                                st.report.owe(state).await;
                            }
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!(run_id, "cannot record a deployment: {e}"),
                    }
                }
                RunEvent::DeploymentFinished { step, status, .. } => {
                    if let Some((id, url, environment)) = deploying.remove(&step) {
                        end_deployment(&st, &rr, id, url, &environment, status).await;
                    }
                }
                RunEvent::GateWaiting { environment, steps, approvers, required, .. } => {
                    let who = approvers.join(", ");
                    for name in steps {
                        let row = waiting_step(name, format!("waiting for approval ({required} of {who})"));
                        let _ = st.db.upsert_step(run_id, row).await;
                    }
                    let description = format!("{environment} waits for approval: {required} of {who}");
                    st.report.owe(Update::Waiting { run: rr.clone(), description }).await;
                }
                RunEvent::GateNote { environment, steps, note, .. } => {
                    for name in steps {
                        let _ = st.db.upsert_step(run_id, waiting_step(name, note.clone())).await;
                    }
                    let description = format!("{environment}: {note}");
                    st.report.owe(Update::Waiting { run: rr.clone(), description }).await;
                }
                RunEvent::GateDecided { environment, outcome, reason, by, .. } => {
                    if outcome == GateOutcome::Approved && !by.is_empty() {
                        approved.insert(environment.clone(), by.join(", "));
                    }
                    // A gate that ended without a vote deciding it: closed with its reason.
                    let status = match outcome {
                        GateOutcome::Failed => Some("timed_out"),
                        GateOutcome::Cancelled => Some("cancelled"),
                        GateOutcome::Approved | GateOutcome::Refused => None,
                    };
                    if let Some(status) = status {
                        let reason = reason.unwrap_or_default();
                        let _ = st.db.close_gate(run_id, environment, status.into(), reason).await;
                    }
                }
                _ => {}
            }
            next = if items.len() < 1024 { rx.try_recv().ok() } else { None };
        }
        files.flush();
        feed.send(items);
    }
    st.counters.containers_running.fetch_sub(up.len() as i64, Ordering::Relaxed);
    // The run ended (or its executor was lost) before these deployments did.
    for (_, (id, url, environment)) in deploying {
        end_deployment(&st, &rr, id, url, &environment, DeploymentStatus::Error).await;
    }
    files.flush();
    files.lost().map(str::to_string)
}

/// A step that waits for its deployment's gate, and what for.
fn waiting_step(name: String, message: String) -> StepRow {
    StepRow {
        name,
        stage: None,
        status: StepState::Pending,
        exit_code: None,
        attempts: 0,
        started: None,
        duration: None,
        message: Some(message),
    }
}

fn step_row(s: &StepSummary) -> StepRow {
    StepRow {
        name: s.step.clone(),
        stage: None,
        status: s.status.into(),
        exit_code: s.exit_code,
        attempts: s.attempts as i64,
        started: Some(s.started.as_secs_f64()),
        duration: Some(s.duration.as_secs_f64()),
        message: s.message.clone(),
    }
}

fn step_conclusion(s: &StepSummary) -> Conclusion {
    match s.status {
        StepStatus::Passed => Conclusion::Success,
        StepStatus::Skipped => Conclusion::Skipped,
        _ if s.allowed_failure => Conclusion::Success,
        StepStatus::TimedOut => Conclusion::TimedOut,
        StepStatus::Cancelled => Conclusion::Cancelled,
        StepStatus::Failed => Conclusion::Failure,
        StepStatus::Error => Conclusion::Error,
    }
}

fn step_line(s: &StepSummary) -> String {
    let d = crate::fmt::duration(s.duration);
    match (&s.status, &s.message) {
        (StepStatus::Passed, _) => format!("passed in {d}"),
        (StepStatus::Skipped, Some(m)) => format!("skipped: {m}"),
        (st, Some(m)) => format!("{}: {m}", st.label()),
        (st, None) => st.label().to_string(),
    }
}

fn deploy_state(rr: &RunRef, id: i64, url: Option<String>, state: DeployState, description: String) -> Update {
    Update::DeploymentState {
        run: rr.clone(),
        deployment: id,
        github_id: None,
        state,
        environment_url: url,
        description,
    }
}

/// Records a deployment's end and owes GitHub its state (and, for a success, the previous
/// live deployment's end: `inactive`).
async fn end_deployment(
    st: &AppState,
    rr: &RunRef,
    id: i64,
    url: Option<String>,
    environment: &str,
    status: DeploymentStatus,
) {
    let (row, state, description) = match status {
        DeploymentStatus::Success => ("success", DeployState::Success, "deployed"),
        DeploymentStatus::Failure => ("failure", DeployState::Failure, "the deploy step failed"),
        // GitHub has no cancelled state.
        DeploymentStatus::Cancelled => ("cancelled", DeployState::Error, "cancelled"),
        DeploymentStatus::Error => ("error", DeployState::Error, "the deploy step could not run to its end"),
    };
    if let Err(e) = st.db.finish_deployment(id, row).await {
        tracing::warn!(run = rr.id, "cannot record a deployment's end: {e}");
    }
    // Only a success has an environment a person can open.
    let url = url.filter(|_| state == DeployState::Success);
    if st.cfg.github_deployments {
        st.report.owe(deploy_state(rr, id, url, state, description.into())).await;
        if state == DeployState::Success {
            inactivate_previous(st, rr, environment, id).await;
        }
    }
}

/// The deployment live in `environment` before `id` succeeded there is no longer: GitHub
/// hears `inactive` for it (it does so by itself only outside production environments).
async fn inactivate_previous(st: &AppState, rr: &RunRef, environment: &str, id: i64) {
    let f = super::db::DeploymentFilter {
        repo: Some(rr.repo.clone()),
        environment: Some(environment.to_string()),
        run: None,
        limit: 50,
    };
    let previous = match st.db.deployments(f).await {
        Ok(rows) => rows.into_iter().find(|d| d.id < id && d.status == "success"),
        Err(e) => {
            tracing::warn!(deployment = id, "cannot read the previous deployment: {e}");
            return;
        }
    };
    // Without its GitHub id (never made on GitHub) there is nothing to mark.
    let Some((prev, github_id)) = previous.and_then(|d| d.github_id.map(|g| (d, g))) else { return };
    let Ok(Some(run)) = st.db.run(prev.run).await else { return };
    let update = Update::DeploymentState {
        run: super::worker::run_ref(&run),
        deployment: prev.id,
        github_id: Some(github_id as u64),
        state: DeployState::Inactive,
        environment_url: None,
        description: format!("superseded by run {}", rr.id),
    };
    st.report.owe(update).await;
}
