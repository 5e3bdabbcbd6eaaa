//! Deployment gates: `GET /api/runs/{id}/gates`, `POST /api/runs/{id}/approve` and
//! `/reject`. A vote is a person's: the bearer must be a named API token (`orch token
//! create NAME --can approve`) among the environment's approvers; the server's own
//! `api_token` is no person and may not vote.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::json;

use crate::server::db::{GateRow, Voted};
use crate::server::{AppState, reply};

use super::*;

/// `GET /api/runs/{id}/gates`
pub(super) async fn list(State(st): State<Arc<AppState>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = authorize_read(&st, &headers) {
        return *r;
    }
    let run = match load_run(&st, &id).await {
        Ok(r) => r,
        Err(r) => return *r,
    };
    match st.db.gates(run.id).await {
        Ok(gates) => reply(StatusCode::OK, json!({ "run": run.id, "gates": gates })),
        Err(e) => internal(e),
    }
}

/// Which gate a vote is for: by environment or by step; either may be left out when one
/// gate waits.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Which {
    environment: Option<String>,
    step: Option<String>,
}

/// `POST /api/runs/{id}/approve`
pub(super) async fn approve(st: State<Arc<AppState>>, headers: HeaderMap, id: Path<String>, body: Bytes) -> Response {
    vote(st, headers, id, body, true).await
}

/// `POST /api/runs/{id}/reject`
pub(super) async fn reject(st: State<Arc<AppState>>, headers: HeaderMap, id: Path<String>, body: Bytes) -> Response {
    vote(st, headers, id, body, false).await
}

/// The person the bearer token names, with the `approve` ability.
async fn voter(st: &AppState, headers: &HeaderMap) -> Result<String, Response> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| error(StatusCode::UNAUTHORIZED, "this needs `Authorization: Bearer <your named API token>`"))?;
    if st.cfg.api_token.as_deref().is_some_and(|t| same(t.as_bytes(), bearer.as_bytes())) {
        return Err(error(
            StatusCode::FORBIDDEN,
            "the server's API token is no person and cannot approve: use a named token (orch token create NAME --can approve)",
        ));
    }
    let hash = crate::server::agents::token_hash(bearer);
    match st.db.api_token_by_hash(hash).await {
        Err(e) => Err(internal(e)),
        Ok(None) => Err(error(StatusCode::UNAUTHORIZED, "unknown API token")),
        Ok(Some((name, None))) => Err(error(StatusCode::UNAUTHORIZED, format!("the token of `{name}` was revoked"))),
        Ok(Some((name, Some(abilities)))) if !abilities.iter().any(|a| a == "approve") => Err(error(
            StatusCode::FORBIDDEN,
            format!("the token of `{name}` may not approve (orch token create NAME --can approve)"),
        )),
        Ok(Some((name, Some(_)))) => Ok(name),
    }
}

async fn vote(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
    approve: bool,
) -> Response {
    let who = match voter(&st, &headers).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let which: Which = if body.iter().all(u8::is_ascii_whitespace) {
        Which::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(w) => w,
            Err(e) => {
                return error(StatusCode::BAD_REQUEST, format!("expected {{\"environment\"?, \"step\"?}}: {e}"));
            }
        }
    };
    let run = match load_run(&st, &id).await {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let gates = match st.db.gates(run.id).await {
        Ok(g) => g,
        Err(e) => return internal(e),
    };
    let fits = |g: &GateRow| {
        which.environment.as_ref().is_none_or(|e| *e == g.environment)
            && which.step.as_ref().is_none_or(|s| *s == g.step)
    };
    let waiting: Vec<&GateRow> = gates.iter().filter(|g| g.status == "waiting" && fits(g)).collect();
    let gate = match waiting.as_slice() {
        [] => return error(StatusCode::CONFLICT, format!("no deployment of run {} waits for approval", run.id)),
        [g] => *g,
        many => {
            let envs: Vec<&str> = many.iter().map(|g| g.environment.as_str()).collect();
            return error(
                StatusCode::CONFLICT,
                format!("several gates wait ({}): name one with `environment`", envs.join(", ")),
            );
        }
    };
    if !gate.approvers.contains(&who) {
        return error(
            StatusCode::FORBIDDEN,
            format!("`{who}` is not an approver of `{}` (approvers: {})", gate.environment, gate.approvers.join(", ")),
        );
    }
    match st.db.vote_gate(run.id, gate.environment.clone(), who.clone(), approve).await {
        Ok(Voted::Counted(g)) => {
            tracing::info!(run = run.id, environment = %g.environment, %who, approve, "gate vote");
            st.gates.notify_waiters();
            reply(StatusCode::OK, json!({ "run": run.id, "gate": g }))
        }
        Ok(Voted::Again(_)) => {
            error(StatusCode::CONFLICT, format!("`{who}` voted on the gate of `{}` already", gate.environment))
        }
        Ok(Voted::Closed(_)) => {
            error(StatusCode::CONFLICT, format!("the gate of `{}` is decided already", gate.environment))
        }
        Err(e) => internal(e),
    }
}
