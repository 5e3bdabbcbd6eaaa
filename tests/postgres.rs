//! Several servers on one PostgreSQL database (a throwaway cluster each test starts:
//! `initdb` and `pg_ctl` on a loopback port, stopped at the end): two `orch serve`s that
//! share intake, queue and data directory run a delivery that reached both once; three
//! agents and a server run queued jobs, none twice. Needs `ORCH_DOCKER_TESTS=1`; without
//! PostgreSQL installed it skips, saying so, unless `CI` is set.

use std::process::Command;
use std::time::Duration;

mod serve_support;

use orch::server::config::ServeArgs;
use orch::server::db::throwaway::TestPostgres;
use serve_support::*;

const PIPELINE: &str = "\
defaults:
  image: busybox:latest
  timeout: 2m
steps:
  build:
    commands:
      - echo built > out.txt
  test:
    needs: [build]
    commands:
      - grep -q built out.txt
      - echo tests passed
";

/// A throwaway PostgreSQL and the URL of a new database in it; `None`: skipped.
fn postgres(db: &str) -> Option<(TestPostgres, String)> {
    let pg = TestPostgres::start().expect("a throwaway PostgreSQL")?;
    let url = pg.database(db).expect("a database");
    Some((pg, url))
}

#[test]
fn two_servers_on_one_postgres_run_a_delivery_that_reached_both_once() {
    require_docker!();
    let Some((_pg, url)) = postgres("two") else { return };
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let git = GitServer::start();
    // One data directory for both: each run's logs are readable through either.
    let (_dir, data) = data_dir("orch-pg-");
    let args = |name: &str| ServeArgs {
        database: Some(url.clone()),
        server_name: Some(name.into()),
        data_dir: Some(data.clone()),
        ..token_args(&gh, &git)
    };
    let a = Orch::start(args("a"));
    let b = Orch::start(args("b"));
    let sha = git.on_branch("main", &[(".orch.yml", PIPELINE)], "the pipeline");
    let payload = push_event("main", ZERO_SHA, &sha);
    let guid = new_guid();
    // The same signed delivery reaches both at once (a load balancer trying again on the
    // other server does that).
    let (ca, cb): (&Client, &Client) = (&a, &b);
    let (x, y) = std::thread::scope(|s| {
        let first = s.spawn(|| ca.deliver_as("push", &guid, &payload));
        let second = cb.deliver_as("push", &guid, &payload);
        (first.join().unwrap(), second)
    });
    assert!(x.response.status < 300 && y.response.status < 300, "{:?} {:?}", x.response, y.response);
    let said: Vec<String> = [&x, &y].iter().map(|p| p.response.json()["status"].to_string()).collect();
    assert_eq!(said.iter().filter(|s| s.contains("duplicate")).count(), 1, "{said:?}");
    let runs = a.runs();
    assert_eq!(runs.len(), 1, "one run: {runs:#?}");
    let ids = |runs: Vec<serde_json::Value>| runs.iter().map(|r| r["id"].as_i64()).collect::<Vec<_>>();
    assert_eq!(ids(b.runs()), ids(runs.clone()), "both servers show the same runs");
    let id = runs[0]["id"].as_i64().unwrap();
    let done = b.wait_run_done(id);
    assert_eq!(done["run"]["status"], "success", "{done:#}");
    assert_eq!(done["run"]["attempts"], 1, "{done:#}");
    for server in [&a, &b] {
        assert!(server.wait_log(id, "test", "tests passed").contains("tests passed"));
    }
    // GitHub was told once: one final status for the run.
    let statuses = gh.wait_final_status(&sha, "orch (push)", id);
    assert_eq!(statuses.iter().filter(|s| s["state"] == "success").count(), 1, "{statuses:#?}");
    // More runs through either server: each runs once, whichever server plans and runs it.
    let mut ids = Vec::new();
    for i in 0..6 {
        let branch = format!("b{i}");
        git.set_ref(&sha, &format!("refs/heads/{branch}"));
        let server = if i % 2 == 0 { &a } else { &b };
        ids.push(server.deliver("push", &push_event(&branch, ZERO_SHA, &sha)).run_id());
    }
    for id in &ids {
        let r = a.wait_run_done(*id);
        assert_eq!((r["run"]["status"].as_str(), r["run"]["attempts"].as_i64()), (Some("success"), Some(1)), "{r:#}");
    }
    let finals = gh.statuses_of(&sha, "orch (push)").iter().filter(|s| s["state"] == "success").count();
    assert_eq!(finals, 7, "each run reported once");
    gh.assert_no_violations();
    // Each server's Docker objects are tagged with its name: both cleaned up their own.
    let tags: Vec<String> = ["a", "b"]
        .iter()
        .map(|n| format!("s{}-", orch::server::worker::server_tag(&args(n).resolve().unwrap())))
        .collect();
    assert_ne!(tags[0], tags[1]);
    drop((a, b));
    for tag in &tags {
        let left = docker_objects(tag);
        assert!(left.is_empty(), "left in Docker: {left:?}");
    }
}

#[test]
fn three_agents_and_a_server_on_postgres_run_queued_jobs_once_each() {
    require_docker!();
    let Some((_pg, url)) = postgres("agents") else { return };
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let git = GitServer::start();
    let orch = Orch::start(ServeArgs {
        database: Some(url.clone()),
        local_capacity: Some(1),
        labels: vec!["linux".into()],
        ..token_args(&gh, &git)
    });
    let sha = git.on_branch("main", &[(".orch.yml", PIPELINE)], "the pipeline");
    let mut ids = Vec::new();
    for i in 0..12 {
        git.set_ref(&sha, &format!("refs/heads/q{i}"));
        ids.push(orch.deliver("push", &push_event(&format!("q{i}"), ZERO_SHA, &sha)).run_id());
    }
    // The tokens live in PostgreSQL: `orch agent-token` reaches it with ORCH_DATABASE.
    let tokens: Vec<String> = ["p1", "p2", "p3"]
        .iter()
        .map(|name| {
            let out = Command::new(env!("CARGO_BIN_EXE_orch"))
                .args(["agent-token", "create", name])
                .env("ORCH_DATABASE", &url)
                .env("ORCH_DATA_DIR", &orch.data_dir)
                .output()
                .expect("orch agent-token runs");
            assert!(out.status.success(), "agent-token create: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
        .collect();
    let agents: Vec<Agent> = tokens.iter().map(|t| Agent::start(&orch, t, "linux", 1)).collect();
    // So do the named tokens of `orch token`: one made with ORCH_DATABASE is known to the
    // server (its vote passes the token checks and finds no gate: 409, not 401).
    let out = Command::new(env!("CARGO_BIN_EXE_orch"))
        .args(["token", "create", "alice", "--can", "approve"])
        .env("ORCH_DATABASE", &url)
        .env("ORCH_DATA_DIR", &orch.data_dir)
        .output()
        .expect("orch token runs");
    assert!(out.status.success(), "token create: {}", String::from_utf8_lossy(&out.stderr));
    let alice = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let auth = format!("Bearer {alice}");
    let vote = orch.request("POST", &format!("/api/runs/{}/approve", ids[0]), &[("Authorization", &auth)], b"");
    assert_eq!(vote.status, 409, "a known named token: {}", vote.text());
    assert!(vote.text().contains("waits for approval"), "{}", vote.text());
    let mut by = std::collections::HashMap::<String, usize>::new();
    for id in &ids {
        let r = wait_for(Duration::from_secs(300), "the run to end", || {
            let r = orch.run(*id);
            if TERMINAL.contains(&r["run"]["status"].as_str().unwrap_or("")) { Ok(r) } else { Err(r.to_string()) }
        });
        let logs = agents.iter().map(|a| std::fs::read_to_string(&a.log).unwrap_or_default()).collect::<Vec<_>>();
        assert_eq!(r["run"]["status"], "success", "{r:#}\n{}", logs.join("\n---\n"));
        assert_eq!(r["run"]["attempts"], 1, "taken once: {r:#}");
        *by.entry(r["run"]["agent"].as_str().unwrap_or("(the server)").to_string()).or_default() += 1;
        assert!(orch.get(&format!("/api/runs/{id}/logs/test")).text().contains("tests passed"));
    }
    assert_eq!(by.values().sum::<usize>(), 12);
    assert!(by.len() >= 2, "the queue was shared: {by:?}");
    let finals = gh.statuses_of(&sha, "orch (push)").iter().filter(|s| s["state"] == "success").count();
    assert_eq!(finals, 12, "each run reported once");
    gh.assert_no_violations();
}

#[test]
fn a_run_executing_on_one_server_is_cancelled_through_the_other() {
    require_docker!();
    let Some((_pg, url)) = postgres("cancel") else { return };
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let git = GitServer::start();
    let (_dir, data) = data_dir("orch-pg-");
    let args = |name: &str, capacity: usize| ServeArgs {
        database: Some(url.clone()),
        server_name: Some(name.into()),
        data_dir: Some(data.clone()),
        local_capacity: Some(capacity),
        api_token: Some("t0ken".into()),
        ..token_args(&gh, &git)
    };
    // Only `a` executes; `b` is asked to cancel.
    let a = Orch::start(args("a", 1));
    let b = Orch::start(args("b", 0));
    let pipeline = "steps:\n  slow:\n    image: busybox:latest\n    commands: [echo started, sleep 300]\n";
    let sha = git.on_branch("main", &[(".orch.yml", pipeline)], "a slow pipeline");
    let id = b.deliver("push", &push_event("main", ZERO_SHA, &sha)).run_id();
    b.wait_step_running(id, "slow");
    let asked = b.request("POST", &format!("/api/runs/{id}/cancel"), &[("Authorization", "Bearer t0ken")], b"");
    assert_eq!(asked.status, 202, "{}", asked.text());
    let done = a.wait_run_done(id);
    assert_eq!(done["run"]["status"], "cancelled", "{done:#}");
    assert_eq!(done["run"]["reason"], "cancelled through the API", "{done:#}");
    drop((a, b));
}

/// Two servers on one database with a 4 s `server_silence`: `a` (reaching it at `a_url`)
/// runs a step that sleeps `seconds`, and `b` (at `url`) starts only once that step runs,
/// so that `a` runs it.
struct Pair {
    gh: FakeGitHub,
    _git: GitServer,
    dir: tempfile::TempDir,
    data: std::path::PathBuf,
    a_env: Vec<(&'static str, String)>,
    a: OrchProcess,
    b: Orch,
    /// The run `a` runs.
    id: i64,
    sha: String,
}

fn a_running_then_b(a_url: String, url: &str, seconds: u32) -> Pair {
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let git = GitServer::start();
    let (dir, data) = data_dir("orch-pg-");
    let a_env = token_env(
        &gh,
        &git,
        &[
            ("ORCH_DATABASE", a_url),
            ("ORCH_SERVER_NAME", "a".into()),
            ("ORCH_SERVER_SILENCE", "4".into()),
            ("ORCH_LOCAL_CAPACITY", "1".into()),
        ],
    );
    let a = OrchProcess::spawn(&data, &a_env, &dir.path().join("a.log"));
    let pipeline = format!(
        "steps:\n  slow:\n    image: busybox:latest\n    commands: [echo started, sleep {seconds}, echo done]\n"
    );
    let sha = git.on_branch("main", &[(".orch.yml", &pipeline)], "a slow pipeline");
    let id = a.deliver("push", &push_event("main", ZERO_SHA, &sha)).run_id();
    a.wait_step_running(id, "slow");
    let b = Orch::start(ServeArgs {
        database: Some(url.to_string()),
        server_name: Some("b".into()),
        data_dir: Some(data.clone()),
        local_capacity: Some(1),
        server_silence: Some(4),
        ..token_args(&gh, &git)
    });
    Pair { gh, _git: git, dir, data, a_env, a, b, id, sha }
}

/// A server killed outright: once it has been silent for `server_silence`, another
/// server ends its run as an error and runs it again as a new run; nothing of the killed
/// run stays in Docker once the killed server is back under its name.
#[test]
fn a_silent_server_s_run_is_ended_and_run_again_by_another() {
    require_docker!();
    let Some((_pg, url)) = postgres("silent") else { return };
    // Every part bound: what a pattern leaves out is dropped at once (the git server too).
    let Pair { gh, _git, dir, data, a_env, mut a, b, id, sha } = a_running_then_b(url.clone(), &url, 5);
    // `a` dies mid-step.
    a.kill9();
    let old = b.wait_run_done(id);
    assert_eq!(old["run"]["status"], "error", "{old:#}");
    let reason = old["run"]["reason"].as_str().unwrap_or_default().to_string();
    let again: i64 = reason
        .strip_prefix("its server `a` stopped answering; run ")
        .and_then(|r| r.strip_suffix(" runs it again"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{old:#}"));
    let new = b.wait_run_done(again);
    assert_eq!(new["run"]["status"], "success", "{new:#}");
    assert!(b.wait_log(again, "slow", "done").contains("done"));
    // GitHub heard the old run end and the new one pass, each once.
    gh.wait_final_status(&sha, "orch (push)", again);
    let statuses = gh.statuses_of(&sha, "orch (push)");
    let count = |run: i64, state: &str| {
        let url = format!("/runs/{run}");
        statuses
            .iter()
            .filter(|s| s["state"] == state && s["target_url"].as_str().is_some_and(|u| u.ends_with(&url)))
            .count()
    };
    assert_eq!((count(id, "error"), count(again, "success")), (1, 1), "{statuses:#?}");
    // Back under its name, nothing of `a`'s killed run is left in Docker.
    let tag = {
        let args = ServeArgs {
            database: Some(url.clone()),
            server_name: Some("a".into()),
            data_dir: Some(data.clone()),
            webhook_secret: Some(SECRET.into()),
            ..ServeArgs::default()
        };
        format!("s{}-", orch::server::worker::server_tag(&args.resolve().unwrap()))
    };
    // (On one Docker daemon, as here, `b`'s janitor may have removed it already.)
    let mut a = OrchProcess::spawn(&data, &a_env, &dir.path().join("a.log"));
    wait_for(Duration::from_secs(60), "the restarted server to clean up", || {
        let left = docker_objects(&tag);
        if left.is_empty() { Ok(()) } else { Err(format!("left in Docker: {left:?}")) }
    });
    assert_eq!(b.run(id)["run"]["status"], "error", "the restart does not queue the taken-over run again");
    a.terminate();
    gh.assert_no_violations();
}

/// A server cut off from the database stops the runs it executes (after half of
/// `server_silence`), so that when another takes them over (after all of it) they never
/// run on both; back on the database, it leaves the taken-over run as the other ended it.
#[test]
fn a_server_cut_off_from_the_database_stops_its_runs_before_another_takes_them_over() {
    require_docker!();
    let Some((pg, url)) = postgres("cutoff") else { return };
    // `a` connects as its own role, which is then locked out.
    pg.sql("postgres", "CREATE ROLE cut LOGIN SUPERUSER").expect("a role for a");
    let Pair { gh, _git, dir: _dir, data: _, a_env: _, mut a, b, id, sha: _ } =
        a_running_then_b(url.replacen("orch@", "cut@", 1), &url, 15);
    pg.sql(
        "postgres",
        "ALTER ROLE cut NOLOGIN; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'cut'",
    )
    .expect("a cut off");
    // `b` takes the run over as a new run; by the time its step runs, `a` has stopped its
    // own (the step sleeps longer than that): never on both at once.
    let again = wait_for(Duration::from_secs(60), "b to take the run over", || {
        b.runs().iter().filter_map(|r| r["id"].as_i64()).find(|r| *r != id).ok_or_else(|| a.log_text())
    });
    b.wait_step_running(again, "slow");
    let both = running_step_containers(a.pid(), "slow");
    assert!(both.is_empty(), "the step runs on both servers: {both:?}\n{}", a.log_text());
    let old = b.wait_run_done(id);
    assert_eq!(old["run"]["status"], "error", "{old:#}");
    assert_eq!(old["run"]["reason"], format!("its server `a` stopped answering; run {again} runs it again"), "{old:#}");
    assert_eq!(b.wait_run_done(again)["run"]["status"], "success");
    assert!(a.log_text().contains("could not reach the database"), "{}", a.log_text());
    // Back on the database: what `a` still had to say of its stopped run changes nothing.
    pg.sql("postgres", "ALTER ROLE cut LOGIN").expect("a back");
    wait_for(Duration::from_secs(30), "a to read the database again", || {
        let r = a.get("/api/runs");
        if r.status == 200 { Ok(()) } else { Err(format!("{} {}", r.status, r.text())) }
    });
    // A few heartbeats.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(b.run(id)["run"]["status"], "error");
    assert_eq!(b.runs().len(), 2, "{:#?}", b.runs());
    a.terminate();
    gh.assert_no_violations();
}

/// `orch doctor` with a server config on PostgreSQL says whether it answers, changing
/// nothing; one that does not answer fails with a hint.
#[test]
fn doctor_checks_the_postgres_database() {
    let Some((_pg, url)) = postgres("doctor") else { return };
    let tmp = temp_dir("orch-doctor-");
    let doctor = |database: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_orch"))
            .arg("doctor")
            .env("ORCH_CACHE_DIR", tmp.path().join("cache"))
            .env("ORCH_WEBHOOK_SECRET", "s")
            .env("ORCH_DATA_DIR", tmp.path().join("data"))
            .env("ORCH_DATABASE", database)
            .env_remove("ORCH_CONFIG")
            .output()
            .expect("orch doctor runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().find(|l| l.contains("database")).map(str::to_string).unwrap_or_else(|| panic!("{text}"))
    };
    let line = doctor(&url);
    assert!(line.starts_with("ok") && line.contains("PostgreSQL") && line.contains("no schema yet"), "{line}");
    let closed = format!("postgres://orch:pw@127.0.0.1:{}/x", free_port());
    let line = doctor(&closed);
    assert!(line.starts_with("FAIL") && line.contains("ORCH_DATABASE") && !line.contains("pw@"), "{line}");
}
