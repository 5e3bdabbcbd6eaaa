//! What the server owes GitHub, durably: every update (a run queued, started, a step's
//! status, the final status or check run) is stored in the database before anything waits
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
    /// left owed.
    pub fn start(db: Db, reporter: Reporter) -> Outbox {
        let outbox = Outbox { db, wake: Arc::new(Notify::new()), enabled: reporter.enabled() };
        tokio::spawn(send_owed(outbox.clone(), reporter));
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

/// Sends the owed updates, oldest first, forever.
async fn send_owed(outbox: Outbox, mut reporter: Reporter) {
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
            woken.await;
            continue;
        }
        for (id, body) in owed {
            match serde_json::from_str::<Update>(&body) {
                Ok(u) => {
                    if let Err(e) = reporter.send(&u).await {
                        tracing::warn!("given up: {e}");
                    }
                }
                Err(e) => tracing::warn!(id, "a stored GitHub update does not read back: {e}"),
            }
            // Done with: delivered, or given up after the reporter's retries. If this
            // write fails the update is sent again, which GitHub takes as the same state.
            if let Err(e) = outbox.db.paid(id).await {
                tracing::warn!(id, "cannot mark a GitHub update sent: {e}");
            }
        }
    }
}
