//! The dashboard: server-rendered HTML pages for people, next to the JSON API.
//!
//! - `GET /`: the runs, newest first; the list refreshes itself every 2.5 s from
//!   `GET /ui/runs` (the same rows, rendered here, as an HTML fragment).
//! - `GET /runs/{id}`: one run (the page GitHub's `target_url` points at): its trigger, a
//!   Gantt timeline of its steps, skip reasons, artifacts, cancel / re-run buttons (they
//!   call the API with a token kept in the browser) and the log of the selected step,
//!   followed live over the API's Server-Sent Events with ANSI colours rendered. While the
//!   run is queued or running the page refreshes its parts from `GET /ui/runs/{id}`.
//!
//! - `GET /environments`: what is live in each environment, and the deployments.
//! - `GET /dora`: the delivery measures, their definitions, charts and pipeline health.
//! - `GET|POST /login`, `POST /logout`: on a private server (`api_private`) the pages need a
//!   session: the API token, given once in a form, sets an HttpOnly cookie derived from it.
//!
//! No JavaScript build step: the little script there is is inline, plain and small.
//!
//! `assets`: the page frame, its CSS and scripts; `session`: signing in and out of a
//! private server; `view`: a run's steps merged from the database and its plan; `render`:
//! the HTML of statuses, times, the timeline and the artifacts.

mod assets;
mod deploys;
mod dora;
mod render;
mod session;
mod view;

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::AppState;
use super::db::{Run, RunState, StepState, now};

use assets::*;
use render::*;
use session::*;
use view::*;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(index))
        .route("/ui/runs", get(runs_fragment))
        .route("/runs/{id}", get(run_page))
        .route("/agents", get(agents_page))
        .route("/environments", get(deploys::environments_page))
        .route("/dora", get(dora::dora_page))
        .route("/ui/runs/{id}", get(run_parts))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
}

/// Runs shown on the list page.
const LIST_LIMIT: i64 = 100;

pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn not_found(what: &str) -> Response {
    let body = format!("<div class=\"card empty\"><h1>{}</h1><p><a href=\"/\">All runs</a></p></div>", esc(what));
    (StatusCode::NOT_FOUND, Html(page(what, &body, "", false))).into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!("dashboard: {e}");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Html(page("Error", &format!("<div class=\"card\"><pre>{}</pre></div>", esc(&e.to_string())), "", false)),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------
// Runs list

fn run_row(run: &Run, now: i64) -> String {
    let dur = run_secs(run, now).map(|s| human(s as f64)).unwrap_or_else(|| "—".into());
    let started = run.started_at.unwrap_or(run.created_at);
    let meta = format!(
        "{} · {} · <code>{}</code>{}",
        esc(&run.spec.repo),
        esc(&ref_label(run)),
        esc(short(&run.spec.sha)),
        run.spec.author.as_deref().map(|a| format!(" · {}", esc(a))).unwrap_or_default()
    ) + &run
        .rerun_of
        .map(|of| format!(" · re-run{} of #{of}", if run.failed_only { " (failed steps)" } else { "" }))
        .unwrap_or_default();
    format!(
        "<a class=\"run\" href=\"/runs/{id}\" data-run=\"{id}\" data-status=\"{st}\"><span class=\"p\">{pill}</span>\
         <span class=\"c\"><div class=\"t\"><span class=\"n\">#{id}</span> {title}</div><div class=\"m\">{meta}</div></span>\
         <span class=\"m m2\">{meta}</span><span class=\"d\">{dur}</span><span class=\"s\">{when}</span></a>",
        id = run.id,
        st = run.status,
        pill = pill(run.status),
        title = esc(&commit_title(run)),
        when = time_tag(started, now),
    )
}

fn runs_rows(runs: &[Run]) -> String {
    if runs.is_empty() {
        return "<div class=\"empty\">No runs yet. Runs appear here when GitHub delivers a push or a pull request.</div>"
            .into();
    }
    let now = now();
    runs.iter().map(|r| run_row(r, now)).collect()
}

async fn runs_fragment(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(r) = private(&st, &headers, "/ui/runs") {
        return r;
    }
    match st.db.runs(LIST_LIMIT, None).await {
        Ok(runs) => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")],
            runs_rows(&runs),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

const INDEX_JS: &str = r#"
const list=document.getElementById('rows'),live=document.querySelector('#live .dot');let last='';
async function refresh(){if(document.hidden)return;try{const r=await fetch('/ui/runs',{cache:'no-store'});
if(r.status===401){location.reload();return}if(!r.ok)throw 0;const h=await r.text();if(h!==last){list.innerHTML=h;last=h}live.classList.remove('off')}
catch(e){live.classList.add('off')}}
setInterval(refresh,2500);
"#;

async fn index(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(r) = private(&st, &headers, "/") {
        return r;
    }
    let runs = match st.db.runs(LIST_LIMIT, None).await {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let schedules = match st.db.schedules().await {
        Ok(s) => s,
        Err(e) => return internal(e),
    };
    let body = format!(
        "<div class=\"titlebar\" style=\"margin-bottom:14px\"><h1>Runs</h1></div><div class=\"runs\">\
         <div class=\"runs-head\"><span>Status</span><span>Commit</span><span style=\"text-align:right\">Duration</span>\
         <span style=\"text-align:right\">Started</span></div><div id=\"rows\">{}</div></div>{}",
        runs_rows(&runs),
        schedules_table(&schedules, st.clock.now()),
    );
    Html(page("orch · runs", &body, INDEX_JS, st.cfg.api_private)).into_response()
}

/// The schedules of the repositories' default branches, with their next times (none: no
/// section).
fn schedules_table(rows: &[super::db::ScheduleRow], now: i64) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    for s in rows {
        let cron = crate::pipeline::cron::Cron::new(&s.cron, &s.timezone);
        let next = match (s.next_at, &cron) {
            (Some(t), Ok(c)) => format!(
                "<span title=\"{}\">{}</span> <span class=\"muted\">(in {})</span>",
                absolute(t),
                esc(&c.local(t)),
                human((t - now).max(0) as f64)
            ),
            _ => "<span class=\"muted\">never</span>".into(),
        };
        let last = match (s.last_run, &s.last_error) {
            (Some(id), None) => format!("<a href=\"/runs/{id}\">#{id}</a>"),
            (_, Some(e)) => format!("<span class=\"muted\">{}</span>", esc(e)),
            (None, None) => "—".into(),
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td><code class=\"mono\">{}</code> {}</td><td>{next}</td><td>{last}</td></tr>",
            esc(&s.repo),
            esc(&s.name),
            esc(&s.cron),
            esc(&s.timezone),
        );
    }
    format!(
        "<div class=\"titlebar\" style=\"margin:22px 0 14px\"><h1>Schedules</h1></div><div class=\"runs\">\
         <table class=\"agents schedules\"><thead><tr><th>Repository</th><th>Schedule</th><th>Cron</th><th>Next</th>\
         <th>Last</th></tr></thead><tbody>{out}</tbody></table></div>"
    )
}

/// `GET /agents`: the agents, what they said of themselves and what they run.
async fn agents_page(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(r) = private(&st, &headers, "/agents") {
        return r;
    }
    let agents = match st.db.agents().await {
        Ok(a) => a,
        Err(e) => return internal(e),
    };
    let now = now();
    let mut rows = String::new();
    for a in &agents {
        let state = match (a.revoked_at, a.last_seen) {
            (Some(_), _) => "<span class=\"muted\">revoked</span>".to_string(),
            (None, Some(t)) if now - t <= super::agents::CONNECTED => "connected".to_string(),
            (None, Some(_)) => "<span class=\"muted\">away</span>".to_string(),
            (None, None) => "<span class=\"muted\">never seen</span>".to_string(),
        };
        let _ = write!(
            rows,
            "<tr><td><code class=\"mono\">{}</code></td><td>{state}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&a.name),
            if a.labels.is_empty() { "—".into() } else { esc(&a.labels.join(", ")) },
            a.capacity.map_or("—".into(), |c| c.to_string()),
            a.running,
            a.last_seen.map_or("—".into(), |t| time_tag(t, now)),
        );
    }
    let local = if st.cfg.local_capacity > 0 {
        format!(
            "This server executes runs too: {} at once{}.",
            st.cfg.local_capacity,
            if st.cfg.labels.is_empty() {
                String::new()
            } else {
                format!(", labelled {}", esc(&st.cfg.labels.join(", ")))
            }
        )
    } else {
        "This server executes no runs itself: agents do.".to_string()
    };
    let table = if agents.is_empty() {
        "<div class=\"empty\">No agents. Create one with <code>orch agent-token create NAME</code> on this \
         machine, then run <code>orch agent</code> on another (docs/agents.md).</div>"
            .to_string()
    } else {
        format!(
            "<table class=\"agents\"><thead><tr><th>Agent</th><th>State</th><th>Labels</th><th>Capacity</th>\
             <th>Running</th><th>Last seen</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    };
    let body = format!(
        "<div class=\"titlebar\" style=\"margin-bottom:14px\"><h1>Agents</h1></div><p class=\"muted\">{local}</p>\
         <div class=\"runs\">{table}</div>"
    );
    Html(page("orch · agents", &body, "", st.cfg.api_private)).into_response()
}

fn url_part(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn url_path(s: &str) -> String {
    s.split('/').map(url_part).collect::<Vec<_>>().join("/")
}

/// The run's deployment gates: who approved so far, and, while one waits, the buttons to
/// vote (with the token kept in the browser: a person's named token).
fn render_gates(v: &RunView) -> String {
    let mut out = String::new();
    for g in &v.gates {
        let approved = g.approved_by();
        let by = if approved.is_empty() { "no one yet".to_string() } else { esc(&approved.join(", ")) };
        let rejected: Vec<&str> = g.votes.iter().filter(|x| x.vote == "reject").map(|x| x.who.as_str()).collect();
        let _ = write!(
            out,
            "<div class=\"gate\" data-env=\"{env}\" data-status=\"{status}\"><b>{env}</b> <span class=\"muted\">(step              <code class=\"mono\">{step}</code>)</span>: {status_text} · approved by {by} · {req} of {approvers} needed",
            env = esc(&g.environment),
            step = esc(&g.step),
            status = esc(&g.status),
            status_text = esc(&g.status.replace('_', " ")),
            req = g.required,
            approvers = esc(&g.approvers.join(", ")),
        );
        if !rejected.is_empty() {
            let _ = write!(out, " · rejected by {}", esc(&rejected.join(", ")));
        }
        if let Some(r) = &g.reason {
            let _ = write!(out, " <span class=\"muted\">({})</span>", esc(r));
        }
        if g.status == "waiting" {
            let _ = write!(
                out,
                " <button class=\"gate-vote\" data-env=\"{e}\" data-vote=\"approve\">Approve</button>                  <button class=\"gate-vote danger\" data-env=\"{e}\" data-vote=\"reject\">Reject</button>",
                e = esc(&g.environment)
            );
        }
        out.push_str("</div>");
    }
    out
}

fn parts(v: &RunView) -> Value {
    let done = !v.run.status.is_active();
    json!({
        "status": v.run.status,
        "done": done,
        "gates": render_gates(v),
        "head": render_head(v),
        "timeline": render_timeline(v),
        "artifacts": render_artifacts(v),
        "steps": v.steps.iter().map(|s| json!({"name": s.name, "status": s.status})).collect::<Vec<_>>(),
    })
}

/// The step whose log the page opens with: the first that failed, else one running, else
/// the last that ran.
fn default_step(v: &RunView) -> Option<&str> {
    let ran = |s: &&Step| s.started.is_some() || s.status == StepState::Running;
    v.steps
        .iter()
        .find(|s| kind(s.status) == "fail" && s.started.is_some())
        .or_else(|| v.steps.iter().find(|s| s.status == StepState::Running))
        .or_else(|| v.steps.iter().rfind(ran))
        .map(|s| s.name.as_str())
}

async fn run_parts(State(st): State<Arc<AppState>>, UrlPath(id): UrlPath<i64>, headers: HeaderMap) -> Response {
    if let Some(r) = private(&st, &headers, &format!("/ui/runs/{id}")) {
        return r;
    }
    match load(&st, id).await {
        Ok(Some(v)) => {
            ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], parts(&v).to_string())
                .into_response()
        }
        Ok(None) => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "application/json")],
            json!({"error": format!("no run {id}")}).to_string(),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

const RUN_JS: &str = include_str!("dashboard.js");

async fn run_page(State(st): State<Arc<AppState>>, UrlPath(id): UrlPath<i64>, headers: HeaderMap) -> Response {
    if let Some(r) = private(&st, &headers, &format!("/runs/{id}")) {
        return r;
    }
    let v = match load(&st, id).await {
        Ok(Some(v)) => v,
        Ok(None) => return not_found(&format!("No run {id}")),
        Err(e) => return internal(e),
    };
    let f = super::db::DeploymentFilter { run: Some(id), limit: 500, ..Default::default() };
    let deployments = match st.db.deployments(f).await {
        Ok(d) if d.is_empty() => String::new(),
        Ok(d) => format!(
            "<section class=\"card\" id=\"deployments\"><h2>Deployments</h2><div class=\"runs\">{}</div></section>",
            deploys::deployments_table(&d, now())
        ),
        Err(e) => return internal(e),
    };
    let r = &v.run;
    let done = !r.status.is_active();
    let body = format!(
        "<div class=\"crumbs\"><a href=\"/\">Runs</a> / {repo} / <b>Run {id}</b></div>\
         <section class=\"card head\" id=\"run\" data-run=\"{id}\" data-status=\"{st}\" data-done=\"{done}\" data-default-step=\"{def}\">\
         <div id=\"head\">{head}</div>\
         <div class=\"actions\"><button id=\"cancel\" class=\"danger\"{hide_cancel}>Cancel</button>\
         <button id=\"rerun\"{hide_rerun}>Re-run</button><button id=\"rerun-failed\"{hide_failed}>Re-run failed</button>\
         <button id=\"token\" class=\"linkish\" title=\"The API token the buttons use (kept in this browser)\">API token…</button>\
         <span id=\"msg\" role=\"status\"></span></div></section>\
         <section class=\"card\" id=\"gates-card\"{hide_gates}><h2>Deployment gates</h2><div id=\"gates\">{gates}</div></section>\
         <section class=\"card\"><h2>Timeline</h2><div id=\"timeline\">{timeline}</div></section>{deployments}\
         <section class=\"card\" id=\"logs\"><div class=\"loghead\"><h2>Log <span id=\"logstep\" class=\"mono\"></span></h2>\
         <span id=\"logstate\" class=\"muted\"></span><span class=\"sp\"></span>\
         <label><input type=\"checkbox\" id=\"follow\" checked> auto-scroll</label><a id=\"raw\" href=\"#\" target=\"_blank\">raw</a></div>\
         <pre class=\"log\" id=\"log\"><span class=\"muted\">Select a step to see its log.</span></pre></section>\
         <section class=\"card\"><h2>Artifacts</h2><div id=\"artifacts\">{artifacts}</div></section>",
        repo = esc(&r.spec.repo),
        id = r.id,
        st = r.status,
        def = esc(default_step(&v).unwrap_or("")),
        head = render_head(&v),
        timeline = render_timeline(&v),
        gates = render_gates(&v),
        hide_gates = if v.gates.is_empty() { " hidden" } else { "" },
        artifacts = render_artifacts(&v),
        hide_cancel = if done { " hidden" } else { "" },
        hide_rerun = if done { "" } else { " hidden" },
        hide_failed =
            if matches!(r.status, RunState::Failure | RunState::Error | RunState::Cancelled) { "" } else { " hidden" },
    );
    Html(page(&format!("#{id} {} · {}", r.status, r.spec.repo), &body, RUN_JS, st.cfg.api_private)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::db::StepRow;

    #[test]
    fn escapes_and_times() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(absolute(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(absolute(1_764_169_472), "2025-11-26 15:04:32 UTC");
        assert_eq!(relative(100, 103), "just now");
        assert_eq!(relative(100, 100 + 125), "2 min ago");
        assert_eq!(relative(0, 3 * 86_400), "3 d ago");
        assert_eq!(crate::fmt::size(512), "512 B");
        assert_eq!(crate::fmt::size(2048), "2.0 KiB");
        assert_eq!(url_path("a b/c#d.txt"), "a%20b/c%23d.txt");
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick(4.0), 1.0);
        assert_eq!(tick(12.0), 2.0);
        assert_eq!(tick(95.0), 15.0);
        assert_eq!(tick(1000.0), 300.0);
        assert_eq!(axis_label(90.0), "1m30s");
        assert_eq!(axis_label(120.0), "2m");
    }

    fn row(name: &str, status: &str, started: Option<f64>, duration: Option<f64>) -> StepRow {
        StepRow {
            name: name.into(),
            stage: None,
            status: StepState::parse(status).unwrap(),
            exit_code: None,
            attempts: 1,
            started,
            duration,
            message: None,
        }
    }

    #[test]
    fn steps_merge_the_database_and_the_plan() {
        let run = Run {
            id: 7,
            delivery_id: Some("d".into()),
            spec: Default::default(),
            status: RunState::Running,
            reason: None,
            created_at: 0,
            started_at: Some(0),
            finished_at: None,
            attempts: 1,
            check_run_id: None,
            report_error: None,
            rerun_of: None,
            failed_only: false,
            agent: None,
            labels: None,
            lost: 0,
            dispatched_at: None,
        };
        let plan: PlanFile = serde_json::from_value(json!({
            "steps": [{"name": "build", "stage": "build", "needs": []}, {"name": "test", "stage": "test", "needs": ["build"]},
                      {"name": "lint", "stage": "test", "needs": []}],
            "skipped": [{"name": "deploy", "stage": "deploy", "reason": "branch `main` is not `release`"}]
        }))
        .unwrap();
        let rows = vec![row("lint", "running", Some(0.5), None), row("build", "passed", Some(0.2), Some(3.0))];
        let v = merge(run, rows, &plan, String::new(), Vec::new(), Some(10.0));
        let names: Vec<(&str, &str)> = v.steps.iter().map(|s| (s.name.as_str(), s.status.as_str())).collect();
        assert_eq!(names, [("build", "passed"), ("lint", "running"), ("test", "pending"), ("deploy", "skipped")]);
        assert_eq!(v.steps[1].duration, Some(9.5));
        assert_eq!(v.steps[2].note.as_deref(), Some("waits for build"));
        let html = render_timeline(&v);
        assert!(html.contains("data-step=\"deploy\" data-status=\"skipped\""), "{html}");
        assert!(html.contains("branch `main` is not `release`"), "{html}");
        assert_eq!(default_step(&v), Some("lint"));
    }
}
