//! A directory that paths cannot leave: every file orch reads or writes on the host on a
//! pipeline's behalf (artifacts, the workspace copy, `${hash:...}`, artifact downloads from
//! the API) goes through a [`Root`].
//!
//! The kernel resolves each path beneath the root's file descriptor: `openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`. Symbolic links inside the root are followed
//! as long as they stay inside; `..` past the root, absolute links and `/proc` magic links
//! fail with `EXDEV`/`ELOOP`, whatever earlier writes left on disk. Then the operation
//! acts on the final name relative to its parent's descriptor (`mkdirat`, `symlinkat`,
//! `linkat`, `unlinkat`), so no path is resolved twice. Where the kernel has no `openat2`
//! (before Linux 5.6), each component is opened with `O_NOFOLLOW` instead: no link is
//! followed at all, which is stricter.
//!
//! Names are also checked before they reach the kernel: a relative path of plain
//! components, no `..`, no root, no NUL. That gives clear errors; the kernel is what
//! guarantees the rule.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

/// Set once the kernel answered `ENOSYS` to `openat2`.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// A directory on the host, held open; paths given to its methods are relative to it and
/// cannot resolve outside it.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// What is at a path, without following a final symbolic link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// A FIFO, socket or device: never read or written through a `Root`.
    Other,
}

impl Kind {
    fn of(t: FileType) -> Kind {
        match t {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            _ => Kind::Other,
        }
    }
}

/// A file found by [`Root::walk`]: its path relative to the root, what it is, its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub path: PathBuf,
    pub kind: Kind,
    pub size: u64,
}

fn err(kind: io::ErrorKind, msg: String) -> io::Error {
    io::Error::new(kind, msg)
}

/// The components of a relative path, each a plain name. `.` components are dropped.
pub fn plain_components(rel: &Path) -> io::Result<Vec<&OsStr>> {
    let mut out = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) if !n.as_bytes().contains(&0) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(err(io::ErrorKind::InvalidInput, format!("`{}` climbs out with `..`", rel.display())));
            }
            _ => {
                return Err(err(io::ErrorKind::InvalidInput, format!("`{}` is not a relative path", rel.display())));
            }
        }
    }
    Ok(out)
}

fn from_rustix(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// Opens `rel` (plain components, possibly none: the directory itself) beneath `dir`.
fn open_beneath(dir: BorrowedFd<'_>, parts: &[&OsStr], flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
    let flags = flags | OFlags::CLOEXEC;
    if parts.is_empty() {
        return rustix::fs::openat(dir, c".", flags, mode).map_err(from_rustix);
    }
    if !NO_OPENAT2.load(Ordering::Relaxed) && !forced_fallback() {
        let joined: PathBuf = parts.iter().collect();
        match rustix::fs::openat2(dir, &joined, flags, mode, ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS) {
            Err(rustix::io::Errno::NOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
            // The kernel may ask to try again when a rename raced the lookup.
            Err(rustix::io::Errno::AGAIN) => {
                return rustix::fs::openat2(
                    dir,
                    &joined,
                    flags,
                    mode,
                    ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
                )
                .map_err(from_rustix);
            }
            r => return r.map_err(from_rustix),
        }
    }
    // No openat2: one component at a time, following no link at all.
    let mut cur: Option<OwnedFd> = None;
    let last = parts.len() - 1;
    for (i, p) in parts.iter().enumerate() {
        let at = cur.as_ref().map_or(dir, |f| f.as_fd());
        let next = if i == last {
            rustix::fs::openat(at, *p, flags | OFlags::NOFOLLOW, mode)
        } else {
            rustix::fs::openat(
                at,
                *p,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
        };
        cur = Some(next.map_err(from_rustix)?);
    }
    cur.ok_or_else(|| err(io::ErrorKind::InvalidInput, "empty path".into()))
}

#[cfg(test)]
thread_local! {
    static FORCE_FALLBACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(test)]
fn forced_fallback() -> bool {
    FORCE_FALLBACK.with(std::cell::Cell::get)
}

#[cfg(not(test))]
fn forced_fallback() -> bool {
    false
}

/// Makes a kernel error say which path it was about.
fn about(rel: &Path, e: io::Error) -> io::Error {
    let why = match e.raw_os_error() {
        Some(code) if code == rustix::io::Errno::XDEV.raw_os_error() => "leads out of its directory".to_string(),
        Some(code) if code == rustix::io::Errno::LOOP.raw_os_error() => {
            "goes through a symbolic link that is not followed here".to_string()
        }
        _ => e.to_string(),
    };
    io::Error::new(e.kind(), format!("`{}`: {why}", rel.display()))
}

impl Root {
    /// Opens an existing directory.
    pub fn open(path: impl Into<PathBuf>) -> io::Result<Root> {
        let path = path.into();
        let fd = rustix::fs::open(&path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| io::Error::new(from_rustix(e).kind(), format!("{}: {e}", path.display())))?;
        Ok(Root { fd, path })
    }

    /// Creates the directory (and its parents: this path is orch's own choice, not a
    /// pipeline's) and opens it.
    pub fn create(path: impl Into<PathBuf>) -> io::Result<Root> {
        let path = path.into();
        std::fs::create_dir_all(&path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Root::open(path)
    }

    /// The directory's path on the host (for messages; never used to reach a file).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parent directory of `rel` (opened beneath the root) and `rel`'s last name.
    fn parent_of<'a>(&self, rel: &'a Path) -> io::Result<(OwnedFd, &'a OsStr)> {
        let parts = plain_components(rel)?;
        let Some((name, dirs)) = parts.split_last() else {
            return Err(err(io::ErrorKind::InvalidInput, "an empty path names no file".into()));
        };
        let parent = open_beneath(self.fd.as_fd(), dirs, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
            .map_err(|e| about(rel, e))?;
        Ok((parent, name))
    }

    /// A subdirectory, as a root of its own.
    pub fn sub(&self, rel: impl AsRef<Path>) -> io::Result<Root> {
        let rel = rel.as_ref();
        let parts = plain_components(rel)?;
        let fd = open_beneath(self.fd.as_fd(), &parts, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
            .map_err(|e| about(rel, e))?;
        Ok(Root { fd, path: self.path.join(rel) })
    }

    /// Opens a regular file for reading. A FIFO or device is refused without opening it
    /// for real (`O_NONBLOCK`), so it cannot block or read a device.
    pub fn open_file(&self, rel: impl AsRef<Path>) -> io::Result<File> {
        let rel = rel.as_ref();
        let parts = plain_components(rel)?;
        let fd =
            open_beneath(self.fd.as_fd(), &parts, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY, Mode::empty())
                .map_err(|e| about(rel, e))?;
        let st = rustix::fs::fstat(&fd).map_err(from_rustix)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(err(io::ErrorKind::InvalidInput, format!("`{}` is not a regular file", rel.display())));
        }
        // Back to blocking reads (regular files ignore the flag, but tidily).
        let fl = rustix::fs::fcntl_getfl(&fd).map_err(from_rustix)?;
        rustix::fs::fcntl_setfl(&fd, fl - OFlags::NONBLOCK).map_err(from_rustix)?;
        Ok(File::from(fd))
    }

    /// What is at `rel`, without following a final symbolic link; `None` if nothing is.
    pub fn kind(&self, rel: impl AsRef<Path>) -> io::Result<Option<(Kind, u64)>> {
        let rel = rel.as_ref();
        if plain_components(rel)?.is_empty() {
            return Ok(Some((Kind::Dir, 0)));
        }
        let (parent, name) = match self.parent_of(rel) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some((Kind::of(FileType::from_raw_mode(st.st_mode)), st.st_size as u64))),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(about(rel, from_rustix(e))),
        }
    }

    /// The status of what is at `rel`, without following a final symbolic link; `None` if
    /// nothing is.
    pub fn stat(&self, rel: impl AsRef<Path>) -> io::Result<Option<rustix::fs::Stat>> {
        let rel = rel.as_ref();
        let parts = plain_components(rel)?;
        let found = match parts.as_slice() {
            // A plain name in the root itself: no parent to open (what a caller walking a
            // directory asks, many times).
            [name] => rustix::fs::statat(&self.fd, *name, AtFlags::SYMLINK_NOFOLLOW),
            _ => {
                let (parent, name) = match self.parent_of(rel) {
                    Ok(p) => p,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e),
                };
                rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW)
            }
        };
        match found {
            Ok(st) => Ok(Some(st)),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(about(rel, from_rustix(e))),
        }
    }

    /// The target of the symbolic link at `rel`.
    pub fn read_link(&self, rel: impl AsRef<Path>) -> io::Result<PathBuf> {
        let rel = rel.as_ref();
        let (parent, name) = self.parent_of(rel)?;
        let target = rustix::fs::readlinkat(&parent, name, Vec::new()).map_err(|e| about(rel, from_rustix(e)))?;
        Ok(PathBuf::from(OsString::from(std::ffi::OsStr::from_bytes(target.as_bytes()))))
    }

    /// Creates `rel` and the directories above it (existing ones are fine).
    pub fn create_dir_all(&self, rel: impl AsRef<Path>) -> io::Result<()> {
        let rel = rel.as_ref();
        let parts = plain_components(rel)?;
        let mut cur = open_beneath(self.fd.as_fd(), &[], OFlags::PATH | OFlags::DIRECTORY, Mode::empty())?;
        for (i, p) in parts.iter().enumerate() {
            match rustix::fs::mkdirat(&cur, *p, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(about(rel, from_rustix(e))),
            }
            // Reopened from the root each time: a link made meanwhile is judged by the kernel.
            cur = open_beneath(self.fd.as_fd(), &parts[..=i], OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
                .map_err(|e| about(rel, e))?;
        }
        Ok(())
    }

    /// Removes what is at the final name of `rel` unless it is a directory.
    fn clear(parent: &OwnedFd, name: &OsStr, rel: &Path) -> io::Result<()> {
        match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(rustix::io::Errno::ISDIR) => {
                Err(err(io::ErrorKind::AlreadyExists, format!("`{}` is a directory", rel.display())))
            }
            Err(e) => Err(about(rel, from_rustix(e))),
        }
    }

    /// Creates (or replaces) the regular file `rel` with `mode` (permission bits only),
    /// creating the directories above it.
    pub fn create_file(&self, rel: impl AsRef<Path>, mode: u32) -> io::Result<File> {
        let rel = rel.as_ref();
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.create_dir_all(parent)?;
        }
        let (parent, name) = self.parent_of(rel)?;
        Self::clear(&parent, name, rel)?;
        // The parent is an O_PATH descriptor: open the name relative to it, never following.
        let fd = rustix::fs::openat(
            &parent,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode & 0o777),
        )
        .map_err(|e| about(rel, from_rustix(e)))?;
        Ok(File::from(fd))
    }

    /// Creates (or replaces) the symbolic link `rel` pointing at `target`. The target is
    /// not checked here: following it later through a `Root` stays inside.
    pub fn symlink(&self, target: &Path, rel: impl AsRef<Path>) -> io::Result<()> {
        let rel = rel.as_ref();
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.create_dir_all(parent)?;
        }
        let (parent, name) = self.parent_of(rel)?;
        Self::clear(&parent, name, rel)?;
        rustix::fs::symlinkat(target, &parent, name).map_err(|e| about(rel, from_rustix(e)))
    }

    /// Renames `from` to `to` within the root (replacing a file or empty directory there).
    pub fn rename(&self, from: impl AsRef<Path>, to: impl AsRef<Path>) -> io::Result<()> {
        let (from, to) = (from.as_ref(), to.as_ref());
        let (from_dir, from_name) = self.parent_of(from)?;
        let (to_dir, to_name) = self.parent_of(to)?;
        rustix::fs::renameat(&from_dir, from_name, &to_dir, to_name).map_err(|e| about(to, from_rustix(e)))
    }

    /// Removes `rel` and everything under it; links are removed, never followed. Nothing
    /// there is fine.
    pub fn remove_all(&self, rel: impl AsRef<Path>) -> io::Result<()> {
        let rel = rel.as_ref();
        let (parent, name) = match self.parent_of(rel) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        remove_at(&parent, name).map_err(|e| about(rel, e))
    }

    /// The names in the directory `rel` (the root itself for `""`) and what each is.
    pub fn entries(&self, rel: impl AsRef<Path>) -> io::Result<Vec<(OsString, Kind)>> {
        let rel = rel.as_ref();
        let parts = plain_components(rel)?;
        let fd = open_beneath(self.fd.as_fd(), &parts, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
            .map_err(|e| about(rel, e))?;
        list(&fd)
    }

    /// Every file, link and other non-directory under `rel` (recursively, depth first, in
    /// name order), without following links. Stops with an error past `max` entries.
    pub fn walk(&self, rel: impl AsRef<Path>, max: usize) -> io::Result<Vec<Found>> {
        let rel = rel.as_ref();
        let mut out = Vec::new();
        let start = self.sub(rel)?;
        walk_into(&start.fd, PathBuf::new(), &mut out, max, 0)?;
        Ok(out)
    }
}

impl Root {
    /// The symbolic links under the root that resolve outside it (or through a `/proc`
    /// magic link), as the kernel judges them. A dangling link is not one of them. Without
    /// `openat2` nothing here follows links, so none is reported.
    pub fn links_leaving(&self, max: usize) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        if NO_OPENAT2.load(Ordering::Relaxed) || forced_fallback() {
            return Ok(out);
        }
        for f in self.walk("", max)?.into_iter().filter(|f| f.kind == Kind::Symlink) {
            let parts = plain_components(&f.path)?;
            match open_beneath(self.fd.as_fd(), &parts, OFlags::PATH, Mode::empty()) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(_) => out.push(f.path),
            }
        }
        Ok(out)
    }
}

/// Directory levels [`Root::walk`] and [`Root::remove_all`] go down at most.
const MAX_DEPTH: usize = 256;

fn list(fd: &OwnedFd) -> io::Result<Vec<(OsString, Kind)>> {
    let mut out = Vec::new();
    let dir = rustix::fs::Dir::read_from(fd).map_err(from_rustix)?;
    for entry in dir {
        let entry = entry.map_err(from_rustix)?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = OsStr::from_bytes(name).to_os_string();
        let kind = match entry.file_type() {
            FileType::Unknown => match rustix::fs::statat(fd, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => Kind::of(FileType::from_raw_mode(st.st_mode)),
                Err(_) => continue,
            },
            t => Kind::of(t),
        };
        out.push((name, kind));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn walk_into(fd: &OwnedFd, prefix: PathBuf, out: &mut Vec<Found>, max: usize, depth: usize) -> io::Result<()> {
    if depth > MAX_DEPTH {
        return Err(err(io::ErrorKind::InvalidInput, format!("`{}`: too deeply nested", prefix.display())));
    }
    for (name, kind) in list(fd)? {
        let path = prefix.join(&name);
        if kind == Kind::Dir {
            let sub = rustix::fs::openat(
                fd,
                name.as_os_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(from_rustix)?;
            walk_into(&sub, path, out, max, depth + 1)?;
            continue;
        }
        if out.len() >= max {
            return Err(err(io::ErrorKind::InvalidInput, format!("more than {max} files")));
        }
        let size = match kind {
            Kind::File => rustix::fs::statat(fd, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                .map(|st| st.st_size as u64)
                .unwrap_or(0),
            _ => 0,
        };
        out.push(Found { path, kind, size });
    }
    Ok(())
}

fn remove_at(parent: &OwnedFd, name: &OsStr) -> io::Result<()> {
    remove_at_depth(parent, name, 0)
}

fn remove_at_depth(parent: &OwnedFd, name: &OsStr, depth: usize) -> io::Result<()> {
    match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(rustix::io::Errno::ISDIR) | Err(rustix::io::Errno::PERM) => {}
        Err(e) => return Err(from_rustix(e)),
    }
    if depth > MAX_DEPTH {
        return Err(err(io::ErrorKind::InvalidInput, "too deeply nested to remove".into()));
    }
    let fd = match rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(from_rustix(e)),
    };
    for (child, _) in list(&fd)? {
        remove_at_depth(&fd, &child, depth + 1)?;
    }
    match rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(from_rustix(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Runs `f` once with openat2 and once with the component-by-component fallback.
    fn both(f: impl Fn(bool)) {
        f(false);
        FORCE_FALLBACK.with(|c| c.set(true));
        f(true);
        FORCE_FALLBACK.with(|c| c.set(false));
    }

    #[test]
    fn writes_stay_inside_whatever_links_say() {
        both(|fallback| {
            let outside = tempfile::tempdir().unwrap();
            let d = tempfile::tempdir().unwrap();
            let root = Root::open(d.path()).unwrap();
            // An absolute link, a relative one climbing out, and a chain of `..` links.
            root.symlink(outside.path(), "abs").unwrap();
            root.symlink(Path::new("../.."), "up").unwrap();
            root.create_dir_all("a").unwrap();
            root.symlink(Path::new(".."), "a/s").unwrap();
            root.symlink(Path::new("s/.."), "a/t1").unwrap();
            for i in 2..=20 {
                root.symlink(Path::new(&format!("t{}/..", i - 1)), format!("a/t{i}")).unwrap();
            }
            for target in ["abs/pwned", "up/pwned", "a/t20/pwned", "a/t20/etc/pwned", "abs/x/y"] {
                let r = root.create_file(target, 0o644);
                assert!(r.is_err(), "{target} was written (fallback: {fallback})");
                let r = root.create_dir_all(target);
                assert!(r.is_err(), "{target} was created as a directory (fallback: {fallback})");
            }
            assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "something was written outside");
            assert!(!d.path().parent().unwrap().join("pwned").exists());
            // Names are plain, relative paths.
            for bad in ["../x", "/etc/x", "a/../../x", ""] {
                assert!(root.create_file(bad, 0o644).is_err(), "{bad}");
            }
            if !fallback {
                let mut leaving = root.links_leaving(100).unwrap();
                leaving.sort();
                // `a/s` is the root itself: inside. Every `t` leads one level above it.
                let want: Vec<PathBuf> = ["a/t1", "a/t20", "abs", "up"].iter().map(PathBuf::from).collect();
                assert!(want.iter().all(|w| leaving.contains(w)), "{leaving:?}");
                assert!(!leaving.contains(&PathBuf::from("a/s")), "{leaving:?}");
            }
        });
    }

    #[test]
    fn links_inside_are_followed_only_with_openat2() {
        both(|fallback| {
            let d = tempfile::tempdir().unwrap();
            let root = Root::open(d.path()).unwrap();
            root.create_dir_all("real/sub").unwrap();
            root.symlink(Path::new("real"), "alias").unwrap();
            let r = root.create_file("alias/sub/f", 0o600);
            assert_eq!(r.is_ok(), !fallback, "{r:?}");
            if !fallback {
                assert!(d.path().join("real/sub/f").is_file());
            }
        });
    }

    #[test]
    fn reads_are_regular_files_inside() {
        both(|_| {
            let outside = tempfile::tempdir().unwrap();
            std::fs::write(outside.path().join("secret"), "s3cret").unwrap();
            let d = tempfile::tempdir().unwrap();
            let root = Root::open(d.path()).unwrap();
            root.create_file("ok.txt", 0o644).unwrap().write_all(b"hello").unwrap();
            let mut s = String::new();
            root.open_file("ok.txt").unwrap().read_to_string(&mut s).unwrap();
            assert_eq!(s, "hello");
            std::os::unix::fs::symlink(outside.path().join("secret"), d.path().join("leak")).unwrap();
            std::os::unix::fs::symlink("/proc/self/root/etc/hostname", d.path().join("magic")).unwrap();
            std::os::unix::fs::symlink("/dev/zero", d.path().join("zero")).unwrap();
            for bad in ["leak", "magic", "zero", "../x"] {
                assert!(root.open_file(bad).is_err(), "{bad} was read");
            }
            // A FIFO is refused without blocking.
            rustix::fs::mknodat(root.fd.as_fd(), "fifo", FileType::Fifo, Mode::from_raw_mode(0o644), 0).unwrap();
            assert!(root.open_file("fifo").is_err());
            assert!(root.open_file(".").is_err());
        });
    }

    #[test]
    fn walk_and_remove_do_not_follow_links() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), "x").unwrap();
        let d = tempfile::tempdir().unwrap();
        let root = Root::open(d.path()).unwrap();
        root.create_file("b/c.txt", 0o644).unwrap().write_all(b"abc").unwrap();
        root.create_file("a.txt", 0o644).unwrap();
        root.symlink(outside.path(), "b/out").unwrap();
        let found = root.walk("", 100).unwrap();
        let names: Vec<_> = found.iter().map(|f| (f.path.display().to_string(), f.kind, f.size)).collect();
        assert_eq!(
            names,
            [
                ("a.txt".to_string(), Kind::File, 0),
                ("b/c.txt".to_string(), Kind::File, 3),
                ("b/out".to_string(), Kind::Symlink, 0)
            ]
        );
        assert!(root.walk("", 2).is_err(), "the limit holds");
        root.remove_all("b").unwrap();
        assert!(outside.path().join("keep").exists(), "remove followed a link");
        assert_eq!(root.kind("b").unwrap(), None);
        assert_eq!(root.kind("a.txt").unwrap(), Some((Kind::File, 0)));
    }
}
