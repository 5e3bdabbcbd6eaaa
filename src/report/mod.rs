//! Reporters: they consume [`RunEvent`]s and show them. They never call back into the
//! scheduler. `console` is for people (live progress on a terminal, plain lines otherwise),
//! `json` is one JSON object per line for tools.

pub mod console;
pub mod json;

use std::path::PathBuf;

use tokio::sync::mpsc;

use crate::sched::RunEvent;

/// How a run is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Spinners per running step (indicatif), colours; for a terminal.
    Progress,
    /// One line per event, no colours, no cursor movement; for logs and pipes.
    Plain,
    /// JSON lines (`orch ci --json`).
    Json,
}

pub struct ReportOptions {
    pub mode: Mode,
    /// Where the run's logs are kept, shown in the summary.
    pub log_dir: Option<PathBuf>,
}

/// Consumes events until the channel closes.
pub async fn run(opts: ReportOptions, mut rx: mpsc::Receiver<RunEvent>) {
    match opts.mode {
        Mode::Json => {
            let mut r = json::JsonReporter::new(std::io::stdout());
            while let Some(ev) = rx.recv().await {
                r.event(&ev);
            }
        }
        Mode::Progress | Mode::Plain => {
            let mut r = console::Console::new(opts.mode == Mode::Progress, opts.log_dir);
            while let Some(ev) = rx.recv().await {
                r.event(&ev);
            }
            r.finish();
        }
    }
}
