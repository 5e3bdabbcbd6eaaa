//! The planner through the library API: a pipeline parsed from YAML, a [`Context`] for an
//! event, and the resulting [`Plan`] (what runs, in which order, what is skipped and why).

use std::path::{Path, PathBuf};

use orch::pipeline::{Event, Pipeline, parse_str};
use orch::plan::{Context, Plan, PlanError, PlannedStep, Selection, plan, render};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn pipeline(src: &str) -> Pipeline {
    parse_str("test.yml", src).unwrap_or_else(|e| panic!("pipeline does not load:\n{e}"))
}

fn ctx(event: Event) -> Context {
    Context {
        event: Some(event),
        commit: COMMIT.to_string(),
        repo: "acme/app".to_string(),
        run_id: "run-7".to_string(),
        ..Context::default()
    }
}

fn push(branch: &str) -> Context {
    Context { branch: Some(branch.to_string()), ..ctx(Event::Push) }
}

fn pull_request(head: &str, base: &str) -> Context {
    Context {
        branch: Some(head.to_string()),
        base_branch: Some(base.to_string()),
        pr: Some(42),
        ..ctx(Event::PullRequest)
    }
}

fn tag(t: &str) -> Context {
    Context { tag: Some(t.to_string()), ..ctx(Event::Tag) }
}

fn manual(branch: &str) -> Context {
    Context { branch: Some(branch.to_string()), ..ctx(Event::Manual) }
}

fn with_changed(c: Context, files: &[&str]) -> Context {
    Context { changed: Some(files.iter().map(|f| f.to_string()).collect()), ..c }
}

fn plan_for(src: &str, c: &Context) -> Plan {
    plan(&pipeline(src), c, &Selection::default()).unwrap_or_else(|e| panic!("plan failed: {e}"))
}

fn select(src: &str, c: &Context, steps: &[&str]) -> Result<Plan, PlanError> {
    plan(&pipeline(src), c, &Selection { steps: steps.iter().map(|s| s.to_string()).collect() })
}

/// Names of the planned steps, in plan order.
fn names(p: &Plan) -> Vec<&str> {
    p.steps.iter().map(|s| s.name.as_str()).collect()
}

/// Names of the skipped steps.
fn skipped(p: &Plan) -> Vec<&str> {
    p.skipped.iter().map(|s| s.name.as_str()).collect()
}

fn reason<'a>(p: &'a Plan, name: &str) -> &'a str {
    p.skipped
        .iter()
        .find(|s| s.name == name)
        .map(|s| s.reason.as_str())
        .unwrap_or_else(|| panic!("`{name}` is not skipped; skipped: {:?}; planned: {:?}", skipped(p), names(p)))
}

fn step<'a>(p: &'a Plan, name: &str) -> &'a PlannedStep {
    p.steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("`{name}` is not planned; planned: {:?}; skipped: {:?}", names(p), skipped(p)))
}

fn needs<'a>(p: &'a Plan, name: &str) -> Vec<&'a str> {
    step(p, name).needs.iter().map(String::as_str).collect()
}

fn group(p: &Plan, name: &str) -> usize {
    step(p, name).group
}

/// Every planned step comes after the steps it needs.
fn assert_dependency_order(p: &Plan) {
    for (i, s) in p.steps.iter().enumerate() {
        for n in &s.needs {
            let j = p.steps.iter().position(|t| &t.name == n).unwrap_or_else(|| panic!("{n} is not planned"));
            assert!(j < i, "`{}` is planned before `{n}`, which it needs", s.name);
            assert!(p.steps[j].group < s.group, "`{}` is not in a later group than `{n}`", s.name);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Every construct, resolved.

const FULL: &str = r#"
env:
  REGISTRY: local
  GREETING: hello-${ORCH_BRANCH}
stages: [build, test, deploy]
defaults:
  image: busybox:1.36
  timeout: 5m
  retry: { count: 1 }
  workdir: src
services:
  cache:
    image: redis:7
    ports: [6379]
steps:
  build:
    stage: build
    image: ${REGISTRY}/rust:1.95
    commands:
      - cargo build --release
      - echo "$$HOME ${NOT_EXPANDED}"
    cache:
      key: cargo-${ORCH_BRANCH}-${hash:Cargo.lock}
      paths: [target/, ~/.cargo/registry]
    artifacts: [target/release/app]
  unit:
    stage: test
    needs: [build]
    timeout: 10m
    retry: { count: 2, on_exit_codes: [137] }
    workdir: /abs
    env:
      DATABASE_URL: postgres://postgres:test@db/postgres
      PRICE: $$5
      PG_VERSION: "16"
    services:
      db:
        image: postgres:${PG_VERSION}
        env: { POSTGRES_PASSWORD: test, WHO: "${ORCH_STEP}" }
        command: postgres -c fsync=off
        ports: [5432]
        ready: { command: pg_isready -h localhost, timeout: 30s }
    secrets: [DB_TOKEN]
    allow_failure: true
    commands: cargo test
"#;

#[test]
fn every_construct_is_planned() {
    let p = plan_for(FULL, &push("main"));
    assert_eq!(names(&p), ["build", "unit"]);
    assert!(p.skipped.is_empty());
    assert_eq!(p.stages, ["build", "test", "deploy"]);
    assert_eq!(p.not_triggered, None);

    let build = step(&p, "build");
    assert_eq!(build.step, "build");
    assert_eq!(build.stage, "build");
    assert_eq!(build.image, "local/rust:1.95");
    // Commands are not interpolated by orch: the shell expands them.
    assert_eq!(build.commands, ["cargo build --release", "echo \"$$HOME ${NOT_EXPANDED}\""]);
    assert_eq!(build.workdir, "/workspace/src", "defaults.workdir, relative to the workspace");
    assert_eq!(build.timeout, Some(std::time::Duration::from_secs(300)), "defaults.timeout");
    assert_eq!(build.retry.count, 1, "defaults.retry");
    assert_eq!(build.cache.len(), 1);
    assert_eq!(build.cache[0].key, "cargo-main-${hash:Cargo.lock}", "hash kept for run time, vars expanded");
    assert_eq!(build.cache[0].paths, ["target/", "~/.cargo/registry"]);
    assert_eq!(build.artifacts.as_ref().map(|a| a.paths.clone()), Some(vec!["target/release/app".to_string()]));
    assert_eq!(build.env.get("GREETING").map(String::as_str), Some("hello-main"));
    assert_eq!(build.env.get("REGISTRY").map(String::as_str), Some("local"));
    assert!(build.services.contains_key("cache"), "pipeline services go to every step");
    assert!(!build.allow_failure);
    assert!(build.matrix.is_empty());

    let unit = step(&p, "unit");
    assert_eq!(unit.image, "busybox:1.36", "defaults.image");
    assert_eq!(unit.commands, ["cargo test"]);
    assert_eq!(unit.workdir, "/abs");
    assert_eq!(unit.timeout, Some(std::time::Duration::from_secs(600)));
    assert_eq!(unit.retry.count, 2);
    assert_eq!(unit.retry.on_exit_codes, [137]);
    assert!(unit.allow_failure);
    assert_eq!(unit.secrets, ["DB_TOKEN"]);
    assert_eq!(unit.env.get("PRICE").map(String::as_str), Some("$5"));
    assert_eq!(unit.env.get("DATABASE_URL").map(String::as_str), Some("postgres://postgres:test@db/postgres"));
    assert_eq!(unit.services.keys().collect::<Vec<_>>(), ["cache", "db"]);
    let db = &unit.services["db"];
    assert_eq!(db.image, "postgres:16");
    assert_eq!(db.env.get("WHO").map(String::as_str), Some("unit"));
    assert_eq!(db.command.as_deref(), Some(&["/bin/sh".to_string(), "-c".into(), "postgres -c fsync=off".into()][..]));
    assert_eq!(db.ports, [5432]);
    let ready = db.ready.as_ref().expect("ready");
    assert_eq!(ready.command.as_deref(), Some("pg_isready -h localhost"));
    assert_eq!(ready.timeout, std::time::Duration::from_secs(30));
    assert_eq!(needs(&p, "unit"), ["build"]);
}

#[test]
fn builtins_are_in_every_step_env() {
    let src = "steps:\n  a:\n    image: busybox\n    commands: [env]\n";
    let p = plan_for(src, &pull_request("feature/x", "main"));
    let env = &step(&p, "a").env;
    let get = |k: &str| env.get(k).map(String::as_str).unwrap_or_else(|| panic!("no {k}"));
    assert_eq!(get("CI"), "true");
    assert_eq!(get("ORCH"), "true");
    assert_eq!(get("ORCH_EVENT"), "pull_request");
    assert_eq!(get("ORCH_BRANCH"), "feature/x");
    assert_eq!(get("ORCH_BASE_BRANCH"), "main");
    assert_eq!(get("ORCH_TAG"), "");
    assert_eq!(get("ORCH_COMMIT"), COMMIT);
    assert_eq!(get("ORCH_COMMIT_SHORT"), "01234567");
    assert_eq!(get("ORCH_PR"), "42");
    assert_eq!(get("ORCH_REPO"), "acme/app");
    assert_eq!(get("ORCH_RUN_ID"), "run-7");
    assert_eq!(get("ORCH_STEP"), "a");
    assert_eq!(get("ORCH_STAGE"), "test");
    assert_eq!(get("ORCH_WORKSPACE"), "/workspace");
    // Every documented built-in is set.
    for (name, _) in orch::pipeline::interp::BUILTINS {
        assert!(env.contains_key(*name), "built-in {name} is not set");
    }
}

// ---------------------------------------------------------------------------------------
// Order: stages, needs, groups.

const STAGED: &str = "
stages: [build, test, deploy]
defaults: { image: busybox }
steps:
  compile:  { stage: build, commands: [make] }
  assets:   { stage: build, commands: [make assets] }
  unit:     { stage: test, commands: [make test] }
  lint:     { stage: test, commands: [make lint] }
  ship:     { stage: deploy, commands: [make ship] }
";

#[test]
fn stage_order_without_needs() {
    let p = plan_for(STAGED, &push("main"));
    assert_eq!(names(&p), ["compile", "assets", "unit", "lint", "ship"]);
    assert!(needs(&p, "compile").is_empty());
    assert!(needs(&p, "assets").is_empty());
    assert_eq!(needs(&p, "unit"), ["compile", "assets"], "a step waits for the whole previous stage");
    assert_eq!(needs(&p, "lint"), ["compile", "assets"]);
    assert_eq!(needs(&p, "ship"), ["unit", "lint"]);
    assert_eq!([group(&p, "compile"), group(&p, "assets"), group(&p, "unit"), group(&p, "ship")], [0, 0, 1, 2]);
    assert_dependency_order(&p);
}

#[test]
fn steps_are_ordered_by_stage_not_by_file_order() {
    let src = "
stages: [build, test]
defaults: { image: busybox }
steps:
  check: { stage: test, commands: [make check] }
  make:  { stage: build, commands: [make] }
";
    let p = plan_for(src, &push("main"));
    assert_eq!(names(&p), ["make", "check"]);
    assert_eq!(needs(&p, "check"), ["make"]);
}

#[test]
fn an_empty_stage_is_passed_over() {
    // Every `test` step is skipped on a feature branch: `ship` then waits for `build`.
    let src = "
stages: [build, test, deploy]
defaults: { image: busybox }
steps:
  compile: { stage: build, commands: [make] }
  unit:    { stage: test, commands: [make test], when: { branch: main } }
  ship:    { stage: deploy, commands: [make ship] }
";
    let p = plan_for(src, &push("feature"));
    assert_eq!(names(&p), ["compile", "ship"]);
    assert_eq!(needs(&p, "ship"), ["compile"]);
    assert_eq!(skipped(&p), ["unit"]);
}

#[test]
fn explicit_needs_override_stage_order() {
    let src = "
stages: [build, test, deploy]
defaults: { image: busybox }
steps:
  compile: { stage: build, commands: [make] }
  assets:  { stage: build, commands: [make assets] }
  unit:    { stage: test, needs: [compile], commands: [make test] }
  docs:    { stage: deploy, needs: [], commands: [make docs] }
  ship:    { stage: deploy, needs: [unit, assets], commands: [make ship] }
";
    let p = plan_for(src, &push("main"));
    assert_eq!(needs(&p, "unit"), ["compile"], "only what it names, not all of `build`");
    assert!(needs(&p, "docs").is_empty(), "`needs: []` starts at once, whatever its stage");
    assert_eq!(group(&p, "docs"), 0);
    assert_eq!(needs(&p, "ship"), ["unit", "assets"]);
    assert_eq!(group(&p, "unit"), 1);
    assert_eq!(group(&p, "ship"), 2);
    assert_dependency_order(&p);
}

#[test]
fn needs_null_is_needs_empty() {
    let src = "
stages: [build, test]
defaults: { image: busybox }
steps:
  a: { stage: build, commands: [a] }
  b:
    stage: test
    needs:
    commands: [b]
";
    let p = plan_for(src, &push("main"));
    assert!(needs(&p, "b").is_empty());
    assert_eq!(group(&p, "b"), 0);
}

#[test]
fn parallel_groups() {
    // a -> (b, c) -> d; e independent.
    let src = "
defaults: { image: busybox }
steps:
  a: { needs: [], commands: [a] }
  b: { needs: [a], commands: [b] }
  c: { needs: [a], commands: [c] }
  d: { needs: [b, c], commands: [d] }
  e: { needs: [], commands: [e] }
";
    let p = plan_for(src, &push("main"));
    assert_eq!(names(&p), ["a", "e", "b", "c", "d"]);
    let groups: Vec<usize> = p.steps.iter().map(|s| s.group).collect();
    assert_eq!(groups, [0, 0, 1, 1, 2]);
    assert_dependency_order(&p);
}

#[test]
fn deep_chain_groups_follow_the_longest_path() {
    let src = "
defaults: { image: busybox }
steps:
  a: { needs: [], commands: [a] }
  b: { needs: [a], commands: [b] }
  c: { needs: [b], commands: [c] }
  d: { needs: [a, c], commands: [d] }
";
    let p = plan_for(src, &push("main"));
    assert_eq!(group(&p, "d"), 3);
    assert_dependency_order(&p);
}

// ---------------------------------------------------------------------------------------
// `when`

const WHEN: &str = r#"
defaults: { image: busybox }
steps:
  always: { commands: [true] }
  on_push: { commands: [true], when: { event: push } }
  on_pr: { commands: [true], when: { event: [pull_request] } }
  on_tag: { commands: [true], when: { event: tag } }
  on_manual: { commands: [true], when: { event: manual } }
  main_only: { commands: [true], when: { branch: main } }
  releases:
    commands: [true]
    when:
      branch: { include: ["release/*"], exclude: ["release/old-*"] }
  versions: { commands: [true], when: { tag: "v*" } }
"#;

#[test]
fn when_event_push() {
    let p = plan_for(WHEN, &push("main"));
    assert_eq!(names(&p), ["always", "on_push", "main_only"]);
    assert_eq!(reason(&p, "on_pr"), "when.event: `push` is not one of pull_request");
    assert_eq!(reason(&p, "releases"), "when.branch: `main` does not match `release/*` (excluding `release/old-*`)");
    assert_eq!(reason(&p, "versions"), "when.tag: a `push` event has no tag");
}

#[test]
fn when_branch_of_a_pull_request_is_its_base() {
    let p = plan_for(WHEN, &pull_request("feature/x", "main"));
    assert_eq!(names(&p), ["always", "on_pr", "main_only"], "base `main` matches `branch: main`");
    let p = plan_for(WHEN, &pull_request("main", "develop"));
    assert_eq!(
        reason(&p, "main_only"),
        "when.branch: `develop` does not match `main`",
        "the head branch does not count"
    );
}

#[test]
fn when_tag() {
    let p = plan_for(WHEN, &tag("v1.2.0"));
    assert_eq!(names(&p), ["always", "on_tag", "versions"]);
    assert_eq!(reason(&p, "main_only"), "when.branch: a `tag` event has no branch");
    let p = plan_for(WHEN, &tag("nightly"));
    assert_eq!(reason(&p, "versions"), "when.tag: `nightly` does not match `v*`");
}

#[test]
fn when_manual() {
    let p = plan_for(WHEN, &manual("main"));
    assert_eq!(names(&p), ["always", "on_manual", "main_only"]);
    // No event at all is a manual run.
    let c = Context { event: None, ..manual("main") };
    assert_eq!(plan_for(WHEN, &c).steps.len(), 3);
}

#[test]
fn when_branch_globs_with_exclude() {
    let p = plan_for(WHEN, &push("release/2.0"));
    assert!(names(&p).contains(&"releases"));
    let p = plan_for(WHEN, &push("release/old-1.0"));
    assert!(skipped(&p).contains(&"releases"));
    // `*` does not cross `/`? It does in globset's default: `release/*` matches nested names.
    let p = plan_for(WHEN, &push("feature/release/2.0"));
    assert!(skipped(&p).contains(&"releases"), "the pattern is anchored at the start");
}

const PATHS: &str = r#"
defaults: { image: busybox }
steps:
  docs: { commands: [make docs], when: { paths: ["docs/**", "**/*.md"] } }
  readme: { commands: [make readme], when: { paths: ["*.md"] } }
  code: { commands: [make], when: { paths: { include: ["src/**"], exclude: ["src/**/*.md"] } } }
"#;

#[test]
fn when_paths() {
    let p = plan_for(PATHS, &with_changed(push("main"), &["docs/guide/intro.md"]));
    assert_eq!(names(&p), ["docs"], "`*` stays within one directory: `*.md` is only the root's");
    let p = plan_for(PATHS, &with_changed(push("main"), &["README.md"]));
    assert_eq!(names(&p), ["docs", "readme"]);
    let p = plan_for(PATHS, &with_changed(push("main"), &["docs/guide/intro.md"]));
    assert_eq!(
        reason(&p, "code"),
        "when.paths: none of the 1 changed file(s) match `src/**` (excluding `src/**/*.md`)"
    );

    let p = plan_for(PATHS, &with_changed(push("main"), &["src/lib/notes.md"]));
    assert_eq!(names(&p), ["docs"], "`**/*.md` matches in any directory; the exclude drops `code`");

    let p = plan_for(PATHS, &with_changed(push("main"), &["src/main.rs", "Cargo.toml"]));
    assert_eq!(names(&p), ["code"]);

    let p = plan_for(PATHS, &with_changed(push("main"), &[]));
    assert!(p.steps.is_empty(), "nothing changed: no path condition holds");

    let p = plan_for(PATHS, &push("main"));
    assert_eq!(names(&p), ["docs", "readme", "code"], "changed files unknown: path conditions hold");
}

// ---------------------------------------------------------------------------------------
// `on:` triggers

fn triggered(src: &str, c: &Context) -> Result<(), String> {
    let p = plan_for(src, c);
    match p.not_triggered {
        None => {
            assert!(!p.steps.is_empty());
            Ok(())
        }
        Some(why) => {
            assert!(p.steps.is_empty(), "a pipeline that is not triggered plans no step");
            for s in &p.skipped {
                assert_eq!(s.reason, format!("pipeline not triggered: {why}"));
            }
            Err(why)
        }
    }
}

const STEP: &str = "steps:\n  a:\n    image: busybox\n    commands: [true]\n";

#[test]
fn no_on_means_every_event() {
    for c in [push("x"), pull_request("x", "y"), tag("t"), manual("x")] {
        assert_eq!(triggered(STEP, &c), Ok(()));
    }
}

#[test]
fn on_push_branches() {
    let src = format!("on:\n  push:\n    branches: [main, \"release/*\"]\n{STEP}");
    assert_eq!(triggered(&src, &push("main")), Ok(()));
    assert_eq!(triggered(&src, &push("release/1.x")), Ok(()));
    assert_eq!(
        triggered(&src, &push("feature")),
        Err("on.push.branches: `feature` does not match `main`, `release/*`".to_string())
    );
    assert_eq!(triggered(&src, &pull_request("f", "main")), Err("`on` has no `pull_request`".to_string()));
    assert_eq!(triggered(&src, &tag("v1")), Err("on.push lists only `branches`, and this is a tag".to_string()));
    assert_eq!(triggered(&src, &manual("feature")), Ok(()), "manual runs are allowed by default");
}

#[test]
fn on_push_tags_only() {
    let src = format!("on:\n  push:\n    tags: [\"v*\"]\n{STEP}");
    assert_eq!(triggered(&src, &tag("v1.0")), Ok(()));
    assert_eq!(triggered(&src, &tag("nightly")), Err("on.push.tags: `nightly` does not match `v*`".to_string()));
    assert_eq!(triggered(&src, &push("main")), Err("on.push lists only `tags`, and this is a branch push".to_string()));
}

#[test]
fn on_push_branches_and_tags() {
    let src = format!("on:\n  push: {{ branches: [main], tags: [\"v*\"] }}\n{STEP}");
    assert_eq!(triggered(&src, &push("main")), Ok(()));
    assert_eq!(triggered(&src, &tag("v2")), Ok(()));
    assert!(triggered(&src, &push("dev")).is_err());
    assert!(triggered(&src, &tag("x")).is_err());
}

#[test]
fn on_empty_push_accepts_every_push_and_tag() {
    let src = format!("on:\n  push:\n{STEP}");
    assert_eq!(triggered(&src, &push("anything")), Ok(()));
    assert_eq!(triggered(&src, &tag("anything")), Ok(()));
}

#[test]
fn on_pull_request_base_branches() {
    let src = format!("on:\n  pull_request:\n    branches: [main]\n{STEP}");
    assert_eq!(triggered(&src, &pull_request("feature", "main")), Ok(()));
    assert_eq!(
        triggered(&src, &pull_request("main", "develop")),
        Err("on.pull_request.branches: base `develop` does not match `main`".to_string())
    );
    assert_eq!(triggered(&src, &push("main")), Err("`on` has no `push`".to_string()));
}

#[test]
fn on_manual_false() {
    let src = format!("on:\n  push:\n  manual: false\n{STEP}");
    assert_eq!(triggered(&src, &manual("main")), Err("`on.manual` is false".to_string()));
    assert_eq!(triggered(&src, &push("main")), Ok(()));
}

#[test]
fn on_paths() {
    let src = format!("on:\n  push:\n    paths: [\"src/**\"]\n  pull_request:\n    paths: [\"src/**\"]\n{STEP}");
    assert_eq!(triggered(&src, &with_changed(push("main"), &["src/a.rs"])), Ok(()));
    assert_eq!(
        triggered(&src, &with_changed(push("main"), &["README.md"])),
        Err("on.push.paths: none of the 1 changed file(s) match `src/**`".to_string())
    );
    assert_eq!(triggered(&src, &push("main")), Ok(()), "unknown changes: paths hold");
    assert_eq!(
        triggered(&src, &with_changed(pull_request("f", "main"), &["docs/x.md", "README.md"])),
        Err("on.pull_request.paths: none of the 2 changed file(s) match `src/**`".to_string())
    );
}

// ---------------------------------------------------------------------------------------
// Skips cascade through needs

const CASCADE: &str = "
stages: [build, deploy, notify]
defaults: { image: busybox }
steps:
  compile: { stage: build, commands: [make] }
  deploy:  { stage: deploy, needs: [compile], commands: [make ship], when: { branch: main } }
  smoke:   { stage: deploy, needs: [deploy], commands: [make smoke] }
  verify:  { stage: notify, needs: [smoke], commands: [make verify] }
  report:  { stage: notify, needs: [deploy], commands: [make report], when: { status: [always] } }
  later:   { stage: notify, commands: [make later] }
";

#[test]
fn a_skipped_need_skips_what_waits_for_it() {
    let p = plan_for(CASCADE, &push("feature"));
    assert_eq!(reason(&p, "deploy"), "when.branch: `feature` does not match `main`");
    assert_eq!(reason(&p, "smoke"), "needs `deploy`, which is skipped");
    assert_eq!(reason(&p, "verify"), "needs `smoke`, which is skipped", "transitively");
    // `always` runs whatever became of what it needs. In place of the skipped `deploy` it
    // waits for what `deploy` would have waited for, so it still runs after `compile`.
    assert!(names(&p).contains(&"report"));
    assert_eq!(needs(&p, "report"), ["compile"]);
    assert_eq!(group(&p, "report"), 1);
    // Stage order (no explicit needs) is not a cascade: `later` waits for what is left.
    assert_eq!(needs(&p, "later"), ["compile"]);
    assert_eq!(names(&p), ["compile", "report", "later"]);

    let p = plan_for(CASCADE, &push("main"));
    assert!(p.skipped.is_empty());
    assert_eq!(needs(&p, "report"), ["deploy"]);
    assert!(step(&p, "report").status.on_failure && step(&p, "report").status.on_success);
}

#[test]
fn an_always_step_waits_through_a_chain_of_skipped_needs() {
    let src = "
defaults: { image: busybox }
steps:
  a: { needs: [], commands: [a] }
  b: { needs: [a], commands: [b], when: { event: tag } }
  c: { needs: [b], commands: [c] }
  notify: { needs: [c], commands: [n], when: { status: [always] } }
";
    let p = plan_for(src, &push("main"));
    assert_eq!(skipped(&p), ["b", "c"]);
    assert_eq!(needs(&p, "notify"), ["a"], "waits for what the skipped chain would have waited for");
    assert_eq!(group(&p, "notify"), 1);
}

// ---------------------------------------------------------------------------------------
// Matrix

const MATRIX: &str = r#"
stages: [build, test, deploy]
steps:
  compile:
    stage: build
    image: busybox
    commands: [make]
  test:
    stage: test
    image: "node:${node}-${os}"
    env:
      LABEL: ${os}/${node}
    matrix:
      os: [linux, mac]
      node: [18, 20]
      exclude:
        - { os: mac, node: 18 }
      include:
        - { os: bsd, node: 22 }
    commands: [npm test]
  ship:
    stage: deploy
    image: busybox
    needs: [test]
    commands: [make ship]
"#;

#[test]
fn numbers_keep_their_spelling_in_variants_and_env() {
    let src = "env: {V: 1.0, W: 2.50}\nsteps:\n  t:\n    image: python:${py}\n    matrix: {py: [3.9, 3.10, 3.11]}\n    commands: [true]\n";
    let p = plan_for(src, &push("main"));
    assert_eq!(names(&p), ["t[py=3.9]", "t[py=3.10]", "t[py=3.11]"]);
    let v = step(&p, "t[py=3.10]");
    assert_eq!(v.image, "python:3.10");
    assert_eq!((v.env["V"].as_str(), v.env["W"].as_str()), ("1.0", "2.50"));
}

#[test]
fn matrix_expansion_with_include_and_exclude() {
    let p = plan_for(MATRIX, &push("main"));
    assert_eq!(
        names(&p),
        [
            "compile",
            "test[os=linux,node=18]",
            "test[os=linux,node=20]",
            "test[os=mac,node=20]",
            "test[os=bsd,node=22]",
            "ship"
        ]
    );
    let v = step(&p, "test[os=mac,node=20]");
    assert_eq!(v.step, "test");
    assert_eq!(v.stage, "test");
    assert_eq!(v.image, "node:20-mac");
    assert_eq!(v.matrix.get("os").map(String::as_str), Some("mac"));
    assert_eq!(v.matrix.get("node").map(String::as_str), Some("20"), "numbers become text");
    assert_eq!(v.env.get("os").map(String::as_str), Some("mac"), "each axis is a variable");
    assert_eq!(v.env.get("LABEL").map(String::as_str), Some("mac/20"));
    assert_eq!(v.env.get("ORCH_STEP").map(String::as_str), Some("test[os=mac,node=20]"));
    assert_eq!(step(&p, "test[os=bsd,node=22]").image, "node:22-bsd");
    // Each variant follows stage order on its own.
    assert_eq!(needs(&p, "test[os=linux,node=18]"), ["compile"]);
    // Needing a matrix step is needing every variant.
    assert_eq!(
        needs(&p, "ship"),
        ["test[os=linux,node=18]", "test[os=linux,node=20]", "test[os=mac,node=20]", "test[os=bsd,node=22]"]
    );
    assert_dependency_order(&p);
}

#[test]
fn matrix_variants_are_skipped_together() {
    let src = MATRIX.replace("    commands: [npm test]\n", "    commands: [npm test]\n    when: { branch: main }\n");
    let p = plan_for(&src, &push("dev"));
    assert_eq!(names(&p), ["compile"]);
    assert_eq!(skipped(&p).len(), 5);
    assert_eq!(reason(&p, "ship"), "needs `test[os=linux,node=18]`, which is skipped");
}

#[test]
fn matrix_of_includes_only() {
    let src = "
steps:
  t:
    image: busybox
    matrix:
      include:
        - { target: x86_64 }
        - { target: aarch64 }
    commands: [make]
";
    let p = plan_for(src, &push("main"));
    assert_eq!(names(&p), ["t[target=x86_64]", "t[target=aarch64]"]);
}

// ---------------------------------------------------------------------------------------
// Interpolation

#[test]
fn interpolation_in_image_env_and_workdir() {
    let src = r#"
env:
  REG: registry.local
  TAG: ${ORCH_BRANCH}-${ORCH_COMMIT_SHORT}
steps:
  build:
    image: ${REG}/app:${TAG}
    workdir: build/${ORCH_STAGE}
    env:
      OUT: out/${ORCH_EVENT}/${TAG}
      DOLLAR: $$HOME and $HOME
      TAGGED: "${ORCH_TAG}"
    commands: [make]
"#;
    let p = plan_for(src, &push("main"));
    let s = step(&p, "build");
    assert_eq!(s.image, "registry.local/app:main-01234567");
    assert_eq!(s.workdir, "/workspace/build/test");
    assert_eq!(s.env["OUT"], "out/push/main-01234567");
    assert_eq!(s.env["DOLLAR"], "$HOME and $HOME", "`$$` is a `$`; a bare `$` stays");
    assert_eq!(s.env["TAGGED"], "");

    let p = plan_for(src, &tag("v1.0"));
    let s = step(&p, "build");
    assert_eq!(s.image, "registry.local/app:-01234567", "a tag has no branch");
    assert_eq!(s.env["TAGGED"], "v1.0");
}

#[test]
fn step_env_overrides_pipeline_env() {
    let src = "
env: { MODE: debug, KEEP: yes }
steps:
  a:
    image: busybox
    env: { MODE: release }
    commands: [make]
";
    let p = plan_for(src, &push("main"));
    assert_eq!(step(&p, "a").env["MODE"], "release");
    assert_eq!(step(&p, "a").env["KEEP"], "yes");
}

// ---------------------------------------------------------------------------------------
// Selection (`orch ci --step`)

#[test]
fn selection_pulls_in_what_is_needed() {
    let p = select(STAGED, &push("main"), &["ship"]).unwrap();
    assert_eq!(names(&p), ["compile", "assets", "unit", "lint", "ship"], "ship needs all of test, which needs build");

    let src = "
defaults: { image: busybox }
steps:
  a: { needs: [], commands: [a] }
  b: { needs: [a], commands: [b] }
  c: { needs: [b], commands: [c] }
  d: { needs: [a], commands: [d] }
";
    let p = select(src, &push("main"), &["c"]).unwrap();
    assert_eq!(names(&p), ["a", "b", "c"]);
    assert_eq!(reason(&p, "d"), "not selected (--step)");

    let p = select(src, &push("main"), &["d", "b"]).unwrap();
    assert_eq!(names(&p), ["a", "b", "d"]);
}

#[test]
fn selection_of_a_matrix_step() {
    let p = select(MATRIX, &push("main"), &["test"]).unwrap();
    assert_eq!(p.steps.len(), 5, "all four variants and what they need");
    let p = select(MATRIX, &push("main"), &["test[os=mac,node=20]"]).unwrap();
    assert_eq!(names(&p), ["compile", "test[os=mac,node=20]"]);
}

#[test]
fn selection_of_an_unknown_step() {
    let e = select(STAGED, &push("main"), &["shipp"]).unwrap_err();
    assert_eq!(e, PlanError::UnknownStep { name: "shipp".into(), hint: Some("ship".into()) });
    assert_eq!(e.to_string(), "no step is named `shipp` (did you mean `ship`?)");
    let e = select(STAGED, &push("main"), &["zzzzzz"]).unwrap_err();
    assert_eq!(e.to_string(), "no step is named `zzzzzz`");
}

// ---------------------------------------------------------------------------------------
// Agent labels: `runs_on`

const LABELS: &str = "
runs_on: [linux, big]
defaults: { image: busybox }
steps:
  build: { stage: build, commands: [make], runs_on: [gpu, linux, gpu] }
  unit: { commands: [make test] }
  arm: { commands: [make arm], runs_on: arm64, when: { branch: main } }
";

fn runs_on<'a>(p: &'a Plan, name: &str) -> Vec<&'a str> {
    step(p, name).runs_on.iter().map(String::as_str).collect()
}

#[test]
fn runs_on_is_the_pipelines_labels_and_the_steps_own() {
    let p = plan_for(LABELS, &push("dev"));
    assert_eq!(runs_on(&p, "build"), ["big", "gpu", "linux"], "sorted, each once");
    assert_eq!(runs_on(&p, "unit"), ["big", "linux"], "the pipeline's alone");
    // `arm` is skipped: its label is not asked for.
    assert_eq!(skipped(&p), ["arm"]);
    assert_eq!(p.labels(), ["big", "gpu", "linux"]);

    let p = plan_for(LABELS, &push("main"));
    assert_eq!(runs_on(&p, "arm"), ["arm64", "big", "linux"], "a single string is a list of one");
    assert_eq!(p.labels(), ["arm64", "big", "gpu", "linux"]);
}

#[test]
fn labels_of_steps_not_selected_or_not_triggered_do_not_count() {
    let p = select(LABELS, &push("main"), &["unit"]).unwrap();
    assert_eq!(names(&p), ["build", "unit"], "unit waits for build");
    assert_eq!(p.labels(), ["big", "gpu", "linux"]);

    let src = format!("on: {{ push: {{ branches: [main] }} }}\n{LABELS}");
    let p = plan_for(&src, &push("dev"));
    assert!(p.steps.is_empty());
    assert!(p.labels().is_empty(), "no step runs: no label is needed");
}

#[test]
fn without_runs_on_no_label_is_needed() {
    let p = plan_for(CASCADE, &push("main"));
    assert!(p.steps.iter().all(|s| s.runs_on.is_empty()));
    assert!(p.labels().is_empty());
    assert!(!render::text(&p).contains("Runs on"), "{}", render::text(&p));
}

#[test]
fn matrix_variants_have_their_steps_labels() {
    let src = "steps:\n  t:\n    image: busybox\n    runs_on: [linux]\n    matrix: {v: [a, b]}\n    commands: [x]\n";
    let p = plan_for(src, &push("main"));
    assert_eq!(runs_on(&p, "t[v=a]"), ["linux"]);
    assert_eq!(runs_on(&p, "t[v=b]"), ["linux"]);
    assert_eq!(p.labels(), ["linux"]);
}

#[test]
fn labels_render() {
    let p = plan_for(LABELS, &push("dev"));
    let expected = "\
Plan for push on branch dev at 01234567
Runs on an agent with labels: big, gpu, linux

  grp  step   stage  needs
    1  build  build  -  (labels big gpu linux)
    2  unit   test   build  (labels big linux)

Skipped:
  arm  when.branch: `dev` does not match `main`

2 steps to run in 2 parallel groups, 1 skipped
";
    assert_eq!(render::text(&p), expected, "actual:\n{}", render::text(&p));

    // Every step asks for the same labels: the run's line says it all.
    let src = "runs_on: linux\nsteps:\n  a: { image: busybox, commands: [x] }\n";
    let text = render::text(&plan_for(src, &push("main")));
    assert!(text.contains("\nRuns on an agent with labels: linux\n"), "{text}");
    assert!(!text.contains("(labels"), "{text}");

    let v: serde_json::Value = serde_json::from_str(&render::json(&p)).unwrap();
    assert_eq!(v["labels"], serde_json::json!(["big", "gpu", "linux"]));
    assert_eq!(v["steps"][0]["runs_on"], serde_json::json!(["big", "gpu", "linux"]));
    assert_eq!(v["steps"][1]["runs_on"], serde_json::json!(["big", "linux"]));
}

// ---------------------------------------------------------------------------------------
// Renders

#[test]
fn json_render() {
    let p = plan_for(CASCADE, &push("feature"));
    let text = render::json(&p);
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let obj = v.as_object().expect("an object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "context",
            "environments",
            "labels",
            "not_triggered_reason",
            "skipped",
            "stages",
            "steps",
            "triggered",
            "version"
        ]
    );
    assert_eq!(v["version"], render::JSON_VERSION);
    assert_eq!(v["triggered"], true);
    assert!(v["not_triggered_reason"].is_null());
    assert_eq!(v["context"]["event"], "push");
    assert_eq!(v["context"]["branch"], "feature");
    assert_eq!(v["stages"], serde_json::json!(["build", "deploy", "notify"]));
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    assert_eq!(steps[0]["name"], "compile");
    assert_eq!(steps[0]["group"], 0);
    assert!(steps[0]["env"].is_object());
    assert_eq!(steps[0]["runs_on"], serde_json::json!([]));
    assert_eq!(v["labels"], serde_json::json!([]));
    let skipped = v["skipped"].as_array().unwrap();
    assert_eq!(skipped[0]["name"], "deploy");
    assert_eq!(skipped[0]["reason"], "when.branch: `feature` does not match `main`");

    let src = format!("on:\n  push:\n    branches: [main]\n{STEP}");
    let v: serde_json::Value = serde_json::from_str(&render::json(&plan_for(&src, &push("dev")))).unwrap();
    assert_eq!(v["triggered"], false);
    assert_eq!(v["not_triggered_reason"], "on.push.branches: `dev` does not match `main`");
}

#[test]
fn json_render_durations_are_seconds() {
    let src = "steps:\n  a:\n    image: busybox\n    timeout: 1m30s\n    commands: [x]\n";
    let v: serde_json::Value = serde_json::from_str(&render::json(&plan_for(src, &push("main")))).unwrap();
    assert_eq!(v["steps"][0]["timeout_secs"], 90.0);
}

#[test]
fn dot_render_has_the_edges() {
    let p = plan_for(CASCADE, &push("main"));
    let dot = render::dot(&p);
    assert!(dot.starts_with("digraph orch {"), "{dot}");
    assert!(dot.trim_end().ends_with('}'));
    for (from, to) in [("compile", "deploy"), ("deploy", "smoke"), ("smoke", "verify"), ("deploy", "report")] {
        assert!(dot.contains(&format!("  \"{from}\" -> \"{to}\";\n")), "no edge {from} -> {to} in:\n{dot}");
    }
    assert_eq!(dot.matches("->").count(), 6, "{dot}");

    let p = plan_for(CASCADE, &push("feature"));
    let dot = render::dot(&p);
    assert!(dot.contains("\"deploy\" [label=\"deploy\\nskipped\""), "skipped steps are drawn dashed:\n{dot}");
}

#[test]
fn mermaid_render_has_the_edges() {
    let p = plan_for(MATRIX, &push("main"));
    let m = render::mermaid(&p);
    assert!(m.starts_with("graph LR\n"), "{m}");
    // Node ids are s0, s1, ... in plan order; labels carry the names.
    assert!(m.contains("  s0[\"compile\"]\n"), "{m}");
    assert!(m.contains("  s1[\"test[os=linux,node=18]\"]\n"), "{m}");
    assert!(m.contains("  s0 --> s1\n"), "{m}");
    for i in 1..=4 {
        assert!(m.contains(&format!("  s{i} --> s5\n")), "no edge from variant {i} to ship:\n{m}");
    }
    assert_eq!(m.matches("-->").count(), 8, "{m}");
}

#[test]
fn text_render() {
    let src = "
on:
  push: { branches: [main, dev] }
stages: [build, test, deploy]
defaults: { image: busybox }
steps:
  compile: { stage: build, commands: [make], timeout: 10m }
  unit:
    stage: test
    commands: [make test]
    retry: 2
    matrix: { shell: [sh, bash] }
  lint: { stage: test, commands: [make lint], allow_failure: true }
  ship: { stage: deploy, needs: [unit], commands: [make ship], when: { branch: main } }
  notify: { stage: deploy, needs: [ship], commands: [notify], when: { status: [always] } }
  cleanup: { stage: deploy, needs: [compile], commands: [clean], when: { status: [failure] } }
";
    let p = plan_for(src, &push("dev"));
    let expected = "\
Plan for push on branch dev at 01234567

  grp  step              stage   needs
    1  compile           build   -  (timeout 10m)
    2  unit[shell=sh]    test    compile  (retry 2)
    2  unit[shell=bash]  test    compile  (retry 2)
    2  lint              test    compile  (may fail)
    2  cleanup           deploy  compile  (on failure)
    3  notify            deploy  unit[shell=sh], unit[shell=bash]  (always)

Skipped:
  ship  when.branch: `dev` does not match `main`

6 steps to run in 3 parallel groups, 1 skipped
";
    assert_eq!(render::text(&p), expected, "actual:\n{}", render::text(&p));
}

// ---------------------------------------------------------------------------------------
// Every pipeline that ships with orch validates and plans.

fn shipped_pipelines() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    fn walk(dir: &Path, files: &mut Vec<PathBuf>, keep: &dyn Fn(&Path) -> bool) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        let mut entries: Vec<PathBuf> = entries.map(|e| e.expect("directory entry").path()).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, files, keep);
            } else if keep(&p) {
                files.push(p);
            }
        }
    }
    let is_yaml = |p: &Path| p.extension().is_some_and(|x| x == "yml" || x == "yaml");
    walk(&root.join("pipelines"), &mut files, &is_yaml);
    let is_orch = |p: &Path| p.file_name().is_some_and(|n| n == ".orch.yml");
    walk(&root.join("examples"), &mut files, &is_orch);
    let own = root.join(".orch.yml");
    if own.exists() {
        files.push(own);
    }
    files
}

#[test]
fn shipped_pipelines_validate_and_plan() {
    let mut failures = Vec::new();
    let files = shipped_pipelines();
    for f in &files {
        let p = match orch::pipeline::load_file(f) {
            Ok(p) => p,
            Err(e) => {
                failures.push(format!("{}: does not validate:\n{e}", f.display()));
                continue;
            }
        };
        match plan(&p, &push("main"), &Selection::default()) {
            Ok(pl) => {
                if let Some(why) = &pl.not_triggered {
                    failures.push(format!("{}: a push to main does not trigger it: {why}", f.display()));
                } else if pl.steps.is_empty() {
                    failures.push(format!("{}: plans no step for a push to main", f.display()));
                }
            }
            Err(e) => failures.push(format!("{}: does not plan for a push to main: {e}", f.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    eprintln!("checked {} shipped pipeline(s)", files.len());
}

/// The `valid-*` cases of the validate goldens plan for every kind of event: what the
/// loader accepts, the planner can resolve (no variable it cannot expand).
#[test]
fn valid_golden_cases_plan_for_every_event() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/validate");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("tests/validate") {
        let path = entry.expect("directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
        if !(name.starts_with("valid-") && name.ends_with(".yml")) {
            continue;
        }
        n += 1;
        let p = orch::pipeline::load_file(&path).unwrap_or_else(|e| panic!("{e}"));
        for c in [push("main"), pull_request("feature", "main"), tag("v1.0.0"), manual("main")] {
            if let Err(e) = plan(&p, &c, &Selection::default()) {
                panic!("{name}: does not plan for {:?}: {e}", c.event);
            }
        }
    }
    assert!(n > 0, "no valid-*.yml in {}", dir.display());
}

#[test]
fn matrix_values_that_read_alike_get_their_own_file_names() {
    let p = plan_for(
        "steps:\n  t:\n    image: busybox\n    matrix: {v: ['a b', 'a_b', 'a/b', 'a.b']}\n    commands: [true]\n",
        &push("main"),
    );
    let slugs: Vec<String> = p.steps.iter().map(|s| orch::plan::slug(&s.name)).collect();
    let unique: std::collections::HashSet<&String> = slugs.iter().collect();
    assert_eq!(unique.len(), 4, "{slugs:?}");
    for s in &slugs {
        assert!(s.starts_with("t_v_a"), "{s}");
        assert!(s.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)), "{s}");
    }
    // Plain names are kept as they are; long or odd ones are bounded.
    assert_eq!(orch::plan::slug("unit-tests_1.2"), "unit-tests_1.2");
    assert!(orch::plan::slug(&"x".repeat(300)).len() <= 64);
    assert!(!orch::plan::slug("../..").contains('/'));
}

#[test]
fn two_variants_with_one_name_are_refused() {
    let src = "steps:\n  t:\n    image: busybox\n    matrix:\n      include: [{x: 'a,y=b', y: c}, {x: a, y: 'b,y=c'}]\n    commands: [true]\n";
    let e = plan(&pipeline(src), &push("main"), &Selection::default()).unwrap_err();
    assert!(e.to_string().contains("would share the file and container name"), "{e}");
}

// ---------------------------------------------------------------------------------------
// `on.schedule`

const SCHEDULED: &str = r#"
on:
  push: {branches: [main]}
  schedule:
    - cron: "0 3 * * 1-5"
      timezone: Europe/Berlin
      name: nightly
    - cron: "*/30 * * * *"
steps:
  build:
    image: alpine
    commands: [make]
  night-only:
    image: alpine
    commands: [make slow-tests]
    when: {event: schedule}
"#;

fn scheduled(name: &str) -> Context {
    Context { branch: Some("main".into()), schedule: Some(name.into()), ..ctx(Event::Schedule) }
}

#[test]
fn schedules_load_with_their_defaults() {
    let on = pipeline(SCHEDULED).on.unwrap();
    let got: Vec<_> = on.schedule.iter().map(|s| (s.name.as_str(), s.cron.as_str(), s.timezone.as_str())).collect();
    assert_eq!(got, [("nightly", "0 3 * * 1-5", "Europe/Berlin"), ("*/30 * * * *", "*/30 * * * *", "UTC")]);
}

#[test]
fn a_schedule_event_runs_a_pipeline_with_a_schedule_and_when_event_selects_it() {
    let p = plan_for(SCHEDULED, &scheduled("nightly"));
    assert_eq!(p.not_triggered, None);
    assert_eq!(names(&p), ["build", "night-only"]);
    let find = |p: &Plan, n: &str| p.steps.iter().find(|s| s.name == n).cloned().unwrap();
    let env = &find(&p, "night-only").env;
    assert_eq!(env.get("ORCH_EVENT").map(String::as_str), Some("schedule"));
    assert_eq!(env.get("ORCH_SCHEDULE").map(String::as_str), Some("nightly"));
    // A push does not run the schedule-only step, and has an empty ORCH_SCHEDULE.
    let p = plan_for(SCHEDULED, &push("main"));
    assert_eq!(names(&p), ["build"]);
    assert_eq!(find(&p, "build").env.get("ORCH_SCHEDULE").map(String::as_str), Some(""));
    // Without `on.schedule`, a schedule event is not triggered; without `on`, it is.
    let no_schedule = "on: {push: {}}\nsteps: {a: {image: alpine, commands: [x]}}\n";
    assert_eq!(triggered(no_schedule, &scheduled("x")), Err("`on` has no `schedule`".into()));
    assert_eq!(triggered("steps: {a: {image: alpine, commands: [x]}}\n", &scheduled("x")), Ok(()));
}

const DEPLOY: &str = r#"
environments:
  production:
    branches: [main]
    tags: ["v*"]
steps:
  build:
    image: busybox
    stage: build
    commands: [true]
  ship:
    image: busybox
    stage: deploy
    environment: {name: production, url: "https://prod.example.com/${ORCH_COMMIT_SHORT}"}
    matrix:
      region: [eu, us]
    commands: [true]
  announce:
    image: busybox
    stage: deploy
    needs: [ship]
    commands: [true]
  preview:
    image: busybox
    stage: deploy
    environment: review
    commands: [true]
"#;

#[test]
fn an_environment_refuses_a_branch_its_rules_do_not_allow_with_the_reason() {
    let p = plan_for(DEPLOY, &push("feature/x"));
    let why = "environment `production` deploys only from branches main, tags v*: this run is on branch feature/x";
    assert_eq!(reason(&p, "ship[region=eu]"), why);
    assert_eq!(reason(&p, "ship[region=us]"), why);
    // Dependents cascade as for any skip; an environment without rules takes every run.
    assert_eq!(reason(&p, "announce"), "needs `ship[region=eu]`, which is skipped");
    assert_eq!(names(&p), ["build", "preview"]);
    let text = render::text(&p);
    assert!(text.contains(why), "{text}");
    assert!(text.contains("deploys to review"), "{text}");

    let pr = plan_for(DEPLOY, &pull_request("main", "main"));
    assert_eq!(
        reason(&pr, "ship[region=eu]"),
        "environment `production` deploys only from branches main, tags v*: this run is a pull request (#42)"
    );
    let t = plan_for(DEPLOY, &tag("nightly"));
    assert!(reason(&t, "ship[region=us]").ends_with("this run is on tag nightly"));
}

#[test]
fn an_allowed_run_plans_the_deploy_step_with_its_environment() {
    for c in [push("main"), tag("v1.2.0")] {
        let p = plan_for(DEPLOY, &c);
        assert_eq!(names(&p), ["build", "ship[region=eu]", "ship[region=us]", "preview", "announce"]);
        // Both legs of the matrix name the one environment: they are one deployment.
        for leg in ["ship[region=eu]", "ship[region=us]"] {
            let env = step(&p, leg).environment.as_ref().unwrap();
            assert_eq!(env.name, "production");
            assert_eq!(env.url.as_deref(), Some("https://prod.example.com/01234567"));
        }
        assert_eq!(step(&p, "preview").environment.as_ref().unwrap().url, None);
        assert_eq!(step(&p, "build").environment, None);
        let text = render::text(&p);
        assert!(text.contains("deploys to production (https://prod.example.com/01234567)"), "{text}");
        let json = render::json(&p);
        assert!(json.contains(r#""name": "production""#), "{json}");
    }
}

/// A `deploy` run of an environment runs the steps deploying there and what they need; the
/// environment's rules still hold; `when.event: deploy` selects it.
#[test]
fn a_deploy_event_runs_only_the_steps_deploying_to_its_environment() {
    let deploy = |env: &str, branch: &str| Context {
        branch: Some(branch.into()),
        environment: Some(env.into()),
        ..ctx(Event::Deploy)
    };
    let p = plan_for(DEPLOY, &deploy("production", "main"));
    assert_eq!(p.not_triggered, None);
    assert_eq!(names(&p), ["build", "ship[region=eu]", "ship[region=us]"]);
    assert_eq!(reason(&p, "preview"), "not needed to deploy to `production`");
    assert_eq!(reason(&p, "announce"), "not needed to deploy to `production`");
    assert_eq!(step(&p, "build").env.get("ORCH_EVENT").map(String::as_str), Some("deploy"));
    // The environment's rules: a commit of another branch does not deploy to production.
    let p = plan_for(DEPLOY, &deploy("production", "feature/x"));
    assert!(reason(&p, "ship[region=eu]").starts_with("environment `production` deploys only from"), "{p:?}");
    assert!(p.steps.iter().all(|s| s.environment.is_none()), "{:?}", names(&p));
    // No step deploys there: nothing runs, and the reason says so.
    let p = plan_for(DEPLOY, &deploy("qa", "main"));
    assert!(p.steps.is_empty());
    assert_eq!(reason(&p, "build"), "no step deploys to environment `qa`");
    // `when.event: deploy`, and `on` does not hold a deploy back.
    let src = "on: {push: {branches: [main]}}\nsteps:\n  a: {image: alpine, commands: [x], environment: qa}\n  \
               b: {image: alpine, commands: [x], when: {event: deploy}}\n";
    assert_eq!(triggered(src, &deploy("qa", "other")), Ok(()));
    assert_eq!(names(&plan_for(src, &deploy("qa", "other"))), ["a"]);
    assert_eq!(names(&plan_for(src, &ctx(Event::Deploy))), ["a", "b"]);
}

const GATED: &str = r#"
environments:
  production:
    approval: { approvers: [alice, bob], required: 2, timeout: 2h }
    wait: 5m
    secrets: [DEPLOY_KEY]
    order: fifo
  staging: {}
steps:
  test: { image: busybox, commands: [true], secrets: [DEPLOY_KEY, TOKEN] }
  ship: { image: busybox, environment: production, commands: [true] }
  stage: { image: busybox, environment: staging, commands: [true] }
"#;

#[test]
fn gates_load_and_the_plan_carries_the_rules_of_the_environments_it_deploys_to() {
    let p = pipeline(GATED);
    let rules = &p.environments["production"];
    let a = rules.approval.as_ref().unwrap();
    assert_eq!((a.approvers.clone(), a.required, a.timeout.as_secs()), (vec!["alice".into(), "bob".into()], 2, 7200));
    assert_eq!(rules.wait.map(|w| w.as_secs()), Some(300));
    assert_eq!(rules.order, orch::pipeline::DeployOrder::Fifo);
    let defaults = pipeline("environments: {p: {approval: {approvers: [x]}}}\nsteps: {a: {image: i, commands: [x]}}");
    let a = defaults.environments["p"].approval.clone().unwrap();
    assert_eq!((a.required, a.timeout.as_secs()), (1, 24 * 3600));
    assert_eq!(defaults.environments["p"].order, orch::pipeline::DeployOrder::Newest);

    let plan = plan_for(GATED, &push("main"));
    assert_eq!(plan.environments.keys().collect::<Vec<_>>(), ["production", "staging"]);
    // An environment's secret never reaches a step that only lists it.
    assert_eq!(step(&plan, "test").secrets, ["TOKEN"]);
    let text = render::text(&plan);
    assert!(text.contains("deploys to production, once 2 of alice, bob approve"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&render::json(&plan)).unwrap();
    let prod = &json["environments"]["production"];
    assert_eq!(prod["approval"]["timeout"], "2h", "{json:#}");
    assert_eq!((prod["wait"].as_str(), prod["order"].as_str()), (Some("5m"), Some("fifo")), "{json:#}");
    assert_eq!(prod["secrets"], serde_json::json!(["DEPLOY_KEY"]));
}

#[test]
fn a_pull_request_never_deploys_to_an_environment_with_gates_even_without_branch_rules() {
    let pr = plan_for(GATED, &pull_request("main", "main"));
    assert_eq!(
        reason(&pr, "ship"),
        "environment `production` has rules, and pull requests never deploy to one: this run is a pull request (#42)"
    );
    // Rules that say nothing keep the environment open.
    assert_eq!(names(&pr), ["test", "stage"]);
    assert_eq!(names(&plan_for(GATED, &push("feature/x"))), ["test", "ship", "stage"]);
}

/// A server's trusted rules (the default branch's) govern a branch's file: they replace its
/// rules for the environments they name (declared there or not), its other environments
/// keep their own rules less the trusted environments' secrets; unknown rules refuse every
/// deployment and withhold every secret. The rules survive the job's JSON.
#[test]
fn trusted_environment_rules_replace_a_branch_s_own_and_unknown_ones_refuse_deploying() {
    use orch::pipeline::model::TrustedEnvironments;
    let trusted = pipeline(GATED).environments;
    let trusted = TrustedEnvironments::Rules(trusted);
    let json = serde_json::to_string(&trusted).unwrap();
    assert_eq!(serde_json::from_str::<TrustedEnvironments>(&json).unwrap(), trusted, "{json}");

    // The branch opens production to itself, without approval or secrets, and hands
    // production's secret to an environment of its own.
    let branch = r#"
environments:
  production: { branches: [evil] }
  sandbox: { branches: [evil], secrets: [DEPLOY_KEY, SANDBOX_KEY] }
steps:
  ship: { image: busybox, environment: production, commands: [true] }
  play: { image: busybox, environment: sandbox, commands: [true] }
  test: { image: busybox, commands: [true], secrets: [DEPLOY_KEY, TOKEN] }
"#;
    let own = plan(&pipeline(branch), &push("evil"), &Selection::default()).unwrap();
    assert!(own.environments["production"].approval.is_none(), "its own rules let it deploy unapproved");
    let mut p = pipeline(branch);
    p.govern_environments(&trusted);
    let governed = plan(&p, &push("evil"), &Selection::default()).unwrap();
    assert_eq!(names(&governed), ["ship", "play", "test"]);
    let prod = &governed.environments["production"];
    assert_eq!(prod.approval.as_ref().map(|a| a.required), Some(2));
    assert_eq!((prod.branches.is_none(), prod.secrets.clone()), (true, vec!["DEPLOY_KEY".to_string()]));
    assert_eq!(governed.environments["sandbox"].secrets, ["SANDBOX_KEY"]);
    assert_eq!(step(&governed, "test").secrets, ["TOKEN"]);
    // Dropping production from the file drops nothing.
    let mut dropped = pipeline(&branch.replace("  production: { branches: [evil] }\n", ""));
    dropped.govern_environments(&trusted);
    assert_eq!(dropped.environments["production"], pipeline(GATED).environments["production"]);

    let mut unknown = pipeline(branch);
    unknown.govern_environments(&TrustedEnvironments::Unknown("the default branch's file is invalid".into()));
    let refused = plan(&unknown, &push("evil"), &Selection::default()).unwrap();
    assert_eq!(names(&refused), ["test"]);
    assert_eq!(reason(&refused, "ship"), "environment `production`: the default branch's file is invalid");
    assert_eq!(reason(&refused, "play"), "environment `sandbox`: the default branch's file is invalid");
    assert!(step(&refused, "test").secrets.is_empty(), "any secret may be an environment's");
}
