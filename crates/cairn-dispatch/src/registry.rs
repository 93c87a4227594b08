//! The routing table: stream type → router → event type → handler.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use cairn_log::{ProcessingError, RecordedEvent};
use cairn_types::{ErrorCode, EventType, NameError, Position, StreamType};

use crate::ControlError;
use crate::projections::Projections;
use crate::spec::{EventPayload, EventSpec, VersionError};

/// Why a handler did not apply an event. Its projection writes are rolled back and the
/// error is recorded on the event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The handler refused the event; recorded as `P9003`.
    #[error("{0}")]
    Failed(String),
    /// The stored payload does not decode into the handler's payload type; recorded as
    /// `P9004`.
    #[error("event_data does not match {type_name}: {message}")]
    Payload {
        type_name: &'static str,
        message: String,
    },
    /// A projection query failed; recorded as `P9003`.
    #[error("projection query failed: {0}")]
    Database(#[from] cairn_log::DbError),
}

impl HandlerError {
    /// A refusal with a message for people.
    pub fn failed(message: impl Into<String>) -> Self {
        HandlerError::Failed(message.into())
    }
}

/// Decodes an event's payload into the type a handler expects.
pub fn payload<T: serde::de::DeserializeOwned>(event: &RecordedEvent) -> Result<T, HandlerError> {
    serde_json::from_value(event.data.clone()).map_err(|error| HandlerError::Payload {
        type_name: std::any::type_name::<T>()
            .rsplit("::")
            .next()
            .unwrap_or("the payload type"),
        message: error.to_string(),
    })
}

/// Applies one event type to the projections.
///
/// A handler must be idempotent: applying the same event twice leaves the projections
/// as applying it once does (use upserts keyed by the event's ids, and take times from
/// the event, never from the clock).
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(
        &self,
        event: &RecordedEvent,
        projections: &mut Projections<'_>,
    ) -> Result<(), HandlerError>;
}

/// A projection table the handlers write: replay empties it and rebuilds it, and
/// `replay --verify` rebuilds it into a shadow copy and compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectionTable {
    /// The table's name (unqualified).
    pub name: &'static str,
    /// The columns that identify a row: non-null and unique together (the table's
    /// primary key, in practice). `replay --verify` pairs the rebuilt copy's rows with
    /// the live table's on them, and reports name rows by them.
    pub key: &'static [&'static str],
}

/// Where the dispatcher sends the events of one stream type.
#[derive(Clone)]
pub enum Route {
    /// An administrative stream type: its events are processed and change nothing.
    NoOp { reason: &'static str },
    /// A router with one handler per event type.
    Router(Router),
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Route::NoOp { reason } => write!(f, "NoOp({reason:?})"),
            Route::Router(router) => f.debug_tuple("Router").field(router).finish(),
        }
    }
}

/// The handlers of one stream type, by event type.
#[derive(Clone, Default)]
pub struct Router {
    handlers: BTreeMap<EventType, Arc<dyn Handler>>,
    /// Whether a failed event holds its stream: the stream's later events are stored
    /// but not applied until it is retried or skipped.
    holds: bool,
    /// Why this route may not be paused, if it may not.
    not_pausable: Option<&'static str>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("event_types", &self.handlers.keys().collect::<Vec<_>>())
            .field("holds", &self.holds)
            .finish()
    }
}

impl Router {
    /// The handler for an event type.
    pub fn handler(&self, event_type: &EventType) -> Option<&Arc<dyn Handler>> {
        self.handlers.get(event_type)
    }

    /// The event types this router handles.
    pub fn event_types(&self) -> impl Iterator<Item = &EventType> {
        self.handlers.keys()
    }

    /// Whether a failed event holds its stream (see [`RouterBuilder::hold_streams`]).
    pub fn holds(&self) -> bool {
        self.holds
    }

    /// Why the route may not be paused, if it may not.
    pub fn not_pausable(&self) -> Option<&'static str> {
        self.not_pausable
    }
}

/// A registration that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot register {what}: {source}")]
    BadName {
        what: &'static str,
        #[source]
        source: NameError,
    },
    #[error("stream type {stream_type} is registered twice")]
    DuplicateStreamType { stream_type: String },
    #[error("event type {event_type} has two handlers")]
    DuplicateHandler { event_type: String },
    #[error("projection table {table} is registered twice")]
    DuplicateProjection { table: String },
    #[error("event type {event_type} has two payload types")]
    DuplicatePayload { event_type: String },
    #[error("stream type {stream_type} has two views named {name}")]
    DuplicateView { stream_type: String, name: String },
    #[error("the upcaster chain of event type {event_type} has a gap: {fault}")]
    UpcasterGap { event_type: String, fault: String },
}

/// Why a stored event could not be read as its type's current version. Recorded on the
/// event when the dispatcher meets it, and shown beside the stored payload by reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// `P9006`: written by a newer build; never applied by this one.
    #[error(
        "event {position} ({event_type}) was written at payload version {stored} by a newer \
         build; this build reads up to version {current}"
    )]
    Newer {
        position: Position,
        event_type: EventType,
        stored: u32,
        current: u32,
    },
    /// `P9005`: a step of the chain failed, or there is none from the stored version.
    #[error(
        "event {position} ({event_type}) could not be upcast from payload version {from} to \
         {to}: {message}"
    )]
    Upcast {
        position: Position,
        event_type: EventType,
        from: u32,
        to: u32,
        message: String,
    },
}

impl DecodeError {
    /// The stable code recorded on the event.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::Newer { .. } => ErrorCode::NewerVersion,
            DecodeError::Upcast { .. } => ErrorCode::UpcastFailed,
        }
    }

    /// The failure as recorded on the event.
    pub fn to_processing_error(&self) -> ProcessingError {
        ProcessingError {
            code: self.code(),
            message: self.to_string(),
        }
    }
}

/// The complete routing table. Built once at start-up; names are checked as they are
/// registered.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    routes: BTreeMap<StreamType, Route>,
    projections: Vec<ProjectionTable>,
    specs: BTreeMap<EventType, EventSpec>,
    views: BTreeMap<StreamType, Vec<Arc<dyn crate::views::View>>>,
}

impl std::fmt::Debug for dyn crate::views::View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "View({})", self.name())
    }
}

/// The administrative stream types, which have explicit no-op routes.
pub const ADMIN_STREAM_TYPES: [(&str, &str); 3] = [
    (
        "platform_admin",
        "administrative events of the platform operators",
    ),
    (
        "workflow_queue",
        "workflow bookkeeping; the workflow engine keeps its own tables",
    ),
    ("test", "events written by tests and probes"),
];

impl Registry {
    /// A registry builder, with the router of the operators' decisions (`dispatch`)
    /// that every registry has.
    pub fn builder() -> RegistryBuilder {
        crate::operations::routes(RegistryBuilder::default())
    }

    /// The route for a stream type.
    pub fn route(&self, stream_type: &StreamType) -> Option<&Route> {
        self.routes.get(stream_type)
    }

    /// Every route, by stream type.
    pub fn routes(&self) -> impl Iterator<Item = (&StreamType, &Route)> {
        self.routes.iter()
    }

    /// Whether a failure of this event holds its stream.
    pub fn holds(&self, event: &RecordedEvent) -> bool {
        matches!(self.route(&event.stream_type), Some(Route::Router(router)) if router.holds)
    }

    /// Whether a handler route exists and may be paused; the error says why not:
    /// [`ControlError::UnknownRoute`] for a route there is no handler for,
    /// [`ControlError::NotPausable`] for one that exists but cannot be paused.
    pub fn check_pausable(&self, route: &crate::HandlerRoute) -> Result<(), ControlError> {
        let stream_type = route.stream_type.as_str();
        let router = match self.route(&route.stream_type) {
            None => {
                return Err(ControlError::UnknownRoute(format!(
                    "there is no handler route for stream type {stream_type:?}"
                )));
            }
            Some(Route::NoOp { reason }) => {
                return Err(ControlError::NotPausable(format!(
                    "stream type {stream_type:?} has no handlers to pause ({reason})"
                )));
            }
            Some(Route::Router(router)) => router,
        };
        if let Some(event_type) = &route.event_type
            && router.handler(event_type).is_none()
        {
            return Err(ControlError::UnknownRoute(format!(
                "stream type {stream_type:?} has no handler for event type {:?}",
                event_type.as_str()
            )));
        }
        if let Some(why) = router.not_pausable {
            return Err(ControlError::NotPausable(format!(
                "the handlers of stream type {stream_type:?} cannot be paused: {why}"
            )));
        }
        Ok(())
    }

    /// The projection tables, in registration order.
    pub fn projections(&self) -> &[ProjectionTable] {
        &self.projections
    }

    /// The payload contract of an event type, if one is registered.
    pub fn spec(&self, event_type: &EventType) -> Option<&EventSpec> {
        self.specs.get(event_type)
    }

    /// The event with its payload at the current version of its type: borrowed when it
    /// is already (every event appended by this build), upcast through the type's chain
    /// when it was written at an older one. An event of a type with no contract is
    /// returned as it is. The one way every reader of payloads decodes a stored event.
    pub fn upcast<'a>(
        &self,
        event: &'a RecordedEvent,
    ) -> Result<Cow<'a, RecordedEvent>, DecodeError> {
        match self.spec(&event.event_type) {
            Some(spec) if spec.version != event.event_version => {
                let mut owned = event.clone();
                self.upcast_with(spec, &mut owned)?;
                Ok(Cow::Owned(owned))
            }
            _ => Ok(Cow::Borrowed(event)),
        }
    }

    /// The event as readers serve it: at the current version of its type or, when it
    /// cannot be brought there, as stored (its `event_version` then says which version
    /// `event_data` holds, and its dispatch records why).
    pub fn to_current(&self, event: RecordedEvent) -> RecordedEvent {
        let current = match self.upcast(&event) {
            Ok(Cow::Owned(current)) => Some(current),
            Ok(Cow::Borrowed(_)) => None,
            Err(error) => {
                tracing::warn!(%error, "event served as stored");
                None
            }
        };
        current.unwrap_or(event)
    }

    /// [`Registry::upcast`] on an event the caller owns, without copying it. On an
    /// error the payload is left as the failing step found it: read the event again
    /// before showing or dispatching it.
    pub fn upcast_in_place(&self, event: &mut RecordedEvent) -> Result<(), DecodeError> {
        match self.spec(&event.event_type) {
            Some(spec) if spec.version != event.event_version => self.upcast_with(spec, event),
            _ => Ok(()),
        }
    }

    fn upcast_with(&self, spec: &EventSpec, event: &mut RecordedEvent) -> Result<(), DecodeError> {
        spec.upcast(event.event_version, &mut event.data)
            .map_err(|error| match error {
                VersionError::Newer { stored, current } => DecodeError::Newer {
                    position: event.position,
                    event_type: event.event_type.clone(),
                    stored,
                    current,
                },
                VersionError::Upcast { from, to, message } => DecodeError::Upcast {
                    position: event.position,
                    event_type: event.event_type.clone(),
                    from,
                    to,
                    message,
                },
            })?;
        event.event_version = spec.version;
        Ok(())
    }

    /// Every registered payload contract, by event type.
    pub fn specs(&self) -> impl Iterator<Item = &EventSpec> {
        self.specs.values()
    }

    /// The views of a stream type's streams.
    pub fn views(&self, stream_type: &StreamType) -> &[Arc<dyn crate::views::View>] {
        self.views.get(stream_type).map_or(&[], Vec::as_slice)
    }

    /// Every view, with its stream type.
    pub fn all_views(&self) -> impl Iterator<Item = (&StreamType, &Arc<dyn crate::views::View>)> {
        self.views
            .iter()
            .flat_map(|(stream_type, views)| views.iter().map(move |view| (stream_type, view)))
    }
}

/// Collects registrations; the first bad one is reported by [`RegistryBuilder::build`].
#[derive(Default)]
pub struct RegistryBuilder {
    registry: Registry,
    error: Option<RegistryError>,
}

impl std::fmt::Debug for RegistryBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryBuilder")
            .field("registry", &self.registry)
            .field("error", &self.error)
            .finish()
    }
}

/// Registers the handlers of one stream type.
pub struct RouterBuilder {
    stream_type: StreamType,
    router: Router,
    specs: Vec<EventSpec>,
    error: Option<RegistryError>,
}

impl RouterBuilder {
    /// Routes the event type of payload `P` to `handler`, and registers `P` as the
    /// event type's contract: appends of that type are checked against it.
    pub fn event<P: EventPayload>(mut self, handler: impl Handler) -> Self {
        if self.error.is_some() {
            return self;
        }
        match EventType::parse(P::EVENT_TYPE) {
            Err(source) => {
                self.error = Some(RegistryError::BadName {
                    what: "an event type",
                    source,
                });
                self
            }
            Ok(event_type) => {
                let spec = EventSpec::of::<P>(event_type, self.stream_type.clone());
                if let Some(fault) = spec.chain_fault() {
                    self.error = Some(RegistryError::UpcasterGap {
                        event_type: P::EVENT_TYPE.to_owned(),
                        fault,
                    });
                    return self;
                }
                self.specs.push(spec);
                self.on(P::EVENT_TYPE, handler)
            }
        }
    }

    /// Holds a stream when one of its events fails: its later events are stored but
    /// not applied (their outcome says which event they wait behind) until the failed
    /// one is retried or skipped, and then apply in position order. For streams whose
    /// events mean something only in order (a state machine, a value replaced by each
    /// event), so that a late retry never applies an older event over newer ones.
    pub fn hold_streams(mut self) -> Self {
        self.router.holds = true;
        self
    }

    /// Refuses pauses of this route, saying why (the workflow engine's own records,
    /// which a pause would strand).
    pub fn not_pausable(mut self, why: &'static str) -> Self {
        self.router.not_pausable = Some(why);
        self
    }

    /// Routes `event_type` to `handler`.
    pub fn on(mut self, event_type: &str, handler: impl Handler) -> Self {
        if self.error.is_some() {
            return self;
        }
        match EventType::parse(event_type) {
            Err(source) => {
                self.error = Some(RegistryError::BadName {
                    what: "an event type",
                    source,
                })
            }
            Ok(event_type) => match self.router.handlers.entry(event_type) {
                std::collections::btree_map::Entry::Occupied(entry) => {
                    self.error = Some(RegistryError::DuplicateHandler {
                        event_type: entry.key().to_string(),
                    });
                }
                std::collections::btree_map::Entry::Vacant(entry) => {
                    entry.insert(Arc::new(handler));
                }
            },
        }
        self
    }
}

impl RegistryBuilder {
    fn add_route(
        mut self,
        stream_type: &str,
        route: impl FnOnce(&StreamType) -> Result<(Route, Vec<EventSpec>), RegistryError>,
    ) -> Self {
        if self.error.is_some() {
            return self;
        }
        let stream_type = match StreamType::parse(stream_type) {
            Ok(stream_type) => stream_type,
            Err(source) => {
                self.error = Some(RegistryError::BadName {
                    what: "a stream type",
                    source,
                });
                return self;
            }
        };
        if self.registry.routes.contains_key(&stream_type) {
            self.error = Some(RegistryError::DuplicateStreamType {
                stream_type: stream_type.to_string(),
            });
            return self;
        }
        match route(&stream_type) {
            Ok((route, specs)) => {
                self.registry.routes.insert(stream_type, route);
                for spec in specs {
                    if self.registry.specs.contains_key(&spec.event_type) {
                        self.error = Some(RegistryError::DuplicatePayload {
                            event_type: spec.event_type.to_string(),
                        });
                        break;
                    }
                    self.registry.specs.insert(spec.event_type.clone(), spec);
                }
            }
            Err(error) => self.error = Some(error),
        }
        self
    }

    /// An explicit no-op route: events of this stream type are processed, not failed.
    pub fn no_op(self, stream_type: &str, reason: &'static str) -> Self {
        self.add_route(stream_type, |_| Ok((Route::NoOp { reason }, Vec::new())))
    }

    /// The no-op routes for the administrative stream types (`platform_admin`,
    /// `workflow_queue`, `test`).
    pub fn admin_routes(mut self) -> Self {
        for (stream_type, reason) in ADMIN_STREAM_TYPES {
            self = self.no_op(stream_type, reason);
        }
        self
    }

    /// A router for `stream_type`, with the handlers `build` registers on it.
    pub fn router(
        self,
        stream_type: &str,
        build: impl FnOnce(RouterBuilder) -> RouterBuilder,
    ) -> Self {
        self.add_route(stream_type, |stream_type| {
            let built = build(RouterBuilder {
                stream_type: stream_type.clone(),
                router: Router::default(),
                specs: Vec::new(),
                error: None,
            });
            match built.error {
                Some(error) => Err(error),
                None => Ok((Route::Router(built.router), built.specs)),
            }
        })
    }

    /// Registers a view of the streams of `stream_type`.
    pub fn view(mut self, stream_type: &str, view: impl crate::views::View) -> Self {
        if self.error.is_some() {
            return self;
        }
        let stream_type = match StreamType::parse(stream_type) {
            Ok(stream_type) => stream_type,
            Err(source) => {
                self.error = Some(RegistryError::BadName {
                    what: "a view's stream type",
                    source,
                });
                return self;
            }
        };
        let views = self.registry.views.entry(stream_type.clone()).or_default();
        if views.iter().any(|v| v.name() == view.name()) {
            self.error = Some(RegistryError::DuplicateView {
                stream_type: stream_type.to_string(),
                name: view.name().to_owned(),
            });
        } else {
            views.push(Arc::new(view));
        }
        self
    }

    /// Declares a projection table the handlers write.
    pub fn projection(mut self, table: ProjectionTable) -> Self {
        if self.error.is_none() {
            if self
                .registry
                .projections
                .iter()
                .any(|t| t.name == table.name)
            {
                self.error = Some(RegistryError::DuplicateProjection {
                    table: table.name.to_owned(),
                });
            } else {
                self.registry.projections.push(table);
            }
        }
        self
    }

    /// The registry, or the first registration that was refused.
    pub fn build(self) -> Result<Registry, RegistryError> {
        match self.error {
            Some(error) => Err(error),
            None => Ok(self.registry),
        }
    }
}
