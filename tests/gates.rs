//! Deployment gates on `orch serve`, with real parts (see `serve_support`): named API tokens
//! made with `orch token`, votes through the API and `orch approve`/`orch reject`, the
//! gate's wait, its timeout, and what GitHub hears. The runs execute steps: they need
//! `ORCH_DOCKER_TESTS=1`.

use std::process::Command;
use std::time::Duration;

use orch::server::config::ServeArgs;
use serde_json::{Value, json};

mod serve_support;

use serve_support::*;

const ADMIN: &str = "admin-api-token-for-tests";

const GATED: &str = "\
defaults:
  image: busybox:latest
  timeout: 2m
environments:
  production:
    branches: [main]
    approval: { approvers: [alice, bob, carol], required: 2, timeout: 10m }
    secrets: [DEPLOY_KEY]
steps:
  build:
    commands: ['echo built ${DEPLOY_KEY:-without the key}']
  ship:
    needs: [build]
    environment: production
    commands: ['echo \"deploying with $DEPLOY_KEY\"']
";

const TWO_GATES: &str = "\
defaults:
  image: busybox:latest
  timeout: 2m
environments:
  production:
    approval: { approvers: [alice, bob], timeout: 10m }
  staging:
    approval: { approvers: [alice], timeout: 2s }
steps:
  ship:
    environment: production
    commands: [echo shipping]
  stage:
    environment: staging
    commands: [echo staging]
  after:
    needs: [ship]
    commands: [echo after]
";

/// `orch ARGS` with `env`; (exit code, stdout, stderr).
fn orch_cmd(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_orch"));
    c.args(args).env_remove("ORCH_API_TOKEN").env_remove("ORCH_SERVER").env_remove("ORCH_DATA_DIR");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("orch runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A named token made with `orch token create` in the server's data directory.
fn token(orch: &Client, name: &str, can: &[&str]) -> String {
    let data = orch.data_dir.display().to_string();
    let mut args = vec!["token", "create", name, "--data-dir", &data];
    for c in can {
        args.extend(["--can", c]);
    }
    let (code, out, err) = orch_cmd(&args, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&format!("token `{name}` created")), "{err}");
    out.trim().to_string()
}

fn vote(orch: &Client, run: i64, what: &str, token: &str, body: &Value) -> HttpResponse {
    let auth = format!("Bearer {token}");
    orch.request(
        "POST",
        &format!("/api/runs/{run}/{what}"),
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

fn gates(orch: &Client, run: i64) -> Vec<Value> {
    orch.get_json(&format!("/api/runs/{run}/gates"))["gates"].as_array().cloned().unwrap_or_default()
}

/// Waits until run `run` has a gate for `env` waiting.
fn wait_gate(orch: &Client, run: i64, env: &str) -> Value {
    wait_for(Duration::from_secs(90), &format!("a waiting gate for {env}"), || {
        gates(orch, run)
            .into_iter()
            .find(|g| g["environment"] == env && g["status"] == "waiting")
            .ok_or_else(|| format!("{:#}", orch.run(run)))
    })
}

fn server(gh: &FakeGitHub, git: &GitServer, secrets: Option<std::path::PathBuf>) -> Orch {
    Orch::start(ServeArgs {
        api_token: Some(ADMIN.into()),
        secrets_file: secrets,
        step_statuses: Some(true),
        ..token_args(gh, git)
    })
}

#[test]
fn two_of_three_approvers_let_a_deployment_go_and_only_named_approvers_may_vote() {
    require_docker!();
    let git = GitServer::start();
    let sha = git.on_branch("main", &[(".orch.yml", GATED)], "gated");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let dir = temp_dir("orch-gates-secrets-");
    let secrets = dir.path().join("secrets.env");
    std::fs::write(&secrets, "DEPLOY_KEY=s3cret-deploy-key\n").unwrap();
    let orch = server(&gh, &git, Some(secrets));
    let alice = token(&orch, "alice", &["approve"]);
    let bob = token(&orch, "bob", &["approve"]);
    let dave = token(&orch, "dave", &["approve"]);
    let erin = token(&orch, "erin", &[]);
    let mallory = token(&orch, "carol", &["approve"]);
    let (code, _, err) =
        orch_cmd(&["token", "revoke", "carol", "--data-dir", &orch.data_dir.display().to_string()], &[]);
    assert_eq!(code, 0, "{err}");
    let (_, list, _) = orch_cmd(&["token", "list", "--data-dir", &orch.data_dir.display().to_string()], &[]);
    assert!(list.lines().any(|l| l.starts_with("alice\tcan: approve")), "{list}");
    assert!(list.lines().any(|l| l.starts_with("carol revoked")), "{list}");
    assert!(!list.contains(&alice), "a token is shown once: {list}");

    let id = orch.deliver("push", &push_event("main", ZERO_SHA, &sha)).run_id();
    let gate = wait_gate(&orch, id, "production");
    assert_eq!(gate["step"], "ship");
    assert_eq!((gate["required"].as_i64(), gate["approvers"].clone()), (Some(2), json!(["alice", "bob", "carol"])));
    // The step shows what it waits for; the step before it ran meanwhile, without the key.
    let run = orch.wait_run(id, "build passed", |r| step_of(r, "build").is_some_and(|s| s["status"] == "passed"));
    let ship = step_of(&run, "ship").cloned().unwrap_or_default();
    assert!(
        ship["message"].as_str().unwrap_or("").contains("waiting for approval (2 of alice, bob, carol)"),
        "{run:#}"
    );
    let log = orch.wait_log(id, "build", "built");
    assert!(log.contains("built without the key"), "{log}");

    // Who may not vote: the server's own token, someone not listed, a token without the
    // ability, a revoked token, no token.
    let none = json!({});
    let r = vote(&orch, id, "approve", ADMIN, &none);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("no person"), "{}", r.text());
    let r = vote(&orch, id, "approve", &dave, &none);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("not an approver"), "{}", r.text());
    assert_eq!(vote(&orch, id, "approve", &erin, &none).status, 403);
    let r = vote(&orch, id, "approve", &mallory, &none);
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.text().contains("revoked"), "{}", r.text());
    assert_eq!(vote(&orch, id, "approve", "orch_api_nonsense", &none).status, 401);
    assert_eq!(orch.request("POST", &format!("/api/runs/{id}/approve"), &[], b"").status, 401);
    // A live name is not taken twice; a revoked one gets a new token.
    let data = orch.data_dir.display().to_string();
    let (code, _, err) = orch_cmd(&["token", "create", "alice", "--data-dir", &data], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`alice` has a live token already"), "{err}");
    let carol = token(&orch, "carol", &[]);
    assert_ne!(carol, mallory);
    assert_eq!(vote(&orch, id, "approve", &mallory, &none).status, 401, "the old token stays revoked");
    assert_eq!(vote(&orch, id, "approve", &carol, &none).status, 403, "the new one has no `approve`");
    assert_eq!(gates(&orch, id)[0]["votes"], json!([]), "no vote was counted");

    // The run page shows the gate, who approved so far, and the buttons to vote.
    let page = orch.get(&format!("/runs/{id}")).text();
    assert!(page.contains("Deployment gates") && page.contains("approved by no one yet"), "{page}");
    assert!(page.contains("data-vote=\"approve\"") && page.contains("data-vote=\"reject\""), "{page}");

    // Alice approves with the CLI: one of two.
    let server_url = orch.url("");
    let (code, out, err) =
        orch_cmd(&["approve", &id.to_string(), "ship"], &[("ORCH_SERVER", &server_url), ("ORCH_API_TOKEN", &alice)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("production: waiting: 1 of 2 approved (alice)"), "{out}");
    let r = vote(&orch, id, "approve", &alice, &none);
    assert_eq!(r.status, 409, "one vote each: {}", r.text());
    assert_eq!(orch.run(id)["run"]["status"], "running");
    // Bob's approval is the second: the deployment goes, with its secret.
    let r = vote(&orch, id, "approve", &bob, &json!({"environment": "production"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["gate"]["status"], "approved");
    let run = orch.wait_run_done(id);
    assert_eq!(run["run"]["status"], "success", "{run:#}");
    let log = orch.wait_log(id, "ship", "deploying");
    assert!(log.contains("deploying with ***") && !log.contains("s3cret"), "{log}");
    let gate = &gates(&orch, id)[0];
    assert_eq!(gate["status"], "approved");
    let voters: Vec<&str> = gate["votes"].as_array().unwrap().iter().map(|v| v["who"].as_str().unwrap()).collect();
    assert_eq!(voters.len(), 2);
    assert!(voters.contains(&"alice") && voters.contains(&"bob"), "{gate:#}");
    assert!(gate["votes"][0]["at"].as_i64().is_some());
    let page = orch.get(&format!("/runs/{id}")).text();
    assert!(
        page.contains("approved · approved by alice, bob") || page.contains("approved · approved by bob, alice"),
        "{page}"
    );
    assert!(!page.contains("data-vote="), "no buttons once decided: {page}");
    // GitHub heard that the run waited, and for whom.
    let statuses = gh.wait_final_status(&sha, "orch (push)", id);
    assert!(
        statuses
            .iter()
            .any(|s| s["state"] == "pending"
                && s["description"] == "production waits for approval: 2 of alice, bob, carol"),
        "{statuses:#?}"
    );
    gh.assert_no_violations();
    assert!(orch.leftovers().is_empty(), "{:?}", orch.leftovers());
}

#[test]
fn a_rejected_gate_fails_its_steps_and_a_gate_no_one_answers_times_out() {
    require_docker!();
    let git = GitServer::start();
    let sha = git.on_branch("main", &[(".orch.yml", TWO_GATES)], "two gates");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let orch = server(&gh, &git, None);
    let bob = token(&orch, "bob", &["approve"]);
    let id = orch.deliver("push", &push_event("main", ZERO_SHA, &sha)).run_id();
    wait_gate(&orch, id, "production");
    // Two gates may wait at once: a vote names its environment.
    let both = gates(&orch, id);
    if both.iter().filter(|g| g["status"] == "waiting").count() == 2 {
        let r = vote(&orch, id, "reject", &bob, &json!({}));
        assert_eq!(r.status, 409, "{}", r.text());
        assert!(r.text().contains("name one with `environment`"), "{}", r.text());
    }
    let server_url = orch.url("");
    let (code, out, err) = orch_cmd(
        &["reject", &id.to_string(), "--environment", "production"],
        &[("ORCH_SERVER", &server_url), ("ORCH_API_TOKEN", &bob)],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("production: rejected: rejected by bob"), "{out}");
    let run = orch.wait_run_done(id);
    assert_eq!(run["run"]["status"], "failure", "{run:#}");
    let ship = step_of(&run, "ship").unwrap();
    assert_eq!(ship["status"], "failed", "{run:#}");
    assert!(ship["message"].as_str().unwrap().contains("rejected by bob"), "{run:#}");
    assert_eq!(step_of(&run, "after").unwrap()["status"], "skipped", "{run:#}");
    let stage = step_of(&run, "stage").unwrap();
    assert_eq!(stage["status"], "failed", "{run:#}");
    assert!(stage["message"].as_str().unwrap().contains("no approval within 2s"), "{run:#}");
    let by_env = |e: &str| gates(&orch, id).into_iter().find(|g| g["environment"] == e).unwrap();
    assert_eq!(by_env("production")["status"], "rejected");
    assert_eq!(by_env("staging")["status"], "timed_out");
    // A decided gate takes no more votes.
    assert_eq!(vote(&orch, id, "approve", &bob, &json!({"environment": "production"})).status, 409);
    gh.assert_no_violations();
    assert!(orch.leftovers().is_empty(), "{:?}", orch.leftovers());
}

const HOLDER: &str = "\
defaults:
  image: busybox:latest
  timeout: 2m
environments:
  hold:
    approval: { approvers: [alice] }
steps:
  ship:
    environment: production
    commands: [echo shipping]
  wait:
    needs: [ship]
    environment: hold
    commands: [echo held]
  finish:
    needs: [wait]
    environment: production
    commands: ['echo \"finished at $(cut -d \" \" -f1 /proc/uptime)\"']
";

const SHIP: &str = "\
defaults:
  image: busybox:latest
  timeout: 2m
steps:
  ship:
    environment: production
    commands: ['echo \"shipping at $(cut -d \" \" -f1 /proc/uptime)\"']
";

/// A push of `branch` whose commit happened at `time` (Unix seconds).
fn push_at(orch: &Client, git: &GitServer, branch: &str, file: &str, time: i64) -> i64 {
    let sha = git.on_branch(branch, &[(".orch.yml", file)], &format!("on {branch}"));
    let mut payload = push_event(branch, ZERO_SHA, &sha);
    payload["repository"]["pushed_at"] = json!(time);
    orch.deliver("push", &payload).run_id()
}

/// The time a step printed after `prefix`: the machine's uptime (containers share the
/// kernel's clock), in seconds to the hundredth.
fn printed_time(orch: &Client, run: i64, step: &str, prefix: &str) -> f64 {
    let log = orch.wait_log(run, step, prefix);
    let line = log.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("{log}"));
    line[prefix.len()..].trim().parse().unwrap_or_else(|e| panic!("{line}: {e}"))
}

#[test]
fn one_deployment_at_a_time_per_environment_the_newest_waiting_commit_first_and_never_an_older_one() {
    require_docker!();
    let git = GitServer::start();
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let orch = Orch::start(ServeArgs { local_capacity: Some(4), ..token_args(&gh, &git) });
    let alice = token(&orch, "alice", &["approve"]);
    // A holds `production` from its first deployment to its last, which waits for an
    // approval elsewhere: B and C line up meanwhile.
    let a = push_at(&orch, &git, "main", HOLDER, 1_000);
    wait_gate(&orch, a, "hold");
    let queued = |n: i64| {
        wait_for(Duration::from_secs(90), &format!("{n} runs in line for production"), || {
            let q =
                orch.count("SELECT COUNT(*) FROM env_queue WHERE environment = 'production' AND status = 'waiting'");
            if q == n { Ok(()) } else { Err(format!("{q} in line")) }
        })
    };
    let b = push_at(&orch, &git, "b", SHIP, 2_000);
    queued(1);
    // B's deploying step says what it waits for: A's deployment.
    let said = format!("waiting for its turn: run {a} (commit ");
    wait_for(Duration::from_secs(30), "B to say what it waits for", || {
        let run = orch.run(b);
        let message = step_of(&run, "ship").and_then(|s| s["message"].as_str()).unwrap_or_default().to_string();
        if message.starts_with(&said) { Ok(()) } else { Err(format!("ship's message: {message:?}")) }
    });
    let c = push_at(&orch, &git, "c", SHIP, 3_000);
    queued(2);
    assert_eq!(orch.run(b)["run"]["status"], "running");
    let r = vote(&orch, a, "approve", &alice, &json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    for id in [a, b, c] {
        let run = orch.wait_run_done(id);
        assert_eq!(run["run"]["status"], "success", "{run:#}");
    }
    // C, the newer commit, deployed after A's last deployment ended; B was superseded.
    let a_end = printed_time(&orch, a, "finish", "finished at ");
    let c_start = printed_time(&orch, c, "ship", "shipping at ");
    assert!(c_start >= a_end, "C deployed at {c_start}, before A's end at {a_end}");
    let run_b = orch.run(b);
    let ship_b = step_of(&run_b, "ship").unwrap();
    assert_eq!(ship_b["status"], "skipped", "{run_b:#}");
    assert_eq!(ship_b["message"], json!(format!("superseded by a newer commit (run {c})")), "{run_b:#}");
    // What is deployed is C's commit: an older one is refused.
    let d = push_at(&orch, &git, "d", SHIP, 1_500);
    let run_d = orch.wait_run_done(d);
    let ship_d = step_of(&run_d, "ship").unwrap();
    assert_eq!(ship_d["status"], "skipped", "{run_d:#}");
    assert!(ship_d["message"].as_str().unwrap().contains("runs a newer commit"), "{run_d:#}");
    assert!(ship_d["message"].as_str().unwrap().contains(&format!("run {c}")), "{run_d:#}");
    assert_eq!(orch.count("SELECT COUNT(*) FROM env_locks"), 0, "every lock was released");
    assert!(orch.leftovers().is_empty(), "{:?}", orch.leftovers());
}

#[test]
fn a_github_app_s_check_run_says_the_run_waits_and_for_whom() {
    require_docker!();
    const APP_ID: u64 = 4243;
    let git = GitServer::start();
    let sha = git.on_branch("main", &[(".orch.yml", TWO_GATES)], "two gates");
    let keys = temp_dir("orch-gates-app-");
    let (key, public) = (keys.path().join("app.pem"), keys.path().join("app.pub.pem"));
    for args in [
        vec!["genrsa", "-traditional", "-out", key.to_str().unwrap(), "2048"],
        vec!["rsa", "-in", key.to_str().unwrap(), "-pubout", "-out", public.to_str().unwrap()],
    ] {
        let out = Command::new("openssl").args(&args).output().expect("openssl runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let gh = FakeGitHub::start(GhAuth::App { app_id: APP_ID, public_key: public, installation_id: 1 });
    let orch = Orch::start(app_args(&gh, APP_ID, &key, git.rewrite()));
    let bob = token(&orch, "bob", &["approve"]);
    let id = orch.deliver("push", &push_event("main", ZERO_SHA, &sha)).run_id();
    wait_gate(&orch, id, "production");
    let titled = wait_for(Duration::from_secs(30), "the check run's title", || {
        let runs = gh.check_runs();
        let c = runs.values().find(|c| c["external_id"] == id.to_string().as_str()).cloned();
        match c {
            Some(c) if c["output"]["title"].as_str().is_some_and(|t| t.contains("waits for approval")) => Ok(c),
            other => Err(format!("{other:#?}\n{:#?}\n{:?}", gh.requests(), gh.violations())),
        }
    });
    assert_eq!(titled["status"], "in_progress", "{titled:#}");
    let title = titled["output"]["title"].as_str().unwrap();
    assert!(title.contains("alice"), "{title}");
    let r = vote(&orch, id, "approve", &bob, &json!({"environment": "production"}));
    assert_eq!(r.status, 200, "{}", r.text());
    let run = orch.wait_run_done(id);
    assert_eq!(step_of(&run, "ship").unwrap()["status"], "passed", "{run:#}");
    wait_for(Duration::from_secs(30), "the completed check run", || {
        let runs = gh.check_runs();
        let done = runs.values().any(|c| c["external_id"] == id.to_string().as_str() && c["status"] == "completed");
        if done { Ok(()) } else { Err(format!("{runs:#?}")) }
    });
    gh.assert_no_violations();
}

const TRUSTED: &str = "\
defaults:
  image: busybox:latest
  timeout: 2m
environments:
  production:
    branches: [main]
    approval: { approvers: [alice], timeout: 10m }
    secrets: [PRODUCTION_TOKEN]
steps:
  ship:
    environment: production
    commands: ['echo \"shipping with $PRODUCTION_TOKEN\"']
";

/// A branch rewrites production's rules to deploy itself, unapproved, with its secret.
const REWRITTEN: &str = "\
defaults:
  image: busybox:latest
  timeout: 2m
environments:
  production: { branches: [evil] }
steps:
  build:
    commands: ['echo built']
  ship:
    environment: production
    commands: ['echo \"shipping with $PRODUCTION_TOKEN\"']
  peek:
    secrets: [PRODUCTION_TOKEN]
    commands: ['echo \"peeking at ${PRODUCTION_TOKEN:-nothing}\"']
";

const TOKEN_VALUE: &str = "pr0duction-t0ken-value";

/// Every log of run `id`, one after the other.
fn all_logs(orch: &Client, id: i64) -> String {
    let run = orch.run(id);
    let steps = run["steps"].as_array().cloned().unwrap_or_default();
    steps
        .iter()
        .map(|s| orch.get(&format!("/api/runs/{id}/logs/{}", s["name"].as_str().unwrap_or(""))).text())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Why the planner refused step `name` of `run`.
fn refusal(run: &Value, name: &str) -> String {
    let skipped = run["skipped"].as_array().cloned().unwrap_or_default();
    let s = skipped.iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("`{name}` not refused: {run:#}"));
    s["reason"].as_str().unwrap_or("").to_string()
}

/// On a server, a branch's `.orch.yml` cannot loosen the rules of an environment the
/// default branch's declares: those rules govern the run (its step is refused, no gate,
/// the secret reaches no step); with the default branch's file invalid, no deployment
/// from a branch goes; the same file on the default branch follows its own rules.
#[test]
fn a_branch_cannot_rewrite_the_rules_of_an_environment_the_default_branch_declares() {
    require_docker!();
    let git = GitServer::start();
    let main = git.on_branch("main", &[(".orch.yml", TRUSTED)], "trusted rules");
    let evil = git.on_branch("evil", &[(".orch.yml", REWRITTEN)], "rewritten rules");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let dir = temp_dir("orch-gates-secrets-");
    let secrets = dir.path().join("secrets.env");
    std::fs::write(&secrets, format!("PRODUCTION_TOKEN={TOKEN_VALUE}\n")).unwrap();
    let orch = server(&gh, &git, Some(secrets));
    let evil_push = |sha: &str| {
        let id = orch.deliver("push", &push_event("evil", ZERO_SHA, sha)).run_id();
        let run = orch.wait_run_done(id);
        assert_eq!(run["run"]["status"], "success", "the rest of the run goes on: {run:#}");
        assert_eq!(step_of(&run, "build").unwrap()["status"], "passed", "{run:#}");
        assert!(step_of(&run, "ship").is_none(), "refused, not run: {run:#}");
        assert!(gates(&orch, id).is_empty(), "no gate: the step was refused");
        let logs = all_logs(&orch, id);
        assert!(logs.contains("peeking at nothing"), "{logs}");
        assert!(!logs.contains(TOKEN_VALUE) && !logs.contains("shipping"), "{logs}");
        (id, refusal(&run, "ship"))
    };

    // The default branch's rules: only `main` deploys to production.
    let (_, why) = evil_push(&evil);
    assert_eq!(why, "environment `production` deploys only from branches main: this run is on branch evil");

    // The default branch's file is invalid: deployments from branches are refused.
    let broken = git.commit(Some(&main), &[(".orch.yml", "steps: [not, a, map]\n")], "broken");
    git.set_ref(&broken, "refs/heads/main");
    let again = git.commit(Some(&evil), &[("README.md", "again")], "again");
    git.set_ref(&again, "refs/heads/evil");
    let (_, why) = evil_push(&again);
    assert!(
        why.starts_with(
            "environment `production`: its rules come from the default branch `main`, whose .orch.yml is invalid"
        ),
        "{why}"
    );

    // The same file on the default branch: its own rules, which do not let `main` deploy.
    let same = git.commit(Some(&broken), &[(".orch.yml", REWRITTEN)], "rewritten on main");
    git.set_ref(&same, "refs/heads/main");
    let id = orch.deliver("push", &push_event("main", &broken, &same)).run_id();
    let run = orch.wait_run_done(id);
    assert_eq!(
        refusal(&run, "ship"),
        "environment `production` deploys only from branches evil: this run is on branch main"
    );
    assert!(!all_logs(&orch, id).contains(TOKEN_VALUE));
    gh.assert_no_violations();
    assert!(orch.leftovers().is_empty(), "{:?}", orch.leftovers());
}

/// A rollback deploys an older commit under today's rules: those of the default branch's
/// tip, not of the old commit's file, which predates the approval.
#[test]
fn a_rollback_to_a_commit_from_before_the_approval_still_needs_it() {
    require_docker!();
    let git = GitServer::start();
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let orch = server(&gh, &git, None);
    let alice = token(&orch, "alice", &["approve"]);
    let a = git.on_branch("main", &[(".orch.yml", SHIP)], "A: production takes any run");
    let first = orch.deliver("push", &push_event("main", ZERO_SHA, &a)).run_id();
    assert_eq!(orch.wait_run_done(first)["run"]["status"], "success");
    let gated = format!("environments:\n  production:\n    approval: {{ approvers: [alice] }}\n{SHIP}");
    let b = git.commit(Some(&a), &[(".orch.yml", &gated)], "B: production needs alice");
    git.set_ref(&b, "refs/heads/main");
    let second = orch.deliver("push", &push_event("main", &a, &b)).run_id();
    wait_gate(&orch, second, "production");
    assert_eq!(vote(&orch, second, "approve", &alice, &json!({})).status, 200);
    assert_eq!(orch.wait_run_done(second)["run"]["status"], "success");
    // Back to A, whose own file asks for no approval.
    let auth = format!("Bearer {ADMIN}");
    let r = orch.request(
        "POST",
        "/api/environments/production/deploy",
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        json!({ "repo": REPO, "sha": a }).to_string().as_bytes(),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let back = r.json()["run"].as_i64().expect("the rollback's run");
    let gate = wait_gate(&orch, back, "production");
    assert_eq!(gate["approvers"], json!(["alice"]), "{gate:#}");
    assert_eq!(vote(&orch, back, "approve", &alice, &json!({})).status, 200);
    let run = orch.wait_run_done(back);
    assert_eq!((&run["run"]["status"], &run["run"]["sha"]), (&json!("success"), &json!(a)), "{run:#}");
    let d = orch.get_json(&format!("/api/deployments?repo={REPO}&limit=1"))["deployments"][0].clone();
    assert_eq!((&d["sha"], &d["rollback"], &d["approved_by"]), (&json!(a), &json!(true), &json!("alice")), "{d:#}");
    gh.assert_no_violations();
    assert!(orch.leftovers().is_empty(), "{:?}", orch.leftovers());
}
