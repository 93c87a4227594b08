//! Pausing and resuming: one run, or every run of a kind, as events of the
//! `workflow_control` stream type.
//!
//! A pause is recorded, not kept in memory: it is in the log (hash-chained, on the
//! feed, in the run's timeline), its handlers keep `workflow_runs.paused_*` and
//! `workflow_kind_pauses`, and the engine claims no paused run. A paused kind still
//! records new runs (their start commits with the command that asks for them) and runs
//! none of them; timers stay due, and fire once the pause is lifted. A step in flight
//! when the pause lands finishes and is recorded: the run stops after it. After a crash
//! a resume continues where the run stopped, since everything it needs is recorded.
//!
//! The pauses are on streams of their own (one per run, one per kind), not on the
//! run's stream: a pause never conflicts with the record of a step in flight.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use cairn_dispatch::{
    EventPayload, Handler, HandlerError, Operator, ProjectionTable, Projections, RegistryBuilder,
    payload,
};
use cairn_log::{AppendError, AppendRequest, Conn, DbError, RecordedEvent, Tx, WriteOptions, args};
use cairn_types::{Metadata, Position, Reason, StreamId, StreamType, WorkflowId};

use crate::definition::StepKind;
use crate::engine::Engine;
use crate::state::{PauseScope, Run, RunStatus, load_run};

/// The stream type of pauses and resumes.
pub const STREAM_TYPE: &str = "workflow_control";

/// A run stops after the step in flight, until it is resumed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunPaused {
    pub run_id: WorkflowId,
    pub reason: Reason,
}

/// A paused run goes on where it stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunResumed {
    pub run_id: WorkflowId,
    pub reason: Reason,
}

/// A run is cancelled: it stops after the step in flight and undoes what it did, as
/// after a failure, and ends failed with the reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCancelled {
    pub run_id: WorkflowId,
    pub reason: Reason,
}

/// A failed run that undid nothing is tried again from the step that failed, with a
/// fresh set of attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRetried {
    pub run_id: WorkflowId,
    pub reason: Reason,
}

/// Every run of a kind stops after its step in flight; new runs are recorded and wait.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KindPaused {
    pub kind: String,
    pub reason: Reason,
}

/// The runs of a paused kind go on where they stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KindResumed {
    pub kind: String,
    pub reason: Reason,
}

impl EventPayload for RunPaused {
    const EVENT_TYPE: &'static str = "workflow_control.run_paused";
    const DESCRIPTION: &'static str = "A workflow run was paused (by an operator, or by the engine when a step's attempts ran out): it stops after the step in flight.";
}

impl EventPayload for RunResumed {
    const EVENT_TYPE: &'static str = "workflow_control.run_resumed";
    const DESCRIPTION: &'static str = "A paused workflow run goes on where it stopped.";
}

impl EventPayload for RunCancelled {
    const EVENT_TYPE: &'static str = "workflow_control.run_cancelled";
    const DESCRIPTION: &'static str = "A workflow run was cancelled: it stops after the step in flight, undoes what it did, and ends failed with the reason.";
}

impl EventPayload for RunRetried {
    const EVENT_TYPE: &'static str = "workflow_control.run_retried";
    const DESCRIPTION: &'static str =
        "A failed workflow run that undid nothing is tried again from the step that failed.";
}

impl EventPayload for KindPaused {
    const EVENT_TYPE: &'static str = "workflow_control.kind_paused";
    const DESCRIPTION: &'static str =
        "Every run of a workflow kind was paused: new runs are recorded and wait, timers stay due.";
}

impl EventPayload for KindResumed {
    const EVENT_TYPE: &'static str = "workflow_control.kind_resumed";
    const DESCRIPTION: &'static str =
        "The runs of a paused workflow kind go on where they stopped.";
}

/// The stream of one run's pauses.
fn run_stream(run_id: WorkflowId) -> StreamId {
    StreamId::named("workflow-run-pauses", run_id.as_uuid().as_bytes())
}

/// The stream of one kind's pauses.
fn kind_stream(kind: &str) -> StreamId {
    StreamId::named("workflow-kind", kind.as_bytes())
}

fn stream_type() -> StreamType {
    StreamType::parse(STREAM_TYPE).expect("a valid stream type")
}

fn actor_of(event: &RecordedEvent) -> String {
    event
        .metadata
        .actor
        .as_ref()
        .map_or_else(|| "unknown".to_owned(), ToString::to_string)
}

struct OnRunPaused;

#[async_trait]
impl Handler for OnRunPaused {
    async fn handle(
        &self,
        event: &RecordedEvent,
        p: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        let paused: RunPaused = payload(event)?;
        let changed = p
            .execute(
                "UPDATE workflow_runs SET paused_at = $2, paused_by = $3, pause_reason = $4 WHERE id = $1",
                args![paused.run_id, event.created_at, actor_of(event), paused.reason.as_str()],
            )
            .await?;
        if changed == 0 {
            return Err(HandlerError::failed(format!(
                "there is no workflow run {}",
                paused.run_id
            )));
        }
        Ok(())
    }
}

struct OnRunResumed;

#[async_trait]
impl Handler for OnRunResumed {
    async fn handle(
        &self,
        event: &RecordedEvent,
        p: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        let resumed: RunResumed = payload(event)?;
        let changed = p
            .execute(
                "UPDATE workflow_runs SET paused_at = NULL, paused_by = NULL, pause_reason = NULL \
                 WHERE id = $1",
                args![resumed.run_id],
            )
            .await?;
        if changed == 0 {
            return Err(HandlerError::failed(format!(
                "there is no workflow run {}",
                resumed.run_id
            )));
        }
        Ok(())
    }
}

/// Refuses a decision about a run that does not exist; a run that exists but is no
/// longer as the decision found it (a repeated dispatch) is left as it is.
async fn run_exists(p: &mut Projections<'_>, run_id: WorkflowId) -> Result<(), HandlerError> {
    let found = p
        .fetch_optional("SELECT id FROM workflow_runs WHERE id = $1", args![run_id])
        .await?;
    if found.is_none() {
        return Err(HandlerError::failed(format!(
            "there is no workflow run {run_id}"
        )));
    }
    Ok(())
}

/// When a cancelled or retried run is due: at once, whatever the engine's clock says
/// (a test's stopped clock may be behind the time its events were stored).
const DUE_AT_ONCE: DateTime<Utc> = DateTime::<Utc>::UNIX_EPOCH;

struct OnRunCancelled;

#[async_trait]
impl Handler for OnRunCancelled {
    async fn handle(
        &self,
        event: &RecordedEvent,
        p: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        let cancelled: RunCancelled = payload(event)?;
        // A cancel ends a pause: the run undoes what it did at once.
        let changed = p
            .execute(
                "UPDATE workflow_runs SET status = 'compensating', failure = $3, next_run_at = $4, \
                 paused_at = NULL, paused_by = NULL, pause_reason = NULL, updated_at = $2 \
                 WHERE id = $1 AND status = 'running'",
                args![
                    cancelled.run_id,
                    event.created_at,
                    format!(
                        "cancelled by {}: {}",
                        actor_of(event),
                        cancelled.reason.as_str()
                    ),
                    DUE_AT_ONCE
                ],
            )
            .await?;
        if changed == 0 {
            run_exists(p, cancelled.run_id).await?;
        }
        Ok(())
    }
}

struct OnRunRetried;

#[async_trait]
impl Handler for OnRunRetried {
    async fn handle(
        &self,
        event: &RecordedEvent,
        p: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        let retried: RunRetried = payload(event)?;
        let changed = p
            .execute(
                "UPDATE workflow_runs SET status = 'running', failure = NULL, next_run_at = $3, \
                 updated_at = $2 WHERE id = $1 AND status = 'failed'",
                args![retried.run_id, event.created_at, DUE_AT_ONCE],
            )
            .await?;
        if changed == 0 {
            run_exists(p, retried.run_id).await?;
        }
        p.execute(
            "UPDATE workflow_steps SET status = 'retrying', attempts = 0, wake_at = $2, \
             finished_at = NULL WHERE run_id = $1 AND status = 'failed' AND kind = 'action'",
            args![retried.run_id, DUE_AT_ONCE],
        )
        .await?;
        Ok(())
    }
}

struct OnKindPaused;

#[async_trait]
impl Handler for OnKindPaused {
    async fn handle(
        &self,
        event: &RecordedEvent,
        p: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        let paused: KindPaused = payload(event)?;
        p.execute(
            "INSERT INTO workflow_kind_pauses (kind, paused_by, reason, since, position)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (kind) DO UPDATE SET paused_by = excluded.paused_by,
                 reason = excluded.reason, since = excluded.since, position = excluded.position",
            args![
                paused.kind.as_str(),
                actor_of(event),
                paused.reason.as_str(),
                event.created_at,
                event.position
            ],
        )
        .await?;
        Ok(())
    }
}

struct OnKindResumed;

#[async_trait]
impl Handler for OnKindResumed {
    async fn handle(
        &self,
        event: &RecordedEvent,
        p: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        let resumed: KindResumed = payload(event)?;
        p.execute(
            "DELETE FROM workflow_kind_pauses WHERE kind = $1",
            args![resumed.kind.as_str()],
        )
        .await?;
        Ok(())
    }
}

/// Registers the pauses' router and table.
pub(crate) fn routes(builder: RegistryBuilder) -> RegistryBuilder {
    builder
        .router(STREAM_TYPE, |r| {
            r.event::<RunPaused>(OnRunPaused)
                .event::<RunResumed>(OnRunResumed)
                .event::<RunCancelled>(OnRunCancelled)
                .event::<RunRetried>(OnRunRetried)
                .event::<KindPaused>(OnKindPaused)
                .event::<KindResumed>(OnKindResumed)
                .not_pausable("pauses and resumes are what resumes a pause")
        })
        .projection(ProjectionTable {
            name: "workflow_kind_pauses",
            key: &["kind"],
        })
}

/// A paused workflow kind: who paused it, why, since when, and how many of its runs
/// wait.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct KindPause {
    pub kind: String,
    pub paused_by: String,
    pub reason: String,
    pub since: DateTime<Utc>,
    pub position: Position,
}

/// Every paused workflow kind.
pub async fn kind_pauses(conn: &mut Conn<'_>) -> Result<Vec<KindPause>, DbError> {
    let rows = conn
        .fetch_all(
            "SELECT kind, paused_by, reason, since, position FROM workflow_kind_pauses ORDER BY kind",
            args![],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(KindPause {
                kind: row.get("kind")?,
                paused_by: row.get("paused_by")?,
                reason: row.get("reason")?,
                since: row.get("since")?,
                position: Position::new(row.get("position")?),
            })
        })
        .collect()
}

/// Why a pause or a resume was refused. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("there is no workflow run {run_id}")]
    NotFound { run_id: WorkflowId },
    #[error("there is no workflow kind {kind:?}; the kinds are {}", kinds.join(", "))]
    UnknownKind { kind: String, kinds: Vec<String> },
    #[error("{what} cannot be paused: {why}")]
    NotPausable { what: String, why: &'static str },
    #[error("workflow run {run_id} is {status}: a finished run cannot be paused")]
    Finished {
        run_id: WorkflowId,
        status: crate::state::RunStatus,
    },
    #[error("{what} is already paused (by {by}, since {}: {reason})", since.format("%Y-%m-%d %H:%M:%S UTC"))]
    AlreadyPaused {
        what: String,
        by: String,
        reason: String,
        since: DateTime<Utc>,
    },
    #[error("{what} is not paused")]
    NotPaused { what: String },
    #[error("workflow run {run_id} cannot be cancelled: {why}")]
    NotCancellable { run_id: WorkflowId, why: String },
    #[error("workflow run {run_id} cannot be tried again: {why}")]
    NotRetriable { run_id: WorkflowId, why: String },
    #[error("could not record the decision")]
    Append(#[from] AppendError),
    #[error("database error")]
    Database(#[from] DbError),
}

impl Engine {
    /// Pauses one run: it stops after the step in flight, until [`Engine::resume_run`].
    pub async fn pause_run(
        &self,
        run_id: WorkflowId,
        by: &Operator,
        reason: Reason,
    ) -> Result<Run, ControlError> {
        let engine = self.clone();
        self.control_run(run_id, by, move |run| {
            if let Some(why) = engine.not_pausable(&run.kind) {
                return Err(ControlError::NotPausable {
                    what: format!("workflow run {run_id} (a {} run)", run.kind),
                    why,
                });
            }
            if run.status.is_finished() {
                return Err(ControlError::Finished {
                    run_id,
                    status: run.status,
                });
            }
            match &run.paused {
                Some(pause) if pause.scope == PauseScope::Run => Err(ControlError::AlreadyPaused {
                    what: format!("workflow run {run_id}"),
                    by: pause.paused_by.clone(),
                    reason: pause.reason.clone(),
                    since: pause.since,
                }),
                _ => Ok(RunPaused {
                    run_id,
                    reason: reason.clone(),
                }
                .to_event(Metadata::default())),
            }
        })
        .await
    }

    /// Resumes a paused run: it goes on where it stopped (unless its kind is paused
    /// too).
    pub async fn resume_run(
        &self,
        run_id: WorkflowId,
        by: &Operator,
        reason: Reason,
    ) -> Result<Run, ControlError> {
        let run = self
            .control_run(run_id, by, move |run| match &run.paused {
                Some(pause) if pause.scope == PauseScope::Run => Ok(RunResumed {
                    run_id,
                    reason: reason.clone(),
                }
                .to_event(Metadata::default())),
                Some(_) => Err(ControlError::NotPaused {
                    what: format!(
                        "workflow run {run_id} (its kind {} is paused: resume the kind)",
                        run.kind
                    ),
                }),
                None => Err(ControlError::NotPaused {
                    what: format!("workflow run {run_id}"),
                }),
            })
            .await?;
        self.wake();
        Ok(run)
    }

    /// Cancels a running run: it stops after the step in flight, undoes what it did
    /// (its compensations, newest first), and ends failed with the reason. A paused run
    /// is cancelled at once.
    pub async fn cancel_run(
        &self,
        run_id: WorkflowId,
        by: &Operator,
        reason: Reason,
    ) -> Result<Run, ControlError> {
        let run = self
            .control_run(run_id, by, move |run| {
                if run.status != RunStatus::Running {
                    return Err(ControlError::NotCancellable {
                        run_id,
                        why: format!("it is {}", run.status.as_str()),
                    });
                }
                Ok(RunCancelled {
                    run_id,
                    reason: reason.clone(),
                }
                .to_event(Metadata::default()))
            })
            .await?;
        self.wake();
        Ok(run)
    }

    /// Tries a failed run again from the step that failed, with a fresh set of
    /// attempts: only a run that undid nothing (a run whose compensations ran is undone,
    /// and is started again instead).
    pub async fn retry_run(
        &self,
        run_id: WorkflowId,
        by: &Operator,
        reason: Reason,
    ) -> Result<Run, ControlError> {
        // A failed run's steps no longer change (but by a retry, which this decides).
        let undone = {
            let mut reader = self.store().db().reader().await?;
            crate::state::load(&mut reader.conn(), run_id)
                .await?
                .map_or(0, |run| {
                    run.steps
                        .iter()
                        .filter(|step| step.kind == StepKind::Compensation)
                        .count()
                })
        };
        if undone > 0 {
            return Err(ControlError::NotRetriable {
                run_id,
                why: format!(
                    "its compensations ran ({undone} of them): what it did is undone, so start it again instead"
                ),
            });
        }
        let run = self
            .control_run(run_id, by, move |run| {
                if run.status != RunStatus::Failed {
                    return Err(ControlError::NotRetriable {
                        run_id,
                        why: format!("it is {}, not failed", run.status.as_str()),
                    });
                }
                Ok(RunRetried {
                    run_id,
                    reason: reason.clone(),
                }
                .to_event(Metadata::default()))
            })
            .await?;
        self.wake();
        Ok(run)
    }

    /// Appends the event `decide` makes of a run's current state, on the run's pause
    /// stream, in the run's timeline and tenant.
    async fn control_run(
        &self,
        run_id: WorkflowId,
        by: &Operator,
        decide: impl Fn(&Run) -> Result<cairn_log::NewEvent, ControlError> + Send + Sync + 'static,
    ) -> Result<Run, ControlError> {
        let engine = self.clone();
        let by = by.clone();
        let decide = std::sync::Arc::new(decide);
        self.store()
            .db()
            .write(WriteOptions::default(), move |tx| {
                let engine = engine.clone();
                let by = by.clone();
                let decide = decide.clone();
                Box::pin(async move {
                    tx.lock_head().await?;
                    let run = load_run(&mut tx.conn(), run_id)
                        .await?
                        .ok_or(ControlError::NotFound { run_id })?;
                    let mut event = decide(&run)?;
                    event.metadata = run_metadata(&run, &by);
                    engine.append_control(tx, run_stream(run_id), event).await?;
                    load_run(&mut tx.conn(), run_id)
                        .await?
                        .ok_or(ControlError::NotFound { run_id })
                })
            })
            .await
    }

    /// Pauses every run of a kind: each stops after its step in flight; new runs are
    /// recorded and wait.
    pub async fn pause_kind(
        &self,
        kind: &str,
        by: &Operator,
        reason: Reason,
    ) -> Result<KindPause, ControlError> {
        let kind = self.known_kind(kind)?;
        if let Some(why) = self.not_pausable(&kind) {
            return Err(ControlError::NotPausable {
                what: format!("workflow kind {kind}"),
                why,
            });
        }
        let event = KindPaused {
            kind: kind.clone(),
            reason,
        }
        .to_event(by_metadata(by));
        self.control_kind(kind, true, event).await
    }

    /// Resumes a paused kind: its runs go on where they stopped.
    pub async fn resume_kind(
        &self,
        kind: &str,
        by: &Operator,
        reason: Reason,
    ) -> Result<KindPause, ControlError> {
        let kind = self.known_kind(kind)?;
        let event = KindResumed {
            kind: kind.clone(),
            reason,
        }
        .to_event(by_metadata(by));
        let resumed = self.control_kind(kind, false, event).await?;
        self.wake();
        Ok(resumed)
    }

    /// The kinds of the workflows this engine runs.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.inner.workflows.kinds()
    }

    /// Why runs of `kind` cannot be paused, when they cannot
    /// ([`Workflow::not_pausable`](crate::Workflow::not_pausable)).
    pub fn not_pausable(&self, kind: &str) -> Option<&'static str> {
        self.inner.workflows.latest(kind)?.not_pausable()
    }

    fn known_kind(&self, kind: &str) -> Result<String, ControlError> {
        if self.inner.workflows.latest(kind).is_some() {
            Ok(kind.to_owned())
        } else {
            Err(ControlError::UnknownKind {
                kind: kind.to_owned(),
                kinds: self.kinds().into_iter().map(str::to_owned).collect(),
            })
        }
    }

    /// Appends a kind's pause (`pause`) or resume; returns the pause it made or ended.
    async fn control_kind(
        &self,
        kind: String,
        pause: bool,
        event: cairn_log::NewEvent,
    ) -> Result<KindPause, ControlError> {
        let engine = self.clone();
        self.store()
            .db()
            .write(WriteOptions::default(), move |tx| {
                let engine = engine.clone();
                let kind = kind.clone();
                let event = event.clone();
                Box::pin(async move {
                    tx.lock_head().await?;
                    let find = |pauses: Vec<KindPause>| pauses.into_iter().find(|p| p.kind == kind);
                    let before = find(kind_pauses(&mut tx.conn()).await?);
                    match (&before, pause) {
                        (Some(existing), true) => {
                            return Err(ControlError::AlreadyPaused {
                                what: format!("workflow kind {kind}"),
                                by: existing.paused_by.clone(),
                                reason: existing.reason.clone(),
                                since: existing.since,
                            });
                        }
                        (None, false) => {
                            return Err(ControlError::NotPaused {
                                what: format!("workflow kind {kind}"),
                            });
                        }
                        _ => {}
                    }
                    engine.append_control(tx, kind_stream(&kind), event).await?;
                    let after = find(kind_pauses(&mut tx.conn()).await?);
                    after.or(before).ok_or(ControlError::NotPaused {
                        what: format!("workflow kind {kind}"),
                    })
                })
            })
            .await
    }

    async fn append_control(
        &self,
        tx: &mut Tx,
        stream: StreamId,
        event: cairn_log::NewEvent,
    ) -> Result<(), AppendError> {
        let request = AppendRequest::new(stream_type(), stream, vec![event]);
        self.store().append_applied_in(tx, request).await?;
        Ok(())
    }

    /// Pauses a run from inside the engine's own unit of work (a step's attempts ran
    /// out), unless it is paused already.
    pub(crate) async fn pause_in(
        &self,
        tx: &mut Tx,
        run: &Run,
        reason: Reason,
    ) -> Result<(), AppendError> {
        let current = load_run(&mut tx.conn(), run.id).await?;
        if current.is_some_and(|run| run.paused.is_some_and(|p| p.scope == PauseScope::Run)) {
            return Ok(());
        }
        let by = Operator {
            actor: cairn_types::Actor::service(crate::engine::ENGINE_ACTOR)
                .expect("the engine's actor is a valid service name"),
            correlation_id: run.correlation_id,
        };
        let mut event = RunPaused {
            run_id: run.id,
            reason,
        }
        .to_event(Metadata::default());
        event.metadata = run_metadata(run, &by);
        self.append_control(tx, run_stream(run.id), event).await
    }
}

/// The metadata of a run's pause or resume: in the run's timeline and tenant.
fn run_metadata(run: &Run, by: &Operator) -> Metadata {
    let mut metadata = Metadata::with_correlation(run.correlation_id).actor(by.actor.clone());
    metadata.org_id = run.org_id;
    metadata.extra.insert(
        "decided_in".to_owned(),
        serde_json::Value::String(by.correlation_id.to_string()),
    );
    metadata
}

fn by_metadata(by: &Operator) -> Metadata {
    Metadata::with_correlation(by.correlation_id).actor(by.actor.clone())
}
