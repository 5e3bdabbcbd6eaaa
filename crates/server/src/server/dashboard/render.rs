//! The HTML of statuses, times, a run's head, its timeline and its artifacts.

use std::fmt::Write as _;
use std::time::Duration;

use crate::server::db::{Run, RunState, StepState, now};

use super::*;

// ---------------------------------------------------------------------------------------
// Statuses, times

/// A run's or a step's status, as the pages show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shown {
    Run(RunState),
    Step(StepState),
}

impl From<RunState> for Shown {
    fn from(s: RunState) -> Self {
        Shown::Run(s)
    }
}

impl From<StepState> for Shown {
    fn from(s: StepState) -> Self {
        Shown::Step(s)
    }
}

impl Shown {
    fn as_str(self) -> &'static str {
        match self {
            Shown::Run(s) => s.as_str(),
            Shown::Step(s) => s.as_str(),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Shown::Run(s) => s.as_str(),
            Shown::Step(s) => s.label(),
        }
    }
}

/// The colour family of a run or step status.
pub(super) fn kind(status: impl Into<Shown>) -> &'static str {
    use {RunState as R, StepState as S};
    match status.into() {
        Shown::Run(R::Success) | Shown::Step(S::Passed) => "ok",
        Shown::Run(R::Failure | R::Error) | Shown::Step(S::Failed | S::TimedOut | S::Error) => "fail",
        Shown::Run(R::Running) | Shown::Step(S::Running) => "run",
        Shown::Run(R::Cancelled) | Shown::Step(S::Cancelled) => "cancel",
        Shown::Run(R::Skipped) | Shown::Step(S::Skipped) => "skip",
        Shown::Run(R::Queued) | Shown::Step(S::Pending) => "wait",
    }
}

pub(super) fn icon(status: impl Into<Shown>) -> &'static str {
    macro_rules! svg {
        ($cls:literal, $body:literal) => {
            concat!(
                "<svg class=\"ic",
                $cls,
                "\" viewBox=\"0 0 16 16\" width=\"16\" height=\"16\" aria-hidden=\"true\" ",
                "fill=\"none\" stroke=\"currentColor\" stroke-width=\"2\" stroke-linecap=\"round\" stroke-linejoin=\"round\">",
                $body,
                "</svg>"
            )
        };
    }
    use {RunState as R, StepState as S};
    match status.into() {
        Shown::Run(R::Success) | Shown::Step(S::Passed) => svg!("", "<path d=\"M13.5 4.5 6.5 11.5 2.5 7.5\"/>"),
        Shown::Run(R::Failure) | Shown::Step(S::Failed) => svg!("", "<path d=\"M4 4l8 8M12 4l-8 8\"/>"),
        Shown::Step(S::TimedOut) => svg!("", "<circle cx=\"8\" cy=\"8\" r=\"6\"/><path d=\"M8 4.5V8l2.5 1.5\"/>"),
        Shown::Run(R::Error) | Shown::Step(S::Error) => {
            svg!("", "<path d=\"M8 2 14.5 13.5h-13z\"/><path d=\"M8 6.5v3M8 11.6v.01\"/>")
        }
        Shown::Run(R::Running) | Shown::Step(S::Running) => {
            svg!(" spin", "<circle cx=\"8\" cy=\"8\" r=\"6\" stroke-dasharray=\"26 12\"/>")
        }
        Shown::Run(R::Cancelled) | Shown::Step(S::Cancelled) => {
            svg!("", "<circle cx=\"8\" cy=\"8\" r=\"6\"/><path d=\"M3.8 12.2l8.4-8.4\"/>")
        }
        Shown::Run(R::Skipped) | Shown::Step(S::Skipped) => svg!("", "<path d=\"M3 4l4.5 4L3 12M9 4l4.5 4L9 12\"/>"),
        Shown::Run(R::Queued) | Shown::Step(S::Pending) => {
            svg!("", "<circle cx=\"8\" cy=\"8\" r=\"6\" stroke-dasharray=\"2 3\"/>")
        }
    }
}

pub(super) fn pill(status: impl Into<Shown>) -> String {
    let s = status.into();
    format!("<span class=\"pill k-{}\" data-status=\"{}\">{}{}</span>", kind(s), s.as_str(), icon(s), esc(s.label()))
}

/// `2026-11-26 15:04:05 UTC`
pub(super) fn absolute(epoch: i64) -> String {
    crate::clock::format_utc(epoch, "%Y-%m-%d %H:%M:%S UTC")
}

pub(super) fn relative(epoch: i64, now: i64) -> String {
    let ago = (now - epoch).max(0);
    match ago {
        0..=9 => "just now".into(),
        10..=59 => format!("{ago} s ago"),
        60..=3599 => format!("{} min ago", ago / 60),
        3600..=86_399 => format!("{} h ago", ago / 3600),
        _ => format!("{} d ago", ago / 86_400),
    }
}

pub(super) fn time_tag(epoch: i64, now: i64) -> String {
    format!("<time datetime=\"{epoch}\" title=\"{}\">{}</time>", absolute(epoch), relative(epoch, now))
}

pub(super) fn human(secs: f64) -> String {
    crate::fmt::duration(Duration::from_secs_f64(secs.max(0.0)))
}

/// How long a run took, or has been running.
pub(super) fn run_secs(run: &Run, now: i64) -> Option<i64> {
    let start = run.started_at?;
    Some(run.finished_at.unwrap_or(if run.status == RunState::Running { now } else { start }) - start)
}

pub(super) fn short(sha: &str) -> &str {
    &sha[..sha.len().min(8)]
}

/// `#12 feature` for a pull request, the branch or tag otherwise.
pub(super) fn ref_label(run: &Run) -> String {
    match (&run.spec.pr, &run.spec.tag, &run.spec.branch) {
        (Some(n), _, Some(b)) => format!("#{n} · {b}"),
        (Some(n), _, None) => format!("#{n}"),
        (None, Some(t), _) => format!("tag {t}"),
        (None, None, Some(b)) => b.clone(),
        _ => String::new(),
    }
}

pub(super) fn commit_title(run: &Run) -> String {
    run.spec
        .title
        .as_deref()
        .and_then(|t| t.lines().next())
        .filter(|t| !t.trim().is_empty())
        .unwrap_or("(no commit message)")
        .to_string()
}

/// A tick step for an axis `total` seconds long: about six ticks.
pub(super) fn tick(total: f64) -> f64 {
    const NICE: [f64; 14] = [1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0];
    NICE.iter().copied().find(|t| total / t <= 7.0).unwrap_or(14_400.0)
}

pub(super) fn axis_label(s: f64) -> String {
    let s = s.round() as u64;
    if s < 60 {
        format!("{s}s")
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

pub(super) fn render_head(v: &RunView) -> String {
    let r = &v.run;
    let now = now();
    let mut meta = String::new();
    let mut item = |k: &str, val: String| {
        let _ = write!(meta, "<div><dt>{k}</dt><dd>{val}</dd></div>");
    };
    item("Repository", esc(&r.spec.repo));
    item("Event", esc(&r.spec.event));
    let rf = ref_label(r);
    item(if r.spec.pr.is_some() { "Pull request" } else { "Ref" }, if rf.is_empty() { "—".into() } else { esc(&rf) });
    item("Commit", format!("<code title=\"{}\">{}</code>", esc(&r.spec.sha), esc(short(&r.spec.sha))));
    item("Author", esc(r.spec.author.as_deref().unwrap_or("—")));
    item(
        "Started",
        match r.started_at {
            Some(t) => time_tag(t, now),
            None => format!("queued {}", time_tag(r.created_at, now)),
        },
    );
    item("Duration", run_secs(r, now).map(|s| human(s as f64)).unwrap_or_else(|| "—".into()));
    item(
        "Delivery",
        r.delivery_id
            .as_deref()
            .map(|d| format!("<code class=\"mono\">{}</code>", esc(d)))
            .unwrap_or_else(|| "— (re-run or manual)".into()),
    );
    if let Some(of) = r.rerun_of {
        let what = if r.failed_only { "Re-run of the failed steps of" } else { "Re-run of" };
        item(what, format!("<a href=\"/runs/{of}\">#{of}</a>"));
    }
    if r.attempts > 1 {
        item("Attempts", r.attempts.to_string());
    }
    if r.dispatched_at.is_some() || r.agent.is_some() {
        let on = match &r.agent {
            Some(a) => format!("agent <code class=\"mono\">{}</code>", esc(a)),
            None => "this server".into(),
        };
        let lost = if r.lost > 0 {
            format!(" (its agent was lost {} time{})", r.lost, if r.lost == 1 { "" } else { "s" })
        } else {
            String::new()
        };
        item("Executed by", format!("{on}{lost}"));
    }
    if let Some(labels) = r.labels.as_ref().filter(|l| !l.is_empty()) {
        item("Runs on", esc(&labels.join(", ")));
    }
    if let Some(why) = &r.report_error {
        item("GitHub", format!("an update was given up: {}", esc(why)));
    }
    let reason = r
        .reason
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| format!("<p class=\"reason muted\">{}</p>", esc(s)))
        .unwrap_or_default();
    let error = if v.error.trim().is_empty() {
        String::new()
    } else {
        format!("<pre class=\"errtxt\" id=\"error\">{}</pre>", esc(&v.error))
    };
    format!(
        "<div class=\"titlebar\">{pill}<h1>{title}</h1></div>{reason}<dl class=\"meta\">{meta}</dl>{error}",
        pill = pill(r.status),
        title = esc(&commit_title(r)),
    )
}

pub(super) fn render_timeline(v: &RunView) -> String {
    let total = v
        .steps
        .iter()
        .filter_map(|s| Some(s.started? + s.duration.unwrap_or(0.0)))
        .fold(0.0_f64, f64::max)
        .max(if v.run.status == RunState::Running {
            v.run.started_at.map(|s| (now() - s) as f64).unwrap_or(0.0)
        } else {
            0.0
        })
        .max(1.0);
    let t = tick(total);
    let span = (total / t).ceil() * t;
    let pct = |x: f64| x / span * 100.0;
    let mut axis = String::new();
    let mut grid = String::new();
    let mut x = 0.0;
    while x <= span + 1e-9 {
        let style =
            if x >= span - 1e-9 { "right:0;transform:none".to_string() } else { format!("left:{:.3}%", pct(x)) };
        let _ = write!(axis, "<span style=\"{style}\">{}</span>", axis_label(x));
        let _ = write!(grid, "<i style=\"left:{:.3}%\"></i>", pct(x));
        x += t;
    }
    let mut rows = String::new();
    for s in &v.steps {
        let stage =
            s.stage.as_deref().map(|st| format!("<span class=\"stage\">{}</span>", esc(st))).unwrap_or_default();
        let mut title = format!("{} — {}", s.name, s.status.label());
        if let Some(d) = s.duration.filter(|_| s.started.is_some()) {
            let _ = write!(title, " in {}", human(d));
        }
        if let Some(c) = s.exit_code.filter(|c| *c != 0) {
            let _ = write!(title, " (exit {c})");
        }
        if s.attempts > 1 {
            let _ = write!(title, ", {} attempts", s.attempts);
        }
        if let Some(n) = &s.note {
            let _ = write!(title, ": {n}");
        }
        let track = match s.started.filter(|_| s.status != StepState::Skipped) {
            Some(start) => {
                let d = s.duration.unwrap_or(0.0);
                let (left, width) = (pct(start), pct(d).max(0.4));
                let text = if s.status == StepState::Running { format!("{} …", human(d)) } else { human(d) };
                let place = if width > 30.0 {
                    " inside"
                } else if left + width > 62.0 {
                    " before"
                } else {
                    ""
                };
                let mut lbl = text;
                if let Some(n) = s.note.as_deref().filter(|_| s.status != StepState::Running) {
                    let _ = write!(lbl, " · {n}");
                }
                format!(
                    "<div class=\"g-bar{place}\" style=\"left:{left:.3}%;width:{width:.3}%\"><span class=\"lbl\">{}</span></div>",
                    esc(&lbl)
                )
            }
            None => {
                let note = match (&s.note, s.status) {
                    (Some(n), StepState::Skipped) => format!("skipped: {n}"),
                    (Some(n), _) => n.clone(),
                    (None, st) => st.label().to_string(),
                };
                // A step skipped while the run ran: its note where it would have started.
                let at = s.started.map(pct).filter(|x| *x < 60.0).unwrap_or(0.0);
                format!(
                    "<div class=\"g-note\" style=\"left:{at:.3}%;max-width:{:.3}%\">{}</div>",
                    100.0 - at,
                    esc(&note)
                )
            }
        };
        // A step that deploys links to its environment (a matrix variant: its step's).
        let base = s.name.split('[').next().unwrap_or(&s.name);
        let env = v
            .deploys
            .iter()
            .find(|(step, _)| step == base)
            .map(|(_, e)| {
                format!(
                    "<a class=\"stage env\" href=\"/environments?repo={}#env-{}\" title=\"deploys to {}\">→ {}</a>",
                    url_part(&v.run.spec.repo),
                    url_part(e),
                    esc(e),
                    esc(e)
                )
            })
            .unwrap_or_default();
        let _ = write!(
            rows,
            "<div class=\"g-row k-{k}\" data-step=\"{n}\" data-status=\"{st}\" title=\"{t}\" role=\"button\" tabindex=\"0\">\
             <div class=\"g-name\">{ic}<span class=\"nm\">{n}</span>{stage}{env}</div><div class=\"g-track\">{track}</div></div>",
            k = kind(s.status),
            n = esc(&s.name),
            st = s.status,
            t = esc(&title),
            ic = icon(s.status),
        );
    }
    if v.steps.is_empty() {
        let msg = match v.run.status {
            RunState::Queued => "Waiting for a worker…",
            RunState::Running => "Fetching the commit and planning…",
            _ => "No step ran.",
        };
        return format!("<div class=\"empty\">{msg}</div>");
    }
    let mut skips = String::new();
    let runtime_skips =
        v.steps.iter().filter(|s| s.status == StepState::Skipped && !v.skipped.iter().any(|(n, _)| n == &s.name));
    let all: Vec<(String, String)> = v
        .skipped
        .iter()
        .cloned()
        .chain(runtime_skips.map(|s| (s.name.clone(), s.note.clone().unwrap_or_default())))
        .collect();
    if !all.is_empty() {
        skips.push_str("<h3 class=\"skiph\">Why steps were skipped</h3><ul class=\"skips\" id=\"skips\">");
        for (n, r) in &all {
            let _ = write!(
                skips,
                "<li data-skip=\"{}\">{}<b>{}</b><span class=\"muted\">{}</span></li>",
                esc(n),
                icon(StepState::Skipped),
                esc(n),
                esc(r)
            );
        }
        skips.push_str("</ul>");
    }
    format!(
        "<div class=\"gantt\"><div class=\"g-axis\">{axis}</div><div class=\"g-rows\"><div class=\"g-grid\">{grid}</div>{rows}</div></div>{skips}"
    )
}

pub(super) fn render_artifacts(v: &RunView) -> String {
    if v.artifacts.is_empty() {
        return "<p class=\"muted\" style=\"margin:0\">No artifacts.</p>".into();
    }
    let mut s = String::from(
        "<table class=\"arts\"><tr><th>Step</th><th>File</th><th style=\"text-align:right\">Size</th></tr>",
    );
    for (step, path, n) in &v.artifacts {
        let _ = write!(
            s,
            "<tr><td>{}</td><td class=\"f\"><a href=\"/api/runs/{}/artifacts/{}/{}\" download>{}</a></td><td class=\"sz\">{}</td></tr>",
            esc(step),
            v.run.id,
            url_part(step),
            url_path(path),
            esc(path),
            crate::fmt::size(*n)
        );
    }
    s.push_str("</table>");
    s
}
