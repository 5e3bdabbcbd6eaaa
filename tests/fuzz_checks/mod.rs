//! The invariants the fuzz targets check, in one place: included by the cargo-fuzz targets
//! (`fuzz/fuzz_targets/*.rs`, `#[path]`) and by `tests/fuzz_corpora.rs`, which replays
//! every corpus file on the stable toolchain. Each check takes the raw input and panics
//! when an invariant does not hold. See `fuzz/README.md` for the input formats.

// Each fuzz target includes this whole file and uses one check.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use orch::pipeline::ConfigError;
use orch::pipeline::interp::{self, Part};
use orch::server::webhook::{self, Action};

/// A check: panics when the input breaks an invariant.
pub type Check = fn(&[u8]);

/// Every target's name and check, in the order of `fuzz/README.md`.
pub const TARGETS: &[(&str, Check)] =
    &[("load", load), ("webhook", webhook), ("dotenv", dotenv), ("extract", extract), ("interp", interp)];

// ---------------------------------------------------------------------------------------
// load: the `.orch.yml` loader.

/// `parse_str` on the input (UTF-8 only: a pipeline file is text). Never panics; an error
/// is the list of diagnostics, rendered (and renderable again) without panicking, each
/// position inside the file. A pipeline that loads is also planned for a push, which must
/// not panic either.
pub fn load(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match orch::pipeline::parse_str("fuzz.yml", text) {
        Ok(pipeline) => {
            let _ = format!("{pipeline:?}");
            let ctx = orch::plan::Context {
                event: Some(orch::pipeline::Event::Push),
                branch: Some("main".into()),
                commit: "0123456789abcdef0123456789abcdef01234567".into(),
                repo: "o/r".into(),
                run_id: "fuzz".into(),
                changed: Some(vec!["src/main.rs".into()]),
                ..Default::default()
            };
            if let Ok(plan) = orch::plan::plan(&pipeline, &ctx, &Default::default()) {
                let _ = format!("{plan:?}");
            }
        }
        Err(e) => {
            let shown = e.to_string();
            let _ = format!("{e:?}");
            let ConfigError::Invalid { file, files, diagnostics, rendered } = &e else {
                panic!("parse_str reads no file, yet: {shown}");
            };
            assert_eq!(file, "fuzz.yml");
            assert_eq!(files.first().map(String::as_str), Some("fuzz.yml"));
            assert!(!diagnostics.is_empty(), "an error without a diagnostic");
            assert_eq!(&shown, rendered);
            // The count line: `fuzz.yml: N problems found[, the first M shown]`.
            let last = rendered.lines().last().unwrap_or_default();
            let count = last.strip_prefix("fuzz.yml: ").and_then(|r| r.split(' ').next()?.parse::<usize>().ok());
            let count = count.unwrap_or_else(|| panic!("no count line: {rendered}"));
            assert!(count >= diagnostics.len(), "{count} problems, {} shown: {rendered}", diagnostics.len());
            if count > diagnostics.len() {
                assert!(last.contains(&format!("the first {} shown", diagnostics.len())), "{last}");
            }
            for d in diagnostics {
                assert!(d.file < files.len(), "diagnostic in file {} of {}", d.file, files.len());
                assert!(rendered.contains(&format!("error: {}", d.message)), "{} not rendered", d.message);
            }
            // Every `--> fuzz.yml:LINE:COLUMN` is inside the file, and the source line shown
            // under it is that line, as YAML counts lines.
            let lines = yaml_lines(text);
            let shown: Vec<&str> = rendered.lines().collect();
            for (i, l) in shown.iter().enumerate() {
                let Some(at) = l.trim_start().strip_prefix("--> fuzz.yml:") else { continue };
                let mut nums = at.split(':').map(|n| n.parse::<usize>().unwrap_or(0));
                let (line, column) = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
                assert!((1..=lines.len() + 1).contains(&line), "line {line} of {} lines: {rendered}", lines.len());
                assert!(column >= 1, "column {column}: {rendered}");
                if shown.get(i + 1).map(|l| l.trim()) == Some("|") {
                    let want = format!("{line} | {}", lines.get(line - 1).copied().unwrap_or(""));
                    assert_eq!(shown.get(i + 2).copied(), Some(want.as_str()), "{rendered}");
                }
            }
        }
    }
}

/// The lines of a YAML text: YAML (1.1, as libyaml reads it) ends a line at `\r\n`, `\n`,
/// `\r`, U+0085, U+2028 or U+2029.
fn yaml_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let end = rest.find(['\r', '\n', '\u{85}', '\u{2028}', '\u{2029}']).unwrap_or(rest.len());
        lines.push(&rest[..end]);
        let brk =
            if rest[end..].starts_with("\r\n") { 2 } else { rest[end..].chars().next().map_or(0, char::len_utf8) };
        rest = &rest[end + brk..];
    }
    lines
}

// ---------------------------------------------------------------------------------------
// webhook: signature check and classification of deliveries.

/// Input: `EVENT\nSECRET\nHEADER\nBODY`, where HEADER is `-` (no header), `@` (the right
/// signature of BODY), `@N:TEXT` (the right signature with TEXT written over it from
/// character N, a near miss) or the header's text as is.
///
/// `verify_signature` is true exactly for `sha256=` and the hex HMAC-SHA256 of the body
/// (either case of hex digits, surrounding white space ignored), computed here through
/// `sign`; `sign`'s own header verifies, and not under another secret. `classify` never
/// panics on any event name and any JSON (the body, or `null` when it is not JSON), ping is
/// `Ping`, other events are ignored, and a run is a push, tag or pull request.
pub fn webhook(data: &[u8]) {
    let mut parts = data.splitn(4, |b| *b == b'\n');
    let mut next = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let (event, secret, spec) = (next(), next(), next());
    let body = data.splitn(4, |b| *b == b'\n').nth(3).unwrap_or_default();
    let secret = secret.as_bytes();

    let right = webhook::sign(secret, body);
    let hex = right.strip_prefix("sha256=").expect("sign writes sha256=");
    assert!(hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{right}");
    assert!(webhook::verify_signature(secret, Some(&right), body), "sign's own header is refused");
    let mut other = secret.to_vec();
    other.push(b'x');
    assert!(!webhook::verify_signature(&other, Some(&right), body), "verified under another secret");

    let header: Option<String> = match spec.as_str() {
        "-" => None,
        s => match s.strip_prefix('@') {
            None => Some(s.to_string()),
            Some("") => Some(right.clone()),
            Some(edit) => {
                let (at, text) = edit.split_once(':').unwrap_or((edit, ""));
                let chars: Vec<char> = right.chars().collect();
                let at = at.parse::<usize>().unwrap_or(0) % (chars.len() + 1);
                let mut h: String = chars[..at].iter().collect();
                h.push_str(text);
                h.extend(chars.iter().skip(at + text.chars().count()));
                Some(h)
            }
        },
    };
    let expected =
        header.as_deref().and_then(|h| h.strip_prefix("sha256=")).is_some_and(|h| h.trim().eq_ignore_ascii_case(hex));
    let got = webhook::verify_signature(secret, header.as_deref(), body);
    assert_eq!(got, expected, "header {header:?} for a body of {} bytes", body.len());

    let payload: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    let action = webhook::classify(&event, &payload);
    let _ = format!("{action:?}");
    match event.as_str() {
        "ping" => assert_eq!(action, Action::Ping),
        "push" | "pull_request" | "check_suite" | "check_run" | "issues" => {}
        _ => assert!(matches!(action, Action::Ignore(_)), "event {event:?} gave {action:?}"),
    }
    match &action {
        Action::Run(run) => {
            assert!(matches!(run.event.as_str(), "push" | "tag" | "pull_request"), "{run:?}");
            assert_eq!(run.event == "tag", run.tag.is_some(), "{run:?}");
            assert_eq!(run.event == "pull_request", run.pr.is_some(), "{run:?}");
            let key = run.concurrency_key.as_deref().unwrap_or_default();
            assert!(key.starts_with(&format!("{}#", run.repo)), "{run:?}");
        }
        Action::CancelPullRequest { .. } => assert_eq!(event, "pull_request"),
        Action::Issue(issue) => {
            assert_eq!(event, "issues");
            assert!(issue.number > 0 || payload.pointer("/issue/number") == Some(&serde_json::json!(0)), "{issue:?}");
        }
        Action::Ping | Action::Ignore(_) => {}
    }
}

// ---------------------------------------------------------------------------------------
// dotenv: secrets files.

/// `parse_dotenv` never panics. A map it reads, written back as `NAME="value"` lines with
/// the escapes it knows, reads back the same. An error is `line N: ...` in one of the
/// known shapes, holding nothing of the file but line numbers and names: a file's content
/// may be a secret.
pub fn dotenv(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match orch::secrets::parse_dotenv(&text) {
        Ok(map) => {
            let sorted: BTreeMap<&String, &String> = map.iter().collect();
            let mut again = String::new();
            for (i, (k, v)) in sorted.into_iter().enumerate() {
                let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n").replace('\t', "\\t");
                // `export ` on every other line: both forms read the same.
                let export = if i % 2 == 1 { "export " } else { "" };
                again.push_str(&format!("{export}{k}=\"{v}\"\n"));
            }
            let back = orch::secrets::parse_dotenv(&again).unwrap_or_else(|e| panic!("{again:?} fails: {e}"));
            assert_eq!(back, map, "written back as {again:?}");
        }
        Err(e) => dotenv_error_reveals_nothing(&e, &text),
    }
}

/// The shapes of `parse_dotenv`'s errors, with `1` for any line number and `K` for a name.
const DOTENV_ERRORS: &[&str] = &[
    "line 1: expected NAME=value",
    "line 1: the name before `=` is not a valid name (letters, digits and `_`, not starting with a digit)",
    "line 1: unexpected text after the closing quote of `K`'s value",
    "line 1: the quoted value of `K` is never closed",
    "line 1: `K` is set again (first on line 1)",
];

/// `msg` with every number replaced by `1` and every name in backquotes by `K`; the
/// numbers and names.
fn dotenv_shape(msg: &str) -> (String, Vec<usize>, Vec<String>) {
    let (mut shape, mut numbers, mut names) = (String::new(), Vec::new(), Vec::new());
    let mut rest = msg;
    while let Some(c) = rest.chars().next() {
        if c.is_ascii_digit() {
            let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            numbers.push(rest[..end].parse().unwrap_or(usize::MAX));
            shape.push('1');
            rest = &rest[end..];
        } else if let Some((name, after)) = rest.strip_prefix('`').and_then(|r| r.split_once('`')) {
            if interp::is_identifier(name) {
                names.push(name.to_string());
                shape.push_str("`K`");
            } else {
                shape.push_str(&format!("`{name}`"));
            }
            rest = after;
        } else {
            shape.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    (shape, numbers, names)
}

fn dotenv_error_reveals_nothing(msg: &str, text: &str) {
    assert!(msg.starts_with("line "), "{msg}");
    let (shape, numbers, names) = dotenv_shape(msg);
    let Some(known) = DOTENV_ERRORS.iter().map(|k| dotenv_shape(k)).find(|k| k.0 == shape) else {
        panic!("an error of an unknown shape (does it quote the file?): {msg}");
    };
    let lines = text.lines().count();
    assert!(numbers.iter().all(|n| (1..=lines).contains(n)), "line numbers of a {lines}-line file: {msg}");
    // Where the shape has the name `K`, a name of the file; elsewhere, the shape's own text.
    for (name, fixed) in names.iter().zip(&known.2) {
        if fixed == "K" {
            assert!(text.contains(name.as_str()), "{name} in {msg}");
        } else {
            assert_eq!(name, fixed, "{msg}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// extract: unpacking artifacts from a container's tar stream.

/// Input: lines, each a setting or an archive entry; names and texts may hold `\n`, `\0`,
/// `\\` and `{OUT}` (the absolute path of a directory beside the destination).
///
/// - `pattern P` (up to 4; `**` when none), `rebase R`, `strip S`;
/// - `mode OCTAL` (default 4755), `format old|gnu|ustar` (default gnu), `prefix P` (the
///   ustar prefix field), for the entries after it;
/// - entries, their names written raw into the header: `F NAME DATA` (file),
///   `L NAME TARGET` (symbolic link), `H NAME TARGET` (hard link), `D NAME` (directory),
///   `C NAME` / `B NAME` (devices), `P NAME` (FIFO), `X NAME KEY=VALUE` (a pax header
///   for the next entry), `N NAME LONGNAME` / `K NAME LONGLINK` (GNU long name and link).
///
/// Whatever the archive holds, `extract_matching` creates nothing outside the destination
/// (the temporary directory around it holds the destination and the untouched `{OUT}`
/// only), unpacks no device, FIFO or socket, no set-id or sticky bit, never copies or links
/// the file beside it in, reports plain relative names, and (in an archive without
/// symbolic links) every file it reports is there.
pub fn extract(data: &[u8]) {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dest = tmp.path().join("dest");
    let outside = tmp.path().join("out");
    std::fs::create_dir(&dest).unwrap();
    std::fs::create_dir(&outside).unwrap();
    // A secret beside the destination: no file unpacked may hold it. Made anew each time, so
    // that the fuzzer, which sees it compared, cannot write it into an archive.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let canary = format!("secret {nanos} beside {}", tmp.path().display()).into_bytes();
    std::fs::write(outside.join("secret"), &canary).unwrap();
    let spec = TarSpec::parse(data, outside.to_str().expect("a UTF-8 temporary path").as_bytes());

    let matchers: Vec<globset::GlobMatcher> =
        spec.patterns.iter().filter_map(|p| orch::exec::artifact_matcher(p).ok()).collect();
    let mut matched = vec![false; matchers.len()];
    let root = orch::confined::Root::open(&dest).unwrap();
    let result = orch::exec::extract_matching(&spec.tar[..], &spec.rebase, &matchers, &root, &mut matched, &spec.strip);

    // Nothing beside the destination, and what was beside it is as it was.
    let mut around: Vec<String> =
        std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    around.sort();
    assert_eq!(around, ["dest", "out"], "written beside the destination: {result:?}");
    let out: Vec<_> = std::fs::read_dir(&outside).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(out, ["secret"], "written outside: {result:?}");
    let secret = std::fs::symlink_metadata(outside.join("secret")).unwrap();
    assert!(secret.is_file() && std::fs::read(outside.join("secret")).unwrap() == canary, "the outside file changed");

    for (path, meta) in walk(&dest) {
        let t = meta.file_type();
        assert!(
            !(t.is_fifo() || t.is_socket() || t.is_char_device() || t.is_block_device()),
            "{} is a device, FIFO or socket",
            path.display()
        );
        if t.is_file() {
            assert!(meta.ino() != secret.ino() || meta.dev() != secret.dev(), "{} is the outside file", path.display());
            assert_eq!(meta.permissions().mode() & 0o7000, 0, "{} keeps a set-id or sticky bit", path.display());
            let content = std::fs::read(&path).unwrap();
            assert!(
                !content.windows(canary.len()).any(|w| *w == canary[..]),
                "{} holds the outside file",
                path.display()
            );
        }
    }
    if let Ok((files, unresolved)) = &result {
        for name in files.iter().map(|f| &f.path).chain(unresolved) {
            let plain = name.split('/').all(|c| !matches!(c, "" | "." | ".."));
            assert!(plain, "{name:?} is reported, not a plain relative name");
        }
        // Through symbolic links a later entry can replace a directory an earlier one was
        // written through (`e -> .`, `e/h`, then `e` again): only without links is every
        // file reported certainly still there.
        if !spec.symlinks {
            for f in files {
                let p = dest.join(&f.path);
                assert!(std::fs::symlink_metadata(&p).is_ok(), "{} is reported but absent", f.path);
            }
        }
    }
}

/// Everything under `dir`, links not followed.
fn walk(dir: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                todo.push(p.clone());
            }
            out.push((p, meta));
        }
    }
    out
}

/// An archive and the arguments of `extract_matching`, read from the input format of
/// [`extract`].
struct TarSpec {
    tar: Vec<u8>,
    patterns: Vec<String>,
    rebase: String,
    strip: String,
    /// Whether the archive has symbolic links.
    symlinks: bool,
}

#[derive(Clone, Copy)]
enum Format {
    Old,
    Gnu,
    Ustar,
}

impl TarSpec {
    fn parse(data: &[u8], out_dir: &[u8]) -> TarSpec {
        let mut spec = TarSpec {
            tar: Vec::new(),
            patterns: Vec::new(),
            rebase: String::new(),
            strip: String::new(),
            symlinks: false,
        };
        let mut builder = tar::Builder::new(Vec::new());
        let (mut mode, mut format, mut prefix) = (0o4755u32, Format::Gnu, Vec::new());
        for line in data.split(|b| *b == b'\n') {
            let mut words = line.splitn(3, |b| *b == b' ');
            let (word, a, b) = (words.next().unwrap_or_default(), words.next(), words.next());
            let a = a.map(|a| unescape(a, out_dir)).unwrap_or_default();
            let b = b.map(|b| unescape(b, out_dir)).unwrap_or_default();
            let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
            let kind = match word {
                b"pattern" if spec.patterns.len() < 4 => {
                    spec.patterns.push(text(&a));
                    continue;
                }
                b"rebase" => {
                    spec.rebase = text(&a);
                    continue;
                }
                b"strip" => {
                    spec.strip = text(&a);
                    continue;
                }
                b"mode" => {
                    mode = u32::from_str_radix(&text(&a), 8).unwrap_or(0o644) & 0o7777;
                    continue;
                }
                b"format" => {
                    format = match &a[..] {
                        b"old" => Format::Old,
                        b"ustar" => Format::Ustar,
                        _ => Format::Gnu,
                    };
                    continue;
                }
                b"prefix" => {
                    prefix = a;
                    continue;
                }
                b"F" => tar::EntryType::Regular,
                b"L" => tar::EntryType::Symlink,
                b"H" => tar::EntryType::Link,
                b"D" => tar::EntryType::Directory,
                b"C" => tar::EntryType::Char,
                b"B" => tar::EntryType::Block,
                b"P" => tar::EntryType::Fifo,
                b"X" => tar::EntryType::XHeader,
                b"N" => tar::EntryType::GNULongName,
                b"K" => tar::EntryType::GNULongLink,
                _ => continue,
            };
            spec.symlinks |= kind == tar::EntryType::Symlink;
            let mut h = match format {
                Format::Old => tar::Header::new_old(),
                Format::Gnu => tar::Header::new_gnu(),
                Format::Ustar => tar::Header::new_ustar(),
            };
            // Written raw: the builder's own setters refuse `..` and absolute names.
            let old = h.as_old_mut();
            let n = a.len().min(old.name.len());
            old.name[..n].copy_from_slice(&a[..n]);
            let content: Vec<u8> = match kind {
                tar::EntryType::Regular | tar::EntryType::GNULongName | tar::EntryType::GNULongLink => b,
                tar::EntryType::XHeader => pax_record(&b),
                _ => {
                    let n = b.len().min(old.linkname.len());
                    old.linkname[..n].copy_from_slice(&b[..n]);
                    Vec::new()
                }
            };
            if let (Some(u), Format::Ustar) = (h.as_ustar_mut(), format) {
                let n = prefix.len().min(u.prefix.len());
                u.prefix[..n].copy_from_slice(&prefix[..n]);
            }
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(content.len() as u64);
            h.set_cksum();
            builder.append(&h, &content[..]).expect("writing to memory");
        }
        if spec.patterns.is_empty() {
            spec.patterns.push("**".into());
        }
        spec.tar = builder.into_inner().expect("writing to memory");
        spec
    }
}

/// `KEY=VALUE` as one pax record: `LENGTH KEY=VALUE\n`, the length counting itself.
fn pax_record(kv: &[u8]) -> Vec<u8> {
    let body = kv.len() + 2; // the space and the newline
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut r = format!("{len} ").into_bytes();
    r.extend_from_slice(kv);
    r.push(b'\n');
    r
}

fn unescape(s: &[u8], out_dir: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i..].starts_with(b"{OUT}") {
            out.extend_from_slice(out_dir);
            i += 5;
            continue;
        }
        match (s[i], s.get(i + 1)) {
            (b'\\', Some(b'n')) => out.push(b'\n'),
            (b'\\', Some(b'0')) => out.push(0),
            (b'\\', Some(b'\\')) => out.push(b'\\'),
            (c, _) => {
                out.push(c);
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    out
}

// ---------------------------------------------------------------------------------------
// interp: `${VAR}` and `$$`.

/// `parse` never panics and loses nothing: its parts written back (`$$` for a `Dollar`,
/// `${NAME}` for a `Var`) are the input. `expand` agrees with `parse`: with a lookup that
/// returns a fixed value it is the parts with each variable replaced by that value (not
/// expanded again), looking up the names `references` gives, in order; with a lookup that
/// knows nothing it fails on the first variable; on a string `parse` refuses it gives
/// `parse`'s error and looks nothing up. Any text with each `$` doubled expands to itself.
pub fn interp(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    let s = s.as_ref();
    const VALUE: &str = "<${V}$$>";
    let mut asked = Vec::new();
    let expanded = interp::expand(s, |name| {
        asked.push(name.to_string());
        Some(VALUE.to_string())
    });
    let unknown = interp::expand(s, |_| None);
    match interp::parse(s) {
        Ok(parts) => {
            let mut back = String::new();
            let mut want = String::new();
            let mut names = Vec::new();
            for p in &parts {
                match p {
                    Part::Lit(l) => {
                        assert!(!l.is_empty(), "an empty literal in {parts:?}");
                        assert!(*l == "$" || !l.contains('$'), "a `$` inside the literal {l:?}");
                        back.push_str(l);
                        want.push_str(l);
                    }
                    Part::Dollar => {
                        back.push_str("$$");
                        want.push('$');
                    }
                    Part::Var(v) => {
                        let valid = v.strip_prefix("hash:").map_or_else(|| interp::is_identifier(v), |f| !f.is_empty());
                        assert!(valid && !v.contains('}'), "variable name {v:?}");
                        back.push_str(&format!("${{{v}}}"));
                        want.push_str(VALUE);
                        names.push(v.to_string());
                    }
                }
            }
            assert_eq!(back, s, "parse lost something: {parts:?}");
            assert_eq!(expanded.as_deref(), Ok(want.as_str()));
            assert_eq!(asked, names);
            assert_eq!(interp::references(s).unwrap(), names);
            match names.first() {
                None => assert_eq!(unknown.as_deref(), Ok(want.as_str())),
                Some(first) => assert_eq!(unknown, Err(format!("unknown variable `${{{first}}}`"))),
            }
        }
        Err(e) => {
            assert_eq!(expanded, Err(e.to_string()));
            assert_eq!(unknown, Err(e.to_string()));
            assert!(asked.is_empty(), "looked up {asked:?} in a string parse refuses");
        }
    }
    let escaped = s.replace('$', "$$");
    assert_eq!(interp::expand(&escaped, |v| panic!("looked up {v} in {escaped:?}")).as_deref(), Ok(s));
}
