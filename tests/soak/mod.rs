//! The soak: signed deliveries at a steady rate against the `orch serve` binary with a fake
//! GitHub, while a chaos loop kill -9s and restarts the server at random moments, restarts
//! the Docker daemon, and has GitHub answer some writes with 502s and secondary rate
//! limits. At the end it counts, from the server's database, GitHub's side and Docker:
//!
//! - every delivery the server accepted is stored once (a delivery refused while the
//!   server was down is sent again, as GitHub's redelivery would);
//! - every delivery has exactly one run, and every run ended;
//! - every run has a final status at GitHub, matching its end, and no other status after
//!   it (the same final status sent twice is counted, not failed: a kill -9 between
//!   GitHub's answer and the outbox's commit sends it again, and GitHub keeps one state);
//! - nothing of the server's is left in Docker.
//!
//! Settings come from `SOAK_DELIVERIES`, `SOAK_RATE` (per second), `SOAK_KILLS`,
//! `SOAK_RESTARTS` (of the daemon), `SOAK_CONCURRENCY`, `SOAK_SLEEP` (the step's seconds)
//! and `SOAK_SEED`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Daemon;
use crate::serve_support::*;

pub struct Settings {
    pub deliveries: usize,
    pub rate: f64,
    pub kills: usize,
    pub daemon_restarts: usize,
    pub concurrency: usize,
}

impl Settings {
    /// `defaults`, with what the `SOAK_*` variables say instead.
    pub fn from_env(defaults: Settings) -> Settings {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> T {
            std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
        }
        Settings {
            deliveries: var("SOAK_DELIVERIES", defaults.deliveries),
            rate: var("SOAK_RATE", defaults.rate),
            kills: var("SOAK_KILLS", defaults.kills),
            daemon_restarts: var("SOAK_RESTARTS", defaults.daemon_restarts),
            concurrency: var("SOAK_CONCURRENCY", defaults.concurrency),
        }
    }
}

/// What the soak counted; `check` fails the test on any loss, double or leftover.
pub struct Report {
    pub lines: Vec<String>,
    pub problems: Vec<String>,
}

impl Report {
    pub fn check(&self) {
        for l in &self.lines {
            eprintln!("soak: {l}");
        }
        assert!(
            self.problems.is_empty(),
            "the soak found {} problem(s):\n{}",
            self.problems.len(),
            self.problems.join("\n")
        );
    }
}

/// xorshift64*: the chaos is random, and replayable with `SOAK_SEED`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The one-step pipeline of every delivery; its step sleeps `SOAK_SLEEP` seconds (1), so
/// that kills and restarts find steps running.
fn pipeline() -> String {
    let sleep: f64 = std::env::var("SOAK_SLEEP").ok().and_then(|v| v.parse().ok()).unwrap_or(1.0);
    format!(
        "defaults:\n  image: busybox:latest\n  timeout: 2m\nsteps:\n  work:\n    commands:\n      \
         - echo \"soak at $ORCH_COMMIT_SHORT on $ORCH_BRANCH\"\n      - sleep {sleep}\n"
    )
}
const BRANCHES: usize = 8;
const CONTEXT: &str = "orch (push)";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Chaos {
    Kill,
    DaemonRestart,
    GitHubFaults,
}

#[derive(Default)]
struct Sent {
    /// Delivery GUIDs the server took (202, or 200 "duplicate": stored by an attempt whose
    /// answer was lost).
    accepted: Vec<String>,
    /// Attempts refused because the server was down or stopping (sent again).
    refused: usize,
    /// Deliveries never taken (within two minutes of trying).
    given_up: Vec<String>,
    /// Answers no delivery should get.
    unexpected: Vec<String>,
}

pub fn run(s: Settings) -> Report {
    let seed = std::env::var("SOAK_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    }) | 1;
    let mut rng = Rng(seed);
    let mut daemon = Daemon::default();
    let git = GitServer::start();
    let pipeline = pipeline();
    let shas: Vec<String> = (0..BRANCHES)
        .map(|b| {
            let n = b.to_string();
            git.on_branch(&format!("soak-{b}"), &[(".orch.yml", &pipeline), ("n.txt", &n)], &format!("soak {b}"))
        })
        .collect();
    let gh = FakeGitHub::start(GhAuth::Token(TOKEN.into()));
    let (dir, data) = data_dir("orch-soak-");
    let env = token_env(
        &gh,
        &git,
        &[("ORCH_CONCURRENCY", s.concurrency.to_string()), ("ORCH_CANCEL_SUPERSEDED", "false".to_string())],
    );
    let log = dir.path().join("orch.log");
    let started = Instant::now();
    let mut server = OrchProcess::spawn(&data, &env, &log);
    let target: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(Some(server.addr)));

    // The deliveries, at a steady rate, on their own thread.
    let sent = Arc::new(Mutex::new(Sent::default()));
    let done = Arc::new(AtomicUsize::new(0));
    let sender = {
        let (target, sent, done, shas) = (target.clone(), sent.clone(), done.clone(), shas.clone());
        let (n, rate) = (s.deliveries, s.rate);
        std::thread::spawn(move || {
            let t0 = Instant::now();
            for i in 0..n {
                let due = t0 + Duration::from_secs_f64(i as f64 / rate);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let b = i % BRANCHES;
                let mut p = push_event(&format!("soak-{b}"), ZERO_SHA, &shas[b]);
                // One body is one delivery: each must differ.
                p["head_commit"]["message"] = json!(format!("soak delivery {i}"));
                p["commits"][0]["message"] = json!(format!("soak delivery {i}"));
                deliver(&target, &sent, &p);
                done.fetch_add(1, Ordering::SeqCst);
            }
        })
    };

    // The chaos, at random moments while the deliveries arrive.
    let span = s.deliveries as f64 / s.rate;
    let mut chaos: Vec<(f64, Chaos)> = Vec::new();
    for (n, kind) in [(s.kills, Chaos::Kill), (s.daemon_restarts, Chaos::DaemonRestart), (s.kills, Chaos::GitHubFaults)]
    {
        for _ in 0..n {
            chaos.push(((0.05 + 0.9 * rng.unit()) * span, kind));
        }
    }
    chaos.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut killed_pids = Vec::new();
    let (mut kills, mut restarts, mut faults) = (0, 0, 0);
    for (at, what) in &chaos {
        let due = started + Duration::from_secs_f64(*at);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        match what {
            Chaos::Kill => {
                *target.lock().unwrap() = None;
                killed_pids.push(server.pid());
                server.kill9();
                // Not dropped: its drop would remove the next server's Docker objects.
                std::mem::forget(server);
                std::thread::sleep(Duration::from_millis((rng.unit() * 2000.0) as u64));
                server = OrchProcess::spawn(&data, &env, &log);
                *target.lock().unwrap() = Some(server.addr);
                kills += 1;
            }
            Chaos::DaemonRestart => {
                daemon.restart();
                restarts += 1;
            }
            Chaos::GitHubFaults => {
                gh.fail_next(OP_STATUS, 2, 502);
                gh.rate_limit_next(OP_STATUS, 1, 1);
                faults += 1;
            }
        }
    }
    sender.join().expect("the sender thread");
    let sending = started.elapsed();

    // Every run ends and every update goes out, in bounded time.
    let limit = Duration::from_secs_f64((s.deliveries as f64 * 3.0 / s.concurrency as f64).max(300.0));
    let accepted = sent.lock().unwrap().accepted.len() as i64;
    let settled = wait_until(limit, || {
        let open = server.count("SELECT COUNT(*) FROM runs WHERE status IN ('queued', 'running')");
        let runs = server.count("SELECT COUNT(*) FROM runs");
        let owed = server.count("SELECT COUNT(*) FROM outbox");
        (open == 0 && runs >= accepted && owed == 0).then_some(())
    });
    // What Docker holds of the server's runs goes within the janitor's backoff.
    let clean = wait_until(Duration::from_secs(90), || server.leftovers().is_empty().then_some(()));
    let total = started.elapsed();

    let mut problems = Vec::new();
    if settled.is_none() {
        problems.push(format!("runs or updates still open after {limit:?}"));
    }
    if clean.is_none() {
        problems.push(format!("left in Docker: {:?}", server.leftovers()));
    }
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    problems.extend(sent.unexpected.iter().map(|u| format!("unexpected answer: {u}")));
    problems.extend(sent.given_up.iter().map(|g| format!("delivery {g} never taken")));

    // Deliveries: stored once each.
    let db = rusqlite::Connection::open_with_flags(data.join("orch.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("the server's database");
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    let stored: HashMap<String, i64> = {
        let mut q = db.prepare("SELECT id, COUNT(*) FROM deliveries GROUP BY id").unwrap();
        q.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
    };
    let lost_deliveries: Vec<&String> = sent.accepted.iter().filter(|g| !stored.contains_key(*g)).collect();
    let doubled_deliveries = stored.values().filter(|&&n| n > 1).count();
    problems.extend(lost_deliveries.iter().map(|g| format!("delivery {g} accepted but not stored")));
    if doubled_deliveries > 0 {
        problems.push(format!("{doubled_deliveries} deliveries stored twice"));
    }
    if stored.len() != sent.accepted.len() {
        problems.push(format!("{} deliveries stored, {} accepted", stored.len(), sent.accepted.len()));
    }

    // Runs: one per delivery, each ended.
    let runs: Vec<(i64, Option<String>, String, i64)> = {
        let mut q = db.prepare("SELECT id, delivery_id, status, attempts FROM runs ORDER BY id").unwrap();
        q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).unwrap().map(Result::unwrap).collect()
    };
    let mut per_delivery: HashMap<String, usize> = HashMap::new();
    for r in &runs {
        *per_delivery.entry(r.1.clone().unwrap_or_default()).or_default() += 1;
    }
    let runless = sent.accepted.iter().filter(|g| !per_delivery.contains_key(*g)).count();
    let doubled_runs = per_delivery.values().filter(|&&n| n > 1).count();
    let unfinished: Vec<i64> = runs.iter().filter(|r| !TERMINAL.contains(&r.2.as_str())).map(|r| r.0).collect();
    let again = runs.iter().filter(|r| r.3 > 1).count();
    let mut by_status: HashMap<&str, usize> = HashMap::new();
    for r in &runs {
        *by_status.entry(r.2.as_str()).or_default() += 1;
    }
    if runless > 0 {
        problems.push(format!("{runless} accepted deliveries without a run"));
    }
    if doubled_runs > 0 {
        problems.push(format!("{doubled_runs} deliveries with more than one run"));
    }
    if !unfinished.is_empty() {
        problems.push(format!("runs not ended: {unfinished:?}"));
    }

    // GitHub: a final status per run, matching its end, and nothing after it but the same.
    let mut statuses: HashMap<i64, Vec<Value>> = HashMap::new();
    for r in gh.requests().into_iter().filter(|r| r.op == OP_STATUS && r.status == 201) {
        if r.body["context"] != CONTEXT {
            continue;
        }
        let run = r.body["target_url"].as_str().and_then(|u| u.rsplit('/').next()?.parse::<i64>().ok());
        if let Some(run) = run {
            statuses.entry(run).or_default().push(r.body);
        }
    }
    let (mut without_final, mut after_final, mut wrong_final, mut repeated) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for (id, _, status, _) in &runs {
        let mine = statuses.get(id).map(Vec::as_slice).unwrap_or_default();
        let Some(first_final) = mine.iter().position(|s| s["state"] != "pending") else {
            without_final.push(*id);
            continue;
        };
        let fin = &mine[first_final];
        let want = match status.as_str() {
            "success" => "success",
            "failure" => "failure",
            _ => "error",
        };
        if fin["state"] != want {
            wrong_final.push(format!("run {id} ended {status}, its status says {}", fin["state"]));
        }
        for later in &mine[first_final + 1..] {
            if later["state"] == fin["state"] && later["description"] == fin["description"] {
                repeated += 1;
            } else {
                after_final.push(format!("run {id}: {} after {}", later["state"], fin["state"]));
            }
        }
    }
    if !without_final.is_empty() {
        problems.push(format!("runs without a final status: {without_final:?}"));
    }
    problems.extend(wrong_final.iter().cloned());
    problems.extend(after_final.iter().cloned());
    let violations = gh.violations();
    problems.extend(violations.iter().map(|v| format!("GitHub would refuse: {v}")));

    // Docker: nothing of this server's, nor of the servers killed.
    let mut left = server.leftovers();
    for pid in &killed_pids {
        left.extend(docker_objects_of_pid(*pid));
    }
    let count = |kind: &str| left.iter().filter(|o| o.starts_with(kind)).count();
    let left_line =
        format!("{} containers, {} networks, {} volumes left", count("container"), count("network"), count("volume"));
    if !left.is_empty() {
        problems.push(format!("left in Docker: {left:?}"));
    }
    server.terminate();

    let mut statuses_line: Vec<String> = by_status.iter().map(|(k, v)| format!("{v} {k}")).collect();
    statuses_line.sort();
    let lines = vec![
        format!(
            "{} deliveries at {}/s, concurrency {}, seed {seed}: {kills} kill -9s, {restarts} Docker daemon restarts, \
             {faults} GitHub fault bursts; sending took {:.0}s, all settled after {:.0}s",
            s.deliveries,
            s.rate,
            s.concurrency,
            sending.as_secs_f64(),
            total.as_secs_f64()
        ),
        format!(
            "deliveries: {} accepted ({} attempts refused while the server was down, sent again), {} stored, \
             {} lost, {doubled_deliveries} doubled",
            sent.accepted.len(),
            sent.refused,
            stored.len(),
            lost_deliveries.len() + sent.given_up.len()
        ),
        format!(
            "runs: {} ({}), {} not ended, {runless} missing, {doubled_runs} doubled; {again} ran again after a kill",
            runs.len(),
            statuses_line.join(", "),
            unfinished.len()
        ),
        format!(
            "GitHub: {} runs with their final status, {} without, {} wrong, {} statuses after a final; \
             {repeated} final statuses sent twice (same state)",
            runs.len() - without_final.len(),
            without_final.len(),
            wrong_final.len(),
            after_final.len()
        ),
        format!("Docker: {left_line}"),
    ];
    let mut lines = lines;
    if !problems.is_empty() || std::env::var("SOAK_KEEP").is_ok_and(|v| v == "1") {
        let kept = dir.keep();
        lines.push(format!("the server's data and log are kept in {}", kept.display()));
    }
    Report { lines, problems }
}

/// Posts one signed delivery until the server takes it, as GitHub's redelivery would.
fn deliver(target: &Mutex<Option<SocketAddr>>, sent: &Mutex<Sent>, payload: &Value) {
    let body = serde_json::to_vec(payload).unwrap();
    let sig = orch::server::webhook::sign(SECRET.as_bytes(), &body);
    let guid = new_guid();
    let headers = [
        ("Content-Type", "application/json"),
        ("X-GitHub-Event", "push"),
        ("X-GitHub-Delivery", guid.as_str()),
        ("X-Hub-Signature-256", sig.as_str()),
    ];
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(120) {
        let addr = *target.lock().unwrap();
        let answer = addr.map(|a| http(a, "POST", "/webhooks/github", &headers, &body));
        match answer {
            Some(Ok(r)) if r.status == 202 || (r.status == 200 && r.json()["status"] == "duplicate") => {
                sent.lock().unwrap().accepted.push(guid);
                return;
            }
            Some(Ok(r)) if r.status == 503 => {}
            Some(Ok(r)) => {
                sent.lock().unwrap().unexpected.push(format!("{guid}: {} {}", r.status, r.text()));
                return;
            }
            Some(Err(_)) | None => {}
        }
        sent.lock().unwrap().refused += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    sent.lock().unwrap().given_up.push(guid);
}

/// Polls `f` every 200 ms until it gives a value or `limit` passes.
fn wait_until<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if t0.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
