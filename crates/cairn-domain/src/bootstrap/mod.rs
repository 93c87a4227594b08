//! The bootstrap saga: create the organization, its admin and its invitees, send every
//! invitation, and declare the organization active. On a permanent failure: report it
//! (`organization.bootstrap.failed`), then compensate newest first: revoke the
//! invitations already sent and deactivate the organization, through the safety net if
//! emitting the deactivation itself fails.
//!
//! Two versions of the definition are registered, and a run finishes on the version it
//! started on. [`v1`] holds the request's names and email addresses in its input and
//! names its steps by email address. [`v2`], which new runs start on, holds only ids in
//! its input and step names, and reads the people from the organization's
//! `organization.bootstrap.initiated` event when a step needs them: personal data is
//! kept in that one event, not copied into the run's history. Both take the same steps
//! in the same order, performed by the functions of this module.

pub mod v1;
pub mod v2;

use serde_json::{Value, json};

use cairn_dispatch::{EventPayload, SafetyNet, SafetyNetRecord};
use cairn_log::{AppendRequest, Expected, args};
use cairn_types::{OrgId, StreamType, StreamVersion};
use cairn_workflow::{
    Decision, History, RetryPolicy, StepCall, StepContext, StepError, StepRecord, StepStatus,
};

use crate::events::{
    BootstrapCompleted, BootstrapFailed, BootstrapInitiated, InvitationRevoked,
    OrganizationCreated, OrganizationDeactivated, PlannedAdmin, PlannedInvitee, RoleAssigned,
    UserCreated, UserInvited, stream,
};
use crate::mailing::Mailing;
use crate::model::Role;

/// The kind bootstrap runs are started under, in every version.
pub const KIND: &str = "organization_bootstrap";

/// The step that creates an invitee, named `invite:` and the invitee's key.
const INVITE: &str = "invite:";
/// The step that sends an invitation, named `send_invitation:` and the recipient's key.
const SEND: &str = "send_invitation:";
/// The step that records a sent invitation, named `record_invitation:` and the
/// recipient's key.
const RECORD: &str = "record_invitation:";

fn stream_type(name: &str) -> StreamType {
    StreamType::parse(name).expect("the domain's stream types are valid names")
}

/// What comes next, in either version. `invitees` are the keys of the invitees' step
/// names, `recipients` those of everyone who gets an email (the admin first), each in
/// the order its steps run; `output` is what the run completes with.
fn decide(
    history: &History,
    invitees: &[String],
    recipients: &[String],
    mail_retry: RetryPolicy,
    output: Value,
) -> Decision {
    if let Some(failed) = history.failure() {
        let reason = failed.failure_reason();
        let reported = history
            .get("report_failure")
            .is_some_and(|step| matches!(step.status, StepStatus::Completed | StepStatus::Failed));
        if reported || failed.name == "report_failure" {
            return Decision::Fail(reason);
        }
        let args = json!({ "step": failed.name, "reason": failed.last_error });
        return Decision::Run(StepCall::new("report_failure").args(args));
    }
    let mut steps = vec![
        StepCall::new("create_organization").compensable(),
        StepCall::new("create_admin"),
    ];
    for key in invitees {
        steps.push(StepCall::new(format!("{INVITE}{key}")));
    }
    for key in recipients {
        let send = format!("{SEND}{key}");
        let record = format!("{RECORD}{key}");
        let recorded = history.completed(&record);
        match history.result(&send) {
            None => steps.push(StepCall::new(send).external().retry(mail_retry)),
            Some(sent) => steps.push(StepCall::new(record).args(sent.clone()).compensable()),
        }
        if !recorded {
            break;
        }
    }
    steps.push(StepCall::new("complete"));
    for step in steps {
        if !history.completed(&step.name) {
            return Decision::Run(step);
        }
    }
    Decision::Complete(output)
}

/// Everyone who gets an invitation email: the admin first, then the invitees.
fn mailings(
    org_id: OrgId,
    initiated: &BootstrapInitiated,
    ttl_seconds: i64,
    accept_url: &str,
) -> Vec<Mailing> {
    let admin = Mailing {
        invitation_id: initiated.admin.invitation_id,
        user_id: initiated.admin.user_id,
        org_id,
        org_name: initiated.name.clone(),
        sender_address: initiated.sender_address.clone(),
        email: initiated.admin.email.known().cloned(),
        name: initiated.admin.name.known().cloned(),
        roles: vec![Role::Admin],
        send_number: 1,
        ttl_seconds,
        accept_url: accept_url.to_owned(),
    };
    let invitees = initiated.invitees.iter().map(|invitee| Mailing {
        invitation_id: invitee.invitation_id,
        user_id: invitee.user_id,
        email: invitee.email.known().cloned(),
        name: invitee.name.known().cloned(),
        roles: invitee.roles.clone(),
        ..admin.clone()
    });
    std::iter::once(admin.clone()).chain(invitees).collect()
}

/// The step's metadata, in the organization's tenancy.
fn metadata(org_id: OrgId, ctx: &StepContext<'_>) -> cairn_types::Metadata {
    let mut metadata = ctx.metadata();
    metadata.org_id = Some(org_id);
    metadata
}

async fn create_organization(
    org_id: OrgId,
    initiated: &BootstrapInitiated,
    ctx: &mut StepContext<'_>,
) -> Result<Value, StepError> {
    let created = OrganizationCreated {
        name: initiated.name.clone(),
        slug: initiated.slug.clone(),
        sender_domain: initiated.sender_domain.clone(),
        sender_address: initiated.sender_address.clone(),
        direct_care_settings: initiated.direct_care_settings.clone(),
    };
    let request = AppendRequest::new(
        stream_type(stream::ORGANIZATION),
        org_id.into(),
        vec![created.to_event(metadata(org_id, ctx))],
    )
    .expect(Expected::Exact(StreamVersion::new(1)));
    ctx.append_applied(request).await?;
    Ok(json!({ "org_id": org_id }))
}

async fn create_admin(
    org_id: OrgId,
    admin: &PlannedAdmin,
    ctx: &mut StepContext<'_>,
) -> Result<Value, StepError> {
    let metadata = metadata(org_id, ctx);
    let events = vec![
        UserCreated {
            org_id,
            email: admin.email.clone(),
            name: admin.name.clone(),
        }
        .to_event(metadata.clone()),
        RoleAssigned {
            org_id,
            role: Role::Admin,
        }
        .to_event(metadata),
    ];
    let request = AppendRequest::new(stream_type(stream::USER), admin.user_id.into(), events)
        .expect(Expected::NoStream);
    ctx.append_applied(request).await?;
    Ok(json!({ "user_id": admin.user_id }))
}

async fn invite(
    org_id: OrgId,
    invitee: &PlannedInvitee,
    ctx: &mut StepContext<'_>,
) -> Result<Value, StepError> {
    let invited = UserInvited {
        org_id,
        email: invitee.email.clone(),
        name: invitee.name.clone(),
        roles: invitee.roles.clone(),
        invitation_id: invitee.invitation_id,
        // Whoever started the bootstrap.
        invited_by: ctx.run().actor.as_deref().and_then(|a| a.parse().ok()),
    };
    let request = AppendRequest::new(
        stream_type(stream::USER),
        invitee.user_id.into(),
        vec![invited.to_event(metadata(org_id, ctx))],
    )
    .expect(Expected::NoStream);
    ctx.append_applied(request).await?;
    Ok(json!({ "user_id": invitee.user_id }))
}

async fn complete(
    org_id: OrgId,
    invitations_sent: usize,
    ctx: &mut StepContext<'_>,
) -> Result<Value, StepError> {
    let completed = BootstrapCompleted {
        workflow_id: ctx.run().id,
        invitations_sent: u32::try_from(invitations_sent).unwrap_or(u32::MAX),
    };
    let request = AppendRequest::new(
        stream_type(stream::ORGANIZATION),
        org_id.into(),
        vec![completed.to_event(metadata(org_id, ctx))],
    );
    ctx.append_applied(request).await?;
    Ok(json!({ "status": "active" }))
}

async fn report_failure(
    org_id: OrgId,
    call: &StepCall,
    ctx: &mut StepContext<'_>,
) -> Result<Value, StepError> {
    let failed = BootstrapFailed {
        workflow_id: ctx.run().id,
        step: call.args["step"].as_str().unwrap_or("unknown").to_owned(),
        reason: call.args["reason"]
            .as_str()
            .unwrap_or("no message")
            .to_owned(),
    };
    let request = AppendRequest::new(
        stream_type(stream::ORGANIZATION),
        org_id.into(),
        vec![failed.to_event(metadata(org_id, ctx))],
    );
    ctx.append_applied(request).await?;
    Ok(json!({ "reported": true }))
}

fn no_step(name: &str) -> StepError {
    StepError::permanent(format!("the bootstrap has no step {name}"))
}

/// Undoes a completed compensable step of either version: a recorded invitation is
/// revoked if still pending, the organization deactivated.
async fn compensate(
    org_id: OrgId,
    step: &StepRecord,
    ctx: &mut StepContext<'_>,
) -> Result<Value, StepError> {
    if step.name == "create_organization" {
        return deactivate(org_id, ctx).await;
    }
    if step.name.starts_with(RECORD) {
        let invitation_id = step
            .result
            .as_ref()
            .and_then(|result| result.get("invitation_id"))
            .and_then(|id| serde_json::from_value(id.clone()).ok())
            .ok_or_else(|| {
                StepError::permanent(format!("step {} recorded no invitation id", step.name))
            })?;
        let tx = ctx.tx()?;
        tx.lock_head().await?;
        let pending = crate::queries::invitation(&mut tx.conn(), invitation_id)
            .await?
            .is_some_and(|invitation| invitation.status == "pending");
        if !pending {
            return Ok(json!({ "revoked": false }));
        }
        let revoked = InvitationRevoked {
            reason: "the organization's bootstrap failed".to_owned(),
        };
        let request = AppendRequest::new(
            stream_type(stream::INVITATION),
            invitation_id.into(),
            vec![revoked.to_event(metadata(org_id, ctx))],
        );
        ctx.append_applied(request).await?;
        return Ok(json!({ "revoked": true }));
    }
    Err(StepError::permanent(format!(
        "the bootstrap does not compensate step {}",
        step.name
    )))
}

/// Deactivates the organization: by event when possible; when emitting the event
/// itself fails, by the safety net, which writes the projection directly and leaves an
/// audit record in the same transaction. This is the one place the domain does so.
async fn deactivate(org_id: OrgId, ctx: &mut StepContext<'_>) -> Result<Value, StepError> {
    let reason = ctx
        .run()
        .failure
        .clone()
        .unwrap_or_else(|| "the organization's bootstrap failed".to_owned());
    // A run undone without its decide reporting the failure (it was cancelled) reports
    // it here, so that the organization says why it failed.
    let unreported = {
        let tx = ctx.tx()?;
        tx.lock_head().await?;
        crate::queries::organization(&mut tx.conn(), org_id)
            .await?
            .is_some_and(|organization| organization.status == "bootstrapping")
    };
    if unreported {
        let failed = BootstrapFailed {
            workflow_id: ctx.run().id,
            step: ctx
                .run()
                .current_step
                .clone()
                .unwrap_or_else(|| "unknown".to_owned()),
            reason: reason.clone(),
        };
        ctx.append_applied(AppendRequest::new(
            stream_type(stream::ORGANIZATION),
            org_id.into(),
            vec![failed.to_event(metadata(org_id, ctx))],
        ))
        .await?;
    }
    let deactivated = OrganizationDeactivated {
        reason: reason.clone(),
    };
    let request = AppendRequest::new(
        stream_type(stream::ORGANIZATION),
        org_id.into(),
        vec![deactivated.to_event(metadata(org_id, ctx))],
    );
    let why = match ctx.try_append(request).await? {
        Ok(appended) => match appended
            .events
            .first()
            .and_then(|dispatched| dispatched.outcome.error())
        {
            None => return Ok(json!({ "deactivated_by": "event" })),
            Some(error) => format!(
                "the organization.deactivated event was stored but not applied ({} {})",
                error.code, error.message
            ),
        },
        Err(error) => {
            format!(
                "the organization.deactivated event could not be appended: {}",
                cairn_types::error_chain(&error)
            )
        }
    };
    let record = SafetyNetRecord {
        projection: "organizations",
        row_key: json!({ "id": org_id }),
        reason: why.clone(),
        correlation_id: ctx.run().correlation_id,
        context: json!({ "workflow_id": ctx.run().id, "step": ctx.step(), "deactivation_reason": reason }),
        at: ctx.now(),
    };
    let now = ctx.now();
    let tx = ctx.tx()?;
    let mut projections = SafetyNet::open(tx, &record).await?;
    projections
        .execute(
            "UPDATE organizations SET is_active = FALSE, status = 'failed', deactivated_at = $2, updated_at = $2 WHERE id = $1",
            args![org_id, now],
        )
        .await
        .map_err(|e| StepError::retryable(format!("the safety net could not deactivate the organization: {e}")))?;
    Ok(json!({ "deactivated_by": "safety_net", "why": why }))
}
