//! The cache store: directories of tar files on the host, one per (scope, key).
//!
//! - An entry is written to a temporary directory and renamed into place, so a reader sees
//!   a whole entry or none; two runs saving the same key at once both write whole entries
//!   and the first rename wins (the other is dropped).
//! - Entries are immutable: a key that exists is not saved again (as in GitHub Actions).
//! - Scopes keep pull requests from poisoning the default branch: a run reads its own scope
//!   first, then the default branch's, and writes only its own.
//! - The store has a size limit; after a save, least recently used entries are evicted.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache store {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cache key `{key}`: {message}")]
    Key { key: String, message: String },
}

fn io(path: &Path, source: std::io::Error) -> CacheError {
    CacheError::Io { path: path.display().to_string(), source }
}

/// One path of a cache entry: which container path it holds, and its tar file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CachedPath {
    /// Absolute path in the container, e.g. `/workspace/target` or `/root/.cargo/registry`.
    pub path: String,
    /// File name of the tar within the entry directory.
    pub tar: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Meta {
    pub scope: String,
    pub key: String,
    pub paths: Vec<CachedPath>,
    pub size: u64,
    /// Seconds since the Unix epoch.
    pub created: u64,
}

/// An entry found by [`CacheStore::lookup`].
#[derive(Debug, Clone)]
pub struct Entry {
    pub dir: PathBuf,
    pub meta: Meta,
    /// Found in a scope other than the run's own (read-only fallback).
    pub fallback: bool,
}

#[derive(Debug, Clone)]
pub struct CacheStore {
    root: PathBuf,
    max_bytes: u64,
}

/// The default size limit of a store.
pub const DEFAULT_MAX_BYTES: u64 = 5 * 1024 * 1024 * 1024;

/// `500M`, `5G`, `5GB`, `1024`: a size in bytes (K, M, G are powers of 1024).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().trim_end_matches(['b', 'B']).trim_end_matches('i');
    let (num, mult) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1u64 << 10),
        'm' | 'M' => (&s[..s.len() - 1], 1 << 20),
        'g' | 'G' => (&s[..s.len() - 1], 1 << 30),
        't' | 'T' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

fn now() -> u64 {
    crate::clock::now_secs().max(0) as u64
}

/// A file-system-safe, collision-free name for a scope or key.
fn slot(s: &str) -> String {
    let readable: String = s
        .chars()
        .take(40)
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .collect();
    let digest = Sha256::digest(s.as_bytes());
    format!("{readable}-{}", hex(&digest[..8]))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl CacheStore {
    pub fn new(root: impl Into<PathBuf>, max_bytes: u64) -> Self {
        CacheStore { root: root.into(), max_bytes }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn entry_dir(&self, scope: &str, key: &str) -> PathBuf {
        self.root.join(slot(scope)).join(slot(key))
    }

    /// The first entry for `key` in `scopes` (the run's own scope first).
    pub fn lookup(&self, scopes: &[String], key: &str) -> Option<Entry> {
        for (i, scope) in scopes.iter().enumerate() {
            let dir = self.entry_dir(scope, key);
            let Ok(text) = std::fs::read_to_string(dir.join("meta.json")) else { continue };
            let Ok(meta) = serde_json::from_str::<Meta>(&text) else { continue };
            // Mark it used, for LRU eviction.
            let _ = std::fs::write(dir.join("used"), now().to_string());
            return Some(Entry { dir, meta, fallback: i > 0 });
        }
        None
    }

    /// Whether `scope` already has `key` (entries are immutable: no need to save again).
    pub fn contains(&self, scope: &str, key: &str) -> bool {
        self.entry_dir(scope, key).join("meta.json").exists()
    }

    /// A temporary directory to write a new entry's tar files into.
    pub fn begin(&self) -> Result<tempfile::TempDir, CacheError> {
        let tmp = self.root.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
        tempfile::Builder::new().prefix("entry-").tempdir_in(&tmp).map_err(|e| io(&tmp, e))
    }

    /// Publishes a written entry atomically, then evicts old entries over the size limit.
    /// Returns the entry's size.
    pub fn commit(
        &self,
        tmp: tempfile::TempDir,
        scope: &str,
        key: &str,
        paths: Vec<CachedPath>,
    ) -> Result<u64, CacheError> {
        let mut size = 0;
        for p in &paths {
            let f = tmp.path().join(&p.tar);
            size += std::fs::metadata(&f).map_err(|e| io(&f, e))?.len();
        }
        let meta = Meta { scope: scope.to_string(), key: key.to_string(), paths, size, created: now() };
        let meta_file = tmp.path().join("meta.json");
        let text = serde_json::to_string_pretty(&meta).unwrap_or_default();
        std::fs::write(&meta_file, text).map_err(|e| io(&meta_file, e))?;
        std::fs::write(tmp.path().join("used"), now().to_string()).map_err(|e| io(tmp.path(), e))?;
        let dest = self.entry_dir(scope, key);
        let parent = dest.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::create_dir_all(&parent).map_err(|e| io(&parent, e))?;
        let tmp_path = tmp.keep();
        if let Err(e) = std::fs::rename(&tmp_path, &dest) {
            let _ = std::fs::remove_dir_all(&tmp_path);
            // Another run published the same key first: its entry is as good as ours.
            if dest.join("meta.json").exists() {
                return Ok(size);
            }
            return Err(io(&dest, e));
        }
        self.evict_except(Some(&dest))?;
        Ok(size)
    }

    /// Every entry, most recently used first.
    pub fn list(&self) -> Vec<(Meta, u64, PathBuf)> {
        let mut out = Vec::new();
        let Ok(scopes) = std::fs::read_dir(&self.root) else { return out };
        for scope in scopes.flatten() {
            if scope.file_name() == "tmp" {
                continue;
            }
            let Ok(keys) = std::fs::read_dir(scope.path()) else { continue };
            for key in keys.flatten() {
                let dir = key.path();
                let Ok(text) = std::fs::read_to_string(dir.join("meta.json")) else { continue };
                let Ok(meta) = serde_json::from_str::<Meta>(&text) else { continue };
                let used =
                    std::fs::read_to_string(dir.join("used")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
                out.push((meta, used, dir));
            }
        }
        out.sort_by_key(|(_, used, _)| std::cmp::Reverse(*used));
        out
    }

    /// Removes least recently used entries until the store fits its limit.
    pub fn evict(&self) -> Result<Vec<Meta>, CacheError> {
        self.evict_except(None)
    }

    /// Like [`evict`](Self::evict), but never removes `keep` (the entry just written: a
    /// save must not evict itself, even when it alone is over the limit).
    fn evict_except(&self, keep: Option<&Path>) -> Result<Vec<Meta>, CacheError> {
        let entries = self.list();
        let mut total: u64 = entries.iter().map(|(m, _, _)| m.size).sum();
        let mut evicted = Vec::new();
        for (meta, _, dir) in entries.into_iter().rev() {
            if total <= self.max_bytes {
                break;
            }
            if keep == Some(dir.as_path()) {
                continue;
            }
            std::fs::remove_dir_all(&dir).map_err(|e| io(&dir, e))?;
            total = total.saturating_sub(meta.size);
            evicted.push(meta);
        }
        Ok(evicted)
    }

    /// Removes every entry (or those whose key starts with `prefix`). Returns how many.
    pub fn clear(&self, prefix: Option<&str>) -> Result<usize, CacheError> {
        let mut n = 0;
        for (meta, _, dir) in self.list() {
            if prefix.is_none_or(|p| meta.key.starts_with(p)) {
                std::fs::remove_dir_all(&dir).map_err(|e| io(&dir, e))?;
                // Drop the scope directory when it is left empty.
                if let Some(scope) = dir.parent() {
                    let _ = std::fs::remove_dir(scope);
                }
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Resolves `${hash:PATTERN}` in a cache key: the SHA-256 (first 16 hex digits) of the files
/// under `root` matching the glob, in path order. A pattern matching nothing is an error.
pub fn resolve_key(key: &str, root: Option<&Path>) -> Result<String, CacheError> {
    let mut failed = None;
    let expanded = crate::pipeline::interp::expand(key, |var| {
        let pattern = var.strip_prefix("hash:")?;
        let root = root?;
        match hash_files(root, pattern) {
            Ok(h) => h,
            Err(e) => {
                failed = Some(e.to_string());
                None
            }
        }
    });
    expanded.map_err(|message| CacheError::Key {
        key: key.to_string(),
        message: match failed {
            Some(e) => format!("{message}: {e}"),
            None if message.contains("hash:") => format!("{message}: no file in the work tree matches it"),
            None => message,
        },
    })
}

/// Files `${hash:...}` reads at most, and bytes in all: a key is a fingerprint of lock
/// files, not of a whole tree; past these the key is refused rather than read for ever.
const HASH_MAX_FILES: usize = 100_000;
const HASH_MAX_BYTES: u64 = 1 << 30;

fn hash_files(root: &Path, pattern: &str) -> std::io::Result<Option<String>> {
    use std::io::Read;
    // As in `when.paths`: `*` stays within one directory, `**` crosses.
    let matcher = match globset::GlobBuilder::new(pattern).literal_separator(true).build() {
        Ok(g) => g.compile_matcher(),
        Err(_) => return Ok(None),
    };
    // Read beneath the work tree: a link in the repository cannot make orch read (or
    // hang on) a host file, a device or a FIFO.
    let tree = crate::confined::Root::open(root)?;
    let mut files: Vec<PathBuf> = Vec::new();
    for (name, kind) in tree.entries("")? {
        if name == ".git" || name == ".orch" {
            continue;
        }
        let found = if kind == crate::confined::Kind::Dir {
            tree.walk(&name, HASH_MAX_FILES)?.into_iter().map(|f| Path::new(&name).join(f.path)).collect()
        } else {
            vec![PathBuf::from(&name)]
        };
        files.extend(found.into_iter().filter(|p| matcher.is_match(p)));
        if files.len() > HASH_MAX_FILES {
            return Err(std::io::Error::other(format!("more than {HASH_MAX_FILES} files match")));
        }
    }
    files.sort();
    let mut h = Sha256::new();
    let mut any = false;
    let mut budget = HASH_MAX_BYTES;
    let mut buf = vec![0u8; 64 * 1024];
    for f in files {
        // A link to a file counts as the file, when it leads to one inside the tree.
        let Ok(mut file) = tree.open_file(&f) else { continue };
        any = true;
        h.update(f.to_string_lossy().as_bytes());
        h.update([0]);
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            budget = budget.checked_sub(n as u64).ok_or_else(|| {
                std::io::Error::other(format!("the files hashed hold more than {} MiB", HASH_MAX_BYTES >> 20))
            })?;
            h.update(&buf[..n]);
        }
    }
    Ok(any.then(|| hex(&h.finalize()[..8])))
}

/// Where orch keeps caches by default: `$ORCH_CACHE_DIR`, else `$XDG_CACHE_HOME/orch`, else
/// `~/.cache/orch`.
pub fn default_dir() -> PathBuf {
    // Set but empty counts as unset, as for every ORCH_* setting.
    if let Some(d) = std::env::var_os("ORCH_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("orch");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache").join("orch")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("5G"), Some(5 << 30));
        assert_eq!(parse_size("5GB"), Some(5 << 30));
        assert_eq!(parse_size("500MiB"), Some(500 << 20));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("lots"), None);
    }

    fn write_entry(store: &CacheStore, scope: &str, key: &str, bytes: usize) -> u64 {
        let tmp = store.begin().unwrap();
        std::fs::write(tmp.path().join("0.tar"), vec![0u8; bytes]).unwrap();
        store.commit(tmp, scope, key, vec![CachedPath { path: "/workspace/x".into(), tar: "0.tar".into() }]).unwrap()
    }

    #[test]
    fn save_lookup_scopes_and_fallback() {
        let d = tempfile::tempdir().unwrap();
        let store = CacheStore::new(d.path(), 1 << 30);
        write_entry(&store, "branch:main", "k1", 10);
        let scopes = vec!["pr:7".to_string(), "branch:main".to_string()];
        let e = store.lookup(&scopes, "k1").unwrap();
        assert!(e.fallback);
        assert_eq!(e.meta.size, 10);
        assert!(store.lookup(&scopes, "k2").is_none());
        // A PR writes only to its own scope: main does not see it.
        write_entry(&store, "pr:7", "k2", 10);
        assert!(store.lookup(&["branch:main".to_string()], "k2").is_none());
        assert!(!store.lookup(&scopes, "k2").unwrap().fallback);
    }

    #[test]
    fn lru_eviction_keeps_the_store_under_its_limit() {
        let d = tempfile::tempdir().unwrap();
        let store = CacheStore::new(d.path(), 250);
        // An entry over the limit on its own is kept: a save never evicts itself.
        let small = CacheStore::new(tempfile::tempdir().unwrap().keep(), 10);
        write_entry(&small, "s", "big", 100);
        assert_eq!(small.list().len(), 1);
        write_entry(&store, "s", "old", 100);
        std::fs::write(store.entry_dir("s", "old").join("used"), "1").unwrap();
        write_entry(&store, "s", "mid", 100);
        std::fs::write(store.entry_dir("s", "mid").join("used"), "2").unwrap();
        write_entry(&store, "s", "new", 100);
        let keys: Vec<String> = store.list().into_iter().map(|(m, _, _)| m.key).collect();
        assert_eq!(keys, ["new", "mid"]);
    }

    #[test]
    fn concurrent_commits_of_one_key_leave_one_whole_entry() {
        let d = tempfile::tempdir().unwrap();
        let store = CacheStore::new(d.path(), 1 << 30);
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                std::thread::spawn(move || write_entry(&store, "s", "same", 1000 + i))
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let list = store.list();
        assert_eq!(list.len(), 1);
        let (meta, _, dir) = &list[0];
        assert_eq!(std::fs::metadata(dir.join("0.tar")).unwrap().len(), meta.size);
        assert!(std::fs::read_dir(d.path().join("tmp")).unwrap().next().is_none(), "temp entries left");
    }

    #[test]
    fn key_hashes_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("Cargo.lock"), "a").unwrap();
        let k1 = resolve_key("cargo-${hash:Cargo.lock}", Some(d.path())).unwrap();
        assert!(k1.starts_with("cargo-") && k1.len() == "cargo-".len() + 16, "{k1}");
        std::fs::write(d.path().join("Cargo.lock"), "b").unwrap();
        let k2 = resolve_key("cargo-${hash:Cargo.lock}", Some(d.path())).unwrap();
        assert_ne!(k1, k2);
        let e = resolve_key("x-${hash:nope.lock}", Some(d.path())).unwrap_err();
        assert!(e.to_string().contains("nope.lock"), "{e}");
    }

    #[test]
    fn hash_reads_no_host_file_through_a_link() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("hostname"), "the-host").unwrap();
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(host.path().join("hostname"), d.path().join("hostlink")).unwrap();
        std::os::unix::fs::symlink("/proc/self/pagemap", d.path().join("pagemap")).unwrap();
        std::os::unix::fs::symlink("../../../../../../../../etc/hostname", d.path().join("climb")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", d.path().join("zero")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            d.path().join("fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        for name in ["hostlink", "pagemap", "climb", "zero", "fifo"] {
            let e = resolve_key(&format!("k-${{hash:{name}}}"), Some(d.path())).unwrap_err();
            assert!(e.to_string().contains("no file in the work tree matches it"), "{name}: {e}");
        }
        // A link to a file inside counts as that file.
        std::fs::write(d.path().join("real.lock"), "v1").unwrap();
        std::os::unix::fs::symlink("real.lock", d.path().join("alias.lock")).unwrap();
        let a = resolve_key("${hash:alias.lock}", Some(d.path())).unwrap();
        std::fs::write(d.path().join("real.lock"), "v2").unwrap();
        assert_ne!(a, resolve_key("${hash:alias.lock}", Some(d.path())).unwrap());
    }
}
