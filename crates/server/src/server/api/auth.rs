//! Who may read and act: the API token (`Authorization: Bearer`) and dashboard sessions.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;

use crate::server::AppState;
use crate::server::db::now;

use super::*;

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// Compares without stopping at the first difference.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// For actions: the configured token, presented as `Authorization: Bearer`.
pub fn authorize_write(st: &AppState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let Some(token) = &st.cfg.api_token else {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "actions are disabled: set ORCH_API_TOKEN (api_token) on the server",
        )));
    };
    match bearer(headers) {
        Some(t) if same(t.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(Box::new(error(StatusCode::UNAUTHORIZED, "wrong API token"))),
        None => Err(Box::new(error(StatusCode::UNAUTHORIZED, "this needs `Authorization: Bearer <ORCH_API_TOKEN>`"))),
    }
}

/// The dashboard's session cookie (a private server's pages need it).
pub const SESSION_COOKIE: &str = "orch_session";

/// How long a dashboard session lasts.
pub const SESSION_SECS: i64 = 7 * 86_400;

/// The session cookie's value for a session opened at `issued` (Unix seconds):
/// `ISSUED.MAC`, the MAC keyed by the API token. The cookie never holds the token, a new
/// token ends every session, and a session ends after [`SESSION_SECS`].
pub fn session_value(token: &str, issued: i64) -> String {
    let mac = crate::server::webhook::sign(token.as_bytes(), format!("orch dashboard session {issued}").as_bytes());
    format!("{issued}.{}", mac.trim_start_matches("sha256="))
}

/// Whether the request carries a valid dashboard session.
pub fn has_session(st: &AppState, headers: &HeaderMap) -> bool {
    let Some(token) = &st.cfg.api_token else { return false };
    let valid = |v: &str| {
        let Some(issued) = v.split_once('.').and_then(|(i, _)| i.parse::<i64>().ok()) else { return false };
        let age = now() - issued;
        (0..SESSION_SECS).contains(&age) && same(v.as_bytes(), session_value(token, issued).as_bytes())
    };
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .any(|(k, v)| k == SESSION_COOKIE && valid(v))
}

/// For reads: nothing, unless `api_private`; then the token as for actions, or a dashboard
/// session (the pages' own requests carry its cookie).
pub fn authorize_read(st: &AppState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    if !st.cfg.api_private || has_session(st, headers) { Ok(()) } else { authorize_write(st, headers) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd") && !same(b"abc", b"ab") && !same(b"", b"a"));
    }
}
