//! The only module that touches the YAML parser.
//!
//! serde_yaml is archived upstream; keeping it behind this small surface (a position-free
//! [`Node`] tree plus [`locate`]) means a move to another parser changes this file alone.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A parsed YAML document, reduced to what a pipeline file may contain.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    Int(i64),
    /// A number with a fraction or exponent, and its text as written (`3.10` stays `3.10`
    /// where the value is used as text, e.g. in `env` and matrix values).
    Float(f64, String),
    Str(String),
    Seq(Vec<Node>),
    /// Keys in source order; non-string scalar keys are turned into their text.
    Map(Vec<(String, Node)>),
}

impl Node {
    /// What the node is, as a user would name it in an error message.
    pub fn kind(&self) -> &'static str {
        match self {
            Node::Null => "null",
            Node::Bool(_) => "a boolean",
            Node::Int(_) => "an integer",
            Node::Float(..) => "a number",
            Node::Str(_) => "a string",
            Node::Seq(_) => "a list",
            Node::Map(_) => "a mapping",
        }
    }
}

/// One step of a path from the document root to a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seg {
    Key(String),
    Index(usize),
}

impl fmt::Display for Seg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seg::Key(k) => write!(f, "{k}"),
            Seg::Index(i) => write!(f, "[{i}]"),
        }
    }
}

/// A position in the source: 1-based line and column, and the byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
    pub offset: usize,
}

/// A YAML syntax error (or a document that is not one tree of mappings, lists and scalars).
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub message: String,
    pub pos: Option<Pos>,
    /// What a person can do about it, when the parser's words alone are cryptic.
    pub help: Option<String>,
}

/// Parses one YAML document. Aliases are resolved and merge keys (`<<`) applied; duplicate
/// keys are kept (in order) so that the loader can point at the second one.
pub fn parse(src: &str) -> Result<Node, SyntaxError> {
    if src.trim().is_empty() {
        return Ok(Node::Null);
    }
    let de = serde_yaml::Deserializer::from_str(src);
    let mut node = NodeSeed.deserialize(de).map_err(|e| syntax_error(&e.to_string(), e.location().map(pos_of), src))?;
    spell_floats(&mut node, src, &mut Vec::new());
    Ok(merge_keys(node))
}

/// Gives each float the text it is written with. serde_yaml hands over only the value, so
/// the source is scanned once for number-like tokens: a value written one way only takes
/// that spelling (an alias takes its anchor's). A value written several ways (`3.1` and
/// `3.10`) is located in the source, one parse each, for at most [`MAX_LOCATES`] floats:
/// the rest keep the value's own spelling. So a small file of many aliased numbers cannot
/// make this slow.
/// Returns how many floats it located in the source.
fn spell_floats(node: &mut Node, src: &str, path: &mut Vec<Seg>) -> usize {
    let mut spellings: HashMap<u64, Vec<&str>> = HashMap::new();
    for token in src.split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-' | '_'))) {
        let looks_float = token.contains(['.', 'e', 'E']) && token.bytes().any(|b| b.is_ascii_digit());
        if let Ok(f) = token.parse::<f64>()
            && looks_float
        {
            let list = spellings.entry(f.to_bits()).or_default();
            if !list.contains(&token) {
                list.push(token);
            }
        }
    }
    let mut budget = MAX_LOCATES;
    spell(node, src, path, &spellings, &mut budget);
    MAX_LOCATES - budget
}

/// How many floats written more than one way are located in the source, at most.
const MAX_LOCATES: usize = 16;

fn spell(node: &mut Node, src: &str, path: &mut Vec<Seg>, spellings: &HashMap<u64, Vec<&str>>, budget: &mut usize) {
    match node {
        Node::Float(f, text) => match spellings.get(&f.to_bits()).map(Vec::as_slice) {
            Some([one]) => *text = one.to_string(),
            Some([_, _, ..]) if *budget > 0 => {
                *budget -= 1;
                if let Some(t) = written_at(src, path, *f) {
                    *text = t;
                }
            }
            _ => {}
        },
        Node::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(Seg::Index(i));
                spell(item, src, path, spellings, budget);
                path.pop();
            }
        }
        Node::Map(entries) => {
            for (k, v) in entries.iter_mut() {
                path.push(Seg::Key(k.clone()));
                spell(v, src, path, spellings, budget);
                path.pop();
            }
        }
        _ => {}
    }
}

/// The text of the float at `path`, when the source there reads back as `f`.
fn written_at(src: &str, path: &[Seg], f: f64) -> Option<String> {
    let p = locate(src, path, false)?;
    let mut rest = &src[p.offset..];
    // An anchor (`&x 3.10`) comes before the number.
    if let Some(anchored) = rest.strip_prefix('&') {
        rest = anchored.trim_start_matches(|c: char| !c.is_whitespace()).trim_start();
    }
    let end = rest.find(|c: char| c.is_whitespace() || matches!(c, ',' | ']' | '}' | '#')).unwrap_or(rest.len());
    let token = &rest[..end];
    (token.parse::<f64>().ok() == Some(f)).then(|| token.to_string())
}

fn pos_of(l: serde_yaml::Location) -> Pos {
    Pos { line: l.line(), column: l.column(), offset: l.index() }
}

/// Splits `"<text> at line L column C"` into the text and the 1-based position.
fn split_mark(s: &str) -> (&str, Option<(usize, usize)>) {
    let Some(i) = s.rfind(" at line ") else { return (s, None) };
    let mark =
        s[i + " at line ".len()..].split_once(" column ").and_then(|(l, c)| Some((l.parse().ok()?, c.parse().ok()?)));
    match mark {
        Some(m) => (&s[..i], Some(m)),
        None => (s, None),
    }
}

/// The lines of `src` as the parser counts them, and so as every [`Pos`] numbers them, each
/// with its byte offset: a line ends at `\r\n`, `\n`, a lone `\r`, or (YAML 1.1, as libyaml
/// reads it) U+0085, U+2028 or U+2029. As `str::lines`, a final line break ends the last
/// line rather than starting an empty one.
pub fn lines(src: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut start = Some(0);
    std::iter::from_fn(move || {
        let at = start?;
        let rest = &src[at..];
        let Some((i, c)) =
            rest.char_indices().find(|(_, c)| matches!(c, '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}'))
        else {
            start = None;
            return (!rest.is_empty()).then_some((at, rest));
        };
        let crlf = c == '\r' && rest[i + 1..].starts_with('\n');
        let next = at + i + c.len_utf8() + usize::from(crlf);
        start = (next < src.len()).then_some(next);
        Some((at, &rest[..i]))
    })
}

/// The text of a 1-based line of `src`, as [`lines`] splits it ("" past the end).
pub fn line_text(src: &str, line: usize) -> &str {
    line.checked_sub(1).and_then(|n| lines(src).nth(n)).map_or("", |(_, text)| text)
}

/// The byte offset of a 1-based line and column in `src`.
fn offset_of(src: &str, line: usize, column: usize) -> usize {
    let Some((start, text)) = line.checked_sub(1).and_then(|n| lines(src).nth(n)) else { return src.len() };
    start + text.char_indices().nth(column.saturating_sub(1)).map_or(text.len(), |(i, _)| i)
}

/// Turns serde_yaml's message into ours. libyaml's errors read `PROBLEM at line L column C,
/// while CONTEXT at line L2 column C2`; for a collection or quoted string that is never
/// closed, the useful place is where it was opened (the context), not where the parser
/// gave up (often the next line).
fn syntax_error(msg: &str, pos: Option<Pos>, src: &str) -> SyntaxError {
    let (problem, context) = match msg.split_once(", while ") {
        Some((p, c)) => (p, Some(c)),
        None => (msg, None),
    };
    let (problem, _) = split_mark(problem);
    let context = context.map(split_mark);
    let here = |p: Option<Pos>| p.map(|p| format!("line {}, column {}", p.line, p.column)).unwrap_or_default();
    if let Some((what, Some((line, column)))) = context {
        let opened = Some(Pos { line, column, offset: offset_of(src, line, column) });
        let unclosed = |thing: &str, close: &str| SyntaxError {
            message: format!("this {thing} is never closed with `{close}`"),
            pos: opened,
            help: Some(format!(
                "YAML looked for `,` or `{close}` and found something else at {}; add the missing `{close}`",
                here(pos)
            )),
        };
        match what {
            "parsing a flow sequence" => return unclosed("list", "]"),
            "parsing a flow mapping" => return unclosed("mapping", "}"),
            "scanning a quoted scalar" => {
                let quote = src.get(opened.map_or(0, |p| p.offset)..).and_then(|s| s.chars().next()).unwrap_or('"');
                let help = if problem.contains("end of stream") {
                    format!("the string runs on to the end of the file: add the closing `{quote}`")
                } else {
                    format!("{problem} at {}: add the closing `{quote}`", here(pos))
                };
                return SyntaxError {
                    message: "this quoted string is never closed".into(),
                    pos: opened,
                    help: Some(help),
                };
            }
            _ => {}
        }
    }
    let line_text = pos.map_or("", |p| line_text(src, p.line));
    let help = if line_text.trim_start_matches(' ').starts_with('\t') {
        Some("YAML does not allow tabs for indentation: indent with spaces".to_string())
    } else if problem == "mapping values are not allowed in this context" {
        Some("a `key:` here is not allowed: check this line's indentation against the lines above, and quote values that contain `: `".to_string())
    } else if problem == "unknown anchor" {
        Some("an alias `*name` refers to an anchor `&name` defined above it in the file".to_string())
    } else if problem.starts_with("did not find expected '-' indicator") || problem == "did not find expected key" {
        Some("check the indentation of this line against the lines above".to_string())
    } else {
        None
    };
    // libyaml's context ("while parsing a block mapping") tells a person nothing more.
    SyntaxError { message: problem.to_string(), pos, help }
}

/// Applies YAML merge keys: `<<: *base` (or a list of them) adds the base's entries that
/// the mapping does not set itself.
fn merge_keys(node: Node) -> Node {
    match node {
        Node::Seq(items) => Node::Seq(items.into_iter().map(merge_keys).collect()),
        Node::Map(entries) => {
            let mut own = Vec::with_capacity(entries.len());
            let mut bases = Vec::new();
            for (k, v) in entries {
                let v = merge_keys(v);
                if k == "<<" {
                    match v {
                        Node::Map(m) => bases.push(m),
                        Node::Seq(s) => bases.extend(s.into_iter().filter_map(|n| match n {
                            Node::Map(m) => Some(m),
                            _ => None,
                        })),
                        _ => {}
                    }
                } else {
                    own.push((k, v));
                }
            }
            for base in bases {
                for (k, v) in base {
                    if !own.iter().any(|(o, _)| *o == k) {
                        own.push((k, v));
                    }
                }
            }
            Node::Map(own)
        }
        other => other,
    }
}

struct NodeSeed;

impl<'de> DeserializeSeed<'de> for NodeSeed {
    type Value = Node;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML node")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(i64::try_from(v).map_or(Node::Float(v as f64, v.to_string()), Node::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v, v.to_string()))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(n) = seq.next_element_seed(NodeSeed)? {
            items.push(n);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(k) = map.next_key_seed(NodeSeed)? {
            let key = match k {
                Node::Str(s) => s,
                Node::Null => "null".into(),
                Node::Bool(b) => b.to_string(),
                Node::Int(i) => i.to_string(),
                Node::Float(_, text) => text,
                Node::Seq(_) | Node::Map(_) => {
                    return Err(de::Error::custom("a key must be a plain value, not a list or mapping"));
                }
            };
            let v = map.next_value_seed(NodeSeed)?;
            entries.push((key, v));
        }
        Ok(Node::Map(entries))
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, _data: A) -> Result<Node, A::Error> {
        Err(de::Error::custom("YAML tags (`!name`) are not supported in pipeline files"))
    }
}

/// Where the node at `path` starts in `src` (or, with `key`, where its key starts).
///
/// serde_yaml keeps no positions in its values, but it stamps an error raised while a node
/// is being deserialized with that node's position. So we walk to the node with a
/// deserializer seed and fail on purpose there. One parse per lookup: diagnostics are few.
pub fn locate(src: &str, path: &[Seg], key: bool) -> Option<Pos> {
    locate_nth(src, path, key, 0)
}

/// Like [`locate`], but the last key of `path` is matched at its `nth` occurrence (0-based)
/// in its mapping: how a duplicate key is found.
pub fn locate_nth(src: &str, path: &[Seg], key: bool, nth: usize) -> Option<Pos> {
    let de = serde_yaml::Deserializer::from_str(src);
    let seed = Nav { path, key, nth };
    match seed.deserialize(de) {
        Err(e) if e.to_string().contains(MARKER) => e.location().map(pos_of),
        _ => None,
    }
}

const MARKER: &str = "\u{1}orch-locate";

struct Nav<'a> {
    path: &'a [Seg],
    key: bool,
    nth: usize,
}

impl<'de> DeserializeSeed<'de> for Nav<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

macro_rules! found_scalar {
    ($($name:ident: $ty:ty),*) => {$(
        fn $name<E: de::Error>(self, _v: $ty) -> Result<(), E> {
            Err(E::custom(MARKER))
        }
    )*};
}

impl<'de> Visitor<'de> for Nav<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any node")
    }
    found_scalar!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(MARKER))
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(MARKER))
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.path.split_first() else {
            return Err(de::Error::custom(MARKER));
        };
        let Seg::Index(want) = first else {
            return Ok(());
        };
        let mut i = 0;
        loop {
            if i == *want {
                seq.next_element_seed(Nav { path: rest, key: self.key, nth: self.nth })?;
                return Ok(());
            }
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.path.split_first() else {
            return Err(de::Error::custom(MARKER));
        };
        let Seg::Key(want) = first else {
            return Ok(());
        };
        let last = rest.is_empty();
        let mut skip = if last { self.nth } else { 0 };
        while let Some(hit) = map.next_key_seed(KeySeed { want, fail: last && self.key && skip == 0 })? {
            if hit && skip == 0 {
                map.next_value_seed(Nav { path: rest, key: self.key, nth: self.nth })?;
                return Ok(());
            }
            if hit {
                skip -= 1;
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

struct KeySeed<'a> {
    want: &'a str,
    fail: bool,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = bool;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl KeySeed<'_> {
    fn check<E: de::Error>(&self, text: &str) -> Result<bool, E> {
        let hit = text == self.want;
        if hit && self.fail { Err(E::custom(MARKER)) } else { Ok(hit) }
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        self.check(v)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        self.check(&v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
        self.check(&v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
        self.check(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<bool, E> {
        self.check(&v.to_string())
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        self.check("null")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Seg {
        Seg::Key(s.into())
    }

    const SRC: &str = "steps:\n  build:\n    image: busybox\n    needs: [a, \"b\"]\n    commands:\n      - echo hi\n";

    #[test]
    fn parses_in_order() {
        let n = parse("b: 1\na: [x, 2]\n").unwrap();
        assert_eq!(
            n,
            Node::Map(vec![
                ("b".into(), Node::Int(1)),
                ("a".into(), Node::Seq(vec![Node::Str("x".into()), Node::Int(2)])),
            ])
        );
    }

    #[test]
    fn locates_keys_values_and_items() {
        let p = locate(SRC, &[k("steps"), k("build"), k("image")], false).unwrap();
        assert_eq!((p.line, p.column), (3, 12));
        let p = locate(SRC, &[k("steps"), k("build"), k("image")], true).unwrap();
        assert_eq!((p.line, p.column), (3, 5));
        let p = locate(SRC, &[k("steps"), k("build"), k("needs"), Seg::Index(1)], false).unwrap();
        assert_eq!((p.line, p.column), (4, 16));
        let p = locate(SRC, &[k("steps"), k("build"), k("commands")], false).unwrap();
        assert_eq!(p.line, 6);
        assert!(locate(SRC, &[k("steps"), k("nope")], false).is_none());
    }

    #[test]
    fn syntax_error_has_position() {
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.pos.is_some(), "{e:?}");
    }

    #[test]
    fn unclosed_collections_point_at_their_opening() {
        let e = parse("a:\n  b: [1, 2\n  c: 3\n").unwrap_err();
        let p = e.pos.unwrap();
        assert_eq!((p.line, p.column, p.offset), (2, 6, 8), "{e:?}");
        assert_eq!(e.message, "this list is never closed with `]`");
        let e = parse("a: \"open\nb: 1\n").unwrap_err();
        assert_eq!(e.pos.map(|p| (p.line, p.column)), Some((1, 4)), "{e:?}");
        let e = parse("a:\n\tb: 1\n").unwrap_err();
        assert!(e.help.unwrap().contains("tabs"));
    }

    #[test]
    fn lines_are_counted_as_the_parser_counts_them() {
        // Found by the `load` fuzz target: a lone `\r` is a line break to libyaml, not to
        // `str::lines`, so diagnostics showed another line (or none) than the one meant.
        let src = "a: 1\rb: [1,\r\nc\u{2028}d: [x\n";
        let got: Vec<(usize, &str)> = lines(src).collect();
        assert_eq!(got, [(0, "a: 1"), (5, "b: [1,"), (13, "c"), (17, "d: [x")]);
        assert_eq!(lines("").count(), 0);
        assert_eq!(lines("x\r\n").collect::<Vec<_>>(), [(0, "x")]);
        assert_eq!(lines("\r\r").collect::<Vec<_>>(), [(0, ""), (1, "")]);
        assert_eq!((line_text(src, 4), line_text(src, 5), line_text(src, 0)), ("d: [x", "", ""));
        let e = parse("a: 1\rb: [1, 2\rc: 3\r").unwrap_err();
        let p = e.pos.unwrap();
        assert_eq!((p.line, p.column, p.offset), (2, 4, 8), "{e:?}");
        assert_eq!(&"a: 1\rb: [1, 2\rc: 3\r"[p.offset..p.offset + 1], "[");
    }

    #[test]
    fn duplicate_keys_are_kept_and_located() {
        let src = "steps:\n  a: {}\n  b: {}\n  a: {}\n";
        let Node::Map(top) = parse(src).unwrap() else { panic!() };
        let Node::Map(steps) = &top[0].1 else { panic!() };
        assert_eq!(steps.len(), 3);
        let p = locate_nth(src, &[k("steps"), k("a")], true, 1).unwrap();
        assert_eq!((p.line, p.column), (4, 3));
    }

    #[test]
    fn floats_keep_their_spelling() {
        let n = parse("a: [3.10, 1.0, 2.50e1, .inf]\nb: &x 3.10\nc: *x\n").unwrap();
        let Node::Map(m) = n else { panic!() };
        let texts = |n: &Node| match n {
            Node::Seq(items) => items
                .iter()
                .map(|i| match i {
                    Node::Float(_, t) => t.clone(),
                    other => panic!("{other:?}"),
                })
                .collect::<Vec<_>>(),
            Node::Float(_, t) => vec![t.clone()],
            other => panic!("{other:?}"),
        };
        assert_eq!(texts(&m[0].1), ["3.10", "1.0", "2.50e1", "inf"]);
        assert_eq!(texts(&m[1].1), ["3.10"]);
        // An alias is replayed from its anchor, and found there.
        assert_eq!(texts(&m[2].1), ["3.10"]);
    }

    #[test]
    fn a_value_written_two_ways_is_located() {
        let n = parse("a: 3.1\nb: 3.10\nc: [1.50, 1.5]\n").unwrap();
        let Node::Map(m) = n else { panic!() };
        assert_eq!(m[0].1, Node::Float(3.1, "3.1".into()));
        assert_eq!(m[1].1, Node::Float(3.1, "3.10".into()));
        assert_eq!(m[2].1, Node::Seq(vec![Node::Float(1.5, "1.50".into()), Node::Float(1.5, "1.5".into())]));
    }

    #[test]
    fn many_aliased_numbers_are_located_a_bounded_number_of_times() {
        // Each level doubles the numbers: 2^9 floats from a few hundred bytes, all written
        // two ways (`1.1` and `1.10`), so each would be located (a parse each) without the
        // bound.
        let mut src = String::from("x: [1.1, 2.2]\nl0: &l0 [1.10, 2.20]\n");
        for i in 1..9 {
            src.push_str(&format!("l{i}: &l{i} [*l{}, *l{}]\n", i - 1, i - 1));
        }
        let de = serde_yaml::Deserializer::from_str(&src);
        let mut node = NodeSeed.deserialize(de).unwrap();
        assert_eq!(spell_floats(&mut node, &src, &mut Vec::new()), MAX_LOCATES);
        // Values written one way are never located.
        let mut node = parse("a: &a [1.10, 2.20]\nb: [*a, *a, *a]\n").unwrap();
        assert_eq!(spell_floats(&mut node, "a: &a [1.10, 2.20]\nb: [*a, *a, *a]\n", &mut Vec::new()), 0);
    }

    #[test]
    fn merge_keys_apply() {
        let n = parse("base: &b {x: 1}\nc:\n  <<: *b\n  y: 2\n").unwrap();
        let Node::Map(m) = n else { panic!() };
        let Node::Map(c) = &m[1].1 else { panic!() };
        assert_eq!(c.len(), 2);
    }
}
