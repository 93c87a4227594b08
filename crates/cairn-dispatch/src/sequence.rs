//! The order in which events are applied: the log's, with holds, pauses and the
//! operators' decisions, the same way live and in replay.
//!
//! The log records not only the events but every decision that changed when an event
//! was applied: a retry is a `dispatch.event_retried` record, and the failed event is
//! applied again at the record's place in the log, not at its own; a skip, a pause and
//! a resume are records too. [`process`] is the one place that says what happens at
//! each position, over a [`Ledger`]: the live transaction's (what it reads and writes
//! is the database) or a replay's (the rebuilt copies, and outcomes kept in memory).
//! So `replay --verify` repeats the live system exactly, whatever the operators did.
//!
//! The rules, at an event of an ordinary stream:
//! - its stream is held (behind an earlier event): it is stored and held behind it;
//! - else its route is paused: it is held behind itself, and so is its stream;
//! - else it is dispatched; if it fails and its route holds streams, its stream is held
//!   behind it.
//!
//! At a record of the `dispatch` stream type, once its own handler accepted it:
//! - `event_retried`: the event, if still failed and its route not paused, is
//!   dispatched again; if it now applies and its stream was held behind it, the stream
//!   is released;
//! - `event_skipped`: the event, if still failed, is marked skipped, and its stream
//!   released if held behind it;
//! - `route_paused`: the route's later events are held;
//! - `route_resumed`: every stream held by a pause behind an event of the route is
//!   released.
//!
//! Releasing a stream lifts its hold and applies its held events in position order,
//! each by the rules above, so the first that fails (on a holding route) or meets a
//! paused route holds the rest again, behind itself.

use std::sync::Arc;

use std::future::Future;

use cairn_log::{HoldCause, Outcome, ReadError, RecordedEvent, StreamHold};
use cairn_types::{Position, StreamId};

use crate::dispatcher::Dispatcher;
use crate::operations::{Decision, HandlerRoute, PausedRoutes};

/// What happens to an event of an ordinary stream when its turn comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Dispatch it.
    Apply,
    /// Store it held behind an earlier event of its stream.
    Wait { behind: Position },
    /// Store it held behind itself, and hold its stream behind it: its route is
    /// paused.
    HoldHere,
}

/// Whether an event applies now, from its stream's hold and whether its route is
/// paused.
pub(crate) fn admit(hold: Option<StreamHold>, route_paused: bool) -> Admission {
    match (hold, route_paused) {
        (Some(hold), _) => Admission::Wait {
            behind: hold.behind,
        },
        (None, true) => Admission::HoldHere,
        (None, false) => Admission::Apply,
    }
}

/// Whether a dispatched event's outcome holds its stream behind it.
pub(crate) fn holds_stream(outcome: &Outcome, route_holds: bool) -> bool {
    route_holds && outcome.error().is_some()
}

/// What the sequence reads and writes: the live transaction, or a replay's rebuild.
///
/// Its methods return futures rather than boxing them: they run for every event
/// appended or replayed.
pub(crate) trait Ledger: Send {
    /// Dispatches one event to its handler, isolated as this ledger must be.
    fn dispatch(
        &mut self,
        dispatcher: &Dispatcher,
        event: &RecordedEvent,
    ) -> impl Future<Output = Result<Outcome, ReadError>> + Send;

    /// Whether a failure of this event fails the caller's whole unit of work (an
    /// append that requires its events applied): nothing more is written after it.
    fn fails_unit(&self, event: &RecordedEvent) -> bool;

    /// A stream's hold, now.
    fn hold(
        &mut self,
        stream_id: StreamId,
    ) -> impl Future<Output = Result<Option<StreamHold>, ReadError>> + Send;

    /// Holds `behind`'s stream behind it.
    fn set_hold(
        &mut self,
        behind: &RecordedEvent,
        cause: HoldCause,
    ) -> impl Future<Output = Result<(), ReadError>> + Send;

    /// Lifts the hold of `event`'s stream.
    fn lift_hold(
        &mut self,
        event: &RecordedEvent,
    ) -> impl Future<Output = Result<(), ReadError>> + Send;

    /// The paused handler routes, now.
    fn paused_routes(
        &mut self,
    ) -> impl Future<Output = Result<Arc<PausedRoutes>, ReadError>> + Send;

    /// Says that `record` paused or resumed a route.
    fn routes_changed(
        &mut self,
        record: &RecordedEvent,
    ) -> impl Future<Output = Result<(), ReadError>> + Send;

    /// A stored event, with its outcome as it stands now.
    fn stored(
        &mut self,
        position: Position,
    ) -> impl Future<Output = Result<Option<RecordedEvent>, ReadError>> + Send;

    /// A stream's stored events after `after` and before `before`, in position
    /// order, with their outcomes as they stand now.
    fn stream_events(
        &mut self,
        stream_id: StreamId,
        after: Position,
        before: Position,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, ReadError>> + Send;

    /// Records a stored event's new outcome.
    fn set_outcome(
        &mut self,
        event: &RecordedEvent,
        outcome: &Outcome,
    ) -> impl Future<Output = Result<(), ReadError>> + Send;

    /// The positions that streams held by a pause wait behind, for events of `route`,
    /// in position order.
    fn held_by_pause(
        &mut self,
        route: &HandlerRoute,
    ) -> impl Future<Output = Result<Vec<Position>, ReadError>> + Send;
}

/// Applies the event at its place in the log, and returns its outcome.
pub(crate) async fn process(
    dispatcher: &Dispatcher,
    ledger: &mut impl Ledger,
    event: &RecordedEvent,
) -> Result<Outcome, ReadError> {
    let Some(decision) = Decision::of(dispatcher.registry(), event) else {
        return apply(dispatcher, ledger, event).await;
    };
    let outcome = ledger.dispatch(dispatcher, event).await?;
    if outcome.is_applied() {
        act(dispatcher, ledger, event, decision).await?;
    }
    Ok(outcome)
}

/// An event of an ordinary stream, by the rules of the module's documentation.
async fn apply(
    dispatcher: &Dispatcher,
    ledger: &mut impl Ledger,
    event: &RecordedEvent,
) -> Result<Outcome, ReadError> {
    let hold = ledger.hold(event.stream_id).await?;
    let paused = match hold {
        Some(_) => false,
        None => ledger.paused_routes().await?.covering(event).is_some(),
    };
    match admit(hold, paused) {
        Admission::Wait { behind } => Ok(Outcome::Held { behind }),
        Admission::HoldHere => {
            ledger.set_hold(event, HoldCause::Paused).await?;
            Ok(Outcome::Held {
                behind: event.position,
            })
        }
        Admission::Apply => {
            let outcome = ledger.dispatch(dispatcher, event).await?;
            if outcome.error().is_some() && ledger.fails_unit(event) {
                return Ok(outcome);
            }
            if holds_stream(&outcome, dispatcher.registry().holds(event)) {
                ledger.set_hold(event, HoldCause::Failed).await?;
            }
            Ok(outcome)
        }
    }
}

/// Acts on an operator's decision, at its record.
async fn act(
    dispatcher: &Dispatcher,
    ledger: &mut impl Ledger,
    record: &RecordedEvent,
    decision: Decision,
) -> Result<(), ReadError> {
    match decision {
        Decision::Retried(retried) => {
            let Some(target) = failed_target(ledger, retried.position, retried.event_id).await?
            else {
                return Ok(());
            };
            // A retry is refused while the route is paused, before it is recorded; a
            // record that meets one anyway leaves the event failed.
            if ledger.paused_routes().await?.covering(&target).is_some() {
                return Ok(());
            }
            let outcome = ledger.dispatch(dispatcher, &target).await?;
            ledger.set_outcome(&target, &outcome).await?;
            if outcome.is_applied() {
                release_if_behind(dispatcher, ledger, &target, record.position).await?;
            }
        }
        Decision::Skipped(skipped) => {
            let Some(target) = failed_target(ledger, skipped.position, skipped.event_id).await?
            else {
                return Ok(());
            };
            ledger.set_outcome(&target, &Outcome::Skipped).await?;
            release_if_behind(dispatcher, ledger, &target, record.position).await?;
        }
        Decision::Paused(_) => ledger.routes_changed(record).await?,
        Decision::Resumed(resumed) => {
            ledger.routes_changed(record).await?;
            for behind in ledger.held_by_pause(&resumed.route()).await? {
                if let Some(first) = ledger.stored(behind).await? {
                    // The event the stream waits behind never applied: it goes first.
                    let after = Position::new(behind.get() - 1);
                    release(dispatcher, ledger, &first, after, record.position).await?;
                }
            }
        }
    }
    Ok(())
}

/// The event a retry or a skip names, if it is still failed.
async fn failed_target(
    ledger: &mut impl Ledger,
    position: Position,
    event_id: cairn_types::EventId,
) -> Result<Option<RecordedEvent>, ReadError> {
    Ok(ledger
        .stored(position)
        .await?
        .filter(|target| target.event_id == event_id && target.is_failed()))
}

/// Releases `resolved`'s stream if it is held behind it.
async fn release_if_behind(
    dispatcher: &Dispatcher,
    ledger: &mut impl Ledger,
    resolved: &RecordedEvent,
    record: Position,
) -> Result<(), ReadError> {
    let held_behind_it = ledger
        .hold(resolved.stream_id)
        .await?
        .is_some_and(|hold| hold.behind == resolved.position);
    if held_behind_it {
        release(dispatcher, ledger, resolved, resolved.position, record).await?;
    }
    Ok(())
}

/// Lifts the hold of `stream`'s stream and applies its events after `after` (every
/// one of them held) up to the record that released them, in position order, each by
/// the rules: one that fails or meets a pause holds the rest behind itself.
async fn release(
    dispatcher: &Dispatcher,
    ledger: &mut impl Ledger,
    stream: &RecordedEvent,
    after: Position,
    record: Position,
) -> Result<(), ReadError> {
    ledger.lift_hold(stream).await?;
    for event in ledger
        .stream_events(stream.stream_id, after, record)
        .await?
    {
        let outcome = apply(dispatcher, ledger, &event).await?;
        ledger.set_outcome(&event, &outcome).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(behind: i64, cause: HoldCause) -> Option<StreamHold> {
        Some(StreamHold {
            behind: Position::new(behind),
            cause,
        })
    }

    #[test]
    fn admission() {
        let cases = [
            (None, false, Admission::Apply),
            (None, true, Admission::HoldHere),
            (
                held(7, HoldCause::Failed),
                false,
                Admission::Wait {
                    behind: Position::new(7),
                },
            ),
            // A held stream waits behind its first event, paused route or not.
            (
                held(7, HoldCause::Failed),
                true,
                Admission::Wait {
                    behind: Position::new(7),
                },
            ),
            (
                held(3, HoldCause::Paused),
                false,
                Admission::Wait {
                    behind: Position::new(3),
                },
            ),
        ];
        for (hold, paused, expect) in cases {
            assert_eq!(admit(hold, paused), expect, "{hold:?}, paused: {paused}");
        }
    }

    #[test]
    fn only_a_failure_on_a_holding_route_holds() {
        let failed = Outcome::Failed(cairn_log::ProcessingError {
            code: cairn_types::ErrorCode::HandlerFailed,
            message: "no such organization".into(),
        });
        let cases = [
            (Outcome::Applied, true, false),
            (Outcome::Skipped, true, false),
            (failed.clone(), false, false),
            (failed, true, true),
        ];
        for (outcome, route_holds, expect) in cases {
            assert_eq!(
                holds_stream(&outcome, route_holds),
                expect,
                "{outcome:?}, route holds: {route_holds}"
            );
        }
    }
}
