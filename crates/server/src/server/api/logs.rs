//! Step logs (whole, from an offset, a byte range, or followed as Server-Sent Events) and
//! artifact files.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Component, Path as FsPath, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::confined::Root;
use crate::server::{AppState, live, worker};

use super::*;

/// How often a follower of a run that is not executing here (queued) looks again.
const POLL: Duration = Duration::from_millis(200);
/// A log line longer than this is sent in pieces.
const MAX_LINE: usize = 64 * 1024;

fn log_file(st: &AppState, id: i64, step: &str) -> PathBuf {
    worker::run_dir(&st.cfg, id).join("logs").join(format!("{}.log", crate::plan::slug(step)))
}

/// `GET /api/runs/{id}/logs/{step}`: whole, `?offset=N`, or followed (`?follow=1` or
/// `Accept: text/event-stream`) as Server-Sent Events.
pub(super) async fn get_log(
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
                        Ok(live::Item::Lines { step: s, text, end }) if s == step && end > lines.pos => {
                            // An event per line, its id the byte where it ends.
                            let mut at = end - text.len() as u64;
                            for line in text.split_inclusive('\n') {
                                at += line.len() as u64;
                                if at <= lines.pos {
                                    continue;
                                }
                                lines.pos = at;
                                let ev = Event::default().id(at.to_string()).data(shown(line.as_bytes()));
                                if tx.send(ev).await.is_err() {
                                    return;
                                }
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
pub(super) async fn get_artifact(
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
}
