//! Invitations: sent, read, sent again, withdrawn and accepted.

use axum::http::{Method, StatusCode};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use cairn_domain::reads::{self, Invitation, Page as QueryPage};
use cairn_domain::{AddressCorrection, InvitationAcceptance, InvitationStarted, InviteeRequest};
use cairn_policy::Action;
use cairn_types::InvitationId;

use super::{
    OrgPath, Page, PageQuery, allow, command_problem, limit, not_found, page, read_problem,
};
use crate::AppState;
use crate::api::{Api, Op, Reply};
use crate::context::Ctx;
use crate::input::Empty;
use crate::problem::Problem;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvitationPath {
    pub invitation_id: InvitationId,
}

/// Why an invitation is withdrawn.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// 1 to 500 characters, not only spaces, no control characters but tabs and newlines.
    #[schemars(
        length(min = 1, max = 500),
        pattern(r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f][^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$")
    )]
    pub reason: String,
}

/// An invitation's token, from the link in its email.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptRequest {
    /// 64 hexadecimal characters.
    #[schemars(pattern(r"^[0-9a-fA-F]{64}$"))]
    pub token: String,
}

/// The invitation after a revoke.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Revoked {
    pub invitation_id: InvitationId,
    pub status: String,
}

/// What an invitation's answer leads to.
const INVITATION_LINKS: &[(&str, &str, &str)] = &[
    (
        "getInvitation",
        "invitation_id",
        "$response.body#/invitation_id",
    ),
    (
        "resendInvitation",
        "invitation_id",
        "$response.body#/invitation_id",
    ),
    (
        "revokeInvitation",
        "invitation_id",
        "$response.body#/invitation_id",
    ),
    ("getWorkflow", "workflow_id", "$response.body#/workflow_id"),
];

/// The invitations of an organization, and the public accept.
pub(super) fn ops(api: Api) -> Api {
    api.op(
        op!(GET "/v1/organizations/{org_id}/invitations", "listInvitations", "invitations", OK, public: false, command: false,
            "List an organization's invitations", "Every invitation with its status, oldest first."),
        list_invitations,
    )
    .op(
        op!(POST "/v1/organizations/{org_id}/invitations", "invite", "invitations", ACCEPTED, public: false, command: true,
            "Invite someone",
            "Records user.invited and starts the workflow that mails the invitation, in one transaction.",
            links: INVITATION_LINKS),
        invite,
    )
    .op(
        op!(GET "/v1/invitations/{invitation_id}", "getInvitation", "invitations", OK, public: false, command: false,
            "Read an invitation", "One invitation with its status; its token is never shown."),
        get_invitation,
    )
    .op(
        op!(POST "/v1/invitations/{invitation_id}/resend", "resendInvitation", "invitations", ACCEPTED, public: false, command: true,
            "Send an invitation again", "A pending or expired invitation is mailed again with a new token (the old link stops working) and a new expiry.",
            links: INVITATION_LINKS),
        resend_invitation,
    )
    .op(
        op!(POST "/v1/invitations/{invitation_id}/address", "correctInvitationAddress", "invitations", ACCEPTED, public: false, command: true,
            "Send an invitation to a corrected address",
            "Records user.address_corrected and mails a pending, expired or refused invitation again, to the corrected address, with a new token and expiry. An address the mail server refused is corrected this way, not by inviting again.",
            links: INVITATION_LINKS),
        correct_invitation_address,
    )
    .op(
        op!(POST "/v1/invitations/{invitation_id}/revoke", "revokeInvitation", "invitations", OK, public: false, command: true,
            "Withdraw an invitation", "A pending or refused invitation is revoked; its link stops working."),
        revoke_invitation,
    )
    .op(
        op!(POST "/v1/invitations/accept", "acceptInvitation", "invitations", OK, public: true, command: true,
            "Accept an invitation", "The token from the invitation link is the credential. It works once."),
        accept_invitation,
    )
}

/// `GET /v1/organizations/{org_id}/invitations`: a page of an organization's invitations.
async fn list_invitations(
    state: AppState,
    ctx: Ctx,
    path: OrgPath,
    query: PageQuery<InvitationId>,
    _: Empty,
) -> Result<Reply<Page<Invitation>>, Problem> {
    let grant = allow(&ctx, Action::ReadInvitations(path.org_id))?;
    let limit = limit(query.limit)?;
    let items: Vec<Invitation> = reads::invitations(
        state.db(),
        &grant,
        path.org_id,
        QueryPage {
            after: query.after,
            limit,
        },
    )
    .await
    .map_err(read_problem)?;
    crate::access::record_api(
        &state,
        &ctx,
        format!("organization {} invitations", path.org_id),
        Some(path.org_id),
        crate::access::of_list(&items, |i| i.user_id),
    )
    .await;
    Ok(Reply::ok(page(items, limit, |i| i.id.to_string())))
}

/// `POST /v1/organizations/{org_id}/invitations`: invites someone.
async fn invite(
    state: AppState,
    ctx: Ctx,
    path: OrgPath,
    _: Empty,
    body: InviteeRequest,
) -> Result<Reply<InvitationStarted>, Problem> {
    let started = state
        .domain()
        .invite(&ctx.command(), path.org_id, &body)
        .await
        .map_err(command_problem)?;
    Ok(Reply::accepted(started))
}

/// `GET /v1/invitations/{invitation_id}`: one invitation.
async fn get_invitation(
    state: AppState,
    ctx: Ctx,
    path: InvitationPath,
    _: Empty,
    _: Empty,
) -> Result<Reply<Invitation>, Problem> {
    let grant = allow(&ctx, Action::FindInvitation)?;
    let found = reads::invitation(state.db(), &grant, path.invitation_id)
        .await
        .map_err(read_problem)?;
    if let Some(invitation) = &found {
        crate::access::record_api(
            &state,
            &ctx,
            format!("invitation {}", invitation.id),
            Some(invitation.org_id),
            Some(vec![invitation.user_id]),
        )
        .await;
    }
    found
        .map(Reply::ok)
        .ok_or_else(|| not_found("invitation", &path.invitation_id))
}

/// `POST /v1/invitations/{invitation_id}/resend`: mails an invitation again.
async fn resend_invitation(
    state: AppState,
    ctx: Ctx,
    path: InvitationPath,
    _: Empty,
    _: Empty,
) -> Result<Reply<InvitationStarted>, Problem> {
    let started = state
        .domain()
        .resend_invitation(&ctx.command(), path.invitation_id)
        .await
        .map_err(command_problem)?;
    Ok(Reply::accepted(started))
}

/// `POST /v1/invitations/{invitation_id}/address`: mails an invitation again, to a
/// corrected address.
async fn correct_invitation_address(
    state: AppState,
    ctx: Ctx,
    path: InvitationPath,
    _: Empty,
    body: AddressCorrection,
) -> Result<Reply<InvitationStarted>, Problem> {
    let started = state
        .domain()
        .correct_invitation_address(&ctx.command(), path.invitation_id, &body)
        .await
        .map_err(command_problem)?;
    Ok(Reply::accepted(started))
}

/// `POST /v1/invitations/{invitation_id}/revoke`: withdraws an invitation.
async fn revoke_invitation(
    state: AppState,
    ctx: Ctx,
    path: InvitationPath,
    _: Empty,
    body: RevokeRequest,
) -> Result<Reply<Revoked>, Problem> {
    state
        .domain()
        .revoke_invitation(&ctx.command(), path.invitation_id, &body.reason)
        .await
        .map_err(command_problem)?;
    Ok(Reply::ok(Revoked {
        invitation_id: path.invitation_id,
        status: "revoked".into(),
    }))
}

/// `POST /v1/invitations/accept`: accepts an invitation with its token.
async fn accept_invitation(
    state: AppState,
    ctx: Ctx,
    _: Empty,
    _: Empty,
    body: AcceptRequest,
) -> Result<Reply<InvitationAcceptance>, Problem> {
    let accepted = state
        .domain()
        .accept_invitation(&ctx.command(), &body.token)
        .await
        .map_err(command_problem)?;
    Ok(Reply::ok(accepted))
}
