//! The workspace base: the work tree's files mirrored once into a directory of orch's own
//! (`orch ci`: `.orch/workspace/tree`), then kept in line file by file, so that each run's
//! workspace can be a copy-on-write layer over it instead of a fresh copy. Creating files
//! is what a copy costs (2,000 files: about a second of the kernel's on this machine's
//! ext4); comparing them costs two `stat`s each.
//!
//! A file is the same when its kind, size, modification time (to the nanosecond),
//! permission bits and owner are; a link when its target is. What the list no longer has
//! goes. Both sides resolve beneath their directories ([`Root`]).
//!
//! A base changes only under an exclusive lock (`.orch/workspace/lock`) and is used under a
//! shared one, held until the run's cleanup: a run never sees its lower layer change.
//! When another run holds the base and this tree differs from it, this run is not given
//! the base (the caller copies instead).

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

use crate::confined::{Kind, Root};

/// A base held for one run (shared lock until dropped).
#[derive(Debug)]
pub struct Lease {
    _lock: File,
    /// The mirrored tree: the lower layer of the run's workspace.
    pub tree: PathBuf,
}

/// Brings `base` in line with `files` of `root` and holds it for a run; `None` when it is
/// held by another run and differs from the tree.
pub fn lease(root: &Path, files: &[PathBuf], base: &Path) -> io::Result<Option<Lease>> {
    std::fs::create_dir_all(base.join("tree"))?;
    let lock = File::options().create(true).truncate(false).write(true).open(base.join("lock"))?;
    let src = Root::open(root)?;
    let dst = Root::open(base.join("tree"))?;
    let chown = rustix::process::geteuid().is_root();
    if rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive).is_ok() {
        sync(&src, &dst, files, chown, true)?;
        // Shared from now on: other runs of the same tree may use it too.
        rustix::fs::flock(&lock, FlockOperation::LockShared)?;
    } else {
        if rustix::fs::flock(&lock, FlockOperation::NonBlockingLockShared).is_err() {
            return Ok(None);
        }
        if !sync(&src, &dst, files, chown, false)? {
            return Ok(None);
        }
    }
    Ok(Some(Lease { _lock: lock, tree: base.join("tree") }))
}

/// Copies `files` of the tree at `root` into `dest` (an empty directory): a base made
/// once, for a run that cannot hold one.
pub fn copy(root: &Path, dest: &Root, files: &[PathBuf]) -> io::Result<()> {
    let chown = rustix::process::geteuid().is_root();
    sync(&Root::open(root)?, dest, files, chown, true).map(|_| ())
}

/// Makes `dst` hold exactly `files` of `src`; with `write` false only compares. Returns
/// whether `dst` holds them (after the changes, when writing).
fn sync(src: &Root, dst: &Root, files: &[PathBuf], chown: bool, write: bool) -> io::Result<bool> {
    let mut keep: HashSet<PathBuf> = HashSet::new();
    // Each directory is opened once on each side, and its files are looked at by name.
    let mut dirs = Dirs::default();
    for rel in files {
        let Some(st) = dirs.stat(src, dst, rel, Side::Src)? else { continue };
        let kind = kind_of(&st);
        if kind == Kind::Other {
            continue;
        }
        for a in rel.ancestors().skip(1).filter(|a| !a.as_os_str().is_empty()) {
            keep.insert(a.to_path_buf());
        }
        keep.insert(rel.clone());
        let have = dirs.stat(src, dst, rel, Side::Dst)?;
        let same = match (&have, kind) {
            (Some(d), Kind::File) => {
                kind_of(d) == Kind::File
                    && d.st_size == st.st_size
                    && d.st_mtime == st.st_mtime
                    && d.st_mtime_nsec == st.st_mtime_nsec
                    && d.st_mode & 0o777 == st.st_mode & 0o777
                    && (!chown || (d.st_uid == st.st_uid && d.st_gid == st.st_gid))
            }
            (Some(d), Kind::Symlink) => kind_of(d) == Kind::Symlink && dst.read_link(rel)? == src.read_link(rel)?,
            (Some(d), Kind::Dir) => kind_of(d) == Kind::Dir,
            _ => false,
        };
        if same {
            continue;
        }
        if !write {
            return Ok(false);
        }
        if have.is_some_and(|d| kind_of(&d) == Kind::Dir) && kind != Kind::Dir {
            dst.remove_all(rel)?;
        }
        match kind {
            Kind::File => copy_file(src, dst, rel, chown)?,
            Kind::Symlink => dst.symlink(&src.read_link(rel)?, rel)?,
            Kind::Dir => dst.create_dir_all(rel)?,
            Kind::Other => {}
        }
        // A directory may have been made or replaced: opened again when next needed.
        dirs.dst = None;
    }
    prune(dst, Path::new(""), &keep, write)
}

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Src,
    Dst,
}

/// The directory of the file looked at last, opened on each side (`None`: not there).
#[derive(Default)]
struct Dirs {
    at: Option<PathBuf>,
    src: Option<Option<Root>>,
    dst: Option<Option<Root>>,
}

impl Dirs {
    /// The status of `rel` on one side, through its directory opened once.
    fn stat(&mut self, src: &Root, dst: &Root, rel: &Path, side: Side) -> io::Result<Option<rustix::fs::Stat>> {
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return if side == Side::Src { src.stat(rel) } else { dst.stat(rel) };
        };
        if self.at.as_deref() != Some(parent) {
            self.at = Some(parent.to_path_buf());
            (self.src, self.dst) = (None, None);
        }
        let (root, slot) = match side {
            Side::Src => (src, &mut self.src),
            Side::Dst => (dst, &mut self.dst),
        };
        if slot.is_none() {
            *slot = Some(match root.sub(parent) {
                Ok(d) => Some(d),
                Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => None,
                // A link leaving the tree, and the like: judged per file, by the full path.
                Err(_) => return root.stat(rel),
            });
        }
        match slot {
            Some(Some(d)) => d.stat(Path::new(name)),
            _ => Ok(None),
        }
    }
}

/// Removes what is under `dir` of `dst` and not in `keep`; with `write` false only says
/// whether there is any.
fn prune(dst: &Root, dir: &Path, keep: &HashSet<PathBuf>, write: bool) -> io::Result<bool> {
    let mut clean = true;
    for (name, kind) in dst.entries(dir)? {
        let rel = dir.join(name);
        if !keep.contains(&rel) {
            if !write {
                return Ok(false);
            }
            dst.remove_all(&rel)?;
        } else if kind == Kind::Dir {
            clean &= prune(dst, &rel, keep, write)?;
            if !clean && !write {
                return Ok(false);
            }
        }
    }
    Ok(clean)
}

fn kind_of(st: &rustix::fs::Stat) -> Kind {
    match rustix::fs::FileType::from_raw_mode(st.st_mode) {
        rustix::fs::FileType::RegularFile => Kind::File,
        rustix::fs::FileType::Directory => Kind::Dir,
        rustix::fs::FileType::Symlink => Kind::Symlink,
        _ => Kind::Other,
    }
}

/// Copies the regular file `rel` of `src` to `dst`: contents (`copy_file_range`, a clone
/// where the file system shares blocks), permission bits, modification time and, when orch
/// may set it, the owner.
pub fn copy_file(src: &Root, dst: &Root, rel: &Path, chown: bool) -> io::Result<()> {
    let mut from = src.open_file(rel)?;
    let md = from.metadata()?;
    let mut to = dst.create_file(rel, md.mode())?;
    io::copy(&mut from, &mut to)?;
    to.set_modified(md.modified()?)?;
    if chown {
        rustix::fs::fchown(&to, Some(rustix::fs::Uid::from_raw(md.uid())), Some(rustix::fs::Gid::from_raw(md.gid())))?;
    }
    // Exact bits, whatever the umask.
    rustix::fs::fchmod(&to, rustix::fs::Mode::from_raw_mode(md.mode() & 0o777))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in walk(dir) {
            let rel = e.strip_prefix(dir).unwrap().display().to_string();
            let md = std::fs::symlink_metadata(&e).unwrap();
            let what = if md.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&e).unwrap().display())
            } else if md.is_dir() {
                "/".into()
            } else {
                std::fs::read_to_string(&e).unwrap()
            };
            out.push(format!("{rel} {what}"));
        }
        out.sort();
        out
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            out.push(p.clone());
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                out.extend(walk(&p));
            }
        }
        out
    }

    fn files(list: &[&str]) -> Vec<PathBuf> {
        list.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn the_base_follows_the_tree_and_only_the_listed_files() {
        let root = tempfile::tempdir().unwrap();
        let base = tempfile::tempdir().unwrap();
        let r = root.path();
        write(r, "a.txt", "one");
        write(r, "src/b.txt", "two");
        write(r, "ignored.txt", "not listed");
        std::os::unix::fs::symlink("a.txt", r.join("link")).unwrap();
        let list = files(&["a.txt", "src/b.txt", "link"]);
        let lease1 = lease(r, &list, base.path()).unwrap().expect("a free base");
        assert_eq!(listing(&lease1.tree), ["a.txt one", "link -> a.txt", "src /", "src/b.txt two"]);
        drop(lease1);

        // Changed, removed, replaced by another kind, a new directory.
        write(r, "a.txt", "ONE!");
        std::fs::remove_file(r.join("src/b.txt")).unwrap();
        std::fs::remove_file(r.join("link")).unwrap();
        write(r, "link", "now a file");
        write(r, "new/deep/c.txt", "three");
        let list = files(&["a.txt", "link", "new/deep/c.txt"]);
        let lease2 = lease(r, &list, base.path()).unwrap().expect("a free base");
        assert_eq!(
            listing(&lease2.tree),
            ["a.txt ONE!", "link now a file", "new /", "new/deep /", "new/deep/c.txt three"]
        );
    }

    #[test]
    fn a_held_base_is_shared_only_while_the_tree_matches_it() {
        let root = tempfile::tempdir().unwrap();
        let base = tempfile::tempdir().unwrap();
        let r = root.path();
        write(r, "a.txt", "one");
        let list = files(&["a.txt"]);
        let first = lease(r, &list, base.path()).unwrap().expect("a free base");
        // Same tree: a second run shares the base.
        let second = lease(r, &list, base.path()).unwrap();
        assert!(second.is_some(), "an unchanged tree shares the held base");
        // A changed tree must not change the base under the runs that hold it.
        write(r, "a.txt", "changed, and longer");
        assert!(lease(r, &list, base.path()).unwrap().is_none());
        assert_eq!(std::fs::read_to_string(first.tree.join("a.txt")).unwrap(), "one");
        drop((first, second));
        let third = lease(r, &list, base.path()).unwrap().expect("free again");
        assert_eq!(std::fs::read_to_string(third.tree.join("a.txt")).unwrap(), "changed, and longer");
    }

    #[test]
    fn a_link_in_the_tree_cannot_make_the_base_read_or_write_outside() {
        let root = tempfile::tempdir().unwrap();
        let base = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        write(outside.path(), "secret.txt", "host file");
        let r = root.path();
        std::os::unix::fs::symlink(outside.path(), r.join("out")).unwrap();
        let lease1 = lease(r, &files(&["out"]), base.path()).unwrap().unwrap();
        assert_eq!(listing(&lease1.tree), [format!("out -> {}", outside.path().display())]);
        drop(lease1);
        // A path through the link is no file beneath the tree: refused, nothing read.
        assert!(lease(r, &files(&["out/secret.txt"]), base.path()).is_err());
        let out = std::fs::symlink_metadata(base.path().join("tree/out")).unwrap();
        assert!(out.file_type().is_symlink(), "the base's link is still the link, nothing written through it");
        assert_eq!(std::fs::read_to_string(outside.path().join("secret.txt")).unwrap(), "host file");
    }
}
