//! The commands around the pipeline: completions, the man page, `--version`.
//! They run the built binary; none needs Docker.

use std::process::{Command, Output};

const ORCH: &str = env!("CARGO_BIN_EXE_orch");

fn orch(args: &[&str]) -> Output {
    Command::new(ORCH).args(args).output().expect("orch runs")
}

fn stdout_of(args: &[&str]) -> String {
    let out = orch(args);
    assert!(out.status.success(), "orch {args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

fn assert_mentions_subcommands(text: &str, what: &str) {
    assert!(!text.trim().is_empty(), "{what}: empty");
    for sub in ["validate", "plan", "ci", "serve"] {
        assert!(text.contains(sub), "{what}: no {sub:?} in:\n{text}");
    }
}

#[test]
fn completions_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let text = stdout_of(&["completions", shell]);
        assert_mentions_subcommands(&text, shell);
    }
    let bash = stdout_of(&["completions", "bash"]);
    assert!(bash.contains("_orch()"), "bash: no completion function:\n{bash}");
    assert!(bash.contains("complete -F _orch"), "bash: function not registered:\n{bash}");
    let zsh = stdout_of(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef orch"), "zsh: no #compdef header");
    let fish = stdout_of(&["completions", "fish"]);
    assert!(fish.contains("complete -c orch"), "fish: no complete -c orch");
    // `orch init --template <TAB>` offers the templates, with what each is for in fish.
    for t in orch::init::TEMPLATES {
        assert!(bash.contains(t.name) && zsh.contains(t.name), "{} is not offered", t.name);
        assert!(fish.contains(&format!("{}\\t", t.name)), "fish: {} without its description", t.name);
    }
}

#[test]
fn completions_refuse_an_unknown_shell() {
    let out = orch(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty());
}

#[test]
fn man_page_is_roff_and_lists_the_subcommands() {
    let text = stdout_of(&["man"]);
    assert!(text.contains(".TH orch 1"), "no .TH header:\n{text}");
    assert!(text.contains(".SH NAME"), "no NAME section");
    assert!(text.contains(".SH SUBCOMMANDS"), "no SUBCOMMANDS section");
    assert_mentions_subcommands(&text, "man");
}

#[test]
fn version_shows_the_package_version_and_the_commit() {
    let text = stdout_of(&["--version"]);
    let line = text.trim();
    let expected_start = format!("orch {} (", env!("CARGO_PKG_VERSION"));
    assert!(line.starts_with(&expected_start) && line.ends_with(')'), "{line:?}");
    let commit = &line[expected_start.len()..line.len() - 1];
    // The commit the test binary was built from, when the tree is a git checkout (as in
    // CI); "unknown" otherwise.
    let head = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match head {
        Some(head) => assert_eq!(commit, head, "{line:?}"),
        None => assert_eq!(commit, "unknown", "{line:?}"),
    }
}

// ---- orch doctor ----

/// `orch doctor` in a clean environment: the cache in `cache`, no server settings.
fn doctor(cache: &std::path::Path, docker_host: Option<&str>, extra: &[(&str, &str)]) -> (Option<i32>, Vec<String>) {
    let mut cmd = Command::new(ORCH);
    cmd.arg("doctor").env("ORCH_CACHE_DIR", cache);
    for var in ["ORCH_CONFIG", "ORCH_WEBHOOK_SECRET", "ORCH_DATA_DIR", "ORCH_INSECURE_NO_SIGNATURE"] {
        cmd.env_remove(var);
    }
    if let Some(h) = docker_host {
        cmd.env("DOCKER_HOST", h);
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("orch doctor runs");
    let lines: Vec<String> = String::from_utf8(out.stdout).expect("utf-8").lines().map(str::to_string).collect();
    for line in &lines {
        assert!(
            line.starts_with("ok    ") || line.starts_with("warn  ") || line.starts_with("FAIL  "),
            "a line without a status: {line:?}"
        );
        if !line.starts_with("ok") {
            assert!(line.contains(" — "), "a warning or failure without a hint: {line:?}");
        }
    }
    (out.status.code(), lines)
}

fn line_for<'a>(lines: &'a [String], subject: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l[6..].starts_with(&format!("{subject}:")))
        .unwrap_or_else(|| panic!("no {subject:?} line in {lines:#?}"))
}

#[test]
fn doctor_without_docker_fails_with_a_hint_and_exit_3() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let (code, lines) = doctor(&cache, Some("unix:///nonexistent/docker.sock"), &[]);
    assert_eq!(code, Some(3), "{lines:#?}");
    assert!(line_for(&lines, "docker").starts_with("FAIL"), "{lines:#?}");
    assert!(line_for(&lines, "docker").contains("DOCKER_HOST"), "{lines:#?}");
    for image in ["busybox:latest", "debian:bookworm"] {
        assert!(line_for(&lines, &format!("image {image}")).starts_with("warn"), "{lines:#?}");
    }
    assert!(line_for(&lines, "cache dir").starts_with("ok"), "{lines:#?}");
    assert!(cache.is_dir(), "the cache dir is created");
    assert!(std::fs::read_dir(&cache).unwrap().next().is_none(), "the probe file is removed");
    let disk = line_for(&lines, "cache dir disk");
    assert!(disk.contains(" free on "), "{disk}");
    assert!(line_for(&lines, "git").starts_with("ok"), "{lines:#?}");
    // No server settings given: no server check.
    assert!(!lines.iter().any(|l| l.contains("serve config")), "{lines:#?}");
}

#[test]
fn doctor_checks_the_server_config_when_one_is_given() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let data = tmp.path().join("data");
    let host = Some("unix:///nonexistent/docker.sock");
    let data_s = data.to_str().unwrap();
    let (_, lines) = doctor(&cache, host, &[("ORCH_WEBHOOK_SECRET", "s3cret"), ("ORCH_DATA_DIR", data_s)]);
    let serve = line_for(&lines, "serve config");
    assert!(serve.starts_with("ok") && serve.contains(data_s), "{lines:#?}");
    assert!(line_for(&lines, "data dir disk").contains(" free on "), "{lines:#?}");

    let config = tmp.path().join("orch.yml");
    std::fs::write(&config, "listen: 127.0.0.1:9\nwebhok-secret: x\n").unwrap();
    let (code, lines) = doctor(&cache, host, &[("ORCH_CONFIG", config.to_str().unwrap())]);
    assert_eq!(code, Some(3));
    let serve = line_for(&lines, "serve config");
    assert!(serve.starts_with("FAIL") && serve.contains("webhok-secret"), "{lines:#?}");
}

#[test]
fn empty_environment_variables_count_as_unset() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("orch.yml");
    let data = tmp.path().join("data");
    std::fs::write(
        &config,
        format!("webhook_secret: s3cret\nallow_repo: [acme/hello]\nconcurrency: 3\ndata_dir: {}\n", data.display()),
    )
    .unwrap();
    // As a service's environment file leaves them: set, and empty.
    let empty = [("ORCH_WEBHOOK_SECRET", ""), ("ORCH_ALLOW_REPOS", ""), ("ORCH_CONCURRENCY", ""), ("ORCH_LISTEN", "")];
    let mut env: Vec<(&str, &str)> = empty.to_vec();
    env.push(("ORCH_CONFIG", config.to_str().unwrap()));
    let (_, lines) = doctor(&tmp.path().join("cache"), Some("unix:///nonexistent/docker.sock"), &env);
    let serve = line_for(&lines, "serve config");
    assert!(serve.starts_with("ok"), "{lines:#?}");
    assert!(serve.contains("listen 127.0.0.1:8080") && serve.contains("repositories: acme/hello"), "{serve}");
    // Read by orch itself, not through the flags: empty is unset too.
    let (_, lines) = doctor(&tmp.path().join("cache"), None, &[("ORCH_CACHE_DIR", "")]);
    let cache = line_for(&lines, "cache dir");
    assert!(cache.contains("/orch") && !cache.contains("dir:  "), "{cache}");

    // The shipped environment file, as the systemd unit reads it, builds every repository.
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/runners/server/orch.env")).unwrap();
    let data_s = data.to_str().unwrap();
    let mut env: Vec<(&str, &str)> = shipped
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| *k != "ORCH_DATA_DIR")
        .collect();
    env.push(("ORCH_DATA_DIR", data_s));
    assert!(env.iter().any(|(k, v)| *k == "ORCH_ALLOW_REPOS" && v.is_empty()), "{env:?}");
    let (_, lines) = doctor(&tmp.path().join("cache"), Some("unix:///nonexistent/docker.sock"), &env);
    let serve = line_for(&lines, "serve config");
    assert!(serve.starts_with("ok") && serve.contains("repositories: any signed"), "{lines:#?}");
}

#[test]
fn doctor_with_docker_passes() {
    if std::env::var("ORCH_DOCKER_TESTS").as_deref() != Ok("1") {
        eprintln!("skipped: Docker tests run only with ORCH_DOCKER_TESTS=1 (scripts/test sets it)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (code, lines) = doctor(&tmp.path().join("cache"), None, &[]);
    let docker = line_for(&lines, "docker");
    assert!(docker.starts_with("ok") && docker.contains("daemon answers (Docker "), "{lines:#?}");
    for image in ["busybox:latest", "debian:bookworm"] {
        assert!(line_for(&lines, &format!("image {image}")).starts_with("ok"), "{lines:#?}");
    }
    assert_eq!(code, Some(0), "{lines:#?}");
}

// ---- orch init ----

fn init_in(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(ORCH)
        .arg("init")
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("orch init runs")
}

fn shipped(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines").join(format!("{name}.yml"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn written(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join(".orch.yml")).expect(".orch.yml written")
}

#[test]
fn init_detects_each_stack() {
    let cases: &[(&str, &str, &str)] = &[
        ("Cargo.toml", "[package]\nname = \"x\"\n", "rust"),
        ("package.json", "{}\n", "node"),
        ("go.mod", "module example.com/x\n", "go"),
        ("pyproject.toml", "[project]\nname = \"x\"\n", "python"),
        ("requirements.txt", "requests\n", "python"),
        ("Dockerfile", "FROM scratch\n", "docker"),
        ("index.html", "<h1>hi</h1>\n", "static-site"),
        ("site/index.html", "<h1>hi</h1>\n", "static-site"),
    ];
    for (file, content, template) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        let out = init_in(tmp.path(), &[]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{file}: {out:?}");
        assert_eq!(written(tmp.path()), shipped(template), "{file}: not the {template} template");
        let marker = file.split('/').next().unwrap();
        let marker = if *file == "site/index.html" { "site/".to_string() } else { marker.to_string() };
        assert!(stdout.contains(&format!("from the `{template}` template (found {marker})")), "{file}: {stdout}");
        // The next commands to run.
        assert!(stdout.contains("orch plan") && stdout.contains("orch ci"), "{file}: {stdout}");
        // What it wrote validates.
        let v = Command::new(ORCH).arg("validate").current_dir(tmp.path()).output().unwrap();
        assert!(v.status.success(), "{file}: {v:?}");
    }
}

#[test]
fn init_prefers_the_language_and_mentions_the_other_fits() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("Dockerfile"), "FROM scratch\n").unwrap();
    std::fs::write(tmp.path().join("go.mod"), "module x\n").unwrap();
    let out = init_in(tmp.path(), &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(written(tmp.path()), shipped("go"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("also fits: docker (Dockerfile)"), "{stdout}");
}

#[test]
fn init_without_a_known_project_asks_for_a_template() {
    let tmp = tempfile::tempdir().unwrap();
    let out = init_in(tmp.path(), &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--template NAME"), "{out:?}");
    assert!(!tmp.path().join(".orch.yml").exists());
}

#[test]
fn init_list_shows_every_template_and_the_detected_ones() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("package.json"), "{}\n").unwrap();
    let out = init_in(tmp.path(), &["--list"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for name in ["rust", "node", "go", "python", "docker", "static-site", "deploy-ssh"] {
        assert!(stdout.lines().any(|l| l.starts_with(&format!("{name} "))), "no {name} in:\n{stdout}");
    }
    let node = stdout.lines().find(|l| l.starts_with("node ")).unwrap();
    assert!(node.ends_with("(detected: package.json)"), "{node}");
    assert_eq!(stdout.matches("(detected").count(), 1, "{stdout}");
    assert!(!tmp.path().join(".orch.yml").exists(), "--list writes nothing");
}

#[test]
fn init_refuses_to_overwrite_without_force_and_does_not_prompt() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("Cargo.toml"), "").unwrap();
    std::fs::write(tmp.path().join(".orch.yml"), "mine\n").unwrap();
    // stdin is not a terminal (null): no question, an error, the file untouched.
    let out = init_in(tmp.path(), &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--force") && !stderr.contains("[y/N]"), "{stderr}");
    assert_eq!(written(tmp.path()), "mine\n");

    let out = init_in(tmp.path(), &["--force"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(written(tmp.path()), shipped("rust"));
}

#[test]
fn init_with_a_template_ignores_detection() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("Cargo.toml"), "").unwrap();
    let out = init_in(tmp.path(), &["--template", "deploy-ssh"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(written(tmp.path()), shipped("deploy-ssh"));

    let out = init_in(tmp.path(), &["--force", "-t", "static-sit"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a similar value exists: 'static-site'") && err.contains("possible values:"), "{err}");
    assert_eq!(written(tmp.path()), shipped("deploy-ssh"), "an unknown template writes nothing");
}

#[test]
fn every_shipped_template_is_offered_by_init() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let out = init_in(&dir, &["--list"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        if let Some(stem) = name.strip_suffix(".yml") {
            assert!(stdout.lines().any(|l| l.starts_with(&format!("{stem} "))), "{name} is not in --list:\n{stdout}");
        }
    }
}

// ---- the templates that run with the local images, end to end ----

/// `orch init` then `orch ci` on a small sample project, for the templates whose images
/// are the local ones (busybox:latest, debian:bookworm); the deploy steps are left out
/// (they need secrets and a server).
#[test]
fn local_image_templates_run_end_to_end_after_init() {
    if std::env::var("ORCH_DOCKER_TESTS").as_deref() != Ok("1") {
        eprintln!("skipped: Docker tests run only with ORCH_DOCKER_TESTS=1 (scripts/test sets it)");
        return;
    }
    let cases: &[(&str, &[&str])] =
        &[("static-site", &["assemble", "check", "smoke"]), ("deploy-ssh", &["build", "test"])];
    for (template, steps) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let site = tmp.path().join("site");
        std::fs::create_dir_all(site.join("about")).unwrap();
        std::fs::write(site.join("index.html"), "<a href=\"about/\">about</a> <link href=\"style.css\">\n").unwrap();
        std::fs::write(site.join("about/index.html"), "<h1>about</h1>\n").unwrap();
        std::fs::write(site.join("style.css"), "h1 {}\n").unwrap();
        let out = init_in(tmp.path(), &["--template", template]);
        assert!(out.status.success(), "{template}: {out:?}");
        let mut ci = Command::new(ORCH);
        ci.args(["ci", "--branch", "main", "--no-progress"]).current_dir(tmp.path());
        for s in *steps {
            ci.args(["--step", s]);
        }
        let out = ci.output().expect("orch ci runs");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{template}: orch ci failed:\n{text}");
        for s in *steps {
            assert!(text.contains(&format!("{s} passed")), "{template}: {s} did not pass:\n{text}");
        }
    }
}

/// The staged-deploy template after `orch init`: staging deploys, production waits for its
/// approval (given with `--approve`), its wait timer, and gets its environment secret,
/// masked; approving only staging leaves production failed, saying how to approve it.
#[test]
fn the_staged_deploy_template_deploys_to_production_only_when_approved() {
    if std::env::var("ORCH_DOCKER_TESTS").as_deref() != Ok("1") {
        eprintln!("skipped: Docker tests run only with ORCH_DOCKER_TESTS=1 (scripts/test sets it)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = init_in(tmp.path(), &["--template", "staged-deploy"]);
    assert!(out.status.success(), "{out:?}");
    // The template waits a minute after approval; a test need not.
    let file = tmp.path().join(".orch.yml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("wait: 1m"), "{text}");
    std::fs::write(&file, text.replace("wait: 1m", "wait: 1s")).unwrap();
    let run = |approve: &str| {
        let out = Command::new(ORCH)
            .args(["ci", "--branch", "main", "--no-progress", approve])
            .env("PRODUCTION_TOKEN", "prod-secret-4711")
            .current_dir(tmp.path())
            .output()
            .expect("orch ci runs");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code(), text)
    };
    let (code, text) = run("--approve");
    assert_eq!(code, Some(0), "{text}");
    for s in ["build", "test", "deploy-staging", "deploy-production"] {
        assert!(text.contains(&format!("{s} passed")), "{s} did not pass:\n{text}");
    }
    assert!(text.contains("with token ***") && !text.contains("prod-secret-4711"), "the secret is masked:\n{text}");
    assert!(text.contains("wait timer"), "{text}");
    let (code, text) = run("--approve=staging");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("deploy-staging passed") && text.contains("pass --approve"), "{text}");
    assert!(!text.contains("prod-secret-4711"), "{text}");
}

#[test]
fn plan_for_a_schedule_event() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join(".orch.yml");
    std::fs::write(
        &file,
        "on:\n  push: {branches: [main]}\n  schedule:\n    - {cron: \"0 3 * * 1-5\", timezone: Europe/Berlin, name: nightly}\n\
         steps:\n  build: {image: alpine, commands: [make]}\n  slow:\n    image: alpine\n    commands: [make slow]\n    when: {event: schedule}\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let out =
        orch(&["plan", f, "--event", "schedule", "--schedule", "nightly", "--branch", "main", "--format", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let steps: Vec<&str> = v["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(steps, ["build", "slow"]);
    assert_eq!(v["steps"][1]["env"]["ORCH_EVENT"], "schedule");
    assert_eq!(v["steps"][1]["env"]["ORCH_SCHEDULE"], "nightly");
    // A push plans without the schedule-only step.
    let push = stdout_of(&["plan", f, "--event", "push", "--branch", "main"]);
    assert!(push.contains("build") && !push.contains("make slow"), "{push}");
    // A pipeline without `on.schedule` is not triggered by one.
    std::fs::write(&file, "on: {push: {}}\nsteps:\n  build: {image: alpine, commands: [make]}\n").unwrap();
    let text = stdout_of(&["plan", f, "--event", "schedule"]);
    assert!(text.contains("`on` has no `schedule`"), "{text}");
}
