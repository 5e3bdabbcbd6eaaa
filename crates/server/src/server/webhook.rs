//! GitHub webhook intake: verify, classify, store, answer. Nothing runs inline: a delivery
//! is durably stored (with the run it asks for) before the 2xx answer, and the worker picks
//! the run up from the database.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::db::NewRun;

/// GitHub caps payloads at 25 MB and does not deliver larger ones.
pub const MAX_BODY: usize = 25 * 1024 * 1024;

/// Whether `header` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under `secret`. The
/// comparison is constant-time (`verify_slice`).
pub fn verify_signature(secret: &[u8], header: Option<&str>, body: &[u8]) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.strip_prefix("sha256=")) else { return false };
    let Ok(sig) = hex::decode(hex_sig.trim()) else { return false };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else { return false };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// `sha256=<hex>` for `body`, as GitHub signs it (tests and the load generator use it).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// What a delivery asks orch to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Ping,
    Run(Box<NewRun>),
    /// A pull request was closed: stop its runs.
    CancelPullRequest {
        repo: String,
        pr: u64,
    },
    /// An issue was opened, closed, labelled...: an incident if it has the incident label.
    Issue(Box<Issue>),
    /// Re-run a check (GitHub's "Re-run" button): a new run of that commit.
    Ignore(String),
}

/// An issue as an `issues` delivery tells it.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub repo: String,
    pub number: u64,
    pub title: String,
    pub url: Option<String>,
    pub labels: Vec<String>,
    /// Unix seconds.
    pub opened_at: i64,
    pub closed_at: Option<i64>,
    /// The deployment its body names as the cause (a line `Deployment: N`).
    pub deployment: Option<i64>,
    pub deleted: bool,
}

/// The deployment an incident's body names: a line `Deployment: N` (or `deployment #N`).
pub fn named_deployment(body: &str) -> Option<i64> {
    body.lines().find_map(|l| {
        let l = l.trim();
        let (k, v) = l.split_once(':')?;
        if !k.trim().eq_ignore_ascii_case("deployment") {
            return None;
        }
        v.trim().trim_start_matches('#').parse().ok()
    })
}

fn s(v: &Value, path: &[&str]) -> Option<String> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str().map(str::to_string)
}

fn n(v: &Value, path: &[&str]) -> Option<u64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_u64()
}

const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

/// A time GitHub wrote as Unix seconds or RFC 3339 text.
fn time(v: &Value, path: &[&str]) -> Option<i64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_i64().or_else(|| cur.as_str().and_then(crate::clock::parse_rfc3339))
}

/// Classifies a delivery by its `X-GitHub-Event` and payload.
pub fn classify(event: &str, payload: &Value) -> Action {
    let repo = s(payload, &["repository", "full_name"]).unwrap_or_default();
    let clone_url = s(payload, &["repository", "clone_url"]).unwrap_or_default();
    let installation_id = n(payload, &["installation", "id"]);
    let default_branch = s(payload, &["repository", "default_branch"]);
    let action = s(payload, &["action"]).unwrap_or_default();
    match event {
        "ping" => Action::Ping,
        "issues" => {
            let Some(issue) = payload.get("issue") else {
                return Action::Ignore("an issues event without an issue".into());
            };
            let Some(number) = n(issue, &["number"]) else { return Action::Ignore("an issue without a number".into()) };
            let Some(opened_at) = time(issue, &["created_at"]) else {
                return Action::Ignore("an issue without its time".into());
            };
            let labels = issue
                .get("labels")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|l| s(l, &["name"]))
                .collect();
            Action::Issue(Box::new(Issue {
                repo,
                number,
                title: s(issue, &["title"]).unwrap_or_default(),
                url: s(issue, &["html_url"]),
                labels,
                opened_at,
                closed_at: time(issue, &["closed_at"]),
                deployment: s(issue, &["body"]).as_deref().and_then(named_deployment),
                deleted: action == "deleted",
            }))
        }
        "push" => {
            if payload.get("deleted").and_then(Value::as_bool) == Some(true) {
                return Action::Ignore("a branch or tag was deleted".into());
            }
            let Some(git_ref) = s(payload, &["ref"]) else { return Action::Ignore("push without a ref".into()) };
            let Some(sha) = s(payload, &["after"]).filter(|a| a != ZERO_SHA) else {
                return Action::Ignore("push without a commit".into());
            };
            let (ev, branch, tag) = if let Some(b) = git_ref.strip_prefix("refs/heads/") {
                ("push", Some(b.to_string()), None)
            } else if let Some(t) = git_ref.strip_prefix("refs/tags/") {
                ("tag", None, Some(t.to_string()))
            } else {
                return Action::Ignore(format!("push to `{git_ref}`"));
            };
            // GitHub lists at most 2048 commits; beyond that the changed files are unknown.
            let commits = payload.get("commits").and_then(Value::as_array);
            let changed = commits.filter(|c| !c.is_empty() && c.len() < 2048).map(|commits| {
                let mut files: Vec<String> = commits
                    .iter()
                    .flat_map(|c| ["added", "modified", "removed"].map(|k| c.get(k).and_then(Value::as_array)))
                    .flatten()
                    .flatten()
                    .filter_map(|f| f.as_str().map(str::to_string))
                    .collect();
                files.sort();
                files.dedup();
                files
            });
            let head = payload.get("head_commit");
            Action::Run(Box::new(NewRun {
                default_branch: default_branch.clone(),
                concurrency_key: Some(match &branch {
                    Some(b) => format!("{repo}#branch:{b}"),
                    None => format!("{repo}#tag:{}", tag.as_deref().unwrap_or("")),
                }),
                repo,
                clone_url,
                event: ev.into(),
                branch,
                base_branch: None,
                tag,
                sha,
                pr: None,
                fork: false,
                changed,
                installation_id,
                author: head.and_then(|h| s(h, &["author", "username"]).or_else(|| s(h, &["author", "name"]))),
                title: head.and_then(|h| s(h, &["message"])).map(|m| m.lines().next().unwrap_or("").to_string()),
                event_time: time(payload, &["repository", "pushed_at"]),
                schedule: None,
                environment: None,
                redeploy: false,
            }))
        }
        "pull_request" => {
            let Some(number) = n(payload, &["number"]).or_else(|| n(payload, &["pull_request", "number"])) else {
                return Action::Ignore("pull request without a number".into());
            };
            match action.as_str() {
                "opened" | "synchronize" | "reopened" | "ready_for_review" => {}
                "closed" => return Action::CancelPullRequest { repo, pr: number },
                other => return Action::Ignore(format!("pull_request action `{other}`")),
            }
            let pr = &payload["pull_request"];
            let head_repo = s(pr, &["head", "repo", "full_name"]);
            let base_repo = s(pr, &["base", "repo", "full_name"]).unwrap_or_else(|| repo.clone());
            let Some(sha) = s(pr, &["head", "sha"]) else {
                return Action::Ignore("pull request without a head".into());
            };
            Action::Run(Box::new(NewRun {
                default_branch: default_branch.clone(),
                concurrency_key: Some(format!("{repo}#pr:{number}")),
                clone_url: s(pr, &["base", "repo", "clone_url"]).unwrap_or(clone_url),
                repo,
                event: "pull_request".into(),
                branch: s(pr, &["head", "ref"]),
                base_branch: s(pr, &["base", "ref"]),
                tag: None,
                sha,
                pr: Some(number),
                // A fork's head repository differs (or is gone): its code gets no secrets.
                fork: head_repo.as_deref() != Some(base_repo.as_str()),
                changed: None,
                installation_id,
                author: s(pr, &["user", "login"]),
                title: s(pr, &["title"]),
                event_time: time(pr, &["updated_at"]),
                schedule: None,
                environment: None,
                redeploy: false,
            }))
        }
        "check_suite" | "check_run" => {
            // GitHub sends an App `check_suite requested` for every push it also delivers
            // as `push` (or `pull_request`): running both would build the commit twice.
            // Only the "Re-run" buttons (`rerequested`) start runs from here.
            if (event, action.as_str()) == ("check_suite", "requested") {
                return Action::Ignore(
                    "check_suite requested: the push or pull_request delivery of this commit starts its run".into(),
                );
            }
            let wanted = matches!((event, action.as_str()), ("check_suite" | "check_run", "rerequested"));
            if !wanted {
                return Action::Ignore(format!("{event} action `{action}`"));
            }
            let suite =
                if event == "check_suite" { &payload["check_suite"] } else { &payload["check_run"]["check_suite"] };
            let sha = s(suite, &["head_sha"]).or_else(|| s(&payload["check_run"], &["head_sha"]));
            let Some(sha) = sha else { return Action::Ignore(format!("{event} without a commit")) };
            let prs = suite.get("pull_requests").and_then(Value::as_array).filter(|p| !p.is_empty());
            let branch = s(suite, &["head_branch"]);
            match prs.and_then(|p| p.first()) {
                Some(pr) => {
                    let number = n(pr, &["number"]).unwrap_or(0);
                    Action::Run(Box::new(NewRun {
                        default_branch: default_branch.clone(),
                        concurrency_key: Some(format!("{repo}#pr:{number}")),
                        repo,
                        clone_url,
                        event: "pull_request".into(),
                        branch: s(pr, &["head", "ref"]).or(branch),
                        base_branch: s(pr, &["base", "ref"]),
                        tag: None,
                        sha,
                        pr: Some(number),
                        fork: false,
                        changed: None,
                        installation_id,
                        author: s(payload, &["sender", "login"]),
                        title: Some(format!("re-run requested from GitHub ({event})")),
                        // A person asked for this re-run now, whatever its commit's age.
                        event_time: None,
                        schedule: None,
                        environment: None,
                        redeploy: false,
                    }))
                }
                None => {
                    let Some(branch) = branch else {
                        return Action::Ignore(format!("{event} for a commit with no branch (a fork push)"));
                    };
                    Action::Run(Box::new(NewRun {
                        default_branch: default_branch.clone(),
                        concurrency_key: Some(format!("{repo}#branch:{branch}")),
                        repo,
                        clone_url,
                        event: "push".into(),
                        branch: Some(branch),
                        base_branch: None,
                        tag: None,
                        sha,
                        pr: None,
                        fork: false,
                        changed: None,
                        installation_id,
                        author: s(payload, &["sender", "login"]),
                        title: Some(format!("re-run requested from GitHub ({event})")),
                        // A person asked for this re-run now, whatever its commit's age.
                        event_time: None,
                        schedule: None,
                        environment: None,
                        redeploy: false,
                    }))
                }
            }
        }
        other => Action::Ignore(format!("event `{other}` is not one orch acts on")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/github/payloads");

    fn fixture(name: &str) -> Option<Value> {
        let text = std::fs::read_to_string(format!("{FIXTURES}/{name}")).ok()?;
        serde_json::from_str(&text).ok()
    }

    #[test]
    fn github_test_vector() {
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(verify_signature(b"It's a Secret to Everybody", Some(sig), b"Hello, World!"));
        assert_eq!(sign(b"It's a Secret to Everybody", b"Hello, World!"), sig);
        assert!(verify_signature(
            b"It's a Secret to Everybody",
            Some(&sig.to_uppercase().replace("SHA256", "sha256")),
            b"Hello, World!"
        ));
        assert!(!verify_signature(b"It's a Secret to Everybody", Some(sig), b"Hello, World?"));
        assert!(!verify_signature(b"other", Some(sig), b"Hello, World!"));
        assert!(!verify_signature(b"x", None, b""));
        assert!(!verify_signature(b"x", Some("sha1=abc"), b""));
        assert!(!verify_signature(b"x", Some("sha256=zz"), b""));
    }

    #[test]
    fn classifies_githubs_own_payloads() {
        // The fixtures live beside the repository; skip quietly where they are absent.
        let Some(p) = fixture("push.payload.json") else { return };
        assert!(matches!(classify("push", &p), Action::Ignore(_)), "a tag delete");
        let p = fixture("push.with-new-branch.payload.json").unwrap();
        let Action::Run(r) = classify("push", &p) else { panic!() };
        assert_eq!((r.event.as_str(), r.branch.as_deref()), ("push", Some("master")));
        assert_eq!(r.sha.len(), 40);
        let p = fixture("push.ghes-35.payload.json").unwrap();
        let Action::Run(r) = classify("push", &p) else { panic!() };
        assert_eq!((r.event.as_str(), r.tag.as_deref()), ("tag", Some("simple-tag")));
        let p = fixture("pull_request.opened.payload.json").unwrap();
        let Action::Run(r) = classify("pull_request", &p) else { panic!() };
        assert_eq!((r.pr, r.base_branch.as_deref(), r.branch.as_deref()), (Some(2), Some("master"), Some("changes")));
        assert!(!r.fork);
        let p = fixture("pull_request.closed.payload.json").unwrap();
        assert!(matches!(classify("pull_request", &p), Action::CancelPullRequest { pr: 2, .. }));
        let p = fixture("check_run.rerequested.payload.json").unwrap();
        assert!(matches!(classify("check_run", &p), Action::Run(_)));
        let p = fixture("check_run.completed.payload.json").unwrap();
        assert!(matches!(classify("check_run", &p), Action::Ignore(_)));
        let p = fixture("check_suite.rerequested.payload.json").unwrap();
        assert!(matches!(classify("check_suite", &p), Action::Run(_)));
        // Its push delivery runs the commit: no second run.
        let p = fixture("check_suite.requested.payload.json").unwrap();
        assert!(matches!(classify("check_suite", &p), Action::Ignore(_)));
        let p = fixture("ping.payload.json").unwrap();
        assert_eq!(classify("ping", &p), Action::Ping);
        assert!(matches!(classify("issues", &p), Action::Ignore(_)));
    }
}
