//! The seed stack's payloads where their shape differs from cairn's: version 0 of the
//! cairn event type each becomes, with the upcaster from 0 to 1.
//!
//! An import stores the seed's `event_data` as it was, at version 0, and every reader
//! brings it to the current version through the same chain as any stored event
//! ([`cairn_dispatch::Registry::upcast`]). The shapes are those the seed's handlers
//! read (`bench/seed-trigger/schema.sql`, rebuilt from its design document), with the
//! fields cairn needs under the seed's names. A step never invents a value: it renames,
//! wraps, or derives by a rule cairn applies to its own commands (the sender address
//! from the sender domain; the default direct-care settings); what it cannot derive
//! stays missing, and the import reports the event naming the field.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

use cairn_dispatch::Upcaster;
use cairn_types::{InvitationId, OrgId, UserId};

use crate::model::{DirectCareSettings, Email, Name, Role, Slug};

/// `organization.created` as the seed wrote it: no sender address of its own, and the
/// settings optional (its projection's default is none).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrganizationCreatedV0 {
    pub name: Name,
    pub slug: Slug,
    /// The host mail is sent for; cairn sends from noreply@ its registrable domain.
    pub sender_domain: String,
    #[serde(default)]
    pub sender_address: Option<Email>,
    #[serde(default)]
    pub direct_care_settings: Option<DirectCareSettings>,
}

/// `user.created` as the seed wrote it: the organization as `organization_id`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserCreatedV0 {
    pub organization_id: OrgId,
    pub email: Email,
    pub name: Name,
}

/// The seed's `user.role.assigned`: the organization as `organization_id`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleAssignedV0 {
    pub organization_id: OrgId,
    pub role: Role,
}

/// The seed's `user.invited`, which created the invitation (keyed by
/// `invitation_id`) from the inviting user's stream, with one role. In cairn the
/// invitation's own stream records it as `invitation.sent`, for one invitee: the seed
/// event must name the invitee (`user_id`), and the token hash and message id of the
/// email that went out.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvitationSentV0 {
    /// The invitation's stream.
    pub invitation_id: InvitationId,
    pub organization_id: OrgId,
    /// The invitee.
    pub user_id: UserId,
    pub email: Email,
    pub role: Role,
    pub token_hash: String,
    pub expires_at: DateTime<Utc>,
    pub message_id: String,
}

/// The chain of `organization.created`.
pub fn organization_created() -> Vec<Upcaster> {
    vec![Upcaster::new::<OrganizationCreatedV0>(
        0,
        organization_created_0_to_1,
    )]
}

/// The chain of `user.created`.
pub fn user_created() -> Vec<Upcaster> {
    vec![Upcaster::new::<UserCreatedV0>(0, rename_organization_id)]
}

/// The chain of `user.role_assigned`.
pub fn role_assigned() -> Vec<Upcaster> {
    vec![Upcaster::new::<RoleAssignedV0>(0, rename_organization_id)]
}

/// The chain of `invitation.sent`.
pub fn invitation_sent() -> Vec<Upcaster> {
    vec![Upcaster::new::<InvitationSentV0>(0, invitation_sent_0_to_1)]
}

fn organization_created_0_to_1(data: &mut Map<String, Value>) -> Result<(), String> {
    if data.get("sender_address").is_none_or(Value::is_null) {
        let domain = data
            .get("sender_domain")
            .and_then(Value::as_str)
            .ok_or("event_data.sender_domain is missing")?;
        let address = crate::model::sender_address(&domain.trim().to_ascii_lowercase())
            .map_err(|reason| format!("event_data.sender_domain: {reason}"))?;
        data.insert(
            "sender_address".to_owned(),
            Value::String(address.as_str().to_owned()),
        );
    }
    if data.get("direct_care_settings").is_none_or(Value::is_null) {
        // What cairn's own bootstrap applies when none are given.
        let settings = serde_json::to_value(DirectCareSettings::default())
            .map_err(|e| format!("the default direct-care settings: {e}"))?;
        data.insert("direct_care_settings".to_owned(), settings);
    }
    Ok(())
}

fn rename_organization_id(data: &mut Map<String, Value>) -> Result<(), String> {
    let org_id = data
        .remove("organization_id")
        .ok_or("event_data.organization_id is missing")?;
    data.insert("org_id".to_owned(), org_id);
    Ok(())
}

fn invitation_sent_0_to_1(data: &mut Map<String, Value>) -> Result<(), String> {
    rename_organization_id(data)?;
    // The invitation's id is its stream's id in cairn.
    data.remove("invitation_id")
        .ok_or("event_data.invitation_id is missing")?;
    let role = data.remove("role").ok_or("event_data.role is missing")?;
    data.insert("roles".to_owned(), Value::Array(vec![role]));
    // The seed's user.invited is the invitation's first email.
    data.insert("send_number".to_owned(), Value::from(1));
    Ok(())
}
