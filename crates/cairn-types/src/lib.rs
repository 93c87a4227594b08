//! Identifiers, names and codes that every cairn crate shares.
//!
//! Each value here is parsed once, at the edge, and passed on typed: an [`EventType`]
//! is known to follow the naming convention, a [`StreamId`] is known to be a UUID, an
//! [`ErrorCode`] is one of the documented, never-reused codes.
//!
//! This crate performs no IO and knows nothing about storage layouts, handlers or HTTP.
//! It does know how its identifiers are stored (text on SQLite, `uuid` on PostgreSQL),
//! so that every crate above reads and writes them the same way.

mod codes;
mod ids;
mod metadata;
mod names;
mod numbers;
mod personal;
pub mod pointer;
mod reason;
mod schema;
mod tenancy;

pub use codes::{ErrorCode, UnknownCode};
pub use ids::{
    CausationId, CorrelationId, EventId, IdError, InvitationId, OrgId, StreamId, UserId, WorkflowId,
};
pub use metadata::{Actor, ActorError, Metadata, MetadataError};
pub use names::{EventType, NameError, StreamType};
pub use numbers::{Position, StreamVersion};
pub use personal::{
    Personal, SEALED_KEY, Sealed, SealedField, SealedObject, WITHHELD_KEY, Withheld, WithheldReason,
};
pub use reason::{Reason, ReasonError};
pub use tenancy::Tenancy;

/// An error with its causes, on one line: `outer: inner: innermost`.
///
/// For messages that are stored or shown where no error-reporting library walks the
/// chain (a workflow step's last error, a safety-net record).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// The current time, truncated to the microsecond precision both backends store.
///
/// Every timestamp cairn writes passes through here, so that a value read back from
/// either backend compares equal to the value that was written.
pub fn now_micros() -> chrono::DateTime<chrono::Utc> {
    truncate_to_micros(chrono::Utc::now())
}

/// Truncates a timestamp to microseconds.
pub fn truncate_to_micros(at: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    use chrono::{SubsecRound, Timelike};
    let micros = at.nanosecond() / 1_000;
    at.trunc_subsecs(0) + chrono::Duration::microseconds(i64::from(micros))
}
