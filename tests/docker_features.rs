//! Docker integration tests of the step features around the container: services (private
//! network, names, readiness), caches (restore, save, scopes, concurrent saves, eviction),
//! artifacts (collection, patterns, links) and matrices. Like `tests/docker.rs`, `orch ci`
//! runs as a process on throwaway projects and the tests check exit codes, the `--json`
//! events, the files, and that nothing of the run is left in Docker.
//!
//! They only run with `ORCH_DOCKER_TESTS=1` (scripts/test sets it). They need the local
//! `busybox:latest` image and never pull anything. Every test has its own project and its
//! own cache store (`--cache-dir` in a temp dir: `~/.cache/orch` is never touched), so they
//! run in parallel with each other.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

mod common;

use common::*;

/// A cache store of the test's own.
struct Store {
    dir: tempfile::TempDir,
}

impl Store {
    fn new() -> Self {
        Store { dir: tempfile::Builder::new().prefix("orch-cache-test-").tempdir().expect("temp dir") }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `orch cache ARGS... --cache-dir DIR`, which must exit 0; its stdout.
    fn cache_cmd(&self, args: &[&str]) -> String {
        let out = Command::new(ORCH)
            .arg("cache")
            .args(args)
            .arg("--cache-dir")
            .arg(self.path())
            .env_remove("ORCH_CACHE_DIR")
            .output()
            .expect("run orch cache");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "orch cache {} failed: {text}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// `(scope, key)` of every entry, as `orch cache ls` lists them (most recently used first).
    fn ls(&self) -> Vec<(String, String)> {
        let text = self.cache_cmd(&["ls"]);
        text.lines()
            .filter(|l| l.contains("last used"))
            .map(|l| {
                let mut w = l.split_whitespace();
                (w.next().unwrap_or("").to_string(), w.next().unwrap_or("").to_string())
            })
            .collect()
    }

    /// Temp entries left in the store (an interrupted or lost save).
    fn temp_entries(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.path().join("tmp")) {
            Ok(rd) => rd.map(|e| e.expect("dir entry").path()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// `orch ci --json --cache-dir STORE ARGS...` on the project, not started.
fn ci_cmd(p: &Project, store: &Store, args: &[&str]) -> Command {
    let dir = store.path().display().to_string();
    let mut all = vec!["--json", "--cache-dir", dir.as_str()];
    all.extend_from_slice(args);
    let mut cmd = p.ci(&all);
    cmd.env_remove("ORCH_CACHE_DIR").env_remove("ORCH_CACHE_MAX");
    cmd
}

/// Runs `orch ci --json --cache-dir STORE ARGS...` to its end.
fn ci(p: &Project, store: &Store, args: &[&str]) -> Run {
    Running::spawn(ci_cmd(p, store, args)).finish(RUN_LIMIT)
}

/// Asserts that the step printed this exact line.
fn assert_line(run: &Run, step: &str, want: &str) {
    let lines = run.log_lines(step);
    assert!(
        lines.iter().any(|l| l == want),
        "`{step}` did not print {want:?}; it printed {lines:?}\n{}",
        run.describe()
    );
}

/// Asserts that the step did not print this exact line.
fn assert_no_line(run: &Run, step: &str, line: &str) {
    let lines = run.log_lines(step);
    assert!(!lines.iter().any(|l| l == line), "`{step}` printed {line:?}: {lines:?}\n{}", run.describe());
}

/// The one `cache_restored` event of a step's cache `key`.
fn restored<'a>(run: &'a Run, step: &str, key: &str) -> &'a Value {
    let all: Vec<&Value> = run.step_events("cache_restored", step).into_iter().filter(|e| e["key"] == key).collect();
    assert_eq!(all.len(), 1, "expected one cache_restored of `{key}` for `{step}`\n{}", run.describe());
    all[0]
}

/// `(hit, fallback)` of a step's cache lookup.
fn lookup(run: &Run, step: &str, key: &str) -> (bool, bool) {
    let e = restored(run, step, key);
    (e["hit"].as_bool().expect("hit"), e["fallback"].as_bool().expect("fallback"))
}

/// The keys a step saved (`cache_saved` events).
fn saved(run: &Run, step: &str) -> Vec<String> {
    run.step_events("cache_saved", step).iter().map(|e| e["key"].as_str().unwrap_or("").to_string()).collect()
}

/// The `run_message` texts of a level.
fn messages(run: &Run, level: &str) -> Vec<String> {
    run.events_of("run_message")
        .filter(|e| e["level"] == level)
        .map(|e| e["message"].as_str().unwrap_or("").to_string())
        .collect()
}

/// `path -> size` of an `artifacts` list (of an event or a step summary).
fn artifact_list(v: &Value) -> BTreeMap<String, u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list of artifacts: {v}"))
        .iter()
        .map(|f| (f["path"].as_str().expect("path").to_string(), f["size"].as_u64().expect("size")))
        .collect()
}

/// Every file (and link) under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd {
            let e = e.expect("dir entry");
            let path = e.path();
            if e.file_type().expect("file type").is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).expect("under root").display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------
// Services

/// A step that fetches a page from a busybox `httpd` service named `web`, whose page is
/// written from the service's environment, after a 3 s delay: the step's single `wget` (no
/// retry) only works if orch waited for the service as `ready` says, and its 2 s `timeout`
/// only holds if the wait does not count against it.
fn web_service_pipeline(ready: &str) -> String {
    format!(
        r#"
env:
  PIPE_VAR: from-the-pipeline
steps:
  client:
    image: busybox:latest
    timeout: 2s
    services:
      web:
        image: busybox:latest
        env: {{ GREETING: hello-from-the-web-service }}
        command: sleep 3; mkdir -p /www && echo "$GREETING pipe=${{PIPE_VAR:-unset}} run=${{ORCH_RUN_ID:-unset}}" > /www/index.html && exec httpd -f -p 8080 -h /www
        ready: {ready}
    commands:
      - echo "step sees GREETING=${{GREETING:-unset}}"
      - timeout 10 wget -q -O page.html http://web:8080/index.html
      - echo "page=$(cat page.html)"
"#
    )
}

fn check_web_service_run(p: &Project, store: &Store) {
    let run = ci(p, store, &[]);
    run.assert_code(0);
    let d = run.describe();
    assert_eq!(run.status("client"), "passed", "{d}");
    // The service got its own env only (not the pipeline's, not the built-ins); the step
    // does not get the service's.
    assert_line(&run, "client", "page=hello-from-the-web-service pipe=unset run=unset");
    assert_line(&run, "client", "step sees GREETING=unset");
    assert_no_leftovers(&run.run_id());
}

#[test]
fn service_reachable_by_name_when_its_tcp_port_is_ready() {
    require_docker!();
    let p = Project::new(&web_service_pipeline("{ tcp: 8080, timeout: 30s }"));
    check_web_service_run(&p, &Store::new());
}

#[test]
fn service_reachable_by_name_when_its_ready_command_passes() {
    require_docker!();
    let p = Project::new(&web_service_pipeline(
        "{ command: 'timeout 2 wget -q -O /dev/null http://127.0.0.1:8080/index.html', timeout: 30s }",
    ));
    check_web_service_run(&p, &Store::new());
}

#[test]
fn service_never_ready_is_an_error_with_its_last_output() {
    require_docker!();
    let p = Project::new(
        r#"
steps:
  client:
    image: busybox:latest
    services:
      web:
        image: busybox:latest
        command: for i in $(seq 10 39); do echo "web-marker line $i"; done; echo "web-marker listening on 8080"; exec httpd -f -p 8080 -h /
        ready: { tcp: 9999, timeout: 2s }
    retry: 2
    commands: [echo client-ran]
"#,
    );
    let run = ci(&p, &Store::new(), &[]);
    run.assert_code(3);
    let d = run.describe();
    assert_eq!(run.run_status(), "error", "{d}");
    assert_eq!(run.status("client"), "error", "{d}");
    assert!(run.step("client")["exit_code"].is_null(), "{d}");
    // An error is not retried, whatever `retry` says.
    assert_eq!(run.step("client")["attempts"], 1, "{d}");
    assert!(run.step_events("step_retrying", "client").is_empty(), "{d}");
    let msg = run.message("client");
    assert!(msg.contains("service `web` was not ready after 2s"), "message: {msg}\n{d}");
    assert!(msg.contains("web-marker listening on 8080"), "no last output in the message: {msg}\n{d}");
    // Its last 20 lines: the 19 last markers and the last line.
    assert!(msg.contains("web-marker line 39") && msg.contains("web-marker line 21"), "message: {msg}\n{d}");
    assert!(!msg.contains("web-marker line 20"), "more than 20 lines of output: {msg}\n{d}");
    // The step's command never ran.
    assert_no_line(&run, "client", "client-ran");
    // It waited about the timeout, not much more.
    assert!(run.elapsed < Duration::from_secs(30), "took {:?}\n{d}", run.elapsed);
    assert_no_leftovers(&run.run_id());
}

#[test]
fn service_that_exits_is_an_error_at_once() {
    require_docker!();
    let p = Project::new(
        r#"
steps:
  client:
    image: busybox:latest
    services:
      db:
        image: busybox:latest
        command: 'echo "db-marker: bad configuration" >&2; exit 4'
        ready: { tcp: 5432, timeout: 60s }
    commands: [echo client-ran]
"#,
    );
    let run = ci(&p, &Store::new(), &[]);
    run.assert_code(3);
    let d = run.describe();
    assert_eq!(run.status("client"), "error", "{d}");
    let msg = run.message("client");
    assert!(msg.contains("service `db` exited with code 4 before it was ready"), "message: {msg}\n{d}");
    assert!(msg.contains("db-marker: bad configuration"), "no last output in the message: {msg}\n{d}");
    assert_no_line(&run, "client", "client-ran");
    // Well before the 60 s ready timeout.
    assert!(run.elapsed < Duration::from_secs(20), "took {:?} to notice the service exited\n{d}", run.elapsed);
    assert_no_leftovers(&run.run_id());
}

#[test]
fn services_reach_each_other_by_name() {
    require_docker!();
    let p = Project::new(
        r#"
steps:
  client:
    image: busybox:latest
    services:
      web:
        image: busybox:latest
        command: mkdir -p /www && echo origin-page > /www/index.html && exec httpd -f -p 8080 -h /www
        ready: { tcp: 8080, timeout: 30s }
      relay:
        image: busybox:latest
        command: mkdir -p /www; until timeout 2 wget -q -O /www/index.html http://web:8080/index.html; do sleep 0.2; done; exec httpd -f -p 9090 -h /www
        ready: { tcp: 9090, timeout: 30s }
    commands:
      - echo "relayed=$(timeout 10 wget -q -O - http://relay:9090/index.html)"
"#,
    );
    let run = ci(&p, &Store::new(), &[]);
    run.assert_code(0);
    assert_line(&run, "client", "relayed=origin-page");
    assert_no_leftovers(&run.run_id());
}

#[test]
fn a_retried_step_gets_fresh_services_and_leaves_none() {
    require_docker!();
    let p = Project::new(
        r#"
steps:
  client:
    image: busybox:latest
    retry: 1
    services:
      web:
        image: busybox:latest
        command: mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www
        ready: { tcp: 8080, timeout: 30s }
    commands:
      - timeout 10 wget -q -O - http://web:8080/index.html >> served-by.txt
      - echo "served by $(cat served-by.txt | tr '\n' ' ')"
      - test "$(wc -l < served-by.txt)" -ge 2
"#,
    );
    let run = ci(&p, &Store::new(), &[]);
    run.assert_code(0);
    let d = run.describe();
    assert_eq!(run.step("client")["attempts"], 2, "{d}");
    // The second attempt talked to another container than the first.
    let line = run.log_lines("client").into_iter().rfind(|l| l.starts_with("served by ")).expect("served by");
    let hosts: Vec<&str> = line["served by ".len()..].split_whitespace().collect();
    assert_eq!(hosts.len(), 2, "{d}");
    assert_ne!(hosts[0], hosts[1], "the retry reused the service\n{d}");
    assert_no_leftovers(&run.run_id());
}

#[test]
fn interrupt_while_waiting_for_a_service_cancels_and_cleans_up() {
    require_docker!();
    let p = Project::new(
        r#"
steps:
  client:
    image: busybox:latest
    services:
      web:
        image: busybox:latest
        command: exec httpd -f -p 8080 -h /
        ready: { tcp: 9999, timeout: 60s }
    commands: [echo client-ran]
"#,
    );
    let store = Store::new();
    let mut orch = Running::spawn(ci_cmd(&p, &store, &["--grace", "2"]));
    orch.wait_event("step_started", Duration::from_secs(60), |e| e["event"] == "step_started");
    let id = orch.run_id().to_string();
    // Once the service's container runs, orch is in its readiness loop.
    let filter = format!("label=orch.run={id}");
    poll("the service's container to run", Duration::from_secs(30), || {
        let names = docker(&["ps", "--filter", &filter, "--format", "{{.Names}}"]);
        names.lines().any(|n| n.ends_with("-web")).then_some(())
    });
    let sent = std::time::Instant::now();
    orch.signal("INT");
    let run = orch.finish(Duration::from_secs(90));
    let took = sent.elapsed();
    run.assert_code(130);
    assert!(took < Duration::from_secs(15), "orch took {took:?} to stop waiting for the service\n{}", run.describe());
    assert_eq!(run.status("client"), "cancelled", "{}", run.describe());
    assert_no_line(&run, "client", "client-ran");
    assert_no_leftovers(&id);
}

#[test]
fn matrix_variants_each_reach_their_own_service() {
    require_docker!();
    let p = Project::new(
        r#"
steps:
  probe:
    image: busybox:latest
    matrix:
      a: [x, y]
      b: ["1", "2"]
    services:
      web:
        image: busybox:latest
        env: { VALUE: "${a}-${b}" }
        command: mkdir -p /www && echo "$VALUE" > /www/index.html && exec httpd -f -p 8080 -h /www
        ready: { tcp: 8080, timeout: 30s }
    commands:
      - timeout 10 wget -q -O "page-$a-$b.html" http://web:8080/index.html
      - echo "page=$(cat "page-$a-$b.html") want=$a-$b"
      - test "$(cat "page-$a-$b.html")" = "$a-$b"
"#,
    );
    let run = ci(&p, &Store::new(), &[]);
    run.assert_code(0);
    for (a, b) in [("x", "1"), ("x", "2"), ("y", "1"), ("y", "2")] {
        let name = format!("probe[a={a},b={b}]");
        assert_eq!(run.status(&name), "passed", "{}", run.describe());
        assert_line(&run, &name, &format!("page={a}-{b} want={a}-{b}"));
    }
    assert_no_leftovers(&run.run_id());
}

// ---------------------------------------------------------------------------------------
// Caches

/// A step whose "expensive work" (filling `vendor/` and `~/.local/share/toolcache`) is done
/// only on a miss; it reports the mode and owner of `/root` (700 root in busybox), the modes
/// of the restored paths and of their parents, and its links.
const CACHED_STEP: &str = r#"
steps:
  build:
    image: busybox:latest
    cache:
      key: deps-${hash:deps.lock}
      paths: [vendor/, ~/.local/share/toolcache]
    commands:
      - |
        if [ -f vendor/deps.txt ] && [ -f ~/.local/share/toolcache/tool.sh ]; then
          echo "hit: $(cat vendor/deps.txt) $(~/.local/share/toolcache/tool.sh)"
        else
          echo miss
          mkdir -p vendor ~/.local/share/toolcache
          echo "built-from-$(cat deps.lock)" > vendor/deps.txt
          ln -s deps.txt vendor/current
          printf '#!/bin/sh\necho tool-ok\n' > ~/.local/share/toolcache/tool.sh
          chmod 750 ~/.local/share/toolcache/tool.sh
          ln ~/.local/share/toolcache/tool.sh ~/.local/share/toolcache/tool-again.sh
        fi
      - echo "root $(stat -c '%a %u:%g' /root)"
      - echo "local $(stat -c '%a' ~/.local ~/.local/share | tr '\n' ' ')"
      - echo "tool $(stat -c '%a' ~/.local/share/toolcache/tool.sh)"
      - echo "links $(readlink vendor/current) $(stat -c '%h' ~/.local/share/toolcache/tool-again.sh)"
"#;

#[test]
fn cache_misses_saves_then_restores_and_a_changed_hash_misses() {
    require_docker!();
    let store = Store::new();
    let p = Project::new(CACHED_STEP).with("deps.lock", "v1\n");

    // 1: a miss; the step does the work, the cache is saved.
    let first = ci(&p, &store, &[]);
    first.assert_code(0);
    let restores = first.step_events("cache_restored", "build");
    assert_eq!(restores.len(), 1, "{}", first.describe());
    let key = restores[0]["key"].as_str().expect("key").to_string();
    assert!(key.starts_with("deps-") && key.len() == "deps-".len() + 16, "key {key}");
    assert_eq!(lookup(&first, "build", &key), (false, false));
    assert_eq!(restores[0]["size"], 0);
    assert_line(&first, "build", "miss");
    assert_line(&first, "build", "root 700 0:0");
    assert_eq!(saved(&first, "build"), [key.as_str()], "{}", first.describe());
    let saved_size = first.step_events("cache_saved", "build")[0]["size"].as_u64().expect("size");
    assert!(saved_size > 0);
    assert_eq!(store.ls(), [("detached".to_string(), key.clone())]);
    assert_no_leftovers(&first.run_id());

    // 2: the key is unchanged: a hit; the step finds the files (in and out of the workspace)
    // and skips the work; the entry is not saved again.
    let second = ci(&p, &store, &[]);
    second.assert_code(0);
    assert_eq!(lookup(&second, "build", &key), (true, false));
    assert_eq!(restored(&second, "build", &key)["size"].as_u64(), Some(saved_size));
    assert_line(&second, "build", "hit: built-from-v1 tool-ok");
    assert_no_line(&second, "build", "miss");
    // Restoring into /root did not change it; the restored file kept its mode.
    assert_line(&second, "build", "root 700 0:0");
    assert_line(&second, "build", "tool 750");
    // Parents the image does not have are created, mode 755.
    assert_line(&second, "build", "local 755 755 ");
    // A symbolic link is restored as a link, hard links as links.
    assert_line(&second, "build", "links deps.txt 2");
    assert!(saved(&second, "build").is_empty(), "saved an existing key again\n{}", second.describe());
    assert_eq!(store.ls().len(), 1);
    assert_no_leftovers(&second.run_id());

    // 3: the file behind `${hash:deps.lock}` changed: a new key, a miss, a second entry.
    p.write("deps.lock", "v2\n");
    let third = ci(&p, &store, &[]);
    third.assert_code(0);
    let key3 = third.step_events("cache_restored", "build")[0]["key"].as_str().expect("key").to_string();
    assert_ne!(key3, key);
    assert_eq!(lookup(&third, "build", &key3), (false, false));
    assert_line(&third, "build", "miss");
    assert_eq!(saved(&third, "build"), [key3.as_str()]);
    let mut keys: Vec<String> = store.ls().into_iter().map(|(_, k)| k).collect();
    keys.sort();
    let mut want = vec![key, key3];
    want.sort();
    assert_eq!(keys, want);
    assert!(store.temp_entries().is_empty(), "temp entries left: {:?}", store.temp_entries());
    assert_no_leftovers(&third.run_id());

    // 4: `--no-cache`: no lookup, no save, the store is as it was.
    let before = store.ls();
    let fourth = ci(&p, &store, &["--no-cache"]);
    fourth.assert_code(0);
    assert_line(&fourth, "build", "miss");
    assert!(fourth.events_of("cache_restored").next().is_none(), "{}", fourth.describe());
    assert!(fourth.events_of("cache_saved").next().is_none(), "{}", fourth.describe());
    assert_eq!(store.ls().len(), before.len());
    assert_no_leftovers(&fourth.run_id());
}

#[test]
fn cache_is_restored_into_every_attempt() {
    require_docker!();
    let store = Store::new();
    let p = Project::new(
        r#"
steps:
  flaky:
    image: busybox:latest
    retry: 1
    cache:
      key: tools-v1
      paths: [~/.tools]
    commands:
      - if [ -f ~/.tools/t ]; then echo "hit $(cat ~/.tools/t)"; else echo miss; mkdir -p ~/.tools; echo v1 > ~/.tools/t; fi
      - if [ -n "$BREAK" ] && [ ! -f first-attempt-done ]; then touch first-attempt-done; rm -r ~/.tools; exit 3; fi
"#,
    );
    let first = ci(&p, &store, &[]);
    first.assert_code(0);
    assert_eq!(saved(&first, "flaky"), ["tools-v1"]);
    assert_no_leftovers(&first.run_id());

    // The first attempt removes the restored directory and fails; the second attempt (a new
    // container) gets it again.
    let second = ci(&p, &store, &["--env", "BREAK=1"]);
    second.assert_code(0);
    let d = second.describe();
    assert_eq!(second.step("flaky")["attempts"], 2, "{d}");
    assert_eq!(lookup(&second, "flaky", "tools-v1"), (true, false));
    let hits = second.log_lines("flaky").iter().filter(|l| *l == "hit v1").count();
    assert_eq!(hits, 2, "not restored into both attempts\n{d}");
    assert_no_line(&second, "flaky", "miss");
    assert_no_leftovers(&second.run_id());
}

#[test]
fn cache_dir_flag_overrides_orch_cache_dir() {
    require_docker!();
    let (env_store, flag_store) = (Store::new(), Store::new());
    let p = Project::new(
        "steps:\n  s:\n    image: busybox:latest\n    cache: {key: k-v1, paths: [out/]}\n    commands: [mkdir -p out, echo x > out/x]\n",
    );
    let run_env = |args: &[&str]| {
        let mut cmd = p.ci(&[&["--json"], args].concat());
        cmd.env("ORCH_CACHE_DIR", env_store.path()).env_remove("ORCH_CACHE_MAX");
        let run = Running::spawn(cmd).finish(RUN_LIMIT);
        run.assert_code(0);
        assert_no_leftovers(&run.run_id());
        run
    };
    let by_env = run_env(&[]);
    assert_eq!(saved(&by_env, "s"), ["k-v1"]);
    assert_eq!(env_store.ls(), [("detached".to_string(), "k-v1".to_string())]);
    let flag = flag_store.path().display().to_string();
    let by_flag = run_env(&["--cache-dir", &flag]);
    assert_eq!(lookup(&by_flag, "s", "k-v1"), (false, false), "{}", by_flag.describe());
    assert_eq!(saved(&by_flag, "s"), ["k-v1"]);
    assert_eq!(flag_store.ls().len(), 1);
    assert_eq!(env_store.ls().len(), 1);
}

#[test]
fn cache_key_hashing_no_file_is_a_step_error() {
    require_docker!();
    let p = Project::new(
        "steps:\n  s:\n    image: busybox:latest\n    cache: {key: 'x-${hash:nope.lock}', paths: [out/]}\n    commands: [echo s-ran]\n",
    );
    let run = ci(&p, &Store::new(), &[]);
    run.assert_code(3);
    let d = run.describe();
    assert_eq!(run.status("s"), "error", "{d}");
    assert_eq!(run.step("s")["attempts"], 0, "{d}");
    let msg = run.message("s");
    assert!(msg.contains("nope.lock") && msg.contains("no file in the work tree matches it"), "{msg}\n{d}");
    assert_no_line(&run, "s", "s-ran");
    assert_no_leftovers(&run.run_id());
}

/// The content the concurrency test's step writes: ~8 MB, known in advance.
fn big_content() -> Vec<u8> {
    (1..=1_100_000).flat_map(|i: u32| format!("{i}\n").into_bytes()).collect()
}

/// On a miss, writes `big/data.txt` and then waits until the epoch second `$END`, so that
/// two runs started together end (and save) together.
const BIG_CACHE: &str = r#"
steps:
  fill:
    image: busybox:latest
    cache:
      key: big-v1
      paths: [big/]
    commands:
      - |
        if [ -f big/data.txt ]; then
          echo "hit sha=$(sha256sum big/data.txt | cut -d' ' -f1)"
        else
          echo miss
          mkdir -p big
          seq 1 1100000 > big/data.txt
          while [ "$(date +%s)" -lt "$END" ]; do sleep 0.02; done
        fi
"#;

#[test]
fn concurrent_runs_saving_one_key_leave_one_whole_entry() {
    require_docker!();
    let store = Store::new();
    let want = sha256_hex(&big_content());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let end = format!("END={}", now + 5);
    let (a, b) = (Project::new(BIG_CACHE), Project::new(BIG_CACHE));
    let ra = Running::spawn(ci_cmd(&a, &store, &["--env", &end]));
    let rb = Running::spawn(ci_cmd(&b, &store, &["--env", &end]));
    let (ra, rb) = (ra.finish(RUN_LIMIT), rb.finish(RUN_LIMIT));
    let mut saves = 0;
    for run in [&ra, &rb] {
        run.assert_code(0);
        // Both looked up before either saved: both missed.
        assert_eq!(lookup(run, "fill", "big-v1"), (false, false), "{}", run.describe());
        assert_line(run, "fill", "miss");
        let keys = saved(run, "fill");
        assert!(keys.is_empty() || keys == ["big-v1"], "{}", run.describe());
        saves += keys.len();
        assert_no_leftovers(&run.run_id());
    }
    // Both saved at once (each wrote a whole entry, the first rename won), or the second
    // found the first's entry before it started writing: in either case one entry.
    assert!(saves >= 1, "nothing saved\n{}\n{}", ra.describe(), rb.describe());
    if saves == 1 {
        eprintln!("note: the two saves did not overlap this time");
    }
    assert_eq!(store.ls(), [("detached".to_string(), "big-v1".to_string())]);
    assert!(store.temp_entries().is_empty(), "temp entries left: {:?}", store.temp_entries());

    // A third run restores it, whole.
    let c = ci(&Project::new(BIG_CACHE), &store, &["--env", "END=0"]);
    c.assert_code(0);
    assert_eq!(lookup(&c, "fill", "big-v1"), (true, false));
    assert_line(&c, "fill", &format!("hit sha={want}"));
    assert_no_leftovers(&c.run_id());
}

/// A step that saves ~120 KiB under `key`.
fn blob_pipeline(key: &str) -> String {
    format!(
        r#"
steps:
  blob:
    image: busybox:latest
    cache:
      key: {key}
      paths: [blob/]
    commands:
      - if [ -f blob/data.bin ]; then echo hit; else echo miss; mkdir -p blob; head -c 122880 /dev/urandom > blob/data.bin; fi
"#
    )
}

#[test]
fn cache_size_limit_evicts_the_least_recently_used_entry() {
    require_docker!();
    let store = Store::new();
    let p = Project::new(&blob_pipeline("blob-k1"));
    let run_with_limit = |key: &str, max: &str| {
        // `used` times have a resolution of a second.
        std::thread::sleep(Duration::from_millis(1100));
        p.write(".orch.yml", &blob_pipeline(key));
        let mut cmd = ci_cmd(&p, &store, &[]);
        cmd.env("ORCH_CACHE_MAX", max);
        let run = Running::spawn(cmd).finish(RUN_LIMIT);
        run.assert_code(0);
        assert_no_leftovers(&run.run_id());
        run
    };
    let run_with_key = |key: &str| run_with_limit(key, "300K");
    let keys = |store: &Store| store.ls().into_iter().map(|(_, k)| k).collect::<Vec<_>>();

    // Two entries fit in 300K.
    let r1 = run_with_key("blob-k1");
    assert_line(&r1, "blob", "miss");
    let size = r1.step_events("cache_saved", "blob")[0]["size"].as_u64().expect("size");
    assert!((120 * 1024..150 * 1024).contains(&size), "entry size {size}");
    run_with_key("blob-k2");
    assert_eq!(keys(&store), ["blob-k2", "blob-k1"]);
    // k1 is used again: k2 becomes the least recently used.
    let r3 = run_with_key("blob-k1");
    assert_eq!(lookup(&r3, "blob", "blob-k1"), (true, false));
    assert_line(&r3, "blob", "hit");
    assert_eq!(keys(&store), ["blob-k1", "blob-k2"]);
    // A third entry does not fit: k2 goes, the one just saved and k1 stay.
    let r4 = run_with_key("blob-k3");
    assert_eq!(saved(&r4, "blob"), ["blob-k3"]);
    assert_eq!(keys(&store), ["blob-k3", "blob-k1"]);

    // `orch cache clear PREFIX` removes the keys that start with it.
    let out = store.cache_cmd(&["clear", "blob-k1"]);
    assert!(out.contains("removed 1 cache entry"), "{out}");
    assert_eq!(keys(&store), ["blob-k3"]);
    run_with_key("blob-k2");
    assert_eq!(keys(&store), ["blob-k2", "blob-k3"]);

    // An entry over the limit on its own is kept, and every other entry goes.
    let big = run_with_limit("blob-k4", "100K");
    assert_eq!(saved(&big, "blob"), ["blob-k4"]);
    assert_eq!(keys(&store), ["blob-k4"]);
    run_with_key("blob-k1");
    assert_eq!(keys(&store), ["blob-k1", "blob-k4"]);

    // `orch cache clear` empties the store.
    let out = store.cache_cmd(&["clear"]);
    assert!(out.contains("removed 2 cache entries"), "{out}");
    assert!(store.ls().is_empty());
    assert!(store.cache_cmd(&["ls"]).contains("no caches in"));
}

const SCOPED: &str = r#"
steps:
  deps:
    image: busybox:latest
    cache:
      - key: shared-v1
        paths: [shared/]
      - key: pr-made-v1
        paths: [prmade/]
    commands:
      - if [ -f shared/origin.txt ]; then echo "shared hit $(cat shared/origin.txt)"; else echo "shared miss"; fi
      - if [ -f prmade/origin.txt ]; then echo "prmade hit $(cat prmade/origin.txt)"; else echo "prmade miss"; fi
      - mkdir -p shared && echo "$ORIGIN" > shared/origin.txt
      - if [ "$ORIGIN" != main ]; then mkdir -p prmade && echo "$ORIGIN" > prmade/origin.txt; fi
"#;

#[test]
fn pull_request_reads_main_caches_but_main_never_sees_its_own() {
    require_docker!();
    let store = Store::new();
    let p = Project::new(SCOPED);
    let push_main = ["--event", "push", "--branch", "main", "--env", "ORIGIN=main"];
    let pr7 = [
        "--event",
        "pull_request",
        "--pr",
        "7",
        "--base-branch",
        "main",
        "--branch",
        "feature/x",
        "--env",
        "ORIGIN=pr7",
    ];

    // A push on main saves `shared-v1` in main's scope (`prmade/` does not exist: a warning).
    let main1 = ci(&p, &store, &push_main);
    main1.assert_code(0);
    assert_eq!(lookup(&main1, "deps", "shared-v1"), (false, false));
    assert_eq!(saved(&main1, "deps"), ["shared-v1"]);
    assert!(messages(&main1, "warning").iter().any(|m| m.contains("`pr-made-v1` not saved")), "{}", main1.describe());
    assert_no_leftovers(&main1.run_id());

    // The pull request restores main's entry (a fallback), and saves its own copies in its scope.
    let pr = ci(&p, &store, &pr7);
    pr.assert_code(0);
    assert_eq!(lookup(&pr, "deps", "shared-v1"), (true, true));
    assert_eq!(lookup(&pr, "deps", "pr-made-v1"), (false, false));
    assert_line(&pr, "deps", "shared hit main");
    let mut pr_saved = saved(&pr, "deps");
    pr_saved.sort();
    assert_eq!(pr_saved, ["pr-made-v1", "shared-v1"], "{}", pr.describe());
    assert_no_leftovers(&pr.run_id());
    let mut entries = store.ls();
    entries.sort();
    let entry = |s: &str, k: &str| (s.to_string(), k.to_string());
    assert_eq!(entries, [entry("branch:main", "shared-v1"), entry("pr:7", "pr-made-v1"), entry("pr:7", "shared-v1")]);

    // A later push on main sees neither what the PR saved nor its version of `shared-v1`.
    let main2 = ci(&p, &store, &push_main);
    main2.assert_code(0);
    assert_eq!(lookup(&main2, "deps", "shared-v1"), (true, false));
    assert_eq!(lookup(&main2, "deps", "pr-made-v1"), (false, false));
    assert_line(&main2, "deps", "shared hit main");
    assert_line(&main2, "deps", "prmade miss");
    assert!(saved(&main2, "deps").is_empty(), "{}", main2.describe());
    assert_no_leftovers(&main2.run_id());

    // The PR's next run finds its own entries first.
    let pr_again = ci(&p, &store, &pr7);
    pr_again.assert_code(0);
    assert_eq!(lookup(&pr_again, "deps", "shared-v1"), (true, false));
    assert_eq!(lookup(&pr_again, "deps", "pr-made-v1"), (true, false));
    assert_line(&pr_again, "deps", "shared hit pr7");
    assert_line(&pr_again, "deps", "prmade hit pr7");
    assert!(saved(&pr_again, "deps").is_empty(), "{}", pr_again.describe());
    assert_eq!(store.ls().len(), 3);
    assert_no_leftovers(&pr_again.run_id());
}

// ---------------------------------------------------------------------------------------
// Artifacts

#[test]
fn artifacts_are_kept_and_listed_and_the_next_step_reads_them() {
    require_docker!();
    let p = Project::new(
        r#"
defaults:
  image: busybox:latest
steps:
  build:
    artifacts: [dist/app.bin, "reports/**/*.xml", docs/]
    commands:
      - mkdir -p dist reports/unit/deep docs/api
      - echo app-v1 > dist/app.bin
      - echo not-kept > dist/other.txt
      - echo '<top/>' > reports/top.xml
      - echo '<unit/>' > reports/unit/u.xml
      - echo '<deep/>' > reports/unit/deep/d.xml
      - echo not-kept > reports/unit/notes.txt
      - echo '<h1>docs</h1>' > docs/index.html
      - echo ref > docs/api/ref.html
  test:
    needs: [build]
    commands:
      - test "$(cat dist/app.bin)" = app-v1
      - echo "test read $(cat dist/app.bin)"
"#,
    );
    let run = ci(&p, &Store::new(), &[]);
    run.assert_code(0);
    let d = run.describe();
    assert_eq!(run.status("build"), "passed", "{d}");
    assert_eq!(run.status("test"), "passed", "{d}");
    assert_line(&run, "test", "test read app-v1");

    let id = run.run_id();
    let dir = p.path().join(format!(".orch/runs/{id}/artifacts/build"));
    let want: BTreeMap<String, u64> = [
        ("dist/app.bin", "app-v1\n"),
        ("reports/top.xml", "<top/>\n"),
        ("reports/unit/u.xml", "<unit/>\n"),
        ("reports/unit/deep/d.xml", "<deep/>\n"),
        ("docs/index.html", "<h1>docs</h1>\n"),
        ("docs/api/ref.html", "ref\n"),
    ]
    .iter()
    .map(|(path, content)| {
        let got = std::fs::read_to_string(dir.join(path)).unwrap_or_else(|e| panic!("artifact {path}: {e}\n{d}"));
        assert_eq!(got, *content, "content of artifact {path}");
        (path.to_string(), content.len() as u64)
    })
    .collect();
    assert_eq!(files_under(&dir), want.keys().cloned().collect::<Vec<_>>(), "files kept");

    // Listed in the event, the step's summary, the run summary and result.json.
    let collected = run.step_events("artifacts_collected", "build");
    assert_eq!(collected.len(), 1, "{d}");
    assert_eq!(collected[0]["dir"].as_str(), Some(dir.display().to_string().as_str()), "{d}");
    assert_eq!(artifact_list(&collected[0]["files"]), want);
    assert_eq!(artifact_list(&run.step("build")["artifacts"]), want);
    let in_summary = run.run_finished()["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["step"] == "build")
        .map(|s| artifact_list(&s["artifacts"]));
    assert_eq!(in_summary, Some(want.clone()), "{d}");
    let result: Value = serde_json::from_str(&p.read(&format!(".orch/runs/{id}/result.json"))).expect("result.json");
    let in_result = result["steps"].as_array().expect("steps").iter().find(|s| s["step"] == "build").cloned();
    assert_eq!(artifact_list(&in_result.expect("build in result.json")["artifacts"]), want);
    // A step without artifacts has none listed, and no event.
    assert!(run.step("test").get("artifacts").is_none(), "{d}");
    assert!(run.step_events("artifacts_collected", "test").is_empty(), "{d}");
    assert_no_leftovers(&id);
}

#[test]
fn artifact_pattern_matching_nothing_fails_the_step_unless_optional() {
    require_docker!();
    let store = Store::new();
    let p = Project::new(
        r#"
defaults:
  image: busybox:latest
steps:
  strict:
    artifacts: [out/present.txt, "dist/*.tar.gz"]
    cache:
      key: strict-v1
      paths: [out/]
    commands: [mkdir -p out dist, echo kept > out/present.txt, echo zip > dist/app.zip]
  after-strict:
    needs: [strict]
    commands: [echo after-strict-ran]
  lenient:
    artifacts:
      paths: ["lenient/*.tar.gz", lenient/present.txt]
      optional: true
    commands: [mkdir -p lenient, echo y > lenient/present.txt]
"#,
    );
    let run = ci(&p, &store, &[]);
    run.assert_code(1);
    let d = run.describe();
    assert_eq!(run.run_status(), "failure", "{d}");

    // The strict step failed after its commands passed; the message names the pattern.
    assert_eq!(run.status("strict"), "failed", "{d}");
    assert_eq!(run.step("strict")["exit_code"], 0, "{d}");
    let msg = run.message("strict");
    assert!(msg.contains("`dist/*.tar.gz` matched nothing"), "message: {msg}\n{d}");
    assert!(!msg.contains("out/present.txt"), "message names a pattern that matched: {msg}");
    assert_eq!(run.status("after-strict"), "skipped", "{d}");
    assert_no_line(&run, "after-strict", "after-strict-ran");
    // Artifacts come before caches: a step whose artifacts cannot be kept saves no cache.
    assert!(saved(&run, "strict").is_empty(), "{d}");
    assert!(store.ls().is_empty(), "cache saved by a failed step: {:?}", store.ls());
    assert!(run.step_events("artifacts_collected", "strict").is_empty(), "{d}");
    assert!(run.step("strict").get("artifacts").is_none(), "{d}");

    // The optional one passed, kept what matched, and warned about the rest.
    assert_eq!(run.status("lenient"), "passed", "{d}");
    assert_eq!(
        artifact_list(&run.step("lenient")["artifacts"]),
        BTreeMap::from([("lenient/present.txt".to_string(), 2)])
    );
    let warnings = messages(&run, "warning");
    assert!(
        warnings.iter().any(|m| m.contains("`lenient`") && m.contains("`lenient/*.tar.gz` matched nothing")),
        "no warning about the optional pattern: {warnings:?}\n{d}"
    );
    assert_no_leftovers(&run.run_id());
}

/// "A step that does not pass keeps no artifacts" (docs/reference.md): files a failing
/// step's patterns did match are not left in its artifacts directory.
#[test]
fn a_step_whose_artifacts_fail_keeps_none() {
    require_docker!();
    let p = Project::new(
        r#"
defaults:
  image: busybox:latest
steps:
  strict:
    artifacts: [out/present.txt, "dist/*.tar.gz"]
    commands: [mkdir -p out, echo kept > out/present.txt]
"#,
    );
    let run = ci(&p, &Store::new(), &[]);
    run.assert_code(1);
    assert_eq!(run.status("strict"), "failed", "{}", run.describe());
    let id = run.run_id();
    let kept = files_under(&p.path().join(format!(".orch/runs/{id}/artifacts/strict")));
    assert!(kept.is_empty(), "the failed step kept artifacts: {kept:?}");
    assert_no_leftovers(&id);
}

#[test]
fn artifact_links_out_of_the_workspace_are_refused() {
    require_docker!();
    let p = Project::new(
        r#"
defaults:
  image: busybox:latest
steps:
  leak:
    artifacts: [dist/leak]
    commands: [mkdir -p dist, ln -s /etc/passwd dist/leak]
  climb:
    artifacts: [up/]
    commands: [mkdir -p up/a, ln -s ../../../etc/passwd up/a/up]
  fine:
    artifacts: [site/]
    commands: [mkdir -p site/sub, echo hi > site/sub/page.html, ln -s sub/page.html site/index.html]
"#,
    );
    let run = ci(&p, &Store::new(), &[]);
    run.assert_code(1);
    let d = run.describe();
    let id = run.run_id();
    let art = p.path().join(format!(".orch/runs/{id}/artifacts"));

    assert_eq!(run.status("leak"), "failed", "{d}");
    let msg = run.message("leak");
    assert!(msg.contains("`dist/leak` is a link to `/etc/passwd`, outside the workspace: refused"), "{msg}\n{d}");
    assert_eq!(run.status("climb"), "failed", "{d}");
    let msg = run.message("climb");
    assert!(msg.contains("`up/a/up` is a link to `../../../etc/passwd`"), "{msg}\n{d}");
    assert!(msg.contains("outside the workspace: refused"), "{msg}\n{d}");
    for step in ["leak", "climb"] {
        let kept = files_under(&art.join(step));
        assert!(kept.is_empty(), "`{step}` kept {kept:?}");
    }

    // A relative link that stays inside the workspace is kept, as a link.
    assert_eq!(run.status("fine"), "passed", "{d}");
    let files = artifact_list(&run.step("fine")["artifacts"]);
    assert_eq!(files.keys().collect::<Vec<_>>(), ["site/index.html", "site/sub/page.html"], "{d}");
    let link = art.join("fine/site/index.html");
    assert_eq!(std::fs::read_link(&link).expect("a link").to_str(), Some("sub/page.html"));
    assert_eq!(std::fs::read_to_string(&link).expect("through the link"), "hi\n");
    assert_no_leftovers(&id);
}

/// A hard link is kept as a copy of the file it links to, when that file is collected too.
#[test]
fn artifact_hard_links_are_collected_as_copies() {
    require_docker!();
    let p = Project::new(
        r#"
steps:
  build:
    image: busybox:latest
    artifacts: [both/]
    commands:
      - mkdir -p both
      - echo both-data > both/a.txt
      - ln both/a.txt both/b.txt
"#,
    );
    let run = ci(&p, &Store::new(), &[]);
    run.assert_code(0);
    let d = run.describe();
    let id = run.run_id();
    let dir = p.path().join(format!(".orch/runs/{id}/artifacts/build"));
    let files = artifact_list(&run.step("build")["artifacts"]);
    let want = BTreeMap::from([("both/a.txt".to_string(), 10), ("both/b.txt".to_string(), 10)]);
    assert_eq!(files, want, "{d}");
    for path in ["both/a.txt", "both/b.txt"] {
        let got = std::fs::read_to_string(dir.join(path)).unwrap_or_else(|e| panic!("artifact {path}: {e}\n{d}"));
        assert_eq!(got, "both-data\n", "content of artifact {path}");
    }
    assert_eq!(files_under(&dir), ["both/a.txt", "both/b.txt"]);
    assert_no_leftovers(&id);
}

// ---------------------------------------------------------------------------------------
// Matrix

#[test]
fn matrix_variants_run_at_once_with_their_own_values() {
    require_docker!();
    let p = Project::new(
        r#"
steps:
  test:
    image: busybox:latest
    matrix:
      a: [x, y]
      b: ["1", "2"]
    artifacts: [matrix-out/]
    commands:
      - echo "values a=$a b=$b step=$ORCH_STEP"
      - mkdir -p matrix-out && echo "$a$b" > "matrix-out/$a-$b.txt"
      - sleep 3
"#,
    );
    let run = ci(&p, &Store::new(), &[]);
    run.assert_code(0);
    let d = run.describe();
    let names: Vec<String> =
        run.events_of("step_finished").map(|e| e["step"].as_str().unwrap_or("").to_string()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, ["test[a=x,b=1]", "test[a=x,b=2]", "test[a=y,b=1]", "test[a=y,b=2]"], "{d}");
    let mut intervals = Vec::new();
    for (a, b) in [("x", "1"), ("x", "2"), ("y", "1"), ("y", "2")] {
        let name = format!("test[a={a},b={b}]");
        assert_eq!(run.status(&name), "passed", "{d}");
        assert_line(&run, &name, &format!("values a={a} b={b} step={name}"));
        let slug = orch::plan::slug(&name);
        assert!(slug.starts_with(&format!("test_a_{a}_b_{b}_-")), "{slug}");
        let log = p.log_file(&run.run_id(), &slug);
        assert!(log.contains(&format!("values a={a} b={b}")), "log of {name}:\n{log}");
        // Its artifacts directory is named like its log.
        let own = format!(".orch/runs/{}/artifacts/{slug}/matrix-out/{a}-{b}.txt", run.run_id());
        assert_eq!(p.read(&own), format!("{a}{b}\n"));
        intervals.push(run.interval(&name));
    }
    // All four ran at the same time: each started before any ended.
    let last_start = intervals.iter().map(|i| i.0).fold(f64::MIN, f64::max);
    let first_end = intervals.iter().map(|i| i.1).fold(f64::MAX, f64::min);
    assert!(last_start < first_end, "the variants did not overlap: {intervals:?}\n{d}");
    assert_no_leftovers(&run.run_id());
}

// ---------------------------------------------------------------------------------------
// Deployments

/// A deploy step with a matrix is one deployment in the run's `result.json`, with the
/// worst status of its variants.
#[test]
fn a_run_s_deployments_are_in_its_result_json() {
    require_docker!();
    let p = Project::new(
        r#"
defaults:
  image: busybox:latest
steps:
  ship:
    matrix:
      region: [eu, us]
    environment: { name: staging, url: "https://staging.example.com" }
    commands:
      - test $region = eu
"#,
    );
    let run = ci(&p, &Store::new(), &[]);
    run.assert_code(1);
    let id = run.run_id();
    let result: Value = serde_json::from_str(&p.read(&format!(".orch/runs/{id}/result.json"))).expect("result.json");
    assert_eq!(
        result["deployments"],
        serde_json::json!([{ "step": "ship", "environment": "staging", "url": "https://staging.example.com",
                             "status": "failure" }]),
        "{result:#}"
    );
    assert_no_leftovers(&id);
}

const GATED: &str = r#"
environments:
  production:
    approval: { approvers: [alice, bob] }
    wait: 1s
    secrets: [DEPLOY_KEY]
steps:
  other:
    image: busybox:latest
    secrets: [DEPLOY_KEY]
    commands: ['echo "other sees ${DEPLOY_KEY:-nothing}"']
  ship:
    image: busybox:latest
    environment: production
    commands: ['echo "ship sees $DEPLOY_KEY"']
"#;

/// `orch ci` on the gated pipeline, with the environment's secret in its environment.
fn gated_ci(p: &Project, args: &[&str]) -> Run {
    let mut all = vec!["--json", "--no-cache"];
    all.extend_from_slice(args);
    let mut cmd = p.ci(&all);
    cmd.env("DEPLOY_KEY", "s3cret-deploy-key");
    Running::spawn(cmd).finish(RUN_LIMIT)
}

#[test]
fn without_a_terminal_a_gated_deployment_fails_saying_to_pass_approve() {
    require_docker!();
    let p = Project::new(GATED);
    let run = gated_ci(&p, &[]);
    let d = run.describe();
    run.assert_code(1);
    assert_eq!(run.status("ship"), "failed", "{d}");
    assert!(run.message("ship").contains("pass --approve"), "{d}");
    assert_eq!(run.status("other"), "passed", "{d}");
    // A step that lists an environment's secret without deploying there never gets it.
    assert_line(&run, "other", "other sees nothing");
    assert!(run.events_of("deployment_started").next().is_none(), "{d}");
    let waiting: Vec<_> = run.events_of("gate_waiting").collect();
    assert_eq!(waiting.len(), 1, "{d}");
    assert_eq!(waiting[0]["approvers"], serde_json::json!(["alice", "bob"]), "{d}");
    assert_no_leftovers(&run.run_id());
}

#[test]
fn approve_lets_a_gated_deployment_run_after_its_wait_timer_with_its_secret_masked() {
    require_docker!();
    let p = Project::new(GATED);
    let run = gated_ci(&p, &["--approve=production"]);
    let d = run.describe();
    run.assert_code(0);
    assert_eq!(run.status("ship"), "passed", "{d}");
    assert_line(&run, "ship", "ship sees ***");
    assert!(!d.contains("s3cret-deploy-key"), "{d}");
    let decided: Vec<_> = run.events_of("gate_decided").collect();
    assert_eq!(decided.len(), 1, "{d}");
    assert_eq!(decided[0]["outcome"], "approved", "{d}");
    assert!(decided[0]["by"][0].as_str().unwrap_or("").contains("--approve"), "{d}");
    assert!(run.events_of("run_message").any(|e| e["message"].as_str().unwrap_or("").contains("wait timer")), "{d}");
    assert_no_leftovers(&run.run_id());
    // `--approve=staging` approves another environment, not this one.
    let run = gated_ci(&p, &["--approve=staging"]);
    assert_eq!(run.status("ship"), "failed", "{}", run.describe());
}

/// `orch ci` on the gated pipeline at a terminal (`script` lends it a pseudo-terminal),
/// answering `answer` to its question; (exit code, everything it showed).
fn gated_ci_at_a_terminal(p: &Project, answer: &str) -> (Option<i32>, String) {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};
    let line = format!("{ORCH} ci -C '{}' --no-cache --no-progress", p.path().display());
    let mut child = Command::new("script")
        .args(["-qfec", &line, "/dev/null"])
        .env("DEPLOY_KEY", "s3cret-deploy-key")
        .env("USER", "tester")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("script runs");
    let shown = Arc::new(Mutex::new(String::new()));
    let mut out = child.stdout.take().unwrap();
    let reader = {
        let shown = shown.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                shown.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    poll("the question", RUN_LIMIT, || shown.lock().unwrap().contains("[y/N]").then_some(()));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("{answer}\n").as_bytes()).unwrap();
    let started = std::time::Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        assert!(started.elapsed() < RUN_LIMIT, "orch ci did not end:\n{}", shown.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(stdin);
    let _ = reader.join();
    let text = shown.lock().unwrap().clone();
    (code, text)
}

#[test]
fn at_a_terminal_orch_ci_asks_and_the_answer_decides() {
    require_docker!();
    let p = Project::new(GATED);
    let (code, text) = gated_ci_at_a_terminal(&p, "y");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("Deploy step `ship` to `production`"), "{text}");
    assert!(text.contains("approved by tester"), "{text}");
    assert!(text.contains("waiting 1s (its wait timer)"), "{text}");
    assert!(text.contains("ship sees ***") && !text.contains("s3cret"), "{text}");
    let (code, text) = gated_ci_at_a_terminal(&p, "n");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("rejected at the terminal by tester"), "{text}");
}
