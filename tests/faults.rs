//! Faults of the machine under a real `orch serve` (the binary) and `orch ci`: the Docker
//! daemon stopping and coming back mid-run, and the soak (`soak`), where deliveries arrive
//! at a steady rate while the server is killed (-9) and the daemon restarted at random
//! moments.
//!
//! These tests stop the host's Docker daemon, so they run only with
//! `ORCH_DAEMON_TESTS=1` besides `ORCH_DOCKER_TESTS=1` (scripts/test sets both), as root,
//! one at a time (a lock), in this test binary of their own: cargo runs test binaries one
//! after another, so no other test's containers are in the way.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod serve_support;

use serve_support::*;

mod soak;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The turn of a test that stops the Docker daemon (they run one at a time), or `None`
/// when they may not run here (noted on stderr): they need `ORCH_DOCKER_TESTS=1`,
/// `ORCH_DAEMON_TESTS=1` and root.
fn daemon_turn() -> Option<std::sync::MutexGuard<'static, ()>> {
    let on = docker_enabled() && std::env::var("ORCH_DAEMON_TESTS").is_ok_and(|v| v == "1");
    if !on {
        eprintln!(
            "skipped: tests that stop the Docker daemon run only with ORCH_DOCKER_TESTS=1 and ORCH_DAEMON_TESTS=1 \
             (scripts/test sets both)"
        );
        return None;
    }
    assert!(is_root(), "the tests that stop dockerd need root");
    Some(ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner()))
}

const PIDFILE: &str = "/var/run/docker.pid";

fn dockerd_pid() -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(PIDFILE).ok()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

fn systemd_docker() -> bool {
    Path::new("/run/systemd/system").exists()
        && Command::new("systemctl").args(["is-active", "--quiet", "docker"]).status().is_ok_and(|s| s.success())
}

/// The host's Docker daemon, stopped and started as an administrator would (SIGTERM, or
/// systemd where it runs dockerd). Started again when dropped, so a failing test does not
/// leave the machine without Docker.
#[derive(Default)]
pub struct Daemon {
    stopped: bool,
}

impl Daemon {
    /// Stops the daemon and returns once it is gone (it stops its containers first).
    pub fn stop(&mut self) {
        self.stopped = true;
        if systemd_docker() {
            let ok = Command::new("systemctl").args(["stop", "docker.socket", "docker"]).status();
            assert!(ok.is_ok_and(|s| s.success()), "systemctl stop docker failed");
            return;
        }
        let pid = dockerd_pid().expect("dockerd runs (its pid file)");
        let ok = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        assert!(ok.is_ok_and(|s| s.success()), "kill -TERM dockerd failed");
        wait_for(Duration::from_secs(90), "dockerd to stop", || {
            if Path::new(&format!("/proc/{pid}")).exists() { Err(format!("pid {pid}")) } else { Ok(()) }
        });
    }

    /// Starts the daemon the way `scripts/setup` does, and returns once it answers.
    pub fn start(&mut self) {
        let setup = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup");
        let out = Command::new(setup).arg("--images-only").stdin(Stdio::null()).output().expect("scripts/setup runs");
        assert!(
            out.status.success(),
            "scripts/setup could not start dockerd:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.stopped = false;
    }

    /// Stops and starts it.
    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.stopped {
            self.start();
        }
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

const SLOW: &str = "\
defaults:
  image: busybox:latest
  timeout: 5m
steps:
  wait:
    commands:
      - echo started
      - sleep 120
";

const QUICK: &str = "\
defaults:
  image: busybox:latest
steps:
  hello:
    commands:
      - echo hello
";

fn final_state(gh: &FakeGitHub, sha: &str, run: i64) -> String {
    let statuses = gh.wait_final_status(sha, "orch (push)", run);
    statuses.last().and_then(|s| s["state"].as_str()).unwrap_or_default().to_string()
}

/// The daemon stops while a step runs, under the server and under `orch ci`: each run ends
/// as `error` (the machine's fault, not the pipeline's) within a bounded time, saying so;
/// the server keeps taking deliveries while Docker is gone (their runs wait, queued); once
/// the daemon is back, what the runs left in it is removed without anyone asking, and the
/// waiting runs run.
#[test]
fn a_docker_daemon_that_stops_mid_run_gives_errors_and_leaves_nothing_once_back() {
    let Some(_turn) = daemon_turn() else { return };
    let mut daemon = Daemon::default();

    let git = GitServer::start();
    let slow = git.on_branch("main", &[(".orch.yml", SLOW)], "slow");
    let quick = git.on_branch("quick", &[(".orch.yml", QUICK)], "quick");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let (dir, data) = data_dir("orch-faults-daemon-");
    let mut server = OrchProcess::spawn(&data, &token_env(&gh, &git, &[]), &dir.path().join("orch.log"));

    // `orch ci` on the same slow pipeline, beside it.
    let local = dir.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join(".orch.yml"), SLOW).unwrap();
    let ci_out = std::fs::File::create(dir.path().join("ci.out")).unwrap();
    let mut ci = Command::new(env!("CARGO_BIN_EXE_orch"))
        .args(["ci", "--json"])
        .current_dir(&local)
        .stdin(Stdio::null())
        .stdout(ci_out.try_clone().unwrap())
        .stderr(ci_out)
        .spawn()
        .expect("orch ci starts");

    let id = server.deliver("push", &push_event("main", ZERO_SHA, &slow)).run_id();
    // The step's container runs (a step is "running" from before its container starts).
    let pid = server.pid();
    wait_for(Duration::from_secs(60), "the step's container to run", || {
        if running_step_containers(pid, "wait").is_empty() { Err(server.log_text()) } else { Ok(()) }
    });
    wait_for(Duration::from_secs(60), "orch ci's step to run", || {
        let out = std::fs::read_to_string(dir.path().join("ci.out")).unwrap_or_default();
        if out.contains("+ echo started") { Ok(()) } else { Err(out) }
    });

    let stopped = Instant::now();
    daemon.stop();
    // Both runs end as errors, in bounded time, and say why.
    let run = server.wait_run_done(id);
    assert_eq!(run["run"]["status"], "error", "{run:#}");
    let reason = run["run"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("Docker daemon went away"), "{run:#}");
    let code = wait_for(Duration::from_secs(60), "orch ci to exit", || match ci.try_wait() {
        Ok(Some(s)) => Ok(s.code()),
        _ => Err("still running".into()),
    });
    let ci_text = std::fs::read_to_string(dir.path().join("ci.out")).unwrap_or_default();
    assert_eq!(code, Some(3), "orch ci's exit code is the infrastructure one:\n{ci_text}");
    assert!(ci_text.contains("Docker daemon went away"), "{ci_text}");
    assert!(stopped.elapsed() < Duration::from_secs(120), "the runs took {:?} to end", stopped.elapsed());
    assert_eq!(final_state(&gh, &slow, id), "error");

    // Intake goes on without Docker: the delivery is stored, and its run waits queued
    // (it is not burnt as an error) while the server says Docker is not ready.
    let during = server.deliver("push", &push_event("quick", ZERO_SHA, &quick)).run_id();
    assert_eq!(server.get("/healthz").status, 200);
    assert_eq!(server.get("/readyz").status, 503);
    std::thread::sleep(Duration::from_secs(3));
    let run = server.run(during);
    assert_eq!(run["run"]["status"], "queued", "{run:#}");
    let waiting = || server.get("/metrics").text().lines().any(|l| l == "orch_waiting_for_docker 1");
    assert!(waiting(), "{}", server.get("/metrics").text());

    // The stopped daemon kept the killed step's container: the server removes it once the
    // daemon answers again, and the waiting run runs.
    daemon.start();
    let run = server.wait_run_done(during);
    assert_eq!(run["run"]["status"], "success", "{run:#}\n{}", server.log_text());
    assert_eq!(final_state(&gh, &quick, during), "success");
    assert!(!waiting());
    wait_for(Duration::from_secs(90), "the server to remove what its runs left", || {
        let left = server.leftovers();
        if left.is_empty() { Ok(()) } else { Err(format!("{left:?}")) }
    });
    let after = server.deliver("push", &push_event("quick", &quick, &quick)).run_id();
    let run = server.wait_run_done(after);
    assert_eq!(run["run"]["status"], "success", "{run:#}\n{}", server.log_text());
    assert_eq!(final_state(&gh, &quick, after), "success");
    // `orch ci`'s own leftovers (it exited while Docker was gone) go with `orch gc`.
    let gc = Command::new(env!("CARGO_BIN_EXE_orch")).args(["gc"]).current_dir(&local).output().unwrap();
    assert!(gc.status.success(), "{}", String::from_utf8_lossy(&gc.stderr));
    server.terminate();
    assert!(server.leftovers().is_empty(), "{:?}", server.leftovers());
    gh.assert_no_violations();
}

/// The short soak: a few hundred deliveries, a few kill -9s of the server and one restart
/// of the Docker daemon; nothing lost, nothing doubled, nothing left over. `bench/soak`
/// runs the long one.
/// An agent whose Docker stops takes no work (the run waits, queued, for an agent that can
/// run it), and takes it once the daemon is back.
#[test]
fn an_agent_takes_no_work_while_its_docker_does_not_answer() {
    let Some(_turn) = daemon_turn() else { return };
    let mut daemon = Daemon::default();
    let git = GitServer::start();
    let quick = git.on_branch("quick", &[(".orch.yml", QUICK)], "quick");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let (dir, data) = data_dir("orch-faults-agent-");
    let server = OrchProcess::spawn(
        &data,
        &token_env(&gh, &git, &[("ORCH_LOCAL_CAPACITY", "0".into())]),
        &dir.path().join("orch.log"),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_orch"))
        .args(["agent-token", "create", "a"])
        .env("ORCH_DATA_DIR", &data)
        .output()
        .unwrap();
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let log = dir.path().join("agent.log");
    let f = std::fs::File::create(&log).unwrap();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_orch"))
        .arg("agent")
        .env("ORCH_SERVER", format!("http://{}", server.addr))
        .env("ORCH_AGENT_TOKEN", &token)
        .env("ORCH_AGENT_DIR", dir.path().join("agent"))
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    // It works, then its daemon stops.
    let first = server.deliver("push", &push_event("quick", ZERO_SHA, &quick)).run_id();
    assert_eq!(server.wait_run_done(first)["run"]["status"], "success");
    daemon.stop();
    let during = server.deliver("push", &push_event("quick", &quick, &quick)).run_id();
    std::thread::sleep(Duration::from_secs(5));
    let run = server.run(during);
    assert_eq!((run["run"]["status"].as_str(), run["run"]["agent"].as_str()), (Some("queued"), None), "{run:#}");
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(said.contains("Docker does not answer"), "{said}");
    daemon.start();
    let run = server.wait_run_done(during);
    assert_eq!((run["run"]["status"].as_str(), run["run"]["agent"].as_str()), (Some("success"), Some("a")), "{run:#}");
    let _ = agent.kill();
    let _ = agent.wait();
}

#[test]
fn soak_short() {
    let Some(_turn) = daemon_turn() else { return };
    let report = soak::run(soak::Settings::from_env(soak::Settings {
        deliveries: 200,
        rate: 10.0,
        kills: 3,
        daemon_restarts: 1,
        concurrency: 4,
    }));
    report.check();
}

/// The long soak, for `bench/soak` (ignored in the ordinary suite).
#[test]
#[ignore]
fn soak_long() {
    let Some(_turn) = daemon_turn() else { return };
    let report = soak::run(soak::Settings::from_env(soak::Settings {
        deliveries: 10_000,
        rate: 10.0,
        kills: 20,
        daemon_restarts: 2,
        concurrency: 4,
    }));
    report.check();
}
