//! The domain's values, checked when they are made.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use cairn_mail::EmailAddress;

/// A checked, lower-cased email address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Email(EmailAddress);

impl Email {
    /// Checks the syntax.
    pub fn parse(input: &str) -> Result<Self, String> {
        EmailAddress::parse(input)
            .map(Email)
            .map_err(|e| e.to_string())
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The address, for the mailer.
    pub fn address(&self) -> &EmailAddress {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Serialize for Email {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Email {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Email::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Email {
    fn schema_name() -> Cow<'static, str> {
        "Email".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "format": "email", "maxLength": 254})
    }
}

/// An organization's URL name: lower-case letters and digits in words joined by single
/// hyphens, 3 to 63 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Slug(String);

impl Slug {
    pub fn parse(input: &str) -> Result<Self, String> {
        let valid_chars = input
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !(3..=63).contains(&input.len()) {
            return Err(format!("{input:?} must be 3 to 63 characters long"));
        }
        if !valid_chars || input.starts_with('-') || input.ends_with('-') || input.contains("--") {
            return Err(format!(
                "{input:?} is not a slug: use lower-case letters and digits, with single hyphens between words (e.g. sunrise-care)"
            ));
        }
        Ok(Slug(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Slug {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Slug {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Slug::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Slug {
    fn schema_name() -> Cow<'static, str> {
        "Slug".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "pattern": "^[a-z0-9]+(-[a-z0-9]+)*$", "minLength": 3, "maxLength": 63})
    }
}

/// A display name for a person or an organization: 1 to 200 characters, trimmed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Name(String);

impl Name {
    pub fn parse(input: &str) -> Result<Self, String> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err("must not be empty".to_owned());
        }
        if trimmed.chars().count() > 200 {
            return Err("must be at most 200 characters".to_owned());
        }
        if trimmed.chars().any(char::is_control) {
            return Err("must not contain control characters".to_owned());
        }
        Ok(Name(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Name::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Name {
    fn schema_name() -> Cow<'static, str> {
        "Name".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "minLength": 1, "maxLength": 200})
    }
}

pub use cairn_policy::Role;

/// How an organization delivers direct care.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectCareSettings {
    /// Visits must be verified by the client before they count.
    pub visit_verification: bool,
    /// Clients are assigned to named staff.
    pub client_assignment: bool,
    /// The most clients one staff member may have (1 to 500).
    #[schemars(range(min = 1, max = 500))]
    #[serde(deserialize_with = "whole_number")]
    pub max_caseload: u32,
}

/// Reads a whole number, written as `20` or `20.0` (JSON Schema counts both as an
/// integer).
fn whole_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    if let Some(n) = number.as_u64() {
        return u32::try_from(n).map_err(|_| serde::de::Error::custom(format!("{n} is too large")));
    }
    match number.as_f64() {
        Some(f) if f.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&f) => Ok(f as u32),
        _ => Err(serde::de::Error::custom(format!(
            "{number} is not a whole number of 0 or more"
        ))),
    }
}

impl Default for DirectCareSettings {
    fn default() -> Self {
        Self {
            visit_verification: true,
            client_assignment: true,
            max_caseload: 25,
        }
    }
}

impl DirectCareSettings {
    /// The field-level problems, if any.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if !(1..=500).contains(&self.max_caseload) {
            problems.push((
                "max_caseload",
                format!("must be 1 to 500, not {}", self.max_caseload),
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert!(Slug::parse("sunrise-care").is_ok());
        assert!(Slug::parse("care24").is_ok());
        for (bad, fragment) in [
            ("ab", "3 to 63"),
            ("Sunrise", "not a slug"),
            ("sunrise--care", "not a slug"),
            ("-sunrise", "not a slug"),
            ("sunrise_care", "not a slug"),
        ] {
            let err = Slug::parse(bad).expect_err(bad);
            assert!(err.contains(fragment), "{bad}: {err}");
        }
    }

    #[test]
    fn names_and_roles() {
        assert_eq!(
            Name::parse("  Ada  ").map(|n| n.to_string()),
            Ok("Ada".into())
        );
        assert!(Name::parse("   ").is_err());
        assert!(Name::parse(&"x".repeat(201)).is_err());
        assert_eq!(Role::parse("clinician"), Ok(Role::Clinician));
        assert!(
            Role::parse("nurse")
                .expect_err("unknown")
                .contains("the roles are admin")
        );
        let err = serde_json::from_str::<Role>("\"nurse\"").expect_err("unknown role");
        assert!(err.to_string().contains("unknown variant `nurse`"), "{err}");
    }
}
