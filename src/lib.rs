//! orch: a CI/CD pipeline runner. See `docs/ARCHITECTURE.md` for the map.
//!
//! Data flows one way: [`pipeline`] (the `.orch.yml` language) -> [`plan`] (what runs, for
//! an event) -> the scheduler and a backend that runs steps -> events -> reporters.

pub mod cache;
pub mod checkout;
pub mod ci;
pub mod cli;
pub mod client;
pub mod clock;
pub mod confined;
pub mod doctor;
pub mod error;
pub mod exec;
pub mod fmt;
pub mod git;
pub mod github;
pub mod init;
pub mod pipeline;
pub mod plan;
pub mod report;
pub mod sched;
pub mod secrets;
pub mod server;
pub mod setup;
