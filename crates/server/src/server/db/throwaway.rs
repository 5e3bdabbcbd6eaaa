//! A throwaway PostgreSQL server for tests: `initdb` in a temporary directory, `pg_ctl`
//! starts it on a free loopback port, and dropping the guard stops it and removes the
//! directory. Used by the database's tests and the integration tests of several servers.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running throwaway cluster; stopped when dropped.
pub struct TestPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    user: Option<String>,
    pub port: u16,
}

/// Where `initdb` and `pg_ctl` are: on `PATH` (or /usr/local/bin), or Debian's place.
pub fn binaries() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.push("/usr/local/bin".into());
    if let Ok(versions) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut v: Vec<PathBuf> = versions.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).collect();
        // The newest first.
        v.sort();
        v.reverse();
        dirs.extend(v);
    }
    dirs.into_iter().find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
}

impl TestPostgres {
    /// Starts one. `Ok(None)`: there is no PostgreSQL here and this is not CI (`CI` unset),
    /// so the caller skips, saying so; in CI a missing PostgreSQL is an error.
    pub fn start() -> Result<Option<TestPostgres>, String> {
        let Some(bin) = binaries() else {
            if std::env::var_os("CI").is_some() {
                return Err(
                    "initdb and pg_ctl are not installed (scripts/setup installs them), and CI needs them".into()
                );
            }
            eprintln!("SKIPPED: no PostgreSQL here (initdb, pg_ctl); scripts/setup installs it");
            return Ok(None);
        };
        let dir = tempfile::Builder::new().prefix("orch-pg-").tempdir().map_err(|e| e.to_string())?;
        // PostgreSQL refuses to run as root: then it runs as the `postgres` user (Debian's
        // package makes it) or `nobody`, which own the directory.
        let user = if is_root() {
            let user = ["postgres", "nobody"]
                .into_iter()
                .find(|u| Command::new("id").arg("-u").arg(u).output().is_ok_and(|o| o.status.success()))
                .ok_or("running as root, and there is no `postgres` or `nobody` user to run PostgreSQL as")?;
            let st = Command::new("chown").arg(format!("{user}:")).arg(dir.path()).status();
            if !st.is_ok_and(|s| s.success()) {
                return Err(format!("cannot give {} to {user}", dir.path().display()));
            }
            Some(user.to_string())
        } else {
            None
        };
        let data = dir.path().join("data");
        let mut pg = TestPostgres { dir, bin, user, port: 0 };
        pg.run("initdb", &["-D", path(&data), "-U", "orch", "--auth=trust", "--no-sync", "-E", "UTF8"])?;
        // A free port now; another process could take it first, hence the tries.
        let mut last = String::new();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| e.to_string())?
                .port();
            let opts = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100",
                path(pg.dir.path())
            );
            let log = pg.dir.path().join("log");
            match pg.run("pg_ctl", &["-D", path(&data), "-l", path(&log), "-o", &opts, "-w", "-t", "60", "start"]) {
                Ok(()) => {
                    pg.port = port;
                    return Ok(Some(pg));
                }
                Err(e) => last = format!("{e}\n{}", std::fs::read_to_string(&log).unwrap_or_default()),
            }
        }
        Err(format!("PostgreSQL did not start: {last}"))
    }

    /// The URL of a new, empty database `name` in it.
    pub fn database(&self, name: &str) -> Result<String, String> {
        let admin = self.url("postgres");
        let db = name.to_string();
        // The client runs its own runtime: not on an async thread.
        std::thread::spawn(move || -> Result<(), String> {
            let mut c = postgres::Client::connect(&admin, postgres::NoTls).map_err(|e| e.to_string())?;
            c.batch_execute(&format!("CREATE DATABASE \"{db}\"")).map_err(|e| e.to_string())
        })
        .join()
        .map_err(|_| "the thread creating a database panicked".to_string())??;
        Ok(self.url(name))
    }

    /// Runs `statements` in database `db` as the cluster's administrator.
    pub fn sql(&self, db: &str, statements: &str) -> Result<(), String> {
        let (url, statements) = (self.url(db), statements.to_string());
        // The client runs its own runtime: not on an async thread.
        std::thread::spawn(move || -> Result<(), String> {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).map_err(|e| e.to_string())?;
            c.batch_execute(&statements).map_err(|e| e.to_string())
        })
        .join()
        .map_err(|_| "the thread running SQL panicked".to_string())?
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://orch@127.0.0.1:{}/{db}", self.port)
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.bin.join(tool);
        let mut cmd = match &self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        // Its own directory is the one it may read as another user.
        cmd.args(args).current_dir(self.dir.path()).env("LC_ALL", "C");
        let out = cmd.output().map_err(|e| format!("{}: {e}", exe.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{tool} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        if let Err(e) = self.run("pg_ctl", &["-D", path(&data), "-m", "immediate", "-w", "stop"]) {
            eprintln!("cannot stop the test PostgreSQL: {e}");
        }
    }
}

fn path(p: &Path) -> &str {
    // Temporary directories have UTF-8 names.
    p.to_str().unwrap_or_default()
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
