//! The ready-made pipelines of `pipelines/`, embedded in the binary: `orch init` writes
//! them and `include` reads them by name.

/// A shipped pipeline: what `orch init` writes and `include: [{template: NAME}]` reads.
pub struct Template {
    /// The name given to `--template` (the file's name without `.yml`).
    pub name: &'static str,
    /// What it is for, in `--list`.
    pub about: &'static str,
    /// The file's text.
    pub text: &'static str,
}

/// Every template, in the order `--list` shows them.
pub const TEMPLATES: &[Template] = &[
    Template {
        name: "rust",
        about: "Rust (cargo): fmt, clippy, test, release build on tags",
        text: include_str!("../../../../pipelines/rust.yml"),
    },
    Template {
        name: "node",
        about: "Node.js (npm): install, lint, test, build, publish on tags",
        text: include_str!("../../../../pipelines/node.yml"),
    },
    Template {
        name: "go",
        about: "Go module: vet, race tests, cross-built binaries",
        text: include_str!("../../../../pipelines/go.yml"),
    },
    Template {
        name: "python",
        about: "Python: venv, ruff, pytest, wheel on tags",
        text: include_str!("../../../../pipelines/python.yml"),
    },
    Template {
        name: "docker",
        about: "Dockerfile: hadolint, image build (kaniko), push to a registry",
        text: include_str!("../../../../pipelines/docker.yml"),
    },
    Template {
        name: "static-site",
        about: "static web site: assemble, link check, smoke test, gh-pages",
        text: include_str!("../../../../pipelines/static-site.yml"),
    },
    Template {
        name: "deploy-ssh",
        about: "build, test, then rsync over SSH to staging (main) and production (tags)",
        text: include_str!("../../../../pipelines/deploy-ssh.yml"),
    },
    Template {
        name: "staged-deploy",
        about: "staging on every push to main, production after 2 of 3 approvals",
        text: include_str!("../../../../pipelines/staged-deploy.yml"),
    },
    Template {
        name: "services-cache-artifacts",
        about: "a tour of caches, artifacts and services (busybox only)",
        text: include_str!("../../../../pipelines/services-cache-artifacts.yml"),
    },
];

/// Looks a template up by name.
pub fn template(name: &str) -> Option<&'static Template> {
    TEMPLATES.iter().find(|t| t.name == name)
}
