//! Fetching the commit a run builds, with git2, into a fresh directory: the pushed ref (or
//! `refs/pull/N/head`) shallowly, the SHA checked against the delivery's, a detached
//! checkout. Tokens go through the credentials callback, never into a URL or a log.

use std::path::Path;

use git2::{CertificateCheckStatus, Cred, FetchOptions, Oid, RemoteCallbacks, Repository, build::CheckoutBuilder};

#[derive(Debug, thiserror::Error)]
#[error("cannot fetch {what}: {message}")]
pub struct CheckoutError {
    pub what: String,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct FetchSpec {
    pub url: String,
    /// The ref to fetch: `refs/heads/main`, `refs/tags/v1`, `refs/pull/7/head`.
    pub git_ref: String,
    pub sha: String,
    /// Commits of history to fetch; 0 for all.
    pub depth: i32,
    /// Sent as the password for user `x-access-token` when the server asks.
    pub token: Option<String>,
}

fn callbacks(token: Option<&str>) -> RemoteCallbacks<'_> {
    let mut cb = RemoteCallbacks::new();
    let mut tries = 0;
    cb.credentials(move |_url, _user, _allowed| {
        // libgit2 asks again after every rejection: a second ask means the token is wrong.
        tries += 1;
        match token {
            Some(t) if tries == 1 => Cred::userpass_plaintext("x-access-token", t),
            Some(_) => Err(git2::Error::from_str("the token was rejected")),
            None => Err(git2::Error::from_str("the server asks for credentials and orch has no token")),
        }
    });
    cb.certificate_check(|_, _| Ok(CertificateCheckStatus::CertificatePassthrough));
    cb
}

/// The commit `branch` points to at `url` (as `git ls-remote`), with the token if the
/// server asks for credentials.
pub fn branch_head(url: &str, branch: &str, token: Option<&str>) -> Result<String, String> {
    let mut remote = git2::Remote::create_detached(url).map_err(|e| e.message().to_string())?;
    let conn = remote
        .connect_auth(git2::Direction::Fetch, Some(callbacks(token)), None)
        .map_err(|e| format!("cannot reach {url}: {}", e.message()))?;
    let want = format!("refs/heads/{branch}");
    let heads = conn.list().map_err(|e| e.message().to_string())?;
    heads
        .iter()
        .find(|h| h.name() == want)
        .map(|h| h.oid().to_string())
        .ok_or_else(|| format!("no branch `{branch}` at {url}"))
}

/// Fetches `refspec` from `spec`'s remote into `repo`, as shallowly as `spec` says, with its
/// token for the credentials callback and no tags.
fn fetch_refspec(repo: &Repository, spec: &FetchSpec, refspec: &str) -> Result<(), git2::Error> {
    let mut remote = repo.remote_anonymous(&spec.url)?;
    let mut fo = FetchOptions::new();
    fo.remote_callbacks(callbacks(spec.token.as_deref()));
    // libgit2's local transport cannot fetch shallowly.
    let local = spec.url.starts_with("file://") || spec.url.starts_with('/');
    if !local && spec.depth > 0 {
        fo.depth(spec.depth);
    }
    fo.download_tags(git2::AutotagOption::None);
    remote.fetch(&[refspec], Some(&mut fo), None)
}

/// Fetches `spec` into `dir` (created empty) and checks out its SHA, detached.
pub fn fetch(dir: &Path, spec: &FetchSpec) -> Result<(), CheckoutError> {
    let err = |message: String| CheckoutError { what: format!("{} from {}", spec.git_ref, spec.url), message };
    let g = |e: git2::Error| err(e.message().to_string());
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let repo = Repository::init(dir).map_err(g)?;
    let want = Oid::from_str(&spec.sha).map_err(|_| err(format!("`{}` is not a commit SHA", spec.sha)))?;
    let run_fetch = |refspec: &str| fetch_refspec(&repo, spec, refspec);
    run_fetch(&format!("+{}:refs/orch/target", spec.git_ref)).map_err(g)?;
    let got = repo.refname_to_id("refs/orch/target").map_err(g)?;
    let got = repo.find_object(got, None).and_then(|o| o.peel_to_commit()).map(|c| c.id()).map_err(g)?;
    if got != want {
        // The ref moved on since the delivery (a newer push): ask for the commit itself.
        run_fetch(&format!("+{}:refs/orch/sha", spec.sha)).map_err(|e| {
            err(format!(
                "{} now points at {got}, and the server would not send {} itself ({})",
                spec.git_ref,
                spec.sha,
                e.message()
            ))
        })?;
    }
    let commit = repo.find_commit(want).map_err(|e| err(format!("commit {} is missing: {}", spec.sha, e.message())))?;
    repo.set_head_detached(commit.id()).map_err(g)?;
    repo.checkout_head(Some(CheckoutBuilder::new().force())).map_err(g)?;
    Ok(())
}

/// The files a pull request changes, for `paths` conditions: its head (checked out in `dir`
/// by [`fetch`]) against the merge base with `base_branch`, fetched from the same remote.
/// When the merge base lies beyond the fetched history (a shallow fetch), against the base
/// branch's tip instead: a superset (the base's own changes count too), so a `paths`
/// condition holds at least whenever it should.
pub fn pull_request_changes(dir: &Path, spec: &FetchSpec, base_branch: &str) -> Result<Vec<String>, CheckoutError> {
    let err = |message: String| CheckoutError { what: format!("refs/heads/{base_branch} from {}", spec.url), message };
    let g = |e: git2::Error| err(e.message().to_string());
    let repo = Repository::open(dir).map_err(g)?;
    if let Ok(mut stale) = repo.find_reference("refs/orch/base") {
        stale.delete().map_err(g)?;
    }
    fetch_refspec(&repo, spec, &format!("+refs/heads/{base_branch}:refs/orch/base")).map_err(g)?;
    // A ref the server does not have fetches nothing, without an error.
    let base = repo.refname_to_id("refs/orch/base").map_err(|_| err("the server has no such branch".into()))?;
    let head = repo.head().and_then(|h| h.peel_to_commit()).map_err(g)?;
    let from = repo.merge_base(base, head.id()).unwrap_or(base);
    let from_tree = repo.find_commit(from).and_then(|c| c.tree()).map_err(g)?;
    let diff = repo.diff_tree_to_tree(Some(&from_tree), Some(&head.tree().map_err(g)?), None).map_err(g)?;
    let mut files: Vec<String> = diff
        .deltas()
        .flat_map(|d| [d.old_file().path(), d.new_file().path()])
        .flatten()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

/// Applies a clone-URL rewrite rule `FROM=TO` (prefix replacement), e.g. to use a mirror.
pub fn rewrite_url(url: &str, rules: &[(String, String)]) -> String {
    for (from, to) in rules {
        if let Some(rest) = url.strip_prefix(from.as_str()) {
            return format!("{to}{rest}");
        }
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git").current_dir(dir).args(args).output().expect("git runs");
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    #[test]
    fn fetches_a_branch_and_checks_out_the_sha() {
        let src = tempfile::tempdir().unwrap();
        git(src.path(), &["init", "-q", "-b", "main"]);
        std::fs::write(src.path().join("a.txt"), "one").unwrap();
        git(src.path(), &["add", "."]);
        git(src.path(), &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one"]);
        let first = git(src.path(), &["rev-parse", "HEAD"]);
        std::fs::write(src.path().join("a.txt"), "two").unwrap();
        git(src.path(), &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "two"]);
        let second = git(src.path(), &["rev-parse", "HEAD"]);
        let url = format!("file://{}", src.path().display());

        let dest = tempfile::tempdir().unwrap();
        let spec =
            FetchSpec { url: url.clone(), git_ref: "refs/heads/main".into(), sha: second, depth: 1, token: None };
        fetch(&dest.path().join("w"), &spec).unwrap();
        assert_eq!(std::fs::read_to_string(dest.path().join("w/a.txt")).unwrap(), "two");

        // The branch moved on: the older commit is fetched by its SHA.
        let spec = FetchSpec { url, git_ref: "refs/heads/main".into(), sha: first, depth: 1, token: None };
        fetch(&dest.path().join("w2"), &spec).unwrap();
        assert_eq!(std::fs::read_to_string(dest.path().join("w2/a.txt")).unwrap(), "one");

        let bad = FetchSpec {
            url: "file:///nonexistent/repo".into(),
            git_ref: "refs/heads/main".into(),
            sha: "a".repeat(40),
            depth: 1,
            token: None,
        };
        let e = fetch(&dest.path().join("w3"), &bad).unwrap_err();
        assert!(e.to_string().contains("cannot fetch refs/heads/main"), "{e}");
    }

    #[test]
    fn a_pull_request_changes_what_it_changed_since_the_merge_base() {
        let src = tempfile::tempdir().unwrap();
        let commit = |msg: &str| {
            git(src.path(), &["add", "-A"]);
            git(src.path(), &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", msg]);
            git(src.path(), &["rev-parse", "HEAD"])
        };
        git(src.path(), &["init", "-q", "-b", "main"]);
        std::fs::create_dir_all(src.path().join("src")).unwrap();
        std::fs::write(src.path().join("src/lib.rs"), "one").unwrap();
        std::fs::write(src.path().join("README.md"), "one").unwrap();
        commit("base");
        git(src.path(), &["checkout", "-q", "-b", "topic"]);
        std::fs::write(src.path().join("README.md"), "two").unwrap();
        std::fs::write(src.path().join("docs.md"), "new").unwrap();
        let head = commit("docs");
        // The base branch moves on after the pull request was opened.
        git(src.path(), &["checkout", "-q", "main"]);
        std::fs::write(src.path().join("src/lib.rs"), "two").unwrap();
        commit("main moves");
        git(src.path(), &["update-ref", "refs/pull/1/head", &head]);

        let spec = FetchSpec {
            url: format!("file://{}", src.path().display()),
            git_ref: "refs/pull/1/head".into(),
            sha: head,
            depth: 1,
            token: None,
        };
        let dest = tempfile::tempdir().unwrap();
        fetch(dest.path(), &spec).unwrap();
        // The merge base, not the base's tip: main's own change to src/lib.rs is not the PR's.
        assert_eq!(pull_request_changes(dest.path(), &spec, "main").unwrap(), ["README.md", "docs.md"]);
        assert!(pull_request_changes(dest.path(), &spec, "nope").is_err());
    }

    #[test]
    fn rewrites() {
        let rules = vec![("https://github.com/".to_string(), "git://127.0.0.1:9418/".to_string())];
        assert_eq!(rewrite_url("https://github.com/o/r.git", &rules), "git://127.0.0.1:9418/o/r.git");
        assert_eq!(rewrite_url("https://other/x", &rules), "https://other/x");
    }
}
