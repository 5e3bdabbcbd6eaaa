//! `orch token`: named API tokens, one per person, on the server's machine against its
//! database (as `orch agent-token`). A named token identifies who approves a deployment.

use std::path::PathBuf;

use crate::error::{Error, exit};

/// Where a server keeps its records, for the commands run on its machine against them
/// (`orch token`, `orch agent-token`).
#[derive(Debug, clap::Args)]
pub struct ServerData {
    /// The server's data directory [default: /var/lib/orch as root, else
    /// ~/.local/share/orch].
    #[arg(long, env = "ORCH_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// The server's database when it is PostgreSQL (`postgres://...`, as `orch serve
    /// --database`) [default: the SQLite file in the data directory].
    #[arg(long, env = "ORCH_DATABASE", global = true, hide_env_values = true)]
    pub database: Option<String>,
}

impl ServerData {
    /// Opens the server's database: PostgreSQL when given, else the data directory's file.
    pub fn open(self) -> Result<crate::server::db::Db, Error> {
        use crate::server::db;
        let at = match self.database.filter(|d| !d.trim().is_empty()) {
            Some(url) => db::Location::parse(url.trim()),
            None => db::Location::Sqlite(
                self.data_dir.unwrap_or_else(crate::server::config::default_data_dir).join("orch.db"),
            ),
        };
        db::Db::open_at(&at).map_err(|e| Error::Remote(e.to_string()))
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum ApiTokenCommand {
    /// Create a named token and print it (shown once; only its hash is stored).
    Create {
        /// The person's name, as environments' `approval.approvers` list it.
        name: String,
        /// What the token may do (repeat it): `approve` (vote on deployment gates).
        #[arg(long = "can", value_name = "ABILITY", value_parser = ["approve"])]
        can: Vec<String>,
    },
    /// List the named tokens: abilities, created, revoked.
    List,
    /// Revoke a named token: its next request gets 401.
    Revoke { name: String },
}

pub async fn run(command: ApiTokenCommand, data: ServerData) -> Result<u8, Error> {
    use crate::server::agents;
    let db = data.open()?;
    let db_err = |e: crate::server::db::DbError| Error::Remote(e.to_string());
    match command {
        ApiTokenCommand::Create { name, mut can } => {
            if !crate::pipeline::spec::Names::Step.check(&name) {
                return Err(Error::Usage(format!(
                    "a token's name is letters, digits, `.`, `_` and `-`, starting with a letter or digit; got `{name}`"
                )));
            }
            can.sort();
            can.dedup();
            let token = agents::new_token().map_err(|e| Error::io("cannot read /dev/urandom", e))?;
            let token = token.replacen("orch_agent_", "orch_api_", 1);
            if !db.create_api_token(name.clone(), agents::token_hash(&token), can.clone()).await.map_err(db_err)? {
                return Err(Error::Usage(format!(
                    "`{name}` has a live token already (revoke it first to give `{name}` a new one)"
                )));
            }
            let what = if can.is_empty() { "no abilities".to_string() } else { format!("may {}", can.join(", ")) };
            eprintln!("token `{name}` created ({what}); the token (shown once):");
            println!("{token}");
        }
        ApiTokenCommand::List => {
            let rows = db.api_tokens().await.map_err(db_err)?;
            if rows.is_empty() {
                eprintln!("no named tokens (create one with `orch token create NAME --can approve`)");
            }
            for t in rows {
                let state = if t.revoked_at.is_some() { " revoked" } else { "" };
                let can = if t.abilities.is_empty() { "-".to_string() } else { t.abilities.join(",") };
                println!(
                    "{}{state}\tcan: {can}\tcreated: {}",
                    t.name,
                    crate::clock::format_utc(t.created_at, "%Y-%m-%d %H:%M UTC")
                );
            }
        }
        ApiTokenCommand::Revoke { name } => {
            if !db.revoke_api_token(name.clone()).await.map_err(db_err)? {
                return Err(Error::Usage(format!("no token `{name}` that is live")));
            }
            eprintln!("token `{name}` revoked: its next request gets 401");
        }
    }
    Ok(exit::SUCCESS)
}
