use super::*;

/// Translates one workflow; `import` itself fails when the output does not validate.
fn one(src: &str) -> Imported {
    import(&[Workflow { file: "ci.yml", text: src }], &Options::default()).unwrap_or_else(|e| panic!("{e}"))
}

/// The translated pipeline as a tree.
fn tree(src: &str) -> (Node, Vec<Finding>) {
    let i = one(src);
    (yaml::parse(&i.text).unwrap(), i.findings)
}

fn at<'n>(n: &'n Node, path: &str) -> &'n Node {
    path.split('.').fold(n, |n, k| n.get(k).unwrap_or_else(|| panic!("no `{k}` of `{path}` in {n:?}")))
}

fn strs(items: &[&str]) -> Node {
    Node::Seq(items.iter().map(|s| Node::Str(s.to_string())).collect())
}

fn commands(n: &Node, step: &str) -> Vec<String> {
    match at(n, &format!("steps.{step}.commands")) {
        Node::Seq(items) => items.iter().filter_map(Node::as_text).collect(),
        other => panic!("{other:?}"),
    }
}

fn has(findings: &[Finding], line: usize, text: &str) -> bool {
    findings.iter().any(|f| f.line == line && f.message.contains(text))
}

#[test]
fn run_steps_become_one_list_of_commands_and_uses_steps_are_reported() {
    let src = "on: push\njobs:\n  test:\n    runs-on: ubuntu-latest\n    steps:\n      - uses: actions/checkout@v4\n      - run: npm ci\n      - name: Test\n        run: |\n          npm test\n          npm run lint\n      - uses: some/action@v1\n";
    let (n, f) = tree(src);
    assert_eq!(commands(&n, "test"), ["npm ci", "npm test\nnpm run lint"]);
    assert_eq!(at(&n, "steps.test.image"), &Node::Str(DEFAULT_IMAGE.into()));
    let checkout = f.iter().find(|f| f.line == 6).unwrap();
    assert_eq!((checkout.column, checkout.severity), (9, Severity::Note));
    let other = f.iter().find(|f| f.line == 12).unwrap();
    assert_eq!(other.severity, Severity::Warning);
    assert!(other.render().starts_with("ci.yml:12:9: warning: `uses: some/action@v1`"), "{}", other.render());
    let text = one(src).text;
    assert!(text.contains("# runs-on: ubuntu-latest"), "{text}");
}

#[test]
fn on_filters_map_to_orch_triggers() {
    let src = "on:\n  push:\n    branches: [main]\n    tags: ['v*']\n    paths-ignore: ['docs/**']\n  pull_request:\n    branches-ignore: [wip]\n    types: [opened]\n  schedule:\n    - cron: '0 0 * * *'\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps: [{run: make}]\n";
    let (n, f) = tree(src);
    assert_eq!(at(&n, "on.push.branches"), &strs(&["main"]));
    assert_eq!(at(&n, "on.push.tags"), &strs(&["v*"]));
    assert_eq!(at(&n, "on.push.paths.exclude"), &strs(&["docs/**"]));
    assert_eq!(at(&n, "on.pull_request.branches.exclude"), &strs(&["wip"]));
    assert_eq!(at(&n, "on.manual"), &Node::Bool(false));
    assert!(has(&f, 8, "`types`"), "{f:?}");
    assert!(!has(&f, 9, "`schedule`"), "{f:?}");
    match at(&n, "on.schedule") {
        Node::Seq(items) => {
            assert_eq!(items.iter().map(|i| at(i, "cron")).collect::<Vec<_>>(), [&Node::Str("0 0 * * *".into())])
        }
        other => panic!("on.schedule: {other:?}"),
    }
    let (n, _) = tree("on: [push, workflow_dispatch]\njobs:\n  a:\n    runs-on: x\n    steps: [{run: make}]\n");
    assert_eq!(at(&n, "on.push"), &Node::Map(vec![]));
    assert!(n.get("on").unwrap().get("manual").is_none(), "manual runs are allowed by default");
    let (n, _) = tree("on: workflow_dispatch\njobs:\n  a:\n    runs-on: x\n    steps: [{run: make}]\n");
    assert_eq!(at(&n, "on.manual"), &Node::Bool(true));
}

#[test]
fn job_keys_map_to_step_keys() {
    let src = "on: push\nenv:\n  TOP: 1.10\njobs:\n  build:\n    runs-on: ubuntu-latest\n    steps: [{run: make}]\n  test:\n    needs: build\n    runs-on: ubuntu-latest\n    container: node:22\n    timeout-minutes: 15\n    continue-on-error: true\n    env:\n      A: x\n      TOKEN: ${{ secrets.API_TOKEN }}\n      NPM_TOKEN: ${{ secrets.NPM_TOKEN }}\n    defaults:\n      run:\n        working-directory: web\n    steps: [{run: npm test}]\n";
    let (n, _) = tree(src);
    assert_eq!(at(&n, "env.TOP"), &Node::Float(1.1, "1.10".into()));
    assert_eq!(at(&n, "steps.test.needs"), &strs(&["build"]));
    assert_eq!(at(&n, "steps.test.image"), &Node::Str("node:22".into()));
    assert_eq!(at(&n, "steps.test.timeout"), &Node::Str("15m".into()));
    assert_eq!(at(&n, "steps.test.allow_failure"), &Node::Bool(true));
    assert_eq!(at(&n, "steps.test.workdir"), &Node::Str("web".into()));
    assert_eq!(at(&n, "steps.test.env.A"), &Node::Str("x".into()));
    assert_eq!(at(&n, "steps.test.secrets"), &strs(&["API_TOKEN", "NPM_TOKEN"]));
    assert_eq!(commands(&n, "test"), ["export TOKEN=\"$API_TOKEN\"", "npm test"]);
}

#[test]
fn matrix_keeps_include_and_exclude_and_renames_axes() {
    let src = "on: push\njobs:\n  t:\n    runs-on: ubuntu-latest\n    container: python:${{ matrix.python-version }}\n    strategy:\n      matrix:\n        python-version: ['3.10', '3.11']\n        os: [a, b]\n        exclude:\n          - {python-version: '3.10', os: b}\n        include:\n          - {python-version: '3.12', os: c}\n    steps:\n      - run: echo ${{ matrix.python-version }}\n";
    let (n, _) = tree(src);
    assert_eq!(at(&n, "steps.t.image"), &Node::Str("python:${python_version}".into()));
    assert_eq!(at(&n, "steps.t.matrix.python_version"), &strs(&["3.10", "3.11"]));
    assert!(matches!(at(&n, "steps.t.matrix.exclude"), Node::Seq(s) if s.len() == 1));
    assert!(matches!(at(&n, "steps.t.matrix.include"), Node::Seq(s) if s.len() == 1));
    assert_eq!(commands(&n, "t"), ["echo ${python_version}"]);
}

#[test]
fn an_include_that_extends_combinations_is_written_out() {
    // GitHub adds `experimental: true` to the node 22 combination; orch's include never
    // extends, so the importer lists the combinations.
    let src = "on: push\njobs:\n  t:\n    runs-on: x\n    strategy:\n      matrix:\n        node: [20, 22]\n        include:\n          - {node: 22, experimental: true}\n          - {node: 23}\n    steps: [{run: make}]\n";
    let (n, f) = tree(src);
    let Node::Seq(combos) = at(&n, "steps.t.matrix.include") else { panic!() };
    assert_eq!(combos.len(), 3);
    assert_eq!(combos[1].get("experimental"), Some(&Node::Bool(true)));
    assert!(n.get("steps").unwrap().get("t").unwrap().get("matrix").unwrap().get("node").is_none());
    assert!(has(&f, 8, "extend"), "{f:?}");
}

#[test]
fn services_get_ready_checks_and_a_localhost_warning() {
    let src = "on: push\njobs:\n  t:\n    runs-on: ubuntu-latest\n    services:\n      postgres:\n        image: postgres:16\n        env: {POSTGRES_PASSWORD: test}\n        ports: ['5432:5432']\n        options: >-\n          --health-cmd \"pg_isready -U postgres\" --health-interval 10s --tmpfs /x\n      Redis_Cache:\n        image: redis\n        ports: [6379]\n    steps: [{run: make}]\n";
    let (n, f) = tree(src);
    assert_eq!(at(&n, "steps.t.services.postgres.ready"), &Node::Str("pg_isready -U postgres".into()));
    assert_eq!(at(&n, "steps.t.services.postgres.env.POSTGRES_PASSWORD"), &Node::Str("test".into()));
    assert_eq!(at(&n, "steps.t.services.redis-cache.ready.tcp"), &Node::Int(6379));
    assert!(has(&f, 5, "localhost"), "{f:?}");
    assert!(has(&f, 10, "--tmpfs"), "{f:?}");
}

#[test]
fn job_if_maps_to_when() {
    let cases = [
        ("github.ref == 'refs/heads/main'", "branch", strs(&["main"])),
        ("${{ github.event_name == 'push' }}", "event", strs(&["push"])),
        ("startsWith(github.ref, 'refs/tags/v')", "tag", strs(&["v*"])),
        ("failure()", "status", Node::Str("failure".into())),
        ("always()", "status", Node::Str("always".into())),
        ("github.event_name == 'push' || github.event_name == 'workflow_dispatch'", "event", strs(&["push", "manual"])),
    ];
    for (cond, clause, want) in cases {
        let src = format!(
            "on: push\njobs:\n  a:\n    runs-on: x\n    steps: [{{run: make}}]\n  b:\n    needs: a\n    if: \"{cond}\"\n    runs-on: x\n    steps: [{{run: make}}]\n"
        );
        let (n, f) = tree(&src);
        assert_eq!(at(&n, &format!("steps.b.when.{clause}")), &want, "{cond}: {f:?}");
        assert!(f.iter().all(|f| !f.message.contains("if")), "{cond}: {f:?}");
    }
    // Both clauses of `&&`, and what has no equivalent reported at the `if` line.
    let src = "on: push\njobs:\n  d:\n    if: github.event_name == 'push' && github.ref == 'refs/heads/main' && github.repository == 'o/r'\n    runs-on: x\n    steps: [{run: make}]\n";
    let (n, f) = tree(src);
    assert_eq!(at(&n, "steps.d.when.event"), &strs(&["push"]));
    assert_eq!(at(&n, "steps.d.when.branch"), &strs(&["main"]));
    assert!(has(&f, 4, "github.repository"), "{f:?}");
}

#[test]
fn step_options_are_kept_by_wrapping_the_script() {
    let src = "on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n      - run: make\n        working-directory: sub dir\n        env: {A: 'it''s', B: '${{ matrix.nope }}'}\n      - run: pipe | tail\n        shell: bash\n        continue-on-error: true\n      - if: matrix.os == 'linux'\n        run: make linux\n      - if: failure()\n        run: echo failed\n";
    let (n, f) = tree(src);
    let c = commands(&n, "a");
    assert_eq!(c[0], "(\ncd 'sub dir'\nexport A='it'\\''s'\nmake\n)");
    assert!(c[1].starts_with("cat > /tmp/a-2.sh <<'ORCH_SCRIPT'\npipe | tail\nORCH_SCRIPT\n"), "{}", c[1]);
    assert!(c[1].ends_with("bash --noprofile --norc -eo pipefail /tmp/a-2.sh || echo \"continue-on-error: this command failed with $?\" >&2"), "{}", c[1]);
    // `matrix.os` is not a matrix key here: the condition cannot be written.
    assert_eq!(c[2], "make linux");
    assert_eq!(c.len(), 3, "the failure() step is left out");
    assert!(has(&f, 8, "matrix.nope") || f.iter().any(|f| f.message.contains("`B")), "{f:?}");
    assert!(has(&f, 14, "failure()"), "{f:?}");
}

#[test]
fn step_if_on_matrix_values_becomes_a_shell_test() {
    let src = "on: push\njobs:\n  a:\n    runs-on: x\n    strategy: {matrix: {os: [linux, mac], v: ['', x]}}\n    steps:\n      - if: matrix.os == 'linux' && matrix.v\n        run: make\n      - if: contains(matrix.os, 'ma')\n        run: make mac\n";
    let (n, _) = tree(src);
    let c = commands(&n, "a");
    assert_eq!(c[0], "if [ \"${os}\" = linux ] && [ -n \"${v}\" ]; then\nmake\nfi");
    assert_eq!(c[1], "if case \"${os}\" in *'ma'*) ;; *) false ;; esac; then\nmake mac\nfi");
}

#[test]
fn cache_and_artifacts_actions_are_translated() {
    let src = "on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n      - uses: actions/cache@v4\n        with:\n          path: |\n            ~/.npm\n            node_modules\n          key: npm-${{ runner.os }}-${{ hashFiles('package-lock.json') }}\n      - run: npm ci\n      - uses: actions/upload-artifact@v4\n        with:\n          path: ./dist/\n      - uses: actions/download-artifact@v4\n";
    let (n, f) = tree(src);
    assert_eq!(at(&n, "steps.a.cache.key"), &Node::Str("npm-Linux-${hash:package-lock.json}".into()));
    assert_eq!(at(&n, "steps.a.cache.paths"), &strs(&["~/.npm", "node_modules"]));
    assert_eq!(at(&n, "steps.a.artifacts.paths"), &strs(&["dist/"]));
    assert_eq!(at(&n, "steps.a.artifacts.optional"), &Node::Bool(true));
    assert!(f.iter().all(|f| f.severity == Severity::Note), "{f:?}");
}

#[test]
fn literal_dollars_in_interpolated_fields_are_escaped() {
    let src = "on: push\njobs:\n  a:\n    runs-on: x\n    env:\n      A: ${HOME}/x\n      B: $$\n      C: a$${{ github.sha }}\n    steps: [{run: make}]\n";
    let (n, _) = tree(src);
    assert_eq!(at(&n, "steps.a.env.A"), &Node::Str("$${HOME}/x".into()));
    assert_eq!(at(&n, "steps.a.env.B"), &Node::Str("$$$".into()));
    assert_eq!(at(&n, "steps.a.env.C"), &Node::Str("a$$${ORCH_COMMIT}".into()));
}

#[test]
fn several_workflows_merge_with_prefixes_and_per_workflow_events() {
    let a = "on: push\njobs:\n  test:\n    runs-on: x\n    steps: [{run: a}]\n  lint:\n    runs-on: x\n    steps: [{run: l}]\n";
    let b = "on: pull_request\njobs:\n  test:\n    runs-on: x\n    steps: [{run: b}]\n  deploy:\n    needs: test\n    runs-on: x\n    steps: [{run: d}]\n";
    let i = import(&[Workflow { file: "ci.yml", text: a }, Workflow { file: "pr.yml", text: b }], &Options::default())
        .unwrap();
    let n = yaml::parse(&i.text).unwrap();
    let Node::Map(steps) = at(&n, "steps") else { panic!() };
    let names: Vec<&str> = steps.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["ci-test", "lint", "pr-test", "deploy"]);
    assert_eq!(at(&n, "steps.deploy.needs"), &strs(&["pr-test"]));
    assert_eq!(at(&n, "steps.lint.when.event"), &strs(&["push", "tag"]));
    assert_eq!(at(&n, "steps.deploy.when.event"), &strs(&["pull_request"]));
    assert!(n.get("on").is_none());
    assert_eq!(i.findings.iter().filter(|f| f.message.contains("`on:` differ")).count(), 2);
}

#[test]
fn input_errors() {
    let w = |text| import(&[Workflow { file: "x.yml", text }], &Options::default());
    assert!(matches!(w("a: [1, 2\n"), Err(ImportError::Syntax { line: 1, .. })));
    assert!(matches!(w("- a\n"), Err(ImportError::NotAWorkflow { .. })));
    assert!(matches!(w("on: push\n"), Err(ImportError::NotAWorkflow { .. })));
}

#[test]
fn the_image_option_replaces_the_default() {
    let src = "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps: [{run: make}]\n";
    let i = import(&[Workflow { file: "ci.yml", text: src }], &Options { image: "busybox:latest".into() }).unwrap();
    assert!(i.text.contains("image: busybox:latest"), "{}", i.text);
}

#[test]
fn names_are_made_valid() {
    assert_eq!(step_name("_private"), "private");
    assert_eq!(step_name("a b"), "a-b");
    assert_eq!(var_name("python-version"), "python_version");
    assert_eq!(var_name("3x"), "_3x");
    assert_eq!(host_name("My_DB"), "my-db");
    assert_eq!(shell_words("--health-cmd 'a b' --x=\"c d\""), ["--health-cmd", "a b", "--x=c d"]);
}

#[test]
fn a_job_environment_becomes_the_step_environment() {
    let src = "on: push\njobs:\n  deploy:\n    runs-on: x\n    environment:\n      name: production\n      url: https://example.com/${{ github.sha }}\n    steps: [{run: ./deploy.sh}]\n  stage:\n    runs-on: x\n    environment: staging\n    steps: [{run: ./stage.sh}]\n  odd:\n    runs-on: x\n    environment: my env\n    steps: [{run: make}]\n  docs:\n    runs-on: x\n    environment: { name: docs, url: 'https://docs.example.com/a$b' }\n    steps: [{run: make}]\n";
    let (n, f) = tree(src);
    assert_eq!(at(&n, "steps.stage.environment"), &Node::Str("staging".into()));
    // A url with an expression is left out (reported), the name kept.
    assert_eq!(at(&n, "steps.deploy.environment"), &Node::Str("production".into()));
    assert!(has(&f, 7, "`environment.url` with an expression"), "{f:?}");
    assert!(has(&f, 5, "protection rules"), "{f:?}");
    // A plain url is kept, its `$` as it was (orch interpolates the field).
    assert_eq!(at(&n, "steps.docs.environment.url"), &Node::Str("https://docs.example.com/a$b".into()));
    // A name orch cannot take is reported, and the step has no environment.
    assert!(has(&f, 15, "this `environment` is not translated"), "{f:?}");
    assert!(n.get("steps").and_then(|s| s.get("odd")).and_then(|s| s.get("environment")).is_none());
}
