//! The runs API (`/api/...`), `/metrics` and `/readyz`.
//!
//! Reads are public unless `api_private`; actions (cancel, re-run, manual runs) need
//! `Authorization: Bearer <api_token>` and are refused (403) while no token is configured.
//! Errors are JSON `{"error": "..."}`: 400 for bad input, 401 for a missing or wrong token,
//! 404 for a run, step or file that does not exist, 409 for an action the run's state forbids.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::path::{Component, Path as FsPath, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::db::{NewRun, Run, RunFilter, RunState, StepState, now};
use super::{AppState, live, reply, worker};
use crate::confined::{Kind, Root};
use crate::github::Update;

/// Run statuses, in the order `/metrics` lists them.
/// Step statuses after which a step's log does not grow.
/// How often a followed log is looked at.
const POLL: Duration = Duration::from_millis(200);
/// A log line longer than this is sent in pieces.
const MAX_LINE: usize = 64 * 1024;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/runs", get(list_runs).post(manual_run))
        .route("/api/runs/{id}", get(get_run))
        .route("/api/runs/{id}/logs/{step}", get(get_log))
        .route("/api/runs/{id}/artifacts/{step}/{*path}", get(get_artifact))
        .route("/api/runs/{id}/cancel", post(cancel))
        .route("/api/runs/{id}/rerun", post(rerun))
        .route("/api/openapi.yaml", get(openapi))
        .route("/metrics", get(metrics))
        .route("/readyz", get(readyz))
}

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    reply(code, json!({ "error": msg.into() }))
}

fn internal(e: impl std::fmt::Display) -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// Compares without stopping at the first difference.
pub(super) fn same(a: &[u8], b: &[u8]) -> bool {
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
    let mac = super::webhook::sign(token.as_bytes(), format!("orch dashboard session {issued}").as_bytes());
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

/// A run id from the path: anything that is not one is a run that does not exist.
async fn load_run(st: &AppState, id: &str) -> Result<Run, Box<Response>> {
    let missing = || Box::new(error(StatusCode::NOT_FOUND, format!("no run {id}")));
    let n: i64 = id.parse().map_err(|_| missing())?;
    match st.db.run(n).await {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(missing()),
        Err(e) => Err(Box::new(internal(e))),
    }
}

fn parse_num(q: &HashMap<String, String>, key: &str) -> Result<Option<i64>, Box<Response>> {
    q.get(key)
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse::<i64>().map_err(|_| {
                Box::new(error(StatusCode::BAD_REQUEST, format!("`{key}` must be a whole number, got `{v}`")))
            })
        })
        .transpose()
}

fn truthy(q: &HashMap<String, String>, key: &str) -> bool {
    q.get(key).is_some_and(|v| matches!(v.as_str(), "" | "1" | "true" | "yes"))
}

// ---------------------------------------------------------------------------------------
// Reads

/// `GET /api/runs?repo=&branch=&status=&limit=&before=`
async fn list_runs(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = authorize_read(&st, &headers) {
        return *r;
    }
    let limit = match parse_num(&q, "limit") {
        Ok(l) => l.unwrap_or(50),
        Err(r) => return *r,
    };
    if !(1..=500).contains(&limit) {
        return error(StatusCode::BAD_REQUEST, format!("`limit` must be from 1 to 500, got {limit}"));
    }
    let before = match parse_num(&q, "before") {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let text = |k: &str| q.get(k).filter(|v| !v.is_empty()).cloned();
    let status = match text("status").map(|s| RunState::parse(&s).ok_or(s)) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(s)) => {
            let all: Vec<&str> = RunState::ALL.iter().map(|s| s.as_str()).collect();
            return error(StatusCode::BAD_REQUEST, format!("`status` must be one of {}, got `{s}`", all.join(", ")));
        }
    };
    let f = RunFilter { repo: text("repo"), branch: text("branch"), status, limit, before };
    match st.db.runs_where(f).await {
        Ok(runs) => {
            let next = if runs.len() as i64 == limit { runs.last().map(|r| r.id) } else { None };
            reply(StatusCode::OK, json!({ "runs": runs, "next": next }))
        }
        Err(e) => internal(e),
    }
}

/// A run's kept artifacts: per step directory, the files (relative path, size), sorted.
/// Read beneath the run's artifact directory; links are not listed.
pub fn artifact_files(run_dir: &FsPath) -> Vec<(String, Vec<(String, u64)>)> {
    let Ok(root) = Root::open(run_dir.join("artifacts")) else { return Vec::new() };
    let Ok(entries) = root.entries("") else { return Vec::new() };
    entries
        .into_iter()
        .filter(|(name, kind)| *kind == Kind::Dir && !name.to_string_lossy().starts_with('.'))
        .map(|(name, _)| {
            let files = root
                .walk(&name, crate::exec::MAX_ARTIFACT_FILES)
                .unwrap_or_default()
                .into_iter()
                .filter(|f| f.kind == Kind::File)
                .map(|f| (f.path.to_string_lossy().into_owned(), f.size))
                .collect();
            (name.to_string_lossy().into_owned(), files)
        })
        .collect()
}

/// The artifacts of a run: `[{"step", "files": [{"path", "size"}]}]`.
pub fn artifacts(st: &AppState, id: i64) -> Vec<serde_json::Value> {
    artifact_files(&worker::run_dir(&st.cfg, id))
        .into_iter()
        .map(|(step, files)| {
            let files: Vec<_> = files.into_iter().map(|(p, n)| json!({ "path": p, "size": n })).collect();
            json!({ "step": step, "files": files })
        })
        .collect()
}

/// `GET /api/runs/{id}`: the run, its steps, what triggered it, the plan's skipped steps,
/// its artifacts and the error that stopped it before its steps (if any).
async fn get_run(State(st): State<Arc<AppState>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = authorize_read(&st, &headers) {
        return *r;
    }
    let run = match load_run(&st, &id).await {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let steps = match st.db.steps(run.id).await {
        Ok(s) => s,
        Err(e) => return internal(e),
    };
    let dir = worker::run_dir(&st.cfg, run.id);
    let plan: Option<serde_json::Value> =
        std::fs::read(dir.join("plan.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let skipped = plan.as_ref().and_then(|p| p.get("skipped").cloned()).unwrap_or_else(|| json!([]));
    let error = std::fs::read_to_string(dir.join("error.txt")).ok();
    let trigger = json!({
        "event": run.spec.event,
        "delivery_id": run.delivery_id,
        "repo": run.spec.repo,
        "branch": run.spec.branch,
        "base_branch": run.spec.base_branch,
        "tag": run.spec.tag,
        "sha": run.spec.sha,
        "author": run.spec.author,
        "pr": run.spec.pr,
        "title": run.spec.title,
        "rerun_of": run.rerun_of,
        "failed_only": run.failed_only,
    });
    let artifacts = artifacts(&st, run.id);
    reply(
        StatusCode::OK,
        json!({
            "run": run,
            "steps": steps,
            "trigger": trigger,
            "skipped": skipped,
            "artifacts": artifacts,
            "error": error,
        }),
    )
}

fn log_file(st: &AppState, id: i64, step: &str) -> PathBuf {
    worker::run_dir(&st.cfg, id).join("logs").join(format!("{}.log", crate::plan::slug(step)))
}

/// `GET /api/runs/{id}/logs/{step}`: whole, `?offset=N`, or followed (`?follow=1` or
/// `Accept: text/event-stream`) as Server-Sent Events.
async fn get_log(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((id, step)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = authorize_read(&st, &headers) {
        return *r;
    }
    let run = match load_run(&st, &id).await {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let mut offset = match parse_num(&q, "offset") {
        Ok(o) => o.unwrap_or(0),
        Err(r) => return *r,
    };
    if offset < 0 {
        return error(StatusCode::BAD_REQUEST, "`offset` must not be negative");
    }
    let file = log_file(&st, run.id, &step);
    let sse = truthy(&q, "follow")
        || headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/event-stream"));
    if sse {
        // A reconnecting EventSource resumes where it was (ids are byte offsets).
        if let Some(last) = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()) {
            offset = last;
        }
        let known = match st.db.steps(run.id).await {
            Ok(steps) => steps.iter().any(|s| s.name == step),
            Err(e) => return internal(e),
        };
        // A step that is not (yet) a row may still start, unless the run is over.
        if !known && !file.exists() && !run.status.is_active() {
            return error(StatusCode::NOT_FOUND, format!("no log for step `{step}` of run {}", run.id));
        }
        return follow(st, run.id, step, file, offset as u64).into_response();
    }
    let mut f = match tokio::fs::File::open(&file).await {
        Ok(f) => f,
        Err(_) => return error(StatusCode::NOT_FOUND, format!("no log for step `{step}` of run {}", run.id)),
    };
    // The size now: what is read, and the next poll's `offset`. A log only grows.
    let size = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (from, to) = match range {
        None => ((offset as u64).min(size), size),
        Some(r) => match byte_range(r, size) {
            Some(span) => span,
            None => {
                return (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{size}"))],
                    format!("the log holds {size} bytes; a range is `bytes=FIRST-` or `bytes=FIRST-LAST`\n"),
                )
                    .into_response();
            }
        },
    };
    if f.seek(std::io::SeekFrom::Start(from)).await.is_err() {
        return internal(format!("cannot read {}", file.display()));
    }
    let mut r = Response::builder()
        .status(if range.is_some() { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK })
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, to - from)
        .header(header::HeaderName::from_static("x-log-size"), if range.is_some() { size } else { to });
    if range.is_some() {
        r = r.header(header::CONTENT_RANGE, format!("bytes {from}-{}/{size}", to.saturating_sub(1).max(from)));
    }
    // Streamed in pieces: a big log costs a client's read buffer, not its size in memory.
    r.body(file_body(f, to - from)).unwrap_or_else(internal)
}

/// `bytes=FIRST-` or `bytes=FIRST-LAST` (one range) of a file of `size` bytes, as
/// `[from, to)`; `None` when it cannot be served.
fn byte_range(header: &str, size: u64) -> Option<(u64, u64)> {
    let spec = header.trim().strip_prefix("bytes=")?;
    let (first, last) = spec.split_once('-')?;
    if first.is_empty() {
        // The last N bytes.
        let n: u64 = last.trim().parse().ok()?;
        return (n > 0 && size > 0).then(|| (size.saturating_sub(n), size));
    }
    let from: u64 = first.trim().parse().ok()?;
    let to = match last.trim() {
        "" => size,
        l => l.parse::<u64>().ok()?.checked_add(1)?.min(size),
    };
    (from < size && from < to).then_some((from, to))
}

/// A body reading `len` bytes of `f` from where it stands, 64 KiB at a time.
fn file_body(f: tokio::fs::File, len: u64) -> Body {
    let stream = futures_util::stream::unfold((f, len), |(mut f, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = vec![0u8; left.min(64 * 1024) as usize];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<Bytes, std::io::Error>(Bytes::from(buf)), (f, left - n as u64)))
            }
            Err(e) => Some((Err(e), (f, 0))),
        }
    });
    Body::from_stream(stream)
}

/// What a terminal shows of a line: carriage returns rewrite it.
fn shown(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let text = text.trim_end_matches(['\r', '\n']);
    text.rsplit('\r').next().unwrap_or("").to_string()
}

/// The SSE stream of a log: what is there, then lines as the step prints them (from the
/// run's live feed: nothing polls while the run executes here), then `event: end` (data:
/// the step's status, or the run's) once the step or the run is over. A task sends into a
/// small channel, so a slow client holds little memory.
fn follow(st: Arc<AppState>, run: i64, step: String, file: PathBuf, start: u64) -> impl IntoResponse {
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        let mut lines = FileLines { pos: start, partial: Vec::new() };
        loop {
            // A stopping server waits for open requests: a follow ends (without `end`: an
            // EventSource reconnects, with Last-Event-ID, to the next server).
            if st.shutting_down.load(Ordering::SeqCst) {
                return;
            }
            if let Some(feed) = st.live.get(run) {
                // Subscribed before reading: what the file lacks, the feed has.
                let (mut rx_feed, len, done) = feed.follow(&step);
                drop(feed);
                if lines.send(&file, Some(len), &tx).await.is_err() {
                    return;
                }
                if let Some(status) = done {
                    let _ = tx.send(Event::default().event("end").data(status.as_str())).await;
                    return;
                }
                loop {
                    let item = tokio::select! {
                        item = rx_feed.recv() => item,
                        _ = tx.closed() => return,
                    };
                    match item {
                        Ok(live::Item::Line { step: s, line, end }) if s == step && end > lines.pos => {
                            lines.pos = end;
                            if tx.send(Event::default().id(end.to_string()).data(shown(line.as_bytes()))).await.is_err()
                            {
                                return;
                            }
                        }
                        Ok(live::Item::StepDone { step: s, status }) if s == step => {
                            let _ = tx.send(Event::default().event("end").data(status.as_str())).await;
                            return;
                        }
                        Ok(live::Item::RunDone { status }) => {
                            // The step never ended on its own (the run stopped first).
                            let _ = lines.send(&file, None, &tx).await;
                            let _ = tx.send(Event::default().event("end").data(status.as_str())).await;
                            return;
                        }
                        Ok(_) => {}
                        // Fell behind the feed, or the run just ended: the file again.
                        Err(_) => break,
                    }
                }
                continue;
            }
            // Not executing here: queued (wait for it), or over (its files are complete).
            let (steps, r) = (st.db.steps(run).await, st.db.run(run).await);
            let status = match (steps, r) {
                (_, Ok(None)) => Some("gone"),
                (Ok(steps), Ok(Some(r))) => {
                    let row = steps.iter().find(|s| s.name == step).map(|s| s.status);
                    match row {
                        Some(s) if s.is_done() => Some(s.as_str()),
                        _ if !r.status.is_active() => Some(r.status.as_str()),
                        _ => None,
                    }
                }
                _ => None,
            };
            if let Some(status) = status {
                if lines.send(&file, None, &tx).await.is_ok() {
                    let _ = tx.send(Event::default().event("end").data(status)).await;
                }
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|ev| (Ok::<Event, Infallible>(ev), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// A log file sent as events, line by line, from `pos` on.
struct FileLines {
    pos: u64,
    partial: Vec<u8>,
}

impl FileLines {
    /// Sends the lines of `file` from `pos` up to `upto` (its end when `None`), 16 KiB read
    /// at a time; `Err` when the client is gone.
    async fn send(
        &mut self,
        file: &FsPath,
        upto: Option<u64>,
        tx: &tokio::sync::mpsc::Sender<Event>,
    ) -> Result<(), ()> {
        let Ok(mut f) = tokio::fs::File::open(file).await else { return Ok(()) };
        let size = f.metadata().await.map(|m| m.len()).unwrap_or(0);
        // Logs only grow; a shorter file is a new one: read it from its start.
        if size < self.pos {
            self.pos = 0;
            self.partial.clear();
        }
        let upto = upto.unwrap_or(size).min(size);
        if upto <= self.pos || f.seek(std::io::SeekFrom::Start(self.pos)).await.is_err() {
            return Ok(());
        }
        let mut f = f.take(upto - self.pos);
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match f.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            self.pos += n as u64;
            self.partial.extend_from_slice(&buf[..n]);
            let mut consumed = 0;
            while let Some(nl) = self.partial[consumed..].iter().position(|&b| b == b'\n') {
                let end = consumed + nl + 1;
                let id = self.pos - (self.partial.len() - end) as u64;
                let ev = Event::default().id(id.to_string()).data(shown(&self.partial[consumed..end]));
                tx.send(ev).await.map_err(|_| ())?;
                consumed = end;
            }
            self.partial.drain(..consumed);
            if self.partial.len() > MAX_LINE {
                let ev = Event::default().id(self.pos.to_string()).data(shown(&self.partial));
                self.partial.clear();
                tx.send(ev).await.map_err(|_| ())?;
            }
        }
        Ok(())
    }
}

/// `GET /api/runs/{id}/artifacts/{step}/{*path}`
async fn get_artifact(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((id, step, path)): Path<(String, String, String)>,
) -> Response {
    if let Err(r) = authorize_read(&st, &headers) {
        return *r;
    }
    let run = match load_run(&st, &id).await {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let rel = FsPath::new(&path);
    if path.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return error(StatusCode::BAD_REQUEST, "an artifact path is relative and has no `..`");
    }
    let missing = || error(StatusCode::NOT_FOUND, format!("no artifact `{path}` of step `{step}` in run {}", run.id));
    // Opened beneath the step's directory: whatever links the path goes through, the
    // kernel keeps it there (and a device or FIFO is never opened for reading).
    let opened = Root::open(worker::run_dir(&st.cfg, run.id).join("artifacts"))
        .and_then(|r| r.sub(crate::plan::slug(&step)))
        .and_then(|r| r.open_file(rel));
    let Ok(f) = opened else { return missing() };
    let f = tokio::fs::File::from_std(f);
    let size = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    let name = rel.file_name().map(|n| n.to_string_lossy().replace('"', "")).unwrap_or_default();
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, size)
        .header(header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\""))
        .body(file_body(f, size))
        .unwrap_or_else(internal)
}

// ---------------------------------------------------------------------------------------
// Actions

fn queued(st: &AppState, id: i64, r: &NewRun) {
    st.counters.runs_queued.fetch_add(1, Ordering::Relaxed);
    st.report.send(Update::Queued(super::worker::new_run_ref(id, r)));
    st.wake.notify_one();
}

/// `POST /api/runs/{id}/cancel`
async fn cancel(State(st): State<Arc<AppState>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = authorize_write(&st, &headers) {
        return *r;
    }
    let run = match load_run(&st, &id).await {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let reason = "cancelled through the API".to_string();
    match run.status {
        RunState::Queued => match st.db.cancel_queued(run.id, reason.clone()).await {
            Ok(true) => {
                let run = st.db.run(run.id).await.ok().flatten().unwrap_or(run);
                super::report_cancelled(&st, vec![run.clone()]);
                return reply(StatusCode::ACCEPTED, json!({ "status": "cancelled", "run": run.id }));
            }
            // Claimed in between: it is running now.
            Ok(false) => {}
            Err(e) => return internal(e),
        },
        RunState::Running => {}
        other => {
            return error(StatusCode::CONFLICT, format!("run {} has already ended ({other})", run.id));
        }
    }
    st.cancel_run(run.id, &reason);
    reply(StatusCode::ACCEPTED, json!({ "status": "cancelling", "run": run.id }))
}

/// `POST /api/runs/{id}/rerun[?failed=true]`
async fn rerun(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = authorize_write(&st, &headers) {
        return *r;
    }
    let failed = match q.get("failed").map(String::as_str) {
        None | Some("false" | "0" | "no") => false,
        Some("" | "true" | "1" | "yes") => true,
        Some(v) => return error(StatusCode::BAD_REQUEST, format!("`failed` must be true or false, got `{v}`")),
    };
    let run = match load_run(&st, &id).await {
        Ok(r) => r,
        Err(r) => return *r,
    };
    if failed {
        if run.status.is_active() {
            return error(
                StatusCode::CONFLICT,
                format!("run {} has not ended: re-run its failed steps after it", run.id),
            );
        }
        if run.status == RunState::Success {
            return error(StatusCode::CONFLICT, format!("run {} passed: no failed step to re-run", run.id));
        }
    }
    let spec = run.spec.clone();
    match st.db.queue_rerun(spec.clone(), run.id, failed).await {
        Ok(new) => {
            tracing::info!(run = new, of = run.id, failed, "re-run queued through the API");
            queued(&st, new, &spec);
            reply(
                StatusCode::ACCEPTED,
                json!({ "status": "queued", "run": new, "rerun_of": run.id, "failed_only": failed }),
            )
        }
        Err(e) => internal(e),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Manual {
    repo: String,
    branch: String,
    sha: Option<String>,
    clone_url: Option<String>,
}

/// `POST /api/runs` `{"repo", "branch", "sha"?, "clone_url"?}`: a manual run.
async fn manual_run(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = authorize_write(&st, &headers) {
        return *r;
    }
    let m: Manual = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"repo\": \"owner/name\", \"branch\": \"...\", \"sha\"?, \"clone_url\"?}}: {e}"),
            );
        }
    };
    let valid_repo = m.repo.split('/').count() == 2 && m.repo.split('/').all(|p| !p.is_empty());
    if !valid_repo {
        return error(StatusCode::BAD_REQUEST, format!("`repo` is owner/name, got `{}`", m.repo));
    }
    if m.branch.is_empty() || m.branch.contains("..") || m.branch.starts_with('-') {
        return error(StatusCode::BAD_REQUEST, format!("`{}` is not a branch name", m.branch));
    }
    if let Some(sha) = &m.sha
        && !(sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return error(StatusCode::BAD_REQUEST, format!("`sha` is a full 40-digit commit id, got `{sha}`"));
    }
    if !st.cfg.allow_repos.is_empty() && !st.cfg.allow_repos.contains(&m.repo) {
        return error(StatusCode::BAD_REQUEST, format!("repository `{}` is not in the allow-list", m.repo));
    }
    // A network address, never a path on the server (whose files are not the repository's).
    if let Some(url) = &m.clone_url {
        if !["https://", "http://", "git://", "ssh://"].iter().any(|p| url.starts_with(p)) {
            return error(
                StatusCode::BAD_REQUEST,
                format!("`clone_url` must be an https, http, git or ssh URL, got `{}`", crate::checkout::redact(url)),
            );
        }
        // Credentials would be stored with the run and shown with it: they belong in a
        // clone rewrite of the server's settings.
        if crate::checkout::redact(url) != *url {
            return error(
                StatusCode::BAD_REQUEST,
                "`clone_url` must not hold credentials (user:password@); set them in a clone rewrite of the server",
            );
        }
    }
    let latest = st
        .db
        .runs_where(RunFilter { repo: Some(m.repo.clone()), limit: 1, ..Default::default() })
        .await
        .ok()
        .and_then(|r| r.into_iter().next());
    let clone_url = m
        .clone_url
        .clone()
        .or_else(|| latest.as_ref().map(|r| r.spec.clone_url.clone()))
        .unwrap_or_else(|| format!("https://github.com/{}.git", m.repo));
    let sha = match m.sha {
        Some(s) => s.to_lowercase(),
        None => {
            let installation = latest.as_ref().and_then(|r| r.spec.installation_id);
            let (url, auth) = super::clone_source(&st, &clone_url, &m.repo, installation).await;
            let branch = m.branch.clone();
            let head = move || crate::checkout::branch_head(&url, &branch, auth.as_ref());
            match tokio::task::spawn_blocking(head).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, e),
                Err(e) => return internal(e),
            }
        }
    };
    let spec = NewRun {
        concurrency_key: Some(format!("{}#branch:{}", m.repo, m.branch)),
        default_branch: latest.as_ref().and_then(|r| r.spec.default_branch.clone()),
        installation_id: latest.as_ref().and_then(|r| r.spec.installation_id),
        repo: m.repo,
        clone_url,
        event: "manual".into(),
        branch: Some(m.branch),
        sha,
        title: Some("manual run".into()),
        ..Default::default()
    };
    match st.db.queue_run(spec.clone(), false).await {
        Ok((id, _, _)) => {
            tracing::info!(run = id, repo = %spec.repo, sha = %spec.sha, "manual run queued through the API");
            queued(&st, id, &spec);
            reply(StatusCode::ACCEPTED, json!({ "status": "queued", "run": id, "sha": spec.sha }))
        }
        Err(e) => internal(e),
    }
}

// ---------------------------------------------------------------------------------------
// Operations

/// `GET /api/openapi.yaml`: the API's OpenAPI description (docs/openapi.yaml).
async fn openapi() -> Response {
    const SPEC: &str = include_str!("../../docs/openapi.yaml");
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/yaml")], SPEC).into_response()
}

const WAIT_BUCKETS: &[f64] = &[1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 3600.0];
const STEP_BUCKETS: &[f64] = &[1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0];

fn histogram(out: &mut String, name: &str, labels: &str, buckets: &[f64], values: &[f64]) {
    let sep = if labels.is_empty() { "" } else { "," };
    for b in buckets {
        let n = values.iter().filter(|v| **v <= *b).count();
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", values.len());
    let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
    let _ = writeln!(out, "{name}_sum{braces} {}", values.iter().fold(0.0, |a, v| a + v));
    let _ = writeln!(out, "{name}_count{braces} {}", values.len());
}

/// `GET /metrics`: Prometheus text format 0.0.4.
async fn metrics(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize_read(&st, &headers) {
        return *r;
    }
    let (counts, waits, steps) =
        match (st.db.status_counts().await, st.db.queue_waits().await, st.db.step_durations().await) {
            (Ok(c), Ok(w), Ok(s)) => (c, w, s),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return internal(e),
        };
    let c = &st.counters;
    let mut o = String::new();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let accepted = load(&c.deliveries).saturating_sub(load(&c.duplicates));
    o.push_str(
        "# HELP orch_deliveries_total Webhook deliveries received, by outcome.\n# TYPE orch_deliveries_total counter\n",
    );
    let _ = writeln!(o, "orch_deliveries_total{{outcome=\"accepted\"}} {accepted}");
    let _ = writeln!(o, "orch_deliveries_total{{outcome=\"rejected\"}} {}", load(&c.rejected));
    let _ = writeln!(o, "orch_deliveries_total{{outcome=\"duplicate\"}} {}", load(&c.duplicates));
    o.push_str("# HELP orch_runs Runs in the database, by status.\n# TYPE orch_runs gauge\n");
    let count = |s: RunState| counts.iter().find(|(k, _)| *k == s).map_or(0, |(_, n)| *n);
    for s in RunState::ALL {
        let _ = writeln!(o, "orch_runs{{status=\"{s}\"}} {}", count(*s));
    }
    o.push_str("# HELP orch_queue_length Runs waiting for a worker.\n# TYPE orch_queue_length gauge\n");
    let _ = writeln!(o, "orch_queue_length {}", count(RunState::Queued));
    o.push_str(
        "# HELP orch_queue_wait_seconds Time from queued to started.\n# TYPE orch_queue_wait_seconds histogram\n",
    );
    histogram(&mut o, "orch_queue_wait_seconds", "", WAIT_BUCKETS, &waits);
    o.push_str(
        "# HELP orch_step_duration_seconds Time steps took, by how they ended.\n# TYPE orch_step_duration_seconds histogram\n",
    );
    let mut by_status: Vec<StepState> = steps.iter().map(|(s, _)| *s).collect();
    by_status.sort_unstable_by_key(|s| s.as_str());
    by_status.dedup();
    for s in by_status {
        let v: Vec<f64> = steps.iter().filter(|(k, _)| *k == s).map(|(_, d)| *d).collect();
        histogram(&mut o, "orch_step_duration_seconds", &format!("status=\"{s}\""), STEP_BUCKETS, &v);
    }
    o.push_str("# HELP orch_github_requests_total Requests to GitHub's API (each attempt).\n# TYPE orch_github_requests_total counter\n");
    let _ = writeln!(o, "orch_github_requests_total{{result=\"ok\"}} {}", load(&c.github.ok));
    let _ = writeln!(o, "orch_github_requests_total{{result=\"error\"}} {}", load(&c.github.error));
    o.push_str("# HELP orch_containers_running Step containers running now.\n# TYPE orch_containers_running gauge\n");
    let _ = writeln!(o, "orch_containers_running {}", c.containers_running.load(Ordering::Relaxed).max(0));
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], o).into_response()
}

/// `GET /readyz`: 200 when the database answers and Docker pings; 503 says which did not.
/// What went wrong is shown only
/// with the API token (or a dashboard session): an error text can tell a stranger about
/// the host.
async fn readyz(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let detailed = authorize_write(&st, &headers).is_ok() || has_session(&st, &headers);
    let limit = Duration::from_secs(5);
    let db = match tokio::time::timeout(limit, st.db.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer in 5s".to_string()),
    };
    let docker = match tokio::time::timeout(limit, crate::exec::docker::DockerBackend::connect()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer in 5s".to_string()),
    };
    let show = |r: &Result<(), String>| match r {
        Ok(()) => json!("ok"),
        Err(e) if detailed => json!(e),
        Err(_) => json!("unavailable"),
    };
    let code = if db.is_ok() && docker.is_ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    reply(code, json!({ "database": show(&db), "docker": show(&docker), "ready": code == StatusCode::OK }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ranges() {
        assert_eq!(byte_range("bytes=0-", 10), Some((0, 10)));
        assert_eq!(byte_range("bytes=4-5", 10), Some((4, 6)));
        assert_eq!(byte_range("bytes=4-99", 10), Some((4, 10)));
        assert_eq!(byte_range("bytes=-3", 10), Some((7, 10)));
        for bad in ["bytes=10-", "bytes=5-4", "bytes=x-", "items=0-", "bytes=0-1,3-4", "bytes=-0"] {
            assert_eq!(byte_range(bad, 10), None, "{bad}");
        }
    }

    #[test]
    fn a_line_is_what_a_terminal_shows() {
        assert_eq!(shown(b"plain\n"), "plain");
        assert_eq!(shown(b"10%\r50%\r100%\r\n"), "100%");
        assert_eq!(shown(b"bad \xff byte\n"), "bad \u{fffd} byte");
    }

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let mut o = String::new();
        histogram(&mut o, "h", "status=\"passed\"", &[1.0, 10.0], &[0.5, 2.0, 20.0]);
        assert_eq!(
            o,
            "h_bucket{status=\"passed\",le=\"1\"} 1\nh_bucket{status=\"passed\",le=\"10\"} 2\n\
             h_bucket{status=\"passed\",le=\"+Inf\"} 3\nh_sum{status=\"passed\"} 22.5\nh_count{status=\"passed\"} 3\n"
        );
        let mut o = String::new();
        histogram(&mut o, "w", "", &[1.0], &[]);
        assert_eq!(o, "w_bucket{le=\"1\"} 0\nw_bucket{le=\"+Inf\"} 0\nw_sum 0\nw_count 0\n");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd") && !same(b"abc", b"ab") && !same(b"", b"a"));
    }
}
