//! The terminal reporter. On a terminal: a spinner line per running step with its elapsed
//! time and last output line, log lines printed above the spinners, coloured status lines.
//! Otherwise (or with `--no-progress`): the same lines, plain, no colours or cursor tricks.
//! Both end with a summary table.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::sched::{Level, RunEvent, RunStatus, StepStatus, StepSummary};

const RESET: &str = "\x1b[0m";
const BOLD: &str = "\x1b[1m";
const DIM: &str = "\x1b[2m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const PALETTE: [&str; 6] = ["\x1b[36m", "\x1b[35m", "\x1b[34m", "\x1b[33m", "\x1b[32m", "\x1b[96m"];

pub struct Console {
    color: bool,
    multi: Option<MultiProgress>,
    bars: HashMap<String, ProgressBar>,
    width: usize,
    colors: HashMap<String, &'static str>,
    /// Each step's rendered line prefix (`name  |`).
    prefixes: HashMap<String, String>,
    out: std::io::BufWriter<std::io::Stdout>,
    log_dir: Option<std::path::PathBuf>,
    total_width: usize,
}

impl Console {
    pub fn new(progress: bool, log_dir: Option<std::path::PathBuf>) -> Self {
        let multi = progress.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)));
        let total_width = terminal_width().unwrap_or(100);
        Console {
            color: progress,
            multi,
            bars: HashMap::new(),
            width: 4,
            colors: HashMap::new(),
            prefixes: HashMap::new(),
            out: std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout()),
            log_dir,
            total_width,
        }
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.color { format!("{code}{s}{RESET}") } else { s.to_string() }
    }

    /// Prints a line above the progress bars (or plainly).
    fn line(&mut self, s: &str) {
        match &self.multi {
            Some(m) => {
                let _ = self.out.flush();
                let _ = m.println(s);
            }
            None => {
                let _ = writeln!(self.out, "{s}");
            }
        }
    }

    fn flush(&mut self) {
        let _ = self.out.flush();
    }

    fn prefix(&self, step: &str) -> String {
        let p = format!("{step:<w$}", w = self.width);
        match self.colors.get(step) {
            Some(c) if self.color => format!("{c}{p}{RESET} {DIM}|{RESET}"),
            _ => format!("{p} |"),
        }
    }

    pub fn event(&mut self, ev: &RunEvent) {
        match ev {
            RunEvent::RunStarted { run_id, steps, skipped, jobs } => {
                self.width = steps.iter().map(|s| s.name.len()).max().unwrap_or(4).clamp(4, 32);
                for (i, s) in steps.iter().enumerate() {
                    self.colors.insert(s.name.clone(), PALETTE[i % PALETTE.len()]);
                }
                let head = format!(
                    "orch: run {run_id}: {} step{} ({} skipped), up to {jobs} at a time",
                    steps.len(),
                    if steps.len() == 1 { "" } else { "s" },
                    skipped.len()
                );
                let head = self.paint(BOLD, &head);
                self.line(&head);
                for s in skipped {
                    let l = self.paint(DIM, &format!("  ○ {} skipped: {}", s.name, s.reason));
                    self.line(&l);
                }
                self.flush();
            }
            RunEvent::StepStarted { step, attempt, attempts } => {
                let att = if *attempts > 1 { format!(" (attempt {attempt}/{attempts})") } else { String::new() };
                if let Some(m) = &self.multi {
                    let bar = m.add(ProgressBar::new_spinner());
                    let style =
                        ProgressStyle::with_template("{spinner:.cyan} {prefix:.bold} {elapsed:>4} {wide_msg:.dim}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner());
                    bar.set_style(style);
                    bar.set_prefix(format!("{step:<w$}{att}", w = self.width));
                    bar.enable_steady_tick(Duration::from_millis(100));
                    self.bars.insert(step.clone(), bar);
                } else {
                    let l = format!("▶ {step}{att}");
                    self.line(&l);
                    self.flush();
                }
            }
            RunEvent::StepOutput { step, text, .. } => {
                let max = self.total_width.saturating_sub(self.width + 3).max(20);
                if let Some(bar) = self.bars.get(step)
                    && let Some(last) = crate::sched::logs::lines_of(text).last()
                {
                    let short: String = last.chars().take(max).collect();
                    bar.set_message(short);
                }
                if self.multi.is_some() {
                    // One print above the bars for the whole batch.
                    let p = self.prefix(step);
                    let mut l = String::with_capacity(text.len() + p.len());
                    for line in crate::sched::logs::lines_of(text) {
                        if !l.is_empty() {
                            l.push('\n');
                        }
                        l.push_str(&p);
                        l.push(' ');
                        l.push_str(line);
                    }
                    self.line(&l);
                } else {
                    // The hot path of a step printing a lot: no formatting, buffered writes.
                    if !self.prefixes.contains_key(step) {
                        let mut p = self.prefix(step);
                        p.push(' ');
                        self.prefixes.insert(step.clone(), p);
                    }
                    let p = self.prefixes[step].as_bytes();
                    for line in memchr::memchr_iter(b'\n', text.as_bytes()).scan(0, |start, nl| {
                        let l = &text.as_bytes()[*start..=nl];
                        *start = nl + 1;
                        Some(l)
                    }) {
                        let _ = self.out.write_all(p);
                        let _ = self.out.write_all(line);
                    }
                    // One write per batch: output piped to a file or `tee` is live too.
                    self.flush();
                }
            }
            RunEvent::StepRetrying { step, attempt, exit_code } => {
                if let Some(bar) = self.bars.remove(step) {
                    bar.finish_and_clear();
                }
                let l = self
                    .paint(YELLOW, &format!("↻ {step}: attempt {attempt} failed with exit code {exit_code}, retrying"));
                self.line(&l);
                self.flush();
            }
            RunEvent::StepFinished(s) => {
                if let Some(bar) = self.bars.remove(&s.step) {
                    bar.finish_and_clear();
                }
                let l = self.status_line(s);
                self.line(&l);
                self.flush();
            }
            RunEvent::CacheRestored { step, key, hit, fallback, size } => {
                let l = if *hit {
                    let from = if *fallback { " from the default branch" } else { "" };
                    format!("⇣ {step}: cache `{key}` restored{from} ({})", crate::fmt::size(*size))
                } else {
                    format!("⇣ {step}: cache `{key}` not found")
                };
                let l = self.paint(DIM, &l);
                self.line(&l);
            }
            RunEvent::DeploymentStarted { step, environment, url } => {
                let at = url.as_ref().map(|u| format!(" ({u})")).unwrap_or_default();
                let l = self.paint(BOLD, &format!("⇒ {step}: deploying to {environment}{at}"));
                self.line(&l);
                self.flush();
            }
            RunEvent::DeploymentFinished { step, environment, status, .. } => {
                let l = match status {
                    crate::sched::events::DeploymentStatus::Success => {
                        self.paint(GREEN, &format!("⇒ {step}: deployed to {environment}"))
                    }
                    other => {
                        let how = match other {
                            crate::sched::events::DeploymentStatus::Failure => "failed",
                            crate::sched::events::DeploymentStatus::Cancelled => "was cancelled",
                            _ => "erred",
                        };
                        self.paint(RED, &format!("⇒ {step}: deployment to {environment} {how}"))
                    }
                };
                self.line(&l);
                self.flush();
            }
            RunEvent::GateWaiting { step, environment, approvers, required, timeout, .. } => {
                let l = self.paint(
                    YELLOW,
                    &format!(
                        "⏸ {step}: {environment} waits for approval ({required} of {}; fails after {})",
                        approvers.join(", "),
                        crate::pipeline::format_duration(*timeout)
                    ),
                );
                self.line(&l);
                self.flush();
            }
            RunEvent::GateNote { step, environment, note, .. } => {
                let l = self.paint(YELLOW, &format!("⏸ {step}: {environment}: {note}"));
                self.line(&l);
                self.flush();
            }
            RunEvent::GateDecided { step, environment, outcome, by, reason } => {
                use crate::sched::events::GateOutcome;
                let why = reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
                let l = match outcome {
                    GateOutcome::Approved if by.is_empty() => {
                        self.paint(GREEN, &format!("⏵ {step}: {environment} may deploy"))
                    }
                    GateOutcome::Approved => {
                        self.paint(GREEN, &format!("⏵ {step}: {environment} approved by {}", by.join(", ")))
                    }
                    GateOutcome::Refused => self.paint(DIM, &format!("⏵ {step}: {environment} refused{why}")),
                    GateOutcome::Failed => self.paint(RED, &format!("⏹ {step}: {environment} not approved{why}")),
                    GateOutcome::Cancelled => self.paint(DIM, &format!("⏹ {step}: {environment} gate cancelled")),
                };
                self.line(&l);
                self.flush();
            }
            RunEvent::CacheSaved { step, key, size } => {
                let l = self.paint(DIM, &format!("⇡ {step}: cache `{key}` saved ({})", crate::fmt::size(*size)));
                self.line(&l);
            }
            RunEvent::ArtifactsCollected { step, files, .. } => {
                let total: u64 = files.iter().map(|f| f.size).sum();
                let l = self.paint(
                    DIM,
                    &format!(
                        "⇡ {step}: {} artifact file{} kept ({})",
                        files.len(),
                        if files.len() == 1 { "" } else { "s" },
                        crate::fmt::size(total)
                    ),
                );
                self.line(&l);
            }
            RunEvent::RunMessage { level, message } => {
                let (code, word) = match level {
                    Level::Info => (DIM, "note"),
                    Level::Warning => (YELLOW, "warning"),
                    Level::Error => (RED, "error"),
                };
                let l = self.paint(code, &format!("orch: {word}: {message}"));
                self.line(&l);
                self.flush();
            }
            RunEvent::RunFinished { status, duration, steps } => {
                for bar in self.bars.drain() {
                    bar.1.finish_and_clear();
                }
                let table = self.summary(*status, *duration, steps);
                self.line(&table);
                self.flush();
            }
        }
    }

    fn status_line(&self, s: &StepSummary) -> String {
        let took = crate::fmt::duration(s.duration);
        let retries = if s.attempts > 1 { format!(", {} attempts", s.attempts) } else { String::new() };
        let msg = s.message.clone().unwrap_or_default();
        match s.status {
            StepStatus::Passed => self.paint(GREEN, &format!("✔ {} passed in {took}{retries}", s.step)),
            StepStatus::Skipped => self.paint(DIM, &format!("○ {} skipped: {msg}", s.step)),
            _ if s.allowed_failure => self.paint(
                YELLOW,
                &format!("! {} {} ({msg}) in {took}{retries}; allowed to fail", s.step, s.status.label()),
            ),
            StepStatus::TimedOut => self.paint(RED, &format!("⏱ {} {msg}{retries}", s.step)),
            StepStatus::Cancelled => self.paint(YELLOW, &format!("■ {} cancelled after {took}", s.step)),
            StepStatus::Failed => self.paint(RED, &format!("✘ {} failed ({msg}) in {took}{retries}", s.step)),
            StepStatus::Error => self.paint(RED, &format!("✘ {} could not run: {msg}", s.step)),
        }
    }

    fn summary(&self, status: RunStatus, duration: Duration, steps: &[StepSummary]) -> String {
        let w = steps.iter().map(|s| s.step.len()).max().unwrap_or(4).max(4);
        let mut out = String::from("\n");
        out.push_str(&format!("{:<w$}  {:<10}  {:>8}  note\n", "step", "status", "time"));
        for s in steps {
            let st = if s.allowed_failure { format!("{}*", s.status.label()) } else { s.status.label().to_string() };
            let time = if s.status == StepStatus::Skipped { "-".to_string() } else { crate::fmt::duration(s.duration) };
            let note = match (&s.message, s.attempts) {
                (Some(m), n) if n > 1 => format!("{m}, {n} attempts"),
                (Some(m), _) => m.clone(),
                (None, n) if n > 1 => format!("{n} attempts"),
                (None, _) => String::new(),
            };
            let code = match s.status {
                StepStatus::Passed => GREEN,
                StepStatus::Skipped => DIM,
                _ if s.allowed_failure => YELLOW,
                _ => RED,
            };
            let max_note = self.total_width.saturating_sub(w + 26).max(20);
            let note: String = note.chars().take(max_note).collect();
            let row = format!("{:<w$}  {}  {:>8}  {note}", s.step, self.paint(code, &format!("{st:<10}")), time);
            out.push_str(row.trim_end());
            out.push('\n');
        }
        let code = match status {
            RunStatus::Success => GREEN,
            RunStatus::Cancelled => YELLOW,
            _ => RED,
        };
        let head =
            self.paint(&format!("{BOLD}{code}"), &format!("{} in {}", status.as_str(), crate::fmt::duration(duration)));
        out.push_str(&format!("\n{head} ({})", crate::sched::tally(steps, false)));
        if steps.iter().any(|s| s.allowed_failure) {
            out.push_str("; * allowed to fail");
        }
        let with_artifacts: Vec<&StepSummary> = steps.iter().filter(|s| !s.artifacts.is_empty()).collect();
        if !with_artifacts.is_empty() {
            out.push_str("\nartifacts:");
            for s in with_artifacts {
                for f in &s.artifacts {
                    out.push_str(&format!(
                        "\n  {}/{}  {}",
                        crate::plan::slug(&s.step),
                        f.path,
                        crate::fmt::size(f.size)
                    ));
                }
            }
            if let Some(d) = &self.log_dir {
                let dir = d.parent().map(|p| p.join("artifacts")).unwrap_or_default();
                out.push_str(&format!("\n  in {}", dir.display()));
            }
        }
        if let Some(d) = &self.log_dir {
            out.push_str(&format!("\nlogs: {}", d.display()));
        }
        out
    }

    pub fn finish(&mut self) {
        self.flush();
        if let Some(m) = &self.multi {
            let _ = m.clear();
        }
    }
}

fn terminal_width() -> Option<usize> {
    std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok())
}
