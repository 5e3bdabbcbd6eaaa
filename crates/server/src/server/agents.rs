//! Agents: machines that execute the server's planned runs (`orch agent`). An agent
//! connects out and asks for work (a long poll, answered as soon as a run it fits is
//! planned); the run is leased to it, and every report it sends extends the lease. A run
//! whose lease runs out is queued again (a bounded number of times) for another executor,
//! and the attempt number in every report's path fences the old agent off: a run never has
//! two writers.
//!
//! Protocol (bearer token of the agent, JSON unless said):
//! - `POST /api/agent/claim` `{labels, capacity, running, version, protocol}`: 200 with a [`Job`],
//!   or 204 after [`MAX_WAIT`] without one; 426 to an agent whose `protocol` is older than
//!   [`crate::job::PROTOCOL`].
//! - `GET /api/agent/runs/{id}/{attempt}/source`: the checkout, a tar stream.
//! - `POST /api/agent/runs/{id}/{attempt}/events` `{events: [RunEvent], failed, give_back}`:
//!   the run's events in order (at least every few seconds: it is the lease's heartbeat);
//!   `failed`: the agent could not run it, and why; `give_back`: it will not (its Docker
//!   does not answer), and the run is queued again. Answers `{cancel}`: whether to stop.
//! - `PUT /api/agent/runs/{id}/{attempt}/artifacts`: the artifacts, a tar stream, before the
//!   event that ends the run.
//!
//! A report for an attempt that is not the run's running one gets 409.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::db::RunState;
use super::worker::{self, Outcome};
use crate::github::Conclusion;
use crate::sched::{Cancel, RunEvent};

/// How long a claim waits for work before it answers 204 (under the minute an ordinary
/// reverse proxy allows an idle request).
pub const MAX_WAIT: Duration = Duration::from_secs(25);

/// The largest batch of events an agent sends (it sends smaller ones).
const MAX_EVENTS_BODY: usize = 64 * 1024 * 1024;

/// A run an agent executes: where its events go.
struct Remote {
    attempt: i64,
    agent: String,
    events: mpsc::Sender<RunEvent>,
    recorder: tokio::task::JoinHandle<Option<String>>,
    offered: Vec<String>,
}

/// The runs agents execute now.
#[derive(Default)]
pub struct Remotes(std::sync::Mutex<HashMap<i64, Remote>>);

impl Remotes {
    fn take(&self, id: i64) -> Option<Remote> {
        self.0.lock().ok()?.remove(&id)
    }
    fn sender(&self, id: i64, attempt: i64, agent: &str) -> Option<mpsc::Sender<RunEvent>> {
        let m = self.0.lock().ok()?;
        m.get(&id).filter(|r| r.attempt == attempt && r.agent == agent).map(|r| r.events.clone())
    }
}

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/agent/claim", post(claim))
        .route("/api/agent/runs/{id}/{attempt}/source", get(source))
        .route("/api/agent/runs/{id}/{attempt}/events", post(events).layer(DefaultBodyLimit::max(MAX_EVENTS_BODY)))
        .route("/api/agent/runs/{id}/{attempt}/artifacts", put(artifacts).layer(DefaultBodyLimit::disable()))
        .route("/api/agent/runs/{id}/{attempt}/gate", post(gate))
        .route("/api/agent/runs/{id}/{attempt}/gate/finished", post(gate_finished))
        .route("/api/agents", get(list))
}

/// The SHA-256 of a token, as stored.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// A new agent token: 32 random bytes, hex (from the kernel's generator).
pub fn new_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(format!("orch_agent_{}", hex::encode(b)))
}

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    super::reply(code, json!({ "error": msg.into() }))
}

/// The agent a request's bearer token names: the extractor of every agent endpoint; 401
/// for none, an unknown or a revoked token.
struct Agent(String);

impl axum::extract::FromRequestParts<Arc<AppState>> for Agent {
    type Rejection = Response;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        st: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        agent(st, &parts.headers).await.map(Agent)
    }
}

async fn agent(st: &AppState, headers: &HeaderMap) -> Result<String, Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let unauthorized = || error(StatusCode::UNAUTHORIZED, "missing, unknown or revoked agent token");
    let Some(token) = token.filter(|t| !t.is_empty()) else { return Err(unauthorized()) };
    match st.db.agent_by_token(token_hash(token)).await {
        Ok(Some(name)) => Ok(name),
        Ok(None) => Err(unauthorized()),
        Err(e) => Err(error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[derive(Deserialize)]
struct ClaimBody {
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    capacity: i64,
    #[serde(default)]
    running: i64,
    #[serde(default)]
    version: String,
    /// What the agent understands a job to be ([`crate::job::PROTOCOL`]); 0: an agent from
    /// before it said.
    #[serde(default)]
    protocol: u32,
    /// Milliseconds to wait for work, at most [`MAX_WAIT`].
    wait_ms: Option<u64>,
}

/// `POST /api/agent/claim`.
async fn claim(State(st): State<Arc<AppState>>, Agent(name): Agent, body: axum::body::Bytes) -> Response {
    let body: ClaimBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("the body is not a claim: {e}")),
    };
    let labels = crate::job::parse_labels(&body.labels);
    if let Err(e) = st.db.agent_seen(name.clone(), labels.clone(), body.capacity, body.running, body.version).await {
        return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    }
    // An older agent would run today's jobs wrongly (e.g. plan a branch's deployment with
    // the branch's own rules): it gets none, and says why.
    if body.protocol < crate::job::PROTOCOL {
        return error(
            StatusCode::UPGRADE_REQUIRED,
            format!(
                "this agent speaks job protocol {}, the server {}: install the server's orch version on the agent",
                body.protocol,
                crate::job::PROTOCOL
            ),
        );
    }
    // Its room may let the planner plan more.
    st.wake.notify_one();
    let wait = body.wait_ms.map_or(MAX_WAIT, Duration::from_millis).min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let mut ready = st.ready.subscribe();
    loop {
        if st.shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
            return StatusCode::NO_CONTENT.into_response();
        }
        // Seen before looking: a run planned meanwhile wakes the wait below.
        ready.borrow_and_update();
        let lease = now_ms() + st.cfg.agent_lease.as_millis() as i64;
        match st.db.dispatch(Some(name.clone()), labels.clone(), Some(lease)).await {
            Ok(Some((run, _))) if !worker::work_dir(&st.cfg, run.id).is_dir() => {
                let why = "queued again: its checkout was gone from the server".to_string();
                let _ = st.db.release(run.id, run.attempts, Some(name.clone()), why).await;
                st.wake.notify_one();
                continue;
            }
            Ok(Some((run, planned))) => match start(&st, &run, &planned, &name) {
                Ok(job) => {
                    st.report.owe(crate::github::Update::Started(worker::run_ref(&run))).await;
                    tracing::info!(run = run.id, attempt = run.attempts, agent = %name, "run leased to an agent");
                    return super::reply(StatusCode::OK, json!(job));
                }
                Err(why) => {
                    worker::finish(&st, &run, Outcome::early(RunState::Error, Conclusion::Error, why)).await;
                    continue;
                }
            },
            Ok(None) => {}
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
        tokio::select! {
            _ = ready.changed() => {}
            _ = tokio::time::sleep_until(deadline) => return StatusCode::NO_CONTENT.into_response(),
        }
    }
}

/// A run leased to `agent`: its job, and where its events go (the recorder, as for a run
/// executed here).
fn start(st: &Arc<AppState>, run: &super::db::Run, planned: &str, agent: &str) -> Result<crate::job::Job, String> {
    let job = worker::job_for(st, run, planned)?;
    let (tx, rx) = mpsc::channel::<RunEvent>(1024);
    let logs = worker::fresh_logs(&worker::run_dir(&st.cfg, run.id))?;
    let recorder = tokio::spawn(super::record::record(st.clone(), worker::run_ref(run), logs, rx));
    if let Ok(mut m) = st.running.lock() {
        m.insert(run.id, (Cancel::default(), "cancelled".into()));
    }
    let remote = Remote {
        attempt: run.attempts,
        agent: agent.to_string(),
        events: tx,
        recorder,
        offered: job.reuse.keys().cloned().collect(),
    };
    if let Ok(mut m) = st.remote.0.lock() {
        m.insert(run.id, remote);
    }
    Ok(job)
}

/// Forgets an agent's run that left it (queued again, or ended by the server): its
/// recorder ends here (the next attempt starts a new one).
async fn forget(st: &AppState, id: i64) {
    if let Some(r) = st.remote.take(id) {
        drop(r.events);
        let _ = r.recorder.await;
    }
    st.running.lock().ok().map(|mut m| m.remove(&id));
}

/// Checks that `attempt` of run `id` is `agent`'s and extends its lease.
async fn fence(st: &AppState, agent: &str, id: i64, attempt: i64) -> Result<(), Response> {
    let until = now_ms() + st.cfg.agent_lease.as_millis() as i64;
    match st.db.extend_lease(id, attempt, agent.to_string(), until).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(error(StatusCode::CONFLICT, format!("attempt {attempt} of run {id} is not yours (any more)"))),
        Err(e) => Err(error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}

/// How long a gate request of an agent waits before it answers `pending` (the agent asks
/// again): well under what a plain reverse proxy lets a request take.
const GATE_POLL: std::time::Duration = std::time::Duration::from_secs(25);

/// `POST /api/agent/runs/{id}/{attempt}/gate`: the decision of a deployment gate (a
/// `GateRequest` in the body), or `{"pending": true}` after a while without one; with
/// `waiting`, what it last waited for (or null).
async fn gate(
    State(st): State<Arc<AppState>>,
    Agent(name): Agent,
    Path((id, attempt)): Path<(i64, i64)>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = fence(&st, &name, id, attempt).await {
        return r;
    }
    let req: crate::sched::GateRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("a gate request: {e}")),
    };
    // What the gate waits for goes back with the answer; the agent shows it in the run.
    let waiting = std::sync::Mutex::new(None::<String>);
    let say = |text: &str| *waiting.lock().unwrap_or_else(|e| e.into_inner()) = Some(text.to_string());
    let decided = super::gates::decide(&st, id, req, Some(GATE_POLL), &say).await;
    let waiting = waiting.into_inner().unwrap_or_else(|e| e.into_inner());
    match decided {
        Some(decision) => super::reply(StatusCode::OK, json!({ "decision": decision, "waiting": waiting })),
        None => super::reply(StatusCode::OK, json!({ "pending": true, "waiting": waiting })),
    }
}

#[derive(Deserialize)]
struct GateEnded {
    environment: String,
    status: crate::sched::DeploymentStatus,
}

/// `POST /api/agent/runs/{id}/{attempt}/gate/finished`: the run's deployments to an
/// environment ended (`{environment, status}`): its lock goes to the next in line.
async fn gate_finished(
    State(st): State<Arc<AppState>>,
    Agent(name): Agent,
    Path((id, attempt)): Path<(i64, i64)>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = fence(&st, &name, id, attempt).await {
        return r;
    }
    let ended: GateEnded = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("expected {{\"environment\", \"status\"}}: {e}")),
    };
    super::gates::finished(&st, id, &ended.environment, ended.status).await;
    super::reply(StatusCode::OK, json!({ "released": ended.environment }))
}

/// `GET /api/agent/runs/{id}/{attempt}/source`: the run's checkout as a tar stream.
async fn source(
    State(st): State<Arc<AppState>>,
    Agent(name): Agent,
    Path((id, attempt)): Path<(i64, i64)>,
) -> Response {
    if let Err(r) = fence(&st, &name, id, attempt).await {
        return r;
    }
    let work = worker::work_dir(&st.cfg, id);
    if !work.is_dir() {
        let why = "queued again: its checkout was gone from the server".to_string();
        if st.db.release(id, attempt, Some(name.clone()), why).await.unwrap_or(false) {
            forget(&st, id).await;
            st.wake.notify_one();
        }
        return error(StatusCode::CONFLICT, format!("run {id}'s checkout is gone: it is queued again"));
    }
    let (stream, _) = crate::tree::stream(work, |w| crate::git::workspace_files(w).map_err(std::io::Error::other));
    ([(header::CONTENT_TYPE, "application/x-tar")], Body::from_stream(stream)).into_response()
}

#[derive(Deserialize)]
struct EventsBody {
    #[serde(default)]
    events: Vec<RunEvent>,
    /// The agent could not run the job, and why.
    failed: Option<String>,
    /// The agent gives the run back unstarted (its Docker does not answer), and why: it
    /// is queued again for another executor.
    give_back: Option<String>,
}

/// `POST /api/agent/runs/{id}/{attempt}/events`.
async fn events(
    State(st): State<Arc<AppState>>,
    Agent(name): Agent,
    Path((id, attempt)): Path<(i64, i64)>,
    body: axum::body::Bytes,
) -> Response {
    let body: EventsBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("the body is not a batch of events: {e}")),
    };
    if let Err(r) = fence(&st, &name, id, attempt).await {
        return r;
    }
    // The recorder of this attempt (gone if this server restarted since: then the run is
    // queued again, and this attempt is over).
    let Some(tx) = st.remote.sender(id, attempt, &name) else {
        let why = "queued again: the server lost its agent's events".to_string();
        if st.db.release(id, attempt, Some(name.clone()), why).await.unwrap_or(false) {
            st.wake.notify_one();
        }
        return error(StatusCode::CONFLICT, format!("run {id} is not executing on this server: it is queued again"));
    };
    if let Some(why) = body.give_back {
        let reason = format!("queued again: agent `{name}` gave it back ({why})");
        if st.db.give_back(id, attempt, name.clone(), reason).await.unwrap_or(false) {
            drop(tx);
            forget(&st, id).await;
            st.ready.send_modify(|n| *n += 1);
        }
        return super::reply(StatusCode::OK, json!({ "cancel": false, "done": true }));
    }
    let mut finished = None;
    for ev in body.events {
        if let RunEvent::RunFinished { status, duration, steps } = &ev {
            finished = Some((*status, *duration, steps.clone()));
        }
        if tx.send(ev).await.is_err() {
            break;
        }
    }
    drop(tx);
    if finished.is_some() || body.failed.is_some() {
        end(&st, id, finished, body.failed).await;
        return super::reply(StatusCode::OK, json!({ "cancel": false, "done": true }));
    }
    let cancel = st.running.lock().ok().and_then(|m| m.get(&id).map(|(c, _)| c.graceful.is_cancelled()));
    super::reply(StatusCode::OK, json!({ "cancel": cancel.unwrap_or(false) }))
}

/// An agent's run ended (or could not start): its record is closed and its end stored.
async fn end(
    st: &Arc<AppState>,
    id: i64,
    finished: Option<(crate::sched::RunStatus, Duration, Vec<crate::sched::StepSummary>)>,
    failed: Option<String>,
) {
    let Some(remote) = st.remote.take(id) else { return };
    let Remote { events, recorder, offered, .. } = remote;
    drop(events);
    let lost = recorder.await.ok().flatten();
    let run = match st.db.run(id).await {
        Ok(Some(r)) => r,
        _ => return,
    };
    let outcome = match (finished, failed) {
        (_, Some(why)) => Outcome::early(RunState::Error, Conclusion::Error, why),
        (Some((status, took, steps)), None) => {
            worker::conclude(&worker::run_dir(&st.cfg, id), &offered, status, &steps, took, lost)
        }
        (None, None) => return,
    };
    worker::finish(st, &run, outcome).await;
}

/// `PUT /api/agent/runs/{id}/{attempt}/artifacts`: unpacked beneath the run's artifacts.
async fn artifacts(
    State(st): State<Arc<AppState>>,
    Agent(name): Agent,
    Path((id, attempt)): Path<(i64, i64)>,
    body: Body,
) -> Response {
    if let Err(r) = fence(&st, &name, id, attempt).await {
        return r;
    }
    // Spooled to a file of the server's, then unpacked off the async threads.
    let tmp_dir = st.cfg.data_dir.join("tmp");
    let _ = std::fs::create_dir_all(&tmp_dir);
    let spool = match tempfile::NamedTempFile::new_in(&tmp_dir) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::INSUFFICIENT_STORAGE, format!("cannot spool the artifacts: {e}")),
    };
    let mut file = match spool.reopen() {
        Ok(f) => tokio::fs::File::from_std(f),
        Err(e) => return error(StatusCode::INSUFFICIENT_STORAGE, e.to_string()),
    };
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("the upload broke off: {e}")),
        };
        if let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut file, &chunk).await {
            return error(StatusCode::INSUFFICIENT_STORAGE, format!("cannot spool the artifacts: {e}"));
        }
    }
    // tokio's file writes in the background: the last one must be done before the spool
    // is read.
    if let Err(e) = tokio::io::AsyncWriteExt::flush(&mut file).await {
        return error(StatusCode::INSUFFICIENT_STORAGE, format!("cannot spool the artifacts: {e}"));
    }
    let dest = worker::run_dir(&st.cfg, id).join("artifacts");
    let unpacked = tokio::task::spawn_blocking(move || -> std::io::Result<usize> {
        let root = crate::confined::Root::create(&dest)?;
        let f = spool.reopen()?;
        Ok(crate::tree::unpack(std::io::BufReader::new(f), &root)?.len())
    })
    .await;
    match unpacked {
        Ok(Ok(n)) => super::reply(StatusCode::OK, json!({ "files": n })),
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, format!("cannot unpack the artifacts: {e}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /api/agents`: the agents, what they said of themselves, what they run.
async fn list(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(r) = super::api::authorize_read(&st, &headers) {
        return *r;
    }
    match st.db.agents().await {
        Ok(rows) => super::reply(StatusCode::OK, json!({ "agents": rows })),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Agents that asked for work or reported within this long count as connected.
pub const CONNECTED: i64 = 60;

/// Planned runs that no connected executor fits (their agents are away) kept at most: their
/// checkouts wait on the server's disk. Past it nothing more is planned until one goes.
pub const MAX_UNFIT: i64 = 64;

/// Whether the planner may plan another run: the planned runs waiting for an executor that
/// exists (this server, or an agent connected lately) are fewer than those executors' room,
/// and those none fits are fewer than [`MAX_UNFIT`].
pub async fn room_to_plan(st: &AppState) -> Result<bool, super::db::DbError> {
    let mut executors: Vec<(Vec<String>, i64)> = Vec::new();
    if st.cfg.local_capacity > 0 {
        executors.push((st.cfg.labels.clone(), st.cfg.local_capacity as i64));
    }
    let now = super::db::now();
    for a in st.db.agents().await? {
        if a.revoked_at.is_none() && a.last_seen.is_some_and(|t| now - t <= CONNECTED) {
            executors.push((a.labels, a.capacity.unwrap_or(1).max(1)));
        }
    }
    let room: i64 = executors.iter().map(|(_, c)| c).sum::<i64>() + 2;
    let ready = st.db.ready_labels().await?;
    let fit = ready.iter().filter(|need| executors.iter().any(|(have, _)| crate::job::fits(need, have))).count() as i64;
    let unfit = ready.len() as i64 - fit;
    // Those being planned count on both sides: their labels are not known yet.
    let planning = st.db.count_planning().await?;
    Ok(fit + planning < room && unfit + planning < MAX_UNFIT)
}

/// Queues again the runs whose agent's lease ran out (or ends them, past the retries), every
/// second until `stop`.
pub async fn reaper(st: Arc<AppState>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return,
        }
        let reaped = st.db.reap_lost(now_ms(), st.cfg.agent_retries as i64, st.report.owe_ended()).await;
        let (again, ended) = match reaped {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("cannot look for lost agents: {e}");
                continue;
            }
        };
        for run in again.iter().chain(&ended) {
            forget(&st, run.id).await;
        }
        for run in &again {
            tracing::warn!(run = run.id, "{}", run.reason.as_deref().unwrap_or("queued again"));
            st.live.end(run.id, RunState::Queued);
        }
        if !again.is_empty() {
            st.ready.send_modify(|n| *n += 1);
        }
        for run in &ended {
            tracing::error!(run = run.id, "{}", run.reason.as_deref().unwrap_or("its agent was lost"));
            let _ = std::fs::remove_dir_all(worker::work_dir(&st.cfg, run.id));
            st.live.end(run.id, RunState::Error);
        }
        if !ended.is_empty() {
            st.report.poke();
            st.janitor.notify_one();
        }
    }
}
