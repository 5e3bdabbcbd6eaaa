//! `on.schedule`: the schedules of each repository's default branch, run on time.
//!
//! The planner records a repository's schedules (`record`) whenever it loads the
//! `.orch.yml` of its default branch (a push to it, or a schedule run). A task of every
//! server (`run`) sleeps until the earliest next time in the database (or until the table
//! changes, at most `POLL`), then fires what is due: each time is a compare-and-set in the
//! database that also queues the run (`Db::fire_schedule`), so servers sharing a database
//! fire it once between them. A run is queued as a manual run is: event `schedule`, the
//! default branch, its head resolved when the time fires.
//!
//! Times missed while no server ran: a schedule fires once (never once per missed time)
//! if its time passed at most `schedule_catch_up` ago, else the time is skipped (recorded
//! as its `last_error`); either way its next time is the first one after now.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::AppState;
use super::db::{Db, DbError, Fired, NewRun, NewSchedule, ScheduleRow};
use crate::pipeline::cron::Cron;

/// The longest the task sleeps without looking: another server may have changed the table
/// (its own wake-ups do not reach this one), and the clock may have been set.
const POLL: Duration = Duration::from_secs(30);

/// Where "now" comes from (Unix seconds): the system's, or one a test sets.
pub trait Clock: Send + Sync {
    fn now(&self) -> i64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        crate::clock::now_secs()
    }
}

/// A clock that says what it is told (tests).
#[derive(Debug, Default)]
pub struct FixedClock(pub AtomicI64);

impl FixedClock {
    pub fn new(t: i64) -> FixedClock {
        FixedClock(AtomicI64::new(t))
    }
    pub fn set(&self, t: i64) {
        self.0.store(t, Ordering::SeqCst);
    }
}

impl Clock for FixedClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Records the schedules of `repo`'s default branch, as its `.orch.yml` there says (none
/// without an `on.schedule`), replacing the ones recorded before. A new or changed
/// schedule's first time is the first after `now`.
pub async fn record(
    db: &Db,
    run: &NewRun,
    default_branch: &str,
    pipeline: Option<&crate::pipeline::Pipeline>,
    now: i64,
) -> Result<bool, DbError> {
    let items = pipeline.and_then(|p| p.on.as_ref()).map(|on| on.schedule.as_slice()).unwrap_or_default();
    let set = items
        .iter()
        .map(|s| NewSchedule {
            name: s.name.clone(),
            cron: s.cron.clone(),
            timezone: s.timezone.clone(),
            // Checked when the file was loaded; a failure here would mean no next time.
            next_at: Cron::new(&s.cron, &s.timezone).ok().and_then(|c| c.next_after(now)),
        })
        .collect();
    db.set_schedules(run.repo.clone(), run.clone_url.clone(), default_branch.to_string(), run.installation_id, set)
        .await
}

/// The run a schedule's time queues, once its commit is known.
pub fn new_run(s: &ScheduleRow, sha: String) -> NewRun {
    NewRun {
        repo: s.repo.clone(),
        clone_url: s.clone_url.clone(),
        event: "schedule".into(),
        branch: Some(s.default_branch.clone()),
        sha,
        installation_id: s.installation_id,
        title: Some(format!("schedule {}", s.name)),
        default_branch: Some(s.default_branch.clone()),
        schedule: Some(s.name.clone()),
        ..Default::default()
    }
}

/// Fires every schedule due at `now`, once each whatever other servers do: a time passed
/// more than `catch_up` ago is skipped, else `head` resolves the default branch's commit
/// and the run is queued (with `owe`'s update for GitHub). Returns what each due schedule
/// did.
pub async fn fire_due<H, F>(
    db: &Db,
    now: i64,
    catch_up: Duration,
    head: H,
    owe: impl Fn(&NewRun) -> Option<Box<dyn FnOnce(i64) -> String + Send>>,
) -> Result<Vec<(ScheduleRow, Fired)>, DbError>
where
    H: Fn(ScheduleRow) -> F,
    F: std::future::Future<Output = Result<String, String>>,
{
    let mut out = Vec::new();
    for s in db.due_schedules(now).await? {
        let Some(due) = s.next_at else { continue };
        let cron = Cron::new(&s.cron, &s.timezone);
        // From now, not from `due`: after a downtime, one run, not one per missed time.
        let next = cron.as_ref().ok().and_then(|c| c.next_after(now));
        let late = now - due;
        let (run, error) = if let Err(e) = &cron {
            (None, Some(format!("invalid schedule: {e}")))
        } else if late > catch_up.as_secs() as i64 {
            let when = cron.as_ref().map(|c| c.local(due)).unwrap_or_default();
            (None, Some(format!("skipped {when}: noticed {late}s late (no server ran), more than the catch-up window")))
        } else {
            match head(s.clone()).await {
                Ok(sha) => (Some(new_run(&s, sha)), None),
                Err(e) => (None, Some(format!("no run: {e}"))),
            }
        };
        let owed = run.as_ref().and_then(&owe);
        let fired = db.fire_schedule(s.id, due, next, run, error, owed).await?;
        out.push((s, fired));
    }
    Ok(out)
}

/// Fires what is due now on this server's behalf: heads resolved on the clone URL (with
/// the server's credentials), runs reported as queued.
pub async fn tick(st: &Arc<AppState>) -> Result<Vec<(ScheduleRow, Fired)>, DbError> {
    let now = st.clock.now();
    let head = |s: ScheduleRow| {
        let st = st.clone();
        async move {
            let (url, auth) = super::clone_source(&st, &s.clone_url, &s.repo, s.installation_id).await;
            let branch = s.default_branch.clone();
            tokio::task::spawn_blocking(move || crate::checkout::branch_head(&url, &branch, auth.as_ref()))
                .await
                .map_err(|e| e.to_string())?
        }
    };
    let enabled = st.report.enabled();
    let owe = |r: &NewRun| {
        let r = r.clone();
        enabled.then(|| {
            Box::new(move |id| super::outbox::body(&crate::github::Update::Queued(super::worker::new_run_ref(id, &r))))
                as Box<dyn FnOnce(i64) -> String + Send>
        })
    };
    let fired = fire_due(&st.db, now, st.cfg.schedule_catch_up, head, owe).await?;
    for (s, f) in &fired {
        match f {
            Fired::Queued(id) => {
                tracing::info!(run = id, repo = %s.repo, schedule = %s.name, "schedule fired: run queued");
                st.counters.runs_queued.fetch_add(1, Ordering::Relaxed);
                st.report.poke();
                st.wake.notify_one();
            }
            Fired::Skipped => tracing::warn!(repo = %s.repo, schedule = %s.name, "schedule time passed without a run"),
            Fired::Lost => tracing::debug!(repo = %s.repo, schedule = %s.name, "schedule fired by another server"),
        }
    }
    Ok(fired)
}

/// Fires schedules on time until `stop`.
pub async fn run(st: Arc<AppState>, stop: CancellationToken) {
    loop {
        if let Err(e) = tick(&st).await {
            tracing::error!("schedules: {e}");
        }
        let now = st.clock.now();
        let wait = match st.db.next_schedule_at().await {
            Ok(Some(t)) => Duration::from_secs(t.saturating_sub(now).max(0) as u64).min(POLL),
            _ => POLL,
        };
        tokio::select! {
            _ = st.schedules.notified() => {}
            _ = tokio::time::sleep(wait.max(Duration::from_millis(200))) => {}
            _ = stop.cancelled() => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::db::RunFilter;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
    /// 2026-12-07 03:00:00 UTC, a Monday.
    const T: i64 = 1_796_612_400;

    fn schedule(name: &str, cron: &str, next_at: Option<i64>) -> NewSchedule {
        NewSchedule { name: name.into(), cron: cron.into(), timezone: "UTC".into(), next_at }
    }

    async fn set(db: &Db, items: Vec<NewSchedule>) {
        db.set_schedules("acme/app".into(), "https://example.com/acme/app.git".into(), "main".into(), None, items)
            .await
            .unwrap();
    }

    async fn fire(db: &Db, now: i64) -> Vec<Fired> {
        let head = |_: ScheduleRow| async { Ok::<_, String>(SHA.to_string()) };
        fire_due(db, now, Duration::from_secs(3600), head, |_| None)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, f)| f)
            .collect()
    }

    async fn schedule_runs(db: &Db) -> Vec<crate::server::db::Run> {
        let runs = db.runs_where(RunFilter { limit: 500, ..Default::default() }).await.unwrap();
        runs.into_iter().filter(|r| r.spec.event == "schedule").collect()
    }

    #[test]
    fn t_is_what_it_says() {
        assert_eq!(Cron::new("0 3 * * *", "UTC").unwrap().local(T), "2026-12-07 03:00 UTC");
    }

    /// Two servers on one database (two `Db`s on one file, each with its writer thread and
    /// connections, as two processes have): every due time is fired by exactly one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_servers_on_one_database_fire_each_time_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orch.db");
        let (a, b) = (Db::open(&path).unwrap(), Db::open(&path).unwrap());
        let cron = Cron::new("0 3 * * *", "UTC").unwrap();
        set(&a, vec![schedule("nightly", "0 3 * * *", cron.next_after(T - 60))]).await;
        let mut due = T;
        for day in 0..20 {
            // Both notice the time a few seconds after it, at the same moment.
            let now = due + 2;
            let (fa, fb) = tokio::join!(fire(&a, now), fire(&b, now));
            let all: Vec<Fired> = fa.into_iter().chain(fb).collect();
            let queued = all.iter().filter(|f| matches!(f, Fired::Queued(_))).count();
            assert_eq!(queued, 1, "day {day}: {all:?}");
            assert!(all.iter().all(|f| matches!(f, Fired::Queued(_) | Fired::Lost)), "day {day}: {all:?}");
            // Looking again at the same moment fires nothing.
            assert!(fire(&a, now).await.is_empty() && fire(&b, now).await.is_empty());
            due = cron.next_after(due).unwrap();
        }
        let runs = schedule_runs(&b).await;
        assert_eq!(runs.len(), 20);
        let r = runs.iter().min_by_key(|r| r.id).unwrap();
        assert_eq!(
            (r.spec.branch.as_deref(), r.spec.sha.as_str(), r.spec.schedule.as_deref(), r.status),
            (Some("main"), SHA, Some("nightly"), crate::server::db::RunState::Queued)
        );
        let row = &a.schedules().await.unwrap()[0];
        let last = runs.iter().map(|r| r.id).max();
        assert_eq!((row.next_at, row.last_fired_at, row.last_run), (Some(due), Some(due - 86_400), last));
    }

    #[tokio::test]
    async fn a_time_missed_while_down_runs_once_within_the_window_and_is_skipped_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("orch.db")).unwrap();
        set(&db, vec![schedule("often", "*/10 * * * *", Some(T))]).await;
        // Down for 35 minutes: four times passed; one run, and the next time is after now.
        let now = T + 35 * 60;
        assert!(matches!(fire(&db, now).await[..], [Fired::Queued(_)]));
        assert_eq!(schedule_runs(&db).await.len(), 1);
        let row = &db.schedules().await.unwrap()[0];
        assert_eq!((row.next_at, row.last_fired_at, row.last_error.as_deref()), (Some(T + 40 * 60), Some(T), None));
        // Down for two hours past the next time: more than the window (1 h): skipped.
        let now = T + 40 * 60 + 2 * 3600;
        assert_eq!(fire(&db, now).await, [Fired::Skipped]);
        assert_eq!(schedule_runs(&db).await.len(), 1, "no run for a time missed past the window");
        let row = &db.schedules().await.unwrap()[0];
        assert_eq!(row.next_at, Some(T + 40 * 60 + 2 * 3600 + 10 * 60));
        assert!(row.last_error.as_deref().unwrap().contains("late"), "{row:?}");
        // On time again: a run, and the error is gone.
        assert!(matches!(fire(&db, row.next_at.unwrap()).await[..], [Fired::Queued(_)]));
        assert_eq!(db.schedules().await.unwrap()[0].last_error, None);
    }

    #[tokio::test]
    async fn a_branch_that_cannot_be_resolved_queues_nothing_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("orch.db")).unwrap();
        set(&db, vec![schedule("n", "0 3 * * *", Some(T))]).await;
        let head = |_: ScheduleRow| async { Err::<String, _>("no branch `main`".to_string()) };
        let fired = fire_due(&db, T, Duration::from_secs(3600), head, |_| None).await.unwrap();
        assert_eq!(fired[0].1, Fired::Skipped);
        assert!(schedule_runs(&db).await.is_empty());
        let row = &db.schedules().await.unwrap()[0];
        assert_eq!((row.next_at, row.last_error.as_deref()), (Some(T + 86_400), Some("no run: no branch `main`")));
    }

    #[tokio::test]
    async fn a_new_set_replaces_the_old_and_unchanged_schedules_keep_their_times() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("orch.db")).unwrap();
        set(&db, vec![schedule("a", "0 3 * * *", Some(T)), schedule("b", "0 4 * * *", Some(T + 3600))]).await;
        // A later push: `a` unchanged (its time stays), `b` removed, `c` new.
        set(&db, vec![schedule("a", "0 3 * * *", Some(T + 86_400)), schedule("c", "0 5 * * *", Some(T + 7200))]).await;
        let rows = db.schedules().await.unwrap();
        let got: Vec<_> = rows.iter().map(|r| (r.name.as_str(), r.next_at)).collect();
        assert_eq!(got, [("a", Some(T)), ("c", Some(T + 7200))]);
        // `a`'s cron changed: its next time is the new one.
        set(&db, vec![schedule("a", "30 3 * * *", Some(T + 1800))]).await;
        let rows = db.schedules().await.unwrap();
        let got: Vec<_> = rows.iter().map(|r| (r.name.as_str(), r.cron.as_str(), r.next_at)).collect();
        assert_eq!(got, [("a", "30 3 * * *", Some(T + 1800))]);
        // No `on.schedule` any more: none left, nothing fires.
        set(&db, vec![]).await;
        assert!(db.schedules().await.unwrap().is_empty());
        assert!(fire(&db, T + 86_400 * 3).await.is_empty());
    }

    /// The whole path through two servers' states (their own `Db`s on one data directory),
    /// with a clock the test sets: heads are resolved on a real (local) repository.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_server_states_with_a_set_clock_queue_one_run_on_the_branch_head() {
        let dir = tempfile::tempdir().unwrap();
        let repo_dir = dir.path().join("repo");
        let repo = git2::Repository::init(&repo_dir).unwrap();
        let sig = git2::Signature::now("t", "t@example.com").unwrap();
        let tree = repo.find_tree(repo.index().unwrap().write_tree().unwrap()).unwrap();
        let head = repo.commit(Some("refs/heads/main"), &sig, &sig, "one", &tree, &[]).unwrap().to_string();
        let clock = Arc::new(FixedClock::new(T - 600));
        let mut states = Vec::new();
        for _ in 0..2 {
            let mut cfg = crate::server::config::ServeArgs {
                insecure_no_signature: true,
                data_dir: Some(dir.path().join("data")),
                local_capacity: Some(0),
                ..Default::default()
            }
            .resolve()
            .unwrap();
            // No firewall rule in a unit test: nothing is executed.
            cfg.isolation.block_host = false;
            states.push(crate::server::state_with_clock(cfg, clock.clone()).await.unwrap());
        }
        let new_run = NewRun {
            repo: "acme/app".into(),
            clone_url: repo_dir.display().to_string(),
            event: "push".into(),
            branch: Some("main".into()),
            sha: head.clone(),
            ..Default::default()
        };
        let p = crate::pipeline::parse_str(
            ".orch.yml",
            "on:\n  schedule:\n    - {cron: \"0 3 * * *\", name: nightly}\nsteps: {a: {image: alpine, commands: [x]}}\n",
        )
        .unwrap();
        assert!(record(&states[0].db, &new_run, "main", Some(&p), clock.now()).await.unwrap());
        // Before its time: nothing.
        assert!(tick(&states[0]).await.unwrap().is_empty());
        clock.set(T + 1);
        let (x, y) = tokio::join!(tick(&states[0]), tick(&states[1]));
        let all: Vec<Fired> = x.unwrap().into_iter().chain(y.unwrap()).map(|(_, f)| f).collect();
        assert_eq!(all.iter().filter(|f| matches!(f, Fired::Queued(_))).count(), 1, "{all:?}");
        let runs = schedule_runs(&states[1].db).await;
        assert_eq!(runs.len(), 1);
        assert_eq!(
            (runs[0].spec.sha.as_str(), runs[0].spec.title.as_deref()),
            (head.as_str(), Some("schedule nightly"))
        );
        assert_eq!(states[0].db.next_schedule_at().await.unwrap(), Some(T + 86_400));
    }
}
