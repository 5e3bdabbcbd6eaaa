//! The JSON Schema of `.orch.yml` (`orch schema`, docs/orch.schema.json) against the loader.
//!
//! Both come from the tables in `orch::pipeline::spec`. These tests hold them to each other
//! and to reality with an independent validator (Python's `jsonschema`, draft 2020-12, and
//! PyYAML for the YAML files): every shipped pipeline validates; invalid files fail; and for
//! every key of the language, a value of its declared type is accepted and values of other
//! types are refused by the loader and by the schema alike.
//!
//! `ORCH_BLESS=1` rewrites docs/orch.schema.json from the tables.

use std::path::PathBuf;
use std::process::Command;

use orch::pipeline::spec::{self, Field, Names, Obj, Ty};
use orch::pipeline::yaml::Seg;
use serde_json::{Map, Value, json};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn schema_file() -> PathBuf {
    root().join("docs").join("orch.schema.json")
}

/// Validates each document (JSON values, or YAML files by path) with Python's jsonschema;
/// returns, per document, the validator's first error or `None`.
fn validate_with_python(docs: &[Value], files: &[PathBuf]) -> Vec<Option<String>> {
    const SCRIPT: &str = r#"
import json, re, sys
import yaml, jsonschema
# YAML 1.2 booleans, as orch and the YAML language server read them: PyYAML's YAML 1.1
# would turn the key `on` into True.
class Loader(yaml.SafeLoader):
    pass
Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
req = json.load(sys.stdin)
schema = req["schema"]
jsonschema.Draft202012Validator.check_schema(schema)
v = jsonschema.Draft202012Validator(schema)
docs = req["docs"] + [yaml.load(open(f), Loader=Loader) for f in req["files"]]
out = []
for d in docs:
    errs = sorted(v.iter_errors(d), key=lambda e: list(e.absolute_path))
    out.append(None if not errs else "%s: %s" % ("/".join(map(str, errs[0].absolute_path)), errs[0].message[:300]))
json.dump(out, sys.stdout)
"#;
    // The generated schema, which `shipped_schema_is_the_generated_one` holds the shipped
    // file to.
    let req = json!({ "schema": spec::json_schema(), "docs": docs, "files": files });
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/setup installs it with jsonschema and PyYAML)");
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(req.to_string().as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the validator failed:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn shipped_schema_is_the_generated_one() {
    let text = spec::schema_text() + "\n";
    if std::env::var("ORCH_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(schema_file(), &text).unwrap();
    }
    let shipped = std::fs::read_to_string(schema_file()).unwrap();
    assert!(shipped == text, "docs/orch.schema.json is stale: run `ORCH_BLESS=1 cargo test --test schema`");
    let printed = Command::new(env!("CARGO_BIN_EXE_orch")).arg("schema").output().unwrap();
    assert!(printed.status.success());
    assert_eq!(String::from_utf8(printed.stdout).unwrap(), text, "`orch schema` prints the shipped schema");
}

/// Every pipeline file in the repository, which `orch validate` accepts.
fn shipped_pipelines() -> Vec<PathBuf> {
    let mut files = vec![root().join(".orch.yml")];
    for dir in ["pipelines", "tests/validate"] {
        for e in std::fs::read_dir(root().join(dir)).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            let wanted = if dir == "pipelines" { name.ends_with(".yml") } else { name.starts_with("valid-") };
            if wanted {
                files.push(p);
            }
        }
    }
    for e in std::fs::read_dir(root().join("examples")).unwrap() {
        let p = e.unwrap().path().join(".orch.yml");
        if p.exists() {
            files.push(p);
        }
    }
    files.sort();
    files
}

#[test]
fn every_shipped_pipeline_validates_against_the_schema() {
    let files = shipped_pipelines();
    assert!(files.len() >= 10, "{files:?}");
    for f in &files {
        orch::pipeline::load_file(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
    let results = validate_with_python(&[], &files);
    let bad: Vec<String> =
        files.iter().zip(&results).filter_map(|(f, r)| r.as_ref().map(|e| format!("{}: {e}", f.display()))).collect();
    assert!(bad.is_empty(), "valid pipelines that the schema refuses:\n{}", bad.join("\n"));
}

/// Files with shape errors, each of which the loader and the schema must both refuse.
const INVALID: &[(&str, &str)] = &[
    ("no steps", "env: {A: 1}\n"),
    ("empty steps", "steps: {}\n"),
    ("unknown top key", "steps: {a: {image: x, commands: [true]}}\njobs: {}\n"),
    ("misspelt step key", "steps: {a: {imgae: x, commands: [true]}}\n"),
    ("commands a mapping", "steps: {a: {image: x, commands: {run: true}}}\n"),
    ("empty commands", "steps: {a: {image: x, commands: []}}\n"),
    ("no commands", "steps: {a: {image: x}}\n"),
    (
        "ready without command or tcp",
        "services: {db: {image: x, ready: {timeout: 5s}}}\nsteps: {a: {image: x, commands: [true]}}\n",
    ),
    ("retry without count", "steps: {a: {image: x, commands: [true], retry: {on_exit_codes: [1]}}}\n"),
    ("timeout in words", "steps: {a: {image: x, commands: [true], timeout: 10 minutes}}\n"),
    ("retry too high", "steps: {a: {image: x, commands: [true], retry: 11}}\n"),
    ("unknown event", "steps: {a: {image: x, commands: [true], when: {event: merge}}}\n"),
    ("bad step name", "steps: {-a: {image: x, commands: [true]}}\n"),
    ("bad env name", "env: {1A: x}\nsteps: {a: {image: x, commands: [true]}}\n"),
    ("service without image", "services: {db: {env: {A: 1}}}\nsteps: {a: {image: x, commands: [true]}}\n"),
    ("upper-case service", "services: {DB: {image: x}}\nsteps: {a: {image: x, commands: [true]}}\n"),
    ("cache without paths", "steps: {a: {image: x, commands: [true], cache: {key: k}}}\n"),
    ("port out of range", "services: {db: {image: x, ports: [70000]}}\nsteps: {a: {image: x, commands: [true]}}\n"),
    ("env list", "steps: {a: {image: x, commands: [true], env: [A=1]}}\n"),
    ("unknown template", "include: [{template: rusty}]\nsteps: {a: {image: x, commands: [true]}}\n"),
    ("no image, no default", "steps: {a: {commands: [true]}}\n"),
    ("no image, defaults without one", "defaults: {timeout: 5m}\nsteps: {a: {commands: [true]}}\n"),
    ("empty stages", "stages: []\nsteps: {a: {image: x, commands: [true]}}\n"),
    ("matrix axis not a list", "steps: {a: {image: x, commands: [true], matrix: {v: 1}}}\n"),
];

#[test]
fn a_default_image_makes_step_images_optional() {
    let src = "defaults: {image: busybox}\nsteps: {a: {commands: [true]}, b: {image: x, commands: [true]}}\n";
    orch::pipeline::parse_str("x.yml", src).unwrap();
    assert_eq!(validate_with_python(&[yaml_to_json(src)], &[]), vec![None]);
}

#[test]
fn with_an_include_only_shape_is_checked() {
    // Complete only once merged: the step changes a key of the template's `test`, and
    // `steps` could come from the template alone.
    let partial = "include: [{template: rust}]\nsteps:\n  test: {timeout: 45m}\n  extra: {commands: [true]}\n";
    orch::pipeline::parse_str("x.yml", partial).unwrap();
    let only = "include: {template: rust}\nsteps: {}\n";
    orch::pipeline::parse_str("x.yml", only).unwrap();
    // Shape still counts.
    let wrong = "include: [{template: rust}]\nsteps:\n  test: {timeout: soon, comands: [true]}\n";
    assert!(orch::pipeline::parse_str("x.yml", wrong).is_err());
    let bad_item = "include: [{}]\nsteps: {a: {image: x, commands: [true]}}\n";
    assert!(orch::pipeline::parse_str("x.yml", bad_item).is_err());
    let results = validate_with_python(&[partial, only, wrong, bad_item].map(yaml_to_json), &[]);
    assert_eq!(results[0], None);
    assert_eq!(results[1], None);
    assert!(results[2].is_some());
    assert!(results[3].is_some(), "an include item names a file");
}

#[test]
fn invalid_files_fail_both() {
    let docs: Vec<Value> = INVALID.iter().map(|(_, src)| yaml_to_json(src)).collect();
    let results = validate_with_python(&docs, &[]);
    for ((what, src), r) in INVALID.iter().zip(results) {
        assert!(orch::pipeline::parse_str("x.yml", src).is_err(), "the loader accepts `{what}`");
        assert!(r.is_some(), "the schema accepts `{what}`");
    }
}

fn yaml_to_json(src: &str) -> Value {
    node_json(&orch::pipeline::yaml::parse(src).unwrap())
}

fn node_json(n: &orch::pipeline::yaml::Node) -> Value {
    use orch::pipeline::yaml::Node;
    match n {
        Node::Null => Value::Null,
        Node::Bool(b) => json!(b),
        Node::Int(i) => json!(i),
        Node::Float(f, _) => json!(f),
        Node::Str(s) => json!(s),
        Node::Seq(items) => Value::Array(items.iter().map(node_json).collect()),
        Node::Map(entries) => Value::Object(entries.iter().map(|(k, v)| (k.clone(), node_json(v))).collect()),
    }
}

// ---- every key, every type ----------------------------------------------------------

/// A value of `ty` that the loader accepts in a minimal pipeline.
fn sample(ty: &Ty, key: &str) -> Value {
    match (key, ty) {
        ("stage", _) => json!("test"),
        ("stages", _) => json!(["build", "test", "deploy"]),
        ("steps", _) => base()["steps"].clone(),
        ("needs", _) => json!([]),
        ("exclude", Ty::List { .. }) => json!([]),
        // Strings the loader reads further (the schema says only "a string").
        ("cron", _) => json!("0 3 * * *"),
        ("timezone", _) => json!("Europe/Berlin"),
        // `required` is checked against how many approvers there are: as many as it may be.
        ("approvers", _) => json!((0..100).map(|i| format!("p{i}")).collect::<Vec<_>>()),
        (_, Ty::Str) => json!("x"),
        (_, Ty::Bool) => json!(true),
        (_, Ty::Scalar) => json!("1"),
        (_, Ty::Int { min, .. }) => json!((*min).max(1)),
        (_, Ty::Duration) => json!("90s"),
        (_, Ty::Strings { .. }) => json!(["x"]),
        (_, Ty::Commands) => json!(["true"]),
        (_, Ty::Enum(w) | Ty::Words(w)) => json!(w[0]),
        (_, Ty::Template) => json!("services-cache-artifacts"),
        (_, Ty::List { item, .. }) => json!([sample(item, "")]),
        (_, Ty::Obj(o)) => obj_sample(o),
        (_, Ty::Dict { value, names, .. }) => json!({ name_for(*names): sample(value, "") }),
        (_, Ty::AnyOf(tys)) => sample(&tys[tys.len() - 1], key),
        (_, Ty::Null) => Value::Null,
        (_, Ty::Def(_, inner)) => sample(inner, key),
    }
}

/// A mapping with the required keys of `o` (and one matrix axis, when it takes extra keys).
fn obj_sample(o: &Obj) -> Value {
    let mut m = Map::new();
    for f in o.fields.iter().filter(|f| f.required) {
        m.insert(f.name.into(), sample(f.ty, f.name));
    }
    if let Some(k) = o.needs_one.first() {
        let f = o.fields.iter().find(|f| f.name == *k).expect("needs_one names fields");
        m.insert(f.name.into(), sample(f.ty, f.name));
    }
    if let Some((names, ty)) = o.extra {
        m.insert(name_for(names).into(), sample(ty, ""));
    }
    Value::Object(m)
}

fn name_for(names: Names) -> &'static str {
    match names {
        Names::Identifier => "X",
        Names::Step => "a",
        Names::Host => "db",
        Names::Label => "linux",
    }
}

/// Every key of the language, with the path to it (through `a`, `db`, ... for named entries).
fn keys(o: &'static Obj, path: Vec<Seg>, out: &mut Vec<(Vec<Seg>, &'static Field)>) {
    for f in o.fields {
        let mut p = path.clone();
        p.push(Seg::Key(f.name.into()));
        out.push((p.clone(), f));
        walk(f.ty, p, out);
    }
}

fn walk(ty: &'static Ty, path: Vec<Seg>, out: &mut Vec<(Vec<Seg>, &'static Field)>) {
    match ty {
        Ty::Obj(o) => keys(o, path, out),
        Ty::Dict { names, value, .. } => {
            let mut p = path;
            p.push(Seg::Key(name_for(*names).into()));
            walk(value, p, out);
        }
        Ty::List { item, .. } => {
            let mut p = path;
            p.push(Seg::Index(0));
            walk(item, p, out);
        }
        Ty::AnyOf(tys) => {
            // The mapping forms have keys (and a list of mappings, when there is no
            // mapping form of its own).
            let maps: Vec<&'static Ty> =
                tys.iter().filter(|t| matches!(t, Ty::Obj(_) | Ty::Def(_, Ty::Obj(_)))).collect();
            if maps.is_empty() {
                for t in tys.iter().filter(|t| matches!(t, Ty::List { item: Ty::AnyOf(_), .. })) {
                    walk(t, path.clone(), out);
                }
            }
            for t in maps {
                walk(t, path.clone(), out);
            }
        }
        Ty::Def(_, inner) => walk(inner, path, out),
        _ => {}
    }
}

/// The smallest valid pipeline: every case changes one key of it.
fn base() -> Value {
    json!({ "steps": { "a": { "image": "busybox", "commands": ["true"] } } })
}

/// `doc` with `value` at `path`: every mapping or list on the way is created as a valid
/// sample of its type (required keys filled in), in the form that has the next key.
fn put(doc: &mut Value, path: &[Seg], value: Value, tys: &[&'static Ty]) {
    let mut cur = doc;
    for (i, seg) in path.iter().enumerate() {
        let last = i == path.len() - 1;
        let rest = &path[i + 1..];
        match seg {
            Seg::Key(k) => {
                let m = cur.as_object_mut().expect("a mapping on the way");
                if last {
                    m.insert(k.clone(), value);
                    return;
                }
                cur = m.entry(k.clone()).or_insert_with(|| container_for(tys[i + 1], rest));
            }
            Seg::Index(_) => {
                let arr = cur.as_array_mut().expect("a list on the way");
                if last {
                    arr[0] = value;
                    return;
                }
                cur = &mut arr[0];
            }
        }
    }
}

/// A valid value of `ty` that `rest` (the path below it) can go into.
fn container_for(ty: &'static Ty, rest: &[Seg]) -> Value {
    match ty {
        Ty::Def(_, inner) => container_for(inner, rest),
        Ty::Obj(o) => obj_sample(o),
        Ty::Dict { .. } => json!({}),
        Ty::List { item, .. } => json!([container_for(item, &rest[1..])]),
        Ty::AnyOf(tys) => {
            let t = tys
                .iter()
                .find(|t| !matches!(t, Ty::AnyOf(_)) && step_into(t, &rest[0]).is_some())
                .or_else(|| tys.iter().find(|t| step_into(t, &rest[0]).is_some()))
                .expect("a form with the next key");
            container_for(t, rest)
        }
        other => panic!("no container in {other:?}"),
    }
}

/// The types along `path` from the pipeline down, one per segment plus the root.
fn types_along(path: &[Seg]) -> Vec<&'static Ty> {
    static ROOT: Ty = Ty::Obj(&spec::PIPELINE);
    let mut tys: Vec<&'static Ty> = vec![&ROOT];
    let mut cur: &'static Ty = &ROOT;
    for seg in path {
        cur = step_into(cur, seg).unwrap_or_else(|| panic!("no type at {seg:?} of {path:?}"));
        tys.push(cur);
    }
    tys
}

fn step_into(ty: &'static Ty, seg: &Seg) -> Option<&'static Ty> {
    match (ty, seg) {
        (Ty::Def(_, inner), _) => step_into(inner, seg),
        (Ty::Obj(o), Seg::Key(k)) => o.fields.iter().find(|f| f.name == k).map(|f| f.ty),
        (Ty::Dict { value, .. }, Seg::Key(_)) => Some(value),
        (Ty::List { item, .. }, Seg::Index(_)) => Some(item),
        (Ty::AnyOf(tys), _) => tys.iter().find_map(|t| step_into(t, seg)),
        _ => None,
    }
}

/// JSON kinds a type accepts.
fn accepts(ty: &Ty, kind: &str) -> bool {
    match ty {
        Ty::Str | Ty::Enum(_) | Ty::Template => kind == "string",
        Ty::Bool => kind == "bool",
        Ty::Scalar => matches!(kind, "string" | "int" | "bool"),
        Ty::Int { .. } => kind == "int",
        Ty::Duration => matches!(kind, "string" | "int"),
        Ty::Strings { .. } | Ty::Commands | Ty::Words(_) => matches!(kind, "string" | "list"),
        Ty::List { .. } => kind == "list",
        Ty::Obj(o) => kind == "map" || (o.nullable && kind == "null"),
        Ty::Dict { nullable, .. } => kind == "map" || (*nullable && kind == "null"),
        Ty::AnyOf(tys) => tys.iter().any(|t| accepts(t, kind)),
        Ty::Null => kind == "null",
        Ty::Def(_, inner) => accepts(inner, kind),
    }
}

/// More valid values: the edges of ranges, every word of a set, every form of a duration.
fn good_content(ty: &Ty) -> Vec<Value> {
    match ty {
        Ty::Duration => vec![json!("1h30m"), json!("500ms"), json!(5), json!(" 10m ")],
        Ty::Int { min, max } => vec![json!(min), json!(max)],
        Ty::Enum(w) => w.iter().map(|w| json!(w)).collect(),
        Ty::Words(w) => w.iter().map(|w| json!(w)).chain([json!(w)]).collect(),
        Ty::Def(_, inner) => good_content(inner),
        Ty::AnyOf(tys) => tys.iter().flat_map(good_content).collect(),
        _ => Vec::new(),
    }
}

/// Values that have the right JSON kind but are still wrong.
fn bad_content(ty: &Ty) -> Vec<Value> {
    match ty {
        Ty::Duration => vec![json!("10 minutes"), json!("5x")],
        Ty::Int { min, max } => vec![json!(max + 1), json!(min - 1)],
        Ty::Enum(_) | Ty::Words(_) | Ty::Template => vec![json!("nope")],
        Ty::Strings { names: Some(_), .. } => vec![json!("a b"), json!(["a", ""])],
        Ty::Def(_, inner) => bad_content(inner),
        Ty::AnyOf(tys) => tys.iter().flat_map(bad_content).collect(),
        _ => Vec::new(),
    }
}

struct Case {
    what: String,
    doc: Value,
    path: Vec<Seg>,
    valid: bool,
}

fn path_string(p: &[Seg]) -> String {
    p.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(".")
}

#[test]
fn loader_and_schema_agree_on_every_key() {
    let mut all = Vec::new();
    keys(&spec::PIPELINE, Vec::new(), &mut all);
    assert!(all.len() > 60, "only {} keys found", all.len());
    let mut cases = Vec::new();
    for (path, f) in &all {
        let tys = types_along(path);
        let include = matches!(path.first(), Some(Seg::Key(k)) if k == "include");
        // A valid value. (Local includes need a file on disk: tests/cli.rs covers them.)
        if !include || f.name == "template" {
            let mut doc = base();
            put(&mut doc, path, sample(f.ty, f.name), &tys);
            cases.push(Case { what: format!("{} = sample", path_string(path)), doc, path: path.clone(), valid: true });
            for v in good_content(f.ty) {
                let mut doc = base();
                put(&mut doc, path, v.clone(), &tys);
                cases.push(Case { what: format!("{} = {v}", path_string(path)), doc, path: path.clone(), valid: true });
            }
        }
        let wrong = [
            ("null", Value::Null),
            ("bool", json!(true)),
            ("int", json!(7)),
            ("string", json!("x")),
            ("list", json!([{ "k": 1 }])),
            ("map", json!({ "zz": 1 })),
        ];
        for (kind, v) in wrong
            .into_iter()
            .filter(|(k, _)| !accepts(f.ty, k))
            .chain(bad_content(f.ty).into_iter().map(|v| ("content", v)))
        {
            let mut doc = base();
            put(&mut doc, path, v.clone(), &tys);
            cases.push(Case {
                what: format!("{} = {v} ({kind})", path_string(path)),
                doc,
                path: path.clone(),
                valid: false,
            });
        }
    }
    // User-chosen names, against their rules.
    for (names, at) in [(Names::Identifier, "env"), (Names::Step, "steps"), (Names::Host, "services")] {
        for name in ["a", "A", "_x", "x1", "1x", "a-b", "a.b", "a_b", "-a", "a-", "é", "a b", "Db", &"a".repeat(64)] {
            let mut doc = base();
            let value = match at {
                "env" => json!("v"),
                "steps" => json!({ "image": "busybox", "commands": ["true"] }),
                _ => json!({ "image": "busybox" }),
            };
            doc[at] = json!({ name: value });
            if at == "steps" {
                // Keep a valid step beside it, so that only the name is judged.
                doc["steps"]["a"] = json!({ "image": "busybox", "commands": ["true"] });
            }
            cases.push(Case {
                what: format!("{at} named {name:?}"),
                doc,
                path: vec![Seg::Key(at.into())],
                valid: names.check(name),
            });
        }
    }
    // Agent labels, at the top and in a step.
    for name in ["linux", "x86_64", "cuda-12.4", "A.b_c-1", "", "a b", "a/b", "a:b", "é"] {
        for at in ["top", "step"] {
            let mut doc = base();
            if at == "top" {
                doc["runs_on"] = json!([name]);
            } else {
                doc["steps"]["a"]["runs_on"] = json!(name);
            }
            let path = match at {
                "top" => vec![Seg::Key("runs_on".into())],
                _ => vec![Seg::Key("steps".into()), Seg::Key("a".into()), Seg::Key("runs_on".into())],
            };
            cases.push(Case { what: format!("label {name:?} ({at})"), doc, path, valid: Names::Label.check(name) });
        }
    }
    let schema_says = validate_with_python(&cases.iter().map(|c| c.doc.clone()).collect::<Vec<_>>(), &[]);
    let mut problems = Vec::new();
    for (c, s) in cases.iter().zip(&schema_says) {
        let text = c.doc.to_string();
        let loaded = orch::pipeline::parse_str("x.yml", &text);
        match (&loaded, c.valid) {
            (Err(e), true) => problems.push(format!("loader refuses {}: {e}", c.what)),
            (Ok(_), false) => problems.push(format!("loader accepts {}", c.what)),
            (Err(orch::pipeline::ConfigError::Invalid { diagnostics, .. }), false)
                if !diagnostics.iter().any(|d| d.path.starts_with(&c.path)) =>
            {
                let at: Vec<String> = diagnostics.iter().map(|d| d.path_string()).collect();
                problems.push(format!("loader refuses {} but not at its key (at {at:?})", c.what));
            }
            _ => {}
        }
        match (s, c.valid) {
            (Some(e), true) => problems.push(format!("schema refuses {}: {e}", c.what)),
            (None, false) => problems.push(format!("schema accepts {}", c.what)),
            _ => {}
        }
    }
    assert!(problems.is_empty(), "{} of {} cases disagree:\n{}", problems.len(), cases.len(), problems.join("\n"));
}
