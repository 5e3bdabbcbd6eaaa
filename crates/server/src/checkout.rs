//! Fetching the commit a run builds, with git2, into a fresh directory: the pushed ref (or
//! `refs/pull/N/head`) shallowly, the SHA checked against the delivery's, a detached
//! checkout. Tokens go through the credentials callback, never into a URL or a log, and
//! only to the origin they belong to ([`CloneAccess`]).

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
    /// Without user info: credentials go through [`Auth`], never into a URL, so no error
    /// text or log line can carry them.
    pub url: String,
    /// The ref to fetch: `refs/heads/main`, `refs/tags/v1`, `refs/pull/7/head`.
    pub git_ref: String,
    pub sha: String,
    /// Commits of history to fetch; 0 for all.
    pub depth: i32,
    /// What to answer when the server asks for credentials.
    pub auth: Option<Auth>,
    /// Bytes the fetch may download, and the checked-out files may hold; 0: no limit.
    pub max_size: u64,
}

/// Credentials for one origin. The callback hands them out only to a request for that
/// origin (a redirect elsewhere gets nothing), and only once.
#[derive(Clone)]
pub struct Auth {
    pub user: String,
    pub password: String,
    /// `scheme://host[:port]` they belong to.
    pub origin: String,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Auth {{ user: {:?}, origin: {:?}, password: *** }}", self.user, self.origin)
    }
}

/// `scheme://host[:port]` of an http(s) URL; `None` for other schemes and non-URLs.
pub fn origin(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    matches!(u.scheme(), "https" | "http").then(|| u.origin().ascii_serialization())
}

/// `url` without its user info (`https://user:pass@host/x` → `https://host/x`): what orch
/// prints, logs and stores.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// Which clone URLs a server accepts and where its credentials may go: the configured
/// GitHub's token (or an App's installation token) only to that GitHub's own origin, over
/// https (http only where the configured GitHub is itself http, as in tests); a
/// `--clone-rewrite` target only its own credentials (user info in the rule's `TO`), or
/// none.
#[derive(Debug, Clone)]
pub struct CloneAccess {
    github: String,
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    from: String,
    to: String,
    auth: Option<Auth>,
}

/// Where a run fetches from, and what it may send there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The URL to fetch (rewritten, without user info).
    pub url: String,
    pub creds: Creds,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Creds {
    None,
    /// The GitHub token of the server (or the App installation's), as `x-access-token`.
    GithubToken {
        origin: String,
    },
    /// The rewrite rule's own user and password.
    Own {
        user: String,
        password: String,
        origin: String,
    },
}

impl CloneAccess {
    /// `github_api`: the API URL (`https://api.github.com`, `https://HOST/api/v3`); its web
    /// origin is where clone URLs point (`api.` dropped from the host). `rules`: `FROM=TO`
    /// prefixes.
    pub fn new(github_api: &str, rules: &[(String, String)]) -> Result<CloneAccess, String> {
        let mut u = url::Url::parse(github_api).map_err(|e| format!("the GitHub URL `{github_api}`: {e}"))?;
        if !matches!(u.scheme(), "https" | "http") {
            return Err(format!("the GitHub URL `{github_api}` is not an http(s) URL"));
        }
        if let Some(web) = u.host_str().and_then(|h| h.strip_prefix("api.")).map(str::to_string) {
            u.set_host(Some(&web)).map_err(|e| format!("the GitHub URL `{github_api}`: {e}"))?;
        }
        let github = u.origin().ascii_serialization();
        let mut out = Vec::new();
        for (from, to) in rules {
            let auth = match url::Url::parse(to) {
                Ok(t) if !t.username().is_empty() => {
                    let decode = |s: &str| {
                        url::form_urlencoded::parse(format!("x={s}").as_bytes())
                            .next()
                            .map(|(_, v)| v.into_owned())
                            .unwrap_or_default()
                    };
                    Some(Auth {
                        user: decode(t.username()),
                        password: decode(t.password().unwrap_or("")),
                        origin: origin(to).ok_or_else(|| {
                            format!("clone rewrite `{}`: credentials need an http(s) URL", redact(to))
                        })?,
                    })
                }
                _ => None,
            };
            out.push(Rule { from: from.clone(), to: redact(to), auth });
        }
        Ok(CloneAccess { github, rules: out })
    }

    /// The configured GitHub's web origin.
    pub fn github_origin(&self) -> &str {
        &self.github
    }

    fn rule(&self, url: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| url.starts_with(r.from.as_str()))
    }

    /// A webhook's clone URL must belong to the configured GitHub, or be one a rewrite rule
    /// sends elsewhere: a signed delivery names a repository, not any server.
    pub fn check_webhook(&self, url: &str) -> Result<(), String> {
        if self.rule(url).is_some() || origin(url).as_deref() == Some(self.github.as_str()) {
            return Ok(());
        }
        Err(format!(
            "the clone URL `{}` is not on the configured GitHub ({}) and no clone rewrite takes it",
            redact(url),
            self.github
        ))
    }

    /// The URL to fetch `url` from (rewritten, without user info) and what may go with it.
    pub fn resolve(&self, url: &str) -> Source {
        let (fetched, own) = match self.rule(url) {
            Some(r) => (format!("{}{}", r.to, &url[r.from.len()..]), r.auth.clone()),
            None => (url.to_string(), None),
        };
        let fetched = redact(&fetched);
        let creds = match own {
            Some(a) if origin(&fetched).as_deref() == Some(a.origin.as_str()) => {
                Creds::Own { user: a.user, password: a.password, origin: a.origin }
            }
            Some(_) => Creds::None,
            None if origin(&fetched).as_deref() == Some(self.github.as_str()) => {
                Creds::GithubToken { origin: self.github.clone() }
            }
            None => Creds::None,
        };
        Source { url: fetched, creds }
    }
}

impl Source {
    /// The credentials to fetch with, given the GitHub token the run may use.
    pub fn auth(&self, github_token: Option<String>) -> Option<Auth> {
        match &self.creds {
            Creds::None => None,
            Creds::GithubToken { origin } => {
                github_token.map(|t| Auth { user: "x-access-token".into(), password: t, origin: origin.clone() })
            }
            Creds::Own { user, password, origin } => {
                Some(Auth { user: user.clone(), password: password.clone(), origin: origin.clone() })
            }
        }
    }
}

fn callbacks(auth: Option<&Auth>) -> RemoteCallbacks<'_> {
    let mut cb = RemoteCallbacks::new();
    let mut tries = 0;
    cb.credentials(move |url, _user, _allowed| {
        // libgit2 asks again after every rejection: a second ask means the token is wrong.
        tries += 1;
        match auth {
            // A redirect may have taken the request to another server: it gets nothing.
            Some(a) if origin(url).as_deref() != Some(a.origin.as_str()) => {
                Err(git2::Error::from_str(&format!("{} asks for credentials; orch sends none there", redact(url))))
            }
            Some(a) if tries == 1 => Cred::userpass_plaintext(&a.user, &a.password),
            Some(_) => Err(git2::Error::from_str("the credentials were rejected")),
            None => Err(git2::Error::from_str(&format!(
                "{} asks for credentials, and orch sends none there (only the configured GitHub gets its token)",
                redact(url)
            ))),
        }
    });
    cb.certificate_check(|_, _| Ok(CertificateCheckStatus::CertificatePassthrough));
    cb
}

/// The commit `branch` points to at `url` (as `git ls-remote`), with `auth` if the server
/// asks for credentials.
pub fn branch_head(url: &str, branch: &str, auth: Option<&Auth>) -> Result<String, String> {
    let url = &redact(url);
    let mut remote = git2::Remote::create_detached(url.as_str()).map_err(|e| e.message().to_string())?;
    let conn = remote
        .connect_auth(git2::Direction::Fetch, Some(callbacks(auth)), None)
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
/// With a size limit, a fetch that outgrows it is stopped, and `too_big` says so.
fn fetch_refspec(
    repo: &Repository,
    spec: &FetchSpec,
    refspec: &str,
    too_big: &std::cell::Cell<bool>,
) -> Result<(), git2::Error> {
    let mut remote = repo.remote_anonymous(&spec.url)?;
    let mut fo = FetchOptions::new();
    let mut cb = callbacks(spec.auth.as_ref());
    if spec.max_size > 0 {
        cb.transfer_progress(|p| {
            let over = p.received_bytes() as u64 > spec.max_size;
            too_big.set(over);
            !over
        });
    }
    fo.remote_callbacks(cb);
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
    let too_big = std::cell::Cell::new(false);
    let limit =
        || format!("the repository is larger than the limit of {} (max-repo-size)", crate::fmt::size(spec.max_size));
    let run_fetch = |refspec: &str| {
        fetch_refspec(&repo, spec, refspec, &too_big).map_err(|e| if too_big.get() { err(limit()) } else { g(e) })
    };
    run_fetch(&format!("+{}:refs/orch/target", spec.git_ref))?;
    let got = repo.refname_to_id("refs/orch/target").map_err(g)?;
    let got = repo.find_object(got, None).and_then(|o| o.peel_to_commit()).map(|c| c.id()).map_err(g)?;
    if got != want {
        // The ref moved on since the delivery (a newer push): ask for the commit itself.
        run_fetch(&format!("+{}:refs/orch/sha", spec.sha)).map_err(|e| {
            if too_big.get() {
                return e;
            }
            err(format!(
                "{} now points at {got}, and the server would not send {} itself ({})",
                spec.git_ref, spec.sha, e.message
            ))
        })?;
    }
    let commit = repo.find_commit(want).map_err(|e| err(format!("commit {} is missing: {}", spec.sha, e.message())))?;
    // A small download can hold large files (they compress well): the files are counted too.
    if spec.max_size > 0 {
        let files = tree_size(&repo, &commit.tree().map_err(g)?, spec.max_size).map_err(g)?;
        if files > spec.max_size {
            return Err(err(format!(
                "the files of {} are larger than the limit of {} (max-repo-size)",
                spec.sha,
                crate::fmt::size(spec.max_size)
            )));
        }
    }
    repo.set_head_detached(commit.id()).map_err(g)?;
    repo.checkout_head(Some(CheckoutBuilder::new().force())).map_err(g)?;
    Ok(())
}

/// The bytes of the files in `tree`, counted until they pass `stop`.
fn tree_size(repo: &Repository, tree: &git2::Tree, stop: u64) -> Result<u64, git2::Error> {
    let odb = repo.odb()?;
    let mut total = 0u64;
    let mut failed = None;
    tree.walk(git2::TreeWalkMode::PreOrder, |_, entry| {
        if entry.kind() != Some(git2::ObjectType::Blob) {
            return git2::TreeWalkResult::Ok;
        }
        match odb.read_header(entry.id()) {
            Ok((len, _)) => total += len as u64,
            Err(e) => failed = Some(e),
        }
        if failed.is_some() || total > stop { git2::TreeWalkResult::Abort } else { git2::TreeWalkResult::Ok }
    })
    .or_else(|e| if e.code() == git2::ErrorCode::User && failed.is_none() { Ok(()) } else { Err(e) })?;
    match failed {
        Some(e) => Err(e),
        None => Ok(total),
    }
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
    let too_big = std::cell::Cell::new(false);
    fetch_refspec(&repo, spec, &format!("+refs/heads/{base_branch}:refs/orch/base"), &too_big).map_err(|e| {
        if too_big.get() {
            err(format!("larger than the limit of {} (max-repo-size)", crate::fmt::size(spec.max_size)))
        } else {
            g(e)
        }
    })?;
    // A ref the server does not have fetches nothing, without an error.
    let base = repo.refname_to_id("refs/orch/base").map_err(|_| err("the server has no such branch".into()))?;
    crate::git::changes_since(&repo, base).map_err(g)
}

/// Checks out the tip of `branch` (fetched from `spec`'s remote into the repository at
/// `dir`, which [`fetch`] made) into `target`, leaving `dir`'s own checkout and index alone:
/// the default branch's files, whose `.orch.yml` a server trusts for the rules of its
/// environments. `Ok(false)`: the server has no such branch.
pub fn checkout_branch_into(dir: &Path, spec: &FetchSpec, branch: &str, target: &Path) -> Result<bool, CheckoutError> {
    let err = |message: String| CheckoutError { what: format!("refs/heads/{branch} from {}", spec.url), message };
    let g = |e: git2::Error| err(e.message().to_string());
    let repo = Repository::open(dir).map_err(g)?;
    if let Ok(mut stale) = repo.find_reference("refs/orch/default") {
        stale.delete().map_err(g)?;
    }
    let too_big = std::cell::Cell::new(false);
    let limit = || format!("larger than the limit of {} (max-repo-size)", crate::fmt::size(spec.max_size));
    fetch_refspec(&repo, spec, &format!("+refs/heads/{branch}:refs/orch/default"), &too_big)
        .map_err(|e| if too_big.get() { err(limit()) } else { g(e) })?;
    // A ref the server does not have fetches nothing, without an error.
    let Ok(tip) = repo.refname_to_id("refs/orch/default") else { return Ok(false) };
    let tree = repo.find_commit(tip).and_then(|c| c.tree()).map_err(g)?;
    if spec.max_size > 0 && tree_size(&repo, &tree, spec.max_size).map_err(g)? > spec.max_size {
        return Err(err(limit()));
    }
    std::fs::create_dir_all(target).map_err(|e| err(e.to_string()))?;
    let mut co = CheckoutBuilder::new();
    co.force().target_dir(target).update_index(false);
    repo.checkout_tree(tree.as_object(), Some(&mut co)).map_err(g)?;
    Ok(true)
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
        let spec = FetchSpec {
            url: url.clone(),
            git_ref: "refs/heads/main".into(),
            sha: second,
            depth: 1,
            auth: None,
            max_size: 0,
        };
        fetch(&dest.path().join("w"), &spec).unwrap();
        assert_eq!(std::fs::read_to_string(dest.path().join("w/a.txt")).unwrap(), "two");

        // The branch moved on: the older commit is fetched by its SHA.
        let spec = FetchSpec { url, git_ref: "refs/heads/main".into(), sha: first, depth: 1, auth: None, max_size: 0 };
        fetch(&dest.path().join("w2"), &spec).unwrap();
        assert_eq!(std::fs::read_to_string(dest.path().join("w2/a.txt")).unwrap(), "one");

        let bad = FetchSpec {
            url: "file:///nonexistent/repo".into(),
            git_ref: "refs/heads/main".into(),
            sha: "a".repeat(40),
            depth: 1,
            auth: None,
            max_size: 0,
        };
        let e = fetch(&dest.path().join("w3"), &bad).unwrap_err();
        assert!(e.to_string().contains("cannot fetch refs/heads/main"), "{e}");
    }

    /// 3 MiB of zeros compress to a few KiB: the download is small, the files are not.
    #[test]
    fn files_larger_than_the_limit_are_not_checked_out() {
        let src = tempfile::tempdir().unwrap();
        git(src.path(), &["init", "-q", "-b", "main"]);
        std::fs::write(src.path().join("zeros.bin"), vec![0u8; 3 << 20]).unwrap();
        std::fs::write(src.path().join("small.txt"), "small").unwrap();
        git(src.path(), &["add", "."]);
        git(src.path(), &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "big"]);
        let sha = git(src.path(), &["rev-parse", "HEAD"]);
        let url = format!("file://{}", src.path().display());
        let spec = |max_size| FetchSpec {
            url: url.clone(),
            git_ref: "refs/heads/main".into(),
            sha: sha.clone(),
            depth: 1,
            auth: None,
            max_size,
        };
        let dest = tempfile::tempdir().unwrap();
        let e = fetch(&dest.path().join("small"), &spec(1 << 20)).unwrap_err();
        assert_eq!(e.message, format!("the files of {sha} are larger than the limit of 1.0 MiB (max-repo-size)"));
        assert!(!dest.path().join("small/zeros.bin").exists());
        fetch(&dest.path().join("big"), &spec(4 << 20)).unwrap();
        assert_eq!(std::fs::metadata(dest.path().join("big/zeros.bin")).unwrap().len(), 3 << 20);
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
            auth: None,
            max_size: 0,
        };
        let dest = tempfile::tempdir().unwrap();
        fetch(dest.path(), &spec).unwrap();
        // The merge base, not the base's tip: main's own change to src/lib.rs is not the PR's.
        assert_eq!(pull_request_changes(dest.path(), &spec, "main").unwrap(), ["README.md", "docs.md"]);
        assert!(pull_request_changes(dest.path(), &spec, "nope").is_err());
    }

    fn rules(r: &[(&str, &str)]) -> Vec<(String, String)> {
        r.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn the_token_goes_only_to_the_configured_github() {
        let a = CloneAccess::new("https://api.github.com", &[]).unwrap();
        assert_eq!(a.github_origin(), "https://github.com");
        let gh = Creds::GithubToken { origin: "https://github.com".into() };
        assert_eq!(a.resolve("https://github.com/o/r.git").creds, gh);
        for elsewhere in [
            "http://github.com/o/r.git",
            "https://github.com.evil.example/o/r.git",
            "https://evil.example/github.com/o/r.git",
            "http://127.0.0.1:9999/x.git",
            "https://github.com:8443/o/r.git",
            "git://github.com/o/r.git",
            "file:///srv/r.git",
            "/srv/r.git",
        ] {
            assert_eq!(a.resolve(elsewhere).creds, Creds::None, "{elsewhere}");
        }
        // GitHub Enterprise: the API is under /api/v3 of the same host.
        let e = CloneAccess::new("https://ghe.example/api/v3", &[]).unwrap();
        assert_eq!(e.github_origin(), "https://ghe.example");
        // A test's fake GitHub over http gets the token over http, on its own port only.
        let t = CloneAccess::new("http://127.0.0.1:4000", &[]).unwrap();
        assert!(matches!(t.resolve("http://127.0.0.1:4000/o/r.git").creds, Creds::GithubToken { .. }));
        assert_eq!(t.resolve("http://127.0.0.1:4001/o/r.git").creds, Creds::None);
    }

    #[test]
    fn a_rewrite_target_gets_its_own_credentials_or_none() {
        let a = CloneAccess::new(
            "https://api.github.com",
            &rules(&[
                ("https://github.com/acme/", "https://bot:p%40ss@mirror.example/acme/"),
                ("https://github.com/", "git://127.0.0.1:9418/"),
            ]),
        )
        .unwrap();
        let s = a.resolve("https://github.com/acme/app.git");
        assert_eq!(s.url, "https://mirror.example/acme/app.git", "no user info in the URL");
        assert_eq!(
            s.creds,
            Creds::Own { user: "bot".into(), password: "p@ss".into(), origin: "https://mirror.example".into() }
        );
        assert_eq!(s.auth(Some("ghs_token".into())).map(|a| a.password), Some("p@ss".into()));
        let s = a.resolve("https://github.com/other/app.git");
        assert_eq!((s.url.as_str(), &s.creds), ("git://127.0.0.1:9418/other/app.git", &Creds::None));
        assert!(s.auth(Some("ghs_token".into())).is_none(), "the GitHub token never goes to a mirror");
    }

    #[test]
    fn webhook_clone_urls_belong_to_github_or_a_rewrite() {
        let a = CloneAccess::new("https://api.github.com", &rules(&[("https://mirror.local/", "git://m/")])).unwrap();
        assert!(a.check_webhook("https://github.com/o/r.git").is_ok());
        assert!(a.check_webhook("https://mirror.local/o/r.git").is_ok());
        for bad in ["http://127.0.0.1:1/x.git", "file:///etc", "/srv/repo", "https://evil.example/o/r.git"] {
            let e = a.check_webhook(bad).unwrap_err();
            assert!(e.contains("not on the configured GitHub"), "{e}");
        }
        let e = a.check_webhook("https://u:secret@evil.example/x.git").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn user_info_is_redacted() {
        assert_eq!(redact("https://u:p@host/x.git"), "https://host/x.git");
        assert_eq!(redact("https://host/x.git"), "https://host/x.git");
        assert_eq!(redact("not a url"), "not a url");
        assert_eq!(origin("https://github.com/o/r"), Some("https://github.com".into()));
        assert_eq!(origin("git://github.com/o/r"), None);
    }
}
