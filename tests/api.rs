//! The runs API, `/metrics`, `/readyz`, retention and the CLI commands that use the API
//! (`orch runs`, `orch logs`, `orch cancel`, `orch rerun`, `orch trigger`), against `orch serve` with real
//! parts (see `serve_support`). The tests whose runs execute steps need `ORCH_DOCKER_TESTS=1`.

use std::process::Command;
use std::time::{Duration, Instant};

use orch::server::config::ServeArgs;
use serde_json::{Value, json};

mod serve_support;

use serve_support::*;

const API_TOKEN: &str = "api-token-for-tests";

const PIPELINE: &str = "\
defaults:
  image: busybox:latest
  timeout: 2m
steps:
  stamp:
    commands:
      - cat /proc/sys/kernel/random/uuid > stamp.txt
      - echo stamped
      - cat stamp.txt
    artifacts: [stamp.txt]
  check:
    needs: [stamp]
    commands:
      - echo checking
      - test -f pass
  after:
    needs: [check]
    commands:
      - echo after
  deploy:
    when: { branch: release }
    commands:
      - echo deploying
";

const SLOW: &str = "\
defaults:
  image: busybox:latest
  timeout: 2m
steps:
  slow:
    commands:
      - for i in 1 2 3 4 5 6; do echo tick $i; sleep 0.5; done
";

const HANG: &str = "\
defaults:
  image: busybox:latest
  timeout: 2m
steps:
  hang:
    commands:
      - echo hanging
      - sleep 100
";

fn auth() -> String {
    format!("Bearer {API_TOKEN}")
}

fn post(orch: &Client, path: &str, body: &str) -> HttpResponse {
    let a = auth();
    orch.request("POST", path, &[("Authorization", &a), ("Content-Type", "application/json")], body.as_bytes())
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// `orch ARGS` against `orch`; (exit code, stdout, stderr).
fn cli(orch: &Client, args: &[&str], token: bool) -> (i32, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_orch"));
    c.args(args).env("ORCH_SERVER", orch.url("")).env_remove("ORCH_API_TOKEN");
    if token {
        c.env("ORCH_API_TOKEN", API_TOKEN);
    }
    let out = c.output().expect("orch runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The events of an SSE body: (event name, data).
fn sse_events(body: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for block in body.split("\n\n") {
        let (mut ev, mut data) = ("message".to_string(), Vec::new());
        for l in block.lines() {
            if let Some(v) = l.strip_prefix("event:") {
                ev = v.trim().to_string();
            } else if let Some(v) = l.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
            }
        }
        if !data.is_empty() {
            out.push((ev, data.join("\n")));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Without Docker: runs end at the clone (it goes nowhere)

#[test]
fn reads_filters_pages_errors_auth_metrics_and_the_cli() {
    let orch =
        Orch::start(ServeArgs { api_token: Some(API_TOKEN.into()), cancel_superseded: Some(false), ..base_args() });
    let mut ids = Vec::new();
    // Three pushes to main: of three commits (one body is one delivery, whatever its id).
    for (i, b) in ["main", "dev", "main", "feature/x", "main"].iter().enumerate() {
        ids.push(orch.deliver("push", &push_event(b, ZERO_SHA, &format!("ab{i:038}"))).run_id());
    }
    for &id in &ids {
        assert_eq!(orch.wait_run_done(id)["run"]["status"], "error");
    }
    // A duplicate and a refused delivery, for the metrics.
    let again = orch.deliver("push", &push_event("other", ZERO_SHA, &"cd".repeat(20)));
    let dup = orch.deliver_as("push", &again.guid, &push_event("other", ZERO_SHA, &"cd".repeat(20)));
    assert_eq!(dup.response.json()["status"], "duplicate");
    let refused = orch.post_delivery("push", &new_guid(), b"{}", Some("sha256=00"), "application/json");
    assert_eq!(refused.status, 401);
    orch.wait_run_done(again.run_id());

    // Pages, newest first, with a cursor.
    let p1 = orch.get_json("/api/runs?limit=2");
    let got: Vec<i64> = p1["runs"].as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(got, [6, 5]);
    assert_eq!(p1["next"], 5);
    let p2 = orch.get_json("/api/runs?limit=2&before=5");
    assert_eq!(p2["runs"][0]["id"], 4);
    let last = orch.get_json("/api/runs?limit=10&before=2");
    assert_eq!(last["runs"].as_array().unwrap().len(), 1);
    assert_eq!(last["next"], Value::Null);
    // Filters.
    let main = orch.get_json("/api/runs?branch=main");
    assert_eq!(main["runs"].as_array().unwrap().len(), 3, "{main:#}");
    let f = orch.get_json("/api/runs?branch=feature%2Fx&status=error&repo=acme%2Fhello");
    assert_eq!(f["runs"].as_array().unwrap().len(), 1, "{f:#}");
    assert_eq!(f["runs"][0]["id"], ids[3]);
    assert_eq!(orch.get_json("/api/runs?status=success")["runs"], json!([]));

    // One run: trigger and the error that ended it.
    let r = orch.get_json(&format!("/api/runs/{}", ids[0]));
    assert_eq!(r["trigger"]["event"], "push");
    assert_eq!(r["trigger"]["branch"], "main");
    assert_eq!(r["trigger"]["sha"], format!("ab{:038}", 0));
    assert!(r["trigger"]["delivery_id"].is_string());
    assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()), "{r:#}");
    assert_eq!(r["artifacts"], json!([]));

    // 400s and 404s, as JSON.
    for (path, code) in [
        ("/api/runs?limit=0", 400),
        ("/api/runs?limit=ten", 400),
        ("/api/runs?before=x", 400),
        ("/api/runs?status=green", 400),
        ("/api/runs/999", 404),
        ("/api/runs/abc", 404),
        ("/api/runs/999/logs/build", 404),
        ("/api/runs/1/logs/nope", 404),
        ("/api/runs/1/logs/nope?offset=-1", 400),
        ("/api/runs/1/artifacts/stamp/nothing.txt", 404),
        ("/api/runs/1/artifacts/stamp/a/%2E%2E/%2E%2E/logs", 400),
    ] {
        let resp = orch.get(path);
        assert_eq!(resp.status, code, "GET {path}: {}", resp.text());
        assert!(resp.json()["error"].is_string(), "{path}");
    }

    // Actions: no token 401, wrong token 401, then bad input 400, unknown run 404.
    let no = orch.request("POST", "/api/runs/1/rerun", &[], b"");
    assert_eq!(no.status, 401, "{}", no.text());
    let wrong = orch.request("POST", "/api/runs/1/cancel", &[("Authorization", "Bearer nope")], b"");
    assert_eq!(wrong.status, 401);
    assert_eq!(post(&orch, "/api/runs", "{\"repo\":").status, 400);
    let bad_repo = post(&orch, "/api/runs", r#"{"repo": "nope", "branch": "main"}"#);
    assert_eq!(bad_repo.status, 400);
    assert!(bad_repo.json()["error"].as_str().unwrap().contains("owner/name"));
    assert_eq!(post(&orch, "/api/runs", r#"{"repo": "acme/hello", "branch": "main", "sha": "xyz"}"#).status, 400);
    let local = post(&orch, "/api/runs", r#"{"repo": "acme/hello", "branch": "main", "clone_url": "file:///etc"}"#);
    assert_eq!(local.status, 400, "{}", local.text());
    assert_eq!(post(&orch, "/api/runs/999/rerun", "").status, 404);
    assert_eq!(post(&orch, "/api/runs/999/cancel", "").status, 404);
    assert_eq!(post(&orch, "/api/runs/1/rerun?failed=maybe", "").status, 400);
    let ended = post(&orch, "/api/runs/1/cancel", "");
    assert_eq!(ended.status, 409, "{}", ended.text());

    // A manual run with its commit, and a re-run: queued, and they run (to the clone error).
    let m = post(
        &orch,
        "/api/runs",
        &format!(r#"{{"repo": "acme/hello", "branch": "main", "sha": "{}"}}"#, "ef".repeat(20)),
    );
    assert_eq!(m.status, 202, "{}", m.text());
    let mid = m.json()["run"].as_i64().unwrap();
    let mr = orch.wait_run_done(mid);
    assert_eq!((&mr["run"]["event"], &mr["run"]["clone_url"]), (&json!("manual"), &json!(CLONE_URL)));
    let rr = post(&orch, "/api/runs/2/rerun", "");
    assert_eq!(rr.status, 202);
    let rid = rr.json()["run"].as_i64().unwrap();
    let rerun = orch.wait_run_done(rid);
    assert_eq!((&rerun["run"]["rerun_of"], &rerun["run"]["branch"]), (&json!(2), &json!("dev")));

    // Metrics match what happened.
    let m = orch.get("/metrics");
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    let text = m.text();
    assert_eq!(metric(&text, "orch_deliveries_total{outcome=\"accepted\"}"), 6.0, "{text}");
    assert_eq!(metric(&text, "orch_deliveries_total{outcome=\"duplicate\"}"), 1.0);
    assert_eq!(metric(&text, "orch_deliveries_total{outcome=\"rejected\"}"), 1.0);
    assert_eq!(metric(&text, "orch_runs{status=\"error\"}"), 8.0);
    assert_eq!(metric(&text, "orch_runs{status=\"success\"}"), 0.0);
    assert_eq!(metric(&text, "orch_queue_length"), 0.0);
    assert_eq!(metric(&text, "orch_queue_wait_seconds_count"), 8.0);
    assert_eq!(metric(&text, "orch_containers_running"), 0.0);
    assert_eq!(metric(&text, "orch_github_requests_total{result=\"ok\"}"), 0.0);
    assert_eq!(metric(&text, "orch_github_owed"), 0.0);

    // Every path and method of the OpenAPI description the server serves is routed.
    let spec = orch.get("/api/openapi.yaml");
    assert_eq!(spec.status, 200);
    let orch::pipeline::yaml::Node::Map(top) = orch::pipeline::yaml::parse(&spec.text()).unwrap() else { panic!() };
    let Some((_, orch::pipeline::yaml::Node::Map(paths))) = top.iter().find(|(k, _)| k == "paths") else { panic!() };
    assert!(paths.len() >= 9);
    for (path, ops) in paths {
        let orch::pipeline::yaml::Node::Map(ops) = ops else { panic!("{path}") };
        let concrete =
            path.replace("{id}", "999").replace("{step}", "s").replace("{path}", "p").replace("{attempt}", "1");
        for (method, _) in ops {
            let r = orch.request(&method.to_uppercase(), &concrete, &[], b"");
            assert!(r.status != 405 && !(r.status == 404 && r.body.is_empty()), "{method} {path}: {}", r.status);
        }
    }

    // Health and readiness.
    assert_eq!(orch.get("/healthz").status, 200);
    let ready = orch.get("/readyz");
    assert_eq!(ready.json()["database"], "ok", "{}", ready.text());
    if docker_enabled() {
        assert_eq!(ready.status, 200, "{}", ready.text());
    }

    // The CLI.
    let (code, out, err) = cli(&orch, &["runs", "--branch", "main"], false);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("RUN") && out.lines().count() == 5, "{out}");
    assert!(out.lines().nth(1).unwrap().starts_with(&mid.to_string()), "{out}");
    let (code, out, _) = cli(&orch, &["runs", "--json", "--limit", "1"], false);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["runs"][0]["id"], rid);
    let (code, _, err) = cli(&orch, &["rerun", "1"], false);
    assert_eq!(code, 3);
    assert!(err.contains("401") && err.contains("Bearer"), "{err}");
    let (code, _, err) = cli(&orch, &["cancel", "1"], true);
    assert_eq!(code, 3);
    assert!(err.contains("already ended"), "{err}");
    let (code, out, err) = cli(&orch, &["rerun", "1"], true);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("run {} queued (re-run of 1)", rid + 1)), "{out}");
    let sha = "ab".repeat(20);
    let (code, out, err) = cli(&orch, &["trigger", "acme/hello", "--branch", "main", "--sha", &sha], true);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("run {} queued (acme/hello main at {sha})", rid + 2)), "{out}");
    let manual = orch.wait_run_done(rid + 2);
    assert_eq!((&manual["run"]["event"], &manual["run"]["sha"]), (&json!("manual"), &json!(sha)));
    let (code, _, err) = cli(&orch, &["trigger", "acme/hello", "--branch", "main"], false);
    assert_eq!(code, 3);
    assert!(err.contains("401"), "{err}");
    let (code, _, err) = cli(&orch, &["runs", "--server", "ftp://ci.example.com"], false);
    assert_eq!(code, 2);
    assert!(err.contains("http:// or https://"), "{err}");
    // https:// is spoken (tests/agents.rs goes through a TLS proxy); nothing answers here.
    let (code, _, err) = cli(&orch, &["runs", "--server", "https://127.0.0.1:1"], false);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("cannot reach https://127.0.0.1:1"), "{err}");
}

#[test]
fn without_a_token_actions_are_refused_and_a_private_api_and_dashboard_need_one() {
    let open = Orch::start(base_args());
    let r = open.request("POST", "/api/runs/1/cancel", &[("Authorization", "Bearer x")], b"");
    assert_eq!(r.status, 403);
    assert!(r.json()["error"].as_str().unwrap().contains("ORCH_API_TOKEN"));
    assert_eq!(open.get("/api/runs").status, 200);

    let private = Orch::start(ServeArgs { api_token: Some(API_TOKEN.into()), api_private: Some(true), ..base_args() });
    for path in ["/api/runs", "/api/runs/1", "/metrics"] {
        assert_eq!(private.get(path).status, 401, "{path}");
    }
    let a = auth();
    assert_eq!(private.request("GET", "/api/runs", &[("Authorization", &a)], b"").status, 200);
    assert_eq!(private.get("/healthz").status, 200);
    let (code, _, err) = cli(&private, &["runs"], false);
    assert_eq!(code, 3, "{err}");
    assert_eq!(cli(&private, &["runs"], true).0, 0);

    // The dashboard of a private server: pages send people to sign in, and back.
    let r = private.get("/runs/1");
    assert_eq!((r.status, r.header("location")), (303, Some("/login?next=%2Fruns%2F1")));
    assert_eq!(private.get("/").header("location"), Some("/login?next=%2F"));
    assert_eq!(private.get("/ui/runs").status, 401, "the list's refresh is refused, not redirected");
    let form = private.get("/login?next=%2Fruns%2F1");
    assert_eq!(form.status, 200);
    assert!(form.text().contains("type=\"password\"") && form.text().contains("value=\"/runs/1\""), "{}", form.text());
    let form_type = [("Content-Type", "application/x-www-form-urlencoded")];
    let wrong = private.request("POST", "/login", &form_type, b"token=nope&next=%2Fruns%2F1");
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());
    let body = format!("token={API_TOKEN}&next=%2Fruns%2F1");
    let ok = private.request("POST", "/login", &form_type, body.as_bytes());
    assert_eq!((ok.status, ok.header("location")), (303, Some("/runs/1")));
    let set = ok.header("set-cookie").unwrap().to_string();
    assert!(set.starts_with("orch_session=") && set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    assert!(!set.contains(API_TOKEN), "the cookie does not hold the token: {set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let with = [("Cookie", cookie.as_str())];
    for path in ["/", "/ui/runs", "/api/runs", "/metrics"] {
        assert_eq!(private.request("GET", path, &with, b"").status, 200, "{path} with the session");
    }
    // Reads only: an action still needs the token itself.
    assert_eq!(private.request("POST", "/api/runs/1/cancel", &with, b"").status, 401);
    let forged = [("Cookie", "orch_session=0123")];
    assert_eq!(private.request("GET", "/", &forged, b"").status, 303);
    // Only this server's paths are places to go back to.
    for next in
        ["%2F%2Fevil.example%2F", "%2F%09%2Fevil.example", "%2F%5Cevil.example", "%2F%0D%0AX%3A%201", "https%3A%2F%2Fe"]
    {
        let body = format!("token={API_TOKEN}&next={next}");
        let r = private.request("POST", "/login", &form_type, body.as_bytes());
        assert_eq!((r.status, r.header("location")), (303, Some("/")), "next={next}");
    }
    // A session is dated and signed: an old one, or one signed with another token, is refused.
    let old = orch::server::api::session_value(API_TOKEN, orch::server::db::now() - 8 * 86_400);
    let other = orch::server::api::session_value("another", orch::server::db::now());
    for v in [old, other] {
        let c = format!("orch_session={v}");
        assert_eq!(private.request("GET", "/", &[("Cookie", &c)], b"").status, 303, "{v}");
    }
    // Signing out is a POST (a link or an image elsewhere cannot sign anyone out).
    assert_eq!(private.get("/logout").status, 405);
    let out = private.request("POST", "/logout", &[], b"");
    assert!(out.header("set-cookie").is_some_and(|c| c.contains("Max-Age=0")), "{:?}", out.headers);
}

#[test]
fn retention_prunes_old_runs_their_directories_and_deliveries() {
    let data = temp_dir("orch-retention-");
    let args = || ServeArgs { data_dir: Some(data.path().to_path_buf()), ..base_args() };
    {
        let orch = Orch::start(args());
        for b in ["a", "b", "c", "d"] {
            let id = orch.deliver("push", &push_event(b, ZERO_SHA, &"ab".repeat(20))).run_id();
            orch.wait_run_done(id);
        }
        assert!(data.path().join("runs/1").is_dir());
    }
    // Age the first run and every delivery by hand: 40 days.
    let c = rusqlite::Connection::open(data.path().join("orch.db")).unwrap();
    let old = orch::server::db::now() - 40 * 86_400;
    c.execute("UPDATE runs SET finished_at = ?1, created_at = ?1 WHERE id = 1", [old]).unwrap();
    c.execute("UPDATE deliveries SET received_at = ?1 WHERE repo = 'acme/hello' AND rowid <= 1", [old]).unwrap();
    drop(c);
    // Keep 2 runs at most, 30 days: run 1 goes for its age, run 2 for the count.
    let orch = Orch::start(ServeArgs { retention_runs: Some(2), ..args() });
    wait_for(Duration::from_secs(20), "the prune", || {
        let runs = orch.runs_from_db();
        let dirs = ["runs/1", "runs/2"].map(|d| data.path().join(d).exists());
        if runs.iter().map(|r| r.0).eq([3, 4]) && dirs == [false, false] {
            Ok(())
        } else {
            Err(format!("{runs:?} {dirs:?}"))
        }
    });
    assert!(data.path().join("runs/3").is_dir());
    assert_eq!(orch.count("SELECT COUNT(*) FROM steps WHERE run_id IN (1, 2)"), 0);
    assert_eq!(orch.count("SELECT COUNT(*) FROM deliveries"), 3);
    assert_eq!(orch.get("/api/runs/1").status, 404);
}

#[test]
fn readyz_says_which_part_is_not_ready() {
    let data = temp_dir("orch-readyz-");
    let env =
        [("DOCKER_HOST", "unix:///nonexistent/docker.sock".to_string()), ("ORCH_API_TOKEN", API_TOKEN.to_string())];
    let mut p = OrchProcess::spawn(data.path(), &env, &data.path().join("serve.log"));
    let r = p.get("/readyz");
    assert_eq!(r.status, 503, "{}", r.text());
    let j = r.json();
    assert_eq!((&j["database"], &j["ready"]), (&json!("ok"), &json!(false)), "{j}");
    // A stranger learns that Docker is not ready, not what its error says about the host.
    assert_eq!(j["docker"], "unavailable", "{j}");
    let bearer = format!("Bearer {API_TOKEN}");
    let j = p.request("GET", "/readyz", &[("Authorization", &bearer)], b"").json();
    assert!(
        j["docker"].as_str().is_some_and(|d| d.contains("/nonexistent/docker.sock") || d.contains("socket")),
        "{j}"
    );
    assert_eq!(p.get("/healthz").status, 200);
    p.terminate();
}

// ---------------------------------------------------------------------------------------
// With Docker

fn repo_with(git: &GitServer, files: &[(&str, &str)], branch: &str, parent: Option<&str>) -> String {
    let sha = git.commit(parent, files, branch);
    git.set_ref(&sha, &format!("refs/heads/{branch}"));
    sha
}

#[test]
fn real_runs_logs_follow_artifacts_rerun_failed_cancel_manual_metrics_and_the_cli() {
    require_docker!();
    let git = GitServer::start();
    let main = repo_with(&git, &[(".orch.yml", PIPELINE)], "main", None);
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    // One run at a time, so that a run can be seen queued.
    let orch =
        Orch::start(ServeArgs { api_token: Some(API_TOKEN.into()), concurrency: Some(1), ..token_args(&gh, &git) });

    // A run that fails at `check`: `after` is skipped, `deploy` is not planned.
    let posted = orch.deliver("push", &push_event("main", ZERO_SHA, &main));
    let first = posted.run_id();
    let r1 = orch.wait_run_done(first);
    assert_eq!(r1["run"]["status"], "failure", "{r1:#}");
    assert_eq!(r1["trigger"]["delivery_id"], json!(posted.guid));
    assert_eq!(r1["trigger"]["sha"], json!(main));
    let status = |r: &Value, s: &str| step_of(r, s).map(|x| x["status"].as_str().unwrap().to_string());
    assert_eq!(status(&r1, "stamp").as_deref(), Some("passed"));
    assert_eq!(status(&r1, "check").as_deref(), Some("failed"));
    assert_eq!(status(&r1, "after").as_deref(), Some("skipped"));
    let stamp1 = step_of(&r1, "stamp").unwrap();
    assert!(stamp1["duration"].as_f64().unwrap() > 0.0 && stamp1["started"].is_number(), "{stamp1}");
    assert_eq!(r1["skipped"][0]["name"], "deploy", "{r1:#}");
    assert!(r1["skipped"][0]["reason"].as_str().unwrap().contains("release"), "{r1:#}");
    assert_eq!(r1["artifacts"][0]["step"], "stamp");
    assert_eq!(r1["artifacts"][0]["files"][0]["path"], "stamp.txt");
    assert_eq!(r1["artifacts"][0]["files"][0]["size"], 37);

    // Artifacts download; no way out of the step's directory.
    let art = orch.get(&format!("/api/runs/{first}/artifacts/stamp/stamp.txt"));
    assert_eq!(art.status, 200);
    let uuid1 = art.text();
    assert_eq!(uuid1.trim().len(), 36, "{uuid1}");
    assert_eq!(orch.get(&format!("/api/runs/{first}/artifacts/stamp/..%2F..%2Forch.db")).status, 400);
    assert_eq!(orch.get(&format!("/api/runs/{first}/artifacts/check/x")).status, 404);

    // Logs: whole, from an offset, followed after the end.
    let whole = orch.get(&format!("/api/runs/{first}/logs/stamp"));
    assert_eq!(whole.status, 200);
    let text = whole.text();
    assert!(text.contains("stamped\n") && text.contains(uuid1.trim()), "{text}");
    assert_eq!(whole.header("x-log-size").unwrap(), text.len().to_string());
    let at = text.find("stamped").unwrap();
    let tail = orch.get(&format!("/api/runs/{first}/logs/stamp?offset={at}"));
    assert_eq!(tail.text(), text[at..]);
    assert_eq!(tail.header("x-log-size").unwrap(), text.len().to_string());
    let done = orch.get(&format!("/api/runs/{first}/logs/check?follow=1"));
    assert!(done.header("content-type").unwrap().starts_with("text/event-stream"));
    let ev = sse_events(&done.text());
    assert!(ev.iter().any(|(e, d)| e == "message" && d == "checking"), "{ev:?}");
    assert_eq!(ev.last().unwrap(), &("end".to_string(), "failed".to_string()));

    // Re-run of the failed steps: `stamp` is kept (its artifact is the first run's), `check`
    // and `after` run again.
    let rr = post(&orch, &format!("/api/runs/{first}/rerun?failed=true"), "");
    assert_eq!(rr.status, 202, "{}", rr.text());
    let second = rr.json()["run"].as_i64().unwrap();
    let r2 = orch.wait_run_done(second);
    assert_eq!(r2["run"]["status"], "failure", "{r2:#}");
    assert_eq!((&r2["trigger"]["rerun_of"], &r2["trigger"]["failed_only"]), (&json!(first), &json!(true)));
    let kept = step_of(&r2, "stamp").unwrap();
    assert_eq!(kept["status"], "passed");
    assert_eq!(kept["message"], format!("kept from run {first}"));
    assert_eq!((kept["attempts"].as_i64(), kept["duration"].as_f64()), (Some(0), Some(0.0)));
    assert_eq!(status(&r2, "check").as_deref(), Some("failed"));
    assert_eq!(step_of(&r2, "check").unwrap()["attempts"], 1);
    assert_eq!(orch.get(&format!("/api/runs/{second}/artifacts/stamp/stamp.txt")).text(), uuid1);
    assert_eq!(orch.get(&format!("/api/runs/{second}/logs/stamp")).status, 404, "the kept step did not run");
    assert!(orch.get(&format!("/api/runs/{second}/logs/check")).text().contains("checking"));
    let (code, out, err) = cli(&orch, &["logs", &second.to_string()], false);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("==> stamp <==\n(kept from run {first})\n==> check <==\n")), "{out}");

    // A whole re-run runs `stamp` again: a new artifact.
    let (code, out, err) = cli(&orch, &["rerun", &first.to_string()], true);
    assert_eq!(code, 0, "{err}");
    let third = second + 1;
    assert!(out.contains(&format!("run {third} queued")), "{out}");
    let r3 = orch.wait_run_done(third);
    assert_eq!(status(&r3, "stamp").as_deref(), Some("passed"));
    let uuid3 = orch.get(&format!("/api/runs/{third}/artifacts/stamp/stamp.txt")).text();
    assert!(uuid3.trim().len() == 36 && uuid3 != uuid1);

    // A re-run of the failed steps that now pass (a commit adds `pass` on the branch is not
    // what a re-run does: it builds the same commit) is refused for a run that passed.
    let passing = repo_with(&git, &[(".orch.yml", PIPELINE), ("pass", "")], "green", Some(&main));
    let g = orch.deliver("push", &push_event("green", ZERO_SHA, &passing)).run_id();
    assert_eq!(orch.wait_run_done(g)["run"]["status"], "success");
    assert_eq!(post(&orch, &format!("/api/runs/{g}/rerun?failed=true"), "").status, 409);

    // Following a running step: what is there, then lines as they come, then `end`.
    let slow = repo_with(&git, &[(".orch.yml", SLOW)], "slow", None);
    let s = orch.deliver("push", &push_event("slow", ZERO_SHA, &slow)).run_id();
    orch.wait_step_running(s, "slow");
    let t0 = Instant::now();
    let followed = orch.get(&format!("/api/runs/{s}/logs/slow?follow=1"));
    assert!(t0.elapsed() > Duration::from_millis(500), "the stream lasted as long as the step");
    let ev = sse_events(&followed.text());
    let ticks: Vec<&str> =
        ev.iter().filter(|(e, d)| e == "message" && !d.starts_with("+ ")).map(|(_, d)| d.as_str()).collect();
    assert_eq!(ticks, ["tick 1", "tick 2", "tick 3", "tick 4", "tick 5", "tick 6"], "{ev:?}");
    assert_eq!(ev.last().unwrap(), &("end".to_string(), "passed".to_string()));
    // The CLI follows too.
    let (code, out, err) = cli(&orch, &["logs", &s.to_string(), "slow", "--follow"], false);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\ntick 1\n") && out.ends_with("tick 6\n"), "{out}");
    let (code, out, err) = cli(&orch, &["logs", &s.to_string(), "--follow"], false);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("==> slow <==\n") && out.contains("tick 6\n==> slow: passed <==\n"), "{out}");
    assert!(out.contains(&format!("\nrun {s}: success (")), "{out}");
    let (code, out, _) = cli(&orch, &["logs", &first.to_string()], false);
    assert_eq!(code, 0);
    let (a, b) = (out.find("==> stamp <==\n").unwrap(), out.find("==> check <==\n").unwrap());
    assert!(a < b && out[b..].contains("checking\n") && !out.contains("==> after"), "{out}");

    // Cancelling a running run.
    let hang = repo_with(&git, &[(".orch.yml", HANG)], "hang", None);
    let h = orch.deliver("push", &push_event("hang", ZERO_SHA, &hang)).run_id();
    orch.wait_step_running(h, "hang");
    let metrics = orch.get("/metrics").text();
    assert_eq!(metric(&metrics, "orch_containers_running"), 1.0, "{metrics}");
    // Behind it, a queued run: cancelled at once, and GitHub is told.
    let waiting = repo_with(&git, &[(".orch.yml", SLOW), ("x", "")], "waiting", None);
    let q = orch.deliver("push", &push_event("waiting", ZERO_SHA, &waiting)).run_id();
    assert_eq!(orch.run(q)["run"]["status"], "queued");
    assert_eq!(metric(&orch.get("/metrics").text(), "orch_queue_length"), 1.0);
    let c = post(&orch, &format!("/api/runs/{q}/cancel"), "");
    assert_eq!((c.status, c.json()["status"].clone()), (202, json!("cancelled")), "{}", c.text());
    let rq = orch.run(q);
    assert_eq!(
        (&rq["run"]["status"], &rq["run"]["reason"]),
        (&json!("cancelled"), &json!("cancelled through the API"))
    );
    assert_eq!(gh.wait_final_status(&waiting, "orch (push)", q).last().unwrap()["state"], "error");
    let (code, out, err) = cli(&orch, &["cancel", &h.to_string()], true);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cancelling"), "{out}");
    let rh = orch.wait_run_done(h);
    assert_eq!(rh["run"]["status"], "cancelled", "{rh:#}");
    assert_eq!(rh["run"]["reason"], "cancelled through the API");
    assert!(gh.wait_final_status(&hang, "orch (push)", h).last().unwrap()["state"] == "error");

    // A manual run of a branch: its head is looked up.
    let m = post(&orch, "/api/runs", r#"{"repo": "acme/hello", "branch": "green"}"#);
    assert_eq!(m.status, 202, "{}", m.text());
    assert_eq!(m.json()["sha"], json!(passing));
    let mr = orch.wait_run_done(m.json()["run"].as_i64().unwrap());
    assert_eq!((&mr["run"]["status"], &mr["trigger"]["event"]), (&json!("success"), &json!("manual")));
    let nob = post(&orch, "/api/runs", r#"{"repo": "acme/hello", "branch": "nope"}"#);
    assert_eq!(nob.status, 400);
    assert!(nob.json()["error"].as_str().unwrap().contains("no branch `nope`"), "{}", nob.text());

    // The metrics match the database.
    let text = orch.get("/metrics").text();
    let runs = orch.runs();
    assert_eq!(metric(&text, "orch_runs{status=\"cancelled\"}"), 2.0);
    for st in ["success", "failure", "cancelled"] {
        let n = runs.iter().filter(|r| r["status"] == st).count() as f64;
        assert_eq!(metric(&text, &format!("orch_runs{{status=\"{st}\"}}")), n, "{st}: {text}");
    }
    assert_eq!(metric(&text, "orch_runs{status=\"failure\"}"), 3.0);
    let passed = orch.count("SELECT COUNT(*) FROM steps WHERE status = 'passed'") as f64;
    assert_eq!(metric(&text, "orch_step_duration_seconds_count{status=\"passed\"}"), passed);
    assert_eq!(metric(&text, "orch_deliveries_total{outcome=\"accepted\"}"), 5.0);
    assert_eq!(metric(&text, "orch_containers_running"), 0.0);
    // Queued, running and the end of every run went to GitHub (the run cancelled in the
    // queue never ran; the last end may be on its way).
    let github_ok = metric(&text, "orch_github_requests_total{result=\"ok\"}");
    assert!(github_ok >= 3.0 * runs.len() as f64 - 2.0, "{github_ok} for {} runs", runs.len());
    assert_eq!(metric(&text, "orch_github_requests_total{result=\"error\"}"), 0.0);
    // Every run but the one cancelled in the queue started.
    assert_eq!(metric(&text, "orch_queue_wait_seconds_count"), runs.len() as f64 - 1.0);
    assert_eq!(orch.get("/readyz").status, 200);
    let (code, out, _) = cli(&orch, &["runs", "--status", "failure"], false);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(orch.leftovers().is_empty(), "{:?}", orch.leftovers());
}

/// Reads an SSE answer as it arrives, calling `each(event, data)` for each event until it
/// returns false or the stream ends.
fn sse_live(addr: std::net::SocketAddr, path: &str, mut each: impl FnMut(&str, &str) -> bool) {
    use std::io::{BufRead, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n").unwrap();
    let mut r = std::io::BufReader::new(s);
    let (mut event, mut data) = ("message".to_string(), Vec::<String>::new());
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if let Some(v) = l.strip_prefix("event:") {
            event = v.trim().to_string();
        } else if let Some(v) = l.strip_prefix("data:") {
            data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
        } else if l.is_empty() && !data.is_empty() {
            if !each(&event, &data.join("\n")) {
                return;
            }
            (event, data) = ("message".to_string(), Vec::new());
        }
    }
}

/// A step that prints a line every 0.1 s and then keeps running: each line reaches an SSE
/// follower while the step runs (before, the log's 64 KiB buffer held them to the step's
/// end). Prints the latency from the step's clock to the follower's (the same kernel's);
/// asserts nothing about it.
#[test]
fn live_logs_reach_a_follower_while_the_step_prints_them() {
    require_docker!();
    const TICKS: &str = "\
steps:
  tick:
    image: debian:bookworm
    timeout: 5m
    commands:
      - for i in $(seq 40); do date +%s.%N; sleep 0.1; done
      - echo done-ticking
      - sleep 300
";
    let git = GitServer::start();
    let sha = repo_with(&git, &[(".orch.yml", TICKS)], "main", None);
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let orch = Orch::start(ServeArgs { api_token: Some(API_TOKEN.into()), ..token_args(&gh, &git) });
    let id = orch.deliver("push", &push_event("main", ZERO_SHA, &sha)).run_id();
    orch.wait_step_running(id, "tick");
    let mut latencies = Vec::new();
    let mut finished = false;
    sse_live(orch.addr, &format!("/api/runs/{id}/logs/tick"), |event, data| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        if event == "end" {
            return false;
        }
        if let Ok(printed) = data.trim().parse::<f64>() {
            latencies.push(now - printed);
        }
        if data == "done-ticking" {
            finished = true;
            return false;
        }
        true
    });
    assert!(finished, "the follow ended before the last line");
    assert_eq!(latencies.len(), 40, "{latencies:?}");
    let run = orch.run(id);
    assert_eq!(step_of(&run, "tick").unwrap()["status"], "running", "the lines came only when the step ended");
    assert_eq!(post(&orch, &format!("/api/runs/{id}/cancel"), "").status, 202);
    orch.wait_run_done(id);
    latencies.sort_by(f64::total_cmp);
    let ms = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize] * 1000.0;
    eprintln!("live log latency over {} lines: median {:.1} ms, p99 {:.1} ms", latencies.len(), ms(0.5), ms(0.99));
}
