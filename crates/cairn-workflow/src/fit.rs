//! Whether a run's recorded history still fits a definition, decided without the
//! database: the definition's `decide` is replayed over each prefix of the recorded
//! steps, and each decision must name the step recorded next.
//!
//! Only the steps the run took are replayed (actions and timers, in the order they
//! first appeared); compensations are the engine's, not the definition's. The last
//! decision, over the whole history, must be one the engine could act on for a run
//! that is still running: not an error, and not a step or timer that is already
//! finished. A compensating run has already decided to fail, so its last decision is
//! not asked for.

use serde::Serialize;
use serde_json::Value;

use crate::definition::{Decision, History, StepKind, StepStatus, Workflow};
use crate::definitions::versions_text;
use crate::plan::panic_message;
use crate::state::{Run, RunStatus};

/// Why a run's history does not fit its definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "misfit", rename_all = "snake_case")]
pub enum Misfit {
    /// The build has no definition of the run's kind at the run's version.
    #[error(
        "this build does not have {kind} v{version} (it has {})",
        versions_text(kind, have)
    )]
    MissingDefinition {
        kind: String,
        version: u32,
        /// The versions of the kind the build has.
        have: Vec<u32>,
    },
    /// Over the first `at` recorded steps, the definition asks for something else than
    /// the step recorded next.
    #[error("after {} the definition asks for {decided}, but the run recorded {recorded}", steps(*at))]
    Diverges {
        at: usize,
        recorded: String,
        decided: String,
    },
    /// Over the first `at` recorded steps, the definition's decide fails (or panics).
    #[error("after {} the definition's decide fails: {message}", steps(*at))]
    DecideFails { at: usize, message: String },
    /// Over the whole history, the definition asks again for a step that is finished.
    #[error("the definition asks for {step} again, which is already {}", status_text(*status))]
    Repeats { step: String, status: StepStatus },
}

fn steps(n: usize) -> String {
    if n == 1 {
        "1 step".to_owned()
    } else {
        format!("{n} steps")
    }
}

fn status_text(status: StepStatus) -> &'static str {
    match status {
        StepStatus::Running => "running",
        StepStatus::Retrying => "retrying",
        StepStatus::Completed => "completed",
        StepStatus::Failed => "failed",
        StepStatus::Waiting => "waiting",
        StepStatus::Fired => "fired",
    }
}

/// What a decision asks for, for people.
fn describe(decision: &Decision) -> String {
    match decision {
        Decision::Run(call) => format!("step {}", call.name),
        Decision::Sleep { timer, .. } => format!("timer {timer}"),
        Decision::Complete(_) => "completion".to_owned(),
        Decision::Fail(reason) => format!("failure ({reason})"),
    }
}

/// The definition's decision, with a panic turned into an error as the engine does.
fn decide(workflow: &dyn Workflow, input: &Value, history: &History) -> Result<Decision, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        workflow.decide(input, history)
    }))
    .unwrap_or_else(|panic| Err(format!("it panicked: {}", panic_message(panic.as_ref()))))
}

/// Whether `run`, whose recorded steps are `history`, fits `workflow`.
pub fn check_fit(workflow: &dyn Workflow, run: &Run, history: &History) -> Result<(), Misfit> {
    let mut taken: Vec<_> = history
        .steps
        .iter()
        .filter(|step| step.kind != StepKind::Compensation)
        .cloned()
        .collect();
    taken.sort_by_key(|step| step.seq);
    for at in 0..=taken.len() {
        let prefix = History {
            steps: taken[..at].to_vec(),
        };
        let decision = decide(workflow, &run.input, &prefix)
            .map_err(|message| Misfit::DecideFails { at, message })?;
        match taken.get(at) {
            Some(recorded) => {
                let names_it = match &decision {
                    Decision::Run(call) => {
                        recorded.kind == StepKind::Action && call.name == recorded.name
                    }
                    Decision::Sleep { timer, .. } => {
                        recorded.kind == StepKind::Timer && *timer == recorded.name
                    }
                    Decision::Complete(_) | Decision::Fail(_) => false,
                };
                if !names_it {
                    let what = match recorded.kind {
                        StepKind::Timer => "timer",
                        StepKind::Action | StepKind::Compensation => "step",
                    };
                    return Err(Misfit::Diverges {
                        at,
                        recorded: format!("{what} {}", recorded.name),
                        decided: describe(&decision),
                    });
                }
            }
            None if run.status != RunStatus::Running => {}
            None => {
                let asked = match &decision {
                    Decision::Run(call) => prefix.get(&call.name).filter(|step| {
                        step.kind != StepKind::Action
                            || !matches!(step.status, StepStatus::Running | StepStatus::Retrying)
                    }),
                    Decision::Sleep { timer, .. } => prefix.get(timer).filter(|step| {
                        step.kind != StepKind::Timer || step.status != StepStatus::Waiting
                    }),
                    Decision::Complete(_) | Decision::Fail(_) => None,
                };
                if let Some(step) = asked {
                    return Err(Misfit::Repeats {
                        step: step.name.clone(),
                        status: step.status,
                    });
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{StepCall, StepError, StepRecord};
    use crate::testing::at;
    use serde_json::json;

    /// Runs `a`, sleeps on `nap`, runs `b`; with `{"v": 2}` in its input it names `b`
    /// `b2` instead; `{"broken": true}` makes its decide fail after `a`, and
    /// `{"panics": true}` makes it panic at once.
    struct Nap;

    #[async_trait::async_trait]
    impl Workflow for Nap {
        fn kind(&self) -> &'static str {
            "nap"
        }

        fn decide(&self, input: &Value, history: &History) -> Result<Decision, String> {
            if input["panics"] == json!(true) {
                panic!("no nap today");
            }
            if history.failure().is_some() {
                return Ok(Decision::Fail("a step failed".to_owned()));
            }
            if !history.completed("a") {
                return Ok(Decision::Run(StepCall::new("a")));
            }
            if input["broken"] == json!(true) {
                return Err("input.broken is set".to_owned());
            }
            if history.fired("nap").is_none() {
                return Ok(Decision::Sleep {
                    timer: "nap".to_owned(),
                    until: at(100),
                });
            }
            let b = if input["v"] == json!(2) { "b2" } else { "b" };
            if !history.completed(b) {
                return Ok(Decision::Run(StepCall::new(b)));
            }
            if input["again"] == json!(true) {
                return Ok(Decision::Run(StepCall::new("a")));
            }
            Ok(Decision::Complete(Value::Null))
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
        crate::testing::run("nap", status, input)
    }

    /// A recorded step: `a`, `b`… are actions, `nap` a timer, `compensate:…` undoes.
    fn step(seq: i64, name: &str, status: StepStatus) -> StepRecord {
        let kind = if name == "nap" {
            StepKind::Timer
        } else if name.starts_with("compensate:") {
            StepKind::Compensation
        } else {
            StepKind::Action
        };
        StepRecord {
            name: name.to_owned(),
            seq,
            kind,
            status,
            attempts: 1,
            result: None,
            last_error: None,
            compensable: false,
            started_at: None,
            finished_at: Some(at(seq)),
            wake_at: None,
        }
    }

    /// One check: a run's status, input and recorded steps (in the order they first
    /// appeared), and what the check says.
    #[track_caller]
    fn check(status: RunStatus, input: Value, steps: &[(&str, StepStatus)], expect: &str) {
        let history = History {
            steps: steps
                .iter()
                .enumerate()
                .map(|(seq, (name, status))| step(seq as i64, name, *status))
                .collect(),
        };
        let said = match check_fit(&Nap, &run(status, input), &history) {
            Ok(()) => "fits".to_owned(),
            Err(misfit) => misfit.to_string(),
        };
        assert_eq!(said, expect);
    }

    #[test]
    fn a_history_fits_when_each_decision_names_the_next_step() {
        use StepStatus::*;
        let running = RunStatus::Running;
        let v1 = json!({});
        let v2 = json!({"v": 2});
        check(running, v1.clone(), &[], "fits");
        check(running, v1.clone(), &[("a", Running)], "fits");
        check(running, v1.clone(), &[("a", Retrying)], "fits");
        check(running, v1.clone(), &[("a", Completed)], "fits");
        check(
            running,
            v1.clone(),
            &[("a", Completed), ("nap", Waiting)],
            "fits",
        );
        check(
            running,
            v1.clone(),
            &[("a", Completed), ("nap", Fired), ("b", Completed)],
            "fits",
        );
        // The first step recorded is not the one the definition starts with.
        check(
            running,
            v1.clone(),
            &[("b", Completed)],
            "after 0 steps the definition asks for step a, but the run recorded step b",
        );
        // A run of the old steps checked against a definition that renamed one.
        check(
            running,
            v2.clone(),
            &[("a", Completed), ("nap", Fired), ("b", Completed)],
            "after 2 steps the definition asks for step b2, but the run recorded step b",
        );
        check(
            running,
            v2,
            &[("a", Completed), ("nap", Fired), ("b2", Running)],
            "fits",
        );
        // A timer where the definition runs a step, and the other way round.
        check(
            running,
            v1.clone(),
            &[("a", Completed), ("b", Completed)],
            "after 1 step the definition asks for timer nap, but the run recorded step b",
        );
        check(
            running,
            v1.clone(),
            &[("nap", Fired)],
            "after 0 steps the definition asks for step a, but the run recorded timer nap",
        );
        check(
            running,
            json!({"broken": true}),
            &[("a", Completed), ("nap", Waiting)],
            "after 1 step the definition's decide fails: input.broken is set",
        );
        check(
            running,
            json!({"panics": true}),
            &[],
            "after 0 steps the definition's decide fails: it panicked: no nap today",
        );
        // The whole history, for a running run: asking again for a finished step.
        check(
            running,
            json!({"again": true}),
            &[("a", Completed), ("nap", Fired), ("b", Completed)],
            "the definition asks for a again, which is already completed",
        );
        // Finished steps recorded after the definition would have completed.
        check(
            running,
            v1.clone(),
            &[
                ("a", Completed),
                ("nap", Fired),
                ("b", Completed),
                ("c", Completed),
            ],
            "after 3 steps the definition asks for completion, but the run recorded step c",
        );
    }

    #[test]
    fn compensations_are_left_out_and_a_compensating_run_is_not_asked_to_go_on() {
        use StepStatus::*;
        let undoing = RunStatus::Compensating;
        check(
            undoing,
            json!({}),
            &[("a", Completed), ("nap", Fired), ("b", Failed)],
            "fits",
        );
        check(
            undoing,
            json!({}),
            &[
                ("a", Completed),
                ("nap", Fired),
                ("b", Failed),
                ("compensate:a", Completed),
            ],
            "fits",
        );
        // Its last decision is not asked for, but every earlier one is.
        check(
            undoing,
            json!({"again": true}),
            &[("a", Completed), ("nap", Fired), ("b", Completed)],
            "fits",
        );
        check(
            undoing,
            json!({"v": 2}),
            &[("a", Completed), ("nap", Fired), ("b", Failed)],
            "after 2 steps the definition asks for step b2, but the run recorded step b",
        );
    }

    #[test]
    fn a_missing_definition_names_what_the_build_has() {
        let misfit = Misfit::MissingDefinition {
            kind: "organization_bootstrap".to_owned(),
            version: 1,
            have: vec![2],
        };
        assert_eq!(
            misfit.to_string(),
            "this build does not have organization_bootstrap v1 (it has v2)"
        );
        assert_eq!(
            serde_json::to_value(&misfit).expect("serializable"),
            json!({"misfit": "missing_definition", "kind": "organization_bootstrap", "version": 1, "have": [2]})
        );
    }
}
