//! Version 2 of the bootstrap, which new runs start on: its input holds ids only, and
//! it names the steps of each person by id (`invite:<user id>`,
//! `send_invitation:<invitation id>`, `record_invitation:<invitation id>`). A step that
//! needs a name or an email address reads it from the organization's
//! `organization.bootstrap.initiated` event, which names this run; so the run's
//! history (its `workflow.*` events, its rows, the metadata of the events its steps
//! append) holds no personal data.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use cairn_dispatch::EventPayload;
use cairn_log::EventFilter;
use cairn_mail::Mailer;
use cairn_types::{EventType, InvitationId, OrgId, UserId};
use cairn_workflow::{Decision, History, StepCall, StepContext, StepError, StepRecord, Workflow};

use super::{INVITE, KIND, RECORD, SEND};
use crate::events::{BootstrapInitiated, stream};
use crate::mailing::{self, Mailing};
use crate::tokens::TokenKey;

/// This definition's version.
pub const VERSION: u32 = 2;

/// A person of the bootstrap, by id: who they are is in the bootstrap's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Party {
    pub user_id: UserId,
    pub invitation_id: InvitationId,
}

/// The run's input: the ids the command drew, fixed for the life of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapPlan {
    pub org_id: OrgId,
    pub admin: Party,
    /// In the order of the request.
    pub invitees: Vec<Party>,
    pub ttl_seconds: i64,
    pub accept_url: String,
}

impl BootstrapPlan {
    /// The plan of a bootstrap of `org_id` asked for by `initiated`.
    pub fn new(
        org_id: OrgId,
        initiated: &BootstrapInitiated,
        ttl_seconds: i64,
        accept_url: String,
    ) -> Self {
        Self {
            org_id,
            admin: Party {
                user_id: initiated.admin.user_id,
                invitation_id: initiated.admin.invitation_id,
            },
            invitees: initiated
                .invitees
                .iter()
                .map(|invitee| Party {
                    user_id: invitee.user_id,
                    invitation_id: invitee.invitation_id,
                })
                .collect(),
            ttl_seconds,
            accept_url,
        }
    }

    /// Everyone who gets an invitation email: the admin first, then the invitees.
    pub fn recipients(&self) -> Vec<Party> {
        std::iter::once(self.admin)
            .chain(self.invitees.iter().copied())
            .collect()
    }
}

/// The bootstrap workflow, version 2.
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

/// The request this run was started for: the organization's
/// `organization.bootstrap.initiated` event, which must name this run.
async fn initiated(
    plan: &BootstrapPlan,
    ctx: &mut StepContext<'_>,
) -> Result<BootstrapInitiated, StepError> {
    let filter = EventFilter {
        stream_id: Some(plan.org_id.into()),
        stream_type: Some(super::stream_type(stream::ORGANIZATION)),
        event_type: Some(
            EventType::parse(BootstrapInitiated::EVENT_TYPE).expect("a registered event type"),
        ),
        limit: Some(1),
        ..EventFilter::default()
    };
    let store = ctx.store().clone();
    let registry = store.dispatcher().registry();
    // Read as every reader does: at the payload's current version, its people's names
    // and addresses opened.
    let read = match ctx.tx() {
        Ok(tx) => match tx.conn().read_events(&filter).await {
            Ok(events) => cairn_dispatch::current_events_in(
                &mut tx.conn(),
                store.db().keyring(),
                registry,
                events,
            )
            .await
            .map_err(cairn_log::ReadError::from),
            Err(error) => Err(error),
        },
        // A step that acts outside the database has no transaction: it reads on its own.
        Err(_) => {
            let mut reader = store.db().reader().await?;
            match reader.conn().read_events(&filter).await {
                Ok(events) => cairn_dispatch::current_events(store.db(), registry, events)
                    .await
                    .map_err(cairn_log::ReadError::from),
                Err(error) => Err(error),
            }
        }
    };
    let events = read.map_err(|error| {
        StepError::retryable(format!(
            "cannot read the bootstrap's request: {}",
            cairn_types::error_chain(&error)
        ))
    })?;
    let event = events.into_iter().next().ok_or_else(|| {
        StepError::permanent(format!(
            "organization {} has no {} event",
            plan.org_id,
            BootstrapInitiated::EVENT_TYPE
        ))
    })?;
    let initiated: BootstrapInitiated = cairn_dispatch::payload(&event).map_err(|error| {
        StepError::permanent(format!("the bootstrap's request cannot be read: {error}"))
    })?;
    if initiated.workflow_id != ctx.run().id {
        return Err(StepError::permanent(format!(
            "the bootstrap request of organization {} is for run {}, not this one",
            plan.org_id, initiated.workflow_id
        )));
    }
    Ok(initiated)
}

/// The email of the invitation `key` (an invitation id) names.
fn mailing_for(
    plan: &BootstrapPlan,
    initiated: &BootstrapInitiated,
    key: &str,
) -> Result<Mailing, StepError> {
    super::mailings(plan.org_id, initiated, plan.ttl_seconds, &plan.accept_url)
        .into_iter()
        .find(|mailing| mailing.invitation_id.to_string() == key)
        .ok_or_else(|| StepError::permanent(format!("no invitation {key} in the request")))
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
            .invitees
            .iter()
            .map(|invitee| invitee.user_id.to_string())
            .collect();
        let recipients: Vec<String> = plan
            .recipients()
            .iter()
            .map(|recipient| recipient.invitation_id.to_string())
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
        let org_id = plan.org_id;
        let name = call.name.as_str();
        if name == "create_organization" {
            let initiated = initiated(&plan, ctx).await?;
            return super::create_organization(org_id, &initiated, ctx).await;
        }
        if name == "create_admin" {
            let initiated = initiated(&plan, ctx).await?;
            if initiated.admin.user_id != plan.admin.user_id {
                return Err(StepError::permanent(format!(
                    "the request's admin is {}, not {}",
                    initiated.admin.user_id, plan.admin.user_id
                )));
            }
            return super::create_admin(org_id, &initiated.admin, ctx).await;
        }
        if let Some(user_id) = name.strip_prefix(INVITE) {
            let initiated = initiated(&plan, ctx).await?;
            let invitee = initiated
                .invitees
                .iter()
                .find(|invitee| invitee.user_id.to_string() == user_id)
                .ok_or_else(|| {
                    StepError::permanent(format!("no invitee {user_id} in the request"))
                })?;
            return super::invite(org_id, invitee, ctx).await;
        }
        if let Some(invitation_id) = name.strip_prefix(SEND) {
            let initiated = initiated(&plan, ctx).await?;
            let mailing = mailing_for(&plan, &initiated, invitation_id)?;
            return mailing::send(
                &self.mailer,
                &self.tokens,
                &mailing,
                mailing::Refusal::Fail,
                ctx,
            )
            .await;
        }
        if let Some(invitation_id) = name.strip_prefix(RECORD) {
            let initiated = initiated(&plan, ctx).await?;
            let mailing = mailing_for(&plan, &initiated, invitation_id)?;
            return mailing::record(&self.tokens, &mailing, &call.args, ctx).await;
        }
        if name == "complete" {
            return super::complete(org_id, plan.recipients().len(), ctx).await;
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
