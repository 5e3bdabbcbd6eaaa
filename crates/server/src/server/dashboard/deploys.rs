//! The environments page (`GET /environments?repo=`): per repository and environment, what
//! is live (its last successful deployment) and its last deployment, then the history of
//! deployments; and a run's deployments, for its page.

use std::fmt::Write as _;

use crate::server::db::{DeploymentRow, EnvironmentRow};

use super::*;

/// How many deployments the history shows.
const HISTORY: i64 = 100;

/// A deployment's status as a pill, coloured like a run's.
fn deploy_pill(status: &str) -> String {
    let (kind, shown) = match status {
        "success" => ("ok", RunState::Success),
        "failure" => ("fail", RunState::Failure),
        "error" => ("fail", RunState::Error),
        "cancelled" => ("cancel", RunState::Cancelled),
        _ => ("run", RunState::Running),
    };
    let label = if status == "in_progress" { "deploying" } else { status };
    format!("<span class=\"pill k-{kind}\" data-status=\"{}\">{}{}</span>", esc(status), icon(shown), esc(label))
}

/// `abc1234 (main)`, linked to its run.
fn commit_cell(d: &DeploymentRow) -> String {
    format!(
        "<a href=\"/runs/{run}\"><code class=\"mono\">{sha}</code></a>{r}",
        run = d.run,
        sha = esc(short(&d.sha)),
        r = d.git_ref.as_deref().map(|r| format!(" <span class=\"muted\">{}</span>", esc(r))).unwrap_or_default(),
    )
}

fn env_card(e: &EnvironmentRow, now: i64) -> String {
    let live = match &e.live {
        Some(d) => format!(
            "{} <span class=\"muted\">since {}</span>{}",
            commit_cell(d),
            time_tag(d.finished_at.unwrap_or(d.created_at), now),
            d.url
                .as_deref()
                .map(|u| format!(" · <a href=\"{0}\" rel=\"noopener\">{0}</a>", esc(u)))
                .unwrap_or_default()
        ),
        None => "<span class=\"muted\">nothing deployed with success yet</span>".into(),
    };
    let last = if e.live.as_ref().map(|d| d.id) == Some(e.last.id) {
        String::new()
    } else {
        format!(
            "<div class=\"m\">last: {} {} {}</div>",
            deploy_pill(&e.last.status),
            commit_cell(&e.last),
            time_tag(e.last.created_at, now)
        )
    };
    let rollback = if e.live.is_some() {
        format!(
            "<div class=\"actions\"><button class=\"rollback\" data-repo=\"{}\" data-environment=\"{}\" \
             title=\"Deploy again the commit that was live here before the live one\">Roll back</button>\
             <span class=\"msg\" role=\"status\"></span></div>",
            esc(&e.repo),
            esc(&e.environment)
        )
    } else {
        String::new()
    };
    format!(
        "<section class=\"card env\" id=\"env-{anchor}\" data-environment=\"{name}\"><h2>{name} \
         <span class=\"muted\">{repo}</span></h2><div>live: {live}</div>{last}{rollback}</section>",
        anchor = url_part(&e.environment),
        name = esc(&e.environment),
        repo = esc(&e.repo),
    )
}

/// The table of deployments (history, or one run's).
pub(super) fn deployments_table(rows: &[DeploymentRow], now: i64) -> String {
    if rows.is_empty() {
        return "<div class=\"empty\">No deployments. A step with an <code>environment</code> deploys.</div>".into();
    }
    let mut out = String::new();
    for d in rows {
        let _ = write!(
            out,
            "<tr data-deployment=\"{id}\"><td>{pill}</td><td><a href=\"/environments?repo={repo_q}#env-{anchor}\">{env}</a>{rb}</td>\
             <td>{repo}</td><td>{commit}</td><td><code class=\"mono\">{step}</code></td><td>{event}{by}</td><td>{when}</td></tr>",
            id = d.id,
            pill = deploy_pill(&d.status),
            repo_q = url_part(&d.repo),
            anchor = url_part(&d.environment),
            env = esc(&d.environment),
            rb = if d.rollback { " <span class=\"muted\">(rollback)</span>" } else { "" },
            repo = esc(&d.repo),
            commit = commit_cell(d),
            step = esc(&d.step),
            event = esc(&d.event),
            by = d.triggered_by.as_deref().map(|a| format!(" · {}", esc(a))).unwrap_or_default(),
            when = time_tag(d.created_at, now),
        );
    }
    format!(
        "<table class=\"agents deployments\"><thead><tr><th>Status</th><th>Environment</th><th>Repository</th>\
         <th>Commit</th><th>Step</th><th>Trigger</th><th>Started</th></tr></thead><tbody>{out}</tbody></table>"
    )
}

/// The rollback buttons: `POST /api/environments/{env}/deploy` with the API token kept in
/// this browser (the run page's), then to the new run.
const ENV_JS: &str = r#"
document.querySelectorAll('button.rollback').forEach((b) => { b.onclick = async () => {
  const m = b.parentNode.querySelector('.msg');
  let t = localStorage.getItem('orch.token');
  if (!t) { t = prompt('API token of this orch server (kept in this browser):', ''); if (!t) return;
    localStorage.setItem('orch.token', t.trim()); t = t.trim(); }
  if (!confirm('Roll back ' + b.dataset.environment + ' of ' + b.dataset.repo + '?')) return;
  m.textContent = 'Rolling back…'; m.className = 'msg ok';
  try {
    const r = await fetch('/api/environments/' + encodeURIComponent(b.dataset.environment) + '/deploy', {
      method: 'POST', headers: { Authorization: 'Bearer ' + t, 'Content-Type': 'application/json' },
      body: JSON.stringify({ repo: b.dataset.repo }) });
    let j = {}; try { j = await r.json(); } catch (e) { /* not JSON */ }
    if (!r.ok) { if (r.status === 401 || r.status === 403) localStorage.removeItem('orch.token');
      m.textContent = j.error || 'HTTP ' + r.status; m.className = 'msg err'; return; }
    location.href = '/runs/' + j.run;
  } catch (e) { m.textContent = 'cannot reach the server: ' + e; m.className = 'msg err'; }
}; });
"#;

/// `GET /environments?repo=`
pub(super) async fn environments_page(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    if let Some(r) = private(&st, &headers, "/environments") {
        return r;
    }
    let repo = q.get("repo").filter(|r| !r.is_empty()).cloned();
    let envs = match st.db.environments(repo.clone()).await {
        Ok(e) => e,
        Err(e) => return internal(e),
    };
    let f = crate::server::db::DeploymentFilter { repo: repo.clone(), limit: HISTORY, ..Default::default() };
    let history = match st.db.deployments(f).await {
        Ok(h) => h,
        Err(e) => return internal(e),
    };
    let now = now();
    let cards: String = envs.iter().map(|e| env_card(e, now)).collect();
    let body = format!(
        "<div class=\"titlebar\" style=\"margin-bottom:14px\"><h1>Environments{of}</h1></div>{cards}\
         <div class=\"titlebar\" style=\"margin:22px 0 14px\"><h1>Deployments</h1></div><div class=\"runs\">{table}</div>",
        of = repo.as_deref().map(|r| format!(" <span class=\"muted\">{}</span>", esc(r))).unwrap_or_default(),
        table = deployments_table(&history, now),
    );
    Html(page("orch · environments", &body, ENV_JS, st.cfg.api_private)).into_response()
}
