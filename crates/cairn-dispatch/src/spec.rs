//! Event payload types: one Rust type per event type, with its JSON Schema.
//!
//! A registered payload type is the contract of its event type. Append decodes every
//! event of a registered type into it before anything is written (the JSON Schema in
//! the contracts is derived from the same type, so the two cannot disagree) and
//! refuses a payload that does not fit with an error naming the field.
//!
//! A payload type has a version. Changing its shape means a new version and an
//! [`Upcaster`] from the previous one, registered beside the type: stored events are
//! never rewritten, and every reader brings an older payload up to the current version
//! through the chain, on one path ([`crate::Registry::upcast`]).
//!
//! A payload type names its personal fields ([`EventPayload::PERSONAL`]). The store
//! seals them under their person's data key before the event is stored, and every
//! reader opens them on the same path as the upcast ([`crate::open_events`]).

use cairn_types::pointer::pointer;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use cairn_log::{NewEvent, PersonalField};
use cairn_types::{EventType, Metadata, StreamId, StreamType, UserId};

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
    /// The current version of the payload. Appends write it; older stored versions
    /// are brought up to it by [`EventPayload::upcasters`].
    const VERSION: u32 = 1;

    /// The fields that identify a person (names, email addresses, free text about
    /// them), which the log seals under that person's data key.
    const PERSONAL: &'static [PersonalPath] = &[];

    /// One upcaster from each older version to the next, up to [`EventPayload::VERSION`].
    /// Registration refuses a chain with a gap.
    fn upcasters() -> Vec<Upcaster> {
        Vec::new()
    }

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
    /// The payload's JSON Schema (2020-12), at the current version.
    pub schema: Value,
    /// The current version.
    pub version: u32,
    /// The chain from the oldest version to the current one, in order; registration
    /// has checked it has no gap.
    pub upcasters: Vec<Upcaster>,
    /// The personal fields of the current version, sealed by the log.
    pub personal: &'static [PersonalPath],
    check: fn(&Value) -> Result<(), String>,
    decodes: fn(&Value) -> bool,
}

/// A personal field of a payload type: where it is and whose it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PersonalPath {
    /// The field's JSON pointer; a `*` segment stands for each element of an array.
    pub field: &'static str,
    /// Whose it is: a pointer (with the same `*`) to the person's user id in the
    /// payload, or `None` for the person whose stream the event is on.
    pub subject: Option<&'static str>,
}

impl PersonalPath {
    /// A field of the person whose stream the event is on.
    pub const fn of_stream(field: &'static str) -> Self {
        Self {
            field,
            subject: None,
        }
    }

    /// A field of the person whose user id is at `subject`.
    pub const fn of(field: &'static str, subject: &'static str) -> Self {
        Self {
            field,
            subject: Some(subject),
        }
    }
}

/// The concrete personal fields of one payload: each `*` expanded over its array. A
/// field that is absent or `null` is left out; a field whose person cannot be found is
/// an error naming it.
pub fn personal_fields(
    paths: &[PersonalPath],
    stream_id: StreamId,
    data: &Value,
) -> Result<Vec<PersonalField>, String> {
    let mut fields = Vec::new();
    for path in paths {
        expand(path.field, path.subject, data, &mut |field, subject| {
            if pointer(data, &field).is_none_or(Value::is_null) {
                return Ok(());
            }
            let subject = match subject {
                None => UserId::from_uuid(stream_id.as_uuid()),
                Some(at) => pointer(data, &at)
                    .and_then(Value::as_str)
                    .and_then(|text| text.parse::<UserId>().ok())
                    .ok_or_else(|| {
                        format!(
                            "event_data{} is personal data, and event_data{at} does not name its person (a user id)",
                            field.replace('/', ".")
                        )
                    })?,
            };
            fields.push(PersonalField {
                pointer: field,
                subject,
            });
            Ok(())
        })?;
    }
    Ok(fields)
}

/// Calls `each` with every concrete pointer `field` stands for, and its subject's.
fn expand(
    field: &str,
    subject: Option<&str>,
    data: &Value,
    each: &mut dyn FnMut(String, Option<String>) -> Result<(), String>,
) -> Result<(), String> {
    let Some((prefix, rest)) = field.split_once("/*") else {
        return each(field.to_owned(), subject.map(str::to_owned));
    };
    let Some(items) = pointer(data, prefix).and_then(Value::as_array) else {
        return Ok(());
    };
    for index in 0..items.len() {
        let concrete = format!("{prefix}/{index}{rest}");
        let subject = subject.map(|s| s.replacen("/*", &format!("/{index}"), 1));
        expand(&concrete, subject.as_deref(), data, each)?;
    }
    Ok(())
}

/// Why a stored payload could not be brought to its type's current version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// Written at a version newer than this build's.
    #[error("payload version {stored} is newer than this build's, {current}")]
    Newer { stored: u32, current: u32 },
    /// The step from `from` failed, or there is none.
    #[error("the payload does not upcast from version {from} to {to}: {message}")]
    Upcast { from: u32, to: u32, message: String },
}

/// One step of an event type's upcaster chain: brings a payload stored at version
/// `from` to version `from + 1`, editing its JSON object in place.
///
/// The step works on JSON rather than on typed values so that a replay that upcasts
/// every event costs little more than one that does not; the older version's Rust type
/// is kept for its schema (the contracts publish every version) and to check payloads
/// an import declares at that version.
#[derive(Clone)]
pub struct Upcaster {
    /// The version it reads; it writes `from + 1`.
    pub from: u32,
    /// The Rust type of version `from`, for contracts and messages.
    pub payload_type: &'static str,
    schema: fn() -> Value,
    check: fn(&Value) -> Result<(), String>,
    apply: fn(&mut Map<String, Value>) -> Result<(), String>,
}

impl std::fmt::Debug for Upcaster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upcaster")
            .field("from", &self.from)
            .field("payload_type", &self.payload_type)
            .finish()
    }
}

fn schema_of<P: schemars::JsonSchema>() -> Value {
    schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<P>()
        .to_value()
}

impl Upcaster {
    /// The step from version `from`, whose payloads have the shape of `Old`.
    pub fn new<Old: DeserializeOwned + schemars::JsonSchema>(
        from: u32,
        apply: fn(&mut Map<String, Value>) -> Result<(), String>,
    ) -> Self {
        Self {
            from,
            payload_type: short_type_name::<Old>(),
            schema: schema_of::<Old>,
            check: check::<Old>,
            apply,
        }
    }

    /// The JSON Schema of version `from`.
    pub fn schema(&self) -> Value {
        (self.schema)()
    }

    /// Checks a payload against version `from`; the error names the field at fault.
    pub fn validate(&self, data: &Value) -> Result<(), String> {
        (self.check)(data)
    }

    /// Brings `data` from version `from` to `from + 1`. A panicking step is an error.
    pub fn apply(&self, data: &mut Value) -> Result<(), String> {
        let Value::Object(object) = data else {
            return Err("event_data is not a JSON object".to_owned());
        };
        let apply = self.apply;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| apply(object))) {
            Ok(result) => result,
            Err(panic) => Err(format!(
                "the upcaster panicked: {}",
                panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a non-text panic payload".to_owned())
            )),
        }
    }
}

fn check<P: DeserializeOwned>(data: &Value) -> Result<(), String> {
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
        let mut upcasters = P::upcasters();
        upcasters.sort_by_key(|upcaster| upcaster.from);
        Self {
            event_type,
            stream_type,
            payload_type: short_type_name::<P>(),
            description: P::DESCRIPTION,
            schema: schema_of::<P>(),
            version: P::VERSION,
            upcasters,
            personal: P::PERSONAL,
            check: check::<P>,
            decodes: |data| P::deserialize(data).is_ok(),
        }
    }

    /// Whether a payload decodes into the current version's type: [`EventSpec::validate`]
    /// without tracking the path, for scans of the whole log.
    pub fn decodes(&self, data: &Value) -> bool {
        (self.decodes)(data)
    }

    /// Checks a payload against the current version; the error names the field at
    /// fault.
    pub fn validate(&self, data: &Value) -> Result<(), String> {
        (self.check)(data)
    }

    /// The oldest version the chain reads.
    pub fn oldest_version(&self) -> u32 {
        self.upcasters
            .first()
            .map_or(self.version, |first| first.from)
    }

    /// Checks a payload against the version it declares; the error names the field.
    pub fn validate_at(&self, version: u32, data: &Value) -> Result<(), String> {
        if version == self.version {
            return self.validate(data);
        }
        match self.upcasters.iter().find(|up| up.from == version) {
            Some(upcaster) => upcaster.validate(data),
            None => Err(format!(
                "{} has no version {version} (it reads versions {} to {})",
                self.event_type,
                self.oldest_version(),
                self.version
            )),
        }
    }

    /// Brings `data`, stored at `version`, to the current version. On an error `data`
    /// is left as the failing step found it.
    pub fn upcast(&self, version: u32, data: &mut Value) -> Result<(), VersionError> {
        if version > self.version {
            return Err(VersionError::Newer {
                stored: version,
                current: self.version,
            });
        }
        let oldest = self.oldest_version();
        if version < oldest {
            return Err(VersionError::Upcast {
                from: version,
                to: version + 1,
                message: format!(
                    "there is no upcaster from version {version}; the oldest version read is \
                     {oldest}"
                ),
            });
        }
        // The chain is contiguous, so the step from `version` is at this index.
        let start = usize::try_from(version - oldest).unwrap_or(usize::MAX);
        for upcaster in self.upcasters.iter().skip(start) {
            upcaster
                .apply(data)
                .map_err(|message| VersionError::Upcast {
                    from: upcaster.from,
                    to: upcaster.from + 1,
                    message,
                })?;
        }
        Ok(())
    }

    /// The first version the chain misses between its oldest and the current one, or
    /// a step that is there twice or goes past the current version.
    pub(crate) fn chain_fault(&self) -> Option<String> {
        // Every type reads version 1, the version of everything written before
        // versions were recorded; version 0 is the seed's shape, for imports.
        let mut expected = self.oldest_version().min(1);
        for upcaster in &self.upcasters {
            if upcaster.from >= self.version {
                return Some(format!(
                    "it is at version {} but has an upcaster from version {}",
                    self.version, upcaster.from
                ));
            }
            if upcaster.from < expected {
                return Some(format!(
                    "it has two upcasters from version {}",
                    upcaster.from
                ));
            }
            if upcaster.from > expected {
                return Some(format!(
                    "it is at version {} but has no upcaster from version {expected} to {}",
                    self.version,
                    expected + 1
                ));
            }
            expected += 1;
        }
        (expected != self.version).then(|| {
            format!(
                "it is at version {} but has no upcaster from version {expected} to {}",
                self.version,
                expected + 1
            )
        })
    }
}
