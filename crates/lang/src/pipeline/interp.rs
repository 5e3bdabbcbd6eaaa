//! `${VAR}` interpolation in pipeline fields. `$$` is a literal `$`; a `$` not followed by
//! `{` or `$` stays as it is. Commands are not interpolated: the shell expands them from
//! the environment orch gives every step.

/// The variables orch sets for every step, with what they hold (for the docs and `--help`).
pub const BUILTINS: &[(&str, &str)] = &[
    ("CI", "always `true`"),
    ("ORCH", "always `true`"),
    ("ORCH_EVENT", "push, pull_request, tag, manual, schedule or deploy"),
    ("ORCH_BRANCH", "the branch (for a pull request: its head branch); empty for a tag"),
    ("ORCH_BASE_BRANCH", "a pull request's base branch; empty otherwise"),
    ("ORCH_TAG", "the tag for a tag event; empty otherwise"),
    ("ORCH_COMMIT", "the full commit SHA"),
    ("ORCH_COMMIT_SHORT", "the first 8 characters of the commit SHA"),
    ("ORCH_PR", "the pull request number; empty otherwise"),
    ("ORCH_REPO", "owner/name of the repository (the directory name locally)"),
    ("ORCH_RUN_ID", "the run's id"),
    ("ORCH_SCHEDULE", "the name of the schedule that started the run; empty otherwise"),
    ("ORCH_STEP", "the step's name, matrix values included"),
    ("ORCH_STAGE", "the step's stage"),
    ("ORCH_WORKSPACE", "the workspace path inside the container"),
];

pub fn is_builtin(name: &str) -> bool {
    BUILTINS.iter().any(|(n, _)| *n == name)
}

/// A piece of an interpolated string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part<'a> {
    Lit(&'a str),
    /// `$$`
    Dollar,
    Var(&'a str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterpError {
    Unclosed,
    EmptyName,
    BadName(String),
}

impl std::fmt::Display for InterpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InterpError::Unclosed => write!(f, "`${{` is not closed with `}}`"),
            InterpError::EmptyName => write!(f, "`${{}}` names no variable"),
            InterpError::BadName(n) => write!(f, "`${{{n}}}` is not a valid variable name"),
        }
    }
}

/// Splits `s` into literal text and variable references.
pub fn parse(s: &str) -> Result<Vec<Part<'_>>, InterpError> {
    let mut parts = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        if i > 0 {
            parts.push(Part::Lit(&rest[..i]));
        }
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            parts.push(Part::Dollar);
            rest = r;
        } else if let Some(r) = after.strip_prefix('{') {
            let end = r.find('}').ok_or(InterpError::Unclosed)?;
            let name = &r[..end];
            if name.is_empty() {
                return Err(InterpError::EmptyName);
            }
            let valid = name.strip_prefix("hash:").map(|f| !f.is_empty()).unwrap_or_else(|| is_identifier(name));
            if !valid {
                return Err(InterpError::BadName(name.to_string()));
            }
            parts.push(Part::Var(name));
            rest = &r[end + 1..];
        } else {
            parts.push(Part::Lit("$"));
            rest = after;
        }
    }
    if !rest.is_empty() {
        parts.push(Part::Lit(rest));
    }
    Ok(parts)
}

/// The variable names `s` refers to.
pub fn references(s: &str) -> Result<Vec<&str>, InterpError> {
    Ok(parse(s)?
        .into_iter()
        .filter_map(|p| match p {
            Part::Var(v) => Some(v),
            _ => None,
        })
        .collect())
}

/// Substitutes every `${VAR}` with `lookup(VAR)`; `None` from the lookup is an error naming
/// the variable.
pub fn expand(s: &str, mut lookup: impl FnMut(&str) -> Option<String>) -> Result<String, String> {
    let parts = parse(s).map_err(|e| e.to_string())?;
    let mut out = String::with_capacity(s.len());
    for p in parts {
        match p {
            Part::Lit(l) => out.push_str(l),
            Part::Dollar => out.push('$'),
            Part::Var(v) => match lookup(v) {
                Some(val) => out.push_str(&val),
                None => return Err(format!("unknown variable `${{{v}}}`")),
            },
        }
    }
    Ok(out)
}

/// `[A-Za-z_][A-Za-z0-9_]*`: a name a shell accepts as a variable.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_and_escapes() {
        let r = expand("img:${V}-$$x-$HOME", |v| (v == "V").then(|| "1.2".to_string()));
        assert_eq!(r.unwrap(), "img:1.2-$x-$HOME");
        assert_eq!(expand("${NOPE}", |_| None).unwrap_err(), "unknown variable `${NOPE}`");
        assert_eq!(parse("${A").unwrap_err(), InterpError::Unclosed);
        assert_eq!(parse("${}").unwrap_err(), InterpError::EmptyName);
        assert_eq!(parse("${a-b}").unwrap_err(), InterpError::BadName("a-b".into()));
        assert_eq!(references("k-${hash:Cargo.lock}").unwrap(), ["hash:Cargo.lock"]);
    }
}
