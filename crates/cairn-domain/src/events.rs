//! The onboarding events: one payload type per event type.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use cairn_dispatch::{EventPayload, Upcaster};
use cairn_types::{Actor, InvitationId, OrgId, UserId, WorkflowId};
use serde_json::{Map, Value};

use crate::model::{DirectCareSettings, Email, Name, Role, Slug};

/// Stream types of this domain.
pub mod stream {
    pub const ORGANIZATION: &str = "organization";
    pub const USER: &str = "user";
    pub const INVITATION: &str = "invitation";
}

/// A person the bootstrap creates or invites.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlannedAdmin {
    pub user_id: UserId,
    pub invitation_id: InvitationId,
    pub email: Email,
    pub name: Name,
}

/// An invitee the bootstrap will invite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlannedInvitee {
    pub user_id: UserId,
    pub invitation_id: InvitationId,
    pub email: Email,
    pub name: Name,
    pub roles: Vec<Role>,
}

/// Someone asked for an organization to be bootstrapped; the workflow does the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BootstrapInitiated {
    pub name: Name,
    pub slug: Slug,
    /// The host mail is said to come from, e.g. mail.clinic.example.co.uk.
    pub sender_domain: String,
    /// noreply@ its registrable domain, e.g. noreply@example.co.uk.
    pub sender_address: Email,
    pub direct_care_settings: DirectCareSettings,
    pub admin: PlannedAdmin,
    pub invitees: Vec<PlannedInvitee>,
    pub workflow_id: WorkflowId,
}

/// The organization exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrganizationCreated {
    pub name: Name,
    pub slug: Slug,
    pub sender_domain: String,
    pub sender_address: Email,
    pub direct_care_settings: DirectCareSettings,
}

/// The organization's direct-care settings changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectCareSettingsUpdated {
    pub settings: DirectCareSettings,
}

/// Every bootstrap step succeeded: the organization is active.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BootstrapCompleted {
    pub workflow_id: WorkflowId,
    pub invitations_sent: u32,
}

/// A bootstrap step failed for good; compensation follows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BootstrapFailed {
    pub workflow_id: WorkflowId,
    pub step: String,
    pub reason: String,
}

/// The organization can no longer be used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrganizationDeactivated {
    pub reason: String,
}

/// A user account exists and is active.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserCreated {
    pub org_id: OrgId,
    pub email: Email,
    pub name: Name,
}

/// A person was invited; they become an active user when they accept.
///
/// Version 2: who invited them (`invited_by`). Version 1 did not record it, and an
/// upcast version 1 event says `null`: nobody knows, rather than a guess.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserInvited {
    pub org_id: OrgId,
    pub email: Email,
    pub name: Name,
    pub roles: Vec<Role>,
    pub invitation_id: InvitationId,
    /// Who invited them: a user, or a service (the bootstrap's engine); `null` when
    /// the event was written before this was recorded.
    pub invited_by: Option<Actor>,
}

/// `user.invited` as version 1 wrote it, before `invited_by`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserInvitedV1 {
    pub org_id: OrgId,
    pub email: Email,
    pub name: Name,
    pub roles: Vec<Role>,
    pub invitation_id: InvitationId,
}

/// `user.invited` v1 → v2: the inviter was not recorded.
pub fn user_invited_v1_to_v2(data: &mut Map<String, Value>) -> Result<(), String> {
    if data.contains_key("invited_by") {
        return Err("event_data.invited_by is already there at version 1".to_owned());
    }
    data.insert("invited_by".to_owned(), Value::Null);
    Ok(())
}

/// A user was given a role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleAssigned {
    pub org_id: OrgId,
    pub role: Role,
}

/// An invited user accepted and is active.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserActivated {
    pub org_id: OrgId,
    pub invitation_id: InvitationId,
}

/// An invitation email went out. The token itself is never stored: only its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvitationSent {
    pub org_id: OrgId,
    pub user_id: UserId,
    pub email: Email,
    pub roles: Vec<Role>,
    pub token_hash: String,
    pub expires_at: DateTime<Utc>,
    pub message_id: String,
    pub send_number: u32,
}

/// The invitation was sent again, with a new token (the old one stops working) and a
/// new expiry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvitationResent {
    pub token_hash: String,
    pub expires_at: DateTime<Utc>,
    pub message_id: String,
    pub send_number: u32,
}

/// The invitee accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvitationAccepted {
    pub user_id: UserId,
}

/// The invitation was withdrawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvitationRevoked {
    pub reason: String,
}

/// The invitation was not accepted in time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvitationExpired {
    pub expired_at: DateTime<Utc>,
}

macro_rules! payload {
    ($ty:ident, $event_type:literal, $description:literal) => {
        impl EventPayload for $ty {
            const EVENT_TYPE: &'static str = $event_type;
            const DESCRIPTION: &'static str = $description;
        }
    };
    (
        $ty:ident, $event_type:literal, $description:literal,
        version: $version:literal, upcasters: [$($upcaster:expr),+ $(,)?]
    ) => {
        impl EventPayload for $ty {
            const EVENT_TYPE: &'static str = $event_type;
            const DESCRIPTION: &'static str = $description;
            const VERSION: u32 = $version;
            fn upcasters() -> Vec<Upcaster> {
                vec![$($upcaster),+]
            }
        }
    };
    // Version 1 read from older versions through `$upcasters()`.
    ($ty:ident, $event_type:literal, $description:literal, upcasters: $upcasters:path) => {
        impl EventPayload for $ty {
            const EVENT_TYPE: &'static str = $event_type;
            const DESCRIPTION: &'static str = $description;

            fn upcasters() -> Vec<cairn_dispatch::Upcaster> {
                $upcasters()
            }
        }
    };
}

payload!(
    BootstrapInitiated,
    "organization.bootstrap.initiated",
    "Someone asked for an organization to be bootstrapped."
);
payload!(
    OrganizationCreated,
    "organization.created",
    "The organization exists.",
    upcasters: crate::import::shapes::organization_created
);
payload!(
    DirectCareSettingsUpdated,
    "organization.direct_care_settings_updated",
    "The organization's direct-care settings changed."
);
payload!(
    BootstrapCompleted,
    "organization.bootstrap.completed",
    "Every bootstrap step succeeded; the organization is active."
);
payload!(
    BootstrapFailed,
    "organization.bootstrap.failed",
    "A bootstrap step failed for good; compensation follows."
);
payload!(
    OrganizationDeactivated,
    "organization.deactivated",
    "The organization can no longer be used."
);
payload!(
    UserCreated,
    "user.created",
    "A user account exists and is active.",
    upcasters: crate::import::shapes::user_created
);
payload!(
    UserInvited,
    "user.invited",
    "A person was invited to an organization.",
    version: 2,
    upcasters: [Upcaster::new::<UserInvitedV1>(1, user_invited_v1_to_v2)]
);
payload!(
    RoleAssigned,
    "user.role_assigned",
    "A user was given a role.",
    upcasters: crate::import::shapes::role_assigned
);
payload!(
    UserActivated,
    "user.activated",
    "An invited user accepted and is active."
);
payload!(
    InvitationSent,
    "invitation.sent",
    "An invitation email went out.",
    upcasters: crate::import::shapes::invitation_sent
);
payload!(
    InvitationResent,
    "invitation.resent",
    "An invitation was sent again with a new token and expiry."
);
payload!(
    InvitationAccepted,
    "invitation.accepted",
    "The invitee accepted."
);
payload!(
    InvitationRevoked,
    "invitation.revoked",
    "The invitation was withdrawn."
);
payload!(
    InvitationExpired,
    "invitation.expired",
    "The invitation was not accepted in time."
);
