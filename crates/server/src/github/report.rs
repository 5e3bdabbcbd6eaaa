//! The reporter: sends a run's updates to GitHub, as commit statuses (a token) or check
//! runs (an App). The server's outbox hands it the stored updates one at a time, in order.

use std::sync::Arc;

use octocrab::Octocrab;
use serde_json::{Value, json};

use super::*;

pub struct Reporter {
    cfg: Config,
    gh: Github,
    /// Check runs created since [`Reporter::take_created`] last looked: (run, check run).
    /// The caller records them with the run; an update carries its run's check run.
    created: Vec<(i64, u64)>,
    /// Deployments GitHub made since [`Reporter::take_deployments`] last looked:
    /// (the server's deployment, GitHub's).
    deployments: Vec<(i64, u64)>,
}

impl Reporter {
    pub fn new(cfg: Config, gh: Github) -> Reporter {
        Reporter { cfg, gh, created: Vec::new(), deployments: Vec::new() }
    }

    fn created_check_run(&mut self, run: i64, created: &Value) {
        if let Some(id) = created.get("id").and_then(Value::as_u64) {
            self.created.push((run, id));
        }
    }

    /// The check runs created since the last call, for the caller to keep across restarts.
    pub fn take_created(&mut self) -> Vec<(i64, u64)> {
        std::mem::take(&mut self.created)
    }

    /// The deployments GitHub made since the last call, for the caller to keep.
    pub fn take_deployments(&mut self) -> Vec<(i64, u64)> {
        std::mem::take(&mut self.deployments)
    }

    pub fn enabled(&self) -> bool {
        self.gh.enabled()
    }

    pub fn is_app(&self) -> bool {
        self.gh.is_app()
    }

    fn target_url(&self, run: &RunRef) -> String {
        format!("{}/runs/{}", self.cfg.public_url.trim_end_matches('/'), run.id)
    }

    async fn client_for(&self, run: &RunRef) -> Result<Arc<Octocrab>, ReportError> {
        self.gh.client_for(&run.repo, run.installation_id).await
    }

    async fn with_retry<F, Fut, B>(&self, what: &str, f: F) -> Result<Value, ReportError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = octocrab::Result<http::Response<B>>>,
        B: http_body::Body,
        B::Error: std::fmt::Display,
    {
        self.gh.request(what, f).await
    }

    async fn status(&mut self, run: &RunRef, context: &str, state: &str, description: &str) -> Result<(), ReportError> {
        let client = self.client_for(run).await?;
        let body = json!({
            "state": state,
            "target_url": self.target_url(run),
            "description": truncate(description, MAX_DESCRIPTION),
            "context": context,
        });
        let route = format!("/repos/{}/statuses/{}", run.repo, run.sha);
        self.with_retry(&format!("POST {route}"), || client._post(route.as_str(), Some(&body))).await.map(|_| ())
    }

    /// The status context or check run name of `run`'s event. A commit pushed to a branch
    /// with an open pull request has a push run and a pull request run: one context for
    /// both would show whichever reported last, and a push run that is not triggered (green)
    /// could hide a failed pull request run.
    fn context_of(&self, run: &RunRef) -> String {
        format!("{} ({})", self.cfg.context, github_event(&run.event))
    }

    /// Applies one update. Errors are returned for logging; nothing else depends on them.
    pub async fn send(&mut self, u: &Update) -> Result<(), ReportError> {
        if !self.gh.enabled() {
            return Ok(());
        }
        let ctx = self.context_of(u.run());
        match u {
            Update::Queued(run) if self.is_app() => {
                let client = self.client_for(run).await?;
                let body = json!({
                    "name": ctx,
                    "head_sha": run.sha,
                    "status": "queued",
                    "details_url": self.target_url(run),
                    "external_id": run.id.to_string(),
                });
                let route = format!("/repos/{}/check-runs", run.repo);
                let created =
                    self.with_retry(&format!("POST {route}"), || client._post(route.as_str(), Some(&body))).await?;
                self.created_check_run(run.id, &created);
                Ok(())
            }
            Update::Queued(run) => self.status(run, &ctx, "pending", "Queued").await,
            Update::Started(run) if self.is_app() => {
                let body = json!({ "status": "in_progress", "started_at": iso(std::time::SystemTime::now()) });
                self.patch_check_run(run, body).await
            }
            Update::Started(run) => self.status(run, &ctx, "pending", "Running").await,
            Update::Waiting { run, description } if self.is_app() => {
                let title = truncate(description, 255);
                let body = json!({ "status": "in_progress", "output": { "title": title, "summary": description } });
                self.patch_check_run(run, body).await
            }
            Update::Waiting { run, description } => self.status(run, &ctx, "pending", description).await,
            Update::Step { run, step, conclusion, description } => {
                if self.is_app() || !self.cfg.step_statuses {
                    return Ok(());
                }
                let step_ctx = format!("{}/{step} ({})", self.cfg.context, github_event(&run.event));
                self.status(run, &step_ctx, conclusion.status_state(), description).await
            }
            Update::Finished { run, conclusion, description, summary, annotations } if self.is_app() => {
                let title = truncate(description, 255);
                let summary = truncate(summary, MAX_SUMMARY);
                let mut chunks = annotations.chunks(MAX_ANNOTATIONS);
                let first: Vec<&Annotation> = chunks.next().map(|c| c.iter().collect()).unwrap_or_default();
                let body = json!({
                    "status": "completed",
                    "conclusion": conclusion.check_conclusion(),
                    "completed_at": iso(std::time::SystemTime::now()),
                    "output": { "title": title, "summary": summary, "annotations": first },
                });
                self.patch_check_run(run, body).await?;
                // GitHub appends the annotations of each further update.
                for chunk in chunks {
                    let body = json!({ "output": { "title": title, "summary": summary, "annotations": chunk } });
                    self.patch_check_run(run, body).await?;
                }
                Ok(())
            }
            Update::Finished { run, conclusion, description, .. } => {
                self.status(run, &ctx, conclusion.status_state(), description).await
            }
            Update::Deployment { run, deployment, step, environment } => {
                let client = self.client_for(run).await?;
                let body = json!({
                    "ref": run.sha,
                    "task": "deploy",
                    // The commit as it is: no merge of the default branch, no wait for
                    // statuses (orch's own run is what decided to deploy).
                    "auto_merge": false,
                    "required_contexts": [],
                    "environment": environment,
                    "description": truncate(&format!("orch run {}, step {step}", run.id), MAX_DESCRIPTION),
                    "payload": { "orch_run": run.id, "step": step, "deployment": deployment },
                    "transient_environment": run.event == "pull_request",
                    "production_environment": is_production(environment),
                });
                let route = format!("/repos/{}/deployments", run.repo);
                let made =
                    self.with_retry(&format!("POST {route}"), || client._post(route.as_str(), Some(&body))).await?;
                let id = made.get("id").and_then(Value::as_u64).ok_or_else(|| {
                    ReportError::new(format!("GitHub made no deployment: {}", truncate(&made.to_string(), 200)))
                })?;
                self.deployments.push((*deployment, id));
                Ok(())
            }
            Update::DeploymentState { run, deployment, github_id, state, environment_url, description } => {
                let made = self.deployments.iter().rev().find(|(d, _)| d == deployment).map(|&(_, id)| id);
                let Some(id) = github_id.or(made) else {
                    return Err(ReportError::new(format!(
                        "no GitHub deployment to set `{}` on: making it was given up",
                        state.as_str()
                    )));
                };
                let client = self.client_for(run).await?;
                let mut body = json!({
                    "state": state.as_str(),
                    "log_url": self.target_url(run),
                    "description": truncate(description, MAX_DESCRIPTION),
                });
                if let Some(u) = environment_url {
                    body["environment_url"] = json!(u);
                }
                let route = format!("/repos/{}/deployments/{id}/statuses", run.repo);
                self.with_retry(&format!("POST {route}"), || client._post(route.as_str(), Some(&body)))
                    .await
                    .map(|_| ())
            }
        }
    }

    async fn patch_check_run(&mut self, run: &RunRef, body: Value) -> Result<(), ReportError> {
        let client = self.client_for(run).await?;
        // One made earlier in this update (the first of several annotation chunks).
        let made = self.created.iter().rev().find(|(r, _)| *r == run.id).map(|&(_, id)| id);
        let Some(id) = run.check_run_id.or(made) else {
            // The queued update never reached GitHub: create the check run now.
            let mut create = body.clone();
            create["name"] = json!(self.context_of(run));
            create["head_sha"] = json!(run.sha);
            create["details_url"] = json!(self.target_url(run));
            create["external_id"] = json!(run.id.to_string());
            let route = format!("/repos/{}/check-runs", run.repo);
            let created =
                self.with_retry(&format!("POST {route}"), || client._post(route.as_str(), Some(&create))).await?;
            self.created_check_run(run.id, &created);
            return Ok(());
        };
        let route = format!("/repos/{}/check-runs/{id}", run.repo);
        self.with_retry(&format!("PATCH {route}"), || client._patch(route.as_str(), Some(&body))).await.map(|_| ())
    }
}
