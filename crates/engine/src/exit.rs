//! Exit codes of `orch`. Stable: scripts depend on them.

/// The pipeline passed (or the command did what it was asked).
pub const SUCCESS: u8 = 0;
/// A step failed.
pub const FAILED: u8 = 1;
/// The pipeline file or the command line is invalid.
pub const INVALID: u8 = 2;
/// Infrastructure: Docker unreachable, an image missing, git unreadable, I/O.
pub const INFRA: u8 = 3;
/// Interrupted (Ctrl-C or SIGTERM); the run was cancelled and cleaned up.
pub const INTERRUPTED: u8 = 130;
