//! Several servers on one PostgreSQL database: each says every sixth of
//! `server_silence` that it is alive ([`Db::heartbeat`], by the database's clock). The
//! others take over the runs of a server unheard for `server_silence`
//! ([`Db::take_over_silent`]: each ends as an error and runs again as a new run). A server
//! that could not say it is alive for half of that stops the runs it executes first, so a
//! run (a deployment above all) does not execute on two servers at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::db::{self, RunState};

/// Until `stop`; nothing without a shared database.
pub async fn run(st: Arc<AppState>, stop: CancellationToken) {
    if st.db.backend() != db::Backend::Postgres {
        return;
    }
    let silence = st.cfg.server_silence;
    let every = (silence / 6).max(Duration::from_millis(300));
    let mut heard = Instant::now();
    let mut fenced = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        // Bounded: a database that does not answer is a heartbeat missed.
        match tokio::time::timeout(every, st.db.heartbeat()).await {
            Ok(Ok(())) => {
                heard = Instant::now();
                fenced = false;
            }
            Ok(Err(e)) => tracing::warn!("cannot tell the other servers this one is alive: {e}"),
            Err(_) => tracing::warn!("cannot tell the other servers this one is alive: the database did not answer"),
        }
        if !fenced && heard.elapsed() >= silence / 2 {
            fenced = true;
            let ids: Vec<i64> = st.running.lock().map(|m| m.keys().copied().collect()).unwrap_or_default();
            if !ids.is_empty() {
                tracing::error!(
                    runs = ?ids,
                    "this server could not reach the database for {}s: it stops its runs, which are queued again",
                    heard.elapsed().as_secs()
                );
            }
            if let Ok(mut g) = st.given_back.lock() {
                g.extend(&ids);
            }
            for id in ids {
                st.cancel_run(id, "this server lost the database");
            }
        }
        let silence_ms = silence.as_millis() as i64;
        match st.db.take_over_silent(silence_ms, st.report.owe_ended(), st.report.owe_queued()).await {
            Ok(taken) => {
                for (old, again) in &taken {
                    tracing::warn!(run = old.id, again, "{}", old.reason.as_deref().unwrap_or("taken over"));
                    st.live.end(old.id, RunState::Error);
                }
                if !taken.is_empty() {
                    st.report.poke();
                    st.wake.notify_one();
                }
            }
            Err(e) => tracing::warn!("cannot look for the runs of silent servers: {e}"),
        }
    }
}
