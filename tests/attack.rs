//! The attack suite: hostile pipelines, payloads and requests against a real `orch serve`
//! (a git daemon on loopback, a fake GitHub that checks what it is sent, Docker for the
//! steps). Each test is one class of attack from docs/security.md; each failed on the code
//! before its fix (see the commit that added it).
//!
//! Tests that run steps need `ORCH_DOCKER_TESTS=1`; the intake and API attacks always run.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use orch::server::config::ServeArgs;
use serde_json::{Value, json};

mod serve_support;

use serve_support::*;

const API_TOKEN: &str = "api-token-for-attack-tests";

fn bearer() -> String {
    format!("Bearer {API_TOKEN}")
}

/// A pull request `7` from `topic` at `sha` into `main` (at `base`).
fn pull_request(git: &GitServer, sha: &str, base: &str) -> Value {
    git.set_ref(sha, "refs/pull/7/head");
    pr_event("opened", 7, "topic", sha, "main", base)
}

fn log_of(orch: &Orch, run: i64, step: &str) -> String {
    let step = step.replace(' ', "%20").replace('/', "%2F").replace('[', "%5B").replace(']', "%5D");
    orch.get(&format!("/api/runs/{run}/logs/{step}")).text()
}

// ---------------------------------------------------------------------------------------
// 1. Host files written through artifact links

/// The reported attack: a chain of `..` links, each harmless on paper, and a second
/// artifact pattern that writes through it, from a pull request.
#[test]
fn a_pull_request_cannot_write_host_files_through_artifact_links() {
    require_docker!();
    let target = format!("orch-pwned-{}", new_guid());
    let host_file = std::path::Path::new("/tmp").join(&target);
    let pipeline = format!(
        r#"
steps:
  chain:
    image: busybox:latest
    artifacts: ['./a/*', 'a/t20/tmp/{target}']
    commands:
      - mkdir -p a && echo pwned > /tmp/{target}
      - ln -s .. a/s && ln -s s/.. a/t1
      - for i in $(seq 2 20); do ln -s t$((i-1))/.. a/t$i; done
  absolute:
    image: busybox:latest
    artifacts: ['b/*', 'b/tmp/{target}.abs']
    commands:
      - mkdir -p b && echo pwned > /tmp/{target}.abs
      - ln -s / b/tmp-root && ln -s /tmp b/tmp
"#
    );
    let git = GitServer::start();
    let base = git.on_branch("main", &[("README", "base")], "base");
    let sha = git.commit(Some(&base), &[(".orch.yml", pipeline.as_str())], "hostile");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let orch = Orch::start(token_args(&gh, &git));
    let id = orch.deliver("pull_request", &pull_request(&git, &sha, &base)).run_id();
    let run = orch.wait_run_done(id);
    assert_eq!(run["run"]["status"], "failure", "{run:#}");
    for step in ["chain", "absolute"] {
        let s = step_of(&run, step).expect("the step");
        assert_eq!(s["status"], "failed", "{run:#}");
        let msg = s["message"].as_str().unwrap_or("");
        assert!(msg.contains("leads out") || msg.contains("outside the workspace"), "{step}: {msg}");
    }
    assert!(!host_file.exists(), "{} was written on the host", host_file.display());
    assert!(!host_file.with_extension("abs").exists(), "the absolute link wrote on the host");
    assert!(run["artifacts"].as_array().is_some_and(|a| a.is_empty()), "{:#}", run["artifacts"]);
}

// ---------------------------------------------------------------------------------------
// 2 and 3. Credentials

/// A repository served over smart HTTP on another origin that accepts any password: if
/// orch sent the token, the clone would get through (and the server sees it).
fn foreign_http(git: &GitServer) -> GitHttp {
    git.http(|_| true)
}

#[test]
fn the_github_token_never_goes_to_another_host() {
    let git = GitServer::start();
    let sha = git.on_branch("main", &[("README", "x")], "first");
    let foreign = foreign_http(&git);
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let orch = Orch::start(ServeArgs { api_token: Some(API_TOKEN.into()), ..token_args(&gh, &git) });
    let foreign_url = format!("http://127.0.0.1:{}/{REPO}.git", foreign.port);
    let auth = bearer();
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];

    // A manual run of a URL on another host: the fetch is tried, without credentials.
    let body = json!({"repo": REPO, "branch": "main", "sha": sha, "clone_url": foreign_url}).to_string();
    let r = orch.request("POST", "/api/runs", &headers, body.as_bytes());
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["run"].as_i64().unwrap();
    let run = orch.wait_run_done(id);
    assert_eq!(run["run"]["status"], "error", "{run:#}");
    let reason = run["run"]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("sends none there"), "{reason}");

    // Looking the branch up (no `sha`) asks the same server: still nothing sent.
    let body = json!({"repo": REPO, "branch": "main", "clone_url": foreign_url}).to_string();
    let r = orch.request("POST", "/api/runs", &headers, body.as_bytes());
    assert_eq!(r.status, 400, "{}", r.text());

    let seen = foreign.requests();
    assert!(!seen.is_empty(), "the foreign server was never asked");
    assert!(seen.iter().all(|(_, password)| password.is_none()), "credentials went to another host: {seen:#?}");

    // A signed delivery naming that server as the repository's clone URL runs nothing.
    let mut push = push_event("main", ZERO_SHA, &sha);
    push["repository"]["clone_url"] = json!(foreign_url);
    let before = foreign.requests().len();
    let posted = orch.deliver("push", &push);
    assert_eq!(posted.response.status, 202);
    let answer = posted.response.json();
    assert_eq!(answer["status"], "ignored", "{answer}");
    assert!(answer["reason"].as_str().unwrap_or("").contains("not on the configured GitHub"), "{answer}");
    for local in ["file:///etc", "/srv/git/acme/hello.git"] {
        push["repository"]["clone_url"] = json!(local);
        push["after"] = json!(format!("{:040}", local.len()));
        assert_eq!(orch.deliver("push", &push).response.json()["status"], "ignored", "{local}");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(foreign.requests().len(), before, "a webhook made orch fetch from another host");
}

#[test]
fn credentials_in_a_clone_rewrite_never_show() {
    const PASSWORD: &str = "sekret-mirror-password";
    let orch = Orch::start(ServeArgs {
        api_token: Some(API_TOKEN.into()),
        // A mirror that needs its own credentials; nothing listens there.
        clone_rewrite: vec![format!("https://github.com/=https://bot:{PASSWORD}@127.0.0.1:1/")],
        ..base_args()
    });
    let id = orch.deliver("push", &push_event("main", ZERO_SHA, &"ab".repeat(20))).run_id();
    let run = orch.wait_run_done(id);
    assert_eq!(run["run"]["status"], "error", "{run:#}");
    let all = run.to_string();
    assert!(all.contains("https://127.0.0.1:1/"), "the error names the mirror: {all}");
    assert!(!all.contains(PASSWORD) && !all.contains("bot:"), "{all}");
    let page = orch.get(&format!("/runs/{id}")).text();
    assert!(!page.contains(PASSWORD), "the run page shows the password");
    let stored: i64 = orch.count(&format!("SELECT COUNT(*) FROM runs WHERE clone_url LIKE '%{PASSWORD}%'"));
    assert_eq!(stored, 0);
    // A manual run may not carry credentials in its URL either.
    let auth = bearer();
    let body = json!({"repo": REPO, "branch": "main", "sha": "ab".repeat(20),
                      "clone_url": format!("https://u:{PASSWORD}@example.com/x.git")});
    let r = orch.request(
        "POST",
        "/api/runs",
        &[("Authorization", auth.as_str()), ("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(!r.text().contains(PASSWORD), "{}", r.text());
}

// ---------------------------------------------------------------------------------------
// 4. Host files read through checkout links

#[test]
fn a_checkout_link_cannot_make_orch_read_host_files() {
    require_docker!();
    // The key would hash the host's file (or hang on /proc/self/pagemap) if orch read it.
    let pipeline = r#"
steps:
  hostlink:
    image: busybox:latest
    cache: { key: "k-${hash:hostlink}", paths: [out/] }
    commands: [mkdir -p out]
  pagemap:
    image: busybox:latest
    cache: { key: "k-${hash:pagemap}", paths: [out/] }
    commands: [mkdir -p out]
  inside:
    image: busybox:latest
    cache: { key: "k-${hash:alias.lock}", paths: [out/] }
    commands: [mkdir -p out, cat alias.lock]
"#;
    let git = GitServer::start();
    let sha = git.commit_with_links(
        None,
        &[(".orch.yml", pipeline), ("real.lock", "v1\n")],
        &[("hostlink", "/etc/hostname"), ("pagemap", "/proc/self/pagemap"), ("alias.lock", "real.lock")],
        "links",
    );
    git.set_ref(&sha, "refs/heads/main");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let orch = Orch::start(token_args(&gh, &git));
    let id = orch.deliver("push", &push_event("main", ZERO_SHA, &sha)).run_id();
    let run = orch.wait_run_done(id);
    for step in ["hostlink", "pagemap"] {
        let s = step_of(&run, step).expect("the step");
        assert_eq!(s["status"], "error", "{run:#}");
        let msg = s["message"].as_str().unwrap_or("");
        assert!(msg.contains("no file in the work tree matches it"), "{step}: {msg}");
    }
    // A link to a file inside the checkout counts as that file.
    assert_eq!(step_of(&run, "inside").unwrap()["status"], "passed", "{run:#}");
    assert!(log_of(&orch, id, "inside").contains("v1"));
}

// ---------------------------------------------------------------------------------------
// 5. Memory and disk from logs

/// VmRSS of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[test]
fn logs_are_capped_and_slow_readers_cost_no_memory() {
    require_docker!();
    // 80 MB of output against a 50 MiB limit.
    let pipeline = r#"
steps:
  loud:
    image: busybox:latest
    commands:
      - head -c 83886080 /dev/zero | tr '\0' 'x' | fold -w 99
      - echo still-running-after-the-limit > after.txt
      - cat after.txt >&2
"#;
    let git = GitServer::start();
    let sha = git.on_branch("main", &[(".orch.yml", pipeline)], "loud");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let data = temp_dir("orch-attack-logs-");
    let env = token_env(&gh, &git, &[("ORCH_LOG_LIMIT", "50M".to_string())]);
    let p = OrchProcess::spawn(data.path(), &env, &data.path().join("serve.log"));
    let id = p.deliver("push", &push_event("main", ZERO_SHA, &sha)).run_id();
    let run = p.wait_run_done(id);
    assert_eq!(run["run"]["status"], "success", "the step goes on past the limit: {run:#}");
    let file = data.path().join(format!("runs/{id}/logs/loud.log"));
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(size <= (50 << 20) + 200, "the log holds {size} bytes");
    let mut all = Vec::new();
    std::fs::File::open(&file).unwrap().read_to_end(&mut all).unwrap();
    let tail = String::from_utf8_lossy(&all[all.len() - 200..]).into_owned();
    assert!(tail.contains("the log reached its limit of 50 MiB"), "{tail}");

    // Ranges.
    let path = format!("/api/runs/{id}/logs/loud");
    let r = p.request("GET", &path, &[("Range", "bytes=0-98")], b"");
    assert_eq!((r.status, r.body.len()), (206, 99), "{:?}", r.headers);
    assert_eq!(r.header("content-range"), Some(format!("bytes 0-98/{size}").as_str()));
    assert_eq!(r.body, all[..99]);
    let r = p.request("GET", &path, &[("Range", "bytes=-10")], b"");
    assert_eq!((r.status, &r.body[..]), (206, &all[all.len() - 10..]));
    assert_eq!(p.request("GET", &path, &[("Range", &format!("bytes={size}-"))], b"").status, 416);

    // Three clients that ask for the whole log and read slowly: the server holds pieces,
    // not logs.
    let before = rss(p.pid());
    let mut slow = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(p.addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut first = [0u8; 4096];
        let _ = s.read(&mut first).unwrap();
        slow.push(s);
    }
    std::thread::sleep(Duration::from_secs(2));
    let during = rss(p.pid());
    drop(slow);
    assert!(
        during < before + (40 << 20),
        "three slow readers of a {size}-byte log grew the server from {before} to {during} bytes"
    );
}

// ---------------------------------------------------------------------------------------
// 6. Replay

#[test]
fn a_replayed_body_is_one_delivery_and_an_older_event_never_supersedes() {
    let orch = Orch::start(base_args());
    let mut newer = push_event("main", ZERO_SHA, &"b".repeat(40));
    newer["repository"]["pushed_at"] = json!(2_000_000_000);
    let mut older = push_event("main", ZERO_SHA, &"a".repeat(40));
    older["repository"]["pushed_at"] = json!(1_900_000_000);

    let first = orch.deliver("push", &newer);
    assert_eq!(first.response.json()["status"], "queued");
    let first_id = first.run_id();
    // The same signed body again, under a new delivery id.
    let again = orch.deliver("push", &newer);
    assert_eq!((again.response.status, again.response.json()["status"].clone()), (200, json!("duplicate")));

    // An older push, arriving late (out of order, or replayed from long ago).
    let late = orch.deliver("push", &older);
    let answer = late.response.json();
    assert_eq!(answer["status"], "superseded", "{answer}");
    let late_id = answer["run"].as_i64().unwrap();
    let late_run = orch.run(late_id);
    assert_eq!(late_run["run"]["status"], "cancelled");
    assert_eq!(late_run["run"]["reason"], format!("superseded by run {first_id}, of a newer commit"));
    let newest = orch.wait_run_done(first_id);
    assert_ne!(newest["run"]["status"], "cancelled", "the older push cancelled the newer run: {newest:#}");
    assert_eq!(orch.count("SELECT COUNT(*) FROM runs"), 2);
}

// ---------------------------------------------------------------------------------------
// 7. Isolation

/// A listener on every address of the host, as a service a step must not reach; counts
/// connections.
fn host_service() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = n.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(c);
        }
    });
    (port, n)
}

fn probe_pipeline(port: u16) -> String {
    format!(
        r#"
steps:
  probe:
    image: busybox:latest
    commands:
      - gw=$(ip route | awk '/default/ {{print $3}}')
      - if nc -w 3 $gw {port} </dev/null; then echo host:reached; else echo host:blocked; fi
      - if [ -S /var/run/docker.sock ]; then echo socket:yes; else echo socket:no; fi
      - echo "nnp:$(awk '/NoNewPrivs/ {{print $2}}' /proc/self/status)"
      - echo "capeff:$(awk '/CapEff/ {{print $2}}' /proc/self/status)"
      - echo "pids:$(cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max)"
      - echo "mem:$(cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes)"
"#
    )
}

/// The `key:value` lines the probe printed.
fn probed(log: &str) -> std::collections::HashMap<String, String> {
    log.lines()
        .filter(|l| !l.starts_with('+'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn steps_are_isolated_and_only_trusted_pushes_get_more() {
    require_docker!();
    let (port, connections) = host_service();
    let pipeline = probe_pipeline(port);
    let git = GitServer::start();
    let base = git.on_branch("main", &[(".orch.yml", pipeline.as_str())], "base");
    let sha = git.commit(Some(&base), &[("change", "x")], "pr");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));

    // Defaults, for a pull request.
    {
        let orch = Orch::start(token_args(&gh, &git));
        let id = orch.deliver("pull_request", &pull_request(&git, &sha, &base)).run_id();
        let run = orch.wait_run_done(id);
        assert_eq!(run["run"]["status"], "success", "{run:#}");
        let p = probed(&log_of(&orch, id, "probe"));
        assert_eq!(p["host"], "blocked", "{p:?}");
        assert_eq!(p["socket"], "no");
        assert_eq!(p["nnp"], "1");
        let caps = u64::from_str_radix(&p["capeff"], 16).unwrap();
        for (bit, name) in [(13, "NET_RAW"), (21, "SYS_ADMIN"), (27, "MKNOD"), (18, "SYS_CHROOT")] {
            assert_eq!(caps & (1 << bit), 0, "the step has {name}: {caps:x}");
        }
        assert_ne!(caps & 1, 0, "CHOWN is kept");
        assert_eq!(p["pids"], "4096");
        assert_eq!(p["mem"], (4u64 << 30).to_string());
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 0, "a step reached the host");
    }

    // A server that lets steps reach the host and trusts the repository with the socket:
    // its pushes get both; its pull requests still never get the socket.
    let orch = Orch::start(ServeArgs {
        isolation: orch::exec::isolation::IsolationArgs { step_host_access: Some(true), ..Default::default() },
        trust_docker_socket: vec![REPO.into()],
        ..token_args(&gh, &git)
    });
    let id = orch.deliver("push", &push_event("main", ZERO_SHA, &base)).run_id();
    let run = orch.wait_run_done(id);
    assert_eq!(run["run"]["status"], "success", "{run:#}");
    let p = probed(&log_of(&orch, id, "probe"));
    assert_eq!((p["host"].as_str(), p["socket"].as_str()), ("reached", "yes"), "{p:?}");
    assert!(connections.load(std::sync::atomic::Ordering::SeqCst) > 0);
    let id = orch.deliver("pull_request", &pull_request(&git, &sha, &base)).run_id();
    orch.wait_run_done(id);
    let p = probed(&log_of(&orch, id, "probe"));
    assert_eq!(p["socket"], "no", "a pull request got the Docker socket: {p:?}");
}

// ---------------------------------------------------------------------------------------
// 8. The smaller ones

#[test]
fn matrix_values_that_read_alike_keep_their_own_logs() {
    require_docker!();
    let pipeline = r#"
steps:
  t:
    image: busybox:latest
    matrix: { v: ['a b', 'a_b', 'a/b'] }
    commands: ['echo "value=${v}"']
"#;
    let git = GitServer::start();
    let sha = git.on_branch("main", &[(".orch.yml", pipeline)], "matrix");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let orch = Orch::start(token_args(&gh, &git));
    let id = orch.deliver("push", &push_event("main", ZERO_SHA, &sha)).run_id();
    let run = orch.wait_run_done(id);
    assert_eq!(run["run"]["status"], "success", "{run:#}");
    for v in ["a b", "a_b", "a/b"] {
        let log = log_of(&orch, id, &format!("t[v={v}]"));
        let values: Vec<&str> = log.lines().filter(|l| l.starts_with("value=")).collect();
        assert_eq!(values, [format!("value={v}")], "the log of t[v={v}]:\n{log}");
    }
}

#[test]
fn sign_in_and_tokens_are_rate_limited() {
    let orch = Orch::start(ServeArgs { api_token: Some(API_TOKEN.into()), api_private: Some(true), ..base_args() });
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    for i in 0..orch::server::limit::MAX_FAILURES {
        let r = orch.request("POST", "/login", &form, b"token=guess&next=/");
        assert_eq!(r.status, 401, "guess {i}");
    }
    // Over the limit, even the right token waits.
    let right = format!("token={API_TOKEN}&next=/");
    let r = orch.request("POST", "/login", &form, right.as_bytes());
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.header("retry-after").is_some_and(|s| s.parse::<u64>().is_ok_and(|n| (1..=60).contains(&n))));
    let r = orch.request("GET", "/api/runs", &[("Authorization", "Bearer guess")], b"");
    assert_eq!(r.status, 429);

    // Bearer guesses count the same way, on another server.
    let orch = Orch::start(ServeArgs { api_token: Some(API_TOKEN.into()), api_private: Some(true), ..base_args() });
    for _ in 0..orch::server::limit::MAX_FAILURES {
        assert_eq!(orch.request("GET", "/api/runs", &[("Authorization", "Bearer guess")], b"").status, 401);
    }
    let auth = bearer();
    assert_eq!(orch.request("GET", "/api/runs", &[("Authorization", &auth)], b"").status, 429);
}

#[test]
fn a_broken_secrets_file_is_reported_without_its_text() {
    require_docker!();
    let git = GitServer::start();
    let pipeline = "steps:\n  s:\n    image: busybox:latest\n    commands: [true]\n";
    let sha = git.on_branch("main", &[(".orch.yml", pipeline)], "s");
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let data = temp_dir("orch-attack-secrets-");
    let secrets = data.path().join("secrets.env");
    // Line 2 is half of a secret that lost its `NAME=`.
    std::fs::write(&secrets, "TOKEN=abcd1234\nhunter2-second-half-of-a-key\n").unwrap();
    let env = token_env(&gh, &git, &[("ORCH_SECRETS_FILE", secrets.display().to_string())]);
    let p = OrchProcess::spawn(data.path(), &env, &data.path().join("serve.log"));
    let id = p.deliver("push", &push_event("main", ZERO_SHA, &sha)).run_id();
    p.wait_run_done(id);
    let log = p.log_text();
    assert!(log.contains("line 2: expected NAME=value"), "{log}");
    assert!(!log.contains("hunter2"), "the server's log quotes the secrets file:\n{log}");
}
