//! `orch init`: writes a `.orch.yml` for the project in the current directory, from one of
//! the pipelines shipped in `pipelines/` (embedded in the binary, see [`crate::pipeline::templates`]).

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use crate::error::{Error, exit};
pub use crate::pipeline::templates::{TEMPLATES, Template, template};

/// The templates that fit the project in `dir`, best first, each with the file that says so.
pub fn detect(dir: &Path) -> Vec<(&'static str, &'static str)> {
    let rules: [(&str, &[&str]); 6] = [
        ("rust", &["Cargo.toml"]),
        ("node", &["package.json"]),
        ("go", &["go.mod"]),
        ("python", &["pyproject.toml", "requirements.txt"]),
        ("docker", &["Dockerfile"]),
        ("static-site", &["index.html", "site/"]),
    ];
    let mut found = Vec::new();
    for (name, markers) in rules {
        let hit = markers.iter().find(|m| match m.strip_suffix('/') {
            Some(d) => dir.join(d).is_dir(),
            None => dir.join(m).is_file(),
        });
        if let Some(m) = hit {
            found.push((name, *m));
        }
    }
    found
}

/// `orch init [--template NAME] [--list] [--force]` in `dir`.
pub fn run(dir: &Path, template_name: Option<&str>, list: bool, force: bool) -> Result<u8, Error> {
    let detected = detect(dir);
    if list {
        let width = TEMPLATES.iter().map(|t| t.name.len()).max().unwrap_or(0);
        for t in TEMPLATES {
            let mark = match detected.iter().find(|(n, _)| *n == t.name) {
                Some((_, why)) => format!("  (detected: {why})"),
                None => String::new(),
            };
            println!("{:<width$}  {}{mark}", t.name, t.about);
        }
        return Ok(exit::SUCCESS);
    }
    let (chosen, why) = match template_name {
        Some(name) => match template(name) {
            Some(t) => (t, None),
            None => {
                let hint = crate::pipeline::diag::did_you_mean(name, TEMPLATES.iter().map(|t| t.name))
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                return Err(Error::Usage(format!(
                    "no template `{name}`{hint}; `orch init --list` shows them: {}",
                    names()
                )));
            }
        },
        None => match detected.first() {
            Some((name, why)) => (template(name).expect("detected names are templates"), Some(*why)),
            None => {
                return Err(Error::Usage(format!(
                    "cannot tell what kind of project {} is (no Cargo.toml, package.json, go.mod, pyproject.toml, \
                     requirements.txt, Dockerfile, index.html or site/); pick a template with --template NAME: {}",
                    dir.display(),
                    names()
                )));
            }
        },
    };
    let target = dir.join(".orch.yml");
    if target.exists() && !force && !confirm_overwrite()? {
        return Err(Error::Usage(".orch.yml exists: not overwritten (--force replaces it; or remove it first)".into()));
    }
    std::fs::write(&target, chosen.text).map_err(|e| Error::io(format!("cannot write {}", target.display()), e))?;
    match why {
        Some(why) => println!("wrote .orch.yml from the `{}` template (found {why})", chosen.name),
        None => println!("wrote .orch.yml from the `{}` template", chosen.name),
    }
    let others: Vec<String> =
        detected.iter().filter(|(n, _)| *n != chosen.name).map(|(n, w)| format!("{n} ({w})")).collect();
    if !others.is_empty() {
        println!("also fits: {} — `orch init --force --template NAME` to use one instead", others.join(", "));
    }
    println!("Its header comment names the images it uses: orch never pulls, so they must exist locally.");
    println!("Its `on:` says which pushes and pull requests run it (main, for most): edit it if yours differ.");
    println!();
    println!("Next:");
    println!("  orch plan    # what would run for a push to this branch, and why the rest would not");
    println!("  orch ci      # run it in Docker");
    println!();
    println!("Editor support (completion, errors as you type): `orch schema > .orch.schema.json`, then");
    println!("  `# yaml-language-server: $schema=./.orch.schema.json` as the first line of .orch.yml");
    Ok(exit::SUCCESS)
}

fn names() -> String {
    TEMPLATES.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
}

/// Asks on the terminal whether to overwrite `.orch.yml`. Never asks (answers no) when
/// stdin or stderr is not a terminal: scripts get an error instead of a hang.
fn confirm_overwrite() -> Result<bool, Error> {
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        return Ok(false);
    }
    eprint!(".orch.yml exists. Overwrite it? [y/N] ");
    std::io::stderr().flush().map_err(|e| Error::io("cannot write to the terminal", e))?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).map_err(|e| Error::io("cannot read the answer", e))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "Yes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses() {
        for t in TEMPLATES {
            if let Err(e) = crate::pipeline::parse_str(&format!("{}.yml", t.name), t.text) {
                panic!("{}: {e}", t.name);
            }
        }
    }

    #[test]
    fn detection_order() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(detect(tmp.path()).is_empty());
        std::fs::write(tmp.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(tmp.path().join("Cargo.toml"), "").unwrap();
        assert_eq!(detect(tmp.path()), vec![("rust", "Cargo.toml"), ("docker", "Dockerfile")]);
    }
}
