//! `orch plan`, `orch ci` and `orch gc`: glue between the checkout, the planner, the
//! scheduler with the Docker backend, and the reporters.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::cache::{self, CacheStore};
use crate::error::{Error, exit};
use crate::exec::Workspace;
use crate::exec::docker::DockerBackend;
use crate::git::{self, Checkout};
use crate::pipeline::{self, Event};
use crate::plan::{self, Context, Selection, render};
use crate::report::{self, Mode, ReportOptions};
use crate::sched::{self, CacheSettings, Cancel, Level, RunEvent};
use crate::setup::{self, Secrets, Settings, Setup};
use clap::{Args, Subcommand, ValueEnum};

// ---------------------------------------------------------------------------------------
// The command lines of `orch plan`, `orch ci` and `orch cache` (cli.rs dispatches to these).

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List cache entries, most recently used first.
    Ls,
    /// Remove cache entries (all, or those whose key starts with PREFIX).
    Clear { prefix: Option<String> },
}

/// The event a pipeline is planned for. Unset fields come from the git checkout.
#[derive(Debug, Args, Clone)]
pub struct EventArgs {
    /// The event: push, pull_request, tag, manual, schedule or deploy [default: push, or tag
    /// with --tag].
    #[arg(long, value_parser = parse_event)]
    pub event: Option<Event>,
    /// The branch pushed (a pull request's head branch) [default: the checkout's branch].
    #[arg(long)]
    pub branch: Option<String>,
    /// A pull request's base branch [default: main].
    #[arg(long)]
    pub base_branch: Option<String>,
    /// The tag, for a tag event.
    #[arg(long)]
    pub tag: Option<String>,
    /// A pull request number.
    #[arg(long)]
    pub pr: Option<u64>,
    /// The `on.schedule` name, for a schedule event (`ORCH_SCHEDULE`).
    #[arg(long, value_name = "NAME")]
    pub schedule: Option<String>,
    /// The environment a deploy event deploys to: only the steps deploying there run, with
    /// what they need.
    #[arg(long, value_name = "NAME")]
    pub environment: Option<String>,
    /// The commit SHA [default: the checkout's HEAD].
    #[arg(long)]
    pub commit: Option<String>,
    /// A changed file, for `paths` conditions (repeat it) [default: from git].
    #[arg(long = "changed", value_name = "PATH")]
    pub changed: Vec<String>,
    /// A GitHub webhook delivery's payload (saved, or copied from the webhook's "Recent
    /// Deliveries"): plan for it as the server would. `--event` then names GitHub's event
    /// (push or pull_request) when the payload's shape does not tell.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["branch", "base_branch", "tag", "pr", "commit", "schedule", "environment"])]
    pub payload: Option<PathBuf>,
}

/// What a saved delivery asks of the server.
pub enum Delivery {
    Run(Box<crate::server::db::NewRun>),
    /// The server runs nothing for it, and why.
    NoRun(String),
}

/// Reads a delivery's payload and classifies it as the server does.
pub fn read_payload(path: &Path, event: Option<Event>) -> Result<Delivery, Error> {
    use crate::server::webhook::{Action, classify};
    use serde_json::Value;
    let bytes = std::fs::read(path).map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Usage(format!("{}: not a JSON payload: {e}", path.display())))?;
    let name = match event {
        Some(Event::Push) => "push",
        Some(Event::PullRequest) => "pull_request",
        Some(other) => {
            return Err(Error::Usage(format!(
                "with --payload, --event names GitHub's event (push or pull_request), not `{}`",
                other.as_str()
            )));
        }
        None if v.get("pull_request").is_some() => "pull_request",
        None if v.get("check_run").is_some() => "check_run",
        None if v.get("check_suite").is_some() => "check_suite",
        None if v.get("zen").is_some() => "ping",
        None if v.get("ref").is_some() && v.get("after").is_some() => "push",
        None => {
            return Err(Error::Usage(format!(
                "{}: cannot tell which GitHub event this payload is: add --event push or --event pull_request",
                path.display()
            )));
        }
    };
    Ok(match classify(name, &v) {
        Action::Run(r) => Delivery::Run(r),
        Action::Ignore(why) => Delivery::NoRun(why),
        Action::CancelPullRequest { pr, .. } => {
            Delivery::NoRun(format!("pull request #{pr} was closed: the server cancels its runs"))
        }
        Action::Ping => Delivery::NoRun("a ping".into()),
        Action::Issue(i) => Delivery::NoRun(format!("issue #{}: the server may record it as an incident", i.number)),
    })
}

/// The planner's facts: from a payload (`--payload`, as the server has them), else from
/// the flags, then what the checkout says. `Err` with the reason when the server would run
/// nothing for the payload.
pub fn facts(ev: &EventArgs, co: &Checkout, run_id: &str) -> Result<Result<Context, String>, Error> {
    let Some(path) = &ev.payload else { return Ok(Ok(context(ev, co, run_id))) };
    let spec = match read_payload(path, ev.event)? {
        Delivery::Run(spec) => spec,
        Delivery::NoRun(why) => return Ok(Err(why)),
    };
    if co.is_git && !co.commit.is_empty() && co.commit != spec.sha {
        eprintln!(
            "note: the payload is for commit {}; the files are this checkout's, at {}",
            short(&spec.sha),
            short(&co.commit)
        );
    }
    // As the server: the files the delivery lists; for a pull request, those since its
    // base branch (here, the checkout's copy of it); else unknown.
    let changed = if !ev.changed.is_empty() {
        Some(ev.changed.clone())
    } else {
        match (&spec.changed, spec.event.as_str(), &spec.base_branch) {
            (Some(c), _, _) => Some(c.clone()),
            (None, "pull_request", Some(base)) => {
                let found = git::changed_against_branch(&co.root, base).ok().flatten();
                if found.is_none() {
                    eprintln!("note: no branch `{base}` here: the changed files are unknown (every `paths` holds)");
                }
                found
            }
            _ => None,
        }
    };
    crate::server::worker::context_of(&spec, run_id, changed)
        .map(Ok)
        .ok_or_else(|| Error::Usage(format!("the payload's event `{}` is not one orch runs", spec.event)))
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(8)]
}

fn parse_event(s: &str) -> Result<Event, String> {
    Event::parse(s)
        .ok_or_else(|| format!("unknown event `{s}` (expected push, pull_request, tag, manual, schedule or deploy)"))
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PlanFormat {
    Text,
    Json,
    Dot,
    Mermaid,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The pipeline file.
    #[arg(default_value = ".orch.yml")]
    pub file: PathBuf,
    #[command(flatten)]
    pub event: EventArgs,
    /// Plan only these steps and what they need (repeat it).
    #[arg(long = "step", value_name = "NAME")]
    pub steps: Vec<String>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: PlanFormat,
}

#[derive(Debug, Args)]
pub struct CiArgs {
    /// The pipeline file [default: .orch.yml in the checkout's root].
    #[arg(short, long)]
    pub file: Option<PathBuf>,
    /// Run in this directory instead of the current one.
    #[arg(short = 'C', long = "dir", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Run only these steps and what they need (repeat it).
    #[arg(long = "step", value_name = "NAME")]
    pub steps: Vec<String>,
    #[command(flatten)]
    pub event: EventArgs,
    /// Steps running at once. A step waiting on its container costs orch nothing, so this
    /// is about the machine's capacity for containers, not orch's CPU count.
    #[arg(short, long, default_value_t = 8)]
    pub jobs: usize,
    /// Secrets in dotenv format (NAME=value per line); the environment is used too.
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// Set a variable for every step (repeat it): NAME=value.
    #[arg(short, long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Mount the working tree itself as the workspace: fast, but steps write into it.
    #[arg(long)]
    pub bind: bool,
    /// Print one JSON event per line instead of the human output.
    #[arg(long, conflicts_with = "no_progress")]
    pub json: bool,
    /// Plain output even on a terminal: no spinners, no colours.
    #[arg(long)]
    pub no_progress: bool,
    /// Neither restore nor save caches.
    #[arg(long)]
    pub no_cache: bool,
    /// The cache directory [default: $ORCH_CACHE_DIR, else $XDG_CACHE_HOME/orch, else ~/.cache/orch].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Seconds a cancelled step gets to stop before it is killed.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub grace: u64,
    /// Output of one step kept (log file and screen); past it a notice, and the step goes
    /// on: `100M`, `1G`, or `none`.
    #[arg(long, env = "ORCH_LOG_LIMIT", default_value = "100M", value_name = "SIZE")]
    pub log_limit: String,
    #[command(flatten)]
    pub isolation: crate::exec::isolation::IsolationArgs,
    /// Mount the Docker socket into every step (the steps then control Docker, which is
    /// root on this machine). Only for pipelines you trust.
    #[arg(long)]
    pub docker_socket: bool,
    /// Run every step privileged (all capabilities and devices). Only for pipelines you
    /// trust.
    #[arg(long)]
    pub privileged: bool,
    /// Open an interactive shell in the container of the first step that fails: its image,
    /// environment, services, and the workspace as the step left it, at its working
    /// directory. With STEP: after that step runs, whatever its result. Needs a terminal.
    #[arg(long, value_name = "STEP", num_args = 0..=1, default_missing_value = "", conflicts_with = "json")]
    pub shell: Option<String>,
    /// Open the shell before STEP runs (in its image, with its environment and services, in
    /// the workspace as the steps before it left it) instead.
    #[arg(long, value_name = "STEP", conflicts_with_all = ["shell", "json"])]
    pub shell_before: Option<String>,
    /// Approve deployments that need approval without asking: all of them, or with
    /// `--approve=ENV` those to ENV (repeat it). Without it, orch ci asks at the terminal,
    /// and without a terminal such a deployment fails.
    #[arg(long, value_name = "ENV", num_args = 0..=1, require_equals = true, default_missing_value = "")]
    pub approve: Vec<String>,
}

/// The event context: flags first, then what the checkout says.
pub fn context(ev: &EventArgs, co: &Checkout, run_id: &str) -> Context {
    let event = ev.event.unwrap_or(if ev.tag.is_some() { Event::Tag } else { Event::Push });
    let branch = match event {
        Event::Tag => ev.branch.clone(),
        _ => ev.branch.clone().or_else(|| co.branch.clone()),
    };
    let base_branch = match event {
        Event::PullRequest => Some(ev.base_branch.clone().unwrap_or_else(|| "main".into())),
        _ => ev.base_branch.clone(),
    };
    let changed = if !ev.changed.is_empty() {
        Some(ev.changed.clone())
    } else if co.is_git {
        Some(co.changed.clone())
    } else {
        None
    };
    let repo = co.root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Context {
        event: Some(event),
        branch,
        base_branch,
        tag: ev.tag.clone(),
        commit: ev.commit.clone().unwrap_or_else(|| co.commit.clone()),
        pr: ev.pr,
        repo,
        run_id: run_id.to_string(),
        changed,
        schedule: ev.schedule.clone(),
        environment: ev.environment.clone(),
    }
}

pub fn plan_command(args: PlanArgs) -> Result<u8, Error> {
    let pipeline = pipeline::load_file(&args.file)?;
    let dir = args.file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let co = git::inspect(dir)?;
    let ctx = match facts(&args.event, &co, "plan")? {
        Ok(ctx) => ctx,
        Err(why) => {
            println!("the server runs nothing for this delivery: {why}");
            return Ok(exit::SUCCESS);
        }
    };
    let plan = plan::plan(&pipeline, &ctx, &Selection { steps: args.steps })?;
    let out = match args.format {
        PlanFormat::Text => render::text(&plan),
        PlanFormat::Json => render::json(&plan) + "\n",
        PlanFormat::Dot => render::dot(&plan),
        PlanFormat::Mermaid => render::mermaid(&plan),
    };
    print!("{out}");
    Ok(exit::SUCCESS)
}

/// A run id that sorts by time and is unique enough on one machine: `YYYYMMDD-HHMMSS-xxxx`.
pub fn new_run_id() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let salt = (now.subsec_nanos() ^ std::process::id().wrapping_mul(2_654_435_761)) & 0xffff;
    format!("{}-{salt:04x}", crate::clock::format_utc(now.as_secs() as i64, "%Y%m%d-%H%M%S"))
}

pub async fn ci_command(args: CiArgs) -> Result<u8, Error> {
    let cwd = std::env::current_dir().map_err(|e| Error::io("cannot read the current directory", e))?;
    let dir = match &args.dir {
        Some(d) => cwd.join(d),
        None => cwd.clone(),
    };
    let co = git::inspect(&dir)?;
    // The project is the directory holding the pipeline: the one given, else the checkout's
    // root. Only its files go into the workspace.
    let root =
        if args.file.is_some() || dir.join(".orch.yml").exists() || !co.is_git { dir.clone() } else { co.root.clone() };
    let file = match &args.file {
        Some(f) => dir.join(f),
        None => root.join(".orch.yml"),
    };
    let pipeline = pipeline::load_file(&file)?;
    let shell_at = match (&args.shell, &args.shell_before) {
        (Some(s), _) if s.is_empty() => Some(sched::ShellAt::Failure),
        (Some(s), _) => Some(sched::ShellAt::After(s.clone())),
        (None, Some(s)) => Some(sched::ShellAt::Before(s.clone())),
        (None, None) => None,
    };
    if shell_at.is_some() && !crate::terminal::available() {
        return Err(Error::Usage(
            "--shell opens an interactive shell and needs a terminal: standard input and output are not one \
             (run it from a terminal, not a pipe, a script or CI)"
                .into(),
        ));
    }
    let run_id = new_run_id();
    let ctx = match facts(&args.event, &co, &run_id)? {
        Ok(ctx) => ctx,
        Err(why) => {
            eprintln!("the server runs nothing for this delivery: {why}");
            return Ok(exit::SUCCESS);
        }
    };
    let mut env = Vec::new();
    for kv in &args.env {
        let (k, v) = kv.split_once('=').ok_or_else(|| Error::Usage(format!("--env takes NAME=VALUE, got `{kv}`")))?;
        env.push((k.to_string(), v.to_string()));
    }
    let log_limit = sched::parse_log_limit(&args.log_limit).map_err(|e| Error::Usage(format!("--log-limit: {e}")))?;
    let mut isolation = args.isolation.resolve(|_| None, None).map_err(Error::Usage)?;
    isolation.docker_socket = args.docker_socket;
    isolation.privileged = args.privileged;
    // The firewall's rules (a dozen `iptables` calls the first time in a process) are put
    // in place while the run is set up; steps start only after they are.
    let firewall = isolation.block_host.then(|| tokio::task::spawn_blocking(crate::exec::firewall::ensure));
    let workspace = if args.bind {
        Workspace::Bind(root.clone())
    } else {
        Workspace::Copy {
            files: git::workspace_files(&root)?,
            root: root.clone(),
            base: Some(root.join(".orch").join("workspace")),
        }
    };
    let cache = (!args.no_cache).then(|| CacheSettings {
        store: Arc::new(cache_store(args.cache_dir.clone())),
        scopes: sched::cache_scopes(&ctx, co.default_branch.as_deref().unwrap_or("main")),
    });
    let run_dir = root.join(".orch").join("runs").join(&run_id);
    let prepared = setup::prepare(Setup {
        pipeline: &pipeline,
        context: ctx,
        selection: Selection { steps: args.steps.clone() },
        env,
        secrets: Secrets::FileThenEnvironment(args.secret_file.clone()),
        settings: Settings { jobs: args.jobs, grace: Duration::from_secs(args.grace), log_limit, isolation },
        run_dir: run_dir.clone(),
        docker_run_id: run_id.clone(),
        workspace,
        cache,
        source_root: Some(root.clone()),
        reuse: HashMap::new(),
    })?;
    let log_dir = prepared.log_dir.clone();
    let mut prepared = prepared;
    if let Some(at) = shell_at {
        if let sched::ShellAt::Before(name) | sched::ShellAt::After(name) = &at
            && !prepared.plan.steps.iter().any(|s| s.name == *name || s.step == *name)
        {
            return Err(Error::Usage(format!(
                "--shell: no step `{name}` runs in this run (steps: {})",
                prepared.plan.steps.iter().map(|s| format!("`{}`", s.name)).collect::<Vec<_>>().join(", ")
            )));
        }
        // The reporter and an open shell share the terminal.
        let screen = report::Screen::new();
        prepared.options.shell = Some(Arc::new(sched::Shell::new(at, Arc::new(crate::terminal::Tty), screen)));
    }
    // Deployments that need approval: approved by --approve, else asked at the terminal
    // (which then shares the screen as a shell does), else they fail saying so.
    let gate = crate::gate::Local::new(&args.approve, crate::terminal::available(), &prepared.plan);
    let prompts = gate.may_ask();
    let screen = match (&prepared.options.shell, prompts) {
        (Some(s), _) => Some(s.screen.clone()),
        (None, true) => Some(report::Screen::new()),
        (None, false) => None,
    };
    prepared.options.gate = Some(Arc::new(gate.with_screen(screen.clone())));

    let mode = if args.json {
        Mode::Json
    } else if prepared.options.shell.is_some()
        || prompts
        || args.no_progress
        || !std::io::stdout().is_terminal()
        || std::env::var_os("CI").is_some()
    {
        Mode::Plain
    } else {
        Mode::Progress
    };
    let (tx, rx) = mpsc::channel::<RunEvent>(1024);
    let reporter = tokio::spawn(report::run(
        ReportOptions {
            mode,
            log_dir: Some(relative_to(&log_dir, &cwd)),
            log_files: Some(log_dir.clone()),
            // Only a run that may open a shell or ask for approval shares the screen: others
            // print without a lock.
            screen,
        },
        rx,
    ));

    let backend = match DockerBackend::connect().await {
        Ok(b) => Arc::new(b),
        Err(e) => {
            // Tools reading --json get the failure as events too, and the run directory
            // says what happened.
            let message = e.to_string();
            crate::error::report(&Error::from(e));
            let _ = tx.send(RunEvent::RunMessage { level: Level::Error, message }).await;
            let _ = tx
                .send(RunEvent::RunFinished {
                    status: sched::RunStatus::Error,
                    duration: Duration::ZERO,
                    steps: Vec::new(),
                })
                .await;
            drop(tx);
            let _ = reporter.await;
            write_result(&run_dir, &run_id, sched::RunStatus::Error, Duration::ZERO, &[], &[]);
            return Ok(exit::INFRA);
        }
    };
    let (gc, firewall) = tokio::join!(backend.gc(true), async {
        match firewall {
            Some(task) => task.await.unwrap_or_else(|e| Err(e.to_string())),
            None => Ok(()),
        }
    });
    if let Ok(report) = gc
        && !report.runs.is_empty()
    {
        let _ = tx
            .send(RunEvent::RunMessage {
                level: Level::Info,
                message: format!(
                    "removed {} container(s), {} network(s), {} volume(s) left by {} killed run(s)",
                    report.containers,
                    report.networks,
                    report.volumes,
                    report.runs.len()
                ),
            })
            .await;
    }
    if let Err(why) = firewall {
        let message = format!("steps can reach this machine's services: {why} (--step-host-access allows it quietly)");
        let _ = tx.send(RunEvent::RunMessage { level: Level::Warning, message }).await;
    }
    let cancel = Cancel::default();
    let signals = tokio::spawn(watch_signals(cancel.clone(), tx.clone()));
    let result = sched::execute(backend, &prepared.plan, prepared.options, tx, cancel).await;
    signals.abort();
    let deployments = reporter.await.unwrap_or_default();
    write_result(&run_dir, &run_id, result.status, result.duration, &result.steps, &deployments);
    Ok(result.status.exit_code())
}

fn write_result(
    run_dir: &Path,
    run_id: &str,
    status: sched::RunStatus,
    duration: Duration,
    steps: &[sched::StepSummary],
    deployments: &[RunEvent],
) {
    let deployments: Vec<_> = deployments
        .iter()
        .filter_map(|ev| match ev {
            RunEvent::DeploymentFinished { step, environment, url, status } => Some(serde_json::json!({
                "step": step, "environment": environment, "url": url, "status": status,
            })),
            _ => None,
        })
        .collect();
    let text = serde_json::to_string_pretty(&serde_json::json!({
        "run_id": run_id,
        "status": status,
        "duration": duration.as_secs_f64(),
        "steps": steps,
        "deployments": deployments,
    }))
    .unwrap_or_default();
    let _ = std::fs::write(run_dir.join("result.json"), text);
}

fn relative_to(p: &Path, base: &Path) -> PathBuf {
    p.strip_prefix(base).map(Path::to_path_buf).unwrap_or_else(|_| p.to_path_buf())
}

/// First SIGINT/SIGTERM: stop the steps gracefully. Second: kill them now.
async fn watch_signals(cancel: Cancel, events: mpsc::Sender<RunEvent>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return;
    };
    let next = async |int: &mut tokio::signal::unix::Signal, term: &mut tokio::signal::unix::Signal| {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    };
    next(&mut int, &mut term).await;
    cancel.graceful.cancel();
    let _ = events
        .send(RunEvent::RunMessage {
            level: Level::Warning,
            message: "interrupted: stopping the steps and cleaning up (press Ctrl-C again to kill them now)".into(),
        })
        .await;
    next(&mut int, &mut term).await;
    cancel.kill.cancel();
    let _ = events.send(RunEvent::RunMessage { level: Level::Warning, message: "killing the steps".into() }).await;
}

/// The cache store: `--cache-dir`, else the default location; `ORCH_CACHE_MAX` (bytes, or
/// with a K/M/G suffix) sets its size limit.
pub fn cache_store(dir: Option<PathBuf>) -> CacheStore {
    // Set but empty counts as unset, as for every ORCH_* setting.
    let max = match std::env::var("ORCH_CACHE_MAX").ok().filter(|v| !v.is_empty()) {
        Some(v) => cache::parse_size(&v).unwrap_or_else(|| {
            eprintln!("warning: ORCH_CACHE_MAX={v} is not a size (e.g. 500M, 5G); using the default");
            cache::DEFAULT_MAX_BYTES
        }),
        None => cache::DEFAULT_MAX_BYTES,
    };
    CacheStore::new(dir.unwrap_or_else(cache::default_dir), max)
}

pub fn cache_command(cmd: CacheCommand, dir: Option<PathBuf>) -> Result<u8, Error> {
    let store = cache_store(dir);
    match cmd {
        CacheCommand::Ls => {
            let entries = store.list();
            if entries.is_empty() {
                println!("no caches in {}", store.root().display());
            }
            let total: u64 = entries.iter().map(|(m, _, _)| m.size).sum();
            for (meta, used, _) in &entries {
                println!(
                    "{:<24} {:<40} {:>10}  last used {}",
                    meta.scope,
                    meta.key,
                    crate::fmt::size(meta.size),
                    ago(*used)
                );
            }
            if !entries.is_empty() {
                println!(
                    "{} entr{}, {} in {}",
                    entries.len(),
                    if entries.len() == 1 { "y" } else { "ies" },
                    crate::fmt::size(total),
                    store.root().display()
                );
            }
        }
        CacheCommand::Clear { prefix } => {
            let n = store.clear(prefix.as_deref()).map_err(|e| Error::Usage(e.to_string()))?;
            println!("removed {n} cache entr{}", if n == 1 { "y" } else { "ies" });
        }
    }
    Ok(exit::SUCCESS)
}

fn ago(epoch: u64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let s = now.saturating_sub(epoch);
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

pub async fn gc_command(all: bool) -> Result<u8, Error> {
    let backend = DockerBackend::connect().await?;
    let r = backend.gc(!all).await?;
    if r.runs.is_empty() {
        println!("nothing to remove");
    } else {
        println!(
            "removed {} container(s), {} network(s), {} volume(s) of {} run(s): {}",
            r.containers,
            r.networks,
            r.volumes,
            r.runs.len(),
            r.runs.join(", ")
        );
    }
    Ok(exit::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_dated() {
        let id = new_run_id();
        assert_eq!(id.len(), "20261126-142233-ab12".len(), "{id}");
    }
}
