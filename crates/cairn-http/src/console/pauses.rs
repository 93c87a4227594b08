//! Pausing and resuming workflows: a whole kind (every run of it) or one run, each with
//! a reason; and the kinds with their state for the runs page.
//!
//! A paused run stops after the step in flight (which is recorded) and runs nothing
//! until it is resumed; its timers stay due. A paused kind does that to every run of
//! it, and new runs of it are recorded and wait. Pausing a kind takes a platform
//! administrator; an organization's admin may pause the organization's own runs.

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Redirect, Response};

use cairn_domain::reads;
use cairn_policy::Action;
use cairn_types::WorkflowId;
use cairn_workflow::{ControlError, KindPause, PauseScope, Run, RunStatus};

use super::confirm::{ConfirmPage, Fact, ReasonField, reason_of};
use super::{Form, Session, not_found, problem_page, time_text};
use crate::AppState;
use crate::routes::{allow, read_problem};

/// What the reason field asks for.
const HINT: &str = "Kept in the log with the decision, and shown wherever the pause is.";

/// A workflow kind and its state, for the runs page.
pub(crate) struct KindRow {
    pub kind: String,
    /// `by … since …: why`, while it is paused.
    pub paused: Option<String>,
    /// Why it cannot be paused, when it cannot.
    pub not_pausable: Option<&'static str>,
}

/// Every kind the engine runs, in name order, with its pause.
pub(crate) async fn kind_rows(
    state: &AppState,
    grant: &cairn_policy::Grant,
) -> Result<Vec<KindRow>, reads::ReadsError> {
    let paused = reads::paused_kinds(state.db(), grant).await?;
    let engine = state.domain().engine();
    let mut kinds = engine.kinds();
    kinds.sort_unstable();
    Ok(kinds
        .into_iter()
        .map(|kind| KindRow {
            kind: kind.to_owned(),
            not_pausable: engine.not_pausable(kind),
            paused: paused
                .iter()
                .find(|p| p.kind == kind)
                .map(|p| by_since_why(&p.paused_by, &p.since, &p.reason)),
        })
        .collect())
}

/// `by … since …: why`.
pub(crate) fn by_since_why(
    by: &str,
    since: &chrono::DateTime<chrono::Utc>,
    reason: &str,
) -> String {
    format!("by {by} since {}: {reason}", time_text(since))
}

/// Whether a kind is being paused or resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    Pause,
    Resume,
}

/// The kind named in the path, if the engine runs it, and its pause; a 404 page for
/// another, a 403 page for someone who may not pause kinds.
async fn known_kind(
    state: &AppState,
    session: &Session,
    kind: &str,
) -> Result<(&'static str, Option<KindPause>), Response> {
    let Some(kind) = state
        .domain()
        .engine()
        .kinds()
        .into_iter()
        .find(|k| *k == kind)
    else {
        return Err(not_found(session, "workflow kind"));
    };
    allow(&session.ctx, Action::PauseWorkflowKinds).map_err(|p| problem_page(session, &p))?;
    let grant =
        allow(&session.ctx, Action::ListWorkflows).map_err(|p| problem_page(session, &p))?;
    let paused = reads::paused_kinds(state.db(), &grant)
        .await
        .map_err(|error| problem_page(session, &read_problem(error)))?;
    Ok((kind, paused.into_iter().find(|p| p.kind == kind)))
}

/// The confirmation page for pausing or resuming a kind; a 409 page when it already is
/// as asked.
fn kind_page_for(
    session: &Session,
    turn: Turn,
    kind: &str,
    pause: Option<&KindPause>,
    reason: ReasonField,
) -> Response {
    let mut page = match (turn, pause) {
        (Turn::Pause, Some(pause)) => {
            return problem_page(
                session,
                &crate::routes::workflow_control_problem(ControlError::AlreadyPaused {
                    what: format!("workflow kind {kind}"),
                    by: pause.paused_by.clone(),
                    reason: pause.reason.clone(),
                    since: pause.since,
                }),
            );
        }
        (Turn::Resume, None) => {
            return problem_page(
                session,
                &crate::routes::workflow_control_problem(ControlError::NotPaused {
                    what: format!("workflow kind {kind}"),
                }),
            );
        }
        (Turn::Pause, None) => {
            let mut page = ConfirmPage::new(
                session,
                "/workflows",
                format!("Pause every {kind} run?"),
                format!("/console/workflow-kinds/{kind}/pause"),
                "/console/workflows#kinds",
            );
            page.lead = "Every run of this kind stops after the step it is running (that \
                         step is recorded) and runs nothing until the kind is resumed."
                .to_owned();
            page.explanation = vec![
                "New runs of it are still recorded (the commands that start them succeed) \
                 and wait. Timers stay due, and fire once it is resumed."
                    .to_owned(),
            ];
            page.submit = "Pause the kind".to_owned();
            page.danger = true;
            page
        }
        (Turn::Resume, Some(pause)) => {
            let mut page = ConfirmPage::new(
                session,
                "/workflows",
                format!("Resume every {kind} run?"),
                format!("/console/workflow-kinds/{kind}/resume"),
                "/console/workflows#kinds",
            );
            page.lead = "Its runs go on where they stopped, due timers first.".to_owned();
            page.explanation = vec![
                "A run that is also paused on its own stays paused until it is resumed itself."
                    .to_owned(),
            ];
            page.facts = vec![
                Fact::text("Paused by", pause.paused_by.clone()),
                Fact::text("Since", time_text(&pause.since)),
                Fact::text("Why", pause.reason.clone()),
            ];
            page.submit = "Resume the kind".to_owned();
            page
        }
    };
    page.facts.insert(
        0,
        Fact::code("Kind", kind).link(format!("/console/workflows?kind={kind}")),
    );
    page.reason = reason;
    page.show()
}

/// Why a kind cannot be paused, as the engine would refuse it (a kind that cannot be
/// paused is never paused, so resuming it is refused as "not paused").
fn kind_refusal(state: &AppState, turn: Turn, kind: &str) -> Option<ControlError> {
    let why = state.domain().engine().not_pausable(kind)?;
    (turn == Turn::Pause).then(|| ControlError::NotPausable {
        what: format!("workflow kind {kind}"),
        why,
    })
}

/// The page that says why a pause or a resume is refused.
fn refused_page(session: &Session, refused: ControlError) -> Response {
    problem_page(session, &crate::routes::workflow_control_problem(refused))
}

/// `GET /console/workflow-kinds/{kind}/pause`.
pub(crate) async fn kind_pause_page(
    State(state): State<AppState>,
    session: Session,
    Path(kind): Path<String>,
) -> Response {
    kind_page(&state, &session, Turn::Pause, &kind).await
}

/// `GET /console/workflow-kinds/{kind}/resume`.
pub(crate) async fn kind_resume_page(
    State(state): State<AppState>,
    session: Session,
    Path(kind): Path<String>,
) -> Response {
    kind_page(&state, &session, Turn::Resume, &kind).await
}

async fn kind_page(state: &AppState, session: &Session, turn: Turn, kind: &str) -> Response {
    match known_kind(state, session, kind).await {
        Ok((kind, _)) if let Some(refused) = kind_refusal(state, turn, kind) => {
            refused_page(session, refused)
        }
        Ok((kind, pause)) => kind_page_for(
            session,
            turn,
            kind,
            pause.as_ref(),
            ReasonField::blank(HINT),
        ),
        Err(response) => response,
    }
}

/// `POST /console/workflow-kinds/{kind}/pause`.
pub(crate) async fn kind_pause(
    State(state): State<AppState>,
    session: Session,
    Path(kind): Path<String>,
    request: Request,
) -> Response {
    decide_kind(&state, &session, Turn::Pause, &kind, request).await
}

/// `POST /console/workflow-kinds/{kind}/resume`.
pub(crate) async fn kind_resume(
    State(state): State<AppState>,
    session: Session,
    Path(kind): Path<String>,
    request: Request,
) -> Response {
    decide_kind(&state, &session, Turn::Resume, &kind, request).await
}

/// Pauses or resumes a kind from its confirmation form, then shows the runs page.
async fn decide_kind(
    state: &AppState,
    session: &Session,
    turn: Turn,
    kind: &str,
    request: Request,
) -> Response {
    let (kind, pause) = match known_kind(state, session, kind).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    if let Some(refused) = kind_refusal(state, turn, kind) {
        return refused_page(session, refused);
    }
    let form = match Form::read(request).await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    let reason = match reason_of(&form, HINT) {
        Ok(reason) => reason,
        Err(field) => return kind_page_for(session, turn, kind, pause.as_ref(), field),
    };
    let engine = state.domain().engine();
    let operator = session.ctx.operator();
    let decided = match turn {
        Turn::Pause => engine.pause_kind(kind, &operator, reason).await,
        Turn::Resume => engine.resume_kind(kind, &operator, reason).await,
    };
    match decided {
        Ok(_) => Redirect::to(&format!(
            "/console/workflows?notice={}&kind_changed={kind}#kinds",
            match turn {
                Turn::Pause => "kind-paused",
                Turn::Resume => "kind-resumed",
            }
        ))
        .into_response(),
        Err(error) => problem_page(session, &crate::routes::workflow_control_problem(error)),
    }
}

/// What is done to one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunTurn {
    Pause,
    Resume,
    Cancel,
    Retry,
}

/// The run in the path, if this person sees it and may pause it; a 404 page for a run
/// they do not see, a 403 page for one they may not pause.
async fn pausable_run(state: &AppState, session: &Session, id: &str) -> Result<Run, Response> {
    let missing = || not_found(session, "workflow run");
    let id = WorkflowId::parse(id).map_err(|_| missing())?;
    let grant = allow(&session.ctx, Action::ListWorkflows).map_err(|_| missing())?;
    let run = match reads::workflow(state.db(), &grant, id).await {
        Ok(Some(run)) => run.run,
        Ok(None) => return Err(missing()),
        Err(error) => return Err(problem_page(session, &read_problem(error))),
    };
    allow(&session.ctx, Action::PauseRun(run.org_id)).map_err(|p| problem_page(session, &p))?;
    Ok(run)
}

/// Why `run` cannot be turned as asked, as the engine would refuse it.
fn run_refusal(
    turn: RunTurn,
    run: &Run,
    not_pausable: Option<&'static str>,
) -> Option<ControlError> {
    let what = || format!("workflow run {}", run.id);
    match (turn, &run.paused) {
        (RunTurn::Pause, _) if let Some(why) = not_pausable => Some(ControlError::NotPausable {
            what: format!("{} (a {} run)", what(), run.kind),
            why,
        }),
        (RunTurn::Pause, _) if run.status.is_finished() => Some(ControlError::Finished {
            run_id: run.id,
            status: run.status,
        }),
        (RunTurn::Pause, Some(pause)) if pause.scope == PauseScope::Run => {
            Some(ControlError::AlreadyPaused {
                what: what(),
                by: pause.paused_by.clone(),
                reason: pause.reason.clone(),
                since: pause.since,
            })
        }
        (RunTurn::Resume, Some(pause)) if pause.scope == PauseScope::Kind => {
            Some(ControlError::NotPaused {
                what: format!(
                    "{} (its kind {} is paused: resume the kind)",
                    what(),
                    run.kind
                ),
            })
        }
        (RunTurn::Resume, None) => Some(ControlError::NotPaused { what: what() }),
        (RunTurn::Cancel, _) if run.status != RunStatus::Running => {
            Some(ControlError::NotCancellable {
                run_id: run.id,
                why: format!("it is {}", run.status.as_str()),
            })
        }
        (RunTurn::Retry, _) if run.status != RunStatus::Failed => {
            Some(ControlError::NotRetriable {
                run_id: run.id,
                why: format!("it is {}, not failed", run.status.as_str()),
            })
        }
        _ => None,
    }
}

/// The confirmation page for pausing or resuming `run`; a 409 page when it cannot be.
fn run_page_for(
    state: &AppState,
    session: &Session,
    turn: RunTurn,
    run: &Run,
    reason: ReasonField,
) -> Response {
    let not_pausable = state.domain().engine().not_pausable(&run.kind);
    if let Some(refused) = run_refusal(turn, run, not_pausable) {
        return refused_page(session, refused);
    }
    let href = format!("/console/workflows/{}", run.id);
    let mut page = match turn {
        RunTurn::Pause => {
            let mut page = ConfirmPage::new(
                session,
                "/workflows",
                format!("Pause this {} run?", run.kind),
                format!("{href}/pause"),
                href.clone(),
            );
            page.lead = "The run stops after the step in flight (which is recorded) and runs \
                         nothing until it is resumed."
                .to_owned();
            page.explanation = vec!["Its timers stay due, and fire once it is resumed.".to_owned()];
            page.submit = "Pause the run".to_owned();
            page.danger = true;
            page
        }
        RunTurn::Resume => {
            let mut page = ConfirmPage::new(
                session,
                "/workflows",
                format!("Resume this {} run?", run.kind),
                format!("{href}/resume"),
                href.clone(),
            );
            page.lead = "The run goes on where it stopped; a step whose attempts ran out is \
                         tried again at once."
                .to_owned();
            if let Some(pause) = &run.paused {
                page.facts = vec![
                    Fact::text("Paused by", pause.paused_by.clone()),
                    Fact::text("Since", time_text(&pause.since)),
                    Fact::text("Why", pause.reason.clone()),
                ];
            }
            page.submit = "Resume the run".to_owned();
            page
        }
        RunTurn::Cancel => {
            let mut page = ConfirmPage::new(
                session,
                "/workflows",
                format!("Cancel this {} run?", run.kind),
                format!("{href}/cancel"),
                href.clone(),
            );
            page.lead = "The run stops after the step in flight, undoes what it did (its \
                         compensations, newest first, as after a failure) and ends failed."
                .to_owned();
            page.explanation = vec![
                "This cannot be taken back: a cancelled bootstrap deactivates its organization \
                 and revokes its invitations. A paused run is cancelled at once."
                    .to_owned(),
            ];
            page.submit = "Cancel the run".to_owned();
            page.danger = true;
            page
        }
        RunTurn::Retry => {
            let mut page = ConfirmPage::new(
                session,
                "/workflows",
                format!("Try this {} run again?", run.kind),
                format!("{href}/retry"),
                href.clone(),
            );
            page.lead = "The run goes on from the step that failed, with a fresh set of \
                         attempts."
                .to_owned();
            if let Some(failure) = &run.failure {
                page.facts = vec![Fact::text("It failed", failure.clone())];
            }
            page.submit = "Try it again".to_owned();
            page
        }
    };
    let mut facts = vec![
        Fact::code("Run", run.id.to_string()).link(href),
        Fact::text("Status", run.status.as_str()),
    ];
    if let Some(step) = &run.current_step {
        facts.push(Fact::text("Step", step.clone()));
    }
    facts.append(&mut page.facts);
    page.facts = facts;
    page.reason = reason;
    page.show()
}

/// `GET /console/workflows/{workflow_id}/pause`.
pub(crate) async fn run_pause_page(
    State(state): State<AppState>,
    session: Session,
    Path(workflow_id): Path<String>,
) -> Response {
    run_page(&state, &session, RunTurn::Pause, &workflow_id).await
}

/// `GET /console/workflows/{workflow_id}/resume`.
pub(crate) async fn run_resume_page(
    State(state): State<AppState>,
    session: Session,
    Path(workflow_id): Path<String>,
) -> Response {
    run_page(&state, &session, RunTurn::Resume, &workflow_id).await
}

async fn run_page(state: &AppState, session: &Session, turn: RunTurn, id: &str) -> Response {
    match pausable_run(state, session, id).await {
        Ok(run) => run_page_for(state, session, turn, &run, ReasonField::blank(HINT)),
        Err(response) => response,
    }
}

/// `GET /console/workflows/{workflow_id}/cancel`.
pub(crate) async fn run_cancel_page(
    State(state): State<AppState>,
    session: Session,
    Path(workflow_id): Path<String>,
) -> Response {
    run_page(&state, &session, RunTurn::Cancel, &workflow_id).await
}

/// `GET /console/workflows/{workflow_id}/retry`.
pub(crate) async fn run_retry_page(
    State(state): State<AppState>,
    session: Session,
    Path(workflow_id): Path<String>,
) -> Response {
    run_page(&state, &session, RunTurn::Retry, &workflow_id).await
}

/// `POST /console/workflows/{workflow_id}/cancel`.
pub(crate) async fn run_cancel(
    State(state): State<AppState>,
    session: Session,
    Path(workflow_id): Path<String>,
    request: Request,
) -> Response {
    decide_run(&state, &session, RunTurn::Cancel, &workflow_id, request).await
}

/// `POST /console/workflows/{workflow_id}/retry`.
pub(crate) async fn run_retry(
    State(state): State<AppState>,
    session: Session,
    Path(workflow_id): Path<String>,
    request: Request,
) -> Response {
    decide_run(&state, &session, RunTurn::Retry, &workflow_id, request).await
}

/// `POST /console/workflows/{workflow_id}/pause`.
pub(crate) async fn run_pause(
    State(state): State<AppState>,
    session: Session,
    Path(workflow_id): Path<String>,
    request: Request,
) -> Response {
    decide_run(&state, &session, RunTurn::Pause, &workflow_id, request).await
}

/// `POST /console/workflows/{workflow_id}/resume`.
pub(crate) async fn run_resume(
    State(state): State<AppState>,
    session: Session,
    Path(workflow_id): Path<String>,
    request: Request,
) -> Response {
    decide_run(&state, &session, RunTurn::Resume, &workflow_id, request).await
}

/// Pauses or resumes a run from its confirmation form, then shows the run.
async fn decide_run(
    state: &AppState,
    session: &Session,
    turn: RunTurn,
    id: &str,
    request: Request,
) -> Response {
    let run = match pausable_run(state, session, id).await {
        Ok(run) => run,
        Err(response) => return response,
    };
    let form = match Form::read(request).await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    let reason = match reason_of(&form, HINT) {
        Ok(reason) => reason,
        Err(field) => return run_page_for(state, session, turn, &run, field),
    };
    let engine = state.domain().engine();
    let operator = session.ctx.operator();
    let decided = match turn {
        RunTurn::Pause => engine.pause_run(run.id, &operator, reason).await,
        RunTurn::Resume => engine.resume_run(run.id, &operator, reason).await,
        RunTurn::Cancel => engine.cancel_run(run.id, &operator, reason).await,
        RunTurn::Retry => engine.retry_run(run.id, &operator, reason).await,
    };
    match decided {
        Ok(_) => Redirect::to(&format!(
            "/console/workflows/{}?notice={}",
            run.id,
            match turn {
                RunTurn::Pause => "paused",
                RunTurn::Resume => "resumed",
                RunTurn::Cancel => "cancelled",
                RunTurn::Retry => "retried",
            }
        ))
        .into_response(),
        Err(error) => problem_page(session, &crate::routes::workflow_control_problem(error)),
    }
}
