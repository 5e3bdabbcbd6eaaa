//! The runs API (`/api/...`), `/metrics` and `/readyz`.
//!
//! Reads are public unless `api_private`; actions (cancel, re-run, manual runs) need
//! `Authorization: Bearer <api_token>` and are refused (403) while no token is configured.
//! Errors are JSON `{"error": "..."}`: 400 for bad input, 401 for a missing or wrong token,
//! 404 for a run, step or file that does not exist, 409 for an action the run's state forbids.
//!
//! `auth`: who may read and act; `logs`: logs (whole, ranges, followed) and artifact files;
//! `actions`: cancel, re-run, manual runs; `ops`: `/metrics`, `/readyz`, the OpenAPI file.

mod actions;
mod auth;
mod gates;
mod logs;
mod ops;

use std::collections::HashMap;
use std::path::Path as FsPath;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::json;

use super::db::{DeploymentFilter, Run, RunFilter, RunState};
use super::{AppState, reply, worker};
use crate::confined::{Kind, Root};

pub(crate) use auth::same;
pub use auth::{SESSION_COOKIE, SESSION_SECS, authorize_read, authorize_write, has_session, session_value};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/runs", get(list_runs).post(actions::manual_run))
        .route("/api/runs/{id}", get(get_run))
        .route("/api/runs/{id}/logs/{step}", get(logs::get_log))
        .route("/api/runs/{id}/artifacts/{step}/{*path}", get(logs::get_artifact))
        .route("/api/runs/{id}/cancel", post(actions::cancel))
        .route("/api/runs/{id}/rerun", post(actions::rerun))
        .route("/api/runs/{id}/gates", get(gates::list))
        .route("/api/runs/{id}/approve", post(gates::approve))
        .route("/api/runs/{id}/reject", post(gates::reject))
        .route("/api/schedules", get(list_schedules))
        .route("/api/deployments", get(list_deployments))
        .route("/api/environments", get(list_environments))
        .route("/api/dora", get(dora))
        .route("/api/environments/{env}/deploy", post(actions::deploy))
        .route("/api/openapi.yaml", get(ops::openapi))
        .route("/metrics", get(ops::metrics))
        .route("/readyz", get(ops::readyz))
}

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    reply(code, json!({ "error": msg.into() }))
}

fn internal(e: impl std::fmt::Display) -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// A run id from the path: anything that is not one is a run that does not exist.
async fn load_run(st: &AppState, id: &str) -> Result<Run, Box<Response>> {
    let missing = || Box::new(error(StatusCode::NOT_FOUND, format!("no run {id}")));
    let n: i64 = id.parse().map_err(|_| missing())?;
    match st.db.run(n).await {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(missing()),
        Err(e) => Err(Box::new(internal(e))),
    }
}

fn parse_num(q: &HashMap<String, String>, key: &str) -> Result<Option<i64>, Box<Response>> {
    q.get(key)
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse::<i64>().map_err(|_| {
                Box::new(error(StatusCode::BAD_REQUEST, format!("`{key}` must be a whole number, got `{v}`")))
            })
        })
        .transpose()
}

/// A whole-number query parameter within `range`, `default` when absent.
fn parse_in(
    q: &HashMap<String, String>,
    key: &str,
    default: i64,
    range: std::ops::RangeInclusive<i64>,
) -> Result<i64, Box<Response>> {
    let n = parse_num(q, key)?.unwrap_or(default);
    if !range.contains(&n) {
        let (lo, hi) = range.into_inner();
        return Err(Box::new(error(StatusCode::BAD_REQUEST, format!("`{key}` must be from {lo} to {hi}, got {n}"))));
    }
    Ok(n)
}

/// A query parameter's text; empty counts as absent.
fn text(q: &HashMap<String, String>, key: &str) -> Option<String> {
    q.get(key).filter(|v| !v.is_empty()).cloned()
}

fn truthy(q: &HashMap<String, String>, key: &str) -> bool {
    q.get(key).is_some_and(|v| matches!(v.as_str(), "" | "1" | "true" | "yes"))
}

// ---------------------------------------------------------------------------------------
// Reads

/// `GET /api/runs?repo=&branch=&status=&limit=&before=`
/// `GET /api/schedules`: every repository's schedules and their next times.
async fn list_schedules(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize_read(&st, &headers) {
        return *r;
    }
    match st.db.schedules().await {
        Ok(rows) => {
            let list: Vec<serde_json::Value> = rows
                .iter()
                .map(|s| {
                    let local = crate::pipeline::cron::Cron::new(&s.cron, &s.timezone)
                        .ok()
                        .zip(s.next_at)
                        .map(|(c, t)| c.local(t));
                    json!({
                        "repo": s.repo, "name": s.name, "cron": s.cron, "timezone": s.timezone,
                        "branch": s.default_branch, "next_at": s.next_at, "next_local": local,
                        "last_fired_at": s.last_fired_at, "last_run": s.last_run, "last_error": s.last_error,
                    })
                })
                .collect();
            reply(StatusCode::OK, json!({ "schedules": list }))
        }
        Err(e) => internal(e),
    }
}

/// `GET /api/deployments?repo=&environment=&run=&limit=`: deployments, newest first.
async fn list_deployments(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = authorize_read(&st, &headers) {
        return *r;
    }
    let (limit, run) = match (parse_in(&q, "limit", 50, 1..=500), parse_num(&q, "run")) {
        (Ok(l), Ok(r)) => (l, r),
        (Err(r), _) | (_, Err(r)) => return *r,
    };
    let f = DeploymentFilter { repo: text(&q, "repo"), environment: text(&q, "environment"), run, limit };
    match st.db.deployments(f).await {
        Ok(rows) => reply(StatusCode::OK, json!({ "deployments": rows })),
        Err(e) => internal(e),
    }
}

/// `GET /api/dora?repo=&environment=&days=`: the four delivery measures and pipeline
/// health over the last `days` days (default 30).
async fn dora(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = authorize_read(&st, &headers) {
        return *r;
    }
    let days = match parse_in(&q, "days", 30, 1..=366) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    match super::dora::load(&st.db, text(&q, "repo"), text(&q, "environment"), days, st.clock.now()).await {
        Ok((dora, health)) => {
            let definitions: serde_json::Map<String, serde_json::Value> =
                super::dora::DEFINITIONS.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
            reply(StatusCode::OK, json!({ "dora": dora, "health": health, "definitions": definitions }))
        }
        Err(e) => internal(e),
    }
}

/// `GET /api/environments?repo=`: every environment deployed to, what is live there (its
/// last successful deployment) and its last deployment.
async fn list_environments(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = authorize_read(&st, &headers) {
        return *r;
    }
    match st.db.environments(text(&q, "repo")).await {
        Ok(rows) => reply(StatusCode::OK, json!({ "environments": rows })),
        Err(e) => internal(e),
    }
}

async fn list_runs(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = authorize_read(&st, &headers) {
        return *r;
    }
    let limit = match parse_in(&q, "limit", 50, 1..=500) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let before = match parse_num(&q, "before") {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let status = match text(&q, "status").map(|s| RunState::parse(&s).ok_or(s)) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(s)) => {
            let all: Vec<&str> = RunState::ALL.iter().map(|s| s.as_str()).collect();
            return error(StatusCode::BAD_REQUEST, format!("`status` must be one of {}, got `{s}`", all.join(", ")));
        }
    };
    let f = RunFilter { repo: text(&q, "repo"), branch: text(&q, "branch"), status, limit, before };
    match st.db.runs_where(f).await {
        Ok(runs) => {
            let next = if runs.len() as i64 == limit { runs.last().map(|r| r.id) } else { None };
            reply(StatusCode::OK, json!({ "runs": runs, "next": next }))
        }
        Err(e) => internal(e),
    }
}

/// A run's kept artifacts: per step directory, the files (relative path, size), sorted.
/// Read beneath the run's artifact directory; links are not listed.
pub fn artifact_files(run_dir: &FsPath) -> Vec<(String, Vec<(String, u64)>)> {
    let Ok(root) = Root::open(run_dir.join("artifacts")) else { return Vec::new() };
    let Ok(entries) = root.entries("") else { return Vec::new() };
    entries
        .into_iter()
        .filter(|(name, kind)| *kind == Kind::Dir && !name.to_string_lossy().starts_with('.'))
        .map(|(name, _)| {
            let files = root
                .walk(&name, crate::exec::MAX_ARTIFACT_FILES)
                .unwrap_or_default()
                .into_iter()
                .filter(|f| f.kind == Kind::File)
                .map(|f| (f.path.to_string_lossy().into_owned(), f.size))
                .collect();
            (name.to_string_lossy().into_owned(), files)
        })
        .collect()
}

/// The artifacts of a run: `[{"step", "files": [{"path", "size"}]}]`.
pub fn artifacts(st: &AppState, id: i64) -> Vec<serde_json::Value> {
    artifact_files(&worker::run_dir(&st.cfg, id))
        .into_iter()
        .map(|(step, files)| {
            let files: Vec<_> = files.into_iter().map(|(p, n)| json!({ "path": p, "size": n })).collect();
            json!({ "step": step, "files": files })
        })
        .collect()
}

/// `GET /api/runs/{id}`: the run, its steps, what triggered it, the plan's skipped steps,
/// its artifacts and the error that stopped it before its steps (if any).
async fn get_run(State(st): State<Arc<AppState>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = authorize_read(&st, &headers) {
        return *r;
    }
    let run = match load_run(&st, &id).await {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let steps = match st.db.steps(run.id).await {
        Ok(s) => s,
        Err(e) => return internal(e),
    };
    let dir = worker::run_dir(&st.cfg, run.id);
    let plan: Option<serde_json::Value> =
        std::fs::read(dir.join("plan.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let skipped = plan.as_ref().and_then(|p| p.get("skipped").cloned()).unwrap_or_else(|| json!([]));
    let error = std::fs::read_to_string(dir.join("error.txt")).ok();
    let trigger = json!({
        "event": run.spec.event,
        "delivery_id": run.delivery_id,
        "repo": run.spec.repo,
        "branch": run.spec.branch,
        "base_branch": run.spec.base_branch,
        "tag": run.spec.tag,
        "sha": run.spec.sha,
        "author": run.spec.author,
        "pr": run.spec.pr,
        "title": run.spec.title,
        "rerun_of": run.rerun_of,
        "failed_only": run.failed_only,
    });
    let artifacts = artifacts(&st, run.id);
    let f = DeploymentFilter { run: Some(run.id), limit: 500, ..Default::default() };
    let deployments = match st.db.deployments(f).await {
        Ok(d) => d,
        Err(e) => return internal(e),
    };
    reply(
        StatusCode::OK,
        json!({
            "run": run,
            "steps": steps,
            "trigger": trigger,
            "skipped": skipped,
            "artifacts": artifacts,
            "deployments": deployments,
            "error": error,
        }),
    )
}
