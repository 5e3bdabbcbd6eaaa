//! `include:`: a pipeline made of several files.
//!
//! Each file is parsed on its own; then the included files are merged in order, and the
//! including file on top of them: mappings merge key by key (deeply), anything else is
//! replaced by the later file. Merging keeps every node at the path it has in its own file,
//! so a diagnostic's path, looked up in the right file, still finds its line: `origins`
//! records which file last wrote each path.

use std::path::{Component, Path, PathBuf};

use super::diag::{Diagnostic, did_you_mean};
use super::templates::{TEMPLATES, template};
use super::yaml::{self, Node, Seg};

/// How deep includes may nest: deeper is almost surely a mistake, and the bound keeps a
/// hostile repository from making the server parse without end.
const MAX_DEPTH: usize = 16;
/// How many files one pipeline may be made of, all includes counted.
const MAX_FILES: usize = 64;

/// One file of a pipeline: the main file (index 0) or one it includes.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// As messages name it: the main file as given, included files relative to it.
    pub name: String,
    pub text: String,
}

/// Where local includes are read from.
pub(super) struct Disk {
    /// The main file, canonical.
    pub main: PathBuf,
    /// No include may leave this directory (the repository's work tree).
    pub root: PathBuf,
}

/// The merged document and what is needed to report problems in it.
pub(super) struct Resolved {
    pub doc: Node,
    pub files: Vec<SourceFile>,
    /// Problems with the includes themselves (and syntax errors in included files), each
    /// with its file set.
    pub diags: Vec<Diagnostic>,
    /// (path, file): the file that last wrote the node at `path`.
    origins: Vec<(Vec<Seg>, usize)>,
}

impl Resolved {
    /// The file the node at `path` comes from: the longest recorded prefix of `path`.
    pub fn file_of(&self, path: &[Seg]) -> usize {
        self.origins.iter().filter(|(p, _)| path.starts_with(p)).max_by_key(|(p, _)| p.len()).map_or(0, |(_, f)| *f)
    }
}

/// Where one file came from, to resolve its own includes and to spot cycles.
#[derive(Clone, PartialEq)]
enum Origin {
    /// A file on disk, by its canonical path.
    Disk(PathBuf),
    Template(&'static str),
    /// Text given without a file (`parse_str`): it cannot include files.
    Text,
}

struct Resolver<'a> {
    disk: Option<&'a Disk>,
    files: Vec<SourceFile>,
    origins_of_files: Vec<Origin>,
    diags: Vec<Diagnostic>,
    merged: Vec<(Vec<Seg>, usize)>,
}

/// Resolves the includes of the main file `doc` (already parsed from `files[0]`).
pub(super) fn resolve(main: SourceFile, doc: Node, disk: Option<&Disk>) -> Resolved {
    let origin = match disk {
        Some(d) => Origin::Disk(d.main.clone()),
        None => Origin::Text,
    };
    let mut r =
        Resolver { disk, files: vec![main], origins_of_files: vec![origin], diags: Vec::new(), merged: Vec::new() };
    let has_include = matches!(&doc, Node::Map(m) if m.iter().any(|(k, _)| k == "include"));
    if !has_include {
        // The common case: one file, nothing to merge or to trace.
        return Resolved { doc, files: r.files, diags: Vec::new(), origins: Vec::new() };
    }
    let mut out = Node::Map(Vec::new());
    r.file(0, doc, &mut out, &mut vec![0]);
    Resolved { doc: out, files: r.files, diags: r.diags, origins: r.merged }
}

impl Resolver<'_> {
    /// Merges file `idx` (its includes first, then itself) into `out`. `stack` holds the
    /// files being included, outermost first, to report cycles.
    fn file(&mut self, idx: usize, doc: Node, out: &mut Node, stack: &mut Vec<usize>) {
        let mut doc = doc;
        let items = match &mut doc {
            Node::Map(entries) => {
                // A second `include` would be merged as a pipeline key: report it instead.
                if entries.iter().filter(|(k, _)| k == "include").count() > 1 {
                    let mut d =
                        Diagnostic::new(&[Seg::Key("include".into())], "duplicate key `include` in the pipeline")
                            .at_key()
                            .help("list every file under one `include`");
                    d.occurrence = 1;
                    self.err(idx, d);
                    entries.retain(|(k, _)| k != "include");
                    None
                } else {
                    entries.iter().position(|(k, _)| k == "include").map(|i| entries.remove(i).1)
                }
            }
            _ => None,
        };
        let list_path = vec![Seg::Key("include".into())];
        match items {
            None | Some(Node::Null) => {}
            Some(Node::Seq(items)) => {
                for (i, item) in items.into_iter().enumerate() {
                    let mut p = list_path.clone();
                    p.push(Seg::Index(i));
                    self.item(idx, &item, &p, out, stack);
                }
            }
            // A single include needs no list.
            Some(item @ (Node::Str(_) | Node::Map(_))) => self.item(idx, &item, &list_path, out, stack),
            Some(other) => self.err(
                idx,
                Diagnostic::new(&list_path, format!("`include` must be a list of files, found {}", other.kind()))
                    .help("e.g. `include: [ci/common.yml, {template: rust}]`"),
            ),
        }
        let mut path = Vec::new();
        merge(out, doc, &mut path, idx, &mut self.merged);
    }

    fn err(&mut self, file: usize, mut d: Diagnostic) {
        d.file = file;
        self.diags.push(d);
    }

    /// One item of an `include` list, at `path` in file `from`.
    fn item(&mut self, from: usize, item: &Node, path: &[Seg], out: &mut Node, stack: &mut Vec<usize>) {
        let Some((origin, name, text)) = self.read(from, item, path) else { return };
        if let Some(at) = stack.iter().position(|&f| self.origins_of_files[f] == origin) {
            let mut chain: Vec<&str> = stack[at..].iter().map(|&f| self.files[f].name.as_str()).collect();
            chain.push(&name);
            self.err(
                from,
                Diagnostic::new(path, format!("`{name}` includes itself: {}", chain.join(" → ")))
                    .help("an include cycle never ends: remove one of these includes"),
            );
            return;
        }
        if self.origins_of_files.contains(&origin) {
            // Already merged through another include: once is enough (a later copy would
            // undo what came between).
            return;
        }
        if stack.len() > MAX_DEPTH || self.files.len() >= MAX_FILES {
            self.err(
                from,
                Diagnostic::new(
                    path,
                    format!("too many includes: at most {MAX_FILES} files, nested at most {MAX_DEPTH} deep"),
                ),
            );
            return;
        }
        let idx = self.files.len();
        self.files.push(SourceFile { name: name.clone(), text });
        self.origins_of_files.push(origin);
        let text = &self.files[idx].text;
        let doc = match yaml::parse(text) {
            Ok(doc) => doc,
            Err(e) => {
                self.err(idx, Diagnostic::syntax(e));
                return;
            }
        };
        match doc {
            Node::Map(_) => {}
            Node::Null => return,
            other => {
                self.err(
                    from,
                    Diagnostic::new(
                        path,
                        format!("`{name}` must be a mapping of pipeline keys, found {}", other.kind()),
                    )
                    .help("an included file looks like a pipeline: `steps:`, `env:`, `services:` ..."),
                );
                return;
            }
        }
        stack.push(idx);
        self.file(idx, doc, out, stack);
        stack.pop();
    }

    /// Reads what an include item names: its origin, its display name and its text.
    fn read(&mut self, from: usize, item: &Node, path: &[Seg]) -> Option<(Origin, String, String)> {
        let (kind, value, vpath) = match item {
            Node::Str(s) => ("local", s.as_str(), path.to_vec()),
            Node::Map(entries) => {
                let known = ["local", "template"];
                for (k, _) in entries.iter().skip(1) {
                    let mut p = path.to_vec();
                    p.push(Seg::Key(k.clone()));
                    self.err(
                        from,
                        Diagnostic::new(&p, "an include names one file: `local` or `template`, not both")
                            .at_key()
                            .help("write each file as its own item of the list"),
                    );
                }
                let Some((k, v)) = entries.first() else {
                    self.err(from, Diagnostic::new(path, "an include needs `local: PATH` or `template: NAME`"));
                    return None;
                };
                let mut p = path.to_vec();
                p.push(Seg::Key(k.clone()));
                if !known.contains(&k.as_str()) {
                    let help = match did_you_mean(k, known) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => "an include is a path, `{local: PATH}` or `{template: NAME}`".into(),
                    };
                    self.err(from, Diagnostic::new(&p, format!("unknown key `{k}` in an include")).at_key().help(help));
                    return None;
                }
                let Node::Str(s) = v else {
                    self.err(from, Diagnostic::new(&p, format!("`{k}` must be a string, found {}", v.kind())));
                    return None;
                };
                (k.as_str(), s.as_str(), p)
            }
            other => {
                self.err(
                    from,
                    Diagnostic::new(path, format!("an include must be a path or a mapping, found {}", other.kind()))
                        .help("e.g. `- ci/common.yml` or `- template: rust`"),
                );
                return None;
            }
        };
        if kind == "template" {
            return match template(value) {
                Some(t) => Some((Origin::Template(t.name), format!("template:{}", t.name), t.text.to_string())),
                None => {
                    let names = TEMPLATES.iter().map(|t| t.name);
                    let help = match did_you_mean(value, names.clone()) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!("the templates are: {}", names.collect::<Vec<_>>().join(", ")),
                    };
                    self.err(from, Diagnostic::new(&vpath, format!("no template `{value}`")).help(help));
                    None
                }
            };
        }
        self.read_local(from, value, &vpath)
    }

    fn read_local(&mut self, from: usize, rel: &str, path: &[Seg]) -> Option<(Origin, String, String)> {
        let fail = |r: &mut Self, msg: String, help: &str| {
            r.err(from, Diagnostic::new(path, msg).help(help));
            None
        };
        let Some(disk) = self.disk else {
            return fail(
                self,
                format!("cannot include `{rel}` here"),
                "only a pipeline read from a file can include files",
            );
        };
        if rel.is_empty() || Path::new(rel).is_absolute() {
            return fail(
                self,
                format!("`{rel}` is not a relative path"),
                "an include names a file in this repository, relative to the including file",
            );
        }
        // Relative to the including file's directory (a template cannot include files).
        let base = match &self.origins_of_files[from] {
            Origin::Disk(p) => p.parent().map_or_else(|| disk.root.clone(), Path::to_path_buf),
            _ => return fail(self, format!("cannot include `{rel}` here"), "a template cannot include files"),
        };
        let target = base.join(rel);
        let name = display_name(&self.files[from].name, rel);
        let canonical = match target.canonicalize() {
            Ok(c) => c,
            Err(e) => {
                return fail(
                    self,
                    format!("cannot read `{rel}`: {}", io_reason(&e)),
                    &format!("paths are relative to the including file, here {}", base.display()),
                );
            }
        };
        // Checked on the real path, so that neither `..` nor a symbolic link reaches out of
        // the repository (the server reads includes from checkouts of other people's code).
        if !canonical.starts_with(&disk.root) {
            return fail(
                self,
                format!("`{rel}` is outside the repository"),
                &format!("includes must stay within {}", disk.root.display()),
            );
        }
        if std::fs::metadata(&canonical).is_ok_and(|m| m.len() > super::MAX_FILE_BYTES) {
            return fail(self, format!("`{rel}` is larger than 1 MiB"), "a pipeline file may have at most 1 MiB");
        }
        match std::fs::read_to_string(&canonical) {
            Ok(text) => Some((Origin::Disk(canonical), name, text)),
            Err(e) => fail(self, format!("cannot read `{rel}`: {}", io_reason(&e)), "the include must be a text file"),
        }
    }
}

/// `ci/common.yml` included from `sub/.orch.yml` is shown as `sub/ci/common.yml`: the name a
/// person can open from where they ran orch.
fn display_name(from: &str, rel: &str) -> String {
    let mut out = PathBuf::new();
    for c in Path::new(from).parent().unwrap_or(Path::new("")).join(rel).components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out.display().to_string()
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// Merges `over` (from file `file`) into `into` at `path`, recording where each replaced or
/// added node came from.
fn merge(into: &mut Node, over: Node, path: &mut Vec<Seg>, file: usize, origins: &mut Vec<(Vec<Seg>, usize)>) {
    match (into, over) {
        (Node::Map(base), Node::Map(entries)) => {
            // Keys are looked up among the entries that were there before this file: a key
            // written twice in one file stays twice, for the loader to report.
            let before = base.len();
            let mut seen: Vec<String> = Vec::new();
            for (k, v) in entries {
                path.push(Seg::Key(k.clone()));
                if seen.contains(&k) {
                    // Written twice in this file: kept twice, for the loader to report.
                    base.push((k, v));
                    path.pop();
                    continue;
                }
                seen.push(k.clone());
                match base[..before].iter_mut().find(|(bk, _)| *bk == k) {
                    Some((_, slot)) if matches!((&*slot, &v), (Node::Map(_), Node::Map(_))) => {
                        merge(slot, v, path, file, origins)
                    }
                    Some((_, slot)) => {
                        *slot = v;
                        record(origins, path, file);
                    }
                    None => {
                        base.push((k, v));
                        record(origins, path, file);
                    }
                }
                path.pop();
            }
        }
        (slot, over) => {
            *slot = over;
            record(origins, path, file);
        }
    }
}

fn record(origins: &mut Vec<(Vec<Seg>, usize)>, path: &[Seg], file: usize) {
    origins.retain(|(p, _)| !p.starts_with(path));
    origins.push((path.to_vec(), file));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Seg {
        Seg::Key(s.into())
    }

    #[test]
    fn merge_is_deep_for_mappings_and_replaces_the_rest() {
        let mut out = Node::Map(Vec::new());
        let mut origins = Vec::new();
        let a = yaml::parse("env: {A: 1, B: 2}\nsteps: {t: {image: x, commands: [a, b]}}\n").unwrap();
        let b = yaml::parse("env: {B: 3}\nsteps: {t: {commands: [c]}}\n").unwrap();
        merge(&mut out, a, &mut Vec::new(), 1, &mut origins);
        merge(&mut out, b, &mut Vec::new(), 0, &mut origins);
        let want = yaml::parse("env: {A: 1, B: 3}\nsteps: {t: {image: x, commands: [c]}}\n").unwrap();
        assert_eq!(out, want);
        let r = Resolved { doc: out, files: Vec::new(), diags: Vec::new(), origins };
        assert_eq!(r.file_of(&[k("steps"), k("t"), k("image")]), 1);
        assert_eq!(r.file_of(&[k("steps"), k("t"), k("commands"), Seg::Index(0)]), 0);
        assert_eq!(r.file_of(&[k("env"), k("A")]), 1);
        assert_eq!(r.file_of(&[k("env"), k("B")]), 0);
        assert_eq!(r.file_of(&[k("stages")]), 0);
    }

    #[test]
    fn duplicate_keys_in_one_file_survive_a_merge() {
        let mut out = yaml::parse("steps: {a: {image: x}}\n").unwrap();
        let over = yaml::parse("steps:\n  b: {}\n  b: {}\n").unwrap();
        merge(&mut out, over, &mut Vec::new(), 0, &mut Vec::new());
        let Node::Map(top) = &out else { panic!() };
        let Node::Map(steps) = &top[0].1 else { panic!() };
        assert_eq!(steps.len(), 3);
        // Also when the key was there before: the file's second one stays a second one.
        let mut out = yaml::parse("env: {X: zero}\n").unwrap();
        merge(&mut out, yaml::parse("env: {X: one, X: two}\n").unwrap(), &mut Vec::new(), 0, &mut Vec::new());
        assert_eq!(out, yaml::parse("env: {X: one, X: two}\n").unwrap());
    }

    #[test]
    fn names_are_relative_to_the_including_file() {
        assert_eq!(display_name("sub/.orch.yml", "ci/a.yml"), "sub/ci/a.yml");
        assert_eq!(display_name(".orch.yml", "./ci/a.yml"), "ci/a.yml");
        assert_eq!(display_name("sub/ci/a.yml", "../b.yml"), "sub/b.yml");
        assert_eq!(display_name("a.yml", "../b.yml"), "../b.yml");
    }
}
