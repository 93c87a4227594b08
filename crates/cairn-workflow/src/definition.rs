//! What a workflow is: a pure decision over its recorded history, and the steps it
//! asks the engine to perform.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::context::StepContext;

/// What the workflow wants next.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Perform this step (again, if an earlier attempt failed and may be retried).
    Run(StepCall),
    /// Wait until a time. The timer is recorded; the run sleeps, durably.
    Sleep { timer: String, until: DateTime<Utc> },
    /// Finish successfully.
    Complete(Value),
    /// Give up: compensate every completed compensable step, newest first.
    Fail(String),
}

/// Whether a step's effects are all inside the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Everything the step does goes through its transaction, which commits with the
    /// step's record: exactly once.
    Transactional,
    /// The step acts outside the database (sends mail). Its start is recorded first,
    /// so a crash mid-step is known ("in doubt") when the step runs again.
    External,
}

/// How often, and how patiently, to retry a step, and what happens when its attempts
/// run out on a failure that might pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The wait before the second attempt.
    pub initial: Duration,
    /// Each further wait is this many times the last.
    pub factor: f64,
    /// The longest wait.
    pub max: Duration,
    /// What happens when the attempts run out and the last failure was retryable. A
    /// permanent failure always fails the step.
    pub on_exhaustion: Exhaustion,
}

/// What a step's run does when the step's attempts run out on a retryable failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Exhaustion {
    /// The step fails for good, and the run compensates.
    #[default]
    Fail,
    /// The run pauses (a `workflow_control.run_paused` event, an alert on the health
    /// checks) and keeps everything it did: an operator resumes it once the cause is
    /// fixed, and the step is tried again. For failures that mean "not now" (a mail
    /// server that is down), which undoing the run would only make worse.
    Pause,
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let seconds = self.initial.as_secs_f64() * self.factor.powi(exponent);
        Duration::from_secs_f64(seconds.min(self.max.as_secs_f64()).max(0.0))
    }

    /// A policy that keeps trying, with waits growing from `initial` by `factor` up to
    /// `max`, for at least `window` (the sum of its waits), and then does what
    /// `on_exhaustion` says.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cairn_workflow::{Exhaustion, RetryPolicy};
    ///
    /// let policy = RetryPolicy::for_window(
    ///     Duration::from_secs(2), 2.0, Duration::from_secs(45),
    ///     Duration::from_secs(24 * 3600), Exhaustion::Pause,
    /// );
    /// let waited: Duration = (1..policy.max_attempts).map(|n| policy.backoff(n)).sum();
    /// assert!(waited >= Duration::from_secs(24 * 3600));
    /// assert!(waited < Duration::from_secs(24 * 3600 + 45));
    /// ```
    pub fn for_window(
        initial: Duration,
        factor: f64,
        max: Duration,
        window: Duration,
        on_exhaustion: Exhaustion,
    ) -> RetryPolicy {
        let mut policy = RetryPolicy {
            max_attempts: 1,
            initial,
            factor,
            max,
            on_exhaustion,
        };
        let mut waited = Duration::ZERO;
        while waited < window && policy.max_attempts < u32::MAX {
            let wait = policy.backoff(policy.max_attempts);
            if wait.is_zero() {
                break;
            }
            waited += wait;
            policy.max_attempts += 1;
        }
        policy
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial: Duration::from_secs(1),
            factor: 2.0,
            max: Duration::from_secs(300),
            on_exhaustion: Exhaustion::Fail,
        }
    }
}

/// One step to perform.
#[derive(Debug, Clone, PartialEq)]
pub struct StepCall {
    /// Unique within the run; a loop names each iteration (`send_invitation:0190…`).
    pub name: String,
    /// What the step needs, beyond the workflow's input.
    pub args: Value,
    pub effect: Effect,
    pub retry: RetryPolicy,
    /// Whether [`Workflow::compensate`] must undo this step if the workflow fails.
    pub compensable: bool,
}

impl StepCall {
    /// A transactional step with the default retry policy, not compensable.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            args: Value::Null,
            effect: Effect::Transactional,
            retry: RetryPolicy::default(),
            compensable: false,
        }
    }

    pub fn args(mut self, args: Value) -> Self {
        self.args = args;
        self
    }

    pub fn external(mut self) -> Self {
        self.effect = Effect::External;
        self
    }

    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn compensable(mut self) -> Self {
        self.compensable = true;
        self
    }
}

/// Why a step attempt did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    /// Whether another attempt may succeed.
    pub retryable: bool,
    /// The step could not write its events: their stream is held behind an earlier
    /// event, or their handler route is paused. Not a failure of the step: nothing is
    /// recorded, no attempt is used up, and the engine tries again shortly.
    pub blocked: bool,
    pub message: String,
}

impl StepError {
    /// A failure another attempt may fix.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            blocked: false,
            message: message.into(),
        }
    }

    /// A failure no retry will fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            retryable: false,
            blocked: false,
            message: message.into(),
        }
    }

    /// The step must wait: its events would be held (see [`StepError::blocked`]).
    pub fn blocked(message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            blocked: true,
            message: message.into(),
        }
    }
}

impl From<cairn_log::AppendError> for StepError {
    fn from(error: cairn_log::AppendError) -> Self {
        use cairn_log::AppendError as E;
        let message = cairn_types::error_chain(&error);
        match error {
            E::Database(_) | E::Read(_) => StepError::retryable(message),
            E::Held { .. } => StepError::blocked(message),
            // Waits for the process to be given the right personal-data key.
            E::Seal {
                error:
                    cairn_log::SealError::NoKey { .. }
                    | cairn_log::SealError::Rotated { .. }
                    | cairn_log::SealError::Unwrap { .. },
                ..
            } => StepError::blocked(message),
            E::Seal { .. }
            | E::Conflict { .. }
            | E::StreamTypeMismatch { .. }
            | E::KeyReused { .. }
            | E::NoEvents
            | E::InvalidData { .. }
            | E::NotApplied { .. } => StepError::permanent(message),
        }
    }
}

impl From<cairn_log::DbError> for StepError {
    fn from(error: cairn_log::DbError) -> Self {
        StepError::retryable(format!(
            "database error: {}",
            cairn_types::error_chain(&error)
        ))
    }
}

/// The kind of a recorded step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    Action,
    Timer,
    Compensation,
}

/// Where a recorded step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// An attempt started and has not finished: after a crash, its outcome is in doubt.
    Running,
    /// An attempt failed; another is due at `wake_at`.
    Retrying,
    Completed,
    /// Failed for good.
    Failed,
    /// A timer waiting for `wake_at`.
    Waiting,
    /// A timer that went off.
    Fired,
}

/// One step as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct StepRecord {
    pub name: String,
    pub seq: i64,
    pub kind: StepKind,
    pub status: StepStatus,
    pub attempts: u32,
    pub result: Option<Value>,
    pub last_error: Option<String>,
    pub compensable: bool,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub wake_at: Option<DateTime<Utc>>,
}

impl StepRecord {
    /// Why a run whose step this is fails, when the step failed for good: its name and
    /// its last error.
    pub fn failure_reason(&self) -> String {
        format!(
            "step {} failed: {}",
            self.name,
            self.last_error.as_deref().unwrap_or("no message")
        )
    }
}

/// Everything recorded about a run's steps, in the order they first appeared.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct History {
    pub steps: Vec<StepRecord>,
}

impl History {
    /// The step with this name.
    pub fn get(&self, name: &str) -> Option<&StepRecord> {
        self.steps.iter().find(|step| step.name == name)
    }

    /// Whether the step completed.
    pub fn completed(&self, name: &str) -> bool {
        self.get(name)
            .is_some_and(|step| step.status == StepStatus::Completed)
    }

    /// The result of a completed step.
    pub fn result(&self, name: &str) -> Option<&Value> {
        self.get(name)
            .filter(|step| step.status == StepStatus::Completed)
            .and_then(|step| step.result.as_ref())
    }

    /// The first action that failed for good.
    pub fn failure(&self) -> Option<&StepRecord> {
        self.steps
            .iter()
            .find(|step| step.kind == StepKind::Action && step.status == StepStatus::Failed)
    }

    /// When a timer fired, if it did.
    pub fn fired(&self, timer: &str) -> Option<DateTime<Utc>> {
        self.get(timer)
            .filter(|step| step.kind == StepKind::Timer && step.status == StepStatus::Fired)
            .and_then(|step| step.finished_at)
    }
}

/// A workflow: Rust code made of named steps.
///
/// [`Workflow::decide`] is pure: from the input and the recorded history it says what
/// comes next. The engine performs that (through [`Workflow::perform`]), records the
/// result as events in the log, and asks again. After a crash the engine resumes from
/// the record, so a completed step's effect is never performed twice.
#[async_trait]
pub trait Workflow: Send + Sync + 'static {
    /// The name runs of this workflow are started under.
    fn kind(&self) -> &'static str;

    /// The version of this definition of the kind, from 1. A run records the version it
    /// started on and finishes on it: a change to the steps a kind's `decide` asks for,
    /// or to how it reads its input, is a new version (a new type, registered beside the
    /// old one), while the engine still runs the old version's runs. New runs start on
    /// the latest version an engine has.
    fn version(&self) -> u32 {
        1
    }

    /// What comes next. An `Err` is a bug in the workflow or its input; the run fails
    /// (and compensates) with that message.
    fn decide(&self, input: &Value, history: &History) -> Result<Decision, String>;

    /// Performs one step.
    async fn perform(
        &self,
        input: &Value,
        call: &StepCall,
        ctx: &mut StepContext<'_>,
    ) -> Result<Value, StepError>;

    /// Undoes a completed compensable step. Compensations run newest first, each
    /// durable and retried by [`Workflow::compensation_policy`].
    async fn compensate(
        &self,
        input: &Value,
        step: &StepRecord,
        ctx: &mut StepContext<'_>,
    ) -> Result<Value, StepError> {
        let _ = (input, ctx);
        Err(StepError::permanent(format!(
            "step {} is compensable but the workflow does not compensate it",
            step.name
        )))
    }

    /// Why runs of this workflow cannot be paused, when they must not be (the
    /// integration probe's, whose answer is that the chain works now). `None`, by
    /// default: operators may pause the kind and its runs.
    fn not_pausable(&self) -> Option<&'static str> {
        None
    }

    /// How compensations are retried.
    fn compensation_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 10,
            ..RetryPolicy::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial: Duration::from_secs(1),
            factor: 2.0,
            max: Duration::from_secs(10),
            on_exhaustion: Exhaustion::Fail,
        };
        let waits: Vec<u64> = (1..=6)
            .map(|attempt| policy.backoff(attempt).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
    }
}
