//! The scheduler: executes a [`Plan`] on a [`Backend`]. Steps start as soon as what they
//! need is done, up to `jobs` at once; a failure skips its dependents (unless they run on
//! failure); timeouts, retries and cancellation are handled here, once, for every backend.
//! Everything that happens goes out as [`RunEvent`]s.
//!
//! Architecture invariant: whatever happens (failure, timeout, cancellation, a panicking
//! step task), `execute` calls `Backend::destroy` for the run before it returns.

pub mod events;
pub mod logs;

use std::collections::HashMap;
use std::io::BufWriter;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::exec::{Backend, BackendError, LogChunk, RunSpec, StepHandle, StepSpec, Workspace, sanitize, script};
use crate::plan::{Plan, PlannedStep};
pub use events::*;
use logs::{Masker, StepLines};

/// How long a step may take to stop after SIGTERM before it is killed.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);
/// Cleanup gets its own time budget: it runs even when the run was cancelled.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The two levels of stopping: `graceful` (first Ctrl-C: stop steps, SIGTERM then SIGKILL
/// after the grace period) and `kill` (second Ctrl-C: SIGKILL now).
#[derive(Debug, Clone, Default)]
pub struct Cancel {
    pub graceful: CancellationToken,
    pub kill: CancellationToken,
}

pub struct RunOptions {
    pub run_id: String,
    /// Steps running at once.
    pub jobs: usize,
    /// Secret values by name; each step gets the ones it names.
    pub secrets: HashMap<String, String>,
    /// Where step logs are written (`<dir>/<step>.log`); `None`: not written.
    pub log_dir: Option<PathBuf>,
    pub workspace: Workspace,
    pub grace: Duration,
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub status: RunStatus,
    pub steps: Vec<StepSummary>,
    pub duration: Duration,
}

/// Runs the plan. Never fails: problems become step or run statuses and events.
pub async fn execute<B: Backend>(
    backend: Arc<B>,
    plan: &Plan,
    opts: RunOptions,
    events: mpsc::Sender<RunEvent>,
    cancel: Cancel,
) -> RunResult {
    let started = Instant::now();
    let _ = events
        .send(RunEvent::RunStarted {
            run_id: opts.run_id.clone(),
            steps: plan
                .steps
                .iter()
                .map(|s| StepInfo { name: s.name.clone(), stage: s.stage.clone(), needs: s.needs.clone() })
                .collect(),
            skipped: plan.skipped.clone(),
            jobs: opts.jobs,
        })
        .await;
    let mut summaries = Vec::new();
    let mut status = RunStatus::Success;
    if !plan.steps.is_empty() {
        let prepared = backend
            .prepare(&RunSpec {
                run_id: opts.run_id.clone(),
                workspace: opts.workspace.clone(),
                helper_image: plan.steps[0].image.clone(),
            })
            .await;
        match prepared {
            Ok(()) => {
                summaries = run_steps(&backend, plan, &opts, &events, &cancel, started).await;
                status = overall(&summaries, cancel.graceful.is_cancelled());
            }
            Err(e) => {
                let msg = match e {
                    BackendError::ImageMissing { image } => format!(
                        "cannot prepare the workspace: image `{image}` (of step `{}`) is not available locally; orch does not pull images: build it first (see runners/images)",
                        plan.steps[0].name
                    ),
                    e => format!("cannot prepare the workspace: {e}"),
                };
                let _ = events.send(RunEvent::RunMessage { level: Level::Error, message: msg.clone() }).await;
                status = RunStatus::Error;
                for s in &plan.steps {
                    summaries.push(StepSummary {
                        step: s.name.clone(),
                        status: StepStatus::Skipped,
                        exit_code: None,
                        attempts: 0,
                        allowed_failure: false,
                        message: Some("the run could not start".into()),
                        started: Duration::ZERO,
                        duration: Duration::ZERO,
                        blocks_dependents: true,
                    });
                }
            }
        }
    }
    match tokio::time::timeout(CLEANUP_TIMEOUT, backend.destroy(&opts.run_id)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = events
                .send(RunEvent::RunMessage {
                    level: Level::Warning,
                    message: format!("cleanup failed: {e} (run `orch gc`)"),
                })
                .await;
        }
        Err(_) => {
            let _ = events
                .send(RunEvent::RunMessage {
                    level: Level::Warning,
                    message: "cleanup timed out (run `orch gc`)".into(),
                })
                .await;
        }
    }
    let duration = started.elapsed();
    let _ = events.send(RunEvent::RunFinished { status, duration, steps: summaries.clone() }).await;
    RunResult { status, steps: summaries, duration }
}

fn overall(steps: &[StepSummary], cancelled: bool) -> RunStatus {
    if cancelled {
        return RunStatus::Cancelled;
    }
    let counts = |st: StepStatus| steps.iter().any(|s| s.status == st && !s.allowed_failure);
    if counts(StepStatus::Error) {
        RunStatus::Error
    } else if counts(StepStatus::Failed) || counts(StepStatus::TimedOut) {
        RunStatus::Failure
    } else {
        RunStatus::Success
    }
}

enum State {
    Pending,
    Running,
    Done(StepSummary),
}

async fn run_steps<B: Backend>(
    backend: &Arc<B>,
    plan: &Plan,
    opts: &RunOptions,
    events: &mpsc::Sender<RunEvent>,
    cancel: &Cancel,
    run_start: Instant,
) -> Vec<StepSummary> {
    let n = plan.steps.len();
    let index: HashMap<&str, usize> = plan.steps.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    let deps: Vec<Vec<usize>> =
        plan.steps.iter().map(|s| s.needs.iter().filter_map(|d| index.get(d.as_str()).copied()).collect()).collect();
    let mut state: Vec<State> = (0..n).map(|_| State::Pending).collect();
    let mut tasks: JoinSet<(usize, StepSummary)> = JoinSet::new();
    let mut task_index: HashMap<tokio::task::Id, usize> = HashMap::new();
    let mut running = 0;
    let jobs = opts.jobs.max(1);
    loop {
        // Start or skip every step whose needs are done, in plan order.
        let mut progressed = true;
        while progressed {
            progressed = false;
            for i in 0..n {
                if !matches!(state[i], State::Pending) {
                    continue;
                }
                let done: Option<Vec<&StepSummary>> = deps[i]
                    .iter()
                    .map(|&d| match &state[d] {
                        State::Done(s) => Some(s),
                        _ => None,
                    })
                    .collect();
                let Some(done) = done else { continue };
                let step = &plan.steps[i];
                let skip = if cancel.graceful.is_cancelled() {
                    Some("the run was cancelled".to_string())
                } else {
                    let failed: Vec<&str> =
                        done.iter().filter(|s| s.blocks_dependents).map(|s| s.step.as_str()).collect();
                    match (failed.is_empty(), step.status.on_success, step.status.on_failure) {
                        (true, true, _) | (false, _, true) => None,
                        (true, false, _) => Some("runs only on failure, and nothing it needs failed".to_string()),
                        (false, _, false) => Some(format!(
                            "needs {}, which did not pass",
                            failed.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ")
                        )),
                    }
                };
                if let Some(reason) = skip {
                    let summary = StepSummary {
                        step: step.name.clone(),
                        status: StepStatus::Skipped,
                        exit_code: None,
                        attempts: 0,
                        allowed_failure: false,
                        message: Some(reason),
                        started: run_start.elapsed(),
                        duration: Duration::ZERO,
                        // A step skipped because something failed passes the failure on.
                        blocks_dependents: !done.iter().all(|s| !s.blocks_dependents) || cancel.graceful.is_cancelled(),
                    };
                    let _ = events.send(RunEvent::StepFinished(summary.clone())).await;
                    state[i] = State::Done(summary);
                    progressed = true;
                    continue;
                }
                if running >= jobs {
                    continue;
                }
                let unit = Unit {
                    backend: backend.clone(),
                    step: step.clone(),
                    run_id: opts.run_id.clone(),
                    secrets: step
                        .secrets
                        .iter()
                        .filter_map(|k| opts.secrets.get(k).map(|v| (k.clone(), v.clone())))
                        .collect(),
                    log_dir: opts.log_dir.clone(),
                    bind: match &opts.workspace {
                        Workspace::Bind(p) => Some(p.clone()),
                        _ => None,
                    },
                    grace: opts.grace,
                    events: events.clone(),
                    cancel: cancel.clone(),
                    run_start,
                };
                let handle = tasks.spawn(async move { (i, unit.run().await) });
                task_index.insert(handle.id(), i);
                state[i] = State::Running;
                running += 1;
                progressed = true;
            }
        }
        if running == 0 {
            break;
        }
        let Some(joined) = tasks.join_next_with_id().await else { break };
        let (i, summary) = match joined {
            Ok((_, (i, s))) => (i, s),
            Err(e) => {
                // A panic in a step task: the step errs, the run goes on, and the run's
                // cleanup removes whatever the task left.
                let Some(&i) = task_index.get(&e.id()) else { continue };
                let s = StepSummary {
                    step: plan.steps[i].name.clone(),
                    status: StepStatus::Error,
                    exit_code: None,
                    attempts: 1,
                    allowed_failure: false,
                    message: Some(format!("internal error: the step's task failed: {e}")),
                    started: Duration::ZERO,
                    duration: Duration::ZERO,
                    blocks_dependents: true,
                };
                let _ = events.send(RunEvent::StepFinished(s.clone())).await;
                (i, s)
            }
        };
        state[i] = State::Done(summary);
        running -= 1;
    }
    state
        .into_iter()
        .zip(&plan.steps)
        .map(|(s, step)| match s {
            State::Done(s) => s,
            // Unreachable in a DAG; reported rather than panicking.
            _ => StepSummary {
                step: step.name.clone(),
                status: StepStatus::Skipped,
                exit_code: None,
                attempts: 0,
                allowed_failure: false,
                message: Some("never became ready".into()),
                started: Duration::ZERO,
                duration: Duration::ZERO,
                blocks_dependents: true,
            },
        })
        .collect()
}

/// One step, from its first attempt to its last, on its own task.
struct Unit<B> {
    backend: Arc<B>,
    step: PlannedStep,
    run_id: String,
    secrets: Vec<(String, String)>,
    log_dir: Option<PathBuf>,
    bind: Option<PathBuf>,
    grace: Duration,
    events: mpsc::Sender<RunEvent>,
    cancel: Cancel,
    run_start: Instant,
}

enum Ended {
    Exit(i64, bool),
    TimedOut,
    Cancelled,
    Error(String),
}

impl<B: Backend> Unit<B> {
    async fn run(self) -> StepSummary {
        let started = self.run_start.elapsed();
        let t0 = Instant::now();
        let attempts = self.step.retry.count + 1;
        let mut env: Vec<(String, String)> = self.step.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        env.extend(self.secrets.iter().cloned());
        let masker = Masker::new(self.secrets.iter().map(|(_, v)| v.as_str()));
        let missing: Vec<&String> =
            self.step.secrets.iter().filter(|s| !self.secrets.iter().any(|(k, _)| k == *s)).collect();
        let mut summary = StepSummary {
            step: self.step.name.clone(),
            status: StepStatus::Error,
            exit_code: None,
            attempts: 0,
            allowed_failure: false,
            message: None,
            started,
            duration: Duration::ZERO,
            blocks_dependents: true,
        };
        if !missing.is_empty() {
            summary.message = Some(format!(
                "secret {} is not set",
                missing.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
            ));
        } else {
            for attempt in 1..=attempts {
                summary.attempts = attempt;
                let _ =
                    self.events.send(RunEvent::StepStarted { step: self.step.name.clone(), attempt, attempts }).await;
                let ended = self.attempt(attempt, &env, &masker).await;
                match ended {
                    Ended::Exit(0, _) => {
                        summary.status = StepStatus::Passed;
                        summary.exit_code = Some(0);
                    }
                    Ended::Exit(code, oom) => {
                        summary.status = StepStatus::Failed;
                        summary.exit_code = Some(code);
                        summary.message = Some(if oom {
                            format!("killed: out of memory (exit code {code})")
                        } else {
                            format!("exit code {code}")
                        });
                        let retryable =
                            self.step.retry.on_exit_codes.is_empty() || self.step.retry.on_exit_codes.contains(&code);
                        if attempt < attempts && retryable && !self.cancel.graceful.is_cancelled() {
                            let _ = self
                                .events
                                .send(RunEvent::StepRetrying { step: self.step.name.clone(), attempt, exit_code: code })
                                .await;
                            continue;
                        }
                    }
                    Ended::TimedOut => {
                        summary.status = StepStatus::TimedOut;
                        summary.message = self
                            .step
                            .timeout
                            .map(|t| format!("timed out after {}", crate::pipeline::format_duration(t)));
                    }
                    Ended::Cancelled => {
                        summary.status = StepStatus::Cancelled;
                        summary.message = Some("cancelled".into());
                    }
                    Ended::Error(m) => {
                        summary.status = StepStatus::Error;
                        summary.message = Some(m);
                    }
                }
                break;
            }
        }
        summary.duration = t0.elapsed();
        let failed = summary.status != StepStatus::Passed;
        summary.allowed_failure = failed && self.step.allow_failure && summary.status != StepStatus::Cancelled;
        summary.blocks_dependents = failed && !summary.allowed_failure;
        let _ = self.events.send(RunEvent::StepFinished(summary.clone())).await;
        summary
    }

    /// One attempt: start, stream logs, wait with the timeout and cancellation, remove.
    async fn attempt(&self, attempt: u32, env: &[(String, String)], masker: &Masker) -> Ended {
        let spec = StepSpec {
            run_id: self.run_id.clone(),
            step: self.step.name.clone(),
            attempt,
            image: self.step.image.clone(),
            script: script(&self.step.commands),
            env: env.to_vec(),
            workdir: self.step.workdir.clone(),
            bind: self.bind.clone(),
        };
        let (tx, rx) = mpsc::channel::<LogChunk>(64);
        let log_task = tokio::spawn(pump_logs(
            rx,
            masker.clone(),
            self.log_dir.as_ref().map(|d| d.join(format!("{}.log", sanitize(&self.step.name)))),
            attempt,
            self.step.name.clone(),
            self.events.clone(),
        ));
        let mut handle: StepHandle = match self.backend.start(&spec, tx).await {
            Ok(h) => h,
            Err(e) => {
                let _ = log_task.await;
                return Ended::Error(e.to_string());
            }
        };
        let deadline = self.step.timeout.map(|t| tokio::time::Instant::now() + t);
        let timeout = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let ended = tokio::select! {
            r = self.backend.wait(&mut handle) => match r {
                Ok(exit) => Ended::Exit(exit.code, exit.oom_killed),
                Err(e) => Ended::Error(e.to_string()),
            },
            _ = timeout => {
                let _ = self.backend.stop(&handle, Duration::ZERO).await;
                Ended::TimedOut
            }
            _ = self.cancel.graceful.cancelled() => {
                tokio::select! {
                    _ = self.backend.stop(&handle, self.grace) => {}
                    _ = self.cancel.kill.cancelled() => { let _ = self.backend.stop(&handle, Duration::ZERO).await; }
                }
                Ended::Cancelled
            }
        };
        if !matches!(ended, Ended::Exit(..)) {
            // Drain what the stopped container still had to say (bounded: it is stopped).
            let _ = tokio::time::timeout(Duration::from_secs(10), self.backend.wait(&mut handle)).await;
        }
        let _ = self.backend.remove(&handle).await;
        drop(handle);
        let _ = log_task.await;
        ended
    }
}

async fn pump_logs(
    mut rx: mpsc::Receiver<LogChunk>,
    masker: Masker,
    file: Option<PathBuf>,
    attempt: u32,
    step: String,
    events: mpsc::Sender<RunEvent>,
) {
    use std::io::Write;
    let mut file = file.and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
            .map(|f| BufWriter::with_capacity(64 * 1024, f))
    });
    if attempt > 1 {
        if let Some(f) = file.as_mut() {
            let _ = writeln!(f, "--- attempt {attempt} ---");
        }
    }
    let mut lines = StepLines::default();
    let mut pending: Vec<(crate::exec::Stream, Vec<u8>)> = Vec::new();
    while let Some(chunk) = rx.recv().await {
        lines.splitter(chunk.stream).push(&chunk.data, &masker, |l| pending.push((chunk.stream, l)));
        for (stream, line) in pending.drain(..) {
            if let Some(f) = file.as_mut() {
                let _ = logs::write_line(f, &line);
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            let _ = events.send(RunEvent::StepLog { step: step.clone(), stream, line }).await;
        }
    }
    for stream in [crate::exec::Stream::Stdout, crate::exec::Stream::Stderr] {
        lines.splitter(stream).finish(&masker, |l| pending.push((stream, l)));
    }
    for (stream, line) in pending.drain(..) {
        if let Some(f) = file.as_mut() {
            let _ = logs::write_line(f, &line);
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        let _ = events.send(RunEvent::StepLog { step: step.clone(), stream, line }).await;
    }
    if let Some(f) = file.as_mut() {
        let _ = f.flush();
    }
}
