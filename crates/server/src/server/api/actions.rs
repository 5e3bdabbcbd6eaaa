//! The actions: cancel, re-run (all steps or the failed ones), manual runs, deployments of
//! a commit to an environment (rollbacks).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;

use crate::github::Update;
use crate::server::db::{NewRun, RunFilter, RunState};
use crate::server::{AppState, reply};

use super::*;

// ---------------------------------------------------------------------------------------
// Actions

async fn queued(st: &AppState, id: i64, r: &NewRun) {
    st.counters.runs_queued.fetch_add(1, Ordering::Relaxed);
    st.report.owe(Update::Queued(super::worker::new_run_ref(id, r))).await;
    st.wake.notify_one();
}

/// `POST /api/runs/{id}/cancel`
pub(super) async fn cancel(State(st): State<Arc<AppState>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = authorize_write(&st, &headers) {
        return *r;
    }
    let run = match load_run(&st, &id).await {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let reason = "cancelled through the API".to_string();
    match run.status {
        RunState::Queued => match st.db.cancel_queued(run.id, reason.clone(), st.report.owe_ended()).await {
            Ok(Some(run)) => {
                crate::server::report_cancelled(&st, std::slice::from_ref(&run));
                return reply(StatusCode::ACCEPTED, json!({ "status": "cancelled", "run": run.id }));
            }
            // Claimed in between: it is running now.
            Ok(None) => {}
            Err(e) => return internal(e),
        },
        RunState::Running => {}
        other => {
            return error(StatusCode::CONFLICT, format!("run {} has already ended ({other})", run.id));
        }
    }
    st.cancel_run(run.id, &reason);
    reply(StatusCode::ACCEPTED, json!({ "status": "cancelling", "run": run.id }))
}

/// `POST /api/runs/{id}/rerun[?failed=true]`
pub(super) async fn rerun(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = authorize_write(&st, &headers) {
        return *r;
    }
    let failed = match q.get("failed").map(String::as_str) {
        None | Some("false" | "0" | "no") => false,
        Some("" | "true" | "1" | "yes") => true,
        Some(v) => return error(StatusCode::BAD_REQUEST, format!("`failed` must be true or false, got `{v}`")),
    };
    let run = match load_run(&st, &id).await {
        Ok(r) => r,
        Err(r) => return *r,
    };
    if failed {
        if run.status.is_active() {
            return error(
                StatusCode::CONFLICT,
                format!("run {} has not ended: re-run its failed steps after it", run.id),
            );
        }
        if run.status == RunState::Success {
            return error(StatusCode::CONFLICT, format!("run {} passed: no failed step to re-run", run.id));
        }
    }
    let spec = run.spec.clone();
    match st.db.queue_rerun(spec.clone(), run.id, failed).await {
        Ok(new) => {
            tracing::info!(run = new, of = run.id, failed, "re-run queued through the API");
            queued(&st, new, &spec).await;
            reply(
                StatusCode::ACCEPTED,
                json!({ "status": "queued", "run": new, "rerun_of": run.id, "failed_only": failed }),
            )
        }
        Err(e) => internal(e),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Manual {
    repo: String,
    branch: String,
    sha: Option<String>,
    clone_url: Option<String>,
}

/// `POST /api/runs` `{"repo", "branch", "sha"?, "clone_url"?}`: a manual run.
pub(super) async fn manual_run(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = authorize_write(&st, &headers) {
        return *r;
    }
    let m: Manual = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"repo\": \"owner/name\", \"branch\": \"...\", \"sha\"?, \"clone_url\"?}}: {e}"),
            );
        }
    };
    let valid_repo = m.repo.split('/').count() == 2 && m.repo.split('/').all(|p| !p.is_empty());
    if !valid_repo {
        return error(StatusCode::BAD_REQUEST, format!("`repo` is owner/name, got `{}`", m.repo));
    }
    if m.branch.is_empty() || m.branch.contains("..") || m.branch.starts_with('-') {
        return error(StatusCode::BAD_REQUEST, format!("`{}` is not a branch name", m.branch));
    }
    if let Some(sha) = &m.sha
        && !(sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return error(StatusCode::BAD_REQUEST, format!("`sha` is a full 40-digit commit id, got `{sha}`"));
    }
    if !st.cfg.allow_repos.is_empty() && !st.cfg.allow_repos.contains(&m.repo) {
        return error(StatusCode::BAD_REQUEST, format!("repository `{}` is not in the allow-list", m.repo));
    }
    // A network address, never a path on the server (whose files are not the repository's).
    if let Some(url) = &m.clone_url {
        if !["https://", "http://", "git://", "ssh://"].iter().any(|p| url.starts_with(p)) {
            return error(
                StatusCode::BAD_REQUEST,
                format!("`clone_url` must be an https, http, git or ssh URL, got `{}`", crate::checkout::redact(url)),
            );
        }
        // Credentials would be stored with the run and shown with it: they belong in a
        // clone rewrite of the server's settings.
        if crate::checkout::redact(url) != *url {
            return error(
                StatusCode::BAD_REQUEST,
                "`clone_url` must not hold credentials (user:password@); set them in a clone rewrite of the server",
            );
        }
    }
    let latest = st
        .db
        .runs_where(RunFilter { repo: Some(m.repo.clone()), limit: 1, ..Default::default() })
        .await
        .ok()
        .and_then(|r| r.into_iter().next());
    let clone_url = m
        .clone_url
        .clone()
        .or_else(|| latest.as_ref().map(|r| r.spec.clone_url.clone()))
        .unwrap_or_else(|| format!("https://github.com/{}.git", m.repo));
    let sha = match m.sha {
        Some(s) => s.to_lowercase(),
        None => {
            let installation = latest.as_ref().and_then(|r| r.spec.installation_id);
            let (url, auth) = crate::server::clone_source(&st, &clone_url, &m.repo, installation).await;
            let branch = m.branch.clone();
            let head = move || crate::checkout::branch_head(&url, &branch, auth.as_ref());
            match tokio::task::spawn_blocking(head).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, e),
                Err(e) => return internal(e),
            }
        }
    };
    let spec = NewRun {
        concurrency_key: Some(format!("{}#branch:{}", m.repo, m.branch)),
        default_branch: latest.as_ref().and_then(|r| r.spec.default_branch.clone()),
        installation_id: latest.as_ref().and_then(|r| r.spec.installation_id),
        repo: m.repo,
        clone_url,
        event: "manual".into(),
        branch: Some(m.branch),
        sha,
        title: Some("manual run".into()),
        ..Default::default()
    };
    match st.db.queue_run(spec.clone(), false).await {
        Ok((id, _, _)) => {
            tracing::info!(run = id, repo = %spec.repo, sha = %spec.sha, "manual run queued through the API");
            queued(&st, id, &spec).await;
            reply(StatusCode::ACCEPTED, json!({ "status": "queued", "run": id, "sha": spec.sha }))
        }
        Err(e) => internal(e),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Deploy {
    repo: String,
    sha: Option<String>,
}

/// `POST /api/environments/{env}/deploy` `{"repo", "sha"?}`: a `deploy` run of the commit
/// (default: the last one deployed to `env` with success before the live one, a rollback)
/// that runs only the steps deploying to `env` and what they need.
pub(super) async fn deploy(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(env): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = authorize_write(&st, &headers) {
        return *r;
    }
    let d: Deploy = match serde_json::from_slice(&body) {
        Ok(d) => d,
        Err(e) => {
            return error(StatusCode::BAD_REQUEST, format!("expected {{\"repo\": \"owner/name\", \"sha\"?}}: {e}"));
        }
    };
    let name_ok = env.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && env.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !name_ok {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`{env}` is not an environment name ([A-Za-z0-9][A-Za-z0-9._-]*)"),
        );
    }
    let sha = match d.sha {
        Some(sha) if sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()) => sha.to_lowercase(),
        Some(sha) => return error(StatusCode::BAD_REQUEST, format!("`sha` is a full 40-digit commit id, got `{sha}`")),
        None => match st.db.rollback_target(d.repo.clone(), env.clone()).await {
            Ok(Some(t)) => t.sha,
            Ok(None) => {
                return error(
                    StatusCode::CONFLICT,
                    format!(
                        "nothing to roll back to: `{env}` of {} has no successful deployment of another commit \
                         before the live one; name a commit (`sha`)",
                        d.repo
                    ),
                );
            }
            Err(e) => return internal(e),
        },
    };
    // Only a commit orch ran from a push: a pull request's code never deploys.
    let run = match st.db.run_of_commit(d.repo.clone(), sha.clone()).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("orch has no run of commit {sha} of {} from a push: push it to a branch or tag first", d.repo),
            );
        }
        Err(e) => return internal(e),
    };
    let spec = NewRun {
        event: "deploy".into(),
        environment: Some(env.clone()),
        redeploy: true,
        title: Some(format!("deploy {} to {env}", sha.get(..7).unwrap_or(&sha))),
        author: None,
        changed: None,
        concurrency_key: None,
        event_time: None,
        schedule: None,
        ..run.spec
    };
    match st.db.queue_run(spec.clone(), false).await {
        Ok((id, _, _)) => {
            tracing::info!(run = id, repo = %spec.repo, sha = %spec.sha, env, "deploy run queued through the API");
            queued(&st, id, &spec).await;
            reply(StatusCode::ACCEPTED, json!({ "status": "queued", "run": id, "sha": spec.sha, "environment": env }))
        }
        Err(e) => internal(e),
    }
}
