//! `orch import`: GitHub Actions workflows translated into one `.orch.yml`.
//!
//! The mapping follows docs/translate.md key by key. Whatever has no orch equivalent (most
//! `uses:` actions, expressions beyond the simple ones) is left out and reported as a
//! [`Finding`] at its line and column in the workflow. The generated text is loaded by the
//! pipeline loader before it is returned: output that does not pass `orch validate` is a
//! bug of the importer, and [`ImportError::Invalid`] says so.

pub mod emit;
pub mod expr;

use std::collections::{BTreeMap, HashSet};

use emit::{Entry, Item, Out};
use expr::{Expr, Segment};

use crate::pipeline::yaml::{self, Node, Seg};

/// The image of jobs that run on a GitHub runner rather than in a `container:`: one of
/// the two images orch's machines build locally (runners/images), with bash and git.
pub const DEFAULT_IMAGE: &str = "debian:bookworm";

/// One workflow file: its name (as given, for messages) and its text.
#[derive(Debug, Clone, Copy)]
pub struct Workflow<'a> {
    pub file: &'a str,
    pub text: &'a str,
}

/// How to translate.
#[derive(Debug, Clone)]
pub struct Options {
    /// The image of jobs without `container:`.
    pub image: String,
}

impl Default for Options {
    fn default() -> Self {
        Options { image: DEFAULT_IMAGE.to_string() }
    }
}

/// How much a finding matters: a warning is something the pipeline does differently or
/// not at all; a note is a difference that needs nothing (a checkout), or a translation
/// worth checking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Note,
}

/// Something of a workflow that was not translated, or not exactly.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub severity: Severity,
    /// The job it is in, when it is in one.
    pub job: Option<String>,
    pub message: String,
    /// What to write instead.
    pub help: Option<String>,
}

impl Finding {
    /// `file:line:column: warning: message`, and the help on a line of its own.
    pub fn render(&self) -> String {
        let level = match self.severity {
            Severity::Warning => "warning",
            Severity::Note => "note",
        };
        let mut s = format!("{}:{}:{}: {level}: {}\n", self.file, self.line, self.column, self.message);
        if let Some(h) = &self.help {
            s.push_str(&format!("  = help: {h}\n"));
        }
        s
    }
}

/// The translation: the `.orch.yml` text, what was not translated, and how many steps.
#[derive(Debug, Clone)]
pub struct Imported {
    pub text: String,
    pub findings: Vec<Finding>,
    pub steps: usize,
}

/// Why nothing could be translated.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{file}:{line}:{column}: {message}")]
    Syntax { file: String, line: usize, column: usize, message: String },
    #[error("{file}: not a GitHub Actions workflow: {reason}")]
    NotAWorkflow { file: String, reason: String },
    #[error(
        "orch import wrote a pipeline that does not pass `orch validate`; this is a bug of orch import, \
         please report it with the workflow. The problems:\n{rendered}\nThe pipeline:\n{text}"
    )]
    Invalid { rendered: String, text: String },
}

/// Translates the workflows into one `.orch.yml`.
pub fn import(workflows: &[Workflow<'_>], opts: &Options) -> Result<Imported, ImportError> {
    let mut docs = Vec::new();
    for w in workflows {
        let doc = yaml::parse(w.text).map_err(|e| ImportError::Syntax {
            file: w.file.to_string(),
            line: e.pos.map_or(1, |p| p.line),
            column: e.pos.map_or(1, |p| p.column),
            message: match e.help {
                Some(h) => format!("{} ({h})", e.message),
                None => e.message,
            },
        })?;
        let not = |reason: &str| ImportError::NotAWorkflow { file: w.file.to_string(), reason: reason.to_string() };
        let Node::Map(top) = &doc else { return Err(not("the file is not a mapping")) };
        match top.iter().find(|(k, _)| k == "jobs") {
            Some((_, Node::Map(jobs))) if !jobs.is_empty() => {}
            Some(_) => return Err(not("`jobs` is not a mapping of jobs")),
            None => return Err(not("it has no `jobs`")),
        }
        docs.push(doc);
    }
    let multi = workflows.len() > 1;
    let names = step_names(workflows, &docs);
    let mut findings = Vec::new();
    let mut files = Vec::new();
    for (i, (w, doc)) in workflows.iter().zip(&docs).enumerate() {
        let mut t = Translator { file: w.file, src: w.text, findings: &mut findings, opts, names: &names[i], multi };
        files.push(t.workflow(doc));
    }

    // One `on` for the whole file: the workflows' own when they agree; otherwise none, and
    // each step keeps the events of its workflow in `when.event`.
    let same_on = files.windows(2).all(|p| p[0].on == p[1].on);
    let mut root = Out::map();
    if same_on {
        if let Some(on) = files.first().and_then(|f| f.on.clone()) {
            root.put("on", on);
        }
    } else {
        for (w, f) in workflows.iter().zip(&files) {
            findings.push(Finding {
                file: w.file.to_string(),
                line: yaml::locate(w.text, &[Seg::Key("on".into())], true).map_or(1, |p| p.line),
                column: yaml::locate(w.text, &[Seg::Key("on".into())], true).map_or(1, |p| p.column),
                severity: Severity::Warning,
                job: None,
                message: "the workflows' `on:` differ: the pipeline has no `on` (every event starts it), and this \
                          workflow's steps get `when.event` for its events; its branch, tag and path filters are dropped"
                    .into(),
                help: Some(format!("events of this workflow: {}", f.events.join(", "))),
            });
        }
    }
    if !multi && let Some(env) = files.first().map(|f| f.env.clone()).filter(|e| !e.is_empty_map()) {
        root.put("env", env);
    }
    let mut steps = Out::map();
    let mut count = 0;
    for f in files {
        for (name, mut step) in f.steps {
            if !same_on {
                add_events(&mut step, &f.events);
            }
            steps.put_commented(step.comments, name, step.value);
            count += 1;
        }
    }
    root.put("steps", steps);

    let mut header = vec![".orch.yml translated by `orch import` from GitHub Actions:".to_string()];
    for (w, d) in workflows.iter().zip(&docs) {
        match d.get("name").and_then(Node::as_text) {
            Some(n) => header.push(format!("  {} (workflow \"{n}\")", w.file)),
            None => header.push(format!("  {}", w.file)),
        }
    }
    header.push("What was not translated is in the report `orch import` printed, by workflow line.".into());
    let text = emit::document(&header, &root);
    if let Err(e) = crate::pipeline::parse_str(".orch.yml", &text) {
        return Err(ImportError::Invalid { rendered: e.to_string(), text });
    }
    Ok(Imported { text, findings, steps: count })
}

impl Node {
    fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    /// A scalar's text (numbers as written), `None` for null and collections.
    fn as_text(&self) -> Option<String> {
        match self {
            Node::Str(s) => Some(s.clone()),
            Node::Int(i) => Some(i.to_string()),
            Node::Float(_, t) => Some(t.clone()),
            Node::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

/// The orch step name of every job, per workflow: the job's id made a valid step name,
/// prefixed with the workflow's file stem when another workflow (or job) has it too.
fn step_names(workflows: &[Workflow<'_>], docs: &[Node]) -> Vec<BTreeMap<String, String>> {
    let ids: Vec<Vec<String>> = docs
        .iter()
        .map(|d| match d.get("jobs") {
            Some(Node::Map(jobs)) => jobs.iter().map(|(k, _)| k.clone()).collect(),
            _ => Vec::new(),
        })
        .collect();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for list in &ids {
        for id in list {
            *seen.entry(step_name(id)).or_default() += 1;
        }
    }
    let mut taken = HashSet::new();
    let mut out = Vec::new();
    for (w, list) in workflows.iter().zip(&ids) {
        let stem = std::path::Path::new(w.file).file_stem().and_then(|s| s.to_str()).unwrap_or("workflow");
        let mut map = BTreeMap::new();
        for id in list {
            let base = step_name(id);
            let mut name = if seen[&base] > 1 { step_name(&format!("{stem}-{base}")) } else { base };
            let mut n = 2;
            while !taken.insert(name.clone()) {
                name = format!("{}-{n}", step_name(&format!("{stem}-{}", step_name(id))));
                n += 1;
            }
            map.insert(id.clone(), name);
        }
        out.push(map);
    }
    out
}

/// `[A-Za-z0-9][A-Za-z0-9._-]*`, as orch's step names are.
fn step_name(id: &str) -> String {
    let s: String = id.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' }).collect();
    let s = s.trim_start_matches(['.', '_', '-']);
    if s.is_empty() { "job".into() } else { s.to_string() }
}

/// A variable name, `[A-Za-z_][A-Za-z0-9_]*`: `python-version` becomes `python_version`.
fn var_name(s: &str) -> String {
    let v: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if v.is_empty() || v.starts_with(|c: char| c.is_ascii_digit()) { format!("_{v}") } else { v }
}

/// A service name is a host name: lowercase letters, digits and `-`, at most 63.
fn host_name(s: &str) -> String {
    let h: String =
        s.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).take(63).collect();
    let h = h.trim_matches('-');
    if h.is_empty() { "service".into() } else { h.to_string() }
}

/// `s` as one shell word.
fn sh_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "_./-:=@%+,".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Literal text for an interpolated field: a `$` that orch would read as the start of
/// `${NAME}` or `$$` is doubled. `before_expr`: an expression follows this text.
fn field_text(s: &str, before_expr: bool) -> String {
    let mut out = String::with_capacity(s.len());
    let chars: Vec<char> = s.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        out.push(*c);
        let next = chars.get(i + 1);
        if *c == '$' && (matches!(next, Some('{' | '$')) || (next.is_none() && before_expr)) {
            out.push('$');
        }
    }
    out
}

fn add_events(step: &mut Entry, events: &[String]) {
    let Out::Map(entries) = &mut step.value else { return };
    let list = Out::strs(events.iter().cloned());
    match entries.iter_mut().find(|e| e.key == "when") {
        Some(when) if when.value.get("event").is_none() => when.value.put("event", list),
        Some(_) => {}
        None => {
            let at = entries.iter().position(|e| e.key == "commands").unwrap_or(entries.len());
            let mut when = Out::map();
            when.put("event", list);
            entries.insert(at, Entry { comments: vec![], key: "when".into(), value: when });
        }
    }
}

/// What one workflow becomes.
struct FileOut {
    on: Option<Out>,
    /// orch's events it runs for, for `when.event` when workflows are merged.
    events: Vec<String>,
    env: Out,
    steps: Vec<(String, Entry)>,
}

struct Translator<'a> {
    file: &'a str,
    src: &'a str,
    findings: &'a mut Vec<Finding>,
    opts: &'a Options,
    /// Job id to step name.
    names: &'a BTreeMap<String, String>,
    multi: bool,
}

/// What a job's translation needs to know while it goes.
#[derive(Default)]
struct JobCtx {
    id: String,
    /// Matrix keys (GitHub's spelling) to variable names.
    vars: BTreeMap<String, String>,
    /// `env` names defined for the step (workflow and job), usable as `${NAME}`.
    env: HashSet<String>,
    secrets: Vec<String>,
    /// `export NAME="$SECRET"` lines for `env` entries that are secrets of another name.
    exports: Vec<String>,
}

fn key(k: &str) -> Seg {
    Seg::Key(k.to_string())
}

fn child(path: &[Seg], seg: Seg) -> Vec<Seg> {
    let mut p = path.to_vec();
    p.push(seg);
    p
}

impl Translator<'_> {
    fn report(&mut self, path: &[Seg], severity: Severity, job: Option<&str>, message: String, help: Option<String>) {
        // The key's position; a path that cannot be found (a list item) is shown at its
        // nearest ancestor.
        let mut p = path;
        let pos = loop {
            if p.is_empty() {
                break None;
            }
            if let Some(pos) = yaml::locate(self.src, p, matches!(p.last(), Some(Seg::Key(_)))) {
                break Some(pos);
            }
            p = &p[..p.len() - 1];
        };
        self.findings.push(Finding {
            file: self.file.to_string(),
            line: pos.map_or(1, |p| p.line),
            column: pos.map_or(1, |p| p.column),
            severity,
            job: job.map(str::to_string),
            message,
            help,
        });
    }

    fn warn(&mut self, path: &[Seg], jc: &JobCtx, message: String, help: Option<String>) {
        let job = (!jc.id.is_empty()).then(|| jc.id.clone());
        self.report(path, Severity::Warning, job.as_deref(), message, help);
    }

    fn note(&mut self, path: &[Seg], jc: &JobCtx, message: String, help: Option<String>) {
        let job = (!jc.id.is_empty()).then(|| jc.id.clone());
        self.report(path, Severity::Note, job.as_deref(), message, help);
    }

    fn workflow(&mut self, doc: &Node) -> FileOut {
        let none = JobCtx::default();
        let (on, events) = match doc.get("on").or_else(|| doc.get("true")) {
            Some(n) => {
                let (o, e) = self.on(n);
                (Some(o), e)
            }
            None => (None, vec!["push".into(), "pull_request".into(), "tag".into(), "manual".into()]),
        };
        let wf_path: [Seg; 0] = [];
        let mut wf = JobCtx::default();
        let env = match doc.get("env") {
            Some(n) => self.env(n, &[key("env")], &mut wf, false),
            None => Out::map(),
        };
        let mut defaults_run = doc.get("defaults").and_then(|d| d.get("run")).cloned();
        if let Some(Node::Map(m)) = &defaults_run
            && m.is_empty()
        {
            defaults_run = None;
        }
        for (k, _) in match doc {
            Node::Map(m) => m.as_slice(),
            _ => &[],
        } {
            match k.as_str() {
                "name" | "on" | "true" | "env" | "jobs" | "defaults" | "permissions" | "run-name" => {}
                "concurrency" => self.note(
                    &child(&wf_path, key(k)),
                    &none,
                    "`concurrency` is not translated".into(),
                    Some(
                        "the server cancels a branch's or pull request's older run by itself (`cancel_superseded`)"
                            .into(),
                    ),
                ),
                other => self.warn(&child(&wf_path, key(other)), &none, format!("`{other}` is not translated"), None),
            }
        }
        let mut steps = Vec::new();
        if let Some(Node::Map(jobs)) = doc.get("jobs") {
            for (id, job) in jobs {
                let step = self.job(id, job, &wf, &env, defaults_run.as_ref());
                let name = self.names.get(id).cloned().unwrap_or_else(|| step_name(id));
                steps.push((name, step));
            }
        }
        FileOut { on, events, env, steps }
    }

    /// `on:` to orch's `on`, and the orch events it accepts.
    fn on(&mut self, node: &Node) -> (Out, Vec<String>) {
        let path = [key(if self.src_has_on_key() { "on" } else { "true" })];
        let none = JobCtx::default();
        let list: Vec<(String, Node)> = match node {
            Node::Str(s) => vec![(s.clone(), Node::Null)],
            Node::Seq(items) => items.iter().filter_map(|i| i.as_text()).map(|s| (s, Node::Null)).collect(),
            Node::Map(m) => m.clone(),
            _ => Vec::new(),
        };
        let mut out = Out::map();
        let mut events = Vec::new();
        let mut manual = false;
        for (event, value) in &list {
            let p = child(&path, key(event));
            match event.as_str() {
                "push" => {
                    let f = self.filters(value, &p, &["branches", "tags", "paths"]);
                    out.put("push", f);
                    events.extend(["push".to_string(), "tag".to_string()]);
                }
                "pull_request" | "pull_request_target" => {
                    if event == "pull_request_target" {
                        self.warn(
                            &p,
                            &none,
                            "`pull_request_target` becomes `pull_request`: orch runs the pull request's own commit, \
                             and a pull request from a fork gets no secrets"
                                .into(),
                            None,
                        );
                    }
                    if out.get("pull_request").is_none() {
                        let f = self.filters(value, &p, &["branches", "paths"]);
                        out.put("pull_request", f);
                        events.push("pull_request".into());
                    }
                }
                "workflow_dispatch" => {
                    manual = true;
                    if value.get("inputs").is_some() {
                        self.warn(
                            &child(&p, key("inputs")),
                            &none,
                            "`workflow_dispatch.inputs` are not translated".into(),
                            Some("a manual run takes `orch ci --env NAME=VALUE` instead".into()),
                        );
                    }
                }
                "schedule" => {
                    // GitHub reads its crons in UTC, orch's default zone.
                    let mut crons: Vec<String> = Vec::new();
                    let items = match value {
                        Node::Seq(items) => items.as_slice(),
                        _ => &[],
                    };
                    for (i, item) in items.iter().enumerate() {
                        let Some(cron) = item.get("cron").and_then(Node::as_text) else { continue };
                        match crate::pipeline::cron::check_expr(&cron) {
                            Ok(_) if !crons.contains(&cron) => crons.push(cron),
                            Ok(_) => {}
                            Err(why) => self.warn(
                                &child(&child(&p, Seg::Index(i)), key("cron")),
                                &none,
                                format!("`{cron}` is not a cron expression orch reads: {why}"),
                                None,
                            ),
                        }
                    }
                    if !crons.is_empty() {
                        let list = crons
                            .into_iter()
                            .map(|c| {
                                let mut m = Out::map();
                                m.put("cron", Out::str(c));
                                Item { comments: vec![], value: m }
                            })
                            .collect();
                        out.put("schedule", Out::Seq(list));
                        events.push("schedule".into());
                    }
                }
                other => self.warn(&p, &none, format!("the event `{other}` has no equivalent"), None),
            }
        }
        if manual {
            events.push("manual".into());
            if out.is_empty_map() {
                out.put("manual", Out::Raw("true".into()));
            }
        } else {
            out.put("manual", Out::Raw("false".into()));
        }
        (out, events)
    }

    /// Whether the workflow writes `on:` (YAML 1.1 tools read an unquoted `on` as true; the
    /// parser here reads YAML 1.2, so it is the key `on`).
    fn src_has_on_key(&self) -> bool {
        yaml::locate(self.src, &[key("on")], true).is_some()
    }

    /// `branches`, `tags`, `paths` and their `-ignore` to orch's pattern lists.
    fn filters(&mut self, node: &Node, path: &[Seg], allowed: &[&str]) -> Out {
        let mut out = Out::map();
        let none = JobCtx::default();
        let Node::Map(m) = node else { return out };
        for (k, _) in m {
            let base = k.strip_suffix("-ignore").unwrap_or(k);
            if !allowed.contains(&base) {
                let help = (k == "types").then(|| {
                    "orch runs `opened`, `synchronize`, `reopened` and `ready_for_review`, and cancels on `closed`"
                        .to_string()
                });
                self.note(&child(path, key(k)), &none, format!("`{k}` is not translated"), help);
            }
        }
        for what in allowed {
            let ignore = format!("{what}-ignore");
            let mut include = Vec::new();
            let mut exclude = Vec::new();
            for (k, into_exclude) in [(*what, false), (ignore.as_str(), true)] {
                let Some(n) = node.get(k) else { continue };
                let items: Vec<String> = match n {
                    Node::Seq(s) => s.iter().filter_map(Node::as_text).collect(),
                    other => other.as_text().into_iter().collect(),
                };
                for pat in items {
                    if pat.contains('+') {
                        self.warn(
                            &child(path, key(k)),
                            &none,
                            format!("`{pat}`: `+` is a plain character in orch's patterns, not \"one or more\""),
                            Some("write the pattern with `*` (`v[0-9]*`)".into()),
                        );
                    }
                    match pat.strip_prefix('!') {
                        Some(neg) if !into_exclude => exclude.push(neg.to_string()),
                        _ if into_exclude => exclude.push(pat),
                        _ => include.push(pat),
                    }
                }
            }
            if include.is_empty() && exclude.is_empty() {
                continue;
            }
            if exclude.is_empty() {
                out.put(*what, Out::strs(include));
            } else {
                let mut both = Out::map();
                if !include.is_empty() {
                    both.put("include", Out::strs(include));
                }
                both.put("exclude", Out::strs(exclude));
                out.put(*what, both);
            }
        }
        out
    }

    /// An `env` mapping to orch's (interpolated values); `${{ secrets.X }}` values become
    /// secrets of the step. `in_job`: matrix values are in scope.
    fn env(&mut self, node: &Node, path: &[Seg], jc: &mut JobCtx, in_job: bool) -> Out {
        let mut out = Out::map();
        let Node::Map(m) = node else {
            self.warn(path, jc, "`env` is not a mapping (an expression?): not translated".into(), None);
            return out;
        };
        for (name, v) in m {
            let p = child(path, key(name));
            if var_name(name) != *name {
                self.warn(&p, jc, format!("`{name}` is not a valid variable name for orch: left out"), None);
                continue;
            }
            let value = match v {
                Node::Null => Out::str(""),
                Node::Int(_) | Node::Float(..) | Node::Bool(_) => Out::Raw(v.as_text().unwrap_or_default()),
                Node::Str(s) => {
                    if let Some(secret) = secret_ref(s) {
                        if !jc.secrets.contains(&secret) {
                            jc.secrets.push(secret.clone());
                        }
                        if secret != *name {
                            jc.exports.push(format!("export {name}=\"${secret}\""));
                        }
                        continue;
                    }
                    if !in_job && s.contains("matrix.") {
                        self.warn(&p, jc, "a matrix value in the workflow's `env`: left out".into(), None);
                        continue;
                    }
                    match self.field(s, jc, &p, false) {
                        Some(f) => Out::Str(f),
                        None => continue,
                    }
                }
                _ => {
                    self.warn(&p, jc, format!("`{name}` is not a scalar: left out"), None);
                    continue;
                }
            };
            jc.env.insert(name.clone());
            out.put(name.clone(), value);
        }
        out
    }

    /// A string with `${{ }}` for an interpolated field of orch (`image`, `env`, service
    /// fields, cache keys). `None` (and a finding) when an expression has no equivalent.
    fn field(&mut self, s: &str, jc: &JobCtx, path: &[Seg], hash: bool) -> Option<String> {
        let segs = expr::segments(s);
        let mut out = String::new();
        for (i, seg) in segs.iter().enumerate() {
            match seg {
                Segment::Text(t) => out.push_str(&field_text(t, i + 1 < segs.len())),
                Segment::Expr(e) => match self.field_expr(e, jc, hash) {
                    Some(v) => out.push_str(&v),
                    None => {
                        self.warn(
                            path,
                            jc,
                            format!("the expression `${{{{ {e} }}}}` has no orch equivalent here: left out"),
                            Some("use a matrix value (`${x}`), an `env` entry or a built-in variable".into()),
                        );
                        return None;
                    }
                },
            }
        }
        Some(out)
    }

    fn field_expr(&self, e: &str, jc: &JobCtx, hash: bool) -> Option<String> {
        match expr::parse(e)? {
            Expr::Ref(r) => {
                if let Some(m) = r.strip_prefix("matrix.") {
                    return jc.vars.get(m).map(|v| format!("${{{v}}}"));
                }
                if let Some(n) = r.strip_prefix("env.") {
                    return jc.env.contains(n).then(|| format!("${{{n}}}"));
                }
                if r == "runner.os" {
                    return Some("Linux".into());
                }
                expr::builtin(&r).map(|b| format!("${{{b}}}"))
            }
            Expr::Lit(l) => Some(field_text(&l, false)),
            Expr::Call(f, args) if hash && f == "hashFiles" && !args.is_empty() => args
                .iter()
                .map(|a| match a {
                    Expr::Lit(g) if !g.contains('}') && !g.starts_with('!') => Some(format!("${{hash:{g}}}")),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    /// A `run:` script with its expressions replaced by shell variables; those without an
    /// equivalent stay as written (the shell then fails on them) and are reported.
    fn script(&mut self, s: &str, jc: &mut JobCtx, path: &[Seg]) -> String {
        let mut out = String::new();
        for seg in expr::segments(s) {
            match seg {
                Segment::Text(t) => out.push_str(&t),
                Segment::Expr(e) => match self.shell_expr(&e, jc) {
                    Some(v) => out.push_str(&v),
                    None => {
                        self.warn(
                            path,
                            jc,
                            format!("the expression `${{{{ {e} }}}}` has no orch equivalent: left as written, the shell will fail on it"),
                            Some("compute the value in the commands, or pass it as a matrix value or `env` entry".into()),
                        );
                        out.push_str(&format!("${{{{ {e} }}}}"));
                    }
                },
            }
        }
        out
    }

    /// The shell's text for an expression: `${x}` for `matrix.x`, `${NAME}` for `env.NAME`
    /// and `secrets.NAME` (which become secrets of the step), the built-ins.
    fn shell_expr(&self, e: &str, jc: &mut JobCtx) -> Option<String> {
        match expr::parse(e)? {
            Expr::Ref(r) => shell_ref(&r, jc),
            Expr::Lit(l) => Some(l),
            _ => None,
        }
    }

    /// A job's `environment` (a name, or `{name, url}`) to the step's. Its protection rules
    /// live in GitHub's settings, not in the file: a note says where orch keeps them.
    fn environment(&mut self, node: &Node, path: &[Seg], jc: &JobCtx, step: &mut Out) {
        let (name, url) = match node {
            Node::Map(_) => (node.get("name").and_then(Node::as_text), node.get("url").and_then(Node::as_text)),
            other => (other.as_text(), None),
        };
        let valid = |n: &str| {
            n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        };
        let Some(name) = name.filter(|n| valid(n)) else {
            self.warn(
                path,
                jc,
                "this `environment` is not translated: orch's names are letters, digits, `.`, `_` and `-`, \
                 without expressions"
                    .into(),
                Some("name the environment on the step: `environment: production`".into()),
            );
            return;
        };
        let value = match url.as_deref() {
            Some(u) if !u.contains("${{") => {
                let mut m = Out::map();
                m.put("name", Out::str(name.clone()));
                m.put("url", Out::str(field_text(u, false)));
                m
            }
            Some(_) => {
                self.warn(
                    &child(path, key("url")),
                    jc,
                    "an `environment.url` with an expression is left out".into(),
                    None,
                );
                Out::str(name.clone())
            }
            None => Out::str(name.clone()),
        };
        step.put("environment", value);
        self.note(
            path,
            jc,
            format!("`environment: {name}`: its protection rules are in GitHub's settings, not in the workflow"),
            Some(format!("say which branches may deploy in `environments: {{{name}: {{branches: [main]}}}}`")),
        );
    }

    fn job(&mut self, id: &str, job: &Node, wf: &JobCtx, wf_env: &Out, wf_defaults: Option<&Node>) -> Entry {
        let path = vec![key("jobs"), key(id)];
        let mut jc = JobCtx {
            id: id.to_string(),
            env: wf.env.clone(),
            secrets: wf.secrets.clone(),
            exports: wf.exports.clone(),
            ..Default::default()
        };
        let mut step = Out::map();
        let mut comments = Vec::new();
        if let Some(n) = job.get("name").and_then(Node::as_text) {
            comments.push(format!("{n} (job `{id}`)"));
        }
        let Node::Map(entries) = job else {
            self.warn(&path, &jc, "the job is not a mapping: left out".into(), None);
            step.put("image", Out::str(self.opts.image.clone()));
            step.put("commands", Out::strs([": nothing translated"]));
            return Entry { comments, key: String::new(), value: step };
        };
        for (k, _) in entries {
            match k.as_str() {
                "name" | "runs-on" | "container" | "needs" | "if" | "strategy" | "services" | "env" | "steps"
                | "timeout-minutes" | "continue-on-error" | "defaults" | "permissions" | "concurrency"
                | "environment" => {}
                "uses" => self.warn(
                    &child(&path, key(k)),
                    &jc,
                    "a reusable workflow (`uses:` on a job) is not translated".into(),
                    Some("import the called workflow's file too, and chain its steps with `needs`".into()),
                ),
                "outputs" => self.warn(
                    &child(&path, key(k)),
                    &jc,
                    "job `outputs` have no equivalent".into(),
                    Some("write the value to a file in the workspace; later steps read it there".into()),
                ),
                other => self.warn(&child(&path, key(other)), &jc, format!("`{other}` is not translated"), None),
            }
        }

        // The matrix first: its variables are in scope everywhere else.
        let matrix = match job.get("strategy").and_then(|s| s.get("matrix")) {
            Some(m) => self.matrix(m, &child(&child(&path, key("strategy")), key("matrix")), &mut jc),
            None => None,
        };

        // Image: the container's, else the default one, saying which runner it replaces.
        let runs_on = job.get("runs-on");
        let runs_on_text = match runs_on {
            Some(Node::Seq(s)) => s.iter().filter_map(Node::as_text).collect::<Vec<_>>().join(", "),
            Some(n) => n.as_text().unwrap_or_default(),
            None => String::new(),
        };
        let container = job.get("container");
        let mut container_env = None;
        let image = match container {
            Some(c) => {
                let cpath = child(&path, key("container"));
                let (img, ipath) = match c {
                    Node::Map(_) => (c.get("image").and_then(Node::as_text), child(&cpath, key("image"))),
                    other => (other.as_text(), cpath.clone()),
                };
                if let Node::Map(m) = c {
                    for (k, _) in m {
                        match k.as_str() {
                            "image" => {}
                            "env" => container_env = c.get("env").cloned(),
                            other => self.warn(
                                &child(&cpath, key(other)),
                                &jc,
                                format!("`container.{other}` is not translated"),
                                (other == "credentials").then(|| {
                                    "orch never pulls: the image must exist on the machine that runs the step".into()
                                }),
                            ),
                        }
                    }
                }
                img.and_then(|i| self.field(&i, &jc, &ipath, false))
            }
            None => None,
        };
        let image_comment = match (&image, runs_on) {
            (Some(_), _) => Vec::new(),
            (None, _) => {
                if ["windows", "macos", "macOS"].iter().any(|os| runs_on_text.contains(os)) {
                    self.warn(
                        &child(&path, key("runs-on")),
                        &jc,
                        format!("`runs-on: {runs_on_text}`: orch runs steps in Linux containers"),
                        None,
                    );
                }
                vec![format!(
                    "runs-on: {runs_on_text} (orch runs steps in containers: pick an image with the job's tools)"
                )]
            }
        };
        step.put_commented(image_comment, "image", Out::str(image.unwrap_or_else(|| self.opts.image.clone())));
        if let Some(Node::Seq(labels)) = runs_on
            && labels.iter().any(|l| l.as_text().as_deref() == Some("self-hosted"))
        {
            let own: Vec<String> = labels
                .iter()
                .filter_map(Node::as_text)
                .filter(|l| {
                    l != "self-hosted"
                        && !l.is_empty()
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                })
                .collect();
            if !own.is_empty() {
                step.put("runs_on", Out::strs(own));
            }
        }

        // Order and conditions.
        if let Some(n) = job.get("needs") {
            let ids: Vec<String> = match n {
                Node::Seq(s) => s.iter().filter_map(Node::as_text).collect(),
                other => other.as_text().into_iter().collect(),
            };
            let mut needs = Vec::new();
            for need in ids {
                match self.names.get(&need) {
                    Some(name) => needs.push(name.clone()),
                    None => self.warn(
                        &child(&path, key("needs")),
                        &jc,
                        format!("`{need}` is not a job of this workflow"),
                        None,
                    ),
                }
            }
            step.put("needs", Out::strs(needs));
        }
        if let Some(cond) = job.get("if").and_then(Node::as_text)
            && let Some(when) = self.when(&cond, &jc, &child(&path, key("if")))
        {
            step.put("when", when);
        }
        match job.get("timeout-minutes") {
            Some(Node::Int(m)) if *m > 0 => step.put("timeout", Out::str(format!("{m}m"))),
            Some(other) => self.warn(
                &child(&path, key("timeout-minutes")),
                &jc,
                format!(
                    "`timeout-minutes: {}` is not translated (orch takes whole minutes)",
                    other.as_text().unwrap_or_default()
                ),
                None,
            ),
            None => {}
        }
        match job.get("continue-on-error") {
            Some(Node::Bool(true)) => step.put("allow_failure", Out::Raw("true".into())),
            Some(Node::Bool(false)) | None => {}
            Some(_) => self.warn(
                &child(&path, key("continue-on-error")),
                &jc,
                "`continue-on-error` as an expression is not translated: the step must pass".into(),
                Some("set `allow_failure: true` on the step if some variants may fail".into()),
            ),
        }
        if let Some(m) = matrix {
            step.put("matrix", m);
        }
        if let Some(e) = job.get("environment") {
            self.environment(e, &child(&path, key("environment")), &jc, &mut step);
        }

        // Services, environment, working directory.
        if let Some(s) = job.get("services") {
            let services = self.services(s, &child(&path, key("services")), &jc, container.is_some());
            if !services.is_empty_map() {
                step.put("services", services);
            }
        }
        let mut env = Out::map();
        if self.multi
            && let Out::Map(e) = wf_env
        {
            for entry in e {
                env.put(entry.key.clone(), entry.value.clone());
            }
        }
        for (source, p) in [
            (container_env.as_ref(), child(&child(&path, key("container")), key("env"))),
            (job.get("env"), child(&path, key("env"))),
        ] {
            if let Some(n) = source
                && let Out::Map(e) = self.env(n, &p, &mut jc, true)
            {
                for entry in e {
                    if let Out::Map(existing) = &mut env {
                        existing.retain(|x| x.key != entry.key);
                    }
                    env.put(entry.key, entry.value);
                }
            }
        }
        let job_defaults = job.get("defaults").and_then(|d| d.get("run"));
        let run_defaults = job_defaults.or(wf_defaults);
        let workdir = run_defaults.and_then(|d| d.get("working-directory")).and_then(Node::as_text);
        if let Some(w) = &workdir {
            step.put("workdir", Out::str(field_text(w, false)));
        }
        let default_shell = run_defaults.and_then(|d| d.get("shell")).and_then(Node::as_text);

        // The steps: `run:` scripts become commands, actions are reported.
        let mut commands: Vec<Item> = Vec::new();
        let mut caches = Vec::new();
        let mut artifacts = Vec::new();
        let mut optional = true;
        if let Some(Node::Seq(items)) = job.get("steps") {
            for (i, s) in items.iter().enumerate() {
                let sp = child(&child(&path, key("steps")), Seg::Index(i));
                if let Some(uses) = s.get("uses").and_then(Node::as_text) {
                    match self.action(&uses, s, &sp, &mut jc) {
                        Action::Cache(c) => caches.push(c),
                        Action::Artifacts(paths, opt) => {
                            artifacts.extend(paths);
                            optional &= opt;
                        }
                        Action::Nothing => {}
                    }
                } else if let Some(run) = s.get("run").and_then(Node::as_text)
                    && let Some(item) =
                        self.run_step(i, &run, s, &sp, &mut jc, default_shell.as_deref(), workdir.is_some())
                {
                    commands.push(item);
                }
            }
        }
        if !env.is_empty_map() {
            step.put("env", env);
        }
        if !jc.secrets.is_empty() {
            step.put("secrets", Out::strs(jc.secrets.clone()));
        }
        match caches.len() {
            0 => {}
            1 => step.put("cache", caches.remove(0)),
            _ => step.put("cache", Out::Seq(caches.into_iter().map(|c| Item { comments: vec![], value: c }).collect())),
        }
        let mut all: Vec<Item> =
            jc.exports.iter().map(|e| Item { comments: vec![], value: Out::str(e.clone()) }).collect();
        all.extend(commands);
        if all.is_empty() {
            self.warn(
                &path,
                &jc,
                "the job has no `run:` step orch can run: its step only says so".into(),
                Some("write the commands the job's actions stand for".into()),
            );
            all.push(Item { comments: vec![], value: Out::str(format!(": job {id} had no run steps to translate")) });
        }
        step.put("commands", Out::Seq(all));
        if !artifacts.is_empty() {
            if optional {
                let mut a = Out::map();
                a.put("paths", Out::strs(artifacts));
                a.put("optional", Out::Raw("true".into()));
                step.put("artifacts", a);
            } else {
                step.put("artifacts", Out::strs(artifacts));
            }
        }
        Entry { comments, key: String::new(), value: step }
    }

    /// `strategy.matrix` to orch's `matrix`. Its keys become variables (`python-version`
    /// is `python_version`). An `include` entry that GitHub would add to existing
    /// combinations is written out: the whole matrix becomes the list of its combinations.
    fn matrix(&mut self, node: &Node, path: &[Seg], jc: &mut JobCtx) -> Option<Out> {
        let Node::Map(m) = node else {
            self.warn(
                path,
                jc,
                "a matrix computed by an expression has no equivalent: the step runs once".into(),
                Some("write the matrix's axes in the step's `matrix`".into()),
            );
            return None;
        };
        let value = |n: &Node| -> Option<String> {
            match n {
                Node::Null => Some(String::new()),
                Node::Seq(_) | Node::Map(_) => None,
                other => other.as_text(),
            }
        };
        let mut axes: Vec<(String, Vec<(String, bool)>)> = Vec::new();
        let entries = |what: &str, this: &mut Self, jc: &mut JobCtx| -> Vec<Vec<(String, String, bool)>> {
            let mut out = Vec::new();
            if let Some(Node::Seq(items)) = node.get(what) {
                for (i, item) in items.iter().enumerate() {
                    let Node::Map(kv) = item else { continue };
                    let mut e = Vec::new();
                    for (k, v) in kv {
                        match value(v) {
                            Some(t) => e.push((k.clone(), t, matches!(v, Node::Str(_) | Node::Null))),
                            None => this.warn(
                                &child(&child(&child(path, key(what)), Seg::Index(i)), key(k)),
                                jc,
                                format!("`{k}` is a list or mapping: orch's matrix values are scalars; left out"),
                                None,
                            ),
                        }
                    }
                    out.push(e);
                }
            }
            out
        };
        let include = entries("include", self, jc);
        let exclude = entries("exclude", self, jc);
        for (k, v) in m {
            if k == "include" || k == "exclude" {
                continue;
            }
            let Node::Seq(items) = v else {
                self.warn(&child(path, key(k)), jc, format!("the axis `{k}` is not a list: left out"), None);
                continue;
            };
            let mut vals: Vec<(String, bool)> = Vec::new();
            for it in items {
                match value(it) {
                    Some(t) if !vals.iter().any(|(x, _)| *x == t) => {
                        vals.push((t, matches!(it, Node::Str(_) | Node::Null)))
                    }
                    Some(_) => {}
                    None => self.warn(
                        &child(path, key(k)),
                        jc,
                        format!("a value of `{k}` is a list or mapping: left out"),
                        None,
                    ),
                }
            }
            if !vals.is_empty() {
                axes.push((k.clone(), vals));
            }
        }
        for (k, _) in &axes {
            jc.vars.insert(k.clone(), var_name(k));
        }
        for e in include.iter().chain(&exclude) {
            for (k, _, _) in e {
                jc.vars.entry(k.clone()).or_insert_with(|| var_name(k));
            }
        }
        let scalar = |t: &str, is_str: bool| if is_str { Out::str(t) } else { Out::Raw(t.to_string()) };
        let entry_out = |e: &[(String, String, bool)], vars: &BTreeMap<String, String>| {
            let mut o = Out::map();
            for (k, v, s) in e {
                o.put(vars[k].clone(), scalar(v, *s));
            }
            Item { comments: vec![], value: o }
        };

        // GitHub: the product less `exclude`; each `include` entry extends the combinations
        // whose axis values it matches, and is a combination of its own when it matches none.
        let mut base: Vec<Vec<(String, String, bool)>> = vec![Vec::new()];
        for (k, vals) in &axes {
            base = base
                .into_iter()
                .flat_map(|c| {
                    vals.iter().map(move |(v, s)| {
                        let mut c = c.clone();
                        c.push((k.clone(), v.clone(), *s));
                        c
                    })
                })
                .collect();
        }
        if axes.is_empty() {
            base.clear();
        }
        base.retain(|c| {
            !exclude.iter().any(|x| x.iter().all(|(k, v, _)| c.iter().any(|(ck, cv, _)| ck == k && cv == v)))
        });
        let is_axis = |k: &str| axes.iter().any(|(a, _)| a == k);
        let mut extends = false;
        let mut combos = base.clone();
        for inc in &include {
            let mut matched = false;
            for c in combos.iter_mut().take(base.len()) {
                let fits = inc.iter().all(|(k, v, _)| !is_axis(k) || c.iter().any(|(ck, cv, _)| ck == k && cv == v));
                if fits {
                    matched = true;
                    for (k, v, s) in inc {
                        if !is_axis(k) {
                            extends = true;
                            c.retain(|(ck, _, _)| ck != k);
                            c.push((k.clone(), v.clone(), *s));
                        }
                    }
                }
            }
            if !matched {
                combos.push(inc.clone());
            }
        }
        let mut out = Out::map();
        if extends {
            self.note(
                &child(path, key("include")),
                jc,
                "`include` entries extend combinations in GitHub Actions, never in orch: the matrix is written as \
                 the list of its combinations"
                    .into(),
                None,
            );
            out.put("include", Out::Seq(combos.iter().map(|c| entry_out(c, &jc.vars)).collect()));
        } else {
            for (k, vals) in &axes {
                out.put(
                    jc.vars[k].clone(),
                    Out::Seq(vals.iter().map(|(v, s)| Item { comments: vec![], value: scalar(v, *s) }).collect()),
                );
            }
            let used: Vec<_> = exclude.iter().filter(|e| e.iter().all(|(k, _, _)| is_axis(k))).collect();
            if !used.is_empty() {
                out.put("exclude", Out::Seq(used.iter().map(|c| entry_out(c, &jc.vars)).collect()));
            }
            if !include.is_empty() {
                out.put("include", Out::Seq(include.iter().map(|c| entry_out(c, &jc.vars)).collect()));
            }
        }
        (!out.is_empty_map()).then_some(out)
    }

    /// `if:` of a job to `when`: comparisons of `github.ref`, `github.ref_name`,
    /// `github.event_name`, `startsWith(github.ref, ...)`, the status functions, joined by
    /// `&&` (and `||` within one clause). What has no equivalent is reported and left out,
    /// so the step may run more often than the job did.
    fn when(&mut self, cond: &str, jc: &JobCtx, path: &[Seg]) -> Option<Out> {
        let text = expr::condition_text(cond);
        let Some(e) = expr::parse(&text) else {
            self.warn(
                path,
                jc,
                format!("`if: {text}` is not translated: the step runs whenever the ones it needs passed"),
                Some(
                    "`when` takes `branch`, `tag`, `event`, `paths` and `status`; test anything else in the commands"
                        .into(),
                ),
            );
            return None;
        };
        let mut clauses: BTreeMap<&'static str, Out> = BTreeMap::new();
        for c in expr::conjuncts(&e) {
            match when_clause(c) {
                Some(None) => {}
                Some(Some((k, v))) if !clauses.contains_key(k) => {
                    clauses.insert(k, v);
                }
                _ => self.warn(
                    path,
                    jc,
                    format!("`{}` in `if:` is not translated: left out of `when`", show(c)),
                    Some("`when` takes `branch`, `tag`, `event`, `paths` and `status`; test anything else in the commands".into()),
                ),
            }
        }
        let mut out = Out::map();
        for k in ["event", "branch", "tag", "status"] {
            if let Some(v) = clauses.remove(k) {
                out.put(k, v);
            }
        }
        (!out.is_empty_map()).then_some(out)
    }

    fn services(&mut self, node: &Node, path: &[Seg], jc: &JobCtx, in_container: bool) -> Out {
        let mut out = Out::map();
        let Node::Map(m) = node else { return out };
        for (name, svc) in m {
            let p = child(path, key(name));
            let host = host_name(name);
            if host != *name {
                self.note(&p, jc, format!("the service `{name}` is reached as `{host}` (a host name)"), None);
            }
            let image = match svc {
                Node::Map(_) => svc.get("image").and_then(Node::as_text),
                other => other.as_text(),
            };
            let Some(image) = image.and_then(|i| self.field(&i, jc, &child(&p, key("image")), false)) else {
                self.warn(&p, jc, format!("the service `{name}` has no image orch can use: left out"), None);
                continue;
            };
            let mut s = Out::map();
            s.put("image", Out::str(image));
            if let Some(Node::Map(env)) = svc.get("env") {
                let mut e = Out::map();
                for (k, v) in env {
                    let text = v.as_text().unwrap_or_default();
                    if let Some(f) = self.field(&text, jc, &child(&child(&p, key("env")), key(k)), false) {
                        e.put(k.clone(), Out::str(f));
                    }
                }
                if !e.is_empty_map() {
                    s.put("env", e);
                }
            }
            let ports: Vec<u16> = match svc.get("ports") {
                Some(Node::Seq(items)) => items
                    .iter()
                    .filter_map(Node::as_text)
                    .filter_map(|t| t.rsplit(':').next().and_then(|p| p.split('/').next()).and_then(|p| p.parse().ok()))
                    .filter(|p| *p > 0)
                    .collect(),
                _ => Vec::new(),
            };
            let mut ready = None;
            if let Some(opts) = svc.get("options").and_then(Node::as_text) {
                let words = shell_words(&opts);
                let mut i = 0;
                let mut other = Vec::new();
                while i < words.len() {
                    let w = &words[i];
                    let (flag, inline) = match w.split_once('=') {
                        Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                        _ => (w.clone(), None),
                    };
                    let takes_value = flag.starts_with("--health-") || !flag.starts_with('-');
                    let val = match inline {
                        Some(v) => Some(v),
                        None if flag.starts_with('-') && words.get(i + 1).is_some_and(|n| !n.starts_with('-')) => {
                            i += 1;
                            Some(words[i].clone())
                        }
                        None => None,
                    };
                    if flag == "--health-cmd" {
                        ready = val;
                    } else if !takes_value {
                        other.push(flag);
                    }
                    i += 1;
                }
                if !other.is_empty() {
                    self.warn(
                        &child(&p, key("options")),
                        jc,
                        format!("service options {} are not translated", other.join(", ")),
                        None,
                    );
                }
            }
            if !ports.is_empty() {
                s.put(
                    "ports",
                    Out::Seq(ports.iter().map(|p| Item { comments: vec![], value: Out::Raw(p.to_string()) }).collect()),
                );
            }
            match (ready, ports.first()) {
                (Some(cmd), _) => s.put("ready", Out::str(cmd)),
                (None, Some(port)) => {
                    let mut r = Out::map();
                    r.put("tcp", Out::Raw(port.to_string()));
                    s.put("ready", r);
                }
                (None, None) => {}
            }
            for k in ["credentials", "volumes"] {
                if svc.get(k).is_some() {
                    self.warn(&child(&p, key(k)), jc, format!("service `{k}` are not translated"), None);
                }
            }
            out.put(host, s);
        }
        if !in_container && !out.is_empty_map() {
            self.warn(
                path,
                jc,
                "the job ran on the runner and reached its services on `localhost`; an orch step reaches each \
                 service by its name"
                    .into(),
                Some(
                    "replace `localhost` (and `127.0.0.1`) in the job's env and commands by the service's name".into(),
                ),
            );
        }
        out
    }

    /// A `uses:` step: reported, with what to write instead; `actions/cache` and
    /// `actions/upload-artifact` become `cache` and `artifacts` when their inputs allow.
    fn action(&mut self, uses: &str, s: &Node, path: &[Seg], jc: &mut JobCtx) -> Action {
        let p = child(path, key("uses"));
        let name = uses.split('@').next().unwrap_or(uses).to_ascii_lowercase();
        let with = |k: &str| s.get("with").and_then(|w| w.get(k)).and_then(Node::as_text);
        let cond = s.get("if").and_then(Node::as_text);
        match name.as_str() {
            "actions/checkout" => {
                if let Some(repo) = with("repository") {
                    let dir = with("path").unwrap_or_else(|| ".".into());
                    self.warn(
                        &p,
                        jc,
                        format!("`uses: {uses}` of another repository is not translated"),
                        Some(format!("add a command: git clone https://github.com/{repo} {}", sh_quote(&dir))),
                    );
                } else {
                    self.note(
                        &p,
                        jc,
                        format!(
                            "`uses: {uses}` is not needed: every step starts in /workspace, which holds the commit"
                        ),
                        None,
                    );
                }
                Action::Nothing
            }
            "actions/cache" | "actions/cache/restore" | "actions/cache/save" => {
                let key_text = with("key").unwrap_or_default();
                let paths: Vec<String> = with("path")
                    .unwrap_or_default()
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect();
                let k = if key_text.is_empty() || paths.iter().any(|p| p.starts_with('!') || p.contains("${{")) {
                    None
                } else {
                    self.field(&key_text, jc, &p, true)
                };
                match k {
                    Some(k) if !k.is_empty() => {
                        let mut c = Out::map();
                        c.put("key", Out::str(k));
                        c.put("paths", Out::strs(paths));
                        let restore = if with("restore-keys").is_some() { "; orch has no `restore-keys`" } else { "" };
                        self.note(&p, jc, format!("`uses: {uses}` is translated to the step's `cache`{restore}"), None);
                        Action::Cache(c)
                    }
                    _ => {
                        self.warn(
                            &p,
                            jc,
                            format!("`uses: {uses}` is not translated"),
                            Some(
                                "use orch's `cache: { key: \"name-${hash:lockfile}\", paths: [...] }` on the step"
                                    .into(),
                            ),
                        );
                        Action::Nothing
                    }
                }
            }
            "actions/upload-artifact" => {
                let paths: Vec<String> = with("path")
                    .unwrap_or_default()
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(|l| l.strip_prefix("./").unwrap_or(l).to_string())
                    .collect();
                let usable = !paths.is_empty()
                    && paths.iter().all(|p| {
                        !p.starts_with(['/', '~', '!']) && !p.contains("${{") && !p.split('/').any(|c| c == "..")
                    });
                if usable {
                    let mut note = format!("`uses: {uses}` is translated to the step's `artifacts`");
                    if let Some(c) = &cond {
                        note.push_str(&format!(
                            " (orch keeps artifacts only when the step passes, whatever `if: {c}` said)"
                        ));
                    }
                    self.note(&p, jc, note, None);
                    Action::Artifacts(paths, with("if-no-files-found").as_deref() != Some("error"))
                } else {
                    self.warn(
                        &p,
                        jc,
                        format!("`uses: {uses}` is not translated: orch's artifacts are paths in the workspace"),
                        Some("list the files in the step's `artifacts: [...]` (relative to /workspace)".into()),
                    );
                    Action::Nothing
                }
            }
            "actions/download-artifact" => {
                self.note(
                    &p,
                    jc,
                    format!("`uses: {uses}` is not needed: the steps of a run share /workspace, the files are where the step that made them left them"),
                    Some("give this step `needs: [the step that makes them]`".into()),
                );
                Action::Nothing
            }
            n if n.starts_with("actions/setup-") => {
                let tool = &n["actions/setup-".len()..];
                let (image, version_key) = match tool {
                    "python" => ("python", "python-version"),
                    "node" => ("node", "node-version"),
                    "go" => ("golang", "go-version"),
                    "java" => ("eclipse-temurin", "java-version"),
                    "ruby" => ("ruby", "ruby-version"),
                    other => (other, "version"),
                };
                let version = with(version_key).map(|v| {
                    let mut quiet = Vec::new();
                    let mut tmp = Translator { findings: &mut quiet, ..*self };
                    tmp.field(&v, jc, &p, false).unwrap_or(v)
                });
                self.warn(
                    &p,
                    jc,
                    format!("`uses: {uses}` has no equivalent: the step's image must have the tool"),
                    Some(format!(
                        "use an image with it: `image: {image}:{}` on this step, or `orch import --image`",
                        version.unwrap_or_else(|| "VERSION".into())
                    )),
                );
                Action::Nothing
            }
            _ => {
                let help = if name.starts_with("docker://") {
                    format!("run it as a step of its own with `image: {}`", &uses["docker://".len()..])
                } else if name.contains("rust-cache") {
                    "use `cache: { key: \"cargo-${hash:Cargo.lock}\", paths: [target/, ~/.cargo/registry] }`".into()
                } else if name.contains("rust-toolchain")
                    || name.contains("actions-rs/toolchain")
                    || name.contains("setup-")
                {
                    "use an image with the toolchain (`rust:VERSION`, ...)".into()
                } else {
                    "run the tool the action wraps in the commands, in an image that has it".into()
                };
                self.warn(&p, jc, format!("`uses: {uses}` has no equivalent in orch"), Some(help));
                Action::Nothing
            }
        }
    }

    /// A `run:` step as one command. The script runs in the step's shell; a `shell`,
    /// `working-directory`, `env`, `continue-on-error`, `timeout-minutes` or `if` of the
    /// step is kept by wrapping it (a subshell for `cd` and `export`, a script file for
    /// another shell, `if ...; then` for the condition).
    #[allow(clippy::too_many_arguments)]
    fn run_step(
        &mut self,
        i: usize,
        run: &str,
        s: &Node,
        path: &[Seg],
        jc: &mut JobCtx,
        default_shell: Option<&str>,
        has_workdir: bool,
    ) -> Option<Item> {
        let rpath = child(path, key("run"));
        let mut comments = Vec::new();
        if let Some(n) = s.get("name").and_then(Node::as_text) {
            comments.push(n);
        }
        // The condition first: a step that runs only after a failure cannot be part of one
        // `sh -e`, where the first failure ends the step.
        let mut shell_if = None;
        if let Some(cond) = s.get("if").and_then(Node::as_text) {
            let text = expr::condition_text(&cond);
            let ipath = child(path, key("if"));
            match expr::parse(&text) {
                Some(e) if uses_status(&e, &["failure", "cancelled"]) => {
                    self.warn(
                        &ipath,
                        jc,
                        format!("a step with `if: {text}` is left out: the commands of an orch step stop at the first failure"),
                        Some("make it a step of its own with `when: { status: failure }` (or `always`)".into()),
                    );
                    return None;
                }
                Some(e) if uses_status(&e, &["always"]) => {
                    self.warn(
                        &ipath,
                        jc,
                        format!("`if: {text}`: this command runs only when the ones before it passed"),
                        Some("make it a step of its own with `when: { status: always }`".into()),
                    );
                }
                Some(e) => match shell_cond(&e, jc) {
                    Some(c) if c != "true" => shell_if = Some(c),
                    Some(_) => {}
                    None => self.warn(
                        &ipath,
                        jc,
                        format!("`if: {text}` is not translated: the command always runs"),
                        Some("test the condition in the script (`[ \"$ORCH_BRANCH\" = main ] || exit 0`)".into()),
                    ),
                },
                None => self.warn(
                    &ipath,
                    jc,
                    format!("`if: {text}` is not translated: the command always runs"),
                    Some("test the condition in the script".into()),
                ),
            }
        }
        let script = self.script(run, jc, &rpath);
        for var in ["GITHUB_ENV", "GITHUB_PATH", "GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY"] {
            if script.contains(var) {
                self.warn(
                    &rpath,
                    jc,
                    format!("`${var}` does not exist in orch"),
                    Some(match var {
                        "GITHUB_ENV" | "GITHUB_PATH" => "all commands of a step share one shell: `export` the variable (`export PATH=\"$PATH:DIR\"`)".into(),
                        _ => "write the value to a file in the workspace; later steps read it there".into(),
                    }),
                );
            }
        }
        let mut lines: Vec<String> = Vec::new();
        if let Some(dir) = s.get("working-directory").and_then(Node::as_text) {
            let dir = self.script(&dir, jc, &child(path, key("working-directory")));
            if has_workdir && !dir.starts_with('/') {
                lines.push(format!("cd \"$ORCH_WORKSPACE\"/{}", sh_quote(&dir)));
            } else {
                lines.push(format!("cd {}", sh_quote(&dir)));
            }
        }
        if let Some(Node::Map(env)) = s.get("env") {
            for (k, v) in env {
                let text = v.as_text().unwrap_or_default();
                let epath = child(&child(path, key("env")), key(k));
                if var_name(k) != *k {
                    self.warn(&epath, jc, format!("`{k}` is not a variable name: left out"), None);
                    continue;
                }
                match shell_word(&text, jc) {
                    Some(w) => lines.push(format!("export {k}={w}")),
                    None => self.warn(
                        &epath,
                        jc,
                        format!("`{k}: {text}`: the expression has no orch equivalent; the variable is left out"),
                        Some("compute it in the script".into()),
                    ),
                }
            }
        }
        let shell = s.get("shell").and_then(Node::as_text).or_else(|| default_shell.map(str::to_string));
        let coe = match s.get("continue-on-error") {
            Some(Node::Bool(b)) => *b,
            Some(_) => {
                self.warn(
                    &child(path, key("continue-on-error")),
                    jc,
                    "`continue-on-error` as an expression is not translated".into(),
                    None,
                );
                false
            }
            None => false,
        };
        let timeout = match s.get("timeout-minutes") {
            Some(Node::Int(m)) if *m > 0 => Some(*m),
            Some(_) => {
                self.warn(
                    &child(path, key("timeout-minutes")),
                    jc,
                    "`timeout-minutes` is not a whole number: not translated".into(),
                    None,
                );
                None
            }
            None => None,
        };
        let template = match shell.as_deref() {
            None | Some("sh") if !coe && timeout.is_none() => None,
            None | Some("sh") => Some("sh -e {0}".to_string()),
            Some("bash") => Some("bash --noprofile --norc -eo pipefail {0}".into()),
            Some("python") => Some("python {0}".into()),
            Some(other @ ("pwsh" | "powershell" | "cmd")) => {
                self.warn(
                    &child(path, key("shell")),
                    jc,
                    format!("`shell: {other}`: the image must have it (orch's steps run Linux images)"),
                    None,
                );
                Some(if other == "cmd" {
                    "cmd /D /E:ON /V:OFF /S /C \"CALL \"{0}\"\"".into()
                } else {
                    format!("{other} -command \". '{{0}}'\"")
                })
            }
            Some(custom) if custom.contains("{0}") => Some(custom.to_string()),
            Some(custom) => Some(format!("{custom} {{0}}")),
        };
        match template {
            None => lines.push(script.trim_end_matches('\n').to_string()),
            Some(t) => {
                let file = format!("/tmp/{}-{}.sh", step_name(&jc.id), i + 1);
                let mut delim = "ORCH_SCRIPT".to_string();
                while script.lines().any(|l| l.trim() == delim) {
                    delim.push('_');
                }
                lines.push(format!("cat > {file} <<'{delim}'\n{}\n{delim}", script.trim_end_matches('\n')));
                let mut call = t.replace("{0}", &file);
                if let Some(m) = timeout {
                    call = format!("timeout {m}m {call}");
                }
                if coe {
                    call = format!("{call} || echo \"continue-on-error: this command failed with $?\" >&2");
                }
                lines.push(call);
            }
        }
        // `cd` and `export` must not carry over to the job's next commands.
        let scoped =
            s.get("working-directory").is_some() || matches!(s.get("env"), Some(Node::Map(e)) if !e.is_empty());
        let body = if scoped { format!("(\n{}\n)", lines.join("\n")) } else { lines.join("\n") };
        let text = match shell_if {
            Some(c) => format!("if {c}; then\n{body}\nfi"),
            None => body,
        };
        Some(Item { comments, value: Out::Str(text) })
    }
}

enum Action {
    Cache(Out),
    Artifacts(Vec<String>, bool),
    Nothing,
}

fn secret_ref(s: &str) -> Option<String> {
    match expr::segments(s).as_slice() {
        [Segment::Expr(e)] => match expr::parse(e)? {
            Expr::Ref(r) => r.strip_prefix("secrets.").filter(|n| var_name(n) == *n).map(str::to_string),
            _ => None,
        },
        _ => None,
    }
}

/// The shell's text of a reference (`${x}`), recording secrets.
fn shell_ref(r: &str, jc: &mut JobCtx) -> Option<String> {
    if let Some(m) = r.strip_prefix("matrix.") {
        return jc.vars.get(m).map(|v| format!("${{{v}}}"));
    }
    if let Some(n) = r.strip_prefix("env.") {
        return (var_name(n) == n).then(|| format!("${{{n}}}"));
    }
    if let Some(n) = r.strip_prefix("secrets.") {
        if var_name(n) != n {
            return None;
        }
        if !jc.secrets.iter().any(|s| s == n) {
            jc.secrets.push(n.to_string());
        }
        return Some(format!("${{{n}}}"));
    }
    if let Some(b) = expr::builtin(r) {
        return Some(format!("${{{b}}}"));
    }
    expr::shell_builtin(r).map(str::to_string)
}

/// A value with expressions as one shell word: text single-quoted, references in double
/// quotes.
fn shell_word(s: &str, jc: &mut JobCtx) -> Option<String> {
    let mut out = String::new();
    for seg in expr::segments(s) {
        match seg {
            Segment::Text(t) => out.push_str(&format!("'{}'", t.replace('\'', r"'\''"))),
            Segment::Expr(e) => match expr::parse(&e)? {
                Expr::Ref(r) => out.push_str(&format!("\"{}\"", shell_ref(&r, jc)?)),
                Expr::Lit(l) => out.push_str(&format!("'{}'", l.replace('\'', r"'\''"))),
                _ => return None,
            },
        }
    }
    Some(if out.is_empty() { "''".into() } else { out })
}

fn uses_status(e: &Expr, names: &[&str]) -> bool {
    match e {
        Expr::Call(f, args) => {
            (args.is_empty() && names.contains(&f.as_str())) || args.iter().any(|a| uses_status(a, names))
        }
        Expr::Not(a) => uses_status(a, names),
        Expr::And(a, b) | Expr::Or(a, b) | Expr::Eq(a, b, _) => uses_status(a, names) || uses_status(b, names),
        _ => false,
    }
}

/// A step's `if:` as a shell condition.
fn shell_cond(e: &Expr, jc: &mut JobCtx) -> Option<String> {
    let group = |e: &Expr, jc: &mut JobCtx| -> Option<String> {
        let c = shell_cond(e, jc)?;
        Some(if matches!(e, Expr::And(..) | Expr::Or(..)) { format!("{{ {c}; }}") } else { c })
    };
    let value = |e: &Expr, jc: &mut JobCtx| -> Option<String> {
        match e {
            Expr::Ref(r) => Some(format!("\"{}\"", shell_ref(r, jc)?)),
            Expr::Lit(l) => Some(sh_quote(l)),
            _ => None,
        }
    };
    Some(match e {
        Expr::Call(f, a) if f == "success" && a.is_empty() => "true".into(),
        Expr::Ref(_) => format!("[ -n {} ]", value(e, jc)?),
        Expr::Not(a) => format!("! {}", group(a, jc)?),
        Expr::And(a, b) => format!("{} && {}", group(a, jc)?, group(b, jc)?),
        Expr::Or(a, b) => format!("{} || {}", group(a, jc)?, group(b, jc)?),
        Expr::Eq(a, b, eq) => {
            let op = if *eq { "=" } else { "!=" };
            let (r, l) = match (&**a, &**b) {
                (Expr::Ref(r), Expr::Lit(l)) | (Expr::Lit(l), Expr::Ref(r)) => (r.as_str(), l.as_str()),
                _ => return Some(format!("[ {} {op} {} ]", value(a, jc)?, value(b, jc)?)),
            };
            match (r, l) {
                ("github.ref", l) if l.starts_with("refs/heads/") => {
                    format!("[ \"$ORCH_BRANCH\" {op} {} ]", sh_quote(&l["refs/heads/".len()..]))
                }
                ("github.ref", l) if l.starts_with("refs/tags/") => {
                    format!("[ \"$ORCH_TAG\" {op} {} ]", sh_quote(&l["refs/tags/".len()..]))
                }
                ("github.ref", _) => return None,
                ("github.event_name", l) => format!("[ \"$ORCH_EVENT\" {op} {} ]", expr::event_name(l)?),
                (r, l) => format!("[ \"{}\" {op} {} ]", shell_ref(r, jc)?, sh_quote(l)),
            }
        }
        Expr::Call(f, args) if (f == "contains" || f == "startsWith" || f == "endsWith") && args.len() == 2 => {
            let (Expr::Ref(r), Expr::Lit(l)) = (&args[0], &args[1]) else { return None };
            let v = shell_ref(r, jc)?;
            let lit = format!("'{}'", l.replace('\'', r"'\''"));
            let pat = match f.as_str() {
                "contains" => format!("*{lit}*"),
                "startsWith" => format!("{lit}*"),
                _ => format!("*{lit}"),
            };
            format!("case \"{v}\" in {pat}) ;; *) false ;; esac")
        }
        _ => return None,
    })
}

/// One conjunct of a job's `if:` as a `when` clause: `Some(None)` when it needs none
/// (`success()`), `None` when it has no equivalent.
fn when_clause(e: &Expr) -> Option<Option<(&'static str, Out)>> {
    let one = |k: &'static str, v: String| Some(Some((k, Out::strs([v]))));
    match e {
        Expr::Call(f, a) if a.is_empty() => match f.as_str() {
            "success" => Some(None),
            "failure" => Some(Some(("status", Out::str("failure")))),
            "always" => Some(Some(("status", Out::str("always")))),
            _ => None,
        },
        Expr::Not(a) if matches!(&**a, Expr::Call(f, x) if f == "cancelled" && x.is_empty()) => {
            Some(Some(("status", Out::str("always"))))
        }
        Expr::Ref(r) if r == "github.event.pull_request" => one("event", "pull_request".into()),
        Expr::Eq(a, b, true) => {
            let (r, l) = match (&**a, &**b) {
                (Expr::Ref(r), Expr::Lit(l)) | (Expr::Lit(l), Expr::Ref(r)) => (r.as_str(), l.as_str()),
                _ => return None,
            };
            match r {
                "github.ref" => match (l.strip_prefix("refs/heads/"), l.strip_prefix("refs/tags/")) {
                    (Some(b), _) => one("branch", b.into()),
                    (_, Some(t)) => one("tag", t.into()),
                    _ => None,
                },
                "github.ref_name" => one("branch", l.into()),
                "github.event_name" => one("event", expr::event_name(l)?.into()),
                _ => None,
            }
        }
        Expr::Eq(a, b, false) => {
            let (Expr::Ref(r), Expr::Lit(l)) = (&**a, &**b) else { return None };
            if r != "github.event_name" {
                return None;
            }
            let not = expr::event_name(l)?;
            let rest: Vec<&str> = ["push", "pull_request", "tag", "manual"].into_iter().filter(|e| *e != not).collect();
            Some(Some(("event", Out::strs(rest))))
        }
        Expr::Call(f, args) if f == "startsWith" && args.len() == 2 => {
            let (Expr::Ref(r), Expr::Lit(l)) = (&args[0], &args[1]) else { return None };
            if r != "github.ref" {
                return None;
            }
            match (l.strip_prefix("refs/heads/"), l.strip_prefix("refs/tags/")) {
                (Some(b), _) => one("branch", format!("{b}*")),
                (_, Some(t)) => one("tag", format!("{t}*")),
                _ => None,
            }
        }
        Expr::Or(..) => {
            // `a || b` of one clause: the clause lists both.
            let mut kind = None;
            let mut items = Vec::new();
            for d in expr::disjuncts(e) {
                let (k, Out::Seq(v)) = when_clause(d)?? else { return None };
                if kind.is_some_and(|x| x != k) || k == "status" {
                    return None;
                }
                kind = Some(k);
                items.extend(v);
            }
            Some(Some((kind?, Out::Seq(items))))
        }
        _ => None,
    }
}

/// An expression as the user wrote it, near enough for a message.
fn show(e: &Expr) -> String {
    match e {
        Expr::Ref(r) => r.clone(),
        Expr::Lit(l) => format!("'{l}'"),
        Expr::Not(a) => format!("!{}", show(a)),
        Expr::And(a, b) => format!("{} && {}", show(a), show(b)),
        Expr::Or(a, b) => format!("({} || {})", show(a), show(b)),
        Expr::Eq(a, b, eq) => format!("{} {} {}", show(a), if *eq { "==" } else { "!=" }, show(b)),
        Expr::Call(f, args) => format!("{f}({})", args.iter().map(show).collect::<Vec<_>>().join(", ")),
    }
}

/// Words of a `docker create`-style option string, with `'...'` and `"..."` quoting.
fn shell_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote = None;
    let mut any = false;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (None, c) => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        words.push(cur);
    }
    words
}

#[cfg(test)]
mod tests;
