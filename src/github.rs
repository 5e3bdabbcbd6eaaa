//! Reporting runs back to GitHub: commit statuses (personal access token) or check runs with
//! a summary and annotations (GitHub App). One task sends the updates in order; a request
//! GitHub answers with 5xx, 429 or not at all is retried with backoff; a run never fails
//! and intake never waits because of reporting.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use octocrab::Octocrab;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// GitHub's limit on a status description.
pub const MAX_DESCRIPTION: usize = 140;
/// GitHub's limit on annotations per request.
pub const MAX_ANNOTATIONS: usize = 50;
const MAX_SUMMARY: usize = 65_535;
const ATTEMPTS: u32 = 6;

#[derive(Debug, Clone)]
pub enum Auth {
    None,
    Token(String),
    App { app_id: u64, key_pem: Vec<u8> },
}

/// How runs are reported (the credentials and the API's address are [`Github`]'s).
#[derive(Debug, Clone)]
pub struct Config {
    /// The server's public URL; statuses link to `<url>/runs/<id>`.
    pub public_url: String,
    /// Also post one status per step (`orch/<step>`), token mode.
    pub step_statuses: bool,
    /// The status context / check run name; each event gets its own: `orch (push)`,
    /// `orch (pull_request)`, `orch (manual)`.
    pub context: String,
}

/// Which run an update is about.
#[derive(Debug, Clone)]
pub struct RunRef {
    pub id: i64,
    /// owner/name
    pub repo: String,
    pub sha: String,
    /// The run's event: `push`, `tag`, `pull_request` or `manual`.
    pub event: String,
    pub installation_id: Option<u64>,
    /// The run's check run (App mode), as recorded by a previous server process.
    pub check_run_id: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Annotation {
    pub path: String,
    pub start_line: u32,
    pub end_line: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_column: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_column: Option<u32>,
    /// notice, warning or failure
    pub annotation_level: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

/// The final state of a run as GitHub shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conclusion {
    Success,
    Failure,
    Cancelled,
    TimedOut,
    Error,
    Skipped,
}

impl Conclusion {
    fn status_state(self) -> &'static str {
        match self {
            Conclusion::Success | Conclusion::Skipped => "success",
            Conclusion::Failure | Conclusion::TimedOut => "failure",
            // A cancelled run is not green: shown as an error, as other CI systems do.
            Conclusion::Cancelled | Conclusion::Error => "error",
        }
    }

    fn check_conclusion(self) -> &'static str {
        match self {
            Conclusion::Success => "success",
            Conclusion::Failure | Conclusion::Error => "failure",
            Conclusion::Cancelled => "cancelled",
            Conclusion::TimedOut => "timed_out",
            Conclusion::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone)]
pub enum Update {
    Queued(RunRef),
    Started(RunRef),
    /// A step ended (token mode with step statuses).
    Step {
        run: RunRef,
        step: String,
        conclusion: Conclusion,
        description: String,
    },
    Finished {
        run: RunRef,
        conclusion: Conclusion,
        /// One line, for the status description (cut to 140 characters).
        description: String,
        /// Markdown, for the check run summary.
        summary: String,
        annotations: Vec<Annotation>,
    },
}

impl Update {
    pub fn run(&self) -> &RunRef {
        match self {
            Update::Queued(run) | Update::Started(run) => run,
            Update::Step { run, .. } | Update::Finished { run, .. } => run,
        }
    }
}

/// The GitHub event a run's event comes from: a tag is pushed.
fn github_event(event: &str) -> &str {
    match event {
        "tag" => "push",
        other => other,
    }
}

/// A request GitHub did not accept in the end.
#[derive(Debug, thiserror::Error)]
#[error("GitHub: {0}")]
pub struct ReportError(pub String);

/// Cuts `s` to at most `max` characters, ending with `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn iso(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let (y, m, d, h, mi, s) = crate::clock::utc(secs);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// GitHub requests made (every attempt), for `/metrics`.
#[derive(Debug, Default)]
pub struct RequestCounters {
    pub ok: std::sync::atomic::AtomicU64,
    pub error: std::sync::atomic::AtomicU64,
}

/// What the reporter and the server's clones share: the client for the configured
/// credentials, retries with backoff, request counting and, for a GitHub App, installation
/// tokens (minted once, kept until shortly before they expire). Cheap to clone.
#[derive(Clone)]
pub struct Github {
    api_url: String,
    /// The token client, or the App's (signing its requests with a JWT).
    client: Option<Octocrab>,
    app: bool,
    backoff: Duration,
    counters: Arc<RequestCounters>,
    installations: Arc<tokio::sync::Mutex<Installations>>,
}

#[derive(Default)]
struct Installations {
    /// Installation ids by repository, for runs whose delivery named none (manual runs,
    /// re-runs): one lookup per repository.
    by_repo: HashMap<String, u64>,
    by_id: HashMap<u64, Minted>,
}

struct Minted {
    token: String,
    /// GitHub's tokens last an hour: a new one is minted after 50 minutes.
    until: std::time::Instant,
    client: Arc<Octocrab>,
}

const TOKEN_LIFE: Duration = Duration::from_secs(50 * 60);

fn builder(
    api_url: &str,
) -> Result<
    octocrab::OctocrabBuilder<
        octocrab::NoSvc,
        octocrab::DefaultOctocrabBuilderConfig,
        octocrab::NoAuth,
        octocrab::NotLayerReady,
    >,
    ReportError,
> {
    Octocrab::builder().base_uri(api_url).map_err(|e| ReportError(format!("bad GitHub URL `{api_url}`: {e}"))).map(
        |b| {
            b.add_retry_config(octocrab::service::middleware::retry::RetryConfig::None)
                .set_connect_timeout(Some(Duration::from_secs(10)))
                .set_read_timeout(Some(Duration::from_secs(30)))
        },
    )
}

impl Github {
    pub fn new(api_url: &str, auth: &Auth, backoff: Duration) -> Result<Github, ReportError> {
        let client = match auth {
            Auth::None => None,
            Auth::Token(t) => {
                Some(builder(api_url)?.personal_token(t.clone()).build().map_err(|e| ReportError(e.to_string()))?)
            }
            Auth::App { app_id, key_pem } => {
                let key = octocrab::EncodingKey::from_rsa_pem(key_pem)
                    .map_err(|e| ReportError(format!("the GitHub App key is not an RSA private key in PEM: {e}")))?;
                Some(builder(api_url)?.app((*app_id).into(), key).build().map_err(|e| ReportError(e.to_string()))?)
            }
        };
        Ok(Github {
            api_url: api_url.to_string(),
            client,
            app: matches!(auth, Auth::App { .. }),
            backoff,
            counters: Arc::default(),
            installations: Arc::default(),
        })
    }

    /// Every request attempt, for `/metrics`.
    pub fn counters(&self) -> Arc<RequestCounters> {
        self.counters.clone()
    }

    pub fn enabled(&self) -> bool {
        self.client.is_some()
    }

    pub fn is_app(&self) -> bool {
        self.app
    }

    /// Sends one request, retrying transient failures with exponential backoff.
    async fn request<F, Fut>(&self, what: &str, mut f: F) -> Result<Value, ReportError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = octocrab::Result<Value>>,
    {
        let mut delay = self.backoff;
        for attempt in 1..=ATTEMPTS {
            let r = f().await;
            let which = if r.is_ok() { &self.counters.ok } else { &self.counters.error };
            which.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match r {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let (retry, msg) = classify(&e);
                    if !retry || attempt == ATTEMPTS {
                        tracing::warn!(request = what, attempt, "GitHub refused: {msg}");
                        return Err(ReportError(format!("{what}: {msg}")));
                    }
                    tracing::info!(request = what, attempt, "GitHub failed ({msg}); retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
        Err(ReportError(format!("{what}: gave up")))
    }

    /// The client that acts for `repo`: the token client, or (App) the installation's.
    async fn client_for(&self, repo: &str, installation: Option<u64>) -> Result<Arc<Octocrab>, ReportError> {
        let Some(base) = &self.client else { return Err(ReportError("no GitHub credentials".into())) };
        if !self.app {
            return Ok(Arc::new(base.clone()));
        }
        self.installation(repo, installation).await.map(|(_, client)| client)
    }

    /// The installation token (and a client using it) for `repo`, App mode: minted when
    /// there is none or it is about to expire. The lock is held while minting, so that
    /// concurrent callers share one token.
    async fn installation(
        &self,
        repo: &str,
        installation: Option<u64>,
    ) -> Result<(String, Arc<Octocrab>), ReportError> {
        let Some(app) = self.client.as_ref().filter(|_| self.app) else {
            return Err(ReportError("not a GitHub App".into()));
        };
        let mut inst = self.installations.lock().await;
        let id = match installation.or_else(|| inst.by_repo.get(repo).copied()) {
            Some(id) => id,
            None => {
                let route = format!("/repos/{repo}/installation");
                let v = self.request(&format!("GET {route}"), || app.get(route.clone(), None::<&()>)).await?;
                v.get("id").and_then(Value::as_u64).ok_or_else(|| ReportError("no installation id".into()))?
            }
        };
        inst.by_repo.insert(repo.to_string(), id);
        if let Some(m) = inst.by_id.get(&id).filter(|m| m.until > std::time::Instant::now()) {
            return Ok((m.token.clone(), m.client.clone()));
        }
        let route = format!("/app/installations/{id}/access_tokens");
        let v = self.request(&format!("POST {route}"), || app.post(route.clone(), None::<&()>)).await?;
        let token =
            v.get("token").and_then(Value::as_str).ok_or_else(|| ReportError("no token in the answer".into()))?;
        let client = builder(&self.api_url)?
            .personal_token(token.to_string())
            .build()
            .map_err(|e| ReportError(e.to_string()))?;
        let m = Minted {
            token: token.to_string(),
            until: std::time::Instant::now() + TOKEN_LIFE,
            client: Arc::new(client),
        };
        let out = (m.token.clone(), m.client.clone());
        inst.by_id.insert(id, m);
        Ok(out)
    }

    /// The token a clone of `repo` sends when the git server asks: the App installation's,
    /// else `fallback` (the configured token). A failure to mint falls back too.
    pub async fn clone_token(&self, repo: &str, installation: Option<u64>, fallback: Option<String>) -> Option<String> {
        if !self.app {
            return fallback;
        }
        match self.installation(repo, installation).await {
            Ok((token, _)) => Some(token),
            Err(e) => {
                tracing::warn!(repo, "no installation token for the clone: {e}");
                fallback
            }
        }
    }
}

pub struct Reporter {
    cfg: Config,
    gh: Github,
    /// Check run ids (App mode), by run id.
    check_runs: HashMap<i64, u64>,
    /// Told each check run created (run id, check run id), to keep it across restarts.
    on_check_run: Option<Box<dyn Fn(i64, u64) + Send + Sync>>,
}

impl Reporter {
    pub fn new(cfg: Config, gh: Github) -> Reporter {
        Reporter { cfg, gh, check_runs: HashMap::new(), on_check_run: None }
    }

    /// Calls `f(run id, check run id)` for each check run created.
    pub fn on_check_run(mut self, f: impl Fn(i64, u64) + Send + Sync + 'static) -> Reporter {
        self.on_check_run = Some(Box::new(f));
        self
    }

    fn created_check_run(&mut self, run: i64, created: &Value) {
        if let Some(id) = created.get("id").and_then(Value::as_u64) {
            self.check_runs.insert(run, id);
            if let Some(f) = &self.on_check_run {
                f(run, id);
            }
        }
    }

    pub fn enabled(&self) -> bool {
        self.gh.enabled()
    }

    fn is_app(&self) -> bool {
        self.gh.is_app()
    }

    fn target_url(&self, run: &RunRef) -> String {
        format!("{}/runs/{}", self.cfg.public_url.trim_end_matches('/'), run.id)
    }

    async fn client_for(&self, run: &RunRef) -> Result<Arc<Octocrab>, ReportError> {
        self.gh.client_for(&run.repo, run.installation_id).await
    }

    async fn with_retry<F, Fut>(&self, what: &str, f: F) -> Result<Value, ReportError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = octocrab::Result<Value>>,
    {
        self.gh.request(what, f).await
    }

    async fn status(&mut self, run: &RunRef, context: &str, state: &str, description: &str) -> Result<(), ReportError> {
        let client = self.client_for(run).await?;
        let body = json!({
            "state": state,
            "target_url": self.target_url(run),
            "description": truncate(description, MAX_DESCRIPTION),
            "context": context,
        });
        let route = format!("/repos/{}/statuses/{}", run.repo, run.sha);
        self.with_retry(&format!("POST {route}"), || client.post(route.clone(), Some(&body))).await.map(|_| ())
    }

    /// The status context or check run name of `run`'s event. A commit pushed to a branch
    /// with an open pull request has a push run and a pull request run: one context for
    /// both would show whichever reported last, and a push run that is not triggered (green)
    /// could hide a failed pull request run.
    fn context_of(&self, run: &RunRef) -> String {
        format!("{} ({})", self.cfg.context, github_event(&run.event))
    }

    /// Applies one update. Errors are returned for logging; nothing else depends on them.
    pub async fn send(&mut self, u: &Update) -> Result<(), ReportError> {
        if !self.gh.enabled() {
            return Ok(());
        }
        let ctx = self.context_of(u.run());
        match u {
            Update::Queued(run) if self.is_app() => {
                let client = self.client_for(run).await?;
                let body = json!({
                    "name": ctx,
                    "head_sha": run.sha,
                    "status": "queued",
                    "details_url": self.target_url(run),
                    "external_id": run.id.to_string(),
                });
                let route = format!("/repos/{}/check-runs", run.repo);
                let created =
                    self.with_retry(&format!("POST {route}"), || client.post(route.clone(), Some(&body))).await?;
                self.created_check_run(run.id, &created);
                Ok(())
            }
            Update::Queued(run) => self.status(run, &ctx, "pending", "Queued").await,
            Update::Started(run) if self.is_app() => {
                let body = json!({ "status": "in_progress", "started_at": iso(std::time::SystemTime::now()) });
                self.patch_check_run(run, body).await
            }
            Update::Started(run) => self.status(run, &ctx, "pending", "Running").await,
            Update::Step { run, step, conclusion, description } => {
                if self.is_app() || !self.cfg.step_statuses {
                    return Ok(());
                }
                let step_ctx = format!("{}/{step} ({})", self.cfg.context, github_event(&run.event));
                self.status(run, &step_ctx, conclusion.status_state(), description).await
            }
            Update::Finished { run, conclusion, description, summary, annotations } if self.is_app() => {
                let title = truncate(description, 255);
                let summary = truncate(summary, MAX_SUMMARY);
                let mut chunks = annotations.chunks(MAX_ANNOTATIONS);
                let first: Vec<&Annotation> = chunks.next().map(|c| c.iter().collect()).unwrap_or_default();
                let body = json!({
                    "status": "completed",
                    "conclusion": conclusion.check_conclusion(),
                    "completed_at": iso(std::time::SystemTime::now()),
                    "output": { "title": title, "summary": summary, "annotations": first },
                });
                self.patch_check_run(run, body).await?;
                // GitHub appends the annotations of each further update.
                for chunk in chunks {
                    let body = json!({ "output": { "title": title, "summary": summary, "annotations": chunk } });
                    self.patch_check_run(run, body).await?;
                }
                Ok(())
            }
            Update::Finished { run, conclusion, description, .. } => {
                self.status(run, &ctx, conclusion.status_state(), description).await
            }
        }
    }

    async fn patch_check_run(&mut self, run: &RunRef, body: Value) -> Result<(), ReportError> {
        let client = self.client_for(run).await?;
        let Some(id) = self.check_runs.get(&run.id).copied().or(run.check_run_id) else {
            // The queued update never reached GitHub: create the check run now.
            let mut create = body.clone();
            create["name"] = json!(self.context_of(run));
            create["head_sha"] = json!(run.sha);
            create["details_url"] = json!(self.target_url(run));
            create["external_id"] = json!(run.id.to_string());
            let route = format!("/repos/{}/check-runs", run.repo);
            let created =
                self.with_retry(&format!("POST {route}"), || client.post(route.clone(), Some(&create))).await?;
            self.created_check_run(run.id, &created);
            return Ok(());
        };
        let route = format!("/repos/{}/check-runs/{id}", run.repo);
        self.with_retry(&format!("PATCH {route}"), || client.patch(route.clone(), Some(&body))).await.map(|_| ())
    }
}

/// Whether an error is worth retrying, and what to say about it.
fn classify(e: &octocrab::Error) -> (bool, String) {
    match e {
        octocrab::Error::GitHub { source, .. } => {
            let code = source.status_code.as_u16();
            (code >= 500 || code == 429 || code == 408, format!("HTTP {code}: {}", source.message))
        }
        // JSON that did not parse: the request itself went through.
        octocrab::Error::Serde { .. } | octocrab::Error::Json { .. } => (false, e.to_string()),
        other => (true, other.to_string()),
    }
}

/// Starts the reporting task. Updates are applied in order; the channel is large, and a
/// full channel drops the update (with a log line) rather than stall the caller.
pub fn spawn(mut reporter: Reporter) -> ReportSender {
    let (tx, mut rx) = mpsc::channel::<Update>(10_000);
    tokio::spawn(async move {
        while let Some(u) = rx.recv().await {
            if let Err(e) = reporter.send(&u).await {
                tracing::warn!("{e}");
            }
        }
    });
    ReportSender { tx }
}

#[derive(Clone)]
pub struct ReportSender {
    tx: mpsc::Sender<Update>,
}

impl ReportSender {
    pub fn send(&self, u: Update) {
        if self.tx.try_send(u).is_err() {
            tracing::warn!("GitHub reporting is behind; an update was dropped");
        }
    }
}

/// Annotations from compiler-style lines in a failed step's log:
/// `path:line:col: error: message`, `path:line: warning: message`. The log is read line by
/// line (a line past 64 KiB is skipped), so memory stays flat whatever its size.
pub fn annotations_from_log(mut log: impl std::io::BufRead, limit: usize) -> Vec<Annotation> {
    use std::io::BufRead;
    const MAX: u64 = 64 * 1024;
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while out.len() < limit {
        buf.clear();
        match std::io::Read::take(&mut log, MAX).read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if !buf.ends_with(b"\n") && buf.len() as u64 == MAX {
            // The rest of an overlong line.
            let mut skip = Vec::new();
            while matches!(std::io::Read::take(&mut log, MAX).read_until(b'\n', &mut skip), Ok(n) if n > 0)
                && !skip.ends_with(b"\n")
            {
                skip.clear();
            }
            continue;
        }
        let line = String::from_utf8_lossy(&buf);
        if let Some(a) = parse_annotation(line.trim())
            && !out.contains(&a)
        {
            out.push(a);
        }
    }
    out
}

fn parse_annotation(line: &str) -> Option<Annotation> {
    let mut parts = line.splitn(5, ':');
    let path = parts.next()?.trim();
    // Absolute container paths become relative to the workspace.
    let path = path.strip_prefix("/workspace/").unwrap_or(path);
    if path.is_empty() || path.contains(char::is_whitespace) || path.starts_with('/') {
        return None;
    }
    let line_no: u32 = parts.next()?.trim().parse().ok()?;
    let rest: Vec<&str> = parts.collect();
    let (col, level, msg) = match rest.as_slice() {
        [c, l, m] if c.trim().parse::<u32>().is_ok() => (c.trim().parse().ok(), l.trim(), m.trim().to_string()),
        [c, l] if c.trim().parse::<u32>().is_ok() => {
            let (l, m) = l.trim().split_once(' ')?;
            (c.trim().parse().ok(), l, m.to_string())
        }
        [l, m] => (None, l.trim(), m.trim().to_string()),
        [l, m, more] => (None, l.trim(), format!("{}:{}", m.trim(), more)),
        _ => return None,
    };
    let level = match level.to_ascii_lowercase().as_str() {
        "error" | "fatal" | "fatal error" => "failure",
        "warning" | "warn" => "warning",
        "note" | "info" => "notice",
        _ => return None,
    };
    if msg.is_empty() {
        return None;
    }
    Some(Annotation {
        path: path.to_string(),
        start_line: line_no,
        end_line: line_no,
        start_column: col,
        end_column: col,
        annotation_level: level.to_string(),
        message: truncate(&msg, 60_000),
        title: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_compiler_lines() {
        let log = "compiling\nsrc/main.rs:12:5: error: expected `;`\n/workspace/lib/a.c:3: warning: unused x\nnot: an: annotation\nsrc/main.rs:12:5: error: expected `;`\n";
        let a = annotations_from_log(log.as_bytes(), 50);
        assert_eq!(a.len(), 2);
        assert_eq!((a[0].path.as_str(), a[0].start_line, a[0].start_column), ("src/main.rs", 12, Some(5)));
        assert_eq!(a[0].annotation_level, "failure");
        assert_eq!(a[0].message, "expected `;`");
        assert_eq!((a[1].path.as_str(), a[1].annotation_level.as_str()), ("lib/a.c", "warning"));
    }

    #[test]
    fn an_overlong_line_is_skipped_whole() {
        let mut log = format!("a.rs:1: error: {}", "x".repeat(200_000)).into_bytes();
        log.extend_from_slice(b"\nb.rs:2: error: real\n");
        let a = annotations_from_log(&log[..], 50);
        assert_eq!(a.iter().map(|a| a.path.as_str()).collect::<Vec<_>>(), ["b.rs"]);
    }

    #[test]
    fn descriptions_fit() {
        let long = "x".repeat(500);
        assert_eq!(truncate(&long, MAX_DESCRIPTION).chars().count(), MAX_DESCRIPTION);
        assert_eq!(truncate("short", 140), "short");
    }
}
