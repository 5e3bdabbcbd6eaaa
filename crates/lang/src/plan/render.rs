//! `orch plan` output: text for people, JSON for tools, DOT and Mermaid for drawings.

use std::fmt::Write as _;

use serde_json::json;

use super::Plan;
use crate::pipeline::format_duration;

/// Version of the JSON plan schema; bumped on any incompatible change.
pub const JSON_VERSION: u32 = 1;

pub fn text(plan: &Plan) -> String {
    let mut out = String::new();
    let c = &plan.context;
    let ev = c.event();
    let what = match (ev, &c.tag, &c.branch) {
        (crate::pipeline::Event::Tag, Some(t), _) => format!("tag {t}"),
        (crate::pipeline::Event::PullRequest, _, b) => format!(
            "pull request{} from {} into {}",
            c.pr.map(|n| format!(" #{n}")).unwrap_or_default(),
            b.as_deref().unwrap_or("?"),
            c.base_branch.as_deref().unwrap_or("?")
        ),
        (_, _, Some(b)) => format!("branch {b}"),
        _ => "no branch".to_string(),
    };
    let commit =
        if c.commit.is_empty() { String::new() } else { format!(" at {}", &c.commit[..c.commit.len().min(8)]) };
    let _ = writeln!(out, "Plan for {ev} on {what}{commit}");
    let labels = plan.labels();
    if !labels.is_empty() {
        let _ = writeln!(out, "Runs on an agent with labels: {}", labels.join(", "));
    }
    // When steps ask for different labels, each step says which it asks for.
    let mixed = plan.steps.iter().any(|s| s.runs_on != labels);
    if let Some(why) = &plan.not_triggered {
        let _ = writeln!(out, "\nThe pipeline does not run: {why}");
    }
    if !plan.steps.is_empty() {
        let w = plan.steps.iter().map(|s| s.name.len()).max().unwrap_or(4).max(4);
        let sw = plan.steps.iter().map(|s| s.stage.len()).max().unwrap_or(5).max(5);
        let _ = writeln!(out, "\n  {:>3}  {:<w$}  {:<sw$}  needs", "grp", "step", "stage");
        for s in &plan.steps {
            let mut extra = Vec::new();
            if let Some(t) = s.timeout {
                extra.push(format!("timeout {}", format_duration(t)));
            }
            if s.retry.count > 0 {
                extra.push(format!("retry {}", s.retry.count));
            }
            if s.allow_failure {
                extra.push("may fail".to_string());
            }
            if s.status.on_failure {
                extra.push(if s.status.on_success { "always".into() } else { "on failure".to_string() });
            }
            if let Some(env) = &s.environment {
                match &env.url {
                    Some(url) => extra.push(format!("deploys to {} ({url})", env.name)),
                    None => extra.push(format!("deploys to {}", env.name)),
                }
                if let Some(a) = plan.environments.get(&env.name).and_then(|r| r.approval.as_ref()) {
                    extra.push(format!("once {} of {} approve", a.required, a.approvers.join(", ")));
                }
            }
            if mixed && !s.runs_on.is_empty() {
                extra.push(format!("labels {}", s.runs_on.join(" ")));
            }
            let needs = if s.needs.is_empty() { "-".to_string() } else { s.needs.join(", ") };
            let extra = if extra.is_empty() { String::new() } else { format!("  ({})", extra.join(", ")) };
            let _ = writeln!(out, "  {:>3}  {:<w$}  {:<sw$}  {needs}{extra}", s.group + 1, s.name, s.stage);
        }
    }
    if !plan.skipped.is_empty() {
        let w = plan.skipped.iter().map(|s| s.name.len()).max().unwrap_or(4);
        let _ = writeln!(out, "\nSkipped:");
        for s in &plan.skipped {
            let _ = writeln!(out, "  {:<w$}  {}", s.name, s.reason);
        }
    }
    let groups = plan.steps.iter().map(|s| s.group + 1).max().unwrap_or(0);
    let _ = writeln!(
        out,
        "\n{} step{} to run in {groups} parallel group{}, {} skipped",
        plan.steps.len(),
        if plan.steps.len() == 1 { "" } else { "s" },
        if groups == 1 { "" } else { "s" },
        plan.skipped.len()
    );
    out
}

pub fn json(plan: &Plan) -> String {
    let v = json!({
        "version": JSON_VERSION,
        "context": plan.context,
        "stages": plan.stages,
        "labels": plan.labels(),
        "triggered": plan.not_triggered.is_none(),
        "not_triggered_reason": plan.not_triggered,
        "steps": plan.steps,
        "skipped": plan.skipped,
        "environments": plan.environments,
    });
    // Serializing plain data to a String cannot fail.
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

pub fn dot(plan: &Plan) -> String {
    let mut out = String::from("digraph orch {\n  rankdir=LR;\n  node [shape=box, style=rounded];\n");
    for s in &plan.steps {
        let _ = writeln!(out, "  \"{}\" [label=\"{}\\n({})\"];", quote(&s.name), quote(&s.name), quote(&s.stage));
    }
    for s in &plan.skipped {
        let _ = writeln!(
            out,
            "  \"{}\" [label=\"{}\\nskipped\", style=\"rounded,dashed\", color=gray, fontcolor=gray, tooltip=\"{}\"];",
            quote(&s.name),
            quote(&s.name),
            quote(&s.reason)
        );
    }
    for s in &plan.steps {
        for n in &s.needs {
            let _ = writeln!(out, "  \"{}\" -> \"{}\";", quote(n), quote(&s.name));
        }
    }
    out.push_str("}\n");
    out
}

pub fn mermaid(plan: &Plan) -> String {
    let ids: std::collections::HashMap<&str, String> = plan
        .steps
        .iter()
        .map(|s| s.name.as_str())
        .chain(plan.skipped.iter().map(|s| s.name.as_str()))
        .enumerate()
        .map(|(i, n)| (n, format!("s{i}")))
        .collect();
    let label = |s: &str| s.replace('"', "#quot;");
    let mut out = String::from("graph LR\n");
    for s in &plan.steps {
        let _ = writeln!(out, "  {}[\"{}\"]", ids[s.name.as_str()], label(&s.name));
    }
    for s in &plan.skipped {
        let _ = writeln!(out, "  {}[\"{} (skipped)\"]:::skipped", ids[s.name.as_str()], label(&s.name));
    }
    for s in &plan.steps {
        for n in &s.needs {
            let _ = writeln!(out, "  {} --> {}", ids[n.as_str()], ids[s.name.as_str()]);
        }
    }
    if !plan.skipped.is_empty() {
        out.push_str("  classDef skipped stroke-dasharray: 5 5,color:#888\n");
    }
    out
}
