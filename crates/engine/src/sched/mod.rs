//! The scheduler: executes a [`Plan`] on a [`Backend`]. Steps start as soon as what they
//! need is done, up to `jobs` at once; a failure skips its dependents (unless they run on
//! failure); timeouts, retries and cancellation are handled here, once, for every backend.
//! Everything that happens goes out as [`RunEvent`]s.
//!
//! Architecture invariant: whatever happens (failure, timeout, cancellation, a panicking
//! step task), `execute` calls `Backend::destroy` for the run before it returns.

mod deploy;
pub mod events;
pub mod gate;
pub mod logs;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cache::{CacheStore, CachedPath};
use crate::exec::{
    Backend, LogChunk, Restore, RunSpec, ServiceSpec, StepHandle, StepSpec, Workspace, container_path, script,
};
use crate::plan::{Plan, PlannedStep};
pub use events::*;
pub use gate::{GateDecision, GateNotes, GateRequest, Gatekeeper};
use logs::{Masker, StepLines};

/// The output of one step kept by default (log file and events).
pub const DEFAULT_LOG_LIMIT: u64 = 100 << 20;

/// `100M`, `1G`, `none`: a log limit in bytes (0: none).
pub fn parse_log_limit(s: &str) -> Result<u64, String> {
    if matches!(s.trim().to_ascii_lowercase().as_str(), "none" | "0" | "unlimited") {
        return Ok(0);
    }
    crate::cache::parse_size(s)
        .filter(|n| *n >= 1 << 20)
        .ok_or_else(|| format!("a log limit is a size of at least 1M (`100M`, `1G`) or `none`, got `{s}`"))
}

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
    pub workspace: Workspace,
    pub grace: Duration,
    /// The cache store and the scopes this run reads (the first is the one it writes).
    pub cache: Option<CacheSettings>,
    /// The source tree on the host, for `${hash:FILE}` in cache keys.
    pub source_root: Option<PathBuf>,
    /// Where artifacts are kept (`<dir>/<step>/...`); `None`: artifacts are not collected.
    pub artifact_dir: Option<PathBuf>,
    /// What step containers are allowed.
    pub isolation: crate::exec::Isolation,
    /// Bytes of a step's output kept (log file and events); past it a notice, and the step
    /// goes on unrecorded. 0: no limit.
    pub log_limit: u64,
    /// Steps treated as already passed (a re-run of the failed steps keeps these): they are
    /// not started, their `StepFinished` says `Passed` with the summary's message. A step
    /// whose needs are not all kept runs (or is skipped) as usual.
    pub reuse: HashMap<String, StepSummary>,
    /// `orch ci --shell`: the one interactive shell the run may open.
    pub shell: Option<Arc<Shell>>,
    /// Who decides whether a deployment may start (approvals, one at a time). `None`: every
    /// deployment that needs no approval goes, one that does fails.
    pub gate: Option<Arc<dyn Gatekeeper>>,
    /// An explicit redeploy or rollback run: a gatekeeper lets an older commit deploy.
    pub redeploy: bool,
}

#[derive(Clone)]
pub struct CacheSettings {
    pub store: Arc<CacheStore>,
    /// Read in order; the first is written. See `cache_scopes`.
    pub scopes: Vec<String>,
}

/// The scopes a run's caches live in: its own (the branch, pull request or tag), then the
/// default branch's, which every run may read but only default-branch runs write.
pub fn cache_scopes(ctx: &crate::plan::Context, default_branch: &str) -> Vec<String> {
    use crate::pipeline::Event;
    let own = match (ctx.event(), &ctx.pr, &ctx.tag, &ctx.branch) {
        (Event::PullRequest, Some(n), _, _) => format!("pr:{n}"),
        (Event::PullRequest, None, _, b) => format!("pr:{}", b.as_deref().unwrap_or("")),
        (Event::Tag, _, Some(t), _) => format!("tag:{t}"),
        (_, _, _, Some(b)) => format!("branch:{b}"),
        _ => "detached".to_string(),
    };
    let default = format!("branch:{default_branch}");
    if own == default { vec![own] } else { vec![own, default] }
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
            jobs: opts.jobs.max(1),
        })
        .await;
    for name in crate::secrets::too_short(&opts.secrets) {
        let message = format!(
            "secret `{name}` is shorter than {} characters: too short to mask, it shows in logs as it is",
            crate::secrets::MIN_MASKED
        );
        let _ = events.send(RunEvent::RunMessage { level: Level::Warning, message }).await;
    }
    let mut summaries = Vec::new();
    let mut status = RunStatus::Success;
    let removals = Removals::default();
    if !plan.steps.is_empty() {
        let prepared = backend
            .prepare(&RunSpec {
                run_id: opts.run_id.clone(),
                workspace: opts.workspace.clone(),
                block_host: opts.isolation.block_host,
                lane_image: lane_image(plan),
            })
            .await;
        match prepared {
            Ok(()) => {
                summaries = run_steps(&backend, plan, &opts, &events, &cancel, started, &removals).await;
                status = overall(&summaries, cancel.graceful.is_cancelled());
            }
            Err(e) => {
                let msg = format!("cannot prepare the workspace: {e}");
                let _ = events.send(RunEvent::RunMessage { level: Level::Error, message: msg.clone() }).await;
                status = RunStatus::Error;
                for s in &plan.steps {
                    let why = Some("the run could not start".into());
                    summaries.push(StepSummary::new(&s.name, StepStatus::Skipped, why));
                }
            }
        }
    }
    let cleanup = async {
        removals.wait().await;
        backend.destroy(&opts.run_id).await
    };
    match tokio::time::timeout(CLEANUP_TIMEOUT, cleanup).await {
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

/// The image of the first step to run, when steps without services follow one another:
/// they can share a network lane, one after the other, instead of each paying for its own.
fn lane_image(plan: &Plan) -> Option<String> {
    let chained = plan.steps.iter().any(|s| s.services.is_empty() && !s.needs.is_empty());
    let first = plan.steps.iter().find(|s| s.needs.is_empty() && s.services.is_empty())?;
    chained.then(|| first.image.clone())
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
    removals: &Removals,
) -> Vec<StepSummary> {
    let n = plan.steps.len();
    let index: HashMap<&str, usize> = plan.steps.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    let deps: Vec<Vec<usize>> =
        plan.steps.iter().map(|s| s.needs.iter().filter_map(|d| index.get(d.as_str()).copied()).collect()).collect();
    let ancestors = ancestors(&deps);
    let all_secrets: Arc<Vec<String>> = Arc::new(opts.secrets.values().cloned().collect());
    let mut state: Vec<State> = (0..n).map(|_| State::Pending).collect();
    let mut reused = vec![false; n];
    let mut tasks: JoinSet<(usize, StepSummary)> = JoinSet::new();
    let mut task_index: HashMap<tokio::task::Id, usize> = HashMap::new();
    let mut running = 0;
    let mut deployments = deploy::Deployments::new(plan);
    let mut gates = gate::Gates::new(plan);
    let mut gate_tasks: JoinSet<(String, GateDecision)> = JoinSet::new();
    let mut gate_index: HashMap<tokio::task::Id, String> = HashMap::new();
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
                if deps[i].iter().any(|&d| !matches!(state[d], State::Done(_))) {
                    continue;
                }
                let step = &plan.steps[i];
                let skip = if cancel.graceful.is_cancelled() {
                    Some("the run was cancelled".to_string())
                } else {
                    // Failure is judged over everything upstream, not just direct needs: a
                    // cleanup step that passed does not hide the failure before it.
                    let failed: Vec<&str> = ancestors[i]
                        .iter()
                        .filter_map(|&a| match &state[a] {
                            State::Done(s) if s.blocks_dependents && s.status != StepStatus::Skipped => {
                                Some(s.step.as_str())
                            }
                            _ => None,
                        })
                        .collect();
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
                        started: run_start.elapsed(),
                        blocks_dependents: false,
                        ..StepSummary::new(&step.name, StepStatus::Skipped, Some(reason))
                    };
                    let _ = events.send(RunEvent::StepFinished(summary.clone())).await;
                    ended(&mut deployments, &mut gates, opts, step, &summary, events).await;
                    state[i] = State::Done(summary);
                    progressed = true;
                    continue;
                }
                // Kept only when everything it needs was kept too: what depends on a step
                // that runs again runs again.
                if let Some(kept) = opts.reuse.get(&step.name).filter(|_| deps[i].iter().all(|&d| reused[d])) {
                    reused[i] = true;
                    let summary = StepSummary {
                        step: step.name.clone(),
                        status: StepStatus::Passed,
                        attempts: 0,
                        allowed_failure: false,
                        started: run_start.elapsed(),
                        duration: Duration::ZERO,
                        blocks_dependents: false,
                        ..kept.clone()
                    };
                    let _ = events.send(RunEvent::StepFinished(summary.clone())).await;
                    ended(&mut deployments, &mut gates, opts, step, &summary, events).await;
                    state[i] = State::Done(summary);
                    progressed = true;
                    continue;
                }
                // A deployment waits for its environment's gate, off this loop.
                let mut env_secrets: &[String] = &[];
                if let Some(env) = &step.environment {
                    let rules = plan.environments.get(&env.name).cloned().unwrap_or_default();
                    let refused = match gates.get(&env.name) {
                        None => {
                            let req = GateRequest::new(plan, &step.step, &env.name, &rules, opts.redeploy);
                            gates.asked(req.clone());
                            let steps = plan
                                .steps
                                .iter()
                                .filter(|s| s.environment.as_ref().is_some_and(|e| e.name == env.name))
                                .map(|s| s.name.clone())
                                .collect();
                            let task =
                                gate::wait(opts.gate.clone(), req, steps, rules.wait, events.clone(), cancel.clone());
                            let name = env.name.clone();
                            let handle = gate_tasks.spawn(async move { (name, task.await) });
                            gate_index.insert(handle.id(), env.name.clone());
                            continue;
                        }
                        Some(gate::Gate::Waiting) => continue,
                        Some(gate::Gate::Go) => None,
                        Some(gate::Gate::Refused(why)) => Some((StepStatus::Skipped, why.clone())),
                        Some(gate::Gate::Failed(why)) => Some((StepStatus::Failed, why.clone())),
                    };
                    if let Some((status, why)) = refused {
                        let summary = StepSummary {
                            started: run_start.elapsed(),
                            blocks_dependents: status != StepStatus::Skipped,
                            ..StepSummary::new(&step.name, status, Some(why))
                        };
                        let _ = events.send(RunEvent::StepFinished(summary.clone())).await;
                        ended(&mut deployments, &mut gates, opts, step, &summary, events).await;
                        state[i] = State::Done(summary);
                        progressed = true;
                        continue;
                    }
                    if let Some(r) = plan.environments.get(&env.name) {
                        env_secrets = &r.secrets;
                    }
                }
                if running >= jobs {
                    continue;
                }
                deployments.started(&step.step, events).await;
                let unit = Unit {
                    backend: backend.clone(),
                    step: step.clone(),
                    run_id: opts.run_id.clone(),
                    // An environment's secrets only once its gate let the deployment go.
                    secrets: step
                        .secrets
                        .iter()
                        .chain(env_secrets.iter().filter(|k| !step.secrets.contains(k)))
                        .filter_map(|k| opts.secrets.get(k).map(|v| (k.clone(), v.clone())))
                        .collect(),
                    all_secrets: all_secrets.clone(),
                    log_limit: opts.log_limit,
                    logged: Arc::new(std::sync::atomic::AtomicU64::new(0)),
                    isolation: opts.isolation.clone(),
                    bind: match &opts.workspace {
                        Workspace::Bind(p) => Some(p.clone()),
                        _ => None,
                    },
                    grace: opts.grace,
                    cache: opts.cache.clone(),
                    source_root: opts.source_root.clone(),
                    artifact_dir: opts.artifact_dir.clone(),
                    events: events.clone(),
                    cancel: cancel.clone(),
                    run_start,
                    removals: removals.clone(),
                    shell: opts.shell.clone(),
                };
                let handle = tasks.spawn(async move { (i, unit.run().await) });
                task_index.insert(handle.id(), i);
                state[i] = State::Running;
                running += 1;
                progressed = true;
            }
        }
        if running == 0 && gate_tasks.is_empty() {
            break;
        }
        let joined = tokio::select! {
            Some(g) = gate_tasks.join_next_with_id(), if !gate_tasks.is_empty() => {
                match g {
                    Ok((_, (env, decision))) => gates.decided(&env, decision),
                    Err(e) => {
                        if let Some(env) = gate_index.get(&e.id()) {
                            let reason = format!("internal error: the gate's task failed: {e}");
                            gates.decided(env, GateDecision::Fail { reason, by: Vec::new() });
                        }
                    }
                }
                continue;
            }
            j = tasks.join_next_with_id(), if running > 0 => j,
        };
        let Some(joined) = joined else { break };
        let (i, summary) = match joined {
            Ok((_, (i, s))) => (i, s),
            Err(e) => {
                // A panic in a step task: the step errs, the run goes on, and the run's
                // cleanup removes whatever the task left.
                let Some(&i) = task_index.get(&e.id()) else { continue };
                let why = Some(format!("internal error: the step's task failed: {e}"));
                let s = StepSummary { attempts: 1, ..StepSummary::new(&plan.steps[i].name, StepStatus::Error, why) };
                let _ = events.send(RunEvent::StepFinished(s.clone())).await;
                (i, s)
            }
        };
        ended(&mut deployments, &mut gates, opts, &plan.steps[i], &summary, events).await;
        state[i] = State::Done(summary);
        running -= 1;
    }
    state
        .into_iter()
        .zip(&plan.steps)
        .map(|(s, step)| match s {
            State::Done(s) => s,
            // Unreachable in a DAG; reported rather than panicking.
            _ => StepSummary::new(&step.name, StepStatus::Skipped, Some("never became ready".into())),
        })
        .collect()
}

/// A step ended (ran, was skipped, kept, or its gate stopped it): its deployment and its
/// environment's gate learn it.
async fn ended(
    deployments: &mut deploy::Deployments,
    gates: &mut gate::Gates,
    opts: &RunOptions,
    step: &PlannedStep,
    summary: &StepSummary,
    events: &mpsc::Sender<RunEvent>,
) {
    deployments.ended(&step.step, summary, events).await;
    if let Some(env) = &step.environment {
        gates.ended(&env.name, summary, opts.gate.as_ref()).await;
    }
}

/// Every step's transitive needs, in plan order.
fn ancestors(deps: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::with_capacity(deps.len());
    // Plan order is a topological order: a step's needs come before it.
    for d in deps {
        let mut set: Vec<usize> = d.clone();
        for &x in d {
            if let Some(a) = out.get(x) {
                set.extend(a.iter().copied());
            }
        }
        set.sort_unstable();
        set.dedup();
        out.push(set);
    }
    out
}

/// One step, from its first attempt to its last, on its own task.
struct Unit<B> {
    backend: Arc<B>,
    step: PlannedStep,
    run_id: String,
    secrets: Vec<(String, String)>,
    all_secrets: Arc<Vec<String>>,
    log_limit: u64,
    /// Bytes of output kept so far, over all attempts (against `log_limit`).
    logged: Arc<std::sync::atomic::AtomicU64>,
    isolation: crate::exec::Isolation,
    bind: Option<PathBuf>,
    grace: Duration,
    cache: Option<CacheSettings>,
    source_root: Option<PathBuf>,
    artifact_dir: Option<PathBuf>,
    events: mpsc::Sender<RunEvent>,
    cancel: Cancel,
    run_start: Instant,
    removals: Removals,
    shell: Option<Arc<Shell>>,
}

/// When, in a step's life, a shell may open.
#[derive(Clone, Copy)]
enum Moment {
    Before,
    After { failed: bool },
}

/// `orch ci --shell`: where a run opens its one interactive shell, and on what terminal.
pub struct Shell {
    pub at: ShellAt,
    pub terminal: Arc<dyn Terminal>,
    /// Shared with the reporter; the shell borrows it while it is open.
    pub screen: Arc<crate::report::Screen>,
    opened: std::sync::atomic::AtomicBool,
}

impl Shell {
    pub fn new(at: ShellAt, terminal: Arc<dyn Terminal>, screen: Arc<crate::report::Screen>) -> Shell {
        Shell { at, terminal, screen, opened: Default::default() }
    }

    /// Whether the shell was opened (or tried).
    pub fn opened(&self) -> bool {
        self.opened.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Where `orch ci --shell` opens its shell: at the first step that fails, or before or
/// after the named step (a matrix step's name covers its variants: the first one to get
/// there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellAt {
    Failure,
    Before(String),
    After(String),
}

/// The terminal a shell is opened on (in raw mode while the returned `ShellIo` lives).
pub trait Terminal: Send + Sync {
    fn open(&self) -> Result<crate::exec::ShellIo, String>;
}

/// Masks secrets in what a shell prints. Per write: a value split across two writes
/// shows (an interactive stream cannot wait for the rest of a line).
struct MaskedWriter {
    inner: Box<dyn std::io::Write + Send>,
    masker: Masker,
}

impl std::io::Write for MaskedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write_all(&self.masker.mask(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Removals of step containers still under way: a step's end is announced (and its
/// dependents start) while its container is being removed, which in a chain saves a
/// round trip of the daemon's per step. The run's cleanup waits for them first.
#[derive(Clone, Default)]
struct Removals(Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>);

impl Removals {
    fn push(&self, task: tokio::task::JoinHandle<()>) {
        match self.0.lock() {
            Ok(mut v) => v.push(task),
            // Poisoned only by a panic while pushing: the run's destroy still removes it.
            Err(_) => drop(task),
        }
    }

    async fn wait(&self) {
        let tasks = self.0.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default();
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// A cache of the step, resolved: its key and the container paths it holds.
struct StepCache {
    key: String,
    paths: Vec<String>,
    /// An entry with exactly this key exists in the run's own scope.
    have: bool,
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
        // Every secret of the run is masked in every step's output, not only in the steps
        // that name it: a value can travel through the workspace.
        let masker = Masker::new(self.all_secrets.iter().map(String::as_str));
        let missing: Vec<&String> =
            self.step.secrets.iter().filter(|s| !self.secrets.iter().any(|(k, _)| k == *s)).collect();
        let mut summary = StepSummary { started, ..StepSummary::new(&self.step.name, StepStatus::Error, None) };
        // The last attempt's container, removed once the step is over (and its shell, if one
        // is owed, is closed).
        let mut last: Option<(u32, StepHandle)> = None;
        let prepared = if missing.is_empty() {
            self.caches().await
        } else {
            Err(format!(
                "secret {} is not set",
                missing.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
            ))
        };
        match prepared {
            Err(m) => summary.message = Some(m),
            Ok((caches, restore)) => {
                if self.shell.is_some() {
                    let spec = self.spec(1, &env, &restore);
                    self.shell_at(Moment::Before, &spec, None, &masker).await;
                }
                for attempt in 1..=attempts {
                    summary.attempts = attempt;
                    let _ = self
                        .events
                        .send(RunEvent::StepStarted { step: self.step.name.clone(), attempt, attempts })
                        .await;
                    let (ended, handle) = self.attempt(attempt, &env, &masker, &restore).await;
                    match ended {
                        Ended::Exit(0, _) => {
                            summary.status = StepStatus::Passed;
                            summary.exit_code = Some(0);
                            summary.message = None;
                            if let Some(h) = &handle
                                && let Err(m) = self.after_success(h, &caches, &mut summary).await
                            {
                                summary.status = StepStatus::Failed;
                                summary.message = Some(m);
                            }
                        }
                        Ended::Exit(code, oom) => {
                            summary.status = StepStatus::Failed;
                            summary.exit_code = Some(code);
                            summary.message = Some(if oom {
                                format!("killed: out of memory (exit code {code})")
                            } else {
                                format!("exit code {code}")
                            });
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
                        Ended::Error(ref m) => {
                            summary.status = StepStatus::Error;
                            summary.message = Some(m.clone());
                        }
                    }
                    let retryable = match ended {
                        Ended::Exit(code, _) if code != 0 => {
                            self.step.retry.on_exit_codes.is_empty() || self.step.retry.on_exit_codes.contains(&code)
                        }
                        _ => false,
                    };
                    let retry = retryable && attempt < attempts && !self.cancel.graceful.is_cancelled();
                    if let Some(h) = handle {
                        if retry {
                            let _ = self.backend.remove(&h).await;
                        } else {
                            last = Some((attempt, h));
                        }
                    }
                    if retry {
                        let _ = self
                            .events
                            .send(RunEvent::StepRetrying {
                                step: self.step.name.clone(),
                                attempt,
                                exit_code: summary.exit_code.unwrap_or(-1),
                            })
                            .await;
                        continue;
                    }
                    break;
                }
            }
        }
        summary.duration = t0.elapsed();
        let failed = summary.status != StepStatus::Passed;
        summary.allowed_failure = failed && self.step.allow_failure && summary.status != StepStatus::Cancelled;
        summary.blocks_dependents = failed && !summary.allowed_failure;
        let _ = self.events.send(RunEvent::StepFinished(summary.clone())).await;
        if self.shell.is_some() {
            let failed = matches!(summary.status, StepStatus::Failed | StepStatus::TimedOut | StepStatus::Error);
            let spec = self.spec(last.as_ref().map_or(1, |(a, _)| *a), &env, &[]);
            let handle = last.as_ref().map(|(_, h)| h);
            self.shell_at(Moment::After { failed }, &spec, handle, &masker).await;
        }
        if let Some((_, h)) = last {
            let backend = self.backend.clone();
            self.removals.push(tokio::spawn(async move {
                let _ = backend.remove(&h).await;
            }));
        }
        summary
    }

    /// Resolves the step's cache keys and finds what to restore.
    async fn caches(&self) -> Result<(Vec<StepCache>, Vec<Restore>), String> {
        let Some(settings) = &self.cache else { return Ok((Vec::new(), Vec::new())) };
        let mut caches = Vec::new();
        let mut restore = Vec::new();
        for c in &self.step.cache {
            let key = crate::cache::resolve_key(&c.key, self.source_root.as_deref()).map_err(|e| e.to_string())?;
            let paths: Vec<String> = c.paths.iter().map(|p| container_path(p)).collect();
            let found = settings.store.lookup(&settings.scopes, &key);
            let _ = self
                .events
                .send(RunEvent::CacheRestored {
                    step: self.step.name.clone(),
                    key: key.clone(),
                    hit: found.is_some(),
                    fallback: found.as_ref().is_some_and(|e| e.fallback),
                    size: found.as_ref().map_or(0, |e| e.meta.size),
                })
                .await;
            if let Some(entry) = &found {
                for p in &entry.meta.paths {
                    restore.push(Restore { tar: entry.dir.join(&p.tar), path: p.path.clone() });
                }
            }
            let have = found.is_some_and(|e| !e.fallback);
            caches.push(StepCache { key, paths, have });
        }
        Ok((caches, restore))
    }

    /// After a step passed: save its caches (new keys only) and keep its artifacts.
    async fn after_success(
        &self,
        h: &StepHandle,
        caches: &[StepCache],
        summary: &mut StepSummary,
    ) -> Result<(), String> {
        // Artifacts first: a step whose artifacts cannot be kept fails, keeps none of them,
        // and saves no cache. They are gathered in a staging directory, renamed when whole.
        if let (Some(art), Some(dir)) = (&self.step.artifacts, &self.artifact_dir) {
            let dest = dir.join(crate::plan::slug(&self.step.name));
            let staging = dir.join(format!(".{}.partial", crate::plan::slug(&self.step.name)));
            let _ = std::fs::remove_dir_all(&staging);
            std::fs::create_dir_all(&staging).map_err(|e| format!("artifacts: {}: {e}", staging.display()))?;
            let collected = match self.backend.collect(h, &art.paths, art.optional, &staging).await {
                Ok(c) => c,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&staging);
                    return Err(e.to_string());
                }
            };
            let _ = std::fs::remove_dir_all(&dest);
            std::fs::rename(&staging, &dest).map_err(|e| format!("artifacts: {}: {e}", dest.display()))?;
            if !collected.unmatched.is_empty() {
                let _ = self
                    .events
                    .send(RunEvent::RunMessage {
                        level: Level::Warning,
                        message: format!(
                            "step `{}`: optional artifacts {} matched nothing",
                            self.step.name,
                            collected.unmatched.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", ")
                        ),
                    })
                    .await;
            }
            let files = collected.files;
            let _ = self
                .events
                .send(RunEvent::ArtifactsCollected {
                    step: self.step.name.clone(),
                    dir: dest.display().to_string(),
                    files: files.clone(),
                })
                .await;
            summary.artifacts = files;
        }
        // A cache that cannot be saved costs the next run time, not this step its result.
        if let Err(e) = self.save_caches(h, caches).await {
            let _ = self
                .events
                .send(RunEvent::RunMessage {
                    level: Level::Warning,
                    message: format!("step `{}`: cache not saved: {e}", self.step.name),
                })
                .await;
        }
        Ok(())
    }

    /// Saves the step's caches whose keys the run's scope does not have yet.
    async fn save_caches(&self, h: &StepHandle, caches: &[StepCache]) -> Result<(), String> {
        if let Some(settings) = &self.cache {
            let scope = &settings.scopes[0];
            for c in caches.iter().filter(|c| !c.have && !settings.store.contains(scope, &c.key)) {
                let tmp = settings.store.begin().map_err(|e| e.to_string())?;
                let mut saved = Vec::new();
                for (i, path) in c.paths.iter().enumerate() {
                    let tar = format!("{i}.tar");
                    if self.backend.export(h, path, &tmp.path().join(&tar)).await.map_err(|e| e.to_string())? {
                        saved.push(CachedPath { path: path.clone(), tar });
                    }
                }
                if saved.is_empty() {
                    let _ = self
                        .events
                        .send(RunEvent::RunMessage {
                            level: Level::Warning,
                            message: format!(
                                "step `{}`: cache `{}` not saved: none of its paths exist after the step",
                                self.step.name, c.key
                            ),
                        })
                        .await;
                    continue;
                }
                let store = settings.store.clone();
                let (scope, key) = (scope.clone(), c.key.clone());
                let size = tokio::task::spawn_blocking(move || store.commit(tmp, &scope, &key, saved))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                let _ = self
                    .events
                    .send(RunEvent::CacheSaved { step: self.step.name.clone(), key: c.key.clone(), size })
                    .await;
            }
        }
        Ok(())
    }

    /// What the backend gets for one attempt of the step.
    fn spec(&self, attempt: u32, env: &[(String, String)], restore: &[Restore]) -> StepSpec {
        StepSpec {
            run_id: self.run_id.clone(),
            step: self.step.name.clone(),
            attempt,
            image: self.step.image.clone(),
            script: script(&self.step.commands),
            env: env.to_vec(),
            workdir: self.step.workdir.clone(),
            bind: self.bind.clone(),
            services: self
                .step
                .services
                .iter()
                .map(|(name, s)| ServiceSpec {
                    name: name.clone(),
                    image: s.image.clone(),
                    env: s.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    command: s.command.clone(),
                    ready: s.ready.clone(),
                })
                .collect(),
            restore: restore.to_vec(),
            isolation: self.isolation.clone(),
            cancel: self.cancel.graceful.clone(),
        }
    }

    /// Opens the run's shell (`orch ci --shell`) if it is owed at this moment of the step:
    /// once the reporter has shown everything before it, with the terminal to itself.
    async fn shell_at(&self, moment: Moment, spec: &StepSpec, handle: Option<&StepHandle>, masker: &Masker) {
        let Some(shell) = &self.shell else { return };
        let name = &self.step;
        let wanted = match (&shell.at, moment) {
            (ShellAt::Before(s), Moment::Before) | (ShellAt::After(s), Moment::After { .. }) => {
                *s == name.name || *s == name.step
            }
            (ShellAt::Failure, Moment::After { failed }) => failed,
            _ => false,
        };
        if !wanted || shell.opened.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let when = match moment {
            Moment::Before => "before it runs",
            Moment::After { failed: true } => "where it failed",
            Moment::After { failed: false } => "after it ran",
        };
        let _ = self
            .events
            .send(RunEvent::RunMessage {
                level: Level::Info,
                message: format!(
                    "opening a shell in step `{}` {when}; `exit` to go on (the run's result stays as it is)",
                    name.name
                ),
            })
            .await;
        // Everything sent so far (this message too) is shown before the shell takes the terminal.
        let screen = shell.screen.borrow().await;
        let result = match shell.terminal.open() {
            Ok(mut io) => {
                io.output = Box::new(MaskedWriter { inner: io.output, masker: masker.clone() });
                self.backend.shell(spec, handle, io).await.map_err(|e| e.to_string())
            }
            Err(e) => Err(e),
        };
        drop(screen);
        let (level, message) = match result {
            Ok(code) => (Level::Info, format!("the shell in step `{}` ended (exit code {code})", name.name)),
            Err(e) => (Level::Error, format!("cannot open a shell in step `{}`: {e}", name.name)),
        };
        let _ = self.events.send(RunEvent::RunMessage { level, message }).await;
    }

    /// One attempt: start, stream logs, wait with the timeout and cancellation. The
    /// container is returned (stopped) for the caller to save from and remove.
    async fn attempt(
        &self,
        attempt: u32,
        env: &[(String, String)],
        masker: &Masker,
        restore: &[Restore],
    ) -> (Ended, Option<StepHandle>) {
        let spec = self.spec(attempt, env, restore);
        let (tx, rx) = mpsc::channel::<LogChunk>(64);
        let log_task = tokio::spawn(pump_logs(
            rx,
            masker.clone(),
            self.step.name.clone(),
            self.log_limit,
            self.logged.clone(),
            self.events.clone(),
        ));
        // Not raced against cancellation: a start dropped half-way would leave Docker
        // objects created after the run's cleanup. The spec's token makes it return early.
        let started = self.backend.start(&spec, tx).await;
        let mut handle: StepHandle = match started {
            Ok(h) => h,
            Err(e) => {
                let _ = log_task.await;
                if self.cancel.graceful.is_cancelled() {
                    return (Ended::Cancelled, None);
                }
                return (Ended::Error(e.to_string()), None);
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
        let _ = log_task.await;
        (ended, Some(handle))
    }
}

/// The line a log ends with once it reached the run's limit.
pub fn truncation_notice(limit: u64) -> String {
    format!(
        "--- orch: the log reached its limit of {} MiB here; the step goes on, its further output is not kept ---",
        limit >> 20
    )
}

/// Turns one attempt's output into masked `StepOutput` events (one per chunk read, holding
/// the lines it finished), until the output ends. Past `limit` bytes for the step (all
/// attempts together; 0: no limit) one notice is sent and the rest is drained and dropped,
/// so the container never waits on a full log.
async fn pump_logs(
    mut rx: mpsc::Receiver<LogChunk>,
    masker: Masker,
    step: String,
    limit: u64,
    logged: Arc<std::sync::atomic::AtomicU64>,
    events: mpsc::Sender<RunEvent>,
) {
    use std::sync::atomic::Ordering;
    let mut kept = logged.load(Ordering::SeqCst);
    let mut full = limit > 0 && kept >= limit;
    let mut lines = StepLines::default();
    let mut text = Vec::new();
    while let Some(chunk) = rx.recv().await {
        if full {
            continue;
        }
        lines.splitter(chunk.stream).push(&chunk.data, &masker, &mut text);
        send_output(&events, &step, chunk.stream, &mut text, limit, &mut kept, &mut full).await;
    }
    // What each stream left unfinished, as events of their own.
    for stream in [crate::exec::Stream::Stdout, crate::exec::Stream::Stderr] {
        lines.splitter(stream).finish(&masker, &mut text);
        if full {
            break;
        }
        send_output(&events, &step, stream, &mut text, limit, &mut kept, &mut full).await;
    }
    logged.store(kept, Ordering::SeqCst);
}

/// Sends `text` (whole lines) as one event and empties it; the lines that pass the limit
/// become one notice, and `full` is set.
async fn send_output(
    events: &mpsc::Sender<RunEvent>,
    step: &str,
    stream: crate::exec::Stream,
    text: &mut Vec<u8>,
    limit: u64,
    kept: &mut u64,
    full: &mut bool,
) {
    if text.is_empty() {
        return;
    }
    if limit > 0 && *kept + text.len() as u64 > limit {
        // Whole lines up to the limit, then the notice.
        let room = limit.saturating_sub(*kept) as usize;
        let cut = memchr::memrchr(b'\n', &text[..room.min(text.len())]).map_or(0, |i| i + 1);
        text.truncate(cut);
        text.extend_from_slice(truncation_notice(limit).as_bytes());
        text.push(b'\n');
        *full = true;
    }
    *kept += text.len() as u64;
    let text = match String::from_utf8(std::mem::take(text)) {
        Ok(t) => t,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    };
    let _ = events.send(RunEvent::StepOutput { step: step.to_string(), stream, text }).await;
}
