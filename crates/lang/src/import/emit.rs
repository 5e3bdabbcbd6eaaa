//! A small YAML writer for what the importer produces: block mappings and lists, comments,
//! and scalars quoted whenever the plain form would read back as anything else.
//!
//! serde_yaml may not be used outside `pipeline/yaml.rs`, and its writer would drop the
//! comments anyway. Every plain scalar is checked by parsing it back ([`yaml::parse`]), so
//! `on`, `1.10`, `*`, `a: b` or ` x` can never change meaning.

use crate::pipeline::yaml::{self, Node};

/// A value to write.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    /// Text: written plain when that reads back as the same text, else quoted (or, for
    /// several lines, as a `|` block).
    Str(String),
    /// A number or boolean, written as it is (`15`, `3.10`, `true`).
    Raw(String),
    Seq(Vec<Item>),
    Map(Vec<Entry>),
}

/// An entry of a mapping, with comment lines above it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub comments: Vec<String>,
    pub key: String,
    pub value: Out,
}

/// An item of a list, with comment lines above it.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub comments: Vec<String>,
    pub value: Out,
}

impl Out {
    pub fn str(s: impl Into<String>) -> Out {
        Out::Str(s.into())
    }
    pub fn strs<S: Into<String>>(items: impl IntoIterator<Item = S>) -> Out {
        Out::Seq(items.into_iter().map(|s| Item { comments: vec![], value: Out::Str(s.into()) }).collect())
    }
    pub fn map() -> Out {
        Out::Map(Vec::new())
    }
    /// Adds `key: value` to a mapping (no-op on anything else).
    pub fn put(&mut self, key: impl Into<String>, value: Out) {
        self.put_commented(Vec::new(), key, value);
    }
    pub fn put_commented(&mut self, comments: Vec<String>, key: impl Into<String>, value: Out) {
        if let Out::Map(entries) = self {
            entries.push(Entry { comments, key: key.into(), value });
        }
    }
    pub fn get(&self, key: &str) -> Option<&Out> {
        match self {
            Out::Map(entries) => entries.iter().find(|e| e.key == key).map(|e| &e.value),
            _ => None,
        }
    }
    pub fn is_empty_map(&self) -> bool {
        matches!(self, Out::Map(e) if e.is_empty())
    }

    /// What [`yaml::parse`] should read back for this value: the test of the emitter.
    pub fn to_node(&self) -> Node {
        match self {
            Out::Str(s) => Node::Str(s.clone()),
            Out::Raw(r) => match yaml::parse(&format!("k: {r}\n")) {
                Ok(Node::Map(mut m)) if m.len() == 1 => m.remove(0).1,
                _ => Node::Str(r.clone()),
            },
            Out::Seq(items) => Node::Seq(items.iter().map(|i| i.value.to_node()).collect()),
            Out::Map(entries) => Node::Map(entries.iter().map(|e| (e.key.clone(), e.value.to_node())).collect()),
        }
    }
}

/// Writes a document: header comment lines, then the top-level mapping. Top-level entries
/// are separated by a blank line, and so are the entries of `steps`.
pub fn document(header: &[String], root: &Out) -> String {
    let mut out = String::new();
    for h in header {
        comment(&mut out, 0, h);
    }
    if let Out::Map(entries) = root {
        for e in entries {
            out.push('\n');
            entry(&mut out, 0, e, e.key == "steps");
        }
    }
    out
}

fn comment(out: &mut String, indent: usize, text: &str) {
    // A comment is one line: a line break in it would start YAML again.
    let one_line: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let text = one_line.trim_end();
    out.push_str(&" ".repeat(indent));
    if text.is_empty() {
        out.push_str("#\n");
    } else {
        out.push_str(&format!("# {text}\n"));
    }
}

fn entry(out: &mut String, indent: usize, e: &Entry, space_children: bool) {
    for c in &e.comments {
        comment(out, indent, c);
    }
    let pad = " ".repeat(indent);
    let key = key_text(&e.key);
    match &e.value {
        Out::Map(m) if m.is_empty() => out.push_str(&format!("{pad}{key}: {{}}\n")),
        Out::Seq(s) if s.is_empty() => out.push_str(&format!("{pad}{key}: []\n")),
        Out::Map(m) => {
            out.push_str(&format!("{pad}{key}:\n"));
            for (i, child) in m.iter().enumerate() {
                if space_children && i > 0 {
                    out.push('\n');
                }
                entry(out, indent + 2, child, false);
            }
        }
        Out::Seq(items) => {
            out.push_str(&format!("{pad}{key}:\n"));
            for item in items {
                seq_item(out, indent + 2, item);
            }
        }
        scalar_value => out.push_str(&format!("{pad}{key}: {}\n", scalar(scalar_value, indent))),
    }
}

fn seq_item(out: &mut String, indent: usize, item: &Item) {
    for c in &item.comments {
        comment(out, indent, c);
    }
    let pad = " ".repeat(indent);
    match &item.value {
        Out::Map(m) if !m.is_empty() => {
            // The mapping at indent + 2, its first line starting with `- ` instead.
            let mut inner = String::new();
            for e in m {
                entry(&mut inner, indent + 2, e, false);
            }
            out.push_str(&pad);
            out.push_str("- ");
            out.push_str(&inner[indent + 2..]);
        }
        Out::Map(_) => out.push_str(&format!("{pad}- {{}}\n")),
        Out::Seq(s) if s.is_empty() => out.push_str(&format!("{pad}- []\n")),
        Out::Seq(s) => {
            out.push_str(&format!("{pad}-\n"));
            for i in s {
                seq_item(out, indent + 2, i);
            }
        }
        v => out.push_str(&format!("{pad}- {}\n", scalar(v, indent))),
    }
}

/// A scalar for a value whose key (or `- `) is at `indent`.
fn scalar(v: &Out, indent: usize) -> String {
    match v {
        Out::Raw(r) => r.clone(),
        Out::Str(s) if block_safe(s) => {
            let body = s.strip_suffix('\n').unwrap_or(s);
            let chomp = if s.ends_with('\n') { "|" } else { "|-" };
            let pad = " ".repeat(indent + 2);
            let mut text = chomp.to_string();
            for line in body.split('\n') {
                text.push('\n');
                if !line.is_empty() {
                    text.push_str(&pad);
                    text.push_str(line);
                }
            }
            text
        }
        Out::Str(s) => plain_or_quoted(s),
        // Collections are written by their callers.
        Out::Seq(_) | Out::Map(_) => String::new(),
    }
}

/// Whether `s` reads back unchanged as a `|` block: several lines, no line that only has
/// blanks (a block drops them), no leading blank on the first line (it would set the
/// indentation), at most one final line break, only printable characters and tabs.
fn block_safe(s: &str) -> bool {
    let body = s.strip_suffix('\n').unwrap_or(s);
    body.contains('\n')
        && !body.ends_with('\n')
        && !body.starts_with([' ', '\t'])
        && !body.split('\n').any(|l| !l.is_empty() && l.trim_matches([' ', '\t']).is_empty())
        && body.chars().all(|c| c == '\n' || c == '\t' || printable(c))
}

fn printable(c: char) -> bool {
    !c.is_control() && !matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}')
}

fn key_text(k: &str) -> String {
    let plain = !k.is_empty()
        && k.chars().all(printable)
        && matches!(yaml::parse(&format!("{k}: 1\n")), Ok(Node::Map(m)) if m.len() == 1 && m[0].0 == k);
    if plain { k.to_string() } else { quoted(k) }
}

/// `s` plain if YAML reads it back as this very string, else double-quoted.
pub fn plain_or_quoted(s: &str) -> String {
    let plain = !s.is_empty()
        && s.trim() == s
        && s.chars().all(printable)
        && matches!(yaml::parse(&format!("k: {s}\n")), Ok(Node::Map(m)) if m.len() == 1 && m[0].1 == Node::Str(s.to_string()));
    if plain { s.to_string() } else { quoted(s) }
}

/// A double-quoted YAML string (JSON's escapes, which YAML shares, plus the line breaks
/// YAML 1.1 knows that JSON does not).
pub fn quoted(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\t' => q.push_str("\\t"),
            '\r' => q.push_str("\\r"),
            c if !printable(c) => q.push_str(&format!("\\u{:04x}", c as u32)),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(v: Out) {
        let mut root = Out::map();
        root.put("v", v);
        let text = document(&["header".into()], &root);
        let back = yaml::parse(&text).unwrap_or_else(|e| panic!("{e:?} in:\n{text}"));
        assert_eq!(back, root.to_node(), "written as:\n{text}");
    }

    const TRICKY: &[&str] = &[
        "on",
        "yes",
        "no",
        "off",
        "true",
        "False",
        "null",
        "~",
        "",
        " ",
        "1.10",
        "3.1",
        "1e3",
        "0x1f",
        "007",
        ".inf",
        "-1",
        "*",
        "*x",
        "&a",
        "!tag",
        "|",
        ">",
        "-",
        "- a",
        "? x",
        "a: b",
        "a:",
        "a #b",
        "#c",
        "@x",
        "`x`",
        "%x",
        "[a]",
        "{a}",
        "a, b",
        " leading",
        "trailing ",
        "tab\tin",
        "\ttab",
        "x\u{85}y",
        "x\u{2028}y",
        "bell\u{7}",
        "quote\"s",
        "back\\slash",
        "'single'",
        "$HOME",
        "${x}",
        "a\r\nb",
        "é ü 東京",
        "<<",
    ];

    #[test]
    fn scalars_read_back_as_written() {
        for s in TRICKY {
            roundtrip(Out::str(*s));
            roundtrip(Out::strs([*s]));
            let mut m = Out::map();
            m.put(*s, Out::str(*s));
            if *s != "<<" {
                // A `<<` key is a merge key whatever its quoting; the importer never writes one.
                roundtrip(m);
            }
        }
    }

    #[test]
    fn multi_line_strings_become_blocks_when_that_is_exact() {
        for s in [
            "a\nb",
            "a\nb\n",
            "a\n\nb\n",
            "if x; then\n  y: z # not a comment\nfi",
            "a\n  \nb",
            " lead\nx",
            "a\nb\n\n",
            "x\ty\n\tz",
            "- a\n- b",
        ] {
            roundtrip(Out::str(s));
            roundtrip(Out::strs([s, "next"]));
        }
        let mut root = Out::map();
        root.put("c", Out::strs(["a\nb"]));
        assert_eq!(document(&[], &root), "\nc:\n  - |-\n    a\n    b\n");
    }

    #[test]
    fn plain_when_possible() {
        for s in ["npm ci", "node:22", "refs/heads/main", "python -m pip install -U pip", "a-b_c.d"] {
            assert_eq!(plain_or_quoted(s), s);
        }
        assert_eq!(plain_or_quoted("on"), "on", "YAML 1.2: `on` is a string");
        assert_eq!(plain_or_quoted("1.10"), "\"1.10\"");
        assert_eq!(plain_or_quoted("true"), "\"true\"");
        assert_eq!(plain_or_quoted("a: b"), "\"a: b\"");
    }

    #[test]
    fn nested_collections_and_comments() {
        let mut inner = Out::map();
        inner.put("k", Out::Raw("15".into()));
        inner.put("list", Out::Seq(vec![]));
        inner.put("m", Out::map());
        let items = Out::Seq(vec![
            Item { comments: vec!["first\nsecond".into()], value: inner.clone() },
            Item { comments: vec![], value: Out::Seq(vec![Item { comments: vec![], value: Out::str("x") }]) },
            Item { comments: vec![], value: Out::Raw("3.10".into()) },
        ]);
        roundtrip(items);
        let mut m = Out::map();
        m.put_commented(vec!["about a".into()], "a", inner);
        roundtrip(m);
    }
}
