//! The pipeline as written in `.orch.yml`, after loading and checking: plain data, no
//! behaviour beyond small helpers. The loader (`load.rs`) builds it; the planner reads it.

use std::time::Duration;

use indexmap::IndexMap;
use serde::Serialize;

/// A whole `.orch.yml`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pipeline {
    /// `on:` triggers; `None` means every event starts the pipeline.
    pub on: Option<Triggers>,
    pub env: IndexMap<String, String>,
    pub stages: Vec<String>,
    pub defaults: Defaults,
    /// Services every step gets (a step's own services are added to these).
    pub services: IndexMap<String, Service>,
    /// `runs_on`: agent labels every step needs (a step's own are added to these).
    pub runs_on: Vec<String>,
    /// `environments`: the rules of environments, by name (one not listed has none).
    pub environments: IndexMap<String, EnvironmentRules>,
    pub steps: IndexMap<String, Step>,
}

/// Which runs may deploy to an environment, and the gates a deployment passes first. A run
/// may when its branch matches `branches` or its tag matches `tags`; with neither set,
/// every run may (but a pull request never deploys to an environment with any rules).
/// (Deserialize: a server sends the rules it trusts to its executors in the job.)
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct EnvironmentRules {
    pub branches: Option<Patterns>,
    pub tags: Option<Patterns>,
    /// People who must approve a deployment before it starts.
    pub approval: Option<Approval>,
    /// The wait timer: after approval, before the deployment starts.
    #[serde(serialize_with = "ser_opt_duration", deserialize_with = "de_opt_duration")]
    pub wait: Option<Duration>,
    /// Secrets only this environment's steps get, once its gates passed.
    pub secrets: Vec<String>,
    /// Which waiting deployment goes next when the environment frees.
    pub order: DeployOrder,
    /// Never written in a file: set when the rules that govern the run are unknown (see
    /// [`Pipeline::govern_environments`]); every deployment is refused, for this reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

impl EnvironmentRules {
    /// Whether anything is ruled: a pull request never deploys to such an environment.
    pub fn any(&self) -> bool {
        self.branches.is_some()
            || self.tags.is_some()
            || self.approval.is_some()
            || self.wait.is_some()
            || !self.secrets.is_empty()
            || self.refused.is_some()
    }
}

/// The environment rules a server trusts for a run whose own `.orch.yml` it does not (a
/// run that is not on the repository's default branch): those of the default branch's
/// file, or, when that cannot be read, the reason no deployment may go.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrustedEnvironments {
    Rules(IndexMap<String, EnvironmentRules>),
    Unknown(String),
}

impl Pipeline {
    /// Whether the environment rules matter to this file: it declares environments, a step
    /// deploys to one, or a step names secrets (one may be an environment's).
    pub fn touches_environments(&self) -> bool {
        !self.environments.is_empty() || self.steps.values().any(|s| s.environment.is_some() || !s.secrets.is_empty())
    }

    /// Puts the `trusted` rules in place of this file's, before planning. Known rules
    /// replace this file's for their environments (declared here or not, loosened or
    /// dropped); an environment they do not name keeps this file's rules, less the secrets
    /// a trusted environment keeps for itself. Unknown rules refuse every deployment:
    /// each environment declared or deployed to gets only `refused`, and no step gets a
    /// secret it lists (any may be an environment's in the rules not known).
    pub fn govern_environments(&mut self, trusted: &TrustedEnvironments) {
        match trusted {
            TrustedEnvironments::Rules(rules) => {
                let reserved: Vec<&String> = rules.values().flat_map(|r| &r.secrets).collect();
                for r in self.environments.values_mut() {
                    r.secrets.retain(|s| !reserved.contains(&s));
                }
                for (name, r) in rules {
                    self.environments.insert(name.clone(), r.clone());
                }
            }
            TrustedEnvironments::Unknown(why) => {
                let used: Vec<String> =
                    self.steps.values().filter_map(|s| s.environment.as_ref().map(|e| e.name.clone())).collect();
                for name in used {
                    self.environments.entry(name).or_default();
                }
                for r in self.environments.values_mut() {
                    *r = EnvironmentRules { refused: Some(why.clone()), ..Default::default() };
                }
                for s in self.steps.values_mut() {
                    s.secrets.clear();
                }
            }
        }
    }
}

/// `approval`: `required` of `approvers` must approve, within `timeout`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Approval {
    pub approvers: Vec<String>,
    pub required: usize,
    #[serde(serialize_with = "ser_duration", deserialize_with = "de_duration")]
    pub timeout: Duration,
}

/// How long an approval may take by default.
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// `order`: one deployment at a time per environment; when it frees, the `newest` waiting
/// commit deploys (older waiting ones are superseded), or they go in turn (`fifo`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployOrder {
    #[default]
    Newest,
    Fifo,
}

impl DeployOrder {
    pub fn as_str(self) -> &'static str {
        match self {
            DeployOrder::Newest => "newest",
            DeployOrder::Fifo => "fifo",
        }
    }
}

/// A step's `environment`: the name, and the URL (with `${VAR}`s until planned).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Environment {
    pub name: String,
    #[serde(default)]
    pub url: Option<String>,
}

/// The stages a pipeline has when it declares none.
pub const DEFAULT_STAGES: [&str; 3] = ["build", "test", "deploy"];
/// The stage of a step that names none (as in GitLab CI).
pub const DEFAULT_STAGE: &str = "test";

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Defaults {
    pub image: Option<String>,
    #[serde(serialize_with = "ser_opt_duration")]
    pub timeout: Option<Duration>,
    pub retry: Option<Retry>,
    pub workdir: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Triggers {
    pub push: Option<PushTrigger>,
    pub pull_request: Option<PullRequestTrigger>,
    /// `manual: false` refuses manual runs; they are allowed by default.
    pub manual: bool,
    /// `schedule`: times the server runs the default branch (empty: none).
    pub schedule: Vec<Schedule>,
}

/// One `on.schedule` item: a cron expression in a time zone, checked when loaded (see
/// `pipeline::cron`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Schedule {
    /// Unique within the pipeline; the cron text when none is written.
    pub name: String,
    pub cron: String,
    /// An IANA name; `UTC` when none is written.
    pub timezone: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PushTrigger {
    pub branches: Option<Patterns>,
    pub tags: Option<Patterns>,
    pub paths: Option<Patterns>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PullRequestTrigger {
    /// Globs on the pull request's base branch.
    pub branches: Option<Patterns>,
    pub paths: Option<Patterns>,
}

/// Glob patterns with optional exclusions: `[main, "release/*"]` or
/// `{include: [...], exclude: [...]}`. Checked to compile when loaded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Patterns {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    pub stage: String,
    pub image: Option<String>,
    /// `runs_on`: agent labels the step needs, besides the pipeline's.
    pub runs_on: Vec<String>,
    pub commands: Vec<String>,
    pub env: IndexMap<String, String>,
    pub workdir: Option<String>,
    /// `None`: follow stage order. `Some(vec![])`: start at once.
    pub needs: Option<Vec<String>>,
    pub when: When,
    #[serde(serialize_with = "ser_opt_duration")]
    pub timeout: Option<Duration>,
    pub retry: Option<Retry>,
    pub allow_failure: bool,
    pub secrets: Vec<String>,
    pub services: IndexMap<String, Service>,
    pub cache: Vec<Cache>,
    pub artifacts: Option<Artifacts>,
    pub matrix: Option<Matrix>,
    /// `environment`: each run of the step is a deployment to it.
    pub environment: Option<Environment>,
}

/// When a step runs. Every clause that is set must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct When {
    pub branch: Option<Patterns>,
    pub tag: Option<Patterns>,
    pub event: Option<Vec<Event>>,
    pub paths: Option<Patterns>,
    pub status: StatusCond,
}

/// The outcome of the steps a step needs that lets it run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StatusCond {
    /// Run when everything it needs passed (the default).
    pub on_success: bool,
    /// Run when something it needs failed.
    pub on_failure: bool,
}

impl Default for StatusCond {
    fn default() -> Self {
        StatusCond { on_success: true, on_failure: false }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Push,
    PullRequest,
    Tag,
    Manual,
    Schedule,
    /// An explicit deployment of a commit to one environment (`orch deploy`, a rollback).
    Deploy,
}

impl Event {
    pub const ALL: [Event; 6] =
        [Event::Push, Event::PullRequest, Event::Tag, Event::Manual, Event::Schedule, Event::Deploy];

    pub fn as_str(self) -> &'static str {
        match self {
            Event::Push => "push",
            Event::PullRequest => "pull_request",
            Event::Tag => "tag",
            Event::Manual => "manual",
            Event::Schedule => "schedule",
            Event::Deploy => "deploy",
        }
    }

    pub fn parse(s: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Retry {
    /// Extra attempts after the first.
    pub count: u32,
    /// Exit codes that are retried; empty means any failure.
    pub on_exit_codes: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    pub image: String,
    pub env: IndexMap<String, String>,
    /// Overrides the image's command (run by the image's entrypoint).
    pub command: Option<Vec<String>>,
    pub ports: Vec<u16>,
    pub ready: Option<Ready>,
}

/// How orch knows a service is up: a command that succeeds inside it, or a TCP port that
/// accepts connections.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ready {
    pub command: Option<String>,
    pub tcp: Option<u16>,
    #[serde(serialize_with = "ser_duration")]
    pub timeout: Duration,
}

pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cache {
    /// May use `${VAR}` and `${hash:FILE}`.
    pub key: String,
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Artifacts {
    pub paths: Vec<String>,
    /// A pattern that matches nothing is a warning instead of an error.
    pub optional: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Matrix {
    pub axes: IndexMap<String, Vec<String>>,
    pub include: Vec<IndexMap<String, String>>,
    pub exclude: Vec<IndexMap<String, String>>,
}

impl Matrix {
    /// Every combination of the axes, minus `exclude`, plus `include`, in a stable order.
    pub fn expand(&self) -> Vec<IndexMap<String, String>> {
        let mut combos: Vec<IndexMap<String, String>> = vec![IndexMap::new()];
        for (axis, values) in &self.axes {
            let mut next = Vec::with_capacity(combos.len() * values.len());
            for combo in &combos {
                for v in values {
                    let mut c = combo.clone();
                    c.insert(axis.clone(), v.clone());
                    next.push(c);
                }
            }
            combos = next;
        }
        if self.axes.is_empty() {
            combos.clear();
        }
        combos.retain(|c| !self.exclude.iter().any(|ex| ex.iter().all(|(k, v)| c.get(k) == Some(v))));
        for inc in &self.include {
            if !combos.contains(inc) {
                combos.push(inc.clone());
            }
        }
        combos
    }
}

/// Parses `90s`, `10m`, `1h30m`, `500ms`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        total += match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60)?),
            "h" => Duration::from_secs(n.checked_mul(3600)?),
            _ => return None,
        };
    }
    Some(total)
}

/// `1h2m3s` style, the inverse of [`parse_duration`] for whole seconds.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

fn ser_opt_duration<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_duration(d, s),
        None => s.serialize_none(),
    }
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = <String as serde::Deserialize>::deserialize(d)?;
    parse_duration(&s).ok_or_else(|| serde::de::Error::custom(format!("`{s}` is not a duration")))
}

fn de_opt_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    match <Option<String> as serde::Deserialize>::deserialize(d)? {
        Some(s) => {
            parse_duration(&s).map(Some).ok_or_else(|| serde::de::Error::custom(format!("`{s}` is not a duration")))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("10 minutes"), None);
        assert_eq!(parse_duration("m"), None);
        assert_eq!(parse_duration("5d"), None);
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn matrix_expansion() {
        let axes: IndexMap<String, Vec<String>> = [
            ("os".to_string(), vec!["linux".to_string(), "mac".to_string()]),
            ("v".to_string(), vec!["1".to_string(), "2".to_string()]),
        ]
        .into_iter()
        .collect();
        let m = Matrix {
            axes,
            include: vec![
                [("os".to_string(), "bsd".to_string()), ("v".to_string(), "9".to_string())].into_iter().collect(),
            ],
            exclude: vec![
                [("os".to_string(), "mac".to_string()), ("v".to_string(), "1".to_string())].into_iter().collect(),
            ],
        };
        let names: Vec<String> = m.expand().iter().map(|c| c.values().cloned().collect::<Vec<_>>().join("-")).collect();
        assert_eq!(names, ["linux-1", "linux-2", "mac-2", "bsd-9"]);
    }
}
