//! The top-level error and the exit codes of the `orch` command, in one place.

use crate::pipeline::ConfigError;

/// Exit codes of `orch`, kept with the engine (a run's status maps to one).
pub use orch_engine::exit;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    #[error(transparent)]
    Git(#[from] crate::git::GitError),
    #[error("{0}")]
    Usage(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Backend(#[from] crate::exec::BackendError),
    #[error(transparent)]
    Setup(#[from] crate::setup::SetupError),
    /// An `orch serve` the CLI talked to refused or could not be reached.
    #[error("{0}")]
    Remote(String),
    /// `orch serve` could not start or stopped on an error.
    #[error(transparent)]
    Serve(#[from] crate::server::ServeError),
    /// orch's own output failed its own checks (`orch import`'s pipeline does not
    /// validate): a bug to report, not the user's input.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::Plan(_) | Error::Usage(_) => exit::INVALID,
            Error::Setup(e) if e.is_usage() => exit::INVALID,
            Error::Setup(_) => exit::INFRA,
            Error::Git(_) | Error::Io { .. } | Error::Backend(_) | Error::Remote(_) | Error::Internal(_) => exit::INFRA,
            // Settings are the operator's input; a port taken, a database or Docker that
            // fails are the machine's.
            Error::Serve(crate::server::ServeError::Config(_)) => exit::INVALID,
            Error::Serve(_) => exit::INFRA,
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
}

/// Prints an error for a person on stderr; "error:" in red on a terminal.
pub fn report(e: &Error) {
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

/// Writes a command's output to stdout. A closed pipe (`orch man | head`) is not an error.
pub fn write_stdout(bytes: &[u8]) -> Result<u8, Error> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(exit::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(exit::SUCCESS),
        Err(e) => Err(Error::io("cannot write to stdout", e)),
    }
}
