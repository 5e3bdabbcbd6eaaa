//! The pipeline language: `.orch.yml` read, checked and turned into a [`Pipeline`].
//!
//! `yaml` is the only module that knows the YAML parser; `load` checks shape and meaning and
//! collects every problem as a [`Diagnostic`] that `diag` renders with file, line and column;
//! `include` merges the files a pipeline includes (and knows which file each node came from).

pub mod cron;
pub mod diag;
pub mod include;
pub mod interp;
pub mod load;
pub mod model;
pub mod spec;
pub mod templates;
pub mod yaml;

use std::path::{Path, PathBuf};

pub use diag::{Diagnostic, SourceFile};
pub use model::*;

/// A pipeline file that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is a symbolic link out of the repository ({})", path.display(), root.display())]
    Outside { path: PathBuf, root: PathBuf },
    #[error("{} is {bytes} bytes: a pipeline file may have at most 1 MiB", path.display())]
    TooBig { path: PathBuf, bytes: u64 },
    /// Every problem in the file (and the files it includes), rendered with positions.
    /// A diagnostic's `file` indexes `files`; `file` is the main one.
    #[error("{rendered}")]
    Invalid { file: String, files: Vec<String>, diagnostics: Vec<Diagnostic>, rendered: String },
}

/// Parses and checks pipeline source text. `file` names it in messages. It may include
/// templates but not files: there is no directory to read them from.
pub fn parse_str(file: &str, src: &str) -> Result<Pipeline, ConfigError> {
    load_source(SourceFile { name: file.to_string(), text: src.to_string() }, None)
}

/// Reads and checks a pipeline file, with the files it includes. Includes may not leave the
/// git work tree the file is in (or its directory, outside of one).
pub fn load_file(path: &Path) -> Result<Pipeline, ConfigError> {
    let read_err = |source| ConfigError::Read { path: path.to_path_buf(), source };
    // The repository is found from where the file is named, not from where a symbolic link
    // leads: a checkout's `.orch.yml` may not be a link out of it (the server would show
    // the first lines of whatever it points at, `/proc/self/environ` say, in its error).
    let named = std::path::absolute(path).map_err(read_err)?;
    let dir = named.parent().unwrap_or(Path::new("/"));
    let root = dir.ancestors().find(|d| d.join(".git").exists()).unwrap_or(dir);
    let root = root.canonicalize().map_err(read_err)?;
    let main = path.canonicalize().map_err(read_err)?;
    if !main.starts_with(&root) {
        return Err(ConfigError::Outside { path: path.to_path_buf(), root });
    }
    let meta = std::fs::metadata(&main).map_err(read_err)?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(ConfigError::TooBig { path: path.to_path_buf(), bytes: meta.len() });
    }
    let src = std::fs::read_to_string(&main).map_err(read_err)?;
    let disk = include::Disk { main: main.clone(), root };
    load_source(SourceFile { name: path.display().to_string(), text: src }, Some(&disk))
}

/// The largest pipeline file (each, included ones too) orch reads.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

fn load_source(main: SourceFile, disk: Option<&include::Disk>) -> Result<Pipeline, ConfigError> {
    let doc = match yaml::parse(&main.text) {
        Ok(doc) => doc,
        Err(e) => return Err(invalid(vec![Diagnostic::syntax(e)], &[main], 0)),
    };
    let resolved = include::resolve(main, doc, disk);
    let mut diags = match load::load(&resolved.doc) {
        Ok(p) if resolved.diags.is_empty() => return Ok(p),
        Ok(_) => Vec::new(),
        Err(d) => d,
    };
    for d in &mut diags {
        d.file = resolved.file_of(&d.path);
    }
    diags.extend(resolved.diags.iter().cloned());
    // Each problem is located by a parse of its file: a file with thousands of them shows
    // the first ones found (fixing those usually fixes many more).
    let hidden = diags.len().saturating_sub(MAX_SHOWN);
    diags.truncate(MAX_SHOWN);
    diag::sort_by_position(&mut diags, &resolved.files);
    Err(invalid(diags, &resolved.files, hidden))
}

/// How many problems of one pipeline are shown, at most.
const MAX_SHOWN: usize = 100;

fn invalid(diagnostics: Vec<Diagnostic>, files: &[SourceFile], hidden: usize) -> ConfigError {
    ConfigError::Invalid {
        file: files[0].name.clone(),
        rendered: diag::render_all(&diagnostics, files, hidden),
        files: files.iter().map(|f| f.name.clone()).collect(),
        diagnostics,
    }
}
