//! The meaning of a pipeline, checked once it is loaded: stages, needs and cycles, images,
//! variables and interpolation.

use std::collections::{HashMap, HashSet};

use crate::pipeline::diag::{Diagnostic, did_you_mean};
use crate::pipeline::interp;
use crate::pipeline::model::*;
use crate::pipeline::spec::{self};
use crate::pipeline::yaml::Seg;

use super::*;

impl Loader {
    /// Checks that need the whole pipeline: stages, needs, cycles, images, variables.
    ///
    /// They also run when parts of the file failed to load; `shape` (the problems found so
    /// far) tells them what to leave alone, so that one mistake is not reported twice.
    pub(super) fn check(&mut self, p: &Pipeline) {
        let shape: Vec<Vec<Seg>> = self.diags.iter().map(|d| d.path.clone()).collect();
        // A problem was reported at `path` or inside it.
        let reported = |path: &[Seg]| shape.iter().any(|d| d.starts_with(path));
        // A problem was reported about `field` of the step at `sp`, or about a key that
        // looks like a misspelling of it (`imgae`).
        let field_reported = |sp: &[Seg], field: &str| {
            shape.iter().any(|d| {
                d.starts_with(sp)
                    && matches!(d.get(sp.len()), Some(Seg::Key(k)) if k == field || did_you_mean(k, spec::STEP.keys()) == Some(field))
            })
        };
        let steps_path = [Seg::Key("steps".into())];
        let stage_index: HashMap<&str, usize> = p.stages.iter().enumerate().map(|(i, s)| (s.as_str(), i)).collect();
        for (name, step) in &p.steps {
            let sp = child(&steps_path, name);
            let explicit = self.explicit_stage.contains(name);
            let stage_reported = self.stages_broken || (explicit && reported(&child(&sp, "stage")));
            if !stage_reported && !stage_index.contains_key(step.stage.as_str()) {
                let declared = p.stages.join(", ");
                let d = if explicit {
                    let help = match did_you_mean(&step.stage, p.stages.iter().map(String::as_str)) {
                        Some(s) => format!("did you mean `{s}`? (stages: {declared})"),
                        None => format!("declared stages: {declared}"),
                    };
                    Diagnostic::new(
                        &child(&sp, "stage"),
                        format!("step `{name}` is in stage `{}`, which is not declared", step.stage),
                    )
                    .help(help)
                } else {
                    Diagnostic::new(
                        &sp,
                        format!(
                            "step `{name}` names no stage, and the default stage `{DEFAULT_STAGE}` is not declared"
                        ),
                    )
                    .at_key()
                    .help(format!("give the step a `stage:` (one of {declared}), or add `{DEFAULT_STAGE}` to `stages`"))
                };
                self.diags.push(d);
            }
            if step.image.is_none()
                && p.defaults.image.is_none()
                && !field_reported(&sp, "image")
                && !reported(&[Seg::Key("defaults".into())])
            {
                self.diags.push(
                    Diagnostic::new(&sp, format!("step `{name}` has no `image`"))
                        .at_key()
                        .help("set `image:` on the step or `defaults.image` for the pipeline"),
                );
            }
            if step.commands.is_empty() && !field_reported(&sp, "commands") {
                self.diags.push(
                    Diagnostic::new(&sp, format!("step `{name}` has no `commands`"))
                        .at_key()
                        .help("add `commands:` with the shell commands the step runs"),
                );
            }
            if let Some(needs) = &step.needs {
                let mut seen = HashSet::new();
                for (i, need) in needs.iter().enumerate() {
                    let np = index(&child(&sp, "needs"), i);
                    if !seen.insert(need) {
                        self.err(&np, format!("`{need}` is listed twice in `needs`"));
                    } else if need == name {
                        self.err_help(
                            &np,
                            format!("step `{name}` needs itself"),
                            "a step cannot wait for itself: remove it from `needs`",
                        );
                    } else if let Some(dep) = p.steps.get(need) {
                        let (Some(a), Some(b)) =
                            (stage_index.get(dep.stage.as_str()), stage_index.get(step.stage.as_str()))
                        else {
                            continue;
                        };
                        if a > b {
                            self.err_help(
                                &np,
                                format!(
                                    "step `{name}` (stage `{}`) needs `{need}`, which is in the later stage `{}`",
                                    step.stage, dep.stage
                                ),
                                "a step can only need steps of its own or an earlier stage",
                            );
                        }
                    } else if !self.step_names.contains(need) {
                        // (A step that is written but failed to load has been reported.)
                        let help = did_you_mean(need, self.step_names.iter().map(String::as_str))
                            .map(|s| format!("did you mean `{s}`?"))
                            .unwrap_or_else(|| {
                                format!("steps are: {}", p.steps.keys().cloned().collect::<Vec<_>>().join(", "))
                            });
                        self.err_help(&np, format!("step `{name}` needs `{need}`, which is not a step"), help);
                    }
                }
            }
            // A matrix or an axis that failed to load leaves the axes unknown: any variable
            // may be one. (A bad `include` or `exclude` does not.)
            let mp = child(&sp, "matrix");
            let axes_uncertain = shape.iter().any(|d| {
                d.starts_with(&mp)
                    && match d.get(mp.len()) {
                        None => true,
                        Some(Seg::Key(k)) => k != "include" && k != "exclude",
                        Some(Seg::Index(_)) => true,
                    }
            });
            if !axes_uncertain {
                self.check_vars(p, name, step, &sp);
            }
        }
        for (name, svc) in &p.services {
            let sp = child(&[Seg::Key("services".into())], name);
            self.check_service_vars(p, None, svc, &sp);
        }
        self.check_pipeline_env(p);
        if let Some(cycle) = find_cycle(p) {
            let first = &cycle[0];
            let second = &cycle[1];
            let needs = p.steps[first.as_str()].needs.as_deref().unwrap_or(&[]);
            let i = needs.iter().position(|n| n == second).unwrap_or(0);
            let path = index(&child(&child(&steps_path, first), "needs"), i);
            let links: Vec<String> = cycle.windows(2).map(|w| format!("`{}` needs `{}`", w[0], w[1])).collect();
            self.err_help(
                &path,
                format!("`needs` form a cycle: {}", links.join(", ")),
                "no step of a cycle could ever start: remove one of these needs",
            );
        }
    }

    /// Reports a reference to an unknown variable (unless it names one whose definition
    /// failed to load, which has been reported).
    fn unknown_var(&mut self, path: &[Seg], who: &str, v: &str, candidates: Vec<&str>) {
        if self.broken_vars.contains(v) {
            return;
        }
        if v.starts_with("hash:") {
            self.diags.push(
                Diagnostic::new(path, format!("{who} uses `${{{v}}}`, which only a cache `key` can use"))
                    .help(
                        "a file's hash is known when the step runs, for its cache; write `$${...}` to keep it literal",
                    )
                    .focus(format!("${{{v}}}")),
            );
            return;
        }
        let help = match did_you_mean(v, candidates) {
            Some(s) => format!("did you mean `${{{s}}}`? (write `$${{{v}}}` to keep it literal)"),
            None => format!("define it in `env`, or write `$${{{v}}}` to keep it literal"),
        };
        self.diags.push(
            Diagnostic::new(path, format!("{who} uses unknown variable `${{{v}}}`"))
                .help(help)
                .focus(format!("${{{v}}}")),
        );
    }

    fn interp_error(&mut self, path: &[Seg], e: &interp::InterpError) {
        let (focus, help) = match e {
            interp::InterpError::Unclosed => ("${".to_string(), "add the closing `}`, or write `$$` for a literal `$`"),
            interp::InterpError::EmptyName => {
                ("${}".to_string(), "name a variable, e.g. `${ORCH_BRANCH}`, or write `$$` for a literal `$`")
            }
            interp::InterpError::BadName(n) => (
                format!("${{{n}}}"),
                "a variable name has letters, digits and `_`; `${hash:FILE}` is for cache keys; `$$` is a literal `$`",
            ),
        };
        self.diags.push(Diagnostic::new(path, e.to_string()).help(help).focus(focus));
    }

    /// The pipeline's `env` values are expanded in order, for every step, before the step's
    /// own `env`: they may use built-ins and the pipeline variables above them.
    fn check_pipeline_env(&mut self, p: &Pipeline) {
        let env_path = [Seg::Key("env".into())];
        for (i, (k, v)) in p.env.iter().enumerate() {
            let path = child(&env_path, k);
            match interp::references(v) {
                Err(e) => self.interp_error(&path, &e),
                Ok(vars) => {
                    for var in vars {
                        let earlier = p.env.keys().take(i).any(|e| e == var);
                        if !interp::is_builtin(var) && !earlier {
                            let candidates = interp::BUILTINS
                                .iter()
                                .map(|(n, _)| *n)
                                .chain(p.env.keys().take(i).map(String::as_str));
                            if p.env.contains_key(var) {
                                self.diags.push(
                                    Diagnostic::new(
                                        &path,
                                        format!("`env.{k}` uses `${{{var}}}`, which is defined further down"),
                                    )
                                    .help("variables are set in order: move it above the variables that use it")
                                    .focus(format!("${{{var}}}")),
                                );
                            } else {
                                self.unknown_var(&path, &format!("`env.{k}`"), var, candidates.collect());
                            }
                        }
                    }
                }
            }
        }
    }

    /// Every `${VAR}` in interpolated fields must name a known variable, as the planner will
    /// see it: built-ins, the step's matrix values, the pipeline's `env`, and for fields
    /// expanded after it the step's `env` (its values may use the ones above them).
    fn check_vars(&mut self, p: &Pipeline, name: &str, step: &Step, sp: &[Seg]) {
        let matrix_keys: Vec<&str> = step
            .matrix
            .iter()
            .flat_map(|m| m.axes.keys().chain(m.include.iter().flat_map(|c| c.keys())))
            .map(String::as_str)
            .collect();
        // `step_env`: how many of the step's env variables are set when the field is expanded.
        let mut fields: Vec<(Vec<Seg>, &str, usize)> = Vec::new();
        let all = step.env.len();
        let defaults = [Seg::Key("defaults".into())];
        match (&step.image, &p.defaults.image) {
            (Some(img), _) => fields.push((child(sp, "image"), img, all)),
            (None, Some(img)) => fields.push((child(&defaults, "image"), img, all)),
            (None, None) => {}
        }
        match (&step.workdir, &p.defaults.workdir) {
            (Some(w), _) => fields.push((child(sp, "workdir"), w, all)),
            (None, Some(w)) => fields.push((child(&defaults, "workdir"), w, all)),
            (None, None) => {}
        }
        for (i, (k, v)) in step.env.iter().enumerate() {
            fields.push((child(&child(sp, "env"), k), v, i));
        }
        for (i, c) in step.cache.iter().enumerate() {
            let cp = if self.cache_lists.contains(name) { index(&child(sp, "cache"), i) } else { child(sp, "cache") };
            fields.push((child(&cp, "key"), &c.key, all));
        }
        for (path, text, step_env) in fields {
            let is_cache_key = path.last() == Some(&Seg::Key("key".into()));
            let from_defaults = path.first() == Some(&defaults[0]);
            // `defaults.*` is checked for every step that uses it; each problem is told once.
            let first_time =
                |l: &mut Loader, what: String| !from_defaults || l.defaults_reported.insert((path.clone(), what));
            let who = if from_defaults {
                format!("`{}` (for step `{name}`)", path.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("."))
            } else {
                format!("step `{name}`")
            };
            match interp::references(text) {
                Err(e) => {
                    if first_time(self, e.to_string()) {
                        self.interp_error(&path, &e)
                    }
                }
                Ok(vars) => {
                    for v in vars {
                        if v.starts_with("hash:") && is_cache_key {
                            continue;
                        }
                        let known = interp::is_builtin(v)
                            || matrix_keys.contains(&v)
                            || p.env.contains_key(v)
                            || step.env.keys().take(step_env).any(|k| k == v);
                        if !known && first_time(self, v.to_string()) {
                            let candidates: Vec<&str> = interp::BUILTINS
                                .iter()
                                .map(|(n, _)| *n)
                                .chain(matrix_keys.iter().copied())
                                .chain(p.env.keys().map(String::as_str))
                                .chain(step.env.keys().take(step_env).map(String::as_str))
                                .collect();
                            self.unknown_var(&path, &who, v, candidates);
                        }
                    }
                }
            }
        }
        for (svc_name, svc) in &step.services {
            let svc_path = child(&child(sp, "services"), svc_name);
            self.check_service_vars(p, Some(step), svc, &svc_path);
        }
    }

    fn check_service_vars(&mut self, p: &Pipeline, step: Option<&Step>, svc: &Service, sp: &[Seg]) {
        let svc_name = match sp.last() {
            Some(Seg::Key(k)) => k.as_str(),
            _ => "",
        };
        let mut fields = vec![(child(sp, "image"), svc.image.as_str())];
        for (k, v) in &svc.env {
            fields.push((child(&child(sp, "env"), k), v.as_str()));
        }
        let matrix_keys: Vec<&str> = step
            .and_then(|s| s.matrix.as_ref())
            .iter()
            .flat_map(|m| m.axes.keys().chain(m.include.iter().flat_map(|c| c.keys())))
            .map(String::as_str)
            .collect();
        for (path, text) in fields {
            match interp::references(text) {
                Err(e) => self.interp_error(&path, &e),
                Ok(vars) => {
                    for v in vars {
                        let known = interp::is_builtin(v)
                            || p.env.contains_key(v)
                            || matrix_keys.contains(&v)
                            || step.is_some_and(|s| s.env.contains_key(v));
                        if !known {
                            let candidates: Vec<&str> = interp::BUILTINS
                                .iter()
                                .map(|(n, _)| *n)
                                .chain(matrix_keys.iter().copied())
                                .chain(p.env.keys().map(String::as_str))
                                .chain(step.iter().flat_map(|s| s.env.keys().map(String::as_str)))
                                .collect();
                            self.unknown_var(&path, &format!("service `{svc_name}`"), v, candidates);
                        }
                    }
                }
            }
        }
    }
}

/// A cycle in the explicit `needs`, as the list of steps around it, first step repeated at
/// the end. Implicit stage order cannot form a cycle; a step needing itself is reported on
/// its own and is not looked at here.
fn find_cycle(p: &Pipeline) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let names: Vec<&str> = p.steps.keys().map(String::as_str).collect();
    let mut mark: HashMap<&str, Mark> = names.iter().map(|n| (*n, Mark::New)).collect();
    fn visit<'a>(
        n: &'a str,
        p: &'a Pipeline,
        mark: &mut HashMap<&'a str, Mark>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        mark.insert(n, Mark::Active);
        stack.push(n);
        for dep in p.steps[n].needs.as_deref().unwrap_or(&[]) {
            let d = dep.as_str();
            if d == n {
                continue; // reported as "needs itself"
            }
            match mark.get(d).copied() {
                Some(Mark::Active) => {
                    let start = stack.iter().position(|s| *s == d).unwrap_or(0);
                    let mut cycle: Vec<String> = stack[start..].iter().map(|s| s.to_string()).collect();
                    cycle.push(d.to_string());
                    return Some(cycle);
                }
                Some(Mark::New) => {
                    if let Some(c) = visit(d, p, mark, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        mark.insert(n, Mark::Done);
        None
    }
    for n in names {
        if mark[n] == Mark::New {
            let mut stack = Vec::new();
            if let Some(c) = visit(n, p, &mut mark, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}
