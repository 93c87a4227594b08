//! A durable workflow engine whose history is events in the log.
//!
//! A workflow is Rust code made of named steps. Its [`Workflow::decide`] is pure: from
//! the input and the recorded history it returns the next [`Decision`]. The engine
//! performs it and records the outcome as `workflow.*` events, appended in the same
//! transaction as the step's own writes; their handlers keep the `workflow_runs` and
//! `workflow_steps` projections. So:
//!
//! - a completed step is never performed again: after a crash the engine resumes from
//!   the record;
//! - a step that acts outside the database ([`Effect::External`]) records its start
//!   first, so an interrupted attempt is known to be in doubt;
//! - retries back off exponentially up to a per-step limit, and an error says whether
//!   retrying can help;
//! - timers are durable: a run sleeps in the database, not in memory;
//! - when a step fails for good the run compensates its completed steps, newest first,
//!   each compensation itself durable and retried;
//! - starting a run is an event appended in the caller's transaction;
//! - engines claim runs with leases, and every record is fenced by the lease and by
//!   the run's stream version, so several processes on one PostgreSQL database share
//!   the work and no step is recorded twice;
//! - workflow code that panics fails like code that returns an error: a step's panic is
//!   a failed attempt (retried, then compensated), a `decide` that panics fails the
//!   run, and the engine's loop goes on; [`Engine::health`] says whether that loop is
//!   alive;
//! - a run finishes on the version of its kind's definition it started on: an engine
//!   has one or more versions of each kind, starts new runs on the latest, claims only
//!   runs whose version it has, and [`Engine::check_definitions`] refuses while a run
//!   needs a version it lacks.
//!
//! This crate knows nothing about organizations, email or HTTP.

mod clock;
mod context;
pub mod control;
mod definition;
mod definitions;
mod engine;
pub mod events;
pub mod fit;
mod health;
mod lease;
mod plan;
pub mod state;
#[cfg(test)]
mod testing;

use cairn_log::Migration;

pub use clock::{Clock, ManualClock, SystemClock};
pub use context::StepContext;
pub use control::{ControlError, KindPause};
pub use definition::{
    Decision, Effect, Exhaustion, History, RetryPolicy, StepCall, StepError, StepKind, StepRecord,
    StepStatus, Workflow,
};
pub use definitions::{CheckReport, RunCheck};
pub use engine::{
    DriveReport, ENGINE_ACTOR, Engine, EngineConfig, EngineError, Start, compensation_name,
    start_in,
};
pub use events::routes;
pub use health::EngineHealth;
pub use state::{Pause, PauseScope, Run, RunFilter, RunStatus, RunWithSteps};

/// The engine's tables.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        id: "workflow/0001_workflows",
        sqlite: include_str!("schema/sqlite/0001_workflows.sql"),
        postgres: include_str!("schema/postgres/0001_workflows.sql"),
    },
    Migration {
        id: "workflow/0002_tenant_reads",
        sqlite: include_str!("schema/sqlite/0002_tenant_reads.sql"),
        postgres: include_str!("schema/postgres/0002_tenant_reads.sql"),
    },
    Migration {
        id: "workflow/0003_pauses",
        sqlite: include_str!("schema/sqlite/0003_pauses.sql"),
        postgres: include_str!("schema/postgres/0003_pauses.sql"),
    },
    Migration {
        id: "workflow/0004_definition_version",
        sqlite: include_str!("schema/sqlite/0004_definition_version.sql"),
        postgres: include_str!("schema/postgres/0004_definition_version.sql"),
    },
];
