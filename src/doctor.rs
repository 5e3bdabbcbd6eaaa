//! `orch doctor`: checks what orch needs on this machine and says what to fix.
//!
//! Each check prints one line, `ok`, `warn` or `FAIL`, its subject, what was found and, when
//! it is not `ok`, a hint. The exit code is 0 when nothing failed (warnings included), 3
//! (infrastructure) otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::error::exit;

/// The local images the README's examples, the shipped pipelines and the tests use.
pub const IMAGES: [&str; 2] = ["busybox:latest", "debian:bookworm"];

/// Under this much free space in the cache (or data) directory, disk space is a warning.
pub const LOW_DISK: u64 = 5 * 1024 * 1024 * 1024;

/// How long the Docker daemon gets to answer.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// One check's outcome.
#[derive(Debug, Clone)]
pub struct Check {
    pub status: Status,
    pub subject: String,
    pub detail: String,
    pub hint: Option<String>,
}

impl Check {
    fn ok(subject: impl Into<String>, detail: impl Into<String>) -> Self {
        Check { status: Status::Ok, subject: subject.into(), detail: detail.into(), hint: None }
    }
    fn warn(subject: impl Into<String>, detail: impl Into<String>, hint: impl Into<String>) -> Self {
        Check { status: Status::Warn, subject: subject.into(), detail: detail.into(), hint: Some(hint.into()) }
    }
    fn fail(subject: impl Into<String>, detail: impl Into<String>, hint: impl Into<String>) -> Self {
        Check { status: Status::Fail, subject: subject.into(), detail: detail.into(), hint: Some(hint.into()) }
    }

    /// `STATUS  subject: detail — hint`, the status padded so subjects line up.
    pub fn line(&self) -> String {
        let mut s = format!("{:<4}  {}: {}", self.status.label(), self.subject, self.detail);
        if let Some(h) = &self.hint {
            s.push_str(" — ");
            s.push_str(h);
        }
        s
    }
}

/// Runs every check and prints a line per check; returns the exit code.
pub async fn run(cache_dir: Option<PathBuf>, serve: &crate::server::config::ServeArgs) -> u8 {
    let mut checks = Vec::new();
    checks.extend(docker_checks().await);
    let cache_dir = cache_dir.unwrap_or_else(crate::cache::default_dir);
    checks.push(writable(&cache_dir));
    checks.push(disk_space("cache dir", &cache_dir));
    checks.push(git());
    checks.push(firewall());
    checks.extend(serve_config(serve));
    for c in &checks {
        println!("{}", c.line());
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    let warned = checks.iter().filter(|c| c.status == Status::Warn).count();
    eprintln!(
        "doctor: {} checks, {failed} failed, {warned} warning{}",
        checks.len(),
        if warned == 1 { "" } else { "s" }
    );
    if failed > 0 { exit::INFRA } else { exit::SUCCESS }
}

/// The daemon answers (and its version), then each image of [`IMAGES`] exists locally.
async fn docker_checks() -> Vec<Check> {
    let backend = match tokio::time::timeout(DOCKER_TIMEOUT, crate::exec::docker::DockerBackend::connect()).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return docker_unreachable(&e.to_string()),
        Err(_) => return docker_unreachable(&format!("no answer in {}s", DOCKER_TIMEOUT.as_secs())),
    };
    let mut out = Vec::new();
    match backend.client().version().await {
        Ok(v) => out.push(Check::ok(
            "docker",
            format!(
                "daemon answers (Docker {}, API {})",
                v.version.as_deref().unwrap_or("?"),
                v.api_version.as_deref().unwrap_or("?")
            ),
        )),
        Err(e) => {
            out.push(Check::warn("docker", format!("daemon answers, but not its version: {e}"), "check DOCKER_HOST"))
        }
    }
    for image in IMAGES {
        out.push(match backend.has_image(image).await {
            Ok(true) => Check::ok(format!("image {image}"), "present"),
            Ok(false) => Check::fail(
                format!("image {image}"),
                "missing (orch never pulls)",
                "build it with runners/images/build, or `docker pull` it where a registry is reachable",
            ),
            Err(e) => Check::fail(format!("image {image}"), format!("cannot inspect: {e}"), "check the Docker daemon"),
        });
    }
    out
}

fn docker_unreachable(detail: &str) -> Vec<Check> {
    let mut out = vec![Check::fail(
        "docker",
        format!("the daemon does not answer: {detail}"),
        "start Docker (`sudo systemctl start docker`), check DOCKER_HOST, and that you may use the socket (group `docker`)",
    )];
    for image in IMAGES {
        out.push(Check::warn(format!("image {image}"), "not checked", "Docker must answer first"));
    }
    out
}

/// The cache directory exists (or can be created) and a file can be written in it.
fn writable(dir: &Path) -> Check {
    let subject = "cache dir";
    if let Err(e) = std::fs::create_dir_all(dir) {
        return Check::fail(
            subject,
            format!("cannot create {}: {e}", dir.display()),
            "set ORCH_CACHE_DIR (or --cache-dir) to a directory you can write",
        );
    }
    match tempfile::Builder::new().prefix(".orch-doctor-").tempfile_in(dir) {
        Ok(_) => Check::ok(subject, format!("{} is writable", dir.display())),
        Err(e) => Check::fail(
            subject,
            format!("cannot write in {}: {e}", dir.display()),
            "fix its permissions, or set ORCH_CACHE_DIR (or --cache-dir) to a directory you can write",
        ),
    }
}

/// Free space on the file system of `dir` (or its nearest existing ancestor), by `df -Pk`.
fn disk_space(subject: &str, dir: &Path) -> Check {
    let existing = dir.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    let out = match Command::new("df").arg("-Pk").arg(existing).output() {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            return Check::warn(
                format!("{subject} disk"),
                format!("`df -Pk {}` failed: {}", existing.display(), String::from_utf8_lossy(&o.stderr).trim()),
                "check the free space by hand",
            );
        }
        Err(e) => {
            return Check::warn(
                format!("{subject} disk"),
                format!("cannot run df: {e}"),
                "check the free space by hand",
            );
        }
    };
    match parse_df_available(&String::from_utf8_lossy(&out.stdout)) {
        Some(free) if free < LOW_DISK => Check::warn(
            format!("{subject} disk"),
            format!("{} free on {}", crate::fmt::size(free), existing.display()),
            "under 5 GiB: free space (`orch cache clear`, `docker system prune`) or move ORCH_CACHE_DIR / ORCH_DATA_DIR",
        ),
        Some(free) => {
            Check::ok(format!("{subject} disk"), format!("{} free on {}", crate::fmt::size(free), existing.display()))
        }
        None => Check::warn(format!("{subject} disk"), "cannot read df's output", "check the free space by hand"),
    }
}

/// The bytes available from POSIX `df -Pk` output: the 4th field of the second line, in KiB.
pub fn parse_df_available(text: &str) -> Option<u64> {
    let line = text.lines().nth(1)?;
    // A long device name does not wrap with -P; the fields are whitespace separated.
    let kib: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// git is on PATH (orch ci reads the checkout with it; scripts and the tests use it).
fn git() -> Check {
    match Command::new("git").arg("--version").output() {
        Ok(o) if o.status.success() => Check::ok("git", String::from_utf8_lossy(&o.stdout).trim().to_string()),
        _ => Check::fail("git", "not found on PATH", "install git (`sudo apt-get install git`)"),
    }
}

/// When a server config is given (a config file or a webhook secret), it resolves as
/// `orch serve` would resolve it, and its data directory has room.
/// Whether steps are kept from this host's services: the firewall rule is in place (put
/// there, idempotently, as `orch ci` and `orch serve` would).
fn firewall() -> Check {
    match crate::exec::firewall::ensure() {
        Ok(()) => Check::ok("firewall", "steps cannot open connections to this host's services"),
        Err(e) => Check::warn(
            "firewall",
            format!("steps can reach this host's services: {e}"),
            "run orch as root (orch serve refuses to start otherwise), or allow it with --step-host-access; see docs/security.md",
        ),
    }
}

fn serve_config(args: &crate::server::config::ServeArgs) -> Vec<Check> {
    if args.config.is_none() && args.webhook_secret.is_none() {
        return Vec::new();
    }
    match args.resolve() {
        Ok(cfg) => vec![
            Check::ok(
                "serve config",
                format!(
                    "resolves (listen {}, data dir {}, repositories: {})",
                    cfg.listen,
                    cfg.data_dir.display(),
                    if cfg.allow_repos.is_empty() { "any signed".to_string() } else { cfg.allow_repos.join(", ") }
                ),
            ),
            disk_space("data dir", &cfg.data_dir),
            match crate::server::db::probe(&cfg.database) {
                Ok(what) => Check::ok("database", what),
                Err(e) => Check::fail(
                    "database",
                    format!("{}: {e}", cfg.database.display()),
                    "check ORCH_DATABASE (postgres://USER[:PASSWORD]@HOST:PORT/DB) and that PostgreSQL listens there",
                ),
            },
        ],
        Err(e) => {
            vec![Check::fail("serve config", e.to_string(), "fix the setting named; docs/server.md lists them all")]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn df_output_is_parsed() {
        let text = "Filesystem     1024-blocks      Used Available Capacity Mounted on\n\
                    /dev/sda1        102400000  50000000  52400000      49% /\n";
        assert_eq!(parse_df_available(text), Some(52_400_000 * 1024));
        assert_eq!(parse_df_available("Filesystem\n"), None);
        assert_eq!(parse_df_available(""), None);
    }

    #[test]
    fn lines_carry_status_and_hint() {
        assert_eq!(Check::ok("git", "git version 2.39").line(), "ok    git: git version 2.39");
        assert_eq!(Check::fail("x", "broken", "fix it").line(), "FAIL  x: broken — fix it");
        assert_eq!(Check::warn("x", "low", "clean").line(), "warn  x: low — clean");
    }

    #[test]
    fn a_missing_secret_fails_the_serve_check() {
        let args = crate::server::config::ServeArgs {
            config: Some(PathBuf::from("/nonexistent/orch.yml")),
            ..Default::default()
        };
        let checks = serve_config(&args);
        assert_eq!(checks[0].status, Status::Fail, "{checks:?}");
        assert!(serve_config(&Default::default()).is_empty());
    }
}
