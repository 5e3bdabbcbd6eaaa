//! What the server owes GitHub, durably: every update (a run queued, started, a step's
//! status, the final status or check run, a deployment and its states) is stored in the database before anything waits
//! on it being sent, and one task sends the stored updates in order, oldest first, each
//! retried by the reporter until GitHub takes it or it is given up. A kill -9 loses none
//! (the next start sends what is owed), a busy GitHub drops none (they wait in the table,
//! not in a bounded queue), and a stopping server waits, bounded, until nothing is owed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::db::Db;
use crate::github::{Reporter, Update};

/// The updates owed to GitHub; cloned into whoever produces them.
#[derive(Clone)]
pub struct Outbox {
    db: Db,
    wake: Arc<Notify>,
    /// Without GitHub credentials nothing is stored, nothing sent.
    enabled: bool,
}

impl Outbox {
    /// The outbox of `db`, and its sender task, which starts with what a previous server
    /// left owed. An update GitHub cannot take for a while (unreachable, rate limiting,
    /// failing) is tried again after `pause`, doubled each time up to a minute.
    pub fn start(db: Db, reporter: Reporter, pause: Duration) -> Outbox {
        let outbox = Outbox { db, wake: Arc::new(Notify::new()), enabled: reporter.enabled() };
        tokio::spawn(send_owed(outbox.clone(), reporter, pause));
        outbox
    }

    /// Stores `u` (sent after every update stored before it). A database that cannot take
    /// it loses the update, with a log line: reporting never fails a run.
    pub async fn owe(&self, u: Update) {
        if !self.enabled {
            return;
        }
        match self.db.owe(body(&u)).await {
            Ok(_) => self.wake.notify_one(),
            Err(e) => tracing::warn!("cannot store a GitHub update: {e}"),
        }
    }

    /// Records a run's end with its final update, in one commit (see [`Db::finish`]).
    pub async fn finish(
        &self,
        run: i64,
        status: super::db::RunState,
        reason: String,
        u: Update,
    ) -> Result<(), super::db::DbError> {
        let owed = self.enabled.then(|| body(&u));
        self.db.finish(run, status, Some(reason), owed).await?;
        self.wake.notify_one();
        Ok(())
    }

    /// What a run that ended without an executor's verdict (cancelled before it started,
    /// its agent lost too often) owes GitHub, for the database to store with the change;
    /// `None` when nothing is sent.
    pub fn owe_ended(&self) -> Option<super::db::OweEnded> {
        self.enabled.then_some(ended_body as super::db::OweEnded)
    }

    /// What a run queued by the database itself (taken over from a silent server) owes
    /// GitHub, stored with it; `None` when nothing is sent.
    pub fn owe_queued(&self) -> Option<super::db::OweEnded> {
        self.enabled.then_some(queued_body as super::db::OweEnded)
    }

    /// Whether updates are stored and sent (there are GitHub credentials).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// How many updates are owed now.
    pub async fn owed(&self) -> Result<i64, super::db::DbError> {
        self.db.count_owed().await
    }

    /// Something was stored for GitHub elsewhere (with a run, in its commit): send it.
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    /// Waits until nothing is owed, at most `within`; false when time ran out first.
    pub async fn drain(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.db.count_owed().await.is_ok_and(|n| n == 0) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// How an update is stored.
pub fn body(u: &Update) -> String {
    // An enum of strings, numbers and vectors of them: serializing cannot fail.
    serde_json::to_string(u).unwrap_or_default()
}

/// The final update of a run that ended without an executor's verdict: its commit would
/// show "Queued" (or "Running") for ever otherwise.
fn queued_body(run: &super::db::Run) -> String {
    body(&Update::Queued(super::worker::run_ref(run)))
}

fn ended_body(run: &super::db::Run) -> String {
    let reason = run.reason.clone().unwrap_or_else(|| run.status.as_str().into());
    let conclusion = match run.status {
        super::db::RunState::Error => crate::github::Conclusion::Error,
        _ => crate::github::Conclusion::Cancelled,
    };
    body(&Update::Finished {
        run: super::worker::run_ref(run),
        conclusion,
        summary: reason.clone(),
        description: reason,
        annotations: Vec::new(),
    })
}

/// How often the sender looks for owed updates without being told of any.
const SAFETY_POLL: Duration = Duration::from_secs(30);

/// How long an update may stay owed while GitHub cannot take it before it is given up.
const PATIENCE: i64 = 24 * 3600;

/// Sends the owed updates, oldest first, forever. One GitHub cannot take now (it does not
/// answer, or keeps failing, past the reporter's own retries) stays owed, and it and all
/// after it wait: they go, in order, once GitHub takes them. With several servers on one
/// database, one sends at a time (the others wait, polling slowly, for its lock).
async fn send_owed(outbox: Outbox, mut reporter: Reporter, pause: Duration) {
    let mut wait = pause;
    loop {
        // Registered before looking, so an update stored meanwhile is not slept through.
        let woken = outbox.wake.notified();
        let owed = match outbox.db.owed(64).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!("cannot read the GitHub updates owed: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if owed.is_empty() {
            // A slow look now and then too: with several servers, one that stopped may have
            // left updates owed that no commit here announces.
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep(SAFETY_POLL) => {}
            }
            continue;
        }
        match outbox.db.outbox_lock().await {
            Ok(true) => {}
            Ok(false) => {
                // Another server sends them; it may stop before these.
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => {
                tracing::warn!("cannot take the outbox: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        let later = send_batch(&outbox, &mut reporter, &mut wait, pause).await;
        if let Err(e) = outbox.db.outbox_unlock().await {
            tracing::warn!("cannot let go of the outbox: {e}");
        }
        if later {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(60));
        }
    }
}

/// Sends what is owed now, under the outbox's lock (read again: another server may have
/// sent some meanwhile), until one must wait (true) or all went (false).
async fn send_batch(outbox: &Outbox, reporter: &mut Reporter, wait: &mut Duration, pause: Duration) -> bool {
    let owed = match outbox.db.owed(64).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!("cannot read the GitHub updates owed: {e}");
            return true;
        }
    };
    for (id, body, stored_at) in owed {
        let given_up = match send(&outbox.db, reporter, id, &body, stored_at).await {
            Sent::Done { given_up } => given_up,
            Sent::Later => {
                // What the attempt made is kept; the update itself is tried again.
                let created = reporter.take_created();
                if !created.is_empty()
                    && let Err(e) = outbox.db.check_runs_made(created).await
                {
                    tracing::warn!(id, "cannot record a check run: {e}");
                }
                let made = reporter.take_deployments();
                if !made.is_empty()
                    && let Err(e) = outbox.db.deployments_made(made).await
                {
                    tracing::warn!(id, "cannot record a GitHub deployment: {e}");
                }
                return true;
            }
        };
        *wait = pause;
        // Done with: delivered, or given up (the reason goes on the run). If this write
        // fails the update is sent again, which GitHub takes as the same state.
        if let Err(e) = outbox.db.paid(id, reporter.take_created(), reporter.take_deployments(), given_up).await {
            tracing::warn!(id, "cannot mark a GitHub update sent: {e}");
        }
    }
    false
}

/// What became of one owed update.
enum Sent {
    /// GitHub took it, or it was given up: `(run, why)`.
    Done { given_up: Option<(i64, String)> },
    /// GitHub cannot take it now; it stays owed.
    Later,
}

async fn send(db: &Db, reporter: &mut Reporter, id: i64, body: &str, stored_at: i64) -> Sent {
    let mut u = match serde_json::from_str::<Update>(body) {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(id, "a stored GitHub update does not read back: {e}");
            return Sent::Done { given_up: None };
        }
    };
    let run = u.run().id;
    // Stored before its run's check run was made (an update sent before this one made it,
    // or a server since killed did): the database knows it, and a second one must not be
    // made.
    if reporter.is_app() && u.run().check_run_id.is_none() {
        match db.check_run_of(run).await {
            Ok(c) => u.run_mut().check_run_id = c,
            Err(e) => tracing::warn!(run, "cannot read the run's check run: {e}"),
        }
    }
    // A deployment's state stored before GitHub made the deployment: its id is known now.
    if let Update::DeploymentState { deployment, github_id: github_id @ None, .. } = &mut u {
        match db.github_deployment_of(*deployment).await {
            Ok(g) => *github_id = g,
            Err(e) => tracing::warn!(run, "cannot read the run's GitHub deployment: {e}"),
        }
    }
    match reporter.send(&u).await {
        Ok(()) => Sent::Done { given_up: None },
        Err(e) if e.transient && super::db::now() - stored_at < PATIENCE => {
            tracing::warn!(run, "GitHub cannot take an update now, it stays owed: {e}");
            Sent::Later
        }
        Err(e) => {
            tracing::warn!(run, "given up: {e}");
            Sent::Done { given_up: Some((run, e.to_string())) }
        }
    }
}
