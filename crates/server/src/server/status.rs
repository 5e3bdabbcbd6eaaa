//! The statuses of runs and steps on the server, one enum each, one spelling everywhere:
//! the database, the API, the dashboard, the live feed.

use serde::{Deserialize, Serialize};

use crate::sched::{RunStatus, StepStatus};

/// Where a run of the server stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Queued,
    Running,
    Success,
    Failure,
    /// The run could not be carried out (a clone, Docker, a step that could not start).
    Error,
    Cancelled,
    /// Nothing to run for its event (not triggered, no step planned).
    Skipped,
}

/// Where a step of a server run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Planned, not started yet: in views, and stored only for a step whose deployment
    /// waits for approval (its message says for whom).
    Pending,
    Running,
    Passed,
    Failed,
    TimedOut,
    Cancelled,
    Error,
    Skipped,
}

macro_rules! spelled {
    ($ty:ident { $($v:ident => $s:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, in the order they are listed.
            pub const ALL: &'static [$ty] = &[$($ty::$v),+];

            /// The one spelling (database, API, dashboard).
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$v => $s),+ }
            }

            pub fn parse(s: &str) -> Option<$ty> {
                match s { $($s => Some($ty::$v),)+ _ => None }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

    };
}

spelled!(RunState {
    Queued => "queued",
    Running => "running",
    Success => "success",
    Failure => "failure",
    Error => "error",
    Cancelled => "cancelled",
    Skipped => "skipped",
});

spelled!(StepState {
    Pending => "pending",
    Running => "running",
    Passed => "passed",
    Failed => "failed",
    TimedOut => "timed_out",
    Cancelled => "cancelled",
    Error => "error",
    Skipped => "skipped",
});

impl RunState {
    /// Queued or running: the run may still change.
    pub fn is_active(self) -> bool {
        matches!(self, RunState::Queued | RunState::Running)
    }
}

impl StepState {
    /// The step is over: its log does not grow.
    pub fn is_done(self) -> bool {
        !matches!(self, StepState::Pending | StepState::Running)
    }

    /// How people read it (`timed out`).
    pub fn label(self) -> &'static str {
        match self {
            StepState::TimedOut => "timed out",
            s => s.as_str(),
        }
    }
}

impl From<RunStatus> for RunState {
    fn from(s: RunStatus) -> Self {
        match s {
            RunStatus::Success => RunState::Success,
            RunStatus::Failure => RunState::Failure,
            RunStatus::Cancelled => RunState::Cancelled,
            RunStatus::Error => RunState::Error,
        }
    }
}

impl From<StepStatus> for StepState {
    fn from(s: StepStatus) -> Self {
        match s {
            StepStatus::Passed => StepState::Passed,
            StepStatus::Failed => StepState::Failed,
            StepStatus::TimedOut => StepState::TimedOut,
            StepStatus::Cancelled => StepState::Cancelled,
            StepStatus::Error => StepState::Error,
            StepStatus::Skipped => StepState::Skipped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_spelling_in_serde_sql_and_text() {
        for s in StepState::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!(s.as_str()));
            assert_eq!(StepState::parse(s.as_str()), Some(*s));
        }
        for s in RunState::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!(s.as_str()));
        }
        // The engine's step status serializes the same way (orch ci --json).
        for s in [StepStatus::Passed, StepStatus::TimedOut, StepStatus::Skipped] {
            assert_eq!(serde_json::to_value(s).unwrap(), serde_json::to_value(StepState::from(s)).unwrap());
        }
        // (How the database stores them: db::sql's tests.)
    }
}
