//! One run set-up for every face: `orch ci` and the server's worker (and later an agent)
//! turn their facts into a [`Setup`], and [`prepare`] makes the planned run: the plan, its
//! options for the scheduler, the run directory with `plan.json` and `logs/`. The rules
//! live here once: `--env` overrides, which secrets a run gets and what a missing one
//! does, the grace period, the log limit, the isolation.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::exec::{Isolation, Workspace};
use crate::pipeline::Pipeline;
use crate::plan::{Context, Plan, PlanError, Selection};
use crate::sched::{CacheSettings, RunOptions, StepSummary};

/// Where a run's secrets come from.
#[derive(Debug, Clone)]
pub enum Secrets {
    /// A dotenv file (if any), then the process's environment (`orch ci`).
    FileThenEnvironment(Option<PathBuf>),
    /// A dotenv file only (the server's `secrets_file`).
    File(Option<PathBuf>),
    /// These values (what the server read for a job it gives an agent).
    Values(HashMap<String, String>),
    /// None at all, on purpose (a pull request from a fork): the steps that name one
    /// error, the others run.
    Withheld,
}

/// How the scheduler runs the steps.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Steps at once.
    pub jobs: usize,
    /// How long a cancelled step gets between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// Output kept per step (0: no limit).
    pub log_limit: u64,
    pub isolation: Isolation,
}

/// Everything a face knows about a run it is about to start.
pub struct Setup<'a> {
    pub pipeline: &'a Pipeline,
    pub context: Context,
    pub selection: Selection,
    /// Variables set in every step, over everything else (`orch ci --env`).
    pub env: Vec<(String, String)>,
    pub secrets: Secrets,
    pub settings: Settings,
    /// The run's directory: `plan.json`, `logs/`, `artifacts/` go there.
    pub run_dir: PathBuf,
    /// The id Docker objects are labelled with.
    pub docker_run_id: String,
    pub workspace: Workspace,
    pub cache: Option<CacheSettings>,
    /// The source tree, for `${hash:...}` in cache keys.
    pub source_root: Option<PathBuf>,
    /// Steps kept from an earlier run (a re-run of the failed steps).
    pub reuse: HashMap<String, StepSummary>,
}

/// A planned run, ready for `sched::execute`.
pub struct Prepared {
    pub plan: Plan,
    pub options: RunOptions,
    /// Where the faces write the step logs (`report::logfile`).
    pub log_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("{0}")]
    Invalid(String),
    #[error(
        "missing secret{} {}: {hint}",
        if missing.len() == 1 { "" } else { "s" },
        missing.iter().map(|(name, step)| format!("`{name}` (step `{step}`)")).collect::<Vec<_>>().join(", ")
    )]
    MissingSecrets { missing: Vec<(String, String)>, hint: String },
    /// The secrets file cannot be parsed: a line number, never the file's text.
    #[error("{path}: {message}")]
    SecretsFile { path: String, message: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl SetupError {
    /// Whether the problem is the pipeline's or the command line's (exit 2), not the
    /// machine's (exit 3).
    pub fn is_usage(&self) -> bool {
        !matches!(self, SetupError::Io { .. })
    }
}

/// Plans the run, applies `env`, collects the secrets its steps name (every one that is
/// missing is an error, before anything starts, unless the run's secrets are withheld on
/// purpose), and creates the run directory with `plan.json` and `logs/`.
pub fn prepare(s: Setup) -> Result<Prepared, SetupError> {
    let mut plan = crate::plan::plan(s.pipeline, &s.context, &s.selection)?;
    for (k, v) in &s.env {
        if !crate::pipeline::interp::is_identifier(k) {
            return Err(SetupError::Invalid(format!("`{k}` is not a variable name (--env NAME=VALUE)")));
        }
        for step in &mut plan.steps {
            step.env.insert(k.clone(), v.clone());
        }
    }
    let secrets = collect_secrets(&plan, &s.secrets)?;
    let log_dir = s.run_dir.join("logs");
    std::fs::create_dir_all(&log_dir)
        .map_err(|source| SetupError::Io { what: format!("cannot create {}", log_dir.display()), source })?;
    // The plan as it runs; it holds no secret values.
    let _ = std::fs::write(s.run_dir.join("plan.json"), crate::plan::render::json(&plan));
    let options = RunOptions {
        run_id: s.docker_run_id,
        jobs: s.settings.jobs,
        secrets,
        workspace: s.workspace,
        grace: s.settings.grace,
        cache: s.cache,
        source_root: s.source_root,
        artifact_dir: Some(s.run_dir.join("artifacts")),
        reuse: s.reuse,
        shell: None,
        gate: None,
        redeploy: false,
        isolation: s.settings.isolation,
        log_limit: s.settings.log_limit,
    };
    Ok(Prepared { plan, options, log_dir })
}

/// The values of the secrets the planned steps name.
fn collect_secrets(plan: &Plan, source: &Secrets) -> Result<HashMap<String, String>, SetupError> {
    let (file, environment, withheld) = match source {
        Secrets::FileThenEnvironment(f) => (f.as_ref(), true, false),
        Secrets::File(f) => (f.as_ref(), false, false),
        Secrets::Values(_) => (None, false, false),
        Secrets::Withheld => (None, false, true),
    };
    let from_file = match (file, source) {
        (_, Secrets::Values(v)) => v.clone(),
        (Some(f), _) => {
            let text = std::fs::read_to_string(f)
                .map_err(|source| SetupError::Io { what: format!("cannot read {}", f.display()), source })?;
            crate::secrets::parse_dotenv(&text)
                .map_err(|message| SetupError::SecretsFile { path: f.display().to_string(), message })?
        }
        (None, _) => HashMap::new(),
    };
    let mut secrets = HashMap::new();
    let mut missing = Vec::new();
    let env_secrets = plan.steps.iter().flat_map(|step| {
        let rules = step.environment.as_ref().and_then(|e| plan.environments.get(&e.name));
        rules.into_iter().flat_map(|r| &r.secrets).map(move |name| (name, step))
    });
    let named = plan.steps.iter().flat_map(|step| step.secrets.iter().map(move |name| (name, step)));
    for (name, step) in named.chain(env_secrets) {
        {
            let value =
                from_file.get(name).cloned().or_else(|| environment.then(|| std::env::var(name).ok()).flatten());
            match value {
                Some(v) => {
                    secrets.insert(name.clone(), v);
                }
                None => missing.push((name.clone(), step.name.clone())),
            }
        }
    }
    // Withheld on purpose: the steps that name one error when they come (the scheduler
    // says which secret), the others run.
    if missing.is_empty() || withheld {
        return Ok(secrets);
    }
    let it = if missing.len() == 1 { "it" } else { "them" };
    let hint = match (environment, file.is_some()) {
        (true, _) => format!("set {it} in the environment or pass --secret-file"),
        (false, true) => format!("add {it} to the server's secrets file"),
        (false, false) if matches!(source, Secrets::Values(_)) => format!("the server's secrets file lacks {it}"),
        (false, false) => "the server has no secrets file (secrets_file)".to_string(),
    };
    Err(SetupError::MissingSecrets { missing, hint })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup<'a>(p: &'a Pipeline, dir: &std::path::Path, secrets: Secrets) -> Setup<'a> {
        Setup {
            pipeline: p,
            context: Context {
                event: Some(crate::pipeline::Event::Push),
                branch: Some("main".into()),
                ..Default::default()
            },
            selection: Selection::default(),
            env: vec![("EXTRA".into(), "1".into())],
            secrets,
            settings: Settings {
                jobs: 2,
                grace: Duration::from_secs(3),
                log_limit: 0,
                isolation: Isolation::default(),
            },
            run_dir: dir.to_path_buf(),
            docker_run_id: "r".into(),
            workspace: Workspace::Empty,
            cache: None,
            source_root: None,
            reuse: HashMap::new(),
        }
    }

    const SRC: &str =
        "steps:\n  a: { image: x, commands: [true], secrets: [TOKEN] }\n  b: { image: x, commands: [true] }\n";

    #[test]
    fn a_missing_secret_stops_the_run_before_it_starts_whatever_the_face() {
        let p = crate::pipeline::parse_str("t.yml", SRC).unwrap();
        let d = tempfile::tempdir().unwrap();
        let e = prepare(setup(&p, d.path(), Secrets::File(None))).err().unwrap();
        assert_eq!(e.to_string(), "missing secret `TOKEN` (step `a`): the server has no secrets file (secrets_file)");
        assert!(e.is_usage());
        // Withheld on purpose (a fork): the run starts without them; the scheduler errs the
        // steps that name one.
        let fork = prepare(setup(&p, d.path(), Secrets::Withheld)).ok().unwrap();
        assert!(fork.options.secrets.is_empty());
        let f = d.path().join("s.env");
        std::fs::write(&f, "TOKEN=abcdef\n").unwrap();
        let ok = prepare(setup(&p, d.path(), Secrets::File(Some(f)))).ok().unwrap();
        assert_eq!(ok.options.secrets["TOKEN"], "abcdef");
        assert_eq!(ok.options.grace, Duration::from_secs(3));
        assert!(ok.plan.steps.iter().all(|s| s.env["EXTRA"] == "1"));
        assert!(d.path().join("plan.json").is_file() && ok.log_dir.is_dir());
    }

    #[test]
    fn a_broken_secrets_file_is_named_by_line() {
        let p = crate::pipeline::parse_str("t.yml", SRC).unwrap();
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("s.env");
        std::fs::write(&f, "TOKEN=abcdef\nhunter2\n").unwrap();
        let e = prepare(setup(&p, d.path(), Secrets::File(Some(f)))).err().unwrap();
        assert!(e.to_string().ends_with("s.env: line 2: expected NAME=value"), "{e}");
        let missing = prepare(setup(&p, d.path(), Secrets::File(Some(d.path().join("nope"))))).err().unwrap();
        assert!(!missing.is_usage());
    }
}
