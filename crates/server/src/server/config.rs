//! `orch serve` settings: command line, then environment (`ORCH_*`), then a YAML config
//! file, then defaults. Every setting has an environment variable, so the server runs from a
//! service unit or a container without a file.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::pipeline::yaml::{self, Node};

#[derive(Debug, Args, Default, Clone)]
pub struct ServeArgs {
    /// A YAML file with any of these settings (keys as the long flags, `_` or `-`).
    #[arg(long, env = "ORCH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "ORCH_LISTEN")]
    pub listen: Option<String>,
    /// The secret GitHub signs deliveries with (X-Hub-Signature-256).
    #[arg(long, env = "ORCH_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Accept unsigned deliveries when no secret is set. Only for trusted networks.
    #[arg(long, env = "ORCH_INSECURE_NO_SIGNATURE")]
    pub insecure_no_signature: bool,
    /// Where the database, run logs, artifacts and caches live [default: /var/lib/orch as
    /// root, else ~/.local/share/orch].
    #[arg(long, env = "ORCH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The database: `postgres://USER[:PASSWORD]@HOST:PORT/DB` (shared by several servers;
    /// no TLS: loopback or a trusted network) [default: the SQLite file orch.db in the data
    /// directory].
    #[arg(long, env = "ORCH_DATABASE", hide_env_values = true)]
    pub database: Option<String>,
    /// This server's name among several on one PostgreSQL database: the runs it executes
    /// or leases are its own, queued again when it restarts under the same name [default:
    /// the host name and the listening port].
    #[arg(long, env = "ORCH_SERVER_NAME")]
    pub server_name: Option<String>,
    /// Seconds a server on a shared PostgreSQL database may go unheard before the others
    /// take over the runs it executes (it stops them itself after half of it) [default: 60].
    #[arg(long, env = "ORCH_SERVER_SILENCE", value_name = "SECS")]
    pub server_silence: Option<u64>,
    /// GitHub's API [default: https://api.github.com; Enterprise: https://HOST/api/v3].
    #[arg(long, env = "ORCH_GITHUB_URL")]
    pub github_url: Option<String>,
    /// A token for commit statuses (and cloning private repositories).
    #[arg(long, env = "ORCH_GITHUB_TOKEN", hide_env_values = true)]
    pub github_token: Option<String>,
    /// A GitHub App's id (check runs instead of statuses).
    #[arg(long, env = "ORCH_GITHUB_APP_ID")]
    pub github_app_id: Option<u64>,
    /// The GitHub App's private key: a PEM file's path, or the PEM itself.
    #[arg(long, env = "ORCH_GITHUB_APP_KEY", hide_env_values = true)]
    pub github_app_key: Option<String>,
    /// The URL people reach this server at; statuses link to its run pages.
    #[arg(long, env = "ORCH_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Runs at once on this machine [default: 2].
    #[arg(long, env = "ORCH_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// Runs this server executes itself at once; 0: only agents (`orch agent`) execute runs
    /// [default: the concurrency].
    #[arg(long, env = "ORCH_LOCAL_CAPACITY")]
    pub local_capacity: Option<usize>,
    /// The labels of this server as an executor (pipelines ask for them with `runs_on`).
    #[arg(long = "labels", env = "ORCH_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Seconds an agent's job stays its own without a word from it: past that it is queued
    /// again for another executor [default: 30].
    #[arg(long, env = "ORCH_AGENT_LEASE", value_name = "SECS")]
    pub agent_lease: Option<u64>,
    /// Times a run is queued again because its agent was lost; after that it is an error
    /// [default: 2].
    #[arg(long, env = "ORCH_AGENT_RETRIES")]
    pub agent_retries: Option<u64>,
    /// Steps at once within a run [default: 8].
    #[arg(long, env = "ORCH_JOBS")]
    pub jobs: Option<usize>,
    /// Repositories (owner/name) to build; others are ignored. Default: every repository
    /// whose deliveries carry a valid signature.
    #[arg(long = "allow-repo", env = "ORCH_ALLOW_REPOS", value_delimiter = ',')]
    pub allow_repos: Vec<String>,
    /// Commits of history to fetch [default: 1; 0 = all].
    #[arg(long, env = "ORCH_CLONE_DEPTH")]
    pub clone_depth: Option<i32>,
    /// Clone URL rewrites `FROM=TO` (prefixes), e.g. to use a mirror.
    #[arg(long = "clone-rewrite", env = "ORCH_CLONE_REWRITE", value_delimiter = ',')]
    pub clone_rewrite: Vec<String>,
    /// Also post one status per step (`orch/<step>`), with a token.
    #[arg(long, env = "ORCH_STEP_STATUSES", num_args = 0..=1, default_missing_value = "true")]
    pub step_statuses: Option<bool>,
    /// Report deployments to GitHub as deployments with states [default: true].
    #[arg(long, env = "ORCH_GITHUB_DEPLOYMENTS", num_args = 0..=1, default_missing_value = "true")]
    pub github_deployments: Option<bool>,
    /// Pipeline secrets (dotenv); pull requests from forks get none.
    #[arg(long, env = "ORCH_SECRETS_FILE")]
    pub secrets_file: Option<PathBuf>,
    /// Cancel a branch's or pull request's older run when a newer one arrives [default: true].
    #[arg(long, env = "ORCH_CANCEL_SUPERSEDED", num_args = 0..=1, default_missing_value = "true")]
    pub cancel_superseded: Option<bool>,
    /// Seconds before retrying a failed GitHub request (doubles each time) [default: 1].
    #[arg(long, env = "ORCH_GITHUB_BACKOFF", hide = true)]
    pub github_backoff_ms: Option<u64>,
    /// The token the API's actions (cancel, re-run, manual runs) need, as
    /// `Authorization: Bearer TOKEN`. Without one, the actions are refused.
    #[arg(long, env = "ORCH_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Read endpoints (API, dashboard, logs, metrics) need the token too [default: false].
    #[arg(long, env = "ORCH_API_PRIVATE", num_args = 0..=1, default_missing_value = "true")]
    pub api_private: Option<bool>,
    /// Days finished runs (and their logs and artifacts) are kept [default: 30; 0 = for ever].
    #[arg(long, env = "ORCH_RETENTION_DAYS")]
    pub retention_days: Option<u64>,
    /// Finished runs kept at most, newest first [default: 0 = no limit].
    #[arg(long, env = "ORCH_RETENTION_RUNS")]
    pub retention_runs: Option<u64>,
    /// Seconds a schedule's time may have passed (the server was down) and still run once;
    /// a time missed by longer is skipped [default: 3600; at least 60].
    #[arg(long, env = "ORCH_SCHEDULE_CATCH_UP", value_name = "SECS")]
    pub schedule_catch_up: Option<u64>,
    /// The label that makes a GitHub issue an incident (the delivery dashboard's change
    /// failures and time to restore) [default: incident].
    #[arg(long, env = "ORCH_INCIDENT_LABEL", value_name = "LABEL")]
    pub incident_label: Option<String>,
    /// The step caches' size limit (`500M`, `20G`), least recently used evicted first
    /// [default: 5G].
    #[arg(long, env = "ORCH_CACHE_MAX")]
    pub cache_max: Option<String>,
    /// Seconds a cancelled step gets between SIGTERM and SIGKILL [default: 10].
    #[arg(long, env = "ORCH_GRACE", value_name = "SECS")]
    pub grace: Option<u64>,
    /// Output of one step kept (`100M`, `1G`, `none`); past it a notice, and the step goes
    /// on [default: 100M].
    #[arg(long, env = "ORCH_LOG_LIMIT", value_name = "SIZE")]
    pub log_limit: Option<String>,
    /// The largest repository a run fetches and checks out (`500M`, `2G`, `none`): what is
    /// downloaded and the checked-out files each; a larger one ends the run as an error
    /// [default: 2G].
    #[arg(long, env = "ORCH_MAX_REPO_SIZE", value_name = "SIZE")]
    pub max_repo_size: Option<String>,
    #[command(flatten)]
    pub isolation: crate::exec::isolation::IsolationArgs,
    /// Repositories (owner/name) whose pushes, tags and manual runs get the Docker socket
    /// mounted (root on this machine). Pull requests never do.
    #[arg(long = "trust-docker-socket", env = "ORCH_TRUST_DOCKER_SOCKET", value_delimiter = ',', value_name = "REPO")]
    pub trust_docker_socket: Vec<String>,
    /// Repositories whose pushes, tags and manual runs run privileged. Pull requests never do.
    #[arg(long = "trust-privileged", env = "ORCH_TRUST_PRIVILEGED", value_delimiter = ',', value_name = "REPO")]
    pub trust_privileged: Vec<String>,
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: String,
    pub webhook_secret: Option<String>,
    pub data_dir: PathBuf,
    /// Where the database is.
    pub database: crate::server::db::Location,
    /// This server's name among several (used with PostgreSQL).
    pub server_name: String,
    /// How long a server on a shared database may go unheard before the others take over
    /// its runs.
    pub server_silence: Duration,
    pub github_url: String,
    pub github_token: Option<String>,
    pub github_app: Option<(u64, Vec<u8>)>,
    pub public_url: String,
    pub concurrency: usize,
    /// Runs this server executes itself at once (0: only agents do).
    pub local_capacity: usize,
    /// This server's labels as an executor.
    pub labels: Vec<String>,
    /// How long an agent's job stays its own without a word from it.
    pub agent_lease: Duration,
    /// Times a run is queued again after its agent was lost.
    pub agent_retries: u64,
    pub jobs: usize,
    pub allow_repos: Vec<String>,
    pub clone_depth: i32,
    pub clone_rewrite: Vec<(String, String)>,
    /// Which clone URLs are taken and where credentials may go (from `github_url` and
    /// `clone_rewrite`).
    pub clone_access: crate::checkout::CloneAccess,
    pub step_statuses: bool,
    /// Deployments are reported to GitHub.
    pub github_deployments: bool,
    pub secrets_file: Option<PathBuf>,
    pub cancel_superseded: bool,
    pub github_backoff: Duration,
    pub api_token: Option<String>,
    pub api_private: bool,
    pub retention_days: u64,
    pub retention_runs: u64,
    /// How late a schedule's time may be noticed and still run (see `schedule`).
    pub schedule_catch_up: Duration,
    /// The label of the GitHub issues that are incidents.
    pub incident_label: String,
    pub cache_max: u64,
    pub log_limit: u64,
    /// Bytes a run may fetch, and check out; 0: no limit.
    pub max_repo_size: u64,
    /// How long a cancelled step gets between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// What step containers are allowed (before the trust settings below).
    pub isolation: crate::exec::Isolation,
    pub trust_docker_socket: Vec<String>,
    pub trust_privileged: Vec<String>,
}

impl Config {
    /// The isolation of a run: the settings, plus what a trusted repository was granted,
    /// never for a pull request (whose code anyone may write).
    pub fn isolation_for(&self, repo: &str, event: &str) -> crate::exec::Isolation {
        let mut iso = self.isolation.clone();
        if event != "pull_request" {
            iso.docker_socket = self.trust_docker_socket.iter().any(|r| r == repo);
            iso.privileged = self.trust_privileged.iter().any(|r| r == repo);
        }
        iso
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {file}: {message}")]
    File { file: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// `/var/lib/orch` as root, else `~/.local/share/orch`.
pub fn default_data_dir() -> PathBuf {
    let root = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false);
    if root {
        return PathBuf::from("/var/lib/orch");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/orch")
}

/// The file's settings as (key with `-` for `_`, text or list of texts).
fn read_file(path: &PathBuf) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
    let file = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError::File { file: file.clone(), message: e.to_string() })?;
    let node = yaml::parse(&text).map_err(|e| ConfigError::File { file: file.clone(), message: e.message })?;
    let Node::Map(entries) = node else {
        return Err(ConfigError::File { file, message: "expected a mapping of settings".into() });
    };
    let scalar = |n: &Node| match n {
        Node::Str(s) => Some(s.clone()),
        Node::Int(i) => Some(i.to_string()),
        Node::Bool(b) => Some(b.to_string()),
        Node::Float(_, text) => Some(text.clone()),
        _ => None,
    };
    let mut out = Vec::new();
    for (k, v) in entries {
        let values = match &v {
            Node::Seq(items) => items.iter().filter_map(scalar).collect(),
            other => match scalar(other) {
                Some(s) => vec![s],
                None => {
                    return Err(ConfigError::File { file, message: format!("`{k}` must be a value or a list") });
                }
            },
        };
        let key = k.replace('_', "-");
        // The flag is `--allow-repo` (given once per repository); the list is `allow_repos`.
        let key = if key == "allow-repo" { "allow-repos".to_string() } else { key };
        out.push((key, values));
    }
    Ok(out)
}

/// The default of `max-repo-size`.
pub const DEFAULT_MAX_REPO_SIZE: u64 = 2 << 30;

const KEYS: &[&str] = &[
    "listen",
    "webhook-secret",
    "insecure-no-signature",
    "data-dir",
    "database",
    "server-name",
    "server-silence",
    "github-url",
    "github-token",
    "github-app-id",
    "github-app-key",
    "public-url",
    "concurrency",
    "local-capacity",
    "labels",
    "agent-lease",
    "agent-retries",
    "jobs",
    "allow-repos",
    "clone-depth",
    "clone-rewrite",
    "step-statuses",
    "secrets-file",
    "cancel-superseded",
    "api-token",
    "api-private",
    "retention-days",
    "retention-runs",
    "schedule-catch-up",
    "incident-label",
    "github-deployments",
    "cache-max",
    "log-limit",
    "max-repo-size",
    "grace",
    "trust-docker-socket",
    "trust-privileged",
];

impl ServeArgs {
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(p) => read_file(p)?,
            None => Vec::new(),
        };
        for (k, _) in &file {
            if !KEYS.contains(&k.as_str()) && !crate::exec::isolation::KEYS.contains(&k.as_str()) {
                let known = KEYS.iter().chain(crate::exec::isolation::KEYS).copied();
                let hint = crate::pipeline::diag::did_you_mean(k, known)
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                return Err(ConfigError::Invalid(format!("unknown setting `{k}` in the config file{hint}")));
            }
        }
        let f = |k: &str| file.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        let one = |k: &str| f(k).and_then(|v| v.into_iter().next());
        let parse_num = |k: &str, v: Option<String>| -> Result<Option<i64>, ConfigError> {
            v.map(|s| s.parse::<i64>().map_err(|_| ConfigError::Invalid(format!("`{k}` must be a number, got `{s}`"))))
                .transpose()
        };
        let parse_bool = |k: &str, v: Option<String>| -> Result<Option<bool>, ConfigError> {
            v.map(|s| match s.as_str() {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                _ => Err(ConfigError::Invalid(format!("`{k}` must be true or false, got `{s}`"))),
            })
            .transpose()
        };
        let listen = self.listen.clone().or_else(|| one("listen")).unwrap_or_else(|| "127.0.0.1:8080".into());
        let webhook_secret = self.webhook_secret.clone().or_else(|| one("webhook-secret")).filter(|s| !s.is_empty());
        let insecure = self.insecure_no_signature
            || parse_bool("insecure-no-signature", one("insecure-no-signature"))?.unwrap_or(false);
        if webhook_secret.is_none() && !insecure {
            return Err(ConfigError::Invalid(
                "no webhook secret: set ORCH_WEBHOOK_SECRET (or --webhook-secret), the secret of your GitHub webhook; \
                 --insecure-no-signature accepts unsigned deliveries"
                    .into(),
            ));
        }
        let app_id = match self.github_app_id {
            Some(id) => Some(id),
            None => parse_num("github-app-id", one("github-app-id"))?.map(|n| n as u64),
        };
        let app_key = self.github_app_key.clone().or_else(|| one("github-app-key"));
        let github_app = match (app_id, app_key) {
            (Some(id), Some(key)) => {
                let pem = if key.trim_start().starts_with("-----BEGIN") {
                    key.into_bytes()
                } else {
                    std::fs::read(&key)
                        .map_err(|e| ConfigError::Invalid(format!("cannot read the GitHub App key {key}: {e}")))?
                };
                Some((id, pem))
            }
            (None, None) => None,
            _ => return Err(ConfigError::Invalid("a GitHub App needs both its id and its private key".into())),
        };
        let listen_url = format!("http://{listen}");
        let rewrite = if self.clone_rewrite.is_empty() {
            f("clone-rewrite").unwrap_or_default()
        } else {
            self.clone_rewrite.clone()
        };
        let clone_rewrite = rewrite
            .iter()
            .map(|r| {
                r.split_once('=')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| ConfigError::Invalid(format!("a clone rewrite is FROM=TO, got `{r}`")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let github_url =
            self.github_url.clone().or_else(|| one("github-url")).unwrap_or_else(|| "https://api.github.com".into());
        let concurrency = match self.concurrency {
            Some(n) => n,
            None => parse_num("concurrency", one("concurrency"))?.map_or(2, |n| n as usize),
        }
        .max(1);
        // Concurrent runs share the machine's CPUs: one step gets at most its run's share.
        let share = (crate::exec::isolation::host_cpus() as f64 / concurrency as f64).max(1.0);
        let isolation = self.isolation.resolve(f, Some(share)).map_err(ConfigError::Invalid)?;
        let list = |flag: &Vec<String>, key: &str| -> Vec<String> {
            let v = if flag.iter().all(|r| r.trim().is_empty()) { f(key).unwrap_or_default() } else { flag.clone() };
            v.into_iter().map(|r| r.trim().to_string()).filter(|r| !r.is_empty()).collect()
        };
        let log_limit = match self.log_limit.clone().or_else(|| one("log-limit")) {
            Some(s) => {
                crate::sched::parse_log_limit(&s).map_err(|e| ConfigError::Invalid(format!("`log-limit`: {e}")))?
            }
            None => crate::sched::DEFAULT_LOG_LIMIT,
        };
        let clone_access =
            crate::checkout::CloneAccess::new(&github_url, &clone_rewrite).map_err(ConfigError::Invalid)?;
        let data_dir =
            self.data_dir.clone().or_else(|| one("data-dir").map(PathBuf::from)).unwrap_or_else(default_data_dir);
        let database = match self.database.clone().or_else(|| one("database")).filter(|s| !s.trim().is_empty()) {
            Some(d) if d.contains("://") && !d.starts_with("postgres://") && !d.starts_with("postgresql://") => {
                return Err(ConfigError::Invalid(format!(
                    "`database`: `{}` is not a postgres:// URL (or leave it out for the SQLite file in the data directory)",
                    crate::server::db::Location::Postgres(d.clone()).display()
                )));
            }
            Some(d) => crate::server::db::Location::parse(d.trim()),
            None => crate::server::db::Location::Sqlite(data_dir.join("orch.db")),
        };
        let server_name = self.server_name.clone().or_else(|| one("server-name")).unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
            let port = listen.rsplit(':').next().unwrap_or_default();
            format!("{}:{port}", if host.is_empty() { "orch" } else { host.as_str() })
        });
        Ok(Config {
            data_dir,
            database,
            server_name,
            server_silence: Duration::from_secs(match self.server_silence {
                Some(n) => n.max(2),
                None => parse_num("server-silence", one("server-silence"))?.map_or(60, |n| n.max(2) as u64),
            }),
            listen,
            webhook_secret,
            github_url,
            github_token: self.github_token.clone().or_else(|| one("github-token")).filter(|s| !s.is_empty()),
            github_app,
            public_url: self.public_url.clone().or_else(|| one("public-url")).unwrap_or(listen_url),
            concurrency,
            local_capacity: match self.local_capacity {
                Some(n) => n,
                None => parse_num("local-capacity", one("local-capacity"))?.map_or(concurrency, |n| n.max(0) as usize),
            },
            labels: crate::job::parse_labels(&list(&self.labels, "labels")),
            agent_lease: Duration::from_secs(match self.agent_lease {
                Some(n) => n,
                None => parse_num("agent-lease", one("agent-lease"))?.map_or(30, |n| n.max(1) as u64),
            }),
            agent_retries: match self.agent_retries {
                Some(n) => n,
                None => parse_num("agent-retries", one("agent-retries"))?.map_or(2, |n| n.max(0) as u64),
            },
            jobs: match self.jobs {
                Some(n) => n,
                None => parse_num("jobs", one("jobs"))?.map_or(8, |n| n as usize),
            }
            .max(1),
            // Empty names (`a,,b`, a trailing comma) name no repository.
            allow_repos: if self.allow_repos.iter().all(|r| r.trim().is_empty()) {
                f("allow-repos").unwrap_or_default()
            } else {
                self.allow_repos.clone()
            }
            .into_iter()
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty())
            .collect(),
            clone_depth: match self.clone_depth {
                Some(n) => n,
                None => parse_num("clone-depth", one("clone-depth"))?.map_or(1, |n| n as i32),
            },
            clone_rewrite,
            clone_access,
            github_deployments: match self.github_deployments {
                Some(b) => b,
                None => parse_bool("github-deployments", one("github-deployments"))?.unwrap_or(true),
            },
            step_statuses: match self.step_statuses {
                Some(b) => b,
                None => parse_bool("step-statuses", one("step-statuses"))?.unwrap_or(false),
            },
            secrets_file: self.secrets_file.clone().or_else(|| one("secrets-file").map(PathBuf::from)),
            cancel_superseded: match self.cancel_superseded {
                Some(b) => b,
                None => parse_bool("cancel-superseded", one("cancel-superseded"))?.unwrap_or(true),
            },
            github_backoff: Duration::from_millis(self.github_backoff_ms.unwrap_or(1000)),
            api_token: self.api_token.clone().or_else(|| one("api-token")).filter(|s| !s.is_empty()),
            api_private: match self.api_private {
                Some(b) => b,
                None => parse_bool("api-private", one("api-private"))?.unwrap_or(false),
            },
            retention_days: match self.retention_days {
                Some(n) => n,
                None => parse_num("retention-days", one("retention-days"))?.map_or(30, |n| n.max(0) as u64),
            },
            retention_runs: match self.retention_runs {
                Some(n) => n,
                None => parse_num("retention-runs", one("retention-runs"))?.map_or(0, |n| n.max(0) as u64),
            },
            incident_label: self
                .incident_label
                .clone()
                .or_else(|| one("incident-label"))
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| "incident".into()),
            schedule_catch_up: Duration::from_secs(
                match self.schedule_catch_up {
                    Some(n) => n,
                    None => parse_num("schedule-catch-up", one("schedule-catch-up"))?.map_or(3600, |n| n.max(0) as u64),
                }
                .max(60),
            ),
            cache_max: match self.cache_max.clone().or_else(|| one("cache-max")) {
                Some(s) => crate::cache::parse_size(&s).ok_or_else(|| {
                    ConfigError::Invalid(format!("`cache-max` must be a size such as 500M or 20G, got `{s}`"))
                })?,
                None => crate::cache::DEFAULT_MAX_BYTES,
            },
            log_limit,
            max_repo_size: match self.max_repo_size.clone().or_else(|| one("max-repo-size")) {
                Some(s) if matches!(s.trim().to_ascii_lowercase().as_str(), "none" | "0" | "unlimited") => 0,
                Some(s) => crate::cache::parse_size(&s).ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "`max-repo-size` must be a size such as 500M or 2G, or `none`, got `{s}`"
                    ))
                })?,
                None => DEFAULT_MAX_REPO_SIZE,
            },
            grace: Duration::from_secs(match self.grace {
                Some(n) => n,
                None => {
                    parse_num("grace", one("grace"))?.map_or(crate::sched::DEFAULT_GRACE.as_secs(), |n| n.max(0) as u64)
                }
            }),
            isolation,
            trust_docker_socket: list(&self.trust_docker_socket, "trust-docker-socket"),
            trust_privileged: list(&self.trust_privileged, "trust-privileged"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("orch.yml");
        std::fs::write(&f, "listen: 0.0.0.0:9000\nwebhook_secret: s3\nallow-repos: [a/b, c/d]\nconcurrency: 4\n")
            .unwrap();
        let args = ServeArgs { config: Some(f.clone()), concurrency: Some(1), ..Default::default() };
        let c = args.resolve().unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000");
        assert_eq!(c.webhook_secret.as_deref(), Some("s3"));
        assert_eq!(c.allow_repos, ["a/b", "c/d"]);
        assert_eq!(c.concurrency, 1, "the flag wins over the file");
        std::fs::write(&f, "listne: x\n").unwrap();
        let e = ServeArgs { config: Some(f), ..Default::default() }.resolve().unwrap_err();
        assert!(e.to_string().contains("did you mean `listen`"), "{e}");
    }

    #[test]
    fn the_database_is_sqlite_in_the_data_dir_or_a_postgres_url() {
        use crate::server::db::Location;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("orch.yml");
        let with = |text: &str, flag: Option<&str>| {
            std::fs::write(&f, format!("webhook_secret: s\ndata_dir: /d\nlisten: 127.0.0.1:81\n{text}")).unwrap();
            ServeArgs { config: Some(f.clone()), database: flag.map(str::to_string), ..Default::default() }.resolve()
        };
        let c = with("", None).unwrap();
        assert_eq!(c.database, Location::Sqlite("/d/orch.db".into()));
        assert!(c.server_name.ends_with(":81"), "{}", c.server_name);
        let c = with("database: postgres://orch:pw@db:5432/orch\nserver_name: ci-1\n", None).unwrap();
        assert_eq!(c.database, Location::Postgres("postgres://orch:pw@db:5432/orch".into()));
        assert_eq!(c.database.display(), "postgres://orch:***@db:5432/orch", "no password in logs");
        assert_eq!(c.server_name, "ci-1");
        let c = with("database: postgres://a@x/y\n", Some("postgresql://b@z/w")).unwrap();
        assert_eq!(c.database, Location::Postgres("postgresql://b@z/w".into()), "the flag wins");
        let e = with("database: mysql://root:pw@db/orch\n", None).unwrap_err().to_string();
        assert!(e.contains("not a postgres:// URL") && !e.contains("pw"), "{e}");
    }

    #[test]
    fn the_shipped_example_config_loads() {
        let f = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../runners/server/orch.yml"));
        let c = ServeArgs { config: Some(f), ..Default::default() }.resolve().unwrap();
        assert_eq!(c.allow_repos, ["acme/hello", "acme/website"]);
        assert!(c.step_statuses);
        assert_eq!(c.isolation.caps.len(), 8);
        assert!(c.isolation.block_host);
        assert_eq!(c.log_limit, 100 << 20);
    }

    #[test]
    fn api_and_retention_settings() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("orch.yml");
        std::fs::write(
            &f,
            "webhook_secret: s\napi_token: t0k\napi_private: true\nretention_days: 7\nretention-runs: 100\n",
        )
        .unwrap();
        let c = ServeArgs { config: Some(f), retention_days: Some(9), ..Default::default() }.resolve().unwrap();
        assert_eq!((c.api_token.as_deref(), c.api_private), (Some("t0k"), true));
        assert_eq!((c.retention_days, c.retention_runs), (9, 100), "the flag wins over the file");
        // `--api-private` alone means true, as `--api-private true` does.
        use clap::Parser;
        #[derive(clap::Parser)]
        struct T {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let t = T::try_parse_from(["t", "--api-private", "--step-statuses", "--cancel-superseded", "false"]).unwrap();
        assert_eq!(
            (t.serve.api_private, t.serve.step_statuses, t.serve.cancel_superseded),
            (Some(true), Some(true), Some(false))
        );
        let c = ServeArgs { cache_max: Some("20G".into()), webhook_secret: Some("s".into()), ..Default::default() };
        assert_eq!(c.resolve().unwrap().cache_max, 20 << 30);
        let c = ServeArgs { cache_max: Some("lots".into()), webhook_secret: Some("s".into()), ..Default::default() };
        assert!(c.resolve().unwrap_err().to_string().contains("cache-max"));
        let d = ServeArgs { insecure_no_signature: true, ..Default::default() }.resolve().unwrap();
        assert_eq!((d.api_token, d.api_private, d.retention_days, d.retention_runs), (None, false, 30, 0));
        assert_eq!((d.github_deployments, d.incident_label.as_str()), (true, "incident"));
        let e = ServeArgs {
            github_deployments: Some(false),
            incident_label: Some(" outage ".into()),
            insecure_no_signature: true,
            ..Default::default()
        };
        let e = e.resolve().unwrap();
        assert_eq!((e.github_deployments, e.incident_label.as_str()), (false, "outage"));
    }

    #[test]
    fn trust_is_for_named_repositories_and_never_for_pull_requests() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("orch.yml");
        std::fs::write(&f, "webhook_secret: s\ntrust_docker_socket: [acme/images]\nstep_memory: 1G\n").unwrap();
        let args = ServeArgs { config: Some(f), trust_privileged: vec!["acme/vm".into()], ..Default::default() };
        let c = args.resolve().unwrap();
        assert_eq!(c.isolation.memory, Some(1 << 30));
        let push = c.isolation_for("acme/images", "push");
        assert!(push.docker_socket && !push.privileged);
        assert!(c.isolation_for("acme/vm", "tag").privileged);
        let pr = c.isolation_for("acme/images", "pull_request");
        assert!(!pr.docker_socket && !pr.privileged);
        let other = c.isolation_for("acme/other", "push");
        assert!(!other.docker_socket && !other.privileged);
        let bad = ServeArgs { webhook_secret: Some("s".into()), log_limit: Some("lots".into()), ..Default::default() };
        assert!(bad.resolve().unwrap_err().to_string().contains("log-limit"));
    }

    #[test]
    fn refuses_to_start_without_a_secret() {
        let e = ServeArgs::default().resolve().unwrap_err();
        assert!(e.to_string().contains("ORCH_WEBHOOK_SECRET"));
        assert!(ServeArgs { insecure_no_signature: true, ..Default::default() }.resolve().is_ok());
    }
}
