//! The CLI side of the runs API: `orch runs`, `orch logs`, `orch cancel`, `orch rerun`,
//! `orch trigger`, `orch deploy`
//! against an `orch serve`, over http:// or https:// (a server behind a TLS-terminating
//! reverse proxy).

use std::io::Write;

use axum::http::{Method, Request, StatusCode, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::error::{Error, exit};

/// Where the server is and the token for actions.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The orch server (http://, or https:// through a TLS-terminating reverse proxy).
    #[arg(long, env = "ORCH_SERVER", default_value = "http://127.0.0.1:8080", global = true)]
    pub server: String,
    /// The server's API token (needed for cancel, rerun and trigger, and for reads on a private
    /// server).
    #[arg(long, env = "ORCH_API_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

pub struct Api {
    base: String,
    token: Option<String>,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// The HTTP client of orch's commands that talk to a server (`orch runs` and the others,
/// `orch agent`): `http://`, or `https://` checked against the system's roots
/// (`SSL_CERT_FILE` or `SSL_CERT_DIR` point at others, e.g. a private CA).
pub fn http_client<B>() -> Result<Client<HttpsConnector<HttpConnector>, B>, Error>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| Error::io("cannot read the system's TLS root certificates", e))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// A server's base URL from `--server` (`flag`): `http://` or `https://`, no trailing `/`.
pub fn server_base(url: &str, flag: &str) -> Result<String, Error> {
    let base = url.trim_end_matches('/').to_string();
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(Error::Usage(format!("{flag} must be an http:// or https:// URL, got `{base}`")));
    }
    Ok(base)
}

fn remote(msg: impl Into<String>) -> Error {
    Error::Remote(msg.into())
}

impl Api {
    pub fn new(args: &ServerArgs) -> Result<Api, Error> {
        let base = server_base(&args.server, "--server")?;
        Ok(Api { base, token: args.token.clone(), http: http_client()? })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        accept: &str,
        body: Option<&Value>,
    ) -> Result<axum::http::Response<axum::body::Body>, Error> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::builder().method(method).uri(&url).header(header::ACCEPT, accept);
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let bytes = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(bytes)).map_err(|e| Error::Usage(format!("{url}: {e}")))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| remote(format!("cannot reach {}: {}", self.base, crate::fmt::root_cause(&e))))?;
        Ok(resp.map(axum::body::Body::new))
    }

    /// Sends a request; a non-2xx answer is an error with the server's message.
    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Bytes, Error> {
        let resp = self.send(method, path, "application/json", body).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(|e| remote(format!("{path}: {e}")))?.to_bytes();
        if !status.is_success() {
            let msg = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
            return Err(remote(format!("{} ({}): {msg}", path, status.as_u16())));
        }
        Ok(body)
    }

    async fn json(&self, method: Method, path: &str) -> Result<Value, Error> {
        self.json_with(method, path, None).await
    }

    async fn json_with(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, Error> {
        let body = self.call(method, path, body).await?;
        serde_json::from_slice(&body).map_err(|e| remote(format!("{path}: not JSON: {e}")))
    }

    /// Streams a followed log (SSE) to `out` until `event: end`; returns the end's data.
    async fn follow(&self, path: &str, out: &mut impl Write) -> Result<String, Error> {
        let resp = self.send(Method::GET, path, "text/event-stream", None).await?;
        if resp.status() != StatusCode::OK {
            let code = resp.status().as_u16();
            let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            return Err(remote(format!("{path} ({code}): {}", String::from_utf8_lossy(&body).trim())));
        }
        let mut body = resp.into_body();
        let mut pending: Vec<u8> = Vec::new();
        let (mut event, mut data) = (String::new(), Vec::<String>::new());
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| remote(format!("{path}: {e}")))?;
            let Ok(chunk) = frame.into_data() else { continue };
            pending.extend_from_slice(&chunk);
            while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(&pending[..nl]).trim_end_matches('\r').to_string();
                pending.drain(..=nl);
                if line.is_empty() {
                    if event == "end" {
                        return Ok(data.join("\n"));
                    }
                    if !data.is_empty() {
                        let _ = writeln!(out, "{}", data.join("\n"));
                        let _ = out.flush();
                    }
                    event.clear();
                    data.clear();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                }
            }
        }
        Err(remote(format!("{path}: the stream ended early")))
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn text<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(|x| x.as_str()).unwrap_or("")
}

/// `orch runs`
pub async fn runs(
    args: &ServerArgs,
    repo: Option<String>,
    branch: Option<String>,
    status: Option<String>,
    limit: u32,
    json: bool,
) -> Result<u8, Error> {
    let api = Api::new(args)?;
    let mut q = vec![format!("limit={limit}")];
    for (k, v) in [("repo", repo), ("branch", branch), ("status", status)] {
        if let Some(v) = v {
            q.push(format!("{k}={}", enc(&v)));
        }
    }
    let v = api.json(Method::GET, &format!("/api/runs?{}", q.join("&"))).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(exit::SUCCESS);
    }
    let now = crate::clock::now_secs();
    let mut rows =
        vec![["RUN", "STATUS", "REPO", "REF", "COMMIT", "EVENT", "CREATED", "TOOK"].map(String::from).to_vec()];
    for r in v["runs"].as_array().into_iter().flatten() {
        let rf = match (r["pr"].as_u64(), text(r, "branch"), text(r, "tag")) {
            (Some(n), b, _) => format!("#{n} ({b})"),
            (None, b, _) if !b.is_empty() => b.to_string(),
            (None, _, t) => t.to_string(),
        };
        let ago = r["created_at"].as_i64().map(|t| format!("{} ago", crate::fmt::secs(now - t))).unwrap_or_default();
        let took = match (r["started_at"].as_i64(), r["finished_at"].as_i64()) {
            (Some(s), Some(f)) => crate::fmt::secs(f - s),
            (Some(s), None) => format!("{}…", crate::fmt::secs(now - s)),
            _ => "-".into(),
        };
        rows.push(vec![
            r["id"].to_string(),
            text(r, "status").to_string(),
            text(r, "repo").to_string(),
            rf,
            text(r, "sha").chars().take(8).collect(),
            text(r, "event").to_string(),
            ago,
            took,
        ]);
    }
    let widths: Vec<usize> = (0..8).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    for r in &rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", line.join("  ").trim_end());
    }
    if rows.len() == 1 {
        println!("(no runs)");
    } else if let Some(next) = v["next"].as_i64() {
        println!("(more: --limit, or the API's ?before={next})");
    }
    Ok(exit::SUCCESS)
}

fn terminal(status: &str) -> bool {
    !matches!(status, "queued" | "running")
}

/// `orch logs RUN [STEP] [--follow]`
pub async fn logs(args: &ServerArgs, run: i64, step: Option<String>, follow: bool) -> Result<u8, Error> {
    let api = Api::new(args)?;
    let mut out = std::io::stdout().lock();
    let path = |s: &str| format!("/api/runs/{run}/logs/{}", enc(s));
    if let Some(step) = step {
        if follow {
            api.follow(&format!("{}?follow=1", path(&step)), &mut out).await?;
        } else {
            let body = api.call(Method::GET, &path(&step), None).await?;
            let _ = out.write_all(&body);
        }
        return Ok(exit::SUCCESS);
    }
    // Every step, in the order they started; followed, until the run is over.
    let mut done: Vec<String> = Vec::new();
    loop {
        let v = api.json(Method::GET, &format!("/api/runs/{run}")).await?;
        let over = terminal(text(&v["run"], "status"));
        let steps: Vec<(String, String, i64, String)> = v["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                let attempts = s["attempts"].as_i64().unwrap_or(0);
                (text(s, "name").to_string(), text(s, "status").to_string(), attempts, text(s, "message").to_string())
            })
            .collect();
        for (name, status, attempts, message) in steps {
            if done.contains(&name) || status == "skipped" {
                continue;
            }
            let _ = writeln!(out, "==> {name} <==");
            // A step a re-run kept did not run: it has no log here.
            if status == "passed" && attempts == 0 {
                let _ = writeln!(out, "({message})");
                done.push(name);
                continue;
            }
            if follow {
                let end = api.follow(&format!("{}?follow=1", path(&name)), &mut out).await?;
                let _ = writeln!(out, "==> {name}: {end} <==");
            } else {
                match api.call(Method::GET, &path(&name), None).await {
                    Ok(body) => {
                        let _ = out.write_all(&body);
                    }
                    Err(e) => {
                        let _ = writeln!(out, "({e})");
                    }
                }
            }
            done.push(name);
        }
        if !follow || over {
            if follow {
                let v = api.json(Method::GET, &format!("/api/runs/{run}")).await?;
                let _ = writeln!(out, "run {run}: {} ({})", text(&v["run"], "status"), text(&v["run"], "reason"));
            }
            return Ok(exit::SUCCESS);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// `orch cancel RUN`
pub async fn cancel(args: &ServerArgs, run: i64) -> Result<u8, Error> {
    let v = Api::new(args)?.json(Method::POST, &format!("/api/runs/{run}/cancel")).await?;
    println!("run {run}: {}", text(&v, "status"));
    Ok(exit::SUCCESS)
}

/// `orch approve RUN [STEP]`, `orch reject RUN [STEP]`: a vote on a waiting deployment, as
/// the person the token names.
pub async fn vote(
    args: &ServerArgs,
    run: i64,
    step: Option<String>,
    environment: Option<String>,
    approve: bool,
) -> Result<u8, Error> {
    let body = serde_json::json!({ "step": step, "environment": environment });
    let what = if approve { "approve" } else { "reject" };
    let v = Api::new(args)?.json_with(Method::POST, &format!("/api/runs/{run}/{what}"), Some(&body)).await?;
    let gate = &v["gate"];
    let approved: Vec<&str> = gate["votes"]
        .as_array()
        .map(|vs| vs.iter().filter(|x| x["vote"] == "approve").filter_map(|x| x["who"].as_str()).collect())
        .unwrap_or_default();
    let state = match text(gate, "status") {
        "waiting" => format!("waiting: {} of {} approved ({})", approved.len(), gate["required"], approved.join(", ")),
        "approved" => format!("approved by {}", approved.join(", ")),
        other => format!("{other}{}", gate["reason"].as_str().map(|r| format!(": {r}")).unwrap_or_default()),
    };
    println!("run {run}: {}: {state}", text(gate, "environment"));
    Ok(exit::SUCCESS)
}

/// `orch trigger REPO --branch B [--sha S]`: a manual run.
pub async fn trigger(args: &ServerArgs, repo: &str, branch: &str, sha: Option<&str>) -> Result<u8, Error> {
    let mut body = serde_json::json!({ "repo": repo, "branch": branch });
    if let Some(sha) = sha {
        body["sha"] = sha.into();
    }
    let v = Api::new(args)?.json_with(Method::POST, "/api/runs", Some(&body)).await?;
    println!("run {} queued ({repo} {branch}{})", v["run"], sha.map(|s| format!(" at {s}")).unwrap_or_default());
    Ok(exit::SUCCESS)
}

/// `orch deploy ENV --repo R [--commit SHA]`: a deploy run (a rollback without a commit).
pub async fn deploy(args: &ServerArgs, env: &str, repo: &str, commit: Option<&str>) -> Result<u8, Error> {
    let mut body = serde_json::json!({ "repo": repo });
    if let Some(sha) = commit {
        body["sha"] = sha.into();
    }
    let v =
        Api::new(args)?.json_with(Method::POST, &format!("/api/environments/{}/deploy", enc(env)), Some(&body)).await?;
    let what = if commit.is_some() { "deploy" } else { "rollback" };
    println!("run {} queued ({what} of {repo} {} to {env})", v["run"], text(&v, "sha"));
    Ok(exit::SUCCESS)
}

/// `orch rerun RUN [--failed]`
pub async fn rerun(args: &ServerArgs, run: i64, failed: bool) -> Result<u8, Error> {
    let q = if failed { "?failed=true" } else { "" };
    let v = Api::new(args)?.json(Method::POST, &format!("/api/runs/{run}/rerun{q}")).await?;
    println!("run {} queued (re-run of {run}{})", v["run"], if failed { ", failed steps only" } else { "" });
    Ok(exit::SUCCESS)
}
