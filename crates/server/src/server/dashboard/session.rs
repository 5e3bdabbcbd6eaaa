//! Signing in and out of a private server (`api_private`): a session cookie derived from
//! the API token.

use std::sync::Arc;

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};

use crate::server::AppState;
use crate::server::db::now;

use super::*;

/// With `api_private`, the pages show what the API hides: they need a session. A page is
/// sent to the sign-in form (and back to `next` after it); a fragment the page's script
/// fetches gets 401, and the script reloads into the form.
pub(super) fn private(st: &AppState, headers: &HeaderMap, next: &str) -> Option<Response> {
    if !st.cfg.api_private || crate::server::api::has_session(st, headers) {
        return None;
    }
    if next.starts_with("/ui/") {
        return Some((StatusCode::UNAUTHORIZED, "sign in at /login").into_response());
    }
    Some(Redirect::to(&format!("/login?next={}", url_part(next))).into_response())
}

#[derive(serde::Deserialize)]
pub(super) struct Next {
    next: Option<String>,
}

#[derive(serde::Deserialize)]
pub(super) struct SignIn {
    token: String,
    next: Option<String>,
}

/// Where to go after signing in: a path of this server, nothing else. Browsers drop tabs
/// and newlines and read `\\` as `/`, so only plain path characters pass.
pub(super) fn local_path(next: Option<&str>) -> &str {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/-._~%?=&#+".contains(c);
    next.filter(|n| n.starts_with('/') && !n.starts_with("//") && n.chars().all(plain)).unwrap_or("/")
}

pub(super) fn login_form(st: &AppState, next: &str, problem: Option<&str>) -> String {
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

pub(super) async fn login_page(State(st): State<Arc<AppState>>, Query(q): Query<Next>) -> Response {
    Html(login_form(&st, local_path(q.next.as_deref()), None)).into_response()
}

pub(super) async fn login(State(st): State<Arc<AppState>>, Form(f): Form<SignIn>) -> Response {
    let next = local_path(f.next.as_deref()).to_string();
    let Some(token) = &st.cfg.api_token else {
        return (StatusCode::FORBIDDEN, Html(login_form(&st, &next, None))).into_response();
    };
    if !crate::server::api::same(f.token.as_bytes(), token.as_bytes()) {
        return (StatusCode::UNAUTHORIZED, Html(login_form(&st, &next, Some("That is not this server's API token."))))
            .into_response();
    }
    // Secure when people reach the server over https (behind a proxy, as they should).
    let secure = if st.cfg.public_url.starts_with("https://") { "; Secure" } else { "" };
    let cookie = format!(
        "{}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
        crate::server::api::SESSION_COOKIE,
        crate::server::api::session_value(token, now()),
        crate::server::api::SESSION_SECS
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response()
}

pub(super) async fn logout() -> Response {
    let cookie = format!("{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0", crate::server::api::SESSION_COOKIE);
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}
