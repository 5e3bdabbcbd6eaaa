//! A scripted backend for tests of the scheduler: no Docker, steps behave as told (exit
//! codes per attempt, output, delays, start failures), and every call is recorded.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::*;

/// How one attempt of a step behaves.
#[derive(Debug, Clone, Default)]
pub struct FakeAttempt {
    pub exit: i64,
    pub output: Vec<(Stream, String)>,
    pub delay: Duration,
    pub start_error: Option<String>,
}

impl FakeAttempt {
    pub fn exit(code: i64) -> Self {
        FakeAttempt { exit: code, ..Default::default() }
    }
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
    pub fn out(mut self, s: &str) -> Self {
        self.output.push((Stream::Stdout, s.to_string()));
        self
    }
}

#[derive(Default)]
pub struct FakeBackend {
    /// Per step name: attempts in order; the last one repeats.
    scripts: Mutex<HashMap<String, Vec<FakeAttempt>>>,
    exits: Mutex<HashMap<String, watch::Sender<Option<i64>>>>,
    /// Every call, in order: `start build#1`, `stop build#1`, `remove build#1`, `destroy r1`.
    pub calls: Mutex<Vec<String>>,
    /// The environment each step attempt got.
    pub envs: Mutex<HashMap<String, Vec<(String, String)>>>,
    running: AtomicUsize,
    pub max_running: AtomicUsize,
}

impl FakeBackend {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn script(self, step: &str, attempts: Vec<FakeAttempt>) -> Self {
        self.scripts.lock().expect("test lock").insert(step.to_string(), attempts);
        self
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("test lock").clone()
    }

    fn record(&self, s: String) {
        self.calls.lock().expect("test lock").push(s);
    }
}

impl Backend for FakeBackend {
    async fn prepare(&self, run: &RunSpec) -> Result<(), BackendError> {
        self.record(format!("prepare {}", run.run_id));
        Ok(())
    }

    async fn start(&self, step: &StepSpec, logs: mpsc::Sender<LogChunk>) -> Result<StepHandle, BackendError> {
        let id = format!("{}#{}", step.step, step.attempt);
        self.record(format!("start {id}"));
        for r in &step.restore {
            self.record(format!("restore {id} {}", r.path));
        }
        self.envs.lock().expect("test lock").insert(id.clone(), step.env.clone());
        let attempt = {
            let scripts = self.scripts.lock().expect("test lock");
            scripts
                .get(&step.step)
                .and_then(|a| a.get(step.attempt as usize - 1).or(a.last()).cloned())
                .unwrap_or_default()
        };
        if let Some(e) = attempt.start_error {
            return Err(BackendError::Api(e));
        }
        let (tx, mut rx) = watch::channel(None);
        self.exits.lock().expect("test lock").insert(id.clone(), tx.clone());
        let n = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(n, Ordering::SeqCst);
        let pump = tokio::spawn(async move {
            for (stream, line) in attempt.output {
                let _ = logs.send(LogChunk { stream, data: bytes::Bytes::from(line) }).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(attempt.delay) => { let _ = tx.send(Some(attempt.exit)); }
                _ = rx.wait_for(|v| v.is_some()) => {}
            }
        });
        Ok(StepHandle { id, services: Vec::new(), network: None, lane: None, pump: Some(pump) })
    }

    async fn wait(&self, handle: &mut StepHandle) -> Result<ExitInfo, BackendError> {
        if let Some(p) = handle.pump.take() {
            let _ = p.await;
        }
        let code = self.exits.lock().expect("test lock").get(&handle.id).and_then(|tx| *tx.borrow()).unwrap_or(-1);
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(ExitInfo { code, oom_killed: false })
    }

    async fn stop(&self, handle: &StepHandle, grace: Duration) -> Result<(), BackendError> {
        self.record(format!("stop {} grace={}", handle.id, grace.as_secs()));
        if let Some(tx) = self.exits.lock().expect("test lock").get(&handle.id) {
            tx.send_if_modified(|v| {
                if v.is_none() {
                    *v = Some(137);
                    true
                } else {
                    false
                }
            });
        }
        Ok(())
    }

    async fn remove(&self, handle: &StepHandle) -> Result<(), BackendError> {
        self.record(format!("remove {}", handle.id));
        Ok(())
    }

    async fn destroy(&self, run_id: &str) -> Result<(), BackendError> {
        self.record(format!("destroy {run_id}"));
        Ok(())
    }

    /// Writes a tar holding one file named after the path.
    async fn export(&self, handle: &StepHandle, path: &str, dest: &Path) -> Result<bool, BackendError> {
        self.record(format!("export {} {path}", handle.id));
        let name = Path::new(path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut b = tar::Builder::new(Vec::new());
        let data = format!("cached {path}");
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, format!("{name}/file"), data.as_bytes())
            .map_err(|e| BackendError::Cache(e.to_string()))?;
        let bytes = b.into_inner().map_err(|e| BackendError::Cache(e.to_string()))?;
        std::fs::write(dest, bytes).map_err(|e| BackendError::Cache(e.to_string()))?;
        Ok(true)
    }

    /// Every pattern "matches" one file of 1 byte, except patterns containing `missing`.
    async fn collect(
        &self,
        handle: &StepHandle,
        patterns: &[String],
        optional: bool,
        dest: &Path,
    ) -> Result<Collected, BackendError> {
        self.record(format!("collect {} {}", handle.id, patterns.join(",")));
        let mut out = Vec::new();
        let mut unmatched = Vec::new();
        for p in patterns {
            if p.contains("missing") {
                if optional {
                    unmatched.push(p.clone());
                    continue;
                }
                return Err(BackendError::Artifacts(format!("`{p}` matched nothing")));
            }
            let root = crate::confined::Root::open(dest).map_err(|e| BackendError::Artifacts(e.to_string()))?;
            let mut f = root.create_file(p, 0o644).map_err(|e| BackendError::Artifacts(e.to_string()))?;
            std::io::Write::write_all(&mut f, b"x").map_err(|e| BackendError::Artifacts(e.to_string()))?;
            out.push(ArtifactFile { path: p.clone(), size: 1 });
        }
        Ok(Collected { files: out, unmatched })
    }

    /// Records the call, prints the step's environment, then copies the input to the
    /// output until it ends; exit code 0.
    async fn shell(&self, step: &StepSpec, after: Option<&StepHandle>, mut io: ShellIo) -> Result<i64, BackendError> {
        let at = after.map_or_else(|| "before".to_string(), |h| format!("after {}", h.id));
        self.record(format!("shell {} {at}", step.step));
        let env: Vec<String> = step.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(io.output, "{}", env.join(" "));
        let mut input = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut io.input, &mut input).await;
        let _ = io.output.write_all(&input);
        let _ = io.output.flush();
        Ok(0)
    }
}
