//! The delivery measures (DORA's four) and pipeline health, computed from orch's own
//! records: deployments, incidents (GitHub issues with the incident label), runs and steps.
//! Pure functions over rows; the API and the dashboard read the rows and call these.
//!
//! Definitions (also on the `/dora` page):
//! - **Deployment frequency**: successful deployments that ended in the window, per week.
//! - **Lead time for changes**: for each commit whose *first* successful deployment to an
//!   environment ended in the window, that end minus the commit's time; the median. The
//!   commit's time is when orch first heard of it: the push's `pushed_at` of its earliest
//!   run, else when that run was queued (orch does not read the commit's own date).
//! - **Change failure rate**: of the deployments that ended in the window (cancelled ones
//!   aside), the share that failed (`failure`, `error`), were rolled back (the live
//!   deployment a rollback replaced) or are named as the cause of an incident.
//! - **Time to restore**: from a failed deployment's end to the next successful deployment
//!   to that environment, and from an incident's opening to its closing; the median of
//!   those restored. Failures and incidents not restored yet are counted apart.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::db::{DoraDeployment, HealthRun, HealthStep, IncidentRow, RunState, StepState};

const WEEK: i64 = 7 * 86_400;

/// The definitions, as the page and the API give them.
pub const DEFINITIONS: &[(&str, &str)] = &[
    ("Deployment frequency", "Successful deployments that ended in the window, per week."),
    (
        "Lead time for changes",
        "For each commit whose first successful deployment to the environment ended in the window: that end minus \
         the commit's time, the median. The commit's time is when orch first heard of it: the push's pushed_at of \
         its earliest run, else when that run was queued (orch does not read the commit's own date).",
    ),
    (
        "Change failure rate",
        "Of the deployments that ended in the window (cancelled ones aside), the share that failed, were rolled back \
         (the live deployment a rollback replaced) or are named as the cause of an incident (a line `Deployment: N` \
         in the issue).",
    ),
    (
        "Time to restore",
        "From a failed deployment's end to the next successful deployment to that environment, and from an \
         incident's opening to its closing: the median of those restored. Incidents are GitHub issues with the \
         incident label.",
    ),
    ("Flaky step", "A step that failed and then passed: on a retry in the same run, or in a re-run of its run."),
];

/// The measures of the last `days` days up to `now`, read from the database: of `repo`
/// (or all) and `environment` (or all). An incident counts for an environment when it
/// names one of its deployments or names none.
pub async fn load(
    db: &super::db::Db,
    repo: Option<String>,
    environment: Option<String>,
    days: i64,
    now: i64,
) -> Result<(Dora, PipelineHealth), super::db::DbError> {
    let from = now - days * 86_400;
    let deps = db.dora_deployments(repo.clone(), environment).await?;
    let ids: HashSet<i64> = deps.iter().map(|d| d.id).collect();
    let incidents: Vec<IncidentRow> = db
        .incidents(repo.clone())
        .await?
        .into_iter()
        .filter(|i| i.deployment.is_none_or(|d| ids.contains(&d)))
        .collect();
    let runs = db.health_runs(repo.clone(), from).await?;
    let steps = db.health_steps(repo, from).await?;
    // What ended in this very second is in the window.
    Ok((compute(&deps, &incidents, from, now + 1), pipeline_health(&runs, &steps)))
}

/// The median of `v` (the mean of the two middle values for an even count).
pub fn median(v: &[f64]) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(s[n / 2]),
        _ => Some((s[n / 2 - 1] + s[n / 2]) / 2.0),
    }
}

/// The `p` quantile of `v` by nearest rank (`p` in 0..=1).
pub fn percentile(v: &[f64], p: f64) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return None;
    }
    let rank = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len());
    Some(s[rank - 1])
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dora {
    pub from: i64,
    pub to: i64,
    pub days: i64,
    /// Successful deployments that ended in the window.
    pub deployments: usize,
    pub per_week: f64,
    /// Seconds; `None` without a measured commit.
    pub lead_time_median: Option<f64>,
    pub lead_times: usize,
    /// Deployments that ended in the window (cancelled ones aside).
    pub changes: usize,
    pub failed_changes: usize,
    /// 0..=1; `None` without changes.
    pub change_failure_rate: Option<f64>,
    /// Seconds.
    pub restore_median: Option<f64>,
    pub restored: usize,
    /// Failures and incidents not restored yet.
    pub unrestored: usize,
    /// Per week of the window, oldest first: (its start, successful, failed deployments).
    pub weekly: Vec<(i64, usize, usize)>,
}

fn ended_in(d: &DoraDeployment, from: i64, to: i64) -> bool {
    d.finished_at.is_some_and(|t| t >= from && t < to)
}

fn is_failed(d: &DoraDeployment) -> bool {
    d.status == "failure" || d.status == "error"
}

/// The four measures over `[from, to)` from every deployment (oldest first: by id) and
/// the incidents that concern them.
pub fn compute(deps: &[DoraDeployment], incidents: &[IncidentRow], from: i64, to: i64) -> Dora {
    let ok = |d: &&DoraDeployment| d.status == "success";
    let deployments = deps.iter().filter(ok).filter(|d| ended_in(d, from, to)).count();
    // Whole days (the window reaches a second past now, see `load`).
    let days = ((to - from) / 86_400).max(1) as f64;

    // Lead time: each (environment, commit)'s first success.
    let mut first: HashMap<(&str, &str), &DoraDeployment> = HashMap::new();
    for d in deps.iter().filter(ok) {
        first.entry((d.environment.as_str(), d.sha.as_str())).or_insert(d);
    }
    let leads: Vec<f64> = first
        .values()
        .filter(|d| ended_in(d, from, to))
        .filter_map(|d| Some((d.finished_at? - d.commit_at?).max(0) as f64))
        .collect();

    // Change failures: failed, rolled back, or named by an incident.
    let mut rolled_back: HashSet<i64> = HashSet::new();
    for r in deps.iter().filter(|d| d.rollback) {
        if let Some(live) = deps.iter().filter(ok).rfind(|d| d.id < r.id && d.environment == r.environment) {
            rolled_back.insert(live.id);
        }
    }
    let named: HashSet<i64> = incidents.iter().filter_map(|i| i.deployment).collect();
    let changes: Vec<&DoraDeployment> =
        deps.iter().filter(|d| ended_in(d, from, to) && d.status != "cancelled" && d.status != "in_progress").collect();
    let failed_changes =
        changes.iter().filter(|d| is_failed(d) || rolled_back.contains(&d.id) || named.contains(&d.id)).count();

    // Time to restore.
    let mut restores = Vec::new();
    let mut unrestored = 0;
    for f in deps.iter().filter(|d| is_failed(d) && ended_in(d, from, to)) {
        let end = f.finished_at.unwrap_or(0);
        let next = deps
            .iter()
            .filter(ok)
            .filter(|d| d.environment == f.environment && d.id > f.id)
            .filter_map(|d| d.finished_at)
            .find(|&t| t >= end);
        match next {
            Some(t) => restores.push((t - end) as f64),
            None => unrestored += 1,
        }
    }
    for i in incidents.iter().filter(|i| i.opened_at >= from && i.opened_at < to) {
        match i.closed_at {
            Some(c) => restores.push((c - i.opened_at).max(0) as f64),
            None => unrestored += 1,
        }
    }

    let mut weekly = Vec::new();
    let mut start = to - WEEK * ((to - from + WEEK - 1) / WEEK);
    while start < to {
        let end = start + WEEK;
        let in_week: Vec<&DoraDeployment> = deps.iter().filter(|d| ended_in(d, start.max(from), end)).collect();
        weekly.push((
            start,
            in_week.iter().filter(|d| d.status == "success").count(),
            in_week.iter().filter(|d| is_failed(d)).count(),
        ));
        start = end;
    }

    Dora {
        from,
        to,
        days: (to - from) / 86_400,
        deployments,
        per_week: deployments as f64 * 7.0 / days,
        lead_time_median: median(&leads),
        lead_times: leads.len(),
        changes: changes.len(),
        failed_changes,
        change_failure_rate: (!changes.is_empty()).then(|| failed_changes as f64 / changes.len() as f64),
        restore_median: median(&restores),
        restored: restores.len(),
        unrestored,
        weekly,
    }
}

/// Success rate and durations of a pipeline (a repository's) or of a step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    pub name: String,
    /// Runs (or step runs) that ended passed or failed.
    pub count: usize,
    pub success_rate: Option<f64>,
    /// Seconds.
    pub median: Option<f64>,
    pub p90: Option<f64>,
    /// Step runs that failed and then passed: on a retry, or in a re-run of their run.
    pub flaky: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PipelineHealth {
    pub pipelines: Vec<Health>,
    pub steps: Vec<Health>,
    /// The steps with the longest median, longest first (at most 5).
    pub slowest: Vec<Health>,
    /// The steps most often flaky, most first (at most 5; none that never was).
    pub flakiest: Vec<Health>,
    /// Ended runs, oldest first: (id, when it ended, seconds it took, its status).
    pub durations: Vec<(i64, i64, f64, RunState)>,
}

fn health(name: String, outcomes: &[bool], durations: &[f64], flaky: usize) -> Health {
    Health {
        name,
        count: outcomes.len(),
        success_rate: (!outcomes.is_empty())
            .then(|| outcomes.iter().filter(|&&ok| ok).count() as f64 / outcomes.len() as f64),
        median: median(durations),
        p90: percentile(durations, 0.9),
        flaky,
    }
}

/// Pipeline health from the runs and their steps.
pub fn pipeline_health(runs: &[HealthRun], steps: &[HealthStep]) -> PipelineHealth {
    let ended = |s: RunState| matches!(s, RunState::Success | RunState::Failure | RunState::Error);
    let mut by_repo: std::collections::BTreeMap<&str, (Vec<bool>, Vec<f64>)> = Default::default();
    let mut durations = Vec::new();
    for r in runs.iter().filter(|r| ended(r.status)) {
        let e = by_repo.entry(r.repo.as_str()).or_default();
        e.0.push(r.status == RunState::Success);
        if let (Some(s), Some(f)) = (r.started_at, r.finished_at) {
            e.1.push((f - s).max(0) as f64);
            durations.push((r.id, f, (f - s).max(0) as f64, r.status));
        }
    }
    let pipelines = by_repo.into_iter().map(|(name, (o, d))| health(name.to_string(), &o, &d, 0)).collect();

    // A step failed in a run, and passed in a re-run of it.
    let rerun_of: HashMap<i64, i64> = runs.iter().filter_map(|r| Some((r.id, r.rerun_of?))).collect();
    let failed: HashSet<(i64, &str)> = steps
        .iter()
        .filter(|s| matches!(s.status, StepState::Failed | StepState::TimedOut | StepState::Error))
        .map(|s| (s.run, s.name.as_str()))
        .collect();
    let mut by_step: std::collections::BTreeMap<&str, (Vec<bool>, Vec<f64>, usize)> = Default::default();
    for s in steps {
        let passed = s.status == StepState::Passed;
        // A step kept from an earlier run (attempts 0) did not run: not counted.
        if s.attempts == 0 || !(passed || failed.contains(&(s.run, s.name.as_str()))) {
            continue;
        }
        let e = by_step.entry(s.name.as_str()).or_default();
        e.0.push(passed);
        if let Some(d) = s.duration {
            e.1.push(d);
        }
        let retried = passed && s.attempts > 1;
        let rerun = passed && rerun_of.get(&s.run).is_some_and(|of| failed.contains(&(*of, s.name.as_str())));
        if retried || rerun {
            e.2 += 1;
        }
    }
    let steps: Vec<Health> = by_step.into_iter().map(|(n, (o, d, f))| health(n.to_string(), &o, &d, f)).collect();
    let mut slowest: Vec<Health> = steps.iter().filter(|s| s.median.is_some()).cloned().collect();
    slowest.sort_by(|a, b| b.median.unwrap_or(0.0).total_cmp(&a.median.unwrap_or(0.0)));
    slowest.truncate(5);
    let mut flakiest: Vec<Health> = steps.iter().filter(|s| s.flaky > 0).cloned().collect();
    flakiest.sort_by(|a, b| b.flaky.cmp(&a.flaky).then(a.name.cmp(&b.name)));
    flakiest.truncate(5);
    PipelineHealth { pipelines, steps, slowest, flakiest, durations }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const HOUR: i64 = 3600;

    fn dep(id: i64, env: &str, sha: &str, status: &str, finished: i64, commit: i64) -> DoraDeployment {
        DoraDeployment {
            id,
            environment: env.into(),
            sha: sha.into(),
            status: status.into(),
            rollback: false,
            started_at: Some(finished - 60),
            finished_at: Some(finished),
            commit_at: Some(commit),
        }
    }

    /// A scripted month of one environment, each figure worked out by hand below.
    #[test]
    fn the_four_measures_of_a_scripted_history() {
        let t0 = 1_000 * DAY; // the window's start
        let to = t0 + 28 * DAY; // four weeks
        let mut deps = vec![
            // Before the window: a success of `a` (its first: it is not a lead time here).
            dep(1, "production", "a", "success", t0 - DAY, t0 - 2 * DAY),
            // Day 1: `b` deployed 2 h after its push.
            dep(2, "production", "b", "success", t0 + DAY, t0 + DAY - 2 * HOUR),
            // Day 3: `c` fails; day 3 + 5 h: `d` succeeds (restores after 5 h), pushed 1 h before.
            dep(3, "production", "c", "failure", t0 + 3 * DAY, t0 + 3 * DAY - HOUR),
            dep(4, "production", "d", "success", t0 + 3 * DAY + 5 * HOUR, t0 + 3 * DAY + 4 * HOUR),
            // Day 10: `e`, pushed 10 h before; later rolled back to `d` (day 11).
            dep(5, "production", "e", "success", t0 + 10 * DAY, t0 + 10 * DAY - 10 * HOUR),
            DoraDeployment {
                rollback: true,
                ..dep(6, "production", "d", "success", t0 + 11 * DAY, t0 + 3 * DAY + 4 * HOUR)
            },
            // Day 20: `f`, pushed 30 min before; named by an incident.
            dep(7, "production", "f", "success", t0 + 20 * DAY, t0 + 20 * DAY - HOUR / 2),
            // Day 22: cancelled: not a change.
            dep(8, "production", "g", "cancelled", t0 + 22 * DAY, t0 + 22 * DAY - HOUR),
            // Day 25: `h` errors and nothing follows: not restored.
            dep(9, "production", "h", "error", t0 + 25 * DAY, t0 + 25 * DAY - HOUR),
            // After the window, to another environment: it restores nothing of production's.
            dep(10, "staging", "i", "success", to + DAY, to),
        ];
        deps.sort_by_key(|d| d.id);
        let incidents = vec![
            // Opened day 20 + 1 h, closed 3 h later; names deployment 7.
            IncidentRow {
                repo: "o/r".into(),
                number: 1,
                title: "down".into(),
                url: None,
                opened_at: t0 + 20 * DAY + HOUR,
                closed_at: Some(t0 + 20 * DAY + 4 * HOUR),
                deployment: Some(7),
            },
            // Opened day 26, still open.
            IncidentRow {
                repo: "o/r".into(),
                number: 2,
                title: "slow".into(),
                url: None,
                opened_at: t0 + 26 * DAY,
                closed_at: None,
                deployment: None,
            },
        ];
        let d = compute(&deps, &incidents, t0, to);
        // Successes in the window: 2, 4, 5, 6, 7 = 5 over 4 weeks.
        assert_eq!(d.deployments, 5);
        assert!((d.per_week - 1.25).abs() < 1e-9, "{}", d.per_week);
        // First successes of b, d, e, f in the window (d's rollback is not its first):
        // 2 h, 1 h, 10 h, 0.5 h: median (1 + 2) / 2 = 1.5 h.
        assert_eq!(d.lead_times, 4);
        assert_eq!(d.lead_time_median, Some(1.5 * HOUR as f64));
        // Changes: 2..7 and 9 (8 is cancelled) = 7; failed: 3 (failure), 9 (error),
        // 5 (rolled back), 7 (named by incident 1) = 4.
        assert_eq!((d.changes, d.failed_changes), (7, 4));
        assert!((d.change_failure_rate.unwrap() - 4.0 / 7.0).abs() < 1e-9);
        // Restores: 3 -> 4 in 5 h; incident 1 in 3 h. Not restored: 9, incident 2.
        assert_eq!((d.restored, d.unrestored), (2, 2));
        assert_eq!(d.restore_median, Some(4.0 * HOUR as f64));
        // Four weeks: successes 2, 4 | 5, 6 | 7 | -; failures 3 | - | - | 9.
        let weeks: Vec<(usize, usize)> = d.weekly.iter().map(|w| (w.1, w.2)).collect();
        assert_eq!(weeks, [(2, 1), (2, 0), (1, 0), (0, 1)]);
        assert_eq!(d.weekly[0].0, t0);
    }

    /// The same measures from rows in a real database, with chosen times: the commit time
    /// recorded with a deployment comes from its runs.
    #[tokio::test]
    async fn the_measures_from_inserted_rows() {
        use crate::server::db::{Db, NewRun};
        use crate::server::webhook::Issue;
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("orch.db")).unwrap();
        let now = 2_000 * DAY;
        let run = |sha: &str, event_time: Option<i64>, created: i64| {
            let (db, sha) = (db.clone(), sha.to_string());
            async move {
                let spec = NewRun { repo: "o/r".into(), event: "push".into(), sha, ..Default::default() };
                let id = db.queue_run(spec, false).await.unwrap().0;
                db.write(move |t| {
                    t.execute(
                        "UPDATE runs SET event_time = ?2, created_at = ?3 WHERE id = ?1",
                        crate::server::db::sql::params![id, event_time, created],
                    )
                })
                .await
                .unwrap();
                id
            }
        };
        let deploy = |run: i64, status: &'static str, finished: i64| {
            let db = db.clone();
            async move {
                let id =
                    db.start_deployment(run, "deploy".into(), "production".into(), None, None).await.unwrap().unwrap();
                db.finish_deployment(id, status).await.unwrap();
                db.write(move |t| {
                    t.execute(
                        "UPDATE deployments SET finished_at = ?2 WHERE id = ?1",
                        crate::server::db::sql::params![id, finished],
                    )
                })
                .await
                .unwrap();
                id
            }
        };
        // `a`: pushed 10 days and 3 hours ago, deployed 10 days ago (lead time 3 h).
        let a = run("a", Some(now - 10 * DAY - 3 * HOUR), now - 10 * DAY - 2 * HOUR).await;
        let first = deploy(a, "success", now - 10 * DAY).await;
        // `b` (no push time: its run's queueing, 5 days and an hour ago): fails 5 days ago,
        // deployed 2 h later (lead time 3 h, restored in 2 h).
        let b = run("b", None, now - 5 * DAY - HOUR).await;
        deploy(b, "failure", now - 5 * DAY).await;
        deploy(b, "success", now - 5 * DAY + 2 * HOUR).await;
        // An incident naming `a`'s deployment, open 6 h; an issue without the label.
        let issue = |number: u64, labelled: bool| Issue {
            repo: "o/r".into(),
            number,
            title: "down".into(),
            url: None,
            labels: Vec::new(),
            opened_at: now - 4 * DAY,
            closed_at: Some(now - 4 * DAY + 6 * HOUR),
            deployment: Some(first),
            deleted: !labelled,
        };
        db.record_incident(issue(1, true), true).await.unwrap();
        db.record_incident(issue(2, false), false).await.unwrap();

        let (d, _) = load(&db, Some("o/r".into()), Some("production".into()), 28, now).await.unwrap();
        assert_eq!((d.deployments, d.per_week), (2, 0.5));
        assert_eq!((d.lead_times, d.lead_time_median), (2, Some(3.0 * HOUR as f64)));
        // Changes 3; failed: `b`'s failure, and `a`'s deployment that the incident names.
        assert_eq!((d.changes, d.failed_changes), (3, 2));
        // Restored in 2 h and 6 h: median 4 h.
        assert_eq!((d.restored, d.unrestored, d.restore_median), (2, 0, Some(4.0 * HOUR as f64)));
        // Another environment has none of it.
        let (other, _) = load(&db, Some("o/r".into()), Some("staging".into()), 28, now).await.unwrap();
        assert_eq!((other.deployments, other.changes), (0, 0));
    }

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.9), Some(9.0));
        assert_eq!(percentile(&v, 0.5), Some(5.0));
        assert_eq!(percentile(&[7.0], 0.9), Some(7.0));
    }

    #[test]
    fn pipeline_health_rates_durations_and_flaky_steps() {
        let run = |id, status, secs: i64, rerun_of| HealthRun {
            id,
            repo: "o/r".into(),
            status,
            started_at: Some(100),
            finished_at: Some(100 + secs),
            rerun_of,
        };
        let runs = vec![
            run(1, RunState::Success, 10, None),
            run(2, RunState::Failure, 20, None),
            run(3, RunState::Success, 30, Some(2)),
            run(4, RunState::Cancelled, 5, None),
        ];
        let step = |run, name: &str, status, attempts, duration| HealthStep {
            run,
            name: name.into(),
            status,
            attempts,
            duration: Some(duration),
        };
        let steps = vec![
            step(1, "build", StepState::Passed, 1, 4.0),
            step(1, "test", StepState::Passed, 2, 6.0), // passed on a retry: flaky
            step(2, "build", StepState::Passed, 1, 6.0),
            step(2, "test", StepState::Failed, 1, 14.0),
            step(3, "build", StepState::Passed, 0, 0.0), // kept from run 2: not counted
            step(3, "test", StepState::Passed, 1, 16.0), // failed in 2, passed in its re-run: flaky
        ];
        let h = pipeline_health(&runs, &steps);
        // Runs 1-3 ended (4 was cancelled): 2 of 3 passed; 10, 20, 30 s.
        assert_eq!(h.pipelines.len(), 1);
        let p = &h.pipelines[0];
        assert_eq!((p.count, p.median, p.p90), (3, Some(20.0), Some(30.0)));
        assert!((p.success_rate.unwrap() - 2.0 / 3.0).abs() < 1e-9);
        let test = h.steps.iter().find(|s| s.name == "test").unwrap();
        assert_eq!((test.count, test.flaky, test.median), (3, 2, Some(14.0)));
        let build = h.steps.iter().find(|s| s.name == "build").unwrap();
        assert_eq!((build.count, build.success_rate, build.median), (2, Some(1.0), Some(5.0)));
        assert_eq!(h.slowest.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["test", "build"]);
        assert_eq!(h.flakiest.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["test"]);
        assert_eq!(h.durations.len(), 3);
    }
}
