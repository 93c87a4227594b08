//! The bootstrap saga: create the organization, its admin and its invitees, send every
//! invitation, and declare the organization active. On a permanent failure: report it
//! (`organization.bootstrap.failed`), then compensate newest first: revoke the
//! invitations already sent and deactivate the organization, through the safety net if
//! emitting the deactivation itself fails.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use cairn_dispatch::{EventPayload, SafetyNet, SafetyNetRecord};
use cairn_log::{AppendRequest, Expected, args};
use cairn_mail::Mailer;
use cairn_types::{OrgId, StreamType, StreamVersion};
use cairn_workflow::{
    Decision, History, StepCall, StepContext, StepError, StepRecord, StepStatus, Workflow,
};

use crate::events::{
    BootstrapCompleted, BootstrapFailed, BootstrapInitiated, InvitationRevoked,
    OrganizationCreated, OrganizationDeactivated, RoleAssigned, UserCreated, UserInvited, stream,
};
use crate::mailing::{self, Mailing};
use crate::model::Role;
use crate::tokens::TokenKey;

/// The kind bootstrap runs are started under.
pub const KIND: &str = "organization_bootstrap";

/// The run's input: what the command decided, fixed for the life of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapPlan {
    pub org_id: OrgId,
    pub initiated: BootstrapInitiated,
    pub ttl_seconds: i64,
    pub accept_url: String,
}

impl BootstrapPlan {
    /// Everyone who gets an invitation email: the admin first, then the invitees.
    pub fn mailings(&self) -> Vec<Mailing> {
        let i = &self.initiated;
        let admin = Mailing {
            invitation_id: i.admin.invitation_id,
            user_id: i.admin.user_id,
            org_id: self.org_id,
            org_name: i.name.clone(),
            sender_address: i.sender_address.clone(),
            email: i.admin.email.clone(),
            name: i.admin.name.clone(),
            roles: vec![Role::Admin],
            send_number: 1,
            ttl_seconds: self.ttl_seconds,
            accept_url: self.accept_url.clone(),
        };
        let invitees = i.invitees.iter().map(|invitee| Mailing {
            invitation_id: invitee.invitation_id,
            user_id: invitee.user_id,
            email: invitee.email.clone(),
            name: invitee.name.clone(),
            roles: invitee.roles.clone(),
            ..admin.clone()
        });
        std::iter::once(admin.clone()).chain(invitees).collect()
    }
}

/// The bootstrap workflow.
pub struct Bootstrap {
    pub mailer: Arc<dyn Mailer>,
    pub tokens: TokenKey,
    /// How its sends are retried (see [`mailing::mail_retry`]).
    pub mail_retry: cairn_workflow::RetryPolicy,
}

fn plan(input: &Value) -> Result<BootstrapPlan, String> {
    serde_json::from_value(input.clone())
        .map_err(|e| format!("the bootstrap input cannot be read: {e}"))
}

fn stream(name: &str) -> StreamType {
    StreamType::parse(name).expect("the domain's stream types are valid names")
}

#[async_trait]
impl Workflow for Bootstrap {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn decide(&self, input: &Value, history: &History) -> Result<Decision, String> {
        let plan = plan(input)?;
        if let Some(failed) = history.failure() {
            let reason = format!(
                "step {} failed: {}",
                failed.name,
                failed.last_error.as_deref().unwrap_or("no message")
            );
            let reported = history.get("report_failure").is_some_and(|step| {
                matches!(step.status, StepStatus::Completed | StepStatus::Failed)
            });
            if reported || failed.name == "report_failure" {
                return Ok(Decision::Fail(reason));
            }
            let args = json!({ "step": failed.name, "reason": failed.last_error });
            return Ok(Decision::Run(StepCall::new("report_failure").args(args)));
        }
        let mut steps = vec![
            StepCall::new("create_organization").compensable(),
            StepCall::new("create_admin"),
        ];
        for invitee in &plan.initiated.invitees {
            steps.push(StepCall::new(format!("invite:{}", invitee.email)));
        }
        for mailing in plan.mailings() {
            let send = format!("send_invitation:{}", mailing.email);
            let record = format!("record_invitation:{}", mailing.email);
            match history.result(&send) {
                None => steps.push(StepCall::new(send).external().retry(self.mail_retry)),
                Some(sent) => steps.push(StepCall::new(record).args(sent.clone()).compensable()),
            }
            if !history.completed(&format!("record_invitation:{}", mailing.email)) {
                break;
            }
        }
        steps.push(StepCall::new("complete"));
        for step in steps {
            if !history.completed(&step.name) {
                return Ok(Decision::Run(step));
            }
        }
        Ok(Decision::Complete(json!({
            "org_id": plan.org_id,
            "invitations_sent": plan.mailings().len(),
        })))
    }

    async fn perform(
        &self,
        input: &Value,
        call: &StepCall,
        ctx: &mut StepContext<'_>,
    ) -> Result<Value, StepError> {
        let plan = plan(input).map_err(StepError::permanent)?;
        let initiated = &plan.initiated;
        let mut metadata = ctx.metadata();
        metadata.org_id = Some(plan.org_id);
        let name = call.name.as_str();
        if name == "create_organization" {
            let created = OrganizationCreated {
                name: initiated.name.clone(),
                slug: initiated.slug.clone(),
                sender_domain: initiated.sender_domain.clone(),
                sender_address: initiated.sender_address.clone(),
                direct_care_settings: initiated.direct_care_settings.clone(),
            };
            let request = AppendRequest::new(
                stream(stream::ORGANIZATION),
                plan.org_id.into(),
                vec![created.to_event(metadata)],
            )
            .expect(Expected::Exact(StreamVersion::new(1)));
            ctx.append_applied(request).await?;
            return Ok(json!({ "org_id": plan.org_id }));
        }
        if name == "create_admin" {
            let admin = &initiated.admin;
            let events = vec![
                UserCreated {
                    org_id: plan.org_id,
                    email: admin.email.clone(),
                    name: admin.name.clone(),
                }
                .to_event(metadata.clone()),
                RoleAssigned {
                    org_id: plan.org_id,
                    role: Role::Admin,
                }
                .to_event(metadata),
            ];
            let request = AppendRequest::new(stream(stream::USER), admin.user_id.into(), events)
                .expect(Expected::NoStream);
            ctx.append_applied(request).await?;
            return Ok(json!({ "user_id": admin.user_id }));
        }
        if let Some(email) = name.strip_prefix("invite:") {
            let invitee = initiated
                .invitees
                .iter()
                .find(|invitee| invitee.email.as_str() == email)
                .ok_or_else(|| StepError::permanent(format!("no invitee {email} in the plan")))?;
            let invited = UserInvited {
                org_id: plan.org_id,
                email: invitee.email.clone(),
                name: invitee.name.clone(),
                roles: invitee.roles.clone(),
                invitation_id: invitee.invitation_id,
                // Whoever started the bootstrap.
                invited_by: ctx.run().actor.as_deref().and_then(|a| a.parse().ok()),
            };
            let request = AppendRequest::new(
                stream(stream::USER),
                invitee.user_id.into(),
                vec![invited.to_event(metadata)],
            )
            .expect(Expected::NoStream);
            ctx.append_applied(request).await?;
            return Ok(json!({ "user_id": invitee.user_id }));
        }
        let mailing_for = |email: &str| {
            plan.mailings()
                .into_iter()
                .find(|mailing| mailing.email.as_str() == email)
                .ok_or_else(|| StepError::permanent(format!("no recipient {email} in the plan")))
        };
        if let Some(email) = name.strip_prefix("send_invitation:") {
            return mailing::send(&self.mailer, &self.tokens, &mailing_for(email)?, ctx).await;
        }
        if let Some(email) = name.strip_prefix("record_invitation:") {
            return mailing::record(&self.tokens, &mailing_for(email)?, &call.args, ctx).await;
        }
        if name == "complete" {
            let completed = BootstrapCompleted {
                workflow_id: ctx.run().id,
                invitations_sent: u32::try_from(plan.mailings().len()).unwrap_or(u32::MAX),
            };
            let request = AppendRequest::new(
                stream(stream::ORGANIZATION),
                plan.org_id.into(),
                vec![completed.to_event(metadata)],
            );
            ctx.append_applied(request).await?;
            return Ok(json!({ "status": "active" }));
        }
        if name == "report_failure" {
            let failed = BootstrapFailed {
                workflow_id: ctx.run().id,
                step: call.args["step"].as_str().unwrap_or("unknown").to_owned(),
                reason: call.args["reason"]
                    .as_str()
                    .unwrap_or("no message")
                    .to_owned(),
            };
            let request = AppendRequest::new(
                stream(stream::ORGANIZATION),
                plan.org_id.into(),
                vec![failed.to_event(metadata)],
            );
            ctx.append_applied(request).await?;
            return Ok(json!({ "reported": true }));
        }
        Err(StepError::permanent(format!(
            "the bootstrap has no step {name}"
        )))
    }

    async fn compensate(
        &self,
        input: &Value,
        step: &StepRecord,
        ctx: &mut StepContext<'_>,
    ) -> Result<Value, StepError> {
        let plan = plan(input).map_err(StepError::permanent)?;
        if step.name == "create_organization" {
            return deactivate(plan.org_id, ctx).await;
        }
        if step.name.starts_with("record_invitation:") {
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
            let mut metadata = ctx.metadata();
            metadata.org_id = Some(plan.org_id);
            let revoked = InvitationRevoked {
                reason: "the organization's bootstrap failed".to_owned(),
            };
            let request = AppendRequest::new(
                stream(stream::INVITATION),
                invitation_id.into(),
                vec![revoked.to_event(metadata)],
            );
            ctx.append_applied(request).await?;
            return Ok(json!({ "revoked": true }));
        }
        Err(StepError::permanent(format!(
            "the bootstrap does not compensate step {}",
            step.name
        )))
    }
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
    let mut metadata = ctx.metadata();
    metadata.org_id = Some(org_id);
    let deactivated = OrganizationDeactivated {
        reason: reason.clone(),
    };
    let request = AppendRequest::new(
        stream(stream::ORGANIZATION),
        org_id.into(),
        vec![deactivated.to_event(metadata)],
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
