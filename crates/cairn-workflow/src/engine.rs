//! The engine: claims runnable runs with leases, asks each workflow what comes next,
//! performs it, and records the outcome as events.
//!
//! Every record is one transaction that (1) checks this engine still holds the run's
//! lease (fencing), (2) appends the workflow.* events with the run's expected stream
//! version, and (3) commits together with whatever the step itself wrote. A step is
//! therefore recorded at most once even if two engines ever raced for a run: the second
//! append would conflict and roll back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::AssertSqlSafe;
use tokio::sync::Notify;

use cairn_dispatch::{Appended, EventPayload, EventStore};
use cairn_log::{AppendError, AppendRequest, Arg, Expected, IntoArg, NewEvent, Outcome, Tx, args};
use cairn_types::{
    Actor, CausationId, CorrelationId, Metadata, OrgId, StreamId, StreamType, WorkflowId,
};

use crate::clock::Clock;
use crate::definition::{
    Decision, Effect, History, StepCall, StepError, StepKind, StepRecord, StepStatus, Workflow,
};
use crate::events::{
    CompensationFailed, CompensationStarted, STREAM_TYPE, StepAttemptFailed, StepCompleted,
    StepFailed, StepStarted, TimerFired, TimerStarted, WorkflowCompleted, WorkflowFailed,
    WorkflowStarted,
};
use crate::state::{Run, RunStatus};

/// The actor of every workflow.* event.
pub const ENGINE_ACTOR: &str = "workflow-engine";

/// Why the engine stopped working on a run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("database error in the workflow engine")]
    Database(#[from] sqlx::Error),
    #[error("could not record workflow progress")]
    Append(#[from] AppendError),
    #[error("workflow run {run_id}: another engine took the lease")]
    LeaseLost { run_id: WorkflowId },
    #[error("workflow run {run_id}: the {event_type} event was not applied: {message}")]
    NotApplied {
        run_id: WorkflowId,
        event_type: String,
        message: String,
    },
}

/// How an engine behaves.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Names this engine in leases and in event metadata.
    pub worker_id: String,
    /// How long a claim lasts without renewal. Renewed at a third of it while a step runs.
    pub lease: Duration,
    /// How often idle workers look for runnable work.
    pub poll_interval: Duration,
    /// How many runs one engine drives at once.
    pub concurrency: usize,
    /// Fault injection for crash tests: after this many records, the engine stops
    /// making progress and says so on stderr, so a test can kill the process at a
    /// known point. `None` in normal operation.
    pub pause_after_records: Option<u64>,
    /// Fault injection for crash tests: after this many external steps have acted
    /// (sent their email) and before the outcome is recorded, the engine stops and
    /// says so on stderr: the in-doubt window. `None` in normal operation.
    pub pause_after_effects: Option<u64>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            worker_id: format!(
                "engine-{}",
                &cairn_types::WorkflowId::new_v7().to_string()[24..]
            ),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(200),
            concurrency: 4,
            pause_after_records: None,
            pause_after_effects: None,
        }
    }
}

/// A run to start.
#[derive(Debug, Clone)]
pub struct Start {
    /// The run's id, chosen by the caller so that it can be named in the command's own
    /// events.
    pub id: WorkflowId,
    pub kind: String,
    pub input: Value,
    pub correlation_id: CorrelationId,
    pub org_id: Option<OrgId>,
    pub actor: Option<Actor>,
    pub parent: Option<WorkflowId>,
}

/// Starts a run inside the caller's transaction: if the caller's work rolls back, the
/// run never existed; if it commits, the run cannot be lost.
pub async fn start_in(
    store: &EventStore,
    tx: &mut Tx,
    start: Start,
    now: DateTime<Utc>,
) -> Result<WorkflowId, AppendError> {
    let id = start.id;
    let mut metadata = Metadata::with_correlation(start.correlation_id);
    metadata.org_id = start.org_id;
    metadata.actor = start.actor;
    let started = WorkflowStarted {
        kind: start.kind,
        input: start.input,
        parent: start.parent,
        at: now,
    };
    let request = AppendRequest::new(
        stream_type(),
        StreamId::from_uuid(id.as_uuid()),
        vec![started.to_event(metadata)],
    )
    .expect(Expected::NoStream);
    let appended = store.append_in(tx, request).await?;
    if let Some(error) = appended.events.iter().find_map(|e| e.outcome.error()) {
        return Err(AppendError::InvalidData {
            index: 0,
            event_type: WorkflowStarted::event_type(),
            reason: format!(
                "the workflow.started handler failed: {} {}",
                error.code, error.message
            ),
        });
    }
    Ok(id)
}

fn stream_type() -> StreamType {
    StreamType::parse(STREAM_TYPE).expect("the workflow stream type is a valid name")
}

/// What a run's lease is.
#[derive(Debug, Clone, Copy)]
struct Lease {
    run_id: WorkflowId,
    epoch: i64,
}

/// What the engine did in one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriveReport {
    /// Runs claimed and driven.
    pub runs_driven: u64,
    /// Records written.
    pub records: u64,
}

struct Inner {
    store: EventStore,
    workflows: BTreeMap<&'static str, Arc<dyn Workflow>>,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
    wake: Notify,
    records: AtomicU64,
    /// External steps that acted, for the fault hook.
    effects: AtomicU64,
}

/// The workflow engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("worker_id", &self.inner.config.worker_id)
            .field(
                "workflows",
                &self.inner.workflows.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// One step attempt's context: its run, its transaction, the event store.
pub struct StepContext<'e> {
    inner: &'e Inner,
    run: &'e Run,
    step: String,
    attempt: u32,
    in_doubt: bool,
    now: DateTime<Utc>,
    tx: Option<Tx>,
}

impl std::fmt::Debug for StepContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepContext")
            .field("run", &self.run.id)
            .field("step", &self.step)
            .field("attempt", &self.attempt)
            .field("in_doubt", &self.in_doubt)
            .finish()
    }
}

impl StepContext<'_> {
    /// The run.
    pub fn run(&self) -> &Run {
        self.run
    }

    /// The step's name.
    pub fn step(&self) -> &str {
        &self.step
    }

    /// Which attempt this is, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// True when an earlier attempt started and never finished (the process stopped):
    /// an external effect may already have happened. Check before repeating it.
    pub fn in_doubt(&self) -> bool {
        self.in_doubt
    }

    /// The engine's time for this attempt.
    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// The event store.
    pub fn store(&self) -> &EventStore {
        &self.inner.store
    }

    /// Metadata for events this step appends: the run's correlation id and tenant, the
    /// run as the cause, the engine as the actor.
    pub fn metadata(&self) -> Metadata {
        let mut metadata = Metadata::with_correlation(self.run.correlation_id)
            .caused_by(CausationId::from_uuid(self.run.id.as_uuid()));
        metadata.org_id = self.run.org_id;
        metadata.actor = Actor::service(ENGINE_ACTOR).ok();
        metadata
            .extra
            .insert("workflow_step".to_owned(), Value::String(self.step.clone()));
        metadata
    }

    /// The step's transaction, begun on first use. It commits together with the
    /// step's record, or not at all.
    pub async fn tx(&mut self) -> Result<&mut Tx, StepError> {
        if self.tx.is_none() {
            self.tx = Some(self.inner.store.db().begin().await?);
        }
        Ok(self.tx.as_mut().expect("just begun"))
    }

    /// Abandons the step's transaction (rolling back what it did so far); the next call
    /// to [`StepContext::tx`] begins a fresh one. For a step that must carry on after a
    /// database error poisoned its transaction.
    pub fn abandon_tx(&mut self) {
        self.tx = None;
    }

    /// Appends events in the step's transaction.
    pub async fn append(&mut self, request: AppendRequest) -> Result<Appended, StepError> {
        let store = self.inner.store.clone();
        let tx = self.tx().await?;
        Ok(store.append_in(tx, request).await?)
    }

    /// Appends events and requires every one of them to be applied: a handler failure
    /// fails the step (permanently: retrying the same event will not help).
    pub async fn append_applied(&mut self, request: AppendRequest) -> Result<Appended, StepError> {
        let appended = self.append(request).await?;
        if let Some(dispatched) = appended.events.iter().find(|d| d.outcome.error().is_some()) {
            let error = dispatched
                .outcome
                .error()
                .map(|e| format!("{} {}", e.code, e.message))
                .unwrap_or_default();
            return Err(StepError::permanent(format!(
                "event {} ({}) was stored but not applied: {error}",
                dispatched.event.position, dispatched.event.event_type
            )));
        }
        Ok(appended)
    }

    /// Starts a child run in the step's transaction.
    pub async fn start_workflow(
        &mut self,
        kind: &str,
        input: Value,
    ) -> Result<WorkflowId, StepError> {
        let start = Start {
            id: WorkflowId::new_v7(),
            kind: kind.to_owned(),
            input,
            correlation_id: self.run.correlation_id,
            org_id: self.run.org_id,
            actor: Actor::service(ENGINE_ACTOR).ok(),
            parent: Some(self.run.id),
        };
        let now = self.now;
        let store = self.inner.store.clone();
        let tx = self.tx().await?;
        Ok(start_in(&store, tx, start, now).await?)
    }
}

/// What to do with a step's outcome.
enum Role<'a> {
    Action,
    Compensation(&'a StepRecord),
}

impl Engine {
    /// An engine for these workflows.
    pub fn new(
        store: EventStore,
        workflows: Vec<Arc<dyn Workflow>>,
        clock: Arc<dyn Clock>,
        config: EngineConfig,
    ) -> Self {
        let workflows = workflows.into_iter().map(|w| (w.kind(), w)).collect();
        Self {
            inner: Arc::new(Inner {
                store,
                workflows,
                clock,
                config,
                wake: Notify::new(),
                records: AtomicU64::new(0),
                effects: AtomicU64::new(0),
            }),
        }
    }

    /// The event store.
    pub fn store(&self) -> &EventStore {
        &self.inner.store
    }

    /// The engine's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    /// Starts a run inside the caller's transaction, and wakes this engine's workers
    /// once the caller commits (they also poll).
    pub async fn start_in(&self, tx: &mut Tx, start: Start) -> Result<WorkflowId, AppendError> {
        let id = start_in(&self.inner.store, tx, start, self.now()).await?;
        self.inner.wake.notify_waiters();
        Ok(id)
    }

    /// Wakes idle workers: call after committing a transaction that started runs.
    pub fn wake(&self) {
        self.inner.wake.notify_waiters();
    }

    /// Drives every run that is runnable now, one after another, until none is left
    /// (runs asleep until later stay asleep). For tests, the demo and one-shot use.
    pub async fn run_until_idle(&self) -> Result<DriveReport, EngineError> {
        let mut report = DriveReport::default();
        let before = self.inner.records.load(Ordering::SeqCst);
        while let Some(lease) = self.claim().await? {
            report.runs_driven += 1;
            // The lease is renewed here too: a one-shot engine may share the database
            // with `cairn serve`, and a slow step must not lose its run to it.
            let result = self.drive_with_heartbeat(lease).await;
            self.release(lease).await?;
            match result {
                Ok(()) | Err(EngineError::LeaseLost { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        report.records = self.inner.records.load(Ordering::SeqCst) - before;
        Ok(report)
    }

    /// Runs workers until `shutdown` resolves.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()> + Send) {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut workers = Vec::new();
        for _ in 0..self.inner.config.concurrency.max(1) {
            let engine = self.clone();
            let mut stop = stop_rx.clone();
            workers.push(tokio::spawn(async move {
                loop {
                    if *stop.borrow() {
                        return;
                    }
                    match engine.claim().await {
                        Ok(Some(lease)) => {
                            if let Err(error) = engine.drive_with_heartbeat(lease).await {
                                tracing::error!(run_id = %lease.run_id, error = %error, "workflow run interrupted");
                            }
                            if let Err(error) = engine.release(lease).await {
                                tracing::warn!(run_id = %lease.run_id, error = %error, "could not release a lease");
                            }
                        }
                        Ok(None) => {
                            tokio::select! {
                                () = engine.inner.wake.notified() => {}
                                () = tokio::time::sleep(engine.inner.config.poll_interval) => {}
                                _ = stop.changed() => {}
                            }
                        }
                        Err(error) => {
                            tracing::error!(error = %error, "cannot claim workflow runs");
                            tokio::time::sleep(engine.inner.config.poll_interval).await;
                        }
                    }
                }
            }));
        }
        shutdown.await;
        let _ = stop_tx.send(true);
        self.inner.wake.notify_waiters();
        for worker in workers {
            let _ = worker.await;
        }
    }

    async fn drive_with_heartbeat(&self, lease: Lease) -> Result<(), EngineError> {
        let engine = self.clone();
        let heartbeat = tokio::spawn(async move {
            let every = engine.inner.config.lease / 3;
            loop {
                tokio::time::sleep(every).await;
                match engine.renew(lease).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(error) => {
                        tracing::warn!(run_id = %lease.run_id, error = %error, "could not renew a lease")
                    }
                }
            }
        });
        let result = self.drive(lease).await;
        heartbeat.abort();
        result
    }

    fn lease_until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + chrono::Duration::from_std(self.inner.config.lease)
            .unwrap_or(chrono::Duration::seconds(30))
    }

    /// Claims one runnable run, if there is one.
    async fn claim(&self) -> Result<Option<Lease>, EngineError> {
        let now = self.now();
        if self.inner.workflows.is_empty() {
            return Ok(None);
        }
        let kinds: Vec<&str> = self.inner.workflows.keys().copied().collect();
        let mut args: Vec<Arg> = args![now];
        let placeholders: Vec<String> = kinds
            .iter()
            .map(|kind| {
                args.push((*kind).into_arg());
                format!("${}", args.len())
            })
            .collect();
        let sql = format!(
            "SELECT r.id FROM workflow_runs r LEFT JOIN workflow_leases l ON l.run_id = r.id \
             WHERE r.next_run_at IS NOT NULL AND r.next_run_at <= $1 AND r.kind IN ({}) \
             AND (l.run_id IS NULL OR l.expires_at < $1) ORDER BY r.next_run_at LIMIT 16",
            placeholders.join(", ")
        );
        let candidates = {
            let mut reader = self.inner.store.db().reader().await?;
            reader.conn().fetch_all(AssertSqlSafe(sql), args).await?
        };
        for candidate in candidates {
            let run_id: WorkflowId = candidate.get("id")?;
            let mut tx = self.inner.store.db().begin().await?;
            let row = tx
                .conn()
                .fetch_optional(
                    "INSERT INTO workflow_leases (run_id, owner, epoch, expires_at) VALUES ($1, $2, 1, $3)
                     ON CONFLICT (run_id) DO UPDATE SET owner = excluded.owner,
                         epoch = workflow_leases.epoch + 1, expires_at = excluded.expires_at
                     WHERE workflow_leases.expires_at < $4
                     RETURNING epoch",
                    args![run_id, self.inner.config.worker_id.as_str(), self.lease_until(now), now],
                )
                .await?;
            tx.commit().await?;
            if let Some(row) = row {
                return Ok(Some(Lease {
                    run_id,
                    epoch: row.get("epoch")?,
                }));
            }
        }
        Ok(None)
    }

    /// Extends a lease; false when it is no longer ours.
    async fn renew(&self, lease: Lease) -> Result<bool, EngineError> {
        let mut tx = self.inner.store.db().begin().await?;
        let changed = tx
            .conn()
            .execute(
                "UPDATE workflow_leases SET expires_at = $3 WHERE run_id = $1 AND epoch = $2",
                args![lease.run_id, lease.epoch, self.lease_until(self.now())],
            )
            .await?;
        tx.commit().await?;
        Ok(changed == 1)
    }

    async fn release(&self, lease: Lease) -> Result<(), EngineError> {
        let mut tx = self.inner.store.db().begin().await?;
        tx.conn()
            .execute(
                "DELETE FROM workflow_leases WHERE run_id = $1 AND epoch = $2",
                args![lease.run_id, lease.epoch],
            )
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records workflow events for a run, fenced by its lease and its stream version,
    /// in `step_tx` (the step's own work) or a fresh transaction.
    async fn record(
        &self,
        lease: Lease,
        run: &mut Run,
        events: Vec<NewEvent>,
        step_tx: Option<Tx>,
    ) -> Result<(), EngineError> {
        let mut tx = match step_tx {
            Some(tx) => tx,
            None => self.inner.store.db().begin().await?,
        };
        let now = self.now();
        let held = tx
            .conn()
            .execute(
                "UPDATE workflow_leases SET expires_at = $4 WHERE run_id = $1 AND epoch = $2 AND owner = $3",
                args![lease.run_id, lease.epoch, self.inner.config.worker_id.as_str(), self.lease_until(now)],
            )
            .await?;
        if held != 1 {
            return Err(EngineError::LeaseLost {
                run_id: lease.run_id,
            });
        }
        let n_events = events.len() as i64;
        let request =
            AppendRequest::new(stream_type(), StreamId::from_uuid(run.id.as_uuid()), events)
                .expect(Expected::Exact(cairn_types::StreamVersion::new(
                    run.version,
                )));
        let appended = self.inner.store.append_in(&mut tx, request).await?;
        for dispatched in &appended.events {
            if let Outcome::Failed(error) = &dispatched.outcome {
                return Err(EngineError::NotApplied {
                    run_id: run.id,
                    event_type: dispatched.event.event_type.to_string(),
                    message: format!("{} {}", error.code, error.message),
                });
            }
        }
        tx.commit().await?;
        run.version += n_events;
        let n_records = self.inner.records.fetch_add(1, Ordering::SeqCst) + 1;
        if self.inner.config.pause_after_records == Some(n_records) {
            eprintln!("cairn: workflow engine paused after {n_records} records (fault injection)");
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    fn metadata(&self, run: &Run) -> Metadata {
        let mut metadata = Metadata::with_correlation(run.correlation_id);
        metadata.org_id = run.org_id;
        metadata.actor = Actor::service(ENGINE_ACTOR).ok();
        metadata.extra.insert(
            "worker".to_owned(),
            Value::String(self.inner.config.worker_id.clone()),
        );
        metadata
    }

    /// Drives one claimed run until it finishes, sleeps, or waits for a retry.
    async fn drive(&self, lease: Lease) -> Result<(), EngineError> {
        loop {
            let (run, history) = {
                let mut reader = self.inner.store.db().reader().await?;
                let Some(run) = crate::state::load_run(&mut reader.conn(), lease.run_id).await?
                else {
                    return Ok(());
                };
                let history = crate::state::load_history(&mut reader.conn(), lease.run_id).await?;
                (run, history)
            };
            let mut run = run;
            let now = self.now();
            if run.status.is_finished() || run.next_run_at.is_none_or(|at| at > now) {
                return Ok(());
            }
            let Some(workflow) = self.inner.workflows.get(run.kind.as_str()).cloned() else {
                tracing::warn!(run_id = %run.id, kind = %run.kind, "no workflow of this kind in this build");
                return Ok(());
            };
            let metadata = self.metadata(&run);
            match run.status {
                RunStatus::Running => {
                    let decision =
                        workflow
                            .decide(&run.input, &history)
                            .unwrap_or_else(|message| {
                                Decision::Fail(format!("the workflow cannot go on: {message}"))
                            });
                    match decision {
                        Decision::Run(call) => {
                            if !self
                                .step(
                                    lease,
                                    &mut run,
                                    &history,
                                    workflow.as_ref(),
                                    &call,
                                    Role::Action,
                                )
                                .await?
                            {
                                return Ok(());
                            }
                        }
                        Decision::Sleep { timer, until } => match history.get(&timer) {
                            None => {
                                let event = TimerStarted {
                                    timer,
                                    until,
                                    at: now,
                                };
                                self.record(lease, &mut run, vec![event.to_event(metadata)], None)
                                    .await?;
                            }
                            Some(step)
                                if step.status == StepStatus::Waiting
                                    && step.wake_at.is_some_and(|at| at <= now) =>
                            {
                                let event = TimerFired { timer, at: now };
                                self.record(lease, &mut run, vec![event.to_event(metadata)], None)
                                    .await?;
                            }
                            Some(step) if step.status == StepStatus::Waiting => return Ok(()),
                            Some(_) => {
                                let event = CompensationStarted {
                                    reason: format!(
                                        "the workflow asked to sleep on timer {timer}, which already fired"
                                    ),
                                    at: now,
                                };
                                self.record(lease, &mut run, vec![event.to_event(metadata)], None)
                                    .await?;
                            }
                        },
                        Decision::Complete(output) => {
                            let event = WorkflowCompleted { output, at: now };
                            self.record(lease, &mut run, vec![event.to_event(metadata)], None)
                                .await?;
                            return Ok(());
                        }
                        Decision::Fail(reason) => {
                            let event = CompensationStarted { reason, at: now };
                            self.record(lease, &mut run, vec![event.to_event(metadata)], None)
                                .await?;
                        }
                    }
                }
                RunStatus::Compensating => {
                    // Every compensation runs, newest first, even when an earlier one
                    // failed for good: one stuck undo must not keep the others (the
                    // safety net among them) from running.
                    let compensable = history.steps.iter().rev().filter(|step| {
                        step.kind == StepKind::Action
                            && step.compensable
                            && step.status == StepStatus::Completed
                    });
                    let mut pending = None;
                    let mut failed = Vec::new();
                    for step in compensable {
                        match history.get(&compensation_name(&step.name)) {
                            Some(done) if done.status == StepStatus::Completed => {}
                            Some(done) if done.status == StepStatus::Failed => {
                                failed.push((step.name.clone(), done.last_error.clone()));
                            }
                            _ => {
                                pending = Some(step.clone());
                                break;
                            }
                        }
                    }
                    match pending {
                        None if failed.is_empty() => {
                            let reason = run
                                .failure
                                .clone()
                                .unwrap_or_else(|| "the workflow failed".to_owned());
                            let event = WorkflowFailed { reason, at: now };
                            self.record(lease, &mut run, vec![event.to_event(metadata)], None)
                                .await?;
                            return Ok(());
                        }
                        None => {
                            let error = failed
                                .iter()
                                .map(|(step, error)| {
                                    format!(
                                        "undoing {step}: {}",
                                        error.as_deref().unwrap_or("no message")
                                    )
                                })
                                .collect::<Vec<_>>()
                                .join("; ");
                            let event = CompensationFailed {
                                step: failed[0].0.clone(),
                                error,
                                at: now,
                            };
                            self.record(lease, &mut run, vec![event.to_event(metadata)], None)
                                .await?;
                            return Ok(());
                        }
                        Some(target) => {
                            let mut call = StepCall::new(compensation_name(&target.name));
                            call.retry = workflow.compensation_policy();
                            if !self
                                .step(
                                    lease,
                                    &mut run,
                                    &history,
                                    workflow.as_ref(),
                                    &call,
                                    Role::Compensation(&target),
                                )
                                .await?
                            {
                                return Ok(());
                            }
                        }
                    }
                }
                RunStatus::Completed | RunStatus::Failed | RunStatus::CompensationFailed => {
                    return Ok(());
                }
            }
        }
    }

    /// Performs one attempt of a step and records its outcome. Returns whether the run
    /// can go on now (false: it waits for a retry).
    async fn step(
        &self,
        lease: Lease,
        run: &mut Run,
        history: &History,
        workflow: &dyn Workflow,
        call: &StepCall,
        role: Role<'_>,
    ) -> Result<bool, EngineError> {
        let now = self.now();
        let metadata = self.metadata(run);
        let compensation = matches!(role, Role::Compensation(_));
        let previous = history.get(&call.name);
        if let Some(step) = previous {
            match step.status {
                StepStatus::Retrying if step.wake_at.is_some_and(|at| at > now) => {
                    return Ok(false);
                }
                StepStatus::Completed
                | StepStatus::Failed
                | StepStatus::Waiting
                | StepStatus::Fired => {
                    let event = CompensationStarted {
                        reason: format!(
                            "the workflow asked to run step {}, which is already {:?}: a bug in its decide",
                            call.name, step.status
                        ),
                        at: now,
                    };
                    self.record(lease, run, vec![event.to_event(metadata)], None)
                        .await?;
                    return Ok(true);
                }
                StepStatus::Running | StepStatus::Retrying => {}
            }
        }
        let attempt = previous.map_or(1, |step| step.attempts + 1);
        let in_doubt = previous.is_some_and(|step| step.status == StepStatus::Running);
        if call.effect == Effect::External {
            let started = StepStarted {
                step: call.name.clone(),
                attempt,
                compensation,
                at: now,
            };
            self.record(lease, run, vec![started.to_event(metadata.clone())], None)
                .await?;
        }
        let run_snapshot = run.clone();
        let mut ctx = StepContext {
            inner: &self.inner,
            run: &run_snapshot,
            step: call.name.clone(),
            attempt,
            in_doubt,
            now,
            tx: None,
        };
        let step_span = tracing::info_span!(
            "cairn.workflow.step",
            workflow = %run_snapshot.kind,
            run_id = %run_snapshot.id,
            step = %call.name,
            attempt,
            correlation_id = %run_snapshot.correlation_id,
        );
        cairn_observe::otel::join_trace(&step_span, run_snapshot.correlation_id.as_uuid(), None);
        let outcome = {
            use tracing::Instrument as _;
            match role {
                Role::Action => {
                    workflow
                        .perform(&run_snapshot.input, call, &mut ctx)
                        .instrument(step_span)
                        .await
                }
                Role::Compensation(target) => {
                    workflow
                        .compensate(&run_snapshot.input, target, &mut ctx)
                        .instrument(step_span)
                        .await
                }
            }
        };
        let labels = cairn_observe::WorkflowLabels {
            kind: run_snapshot.kind.clone(),
        };
        let metrics = cairn_observe::metrics();
        match &outcome {
            Ok(_) => {
                metrics.workflow_steps.get_or_create(&labels).inc();
            }
            Err(error) if error.retryable && attempt < call.retry.max_attempts => {
                metrics.workflow_step_retries.get_or_create(&labels).inc();
            }
            Err(_) => {}
        }
        let step_tx = ctx.tx.take();
        drop(ctx);
        if call.effect == Effect::External && outcome.is_ok() {
            let n_effects = self.inner.effects.fetch_add(1, Ordering::SeqCst) + 1;
            if self.inner.config.pause_after_effects == Some(n_effects) {
                eprintln!(
                    "cairn: workflow engine paused after {n_effects} effects, before recording (fault injection)"
                );
                std::future::pending::<()>().await;
            }
        }
        let finished_at = self.now();
        match outcome {
            Ok(result) => {
                let completed = StepCompleted {
                    step: call.name.clone(),
                    attempt,
                    result,
                    compensable: call.compensable,
                    compensation,
                    started_at: now,
                    finished_at,
                };
                self.record(lease, run, vec![completed.to_event(metadata)], step_tx)
                    .await?;
                Ok(true)
            }
            Err(error) => {
                // The step's own writes roll back with its transaction.
                drop(step_tx);
                if error.retryable && attempt < call.retry.max_attempts {
                    let wait = chrono::Duration::from_std(call.retry.backoff(attempt))
                        .unwrap_or(chrono::Duration::zero());
                    let retry_at = finished_at + wait;
                    tracing::warn!(run_id = %run.id, step = %call.name, attempt, error = %error, %retry_at, "step attempt failed; will retry");
                    let failed = StepAttemptFailed {
                        step: call.name.clone(),
                        attempt,
                        error: error.message,
                        compensation,
                        started_at: now,
                        finished_at,
                        retry_at,
                    };
                    self.record(lease, run, vec![failed.to_event(metadata)], None)
                        .await?;
                    Ok(retry_at <= self.now())
                } else {
                    tracing::warn!(run_id = %run.id, step = %call.name, attempt, error = %error, "step failed for good");
                    let failed = StepFailed {
                        step: call.name.clone(),
                        attempt,
                        error: error.message,
                        permanent: !error.retryable,
                        compensation,
                        started_at: now,
                        finished_at,
                    };
                    self.record(lease, run, vec![failed.to_event(metadata)], None)
                        .await?;
                    Ok(true)
                }
            }
        }
    }
}

/// The name of the step that compensates `step`.
pub fn compensation_name(step: &str) -> String {
    format!("compensate:{step}")
}
