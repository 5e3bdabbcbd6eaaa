//! The command line: clap definitions and dispatch. No logic lives here beyond turning
//! arguments into calls.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::ci::{CacheCommand, CiArgs, PlanArgs};
use crate::error::{Error, exit};

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
    /// Translate GitHub Actions workflows into a .orch.yml; what cannot be translated is
    /// reported on stderr, by workflow line.
    Import {
        /// The workflow files (.github/workflows/*.yml); several are merged into one pipeline.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Write the pipeline to this file [default: stdout].
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        /// The image of jobs without `container:` [default: debian:bookworm].
        #[arg(long, value_name = "IMAGE")]
        image: Option<String>,
        /// Print one JSON object (the pipeline and every finding) on stdout instead.
        #[arg(long)]
        json: bool,
    },
    /// Show which steps run for an event, in what order, and why the others are skipped.
    Plan(PlanArgs),
    /// Run the pipeline of the current checkout in Docker.
    Ci(CiArgs),
    /// Run the server: GitHub webhooks in, runs in Docker, statuses or check runs out.
    Serve(crate::server::config::ServeArgs),
    /// Execute a server's runs on this machine's Docker: connect to the server, take the
    /// jobs this machine's labels fit, send their logs and results back.
    Agent(crate::agent::AgentArgs),
    /// Create, list or revoke the tokens agents present (run where the server's data is).
    AgentToken {
        #[command(subcommand)]
        command: crate::agent::TokenCommand,
        #[command(flatten)]
        data: crate::tokens::ServerData,
    },
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
    /// Approve a deployment of a run that waits for approval (with your named token:
    /// `orch token create NAME --can approve` on the server).
    Approve {
        /// The run's id.
        run: i64,
        /// The step whose deployment waits (needed only when several wait).
        step: Option<String>,
        /// The environment that waits (instead of the step).
        #[arg(long, value_name = "ENV")]
        environment: Option<String>,
        #[command(flatten)]
        server: crate::client::ServerArgs,
    },
    /// Reject a deployment of a run that waits for approval: its steps fail.
    Reject {
        /// The run's id.
        run: i64,
        /// The step whose deployment waits (needed only when several wait).
        step: Option<String>,
        /// The environment that waits (instead of the step).
        #[arg(long, value_name = "ENV")]
        environment: Option<String>,
        #[command(flatten)]
        server: crate::client::ServerArgs,
    },
    /// Create, list or revoke named API tokens, one per person (run where the server's
    /// data is). A named token with `--can approve` votes on deployment gates.
    Token {
        #[command(subcommand)]
        command: crate::tokens::ApiTokenCommand,
        #[command(flatten)]
        data: crate::tokens::ServerData,
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
    /// Deploy a commit of a repository to an environment on a server: a run of that commit
    /// with only the steps deploying there and what they need (needs the API token).
    /// Without --commit: roll back, to the commit deployed there with success before the
    /// live one.
    Deploy {
        /// The environment.
        environment: String,
        /// The repository, owner/name.
        #[arg(long)]
        repo: String,
        /// The commit (full 40-digit SHA) [default: roll back].
        #[arg(long, value_name = "SHA")]
        commit: Option<String>,
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
        #[arg(long, short, value_name = "NAME", value_parser = template_names())]
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

/// Runs a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> u8 {
    let result = match cli.command {
        Command::Validate { file } => validate(&file),
        Command::Import { files, output, image, json } => crate::import::run(&files, output.as_deref(), image, json),
        Command::Plan(args) => crate::ci::plan_command(args),
        Command::Ci(args) => crate::ci::ci_command(args).await,
        Command::Gc { all } => crate::ci::gc_command(all).await,
        Command::Serve(args) => serve(args).await,
        Command::Agent(args) => crate::agent::run(args).await,
        Command::AgentToken { command, data } => crate::agent::token(command, data).await,
        Command::Cache { command, cache_dir } => crate::ci::cache_command(command, cache_dir),
        Command::Runs { repo, branch, status, limit, json, server } => {
            crate::client::runs(&server, repo, branch, status, limit, json).await
        }
        Command::Logs { run, step, follow, server } => crate::client::logs(&server, run, step, follow).await,
        Command::Cancel { run, server } => crate::client::cancel(&server, run).await,
        Command::Approve { run, step, environment, server } => {
            crate::client::vote(&server, run, step, environment, true).await
        }
        Command::Reject { run, step, environment, server } => {
            crate::client::vote(&server, run, step, environment, false).await
        }
        Command::Token { command, data } => crate::tokens::run(command, data).await,
        Command::Rerun { run, failed, server } => crate::client::rerun(&server, run, failed).await,
        Command::Deploy { environment, repo, commit, server } => {
            crate::client::deploy(&server, &environment, &repo, commit.as_deref()).await
        }
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
            crate::error::report(&e);
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
    crate::error::write_stdout(&out)
}

/// Writes the man page, generated from these clap definitions.
fn man() -> Result<u8, Error> {
    use clap::CommandFactory;
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut out).map_err(|e| Error::io("cannot render the man page", e))?;
    crate::error::write_stdout(&out)
}

/// Writes the JSON Schema of a pipeline file, generated from the loader's own key tables.
fn schema() -> Result<u8, Error> {
    let mut out = crate::pipeline::spec::schema_text();
    out.push('\n');
    crate::error::write_stdout(out.as_bytes())
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
    crate::server::serve(cfg, shutdown).await?;
    Ok(exit::SUCCESS)
}

/// The templates' names, for the command line: its shell completions offer them, and an
/// unknown name gets the list (and the closest name).
fn template_names() -> clap::builder::PossibleValuesParser {
    use crate::pipeline::templates::TEMPLATES;
    clap::builder::PossibleValuesParser::new(
        TEMPLATES.iter().map(|t| clap::builder::PossibleValue::new(t.name).help(t.about)),
    )
}
