//! Problems found in a pipeline file, each pointing at the place in the source.

use std::fmt::Write as _;

pub use super::include::SourceFile;
use super::yaml::{self, Pos, Seg};

/// One problem in a pipeline file. Diagnostics are collected, never thrown: a file with
/// five mistakes reports five.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    pub message: String,
    /// Where in the document: the path of the node the problem is about.
    pub path: Vec<Seg>,
    /// Point at the key of the node rather than at its value.
    pub at_key: bool,
    /// A known position (syntax errors come with one).
    pub pos: Option<Pos>,
    pub help: Option<String>,
    /// For a duplicate key: which occurrence of the last key of `path` (0 = first).
    pub occurrence: usize,
    /// The part of the node's text that is the problem (`${NOPE}` in `img:${NOPE}`): the
    /// caret goes under it when it is found on the node's line.
    pub focus: Option<String>,
    /// Which file of the pipeline the problem is in: 0 is the main file, others are
    /// included files (see [`SourceFile`]).
    pub file: usize,
}

impl Diagnostic {
    pub fn new(path: &[Seg], message: impl Into<String>) -> Self {
        Diagnostic {
            message: message.into(),
            path: path.to_vec(),
            at_key: false,
            pos: None,
            help: None,
            occurrence: 0,
            focus: None,
            file: 0,
        }
    }

    /// A YAML syntax error, at the parser's position.
    pub fn syntax(e: yaml::SyntaxError) -> Self {
        let mut d = Diagnostic::new(&[], format!("invalid YAML: {}", e.message));
        d.pos = e.pos;
        d.help = e.help;
        d
    }

    /// The problem is the key itself (unknown or duplicate key).
    pub fn at_key(mut self) -> Self {
        self.at_key = true;
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Puts the caret under `text` within the node, rather than under the whole node.
    pub fn focus(mut self, text: impl Into<String>) -> Self {
        self.focus = Some(text.into());
        self
    }

    /// A problem with the file as a whole (it is empty, it lacks `steps`): rendered with the
    /// file name only, since no line of it is to blame.
    pub fn whole_file(message: impl Into<String>) -> Self {
        Diagnostic::new(&[], message).at_key()
    }

    fn is_whole_file(&self) -> bool {
        self.path.is_empty() && self.at_key && self.pos.is_none()
    }

    /// `steps.build.needs[0]`: the path as a user reads it.
    pub fn path_string(&self) -> String {
        let mut s = String::new();
        for seg in &self.path {
            match seg {
                Seg::Key(k) => {
                    if !s.is_empty() {
                        s.push('.');
                    }
                    // Quote keys that would not read back as one path segment.
                    if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-')) {
                        s.push_str(k);
                    } else {
                        let _ = write!(s, "{k:?}");
                    }
                }
                Seg::Index(_) => {
                    let _ = write!(s, "{seg}");
                }
            }
        }
        s
    }

    /// Resolves the position in `src`, walking up the path until a node is found. A node
    /// that is not written where its path says came from a merge key (`<<: *base`): the
    /// `<<` is then the place to show.
    pub fn position(&self, src: &str) -> Option<Pos> {
        if self.pos.is_some() || self.is_whole_file() {
            return self.pos;
        }
        let mut path = self.path.as_slice();
        let mut key = self.at_key;
        let mut nth = self.occurrence;
        loop {
            if let Some(p) = yaml::locate_nth(src, path, key, nth) {
                return Some(p);
            }
            let (_, parent) = path.split_last()?;
            let mut merge = parent.to_vec();
            merge.push(Seg::Key("<<".into()));
            if let Some(p) = yaml::locate(src, &merge, true) {
                return Some(p);
            }
            path = parent;
            key = true;
            nth = 0;
        }
    }

    /// Renders the diagnostic as a person reads it: message, `file:line:column`, the source
    /// line with a caret under the problem, and a hint.
    pub fn render(&self, file: &str, src: &str) -> String {
        let mut out = format!("error: {}\n", self.message);
        let pos = self.position(src);
        match pos {
            Some(p) => {
                let line_text = yaml::line_text(src, p.line);
                // An empty value (`key:` or a bare `-`) is placed just past the end of its
                // line: point at the last character there instead of at nothing.
                let len = line_text.chars().count();
                let mut col = if p.column > len {
                    line_text.trim_end().chars().count().saturating_sub(1)
                } else {
                    p.column.saturating_sub(1)
                };
                let mut width = None;
                if let Some(f) = self.focus.as_deref().filter(|f| !f.is_empty()) {
                    let rest: String = line_text.chars().skip(col).collect();
                    if let Some(i) = rest.find(f) {
                        col += rest[..i].chars().count();
                        width = Some(f.chars().count());
                    }
                }
                let num = p.line.to_string();
                let pad = " ".repeat(num.len());
                let _ = writeln!(out, "{pad}--> {file}:{}:{}", p.line, col + 1);
                let _ = writeln!(out, "{pad} |");
                let _ = writeln!(out, "{num} | {line_text}");
                let width = width.unwrap_or_else(|| token_width(line_text, col));
                // Keep tabs in the gutter so the caret lines up in a terminal.
                let lead: String = line_text.chars().take(col).map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
                let _ = writeln!(out, "{pad} | {lead}{}", "^".repeat(width));
            }
            None => {
                let _ = writeln!(out, " --> {file}");
            }
        }
        if !self.path.is_empty() {
            let pad = pos.map_or(1, |p| p.line.to_string().len());
            let _ = writeln!(out, "{} = at: {}", " ".repeat(pad), self.path_string());
        }
        if let Some(h) = &self.help {
            let pad = pos.map_or(1, |p| p.line.to_string().len());
            let _ = writeln!(out, "{} = help: {h}", " ".repeat(pad));
        }
        out
    }
}

/// How many columns the token starting at `col` spans: a quoted scalar up to its closing
/// quote, a plain one up to `: `, ` #`, a flow indicator or the end of the line.
fn token_width(line: &str, col: usize) -> usize {
    let rest: Vec<char> = line.chars().skip(col).collect();
    let Some(&first) = rest.first() else {
        return 1;
    };
    if first == '"' || first == '\'' {
        let mut i = 1;
        while i < rest.len() {
            if rest[i] == '\\' && first == '"' {
                i += 2;
                continue;
            }
            if rest[i] == first {
                return i + 1;
            }
            i += 1;
        }
        return rest.len();
    }
    let indicator = matches!(first, '-' | ':' | '?') && matches!(rest.get(1), None | Some(' '));
    if indicator || matches!(first, '[' | '{' | '|' | '>' | ' ' | '\t') {
        return 1;
    }
    let mut end = 0;
    while end < rest.len() {
        let c = rest[end];
        let next = rest.get(end + 1).copied();
        if (c == ':' && matches!(next, None | Some(' ')))
            || (c == ' ' && next == Some('#'))
            || c == ','
            || c == ']'
            || c == '}'
        {
            break;
        }
        end += 1;
    }
    // Trailing spaces are not part of the token.
    while end > 1 && rest[end - 1] == ' ' {
        end -= 1;
    }
    end.max(1)
}

/// Puts diagnostics in document order, file by file (the main file first; the loader finds
/// some problems only after reading a whole section); problems with a whole file come last
/// in it. The sort is stable.
pub fn sort_by_position(diags: &mut [Diagnostic], files: &[SourceFile]) {
    let mut keyed: Vec<((usize, usize), Diagnostic)> = diags
        .iter()
        .map(|d| {
            let src = files.get(d.file).map_or("", |f| f.text.as_str());
            ((d.file, d.position(src).map_or(usize::MAX, |p| p.offset)), d.clone())
        })
        .collect();
    keyed.sort_by_key(|(k, _)| *k);
    for (slot, (_, d)) in diags.iter_mut().zip(keyed) {
        *slot = d;
    }
}

/// Renders every diagnostic, each against its own file, and a closing count line named
/// after the main file.
/// `hidden` more problems were found and are not shown.
pub fn render_all(diags: &[Diagnostic], files: &[SourceFile], hidden: usize) -> String {
    let mut out = String::new();
    for d in diags {
        let (name, src) = files.get(d.file).map_or(("?", ""), |f| (f.name.as_str(), f.text.as_str()));
        out.push_str(&d.render(name, src));
        out.push('\n');
    }
    let n = diags.len() + hidden;
    let main = files.first().map_or("?", |f| f.name.as_str());
    let _ = write!(out, "{main}: {n} problem{} found", if n == 1 { "" } else { "s" });
    if hidden > 0 {
        let _ = write!(out, ", the first {} shown", diags.len());
    }
    let elsewhere = diags.iter().filter(|d| d.file != 0).count();
    if elsewhere > 0 {
        let _ = write!(out, " ({elsewhere} in included files)");
    }
    out.push('\n');
    out
}

/// The closest of `candidates` to `word`, when it is close enough to be a likely typo.
/// Case is ignored (`NODE` suggests `node`).
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (levenshtein(&lower, &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= (c.chars().count().max(word.chars().count()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance where swapping two neighbouring letters counts as one edit.
fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(did_you_mean("imgae", ["image", "env", "needs"]), Some("image"));
        assert_eq!(did_you_mean("zzzzzz", ["image", "env"]), None);
        assert_eq!(did_you_mean("comands", ["commands"]), Some("commands"));
        assert_eq!(did_you_mean("NODE", ["os", "node"]), Some("node"));
        // Lengths in characters: three wide characters are no near-miss of `b`.
        assert_eq!(did_you_mean("日本語", ["b", "build"]), None);
    }

    #[test]
    fn the_line_shown_is_the_line_yaml_counts() {
        // Found by the `load` fuzz target: after a lone `\r` (a line break to YAML), the
        // source line shown was another one, or none.
        let src = "steps:\r  a: [1,\r  b: 2\r";
        let out = Diagnostic::syntax(yaml::parse(src).unwrap_err()).render("f.yml", src);
        assert!(out.contains(" --> f.yml:2:6\n  |\n2 |   a: [1,\n  |      ^\n"), "{out}");
    }

    #[test]
    fn widths() {
        assert_eq!(token_width("    imgae: busybox", 4), 5);
        assert_eq!(token_width("  needs: [a, \"b c\"]", 13), 5);
        assert_eq!(token_width("  timeout: 10 minutes # long", 11), 10);
        assert_eq!(token_width("  timeout: -5", 11), 2);
        assert_eq!(token_width("  - make", 2), 1);
    }
}
