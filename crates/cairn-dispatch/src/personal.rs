//! Opening the sealed personal fields of stored events: the second half of the one
//! decoding path, after [`Registry::upcast`]. Readers call [`current_events`]; the
//! dispatcher opens what a handler is about to see inside its transaction.

use cairn_log::{
    Conn, Db, DbError, KeySet, Keyring, PersonalField, RecordedEvent, SealFault, SealPlace,
};
use cairn_types::{SEALED_KEY, UserId};

use crate::registry::Registry;

impl Registry {
    /// The personal fields of an event at its type's current version: where each is
    /// and whose it is. Empty for a type with none, or a payload that names no person.
    pub fn personal_fields(&self, event: &RecordedEvent) -> Vec<PersonalField> {
        match self.spec(&event.event_type) {
            Some(spec) if !spec.personal.is_empty() => {
                crate::spec::personal_fields(spec.personal, event.stream_id, &event.data)
                    .unwrap_or_default()
            }
            _ => Vec::new(),
        }
    }
}

fn place(event: &RecordedEvent) -> SealPlace<'_> {
    SealPlace {
        event_type: event.event_type.as_str(),
        stream_id: event.stream_id,
    }
}

/// Whether any object in `value` is a sealed field: a scan that allocates nothing, so
/// that events given in the clear skip the rest.
fn holds_sealed(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Object(object) => {
            object.contains_key(SEALED_KEY) || object.values().any(holds_sealed)
        }
        serde_json::Value::Array(items) => items.iter().any(holds_sealed),
        _ => false,
    }
}

fn is_sealed(event: &RecordedEvent, field: &PersonalField) -> bool {
    cairn_types::pointer::pointer(&event.data, &field.pointer)
        .is_some_and(|value| value.get(SEALED_KEY).is_some())
}

/// The events as readers serve them: each at its type's current version (see
/// [`Registry::to_current`]), with its personal fields opened. An erased person's
/// fields read `{"withheld": "erased"}`, sealed or written before sealing; a seal that
/// does not open reads `{"withheld": "unreadable"}` and is logged. The data keys are
/// read once for the whole batch, through the readers.
pub async fn current_events(
    db: &Db,
    registry: &Registry,
    events: Vec<RecordedEvent>,
) -> Result<Vec<RecordedEvent>, DbError> {
    let mut events: Vec<RecordedEvent> = events
        .into_iter()
        .map(|event| registry.to_current(event))
        .collect();
    let fields: Vec<Vec<PersonalField>> = events
        .iter()
        .map(|event| registry.personal_fields(event))
        .collect();
    let mut subjects: Vec<UserId> = fields.iter().flatten().map(|f| f.subject).collect();
    if subjects.is_empty() {
        return Ok(events);
    }
    subjects.sort_unstable();
    subjects.dedup();
    let keys = db.keyring().keys(db, &subjects).await?;
    for (event, fields) in events.iter_mut().zip(&fields) {
        open_with(&keys, event, fields);
    }
    Ok(events)
}

/// [`current_events`] inside a write transaction, where the keys it reads are not
/// kept (they may be the transaction's own).
pub async fn current_events_in(
    conn: &mut Conn<'_>,
    keyring: &Keyring,
    registry: &Registry,
    events: Vec<RecordedEvent>,
) -> Result<Vec<RecordedEvent>, DbError> {
    let mut events: Vec<RecordedEvent> = events
        .into_iter()
        .map(|event| registry.to_current(event))
        .collect();
    let fields: Vec<Vec<PersonalField>> = events
        .iter()
        .map(|event| registry.personal_fields(event))
        .collect();
    let mut subjects: Vec<UserId> = fields.iter().flatten().map(|f| f.subject).collect();
    if subjects.is_empty() {
        return Ok(events);
    }
    subjects.sort_unstable();
    subjects.dedup();
    let keys = keyring.keys_in(conn, &subjects).await?;
    for (event, fields) in events.iter_mut().zip(&fields) {
        open_with(&keys, event, fields);
    }
    Ok(events)
}

/// Opens a replay page in place, with its keys read once through the readers (and
/// kept). Returns the indexes of events a seal of which did not open: the caller reads
/// them again as stored, so that their dispatch fails them with the reason (`P9007`)
/// instead of applying a marker.
pub(crate) async fn open_page(
    db: &Db,
    registry: &Registry,
    events: &mut [RecordedEvent],
) -> Result<Vec<usize>, DbError> {
    let fields: Vec<Vec<PersonalField>> = events
        .iter()
        .map(|event| {
            if holds_sealed(&event.data) {
                registry
                    .personal_fields(event)
                    .into_iter()
                    .filter(|field| is_sealed(event, field))
                    .collect()
            } else {
                Vec::new()
            }
        })
        .collect();
    let mut subjects: Vec<UserId> = fields.iter().flatten().map(|f| f.subject).collect();
    if subjects.is_empty() {
        return Ok(Vec::new());
    }
    subjects.sort_unstable();
    subjects.dedup();
    let keys = db.keyring().keys(db, &subjects).await?;
    let mut unopened = Vec::new();
    for (index, (event, fields)) in events.iter_mut().zip(&fields).enumerate() {
        if fields.is_empty() {
            continue;
        }
        let RecordedEvent {
            event_type,
            stream_id,
            data,
            ..
        } = event;
        let place = SealPlace {
            event_type: event_type.as_str(),
            stream_id: *stream_id,
        };
        if !Keyring::open(&keys, place, data, fields).is_empty() {
            unopened.push(index);
        }
    }
    Ok(unopened)
}

/// [`current_events`] for one event.
pub async fn current_event(
    db: &Db,
    registry: &Registry,
    event: RecordedEvent,
) -> Result<RecordedEvent, DbError> {
    let mut events = current_events(db, registry, vec![event]).await?;
    Ok(events.pop().expect("one event in, one out"))
}

fn open_with(keys: &KeySet, event: &mut RecordedEvent, fields: &[PersonalField]) {
    let place_type = event.event_type.clone();
    let stream_id = event.stream_id;
    let position = event.position;
    let faults = Keyring::open(
        keys,
        SealPlace {
            event_type: place_type.as_str(),
            stream_id,
        },
        &mut event.data,
        fields,
    );
    for fault in faults {
        tracing::warn!(%position, event_type = %place_type, %fault, "sealed field served as unreadable");
    }
}

/// Opens the sealed personal fields of an event about to be dispatched, inside the
/// dispatching transaction (its keys are read there and not kept): `None` when it has
/// none sealed (fields in the clear are left as they are), else the opened event and
/// the seals that did not open.
pub(crate) async fn open_for_dispatch(
    keyring: &Keyring,
    conn: &mut Conn<'_>,
    registry: &Registry,
    event: &RecordedEvent,
) -> Result<Option<(RecordedEvent, Vec<SealFault>)>, DbError> {
    let personal = registry
        .spec(&event.event_type)
        .is_some_and(|spec| !spec.personal.is_empty());
    if !personal || !holds_sealed(&event.data) {
        return Ok(None);
    }
    let fields: Vec<PersonalField> = registry
        .personal_fields(event)
        .into_iter()
        .filter(|field| is_sealed(event, field))
        .collect();
    if fields.is_empty() {
        return Ok(None);
    }
    let mut subjects: Vec<UserId> = fields.iter().map(|f| f.subject).collect();
    subjects.sort_unstable();
    subjects.dedup();
    let keys = keyring.keys_in(conn, &subjects).await?;
    let mut opened = event.clone();
    let faults = Keyring::open(&keys, place(event), &mut opened.data, &fields);
    Ok(Some((opened, faults)))
}

/// One personal field of one person, as a disclosure shows it: where it was recorded
/// and what it holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct DisclosedField {
    /// The event's position in the log.
    pub position: i64,
    pub event_id: cairn_types::EventId,
    /// The event's type, e.g. `user.invited`.
    pub event_type: String,
    /// When the event was recorded.
    pub recorded_at: chrono::DateTime<chrono::Utc>,
    /// The field's JSON pointer in the event's payload, at its type's current version.
    pub field: String,
    /// The field's value; `{"withheld": "unreadable"}` when its seal does not open
    /// (the fault is logged).
    pub value: serde_json::Value,
}

/// Every personal field of `subject` in `events` (their organization's, in position
/// order), opened with `keys` from [`Keyring::disclosure_keys`]: a restricted person's
/// fields are opened too. Other people's fields in the same events are left out.
pub fn disclose(
    registry: &Registry,
    keys: &KeySet,
    subject: UserId,
    events: Vec<RecordedEvent>,
) -> Vec<DisclosedField> {
    let mut disclosed = Vec::new();
    for event in events {
        let personal = registry
            .spec(&event.event_type)
            .is_some_and(|spec| !spec.personal.is_empty());
        if !personal {
            continue;
        }
        let mut event = registry.to_current(event);
        let fields: Vec<PersonalField> = registry
            .personal_fields(&event)
            .into_iter()
            .filter(|field| field.subject == subject)
            .collect();
        if fields.is_empty() {
            continue;
        }
        open_with(keys, &mut event, &fields);
        for field in fields {
            let Some(value) = cairn_types::pointer::pointer(&event.data, &field.pointer) else {
                continue;
            };
            if value.is_null() {
                continue;
            }
            disclosed.push(DisclosedField {
                position: event.position.get(),
                event_id: event.event_id,
                event_type: event.event_type.to_string(),
                recorded_at: event.created_at,
                field: field.pointer,
                value: value.clone(),
            });
        }
    }
    disclosed
}
