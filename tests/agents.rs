//! Agents (`orch agent`, the built binary) executing a real server's runs: the queue shared
//! by several agents (none run twice), an agent killed mid-run (its run goes to another
//! agent within the lease; its late report is refused), labels, tokens, cancel. The server
//! runs in this process with no local capacity; agents are processes on this machine's
//! Docker. Needs `ORCH_DOCKER_TESTS=1`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod serve_support;

use serde_json::{Value, json};
use serve_support::*;

const PIPELINE: &str = "\
defaults:
  image: busybox:latest
  timeout: 2m
steps:
  build:
    commands:
      - echo \"built by $(hostname)\" > out.txt
      - echo built
    artifacts: [out.txt]
  test:
    needs: [build]
    commands:
      - grep -q built out.txt
      - echo tests passed
";

/// A server that executes nothing itself, reporting to `gh` and cloning from `git`.
fn server(gh: &FakeGitHub, git: &GitServer, lease: u64) -> Orch {
    Orch::start(orch::server::config::ServeArgs {
        local_capacity: Some(0),
        agent_lease: Some(lease),
        agent_retries: Some(2),
        ..token_args(gh, git)
    })
}

/// `orch agent-token create NAME` against the server's data directory: the token.
fn create_token(data_dir: &Path, name: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_orch"))
        .args(["agent-token", "create", name])
        .env("ORCH_DATA_DIR", data_dir)
        .output()
        .expect("orch agent-token runs");
    assert!(out.status.success(), "agent-token create: {}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(token.starts_with("orch_agent_") && token.len() > 40, "{token}");
    token
}

fn agent_token_cmd(data_dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_orch"))
        .arg("agent-token")
        .args(args)
        .env("ORCH_DATA_DIR", data_dir)
        .output()
        .expect("orch agent-token runs")
}

/// `POST /api/agent/...` with an agent's token.
fn agent_post(orch: &Orch, token: &str, path: &str, body: &Value) -> HttpResponse {
    orch.request(
        "POST",
        path,
        &[("authorization", &format!("Bearer {token}")), ("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
}

fn push(orch: &Orch, git: &GitServer, branch: &str, files: &[(&str, &str)]) -> (i64, String) {
    let sha = git.on_branch(branch, files, &format!("commit on {branch} {}", new_guid()));
    let id = orch.deliver("push", &push_event(branch, ZERO_SHA, &sha)).run_id();
    (id, sha)
}

#[test]
fn three_agents_run_thirty_queued_runs_once_each_with_their_logs_artifacts_and_statuses() {
    if !docker_enabled() {
        return;
    }
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let git = GitServer::start();
    let orch = server(&gh, &git, 30);
    let sha = git.on_branch("main", &[(".orch.yml", PIPELINE)], "the pipeline");
    // Thirty runs queued before any agent exists: they wait.
    let mut ids = Vec::new();
    for i in 0..30 {
        git.set_ref(&sha, &format!("refs/heads/b{i}"));
        let payload = push_event(&format!("b{i}"), ZERO_SHA, &sha);
        ids.push(orch.deliver("push", &payload).run_id());
    }
    std::thread::sleep(Duration::from_secs(2));
    for id in &ids {
        assert_eq!(orch.run(*id)["run"]["status"], "queued", "no executor yet: {}", orch.run(*id));
    }
    let tokens: Vec<String> = ["a1", "a2", "a3"].iter().map(|n| create_token(&orch.data_dir, n)).collect();
    let agents: Vec<Agent> = tokens.iter().map(|t| Agent::start(&orch, t, "linux", 1)).collect();
    let mut by_agent = std::collections::HashMap::<String, usize>::new();
    for id in &ids {
        let r = wait_for(Duration::from_secs(300), "the run to end", || {
            let r = orch.run(*id);
            if TERMINAL.contains(&r["run"]["status"].as_str().unwrap_or("")) { Ok(r) } else { Err(r.to_string()) }
        });
        let logs = agents.iter().map(|a| a.log_text()).collect::<Vec<_>>().join("\n---\n");
        assert_eq!(r["run"]["status"], "success", "{r:#}\n{logs}");
        // Taken once: one attempt, by one agent.
        assert_eq!(r["run"]["attempts"], 1, "{r:#}");
        *by_agent.entry(r["run"]["agent"].as_str().unwrap_or("?").to_string()).or_default() += 1;
        let log = orch.get(&format!("/api/runs/{id}/logs/test"));
        assert_eq!(log.status, 200);
        assert!(log.text().contains("tests passed"), "{}", log.text());
        // The artifact came up from the agent.
        let art = orch.get(&format!("/api/runs/{id}/artifacts/build/out.txt"));
        assert_eq!(art.status, 200, "{}", art.text());
        assert!(art.text().starts_with("built by "), "{}", art.text());
    }
    assert_eq!(by_agent.values().sum::<usize>(), 30);
    assert!(by_agent.keys().all(|k| ["a1", "a2", "a3"].contains(&k.as_str())), "{by_agent:?}");
    assert!(by_agent.len() >= 2, "the queue was shared: {by_agent:?}");
    // Each run reported once to GitHub, ending in success.
    let statuses = gh.statuses_of(&sha, "orch (push)");
    let finals = statuses.iter().filter(|s| s["state"] == "success").count();
    assert_eq!(finals, 30, "{statuses:#?}");
    // The agents as the API shows them.
    let list = orch.get_json("/api/agents");
    let names: Vec<&str> = list["agents"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a1", "a2", "a3"]);
    assert!(list["agents"].as_array().unwrap().iter().all(|a| a["labels"] == json!(["linux"])), "{list:#}");
    // And as the dashboard shows them.
    let page = orch.get("/agents").text();
    assert!(["a1", "a2", "a3"].iter().all(|a| page.contains(&format!(">{a}</code>"))), "{page}");
    assert_eq!(page.matches("<td>connected</td>").count(), 3, "{page}");
    assert!(page.contains("executes no runs itself"), "{page}");
    let run_page = orch.get(&format!("/runs/{}", ids[0])).text();
    assert!(run_page.contains("<dt>Executed by</dt><dd>agent <code class=\"mono\">a"), "{run_page}");
    let metrics = orch.get("/metrics").text();
    assert!(metrics.contains("orch_agents_connected 3"), "{metrics}");
    assert!(metrics.contains("orch_queue_length 0"), "{metrics}");
    drop(agents);
    gh.assert_no_violations();
}

#[test]
fn a_killed_agent_s_run_goes_to_another_within_the_lease_and_its_late_report_is_refused() {
    if !docker_enabled() {
        return;
    }
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let git = GitServer::start();
    let lease = 4;
    let orch = server(&gh, &git, lease);
    let slow = "steps:\n  slow:\n    image: busybox:latest\n    commands:\n      - echo started\n      - sleep 6\n      - echo finished\n";
    let (t1, t2) = (create_token(&orch.data_dir, "doomed"), create_token(&orch.data_dir, "spare"));
    let mut doomed = Agent::start(&orch, &t1, "", 1);
    let (id, _) = push(&orch, &git, "main", &[(".orch.yml", slow)]);
    let r = orch.wait_run(id, "the run on the first agent", |r| {
        r["run"]["agent"] == "doomed" && r["run"]["status"] == "running"
    });
    assert_eq!(r["run"]["attempts"], 1);
    orch.wait_log(id, "slow", "started");
    let spare = Agent::start(&orch, &t2, "", 1);
    let killed = Instant::now();
    doomed.kill9();
    let r = orch.wait_run(id, "the run on the second agent", |r| r["run"]["agent"] == "spare");
    let moved = killed.elapsed();
    assert_eq!(r["run"]["attempts"], 2, "{r:#}");
    assert!(moved < Duration::from_secs(lease + 10), "re-run {moved:?} after the kill (lease {lease}s)");
    let r = orch.wait_run_done(id);
    assert_eq!(r["run"]["status"], "success", "{r:#}\n{}", spare.log_text());
    assert_eq!(r["run"]["lost"], 1, "{r:#}");
    let log = orch.get(&format!("/api/runs/{id}/logs/slow")).text();
    assert!(
        log.contains("finished") && log.lines().filter(|l| *l == "started").count() == 1,
        "the second attempt's log only: {log}"
    );
    // The killed agent's attempt 1, late: refused, and nothing of it is recorded.
    let late = json!({ "events": [{ "event": "step_output", "step": "slow", "stream": "stdout", "text": "late\n" }] });
    let r = agent_post(&orch, &t1, &format!("/api/agent/runs/{id}/1/events"), &late);
    assert_eq!(r.status, 409, "{}", r.text());
    // Nor may the other agent write into an attempt that is not its own.
    let r = agent_post(&orch, &t2, &format!("/api/agent/runs/{id}/1/events"), &late);
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(!orch.get(&format!("/api/runs/{id}/logs/slow")).text().contains("late"));
    // The killed agent, started again, removes what its killed run left in Docker.
    let prefix = format!("{}{id}-1", orch.docker_prefix());
    let _again = Agent::start(&orch, &t1, "", 1);
    wait_for(Duration::from_secs(60), "the killed attempt's containers to go", || {
        let left = docker_objects(&prefix);
        if left.is_empty() { Ok(()) } else { Err(format!("{left:?}")) }
    });
    gh.assert_no_violations();
}

#[test]
fn labels_decide_which_agent_runs_and_bad_or_revoked_tokens_get_401() {
    if !docker_enabled() {
        return;
    }
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let git = GitServer::start();
    let orch = server(&gh, &git, 30);
    let gpu = "runs_on: [linux]\nsteps:\n  train:\n    image: busybox:latest\n    runs_on: gpu\n    commands: [echo trained]\n";
    let plain_token = create_token(&orch.data_dir, "plain");
    let plain = Agent::start(&orch, &plain_token, "linux", 2);
    let (id, _) = push(&orch, &git, "main", &[(".orch.yml", gpu)]);
    let r = orch.wait_run(id, "the run to be planned", |r| r["run"]["labels"].is_array());
    assert_eq!(r["run"]["labels"], json!(["gpu", "linux"]));
    // An agent without `gpu` never gets it.
    std::thread::sleep(Duration::from_secs(3));
    let r = orch.run(id);
    assert_eq!(r["run"]["status"], "queued", "{r:#}");
    assert_eq!(r["run"]["reason"], "waiting for an executor labelled gpu, linux");
    // Other runs still go to that agent meanwhile.
    let (other, _) =
        push(&orch, &git, "other", &[(".orch.yml", "steps:\n  a:\n    image: busybox:latest\n    commands: [true]\n")]);
    let r = orch.wait_run_done(other);
    assert_eq!((r["run"]["status"].as_str(), r["run"]["agent"].as_str()), (Some("success"), Some("plain")), "{r:#}");
    let big_token = create_token(&orch.data_dir, "big");
    let _big = Agent::start(&orch, &big_token, "gpu,linux,big", 1);
    let r = orch.wait_run_done(id);
    assert_eq!((r["run"]["status"].as_str(), r["run"]["agent"].as_str()), (Some("success"), Some("big")), "{r:#}");

    // Tokens: none, unknown, revoked: 401, and no work.
    let claim = json!({ "labels": [], "capacity": 1, "wait_ms": 0, "protocol": orch::job::PROTOCOL });
    let none = orch.request("POST", "/api/agent/claim", &[("content-type", "application/json")], b"{}");
    assert_eq!(none.status, 401);
    assert_eq!(agent_post(&orch, "orch_agent_nope", "/api/agent/claim", &claim).status, 401);
    assert_eq!(agent_post(&orch, &plain_token, "/api/agent/claim", &claim).status, 204);
    let out = agent_token_cmd(&orch.data_dir, &["revoke", "plain"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(agent_post(&orch, &plain_token, "/api/agent/claim", &claim).status, 401);
    // The running agent with the revoked token stops, saying why.
    let mut plain = plain;
    assert_eq!(plain.wait_exit(Duration::from_secs(40)), Some(2), "{}", plain.log_text());
    assert!(plain.log_text().contains("refused this agent's token"), "{}", plain.log_text());
    let list = String::from_utf8_lossy(&agent_token_cmd(&orch.data_dir, &["list"]).stdout).to_string();
    assert!(list.contains("plain revoked") && list.contains("big\tlabels: big,gpu,linux"), "{list}");
    // A name is taken once.
    assert!(!agent_token_cmd(&orch.data_dir, &["create", "big"]).status.success());
    gh.assert_no_violations();
}

#[test]
fn a_run_on_an_agent_can_be_cancelled() {
    if !docker_enabled() {
        return;
    }
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let git = GitServer::start();
    let orch = Orch::start(orch::server::config::ServeArgs {
        local_capacity: Some(0),
        api_token: Some("api-token".into()),
        grace: Some(2),
        ..token_args(&gh, &git)
    });
    let token = create_token(&orch.data_dir, "a");
    let agent = Agent::start(&orch, &token, "", 1);
    let sleepy = "steps:\n  nap:\n    image: busybox:latest\n    commands: [echo napping, sleep 60]\n";
    let (id, _) = push(&orch, &git, "main", &[(".orch.yml", sleepy)]);
    orch.wait_run(id, "the run on the agent", |r| r["run"]["status"] == "running" && r["run"]["agent"] == "a");
    orch.wait_log(id, "nap", "napping");
    let cancel = Instant::now();
    let r = orch.request("POST", &format!("/api/runs/{id}/cancel"), &[("authorization", "Bearer api-token")], b"");
    assert!(r.status < 300, "{}", r.text());
    let r = orch.wait_run_done(id);
    assert_eq!(r["run"]["status"], "cancelled", "{r:#}\n{}", agent.log_text());
    assert!(cancel.elapsed() < Duration::from_secs(20), "cancelled after {:?}", cancel.elapsed());
    wait_for(Duration::from_secs(30), "the run's containers to go", || {
        let left = docker_objects(&format!("{}{id}-", orch.docker_prefix()));
        if left.is_empty() { Ok(()) } else { Err(format!("{left:?}")) }
    });
}

#[test]
fn a_gated_deployment_on_an_agent_waits_for_the_server_s_approval() {
    if !docker_enabled() {
        return;
    }
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let git = GitServer::start();
    let orch = server(&gh, &git, 10);
    let token = create_token(&orch.data_dir, "a");
    let agent = Agent::start(&orch, &token, "", 1);
    let alice = approver(&orch, "alice");
    let gated = "environments:\n  production:\n    approval: {approvers: [alice]}\n\
                 steps:\n  ship:\n    image: busybox:latest\n    environment: production\n    commands: [echo shipped]\n";
    let (id, _) = push(&orch, &git, "main", &[(".orch.yml", gated)]);
    let gates = wait_for(Duration::from_secs(60), "the agent's gate to wait", || {
        let v = orch.get_json(&format!("/api/runs/{id}/gates"));
        match v["gates"].as_array() {
            Some(g) if !g.is_empty() => Ok(g.clone()),
            _ => Err(format!("{v} {}", agent.log_text())),
        }
    });
    assert_eq!(gates[0]["status"], "waiting");
    assert_eq!(orch.run(id)["run"]["agent"], "a");
    let r =
        orch.request("POST", &format!("/api/runs/{id}/approve"), &[("authorization", &format!("Bearer {alice}"))], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let run = orch.wait_run_done(id);
    assert_eq!(run["run"]["status"], "success", "{run:#}\n{}", agent.log_text());
    assert!(orch.wait_log(id, "ship", "shipped").contains("shipped"));

    // A branch whose own file drops the approval: the agent plans with the default
    // branch's rules the job carries, so its deployment waits for alice too.
    let loose = gated.replace("approval: {approvers: [alice]}", "branches: [loose]");
    let (id, _) = push(&orch, &git, "loose", &[(".orch.yml", &loose)]);
    let gates = wait_for(Duration::from_secs(60), "the branch's gate to wait", || {
        let v = orch.get_json(&format!("/api/runs/{id}/gates"));
        match v["gates"].as_array() {
            Some(g) if !g.is_empty() => Ok(g.clone()),
            _ => Err(format!("{v} {:#}\n{}", orch.run(id), agent.log_text())),
        }
    });
    assert_eq!((&gates[0]["status"], &gates[0]["approvers"]), (&json!("waiting"), &json!(["alice"])));
    assert_eq!(orch.run(id)["run"]["agent"], "a");
    let r =
        orch.request("POST", &format!("/api/runs/{id}/approve"), &[("authorization", &format!("Bearer {alice}"))], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(orch.wait_run_done(id)["run"]["status"], "success");
}

/// A deployment on an agent that waits for its environment's turn says for whom it waits:
/// the server's answer to the agent's long poll carries it, and the agent puts it in the
/// run as the step's note.
#[test]
fn a_deployment_on_an_agent_says_which_run_holds_its_environment() {
    if !docker_enabled() {
        return;
    }
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let git = GitServer::start();
    let orch = server(&gh, &git, 10);
    let token = create_token(&orch.data_dir, "a");
    let agent = Agent::start(&orch, &token, "", 2);
    let alice = approver(&orch, "alice");
    // The first run holds `production` from its first deployment to its last, which
    // waits for alice's approval of another environment meanwhile.
    let holder = "environments:\n  hold:\n    approval: {approvers: [alice]}\n\
                  defaults: {image: busybox:latest}\n\
                  steps:\n  ship:\n    environment: production\n    commands: [echo shipping]\n\
                  \x20 wait:\n    needs: [ship]\n    environment: hold\n    commands: [echo held]\n\
                  \x20 finish:\n    needs: [wait]\n    environment: production\n    commands: [echo finished]\n";
    let (first, _) = push(&orch, &git, "main", &[(".orch.yml", holder)]);
    wait_for(Duration::from_secs(60), "the first run's approval gate", || {
        let v = orch.get_json(&format!("/api/runs/{first}/gates"));
        match v["gates"].as_array() {
            Some(g) if !g.is_empty() => Ok(()),
            _ => Err(format!("{v} {}", agent.log_text())),
        }
    });
    let ship =
        "steps:\n  ship:\n    image: busybox:latest\n    environment: production\n    commands: [echo shipped]\n";
    let (second, _) = push(&orch, &git, "b", &[(".orch.yml", ship)]);
    let said = format!("waiting for its turn: run {first} (commit ");
    wait_for(Duration::from_secs(60), "the second run to say what it waits for", || {
        let run = orch.run(second);
        let message = step_of(&run, "ship").and_then(|s| s["message"].as_str()).unwrap_or_default().to_string();
        if message.starts_with(&said) { Ok(()) } else { Err(format!("ship: {message:?}\n{}", agent.log_text())) }
    });
    assert_eq!(orch.run(second)["run"]["agent"], "a");
    let r = orch.request(
        "POST",
        &format!("/api/runs/{first}/approve"),
        &[("authorization", &format!("Bearer {alice}"))],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    for id in [first, second] {
        let run = orch.wait_run_done(id);
        assert_eq!(run["run"]["status"], "success", "{run:#}\n{}", agent.log_text());
    }
    assert!(orch.wait_log(second, "ship", "shipped").contains("shipped"));
}

#[test]
fn the_shipped_agent_settings_are_the_agent_s_and_a_bad_server_url_is_refused() {
    let help = Command::new(env!("CARGO_BIN_EXE_orch")).args(["agent", "--help"]).output().unwrap();
    // Whatever the help's wrapping.
    let help = String::from_utf8_lossy(&help.stdout).split_whitespace().collect::<Vec<_>>().join(" ");
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/runners/agent/orch-agent.env")).unwrap();
    let keys: Vec<&str> =
        shipped.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split_once('=')).map(|(k, _)| k).collect();
    assert!(keys.len() >= 5, "{keys:?}");
    for k in keys.iter().filter(|k| **k != "ORCH_LOG") {
        assert!(help.contains(&format!("[env: {k}")), "`orch agent` does not read {k}:\n{help}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_orch"))
        .args(["agent", "--server", "ftp://x", "--token", "t"])
        .env_remove("ORCH_SERVER")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("http://"));
}

/// A tar of `entries`: (name, link target or None for a file with `data`).
fn tar_of(entries: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, link, data) in entries {
        let mut h = tar::Header::new_gnu();
        match link {
            Some(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, name, target).unwrap();
            }
            None => {
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                b.append_data(&mut h, name, *data).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// A server and two agents played over HTTP by the test (no Docker): what a leased agent
/// may send is kept inside its own run; another agent's run is out of its reach.
#[test]
fn an_agent_writes_only_inside_its_own_run_and_reads_only_its_own_checkout() {
    let git = GitServer::start();
    let orch = Orch::start(orch::server::config::ServeArgs {
        local_capacity: Some(0),
        clone_rewrite: vec![git.rewrite()],
        ..base_args()
    });
    let (mine, other) = (create_token(&orch.data_dir, "mine"), create_token(&orch.data_dir, "other"));
    let pipeline = "steps:\n  a:\n    image: busybox:latest\n    commands: [true]\n";
    let (id, _) = push(&orch, &git, "main", &[(".orch.yml", pipeline), ("src/lib.txt", "hello")]);
    // An agent from before the job protocol (it does not say one) gets no job, and why.
    let old = agent_post(&orch, &mine, "/api/agent/claim", &json!({ "labels": [], "capacity": 1, "wait_ms": 0 }));
    assert_eq!(old.status, 426, "{}", old.text());
    assert!(old.text().contains("job protocol 0") && old.text().contains("orch version"), "{}", old.text());
    let claim = json!({ "labels": [], "capacity": 1, "wait_ms": 20000, "protocol": orch::job::PROTOCOL });
    let job = agent_post(&orch, &mine, "/api/agent/claim", &claim);
    assert_eq!(job.status, 200, "{}", job.text());
    let job = job.json();
    assert_eq!((job["run"].as_i64(), job["attempt"].as_i64()), (Some(id), Some(1)), "{job:#}");
    let bearer = |t: &str| format!("Bearer {t}");
    let src = format!("/api/agent/runs/{id}/1/source");
    // Its checkout, to it only.
    let tar = orch.request("GET", &src, &[("authorization", &bearer(&mine))], b"");
    assert_eq!(tar.status, 200);
    let mut names: Vec<String> = tar::Archive::new(&tar.body[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    names.sort();
    assert_eq!(names, [".orch.yml", "src/lib.txt"]);
    assert_eq!(orch.request("GET", &src, &[("authorization", &bearer(&other))], b"").status, 409);
    assert_eq!(orch.request("GET", &src, &[], b"").status, 401);
    assert_eq!(
        orch.request("GET", &format!("/api/agent/runs/{id}/2/source"), &[("authorization", &bearer(&mine))], b"")
            .status,
        409
    );

    // Artifacts that try to leave the run's directory: refused, nothing written outside.
    let outside = temp_dir("orch-agent-outside-");
    let art = format!("/api/agent/runs/{id}/1/artifacts");
    let put = |token: &str, body: &[u8]| orch.request("PUT", &art, &[("authorization", &bearer(token))], body);
    let through_link =
        tar_of(&[("a/out", Some(outside.path().to_str().unwrap()), b""), ("a/out/evil.txt", None, b"evil")]);
    let r = put(&mine, &through_link);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(!outside.path().join("evil.txt").exists());
    let mut dotdot = tar::Header::new_gnu();
    dotdot.as_old_mut().name[..22].copy_from_slice(b"../../../../escape.txt");
    dotdot.set_size(4);
    dotdot.set_mode(0o644);
    dotdot.set_cksum();
    let mut raw = dotdot.as_bytes().to_vec();
    raw.extend_from_slice(b"evil");
    raw.resize(512 * 4, 0);
    assert_eq!(put(&mine, &raw).status, 400);
    assert!(!orch.data_dir.join("escape.txt").exists() && !orch.data_dir.join("runs/escape.txt").exists());
    // Nor may another agent put anything into this run.
    let fine = tar_of(&[("a/ok.txt", None, b"ok")]);
    assert_eq!(put(&other, &fine).status, 409);
    assert_eq!(put(&mine, &fine).status, 200);
    assert_eq!(orch.get(&format!("/api/runs/{id}/artifacts/a/ok.txt")).text(), "ok");

    // The run's end, from its agent: recorded.
    let events = json!({ "events": [
        { "event": "step_started", "step": "a", "attempt": 1, "attempts": 1 },
        { "event": "step_output", "step": "a", "stream": "stdout", "text": "from the agent\n" },
        { "event": "step_finished", "step": "a", "status": "passed", "exit_code": 0, "attempts": 1,
          "duration": 0.1, "started": 0.0, "allowed_failure": false, "message": null },
        { "event": "run_finished", "status": "success", "duration": 0.2, "steps": [] },
    ]});
    let other_post = agent_post(&orch, &other, &format!("/api/agent/runs/{id}/1/events"), &events);
    assert_eq!(other_post.status, 409);
    let r = agent_post(&orch, &mine, &format!("/api/agent/runs/{id}/1/events"), &events);
    assert_eq!(r.status, 200, "{}", r.text());
    let run = orch.wait_run_done(id);
    assert_eq!(run["run"]["status"], "success", "{run:#}");
    assert_eq!(orch.get(&format!("/api/runs/{id}/logs/a")).text(), "from the agent\n");
    // After its end, nothing more from it.
    assert_eq!(agent_post(&orch, &mine, &format!("/api/agent/runs/{id}/1/events"), &events).status, 409);
}

/// A TLS-terminating proxy on loopback in front of `upstream` (as a reverse proxy would
/// be), with a certificate for `localhost` from a private CA made by openssl (`ca`).
struct TlsProxy {
    port: u16,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsProxy {
    fn start(upstream: std::net::SocketAddr) -> TlsProxy {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        let dir = temp_dir("orch-tls-");
        let p = |name: &str| dir.path().join(name).display().to_string();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl").args(args).output().expect("openssl runs");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        // A private CA, and the server's certificate signed by it (a CA's own certificate is
        // no server's).
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        openssl(
            &[
                &["req", "-x509"],
                &ec[..],
                &["-days", "1", "-subj", "/CN=orch test CA", "-keyout", &p("ca.key"), "-out", &p("ca.pem")],
            ]
            .concat(),
        );
        openssl(
            &[&["req"], &ec[..], &["-subj", "/CN=localhost", "-keyout", &p("key.pem"), "-out", &p("req.csr")]].concat(),
        );
        std::fs::write(p("ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            &p("req.csr"),
            "-CA",
            &p("ca.pem"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &p("ext"),
            "-out",
            &p("cert.pem"),
        ]);
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let certs: Vec<_> =
            rustls::pki_types::CertificateDer::pem_file_iter(&cert).unwrap().collect::<Result<_, _>>().unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
        let config = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                while let Ok((tcp, _)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                        let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else { return };
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                    });
                }
            });
        });
        TlsProxy { port, ca: dir.path().join("ca.pem"), _dir: dir }
    }
}

/// An agent and the CLI reach a server through https (a TLS-terminating proxy), checking
/// its certificate against the roots they are given; without them, they refuse it.
#[test]
fn agents_and_the_cli_speak_https_and_check_the_certificate() {
    if !docker_enabled() {
        return;
    }
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let git = GitServer::start();
    let orch = server(&gh, &git, 30);
    let proxy = TlsProxy::start(orch.addr);
    let url = format!("https://localhost:{}", proxy.port);
    let ca = proxy.ca.to_str().unwrap();
    let token = create_token(&orch.data_dir, "tls");
    let agent = Agent::start_at(&url, &token, "", 1, &[("SSL_CERT_FILE", ca)]);
    let (id, _) = push(&orch, &git, "main", &[(".orch.yml", PIPELINE)]);
    let r = wait_for(RUN_LIMIT, "the run over https", || {
        let r = orch.run(id);
        let done = TERMINAL.contains(&r["run"]["status"].as_str().unwrap_or(""));
        if done { Ok(r) } else { Err(format!("{}\nagent: {}", r["run"], agent.log_text())) }
    });
    assert_eq!(r["run"]["status"], "success", "{r:#}\n{}", agent.log_text());
    assert_eq!(r["run"]["agent"], "tls");
    let cli = |env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_orch"))
            .args(["runs", "--server", &url])
            .env_remove("ORCH_API_TOKEN")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, err) = cli(&[("SSL_CERT_FILE", ca)]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.lines().nth(1).is_some_and(|l| l.starts_with(&id.to_string())), "{out}");
    // A certificate nothing vouches for: refused (the system's roots do not hold it).
    let empty = temp_dir("orch-no-ca-");
    let none = empty.path().join("none.pem");
    std::fs::write(&none, "").unwrap();
    let (code, _, err) = cli(&[("SSL_CERT_FILE", none.to_str().unwrap())]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("cannot reach"), "{err}");
    let mut refused = Agent::start_at(&url, &token, "", 1, &[("SSL_CERT_FILE", none.to_str().unwrap())]);
    std::thread::sleep(Duration::from_secs(3));
    refused.kill9();
    assert!(refused.log_text().contains("cannot get work"), "{}", refused.log_text());
}

/// A TCP forwarder on a fixed loopback port whose upstream can change: the agent's server
/// address stays the same across a server's restart on another port.
struct Forwarder {
    port: u16,
    upstream: std::sync::Arc<std::sync::Mutex<std::net::SocketAddr>>,
}

impl Forwarder {
    fn start(upstream: std::net::SocketAddr) -> Forwarder {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(std::sync::Mutex::new(upstream));
        let target = up.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                while let Ok((mut down, _)) = listener.accept().await {
                    let to = *target.lock().unwrap();
                    tokio::spawn(async move {
                        if let Ok(mut up) = tokio::net::TcpStream::connect(to).await {
                            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                        }
                    });
                }
            });
        });
        Forwarder { port, upstream: up }
    }
}

/// The server restarts while an agent runs a job: the run is queued again (the events of
/// its attempt went to a recorder that is gone), the agent's next report for the old
/// attempt is refused and it stops it, and the run's next attempt runs to its end.
#[test]
fn a_server_restart_fences_an_agent_s_attempt_and_the_run_goes_on() {
    if !docker_enabled() {
        return;
    }
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let git = GitServer::start();
    let (_keep, data) = data_dir("orch-agent-restart-");
    let args = || orch::server::config::ServeArgs {
        local_capacity: Some(0),
        data_dir: Some(data.clone()),
        grace: Some(2),
        ..token_args(&gh, &git)
    };
    let mut first = Orch::start(args());
    let fwd = Forwarder::start(first.addr);
    let token = create_token(&data, "steady");
    let agent = Agent::start_at(&format!("http://127.0.0.1:{}", fwd.port), &token, "", 1, &[]);
    let slow = "steps:\n  slow:\n    image: busybox:latest\n    commands: [echo started, sleep 4, echo finished]\n";
    let (id, sha) = push(&first, &git, "main", &[(".orch.yml", slow)]);
    first.wait_run(id, "the run on the agent", |r| r["run"]["agent"] == "steady" && r["run"]["status"] == "running");
    first.wait_log(id, "slow", "started");
    first.stop();
    drop(first);
    let second = Orch::start(args());
    *fwd.upstream.lock().unwrap() = second.addr;
    let r = wait_for(RUN_LIMIT, "the run's end after the restart", || {
        let r = second.run(id);
        let done = TERMINAL.contains(&r["run"]["status"].as_str().unwrap_or(""));
        if done { Ok(r) } else { Err(format!("{}\nagent: {}", r["run"], agent.log_text())) }
    });
    assert_eq!(r["run"]["status"], "success", "{r:#}\n{}", agent.log_text());
    assert!(r["run"]["attempts"].as_i64().unwrap() >= 2, "{r:#}");
    let log = second.get(&format!("/api/runs/{id}/logs/slow")).text();
    assert_eq!(log.lines().filter(|l| *l == "started").count(), 1, "one attempt's log: {log}");
    assert!(log.contains("finished"), "{log}");
    // The final status is the run's success; the agent ran its first attempt no further.
    let statuses = gh.wait_final_status(&sha, "orch (push)", id);
    assert_eq!(statuses.last().unwrap()["state"], "success", "{statuses:#?}");
    wait_for(Duration::from_secs(30), "the first attempt's containers to go", || {
        let left = docker_objects(&format!("{}{id}-1", second.docker_prefix()));
        if left.is_empty() { Ok(()) } else { Err(format!("{left:?}")) }
    });
}

/// With no executor connected, the server plans only so many runs ahead (their checkouts
/// wait on its disk); the rest stay queued, unplanned, and are planned as executors come.
#[test]
fn runs_no_executor_fits_are_planned_only_so_far_ahead() {
    let git = GitServer::start();
    let orch = Orch::start(orch::server::config::ServeArgs {
        local_capacity: Some(0),
        clone_rewrite: vec![git.rewrite()],
        ..base_args()
    });
    let sha =
        git.on_branch("main", &[(".orch.yml", "steps:\n  a:\n    image: busybox:latest\n    commands: [true]\n")], "p");
    let cap = orch::server::agents::MAX_UNFIT;
    let n = cap + 6;
    for i in 0..n {
        git.set_ref(&sha, &format!("refs/heads/b{i}"));
        orch.deliver("push", &push_event(&format!("b{i}"), ZERO_SHA, &sha)).run_id();
    }
    wait_for(Duration::from_secs(120), "the planner to stop", || {
        let planned = orch.count("SELECT COUNT(*) FROM runs WHERE job IS NOT NULL");
        if planned == cap { Ok(()) } else { Err(format!("{planned} planned")) }
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(orch.count("SELECT COUNT(*) FROM runs WHERE job IS NOT NULL"), cap, "no more planned");
    assert_eq!(orch.count("SELECT COUNT(*) FROM runs WHERE status = 'queued'"), n, "all still queued");
    let checkouts = std::fs::read_dir(orch.data_dir.join("work")).unwrap().count() as i64;
    assert_eq!(checkouts, cap, "one checkout per planned run");
}

/// A deploy step run on an agent is recorded by the server as one deployment (the matrix's
/// variants are one), reported to GitHub as a deployment with its states.
#[test]
fn a_deployment_on_an_agent_is_recorded_and_reported() {
    if !docker_enabled() {
        return;
    }
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let git = GitServer::start();
    let orch = server(&gh, &git, 30);
    let token = create_token(&orch.data_dir, "a");
    let _agent = Agent::start(&orch, &token, "", 2);
    let pipeline = "steps:\n  ship:\n    image: busybox:latest\n    matrix: {n: [1, 2]}\n    \
                    environment: {name: staging, url: https://staging.example.com}\n    commands: [echo shipping $n]\n";
    let (id, sha) = push(&orch, &git, "main", &[(".orch.yml", pipeline)]);
    let run = orch.wait_run_done(id);
    assert_eq!((&run["run"]["status"], &run["run"]["agent"]), (&json!("success"), &json!("a")), "{run:#}");
    let deps = run["deployments"].as_array().cloned().unwrap_or_default();
    assert_eq!(deps.len(), 1, "{run:#}");
    assert_eq!(
        (&deps[0]["environment"], &deps[0]["status"], &deps[0]["sha"]),
        (&json!("staging"), &json!("success"), &json!(sha))
    );
    wait_for(Duration::from_secs(30), "the GitHub deployment's success", || {
        let d = gh.deployments();
        let states: Vec<Value> = d.iter().flat_map(|d| d["statuses"].as_array().cloned().unwrap_or_default()).collect();
        let states: Vec<&str> = states.iter().filter_map(|s| s["state"].as_str()).collect();
        if d.len() == 1 && states == ["in_progress", "success"] { Ok(()) } else { Err(format!("{d:#?}")) }
    });
    gh.assert_no_violations();
}
