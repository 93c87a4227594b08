//! Events as they are appended and as they are stored.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use cairn_types::{
    ErrorCode, EventId, EventType, Metadata, Position, StreamId, StreamType, StreamVersion,
};

/// An event to append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_type: EventType,
    pub data: Value,
    pub metadata: Metadata,
    /// The version of the event type's payload `data` is written at; `None` is the
    /// current version of a registered type, and 1 for a type with no contract. Only
    /// an import may declare an older version.
    pub version: Option<u32>,
}

impl NewEvent {
    /// An event with the given type, payload and metadata, at the current version.
    pub fn new(event_type: EventType, data: Value, metadata: Metadata) -> Self {
        Self {
            event_type,
            data,
            metadata,
            version: None,
        }
    }

    /// The same event, declaring the payload version `data` is written at.
    pub fn at_version(mut self, version: u32) -> Self {
        self.version = Some(version);
        self
    }

    /// The version stored with the event: the declared one, else 1. Appends through
    /// the dispatcher set the current version of registered types before this.
    pub fn stored_version(&self) -> u32 {
        self.version.unwrap_or(1)
    }
}

/// What the appender expects the stream's version to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expected {
    /// No check.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must be at exactly this version (0 means "does not exist").
    Exact(StreamVersion),
}

impl Expected {
    /// Whether a stream at `actual` satisfies this expectation.
    pub fn admits(self, actual: StreamVersion) -> bool {
        match self {
            Expected::Any => true,
            Expected::NoStream => actual == StreamVersion::NONE,
            Expected::Exact(version) => actual == version,
        }
    }
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expected::Any => f.write_str("any version"),
            Expected::NoStream => f.write_str("no stream (version 0)"),
            Expected::Exact(version) => write!(f, "version {version}"),
        }
    }
}

/// A caller's key that makes a command safe to repeat: the first append with a key
/// is stored, and a repeat returns the first result and writes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

/// A key that is empty, too long or not printable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("idempotency key {key:?} is not valid: use 1 to 255 printable ASCII characters")]
pub struct IdempotencyKeyError {
    key: String,
}

impl IdempotencyKey {
    /// Checks and wraps a key.
    pub fn parse(key: &str) -> Result<Self, IdempotencyKeyError> {
        let valid = (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic());
        if valid {
            Ok(Self(key.to_owned()))
        } else {
            Err(IdempotencyKeyError {
                key: key.to_owned(),
            })
        }
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One atomic append to one stream.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    pub stream_type: StreamType,
    pub stream_id: StreamId,
    pub expected: Expected,
    pub events: Vec<NewEvent>,
    pub idempotency_key: Option<IdempotencyKey>,
    /// Whether the events come from an import, which may write payloads at the older
    /// versions they were recorded at elsewhere.
    pub importing: bool,
}

impl AppendRequest {
    /// A request to append `events` to a stream, with no version check and no key.
    pub fn new(stream_type: StreamType, stream_id: StreamId, events: Vec<NewEvent>) -> Self {
        Self {
            stream_type,
            stream_id,
            expected: Expected::Any,
            events,
            idempotency_key: None,
            importing: false,
        }
    }

    /// Sets the expected stream version.
    pub fn expect(mut self, expected: Expected) -> Self {
        self.expected = expected;
        self
    }

    /// Sets the idempotency key.
    pub fn idempotency_key(mut self, key: IdempotencyKey) -> Self {
        self.idempotency_key = Some(key);
        self
    }

    /// Marks the request as an import's (see [`AppendRequest::importing`]).
    pub fn importing(mut self) -> Self {
        self.importing = true;
        self
    }
}

/// Why an event was not applied: a stable code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ProcessingError {
    pub code: ErrorCode,
    pub message: String,
}

/// What the dispatcher did with one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// A handler applied it to the projections.
    Applied,
    /// Its stream type has an explicit no-op route: processed, nothing to project.
    Skipped,
    /// It was not applied; its projection writes were rolled back.
    Failed(ProcessingError),
    /// It is stored and waits, not applied: its stream is held behind the event at
    /// `behind` (a failure not yet retried or skipped, or an event whose handler route
    /// is paused). It is applied, in position order, when that event is resolved.
    Held { behind: Position },
}

impl Outcome {
    /// The error, if the event failed.
    pub fn error(&self) -> Option<&ProcessingError> {
        match self {
            Outcome::Failed(error) => Some(error),
            Outcome::Applied | Outcome::Skipped | Outcome::Held { .. } => None,
        }
    }

    /// The position a held event waits behind.
    pub fn held_behind(&self) -> Option<Position> {
        match self {
            Outcome::Held { behind } => Some(*behind),
            Outcome::Applied | Outcome::Skipped | Outcome::Failed(_) => None,
        }
    }

    /// Whether the event's projection writes are in the projections.
    pub fn is_applied(&self) -> bool {
        matches!(self, Outcome::Applied | Outcome::Skipped)
    }
}

/// Why a stream is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HoldCause {
    /// The event it waits behind failed, and its handler route holds the stream.
    Failed,
    /// The handler route of the event it waits behind is paused.
    Paused,
}

impl HoldCause {
    /// The cause as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            HoldCause::Failed => "failed",
            HoldCause::Paused => "paused",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<HoldCause> {
        match text {
            "failed" => Some(HoldCause::Failed),
            "paused" => Some(HoldCause::Paused),
            _ => None,
        }
    }
}

/// A held stream: its later events are stored but not applied until the event at
/// `behind` is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHold {
    pub behind: Position,
    pub cause: HoldCause,
}

/// An event as stored in the log.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct RecordedEvent {
    pub position: Position,
    pub event_id: EventId,
    pub stream_type: StreamType,
    pub stream_id: StreamId,
    pub stream_version: StreamVersion,
    pub event_type: EventType,
    /// The version of the payload `event_data` holds: the stored version as read, the
    /// current version once the registry has upcast it.
    pub event_version: u32,
    /// The version the event was written at, which the hash covers; never changes.
    pub stored_version: u32,
    #[serde(rename = "event_data")]
    pub data: Value,
    #[serde(rename = "event_metadata")]
    pub metadata: Metadata,
    pub created_at: DateTime<Utc>,
    /// When the dispatcher last processed it; `None` until then.
    pub processed_at: Option<DateTime<Utc>>,
    /// Why the last processing did not apply it.
    pub processing_error: Option<ProcessingError>,
    /// The position of the event it waits behind, while it is held.
    pub held_behind: Option<Position>,
    pub hash: String,
}

impl RecordedEvent {
    /// Whether the last processing failed.
    pub fn is_failed(&self) -> bool {
        self.processing_error.is_some()
    }

    /// Whether it is stored and waits behind another event of its stream.
    pub fn is_held(&self) -> bool {
        self.held_behind.is_some()
    }

    /// Records `outcome`, reached at `at`, on the event as read (not in the database).
    pub fn set_outcome(&mut self, outcome: &Outcome, at: DateTime<Utc>) {
        // A held event has not been processed yet.
        self.processed_at = outcome.held_behind().is_none().then_some(at);
        self.processing_error = outcome.error().cloned();
        self.held_behind = outcome.held_behind();
    }

    /// The outcome of the last processing, if there was one. A stored success does not
    /// remember whether a handler or a no-op route took it, so it reads as applied.
    pub fn last_outcome(&self) -> Option<Outcome> {
        if let Some(behind) = self.held_behind {
            return Some(Outcome::Held { behind });
        }
        match (&self.processed_at, &self.processing_error) {
            (_, Some(error)) => Some(Outcome::Failed(error.clone())),
            (Some(_), None) => Some(Outcome::Applied),
            (None, None) => None,
        }
    }
}
