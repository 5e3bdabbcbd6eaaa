//! The server's database: deliveries, runs and their steps, agents, schedules, the outbox.
//!
//! Two backends, one schema and one set of queries: the embedded SQLite file in the data
//! directory (the default, one server), or PostgreSQL (`--database postgres://...`), which
//! several servers share. One writer thread owns the write connection and commits in
//! groups: every write waits for the commit that contains it (so a delivery is stored
//! before its 2xx answer), and concurrent deliveries share one commit. Reads use their own
//! connection, on their own thread. With PostgreSQL a third connection LISTENs: another
//! server's commit that queued a run, freed a job or heard from an agent wakes this one
//! ([`Db::wakes`]).
//!
//! # Writing a query
//!
//! Every query is a method of [`Db`] that runs a closure on the writer (`self.write(|t|
//! ...)`, in the next group commit, in a savepoint of its own) or the reader
//! (`self.read(|c| ...)`). The closure gets a [`Conn`] whatever the backend:
//!
//! ```ignore
//! pub async fn rename(&self, id: i64, name: String) -> Result<bool, DbError> {
//!     self.write(move |t| Ok(t.execute("UPDATE things SET name = ?2 WHERE id = ?1", params![id, name])? == 1))
//!         .await
//! }
//! let rows = c.query_map("SELECT id, name FROM things WHERE n > ?1 ORDER BY id", params![n], |r| {
//!     Ok((r.get::<i64>(0)?, r.get::<Option<String>>(1)?))
//! })?;
//! let one: Option<i64> = c.query_row("SELECT id FROM things WHERE name = ?1", params![name], |r| r.get(0)).optional()?;
//! let id: i64 = t.query_row("INSERT INTO things (name) VALUES (?1) RETURNING id", params![name], |r| r.get(0))?;
//! ```
//!
//! The rules that keep one text right for both:
//! - Placeholders are `?1`, `?2`, ... (rewritten to `$1` for PostgreSQL); each is used where
//!   PostgreSQL can tell its type (a column it is compared with or stored in), at its first
//!   use: `(repo = ?2 OR ?2 IS NULL)`, not `(?2 IS NULL OR repo = ?2)`.
//! - Integers and booleans are `INTEGER` in the schema text ([`SCHEMA`], [`COLUMNS`]): 64-bit
//!   on both (PostgreSQL's DDL says BIGINT; booleans are 0 and 1); `REAL`, `BLOB`,
//!   `INTEGER PRIMARY KEY AUTOINCREMENT` are said in PostgreSQL's words for it ([`sql::ddl`]).
//! - Portable SQL only: `INSERT ... ON CONFLICT (...) DO NOTHING / DO UPDATE SET x =
//!   excluded.x` (not `INSERT OR IGNORE`), `RETURNING id` (not `last_insert_rowid`),
//!   `IS NOT DISTINCT FROM` (not `IS` between values), `CASE` (not the two-argument `MAX`),
//!   no `json_each`, no `LIMIT -1`. What only one backend has goes behind
//!   [`Conn::is_postgres`] or [`Conn::with_sqlite`].
//! - A row that one of several servers takes (a queued run, a job) is selected with
//!   `... FOR UPDATE SKIP LOCKED` (dropped on SQLite, whose single writer claims alone),
//!   and the update re-checks what made it free (`WHERE id = ?1 AND status = 'queued'`).
//! - A commit that another server should act on promptly calls `t.notify("what")`
//!   (PostgreSQL NOTIFY at commit; see [`Db::wakes`] for the words).
//! - In `ON CONFLICT ... DO UPDATE`, qualify the table's own columns (`steps.stage`, next
//!   to `excluded.stage`): PostgreSQL finds a bare one ambiguous.
//! - A new table or column goes into [`SCHEMA`] / [`COLUMNS`] (created if missing on both),
//!   or, for what cannot be said so, into a step of [`migrate`] under a new
//!   [`SCHEMA_VERSION`].
//! - Test it on both: the tests here run each scenario on `backends()` (a SQLite file and a
//!   throwaway PostgreSQL, [`throwaway`]).
//!
//! Porting a query written for rusqlite: `&Transaction` / `&Connection` become `&Conn`,
//! `rusqlite::Result<T>` becomes `sql::Result<T>`, `[]` becomes `params![]`,
//! `r.get::<_, T>(i)` becomes `r.get::<T>(i)`, `prepare(..)?.query_map(..)?.collect()`
//! becomes `c.query_map(sql, params![..], |r| ..)`, `INSERT OR IGNORE` becomes `ON CONFLICT
//! DO NOTHING`, `t.last_insert_rowid()` becomes `RETURNING id` read with `query_row`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

pub use super::status::{RunState, StepState};
use tokio::sync::{broadcast, oneshot};

pub mod sql;
pub mod throwaway;

pub use sql::{Backend, Row};
use sql::{Conn, OptionalExt, SqlError, params};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sql(#[from] SqlError),
    #[error("database: the writer thread is gone")]
    WriterGone,
    #[error("database: {0}")]
    Io(String),
}

type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;
/// A write: given the connection (or why there is none), it runs and says how to answer.
type Job = Box<dyn FnOnce(Result<&Conn, String>) -> Reply + Send>;
type ReadJob = Box<dyn FnOnce(Result<&Conn, String>) + Send>;

/// The key of the advisory lock held by the server that sends the outbox.
const OUTBOX_LOCK: i64 = 0x6f72_6368_6f75_7462;

/// Rows written per commit at most.
const BATCH: usize = 512;

/// The schema's version: a database made by a newer orch is refused. Version 1 is
/// [`SCHEMA`] with [`COLUMNS`].
pub const SCHEMA_VERSION: i64 = 1;
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
CREATE TABLE IF NOT EXISTS deployments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL,
    repo TEXT NOT NULL,
    step TEXT NOT NULL,
    environment TEXT NOT NULL,
    url TEXT,
    sha TEXT NOT NULL,
    git_ref TEXT,
    event TEXT NOT NULL,
    triggered_by TEXT,
    approved_by TEXT,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    status TEXT NOT NULL,
    is_rollback INTEGER NOT NULL DEFAULT 0,
    github_id INTEGER,
    commit_at INTEGER
);
CREATE INDEX IF NOT EXISTS deployments_by_env ON deployments(repo, environment, id);
CREATE TABLE IF NOT EXISTS incidents (
    repo TEXT NOT NULL,
    number INTEGER NOT NULL,
    title TEXT NOT NULL,
    url TEXT,
    opened_at INTEGER NOT NULL,
    closed_at INTEGER,
    deployment_id INTEGER,
    PRIMARY KEY (repo, number)
);
CREATE INDEX IF NOT EXISTS deployments_by_run ON deployments(run_id);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
";

/// Columns added after the first release, `(table, column, definition)`: a database from
/// before gets them when it is opened.
const COLUMNS: &[(&str, &str, &str)] = &[
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
    // Being fetched and planned by a server now.
    ("runs", "planning", "INTEGER NOT NULL DEFAULT 0"),
    // The `on.schedule` name of a schedule run.
    ("runs", "schedule", "TEXT"),
    // The server that records its events (writes its logs, runs it or leased it to an
    // agent); NULL: the only one (SQLite), or a run from before.
    ("runs", "server", "TEXT"),
    // A `deploy` run: its environment, and that it is an explicit redeploy.
    ("runs", "environment", "TEXT"),
    ("runs", "redeploy", "INTEGER NOT NULL DEFAULT 0"),
];

/// Indexes on [`COLUMNS`].
const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS deliveries_by_time ON deliveries(received_at);
-- One body is one delivery, whatever `X-GitHub-Delivery` says (it is not signed).
CREATE UNIQUE INDEX IF NOT EXISTS deliveries_by_digest ON deliveries(digest);
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
CREATE TABLE IF NOT EXISTS servers (
    name TEXT PRIMARY KEY,
    seen_at INTEGER NOT NULL
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
    /// The environment a `deploy` run deploys to (`POST /api/environments/{env}/deploy`).
    pub environment: Option<String>,
    /// An explicit deployment of a commit (a rollback, `orch deploy`), not a pipeline's run.
    pub redeploy: bool,
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

/// One deployment: a step with an `environment` in a run (a matrix step is one).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeploymentRow {
    pub id: i64,
    pub run: i64,
    pub repo: String,
    /// The step's key in the file (a matrix step's base name).
    pub step: String,
    pub environment: String,
    pub url: Option<String>,
    pub sha: String,
    /// The run's tag or branch.
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    /// The run's event (push, tag, manual, schedule, deploy, ...).
    pub event: String,
    /// Who triggered the run (the pusher, the author).
    pub triggered_by: Option<String>,
    /// Who approved it (filled once approval gates exist).
    pub approved_by: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// in_progress, success, failure, cancelled or error.
    pub status: String,
    /// A commit older than the live one (orch heard of it first).
    pub rollback: bool,
    /// The deployment GitHub made of it, once made.
    pub github_id: Option<i64>,
}

/// An environment of a repository: what is live (its last successful deployment) and its
/// last deployment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnvironmentRow {
    pub repo: String,
    pub environment: String,
    pub live: Option<DeploymentRow>,
    pub last: DeploymentRow,
}

/// What `GET /api/deployments` filters by.
#[derive(Debug, Clone, Default)]
pub struct DeploymentFilter {
    pub repo: Option<String>,
    pub environment: Option<String>,
    pub run: Option<i64>,
    pub limit: i64,
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

/// Where the database is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The embedded SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL URL, `postgres://user[:password]@host:port/db` (no TLS).
    Postgres(String),
}

impl Location {
    /// `postgres://...` or `postgresql://...` is PostgreSQL; anything else is a SQLite file.
    pub fn parse(s: &str) -> Location {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Location::Postgres(s.to_string())
        } else {
            Location::Sqlite(PathBuf::from(s))
        }
    }

    /// Where, for a log line: a URL without its password.
    pub fn display(&self) -> String {
        match self {
            Location::Sqlite(p) => p.display().to_string(),
            Location::Postgres(u) => match url::Url::parse(u) {
                Ok(mut u) => {
                    if u.password().is_some() {
                        let _ = u.set_password(Some("***"));
                    }
                    u.to_string()
                }
                Err(_) => "postgres://(unreadable URL)".into(),
            },
        }
    }
}

#[derive(Clone)]
pub struct Db {
    writer: std::sync::mpsc::SyncSender<Job>,
    reader: std::sync::mpsc::SyncSender<ReadJob>,
    backend: Backend,
    wakes: broadcast::Sender<String>,
    /// This server's name among several (PostgreSQL); `None`: the only one.
    server: Option<String>,
    /// Held by every clone: the listener stops once the last is gone.
    _alive: Arc<()>,
}

fn open_sqlite(path: &Path) -> Result<rusqlite::Connection, SqlError> {
    let c = rusqlite::Connection::open(path)?;
    c.busy_timeout(std::time::Duration::from_secs(10))?;
    // Before anything writes the file's header (WAL does): later, only a VACUUM changes it.
    c.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit is on disk when it returns; the group commit keeps this cheap.
    c.pragma_update(None, "synchronous", "FULL")?;
    Ok(c)
}

/// Makes or brings the schema up to [`SCHEMA_VERSION`], in one transaction (on
/// PostgreSQL under a lock, so servers starting together migrate once).
fn migrate(c: &Conn) -> Result<(), SqlError> {
    let backend = c.backend();
    c.begin()?;
    let done = (|| {
        if c.is_postgres() {
            c.execute_batch("SELECT pg_advisory_xact_lock(8028075640)")?;
        }
        c.execute_batch(&sql::ddl(SCHEMA, backend))?;
        c.execute_batch(&sql::ddl(GATES_SCHEMA, backend))?;
        c.execute_batch(&sql::ddl("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)", backend))?;
        let version: Option<i64> = c.query_row("SELECT MAX(version) FROM schema_version", params![], |r| r.get(0))?;
        if let Some(v) = version
            && v > SCHEMA_VERSION
        {
            return Err(SqlError::Type(
                0,
                format!("the database has schema version {v}, made by a newer orch (this one knows {SCHEMA_VERSION})"),
            ));
        }
        // Columns added after the first release: a SQLite file from before gets them here
        // (what schema version 1 is on both).
        for (table, col, def) in COLUMNS {
            match backend {
                Backend::Postgres => c.execute_batch(&format!(
                    "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {col} {}",
                    sql::ddl(def, backend)
                ))?,
                Backend::Sqlite => {
                    let has = !c
                        .query(&format!("SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"), params![col])?
                        .is_empty();
                    if !has {
                        c.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {col} {def}"))?;
                    }
                }
            }
        }
        c.execute_batch(INDEXES)?;
        if version.is_none() {
            c.execute("INSERT INTO schema_version (version) VALUES (?1)", params![SCHEMA_VERSION])?;
        }
        // Later versions: `if version < Some(2) { ... }` here, then the stored version moved.
        Ok(())
    })();
    match done {
        Ok(()) => c.commit(),
        Err(e) => {
            let _ = c.rollback();
            Err(e)
        }
    }
}

/// What `orch doctor` says of the database at `at`, changing nothing: a SQLite file is
/// named; a PostgreSQL database is connected to and asked its version and the schema's.
pub fn probe(at: &Location) -> Result<String, DbError> {
    let Location::Postgres(url) = at else {
        return Ok(format!("SQLite file {}", at.display()));
    };
    let url = url.clone();
    let shown = at.display();
    // The client runs its own runtime: on a thread of its own.
    std::thread::spawn(move || -> Result<String, DbError> {
        let c = Conn::postgres(&url)?;
        let version: String = c.query_row("SHOW server_version", params![], |r| r.get(0))?;
        let made: bool = c.query_row("SELECT to_regclass('schema_version') IS NOT NULL", params![], |r| r.get(0))?;
        let schema = if made {
            let v: Option<i64> = c.query_row("SELECT MAX(version) FROM schema_version", params![], |r| r.get(0))?;
            format!("schema version {}", v.unwrap_or(0))
        } else {
            "no schema yet (the first server makes it)".into()
        };
        Ok(format!("PostgreSQL {version} answers at {shown}, {schema}"))
    })
    .join()
    .map_err(|_| DbError::Io("the database check panicked".into()))?
}

/// Connects: a SQLite file or a PostgreSQL URL.
type Connect = Arc<dyn Fn() -> Result<Conn, SqlError> + Send + Sync>;

impl Db {
    /// Opens (creating if needed) the SQLite database at `path`.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        Db::open_at(&Location::Sqlite(path.to_path_buf()))
    }

    /// Opens the database at `at`, making or migrating its schema.
    pub fn open_at(at: &Location) -> Result<Db, DbError> {
        let (connect, backend): (Connect, Backend) = match at {
            Location::Sqlite(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| DbError::Io(format!("{}: {e}", dir.display())))?;
                }
                let path = path.clone();
                (Arc::new(move || open_sqlite(&path).map(Conn::sqlite)), Backend::Sqlite)
            }
            Location::Postgres(url) => {
                let url = url.clone();
                (Arc::new(move || Conn::postgres(&url)), Backend::Postgres)
            }
        };
        let first = connect.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(4096);
        let (opened_tx, opened) = std::sync::mpsc::channel::<Result<(), DbError>>();
        let reconnect = connect.clone();
        std::thread::Builder::new()
            .name("orch-db-writer".into())
            .spawn(move || {
                let made = first().and_then(|w| {
                    // Pages freed by retention go back to the file system (`prune` runs an
                    // incremental vacuum): webhook bodies are up to 25 MB each. A database
                    // made before this setting existed is converted once, by a VACUUM.
                    w.with_sqlite(|c| {
                        let auto_vacuum: i64 = c.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
                        if auto_vacuum != 2 {
                            tracing::info!("database: turning on incremental vacuum (once)");
                            c.execute_batch("VACUUM")?;
                        }
                        Ok(())
                    })?;
                    migrate(&w)?;
                    Ok(w)
                });
                match made {
                    Ok(w) => {
                        let _ = opened_tx.send(Ok(()));
                        write_loop(w, rx, reconnect);
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(DbError::Sql(e)));
                    }
                }
            })
            .map_err(|e| DbError::Io(e.to_string()))?;
        opened.recv().map_err(|_| DbError::WriterGone)??;
        let reader = start_reader(connect)?;
        let alive = Arc::new(());
        let (wakes, _) = broadcast::channel(64);
        if let Location::Postgres(url) = at {
            let (url, wakes, alive) = (url.clone(), wakes.clone(), Arc::downgrade(&alive));
            std::thread::Builder::new()
                .name("orch-db-listen".into())
                .spawn(move || listen(&url, &wakes, &alive))
                .map_err(|e| DbError::Io(e.to_string()))?;
        }
        Ok(Db { writer: tx, reader, backend, wakes, server: None, _alive: alive })
    }

    /// This handle as server `name`'s, one of several on one database: the runs it plans,
    /// executes or leases are marked its own, and only those are queued again when it
    /// starts after a stop ([`Db::requeue_interrupted`]).
    pub fn for_server(mut self, name: String) -> Db {
        self.server = Some(name);
        self
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// What other servers' commits announce (PostgreSQL's NOTIFY; nothing on SQLite):
    /// `queued` (a run to plan), `ready` (a planned run to dispatch), `agent` (an agent
    /// asked for work), `owed` (an update for GitHub), `schedules` (a repository's
    /// schedules changed), `all` (the listener reconnected: anything may have happened).
    pub fn wakes(&self) -> broadcast::Receiver<String> {
        self.wakes.subscribe()
    }

    /// Runs `f` in the next group commit, in a savepoint of its own (an error undoes what
    /// it did and nothing else); returns once that commit is durable.
    pub async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Conn) -> Result<R, SqlError> + Send + 'static,
    ) -> Result<R, DbError> {
        let (tx, rx) = oneshot::channel::<Result<R, DbError>>();
        let job: Job = Box::new(move |c| {
            let r = match c {
                Ok(c) => c.savepoint(f).map_err(DbError::Sql),
                Err(e) => Err(DbError::Io(e)),
            };
            Box::new(move |committed| {
                let out = match (r, committed) {
                    (Ok(v), Ok(())) => Ok(v),
                    (Err(e), _) => Err(e),
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
        f: impl FnOnce(&Conn) -> Result<R, SqlError> + Send + 'static,
    ) -> Result<R, DbError> {
        let (tx, rx) = oneshot::channel::<Result<R, DbError>>();
        let job: ReadJob = Box::new(move |c| {
            let _ = tx.send(match c {
                Ok(c) => f(c).map_err(DbError::Sql),
                Err(e) => Err(DbError::Io(e)),
            });
        });
        match self.reader.try_send(job) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Full(job)) => {
                let reader = self.reader.clone();
                tokio::task::spawn_blocking(move || reader.send(job))
                    .await
                    .map_err(|_| DbError::WriterGone)?
                    .map_err(|_| DbError::WriterGone)?;
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return Err(DbError::WriterGone),
        }
        rx.await.map_err(|_| DbError::WriterGone)?
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
                "INSERT INTO deliveries (id, event, action, repo, received_at, headers, body, outcome, digest)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT DO NOTHING",
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
        let server = self.server.clone();
        self.write(move |t| {
            let id: Option<i64> = t
                .query_row(
                    "SELECT id FROM runs WHERE status = 'queued' AND job IS NULL AND planning = 0 ORDER BY id LIMIT 1
                     FOR UPDATE SKIP LOCKED",
                    params![],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(id) = id else { return Ok(None) };
            t.execute(
                "UPDATE runs SET planning = 1, started_at = COALESCE(started_at, ?2), server = ?3 WHERE id = ?1",
                params![id, now(), server],
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
            t.notify("ready");
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
        let server = self.server.clone();
        self.write(move |t| {
            // Every planned run, oldest first (the planner keeps those an executor fits
            // few; those none fits must not hide the others).
            let rows = t.query_map(
                "SELECT id, labels FROM runs WHERE status = 'queued' AND job IS NOT NULL ORDER BY id",
                params![],
                |r| Ok((r.get::<i64>(0)?, r.get::<Option<String>>(1)?)),
            )?;
            let fitting = rows.into_iter().filter(|(_, labels)| {
                let need: Vec<String> =
                    labels.as_deref().and_then(|l| serde_json::from_str(l).ok()).unwrap_or_default();
                crate::job::fits(&need, &have)
            });
            // The first that no other server is taking now (and still free once locked).
            let mut found = None;
            for (id, _) in fitting {
                found = t
                    .query_row(
                        "SELECT id, job FROM runs WHERE id = ?1 AND status = 'queued' AND job IS NOT NULL
                         FOR UPDATE SKIP LOCKED",
                        params![id],
                        |r| Ok((r.get::<i64>(0)?, r.get::<String>(1)?)),
                    )
                    .optional()?;
                if found.is_some() {
                    break;
                }
            }
            let Some((id, job)) = found else { return Ok(None) };
            t.execute(
                "UPDATE runs SET status = 'running', attempts = attempts + 1, agent = ?2, lease_until = ?3,
                    dispatched_at = ?4, started_at = ?4, reason = NULL, server = ?5 WHERE id = ?1",
                params![id, agent, lease_until, now(), server],
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
                "UPDATE runs SET lease_until = CASE WHEN lease_until > ?4 THEN lease_until ELSE ?4 END
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
                    reason = ?4 WHERE id = ?1 AND attempts = ?2 AND agent IS NOT DISTINCT FROM ?3 AND status = 'running'",
                params![id, attempt, agent, reason],
            )?;
            t.notify("queued");
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
            t.notify("ready");
            Ok(n == 1)
        })
        .await
    }

    /// Tells the other servers this one is alive: its row in `servers`, timed by the
    /// database's clock (the servers' clocks may differ). Several servers on PostgreSQL
    /// only; nothing for the only server.
    pub async fn heartbeat(&self) -> Result<(), DbError> {
        let Some(name) = self.server.clone().filter(|_| self.backend == Backend::Postgres) else { return Ok(()) };
        self.write(move |t| {
            t.execute(
                &format!(
                    "INSERT INTO servers (name, seen_at) VALUES (?1, {PG_NOW_MS})
                     ON CONFLICT (name) DO UPDATE SET seen_at = excluded.seen_at"
                ),
                params![name],
            )?;
            Ok(())
        })
        .await
    }

    /// Takes over the runs of servers not heard from for `silence_ms` (by the database's
    /// clock): each run such a server was executing itself ends as an error and is queued
    /// again as a new run (`rerun_of` it), so whatever the silent server still writes goes
    /// to the old run, which stays ended; their environment locks are free once they do not
    /// run; what they owe GitHub is stored in the same commit. Runs it was planning are
    /// planned again. Agents' runs are left to their leases. A silent server stops its own
    /// runs well before (see `peers`). Returns (the ended run, its new run's id).
    pub async fn take_over_silent(
        &self,
        silence_ms: i64,
        owe_ended: Option<OweEnded>,
        owe_queued: Option<OweEnded>,
    ) -> Result<Vec<(Run, i64)>, DbError> {
        let Some(me) = self.server.clone().filter(|_| self.backend == Backend::Postgres) else {
            return Ok(Vec::new());
        };
        self.write(move |t| {
            let silent =
                format!("server IN (SELECT name FROM servers WHERE seen_at < {PG_NOW_MS} - ?1 AND name <> ?2)");
            t.execute(
                &format!("UPDATE runs SET planning = 0 WHERE planning = 1 AND status = 'queued' AND {silent}"),
                params![silence_ms, me],
            )?;
            // Another server taking over at the same time skips what this one locked.
            let abandoned = t.query_map(
                &format!(
                    "SELECT id, server FROM runs WHERE status = 'running' AND agent IS NULL AND {silent}
                     FOR UPDATE SKIP LOCKED"
                ),
                params![silence_ms, me],
                |r| Ok((r.get::<i64>(0)?, r.get::<String>(1)?)),
            )?;
            let (mut ended, mut queued, mut taken) = (Vec::new(), Vec::new(), Vec::new());
            for (id, server) in abandoned {
                let Some(old) = get_run(t, id)? else { continue };
                let again = insert_run(t, None, &old.spec)?;
                t.execute("UPDATE runs SET rerun_of = ?2 WHERE id = ?1", params![again, id])?;
                t.execute(
                    "UPDATE runs SET status = 'error', reason = ?2, finished_at = ?3, planning = 0
                     WHERE id = ?1 AND status = 'running'",
                    params![id, format!("its server `{server}` stopped answering; run {again} runs it again"), now()],
                )?;
                queued.extend(get_run(t, again)?);
                if let Some(run) = get_run(t, id)? {
                    ended.push(run.clone());
                    taken.push((run, again));
                }
            }
            // The old run's end, then the new run's queueing, in this commit.
            owe_for(t, owe_ended, &ended)?;
            owe_for(t, owe_queued, &queued)?;
            if !taken.is_empty() {
                t.notify("queued");
                t.notify("gates");
            }
            Ok(taken)
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
            // Another server reaping at the same time skips what this one locked.
            let expired = t.query_map(
                "SELECT id, agent, lost FROM runs WHERE status = 'running' AND agent IS NOT NULL AND lease_until < ?1
                 FOR UPDATE SKIP LOCKED",
                params![now_ms],
                |r| Ok((r.get::<i64>(0)?, r.get::<String>(1)?, r.get::<i64>(2)?)),
            )?;
            let (mut again, mut ended) = (Vec::new(), Vec::new());
            for (id, agent, lost) in expired {
                if lost < max_lost {
                    t.execute(
                        "UPDATE runs SET status = 'queued', agent = NULL, lease_until = NULL, lost = lost + 1,
                            reason = ?2 WHERE id = ?1",
                        params![id, format!("queued again: agent `{agent}` was lost")],
                    )?;
                    again.extend(get_run(t, id)?);
                    t.notify("ready");
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
                "INSERT INTO agents (name, token_hash, created_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
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
            // Its room may let another server's planner plan more.
            t.notify("agent");
            Ok(())
        })
        .await
    }

    /// Every agent, by name.
    pub async fn agents(&self) -> Result<Vec<AgentRow>, DbError> {
        self.read(|c| {
            c.query_map(
                "SELECT a.name, a.created_at, a.revoked_at, a.labels, a.capacity, a.last_seen, a.version,
                    (SELECT COUNT(*) FROM runs r WHERE r.agent = a.name AND r.status = 'running')
                 FROM agents a ORDER BY a.name",
                params![],
                |r| {
                    Ok(AgentRow {
                        name: r.get(0)?,
                        created_at: r.get(1)?,
                        revoked_at: r.get(2)?,
                        labels: r
                            .get::<Option<String>>(3)?
                            .and_then(|l| serde_json::from_str(&l).ok())
                            .unwrap_or_default(),
                        capacity: r.get(4)?,
                        last_seen: r.get(5)?,
                        version: r.get(6)?,
                        running: r.get(7)?,
                    })
                },
            )
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

    /// Queues a run again (the server stopped while it ran), unless it ended meanwhile
    /// (another server took it over).
    pub async fn requeue(&self, id: i64, reason: String) -> Result<(), DbError> {
        self.write(move |t| {
            // Planned again at the next start (its checkout may be gone by then).
            t.execute(
                "UPDATE runs SET status = 'queued', reason = ?2, job = NULL, labels = NULL, agent = NULL,
                    lease_until = NULL WHERE id = ?1 AND status IN ('queued', 'running')",
                params![id, reason],
            )?;
            t.notify("queued");
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
            let running =
                ids(t, "SELECT id FROM runs WHERE concurrency_key = ?1 AND status = 'running'", params![key])?;
            let queued = ids(t, "SELECT id FROM runs WHERE concurrency_key = ?1 AND status = 'queued'", params![key])?;
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
        let server = self.server.clone();
        self.write(move |t| {
            // Only this server's: with several, the others' runs are theirs (NULL: the only
            // server).
            const MINE: &str = "(server = ?1 OR ?1 IS NULL)";
            t.execute(&format!("UPDATE runs SET planning = 0 WHERE planning = 1 AND {MINE}"), params![server])?;
            let interrupted =
                ids(t, &format!("SELECT id FROM runs WHERE status = 'running' AND {MINE}"), params![server])?;
            // An agent's run too: its events went to this server's recorder, which is gone;
            // the next attempt's number fences the agent off (its next report is refused).
            t.execute(
                "UPDATE runs SET status = 'queued', agent = NULL, lease_until = NULL, job = NULL, labels = NULL,
                    reason = 'queued again: the server stopped while it ran'
                 WHERE status = 'running' AND (server = ?1 OR ?1 IS NULL)",
                params![server],
            )?;
            t.notify("queued");
            Ok(interrupted)
        })
        .await
    }

    /// Stores an update owed to GitHub (the outbox), durably; its id orders it.
    pub async fn owe(&self, body: String) -> Result<(), DbError> {
        self.write(move |t| insert_owed(t, body)).await
    }

    /// Takes the right to send the outbox: with several servers on PostgreSQL one sends at
    /// a time, in order (a session lock of the writer's connection, let go by
    /// [`Db::outbox_unlock`] or when that connection ends). False: another server sends now.
    /// Always true on SQLite.
    pub async fn outbox_lock(&self) -> Result<bool, DbError> {
        if self.backend == Backend::Sqlite {
            return Ok(true);
        }
        self.write(|t| t.query_row("SELECT pg_try_advisory_lock(?1)", params![OUTBOX_LOCK], |r| r.get::<bool>(0))).await
    }

    /// Tells the other servers `what` (PostgreSQL's NOTIFY; nothing on SQLite).
    pub async fn announce(&self, what: String) -> Result<(), DbError> {
        if self.backend == Backend::Sqlite {
            return Ok(());
        }
        self.write(move |t| t.query_row("SELECT pg_notify(?1, ?2)", params![sql::CHANNEL, what], |_| Ok(()))).await
    }

    /// Lets go of [`Db::outbox_lock`].
    pub async fn outbox_unlock(&self) -> Result<(), DbError> {
        if self.backend == Backend::Sqlite {
            return Ok(());
        }
        self.write(|t| t.query_row("SELECT pg_advisory_unlock(?1)", params![OUTBOX_LOCK], |_| Ok(()))).await
    }

    /// The oldest updates owed, at most `limit`, in order: id, body, when stored.
    pub async fn owed(&self, limit: i64) -> Result<Vec<(i64, String, i64)>, DbError> {
        self.read(move |c| {
            c.query_map("SELECT id, body, created_at FROM outbox ORDER BY id LIMIT ?1", params![limit], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
        })
        .await
    }

    /// An owed update is done with (delivered, or given up), in one commit with what its
    /// sending learnt: the check runs it created (`(run, check run)`), the deployments
    /// GitHub made (`(deployment, GitHub's id)`), and why it was given
    /// up (`(run, reason)`), shown on the run.
    pub async fn paid(
        &self,
        id: i64,
        created: Vec<(i64, u64)>,
        deployments: Vec<(i64, u64)>,
        given_up: Option<(i64, String)>,
    ) -> Result<(), DbError> {
        self.write(move |t| {
            t.execute("DELETE FROM outbox WHERE id = ?1", params![id])?;
            record_check_runs(t, &created)?;
            record_deployments_made(t, &deployments)?;
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
            c.query_row("SELECT check_run_id FROM runs WHERE id = ?1", params![run], |r| r.get::<Option<i64>>(0))
                .optional()
                .map(|o| o.flatten().map(|n| n as u64))
        })
        .await
    }

    pub async fn count_owed(&self) -> Result<i64, DbError> {
        self.read(|c| c.query_row("SELECT COUNT(*) FROM outbox", params![], |r| r.get(0))).await
    }

    pub async fn upsert_step(&self, run_id: i64, s: StepRow) -> Result<(), DbError> {
        self.write(move |t| {
            t.execute(
                "INSERT INTO steps (run_id, name, stage, status, exit_code, attempts, started, duration, message)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (run_id, name) DO UPDATE SET stage = COALESCE(excluded.stage, steps.stage),
                   status = excluded.status, exit_code = excluded.exit_code, attempts = excluded.attempts,
                   started = COALESCE(excluded.started, steps.started), duration = excluded.duration,
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
            c.query_map(
                "SELECT name, stage, status, exit_code, attempts, started, duration, message
                 FROM steps WHERE run_id = ?1 ORDER BY COALESCE(started, 1e18), name",
                params![run_id],
                |r| {
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
                },
            )
        })
        .await
    }

    /// Runs, newest first.
    pub async fn runs(&self, limit: i64, before: Option<i64>) -> Result<Vec<Run>, DbError> {
        self.read(move |c| {
            c.query_map(
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id < ?1 ORDER BY id DESC LIMIT ?2"),
                params![before.unwrap_or(i64::MAX), limit],
                row_to_run,
            )
        })
        .await
    }

    /// Runs, newest first, filtered; `before` is the cursor (an id).
    pub async fn runs_where(&self, f: RunFilter) -> Result<Vec<Run>, DbError> {
        self.read(move |c| {
            c.query_map(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE id < ?1
                       AND (repo = ?2 OR ?2 IS NULL) AND (branch = ?3 OR ?3 IS NULL) AND (status = ?4 OR ?4 IS NULL)
                     ORDER BY id DESC LIMIT ?5"
                ),
                params![f.before.unwrap_or(i64::MAX), f.repo, f.branch, f.status, f.limit],
                row_to_run,
            )
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
            c.query_map("SELECT status, COUNT(*) FROM runs GROUP BY status ORDER BY status", params![], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
        })
        .await
    }

    /// Seconds each run waited in the queue.
    pub async fn queue_waits(&self) -> Result<Vec<f64>, DbError> {
        self.read(|c| {
            // Until an executor took it, or until it ended without one (planning found
            // nothing to run, or a broken file); a run cancelled in the queue never waited
            // to the end.
            c.query_map(
                "SELECT COALESCE(dispatched_at, finished_at) - created_at FROM runs
                 WHERE dispatched_at IS NOT NULL OR (finished_at IS NOT NULL AND status != 'cancelled')",
                params![],
                |r| Ok(r.get::<i64>(0)?.max(0) as f64),
            )
        })
        .await
    }

    /// (status, seconds) of every step that ran to an end.
    pub async fn step_durations(&self) -> Result<Vec<(StepState, f64)>, DbError> {
        self.read(|c| {
            c.query_map(
                "SELECT status, duration FROM steps WHERE duration IS NOT NULL AND status NOT IN ('running', 'skipped')",
                params![],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
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
                doomed.extend(ids(
                    t,
                    &format!("SELECT id FROM runs WHERE {DONE} AND COALESCE(finished_at, created_at) < ?1"),
                    params![now - max_age],
                )?);
            }
            if max_runs > 0 {
                let done = ids(t, &format!("SELECT id FROM runs WHERE {DONE} ORDER BY id DESC"), params![])?;
                doomed.extend(done.into_iter().skip(usize::try_from(max_runs).unwrap_or(usize::MAX)));
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
                // (PostgreSQL's own autovacuum gives its space back for reuse.)
                t.with_sqlite(|c| {
                    let mut st = c.prepare("PRAGMA incremental_vacuum")?;
                    let mut rows = st.query([])?;
                    while rows.next()?.is_some() {}
                    Ok(())
                })?;
            }
            Ok(doomed)
        })
        .await
    }

    /// Runs being planned now (their labels are not known yet).
    pub async fn count_planning(&self) -> Result<i64, DbError> {
        self.read(|c| {
            c.query_row("SELECT COUNT(*) FROM runs WHERE planning = 1 AND status = 'queued'", params![], |r| r.get(0))
        })
        .await
    }

    /// The labels of each planned run that waits for an executor.
    pub async fn ready_labels(&self) -> Result<Vec<Vec<String>>, DbError> {
        self.read(|c| {
            c.query_map("SELECT labels FROM runs WHERE status = 'queued' AND job IS NOT NULL", params![], |r| {
                Ok(r.get::<Option<String>>(0)?.and_then(|l| serde_json::from_str(&l).ok()).unwrap_or_default())
            })
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
            let mut changed = false;
            let had =
                t.query_map("SELECT name FROM schedules WHERE repo = ?1", params![repo], |r| r.get::<String>(0))?;
            for name in had.iter().filter(|n| !set.iter().any(|s| &s.name == *n)) {
                t.execute("DELETE FROM schedules WHERE repo = ?1 AND name = ?2", params![repo, name])?;
                changed = true;
            }
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
            if changed {
                t.notify("schedules");
            }
            Ok(changed)
        })
        .await
    }

    /// Every schedule, by repository and name.
    pub async fn schedules(&self) -> Result<Vec<ScheduleRow>, DbError> {
        self.read(|c| {
            c.query_map(
                &format!("SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY repo, name"),
                params![],
                row_to_schedule,
            )
        })
        .await
    }

    /// The schedules due at `now` (their next time is not after it), earliest first.
    pub async fn due_schedules(&self, now: i64) -> Result<Vec<ScheduleRow>, DbError> {
        self.read(move |c| {
            c.query_map(
                &format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE next_at <= ?1 ORDER BY next_at, id"),
                params![now],
                row_to_schedule,
            )
        })
        .await
    }

    /// The earliest next time of any schedule.
    pub async fn next_schedule_at(&self) -> Result<Option<i64>, DbError> {
        self.read(|c| c.query_row("SELECT MIN(next_at) FROM schedules", params![], |r| r.get(0))).await
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
        self.read(|c| c.query_row("SELECT 1", params![], |r| r.get::<i64>(0))).await.map(|_| ())
    }

    pub async fn count_deliveries(&self) -> Result<i64, DbError> {
        self.read(|c| c.query_row("SELECT COUNT(*) FROM deliveries", params![], |r| r.get(0))).await
    }

    pub async fn count_runs(&self, status: RunState) -> Result<i64, DbError> {
        self.read(move |c| c.query_row("SELECT COUNT(*) FROM runs WHERE status = ?1", params![status], |r| r.get(0)))
            .await
    }
}

fn ids(c: &Conn, sql: &str, args: &[&dyn sql::ToValue]) -> sql::Result<Vec<i64>> {
    c.query_map(sql, args, |r| r.get(0))
}

// ---------------------------------------------------------------------------------------
// Deployments. Plain SQL, one query per function: kept portable on purpose.

const DEPLOYMENT_COLUMNS: &str = "id, run_id, repo, step, environment, url, sha, git_ref, event, triggered_by,
    approved_by, created_at, started_at, finished_at, status, is_rollback, github_id";

fn row_to_deployment(r: &Row) -> sql::Result<DeploymentRow> {
    Ok(DeploymentRow {
        id: r.get(0)?,
        run: r.get(1)?,
        repo: r.get(2)?,
        step: r.get(3)?,
        environment: r.get(4)?,
        url: r.get(5)?,
        sha: r.get(6)?,
        git_ref: r.get(7)?,
        event: r.get(8)?,
        triggered_by: r.get(9)?,
        approved_by: r.get(10)?,
        created_at: r.get(11)?,
        started_at: r.get(12)?,
        finished_at: r.get(13)?,
        status: r.get(14)?,
        rollback: r.get(15)?,
        github_id: r.get(16)?,
    })
}

/// The commit live in `repo`'s `environment` (its last successful deployment's), if any.
fn live_sha(c: &Conn, repo: &str, environment: &str) -> sql::Result<Option<String>> {
    c.query_row(
        "SELECT sha FROM deployments WHERE repo = ?1 AND environment = ?2 AND status = 'success'
         ORDER BY id DESC LIMIT 1",
        params![repo, environment],
        |r| r.get(0),
    )
    .optional()
}

/// PostgreSQL's clock, in Unix milliseconds: one clock for every server's heartbeat.
const PG_NOW_MS: &str = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)";

/// When the commit of the `runs` row in scope happened, as far as orch knows: when orch
/// first heard of it (the push time of its earliest run, else when that run was queued).
/// The one definition for deployments, `/dora`, and the environments' order and live commit:
/// a rollback's run (made now, of an old commit) keeps its commit's old time.
macro_rules! commit_time_of_run {
    () => {
        "(SELECT MIN(COALESCE(o.event_time, o.created_at)) FROM runs o WHERE o.repo = runs.repo AND o.sha = runs.sha)"
    };
}

/// Where the `runs` row in scope stands in an environment's newest-first line: its
/// commit's time; an explicit redeploy (a rollback) when it was asked for, the newest wish.
/// Kept in `env_queue.commit_time`.
macro_rules! queue_time_of_run {
    () => {
        concat!("(CASE WHEN runs.redeploy <> 0 THEN runs.created_at ELSE ", commit_time_of_run!(), " END)")
    };
}

/// Where `sha` of `repo` stands in the order orch heard of commits: the push time of its
/// earliest run (else when that run was queued), then that run's id (pushes with one time).
fn commit_order(c: &Conn, repo: &str, sha: &str) -> sql::Result<Option<(i64, i64)>> {
    c.query_row(
        "SELECT MIN(COALESCE(event_time, created_at)), MIN(id) FROM runs WHERE repo = ?1 AND sha = ?2",
        params![repo, sha],
        |r| Ok(r.get::<Option<i64>>(0)?.zip(r.get::<Option<i64>>(1)?)),
    )
}

/// The run holding `environment`'s lock while running (a lock of a run that is not running
/// is free), with its commit.
fn env_holder(c: &Conn, repo: &str, environment: &str) -> sql::Result<Option<(i64, String)>> {
    c.query_row(
        "SELECT r.id, r.sha FROM env_locks l JOIN runs r ON r.id = l.run_id
         WHERE l.repo = ?1 AND l.environment = ?2 AND r.status = 'running'",
        params![repo, environment],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}

fn insert_deployment(
    t: &Conn,
    run: i64,
    step: &str,
    environment: &str,
    url: Option<&str>,
    rollback: bool,
    approved_by: Option<&str>,
) -> sql::Result<Option<i64>> {
    // The parameters in the select list say their types: PostgreSQL cannot infer them there.
    t.query_row(
        concat!(
            "INSERT INTO deployments (run_id, repo, step, environment, url, sha, git_ref, event, triggered_by,
           created_at, started_at, status, is_rollback, approved_by, commit_at)
         SELECT id, repo, CAST(?2 AS TEXT), CAST(?3 AS TEXT), CAST(?4 AS TEXT), sha, COALESCE(tag, branch), event,
           author, CAST(?5 AS BIGINT), CAST(?5 AS BIGINT), 'in_progress', CAST(?6 AS BIGINT), CAST(?7 AS TEXT), ",
            commit_time_of_run!(),
            " FROM runs WHERE id = ?1
         RETURNING id"
        ),
        params![run, step, environment, url, now(), rollback, approved_by],
        |r| r.get(0),
    )
    .optional()
}

fn run_repo_sha(c: &Conn, run: i64) -> sql::Result<Option<(String, String)>> {
    c.query_row("SELECT repo, sha FROM runs WHERE id = ?1", params![run], |r| Ok((r.get(0)?, r.get(1)?))).optional()
}

fn record_deployments_made(t: &Conn, made: &[(i64, u64)]) -> sql::Result<()> {
    for (deployment, github) in made {
        t.execute("UPDATE deployments SET github_id = ?2 WHERE id = ?1", params![deployment, *github as i64])?;
    }
    Ok(())
}

/// An incident: a GitHub issue with the incident label.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IncidentRow {
    pub repo: String,
    pub number: i64,
    pub title: String,
    pub url: Option<String>,
    pub opened_at: i64,
    pub closed_at: Option<i64>,
    /// The deployment its body names as the cause.
    pub deployment: Option<i64>,
}

/// A deployment as the delivery measures read it.
#[derive(Debug, Clone, PartialEq)]
pub struct DoraDeployment {
    pub id: i64,
    pub environment: String,
    pub sha: String,
    pub status: String,
    pub rollback: bool,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// When orch first heard of the commit (see `dora`).
    pub commit_at: Option<i64>,
}

/// A run as the pipeline health measures read it.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthRun {
    pub id: i64,
    pub repo: String,
    pub status: RunState,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub rerun_of: Option<i64>,
}

/// A step row with its run, for the health measures.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthStep {
    pub run: i64,
    pub name: String,
    pub status: StepState,
    pub attempts: i64,
    pub duration: Option<f64>,
}

impl Db {
    /// Records an issue's state: an incident (kept, with its times and named deployment),
    /// or not one (forgotten, if it was).
    pub async fn record_incident(&self, i: super::webhook::Issue, incident: bool) -> Result<(), DbError> {
        self.write(move |t| {
            t.execute("DELETE FROM incidents WHERE repo = ?1 AND number = ?2", params![i.repo, i.number as i64])?;
            if incident {
                t.execute(
                    "INSERT INTO incidents (repo, number, title, url, opened_at, closed_at, deployment_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![i.repo, i.number as i64, i.title, i.url, i.opened_at, i.closed_at, i.deployment],
                )?;
            }
            Ok(())
        })
        .await
    }

    /// The incidents of `repo` (or of all), oldest first.
    pub async fn incidents(&self, repo: Option<String>) -> Result<Vec<IncidentRow>, DbError> {
        self.read(move |c| {
            c.query_map(
                "SELECT repo, number, title, url, opened_at, closed_at, deployment_id FROM incidents
                 WHERE (repo = ?1 OR ?1 IS NULL) ORDER BY opened_at",
                params![repo],
                |r| {
                    Ok(IncidentRow {
                        repo: r.get(0)?,
                        number: r.get(1)?,
                        title: r.get(2)?,
                        url: r.get(3)?,
                        opened_at: r.get(4)?,
                        closed_at: r.get(5)?,
                        deployment: r.get(6)?,
                    })
                },
            )
        })
        .await
    }

    /// Every deployment of `repo` (or of all) to `environment` (or to any), oldest first.
    pub async fn dora_deployments(
        &self,
        repo: Option<String>,
        environment: Option<String>,
    ) -> Result<Vec<DoraDeployment>, DbError> {
        self.read(move |c| {
            c.query_map(
                "SELECT id, environment, sha, status, is_rollback, started_at, finished_at, commit_at FROM deployments
                 WHERE (repo = ?1 OR ?1 IS NULL) AND (environment = ?2 OR ?2 IS NULL) ORDER BY id",
                params![repo, environment],
                |r| {
                    Ok(DoraDeployment {
                        id: r.get(0)?,
                        environment: r.get(1)?,
                        sha: r.get(2)?,
                        status: r.get(3)?,
                        rollback: r.get(4)?,
                        started_at: r.get(5)?,
                        finished_at: r.get(6)?,
                        commit_at: r.get(7)?,
                    })
                },
            )
        })
        .await
    }

    /// The runs of `repo` (or of all) created since `since`, oldest first.
    pub async fn health_runs(&self, repo: Option<String>, since: i64) -> Result<Vec<HealthRun>, DbError> {
        self.read(move |c| {
            c.query_map(
                "SELECT id, repo, status, started_at, finished_at, rerun_of FROM runs
                 WHERE (repo = ?1 OR ?1 IS NULL) AND created_at >= ?2 ORDER BY id",
                params![repo, since],
                |r| {
                    Ok(HealthRun {
                        id: r.get(0)?,
                        repo: r.get(1)?,
                        status: r.get(2)?,
                        started_at: r.get(3)?,
                        finished_at: r.get(4)?,
                        rerun_of: r.get(5)?,
                    })
                },
            )
        })
        .await
    }

    /// The steps of the runs of `repo` (or of all) created since `since`.
    pub async fn health_steps(&self, repo: Option<String>, since: i64) -> Result<Vec<HealthStep>, DbError> {
        self.read(move |c| {
            c.query_map(
                "SELECT s.run_id, s.name, s.status, s.attempts, s.duration FROM steps s JOIN runs r ON r.id = s.run_id
                 WHERE (r.repo = ?1 OR ?1 IS NULL) AND r.created_at >= ?2 ORDER BY s.run_id",
                params![repo, since],
                |r| {
                    Ok(HealthStep {
                        run: r.get(0)?,
                        name: r.get(1)?,
                        status: r.get(2)?,
                        attempts: r.get(3)?,
                        duration: r.get(4)?,
                    })
                },
            )
        })
        .await
    }

    /// Records that `step` of `run` started deploying to `environment`; its id (`None`: no
    /// such run). A commit older than the live one (orch heard of it first) is a rollback.
    /// `approved_by`: who approved the environment's gate in this run.
    pub async fn start_deployment(
        &self,
        run: i64,
        step: String,
        environment: String,
        url: Option<String>,
        approved_by: Option<String>,
    ) -> Result<Option<i64>, DbError> {
        self.write(move |t| {
            let Some((repo, sha)) = run_repo_sha(t, run)? else { return Ok(None) };
            let rollback = match live_sha(t, &repo, &environment)? {
                Some(live) if live != sha => {
                    let (mine, live) = (commit_order(t, &repo, &sha)?, commit_order(t, &repo, &live)?);
                    mine.zip(live).is_some_and(|(mine, live)| mine < live)
                }
                _ => false,
            };
            insert_deployment(t, run, &step, &environment, url.as_deref(), rollback, approved_by.as_deref())
        })
        .await
    }

    /// Records a deployment's end: success, failure, cancelled or error.
    pub async fn finish_deployment(&self, id: i64, status: &'static str) -> Result<(), DbError> {
        self.write(move |t| {
            t.execute("UPDATE deployments SET status = ?2, finished_at = ?3 WHERE id = ?1", params![id, status, now()])
                .map(|_| ())
        })
        .await
    }

    /// Records the deployments GitHub made (`(deployment, GitHub's id)`) for an update still
    /// owed.
    pub async fn deployments_made(&self, made: Vec<(i64, u64)>) -> Result<(), DbError> {
        self.write(move |t| record_deployments_made(t, &made)).await
    }

    /// The deployment GitHub made of `id`, if it made one.
    pub async fn github_deployment_of(&self, id: i64) -> Result<Option<u64>, DbError> {
        self.read(move |c| {
            c.query_row("SELECT github_id FROM deployments WHERE id = ?1", params![id], |r| r.get::<Option<i64>>(0))
                .optional()
                .map(|o| o.flatten().map(|n| n as u64))
        })
        .await
    }

    /// Deployments, newest first.
    pub async fn deployments(&self, f: DeploymentFilter) -> Result<Vec<DeploymentRow>, DbError> {
        self.read(move |c| {
            c.query_map(
                &format!(
                    "SELECT {DEPLOYMENT_COLUMNS} FROM deployments
                 WHERE (repo = ?1 OR ?1 IS NULL) AND (environment = ?2 OR ?2 IS NULL) AND (run_id = ?3 OR ?3 IS NULL)
                 ORDER BY id DESC LIMIT ?4"
                ),
                params![f.repo, f.environment, f.run, f.limit],
                row_to_deployment,
            )
        })
        .await
    }

    /// What a rollback of `repo`'s `environment` deploys: the last successful deployment
    /// before the live one of another commit; `None` when there is none.
    pub async fn rollback_target(&self, repo: String, environment: String) -> Result<Option<DeploymentRow>, DbError> {
        self.read(move |c| {
            let live: Option<(i64, String)> = c
                .query_row(
                    "SELECT id, sha FROM deployments WHERE repo = ?1 AND environment = ?2 AND status = 'success'
                     ORDER BY id DESC LIMIT 1",
                    params![repo, environment],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((live_id, live_sha)) = live else { return Ok(None) };
            c.query_row(
                &format!(
                    "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE repo = ?1 AND environment = ?2
                     AND status = 'success' AND id < ?3 AND sha <> ?4 ORDER BY id DESC LIMIT 1"
                ),
                params![repo, environment, live_id, live_sha],
                row_to_deployment,
            )
            .optional()
        })
        .await
    }

    /// The newest run of `sha` in `repo` that is not a pull request's, if orch has one.
    pub async fn run_of_commit(&self, repo: String, sha: String) -> Result<Option<Run>, DbError> {
        self.read(move |c| {
            c.query_row(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE repo = ?1 AND sha = ?2 AND pr IS NULL AND fork = 0
                     ORDER BY id DESC LIMIT 1"
                ),
                params![repo, sha],
                row_to_run,
            )
            .optional()
        })
        .await
    }

    /// Every environment deployed to (of `repo`, or of all), with what is live and the last
    /// deployment, by repository and name.
    pub async fn environments(&self, repo: Option<String>) -> Result<Vec<EnvironmentRow>, DbError> {
        self.read(move |c| {
            let pairs: Vec<(String, String)> = c.query_map(
                "SELECT DISTINCT repo, environment FROM deployments WHERE (repo = ?1 OR ?1 IS NULL)
                 ORDER BY repo, environment",
                params![repo],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let mut out = Vec::new();
            for (repo, environment) in pairs {
                let one = |only_success: bool| {
                    c.query_row(
                        &format!(
                            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE repo = ?1 AND environment = ?2
                             AND (status = 'success' OR ?3 = 0) ORDER BY id DESC LIMIT 1"
                        ),
                        params![repo, environment, only_success],
                        row_to_deployment,
                    )
                    .optional()
                };
                let Some(last) = one(false)? else { continue };
                out.push(EnvironmentRow { live: one(true)?, last, repo, environment });
            }
            Ok(out)
        })
        .await
    }
}

fn record_check_runs(t: &Conn, created: &[(i64, u64)]) -> sql::Result<()> {
    for (run, check_run) in created {
        t.execute("UPDATE runs SET check_run_id = ?2 WHERE id = ?1", params![run, *check_run as i64])?;
    }
    Ok(())
}

/// What a run that ended without an executor's verdict (cancelled before it started, its
/// agent lost too often) owes GitHub (an outbox body); also what a run the database queued
/// itself owes ([`Db::take_over_silent`]).
pub type OweEnded = fn(&Run) -> String;

fn owe_for(t: &Conn, owe: Option<OweEnded>, runs: &[Run]) -> sql::Result<()> {
    if let Some(owe) = owe {
        for r in runs {
            insert_owed(t, owe(r))?;
        }
    }
    Ok(())
}

/// Stores an update owed to GitHub; its id orders it.
fn insert_owed(t: &Conn, body: String) -> sql::Result<()> {
    t.execute("INSERT INTO outbox (body, created_at) VALUES (?1, ?2)", params![body, now()])?;
    // The server that sends now may be another.
    t.notify("owed");
    Ok(())
}

fn insert_run(t: &Conn, delivery: Option<&str>, r: &NewRun) -> sql::Result<i64> {
    let changed = r.changed.as_ref().map(|c| serde_json::to_string(c).unwrap_or_default());
    // Another server's planner may take it.
    t.notify("queued");
    t.query_row(
        "INSERT INTO runs (delivery_id, repo, clone_url, event, branch, base_branch, tag, sha, pr, fork, changed,
           installation_id, author, title, status, created_at, concurrency_key, default_branch, event_time, schedule,
           environment, redeploy)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, 'queued', ?15, ?16, ?17, ?18, ?19,
           ?20, ?21)
         RETURNING id",
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
            r.environment,
            r.redeploy,
        ],
        |r| r.get(0),
    )
}

/// Cancels the queued runs with `key` older than `newer` (whose event is not newer than
/// `time`); returns the running ones and the cancelled ones. When a run of the key already
/// has a newer event (deliveries arrive out of order, or an old body is replayed), `newer`
/// is the one cancelled: it is the last of the returned cancelled runs.
fn supersede_older(t: &Conn, key: &str, newer: i64, time: Option<i64>) -> sql::Result<(Vec<i64>, Vec<Run>)> {
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
    let older = "concurrency_key = ?1 AND id < ?2 AND (event_time <= ?3 OR ?3 IS NULL OR event_time IS NULL)";
    let with_status = |status: &str| -> sql::Result<Vec<i64>> {
        ids(t, &format!("SELECT id FROM runs WHERE {older} AND status = ?4"), params![key, newer, time, status])
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

fn runs_by_id(c: &Conn, ids: &[i64]) -> sql::Result<Vec<Run>> {
    ids.iter().filter_map(|&id| get_run(c, id).transpose()).collect()
}

const RUN_COLUMNS: &str = "id, delivery_id, repo, clone_url, event, branch, base_branch, tag, sha, pr, fork, changed,
    installation_id, author, title, status, reason, created_at, started_at, finished_at, attempts, check_run_id,
    concurrency_key, default_branch, rerun_of, failed_only, event_time, report_error, agent, labels, lost, dispatched_at, schedule,
    environment, redeploy";

fn row_to_run(r: &Row) -> sql::Result<Run> {
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
            pr: r.get::<Option<i64>>(9)?.map(|n| n as u64),
            fork: r.get(10)?,
            changed: changed.and_then(|c| serde_json::from_str(&c).ok()),
            installation_id: r.get::<Option<i64>>(12)?.map(|n| n as u64),
            author: r.get(13)?,
            title: r.get(14)?,
            concurrency_key: r.get(22)?,
            default_branch: r.get(23)?,
            event_time: r.get(26)?,
            schedule: r.get(32)?,
            environment: r.get(33)?,
            redeploy: r.get(34)?,
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
        labels: r.get::<Option<String>>(29)?.and_then(|l| serde_json::from_str(&l).ok()),
        lost: r.get(30)?,
        dispatched_at: r.get(31)?,
    })
}

const SCHEDULE_COLUMNS: &str = "id, repo, name, cron, timezone, clone_url, default_branch, installation_id, next_at,
    last_fired_at, last_run, last_error";

fn row_to_schedule(r: &Row) -> sql::Result<ScheduleRow> {
    Ok(ScheduleRow {
        id: r.get(0)?,
        repo: r.get(1)?,
        name: r.get(2)?,
        cron: r.get(3)?,
        timezone: r.get(4)?,
        clone_url: r.get(5)?,
        default_branch: r.get(6)?,
        installation_id: r.get::<Option<i64>>(7)?.map(|n| n as u64),
        next_at: r.get(8)?,
        last_fired_at: r.get(9)?,
        last_run: r.get(10)?,
        last_error: r.get(11)?,
    })
}

fn get_run(c: &Conn, id: i64) -> sql::Result<Option<Run>> {
    c.query_row(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"), params![id], row_to_run).optional()
}

/// A connection that is there: the one given, or (PostgreSQL's was lost) a new one.
fn ensure(conn: &mut Option<Conn>, connect: &Connect) -> Result<(), String> {
    if conn.as_ref().is_some_and(|c| !c.is_closed()) {
        return Ok(());
    }
    match connect() {
        Ok(c) => {
            *conn = Some(c);
            Ok(())
        }
        Err(e) => {
            *conn = None;
            Err(format!("cannot reach the database: {e}"))
        }
    }
}

/// The writer: takes what is queued (up to [`BATCH`]), runs it in one transaction,
/// commits, answers each.
fn write_loop(w: Conn, rx: std::sync::mpsc::Receiver<Job>, connect: Connect) {
    let mut conn = Some(w);
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let began = ensure(&mut conn, &connect)
            .and_then(|()| conn.as_ref().ok_or_else(|| "no connection".to_string()))
            .and_then(|c| c.begin().map(|()| c).map_err(|e| format!("cannot begin a transaction: {e}")));
        let c = match began {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("database: {e}");
                for j in jobs {
                    j(Err(e.clone()))(Err(e.clone()));
                }
                // Not faster than a reconnect can succeed.
                std::thread::sleep(std::time::Duration::from_millis(200));
                continue;
            }
        };
        let replies: Vec<Reply> = jobs.into_iter().map(|j| j(Ok(c))).collect();
        let committed = c.commit().map_err(|e| e.to_string());
        if committed.is_err() {
            let _ = c.rollback();
        }
        for r in replies {
            r(committed.clone());
        }
    }
}

fn start_reader(connect: Connect) -> Result<std::sync::mpsc::SyncSender<ReadJob>, DbError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<ReadJob>(4096);
    std::thread::Builder::new()
        .name("orch-db-reader".into())
        .spawn(move || {
            let mut conn = None;
            while let Ok(job) = rx.recv() {
                match ensure(&mut conn, &connect) {
                    Ok(()) => match conn.as_ref() {
                        Some(c) => job(Ok(c)),
                        None => job(Err("no connection".into())),
                    },
                    Err(e) => job(Err(e)),
                }
            }
        })
        .map_err(|e| DbError::Io(e.to_string()))?;
    Ok(tx)
}

/// PostgreSQL: LISTENs for the other servers' NOTIFY and passes each on to [`Db::wakes`],
/// reconnecting when the connection is lost (then `all`: what was missed is unknown).
/// Ends once the last [`Db`] is gone.
fn listen(url: &str, wakes: &broadcast::Sender<String>, alive: &std::sync::Weak<()>) {
    let mut first = true;
    while alive.strong_count() > 0 {
        let mut client = match sql::pg_connect(url) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("database: cannot listen for the other servers: {e}");
                std::thread::sleep(std::time::Duration::from_secs(2));
                continue;
            }
        };
        if let Err(e) = client.batch_execute(&format!("LISTEN {}", sql::CHANNEL)) {
            tracing::warn!("database: cannot listen for the other servers: {e}");
            std::thread::sleep(std::time::Duration::from_secs(2));
            continue;
        }
        if !first {
            let _ = wakes.send("all".into());
        }
        first = false;
        let mut notes = client.notifications();
        // Wakes up now and then to see whether the server is still there.
        let mut it = notes.timeout_iter(std::time::Duration::from_secs(2));
        use postgres::fallible_iterator::FallibleIterator;
        loop {
            match it.next() {
                Ok(Some(n)) => {
                    let _ = wakes.send(n.payload().to_string());
                }
                Ok(None) if alive.strong_count() > 0 => {}
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!("database: the listening connection was lost: {e}");
                    break;
                }
            }
        }
        drop(it);
        drop(notes);
    }
}

fn gate_rows(c: &Conn, run_id: i64) -> sql::Result<Vec<GateRow>> {
    let mut gates = c.query_map(
        "SELECT environment, step, approvers, required, status, reason, created_at, timeout_at, decided_at
         FROM gates WHERE run_id = ?1 ORDER BY created_at, environment",
        params![run_id],
        |r| {
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
        },
    )?;
    for g in &mut gates {
        g.votes = c.query_map(
            "SELECT who, vote, at FROM gate_votes WHERE run_id = ?1 AND environment = ?2 ORDER BY at, who",
            params![run_id, g.environment],
            |r| Ok(GateVote { who: r.get(0)?, vote: r.get(1)?, at: r.get(2)? }),
        )?;
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
            c.query_map(
                "SELECT name, abilities, created_at, revoked_at FROM api_tokens ORDER BY name",
                params![],
                |r| {
                    let abilities: String = r.get(1)?;
                    Ok(ApiTokenRow {
                        name: r.get(0)?,
                        abilities: abilities.split(',').filter(|a| !a.is_empty()).map(str::to_string).collect(),
                        created_at: r.get(2)?,
                        revoked_at: r.get(3)?,
                    })
                },
            )
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
            let find = |t: &Conn| -> sql::Result<Option<GateRow>> {
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
            // A gate waiting on another server hears of the vote.
            t.notify("gates");
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
            let mine: i64 = c.query_row(
                concat!("SELECT ", commit_time_of_run!(), " FROM runs WHERE id = ?1"),
                params![run_id],
                |r| r.get(0),
            )?;
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

    /// The run that holds the environment's lock while running, with its commit.
    pub async fn env_holder(&self, repo: String, environment: String) -> Result<Option<(i64, String)>, DbError> {
        self.read(move |c| env_holder(c, &repo, &environment)).await
    }

    /// Puts run `run_id` in line for the environment (once).
    pub async fn env_enqueue(&self, repo: String, environment: String, run_id: i64) -> Result<(), DbError> {
        self.write(move |t| {
            t.execute(
                concat!(
                    "INSERT INTO env_queue (repo, environment, run_id, commit_time, enqueued_at, status)
                     SELECT CAST(?1 AS TEXT), CAST(?2 AS TEXT), id, ",
                    queue_time_of_run!(),
                    ", CAST(?4 AS BIGINT), 'waiting' FROM runs WHERE id = ?3
                     ON CONFLICT (repo, environment, run_id) DO NOTHING"
                ),
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
            // Several servers: one decides for an environment at a time (SQLite's one writer
            // does already).
            if t.is_postgres() {
                t.query_row(
                    "SELECT pg_advisory_xact_lock(hashtext(?1))",
                    params![format!("{repo}/{environment}")],
                    |_| Ok(()),
                )?;
            }
            let mine = t
                .query_row(
                    "SELECT status, superseded_by FROM env_queue WHERE repo = ?1 AND environment = ?2 AND run_id = ?3",
                    params![repo, environment, run_id],
                    |r| Ok((r.get::<String>(0)?, r.get::<Option<i64>>(1)?)),
                )
                .optional()?;
            if let Some((status, by)) = &mine
                && status == "superseded"
            {
                return Ok(Acquired::Superseded(by.unwrap_or(0)));
            }
            match env_holder(t, &repo, &environment)?.map(|(id, _)| id) {
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
            // Runs waiting for the environment on another server try again.
            t.notify("gates");
            if succeeded {
                t.execute(
                    concat!(
                        "INSERT INTO env_live (repo, environment, run_id, sha, commit_time, deployed_at)
                         SELECT CAST(?1 AS TEXT), CAST(?2 AS TEXT), id, sha, ",
                        commit_time_of_run!(),
                        ", CAST(?4 AS BIGINT) FROM runs WHERE id = ?3
                         ON CONFLICT (repo, environment) DO UPDATE SET run_id = excluded.run_id, sha = excluded.sha,
                           commit_time = excluded.commit_time, deployed_at = excluded.deployed_at"
                    ),
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

    /// What keeps a test's database there: its directory, or its throwaway PostgreSQL.
    enum Guard {
        Dir(#[allow(dead_code)] tempfile::TempDir),
        Postgres(#[allow(dead_code)] throwaway::TestPostgres),
    }

    /// A fresh database on each backend: a SQLite file, and (when PostgreSQL is installed,
    /// always in CI) a database of a throwaway PostgreSQL.
    async fn backends(name: &str) -> Vec<(Db, Guard)> {
        let dir = tempfile::tempdir().unwrap();
        let mut out = vec![(Db::open(&dir.path().join("orch.db")).unwrap(), Guard::Dir(dir))];
        if let Some((db, pg)) = postgres(name).await {
            out.push((db, Guard::Postgres(pg)));
        }
        out
    }

    async fn postgres(name: &str) -> Option<(Db, throwaway::TestPostgres)> {
        let pg = tokio::task::spawn_blocking(throwaway::TestPostgres::start).await.unwrap().unwrap()?;
        let url = pg.database(name).unwrap();
        let db = Db::open_at(&Location::Postgres(url)).unwrap();
        assert_eq!(db.backend(), Backend::Postgres);
        Some((db, pg))
    }

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
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);").unwrap();
            let mode: i64 = c.query_row("PRAGMA auto_vacuum", [], |r| r.get(0)).unwrap();
            assert_eq!(mode, 0);
        }
        let db = Db::open(&path).unwrap();
        let mode: i64 = db.read(|c| c.query_row("PRAGMA auto_vacuum", params![], |r| r.get(0))).await.unwrap();
        assert_eq!(mode, 2, "incremental");
        let kept: i64 = db.read(|c| c.query_row("SELECT x FROM t", params![], |r| r.get(0))).await.unwrap();
        assert_eq!(kept, 1);
    }

    /// A SQLite file made by an earlier orch (the first release's tables, no version
    /// table) gets the later columns and schema version 1, and keeps its rows.
    #[tokio::test]
    async fn a_sqlite_database_from_an_earlier_release_is_migrated_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orch.db");
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch(SCHEMA).unwrap();
            c.execute_batch(
                "INSERT INTO runs (repo, clone_url, event, sha, status, created_at) VALUES ('o/r', 'u', 'push', 's', 'success', 1)",
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        let run = db.run(1).await.unwrap().unwrap();
        assert_eq!(
            (run.spec.repo.as_str(), run.status, run.lost, run.failed_only),
            ("o/r", RunState::Success, 0, false)
        );
        let version: i64 =
            db.read(|c| c.query_row("SELECT version FROM schema_version", params![], |r| r.get(0))).await.unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        drop(db);
        // Opened again: nothing to do, the same version, once.
        let db = Db::open(&path).unwrap();
        let n: i64 =
            db.read(|c| c.query_row("SELECT COUNT(*) FROM schema_version", params![], |r| r.get(0))).await.unwrap();
        assert_eq!(n, 1);
        // A newer orch's database is refused, not damaged.
        db.write(|t| t.execute("UPDATE schema_version SET version = 99", params![])).await.unwrap();
        drop(db);
        let err = Db::open(&path).err().expect("refused").to_string();
        assert!(err.contains("schema version 99"), "{err}");
    }

    /// Two servers on one PostgreSQL database: every queued run is claimed and dispatched
    /// by exactly one, a delivery stored by both is one run, a schedule's time fires once,
    /// one sends the outbox at a time, and a run queued by one wakes the other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_servers_on_one_postgres_take_each_run_once() {
        let Some((a, pg)) = postgres("two").await else { return };
        let a = a.for_server("a".into());
        let url = pg.url("two");
        let b = Db::open_at(&Location::Postgres(url)).unwrap().for_server("b".into());
        let mut woken = b.wakes();
        // Let the listener start before the first NOTIFY.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let (first, _, _) = a.queue_run(spec("main"), false).await.unwrap();
        let heard = tokio::time::timeout(std::time::Duration::from_secs(10), woken.recv()).await;
        assert_eq!(heard.expect("woken in time").unwrap(), "queued");
        for i in 1..40 {
            a.queue_run(spec(&format!("b{i}")), false).await.unwrap();
        }
        // Both plan and dispatch as fast as they can, at once.
        let work = |db: Db| async move {
            let (mut planned, mut taken) = (Vec::new(), Vec::new());
            loop {
                let claimed = db.claim().await.unwrap();
                if let Some(r) = &claimed {
                    assert!(db.plan_ready(r.id, "{}".into(), vec![], "w".into()).await.unwrap());
                    planned.push(r.id);
                }
                let got = db.dispatch(None, vec![], None).await.unwrap();
                if let Some((r, _)) = &got {
                    taken.push(r.id);
                }
                if claimed.is_none() && got.is_none() && db.count_runs(RunState::Queued).await.unwrap() == 0 {
                    return (planned, taken);
                }
            }
        };
        let (x, y) = tokio::join!(tokio::spawn(work(a.clone())), tokio::spawn(work(b.clone())));
        let ((pa, ta), (pb, tb)) = (x.unwrap(), y.unwrap());
        let mut planned: Vec<i64> = pa.iter().chain(&pb).copied().collect();
        let mut taken: Vec<i64> = ta.iter().chain(&tb).copied().collect();
        planned.sort_unstable();
        taken.sort_unstable();
        let all: Vec<i64> = (first..first + 40).collect();
        assert_eq!(planned, all, "each planned once");
        assert_eq!(taken, all, "each dispatched once");
        assert!(!ta.is_empty() && !tb.is_empty(), "both took some: {} and {}", ta.len(), tb.len());
        // Each server's runs are its own: a restart of `a` queues only a's again.
        let again = a.requeue_interrupted().await.unwrap();
        assert_eq!(again.len(), ta.len());
        // A server that stops answering: another ends the runs it executed itself and
        // queues them again as new runs; not its agents' (their leases say), not its own,
        // not those of a server never heard of.
        let mut running = Vec::new();
        for (server, agent) in [("a", None), ("a", Some("x")), ("b", None), ("old", None)] {
            let (id, _, _) = a.queue_run(spec("main"), false).await.unwrap();
            a.write(move |t| {
                t.execute(
                    "UPDATE runs SET status = 'running', server = ?2, agent = ?3 WHERE id = ?1",
                    params![id, server, agent],
                )
            })
            .await
            .unwrap();
            running.push(id);
        }
        a.heartbeat().await.unwrap();
        b.heartbeat().await.unwrap();
        assert!(b.take_over_silent(60_000, None, None).await.unwrap().is_empty(), "a was heard just now");
        b.write(|t| t.execute("UPDATE servers SET seen_at = seen_at - 120000 WHERE name = 'a'", params![]))
            .await
            .unwrap();
        let owed_before: i64 =
            b.read(|c| c.query_row("SELECT COALESCE(MAX(id), 0) FROM outbox", params![], |r| r.get(0))).await.unwrap();
        let ended: OweEnded = |r| format!("ended {} {}", r.id, r.status.as_str());
        let queued: OweEnded = |r| format!("queued {} {}", r.id, r.status.as_str());
        let taken = b.take_over_silent(60_000, Some(ended), Some(queued)).await.unwrap();
        assert_eq!(taken.iter().map(|(r, _)| r.id).collect::<Vec<_>>(), [running[0]]);
        let (old, new) = (&taken[0].0, taken[0].1);
        // What both owe GitHub, stored with the change, the end first.
        let owed: Vec<String> = b
            .read(move |c| {
                c.query_map("SELECT body FROM outbox WHERE id > ?1 ORDER BY id", params![owed_before], |r| r.get(0))
            })
            .await
            .unwrap();
        assert_eq!(owed, [format!("ended {} error", running[0]), format!("queued {new} queued")]);
        assert_eq!(old.status, RunState::Error);
        assert_eq!(
            old.reason.as_deref(),
            Some(format!("its server `a` stopped answering; run {new} runs it again").as_str())
        );
        let new_run = b.run(new).await.unwrap().unwrap();
        assert_eq!((new_run.status, new_run.spec.sha.as_str()), (RunState::Queued, "s"));
        assert!(b.take_over_silent(60_000, None, None).await.unwrap().is_empty(), "taken once");
        for id in &running[1..] {
            assert_eq!(a.run(*id).await.unwrap().unwrap().status, RunState::Running);
        }
        // What the silent server still writes for the old run changes nothing.
        a.finish(old.id, RunState::Cancelled, None, None).await.unwrap();
        a.requeue(old.id, "the server stopped".into()).await.unwrap();
        assert_eq!(a.run(old.id).await.unwrap().unwrap().status, RunState::Error);
        // One delivery through both: one run.
        let d = |id: &str| Delivery {
            id: id.into(),
            event: "push".into(),
            action: None,
            headers: "{}".into(),
            body: b"same".to_vec(),
            outcome: "queued".into(),
        };
        let (x, y) = tokio::join!(
            a.store_delivery(d("d1"), Some(spec("x")), false, None, None),
            b.store_delivery(d("d1"), Some(spec("x")), false, None, None)
        );
        let stored = [x.unwrap(), y.unwrap()];
        assert_eq!(stored.iter().filter(|s| matches!(s, Stored::Duplicate)).count(), 1, "{stored:?}");
        // A schedule's time: fired by one.
        let sched =
            NewSchedule { name: "n".into(), cron: "0 3 * * *".into(), timezone: "UTC".into(), next_at: Some(100) };
        a.set_schedules("o/r".into(), "u".into(), "main".into(), None, vec![sched]).await.unwrap();
        let id = a.schedules().await.unwrap()[0].id;
        let (x, y) = tokio::join!(
            a.fire_schedule(id, 100, Some(200), Some(spec("main")), None, None),
            b.fire_schedule(id, 100, Some(200), Some(spec("main")), None, None)
        );
        let fired = [x.unwrap(), y.unwrap()];
        assert_eq!(fired.iter().filter(|f| matches!(f, Fired::Queued(_))).count(), 1, "{fired:?}");
        assert!(fired.contains(&Fired::Lost));
        // The outbox: one sender at a time.
        assert!(a.outbox_lock().await.unwrap());
        assert!(!b.outbox_lock().await.unwrap());
        a.outbox_unlock().await.unwrap();
        assert!(b.outbox_lock().await.unwrap());
        assert!(!a.outbox_lock().await.unwrap());
        b.outbox_unlock().await.unwrap();
        drop((a, b));
        drop(pg);
    }

    /// Every query once, on both backends (what the other tests do not reach).
    #[tokio::test]
    async fn every_query_answers_the_same_on_both_backends() {
        for (db, _guard) in backends("every").await {
            let keyed = |t: i64| NewRun { concurrency_key: Some("k".into()), event_time: Some(t), ..spec("main") };
            let (old, _, _) = db.queue_run(keyed(10), true).await.unwrap();
            let (new, running, cancelled) = db.queue_run(keyed(20), true).await.unwrap();
            assert!(running.is_empty());
            assert_eq!(cancelled.iter().map(|r| r.id).collect::<Vec<_>>(), [old]);
            // An older event after a newer one: cancelled at once.
            let (late, _, cancelled) = db.queue_run(keyed(5), true).await.unwrap();
            assert_eq!(cancelled.iter().map(|r| r.id).collect::<Vec<_>>(), [late]);
            assert_eq!(db.cancel_queued(late, "x".into(), None).await.unwrap(), None, "not queued");
            let d = Delivery {
                id: "d".into(),
                event: "push".into(),
                action: None,
                headers: "{}".into(),
                body: vec![0, 1, 2, 255],
                outcome: "queued".into(),
            };
            let owe: Box<dyn FnOnce(i64) -> String + Send> = Box::new(|id| format!("owed {id}"));
            let stored = db.store_delivery(d.clone(), Some(keyed(30)), true, Some(owe), None).await.unwrap();
            let Stored::New { run: Some(from_delivery), .. } = stored else { panic!("{stored:?}") };
            let again = Delivery { id: "d2".into(), ..d };
            assert_eq!(
                db.store_delivery(again, None, false, None, None).await.unwrap(),
                Stored::Duplicate,
                "same body"
            );
            assert_eq!(db.count_deliveries().await.unwrap(), 1);
            let owed = db.owed(10).await.unwrap();
            assert_eq!(owed.iter().map(|o| o.1.clone()).collect::<Vec<_>>(), [format!("owed {from_delivery}")]);
            db.check_runs_made(vec![(from_delivery, 77)]).await.unwrap();
            assert_eq!(db.check_run_of(from_delivery).await.unwrap(), Some(77));
            db.paid(owed[0].0, vec![], vec![], Some((from_delivery, "gone".into()))).await.unwrap();
            assert_eq!(db.count_owed().await.unwrap(), 0);
            assert_eq!(db.run(from_delivery).await.unwrap().unwrap().report_error.as_deref(), Some("gone"));
            // Plan, give back, release, requeue.
            let claimed = db.claim().await.unwrap().unwrap();
            assert_eq!(claimed.id, from_delivery);
            assert_eq!(db.count_planning().await.unwrap(), 1);
            db.unplan(claimed.id).await.unwrap();
            assert!(db.plan_ready(claimed.id, "{}".into(), vec!["x".into()], "w".into()).await.unwrap());
            assert_eq!(db.ready_labels().await.unwrap(), [vec!["x".to_string()]]);
            let (r, _) = db.dispatch(Some("ag".into()), vec!["x".into()], Some(5)).await.unwrap().unwrap();
            assert!(db.give_back(r.id, r.attempts, "ag".into(), "busy".into()).await.unwrap());
            let (r, _) = db.dispatch(None, vec!["x".into()], None).await.unwrap().unwrap();
            assert!(db.release(r.id, r.attempts, None, "gone".into()).await.unwrap());
            db.requeue(r.id, "again".into()).await.unwrap();
            let (running, cancelled) = db.cancel_key("k".into(), "closed".into(), None).await.unwrap();
            assert!(running.is_empty());
            assert_eq!(cancelled.iter().map(|r| r.id).collect::<Vec<_>>(), [from_delivery]);
            let rerun = db.queue_rerun(spec("main"), new, true).await.unwrap();
            let r = db.run(rerun).await.unwrap().unwrap();
            assert_eq!((r.rerun_of, r.failed_only), (Some(new), true));
            let step = StepRow {
                name: "s".into(),
                stage: Some("one".into()),
                status: StepState::Running,
                exit_code: None,
                attempts: 1,
                started: Some(1.5),
                duration: None,
                message: None,
            };
            db.upsert_step(rerun, step.clone()).await.unwrap();
            let done =
                StepRow { stage: None, status: StepState::Failed, exit_code: Some(2), duration: Some(2.25), ..step };
            db.upsert_step(rerun, done).await.unwrap();
            let steps = db.steps(rerun).await.unwrap();
            assert_eq!(
                (steps[0].stage.as_deref(), steps[0].status, steps[0].started, steps[0].duration),
                (Some("one"), StepState::Failed, Some(1.5), Some(2.25))
            );
            assert_eq!(db.step_durations().await.unwrap(), [(StepState::Failed, 2.25)]);
            db.finish(rerun, RunState::Failure, Some("red".into()), None).await.unwrap();
            assert!(db.queue_waits().await.unwrap().len() >= 2);
            let f = RunFilter {
                branch: Some("main".into()),
                status: Some(RunState::Failure),
                limit: 10,
                ..Default::default()
            };
            assert_eq!(db.runs_where(f).await.unwrap().iter().map(|r| r.id).collect::<Vec<_>>(), [rerun]);
            let all = RunFilter { limit: 2, ..Default::default() };
            assert_eq!(db.runs_where(all).await.unwrap().len(), 2);
            // Every run before the re-run was cancelled (superseded, then the key's cancel).
            assert_eq!(
                db.runs(100, Some(rerun)).await.unwrap().len() as i64,
                db.count_runs(RunState::Cancelled).await.unwrap()
            );
            assert_eq!(db.status_counts().await.unwrap().iter().map(|(_, n)| n).sum::<i64>(), 5);
            // Schedules.
            let s = |name: &str, at| NewSchedule {
                name: name.into(),
                cron: "0 3 * * *".into(),
                timezone: "UTC".into(),
                next_at: Some(at),
            };
            assert!(
                db.set_schedules("o/r".into(), "u".into(), "main".into(), Some(9), vec![s("a", 50), s("b", 60)])
                    .await
                    .unwrap()
            );
            assert!(
                !db.set_schedules("o/r".into(), "u".into(), "main".into(), Some(9), vec![s("a", 99), s("b", 60)])
                    .await
                    .unwrap()
            );
            assert!(
                db.set_schedules("o/r".into(), "u".into(), "main".into(), Some(9), vec![s("b", 60)]).await.unwrap()
            );
            assert_eq!(db.next_schedule_at().await.unwrap(), Some(60));
            let due = db.due_schedules(60).await.unwrap();
            assert_eq!((due.len(), due[0].name.as_str(), due[0].installation_id), (1, "b", Some(9)));
            assert_eq!(
                db.fire_schedule(due[0].id, 60, None, None, Some("missed".into()), None).await.unwrap(),
                Fired::Skipped
            );
            assert_eq!(db.schedules().await.unwrap()[0].last_error.as_deref(), Some("missed"));
            db.ping().await.unwrap();
            db.announce("nothing".into()).await.unwrap();
        }
    }

    /// Deployments, rollbacks, incidents and the health measures' reads, on both backends.
    #[tokio::test]
    async fn deployments_and_delivery_queries_answer_on_both_backends() {
        for (db, _guard) in backends("deployments").await {
            let commit = |sha: &str, t: i64| NewRun { sha: sha.into(), event_time: Some(t), ..spec("main") };
            let (old, _, _) = db.queue_run(commit("aaa", 100), false).await.unwrap();
            let (new, _, _) = db.queue_run(commit("bbb", 200), false).await.unwrap();
            let first = db.start_deployment(old, "deploy".into(), "prod".into(), Some("https://x".into()), None).await;
            let first = first.unwrap().expect("recorded");
            db.finish_deployment(first, "success").await.unwrap();
            let second = db
                .start_deployment(new, "deploy".into(), "prod".into(), None, Some("alice, bob".into()))
                .await
                .unwrap()
                .unwrap();
            db.finish_deployment(second, "success").await.unwrap();
            assert_eq!(db.start_deployment(9999, "d".into(), "prod".into(), None, None).await.unwrap(), None, "no run");
            db.deployments_made(vec![(second, 77)]).await.unwrap();
            assert_eq!(db.github_deployment_of(second).await.unwrap(), Some(77));
            assert_eq!(db.github_deployment_of(first).await.unwrap(), None);
            let back = db.rollback_target("o/r".into(), "prod".into()).await.unwrap().expect("a target");
            assert_eq!((back.id, back.sha.as_str()), (first, "aaa"));
            // The older commit again: a rollback.
            let (again, _, _) = db.queue_run(commit("aaa", 300), false).await.unwrap();
            let third = db.start_deployment(again, "deploy".into(), "prod".into(), None, None).await.unwrap().unwrap();
            let f =
                DeploymentFilter { repo: Some("o/r".into()), environment: Some("prod".into()), run: None, limit: 10 };
            let rows = db.deployments(f).await.unwrap();
            assert_eq!(
                rows.iter().map(|d| (d.id, d.rollback)).collect::<Vec<_>>(),
                [(third, true), (second, false), (first, false)]
            );
            assert_eq!(rows[2].url.as_deref(), Some("https://x"));
            assert_eq!(rows[1].approved_by.as_deref(), Some("alice, bob"));
            let envs = db.environments(None).await.unwrap();
            assert_eq!(envs.len(), 1);
            assert_eq!((envs[0].last.id, envs[0].live.as_ref().map(|d| d.id)), (third, Some(second)));
            assert_eq!(db.run_of_commit("o/r".into(), "aaa".into()).await.unwrap().map(|r| r.id), Some(again));
            let dora = db.dora_deployments(Some("o/r".into()), None).await.unwrap();
            assert_eq!(dora.len(), 3);
            assert_eq!(dora[0].commit_at, Some(100), "when orch first heard of the commit");
            let incident = super::super::webhook::Issue {
                repo: "o/r".into(),
                number: 5,
                title: "down".into(),
                url: None,
                labels: vec!["incident".into()],
                opened_at: 400,
                closed_at: Some(500),
                deployment: Some(second),
                deleted: false,
            };
            db.record_incident(incident.clone(), true).await.unwrap();
            db.record_incident(incident, true).await.unwrap();
            let found = db.incidents(Some("o/r".into())).await.unwrap();
            assert_eq!((found.len(), found[0].deployment), (1, Some(second)));
            db.upsert_step(
                old,
                StepRow {
                    name: "deploy".into(),
                    stage: None,
                    status: StepState::Passed,
                    exit_code: Some(0),
                    attempts: 1,
                    started: Some(0.0),
                    duration: Some(1.5),
                    message: None,
                },
            )
            .await
            .unwrap();
            assert_eq!(db.health_runs(Some("o/r".into()), 0).await.unwrap().len(), 3);
            assert_eq!(db.health_steps(None, 0).await.unwrap().len(), 1);
        }
    }

    /// Votes: distinct approvers up to `required`, one vote each, one rejection ends it; a
    /// gate that ended without a decision waits again when the run asks again.
    #[tokio::test]
    async fn gate_votes_decide_and_an_undecided_gate_reopens_for_a_later_attempt() {
        for (db, _guard) in backends("gates").await {
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
            assert_eq!(
                status(db.vote_gate(id, env.clone(), who("c"), false).await.unwrap()),
                "closed Some(\"approved\")"
            );
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
    }

    /// Environment locks: one holder at a time; the newest waiting commit goes next and
    /// supersedes the older waiting ones (or, `fifo`, the first in line goes); a lock of a
    /// run that is not running (ended, interrupted) is free; the live commit is recorded.
    #[tokio::test]
    async fn environment_locks_go_to_one_run_at_a_time_in_order_and_dead_runs_hold_none() {
        for (db, _guard) in backends("locks").await {
            let mut ids = Vec::new();
            for (branch, time) in [("a", 100), ("b", 200), ("c", 300), ("d", 400)] {
                let (id, _, _) = db.queue_run(NewRun { sha: branch.into(), ..spec(branch) }, false).await.unwrap();
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
            assert_eq!(db.env_holder(repo.clone(), env.clone()).await.unwrap(), Some((c, "c".to_string())));
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
    }

    /// A rollback's run is made now but deploys an old commit: the live commit's time is the
    /// commit's (when orch first heard of it), so commits heard of before the rollback and
    /// after the rolled-back-to one are not refused as older; in a newest-first line the
    /// rollback, asked for last, goes before pushes waiting since before it.
    #[tokio::test]
    async fn after_a_rollback_the_live_commit_keeps_its_own_time() {
        for (db, _guard) in backends("rollback-time").await {
            let run = |sha: &'static str, time: Option<i64>, redeploy: bool| {
                let db = &db;
                async move {
                    let (id, _, _) = db.queue_run(NewRun { sha: sha.into(), ..spec("main") }, false).await.unwrap();
                    db.write(move |t| {
                        t.execute(
                            "UPDATE runs SET status = 'running', event_time = ?2, redeploy = ?3 WHERE id = ?1",
                            params![id, time, redeploy],
                        )
                    })
                    .await
                    .unwrap();
                    id
                }
            };
            let (repo, env) = ("o/r".to_string(), "prod".to_string());
            let deploy = |id: i64| {
                let (db, repo, env) = (&db, repo.clone(), env.clone());
                async move {
                    db.env_enqueue(repo.clone(), env.clone(), id).await.unwrap();
                    assert_eq!(db.env_acquire(repo.clone(), env.clone(), id, true).await.unwrap(), Acquired::Got);
                    db.env_release(repo, env, id, true).await.unwrap();
                }
            };
            let a = run("aaa", Some(100), false).await;
            deploy(a).await;
            let c = run("ccc", Some(300), false).await;
            deploy(c).await;
            // Back to aaa: a redeploy run made now, with no push time of its own.
            let back = run("aaa", None, true).await;
            // bbb was pushed (200) before the rollback; ddd (400) too, and waits in line.
            let b = run("bbb", Some(200), false).await;
            let d = run("ddd", Some(400), false).await;
            for id in [d, back] {
                db.env_enqueue(repo.clone(), env.clone(), id).await.unwrap();
            }
            assert_eq!(db.env_acquire(repo.clone(), env.clone(), d, true).await.unwrap(), Acquired::Wait);
            assert_eq!(db.env_acquire(repo.clone(), env.clone(), back, true).await.unwrap(), Acquired::Got);
            db.env_release(repo.clone(), env.clone(), back, true).await.unwrap();
            let (mine, live) = db.env_live(repo.clone(), env.clone(), b).await.unwrap();
            let live = live.expect("a live commit");
            assert_eq!((live.run_id, live.sha.as_str(), live.commit_time), (back, "aaa", 100));
            assert!(mine >= live.commit_time, "bbb ({mine}) counts as older than the rolled-back-to aaa");
            let (older, _) = db.env_live(repo.clone(), env.clone(), a).await.unwrap();
            assert_eq!(older, 100, "a commit's time is its first run's");
        }
    }

    /// The queue of agents: a run is planned, taken only by an executor its labels fit,
    /// leased, fenced by its attempt, queued again when its lease runs out (a bounded number
    /// of times), then ended; an ended run keeps its end.
    #[tokio::test]
    async fn leases_fence_attempts_and_a_lost_run_is_queued_again_then_ended() {
        for (db, _guard) in backends("leases").await {
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
    }

    #[tokio::test]
    async fn agent_tokens_are_stored_hashed_named_once_and_revocable() {
        for (db, _guard) in backends("agents").await {
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
    }

    #[tokio::test]
    async fn prune_by_age_and_count_keeps_unfinished_runs() {
        for (db, _guard) in backends("prune").await {
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
            db.write(move |t| {
                t.execute("UPDATE runs SET finished_at = ?1, created_at = ?1 WHERE id = 2", params![old])
            })
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
            let lite = db.backend() == Backend::Sqlite;
            let pages = || db.read(|c| c.query_row("PRAGMA page_count", params![], |r| r.get::<i64>(0)));
            let before = if lite { pages().await.unwrap() } else { 0 };
            // 5 days: run 2 goes; at most 2 finished runs: run 1 goes too. Run 5 is queued: kept.
            let gone = db.prune(5 * 86_400, 2, 3 * 86_400).await.unwrap();
            if lite {
                let after = pages().await.unwrap();
                assert!(before - after > 900, "the 4 MB body's pages are given back: {before} -> {after}");
                let free: i64 =
                    db.read(|c| c.query_row("PRAGMA freelist_count", params![], |r| r.get(0))).await.unwrap();
                assert_eq!(free, 0);
            }
            assert_eq!(gone, [run_ids[0], run_ids[1]]);
            let left: Vec<i64> = db.read(|c| ids(c, "SELECT id FROM runs ORDER BY id", params![])).await.unwrap();
            assert_eq!(left, [run_ids[2], run_ids[3], run_ids[4]]);
            let steps: i64 =
                db.read(|c| c.query_row("SELECT COUNT(*) FROM steps", params![], |r| r.get(0))).await.unwrap();
            assert_eq!(steps, 2);
            assert_eq!(db.count_deliveries().await.unwrap(), 1);
            // No limits: nothing more goes.
            assert!(db.prune(0, 0, 0).await.unwrap().is_empty());
            assert_eq!(db.status_counts().await.unwrap(), [(RunState::Queued, 1), (RunState::Success, 2)]);
        }
    }
}
