//! Step log files, written from the event stream: `<dir>/<slug>.log` holds a step's lines
//! as the terminal shows them (secrets masked), with `--- attempt N ---` before the lines of
//! a later attempt. `orch ci` and the server write them with this one consumer.
//!
//! Writes are buffered; [`LogFiles::flush`] makes what was written visible to readers (the
//! faces call it whenever the event stream has nothing more at once, so a slow step's lines
//! reach the file as soon as they are printed, and a fast one's in batches).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use crate::sched::RunEvent;

/// What [`LogFiles::event`] wrote: whole lines of `step`'s log (each ending with `\n`),
/// which end at byte `end` of its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub step: String,
    pub text: String,
    pub end: u64,
}

struct StepFile {
    w: BufWriter<File>,
    len: u64,
}

/// The log files of one run.
pub struct LogFiles {
    dir: PathBuf,
    open: HashMap<String, StepFile>,
    /// The first failure to keep a log (a full disk): lines were lost from then on.
    lost: Option<String>,
}

impl LogFiles {
    /// Log files in `dir` (which must exist).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LogFiles { dir: dir.into(), open: HashMap::new(), lost: None }
    }

    /// The file of `step`, opened (to append) on first use.
    fn file(&mut self, step: &str) -> Option<&mut StepFile> {
        if !self.open.contains_key(step) {
            let path = self.dir.join(format!("{}.log", crate::plan::slug(step)));
            let f = match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
                Ok(f) => f,
                Err(e) => {
                    self.lose(step, &e);
                    return None;
                }
            };
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            self.open.insert(step.to_string(), StepFile { w: BufWriter::with_capacity(64 * 1024, f), len });
        }
        self.open.get_mut(step)
    }

    /// Writes `text`, whole lines.
    fn write(&mut self, step: &str, text: &str) -> Option<Written> {
        let f = self.file(step)?;
        // A failed write (a full disk) loses log lines; the run goes on, and the face that
        // owns it hears of it ([`LogFiles::lost`]).
        if let Err(e) = f.w.write_all(text.as_bytes()) {
            self.lose(step, &e);
            return None;
        }
        f.len += text.len() as u64;
        Some(Written { step: step.to_string(), text: text.to_string(), end: f.len })
    }

    fn lose(&mut self, step: &str, e: &std::io::Error) {
        if self.lost.is_none() {
            self.lost = Some(format!("the log of step `{step}` could not be written: {e}"));
        }
    }

    /// Why lines were lost from a log, if they were.
    pub fn lost(&self) -> Option<&str> {
        self.lost.as_deref()
    }

    /// Writes what `ev` puts in a log; returns the line written, if any.
    pub fn event(&mut self, ev: &RunEvent) -> Option<Written> {
        match ev {
            RunEvent::StepStarted { step, attempt, .. } if *attempt > 1 => {
                self.write(step, &format!("--- attempt {attempt} ---\n"))
            }
            RunEvent::StepOutput { step, text, .. } => self.write(step, text),
            RunEvent::StepFinished(s) => {
                // The step's file is complete: closed now, not at the end of the run.
                if let Some(mut f) = self.open.remove(&s.step)
                    && let Err(e) = f.w.flush()
                {
                    self.lose(&s.step, &e);
                }
                None
            }
            _ => None,
        }
    }

    /// Hands everything written so far to the files.
    pub fn flush(&mut self) {
        let mut failed = None;
        for (step, f) in &mut self.open {
            if let Err(e) = f.w.flush() {
                failed.get_or_insert((step.clone(), e));
            }
        }
        if let Some((step, e)) = failed {
            self.lose(&step, &e);
        }
    }
}

impl Drop for LogFiles {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::Stream;

    fn log(step: &str, line: &str) -> RunEvent {
        RunEvent::StepOutput { step: step.into(), stream: Stream::Stdout, text: format!("{line}\n") }
    }

    #[test]
    fn a_log_that_cannot_be_written_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let mut f = LogFiles::new(d.path().join("gone"));
        assert!(f.event(&log("a", "one")).is_none());
        assert!(f.lost().is_some_and(|w| w.starts_with("the log of step `a` could not be written")), "{:?}", f.lost());
        let mut ok = LogFiles::new(d.path());
        ok.event(&log("a", "one"));
        ok.flush();
        assert_eq!(ok.lost(), None);
    }

    #[test]
    fn lines_and_attempts_go_to_each_steps_file() {
        let d = tempfile::tempdir().unwrap();
        let mut f = LogFiles::new(d.path());
        let w = f.event(&log("a", "one")).unwrap();
        assert_eq!((w.end, w.text.as_str()), (4, "one\n"));
        f.event(&log("t[v=x y]", "variant"));
        f.event(&RunEvent::StepStarted { step: "a".into(), attempt: 2, attempts: 2 });
        assert_eq!(f.event(&log("a", "two")).unwrap().end, 4 + 18 + 4);
        f.flush();
        assert_eq!(std::fs::read_to_string(d.path().join("a.log")).unwrap(), "one\n--- attempt 2 ---\ntwo\n");
        let slug = crate::plan::slug("t[v=x y]");
        assert_eq!(std::fs::read_to_string(d.path().join(format!("{slug}.log"))).unwrap(), "variant\n");
    }
}
