//! What the pure decisions' table tests share: a run of a kind, at fixed times.

use chrono::{DateTime, Utc};
use serde_json::Value;

use cairn_types::{CorrelationId, WorkflowId};

use crate::{Run, RunStatus};

/// `seconds` after a fixed instant.
pub(crate) fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("a valid time")
}

/// A run of `kind` at definition version 1, due at [`at`]`(0)`.
pub(crate) fn run(kind: &str, status: RunStatus, input: Value) -> Run {
    Run {
        id: WorkflowId::new_v7(),
        kind: kind.to_owned(),
        definition_version: 1,
        status,
        input,
        output: None,
        failure: None,
        correlation_id: CorrelationId::new_v7(),
        org_id: None,
        actor: None,
        parent_id: None,
        current_step: None,
        version: 1,
        next_run_at: Some(at(0)),
        created_at: at(0),
        updated_at: at(0),
        paused: None,
    }
}
