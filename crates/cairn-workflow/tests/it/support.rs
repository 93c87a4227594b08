//! What the workflow engine's test files share: reading a run and its lease, and a
//! clock the test moves.

use std::sync::Arc;

use cairn_log::{EventFilter, RecordedEvent, args};
use cairn_types::WorkflowId;
use cairn_workflow::{Engine, ManualClock, RunWithSteps};
use chrono::{DateTime, Utc};

/// A run with its steps, as the engine's projections hold it.
pub async fn run_state(engine: &Engine, id: WorkflowId) -> anyhow::Result<RunWithSteps> {
    let mut reader = engine.store().db().reader().await?;
    cairn_workflow::state::load(&mut reader.conn(), id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no run {id}"))
}

/// The events of a run's request, in the order of the log.
pub async fn run_events(engine: &Engine, id: WorkflowId) -> anyhow::Result<Vec<RecordedEvent>> {
    let filter = EventFilter {
        correlation_id: Some(run_state(engine, id).await?.run.correlation_id),
        ..EventFilter::default()
    };
    let mut reader = engine.store().db().reader().await?;
    Ok(reader.conn().read_events(&filter).await?)
}

/// When the lease on a run ends, if anyone holds one.
pub async fn lease_expiry(
    engine: &Engine,
    id: WorkflowId,
) -> anyhow::Result<Option<DateTime<Utc>>> {
    let mut reader = engine.store().db().reader().await?;
    let row = reader
        .conn()
        .fetch_optional(
            "SELECT expires_at FROM workflow_leases WHERE run_id = $1",
            args![id],
        )
        .await?;
    Ok(row.map(|row| row.get("expires_at")).transpose()?)
}

/// A clock stopped at the present, moved only by the test.
pub fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(Utc::now()))
}
