//! The `.orch.yml` language ([`pipeline`]) and the planner ([`plan`]): from a file to what
//! runs for an event. Pure: no Docker, no network, no clock; the only I/O is reading
//! pipeline files (and their includes).

pub mod import;
pub mod pipeline;
pub mod plan;
