//! `orch agent`: executes a server's planned runs on this machine's Docker. It connects out
//! to the server (no port of its own), asks for work with a long poll, and for each job:
//! downloads the checkout, plans it with the same set-up as every face
//! (`job::prepare`), executes it with the same scheduler, and sends the events back in
//! order (they are the lease's heartbeat); the artifacts go up before the run's last event.
//! `orch agent-token` manages the tokens agents present.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::{Method, Request, StatusCode, header};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, exit};
use crate::exec::docker::DockerBackend;
use crate::job::Job;
use crate::sched::{self, Cancel, RunEvent};

#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// The orch server: https:// (a TLS-terminating reverse proxy in front of it), or
    /// http:// on a network you trust (jobs carry the secrets their steps name).
    #[arg(long, env = "ORCH_SERVER")]
    pub server: String,
    /// This agent's token (`orch agent-token create NAME` on the server).
    #[arg(long, env = "ORCH_AGENT_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Runs executed at once.
    #[arg(long, env = "ORCH_CAPACITY", default_value_t = 1)]
    pub capacity: usize,
    /// This machine's labels (pipelines ask for them with `runs_on`).
    #[arg(long, env = "ORCH_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Where checkouts, run directories and caches live [default: /var/lib/orch-agent as
    /// root, else ~/.local/share/orch-agent].
    #[arg(long, env = "ORCH_AGENT_DIR")]
    pub dir: Option<PathBuf>,
    /// The step caches' size limit (`500M`, `20G`) [default: 5G].
    #[arg(long, env = "ORCH_CACHE_MAX")]
    pub cache_max: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create an agent and print its token (shown once; only its hash is stored).
    Create { name: String },
    /// List the agents: labels, capacity, runs now, last seen, revoked.
    List,
    /// Revoke an agent's token: its next request gets 401.
    Revoke { name: String },
}

type Http = Client<HttpsConnector<HttpConnector>, BoxBody<Bytes, std::io::Error>>;

/// The agent's side of the server.
struct Server {
    base: String,
    token: String,
    http: Http,
}

/// What a request to the server came to.
enum Answer {
    Ok(StatusCode, Bytes),
    /// The attempt is not this agent's any more (409).
    Fenced,
}

impl Server {
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: BoxBody<Bytes, std::io::Error>,
    ) -> Result<axum::http::Response<axum::body::Body>, String> {
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .map_err(|e| e.to_string())?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| format!("cannot reach {}: {}", self.base, crate::fmt::root_cause(&e)))?;
        Ok(resp.map(axum::body::Body::new))
    }

    /// Sends a JSON body (or none); errors name the path and what the server said.
    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Answer, String> {
        let bytes = body.map(|v| Bytes::from(v.to_string())).unwrap_or_default();
        let resp = self.request(method, path, full(bytes)).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(|e| format!("{path}: {e}"))?.to_bytes();
        if status == StatusCode::CONFLICT {
            return Ok(Answer::Fenced);
        }
        if !status.is_success() {
            let msg = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
            return Err(format!("{path} ({}): {msg}", status.as_u16()));
        }
        Ok(Answer::Ok(status, body))
    }
}

fn full(b: Bytes) -> BoxBody<Bytes, std::io::Error> {
    Full::new(b).map_err(|never| match never {}).boxed()
}

/// `orch agent`.
pub async fn run(args: AgentArgs) -> Result<u8, Error> {
    let base = crate::client::server_base(&args.server, "--server")?;
    if args.capacity == 0 {
        return Err(Error::Usage("--capacity must be at least 1".into()));
    }
    let labels = crate::job::parse_labels(&args.labels);
    let dir = args.dir.clone().unwrap_or_else(default_dir);
    let cache_max = match &args.cache_max {
        Some(s) => crate::cache::parse_size(s)
            .ok_or_else(|| Error::Usage(format!("--cache-max must be a size such as 500M or 20G, got `{s}`")))?,
        None => crate::cache::DEFAULT_MAX_BYTES,
    };
    for d in ["work", "runs", "tmp"] {
        let p = dir.join(d);
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).map_err(|e| Error::io(format!("cannot create {}", p.display()), e))?;
    }
    // Fail closed, as the server does: a pull request's steps must not reach this
    // machine's services (the agent's own port-less, but not the host's others).
    crate::exec::firewall::ensure().map_err(|e| {
        Error::Usage(format!("{e}; pull requests' steps could reach this machine's services. Run orch agent as root"))
    })?;
    let docker = Arc::new(DockerBackend::connect().await?);
    // What runs of a killed agent left in Docker.
    if let Ok(r) = docker.gc(true).await
        && !r.runs.is_empty()
    {
        tracing::warn!(runs = ?r.runs, "removed what killed runs left in Docker");
    }
    let server = Arc::new(Server { base, token: args.token.clone(), http: crate::client::http_client()? });
    let agent = Arc::new(Agent {
        server,
        docker,
        labels,
        capacity: args.capacity,
        running: AtomicUsize::new(0),
        docker_away: std::sync::atomic::AtomicBool::new(false),
        cache: Arc::new(crate::cache::CacheStore::new(dir.join("cache"), cache_max)),
        dir,
    });
    eprintln!(
        "orch agent: {} slot{} for {}{}",
        agent.capacity,
        if agent.capacity == 1 { "" } else { "s" },
        agent.server.base,
        if agent.labels.is_empty() { String::new() } else { format!(", labels {}", agent.labels.join(",")) }
    );
    // First SIGINT/SIGTERM: take no more work, finish what runs. Second: stop it.
    let drain = CancellationToken::new();
    let kill = CancellationToken::new();
    {
        let (drain, kill) = (drain.clone(), kill.clone());
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut i), Ok(mut t)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
                return;
            };
            for token in [drain, kill] {
                tokio::select! {
                    _ = i.recv() => {}
                    _ = t.recv() => {}
                }
                token.cancel();
            }
        });
    }
    let mut slots = tokio::task::JoinSet::new();
    for _ in 0..agent.capacity {
        slots.spawn(agent.clone().slot(drain.clone(), kill.clone()));
    }
    let mut result = Ok(exit::SUCCESS);
    while let Some(r) = slots.join_next().await {
        if let Ok(Err(e)) = r {
            drain.cancel();
            result = Err(e);
        }
    }
    result
}

fn default_dir() -> PathBuf {
    let root = rustix::process::geteuid().is_root();
    if root {
        return PathBuf::from("/var/lib/orch-agent");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/orch-agent")
}

struct Agent {
    server: Arc<Server>,
    docker: Arc<DockerBackend>,
    labels: Vec<String>,
    capacity: usize,
    running: AtomicUsize,
    /// Whether this machine's Docker stopped answering (said once).
    docker_away: std::sync::atomic::AtomicBool,
    cache: Arc<crate::cache::CacheStore>,
    dir: PathBuf,
}

impl Agent {
    /// One slot: asks for a job, runs it, again, until `drain`.
    async fn slot(self: Arc<Self>, drain: CancellationToken, kill: CancellationToken) -> Result<(), Error> {
        let mut backoff = Duration::from_millis(500);
        while !drain.is_cancelled() {
            // No work is taken while this machine's Docker does not answer (restarting):
            // the server's runs wait for an agent that can run them.
            if let Err(e) = self.docker.ping().await {
                if !self.docker_away.swap(true, Ordering::Relaxed) {
                    tracing::warn!("Docker does not answer ({e}): no work is taken until it does");
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = drain.cancelled() => break,
                }
                continue;
            }
            if self.docker_away.swap(false, Ordering::Relaxed) {
                tracing::info!("Docker answers again: taking work");
            }
            let claim = json!({
                "labels": self.labels,
                "capacity": self.capacity,
                "running": self.running.load(Ordering::Relaxed),
                "version": env!("CARGO_PKG_VERSION"),
                "protocol": crate::job::PROTOCOL,
            });
            let answer = tokio::select! {
                a = self.server.call(Method::POST, "/api/agent/claim", Some(&claim)) => a,
                _ = drain.cancelled() => break,
            };
            match answer {
                Ok(Answer::Ok(StatusCode::OK, body)) => {
                    backoff = Duration::from_millis(500);
                    let job: Job = match serde_json::from_slice(&body) {
                        Ok(j) => j,
                        Err(e) => {
                            return Err(Error::Remote(format!("the server sent a job this agent cannot read: {e}")));
                        }
                    };
                    // Docker may have stopped while the claim waited: the run goes back.
                    if let Err(e) = self.docker.ping().await {
                        let path = format!("/api/agent/runs/{}/{}/events", job.run, job.attempt);
                        let body = json!({ "events": [], "give_back": format!("Docker does not answer: {e}") });
                        let _ = self.server.call(Method::POST, &path, Some(&body)).await;
                        tracing::warn!(run = job.run, "Docker does not answer ({e}): the run goes back to the server");
                        continue;
                    }
                    self.running.fetch_add(1, Ordering::Relaxed);
                    self.execute(job, kill.clone()).await;
                    self.running.fetch_sub(1, Ordering::Relaxed);
                }
                Ok(_) => backoff = Duration::from_millis(500),
                Err(e) if e.contains("(401)") => {
                    return Err(Error::Usage(format!("the server refused this agent's token: {e}")));
                }
                Err(e) if e.contains("(426)") => return Err(Error::Usage(e)),
                Err(e) => {
                    tracing::warn!("cannot get work: {e}; again in {backoff:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = drain.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        Ok(())
    }

    /// Executes one job and reports it; never fails (what goes wrong is reported).
    async fn execute(&self, job: Job, kill: CancellationToken) {
        let path = format!("/api/agent/runs/{}/{}", job.run, job.attempt);
        tracing::info!(run = job.run, attempt = job.attempt, "job taken");
        let (work, run_dir) = job_dirs(&self.dir, &job);
        let _ = std::fs::remove_dir_all(&work);
        let _ = std::fs::remove_dir_all(&run_dir);
        let cancel = Cancel::default();
        let (tx, rx) = mpsc::channel::<RunEvent>(1024);
        let heartbeat = Duration::from_millis(job.heartbeat_ms.max(200));
        let sender = tokio::spawn(send_events(
            self.server.clone(),
            path.clone(),
            rx,
            cancel.clone(),
            run_dir.join("artifacts"),
            heartbeat,
        ));
        match self.prepare(&job, &path, &work, &run_dir).await {
            Ok(mut prepared) => {
                prepared.options.gate = Some(Arc::new(AgentGate { server: self.server.clone(), path: path.clone() }));
                // A second signal to the agent stops its runs.
                let stop = {
                    let (cancel, kill) = (cancel.clone(), kill.clone());
                    tokio::spawn(async move {
                        kill.cancelled().await;
                        cancel.graceful.cancel();
                    })
                };
                sched::execute(self.docker.clone(), &prepared.plan, prepared.options, tx, cancel).await;
                stop.abort();
            }
            Err(why) => {
                drop(tx);
                let body = json!({ "events": [], "failed": why });
                let _ = self.server.call(Method::POST, &format!("{path}/events"), Some(&body)).await;
                sender.abort();
            }
        }
        let _ = sender.await;
        let _ = std::fs::remove_dir_all(&work);
        let _ = std::fs::remove_dir_all(&run_dir);
        tracing::info!(run = job.run, attempt = job.attempt, "job done");
    }

    /// Downloads the checkout and plans the job.
    async fn prepare(
        &self,
        job: &Job,
        path: &str,
        work: &Path,
        run_dir: &Path,
    ) -> Result<crate::setup::Prepared, String> {
        let resp = self.server.request(Method::GET, &format!("{path}/source"), full(Bytes::new())).await?;
        if !resp.status().is_success() {
            return Err(format!("cannot download the checkout: {}", resp.status()));
        }
        let spool = tempfile::NamedTempFile::new_in(self.dir.join("tmp")).map_err(|e| e.to_string())?;
        let mut file = tokio::fs::File::from_std(spool.reopen().map_err(|e| e.to_string())?);
        let mut body = resp.into_body().into_data_stream();
        while let Some(data) = futures_util::StreamExt::next(&mut body).await {
            let data = data.map_err(|e| format!("the checkout's download broke off: {e}"))?;
            tokio::io::AsyncWriteExt::write_all(&mut file, &data).await.map_err(|e| e.to_string())?;
        }
        // tokio's file writes in the background: the last one must be done before the
        // spool is read.
        tokio::io::AsyncWriteExt::flush(&mut file).await.map_err(|e| e.to_string())?;
        let (job, work, run_dir, cache) = (job.clone(), work.to_path_buf(), run_dir.to_path_buf(), self.cache.clone());
        tokio::task::spawn_blocking(move || {
            let root = crate::confined::Root::create(&work).map_err(|e| e.to_string())?;
            let f = spool.reopen().map_err(|e| e.to_string())?;
            crate::tree::unpack(std::io::BufReader::new(f), &root)
                .map_err(|e| format!("cannot unpack the checkout: {e}"))?;
            crate::job::prepare(&job, &work, &run_dir, Some(cache)).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

/// The checkout and the run directory of a job beneath the agent's directory, named by
/// its numbers only: nothing the server sends names a path on this machine.
fn job_dirs(dir: &Path, job: &Job) -> (PathBuf, PathBuf) {
    let name = format!("{}-{}", job.run, job.attempt);
    (dir.join("work").join(&name), dir.join("runs").join(name))
}

/// How long a report is retried while the server cannot be reached (past it, the lease is
/// surely gone and the run stops).
const PATIENCE: Duration = Duration::from_secs(120);
/// The most bytes of events sent at once.
const BATCH_BYTES: usize = 1024 * 1024;

/// Sends a job's events in order, in batches, at least every `heartbeat`; the artifacts go
/// up before the event that ends the run. Stops the run when the server says so (cancelled)
/// or when the attempt is not this agent's any more.
async fn send_events(
    server: Arc<Server>,
    path: String,
    mut rx: mpsc::Receiver<RunEvent>,
    cancel: Cancel,
    artifacts: PathBuf,
    heartbeat: Duration,
) {
    let events_path = format!("{path}/events");
    let mut open = true;
    while open {
        let mut batch = Vec::new();
        let mut size = 0;
        let mut last = None;
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => batch.push(ev),
                None => open = false,
            },
            _ = tokio::time::sleep(heartbeat) => {}
        }
        while size < BATCH_BYTES {
            match rx.try_recv() {
                Ok(ev) => {
                    if let RunEvent::StepOutput { text, .. } = &ev {
                        size += text.len();
                    }
                    batch.push(ev);
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if matches!(batch.last(), Some(RunEvent::RunFinished { .. })) {
            last = batch.pop();
        }
        if !batch.is_empty() || last.is_none() && open {
            match post(&server, &events_path, &batch).await {
                Some(Sent::Cancel) => cancel.graceful.cancel(),
                Some(Sent::Go) => {}
                None => {
                    cancel.kill.cancel();
                    drain(rx).await;
                    return;
                }
            }
        }
        if let Some(fin) = last {
            upload_artifacts(&server, &path, &artifacts).await;
            if post(&server, &events_path, &[fin]).await.is_none() {
                tracing::warn!("{path}: the run's end was not taken");
            }
            drain(rx).await;
            return;
        }
    }
}

enum Sent {
    Go,
    Cancel,
}

/// Posts a batch, retrying while the server cannot be reached; `None`: the attempt is not
/// this agent's any more (or the server stayed away past [`PATIENCE`]).
async fn post(server: &Server, path: &str, events: &[RunEvent]) -> Option<Sent> {
    let body = json!({ "events": events });
    let start = tokio::time::Instant::now();
    let mut wait = Duration::from_millis(200);
    loop {
        match server.call(Method::POST, path, Some(&body)).await {
            Ok(Answer::Ok(_, reply)) => {
                let cancel = serde_json::from_slice::<Value>(&reply)
                    .ok()
                    .and_then(|v| v.get("cancel").and_then(Value::as_bool))
                    .unwrap_or(false);
                return Some(if cancel { Sent::Cancel } else { Sent::Go });
            }
            Ok(Answer::Fenced) => {
                tracing::warn!("{path}: this attempt is not this agent's any more; stopping it");
                return None;
            }
            Err(e) if start.elapsed() < PATIENCE => {
                tracing::warn!("{e}; again in {wait:?}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::error!("{e}: giving the run up");
                return None;
            }
        }
    }
}

/// Reads what is left of a stopped run's events (the scheduler waits on the channel).
async fn drain(mut rx: mpsc::Receiver<RunEvent>) {
    while rx.recv().await.is_some() {}
}

/// Sends the run's artifacts (a tar stream of the directory, read beneath it).
async fn upload_artifacts(server: &Server, path: &str, dir: &Path) {
    if !dir.is_dir() {
        return;
    }
    let (chunks, writer) = crate::tree::stream(dir.to_path_buf(), |root| {
        let tree = crate::confined::Root::open(root)?;
        let files = tree.walk("", crate::exec::MAX_ARTIFACT_FILES)?;
        Ok(files.into_iter().filter(|f| !matches!(f.kind, crate::confined::Kind::Dir)).map(|f| f.path).collect())
    });
    let stream = futures_util::StreamExt::map(chunks, |item| item.map(http_body::Frame::data));
    let body = BodyExt::boxed(StreamBody::new(stream));
    match server.request(Method::PUT, &format!("{path}/artifacts"), body).await {
        Ok(r) if r.status().is_success() => {}
        Ok(r) => tracing::warn!("{path}: the artifacts were refused: {}", r.status()),
        Err(e) => tracing::warn!("{path}: the artifacts did not go up: {e}"),
    }
    let _ = writer.await;
}

/// A deployment gate of a run on this agent: the server decides; the agent asks it (a
/// long poll, answered within half a minute, again until decided).
struct AgentGate {
    server: Arc<Server>,
    /// `/api/agent/runs/{id}/{attempt}`.
    path: String,
}

impl sched::Gatekeeper for AgentGate {
    fn decide(
        &self,
        req: sched::GateRequest,
        notes: sched::GateNotes,
    ) -> futures_util::future::BoxFuture<'static, sched::GateDecision> {
        let (server, path) = (self.server.clone(), format!("{}/gate", self.path));
        let abandoned = Abandoned(Some((server.clone(), format!("{path}/finished"), req.environment.clone())));
        Box::pin(async move {
            // Dropped undecided (the approval timed out, the run was cancelled): the server
            // hears it, so this run's place in line holds up no one.
            let mut abandoned = abandoned;
            let d = ask(&server, &path, &req, &notes).await;
            abandoned.0 = None;
            d
        })
    }

    fn finished(
        &self,
        req: sched::GateRequest,
        status: sched::DeploymentStatus,
    ) -> futures_util::future::BoxFuture<'static, ()> {
        let (server, path) = (self.server.clone(), format!("{}/gate/finished", self.path));
        Box::pin(async move { gate_finished(&server, &path, &req.environment, status).await })
    }
}

/// Tells the server that a gate's deployments ended (or that it was given up).
async fn gate_finished(server: &Server, path: &str, environment: &str, status: sched::DeploymentStatus) {
    // Lost, the lock is released when the run ends.
    let body = json!({ "environment": environment, "status": status });
    if let Err(e) = server.call(Method::POST, path, Some(&body)).await {
        tracing::warn!("{path}: {e}");
    }
}

/// Releases an undecided gate's place on the server, when its wait is dropped.
struct Abandoned(Option<(Arc<Server>, String, String)>);

impl Drop for Abandoned {
    fn drop(&mut self) {
        if let Some((server, path, env)) = self.0.take() {
            tokio::spawn(async move { gate_finished(&server, &path, &env, sched::DeploymentStatus::Cancelled).await });
        }
    }
}

/// Asks the server for a gate's decision until it gives one, saying what it waits for.
async fn ask(server: &Server, path: &str, req: &sched::GateRequest, notes: &sched::GateNotes) -> sched::GateDecision {
    let body = match serde_json::to_value(req) {
        Ok(b) => b,
        Err(e) => return sched::GateDecision::Fail { reason: format!("a gate request: {e}"), by: Vec::new() },
    };
    let mut backoff = Duration::from_millis(500);
    loop {
        match server.call(Method::POST, path, Some(&body)).await {
            Ok(Answer::Ok(_, bytes)) => {
                let v: Value = serde_json::from_slice(&bytes).unwrap_or_default();
                if let Some(text) = v.get("waiting").and_then(Value::as_str) {
                    notes.say(text);
                }
                if let Some(d) = v.get("decision").and_then(|d| serde_json::from_value(d.clone()).ok()) {
                    return d;
                }
                backoff = Duration::from_millis(500);
            }
            Ok(Answer::Fenced) => {
                return sched::GateDecision::Fail {
                    reason: "the run is no longer this agent's".into(),
                    by: Vec::new(),
                };
            }
            Err(e) => {
                tracing::warn!("{path}: {e}; asking again in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// `orch agent-token`: on the server's machine, against its database.
pub async fn token(command: TokenCommand, data: crate::tokens::ServerData) -> Result<u8, Error> {
    use crate::server::agents;
    let db = data.open()?;
    let db_err = |e: crate::server::db::DbError| Error::Remote(e.to_string());
    match command {
        TokenCommand::Create { name } => {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
                return Err(Error::Usage(format!(
                    "an agent's name is letters, digits, `.`, `_` and `-`; got `{name}`"
                )));
            }
            let token = agents::new_token().map_err(|e| Error::io("cannot read /dev/urandom", e))?;
            if !db.create_agent(name.clone(), agents::token_hash(&token)).await.map_err(db_err)? {
                return Err(Error::Usage(format!("there is an agent `{name}` already (revoke it, or pick a name)")));
            }
            eprintln!("agent `{name}` created; its token (shown once):");
            println!("{token}");
        }
        TokenCommand::List => {
            let rows = db.agents().await.map_err(db_err)?;
            if rows.is_empty() {
                eprintln!("no agents (create one with `orch agent-token create NAME`)");
            }
            let now = crate::clock::now_secs();
            for a in rows {
                let seen = match a.last_seen {
                    Some(t) => format!("seen {}s ago", (now - t).max(0)),
                    None => "never seen".into(),
                };
                let state = if a.revoked_at.is_some() { " revoked" } else { "" };
                println!(
                    "{}{state}\tlabels: {}\tcapacity: {}\trunning: {}\t{seen}",
                    a.name,
                    if a.labels.is_empty() { "-".into() } else { a.labels.join(",") },
                    a.capacity.map_or("-".into(), |c| c.to_string()),
                    a.running,
                );
            }
        }
        TokenCommand::Revoke { name } => {
            if !db.revoke_agent(name.clone()).await.map_err(db_err)? {
                return Err(Error::Usage(format!("no agent `{name}` with a live token")));
            }
            eprintln!("agent `{name}` revoked: its next request gets 401");
        }
    }
    Ok(exit::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_s_directories_stay_beneath_the_agent_s_whatever_its_docker_id() {
        let job: Job = serde_json::from_value(json!({
            "run": 7, "attempt": 2, "docker_run_id": "../../../etc",
            "context": crate::plan::Context::default(),
            "secrets": null, "jobs": 1, "grace_ms": 0, "log_limit": 0,
            "isolation": crate::exec::Isolation::default(), "reuse": {}, "cache_scopes": [], "labels": [],
        }))
        .unwrap();
        let (work, run_dir) = job_dirs(Path::new("/var/lib/orch-agent"), &job);
        assert_eq!(work, Path::new("/var/lib/orch-agent/work/7-2"));
        assert_eq!(run_dir, Path::new("/var/lib/orch-agent/runs/7-2"));
    }
}
