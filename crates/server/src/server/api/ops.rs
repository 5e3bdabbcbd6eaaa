//! For operators: `/metrics` (Prometheus), `/readyz`, the OpenAPI description.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::server::db::{RunState, StepState};
use crate::server::{AppState, reply};

use super::*;

// ---------------------------------------------------------------------------------------
// Operations

/// `GET /api/openapi.yaml`: the API's OpenAPI description (docs/openapi.yaml).
pub(super) async fn openapi() -> Response {
    const SPEC: &str = include_str!("../../../../../docs/openapi.yaml");
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/yaml")], SPEC).into_response()
}

const WAIT_BUCKETS: &[f64] = &[1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 3600.0];
const STEP_BUCKETS: &[f64] = &[1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0];

fn histogram(out: &mut String, name: &str, labels: &str, buckets: &[f64], values: &[f64]) {
    let sep = if labels.is_empty() { "" } else { "," };
    for b in buckets {
        let n = values.iter().filter(|v| **v <= *b).count();
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", values.len());
    let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
    let _ = writeln!(out, "{name}_sum{braces} {}", values.iter().fold(0.0, |a, v| a + v));
    let _ = writeln!(out, "{name}_count{braces} {}", values.len());
}

/// `GET /metrics`: Prometheus text format 0.0.4.
pub(super) async fn metrics(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize_read(&st, &headers) {
        return *r;
    }
    let (counts, waits, steps) =
        match (st.db.status_counts().await, st.db.queue_waits().await, st.db.step_durations().await) {
            (Ok(c), Ok(w), Ok(s)) => (c, w, s),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return internal(e),
        };
    let c = &st.counters;
    let mut o = String::new();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let accepted = load(&c.deliveries).saturating_sub(load(&c.duplicates));
    o.push_str(
        "# HELP orch_deliveries_total Webhook deliveries received, by outcome.\n# TYPE orch_deliveries_total counter\n",
    );
    let _ = writeln!(o, "orch_deliveries_total{{outcome=\"accepted\"}} {accepted}");
    let _ = writeln!(o, "orch_deliveries_total{{outcome=\"rejected\"}} {}", load(&c.rejected));
    let _ = writeln!(o, "orch_deliveries_total{{outcome=\"duplicate\"}} {}", load(&c.duplicates));
    o.push_str("# HELP orch_runs Runs in the database, by status.\n# TYPE orch_runs gauge\n");
    let count = |s: RunState| counts.iter().find(|(k, _)| *k == s).map_or(0, |(_, n)| *n);
    for s in RunState::ALL {
        let _ = writeln!(o, "orch_runs{{status=\"{s}\"}} {}", count(*s));
    }
    o.push_str("# HELP orch_queue_length Runs waiting for an executor (this server or an agent).\n# TYPE orch_queue_length gauge\n");
    let _ = writeln!(o, "orch_queue_length {}", count(RunState::Queued));
    o.push_str(
        "# HELP orch_queue_wait_seconds Time from queued to taken by an executor.\n# TYPE orch_queue_wait_seconds histogram\n",
    );
    histogram(&mut o, "orch_queue_wait_seconds", "", WAIT_BUCKETS, &waits);
    o.push_str(
        "# HELP orch_step_duration_seconds Time steps took, by how they ended.\n# TYPE orch_step_duration_seconds histogram\n",
    );
    let mut by_status: Vec<StepState> = steps.iter().map(|(s, _)| *s).collect();
    by_status.sort_unstable_by_key(|s| s.as_str());
    by_status.dedup();
    for s in by_status {
        let v: Vec<f64> = steps.iter().filter(|(k, _)| *k == s).map(|(_, d)| *d).collect();
        histogram(&mut o, "orch_step_duration_seconds", &format!("status=\"{s}\""), STEP_BUCKETS, &v);
    }
    o.push_str("# HELP orch_github_requests_total Requests to GitHub's API (each attempt).\n# TYPE orch_github_requests_total counter\n");
    let _ = writeln!(o, "orch_github_requests_total{{result=\"ok\"}} {}", load(&c.github.ok));
    let _ = writeln!(o, "orch_github_requests_total{{result=\"error\"}} {}", load(&c.github.error));
    o.push_str("# HELP orch_github_owed Updates stored for GitHub and not sent yet.\n# TYPE orch_github_owed gauge\n");
    let _ = writeln!(o, "orch_github_owed {}", st.report.owed().await.unwrap_or(0));
    o.push_str(
        "# HELP orch_waiting_for_docker 1 while queued runs wait because Docker does not answer.\n\
         # TYPE orch_waiting_for_docker gauge\n",
    );
    let _ = writeln!(o, "orch_waiting_for_docker {}", u8::from(c.waiting_for_docker.load(Ordering::Relaxed)));
    let now = crate::server::db::now();
    let agents = st.db.agents().await.unwrap_or_default();
    let connected: Vec<_> = agents
        .iter()
        .filter(|a| a.revoked_at.is_none() && a.last_seen.is_some_and(|t| now - t <= crate::server::agents::CONNECTED))
        .collect();
    o.push_str(
        "# HELP orch_agents_connected Agents that asked for work or reported in the last minute.\n\
         # TYPE orch_agents_connected gauge\n",
    );
    let _ = writeln!(o, "orch_agents_connected {}", connected.len());
    o.push_str(
        "# HELP orch_agents_capacity Runs the connected agents execute at once.\n# TYPE orch_agents_capacity gauge\n",
    );
    let _ = writeln!(o, "orch_agents_capacity {}", connected.iter().map(|a| a.capacity.unwrap_or(0)).sum::<i64>());
    o.push_str("# HELP orch_agent_runs Runs agents execute now, by agent.\n# TYPE orch_agent_runs gauge\n");
    for a in &agents {
        let _ = writeln!(o, "orch_agent_runs{{agent=\"{}\"}} {}", a.name, a.running);
    }
    o.push_str("# HELP orch_containers_running Step containers running now.\n# TYPE orch_containers_running gauge\n");
    let _ = writeln!(o, "orch_containers_running {}", c.containers_running.load(Ordering::Relaxed).max(0));
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], o).into_response()
}

/// `GET /readyz`: 200 when the database answers and Docker pings; 503 says which did not.
/// What went wrong is shown only
/// with the API token (or a dashboard session): an error text can tell a stranger about
/// the host.
pub(super) async fn readyz(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let detailed = authorize_write(&st, &headers).is_ok() || has_session(&st, &headers);
    let limit = Duration::from_secs(5);
    let db = match tokio::time::timeout(limit, st.db.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer in 5s".to_string()),
    };
    // A server that executes nothing itself (only agents do) needs no Docker.
    let docker = match tokio::time::timeout(limit, crate::exec::docker::DockerBackend::connect()).await {
        _ if st.cfg.local_capacity == 0 => Ok(()),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer in 5s".to_string()),
    };
    let unused = st.cfg.local_capacity == 0;
    let show = |r: &Result<(), String>| match r {
        Ok(()) if unused && std::ptr::eq(r, &docker) => json!("not used"),
        Ok(()) => json!("ok"),
        Err(e) if detailed => json!(e),
        Err(_) => json!("unavailable"),
    };
    let code = if db.is_ok() && docker.is_ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    reply(code, json!({ "database": show(&db), "docker": show(&docker), "ready": code == StatusCode::OK }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let mut o = String::new();
        histogram(&mut o, "h", "status=\"passed\"", &[1.0, 10.0], &[0.5, 2.0, 20.0]);
        assert_eq!(
            o,
            "h_bucket{status=\"passed\",le=\"1\"} 1\nh_bucket{status=\"passed\",le=\"10\"} 2\n\
             h_bucket{status=\"passed\",le=\"+Inf\"} 3\nh_sum{status=\"passed\"} 22.5\nh_count{status=\"passed\"} 3\n"
        );
        let mut o = String::new();
        histogram(&mut o, "w", "", &[1.0], &[]);
        assert_eq!(o, "w_bucket{le=\"1\"} 0\nw_bucket{le=\"+Inf\"} 0\nw_sum 0\nw_count 0\n");
    }
}
