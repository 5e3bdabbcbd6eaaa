//! Integration tests against the real Docker daemon: `orch ci` (and `orch gc`) run as a
//! process on throwaway projects, and the tests check exit codes, output, the `--json`
//! events, the files left in the project, and that nothing labelled with the run is left in
//! Docker.
//!
//! They only run with `ORCH_DOCKER_TESTS=1` (scripts/test sets it); otherwise each test
//! returns at once with a note on stderr. They need the local `busybox:latest` image and
//! never pull anything. Every test has its own project directory and run id, so they run in
//! parallel with each other (and with other orch runs on the machine).

use std::time::Duration;

mod common;

use common::*;

const TWO_STEPS: &str = r#"
defaults:
  image: busybox:latest
steps:
  write:
    commands:
      - test "$(cat input.txt)" = original
      - test "$(cat link.txt)" = original
      - ./scripts/hello.sh
      - echo "step=$ORCH_STEP greeting=$GREETING pwd=$(pwd)"
      - echo to-stderr >&2
      - echo from-step1 > made.txt
      - echo changed > input.txt
  read:
    needs: [write]
    commands:
      - cat made.txt
      - test "$(cat made.txt)" = from-step1
      - test "$(cat input.txt)" = changed
"#;

fn two_step_project() -> Project {
    Project::new(TWO_STEPS)
        .with("input.txt", "original\n")
        .with_exec("scripts/hello.sh", "#!/bin/sh\necho hello from script\n")
        .with_symlink("link.txt", "input.txt")
}

#[test]
fn pass_shares_the_workspace_and_keeps_the_project_untouched() {
    require_docker!();
    let p = two_step_project();
    let before = p.snapshot();

    let run = p.run_json(&["--env", "GREETING=hi"]);
    run.assert_code(0);
    let d = run.describe();
    assert_eq!(run.run_status(), "success", "{d}");
    assert_eq!(run.status("write"), "passed", "{d}");
    assert_eq!(run.status("read"), "passed", "{d}");
    // The copy keeps modes and links; --env and the built-ins reach the step.
    let write = run.log_lines("write");
    for want in ["hello from script", "step=write greeting=hi pwd=/workspace", "to-stderr"] {
        assert!(write.iter().any(|l| l == want), "no line {want:?}\n{d}");
    }
    let stderr: Vec<&serde_json::Value> =
        run.step_events("step_log", "write").into_iter().filter(|e| e["stream"] == "stderr").collect();
    assert_eq!(stderr.len(), 1, "{d}");
    assert_eq!(stderr[0]["line"], "to-stderr");
    // Step 2 sees what step 1 wrote.
    assert!(run.log_lines("read").iter().any(|l| l == "from-step1"), "{d}");

    // Logs are saved per step in the project's run directory.
    let id = run.run_id();
    assert_eq!(p.run_dirs(), vec![id.clone()]);
    let write_log = p.log_file(&id, "write");
    assert!(write_log.contains("+ echo from-step1 > made.txt"), "write.log:\n{write_log}");
    let read_log = p.log_file(&id, "read");
    assert!(read_log.lines().any(|l| l == "from-step1"), "read.log:\n{read_log}");

    // The steps worked on a copy: the project is as it was.
    assert_eq!(p.snapshot(), before, "the steps modified the project dir");
    assert!(!p.path().join("made.txt").exists());
    assert_no_leftovers(&id);
}

#[test]
fn pass_with_bind_writes_into_the_project() {
    require_docker!();
    let p = two_step_project();

    let run = p.run_plain(&["--bind", "--env", "GREETING=hi"]);
    run.assert_code(0);
    assert!(run.stdout.contains("success in"), "{}", run.describe());
    assert!(run.stdout.contains("read passed"), "{}", run.describe());
    assert_eq!(p.read("made.txt"), "from-step1\n");
    assert_eq!(p.read("input.txt"), "changed\n");
    let ids = p.run_dirs();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(p.log_file(&ids[0], "read").contains("from-step1"));
    assert_no_leftovers(&ids[0]);
}

#[test]
fn fail_skips_dependents_and_runs_independent_steps() {
    require_docker!();
    let p = Project::new(
        r#"
defaults:
  image: busybox:latest
steps:
  broken:
    commands: [echo about to fail, exit 3, echo never printed]
  after:
    needs: [broken]
    commands: [echo should not run]
  later:
    needs: [after]
    commands: [echo should not run]
  independent:
    commands: [sleep 1, echo independent ran]
"#,
    );
    let run = p.run_json(&[]);
    run.assert_code(1);
    assert_eq!(run.run_status(), "failure");

    assert_eq!(run.status("broken"), "failed", "{}", run.describe());
    assert_eq!(run.step("broken")["exit_code"], 3);
    let out = run.log_lines("broken");
    assert!(out.iter().any(|l| l == "about to fail"), "{out:?}");
    assert!(!out.iter().any(|l| l == "never printed"), "{out:?}");

    assert_eq!(run.status("after"), "skipped", "{}", run.describe());
    assert!(run.message("after").contains("`broken`"), "reason: {}", run.message("after"));
    assert_eq!(run.status("later"), "skipped", "{}", run.describe());
    let later = run.message("later");
    assert!(later.contains("`broken`") || later.contains("`after`"), "reason: {later}");
    assert!(run.step_events("step_started", "after").is_empty());
    assert!(run.step_events("step_started", "later").is_empty());

    assert_eq!(run.status("independent"), "passed", "{}", run.describe());
    assert!(run.log_lines("independent").iter().any(|l| l == "independent ran"));
    assert_no_leftovers(&run.run_id());
}

#[test]
fn allow_failure_lets_the_run_pass() {
    require_docker!();
    let p = Project::new(
        r#"
defaults:
  image: busybox:latest
steps:
  flaky:
    allow_failure: true
    commands: [exit 5]
  after:
    needs: [flaky]
    commands: [echo after ran]
"#,
    );
    let run = p.run_json(&[]);
    run.assert_code(0);
    assert_eq!(run.run_status(), "success");
    let flaky = run.step("flaky");
    assert_eq!(flaky["status"], "failed", "{}", run.describe());
    assert_eq!(flaky["allowed_failure"], true);
    assert_eq!(flaky["exit_code"], 5);
    assert_eq!(run.status("after"), "passed", "{}", run.describe());
    assert_no_leftovers(&run.run_id());
}

#[test]
fn status_conditions_run_on_failure_and_always() {
    require_docker!();
    let p = Project::new(
        r#"
defaults:
  image: busybox:latest
steps:
  ok:
    commands: [echo ok]
  bad:
    commands: [exit 1]
  on_ok_failure:
    needs: [ok]
    when: { status: [failure] }
    commands: [echo ran]
  on_ok_always:
    needs: [ok]
    when: { status: [always] }
    commands: [echo ran]
  on_bad_failure:
    needs: [bad]
    when: { status: [failure] }
    commands: [echo ran]
  on_bad_always:
    needs: [bad]
    when: { status: always }
    commands: [echo ran]
  on_bad_success:
    needs: [bad]
    commands: [echo ran]
"#,
    );
    let run = p.run_json(&[]);
    run.assert_code(1);
    let d = run.describe();
    assert_eq!(run.status("ok"), "passed", "{d}");
    assert_eq!(run.status("bad"), "failed", "{d}");
    // Nothing `on_ok_failure` needs failed: it does not run.
    assert_eq!(run.status("on_ok_failure"), "skipped", "{d}");
    assert!(run.message("on_ok_failure").contains("only on failure"), "{d}");
    assert!(run.step_events("step_started", "on_ok_failure").is_empty());
    assert_eq!(run.status("on_ok_always"), "passed", "{d}");
    assert_eq!(run.status("on_bad_failure"), "passed", "{d}");
    assert!(run.log_lines("on_bad_failure").iter().any(|l| l == "ran"));
    assert_eq!(run.status("on_bad_always"), "passed", "{d}");
    assert_eq!(run.status("on_bad_success"), "skipped", "{d}");
    assert!(run.message("on_bad_success").contains("`bad`"), "{d}");
    assert_no_leftovers(&run.run_id());
}

fn four_sleepers(secs: &str) -> String {
    let mut y = String::from("defaults:\n  image: busybox:latest\nsteps:\n");
    for i in 1..=4 {
        y.push_str(&format!("  s{i}:\n    commands: [sleep {secs}]\n"));
    }
    y
}

#[test]
fn parallel_steps_overlap() {
    require_docker!();
    let p = Project::new(&four_sleepers("2"));
    let run = p.run_json(&[]);
    run.assert_code(0);
    let iv: Vec<(f64, f64)> = ["s1", "s2", "s3", "s4"].iter().map(|s| run.interval(s)).collect();
    let last_start = iv.iter().map(|i| i.0).fold(f64::MIN, f64::max);
    let first_end = iv.iter().map(|i| i.1).fold(f64::MAX, f64::min);
    assert!(
        last_start < first_end,
        "the 4 steps did not all run at once: intervals {iv:?} (run took {:?})",
        run.elapsed
    );
    assert_no_leftovers(&run.run_id());
}

#[test]
fn jobs_1_runs_steps_one_at_a_time() {
    require_docker!();
    let p = Project::new(&four_sleepers("1"));
    let run = p.run_json(&["--jobs", "1"]);
    run.assert_code(0);
    assert_eq!(run.events_of("run_started").next().expect("run_started")["jobs"], 1);
    let mut iv: Vec<(f64, f64)> = ["s1", "s2", "s3", "s4"].iter().map(|s| run.interval(s)).collect();
    iv.sort_by(|a, b| a.0.total_cmp(&b.0));
    for w in iv.windows(2) {
        assert!(w[1].0 >= w[0].1, "steps overlapped with --jobs 1: {iv:?}");
    }
    assert_no_leftovers(&run.run_id());
}

#[test]
fn timeout_stops_the_step() {
    require_docker!();
    let p = Project::new(
        r#"
steps:
  slow:
    image: busybox:latest
    timeout: 2s
    retry: 2
    commands: [echo begun, sleep 30]
"#,
    );
    let run = p.run_json(&[]);
    run.assert_code(1);
    assert_eq!(run.run_status(), "failure");
    assert_eq!(run.status("slow"), "timed_out", "{}", run.describe());
    assert!(run.message("slow").contains("2s"), "{}", run.describe());
    let took = run.step("slow")["duration"].as_f64().expect("duration");
    assert!((1.9..15.0).contains(&took), "step took {took}s");
    assert!(run.elapsed < Duration::from_secs(20), "run took {:?}", run.elapsed);
    assert!(run.log_lines("slow").iter().any(|l| l == "begun"), "{}", run.describe());
    // A timeout is not retried.
    assert_eq!(run.step_events("step_started", "slow").len(), 1, "{}", run.describe());
    assert!(run.step_events("step_retrying", "slow").is_empty(), "{}", run.describe());
    assert_no_leftovers(&run.run_id());
}

const FLAKY: &str = r#"
steps:
  flaky:
    image: busybox:latest
    retry: { count: 2, on_exit_codes: [3] }
    commands:
      - if [ -e .attempted ]; then echo second attempt; else touch .attempted; echo first attempt; exit EXIT; fi
"#;

#[test]
fn retry_on_a_listed_exit_code() {
    require_docker!();
    let p = Project::new(&FLAKY.replace("EXIT", "3"));
    let run = p.run_json(&[]);
    run.assert_code(0);
    let d = run.describe();
    let started = run.step_events("step_started", "flaky");
    assert_eq!(started.len(), 2, "{d}");
    assert_eq!(started[0]["attempt"], 1);
    assert_eq!(started[1]["attempt"], 2);
    assert_eq!(started[0]["attempts"], 3);
    let retrying = run.step_events("step_retrying", "flaky");
    assert_eq!(retrying.len(), 1, "{d}");
    assert_eq!(retrying[0]["attempt"], 1);
    assert_eq!(retrying[0]["exit_code"], 3);
    assert_eq!(run.status("flaky"), "passed", "{d}");
    assert_eq!(run.step("flaky")["attempts"], 2);
    let lines = run.log_lines("flaky");
    assert!(lines.iter().any(|l| l == "first attempt") && lines.iter().any(|l| l == "second attempt"), "{d}");
    let log = p.log_file(&run.run_id(), "flaky");
    assert!(
        log.contains("first attempt") && log.contains("--- attempt 2 ---") && log.contains("second attempt"),
        "{log}"
    );
    assert_no_leftovers(&run.run_id());
}

#[test]
fn no_retry_on_an_unlisted_exit_code() {
    require_docker!();
    let p = Project::new(&FLAKY.replace("EXIT", "4"));
    let run = p.run_json(&[]);
    run.assert_code(1);
    let d = run.describe();
    assert_eq!(run.step_events("step_started", "flaky").len(), 1, "{d}");
    assert!(run.step_events("step_retrying", "flaky").is_empty(), "{d}");
    assert_eq!(run.status("flaky"), "failed", "{d}");
    assert_eq!(run.step("flaky")["exit_code"], 4);
    assert_eq!(run.step("flaky")["attempts"], 1);
    assert_no_leftovers(&run.run_id());
}

const NOPE: &str = "orch-test/nope:never";

fn assert_mentions_missing_image(text: &str, run: &common::Run) {
    assert!(text.contains(NOPE), "the error does not name the image\n{}", run.describe());
    assert!(text.contains("does not pull"), "the error does not say orch does not pull\n{}", run.describe());
    // Nothing was pulled.
    assert!(docker(&["images", "-q", NOPE]).is_empty(), "{NOPE} exists locally");
}

#[test]
fn missing_image_is_an_infrastructure_error() {
    require_docker!();
    let p = Project::new(&format!("steps:\n  build:\n    image: {NOPE}\n    commands: [echo hi]\n"));
    let run = p.run_json(&[]);
    run.assert_code(3);
    assert_eq!(run.run_status(), "error");
    // The step whose image is missing errs, naming the image; the run is an
    // infrastructure error.
    let finished = run.step_events("step_finished", "build");
    assert_eq!(finished.len(), 1, "{}", run.describe());
    assert_eq!(finished[0]["status"], "error", "{}", run.describe());
    assert_mentions_missing_image(finished[0]["message"].as_str().unwrap_or(""), &run);
    assert_no_leftovers(&run.run_id());

    // The same, for people.
    let plain = p.run_plain(&[]);
    plain.assert_code(3);
    assert_mentions_missing_image(&plain.stdout, &plain);
}

#[test]
fn missing_image_of_a_later_step_errors_that_step() {
    require_docker!();
    let p = Project::new(&format!(
        r#"
steps:
  fine:
    image: busybox:latest
    commands: [echo fine]
  broken:
    image: {NOPE}
    commands: [echo hi]
"#
    ));
    let run = p.run_json(&[]);
    run.assert_code(3);
    assert_eq!(run.run_status(), "error");
    assert_eq!(run.status("fine"), "passed", "{}", run.describe());
    assert_eq!(run.status("broken"), "error", "{}", run.describe());
    assert_mentions_missing_image(run.message("broken"), &run);
    assert_no_leftovers(&run.run_id());
}

#[test]
fn secrets_reach_only_their_steps_and_are_masked() {
    require_docker!();
    let p = Project::new(
        r#"
defaults:
  image: busybox:latest
steps:
  uses:
    secrets: [FILE_SECRET, ENV_SECRET]
    commands:
      - echo "file=$FILE_SECRET env=$ENV_SECRET"
      - echo "$FILE_SECRET" | sed 's/./&-/g'
      - echo "$ENV_SECRET" | sed 's/./&-/g'
      - printf 'hun'; sleep 0.3; printf 'ter2\n'
      - printf 'split=s3cr3t'; sleep 0.3; printf '-from-file done\n'
  other:
    commands:
      - echo "other=${FILE_SECRET:-unset} ${ENV_SECRET:-unset}"
"#,
    )
    .with("secrets.env", "# test secrets\nexport FILE_SECRET=\"s3cr3t-from-file\"\n");
    let file = p.path().join("secrets.env");
    let file = file.to_str().expect("utf-8 path");
    let mut cmd = p.ci(&["--json", "--secret-file", file]);
    // The file wins over the environment.
    cmd.env("ENV_SECRET", "hunter2").env("FILE_SECRET", "loses-to-the-file");
    let run = Running::spawn(cmd).finish(RUN_LIMIT);
    run.assert_code(0);
    let d = run.describe();

    // The values reached the step (spelled out so that the mask does not apply).
    let uses = run.log_lines("uses");
    for want in ["file=*** env=***", "s-3-c-r-3-t---f-r-o-m---f-i-l-e-", "h-u-n-t-e-r-2-", "***", "split=*** done"] {
        assert!(uses.iter().any(|l| l == want), "no line {want:?} in {uses:?}\n{d}");
    }
    // A step that does not name them does not get them.
    assert_eq!(
        run.log_lines("other"),
        ["+ echo \"other=${FILE_SECRET:-unset} ${ENV_SECRET:-unset}\"", "other=unset unset"]
    );

    for secret in ["hunter2", "s3cr3t-from-file"] {
        assert!(!run.stdout.contains(secret), "secret {secret} in the output\n{d}");
        assert!(!run.stderr.contains(secret), "secret {secret} on stderr\n{d}");
        let log = p.log_file(&run.run_id(), "uses");
        assert!(!log.contains(secret), "secret {secret} in uses.log:\n{log}");
        assert!(log.contains("file=*** env=***") && log.contains("split=*** done"), "uses.log:\n{log}");
    }
    assert_no_leftovers(&run.run_id());
}

#[test]
fn missing_secret_is_a_usage_error() {
    require_docker!();
    let p = Project::new(
        "steps:\n  deploy:\n    image: busybox:latest\n    secrets: [ORCH_TEST_NO_SUCH_SECRET]\n    commands: [true]\n",
    );
    let mut cmd = p.ci(&["--no-progress"]);
    cmd.env_remove("ORCH_TEST_NO_SUCH_SECRET");
    let run = Running::spawn(cmd).finish(RUN_LIMIT);
    run.assert_code(2);
    assert!(run.stderr.contains("ORCH_TEST_NO_SUCH_SECRET"), "{}", run.describe());
    assert!(run.stderr.contains("`deploy`"), "{}", run.describe());
    assert!(p.run_dirs().is_empty(), "a run started: {:?}", p.run_dirs());
}

#[test]
fn step_selection_runs_the_step_and_its_needs() {
    require_docker!();
    let p = Project::new(
        r#"
defaults:
  image: busybox:latest
steps:
  a:
    commands: [echo a]
  b:
    needs: [a]
    commands: [echo b]
  c:
    commands: [echo c]
  d:
    needs: [b]
    commands: [echo d]
"#,
    );
    let run = p.run_json(&["--step", "b"]);
    run.assert_code(0);
    let started = &run.events_of("run_started").next().expect("run_started");
    let planned: Vec<&str> =
        started["steps"].as_array().expect("steps").iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(planned, ["a", "b"], "{}", run.describe());
    let skipped: Vec<(&str, &str)> = started["skipped"]
        .as_array()
        .expect("skipped")
        .iter()
        .map(|s| (s["name"].as_str().unwrap_or(""), s["reason"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    for (name, reason) in &skipped {
        assert!(["c", "d"].contains(name) && reason.contains("--step"), "{skipped:?}");
    }
    let ran: Vec<&str> = run.events_of("step_started").filter_map(|e| e["step"].as_str()).collect();
    assert_eq!(ran, ["a", "b"]);
    assert_eq!(run.status("a"), "passed");
    assert_eq!(run.status("b"), "passed");
    assert_no_leftovers(&run.run_id());

    // An unknown step is a usage error.
    let bad = p.run_plain(&["--step", "nope"]);
    bad.assert_code(2);
    assert!(bad.stderr.contains("nope"), "{}", bad.describe());
}

#[test]
fn invalid_config_is_reported_with_its_location() {
    require_docker!();
    let p = Project::new("steps:\n  build:\n    image: busybox:latest\n    comands: [echo hi]\n");
    let run = p.run_plain(&[]);
    run.assert_code(2);
    let err = &run.stderr;
    assert!(err.contains("unknown key `comands`"), "{}", run.describe());
    assert!(err.contains(".orch.yml:4:5"), "no file:line:col\n{}", run.describe());
    assert!(err.contains("did you mean `commands`?"), "{}", run.describe());
    assert!(run.stdout.is_empty(), "{}", run.describe());
    assert!(p.run_dirs().is_empty(), "a run started: {:?}", p.run_dirs());
}

/// A step with a sidecar service: a container and a network besides the step's container.
fn with_service(step: &str) -> String {
    format!(
        r#"
steps:
  s:
    image: busybox:latest
    services:
      side:
        image: busybox:latest
        command: sleep 120
{step}
"#
    )
}

#[test]
fn cleanup_after_success_failure_and_timeout() {
    require_docker!();
    let cases = [
        ("passed", 0, with_service("    commands: [echo ok]")),
        ("failed", 1, with_service("    commands: [exit 7]")),
        ("timed_out", 1, with_service("    timeout: 1s\n    commands: [sleep 30]")),
    ];
    let handles: Vec<_> = cases
        .into_iter()
        .map(|(status, code, yml)| {
            std::thread::spawn(move || {
                let p = Project::new(&yml);
                let run = p.run_json(&[]);
                run.assert_code(code);
                assert_eq!(run.status("s"), status, "{}", run.describe());
                assert_no_leftovers(&run.run_id());
            })
        })
        .collect();
    for h in handles {
        if let Err(e) = h.join() {
            std::panic::resume_unwind(e);
        }
    }
}

const LONG: &str = "steps:\n  long:\n    image: busybox:latest\n    commands: [echo begun, sleep 60]\n";

const LONG_WITH_SERVICE: &str = r#"
steps:
  long:
    image: busybox:latest
    services:
      side:
        image: busybox:latest
        command: sleep 120
    commands: [echo begun, sleep 60]
"#;

/// Starts `orch ci --json ARGS` on a project whose step `long` runs for a minute; returns
/// once that step's container is up, after checking the owner labels on everything the run
/// created: `containers` containers, the step's network when `network` (the others sit on
/// the shared steps' network, which no run owns), the workspace volume (and its layer's).
fn start_long_step(p: &Project, args: &[&str], containers: usize, network: bool) -> Running {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let mut orch = Running::spawn(p.ci(&all));
    orch.wait_event("step_started", Duration::from_secs(60), |e| e["event"] == "step_started");
    let id = orch.run_id().to_string();
    let filter = format!("label=orch.run={id}");
    let step_container = format!("orch-{id}-long-1");
    poll("the step's container to run", Duration::from_secs(30), || {
        let names = docker(&["ps", "--filter", &filter, "--format", "{{.Names}}"]);
        names.lines().any(|n| n == step_container).then_some(())
    });
    let labels = docker(&[
        "ps",
        "-a",
        "--filter",
        &filter,
        "--format",
        r#"{{.Label "orch.step"}} {{.Label "orch.pid"}} {{.Label "orch.host"}}"#,
    ]);
    let want = format!("long {} {}", orch.pid(), hostname());
    assert_eq!(labels.lines().collect::<Vec<_>>(), vec![want.as_str(); containers], "container labels");
    let networks = docker(&["network", "ls", "--filter", &filter, "--format", "{{.Name}}"]);
    let mut networks: Vec<&str> = networks.lines().collect();
    networks.sort();
    let want: Vec<&str> = if network { vec![&step_container] } else { vec![] };
    assert_eq!(networks, want, "the run's networks");
    let volumes = docker(&["volume", "ls", "--filter", &filter, "--format", "{{.Name}}"]);
    let mut volumes: Vec<&str> = volumes.lines().collect();
    volumes.sort();
    // As root the workspace is an overlay whose writes live in a second volume.
    let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
    let (layer, workspace) = (format!("orch-{id}-layer"), format!("orch-{id}-workspace"));
    let want: Vec<&str> = if root { vec![&layer, &workspace] } else { vec![&workspace] };
    assert_eq!(volumes, want, "the run's volumes");
    for v in volumes {
        let owner = docker(&["volume", "inspect", "--format", r#"{{index .Labels "orch.pid"}}"#, v]);
        assert_eq!(owner, orch.pid().to_string(), "the volume's orch.pid label");
    }
    orch
}

#[test]
fn sigint_mid_step_stops_the_run_and_cleans_up() {
    require_docker!();
    let p = Project::new(LONG_WITH_SERVICE);
    let orch = start_long_step(&p, &["--grace", "2"], 2, true);
    let id = orch.run_id().to_string();
    let sent = std::time::Instant::now();
    orch.signal("INT");
    let run = orch.finish(Duration::from_secs(90));
    let took = sent.elapsed();
    run.assert_code(130);
    assert!(took < Duration::from_secs(20), "orch took {took:?} to stop after SIGINT");
    assert_eq!(run.run_status(), "cancelled");
    assert_eq!(run.status("long"), "cancelled", "{}", run.describe());
    assert!(
        run.events_of("run_message").any(|e| e["message"].as_str().is_some_and(|m| m.contains("interrupted"))),
        "{}",
        run.describe()
    );
    assert_no_leftovers(&id);
}

#[test]
fn sigterm_mid_step_stops_the_run_and_cleans_up() {
    require_docker!();
    let p = Project::new(LONG);
    let orch = start_long_step(&p, &["--grace", "2"], 1, false);
    let id = orch.run_id().to_string();
    orch.signal("TERM");
    let run = orch.finish(Duration::from_secs(90));
    run.assert_code(130);
    assert_eq!(run.status("long"), "cancelled", "{}", run.describe());
    assert_no_leftovers(&id);
}

/// SIGINT as soon as `step_started` is out, while the step's container (and its service's
/// network) are still being created.
#[test]
fn sigint_right_after_step_started_cleans_up() {
    require_docker!();
    let mut problems = Vec::new();
    for yml in [LONG, LONG_WITH_SERVICE] {
        let p = Project::new(yml);
        let mut orch = Running::spawn(p.ci(&["--json", "--grace", "2"]));
        orch.wait_event("step_started", Duration::from_secs(60), |e| e["event"] == "step_started");
        let id = orch.run_id().to_string();
        orch.signal("INT");
        let run = orch.finish(Duration::from_secs(90));
        run.assert_code(130);
        assert_eq!(run.status("long"), "cancelled", "{}", run.describe());
        // Give the daemon time to finish whatever orch asked of it before it stopped.
        std::thread::sleep(Duration::from_millis(1500));
        let left = leftovers(&id);
        if !left.is_empty() {
            remove_run(&id);
            let with = if yml == LONG { "a plain step" } else { "a step with a service" };
            problems.push(format!("{with}: run {id} left {}", left.join(", ")));
        }
    }
    assert!(problems.is_empty(), "SIGINT during a step's start leaked:\n{}", problems.join("\n"));
}

#[test]
fn second_sigint_kills_at_once() {
    require_docker!();
    // The step ignores SIGTERM: a graceful stop would take the whole (long) grace period.
    let p = Project::new(
        "steps:\n  long:\n    image: busybox:latest\n    commands: [\"trap '' TERM\", echo begun, sleep 60]\n",
    );
    let mut orch = start_long_step(&p, &["--grace", "60"], 1, false);
    let id = orch.run_id().to_string();
    let first = std::time::Instant::now();
    orch.signal("INT");
    orch.wait_event("the interrupted message", Duration::from_secs(10), |e| {
        e["event"] == "run_message" && e["message"].as_str().is_some_and(|m| m.contains("interrupted"))
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(orch.alive(), "orch stopped a step that ignores SIGTERM before the grace period");
    orch.signal("INT");
    let run = orch.finish(Duration::from_secs(120));
    let took = first.elapsed();
    run.assert_code(130);
    assert!(took < Duration::from_secs(20), "orch took {took:?} to stop after two SIGINTs (grace is 60s)");
    assert_eq!(run.status("long"), "cancelled", "{}", run.describe());
    assert!(
        run.events_of("run_message").any(|e| e["message"].as_str().is_some_and(|m| m.contains("killing"))),
        "{}",
        run.describe()
    );
    assert_no_leftovers(&id);
}

/// `docker create|volume create|network create --label orch.run=RUN --label orch.pid=PID
/// --label orch.host=HOST ...`.
fn create_labelled(what: &[&str], run: &str, pid: &str, host: &str, tail: &[&str]) {
    let mut args: Vec<String> = what.iter().map(|s| s.to_string()).collect();
    for l in [format!("orch.run={run}"), format!("orch.pid={pid}"), format!("orch.host={host}")] {
        args.push("--label".into());
        args.push(l);
    }
    args.extend(tail.iter().map(|s| s.to_string()));
    docker(&args.iter().map(String::as_str).collect::<Vec<_>>());
}

fn orch_gc() -> (Option<i32>, String) {
    let out = std::process::Command::new(ORCH).arg("gc").output().expect("run orch gc");
    let text =
        format!("stdout: {}\nstderr: {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

#[test]
fn gc_removes_what_dead_runs_left_and_keeps_live_ones() {
    require_docker!();
    let host = hostname();
    let dead = (999_999..).find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()).expect("a free pid");
    let dead = dead.to_string();
    let stale = unique("stale-test");
    let live = unique("live-test");
    let _guard = RemoveOnDrop(vec![stale.clone(), live.clone()]);
    create_labelled(&["create"], &stale, &dead, &host, &["busybox:latest", "true"]);
    create_labelled(&["volume", "create"], &stale, &dead, &host, &[]);
    create_labelled(&["network", "create"], &stale, &dead, &host, &[&format!("orch-{stale}")]);
    // A run whose orch (this test process) is alive.
    create_labelled(&["create"], &live, &std::process::id().to_string(), &host, &["busybox:latest", "true"]);
    // (Not counted here: an `orch ci` of a test running in parallel collects stale runs
    // when it starts, and may already have removed some of these.)

    let (code, out) = orch_gc();
    assert_eq!(code, Some(0), "orch gc failed\n{out}");
    assert_no_leftovers(&stale);
    let left_live = leftovers(&live);
    assert_eq!(left_live.len(), 1, "orch gc removed a live run's container: {left_live:?}\n{out}");
}

#[test]
fn gc_cleans_up_after_a_killed_orch() {
    require_docker!();
    let p = Project::new(LONG_WITH_SERVICE);
    let orch = start_long_step(&p, &[], 2, true);
    let id = orch.run_id().to_string();
    let _guard = RemoveOnDrop(vec![id.clone()]);
    orch.signal("KILL");
    let run = orch.finish(Duration::from_secs(30));
    assert_eq!(run.code, None, "orch survived SIGKILL\n{}", run.describe());
    // (What it left is not counted: an `orch ci` of a test running in parallel may collect
    // it first, as it does for every run whose orch is gone.)
    let (code, out) = orch_gc();
    assert_eq!(code, Some(0), "orch gc failed\n{out}");
    assert_no_leftovers(&id);
}

/// The `orch.host` label says which machine's process table `orch.pid` belongs to. A run
/// started by an orch on another host that shares this Docker daemon (orch in a CI
/// container with the host's socket mounted, say) cannot be known to be dead from here.
#[test]
fn gc_keeps_runs_of_other_hosts() {
    require_docker!();
    let other = unique("other-host-test");
    let _guard = RemoveOnDrop(vec![other.clone()]);
    create_labelled(&["create"], &other, "1", "some-other-host", &["busybox:latest", "true"]);
    let (code, out) = orch_gc();
    assert_eq!(code, Some(0), "orch gc failed\n{out}");
    let left = leftovers(&other);
    assert_eq!(left.len(), 1, "orch gc removed the container of a run of another host\n{out}");
}

#[test]
fn docker_unreachable_is_an_infrastructure_error() {
    require_docker!();
    let p = Project::new(LONG);
    let mut cmd = p.ci(&["--json"]);
    cmd.env("DOCKER_HOST", "unix:///nonexistent/orch-test/docker.sock");
    let run = Running::spawn(cmd).finish(RUN_LIMIT);
    run.assert_code(3);
    assert!(run.stderr.contains("cannot reach the Docker daemon"), "{}", run.describe());
}

/// Steps without services share one network, kept between runs, on which they cannot
/// reach one another: two steps running at once, one listening, the other refused; the
/// listener itself answers on the same address.
#[test]
fn steps_on_the_shared_network_cannot_reach_each_other() {
    require_docker!();
    let p = Project::new(
        r#"
steps:
  listen:
    image: busybox:latest
    needs: []
    commands:
      - (while true; do nc -l -p 8080 -e echo hi; done) &
      - ip=$(hostname -i) && echo $ip > ip.txt
      - sleep 1 && if nc -w 3 $ip 8080 </dev/null | grep -q hi; then echo self:reached; else echo self:blocked; fi
      - for i in $(seq 100); do [ -f done.txt ] && break; sleep 0.2; done
  probe:
    image: busybox:latest
    needs: []
    commands:
      - for i in $(seq 100); do [ -f ip.txt ] && break; sleep 0.2; done
      - sleep 1 && if nc -w 3 $(cat ip.txt) 8080 </dev/null | grep -q hi; then echo peer:reached; else echo peer:blocked; fi
      - touch done.txt
"#,
    );
    let run = p.run_json(&["--jobs", "2"]);
    run.assert_code(0);
    let d = run.describe();
    assert!(run.log_lines("listen").iter().any(|l| l == "self:reached"), "{d}");
    assert!(run.log_lines("probe").iter().any(|l| l == "peer:blocked"), "{d}");
    let net = docker(&[
        "network",
        "inspect",
        "orch-steps",
        "--format",
        r#"{{index .Options "com.docker.network.bridge.enable_icc"}} {{index .Labels "orch.shared"}}"#,
    ]);
    assert_eq!(net, "false steps", "the shared network stays, inter-container traffic off");
    assert_no_leftovers(&run.run_id());
}

/// The workspace of `orch ci` (as root, on the daemon's machine) is a copy-on-write layer
/// over a base that follows the tree: a run's writes reach neither the project nor the
/// next run; a change to the project reaches the next run; a file the project lost is gone.
#[test]
fn each_run_starts_from_the_tree_whatever_the_last_one_wrote() {
    require_docker!();
    let p = Project::new(
        r#"
steps:
  mess:
    image: busybox:latest
    commands:
      - echo "a=$(cat a.txt) b=$(cat sub/b.txt 2>/dev/null || echo none) new=$(cat new.txt 2>/dev/null || echo none)"
      - echo changed > a.txt && rm -rf sub && echo made > new.txt && mkdir -p d && echo x > d/y
"#,
    )
    .with("a.txt", "one\n")
    .with("sub/b.txt", "bee\n");
    let before = p.snapshot();
    let first = p.run_json(&[]);
    first.assert_code(0);
    assert!(first.log_lines("mess").iter().any(|l| l == "a=one b=bee new=none"), "{}", first.describe());
    assert_eq!(p.snapshot(), before, "the project is untouched");

    let second = p.run_json(&[]);
    second.assert_code(0);
    assert!(second.log_lines("mess").iter().any(|l| l == "a=one b=bee new=none"), "{}", second.describe());

    // The project changes between runs: the next run sees it.
    p.write("a.txt", "two, longer\n");
    std::fs::remove_file(p.path().join("sub/b.txt")).unwrap();
    let third = p.run_json(&[]);
    third.assert_code(0);
    assert!(third.log_lines("mess").iter().any(|l| l == "a=two, longer b=none new=none"), "{}", third.describe());
    let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
    if root {
        // The layered workspace was used (its base is there) and holds only the tree.
        let base = p.path().join(".orch/workspace/tree");
        assert_eq!(std::fs::read_to_string(base.join("a.txt")).unwrap(), "two, longer\n");
        assert!(!base.join("new.txt").exists() && !base.join("sub").exists() && !base.join("d").exists());
    }
    assert_no_leftovers(&third.run_id());
}

/// A step's output reaches stdout while the step runs, in both formats, when stdout is a
/// pipe (`orch ci | tee log`, a tool reading `--json`), not only when the step ends.
#[test]
fn output_is_live_on_a_pipe_in_both_formats() {
    require_docker!();
    let p = Project::new(
        "defaults:\n  image: busybox:latest\nsteps:\n  talk:\n    commands:\n      - echo first-line\n      - sleep 60\n",
    );
    for args in [&["--json"][..], &["--no-progress"][..]] {
        let mut orch = Running::spawn(p.ci(args));
        let line = orch.wait_line("the step's first line", Duration::from_secs(40), |l| {
            l.contains("first-line") && !l.contains("echo")
        });
        assert!(orch.alive(), "{args:?}: the run ended before its output was seen: {line}");
        orch.signal("INT");
        orch.finish(Duration::from_secs(60)).assert_code(130);
    }
}

/// Steps that follow one another share a network lane (a namespace set up once, see
/// `exec/docker.rs`), and that changes nothing a step can see: what a step left listening
/// is gone when the next one starts, and steps that run at once never share one.
#[test]
fn chained_steps_share_a_clean_lane_and_parallel_steps_do_not() {
    require_docker!();
    let p = Project::new(
        r#"
defaults:
  image: busybox:latest
steps:
  first:
    commands:
      - hostname > first-host
      # A server left running in the background when the step ends.
      - httpd -p 8080 -h .
  second:
    needs: [first]
    commands:
      # The same lane as `first`...
      - test "$(hostname)" = "$(cat first-host)"
      # ...and nothing of `first` in it: its port is free.
      - httpd -f -p 8080 -h . & sleep 1; kill -0 $!
  left:
    needs: [second]
    commands:
      - httpd -f -p 9090 -h . & sleep 3; kill -0 $!
  right:
    needs: [second]
    commands:
      - httpd -f -p 9090 -h . & sleep 3; kill -0 $!
"#,
    );
    let run = p.run_json(&[]);
    run.assert_code(0);
    for s in ["first", "second", "left", "right"] {
        assert_eq!(run.status(s), "passed", "{}", run.describe());
    }
    assert_no_leftovers(&run.run_id());
}
