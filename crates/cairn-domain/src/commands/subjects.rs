//! People as data subjects: their erasure at their request, their restriction until
//! an erasure when a retention period ends, and where one stands.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use cairn_dispatch::EventPayload;
use cairn_log::{AppendRequest, BoxFuture, Tx};
use cairn_policy::Action;
use cairn_types::{CorrelationId, OrgId, UserId};

use super::{Changes, Command, CommandContext, CommandError, Domain, invalid, stream_type};
use crate::events::{UserErased, stream};
use crate::queries;

/// What an erasure returns, and returns again if the person is erased again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErasureReceipt {
    pub subject_id: UserId,
    pub org_id: OrgId,
    pub erased_at: DateTime<Utc>,
    /// Who erased them: `user:<uuid>` or `service:<name>`.
    pub erased_by: String,
    pub reason: String,
    /// The request that erased them: its timeline shows the erasure.
    pub correlation_id: CorrelationId,
    /// Whether this answer is the receipt of an earlier erasure.
    #[serde(default)]
    pub repeated: bool,
}

/// Where a person stands, for `GET /v1/subjects/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct SubjectStatus {
    pub subject_id: UserId,
    pub org_id: OrgId,
    /// `active` (their data is sealed under a live key, or was written before sealing
    /// and is kept) or `erased`.
    pub state: String,
    /// The erasure's receipt, once erased.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub erasure: Option<ErasureReceipt>,
}

struct Erase {
    user_id: UserId,
    reason: String,
}

impl Command for Erase {
    const NAME: &'static str = "erase_subject";
    type Response = ErasureReceipt;

    fn request(&self) -> Value {
        json!({ "user_id": self.user_id, "reason": self.reason })
    }

    fn authorize<'t>(
        &'t self,
        ctx: &'t CommandContext,
        tx: &'t mut Tx,
    ) -> BoxFuture<'t, Result<(), CommandError>> {
        Box::pin(async move {
            let user = existing_user(tx, self.user_id).await?;
            ctx.authorize_found(
                Action::EraseSubject(user.org_id),
                user.org_id,
                "user",
                self.user_id.to_string(),
            )?;
            Ok(())
        })
    }

    fn decide<'t>(
        &'t self,
        domain: &'t Domain,
        ctx: &'t CommandContext,
        tx: &'t mut Tx,
    ) -> BoxFuture<'t, Result<Changes<ErasureReceipt>, CommandError>> {
        Box::pin(async move {
            let user = existing_user(tx, self.user_id).await?;
            let receipt = ErasureReceipt {
                subject_id: self.user_id,
                org_id: user.org_id,
                erased_at: domain.now(),
                erased_by: ctx.actor().to_string(),
                reason: self.reason.clone(),
                correlation_id: ctx.correlation_id,
                repeated: false,
            };
            let stored =
                serde_json::to_value(&receipt).map_err(|e| CommandError::InvalidState {
                    message: format!("the receipt cannot be encoded: {e}"),
                })?;
            let erasure = domain
                .store
                .db()
                .keyring()
                .erase_in(tx, self.user_id, stored)
                .await?;
            match erasure {
                cairn_log::Erasure::Already { receipt } => {
                    let mut first: ErasureReceipt =
                        serde_json::from_value(receipt).map_err(|e| {
                            CommandError::InvalidState {
                                message: format!("the first erasure's receipt cannot be read: {e}"),
                            }
                        })?;
                    first.repeated = true;
                    Ok(Changes::answer(first))
                }
                cairn_log::Erasure::Erased { .. } => {
                    let erased = UserErased {
                        org_id: user.org_id,
                        reason: self.reason.clone(),
                        erased_by: ctx.actor(),
                    };
                    Ok(Changes::answer(receipt).append(AppendRequest::new(
                        stream_type(stream::USER),
                        self.user_id.into(),
                        vec![erased.to_event(ctx.metadata(user.org_id))],
                    )))
                }
            }
        })
    }
}

async fn existing_user(tx: &mut Tx, user_id: UserId) -> Result<queries::User, CommandError> {
    queries::user(&mut tx.conn(), user_id)
        .await?
        .ok_or_else(|| CommandError::NotFound {
            what: "user",
            id: user_id.to_string(),
        })
}

impl Domain {
    /// Erases a person at their request, in one unit of work: their data key is
    /// destroyed (every personal field sealed under it can never be read again), a
    /// `user.erased` event with no personal data is appended, and their projection
    /// rows become tombstones. Then the copies cairn made outside the database (outbox
    /// files) are removed. Erasing again returns the first receipt.
    pub async fn erase_subject(
        &self,
        ctx: &CommandContext,
        user_id: UserId,
        reason: &str,
    ) -> Result<ErasureReceipt, CommandError> {
        let reason = reason.trim();
        let controls = reason
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r');
        if reason.is_empty() || reason.chars().count() > 500 || controls {
            return Err(CommandError::Invalid(vec![invalid(
                "reason",
                "give a reason of 1 to 500 characters, without control characters",
            )]));
        }
        let receipt = self
            .execute(
                ctx,
                Erase {
                    user_id,
                    reason: reason.to_owned(),
                },
            )
            .await?;
        self.store.db().keyring().forget(user_id);
        if let Err(error) = self.store.db().compact_wal().await {
            tracing::warn!(%user_id, %error, "the write-ahead log was not emptied after an erasure");
        }
        if let Err(error) = self.sweep_subject(user_id).await {
            // Swept again at the next start: the erasure itself is complete.
            tracing::error!(%user_id, error = %cairn_types::error_chain(&*error), "the copies outside the database of an erased person were not removed yet");
        }
        Ok(receipt)
    }

    /// Where a person stands. A person of another tenant is not found.
    pub async fn subject_status(
        &self,
        ctx: &CommandContext,
        user_id: UserId,
    ) -> Result<SubjectStatus, CommandError> {
        let mut reader = self.store.db().reader().await?;
        let user = queries::user(&mut reader.conn(), user_id)
            .await?
            .ok_or_else(|| CommandError::NotFound {
                what: "user",
                id: user_id.to_string(),
            })?;
        drop(reader);
        ctx.authorize_found(
            Action::ReadUsers(user.org_id),
            user.org_id,
            "user",
            user_id.to_string(),
        )?;
        let state = self
            .store
            .db()
            .keyring()
            .state(self.store.db(), user_id)
            .await?;
        Ok(match state {
            cairn_log::SubjectState::Erased { receipt } => SubjectStatus {
                subject_id: user_id,
                org_id: user.org_id,
                state: "erased".to_owned(),
                erasure: serde_json::from_value(receipt).ok(),
            },
            _ => SubjectStatus {
                subject_id: user_id,
                org_id: user.org_id,
                state: "active".to_owned(),
                erasure: None,
            },
        })
    }

    /// Removes the copies cairn made outside the database of an erased person (the
    /// outbox's `.eml` files of their invitations), then records that it did.
    async fn sweep_subject(
        &self,
        user_id: UserId,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let mut reader = self.store.db().reader().await?;
        let invitations = queries::invitations_of_user(&mut reader.conn(), user_id).await?;
        drop(reader);
        let mut message_ids = Vec::new();
        for invitation in &invitations {
            let domain = invitation
                .message_id
                .rsplit_once('@')
                .map_or("", |(_, domain)| domain);
            for n in 1..=invitation.send_count.max(1) {
                message_ids.push(format!("invitation-{}-{n}@{domain}", invitation.id));
            }
        }
        self.mailer.forget(&message_ids).await?;
        self.store
            .db()
            .keyring()
            .mark_swept(self.store.db(), user_id)
            .await?;
        Ok(())
    }

    /// Finishes every erasure whose copies outside the database were not removed yet
    /// (a process stopped between the erasure's commit and the sweep). Run at start.
    pub async fn sweep_erased(&self) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
        let pending = self.store.db().keyring().unswept(self.store.db()).await?;
        for user_id in &pending {
            self.store.db().keyring().forget(*user_id);
            self.sweep_subject(*user_id).await?;
        }
        Ok(pending.len())
    }
}
