//! Commands: the only way to change the domain.
//!
//! Every command runs the same pipeline, written once ([`Domain::execute`]):
//! authorize, validate (both before anything is read), then as one unit of work in the
//! log writer's next batch: take the head lock, answer a repeated idempotency key with
//! the stored response, check the current state and decide ([`Command::decide`]),
//! append the events (each required to be applied) and start the workflows, and store
//! the response under the key. The check and the append it allows are one atomic step;
//! a command refused at any point, or whose handler fails, changes nothing.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use cairn_dispatch::{Appended, EventPayload, EventStore};
use cairn_log::{
    Admission, AppendError, AppendRequest, BoxFuture, DbError, Expected, Tx, WriteOptions, args,
};
use cairn_mail::Mailer;
use cairn_policy::{Action, Denial, Grant, Principal, authorize};
use cairn_types::{
    Actor, CorrelationId, InvitationId, Metadata, OrgId, StreamType, UserId, WorkflowId,
};
use cairn_workflow::{Clock, Engine, EngineConfig, Start, Workflow};

use crate::bootstrap;
use crate::events::{
    BootstrapInitiated, DirectCareSettingsUpdated, InvitationAccepted, InvitationRevoked,
    PlannedAdmin, PlannedInvitee, RoleAssigned, UserActivated, UserAddressCorrected, UserInvited,
    stream,
};
use crate::invitations::{DELIVERY_WORKFLOW, Delivery, Expiry};
use crate::mailing::Mailing;
use crate::model::{DirectCareSettings, Email, Name, Role, Slug, sender_address};
use crate::queries::{self, Invitation, Organization};
use crate::tokens::{KeyError, TokenKey, token_hash};

mod people;
mod subjects;

pub use people::{PersonStanding, RolesRequest};

pub use subjects::{
    Disclosure, ErasureReceipt, RETENTION_WORKFLOW, RestrictionReceipt, RetentionErasure,
    SubjectStatus,
};

/// Who is asking, as part of which request. Every command asks the policy whether
/// the principal may do it, for the tenant it concerns, before it does anything.
#[derive(Debug, Clone)]
pub struct CommandContext {
    pub principal: Principal,
    pub correlation_id: CorrelationId,
    /// Makes the command safe to repeat: a repeat returns the first response.
    pub idempotency_key: Option<String>,
    /// Where a repeat says which request first ran the command.
    pub first_run: FirstRun,
    /// What to do when the log writer's queue is full: wait for room (the command
    /// line), or refuse at once with [`DbError::Overloaded`] (an HTTP request, whose
    /// client is told to try again).
    pub admission: Admission,
}

impl CommandContext {
    /// A context for `principal` with a fresh correlation id.
    pub fn new(principal: Principal) -> Self {
        Self {
            principal,
            correlation_id: CorrelationId::new_v7(),
            idempotency_key: None,
            first_run: FirstRun::default(),
            admission: Admission::Wait,
        }
    }

    /// The actor recorded on the command's events.
    pub fn actor(&self) -> Actor {
        self.principal.actor()
    }

    /// Asks the policy.
    fn authorize(&self, action: Action) -> Result<Grant, CommandError> {
        authorize(&self.principal, &action).map_err(CommandError::Denied)
    }

    /// Asks the policy about a resource found by its id: a user of another tenant is
    /// told it does not exist, so ids cannot be probed across tenants.
    fn authorize_found(
        &self,
        action: Action,
        org_id: OrgId,
        what: &'static str,
        id: String,
    ) -> Result<Grant, CommandError> {
        if let Some(own) = self.principal.org_id()
            && own != org_id
        {
            return Err(CommandError::NotFound { what, id });
        }
        self.authorize(action)
    }

    fn metadata(&self, org_id: OrgId) -> Metadata {
        Metadata::with_correlation(self.correlation_id)
            .actor(self.actor())
            .org(org_id)
    }
}

/// Set when a command is answered from its idempotency key's stored response: the
/// correlation id of the request that first ran it, which its events and its
/// workflow's hops carry. A caller that retried is told that id, so that the
/// retry's answer leads to the request's timeline rather than to an empty one.
#[derive(Debug, Clone, Default)]
pub struct FirstRun(Arc<std::sync::Mutex<Option<CorrelationId>>>);

impl FirstRun {
    /// The first request's correlation id, if the command was a repeat.
    pub fn correlation_id(&self) -> Option<CorrelationId> {
        self.0.lock().ok().and_then(|id| *id)
    }

    fn set(&self, id: Option<CorrelationId>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = id;
        }
    }
}

/// One input field that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct FieldError {
    /// Where in the request: `organization.slug`, `invitees[1].roles[0]`, …
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a command did nothing.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("invalid request: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    #[error("{what} {id} does not exist")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    Conflict(FieldError),
    #[error("{message}")]
    InvalidState { message: String },
    #[error("idempotency key {key:?} was used before for a different request")]
    KeyReused { key: String },
    #[error(transparent)]
    Denied(Denial),
    #[error("could not append the command's events")]
    Append(AppendError),
    /// A handler could not apply one of the command's events: the command was rolled
    /// back, so nothing of it was written.
    #[error("event {event_type} could not be applied ({code}: {message}); nothing was written")]
    NotApplied {
        event_type: String,
        code: String,
        message: String,
    },
    #[error("database error")]
    Database(#[from] DbError),
}

impl From<AppendError> for CommandError {
    fn from(error: AppendError) -> Self {
        match error {
            AppendError::NotApplied {
                event_type,
                code,
                message,
            } => CommandError::NotApplied {
                event_type: event_type.to_string(),
                code: code.to_string(),
                message,
            },
            AppendError::Database(error) => CommandError::Database(error),
            other => CommandError::Append(other),
        }
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// The corrected address an invitation is sent to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressCorrection {
    /// The person's corrected email address.
    #[schemars(email, length(max = 254))]
    pub email: String,
}

/// The request to bootstrap an organization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BootstrapRequest {
    pub organization: OrganizationRequest,
    /// The organization's first administrator.
    pub admin: PersonRequest,
    /// People to invite, with their roles: at most 100, each email once (and not the
    /// admin's).
    #[serde(default)]
    #[schemars(length(max = 100))]
    pub invitees: Vec<InviteeRequest>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrganizationRequest {
    #[schemars(length(min = 1, max = 200), pattern(crate::model::NAME_PATTERN))]
    pub name: String,
    /// Lower-case words joined by hyphens, unique: `sunrise-care`.
    #[schemars(length(min = 3, max = 63), pattern(r"^[a-z0-9]+(-[a-z0-9]+)*$"))]
    pub slug: String,
    /// The host invitations are sent for, e.g. `mail.sunrise.example.co.uk`; mail goes
    /// out from noreply@ its registrable domain (it must have one: `co.uk` alone does not).
    #[schemars(
        length(max = 253),
        pattern(r"^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
    )]
    pub sender_domain: String,
    #[serde(default)]
    pub direct_care_settings: Option<DirectCareSettings>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PersonRequest {
    #[schemars(email, length(max = 254))]
    pub email: String,
    #[schemars(length(min = 1, max = 200), pattern(crate::model::NAME_PATTERN))]
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteeRequest {
    #[schemars(email, length(max = 254))]
    pub email: String,
    #[schemars(length(min = 1, max = 200), pattern(crate::model::NAME_PATTERN))]
    pub name: String,
    /// One or more of admin, clinician, coordinator, viewer, each once.
    #[schemars(with = "Vec<Role>", length(min = 1), extend("uniqueItems" = true))]
    pub roles: Vec<String>,
}

/// A bootstrap was accepted: the workflow is running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BootstrapAccepted {
    pub org_id: OrgId,
    pub workflow_id: WorkflowId,
    pub correlation_id: CorrelationId,
}

/// An invitation was created (or re-sent): its delivery workflow is running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InvitationStarted {
    pub invitation_id: InvitationId,
    pub user_id: UserId,
    pub workflow_id: WorkflowId,
    pub correlation_id: CorrelationId,
}

/// An invitation was accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InvitationAcceptance {
    pub invitation_id: InvitationId,
    pub user_id: UserId,
    pub org_id: OrgId,
}

/// How the domain behaves.
#[derive(Debug, Clone)]
pub struct DomainConfig {
    /// How long an invitation link stays valid.
    pub invitation_ttl: Duration,
    /// The page invitation links point at; the token is added as `?token=`.
    pub accept_url: String,
    /// How long a send keeps being retried while the mail server refuses for now
    /// (a 4xx reply, a refused connection) before its run pauses.
    pub mail_retry_for: std::time::Duration,
}

impl Default for DomainConfig {
    fn default() -> Self {
        Self {
            invitation_ttl: Duration::days(7),
            accept_url: "http://127.0.0.1:8080/v1/invitations/accept".to_owned(),
            mail_retry_for: std::time::Duration::from_secs(24 * 3600),
        }
    }
}

/// The onboarding domain: commands, and the engine that runs its workflows.
#[derive(Clone)]
pub struct Domain {
    store: EventStore,
    engine: Engine,
    config: DomainConfig,
    mailer: Arc<dyn Mailer>,
}

impl std::fmt::Debug for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Domain")
            .field("engine", &self.engine)
            .field("config", &self.config)
            .finish()
    }
}

fn parse_name(field: String, input: &str, errors: &mut Vec<FieldError>) -> Option<Name> {
    Name::parse_input(input)
        .map_err(|message| errors.push(invalid(field, message)))
        .ok()
}

fn parse_email(field: String, input: &str, errors: &mut Vec<FieldError>) -> Option<Email> {
    Email::parse_input(input)
        .map_err(|message| errors.push(invalid(field, message)))
        .ok()
}

fn parse_roles(field: &str, input: &[String], errors: &mut Vec<FieldError>) -> Vec<Role> {
    if input.is_empty() {
        errors.push(invalid(
            field,
            "give at least one role: admin, clinician, coordinator or viewer",
        ));
    }
    let mut roles = Vec::new();
    for (index, text) in input.iter().enumerate() {
        match Role::parse(text) {
            Ok(role) if roles.contains(&role) => errors.push(invalid(
                format!("{field}[{index}]"),
                format!("{role} is listed twice"),
            )),
            Ok(role) => roles.push(role),
            Err(message) => errors.push(invalid(format!("{field}[{index}]"), message)),
        }
    }
    roles
}

fn fingerprint(command: &str, ctx: &CommandContext, request: &Value) -> String {
    let mut canonical = String::new();
    cairn_log::canonical_json(
        &json!([command, ctx.actor().to_string(), request]),
        &mut canonical,
    );
    cairn_log::hex(&Sha256::digest(canonical.as_bytes()))
}

/// How a command answers, from what its reported appends stored.
type Respond<R> = Box<dyn FnOnce(&[Appended]) -> Result<R, CommandError> + Send>;

/// What a command decided, from the current state, under the head lock: the events to
/// append (each required to be applied), the workflows to start, and how to answer.
pub(crate) struct Changes<R> {
    appends: Vec<AppendRequest>,
    /// Appends whose handlers' failures are reported rather than refused (the probe).
    reported: Vec<AppendRequest>,
    starts: Vec<Start>,
    respond: Respond<R>,
}

impl<R: Send + 'static> Changes<R> {
    /// Changes answered with `response`.
    fn answer(response: R) -> Self {
        Self {
            appends: Vec::new(),
            reported: Vec::new(),
            starts: Vec::new(),
            respond: Box::new(move |_| Ok(response)),
        }
    }

    /// Changes whose answer is made from what the reported appends stored.
    fn answer_with(
        respond: impl FnOnce(&[Appended]) -> Result<R, CommandError> + Send + 'static,
    ) -> Self {
        Self {
            appends: Vec::new(),
            reported: Vec::new(),
            starts: Vec::new(),
            respond: Box::new(respond),
        }
    }

    fn append(mut self, request: AppendRequest) -> Self {
        self.appends.push(request);
        self
    }

    fn report(mut self, request: AppendRequest) -> Self {
        self.reported.push(request);
        self
    }

    fn start(mut self, start: Start) -> Self {
        self.starts.push(start);
        self
    }
}

/// One command, as the pipeline runs it. Input is validated before the command is
/// made; `decide` reads the current state (through `tx`, under the head lock) and
/// says what to change, or refuses.
pub(crate) trait Command: Send + Sync + 'static {
    /// Names the command in stored responses.
    const NAME: &'static str;
    type Response: Serialize + serde::de::DeserializeOwned + Send + 'static;

    /// The request as its idempotency key remembers it.
    fn request(&self) -> Value;

    /// Asks the policy about what the command concerns when that must be read first
    /// (an invitation's organization); commands that name their tenant are asked
    /// before they are run. This runs before a repeated idempotency key is answered,
    /// so a stored answer goes only to someone who may run the command now.
    fn authorize<'t>(
        &'t self,
        _ctx: &'t CommandContext,
        _tx: &'t mut Tx,
    ) -> BoxFuture<'t, Result<(), CommandError>> {
        Box::pin(async { Ok(()) })
    }

    /// Checks the current state and decides the changes.
    fn decide<'t>(
        &'t self,
        domain: &'t Domain,
        ctx: &'t CommandContext,
        tx: &'t mut Tx,
    ) -> BoxFuture<'t, Result<Changes<Self::Response>, CommandError>>;
}

impl Domain {
    /// The workflows this domain runs.
    pub fn workflows(
        mailer: Arc<dyn Mailer>,
        tokens: TokenKey,
        config: &DomainConfig,
    ) -> Vec<Arc<dyn Workflow>> {
        let mail_retry = crate::mailing::mail_retry(config.mail_retry_for);
        vec![
            // Runs of version 1 finish on it; new runs start on version 2.
            Arc::new(bootstrap::v1::Bootstrap {
                mailer: mailer.clone(),
                tokens: tokens.clone(),
                mail_retry,
            }),
            Arc::new(bootstrap::v2::Bootstrap {
                mailer: mailer.clone(),
                tokens: tokens.clone(),
                mail_retry,
            }),
            Arc::new(Delivery {
                mailer: mailer.clone(),
                tokens,
                mail_retry,
            }),
            Arc::new(RetentionErasure { mailer }),
            Arc::new(Expiry),
            Arc::new(crate::probe::Echo),
        ]
    }

    /// Opens the domain over an event store whose registry includes the workflow and
    /// domain routes, with an engine for its workflows.
    pub async fn open(
        store: EventStore,
        mailer: Arc<dyn Mailer>,
        clock: Arc<dyn Clock>,
        config: DomainConfig,
        engine_config: EngineConfig,
    ) -> Result<Domain, KeyError> {
        let tokens = TokenKey::load_or_create(store.db()).await?;
        let engine = Engine::new(
            store.clone(),
            Self::workflows(mailer.clone(), tokens, &config),
            clock,
            engine_config,
        );
        Ok(Domain {
            store,
            engine,
            config,
            mailer,
        })
    }

    /// The engine that runs the domain's workflows.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The event store.
    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// Where mail goes.
    pub fn mailer(&self) -> &Arc<dyn Mailer> {
        &self.mailer
    }

    /// The configuration.
    pub fn config(&self) -> &DomainConfig {
        &self.config
    }

    fn now(&self) -> DateTime<Utc> {
        self.engine.now()
    }

    /// Runs a command through the pipeline, as one unit of work of the log writer, and
    /// wakes the engine for the runs it started once it has committed.
    pub(crate) async fn execute<C: Command>(
        &self,
        ctx: &CommandContext,
        command: C,
    ) -> Result<C::Response, CommandError> {
        let domain = self.clone();
        let ctx_for_unit = Arc::new(ctx.clone());
        let command = Arc::new(command);
        let options = WriteOptions {
            admission: ctx.admission,
            ..WriteOptions::default()
        };
        let written = self
            .store
            .db()
            .write(options, move |tx| {
                let domain = domain.clone();
                let ctx = ctx_for_unit.clone();
                let command = command.clone();
                Box::pin(async move { domain.run_command(&ctx, command.as_ref(), tx).await })
            })
            .await;
        if written.is_err() {
            // A failure is this request's own, whatever a repeat found first.
            ctx.first_run.set(None);
        }
        let (response, started) = written?;
        if started {
            self.engine.wake();
        }
        Ok(response)
    }

    /// The pipeline's unit of work. Returns the response and whether runs started.
    async fn run_command<C: Command>(
        &self,
        ctx: &CommandContext,
        command: &C,
        tx: &mut Tx,
    ) -> Result<(C::Response, bool), CommandError> {
        tx.lock_head().await?;
        // A batch that is run again runs this unit again: each run says afresh.
        ctx.first_run.set(None);
        command.authorize(ctx, tx).await?;
        let request = command.request();
        let scoped_key = ctx
            .idempotency_key
            .as_ref()
            .map(|key| format!("{}|{key}", ctx.principal.state_key()));
        if let Some(key) = &ctx.idempotency_key
            && let Some(stored) = stored_response(tx, key, C::NAME, ctx, &request).await?
        {
            ctx.first_run.set(stored.correlation_id);
            return Ok((repeat(stored.response)?, false));
        }
        let changes = command.decide(self, ctx, tx).await?;
        for append in changes.appends {
            self.store.append_applied_in(tx, append).await?;
        }
        let mut reported = Vec::with_capacity(changes.reported.len());
        for append in changes.reported {
            reported.push(self.store.append_in(tx, append).await?);
        }
        let started = !changes.starts.is_empty();
        for start in changes.starts {
            self.engine.start_in(tx, start).await?;
        }
        let response = (changes.respond)(&reported)?;
        if let Some(key) = &scoped_key {
            tx.conn()
                .execute(
                    "INSERT INTO command_results (key, command, fingerprint, response, created_at, correlation_id) VALUES ($1, $2, $3, $4, $5, $6)",
                    args![
                        key.as_str(),
                        C::NAME,
                        fingerprint(C::NAME, ctx, &request),
                        serde_json::to_value(&response).unwrap_or(Value::Null),
                        cairn_types::now_micros(),
                        ctx.correlation_id.to_string(),
                    ],
                )
                .await?;
        }
        Ok((response, started))
    }

    /// Bootstraps an organization: records the request and starts the bootstrap
    /// workflow, atomically. Returns at once; the workflow does the work.
    pub async fn bootstrap(
        &self,
        ctx: &CommandContext,
        request: &BootstrapRequest,
    ) -> Result<BootstrapAccepted, CommandError> {
        ctx.authorize(Action::BootstrapOrganization)?;
        let command = BootstrapCommand::validate(request)?;
        self.execute(ctx, command).await
    }

    /// Changes an organization's direct-care settings.
    pub async fn update_direct_care_settings(
        &self,
        ctx: &CommandContext,
        org_id: OrgId,
        settings: &DirectCareSettings,
    ) -> Result<(), CommandError> {
        ctx.authorize(Action::UpdateDirectCareSettings(org_id))?;
        let errors: Vec<FieldError> = settings
            .problems()
            .into_iter()
            .map(|(field, message)| invalid(field, message))
            .collect();
        if !errors.is_empty() {
            return Err(CommandError::Invalid(errors));
        }
        self.execute(
            ctx,
            UpdateSettings {
                org_id,
                settings: settings.clone(),
            },
        )
        .await
    }

    fn delivery_start(
        &self,
        ctx: &CommandContext,
        workflow_id: WorkflowId,
        mailing: &Mailing,
    ) -> Start {
        Start {
            id: workflow_id,
            kind: DELIVERY_WORKFLOW.to_owned(),
            input: serde_json::to_value(mailing).unwrap_or(Value::Null),
            correlation_id: ctx.correlation_id,
            org_id: Some(mailing.org_id),
            actor: Some(ctx.actor()),
            parent: None,
        }
    }

    /// The integration probe's synthetic command: a `probe.pinged` event on the probe's
    /// reserved tenant and a one-step probe workflow, in one transaction. Unlike every
    /// other command it reports its event's outcome instead of failing on it, so the
    /// probe can name the hop that broke.
    pub async fn ping(&self, ctx: &CommandContext) -> Result<crate::probe::Ping, CommandError> {
        ctx.authorize(Action::RunProbe)?;
        self.execute(ctx, Ping).await
    }

    /// Invites someone to an organization: records the invitation and starts the
    /// workflow that mails it.
    pub async fn invite(
        &self,
        ctx: &CommandContext,
        org_id: OrgId,
        request: &InviteeRequest,
    ) -> Result<InvitationStarted, CommandError> {
        ctx.authorize(Action::Invite(org_id))?;
        let mut errors = Vec::new();
        let email = parse_email("email".into(), &request.email, &mut errors);
        let name = parse_name("name".into(), &request.name, &mut errors);
        let roles = parse_roles("roles", &request.roles, &mut errors);
        let (Some(email), Some(name), true) = (email, name, errors.is_empty()) else {
            return Err(CommandError::Invalid(errors));
        };
        self.execute(
            ctx,
            Invite {
                org_id,
                request: request.clone(),
                email,
                name,
                roles,
            },
        )
        .await
    }

    /// Sends a pending or expired invitation again, with a new token and expiry.
    pub async fn resend_invitation(
        &self,
        ctx: &CommandContext,
        invitation_id: InvitationId,
    ) -> Result<InvitationStarted, CommandError> {
        self.execute(ctx, Resend { invitation_id }).await
    }

    /// Sends a pending, expired or refused invitation again, to a corrected address:
    /// records the person's new address and starts the delivery to it.
    pub async fn correct_invitation_address(
        &self,
        ctx: &CommandContext,
        invitation_id: InvitationId,
        request: &AddressCorrection,
    ) -> Result<InvitationStarted, CommandError> {
        let mut errors = Vec::new();
        let email = parse_email("email".into(), &request.email, &mut errors);
        let (Some(email), true) = (email, errors.is_empty()) else {
            return Err(CommandError::Invalid(errors));
        };
        self.execute(
            ctx,
            Readdress {
                invitation_id,
                request: serde_json::to_value(request).unwrap_or(Value::Null),
                email,
            },
        )
        .await
    }

    /// Withdraws a pending or refused invitation.
    pub async fn revoke_invitation(
        &self,
        ctx: &CommandContext,
        invitation_id: InvitationId,
        reason: &str,
    ) -> Result<(), CommandError> {
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
        self.execute(
            ctx,
            Revoke {
                invitation_id,
                reason: reason.to_owned(),
            },
        )
        .await
    }

    /// Accepts an invitation by the token from its email. Works once: the invitation is
    /// then accepted, and a revoked, expired or replaced (resent) token is refused.
    pub async fn accept_invitation(
        &self,
        ctx: &CommandContext,
        token: &str,
    ) -> Result<InvitationAcceptance, CommandError> {
        ctx.authorize(Action::AcceptInvitation)?;
        let token = token.trim();
        if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CommandError::Invalid(vec![invalid(
                "token",
                "an invitation token is 64 hexadecimal characters",
            )]));
        }
        self.execute(
            ctx,
            Accept {
                token_hash: token_hash(token),
            },
        )
        .await
    }
}

/// What an idempotency key remembers of the command it was first used for.
struct Stored {
    response: Value,
    /// The first request's; absent on results stored before it was kept.
    correlation_id: Option<CorrelationId>,
}

/// The response stored under an idempotency key, if the principal used the key before:
/// an error if it was used for another command or another request.
///
/// Answers are stored under the principal's [`Principal::state_key`] and the key.
/// Releases before it stored them under the actor alone (`user:ID|KEY`); such an
/// answer is still found, so a retry that spans an upgrade is not run twice. That is
/// safe because the policy has been asked about this very command before (see
/// [`Command::authorize`]), and the fingerprint below covers the request.
async fn stored_response(
    tx: &mut Tx,
    key: &str,
    command: &str,
    ctx: &CommandContext,
    request: &Value,
) -> Result<Option<Stored>, CommandError> {
    let scoped_key = format!("{}|{key}", ctx.principal.state_key());
    let legacy_key = format!("{}|{key}", ctx.actor());
    let mut row = None;
    for candidate in [scoped_key, legacy_key] {
        row = tx
            .conn()
            .fetch_optional(
                "SELECT command, fingerprint, response, correlation_id FROM command_results WHERE key = $1",
                args![candidate.as_str()],
            )
            .await?;
        if row.is_some() {
            break;
        }
    }
    let Some(row) = row else {
        return Ok(None);
    };
    let stored_command: String = row.get("command")?;
    let stored_fingerprint: String = row.get("fingerprint")?;
    if stored_command != command || stored_fingerprint != fingerprint(command, ctx, request) {
        return Err(CommandError::KeyReused {
            key: ctx.idempotency_key.clone().unwrap_or_default(),
        });
    }
    let correlation_id: Option<String> = row.get("correlation_id")?;
    Ok(Some(Stored {
        response: row.get_json("response")?,
        correlation_id: correlation_id.and_then(|id| CorrelationId::parse(&id).ok()),
    }))
}

fn repeat<R: serde::de::DeserializeOwned>(stored: Value) -> Result<R, CommandError> {
    serde_json::from_value(stored).map_err(|e| CommandError::InvalidState {
        message: format!("the stored response of this idempotency key cannot be read: {e}"),
    })
}

/// The organization, if it exists and is active.
async fn live_organization(tx: &mut Tx, org_id: OrgId) -> Result<Organization, CommandError> {
    let organization = queries::organization(&mut tx.conn(), org_id)
        .await?
        .ok_or_else(|| CommandError::NotFound {
            what: "organization",
            id: org_id.to_string(),
        })?;
    if !organization.is_active || organization.status == "failed" {
        return Err(CommandError::InvalidState {
            message: format!("organization {org_id} is deactivated"),
        });
    }
    Ok(organization)
}

/// Asks the policy about `action` on an invitation, read for its organization: to a
/// user of another tenant it does not exist.
async fn authorize_invitation(
    ctx: &CommandContext,
    tx: &mut Tx,
    invitation_id: InvitationId,
    action: fn(OrgId) -> Action,
) -> Result<(), CommandError> {
    let invitation = existing_invitation(tx, invitation_id).await?;
    ctx.authorize_found(
        action(invitation.org_id),
        invitation.org_id,
        "invitation",
        invitation_id.to_string(),
    )?;
    Ok(())
}

pub(crate) async fn existing_invitation(
    tx: &mut Tx,
    invitation_id: InvitationId,
) -> Result<Invitation, CommandError> {
    queries::invitation(&mut tx.conn(), invitation_id)
        .await?
        .ok_or_else(|| CommandError::NotFound {
            what: "invitation",
            id: invitation_id.to_string(),
        })
}

pub(crate) fn stream_type(name: &str) -> StreamType {
    StreamType::parse(name).expect("the domain's stream types are valid names")
}

/// A validated bootstrap: every field parsed, ids drawn.
struct BootstrapCommand {
    request: BootstrapRequest,
    initiated: BootstrapInitiated,
}

impl BootstrapCommand {
    fn validate(request: &BootstrapRequest) -> Result<Self, CommandError> {
        let mut errors = Vec::new();
        // Ids are time-ordered: the admin's come first, so lists show them first.
        let admin_user_id = UserId::new_v7();
        let admin_invitation_id = InvitationId::new_v7();
        let org = &request.organization;
        let name = parse_name("organization.name".into(), &org.name, &mut errors);
        let slug = Slug::parse(&org.slug)
            .map_err(|m| errors.push(invalid("organization.slug", m)))
            .ok();
        let sender_domain = org
            .sender_domain
            .trim()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let sender_address = sender_address(&sender_domain)
            .map_err(|message| errors.push(invalid("organization.sender_domain", message)))
            .ok();
        let settings = org.direct_care_settings.clone().unwrap_or_default();
        for (field, message) in settings.problems() {
            errors.push(invalid(
                format!("organization.direct_care_settings.{field}"),
                message,
            ));
        }
        let admin_email = parse_email("admin.email".into(), &request.admin.email, &mut errors);
        let admin_name = parse_name("admin.name".into(), &request.admin.name, &mut errors);
        if request.invitees.len() > 100 {
            errors.push(invalid(
                "invitees",
                "at most 100 people can be invited at once",
            ));
        }
        let mut seen: BTreeSet<String> = admin_email.iter().map(|e| e.to_string()).collect();
        let mut invitees = Vec::new();
        for (index, invitee) in request.invitees.iter().enumerate() {
            let email = parse_email(
                format!("invitees[{index}].email"),
                &invitee.email,
                &mut errors,
            );
            let name = parse_name(
                format!("invitees[{index}].name"),
                &invitee.name,
                &mut errors,
            );
            let roles = parse_roles(
                &format!("invitees[{index}].roles"),
                &invitee.roles,
                &mut errors,
            );
            if let Some(email) = &email
                && !seen.insert(email.to_string())
            {
                errors.push(invalid(
                    format!("invitees[{index}].email"),
                    format!("{email} is listed twice (or is the admin)"),
                ));
            }
            if let (Some(email), Some(name)) = (email, name) {
                invitees.push(PlannedInvitee {
                    user_id: UserId::new_v7(),
                    invitation_id: InvitationId::new_v7(),
                    email: email.into(),
                    name: name.into(),
                    roles,
                });
            }
        }
        let (
            Some(name),
            Some(slug),
            Some(sender_address),
            Some(admin_email),
            Some(admin_name),
            true,
        ) = (
            name,
            slug,
            sender_address,
            admin_email,
            admin_name,
            errors.is_empty(),
        )
        else {
            return Err(CommandError::Invalid(errors));
        };
        Ok(BootstrapCommand {
            request: request.clone(),
            initiated: BootstrapInitiated {
                name,
                slug,
                sender_domain,
                sender_address,
                direct_care_settings: settings,
                admin: PlannedAdmin {
                    user_id: admin_user_id,
                    invitation_id: admin_invitation_id,
                    email: admin_email.into(),
                    name: admin_name.into(),
                },
                invitees,
                workflow_id: WorkflowId::new_v7(),
            },
        })
    }
}

impl Command for BootstrapCommand {
    const NAME: &'static str = "bootstrap";
    type Response = BootstrapAccepted;

    fn request(&self) -> Value {
        serde_json::to_value(&self.request).unwrap_or(Value::Null)
    }

    fn decide<'t>(
        &'t self,
        domain: &'t Domain,
        ctx: &'t CommandContext,
        tx: &'t mut Tx,
    ) -> BoxFuture<'t, Result<Changes<Self::Response>, CommandError>> {
        Box::pin(async move {
            let slug = self.initiated.slug.as_str();
            if let Some(holder) = queries::organization_by_slug(&mut tx.conn(), slug).await? {
                let message = if holder.status == "failed" {
                    format!(
                        "{slug:?} is still held by organization {}, whose failed bootstrap is being undone: it is free once that organization is deactivated",
                        holder.id
                    )
                } else {
                    format!("{slug:?} is taken by another organization")
                };
                return Err(CommandError::Conflict(invalid(
                    "organization.slug",
                    message,
                )));
            }
            // Drawn here, not at validation: a unit of work that runs again (its batch
            // was retried) uses the same ids, and a repeat with an idempotency key
            // never gets this far.
            let org_id = OrgId::new_v7();
            let initiated = self.initiated.clone();
            let workflow_id = initiated.workflow_id;
            // Ids only: the people are in the initiated event, which the run reads.
            let plan = bootstrap::v2::BootstrapPlan::new(
                org_id,
                &initiated,
                domain.config.invitation_ttl.num_seconds(),
                domain.config.accept_url.clone(),
            );
            let append = AppendRequest::new(
                stream_type(stream::ORGANIZATION),
                org_id.into(),
                vec![initiated.to_event(ctx.metadata(org_id))],
            )
            .expect(Expected::NoStream);
            Ok(Changes::answer(BootstrapAccepted {
                org_id,
                workflow_id,
                correlation_id: ctx.correlation_id,
            })
            .append(append)
            .start(Start {
                id: workflow_id,
                kind: bootstrap::KIND.to_owned(),
                input: serde_json::to_value(&plan).unwrap_or(Value::Null),
                correlation_id: ctx.correlation_id,
                org_id: Some(org_id),
                actor: Some(ctx.actor()),
                parent: None,
            }))
        })
    }
}

struct UpdateSettings {
    org_id: OrgId,
    settings: DirectCareSettings,
}

impl Command for UpdateSettings {
    const NAME: &'static str = "update_direct_care_settings";
    type Response = ();

    fn request(&self) -> Value {
        json!({ "org_id": self.org_id, "settings": self.settings })
    }

    fn decide<'t>(
        &'t self,
        _domain: &'t Domain,
        ctx: &'t CommandContext,
        tx: &'t mut Tx,
    ) -> BoxFuture<'t, Result<Changes<()>, CommandError>> {
        Box::pin(async move {
            live_organization(tx, self.org_id).await?;
            let updated = DirectCareSettingsUpdated {
                settings: self.settings.clone(),
            };
            Ok(Changes::answer(()).append(AppendRequest::new(
                stream_type(stream::ORGANIZATION),
                self.org_id.into(),
                vec![updated.to_event(ctx.metadata(self.org_id))],
            )))
        })
    }
}

struct Ping;

impl Command for Ping {
    const NAME: &'static str = "ping";
    type Response = crate::probe::Ping;

    fn request(&self) -> Value {
        Value::Null
    }

    fn decide<'t>(
        &'t self,
        domain: &'t Domain,
        ctx: &'t CommandContext,
        _tx: &'t mut Tx,
    ) -> BoxFuture<'t, Result<Changes<Self::Response>, CommandError>> {
        Box::pin(async move {
            let ping_id = cairn_types::StreamId::new_v7();
            let workflow_id = WorkflowId::new_v7();
            let pinged = crate::probe::ProbePinged {
                sent_at: domain.now(),
            };
            let correlation_id = ctx.correlation_id;
            Ok(Changes::answer_with(move |appended| {
                let dispatched = appended
                    .first()
                    .and_then(|appended| appended.events.first())
                    .ok_or_else(|| CommandError::InvalidState {
                        message: "the probe's append stored no event".to_owned(),
                    })?;
                Ok(crate::probe::Ping {
                    ping_id,
                    position: dispatched.event.position,
                    workflow_id,
                    correlation_id,
                    outcome: dispatched.outcome.clone(),
                })
            })
            .report(
                AppendRequest::new(
                    stream_type(crate::probe::STREAM_TYPE),
                    ping_id,
                    vec![pinged.to_event(ctx.metadata(OrgId::PROBE))],
                )
                .expect(Expected::NoStream),
            )
            .start(Start {
                id: workflow_id,
                kind: crate::probe::WORKFLOW.to_owned(),
                input: json!({ "ping_id": ping_id }),
                correlation_id,
                org_id: Some(OrgId::PROBE),
                actor: Some(ctx.actor()),
                parent: None,
            }))
        })
    }
}

struct Invite {
    org_id: OrgId,
    request: InviteeRequest,
    email: Email,
    name: Name,
    roles: Vec<Role>,
}

impl Command for Invite {
    const NAME: &'static str = "invite";
    type Response = InvitationStarted;

    fn request(&self) -> Value {
        json!({ "org_id": self.org_id, "invitee": self.request })
    }

    fn decide<'t>(
        &'t self,
        domain: &'t Domain,
        ctx: &'t CommandContext,
        tx: &'t mut Tx,
    ) -> BoxFuture<'t, Result<Changes<Self::Response>, CommandError>> {
        Box::pin(async move {
            let org_id = self.org_id;
            let organization = live_organization(tx, org_id).await?;
            // Someone invited before whose invitation never went out (its delivery
            // failed) or was revoked is invited again, as the same user.
            let (user_id, expected) =
                match queries::user_by_email(&mut tx.conn(), org_id, self.email.as_str()).await? {
                    None => (UserId::new_v7(), Expected::NoStream),
                    Some(existing) if existing.status == "invited" => {
                        invitable_again(tx, &organization, &existing, &self.email).await?;
                        (existing.id, Expected::Any)
                    }
                    Some(_) => {
                        return Err(CommandError::Conflict(invalid(
                            "email",
                            format!("{} is already a member", self.email),
                        )));
                    }
                };
            let invitation_id = InvitationId::new_v7();
            let workflow_id = WorkflowId::new_v7();
            let invited = UserInvited {
                org_id,
                email: self.email.clone().into(),
                name: self.name.clone().into(),
                roles: self.roles.clone(),
                invitation_id,
                invited_by: Some(ctx.actor()),
            };
            let mailing = Mailing {
                invitation_id,
                user_id,
                org_id,
                org_name: Name::parse(&organization.name)
                    .map_err(|message| CommandError::InvalidState { message })?,
                sender_address: Email::parse(&organization.sender_address)
                    .map_err(|message| CommandError::InvalidState { message })?,
                email: None,
                name: None,
                roles: self.roles.clone(),
                send_number: 1,
                ttl_seconds: domain.config.invitation_ttl.num_seconds(),
                accept_url: domain.config.accept_url.clone(),
            };
            Ok(Changes::answer(InvitationStarted {
                invitation_id,
                user_id,
                workflow_id,
                correlation_id: ctx.correlation_id,
            })
            .append(
                AppendRequest::new(
                    stream_type(stream::USER),
                    user_id.into(),
                    vec![invited.to_event(ctx.metadata(org_id))],
                )
                .expect(expected),
            )
            .start(domain.delivery_start(ctx, workflow_id, &mailing)))
        })
    }
}

/// Whether someone already invited may be invited again: only when no invitation of
/// theirs is open (pending or expired: those are resent instead) and none is on its
/// way, in the organization's bootstrap or in a delivery. This is the way out for an
/// invitee whose invitation email could never be sent, and for one whose invitation
/// was revoked.
async fn invitable_again(
    tx: &mut Tx,
    organization: &Organization,
    user: &queries::User,
    email: &Email,
) -> Result<(), CommandError> {
    let conflict = |why: String| CommandError::Conflict(invalid("email", format!("{email} {why}")));
    if organization.status != "active" {
        return Err(conflict(
            "has already been invited: the organization's bootstrap is still sending its invitations"
                .to_owned(),
        ));
    }
    let invitations = queries::invitations_of_user(&mut tx.conn(), user.id).await?;
    if let Some(refused) = invitations
        .iter()
        .find(|invitation| invitation.status == "refused")
    {
        return Err(conflict(format!(
            "was refused by the mail server ({}): send invitation {} to a corrected address, or withdraw it",
            refused.delivery_reply.as_deref().unwrap_or("no reply kept"),
            refused.id
        )));
    }
    if let Some(open) = invitations
        .iter()
        .find(|invitation| invitation.status == "pending" || invitation.status == "expired")
    {
        return Err(conflict(format!(
            "has already been invited: invitation {} is {}; resend it to send the email again",
            open.id, open.status
        )));
    }
    if let Some(running) = queries::delivery_in_progress_for_user(&mut tx.conn(), user.id).await? {
        return Err(conflict(format!(
            "has already been invited: the invitation email is being sent (workflow {running})"
        )));
    }
    Ok(())
}

struct Resend {
    invitation_id: InvitationId,
}

impl Command for Resend {
    const NAME: &'static str = "resend_invitation";
    type Response = InvitationStarted;

    fn request(&self) -> Value {
        json!({ "invitation_id": self.invitation_id })
    }

    fn authorize<'t>(
        &'t self,
        ctx: &'t CommandContext,
        tx: &'t mut Tx,
    ) -> BoxFuture<'t, Result<(), CommandError>> {
        Box::pin(authorize_invitation(
            ctx,
            tx,
            self.invitation_id,
            Action::ResendInvitation,
        ))
    }

    fn decide<'t>(
        &'t self,
        domain: &'t Domain,
        ctx: &'t CommandContext,
        tx: &'t mut Tx,
    ) -> BoxFuture<'t, Result<Changes<Self::Response>, CommandError>> {
        Box::pin(send_again(domain, ctx, tx, self.invitation_id, None))
    }
}

/// Sends an invitation again, to a corrected address when one is given: the checks and
/// the delivery that a resend and a correction share.
async fn send_again(
    domain: &Domain,
    ctx: &CommandContext,
    tx: &mut Tx,
    invitation_id: InvitationId,
    corrected: Option<&Email>,
) -> Result<Changes<InvitationStarted>, CommandError> {
    let invitation = existing_invitation(tx, invitation_id).await?;
    match (invitation.status.as_str(), corrected) {
        ("pending" | "expired", _) | ("refused", Some(_)) => {}
        ("refused", None) => {
            return Err(CommandError::InvalidState {
                message: format!(
                    "invitation {invitation_id} was refused by the mail server ({}): send it to a corrected address instead",
                    invitation
                        .delivery_reply
                        .as_deref()
                        .unwrap_or("no reply kept")
                ),
            });
        }
        (status, _) => {
            return Err(CommandError::InvalidState {
                message: format!(
                    "invitation {invitation_id} is {status}: only a pending, expired or refused invitation can be sent again"
                ),
            });
        }
    }
    if let Some(running) = queries::delivery_in_progress(&mut tx.conn(), invitation_id).await? {
        return Err(CommandError::InvalidState {
            message: format!(
                "invitation {invitation_id} is being sent already (workflow {running}); wait for that email before sending another"
            ),
        });
    }
    let organization = live_organization(tx, invitation.org_id).await?;
    let user = queries::user(&mut tx.conn(), invitation.user_id).await?;
    if user.as_ref().is_some_and(|user| user.erased_at.is_some()) {
        return Err(CommandError::InvalidState {
            message: format!(
                "user {} was erased: no invitation goes to them again",
                invitation.user_id
            ),
        });
    }
    if user
        .as_ref()
        .is_some_and(|user| user.restricted_at.is_some())
    {
        return Err(CommandError::InvalidState {
            message: format!(
                "user {} is restricted until their erasure: no invitation goes to them",
                invitation.user_id
            ),
        });
    }
    let mut correction = None;
    if let Some(email) = corrected {
        if let Some(other) =
            queries::user_by_email(&mut tx.conn(), invitation.org_id, email.as_str()).await?
            && other.id != invitation.user_id
        {
            return Err(CommandError::Conflict(invalid(
                "email",
                format!("{email} is already someone else's address in this organization"),
            )));
        }
        let corrected = UserAddressCorrected {
            org_id: invitation.org_id,
            email: email.clone().into(),
            corrected_by: ctx.actor(),
        };
        correction = Some(AppendRequest::new(
            stream_type(stream::USER),
            invitation.user_id.into(),
            vec![corrected.to_event(ctx.metadata(invitation.org_id))],
        ));
    }
    let mailing = Mailing {
        invitation_id,
        user_id: invitation.user_id,
        org_id: invitation.org_id,
        org_name: Name::parse(&organization.name)
            .map_err(|message| CommandError::InvalidState { message })?,
        sender_address: Email::parse(&organization.sender_address)
            .map_err(|message| CommandError::InvalidState { message })?,
        // The send reads the address and name from the person's row.
        email: None,
        name: None,
        roles: invitation.roles.clone(),
        send_number: u32::try_from(invitation.send_count + 1).unwrap_or(u32::MAX),
        ttl_seconds: domain.config.invitation_ttl.num_seconds(),
        accept_url: domain.config.accept_url.clone(),
    };
    let workflow_id = WorkflowId::new_v7();
    let changes = Changes::answer(InvitationStarted {
        invitation_id,
        user_id: invitation.user_id,
        workflow_id,
        correlation_id: ctx.correlation_id,
    })
    .start(domain.delivery_start(ctx, workflow_id, &mailing));
    Ok(match correction {
        Some(correction) => changes.append(correction),
        None => changes,
    })
}

struct Readdress {
    invitation_id: InvitationId,
    request: Value,
    email: Email,
}

impl Command for Readdress {
    const NAME: &'static str = "correct_invitation_address";
    type Response = InvitationStarted;

    fn request(&self) -> Value {
        json!({ "invitation_id": self.invitation_id, "request": self.request })
    }

    fn authorize<'t>(
        &'t self,
        ctx: &'t CommandContext,
        tx: &'t mut Tx,
    ) -> BoxFuture<'t, Result<(), CommandError>> {
        Box::pin(authorize_invitation(
            ctx,
            tx,
            self.invitation_id,
            Action::ResendInvitation,
        ))
    }

    fn decide<'t>(
        &'t self,
        domain: &'t Domain,
        ctx: &'t CommandContext,
        tx: &'t mut Tx,
    ) -> BoxFuture<'t, Result<Changes<Self::Response>, CommandError>> {
        Box::pin(send_again(
            domain,
            ctx,
            tx,
            self.invitation_id,
            Some(&self.email),
        ))
    }
}

struct Revoke {
    invitation_id: InvitationId,
    reason: String,
}

impl Command for Revoke {
    const NAME: &'static str = "revoke_invitation";
    type Response = ();

    fn request(&self) -> Value {
        json!({ "invitation_id": self.invitation_id, "reason": self.reason })
    }

    fn authorize<'t>(
        &'t self,
        ctx: &'t CommandContext,
        tx: &'t mut Tx,
    ) -> BoxFuture<'t, Result<(), CommandError>> {
        Box::pin(authorize_invitation(
            ctx,
            tx,
            self.invitation_id,
            Action::RevokeInvitation,
        ))
    }

    fn decide<'t>(
        &'t self,
        _domain: &'t Domain,
        ctx: &'t CommandContext,
        tx: &'t mut Tx,
    ) -> BoxFuture<'t, Result<Changes<()>, CommandError>> {
        Box::pin(async move {
            let invitation_id = self.invitation_id;
            let invitation = existing_invitation(tx, invitation_id).await?;
            if invitation.status != "pending" && invitation.status != "refused" {
                return Err(CommandError::InvalidState {
                    message: format!(
                        "invitation {invitation_id} is {}: only a pending or refused invitation can be revoked",
                        invitation.status
                    ),
                });
            }
            let revoked = InvitationRevoked {
                reason: self.reason.clone(),
            };
            Ok(Changes::answer(()).append(AppendRequest::new(
                stream_type(stream::INVITATION),
                invitation_id.into(),
                vec![revoked.to_event(ctx.metadata(invitation.org_id))],
            )))
        })
    }
}

struct Accept {
    token_hash: String,
}

impl Command for Accept {
    const NAME: &'static str = "accept_invitation";
    type Response = InvitationAcceptance;

    fn request(&self) -> Value {
        json!({ "token_hash": self.token_hash })
    }

    fn decide<'t>(
        &'t self,
        domain: &'t Domain,
        ctx: &'t CommandContext,
        tx: &'t mut Tx,
    ) -> BoxFuture<'t, Result<Changes<Self::Response>, CommandError>> {
        Box::pin(async move {
            let invitation = queries::invitation_by_token_hash(&mut tx.conn(), &self.token_hash)
                .await?
                .ok_or_else(|| CommandError::NotFound {
                    what: "invitation for this token",
                    id: "(the link may have been replaced by a newer email)".to_owned(),
                })?;
            let refuse = |message: &str| {
                Err(CommandError::InvalidState {
                    message: message.to_owned(),
                })
            };
            match invitation.status.as_str() {
                "accepted" => {
                    return refuse("this invitation was already accepted: its link works once");
                }
                "revoked" => return refuse("this invitation was revoked"),
                "expired" => {
                    return refuse("this invitation has expired; ask for it to be sent again");
                }
                _ => {}
            }
            if invitation.expires_at <= domain.now() {
                return refuse("this invitation has expired; ask for it to be sent again");
            }
            let mut metadata = ctx.metadata(invitation.org_id);
            metadata.actor = Some(Actor::User(invitation.user_id));
            let accepted = InvitationAccepted {
                user_id: invitation.user_id,
            };
            let mut user_events = vec![
                UserActivated {
                    org_id: invitation.org_id,
                    invitation_id: invitation.id,
                }
                .to_event(metadata.clone()),
            ];
            for role in &invitation.roles {
                user_events.push(
                    RoleAssigned {
                        org_id: invitation.org_id,
                        role: *role,
                    }
                    .to_event(metadata.clone()),
                );
            }
            Ok(Changes::answer(InvitationAcceptance {
                invitation_id: invitation.id,
                user_id: invitation.user_id,
                org_id: invitation.org_id,
            })
            .append(AppendRequest::new(
                stream_type(stream::INVITATION),
                invitation.id.into(),
                vec![accepted.to_event(metadata.clone())],
            ))
            .append(AppendRequest::new(
                stream_type(stream::USER),
                invitation.user_id.into(),
                user_events,
            )))
        })
    }
}
