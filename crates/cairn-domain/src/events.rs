//! The onboarding events: one payload type per event type.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use cairn_dispatch::{EventPayload, PersonalPath, Upcaster};
use cairn_types::{Actor, InvitationId, OrgId, Personal, UserId, WorkflowId};
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
    pub email: Personal<Email>,
    pub name: Personal<Name>,
}

/// An invitee the bootstrap will invite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlannedInvitee {
    pub user_id: UserId,
    pub invitation_id: InvitationId,
    pub email: Personal<Email>,
    pub name: Personal<Name>,
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

/// `organization.bootstrap.initiated` as version 1 wrote it, before its people's
/// names and addresses were sealed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BootstrapInitiatedV1 {
    pub name: Name,
    pub slug: Slug,
    pub sender_domain: String,
    pub sender_address: Email,
    pub direct_care_settings: DirectCareSettings,
    pub admin: PlannedAdminV1,
    pub invitees: Vec<PlannedInviteeV1>,
    pub workflow_id: WorkflowId,
}

/// The admin of `organization.bootstrap.initiated` version 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlannedAdminV1 {
    pub user_id: UserId,
    pub invitation_id: InvitationId,
    pub email: Email,
    pub name: Name,
}

/// An invitee of `organization.bootstrap.initiated` version 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlannedInviteeV1 {
    pub user_id: UserId,
    pub invitation_id: InvitationId,
    pub email: Email,
    pub name: Name,
    pub roles: Vec<Role>,
}

/// Version 1 → 2 of the payloads whose personal fields are sealed from version 2 on:
/// the fields keep their names, and a value written in the clear reads as it is.
pub fn sealed_from_v2(_: &mut Map<String, Value>) -> Result<(), String> {
    Ok(())
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
    pub email: Personal<Email>,
    pub name: Personal<Name>,
}

/// `user.created` as version 1 wrote it, before names and addresses were sealed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserCreatedV1 {
    pub org_id: OrgId,
    pub email: Email,
    pub name: Name,
}

/// A person was erased at their request: their data key is destroyed, so every
/// personal field sealed under it reads as erased, and their projection rows keep no
/// name or address. Carries no personal data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserErased {
    pub org_id: OrgId,
    /// Why, as the person who erased them gave it (never the erased person's data).
    pub reason: String,
    pub erased_by: Actor,
}

/// A person was restricted: their data is kept (sealed under their live key) and shown
/// to no one, and nothing new about them is recorded, until their erasure at
/// `erase_at`, when a retention period ends. Carries no personal data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserRestricted {
    pub org_id: OrgId,
    /// Why, as the person who restricted them gave it (never the person's own data).
    pub reason: String,
    pub restricted_by: Actor,
    /// When they are erased, on a durable timer.
    pub erase_at: DateTime<Utc>,
    /// The run that erases them then.
    pub workflow_id: WorkflowId,
}

/// A person was invited; they become an active user when they accept.
///
/// Version 2: who invited them (`invited_by`). Version 1 did not record it, and an
/// upcast version 1 event says `null`: nobody knows, rather than a guess. Version 3:
/// the name and address are sealed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserInvited {
    pub org_id: OrgId,
    pub email: Personal<Email>,
    pub name: Personal<Name>,
    pub roles: Vec<Role>,
    pub invitation_id: InvitationId,
    /// Who invited them: a user, or a service (the bootstrap's engine); `null` when
    /// the event was written before this was recorded.
    pub invited_by: Option<Actor>,
}

/// `user.invited` as version 2 wrote it, before names and addresses were sealed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserInvitedV2 {
    pub org_id: OrgId,
    pub email: Email,
    pub name: Name,
    pub roles: Vec<Role>,
    pub invitation_id: InvitationId,
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
    pub email: Personal<Email>,
    pub roles: Vec<Role>,
    pub token_hash: String,
    pub expires_at: DateTime<Utc>,
    pub message_id: String,
    pub send_number: u32,
}

/// `invitation.sent` as version 1 wrote it, before addresses were sealed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvitationSentV1 {
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

/// The mail server refused an invitation's email for good (a 5xx reply): its link was
/// never recorded, and the invitation waits for a corrected address or a withdrawal.
/// The reply names the recipient only as `<recipient>`, so the event carries no
/// personal data. A first send refused is where the invitation's stream begins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvitationRefused {
    pub org_id: OrgId,
    pub user_id: UserId,
    pub roles: Vec<Role>,
    pub message_id: String,
    pub send_number: u32,
    /// What the server said, its address cut out.
    pub reply: String,
}

/// A person's roles were changed: `roles` is the whole new set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserRolesChanged {
    pub org_id: OrgId,
    pub roles: Vec<Role>,
    pub changed_by: Actor,
}

/// A person was deactivated: their tokens stop working, in the API, the feed and the
/// console, until they are reactivated. Carries no personal data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserDeactivated {
    pub org_id: OrgId,
    /// Why, as the person who deactivated them gave it.
    pub reason: String,
    pub deactivated_by: Actor,
}

/// A deactivated person was reactivated: their tokens work again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserReactivated {
    pub org_id: OrgId,
    pub reactivated_by: Actor,
}

/// A person's address was corrected (their invitation is sent again to it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserAddressCorrected {
    pub org_id: OrgId,
    pub email: Personal<Email>,
    pub corrected_by: Actor,
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
    (
        $ty:ident, $event_type:literal, $description:literal,
        version: $version:literal, personal: [$($personal:expr),+ $(,)?],
        upcasters: $upcasters:expr
    ) => {
        impl EventPayload for $ty {
            const EVENT_TYPE: &'static str = $event_type;
            const DESCRIPTION: &'static str = $description;
            const VERSION: u32 = $version;
            const PERSONAL: &'static [PersonalPath] = &[$($personal),+];
            fn upcasters() -> Vec<Upcaster> {
                $upcasters
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
    "Someone asked for an organization to be bootstrapped.",
    version: 2,
    personal: [
        PersonalPath::of("/admin/email", "/admin/user_id"),
        PersonalPath::of("/admin/name", "/admin/user_id"),
        PersonalPath::of("/invitees/*/email", "/invitees/*/user_id"),
        PersonalPath::of("/invitees/*/name", "/invitees/*/user_id"),
    ],
    upcasters: vec![Upcaster::new::<BootstrapInitiatedV1>(1, sealed_from_v2)]
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
    version: 2,
    personal: [PersonalPath::of_stream("/email"), PersonalPath::of_stream("/name")],
    upcasters: {
        let mut chain = crate::import::shapes::user_created();
        chain.push(Upcaster::new::<UserCreatedV1>(1, sealed_from_v2));
        chain
    }
);
payload!(
    UserErased,
    "user.erased",
    "A person was erased at their request; their personal data can no longer be read."
);
payload!(
    UserRestricted,
    "user.restricted",
    "A person was restricted until their erasure at the end of a retention period; their personal data is shown to no one meanwhile."
);
payload!(
    UserInvited,
    "user.invited",
    "A person was invited to an organization.",
    version: 3,
    personal: [PersonalPath::of_stream("/email"), PersonalPath::of_stream("/name")],
    upcasters: vec![
        Upcaster::new::<UserInvitedV1>(1, user_invited_v1_to_v2),
        Upcaster::new::<UserInvitedV2>(2, sealed_from_v2),
    ]
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
    version: 2,
    personal: [PersonalPath::of("/email", "/user_id")],
    upcasters: {
        let mut chain = crate::import::shapes::invitation_sent();
        chain.push(Upcaster::new::<InvitationSentV1>(1, sealed_from_v2));
        chain
    }
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
payload!(
    UserRolesChanged,
    "user.roles_changed",
    "A person's roles were changed; the event carries the whole new set."
);
payload!(
    UserDeactivated,
    "user.deactivated",
    "A person was deactivated: their tokens stop working until they are reactivated."
);
payload!(
    UserReactivated,
    "user.reactivated",
    "A deactivated person was reactivated."
);
payload!(
    InvitationRefused,
    "invitation.refused",
    "The mail server refused the invitation's email for good; it waits for a corrected address or a withdrawal."
);
payload!(
    UserAddressCorrected,
    "user.address_corrected",
    "A person's address was corrected.",
    version: 1,
    personal: [PersonalPath::of_stream("/email")],
    upcasters: Vec::new()
);
