//! The pipeline language: `.orch.yml` read, checked and turned into a [`Pipeline`].
//!
//! `yaml` is the only module that knows the YAML parser; `load` checks shape and meaning and
//! collects every problem as a [`Diagnostic`] that `diag` renders with file, line and column.

pub mod diag;
pub mod interp;
pub mod load;
pub mod model;
pub mod yaml;

use std::path::{Path, PathBuf};

pub use diag::Diagnostic;
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
    /// Every problem in the file, rendered with positions.
    #[error("{rendered}")]
    Invalid { file: String, diagnostics: Vec<Diagnostic>, rendered: String },
}

/// Parses and checks pipeline source text. `file` names it in messages.
pub fn parse_str(file: &str, src: &str) -> Result<Pipeline, ConfigError> {
    let diags = match yaml::parse(src) {
        Ok(doc) => match load::load(&doc) {
            Ok(p) => return Ok(p),
            Err(mut d) => {
                diag::sort_by_position(&mut d, src);
                d
            }
        },
        Err(e) => {
            let mut d = Diagnostic::new(&[], format!("invalid YAML: {}", e.message));
            d.pos = e.pos;
            d.help = e.help;
            vec![d]
        }
    };
    Err(ConfigError::Invalid {
        file: file.to_string(),
        rendered: diag::render_all(&diags, file, src),
        diagnostics: diags,
    })
}

/// Reads and checks a pipeline file.
pub fn load_file(path: &Path) -> Result<Pipeline, ConfigError> {
    let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    parse_str(&path.display().to_string(), &src)
}
