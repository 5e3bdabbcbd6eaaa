//! `include:`: pipelines made of several files, merged in order, with every problem shown in
//! the file it is in.

use std::fs;
use std::path::Path;
use std::process::Command;

use orch::pipeline::{self, ConfigError};

/// Writes `files` (path, text) under a fresh directory made a git work tree.
fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join(".git")).unwrap();
    for (path, text) in files {
        let p = dir.path().join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }
    dir
}

/// `orch validate FILE` run in `dir`: (exit code, stdout + stderr).
fn validate(dir: &Path, file: &str) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_orch")).args(["validate", file]).current_dir(dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// The rendered problems of loading `dir/file`, with file names relative to `dir`.
fn problems(dir: &Path, file: &str) -> String {
    let prefix = format!("{}/", dir.display());
    rendered(pipeline::load_file(&dir.join(file))).replace(&prefix, "")
}

fn rendered(r: Result<pipeline::Pipeline, ConfigError>) -> String {
    match r {
        Err(ConfigError::Invalid { rendered, .. }) => rendered,
        Err(e) => panic!("not a diagnostic: {e}"),
        Ok(_) => panic!("the pipeline loaded"),
    }
}

const COMMON: &str = "\
# shared by every service of the repository
env:
  LANG: C.UTF-8
  LEVEL: base
steps:
  lint:
    stage: build
    image: busybox
    commands: [echo lint]
  test:
    image: busybox
    timeout: 5m
    commands: [echo test]
";

#[test]
fn includes_merge_deeply_with_the_including_file_on_top() {
    let dir = tree(&[
        ("ci/common.yml", COMMON),
        (
            ".orch.yml",
            "include:\n  - ci/common.yml\n  - template: services-cache-artifacts\nenv:\n  LEVEL: main\nsteps:\n  test:\n    timeout: 20m\n  extra:\n    image: busybox\n    commands: [echo extra]\n",
        ),
    ]);
    let p = pipeline::load_file(&dir.path().join(".orch.yml")).unwrap();
    assert_eq!(p.env.get("LANG").map(String::as_str), Some("C.UTF-8"));
    assert_eq!(p.env.get("LEVEL").map(String::as_str), Some("main"), "the including file wins");
    let test = &p.steps["test"];
    assert_eq!(test.timeout, Some(std::time::Duration::from_secs(1200)), "a key of an included step is overridden");
    assert_eq!(test.commands, vec!["echo test"], "the rest of the included step stays");
    assert_eq!(test.image.as_deref(), Some("busybox"));
    for name in ["lint", "extra"] {
        assert!(p.steps.contains_key(name), "{name}");
    }
    // The template's steps are there too.
    let template =
        pipeline::parse_str("t.yml", orch::init::template("services-cache-artifacts").unwrap().text).unwrap();
    for name in template.steps.keys() {
        assert!(p.steps.contains_key(name), "template step {name}");
    }
}

#[test]
fn problems_in_an_included_file_point_into_it() {
    let dir = tree(&[
        (
            "ci/common.yml",
            "steps:\n  lint:\n    image: busybox\n    comands: [echo lint]\n  test:\n    image: busybox\n    commands: [echo test]\n    needs: [buld]\n",
        ),
        (
            ".orch.yml",
            "include: [ci/common.yml]\nsteps:\n  build:\n    image: busybox\n    timeout: soon\n    commands: [make]\n",
        ),
    ]);
    let (code, out) = validate(dir.path(), ".orch.yml");
    assert_eq!(code, 2, "{out}");
    let want = "\
error: `soon` is not a duration
 --> .orch.yml:5:14
  |
5 |     timeout: soon
  |              ^^^^
  = at: steps.build.timeout
  = help: write a number with a unit: `500ms`, `90s`, `10m`, `1h30m`

error: unknown key `comands` in a step
 --> ci/common.yml:4:5
  |
4 |     comands: [echo lint]
  |     ^^^^^^^
  = at: steps.lint.comands
  = help: did you mean `commands`?

error: step `test` needs `buld`, which is not a step
 --> ci/common.yml:8:13
  |
8 |     needs: [buld]
  |             ^^^^
  = at: steps.test.needs[0]
  = help: did you mean `build`?

.orch.yml: 3 problems found (2 in included files)
";
    assert!(out.contains(want), "got:\n{out}");
}

#[test]
fn a_syntax_error_in_an_included_file_has_its_position() {
    let dir = tree(&[
        ("ci/bad.yml", "steps:\n  lint:\n    image: busybox\n    commands: [echo lint\n"),
        (".orch.yml", "include: [ci/bad.yml]\nsteps:\n  build: {image: busybox, commands: [make]}\n"),
    ]);
    let out = problems(dir.path(), ".orch.yml");
    assert!(out.contains("--> ci/bad.yml:4:15"), "{out}");
    assert!(out.contains("this list is never closed"), "{out}");
}

#[test]
fn include_items_are_checked_where_they_are_written() {
    let dir = tree(&[
        ("ci/a.yml", "include: [b.yml]\nenv: {A: 1}\n"),
        ("ci/b.yml", "include: [a.yml]\nenv: {B: 1}\n"),
        ("ci/list.yml", "- not a mapping\n"),
        (
            ".orch.yml",
            "include:\n  - ci/missing.yml\n  - template: rusty\n  - ci/a.yml\n  - ../outside.yml\n  - /etc/passwd\n  - ci/list.yml\n  - {locl: x.yml}\nsteps:\n  build: {image: busybox, commands: [make]}\n",
        ),
    ]);
    fs::write(dir.path().parent().unwrap().join("outside.yml"), "env: {X: 1}\n").ok();
    let out = problems(dir.path(), ".orch.yml");
    for want in [
        "error: cannot read `ci/missing.yml`: no such file\n --> .orch.yml:2:5",
        "error: no template `rusty`\n --> .orch.yml:3:15",
        "= help: did you mean `rust`?",
        "error: `ci/a.yml` includes itself: ci/a.yml → ci/b.yml → ci/a.yml\n --> ci/b.yml:1:11",
        "error: `../outside.yml` is outside the repository\n --> .orch.yml:5:5",
        "error: `/etc/passwd` is not a relative path\n --> .orch.yml:6:5",
        "error: `ci/list.yml` must be a mapping of pipeline keys, found a list\n --> .orch.yml:7:5",
        "error: unknown key `locl` in an include\n --> .orch.yml:8:6",
        "= help: did you mean `local`?",
    ] {
        assert!(out.contains(want), "missing:\n{want}\n\nin:\n{out}");
    }
}

#[test]
fn a_symbolic_link_cannot_reach_out_of_the_repository() {
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret.yml"), "env: {TOKEN: hunter2}\n").unwrap();
    let dir = tree(&[(".orch.yml", "include: [ci/link.yml]\nsteps:\n  build: {image: busybox, commands: [make]}\n")]);
    fs::create_dir(dir.path().join("ci")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.yml"), dir.path().join("ci/link.yml")).unwrap();
    let out = problems(dir.path(), ".orch.yml");
    assert!(out.contains("`ci/link.yml` is outside the repository"), "{out}");
    assert!(!out.contains("hunter2"));
}

#[test]
fn nested_includes_are_relative_to_their_file_and_merged_once() {
    let dir = tree(&[
        ("ci/base.yml", "env: {ORDER: base, BASE: yes}\n"),
        (
            "ci/lint.yml",
            "include: [base.yml]\nenv: {ORDER: lint}\nsteps:\n  lint: {image: busybox, commands: [true]}\n",
        ),
        ("ci/test.yml", "include: [./base.yml]\nsteps:\n  test: {image: busybox, commands: [true]}\n"),
        (
            "app/.orch.yml",
            "include: [../ci/lint.yml, ../ci/test.yml]\nsteps:\n  build: {image: busybox, commands: [true]}\n",
        ),
    ]);
    let p = pipeline::load_file(&dir.path().join("app/.orch.yml")).unwrap();
    // base.yml is merged once (through lint.yml): test.yml's include of it does not undo
    // lint.yml's ORDER.
    assert_eq!(p.env.get("ORDER").map(String::as_str), Some("lint"));
    assert_eq!(p.env.get("BASE").map(String::as_str), Some("yes"));
    assert_eq!(p.steps.keys().collect::<Vec<_>>(), ["lint", "test", "build"]);
    // Names in messages are relative to where orch runs.
    fs::write(dir.path().join("ci/test.yml"), "steps:\n  test: {image: busybox, commands: [true], timeout: x}\n")
        .unwrap();
    let (code, out) = validate(dir.path(), "app/.orch.yml");
    assert_eq!(code, 2);
    assert!(out.contains("--> ci/test.yml:2:"), "{out}");
}

#[test]
fn text_without_a_file_can_include_templates_only() {
    let p = pipeline::parse_str("x.yml", "include: {template: go}\n").unwrap();
    assert!(!p.steps.is_empty());
    let out = rendered(pipeline::parse_str("x.yml", "include: [a.yml]\nsteps: {a: {image: x, commands: [true]}}\n"));
    assert!(out.contains("cannot include `a.yml` here"), "{out}");
}

#[test]
fn yaml_anchors_and_merge_keys_work_in_an_included_file() {
    let dir = tree(&[
        (
            "ci/common.yml",
            "x-base: &base\n  image: busybox\n  timeout: 2m\nsteps:\n  a:\n    <<: *base\n    commands: [true]\n",
        ),
        (".orch.yml", "include: [ci/common.yml]\nsteps:\n  b: {image: busybox, commands: [true]}\n"),
    ]);
    // `x-` keys are a place for anchors.
    let p = pipeline::load_file(&dir.path().join(".orch.yml")).unwrap();
    assert_eq!(p.steps["a"].timeout, Some(std::time::Duration::from_secs(120)));
    fs::write(
        dir.path().join("ci/common.yml"),
        "steps:\n  a: &base\n    image: busybox\n    timeout: 2m\n    commands: [true]\n  c:\n    <<: *base\n    commands: [echo c]\n",
    )
    .unwrap();
    let p = pipeline::load_file(&dir.path().join(".orch.yml")).unwrap();
    assert_eq!(p.steps["c"].timeout, Some(std::time::Duration::from_secs(120)));
    assert_eq!(p.steps["c"].commands, ["echo c"]);
}

#[test]
fn a_pipeline_file_that_links_out_of_the_repository_is_not_read() {
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("environ"), "ORCH_API_TOKEN=hunter2\n").unwrap();
    let dir = tree(&[]);
    std::os::unix::fs::symlink(outside.path().join("environ"), dir.path().join(".orch.yml")).unwrap();
    let e = pipeline::load_file(&dir.path().join(".orch.yml")).unwrap_err().to_string();
    assert!(e.contains("is a symbolic link out of the repository"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
    // A link within the repository is fine.
    fs::create_dir_all(dir.path().join("ci")).unwrap();
    fs::write(dir.path().join("ci/main.yml"), "steps:\n  a: {image: busybox, commands: [true]}\n").unwrap();
    fs::remove_file(dir.path().join(".orch.yml")).unwrap();
    std::os::unix::fs::symlink("ci/main.yml", dir.path().join(".orch.yml")).unwrap();
    pipeline::load_file(&dir.path().join(".orch.yml")).unwrap();
}

#[test]
fn thousands_of_problems_show_the_first_hundred() {
    let steps: String = (0..300).map(|i| format!("  s{i}: {{image: x, comands: [y]}}\n")).collect();
    let out = rendered(pipeline::parse_str("many.yml", &format!("steps:\n{steps}")));
    assert_eq!(out.matches("error: unknown key `comands`").count(), 100);
    assert!(out.ends_with("many.yml: 300 problems found, the first 100 shown\n"), "{}", &out[out.len() - 200..]);
}

#[test]
fn duplicate_keys_are_reported_with_includes_too() {
    let dir = tree(&[
        ("ci/a.yml", "env: {X: base}\n"),
        ("ci/b.yml", "env: {Y: b}\n"),
        (
            ".orch.yml",
            "include: [ci/a.yml]\ninclude: [ci/b.yml]\nenv:\n  X: one\n  X: two\nsteps:\n  a: {image: busybox, commands: [true]}\n",
        ),
    ]);
    let out = problems(dir.path(), ".orch.yml");
    assert!(out.contains("error: duplicate key `include` in the pipeline\n --> .orch.yml:2:1"), "{out}");
    assert!(out.contains("error: duplicate key `X` in env\n --> .orch.yml:5:3"), "{out}");
}
