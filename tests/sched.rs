//! The scheduler against the scripted fake backend: ordering, skips, statuses, retries,
//! timeouts, cancellation and cleanup, without Docker.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use orch::exec::Workspace;
use orch::exec::fake::{FakeAttempt, FakeBackend};
use orch::plan::{Context, Selection, plan};
use orch::sched::{Cancel, RunEvent, RunOptions, RunStatus, StepStatus, StepSummary, execute};
use tokio::sync::mpsc;

struct Outcome {
    status: RunStatus,
    steps: Vec<StepSummary>,
    events: Vec<RunEvent>,
    calls: Vec<String>,
    max_running: usize,
}

impl Outcome {
    fn step(&self, name: &str) -> &StepSummary {
        self.steps.iter().find(|s| s.step == name).unwrap_or_else(|| panic!("no step {name}"))
    }
}

async fn run_with(yaml: &str, backend: FakeBackend, jobs: usize, cancel: Cancel) -> Outcome {
    run_reusing(yaml, backend, jobs, cancel, Default::default()).await
}

/// The options most tests run with: one secret, no cache, no artifacts.
fn options() -> RunOptions {
    RunOptions {
        run_id: "r1".into(),
        jobs: 8,
        secrets: [("TOKEN".to_string(), "hunter2".to_string())].into_iter().collect(),
        workspace: Workspace::Empty,
        grace: Duration::from_secs(1),
        cache: None,
        source_root: None,
        artifact_dir: None,
        reuse: Default::default(),
        isolation: Default::default(),
        log_limit: 0,
        shell: None,
        gate: None,
        redeploy: false,
    }
}

/// Plans `yaml` for a push to main and executes it on `backend`.
async fn execute_plan(yaml: &str, backend: Arc<FakeBackend>, opts: RunOptions, cancel: Cancel) -> Outcome {
    let p = orch::pipeline::parse_str("t.yml", yaml).unwrap_or_else(|e| panic!("{e}"));
    let ctx = Context { event: Some(orch::pipeline::Event::Push), branch: Some("main".into()), ..Default::default() };
    let plan = plan(&p, &ctx, &Selection::default()).unwrap();
    let (tx, mut rx) = mpsc::channel(10_000);
    let collector = tokio::spawn(async move {
        let mut v = Vec::new();
        while let Some(e) = rx.recv().await {
            v.push(e);
        }
        v
    });
    let result = execute(backend.clone(), &plan, opts, tx, cancel).await;
    let events = collector.await.unwrap();
    Outcome {
        status: result.status,
        steps: result.steps,
        events,
        calls: backend.calls(),
        max_running: backend.max_running.load(Ordering::SeqCst),
    }
}

async fn run_reusing(
    yaml: &str,
    backend: FakeBackend,
    jobs: usize,
    cancel: Cancel,
    reuse: std::collections::HashMap<String, StepSummary>,
) -> Outcome {
    execute_plan(yaml, Arc::new(backend), RunOptions { jobs, reuse, ..options() }, cancel).await
}

async fn run(yaml: &str, backend: FakeBackend) -> Outcome {
    run_with(yaml, backend, 8, Cancel::default()).await
}

const CHAIN: &str = "
defaults: { image: img }
steps:
  a: { stage: build, commands: [x] }
  b: { stage: test, commands: [x] }
  c: { stage: test, commands: [x], needs: [] }
  d: { stage: deploy, commands: [x] }
";

#[tokio::test]
async fn all_pass_in_order_and_cleanup_runs() {
    let o = run(CHAIN, FakeBackend::new()).await;
    assert_eq!(o.status, RunStatus::Success);
    assert!(o.steps.iter().all(|s| s.status == StepStatus::Passed));
    let pos = |s: &str| o.calls.iter().position(|c| c == s).unwrap();
    assert!(pos("remove a#1") < pos("start b#1"));
    assert!(pos("remove b#1") < pos("start d#1"));
    assert_eq!(o.calls.last().unwrap(), "destroy r1");
    assert_eq!(o.calls.first().unwrap(), "prepare r1");
}

#[tokio::test]
async fn failure_skips_dependents_but_not_independent_steps() {
    let b = FakeBackend::new().script("a", vec![FakeAttempt::exit(2)]);
    let o = run(CHAIN, b).await;
    assert_eq!(o.status, RunStatus::Failure);
    assert_eq!(o.step("a").status, StepStatus::Failed);
    assert_eq!(o.step("a").exit_code, Some(2));
    assert_eq!(o.step("b").status, StepStatus::Skipped);
    assert!(o.step("b").message.as_deref().unwrap().contains("`a`"));
    // d waits for the test stage; b was skipped because of a failure, so d is skipped too.
    assert_eq!(o.step("d").status, StepStatus::Skipped);
    assert_eq!(o.step("c").status, StepStatus::Passed);
    assert_eq!(o.calls.last().unwrap(), "destroy r1");
}

/// A re-run of the failed steps: the kept steps are not started, they count as passed (with
/// the message given) for what needs them, and the others run again.
#[tokio::test]
async fn reused_steps_are_passed_without_running() {
    let kept = |name: &str| StepSummary {
        step: name.into(),
        status: StepStatus::Passed,
        exit_code: Some(0),
        attempts: 0,
        allowed_failure: false,
        message: Some("kept from run 7".into()),
        started: Duration::ZERO,
        duration: Duration::from_secs(3),
        artifacts: Vec::new(),
        blocks_dependents: false,
    };
    // `d` passed before too, but it needs `b`, which runs again: so does `d` (skipped here).
    let reuse = ["a", "c", "d"].into_iter().map(|s| (s.to_string(), kept(s))).collect();
    let b = FakeBackend::new().script("b", vec![FakeAttempt::exit(1)]);
    let o = run_reusing(CHAIN, b, 8, Cancel::default(), reuse).await;
    assert_eq!(o.status, RunStatus::Failure);
    for s in ["a", "c"] {
        assert_eq!(o.step(s).status, StepStatus::Passed);
        assert_eq!(o.step(s).message.as_deref(), Some("kept from run 7"));
        assert_eq!((o.step(s).attempts, o.step(s).duration), (0, Duration::ZERO));
        assert!(!o.calls.iter().any(|c| c.starts_with(&format!("start {s}#"))), "{:?}", o.calls);
        assert!(!o.events.iter().any(|e| matches!(e, RunEvent::StepStarted { step, .. } if step == s)));
        assert!(
            o.events
                .iter()
                .any(|e| matches!(e, RunEvent::StepFinished(f) if f.step == s && f.status == StepStatus::Passed))
        );
    }
    assert!(o.calls.contains(&"start b#1".to_string()), "{:?}", o.calls);
    assert_eq!(o.step("b").status, StepStatus::Failed);
    assert_eq!(o.step("d").status, StepStatus::Skipped);
}

#[tokio::test]
async fn allow_failure_lets_the_run_pass() {
    let yaml = "
defaults: { image: img }
steps:
  a: { stage: build, commands: [x], allow_failure: true }
  b: { stage: test, commands: [x] }
";
    let o = run(yaml, FakeBackend::new().script("a", vec![FakeAttempt::exit(1)])).await;
    assert_eq!(o.status, RunStatus::Success);
    assert!(o.step("a").allowed_failure);
    assert_eq!(o.step("b").status, StepStatus::Passed);
}

const STATUS: &str = "
defaults: { image: img }
steps:
  a: { stage: build, commands: [x] }
  on_fail: { stage: test, commands: [x], when: { status: [failure] } }
  always: { stage: test, commands: [x], when: { status: always } }
  normal: { stage: test, commands: [x] }
";

#[tokio::test]
async fn status_conditions_when_everything_passes() {
    let o = run(STATUS, FakeBackend::new()).await;
    assert_eq!(o.step("on_fail").status, StepStatus::Skipped);
    assert_eq!(o.step("always").status, StepStatus::Passed);
    assert_eq!(o.step("normal").status, StepStatus::Passed);
    assert_eq!(o.status, RunStatus::Success);
}

#[tokio::test]
async fn status_conditions_when_something_fails() {
    let o = run(STATUS, FakeBackend::new().script("a", vec![FakeAttempt::exit(1)])).await;
    assert_eq!(o.step("on_fail").status, StepStatus::Passed);
    assert_eq!(o.step("always").status, StepStatus::Passed);
    assert_eq!(o.step("normal").status, StepStatus::Skipped);
    assert_eq!(o.status, RunStatus::Failure);
}

#[tokio::test]
async fn jobs_limit_bounds_parallelism() {
    let yaml = "
defaults: { image: img }
steps:
  a: { commands: [x] }
  b: { commands: [x] }
  c: { commands: [x] }
  d: { commands: [x] }
  e: { commands: [x] }
";
    let slow = || vec![FakeAttempt::exit(0).delay(Duration::from_millis(50))];
    let mk = || {
        FakeBackend::new()
            .script("a", slow())
            .script("b", slow())
            .script("c", slow())
            .script("d", slow())
            .script("e", slow())
    };
    let o = run_with(yaml, mk(), 2, Cancel::default()).await;
    assert_eq!(o.max_running, 2);
    let o = run_with(yaml, mk(), 8, Cancel::default()).await;
    assert_eq!(o.max_running, 5);
}

#[tokio::test]
async fn retries_on_listed_exit_codes_only() {
    let yaml = "
defaults: { image: img }
steps:
  flaky: { commands: [x], retry: { count: 2, on_exit_codes: [137] } }
  broken: { commands: [x], retry: { count: 2, on_exit_codes: [137] } }
";
    let b = FakeBackend::new()
        .script("flaky", vec![FakeAttempt::exit(137), FakeAttempt::exit(0)])
        .script("broken", vec![FakeAttempt::exit(1)]);
    let o = run(yaml, b).await;
    assert_eq!(o.step("flaky").status, StepStatus::Passed);
    assert_eq!(o.step("flaky").attempts, 2);
    assert_eq!(o.step("broken").status, StepStatus::Failed);
    assert_eq!(o.step("broken").attempts, 1);
    let retries = o.events.iter().filter(|e| matches!(e, RunEvent::StepRetrying { .. })).count();
    assert_eq!(retries, 1);
}

#[tokio::test]
async fn retry_count_is_a_limit() {
    let yaml = "
defaults: { image: img }
steps:
  flaky: { commands: [x], retry: 2 }
";
    let o = run(yaml, FakeBackend::new().script("flaky", vec![FakeAttempt::exit(1)])).await;
    assert_eq!(o.step("flaky").attempts, 3);
    assert_eq!(o.step("flaky").status, StepStatus::Failed);
}

#[tokio::test]
async fn timeout_stops_the_step() {
    let yaml = "
defaults: { image: img }
steps:
  slow: { commands: [x], timeout: 100ms }
";
    let b = FakeBackend::new().script("slow", vec![FakeAttempt::exit(0).delay(Duration::from_secs(30))]);
    let t = std::time::Instant::now();
    let o = run(yaml, b).await;
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(o.step("slow").status, StepStatus::TimedOut);
    assert!(o.calls.contains(&"stop slow#1 grace=0".to_string()));
    assert!(o.calls.contains(&"remove slow#1".to_string()));
    assert_eq!(o.status, RunStatus::Failure);
}

#[tokio::test]
async fn cancel_stops_running_steps_and_skips_the_rest() {
    let b = FakeBackend::new().script("a", vec![FakeAttempt::exit(0).delay(Duration::from_secs(30))]);
    let cancel = Cancel::default();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c2.graceful.cancel();
    });
    let o = run_with(CHAIN, b, 8, cancel).await;
    assert_eq!(o.status, RunStatus::Cancelled);
    assert_eq!(o.step("a").status, StepStatus::Cancelled);
    assert_eq!(o.step("b").status, StepStatus::Skipped);
    assert!(o.calls.iter().any(|c| c.starts_with("stop a#1 grace=1")));
    assert!(o.calls.contains(&"remove a#1".to_string()));
    assert_eq!(o.calls.last().unwrap(), "destroy r1");
}

#[tokio::test]
async fn start_errors_are_step_errors() {
    let b = FakeBackend::new()
        .script("a", vec![FakeAttempt { start_error: Some("no such image".into()), ..Default::default() }]);
    let o = run(CHAIN, b).await;
    assert_eq!(o.step("a").status, StepStatus::Error);
    assert_eq!(o.status, RunStatus::Error);
    assert!(o.step("a").message.as_deref().unwrap().contains("no such image"));
}

#[tokio::test]
async fn secrets_only_for_steps_that_name_them_and_masked() {
    let yaml = "
defaults: { image: img }
steps:
  with: { commands: [x], secrets: [TOKEN] }
  without: { commands: [x] }
";
    let b = FakeBackend::new().script("with", vec![FakeAttempt::exit(0).out("the token is hunter2\n")]);
    let backend_envs = {
        let o = run(yaml, b).await;
        let lines = output_lines(&o.events);
        assert_eq!(lines, ["the token is ***"]);
        o
    };
    assert_eq!(backend_envs.status, RunStatus::Success);
}

#[tokio::test]
async fn secret_env_reaches_only_the_naming_step() {
    let yaml = "
defaults: { image: img }
steps:
  with: { commands: [x], secrets: [TOKEN] }
  without: { commands: [x] }
";
    let backend = Arc::new(FakeBackend::new());
    execute_plan(yaml, backend.clone(), RunOptions { jobs: 2, ..options() }, Cancel::default()).await;
    let envs = backend.envs.lock().unwrap();
    assert!(envs["with#1"].contains(&("TOKEN".to_string(), "hunter2".to_string())));
    assert!(!envs["without#1"].iter().any(|(k, _)| k == "TOKEN"));
    assert!(envs["with#1"].contains(&("ORCH_STEP".to_string(), "with".to_string())));
}

#[tokio::test]
async fn output_lines_are_events_in_order() {
    let yaml = "
defaults: { image: img }
steps:
  a: { commands: [x] }
";
    let b = FakeBackend::new().script("a", vec![FakeAttempt::exit(0).out("one\ntw").out("o\nthree")]);
    let o = run(yaml, b).await;
    let lines = output_lines(&o.events);
    assert_eq!(lines, ["one", "two", "three"]);
    assert!(matches!(o.events.first(), Some(RunEvent::RunStarted { .. })));
    assert!(matches!(o.events.last(), Some(RunEvent::RunFinished { status: RunStatus::Success, .. })));
}

#[tokio::test]
async fn a_passing_always_step_does_not_hide_an_earlier_failure() {
    let yaml = "
defaults: { image: img }
steps:
  build: { stage: build, commands: [x] }
  cleanup: { stage: test, commands: [x], when: { status: always } }
  deploy: { stage: deploy, commands: [x] }
  notify: { stage: deploy, commands: [x], when: { status: [failure] } }
";
    let o = run(yaml, FakeBackend::new().script("build", vec![FakeAttempt::exit(1)])).await;
    assert_eq!(o.step("cleanup").status, StepStatus::Passed);
    assert_eq!(o.step("deploy").status, StepStatus::Skipped);
    assert!(o.step("deploy").message.as_deref().unwrap().contains("`build`"), "{:?}", o.step("deploy").message);
    assert_eq!(o.step("notify").status, StepStatus::Passed);
}

async fn run_cached(yaml: &str, store: &std::path::Path, backend: FakeBackend, scopes: &[&str]) -> Outcome {
    let artifacts = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        run_id: "rc".into(),
        jobs: 2,
        secrets: Default::default(),
        cache: Some(orch::sched::CacheSettings {
            store: Arc::new(orch::cache::CacheStore::new(store, 1 << 30)),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        }),
        artifact_dir: Some(artifacts.path().to_path_buf()),
        ..options()
    };
    execute_plan(yaml, Arc::new(backend), opts, Cancel::default()).await
}

const CACHED: &str = "
defaults: { image: img }
steps:
  build:
    commands: [x]
    cache: { key: deps-v1, paths: [deps, ~/.tool] }
    artifacts: [dist/app]
";

#[tokio::test]
async fn cache_is_saved_once_then_restored() {
    let store = tempfile::tempdir().unwrap();
    let o = run_cached(CACHED, store.path(), FakeBackend::new(), &["branch:main"]).await;
    assert_eq!(o.status, RunStatus::Success);
    assert!(o.calls.contains(&"export build#1 /workspace/deps".to_string()), "{:?}", o.calls);
    assert!(o.calls.contains(&"export build#1 /root/.tool".to_string()));
    assert!(o.events.iter().any(|e| matches!(e, RunEvent::CacheSaved { key, .. } if key == "deps-v1")));
    assert!(o.events.iter().any(|e| matches!(e, RunEvent::CacheRestored { hit: false, .. })));
    assert_eq!(o.step("build").artifacts.len(), 1);

    let o = run_cached(CACHED, store.path(), FakeBackend::new(), &["branch:main"]).await;
    assert!(o.calls.contains(&"restore build#1 /workspace/deps".to_string()), "{:?}", o.calls);
    assert!(!o.calls.iter().any(|c| c.starts_with("export")), "an existing key is not saved again: {:?}", o.calls);
    assert!(o.events.iter().any(|e| matches!(e, RunEvent::CacheRestored { hit: true, fallback: false, .. })));
}

#[tokio::test]
async fn a_pull_request_reads_the_default_branch_cache_but_writes_its_own() {
    let store = tempfile::tempdir().unwrap();
    run_cached(CACHED, store.path(), FakeBackend::new(), &["branch:main"]).await;
    let o = run_cached(CACHED, store.path(), FakeBackend::new(), &["pr:7", "branch:main"]).await;
    assert!(o.events.iter().any(|e| matches!(e, RunEvent::CacheRestored { hit: true, fallback: true, .. })));
    // A fallback hit is saved into the PR's own scope; main's entry is untouched.
    assert!(o.calls.iter().any(|c| c.starts_with("export")));
    let s = orch::cache::CacheStore::new(store.path(), 1 << 30);
    let scopes: Vec<String> = s.list().into_iter().map(|(m, _, _)| m.scope).collect();
    assert_eq!(scopes.len(), 2, "{scopes:?}");
}

#[tokio::test]
async fn unmatched_artifacts_fail_the_step_unless_optional() {
    let store = tempfile::tempdir().unwrap();
    let yaml = "
defaults: { image: img }
steps:
  a: { commands: [x], artifacts: [missing/*.zip] }
  b: { commands: [x], artifacts: { paths: [missing/*.zip], optional: true } }
";
    let o = run_cached(yaml, store.path(), FakeBackend::new(), &["branch:main"]).await;
    assert_eq!(o.step("a").status, StepStatus::Failed);
    assert!(o.step("a").message.as_deref().unwrap().contains("missing/*.zip"));
    assert_eq!(o.step("b").status, StepStatus::Passed);
    assert!(o.calls.contains(&"remove a#1".to_string()));
}

#[tokio::test]
async fn a_secret_too_short_to_mask_is_warned_about_and_not_masked() {
    let yaml = "
defaults: { image: img }
steps:
  with: { commands: [x], secrets: [PIN] }
";
    let b = FakeBackend::new().script("with", vec![FakeAttempt::exit(0).out("step 1 of 3\n")]);
    let secrets = [("PIN".to_string(), "1".to_string())].into_iter().collect();
    let o = execute_plan(yaml, Arc::new(b), RunOptions { secrets, ..options() }, Cancel::default()).await;
    let warned = o.events.iter().any(|e| {
        matches!(e, RunEvent::RunMessage { level: orch::sched::Level::Warning, message }
            if message.contains("secret `PIN` is shorter than 4 characters"))
    });
    assert!(warned, "{:?}", o.events);
    let lines = output_lines(&o.events);
    assert_eq!(lines, ["step 1 of 3"]);
}

#[tokio::test]
async fn a_log_past_its_limit_ends_with_a_notice_and_the_step_goes_on() {
    let yaml = "
defaults: { image: img }
steps:
  loud: { commands: [x] }
  after: { commands: [x], needs: [loud] }
";
    let line = "y".repeat(1000);
    let mut attempt = FakeAttempt::exit(0);
    for _ in 0..3000 {
        attempt = attempt.out(&format!("{line}\n"));
    }
    let b = FakeBackend::new().script("loud", vec![attempt]);
    let opts = RunOptions { log_limit: 1 << 20, ..options() };
    let o = execute_plan(yaml, Arc::new(b), opts, Cancel::default()).await;
    assert_eq!(o.status, RunStatus::Success, "the step goes on and passes");
    // The log files are written from these events (report::logfile).
    let lines = output_lines(&o.events);
    let kept: usize = lines.iter().map(|l| l.len() + 1).sum();
    assert!(kept as u64 <= (1 << 20) + 200, "{kept} bytes kept");
    assert_eq!(lines.last().copied(), Some(orch::sched::truncation_notice(1 << 20).as_str()));
    assert!(lines.len() < 1100, "{} lines sent on after the limit", lines.len());
}

/// The lines of every step's output, in order.
fn output_lines(events: &[RunEvent]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| match e {
            RunEvent::StepOutput { text, .. } => Some(orch::sched::logs::lines_of(text)),
            _ => None,
        })
        .flatten()
        .collect()
}

/// A terminal for `--shell` tests: what is "typed" is given, what the shell prints is kept.
struct FakeTerminal {
    typed: &'static str,
    screen: Arc<std::sync::Mutex<Vec<u8>>>,
}

struct Screen(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Screen {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl orch::sched::Terminal for FakeTerminal {
    fn open(&self) -> Result<orch::exec::ShellIo, String> {
        Ok(orch::exec::ShellIo {
            input: Box::new(std::io::Cursor::new(self.typed.as_bytes().to_vec())),
            output: Box::new(Screen(self.screen.clone())),
            size: None,
            resized: None,
        })
    }
}

#[tokio::test]
async fn one_shell_opens_where_the_first_step_failed_before_its_container_goes() {
    use orch::sched::{Shell, ShellAt};
    let yaml = "
defaults: { image: img }
steps:
  first: { commands: [x], secrets: [TOKEN] }
  second: { commands: [x], needs: [first], when: { status: always } }
  third: { commands: [x], needs: [second], when: { status: always } }
";
    let b = FakeBackend::new()
        .script("first", vec![FakeAttempt::exit(2)])
        .script("second", vec![FakeAttempt::exit(0)])
        .script("third", vec![FakeAttempt::exit(5)]);
    let screen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let terminal = Arc::new(FakeTerminal { typed: "echo typed\n", screen: screen.clone() });
    let shell = Arc::new(Shell::new(ShellAt::Failure, terminal, orch::report::Screen::new()));
    let opts = RunOptions { shell: Some(shell.clone()), ..options() };
    let o = execute_plan(yaml, Arc::new(b), opts, Cancel::default()).await;
    // The run's result is the steps': the shell's exit code changes nothing.
    assert_eq!(o.status, RunStatus::Failure);
    assert_eq!(o.step("first").status, StepStatus::Failed);
    assert!(shell.opened());
    let shells: Vec<&String> = o.calls.iter().filter(|c| c.starts_with("shell ")).collect();
    assert_eq!(shells, ["shell first after first#1"], "one shell, at the first failure: {:?}", o.calls);
    // In the stopped container, before it is removed and before what needs the step starts.
    let at = |call: &str| o.calls.iter().position(|c| c == call).unwrap_or_else(|| panic!("no {call}: {:?}", o.calls));
    assert!(at("shell first after first#1") < at("remove first#1"), "{:?}", o.calls);
    assert!(at("shell first after first#1") < at("start second#1"), "{:?}", o.calls);
    // The step's environment, its secret masked on the screen; what was typed reached it.
    let shown = String::from_utf8(screen.lock().unwrap().clone()).unwrap();
    assert!(shown.contains("TOKEN=***") && !shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("echo typed"), "{shown}");
    let said = |needle: &str| {
        o.events.iter().any(|e| matches!(e, RunEvent::RunMessage { message, .. } if message.contains(needle)))
    };
    assert!(said("opening a shell in step `first` where it failed"), "{:?}", o.events);
    assert!(said("the shell in step `first` ended (exit code 0)"), "{:?}", o.events);
}

#[tokio::test]
async fn a_shell_before_a_named_step_opens_before_its_first_attempt() {
    use orch::sched::{Shell, ShellAt};
    let yaml = "
defaults: { image: img }
steps:
  build: { commands: [x] }
  deploy: { commands: [x], needs: [build] }
";
    let b = FakeBackend::new();
    let terminal = Arc::new(FakeTerminal { typed: "", screen: Default::default() });
    let at = ShellAt::Before("deploy".into());
    let shell = Arc::new(Shell::new(at, terminal, orch::report::Screen::new()));
    let o = execute_plan(yaml, Arc::new(b), RunOptions { shell: Some(shell), ..options() }, Cancel::default()).await;
    assert_eq!(o.status, RunStatus::Success);
    let pos = |call: &str| o.calls.iter().position(|c| c == call).unwrap_or_else(|| panic!("no {call}: {:?}", o.calls));
    assert!(pos("start build#1") < pos("shell deploy before"), "{:?}", o.calls);
    assert!(pos("shell deploy before") < pos("start deploy#1"), "{:?}", o.calls);
}

#[tokio::test]
async fn a_matrix_step_with_an_environment_is_one_deployment_ending_with_its_worst_variant() {
    use orch::sched::DeploymentStatus;
    let yaml = "
defaults: { image: img }
steps:
  build: { commands: [x] }
  ship:
    needs: [build]
    environment: { name: production, url: 'https://example.test/${region}' }
    matrix: { region: [eu, us] }
    commands: [x]
  plain: { commands: [x] }
";
    let b = FakeBackend::new().script("ship[region=us]", vec![FakeAttempt::exit(1)]);
    let o = execute_plan(yaml, Arc::new(b), RunOptions { jobs: 1, ..options() }, Cancel::default()).await;
    let started: Vec<&RunEvent> = o.events.iter().filter(|e| matches!(e, RunEvent::DeploymentStarted { .. })).collect();
    let finished: Vec<&RunEvent> =
        o.events.iter().filter(|e| matches!(e, RunEvent::DeploymentFinished { .. })).collect();
    assert_eq!(started.len(), 1, "one deployment for two variants: {:?}", o.events);
    assert_eq!(finished.len(), 1, "{:?}", o.events);
    match finished[0] {
        RunEvent::DeploymentFinished { step, environment, status, .. } => {
            assert_eq!((step.as_str(), environment.as_str()), ("ship", "production"));
            assert_eq!(*status, DeploymentStatus::Failure, "one variant failed");
        }
        _ => unreachable!(),
    }
    // It starts before the first variant's start and ends after the last variant's end.
    let pos = |pred: &dyn Fn(&RunEvent) -> bool| o.events.iter().position(pred).unwrap();
    let first_variant = pos(&|e| matches!(e, RunEvent::StepStarted { step, .. } if step.starts_with("ship")));
    let last_end =
        o.events.iter().rposition(|e| matches!(e, RunEvent::StepFinished(s) if s.step.starts_with("ship"))).unwrap();
    assert!(pos(&|e| matches!(e, RunEvent::DeploymentStarted { .. })) < first_variant, "{:?}", o.events);
    assert!(pos(&|e| matches!(e, RunEvent::DeploymentFinished { .. })) > last_end, "{:?}", o.events);
}

/// A gatekeeper for tests: decides as told once `after` (a backend call) happened, and
/// records what it was asked and told.
struct TestGate {
    backend: Arc<FakeBackend>,
    after: Option<String>,
    /// `None`: never decides.
    decision: Option<orch::sched::GateDecision>,
    asked: std::sync::Mutex<Vec<orch::sched::GateRequest>>,
    finished: std::sync::Mutex<Vec<(String, orch::sched::DeploymentStatus)>>,
}

impl TestGate {
    fn new(backend: &Arc<FakeBackend>, after: Option<&str>, decision: Option<orch::sched::GateDecision>) -> Arc<Self> {
        Arc::new(TestGate {
            backend: backend.clone(),
            after: after.map(str::to_string),
            decision,
            asked: Default::default(),
            finished: Default::default(),
        })
    }
}

impl orch::sched::Gatekeeper for TestGate {
    fn decide(
        &self,
        req: orch::sched::GateRequest,
        notes: orch::sched::GateNotes,
    ) -> futures_util::future::BoxFuture<'static, orch::sched::GateDecision> {
        self.asked.lock().unwrap().push(req);
        let (backend, after, decision) = (self.backend.clone(), self.after.clone(), self.decision.clone());
        Box::pin(async move {
            // Said twice, shown once.
            notes.say("held by the test");
            notes.say("held by the test");
            if let Some(call) = after {
                while !backend.calls().contains(&call) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            match decision {
                Some(d) => d,
                None => std::future::pending().await,
            }
        })
    }

    fn finished(
        &self,
        req: orch::sched::GateRequest,
        status: orch::sched::DeploymentStatus,
    ) -> futures_util::future::BoxFuture<'static, ()> {
        self.finished.lock().unwrap().push((req.environment, status));
        Box::pin(async {})
    }
}

const GATED: &str = "
defaults: { image: img }
environments:
  production:
    branches: [main]
    approval: { approvers: [alice, bob, carol], required: 2, timeout: 1h }
    secrets: [DEPLOY_KEY]
steps:
  other: { commands: [x] }
  sneaky: { commands: [x], needs: [other], secrets: [DEPLOY_KEY, TOKEN] }
  ship: { commands: [x], environment: production, secrets: [TOKEN] }
  after: { commands: [x], needs: [ship] }
";

fn gated_options(gate: Arc<TestGate>) -> RunOptions {
    let mut opts = RunOptions { jobs: 1, gate: Some(gate), ..options() };
    opts.secrets.insert("DEPLOY_KEY".into(), "s3cret-deploy-key".into());
    opts
}

#[tokio::test]
async fn a_gate_waits_while_other_steps_run_and_approval_lets_the_deployment_run_with_its_secrets() {
    use orch::sched::{DeploymentStatus, GateDecision, GateOutcome};
    let backend = Arc::new(
        FakeBackend::new()
            .script("other", vec![FakeAttempt::exit(0).delay(Duration::from_millis(50))])
            .script("ship", vec![FakeAttempt::exit(0).out("key s3cret-deploy-key\n")]),
    );
    let by = vec!["alice".to_string(), "carol".to_string()];
    // The gate decides only once `other` is over: with one job at a time, the run went on
    // while it waited.
    let gate = TestGate::new(&backend, Some("remove other#1"), Some(GateDecision::Go { by: by.clone() }));
    let o = execute_plan(GATED, backend.clone(), gated_options(gate.clone()), Cancel::default()).await;
    assert_eq!(o.status, RunStatus::Success, "{:?}", o.events);
    let pos = |c: &str| o.calls.iter().position(|x| x == c).unwrap_or_else(|| panic!("no {c}: {:?}", o.calls));
    assert!(pos("remove other#1") < pos("start ship#1"), "{:?}", o.calls);
    let asked = gate.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 1);
    assert_eq!((asked[0].environment.as_str(), asked[0].step.as_str()), ("production", "ship"));
    assert_eq!((asked[0].required, asked[0].approvers.len()), (2, 3));
    assert_eq!(asked[0].branch.as_deref(), Some("main"));
    assert!(!asked[0].redeploy);
    // The events: waiting, then approved by whom, then the deployment.
    let ev = |pred: &dyn Fn(&RunEvent) -> bool| o.events.iter().position(pred).unwrap_or(usize::MAX);
    let waiting =
        ev(&|e| matches!(e, RunEvent::GateWaiting { environment, required: 2, .. } if environment == "production"));
    let decided = ev(&|e| matches!(e, RunEvent::GateDecided { outcome: GateOutcome::Approved, by: b, .. } if *b == by));
    let deploying = ev(&|e| matches!(e, RunEvent::DeploymentStarted { .. }));
    assert!(waiting < decided && decided < deploying && deploying < usize::MAX, "{:?}", o.events);
    // What the gatekeeper said while it waited, about the environment, once.
    let said: Vec<_> = o.events.iter().filter(|e| matches!(e, RunEvent::GateNote { .. })).collect();
    assert_eq!(said.len(), 1, "{:?}", o.events);
    assert!(
        matches!(said[0], RunEvent::GateNote { environment, steps, note, .. }
            if environment == "production" && *steps == ["ship"] && note == "held by the test"),
        "{:?}",
        said[0]
    );
    // The environment's secret reached its step only, masked; a step that lists it without
    // deploying there does not get it (but gets its other secrets).
    let envs = backend.envs.lock().unwrap();
    assert!(envs["ship#1"].contains(&("DEPLOY_KEY".to_string(), "s3cret-deploy-key".to_string())));
    assert!(envs["ship#1"].contains(&("TOKEN".to_string(), "hunter2".to_string())));
    assert!(!envs["sneaky#1"].iter().any(|(k, _)| k == "DEPLOY_KEY"), "{:?}", envs["sneaky#1"]);
    assert!(envs["sneaky#1"].iter().any(|(k, _)| k == "TOKEN"));
    assert!(!envs["other#1"].iter().any(|(k, _)| k == "DEPLOY_KEY"));
    assert_eq!(output_lines(&o.events), ["key ***"]);
    assert_eq!(*gate.finished.lock().unwrap(), [("production".to_string(), DeploymentStatus::Success)]);
}

#[tokio::test]
async fn a_rejected_gate_fails_its_steps_and_skips_their_dependents_without_deploying() {
    use orch::sched::{GateDecision, GateOutcome};
    let backend = Arc::new(FakeBackend::new());
    let reason = "rejected by bob".to_string();
    let gate =
        TestGate::new(&backend, None, Some(GateDecision::Fail { reason: reason.clone(), by: vec!["bob".into()] }));
    let o = execute_plan(GATED, backend.clone(), gated_options(gate.clone()), Cancel::default()).await;
    assert_eq!(o.status, RunStatus::Failure);
    assert_eq!(o.step("ship").status, StepStatus::Failed);
    assert_eq!(o.step("ship").message.as_deref(), Some(reason.as_str()));
    assert_eq!(o.step("after").status, StepStatus::Skipped);
    assert_eq!(o.step("other").status, StepStatus::Passed);
    assert!(!o.calls.iter().any(|c| c.starts_with("start ship")), "{:?}", o.calls);
    assert!(!o.events.iter().any(|e| matches!(e, RunEvent::DeploymentStarted { .. })));
    assert!(o.events.iter().any(|e| matches!(e, RunEvent::GateDecided { outcome: GateOutcome::Failed, .. })));
    assert!(gate.finished.lock().unwrap().is_empty(), "nothing deployed, nothing to release");
}

#[tokio::test]
async fn a_refused_gate_skips_its_steps_with_the_reason() {
    use orch::sched::GateDecision;
    let backend = Arc::new(FakeBackend::new());
    let reason = "superseded by a newer commit".to_string();
    let gate = TestGate::new(&backend, None, Some(GateDecision::Refuse { reason: reason.clone() }));
    let o = execute_plan(GATED, backend.clone(), gated_options(gate), Cancel::default()).await;
    assert_eq!(o.step("ship").status, StepStatus::Skipped);
    assert_eq!(o.step("ship").message.as_deref(), Some(reason.as_str()));
    assert_eq!(o.status, RunStatus::Success, "a refusal is not a failure");
}

#[tokio::test]
async fn without_a_gatekeeper_a_deployment_that_needs_approval_fails_and_one_that_does_not_runs() {
    let yaml = "
defaults: { image: img }
environments:
  production: { approval: { approvers: [alice] } }
  staging: { secrets: [DEPLOY_KEY] }
steps:
  prod: { commands: [x], environment: production }
  stage: { commands: [x], environment: staging }
";
    let backend = Arc::new(FakeBackend::new());
    let mut opts = options();
    opts.secrets.insert("DEPLOY_KEY".into(), "s3cret-deploy-key".into());
    let o = execute_plan(yaml, backend.clone(), opts, Cancel::default()).await;
    assert_eq!(o.step("prod").status, StepStatus::Failed);
    assert!(o.step("prod").message.as_deref().unwrap().contains("needs approval"), "{:?}", o.step("prod"));
    assert_eq!(o.step("stage").status, StepStatus::Passed);
    assert!(backend.envs.lock().unwrap()["stage#1"].iter().any(|(k, _)| k == "DEPLOY_KEY"));
}

#[tokio::test]
async fn a_gate_without_a_decision_fails_at_its_timeout() {
    let yaml = GATED.replace("timeout: 1h", "timeout: 1s");
    let backend = Arc::new(FakeBackend::new());
    let gate = TestGate::new(&backend, None, None);
    let o = execute_plan(&yaml, backend.clone(), gated_options(gate), Cancel::default()).await;
    assert_eq!(o.step("ship").status, StepStatus::Failed);
    assert!(o.step("ship").message.as_deref().unwrap().contains("no approval within 1s"), "{:?}", o.step("ship"));
    assert_eq!(o.step("after").status, StepStatus::Skipped);
}

#[tokio::test]
async fn cancelling_the_run_ends_a_waiting_gate() {
    use orch::sched::GateOutcome;
    let backend = Arc::new(FakeBackend::new());
    let gate = TestGate::new(&backend, None, None);
    let cancel = Cancel::default();
    let c = cancel.clone();
    let b = backend.clone();
    tokio::spawn(async move {
        while !b.calls().contains(&"remove sneaky#1".to_string()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        c.graceful.cancel();
    });
    let o = tokio::time::timeout(
        Duration::from_secs(30),
        execute_plan(GATED, backend.clone(), gated_options(gate), cancel),
    )
    .await
    .expect("a waiting gate does not hold a cancelled run");
    assert_eq!(o.status, RunStatus::Cancelled);
    assert_eq!(o.step("ship").status, StepStatus::Skipped);
    assert!(o.events.iter().any(|e| matches!(e, RunEvent::GateDecided { outcome: GateOutcome::Cancelled, .. })));
    assert!(o.calls.iter().any(|c| c == "destroy r1"));
}

#[tokio::test]
async fn one_approval_covers_every_variant_and_step_deploying_to_the_environment() {
    use orch::sched::{DeploymentStatus, GateDecision};
    let yaml = "
defaults: { image: img }
environments:
  production: { approval: { approvers: [alice] }, wait: 100ms }
steps:
  ship: { commands: [x], environment: production, matrix: { region: [eu, us] } }
  migrate: { commands: [x], environment: production, needs: [ship] }
";
    let backend = Arc::new(FakeBackend::new());
    let gate = TestGate::new(&backend, None, Some(GateDecision::Go { by: vec!["alice".into()] }));
    let opts = RunOptions { gate: Some(gate.clone()), redeploy: true, ..options() };
    let o = execute_plan(yaml, backend.clone(), opts, Cancel::default()).await;
    assert_eq!(o.status, RunStatus::Success);
    let asked = gate.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(asked[0].redeploy);
    assert!(
        o.events.iter().any(|e| matches!(e, RunEvent::RunMessage { message, .. } if message.contains("wait timer")))
    );
    // Told once, when the last of them ended.
    assert_eq!(*gate.finished.lock().unwrap(), [("production".to_string(), DeploymentStatus::Success)]);
}
