//! The server's deployment gates: a run's gate waits in the database for `required` of its
//! `approvers` to approve through the API (`POST /api/runs/{id}/approve`), or for one to
//! reject it; then for its turn: one deployment at a time per repository and environment
//! (`env_locks`), the newest waiting commit first or in turn (`order`), never an older
//! commit than the live one (`env_live`) unless the run is a redeploy. A vote, a release
//! and a run's end wake the waiting gates (`AppState::gates`); nothing polls. The
//! scheduler applies the timeout and tells the recorder, which closes the gate. A lock held
//! by a run that is not running (ended, interrupted by a restart) counts as free.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use tokio::time::Instant;

use super::AppState;
use super::db::{Acquired, NewRun};
use crate::pipeline::DeployOrder;
use crate::sched::{DeploymentStatus, GateDecision, GateNotes, GateRequest, Gatekeeper};

pub struct ServerGate {
    pub st: Arc<AppState>,
    pub run: i64,
}

impl Gatekeeper for ServerGate {
    fn decide(&self, req: GateRequest, notes: GateNotes) -> BoxFuture<'static, GateDecision> {
        let (st, run) = (self.st.clone(), self.run);
        Box::pin(async move {
            // Dropped undecided (the approval timed out, the run was cancelled): its place
            // in line goes, so it holds up no one.
            let mut abandoned = Abandoned(Some((st.clone(), run, req.environment.clone())));
            let d = match decide(&st, run, req, None, &|text| notes.say(text)).await {
                Some(d) => d,
                None => std::future::pending().await,
            };
            abandoned.0 = None;
            d
        })
    }

    fn finished(&self, req: GateRequest, status: DeploymentStatus) -> BoxFuture<'static, ()> {
        let (st, run) = (self.st.clone(), self.run);
        Box::pin(async move { finished(&st, run, &req.environment, status).await })
    }
}

/// Releases what an undecided gate took, when its wait is dropped.
struct Abandoned(Option<(Arc<AppState>, i64, String)>);

impl Drop for Abandoned {
    fn drop(&mut self) {
        if let Some((st, run, env)) = self.0.take() {
            tokio::spawn(async move { finished(&st, run, &env, DeploymentStatus::Cancelled).await });
        }
    }
}

/// Decides run `run`'s deployment `req`: its approval, then its turn in the environment;
/// at most `limit` (`None`: as long as it takes; the scheduler applies the timeout).
/// `None` when `limit` passed first (an agent asks again: both phases are kept in the
/// database, so asking again goes on where it was). What it waits for is told to `say`.
pub async fn decide(
    st: &AppState,
    run: i64,
    req: GateRequest,
    limit: Option<std::time::Duration>,
    say: &(dyn Fn(&str) + Send + Sync),
) -> Option<GateDecision> {
    let deadline = limit.map(|l| tokio::time::Instant::now() + l);
    let (env, newest) = (req.environment.clone(), req.order == DeployOrder::Newest);
    // The run's repository, and whether it is an explicit redeploy (a rollback): the
    // server's record says, not the request (an agent's).
    let spec = match st.db.run(run).await {
        Ok(Some(r)) => r.spec,
        Ok(None) => return fail(format!("run {run} is gone from the database")),
        Err(e) => return fail(format!("cannot read the run: {e}")),
    };
    match approval(st, run, req, deadline).await? {
        GateDecision::Go { by } => match turn(st, run, &spec, &env, newest, deadline, say).await? {
            GateDecision::Go { .. } => Some(GateDecision::Go { by }),
            other => Some(other),
        },
        other => Some(other),
    }
}

fn fail(reason: String) -> Option<GateDecision> {
    Some(GateDecision::Fail { reason, by: Vec::new() })
}

/// Waits on `woken` until `deadline`; false when the deadline passed.
async fn sleep_until_woken(
    woken: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
    deadline: Option<Instant>,
) -> bool {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, woken).await.is_ok(),
        None => {
            woken.await;
            true
        }
    }
}

/// The approval phase: opens the gate (once) and waits for its votes.
async fn approval(st: &AppState, run: i64, req: GateRequest, deadline: Option<Instant>) -> Option<GateDecision> {
    if !req.needs_approval() {
        return Some(GateDecision::Go { by: Vec::new() });
    }
    let timeout_at = super::db::now() + req.timeout.as_secs() as i64;
    let env = req.environment.clone();
    if let Err(e) = st.db.open_gate(run, env.clone(), req.step, req.approvers, req.required as i64, timeout_at).await {
        return fail(format!("cannot record the gate: {e}"));
    }
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
            "waiting" => {
                if !sleep_until_woken(woken, deadline).await {
                    return None;
                }
            }
            _ => {
                let by = gate.votes.iter().filter(|v| v.vote == "reject").map(|v| v.who.clone()).collect();
                let reason = gate.reason.unwrap_or_else(|| format!("the gate was {}", gate.status));
                return Some(GateDecision::Fail { reason: format!("environment `{env}`: {reason}"), by });
            }
        }
    }
}

/// The environment's turn: one deployment at a time per repository and environment, and
/// never an older commit than the live one unless the run is a redeploy.
async fn turn(
    st: &AppState,
    run: i64,
    spec: &NewRun,
    env: &str,
    newest: bool,
    deadline: Option<Instant>,
    say: &(dyn Fn(&str) + Send + Sync),
) -> Option<GateDecision> {
    let (repo, redeploy) = (spec.repo.clone(), spec.redeploy);
    if let Err(e) = st.db.env_enqueue(repo.clone(), env.to_string(), run).await {
        return fail(format!("cannot queue the deployment: {e}"));
    }
    loop {
        let woken = st.gates.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        match st.db.env_live(repo.clone(), env.to_string(), run).await {
            Ok((mine, Some(live))) if !redeploy && live.run_id != run && live.commit_time > mine => {
                let _ = st.db.env_release(repo.clone(), env.to_string(), run, false).await;
                st.gates.notify_waiters();
                let short: String = live.sha.chars().take(8).collect();
                return Some(GateDecision::Refuse {
                    reason: format!(
                        "`{env}` runs a newer commit ({short}, run {}); this older one deploys only as a redeploy",
                        live.run_id
                    ),
                });
            }
            Ok(_) => {}
            Err(e) => return fail(format!("cannot read what `{env}` runs: {e}")),
        }
        match st.db.env_acquire(repo.clone(), env.to_string(), run, newest).await {
            Ok(Acquired::Got) => {
                // The runs it superseded hear it.
                st.gates.notify_waiters();
                return Some(GateDecision::Go { by: Vec::new() });
            }
            Ok(Acquired::Superseded(by)) => {
                return Some(GateDecision::Refuse { reason: format!("superseded by a newer commit (run {by})") });
            }
            Ok(Acquired::Wait) => {
                match st.db.env_holder(repo.clone(), env.to_string()).await {
                    Ok(Some((holder, sha))) => {
                        let short: String = sha.chars().take(8).collect();
                        say(&format!("waiting for its turn: run {holder} (commit {short}) deploys there"));
                    }
                    _ => say("waiting for its turn: another run goes first"),
                }
                if !sleep_until_woken(woken, deadline).await {
                    return None;
                }
            }
            Err(e) => return fail(format!("cannot lock `{env}`: {e}")),
        }
    }
}

/// Run `run`'s deployments to `env` ended: the environment's lock goes to the next in line.
pub async fn finished(st: &AppState, run: i64, env: &str, status: DeploymentStatus) {
    let repo = match st.db.run(run).await {
        Ok(Some(r)) => r.spec.repo,
        _ => return,
    };
    let ok = status == DeploymentStatus::Success;
    if let Err(e) = st.db.env_release(repo, env.to_string(), run, ok).await {
        tracing::error!(run, environment = env, "cannot release the environment: {e}");
    }
    st.gates.notify_waiters();
}
