//! `orch serve`: GitHub webhooks in, runs through the engine, statuses or check runs out,
//! a runs API and a dashboard. Knows the engine and the language, never the command line.

pub use orch_engine::{cache, clock, confined, exec, fmt, git, job, report, sched, secrets, setup, tree};
pub use orch_lang::{pipeline, plan};

pub mod checkout;
pub mod github;
pub mod server;
