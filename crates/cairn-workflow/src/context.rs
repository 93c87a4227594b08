//! What a step sees while it runs: its run, its attempt, the engine's time, and for a
//! transactional step the transaction its record commits in.

use chrono::{DateTime, Utc};
use serde_json::Value;

use cairn_dispatch::{Appended, EventStore};
use cairn_log::{AppendError, AppendRequest, Tx};
use cairn_types::{Actor, CausationId, Metadata, WorkflowId};

use crate::definition::StepError;
use crate::engine::{ENGINE_ACTOR, Inner, Start, start_in};
use crate::state::Run;

/// One step attempt's context: its run, its transaction (for a transactional step),
/// the event store.
pub struct StepContext<'e> {
    pub(crate) inner: &'e Inner,
    pub(crate) run: &'e Run,
    pub(crate) step: String,
    pub(crate) attempt: u32,
    pub(crate) in_doubt: bool,
    pub(crate) now: DateTime<Utc>,
    pub(crate) tx: Option<&'e mut Tx>,
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

    /// The step's transaction: a transactional step's writes commit together with its
    /// record, or not at all. A step that acts outside the database has none; it
    /// returns what happened, for a transactional step to record.
    pub fn tx(&mut self) -> Result<&mut Tx, StepError> {
        match self.tx.as_deref_mut() {
            Some(tx) => Ok(tx),
            None => Err(StepError::permanent(format!(
                "step {} acts outside the database and has no transaction: return what it \
                 did, and record that in a transactional step",
                self.step
            ))),
        }
    }

    /// Appends events in the step's transaction. A handler that cannot apply one
    /// stores the event with its failure.
    pub async fn append(&mut self, request: AppendRequest) -> Result<Appended, StepError> {
        let store = self.inner.store.clone();
        let tx = self.tx()?;
        Ok(store.append_in(tx, request).await?)
    }

    /// Appends events and requires every one of them to be applied: a handler failure
    /// fails the step (permanently: retrying the same event will not help), and
    /// nothing the step did is kept.
    pub async fn append_applied(&mut self, request: AppendRequest) -> Result<Appended, StepError> {
        let store = self.inner.store.clone();
        let tx = self.tx()?;
        Ok(store.append_applied_in(tx, request).await?)
    }

    /// Appends events (a handler that cannot apply one stores it with its failure),
    /// and if the append itself fails, undoes it and hands back the error, leaving the
    /// step's transaction as it was before: for a step with a fallback (the safety
    /// net). A conflicting write or a lost connection is not handed back: it fails the
    /// step as an attempt to try again.
    pub async fn try_append(
        &mut self,
        request: AppendRequest,
    ) -> Result<Result<Appended, AppendError>, StepError> {
        let store = self.inner.store.clone();
        let tx = self.tx()?;
        match tx
            .attempt(async |tx| store.append_in(tx, request).await)
            .await?
        {
            Ok(appended) => Ok(Ok(appended)),
            Err(error) => {
                // A conflicting write or a lost connection is no reason for the
                // fallback: the step fails, to be tried again, and the append with it.
                if let AppendError::Database(db) = &error
                    && db.is_passing()
                {
                    return Err(StepError::from(error));
                }
                Ok(Err(error))
            }
        }
    }

    /// Starts a child run in the step's transaction, on the latest version of its kind
    /// the engine has.
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
        let version = self.inner.workflows.start_version(kind);
        let store = self.inner.store.clone();
        let tx = self.tx()?;
        Ok(start_in(&store, tx, start, version, now).await?)
    }
}
