//! Reporting runs back to GitHub: commit statuses (personal access token) or check runs with
//! a summary and annotations (GitHub App). One task sends the updates in order; a request
//! GitHub answers with 5xx, 429 or not at all is retried with backoff; a run never fails
//! and intake never waits because of reporting.
//!
//! `Github` (here) is the shared core: the credentials' client, retries, request counters,
//! an App's installation tokens. `report`: the reporter task (statuses or check runs).
//! `annotations`: annotations from failed logs.

mod annotations;
mod report;

pub use annotations::annotations_from_log;
pub use report::{ReportSender, Reporter, spawn};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use octocrab::Octocrab;
use serde_json::Value;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_fit() {
        let long = "x".repeat(500);
        assert_eq!(truncate(&long, MAX_DESCRIPTION).chars().count(), MAX_DESCRIPTION);
        assert_eq!(truncate("short", 140), "short");
    }
}
