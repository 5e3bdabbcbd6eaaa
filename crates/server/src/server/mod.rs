//! `orch serve`: GitHub webhooks in, one durable run per delivery, statuses or check runs
//! out. The same planner and scheduler as `orch ci` run the pipelines.
//!
//! Flow: `webhook` verifies and stores a delivery with its run (one transaction, before the
//! answer) -> `worker` claims queued runs from the database, fetches the commit, plans and
//! executes -> events become step rows, log files and GitHub updates (`github`).

pub mod agents;
pub mod api;
pub mod config;
pub mod dashboard;
pub mod db;
pub mod dora;
pub mod gates;
pub mod limit;
pub mod live;
pub mod outbox;
pub mod peers;
mod record;
pub mod retention;
pub mod schedule;
pub mod status;
pub mod webhook;
pub mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::github::{self, Update};
use crate::sched::Cancel;
use config::Config;
use db::{Db, Stored};
use webhook::Action;

/// Counters for `/metrics` and the load benchmark.
#[derive(Debug, Default)]
pub struct Counters {
    pub deliveries: AtomicU64,
    pub rejected: AtomicU64,
    pub duplicates: AtomicU64,
    pub runs_queued: AtomicU64,
    /// Steps whose container is running now.
    pub containers_running: std::sync::atomic::AtomicI64,
    /// Whether queued runs wait because Docker, which answered before, does not now.
    pub waiting_for_docker: AtomicBool,
    /// GitHub requests, counted by the reporter.
    pub github: Arc<github::RequestCounters>,
}

pub struct AppState {
    pub cfg: Config,
    pub db: Db,
    /// What is owed to GitHub, sent in order (see `outbox`).
    pub report: outbox::Outbox,
    /// Credentials for clones and branch lookups (an App's installation tokens).
    pub github: github::Github,
    /// Wakes the worker when a run is queued.
    pub wake: Notify,
    /// Wakes the janitor when a run may have left Docker objects behind (see `worker`).
    pub janitor: Notify,
    /// Running runs, to stop them (superseded, closed pull request, shutdown).
    pub running: std::sync::Mutex<HashMap<i64, (Cancel, String)>>,
    pub counters: Counters,
    pub shutting_down: AtomicBool,
    /// Runs this server stopped because it lost the database (see `peers`): queued again
    /// when they end, not ended.
    pub given_back: std::sync::Mutex<std::collections::HashSet<i64>>,
    /// Failed sign-ins and API tokens per client address.
    pub limiter: limit::AuthLimiter,
    /// The live log feeds of the runs executing now.
    pub live: live::Live,
    /// Counts up when a planned run waits for an executor: wakes this server's executor and
    /// the agents waiting for work.
    pub ready: tokio::sync::watch::Sender<u64>,
    /// The runs agents execute now, by run id (see `agents`).
    pub remote: agents::Remotes,
    /// "Now" for the schedules (the system's; tests set their own).
    pub clock: Arc<dyn schedule::Clock>,
    /// Wakes the schedule task when this server changed the schedules.
    pub schedules: Notify,
    /// Wakes the deployment gates waiting for votes (see `gates`).
    pub gates: Notify,
}

impl AppState {
    /// Stops a running run, with the reason it will be marked with: here, or (several
    /// servers on PostgreSQL) on the server that runs it.
    pub fn cancel_run(&self, id: i64, reason: &str) {
        if !self.cancel_here(id, reason) && self.db.backend() == db::Backend::Postgres {
            let (db, what) = (self.db.clone(), format!("cancel {id} {reason}"));
            tokio::spawn(async move {
                if let Err(e) = db.announce(what).await {
                    tracing::warn!(run = id, "cannot ask the other servers to stop the run: {e}");
                }
            });
        }
    }

    /// Stops a run if it runs here (or is leased to an agent from here); false if not.
    fn cancel_here(&self, id: i64, reason: &str) -> bool {
        if let Ok(mut m) = self.running.lock()
            && let Some((c, r)) = m.get_mut(&id)
        {
            *r = reason.to_string();
            c.graceful.cancel();
            return true;
        }
        false
    }
}

/// Passes what other servers' commits announce ([`Db::wakes`]) on to this server's tasks:
/// the planner, the executors' and agents' waits, the outbox sender, the schedules; and
/// stops a run another server was asked to cancel. Ends with the state.
fn follow_other_servers(st: &Arc<AppState>) {
    let mut wakes = st.db.wakes();
    let weak = Arc::downgrade(st);
    tokio::spawn(async move {
        loop {
            let what = match wakes.recv().await {
                Ok(w) => w,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => "all".to_string(),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            };
            let Some(st) = weak.upgrade() else { break };
            if let Some(("cancel", rest)) = what.split_once(' ') {
                let (id, reason) = rest.split_once(' ').unwrap_or((rest, "cancelled"));
                if let Ok(id) = id.parse() {
                    st.cancel_here(id, reason);
                }
                continue;
            }
            match what.as_str() {
                "queued" | "agent" => st.wake.notify_one(),
                "ready" => {
                    st.wake.notify_one();
                    st.ready.send_modify(|n| *n += 1);
                }
                "owed" => st.report.poke(),
                "schedules" => st.schedules.notify_one(),
                "gates" => st.gates.notify_waiters(),
                _ => {
                    st.wake.notify_one();
                    st.ready.send_modify(|n| *n += 1);
                    st.report.poke();
                    st.schedules.notify_one();
                    st.gates.notify_waiters();
                }
            }
        }
    });
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    GitHub(#[from] github::ReportError),
    #[error(
        "{0}; pull requests' steps could reach this machine's services (orch's API, databases). Run orch serve \
         as root, or allow it with --step-host-access (ORCH_STEP_HOST_ACCESS=true)"
    )]
    Firewall(String),
}

/// Builds the state: opens the database, re-queues runs a previous server left running,
/// starts the GitHub reporter.
pub async fn state(cfg: Config) -> Result<Arc<AppState>, ServeError> {
    state_with_clock(cfg, Arc::new(schedule::SystemClock)).await
}

/// [`state`] with the clock schedules go by.
pub async fn state_with_clock(cfg: Config, clock: Arc<dyn schedule::Clock>) -> Result<Arc<AppState>, ServeError> {
    // Fail closed: a server that cannot keep steps from the host does not start.
    if cfg.isolation.block_host {
        crate::exec::firewall::ensure().map_err(ServeError::Firewall)?;
    }
    let db = Db::open_at(&cfg.database)?;
    let db = if db.backend() == db::Backend::Postgres { db.for_server(cfg.server_name.clone()) } else { db };
    let requeued = db.requeue_interrupted().await?;
    // Heard from at once, so the others do not count it silent while it starts.
    db.heartbeat().await?;
    if !requeued.is_empty() {
        tracing::warn!(runs = ?requeued, "queued again: runs the previous server left running");
    }
    let auth = match (&cfg.github_app, &cfg.github_token) {
        (Some((id, key)), _) => github::Auth::App { app_id: *id, key_pem: key.clone() },
        (None, Some(t)) => github::Auth::Token(t.clone()),
        (None, None) => github::Auth::None,
    };
    // `api_url`: `https://api.github.com`, a GitHub Enterprise `https://host/api/v3`, or a
    // test server.
    let gh = github::Github::new(&cfg.github_url, &auth, cfg.github_backoff)?;
    let reporter = github::Reporter::new(
        github::Config { public_url: cfg.public_url.clone(), step_statuses: cfg.step_statuses, context: "orch".into() },
        gh.clone(),
    );
    let counters = Counters { github: gh.counters(), ..Counters::default() };
    let st = Arc::new(AppState {
        report: outbox::Outbox::start(db.clone(), reporter, cfg.github_backoff * 10),
        github: gh,
        cfg,
        db,
        wake: Notify::new(),
        janitor: Notify::new(),
        running: std::sync::Mutex::new(HashMap::new()),
        counters,
        shutting_down: AtomicBool::new(false),
        given_back: Default::default(),
        limiter: limit::AuthLimiter::default(),
        live: live::Live::default(),
        ready: tokio::sync::watch::Sender::new(0),
        remote: agents::Remotes::default(),
        clock,
        schedules: Notify::new(),
        gates: Notify::new(),
    });
    follow_other_servers(&st);
    Ok(st)
}

pub fn router(st: Arc<AppState>) -> Router {
    Router::new()
        .route("/webhooks/github", post(receive).layer(DefaultBodyLimit::max(webhook::MAX_BODY)))
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(dashboard::routes())
        .merge(api::routes())
        .merge(agents::routes())
        .layer(axum::middleware::from_fn_with_state(st.clone(), limit::auth_limit))
        .with_state(st)
}

/// Serves until `shutdown` resolves; then stops the running runs (they are queued again
/// for the next start) and waits for them to clean up.
pub async fn serve(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(|source| ServeError::Listen { addr: cfg.listen.clone(), source })?;
    serve_on(listener, cfg, shutdown).await
}

pub async fn serve_on(
    listener: tokio::net::TcpListener,
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let st = state(cfg).await?;
    let stop = CancellationToken::new();
    let worker = tokio::spawn(worker::run(st.clone(), stop.clone()));
    let retention = tokio::spawn(retention::retention(st.clone(), stop.clone()));
    let schedules = tokio::spawn(schedule::run(st.clone(), stop.clone()));
    let peers = tokio::spawn(peers::run(st.clone(), stop.clone()));
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(%addr, data_dir = %st.cfg.data_dir.display(), database = %st.cfg.database.display(), "orch serve listening");
    let st2 = st.clone();
    let stop2 = stop.clone();
    let app = router(st.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            st2.shutting_down.store(true, Ordering::SeqCst);
            stop2.cancel();
        })
        .await
        .map_err(|source| ServeError::Listen { addr, source })?;
    stop.cancel();
    let ids: Vec<i64> = st.running.lock().map(|m| m.keys().copied().collect()).unwrap_or_default();
    for id in ids {
        st.cancel_run(id, "the server stopped");
    }
    let _ = worker.await;
    let _ = retention.await;
    let _ = schedules.await;
    let _ = peers.await;
    // The updates still owed to GitHub (the final statuses of runs that just ended among
    // them) go out before the server ends, within a bound; the rest stay stored.
    if !st.report.drain(REPORT_DRAIN).await {
        tracing::warn!("GitHub updates still owed after {REPORT_DRAIN:?}: the next start sends them");
    }
    Ok(())
}

/// How long a stopping server waits for its queued GitHub updates.
const REPORT_DRAIN: std::time::Duration = std::time::Duration::from_secs(60);

pub(crate) fn reply(code: StatusCode, body: serde_json::Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string() + "\n").into_response()
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// `POST /webhooks/github`.
async fn receive(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let reject = |code: StatusCode, msg: &str| {
        st.counters.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::info!(status = code.as_u16(), "delivery rejected: {msg}");
        reply(code, json!({ "error": msg }))
    };
    if let Some(secret) = &st.cfg.webhook_secret
        && !webhook::verify_signature(secret.as_bytes(), header_str(&headers, "x-hub-signature-256"), &body)
    {
        return reject(StatusCode::UNAUTHORIZED, "missing or wrong X-Hub-Signature-256");
    }
    let Some(event) = header_str(&headers, "x-github-event").map(str::to_string) else {
        return reject(StatusCode::BAD_REQUEST, "missing X-GitHub-Event");
    };
    let Some(delivery) = header_str(&headers, "x-github-delivery").map(str::to_string) else {
        return reject(StatusCode::BAD_REQUEST, "missing X-GitHub-Delivery");
    };
    let ctype = header_str(&headers, "content-type").unwrap_or("");
    if !ctype.starts_with("application/json") {
        return reject(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content type must be application/json (set it in the webhook's settings)",
        );
    }
    let payload: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return reject(StatusCode::BAD_REQUEST, &format!("the body is not JSON: {e}")),
    };
    // From here on the work is not tied to the connection: a client that hangs up while its
    // delivery is being committed must not skip what follows the commit (queuing, waking
    // the worker, cancelling superseded runs).
    let task = tokio::spawn(accept(st.clone(), event, delivery, payload, headers, body));
    match task.await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("delivery task failed: {e}");
            reply(StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": "internal error" }))
        }
    }
}

/// Stores a verified delivery and acts on it.
async fn accept(
    st: Arc<AppState>,
    event: String,
    delivery: String,
    payload: serde_json::Value,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    st.counters.deliveries.fetch_add(1, Ordering::Relaxed);
    let action_name = payload.get("action").and_then(|a| a.as_str()).map(str::to_string);
    let mut action = webhook::classify(&event, &payload);
    let repo = payload.pointer("/repository/full_name").and_then(|r| r.as_str()).unwrap_or("").to_string();
    if !st.cfg.allow_repos.is_empty() && !st.cfg.allow_repos.contains(&repo) && !matches!(action, Action::Ping) {
        action = Action::Ignore(format!("repository `{repo}` is not in the allow-list"));
    }
    // The repository is fetched from GitHub (or where a rewrite sends it), never from a
    // server or path the payload names.
    if let Action::Run(r) = &action
        && let Err(why) = st.cfg.clone_access.check_webhook(&r.clone_url)
    {
        action = Action::Ignore(why);
    }
    let kept: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .filter(|(k, _)| {
            k.as_str().starts_with("x-github") || k.as_str() == "user-agent" || k.as_str() == "content-type"
        })
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
        .collect();
    let headers_json = serde_json::Value::Object(kept).to_string();
    let (outcome, run) = match &action {
        Action::Ping => ("ping".to_string(), None),
        Action::Run(r) => ("queued".to_string(), Some((**r).clone())),
        Action::CancelPullRequest { .. } => ("cancel".to_string(), None),
        Action::Issue(i) if is_incident(&st, i) => ("incident".to_string(), None),
        Action::Issue(i) => (format!("ignored: issue #{} is not labelled `{}`", i.number, st.cfg.incident_label), None),
        Action::Ignore(why) => (format!("ignored: {why}"), None),
    };
    // The run's first update for GitHub is owed in the commit that queues it.
    let queued_update = run.clone().filter(|_| st.report.enabled()).map(|r| {
        Box::new(move |id| outbox::body(&Update::Queued(worker::new_run_ref(id, &r))))
            as Box<dyn FnOnce(i64) -> String + Send>
    });
    let stored = st
        .db
        .store_delivery(
            db::Delivery {
                id: delivery.clone(),
                event: event.clone(),
                action: action_name,
                headers: headers_json,
                body: body.to_vec(),
                outcome,
            },
            run,
            st.cfg.cancel_superseded,
            queued_update,
            st.report.owe_ended(),
        )
        .await;
    let stored = match stored {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%delivery, "cannot store the delivery: {e}");
            // 5xx: GitHub records the failure and the delivery can be redelivered.
            return reply(StatusCode::SERVICE_UNAVAILABLE, json!({ "error": "cannot store the delivery" }));
        }
    };
    let (run_id, cancel) = match stored {
        Stored::Duplicate => {
            st.counters.duplicates.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%delivery, "duplicate delivery: already stored");
            return reply(StatusCode::OK, json!({ "status": "duplicate", "delivery": delivery }));
        }
        Stored::New { run, cancel, cancelled } => {
            // A delivery of an older event than a run it would supersede is cancelled itself.
            let stale = cancelled.iter().find(|r| Some(r.id) == run).and_then(|r| r.reason.clone());
            report_cancelled(&st, &cancelled);
            if let Some(reason) = stale {
                tracing::info!(%delivery, run = run.unwrap_or_default(), "{reason}");
                return reply(
                    StatusCode::ACCEPTED,
                    json!({ "status": "superseded", "run": run, "reason": reason, "delivery": delivery }),
                );
            }
            (run, cancel)
        }
    };
    for id in cancel {
        st.cancel_run(id, &format!("superseded by run {}", run_id.unwrap_or_default()));
    }
    match action {
        Action::Ping => reply(StatusCode::OK, json!({ "status": "pong", "delivery": delivery })),
        Action::Issue(i) => {
            // An issue that lost the label (or was deleted) is no incident any more.
            let incident = is_incident(&st, &i);
            let number = i.number;
            if let Err(e) = st.db.record_incident(*i, incident).await {
                tracing::error!(%delivery, "cannot record an incident: {e}");
                return reply(StatusCode::SERVICE_UNAVAILABLE, json!({ "error": "cannot record the incident" }));
            }
            let status = if incident { "incident" } else { "ignored" };
            reply(StatusCode::ACCEPTED, json!({ "status": status, "issue": number, "delivery": delivery }))
        }
        Action::Ignore(why) => {
            tracing::info!(%delivery, %event, "ignored: {why}");
            reply(StatusCode::ACCEPTED, json!({ "status": "ignored", "reason": why, "delivery": delivery }))
        }
        Action::CancelPullRequest { repo, pr } => {
            let key = format!("{repo}#pr:{pr}");
            match st.db.cancel_key(key, format!("pull request #{pr} was closed"), st.report.owe_ended()).await {
                Ok((running, cancelled)) => {
                    for id in running {
                        st.cancel_run(id, &format!("pull request #{pr} was closed"));
                    }
                    report_cancelled(&st, &cancelled);
                }
                Err(e) => tracing::error!("cannot cancel the runs of #{pr}: {e}"),
            }
            reply(StatusCode::ACCEPTED, json!({ "status": "cancelled", "pull_request": pr, "delivery": delivery }))
        }
        Action::Run(r) => {
            let id = run_id.unwrap_or_default();
            st.counters.runs_queued.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%delivery, run = id, repo = %r.repo, sha = %r.sha, event = %r.event, "run queued");
            // Its `Queued` update was stored with it.
            st.report.poke();
            st.wake.notify_one();
            reply(StatusCode::ACCEPTED, json!({ "status": "queued", "run": id, "delivery": delivery }))
        }
    }
}

/// Where a run of `repo` fetches `clone_url` from, and the credentials that may go there:
/// an App's installation token (else the configured token) only when that is GitHub itself.
pub(crate) async fn clone_source(
    st: &AppState,
    clone_url: &str,
    repo: &str,
    installation: Option<u64>,
) -> (String, Option<crate::checkout::Auth>) {
    let source = st.cfg.clone_access.resolve(clone_url);
    let token = match source.creds {
        crate::checkout::Creds::GithubToken { .. } => {
            st.github.clone_token(repo, installation, st.cfg.github_token.clone()).await
        }
        _ => None,
    };
    let auth = source.auth(token);
    (source.url, auth)
}

/// Queued runs were cancelled before they started (superseded, or their pull request
/// closed); their final updates were stored with the cancel: send them.
pub(crate) fn report_cancelled(st: &AppState, runs: &[db::Run]) {
    for run in runs {
        tracing::info!(run = run.id, "cancelled before it started: {}", run.reason.as_deref().unwrap_or("cancelled"));
    }
    if !runs.is_empty() {
        st.report.poke();
    }
}

/// Whether an issue is an incident: it has the incident label and was not deleted.
fn is_incident(st: &AppState, i: &webhook::Issue) -> bool {
    !i.deleted && i.labels.iter().any(|l| l.eq_ignore_ascii_case(&st.cfg.incident_label))
}
