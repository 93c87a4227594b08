//! Version 1 of the bootstrap: its input holds the request as the command read it
//! (names and email addresses included), and it names the steps of each person by
//! email address (`invite:ada@example.com`). New runs start on [`super::v2`]; runs of
//! this version finish on it.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use cairn_mail::Mailer;
use cairn_types::OrgId;
use cairn_workflow::{Decision, History, StepCall, StepContext, StepError, StepRecord, Workflow};

use super::{INVITE, KIND, RECORD, SEND};
use crate::events::BootstrapInitiated;
use crate::mailing::{self, Mailing};
use crate::tokens::TokenKey;

/// This definition's version.
pub const VERSION: u32 = 1;

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
        super::mailings(
            self.org_id,
            &self.initiated,
            self.ttl_seconds,
            &self.accept_url,
        )
    }
}

/// The bootstrap workflow, version 1.
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

#[async_trait]
impl Workflow for Bootstrap {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        VERSION
    }

    fn decide(&self, input: &Value, history: &History) -> Result<Decision, String> {
        let plan = plan(input)?;
        let invitees: Vec<String> = plan
            .initiated
            .invitees
            .iter()
            .map(|invitee| invitee.email.to_string())
            .collect();
        let recipients: Vec<String> = plan
            .mailings()
            .iter()
            .map(|mailing| {
                mailing
                    .email
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            })
            .collect();
        let output = json!({
            "org_id": plan.org_id,
            "invitations_sent": recipients.len(),
        });
        Ok(super::decide(
            history,
            &invitees,
            &recipients,
            self.mail_retry,
            output,
        ))
    }

    async fn perform(
        &self,
        input: &Value,
        call: &StepCall,
        ctx: &mut StepContext<'_>,
    ) -> Result<Value, StepError> {
        let plan = plan(input).map_err(StepError::permanent)?;
        let initiated = &plan.initiated;
        let org_id = plan.org_id;
        let name = call.name.as_str();
        if name == "create_organization" {
            return super::create_organization(org_id, initiated, ctx).await;
        }
        if name == "create_admin" {
            return super::create_admin(org_id, &initiated.admin, ctx).await;
        }
        if let Some(email) = name.strip_prefix(INVITE) {
            let invitee = initiated
                .invitees
                .iter()
                .find(|invitee| invitee.email.known().is_some_and(|e| e.as_str() == email))
                .ok_or_else(|| StepError::permanent(format!("no invitee {email} in the plan")))?;
            return super::invite(org_id, invitee, ctx).await;
        }
        let mailing_for = |email: &str| {
            plan.mailings()
                .into_iter()
                .find(|mailing| mailing.email.as_ref().is_some_and(|e| e.as_str() == email))
                .ok_or_else(|| StepError::permanent(format!("no recipient {email} in the plan")))
        };
        if let Some(email) = name.strip_prefix(SEND) {
            return mailing::send(
                &self.mailer,
                &self.tokens,
                &mailing_for(email)?,
                mailing::Refusal::Fail,
                ctx,
            )
            .await;
        }
        if let Some(email) = name.strip_prefix(RECORD) {
            return mailing::record(&self.tokens, &mailing_for(email)?, &call.args, ctx).await;
        }
        if name == "complete" {
            return super::complete(org_id, plan.mailings().len(), ctx).await;
        }
        if name == "report_failure" {
            return super::report_failure(org_id, call, ctx).await;
        }
        Err(super::no_step(name))
    }

    async fn compensate(
        &self,
        input: &Value,
        step: &StepRecord,
        ctx: &mut StepContext<'_>,
    ) -> Result<Value, StepError> {
        let plan = plan(input).map_err(StepError::permanent)?;
        super::compensate(plan.org_id, step, ctx).await
    }
}
