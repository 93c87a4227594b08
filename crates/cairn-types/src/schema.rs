//! JSON Schemas of the shared types, for the generated contracts.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

use crate::{
    Actor, CausationId, CorrelationId, ErrorCode, EventId, EventType, InvitationId, OrgId,
    Position, StreamId, StreamType, StreamVersion, UserId, WorkflowId,
};

macro_rules! uuid_schema {
    ($($name:ident: $description:literal),* $(,)?) => {$(
        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }
            fn inline_schema() -> bool {
                true
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({"type": "string", "format": "uuid", "description": $description})
            }
        }
    )*};
}

uuid_schema!(
    EventId: "An event id (UUIDv7).",
    StreamId: "A stream (aggregate) id.",
    CorrelationId: "The request this belongs to; every hop it causes carries it.",
    CausationId: "The event or request that directly caused this one.",
    OrgId: "An organization (tenant) id.",
    UserId: "A user id.",
    WorkflowId: "A workflow run id.",
    InvitationId: "An invitation id.",
);

/// The pattern of one name level: lower-case words joined by single underscores.
const LEVEL: &str = "[a-z][a-z0-9]*(_[a-z0-9]+)*";

impl JsonSchema for EventType {
    fn schema_name() -> Cow<'static, str> {
        "EventType".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": format!("^{LEVEL}(\\.{LEVEL})+$"),
            "maxLength": 128,
            "description": "An event type: levels joined by dots, words by underscores (organization.direct_care_settings_updated)."
        })
    }
}

impl JsonSchema for StreamType {
    fn schema_name() -> Cow<'static, str> {
        "StreamType".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": format!("^{LEVEL}$"),
            "maxLength": 128,
            "description": "A stream type: one level (organization, user, invitation, workflow)."
        })
    }
}

impl JsonSchema for Position {
    fn schema_name() -> Cow<'static, str> {
        "Position".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "integer", "minimum": 0, "description": "A global position in the log."})
    }
}

impl JsonSchema for StreamVersion {
    fn schema_name() -> Cow<'static, str> {
        "StreamVersion".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "integer", "minimum": 0, "description": "The version of one stream."})
    }
}

impl JsonSchema for Actor {
    fn schema_name() -> Cow<'static, str> {
        "Actor".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^(user:[0-9a-fA-F-]{32,36}|service:[a-z][a-z0-9_-]{0,63})$",
            "description": "Who caused it: user:<uuid> or service:<name>."
        })
    }
}

impl JsonSchema for ErrorCode {
    fn schema_name() -> Cow<'static, str> {
        "ProcessingErrorCode".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let codes: Vec<&str> = ErrorCode::ALL.iter().map(|code| code.as_str()).collect();
        json_schema!({
            "type": "string",
            "enum": codes,
            "description": "P9001 unknown event type, P9002 unknown stream type, P9003 handler failed, P9004 payload does not match its type, P9005 payload could not be upcast, P9006 written by a newer build, P9007 sealed field unreadable."
        })
    }
}
