//! Reporters: they consume [`RunEvent`]s and show them. They never call back into the
//! scheduler. `console` is for people (live progress on a terminal, plain lines otherwise),
//! `json` is one JSON object per line for tools.

pub mod console;
pub mod json;
pub mod logfile;

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
    /// Where to write the step log files ([`logfile::LogFiles`]); `None`: none written.
    pub log_files: Option<PathBuf>,
    /// Held while events are shown: whoever else holds it (`orch ci --shell`) has the
    /// terminal to itself meanwhile.
    pub screen: Option<std::sync::Arc<tokio::sync::Mutex<()>>>,
}

/// Consumes events until the channel closes: shows them, and writes the log files.
pub async fn run(opts: ReportOptions, mut rx: mpsc::Receiver<RunEvent>) {
    let mut files = opts.log_files.clone().map(logfile::LogFiles::new);
    enum Shown {
        Json(json::JsonReporter<std::io::Stdout>),
        Console(Box<console::Console>),
    }
    let mut shown = match opts.mode {
        Mode::Json => Shown::Json(json::JsonReporter::new(std::io::stdout())),
        Mode::Progress | Mode::Plain => {
            Shown::Console(Box::new(console::Console::new(opts.mode == Mode::Progress, opts.log_dir.clone())))
        }
    };
    while let Some(ev) = rx.recv().await {
        let _screen = match &opts.screen {
            Some(m) => Some(m.lock().await),
            None => None,
        };
        let mut next = Some(ev);
        // Everything there is, then the files are flushed: batches when output is fast,
        // each line at once when it is slow.
        while let Some(ev) = next.take() {
            if let Some(f) = files.as_mut() {
                f.event(&ev);
            }
            match &mut shown {
                Shown::Json(r) => r.event(&ev),
                Shown::Console(r) => r.event(&ev),
            }
            next = rx.try_recv().ok();
        }
        if let Some(f) = files.as_mut() {
            f.flush();
        }
    }
    if let Shown::Console(r) = &mut shown {
        r.finish();
    }
    // The terminal showed every line; the files did not keep them all.
    if let Some(why) = files.as_ref().and_then(|f| f.lost()) {
        eprintln!("warning: {why}; the run's log files are not whole");
    }
}
