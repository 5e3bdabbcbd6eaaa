//! The command line: clap definitions and dispatch. No logic lives here beyond turning
//! arguments into calls.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::error::{Error, exit};
use crate::pipeline::Event;

#[derive(Debug, Parser)]
#[command(
    name = "orch",
    // The commit comes from build.rs ("unknown" when built outside a git checkout).
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("ORCH_GIT_COMMIT"), ")"),
    about = "Run CI/CD pipelines from .orch.yml in Docker, locally and from GitHub webhooks"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a pipeline file and report every problem with its line and column.
    Validate {
        /// The pipeline file.
        #[arg(default_value = ".orch.yml")]
        file: PathBuf,
    },
    /// Show which steps run for an event, in what order, and why the others are skipped.
    Plan(PlanArgs),
    /// Run the pipeline of the current checkout in Docker.
    Ci(CiArgs),
    /// Run the server: GitHub webhooks in, runs in Docker, statuses or check runs out.
    Serve(crate::server::config::ServeArgs),
    /// List or clear the step caches kept on this machine.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
        /// The cache directory [default: $ORCH_CACHE_DIR, else $XDG_CACHE_HOME/orch, else ~/.cache/orch].
        #[arg(long, global = true, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
    },
    /// List a server's runs (newest first).
    Runs {
        /// Only this repository (owner/name).
        #[arg(long)]
        repo: Option<String>,
        /// Only this branch.
        #[arg(long)]
        branch: Option<String>,
        /// Only runs with this status (queued, running, success, failure, error, cancelled, skipped).
        #[arg(long)]
        status: Option<String>,
        /// How many runs.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: crate::client::ServerArgs,
    },
    /// Print a run's logs from a server: one step, or every step in order.
    Logs {
        /// The run's id.
        run: i64,
        /// The step [default: every step that ran, in the order they started].
        step: Option<String>,
        /// Keep printing as the logs grow, until the step (or the run) ends.
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        server: crate::client::ServerArgs,
    },
    /// Cancel a queued or running run on a server (needs the API token).
    Cancel {
        /// The run's id.
        run: i64,
        #[command(flatten)]
        server: crate::client::ServerArgs,
    },
    /// Start a run of a branch on a server, as the event `manual` (needs the API token).
    Trigger {
        /// The repository, owner/name.
        repo: String,
        /// The branch to run.
        #[arg(long, short)]
        branch: String,
        /// The commit [default: the branch's head, asked of GitHub].
        #[arg(long)]
        sha: Option<String>,
        #[command(flatten)]
        server: crate::client::ServerArgs,
    },
    /// Run a run again on a server (needs the API token).
    Rerun {
        /// The run's id.
        run: i64,
        /// Only the failed steps and what depends on them; the steps that passed keep
        /// their results and artifacts.
        #[arg(long)]
        failed: bool,
        #[command(flatten)]
        server: crate::client::ServerArgs,
    },
    /// Remove containers, networks and volumes left behind by orch runs that were killed.
    Gc {
        /// Also remove what belongs to runs of orch processes that are still alive.
        #[arg(long)]
        all: bool,
    },
    /// Write a .orch.yml for the project in the current directory, from a shipped template.
    Init {
        /// The template [default: the one that fits the project's files].
        #[arg(long, short, value_name = "NAME", value_parser = crate::pipeline::templates::names())]
        template: Option<String>,
        /// List the templates (and those that fit this project), write nothing.
        #[arg(long, conflicts_with_all = ["template", "force"])]
        list: bool,
        /// Replace an existing .orch.yml without asking.
        #[arg(long, short)]
        force: bool,
    },
    /// Check this machine for orch: Docker, the local images, disk space, the cache dir,
    /// git and (when a config or a webhook secret is given) the server's config.
    Doctor {
        /// The cache directory [default: $ORCH_CACHE_DIR, else $XDG_CACHE_HOME/orch, else ~/.cache/orch].
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
        /// The server's settings, checked as `orch serve` would resolve them.
        #[command(flatten, next_help_heading = "Server settings (checked when --config or a webhook secret is given)")]
        serve: crate::server::config::ServeArgs,
    },
    /// Print a shell completion script (bash, zsh, fish) on stdout.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Print the man page (roff) on stdout.
    Man,
    /// Print the JSON Schema of `.orch.yml`, for editors (the YAML language server) and
    /// linters. The same schema is docs/orch.schema.json in orch's repository.
    Schema,
}

/// The shells `orch completions` writes for.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

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
    /// The event: push, pull_request, tag or manual [default: push, or tag with --tag].
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
    /// The commit SHA [default: the checkout's HEAD].
    #[arg(long)]
    pub commit: Option<String>,
    /// A changed file, for `paths` conditions (repeat it) [default: from git].
    #[arg(long = "changed", value_name = "PATH")]
    pub changed: Vec<String>,
}

/// Parses the command line. An `ORCH_*` variable that is set but empty counts as unset: a
/// service's environment file lists every setting, most of them empty (`ORCH_ALLOW_REPOS=`
/// would otherwise be an allow-list of one empty name, and hide the config file's).
pub fn parse() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let matches = ignore_empty_env(Cli::command()).get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn ignore_empty_env(cmd: clap::Command) -> clap::Command {
    let cmd = cmd.mut_args(|a| {
        let empty = a.get_env().and_then(std::env::var_os).is_some_and(|v| v.is_empty());
        if empty { a.env(None) } else { a }
    });
    let subcommands: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_string()).collect();
    subcommands.into_iter().fold(cmd, |c, name| c.mut_subcommand(name, ignore_empty_env))
}

fn parse_event(s: &str) -> Result<Event, String> {
    Event::parse(s).ok_or_else(|| format!("unknown event `{s}` (expected push, pull_request, tag or manual)"))
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
}

/// Runs a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> u8 {
    let result = match cli.command {
        Command::Validate { file } => validate(&file),
        Command::Plan(args) => crate::ci::plan_command(args),
        Command::Ci(args) => crate::ci::ci_command(args).await,
        Command::Gc { all } => crate::ci::gc_command(all).await,
        Command::Serve(args) => serve(args).await,
        Command::Cache { command, cache_dir } => crate::ci::cache_command(command, cache_dir),
        Command::Runs { repo, branch, status, limit, json, server } => {
            crate::client::runs(&server, repo, branch, status, limit, json).await
        }
        Command::Logs { run, step, follow, server } => crate::client::logs(&server, run, step, follow).await,
        Command::Cancel { run, server } => crate::client::cancel(&server, run).await,
        Command::Rerun { run, failed, server } => crate::client::rerun(&server, run, failed).await,
        Command::Trigger { repo, branch, sha, server } => {
            crate::client::trigger(&server, &repo, &branch, sha.as_deref()).await
        }
        Command::Init { template, list, force } => init(template.as_deref(), list, force),
        Command::Doctor { cache_dir, serve } => Ok(crate::doctor::run(cache_dir, &serve).await),
        Command::Completions { shell } => completions(shell),
        Command::Man => man(),
        Command::Schema => schema(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            report_error(&e);
            e.exit_code()
        }
    }
}

fn init(template: Option<&str>, list: bool, force: bool) -> Result<u8, Error> {
    let dir = std::env::current_dir().map_err(|e| Error::io("cannot read the current directory", e))?;
    crate::init::run(&dir, template, list, force)
}

/// Writes the completion script for `shell`, generated from these clap definitions.
fn completions(shell: CompletionShell) -> Result<u8, Error> {
    use clap::CommandFactory;
    let shell = match shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "orch", &mut out);
    write_stdout(&out)
}

/// Writes the man page, generated from these clap definitions.
fn man() -> Result<u8, Error> {
    use clap::CommandFactory;
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut out).map_err(|e| Error::io("cannot render the man page", e))?;
    write_stdout(&out)
}

/// Writes the JSON Schema of a pipeline file, generated from the loader's own key tables.
fn schema() -> Result<u8, Error> {
    let mut out = crate::pipeline::spec::schema_text();
    out.push('\n');
    write_stdout(out.as_bytes())
}

fn write_stdout(bytes: &[u8]) -> Result<u8, Error> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(exit::SUCCESS),
        // `orch man | head`: a closed pipe is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(exit::SUCCESS),
        Err(e) => Err(Error::io("cannot write to stdout", e)),
    }
}

fn validate(file: &std::path::Path) -> Result<u8, Error> {
    let p = crate::pipeline::load_file(file)?;
    println!(
        "{}: valid ({} step{}, stages: {})",
        file.display(),
        p.steps.len(),
        if p.steps.len() == 1 { "" } else { "s" },
        p.stages.join(", ")
    );
    Ok(exit::SUCCESS)
}

async fn serve(args: crate::server::config::ServeArgs) -> Result<u8, Error> {
    let cfg = args.resolve().map_err(|e| Error::Usage(e.to_string()))?;
    let shutdown = async {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
            (Ok(mut i), Ok(mut t)) => {
                tokio::select! {
                    _ = i.recv() => {}
                    _ = t.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
        tracing::info!("stopping: running runs are stopped and queued again");
    };
    crate::server::serve(cfg, shutdown).await.map_err(|e| Error::Usage(e.to_string()))?;
    Ok(exit::SUCCESS)
}

/// Prints an error for a person on stderr; "error:" in red on a terminal.
pub fn report_error(e: &Error) {
    use std::io::IsTerminal;
    let text = match e {
        // Diagnostics carry their own "error:" lines.
        Error::Config(crate::pipeline::ConfigError::Invalid { rendered, .. }) => rendered.clone(),
        other => format!("error: {other}\n"),
    };
    if std::io::stderr().is_terminal() {
        eprint!("{}", text.replace("error:", "\x1b[1;31merror\x1b[0m\x1b[1m:\x1b[0m"));
    } else {
        eprint!("{text}");
    }
}
