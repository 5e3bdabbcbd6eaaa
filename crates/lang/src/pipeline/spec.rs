//! The shape of `.orch.yml`, declared once: every key, what it holds and what it is for.
//!
//! The loader takes its key tables (unknown keys, suggestions) and its name rules from
//! here, and `orch schema` turns the same tables into a JSON Schema for editors. Tests in
//! `tests/schema.rs` hold the loader to the types declared here: for every key, a value of
//! the declared type loads and values of other types are refused, by the loader and by the
//! schema alike.

use serde_json::{Map, Value, json};

use super::templates::TEMPLATES;

/// What a key holds.
#[derive(Debug)]
pub enum Ty {
    Str,
    Bool,
    /// A string, number or boolean, used as text (env values, matrix values).
    Scalar,
    Int {
        min: i64,
        max: i64,
    },
    /// `90s`, `10m`, `1h30m`, `500ms`, or a number of seconds.
    Duration,
    /// A string, or a list of strings; `min` is the least number of items a list may have.
    /// With `names`, each string must follow that rule.
    Strings {
        min: usize,
        names: Option<Names>,
    },
    /// Shell commands: one string, or a list whose items are strings (numbers and booleans
    /// are taken as their text).
    Commands,
    /// One of these words.
    Enum(&'static [&'static str]),
    /// One or a list of these words.
    Words(&'static [&'static str]),
    /// The name of a shipped template.
    Template,
    List {
        item: &'static Ty,
        min: usize,
    },
    Obj(&'static Obj),
    /// A mapping of names (checked by `names`) to values of one type.
    Dict {
        names: Names,
        value: &'static Ty,
        min: usize,
        nullable: bool,
    },
    /// Any of these forms (a shorthand and the full mapping, say).
    AnyOf(&'static [Ty]),
    /// Nothing written after the key (`needs:`).
    Null,
    /// A type with a name, shared in the schema's `$defs`.
    Def(&'static str, &'static Ty),
}

/// A mapping with fixed keys.
#[derive(Debug)]
pub struct Obj {
    pub fields: &'static [Field],
    /// `key:` with no value is read as an empty mapping.
    pub nullable: bool,
    /// Other keys are allowed (matrix axes), with names checked by `Names` and values of
    /// this type.
    pub extra: Option<(Names, &'static Ty)>,
    /// At least one of these keys must be written.
    pub needs_one: &'static [&'static str],
    /// Keys starting with `x-` are allowed and ignored: a place for YAML anchors.
    pub extensions: bool,
}

#[derive(Debug)]
pub struct Field {
    pub name: &'static str,
    pub ty: &'static Ty,
    pub required: bool,
    pub doc: &'static str,
}

/// What a user-chosen name may look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Names {
    /// Environment variables, matrix axes, secrets: `[A-Za-z_][A-Za-z0-9_]*`.
    Identifier,
    /// Step names: letters, digits, `-`, `_`, `.`, starting with a letter or digit.
    Step,
    /// Service names: they are host names on the step's network.
    Host,
    /// Agent labels (`runs_on`): letters, digits, `.`, `_` and `-`, at least one.
    Label,
}

impl Names {
    pub fn check(self, s: &str) -> bool {
        match self {
            Names::Identifier => super::interp::is_identifier(s),
            Names::Step => {
                let mut chars = s.chars();
                matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
                    && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            }
            Names::Host => {
                !s.is_empty()
                    && s.len() <= 63
                    && !s.starts_with('-')
                    && !s.ends_with('-')
                    && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            }
            Names::Label => {
                !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            }
        }
    }

    /// The same rule as a regular expression, for the schema.
    pub fn pattern(self) -> &'static str {
        match self {
            Names::Identifier => "^[A-Za-z_][A-Za-z0-9_]*$",
            Names::Step => "^[A-Za-z0-9][A-Za-z0-9._-]*$",
            Names::Host => "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
            Names::Label => "^[A-Za-z0-9._-]+$",
        }
    }
}

const fn field(name: &'static str, ty: &'static Ty, doc: &'static str) -> Field {
    Field { name, ty, required: false, doc }
}

const fn required(name: &'static str, ty: &'static Ty, doc: &'static str) -> Field {
    Field { name, ty, required: true, doc }
}

pub const MAX_RETRIES: i64 = 10;

const STR: Ty = Ty::Str;
const BOOL: Ty = Ty::Bool;
const DURATION: Ty = Ty::Def("duration", &Ty::Duration);
const STRINGS: Ty = Ty::Strings { min: 0, names: None };
const LABELS: Ty = Ty::Def("labels", &Ty::Strings { min: 0, names: Some(Names::Label) });
const PORT: Ty = Ty::Int { min: 1, max: 65535 };
const ENV: Ty = Ty::Def("env", &Ty::Dict { names: Names::Identifier, value: &Ty::Scalar, min: 0, nullable: true });
const PATTERNS: Ty =
    Ty::Def("patterns", &Ty::AnyOf(&[Ty::Str, Ty::List { item: &Ty::Str, min: 1 }, Ty::Obj(&PATTERN_MAP)]));

pub const PATTERN_MAP: Obj = Obj {
    fields: &[
        field("include", &STRINGS, "Patterns that match."),
        field("exclude", &STRINGS, "Patterns that, matching, win over `include`."),
    ],
    nullable: false,
    extra: None,
    needs_one: &[],
    extensions: false,
};
const RETRY: Ty = Ty::Def("retry", &Ty::AnyOf(&[Ty::Int { min: 0, max: MAX_RETRIES }, Ty::Obj(&RETRY_MAP)]));

pub const RETRY_MAP: Obj = Obj {
    fields: &[
        required("count", &Ty::Int { min: 0, max: MAX_RETRIES }, "How many times to run the step again."),
        field(
            "on_exit_codes",
            &Ty::List { item: &Ty::Int { min: 1, max: 255 }, min: 0 },
            "Retry only when the step exits with one of these codes.",
        ),
    ],
    nullable: false,
    extra: None,
    needs_one: &[],
    extensions: false,
};

pub const PUSH: Obj = Obj {
    fields: &[
        field("branches", &PATTERNS, "Branches whose pushes run the pipeline (globs)."),
        field("tags", &PATTERNS, "Tags whose pushes run the pipeline (globs)."),
        field("paths", &PATTERNS, "Run only when a changed file matches (globs)."),
    ],
    nullable: true,
    extra: None,
    needs_one: &[],
    extensions: false,
};

pub const PULL_REQUEST: Obj = Obj {
    fields: &[
        field("branches", &PATTERNS, "Base branches of the pull requests that run the pipeline."),
        field("paths", &PATTERNS, "Run only when a changed file matches (globs)."),
    ],
    nullable: true,
    extra: None,
    needs_one: &[],
    extensions: false,
};

pub const ON: Obj = Obj {
    fields: &[
        field("push", &Ty::Obj(&PUSH), "Pushes of branches and tags."),
        field("pull_request", &Ty::Obj(&PULL_REQUEST), "Pull requests opened, updated or reopened."),
        field("manual", &BOOL, "Runs started by hand (API, dashboard). Default true."),
        field(
            "schedule",
            &Ty::List { item: &Ty::Obj(&SCHEDULE), min: 1 },
            "Times `orch serve` runs the default branch: cron expressions, read from the default branch's file.",
        ),
    ],
    nullable: true,
    extra: None,
    needs_one: &[],
    extensions: false,
};

pub const SCHEDULE: Obj = Obj {
    fields: &[
        required("cron", &STR, "Five fields: minute hour day-of-month month day-of-week (`0 3 * * 1-5`), as crontab."),
        field("timezone", &STR, "The IANA time zone the fields are read in (`Europe/Berlin`). Default UTC."),
        field(
            "name",
            &STR,
            "A name, unique in the file, shown in the run's title and `ORCH_SCHEDULE`. Default the cron text.",
        ),
    ],
    nullable: false,
    extra: None,
    needs_one: &[],
    extensions: false,
};

pub const DEFAULTS: Obj = Obj {
    fields: &[
        field("image", &STR, "The image of steps that name none."),
        field("timeout", &DURATION, "The timeout of steps that set none."),
        field("retry", &RETRY, "The retry of steps that set none."),
        field("workdir", &STR, "The working directory of steps that set none."),
    ],
    nullable: true,
    extra: None,
    needs_one: &[],
    extensions: false,
};

pub const READY: Obj = Obj {
    fields: &[
        field("command", &STR, "A shell command run in the service until it exits 0."),
        field("tcp", &PORT, "A port that must accept connections."),
        field("timeout", &DURATION, "How long to wait for readiness. Default 60s."),
    ],
    nullable: false,
    extra: None,
    needs_one: &["command", "tcp"],
    extensions: false,
};

pub const SERVICE: Obj = Obj {
    fields: &[
        required("image", &STR, "The service's image (built or loaded locally: orch never pulls)."),
        field("env", &ENV, "Environment variables of the service."),
        field("command", &STRINGS, "The command to run instead of the image's (a string runs in `/bin/sh -c`)."),
        field(
            "ports",
            &Ty::List { item: &PORT, min: 0 },
            "Ports the service listens on (documentation; steps reach it by name).",
        ),
        field(
            "ready",
            &Ty::AnyOf(&[Ty::Str, Ty::Obj(&READY)]),
            "When the service is ready: a command, or `{tcp: PORT}`. Steps start after it is.",
        ),
    ],
    nullable: false,
    extra: None,
    needs_one: &[],
    extensions: false,
};

const SERVICES: Ty =
    Ty::Def("services", &Ty::Dict { names: Names::Host, value: &Ty::Obj(&SERVICE), min: 0, nullable: true });

pub const EVENTS: &[&str] = &["push", "pull_request", "tag", "manual", "schedule", "deploy"];
pub const STATUSES: &[&str] = &["success", "failure", "always"];

pub const WHEN: Obj = Obj {
    fields: &[
        field("branch", &PATTERNS, "Run only on these branches (globs)."),
        field("tag", &PATTERNS, "Run only for these tags (globs)."),
        field("event", &Ty::Words(EVENTS), "Run only for these events."),
        field("paths", &PATTERNS, "Run only when a changed file matches (globs)."),
        field(
            "status",
            &Ty::Words(STATUSES),
            "Run when the steps before it succeeded (`success`, the default), failed, or `always`.",
        ),
    ],
    nullable: true,
    extra: None,
    needs_one: &[],
    extensions: false,
};

pub const CACHE: Obj = Obj {
    fields: &[
        required("key", &STR, "The cache's key; `${hash:GLOB}` hashes files, e.g. `deps-${hash:Cargo.lock}`."),
        required("paths", &Ty::Strings { min: 1, names: None }, "Directories (in the workspace) to restore and save."),
    ],
    nullable: false,
    extra: None,
    needs_one: &[],
    extensions: false,
};

pub const ARTIFACTS: Obj = Obj {
    fields: &[
        field("paths", &STRINGS, "Files (globs, in the workspace) handed to later steps and kept with the run."),
        field("optional", &BOOL, "Do not fail the step when nothing matches."),
    ],
    nullable: false,
    extra: None,
    needs_one: &[],
    extensions: false,
};

const COMBOS: Ty =
    Ty::List { item: &Ty::Dict { names: Names::Identifier, value: &Ty::Scalar, min: 0, nullable: true }, min: 0 };

pub const MATRIX: Obj = Obj {
    fields: &[
        field("include", &COMBOS, "Extra combinations, each a mapping from axis to value."),
        field("exclude", &COMBOS, "Combinations (or partial ones) to leave out."),
    ],
    nullable: false,
    extra: Some((Names::Identifier, &Ty::List { item: &Ty::Scalar, min: 1 })),
    needs_one: &[],
    extensions: false,
};

pub const ENVIRONMENT: Obj = Obj {
    fields: &[
        required("name", &STR, "The environment's name (`staging`, `production`)."),
        field("url", &STR, "Where the deployed thing can be seen; `${VAR}` is interpolated."),
    ],
    nullable: false,
    extra: None,
    needs_one: &[],
    extensions: false,
};

pub const APPROVAL: Obj = Obj {
    fields: &[
        required(
            "approvers",
            &Ty::Strings { min: 1, names: None },
            "Who may approve: names of the server's named API tokens.",
        ),
        field("required", &Ty::Int { min: 1, max: 100 }, "How many of them must approve (default 1)."),
        field("timeout", &DURATION, "How long a deployment waits for approval before it fails (default 24h)."),
    ],
    nullable: false,
    extra: None,
    needs_one: &[],
    extensions: false,
};

pub const ENVIRONMENT_RULES: Obj = Obj {
    fields: &[
        field("branches", &PATTERNS, "Branches that may deploy to the environment (globs)."),
        field("tags", &PATTERNS, "Tags that may deploy to the environment (globs)."),
        field("approval", &Ty::Obj(&APPROVAL), "People who must approve a deployment before it starts."),
        field("wait", &DURATION, "The wait timer: how long to wait after approval before deploying."),
        field(
            "secrets",
            &Ty::Strings { min: 0, names: Some(Names::Identifier) },
            "Secrets only this environment's steps get, once its gates passed; other steps never do.",
        ),
        field(
            "order",
            &Ty::Enum(&["newest", "fifo"]),
            "One deployment at a time: when the environment frees, the `newest` waiting commit deploys (older ones are superseded), or they go in turn (`fifo`).",
        ),
    ],
    nullable: true,
    extra: None,
    needs_one: &[],
    extensions: false,
};

pub const STEP: Obj = Obj {
    fields: &[
        field("stage", &STR, "The stage the step belongs to. Default `test`."),
        field("image", &STR, "The Docker image the step runs in (local: orch never pulls)."),
        field(
            "runs_on",
            &LABELS,
            "Agent labels this step needs, added to the pipeline's: the run goes to an agent that has them all.",
        ),
        required("commands", &Ty::Commands, "Shell commands, run in order with `set -e`."),
        field("env", &ENV, "Environment variables of the step."),
        field("workdir", &STR, "The working directory, relative to the workspace."),
        field(
            "needs",
            &Ty::AnyOf(&[Ty::Null, STRINGS]),
            "Steps this one waits for, instead of the earlier stages; `[]` starts at once.",
        ),
        field("when", &Ty::Obj(&WHEN), "Conditions under which the step runs."),
        field("timeout", &DURATION, "How long one attempt of the step may run. No limit by default."),
        field("retry", &RETRY, "Run the step again when it fails: a count, or `{count, on_exit_codes}`."),
        field("allow_failure", &BOOL, "A failure of this step does not fail the pipeline."),
        field("secrets", &STRINGS, "Secrets the step gets as environment variables (masked in logs)."),
        field("services", &SERVICES, "Containers that run beside this step (e.g. a database)."),
        field(
            "cache",
            &Ty::AnyOf(&[Ty::Obj(&CACHE), Ty::List { item: &Ty::Obj(&CACHE), min: 0 }]),
            "Directories kept between runs under a key.",
        ),
        field(
            "artifacts",
            &Ty::AnyOf(&[STRINGS, Ty::Obj(&ARTIFACTS)]),
            "Files kept with the run and handed to later steps.",
        ),
        field("matrix", &Ty::Obj(&MATRIX), "Runs the step once per combination of axis values."),
        field(
            "environment",
            &Ty::AnyOf(&[Ty::Str, Ty::Obj(&ENVIRONMENT)]),
            "The environment the step deploys to: a name, or `{name, url}`. Each run of the step is a deployment.",
        ),
    ],
    nullable: false,
    extra: None,
    needs_one: &[],
    extensions: false,
};

pub const INCLUDE_ITEM: Ty = Ty::AnyOf(&[
    Ty::Str,
    Ty::Obj(&Obj {
        fields: &[required("local", &STR, "A file of this repository, relative to the including file.")],
        nullable: false,
        extra: None,
        needs_one: &[],
        extensions: false,
    }),
    Ty::Obj(&Obj {
        fields: &[required("template", &Ty::Template, "A ready-made pipeline shipped with orch.")],
        nullable: false,
        extra: None,
        needs_one: &[],
        extensions: false,
    }),
]);

pub const PIPELINE: Obj = Obj {
    fields: &[
        field(
            "include",
            &Ty::AnyOf(&[Ty::Null, Ty::List { item: &INCLUDE_ITEM, min: 0 }, INCLUDE_ITEM]),
            "Files merged under this one: paths in this repository, or `{template: NAME}`.",
        ),
        field("on", &Ty::Obj(&ON), "Which pushes, pull requests, manual runs and schedules start the pipeline."),
        field("env", &ENV, "Environment variables of every step."),
        field("stages", &Ty::Strings { min: 1, names: None }, "Stage names in order. Default [build, test, deploy]."),
        field("defaults", &Ty::Obj(&DEFAULTS), "Settings for steps that set none."),
        field("services", &SERVICES, "Services that every step gets."),
        field(
            "runs_on",
            &LABELS,
            "Agent labels the run needs: it goes to an agent that has these and those of every step that runs.",
        ),
        field(
            "environments",
            &Ty::Dict { names: Names::Step, value: &Ty::Obj(&ENVIRONMENT_RULES), min: 0, nullable: true },
            "Rules of the environments steps deploy to: which branches and tags may deploy.",
        ),
        required(
            "steps",
            &Ty::Dict { names: Names::Step, value: &Ty::Def("step", &Ty::Obj(&STEP)), min: 1, nullable: false },
            "The steps, by name.",
        ),
    ],
    nullable: false,
    extra: None,
    needs_one: &[],
    extensions: true,
};

impl Obj {
    pub fn has(&self, key: &str) -> bool {
        self.fields.iter().any(|f| f.name == key)
    }

    /// A key that is allowed here without being one of `fields`: an `x-` extension.
    pub fn ignores(&self, key: &str) -> bool {
        self.extensions && key.starts_with("x-")
    }

    pub fn keys(&self) -> impl Iterator<Item = &'static str> + Clone + use<> {
        let fields: &'static [Field] = self.fields;
        fields.iter().map(|f| f.name)
    }
}

/// The JSON Schema (draft 2020-12) of a pipeline file.
///
/// Its body checks shape: keys, types, ranges, names. What must be written (`steps`, a
/// step's `commands`, a service's `image`...) is checked only in a file without `include`:
/// with one, any key may come from an included file, and a step that only changes the
/// `timeout` of an included step is complete.
pub fn json_schema() -> Value {
    let mut defs = Map::new();
    let root = obj_schema(&PIPELINE, &mut defs, false);
    let Value::Object(mut out) = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "orch pipeline (.orch.yml)",
        "description": "A pipeline for orch: stages of steps that run in Docker containers. Generated by `orch schema`.",
    }) else {
        unreachable!("a json! object literal is an object")
    };
    if let Value::Object(r) = root {
        out.extend(r);
    }
    let required = requirements(&Ty::Obj(&PIPELINE)).unwrap_or_else(|| json!({}));
    // The one rule across keys: a step needs an `image` unless `defaults.image` gives one.
    let image = json!({
        "if": { "properties": { "defaults": { "type": "object", "required": ["image"] } }, "required": ["defaults"] },
        "else": { "properties": { "steps": { "additionalProperties": { "required": ["image"] } } } }
    });
    out.insert("if".into(), json!({ "required": ["include"] }));
    out.insert("else".into(), json!({ "allOf": [required, image] }));
    out.insert("$defs".into(), Value::Object(defs));
    Value::Object(out)
}

/// The keys that must be written in `ty` and below it, as a schema of `required` (and
/// `anyOf` of `required`) alone, or `None` when nothing is. `include` is left out: its
/// items are checked in the body.
fn requirements(ty: &Ty) -> Option<Value> {
    match ty {
        Ty::Obj(o) => {
            let mut s = Map::new();
            let req: Vec<&str> = o.fields.iter().filter(|f| f.required).map(|f| f.name).collect();
            if !req.is_empty() {
                s.insert("required".into(), json!(req));
            }
            if !o.needs_one.is_empty() {
                s.insert(
                    "anyOf".into(),
                    json!(o.needs_one.iter().map(|k| json!({ "required": [k] })).collect::<Vec<_>>()),
                );
            }
            let props: Map<String, Value> = o
                .fields
                .iter()
                .filter(|f| f.name != "include")
                .filter_map(|f| Some((f.name.to_string(), requirements(f.ty)?)))
                .collect();
            if !props.is_empty() {
                s.insert("properties".into(), Value::Object(props));
            }
            (!s.is_empty()).then_some(Value::Object(s))
        }
        Ty::Dict { value, min, .. } => {
            let mut s = Map::new();
            if *min > 0 {
                s.insert("minProperties".into(), json!(min));
            }
            if let Some(r) = requirements(value) {
                s.insert("additionalProperties".into(), r);
            }
            (!s.is_empty()).then_some(Value::Object(s))
        }
        Ty::List { item, .. } => requirements(item).map(|r| json!({ "items": r })),
        // `required` and `properties` bind objects only and `items` arrays only, so the
        // forms' requirements can sit side by side; two mapping forms cannot.
        Ty::AnyOf(tys) => {
            let mut s = Map::new();
            for r in tys.iter().filter_map(requirements) {
                let Value::Object(r) = r else { continue };
                for (k, v) in r {
                    assert!(!s.contains_key(&k), "two forms of one key both require `{k}`");
                    s.insert(k, v);
                }
            }
            (!s.is_empty()).then_some(Value::Object(s))
        }
        Ty::Def(_, inner) => requirements(inner),
        _ => None,
    }
}

/// [`json_schema`] as the text `orch schema` prints and `docs/orch.schema.json` holds.
pub fn schema_text() -> String {
    // Serializing a `Value` cannot fail: its keys are strings.
    serde_json::to_string_pretty(&json_schema()).expect("a JSON value serializes")
}

/// The schema of a mapping's shape; `required` adds what must be written (only for the
/// items of `include`: see [`json_schema`]).
fn obj_schema(o: &Obj, defs: &mut Map<String, Value>, required: bool) -> Value {
    let mut props = Map::new();
    for f in o.fields {
        let mut s = schema(f.ty, defs, required || f.name == "include");
        if let Value::Object(m) = &mut s {
            m.insert("description".into(), json!(f.doc));
        }
        props.insert(f.name.into(), s);
    }
    let req: Vec<&str> = o.fields.iter().filter(|f| f.required).map(|f| f.name).collect();
    let mut s =
        json!({ "type": if o.nullable { json!(["object", "null"]) } else { json!("object") }, "properties": props });
    if required && !req.is_empty() {
        s["required"] = json!(req);
    }
    if required && !o.needs_one.is_empty() {
        s["anyOf"] = json!(o.needs_one.iter().map(|k| json!({ "required": [k] })).collect::<Vec<_>>());
    }
    if o.extensions {
        s["patternProperties"] = json!({ "^x-": {} });
    }
    match o.extra {
        None => s["additionalProperties"] = json!(false),
        Some((names, ty)) => {
            // Fixed keys are exempt from the name rule by being matched first.
            s["additionalProperties"] = schema(ty, defs, required);
            let fixed: Vec<&str> = o.fields.iter().map(|f| f.name).collect();
            s["propertyNames"] = json!({ "anyOf": [{ "enum": fixed }, { "pattern": names.pattern() }] });
        }
    }
    s
}

/// The schema of `ty`. Nullable mappings accept `null` in both the loader and the schema.
fn schema(ty: &Ty, defs: &mut Map<String, Value>, required: bool) -> Value {
    match ty {
        Ty::Str => json!({ "type": "string" }),
        Ty::Bool => json!({ "type": "boolean" }),
        Ty::Scalar => json!({ "type": ["string", "number", "boolean"] }),
        Ty::Int { min, max } => json!({ "type": "integer", "minimum": min, "maximum": max }),
        Ty::Duration => json!({
            "anyOf": [
                { "type": "string", "pattern": "^\\s*([0-9]+|([0-9]+(ms|s|m|h))+)\\s*$" },
                { "type": "integer", "minimum": 1 }
            ],
            "examples": ["90s", "10m", "1h30m"]
        }),
        Ty::Strings { min, names } => {
            let item = match names {
                Some(n) => json!({ "type": "string", "pattern": n.pattern() }),
                None => json!({ "type": "string" }),
            };
            json!({ "anyOf": [item, { "type": "array", "items": item, "minItems": min }] })
        }
        Ty::Commands => json!({
            "anyOf": [
                { "type": "string" },
                { "type": "array", "items": { "type": ["string", "number", "boolean"] }, "minItems": 1 }
            ]
        }),
        Ty::Enum(words) => json!({ "enum": words }),
        Ty::Words(words) => json!({
            "anyOf": [{ "enum": words }, { "type": "array", "items": { "enum": words }, "minItems": 1 }]
        }),
        Ty::Template => json!({ "enum": TEMPLATES.iter().map(|t| t.name).collect::<Vec<_>>() }),
        Ty::List { item, min } => json!({ "type": "array", "items": schema(item, defs, required), "minItems": min }),
        Ty::Obj(o) => obj_schema(o, defs, required),
        // How many entries a mapping needs is a requirement: included files may add them.
        Ty::Dict { names, value, min, nullable } => {
            let mut s = json!({
                "type": if *nullable { json!(["object", "null"]) } else { json!("object") },
                "propertyNames": { "pattern": names.pattern() },
                "additionalProperties": schema(value, defs, required),
            });
            if required && *min > 0 {
                s["minProperties"] = json!(min);
            }
            s
        }
        Ty::AnyOf(tys) => json!({ "anyOf": tys.iter().map(|t| schema(t, defs, required)).collect::<Vec<_>>() }),
        Ty::Null => json!({ "type": "null" }),
        Ty::Def(name, inner) => {
            if !defs.contains_key(*name) {
                // Placeholder first: a definition that refers to itself ends here.
                defs.insert((*name).into(), Value::Null);
                // Definitions are shared, so they never carry requirements.
                debug_assert!(!required, "no definition under `include`");
                let s = schema(inner, defs, false);
                defs.insert((*name).into(), s);
            }
            json!({ "$ref": format!("#/$defs/{name}") })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_every_key() {
        let s = json_schema();
        let props = s["properties"].as_object().unwrap();
        let mut want: Vec<&str> = PIPELINE.keys().collect();
        want.sort_unstable();
        assert_eq!(props.keys().map(String::as_str).collect::<Vec<_>>(), want);
        let step = &s["$defs"]["step"]["properties"];
        for k in STEP.keys() {
            assert!(step.get(k).is_some(), "{k}");
        }
    }

    #[test]
    fn labels() {
        for ok in ["linux", "x86_64", "cuda-12.4", "A", "1", "-", "."] {
            assert!(Names::Label.check(ok), "{ok}");
        }
        for bad in ["", "big machine", "linux/amd64", "é", "a:b", "a,b"] {
            assert!(!Names::Label.check(bad), "{bad}");
        }
        let s = json_schema();
        assert_eq!(s["properties"]["runs_on"]["$ref"], "#/$defs/labels");
        assert_eq!(s["$defs"]["step"]["properties"]["runs_on"]["$ref"], "#/$defs/labels");
        assert_eq!(s["$defs"]["labels"]["anyOf"][1]["items"]["pattern"], Names::Label.pattern());
    }
}
