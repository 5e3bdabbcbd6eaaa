//! `orch ci --shell` through a real pseudo-terminal: orch runs with a pty as its standard
//! input and output, the test types into the pty's other end and reads what the screen
//! shows, as a person at a terminal would. Needs Docker (`ORCH_DOCKER_TESTS=1`) and the
//! local `busybox:latest` image.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::*;

/// A child process whose standard streams are a pseudo-terminal, and the screen it drew.
struct PtyRun {
    master: std::fs::File,
    child: Child,
    screen: Arc<Mutex<Vec<u8>>>,
}

impl PtyRun {
    fn spawn(mut cmd: std::process::Command) -> PtyRun {
        use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("openpt");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        let name = ptsname(&master, Vec::new()).expect("ptsname");
        let ws = rustix::termios::Winsize { ws_row: 30, ws_col: 100, ws_xpixel: 0, ws_ypixel: 0 };
        rustix::termios::tcsetwinsize(master.as_fd(), ws).expect("window size");
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(name.to_str().expect("pty name"))
            .expect("open the pty's terminal end");
        cmd.stdin(Stdio::from(slave.try_clone().expect("dup")))
            .stdout(Stdio::from(slave.try_clone().expect("dup")))
            .stderr(Stdio::from(slave));
        let child = cmd.spawn().expect("spawn orch");
        let master = std::fs::File::from(master);
        let screen = Arc::new(Mutex::new(Vec::new()));
        let (mut reader, shown) = (master.try_clone().expect("dup"), screen.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once every process holding the terminal end has exited.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                shown.lock().expect("screen").extend_from_slice(&buf[..n]);
            }
        });
        PtyRun { master, child, screen }
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().expect("screen")).into_owned()
    }

    /// Waits until the screen shows `text` (after `from` bytes), returning where it ends.
    fn wait_for(&mut self, text: &str, from: usize, limit: Duration) -> usize {
        let t0 = Instant::now();
        loop {
            let screen = self.screen();
            if let Some(i) = screen.get(from..).and_then(|s| s.find(text)) {
                return from + i + text.len();
            }
            if t0.elapsed() > limit || matches!(self.child.try_wait(), Ok(Some(_))) {
                let _ = self.child.kill();
                panic!("the screen never showed {text:?} (after byte {from}); it shows:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn type_line(&mut self, line: &str) {
        self.master.write_all(format!("{line}\r").as_bytes()).expect("type into the terminal");
    }

    fn finish(mut self, limit: Duration) -> (i32, String) {
        let t0 = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                return (status.code().unwrap_or(-1), self.screen());
            }
            if t0.elapsed() > limit {
                let _ = self.child.kill();
                panic!("orch did not end; the screen shows:\n{}", self.screen());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

const FAILING: &str = r#"
defaults:
  image: busybox:latest
steps:
  build:
    env: { GREETING: hello }
    secrets: [TOKEN]
    services:
      web:
        image: busybox:latest
        command: sh -c 'mkdir -p /srv && echo service-answers > /srv/index.html && exec httpd -f -p 8080 -h /srv'
        ready: { tcp: 8080 }
    commands:
      - echo from-build > made.txt
      - mkdir -p sub && cd sub
      - echo left-outside-the-workspace > /tmp/note.txt
      - exit 3
  after:
    needs: [build]
    commands:
      - echo never
"#;

#[test]
fn a_shell_opens_where_a_step_failed_with_its_files_environment_and_services() {
    require_docker!();
    let p = Project::new(FAILING);
    let mut cmd = p.ci(&["--shell"]);
    cmd.env("TOKEN", "s3cr3t-token-value").env_remove("CI");
    let mut run = PtyRun::spawn(cmd);
    let at = run.wait_for("opening a shell in step `build` where it failed", 0, Duration::from_secs(120));
    // busybox sh's prompt, in the step's working directory.
    let at = run.wait_for("/workspace # ", at, Duration::from_secs(30));
    run.type_line(
        "cat made.txt /tmp/note.txt; echo \"greeting=$GREETING token=$TOKEN\"; \
         wget -q -O - http://web:8080/index.html; exit 7",
    );
    let at = run.wait_for("the shell in step `build` ended (exit code 7)", at, Duration::from_secs(60));
    let (code, screen) = run.finish(Duration::from_secs(120));
    let shell_part = &screen[..at];
    for want in ["from-build", "left-outside-the-workspace", "greeting=hello token=***", "service-answers"] {
        assert!(shell_part.contains(want), "the shell did not show {want:?}; the screen:\n{screen}");
    }
    assert!(!screen.contains("s3cr3t-token-value"), "the secret showed unmasked:\n{screen}");
    // The run's result is the step's, not the shell's; what needed the step was skipped.
    assert_eq!(code, 1, "exit code; the screen:\n{screen}");
    assert!(!screen.contains("never"), "a step that needs the failed one ran:\n{screen}");
    let runs = p.run_dirs();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_no_leftovers(&runs[0]);
}

const TWO_STEPS: &str = r#"
defaults:
  image: busybox:latest
steps:
  build:
    commands:
      - echo from-build > made.txt
  check:
    needs: [build]
    commands:
      - cat shell-was-here.txt
"#;

#[test]
fn a_shell_before_a_step_sees_what_earlier_steps_wrote_and_the_step_sees_the_shell() {
    require_docker!();
    let p = Project::new(TWO_STEPS);
    let mut cmd = p.ci(&["--shell-before", "check"]);
    cmd.env_remove("CI");
    let mut run = PtyRun::spawn(cmd);
    let at = run.wait_for("opening a shell in step `check` before it runs", 0, Duration::from_secs(120));
    let at = run.wait_for("/workspace # ", at, Duration::from_secs(30));
    run.type_line("cat made.txt && echo typed-in-the-shell > shell-was-here.txt; exit");
    let at = run.wait_for("the shell in step `check` ended (exit code 0)", at, Duration::from_secs(60));
    let (code, screen) = run.finish(Duration::from_secs(120));
    assert!(screen[..at].contains("from-build"), "the shell did not see the workspace:\n{screen}");
    assert!(screen[at..].contains("typed-in-the-shell"), "the step did not see the shell's file:\n{screen}");
    assert_eq!(code, 0, "the screen:\n{screen}");
    let runs = p.run_dirs();
    assert_no_leftovers(&runs[0]);
}

#[test]
fn a_shell_without_a_terminal_is_refused_before_anything_runs() {
    // No Docker needed: the refusal comes first.
    let p = Project::new(TWO_STEPS);
    let out = p.ci(&["--shell"]).stdin(Stdio::null()).output().expect("run orch");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--shell") && stderr.contains("needs a terminal"), "{stderr}");
    assert!(p.run_dirs().is_empty(), "a run started: {:?}", p.run_dirs());
}
