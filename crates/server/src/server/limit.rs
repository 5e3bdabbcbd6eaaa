//! Failed sign-ins and API tokens, counted per client address: past [`MAX_FAILURES`] in a
//! minute, the address gets 429 until the minute is over. A token cannot be guessed at
//! network speed.
//!
//! Behind a reverse proxy every client has the proxy's address: then the limit holds for
//! all of them together (a guesser can lock sign-in for a minute, never get through).
//! `X-Forwarded-For` is not trusted: anyone can write it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;

/// Failed attempts one address may make in a window.
pub const MAX_FAILURES: u32 = 10;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most (memory stays bounded under a flood of addresses).
const MAX_TRACKED: usize = 10_000;

#[derive(Debug, Default)]
pub struct AuthLimiter {
    seen: Mutex<HashMap<Option<IpAddr>, (Instant, u32)>>,
}

impl AuthLimiter {
    /// How long `ip` must wait, if it used up its attempts.
    pub fn blocked(&self, ip: Option<IpAddr>) -> Option<Duration> {
        let seen = self.seen.lock().ok()?;
        let (start, n) = seen.get(&ip)?;
        let left = WINDOW.checked_sub(start.elapsed())?;
        (*n >= MAX_FAILURES).then_some(left)
    }

    pub fn failed(&self, ip: Option<IpAddr>) {
        let Ok(mut seen) = self.seen.lock() else { return };
        if seen.len() >= MAX_TRACKED {
            seen.retain(|_, (start, _)| start.elapsed() < WINDOW);
            if seen.len() >= MAX_TRACKED {
                // Still full of live windows: the oldest one goes.
                if let Some(oldest) = seen.iter().min_by_key(|(_, (s, _))| *s).map(|(k, _)| *k) {
                    seen.remove(&oldest);
                }
            }
        }
        let e = seen.entry(ip).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= WINDOW {
            *e = (Instant::now(), 0);
        }
        e.1 += 1;
    }
}

/// The middleware: sign-in posts and requests with a bearer token are refused while their
/// address is over the limit, and each 401 they get counts.
pub async fn auth_limit(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let guarded = (req.method() == Method::POST && req.uri().path() == "/login")
        || req.headers().contains_key(header::AUTHORIZATION);
    if !guarded {
        return next.run(req).await;
    }
    let ip = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    if let Some(wait) = st.limiter.blocked(ip) {
        let secs = wait.as_secs().max(1).to_string();
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, secs)],
            "too many failed attempts from this address: try again later\n",
        )
            .into_response();
    }
    let r = next.run(req).await;
    if r.status() == StatusCode::UNAUTHORIZED {
        st.limiter.failed(ip);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_held_after_its_failures_and_others_are_not() {
        let l = AuthLimiter::default();
        let a = Some("10.0.0.1".parse().unwrap());
        let b = Some("10.0.0.2".parse().unwrap());
        for _ in 0..MAX_FAILURES - 1 {
            l.failed(a);
        }
        assert!(l.blocked(a).is_none());
        l.failed(a);
        assert!(l.blocked(a).is_some_and(|w| w <= WINDOW));
        assert!(l.blocked(b).is_none());
    }

    #[test]
    fn memory_is_bounded() {
        let l = AuthLimiter::default();
        for i in 0..(MAX_TRACKED as u32 + 50) {
            l.failed(Some(IpAddr::from(i.to_be_bytes())));
        }
        assert!(l.seen.lock().unwrap().len() <= MAX_TRACKED);
    }
}
