//! What becomes of one seed event, decided without a database: a cairn event to
//! append, or the reason it cannot be imported.
//!
//! [`Mapper::map`] looks the seed's stream and event type up in [`RULES`] (the seed's
//! administrative stream types are kept as they are), decodes the payload through the
//! cairn type's upcaster chain exactly as every reader will, and works out the stream
//! and the tenant from what the import has already decided ([`Streams`]). It guesses
//! nothing: a type cairn has no counterpart for, a payload that does not fit, a stream
//! that would change type or organization, or an event whose stream was never created
//! here, is [`Unmapped`] with a reason naming the field or the earlier event.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use cairn_dispatch::{ADMIN_STREAM_TYPES, Registry};
use cairn_log::NewEvent;
use cairn_types::{Actor, CorrelationId, EventType, Metadata, OrgId, StreamId, StreamType};

use crate::events::stream;

/// One row of the seed's `domain_events`, as read.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedEvent {
    /// The seed's id for the event.
    pub id: Uuid,
    /// The seed's position, when its table has one.
    pub position: Option<i64>,
    pub stream_id: Uuid,
    pub stream_type: String,
    pub stream_version: i64,
    pub event_type: String,
    pub data: Value,
    pub metadata: Value,
    pub created_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
    /// What the seed's trigger recorded when its handler failed.
    pub processing_error: Option<String>,
}

impl SeedEvent {
    /// Where the event is in the seed, for messages.
    pub fn place(&self) -> String {
        match self.position {
            Some(position) => format!("seed position {position}"),
            None => format!("seed event {}", self.id),
        }
    }
}

/// What becomes of a seed event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// The cairn event type `to`, on the same stream; the seed's data is version
    /// `version` of its payload.
    Same { to: &'static str, version: u32 },
    /// The seed's `user.invited`: it created the invitation named by its
    /// `invitation_id`, from the inviter's stream. In cairn, `invitation.sent` (read
    /// from version 0) on that invitation's own stream, caused by the inviter.
    InvitationFromInviter,
    /// A type the seed had and cairn does not import, and why.
    Refused(&'static str),
}

/// The seed's event types by stream type, and what each becomes. The seed's dotted
/// `user.role.assigned` is cairn's `user.role_assigned`; the others keep their names.
pub const RULES: &[(&str, &str, Rule)] = &[
    (
        stream::ORGANIZATION,
        "organization.created",
        Rule::Same {
            to: "organization.created",
            version: 0,
        },
    ),
    (
        stream::ORGANIZATION,
        "organization.direct_care_settings_updated",
        Rule::Same {
            to: "organization.direct_care_settings_updated",
            version: 1,
        },
    ),
    (
        stream::ORGANIZATION,
        "organization.bootstrap.completed",
        Rule::Same {
            to: "organization.bootstrap.completed",
            version: 1,
        },
    ),
    (
        stream::ORGANIZATION,
        "organization.bootstrap.failed",
        Rule::Same {
            to: "organization.bootstrap.failed",
            version: 1,
        },
    ),
    (
        stream::ORGANIZATION,
        "organization.deactivated",
        Rule::Same {
            to: "organization.deactivated",
            version: 1,
        },
    ),
    (
        stream::ORGANIZATION,
        "organization.bootstrap.initiated",
        Rule::Refused(
            "cairn's organization.bootstrap.initiated carries the whole bootstrap plan (the \
             admin, the invitees and the workflow that runs it), which the seed's request \
             does not; the organization itself is imported from its organization.created",
        ),
    ),
    (
        stream::USER,
        "user.created",
        Rule::Same {
            to: "user.created",
            version: 0,
        },
    ),
    (
        stream::USER,
        "user.role.assigned",
        Rule::Same {
            to: "user.role_assigned",
            version: 0,
        },
    ),
    (stream::USER, "user.invited", Rule::InvitationFromInviter),
    (
        stream::INVITATION,
        "invitation.accepted",
        Rule::Same {
            to: "invitation.accepted",
            version: 1,
        },
    ),
    (
        stream::INVITATION,
        "invitation.revoked",
        Rule::Same {
            to: "invitation.revoked",
            version: 1,
        },
    ),
    (
        stream::INVITATION,
        "invitation.resent",
        Rule::Same {
            to: "invitation.resent",
            version: 1,
        },
    ),
];

/// The rule for a seed stream type and event type, if the seed had it.
pub fn rule(stream_type: &str, event_type: &str) -> Option<Rule> {
    RULES
        .iter()
        .find(|(s, e, _)| *s == stream_type && *e == event_type)
        .map(|(_, _, rule)| *rule)
}

/// The seed's event type a cairn event type is imported from, where the rules say.
pub fn seed_type_of(cairn_type: &str) -> Option<&'static str> {
    RULES.iter().find_map(|(_, seed_type, rule)| match rule {
        Rule::Same { to, .. } if *to == cairn_type => Some(*seed_type),
        Rule::InvitationFromInviter if cairn_type == "invitation.sent" => Some(*seed_type),
        _ => None,
    })
}

/// Why a seed event was not imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnmappedKind {
    /// Its stream type or event type has no counterpart in cairn.
    UnknownType,
    /// A type the seed had that cairn does not import.
    Refused,
    /// Its payload does not fit the cairn type, at the seed's version or once upcast.
    Invalid,
    /// It contradicts what was imported before it: a stream of another type, another
    /// organization, an inviter's event with no invitee.
    Conflict,
    /// Its stream was never created here: the event that would have created it was not
    /// imported, or the seed has none.
    Orphan,
}

impl UnmappedKind {
    pub const ALL: [UnmappedKind; 5] = [
        UnmappedKind::UnknownType,
        UnmappedKind::Refused,
        UnmappedKind::Invalid,
        UnmappedKind::Conflict,
        UnmappedKind::Orphan,
    ];

    /// The kind as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            UnmappedKind::UnknownType => "unknown_type",
            UnmappedKind::Refused => "refused",
            UnmappedKind::Invalid => "invalid",
            UnmappedKind::Conflict => "conflict",
            UnmappedKind::Orphan => "orphan",
        }
    }

    /// The kind a stored name stands for.
    pub fn parse(text: &str) -> Option<UnmappedKind> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// A seed event the import leaves out, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Unmapped {
    pub kind: UnmappedKind,
    pub reason: String,
    /// The cairn stream it would have gone to, when that is known: later events of
    /// that stream are reported as orphans naming this one.
    pub stream_id: Option<StreamId>,
}

/// A seed event as a cairn event, to append.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    pub stream_type: StreamType,
    pub stream_id: StreamId,
    /// The seed's data as it was, at the version it is of cairn's type, with metadata
    /// that keeps the seed's ids and times under `import`.
    pub event: NewEvent,
}

/// What becomes of one seed event.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapping {
    Import(Box<Mapped>),
    Unmapped(Unmapped),
}

/// What the import knows of cairn's streams: their type and organization, and the
/// streams whose creating event it left out.
#[derive(Debug, Default)]
pub struct Streams {
    known: HashMap<StreamId, Known>,
    left_out: HashMap<StreamId, String>,
}

#[derive(Debug, Clone)]
struct Known {
    stream_type: StreamType,
    org_id: Option<OrgId>,
}

impl Streams {
    /// Records a stream the target log already holds.
    pub fn know(&mut self, stream_id: StreamId, stream_type: StreamType, org_id: Option<OrgId>) {
        self.known.insert(
            stream_id,
            Known {
                stream_type,
                org_id,
            },
        );
    }

    /// Records that an event of `stream_id` was left out, at `place` in the seed.
    pub fn leave_out(&mut self, stream_id: StreamId, place: String) {
        if !self.known.contains_key(&stream_id) {
            self.left_out.entry(stream_id).or_insert(place);
        }
    }

    /// Records what was decided for `event`.
    pub fn record(&mut self, event: &SeedEvent, mapping: &Mapping) {
        match mapping {
            Mapping::Import(mapped) => {
                let org_id = mapped.event.metadata.org_id;
                let known = self.known.entry(mapped.stream_id).or_insert(Known {
                    stream_type: mapped.stream_type.clone(),
                    org_id,
                });
                known.org_id = known.org_id.or(org_id);
            }
            Mapping::Unmapped(unmapped) => {
                if let Some(stream_id) = unmapped.stream_id {
                    self.leave_out(stream_id, event.place());
                }
            }
        }
    }

    /// How many streams are known.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// Whether no stream is known.
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }
}

/// Maps seed events for one import.
#[derive(Debug)]
pub struct Mapper<'r> {
    registry: &'r Registry,
    /// Names the source in each event's `import` metadata.
    source: String,
    actor: Actor,
}

/// The service account imported events are recorded as caused by, unless the seed
/// names the user who did.
pub const IMPORT_ACTOR: &str = "cairn-import";

impl<'r> Mapper<'r> {
    pub fn new(registry: &'r Registry, source: impl Into<String>) -> Self {
        Self {
            registry,
            source: source.into(),
            actor: Actor::Service(IMPORT_ACTOR.to_owned()),
        }
    }

    /// What becomes of `event`, given what was decided before it.
    pub fn map(&self, event: &SeedEvent, streams: &Streams) -> Mapping {
        match self.try_map(event, streams) {
            Ok(mapped) => Mapping::Import(Box::new(mapped)),
            Err(unmapped) => Mapping::Unmapped(unmapped),
        }
    }

    fn try_map(&self, event: &SeedEvent, streams: &Streams) -> Result<Mapped, Unmapped> {
        let same_stream = StreamId::from_uuid(event.stream_id);
        if ADMIN_STREAM_TYPES
            .iter()
            .any(|(admin, _)| *admin == event.stream_type)
        {
            return self.admin(event, streams);
        }
        let Some(rule) = rule(&event.stream_type, &event.event_type) else {
            let known_stream_type = RULES.iter().any(|(s, _, _)| *s == event.stream_type);
            let reason = if known_stream_type {
                format!(
                    "the seed's {} event type {} has no counterpart in cairn",
                    event.stream_type, event.event_type
                )
            } else {
                format!(
                    "the seed's stream type {} (event type {}) has no counterpart in cairn",
                    event.stream_type, event.event_type
                )
            };
            return Err(unmapped(UnmappedKind::UnknownType, reason, None));
        };
        match rule {
            Rule::Refused(reason) => Err(unmapped(
                UnmappedKind::Refused,
                reason.to_owned(),
                Some(same_stream),
            )),
            Rule::Same { to, version } => {
                self.to_cairn(event, streams, to, version, same_stream, &self.actor)
            }
            Rule::InvitationFromInviter => {
                let data = event.data.as_object();
                let field = |name: &str| data.and_then(|data| data.get(name));
                let invitation = field("invitation_id")
                    .and_then(Value::as_str)
                    .and_then(|text| StreamId::parse(text).ok());
                let Some(invitation) = invitation else {
                    return Err(unmapped(
                        UnmappedKind::Invalid,
                        "user.invited: event_data.invitation_id is missing or not a UUID: it \
                         names the invitation the event creates"
                            .to_owned(),
                        None,
                    ));
                };
                if field("user_id").is_none_or(Value::is_null) {
                    return Err(unmapped(
                        UnmappedKind::Conflict,
                        format!(
                            "user.invited is on the inviting user's stream ({}) and names no \
                             invitee (event_data.user_id): cairn's invitation is for one user, \
                             which the seed did not record",
                            event.stream_id
                        ),
                        Some(invitation),
                    ));
                }
                let inviter = Actor::User(cairn_types::UserId::from_uuid(event.stream_id));
                self.to_cairn(event, streams, "invitation.sent", 0, invitation, &inviter)
            }
        }
    }

    /// The seed's event as cairn's `to`, read as `version`, on `stream_id`.
    fn to_cairn(
        &self,
        event: &SeedEvent,
        streams: &Streams,
        to: &str,
        version: u32,
        stream_id: StreamId,
        actor: &Actor,
    ) -> Result<Mapped, Unmapped> {
        let event_type = EventType::parse(to).expect("the rules name valid event types");
        let spec = self
            .registry
            .spec(&event_type)
            .expect("the rules name event types of the registry");
        let invalid = |reason: String| {
            unmapped(
                UnmappedKind::Invalid,
                format!("{to} v{version}: {reason}"),
                Some(stream_id),
            )
        };
        size_fits(&event.data).map_err(invalid)?;
        spec.validate_at(version, &event.data).map_err(invalid)?;
        let mut current = event.data.clone();
        spec.upcast(version, &mut current)
            .map_err(|error| invalid(error.to_string()))?;
        spec.validate(&current).map_err(|reason| {
            invalid(format!(
                "upcast to version {}, the payload does not fit: {reason}",
                spec.version
            ))
        })?;

        let stream_type = spec.stream_type.clone();
        let known = streams.known.get(&stream_id);
        if let Some(known) = known
            && known.stream_type != stream_type
        {
            return Err(unmapped(
                UnmappedKind::Conflict,
                format!(
                    "stream {stream_id} has stream type {} here, not {stream_type}",
                    known.stream_type
                ),
                None,
            ));
        }
        let org_id = if stream_type.as_str() == stream::ORGANIZATION {
            Some(OrgId::from_uuid(stream_id.as_uuid()))
        } else {
            let named = current
                .get("org_id")
                .and_then(Value::as_str)
                .and_then(|text| OrgId::parse(text).ok());
            match (named, known.and_then(|known| known.org_id)) {
                (Some(named), Some(before)) if named != before => {
                    return Err(unmapped(
                        UnmappedKind::Conflict,
                        format!(
                            "{stream_type} {stream_id} belongs to organization {before}, but \
                             this event names organization {named}"
                        ),
                        None,
                    ));
                }
                (Some(named), _) => Some(named),
                (None, Some(before)) => Some(before),
                (None, None) => {
                    let reason = match streams.left_out.get(&stream_id) {
                        Some(place) => format!(
                            "{stream_type} {stream_id} was not created here: its earlier event \
                             at {place} was not imported"
                        ),
                        None => format!(
                            "{stream_type} {stream_id} has no earlier event in the seed, so \
                             its organization is unknown"
                        ),
                    };
                    return Err(unmapped(UnmappedKind::Orphan, reason, Some(stream_id)));
                }
            }
        };
        Ok(Mapped {
            stream_type,
            stream_id,
            event: NewEvent::new(
                event_type,
                event.data.clone(),
                self.metadata(event, org_id, actor.clone()),
            )
            .at_version(version),
        })
    }

    /// An event of the seed's administrative streams, kept as it is: no handler reads
    /// it in cairn either.
    fn admin(&self, event: &SeedEvent, streams: &Streams) -> Result<Mapped, Unmapped> {
        let stream_id = StreamId::from_uuid(event.stream_id);
        let stream_type =
            StreamType::parse(&event.stream_type).expect("the administrative types are valid");
        let event_type = EventType::parse(&event.event_type).map_err(|error| {
            unmapped(
                UnmappedKind::UnknownType,
                format!("{error}: cairn cannot store it under that name"),
                None,
            )
        })?;
        if let Some(spec) = self.registry.spec(&event_type) {
            return Err(unmapped(
                UnmappedKind::Conflict,
                format!(
                    "event type {event_type} belongs to {} streams in cairn, not to {stream_type}",
                    spec.stream_type
                ),
                None,
            ));
        }
        if let Some(known) = streams.known.get(&stream_id)
            && known.stream_type != stream_type
        {
            return Err(unmapped(
                UnmappedKind::Conflict,
                format!(
                    "stream {stream_id} has stream type {} here, not {stream_type}",
                    known.stream_type
                ),
                None,
            ));
        }
        size_fits(&event.data)
            .map_err(|reason| unmapped(UnmappedKind::Invalid, reason, Some(stream_id)))?;
        let org_id = ["org_id", "organization_id"].iter().find_map(|field| {
            event
                .data
                .get(field)
                .and_then(Value::as_str)
                .and_then(|text| OrgId::parse(text).ok())
        });
        Ok(Mapped {
            stream_type,
            stream_id,
            event: NewEvent::new(
                event_type,
                event.data.clone(),
                self.metadata(event, org_id, self.actor.clone()),
            ),
        })
    }

    /// The metadata of the imported event: its tenant, the request it belonged to in
    /// the seed (its `correlation_id`, else the seed event alone), and under `import`
    /// the seed's ids, times, outcome and metadata as they were.
    fn metadata(&self, event: &SeedEvent, org_id: Option<OrgId>, actor: Actor) -> Metadata {
        let correlation_id = event
            .metadata
            .get("correlation_id")
            .and_then(Value::as_str)
            .and_then(|text| CorrelationId::parse(text).ok())
            .unwrap_or_else(|| CorrelationId::from_uuid(event.id));
        let time = |at: &DateTime<Utc>| at.to_rfc3339_opts(SecondsFormat::Micros, true);
        let mut extra = Map::new();
        extra.insert(
            "import".to_owned(),
            json!({
                "source": self.source,
                "id": event.id,
                "position": event.position,
                "created_at": time(&event.created_at),
                "stream_type": event.stream_type,
                "stream_id": event.stream_id,
                "stream_version": event.stream_version,
                "event_type": event.event_type,
                "processed_at": event.processed_at.as_ref().map(time),
                "processing_error": event.processing_error,
                "metadata": event.metadata,
            }),
        );
        Metadata {
            correlation_id,
            causation_id: None,
            actor: Some(actor),
            org_id,
            extra,
        }
    }
}

fn unmapped(kind: UnmappedKind, reason: String, stream_id: Option<StreamId>) -> Unmapped {
    Unmapped {
        kind,
        reason,
        stream_id,
    }
}

/// Refuses data the log would refuse for its size.
fn size_fits(data: &Value) -> Result<(), String> {
    let mut canonical = String::new();
    cairn_log::canonical_json(data, &mut canonical);
    if canonical.len() > cairn_log::MAX_EVENT_DATA_BYTES {
        return Err(format!(
            "event_data is {} bytes; cairn's limit is {}",
            canonical.len(),
            cairn_log::MAX_EVENT_DATA_BYTES
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::*;

    const NAMES: [(&str, u128); 9] = [
        ("org", 0xa1),
        ("org2", 0xa2),
        ("ada", 0xb1),
        ("grace", 0xb2),
        ("alan", 0xb3),
        ("inv", 0xc1),
        ("inv2", 0xc2),
        ("queue", 0xd1),
        ("bench", 0xe1),
    ];

    fn id(name: &str) -> Uuid {
        let (_, n) = NAMES
            .iter()
            .find(|(known, _)| *known == name)
            .expect("a named id");
        Uuid::from_u128(*n)
    }

    /// Puts the names back in place of the ids in `text`.
    fn named(text: &str) -> String {
        NAMES.iter().fold(text.to_owned(), |text, (name, n)| {
            text.replace(&Uuid::from_u128(*n).to_string(), name)
        })
    }

    /// A seed event on the stream named `stream`; the data's `{name}` strings become
    /// the ids of those names.
    fn seed(stream_type: &str, stream: &str, event_type: &str, data: Value) -> SeedEvent {
        let mut text = data.to_string();
        for (name, n) in NAMES {
            text = text.replace(&format!("{{{name}}}"), &Uuid::from_u128(n).to_string());
        }
        SeedEvent {
            id: Uuid::now_v7(),
            position: None,
            stream_id: id(stream),
            stream_type: stream_type.to_owned(),
            stream_version: 1,
            event_type: event_type.to_owned(),
            data: serde_json::from_str(&text).expect("JSON"),
            metadata: json!({}),
            created_at: DateTime::from_timestamp(1_770_000_000, 0).expect("a time"),
            processed_at: None,
            processing_error: None,
        }
    }

    /// Maps `events` in order, each with what was decided before it, and says what
    /// became of each, one line per event.
    #[track_caller]
    fn check(events: &[SeedEvent], expect: Expect) {
        let registry = crate::registry();
        let mapper = Mapper::new(&registry, "seed");
        let mut streams = Streams::default();
        let mut said = String::new();
        for (index, event) in events.iter().enumerate() {
            let mut event = event.clone();
            event.position = Some(index as i64 + 1);
            let mapping = mapper.map(&event, &streams);
            streams.record(&event, &mapping);
            let line = match &mapping {
                Mapping::Import(mapped) => format!(
                    "{}: {} v{} on {} {}, org {}, by {}",
                    event.event_type,
                    mapped.event.event_type,
                    mapped.event.stored_version(),
                    mapped.stream_type,
                    mapped.stream_id,
                    mapped
                        .event
                        .metadata
                        .org_id
                        .map_or("none".to_owned(), |org| org.to_string()),
                    mapped
                        .event
                        .metadata
                        .actor
                        .as_ref()
                        .map_or("nobody".to_owned(), ToString::to_string),
                ),
                Mapping::Unmapped(unmapped) => format!(
                    "{}: {} — {}",
                    event.event_type,
                    unmapped.kind.as_str(),
                    unmapped.reason
                ),
            };
            said.push_str(&named(&line));
            said.push('\n');
        }
        expect.assert_eq(&said);
    }

    fn org_created() -> SeedEvent {
        seed(
            "organization",
            "org",
            "organization.created",
            json!({"name": "Sunrise Care", "slug": "sunrise-care", "sender_domain": "mail.sunrise.example.co.uk"}),
        )
    }

    #[test]
    fn the_seeds_types_map_to_cairns() {
        check(
            &[
                org_created(),
                seed(
                    "organization",
                    "org",
                    "organization.direct_care_settings_updated",
                    json!({"settings": {"visit_verification": false, "client_assignment": true, "max_caseload": 12}}),
                ),
                seed(
                    "user",
                    "ada",
                    "user.created",
                    json!({"organization_id": "{org}", "email": "ada@example.com", "name": "Ada Lovelace"}),
                ),
                seed(
                    "user",
                    "ada",
                    "user.role.assigned",
                    json!({"organization_id": "{org}", "role": "admin"}),
                ),
                seed(
                    "user",
                    "ada",
                    "user.invited",
                    json!({"invitation_id": "{inv}", "organization_id": "{org}", "user_id": "{grace}",
                           "email": "grace@example.com", "role": "clinician",
                           "token_hash": "9f2c", "expires_at": "2026-03-01T00:00:00Z",
                           "message_id": "<inv@mail.sunrise.example.co.uk>"}),
                ),
                seed(
                    "invitation",
                    "inv",
                    "invitation.accepted",
                    json!({"user_id": "{grace}"}),
                ),
                seed(
                    "organization",
                    "org",
                    "organization.bootstrap.completed",
                    json!({"workflow_id": "{queue}", "invitations_sent": 1}),
                ),
                seed(
                    "organization",
                    "org",
                    "organization.deactivated",
                    json!({"reason": "closed"}),
                ),
                seed(
                    "workflow_queue",
                    "queue",
                    "workflow.queue.pending",
                    json!({"organization_id": "{org}", "workflow": "organization-bootstrap"}),
                ),
            ],
            expect![[r#"
                organization.created: organization.created v0 on organization org, org org, by service:cairn-import
                organization.direct_care_settings_updated: organization.direct_care_settings_updated v1 on organization org, org org, by service:cairn-import
                user.created: user.created v0 on user ada, org org, by service:cairn-import
                user.role.assigned: user.role_assigned v0 on user ada, org org, by service:cairn-import
                user.invited: invitation.sent v0 on invitation inv, org org, by user:ada
                invitation.accepted: invitation.accepted v1 on invitation inv, org org, by service:cairn-import
                organization.bootstrap.completed: organization.bootstrap.completed v1 on organization org, org org, by service:cairn-import
                organization.deactivated: organization.deactivated v1 on organization org, org org, by service:cairn-import
                workflow.queue.pending: workflow.queue.pending v1 on workflow_queue queue, org org, by service:cairn-import
            "#]],
        );
    }

    #[test]
    fn types_cairn_has_no_counterpart_for_are_reported() {
        check(
            &[
                seed(
                    "bench",
                    "bench",
                    "bench.recorded",
                    json!({"note": "benchmark event", "amount": 42}),
                ),
                seed("user", "ada", "user.deleted", json!({})),
                org_created(),
                seed(
                    "organization",
                    "org",
                    "organization.bootstrap.initiated",
                    json!({"name": "Sunrise Care"}),
                ),
                seed("test", "queue", "Not.A.Name", json!({})),
            ],
            expect![[r#"
                bench.recorded: unknown_type — the seed's stream type bench (event type bench.recorded) has no counterpart in cairn
                user.deleted: unknown_type — the seed's user event type user.deleted has no counterpart in cairn
                organization.created: organization.created v0 on organization org, org org, by service:cairn-import
                organization.bootstrap.initiated: refused — cairn's organization.bootstrap.initiated carries the whole bootstrap plan (the admin, the invitees and the workflow that runs it), which the seed's request does not; the organization itself is imported from its organization.created
                Not.A.Name: unknown_type — event type "Not.A.Name": level 1 ("Not") has upper-case letters; words inside a level are lower-case and joined by underscores, e.g. direct_care_settings_updated: cairn cannot store it under that name
            "#]],
        );
    }

    #[test]
    fn payloads_that_do_not_fit_are_reported_naming_the_field() {
        check(
            &[
                seed(
                    "organization",
                    "org",
                    "organization.created",
                    json!({"name": "Sunrise Care", "slug": "sunrise-care"}),
                ),
                seed(
                    "organization",
                    "org2",
                    "organization.created",
                    json!({"name": "Dusk Care", "slug": "dusk-care", "sender_domain": "mail.dusk.localhost"}),
                ),
                seed(
                    "user",
                    "ada",
                    "user.created",
                    json!({"organization_id": "{org}", "email": "ada@example.com", "name": "Ada", "first_name": "Ada"}),
                ),
                seed(
                    "user",
                    "ada",
                    "user.role.assigned",
                    json!({"organization_id": "{org}", "role": "provider_admin"}),
                ),
                seed(
                    "organization",
                    "org",
                    "organization.bootstrap.failed",
                    json!({"reason": "the mail provider refused the domain"}),
                ),
                seed(
                    "invitation",
                    "inv",
                    "invitation.resent",
                    json!({"expires_at": "2026-03-08T00:00:00Z"}),
                ),
            ],
            expect![[r#"
                organization.created: invalid — organization.created v0: event_data: missing field `sender_domain`
                organization.created: invalid — organization.created v0: the payload does not upcast from version 0 to 1: event_data.sender_domain: "mail.dusk.localhost" ends in .localhost, which is reserved for this machine (RFC 6761): no mail can be sent from it
                user.created: invalid — user.created v0: event_data.first_name: unknown field `first_name`, expected one of `organization_id`, `email`, `name`
                user.role.assigned: invalid — user.role_assigned v0: event_data.role: unknown variant `provider_admin`, expected one of `admin`, `clinician`, `coordinator`, `viewer`
                organization.bootstrap.failed: invalid — organization.bootstrap.failed v1: event_data: missing field `workflow_id`
                invitation.resent: invalid — invitation.resent v1: event_data: missing field `token_hash`
            "#]],
        );
    }

    #[test]
    fn conflicts_are_reported_not_guessed() {
        check(
            &[
                org_created(),
                // The seed's user.invited as its trigger read it: no invitee.
                seed(
                    "user",
                    "ada",
                    "user.invited",
                    json!({"invitation_id": "{inv}", "organization_id": "{org}",
                           "email": "grace@example.com", "role": "clinician",
                           "expires_at": "2026-03-01T00:00:00Z"}),
                ),
                seed(
                    "user",
                    "ada",
                    "user.created",
                    json!({"organization_id": "{org}", "email": "ada@example.com", "name": "Ada Lovelace"}),
                ),
                // The same user in another organization.
                seed(
                    "user",
                    "ada",
                    "user.role.assigned",
                    json!({"organization_id": "{org2}", "role": "admin"}),
                ),
                // The organization's id as a user's.
                seed(
                    "user",
                    "org",
                    "user.created",
                    json!({"organization_id": "{org}", "email": "org@example.com", "name": "Org"}),
                ),
                // A workflow_queue event under an event type cairn gives user streams.
                seed(
                    "workflow_queue",
                    "queue",
                    "user.created",
                    json!({"organization_id": "{org}"}),
                ),
            ],
            expect![[r#"
                organization.created: organization.created v0 on organization org, org org, by service:cairn-import
                user.invited: conflict — user.invited is on the inviting user's stream (ada) and names no invitee (event_data.user_id): cairn's invitation is for one user, which the seed did not record
                user.created: user.created v0 on user ada, org org, by service:cairn-import
                user.role.assigned: conflict — user ada belongs to organization org, but this event names organization org2
                user.created: conflict — stream org has stream type organization here, not user
                user.created: conflict — event type user.created belongs to user streams in cairn, not to workflow_queue
            "#]],
        );
    }

    #[test]
    fn events_of_a_stream_never_created_here_are_orphans() {
        check(
            &[
                org_created(),
                seed(
                    "user",
                    "ada",
                    "user.invited",
                    json!({"invitation_id": "{inv}", "organization_id": "{org}",
                           "email": "grace@example.com", "role": "clinician",
                           "expires_at": "2026-03-01T00:00:00Z"}),
                ),
                seed(
                    "invitation",
                    "inv",
                    "invitation.accepted",
                    json!({"user_id": "{grace}"}),
                ),
                seed(
                    "invitation",
                    "inv2",
                    "invitation.revoked",
                    json!({"reason": "sent in error"}),
                ),
            ],
            expect![[r#"
                organization.created: organization.created v0 on organization org, org org, by service:cairn-import
                user.invited: conflict — user.invited is on the inviting user's stream (ada) and names no invitee (event_data.user_id): cairn's invitation is for one user, which the seed did not record
                invitation.accepted: orphan — invitation inv was not created here: its earlier event at seed position 2 was not imported
                invitation.revoked: orphan — invitation inv2 has no earlier event in the seed, so its organization is unknown
            "#]],
        );
    }

    #[test]
    fn the_seeds_data_is_stored_as_it_was_with_its_ids_and_times_in_metadata() {
        let registry = crate::registry();
        let mapper = Mapper::new(&registry, "seed");
        let mut event = org_created();
        event.position = Some(7);
        event.metadata = json!({"correlation_id": "{queue}", "user_id": "someone"});
        event.metadata = serde_json::from_str(
            &event
                .metadata
                .to_string()
                .replace("{queue}", &id("queue").to_string()),
        )
        .expect("JSON");
        event.processing_error = Some("P9001: unknown event_type".to_owned());
        let Mapping::Import(mapped) = mapper.map(&event, &Streams::default()) else {
            panic!("organization.created maps");
        };
        assert_eq!(mapped.event.data, event.data);
        assert_eq!(mapped.event.metadata.correlation_id.as_uuid(), id("queue"));
        let import = &mapped.event.metadata.extra["import"];
        assert_eq!(import["id"], json!(event.id));
        assert_eq!(import["position"], json!(7));
        assert_eq!(import["created_at"], json!("2026-02-02T02:40:00.000000Z"));
        assert_eq!(import["stream_version"], json!(1));
        assert_eq!(import["event_type"], json!("organization.created"));
        assert_eq!(
            import["processing_error"],
            json!("P9001: unknown event_type")
        );
        assert_eq!(import["metadata"]["user_id"], json!("someone"));
    }

    #[test]
    fn every_rule_names_a_registered_type_the_seeds_version_reads_into() {
        let registry = crate::registry();
        for (stream_type, event_type, rule) in RULES {
            let (to, version) = match rule {
                Rule::Same { to, version } => (*to, *version),
                Rule::InvitationFromInviter => ("invitation.sent", 0),
                Rule::Refused(_) => continue,
            };
            let spec = registry
                .spec(&EventType::parse(to).expect("a valid name"))
                .unwrap_or_else(|| panic!("{stream_type} {event_type}: {to} is not registered"));
            assert!(
                spec.oldest_version() <= version && version <= spec.version,
                "{event_type}: {to} reads versions {} to {}, not {version}",
                spec.oldest_version(),
                spec.version
            );
        }
    }
}
