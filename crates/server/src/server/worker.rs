//! The worker: claims queued runs, fetches their commit, plans `.orch.yml` for the event and
//! executes it with the same scheduler as `orch ci`, recording steps and reporting to GitHub.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::config::Config;
use super::db::{NewRun, Run, RunState, StepState};
use crate::checkout::{self, FetchSpec};
use crate::exec::Workspace;
use crate::exec::docker::DockerBackend;
use crate::github::{Annotation, Conclusion, RunRef, Update, annotations_from_log};
use crate::job::Job;
use crate::pipeline::model::TrustedEnvironments;
use crate::pipeline::{self, Event};
use crate::plan::{Context, Selection};
use crate::sched::{self, Cancel, RunEvent, RunStatus, StepStatus, StepSummary};
use crate::setup::{self, Secrets, Settings, Setup, SetupError};

pub fn run_dir(cfg: &Config, id: i64) -> PathBuf {
    cfg.data_dir.join("runs").join(id.to_string())
}

/// Eight hex digits naming this server by its data directory. Run ids restart at 1 in every
/// data directory, so the Docker run id (container, volume and network names, the label
/// cleanup goes by) carries this tag: two servers on one host never share a workspace volume
/// or remove each other's containers.
pub fn instance_tag(data_dir: &std::path::Path) -> String {
    use sha2::Digest;
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    hex::encode(&sha2::Sha256::digest(dir.as_os_str().as_encoded_bytes())[..4])
}

/// This server's tag in Docker names: its data directory's ([`instance_tag`]); with
/// several servers on one PostgreSQL database its name's too (they may share the data
/// directory and the Docker daemon, and each sweeps only its own leftovers).
pub fn server_tag(cfg: &super::config::Config) -> String {
    match cfg.database {
        super::db::Location::Postgres(_) => {
            use sha2::Digest;
            let dir = std::fs::canonicalize(&cfg.data_dir).unwrap_or_else(|_| cfg.data_dir.clone());
            let mut h = sha2::Sha256::new();
            h.update(dir.as_os_str().as_encoded_bytes());
            h.update(b"\n");
            h.update(cfg.server_name.as_bytes());
            hex::encode(&h.finalize()[..4])
        }
        super::db::Location::Sqlite(_) => instance_tag(&cfg.data_dir),
    }
}

/// The Docker run id of a run's attempt: `s<server tag>-<run>-<attempt>`.
pub fn docker_run_id(cfg: &super::config::Config, run: i64, attempt: i64) -> String {
    format!("s{}-{run}-{attempt}", server_tag(cfg))
}

/// Plans queued runs (fetch, `.orch.yml`, secrets, labels) and, with a local capacity,
/// executes planned ones here, until `stop`. Agents take planned runs through `agents`.
pub async fn run(st: Arc<AppState>, stop: CancellationToken) {
    // The daemon, once it has answered: one client for every run. From then on, runs are
    // not taken while it does not answer (it is restarting): they wait queued rather than
    // fail. A server that never reached Docker takes them, and they fail saying why.
    let docker = if st.cfg.local_capacity > 0 { DockerBackend::connect().await.ok().map(Arc::new) } else { None };
    // Containers of runs a killed server left behind.
    if let Some(backend) = &docker {
        match backend.gc(true).await {
            Ok(r) if !r.runs.is_empty() => tracing::warn!(runs = ?r.runs, "removed what killed runs left in Docker"),
            Ok(_) => {}
            Err(e) => tracing::warn!("cleanup of stale runs failed: {e}"),
        }
    }
    let janitor = tokio::spawn(janitor(st.clone(), stop.clone()));
    let reaper = tokio::spawn(super::agents::reaper(st.clone(), stop.clone()));
    let local = (st.cfg.local_capacity > 0).then(|| tokio::spawn(execute_here(st.clone(), stop.clone(), docker)));
    plan_queued(&st, &stop).await;
    if let Some(l) = local {
        let _ = l.await;
    }
    let _ = janitor.await;
    let _ = reaper.await;
}

/// Runs planned at once: one, so runs are planned, and taken, in the order they came (a
/// fetch is tens of milliseconds; executors take planned runs oldest first).
const PLANNERS: usize = 1;

/// Takes queued runs that are not planned yet and plans them, while the planned runs that
/// wait for an executor that exists are fewer than the executors' room (so checkouts are
/// not made far ahead of the runs).
async fn plan_queued(st: &Arc<AppState>, stop: &CancellationToken) {
    let slots = Arc::new(Semaphore::new(PLANNERS));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.cancelled() => break,
        };
        let claimed = match super::agents::room_to_plan(st).await {
            Ok(true) => st.db.claim().await,
            Ok(false) => Ok(None),
            Err(e) => Err(e),
        };
        match claimed {
            Ok(Some(run)) => {
                let st = st.clone();
                tasks.spawn(async move {
                    plan_run(st, run).await;
                    drop(permit);
                });
            }
            Ok(None) => {
                drop(permit);
                tokio::select! {
                    _ = st.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = stop.cancelled() => break,
                }
            }
            Err(e) => {
                drop(permit);
                tracing::error!("cannot claim a run: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// This server as an executor: takes planned runs its labels fit, at most
/// `local_capacity` at once.
async fn execute_here(st: Arc<AppState>, stop: CancellationToken, mut docker: Option<Arc<DockerBackend>>) {
    let slots = Arc::new(Semaphore::new(st.cfg.local_capacity));
    let mut tasks = tokio::task::JoinSet::new();
    let mut ready = st.ready.subscribe();
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.cancelled() => break,
        };
        let answers = match &docker {
            Some(backend) => backend.ping().await,
            None => DockerBackend::connect().await.map(|b| docker = Some(Arc::new(b))),
        };
        let waiting = &st.counters.waiting_for_docker;
        match answers {
            Ok(()) => {
                if waiting.swap(false, Ordering::Relaxed) {
                    tracing::info!("Docker answers again: queued runs go on");
                }
            }
            Err(e) if docker.is_some() => {
                if !waiting.swap(true, Ordering::Relaxed) {
                    tracing::warn!("Docker does not answer ({e}): queued runs wait for it");
                }
                drop(permit);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => break,
                }
                continue;
            }
            Err(_) => {}
        }
        // Seen before looking: a run planned meanwhile wakes the wait below.
        ready.borrow_and_update();
        match st.db.dispatch(None, st.cfg.labels.clone(), None).await {
            Ok(Some((run, job))) => {
                let st = st.clone();
                let docker = docker.clone();
                tasks.spawn(async move {
                    execute(st, run, job, docker).await;
                    drop(permit);
                });
            }
            Ok(None) => {
                drop(permit);
                tokio::select! {
                    _ = ready.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = stop.cancelled() => break,
                }
            }
            Err(e) => {
                drop(permit);
                tracing::error!("cannot take a run: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// Removes the Docker objects of this server's runs that are not running any more: those
/// whose cleanup failed (the daemon was stopped or restarting) go once it answers again.
/// It looks every minute, and soon after a run ended in an error, retrying with backoff
/// while the daemon does not answer.
async fn janitor(st: Arc<AppState>, stop: CancellationToken) {
    const QUIET: Duration = Duration::from_secs(60);
    let prefix = format!("s{}-", server_tag(&st.cfg));
    let mut wait = QUIET;
    let mut owed = false;
    loop {
        tokio::select! {
            _ = st.janitor.notified() => { owed = true; }
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        let keep = |run: &str, _: &std::collections::HashMap<String, String>| {
            let Some(id) = run.strip_prefix(&prefix).and_then(|r| r.split('-').next()?.parse::<i64>().ok()) else {
                return true;
            };
            st.running.lock().map_or(true, |m| m.contains_key(&id))
        };
        remove_stale_checkouts(&st).await;
        let swept = match DockerBackend::connect().await {
            Ok(b) => b.sweep(keep).await,
            Err(e) => Err(e),
        };
        match swept {
            Ok(r) => {
                if !r.runs.is_empty() {
                    tracing::info!(runs = ?r.runs, containers = r.containers, networks = r.networks,
                        volumes = r.volumes, "removed what ended runs left in Docker");
                }
                (owed, wait) = (false, QUIET);
            }
            Err(e) if owed => {
                wait = if wait >= QUIET { Duration::from_secs(1) } else { (wait * 2).min(Duration::from_secs(30)) };
                tracing::debug!("leftovers of ended runs stay until Docker answers: {e}");
            }
            Err(_) => wait = QUIET,
        }
    }
}

/// Removes the checkouts of runs that ended while they waited for an executor (cancelled,
/// pruned): what runs and waits keeps its own.
async fn remove_stale_checkouts(st: &AppState) {
    let Ok(dirs) = std::fs::read_dir(st.cfg.data_dir.join("work")) else { return };
    for d in dirs.flatten() {
        let Some(id) = d.file_name().to_str().and_then(|n| n.parse::<i64>().ok()) else { continue };
        // Asked run by run, after its directory was seen: a run planned meanwhile is live
        // (its row exists before its checkout does); one pruned is gone.
        let ended = match st.db.run(id).await {
            Ok(Some(run)) => !run.status.is_active(),
            Ok(None) => true,
            Err(_) => false,
        };
        if ended {
            let _ = std::fs::remove_dir_all(d.path());
        }
    }
}

/// Where the server keeps a run's checkout from its planning to its end.
pub fn work_dir(cfg: &Config, id: i64) -> PathBuf {
    cfg.data_dir.join("work").join(id.to_string())
}

pub(crate) fn run_ref(run: &Run) -> RunRef {
    RunRef { check_run_id: run.check_run_id.map(|id| id as u64), ..new_run_ref(run.id, &run.spec) }
}

/// The reference of a run just queued (it has no check run yet).
pub(crate) fn new_run_ref(id: i64, r: &super::db::NewRun) -> RunRef {
    RunRef {
        id,
        repo: r.repo.clone(),
        sha: r.sha.clone(),
        event: r.event.clone(),
        installation_id: r.installation_id,
        check_run_id: None,
    }
}

/// A run's cache scopes on the server: those of [`sched::cache_scopes`], within its
/// repository. One server builds many repositories, and one must not restore (or poison)
/// another's caches.
fn repo_cache_scopes(repo: &str, ctx: &crate::plan::Context, default_branch: Option<&str>) -> Vec<String> {
    sched::cache_scopes(ctx, default_branch.unwrap_or("main")).into_iter().map(|s| format!("{repo}/{s}")).collect()
}

/// How a run ended, for the database and GitHub.
pub(crate) struct Outcome {
    status: RunState,
    conclusion: Conclusion,
    reason: String,
    summary: String,
    annotations: Vec<Annotation>,
}

impl Outcome {
    pub(crate) fn early(status: RunState, conclusion: Conclusion, reason: String) -> Outcome {
        Outcome { status, conclusion, summary: reason.clone(), reason, annotations: Vec::new() }
    }
}

/// What the server stores of a planned run for its executor: the job, without the
/// secrets' values (read again when it is handed out, never stored).
#[derive(serde::Serialize, serde::Deserialize)]
struct Planned {
    job: Job,
    /// The secrets the steps name (their values go with the job).
    secrets: Vec<String>,
    withheld: bool,
}

/// Plans a claimed run: fetches its commit into its checkout, loads and plans
/// `.orch.yml`, checks its secrets; then it waits for an executor (or ends, when there is
/// nothing to run or the file is broken).
async fn plan_run(st: Arc<AppState>, run: Run) {
    tracing::info!(run = run.id, repo = %run.spec.repo, sha = %run.spec.sha, "planning the run");
    let dir = run_dir(&st.cfg, run.id);
    let work = work_dir(&st.cfg, run.id);
    let _ = std::fs::remove_dir_all(&work);
    match plan(&st, &run, &dir, &work).await {
        Ok(p) => {
            let labels = p.job.labels.clone();
            let waiting = if labels.is_empty() {
                "waiting for an executor".to_string()
            } else {
                format!("waiting for an executor labelled {}", labels.join(", "))
            };
            let text = serde_json::to_string(&p).unwrap_or_default();
            match st.db.plan_ready(run.id, text, labels, waiting).await {
                Ok(true) => {
                    st.ready.send_modify(|n| *n += 1);
                }
                Ok(false) => {
                    // Cancelled while it was planned.
                    let _ = std::fs::remove_dir_all(&work);
                }
                Err(e) => tracing::error!(run = run.id, "cannot store the run's plan: {e}"),
            }
        }
        Err(outcome) => {
            let _ = std::fs::remove_dir_all(&work);
            finish(&st, &run, outcome).await;
        }
    }
}

/// Executes a run taken from the queue here, on `docker` (else a connection made for it).
async fn execute(st: Arc<AppState>, run: Run, planned: String, docker: Option<Arc<DockerBackend>>) {
    st.wake.notify_one();
    let cancel = Cancel::default();
    if let Ok(mut m) = st.running.lock() {
        m.insert(run.id, (cancel.clone(), "cancelled".into()));
    }
    st.report.owe(Update::Started(run_ref(&run))).await;
    tracing::info!(run = run.id, attempt = run.attempts, "run executes here");
    let outcome = match execute_job(&st, &run, &planned, cancel, docker).await {
        Ok(o) | Err(o) => o,
    };
    finish(&st, &run, outcome).await;
}

async fn execute_job(
    st: &Arc<AppState>,
    run: &Run,
    planned: &str,
    cancel: Cancel,
    docker: Option<Arc<DockerBackend>>,
) -> Result<Outcome, Outcome> {
    let job = job_for(st, run, planned).map_err(|e| Outcome::early(RunState::Error, Conclusion::Error, e))?;
    let dir = run_dir(&st.cfg, run.id);
    let work = work_dir(&st.cfg, run.id);
    if !work.is_dir() {
        // Planned again (fetched again) from the queue.
        let why = "queued again: its checkout was gone".to_string();
        let _ = st.db.release(run.id, run.attempts, None, why).await;
        return Err(Outcome::early(RunState::Queued, Conclusion::Cancelled, String::new()));
    }
    fresh_logs(&dir).map_err(|e| Outcome::early(RunState::Error, Conclusion::Error, e))?;
    let cache = Arc::new(crate::cache::CacheStore::new(st.cfg.data_dir.join("cache"), st.cfg.cache_max));
    let (j, w, d) = (job.clone(), work.clone(), dir.clone());
    let prepared = tokio::task::spawn_blocking(move || crate::job::prepare(&j, &w, &d, Some(cache))).await;
    let mut prepared = match prepared {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return Err(Outcome::early(RunState::Error, Conclusion::Error, e.to_string())),
        Err(e) => return Err(Outcome::early(RunState::Error, Conclusion::Error, format!("set-up task failed: {e}"))),
    };
    let backend = match docker {
        Some(b) => b,
        None => match DockerBackend::connect().await {
            Ok(b) => Arc::new(b),
            Err(e) => return Err(Outcome::early(RunState::Error, Conclusion::Error, e.to_string())),
        },
    };
    let (tx, rx) = mpsc::channel::<RunEvent>(1024);
    let recorder = tokio::spawn(super::record::record(st.clone(), run_ref(run), prepared.log_dir.clone(), rx));
    prepared.options.gate = Some(Arc::new(super::gates::ServerGate { st: st.clone(), run: run.id }));
    prepared.options.redeploy = run.spec.redeploy;
    let result = sched::execute(backend, &prepared.plan, prepared.options, tx, cancel).await;
    let lost = recorder.await.ok().flatten();
    let offered: Vec<String> = job.reuse.keys().cloned().collect();
    Ok(conclude(&dir, &offered, result.status, &result.steps, result.duration, lost))
}

/// Empties a run's log directory for an attempt: the logs are the attempt's own (an
/// earlier attempt's agent was lost, or the server stopped).
pub(crate) fn fresh_logs(run_dir: &std::path::Path) -> Result<PathBuf, String> {
    let logs = run_dir.join("logs");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).map_err(|e| format!("cannot create {}: {e}", logs.display()))?;
    Ok(logs)
}

/// The job of a run taken from the queue: its plan as stored, this attempt, and the
/// secrets' values read now.
pub(crate) fn job_for(st: &AppState, run: &Run, planned: &str) -> Result<Job, String> {
    let p: Planned = serde_json::from_str(planned).map_err(|e| format!("the stored plan is unreadable: {e}"))?;
    let mut job = p.job;
    job.attempt = run.attempts;
    // Three reports within a lease (one lost or late does not lose it), and at least every
    // 5 s: a cancel reaches the agent in its answer.
    job.heartbeat_ms = (st.cfg.agent_lease.as_millis() as u64 / 3).clamp(200, 5000);
    job.docker_run_id = docker_run_id(&st.cfg, run.id, run.attempts);
    job.secrets = if p.withheld {
        None
    } else {
        let all = match &st.cfg.secrets_file {
            Some(f) => {
                let text = std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
                crate::secrets::parse_dotenv(&text).map_err(|e| format!("{}: {e}", f.display()))?
            }
            None => Default::default(),
        };
        let mut values = std::collections::HashMap::new();
        for name in p.secrets {
            let v = all.get(&name).ok_or_else(|| format!("secret `{name}` is not in the secrets file any more"))?;
            values.insert(name, v.clone());
        }
        Some(values)
    };
    Ok(job)
}

/// The planner's facts of a run a delivery asked for (`orch ci --payload` uses it too, so
/// both plan a delivery alike); `None` for an event orch does not know.
pub fn context_of(spec: &super::db::NewRun, run_id: &str, changed: Option<Vec<String>>) -> Option<Context> {
    Some(Context {
        event: Some(Event::parse(&spec.event)?),
        branch: spec.branch.clone(),
        base_branch: spec.base_branch.clone(),
        tag: spec.tag.clone(),
        commit: spec.sha.clone(),
        pr: spec.pr,
        repo: spec.repo.clone(),
        run_id: run_id.to_string(),
        changed,
        schedule: spec.schedule.clone(),
        environment: spec.environment.clone(),
    })
}

/// Records a run's end (and what it owes GitHub), unless the server is stopping and the
/// run stopped with it, or the server stopped it because it lost the database: then it is
/// queued again.
pub(crate) async fn finish(st: &AppState, run: &Run, outcome: Outcome) {
    let reason_override = st.running.lock().ok().and_then(|mut m| m.remove(&run.id)).map(|(_, r)| r);
    if outcome.status == RunState::Queued {
        // Given back to the queue, not ended.
        st.wake.notify_one();
        return;
    }
    let given_back = st.given_back.lock().map(|mut g| g.remove(&run.id)).unwrap_or(false);
    if outcome.status == RunState::Cancelled && (st.shutting_down.load(Ordering::SeqCst) || given_back) {
        let why =
            if given_back { "this server lost the database while it ran" } else { "the server stopped while it ran" };
        // Unless another server took it over meanwhile (then it stays as that one ended it).
        let _ = st.db.requeue(run.id, format!("queued again: {why}")).await;
        tracing::info!(run = run.id, "run stopped ({why}); it is queued again");
        st.live.end(run.id, RunState::Queued);
        return;
    }
    let _ = std::fs::remove_dir_all(work_dir(&st.cfg, run.id));
    let reason =
        if outcome.status == RunState::Cancelled { reason_override.unwrap_or(outcome.reason) } else { outcome.reason };
    let update = Update::Finished {
        run: run_ref(run),
        conclusion: outcome.conclusion,
        description: reason.clone(),
        summary: outcome.summary,
        annotations: outcome.annotations,
    };
    if let Err(e) = st.report.finish(run.id, outcome.status, reason.clone(), update).await {
        tracing::error!(run = run.id, "cannot record the run's end: {e}");
    }
    st.live.end(run.id, outcome.status);
    // Its environment locks are free now: the deployments waiting for them look again.
    st.gates.notify_waiters();
    if outcome.status == RunState::Error {
        st.janitor.notify_one();
    }
    st.wake.notify_one();
    tracing::info!(run = run.id, status = outcome.status.as_str(), "run finished: {reason}");
}

/// The default branch's `.orch.yml` says which schedules its repository has (see
/// `schedule`). A failure is logged: the run goes on.
async fn record_schedules(st: &AppState, run: &Run, default_branch: &str, p: Option<&pipeline::Pipeline>) {
    match super::schedule::record(&st.db, &run.spec, default_branch, p, st.clock.now()).await {
        Ok(true) => {
            tracing::info!(run = run.id, repo = %run.spec.repo, "schedules updated from the default branch");
            st.schedules.notify_one();
        }
        Ok(false) => {}
        Err(e) => tracing::error!(run = run.id, "cannot record the schedules: {e}"),
    }
}

/// Fetches the run's commit into `work` and plans it; what an executor needs, or how the
/// run ends without one.
async fn plan(
    st: &Arc<AppState>,
    run: &Run,
    dir: &std::path::Path,
    work: &std::path::Path,
) -> Result<Planned, Outcome> {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| {
        Outcome::early(RunState::Error, Conclusion::Error, format!("cannot create {}: {e}", logs.display()))
    })?;
    let write_error = |text: &str| {
        let _ = std::fs::write(dir.join("error.txt"), text);
    };

    // 1. The commit.
    let git_ref = match (run.spec.event.as_str(), &run.spec.pr, &run.spec.tag, &run.spec.branch) {
        ("pull_request", Some(n), _, _) => format!("refs/pull/{n}/head"),
        ("tag", _, Some(t), _) => format!("refs/tags/{t}"),
        (_, _, _, Some(b)) => format!("refs/heads/{b}"),
        _ => run.spec.sha.clone(),
    };
    let (url, auth) = super::clone_source(st, &run.spec.clone_url, &run.spec.repo, run.spec.installation_id).await;
    let spec = FetchSpec {
        auth,
        url,
        git_ref,
        sha: run.spec.sha.clone(),
        depth: st.cfg.clone_depth,
        max_size: st.cfg.max_repo_size,
    };
    let w = work.to_path_buf();
    let fetch_spec = spec.clone();
    let fetched = tokio::task::spawn_blocking(move || checkout::fetch(&w, &fetch_spec)).await;
    match fetched {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            write_error(&e.to_string());
            return Err(Outcome::early(
                RunState::Error,
                Conclusion::Error,
                format!("could not fetch the commit: {}", e.message),
            ));
        }
        Err(e) => return Err(Outcome::early(RunState::Error, Conclusion::Error, format!("fetch task failed: {e}"))),
    }

    // 2. The pipeline, planned for the event.
    let file = work.join(".orch.yml");
    let default_branch =
        run.spec.default_branch.as_deref().filter(|d| {
            matches!(run.spec.event.as_str(), "push" | "schedule") && run.spec.branch.as_deref() == Some(*d)
        });
    if !file.exists() {
        if let Some(d) = default_branch {
            record_schedules(st, run, d, None).await;
        }
        return Err(Outcome::early(
            RunState::Failure,
            Conclusion::Failure,
            format!("no .orch.yml in {} at {}", run.spec.repo, short(&run.spec.sha)),
        ));
    }
    // Off the async threads: a hostile file can make the parser work.
    let loaded = tokio::task::spawn_blocking(move || pipeline::load_file(&file)).await;
    let loaded =
        loaded.map_err(|e| Outcome::early(RunState::Error, Conclusion::Error, format!("loading .orch.yml: {e}")))?;
    let pipeline = match loaded {
        Ok(p) => {
            if let Some(d) = default_branch {
                record_schedules(st, run, d, Some(&p)).await;
            }
            p
        }
        // An invalid file on the default branch keeps the schedules recorded before.
        Err(e) => {
            let text = e.to_string().replace(&work.display().to_string(), "");
            write_error(&text);
            let n = match &e {
                pipeline::ConfigError::Invalid { diagnostics, .. } => diagnostics.len(),
                _ => 1,
            };
            return Err(Outcome {
                status: RunState::Failure,
                conclusion: Conclusion::Failure,
                reason: format!("invalid .orch.yml: {n} problem{} (see the run page)", if n == 1 { "" } else { "s" }),
                summary: format!("`.orch.yml` is invalid:\n\n```\n{}\n```", crate::github::truncate(&text, 60_000)),
                annotations: Vec::new(),
            });
        }
    };
    // Who can push a branch must not rewrite the rules of the environments it deploys to:
    // they come from the default branch's file unless this run is on it.
    let mut pipeline = pipeline;
    let environments = if runs_trusted_file(&run.spec) || !pipeline.touches_environments() {
        None
    } else {
        let trusted = default_branch_environments(run, &spec, work).await;
        pipeline.govern_environments(&trusted);
        Some(trusted)
    };
    // A pull request delivery lists no files: they come from the base branch, as `orch ci`
    // finds them locally. Unknown (every `paths` condition holds) if that fails.
    let mut changed = run.spec.changed.clone();
    if let (None, "pull_request", Some(base)) = (&changed, run.spec.event.as_str(), run.spec.base_branch.clone()) {
        let w = work.to_path_buf();
        match tokio::task::spawn_blocking(move || checkout::pull_request_changes(&w, &spec, &base)).await {
            Ok(Ok(files)) => changed = Some(files),
            Ok(Err(e)) => tracing::warn!(run = run.id, "changed files unknown: {e}"),
            Err(e) => tracing::warn!(run = run.id, "changed files unknown: {e}"),
        }
    }
    let Some(context) = context_of(&run.spec, &run.id.to_string(), changed) else {
        return Err(Outcome::early(RunState::Error, Conclusion::Error, format!("unknown event `{}`", run.spec.event)));
    };
    let files = crate::git::workspace_files(work)
        .map_err(|e| Outcome::early(RunState::Error, Conclusion::Error, e.to_string()))?;
    let reuse = match (run.rerun_of, run.failed_only) {
        (Some(of), true) => kept_steps(st, of, dir).await,
        _ => Default::default(),
    };
    let cache_scopes = repo_cache_scopes(&run.spec.repo, &context, run.spec.default_branch.as_deref());
    let settings = Settings {
        jobs: st.cfg.jobs,
        grace: st.cfg.grace,
        log_limit: st.cfg.log_limit,
        isolation: st.cfg.isolation_for(&run.spec.repo, &run.spec.event),
    };
    let prepared = setup::prepare(Setup {
        pipeline: &pipeline,
        context: context.clone(),
        selection: Selection::default(),
        env: Vec::new(),
        // Code from a fork must not see the repository's secrets.
        secrets: if run.spec.fork { Secrets::Withheld } else { Secrets::File(st.cfg.secrets_file.clone()) },
        settings: settings.clone(),
        run_dir: dir.to_path_buf(),
        docker_run_id: String::new(),
        workspace: Workspace::Copy { root: work.to_path_buf(), files, base: None },
        cache: None,
        source_root: Some(work.to_path_buf()),
        reuse: reuse.clone(),
    });
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => {
            let text = e.to_string();
            write_error(&text);
            return Err(match e {
                SetupError::Plan(_) => {
                    Outcome::early(RunState::Failure, Conclusion::Failure, format!("cannot plan .orch.yml: {text}"))
                }
                SetupError::Invalid(_) | SetupError::MissingSecrets { .. } => {
                    Outcome::early(RunState::Failure, Conclusion::Failure, text)
                }
                SetupError::SecretsFile { .. } | SetupError::Io { .. } => {
                    tracing::error!(run = run.id, "{text}");
                    Outcome::early(RunState::Error, Conclusion::Error, text)
                }
            });
        }
    };
    if let Some(why) = &prepared.plan.not_triggered {
        return Err(Outcome::early(RunState::Skipped, Conclusion::Skipped, format!("not triggered: {why}")));
    }
    if prepared.plan.steps.is_empty() {
        return Err(Outcome::early(RunState::Skipped, Conclusion::Skipped, "no step runs for this event".into()));
    }

    // The steps' secrets and those of the environments they deploy to.
    let env_secrets = prepared.plan.environments.values().flat_map(|r| r.secrets.iter().cloned());
    let mut secrets: Vec<String> =
        prepared.plan.steps.iter().flat_map(|s| s.secrets.iter().cloned()).chain(env_secrets).collect();
    secrets.sort();
    secrets.dedup();
    Ok(Planned {
        job: Job {
            run: run.id,
            attempt: 0,
            docker_run_id: String::new(),
            context,
            secrets: None,
            jobs: settings.jobs,
            grace_ms: settings.grace.as_millis() as u64,
            log_limit: settings.log_limit,
            isolation: settings.isolation,
            reuse,
            cache_scopes,
            labels: prepared.plan.labels(),
            heartbeat_ms: 0,
            environments,
        },
        secrets,
        withheld: run.spec.fork,
    })
}

/// Whether a run's own `.orch.yml` sets the rules of its environments: a push or a
/// schedule on the repository's default branch. Every other run (another branch, a tag, a
/// pull request, a manual run, which may name any commit, and a deploy run or rollback,
/// whose older commit's file may predate today's rules) gets the default branch's rules
/// ([`default_branch_environments`]).
fn runs_trusted_file(spec: &NewRun) -> bool {
    matches!(spec.event.as_str(), "push" | "schedule")
        && spec.tag.is_none()
        && spec.default_branch.is_some()
        && spec.branch == spec.default_branch
}

/// The environment rules of the default branch's `.orch.yml` at its tip, fetched into the
/// run's repository at `work`; `Unknown` (no deployment goes) when it cannot be read.
async fn default_branch_environments(run: &Run, spec: &FetchSpec, work: &std::path::Path) -> TrustedEnvironments {
    let Some(branch) = run.spec.default_branch.clone() else {
        return TrustedEnvironments::Unknown(
            "its rules come from the repository's default branch, which this run does not name; \
             only runs on the default branch deploy"
                .into(),
        );
    };
    // Inside `.git`: never part of the workspace, and removed with the checkout.
    let target = work.join(".git").join("orch-default-branch");
    let (w, s, b, t) = (work.to_path_buf(), spec.clone(), branch.clone(), target.clone());
    let loaded = tokio::task::spawn_blocking(move || {
        let _ = std::fs::remove_dir_all(&t);
        let found = checkout::checkout_branch_into(&w, &s, &b, &t)
            .map_err(|e| format!("could not be fetched ({})", e.message))?;
        let file = t.join(".orch.yml");
        if !found || !file.is_file() {
            return Ok(None);
        }
        let p = pipeline::load_file(&file).map_err(|e| {
            let n = match &e {
                pipeline::ConfigError::Invalid { diagnostics, .. } => diagnostics.len(),
                _ => 1,
            };
            format!("is invalid ({n} problem{})", if n == 1 { "" } else { "s" })
        })?;
        Ok(Some(p.environments))
    })
    .await;
    let _ = std::fs::remove_dir_all(&target);
    let why = match loaded {
        // No file (or no branch) there: no environment has trusted rules.
        Ok(Ok(rules)) => return TrustedEnvironments::Rules(rules.unwrap_or_default()),
        Ok(Err(why)) => why,
        Err(e) => format!("could not be read ({e})"),
    };
    tracing::warn!(run = run.id, repo = %run.spec.repo, "the default branch's .orch.yml {why}: deployments refused");
    TrustedEnvironments::Unknown(format!(
        "its rules come from the default branch `{branch}`, whose .orch.yml {why}; \
         no deployment off the default branch until it can be read"
    ))
}

/// How a run ended, from what its executor reports: the steps' verdicts, and whether its
/// logs are whole.
pub(crate) fn conclude(
    dir: &std::path::Path,
    offered: &[String],
    status: RunStatus,
    steps: &[StepSummary],
    took: Duration,
    lost: Option<String>,
) -> Outcome {
    let logs = dir.join("logs");
    // Artifacts copied for a step the scheduler did not keep (something it needs ran again)
    // and that did not collect new ones are not this run's.
    for s in steps.iter().filter(|s| offered.contains(&s.step)) {
        let kept = s.status == StepStatus::Passed && s.attempts == 0;
        if !kept && s.artifacts.is_empty() {
            let _ = std::fs::remove_dir_all(dir.join("artifacts").join(crate::plan::slug(&s.step)));
        }
    }

    let (status, conclusion) = match status {
        RunStatus::Success => (RunState::Success, Conclusion::Success),
        RunStatus::Failure => (
            RunState::Failure,
            if steps.iter().any(|s| s.status == StepStatus::TimedOut && !s.allowed_failure) {
                Conclusion::TimedOut
            } else {
                Conclusion::Failure
            },
        ),
        RunStatus::Cancelled => (RunState::Cancelled, Conclusion::Cancelled),
        RunStatus::Error => (RunState::Error, Conclusion::Error),
    };
    let mut annotations = Vec::new();
    for s in steps.iter().filter(|s| matches!(s.status, StepStatus::Failed | StepStatus::TimedOut)) {
        let log = logs.join(format!("{}.log", crate::plan::slug(&s.step)));
        if let Ok(f) = std::fs::File::open(&log) {
            annotations.extend(annotations_from_log(std::io::BufReader::new(f), 1000));
        }
    }
    // A run whose logs are not whole is not a verdict anyone can check: an error of the
    // machine (its disk), whatever the steps did.
    if let Some(why) = lost
        && status != RunState::Cancelled
    {
        return Outcome {
            status: RunState::Error,
            conclusion: Conclusion::Error,
            reason: why.clone(),
            summary: format!("{why}\n\n{}", summary(steps, took)),
            annotations,
        };
    }
    Outcome { status, conclusion, reason: describe(steps, took), summary: summary(steps, took), annotations }
}

/// The steps of run `of` that passed, to keep in a re-run of its failed steps; their
/// artifacts are copied into this run's directory first.
async fn kept_steps(st: &AppState, of: i64, dir: &std::path::Path) -> std::collections::HashMap<String, StepSummary> {
    let rows = match st.db.steps(of).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(run = of, "cannot read the steps to keep: {e}; every step runs");
            return Default::default();
        }
    };
    let old = run_dir(&st.cfg, of).join("artifacts");
    let mut kept = std::collections::HashMap::new();
    for r in rows.into_iter().filter(|r| r.status == StepState::Passed) {
        let name = crate::plan::slug(&r.name);
        let from = old.join(&name);
        if from.is_dir()
            && let Err(e) = copy_dir(&from, &dir.join("artifacts").join(&name))
        {
            tracing::warn!(run = of, step = %r.name, "cannot copy the artifacts: {e}; the step runs again");
            continue;
        }
        kept.insert(
            r.name.clone(),
            StepSummary {
                exit_code: r.exit_code,
                ..StepSummary::new(r.name, StepStatus::Passed, Some(format!("kept from run {of}")))
            },
        );
    }
    kept
}

/// Copies a kept step's artifacts (files and links, read and written beneath the two
/// directories) into a new run's.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    use crate::confined::{Kind, Root};
    let (src, dst) = (Root::open(from)?, Root::create(to)?);
    for f in src.walk("", crate::exec::MAX_ARTIFACT_FILES)? {
        match f.kind {
            Kind::File => {
                let mut r = src.open_file(&f.path)?;
                let mode = r.metadata().map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))?;
                std::io::copy(&mut r, &mut dst.create_file(&f.path, mode)?)?;
            }
            Kind::Symlink => dst.symlink(&src.read_link(&f.path)?, &f.path)?,
            Kind::Dir | Kind::Other => {}
        }
    }
    Ok(())
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(8)]
}

/// One line for a status description: `3 passed, 1 failed (unit) in 12.3s`.
fn describe(steps: &[StepSummary], took: Duration) -> String {
    let tally = format!("{} in {}", sched::tally(steps, true), crate::fmt::duration(took));
    // A step that could not run says why (the machine's fault, not the pipeline's).
    let errored = steps.iter().find(|s| s.status == StepStatus::Error && !s.allowed_failure);
    match errored.and_then(|s| Some((&s.step, s.message.as_deref()?))) {
        Some((step, why)) => format!("{tally}; {step}: {why}"),
        None => tally,
    }
}

/// The check run summary: a Markdown table of steps.
fn summary(steps: &[StepSummary], took: Duration) -> String {
    let mut s = format!("{}\n\n| step | result | time | note |\n|---|---|---|---|\n", describe(steps, took));
    for st in steps {
        let icon = match st.status {
            StepStatus::Passed => "✅",
            StepStatus::Skipped => "⏭️",
            _ if st.allowed_failure => "⚠️",
            _ => "❌",
        };
        let time = if st.status == StepStatus::Skipped { "-".into() } else { crate::fmt::duration(st.duration) };
        let note = st.message.clone().unwrap_or_default().replace('|', "\\|").replace('\n', " ");
        s.push_str(&format!("| `{}` | {icon} {} | {time} | {note} |\n", st.step, st.status.label()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_repository_has_its_own_cache_scopes() {
        let ctx = crate::plan::Context {
            event: Some(Event::PullRequest),
            branch: Some("topic".into()),
            pr: Some(7),
            ..crate::plan::Context::default()
        };
        assert_eq!(repo_cache_scopes("acme/a", &ctx, Some("main")), ["acme/a/pr:7", "acme/a/branch:main"]);
        assert_eq!(repo_cache_scopes("acme/b", &ctx, None), ["acme/b/pr:7", "acme/b/branch:main"]);
    }
}
