//! The metadata envelope every event carries: who caused it, for which tenant, and
//! which request it belongs to.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::{CausationId, CorrelationId, IdError, OrgId, UserId};

/// Who caused an event: a user of one organization, or a service account.
///
/// Written as `user:<uuid>` or `service:<name>`, so that the log reads plainly.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Actor {
    /// A person, bound to one organization.
    User(UserId),
    /// A service account, such as `cairn-cli` or `bootstrap-worker`.
    Service(String),
}

/// Text that is not an actor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActorError {
    #[error("actor {input:?} has no kind: expected user:<uuid> or service:<name>")]
    NoKind { input: String },
    #[error("actor {input:?} has unknown kind {kind:?}: expected user:<uuid> or service:<name>")]
    UnknownKind { input: String, kind: String },
    #[error("actor {input:?}: {source}")]
    BadUserId {
        input: String,
        #[source]
        source: IdError,
    },
    #[error(
        "actor {input:?}: a service name is 1 to 64 characters of a-z, 0-9, '-' and '_', \
         starting with a letter"
    )]
    BadServiceName { input: String },
}

impl Actor {
    /// A service account actor; the name is checked.
    pub fn service(name: &str) -> Result<Self, ActorError> {
        Self::parse(&format!("service:{name}"))
    }

    /// Parses `user:<uuid>` or `service:<name>`.
    pub fn parse(input: &str) -> Result<Self, ActorError> {
        let Some((kind, rest)) = input.split_once(':') else {
            return Err(ActorError::NoKind {
                input: input.to_owned(),
            });
        };
        match kind {
            "user" => {
                UserId::parse(rest)
                    .map(Actor::User)
                    .map_err(|source| ActorError::BadUserId {
                        input: input.to_owned(),
                        source,
                    })
            }
            "service" => {
                let valid = (1..=64).contains(&rest.len())
                    && rest.starts_with(|c: char| c.is_ascii_lowercase())
                    && rest.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'
                    });
                if valid {
                    Ok(Actor::Service(rest.to_owned()))
                } else {
                    Err(ActorError::BadServiceName {
                        input: input.to_owned(),
                    })
                }
            }
            other => Err(ActorError::UnknownKind {
                input: input.to_owned(),
                kind: other.to_owned(),
            }),
        }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::User(id) => write!(f, "user:{id}"),
            Actor::Service(name) => write!(f, "service:{name}"),
        }
    }
}

impl fmt::Debug for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Actor({self})")
    }
}

impl FromStr for Actor {
    type Err = ActorError;
    fn from_str(input: &str) -> Result<Self, ActorError> {
        Self::parse(input)
    }
}

impl Serialize for Actor {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Actor {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Actor::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The metadata of one event.
///
/// The named fields are the ones cairn itself reads; anything else a caller sends is kept
/// in [`Metadata::extra`] and stored with the event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Metadata {
    /// The request this event belongs to. Every hop the request causes carries it.
    pub correlation_id: CorrelationId,
    /// The event or request that directly caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<CausationId>,
    /// Who caused the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    /// The tenant the event belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<OrgId>,
    /// Free extras, stored as given.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Metadata JSON that cannot be read, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata must be a JSON object, found {found}")]
    NotAnObject { found: &'static str },
    #[error("metadata.{field}: expected a string, found {found}")]
    NotAString {
        field: &'static str,
        found: &'static str,
    },
    #[error("metadata.{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Metadata {
    /// Metadata for a new request: a fresh correlation id and nothing else.
    pub fn new() -> Self {
        Self::with_correlation(CorrelationId::new_v7())
    }

    /// Metadata carrying an existing correlation id.
    pub fn with_correlation(correlation_id: CorrelationId) -> Self {
        Self {
            correlation_id,
            causation_id: None,
            actor: None,
            org_id: None,
            extra: Map::new(),
        }
    }

    /// Sets the actor.
    pub fn actor(mut self, actor: Actor) -> Self {
        self.actor = Some(actor);
        self
    }

    /// Sets the tenant.
    pub fn org(mut self, org_id: OrgId) -> Self {
        self.org_id = Some(org_id);
        self
    }

    /// Sets the cause.
    pub fn caused_by(mut self, causation_id: CausationId) -> Self {
        self.causation_id = Some(causation_id);
        self
    }

    /// Reads metadata a caller sent as JSON, naming the field at fault when one is
    /// wrong. A missing `correlation_id` gets a fresh one.
    pub fn from_json(value: Value) -> Result<Self, MetadataError> {
        let Value::Object(mut object) = value else {
            return Err(MetadataError::NotAnObject {
                found: json_kind(&value),
            });
        };
        fn take_str(
            object: &mut Map<String, Value>,
            field: &'static str,
        ) -> Result<Option<String>, MetadataError> {
            match object.remove(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(text)) => Ok(Some(text)),
                Some(other) => Err(MetadataError::NotAString {
                    field,
                    found: json_kind(&other),
                }),
            }
        }
        let invalid = |field: &'static str| {
            move |error: &dyn fmt::Display| MetadataError::Invalid {
                field,
                message: error.to_string(),
            }
        };
        let correlation_id = match take_str(&mut object, "correlation_id")? {
            Some(text) => CorrelationId::parse(&text).map_err(|e| invalid("correlation_id")(&e))?,
            None => CorrelationId::new_v7(),
        };
        let causation_id = take_str(&mut object, "causation_id")?
            .map(|text| CausationId::parse(&text).map_err(|e| invalid("causation_id")(&e)))
            .transpose()?;
        let actor = take_str(&mut object, "actor")?
            .map(|text| Actor::parse(&text).map_err(|e| invalid("actor")(&e)))
            .transpose()?;
        let org_id = take_str(&mut object, "org_id")?
            .map(|text| OrgId::parse(&text).map_err(|e| invalid("org_id")(&e)))
            .transpose()?;
        Ok(Self {
            correlation_id,
            causation_id,
            actor,
            org_id,
            extra: object,
        })
    }
}

impl Default for Metadata {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn actor_round_trips() {
        let user = Actor::User(UserId::new_v7());
        assert_eq!(Actor::parse(&user.to_string()), Ok(user));
        assert_eq!(
            Actor::parse("service:bootstrap-worker"),
            Ok(Actor::Service("bootstrap-worker".into()))
        );
    }

    #[test]
    fn actor_errors_say_what_is_expected() {
        let cases = [
            ("alice", "has no kind"),
            ("robot:alice", "unknown kind \"robot\""),
            ("user:alice", "not a valid user id"),
            ("service:Bad Name", "a service name is 1 to 64 characters"),
        ];
        for (input, fragment) in cases {
            let message = Actor::parse(input).unwrap_err().to_string();
            assert!(message.contains(fragment), "{input}: {message}");
        }
    }

    #[test]
    fn metadata_from_json_keeps_extras_and_fills_the_correlation_id() {
        let metadata =
            Metadata::from_json(json!({"source": "import", "actor": "service:cli"})).unwrap();
        assert_eq!(metadata.actor, Some(Actor::Service("cli".into())));
        assert_eq!(metadata.extra.get("source"), Some(&json!("import")));
        let again = serde_json::to_value(&metadata).unwrap();
        assert_eq!(
            again["correlation_id"],
            json!(metadata.correlation_id.to_string())
        );
        assert_eq!(again["source"], json!("import"));
    }

    #[test]
    fn metadata_from_json_names_the_bad_field() {
        let err = Metadata::from_json(json!({"org_id": "acme"})).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("metadata.org_id: \"acme\" is not a valid organization id"),
            "{err}"
        );
        let err = Metadata::from_json(json!({"correlation_id": 7})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "metadata.correlation_id: expected a string, found a number"
        );
        let err = Metadata::from_json(json!([1])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "metadata must be a JSON object, found an array"
        );
    }
}
