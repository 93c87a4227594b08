//! Positions in the log and versions of a stream.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The global position of an event in the log: 1 for the first event, then 2, 3, …
///
/// Positions are gapless and, once a reader has seen position N, no event is ever
/// committed below N.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Position(i64);

impl Position {
    /// Before the first event: reading "after" it reads from the beginning.
    pub const START: Position = Position(0);

    /// Wraps a raw position; negative values are clamped to [`Position::START`].
    pub const fn new(value: i64) -> Self {
        if value < 0 { Self(0) } else { Self(value) }
    }

    /// The raw value.
    pub const fn get(self) -> i64 {
        self.0
    }

    /// The position right after this one.
    pub const fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Position({})", self.0)
    }
}

/// The version of one stream: how many events it holds. A stream that does not exist
/// yet is at version 0; its first event has version 1.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct StreamVersion(i64);

impl StreamVersion {
    /// The version of a stream with no events.
    pub const NONE: StreamVersion = StreamVersion(0);

    /// Wraps a raw version; negative values are clamped to [`StreamVersion::NONE`].
    pub const fn new(value: i64) -> Self {
        if value < 0 { Self(0) } else { Self(value) }
    }

    /// The raw value.
    pub const fn get(self) -> i64 {
        self.0
    }

    /// The version after one more event.
    pub const fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

impl fmt::Display for StreamVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for StreamVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamVersion({})", self.0)
    }
}
