//! A source tree as a tar stream and back, every read and write beneath its directory
//! (a [`Root`]): the Docker backend copies a workspace in with [`write`], the server sends
//! an agent its checkout with it, and the agent unpacks it with [`unpack`].

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::confined::{Kind, Root};

/// Writes `files` (paths relative to `root`) to `w` as a tar stream. Every file is read
/// beneath `root`: a path through a link cannot make orch copy a host file (links are
/// copied as links). Devices, FIFOs and sockets are left out, as git cannot hold them.
pub fn write<W: Write>(w: W, root: &Path, files: &[PathBuf]) -> std::io::Result<W> {
    let mut b = tar::Builder::new(w);
    let tree = Root::open(root)?;
    for f in files {
        append(&mut b, &tree, f)?;
    }
    b.into_inner()
}

/// A tar stream of the files of `root` that `list` names (called off the async threads,
/// as the reading is), in chunks for an HTTP body or Docker's upload; the handle says how
/// the writing ended (an error also ends the stream with it).
pub fn stream(
    root: PathBuf,
    list: impl FnOnce(&Path) -> std::io::Result<Vec<PathBuf>> + Send + 'static,
) -> (Chunks, tokio::task::JoinHandle<std::io::Result<()>>) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let writer = tokio::task::spawn_blocking(move || {
        let written = list(&root).and_then(|files| {
            let mut w = write(ChannelWriter::new(tx.clone()), &root, &files)?;
            w.flush()
        });
        if let Err(e) = &written {
            let _ = tx.blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
        }
        written
    });
    (Chunks(rx), writer)
}

/// The chunks of a [`stream`].
pub struct Chunks(tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>);

impl futures_util::Stream for Chunks {
    type Item = std::io::Result<bytes::Bytes>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

const CHUNK: usize = 256 * 1024;

/// A `Write` that hands fixed-size chunks to an async channel (bounded: the writer waits
/// for the reader, so memory stays flat whatever the tree's size).
pub struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    pub fn new(tx: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>) -> ChannelWriter {
        ChannelWriter { tx, buf: Vec::with_capacity(CHUNK) }
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = bytes::Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the reader of the stream went away"))
    }
}

/// Appends the file, link or directory `rel` of `tree` to `b`.
pub fn append<W: Write>(b: &mut tar::Builder<W>, tree: &Root, rel: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Some((kind, _)) = tree.kind(rel)? else { return Ok(()) };
    let mut h = tar::Header::new_gnu();
    h.set_mtime(0);
    match kind {
        Kind::File => {
            let f = tree.open_file(rel)?;
            let md = f.metadata()?;
            h.set_metadata_in_mode(&md, tar::HeaderMode::Complete);
            h.set_mtime(u64::try_from(md.mtime()).unwrap_or(0));
            b.append_data(&mut h, rel, f)
        }
        Kind::Symlink => {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_size(0);
            b.append_link(&mut h, rel, tree.read_link(rel)?)
        }
        Kind::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, rel, std::io::empty())
        }
        Kind::Other => Ok(()),
    }
}

/// Unpacks a tar stream of a tree into `dest`; returns the paths of the files and links it
/// holds, in order. Links are kept as they are (a checkout may hold any link; steps see it
/// as it was committed), and every write is resolved beneath `dest` by the kernel, so no
/// name, `..` or link in the archive writes outside it. Hard links, devices, FIFOs and
/// sockets are left out.
pub fn unpack(r: impl Read, dest: &Root) -> std::io::Result<Vec<PathBuf>> {
    let mut archive = tar::Archive::new(r);
    let mut files = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let rel = PathBuf::from(String::from_utf8_lossy(&entry.path_bytes()).trim_end_matches('/'));
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            dest.create_dir_all(&rel)?;
            continue;
        }
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            dest.create_dir_all(parent)?;
        }
        if kind.is_symlink() {
            let target = entry.link_name()?.map(|t| t.into_owned()).unwrap_or_default();
            dest.symlink(&target, &rel)?;
            files.push(rel);
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
            let mut out = dest.create_file(&rel, mode)?;
            std::io::copy(&mut entry, &mut out)?;
            if let Ok(mtime) = entry.header().mtime() {
                let _ = out.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime));
            }
            files.push(rel);
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_goes_through_a_tar_stream_with_its_links_as_links() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("a/b")).unwrap();
        std::fs::write(src.path().join("a/b/f.txt"), "hello").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("b/f.txt", src.path().join("a/rel")).unwrap();
        let files: Vec<PathBuf> = ["a/b/f.txt", "abs", "a/rel"].iter().map(PathBuf::from).collect();
        let tar = write(Vec::new(), src.path(), &files).unwrap();
        let dst = tempfile::tempdir().unwrap();
        let got = unpack(&tar[..], &Root::open(dst.path()).unwrap()).unwrap();
        assert_eq!(got, files);
        assert_eq!(std::fs::read_to_string(dst.path().join("a/b/f.txt")).unwrap(), "hello");
        assert_eq!(std::fs::read_link(dst.path().join("abs")).unwrap(), Path::new("/etc/passwd"));
        assert_eq!(std::fs::read_to_string(dst.path().join("a/rel")).unwrap(), "hello");
    }

    #[test]
    fn an_archive_cannot_write_through_its_own_links_or_dot_dots() {
        let outside = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let root = Root::open(dst.path()).unwrap();
        // A link to a directory outside, then a file "inside" it.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "out", outside.path()).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(4);
        h.set_mode(0o644);
        b.append_data(&mut h, "out/x", &b"evil"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        assert!(unpack(&tar[..], &root).is_err());
        assert!(!outside.path().join("x").exists());
        // `..` in a name (written raw: the tar crate refuses to make one).
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..9].copy_from_slice(b"../escape");
        h.set_size(4);
        h.set_mode(0o644);
        h.set_cksum();
        let mut raw = h.as_bytes().to_vec();
        raw.extend_from_slice(b"evil");
        raw.resize(512 * 4, 0);
        let sub = dst.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        assert!(unpack(&raw[..], &Root::open(&sub).unwrap()).is_err());
        assert!(!dst.path().join("escape").exists());
    }
}
