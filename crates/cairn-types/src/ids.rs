//! UUID newtypes, one per kind of identifier.
//!
//! Each is stored as hyphenated text on SQLite (readable in the `sqlite3` shell) and as
//! `uuid` on PostgreSQL.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// A string that is not a valid identifier of the named kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{input:?} is not a valid {kind}: expected a UUID such as 0192f1c4-8b9e-7cc3-9d0a-2f64a1c8e3b5"
)]
pub struct IdError {
    /// What kind of identifier was expected ("stream id", "organization id", …).
    pub kind: &'static str,
    /// The text that was given.
    pub input: String,
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// What this identifier is called in error messages.
            pub const KIND: &'static str = $kind;

            /// A new, time-ordered (version 7) identifier.
            pub fn new_v7() -> Self {
                Self(Uuid::now_v7())
            }

            /// Wraps an existing UUID.
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The underlying UUID.
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }

            /// Parses the hyphenated (or simple) text form.
            pub fn parse(input: &str) -> Result<Self, IdError> {
                Uuid::parse_str(input.trim()).map(Self).map_err(|_| IdError {
                    kind: $kind,
                    input: input.to_owned(),
                })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(input: &str) -> Result<Self, IdError> {
                Self::parse(input)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }

    };
}

uuid_id!(
    /// Identifies one event in the log; time-ordered.
    EventId,
    "event id"
);
uuid_id!(
    /// Identifies one stream: the events of one aggregate (an organization, a user, …).
    StreamId,
    "stream id"
);
uuid_id!(
    /// Follows one request through every hop it causes: HTTP, events, workflow steps, email.
    CorrelationId,
    "correlation id"
);
uuid_id!(
    /// The event or request that directly caused an event.
    CausationId,
    "causation id"
);
uuid_id!(
    /// A tenant: every domain row and event belongs to at most one organization.
    OrgId,
    "organization id"
);
impl OrgId {
    /// The reserved tenant of the integration probe. Its synthetic events and rows
    /// belong to no real organization: tenant reads never see them, and cross-tenant
    /// reads (lists, subscriptions) leave them out unless asked for by this id.
    pub const PROBE: OrgId = OrgId(Uuid::from_u128(0x00000000_0000_7000_8000_00000000c0de));

    /// Whether this is the probe's reserved tenant.
    pub fn is_probe(&self) -> bool {
        *self == Self::PROBE
    }
}

uuid_id!(
    /// A user of one organization.
    UserId,
    "user id"
);
uuid_id!(
    /// An invitation to join an organization.
    InvitationId,
    "invitation id"
);
uuid_id!(
    /// One run of a durable workflow.
    WorkflowId,
    "workflow id"
);

/// The stream of an aggregate is named by the aggregate's id.
macro_rules! stream_of {
    ($($name:ident),*) => {$(
        impl From<$name> for StreamId {
            fn from(id: $name) -> StreamId {
                StreamId(id.0)
            }
        }
    )*};
}

stream_of!(OrgId, UserId, InvitationId, WorkflowId);

impl StreamId {
    /// The stream of something named rather than created (a handler route, a
    /// workflow kind, the pauses of one run): the same kind and name give the same
    /// stream in every process and every release (a UUIDv5).
    ///
    /// ```
    /// use cairn_types::StreamId;
    ///
    /// let a = StreamId::named("route", b"organization");
    /// assert_eq!(a, StreamId::named("route", b"organization"));
    /// assert_ne!(a, StreamId::named("workflow-kind", b"organization"));
    /// ```
    pub fn named(kind: &str, name: &[u8]) -> StreamId {
        const NAMESPACE: Uuid = Uuid::from_u128(0x6361_6972_6e00_5000_8000_0000_6e61_6d65);
        let mut key = Vec::with_capacity(kind.len() + 1 + name.len());
        key.extend_from_slice(kind.as_bytes());
        key.push(b':');
        key.extend_from_slice(name);
        StreamId(Uuid::new_v5(&NAMESPACE, &key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_names_the_kind_and_the_input() {
        let err = StreamId::parse("not-a-uuid").unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"not-a-uuid\" is not a valid stream id: expected a UUID such as \
             0192f1c4-8b9e-7cc3-9d0a-2f64a1c8e3b5"
        );
    }

    #[test]
    fn round_trips_through_text() {
        let id = OrgId::new_v7();
        assert_eq!(OrgId::parse(&id.to_string()), Ok(id));
        assert_eq!(id.as_uuid().get_version_num(), 7);
    }
}
