//! `orch ci`'s gatekeeper: a deployment that needs approval is approved by `--approve`
//! (all, or `--approve=ENV`), else asked at the terminal (y/n), else it fails with a
//! message that says how to approve it. The person at the terminal approves as `$USER`;
//! one answer stands for every approver the environment asks for.

use std::io::{BufRead, Write};
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::plan::Plan;
use crate::report::Screen;
use crate::sched::{DeploymentStatus, GateDecision, GateNotes, GateRequest, Gatekeeper};

pub struct Local {
    /// `--approve` with no value: every environment.
    all: bool,
    /// `--approve=ENV`.
    envs: Vec<String>,
    terminal: bool,
    /// Environments of the plan that need approval.
    gated: Vec<String>,
    /// Held while asking, so the reporter does not print over the question.
    screen: Option<Arc<Screen>>,
}

impl Local {
    pub fn new(approve: &[String], terminal: bool, plan: &Plan) -> Local {
        let gated = plan.environments.iter().filter(|(_, r)| r.approval.is_some()).map(|(n, _)| n.clone()).collect();
        Local {
            all: approve.iter().any(|a| a.is_empty()),
            envs: approve.iter().filter(|a| !a.is_empty()).cloned().collect(),
            terminal,
            gated,
            screen: None,
        }
    }

    pub fn with_screen(self, screen: Option<Arc<Screen>>) -> Local {
        Local { screen, ..self }
    }

    fn approved(&self, env: &str) -> bool {
        self.all || self.envs.iter().any(|e| e == env)
    }

    /// Whether this run may ask a question at the terminal.
    pub fn may_ask(&self) -> bool {
        self.terminal && self.gated.iter().any(|e| !self.approved(e))
    }
}

/// Who answers at this terminal.
fn user() -> String {
    std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "the terminal".to_string())
}

impl Gatekeeper for Local {
    fn decide(&self, req: GateRequest, _notes: GateNotes) -> BoxFuture<'static, GateDecision> {
        let env = req.environment.clone();
        if !req.needs_approval() {
            return Box::pin(async { GateDecision::Go { by: Vec::new() } });
        }
        if self.approved(&env) {
            return Box::pin(async { GateDecision::Go { by: vec![format!("{} (--approve)", user())] } });
        }
        if !self.terminal {
            return Box::pin(async move {
                GateDecision::Fail {
                    reason: format!(
                        "environment `{env}` needs approval and there is no terminal to ask at: \
                         pass --approve (or --approve={env}) to approve it"
                    ),
                    by: Vec::new(),
                }
            });
        }
        let screen = self.screen.clone();
        Box::pin(async move {
            let _held = match &screen {
                Some(s) => Some(s.borrow().await),
                None => None,
            };
            let question = format!(
                "\nDeploy step `{}` to `{env}` (commit {})? It needs {} of {} to approve. [y/N] ",
                req.step,
                req.commit.chars().take(8).collect::<String>(),
                req.required,
                req.approvers.join(", "),
            );
            // A thread of its own, not the runtime's blocking pool: if the run is cancelled
            // while it waits for a line, nothing waits for it.
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let mut err = std::io::stderr();
                let _ = err.write_all(question.as_bytes());
                let _ = err.flush();
                let mut line = String::new();
                let read = std::io::stdin().lock().read_line(&mut line);
                let _ = tx.send(read.map(|_| line));
            });
            match rx.await {
                Ok(Ok(line)) if matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes") => {
                    GateDecision::Go { by: vec![user()] }
                }
                Ok(Ok(_)) => {
                    GateDecision::Fail { reason: format!("rejected at the terminal by {}", user()), by: vec![user()] }
                }
                Ok(Err(e)) => GateDecision::Fail { reason: format!("cannot read the answer: {e}"), by: Vec::new() },
                Err(_) => GateDecision::Fail { reason: "no answer".into(), by: Vec::new() },
            }
        })
    }

    fn finished(&self, _req: GateRequest, _status: DeploymentStatus) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}
