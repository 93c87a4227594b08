//! Event type and stream type names, and the naming convention they follow.
//!
//! The convention is the one the event log has always used: dots separate hierarchy
//! levels and underscores join the words inside one level.
//!
//! ```text
//! organization.bootstrap.completed             levels: organization / bootstrap / completed
//! organization.direct_care_settings_updated    one level, four words
//! ```
//!
//! A level is lower-case ASCII letters and digits, starts with a letter, and uses single
//! underscores only between words. An event type has at least two levels; a stream type
//! is exactly one level. A name that breaks the convention is refused wherever it enters
//! (registration, append, the command line) with an error that says which rule it broke.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

/// The longest name accepted, in bytes.
const MAX_LEN: usize = 128;

/// A name that breaks the naming convention, with the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} {name:?} is {len} bytes long; the limit is {MAX_LEN}")]
    TooLong {
        what: &'static str,
        name: String,
        len: usize,
    },
    #[error(
        "event type {name:?} has one level; an event type has at least two, joined by dots \
         (<stream>.<fact>, e.g. organization.created)"
    )]
    OneLevel { name: String },
    #[error(
        "stream type {name:?} has several levels; a stream type is one level \
         (e.g. organization, workflow_queue)"
    )]
    SeveralLevels { name: String },
    #[error(
        "{what} {name:?}: level {level} is empty (a dot at the start, at the end or twice in a row)"
    )]
    EmptyLevel {
        what: &'static str,
        name: String,
        level: usize,
    },
    #[error(
        "{what} {name:?}: level {level} ({segment:?}) has upper-case letters; words inside a \
         level are lower-case and joined by underscores, e.g. direct_care_settings_updated"
    )]
    UpperCase {
        what: &'static str,
        name: String,
        level: usize,
        segment: String,
    },
    #[error(
        "{what} {name:?}: level {level} ({segment:?}) contains {found:?}; only a-z, 0-9 and \
         underscores between words are allowed (dots separate levels, underscores join words)"
    )]
    BadCharacter {
        what: &'static str,
        name: String,
        level: usize,
        segment: String,
        found: char,
    },
    #[error("{what} {name:?}: level {level} ({segment:?}) must start with a letter")]
    LeadingDigit {
        what: &'static str,
        name: String,
        level: usize,
        segment: String,
    },
    #[error(
        "{what} {name:?}: level {level} ({segment:?}) has an underscore at its start, at its \
         end or twice in a row; underscores only join words, as in direct_care_settings_updated"
    )]
    StrayUnderscore {
        what: &'static str,
        name: String,
        level: usize,
        segment: String,
    },
}

fn check_level(
    what: &'static str,
    name: &str,
    level: usize,
    segment: &str,
) -> Result<(), NameError> {
    let owned = || (name.to_owned(), segment.to_owned());
    if segment.is_empty() {
        return Err(NameError::EmptyLevel {
            what,
            name: name.to_owned(),
            level,
        });
    }
    if segment.chars().any(|c| c.is_ascii_uppercase()) {
        let (name, segment) = owned();
        return Err(NameError::UpperCase {
            what,
            name,
            level,
            segment,
        });
    }
    if let Some(found) = segment
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        let (name, segment) = owned();
        return Err(NameError::BadCharacter {
            what,
            name,
            level,
            segment,
            found,
        });
    }
    if segment.starts_with(|c: char| c.is_ascii_digit()) {
        let (name, segment) = owned();
        return Err(NameError::LeadingDigit {
            what,
            name,
            level,
            segment,
        });
    }
    if segment.starts_with('_') || segment.ends_with('_') || segment.contains("__") {
        let (name, segment) = owned();
        return Err(NameError::StrayUnderscore {
            what,
            name,
            level,
            segment,
        });
    }
    Ok(())
}

fn check_length(what: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    if name.len() > MAX_LEN {
        return Err(NameError::TooLong {
            what,
            name: name.to_owned(),
            len: name.len(),
        });
    }
    Ok(())
}

/// The name of a kind of event: a fact in the past tense, such as
/// `organization.direct_care_settings_updated`.
///
/// ```
/// use cairn_types::EventType;
///
/// let event_type = EventType::parse("organization.direct_care_settings_updated")?;
/// assert_eq!(event_type.levels().collect::<Vec<_>>(), ["organization", "direct_care_settings_updated"]);
///
/// let err = EventType::parse("organization.DirectCareSettingsUpdated").unwrap_err();
/// assert!(err.to_string().contains("upper-case"));
/// # Ok::<(), cairn_types::NameError>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct EventType(String);

impl EventType {
    /// Parses a name, checking the naming convention.
    pub fn parse(name: &str) -> Result<Self, NameError> {
        const WHAT: &str = "event type";
        check_length(WHAT, name)?;
        let levels: Vec<&str> = name.split('.').collect();
        for (index, segment) in levels.iter().enumerate() {
            check_level(WHAT, name, index + 1, segment)?;
        }
        if levels.len() < 2 {
            return Err(NameError::OneLevel {
                name: name.to_owned(),
            });
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The dot-separated levels, outermost first.
    pub fn levels(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }
}

/// The kind of stream an event belongs to (`organization`, `user`, `workflow_queue`): the
/// dispatcher's first routing key.
///
/// ```
/// use cairn_types::StreamType;
///
/// assert!(StreamType::parse("workflow_queue").is_ok());
/// assert!(StreamType::parse("workflow.queue").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct StreamType(String);

impl StreamType {
    /// Parses a name, checking the naming convention.
    pub fn parse(name: &str) -> Result<Self, NameError> {
        const WHAT: &str = "stream type";
        check_length(WHAT, name)?;
        if name.contains('.') {
            return Err(NameError::SeveralLevels {
                name: name.to_owned(),
            });
        }
        check_level(WHAT, name, 1, name)?;
        Ok(Self(name.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! name_impls {
    ($name:ident) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(name: &str) -> Result<Self, NameError> {
                Self::parse(name)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_impls!(EventType);
name_impls!(StreamType);

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_event(name: &str, expect: Result<(), &str>) {
        let got = EventType::parse(name)
            .map(|_| ())
            .map_err(|e| e.to_string());
        match (got, expect) {
            (Ok(()), Ok(())) => {}
            (Err(got), Err(fragment)) => assert!(
                got.contains(fragment),
                "error for {name:?} was {got:?}, expected it to mention {fragment:?}"
            ),
            (got, expect) => panic!("{name:?}: got {got:?}, expected {expect:?}"),
        }
    }

    #[test]
    fn event_type_convention() {
        check_event("organization.created", Ok(()));
        check_event("organization.bootstrap.completed", Ok(()));
        check_event("organization.direct_care_settings_updated", Ok(()));
        check_event("user.role_assigned", Ok(()));
        check_event("v2.test9.ping", Ok(()));
        check_event("", Err("is empty"));
        check_event("created", Err("has one level"));
        check_event("organization..created", Err("level 2 is empty"));
        check_event(".organization.created", Err("level 1 is empty"));
        check_event("organization.created.", Err("level 3 is empty"));
        check_event("organization.DirectCareSettingsUpdated", Err("upper-case"));
        check_event("user.role-assigned", Err("contains '-'"));
        check_event("user.role assigned", Err("contains ' '"));
        check_event("user.9lives", Err("must start with a letter"));
        check_event("user._invited", Err("underscore at its start"));
        check_event("user.invited_", Err("underscore at its start, at its end"));
        check_event("user.role__assigned", Err("twice in a row"));
        check_event(&format!("a.{}", "b".repeat(200)), Err("the limit is 128"));
    }

    #[test]
    fn stream_type_convention() {
        assert!(StreamType::parse("organization").is_ok());
        assert!(StreamType::parse("platform_admin").is_ok());
        let err = StreamType::parse("workflow.queue").unwrap_err().to_string();
        assert!(err.contains("stream type is one level"), "{err}");
        let err = StreamType::parse("Workflow").unwrap_err().to_string();
        assert!(err.contains("upper-case"), "{err}");
    }

    #[test]
    fn deserializing_checks_the_convention() {
        let err = serde_json::from_str::<EventType>("\"User.Created\"").unwrap_err();
        assert!(err.to_string().contains("upper-case"), "{err}");
        let ok: EventType = serde_json::from_str("\"user.created\"").unwrap();
        assert_eq!(ok.as_str(), "user.created");
    }
}
