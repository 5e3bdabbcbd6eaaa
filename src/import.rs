//! `orch import FILE...`: GitHub Actions workflows to `.orch.yml`. The translation is the
//! language crate's ([`crate::pipeline`]'s sibling `orch_lang::import`); this reads the
//! files, writes the result and prints the report.

use std::io::Write;
use std::path::{Path, PathBuf};

use orch_lang::import::{self, Finding, ImportError, Options, Workflow};

use crate::error::{Error, exit};

/// `orch import FILE... [--output FILE] [--image IMAGE] [--json]`.
pub fn run(files: &[PathBuf], output: Option<&Path>, image: Option<String>, json: bool) -> Result<u8, Error> {
    let mut texts = Vec::new();
    for f in files {
        let meta = std::fs::metadata(f).map_err(|e| Error::Usage(format!("cannot read {}: {e}", f.display())))?;
        if meta.len() > crate::pipeline::MAX_FILE_BYTES {
            return Err(Error::Usage(format!(
                "{} is {} bytes: a workflow may have at most 1 MiB",
                f.display(),
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(f).map_err(|e| Error::Usage(format!("cannot read {}: {e}", f.display())))?;
        texts.push((f.display().to_string(), text));
    }
    let workflows: Vec<Workflow<'_>> = texts.iter().map(|(file, text)| Workflow { file, text }).collect();
    let opts = Options { image: image.unwrap_or_else(|| import::DEFAULT_IMAGE.to_string()) };
    let imported = import::import(&workflows, &opts).map_err(|e| match e {
        // The importer's own output failed validation: not the user's input.
        ImportError::Invalid { .. } => Error::Internal(e.to_string()),
        other => Error::Usage(other.to_string()),
    })?;
    if let Some(out) = output {
        std::fs::write(out, &imported.text).map_err(|e| Error::io(format!("cannot write {}", out.display()), e))?;
    }
    let warnings = imported.findings.iter().filter(|f| f.severity == import::Severity::Warning).count();
    if json {
        let report = serde_json::json!({
            "files": texts.iter().map(|(f, _)| f).collect::<Vec<_>>(),
            "output": output.map(|o| o.display().to_string()),
            "steps": imported.steps,
            "warnings": warnings,
            "notes": imported.findings.len() - warnings,
            "findings": imported.findings,
            "pipeline": imported.text,
        });
        return crate::error::write_stdout(format!("{report}\n").as_bytes());
    }
    let mut err = std::io::stderr().lock();
    for f in &imported.findings {
        // The report goes to stderr; a closed stderr loses it, not the pipeline.
        let _ = err.write_all(Finding::render(f).as_bytes());
    }
    let _ = writeln!(
        err,
        "import: {} step{} from {} workflow{}, {warnings} warning{}, {} note{}{}",
        imported.steps,
        plural(imported.steps),
        files.len(),
        plural(files.len()),
        plural(warnings),
        imported.findings.len() - warnings,
        plural(imported.findings.len() - warnings),
        output.map(|o| format!("; wrote {}", o.display())).unwrap_or_default()
    );
    if output.is_none() {
        return crate::error::write_stdout(imported.text.as_bytes());
    }
    Ok(exit::SUCCESS)
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
