//! Turns a YAML [`Node`] tree into a checked [`Pipeline`], collecting every problem with the
//! path of the node it is about. Shape checks (types, unknown keys) and meaning checks
//! (unknown stages and needs, cycles, variables, globs) both land here, so `orch validate`
//! reports them all in one go.
//!
//! This file reads the shape (types, ranges, unknown keys) into the model; `check` the
//! meaning (stages, needs and cycles, images, variables), which needs the whole pipeline.

mod check;

use std::collections::{HashMap, HashSet};

use indexmap::IndexMap;

use super::diag::{Diagnostic, did_you_mean};
use super::interp;
use super::model::*;
use super::spec::{self, MAX_RETRIES, Names, Obj};
use super::yaml::{Node, Seg};

/// Keys other CI systems use for what orch calls differently: suggested when the unknown key
/// is not a near-miss of a known one.
const ALIASES: &[(&str, &str)] = &[
    ("environment", "env"),
    ("variables", "env"),
    ("script", "commands"),
    ("run", "commands"),
    ("command", "commands"),
    ("depends_on", "needs"),
    ("dependencies", "needs"),
    ("rules", "when"),
    ("only", "when"),
    ("if", "when"),
    ("container", "image"),
    ("retries", "retry"),
    ("triggers", "on"),
    ("branches", "branch"),
    ("events", "event"),
    ("ref", "branch"),
    ("tags", "runs_on"),
    ("labels", "runs_on"),
];

/// Loads a pipeline from its parsed document. `Err` holds every problem found.
pub fn load(doc: &Node) -> Result<Pipeline, Vec<Diagnostic>> {
    let mut l = Loader::default();
    // Whole-pipeline checks run even when some parts failed to load, so that one run
    // reports every problem; they skip what a shape error already explains.
    if let Some(p) = l.pipeline(doc) {
        l.check(&p);
        if l.diags.is_empty() {
            return Ok(p);
        }
    }
    Err(l.diags)
}

fn child(path: &[Seg], key: &str) -> Vec<Seg> {
    let mut p = path.to_vec();
    p.push(Seg::Key(key.to_string()));
    p
}

fn index(path: &[Seg], i: usize) -> Vec<Seg> {
    let mut p = path.to_vec();
    p.push(Seg::Index(i));
    p
}

#[derive(Default)]
struct Loader {
    diags: Vec<Diagnostic>,
    /// Steps whose `stage` was written (the others got the default).
    explicit_stage: HashSet<String>,
    /// Every key under `steps`, including steps that failed to load.
    step_names: HashSet<String>,
    /// `stages` was written but could not be read: stage checks would be guesses.
    stages_broken: bool,
    /// Variables (env keys, matrix axes) that are defined but whose value could not be read.
    broken_vars: HashSet<String>,
    /// Steps whose `cache` is written as a list (a one-item list included).
    cache_lists: HashSet<String>,
    /// Problems found in `defaults.image`/`defaults.workdir` (checked once per step that
    /// uses them, reported once).
    defaults_reported: HashSet<(Vec<Seg>, String)>,
}

impl Loader {
    fn err(&mut self, path: &[Seg], msg: impl Into<String>) {
        self.diags.push(Diagnostic::new(path, msg));
    }

    fn err_help(&mut self, path: &[Seg], msg: impl Into<String>, help: impl Into<String>) {
        self.diags.push(Diagnostic::new(path, msg).help(help));
    }

    fn wrong_type(&mut self, path: &[Seg], node: &Node, expected: &str) {
        let what = path_name(path);
        if matches!(node, Node::Null) {
            // `key:` with nothing after it: the key is the thing to look at.
            self.diags.push(Diagnostic::new(path, format!("{what} must be {expected}, found no value")).at_key());
        } else {
            self.err(path, format!("{what} must be {expected}, found {}", node.kind()));
        }
    }

    /// The entries of a mapping, reporting unknown and duplicate keys. `None` (and a
    /// diagnostic) when `node` is no mapping.
    fn map<'n>(
        &mut self,
        node: &'n Node,
        path: &[Seg],
        known: Option<&Obj>,
        what: &str,
    ) -> Option<&'n [(String, Node)]> {
        let Node::Map(entries) = node else {
            if matches!(node, Node::Null) {
                return Some(&[]);
            }
            self.wrong_type(path, node, "a mapping");
            return None;
        };
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (k, _) in entries {
            let count = seen.entry(k.as_str()).or_insert(0);
            if *count > 0 {
                let mut d = Diagnostic::new(&child(path, k), format!("duplicate key `{k}` in {what}")).at_key();
                d.occurrence = *count;
                self.diags.push(d.help("each key may appear once"));
            }
            *count += 1;
            if let Some(known) = known
                && !known.has(k)
                && !known.ignores(k)
            {
                let mut d = Diagnostic::new(&child(path, k), format!("unknown key `{k}` in {what}")).at_key();
                let alias = || ALIASES.iter().find(|(a, t)| a == k && known.has(t)).map(|(_, t)| *t);
                d.help = Some(match did_you_mean(k, known.keys()).or_else(alias) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None if known.has("pull_request") && matches!(k.as_str(), "tag" | "tags") => {
                        "tags are pushed: write `push: {tags: [\"v*\"]}`".to_string()
                    }
                    None => format!("expected one of: {}", known.keys().collect::<Vec<_>>().join(", ")),
                });
                self.diags.push(d);
            }
        }
        Some(entries)
    }

    fn string(&mut self, node: &Node, path: &[Seg]) -> Option<String> {
        match node {
            Node::Str(s) => Some(s.clone()),
            _ => {
                self.wrong_type(path, node, "a string");
                None
            }
        }
    }

    /// Strings, numbers and booleans, as text (env values and matrix values).
    fn scalar(&mut self, node: &Node, path: &[Seg]) -> Option<String> {
        match node {
            Node::Str(s) => Some(s.clone()),
            Node::Int(i) => Some(i.to_string()),
            Node::Float(_, text) => Some(text.clone()),
            Node::Bool(b) => Some(b.to_string()),
            _ => {
                self.wrong_type(path, node, "a string, number or boolean");
                None
            }
        }
    }

    fn boolean(&mut self, node: &Node, path: &[Seg]) -> Option<bool> {
        match node {
            Node::Bool(b) => Some(*b),
            _ => {
                self.wrong_type(path, node, "true or false");
                None
            }
        }
    }

    /// A list of strings; a single string is a list of one.
    fn strings(&mut self, node: &Node, path: &[Seg]) -> Option<Vec<String>> {
        match node {
            Node::Str(s) => Some(vec![s.clone()]),
            Node::Seq(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Node::Str(s) => out.push(s.clone()),
                        other => {
                            ok = false;
                            self.wrong_type(&index(path, i), other, "a string");
                        }
                    }
                }
                ok.then_some(out)
            }
            _ => {
                self.wrong_type(path, node, "a list of strings");
                None
            }
        }
    }

    /// Agent labels (`runs_on`): a list of strings (a single string is a list of one), each
    /// a [`Names::Label`]. Every item is looked at, and every problem reported; the valid
    /// labels are kept.
    fn labels(&mut self, node: &Node, path: &[Seg]) -> Vec<String> {
        let items: Vec<(&Node, Vec<Seg>)> = match node {
            Node::Str(_) => vec![(node, path.to_vec())],
            Node::Seq(items) => items.iter().enumerate().map(|(i, it)| (it, index(path, i))).collect(),
            _ => {
                self.wrong_type(path, node, "a list of strings");
                return Vec::new();
            }
        };
        let mut out = Vec::with_capacity(items.len());
        for (item, p) in items {
            let Some(label) = self.string(item, &p) else { continue };
            if Names::Label.check(&label) {
                out.push(label);
                continue;
            }
            let msg = if label.is_empty() {
                "an agent label is empty".into()
            } else {
                format!("agent label `{label}` is not valid")
            };
            self.err_help(
                &p,
                msg,
                "a label is made of letters, digits, `.`, `_` and `-`, e.g. `runs_on: [linux, big]`",
            );
        }
        out
    }

    fn duration(&mut self, node: &Node, path: &[Seg]) -> Option<std::time::Duration> {
        let text = match node {
            Node::Str(s) => s.clone(),
            Node::Int(i) => i.to_string(),
            _ => {
                self.wrong_type(path, node, "a duration such as `90s`, `10m` or `1h30m`");
                return None;
            }
        };
        match parse_duration(&text) {
            Some(d) if !d.is_zero() => Some(d),
            Some(_) => {
                self.err(path, "a duration must be longer than zero");
                None
            }
            None => {
                self.err_help(
                    path,
                    format!("`{text}` is not a duration"),
                    "write a number with a unit: `500ms`, `90s`, `10m`, `1h30m`",
                );
                None
            }
        }
    }

    fn env(&mut self, node: &Node, path: &[Seg]) -> IndexMap<String, String> {
        let mut out = IndexMap::new();
        if let Node::Seq(_) = node {
            self.diags.push(
                Diagnostic::new(path, format!("{} must be a mapping, found a list", path_name(path)))
                    .help("write `NAME: value` pairs, not a list of `NAME=value`"),
            );
            return out;
        }
        let Some(entries) = self.map(node, path, None, "env") else {
            return out;
        };
        for (k, v) in entries {
            let p = child(path, k);
            if !Names::Identifier.check(k) {
                self.diags.push(
                    Diagnostic::new(&p, format!("`{k}` is not a valid environment variable name"))
                        .at_key()
                        .help("use letters, digits and `_`, not starting with a digit"),
                );
                continue;
            }
            match self.scalar(v, &p) {
                Some(s) => {
                    out.insert(k.clone(), s);
                }
                None => {
                    self.broken_vars.insert(k.clone());
                }
            }
        }
        out
    }

    fn patterns(&mut self, node: &Node, path: &[Seg]) -> Option<Patterns> {
        let pats = match node {
            Node::Map(_) => {
                let entries = self.map(node, path, Some(&spec::PATTERN_MAP), "a pattern list")?;
                let mut p = Patterns::default();
                for (k, v) in entries {
                    let vp = child(path, k);
                    match k.as_str() {
                        "include" => p.include = self.strings(v, &vp)?,
                        "exclude" => p.exclude = self.strings(v, &vp)?,
                        _ => {}
                    }
                }
                p
            }
            _ => {
                let include = self.strings(node, path)?;
                if include.is_empty() {
                    self.err_help(path, "an empty list matches nothing", "remove the key to match everything");
                    return None;
                }
                Patterns { include, exclude: Vec::new() }
            }
        };
        let mut ok = true;
        for (list, key) in [(&pats.include, "include"), (&pats.exclude, "exclude")] {
            for (i, g) in list.iter().enumerate() {
                if let Err(e) = globset::Glob::new(g) {
                    ok = false;
                    let mut p = path.to_vec();
                    // The node the list was read from: a list, or a single string.
                    let list_node = match node {
                        Node::Map(m) => {
                            p.push(Seg::Key(key.into()));
                            m.iter().find(|(k, _)| k == key).map(|(_, v)| v)
                        }
                        other => Some(other),
                    };
                    if matches!(list_node, Some(Node::Seq(_))) {
                        p.push(Seg::Index(i));
                    }
                    self.err(&p, format!("`{g}` is not a valid glob: {}", glob_reason(&e)));
                }
            }
        }
        ok.then_some(pats)
    }

    fn pipeline(&mut self, doc: &Node) -> Option<Pipeline> {
        let root: &[Seg] = &[];
        if matches!(doc, Node::Null) {
            self.diags.push(
                Diagnostic::whole_file("the pipeline file is empty")
                    .help("a pipeline is a mapping with at least `steps:`, each step with `image` and `commands`"),
            );
            return None;
        }
        if !matches!(doc, Node::Map(_)) {
            self.diags.push(
                Diagnostic::new(root, format!("the pipeline must be a mapping, found {}", doc.kind()))
                    .help("a pipeline file is a mapping of keys such as `stages:` and `steps:`"),
            );
            return None;
        }
        let entries = self.map(doc, root, Some(&spec::PIPELINE), "the pipeline")?;
        let mut p = Pipeline {
            on: None,
            env: IndexMap::new(),
            stages: DEFAULT_STAGES.iter().map(|s| s.to_string()).collect(),
            defaults: Defaults::default(),
            services: IndexMap::new(),
            runs_on: Vec::new(),
            environments: IndexMap::new(),
            steps: IndexMap::new(),
        };
        let mut saw_steps = false;
        for (k, v) in entries {
            let path = child(root, k);
            match k.as_str() {
                "on" => p.on = self.triggers(v, &path),
                "env" => p.env = self.env(v, &path),
                "stages" => {
                    self.stages_broken = true;
                    if let Some(stages) = self.strings(v, &path) {
                        self.stages_broken = false;
                        let mut seen = HashSet::new();
                        for (i, s) in stages.iter().enumerate() {
                            if !seen.insert(s) {
                                self.err(&index(&path, i), format!("stage `{s}` is listed twice"));
                            }
                        }
                        if stages.is_empty() {
                            self.stages_broken = true;
                            self.err_help(
                                &path,
                                "`stages` is empty",
                                "list the stages in order, e.g. `stages: [build, test]`",
                            );
                        }
                        p.stages = stages;
                    }
                }
                "defaults" => p.defaults = self.defaults(v, &path),
                "services" => p.services = self.services(v, &path),
                "runs_on" => p.runs_on = self.labels(v, &path),
                "environments" => p.environments = self.environments(v, &path),
                "steps" => {
                    saw_steps = true;
                    p.steps = self.steps(v, &path);
                }
                _ => {}
            }
        }
        if !saw_steps {
            self.diags.push(
                Diagnostic::whole_file("the pipeline has no `steps`")
                    .help("add a `steps:` mapping of step names to steps"),
            );
        }
        Some(p)
    }

    fn triggers(&mut self, node: &Node, path: &[Seg]) -> Option<Triggers> {
        if matches!(node, Node::Str(_) | Node::Seq(_)) {
            self.diags.push(
                Diagnostic::new(path, format!("`on` must be a mapping, found {}", node.kind()))
                    .help("name each event as a key: `on: {push: {branches: [main]}, pull_request: {}}`"),
            );
            return None;
        }
        let entries = self.map(node, path, Some(&spec::ON), "`on`")?;
        let mut t = Triggers { manual: true, ..Triggers::default() };
        for (k, v) in entries {
            let p = child(path, k);
            match k.as_str() {
                "push" => {
                    let mut push = PushTrigger::default();
                    for (pk, pv) in self.map(v, &p, Some(&spec::PUSH), "`on.push`").unwrap_or(&[]) {
                        let pp = child(&p, pk);
                        match pk.as_str() {
                            "branches" => push.branches = self.patterns(pv, &pp),
                            "tags" => push.tags = self.patterns(pv, &pp),
                            "paths" => push.paths = self.patterns(pv, &pp),
                            _ => {}
                        }
                    }
                    t.push = Some(push);
                }
                "pull_request" => {
                    let mut pr = PullRequestTrigger::default();
                    for (pk, pv) in self.map(v, &p, Some(&spec::PULL_REQUEST), "`on.pull_request`").unwrap_or(&[]) {
                        let pp = child(&p, pk);
                        match pk.as_str() {
                            "branches" => pr.branches = self.patterns(pv, &pp),
                            "paths" => pr.paths = self.patterns(pv, &pp),
                            _ => {}
                        }
                    }
                    t.pull_request = Some(pr);
                }
                "manual" => t.manual = self.boolean(v, &p).unwrap_or(true),
                "schedule" => t.schedule = self.schedules(v, &p),
                _ => {}
            }
        }
        Some(t)
    }

    fn schedules(&mut self, node: &Node, path: &[Seg]) -> Vec<Schedule> {
        let Node::Seq(items) = node else {
            self.wrong_type(path, node, "a list of `{cron: ...}` mappings");
            return Vec::new();
        };
        if items.is_empty() {
            self.err_help(path, "`schedule` is empty", "remove the key, or add `- cron: \"0 3 * * *\"`");
        }
        let mut out: Vec<Schedule> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ip = index(path, i);
            let Some(entries) = self.map(item, &ip, Some(&spec::SCHEDULE), "a schedule") else { continue };
            let (mut cron, mut zone, mut name) = (None, None, None);
            for (k, v) in entries {
                let p = child(&ip, k);
                match k.as_str() {
                    "cron" => {
                        cron = self.string(v, &p).filter(|c| match super::cron::check_expr(c) {
                            Ok(_) => true,
                            Err(e) => {
                                self.err_help(
                                    &p,
                                    format!("`{c}` is not a valid cron expression: {e}"),
                                    "five fields: minute hour day-of-month month day-of-week, e.g. `0 3 * * 1-5`",
                                );
                                false
                            }
                        })
                    }
                    "timezone" => {
                        zone = self.string(v, &p).filter(|z| match super::cron::check_zone(z) {
                            Ok(_) => true,
                            Err(e) => {
                                let help = match did_you_mean(z, chrono_tz::TZ_VARIANTS.iter().map(|t| t.name())) {
                                    Some(s) => format!("did you mean `{s}`?"),
                                    None => "an IANA name such as `Europe/Berlin`, `America/New_York` or `UTC`".into(),
                                };
                                self.err_help(&p, e, help);
                                false
                            }
                        })
                    }
                    "name" => name = self.string(v, &p),
                    _ => {}
                }
            }
            if !has_key(entries, "cron", &spec::SCHEDULE) {
                self.diags.push(
                    Diagnostic::new(&ip, "a schedule needs a `cron`").at_key().help("e.g. `- cron: \"0 3 * * 1-5\"`"),
                );
            }
            let (Some(cron), Some(timezone)) = (cron, zone.or_else(|| Some(super::cron::DEFAULT_ZONE.into()))) else {
                continue;
            };
            let name = name.unwrap_or_else(|| cron.clone());
            if out.iter().any(|s| s.name == name) {
                self.err_help(
                    &ip,
                    format!("two schedules are named `{name}`"),
                    "give each a `name`: the server keeps one next time per name",
                );
                continue;
            }
            out.push(Schedule { name, cron, timezone });
        }
        out
    }

    fn defaults(&mut self, node: &Node, path: &[Seg]) -> Defaults {
        let mut d = Defaults::default();
        for (k, v) in self.map(node, path, Some(&spec::DEFAULTS), "`defaults`").unwrap_or(&[]) {
            let p = child(path, k);
            match k.as_str() {
                "image" => d.image = self.string(v, &p),
                "timeout" => d.timeout = self.duration(v, &p),
                "retry" => d.retry = self.retry(v, &p),
                "workdir" => d.workdir = self.string(v, &p),
                _ => {}
            }
        }
        d
    }

    fn retry(&mut self, node: &Node, path: &[Seg]) -> Option<Retry> {
        let mut r = Retry { count: 0, on_exit_codes: Vec::new() };
        let count_node = match node {
            Node::Int(_) => Some((node, path.to_vec())),
            Node::Map(_) => {
                let entries = self.map(node, path, Some(&spec::RETRY_MAP), "`retry`")?;
                let mut count = None;
                for (k, v) in entries {
                    let p = child(path, k);
                    match k.as_str() {
                        "count" => count = Some((v, p)),
                        "on_exit_codes" => match v {
                            Node::Seq(items) => {
                                for (i, it) in items.iter().enumerate() {
                                    match it {
                                        Node::Int(c) if (1..=255).contains(c) => r.on_exit_codes.push(*c),
                                        other => self.err(
                                            &index(&p, i),
                                            format!(
                                                "an exit code must be a whole number from 1 to 255, found {}",
                                                found(other)
                                            ),
                                        ),
                                    }
                                }
                            }
                            other => self.wrong_type(&p, other, "a list of exit codes"),
                        },
                        _ => {}
                    }
                }
                if !has_key(entries, "count", &spec::RETRY_MAP) {
                    self.diags.push(
                        Diagnostic::new(path, "`retry` needs a `count`")
                            .at_key()
                            .help("write `retry: {count: 2}`, or just `retry: 2`"),
                    );
                }
                count
            }
            other => {
                self.wrong_type(path, other, "a number of retries or a mapping with `count`");
                None
            }
        };
        let (n, p) = count_node?;
        match n {
            Node::Int(c) if (0..=MAX_RETRIES).contains(c) => {
                r.count = *c as u32;
                Some(r)
            }
            Node::Int(c) => {
                self.err(&p, format!("`retry` count must be from 0 to {MAX_RETRIES}, found {c}"));
                None
            }
            other => {
                self.wrong_type(&p, other, "a whole number");
                None
            }
        }
    }

    fn services(&mut self, node: &Node, path: &[Seg]) -> IndexMap<String, Service> {
        let mut out = IndexMap::new();
        for (name, v) in self.map(node, path, None, "`services`").unwrap_or(&[]) {
            let p = child(path, name);
            if !Names::Host.check(name) {
                self.diags.push(
                    Diagnostic::new(&p, format!("service name `{name}` is not a valid host name"))
                        .at_key()
                        .help("steps reach a service by its name: use lowercase letters, digits and `-`"),
                );
            }
            if let Some(s) = self.service(v, &p) {
                out.insert(name.clone(), s);
            }
        }
        out
    }

    fn service(&mut self, node: &Node, path: &[Seg]) -> Option<Service> {
        if !matches!(node, Node::Map(_) | Node::Null) {
            self.diags.push(
                Diagnostic::new(path, format!("service {} must be a mapping, found {}", path_name(path), node.kind()))
                    .help("a service is a mapping with at least `image:`, e.g. `db: {image: postgres:16}`"),
            );
            return None;
        }
        let entries = self.map(node, path, Some(&spec::SERVICE), "a service")?;
        let mut s =
            Service { image: String::new(), env: IndexMap::new(), command: None, ports: Vec::new(), ready: None };
        let mut image = None;
        for (k, v) in entries {
            let p = child(path, k);
            match k.as_str() {
                "image" => image = self.string(v, &p),
                "env" => s.env = self.env(v, &p),
                "command" => {
                    s.command = match v {
                        Node::Str(c) => Some(vec!["/bin/sh".into(), "-c".into(), c.clone()]),
                        _ => self.strings(v, &p),
                    }
                }
                "ports" => {
                    if let Node::Seq(items) = v {
                        for (i, it) in items.iter().enumerate() {
                            match port(it) {
                                Some(n) => s.ports.push(n),
                                None => self.err(
                                    &index(&p, i),
                                    format!("a port must be a number from 1 to 65535, found {}", found(it)),
                                ),
                            }
                        }
                    } else {
                        self.wrong_type(&p, v, "a list of ports");
                    }
                }
                "ready" => s.ready = self.ready(v, &p),
                _ => {}
            }
        }
        match image {
            Some(i) => s.image = i,
            None => {
                if !has_key(entries, "image", &spec::SERVICE) {
                    self.diags.push(Diagnostic::new(path, "a service needs an `image`").at_key());
                }
                return None;
            }
        }
        Some(s)
    }

    fn ready(&mut self, node: &Node, path: &[Seg]) -> Option<Ready> {
        let mut r = Ready { command: None, tcp: None, timeout: DEFAULT_READY_TIMEOUT };
        match node {
            Node::Str(c) => r.command = Some(c.clone()),
            Node::Map(_) => {
                let entries = self.map(node, path, Some(&spec::READY), "`ready`")?;
                for (k, v) in entries {
                    let p = child(path, k);
                    match k.as_str() {
                        "command" => r.command = self.string(v, &p),
                        "tcp" => match port(v) {
                            Some(n) => r.tcp = Some(n),
                            None => {
                                self.err(&p, format!("`tcp` must be a port number from 1 to 65535, found {}", found(v)))
                            }
                        },
                        "timeout" => r.timeout = self.duration(v, &p)?,
                        _ => {}
                    }
                }
                // A `command` or `tcp` that is there but wrong has been reported already.
                if !entries.iter().any(|(k, _)| k == "command" || k == "tcp") {
                    self.diags.push(
                        Diagnostic::new(path, "`ready` needs a `command` or a `tcp` port")
                            .at_key()
                            .help("e.g. `ready: {tcp: 5432}` or `ready: pg_isready -h localhost`"),
                    );
                }
                if r.command.is_none() && r.tcp.is_none() {
                    return None;
                }
            }
            other => {
                self.wrong_type(path, other, "a command or a mapping with `command`/`tcp`");
                return None;
            }
        }
        Some(r)
    }

    fn steps(&mut self, node: &Node, path: &[Seg]) -> IndexMap<String, Step> {
        let mut out = IndexMap::new();
        let Some(entries) = self.map(node, path, None, "`steps`") else {
            return out;
        };
        if entries.is_empty() {
            self.err(path, "`steps` is empty: a pipeline needs at least one step");
        }
        for (name, v) in entries {
            let p = child(path, name);
            self.step_names.insert(name.clone());
            if !Names::Step.check(name) {
                self.diags.push(
                    Diagnostic::new(&p, format!("step name `{name}` is not allowed"))
                        .at_key()
                        .help("use letters, digits, `-`, `_` and `.`, starting with a letter or digit"),
                );
            }
            if let Node::Map(m) = v
                && m.iter().any(|(k, _)| k == "stage")
            {
                self.explicit_stage.insert(name.clone());
            }
            if let Some(step) = self.step(v, &p)
                && !out.contains_key(name)
            {
                out.insert(name.clone(), step);
            }
        }
        out
    }

    fn step(&mut self, node: &Node, path: &[Seg]) -> Option<Step> {
        if !matches!(node, Node::Map(_) | Node::Null) {
            self.diags.push(
                Diagnostic::new(path, format!("step {} must be a mapping, found {}", path_name(path), node.kind()))
                    .help("a step is a mapping with at least `image:` and `commands:`"),
            );
            return None;
        }
        let entries = self.map(node, path, Some(&spec::STEP), "a step")?;
        let mut s = Step {
            stage: DEFAULT_STAGE.to_string(),
            image: None,
            runs_on: Vec::new(),
            commands: Vec::new(),
            env: IndexMap::new(),
            workdir: None,
            needs: None,
            when: When::default(),
            timeout: None,
            retry: None,
            allow_failure: false,
            secrets: Vec::new(),
            services: IndexMap::new(),
            cache: Vec::new(),
            artifacts: None,
            matrix: None,
            environment: None,
        };
        for (k, v) in entries {
            let p = child(path, k);
            match k.as_str() {
                "stage" => {
                    if let Some(st) = self.string(v, &p) {
                        s.stage = st;
                    }
                }
                "image" => s.image = self.string(v, &p),
                "runs_on" => s.runs_on = self.labels(v, &p),
                "commands" => s.commands = self.commands(v, &p),
                "env" => s.env = self.env(v, &p),
                "workdir" => s.workdir = self.string(v, &p),
                "needs" => {
                    s.needs = match v {
                        Node::Null => Some(Vec::new()),
                        _ => self.strings(v, &p),
                    }
                }
                "when" => s.when = self.when(v, &p),
                "timeout" => s.timeout = self.duration(v, &p),
                "retry" => s.retry = self.retry(v, &p),
                "allow_failure" => s.allow_failure = self.boolean(v, &p).unwrap_or(false),
                "secrets" => s.secrets = self.secret_names(v, &p),
                "services" => s.services = self.services(v, &p),
                "cache" => {
                    if matches!(v, Node::Seq(_))
                        && let Some(Seg::Key(name)) = path.last()
                    {
                        self.cache_lists.insert(name.clone());
                    }
                    s.cache = self.caches(v, &p);
                }
                "artifacts" => s.artifacts = self.artifacts(v, &p),
                "matrix" => s.matrix = self.matrix(v, &p),
                "environment" => s.environment = self.environment(v, &p),
                _ => {}
            }
        }
        Some(s)
    }

    /// `environments`: rules by environment name.
    fn environments(&mut self, node: &Node, path: &[Seg]) -> IndexMap<String, EnvironmentRules> {
        let mut out = IndexMap::new();
        for (name, v) in self.map(node, path, None, "`environments`").unwrap_or(&[]) {
            let p = child(path, name);
            if !Names::Step.check(name) {
                self.diags.push(
                    Diagnostic::new(&p, format!("environment name `{name}` is not allowed"))
                        .at_key()
                        .help("use letters, digits, `-`, `_` and `.`, starting with a letter or digit"),
                );
            }
            let mut rules = EnvironmentRules::default();
            for (k, rv) in self.map(v, &p, Some(&spec::ENVIRONMENT_RULES), "an environment's rules").unwrap_or(&[]) {
                let rp = child(&p, k);
                match k.as_str() {
                    "branches" => rules.branches = self.patterns(rv, &rp),
                    "tags" => rules.tags = self.patterns(rv, &rp),
                    "approval" => rules.approval = self.approval(rv, &rp),
                    "wait" => rules.wait = self.duration(rv, &rp),
                    "secrets" => rules.secrets = self.secret_names(rv, &rp),
                    "order" => match rv {
                        Node::Str(w) if w == "newest" => rules.order = DeployOrder::Newest,
                        Node::Str(w) if w == "fifo" => rules.order = DeployOrder::Fifo,
                        Node::Str(w) => self.err_help(
                            &rp,
                            format!("`order` must be `newest` or `fifo`, found `{w}`"),
                            "`newest`: the newest waiting commit deploys next; `fifo`: they deploy in turn",
                        ),
                        other => self.wrong_type(&rp, other, "`newest` or `fifo`"),
                    },
                    _ => {}
                }
            }
            out.insert(name.clone(), rules);
        }
        out
    }

    /// Secret names (a step's or an environment's `secrets`): each an identifier.
    fn secret_names(&mut self, node: &Node, path: &[Seg]) -> Vec<String> {
        let names = self.strings(node, path).unwrap_or_default();
        for (i, name) in names.iter().enumerate() {
            if !interp::is_identifier(name) {
                let ip = if matches!(node, Node::Seq(_)) { index(path, i) } else { path.to_vec() };
                self.err_help(
                    &ip,
                    format!("secret name `{name}` is not a valid identifier"),
                    "a secret becomes an environment variable: use letters, digits and `_`, not starting with a digit",
                );
            }
        }
        names
    }

    /// An environment's `approval`: who, how many of them, how long.
    fn approval(&mut self, node: &Node, path: &[Seg]) -> Option<Approval> {
        let entries = self.map(node, path, Some(&spec::APPROVAL), "`approval`")?;
        let (mut approvers, mut required, mut timeout) = (None, None, None);
        let mut ok = true;
        for (k, v) in entries {
            let p = child(path, k);
            match k.as_str() {
                "approvers" => {
                    approvers = self.strings(v, &p);
                    ok &= approvers.is_some();
                    for (i, who) in approvers.iter().flatten().enumerate() {
                        let ip = if matches!(v, Node::Seq(_)) { index(&p, i) } else { p.clone() };
                        if !Names::Step.check(who) {
                            ok = false;
                            self.err_help(
                                &ip,
                                format!("approver `{who}` is not a valid name"),
                                "approvers are names of the server's API tokens: letters, digits, `-`, `_` and `.`",
                            );
                        }
                    }
                }
                "required" => match v {
                    Node::Int(n) if *n >= 1 => required = Some((*n as usize, p)),
                    Node::Int(n) => {
                        ok = false;
                        self.err(&p, format!("`required` must be at least 1, found {n}"));
                    }
                    other => {
                        ok = false;
                        self.wrong_type(&p, other, "a number of approvers");
                    }
                },
                "timeout" => {
                    timeout = self.duration(v, &p);
                    ok &= timeout.is_some();
                }
                _ => {}
            }
        }
        let Some(approvers) = approvers else {
            if !has_key(entries, "approvers", &spec::APPROVAL) {
                self.diags.push(
                    Diagnostic::new(path, "`approval` needs `approvers`")
                        .at_key()
                        .help("e.g. `approval: {approvers: [alice, bob], required: 1}`"),
                );
            }
            return None;
        };
        if approvers.is_empty() {
            self.err_help(&child(path, "approvers"), "`approvers` is empty", "name at least one approver");
            return None;
        }
        let mut seen = HashSet::new();
        if let Some(i) = approvers.iter().position(|a| !seen.insert(a.as_str())) {
            ok = false;
            self.err(&index(&child(path, "approvers"), i), format!("approver `{}` is listed twice", approvers[i]));
        }
        let required = match required {
            Some((n, p)) if n > approvers.len() => {
                self.err_help(
                    &p,
                    match approvers.len() {
                        1 => format!("`required` is {n}, but only 1 approver is listed"),
                        m => format!("`required` is {n}, but only {m} approvers are listed"),
                    },
                    "`required` says how many of `approvers` must approve",
                );
                return None;
            }
            Some((n, _)) => n,
            None => 1,
        };
        ok.then(|| Approval { approvers, required, timeout: timeout.unwrap_or(DEFAULT_APPROVAL_TIMEOUT) })
    }

    /// A step's `environment`: a name, or `{name, url}`.
    fn environment(&mut self, node: &Node, path: &[Seg]) -> Option<Environment> {
        let env = match node {
            Node::Str(name) => Environment { name: name.clone(), url: None },
            Node::Map(_) => {
                let entries = self.map(node, path, Some(&spec::ENVIRONMENT), "`environment`")?;
                let (mut name, mut url) = (None, None);
                for (k, v) in entries {
                    let p = child(path, k);
                    match k.as_str() {
                        "name" => name = self.string(v, &p),
                        "url" => url = self.string(v, &p),
                        _ => {}
                    }
                }
                if name.is_none() {
                    if !has_key(entries, "name", &spec::ENVIRONMENT) {
                        self.diags.push(
                            Diagnostic::new(path, "`environment` needs a `name`")
                                .at_key()
                                .help("e.g. `environment: {name: staging, url: https://staging.example.com}`"),
                        );
                    }
                    return None;
                }
                Environment { name: name?, url }
            }
            other => {
                self.wrong_type(path, other, "an environment name or a mapping with `name` and `url`");
                return None;
            }
        };
        let mut ok = true;
        if !Names::Step.check(&env.name) {
            ok = false;
            let p = if matches!(node, Node::Map(_)) { child(path, "name") } else { path.to_vec() };
            self.err_help(
                &p,
                format!("environment name `{}` is not allowed", env.name),
                "use letters, digits, `-`, `_` and `.`, starting with a letter or digit",
            );
        }
        if let Some(u) = &env.url
            && let Err(e) = interp::parse(u)
        {
            ok = false;
            self.err(&child(path, "url"), format!("`url`: {e}"));
        }
        ok.then_some(env)
    }

    fn commands(&mut self, node: &Node, path: &[Seg]) -> Vec<String> {
        match node {
            Node::Str(s) => vec![s.clone()],
            Node::Seq(items) => {
                let mut out = Vec::new();
                for (i, it) in items.iter().enumerate() {
                    match it {
                        Node::Str(s) => out.push(s.clone()),
                        Node::Int(_) | Node::Float(..) | Node::Bool(_) => out.push(match it {
                            Node::Int(n) => n.to_string(),
                            Node::Float(_, text) => text.clone(),
                            Node::Bool(b) => b.to_string(),
                            _ => unreachable!("matched scalars above"),
                        }),
                        Node::Map(m) => {
                            let hint = m
                                .first()
                                .map(|(k, _)| {
                                    format!(
                                        "YAML read `{k}: ...` as a mapping: quote the whole command, e.g. '{k}: ...'"
                                    )
                                })
                                .unwrap_or_default();
                            self.err_help(&index(path, i), "a command must be a string, found a mapping", hint);
                        }
                        other => self.wrong_type(&index(path, i), other, "a string"),
                    }
                }
                out
            }
            other => {
                self.wrong_type(path, other, "a list of commands");
                Vec::new()
            }
        }
    }

    fn when(&mut self, node: &Node, path: &[Seg]) -> When {
        let mut w = When::default();
        for (k, v) in self.map(node, path, Some(&spec::WHEN), "`when`").unwrap_or(&[]) {
            let p = child(path, k);
            match k.as_str() {
                "branch" => w.branch = self.patterns(v, &p),
                "tag" => w.tag = self.patterns(v, &p),
                "paths" => w.paths = self.patterns(v, &p),
                "event" => {
                    let Some(names) = self.strings(v, &p) else { continue };
                    if names.is_empty() {
                        self.err_help(
                            &p,
                            "`event` is empty: the step could never run",
                            "remove the key to run on every event",
                        );
                        continue;
                    }
                    let mut events = Vec::new();
                    for (i, n) in names.iter().enumerate() {
                        let ip = if matches!(v, Node::Seq(_)) { index(&p, i) } else { p.clone() };
                        match Event::parse(n) {
                            Some(e) => events.push(e),
                            None => {
                                let all = Event::ALL.map(Event::as_str);
                                let help = match did_you_mean(n, all) {
                                    Some(s) => format!("did you mean `{s}`?"),
                                    None => format!("expected one of: {}", all.join(", ")),
                                };
                                self.err_help(&ip, format!("unknown event `{n}`"), help);
                            }
                        }
                    }
                    w.event = Some(events);
                }
                "status" => {
                    let Some(names) = self.strings(v, &p) else { continue };
                    let mut cond = StatusCond { on_success: false, on_failure: false };
                    for (i, n) in names.iter().enumerate() {
                        let ip = if matches!(v, Node::Seq(_)) { index(&p, i) } else { p.clone() };
                        match n.as_str() {
                            "success" => cond.on_success = true,
                            "failure" => cond.on_failure = true,
                            "always" => {
                                cond.on_success = true;
                                cond.on_failure = true;
                            }
                            _ => {
                                let help = match did_you_mean(n, ["success", "failure", "always"]) {
                                    Some(s) => format!("did you mean `{s}`?"),
                                    None => "expected success, failure or always".to_string(),
                                };
                                self.err_help(&ip, format!("unknown status `{n}`"), help);
                            }
                        }
                    }
                    if names.is_empty() {
                        self.err(&p, "`status` is empty: the step could never run");
                    } else {
                        w.status = cond;
                    }
                }
                _ => {}
            }
        }
        w
    }

    fn caches(&mut self, node: &Node, path: &[Seg]) -> Vec<Cache> {
        match node {
            Node::Map(_) => self.cache(node, path).into_iter().collect(),
            Node::Seq(items) => {
                items.iter().enumerate().filter_map(|(i, it)| self.cache(it, &index(path, i))).collect()
            }
            other => {
                self.wrong_type(path, other, "a mapping with `key` and `paths` (or a list of them)");
                Vec::new()
            }
        }
    }

    fn cache(&mut self, node: &Node, path: &[Seg]) -> Option<Cache> {
        let entries = self.map(node, path, Some(&spec::CACHE), "a cache")?;
        let mut key = None;
        let mut paths = None;
        for (k, v) in entries {
            let p = child(path, k);
            match k.as_str() {
                "key" => key = self.string(v, &p),
                "paths" => paths = self.strings(v, &p),
                _ => {}
            }
        }
        if !has_key(entries, "key", &spec::CACHE) {
            self.diags.push(
                Diagnostic::new(path, "a cache needs a `key`")
                    .at_key()
                    .help("e.g. `key: deps-${hash:package-lock.json}`"),
            );
        }
        if !has_key(entries, "paths", &spec::CACHE) {
            self.diags.push(
                Diagnostic::new(path, "a cache needs `paths`")
                    .at_key()
                    .help("the directories to keep, e.g. `paths: [target/]`"),
            );
        }
        let paths = paths?;
        if paths.is_empty() {
            self.err(&child(path, "paths"), "a cache needs at least one path");
        }
        Some(Cache { key: key?, paths })
    }

    fn artifacts(&mut self, node: &Node, path: &[Seg]) -> Option<Artifacts> {
        let a = match node {
            Node::Map(_) => {
                let entries = self.map(node, path, Some(&spec::ARTIFACTS), "`artifacts`")?;
                let mut a = Artifacts { paths: Vec::new(), optional: false };
                for (k, v) in entries {
                    let p = child(path, k);
                    match k.as_str() {
                        "paths" => a.paths = self.strings(v, &p)?,
                        "optional" => a.optional = self.boolean(v, &p).unwrap_or(false),
                        _ => {}
                    }
                }
                a
            }
            _ => Artifacts { paths: self.strings(node, path)?, optional: false },
        };
        for (i, g) in a.paths.iter().enumerate() {
            let p = if matches!(node, Node::Map(_)) { index(&child(path, "paths"), i) } else { index(path, i) };
            if g.starts_with('/') || g.starts_with('~') || g.split('/').any(|c| c == "..") {
                self.err_help(
                    &p,
                    format!("artifact path `{g}` leaves the workspace"),
                    "artifacts are paths relative to the workspace, without `..`",
                );
            } else if let Err(e) = globset::Glob::new(g) {
                self.err(&p, format!("`{g}` is not a valid glob: {}", glob_reason(&e)));
            }
        }
        Some(a)
    }

    fn matrix(&mut self, node: &Node, path: &[Seg]) -> Option<Matrix> {
        let entries = self.map(node, path, None, "`matrix`")?;
        let mut m = Matrix { axes: IndexMap::new(), include: Vec::new(), exclude: Vec::new() };
        let mut wrote_axis = false;
        let combos = |l: &mut Loader, v: &Node, p: &[Seg]| -> Vec<IndexMap<String, String>> {
            let Node::Seq(items) = v else {
                l.wrong_type(p, v, "a list of mappings from axis to value");
                return Vec::new();
            };
            let mut out = Vec::new();
            for (i, it) in items.iter().enumerate() {
                let ip = index(p, i);
                let mut c = IndexMap::new();
                for (k, val) in l.map(it, &ip, None, "a matrix combination").unwrap_or(&[]) {
                    if let Some(s) = l.scalar(val, &child(&ip, k)) {
                        c.insert(k.clone(), s);
                    }
                }
                out.push(c);
            }
            out
        };
        for (k, v) in entries {
            let p = child(path, k);
            match k.as_str() {
                "include" => m.include = combos(self, v, &p),
                "exclude" => m.exclude = combos(self, v, &p),
                axis => {
                    wrote_axis = true;
                    if !interp::is_identifier(axis) {
                        self.diags.push(
                            Diagnostic::new(&p, format!("matrix axis `{axis}` is not a valid variable name"))
                                .at_key()
                                .help("each axis becomes an environment variable: use letters, digits and `_`"),
                        );
                        continue;
                    }
                    let Node::Seq(items) = v else {
                        self.wrong_type(&p, v, "a list of values");
                        continue;
                    };
                    if items.is_empty() {
                        self.err(&p, format!("matrix axis `{axis}` has no values"));
                    }
                    let mut values: Vec<String> = Vec::with_capacity(items.len());
                    for (i, it) in items.iter().enumerate() {
                        let Some(v) = self.scalar(it, &index(&p, i)) else { continue };
                        if values.contains(&v) {
                            // Two variants would get the same name.
                            self.err(&index(&p, i), format!("matrix axis `{axis}` lists `{v}` twice"));
                            continue;
                        }
                        values.push(v);
                    }
                    m.axes.insert(axis.to_string(), values);
                }
            }
        }
        for (i, ex) in m.exclude.iter().enumerate() {
            for k in ex.keys() {
                if !m.axes.contains_key(k) {
                    let help = did_you_mean(k, m.axes.keys().map(String::as_str))
                        .map(|s| format!("did you mean `{s}`?"))
                        .unwrap_or_else(|| "`exclude` can only name axes of the matrix".into());
                    let p = child(&index(&child(path, "exclude"), i), k);
                    self.diags.push(
                        Diagnostic::new(&p, format!("`exclude` names `{k}`, which is not a matrix axis"))
                            .at_key()
                            .help(help),
                    );
                }
            }
        }
        for (i, inc) in m.include.iter().enumerate() {
            for k in inc.keys() {
                if !interp::is_identifier(k) {
                    let p = child(&index(&child(path, "include"), i), k);
                    self.diags
                        .push(Diagnostic::new(&p, format!("matrix axis `{k}` is not a valid variable name")).at_key());
                }
            }
        }
        if m.axes.is_empty() && m.include.is_empty() {
            if !wrote_axis {
                self.diags.push(
                    Diagnostic::new(path, "the matrix has no axes")
                        .at_key()
                        .help("add an axis with its values, e.g. `matrix: {version: [18, 20]}`"),
                );
            }
            return None;
        }
        Some(m)
    }
}

fn path_name(path: &[Seg]) -> String {
    match path.last() {
        Some(Seg::Key(k)) => format!("`{k}`"),
        Some(Seg::Index(_)) => match path.iter().rev().find_map(|s| match s {
            Seg::Key(k) => Some(k),
            Seg::Index(_) => None,
        }) {
            Some(k) => format!("each item of `{k}`"),
            None => "each item".to_string(),
        },
        None => "the pipeline".to_string(),
    }
}

/// Whether `key` is written in a mapping, or misspelt in a way that has been reported as an
/// unknown key with "did you mean `key`?" (then saying that it is missing would be noise).
fn has_key(entries: &[(String, Node)], key: &str, known: &Obj) -> bool {
    entries.iter().any(|(k, _)| k == key || (!known.has(k) && did_you_mean(k, known.keys()) == Some(key)))
}

/// A value as an error message quotes it: `256`, or what kind of thing it is.
fn found(n: &Node) -> String {
    match n {
        Node::Int(i) => i.to_string(),
        other => other.kind().to_string(),
    }
}

fn port(n: &Node) -> Option<u16> {
    match n {
        Node::Int(i) if (1..=65535).contains(i) => Some(*i as u16),
        _ => None,
    }
}

fn glob_reason(e: &globset::Error) -> String {
    e.kind().to_string()
}
