//! Event payload types: one Rust type per event type, with its JSON Schema.
//!
//! A registered payload type is the contract of its event type. Append decodes every
//! event of a registered type into it before anything is written (the JSON Schema in
//! the contracts is derived from the same type, so the two cannot disagree) and
//! refuses a payload that does not fit with an error naming the field.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use cairn_log::NewEvent;
use cairn_types::{EventType, Metadata, StreamType};

/// The payload of one event type.
///
/// ```
/// use cairn_dispatch::EventPayload;
///
/// #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
/// #[serde(deny_unknown_fields)]
/// struct OrganizationDeactivated {
///     reason: String,
/// }
///
/// impl EventPayload for OrganizationDeactivated {
///     const EVENT_TYPE: &'static str = "organization.deactivated";
///     const DESCRIPTION: &'static str = "The organization can no longer be used.";
/// }
/// ```
pub trait EventPayload:
    Serialize + DeserializeOwned + schemars::JsonSchema + Send + Sync + 'static
{
    /// The event type, following the naming convention.
    const EVENT_TYPE: &'static str;
    /// One sentence for the contracts.
    const DESCRIPTION: &'static str;

    /// The parsed event type.
    fn event_type() -> EventType {
        EventType::parse(Self::EVENT_TYPE)
            .expect("payload event types are checked when they are registered")
    }

    /// This payload as an event to append.
    fn to_event(&self, metadata: Metadata) -> NewEvent {
        NewEvent::new(
            Self::event_type(),
            serde_json::to_value(self).expect("payload types serialize to JSON"),
            metadata,
        )
    }
}

/// The registered contract of one event type.
#[derive(Debug, Clone)]
pub struct EventSpec {
    pub event_type: EventType,
    pub stream_type: StreamType,
    /// The Rust type's name, for contracts and messages.
    pub payload_type: &'static str,
    pub description: &'static str,
    /// The payload's JSON Schema (2020-12).
    pub schema: Value,
    check: fn(&Value) -> Result<(), String>,
}

fn check<P: EventPayload>(data: &Value) -> Result<(), String> {
    let mut track = serde_path_to_error::Track::new();
    let deserializer = serde_path_to_error::Deserializer::new(data, &mut track);
    match P::deserialize(deserializer) {
        Ok(_) => Ok(()),
        Err(error) => {
            let path = track.path().to_string();
            let location = if path == "." || path.is_empty() {
                "event_data".to_owned()
            } else {
                format!("event_data.{path}")
            };
            Err(format!("{location}: {error}"))
        }
    }
}

fn short_type_name<P>() -> &'static str {
    let full = std::any::type_name::<P>();
    full.rsplit("::").next().unwrap_or(full)
}

impl EventSpec {
    pub(crate) fn of<P: EventPayload>(event_type: EventType, stream_type: StreamType) -> Self {
        let schema = schemars::generate::SchemaSettings::draft2020_12()
            .into_generator()
            .into_root_schema_for::<P>();
        Self {
            event_type,
            stream_type,
            payload_type: short_type_name::<P>(),
            description: P::DESCRIPTION,
            schema: schema.to_value(),
            check: check::<P>,
        }
    }

    /// Checks a payload against the type; the error names the field at fault.
    pub fn validate(&self, data: &Value) -> Result<(), String> {
        (self.check)(data)
    }
}
