//! A scripted backend for tests of the scheduler: no Docker, steps behave as told (exit
//! codes per attempt, output, delays, start failures), and every call is recorded.

use std::collections::HashMap;
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
        Ok(StepHandle { id, pump: Some(pump) })
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
}
