//! The server's embedded database (SQLite): deliveries, runs and their steps.
//!
//! One writer thread owns the write connection and commits in groups: every write waits
//! for the commit that contains it (so a delivery is on disk before its 2xx answer), and
//! concurrent deliveries share one fsync. Reads use their own connection.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;

pub use super::status::{RunState, StepState};
use tokio::sync::oneshot;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("database: the writer thread is gone")]
    WriterGone,
    #[error("database: {0}")]
    Io(String),
}

type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;
type Job = Box<dyn FnOnce(&Transaction) -> Reply + Send>;

/// Rows written per commit at most.
const BATCH: usize = 512;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    event TEXT NOT NULL,
    action TEXT,
    repo TEXT,
    received_at INTEGER NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    outcome TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id TEXT,
    repo TEXT NOT NULL,
    clone_url TEXT NOT NULL,
    event TEXT NOT NULL,
    branch TEXT,
    base_branch TEXT,
    tag TEXT,
    sha TEXT NOT NULL,
    pr INTEGER,
    fork INTEGER NOT NULL DEFAULT 0,
    changed TEXT,
    installation_id INTEGER,
    author TEXT,
    title TEXT,
    status TEXT NOT NULL,
    reason TEXT,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    check_run_id INTEGER,
    concurrency_key TEXT,
    default_branch TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs(status, id);
CREATE INDEX IF NOT EXISTS runs_by_key ON runs(concurrency_key, status);
CREATE TABLE IF NOT EXISTS steps (
    run_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    stage TEXT,
    status TEXT NOT NULL,
    exit_code INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    started REAL,
    duration REAL,
    message TEXT,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS agents (
    name TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER,
    labels TEXT,
    capacity INTEGER,
    running INTEGER NOT NULL DEFAULT 0,
    last_seen INTEGER,
    version TEXT
);
CREATE TABLE IF NOT EXISTS schedules (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    repo TEXT NOT NULL,
    name TEXT NOT NULL,
    cron TEXT NOT NULL,
    timezone TEXT NOT NULL,
    clone_url TEXT NOT NULL,
    default_branch TEXT NOT NULL,
    installation_id INTEGER,
    next_at INTEGER,
    last_fired_at INTEGER,
    last_run INTEGER,
    last_error TEXT,
    updated_at INTEGER NOT NULL,
    UNIQUE (repo, name)
);
CREATE INDEX IF NOT EXISTS schedules_by_next ON schedules(next_at);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
";

/// Named API tokens (people, for approvals), deployment gates and their votes.
const GATES_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS api_tokens (
    name TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    abilities TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE TABLE IF NOT EXISTS gates (
    run_id INTEGER NOT NULL,
    environment TEXT NOT NULL,
    step TEXT NOT NULL,
    approvers TEXT NOT NULL,
    required INTEGER NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    created_at INTEGER NOT NULL,
    timeout_at INTEGER NOT NULL,
    decided_at INTEGER,
    PRIMARY KEY (run_id, environment)
);
CREATE TABLE IF NOT EXISTS env_locks (
    repo TEXT NOT NULL,
    environment TEXT NOT NULL,
    run_id INTEGER NOT NULL,
    acquired_at INTEGER NOT NULL,
    PRIMARY KEY (repo, environment)
);
CREATE TABLE IF NOT EXISTS env_queue (
    repo TEXT NOT NULL,
    environment TEXT NOT NULL,
    run_id INTEGER NOT NULL,
    commit_time INTEGER NOT NULL,
    enqueued_at INTEGER NOT NULL,
    status TEXT NOT NULL,
    superseded_by INTEGER,
    PRIMARY KEY (repo, environment, run_id)
);
CREATE TABLE IF NOT EXISTS env_live (
    repo TEXT NOT NULL,
    environment TEXT NOT NULL,
    run_id INTEGER NOT NULL,
    sha TEXT NOT NULL,
    commit_time INTEGER NOT NULL,
    deployed_at INTEGER NOT NULL,
    PRIMARY KEY (repo, environment)
);
CREATE TABLE IF NOT EXISTS gate_votes (
    run_id INTEGER NOT NULL,
    environment TEXT NOT NULL,
    who TEXT NOT NULL,
    vote TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (run_id, environment, who)
);
";

/// A named API token, as `orch token list` shows it (never the token).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiTokenRow {
    pub name: String,
    pub abilities: Vec<String>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// A run's gate for one environment, with its votes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateRow {
    pub environment: String,
    pub step: String,
    pub approvers: Vec<String>,
    pub required: i64,
    /// `waiting`, `approved`, `rejected`, `timed_out`, `cancelled`.
    pub status: String,
    pub reason: Option<String>,
    pub created_at: i64,
    pub timeout_at: i64,
    pub decided_at: Option<i64>,
    pub votes: Vec<GateVote>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateVote {
    pub who: String,
    /// `approve` or `reject`.
    pub vote: String,
    pub at: i64,
}

impl GateRow {
    pub fn approved_by(&self) -> Vec<String> {
        self.votes.iter().filter(|v| v.vote == "approve").map(|v| v.who.clone()).collect()
    }
}

/// What a vote on a gate did.
#[derive(Debug, Clone, PartialEq)]
pub enum Voted {
    /// Counted; the gate's status after it.
    Counted(GateRow),
    /// This person voted on this gate before.
    Again(GateRow),
    /// The gate is decided already (or there is none).
    Closed(Option<GateRow>),
}

/// What a run asking for an environment's lock got.
#[derive(Debug, Clone, PartialEq)]
pub enum Acquired {
    /// The lock is this run's.
    Got,
    /// Another run holds it, or a waiting run goes first.
    Wait,
    /// A newer commit's run took the lock before this one (`order: newest`).
    Superseded(i64),
}

/// The commit deployed to an environment last (`env_live`).
#[derive(Debug, Clone, PartialEq)]
pub struct Live {
    pub run_id: i64,
    pub sha: String,
    pub commit_time: i64,
}

/// What a delivery asks to run, as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NewRun {
    pub repo: String,
    pub clone_url: String,
    /// push, pull_request, tag or manual.
    pub event: String,
    pub branch: Option<String>,
    pub base_branch: Option<String>,
    pub tag: Option<String>,
    pub sha: String,
    pub pr: Option<u64>,
    pub fork: bool,
    /// Changed files, when the delivery lists them.
    pub changed: Option<Vec<String>>,
    pub installation_id: Option<u64>,
    pub author: Option<String>,
    pub title: Option<String>,
    /// Runs with the same key supersede each other (a branch, or a pull request).
    pub concurrency_key: Option<String>,
    /// The repository's default branch (its caches are the fallback of every run).
    pub default_branch: Option<String>,
    /// When the event happened (Unix seconds: a push's `pushed_at`, a pull request's
    /// `updated_at`): an older event never supersedes a run of a newer one.
    pub event_time: Option<i64>,
    /// The `on.schedule` name of a schedule run.
    pub schedule: Option<String>,
}

/// A repository's `on.schedule` item as the server keeps it (`schedules` table).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduleRow {
    pub id: i64,
    pub repo: String,
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub clone_url: String,
    pub default_branch: String,
    pub installation_id: Option<u64>,
    /// When it fires next (Unix seconds); `None`: never (no such date).
    pub next_at: Option<i64>,
    /// The scheduled time it last fired for.
    pub last_fired_at: Option<i64>,
    /// The run it last queued.
    pub last_run: Option<i64>,
    /// Why its last time queued no run (missed while no server ran, the branch not found).
    pub last_error: Option<String>,
}

/// One schedule of a repository's default branch, as read from its `.orch.yml`, with its
/// first time from now.
#[derive(Debug, Clone)]
pub struct NewSchedule {
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub next_at: Option<i64>,
}

/// What firing a schedule's due time did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fired {
    /// Another server fired it first, or the schedule changed meanwhile: nothing done.
    Lost,
    /// Its time was passed on without a run (`last_error` says why).
    Skipped,
    /// The run it queued.
    Queued(i64),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    pub id: i64,
    pub delivery_id: Option<String>,
    #[serde(flatten)]
    pub spec: NewRun,
    pub status: RunState,
    pub reason: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub attempts: i64,
    pub check_run_id: Option<i64>,
    /// Why an update of this run never reached GitHub (it was given up), if one did not.
    pub report_error: Option<String>,
    /// The run this one re-runs (`POST /api/runs/{id}/rerun`).
    pub rerun_of: Option<i64>,
    /// A re-run of the failed steps only: the passed steps of `rerun_of` are kept.
    pub failed_only: bool,
    /// The agent that executes (or executed) it; `None`: the server itself.
    pub agent: Option<String>,
    /// The labels an executor needs (known once the run is planned).
    pub labels: Option<Vec<String>>,
    /// Times it was queued again because its agent was lost.
    pub lost: i64,
    /// When an executor took it.
    pub dispatched_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRow {
    pub name: String,
    pub stage: Option<String>,
    pub status: StepState,
    pub exit_code: Option<i64>,
    pub attempts: i64,
    pub started: Option<f64>,
    pub duration: Option<f64>,
    pub message: Option<String>,
}

/// An agent, as `GET /api/agents` and the dashboard show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentRow {
    pub name: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub labels: Vec<String>,
    pub capacity: Option<i64>,
    /// Runs it executes now.
    pub running: i64,
    pub last_seen: Option<i64>,
    pub version: Option<String>,
}

/// What `GET /api/runs` filters by.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub repo: Option<String>,
    pub branch: Option<String>,
    pub status: Option<RunState>,
    pub limit: i64,
    pub before: Option<i64>,
}

/// A webhook delivery as received.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// `X-GitHub-Delivery`: the key that makes a redelivery a no-op.
    pub id: String,
    pub event: String,
    pub action: Option<String>,
    /// The `X-GitHub-*` headers, as JSON.
    pub headers: String,
    pub body: Vec<u8>,
    /// What orch made of it: queued, ignored: why, ping, cancel.
    pub outcome: String,
}

/// What storing a delivery did.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    /// Seen before (same `X-GitHub-Delivery`): nothing new was done.
    Duplicate,
    /// Stored; `run` is the run it queued, `cancel` the running runs it supersedes (for the
    /// caller to stop), `cancelled` the queued ones it cancelled (for the caller to report).
    New { run: Option<i64>, cancel: Vec<i64>, cancelled: Vec<Run> },
}

pub use crate::clock::now_secs as now;

#[derive(Clone)]
pub struct Db {
    writer: std::sync::mpsc::SyncSender<Job>,
    reader: Arc<Mutex<Connection>>,
}

fn open(path: &Path) -> Result<Connection, DbError> {
    let c = Connection::open(path)?;
    c.busy_timeout(std::time::Duration::from_secs(10))?;
    // Before anything writes the file's header (WAL does): later, only a VACUUM changes it.
    c.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit is on disk when it returns; the group commit keeps this cheap.
    c.pragma_update(None, "synchronous", "FULL")?;
    Ok(c)
}

impl Db {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| DbError::Io(format!("{}: {e}", dir.display())))?;
        }
        let mut w = open(path)?;
        // Pages freed by retention go back to the file system (`prune` runs an incremental
        // vacuum): webhook bodies are up to 25 MB each. A database made before this setting
        // existed is converted once, by a VACUUM.
        let auto_vacuum: i64 = w.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
        if auto_vacuum != 2 {
            tracing::info!("database: turning on incremental vacuum (once)");
            w.execute_batch("VACUUM")?;
        }
        w.execute_batch(SCHEMA)?;
        w.execute_batch(GATES_SCHEMA)?;
        // Columns added after the first release: a database from before gets them here.
        for (table, col, def) in [
            ("runs", "rerun_of", "INTEGER"),
            ("runs", "failed_only", "INTEGER NOT NULL DEFAULT 0"),
            ("runs", "event_time", "INTEGER"),
            ("deliveries", "digest", "TEXT"),
            ("runs", "report_error", "TEXT"),
            // Set once the server has fetched and planned the run: what an executor gets.
            ("runs", "job", "TEXT"),
            ("runs", "labels", "TEXT"),
            // The agent executing it (NULL: the server itself), its lease (Unix ms).
            ("runs", "agent", "TEXT"),
            ("runs", "lease_until", "INTEGER"),
            // Times it was queued again because its agent was lost.
            ("runs", "lost", "INTEGER NOT NULL DEFAULT 0"),
            ("runs", "dispatched_at", "INTEGER"),
            // Being fetched and planned by this server now.
            ("runs", "planning", "INTEGER NOT NULL DEFAULT 0"),
            // The `on.schedule` name of a schedule run.
            ("runs", "schedule", "TEXT"),
        ] {
            let has: bool = w
                .prepare(&format!("SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"))?
                .exists(params![col])?;
            if !has {
                w.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {col} {def}"))?;
            }
        }
        w.execute_batch("CREATE INDEX IF NOT EXISTS deliveries_by_time ON deliveries(received_at)")?;
        // One body is one delivery, whatever `X-GitHub-Delivery` says (it is not signed).
        w.execute_batch("CREATE UNIQUE INDEX IF NOT EXISTS deliveries_by_digest ON deliveries(digest)")?;
        let reader = open(path)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(4096);
        std::thread::Builder::new()
            .name("orch-db-writer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![first];
                    while jobs.len() < BATCH {
                        match rx.try_recv() {
                            Ok(j) => jobs.push(j),
                            Err(_) => break,
                        }
                    }
                    let t = match w.transaction() {
                        Ok(t) => t,
                        Err(e) => {
                            tracing::error!("database: cannot begin a transaction: {e}");
                            continue;
                        }
                    };
                    let replies: Vec<Reply> = jobs.into_iter().map(|j| j(&t)).collect();
                    let committed = t.commit().map_err(|e| e.to_string());
                    for r in replies {
                        r(committed.clone());
                    }
                }
            })
            .map_err(|e| DbError::Io(e.to_string()))?;
        Ok(Db { writer: tx, reader: Arc::new(Mutex::new(reader)) })
    }

    /// Runs `f` in the next group commit; returns once that commit is durable.
    pub async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R, DbError> {
        let (tx, rx) = oneshot::channel::<Result<R, DbError>>();
        let job: Job = Box::new(move |t| {
            let r = f(t);
            Box::new(move |committed| {
                let out = match (r, committed) {
                    (Ok(v), Ok(())) => Ok(v),
                    (Err(e), _) => Err(DbError::Sql(e)),
                    (Ok(_), Err(e)) => Err(DbError::Io(format!("commit failed: {e}"))),
                };
                let _ = tx.send(out);
            })
        });
        // The channel is bounded: only a full queue waits, and off the async threads.
        match self.writer.try_send(job) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Full(job)) => {
                let writer = self.writer.clone();
                tokio::task::spawn_blocking(move || writer.send(job))
                    .await
                    .map_err(|_| DbError::WriterGone)?
                    .map_err(|_| DbError::WriterGone)?;
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return Err(DbError::WriterGone),
        }
        rx.await.map_err(|_| DbError::WriterGone)?
    }

    /// Runs a read on the read connection, off the async threads.
    pub async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R, DbError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let c = reader.lock().map_err(|_| DbError::Io("the read connection is poisoned".into()))?;
            f(&c).map_err(DbError::Sql)
        })
        .await
        .map_err(|_| DbError::WriterGone)?
    }

    /// Stores a delivery and queues its run, atomically: a delivery id seen before does
    /// nothing. Queued runs it supersedes are cancelled here; running ones are returned for
    /// the caller to stop.
    /// `owe` gives the update owed to GitHub for the queued run (by its id), stored in the
    /// same commit unless the run is cancelled at once (an older event).
    pub async fn store_delivery(
        &self,
        d: Delivery,
        run: Option<NewRun>,
        supersede: bool,
        owe: Option<Box<dyn FnOnce(i64) -> String + Send>>,
        owe_ended: Option<OweEnded>,
    ) -> Result<Stored, DbError> {
        self.write(move |t| {
            let Delivery { id, event, action, headers, body, outcome } = d;
            let repo = run.as_ref().map(|r| r.repo.clone());
            let digest = {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(&body))
            };
            // Either key seen before (the id, or the same signed body under a new id) is a
            // duplicate.
            let inserted = t.execute(
                "INSERT OR IGNORE INTO deliveries (id, event, action, repo, received_at, headers, body, outcome, digest)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![id, event, action, repo, now(), headers, body, outcome, digest],
            )?;
            if inserted == 0 {
                return Ok(Stored::Duplicate);
            }
            let Some(run) = run else {
                return Ok(Stored::New { run: None, cancel: Vec::new(), cancelled: Vec::new() });
            };
            let run_id = insert_run(t, Some(&id), &run)?;
            let (mut cancel, mut cancelled) = (Vec::new(), Vec::new());
            if let (true, Some(key)) = (supersede, &run.concurrency_key) {
                (cancel, cancelled) = supersede_older(t, key, run_id, run.event_time)?;
            }
            if let Some(owe) = owe
                && !cancelled.iter().any(|r: &Run| r.id == run_id)
            {
                insert_owed(t, owe(run_id))?;
            }
            owe_for(t, owe_ended, &cancelled)?;
            Ok(Stored::New { run: Some(run_id), cancel, cancelled })
        })
        .await
    }

    /// Queues a run that no delivery asked for (a re-run, a manual run).
    /// Returns its id, the running runs it supersedes and the queued ones it cancelled.
    pub async fn queue_run(&self, run: NewRun, supersede: bool) -> Result<(i64, Vec<i64>, Vec<Run>), DbError> {
        self.write(move |t| {
            let id = insert_run(t, None, &run)?;
            let (cancel, cancelled) = match (supersede, &run.concurrency_key) {
                (true, Some(key)) => supersede_older(t, key, id, run.event_time)?,
                _ => (Vec::new(), Vec::new()),
            };
            Ok((id, cancel, cancelled))
        })
        .await
    }

    /// Takes the oldest queued run not planned yet, to fetch and plan it. It stays queued
    /// (a cancel takes it at once) while it is planned.
    pub async fn claim(&self) -> Result<Option<Run>, DbError> {
        self.write(|t| {
            let id: Option<i64> = t
                .query_row(
                    "SELECT id FROM runs WHERE status = 'queued' AND job IS NULL AND planning = 0 ORDER BY id LIMIT 1",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(id) = id else { return Ok(None) };
            t.execute(
                "UPDATE runs SET planning = 1, started_at = COALESCE(started_at, ?2) WHERE id = ?1",
                params![id, now()],
            )?;
            get_run(t, id)
        })
        .await
    }

    /// A planned run waits for an executor with `labels`, with what an executor gets
    /// (`job`, JSON). False when it is not queued any more (cancelled meanwhile).
    pub async fn plan_ready(&self, id: i64, job: String, labels: Vec<String>, reason: String) -> Result<bool, DbError> {
        let labels = serde_json::to_string(&labels).unwrap_or_else(|_| "[]".into());
        self.write(move |t| {
            let n = t.execute(
                "UPDATE runs SET job = ?2, labels = ?3, reason = ?4, planning = 0 WHERE id = ?1 AND status = 'queued'",
                params![id, job, labels, reason],
            )?;
            Ok(n == 1)
        })
        .await
    }

    /// Forgets a queued run's plan (its checkout is gone): it is fetched and planned again.
    pub async fn unplan(&self, id: i64) -> Result<(), DbError> {
        self.write(move |t| {
            t.execute("UPDATE runs SET job = NULL, labels = NULL WHERE id = ?1 AND status = 'queued'", params![id])?;
            Ok(())
        })
        .await
    }

    /// Takes the oldest planned run whose labels `have` holds, for `agent` (`None`: the
    /// server itself) with a lease until `lease_until` (Unix ms): it is running, in its next
    /// attempt. Returns it and its job (JSON).
    pub async fn dispatch(
        &self,
        agent: Option<String>,
        have: Vec<String>,
        lease_until: Option<i64>,
    ) -> Result<Option<(Run, String)>, DbError> {
        self.write(move |t| {
            // Every planned run, oldest first (the planner keeps those an executor fits
            // few; those none fits must not hide the others).
            let mut st =
                t.prepare("SELECT id, labels FROM runs WHERE status = 'queued' AND job IS NOT NULL ORDER BY id")?;
            let rows = st
                .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Option<String>>(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            let found = rows.into_iter().find(|(_, labels)| {
                let need: Vec<String> =
                    labels.as_deref().and_then(|l| serde_json::from_str(l).ok()).unwrap_or_default();
                crate::job::fits(&need, &have)
            });
            let Some((id, _)) = found else { return Ok(None) };
            let job: String = t.query_row("SELECT job FROM runs WHERE id = ?1", params![id], |r| r.get(0))?;
            t.execute(
                "UPDATE runs SET status = 'running', attempts = attempts + 1, agent = ?2, lease_until = ?3,
                    dispatched_at = ?4, started_at = ?4, reason = NULL WHERE id = ?1",
                params![id, agent, lease_until, now()],
            )?;
            t.execute("DELETE FROM steps WHERE run_id = ?1", params![id])?;
            Ok(get_run(t, id)?.map(|r| (r, job)))
        })
        .await
    }

    /// Extends the lease of attempt `attempt` of run `id` held by `agent` to `until` (Unix
    /// ms). False when that attempt is not the run's running one any more (the lease was
    /// lost and the run queued again, or it ended): its agent must stop.
    pub async fn extend_lease(&self, id: i64, attempt: i64, agent: String, until: i64) -> Result<bool, DbError> {
        self.write(move |t| {
            let n = t.execute(
                "UPDATE runs SET lease_until = MAX(COALESCE(lease_until, 0), ?4)
                 WHERE id = ?1 AND attempts = ?2 AND agent = ?3 AND status = 'running'",
                params![id, attempt, agent, until],
            )?;
            // A report is a sign of life too (a busy agent asks for no work).
            t.execute("UPDATE agents SET last_seen = ?2 WHERE name = ?1", params![agent, now()])?;
            Ok(n == 1)
        })
        .await
    }

    /// Gives a running attempt back to the queue, to be planned again (its checkout is
    /// gone): only while it is still `agent`'s (`None`: the server's own).
    pub async fn release(&self, id: i64, attempt: i64, agent: Option<String>, reason: String) -> Result<bool, DbError> {
        self.write(move |t| {
            let n = t.execute(
                "UPDATE runs SET status = 'queued', job = NULL, labels = NULL, agent = NULL, lease_until = NULL,
                    reason = ?4 WHERE id = ?1 AND attempts = ?2 AND agent IS ?3 AND status = 'running'",
                params![id, attempt, agent, reason],
            )?;
            Ok(n == 1)
        })
        .await
    }

    /// An agent gives a run it took back (its Docker stopped answering): queued again with
    /// its plan, for any executor, without counting as lost. Only while it is still that
    /// attempt of that agent's.
    pub async fn give_back(&self, id: i64, attempt: i64, agent: String, reason: String) -> Result<bool, DbError> {
        self.write(move |t| {
            let n = t.execute(
                "UPDATE runs SET status = 'queued', agent = NULL, lease_until = NULL, reason = ?4
                 WHERE id = ?1 AND attempts = ?2 AND agent = ?3 AND status = 'running'",
                params![id, attempt, agent, reason],
            )?;
            Ok(n == 1)
        })
        .await
    }

    /// Runs whose agent's lease ran out before `now_ms`: queued again (planned, for
    /// another executor) while lost fewer than `max_lost` times, else ended as errors
    /// (with what that owes GitHub, in the same commit). Returns (the queued again, the
    /// ended).
    pub async fn reap_lost(
        &self,
        now_ms: i64,
        max_lost: i64,
        owe_ended: Option<OweEnded>,
    ) -> Result<(Vec<Run>, Vec<Run>), DbError> {
        self.write(move |t| {
            let expired = {
                let mut st = t.prepare(
                    "SELECT id, agent, lost FROM runs WHERE status = 'running' AND agent IS NOT NULL AND lease_until < ?1",
                )?;
                st.query_map(params![now_ms], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
                })?
                .collect::<Result<Vec<_>, _>>()?
            };
            let (mut again, mut ended) = (Vec::new(), Vec::new());
            for (id, agent, lost) in expired {
                if lost < max_lost {
                    t.execute(
                        "UPDATE runs SET status = 'queued', agent = NULL, lease_until = NULL, lost = lost + 1,
                            reason = ?2 WHERE id = ?1",
                        params![id, format!("queued again: agent `{agent}` was lost")],
                    )?;
                    again.extend(get_run(t, id)?);
                } else {
                    let times = if lost + 1 == 1 { "once".to_string() } else { format!("{} times", lost + 1) };
                    t.execute(
                        "UPDATE runs SET status = 'error', lease_until = NULL, lost = lost + 1, reason = ?2,
                            finished_at = ?3 WHERE id = ?1",
                        params![id, format!("its agent was lost {times} (last: `{agent}`)"), now()],
                    )?;
                    ended.extend(get_run(t, id)?);
                }
            }
            owe_for(t, owe_ended, &ended)?;
            Ok((again, ended))
        })
        .await
    }

    /// The agent whose (unrevoked) token hashes to `token_hash`.
    pub async fn agent_by_token(&self, token_hash: String) -> Result<Option<String>, DbError> {
        self.read(move |c| {
            c.query_row(
                "SELECT name FROM agents WHERE token_hash = ?1 AND revoked_at IS NULL",
                params![token_hash],
                |r| r.get(0),
            )
            .optional()
        })
        .await
    }

    /// Registers an agent's token (its hash). False when the name is taken.
    pub async fn create_agent(&self, name: String, token_hash: String) -> Result<bool, DbError> {
        self.write(move |t| {
            let n = t.execute(
                "INSERT OR IGNORE INTO agents (name, token_hash, created_at) VALUES (?1, ?2, ?3)",
                params![name, token_hash, now()],
            )?;
            Ok(n == 1)
        })
        .await
    }

    /// Revokes an agent's token. False when there is no such agent (or it was revoked).
    pub async fn revoke_agent(&self, name: String) -> Result<bool, DbError> {
        self.write(move |t| {
            let n = t.execute(
                "UPDATE agents SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
                params![name, now()],
            )?;
            Ok(n == 1)
        })
        .await
    }

    /// What an agent said of itself when it last asked for work.
    pub async fn agent_seen(
        &self,
        name: String,
        labels: Vec<String>,
        capacity: i64,
        running: i64,
        version: String,
    ) -> Result<(), DbError> {
        let labels = serde_json::to_string(&labels).unwrap_or_else(|_| "[]".into());
        self.write(move |t| {
            t.execute(
                "UPDATE agents SET labels = ?2, capacity = ?3, running = ?4, last_seen = ?5, version = ?6 WHERE name = ?1",
                params![name, labels, capacity, running, now(), version],
            )?;
            Ok(())
        })
        .await
    }

    /// Every agent, by name.
    pub async fn agents(&self) -> Result<Vec<AgentRow>, DbError> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT a.name, a.created_at, a.revoked_at, a.labels, a.capacity, a.last_seen, a.version,
                    (SELECT COUNT(*) FROM runs r WHERE r.agent = a.name AND r.status = 'running')
                 FROM agents a ORDER BY a.name",
            )?;
            st.query_map([], |r| {
                Ok(AgentRow {
                    name: r.get(0)?,
                    created_at: r.get(1)?,
                    revoked_at: r.get(2)?,
                    labels: r
                        .get::<_, Option<String>>(3)?
                        .and_then(|l| serde_json::from_str(&l).ok())
                        .unwrap_or_default(),
                    capacity: r.get(4)?,
                    last_seen: r.get(5)?,
                    version: r.get(6)?,
                    running: r.get(7)?,
                })
            })?
            .collect()
        })
        .await
    }

    /// Records a run's end and, in the same commit, what it owes GitHub for it (`owed`, the
    /// outbox body): a kill -9 keeps both or neither.
    pub async fn finish(
        &self,
        id: i64,
        status: RunState,
        reason: Option<String>,
        owed: Option<String>,
    ) -> Result<(), DbError> {
        self.write(move |t| {
            // A run that ended already (cancelled while it was planned) keeps its end.
            let n = t.execute(
                "UPDATE runs SET status = ?2, reason = ?3, finished_at = ?4, planning = 0
                 WHERE id = ?1 AND status IN ('queued', 'running')",
                params![id, status, reason, now()],
            )?;
            if let (1, Some(body)) = (n, owed) {
                insert_owed(t, body)?;
            }
            Ok(())
        })
        .await
    }

    /// Queues a run again (the server stopped while it ran).
    pub async fn requeue(&self, id: i64, reason: String) -> Result<(), DbError> {
        self.write(move |t| {
            // Planned again at the next start (its checkout may be gone by then).
            t.execute(
                "UPDATE runs SET status = 'queued', reason = ?2, job = NULL, labels = NULL, agent = NULL,
                    lease_until = NULL WHERE id = ?1",
                params![id, reason],
            )?;
            Ok(())
        })
        .await
    }

    /// Marks runs of a pull request (or any key) cancelled when queued; returns the running
    /// ones for the caller to stop, and the queued ones it cancelled for the caller to report.
    /// `owe_ended` gives what the cancelled ones owe GitHub, stored in the same commit.
    pub async fn cancel_key(
        &self,
        key: String,
        reason: String,
        owe_ended: Option<OweEnded>,
    ) -> Result<(Vec<i64>, Vec<Run>), DbError> {
        self.write(move |t| {
            let running = ids(t, "SELECT id FROM runs WHERE concurrency_key = ?1 AND status = 'running'", [&key])?;
            let queued = ids(t, "SELECT id FROM runs WHERE concurrency_key = ?1 AND status = 'queued'", [&key])?;
            t.execute(
                "UPDATE runs SET status = 'cancelled', reason = ?2, finished_at = ?3
                 WHERE concurrency_key = ?1 AND status = 'queued'",
                params![key, reason, now()],
            )?;
            let cancelled = runs_by_id(t, &queued)?;
            owe_for(t, owe_ended, &cancelled)?;
            Ok((running, cancelled))
        })
        .await
    }

    /// After a crash: runs that were running are queued again. Returns them.
    pub async fn requeue_interrupted(&self) -> Result<Vec<i64>, DbError> {
        self.write(|t| {
            t.execute("UPDATE runs SET planning = 0 WHERE planning = 1", [])?;
            let interrupted = ids(t, "SELECT id FROM runs WHERE status = 'running'", [])?;
            // An agent's run too: its events went to this server's recorder, which is gone;
            // the next attempt's number fences the agent off (its next report is refused).
            t.execute(
                "UPDATE runs SET status = 'queued', agent = NULL, lease_until = NULL, job = NULL, labels = NULL,
                    reason = 'queued again: the server stopped while it ran'
                 WHERE status = 'running'",
                [],
            )?;
            Ok(interrupted)
        })
        .await
    }

    /// Stores an update owed to GitHub (the outbox), durably; its id orders it.
    pub async fn owe(&self, body: String) -> Result<(), DbError> {
        self.write(move |t| insert_owed(t, body)).await
    }

    /// The oldest updates owed, at most `limit`, in order: id, body, when stored.
    pub async fn owed(&self, limit: i64) -> Result<Vec<(i64, String, i64)>, DbError> {
        self.read(move |c| {
            let mut q = c.prepare("SELECT id, body, created_at FROM outbox ORDER BY id LIMIT ?1")?;
            let rows = q.query_map(params![limit], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect()
        })
        .await
    }

    /// An owed update is done with (delivered, or given up), in one commit with what its
    /// sending learnt: the check runs it created (`(run, check run)`), and why it was given
    /// up (`(run, reason)`), shown on the run.
    pub async fn paid(
        &self,
        id: i64,
        created: Vec<(i64, u64)>,
        given_up: Option<(i64, String)>,
    ) -> Result<(), DbError> {
        self.write(move |t| {
            t.execute("DELETE FROM outbox WHERE id = ?1", params![id])?;
            record_check_runs(t, &created)?;
            if let Some((run, why)) = &given_up {
                t.execute("UPDATE runs SET report_error = ?2 WHERE id = ?1", params![run, why])?;
            }
            Ok(())
        })
        .await
    }

    /// Records check runs created (`(run, check run)`) by an update still owed.
    pub async fn check_runs_made(&self, created: Vec<(i64, u64)>) -> Result<(), DbError> {
        self.write(move |t| record_check_runs(t, &created)).await
    }

    /// The check run recorded for a run, if any.
    pub async fn check_run_of(&self, run: i64) -> Result<Option<u64>, DbError> {
        self.read(move |c| {
            c.query_row("SELECT check_run_id FROM runs WHERE id = ?1", params![run], |r| r.get::<_, Option<i64>>(0))
                .optional()
                .map(|o| o.flatten().map(|n| n as u64))
        })
        .await
    }

    pub async fn count_owed(&self) -> Result<i64, DbError> {
        self.read(|c| c.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))).await
    }

    pub async fn upsert_step(&self, run_id: i64, s: StepRow) -> Result<(), DbError> {
        self.write(move |t| {
            t.execute(
                "INSERT INTO steps (run_id, name, stage, status, exit_code, attempts, started, duration, message)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (run_id, name) DO UPDATE SET stage = COALESCE(excluded.stage, stage),
                   status = excluded.status, exit_code = excluded.exit_code, attempts = excluded.attempts,
                   started = COALESCE(excluded.started, started), duration = excluded.duration,
                   message = excluded.message",
                params![run_id, s.name, s.stage, s.status, s.exit_code, s.attempts, s.started, s.duration, s.message],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn run(&self, id: i64) -> Result<Option<Run>, DbError> {
        self.read(move |c| get_run(c, id)).await
    }

    pub async fn steps(&self, run_id: i64) -> Result<Vec<StepRow>, DbError> {
        self.read(move |c| {
            let mut st = c.prepare(
                "SELECT name, stage, status, exit_code, attempts, started, duration, message
                 FROM steps WHERE run_id = ?1 ORDER BY COALESCE(started, 1e18), name",
            )?;
            st.query_map(params![run_id], |r| {
                Ok(StepRow {
                    name: r.get(0)?,
                    stage: r.get(1)?,
                    status: r.get(2)?,
                    exit_code: r.get(3)?,
                    attempts: r.get(4)?,
                    started: r.get(5)?,
                    duration: r.get(6)?,
                    message: r.get(7)?,
                })
            })?
            .collect()
        })
        .await
    }

    /// Runs, newest first.
    pub async fn runs(&self, limit: i64, before: Option<i64>) -> Result<Vec<Run>, DbError> {
        self.read(move |c| {
            let mut st =
                c.prepare(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id < ?1 ORDER BY id DESC LIMIT ?2"))?;
            st.query_map(params![before.unwrap_or(i64::MAX), limit], row_to_run)?.collect()
        })
        .await
    }

    /// Runs, newest first, filtered; `before` is the cursor (an id).
    pub async fn runs_where(&self, f: RunFilter) -> Result<Vec<Run>, DbError> {
        self.read(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE id < ?1
                   AND (?2 IS NULL OR repo = ?2) AND (?3 IS NULL OR branch = ?3) AND (?4 IS NULL OR status = ?4)
                 ORDER BY id DESC LIMIT ?5"
            ))?;
            st.query_map(params![f.before.unwrap_or(i64::MAX), f.repo, f.branch, f.status, f.limit], row_to_run)?
                .collect()
        })
        .await
    }

    /// Queues a re-run of `of` (`failed_only`: of its failed steps).
    pub async fn queue_rerun(&self, run: NewRun, of: i64, failed_only: bool) -> Result<i64, DbError> {
        self.write(move |t| {
            let id = insert_run(t, None, &run)?;
            t.execute("UPDATE runs SET rerun_of = ?2, failed_only = ?3 WHERE id = ?1", params![id, of, failed_only])?;
            Ok(id)
        })
        .await
    }

    /// Cancels a queued run and stores what that owes GitHub in the same commit; `None`
    /// when it is not queued (any more).
    pub async fn cancel_queued(
        &self,
        id: i64,
        reason: String,
        owe_ended: Option<OweEnded>,
    ) -> Result<Option<Run>, DbError> {
        self.write(move |t| {
            let n = t.execute(
                "UPDATE runs SET status = 'cancelled', reason = ?2, finished_at = ?3 WHERE id = ?1 AND status = 'queued'",
                params![id, reason, now()],
            )?;
            if n == 0 {
                return Ok(None);
            }
            let cancelled = runs_by_id(t, &[id])?;
            owe_for(t, owe_ended, &cancelled)?;
            Ok(cancelled.into_iter().next())
        })
        .await
    }

    /// Runs by status.
    pub async fn status_counts(&self) -> Result<Vec<(RunState, i64)>, DbError> {
        self.read(|c| {
            let mut st = c.prepare("SELECT status, COUNT(*) FROM runs GROUP BY status ORDER BY status")?;
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect()
        })
        .await
    }

    /// Seconds each run waited in the queue.
    pub async fn queue_waits(&self) -> Result<Vec<f64>, DbError> {
        self.read(|c| {
            // Until an executor took it, or until it ended without one (planning found
            // nothing to run, or a broken file); a run cancelled in the queue never waited
            // to the end.
            let mut st = c.prepare(
                "SELECT COALESCE(dispatched_at, finished_at) - created_at FROM runs
                 WHERE dispatched_at IS NOT NULL OR (finished_at IS NOT NULL AND status != 'cancelled')",
            )?;
            st.query_map([], |r| Ok(r.get::<_, i64>(0)?.max(0) as f64))?.collect()
        })
        .await
    }

    /// (status, seconds) of every step that ran to an end.
    pub async fn step_durations(&self) -> Result<Vec<(StepState, f64)>, DbError> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT status, duration FROM steps WHERE duration IS NOT NULL AND status NOT IN ('running', 'skipped')",
            )?;
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect()
        })
        .await
    }

    /// Deletes finished runs older than `max_age` seconds (0: no age limit) or beyond the
    /// newest `max_runs` finished ones (0: no limit), with their steps, and deliveries older
    /// than `delivery_age` seconds. Returns the deleted run ids (their directories are the
    /// caller's to remove).
    pub async fn prune(&self, max_age: i64, max_runs: i64, delivery_age: i64) -> Result<Vec<i64>, DbError> {
        let now = now();
        self.write(move |t| {
            const DONE: &str = "status NOT IN ('queued', 'running')";
            let mut doomed: Vec<i64> = Vec::new();
            if max_age > 0 {
                let mut st =
                    t.prepare(&format!("SELECT id FROM runs WHERE {DONE} AND COALESCE(finished_at, created_at) < ?1"))?;
                doomed.extend(
                    st.query_map(params![now - max_age], |r| r.get::<_, i64>(0))?.collect::<Result<Vec<_>, _>>()?,
                );
            }
            if max_runs > 0 {
                let mut st =
                    t.prepare(&format!("SELECT id FROM runs WHERE {DONE} ORDER BY id DESC LIMIT -1 OFFSET ?1"))?;
                doomed.extend(st.query_map(params![max_runs], |r| r.get::<_, i64>(0))?.collect::<Result<Vec<_>, _>>()?);
            }
            doomed.sort_unstable();
            doomed.dedup();
            for id in &doomed {
                t.execute("DELETE FROM steps WHERE run_id = ?1", params![id])?;
                t.execute("DELETE FROM runs WHERE id = ?1", params![id])?;
            }
            let mut deliveries = 0;
            if delivery_age > 0 {
                deliveries = t.execute("DELETE FROM deliveries WHERE received_at < ?1", params![now - delivery_age])?;
            }
            if !doomed.is_empty() || deliveries > 0 {
                // Give the freed pages back: the file shrinks with what was removed. Each
                // step of the pragma frees one page, so it is run to its end.
                let mut st = t.prepare("PRAGMA incremental_vacuum")?;
                let mut rows = st.query([])?;
                while rows.next()?.is_some() {}
            }
            Ok(doomed)
        })
        .await
    }

    /// Runs being planned now (their labels are not known yet).
    pub async fn count_planning(&self) -> Result<i64, DbError> {
        self.read(|c| {
            c.query_row("SELECT COUNT(*) FROM runs WHERE planning = 1 AND status = 'queued'", [], |r| r.get(0))
        })
        .await
    }

    /// The labels of each planned run that waits for an executor.
    pub async fn ready_labels(&self) -> Result<Vec<Vec<String>>, DbError> {
        self.read(|c| {
            let mut st = c.prepare("SELECT labels FROM runs WHERE status = 'queued' AND job IS NOT NULL")?;
            st.query_map([], |r| {
                Ok(r.get::<_, Option<String>>(0)?.and_then(|l| serde_json::from_str(&l).ok()).unwrap_or_default())
            })?
            .collect()
        })
        .await
    }

    /// Whether the database answers a query.
    /// Replaces `repo`'s schedules with `set` (read from its default branch): a schedule
    /// not in it is deleted; one whose cron and zone did not change keeps its next time
    /// (and what it last did), so a push never moves or repeats a time. Returns whether
    /// anything changed.
    pub async fn set_schedules(
        &self,
        repo: String,
        clone_url: String,
        default_branch: String,
        installation_id: Option<u64>,
        set: Vec<NewSchedule>,
    ) -> Result<bool, DbError> {
        self.write(move |t| {
            let names: Vec<&str> = set.iter().map(|s| s.name.as_str()).collect();
            let names_json = serde_json::to_string(&names).unwrap_or_else(|_| "[]".into());
            let mut changed = t.execute(
                "DELETE FROM schedules WHERE repo = ?1 AND name NOT IN (SELECT value FROM json_each(?2))",
                params![repo, names_json],
            )? > 0;
            let inst = installation_id.map(|n| n as i64);
            for s in &set {
                // Same cron and zone: only where it is fetched from may change.
                let kept = t.execute(
                    "UPDATE schedules SET clone_url = ?3, default_branch = ?4, installation_id = ?5, updated_at = ?6
                     WHERE repo = ?1 AND name = ?2 AND cron = ?7 AND timezone = ?8",
                    params![repo, s.name, clone_url, default_branch, inst, now(), s.cron, s.timezone],
                )?;
                if kept == 0 {
                    changed = true;
                    t.execute(
                        "INSERT INTO schedules (repo, name, cron, timezone, clone_url, default_branch, installation_id,
                           next_at, updated_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                         ON CONFLICT (repo, name) DO UPDATE SET cron = excluded.cron, timezone = excluded.timezone,
                           clone_url = excluded.clone_url, default_branch = excluded.default_branch,
                           installation_id = excluded.installation_id, next_at = excluded.next_at,
                           last_error = NULL, updated_at = excluded.updated_at",
                        params![repo, s.name, s.cron, s.timezone, clone_url, default_branch, inst, s.next_at, now()],
                    )?;
                }
            }
            Ok(changed)
        })
        .await
    }

    /// Every schedule, by repository and name.
    pub async fn schedules(&self) -> Result<Vec<ScheduleRow>, DbError> {
        self.read(|c| {
            let mut st = c.prepare(&format!("SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY repo, name"))?;
            st.query_map([], row_to_schedule)?.collect()
        })
        .await
    }

    /// The schedules due at `now` (their next time is not after it), earliest first.
    pub async fn due_schedules(&self, now: i64) -> Result<Vec<ScheduleRow>, DbError> {
        self.read(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE next_at <= ?1 ORDER BY next_at, id"
            ))?;
            st.query_map(params![now], row_to_schedule)?.collect()
        })
        .await
    }

    /// The earliest next time of any schedule.
    pub async fn next_schedule_at(&self) -> Result<Option<i64>, DbError> {
        self.read(|c| c.query_row("SELECT MIN(next_at) FROM schedules", [], |r| r.get(0))).await
    }

    /// Fires schedule `id` for its time `due`: moves it to `next` and, with `run`, queues
    /// the run (with `owe`'s update for GitHub), all in one commit, only if its next time
    /// is still `due`. That compare-and-set is what makes several servers on one database
    /// fire a time once: the others find it moved and get `Fired::Lost`. Without `run`,
    /// `error` says why the time queued nothing.
    pub async fn fire_schedule(
        &self,
        id: i64,
        due: i64,
        next: Option<i64>,
        run: Option<NewRun>,
        error: Option<String>,
        owe: Option<Box<dyn FnOnce(i64) -> String + Send>>,
    ) -> Result<Fired, DbError> {
        self.write(move |t| {
            let moved = t.execute(
                "UPDATE schedules SET next_at = ?3, last_fired_at = ?2, last_error = ?4
                 WHERE id = ?1 AND next_at = ?2",
                params![id, due, next, error],
            )?;
            if moved == 0 {
                return Ok(Fired::Lost);
            }
            let Some(run) = run else { return Ok(Fired::Skipped) };
            let run_id = insert_run(t, None, &run)?;
            t.execute("UPDATE schedules SET last_run = ?2 WHERE id = ?1", params![id, run_id])?;
            if let Some(owe) = owe {
                insert_owed(t, owe(run_id))?;
            }
            Ok(Fired::Queued(run_id))
        })
        .await
    }

    pub async fn ping(&self) -> Result<(), DbError> {
        self.read(|c| c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))).await.map(|_| ())
    }

    pub async fn count_deliveries(&self) -> Result<i64, DbError> {
        self.read(|c| c.query_row("SELECT COUNT(*) FROM deliveries", [], |r| r.get(0))).await
    }

    pub async fn count_runs(&self, status: RunState) -> Result<i64, DbError> {
        self.read(move |c| c.query_row("SELECT COUNT(*) FROM runs WHERE status = ?1", params![status], |r| r.get(0)))
            .await
    }
}

fn ids(c: &Connection, sql: &str, args: impl rusqlite::Params) -> rusqlite::Result<Vec<i64>> {
    let mut st = c.prepare(sql)?;
    st.query_map(args, |r| r.get(0))?.collect()
}

fn record_check_runs(t: &Transaction, created: &[(i64, u64)]) -> rusqlite::Result<()> {
    for (run, check_run) in created {
        t.execute("UPDATE runs SET check_run_id = ?2 WHERE id = ?1", params![run, *check_run as i64])?;
    }
    Ok(())
}

/// What a run that ended without an executor's verdict (cancelled before it started, its
/// agent lost too often) owes GitHub (an outbox body).
pub type OweEnded = fn(&Run) -> String;

fn owe_for(t: &Transaction, owe: Option<OweEnded>, runs: &[Run]) -> rusqlite::Result<()> {
    if let Some(owe) = owe {
        for r in runs {
            insert_owed(t, owe(r))?;
        }
    }
    Ok(())
}

/// Stores an update owed to GitHub; its id orders it.
fn insert_owed(t: &Transaction, body: String) -> rusqlite::Result<()> {
    t.execute("INSERT INTO outbox (body, created_at) VALUES (?1, ?2)", params![body, now()])?;
    Ok(())
}

fn insert_run(t: &Transaction, delivery: Option<&str>, r: &NewRun) -> rusqlite::Result<i64> {
    let changed = r.changed.as_ref().map(|c| serde_json::to_string(c).unwrap_or_default());
    t.execute(
        "INSERT INTO runs (delivery_id, repo, clone_url, event, branch, base_branch, tag, sha, pr, fork, changed,
           installation_id, author, title, status, created_at, concurrency_key, default_branch, event_time, schedule)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, 'queued', ?15, ?16, ?17, ?18, ?19)",
        params![
            delivery,
            r.repo,
            r.clone_url,
            r.event,
            r.branch,
            r.base_branch,
            r.tag,
            r.sha,
            r.pr.map(|n| n as i64),
            r.fork,
            changed,
            r.installation_id.map(|n| n as i64),
            r.author,
            r.title,
            now(),
            r.concurrency_key,
            r.default_branch,
            r.event_time,
            r.schedule,
        ],
    )?;
    Ok(t.last_insert_rowid())
}

/// Cancels the queued runs with `key` older than `newer` (whose event is not newer than
/// `time`); returns the running ones and the cancelled ones. When a run of the key already
/// has a newer event (deliveries arrive out of order, or an old body is replayed), `newer`
/// is the one cancelled: it is the last of the returned cancelled runs.
fn supersede_older(
    t: &Transaction,
    key: &str,
    newer: i64,
    time: Option<i64>,
) -> rusqlite::Result<(Vec<i64>, Vec<Run>)> {
    if let Some(time) = time {
        let later: Option<i64> = t
            .query_row(
                "SELECT id FROM runs WHERE concurrency_key = ?1 AND id <> ?2 AND event_time > ?3
                 AND status NOT IN ('cancelled', 'skipped') ORDER BY event_time DESC LIMIT 1",
                params![key, newer, time],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(later) = later {
            t.execute(
                "UPDATE runs SET status = 'cancelled', reason = ?2, finished_at = ?3 WHERE id = ?1",
                params![newer, format!("superseded by run {later}, of a newer commit"), now()],
            )?;
            return Ok((Vec::new(), runs_by_id(t, &[newer])?));
        }
    }
    // An older run whose event time is unknown (a re-run, a manual run) is superseded too.
    let older = "concurrency_key = ?1 AND id < ?2 AND (?3 IS NULL OR event_time IS NULL OR event_time <= ?3)";
    let with_status = |status: &str| -> rusqlite::Result<Vec<i64>> {
        let mut st = t.prepare(&format!("SELECT id FROM runs WHERE {older} AND status = ?4"))?;
        st.query_map(params![key, newer, time, status], |r| r.get(0))?.collect()
    };
    let (running, queued) = (with_status("running")?, with_status("queued")?);
    t.execute(
        &format!(
            "UPDATE runs SET status = 'cancelled', reason = ?4, finished_at = ?5 WHERE {older} AND status = 'queued'"
        ),
        params![key, newer, time, format!("superseded by run {newer}"), now()],
    )?;
    Ok((running, runs_by_id(t, &queued)?))
}

fn runs_by_id(c: &Connection, ids: &[i64]) -> rusqlite::Result<Vec<Run>> {
    ids.iter().filter_map(|&id| get_run(c, id).transpose()).collect()
}

const RUN_COLUMNS: &str = "id, delivery_id, repo, clone_url, event, branch, base_branch, tag, sha, pr, fork, changed,
    installation_id, author, title, status, reason, created_at, started_at, finished_at, attempts, check_run_id,
    concurrency_key, default_branch, rerun_of, failed_only, event_time, report_error, agent, labels, lost, dispatched_at, schedule";

fn row_to_run(r: &rusqlite::Row) -> rusqlite::Result<Run> {
    let changed: Option<String> = r.get(11)?;
    Ok(Run {
        id: r.get(0)?,
        delivery_id: r.get(1)?,
        spec: NewRun {
            repo: r.get(2)?,
            clone_url: r.get(3)?,
            event: r.get(4)?,
            branch: r.get(5)?,
            base_branch: r.get(6)?,
            tag: r.get(7)?,
            sha: r.get(8)?,
            pr: r.get::<_, Option<i64>>(9)?.map(|n| n as u64),
            fork: r.get(10)?,
            changed: changed.and_then(|c| serde_json::from_str(&c).ok()),
            installation_id: r.get::<_, Option<i64>>(12)?.map(|n| n as u64),
            author: r.get(13)?,
            title: r.get(14)?,
            concurrency_key: r.get(22)?,
            default_branch: r.get(23)?,
            event_time: r.get(26)?,
            schedule: r.get(32)?,
        },
        status: r.get(15)?,
        reason: r.get(16)?,
        created_at: r.get(17)?,
        started_at: r.get(18)?,
        finished_at: r.get(19)?,
        attempts: r.get(20)?,
        check_run_id: r.get(21)?,
        rerun_of: r.get(24)?,
        failed_only: r.get(25)?,
        report_error: r.get(27)?,
        agent: r.get(28)?,
        labels: r.get::<_, Option<String>>(29)?.and_then(|l| serde_json::from_str(&l).ok()),
        lost: r.get(30)?,
        dispatched_at: r.get(31)?,
    })
}

const SCHEDULE_COLUMNS: &str = "id, repo, name, cron, timezone, clone_url, default_branch, installation_id, next_at,
    last_fired_at, last_run, last_error";

fn row_to_schedule(r: &rusqlite::Row) -> rusqlite::Result<ScheduleRow> {
    Ok(ScheduleRow {
        id: r.get(0)?,
        repo: r.get(1)?,
        name: r.get(2)?,
        cron: r.get(3)?,
        timezone: r.get(4)?,
        clone_url: r.get(5)?,
        default_branch: r.get(6)?,
        installation_id: r.get::<_, Option<i64>>(7)?.map(|n| n as u64),
        next_at: r.get(8)?,
        last_fired_at: r.get(9)?,
        last_run: r.get(10)?,
        last_error: r.get(11)?,
    })
}

fn get_run(c: &Connection, id: i64) -> rusqlite::Result<Option<Run>> {
    c.query_row(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"), params![id], row_to_run).optional()
}

fn gate_rows(c: &Connection, run_id: i64) -> rusqlite::Result<Vec<GateRow>> {
    let mut st = c.prepare(
        "SELECT environment, step, approvers, required, status, reason, created_at, timeout_at, decided_at
         FROM gates WHERE run_id = ?1 ORDER BY created_at, environment",
    )?;
    let mut gates = st
        .query_map(params![run_id], |r| {
            let approvers: String = r.get(2)?;
            Ok(GateRow {
                environment: r.get(0)?,
                step: r.get(1)?,
                approvers: serde_json::from_str(&approvers).unwrap_or_default(),
                required: r.get(3)?,
                status: r.get(4)?,
                reason: r.get(5)?,
                created_at: r.get(6)?,
                timeout_at: r.get(7)?,
                decided_at: r.get(8)?,
                votes: Vec::new(),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut st =
        c.prepare("SELECT who, vote, at FROM gate_votes WHERE run_id = ?1 AND environment = ?2 ORDER BY at, who")?;
    for g in &mut gates {
        g.votes = st
            .query_map(params![run_id, g.environment], |r| {
                Ok(GateVote { who: r.get(0)?, vote: r.get(1)?, at: r.get(2)? })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
    }
    Ok(gates)
}

impl Db {
    /// Registers a named API token (its hash); a revoked name gets a new token. False when
    /// the name has a live one.
    pub async fn create_api_token(
        &self,
        name: String,
        token_hash: String,
        abilities: Vec<String>,
    ) -> Result<bool, DbError> {
        let abilities = abilities.join(",");
        self.write(move |t| {
            let n = t.execute(
                "INSERT INTO api_tokens (name, token_hash, abilities, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET token_hash = excluded.token_hash, abilities = excluded.abilities,
                   created_at = excluded.created_at, revoked_at = NULL
                 WHERE api_tokens.revoked_at IS NOT NULL",
                params![name, token_hash, abilities, now()],
            )?;
            Ok(n == 1)
        })
        .await
    }

    /// Every named API token, by name.
    pub async fn api_tokens(&self) -> Result<Vec<ApiTokenRow>, DbError> {
        self.read(|c| {
            let mut st = c.prepare("SELECT name, abilities, created_at, revoked_at FROM api_tokens ORDER BY name")?;
            st.query_map([], |r| {
                let abilities: String = r.get(1)?;
                Ok(ApiTokenRow {
                    name: r.get(0)?,
                    abilities: abilities.split(',').filter(|a| !a.is_empty()).map(str::to_string).collect(),
                    created_at: r.get(2)?,
                    revoked_at: r.get(3)?,
                })
            })?
            .collect()
        })
        .await
    }

    /// Revokes a named API token. False when there is no such live token.
    pub async fn revoke_api_token(&self, name: String) -> Result<bool, DbError> {
        self.write(move |t| {
            let n = t.execute(
                "UPDATE api_tokens SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
                params![name, now()],
            )?;
            Ok(n == 1)
        })
        .await
    }

    /// The name and abilities of the token that hashes to `token_hash`; `Some((name, None))`
    /// when it was revoked.
    pub async fn api_token_by_hash(
        &self,
        token_hash: String,
    ) -> Result<Option<(String, Option<Vec<String>>)>, DbError> {
        self.read(move |c| {
            c.query_row(
                "SELECT name, abilities, revoked_at FROM api_tokens WHERE token_hash = ?1",
                params![token_hash],
                |r| {
                    let abilities: String = r.get(1)?;
                    let revoked: Option<i64> = r.get(2)?;
                    let abilities = abilities.split(',').filter(|a| !a.is_empty()).map(str::to_string).collect();
                    Ok((r.get(0)?, revoked.is_none().then_some(abilities)))
                },
            )
            .optional()
        })
        .await
    }

    /// Opens a run's gate for an environment. When the run asks again, on a later attempt
    /// (the server restarted), the votes stand, a decision by votes stands, and a gate that
    /// ended without one (cancelled with the attempt, timed out) waits again.
    pub async fn open_gate(
        &self,
        run_id: i64,
        environment: String,
        step: String,
        approvers: Vec<String>,
        required: i64,
        timeout_at: i64,
    ) -> Result<(), DbError> {
        let approvers = serde_json::to_string(&approvers).unwrap_or_else(|_| "[]".into());
        self.write(move |t| {
            t.execute(
                "INSERT INTO gates (run_id, environment, step, approvers, required, status, created_at, timeout_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'waiting', ?6, ?7)
                 ON CONFLICT (run_id, environment) DO UPDATE SET status = 'waiting', reason = NULL,
                   decided_at = NULL, timeout_at = excluded.timeout_at
                 WHERE gates.status IN ('cancelled', 'timed_out')",
                params![run_id, environment, step, approvers, required, now(), timeout_at],
            )?;
            Ok(())
        })
        .await
    }

    /// A run's gates, with their votes.
    pub async fn gates(&self, run_id: i64) -> Result<Vec<GateRow>, DbError> {
        self.read(move |c| gate_rows(c, run_id)).await
    }

    /// `who` votes on a waiting gate: one rejection rejects it, `required` distinct
    /// approvals approve it.
    pub async fn vote_gate(
        &self,
        run_id: i64,
        environment: String,
        who: String,
        approve: bool,
    ) -> Result<Voted, DbError> {
        self.write(move |t| {
            let find = |t: &Transaction| -> rusqlite::Result<Option<GateRow>> {
                Ok(gate_rows(t, run_id)?.into_iter().find(|g| g.environment == environment))
            };
            let Some(gate) = find(t)? else { return Ok(Voted::Closed(None)) };
            if gate.status != "waiting" {
                return Ok(Voted::Closed(Some(gate)));
            }
            let vote = if approve { "approve" } else { "reject" };
            let n = t.execute(
                "INSERT INTO gate_votes (run_id, environment, who, vote, at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (run_id, environment, who) DO NOTHING",
                params![run_id, environment, who, vote, now()],
            )?;
            if n == 0 {
                return Ok(Voted::Again(gate));
            }
            let approvals: i64 = t.query_row(
                "SELECT COUNT(*) FROM gate_votes WHERE run_id = ?1 AND environment = ?2 AND vote = 'approve'",
                params![run_id, environment],
                |r| r.get(0),
            )?;
            let decided = match approve {
                false => Some(("rejected", format!("rejected by {who}"))),
                true if approvals >= gate.required => Some(("approved", String::new())),
                true => None,
            };
            if let Some((status, reason)) = decided {
                t.execute(
                    "UPDATE gates SET status = ?3, reason = ?4, decided_at = ?5 WHERE run_id = ?1 AND environment = ?2",
                    params![run_id, environment, status, (!reason.is_empty()).then_some(reason), now()],
                )?;
            }
            Ok(Voted::Counted(find(t)?.unwrap_or(gate)))
        })
        .await
    }

    /// When run `run_id`'s commit happened, as far as the server knows (the push's time,
    /// else when the run was created), and the environment's live commit.
    pub async fn env_live(
        &self,
        repo: String,
        environment: String,
        run_id: i64,
    ) -> Result<(i64, Option<Live>), DbError> {
        self.read(move |c| {
            let mine: i64 =
                c.query_row("SELECT COALESCE(event_time, created_at) FROM runs WHERE id = ?1", params![run_id], |r| {
                    r.get(0)
                })?;
            let live = c
                .query_row(
                    "SELECT run_id, sha, commit_time FROM env_live WHERE repo = ?1 AND environment = ?2",
                    params![repo, environment],
                    |r| Ok(Live { run_id: r.get(0)?, sha: r.get(1)?, commit_time: r.get(2)? }),
                )
                .optional()?;
            Ok((mine, live))
        })
        .await
    }

    /// Puts run `run_id` in line for the environment (once).
    pub async fn env_enqueue(&self, repo: String, environment: String, run_id: i64) -> Result<(), DbError> {
        self.write(move |t| {
            t.execute(
                "INSERT INTO env_queue (repo, environment, run_id, commit_time, enqueued_at, status)
                 SELECT ?1, ?2, id, COALESCE(event_time, created_at), ?4, 'waiting' FROM runs WHERE id = ?3
                 ON CONFLICT (repo, environment, run_id) DO NOTHING",
                params![repo, environment, run_id, now()],
            )?;
            Ok(())
        })
        .await
    }

    /// Takes the environment's lock for run `run_id` if it is free (or held by a run that
    /// is not running: ended, cancelled, interrupted) and this run goes first of those
    /// waiting: the newest commit (`newest`: the older waiting ones are superseded) or the
    /// first in line (`fifo`).
    pub async fn env_acquire(
        &self,
        repo: String,
        environment: String,
        run_id: i64,
        newest: bool,
    ) -> Result<Acquired, DbError> {
        self.write(move |t| {
            let mine = t
                .query_row(
                    "SELECT status, superseded_by FROM env_queue WHERE repo = ?1 AND environment = ?2 AND run_id = ?3",
                    params![repo, environment, run_id],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?)),
                )
                .optional()?;
            if let Some((status, by)) = &mine
                && status == "superseded"
            {
                return Ok(Acquired::Superseded(by.unwrap_or(0)));
            }
            let holder: Option<i64> = t
                .query_row(
                    "SELECT l.run_id FROM env_locks l JOIN runs r ON r.id = l.run_id
                     WHERE l.repo = ?1 AND l.environment = ?2 AND r.status = 'running'",
                    params![repo, environment],
                    |r| r.get(0),
                )
                .optional()?;
            match holder {
                Some(h) if h == run_id => return Ok(Acquired::Got),
                Some(_) => return Ok(Acquired::Wait),
                None => {}
            }
            let order = if newest { "q.commit_time DESC, q.run_id DESC" } else { "q.enqueued_at, q.run_id" };
            let first: Option<i64> = t
                .query_row(
                    &format!(
                        "SELECT q.run_id FROM env_queue q JOIN runs r ON r.id = q.run_id
                         WHERE q.repo = ?1 AND q.environment = ?2 AND q.status = 'waiting' AND r.status = 'running'
                         ORDER BY {order} LIMIT 1"
                    ),
                    params![repo, environment],
                    |r| r.get(0),
                )
                .optional()?;
            if first.is_some_and(|f| f != run_id) {
                return Ok(Acquired::Wait);
            }
            t.execute("DELETE FROM env_locks WHERE repo = ?1 AND environment = ?2", params![repo, environment])?;
            t.execute(
                "INSERT INTO env_locks (repo, environment, run_id, acquired_at) VALUES (?1, ?2, ?3, ?4)",
                params![repo, environment, run_id, now()],
            )?;
            t.execute(
                "DELETE FROM env_queue WHERE repo = ?1 AND environment = ?2 AND run_id = ?3",
                params![repo, environment, run_id],
            )?;
            if newest {
                t.execute(
                    "UPDATE env_queue SET status = 'superseded', superseded_by = ?3
                     WHERE repo = ?1 AND environment = ?2 AND status = 'waiting'",
                    params![repo, environment, run_id],
                )?;
            }
            Ok(Acquired::Got)
        })
        .await
    }

    /// Run `run_id`'s deployment to the environment ended: its lock is released, its queue
    /// entry dropped, and, when it succeeded, its commit is the live one.
    pub async fn env_release(
        &self,
        repo: String,
        environment: String,
        run_id: i64,
        succeeded: bool,
    ) -> Result<(), DbError> {
        self.write(move |t| {
            t.execute(
                "DELETE FROM env_locks WHERE repo = ?1 AND environment = ?2 AND run_id = ?3",
                params![repo, environment, run_id],
            )?;
            t.execute(
                "DELETE FROM env_queue WHERE repo = ?1 AND environment = ?2 AND run_id = ?3",
                params![repo, environment, run_id],
            )?;
            if succeeded {
                t.execute(
                    "INSERT INTO env_live (repo, environment, run_id, sha, commit_time, deployed_at)
                     SELECT ?1, ?2, id, sha, COALESCE(event_time, created_at), ?4 FROM runs WHERE id = ?3
                     ON CONFLICT (repo, environment) DO UPDATE SET run_id = excluded.run_id, sha = excluded.sha,
                       commit_time = excluded.commit_time, deployed_at = excluded.deployed_at",
                    params![repo, environment, run_id, now()],
                )?;
            }
            Ok(())
        })
        .await
    }

    /// Closes a gate still waiting (timed out, cancelled with its run).
    pub async fn close_gate(
        &self,
        run_id: i64,
        environment: String,
        status: String,
        reason: String,
    ) -> Result<(), DbError> {
        self.write(move |t| {
            t.execute(
                "UPDATE gates SET status = ?3, reason = ?4, decided_at = ?5
                 WHERE run_id = ?1 AND environment = ?2 AND status = 'waiting'",
                params![run_id, environment, status, reason, now()],
            )?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(branch: &str) -> NewRun {
        NewRun {
            repo: "o/r".into(),
            clone_url: "u".into(),
            event: "push".into(),
            branch: Some(branch.into()),
            sha: "s".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_database_from_before_incremental_vacuum_is_converted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orch.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);").unwrap();
            let mode: i64 = c.query_row("PRAGMA auto_vacuum", [], |r| r.get(0)).unwrap();
            assert_eq!(mode, 0);
        }
        let db = Db::open(&path).unwrap();
        let mode: i64 = db.read(|c| c.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))).await.unwrap();
        assert_eq!(mode, 2, "incremental");
        let kept: i64 = db.read(|c| c.query_row("SELECT x FROM t", [], |r| r.get(0))).await.unwrap();
        assert_eq!(kept, 1);
    }

    /// Votes: distinct approvers up to `required`, one vote each, one rejection ends it; a
    /// gate that ended without a decision waits again when the run asks again.
    #[tokio::test]
    async fn gate_votes_decide_and_an_undecided_gate_reopens_for_a_later_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("orch.db")).unwrap();
        let (id, _, _) = db.queue_run(spec("main"), false).await.unwrap();
        let (env, who) = ("prod".to_string(), |w: &str| w.to_string());
        let approvers = vec![who("a"), who("b"), who("c")];
        db.open_gate(id, env.clone(), "ship".into(), approvers.clone(), 2, 0).await.unwrap();
        let status = |v: Voted| match v {
            Voted::Counted(g) => format!("counted {}", g.status),
            Voted::Again(_) => "again".into(),
            Voted::Closed(g) => format!("closed {:?}", g.map(|g| g.status)),
        };
        assert_eq!(status(db.vote_gate(id, env.clone(), who("a"), true).await.unwrap()), "counted waiting");
        assert_eq!(status(db.vote_gate(id, env.clone(), who("a"), true).await.unwrap()), "again");
        assert_eq!(status(db.vote_gate(id, env.clone(), who("b"), true).await.unwrap()), "counted approved");
        assert_eq!(status(db.vote_gate(id, env.clone(), who("c"), false).await.unwrap()), "closed Some(\"approved\")");
        // Another environment: closed with the attempt, it waits again on the next.
        let qa = "qa".to_string();
        db.open_gate(id, qa.clone(), "ship".into(), approvers.clone(), 1, 0).await.unwrap();
        db.close_gate(id, qa.clone(), "cancelled".into(), "the run was cancelled".into()).await.unwrap();
        db.open_gate(id, qa.clone(), "ship".into(), approvers.clone(), 1, 0).await.unwrap();
        db.open_gate(id, env.clone(), "ship".into(), approvers, 2, 0).await.unwrap();
        let gates = db.gates(id).await.unwrap();
        let st = |e: &str| gates.iter().find(|g| g.environment == e).map(|g| g.status.clone());
        assert_eq!((st("prod"), st("qa")), (Some("approved".into()), Some("waiting".into())));
        assert_eq!(status(db.vote_gate(id, qa, who("c"), false).await.unwrap()), "counted rejected");
    }

    /// Environment locks: one holder at a time; the newest waiting commit goes next and
    /// supersedes the older waiting ones (or, `fifo`, the first in line goes); a lock of a
    /// run that is not running (ended, interrupted) is free; the live commit is recorded.
    #[tokio::test]
    async fn environment_locks_go_to_one_run_at_a_time_in_order_and_dead_runs_hold_none() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("orch.db")).unwrap();
        let mut ids = Vec::new();
        for (branch, time) in [("a", 100), ("b", 200), ("c", 300), ("d", 400)] {
            let (id, _, _) = db.queue_run(spec(branch), false).await.unwrap();
            db.write(move |t| {
                t.execute("UPDATE runs SET status = 'running', event_time = ?2 WHERE id = ?1", params![id, time])
            })
            .await
            .unwrap();
            ids.push(id);
        }
        let [a, b, c, d] = ids[..] else { unreachable!() };
        let (repo, env) = ("o/r".to_string(), "prod".to_string());
        let acquire = |id: i64, newest: bool| db.env_acquire(repo.clone(), env.clone(), id, newest);
        for id in [a, b, c] {
            db.env_enqueue(repo.clone(), env.clone(), id).await.unwrap();
        }
        // The newest (c) goes first; it supersedes those waiting.
        assert_eq!(acquire(a, true).await.unwrap(), Acquired::Wait);
        assert_eq!(acquire(c, true).await.unwrap(), Acquired::Got);
        assert_eq!(acquire(c, true).await.unwrap(), Acquired::Got, "a holder asking again keeps it");
        assert_eq!(acquire(b, true).await.unwrap(), Acquired::Superseded(c));
        db.env_release(repo.clone(), env.clone(), c, true).await.unwrap();
        let (mine, live) = db.env_live(repo.clone(), env.clone(), a).await.unwrap();
        assert_eq!((mine, live.map(|l| (l.run_id, l.commit_time))), (100, Some((c, 300))));
        // In turn (fifo): d came after a was superseded; d is the one in line.
        db.env_enqueue(repo.clone(), env.clone(), d).await.unwrap();
        assert_eq!(acquire(d, false).await.unwrap(), Acquired::Got);
        assert_eq!(acquire(a, false).await.unwrap(), Acquired::Superseded(c));
        // d dies holding the lock (a restart): a later run takes it.
        db.write(move |t| t.execute("UPDATE runs SET status = 'queued' WHERE id = ?1", params![d])).await.unwrap();
        let (e, _, _) = db.queue_run(spec("e"), false).await.unwrap();
        db.write(move |t| t.execute("UPDATE runs SET status = 'running' WHERE id = ?1", params![e])).await.unwrap();
        db.env_enqueue(repo.clone(), env.clone(), e).await.unwrap();
        assert_eq!(acquire(e, false).await.unwrap(), Acquired::Got);
    }

    /// The queue of agents: a run is planned, taken only by an executor its labels fit,
    /// leased, fenced by its attempt, queued again when its lease runs out (a bounded number
    /// of times), then ended; an ended run keeps its end.
    #[tokio::test]
    async fn leases_fence_attempts_and_a_lost_run_is_queued_again_then_ended() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("orch.db")).unwrap();
        let (id, _, _) = db.queue_run(spec("main"), false).await.unwrap();
        let planning = db.claim().await.unwrap().unwrap();
        assert_eq!((planning.id, planning.status), (id, RunState::Queued), "planned while queued");
        assert!(db.claim().await.unwrap().is_none(), "planned once");
        assert!(db.dispatch(None, vec![], None).await.unwrap().is_none(), "not planned yet");
        assert!(db.plan_ready(id, "{}".into(), vec!["gpu".into()], "waiting".into()).await.unwrap());
        assert!(db.dispatch(Some("a".into()), vec!["linux".into()], Some(1)).await.unwrap().is_none());
        let (run, job) =
            db.dispatch(Some("a".into()), vec!["gpu".into(), "linux".into()], Some(1000)).await.unwrap().unwrap();
        assert_eq!(
            (run.status, run.attempts, run.agent.as_deref(), job.as_str()),
            (RunState::Running, 1, Some("a"), "{}")
        );
        assert!(db.extend_lease(id, 1, "a".into(), 2000).await.unwrap());
        assert!(!db.extend_lease(id, 2, "a".into(), 2000).await.unwrap(), "another attempt");
        assert!(!db.extend_lease(id, 1, "b".into(), 2000).await.unwrap(), "another agent");
        // Not expired yet; then expired: queued again, for anyone with the labels.
        let (again, ended) = db.reap_lost(1999, 1, None).await.unwrap();
        assert!(again.is_empty() && ended.is_empty());
        let (again, ended) = db.reap_lost(2001, 1, None).await.unwrap();
        assert_eq!((again.len(), ended.len()), (1, 0));
        assert_eq!((again[0].status, again[0].agent.as_deref(), again[0].lost), (RunState::Queued, None, 1));
        assert!(!db.extend_lease(id, 1, "a".into(), 2500).await.unwrap(), "the old attempt is fenced off");
        let (run, _) = db.dispatch(Some("b".into()), vec!["gpu".into()], Some(3000)).await.unwrap().unwrap();
        assert_eq!((run.attempts, run.agent.as_deref()), (2, Some("b")));
        assert!(db.extend_lease(id, 2, "b".into(), 3000).await.unwrap());
        // Lost again, past the retries: an error, and it keeps that end.
        let (again, ended) = db.reap_lost(3001, 1, None).await.unwrap();
        assert_eq!((again.len(), ended.len()), (0, 1));
        assert_eq!(ended[0].status, RunState::Error);
        assert!(ended[0].reason.as_deref().unwrap().contains("lost 2 times (last: `b`)"), "{:?}", ended[0].reason);
        db.finish(id, RunState::Success, Some("late".into()), Some("owed".into())).await.unwrap();
        let run = db.run(id).await.unwrap().unwrap();
        assert_eq!((run.status, run.reason.as_deref()), (RunState::Error, ended[0].reason.as_deref()));
        assert_eq!(db.count_owed().await.unwrap(), 0, "nothing owed for an end that did not happen");
        assert!(!db.extend_lease(id, 2, "b".into(), 9000).await.unwrap());
    }

    #[tokio::test]
    async fn agent_tokens_are_stored_hashed_named_once_and_revocable() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("orch.db")).unwrap();
        assert!(db.create_agent("a".into(), "h1".into()).await.unwrap());
        assert!(!db.create_agent("a".into(), "h2".into()).await.unwrap(), "a name is taken once");
        assert_eq!(db.agent_by_token("h1".into()).await.unwrap().as_deref(), Some("a"));
        assert_eq!(db.agent_by_token("h2".into()).await.unwrap(), None);
        db.agent_seen("a".into(), vec!["x".into()], 2, 0, "v".into()).await.unwrap();
        let rows = db.agents().await.unwrap();
        assert_eq!((rows[0].labels.clone(), rows[0].capacity), (vec!["x".to_string()], Some(2)));
        assert!(db.revoke_agent("a".into()).await.unwrap());
        assert!(!db.revoke_agent("a".into()).await.unwrap());
        assert_eq!(db.agent_by_token("h1".into()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn prune_by_age_and_count_keeps_unfinished_runs() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("orch.db")).unwrap();
        let mut run_ids = Vec::new();
        for b in ["a", "b", "c", "d", "e"] {
            run_ids.push(db.queue_run(spec(b), false).await.unwrap().0);
        }
        for &id in &run_ids[..4] {
            db.finish(id, RunState::Success, None, None).await.unwrap();
            db.upsert_step(
                id,
                StepRow {
                    name: "s".into(),
                    stage: None,
                    status: StepState::Passed,
                    exit_code: Some(0),
                    attempts: 1,
                    started: Some(0.0),
                    duration: Some(1.0),
                    message: None,
                },
            )
            .await
            .unwrap();
        }
        let old = now() - 10 * 86_400;
        db.write(move |t| t.execute("UPDATE runs SET finished_at = ?1, created_at = ?1 WHERE id = 2", params![old]))
            .await
            .unwrap();
        for (id, at) in [("old", old), ("new", now())] {
            let d = Delivery {
                id: id.into(),
                event: "ping".into(),
                action: None,
                headers: "{}".into(),
                // A big body, as a push of many commits has: its pages must be given back.
                body: if id == "old" { vec![b'x'; 4 << 20] } else { Vec::new() },
                outcome: "ping".into(),
            };
            db.store_delivery(d, None, false, None, None).await.unwrap();
            let id = id.to_string();
            db.write(move |t| t.execute("UPDATE deliveries SET received_at = ?2 WHERE id = ?1", params![id, at]))
                .await
                .unwrap();
        }
        let pages = || db.read(|c| c.query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0)));
        let before = pages().await.unwrap();
        // 5 days: run 2 goes; at most 2 finished runs: run 1 goes too. Run 5 is queued: kept.
        let gone = db.prune(5 * 86_400, 2, 3 * 86_400).await.unwrap();
        let after = pages().await.unwrap();
        assert!(before - after > 900, "the 4 MB body's pages are given back: {before} -> {after}");
        let free: i64 = db.read(|c| c.query_row("PRAGMA freelist_count", [], |r| r.get(0))).await.unwrap();
        assert_eq!(free, 0);
        assert_eq!(gone, [run_ids[0], run_ids[1]]);
        let left: Vec<i64> = db.read(|c| ids(c, "SELECT id FROM runs ORDER BY id", [])).await.unwrap();
        assert_eq!(left, [run_ids[2], run_ids[3], run_ids[4]]);
        let steps: i64 = db.read(|c| c.query_row("SELECT COUNT(*) FROM steps", [], |r| r.get(0))).await.unwrap();
        assert_eq!(steps, 2);
        assert_eq!(db.count_deliveries().await.unwrap(), 1);
        // No limits: nothing more goes.
        assert!(db.prune(0, 0, 0).await.unwrap().is_empty());
        assert_eq!(db.status_counts().await.unwrap(), [(RunState::Queued, 1), (RunState::Success, 2)]);
    }
}
