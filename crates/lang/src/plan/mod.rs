//! The plan: which steps run for an event, in what order, with what settings; and which are
//! skipped, and why. A pure function of (pipeline, context): no I/O, no clock, no Docker.
//! `orch plan` prints it; `orch ci` and the server execute it.

pub mod render;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use globset::{GlobBuilder, GlobSetBuilder};
use indexmap::IndexMap;
use serde::Serialize;

use crate::pipeline::interp;
use crate::pipeline::{
    Environment, EnvironmentRules, Event, Patterns, Pipeline, Retry, Service, StatusCond, Step, When,
};

/// Where every step's workspace is mounted in its container.
pub const WORKSPACE: &str = "/workspace";

/// What triggered a run: the facts `when` and `on` are judged against.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Context {
    pub event: Option<Event>,
    /// The branch pushed, or a pull request's head branch.
    pub branch: Option<String>,
    /// A pull request's base branch.
    pub base_branch: Option<String>,
    pub tag: Option<String>,
    pub commit: String,
    pub pr: Option<u64>,
    pub repo: String,
    pub run_id: String,
    /// Files changed by the event; `None` when unknown (path conditions then hold).
    pub changed: Option<Vec<String>>,
    /// The name of the `on.schedule` item that started a `schedule` run.
    #[serde(default)]
    pub schedule: Option<String>,
    /// The environment a `deploy` run deploys to: only the steps deploying there run, with
    /// what they need.
    #[serde(default)]
    pub environment: Option<String>,
}

impl Context {
    pub fn event(&self) -> Event {
        self.event.unwrap_or(Event::Manual)
    }

    /// The branch `when.branch` and `on.*.branches` look at: a pull request's base branch
    /// (as in Woodpecker and Drone), else the pushed branch.
    pub fn target_branch(&self) -> Option<&str> {
        match self.event() {
            Event::PullRequest => self.base_branch.as_deref(),
            Event::Tag => None,
            _ => self.branch.as_deref(),
        }
    }

    /// The built-in variables, as every step sees them.
    pub fn builtins(&self) -> IndexMap<String, String> {
        let short: String = self.commit.chars().take(8).collect();
        let vals = [
            ("CI", "true".to_string()),
            ("ORCH", "true".to_string()),
            ("ORCH_EVENT", self.event().as_str().to_string()),
            ("ORCH_BRANCH", self.branch.clone().unwrap_or_default()),
            ("ORCH_BASE_BRANCH", self.base_branch.clone().unwrap_or_default()),
            ("ORCH_TAG", self.tag.clone().unwrap_or_default()),
            ("ORCH_COMMIT", self.commit.clone()),
            ("ORCH_COMMIT_SHORT", short),
            ("ORCH_PR", self.pr.map(|n| n.to_string()).unwrap_or_default()),
            ("ORCH_REPO", self.repo.clone()),
            ("ORCH_RUN_ID", self.run_id.clone()),
            ("ORCH_SCHEDULE", self.schedule.clone().unwrap_or_default()),
            ("ORCH_WORKSPACE", WORKSPACE.to_string()),
        ];
        vals.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}

/// Which steps to run when only some are wanted (`orch ci --step`).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Step names (a matrix step's base name selects all its variants).
    pub steps: Vec<String>,
}

/// The resolved plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub context: Context,
    pub stages: Vec<String>,
    /// `None` when the pipeline's `on:` triggers accept the event; else why not.
    pub not_triggered: Option<String>,
    /// Steps that run, in dependency order (a step comes after everything it needs).
    pub steps: Vec<PlannedStep>,
    pub skipped: Vec<SkippedStep>,
    /// The rules of the environments the planned steps deploy to (their gates, their
    /// secrets), by name.
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    pub environments: IndexMap<String, EnvironmentRules>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedStep {
    /// Unique name; a matrix variant is `base[axis=value,...]`.
    pub name: String,
    /// The step's key in the file.
    pub step: String,
    pub stage: String,
    /// Agent labels the step needs: the pipeline's `runs_on` and the step's own, sorted,
    /// each once.
    pub runs_on: Vec<String>,
    /// Parallel group: 0 for steps that need nothing, else one more than the highest group
    /// among its needs.
    pub group: usize,
    pub image: String,
    pub commands: Vec<String>,
    /// Every variable the step's container gets (secrets are added at run time).
    pub env: IndexMap<String, String>,
    pub workdir: String,
    /// Steps this one waits for (names of planned steps).
    pub needs: Vec<String>,
    pub status: StatusCond,
    #[serde(rename = "timeout_secs", serialize_with = "ser_secs")]
    pub timeout: Option<Duration>,
    pub retry: Retry,
    pub allow_failure: bool,
    pub secrets: Vec<String>,
    pub services: IndexMap<String, Service>,
    pub cache: Vec<crate::pipeline::Cache>,
    pub artifacts: Option<crate::pipeline::Artifacts>,
    pub matrix: IndexMap<String, String>,
    /// The environment the step deploys to, its URL interpolated. Every variant of a matrix
    /// step deploys to the same one: together they are one deployment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
}

impl Plan {
    /// The agent labels the run needs: every label a planned step asks for (skipped steps
    /// do not count), sorted, each once. A run executes on one machine, so it goes to an
    /// agent that has all of them. Empty when no step runs.
    pub fn labels(&self) -> Vec<String> {
        sorted_union(self.steps.iter().map(|s| &s.runs_on))
    }
}

/// The labels of every list, sorted, each once.
fn sorted_union<'a>(lists: impl IntoIterator<Item = &'a Vec<String>>) -> Vec<String> {
    let mut out: Vec<String> = lists.into_iter().flatten().cloned().collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct SkippedStep {
    pub name: String,
    pub step: String,
    pub stage: String,
    pub reason: String,
}

fn ser_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    #[error("no step is named `{name}`{}", hint.as_ref().map(|h| format!(" (did you mean `{h}`?)")).unwrap_or_default())]
    UnknownStep { name: String, hint: Option<String> },
    #[error("step `{step}`: {message}")]
    Interpolation { step: String, message: String },
    #[error("steps `{first}` and `{second}` would share the file and container name `{slug}`; rename one")]
    NameClash { first: String, second: String, slug: String },
}

/// The longest step name used as is in file and container names.
const SLUG_MAX: usize = 64;

/// The name a step's log file, artifact directory and containers carry. A step name made of
/// `[A-Za-z0-9_.-]` (at most 64 bytes, not starting with `.`) is used as is; any other
/// (a matrix variant such as `test[os=a b]`) becomes its readable part and a hash of the
/// whole name (`test_os_a_b_-1f2e3d4c`), so variants that differ only in other
/// characters never share a file. [`plan`] refuses the (deliberate) clash that is left.
pub fn slug(step: &str) -> String {
    let clean = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if !step.is_empty() && step.len() <= SLUG_MAX && step.chars().all(clean) && !step.starts_with('.') {
        return step.to_string();
    }
    use sha2::Digest;
    let readable: String = step.chars().take(40).map(|c| if clean(c) { c } else { '_' }).collect();
    let digest = sha2::Sha256::digest(step.as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{hash}", readable.trim_start_matches('.'))
}

/// Plans `pipeline` for `ctx`.
pub fn plan(pipeline: &Pipeline, ctx: &Context, selection: &Selection) -> Result<Plan, PlanError> {
    let not_triggered = check_triggers(pipeline, ctx).err();
    let stage_idx: HashMap<&str, usize> = pipeline.stages.iter().enumerate().map(|(i, s)| (s.as_str(), i)).collect();

    // 1. Matrix expansion: instances in stage order, then file order.
    struct Inst<'a> {
        name: String,
        base: &'a str,
        step: &'a Step,
        stage: usize,
        matrix: IndexMap<String, String>,
    }
    let mut insts: Vec<Inst> = Vec::new();
    for (base, step) in &pipeline.steps {
        let combos = step.matrix.as_ref().map(|m| m.expand()).unwrap_or_default();
        let stage = stage_idx.get(step.stage.as_str()).copied().unwrap_or(0);
        if combos.is_empty() {
            insts.push(Inst { name: base.clone(), base, step, stage, matrix: IndexMap::new() });
        }
        for combo in combos {
            let label: Vec<String> = combo.iter().map(|(k, v)| format!("{k}={v}")).collect();
            insts.push(Inst { name: format!("{base}[{}]", label.join(",")), base, step, stage, matrix: combo });
        }
    }
    insts.sort_by_key(|i| i.stage);
    // Two variants with one name (`x: ['a,y=b']` beside `y`), or one file name.
    let mut slugs: HashMap<String, &str> = HashMap::new();
    for i in &insts {
        let s = slug(&i.name);
        if let Some(first) = slugs.insert(s.clone(), &i.name) {
            return Err(PlanError::NameClash { first: first.to_string(), second: i.name.clone(), slug: s });
        }
    }
    let by_base: HashMap<&str, Vec<usize>> = insts.iter().enumerate().fold(HashMap::new(), |mut m, (i, inst)| {
        m.entry(inst.base).or_default().push(i);
        m
    });

    // 2. Plan-time conditions.
    let mut skip: Vec<Option<String>> = insts
        .iter()
        .map(|i| match &not_triggered {
            Some(why) => Some(format!("pipeline not triggered: {why}")),
            None => check_when(&i.step.when, ctx)
                .and_then(|()| match &i.step.environment {
                    Some(env) => check_environment(pipeline, &env.name, ctx),
                    None => Ok(()),
                })
                .err(),
        })
        .collect();

    // 3. Explicit needs; a skipped need skips the steps that wait for its success.
    let explicit: Vec<Option<Vec<usize>>> = insts
        .iter()
        .map(|i| {
            i.step
                .needs
                .as_ref()
                .map(|needs| needs.iter().flat_map(|n| by_base.get(n.as_str()).cloned().unwrap_or_default()).collect())
        })
        .collect();
    loop {
        let mut changed = false;
        for i in 0..insts.len() {
            if skip[i].is_some() || insts[i].step.when.status.on_failure {
                continue;
            }
            if let Some(deps) = &explicit[i]
                && let Some(&d) = deps.iter().find(|&&d| skip[d].is_some())
            {
                skip[i] = Some(format!("needs `{}`, which is skipped", insts[d].name));
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }

    // 4. Dependencies of the steps that remain: explicit needs, or the nearest earlier stage
    //    that has steps left. A skipped need (only a `status: always/failure` step still has
    //    one) is replaced by what it would have waited for, so such a step keeps its place
    //    after them instead of starting at once.
    let active_in_stage = |s: usize, skip: &[Option<String>]| -> Vec<usize> {
        (0..insts.len()).filter(|&i| insts[i].stage == s && skip[i].is_none()).collect()
    };
    let raw: Vec<Vec<usize>> = (0..insts.len())
        .map(|i| match &explicit[i] {
            Some(d) => d.clone(),
            None => {
                (0..insts[i].stage).rev().map(|s| active_in_stage(s, &skip)).find(|v| !v.is_empty()).unwrap_or_default()
            }
        })
        .collect();
    // What step `i` waits for, looking through skipped steps (memoized: a skipped step
    // shared by many paths is resolved once). `needs` has no cycles (checked when loading).
    fn through_skipped(
        i: usize,
        raw: &[Vec<usize>],
        skip: &[Option<String>],
        memo: &mut Vec<Option<Vec<usize>>>,
    ) -> Vec<usize> {
        if let Some(done) = &memo[i] {
            return done.clone();
        }
        let mut out: Vec<usize> = Vec::new();
        for &d in &raw[i] {
            let found = if skip[d].is_none() { vec![d] } else { through_skipped(d, raw, skip, memo) };
            for f in found {
                if !out.contains(&f) {
                    out.push(f);
                }
            }
        }
        memo[i] = Some(out.clone());
        out
    }
    let mut memo = vec![None; insts.len()];
    let deps: Vec<Vec<usize>> = (0..insts.len()).map(|i| through_skipped(i, &raw, &skip, &mut memo)).collect();

    // 5. Selection: the named steps and everything they need. A `deploy` run selects the
    //    steps deploying to its environment.
    let deploying: Vec<String>;
    let selection = match (ctx.event(), &ctx.environment) {
        (Event::Deploy, Some(env)) => {
            deploying = insts
                .iter()
                .filter(|i| i.step.environment.as_ref().is_some_and(|e| e.name == *env))
                .map(|i| i.base.to_string())
                .collect();
            if deploying.is_empty() {
                for s in skip.iter_mut().filter(|s| s.is_none()) {
                    *s = Some(format!("no step deploys to environment `{env}`"));
                }
            }
            &Selection { steps: deploying }
        }
        _ => selection,
    };
    if !selection.steps.is_empty() {
        let mut wanted: Vec<usize> = Vec::new();
        for name in &selection.steps {
            let hits: Vec<usize> =
                (0..insts.len()).filter(|&i| insts[i].base == name || insts[i].name == *name).collect();
            if hits.is_empty() {
                let names = insts.iter().map(|i| i.name.as_str()).chain(insts.iter().map(|i| i.base));
                return Err(PlanError::UnknownStep {
                    name: name.clone(),
                    hint: crate::pipeline::diag::did_you_mean(name, names).map(str::to_string),
                });
            }
            wanted.extend(hits);
        }
        let mut keep: HashSet<usize> = HashSet::new();
        while let Some(i) = wanted.pop() {
            if keep.insert(i) {
                wanted.extend(deps[i].iter().copied());
            }
        }
        for (i, s) in skip.iter_mut().enumerate() {
            if s.is_none() && !keep.contains(&i) {
                *s = Some(match (ctx.event(), &ctx.environment) {
                    (Event::Deploy, Some(env)) => format!("not needed to deploy to `{env}`"),
                    _ => "not selected (--step)".to_string(),
                });
            }
        }
    }

    // 6. Groups and order.
    let mut group: Vec<Option<usize>> = vec![None; insts.len()];
    fn group_of(i: usize, deps: &[Vec<usize>], group: &mut Vec<Option<usize>>) -> usize {
        if let Some(g) = group[i] {
            return g;
        }
        let g = deps[i].iter().map(|&d| group_of(d, deps, group) + 1).max().unwrap_or(0);
        group[i] = Some(g);
        g
    }
    let mut order: Vec<usize> = (0..insts.len()).filter(|&i| skip[i].is_none()).collect();
    for &i in &order {
        group_of(i, &deps, &mut group);
    }
    order.sort_by_key(|&i| (group[i], insts[i].stage, i));

    let builtins = ctx.builtins();
    let mut steps = Vec::with_capacity(order.len());
    for &i in &order {
        let inst = &insts[i];
        steps.push(resolve(
            pipeline,
            inst.step,
            &inst.name,
            inst.base,
            &pipeline.stages[inst.stage],
            &inst.matrix,
            &builtins,
            group[i].unwrap_or(0),
            deps[i].iter().map(|&d| insts[d].name.clone()).collect(),
        )?);
    }
    let skipped = (0..insts.len())
        .filter_map(|i| {
            skip[i].clone().map(|reason| SkippedStep {
                name: insts[i].name.clone(),
                step: insts[i].base.to_string(),
                stage: pipeline.stages[insts[i].stage].clone(),
                reason,
            })
        })
        .collect();
    let environments = pipeline
        .environments
        .iter()
        .filter(|(name, _)| steps.iter().any(|s| s.environment.as_ref().is_some_and(|e| &e.name == *name)))
        .map(|(name, rules)| (name.clone(), rules.clone()))
        .collect();
    Ok(Plan { context: ctx.clone(), stages: pipeline.stages.clone(), not_triggered, steps, skipped, environments })
}

/// Fills in defaults and interpolates the fields that take `${VAR}`.
#[allow(clippy::too_many_arguments)]
fn resolve(
    p: &Pipeline,
    step: &Step,
    name: &str,
    base: &str,
    stage: &str,
    matrix: &IndexMap<String, String>,
    builtins: &IndexMap<String, String>,
    group: usize,
    needs: Vec<String>,
) -> Result<PlannedStep, PlanError> {
    let err = |message: String| PlanError::Interpolation { step: name.to_string(), message };
    let mut vars = builtins.clone();
    vars.insert("ORCH_STEP".into(), name.to_string());
    vars.insert("ORCH_STAGE".into(), stage.to_string());
    // A key an `include` entry sets for some variants only is empty in the others.
    if let Some(m) = &step.matrix {
        for k in m.axes.keys().chain(m.include.iter().flat_map(|c| c.keys())) {
            vars.insert(k.clone(), String::new());
        }
    }
    vars.extend(matrix.iter().map(|(k, v)| (k.clone(), v.clone())));
    let expand = |s: &str, vars: &IndexMap<String, String>| interp::expand(s, |v| vars.get(v).cloned());
    for (k, v) in &p.env {
        let val = expand(v, &vars).map_err(err)?;
        vars.insert(k.clone(), val);
    }
    for (k, v) in &step.env {
        let val = expand(v, &vars).map_err(err)?;
        vars.insert(k.clone(), val);
    }
    // Matrix values win over `env` of the same name: they are what makes the variant.
    vars.extend(matrix.iter().map(|(k, v)| (k.clone(), v.clone())));
    let image = step.image.as_ref().or(p.defaults.image.as_ref()).cloned().unwrap_or_default();
    let image = expand(&image, &vars).map_err(err)?;
    let workdir = match step.workdir.as_ref().or(p.defaults.workdir.as_ref()) {
        Some(w) => {
            let w = expand(w, &vars).map_err(err)?;
            if w.starts_with('/') { w } else { format!("{WORKSPACE}/{w}") }
        }
        None => WORKSPACE.to_string(),
    };
    let mut services = IndexMap::new();
    for (n, svc) in p.services.iter().chain(step.services.iter()) {
        let mut svc = svc.clone();
        svc.image = expand(&svc.image, &vars).map_err(err)?;
        for v in svc.env.values_mut() {
            *v = expand(v, &vars).map_err(err)?;
        }
        services.insert(n.clone(), svc);
    }
    // Cache keys keep `${hash:FILE}` (the file is only there at run time) and stay escaped:
    // the key is expanded once more when the step runs.
    let mut cache = step.cache.clone();
    for c in &mut cache {
        c.key = expand_keeping_escapes(&c.key, &vars).map_err(err)?;
    }
    let environment = match &step.environment {
        Some(e) => Some(Environment {
            name: e.name.clone(),
            url: e.url.as_deref().map(|u| expand(u, &vars)).transpose().map_err(err)?,
        }),
        None => None,
    };
    Ok(PlannedStep {
        name: name.to_string(),
        step: base.to_string(),
        stage: stage.to_string(),
        runs_on: sorted_union([&p.runs_on, &step.runs_on]),
        group,
        image,
        commands: step.commands.clone(),
        env: vars,
        workdir,
        needs,
        status: step.when.status,
        timeout: step.timeout.or(p.defaults.timeout),
        retry: step
            .retry
            .clone()
            .or_else(|| p.defaults.retry.clone())
            .unwrap_or(Retry { count: 0, on_exit_codes: Vec::new() }),
        allow_failure: step.allow_failure,
        // An environment's secrets reach only its steps, and only once its gates passed
        // (the scheduler adds them then): listing one elsewhere gets nothing.
        secrets: step
            .secrets
            .iter()
            .filter(|s| !p.environments.values().any(|r| r.secrets.contains(s)))
            .cloned()
            .collect(),
        services,
        cache,
        artifacts: step.artifacts.clone(),
        matrix: matrix.clone(),
        environment,
    })
}

/// Expands `${VAR}` but writes literal dollars back as `$$` and keeps `${hash:...}`, for a
/// string that is interpolated again later.
fn expand_keeping_escapes(s: &str, vars: &IndexMap<String, String>) -> Result<String, String> {
    let parts = interp::parse(s).map_err(|e| e.to_string())?;
    let mut out = String::with_capacity(s.len());
    for p in parts {
        match p {
            interp::Part::Lit(l) => out.push_str(&l.replace('$', "$$")),
            interp::Part::Dollar => out.push_str("$$"),
            interp::Part::Var(v) if v.starts_with("hash:") => out.push_str(&format!("${{{v}}}")),
            interp::Part::Var(v) => match vars.get(v) {
                Some(val) => out.push_str(&val.replace('$', "$$")),
                None => return Err(format!("unknown variable `${{{v}}}`")),
            },
        }
    }
    Ok(out)
}

/// Patterns compiled once, to test many values (a push's changed files).
pub struct Matcher {
    include: Option<globset::GlobSet>,
    exclude: globset::GlobSet,
}

impl Matcher {
    pub fn new(p: &Patterns) -> Matcher {
        let set = |globs: &[String]| {
            let mut b = GlobSetBuilder::new();
            for g in globs {
                // Patterns were checked when the file was loaded. `*` stays within one path
                // segment (`release/*` is not `release/1/x`); `**` crosses segments.
                if let Ok(g) = GlobBuilder::new(g).literal_separator(true).build() {
                    b.add(g);
                }
            }
            b.build().unwrap_or_else(|_| globset::GlobSet::empty())
        };
        Matcher { include: (!p.include.is_empty()).then(|| set(&p.include)), exclude: set(&p.exclude) }
    }

    /// Some include matches (or there is none) and no exclude does.
    pub fn is_match(&self, value: &str) -> bool {
        self.include.as_ref().is_none_or(|i| i.is_match(value)) && !self.exclude.is_match(value)
    }
}

/// Does `value` match the patterns? (Some include matches and no exclude does.)
pub fn matches(p: &Patterns, value: &str) -> bool {
    Matcher::new(p).is_match(value)
}

fn describe(p: &Patterns) -> String {
    let mut s = p.include.iter().map(|g| format!("`{g}`")).collect::<Vec<_>>().join(", ");
    if !p.exclude.is_empty() {
        s.push_str(&format!(
            " (excluding {})",
            p.exclude.iter().map(|g| format!("`{g}`")).collect::<Vec<_>>().join(", ")
        ));
    }
    s
}

fn check_paths(p: &Patterns, ctx: &Context, what: &str) -> Result<(), String> {
    let Some(files) = &ctx.changed else { return Ok(()) };
    let m = Matcher::new(p);
    if files.iter().any(|f| m.is_match(f)) {
        return Ok(());
    }
    Err(format!("{what}: none of the {} changed file(s) match {}", files.len(), describe(p)))
}

/// Whether the plan-time clauses of a `when` hold for `ctx`; `Err` says which one failed.
pub fn check_when(w: &When, ctx: &Context) -> Result<(), String> {
    let ev = ctx.event();
    if let Some(events) = &w.event
        && !events.contains(&ev)
    {
        let list = events.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(", ");
        return Err(format!("when.event: `{ev}` is not one of {list}"));
    }
    if let Some(b) = &w.branch {
        match ctx.target_branch() {
            Some(branch) if matches(b, branch) => {}
            Some(branch) => return Err(format!("when.branch: `{branch}` does not match {}", describe(b))),
            None => return Err(format!("when.branch: a `{ev}` event has no branch")),
        }
    }
    if let Some(t) = &w.tag {
        match (&ctx.tag, ev) {
            (Some(tag), Event::Tag) if matches(t, tag) => {}
            (Some(tag), Event::Tag) => return Err(format!("when.tag: `{tag}` does not match {}", describe(t))),
            _ => return Err(format!("when.tag: a `{ev}` event has no tag")),
        }
    }
    if let Some(p) = &w.paths {
        check_paths(p, ctx, "when.paths")?;
    }
    Ok(())
}

/// Whether this run may deploy to environment `name` (its `environments` rules); `Err`
/// says why not. An environment without rules takes every run. A pull request never
/// deploys to one with rules: its branch is whatever its author named it.
pub fn check_environment(p: &Pipeline, name: &str, ctx: &Context) -> Result<(), String> {
    let Some(rules) = p.environments.get(name) else { return Ok(()) };
    if let Some(why) = &rules.refused {
        return Err(format!("environment `{name}`: {why}"));
    }
    let EnvironmentRules { branches, tags, .. } = rules;
    if !rules.any() {
        return Ok(());
    }
    let ev = ctx.event();
    if ev != Event::PullRequest && branches.is_none() && tags.is_none() {
        return Ok(());
    }
    let this = match (ev, ctx.tag.as_deref(), ctx.branch.as_deref()) {
        (Event::PullRequest, _, _) => {
            format!("this run is a pull request{}", ctx.pr.map(|n| format!(" (#{n})")).unwrap_or_default())
        }
        (Event::Tag, Some(tag), _) => {
            if tags.as_ref().is_some_and(|t| matches(t, tag)) {
                return Ok(());
            }
            format!("this run is on tag {tag}")
        }
        (_, _, Some(branch)) if ev != Event::Tag => {
            if branches.as_ref().is_some_and(|b| matches(b, branch)) {
                return Ok(());
            }
            format!("this run is on branch {branch}")
        }
        _ => "this run has no branch or tag".to_string(),
    };
    let mut allowed = Vec::new();
    if let Some(b) = branches {
        allowed.push(format!("branches {}", plain(b)));
    }
    if let Some(t) = tags {
        allowed.push(format!("tags {}", plain(t)));
    }
    if allowed.is_empty() {
        return Err(format!("environment `{name}` has rules, and pull requests never deploy to one: {this}"));
    }
    Err(format!("environment `{name}` deploys only from {}: {this}", allowed.join(", ")))
}

/// Patterns as a plain list: `main, release/*` (excluding `release/old`).
fn plain(p: &Patterns) -> String {
    let mut s = p.include.join(", ");
    if !p.exclude.is_empty() {
        s.push_str(&format!(" (excluding {})", p.exclude.join(", ")));
    }
    s
}

/// Whether the pipeline's `on:` triggers accept the event; `Err` says why not.
pub fn check_triggers(p: &Pipeline, ctx: &Context) -> Result<(), String> {
    let Some(on) = &p.on else { return Ok(()) };
    match ctx.event() {
        Event::Manual => {
            if on.manual {
                Ok(())
            } else {
                Err("`on.manual` is false".into())
            }
        }
        // Asked for by someone allowed to act (the API token): like a re-run, no `on` rule.
        Event::Deploy => Ok(()),
        Event::Schedule => {
            if on.schedule.is_empty() {
                Err("`on` has no `schedule`".into())
            } else {
                Ok(())
            }
        }
        Event::Push => {
            let push = on.push.as_ref().ok_or("`on` has no `push`")?;
            match (&push.branches, &push.tags, ctx.branch.as_deref()) {
                (Some(b), _, Some(branch)) if !matches(b, branch) => {
                    return Err(format!("on.push.branches: `{branch}` does not match {}", describe(b)));
                }
                (Some(_), _, None) => {
                    return Err("on.push.branches: this push has no branch (a detached HEAD? give --branch)".into());
                }
                (None, Some(_), _) => return Err("on.push lists only `tags`, and this is a branch push".into()),
                _ => {}
            }
            push.paths.as_ref().map_or(Ok(()), |pp| check_paths(pp, ctx, "on.push.paths"))
        }
        Event::Tag => {
            let push = on.push.as_ref().ok_or("`on` has no `push`")?;
            match (&push.tags, &push.branches, ctx.tag.as_deref()) {
                (Some(t), _, Some(tag)) if !matches(t, tag) => {
                    Err(format!("on.push.tags: `{tag}` does not match {}", describe(t)))
                }
                (Some(_), _, None) => Err("on.push.tags: this push has no tag".into()),
                (None, Some(_), _) => Err("on.push lists only `branches`, and this is a tag".into()),
                _ => Ok(()),
            }
        }
        Event::PullRequest => {
            let pr = on.pull_request.as_ref().ok_or("`on` has no `pull_request`")?;
            if let Some(b) = &pr.branches {
                let Some(base) = ctx.base_branch.as_deref() else {
                    return Err(
                        "on.pull_request.branches: this pull request has no base branch (give --base-branch)".into()
                    );
                };
                if !matches(b, base) {
                    return Err(format!("on.pull_request.branches: base `{base}` does not match {}", describe(b)));
                }
            }
            pr.paths.as_ref().map_or(Ok(()), |pp| check_paths(pp, ctx, "on.pull_request.paths"))
        }
    }
}
