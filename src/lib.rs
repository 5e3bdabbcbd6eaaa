//! orch: a CI/CD pipeline runner. See `docs/ARCHITECTURE.md` for the map.
//!
//! Data flows one way: [`pipeline`] (the `.orch.yml` language) -> [`plan`] (what runs, for
//! an event) -> the scheduler and a backend that runs steps -> events -> reporters.
//!
//! This package is the binary and its faces: the command line, `orch ci`, the CLI's client
//! of a server, `orch doctor`, `orch init`. The language, the engine and the server are
//! crates of their own (`crates/`), re-exported here under their old paths.

pub use orch_engine::{cache, clock, confined, exec, fmt, git, job, report, sched, secrets, setup, tree};
pub use orch_lang::{pipeline, plan};
pub use orch_server::{checkout, github, server};

pub mod agent;
pub mod ci;
pub mod cli;
pub mod client;
pub mod doctor;
pub mod error;
pub mod gate;
pub mod import;
pub mod init;
pub mod terminal;
pub mod tokens;
