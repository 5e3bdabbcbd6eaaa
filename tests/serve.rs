//! End-to-end tests of `orch serve` with real parts: deliveries built from GitHub's example
//! payloads and signed as GitHub signs them, a `git daemon` serving the repository on
//! loopback, a fake GitHub REST API that checks every request body against GitHub's
//! published request schemas (and answers 422 as GitHub would), Docker for the steps.
//!
//! Tests that run steps need `ORCH_DOCKER_TESTS=1` (and the local `busybox:latest` image);
//! without it they return at once with a note. The intake tests and those whose runs end
//! before any step (bad signatures, malformed bodies, a clone that fails, a missing or
//! invalid `.orch.yml`) always run. Every test has its own temp dirs, ports, git daemon,
//! fake GitHub and server, so they run in parallel; servers are stopped and their Docker
//! objects removed even when a test fails. See `serve_support` for the parts.

use std::process::Command;
use std::time::{Duration, Instant};

use orch::server::config::ServeArgs;
use orch::server::webhook::sign;
use serde_json::{Value, json};

mod serve_support;

use serve_support::*;

const PIPELINE: &str = "\
defaults:
  image: busybox:latest
  timeout: 2m
steps:
  build:
    commands:
      - sh ci/build.sh
  test:
    needs: [build]
    commands:
      - sh ci/test.sh
";
const BUILD_OK: &str = "echo building\necho built > out.txt\n";
const TEST_OK: &str = "test \"$(cat out.txt)\" = built\necho tests passed\n";
const TEST_FAILS: &str = "echo 'tests failed: 1 of 3'\nexit 3\n";

/// The two-step project with these scripts.
fn project<'a>(build: &'a str, test: &'a str) -> [(&'static str, &'a str); 3] {
    [(".orch.yml", PIPELINE), ("ci/build.sh", build), ("ci/test.sh", test)]
}

fn statuses_states(statuses: &[Value]) -> Vec<&str> {
    statuses.iter().map(|s| s["state"].as_str().unwrap_or("?")).collect()
}

// ---------------------------------------------------------------------------------------
// Without Docker

/// The fake's schema checks refuse what GitHub refuses, or the other tests prove nothing.
#[test]
fn the_fake_github_refuses_what_github_refuses() {
    let spec = openapi();
    let check = |op: &str, body: Value| schema::validate(spec, &spec[op]["requestBody"]["schema"], &body, true);
    let sha = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";
    let ok = |op: &str, body: Value| {
        let e = check(op, body.clone());
        assert!(e.is_empty(), "{op} {body}: {e:?}");
    };
    let bad = |op: &str, body: Value, want: &str| {
        let e = check(op, body.clone());
        assert!(e.iter().any(|e| e.contains(want)), "{op} {body}: wanted an error with {want:?}, got {e:?}");
    };
    ok(
        OP_STATUS,
        json!({"state": "pending", "target_url": "http://x/runs/1", "description": "Queued", "context": "orch"}),
    );
    ok(OP_STATUS, json!({"state": "success", "target_url": null, "description": null}));
    bad(OP_STATUS, json!({"state": "ok"}), "is not one of");
    bad(OP_STATUS, json!({"description": "no state"}), "`state` is required");
    bad(OP_STATUS, json!({"state": "success", "description": 5}), "expected string");
    bad(OP_STATUS, json!({"state": "success", "target": "http://x"}), "not a property");
    let long = json!({"state": "success", "description": "x".repeat(141)});
    assert_eq!(github_rules(OP_STATUS, &long).len(), 1);

    ok(
        OP_CHECK_CREATE,
        json!({"name": "orch", "head_sha": sha, "status": "queued", "details_url": "http://x", "external_id": "1"}),
    );
    bad(OP_CHECK_CREATE, json!({"name": "orch"}), "`head_sha` is required");
    bad(OP_CHECK_CREATE, json!({"name": "orch", "head_sha": sha, "output": {"title": "t"}}), "`summary` is required");
    bad(OP_CHECK_CREATE, json!({"name": "orch", "head_sha": sha, "conclusion": "great"}), "is not one of");
    bad(OP_CHECK_CREATE, json!({"name": "orch", "head_sha": sha, "started_at": "yesterday"}), "not a date-time");
    let annotation =
        json!({"path": "a.rs", "start_line": 1, "end_line": 1, "annotation_level": "failure", "message": "m"});
    let many = vec![annotation.clone(); 51];
    bad(OP_CHECK_UPDATE, json!({"output": {"title": "t", "summary": "s", "annotations": many}}), "maxItems 50");
    bad(
        OP_CHECK_UPDATE,
        json!({"output": {"summary": "s", "annotations": [{"path": "a.rs"}]}}),
        "`message` is required",
    );
    ok(OP_CHECK_UPDATE, json!({"status": "in_progress", "started_at": "2026-11-26T10:00:00Z"}));
    ok(OP_CHECK_UPDATE, json!({"output": {"title": "t", "summary": "s", "annotations": [annotation]}}));
    ok(
        OP_CHECK_UPDATE,
        json!({"status": "completed", "conclusion": "failure", "completed_at": "2026-11-26T10:00:00Z",
               "output": {"title": "t", "summary": "s"}}),
    );
    bad(OP_CHECK_UPDATE, json!({"status": "completed"}), "anyOf");
    bad(OP_CHECK_UPDATE, json!({"status": "waiting"}), "anyOf");
    ok(OP_ACCESS_TOKEN, json!({}));
    bad(OP_ACCESS_TOKEN, json!({"repository_ids": ["hello"]}), "expected integer");

    assert!(schema::is_date_time("2026-11-26T10:00:00Z") && schema::is_date_time("2026-11-26T10:00:00.5+01:00"));
    assert!(!schema::is_date_time("2026-11-26 10:00:00") && !schema::is_date_time("1764151200"));
    let (op, params) = match_operation("POST", &format!("/repos/acme/hello/statuses/{sha}")).unwrap();
    assert_eq!((op.as_str(), params["sha"].as_str()), (OP_STATUS, sha));
    assert_eq!(match_operation("PATCH", "/repos/a/b/check-runs/7").unwrap().0, OP_CHECK_UPDATE);
    assert!(match_operation("DELETE", "/repos/a/b/check-runs/7").is_none());
}

#[test]
fn bad_or_missing_signatures_are_refused_and_nothing_is_stored() {
    let orch = Orch::start(base_args());
    let body = serde_json::to_vec(&push_event("main", ZERO_SHA, &"a".repeat(40))).unwrap();
    let good = sign(SECRET.as_bytes(), &body);
    let mut tampered = body.clone();
    let at = tampered.len() / 2;
    tampered[at] ^= 1;
    let cases: Vec<(&str, &[u8], Option<String>)> = vec![
        ("signed with another secret", &body, Some(sign(b"another secret", &body))),
        ("the signature of other bytes", &body, Some(sign(SECRET.as_bytes(), b"{}"))),
        ("a body changed after signing", &tampered, Some(good.clone())),
        ("not hex", &body, Some("sha256=zz".into())),
        ("too short", &body, Some(good[..good.len() - 2].to_string())),
        ("the legacy SHA-1 header value", &body, Some(format!("sha1={}", "0".repeat(40)))),
        ("no sha256= prefix", &body, Some(good["sha256=".len()..].to_string())),
        ("empty", &body, Some(String::new())),
        ("missing", &body, None),
    ];
    for (what, bytes, sig) in &cases {
        let r = orch.post_delivery("push", &new_guid(), bytes, sig.as_deref(), "application/json");
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert!(r.json()["error"].as_str().unwrap().contains("X-Hub-Signature-256"), "{what}: {}", r.text());
    }
    assert!(orch.runs().is_empty());
    assert_eq!(orch.count("SELECT COUNT(*) FROM deliveries"), 0, "a refused delivery was stored");
    assert_eq!(orch.count("SELECT COUNT(*) FROM runs"), 0);

    // The same bytes with the right signature are taken: the refusals were the signature's.
    let r = orch.post_delivery("push", &new_guid(), &body, Some(&good), "application/json");
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(orch.count("SELECT COUNT(*) FROM deliveries"), 1);
}

#[test]
fn malformed_oversized_and_non_json_deliveries_are_refused() {
    let orch = Orch::start(base_args());
    let post = |event: &str, body: &[u8], content_type: &str| {
        orch.post_delivery(event, &new_guid(), body, Some(&sign(SECRET.as_bytes(), body)), content_type)
    };

    let r = post("push", b"{\"ref\": \"refs/heads/main\", \"after\": ", "application/json");
    assert_eq!(r.status, 400, "malformed JSON: {}", r.text());

    // GitHub sends up to 25 MB: that is taken; 26 MiB is refused without reading it all.
    let padded = |size: usize| {
        let mut b = b"{\"zen\":\"".to_vec();
        b.resize(size - 16, b'a');
        b.extend_from_slice(b"\",\"hook_id\":1}  ");
        b
    };
    let r = post("ping", &padded(25_000_000), "application/json");
    assert_eq!(r.status, 200, "a 25 MB delivery: {}", r.text());
    let r = post("ping", &padded(26 << 20), "application/json");
    assert_eq!(r.status, 413, "a 26 MiB delivery: {}", r.text());

    // The webhook's other content type wraps the JSON in a form field.
    let r = post("push", b"payload=%7B%22zen%22%3A%22x%22%7D", "application/x-www-form-urlencoded");
    assert_eq!(r.status, 415, "form-encoded: {}", r.text());
    let r = post("push", b"{}", "text/plain");
    assert_eq!(r.status, 415, "text/plain: {}", r.text());

    // Without X-GitHub-Event there is nothing to act on.
    let body = b"{}";
    let sig = sign(SECRET.as_bytes(), body);
    let guid = new_guid();
    let headers = [("Content-Type", "application/json"), ("X-GitHub-Delivery", &guid), ("X-Hub-Signature-256", &sig)];
    let r = orch.request("POST", "/webhooks/github", &headers, body);
    assert_eq!(r.status, 400, "no event header: {}", r.text());

    assert!(orch.runs().is_empty());
    assert_eq!(orch.count("SELECT COUNT(*) FROM deliveries"), 1, "only the 25 MB ping is stored");
}

#[test]
fn ping_other_events_deletions_and_foreign_repositories_start_no_run() {
    let orch = Orch::start(ServeArgs { allow_repos: vec![REPO.into()], ..base_args() });
    let sha = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";

    let r = orch.deliver("ping", &retarget(fixture("ping.payload.json"))).response;
    assert_eq!((r.status, &r.json()["status"]), (200, &json!("pong")), "{}", r.text());
    // GitHub pings an organization hook when it is made: no repository, still 200.
    let r = orch.deliver("ping", &fixture("ping.with-organization.payload.json")).response;
    assert_eq!(r.status, 200, "{}", r.text());

    let ignored = |event: &str, payload: &Value, why: &str| {
        let r = orch.deliver(event, payload).response;
        assert!((200..300).contains(&r.status), "{event}: {}", r.text());
        let j = r.json();
        assert_eq!(j["status"], "ignored", "{event}: {j}");
        assert!(j["reason"].as_str().unwrap().contains(why), "{event}: {j}");
    };
    ignored("watch", &push_event("main", ZERO_SHA, sha), "not one orch acts on");
    // An `issues` delivery is an incident only with its label (the rest: tests/dashboard.rs).
    let mut no_issue = push_event("main", ZERO_SHA, sha);
    no_issue["action"] = json!("opened");
    ignored("issues", &no_issue, "without an issue");
    ignored("check_run", &retarget(fixture("check_run.completed.payload.json")), "action `completed`");
    ignored("push", &retarget(fixture("push.payload.json")), "deleted");
    let mut foreign = push_event("main", ZERO_SHA, sha);
    set_repository(&mut foreign["repository"], "someone/else");
    ignored("push", &foreign, "allow-list");
    let mut foreign_pr = pr_event("opened", 3, "feature", sha, "main", sha);
    set_repository(&mut foreign_pr["repository"], "someone/else");
    ignored("pull_request", &foreign_pr, "allow-list");

    assert!(orch.runs().is_empty(), "{:#?}", orch.runs());
    // Each was recorded as received.
    assert_eq!(orch.count("SELECT COUNT(*) FROM deliveries"), 8);
    assert_eq!(orch.count("SELECT COUNT(*) FROM deliveries WHERE outcome LIKE 'ignored:%'"), 6);
}

#[test]
fn a_redelivery_gives_one_run() {
    // No clone succeeds here (base_args sends clones to a closed port); the run's end is
    // not the point.
    let orch = Orch::start(base_args());
    let payload = push_event("main", ZERO_SHA, &"b".repeat(40));
    let guid = new_guid();
    let first = orch.deliver_as("push", &guid, &payload);
    let id = first.run_id();
    for _ in 0..2 {
        let again = orch.deliver_as("push", &guid, &payload).response;
        assert_eq!((again.status, &again.json()["status"]), (200, &json!("duplicate")), "{}", again.text());
    }
    orch.wait_run_done(id);
    let runs = orch.runs();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0]["delivery_id"], json!(guid));
    assert_eq!(orch.count("SELECT COUNT(*) FROM deliveries"), 1);
}

#[test]
fn a_clone_that_fails_gives_an_error_status() {
    let git = GitServer::start();
    let sha = git.on_branch("main", &project(BUILD_OK, TEST_OK), "first");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    // The rewrite sends the clone to a path the git server does not have.
    let wrong = format!("https://github.com/=git://127.0.0.1:{}/nowhere/", git.port);
    let orch = Orch::start(ServeArgs { clone_rewrite: vec![wrong], ..token_args(&gh, &git) });

    let id = orch.deliver("push", &push_event("main", ZERO_SHA, &sha)).run_id();
    let run = orch.wait_run_done(id);
    assert_eq!(run["run"]["status"], "error", "{run:#}");
    assert!(run["run"]["reason"].as_str().unwrap().starts_with("could not fetch the commit"), "{run:#}");
    // Queued, then the end: the run never reached an executor (as GitHub's own runs that
    // fail before a runner takes them), so nothing says it was running.
    let statuses = gh.wait_final_status(&sha, "orch (push)", id);
    assert_eq!(statuses_states(&statuses), ["pending", "error"], "{statuses:#?}");
    let last = &statuses[1]["description"];
    assert!(last.as_str().unwrap().starts_with("could not fetch the commit"), "{last}");
    // The run page (the status links to it) shows git's error.
    let page = orch.get(&format!("/runs/{id}"));
    assert_eq!(page.status, 200);
    assert!(page.text().contains("nowhere/acme/hello.git"), "{}", page.text());
    gh.assert_no_violations();
}

/// The branch was force-pushed between the delivery and the fetch: the delivered commit
/// is in the repository no more. The run is an error, with git's reason, and says so on
/// the commit.
#[test]
fn a_commit_gone_before_the_fetch_gives_an_error_status() {
    let git = GitServer::start();
    git.on_branch("main", &project(BUILD_OK, TEST_OK), "first");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let orch = Orch::start(token_args(&gh, &git));
    let gone = "0123456789abcdef0123456789abcdef01234567";

    let id = orch.deliver("push", &push_event("main", ZERO_SHA, gone)).run_id();
    let run = orch.wait_run_done(id);
    assert_eq!(run["run"]["status"], "error", "{run:#}");
    let reason = run["run"]["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("could not fetch the commit") && reason.contains(gone), "{run:#}");
    let statuses = gh.wait_final_status(gone, "orch (push)", id);
    assert_eq!(statuses.last().unwrap()["state"], "error", "{statuses:#?}");
    gh.assert_no_violations();
}

#[test]
fn a_missing_or_invalid_orch_yml_gives_a_failure_status() {
    let git = GitServer::start();
    let missing = git.on_branch("nopipeline", &[("README.md", "no pipeline here\n")], "no pipeline");
    let invalid_yml = "steps:\n  build:\n    image: busybox:latest\n    comands: [true]\n    needs: [nosuchstep]\n";
    let invalid = git.on_branch("invalid", &[(".orch.yml", invalid_yml)], "broken pipeline");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let orch = Orch::start(token_args(&gh, &git));

    let a = orch.deliver("push", &push_event("nopipeline", ZERO_SHA, &missing)).run_id();
    let b = orch.deliver("push", &push_event("invalid", ZERO_SHA, &invalid)).run_id();
    let (ra, rb) = (orch.wait_run_done(a), orch.wait_run_done(b));
    assert_eq!(ra["run"]["status"], "failure", "{ra:#}");
    assert_eq!(rb["run"]["status"], "failure", "{rb:#}");

    let sa = gh.wait_final_status(&missing, "orch (push)", a);
    // Queued, then the end: neither reached an executor.
    assert_eq!(statuses_states(&sa), ["pending", "failure"]);
    assert_eq!(sa[1]["description"], format!("no .orch.yml in {REPO} at {}", &missing[..8]));
    let sb = gh.wait_final_status(&invalid, "orch (push)", b);
    assert_eq!(statuses_states(&sb), ["pending", "failure"]);
    let desc = sb[1]["description"].as_str().unwrap();
    assert!(desc.starts_with("invalid .orch.yml: ") && desc.contains("see the run page"), "{desc}");
    // The page lists the problems.
    let page = orch.get(&format!("/runs/{b}")).text();
    assert!(page.contains("comands") && page.contains("nosuchstep"), "{page}");
    gh.assert_no_violations();
}

/// The default branch's `on.schedule` is recorded when its push is planned (the API and
/// the dashboard show the next times), replaced by a later push, and another branch's is
/// not. Nothing executes (no executor here): the push itself is not triggered.
#[test]
fn the_default_branch_s_schedules_are_recorded_from_its_pushes() {
    let git = GitServer::start();
    let scheduled = "on:\n  schedule:\n    - {cron: \"0 3 * * 1-5\", timezone: Europe/Berlin, name: nightly}\n\
                     steps:\n  a: {image: busybox:latest, commands: [\"true\"]}\n";
    let first = git.on_branch("main", &[(".orch.yml", scheduled)], "schedule");
    let other = git.on_branch("topic", &[(".orch.yml", &scheduled.replace("nightly", "topic"))], "topic");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let orch = Orch::start(ServeArgs { local_capacity: Some(0), ..token_args(&gh, &git) });
    let push = |branch: &str, sha: &str| {
        let mut p = push_event(branch, ZERO_SHA, sha);
        p["repository"]["default_branch"] = json!("main");
        orch.wait_run_done(orch.deliver("push", &p).run_id())
    };
    let r = push("main", &first);
    assert_eq!(r["run"]["status"], "skipped", "{r:#}");
    let list = orch.get("/api/schedules").json();
    let s = &list["schedules"][0];
    assert_eq!(
        (s["repo"].as_str(), s["name"].as_str(), s["branch"].as_str()),
        (Some(REPO), Some("nightly"), Some("main"))
    );
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let next = s["next_at"].as_i64().unwrap();
    assert!(next > now && next <= now + 4 * 86_400, "{s}");
    // 03:00 in Berlin, whichever half of the year this is.
    let local = s["next_local"].as_str().unwrap();
    assert!(local.ends_with(" 03:00 CET") || local.ends_with(" 03:00 CEST"), "{s}");
    let page = orch.get("/").text();
    assert!(page.contains("Schedules") && page.contains("nightly") && page.contains("Europe/Berlin"), "{page}");
    // Another branch's schedules are not the repository's.
    push("topic", &other);
    assert_eq!(orch.get("/api/schedules").json()["schedules"].as_array().unwrap().len(), 1);
    // The default branch drops `on.schedule`: no schedule left.
    let without = "on: {push: {branches: [release]}}\nsteps:\n  a: {image: busybox:latest, commands: [\"true\"]}\n";
    let second = git.commit(Some(&first), &[(".orch.yml", without)], "no schedule");
    git.set_ref(&second, "refs/heads/main");
    push("main", &second);
    assert_eq!(orch.get("/api/schedules").json()["schedules"], json!([]));
}

// ---------------------------------------------------------------------------------------
// With Docker

#[test]
fn a_push_runs_once_and_reports_pending_then_success() {
    require_docker!();
    let git = GitServer::start();
    let sha = git.on_branch("main", &project(BUILD_OK, TEST_OK), "first");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let orch = Orch::start(token_args(&gh, &git));

    let posted = orch.deliver("push", &push_event("main", ZERO_SHA, &sha));
    let id = posted.run_id();
    let run = orch.wait_run_done(id);
    assert_eq!(run["run"]["status"], "success", "{run:#}");
    assert_eq!(run["run"]["sha"], json!(sha));
    assert_eq!(run["run"]["delivery_id"], json!(posted.guid));
    for step in ["build", "test"] {
        assert_eq!(step_of(&run, step).map(|s| &s["status"]), Some(&json!("passed")), "{run:#}");
    }
    let runs = orch.runs();
    assert_eq!(runs.len(), 1, "{runs:#?}");

    let statuses = gh.wait_final_status(&sha, "orch (push)", id);
    assert_eq!(statuses_states(&statuses), ["pending", "pending", "success"], "{statuses:#?}");
    let target = orch.url(&format!("/runs/{id}"));
    for s in &statuses {
        assert_eq!(s["target_url"], json!(target), "{s}");
    }
    assert_eq!(statuses[0]["description"], "Queued");
    assert_eq!(statuses[1]["description"], "Running");
    assert!(statuses[2]["description"].as_str().unwrap().starts_with("2 passed in "), "{}", statuses[2]);
    // Only the `orch` context (no per-step statuses by default), only on this commit.
    assert_eq!(gh.requests().len(), 3, "{:#?}", gh.requests());
    gh.assert_no_violations();

    // The page the status links to, and the step logs.
    let page = orch.get(&format!("/runs/{id}"));
    assert_eq!(page.status, 200);
    assert!(page.text().contains(&format!("Run {id}")) && page.text().contains("success"), "{}", page.text());
    let log = orch.get(&format!("/api/runs/{id}/logs/build")).text();
    assert!(log.lines().any(|l| l == "building"), "{log}");
    assert!(orch.leftovers().is_empty(), "{:?}", orch.leftovers());
}

#[test]
fn a_failing_step_reports_failure_with_step_statuses() {
    require_docker!();
    let git = GitServer::start();
    let sha = git.on_branch("main", &project(BUILD_OK, TEST_FAILS), "breaks the tests");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let orch = Orch::start(ServeArgs { step_statuses: Some(true), ..token_args(&gh, &git) });

    let id = orch.deliver("push", &push_event("main", ZERO_SHA, &sha)).run_id();
    let run = orch.wait_run_done(id);
    assert_eq!(run["run"]["status"], "failure", "{run:#}");
    assert_eq!(step_of(&run, "build").unwrap()["status"], "passed", "{run:#}");
    let test = step_of(&run, "test").unwrap();
    assert_eq!((&test["status"], &test["exit_code"]), (&json!("failed"), &json!(3)), "{run:#}");

    let statuses = gh.wait_final_status(&sha, "orch (push)", id);
    assert_eq!(statuses_states(&statuses), ["pending", "pending", "failure"], "{statuses:#?}");
    let desc = statuses[2]["description"].as_str().unwrap();
    assert!(desc.starts_with("1 passed, 1 failed (test) in "), "{desc}");
    let build = gh.statuses_of(&sha, "orch/build (push)");
    assert_eq!(statuses_states(&build), ["success"], "{build:#?}");
    assert!(build[0]["description"].as_str().unwrap().starts_with("passed in "), "{build:#?}");
    let test = gh.statuses_of(&sha, "orch/test (push)");
    assert_eq!(statuses_states(&test), ["failure"], "{test:#?}");
    for s in build.iter().chain(&test) {
        assert_eq!(s["target_url"], json!(orch.url(&format!("/runs/{id}"))));
    }
    // The step statuses come before the run's final one.
    let order: Vec<String> = gh
        .requests()
        .iter()
        .filter(|r| r.op == OP_STATUS)
        .map(|r| format!("{}:{}", r.body["context"].as_str().unwrap(), r.body["state"].as_str().unwrap()))
        .collect();
    assert_eq!(order.last().map(String::as_str), Some("orch (push):failure"), "{order:?}");
    let log = orch.get(&format!("/api/runs/{id}/logs/test")).text();
    assert!(log.contains("tests failed: 1 of 3"), "{log}");
    gh.assert_no_violations();
    assert!(orch.leftovers().is_empty(), "{:?}", orch.leftovers());
}

#[test]
fn a_newer_pull_request_push_cancels_the_older_run_and_closing_cancels_the_last() {
    require_docker!();
    const SLOW: &str = "echo slow build\nsleep 60\n";
    let git = GitServer::start();
    let base = git.on_branch("main", &project(BUILD_OK, TEST_OK), "base");
    let slow = git.commit(Some(&base), &[("ci/build.sh", SLOW)], "slow");
    git.set_ref(&slow, "refs/heads/feature");
    git.set_ref(&slow, "refs/pull/7/head");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let orch = Orch::start(token_args(&gh, &git));

    let first = orch.deliver("pull_request", &pr_event("opened", 7, "feature", &slow, "main", &base)).run_id();
    orch.wait_step_running(first, "build");

    // A push to the pull request while its run is in the slow step.
    let fast = git.commit(Some(&slow), &[("ci/build.sh", BUILD_OK)], "fast again");
    git.set_ref(&fast, "refs/heads/feature");
    git.set_ref(&fast, "refs/pull/7/head");
    let mut sync = pr_event("synchronize", 7, "feature", &fast, "main", &base);
    sync["before"] = json!(slow);
    let pushed = Instant::now();
    let second = orch.deliver("pull_request", &sync).run_id();
    let r1 = orch.wait_run_done(first);
    let took = pushed.elapsed();
    assert_eq!(r1["run"]["status"], "cancelled", "{r1:#}");
    assert_eq!(r1["run"]["reason"], format!("superseded by run {second}"), "{r1:#}");
    assert!(took < Duration::from_secs(20), "the superseded run took {took:?} to stop");
    let r2 = orch.wait_run_done(second);
    assert_eq!(r2["run"]["status"], "success", "{r2:#}");
    assert_eq!((&r2["run"]["pr"], &r2["run"]["sha"]), (&json!(7), &json!(fast)), "{r2:#}");

    let s1 = gh.wait_final_status(&slow, "orch (pull_request)", first);
    assert_eq!(statuses_states(&s1), ["pending", "pending", "error"], "{s1:#?}");
    assert_eq!(s1[2]["description"], format!("superseded by run {second}"));
    let s2 = gh.wait_final_status(&fast, "orch (pull_request)", second);
    assert_eq!(statuses_states(&s2), ["pending", "pending", "success"], "{s2:#?}");

    // Another slow push, then the pull request is closed: its run stops.
    let slow2 = git.commit(Some(&fast), &[("ci/build.sh", SLOW)], "slow again");
    git.set_ref(&slow2, "refs/pull/7/head");
    let mut sync = pr_event("synchronize", 7, "feature", &slow2, "main", &base);
    sync["before"] = json!(fast);
    let third = orch.deliver("pull_request", &sync).run_id();
    orch.wait_step_running(third, "build");
    let closed = orch.deliver("pull_request", &pr_event("closed", 7, "feature", &slow2, "main", &base)).response;
    assert_eq!((closed.status, &closed.json()["status"]), (202, &json!("cancelled")), "{}", closed.text());
    let r3 = orch.wait_run_done(third);
    assert_eq!(r3["run"]["status"], "cancelled", "{r3:#}");
    assert_eq!(r3["run"]["reason"], "pull request #7 was closed", "{r3:#}");
    let s3 = gh.wait_final_status(&slow2, "orch (pull_request)", third);
    assert_eq!(statuses_states(&s3), ["pending", "pending", "error"], "{s3:#?}");

    assert_eq!(orch.runs().len(), 3);
    gh.assert_no_violations();
    assert!(orch.leftovers().is_empty(), "{:?}", orch.leftovers());
}

#[test]
fn pull_requests_from_forks_get_no_secrets() {
    require_docker!();
    const SECRETS_PIPELINE: &str = r#"
defaults:
  image: busybox:latest
  timeout: 2m
steps:
  plain:
    commands:
      - 'if [ -n "${TOKEN:-}" ]; then echo "TOKEN is visible to a step that does not name it"; exit 1; fi'
  deploy:
    secrets: [TOKEN]
    commands:
      - test "$TOKEN" = s3cret-value-42
      - echo "deploying with $TOKEN (${#TOKEN} characters)"
"#;
    let git = GitServer::start();
    // A valid file on the default branch: were it invalid, no run off it would get a secret.
    let base =
        git.on_branch("main", &[(".orch.yml", "steps: {a: {image: busybox:latest, commands: [\"true\"]}}\n")], "base");
    let head = git.commit(Some(&base), &[(".orch.yml", SECRETS_PIPELINE)], "deploy step");
    git.set_ref(&head, "refs/pull/7/head");
    git.set_ref(&head, "refs/pull/8/head");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let secrets = temp_dir("orch-serve-secrets-");
    let secrets_file = secrets.path().join("secrets.env");
    std::fs::write(&secrets_file, "# repository secrets\nTOKEN=s3cret-value-42\n").unwrap();
    let orch = Orch::start(ServeArgs { secrets_file: Some(secrets_file), ..token_args(&gh, &git) });

    let own = orch.deliver("pull_request", &pr_event("opened", 7, "feature", &head, "main", &base)).run_id();
    let fork_pr = from_fork(pr_event("opened", 8, "feature", &head, "main", &base), "mallory");
    let fork = orch.deliver("pull_request", &fork_pr).run_id();
    let (ro, rf) = (orch.wait_run_done(own), orch.wait_run_done(fork));

    assert_eq!((&ro["run"]["fork"], &rf["run"]["fork"]), (&json!(false), &json!(true)));
    assert_eq!(ro["run"]["status"], "success", "{ro:#}");
    assert_eq!(step_of(&ro, "deploy").unwrap()["status"], "passed", "{ro:#}");
    let log = orch.get(&format!("/api/runs/{own}/logs/deploy")).text();
    assert!(log.contains("deploying with *** (15 characters)"), "the secret is masked in the log:\n{log}");
    assert!(!log.contains("s3cret-value-42"), "{log}");

    // The fork's code never gets the secret: the step that names it cannot start.
    assert_eq!(step_of(&rf, "plain").unwrap()["status"], "passed", "{rf:#}");
    let deploy = step_of(&rf, "deploy").unwrap();
    assert_eq!(deploy["status"], "error", "{rf:#}");
    assert_eq!(deploy["message"], "secret `TOKEN` is not set", "{rf:#}");
    assert_ne!(rf["run"]["status"], "success", "{rf:#}");
    let sf = gh.wait_final_status(&head, "orch (pull_request)", fork);
    assert_ne!(sf.last().unwrap()["state"], "success", "{sf:#?}");
    gh.assert_no_violations();
    assert!(orch.leftovers().is_empty(), "{:?}", orch.leftovers());
}

/// A GitHub App key as GitHub hands it out (PKCS#1 PEM), and its public key.
fn app_key(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (key, public) = (dir.join("app.pem"), dir.join("app.pub.pem"));
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).output().expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&["genrsa", "-traditional", "-out", key.to_str().unwrap(), "2048"]);
    run(&["rsa", "-in", key.to_str().unwrap(), "-pubout", "-out", public.to_str().unwrap()]);
    (key, public)
}

#[test]
fn a_github_app_gets_check_runs_with_summary_and_chunked_annotations_and_rerequests_run_again() {
    require_docker!();
    const COMPILE: &str = "\
echo compiling
i=1
while [ $i -le 60 ]; do
  echo \"src/main.rs:$i:5: error: expected semicolon\"
  i=$((i + 1))
done
echo \"src/main.rs:1:5: error: expected semicolon\"
echo \"error: aborting due to 60 previous errors\"
exit 1
";
    const APP_PIPELINE: &str = "\
defaults:
  image: busybox:latest
steps:
  compile:
    commands:
      - sh ci/compile.sh
";
    const APP_ID: u64 = 4242;
    const INSTALLATION: u64 = 77;
    let git = GitServer::start();
    let sha = git.on_branch("main", &[(".orch.yml", APP_PIPELINE), ("ci/compile.sh", COMPILE)], "does not compile");
    let keys = temp_dir("orch-serve-app-");
    let (key, public_key) = app_key(keys.path());
    let gh = FakeGitHub::start(GhAuth::App { app_id: APP_ID, public_key, installation_id: INSTALLATION });
    let orch = Orch::start(app_args(&gh, APP_ID, &key, git.rewrite()));

    // A delivery without `installation`: orch asks GitHub which installation has the repo.
    let mut push = push_event("main", ZERO_SHA, &sha);
    push.as_object_mut().unwrap().remove("installation");
    let first = orch.deliver("push", &push).run_id();
    let r1 = orch.wait_run_done(first);
    assert_eq!(r1["run"]["status"], "failure", "{r1:#}");

    let check_of = |run: i64| {
        wait_for(Duration::from_secs(30), &format!("the completed check run of run {run}"), || {
            let all = gh.check_runs();
            let external_id = run.to_string();
            let found = all.values().find(|c| c["external_id"] == external_id.as_str() && c["status"] == "completed");
            found.cloned().ok_or_else(|| format!("{all:#?}"))
        })
    };
    let c1 = check_of(first);
    let id1 = c1["id"].as_u64().unwrap();
    let patches = |id: u64| -> Vec<Value> {
        let path = format!("/repos/{REPO}/check-runs/{id}");
        gh.requests().into_iter().filter(|r| r.op == OP_CHECK_UPDATE && r.path == path).map(|r| r.body).collect()
    };
    // All annotations arrive (the last PATCH may still be on its way).
    let annotations = |id: u64| -> Vec<Value> {
        patches(id)
            .iter()
            .flat_map(|p| p.pointer("/output/annotations").and_then(Value::as_array).cloned())
            .flatten()
            .collect()
    };
    wait_for(Duration::from_secs(30), "60 annotations", || {
        let n = annotations(id1).len();
        if n >= 60 { Ok(()) } else { Err(format!("{n} so far")) }
    });

    let reqs = gh.requests();
    let ops: Vec<&str> = reqs.iter().map(|r| r.op.as_str()).collect();
    assert_eq!(&ops[..3], [OP_INSTALLATION, OP_ACCESS_TOKEN, OP_CHECK_CREATE], "{ops:#?}");
    assert_eq!(reqs[1].path, format!("/app/installations/{INSTALLATION}/access_tokens"));
    assert!(!ops.contains(&OP_STATUS), "an App reports with check runs only: {ops:#?}");
    let created = &reqs[2].body;
    assert_eq!(created["name"], "orch (push)");
    assert_eq!(created["head_sha"], json!(sha));
    assert_eq!(created["status"], "queued");
    assert_eq!(created["details_url"], json!(orch.url(&format!("/runs/{first}"))));

    let p = patches(id1);
    assert_eq!(p[0]["status"], "in_progress", "{p:#?}");
    assert!(p[0]["started_at"].is_string());
    assert_eq!((&p[1]["status"], &p[1]["conclusion"]), (&json!("completed"), &json!("failure")), "{:#}", p[1]);
    let summary = p[1]["output"]["summary"].as_str().unwrap();
    assert!(summary.contains("| step | result |") && summary.contains("| `compile` | ❌ failed |"), "{summary}");
    assert!(p[1]["output"]["title"].as_str().unwrap().starts_with("0 passed, 1 failed (compile)"), "{:#}", p[1]);
    let counts: Vec<usize> =
        p[1..].iter().map(|b| b.pointer("/output/annotations").and_then(Value::as_array).map_or(0, Vec::len)).collect();
    assert!(counts.len() >= 2 && counts.iter().all(|&n| n <= 50), "annotations per PATCH: {counts:?}");
    let all = annotations(id1);
    let mut lines: Vec<u64> = all.iter().map(|a| a["start_line"].as_u64().unwrap()).collect();
    lines.sort();
    assert_eq!(lines, (1..=60).collect::<Vec<u64>>(), "each error once, none lost");
    for a in &all {
        assert_eq!((&a["path"], &a["annotation_level"]), (&json!("src/main.rs"), &json!("failure")), "{a}");
        assert_eq!((&a["message"], &a["start_column"]), (&json!("expected semicolon"), &json!(5)), "{a}");
    }

    // "Re-run" on GitHub: a new run of the commit, with a new check run.
    let again = orch.deliver("check_run", &check_run_rerequested(&sha, "main", INSTALLATION)).run_id();
    assert_ne!(again, first);
    let r2 = orch.wait_run_done(again);
    assert_eq!((&r2["run"]["status"], &r2["run"]["sha"]), (&json!("failure"), &json!(sha)), "{r2:#}");
    let c2 = check_of(again);
    assert_ne!(c2["id"], c1["id"]);
    assert_eq!((&c2["head_sha"], &c2["conclusion"]), (&json!(sha), &json!("failure")));
    // The installation token is reused.
    let minted = gh.requests().iter().filter(|r| r.op == OP_ACCESS_TOKEN).count();
    assert_eq!(minted, 1);
    // Another delivery without `installation` (a later push of the same commit: the same
    // body would be the same delivery): the repository's installation is known now.
    let mut push = push.clone();
    push["repository"]["pushed_at"] = json!(push["repository"]["pushed_at"].as_i64().unwrap_or(0) + 60);
    let third = orch.deliver("push", &push).run_id();
    orch.wait_run_done(third);
    check_of(third);
    let lookups = gh.requests().iter().filter(|r| r.op == OP_INSTALLATION).count();
    assert_eq!(lookups, 1, "one installation lookup per repository");
    gh.assert_no_violations();
    assert!(orch.leftovers().is_empty(), "{:?}", orch.leftovers());
}

#[test]
fn github_failing_twice_is_retried_and_the_run_is_unaffected() {
    require_docker!();
    let git = GitServer::start();
    let sha = git.on_branch("main", &project(BUILD_OK, TEST_OK), "first");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    gh.fail_next(OP_STATUS, 2, 500);
    let orch = Orch::start(token_args(&gh, &git));

    let id = orch.deliver("push", &push_event("main", ZERO_SHA, &sha)).run_id();
    let run = orch.wait_run_done(id);
    assert_eq!(run["run"]["status"], "success", "{run:#}");
    let statuses = gh.wait_final_status(&sha, "orch (push)", id);
    assert_eq!(statuses_states(&statuses), ["pending", "pending", "success"], "{statuses:#?}");

    let posts: Vec<Recorded> = gh.requests().into_iter().filter(|r| r.op == OP_STATUS).collect();
    let codes: Vec<u16> = posts.iter().map(|r| r.status).collect();
    assert_eq!(codes, [500, 500, 201, 201, 201], "{posts:#?}");
    assert!(posts[0].body == posts[2].body && posts[1].body == posts[2].body, "a retry sends the same request");
    gh.assert_no_violations();
    assert!(orch.leftovers().is_empty(), "{:?}", orch.leftovers());
}

/// GitHub under load: a secondary rate limit (403, `Retry-After: 1`), then a 502. The
/// status waits the time GitHub named, is sent again, and every status arrives in order.
#[test]
fn a_rate_limited_github_is_waited_out() {
    require_docker!();
    let git = GitServer::start();
    let sha = git.on_branch("main", &project(BUILD_OK, TEST_OK), "first");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    gh.rate_limit_next(OP_STATUS, 1, 1);
    gh.fail_next(OP_STATUS, 1, 502);
    let orch = Orch::start(token_args(&gh, &git));

    let id = orch.deliver("push", &push_event("main", ZERO_SHA, &sha)).run_id();
    let run = orch.wait_run_done(id);
    assert_eq!(run["run"]["status"], "success", "{run:#}");
    let statuses = gh.wait_final_status(&sha, "orch (push)", id);
    assert_eq!(statuses_states(&statuses), ["pending", "pending", "success"], "{statuses:#?}");

    let posts: Vec<Recorded> = gh.requests().into_iter().filter(|r| r.op == OP_STATUS).collect();
    let codes: Vec<u16> = posts.iter().map(|r| r.status).collect();
    assert_eq!(codes, [403, 502, 201, 201, 201], "{posts:#?}");
    // The server's backoff is 20 ms here: a second's wait is GitHub's Retry-After.
    let waited = posts[1].at.duration_since(posts[0].at);
    assert!(waited >= Duration::from_secs(1), "retried after {waited:?}, before Retry-After's 1 s");
    gh.assert_no_violations();
    assert!(orch.leftovers().is_empty(), "{:?}", orch.leftovers());
}

/// A server stopped right after a run ended still delivers the run's statuses that GitHub
/// kept waiting (a secondary rate limit on the first five writes: the last statuses are
/// still queued when the stop comes).
#[test]
fn a_stopping_server_delivers_the_statuses_it_still_owes() {
    require_docker!();
    let git = GitServer::start();
    let sha = git.on_branch("main", &project(BUILD_OK, TEST_OK), "first");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    gh.rate_limit_next(OP_STATUS, 5, 1);
    let mut orch = Orch::start(token_args(&gh, &git));

    let id = orch.deliver("push", &push_event("main", ZERO_SHA, &sha)).run_id();
    let run = orch.wait_run_done(id);
    assert_eq!(run["run"]["status"], "success", "{run:#}");
    let owed = gh.statuses_of(&sha, "orch (push)").len();
    assert!(owed < 3, "the statuses were meant to be still queued at the stop ({owed} delivered)");
    orch.stop();
    let statuses = gh.statuses_of(&sha, "orch (push)");
    assert_eq!(statuses_states(&statuses), ["pending", "pending", "success"], "{statuses:#?}");
    gh.assert_no_violations();
}

/// Updates owed to GitHub are stored: a server killed (-9) while GitHub holds its statuses
/// up (a secondary rate limit on the first five writes) sends them after its next start.
#[test]
fn statuses_owed_at_a_kill_9_are_sent_after_the_restart() {
    require_docker!();
    let git = GitServer::start();
    let sha = git.on_branch("main", &project(BUILD_OK, TEST_OK), "first");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    gh.rate_limit_next(OP_STATUS, 5, 1);
    let (dir, data) = data_dir("orch-serve-owed-");
    let env = token_env(&gh, &git, &[]);
    let log = dir.path().join("orch.log");
    let mut server = OrchProcess::spawn(&data, &env, &log);
    let id = server.deliver("push", &push_event("main", ZERO_SHA, &sha)).run_id();
    let run = server.wait_run_done(id);
    assert_eq!(run["run"]["status"], "success", "{run:#}");
    server.kill9();
    let owed = server.count("SELECT COUNT(*) FROM outbox");
    assert!(owed > 0, "nothing was owed at the kill: the test proves nothing");
    assert!(gh.statuses_of(&sha, "orch (push)").iter().all(|s| s["state"] == "pending"));

    let mut server = OrchProcess::spawn(&data, &env, &log);
    let statuses = gh.wait_final_status(&sha, "orch (push)", id);
    assert_eq!(statuses.last().unwrap()["state"], "success", "{statuses:#?}");
    wait_for(Duration::from_secs(30), "the outbox to empty", || match server.count("SELECT COUNT(*) FROM outbox") {
        0 => Ok(()),
        n => Err(format!("{n} owed")),
    });
    gh.assert_no_violations();
    server.terminate();
}

#[test]
fn kill_9_and_restart_loses_no_delivery() {
    require_docker!();
    let git = GitServer::start();
    let sha = git.commit(None, &project("echo building\nsleep 3\necho built > out.txt\n", TEST_OK), "first");
    let branches = ["b1", "b2", "b3", "b4"];
    for b in branches {
        git.set_ref(&sha, &format!("refs/heads/{b}"));
    }
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let (dir, data) = data_dir("orch-serve-kill-");
    let env = token_env(&gh, &git, &[("ORCH_CONCURRENCY", "1".to_string())]);
    let log = dir.path().join("orch.log");
    let mut server = OrchProcess::spawn(&data, &env, &log);
    let posted: Vec<Posted> = branches.iter().map(|b| server.deliver("push", &push_event(b, ZERO_SHA, &sha))).collect();
    let ids: Vec<i64> = posted.iter().map(Posted::run_id).collect();

    // Kill it while one run is in its step and the others wait.
    let pid = server.pid();
    wait_for(Duration::from_secs(60), "a run's step container", || {
        if running_step_containers(pid, "build").is_empty() { Err(server.log_text()) } else { Ok(()) }
    });
    server.kill9();
    let runs = server.runs_from_db();
    let interrupted: Vec<i64> = runs.iter().filter(|r| r.1 == "running").map(|r| r.0).collect();
    assert_eq!(interrupted.len(), 1, "{runs:#?}");
    assert_eq!(runs.iter().filter(|r| r.1 == "queued").count(), 3, "{runs:#?}");
    let left = docker_objects_of_pid(pid);
    assert!(left.iter().any(|o| o.starts_with("container ")), "the killed server left no container: {left:?}");

    let mut server = OrchProcess::spawn(&data, &env, &log);
    for &id in &ids {
        let run = server.wait_run_done(id);
        assert_eq!(run["run"]["status"], "success", "{run:#}\n{}", server.log_text());
    }
    // Every delivery has exactly its one run, which ended; the interrupted one ran again.
    let runs = server.runs();
    assert_eq!(runs.len(), posted.len(), "{runs:#?}");
    for (p, id) in posted.iter().zip(&ids) {
        let mine: Vec<&Value> = runs.iter().filter(|r| r["delivery_id"] == json!(p.guid)).collect();
        assert_eq!(mine.len(), 1, "delivery {}: {runs:#?}", p.guid);
        assert_eq!(mine[0]["id"], json!(id));
    }
    // The interrupted one ran again; the others once.
    for r in &runs {
        let want = if r["id"] == json!(interrupted[0]) { 2 } else { 1 };
        assert_eq!(r["attempts"], want, "{runs:#?}");
    }
    assert_eq!(server.count("SELECT COUNT(*) FROM deliveries"), 4);
    for &id in &ids {
        let s = gh.wait_final_status(&sha, "orch (push)", id);
        assert_eq!(s.last().unwrap()["state"], "success", "{s:#?}");
    }
    // What the killed server left in Docker is gone, and the runs left nothing.
    assert!(docker_objects_of_pid(pid).is_empty(), "{:?}", docker_objects_of_pid(pid));
    assert!(server.leftovers().is_empty(), "{:?}", server.leftovers());
    server.terminate();
    gh.assert_no_violations();
}

#[test]
fn a_push_run_that_is_not_triggered_cannot_hide_a_failed_pull_request_run() {
    require_docker!();
    let git = GitServer::start();
    let pipeline = format!("on:\n  push: {{branches: [main]}}\n  pull_request: {{}}\n{PIPELINE}");
    let files = [(".orch.yml", pipeline.as_str()), ("ci/build.sh", BUILD_OK), ("ci/test.sh", TEST_FAILS)];
    let base = git.on_branch("main", &files, "base");
    let head = git.commit(Some(&base), &[("README.md", "change\n")], "change");
    git.set_ref(&head, "refs/heads/feature");
    git.set_ref(&head, "refs/pull/5/head");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    // One slot, the pull request first: its run fails before the push run (not triggered:
    // `feature` is no `main`) reports; with one context the green would come last.
    let orch = Orch::start(ServeArgs { concurrency: Some(1), ..token_args(&gh, &git) });
    let pr = orch.deliver("pull_request", &pr_event("opened", 5, "feature", &head, "main", &base)).run_id();
    let push = orch.deliver("push", &push_event("feature", &base, &head)).run_id();
    assert_eq!(orch.wait_run_done(pr)["run"]["status"], "failure");
    orch.wait_run_done(push);
    let s_push = gh.wait_final_status(&head, "orch (push)", push);
    assert_eq!(s_push.last().unwrap()["state"], "success", "{s_push:#?}");
    assert!(s_push.last().unwrap()["description"].as_str().unwrap().contains("not triggered"), "{s_push:#?}");
    let s_pr = gh.wait_final_status(&head, "orch (pull_request)", pr);
    assert_eq!(s_pr.last().unwrap()["state"], "failure", "{s_pr:#?}");
    // What GitHub shows for the commit: each context's latest status.
    let contexts: std::collections::BTreeMap<String, String> = gh
        .requests()
        .iter()
        .filter(|r| r.op == OP_STATUS && r.path.ends_with(&head))
        .map(|r| (r.body["context"].as_str().unwrap().to_string(), r.body["state"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(contexts.get("orch (pull_request)").map(String::as_str), Some("failure"), "{contexts:?}");
    gh.assert_no_violations();
}

#[test]
fn paths_conditions_see_what_a_pull_request_changed() {
    require_docker!();
    let git = GitServer::start();
    let pipeline = "\
defaults: {image: busybox:latest}
steps:
  code:
    when: {paths: [\"src/**\"]}
    commands: [echo code]
  docs:
    when: {paths: [\"*.md\"]}
    commands: [echo docs]
";
    let base =
        git.on_branch("main", &[(".orch.yml", pipeline), ("src/lib.rs", "one\n"), ("README.md", "one\n")], "base");
    let head = git.commit(Some(&base), &[("README.md", "two\n")], "docs only");
    git.set_ref(&head, "refs/pull/3/head");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let orch = Orch::start(token_args(&gh, &git));
    let pr = orch.deliver("pull_request", &pr_event("opened", 3, "topic", &head, "main", &base)).run_id();
    let r = orch.wait_run_done(pr);
    assert_eq!(r["run"]["status"], "success", "{r:#}");
    // The delivery lists no files; the base branch tells them, as `orch ci` finds them.
    assert_eq!(step_of(&r, "docs").unwrap()["status"], "passed", "{r:#}");
    assert!(step_of(&r, "code").is_none(), "{r:#}");
    assert_eq!(r["skipped"][0]["name"], "code", "{r:#}");
    let why = r["skipped"][0]["reason"].as_str().unwrap();
    assert!(why.contains("none of the 1 changed file(s) match `src/**`"), "{why}");
    gh.assert_no_violations();
}

#[test]
fn runs_cancelled_before_they_start_get_a_final_status() {
    require_docker!();
    let git = GitServer::start();
    let base = git.on_branch("main", &project(BUILD_OK, TEST_OK), "base");
    let busy = git.commit(Some(&base), &[("ci/build.sh", "echo busy\nsleep 5\necho built > out.txt\n")], "slow");
    git.set_ref(&busy, "refs/heads/busy");
    let m1 = git.commit(Some(&base), &[("README.md", "one\n")], "one");
    let m2 = git.commit(Some(&m1), &[("README.md", "two\n")], "two");
    git.set_ref(&m2, "refs/heads/main");
    let p1 = git.commit(Some(&base), &[("README.md", "pr\n")], "pr");
    git.set_ref(&p1, "refs/pull/9/head");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let orch = Orch::start(ServeArgs { concurrency: Some(1), ..token_args(&gh, &git) });

    // One run holds the only slot; the others wait behind it.
    let running = orch.deliver("push", &push_event("busy", ZERO_SHA, &busy)).run_id();
    orch.wait_step_running(running, "build");
    let old = orch.deliver("push", &push_event("main", &base, &m1)).run_id();
    let new = orch.deliver("push", &push_event("main", &m1, &m2)).run_id();
    let pr = orch.deliver("pull_request", &pr_event("opened", 9, "topic", &p1, "main", &base)).run_id();
    let closed = orch.deliver("pull_request", &pr_event("closed", 9, "topic", &p1, "main", &base)).response;
    assert_eq!(closed.status, 202, "{}", closed.text());

    let r_old = orch.run(old);
    assert_eq!(r_old["run"]["status"], "cancelled", "{r_old:#}");
    assert_eq!(r_old["run"]["reason"], format!("superseded by run {new}"));
    let r_pr = orch.run(pr);
    assert_eq!(
        (&r_pr["run"]["status"], &r_pr["run"]["reason"]),
        (&json!("cancelled"), &json!("pull request #9 was closed"))
    );
    // GitHub hears of it too, instead of showing "Queued" on those commits for ever.
    let s_old = gh.wait_final_status(&m1, "orch (push)", old);
    assert_eq!(statuses_states(&s_old), ["pending", "error"], "{s_old:#?}");
    assert_eq!(s_old[1]["description"], format!("superseded by run {new}"));
    let s_pr = gh.wait_final_status(&p1, "orch (pull_request)", pr);
    assert_eq!(statuses_states(&s_pr), ["pending", "error"], "{s_pr:#?}");
    assert_eq!(s_pr[1]["description"], "pull request #9 was closed");

    assert_eq!(orch.wait_run_done(running)["run"]["status"], "success");
    assert_eq!(orch.wait_run_done(new)["run"]["status"], "success");
    let s_new = gh.wait_final_status(&m2, "orch (push)", new);
    assert_eq!(statuses_states(&s_new), ["pending", "pending", "success"], "{s_new:#?}");
    gh.assert_no_violations();
}

#[test]
fn a_github_app_clones_a_private_repository_with_its_installation_token() {
    require_docker!();
    const APP_ID: u64 = 4244;
    const INSTALLATION: u64 = 79;
    let git = GitServer::start();
    let sha = git.on_branch("main", &project(BUILD_OK, TEST_OK), "first");
    let keys = temp_dir("orch-serve-app-");
    let (key, public_key) = app_key(keys.path());
    let gh = FakeGitHub::start(GhAuth::App { app_id: APP_ID, public_key, installation_id: INSTALLATION });
    // Private: only a token the fake GitHub minted opens it. No `github_token` is set. The
    // repository is on "GitHub" itself: its token goes nowhere else.
    let http = git.http(gh.minted_tokens());
    gh.serve_git(&http);
    let orch = Orch::start(app_args(&gh, APP_ID, &key, gh.git_rewrite()));
    let mut push = push_event("main", ZERO_SHA, &sha);
    push["installation"]["id"] = json!(INSTALLATION);
    let id = orch.deliver("push", &push).run_id();
    let run = orch.wait_run_done(id);
    assert_eq!(run["run"]["status"], "success", "{run:#}");
    let seen = http.requests();
    assert!(seen.iter().any(|(_, p)| p.is_none()), "git asked for credentials first: {seen:#?}");
    let authorized: Vec<_> = seen.iter().filter_map(|(_, p)| p.as_deref()).collect();
    assert!(!authorized.is_empty() && authorized.iter().all(|p| gh.minted(p)), "{seen:#?}");
    // One token serves the clone and the check run.
    let minted = gh.requests().iter().filter(|r| r.op == OP_ACCESS_TOKEN).count();
    assert_eq!(minted, 1);
    gh.assert_no_violations();
}

#[test]
fn a_github_app_run_interrupted_by_a_restart_completes_its_own_check_run() {
    require_docker!();
    const APP_ID: u64 = 4243;
    const INSTALLATION: u64 = 78;
    let git = GitServer::start();
    let sha = git.on_branch("main", &project("echo building\nsleep 4\necho built > out.txt\n", TEST_OK), "first");
    let keys = temp_dir("orch-serve-app-");
    let (key, public_key) = app_key(keys.path());
    let gh = FakeGitHub::start(GhAuth::App { app_id: APP_ID, public_key, installation_id: INSTALLATION });
    let data = temp_dir("orch-serve-data-");
    let args = || ServeArgs { data_dir: Some(data.path().to_path_buf()), ..app_args(&gh, APP_ID, &key, git.rewrite()) };
    let mut push = push_event("main", ZERO_SHA, &sha);
    push["installation"]["id"] = json!(INSTALLATION);

    let mut orch = Orch::start(args());
    let id = orch.deliver("push", &push).run_id();
    orch.wait_step_running(id, "build");
    wait_for(Duration::from_secs(30), "the check run in progress", || {
        let c = gh.check_runs();
        if c.values().any(|c| c["status"] == "in_progress") { Ok(()) } else { Err(format!("{c:#?}")) }
    });
    // Stopped as by SIGTERM while the run is in its step: it is queued again.
    orch.stop();
    drop(orch);

    let orch = Orch::start(args());
    let run = orch.wait_run_done(id);
    assert_eq!((&run["run"]["status"], &run["run"]["attempts"]), (&json!("success"), &json!(2)), "{run:#}");
    let mine = wait_for(Duration::from_secs(30), "the check run to complete", || {
        let all = gh.check_runs();
        let external_id = id.to_string();
        let mine: Vec<Value> = all.values().filter(|c| c["external_id"] == external_id.as_str()).cloned().collect();
        if mine.iter().any(|c| c["status"] == "completed") { Ok(mine) } else { Err(format!("{all:#?}")) }
    });
    assert_eq!(mine.len(), 1, "one check run per run, none left behind queued or in progress: {mine:#?}");
    assert_eq!(mine[0]["conclusion"], "success", "{mine:#?}");
    gh.assert_no_violations();
    assert!(orch.leftovers().is_empty(), "{:?}", orch.leftovers());
}

/// The data directory's disk fills up: deliveries are refused with 503 (GitHub shows them
/// failed, to be redelivered), the server keeps answering, what was stored stays sound, and
/// intake takes deliveries again by itself once there is space. Needs root (a tmpfs of its
/// own); skipped without.
#[test]
fn a_full_disk_refuses_deliveries_with_503_and_intake_recovers() {
    let (_dir, data) = data_dir("orch-serve-full-");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&data)
        .output()
        .is_ok_and(|o| o.status.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(data.clone());
    let mut orch = Orch::start(ServeArgs { data_dir: Some(data.clone()), ..base_args() });
    // Pings: stored like any delivery, no run. Each body its own (a body seen is a duplicate).
    let ping = |n: u32| json!({ "zen": format!("ping {n}"), "hook_id": n });
    let first = orch.deliver("ping", &ping(1));
    assert_eq!(first.response.status, 200, "{}", first.response.text());

    // Fill the disk.
    let mut filler = std::fs::File::create(data.join("filler")).unwrap();
    let block = vec![0u8; 64 * 1024];
    while std::io::Write::write_all(&mut filler, &block).is_ok() {}
    drop(filler);
    for n in 2..5 {
        let refused = orch.deliver("ping", &ping(n));
        assert_eq!(refused.response.status, 503, "{}", refused.response.text());
    }
    assert_eq!(orch.get("/healthz").status, 200, "the server keeps answering");

    // Space again: intake recovers without a restart.
    std::fs::remove_file(data.join("filler")).unwrap();
    let after = orch.deliver("ping", &ping(5));
    assert_eq!(after.response.status, 200, "{}", after.response.text());
    let again = orch.deliver_as("ping", &after.guid, &ping(5));
    assert_eq!(again.response.json()["status"], "duplicate", "the stored one is there");
    orch.stop();
    let c = rusqlite::Connection::open(data.join("orch.db")).unwrap();
    let check: String = c.query_row("PRAGMA quick_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let stored: i64 = c.query_row("SELECT COUNT(*) FROM deliveries", [], |r| r.get(0)).unwrap();
    assert_eq!(stored, 2, "the first and the one after, nothing from the full disk");
}

/// The disk of the run directories fills up while a step prints: the run ends as `error`,
/// saying its log could not be written, and the commit's status says so (a verdict nobody
/// can check is not a pass). Needs root (a tmpfs of its own); skipped without.
#[test]
fn a_run_whose_log_cannot_be_written_is_an_error() {
    require_docker!();
    let git = GitServer::start();
    let sha =
        git.commit(None, &project("yes 0123456789abcdef | head -c 8000000\necho built > out.txt\n", TEST_OK), "first");
    git.set_ref(&sha, "refs/heads/main");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let dir = temp_dir("orch-serve-logfull-");
    let data = dir.path().join("data");
    let runs = data.join("runs");
    std::fs::create_dir_all(&runs).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&runs)
        .output()
        .is_ok_and(|o| o.status.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(runs.clone());
    let orch = Orch::start(ServeArgs { data_dir: Some(data.clone()), ..token_args(&gh, &git) });

    let id = orch.deliver("push", &push_event("main", ZERO_SHA, &sha)).run_id();
    let run = orch.wait_run_done(id);
    assert_eq!(run["run"]["status"], "error", "{run:#}");
    let reason = run["run"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("could not be written") && reason.contains("No space left"), "{run:#}");
    let statuses = gh.wait_final_status(&sha, "orch (push)", id);
    assert_eq!(statuses.last().unwrap()["state"], "error", "{statuses:#?}");
    gh.assert_no_violations();
}

/// An update GitHub refuses for good (a 403 that is no rate limit: the token lacks the
/// permission) is not retried for ever: it is given up, and the run shows why.
#[test]
fn an_update_github_refuses_for_good_is_shown_on_the_run() {
    let git = GitServer::start();
    let sha = git.on_branch("main", &project(BUILD_OK, TEST_OK), "first");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    gh.fail_next(OP_STATUS, 1000, 403);
    // The clone goes nowhere: the run ends (as an error) without Docker.
    let wrong = format!("https://github.com/=git://127.0.0.1:{}/nowhere/", git.port);
    let orch = Orch::start(ServeArgs { clone_rewrite: vec![wrong], ..token_args(&gh, &git) });
    let id = orch.deliver("push", &push_event("main", ZERO_SHA, &sha)).run_id();
    orch.wait_run_done(id);
    let run = orch.wait_run(id, "the given-up update shown", |r| r["run"]["report_error"].is_string());
    let why = run["run"]["report_error"].as_str().unwrap();
    assert!(why.contains("403"), "{run:#}");
    // Each update (queued, the end: the run never reached an executor) is tried once: a
    // permission error is final. (The first one given up shows before the second is sent.)
    let tries = || gh.requests().iter().filter(|r| r.op == OP_STATUS).count();
    wait_for(Duration::from_secs(30), "both updates tried", || {
        if tries() == 2 { Ok(()) } else { Err(tries().to_string()) }
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(tries(), 2, "{:#?}", gh.requests());
    let page = orch.get(&format!("/runs/{id}")).text();
    assert!(page.contains("an update was given up"), "{page}");
}

/// In App mode an update can be stored before its run's check run exists (the run was
/// claimed while GitHub held the creation up). Sent by the next server after a kill -9, it
/// updates the check run the first server made; it does not make a second one.
#[test]
fn an_update_owed_across_a_kill_9_updates_the_check_run_made_before() {
    require_docker!();
    const APP_ID: u64 = 4244;
    const INSTALLATION: u64 = 79;
    let git = GitServer::start();
    let sha = git.on_branch("main", &project("echo building\nsleep 2\necho built > out.txt\n", TEST_OK), "first");
    let keys = temp_dir("orch-serve-app-");
    let (key, public_key) = app_key(keys.path());
    let gh = FakeGitHub::start(GhAuth::App { app_id: APP_ID, public_key, installation_id: INSTALLATION });
    // The creation waits 2 s (the run is claimed meanwhile, its `Started` stored without
    // a check run); the first update of it waits 60 s, and the server is killed then.
    gh.rate_limit_next(OP_CHECK_CREATE, 1, 2);
    gh.rate_limit_next(OP_CHECK_UPDATE, 1, 60);
    let (dir, data) = data_dir("orch-serve-app-kill-");
    let env = [
        ("ORCH_GITHUB_URL", gh.url.clone()),
        ("ORCH_GITHUB_APP_ID", APP_ID.to_string()),
        ("ORCH_GITHUB_APP_KEY", key.display().to_string()),
        ("ORCH_CLONE_REWRITE", git.rewrite()),
        ("ORCH_GITHUB_BACKOFF", "20".to_string()),
    ];
    let log = dir.path().join("orch.log");
    let mut push = push_event("main", ZERO_SHA, &sha);
    push["installation"]["id"] = json!(INSTALLATION);
    let mut server = OrchProcess::spawn(&data, &env, &log);
    let id = server.deliver("push", &push).run_id();
    wait_for(Duration::from_secs(30), "the check run, and its first update held up", || {
        let held = gh.requests().iter().any(|r| r.op == OP_CHECK_UPDATE);
        if gh.check_runs().len() == 1 && held { Ok(()) } else { Err(format!("{:#?}", gh.requests())) }
    });
    wait_for(Duration::from_secs(10), "the check run recorded", || {
        match server.count(&format!("SELECT COUNT(*) FROM runs WHERE id = {id} AND check_run_id IS NOT NULL")) {
            1 => Ok(()),
            _ => Err("not yet".into()),
        }
    });
    server.kill9();
    let owed = server.count(r#"SELECT COUNT(*) FROM outbox WHERE body LIKE '%"check_run_id":null%'"#);
    assert!(owed > 0, "nothing owed without a check run at the kill: the test proves nothing");

    let mut server = OrchProcess::spawn(&data, &env, &log);
    let run = server.wait_run_done(id);
    assert_eq!(run["run"]["status"], "success", "{run:#}\n{}", server.log_text());
    let all = wait_for(Duration::from_secs(60), "the check run to complete", || {
        let all = gh.check_runs();
        if all.values().any(|c| c["status"] == "completed") { Ok(all) } else { Err(format!("{all:#?}")) }
    });
    assert_eq!(all.len(), 1, "one check run for the run: {all:#?}");
    gh.assert_no_violations();
    server.terminate();
}

/// A repository larger than `max-repo-size` is not fetched whole: the download stops at the
/// limit, and the run ends as an error saying so, on the commit too.
#[test]
fn a_repository_larger_than_the_limit_gives_an_error_status() {
    let git = GitServer::start();
    // 4 MiB of hex digits of a pseudo-random sequence: about 2 MiB however it is packed.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: String = (0..4 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from_digit((x & 15) as u32, 16).unwrap()
        })
        .collect();
    let sha = git.on_branch("main", &[(".orch.yml", PIPELINE), ("noise.txt", &noise)], "big");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let orch = Orch::start(ServeArgs { max_repo_size: Some("1M".into()), ..token_args(&gh, &git) });

    let id = orch.deliver("push", &push_event("main", ZERO_SHA, &sha)).run_id();
    let run = orch.wait_run_done(id);
    assert_eq!(run["run"]["status"], "error", "{run:#}");
    let reason = run["run"]["reason"].as_str().unwrap_or_default();
    assert_eq!(
        reason, "could not fetch the commit: the repository is larger than the limit of 1.0 MiB (max-repo-size)",
        "{run:#}"
    );
    let statuses = gh.wait_final_status(&sha, "orch (push)", id);
    let last = statuses.last().unwrap();
    assert_eq!((&last["state"], &last["description"]), (&json!("error"), &json!(reason)), "{statuses:#?}");
    gh.assert_no_violations();
}

/// GitHub out of reach (connections refused), then failing every write for a while (502s,
/// past the reporter's own retries): the updates stay owed, in order, and all reach GitHub
/// once it takes them; none is given up.
#[test]
fn updates_wait_for_a_github_that_is_down_and_all_arrive_in_order() {
    let git = GitServer::start();
    let sha = git.on_branch("main", &project(BUILD_OK, TEST_OK), "first");
    // Nothing listens on the GitHub URL's port yet.
    let port = free_port();
    let wrong = format!("https://github.com/=git://127.0.0.1:{}/nowhere/", git.port);
    let orch = Orch::start(ServeArgs {
        github_url: Some(format!("http://127.0.0.1:{port}")),
        github_token: Some(TOKEN.into()),
        clone_rewrite: vec![wrong],
        ..base_args()
    });
    let first = orch.deliver("push", &push_event("main", ZERO_SHA, &sha)).run_id();
    orch.wait_run_done(first);
    std::thread::sleep(Duration::from_secs(2));
    // Queued and the end (its clone fails: it never reaches an executor).
    assert_eq!(orch.count("SELECT COUNT(*) FROM outbox"), 2, "the run's two updates are owed");

    let gh = FakeGitHub::start_on(GhAuth::Token(TOKEN.into()), port);
    let statuses = gh.wait_final_status(&sha, "orch (push)", first);
    assert_eq!(statuses_states(&statuses), ["pending", "error"], "{statuses:#?}");

    // Twenty 502s in a row: three rounds of the reporter's six attempts, and more.
    gh.fail_next(OP_STATUS, 20, 502);
    let second = orch.deliver("push", &push_event("main", &sha, &sha)).run_id();
    let statuses = gh.wait_final_status(&sha, "orch (push)", second);
    assert_eq!(statuses_states(&statuses), ["pending", "error"], "{statuses:#?}");
    let refused = gh.requests().iter().filter(|r| r.op == OP_STATUS && r.status == 502).count();
    assert_eq!(refused, 20);
    for id in [first, second] {
        assert!(orch.run(id)["run"]["report_error"].is_null(), "nothing was given up");
    }
    wait_for(Duration::from_secs(10), "the outbox to empty", || match orch.count("SELECT COUNT(*) FROM outbox") {
        0 => Ok(()),
        n => Err(format!("{n} owed")),
    });
    gh.assert_no_violations();
}

/// `orch plan --payload` plans a saved delivery as the server does: for a push, a tag, a
/// pull request (its changed files from the base branch), the same plan as the server's
/// `plan.json` for the same delivery; a delivery the server runs nothing for says so.
#[test]
fn orch_plan_with_a_payload_plans_as_the_server_does() {
    let git = GitServer::start();
    let pipeline = "\
on:
  push: {branches: [main, topic], tags: [\"v*\"]}
  pull_request: {branches: [main]}
defaults: {image: busybox:latest}
steps:
  code:
    when: {paths: [\"src/**\"]}
    commands: [echo code]
  docs:
    when: {paths: [\"*.md\"]}
    commands: [echo docs]
  release:
    when: {event: tag}
    commands: [echo \"$ORCH_TAG\"]
  main-only:
    when: {branch: main, event: push}
    commands: [echo main]
";
    let base =
        git.on_branch("main", &[(".orch.yml", pipeline), ("src/lib.rs", "one\n"), ("README.md", "one\n")], "base");
    let head = git.commit(Some(&base), &[("README.md", "two\n")], "docs only");
    git.set_ref(&head, "refs/heads/topic");
    git.set_ref(&head, "refs/pull/3/head");
    git.set_ref(&base, "refs/tags/v1.0");
    // The server plans (it executes nothing: no local capacity, no Docker needed).
    let orch = Orch::start(ServeArgs { local_capacity: Some(0), clone_rewrite: vec![git.rewrite()], ..base_args() });
    let mut tag = push_event("main", ZERO_SHA, &base);
    tag["ref"] = json!("refs/tags/v1.0");
    let deliveries = [
        ("push", push_event("main", ZERO_SHA, &base)),
        ("push", push_event("topic", &base, &head)),
        ("push", tag),
        ("pull_request", pr_event("opened", 3, "topic", &head, "main", &base)),
    ];
    // The user's checkout: a clone of the repository at the pull request's head.
    let user = temp_dir("orch-payload-");
    let clone = user.path().join("hello");
    let out = Command::new("git").args(["clone", "-q", &git.url()]).arg(&clone).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (i, (event, payload)) in deliveries.iter().enumerate() {
        let id = orch.deliver(event, payload).run_id();
        let plan_file = orch.data_dir.join("runs").join(id.to_string()).join("plan.json");
        let server: Value = wait_for(Duration::from_secs(60), "the server's plan", || {
            std::fs::read_to_string(&plan_file)
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
        });
        let sha = payload.pointer("/pull_request/head/sha").or(payload.get("after")).and_then(Value::as_str).unwrap();
        let co = Command::new("git").args(["checkout", "-q", "--detach", sha]).current_dir(&clone).output().unwrap();
        assert!(co.status.success(), "{}", String::from_utf8_lossy(&co.stderr));
        let file = user.path().join(format!("delivery-{i}.json"));
        std::fs::write(&file, payload.to_string()).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_orch"))
            .args(["plan", "--format", "json", "--payload"])
            .arg(&file)
            .current_dir(&clone)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut local: Value = serde_json::from_slice(&out.stdout).unwrap();
        // The run's id is the one thing that differs (`plan` for `orch plan`).
        local["context"]["run_id"] = json!(id.to_string());
        for step in local["steps"].as_array_mut().unwrap() {
            assert_eq!(step["env"]["ORCH_RUN_ID"], "plan");
            step["env"]["ORCH_RUN_ID"] = json!(id.to_string());
        }
        assert_eq!(local, server, "delivery {i} ({event}): the plans differ");
        assert!(server["context"]["repo"] == REPO, "{server:#}");
    }
    // What each plan ran, to see the deliveries were told apart.
    let names = |i: i64| -> Vec<String> {
        let p: Value = serde_json::from_str(
            &std::fs::read_to_string(orch.data_dir.join("runs").join(i.to_string()).join("plan.json")).unwrap(),
        )
        .unwrap();
        p["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_string()).collect()
    };
    // The pushes list README.md as changed; the pull request's change is README.md too.
    assert_eq!(names(1), ["docs", "main-only"]);
    assert_eq!(names(2), ["docs"]);
    assert_eq!(names(3), ["docs", "release"]);
    assert_eq!(names(4), ["docs"]);
    // A delivery the server runs nothing for.
    let closed = user.path().join("closed.json");
    std::fs::write(&closed, pr_event("closed", 3, "topic", &head, "main", &base).to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_orch"))
        .args(["plan", "--payload"])
        .arg(&closed)
        .current_dir(&clone)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "the server runs nothing for this delivery: pull request #3 was closed: the server cancels its runs\n"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_orch"))
        .args(["ci", "--payload"])
        .arg(&closed)
        .current_dir(&clone)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("runs nothing for this delivery"));
    // `orch ci` runs the tag delivery with the server's facts (Docker).
    if docker_enabled() {
        let co = Command::new("git").args(["checkout", "-q", "--detach", &base]).current_dir(&clone).output().unwrap();
        assert!(co.status.success());
        let out = Command::new(env!("CARGO_BIN_EXE_orch"))
            .args(["ci", "--no-progress", "--payload"])
            .arg(user.path().join("delivery-2.json"))
            .current_dir(&clone)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("main-only skipped: when.event: `tag` is not one of push"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("release") && l.ends_with("| v1.0")), "{text}");
    }
}

const DEPLOY_PIPELINE: &str = "\
defaults:
  image: busybox:latest
  timeout: 2m
steps:
  build:
    commands:
      - echo built
  deploy:
    needs: [build]
    matrix:
      region: [eu, us]
    environment:
      name: staging
      url: https://staging.example.com
    commands:
      - sh ci/deploy.sh $region
";

/// The deployments GitHub holds once the last one's last status is final.
fn wait_github_deployments(gh: &FakeGitHub, n: usize) -> Vec<Value> {
    wait_for(Duration::from_secs(30), &format!("{n} GitHub deployments with a final status"), || {
        let d = gh.deployments();
        let last_final = d
            .last()
            .and_then(|d| d["statuses"].as_array()?.last().cloned())
            .is_some_and(|s| s["state"] != "in_progress" && s["state"] != "queued" && s["state"] != "pending");
        if d.len() == n && last_final { Ok(d) } else { Err(format!("{d:#?}")) }
    })
}

/// A push whose deploy step has a matrix is one deployment: one row in the database and the
/// API, one GitHub deployment of the commit with `in_progress` then `success`; a failing
/// deploy is a second one, `failure`, and what is live stays the first.
#[test]
fn a_deploy_step_with_a_matrix_is_one_deployment_recorded_and_posted_to_github() {
    require_docker!();
    let git = GitServer::start();
    let ok = "echo deploying to $1\n";
    let first = git.on_branch("main", &[(".orch.yml", DEPLOY_PIPELINE), ("ci/deploy.sh", ok)], "deploys");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let orch = Orch::start(token_args(&gh, &git));
    // GitHub cannot make the deployment for a while (past the reporter's six attempts):
    // its creation stays owed, and its states wait behind it.
    gh.fail_next(OP_DEPLOY_CREATE, 8, 502);

    let id = orch.deliver("push", &push_event("main", ZERO_SHA, &first)).run_id();
    let run = orch.wait_run_done(id);
    assert_eq!(run["run"]["status"], "success", "{run:#}");
    assert_eq!(orch.count("SELECT COUNT(*) FROM deployments"), 1);
    let deps = orch.get_json(&format!("/api/deployments?repo={REPO}"))["deployments"].clone();
    assert_eq!(deps.as_array().map(Vec::len), Some(1), "{deps:#}");
    let d = &deps[0];
    assert_eq!(
        (&d["run"], &d["step"], &d["environment"], &d["status"], &d["sha"], &d["ref"], &d["rollback"]),
        (
            &json!(id),
            &json!("deploy"),
            &json!("staging"),
            &json!("success"),
            &json!(first),
            &json!("main"),
            &json!(false)
        ),
        "{d:#}"
    );
    assert_eq!(run["deployments"], deps, "the run's deployments");

    let github = wait_github_deployments(&gh, 1);
    let refused = gh.requests().iter().filter(|r| r.op == OP_DEPLOY_CREATE && r.status == 502).count();
    assert_eq!(refused, 8);
    let g = &github[0];
    assert_eq!((&g["ref"], &g["environment"], &g["auto_merge"]), (&json!(first), &json!("staging"), &json!(false)));
    assert_eq!((&g["required_contexts"], &g["payload"]["orch_run"]), (&json!([]), &json!(id)), "{g:#}");
    let states: Vec<&str> = g["statuses"].as_array().unwrap().iter().map(|s| s["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["in_progress", "success"], "{g:#}");
    let success = &g["statuses"][1];
    assert_eq!(success["log_url"], json!(orch.url(&format!("/runs/{id}"))));
    assert_eq!(success["environment_url"], "https://staging.example.com");
    wait_for(Duration::from_secs(10), "the GitHub id recorded", || {
        let d = orch.get_json("/api/deployments")["deployments"][0].clone();
        if d["github_id"] == g["id"] { Ok(()) } else { Err(format!("{d:#}")) }
    });

    // A deploy that fails in one region: one deployment, failed; the first is still live.
    let bad = "echo deploying to $1\ntest $1 = eu\n";
    let second = git.commit(Some(&first), &[(".orch.yml", DEPLOY_PIPELINE), ("ci/deploy.sh", bad)], "breaks us");
    git.set_ref(&second, "refs/heads/main");
    let id2 = orch.deliver("push", &push_event("main", &first, &second)).run_id();
    assert_eq!(orch.wait_run_done(id2)["run"]["status"], "failure");
    let github = wait_github_deployments(&gh, 2);
    let states: Vec<&str> =
        github[1]["statuses"].as_array().unwrap().iter().map(|s| s["state"].as_str().unwrap()).collect();
    assert_eq!((states, &github[1]["ref"]), (vec!["in_progress", "failure"], &json!(second)), "{github:#?}");
    let envs = orch.get_json(&format!("/api/environments?repo={REPO}"))["environments"].clone();
    assert_eq!(envs.as_array().map(Vec::len), Some(1), "{envs:#}");
    assert_eq!((&envs[0]["live"]["sha"], &envs[0]["last"]["sha"]), (&json!(first), &json!(second)), "{envs:#}");
    assert_eq!(envs[0]["last"]["status"], "failure");
    let page = orch.get("/environments");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("staging") && page.text().contains(&first[..7]), "{}", page.text());
    gh.assert_no_violations();
    assert!(orch.leftovers().is_empty(), "{:?}", orch.leftovers());
}

/// A rollback through the API (`orch deploy ENV` without a commit): the commit live before
/// the live one is deployed again by a `deploy` run that runs only the deploy step and what
/// it needs, and is recorded as a rollback; bad requests are refused with the reason.
#[test]
fn a_rollback_redeploys_the_earlier_commit_and_is_recorded_as_one() {
    require_docker!();
    const TOKEN_API: &str = "api-token-for-rollback";
    let pipeline = format!("{DEPLOY_PIPELINE}  extra:\n    commands:\n      - echo extra\n");
    let files = |script: &'static str| [(".orch.yml", pipeline.clone()), ("ci/deploy.sh", script.to_string())];
    let git = GitServer::start();
    let a_files = files("echo deploying A to $1\n");
    let a = git.on_branch("main", &a_files.iter().map(|(p, c)| (*p, c.as_str())).collect::<Vec<_>>(), "A");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let orch = Orch::start(ServeArgs { api_token: Some(TOKEN_API.into()), ..token_args(&gh, &git) });
    let first = orch.deliver("push", &push_event("main", ZERO_SHA, &a)).run_id();
    assert_eq!(orch.wait_run_done(first)["run"]["status"], "success");
    let b_files = files("echo deploying B to $1\n");
    let b = git.commit(Some(&a), &b_files.iter().map(|(p, c)| (*p, c.as_str())).collect::<Vec<_>>(), "B");
    git.set_ref(&b, "refs/heads/main");
    let second = orch.deliver("push", &push_event("main", &a, &b)).run_id();
    assert_eq!(orch.wait_run_done(second)["run"]["status"], "success");

    // Refused: no token, a bad commit id, a commit orch never ran.
    let deploy = |body: &str, token: bool| {
        let auth = format!("Bearer {TOKEN_API}");
        let mut h = vec![("Content-Type", "application/json")];
        if token {
            h.push(("Authorization", auth.as_str()));
        }
        orch.request("POST", "/api/environments/staging/deploy", &h, body.as_bytes())
    };
    assert_eq!(deploy(&format!(r#"{{"repo":"{REPO}"}}"#), false).status, 401);
    let bad = deploy(&format!(r#"{{"repo":"{REPO}","sha":"abc"}}"#), true);
    assert_eq!(bad.status, 400, "{}", bad.text());
    let unknown = deploy(&format!(r#"{{"repo":"{REPO}","sha":"{}"}}"#, "0".repeat(40)), true);
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    assert!(unknown.text().contains("push it"), "{}", unknown.text());

    // The rollback, through the CLI.
    let out = Command::new(env!("CARGO_BIN_EXE_orch"))
        .args(["deploy", "staging", "--repo", REPO])
        .env("ORCH_SERVER", orch.url(""))
        .env("ORCH_API_TOKEN", TOKEN_API)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("(rollback of {REPO} {a} to staging)")), "{stdout}");
    let id: i64 = stdout.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("the run's id");
    let run = orch.wait_run_done(id);
    assert_eq!(run["run"]["status"], "success", "{run:#}");
    assert_eq!(
        (&run["run"]["event"], &run["run"]["sha"], &run["run"]["environment"], &run["run"]["redeploy"]),
        (&json!("deploy"), &json!(a), &json!("staging"), &json!(true)),
        "{run:#}"
    );
    let log = orch.get(&format!("/api/runs/{id}/logs/{}", "deploy%5Bregion%3Deu%5D")).text();
    assert!(log.contains("deploying A to eu"), "{log}");
    let extra = run["skipped"].as_array().and_then(|s| s.iter().find(|s| s["name"] == "extra").cloned());
    assert_eq!(extra.map(|e| e["reason"].clone()), Some(json!("not needed to deploy to `staging`")), "{run:#}");
    assert_eq!(step_of(&run, "build").map(|s| &s["status"]), Some(&json!("passed")), "{run:#}");

    let deps = orch.get_json(&format!("/api/deployments?repo={REPO}&environment=staging"))["deployments"].clone();
    let shas: Vec<(&str, bool)> =
        deps.as_array().unwrap().iter().map(|d| (d["sha"].as_str().unwrap(), d["rollback"] == true)).collect();
    assert_eq!(shas, [(a.as_str(), true), (b.as_str(), false), (a.as_str(), false)], "{deps:#}");
    assert_eq!(deps[0]["event"], "deploy");
    let envs = orch.get_json(&format!("/api/environments?repo={REPO}"))["environments"].clone();
    assert_eq!(envs[0]["live"]["sha"], json!(a), "{envs:#}");
    let github = wait_github_deployments(&gh, 3);
    assert_eq!(github[2]["ref"], json!(a));
    // Each success ended the one live before it on GitHub: A's first deployment when B
    // went live, B's when the rollback did.
    let github = wait_for(Duration::from_secs(30), "the earlier deployments marked inactive", || {
        let d = gh.deployments();
        let last = |i: usize| d[i]["statuses"].as_array().and_then(|s| s.last()).map(|s| s["state"].clone());
        if last(0) == Some(json!("inactive")) && last(1) == Some(json!("inactive")) {
            Ok(d)
        } else {
            Err(format!("{d:#?}"))
        }
    });
    let inactive = github[1]["statuses"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(inactive["description"], json!(format!("superseded by run {id}")), "{inactive:#}");
    assert_eq!(inactive["log_url"], json!(orch.url(&format!("/runs/{second}"))), "{inactive:#}");
    assert_eq!(github[2]["statuses"].as_array().unwrap().last().unwrap()["state"], "success");

    // Forward again to `b`, named: newer than the live `a`, so not a rollback.
    let r = deploy(&format!(r#"{{"repo":"{REPO}","sha":"{b}"}}"#), true);
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(orch.wait_run_done(r.json()["run"].as_i64().unwrap())["run"]["status"], "success");
    let d = orch.get_json(&format!("/api/deployments?repo={REPO}&limit=1"))["deployments"][0].clone();
    assert_eq!((&d["sha"], &d["rollback"], &d["event"]), (&json!(b), &json!(false), &json!("deploy")), "{d:#}");
    gh.assert_no_violations();
    assert!(orch.leftovers().is_empty(), "{:?}", orch.leftovers());
}

/// `--github-deployments false`: deployments are recorded, GitHub gets only the statuses.
#[test]
fn without_github_deployments_only_the_record_is_kept() {
    require_docker!();
    let git = GitServer::start();
    let sha = git.on_branch("main", &[(".orch.yml", DEPLOY_PIPELINE), ("ci/deploy.sh", "echo ok\n")], "deploys");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let orch = Orch::start(ServeArgs { github_deployments: Some(false), ..token_args(&gh, &git) });
    let id = orch.deliver("push", &push_event("main", ZERO_SHA, &sha)).run_id();
    assert_eq!(orch.wait_run_done(id)["run"]["status"], "success");
    assert_eq!(statuses_states(&gh.wait_final_status(&sha, "orch (push)", id)), ["pending", "pending", "success"]);
    assert_eq!(orch.count("SELECT COUNT(*) FROM deployments WHERE status = 'success'"), 1);
    assert!(gh.requests().iter().all(|r| r.op == OP_STATUS), "{:#?}", gh.requests());
    gh.assert_no_violations();
}
