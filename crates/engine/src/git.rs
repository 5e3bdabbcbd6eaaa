//! Facts about a local checkout, read with git2: branch, commit, changed files and the files
//! a workspace copy takes. Used by `orch plan` and `orch ci`; no network.

use std::path::{Path, PathBuf};

use git2::{DiffOptions, Repository, StatusOptions};

#[derive(Debug, thiserror::Error)]
#[error("git: {message}")]
pub struct GitError {
    pub message: String,
}

impl From<git2::Error> for GitError {
    fn from(e: git2::Error) -> Self {
        GitError { message: e.message().to_string() }
    }
}

/// What `orch ci` and `orch plan` learn from the checkout they run in.
#[derive(Debug, Clone, Default)]
pub struct Checkout {
    /// The work tree's root.
    pub root: PathBuf,
    pub branch: Option<String>,
    /// `HEAD`'s commit (empty in a repository with no commits).
    pub commit: String,
    /// Files that differ from the base (see [`changed_files`]), relative to the root.
    pub changed: Vec<String>,
    /// Whether the directory is a git work tree at all.
    pub is_git: bool,
    /// The default branch (`origin/HEAD`'s target, else `main` or `master` if present).
    pub default_branch: Option<String>,
}

/// Reads the checkout containing `dir`. A directory outside any repository is fine: it has
/// no branch, no commit, and its changed files are unknown.
pub fn inspect(dir: &Path) -> Result<Checkout, GitError> {
    let repo = match Repository::discover(dir) {
        Ok(r) => r,
        Err(_) => {
            return Ok(Checkout { root: dir.to_path_buf(), ..Checkout::default() });
        }
    };
    let root = repo
        .workdir()
        .ok_or_else(|| GitError { message: "the repository is bare: run orch in a work tree".into() })?
        .to_path_buf();
    let head = repo.head().ok();
    let branch = match &head {
        Some(h) => h.is_branch().then(|| h.shorthand().ok().map(str::to_string)).flatten(),
        // No commit yet: HEAD still names the branch the first commit will make.
        None => repo.find_reference("HEAD").ok().and_then(|r| {
            r.symbolic_target().ok().flatten().and_then(|t| t.strip_prefix("refs/heads/")).map(str::to_string)
        }),
    };
    let commit = head.as_ref().and_then(|h| h.target()).map(|o| o.to_string()).unwrap_or_default();
    let changed = changed_files(&repo, branch.as_deref())?;
    Ok(Checkout { root, branch, commit, changed, is_git: true, default_branch: default_branch(&repo) })
}

fn default_branch(repo: &Repository) -> Option<String> {
    if let Ok(r) = repo.find_reference("refs/remotes/origin/HEAD")
        && let Some(target) = r.symbolic_target().ok().flatten()
    {
        return target.strip_prefix("refs/remotes/origin/").map(str::to_string);
    }
    ["main", "master"].into_iter().find(|b| repo.find_reference(&format!("refs/heads/{b}")).is_ok()).map(str::to_string)
}

/// The files a push of this branch would change: against the merge base with the default
/// branch (`origin/HEAD`, `main` or `master`) on another branch, or against `HEAD^` on the
/// default branch itself; uncommitted changes and untracked files count too.
fn changed_files(repo: &Repository, branch: Option<&str>) -> Result<Vec<String>, GitError> {
    let Ok(head) = repo.head().and_then(|h| h.peel_to_commit()) else {
        return Ok(Vec::new());
    };
    let default = ["refs/remotes/origin/HEAD", "refs/heads/main", "refs/heads/master"]
        .iter()
        .find_map(|r| repo.find_reference(r).ok().and_then(|r| r.resolve().ok()).and_then(|r| r.target()));
    let on_default = matches!(branch, Some("main" | "master")) || default == Some(head.id());
    let base = match default {
        Some(d) if !on_default => repo.merge_base(d, head.id()).ok(),
        _ => head.parent_id(0).ok(),
    };
    let base_tree = match base {
        Some(b) => Some(repo.find_commit(b)?.tree()?),
        None => None,
    };
    let mut opts = DiffOptions::new();
    opts.include_untracked(true).recurse_untracked_dirs(true);
    let diff = repo.diff_tree_to_workdir_with_index(base_tree.as_ref(), Some(&mut opts))?;
    let mut files: Vec<String> = diff
        .deltas()
        .filter_map(|d| d.new_file().path().or_else(|| d.old_file().path()).map(|p| p.to_string_lossy().into_owned()))
        .collect();
    // orch's own run directory is not part of the change.
    files.retain(|f| !f.starts_with(".orch/"));
    files.sort();
    files.dedup();
    Ok(files)
}

/// The files a pull request changes, as the server finds them: from the merge base of
/// `base` and HEAD to HEAD's tree (committed changes; a rename counts both paths), sorted.
pub fn changes_since(repo: &Repository, base: git2::Oid) -> Result<Vec<String>, git2::Error> {
    let head = repo.head()?.peel_to_commit()?;
    let from = repo.merge_base(base, head.id()).unwrap_or(base);
    let from_tree = repo.find_commit(from)?.tree()?;
    let diff = repo.diff_tree_to_tree(Some(&from_tree), Some(&head.tree()?), None)?;
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

/// [`changes_since`] the local branch `base` (or `origin/base`) of the checkout at `dir`;
/// `None` when the checkout has no such branch.
pub fn changed_against_branch(dir: &Path, base: &str) -> Result<Option<Vec<String>>, GitError> {
    let repo = Repository::discover(dir)?;
    let target = [format!("refs/heads/{base}"), format!("refs/remotes/origin/{base}")]
        .iter()
        .find_map(|r| repo.find_reference(r).ok().and_then(|r| r.resolve().ok()).and_then(|r| r.target()));
    match target {
        Some(oid) => Ok(Some(changes_since(&repo, oid)?)),
        None => Ok(None),
    }
}

/// The files under `dir` that a copy into the workspace takes, relative to `dir`: tracked
/// files and untracked ones that are not ignored (what `git status` shows). Outside a
/// repository: every file, minus `.git` and orch's own `.orch` directory.
pub fn workspace_files(dir: &Path) -> Result<Vec<PathBuf>, GitError> {
    let dir = dir.canonicalize().map_err(|e| GitError { message: format!("cannot open {}: {e}", dir.display()) })?;
    let repo = Repository::discover(&dir).ok().filter(|r| r.workdir().is_some());
    let Some(repo) = repo else {
        let mut out = Vec::new();
        walk(&dir, Path::new(""), &mut out)
            .map_err(|e| GitError { message: format!("cannot list {}: {e}", dir.display()) })?;
        return Ok(out);
    };
    let workdir = repo.workdir().map(Path::to_path_buf).unwrap_or_default();
    let workdir = workdir.canonicalize().unwrap_or(workdir);
    let prefix = dir.strip_prefix(&workdir).map(Path::to_path_buf).unwrap_or_default();
    let mut files = Vec::new();
    let index = repo.index()?;
    for e in index.iter() {
        files.push(PathBuf::from(String::from_utf8_lossy(&e.path).into_owned()));
    }
    // The work tree against the index only (the index against HEAD is not needed here, and
    // reading HEAD's trees is most of a status of a large tree).
    let mut opts = StatusOptions::new();
    opts.show(git2::StatusShow::Workdir).include_untracked(true).recurse_untracked_dirs(true).include_ignored(false);
    let mut deleted = std::collections::HashSet::new();
    for s in repo.statuses(Some(&mut opts))?.iter() {
        let Ok(p) = s.path() else { continue };
        if s.status().is_wt_new() {
            files.push(PathBuf::from(p));
        } else if s.status().is_wt_deleted() {
            deleted.insert(PathBuf::from(p));
        }
    }
    // A file deleted in the work tree but still in the index is not copied.
    files.retain(|f| !deleted.contains(f));
    let mut files: Vec<PathBuf> =
        files.into_iter().filter_map(|f| f.strip_prefix(&prefix).ok().map(Path::to_path_buf)).collect();
    files.sort();
    files.dedup();
    // Nor is orch's own directory.
    files.retain(|f| !f.starts_with(".orch"));
    Ok(files)
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let name = entry.file_name();
        if rel.as_os_str().is_empty() && (name == ".git" || name == ".orch") {
            continue;
        }
        let path = rel.join(&name);
        if entry.file_type()?.is_dir() {
            walk(root, &path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workspace_is_the_index_and_untracked_files_but_not_deleted_or_ignored_ones() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let git = |args: &[&str]| {
            let ok = std::process::Command::new("git").args(args).current_dir(d).status().unwrap();
            assert!(ok.success(), "git {args:?}");
        };
        git(&["init", "-q"]);
        for (f, text) in [("kept.txt", "k"), ("gone.txt", "g"), (".gitignore", "*.log\n"), ("sub/staged.txt", "s")] {
            std::fs::create_dir_all(d.join(f).parent().unwrap()).unwrap();
            std::fs::write(d.join(f), text).unwrap();
        }
        git(&["add", "kept.txt", "gone.txt", ".gitignore"]);
        git(&["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x"]);
        git(&["add", "sub/staged.txt"]);
        std::fs::remove_file(d.join("gone.txt")).unwrap();
        std::fs::write(d.join("new.txt"), "n").unwrap();
        std::fs::write(d.join("build.log"), "ignored").unwrap();
        std::fs::create_dir_all(d.join(".orch/runs")).unwrap();
        std::fs::write(d.join(".orch/runs/x"), "orch's").unwrap();
        let files = workspace_files(d).unwrap();
        let names: Vec<&str> = files.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(names, [".gitignore", "kept.txt", "new.txt", "sub/staged.txt"]);
    }

    #[test]
    fn a_repository_without_commits_has_its_branch() {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("git").args(["init", "-q", "-b", "trunk"]).current_dir(dir.path()).status();
        assert!(ok.unwrap().success());
        let c = inspect(dir.path()).unwrap();
        assert_eq!((c.branch.as_deref(), c.commit.as_str(), c.is_git), (Some("trunk"), "", true));
    }
}
