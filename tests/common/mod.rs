//! Shared by the Docker integration tests (`tests/docker.rs`, `tests/docker_features.rs`):
//! the project builder, the orch process with its JSON events, and Docker leftovers checks.
//!
//! Each test crate uses a part of it only.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// Whether the Docker tests are switched on.
pub fn enabled() -> bool {
    std::env::var("ORCH_DOCKER_TESTS").is_ok_and(|v| v == "1")
}

/// Returns from the test (which then counts as passed) unless `ORCH_DOCKER_TESTS=1`.
macro_rules! require_docker {
    () => {
        if !$crate::common::enabled() {
            eprintln!("skipped: Docker tests run only with ORCH_DOCKER_TESTS=1 (scripts/test sets it)");
            return;
        }
    };
}
pub(crate) use require_docker;

/// Longest a single orch run may take before the test gives up on it (and kills it).
pub const RUN_LIMIT: Duration = Duration::from_secs(120);

pub const ORCH: &str = env!("CARGO_BIN_EXE_orch");

/// A throwaway project: a temp dir with an `.orch.yml` and other files.
pub struct Project {
    dir: TempDir,
}

impl Project {
    pub fn new(orch_yml: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("orch-docker-test-").tempdir().expect("temp dir");
        let p = Project { dir };
        p.write(".orch.yml", orch_yml);
        p
    }

    pub fn with(self, rel: &str, content: &str) -> Self {
        self.write(rel, content);
        self
    }

    pub fn write(&self, rel: &str, content: &str) {
        let path = self.dir.path().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create dirs");
        }
        std::fs::write(&path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// An executable file.
    pub fn with_exec(self, rel: &str, content: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        self.write(rel, content);
        let path = self.dir.path().join(rel);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        self
    }

    /// A symbolic link at `rel` pointing to `target`.
    pub fn with_symlink(self, rel: &str, target: &str) -> Self {
        std::os::unix::fs::symlink(target, self.dir.path().join(rel)).expect("symlink");
        self
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn read(&self, rel: &str) -> String {
        let path = self.dir.path().join(rel);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    /// `orch ci -C <dir> ARGS...`, not started.
    pub fn ci(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(ORCH);
        cmd.arg("ci").arg("-C").arg(self.path()).args(args);
        // A terminal-free, colour-free, quiet environment for the child.
        cmd.env_remove("RUST_LOG");
        cmd
    }

    /// Runs `orch ci --json -C <dir> ARGS...` to its end.
    pub fn run_json(&self, args: &[&str]) -> Run {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        Running::spawn(self.ci(&all)).finish(RUN_LIMIT)
    }

    /// Runs `orch ci --no-progress -C <dir> ARGS...` to its end.
    pub fn run_plain(&self, args: &[&str]) -> Run {
        let mut all = vec!["--no-progress"];
        all.extend_from_slice(args);
        Running::spawn(self.ci(&all)).finish(RUN_LIMIT)
    }

    /// Every file of the project (but orch's own `.orch`) with its content.
    pub fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
            for e in std::fs::read_dir(root.join(rel)).expect("read dir") {
                let e = e.expect("dir entry");
                let path = rel.join(e.file_name());
                if path == Path::new(".orch") {
                    continue;
                }
                if e.file_type().expect("file type").is_dir() {
                    walk(root, &path, out);
                } else {
                    out.insert(path.clone(), std::fs::read(root.join(&path)).expect("read file"));
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(self.path(), Path::new(""), &mut out);
        out
    }

    /// The run ids that have a directory under `.orch/runs`.
    pub fn run_dirs(&self) -> Vec<String> {
        match std::fs::read_dir(self.path().join(".orch/runs")) {
            Ok(rd) => rd.map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The saved log of a step: `.orch/runs/<id>/logs/<step>.log`.
    pub fn log_file(&self, run_id: &str, step: &str) -> String {
        self.read(&format!(".orch/runs/{run_id}/logs/{step}.log"))
    }
}

/// An orch process being run, its stdout read line by line as it comes.
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    stdout: Vec<String>,
    stderr: Option<thread::JoinHandle<String>>,
    started: Instant,
    run_id: Option<String>,
    done: bool,
}

impl Running {
    pub fn spawn(mut cmd: Command) -> Running {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {ORCH}: {e}"));
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().expect("stderr");
        let stderr = thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Running { child, lines, stdout: Vec::new(), stderr: Some(stderr), started, run_id: None, done: false }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn run_id(&self) -> &str {
        self.run_id.as_deref().expect("no run_started event yet")
    }

    fn take(&mut self, line: String) -> Option<Value> {
        let v = parse_event(&line);
        if let Some(v) = &v
            && v["event"] == "run_started"
        {
            self.run_id = v["run_id"].as_str().map(str::to_string);
        }
        self.stdout.push(line);
        v
    }

    /// Waits for the first event (from now on) that `pred` accepts.
    pub fn wait_event(&mut self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    if let Some(v) = self.take(line)
                        && pred(&v)
                    {
                        return v;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.abort();
                    panic!("no {what} within {timeout:?}; stdout so far:\n{}", self.stdout.join("\n"));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = self.child.wait();
                    self.done = true;
                    let stderr = self.stderr.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
                    panic!("orch ended before {what}; stdout:\n{}\nstderr:\n{stderr}", self.stdout.join("\n"));
                }
            }
        }
    }

    /// Waits for the first stdout line (from now on) that `pred` accepts, whatever the
    /// format; returns it.
    pub fn wait_line(&mut self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    let hit = pred(&line);
                    self.stdout.push(line.clone());
                    if hit {
                        return line;
                    }
                }
                Err(_) => {
                    self.abort();
                    panic!("no {what} within {timeout:?}; stdout so far:\n{}", self.stdout.join("\n"));
                }
            }
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends a signal (`INT`, `TERM`, ...) to the orch process.
    pub fn signal(&self, sig: &str) {
        let st =
            Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status().expect("cannot run kill");
        assert!(st.success(), "kill -{sig} {} failed", self.pid());
    }

    /// Waits for the process to end (killing it, and failing, after `limit`).
    pub fn finish(mut self, limit: Duration) -> Run {
        let deadline = self.started + limit;
        let status: ExitStatus = loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                break st;
            }
            if Instant::now() > deadline {
                self.abort();
                panic!("orch still running after {limit:?}; stdout so far:\n{}", self.stdout.join("\n"));
            }
            thread::sleep(Duration::from_millis(25));
        };
        let elapsed = self.started.elapsed();
        self.done = true;
        // The reader thread ends at EOF, which follows the exit.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            self.take(line);
        }
        let stderr = self.stderr.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        let events = self.stdout.iter().filter_map(|l| parse_event(l)).collect();
        Run { code: status.code(), stdout: self.stdout.join("\n"), stderr, events, elapsed }
    }

    /// Kills orch (a test went wrong) and removes what its run left in Docker.
    fn abort(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(id) = &self.run_id {
            remove_run(id);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.abort();
    }
}

fn parse_event(line: &str) -> Option<Value> {
    if !line.starts_with('{') {
        return None;
    }
    serde_json::from_str::<Value>(line).ok().filter(|v| v.get("event").is_some())
}

/// A finished orch process.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// The `--json` events (empty without `--json`).
    pub events: Vec<Value>,
    /// Wall-clock time of the process.
    pub elapsed: Duration,
}

impl Run {
    /// Everything about the run, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "exit code {:?} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.elapsed, self.stdout, self.stderr
        )
    }

    pub fn assert_code(&self, code: i32) {
        assert_eq!(self.code, Some(code), "unexpected exit code\n{}", self.describe());
        assert!(!self.stderr.contains("panicked"), "orch panicked\n{}", self.describe());
    }

    pub fn events_of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.events.iter().filter(move |e| e["event"] == kind)
    }

    pub fn run_id(&self) -> String {
        self.events_of("run_started")
            .next()
            .and_then(|e| e["run_id"].as_str())
            .unwrap_or_else(|| panic!("no run_started event\n{}", self.describe()))
            .to_string()
    }

    pub fn run_finished(&self) -> &Value {
        let mut it = self.events_of("run_finished");
        let ev = it.next().unwrap_or_else(|| panic!("no run_finished event\n{}", self.describe()));
        assert!(it.next().is_none(), "two run_finished events\n{}", self.describe());
        ev
    }

    pub fn run_status(&self) -> &str {
        self.run_finished()["status"].as_str().expect("run status")
    }

    /// The one `step_finished` event of a step.
    pub fn step(&self, name: &str) -> &Value {
        let all: Vec<&Value> = self.events_of("step_finished").filter(|e| e["step"] == name).collect();
        assert_eq!(all.len(), 1, "expected one step_finished for `{name}`\n{}", self.describe());
        all[0]
    }

    pub fn status(&self, name: &str) -> &str {
        self.step(name)["status"].as_str().expect("step status")
    }

    pub fn message(&self, name: &str) -> &str {
        self.step(name)["message"].as_str().unwrap_or("")
    }

    /// Event `kind` of one step.
    pub fn step_events<'a>(&'a self, kind: &str, name: &str) -> Vec<&'a Value> {
        self.events.iter().filter(|e| e["event"] == kind && e["step"] == name).collect()
    }

    /// The output lines of a step, from its `step_log` events.
    pub fn log_lines(&self, name: &str) -> Vec<String> {
        self.step_events("step_log", name).iter().map(|e| e["line"].as_str().unwrap_or("").to_string()).collect()
    }

    /// [step_started t, step_finished t] of a (single-attempt) step.
    pub fn interval(&self, name: &str) -> (f64, f64) {
        let started = self.step_events("step_started", name);
        assert_eq!(started.len(), 1, "expected one step_started for `{name}`\n{}", self.describe());
        let t0 = started[0]["t"].as_f64().expect("t");
        let t1 = self.step(name)["t"].as_f64().expect("t");
        (t0, t1)
    }
}

/// Runs `docker ARGS...`, which must succeed; its trimmed stdout.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("cannot run docker");
    assert!(out.status.success(), "docker {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// What Docker holds of a run: `(kind, name)` of the containers, volumes and networks
/// labelled `orch.run=<run_id>` or named `orch-<run_id>-...` (a volume Docker creates on
/// its own for a container that mounts a missing named volume carries no label).
fn run_objects(run_id: &str) -> Vec<(&'static str, String, bool)> {
    let mut out: Vec<(&'static str, String, bool)> = Vec::new();
    for (labelled, filter) in [(true, format!("label=orch.run={run_id}")), (false, format!("name=orch-{run_id}-"))] {
        for (kind, args) in [
            ("container", vec!["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"]),
            ("volume", vec!["volume", "ls", "--filter", &filter, "--format", "{{.Name}}"]),
            ("network", vec!["network", "ls", "--filter", &filter, "--format", "{{.Name}}"]),
        ] {
            for name in docker(&args).lines().map(str::trim).filter(|l| !l.is_empty()) {
                if !out.iter().any(|(k, n, _)| *k == kind && n == name) {
                    out.push((kind, name.to_string(), labelled));
                }
            }
        }
    }
    // Images only by label: `orch ci --shell` starts from a copy of a step's container.
    let filter = format!("label=orch.run={run_id}");
    for id in docker(&["images", "--filter", &filter, "--format", "{{.ID}}"]).lines().filter(|l| !l.trim().is_empty()) {
        out.push(("image", id.trim().to_string(), true));
    }
    out
}

/// What a run left in Docker, as `kind name` lines.
pub fn leftovers(run_id: &str) -> Vec<String> {
    run_objects(run_id)
        .into_iter()
        .map(
            |(kind, name, labelled)| {
                if labelled { format!("{kind} {name}") } else { format!("{kind} {name} (without the orch.run label)") }
            },
        )
        .collect()
}

pub fn assert_no_leftovers(run_id: &str) {
    assert!(!run_id.is_empty(), "empty run id");
    let left = leftovers(run_id);
    if !left.is_empty() {
        remove_run(run_id);
        panic!("run {run_id} left behind:\n{}", left.join("\n"));
    }
}

/// Best-effort removal of what a run left (after a failed test).
pub fn remove_run(run_id: &str) {
    let objects = run_objects(run_id);
    for (kind, rm) in [
        ("container", &["rm", "-f", "-v"][..]),
        ("network", &["network", "rm"][..]),
        ("volume", &["volume", "rm", "-f"][..]),
        ("image", &["rmi", "-f"][..]),
    ] {
        let names: Vec<&str> = objects.iter().filter(|(k, ..)| *k == kind).map(|(_, n, _)| n.as_str()).collect();
        if !names.is_empty() {
            let _ = Command::new("docker").args(rm).args(&names).output();
        }
    }
}

/// Removes what is labelled with these runs when dropped (also when a test fails).
pub struct RemoveOnDrop(pub Vec<String>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for run in &self.0 {
            remove_run(run);
        }
    }
}

/// This machine's name, as orch puts it in the `orch.host` label.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Polls `f` until it returns `Some`, for at most `timeout`.
pub fn poll<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// A string unique to this test process and moment.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}
