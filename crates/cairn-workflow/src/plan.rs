//! What the engine does next for a run, decided from the run, its recorded history and
//! the workflow's own decision, without touching the database.
//!
//! [`next`] names one thing: record an event (a timer, a completion, the start of
//! compensation), perform an attempt of a step, or wait. [`after`] turns an attempt's
//! outcome into the event that records it. The engine does what they say and nothing
//! else, so every rule about retries, timers and compensation order lives here, with
//! tests that need no database.

use chrono::{DateTime, Utc};
use serde_json::Value;

use cairn_dispatch::EventPayload as _;
use cairn_log::NewEvent;
use cairn_types::Metadata;

use crate::definition::{
    Decision, Effect, Exhaustion, History, StepCall, StepError, StepKind, StepRecord, StepStatus,
    Workflow,
};
use crate::engine::compensation_name;
use crate::events::{
    CompensationFailed, CompensationStarted, StepAttemptFailed, StepCompleted, StepFailed,
    StepStarted, TimerFired, TimerStarted, WorkflowCompleted, WorkflowFailed,
};
use crate::state::{Run, RunStatus};

/// Whether an attempt performs a step or undoes one.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Role {
    Action,
    /// Undoes this completed step.
    Compensation(StepRecord),
}

/// One attempt of a step, to perform.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Attempt {
    pub(crate) call: StepCall,
    pub(crate) role: Role,
    /// From 1.
    pub(crate) number: u32,
    /// An earlier attempt started and never finished: its effect may have happened.
    pub(crate) in_doubt: bool,
}

impl Attempt {
    pub(crate) fn compensation(&self) -> bool {
        matches!(self.role, Role::Compensation(_))
    }

    /// Whether the attempt's start is recorded before it runs: a step that acts outside
    /// the database must be known to be in doubt if the process stops mid-way.
    pub(crate) fn records_start(&self) -> bool {
        self.call.effect == Effect::External
    }

    /// How urgently the attempt's outcome is recorded. What a step did outside the
    /// database is already done: its record goes ahead of the queue, so that a crash
    /// leaves it in doubt for as short a time as can be.
    pub(crate) fn outcome_priority(&self) -> cairn_log::Priority {
        if self.records_start() {
            cairn_log::Priority::Urgent
        } else {
            cairn_log::Priority::Normal
        }
    }

    /// The record of the attempt's start.
    pub(crate) fn started(&self, at: DateTime<Utc>) -> RunEvent {
        RunEvent::StepStarted(StepStarted {
            step: self.call.name.clone(),
            attempt: self.number,
            compensation: self.compensation(),
            at,
        })
    }
}

/// What to do next for a run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Next {
    /// Record this event; then look again, unless `stop`.
    Record { event: RunEvent, stop: bool },
    /// Perform an attempt of a step.
    Perform(Attempt),
    /// Nothing to do now: the run is finished, or waits for a timer or a retry.
    Wait,
}

/// An event of a run's stream, before it has metadata.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RunEvent {
    StepStarted(StepStarted),
    StepCompleted(StepCompleted),
    StepAttemptFailed(StepAttemptFailed),
    StepFailed(StepFailed),
    TimerStarted(TimerStarted),
    TimerFired(TimerFired),
    CompensationStarted(CompensationStarted),
    Completed(WorkflowCompleted),
    Failed(WorkflowFailed),
    CompensationFailed(CompensationFailed),
}

impl RunEvent {
    pub(crate) fn to_event(&self, metadata: Metadata) -> NewEvent {
        match self {
            RunEvent::StepStarted(e) => e.to_event(metadata),
            RunEvent::StepCompleted(e) => e.to_event(metadata),
            RunEvent::StepAttemptFailed(e) => e.to_event(metadata),
            RunEvent::StepFailed(e) => e.to_event(metadata),
            RunEvent::TimerStarted(e) => e.to_event(metadata),
            RunEvent::TimerFired(e) => e.to_event(metadata),
            RunEvent::CompensationStarted(e) => e.to_event(metadata),
            RunEvent::Completed(e) => e.to_event(metadata),
            RunEvent::Failed(e) => e.to_event(metadata),
            RunEvent::CompensationFailed(e) => e.to_event(metadata),
        }
    }
}

fn record(event: RunEvent) -> Next {
    Next::Record { event, stop: false }
}

fn record_and_stop(event: RunEvent) -> Next {
    Next::Record { event, stop: true }
}

/// What comes next for `run`, whose recorded steps are `history`, at `now`.
pub(crate) fn next(
    workflow: &dyn Workflow,
    run: &Run,
    history: &History,
    now: DateTime<Utc>,
) -> Next {
    if run.status.is_finished() || run.next_run_at.is_none_or(|at| at > now) {
        return Next::Wait;
    }
    match run.status {
        RunStatus::Running => {
            // A panicking decide is a bug like an Err: it would panic again on every
            // look, so the run fails (and compensates) instead of being stuck.
            let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                workflow.decide(&run.input, history)
            }));
            let decision = match decided {
                Ok(Ok(decision)) => decision,
                Ok(Err(message)) => Decision::Fail(format!("the workflow cannot go on: {message}")),
                Err(panic) => Decision::Fail(format!(
                    "the workflow cannot go on: its decide panicked: {}",
                    panic_message(panic.as_ref())
                )),
            };
            match decision {
                Decision::Run(call) => attempt(call, Role::Action, history, now),
                Decision::Sleep { timer, until } => match history.get(&timer) {
                    None => record(RunEvent::TimerStarted(TimerStarted {
                        timer,
                        until,
                        at: now,
                    })),
                    Some(step)
                        if step.status == StepStatus::Waiting
                            && step.wake_at.is_some_and(|at| at <= now) =>
                    {
                        record(RunEvent::TimerFired(TimerFired { timer, at: now }))
                    }
                    Some(step) if step.status == StepStatus::Waiting => Next::Wait,
                    Some(_) => record(RunEvent::CompensationStarted(CompensationStarted {
                        reason: format!(
                            "the workflow asked to sleep on timer {timer}, which already fired"
                        ),
                        at: now,
                    })),
                },
                Decision::Complete(output) => {
                    record_and_stop(RunEvent::Completed(WorkflowCompleted { output, at: now }))
                }
                Decision::Fail(reason) => {
                    record(RunEvent::CompensationStarted(CompensationStarted {
                        reason,
                        at: now,
                    }))
                }
            }
        }
        RunStatus::Compensating => compensate(workflow, run, history, now),
        RunStatus::Completed | RunStatus::Failed | RunStatus::CompensationFailed => Next::Wait,
    }
}

/// Every compensation runs, newest first, even when an earlier one failed for good:
/// one stuck undo must not keep the others (the safety net among them) from running.
fn compensate(workflow: &dyn Workflow, run: &Run, history: &History, now: DateTime<Utc>) -> Next {
    let compensable = history.steps.iter().rev().filter(|step| {
        step.kind == StepKind::Action && step.compensable && step.status == StepStatus::Completed
    });
    let mut failed: Vec<(String, Option<String>)> = Vec::new();
    for step in compensable {
        match history.get(&compensation_name(&step.name)) {
            Some(done) if done.status == StepStatus::Completed => {}
            Some(done) if done.status == StepStatus::Failed => {
                failed.push((step.name.clone(), done.last_error.clone()));
            }
            _ => {
                let call = StepCall::new(compensation_name(&step.name))
                    .retry(workflow.compensation_policy());
                return attempt(call, Role::Compensation(step.clone()), history, now);
            }
        }
    }
    if failed.is_empty() {
        let reason = run
            .failure
            .clone()
            .unwrap_or_else(|| "the workflow failed".to_owned());
        return record_and_stop(RunEvent::Failed(WorkflowFailed { reason, at: now }));
    }
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
    record_and_stop(RunEvent::CompensationFailed(CompensationFailed {
        step: failed[0].0.clone(),
        error,
        at: now,
    }))
}

fn attempt(call: StepCall, role: Role, history: &History, now: DateTime<Utc>) -> Next {
    let previous = history.get(&call.name);
    if let Some(step) = previous {
        match step.status {
            StepStatus::Retrying if step.wake_at.is_some_and(|at| at > now) => return Next::Wait,
            StepStatus::Completed
            | StepStatus::Failed
            | StepStatus::Waiting
            | StepStatus::Fired => {
                return record(RunEvent::CompensationStarted(CompensationStarted {
                    reason: format!(
                        "the workflow asked to run step {}, which is already {:?}: a bug in its decide",
                        call.name, step.status
                    ),
                    at: now,
                }));
            }
            StepStatus::Running | StepStatus::Retrying => {}
        }
    }
    Next::Perform(Attempt {
        number: previous.map_or(1, |step| step.attempts + 1),
        in_doubt: previous.is_some_and(|step| step.status == StepStatus::Running),
        call,
        role,
    })
}

/// What a panic said, when it said it in text.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic payload".to_owned())
}

/// The error a panicking attempt failed with: retryable, like any fault that may be
/// gone next time, so that the step's retry policy and then compensation apply.
pub(crate) fn panicked(message: &str) -> StepError {
    StepError::retryable(format!("the step panicked: {message}"))
}

/// How an attempt's outcome is recorded.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Recorded {
    /// The event of the run's stream.
    pub(crate) event: RunEvent,
    /// Whether the run can go on at `now` (false: it waits for a retry, or pauses).
    pub(crate) go_on: bool,
    /// Why the run pauses with this record: the step's attempts ran out on a failure
    /// that may pass, and its policy says to pause rather than fail.
    pub(crate) pause: Option<String>,
}

/// The record of an attempt's outcome.
pub(crate) fn after(
    attempt: &Attempt,
    outcome: Result<Value, StepError>,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Recorded {
    let step = attempt.call.name.clone();
    let compensation = attempt.compensation();
    let policy = attempt.call.retry;
    let exhausted = attempt.number >= policy.max_attempts;
    match outcome {
        Ok(result) => Recorded {
            event: RunEvent::StepCompleted(StepCompleted {
                step,
                attempt: attempt.number,
                result,
                compensable: attempt.call.compensable,
                compensation,
                started_at,
                finished_at,
            }),
            go_on: true,
            pause: None,
        },
        Err(error) if error.retryable && !exhausted => {
            let wait = chrono::Duration::from_std(policy.backoff(attempt.number))
                .unwrap_or(chrono::Duration::zero());
            let retry_at = finished_at + wait;
            Recorded {
                event: RunEvent::StepAttemptFailed(StepAttemptFailed {
                    step,
                    attempt: attempt.number,
                    error: error.message,
                    compensation,
                    started_at,
                    finished_at,
                    retry_at,
                }),
                go_on: retry_at <= now,
                pause: None,
            }
        }
        // Out of attempts on a failure that may pass: the run keeps what it did and
        // waits for an operator; resumed, it tries the step again at once.
        Err(error) if error.retryable && policy.on_exhaustion == Exhaustion::Pause => {
            let pause = format!(
                "step {step} failed {} times, the last: {}; resume the run once the cause is fixed",
                attempt.number, error.message
            );
            Recorded {
                event: RunEvent::StepAttemptFailed(StepAttemptFailed {
                    step,
                    attempt: attempt.number,
                    error: error.message,
                    compensation,
                    started_at,
                    finished_at,
                    retry_at: finished_at,
                }),
                go_on: false,
                pause: Some(pause),
            }
        }
        Err(error) => Recorded {
            event: RunEvent::StepFailed(StepFailed {
                step,
                attempt: attempt.number,
                error: error.message,
                permanent: !error.retryable,
                compensation,
                started_at,
                finished_at,
            }),
            go_on: true,
            pause: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::RetryPolicy;
    use crate::testing::at;
    use serde_json::json;

    /// A workflow that runs `a` then `b` (compensable), then completes; `b` may ask to
    /// sleep on a timer first.
    struct Two;

    #[async_trait::async_trait]
    impl Workflow for Two {
        fn kind(&self) -> &'static str {
            "two"
        }

        fn decide(&self, input: &Value, history: &History) -> Result<Decision, String> {
            if !history.completed("a") {
                return Ok(Decision::Run(StepCall::new("a").retry(RetryPolicy {
                    max_attempts: 3,
                    initial: std::time::Duration::from_secs(10),
                    factor: 2.0,
                    max: std::time::Duration::from_secs(60),
                    on_exhaustion: Exhaustion::Fail,
                })));
            }
            if input["sleep"] == json!(true) && history.fired("nap").is_none() {
                return Ok(Decision::Sleep {
                    timer: "nap".to_owned(),
                    until: at(100),
                });
            }
            if !history.completed("b") {
                return Ok(Decision::Run(StepCall::new("b").compensable()));
            }
            Ok(Decision::Complete(json!("done")))
        }

        async fn perform(
            &self,
            _input: &Value,
            _call: &StepCall,
            _ctx: &mut crate::StepContext<'_>,
        ) -> Result<Value, StepError> {
            Ok(Value::Null)
        }
    }

    fn run(status: RunStatus, input: Value) -> Run {
        let mut run = crate::testing::run("two", status, input);
        run.failure = Some("b broke".to_owned());
        run
    }

    fn step(name: &str, kind: StepKind, status: StepStatus, attempts: u32) -> StepRecord {
        StepRecord {
            name: name.to_owned(),
            seq: 0,
            kind,
            status,
            attempts,
            result: None,
            last_error: (status == StepStatus::Failed).then(|| format!("{name} broke")),
            compensable: name == "b",
            started_at: None,
            finished_at: None,
            wake_at: match status {
                StepStatus::Retrying | StepStatus::Waiting => Some(at(50)),
                _ => None,
            },
        }
    }

    fn history(steps: &[StepRecord]) -> History {
        History {
            steps: steps.to_vec(),
        }
    }

    /// One check: the run's status and history at a time, and what must come next.
    #[track_caller]
    fn check(status: RunStatus, input: Value, steps: &[StepRecord], now: i64, expect: &str) {
        let next = next(&Two, &run(status, input), &history(steps), at(now));
        let said = match &next {
            Next::Wait => "wait".to_owned(),
            Next::Perform(attempt) => format!(
                "perform {} #{}{}{}",
                attempt.call.name,
                attempt.number,
                if attempt.in_doubt { " in doubt" } else { "" },
                if attempt.compensation() {
                    " (undo)"
                } else {
                    ""
                }
            ),
            Next::Record { event, stop } => format!(
                "record {}{}",
                match event {
                    RunEvent::TimerStarted(_) => "timer started",
                    RunEvent::TimerFired(_) => "timer fired",
                    RunEvent::CompensationStarted(_) => "compensation started",
                    RunEvent::Completed(_) => "completed",
                    RunEvent::Failed(_) => "failed",
                    RunEvent::CompensationFailed(_) => "compensation failed",
                    _ => "a step event",
                },
                if *stop { ", stop" } else { "" }
            ),
        };
        assert_eq!(said, expect);
    }

    #[test]
    fn the_plan_follows_the_history() {
        use StepKind::{Action, Compensation, Timer};
        use StepStatus::*;
        let run_ = RunStatus::Running;
        let undo = RunStatus::Compensating;
        let none = json!({});
        let sleepy = json!({"sleep": true});
        check(run_, none.clone(), &[], 0, "perform a #1");
        check(
            run_,
            none.clone(),
            &[step("a", Action, Running, 1)],
            0,
            "perform a #2 in doubt",
        );
        check(
            run_,
            none.clone(),
            &[step("a", Action, Retrying, 1)],
            10,
            "wait",
        );
        check(
            run_,
            none.clone(),
            &[step("a", Action, Retrying, 1)],
            60,
            "perform a #2",
        );
        check(
            run_,
            none.clone(),
            &[step("a", Action, Completed, 1)],
            0,
            "perform b #1",
        );
        check(
            run_,
            none.clone(),
            &[
                step("a", Action, Completed, 1),
                step("b", Action, Completed, 1),
            ],
            0,
            "record completed, stop",
        );
        check(
            run_,
            sleepy.clone(),
            &[step("a", Action, Completed, 1)],
            0,
            "record timer started",
        );
        check(
            run_,
            sleepy.clone(),
            &[
                step("a", Action, Completed, 1),
                step("nap", Timer, Waiting, 0),
            ],
            10,
            "wait",
        );
        check(
            run_,
            sleepy,
            &[
                step("a", Action, Completed, 1),
                step("nap", Timer, Waiting, 0),
            ],
            60,
            "record timer fired",
        );
        check(
            undo,
            none.clone(),
            &[
                step("a", Action, Completed, 1),
                step("b", Action, Completed, 1),
            ],
            0,
            "perform compensate:b #1 (undo)",
        );
        check(
            undo,
            none.clone(),
            &[
                step("b", Action, Completed, 1),
                step("compensate:b", Compensation, Completed, 1),
            ],
            0,
            "record failed, stop",
        );
        check(
            undo,
            none.clone(),
            &[
                step("b", Action, Completed, 1),
                step("compensate:b", Compensation, Failed, 10),
            ],
            0,
            "record compensation failed, stop",
        );
        check(RunStatus::Completed, none, &[], 0, "wait");
    }

    #[test]
    fn a_decide_that_repeats_a_finished_step_compensates() {
        struct Again;
        #[async_trait::async_trait]
        impl Workflow for Again {
            fn kind(&self) -> &'static str {
                "again"
            }
            fn decide(&self, _input: &Value, _history: &History) -> Result<Decision, String> {
                Ok(Decision::Run(StepCall::new("a")))
            }
            async fn perform(
                &self,
                _input: &Value,
                _call: &StepCall,
                _ctx: &mut crate::StepContext<'_>,
            ) -> Result<Value, StepError> {
                Ok(Value::Null)
            }
        }
        let next = next(
            &Again,
            &run(RunStatus::Running, json!({})),
            &history(&[step("a", StepKind::Action, StepStatus::Completed, 1)]),
            at(0),
        );
        assert!(
            matches!(&next, Next::Record { event: RunEvent::CompensationStarted(e), stop: false } if e.reason.contains("a bug in its decide")),
            "{next:?}"
        );
    }

    #[test]
    fn a_decide_that_panics_fails_the_run_like_one_that_errs() {
        struct Broken;
        #[async_trait::async_trait]
        impl Workflow for Broken {
            fn kind(&self) -> &'static str {
                "broken"
            }
            fn decide(&self, input: &Value, _history: &History) -> Result<Decision, String> {
                match input["how"].as_str() {
                    Some("err") => Err("input.x is missing".to_owned()),
                    Some("text") => panic!("index out of bounds"),
                    Some("formatted") => panic!("{} out of {}", 3, 2),
                    _ => std::panic::panic_any(42_u8),
                }
            }
            async fn perform(
                &self,
                _input: &Value,
                _call: &StepCall,
                _ctx: &mut crate::StepContext<'_>,
            ) -> Result<Value, StepError> {
                Ok(Value::Null)
            }
        }
        let table = [
            ("err", "the workflow cannot go on: input.x is missing"),
            (
                "text",
                "the workflow cannot go on: its decide panicked: index out of bounds",
            ),
            (
                "formatted",
                "the workflow cannot go on: its decide panicked: 3 out of 2",
            ),
            (
                "other",
                "the workflow cannot go on: its decide panicked: a non-text panic payload",
            ),
        ];
        for (how, reason) in table {
            let next = next(
                &Broken,
                &run(RunStatus::Running, json!({ "how": how })),
                &history(&[]),
                at(0),
            );
            assert_eq!(
                next,
                Next::Record {
                    event: RunEvent::CompensationStarted(CompensationStarted {
                        reason: reason.to_owned(),
                        at: at(0),
                    }),
                    stop: false,
                },
                "{how}"
            );
        }
    }

    #[test]
    fn a_panic_is_a_retryable_failure_and_external_outcomes_go_first() {
        let error = panicked("boom");
        assert!(error.retryable);
        assert_eq!(error.message, "the step panicked: boom");
        let attempt = |call: StepCall| Attempt {
            call,
            role: Role::Action,
            number: 1,
            in_doubt: false,
        };
        assert_eq!(
            attempt(StepCall::new("send").external()).outcome_priority(),
            cairn_log::Priority::Urgent
        );
        assert_eq!(
            attempt(StepCall::new("write")).outcome_priority(),
            cairn_log::Priority::Normal
        );
    }

    #[test]
    fn outcomes_retry_until_the_policy_gives_up_or_pauses() {
        let attempt = |number, on_exhaustion| Attempt {
            call: StepCall::new("a").retry(RetryPolicy {
                max_attempts: 3,
                initial: std::time::Duration::from_secs(10),
                factor: 2.0,
                max: std::time::Duration::from_secs(60),
                on_exhaustion,
            }),
            role: Role::Action,
            number,
            in_doubt: false,
        };
        let flaky = || Err(StepError::retryable("flaky"));
        type Check = fn(&RunEvent) -> bool;
        #[allow(clippy::type_complexity)]
        let table: [(
            u32,
            Exhaustion,
            Result<Value, StepError>,
            Check,
            bool,
            Option<&str>,
        ); 7] = [
            (
                1,
                Exhaustion::Fail,
                Ok(json!(1)),
                |e| matches!(e, RunEvent::StepCompleted(_)),
                true,
                None,
            ),
            (
                2,
                Exhaustion::Fail,
                flaky(),
                |e| matches!(e, RunEvent::StepAttemptFailed(f) if f.retry_at == at(21)),
                false,
                None,
            ),
            (
                3,
                Exhaustion::Fail,
                flaky(),
                |e| matches!(e, RunEvent::StepFailed(f) if !f.permanent),
                true,
                None,
            ),
            (
                1,
                Exhaustion::Fail,
                Err(StepError::permanent("no")),
                |e| matches!(e, RunEvent::StepFailed(f) if f.permanent),
                true,
                None,
            ),
            (
                2,
                Exhaustion::Pause,
                flaky(),
                |e| matches!(e, RunEvent::StepAttemptFailed(f) if f.retry_at == at(21)),
                false,
                None,
            ),
            (
                3,
                Exhaustion::Pause,
                flaky(),
                // Due at once when resumed.
                |e| matches!(e, RunEvent::StepAttemptFailed(f) if f.retry_at == at(1)),
                false,
                Some(
                    "step a failed 3 times, the last: flaky; resume the run once the cause is fixed",
                ),
            ),
            // A permanent failure fails whatever the policy says.
            (
                1,
                Exhaustion::Pause,
                Err(StepError::permanent("no")),
                |e| matches!(e, RunEvent::StepFailed(f) if f.permanent),
                true,
                None,
            ),
        ];
        for (number, on_exhaustion, outcome, check, go_on, pause) in table {
            let recorded = after(
                &attempt(number, on_exhaustion),
                outcome,
                at(0),
                at(1),
                at(1),
            );
            assert!(
                check(&recorded.event),
                "attempt {number}, {on_exhaustion:?}: {recorded:?}"
            );
            assert_eq!(recorded.go_on, go_on, "attempt {number}, {on_exhaustion:?}");
            assert_eq!(
                recorded.pause.as_deref(),
                pause,
                "attempt {number}, {on_exhaustion:?}"
            );
        }
    }
}
