//! The dashboard in a real browser: `orch serve` runs a real pipeline in Docker (steps that
//! pass, in parallel, one that fails, one skipped when planned and one skipped because what it needs
//! failed), then Debian's headless chromium loads the runs list and the run page, and the
//! test checks the DOM as the page's script left it (steps and statuses, skip reasons, the
//! failed step's log streamed over SSE with ANSI colours, a masked secret, artifacts) and
//! saves screenshots at laptop and phone sizes.
//!
//! Needs `ORCH_DOCKER_TESTS=1` and `/usr/bin/chromium` (`scripts/setup` installs it);
//! without either it returns at once with a note. Screenshots go to
//! `target/tmp/dashboard/` (the one in `docs/dashboard.png` is a copy of `run-laptop.png`;
//! `docs/dora.png` and `docs/environments.png` of `dora-laptop.png` and
//! `environments-laptop.png`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod serve_support;

use serve_support::*;

const CHROMIUM: &str = "/usr/bin/chromium";

const PIPELINE: &str = "\
defaults:
  image: busybox:latest
  timeout: 2m
stages: [build, test, deploy]
steps:
  build:
    stage: build
    secrets: [DEPLOY_TOKEN]
    commands:
      - sh ci/build.sh
    artifacts: [dist/]
  lint:
    stage: build
    commands:
      - sleep 2
      - echo 'no warnings'
  test:
    stage: test
    needs: [build]
    commands:
      - sh ci/test.sh
  package:
    stage: deploy
    needs: [test]
    commands:
      - echo packaging
  deploy:
    stage: deploy
    needs: [test]
    when: { branch: release }
    commands:
      - echo deploying
";
const BUILD: &str = "sleep 1\nprintf '\\033[1;32mcompiled\\033[0m in 0.1s\\n'\n\
echo \"token is $DEPLOY_TOKEN\"\n\
mkdir -p dist && echo 'the app' > dist/app.txt\n";
const TEST: &str = "echo 'running 3 tests'\nsleep 1\nprintf '\\033[31mtests failed: 1 of 3\\033[0m\\n'\nexit 3\n";
const SECRET_VALUE: &str = "s3cr3t-deploy-token-value";

/// Runs chromium headless with `args` on `url`; its stdout (the DOM with `--dump-dom`).
fn chromium(profile: &Path, args: &[&str], url: &str) -> String {
    let out = profile.with_extension(format!("out{}", std::process::id()));
    let file = std::fs::File::create(&out).unwrap();
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium {args:?} {url}: {status}");
            break;
        }
        if start.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium {args:?} {url} did not finish in 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    text
}

fn screenshot(profile: &Path, file: &Path, size: &str, url: &str) {
    let _ = std::fs::remove_file(file);
    chromium(profile, &[&format!("--screenshot={}", file.display()), &format!("--window-size={size}")], url);
    let png = std::fs::read(file).unwrap_or_else(|e| panic!("no screenshot {}: {e}", file.display()));
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} is not a real screenshot", file.display());
}

/// The element of the DOM that has `attrs` (in that order, as the page writes them).
fn has(dom: &str, attrs: &str) -> bool {
    dom.contains(attrs)
}

#[test]
fn the_dashboard_shows_a_real_run_in_chromium() {
    require_docker!();
    if !Path::new(CHROMIUM).exists() {
        eprintln!("skipped: {CHROMIUM} is missing (scripts/setup installs Debian's chromium)");
        return;
    }
    let t0 = Instant::now();
    let git = GitServer::start();
    let sha = git.commit(
        None,
        &[(".orch.yml", PIPELINE), ("ci/build.sh", BUILD), ("ci/test.sh", TEST)],
        "Add the login form",
    );
    git.set_ref(&sha, "refs/heads/main");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let tmp = temp_dir("orch-dashboard-");
    let secrets = tmp.path().join("secrets.env");
    std::fs::write(&secrets, format!("DEPLOY_TOKEN={SECRET_VALUE}\n")).unwrap();
    let orch = Orch::start(orch::server::config::ServeArgs {
        secrets_file: Some(secrets),
        api_token: Some("dashboard-test-token".into()),
        ..token_args(&gh, &git)
    });

    let id = orch.deliver("push", &push_event("main", ZERO_SHA, &sha)).run_id();
    let run = orch.wait_run_done(id);
    assert_eq!(run["run"]["status"], "failure", "{run:#}");
    let ran = Instant::now();

    let profile = tmp.path().join("profile");
    // The runs list.
    let list = chromium(&profile, &["--dump-dom"], &orch.url("/"));
    assert!(has(&list, &format!("data-run=\"{id}\" data-status=\"failure\"")), "{list}");
    let title = run["run"]["title"].as_str().unwrap_or("?");
    assert!(list.contains(title) && list.contains(&sha[..8]), "{title}:\n{list}");

    // The run page: steps and statuses, skip reasons, the failed step's log (opened by the
    // page's script, streamed over SSE), artifacts, the buttons a failed run has.
    let page = chromium(&profile, &["--dump-dom"], &orch.url(&format!("/runs/{id}")));
    for (step, status) in
        [("build", "passed"), ("lint", "passed"), ("test", "failed"), ("package", "skipped"), ("deploy", "skipped")]
    {
        assert!(has(&page, &format!("data-step=\"{step}\" data-status=\"{status}\"")), "{step} {status}:\n{page}");
    }
    assert!(has(&page, "data-status=\"failure\""), "{page}");
    assert!(page.contains("data-skip=\"deploy\"") && page.contains("release"), "the plan's skip reason:\n{page}");
    assert!(page.contains("data-skip=\"package\""), "the run's skip reason:\n{page}");
    let log = page.split("id=\"log\"").nth(1).unwrap_or("");
    assert!(log.contains("running 3 tests"), "the failed step's log is shown:\n{page}");
    assert!(log.contains("<span class=\"c31\">tests failed: 1 of 3</span>"), "ANSI red:\n{log}");
    assert!(has(&page, "class=\"g-row k-fail sel\"") || has(&page, "k-fail sel"), "test is selected:\n{page}");
    assert!(page.contains(&format!("href=\"/api/runs/{id}/artifacts/build/dist/app.txt\"")), "{page}");
    assert!(!page.contains("id=\"rerun-failed\" hidden"), "a failed run offers re-run failed:\n{page}");

    // Another step by its URL: colours, and the secret masked.
    let build = chromium(&profile, &["--dump-dom"], &orch.url(&format!("/runs/{id}#step=build")));
    let log = build.split("id=\"log\"").nth(1).unwrap_or("");
    assert!(log.contains("<span class=\"b c32\">compiled</span> in 0.1s"), "ANSI bold green:\n{log}");
    assert!(log.contains("token is ***") && !build.contains(SECRET_VALUE), "the secret is masked:\n{log}");

    // A re-run of the failed steps (through the API, as the page's button does): its page
    // says what it re-runs, and the step that passed is kept.
    let auth = [("Authorization", "Bearer dashboard-test-token")];
    let r = orch.request("POST", &format!("/api/runs/{id}/rerun?failed=true"), &auth, b"");
    assert_eq!(r.status, 202, "{}", r.text());
    let again = r.json()["run"].as_i64().unwrap();
    assert_eq!(orch.wait_run_done(again)["run"]["status"], "failure");
    let page = chromium(&profile, &["--dump-dom"], &orch.url(&format!("/runs/{again}")));
    assert!(page.contains("Re-run of the failed steps of") && page.contains(&format!("href=\"/runs/{id}\"")), "{page}");
    for (step, status) in [("build", "passed"), ("test", "failed")] {
        assert!(has(&page, &format!("data-step=\"{step}\" data-status=\"{status}\"")), "{step} {status}:\n{page}");
    }

    // Screenshots, laptop and phone.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    screenshot(&profile, &dir.join("run-laptop.png"), "1280,900", &orch.url(&format!("/runs/{id}")));
    screenshot(&profile, &dir.join("run-phone.png"), "390,844", &orch.url(&format!("/runs/{id}")));
    screenshot(&profile, &dir.join("runs-laptop.png"), "1280,900", &orch.url("/"));
    eprintln!(
        "dashboard: run took {:.1}s, browser checks {:.1}s; screenshots in {}",
        (ran - t0).as_secs_f64(),
        ran.elapsed().as_secs_f64(),
        dir.display()
    );
    gh.assert_no_violations();
}

/// A page opened while its run runs follows it: the step that was running when the page
/// loaded ends on the page (a live update), and its log holds the lines written after.
#[test]
fn the_run_page_follows_a_running_run() {
    require_docker!();
    if !Path::new(CHROMIUM).exists() {
        eprintln!("skipped: {CHROMIUM} is missing (scripts/setup installs Debian's chromium)");
        return;
    }
    const LIVE: &str = "\
defaults:
  image: busybox:latest
steps:
  slow:
    commands:
      - echo started
      - sleep 5
      - echo finished-slow
  after:
    needs: [slow]
    commands:
      - sleep 4
";
    let git = GitServer::start();
    let sha = git.commit(None, &[(".orch.yml", LIVE)], "slow");
    git.set_ref(&sha, "refs/heads/main");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let orch = Orch::start(token_args(&gh, &git));
    let tmp = temp_dir("orch-dashboard-live-");
    let id = orch.deliver("push", &push_event("main", ZERO_SHA, &sha)).run_id();
    orch.wait_step_running(id, "slow");
    let served = orch.get(&format!("/runs/{id}")).text();
    assert!(has(&served, "data-step=\"slow\" data-status=\"running\""), "{served}");
    // The log's stream holds the virtual clock until the step ends; the page's next poll
    // then shows it passed.
    // The step is named in the address: on a loaded machine the browser may start only
    // once `slow` ended and `after` runs, which the page would otherwise show.
    let dom = chromium(&tmp.path().join("profile"), &["--dump-dom"], &orch.url(&format!("/runs/{id}#step=slow")));
    assert!(has(&dom, "data-step=\"slow\" data-status=\"passed\""), "the step's end, live:\n{dom}");
    let log = dom.split("id=\"log\"").nth(1).unwrap_or("");
    assert!(log.contains("started") && log.contains("finished-slow"), "the log, followed:\n{log}");
    orch.wait_run_done(id);
}

/// Without Docker or a browser: the pages' answers, a run stopped before its steps (its
/// error shown), unknown runs, and a private server.
#[test]
fn pages_answer_for_runs_without_steps_and_unknown_runs() {
    let orch = Orch::start(base_args());
    let empty = orch.get("/");
    assert_eq!(empty.status, 200);
    assert!(empty.text().contains("No runs yet"), "{}", empty.text());

    // Clones go to a closed port: the run ends in error before any step.
    let id = orch.deliver("push", &push_event("main", ZERO_SHA, &"ab".repeat(20))).run_id();
    let run = orch.wait_run_done(id);
    assert_eq!(run["run"]["status"], "error", "{run:#}");
    let page = orch.get(&format!("/runs/{id}"));
    assert_eq!((page.status, page.header("content-type")), (200, Some("text/html; charset=utf-8")));
    let html = page.text();
    assert!(html.contains("data-status=\"error\"") && html.contains("<pre class=\"errtxt\""), "{html}");
    assert!(html.contains("No step ran."), "{html}");
    let rows = orch.get("/ui/runs").text();
    assert!(rows.contains(&format!("data-run=\"{id}\" data-status=\"error\"")), "{rows}");
    let parts = orch.get_json(&format!("/ui/runs/{id}"));
    assert_eq!((&parts["status"], &parts["done"]), (&serde_json::json!("error"), &serde_json::json!(true)));

    assert_eq!(orch.get("/runs/999").status, 404);
    assert_eq!(orch.get("/runs/abc").status, 400);
    assert_eq!(orch.get("/ui/runs/999").status, 404);

    let private = Orch::start(orch::server::config::ServeArgs {
        api_token: Some("t".into()),
        api_private: Some(true),
        ..base_args()
    });
    // A private server's pages send people to sign in; the fragments the pages fetch are
    // refused (tests/api.rs follows the sign-in through).
    for path in ["/", "/runs/1"] {
        assert_eq!(private.get(path).status, 303, "{path}");
    }
    for path in ["/ui/runs", "/ui/runs/1"] {
        assert_eq!(private.get(path).status, 401, "{path}");
    }
}

/// The delivery page in a real browser: deployments of a real pipeline (one deployed, one
/// failed, a fix), an incident from an `issues` delivery with the incident label; the page
/// shows the four measures, the charts as SVG and the definitions; a screenshot.
#[test]
fn the_delivery_page_shows_the_measures_and_charts() {
    require_docker!();
    if !Path::new(CHROMIUM).exists() {
        eprintln!("skipped: {CHROMIUM} is missing (scripts/setup installs Debian's chromium)");
        return;
    }
    const DEPLOYS: &str = "\
defaults:
  image: busybox:latest
steps:
  test:
    commands:
      - echo testing
  deploy:
    needs: [test]
    environment: { name: production, url: https://app.example.com }
    commands:
      - sh deploy.sh
";
    let git = GitServer::start();
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let orch = Orch::start(token_args(&gh, &git));
    let mut parent: Option<String> = None;
    let mut runs = Vec::new();
    for (i, script) in ["echo ok", "exit 1", "echo fixed"].iter().enumerate() {
        let sha = git.commit(parent.as_deref(), &[(".orch.yml", DEPLOYS), ("deploy.sh", script)], &format!("c{i}"));
        git.set_ref(&sha, "refs/heads/main");
        // Pushed ten minutes ago (the fixture's `pushed_at` is from 2019): the lead time.
        let mut push = push_event("main", parent.as_deref().unwrap_or(ZERO_SHA), &sha);
        push["repository"]["pushed_at"] = serde_json::json!(orch::clock::now_secs() - 600);
        let id = orch.deliver("push", &push).run_id();
        orch.wait_run_done(id);
        runs.push(id);
        parent = Some(sha);
    }
    let deps = orch.get_json("/api/deployments?environment=production")["deployments"].clone();
    assert_eq!(deps.as_array().map(Vec::len), Some(3), "{deps:#}");
    // An incident naming the first deployment, opened and closed an hour apart.
    let first = deps[2]["id"].as_i64().unwrap();
    let at = |from_now: i64| orch::clock::format_utc(orch::clock::now_secs() + from_now, "%Y-%m-%dT%H:%M:%SZ");
    let issue = |labels: serde_json::Value, number: u64| {
        serde_json::json!({
            "action": "closed",
            "issue": {
                "number": number, "title": "checkout is down", "html_url": "https://github.com/acme/hello/issues/9",
                "created_at": at(-2 * 3600), "closed_at": at(-3600),
                "labels": labels, "body": format!("Users cannot pay.\nDeployment: {first}\n"),
            },
            "repository": push_event("main", ZERO_SHA, parent.as_deref().unwrap())["repository"].clone(),
        })
    };
    let r = orch.deliver("issues", &issue(serde_json::json!([{"name": "bug"}]), 8)).response;
    assert_eq!(r.json()["status"], "ignored", "{}", r.text());
    let r = orch.deliver("issues", &issue(serde_json::json!([{"name": "incident"}]), 9)).response;
    assert_eq!(r.json()["status"], "incident", "{}", r.text());

    let api = orch.get_json("/api/dora?days=30&environment=production");
    let d = &api["dora"];
    // Deployed twice with success, failed once; the failed one and the one the incident
    // names are change failures.
    assert_eq!((&d["deployments"], &d["changes"], &d["failed_changes"]), (&json(2), &json(3), &json(2)), "{api:#}");
    assert_eq!(d["lead_times"], 2, "{api:#}");
    let lead = d["lead_time_median"].as_f64().unwrap();
    assert!((600.0..3600.0).contains(&lead), "pushed ten minutes before it deployed: {api:#}");
    // The incident was open an hour; the failed deployment was restored by the next.
    assert_eq!((&d["restored"], &d["unrestored"]), (&json(2), &json(0)), "{api:#}");
    assert!(api["definitions"]["Lead time for changes"].as_str().unwrap().contains("pushed_at"));

    let tmp = temp_dir("orch-dashboard-dora-");
    let profile = tmp.path().join("profile");
    let page = chromium(&profile, &["--dump-dom"], &orch.url("/dora?environment=production"));
    assert!(page.contains("id=\"weekly\"") && page.contains("<rect class=\"ok\""), "the weekly bars:\n{page}");
    assert!(page.contains("id=\"durations\"") && page.contains("<polyline"), "the durations line:\n{page}");
    assert!(page.contains("67%") && page.contains("2 of 3 deployments"), "the failure rate:\n{page}");
    assert!(page.contains("Time to restore") && page.contains("Definitions"), "{page}");
    let envs = chromium(&profile, &["--dump-dom"], &orch.url("/environments"));
    assert!(envs.contains("data-environment=\"production\"") && envs.contains("Roll back"), "{envs}");
    let run_page = chromium(&profile, &["--dump-dom"], &orch.url(&format!("/runs/{}", runs[1])));
    assert!(run_page.contains("id=\"deployments\"") && run_page.contains("href=\"/environments?repo="), "{run_page}");
    assert!(
        run_page.contains("class=\"stage env\"") && run_page.contains("→ production"),
        "the step's link:\n{run_page}"
    );

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    screenshot(&profile, &dir.join("dora-laptop.png"), "1280,1400", &orch.url("/dora?environment=production"));
    screenshot(&profile, &dir.join("environments-laptop.png"), "1280,900", &orch.url("/environments"));
    gh.assert_no_violations();
}

fn json(n: i64) -> serde_json::Value {
    serde_json::json!(n)
}

#[test]
fn the_run_page_shows_a_waiting_gate_who_approved_and_the_buttons_to_vote() {
    require_docker!();
    if !Path::new(CHROMIUM).exists() {
        eprintln!("skipped: {CHROMIUM} is missing (scripts/setup installs Debian's chromium)");
        return;
    }
    const GATED: &str = "\
environments:
  production:
    approval: { approvers: [alice, bob], required: 2 }
steps:
  ship:
    image: busybox:latest
    environment: production
    commands: [echo shipped]
";
    let git = GitServer::start();
    let sha = git.commit(None, &[(".orch.yml", GATED)], "gated");
    git.set_ref(&sha, "refs/heads/main");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let orch = Orch::start(token_args(&gh, &git));
    let tokens = [approver(&orch, "alice"), approver(&orch, "bob")];
    let id = orch.deliver("push", &push_event("main", ZERO_SHA, &sha)).run_id();
    let approve = |token: &str| {
        let auth = format!("Bearer {token}");
        let r = orch.request("POST", &format!("/api/runs/{id}/approve"), &[("Authorization", &auth)], b"");
        assert_eq!(r.status, 200, "{}", r.text());
    };
    wait_for(Duration::from_secs(60), "the gate to wait", || {
        let v = orch.get_json(&format!("/api/runs/{id}/gates"));
        if v["gates"][0]["status"] == "waiting" { Ok(()) } else { Err(v.to_string()) }
    });
    approve(&tokens[0]);
    let tmp = temp_dir("orch-dashboard-gate-");
    let dom = chromium(&tmp.path().join("profile"), &["--dump-dom"], &orch.url(&format!("/runs/{id}")));
    assert!(has(&dom, "id=\"gates-card\">"), "the gates are shown:\n{dom}");
    let gates = dom.split("id=\"gates\"").nth(1).unwrap_or("");
    assert!(gates.contains("waiting · approved by alice · 2 of alice, bob needed"), "{gates}");
    assert!(gates.contains("data-vote=\"approve\"") && gates.contains("data-vote=\"reject\""), "{gates}");
    approve(&tokens[1]);
    let run = orch.wait_run_done(id);
    assert_eq!(run["run"]["status"], "success", "{run:#}");
    let dom = chromium(&tmp.path().join("profile"), &["--dump-dom"], &orch.url(&format!("/runs/{id}")));
    let gates = dom.split("id=\"gates\"").nth(1).unwrap_or("");
    assert!(gates.contains("approved · approved by alice, bob"), "{gates}");
    assert!(!gates.contains("data-vote="), "no buttons once decided: {gates}");
}
