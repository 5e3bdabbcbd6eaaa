//! The delivery page (`GET /dora?repo=&environment=&days=`): the four DORA measures with
//! their definitions, deployments per week and run durations as SVG drawn here (no
//! script), and pipeline health (success rates, medians and p90s, slowest and flakiest
//! steps).

use std::fmt::Write as _;

use crate::server::dora::{DEFINITIONS, Dora, Health, PipelineHealth};

use super::*;

const W: f64 = 640.0;
const H: f64 = 160.0;
const PAD: f64 = 28.0;

fn pct(x: Option<f64>) -> String {
    x.map_or("—".into(), |r| format!("{:.0}%", r * 100.0))
}

fn secs(x: Option<f64>) -> String {
    x.map_or("—".into(), human)
}

/// Deployments per week: successful (green) under failed (red), a bar per week.
pub(super) fn weekly_svg(d: &Dora) -> String {
    let max = d.weekly.iter().map(|w| w.1 + w.2).max().unwrap_or(0).max(1) as f64;
    let n = d.weekly.len().max(1) as f64;
    let slot = (W - PAD) / n;
    let bar = (slot * 0.7).max(2.0);
    let y = |v: f64| H - PAD - v / max * (H - 2.0 * PAD);
    let mut out = String::new();
    for (i, (start, ok, failed)) in d.weekly.iter().enumerate() {
        let x = PAD + i as f64 * slot + (slot - bar) / 2.0;
        let (ok, failed) = (*ok as f64, *failed as f64);
        let _ = write!(
            out,
            "<g><title>week of {}: {ok} deployed, {failed} failed</title>\
             <rect class=\"ok\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{:.1}\"/>\
             <rect class=\"fail\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{:.1}\"/></g>",
            crate::clock::format_utc(*start, "%Y-%m-%d"),
            y(ok),
            H - PAD - y(ok),
            y(ok + failed),
            y(ok) - y(ok + failed),
        );
        if d.weekly.len() <= 13 || i % 4 == 0 {
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                x + bar / 2.0,
                H - 8.0,
                crate::clock::format_utc(*start, "%m-%d")
            );
        }
    }
    format!(
        "<svg class=\"chart\" id=\"weekly\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"Deployments per week\">\
         <line class=\"axis\" x1=\"{PAD}\" y1=\"{b}\" x2=\"{W}\" y2=\"{b}\"/>\
         <text x=\"4\" y=\"{t:.1}\">{max}</text><text x=\"4\" y=\"{b}\">0</text>{out}</svg>",
        b = H - PAD,
        t = PAD + 4.0,
    )
}

/// Run durations, in the order the runs ended: a line, failed runs as red dots.
pub(super) fn durations_svg(h: &PipelineHealth) -> String {
    let pts = &h.durations;
    if pts.is_empty() {
        return "<div class=\"empty\">No runs ended in this window.</div>".into();
    }
    let max = pts.iter().map(|p| p.2).fold(1.0_f64, f64::max);
    let n = (pts.len().max(2) - 1) as f64;
    let x = |i: usize| PAD + i as f64 / n * (W - PAD - 8.0);
    let y = |v: f64| H - PAD - v / max * (H - 2.0 * PAD);
    let line: Vec<String> = pts.iter().enumerate().map(|(i, p)| format!("{:.1},{:.1}", x(i), y(p.2))).collect();
    let mut dots = String::new();
    for (i, (id, _, d, status)) in pts.iter().enumerate() {
        let class = if *status == RunState::Success { "ok" } else { "fail" };
        let _ = write!(
            dots,
            "<a href=\"/runs/{id}\"><circle class=\"{class}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\"><title>run {id}: {} ({})</title></circle></a>",
            x(i),
            y(*d),
            human(*d),
            status
        );
    }
    format!(
        "<svg class=\"chart\" id=\"durations\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"Run durations\">\
         <line class=\"axis\" x1=\"{PAD}\" y1=\"{b}\" x2=\"{W}\" y2=\"{b}\"/>\
         <text x=\"4\" y=\"{t:.1}\">{top}</text><text x=\"4\" y=\"{b}\">0</text>\
         <polyline class=\"line\" points=\"{line}\"/>{dots}</svg>",
        b = H - PAD,
        t = PAD + 4.0,
        top = esc(&axis_label(max)),
        line = line.join(" "),
    )
}

fn health_table(rows: &[Health], what: &str) -> String {
    if rows.is_empty() {
        return format!("<div class=\"empty\">No {what} in this window.</div>");
    }
    let mut out = String::new();
    for h in rows {
        let _ = write!(
            out,
            "<tr><td><code class=\"mono\">{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&h.name),
            h.count,
            pct(h.success_rate),
            secs(h.median),
            secs(h.p90),
            h.flaky
        );
    }
    format!(
        "<table class=\"agents health\"><thead><tr><th>Name</th><th>Ended</th><th>Passed</th><th>Median</th>\
         <th>p90</th><th>Flaky</th></tr></thead><tbody>{out}</tbody></table>"
    )
}

fn tile(id: &str, title: &str, value: String, note: String) -> String {
    format!(
        "<div class=\"card tile\" id=\"{id}\"><div class=\"muted\">{}</div><div class=\"big\">{}</div>\
         <div class=\"muted\">{}</div></div>",
        esc(title),
        esc(&value),
        esc(&note)
    )
}

const DORA_CSS: &str = "<style>.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:12px}\
.tile .big{font-size:26px;font-weight:600;margin:4px 0}.chart{width:100%;height:auto;display:block}\
.chart text{font-size:10px;fill:var(--muted,#888)}.chart .axis{stroke:var(--line,#ccc)}\
.chart rect.ok,.chart circle.ok{fill:var(--ok-bar,#2da44e)}.chart rect.fail,.chart circle.fail{fill:var(--fail-bar,#e5534b)}\
.chart .line{fill:none;stroke:var(--link,#0969da);stroke-width:1.5}.filters{display:flex;gap:8px;flex-wrap:wrap;align-items:end}\
.filters label{display:flex;flex-direction:column;font-size:12px}dl.defs dt{font-weight:600;margin-top:8px}dl.defs dd{margin:2px 0 0}</style>";

/// `GET /dora?repo=&environment=&days=`
pub(super) async fn dora_page(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    if let Some(r) = private(&st, &headers, "/dora") {
        return r;
    }
    let text = |k: &str| q.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    let days = text("days").and_then(|d| d.parse::<i64>().ok()).filter(|d| (1..=366).contains(d)).unwrap_or(30);
    let (repo, env) = (text("repo"), text("environment"));
    let (d, h) = match crate::server::dora::load(&st.db, repo.clone(), env.clone(), days, st.clock.now()).await {
        Ok(x) => x,
        Err(e) => return internal(e),
    };
    let tiles = [
        tile(
            "frequency",
            "Deployment frequency",
            format!("{:.1} / week", d.per_week),
            format!("{} successful deployments", d.deployments),
        ),
        tile(
            "lead-time",
            "Lead time for changes",
            secs(d.lead_time_median),
            format!("median of {} commits", d.lead_times),
        ),
        tile(
            "failure-rate",
            "Change failure rate",
            pct(d.change_failure_rate),
            format!("{} of {} deployments", d.failed_changes, d.changes),
        ),
        tile(
            "restore",
            "Time to restore",
            secs(d.restore_median),
            format!("median of {}; {} not restored yet", d.restored, d.unrestored),
        ),
    ]
    .concat();
    let defs: String =
        DEFINITIONS.iter().map(|(k, v)| format!("<dt>{}</dt><dd>{}</dd>", esc(k), esc(v))).collect::<String>();
    let input = |name: &str, value: &str, hint: &str| {
        format!("<label>{name}<input name=\"{name}\" value=\"{}\" placeholder=\"{}\"></label>", esc(value), esc(hint))
    };
    let body = format!(
        "{DORA_CSS}<div class=\"titlebar\" style=\"margin-bottom:14px\"><h1>Delivery</h1></div>\
         <form class=\"filters card\" method=\"get\" action=\"/dora\">{}{}{}<button type=\"submit\">Show</button></form>\
         <div class=\"tiles\">{tiles}</div>\
         <section class=\"card\"><h2>Deployments per week</h2>{weekly}</section>\
         <section class=\"card\"><h2>Run durations</h2>{durations}</section>\
         <section class=\"card\"><h2>Pipelines</h2><div class=\"runs\">{pipelines}</div></section>\
         <section class=\"card\"><h2>Slowest steps</h2><div class=\"runs\">{slowest}</div></section>\
         <section class=\"card\"><h2>Flakiest steps</h2><div class=\"runs\">{flakiest}</div></section>\
         <section class=\"card\"><h2>Definitions</h2><dl class=\"defs\">{defs}</dl></section>",
        input("repo", repo.as_deref().unwrap_or(""), "every repository"),
        input("environment", env.as_deref().unwrap_or(""), "every environment"),
        input("days", &days.to_string(), "30"),
        weekly = weekly_svg(&d),
        durations = durations_svg(&h),
        pipelines = health_table(&h.pipelines, "runs"),
        slowest = health_table(&h.slowest, "steps"),
        flakiest = health_table(&h.flakiest, "flaky steps"),
    );
    Html(page("orch · delivery", &body, "", st.cfg.api_private)).into_response()
}
