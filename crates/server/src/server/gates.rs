//! The server's deployment gates: a run's gate waits in the database for `required` of its
//! `approvers` to approve through the API (`POST /api/runs/{id}/approve`), or for one to
//! reject it. A vote wakes the waiting gates (`AppState::gates`); nothing polls. The
//! scheduler applies the timeout and tells the recorder, which closes the gate.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::AppState;
use crate::sched::{DeploymentStatus, GateDecision, GateRequest, Gatekeeper};

pub struct ServerGate {
    pub st: Arc<AppState>,
    pub run: i64,
}

impl Gatekeeper for ServerGate {
    fn decide(&self, req: GateRequest) -> BoxFuture<'static, GateDecision> {
        let (st, run) = (self.st.clone(), self.run);
        Box::pin(async move {
            match wait(&st, run, req, None).await {
                Some(d) => d,
                None => std::future::pending().await,
            }
        })
    }

    fn finished(&self, _req: GateRequest, _status: DeploymentStatus) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// Opens run `run`'s gate for `req` (once) and waits for its decision, at most `limit`
/// (`None`: as long as it takes; the scheduler applies the timeout). `None` when `limit`
/// passed first (an agent asks again).
pub async fn wait(
    st: &AppState,
    run: i64,
    req: GateRequest,
    limit: Option<std::time::Duration>,
) -> Option<GateDecision> {
    if !req.needs_approval() {
        return Some(GateDecision::Go { by: Vec::new() });
    }
    let fail = |reason: String| Some(GateDecision::Fail { reason, by: Vec::new() });
    let timeout_at = super::db::now() + req.timeout.as_secs() as i64;
    let env = req.environment.clone();
    if let Err(e) = st.db.open_gate(run, env.clone(), req.step, req.approvers, req.required as i64, timeout_at).await {
        return fail(format!("cannot record the gate: {e}"));
    }
    let deadline = limit.map(|l| tokio::time::Instant::now() + l);
    loop {
        // Registered before the read: a vote committed after it wakes this.
        let woken = st.gates.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let gate = match st.db.gates(run).await {
            Ok(gates) => gates.into_iter().find(|g| g.environment == env),
            Err(e) => return fail(format!("cannot read the gate: {e}")),
        };
        let Some(gate) = gate else { return fail("the gate is gone from the database".into()) };
        match gate.status.as_str() {
            "approved" => return Some(GateDecision::Go { by: gate.approved_by() }),
            "waiting" => match deadline {
                Some(d) => {
                    if tokio::time::timeout_at(d, woken).await.is_err() {
                        return None;
                    }
                }
                None => woken.await,
            },
            _ => {
                let by = gate.votes.iter().filter(|v| v.vote == "reject").map(|v| v.who.clone()).collect();
                let reason = gate.reason.unwrap_or_else(|| format!("the gate was {}", gate.status));
                return Some(GateDecision::Fail { reason: format!("environment `{env}`: {reason}"), by });
            }
        }
    }
}
