//! What `tests/serve.rs` drives `orch serve` with, all on loopback and all real:
//!
//! - [`GitServer`]: a bare repository served by `git daemon` (git:// protocol, shallow
//!   fetches and fetch-by-SHA work as on GitHub), and by [`GitHttp`] over smart HTTP with
//!   `git http-backend`, asking for credentials as GitHub does for a private repository;
//! - [`FakeGitHub`]: an axum server answering the REST calls orch makes, recording every
//!   request and checking its body against the request schema of that operation in GitHub's
//!   OpenAPI description (`shared/fixtures/github/openapi-subset.json`) with the small
//!   validator in [`schema`]; a request GitHub would refuse is recorded as a violation and
//!   answered 422 (or 401, 404) as GitHub does;
//! - webhook deliveries built from GitHub's own example payloads
//!   (`shared/fixtures/github/payloads/`), pointed at the test repository and signed as
//!   GitHub signs them;
//! - [`Orch`]: the server in this process (`orch::server::serve_on`) on its own runtime
//!   thread, and [`OrchProcess`]: the `orch serve` binary, for kill -9 and restart.
//!
//! HTTP to the server is a small blocking HTTP/1.1 client over `TcpStream` (no client
//! dependency is needed for a handful of requests).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// The repository every delivery is about.
pub const REPO: &str = "acme/hello";
pub const CLONE_URL: &str = "https://github.com/acme/hello.git";
pub const SECRET: &str = "It's a Secret to Everybody";
pub const TOKEN: &str = "ghp_test_token_0123456789";
pub const ZERO_SHA: &str = "0000000000000000000000000000000000000000";
/// How long one run may take before a test gives up on it.
pub const RUN_LIMIT: Duration = Duration::from_secs(120);
pub const TERMINAL: &[&str] = &["success", "failure", "error", "cancelled", "skipped"];

// ---------------------------------------------------------------------------------------
// Small things

/// Whether the Docker tests are switched on.
pub fn docker_enabled() -> bool {
    std::env::var("ORCH_DOCKER_TESTS").is_ok_and(|v| v == "1")
}

/// Returns from the test (which then counts as passed) unless `ORCH_DOCKER_TESTS=1`.
#[allow(unused_macros)] // not every test binary that shares this module needs it
macro_rules! require_docker {
    () => {
        if !$crate::serve_support::docker_enabled() {
            eprintln!("skipped: Docker tests run only with ORCH_DOCKER_TESTS=1 (scripts/test sets it)");
            return;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use require_docker;

/// Logs of in-process servers on stderr with `ORCH_TEST_LOG=info` (or any filter).
pub fn init_tracing() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("ORCH_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
    });
}

/// Polls `f` until it gives `Ok`, with a growing pause; panics with its last `Err` (the state
/// seen) after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        match f() {
            Ok(v) => return v,
            Err(state) if start.elapsed() > timeout => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen:\n{state}")
            }
            Err(_) => {}
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// A port nothing listens on right now (the caller binds it soon after; callers retry).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind a free port").port()
}

/// A GUID-shaped delivery id, unique in this process and across processes.
pub fn new_guid() -> String {
    use sha2::Digest;
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let seed = format!("{}-{}-{nanos}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
    let h = hex::encode(sha2::Sha256::digest(seed.as_bytes()));
    format!("{}-{}-4{}-8{}-{}", &h[0..8], &h[8..12], &h[13..16], &h[17..20], &h[20..32])
}

pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().expect("temp dir")
}

/// `shared/fixtures/github`: beside the repository (`../shared`, as in the workspace and
/// in CI clones), or in a folder above it.
pub fn fixtures_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut tried = Vec::new();
    for base in manifest.ancestors().skip(1) {
        let dir = base.join("shared/fixtures/github");
        if dir.join("openapi-subset.json").is_file() {
            return dir;
        }
        tried.push(dir);
    }
    panic!("GitHub fixtures not found; looked in {tried:#?}");
}

// ---------------------------------------------------------------------------------------
// HTTP/1.1 client

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Parses a response once it is complete (`eof`: the server closed the connection).
fn parse_response(buf: &[u8], eof: bool) -> Option<HttpResponse> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &buf[end + 4..];
    let get = |k: &str| headers.iter().find(|(h, _)| h == k).map(|(_, v)| v.clone());
    let body = if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let line_end = rest[at..].windows(2).position(|w| w == b"\r\n")? + at;
            let size = usize::from_str_radix(std::str::from_utf8(&rest[at..line_end]).ok()?.trim(), 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                break;
            }
            if rest.len() < at + size + 2 {
                return None;
            }
            out.extend_from_slice(&rest[at..at + size]);
            at += size + 2;
        }
        out
    } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if rest.len() < len {
            return None;
        }
        rest[..len].to_vec()
    } else if eof {
        rest.to_vec()
    } else {
        return None;
    };
    Some(HttpResponse { status, headers, body })
}

/// One request on a fresh connection. The body is written by a second thread, so a
/// server that answers before reading it all (413) is heard.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    let writer = if body.len() <= 64 * 1024 {
        s.write_all(body)?;
        None
    } else {
        let mut w = s.try_clone()?;
        let body = body.to_vec();
        Some(std::thread::spawn(move || {
            let _ = w.write_all(&body);
        }))
    };
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let result = loop {
        match s.read(&mut chunk) {
            Ok(0) => {
                break parse_response(&buf, true)
                    .ok_or_else(|| std::io::Error::other(format!("incomplete response: {buf:?}")));
            }
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if let Some(r) = parse_response(&buf, false) {
                    break Ok(r);
                }
            }
            // A signal (a child process ending) interrupts a read with a timeout: read on.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break parse_response(&buf, true).ok_or(e),
        }
    };
    let _ = s.shutdown(std::net::Shutdown::Both);
    if let Some(w) = writer {
        let _ = w.join();
    }
    result
}

// ---------------------------------------------------------------------------------------
// git

fn git(dir: &Path, args: &[&str]) -> String {
    try_git(dir, args).unwrap_or_else(|e| panic!("{e}"))
}

fn try_git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"])
        .args(args)
        .output()
        .expect("git runs");
    if !out.status.success() {
        return Err(format!("git {args:?} in {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A bare repository `acme/hello.git` served by `git daemon` on loopback, and a work
/// repository next to it where the tests make commits.
pub struct GitServer {
    dir: tempfile::TempDir,
    pub bare: PathBuf,
    work: PathBuf,
    pub port: u16,
    daemon: Child,
}

impl GitServer {
    pub fn start() -> GitServer {
        let dir = temp_dir("orch-serve-git-");
        let base = dir.path().join("srv");
        let bare = base.join("acme/hello.git");
        std::fs::create_dir_all(&bare).unwrap();
        git(&bare, &["init", "-q", "--bare", "-b", "main"]);
        // As github.com: a commit the ref moved away from can still be fetched by its SHA.
        git(&bare, &["config", "uploadpack.allowReachableSHA1InWant", "true"]);
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        let mut last = String::new();
        // `git daemon` would run `git-daemon` as a child of its own, which killing `git` leaves
        // behind: run the daemon itself.
        let exec_path = git(&work, &["--exec-path"]);
        let binary = Path::new(&exec_path).join("git-daemon");
        assert!(binary.is_file(), "no git-daemon in {exec_path}");
        for _ in 0..5 {
            let port = free_port();
            let mut daemon = Command::new(&binary)
                .arg(format!("--base-path={}", base.display()))
                .args(["--export-all", "--reuseaddr", "--informative-errors", "--listen=127.0.0.1"])
                .arg(format!("--port={port}"))
                .arg(&base)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("git daemon starts");
            let up = Instant::now();
            loop {
                if let Ok(Some(status)) = daemon.try_wait() {
                    let mut err = String::new();
                    if let Some(mut e) = daemon.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    last = format!("git daemon on port {port} exited ({status}): {err}");
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    // What answered may be another test's listener that took the port between
                    // `free_port` and the daemon's bind (the daemon then exits): the daemon is
                    // up only when it is still running and serves the (still empty) repository.
                    let url = format!("git://127.0.0.1:{port}/{REPO}.git");
                    let served = try_git(&work, &["ls-remote", &url]);
                    match (served, daemon.try_wait()) {
                        (Ok(_), Ok(None)) => {
                            // Its stderr is not read from here on: let it go nowhere.
                            drop(daemon.stderr.take());
                            return GitServer { dir, bare, work, port, daemon };
                        }
                        (served, _) => {
                            let _ = daemon.kill();
                            let _ = daemon.wait();
                            last = format!("git daemon on port {port} did not serve: {served:?}");
                            break;
                        }
                    }
                }
                if up.elapsed() > Duration::from_secs(10) {
                    let _ = daemon.kill();
                    let _ = daemon.wait();
                    last = format!("git daemon on port {port} did not answer");
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("cannot start git daemon: {last}");
    }

    /// The repository's git:// URL.
    pub fn url(&self) -> String {
        format!("git://127.0.0.1:{}/{REPO}.git", self.port)
    }

    /// The clone-URL rewrite that sends GitHub clone URLs here.
    pub fn rewrite(&self) -> String {
        format!("https://github.com/=git://127.0.0.1:{}/", self.port)
    }

    /// A commit of `files` over `parent`'s tree (or alone); returns its SHA.
    pub fn commit(&self, parent: Option<&str>, files: &[(&str, &str)], message: &str) -> String {
        self.commit_with_links(parent, files, &[], message)
    }

    /// As [`commit`](Self::commit), with symbolic links `(path, target)` too.
    pub fn commit_with_links(
        &self,
        parent: Option<&str>,
        files: &[(&str, &str)],
        links: &[(&str, &str)],
        message: &str,
    ) -> String {
        match parent {
            Some(p) => {
                git(&self.work, &["checkout", "-q", "-f", "--detach", p]);
            }
            None => {
                git(&self.work, &["checkout", "-q", "-f", "--orphan", &format!("root-{}", new_guid())]);
                let _ = Command::new("git").current_dir(&self.work).args(["rm", "-rfq", "."]).output();
                git(&self.work, &["clean", "-fdxq"]);
            }
        }
        for (path, content) in files {
            let p = self.work.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, content).unwrap();
        }
        for (path, target) in links {
            let p = self.work.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            let _ = std::fs::remove_file(&p);
            std::os::unix::fs::symlink(target, &p).unwrap();
        }
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "--allow-empty", "-m", message]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// A root commit of `files` that `branch` points at; its SHA.
    pub fn on_branch(&self, branch: &str, files: &[(&str, &str)], message: &str) -> String {
        let sha = self.commit(None, files, message);
        self.set_ref(&sha, &format!("refs/heads/{branch}"));
        sha
    }

    /// Points `refname` of the served repository at `sha` (a push, forced).
    pub fn set_ref(&self, sha: &str, refname: &str) {
        git(&self.work, &["push", "-q", "-f", self.bare.to_str().unwrap(), &format!("{sha}:{refname}")]);
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

impl GitServer {
    /// The same repositories over smart HTTP (`git http-backend`), private: a request
    /// without Basic credentials whose password `accept` takes is answered 401, as GitHub
    /// answers for a private repository.
    pub fn http(&self, accept: impl Fn(&str) -> bool + Send + Sync + 'static) -> GitHttp {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let root = self.bare.parent().unwrap().parent().unwrap().to_path_buf();
        let backend = Path::new(&git(&self.work, &["--exec-path"])).join("git-http-backend");
        assert!(backend.is_file(), "no git-http-backend beside git");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let accept = Arc::new(accept);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (root, backend, log, accept) = (root.clone(), backend.clone(), log.clone(), accept.clone());
                std::thread::spawn(move || {
                    let _ = serve_git_http(conn, &root, &backend, &log, &*accept);
                });
            }
        });
        GitHttp { port, seen }
    }
}

/// Every request a [`GitHttp`] got: (path and query, the password it carried).
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A smart-HTTP git server (see [`GitServer::http`]).
pub struct GitHttp {
    pub port: u16,
    seen: Seen,
}

impl GitHttp {
    /// The clone-URL rewrite that sends GitHub's URLs here.
    pub fn rewrite(&self) -> String {
        format!("https://github.com/=http://127.0.0.1:{}/", self.port)
    }

    pub fn requests(&self) -> Vec<(String, Option<String>)> {
        self.seen.lock().unwrap().clone()
    }
}

/// One request, answered by `git http-backend` (CGI) once its credentials pass.
fn serve_git_http(
    mut conn: TcpStream,
    root: &Path,
    backend: &Path,
    log: &Mutex<Vec<(String, Option<String>)>>,
    accept: &(dyn Fn(&str) -> bool + Send + Sync),
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = match conn.read(&mut chunk) {
            // A signal (a child process ending) interrupts a read with a timeout: read on.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => other?,
        };
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let (method, target) = (first.next().unwrap_or("GET").to_string(), first.next().unwrap_or("/").to_string());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let get = |k: &str| headers.iter().find(|(h, _)| h == k).map(|(_, v)| v.clone());
    let mut rest = buf[head_end + 4..].to_vec();
    let body = if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut out = Vec::new();
        loop {
            let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
                let n = conn.read(&mut chunk)?;
                if n == 0 {
                    return Ok(());
                }
                rest.extend_from_slice(&chunk[..n]);
                continue;
            };
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..line_end]).trim(), 16).unwrap_or(0);
            while rest.len() < line_end + 2 + size + 2 {
                let n = conn.read(&mut chunk)?;
                if n == 0 {
                    return Ok(());
                }
                rest.extend_from_slice(&chunk[..n]);
            }
            out.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
            rest.drain(..line_end + 2 + size + 2);
            if size == 0 {
                break out;
            }
        }
    } else {
        let len: usize = get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        while rest.len() < len {
            let n = conn.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        rest
    };
    let password = get("authorization")
        .and_then(|a| a.strip_prefix("Basic ").and_then(b64url_decode))
        .and_then(|d| String::from_utf8(d).ok())
        .and_then(|d| d.split_once(':').map(|(_, p)| p.to_string()));
    log.lock().unwrap().push((target.clone(), password.clone()));
    if !password.as_deref().is_some_and(accept) {
        let answer = "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"GitHub\"\r\n\
                      Content-Length: 0\r\nConnection: close\r\n\r\n";
        return conn.write_all(answer.as_bytes());
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut cgi = Command::new(backend)
        .env_clear()
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", get("content-type").unwrap_or_default())
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_USER", "x-access-token")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("GIT_PROTOCOL", get("git-protocol").unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdin = cgi.stdin.take().expect("piped");
    let writer = std::thread::spawn(move || stdin.write_all(&body));
    let out = cgi.wait_with_output()?;
    let _ = writer.join();
    let split = out.stdout.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    let split = split.or_else(|| out.stdout.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((end, sep)) = split else {
        return conn.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    };
    let cgi_head = String::from_utf8_lossy(&out.stdout[..end]).into_owned();
    let mut status = "200 OK".to_string();
    let mut answer = String::new();
    for line in cgi_head.lines() {
        match line.split_once(':') {
            Some((k, v)) if k.eq_ignore_ascii_case("status") => status = v.trim().to_string(),
            Some(_) => answer.push_str(&format!("{line}\r\n")),
            None => {}
        }
    }
    let body = &out.stdout[end + sep..];
    let head = format!("HTTP/1.1 {status}\r\n{answer}Content-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    conn.write_all(head.as_bytes())?;
    conn.write_all(body)
}

// ---------------------------------------------------------------------------------------
// A JSON Schema validator for the constructs GitHub's request schemas use

pub mod schema {
    use serde_json::Value;

    /// Keywords checked.
    pub const CHECKED: &[&str] = &[
        "type",
        "nullable",
        "required",
        "properties",
        "additionalProperties",
        "enum",
        "const",
        "maxLength",
        "minLength",
        "maxItems",
        "minItems",
        "items",
        "anyOf",
        "oneOf",
        "allOf",
        "not",
        "format",
        "$ref",
        "minimum",
        "maximum",
    ];
    /// Keywords that only describe.
    pub const DESCRIBING: &[&str] =
        &["description", "default", "example", "examples", "title", "deprecated", "readOnly"];

    /// The keywords of `schema` (and its subschemas) this validator does not know.
    pub fn unsupported(schema: &Value) -> Vec<String> {
        let mut out = Vec::new();
        walk(schema, "$", &mut out);
        out
    }

    fn walk(s: &Value, at: &str, out: &mut Vec<String>) {
        let Some(o) = s.as_object() else { return };
        for (k, v) in o {
            match k.as_str() {
                "properties" => {
                    for (name, sub) in v.as_object().into_iter().flatten() {
                        walk(sub, &format!("{at}.{name}"), out);
                    }
                }
                "items" | "additionalProperties" | "not" => walk(v, &format!("{at}/{k}"), out),
                "anyOf" | "oneOf" | "allOf" => {
                    for (i, sub) in v.as_array().into_iter().flatten().enumerate() {
                        walk(sub, &format!("{at}/{k}[{i}]"), out);
                    }
                }
                "format" => {
                    if !matches!(v.as_str(), Some("date-time" | "uri" | "email" | "int64" | "int32")) {
                        out.push(format!("{at}: format {v}"));
                    }
                }
                k if CHECKED.contains(&k) || DESCRIBING.contains(&k) || k.starts_with("x-") => {}
                other => out.push(format!("{at}: keyword `{other}`")),
            }
        }
    }

    /// Problems of `v` under `schema` (`root` resolves `$ref`s). `strict` also reports
    /// properties the schema does not list (GitHub ignores them: a misspelt field is lost).
    pub fn validate(root: &Value, schema: &Value, v: &Value, strict: bool) -> Vec<String> {
        let mut errs = Vec::new();
        check(root, schema, v, "body", strict, &mut errs);
        errs
    }

    fn kind(v: &Value) -> &'static str {
        match v {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    fn type_matches(t: &str, v: &Value) -> bool {
        match t {
            "number" => v.is_number(),
            "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
            other => kind(v) == other,
        }
    }

    /// RFC 3339 / ISO 8601 `YYYY-MM-DDTHH:MM:SS[.fff](Z|±HH:MM)`, loosely.
    pub fn is_date_time(s: &str) -> bool {
        let b = s.as_bytes();
        let digits = |r: std::ops::Range<usize>| r.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
        if b.len() < 20
            || !(digits(0..4) && b[4] == b'-' && digits(5..7) && b[7] == b'-' && digits(8..10))
            || !matches!(b[10], b'T' | b't')
            || !(digits(11..13) && b[13] == b':' && digits(14..16) && b[16] == b':' && digits(17..19))
        {
            return false;
        }
        let mut i = 19;
        if b[i] == b'.' {
            i += 1;
            let start = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == start {
                return false;
            }
        }
        match &b[i..] {
            [b'Z' | b'z'] => true,
            [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()),
            _ => false,
        }
    }

    fn check(root: &Value, s: &Value, v: &Value, at: &str, strict: bool, errs: &mut Vec<String>) {
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            let target = r
                .strip_prefix('#')
                .and_then(|p| root.pointer(p))
                .unwrap_or_else(|| panic!("{at}: cannot resolve $ref {r}"));
            // OpenAPI 3.0: the siblings of a $ref are ignored.
            return check(root, target, v, at, strict, errs);
        }
        if v.is_null() && s.get("nullable").and_then(Value::as_bool) == Some(true) {
            return;
        }
        if let Some(t) = s.get("type") {
            let types: Vec<&str> = match t {
                Value::String(t) => vec![t.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            if !types.iter().any(|t| type_matches(t, v)) {
                errs.push(format!("{at}: expected {}, got {}", types.join(" or "), kind(v)));
                return;
            }
        }
        if let Some(options) = s.get("enum").and_then(Value::as_array)
            && !options.contains(v)
        {
            errs.push(format!("{at}: {v} is not one of {}", Value::Array(options.clone())));
        }
        if let Some(c) = s.get("const")
            && c != v
        {
            errs.push(format!("{at}: {v} is not {c}"));
        }
        if let Some(text) = v.as_str() {
            let n = text.chars().count() as u64;
            if let Some(max) = s.get("maxLength").and_then(Value::as_u64)
                && n > max
            {
                errs.push(format!("{at}: {n} characters, more than maxLength {max}"));
            }
            if let Some(min) = s.get("minLength").and_then(Value::as_u64)
                && n < min
            {
                errs.push(format!("{at}: {n} characters, fewer than minLength {min}"));
            }
            if s.get("format").and_then(Value::as_str) == Some("date-time") && !is_date_time(text) {
                errs.push(format!("{at}: `{text}` is not a date-time"));
            }
        }
        if let Some(x) = v.as_f64() {
            if let Some(min) = s.get("minimum").and_then(Value::as_f64)
                && x < min
            {
                errs.push(format!("{at}: {x} is below the minimum {min}"));
            }
            if let Some(max) = s.get("maximum").and_then(Value::as_f64)
                && x > max
            {
                errs.push(format!("{at}: {x} is above the maximum {max}"));
            }
        }
        if let Some(items) = v.as_array() {
            if let Some(max) = s.get("maxItems").and_then(Value::as_u64)
                && items.len() as u64 > max
            {
                errs.push(format!("{at}: {} items, more than maxItems {max}", items.len()));
            }
            if let Some(min) = s.get("minItems").and_then(Value::as_u64)
                && (items.len() as u64) < min
            {
                errs.push(format!("{at}: {} items, fewer than minItems {min}", items.len()));
            }
            if let Some(item) = s.get("items") {
                for (i, x) in items.iter().enumerate() {
                    check(root, item, x, &format!("{at}[{i}]"), strict, errs);
                }
            }
        }
        if let Some(obj) = v.as_object() {
            for r in s.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
                if !obj.contains_key(r) {
                    errs.push(format!("{at}: `{r}` is required"));
                }
            }
            let props = s.get("properties").and_then(Value::as_object);
            for (k, x) in obj {
                let sub = format!("{at}.{k}");
                match (props.and_then(|p| p.get(k)), s.get("additionalProperties")) {
                    (Some(ps), _) => check(root, ps, x, &sub, strict, errs),
                    (None, Some(Value::Bool(false))) => errs.push(format!("{sub}: no such property")),
                    (None, Some(Value::Bool(true))) => {}
                    (None, Some(extra)) => check(root, extra, x, &sub, strict, errs),
                    (None, None) if strict && props.is_some() => {
                        errs.push(format!("{sub}: not a property of this request (GitHub would ignore it)"))
                    }
                    (None, None) => {}
                }
            }
        }
        let branches = |k: &str| s.get(k).and_then(Value::as_array).cloned().unwrap_or_default();
        let any_of = branches("anyOf");
        if !any_of.is_empty() {
            let results: Vec<Vec<String>> = any_of.iter().map(|b| sub_errors(root, b, v, at)).collect();
            if !results.iter().any(Vec::is_empty) {
                errs.push(format!("{at}: matches none of anyOf: {results:?}"));
            }
        }
        let one_of = branches("oneOf");
        if !one_of.is_empty() {
            let results: Vec<Vec<String>> = one_of.iter().map(|b| sub_errors(root, b, v, at)).collect();
            let passing = results.iter().filter(|r| r.is_empty()).count();
            if passing != 1 {
                errs.push(format!("{at}: matches {passing} of oneOf (must be exactly 1): {results:?}"));
            }
        }
        for b in branches("allOf") {
            errs.extend(sub_errors(root, &b, v, at));
        }
        if let Some(not) = s.get("not")
            && sub_errors(root, not, v, at).is_empty()
        {
            errs.push(format!("{at}: matches a schema it must not"));
        }
    }

    fn sub_errors(root: &Value, s: &Value, v: &Value, at: &str) -> Vec<String> {
        let mut e = Vec::new();
        check(root, s, v, at, false, &mut e);
        e
    }
}

/// GitHub's OpenAPI subset: `"METHOD /path/{param}"` -> operation.
pub fn openapi() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let path = fixtures_dir().join("openapi-subset.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let spec: Value = serde_json::from_str(&text).expect("the OpenAPI subset is JSON");
        for (op, def) in spec.as_object().unwrap() {
            if let Some(s) = def.pointer("/requestBody/schema") {
                let bad = schema::unsupported(s);
                assert!(bad.is_empty(), "{op}: the test validator does not support {bad:?}");
            }
        }
        spec
    })
}

/// The operation of the subset a request is, with its path parameters.
pub fn match_operation(method: &str, path: &str) -> Option<(String, HashMap<String, String>)> {
    let segs: Vec<&str> = path.split('/').collect();
    for key in openapi().as_object()?.keys() {
        let Some((m, template)) = key.split_once(' ') else { continue };
        if !m.eq_ignore_ascii_case(method) {
            continue;
        }
        let tsegs: Vec<&str> = template.split('/').collect();
        if tsegs.len() != segs.len() {
            continue;
        }
        let mut params = HashMap::new();
        let ok = tsegs.iter().zip(&segs).all(|(t, s)| match t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
            Some(name) if !s.is_empty() => {
                params.insert(name.to_string(), s.to_string());
                true
            }
            Some(_) => false,
            None => t == s,
        });
        if ok {
            return Some((key.clone(), params));
        }
    }
    None
}

/// What GitHub refuses beyond the schema (documented limits; GITHUB.md section 3).
pub fn github_rules(op: &str, body: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    if op == OP_STATUS
        && let Some(d) = body.get("description").and_then(Value::as_str)
        && d.chars().count() > 140
    {
        errs.push(format!("description is too long (maximum is 140 characters): {} characters", d.chars().count()));
    }
    if op == OP_DEPLOY_STATUS
        && let Some(d) = body.get("description").and_then(Value::as_str)
        && d.chars().count() > 140
    {
        errs.push(format!("description is too long (maximum is 140 characters): {} characters", d.chars().count()));
    }
    if op == OP_CHECK_CREATE || op == OP_CHECK_UPDATE {
        if body.get("conclusion").and_then(Value::as_str) == Some("stale") {
            errs.push("only GitHub may set the conclusion `stale`".into());
        }
        if op == OP_CHECK_CREATE && body.get("completed_at").is_some() && body.get("conclusion").is_none() {
            errs.push("conclusion is required with completed_at".into());
        }
        if op == OP_CHECK_CREATE
            && body.get("status").and_then(Value::as_str) == Some("completed")
            && body.get("conclusion").is_none()
        {
            errs.push("conclusion is required with status completed".into());
        }
        if let Some(t) = body.pointer("/output/title").and_then(Value::as_str)
            && t.chars().count() > 255
        {
            errs.push("output.title is longer than 255 characters".into());
        }
        for (i, a) in body.pointer("/output/annotations").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let at = format!("output.annotations[{i}]");
            if a.get("message").and_then(Value::as_str).is_some_and(|m| m.len() > 64 * 1024) {
                errs.push(format!("{at}.message is larger than 64 KB"));
            }
            if a.get("title").and_then(Value::as_str).is_some_and(|m| m.chars().count() > 255) {
                errs.push(format!("{at}.title is longer than 255 characters"));
            }
            let (s, e) = (a.get("start_line"), a.get("end_line"));
            if (a.get("start_column").is_some() || a.get("end_column").is_some()) && s != e {
                errs.push(format!("{at}: columns are only allowed when start_line == end_line"));
            }
            if s.and_then(Value::as_u64).unwrap_or(0) < 1 {
                errs.push(format!("{at}.start_line must be at least 1"));
            }
        }
    }
    errs
}

// ---------------------------------------------------------------------------------------
// The fake GitHub

pub const OP_STATUS: &str = "POST /repos/{owner}/{repo}/statuses/{sha}";
pub const OP_CHECK_CREATE: &str = "POST /repos/{owner}/{repo}/check-runs";
pub const OP_CHECK_UPDATE: &str = "PATCH /repos/{owner}/{repo}/check-runs/{check_run_id}";
pub const OP_DEPLOY_CREATE: &str = "POST /repos/{owner}/{repo}/deployments";
pub const OP_DEPLOY_STATUS: &str = "POST /repos/{owner}/{repo}/deployments/{deployment_id}/statuses";
pub const OP_INSTALLATION: &str = "GET /repos/{owner}/{repo}/installation";
pub const OP_ACCESS_TOKEN: &str = "POST /app/installations/{installation_id}/access_tokens";

/// A request the fake received, and how it answered.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The operation (`"POST /repos/{owner}/{repo}/statuses/{sha}"`), or `"?"`.
    pub op: String,
    pub method: String,
    pub path: String,
    pub params: HashMap<String, String>,
    pub headers: HashMap<String, String>,
    /// The JSON body (`null` when there was none).
    pub body: Value,
    /// The answer's status code.
    pub status: u16,
    /// When it came.
    pub at: std::time::Instant,
}

/// How the fake authenticates requests, as GitHub would.
#[derive(Debug, Clone)]
pub enum GhAuth {
    /// Every request carries this token (a personal access token).
    Token(String),
    /// A GitHub App: JWT (checked against the public key) for the App endpoints,
    /// installation tokens the fake minted for the rest.
    App { app_id: u64, public_key: PathBuf, installation_id: u64 },
}

#[derive(Default)]
struct GhState {
    requests: Vec<Recorded>,
    violations: Vec<String>,
    /// (operation, how many more to fail, with which code, a secondary rate limit's
    /// `Retry-After` seconds)
    failures: Vec<(String, usize, u16, Option<u64>)>,
    /// The `Retry-After` of the answer being made.
    retry_after: Option<u64>,
    next_id: u64,
    tokens: Vec<String>,
    check_runs: HashMap<u64, Value>,
    /// Deployments as GitHub holds them, by id, each with its `statuses` (oldest first).
    deployments: std::collections::BTreeMap<u64, Value>,
    /// Git's smart HTTP requests go to this port (a [`GitHttp`]), as github.com serves
    /// repositories beside its API.
    git_port: Option<u16>,
}

struct Shared {
    auth: GhAuth,
    state: Mutex<GhState>,
    scratch: tempfile::TempDir,
}

pub struct FakeGitHub {
    pub url: String,
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        } as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn iso_in(secs_from_now: u64) -> String {
    let t = now_secs() + secs_from_now;
    let days = (t / 86_400) as i64;
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let r = t % 86_400;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", r / 3600, r / 60 % 60, r % 60)
}

impl Shared {
    /// Checks an App JWT as GitHub does: RS256, signed by the App's key, `iss` the App id,
    /// `exp` at most 10 minutes ahead.
    fn verify_jwt(&self, jwt: &str, app_id: u64, public_key: &Path) -> Result<(), String> {
        let parts: Vec<&str> = jwt.split('.').collect();
        let [h, c, sig] = parts.as_slice() else { return Err("the bearer token is not a JWT".into()) };
        let decode = |p: &str| -> Result<Value, String> {
            let bytes = b64url_decode(p).ok_or("JWT part is not base64url")?;
            serde_json::from_slice(&bytes).map_err(|e| format!("JWT part is not JSON: {e}"))
        };
        let (header, claims) = (decode(h)?, decode(c)?);
        if header["alg"] != "RS256" {
            return Err(format!("JWT alg must be RS256, got {}", header["alg"]));
        }
        let iss = match &claims["iss"] {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        };
        if iss != Some(app_id) {
            return Err(format!("JWT iss {} is not the App id {app_id}", claims["iss"]));
        }
        let now = now_secs();
        let (iat, exp) = (claims["iat"].as_u64().unwrap_or(0), claims["exp"].as_u64().unwrap_or(0));
        if exp <= now || exp > now + 600 + 5 || iat > now + 5 {
            return Err(format!("JWT times out of range: iat={iat} exp={exp} now={now}"));
        }
        let dir = self.scratch.path();
        let n = new_guid();
        let (data, sigf) = (dir.join(format!("{n}.data")), dir.join(format!("{n}.sig")));
        std::fs::write(&data, format!("{h}.{c}")).map_err(|e| e.to_string())?;
        std::fs::write(&sigf, b64url_decode(sig).ok_or("JWT signature is not base64url")?)
            .map_err(|e| e.to_string())?;
        let out = Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(public_key)
            .arg("-signature")
            .arg(&sigf)
            .arg(&data)
            .output()
            .map_err(|e| format!("openssl: {e}"))?;
        if !out.status.success() {
            return Err(format!("JWT signature does not verify: {}", String::from_utf8_lossy(&out.stdout)));
        }
        Ok(())
    }

    /// The status, the body and a `Retry-After` header's seconds.
    fn answer(
        &self,
        method: &str,
        path: &str,
        headers: HashMap<String, String>,
        raw: &[u8],
    ) -> (u16, Value, Option<u64>) {
        let (op, params) = match_operation(method, path).unwrap_or_else(|| ("?".into(), HashMap::new()));
        let body: Result<Value, String> = if raw.is_empty() {
            Ok(Value::Null)
        } else {
            serde_json::from_slice(raw).map_err(|e| format!("body is not JSON: {e}"))
        };
        let mut st = self.state.lock().unwrap();
        let (status, reply, violation) = self.decide(&mut st, method, path, &op, &params, &headers, body.clone());
        if let Some(v) = violation {
            st.violations.push(format!("{method} {path} -> {status}: {v}\n  body: {}", String::from_utf8_lossy(raw)));
        }
        st.requests.push(Recorded {
            op,
            method: method.into(),
            path: path.into(),
            params,
            headers,
            body: body.unwrap_or(Value::Null),
            status,
            at: std::time::Instant::now(),
        });
        (status, reply, st.retry_after.take())
    }

    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        st: &mut GhState,
        method: &str,
        path: &str,
        op: &str,
        params: &HashMap<String, String>,
        headers: &HashMap<String, String>,
        body: Result<Value, String>,
    ) -> (u16, Value, Option<String>) {
        let error = |code: u16, msg: &str| json!({ "message": msg, "documentation_url": "https://docs.github.com/rest", "status": code.to_string() });
        if op == "?" {
            let m = format!("orch called {method} {path}, not an operation it should use");
            return (404, error(404, "Not Found"), Some(m));
        }
        let body = match body {
            Ok(b) => b,
            Err(e) => return (400, error(400, "Problems parsing JSON"), Some(e)),
        };
        if !body.is_null() && !headers.get("content-type").is_some_and(|c| c.starts_with("application/json")) {
            let m = format!("content-type {:?} is not application/json", headers.get("content-type"));
            return (415, error(415, "Unsupported Media Type"), Some(m));
        }
        // Authentication, as GitHub checks it.
        let bearer = headers
            .get("authorization")
            .and_then(|a| a.strip_prefix("Bearer ").or_else(|| a.strip_prefix("token ")))
            .unwrap_or("");
        let auth = match &self.auth {
            GhAuth::Token(t) if bearer == t => Ok(()),
            GhAuth::Token(_) => {
                Err(format!("expected the token, got authorization {:?}", headers.get("authorization")))
            }
            GhAuth::App { app_id, public_key, installation_id } => {
                if op == OP_INSTALLATION || op == OP_ACCESS_TOKEN {
                    let jwt = self.verify_jwt(bearer, *app_id, public_key);
                    match (jwt, params.get("installation_id")) {
                        (Err(e), _) => Err(e),
                        (Ok(()), Some(id)) if *id != installation_id.to_string() => {
                            return (404, error(404, "Not Found"), Some(format!("no installation {id}")));
                        }
                        (Ok(()), _) => Ok(()),
                    }
                } else if st.tokens.iter().any(|t| t == bearer) {
                    Ok(())
                } else {
                    Err(format!("expected an installation token, got authorization {:?}", headers.get("authorization")))
                }
            }
        };
        if let Err(e) = auth {
            return (401, error(401, "Bad credentials"), Some(e));
        }
        if params.get("owner").zip(params.get("repo")).is_some_and(|(o, r)| format!("{o}/{r}") != REPO) {
            return (404, error(404, "Not Found"), Some(format!("not the test repository: {path}")));
        }
        // The request body against the operation's schema, and GitHub's documented limits.
        let spec = openapi();
        let request_body = spec[op].get("requestBody").filter(|b| !b.is_null());
        let mut problems = Vec::new();
        match (request_body, body.is_null()) {
            (None, false) => problems.push("this operation takes no body".to_string()),
            (Some(rb), true) if rb["required"] == true => problems.push("the body is required".into()),
            (Some(rb), false) => problems.extend(schema::validate(spec, &rb["schema"], &body, true)),
            _ => {}
        }
        problems.extend(github_rules(op, &body));
        if op == OP_STATUS && (params["sha"].len() != 40 || !params["sha"].chars().all(|c| c.is_ascii_hexdigit())) {
            problems.push(format!("`{}` is not a commit SHA", params["sha"]));
        }
        if !problems.is_empty() {
            return (422, error(422, "Validation Failed"), Some(problems.join("; ")));
        }
        if op == OP_DEPLOY_STATUS {
            let id: u64 = params["deployment_id"].parse().unwrap_or(0);
            if !st.deployments.contains_key(&id) {
                return (404, error(404, "Not Found"), Some(format!("no deployment {id}")));
            }
        }
        if op == OP_CHECK_UPDATE {
            let id: u64 = params["check_run_id"].parse().unwrap_or(0);
            if !st.check_runs.contains_key(&id) {
                return (404, error(404, "Not Found"), Some(format!("no check run {id}")));
            }
        }
        // A scripted failure?
        if let Some(f) = st.failures.iter_mut().find(|(o, n, _, _)| o == op && *n > 0) {
            f.1 -= 1;
            let (code, retry_after) = (f.2, f.3);
            if let Some(secs) = retry_after {
                st.retry_after = Some(secs);
                // GitHub's words for it.
                let m = "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.";
                return (code, error(code, m), None);
            }
            return (code, error(code, "Server Error"), None);
        }
        st.next_id += 1;
        let id = st.next_id;
        let now = iso_in(0);
        match op {
            OP_STATUS => (
                201,
                json!({
                    "url": format!("https://api.github.com/repos/{REPO}/statuses/{}", params["sha"]),
                    "id": id, "node_id": format!("SC_{id}"), "state": body["state"],
                    "description": body.get("description").cloned().unwrap_or(Value::Null),
                    "target_url": body.get("target_url").cloned().unwrap_or(Value::Null),
                    "context": body.get("context").cloned().unwrap_or(json!("default")),
                    "created_at": now, "updated_at": now,
                }),
                None,
            ),
            OP_CHECK_CREATE => {
                let mut run = body.clone();
                run["id"] = json!(id);
                run["node_id"] = json!(format!("CR_{id}"));
                if run.get("status").is_none() {
                    run["status"] = json!("queued");
                }
                st.check_runs.insert(id, run.clone());
                (201, run, None)
            }
            OP_CHECK_UPDATE => {
                let id: u64 = params["check_run_id"].parse().unwrap_or(0);
                let run = st.check_runs.get_mut(&id).unwrap();
                for (k, v) in body.as_object().into_iter().flatten() {
                    run[k] = v.clone();
                }
                if body.get("conclusion").is_some() {
                    run["status"] = json!("completed");
                }
                (200, run.clone(), None)
            }
            OP_DEPLOY_CREATE => {
                let mut d = body.clone();
                d["id"] = json!(id);
                d["node_id"] = json!(format!("DE_{id}"));
                d["sha"] = body["ref"].clone();
                d["created_at"] = json!(now);
                d["statuses"] = json!([]);
                st.deployments.insert(id, d.clone());
                if let Some(o) = d.as_object_mut() {
                    o.remove("statuses");
                }
                (201, d, None)
            }
            OP_DEPLOY_STATUS => {
                let dep: u64 = params["deployment_id"].parse().unwrap_or(0);
                let mut status = body.clone();
                status["id"] = json!(id);
                status["created_at"] = json!(now);
                if let Some(list) = st.deployments.get_mut(&dep).and_then(|d| d["statuses"].as_array_mut()) {
                    list.push(status.clone());
                }
                (201, status, None)
            }
            OP_ACCESS_TOKEN => {
                let token = format!("ghs_{}", new_guid().replace('-', ""));
                st.tokens.push(token.clone());
                (
                    201,
                    json!({
                        "token": token, "expires_at": iso_in(3600),
                        "permissions": { "checks": "write", "contents": "read", "metadata": "read" },
                        "repository_selection": "all",
                    }),
                    None,
                )
            }
            OP_INSTALLATION => {
                let (inst, app) = match &self.auth {
                    GhAuth::App { installation_id, app_id, .. } => (*installation_id, *app_id),
                    GhAuth::Token(_) => (1, 1),
                };
                (
                    200,
                    json!({
                        "id": inst, "app_id": app, "target_type": "Organization",
                        "account": { "login": "acme", "id": 1, "type": "Organization" },
                        "repository_selection": "all", "permissions": { "checks": "write" },
                        "events": ["push", "pull_request", "check_run", "check_suite"],
                        "created_at": now, "updated_at": now,
                    }),
                    None,
                )
            }
            other => (404, error(404, "Not Found"), Some(format!("the fake does not answer {other}"))),
        }
    }
}

impl FakeGitHub {
    pub fn start(auth: GhAuth) -> FakeGitHub {
        FakeGitHub::start_on(auth, 0)
    }

    /// The fake on loopback port `port` (0: any free one).
    pub fn start_on(auth: GhAuth, port: u16) -> FakeGitHub {
        use axum::extract::{DefaultBodyLimit, State};
        use axum::http::{HeaderMap, Method, StatusCode, Uri};
        use axum::response::IntoResponse;

        openapi();
        let shared =
            Arc::new(Shared { auth, state: Mutex::new(GhState::default()), scratch: temp_dir("orch-fake-gh-") });
        async fn handle(
            State(sh): State<Arc<Shared>>,
            method: Method,
            uri: Uri,
            headers: HeaderMap,
            body: axum::body::Bytes,
        ) -> axum::response::Response {
            let headers: HashMap<String, String> = headers
                .iter()
                .map(|(k, v)| (k.as_str().to_ascii_lowercase(), v.to_str().unwrap_or("").to_string()))
                .collect();
            let git_port = sh.state.lock().unwrap().git_port;
            let is_git = uri.path().contains(".git/");
            if let (Some(port), true) = (git_port, is_git) {
                let target = uri.path_and_query().map(|p| p.to_string()).unwrap_or_default();
                let (status, head, data) =
                    tokio::task::spawn_blocking(move || proxy_git(port, method.as_str(), &target, &headers, &body))
                        .await
                        .expect("the git proxy");
                let mut r = axum::response::Response::builder().status(status);
                for (k, v) in head {
                    r = r.header(k, v);
                }
                return r.body(axum::body::Body::from(data)).unwrap();
            }
            let sh2 = sh.clone();
            let path = uri.path().to_string();
            let (status, reply, retry_after) =
                tokio::task::spawn_blocking(move || sh2.answer(method.as_str(), &path, headers, &body))
                    .await
                    .expect("the fake's handler");
            let code = StatusCode::from_u16(status).unwrap();
            let mut r =
                (code, [("content-type", "application/json; charset=utf-8")], reply.to_string()).into_response();
            if let Some(secs) = retry_after {
                r.headers_mut().insert("retry-after", secs.into());
            }
            r
        }
        let app = axum::Router::new().fallback(handle).layer(DefaultBodyLimit::disable()).with_state(shared.clone());
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the fake GitHub");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                tokio::select! {
                    r = axum::serve(l, app) => r.expect("the fake GitHub serves"),
                    _ = stopped => {}
                }
            });
            rt.shutdown_timeout(Duration::from_secs(1));
        });
        FakeGitHub { url: format!("http://{addr}"), addr, shared, stop: Some(stop), thread: Some(thread) }
    }

    /// Serves `http`'s repositories on the fake's own origin (`{url}/acme/hello.git`), so
    /// that clones from "GitHub" reach them with GitHub's credentials.
    pub fn serve_git(&self, http: &GitHttp) {
        self.shared.state.lock().unwrap().git_port = Some(http.port);
    }

    /// The clone-URL rewrite that sends GitHub clone URLs to this fake's git side.
    pub fn git_rewrite(&self) -> String {
        format!("https://github.com/={}/", self.url)
    }

    /// Answers the next `n` requests of `op` with `code` (after checking them).
    pub fn fail_next(&self, op: &str, n: usize, code: u16) {
        self.shared.state.lock().unwrap().failures.push((op.to_string(), n, code, None));
    }

    /// Answers the next `n` requests of `op` as GitHub's secondary rate limit does: 403,
    /// `Retry-After: secs`.
    pub fn rate_limit_next(&self, op: &str, n: usize, secs: u64) {
        self.shared.state.lock().unwrap().failures.push((op.to_string(), n, 403, Some(secs)));
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.state.lock().unwrap().requests.clone()
    }

    /// Whether `token` is an installation token this fake minted.
    pub fn minted(&self, token: &str) -> bool {
        self.shared.state.lock().unwrap().tokens.iter().any(|t| t == token)
    }

    /// A handle that answers [`FakeGitHub::minted`] from another thread.
    pub fn minted_tokens(&self) -> impl Fn(&str) -> bool + Send + Sync + 'static {
        let shared = self.shared.clone();
        move |token| shared.state.lock().unwrap().tokens.iter().any(|t| t == token)
    }

    pub fn violations(&self) -> Vec<String> {
        self.shared.state.lock().unwrap().violations.clone()
    }

    /// Panics with every request GitHub would have refused.
    pub fn assert_no_violations(&self) {
        let v = self.violations();
        assert!(v.is_empty(), "requests GitHub would refuse:\n{}", v.join("\n"));
    }

    /// The statuses GitHub accepted for `sha`, in order.
    pub fn statuses(&self, sha: &str) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r.op == OP_STATUS && r.status == 201 && r.params["sha"] == sha)
            .map(|r| r.body)
            .collect()
    }

    /// The accepted statuses of `sha` with `context`.
    pub fn statuses_of(&self, sha: &str, context: &str) -> Vec<Value> {
        self.statuses(sha).into_iter().filter(|s| s["context"] == context).collect()
    }

    /// Waits until GitHub holds a final (not pending) status of `sha` with `context` and a
    /// target_url ending `/runs/<run>`; returns the accepted statuses of that run and context.
    pub fn wait_final_status(&self, sha: &str, context: &str, run: i64) -> Vec<Value> {
        let suffix = format!("/runs/{run}");
        wait_for(Duration::from_secs(30), &format!("a final `{context}` status for run {run}"), || {
            let mine: Vec<Value> = self
                .statuses_of(sha, context)
                .into_iter()
                .filter(|s| s["target_url"].as_str().is_some_and(|u| u.ends_with(&suffix)))
                .collect();
            if mine.last().is_some_and(|s| s["state"] != "pending") {
                Ok(mine)
            } else {
                Err(format!("{mine:#?}\nall requests: {:#?}", self.requests()))
            }
        })
    }

    /// The deployments as GitHub holds them now, oldest first, each with its `statuses`.
    pub fn deployments(&self) -> Vec<Value> {
        self.shared.state.lock().unwrap().deployments.values().cloned().collect()
    }

    /// The check runs as GitHub holds them now, by id.
    pub fn check_runs(&self) -> HashMap<u64, Value> {
        self.shared.state.lock().unwrap().check_runs.clone()
    }
}

/// Forwards one request to the git HTTP server on `port` (which answers with a length and
/// closes): status, headers and body.
fn proxy_git(
    port: u16,
    method: &str,
    target: &str,
    headers: &HashMap<String, String>,
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("the git server");
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        if matches!(k.as_str(), "authorization" | "content-type" | "accept" | "git-protocol") {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    conn.write_all(req.as_bytes()).unwrap();
    conn.write_all(body).unwrap();
    let mut out = Vec::new();
    conn.read_to_end(&mut out).unwrap();
    let end = out.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&out[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).unwrap_or(502);
    let kept = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.eq_ignore_ascii_case("content-length") && !k.eq_ignore_ascii_case("connection"))
        .collect();
    (status, kept, out[end + 4..].to_vec())
}

impl Drop for FakeGitHub {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Deliveries from GitHub's example payloads

pub fn fixture(name: &str) -> Value {
    let path = fixtures_dir().join("payloads").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn replace_strings(v: &mut Value, from: &str, to: &str) {
    match v {
        Value::String(s) if s.contains(from) => *s = s.replace(from, to),
        Value::Array(a) => a.iter_mut().for_each(|x| replace_strings(x, from, to)),
        Value::Object(o) => o.values_mut().for_each(|x| replace_strings(x, from, to)),
        _ => {}
    }
}

/// Points a repository object at `full` (owner/name), with GitHub's URL shapes.
pub fn set_repository(repo: &mut Value, full: &str) {
    let old = repo["full_name"].as_str().unwrap_or("").to_string();
    if !old.is_empty() {
        replace_strings(repo, &old, full);
    }
    let (owner, name) = full.split_once('/').unwrap();
    repo["full_name"] = json!(full);
    repo["name"] = json!(name);
    repo["owner"]["login"] = json!(owner);
    repo["html_url"] = json!(format!("https://github.com/{full}"));
    repo["clone_url"] = json!(format!("https://github.com/{full}.git"));
    repo["git_url"] = json!(format!("git://github.com/{full}.git"));
    repo["ssh_url"] = json!(format!("git@github.com:{full}.git"));
    repo["url"] = json!(format!("https://api.github.com/repos/{full}"));
}

/// A payload pointed at [`REPO`]: every mention of the example repository is replaced.
pub fn retarget(mut v: Value) -> Value {
    if let Some(old) = v.pointer("/repository/full_name").and_then(Value::as_str).map(str::to_string) {
        replace_strings(&mut v, &old, REPO);
    }
    set_repository(&mut v["repository"], REPO);
    // The examples' repository defaults to `master`; the test repository's is `main`.
    if v["repository"].get("default_branch").is_some() {
        v["repository"]["default_branch"] = json!("main");
    }
    v
}

/// A push of `after` to `branch` (from GitHub's branch-create example, made an ordinary
/// push unless `before` is zeros).
pub fn push_event(branch: &str, before: &str, after: &str) -> Value {
    let mut v = retarget(fixture("push.with-new-branch.payload.json"));
    v["ref"] = json!(format!("refs/heads/{branch}"));
    v["before"] = json!(before);
    v["after"] = json!(after);
    v["created"] = json!(before == ZERO_SHA);
    v["deleted"] = json!(false);
    v["forced"] = json!(false);
    v["compare"] = json!(format!("https://github.com/{REPO}/compare/{}...{}", &before[..12], &after[..12]));
    v["head_commit"]["id"] = json!(after);
    v["head_commit"]["tree_id"] = json!(after);
    v["head_commit"]["message"] = json!(format!("Update on {branch}"));
    v["head_commit"]["url"] = json!(format!("https://github.com/{REPO}/commit/{after}"));
    v["commits"] = json!([v["head_commit"].clone()]);
    v
}

/// A pull request event (`opened`, `synchronize`, `reopened`, `closed`) of pull request
/// `number` from `head_ref` at `head_sha` into `base_ref`.
pub fn pr_event(action: &str, number: u64, head_ref: &str, head_sha: &str, base_ref: &str, base_sha: &str) -> Value {
    let file = match action {
        "opened" => "pull_request.opened.payload.json",
        "synchronize" => "pull_request.synchronize.payload.json",
        "reopened" => "pull_request.reopened.payload.json",
        "closed" => "pull_request.closed.payload.json",
        other => panic!("no example payload for pull_request {other}"),
    };
    let mut v = retarget(fixture(file));
    let old_number = v["number"].as_u64().unwrap();
    replace_strings(&mut v["pull_request"], &format!("/pull/{old_number}"), &format!("/pull/{number}"));
    replace_strings(&mut v["pull_request"], &format!("/pulls/{old_number}"), &format!("/pulls/{number}"));
    replace_strings(&mut v["pull_request"], &format!("/issues/{old_number}"), &format!("/issues/{number}"));
    v["number"] = json!(number);
    let pr = &mut v["pull_request"];
    pr["number"] = json!(number);
    pr["head"]["ref"] = json!(head_ref);
    pr["head"]["sha"] = json!(head_sha);
    pr["head"]["label"] = json!(format!("acme:{head_ref}"));
    pr["base"]["ref"] = json!(base_ref);
    pr["base"]["sha"] = json!(base_sha);
    pr["base"]["label"] = json!(format!("acme:{base_ref}"));
    set_repository(&mut pr["head"]["repo"], REPO);
    set_repository(&mut pr["base"]["repo"], REPO);
    if action == "synchronize" {
        v["after"] = json!(head_sha);
    }
    v
}

/// Makes a pull request event come from a fork (`owner/hello`).
pub fn from_fork(mut v: Value, owner: &str) -> Value {
    let full = format!("{owner}/hello");
    let head = &mut v["pull_request"]["head"];
    set_repository(&mut head["repo"], &full);
    head["repo"]["fork"] = json!(true);
    head["user"]["login"] = json!(owner);
    let r = head["ref"].as_str().unwrap_or("").to_string();
    head["label"] = json!(format!("{owner}:{r}"));
    v["pull_request"]["user"]["login"] = json!(owner);
    v["sender"]["login"] = json!(owner);
    v
}

/// GitHub's "Re-run" of a check run on `sha` of `branch` (an App event).
pub fn check_run_rerequested(sha: &str, branch: &str, installation_id: u64) -> Value {
    let mut v = retarget(fixture("check_run.rerequested.payload.json"));
    v["check_run"]["head_sha"] = json!(sha);
    v["check_run"]["name"] = json!("orch");
    v["check_run"]["check_suite"]["head_sha"] = json!(sha);
    v["check_run"]["check_suite"]["head_branch"] = json!(branch);
    v["check_run"]["check_suite"]["pull_requests"] = json!([]);
    v["installation"]["id"] = json!(installation_id);
    v
}

// ---------------------------------------------------------------------------------------
// orch serve: the HTTP side, shared by the in-process server and the process

/// Talks to one `orch serve`.
#[derive(Clone)]
pub struct Client {
    pub addr: SocketAddr,
    pub secret: String,
    pub data_dir: PathBuf,
}

/// A delivery as posted.
pub struct Posted {
    pub guid: String,
    pub response: HttpResponse,
}

impl Posted {
    /// The run the delivery queued (asserting it did).
    pub fn run_id(&self) -> i64 {
        let j = self.response.json();
        assert_eq!((self.response.status, &j["status"]), (202, &json!("queued")), "{j}");
        j["run"].as_i64().unwrap()
    }
}

impl Client {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
        http(self.addr, method, path, headers, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn get(&self, path: &str) -> HttpResponse {
        self.request("GET", path, &[], b"")
    }

    pub fn get_json(&self, path: &str) -> Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        r.json()
    }

    /// Posts `body` to the webhook URL with GitHub's headers; `signature` as given.
    pub fn post_delivery(
        &self,
        event: &str,
        guid: &str,
        body: &[u8],
        signature: Option<&str>,
        content_type: &str,
    ) -> HttpResponse {
        let mut headers = vec![
            ("Content-Type", content_type),
            ("User-Agent", "GitHub-Hookshot/4a3b2c1"),
            ("X-GitHub-Event", event),
            ("X-GitHub-Delivery", guid),
            ("X-GitHub-Hook-ID", "292430182"),
            ("X-GitHub-Hook-Installation-Target-Type", "repository"),
            ("X-GitHub-Hook-Installation-Target-ID", "79929171"),
        ];
        if let Some(s) = signature {
            headers.push(("X-Hub-Signature-256", s));
        }
        self.request("POST", "/webhooks/github", &headers, body)
    }

    /// Signs (as GitHub does) and posts a delivery under a new GUID.
    pub fn deliver(&self, event: &str, payload: &Value) -> Posted {
        self.deliver_as(event, &new_guid(), payload)
    }

    pub fn deliver_as(&self, event: &str, guid: &str, payload: &Value) -> Posted {
        let body = serde_json::to_vec(payload).unwrap();
        let sig = orch::server::webhook::sign(self.secret.as_bytes(), &body);
        let response = self.post_delivery(event, guid, &body, Some(&sig), "application/json");
        Posted { guid: guid.to_string(), response }
    }

    /// Every run, oldest first.
    pub fn runs(&self) -> Vec<Value> {
        let mut runs = self.get_json("/api/runs?limit=500")["runs"].as_array().cloned().unwrap_or_default();
        runs.sort_by_key(|r| r["id"].as_i64());
        runs
    }

    /// `{"run": .., "steps": [..]}`
    pub fn run(&self, id: i64) -> Value {
        self.get_json(&format!("/api/runs/{id}"))
    }

    /// Waits until `pred` holds for the run; returns it.
    pub fn wait_run(&self, id: i64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(RUN_LIMIT, &format!("run {id}: {what}"), || {
            let r = self.run(id);
            if pred(&r) { Ok(r) } else { Err(format!("{r:#}")) }
        })
    }

    /// Waits until the run has ended; returns it.
    pub fn wait_run_done(&self, id: i64) -> Value {
        self.wait_run(id, "ended", |r| TERMINAL.contains(&r["run"]["status"].as_str().unwrap_or("")))
    }

    /// Waits until the log of `step` of run `id` holds `text`; returns the log.
    pub fn wait_log(&self, id: i64, step: &str, text: &str) -> String {
        wait_for(RUN_LIMIT, &format!("run {id}: `{text}` in the log of {step}"), || {
            let t = self.get(&format!("/api/runs/{id}/logs/{step}")).text();
            if t.contains(text) { Ok(t) } else { Err(t) }
        })
    }

    /// Waits until `step` of the run is running.
    pub fn wait_step_running(&self, id: i64, step: &str) -> Value {
        self.wait_run(id, &format!("step `{step}` running"), |r| {
            step_of(r, step).is_some_and(|s| s["status"] == "running")
        })
    }

    /// A query on the server's database (read-only), e.g. `SELECT COUNT(*) FROM deliveries`.
    pub fn count(&self, sql: &str) -> i64 {
        let c = rusqlite::Connection::open_with_flags(
            self.data_dir.join("orch.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open the server's database");
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        c.query_row(sql, [], |r| r.get(0)).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// `(id, status)` of every run, read from the database (the server may be gone).
    pub fn runs_from_db(&self) -> Vec<(i64, String)> {
        let c = rusqlite::Connection::open_with_flags(
            self.data_dir.join("orch.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open the server's database");
        let mut st = c.prepare("SELECT id, status FROM runs ORDER BY id").unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().collect::<Result<_, _>>().unwrap()
    }

    /// The prefix of this server's Docker run ids.
    pub fn docker_prefix(&self) -> String {
        format!("s{}-", orch::server::worker::instance_tag(&self.data_dir))
    }

    /// Containers, volumes and networks of this server still in Docker.
    pub fn leftovers(&self) -> Vec<String> {
        docker_objects(&self.docker_prefix())
    }
}

/// A step of a `{"run", "steps"}` answer.
pub fn step_of<'a>(run: &'a Value, name: &str) -> Option<&'a Value> {
    run["steps"].as_array()?.iter().find(|s| s["name"] == name)
}

fn docker(args: &[&str]) -> Option<String> {
    let out = Command::new("docker").args(args).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `kind name run` of every container, volume and network whose `orch.run` label starts
/// with `prefix`.
pub fn docker_objects(prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (kind, args) in [
        (
            "container",
            &["ps", "-a", "--filter", "label=orch.run", "--format", "{{.Names}}\t{{.Label \"orch.run\"}}"][..],
        ),
        (
            "volume",
            &["volume", "ls", "--filter", "label=orch.run", "--format", "{{.Name}}\t{{.Label \"orch.run\"}}"][..],
        ),
        (
            "network",
            &["network", "ls", "--filter", "label=orch.run", "--format", "{{.Name}}\t{{.Label \"orch.run\"}}"][..],
        ),
    ] {
        for line in docker(args).unwrap_or_default().lines() {
            if let Some((name, run)) = line.split_once('\t')
                && run.starts_with(prefix)
            {
                out.push(format!("{kind} {name} {run}"));
            }
        }
    }
    out
}

/// Containers (any state), volumes and networks that the orch process `pid` made.
pub fn docker_objects_of_pid(pid: u32) -> Vec<String> {
    let filter = format!("label=orch.pid={pid}");
    let mut out = Vec::new();
    for (kind, args) in [
        ("container", &["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"][..]),
        ("volume", &["volume", "ls", "--filter", &filter, "--format", "{{.Name}}"][..]),
        ("network", &["network", "ls", "--filter", &filter, "--format", "{{.Name}}"][..]),
    ] {
        out.extend(docker(args).unwrap_or_default().lines().map(|l| format!("{kind} {l}")));
    }
    out
}

/// Running containers of step `step` that the orch process `pid` made.
pub fn running_step_containers(pid: u32, step: &str) -> Vec<String> {
    let (p, s) = (format!("label=orch.pid={pid}"), format!("label=orch.step={step}"));
    let args = ["ps", "--filter", &p, "--filter", &s, "--filter", "status=running", "--format", "{{.Names}}"];
    docker(&args).unwrap_or_default().lines().map(str::to_string).collect()
}

/// Removes what `docker_objects(prefix)` lists (cleanup after a failed test).
pub fn remove_docker_objects(prefix: &str) {
    for o in docker_objects(prefix) {
        let mut parts = o.split(' ');
        let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let _ = match kind {
            "container" => docker(&["rm", "-f", "-v", name]),
            "volume" => docker(&["volume", "rm", "-f", name]),
            _ => docker(&["network", "rm", name]),
        };
    }
}

// ---------------------------------------------------------------------------------------
// orch serve in this process

/// The settings every test server starts from: a signing secret, no GitHub, no clones.
pub fn base_args() -> orch::server::config::ServeArgs {
    orch::server::config::ServeArgs {
        webhook_secret: Some(SECRET.into()),
        // Clones go nowhere (a closed loopback port) unless a test points them at its server.
        clone_rewrite: vec!["https://github.com/=git://127.0.0.1:1/".into()],
        github_backoff_ms: Some(20),
        ..Default::default()
    }
}

/// Settings reporting with a token to `gh` and cloning from `git`.
/// Settings for a server that is the GitHub App `app_id` (its private key in `key`) and
/// clones through `rewrite`.
pub fn app_args(gh: &FakeGitHub, app_id: u64, key: &Path, rewrite: String) -> orch::server::config::ServeArgs {
    orch::server::config::ServeArgs {
        github_url: Some(gh.url.clone()),
        github_app_id: Some(app_id),
        github_app_key: Some(key.display().to_string()),
        clone_rewrite: vec![rewrite],
        ..base_args()
    }
}

pub fn token_args(gh: &FakeGitHub, git: &GitServer) -> orch::server::config::ServeArgs {
    orch::server::config::ServeArgs {
        github_url: Some(gh.url.clone()),
        github_token: Some(TOKEN.into()),
        clone_rewrite: vec![git.rewrite()],
        ..base_args()
    }
}

/// The environment of an `orch serve` process that reports to `gh` with its token and
/// clones from `git` (GitHub's failures retried 20 ms apart), and `more`.
pub fn token_env(gh: &FakeGitHub, git: &GitServer, more: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("ORCH_GITHUB_URL", gh.url.clone()),
        ("ORCH_GITHUB_TOKEN", TOKEN.to_string()),
        ("ORCH_CLONE_REWRITE", git.rewrite()),
        ("ORCH_GITHUB_BACKOFF", "20".to_string()),
    ];
    env.extend_from_slice(more);
    env
}

/// A temporary directory with an empty `data` directory in it, for a server.
pub fn data_dir(prefix: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = temp_dir(prefix);
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("the data directory");
    (dir, data)
}

/// `orch::server::serve_on` on its own runtime thread. Dropping it stops the server (runs
/// stop as on SIGTERM) and removes whatever its runs left in Docker.
pub struct Orch {
    client: Client,
    _data: Option<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<std::sync::mpsc::Receiver<Result<(), String>>>,
}

impl std::ops::Deref for Orch {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Orch {
    /// Starts a server with `args` on a free loopback port (a temp data dir unless set).
    pub fn start(mut args: orch::server::config::ServeArgs) -> Orch {
        init_tracing();
        let data = if args.data_dir.is_none() {
            let d = temp_dir("orch-serve-data-");
            args.data_dir = Some(d.path().to_path_buf());
            Some(d)
        } else {
            None
        };
        let data_dir = args.data_dir.clone().unwrap();
        std::fs::create_dir_all(&data_dir).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the server");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        args.listen = Some(addr.to_string());
        let secret = args.webhook_secret.clone().unwrap_or_default();
        let cfg = args.resolve().expect("the test's settings resolve");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("orch-serve-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
                let r = rt.block_on(async move {
                    let l = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
                    orch::server::serve_on(l, cfg, async move {
                        let _ = stopped.await;
                    })
                    .await
                    .map_err(|e| e.to_string())
                });
                rt.shutdown_timeout(Duration::from_secs(5));
                let _ = done_tx.send(r);
            })
            .unwrap();
        let o = Orch { client: Client { addr, secret, data_dir }, _data: data, stop: Some(stop), done: Some(done) };
        wait_for(Duration::from_secs(20), "the server to answer /healthz", || {
            match http(addr, "GET", "/healthz", &[], b"") {
                Ok(r) if r.status == 200 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
        o
    }

    /// Stops the server as SIGTERM does and waits for it.
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(done) = self.done.take() {
            match done.recv_timeout(Duration::from_secs(60)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    if !std::thread::panicking() {
                        panic!("the server ended with an error: {e}")
                    }
                }
                Err(e) => eprintln!("the server did not stop within 60 s: {e}"),
            }
        }
    }
}

impl Drop for Orch {
    fn drop(&mut self) {
        self.stop();
        remove_docker_objects(&self.client.docker_prefix());
    }
}

// ---------------------------------------------------------------------------------------
// orch serve as a process

/// `orch serve` (the built binary) with settings in `ORCH_*` variables, its log in a file.
pub struct OrchProcess {
    client: Client,
    child: Child,
    pub log: PathBuf,
}

impl std::ops::Deref for OrchProcess {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl OrchProcess {
    /// Starts the binary on a free port with `env` (plus listen, secret and data dir);
    /// returns once it answers.
    pub fn spawn(data_dir: &Path, env: &[(&str, String)], log: &Path) -> OrchProcess {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let logf = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_orch"));
            cmd.arg("serve");
            for (k, _) in std::env::vars() {
                if k.starts_with("ORCH_") {
                    cmd.env_remove(k);
                }
            }
            cmd.env("ORCH_LISTEN", addr.to_string())
                .env("ORCH_WEBHOOK_SECRET", SECRET)
                .env("ORCH_DATA_DIR", data_dir)
                .env("ORCH_LOG", "info")
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .stdin(Stdio::null())
                .stdout(logf.try_clone().unwrap())
                .stderr(logf);
            let mut child = cmd.spawn().expect("orch serve starts");
            let up = Instant::now();
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last =
                        format!("orch serve exited ({status}):\n{}", std::fs::read_to_string(log).unwrap_or_default());
                    break;
                }
                if http(addr, "GET", "/healthz", &[], b"").is_ok_and(|r| r.status == 200) {
                    let client = Client { addr, secret: SECRET.into(), data_dir: data_dir.to_path_buf() };
                    return OrchProcess { client, child, log: log.to_path_buf() };
                }
                if up.elapsed() > Duration::from_secs(30) {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = format!("orch serve did not answer:\n{}", std::fs::read_to_string(log).unwrap_or_default());
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("cannot start orch serve: {last}");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no cleanup of any kind.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL after 30 s.
    pub fn terminate(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for OrchProcess {
    fn drop(&mut self) {
        self.terminate();
        remove_docker_objects(&self.client.docker_prefix());
    }
}

/// An `orch agent` process; killed (-9) when dropped.
pub struct Agent {
    pub child: Child,
    _dir: tempfile::TempDir,
    pub log: PathBuf,
}

impl Agent {
    pub fn start(server: &Orch, token: &str, labels: &str, capacity: usize) -> Agent {
        Agent::start_at(&format!("http://{}", server.addr), token, labels, capacity, &[])
    }

    pub fn start_at(url: &str, token: &str, labels: &str, capacity: usize, env: &[(&str, &str)]) -> Agent {
        let dir = temp_dir("orch-agent-");
        let log = dir.path().join("agent.log");
        let f = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_orch"));
        for (k, _) in std::env::vars() {
            if k.starts_with("ORCH_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .arg("agent")
            .env("ORCH_SERVER", url)
            .envs(env.iter().copied())
            .env("ORCH_AGENT_TOKEN", token)
            .env("ORCH_LABELS", labels)
            .env("ORCH_CAPACITY", capacity.to_string())
            .env("ORCH_AGENT_DIR", dir.path().join("data"))
            .env("ORCH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("orch agent starts");
        Agent { child, _dir: dir, log }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the agent to exit; its code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `orch token create NAME --can approve` against `orch`'s data directory: the token.
pub fn approver(orch: &Client, name: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_orch"))
        .args(["token", "create", name, "--can", "approve"])
        .env("ORCH_DATA_DIR", &orch.data_dir)
        .output()
        .expect("orch token runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
