//! The engine: runs a plan. The scheduler ([`sched`]) drives a backend ([`exec`]: Docker, or
//! a fake in tests) and emits events that reporters ([`report`]) consume; [`setup`] is the
//! one run set-up every face uses. Knows the language, never a face (the CLI, the server).

pub use orch_lang::{pipeline, plan};

pub mod cache;
pub mod clock;
pub mod confined;
pub mod exec;
pub mod exit;
pub mod fmt;
pub mod git;
pub mod job;
pub mod report;
pub mod sched;
pub mod secrets;
pub mod setup;
pub mod tree;
