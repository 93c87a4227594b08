//! The engine: claims runnable runs with leases, asks the plan what comes next for
//! each, performs it, and records the outcome as events through the log writer.
//!
//! Every record is one unit of work that (1) checks this engine still holds the run's
//! lease (fencing), (2) appends the workflow.* events with the run's expected stream
//! version, and (3) commits together with whatever the step itself wrote: a
//! transactional step runs inside that same unit. A step is therefore recorded at most
//! once even if two engines ever raced for a run: the second append would conflict and
//! roll back.
//!
//! What to record is decided in [`crate::plan`], from the run, its history and the
//! workflow's decision, without the database; this module only does what the plan
//! says. Leases live in [`crate::lease`], the step's view in [`crate::context`].
//!
//! Workflow code may panic. A step's or a compensation's panic is caught where the
//! step runs and recorded as a failed attempt carrying the panic's message, so retries
//! and compensation apply as for any error; a panicking `decide` fails the run. The
//! heartbeat that keeps a lease is aborted when the attempt it belongs to ends, however
//! it ends.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt as _;
use serde_json::Value;
use tokio::sync::Notify;

use cairn_dispatch::{EventPayload, EventStore};
use cairn_log::{AppendError, AppendRequest, DbError, Expected, NewEvent, Tx, WriteOptions};
use cairn_types::{Actor, CorrelationId, Metadata, OrgId, StreamId, StreamType, WorkflowId};

use crate::clock::Clock;
use crate::context::StepContext;
use crate::definition::{StepError, Workflow};
use crate::definitions::{Definitions, versions_text};
use crate::events::{STREAM_TYPE, WorkflowStarted};
use crate::health::{EngineHealth, Tracker};
use crate::lease::Lease;
use crate::plan::{self, Attempt, Next, Role, RunEvent};
use crate::state::Run;

/// The actor of every workflow.* event.
pub const ENGINE_ACTOR: &str = "workflow-engine";

/// Why the engine stopped working on a run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("database error in the workflow engine")]
    Database(#[from] DbError),
    #[error("could not record workflow progress")]
    Append(#[from] AppendError),
    #[error("workflow run {run_id}: another engine took the lease")]
    LeaseLost { run_id: WorkflowId },
    /// An unfinished run is of a kind and version this engine does not have, so it
    /// would never finish: see [`Engine::check_definitions`].
    #[error(
        "run {run_id} is {kind} v{version}, which this build does not have (it has {}){}; \
         finish {} with a build that has {kind} v{version}",
        versions_text(kind, have),
        if *n_runs > 1 { format!(", nor {} other unfinished runs of that version", n_runs - 1) } else { String::new() },
        if *n_runs > 1 { "them" } else { "it" },
    )]
    MissingDefinition {
        run_id: WorkflowId,
        kind: String,
        version: u32,
        /// The versions of `kind` this engine has, oldest first.
        have: Vec<u32>,
        /// How many unfinished runs are of that kind and version.
        n_runs: u64,
    },
}

impl EngineError {
    /// Whether the database refused for a reason that passes (a conflicting write, a
    /// lost connection, a full queue): trying again may work. (After a lost connection
    /// the write may have committed all the same; then the next try finds the run's
    /// stream a version further, fails, and the run is loaded again with it.)
    fn is_passing(&self) -> bool {
        let database = match self {
            EngineError::Database(error) | EngineError::Append(AppendError::Database(error)) => {
                error
            }
            EngineError::Append(_)
            | EngineError::LeaseLost { .. }
            | EngineError::MissingDefinition { .. } => return false,
        };
        database.is_passing() || database.kind() == cairn_log::DbErrorKind::Overloaded
    }
}

/// How an engine behaves.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Names this engine in leases and in event metadata.
    pub worker_id: String,
    /// How long a claim lasts without renewal. Every record renews it; a step that acts
    /// outside the database renews it at a third of it, on the engine's clock, while it
    /// runs (and not a moment longer).
    pub lease: Duration,
    /// The longest an idle engine waits before it looks for work without being woken.
    /// It is woken at once by runs started in this process and by other processes'
    /// commits (through the log's head watch), and sleeps until the next timer or retry
    /// is due; this is the backstop.
    pub poll_interval: Duration,
    /// How many runs one engine drives at once.
    pub concurrency: usize,
    /// How many steps that act outside the database (an email sent) one engine has in
    /// flight at once, counted from just before the step acts until its outcome is
    /// recorded. A process killed meanwhile leaves at most this many steps in doubt,
    /// each performed again by the next claim (an email sent twice, under the same
    /// `Message-ID`): it is the bound on duplicates per crash, whatever `concurrency`
    /// is.
    pub effects_in_doubt: usize,
    /// Fault injection for crash tests: after this many records, the engine stops
    /// making progress and says so on stderr, so a test can kill the process at a
    /// known point. `None` in normal operation.
    pub pause_after_records: Option<u64>,
    /// Fault injection for crash tests: after this many external steps have acted
    /// (sent their email) and before the outcome is recorded, the engine stops and
    /// says so on stderr: the in-doubt window. `None` in normal operation.
    pub pause_after_effects: Option<u64>,
}

impl EngineConfig {
    /// How many runs an engine drives at once unless told otherwise.
    pub const DEFAULT_CONCURRENCY: usize = 32;
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            worker_id: format!(
                "engine-{}",
                &cairn_types::WorkflowId::new_v7().to_string()[24..]
            ),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            concurrency: Self::DEFAULT_CONCURRENCY,
            effects_in_doubt: 8,
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
/// run never existed; if it commits, the run cannot be lost. The run is of `version`
/// of its kind's definition, and only that version drives it.
pub async fn start_in(
    store: &EventStore,
    tx: &mut Tx,
    start: Start,
    version: u32,
    now: DateTime<Utc>,
) -> Result<WorkflowId, AppendError> {
    let id = start.id;
    let mut metadata = Metadata::with_correlation(start.correlation_id);
    metadata.org_id = start.org_id;
    metadata.actor = start.actor;
    let started = WorkflowStarted {
        kind: start.kind,
        version,
        input: start.input,
        parent: start.parent,
        at: now,
    };
    let request = AppendRequest::new(
        stream_type(),
        run_stream(id),
        vec![started.to_event(metadata)],
    )
    .expect(Expected::NoStream);
    store.append_applied_in(tx, request).await?;
    Ok(id)
}

fn stream_type() -> StreamType {
    StreamType::parse(STREAM_TYPE).expect("the workflow stream type is a valid name")
}

fn run_stream(id: WorkflowId) -> StreamId {
    StreamId::from_uuid(id.as_uuid())
}

/// What the engine did in one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriveReport {
    /// Runs claimed and driven.
    pub runs_driven: u64,
    /// Records written.
    pub records: u64,
}

pub(crate) struct Inner {
    pub(crate) store: EventStore,
    pub(crate) workflows: Definitions,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: EngineConfig,
    wake: Notify,
    records: AtomicU64,
    /// External steps that acted, for the fault hook.
    effects: AtomicU64,
    /// One permit per external step between acting and its recorded outcome: see
    /// [`EngineConfig::effects_in_doubt`].
    in_doubt: tokio::sync::Semaphore,
    /// The `run` loops, for readiness.
    health: Tracker,
}

/// The workflow engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("worker_id", &self.inner.config.worker_id)
            .field("workflows", &self.inner.workflows.pairs())
            .finish()
    }
}

/// How driving a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Driven {
    /// Finished, asleep, waiting for a retry, or paused: its lease is released.
    Idle,
    /// Its step could not write its events (their stream is held, or their route
    /// paused): it is tried again after [`blocked_wait`].
    Blocked,
}

/// What a run does after an attempt.
enum Then {
    /// Goes on at once.
    GoOn,
    /// Waits for a retry, or is paused.
    Wait,
    /// Its step could not write its events.
    Blocked,
}

/// How long a run whose step could not write its events waits before it is tried
/// again: short, since the hold or pause that blocks it is lifted by an operator.
fn blocked_wait() -> chrono::Duration {
    chrono::Duration::seconds(2)
}

/// A pause's reason from the engine's own text, cut to what a reason may hold.
fn pause_reason(text: &str) -> cairn_types::Reason {
    let cut: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(cairn_types::Reason::MAX_CHARS)
        .collect();
    cairn_types::Reason::parse(&cut).unwrap_or_else(|_| {
        cairn_types::Reason::parse("a step's attempts ran out").expect("a valid reason")
    })
}

/// Why a transactional attempt's unit of work did not commit.
enum UnitError {
    /// The step failed: its outcome is recorded in a unit of its own.
    Step(StepError),
    /// The unit panicked (the log writer caught it and rolled the unit back): a failed
    /// attempt, recorded like any other.
    Panicked(String),
    Engine(EngineError),
}

impl From<DbError> for UnitError {
    fn from(error: DbError) -> Self {
        match error {
            DbError::Panicked { message } => UnitError::Panicked(message),
            other => UnitError::Engine(EngineError::Database(other)),
        }
    }
}

impl From<EngineError> for UnitError {
    fn from(error: EngineError) -> Self {
        UnitError::Engine(error)
    }
}

impl Engine {
    /// An engine for these workflows: each kind at one or more versions
    /// ([`Workflow::version`]). New runs start on a kind's latest version; a run goes
    /// on with the version it started on.
    pub fn new(
        store: EventStore,
        workflows: Vec<Arc<dyn Workflow>>,
        clock: Arc<dyn Clock>,
        config: EngineConfig,
    ) -> Self {
        let workflows = Definitions::new(workflows);
        let in_doubt = tokio::sync::Semaphore::new(config.effects_in_doubt.max(1));
        Self {
            inner: Arc::new(Inner {
                in_doubt,
                store,
                workflows,
                clock,
                config,
                wake: Notify::new(),
                records: AtomicU64::new(0),
                effects: AtomicU64::new(0),
                health: Tracker::default(),
            }),
        }
    }

    /// Whether this engine's [`Engine::run`] loop is alive, for a readiness check: see
    /// [`EngineHealth::ready`]. A loop goes round at least once per poll interval; one
    /// that has not for 30 poll intervals (at least 30 s) is stuck.
    pub fn health(&self) -> EngineHealth {
        let stale_after = (self.poll_interval() * 30).max(Duration::from_secs(30));
        self.inner.health.snapshot(stale_after)
    }

    /// Shorthand for `health().alive()`: a `run` loop is running and turning.
    pub fn alive(&self) -> bool {
        self.health().alive()
    }

    fn poll_interval(&self) -> Duration {
        self.inner
            .config
            .poll_interval
            .max(Duration::from_millis(10))
    }

    /// The event store.
    pub fn store(&self) -> &EventStore {
        &self.inner.store
    }

    /// The engine's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    /// Starts a run inside the caller's transaction, on the latest version of its kind
    /// this engine has (version 1 for a kind it does not run). Call [`Engine::wake`]
    /// once the transaction has committed, so this process's engine claims it at once.
    pub async fn start_in(&self, tx: &mut Tx, start: Start) -> Result<WorkflowId, AppendError> {
        let version = self.inner.workflows.start_version(&start.kind);
        start_in(&self.inner.store, tx, start, version, self.now()).await
    }

    /// Wakes the engine: call after committing a transaction that started runs.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Drives every run that is runnable now, one after another, until none is left
    /// (runs asleep until later stay asleep). For tests, the demo and one-shot use.
    pub async fn run_until_idle(&self) -> Result<DriveReport, EngineError> {
        let mut report = DriveReport::default();
        let before = self.inner.records.load(Ordering::SeqCst);
        loop {
            let (leases, _) = self.claim(1).await?;
            let Some(lease) = leases.into_iter().next() else {
                break;
            };
            report.runs_driven += 1;
            let result = self.drive(lease).await;
            self.let_go(lease, result.as_ref().ok()).await?;
            match result {
                Ok(_) | Err(EngineError::LeaseLost { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        report.records = self.inner.records.load(Ordering::SeqCst) - before;
        Ok(report)
    }

    /// Runs until `shutdown` resolves: claims runnable runs as slots free up (at most
    /// `concurrency` at once) and drives each in a task of its own. When shutdown
    /// comes, it claims nothing more and waits for the runs it is driving to stop,
    /// however long their steps take (see [`Engine::run_with_grace`] for a bound).
    ///
    /// A step that panics is a failed attempt of its run, and the loop goes on; while it
    /// runs, the loop counts itself in [`Engine::health`].
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()> + Send) {
        self.run_until(shutdown, None).await;
    }

    /// [`Engine::run`], except that once `shutdown` resolves the runs in flight have
    /// `grace` to stop. Those still going then are abandoned where they stand, as a
    /// crash would leave them: their leases are not released, so no engine takes them
    /// before the leases expire, and a step that was acting outside the database is
    /// then in doubt and performed again. Returns how many runs were abandoned.
    ///
    /// A step can outlast any grace (a mail server that never answers holds its send
    /// until the mailer's own deadline); a process that must stop within its grace
    /// cannot wait for it.
    pub async fn run_with_grace(
        &self,
        shutdown: impl std::future::Future<Output = ()> + Send,
        grace: Duration,
    ) -> usize {
        self.run_until(shutdown, Some(grace)).await
    }

    async fn run_until(
        &self,
        shutdown: impl std::future::Future<Output = ()> + Send,
        grace: Option<Duration>,
    ) -> usize {
        let _worker = self.inner.health.worker();
        let concurrency = self.inner.config.concurrency.max(1);
        let poll = self.poll_interval();
        let mut heads = self.inner.store.db().head_watch();
        let mut drives = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        let mut quiet_until = tokio::time::Instant::now();
        loop {
            // Runs that finished free their slots at once, however many.
            while let Some(finished) = drives.try_join_next() {
                report_panic(finished);
            }
            self.inner.health.turn(drives.len());
            let mut due_in = poll;
            let free = concurrency.saturating_sub(drives.len());
            if free > 0 {
                match self.claim(free).await {
                    Ok((leases, next_due)) => {
                        // Another process's commit wakes an idle engine through the
                        // head watch; a busy log commits often, so an engine that
                        // found nothing listens again only after a pause.
                        let pause = if leases.is_empty() { 50 } else { 2 };
                        quiet_until = tokio::time::Instant::now() + Duration::from_millis(pause);
                        for lease in leases {
                            let engine = self.clone();
                            drives.spawn(async move {
                                let driven = engine.drive(lease).await;
                                if let Err(error) = &driven {
                                    tracing::error!(run_id = %lease.run_id, error = %cairn_types::error_chain(error), "workflow run interrupted");
                                }
                                if let Err(error) = engine.let_go(lease, driven.as_ref().ok()).await {
                                    tracing::warn!(run_id = %lease.run_id, error = %error, "could not release a lease");
                                }
                            });
                        }
                        if let Some(due) = next_due {
                            due_in = (due - self.now()).to_std().unwrap_or_default().min(poll);
                        }
                    }
                    Err(error) => {
                        tracing::error!(error = %cairn_types::error_chain(&error), "cannot claim workflow runs");
                        quiet_until = tokio::time::Instant::now() + poll;
                    }
                }
            }
            let listening = drives.len() < concurrency;
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(finished) = drives.join_next(), if !drives.is_empty() => report_panic(finished),
                () = self.inner.wake.notified() => {}
                _ = async {
                    tokio::time::sleep_until(quiet_until).await;
                    heads.changed().await
                }, if listening => {}
                () = tokio::time::sleep(due_in) => {}
            }
        }
        let stopped = async { while drives.join_next().await.is_some() {} };
        let Some(grace) = grace else {
            stopped.await;
            return 0;
        };
        if tokio::time::timeout(grace, stopped).await.is_ok() {
            return 0;
        }
        // Dropping a run's task drops its heartbeat with it: the lease runs out on its
        // own, and nothing is released or recorded on the way out.
        let abandoned = drives.len();
        tracing::warn!(
            runs = abandoned,
            grace = ?grace,
            "workflow runs still in flight after the shutdown grace were abandoned; \
             they run again once their leases expire"
        );
        drives.abort_all();
        while drives.join_next().await.is_some() {}
        abandoned
    }

    fn write_options(priority: cairn_log::Priority) -> WriteOptions {
        WriteOptions {
            priority,
            admission: cairn_log::Admission::Wait,
        }
    }

    /// Appends a run's events in `tx`, at the run's expected version.
    async fn append_run_events(
        &self,
        tx: &mut Tx,
        run_id: WorkflowId,
        version: i64,
        events: Vec<NewEvent>,
    ) -> Result<(), EngineError> {
        let request = AppendRequest::new(stream_type(), run_stream(run_id), events)
            .expect(Expected::Exact(cairn_types::StreamVersion::new(version)));
        self.inner.store.append_applied_in(tx, request).await?;
        Ok(())
    }

    /// Records one event of a run in a unit of its own, fenced by its lease and its
    /// stream version; with `pause`, the run's pause commits with it.
    async fn record(
        &self,
        lease: Lease,
        run: &mut Run,
        event: &RunEvent,
        pause: Option<&str>,
        priority: cairn_log::Priority,
    ) -> Result<(), EngineError> {
        let engine = self.clone();
        let event = event.to_event(self.metadata(run));
        let (run_id, version) = (run.id, run.version);
        let pause = pause.map(pause_reason);
        let snapshot = Arc::new(run.clone());
        self.inner
            .store
            .db()
            .write_to(
                Self::write_options(priority),
                &[run_stream(run_id)],
                move |tx| {
                    let engine = engine.clone();
                    let event = event.clone();
                    let pause = pause.clone();
                    let run = snapshot.clone();
                    Box::pin(async move {
                        engine.fence(tx, lease).await?;
                        engine
                            .append_run_events(tx, run_id, version, vec![event])
                            .await?;
                        if let Some(reason) = pause {
                            engine.pause_in(tx, &run, reason).await?;
                        }
                        Ok::<(), EngineError>(())
                    })
                },
            )
            .await?;
        run.version += 1;
        self.recorded().await;
        Ok(())
    }

    /// Counts a record, and stops here for good if a crash test asked to.
    async fn recorded(&self) {
        let n_records = self.inner.records.fetch_add(1, Ordering::SeqCst) + 1;
        if self.inner.config.pause_after_records == Some(n_records) {
            eprintln!("cairn: workflow engine paused after {n_records} records (fault injection)");
            std::future::pending::<()>().await;
        }
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

    /// Drives one claimed run until it finishes, sleeps, waits for a retry, is paused,
    /// or cannot write its events (see [`Driven::Blocked`]).
    async fn drive(&self, lease: Lease) -> Result<Driven, EngineError> {
        loop {
            let (mut run, history) = {
                let mut reader = self.inner.store.db().reader().await?;
                let Some(run) = crate::state::load_run(&mut reader.conn(), lease.run_id).await?
                else {
                    return Ok(Driven::Idle);
                };
                let history = crate::state::load_history(&mut reader.conn(), lease.run_id).await?;
                (run, history)
            };
            if run.is_paused() {
                // Paused while a step was in flight: that step is recorded; the run
                // stops here until it is resumed.
                return Ok(Driven::Idle);
            }
            let Some(workflow) = self
                .inner
                .workflows
                .get(&run.kind, run.definition_version)
                .cloned()
            else {
                // Claims leave such runs alone; one can only get here if it changed
                // under the claim.
                tracing::warn!(run_id = %run.id, kind = %run.kind, version = run.definition_version, "no workflow of this kind and version in this build");
                return Ok(Driven::Idle);
            };
            match plan::next(workflow.as_ref(), &run, &history, self.now()) {
                Next::Wait => return Ok(Driven::Idle),
                Next::Record { event, stop } => {
                    self.record(lease, &mut run, &event, None, cairn_log::Priority::Normal)
                        .await?;
                    if stop {
                        return Ok(Driven::Idle);
                    }
                }
                Next::Perform(attempt) => {
                    match self.attempt(lease, &mut run, workflow, attempt).await? {
                        Then::GoOn => {}
                        Then::Wait => return Ok(Driven::Idle),
                        Then::Blocked => return Ok(Driven::Blocked),
                    }
                }
            }
        }
    }

    /// Lets a driven run go: releases its lease, or, for a run whose step cannot write
    /// its events yet, keeps the lease a little while, so that no engine claims it
    /// again at once.
    async fn let_go(&self, lease: Lease, driven: Option<&Driven>) -> Result<(), EngineError> {
        match driven {
            Some(Driven::Blocked) => self.defer(lease, self.now() + blocked_wait()).await,
            Some(Driven::Idle) | None => self.release(lease).await,
        }
    }

    /// Performs one attempt of a step and records its outcome. Returns what the run
    /// does next.
    async fn attempt(
        &self,
        lease: Lease,
        run: &mut Run,
        workflow: Arc<dyn Workflow>,
        attempt: Attempt,
    ) -> Result<Then, EngineError> {
        let started_at = self.now();
        let mut heartbeat = None;
        let mut in_doubt = None;
        let outcome = if attempt.records_start() {
            self.record(
                lease,
                run,
                &attempt.started(started_at),
                None,
                cairn_log::Priority::Normal,
            )
            .await?;
            // The lease is renewed until the outcome is recorded, however many tries
            // that takes: another engine must not perform the step meanwhile.
            heartbeat = Some(self.heartbeat(lease));
            // Held until the outcome is recorded: a crash leaves no more steps in
            // doubt than there are permits. The semaphore is never closed.
            in_doubt = self.inner.in_doubt.acquire().await.ok();
            let outcome = self
                .perform_outside(run, workflow.as_ref(), &attempt, started_at)
                .await;
            if outcome.is_ok() {
                let n_effects = self.inner.effects.fetch_add(1, Ordering::SeqCst) + 1;
                if self.inner.config.pause_after_effects == Some(n_effects) {
                    eprintln!(
                        "cairn: workflow engine paused after {n_effects} effects, before recording (fault injection)"
                    );
                    heartbeat = None;
                    std::future::pending::<()>().await;
                }
            }
            outcome
        } else {
            match self
                .perform_and_record(lease, run, workflow.clone(), &attempt, started_at)
                .await
            {
                Ok(()) => {
                    self.count_attempt(run, &attempt, &Ok(Value::Null));
                    return Ok(Then::GoOn);
                }
                // Its events would be held (their stream waits behind a failure, or
                // their route is paused): nothing was kept, no attempt is used up.
                Err(UnitError::Step(error)) if error.blocked => {
                    tracing::info!(run_id = %run.id, step = %attempt.call.name, reason = %error.message, "step waits: its events would be held");
                    cairn_observe::metrics()
                        .workflow_steps_blocked
                        .get_or_create(&cairn_observe::WorkflowLabels {
                            kind: run.kind.clone(),
                        })
                        .inc();
                    return Ok(Then::Blocked);
                }
                Err(UnitError::Step(error)) => Err(error),
                Err(UnitError::Panicked(message)) => Err(self.panicked(run, &attempt, &message)),
                // The step's writes could not be stored (a constraint, a trigger): the
                // database refused them at commit. Nothing was kept; the attempt
                // failed, and may be retried.
                Err(UnitError::Engine(EngineError::Database(error)))
                    if error.kind() == cairn_log::DbErrorKind::Failed =>
                {
                    Err(StepError::retryable(format!(
                        "the step's work could not be stored: {}",
                        cairn_types::error_chain(&error)
                    )))
                }
                Err(UnitError::Engine(error)) => return Err(error),
            }
        };
        self.count_attempt(run, &attempt, &outcome);
        let finished_at = self.now();
        let recorded = plan::after(&attempt, outcome, started_at, finished_at, self.now());
        if let Some(reason) = &recorded.pause {
            tracing::error!(run_id = %run.id, kind = %run.kind, step = %attempt.call.name, reason = %reason, "a step's attempts ran out: the run is paused until an operator resumes it");
        } else if let RunEvent::StepAttemptFailed(failed) = &recorded.event {
            tracing::warn!(run_id = %run.id, step = %failed.step, attempt = failed.attempt, error = %failed.error, retry_at = %failed.retry_at, "step attempt failed; will retry");
        } else if let RunEvent::StepFailed(failed) = &recorded.event {
            tracing::warn!(run_id = %run.id, step = %failed.step, attempt = failed.attempt, error = %failed.error, "step failed for good");
        }
        let pause = recorded.pause.as_deref();
        if attempt.records_start() {
            // The step acted outside the database: a record lost now would make the
            // next claim perform it again (send the email twice). A write that failed
            // for a passing reason is tried again, fenced as before.
            self.record_persistently(
                lease,
                run,
                &recorded.event,
                pause,
                attempt.outcome_priority(),
            )
            .await?;
            drop(in_doubt);
            drop(heartbeat);
        } else {
            self.record(
                lease,
                run,
                &recorded.event,
                pause,
                attempt.outcome_priority(),
            )
            .await?;
        }
        Ok(if recorded.go_on {
            Then::GoOn
        } else {
            Then::Wait
        })
    }

    /// Records like [`Engine::record`], trying again (a few times, with growing
    /// pauses) when the database refused for a reason that passes: a conflicting
    /// write, a lost connection.
    async fn record_persistently(
        &self,
        lease: Lease,
        run: &mut Run,
        event: &RunEvent,
        pause: Option<&str>,
        priority: cairn_log::Priority,
    ) -> Result<(), EngineError> {
        let mut retry = cairn_log::PassingRetry::default();
        loop {
            match self.record(lease, run, event, pause, priority).await {
                Err(error) if error.is_passing() && retry.remains() => {
                    tracing::warn!(run_id = %run.id, attempt = retry.tries(), error = %cairn_types::error_chain(&error), "could not record a step's outcome; trying again");
                    retry.pause().await;
                }
                done => return done,
            }
        }
    }

    /// The failure a step's panic is recorded as; says so in the log and counts it.
    fn panicked(&self, run: &Run, attempt: &Attempt, message: &str) -> StepError {
        self.inner.health.panicked();
        tracing::error!(run_id = %run.id, step = %attempt.call.name, attempt = attempt.number, panic = %message, "a workflow step panicked");
        plan::panicked(message)
    }

    fn count_attempt(&self, run: &Run, attempt: &Attempt, outcome: &Result<Value, StepError>) {
        let labels = cairn_observe::WorkflowLabels {
            kind: run.kind.clone(),
        };
        let metrics = cairn_observe::metrics();
        match outcome {
            Ok(_) => {
                metrics.workflow_steps.get_or_create(&labels).inc();
            }
            Err(error) if error.retryable && attempt.number < attempt.call.retry.max_attempts => {
                metrics.workflow_step_retries.get_or_create(&labels).inc();
            }
            Err(_) => {}
        }
    }

    fn step_span(run: &Run, attempt: &Attempt) -> tracing::Span {
        let span = tracing::info_span!(
            "cairn.workflow.step",
            workflow = %run.kind,
            run_id = %run.id,
            step = %attempt.call.name,
            attempt = attempt.number,
            correlation_id = %run.correlation_id,
        );
        cairn_observe::otel::join_trace(&span, run.correlation_id.as_uuid(), None);
        span
    }

    /// Runs a step that acts outside the database, with no transaction; a panic is an
    /// attempt that failed.
    async fn perform_outside(
        &self,
        run: &Run,
        workflow: &dyn Workflow,
        attempt: &Attempt,
        started_at: DateTime<Utc>,
    ) -> Result<Value, StepError> {
        use tracing::Instrument as _;
        let mut ctx = StepContext {
            inner: &self.inner,
            run,
            step: attempt.call.name.clone(),
            attempt: attempt.number,
            in_doubt: attempt.in_doubt,
            now: started_at,
            tx: None,
        };
        let performed =
            perform(workflow, run, attempt, &mut ctx).instrument(Self::step_span(run, attempt));
        match AssertUnwindSafe(performed).catch_unwind().await {
            Ok(outcome) => outcome,
            Err(panic) => Err(self.panicked(run, attempt, &plan::panic_message(panic.as_ref()))),
        }
    }

    /// Runs a transactional step and records its completion in one unit of work. If
    /// the step fails (or panics), nothing it did is kept and the failure comes back
    /// to be recorded on its own.
    async fn perform_and_record(
        &self,
        lease: Lease,
        run: &mut Run,
        workflow: Arc<dyn Workflow>,
        attempt: &Attempt,
        started_at: DateTime<Utc>,
    ) -> Result<(), UnitError> {
        let engine = self.clone();
        let snapshot = Arc::new(run.clone());
        let attempt = Arc::new(attempt.clone());
        let metadata = self.metadata(run);
        let (run_id, version) = (run.id, run.version);
        self.inner
            .store
            .db()
            .write_to(
                Self::write_options(cairn_log::Priority::Normal),
                &[run_stream(run_id)],
                move |tx| {
                    let engine = engine.clone();
                    let run = snapshot.clone();
                    let attempt = attempt.clone();
                    let workflow = workflow.clone();
                    let metadata = metadata.clone();
                    Box::pin(async move {
                        use tracing::Instrument as _;
                        engine.fence(tx, lease).await?;
                        let result = {
                            let mut ctx = StepContext {
                                inner: &engine.inner,
                                run: &run,
                                step: attempt.call.name.clone(),
                                attempt: attempt.number,
                                in_doubt: attempt.in_doubt,
                                now: started_at,
                                tx: Some(&mut *tx),
                            };
                            perform(workflow.as_ref(), &run, &attempt, &mut ctx)
                                .instrument(Self::step_span(&run, &attempt))
                                .await
                                .map_err(UnitError::Step)?
                        };
                        let finished_at = engine.now();
                        let recorded =
                            plan::after(&attempt, Ok(result), started_at, finished_at, finished_at);
                        engine
                            .append_run_events(
                                tx,
                                run.id,
                                version,
                                vec![recorded.event.to_event(metadata)],
                            )
                            .await?;
                        Ok::<(), UnitError>(())
                    })
                },
            )
            .await?;
        run.version += 1;
        self.recorded().await;
        Ok(())
    }
}

async fn perform(
    workflow: &dyn Workflow,
    run: &Run,
    attempt: &Attempt,
    ctx: &mut StepContext<'_>,
) -> Result<Value, StepError> {
    match &attempt.role {
        Role::Action => workflow.perform(&run.input, &attempt.call, ctx).await,
        Role::Compensation(target) => workflow.compensate(&run.input, target, ctx).await,
    }
}

fn report_panic(finished: Result<(), tokio::task::JoinError>) {
    if let Err(error) = finished
        && error.is_panic()
    {
        tracing::error!("a workflow run's task panicked; its lease will expire");
    }
}

/// The name of the step that compensates `step`.
pub fn compensation_name(step: &str) -> String {
    format!("compensate:{step}")
}
