//! Routing one event to its handler inside a savepoint.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt as _;

use cairn_log::{Conn, DbError, Keyring, Outcome, ProcessingError, RecordedEvent};
use cairn_types::ErrorCode;

use crate::projections::Projections;
use crate::registry::{HandlerError, Registry, Route};

/// Routes each event by stream type to a router, and by event type to a handler.
///
/// Never fails silently: an unknown stream type (`P9002`), an unknown event type
/// (`P9001`), a handler error (`P9003`, `P9004`) or a handler panic (`P9003`) is an
/// [`Outcome::Failed`] that the caller stores on the event. A handler sees the payload
/// at its type's current version: an older one is upcast first, and one that cannot be
/// (`P9005`) or was written by a newer build (`P9006`) fails without reaching it. The handler's writes are
/// rolled back to the savepoint taken before it ran, so an event is applied whole or
/// not at all.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    registry: Arc<Registry>,
    keyring: Arc<Keyring>,
}

fn failed(code: ErrorCode, message: String) -> Outcome {
    Outcome::Failed(ProcessingError { code, message })
}

impl Dispatcher {
    /// A dispatcher over a registry, opening sealed personal fields with `keyring`.
    pub fn new(registry: Registry, keyring: Arc<Keyring>) -> Self {
        Self {
            registry: Arc::new(registry),
            keyring,
        }
    }

    /// The routing table.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Dispatches one event on `conn`, which must be inside a transaction. Returns the
    /// outcome; an `Err` means the savepoint itself could not be taken or undone, or
    /// the handler met a conflicting write or a lost connection: the whole unit of
    /// work must be abandoned (and may be tried again).
    ///
    /// With `isolate`, the handler runs in a savepoint and a failure is undone here.
    /// Without, a failed handler's writes (and, on PostgreSQL, the failed statement)
    /// stay in the transaction: the caller must undo them, by failing its whole unit
    /// of work.
    pub(crate) async fn dispatch(
        &self,
        conn: &mut Conn<'_>,
        event: &RecordedEvent,
        isolate: bool,
    ) -> Result<Outcome, DbError> {
        let router = match self.registry.route(&event.stream_type) {
            None => {
                return Ok(failed(
                    ErrorCode::UnknownStreamType,
                    format!(
                        "no route for stream type {:?}: register a router or an explicit no-op \
                         route for it, then retry the event",
                        event.stream_type.as_str()
                    ),
                ));
            }
            Some(Route::NoOp { .. }) => return Ok(Outcome::Skipped),
            Some(Route::Router(router)) => router,
        };
        let Some(handler) = router.handler(&event.event_type) else {
            return Ok(failed(
                ErrorCode::UnknownEventType,
                format!(
                    "the {:?} router has no handler for event type {:?}: register one, then \
                     retry the event",
                    event.stream_type.as_str(),
                    event.event_type.as_str()
                ),
            ));
        };

        let event = match self.registry.upcast(event) {
            Ok(event) => event,
            Err(error) => {
                let outcome = Outcome::Failed(error.to_processing_error());
                tracing::warn!(
                    position = %event.position,
                    event_type = %event.event_type,
                    outcome = ?outcome,
                    "event not applied"
                );
                return Ok(outcome);
            }
        };
        // A handler sees personal fields opened. The live path hands over the event as
        // it was given (sealed only in storage); retries and replays open it here.
        let mut event = event;
        let mut faults = Vec::new();
        if let Some((opened, seal_faults)) =
            crate::personal::open_for_dispatch(&self.keyring, conn, &self.registry, &event).await?
        {
            event = std::borrow::Cow::Owned(opened);
            faults = seal_faults;
        }
        if !faults.is_empty() {
            let messages: Vec<String> = faults.iter().map(ToString::to_string).collect();
            return Ok(failed(
                ErrorCode::SealUnreadable,
                format!(
                    "event {} ({}): {}",
                    event.position,
                    event.event_type,
                    messages.join("; ")
                ),
            ));
        }
        let event = event.as_ref();
        let savepoint = match isolate {
            true => Some(conn.savepoint("cairn_dispatch").await?),
            false => None,
        };
        let result = {
            let mut projections = Projections::new(conn.reborrow());
            AssertUnwindSafe(handler.handle(event, &mut projections))
                .catch_unwind()
                .await
        };
        let outcome = match result {
            Ok(Ok(())) => {
                if let Some(savepoint) = savepoint {
                    conn.release_savepoint("cairn_dispatch", savepoint).await?;
                }
                return Ok(Outcome::Applied);
            }
            // A conflicting write or a lost connection is the transaction's, not the
            // handler's: the whole unit of work fails with it, as a write that may
            // succeed when tried again, instead of the event being stored as failed.
            Ok(Err(HandlerError::Database(error))) if error.is_passing() => {
                if let Some(savepoint) = savepoint {
                    conn.rollback_to_savepoint("cairn_dispatch", savepoint)
                        .await?;
                }
                return Err(error);
            }
            Ok(Err(error)) => {
                let code = match &error {
                    HandlerError::Payload { .. } => ErrorCode::PayloadMismatch,
                    HandlerError::Failed(_) | HandlerError::Database(_) => ErrorCode::HandlerFailed,
                };
                failed(code, cairn_types::error_chain(&error))
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a non-text panic payload".to_owned());
                failed(
                    ErrorCode::HandlerFailed,
                    format!("the handler panicked: {message}"),
                )
            }
        };
        if let Some(savepoint) = savepoint {
            conn.rollback_to_savepoint("cairn_dispatch", savepoint)
                .await?;
        }
        tracing::warn!(
            position = %event.position,
            event_type = %event.event_type,
            outcome = ?outcome,
            "event not applied"
        );
        Ok(outcome)
    }
}
