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
//! - `GET|POST /login`, `POST /logout`: on a private server (`api_private`) the pages need a
//!   session: the API token, given once in a form, sets an HttpOnly cookie derived from it.
//!
//! No JavaScript build step: the little script there is is inline, plain and small.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::AppState;
use super::db::{Run, RunState, StepRow, StepState, now};
use super::worker::run_dir;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(index))
        .route("/ui/runs", get(runs_fragment))
        .route("/runs/{id}", get(run_page))
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

// ---------------------------------------------------------------------------------------
// Statuses, times

/// A run's or a step's status, as the pages show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shown {
    Run(RunState),
    Step(StepState),
}

impl From<RunState> for Shown {
    fn from(s: RunState) -> Self {
        Shown::Run(s)
    }
}

impl From<StepState> for Shown {
    fn from(s: StepState) -> Self {
        Shown::Step(s)
    }
}

impl Shown {
    fn as_str(self) -> &'static str {
        match self {
            Shown::Run(s) => s.as_str(),
            Shown::Step(s) => s.as_str(),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Shown::Run(s) => s.as_str(),
            Shown::Step(s) => s.label(),
        }
    }
}

/// The colour family of a run or step status.
fn kind(status: impl Into<Shown>) -> &'static str {
    use {RunState as R, StepState as S};
    match status.into() {
        Shown::Run(R::Success) | Shown::Step(S::Passed) => "ok",
        Shown::Run(R::Failure | R::Error) | Shown::Step(S::Failed | S::TimedOut | S::Error) => "fail",
        Shown::Run(R::Running) | Shown::Step(S::Running) => "run",
        Shown::Run(R::Cancelled) | Shown::Step(S::Cancelled) => "cancel",
        Shown::Run(R::Skipped) | Shown::Step(S::Skipped) => "skip",
        Shown::Run(R::Queued) | Shown::Step(S::Pending) => "wait",
    }
}

fn icon(status: impl Into<Shown>) -> &'static str {
    macro_rules! svg {
        ($cls:literal, $body:literal) => {
            concat!(
                "<svg class=\"ic",
                $cls,
                "\" viewBox=\"0 0 16 16\" width=\"16\" height=\"16\" aria-hidden=\"true\" ",
                "fill=\"none\" stroke=\"currentColor\" stroke-width=\"2\" stroke-linecap=\"round\" stroke-linejoin=\"round\">",
                $body,
                "</svg>"
            )
        };
    }
    use {RunState as R, StepState as S};
    match status.into() {
        Shown::Run(R::Success) | Shown::Step(S::Passed) => svg!("", "<path d=\"M13.5 4.5 6.5 11.5 2.5 7.5\"/>"),
        Shown::Run(R::Failure) | Shown::Step(S::Failed) => svg!("", "<path d=\"M4 4l8 8M12 4l-8 8\"/>"),
        Shown::Step(S::TimedOut) => svg!("", "<circle cx=\"8\" cy=\"8\" r=\"6\"/><path d=\"M8 4.5V8l2.5 1.5\"/>"),
        Shown::Run(R::Error) | Shown::Step(S::Error) => {
            svg!("", "<path d=\"M8 2 14.5 13.5h-13z\"/><path d=\"M8 6.5v3M8 11.6v.01\"/>")
        }
        Shown::Run(R::Running) | Shown::Step(S::Running) => {
            svg!(" spin", "<circle cx=\"8\" cy=\"8\" r=\"6\" stroke-dasharray=\"26 12\"/>")
        }
        Shown::Run(R::Cancelled) | Shown::Step(S::Cancelled) => {
            svg!("", "<circle cx=\"8\" cy=\"8\" r=\"6\"/><path d=\"M3.8 12.2l8.4-8.4\"/>")
        }
        Shown::Run(R::Skipped) | Shown::Step(S::Skipped) => svg!("", "<path d=\"M3 4l4.5 4L3 12M9 4l4.5 4L9 12\"/>"),
        Shown::Run(R::Queued) | Shown::Step(S::Pending) => {
            svg!("", "<circle cx=\"8\" cy=\"8\" r=\"6\" stroke-dasharray=\"2 3\"/>")
        }
    }
}

fn pill(status: impl Into<Shown>) -> String {
    let s = status.into();
    format!("<span class=\"pill k-{}\" data-status=\"{}\">{}{}</span>", kind(s), s.as_str(), icon(s), esc(s.label()))
}

/// `2026-11-26 15:04:05 UTC`
fn absolute(epoch: i64) -> String {
    let (y, m, d, h, mi, s) = crate::clock::utc(epoch);
    format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC")
}

fn relative(epoch: i64, now: i64) -> String {
    let ago = (now - epoch).max(0);
    match ago {
        0..=9 => "just now".into(),
        10..=59 => format!("{ago} s ago"),
        60..=3599 => format!("{} min ago", ago / 60),
        3600..=86_399 => format!("{} h ago", ago / 3600),
        _ => format!("{} d ago", ago / 86_400),
    }
}

fn time_tag(epoch: i64, now: i64) -> String {
    format!("<time datetime=\"{epoch}\" title=\"{}\">{}</time>", absolute(epoch), relative(epoch, now))
}

fn human(secs: f64) -> String {
    crate::fmt::duration(Duration::from_secs_f64(secs.max(0.0)))
}

/// How long a run took, or has been running.
fn run_secs(run: &Run, now: i64) -> Option<i64> {
    let start = run.started_at?;
    Some(run.finished_at.unwrap_or(if run.status == RunState::Running { now } else { start }) - start)
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(8)]
}

/// `#12 feature` for a pull request, the branch or tag otherwise.
fn ref_label(run: &Run) -> String {
    match (&run.spec.pr, &run.spec.tag, &run.spec.branch) {
        (Some(n), _, Some(b)) => format!("#{n} · {b}"),
        (Some(n), _, None) => format!("#{n}"),
        (None, Some(t), _) => format!("tag {t}"),
        (None, None, Some(b)) => b.clone(),
        _ => String::new(),
    }
}

fn commit_title(run: &Run) -> String {
    run.spec
        .title
        .as_deref()
        .and_then(|t| t.lines().next())
        .filter(|t| !t.trim().is_empty())
        .unwrap_or("(no commit message)")
        .to_string()
}

// ---------------------------------------------------------------------------------------
// Page frame

const CSS: &str = r#"
:root{--bg:#f6f8fa;--card:#fff;--fg:#1f2328;--muted:#656d76;--line:#d0d7de;--soft:#eaeef2;--link:#0969da;
--ok:#1a7f37;--ok-bg:#dafbe1;--ok-bar:#2da44e;--fail:#cf222e;--fail-bg:#ffebe9;--fail-bar:#e5534b;
--run:#9a6700;--run-bg:#fff8c5;--run-bar:#d4a72c;--cancel:#57606a;--cancel-bg:#eaeef2;--cancel-bar:#8c959f;
--skip:#8c959f;--skip-bg:#f6f8fa;--wait:#656d76;--wait-bg:#eaeef2;--log-bg:#0d1117;--log-fg:#e6edf3}
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--card:#161b22;--fg:#e6edf3;--muted:#8d96a0;--line:#30363d;
--soft:#21262d;--link:#4493f8;--ok:#3fb950;--ok-bg:#12261e;--fail:#f85149;--fail-bg:#2d1517;--run:#d29922;
--run-bg:#2e2208;--cancel:#8d96a0;--cancel-bg:#21262d;--skip:#6e7681;--skip-bg:#161b22;--wait:#8d96a0;--wait-bg:#21262d;
--log-bg:#010409}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",Helvetica,Arial,sans-serif}
a{color:var(--link);text-decoration:none}a:hover{text-decoration:underline}
code,pre,.mono{font-family:ui-monospace,SFMono-Regular,"SF Mono",Menlo,Consolas,"DejaVu Sans Mono","Liberation Mono",monospace;font-size:12.5px}
.top{background:#24292f;color:#fff;padding:10px 20px;display:flex;align-items:center;gap:16px}
.top a{color:#fff;font-weight:600}.brand{font-size:16px;display:flex;align-items:center;gap:8px}
.brand svg{color:#58d68d}.top .sp{flex:1}.signout{margin:0 0 0 12px}.signout button{font-size:12px;padding:2px 8px}.top .live{font-size:12px;color:#afb8c1;display:flex;align-items:center;gap:6px}
.dot{width:8px;height:8px;border-radius:50%;background:#3fb950;display:inline-block}.dot.off{background:#8c959f}
main{max-width:1180px;margin:0 auto;padding:20px}
h1{font-size:20px;margin:0;font-weight:600;overflow-wrap:anywhere}h2{font-size:15px;margin:0 0 12px;font-weight:600}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:16px;margin-bottom:16px}
.muted{color:var(--muted)}.ic{flex:none;vertical-align:-3px}.spin{animation:spin 1s linear infinite}
@keyframes spin{to{transform:rotate(360deg)}}
.pill{display:inline-flex;align-items:center;gap:5px;padding:2px 10px 2px 8px;border-radius:999px;font-size:12.5px;font-weight:600;white-space:nowrap}
.pill.k-ok{color:var(--ok);background:var(--ok-bg)}.pill.k-fail{color:var(--fail);background:var(--fail-bg)}
.pill.k-run{color:var(--run);background:var(--run-bg)}.pill.k-cancel{color:var(--cancel);background:var(--cancel-bg)}
.pill.k-skip{color:var(--skip);background:var(--skip-bg);border:1px dashed var(--line)}.pill.k-wait{color:var(--wait);background:var(--wait-bg)}
/* runs list */
.runs{background:var(--card);border:1px solid var(--line);border-radius:10px;overflow:hidden}
.run,.runs-head{display:grid;grid-template-columns:120px minmax(0,1fr) 90px 110px;gap:12px;align-items:center;padding:10px 16px;border-top:1px solid var(--soft);color:inherit}
.runs-head{border-top:0;background:var(--soft);color:var(--muted);font-size:12px;font-weight:600;padding:8px 16px}
.run:hover{background:var(--bg);text-decoration:none}.run .t{font-weight:600;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.run .m{color:var(--muted);font-size:12.5px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.run .m code{background:var(--soft);padding:0 5px;border-radius:5px}.run .n{color:var(--muted);font-weight:400}
.run .d,.run .s{color:var(--muted);font-size:12.5px;text-align:right;white-space:nowrap}
.empty{padding:40px;text-align:center;color:var(--muted)}
@media (max-width:700px){main{padding:12px}.runs-head{display:none}
.run{grid-template-columns:minmax(0,1fr) auto;grid-template-areas:"t p" "m m" "s d";row-gap:4px;padding:12px}
.run .p{grid-area:p}.run .c{grid-area:t;min-width:0}.run .c .t{white-space:normal}.run .c .m{display:none}
.run .m2{display:block!important;grid-area:m}.run .d{grid-area:d}.run .s{grid-area:s;text-align:left}}
.run .m2{display:none}
/* run page */
.crumbs{margin-bottom:12px;color:var(--muted)}
.head{display:flex;flex-direction:column;gap:12px}.titlebar{display:flex;align-items:center;gap:12px;flex-wrap:wrap}
.meta{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:10px 20px;margin:0}
.meta div{min-width:0}.meta dt{color:var(--muted);font-size:12px}.meta dd{margin:0;overflow-wrap:anywhere}
.reason{margin:0}.errtxt{background:var(--fail-bg);color:var(--fg);border:1px solid var(--fail);border-radius:8px;padding:12px;overflow:auto;max-height:320px;margin:0;white-space:pre-wrap}
.actions{display:flex;gap:8px;flex-wrap:wrap;align-items:center}
button{font:inherit;font-weight:600;font-size:13px;padding:6px 14px;border-radius:6px;border:1px solid var(--line);background:var(--soft);color:var(--fg);cursor:pointer}
button:hover{filter:brightness(.96)}button.danger{color:var(--fail)}button.primary{background:#1f883d;border-color:#1a7f37;color:#fff}
button:disabled{opacity:.5;cursor:default}.linkish{background:none;border:0;color:var(--link);font-weight:400;padding:6px}
#msg{font-size:13px}#msg.err{color:var(--fail)}#msg.ok{color:var(--ok)}
/* gantt */
.gantt{--lw:190px;position:relative}
.g-axis{position:relative;height:20px;margin-left:var(--lw);border-bottom:1px solid var(--line);font-size:11px;color:var(--muted)}
.g-axis span{position:absolute;bottom:3px;transform:translateX(-50%);white-space:nowrap}.g-axis span:first-child{transform:none}
.g-rows{position:relative}
.g-grid{position:absolute;top:0;bottom:0;left:var(--lw);right:0;pointer-events:none}
.g-grid i{position:absolute;top:0;bottom:0;border-left:1px dashed var(--soft)}
.g-row{display:grid;grid-template-columns:var(--lw) 1fr;align-items:center;min-height:34px;cursor:pointer;border-radius:6px;position:relative}
.g-row:hover{background:var(--bg)}.g-row.sel{background:var(--soft)}
.g-name{display:flex;align-items:center;gap:6px;padding:0 8px;min-width:0;font-weight:600}
.g-name .nm{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.g-name .ic{color:var(--c)}.g-track{position:relative;height:22px;overflow:hidden}
.g-bar{position:absolute;top:0;height:22px;border-radius:5px;background:var(--b);min-width:4px;display:flex;align-items:center;padding:0 6px;color:#fff;font-size:11.5px;font-weight:600;white-space:nowrap;overflow:visible}
.g-bar .lbl{position:absolute;left:calc(100% + 6px);color:var(--muted);font-weight:400}
.g-bar.inside{overflow:hidden}.g-bar.inside .lbl{position:static;color:#fff;font-weight:600;overflow:hidden;text-overflow:ellipsis}
.g-bar.before .lbl{left:auto;right:calc(100% + 6px)}
.g-note{position:absolute;left:0;top:2px;color:var(--muted);font-size:12px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;max-width:100%}
.k-ok.g-row{--b:var(--ok-bar);--c:var(--ok)}.k-fail.g-row{--b:var(--fail-bar);--c:var(--fail)}.k-cancel.g-row{--b:var(--cancel-bar);--c:var(--cancel)}
.k-run.g-row{--b:var(--run-bar);--c:var(--run)}.k-wait.g-row,.k-skip.g-row{--c:var(--skip)}
.g-row.k-run .g-bar{background:repeating-linear-gradient(-45deg,var(--run-bar) 0 8px,#e3b341 8px 16px);background-size:22px 22px;animation:stripes 1s linear infinite}
@keyframes stripes{to{background-position:22px 0}}
.g-row.k-skip .nm,.g-row.k-wait .nm{color:var(--muted);font-weight:500}
.stage{font-size:11px;color:var(--muted);font-weight:400;border:1px solid var(--line);border-radius:4px;padding:0 4px}
.skiph{font-size:13px;margin:16px 0 4px;color:var(--muted);font-weight:600}
.skips{margin:0;padding:0;list-style:none;border-top:1px solid var(--soft)}
.skips li{padding:6px 0;color:var(--skip);border-bottom:1px solid var(--soft);display:flex;gap:8px;align-items:baseline;flex-wrap:wrap}
.skips b{font-weight:600;color:var(--fg)}
table.arts{width:100%;border-collapse:collapse}table.arts td,table.arts th{text-align:left;padding:6px 8px;border-bottom:1px solid var(--soft)}
table.arts th{font-size:12px;color:var(--muted);font-weight:600}table.arts td.sz{text-align:right;color:var(--muted);white-space:nowrap}
table.arts td.f{overflow-wrap:anywhere}
.loghead{display:flex;align-items:center;gap:10px;flex-wrap:wrap;margin-bottom:10px}.loghead h2{margin:0}
.loghead .sp{flex:1}.loghead label{font-size:12.5px;color:var(--muted);display:flex;gap:4px;align-items:center}
pre.log{background:var(--log-bg);color:var(--log-fg);margin:0;padding:12px 14px;border-radius:8px;overflow:auto;max-height:70vh;min-height:120px;line-height:1.5;white-space:pre-wrap;overflow-wrap:anywhere}
pre.log .b{font-weight:700}
.c30{color:#6e7681}.c31{color:#ff7b72}.c32{color:#3fb950}.c33{color:#d29922}.c34{color:#58a6ff}.c35{color:#bc8cff}.c36{color:#39c5cf}.c37{color:#b1bac4}
.c90{color:#8b949e}.c91{color:#ffa198}.c92{color:#56d364}.c93{color:#e3b341}.c94{color:#79c0ff}.c95{color:#d2a8ff}.c96{color:#56d4dd}.c97{color:#fff}
@media (max-width:700px){.gantt{--lw:118px}.g-bar{font-size:10.5px}.card{padding:12px}.meta{grid-template-columns:1fr 1fr}
.g-name .stage{display:none}h1{font-size:17px}}
"#;

const LOGO: &str = "<svg viewBox=\"0 0 16 16\" width=\"18\" height=\"18\" aria-hidden=\"true\" fill=\"currentColor\"><circle cx=\"3\" cy=\"8\" r=\"2.2\"/><circle cx=\"13\" cy=\"3.5\" r=\"2.2\"/><circle cx=\"13\" cy=\"12.5\" r=\"2.2\"/><path d=\"M3 8 13 3.5M3 8l10 4.5\" stroke=\"currentColor\" stroke-width=\"1.4\"/></svg>";

/// A whole page; `signed_in`: a private server's page, with a button that ends the session.
fn page(title: &str, body: &str, script: &str, signed_in: bool) -> String {
    // A form (POST): a link or an image elsewhere cannot sign anyone out.
    let signout = if signed_in {
        "<form method=\"post\" action=\"/logout\" class=\"signout\"><button type=\"submit\">Sign out</button></form>"
    } else {
        ""
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta name=\"color-scheme\" content=\"light dark\"><title>{}</title><style>{CSS}</style></head>\
         <body><header class=\"top\"><a class=\"brand\" href=\"/\">{LOGO}orch</a><a href=\"/\">Runs</a><span class=\"sp\"></span>\
         <span class=\"live\" id=\"live\"><span class=\"dot\"></span>live</span>{signout}</header><main>{body}</main>\
         <script>{script}</script></body></html>",
        esc(title)
    )
}

/// With `api_private`, the pages show what the API hides: they need a session. A page is
/// sent to the sign-in form (and back to `next` after it); a fragment the page's script
/// fetches gets 401, and the script reloads into the form.
fn private(st: &AppState, headers: &HeaderMap, next: &str) -> Option<Response> {
    if !st.cfg.api_private || super::api::has_session(st, headers) {
        return None;
    }
    if next.starts_with("/ui/") {
        return Some((StatusCode::UNAUTHORIZED, "sign in at /login").into_response());
    }
    Some(Redirect::to(&format!("/login?next={}", url_part(next))).into_response())
}

#[derive(serde::Deserialize)]
struct Next {
    next: Option<String>,
}

#[derive(serde::Deserialize)]
struct SignIn {
    token: String,
    next: Option<String>,
}

/// Where to go after signing in: a path of this server, nothing else. Browsers drop tabs
/// and newlines and read `\\` as `/`, so only plain path characters pass.
fn local_path(next: Option<&str>) -> &str {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/-._~%?=&#+".contains(c);
    next.filter(|n| n.starts_with('/') && !n.starts_with("//") && n.chars().all(plain)).unwrap_or("/")
}

fn login_form(st: &AppState, next: &str, problem: Option<&str>) -> String {
    let body = if st.cfg.api_token.is_none() {
        "<div class=\"card empty\"><h1>Sign-in is off</h1><p>This server keeps its runs private \
         (<code>api_private</code>) and has no <code>api_token</code>: its runs are seen through \
         neither the API nor the dashboard.</p></div>"
            .to_string()
    } else {
        format!(
            "<div class=\"card\"><h1>Sign in</h1><p>This server keeps its runs private. Give its API token \
             (<code>api_token</code>) once; this browser keeps a session.</p>{}\
             <form method=\"post\" action=\"/login\" onsubmit=\"localStorage.setItem('orch.token', this.token.value)\">\
             <input type=\"hidden\" name=\"next\" value=\"{}\">\
             <input type=\"password\" name=\"token\" autocomplete=\"current-password\" autofocus required \
             placeholder=\"API token\" aria-label=\"API token\"> <button type=\"submit\">Sign in</button></form></div>",
            problem.map(|p| format!("<p class=\"problem\">{}</p>", esc(p))).unwrap_or_default(),
            esc(next)
        )
    };
    page("Sign in", &body, "", false)
}

async fn login_page(State(st): State<Arc<AppState>>, Query(q): Query<Next>) -> Response {
    Html(login_form(&st, local_path(q.next.as_deref()), None)).into_response()
}

async fn login(State(st): State<Arc<AppState>>, Form(f): Form<SignIn>) -> Response {
    let next = local_path(f.next.as_deref()).to_string();
    let Some(token) = &st.cfg.api_token else {
        return (StatusCode::FORBIDDEN, Html(login_form(&st, &next, None))).into_response();
    };
    if !super::api::same(f.token.as_bytes(), token.as_bytes()) {
        return (StatusCode::UNAUTHORIZED, Html(login_form(&st, &next, Some("That is not this server's API token."))))
            .into_response();
    }
    // Secure when people reach the server over https (behind a proxy, as they should).
    let secure = if st.cfg.public_url.starts_with("https://") { "; Secure" } else { "" };
    let cookie = format!(
        "{}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
        super::api::SESSION_COOKIE,
        super::api::session_value(token, now()),
        super::api::SESSION_SECS
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response()
}

async fn logout() -> Response {
    let cookie = format!("{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0", super::api::SESSION_COOKIE);
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
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
    let body = format!(
        "<div class=\"titlebar\" style=\"margin-bottom:14px\"><h1>Runs</h1></div><div class=\"runs\">\
         <div class=\"runs-head\"><span>Status</span><span>Commit</span><span style=\"text-align:right\">Duration</span>\
         <span style=\"text-align:right\">Started</span></div><div id=\"rows\">{}</div></div>",
        runs_rows(&runs)
    );
    Html(page("orch · runs", &body, INDEX_JS, st.cfg.api_private)).into_response()
}

// ---------------------------------------------------------------------------------------
// One run

/// A step as the run page shows it: from the database, or from the plan when it has not
/// started (pending) or was skipped when planned.
struct Step {
    name: String,
    stage: Option<String>,
    status: StepState,
    started: Option<f64>,
    duration: Option<f64>,
    note: Option<String>,
    attempts: i64,
    exit_code: Option<i64>,
}

struct RunView {
    run: Run,
    steps: Vec<Step>,
    /// Planned steps skipped, with why.
    skipped: Vec<(String, String)>,
    error: String,
    artifacts: Vec<(String, String, u64)>,
}

async fn load(st: &AppState, id: i64) -> Result<Option<RunView>, super::db::DbError> {
    let Some(run) = st.db.run(id).await? else { return Ok(None) };
    let rows = st.db.steps(id).await?;
    let dir = run_dir(&st.cfg, id);
    let d2 = dir.clone();
    let (plan, error, artifacts) = tokio::task::spawn_blocking(move || {
        let plan: PlanFile =
            std::fs::read(d2.join("plan.json")).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        let error = std::fs::read_to_string(d2.join("error.txt")).unwrap_or_default();
        (plan, error, list_artifacts(&d2))
    })
    .await
    .unwrap_or_default();
    let now_secs = now();
    let elapsed = run.started_at.map(|s| (now_secs - s) as f64);
    Ok(Some(merge(run, rows, &plan, error, artifacts, elapsed)))
}

/// What the pages read of a run's `plan.json` (`orch plan --format json`'s schema).
#[derive(Debug, Default, serde::Deserialize)]
struct PlanFile {
    #[serde(default)]
    steps: Vec<PlannedStep>,
    #[serde(default)]
    skipped: Vec<SkippedStep>,
}

#[derive(Debug, serde::Deserialize)]
struct PlannedStep {
    name: String,
    stage: Option<String>,
    #[serde(default)]
    needs: Vec<String>,
}

#[derive(Debug, serde::Deserialize)]
struct SkippedStep {
    name: String,
    stage: Option<String>,
    reason: String,
}

fn merge(
    run: Run,
    rows: Vec<StepRow>,
    plan: &PlanFile,
    error: String,
    artifacts: Vec<(String, String, u64)>,
    elapsed: Option<f64>,
) -> RunView {
    let running = run.status == RunState::Running;
    let mut steps: Vec<Step> = rows
        .into_iter()
        .map(|r| {
            let duration = match (r.status, r.duration, r.started, elapsed) {
                (StepState::Running, _, Some(s), Some(e)) if running => Some((e - s).max(0.0)),
                (_, d, _, _) => d,
            };
            Step {
                name: r.name,
                stage: r.stage,
                // A step row left running by a run that ended was stopped with it.
                status: if r.status == StepState::Running && !running { StepState::Cancelled } else { r.status },
                started: r.started,
                duration,
                note: r.message,
                attempts: r.attempts,
                exit_code: r.exit_code,
            }
        })
        .collect();
    for p in &plan.steps {
        if let Some(s) = steps.iter_mut().find(|s| s.name == p.name) {
            if s.stage.is_none() {
                s.stage = p.stage.clone();
            }
        } else if !p.name.is_empty() {
            let status = if run.status.is_active() { StepState::Pending } else { StepState::Cancelled };
            let note = (!p.needs.is_empty()).then(|| format!("waits for {}", p.needs.join(", ")));
            steps.push(Step {
                name: p.name.clone(),
                stage: p.stage.clone(),
                status,
                started: None,
                duration: None,
                note,
                attempts: 0,
                exit_code: None,
            });
        }
    }
    // A running step's start is recorded when it ends: until then, it started when the
    // last step it needs ended (or with the run).
    let ends: std::collections::HashMap<String, f64> =
        steps.iter().filter_map(|s| Some((s.name.clone(), s.started? + s.duration?))).collect();
    for s in steps.iter_mut().filter(|s| s.status == StepState::Running && s.started.is_none()) {
        let needs = plan.steps.iter().find(|p| p.name == s.name).map(|p| &p.needs);
        let start = needs.map(|n| n.iter().filter_map(|v| ends.get(v)).fold(0.0_f64, |a, b| a.max(*b))).unwrap_or(0.0);
        s.started = Some(start);
        s.duration = elapsed.map(|e| (e - start).max(0.0));
    }
    let skipped: Vec<(String, String)> = plan.skipped.iter().map(|s| (s.name.clone(), s.reason.clone())).collect();
    for sk in &plan.skipped {
        if !steps.iter().any(|s| s.name == sk.name) {
            steps.push(Step {
                name: sk.name.clone(),
                stage: sk.stage.clone(),
                status: StepState::Skipped,
                started: None,
                duration: None,
                note: Some(sk.reason.clone()),
                attempts: 0,
                exit_code: None,
            });
        }
    }
    // Started steps by start time, then the rest in plan order.
    let order = |n: &str| plan.steps.iter().position(|p| p.name == n).unwrap_or(usize::MAX);
    steps.sort_by(|a, b| {
        let ka = (a.started.is_none(), a.started.unwrap_or(0.0), order(&a.name));
        let kb = (b.started.is_none(), b.started.unwrap_or(0.0), order(&b.name));
        ka.partial_cmp(&kb).unwrap_or(std::cmp::Ordering::Equal)
    });
    RunView { run, steps, skipped, error, artifacts }
}

/// `(step dir, relative path, size)` of every kept artifact.
fn list_artifacts(run_dir: &Path) -> Vec<(String, String, u64)> {
    super::api::artifact_files(run_dir)
        .into_iter()
        .flat_map(|(step, files)| files.into_iter().map(move |(rel, size)| (step.clone(), rel, size)))
        .collect()
}

/// A tick step for an axis `total` seconds long: about six ticks.
fn tick(total: f64) -> f64 {
    const NICE: [f64; 14] = [1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0];
    NICE.iter().copied().find(|t| total / t <= 7.0).unwrap_or(14_400.0)
}

fn axis_label(s: f64) -> String {
    let s = s.round() as u64;
    if s < 60 {
        format!("{s}s")
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
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

fn render_head(v: &RunView) -> String {
    let r = &v.run;
    let now = now();
    let mut meta = String::new();
    let mut item = |k: &str, val: String| {
        let _ = write!(meta, "<div><dt>{k}</dt><dd>{val}</dd></div>");
    };
    item("Repository", esc(&r.spec.repo));
    item("Event", esc(&r.spec.event));
    let rf = ref_label(r);
    item(if r.spec.pr.is_some() { "Pull request" } else { "Ref" }, if rf.is_empty() { "—".into() } else { esc(&rf) });
    item("Commit", format!("<code title=\"{}\">{}</code>", esc(&r.spec.sha), esc(short(&r.spec.sha))));
    item("Author", esc(r.spec.author.as_deref().unwrap_or("—")));
    item(
        "Started",
        match r.started_at {
            Some(t) => time_tag(t, now),
            None => format!("queued {}", time_tag(r.created_at, now)),
        },
    );
    item("Duration", run_secs(r, now).map(|s| human(s as f64)).unwrap_or_else(|| "—".into()));
    item(
        "Delivery",
        r.delivery_id
            .as_deref()
            .map(|d| format!("<code class=\"mono\">{}</code>", esc(d)))
            .unwrap_or_else(|| "— (re-run or manual)".into()),
    );
    if let Some(of) = r.rerun_of {
        let what = if r.failed_only { "Re-run of the failed steps of" } else { "Re-run of" };
        item(what, format!("<a href=\"/runs/{of}\">#{of}</a>"));
    }
    if r.attempts > 1 {
        item("Attempts", r.attempts.to_string());
    }
    let reason = r
        .reason
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| format!("<p class=\"reason muted\">{}</p>", esc(s)))
        .unwrap_or_default();
    let error = if v.error.trim().is_empty() {
        String::new()
    } else {
        format!("<pre class=\"errtxt\" id=\"error\">{}</pre>", esc(&v.error))
    };
    format!(
        "<div class=\"titlebar\">{pill}<h1>{title}</h1></div>{reason}<dl class=\"meta\">{meta}</dl>{error}",
        pill = pill(r.status),
        title = esc(&commit_title(r)),
    )
}

fn render_timeline(v: &RunView) -> String {
    let total = v
        .steps
        .iter()
        .filter_map(|s| Some(s.started? + s.duration.unwrap_or(0.0)))
        .fold(0.0_f64, f64::max)
        .max(if v.run.status == RunState::Running {
            v.run.started_at.map(|s| (now() - s) as f64).unwrap_or(0.0)
        } else {
            0.0
        })
        .max(1.0);
    let t = tick(total);
    let span = (total / t).ceil() * t;
    let pct = |x: f64| x / span * 100.0;
    let mut axis = String::new();
    let mut grid = String::new();
    let mut x = 0.0;
    while x <= span + 1e-9 {
        let style =
            if x >= span - 1e-9 { "right:0;transform:none".to_string() } else { format!("left:{:.3}%", pct(x)) };
        let _ = write!(axis, "<span style=\"{style}\">{}</span>", axis_label(x));
        let _ = write!(grid, "<i style=\"left:{:.3}%\"></i>", pct(x));
        x += t;
    }
    let mut rows = String::new();
    for s in &v.steps {
        let stage =
            s.stage.as_deref().map(|st| format!("<span class=\"stage\">{}</span>", esc(st))).unwrap_or_default();
        let mut title = format!("{} — {}", s.name, s.status.label());
        if let Some(d) = s.duration.filter(|_| s.started.is_some()) {
            let _ = write!(title, " in {}", human(d));
        }
        if let Some(c) = s.exit_code.filter(|c| *c != 0) {
            let _ = write!(title, " (exit {c})");
        }
        if s.attempts > 1 {
            let _ = write!(title, ", {} attempts", s.attempts);
        }
        if let Some(n) = &s.note {
            let _ = write!(title, ": {n}");
        }
        let track = match s.started.filter(|_| s.status != StepState::Skipped) {
            Some(start) => {
                let d = s.duration.unwrap_or(0.0);
                let (left, width) = (pct(start), pct(d).max(0.4));
                let text = if s.status == StepState::Running { format!("{} …", human(d)) } else { human(d) };
                let place = if width > 30.0 {
                    " inside"
                } else if left + width > 62.0 {
                    " before"
                } else {
                    ""
                };
                let mut lbl = text;
                if let Some(n) = s.note.as_deref().filter(|_| s.status != StepState::Running) {
                    let _ = write!(lbl, " · {n}");
                }
                format!(
                    "<div class=\"g-bar{place}\" style=\"left:{left:.3}%;width:{width:.3}%\"><span class=\"lbl\">{}</span></div>",
                    esc(&lbl)
                )
            }
            None => {
                let note = match (&s.note, s.status) {
                    (Some(n), StepState::Skipped) => format!("skipped: {n}"),
                    (Some(n), _) => n.clone(),
                    (None, st) => st.label().to_string(),
                };
                // A step skipped while the run ran: its note where it would have started.
                let at = s.started.map(pct).filter(|x| *x < 60.0).unwrap_or(0.0);
                format!(
                    "<div class=\"g-note\" style=\"left:{at:.3}%;max-width:{:.3}%\">{}</div>",
                    100.0 - at,
                    esc(&note)
                )
            }
        };
        let _ = write!(
            rows,
            "<div class=\"g-row k-{k}\" data-step=\"{n}\" data-status=\"{st}\" title=\"{t}\" role=\"button\" tabindex=\"0\">\
             <div class=\"g-name\">{ic}<span class=\"nm\">{n}</span>{stage}</div><div class=\"g-track\">{track}</div></div>",
            k = kind(s.status),
            n = esc(&s.name),
            st = s.status,
            t = esc(&title),
            ic = icon(s.status),
        );
    }
    if v.steps.is_empty() {
        let msg = match v.run.status {
            RunState::Queued => "Waiting for a worker…",
            RunState::Running => "Fetching the commit and planning…",
            _ => "No step ran.",
        };
        return format!("<div class=\"empty\">{msg}</div>");
    }
    let mut skips = String::new();
    let runtime_skips =
        v.steps.iter().filter(|s| s.status == StepState::Skipped && !v.skipped.iter().any(|(n, _)| n == &s.name));
    let all: Vec<(String, String)> = v
        .skipped
        .iter()
        .cloned()
        .chain(runtime_skips.map(|s| (s.name.clone(), s.note.clone().unwrap_or_default())))
        .collect();
    if !all.is_empty() {
        skips.push_str("<h3 class=\"skiph\">Why steps were skipped</h3><ul class=\"skips\" id=\"skips\">");
        for (n, r) in &all {
            let _ = write!(
                skips,
                "<li data-skip=\"{}\">{}<b>{}</b><span class=\"muted\">{}</span></li>",
                esc(n),
                icon(StepState::Skipped),
                esc(n),
                esc(r)
            );
        }
        skips.push_str("</ul>");
    }
    format!(
        "<div class=\"gantt\"><div class=\"g-axis\">{axis}</div><div class=\"g-rows\"><div class=\"g-grid\">{grid}</div>{rows}</div></div>{skips}"
    )
}

fn render_artifacts(v: &RunView) -> String {
    if v.artifacts.is_empty() {
        return "<p class=\"muted\" style=\"margin:0\">No artifacts.</p>".into();
    }
    let mut s = String::from(
        "<table class=\"arts\"><tr><th>Step</th><th>File</th><th style=\"text-align:right\">Size</th></tr>",
    );
    for (step, path, n) in &v.artifacts {
        let _ = write!(
            s,
            "<tr><td>{}</td><td class=\"f\"><a href=\"/api/runs/{}/artifacts/{}/{}\" download>{}</a></td><td class=\"sz\">{}</td></tr>",
            esc(step),
            v.run.id,
            url_part(step),
            url_path(path),
            esc(path),
            crate::fmt::size(*n)
        );
    }
    s.push_str("</table>");
    s
}

fn parts(v: &RunView) -> Value {
    let done = !v.run.status.is_active();
    json!({
        "status": v.run.status,
        "done": done,
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
         <section class=\"card\"><h2>Timeline</h2><div id=\"timeline\">{timeline}</div></section>\
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
            rerun_of: None,
            failed_only: false,
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
