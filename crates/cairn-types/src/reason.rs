//! Why an operator did something: the text every pause, resume and skip carries.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize};

/// An operator's reason: 1 to [`Reason::MAX_CHARS`] characters of text, not all
/// blank, with no control characters but tabs and line breaks. Leading and trailing
/// white space is trimmed.
///
/// ```
/// use cairn_types::Reason;
///
/// assert_eq!(Reason::parse("  mail provider down  ")?.as_str(), "mail provider down");
/// assert!(Reason::parse("   ").unwrap_err().to_string().contains("empty"));
/// # Ok::<(), cairn_types::ReasonError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Reason(String);

/// Text that is not a reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReasonError {
    #[error("a reason is required: it is empty")]
    Empty,
    #[error("a reason is at most {max} characters; this one has {chars}", max = Reason::MAX_CHARS)]
    TooLong { chars: usize },
    #[error(
        "a reason may not contain control characters but tabs and line breaks (found {found:?} at character {at})"
    )]
    Control { found: char, at: usize },
}

impl Reason {
    /// The longest reason, in characters.
    pub const MAX_CHARS: usize = 500;

    /// Checks and trims a reason.
    pub fn parse(text: &str) -> Result<Self, ReasonError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(ReasonError::Empty);
        }
        let chars = text.chars().count();
        if chars > Self::MAX_CHARS {
            return Err(ReasonError::TooLong { chars });
        }
        if let Some((at, found)) = text
            .chars()
            .enumerate()
            .find(|(_, c)| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        {
            return Err(ReasonError::Control { found, at: at + 1 });
        }
        Ok(Self(text.to_owned()))
    }

    /// The reason as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reason({:?})", self.0)
    }
}

impl std::str::FromStr for Reason {
    type Err = ReasonError;
    fn from_str(text: &str) -> Result<Self, ReasonError> {
        Self::parse(text)
    }
}

impl<'de> Deserialize<'de> for Reason {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Reason {
    fn schema_name() -> Cow<'static, str> {
        "Reason".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": Reason::MAX_CHARS,
            "pattern": "^[^\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f][^\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f]*$",
            "description": "Why, for the people who read the log later: 1 to 500 characters, not only spaces, no control characters but tabs and line breaks."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons() {
        let cases: [(&str, Result<&str, &str>); 7] = [
            ("mail provider down", Ok("mail provider down")),
            ("\t fixed the handler \n", Ok("fixed the handler")),
            ("two\nlines", Ok("two\nlines")),
            ("", Err("empty")),
            (" \n ", Err("empty")),
            ("bell\u{7}", Err("control characters")),
            (&"x".repeat(501), Err("at most 500")),
        ];
        for (input, expect) in cases {
            match (Reason::parse(input), expect) {
                (Ok(got), Ok(want)) => assert_eq!(got.as_str(), want, "{input:?}"),
                (Err(got), Err(fragment)) => {
                    assert!(got.to_string().contains(fragment), "{input:?}: {got}")
                }
                (got, want) => panic!("{input:?}: got {got:?}, expected {want:?}"),
            }
        }
        assert!(
            Reason::parse(&"é".repeat(500)).is_ok(),
            "characters, not bytes"
        );
    }
}
