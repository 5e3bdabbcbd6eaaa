//! Reporting runs back to GitHub: commit statuses (personal access token) or check runs with
//! a summary and annotations (GitHub App). One task sends the updates in order; a request
//! GitHub answers with 5xx, 408, 429, a rate-limit 403 or not at all is retried, after the
//! time GitHub's headers name (`Retry-After`, `x-ratelimit-reset`) or with backoff; a run
//! never fails and intake never waits because of reporting.
//!
//! `Github` (here) is the shared core: the credentials' client, retries, request counters,
//! an App's installation tokens. `report`: the reporter (statuses or check runs), which
//! the server's outbox feeds in order.
//! `annotations`: annotations from failed logs. A step with an `environment` is also a
//! GitHub deployment of the run's commit, with its states.

mod annotations;
mod report;

pub use annotations::annotations_from_log;
pub use report::Reporter;

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
/// The longest wait for one retry, whatever GitHub's headers say: the reporter sends in
/// order, so one wait holds every later update.
const MAX_WAIT: Duration = Duration::from_secs(60);

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
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// What a run tells GitHub. It is stored (serialized) until sent: see `server::outbox`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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
    /// The run waits (a deployment for approval): `description` says for what and whom.
    Waiting {
        run: RunRef,
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
    /// A step started deploying: GitHub makes a deployment of the commit.
    Deployment {
        run: RunRef,
        /// The server's deployment id (its row).
        deployment: i64,
        step: String,
        environment: String,
    },
    /// A deployment's state. Its GitHub id is looked up when it is sent: the deployment
    /// may have been made after this update was stored.
    DeploymentState {
        run: RunRef,
        deployment: i64,
        github_id: Option<u64>,
        state: DeployState,
        environment_url: Option<String>,
        description: String,
    },
}

/// A deployment's state on GitHub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployState {
    InProgress,
    Success,
    Failure,
    Error,
    Inactive,
}

impl DeployState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeployState::InProgress => "in_progress",
            DeployState::Success => "success",
            DeployState::Failure => "failure",
            DeployState::Error => "error",
            DeployState::Inactive => "inactive",
        }
    }
}

impl Update {
    pub fn run(&self) -> &RunRef {
        match self {
            Update::Queued(run) | Update::Started(run) => run,
            Update::Step { run, .. } | Update::Waiting { run, .. } | Update::Finished { run, .. } => run,
            Update::Deployment { run, .. } | Update::DeploymentState { run, .. } => run,
        }
    }

    pub fn run_mut(&mut self) -> &mut RunRef {
        match self {
            Update::Queued(run) | Update::Started(run) => run,
            Update::Step { run, .. } | Update::Waiting { run, .. } | Update::Finished { run, .. } => run,
            Update::Deployment { run, .. } | Update::DeploymentState { run, .. } => run,
        }
    }
}

/// Whether GitHub should show `environment` as one end users use (`production`, `prod`,
/// `production-eu`, ...).
pub fn is_production(environment: &str) -> bool {
    let e = environment.to_ascii_lowercase();
    e == "prod" || e.starts_with("production") || e.starts_with("prod-") || e.starts_with("prod_")
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
#[error("GitHub: {msg}")]
pub struct ReportError {
    pub msg: String,
    /// GitHub did not answer, was rate limiting, or kept failing (5xx): the same request
    /// may pass later. Otherwise GitHub refused it for good.
    pub transient: bool,
}

impl ReportError {
    pub fn new(msg: impl Into<String>) -> ReportError {
        ReportError { msg: msg.into(), transient: false }
    }
}

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
    crate::clock::format_utc(secs, "%Y-%m-%dT%H:%M:%SZ")
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
    Octocrab::builder().base_uri(api_url).map_err(|e| ReportError::new(format!("bad GitHub URL `{api_url}`: {e}"))).map(
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
                Some(builder(api_url)?.personal_token(t.clone()).build().map_err(|e| ReportError::new(e.to_string()))?)
            }
            Auth::App { app_id, key_pem } => {
                let key = octocrab::EncodingKey::from_rsa_pem(key_pem).map_err(|e| {
                    ReportError::new(format!("the GitHub App key is not an RSA private key in PEM: {e}"))
                })?;
                Some(
                    builder(api_url)?
                        .app((*app_id).into(), key)
                        .build()
                        .map_err(|e| ReportError::new(e.to_string()))?,
                )
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

    /// Sends one request (`f` sends it and hands back GitHub's raw answer), retrying what
    /// [`judge`] says may pass later: after the time GitHub names, else with exponential
    /// backoff.
    async fn request<F, Fut, B>(&self, what: &str, mut f: F) -> Result<Value, ReportError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = octocrab::Result<http::Response<B>>>,
        B: http_body::Body,
        B::Error: std::fmt::Display,
    {
        let mut delay = self.backoff;
        for attempt in 1..=ATTEMPTS {
            let r = match f().await {
                Ok(answer) => judge(answer).await,
                Err(e) => {
                    let (retry, msg) = classify(&e);
                    Err(Failure { retry, after: None, msg })
                }
            };
            let which = if r.is_ok() { &self.counters.ok } else { &self.counters.error };
            which.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match r {
                Ok(v) => return Ok(v),
                Err(e) => {
                    if !e.retry || attempt == ATTEMPTS {
                        tracing::warn!(request = what, attempt, "GitHub refused: {}", e.msg);
                        return Err(ReportError { msg: format!("{what}: {}", e.msg), transient: e.retry });
                    }
                    let wait = e.after.unwrap_or(delay).min(MAX_WAIT);
                    tracing::info!(request = what, attempt, "GitHub failed ({}); retrying in {wait:?}", e.msg);
                    tokio::time::sleep(wait).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
        Err(ReportError { msg: format!("{what}: gave up"), transient: true })
    }

    /// The client that acts for `repo`: the token client, or (App) the installation's.
    async fn client_for(&self, repo: &str, installation: Option<u64>) -> Result<Arc<Octocrab>, ReportError> {
        let Some(base) = &self.client else { return Err(ReportError::new("no GitHub credentials")) };
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
            return Err(ReportError::new("not a GitHub App"));
        };
        let mut inst = self.installations.lock().await;
        let id = match installation.or_else(|| inst.by_repo.get(repo).copied()) {
            Some(id) => id,
            None => {
                let route = format!("/repos/{repo}/installation");
                let v = self.request(&format!("GET {route}"), || app._get(route.as_str())).await?;
                v.get("id").and_then(Value::as_u64).ok_or_else(|| ReportError::new("no installation id"))?
            }
        };
        inst.by_repo.insert(repo.to_string(), id);
        if let Some(m) = inst.by_id.get(&id).filter(|m| m.until > std::time::Instant::now()) {
            return Ok((m.token.clone(), m.client.clone()));
        }
        let route = format!("/app/installations/{id}/access_tokens");
        let v = self.request(&format!("POST {route}"), || app._post(route.as_str(), None::<&()>)).await?;
        let token = v.get("token").and_then(Value::as_str).ok_or_else(|| ReportError::new("no token in the answer"))?;
        let client = builder(&self.api_url)?
            .personal_token(token.to_string())
            .build()
            .map_err(|e| ReportError::new(e.to_string()))?;
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

/// A request GitHub did not do: whether it may pass later, after how long if GitHub said.
#[derive(Debug, PartialEq)]
struct Failure {
    retry: bool,
    after: Option<Duration>,
    msg: String,
}

/// Reads GitHub's answer: the JSON of a success (`null` for an empty body), else a
/// [`Failure`]. 5xx, 408 and 429 may pass later; so may a 403 that is a rate limit, primary
/// (`x-ratelimit-remaining: 0`, until `x-ratelimit-reset`) or secondary (`Retry-After`, or
/// GitHub's message; a minute when no header says), while any other 403 is a permission
/// GitHub refuses, final.
async fn judge<B>(answer: http::Response<B>) -> Result<Value, Failure>
where
    B: http_body::Body,
    B::Error: std::fmt::Display,
{
    use http_body_util::BodyExt;
    let status = answer.status().as_u16();
    let header = |name: &str| answer.headers().get(name).and_then(|v| v.to_str().ok()).map(|v| v.trim().to_string());
    let retry_after = header("retry-after").and_then(|v| v.parse::<u64>().ok()).map(Duration::from_secs);
    let exhausted = header("x-ratelimit-remaining").as_deref() == Some("0");
    let reset = header("x-ratelimit-reset").and_then(|v| v.parse::<u64>().ok()).map(|at| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Duration::from_secs(at.saturating_sub(now.as_secs()) + 1)
    });
    let body = match answer.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Err(Failure { retry: true, after: None, msg: format!("HTTP {status}, body cut: {e}") }),
    };
    let json: Option<Value> = serde_json::from_slice(&body).ok();
    if (200..300).contains(&status) {
        return match json {
            Some(v) => Ok(v),
            None if body.is_empty() => Ok(Value::Null),
            None => {
                Err(Failure { retry: false, after: None, msg: format!("HTTP {status}: an answer that is not JSON") })
            }
        };
    }
    let message = json.as_ref().and_then(|v| v.get("message")).and_then(Value::as_str).unwrap_or("").to_string();
    let rate_limited = status == 429
        || (status == 403 && (retry_after.is_some() || exhausted || message.to_lowercase().contains("rate limit")));
    let after = if rate_limited {
        Some(retry_after.or(if exhausted { reset } else { None }).unwrap_or(Duration::from_secs(60)))
    } else {
        retry_after
    };
    Err(Failure {
        retry: rate_limited || status >= 500 || status == 408,
        after,
        msg: format!("HTTP {status}: {message}"),
    })
}

/// Whether an error before GitHub's answer is worth retrying, and what to say about it.
fn classify(e: &octocrab::Error) -> (bool, String) {
    // GitHub's own answers are judged by `judge`: the raw calls never map them to errors.
    match e {
        // JSON that did not parse: the request itself went through.
        octocrab::Error::Serde { .. } | octocrab::Error::Json { .. } => (false, e.to_string()),
        other => (true, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Result<Value, Failure> {
        let mut b = http::Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let r = b.body(http_body_util::Full::new(bytes::Bytes::from(body.to_string()))).unwrap();
        futures_util::FutureExt::now_or_never(judge(r)).expect("a full body is ready")
    }

    #[test]
    fn answers_are_judged_by_status_and_rate_limit_headers() {
        assert_eq!(answer(201, &[], r#"{"id": 1}"#), Ok(serde_json::json!({"id": 1})));
        assert_eq!(answer(204, &[], ""), Ok(Value::Null));
        let secondary =
            answer(403, &[("retry-after", "7")], r#"{"message": "You have exceeded a secondary rate limit"}"#);
        assert_eq!(secondary.as_ref().map_err(|f| (f.retry, f.after)), Err((true, Some(Duration::from_secs(7)))));
        // A secondary limit without a header: a minute, as GitHub asks.
        let bare = answer(403, &[], r#"{"message": "You have exceeded a secondary rate limit."}"#).unwrap_err();
        assert_eq!((bare.retry, bare.after), (true, Some(Duration::from_secs(60))));
        // The primary limit: until the reset time.
        let reset =
            (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 30).to_string();
        let primary = answer(
            403,
            &[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", &reset)],
            r#"{"message": "API rate limit exceeded"}"#,
        )
        .unwrap_err();
        assert!(
            primary.retry
                && primary.after.is_some_and(|a| a >= Duration::from_secs(29) && a <= Duration::from_secs(31)),
            "{primary:?}"
        );
        // A permission GitHub refuses is final.
        let denied = answer(
            403,
            &[("x-ratelimit-remaining", "4999")],
            r#"{"message": "Resource not accessible by integration"}"#,
        )
        .unwrap_err();
        assert_eq!((denied.retry, denied.msg.as_str()), (false, "HTTP 403: Resource not accessible by integration"));
        assert!(answer(502, &[], "<html>bad gateway</html>").unwrap_err().retry);
        let limited = answer(429, &[("retry-after", "2")], "{}").unwrap_err();
        assert_eq!((limited.retry, limited.after), (true, Some(Duration::from_secs(2))));
        assert!(!answer(422, &[], r#"{"message": "Validation Failed"}"#).unwrap_err().retry);
    }

    #[test]
    fn descriptions_fit() {
        let long = "x".repeat(500);
        assert_eq!(truncate(&long, MAX_DESCRIPTION).chars().count(), MAX_DESCRIPTION);
        assert_eq!(truncate("short", 140), "short");
    }
}
