//! People as data subjects: their erasure at their request, their restriction until
//! an erasure when a retention period ends, and where one stands.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use async_trait::async_trait;
use std::sync::Arc;

use cairn_dispatch::EventPayload;
use cairn_log::{AppendRequest, BoxFuture, Tx};
use cairn_mail::Mailer;
use cairn_policy::Action;
use cairn_types::{CorrelationId, Metadata, OrgId, UserId, WorkflowId};
use cairn_workflow::{Decision, History, Start, StepCall, StepContext, StepError, Workflow};

use super::{Changes, Command, CommandContext, CommandError, Domain, invalid, stream_type};
use crate::events::{UserErased, UserRestricted, stream};
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

/// What a restriction returns, and returns again if the person is restricted again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RestrictionReceipt {
    pub subject_id: UserId,
    pub org_id: OrgId,
    pub restricted_at: DateTime<Utc>,
    /// Who restricted them: `user:<uuid>` or `service:<name>`.
    pub restricted_by: String,
    pub reason: String,
    /// When they are erased, on a durable timer.
    pub erase_at: DateTime<Utc>,
    /// The run that sleeps until `erase_at` and then erases them.
    pub workflow_id: WorkflowId,
    /// The request that restricted them: its timeline shows the restriction.
    pub correlation_id: CorrelationId,
    /// Whether this answer is the receipt of an earlier restriction.
    #[serde(default)]
    pub repeated: bool,
}

/// Where a person stands, for `GET /v1/subjects/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct SubjectStatus {
    pub subject_id: UserId,
    pub org_id: OrgId,
    /// `active` (their data is sealed under a live key, or was written before sealing
    /// and is kept), `restricted` (kept, shown to no one, until their erasure) or
    /// `erased`.
    pub state: String,
    /// The restriction's receipt, once restricted (kept after their erasure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restriction: Option<RestrictionReceipt>,
    /// The erasure's receipt, once erased.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub erasure: Option<ErasureReceipt>,
}

/// What the log holds about a person, disclosed for a legal claim (GDPR art. 18(2)):
/// every personal field of theirs, opened even while they are restricted. The
/// disclosure is on record in the access log, with its reason, before it is shown.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Disclosure {
    pub subject_id: UserId,
    pub org_id: OrgId,
    /// `active` or `restricted`: a restricted person's data is shown to no one else.
    pub state: String,
    pub disclosed_at: DateTime<Utc>,
    /// Who it was disclosed to: `user:<uuid>`, `platform-admin:<name>`,
    /// `operator:<name>`.
    pub disclosed_to: String,
    /// The legal claim it was disclosed for, as given.
    pub reason: String,
    /// The request that disclosed it: the access record names it.
    pub correlation_id: CorrelationId,
    /// Every personal field of theirs, in the order the log recorded them.
    pub fields: Vec<cairn_dispatch::DisclosedField>,
}

/// The kind of the workflow that erases a restricted person when their retention
/// period ends.
pub const RETENTION_WORKFLOW: &str = "retention_erasure";

/// The furthest ahead an erasure can be put: a retention period of up to 30 years.
const LONGEST_RETENTION_DAYS: i64 = 30 * 366;

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
        Box::pin(authorize_subject(ctx, tx, self.user_id))
    }

    fn decide<'t>(
        &'t self,
        domain: &'t Domain,
        ctx: &'t CommandContext,
        tx: &'t mut Tx,
    ) -> BoxFuture<'t, Result<Changes<ErasureReceipt>, CommandError>> {
        Box::pin(async move {
            let user = existing_user(tx, self.user_id).await?;
            let (receipt, event) = erase_in(
                domain.store.db().keyring(),
                tx,
                &user,
                &self.reason,
                ctx.metadata(user.org_id),
                domain.now(),
            )
            .await?;
            Ok(match event {
                Some(event) => Changes::answer(receipt).append(event),
                None => Changes::answer(receipt),
            })
        })
    }
}

/// Asks the policy whether the principal may erase or restrict `user_id`: their
/// organization's admin or a platform administrator. Anyone else, for a person of
/// another tenant or nobody, is told no such user exists.
async fn authorize_subject(
    ctx: &CommandContext,
    tx: &mut Tx,
    user_id: UserId,
) -> Result<(), CommandError> {
    let user = existing_user(tx, user_id).await?;
    ctx.authorize_found(
        Action::EraseSubject(user.org_id),
        user.org_id,
        "user",
        user_id.to_string(),
    )?;
    Ok(())
}

/// The erasure of `user` as a unit of work in `tx`: their data key is destroyed and
/// the receipt stored with it. Returns the receipt and the `user.erased` event to
/// append with the same unit, or the first receipt (marked repeated) and no event
/// when they were erased before. `metadata` names who erases them and why.
pub(crate) async fn erase_in(
    keyring: &cairn_log::Keyring,
    tx: &mut Tx,
    user: &queries::User,
    reason: &str,
    metadata: Metadata,
    now: DateTime<Utc>,
) -> Result<(ErasureReceipt, Option<AppendRequest>), CommandError> {
    let erased_by = metadata
        .actor
        .clone()
        .ok_or_else(|| CommandError::InvalidState {
            message: "an erasure must name who erases".to_owned(),
        })?;
    let receipt = ErasureReceipt {
        subject_id: user.id,
        org_id: user.org_id,
        erased_at: now,
        erased_by: erased_by.to_string(),
        reason: reason.to_owned(),
        correlation_id: metadata.correlation_id,
        repeated: false,
    };
    match keyring.erase_in(tx, user.id, encode(&receipt)?).await? {
        cairn_log::Erasure::Already { receipt } => {
            let mut first: ErasureReceipt = decode(receipt, "erasure")?;
            first.repeated = true;
            Ok((first, None))
        }
        cairn_log::Erasure::Erased { .. } => {
            let erased = UserErased {
                org_id: user.org_id,
                reason: reason.to_owned(),
                erased_by,
            };
            let event = AppendRequest::new(
                stream_type(stream::USER),
                user.id.into(),
                vec![erased.to_event(metadata)],
            );
            Ok((receipt, Some(event)))
        }
    }
}

fn encode<T: Serialize>(receipt: &T) -> Result<Value, CommandError> {
    serde_json::to_value(receipt).map_err(|e| CommandError::InvalidState {
        message: format!("the receipt cannot be encoded: {e}"),
    })
}

fn decode<T: serde::de::DeserializeOwned>(receipt: Value, what: &str) -> Result<T, CommandError> {
    serde_json::from_value(receipt).map_err(|e| CommandError::InvalidState {
        message: format!("the first {what}'s receipt cannot be read: {e}"),
    })
}

struct Restrict {
    user_id: UserId,
    reason: String,
    erase_at: DateTime<Utc>,
}

impl Command for Restrict {
    const NAME: &'static str = "restrict_subject";
    type Response = RestrictionReceipt;

    fn request(&self) -> Value {
        json!({ "user_id": self.user_id, "reason": self.reason, "erase_at": self.erase_at })
    }

    fn authorize<'t>(
        &'t self,
        ctx: &'t CommandContext,
        tx: &'t mut Tx,
    ) -> BoxFuture<'t, Result<(), CommandError>> {
        Box::pin(authorize_subject(ctx, tx, self.user_id))
    }

    fn decide<'t>(
        &'t self,
        domain: &'t Domain,
        ctx: &'t CommandContext,
        tx: &'t mut Tx,
    ) -> BoxFuture<'t, Result<Changes<RestrictionReceipt>, CommandError>> {
        Box::pin(async move {
            let user = existing_user(tx, self.user_id).await?;
            let workflow_id = WorkflowId::new_v7();
            let receipt = RestrictionReceipt {
                subject_id: self.user_id,
                org_id: user.org_id,
                restricted_at: domain.now(),
                restricted_by: ctx.actor().to_string(),
                reason: self.reason.clone(),
                erase_at: self.erase_at,
                workflow_id,
                correlation_id: ctx.correlation_id,
                repeated: false,
            };
            let restriction = domain
                .store
                .db()
                .keyring()
                .restrict_in(tx, self.user_id, encode(&receipt)?)
                .await
                .map_err(|error| match error {
                    cairn_log::SealError::Database(e) => CommandError::Database(e),
                    other => CommandError::InvalidState {
                        message: other.to_string(),
                    },
                })?;
            match restriction {
                cairn_log::Restriction::Already { receipt } => {
                    let mut first: RestrictionReceipt = decode(receipt, "restriction")?;
                    first.repeated = true;
                    Ok(Changes::answer(first))
                }
                cairn_log::Restriction::Erased { receipt } => {
                    let erased: ErasureReceipt = decode(receipt, "erasure")?;
                    Err(CommandError::InvalidState {
                        message: format!(
                            "user {} was erased at {}: there is nothing left to restrict",
                            self.user_id,
                            erased.erased_at.format("%Y-%m-%d %H:%M:%S UTC")
                        ),
                    })
                }
                cairn_log::Restriction::Restricted { .. } => {
                    let restricted = UserRestricted {
                        org_id: user.org_id,
                        reason: self.reason.clone(),
                        restricted_by: ctx.actor(),
                        erase_at: self.erase_at,
                        workflow_id,
                    };
                    let start = Start {
                        id: workflow_id,
                        kind: RETENTION_WORKFLOW.to_owned(),
                        input: json!({
                            "subject_id": self.user_id,
                            "erase_at": self.erase_at,
                            "reason": self.reason,
                        }),
                        correlation_id: ctx.correlation_id,
                        org_id: Some(user.org_id),
                        actor: Some(ctx.actor()),
                        parent: None,
                    };
                    Ok(Changes::answer(receipt)
                        .append(AppendRequest::new(
                            stream_type(stream::USER),
                            self.user_id.into(),
                            vec![restricted.to_event(ctx.metadata(user.org_id))],
                        ))
                        .start(start))
                }
            }
        })
    }
}

/// A reason given for an erasure or a restriction, trimmed; refused when empty, longer
/// than 500 characters or holding control characters.
pub(super) fn checked_reason(reason: &str) -> Result<String, CommandError> {
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
    Ok(reason.to_owned())
}

pub(super) async fn existing_user(
    tx: &mut Tx,
    user_id: UserId,
) -> Result<queries::User, CommandError> {
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
        let reason = checked_reason(reason)?;
        let receipt = self.execute(ctx, Erase { user_id, reason }).await?;
        self.store.db().keyring().forget(user_id);
        self.scrub_personal_data().await;
        if let Err(error) = self.sweep_subject(user_id).await {
            // Swept again at the next start: the erasure itself is complete.
            tracing::error!(%user_id, error = %cairn_types::error_chain(&*error), "the copies outside the database of an erased person were not removed yet");
        }
        Ok(receipt)
    }

    /// Restricts a person until their erasure at `erase_at`, when a retention period
    /// ends (GDPR art. 17(3)(b) and art. 18): in one unit of work their data is
    /// withheld from every read (it stays sealed in the log under their key), their
    /// projection rows keep no name or address, nothing new about them can be
    /// recorded, `user.restricted` is appended, and a run starts that sleeps on a
    /// durable timer until `erase_at` and then erases them. Restricting again returns
    /// the first receipt; an erased person cannot be restricted.
    pub async fn restrict_subject(
        &self,
        ctx: &CommandContext,
        user_id: UserId,
        reason: &str,
        erase_at: DateTime<Utc>,
    ) -> Result<RestrictionReceipt, CommandError> {
        let reason = checked_reason(reason)?;
        let now = self.now();
        if erase_at <= now {
            return Err(CommandError::Invalid(vec![invalid(
                "erase_at",
                format!(
                    "the erasure must be in the future (it is {} now); erase now instead",
                    now.format("%Y-%m-%dT%H:%M:%SZ")
                ),
            )]));
        }
        if erase_at > now + chrono::Duration::days(LONGEST_RETENTION_DAYS) {
            return Err(CommandError::Invalid(vec![invalid(
                "erase_at",
                "the erasure must be within 30 years",
            )]));
        }
        let receipt = self
            .execute(
                ctx,
                Restrict {
                    user_id,
                    reason,
                    erase_at,
                },
            )
            .await?;
        self.scrub_personal_data().await;
        Ok(receipt)
    }

    /// [`Domain::restrict_subject`] until `retain` from now, by the engine's clock.
    pub async fn restrict_subject_for(
        &self,
        ctx: &CommandContext,
        user_id: UserId,
        reason: &str,
        retain: chrono::Duration,
    ) -> Result<RestrictionReceipt, CommandError> {
        let erase_at = self.now().checked_add_signed(retain).ok_or_else(|| {
            CommandError::Invalid(vec![invalid(
                "retain_days",
                "the erasure must be within 30 years",
            )])
        })?;
        self.restrict_subject(ctx, user_id, reason, erase_at).await
    }

    /// The person `user_id`, read through the readers, before the policy is asked
    /// about them.
    async fn subject(&self, user_id: UserId) -> Result<queries::User, CommandError> {
        let mut reader = self.store.db().reader().await?;
        queries::user(&mut reader.conn(), user_id)
            .await?
            .ok_or_else(|| CommandError::NotFound {
                what: "user",
                id: user_id.to_string(),
            })
    }

    /// Discloses what the log holds about a person for a legal claim (GDPR art.
    /// 18(2)), to their organization's admin or a platform administrator: every
    /// personal field of theirs, opened even while they are restricted (their data
    /// stays withheld from every other read). The read is put on record in the access
    /// log, with `reason` and `via`, before anything is returned; a read that cannot
    /// be recorded is refused. An erased person has nothing left to disclose (409).
    pub async fn disclose_subject(
        &self,
        ctx: &CommandContext,
        user_id: UserId,
        reason: &str,
        via: cairn_log::AccessVia,
    ) -> Result<Disclosure, CommandError> {
        let reason = checked_reason(reason)?;
        let db = self.store.db();
        let user = self.subject(user_id).await?;
        let grant = ctx.authorize_found(
            Action::DiscloseSubject(user.org_id),
            user.org_id,
            "user",
            user_id.to_string(),
        )?;
        let state = match db.keyring().state(db, user_id).await? {
            cairn_log::SubjectState::Erased { receipt, .. } => {
                let erased: ErasureReceipt = decode(receipt, "erasure")?;
                return Err(CommandError::InvalidState {
                    message: format!(
                        "user {user_id} was erased at {}: there is nothing left to disclose",
                        erased.erased_at.format("%Y-%m-%d %H:%M:%S UTC")
                    ),
                });
            }
            cairn_log::SubjectState::Restricted { .. } => "restricted",
            cairn_log::SubjectState::Active { .. } | cairn_log::SubjectState::Unknown => "active",
        };
        let keys = db.keyring().disclosure_keys(db, user_id).await?;
        let registry = self.store.dispatcher().registry();
        let mut fields = Vec::new();
        let mut filter = cairn_log::EventFilter {
            org_id: Some(user.org_id),
            ..cairn_log::EventFilter::default()
        };
        loop {
            let mut scoped = db.scoped(grant.tenancy()).await?;
            let page = scoped
                .conn()
                .read_events(&filter)
                .await
                .map_err(|error| match error {
                    cairn_log::ReadError::Database(error) => CommandError::Database(error),
                    // The log cannot be read as written: the server's fault, not a
                    // conflict the caller could resolve.
                    cairn_log::ReadError::Corrupt { position, reason } => {
                        CommandError::Database(cairn_log::DbError::Decode {
                            column: format!("domain_events at position {position}"),
                            reason,
                        })
                    }
                })?;
            drop(scoped);
            let Some(last) = page.last().map(|event| event.position) else {
                break;
            };
            let full = page.len() == cairn_log::EventFilter::DEFAULT_LIMIT as usize;
            fields.extend(cairn_dispatch::disclose(registry, &keys, user_id, page));
            if !full {
                break;
            }
            filter.after = last;
        }
        // The access log is kept for years and never scrubbed: a claim that names the
        // person would outlive their erasure there.
        let folded = reason.to_lowercase();
        if fields.iter().any(|field| {
            field.value.as_str().is_some_and(|value| {
                !value.trim().is_empty() && folded.contains(&value.trim().to_lowercase())
            })
        }) {
            return Err(CommandError::Invalid(vec![invalid(
                "reason",
                "the reason holds the person's own name or address: name the claim by its reference",
            )]));
        }
        let record = cairn_log::AccessRecord::now(
            ctx.principal.who(),
            via,
            ctx.correlation_id,
            format!("user {user_id} disclosed for a legal claim: {reason}"),
            vec![user_id],
        )
        .org(Some(user.org_id));
        let disclosure = Disclosure {
            subject_id: user_id,
            org_id: user.org_id,
            state: state.to_owned(),
            disclosed_at: record.recorded_at,
            disclosed_to: record.who.clone(),
            reason,
            correlation_id: ctx.correlation_id,
            fields,
        };
        db.write_access(vec![record]).await?;
        Ok(disclosure)
    }

    /// Where a person stands. A person of another tenant is not found.
    pub async fn subject_status(
        &self,
        ctx: &CommandContext,
        user_id: UserId,
    ) -> Result<SubjectStatus, CommandError> {
        let user = self.subject(user_id).await?;
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
        fn read<T: serde::de::DeserializeOwned>(receipt: Value) -> Option<T> {
            serde_json::from_value(receipt).ok()
        }
        let (state, restriction, erasure) = match state {
            cairn_log::SubjectState::Erased {
                receipt,
                restriction,
            } => ("erased", restriction.and_then(read), read(receipt)),
            cairn_log::SubjectState::Restricted { receipt } => ("restricted", read(receipt), None),
            cairn_log::SubjectState::Active { .. } | cairn_log::SubjectState::Unknown => {
                ("active", None, None)
            }
        };
        Ok(SubjectStatus {
            subject_id: user_id,
            org_id: user.org_id,
            state: state.to_owned(),
            restriction,
            erasure,
        })
    }

    /// Removes the copies cairn made outside the database of an erased person (the
    /// outbox's `.eml` files of their invitations), then records that it did.
    async fn sweep_subject(
        &self,
        user_id: UserId,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        sweep(self.store.db(), self.mailer.as_ref(), user_id).await
    }

    /// Rebuilds the tables that held the erased or restricted people's data in the
    /// clear, so that nothing of them is left in the database file's unused space
    /// (SQLite; see [`cairn_log::Db::scrub_erased`]). Run after each erasure and
    /// restriction, and at start for one a stop interrupted. A failure is logged: the
    /// next call covers it.
    pub async fn scrub_personal_data(&self) {
        scrub(self.store.db()).await;
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

/// [`Domain::scrub_personal_data`].
async fn scrub(db: &cairn_log::Db) {
    match db.scrub_erased(crate::projections::PERSONAL_TABLES).await {
        Ok(true) => tracing::debug!("rebuilt the tables of people's data after an erasure"),
        Ok(false) => {}
        Err(error) => tracing::error!(
            %error,
            "the tables of people's data were not rebuilt after an erasure: an erased person's \
             data may stay in the database file's unused space until the next erasure or start"
        ),
    }
}

/// Removes the copies cairn made outside the database of an erased person (the
/// outbox's `.eml` files of their invitations), then records that it did.
async fn sweep(
    db: &cairn_log::Db,
    mailer: &dyn Mailer,
    user_id: UserId,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut reader = db.reader().await?;
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
    mailer.forget(&message_ids).await?;
    db.keyring().mark_swept(db, user_id).await?;
    Ok(())
}

/// Erases a restricted person when their retention period ends: sleeps on a durable
/// timer until `erase_at`, erases them in one step (as [`Domain::erase_subject`]
/// does, with the engine as who erases), then removes the copies outside the
/// database. An erasure made in the meantime is found and kept.
pub struct RetentionErasure {
    pub mailer: Arc<dyn Mailer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionInput {
    subject_id: UserId,
    erase_at: DateTime<Utc>,
    reason: String,
}

fn retention_input(input: &Value) -> Result<RetentionInput, String> {
    RetentionInput::deserialize(input)
        .map_err(|e| format!("the erasure's input cannot be read: {e}"))
}

#[async_trait]
impl Workflow for RetentionErasure {
    fn kind(&self) -> &'static str {
        RETENTION_WORKFLOW
    }

    fn decide(&self, input: &Value, history: &History) -> Result<Decision, String> {
        let input = retention_input(input)?;
        if let Some(failed) = history.failure() {
            return Ok(Decision::Fail(failed.failure_reason()));
        }
        if history.fired("retention").is_none() {
            return Ok(Decision::Sleep {
                timer: "retention".to_owned(),
                until: input.erase_at,
            });
        }
        let Some(erased) = history.result("erase") else {
            return Ok(Decision::Run(StepCall::new("erase")));
        };
        if history.result("sweep").is_none() {
            return Ok(Decision::Run(StepCall::new("sweep").external()));
        }
        Ok(Decision::Complete(erased.clone()))
    }

    async fn perform(
        &self,
        input: &Value,
        call: &StepCall,
        ctx: &mut StepContext<'_>,
    ) -> Result<Value, StepError> {
        let input = retention_input(input).map_err(StepError::permanent)?;
        let subject = input.subject_id;
        match call.name.as_str() {
            "erase" => {
                let now = ctx.now();
                let metadata = ctx.metadata();
                let keyring = ctx.store().db().keyring().clone();
                let tx = ctx.tx()?;
                let user = queries::user(&mut tx.conn(), subject)
                    .await?
                    .ok_or_else(|| {
                        StepError::permanent(format!("user {subject} does not exist"))
                    })?;
                let reason = format!(
                    "the retention period ended; restricted because: {}",
                    input.reason
                );
                let (receipt, event) = erase_in(&keyring, tx, &user, &reason, metadata, now)
                    .await
                    .map_err(|error| match error {
                        CommandError::Database(e) => StepError::from(e),
                        other => StepError::permanent(other.to_string()),
                    })?;
                if let Some(event) = event {
                    ctx.append_applied(event).await?;
                }
                serde_json::to_value(&receipt).map_err(|e| StepError::permanent(e.to_string()))
            }
            "sweep" => {
                let db = ctx.store().db();
                db.keyring().forget(subject);
                sweep(db, self.mailer.as_ref(), subject)
                    .await
                    .map_err(|e| StepError::retryable(cairn_types::error_chain(&*e)))?;
                scrub(db).await;
                Ok(json!({ "swept": true }))
            }
            other => Err(StepError::permanent(format!(
                "the retention erasure has no step {other}"
            ))),
        }
    }
}
