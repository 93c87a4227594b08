//! The stable codes recorded in `processing_error` when an event is not applied.
//!
//! This is the one place a code is defined and documented. A code is never reused for
//! another meaning, and a retired code keeps its variant.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why the dispatcher did not apply an event.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum ErrorCode {
    /// `P9001`: the router of the event's stream type has no handler for its event type.
    /// The event is stored; register a handler and retry it.
    UnknownEventType,
    /// `P9002`: the dispatcher has no route for the event's stream type. The event is
    /// stored; register a router (or an explicit no-op route) and retry it.
    UnknownStreamType,
    /// `P9003`: the handler returned an error. Its projection writes were rolled back;
    /// the message is the handler's own.
    HandlerFailed,
    /// `P9004`: the stored payload does not match the payload type the handler expects
    /// (an event written before a change to its schema, or by a foreign writer).
    PayloadMismatch,
    /// `P9005`: an upcaster could not bring the stored payload from its version to the
    /// next (or the chain has no step from that version). The message names the
    /// position, the event type and both versions.
    UpcastFailed,
    /// `P9006`: the event was written by a newer build, at a payload version this build
    /// does not have; it is never applied by an older build. The message names both
    /// versions. Retry it once the newer build runs again.
    NewerVersion,
    /// `P9007`: a sealed personal field could not be opened: its seal does not match
    /// what was sealed (tampered with), or its data key is wrapped by a key this
    /// process was not given. The message names the field and the person.
    SealUnreadable,
}

impl ErrorCode {
    /// Every code, in code order.
    pub const ALL: [ErrorCode; 7] = [
        ErrorCode::UnknownEventType,
        ErrorCode::UnknownStreamType,
        ErrorCode::HandlerFailed,
        ErrorCode::PayloadMismatch,
        ErrorCode::UpcastFailed,
        ErrorCode::NewerVersion,
        ErrorCode::SealUnreadable,
    ];

    /// The code as stored and shown: `P9001`, …
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::UnknownEventType => "P9001",
            ErrorCode::UnknownStreamType => "P9002",
            ErrorCode::HandlerFailed => "P9003",
            ErrorCode::PayloadMismatch => "P9004",
            ErrorCode::UpcastFailed => "P9005",
            ErrorCode::NewerVersion => "P9006",
            ErrorCode::SealUnreadable => "P9007",
        }
    }

    /// A short title for people.
    pub const fn title(self) -> &'static str {
        match self {
            ErrorCode::UnknownEventType => "unknown event type",
            ErrorCode::UnknownStreamType => "unknown stream type",
            ErrorCode::HandlerFailed => "handler failed",
            ErrorCode::PayloadMismatch => "payload does not match its type",
            ErrorCode::UpcastFailed => "payload could not be upcast",
            ErrorCode::NewerVersion => "written by a newer build",
            ErrorCode::SealUnreadable => "sealed field unreadable",
        }
    }
}

/// Text that is not one of the codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an error code; the codes are P9001 to P9007")]
pub struct UnknownCode {
    input: String,
}

impl FromStr for ErrorCode {
    type Err = UnknownCode;
    fn from_str(input: &str) -> Result<Self, UnknownCode> {
        ErrorCode::ALL
            .into_iter()
            .find(|code| code.as_str().eq_ignore_ascii_case(input.trim()))
            .ok_or_else(|| UnknownCode {
                input: input.to_owned(),
            })
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "{code} defined twice");
            assert_eq!(code.as_str().parse::<ErrorCode>(), Ok(code));
        }
        assert!("P9999".parse::<ErrorCode>().is_err());
    }

    #[test]
    fn the_seed_codes_keep_their_meaning() {
        assert_eq!(ErrorCode::UnknownEventType.as_str(), "P9001");
        assert_eq!(ErrorCode::UnknownStreamType.as_str(), "P9002");
    }
}
