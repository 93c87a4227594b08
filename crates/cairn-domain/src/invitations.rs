//! The workflows of one invitation outside the bootstrap: delivering it (after an
//! invite or a resend) and expiring it.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use cairn_dispatch::EventPayload;
use cairn_log::AppendRequest;
use cairn_mail::Mailer;
use cairn_types::{InvitationId, StreamType};
use cairn_workflow::{Decision, History, StepCall, StepContext, StepError, Workflow};

use crate::events::{InvitationExpired, stream};
use crate::mailing::{self, EXPIRY_WORKFLOW, Mailing};
use crate::tokens::TokenKey;

/// The kind of the workflow that delivers one invitation email.
pub const DELIVERY_WORKFLOW: &str = "invitation_delivery";

/// Sends one invitation email and records it.
pub struct Delivery {
    pub mailer: Arc<dyn Mailer>,
    pub tokens: TokenKey,
    /// How its send is retried (see [`mailing::mail_retry`]).
    pub mail_retry: cairn_workflow::RetryPolicy,
}

fn mailing(input: &Value) -> Result<Mailing, String> {
    serde_json::from_value(input.clone())
        .map_err(|e| format!("the delivery input cannot be read: {e}"))
}

#[async_trait]
impl Workflow for Delivery {
    fn kind(&self) -> &'static str {
        DELIVERY_WORKFLOW
    }

    fn decide(&self, input: &Value, history: &History) -> Result<Decision, String> {
        mailing(input)?;
        if let Some(failed) = history.failure() {
            return Ok(Decision::Fail(failed.failure_reason()));
        }
        let Some(sent) = history.result("send") else {
            return Ok(Decision::Run(
                StepCall::new("send").external().retry(self.mail_retry),
            ));
        };
        match history.result("record") {
            None => Ok(Decision::Run(StepCall::new("record").args(sent.clone()))),
            Some(recorded) => Ok(Decision::Complete(recorded.clone())),
        }
    }

    async fn perform(
        &self,
        input: &Value,
        call: &StepCall,
        ctx: &mut StepContext<'_>,
    ) -> Result<Value, StepError> {
        let mailing = mailing(input).map_err(StepError::permanent)?;
        match call.name.as_str() {
            "send" => {
                let status = {
                    let mut reader = ctx.store().db().reader().await?;
                    crate::queries::invitation(&mut reader.conn(), mailing.invitation_id)
                        .await?
                        .map(|invitation| invitation.status)
                };
                if let Some(status) =
                    status.filter(|status| status == "accepted" || status == "revoked")
                {
                    return Ok(mailing::skipped(
                        &mailing,
                        format!("the invitation is {status}: nothing to send"),
                    ));
                }
                mailing::send(
                    &self.mailer,
                    &self.tokens,
                    &mailing,
                    mailing::Refusal::Record,
                    ctx,
                )
                .await
            }
            "record" => mailing::record(&self.tokens, &mailing, &call.args, ctx).await,
            other => Err(StepError::permanent(format!(
                "the delivery has no step {other}"
            ))),
        }
    }
}

/// Expires an invitation when its time is up, unless it was accepted, revoked or sent
/// again with a later expiry first. It sleeps on a durable timer.
pub struct Expiry;

fn invitation_id(input: &Value) -> Result<InvitationId, String> {
    serde_json::from_value(input["invitation_id"].clone())
        .map_err(|e| format!("the expiry input cannot be read: {e}"))
}

#[async_trait]
impl Workflow for Expiry {
    fn kind(&self) -> &'static str {
        EXPIRY_WORKFLOW
    }

    fn decide(&self, input: &Value, history: &History) -> Result<Decision, String> {
        invitation_id(input)?;
        if let Some(failed) = history.failure() {
            return Ok(Decision::Fail(format!("step {} failed", failed.name)));
        }
        if let Some(expired) = history.result("expire") {
            return Ok(Decision::Complete(expired.clone()));
        }
        // Each round: look at the invitation, sleep until it is due, look again. A
        // resend in between pushes the due time out, and the loop sleeps again.
        for round in 1..=1_000 {
            let check = format!("check:{round}");
            let Some(seen) = history.result(&check) else {
                return Ok(Decision::Run(StepCall::new(check)));
            };
            let status = seen["status"].as_str().unwrap_or("missing");
            if status != "pending" {
                return Ok(Decision::Complete(
                    json!({ "expired": false, "status": status }),
                ));
            }
            let due: DateTime<Utc> = serde_json::from_value(seen["expires_at"].clone())
                .map_err(|e| format!("check {round} recorded no expiry: {e}"))?;
            if round > 1
                && let Some(woke) = history.fired(&format!("wait:{}", round - 1))
                && due <= woke
            {
                return Ok(Decision::Run(StepCall::new("expire")));
            }
            let wait = format!("wait:{round}");
            if history.fired(&wait).is_none() {
                return Ok(Decision::Sleep {
                    timer: wait,
                    until: due,
                });
            }
        }
        Err("the invitation was resent more than 1,000 times".to_owned())
    }

    async fn perform(
        &self,
        input: &Value,
        call: &StepCall,
        ctx: &mut StepContext<'_>,
    ) -> Result<Value, StepError> {
        let invitation_id = invitation_id(input).map_err(StepError::permanent)?;
        if call.name.starts_with("check:") {
            let mut reader = ctx.store().db().reader().await?;
            let invitation = crate::queries::invitation(&mut reader.conn(), invitation_id)
                .await?
                .ok_or_else(|| {
                    StepError::permanent(format!("there is no invitation {invitation_id}"))
                })?;
            return Ok(json!({ "status": invitation.status, "expires_at": invitation.expires_at }));
        }
        if call.name == "expire" {
            let now = ctx.now();
            let tx = ctx.tx()?;
            tx.lock_head().await?;
            let invitation = crate::queries::invitation(&mut tx.conn(), invitation_id)
                .await?
                .ok_or_else(|| {
                    StepError::permanent(format!("there is no invitation {invitation_id}"))
                })?;
            if invitation.status != "pending" || invitation.expires_at > now {
                return Ok(json!({ "expired": false, "status": invitation.status }));
            }
            let mut metadata = ctx.metadata();
            metadata.org_id = Some(invitation.org_id);
            let expired = InvitationExpired { expired_at: now };
            let stream_type = StreamType::parse(stream::INVITATION).expect("a valid stream type");
            ctx.append_applied(AppendRequest::new(
                stream_type,
                invitation_id.into(),
                vec![expired.to_event(metadata)],
            ))
            .await?;
            return Ok(json!({ "expired": true, "status": "expired" }));
        }
        Err(StepError::permanent(format!(
            "the expiry has no step {}",
            call.name
        )))
    }
}
