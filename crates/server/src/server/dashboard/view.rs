//! One run as the pages show it: its steps, from the database rows and its `plan.json`.

use std::path::Path;

use crate::server::AppState;
use crate::server::db::{Run, RunState, StepRow, StepState, now};
use crate::server::worker::run_dir;

// ---------------------------------------------------------------------------------------
// One run

/// A step as the run page shows it: from the database, or from the plan when it has not
/// started (pending) or was skipped when planned.
pub(super) struct Step {
    pub(super) name: String,
    pub(super) stage: Option<String>,
    pub(super) status: StepState,
    pub(super) started: Option<f64>,
    pub(super) duration: Option<f64>,
    pub(super) note: Option<String>,
    pub(super) attempts: i64,
    pub(super) exit_code: Option<i64>,
}

pub(super) struct RunView {
    pub(super) run: Run,
    pub(super) steps: Vec<Step>,
    /// Planned steps skipped, with why.
    pub(super) skipped: Vec<(String, String)>,
    pub(super) error: String,
    pub(super) artifacts: Vec<(String, String, u64)>,
    /// The run's deployments: (the step's key in the file, the environment).
    pub(super) deploys: Vec<(String, String)>,
    /// Its deployment gates, with their votes.
    pub(super) gates: Vec<crate::server::db::GateRow>,
}

pub(super) async fn load(st: &AppState, id: i64) -> Result<Option<RunView>, crate::server::db::DbError> {
    let Some(run) = st.db.run(id).await? else { return Ok(None) };
    let rows = st.db.steps(id).await?;
    let dir = run_dir(&st.cfg, id);
    let d2 = dir.clone();
    let (plan, error, artifacts) = tokio::task::spawn_blocking(move || {
        let plan: PlanFile =
            std::fs::read(d2.join("plan.json")).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        let error = std::fs::read_to_string(d2.join("error.txt")).unwrap_or_default();
        (plan, error, list_artifacts(&d2))
    })
    .await
    .unwrap_or_default();
    let now_secs = now();
    let elapsed = run.started_at.map(|s| (now_secs - s) as f64);
    let f = crate::server::db::DeploymentFilter { run: Some(id), limit: 500, ..Default::default() };
    let deploys = st.db.deployments(f).await?.into_iter().map(|d| (d.step, d.environment)).collect();
    let gates = st.db.gates(id).await?;
    Ok(Some(RunView { deploys, gates, ..merge(run, rows, &plan, error, artifacts, elapsed) }))
}

/// What the pages read of a run's `plan.json` (`orch plan --format json`'s schema).
#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct PlanFile {
    #[serde(default)]
    pub(super) steps: Vec<PlannedStep>,
    #[serde(default)]
    pub(super) skipped: Vec<SkippedStep>,
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct PlannedStep {
    pub(super) name: String,
    pub(super) stage: Option<String>,
    #[serde(default)]
    pub(super) needs: Vec<String>,
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct SkippedStep {
    pub(super) name: String,
    pub(super) stage: Option<String>,
    pub(super) reason: String,
}

pub(super) fn merge(
    run: Run,
    rows: Vec<StepRow>,
    plan: &PlanFile,
    error: String,
    artifacts: Vec<(String, String, u64)>,
    elapsed: Option<f64>,
) -> RunView {
    let running = run.status == RunState::Running;
    let mut steps: Vec<Step> = rows
        .into_iter()
        .map(|r| {
            let duration = match (r.status, r.duration, r.started, elapsed) {
                (StepState::Running, _, Some(s), Some(e)) if running => Some((e - s).max(0.0)),
                (_, d, _, _) => d,
            };
            Step {
                name: r.name,
                stage: r.stage,
                // A step row left running (or waiting for approval) by a run that ended was
                // stopped with it.
                status: match r.status {
                    StepState::Running | StepState::Pending if !running => StepState::Cancelled,
                    s => s,
                },
                started: r.started,
                duration,
                note: r.message,
                attempts: r.attempts,
                exit_code: r.exit_code,
            }
        })
        .collect();
    for p in &plan.steps {
        if let Some(s) = steps.iter_mut().find(|s| s.name == p.name) {
            if s.stage.is_none() {
                s.stage = p.stage.clone();
            }
        } else if !p.name.is_empty() {
            let status = if run.status.is_active() { StepState::Pending } else { StepState::Cancelled };
            let note = (!p.needs.is_empty()).then(|| format!("waits for {}", p.needs.join(", ")));
            steps.push(Step {
                name: p.name.clone(),
                stage: p.stage.clone(),
                status,
                started: None,
                duration: None,
                note,
                attempts: 0,
                exit_code: None,
            });
        }
    }
    // A running step's start is recorded when it ends: until then, it started when the
    // last step it needs ended (or with the run).
    let ends: std::collections::HashMap<String, f64> =
        steps.iter().filter_map(|s| Some((s.name.clone(), s.started? + s.duration?))).collect();
    for s in steps.iter_mut().filter(|s| s.status == StepState::Running && s.started.is_none()) {
        let needs = plan.steps.iter().find(|p| p.name == s.name).map(|p| &p.needs);
        let start = needs.map(|n| n.iter().filter_map(|v| ends.get(v)).fold(0.0_f64, |a, b| a.max(*b))).unwrap_or(0.0);
        s.started = Some(start);
        s.duration = elapsed.map(|e| (e - start).max(0.0));
    }
    let skipped: Vec<(String, String)> = plan.skipped.iter().map(|s| (s.name.clone(), s.reason.clone())).collect();
    for sk in &plan.skipped {
        if !steps.iter().any(|s| s.name == sk.name) {
            steps.push(Step {
                name: sk.name.clone(),
                stage: sk.stage.clone(),
                status: StepState::Skipped,
                started: None,
                duration: None,
                note: Some(sk.reason.clone()),
                attempts: 0,
                exit_code: None,
            });
        }
    }
    // Started steps by start time, then the rest in plan order.
    let order = |n: &str| plan.steps.iter().position(|p| p.name == n).unwrap_or(usize::MAX);
    steps.sort_by(|a, b| {
        let ka = (a.started.is_none(), a.started.unwrap_or(0.0), order(&a.name));
        let kb = (b.started.is_none(), b.started.unwrap_or(0.0), order(&b.name));
        ka.partial_cmp(&kb).unwrap_or(std::cmp::Ordering::Equal)
    });
    RunView { run, steps, skipped, error, artifacts, deploys: Vec::new(), gates: Vec::new() }
}

/// `(step dir, relative path, size)` of every kept artifact.
pub(super) fn list_artifacts(run_dir: &Path) -> Vec<(String, String, u64)> {
    crate::server::api::artifact_files(run_dir)
        .into_iter()
        .flat_map(|(step, files)| files.into_iter().map(move |(rel, size)| (step.clone(), rel, size)))
        .collect()
}
