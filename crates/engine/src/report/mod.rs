//! Reporters: they consume [`RunEvent`]s and show them. They never call back into the
//! scheduler. `console` is for people (live progress on a terminal, plain lines otherwise),
//! `json` is one JSON object per line for tools.

pub mod console;
pub mod json;
pub mod logfile;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMutexGuard, mpsc, oneshot};

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
    /// Shared with whoever borrows the terminal (`orch ci --shell`, an approval prompt).
    pub screen: Option<Arc<Screen>>,
}

/// The terminal, shared by the reporter and whoever borrows it for a while. The reporter
/// shows events holding its lock; a borrower first has every event sent before it shown,
/// then holds the lock, so nothing is printed over it and nothing it should follow comes
/// after it.
pub struct Screen {
    lock: Arc<Mutex<()>>,
    flush: mpsc::UnboundedSender<oneshot::Sender<()>>,
    /// Taken by the reporter.
    flushes: std::sync::Mutex<Option<mpsc::UnboundedReceiver<oneshot::Sender<()>>>>,
}

impl Screen {
    pub fn new() -> Arc<Screen> {
        let (flush, flushes) = mpsc::unbounded_channel();
        Arc::new(Screen { lock: Arc::default(), flush, flushes: std::sync::Mutex::new(Some(flushes)) })
    }

    /// Waits until the reporter has shown every event sent (to the channel it reads) before
    /// this call, then has the terminal to itself until the guard drops. Without a reporter
    /// (none has started with this screen, or it ended) it does not wait for one.
    pub async fn borrow(&self) -> OwnedMutexGuard<()> {
        let reporting = self.flushes.lock().unwrap_or_else(|e| e.into_inner()).is_none();
        let (done, shown) = oneshot::channel();
        if reporting && self.flush.send(done).is_ok() {
            // An error is a reporter that is gone: nothing is left to show.
            let _ = shown.await;
        }
        self.lock.clone().lock_owned().await
    }

    fn take_flushes(&self) -> Option<mpsc::UnboundedReceiver<oneshot::Sender<()>>> {
        // A poisoned lock only means another reporter panicked taking it; the value is whole.
        self.flushes.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The next flush a borrower asks for; never, without a screen.
async fn next_flush(flushes: &mut Option<mpsc::UnboundedReceiver<oneshot::Sender<()>>>) -> Option<oneshot::Sender<()>> {
    match flushes {
        Some(f) => f.recv().await,
        None => std::future::pending().await,
    }
}

/// Consumes events until the channel closes: shows them, and writes the log files. Returns
/// the run's `DeploymentFinished` events, for the caller's records.
pub async fn run(opts: ReportOptions, mut rx: mpsc::Receiver<RunEvent>) -> Vec<RunEvent> {
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
    let mut deployments = Vec::new();
    let mut flushes = opts.screen.as_ref().and_then(|s| s.take_flushes());
    loop {
        // An event, or a borrower asking for everything sent so far to be shown: what is
        // in the channel now is all that was sent before it asked.
        let (first, flushed) = tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => (Some(ev), None),
                None => break,
            },
            Some(done) = next_flush(&mut flushes) => (None, Some(done)),
        };
        let _screen = match &opts.screen {
            Some(s) => Some(s.lock.lock().await),
            None => None,
        };
        // Everything there is, then the files are flushed: batches when output is fast,
        // each line at once when it is slow. For a borrower, only what was sent before it
        // asked: a step that keeps printing does not keep the terminal from it.
        let mut budget = if flushed.is_some() { rx.len() } else { usize::MAX };
        let mut take = |rx: &mut mpsc::Receiver<RunEvent>| {
            budget = budget.checked_sub(1)?;
            rx.try_recv().ok()
        };
        let mut next = first.or_else(|| take(&mut rx));
        while let Some(ev) = next.take() {
            if let Some(f) = files.as_mut() {
                f.event(&ev);
            }
            match &mut shown {
                Shown::Json(r) => r.event(&ev),
                Shown::Console(r) => r.event(&ev),
            }
            if matches!(ev, RunEvent::DeploymentFinished { .. }) {
                deployments.push(ev);
            }
            next = take(&mut rx);
        }
        if let Some(f) = files.as_mut() {
            f.flush();
        }
        if let Some(done) = flushed {
            let _ = done.send(());
        }
    }
    if let Shown::Console(r) = &mut shown {
        r.finish();
    }
    // The terminal showed every line; the files did not keep them all.
    if let Some(why) = files.as_ref().and_then(|f| f.lost()) {
        eprintln!("warning: {why}; the run's log files are not whole");
    }
    deployments
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::Stream;

    fn line(i: usize) -> RunEvent {
        RunEvent::StepOutput { step: "a".into(), stream: Stream::Stdout, text: format!("line {i}\n") }
    }

    fn lines_in(dir: &std::path::Path) -> usize {
        std::fs::read_to_string(dir.join("a.log")).map(|t| t.lines().count()).unwrap_or(0)
    }

    /// `orch ci --shell` printed its "opening a shell" line after the shell had taken the
    /// terminal (the reporter had taken the line off the channel but not shown it yet).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_borrower_has_everything_sent_before_it_shown_and_then_the_screen_to_itself() {
        for _ in 0..5 {
            let d = tempfile::tempdir().unwrap();
            let screen = Screen::new();
            let (tx, rx) = mpsc::channel(1024);
            let opts = ReportOptions {
                mode: Mode::Plain,
                log_dir: None,
                log_files: Some(d.path().to_path_buf()),
                screen: Some(screen.clone()),
            };
            let reporter = tokio::spawn(run(opts, rx));
            while screen.flushes.lock().unwrap().is_some() {
                tokio::task::yield_now().await;
            }
            for i in 0..100 {
                tx.send(line(i)).await.unwrap();
            }
            let held = screen.borrow().await;
            assert_eq!(lines_in(d.path()), 100, "lines sent before the borrow were not all shown");
            tx.send(line(100)).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            assert_eq!(lines_in(d.path()), 100, "the reporter showed a line while the screen was lent");
            drop(held);
            drop(tx);
            reporter.await.unwrap();
            assert_eq!(lines_in(d.path()), 101);
        }
    }

    #[tokio::test]
    async fn without_a_reporter_a_borrow_does_not_wait_for_one() {
        let screen = Screen::new();
        let held = tokio::time::timeout(std::time::Duration::from_secs(5), screen.borrow()).await;
        assert!(held.is_ok(), "the borrow waited for a reporter that never started");
    }
}
