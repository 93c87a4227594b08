//! The one dispatcher: every appended event goes through it, in the append's own
//! transaction.
//!
//! The dispatcher routes by stream type to a router, and by event type to a handler,
//! which updates projection tables. By the time an append returns, the projections
//! reflect its events.
//!
//! Invariants this crate keeps:
//! - Only handlers write projections: a write needs a [`Projections`] handle, and only
//!   the dispatcher can create one. The single exception, [`SafetyNet`], is explicit
//!   and leaves an audit record in the same transaction.
//! - An event of a registered type carries a payload that decodes into its Rust type
//!   ([`EventPayload`]); append refuses anything else, naming the field.
//! - Nothing fails silently and nothing half-applies: an unknown stream type (`P9002`),
//!   an unknown event type (`P9001`) or a failing handler (`P9003`, `P9004`) rolls the
//!   handler's writes back to a savepoint, stores the event anyway, and records the
//!   code and message on it. The caller gets each event's [`Outcome`] back.
//! - Replay rebuilds the projections from the log alone; `verify_projections` proves the
//!   live projections are exactly what the log produces.
//!
//! It knows nothing about the domain, workflows or HTTP.
//!
//! [`Outcome`]: cairn_log::Outcome

mod check_log;
mod dispatcher;
pub mod operations;
mod personal;
mod projections;
mod registry;
mod replay;
mod safety_net;
mod sequence;
mod spec;
mod store;
mod views;

pub use check_log::{
    CheckLogReport, FailureStage, LogFailure, NewerEvents, VersionCount, newer_events,
};
pub use dispatcher::Dispatcher;
pub use operations::{
    HandlerRoute, HeldBehind, HeldStream, PausedRoutes, RoutePause, held_counts, held_streams,
};
pub use personal::{DisclosedField, current_event, current_events, current_events_in, disclose};
pub use projections::Projections;
pub use registry::{
    ADMIN_STREAM_TYPES, DecodeError, Handler, HandlerError, ProjectionTable, Registry,
    RegistryBuilder, RegistryError, Route, Router, RouterBuilder, payload,
};
pub use replay::{
    ColumnDiff, Drift, DriftKind, OutcomeChange, ReplayError, ReplayOptions, ReplayReport,
    SafetyNetWrite, TableSummary, VerifyOptions, VerifyReport,
};
pub use safety_net::{MIGRATIONS, SafetyNet, SafetyNetRecord};
pub use spec::{EventPayload, EventSpec, PersonalPath, Upcaster, VersionError, personal_fields};
pub use store::{
    Appended, ControlError, Dispatched, EventStore, Operator, Resumed, RetryError, RetryReport,
    RetrySelection,
};
pub use views::{ReadFuture, TypedView, View};
