//! The pipeline language: `.orch.yml` read, checked and turned into a [`Pipeline`].
//!
//! `yaml` is the only module that knows the YAML parser; `load` checks shape and meaning and
//! collects every problem as a [`Diagnostic`] that `diag` renders with file, line and column;
//! `include` merges the files a pipeline includes (and knows which file each node came from).

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
    let src = std::fs::read_to_string(path).map_err(read_err)?;
    let main = path.canonicalize().map_err(read_err)?;
    let dir = main.parent().unwrap_or(Path::new("/"));
    let root = dir.ancestors().find(|d| d.join(".git").exists()).unwrap_or(dir).to_path_buf();
    let disk = include::Disk { main: main.clone(), root };
    load_source(SourceFile { name: path.display().to_string(), text: src }, Some(&disk))
}

fn load_source(main: SourceFile, disk: Option<&include::Disk>) -> Result<Pipeline, ConfigError> {
    let doc = match yaml::parse(&main.text) {
        Ok(doc) => doc,
        Err(e) => return Err(invalid(vec![Diagnostic::syntax(e)], &[main])),
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
    diag::sort_by_position(&mut diags, &resolved.files);
    Err(invalid(diags, &resolved.files))
}

fn invalid(diagnostics: Vec<Diagnostic>, files: &[SourceFile]) -> ConfigError {
    ConfigError::Invalid {
        file: files[0].name.clone(),
        rendered: diag::render_all(&diagnostics, files),
        files: files.iter().map(|f| f.name.clone()).collect(),
        diagnostics,
    }
}
