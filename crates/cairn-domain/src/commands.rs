//! Commands: the only way to change the domain. Each validates its input, checks the
//! current state under the log's head lock (so a check and the append it allows are
//! one atomic step), and only ever appends events and starts workflows, in one
//! transaction.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use cairn_dispatch::{EventPayload, EventStore};
use cairn_log::{AppendError, AppendRequest, Expected, Tx, args};
use cairn_mail::{Mailer, registrable_domain};
use cairn_policy::{Action, Denial, Grant, Principal, authorize};
use cairn_types::{
    Actor, CorrelationId, InvitationId, Metadata, OrgId, StreamType, UserId, WorkflowId,
};
use cairn_workflow::{Clock, Engine, EngineConfig, Start, Workflow};

use crate::bootstrap::{self, Bootstrap, BootstrapPlan};
use crate::events::{
    BootstrapInitiated, DirectCareSettingsUpdated, InvitationAccepted, InvitationRevoked,
    PlannedAdmin, PlannedInvitee, RoleAssigned, UserActivated, UserInvited, stream,
};
use crate::invitations::{DELIVERY_WORKFLOW, Delivery, Expiry};
use crate::mailing::Mailing;
use crate::model::{DirectCareSettings, Email, Name, Role, Slug};
use crate::queries::{self, Invitation, Organization};
use crate::tokens::{KeyError, TokenKey, token_hash};

/// Who is asking, as part of which request. Every command asks the policy whether
/// the principal may do it, for the tenant it concerns, before it does anything.
#[derive(Debug, Clone)]
pub struct CommandContext {
    pub principal: Principal,
    pub correlation_id: CorrelationId,
    /// Makes the command safe to repeat: a repeat returns the first response.
    pub idempotency_key: Option<String>,
}

impl CommandContext {
    /// A context for `principal` with a fresh correlation id.
    pub fn new(principal: Principal) -> Self {
        Self {
            principal,
            correlation_id: CorrelationId::new_v7(),
            idempotency_key: None,
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
    Append(#[from] AppendError),
    /// A handler could not apply one of the command's events: the command was rolled
    /// back, so nothing of it was written.
    #[error("event {event_type} could not be applied ({code}: {message}); nothing was written")]
    NotApplied {
        event_type: String,
        code: String,
        message: String,
    },
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
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
    #[schemars(
        length(min = 1, max = 200),
        pattern(r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$")
    )]
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
    #[schemars(
        length(min = 1, max = 200),
        pattern(r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$")
    )]
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteeRequest {
    #[schemars(email, length(max = 254))]
    pub email: String,
    #[schemars(
        length(min = 1, max = 200),
        pattern(r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$")
    )]
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
}

impl Default for DomainConfig {
    fn default() -> Self {
        Self {
            invitation_ttl: Duration::days(7),
            accept_url: "http://127.0.0.1:8080/v1/invitations/accept".to_owned(),
        }
    }
}

/// The onboarding domain: commands, and the engine that runs its workflows.
#[derive(Clone)]
pub struct Domain {
    store: EventStore,
    engine: Engine,
    config: DomainConfig,
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
    Name::parse(input)
        .map_err(|message| errors.push(invalid(field, message)))
        .ok()
}

fn parse_email(field: String, input: &str, errors: &mut Vec<FieldError>) -> Option<Email> {
    Email::parse(input)
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
    cairn_log::hash::canonical_json(
        &json!([command, ctx.actor().to_string(), request]),
        &mut canonical,
    );
    cairn_log::hash::hex(&Sha256::digest(canonical.as_bytes()))
}

impl Domain {
    /// The workflows this domain runs.
    pub fn workflows(mailer: Arc<dyn Mailer>, tokens: TokenKey) -> Vec<Arc<dyn Workflow>> {
        vec![
            Arc::new(Bootstrap {
                mailer: mailer.clone(),
                tokens: tokens.clone(),
            }),
            Arc::new(Delivery { mailer, tokens }),
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
            Self::workflows(mailer, tokens),
            clock,
            engine_config,
        );
        Ok(Domain {
            store,
            engine,
            config,
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

    /// The configuration.
    pub fn config(&self) -> &DomainConfig {
        &self.config
    }

    fn now(&self) -> DateTime<Utc> {
        self.engine.now()
    }

    /// Begins a command's transaction, takes the head lock, and answers a repeated
    /// idempotency key with the stored response.
    /// Appends a command's events in its transaction and fails the command, rolling
    /// it all back, when a handler could not apply one of them: a command never
    /// answers success over a projection that did not take its events.
    async fn append_applied(
        &self,
        tx: &mut Tx,
        request: AppendRequest,
    ) -> Result<cairn_dispatch::Appended, CommandError> {
        let appended = self.store.append_in(tx, request).await?;
        if let Some(failed) = appended
            .events
            .iter()
            .find(|dispatched| dispatched.outcome.error().is_some())
        {
            let error = failed.outcome.error().cloned();
            let (code, message) = error.map_or_else(
                || (String::new(), String::new()),
                |e| (e.code.to_string(), e.message),
            );
            tracing::error!(
                event_type = %failed.event.event_type,
                code = %code,
                message = %message,
                correlation_id = %failed.event.metadata.correlation_id,
                "a command's event could not be applied; the command is rolled back"
            );
            return Err(CommandError::NotApplied {
                event_type: failed.event.event_type.to_string(),
                code,
                message,
            });
        }
        Ok(appended)
    }

    async fn begin(
        &self,
        command: &str,
        ctx: &CommandContext,
        request: &Value,
    ) -> Result<(Tx, Option<Value>), CommandError> {
        let mut tx = self.store.db().begin().await?;
        tx.lock_head().await?;
        if let Some(key) = &ctx.idempotency_key {
            let scoped = format!("{}|{key}", ctx.actor());
            let row = tx
                .conn()
                .fetch_optional(
                    "SELECT command, fingerprint, response FROM command_results WHERE key = $1",
                    args![scoped],
                )
                .await?;
            if let Some(row) = row {
                let stored_command: String = row.get("command")?;
                let stored_fingerprint: String = row.get("fingerprint")?;
                if stored_command != command
                    || stored_fingerprint != fingerprint(command, ctx, request)
                {
                    return Err(CommandError::KeyReused { key: key.clone() });
                }
                return Ok((tx, Some(row.get_json("response")?)));
            }
        }
        Ok((tx, None))
    }

    /// Commits a command's transaction, storing its response under the idempotency key.
    async fn finish<R: Serialize>(
        &self,
        mut tx: Tx,
        command: &str,
        ctx: &CommandContext,
        request: &Value,
        response: &R,
    ) -> Result<(), CommandError> {
        if let Some(key) = &ctx.idempotency_key {
            let scoped = format!("{}|{key}", ctx.actor());
            tx.conn()
                .execute(
                    "INSERT INTO command_results (key, command, fingerprint, response, created_at) VALUES ($1, $2, $3, $4, $5)",
                    args![
                        scoped,
                        command,
                        fingerprint(command, ctx, request),
                        serde_json::to_value(response).unwrap_or(Value::Null),
                        cairn_types::now_micros(),
                    ],
                )
                .await?;
        }
        tx.commit().await?;
        self.engine.wake();
        Ok(())
    }

    fn repeat<R: serde::de::DeserializeOwned>(stored: Value) -> Result<R, CommandError> {
        serde_json::from_value(stored).map_err(|e| CommandError::InvalidState {
            message: format!("the stored response of this idempotency key cannot be read: {e}"),
        })
    }

    /// Bootstraps an organization: records the request and starts the bootstrap
    /// workflow, atomically. Returns at once; the workflow does the work.
    pub async fn bootstrap(
        &self,
        ctx: &CommandContext,
        request: &BootstrapRequest,
    ) -> Result<BootstrapAccepted, CommandError> {
        ctx.authorize(Action::BootstrapOrganization)?;
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
        let sender_address = match registrable_domain(&sender_domain) {
            Ok(domain) => parse_email(
                "organization.sender_domain".into(),
                &format!("noreply@{domain}"),
                &mut errors,
            ),
            Err(error) => {
                errors.push(invalid("organization.sender_domain", error.to_string()));
                None
            }
        };
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
                    email,
                    name,
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

        let request_json = serde_json::to_value(request).unwrap_or(Value::Null);
        let (mut tx, repeated) = self.begin("bootstrap", ctx, &request_json).await?;
        if let Some(stored) = repeated {
            return Self::repeat(stored);
        }
        if queries::organization_by_slug(&mut tx.conn(), slug.as_str())
            .await?
            .is_some()
        {
            return Err(CommandError::Conflict(invalid(
                "organization.slug",
                format!(
                    "{slug:?} is taken by another organization",
                    slug = slug.as_str()
                ),
            )));
        }
        let org_id = OrgId::new_v7();
        let workflow_id = WorkflowId::new_v7();
        let initiated = BootstrapInitiated {
            name,
            slug,
            sender_domain,
            sender_address,
            direct_care_settings: settings,
            admin: PlannedAdmin {
                user_id: admin_user_id,
                invitation_id: admin_invitation_id,
                email: admin_email,
                name: admin_name,
            },
            invitees,
            workflow_id,
        };
        let plan = BootstrapPlan {
            org_id,
            initiated: initiated.clone(),
            ttl_seconds: self.config.invitation_ttl.num_seconds(),
            accept_url: self.config.accept_url.clone(),
        };
        let stream_type = StreamType::parse(stream::ORGANIZATION).expect("a valid stream type");
        let append = AppendRequest::new(
            stream_type,
            org_id.into(),
            vec![initiated.to_event(ctx.metadata(org_id))],
        )
        .expect(Expected::NoStream);
        self.append_applied(&mut tx, append).await?;
        self.engine
            .start_in(
                &mut tx,
                Start {
                    id: workflow_id,
                    kind: bootstrap::KIND.to_owned(),
                    input: serde_json::to_value(&plan).unwrap_or(Value::Null),
                    correlation_id: ctx.correlation_id,
                    org_id: Some(org_id),
                    actor: Some(ctx.actor()),
                    parent: None,
                },
            )
            .await?;
        let accepted = BootstrapAccepted {
            org_id,
            workflow_id,
            correlation_id: ctx.correlation_id,
        };
        self.finish(tx, "bootstrap", ctx, &request_json, &accepted)
            .await?;
        Ok(accepted)
    }

    async fn live_organization(
        &self,
        tx: &mut Tx,
        org_id: OrgId,
    ) -> Result<Organization, CommandError> {
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
        let request_json = json!({ "org_id": org_id, "settings": settings });
        let (mut tx, repeated) = self
            .begin("update_direct_care_settings", ctx, &request_json)
            .await?;
        if let Some(stored) = repeated {
            return Self::repeat(stored);
        }
        self.live_organization(&mut tx, org_id).await?;
        let updated = DirectCareSettingsUpdated {
            settings: settings.clone(),
        };
        let stream_type = StreamType::parse(stream::ORGANIZATION).expect("a valid stream type");
        self.append_applied(
            &mut tx,
            AppendRequest::new(
                stream_type,
                org_id.into(),
                vec![updated.to_event(ctx.metadata(org_id))],
            ),
        )
        .await?;
        self.finish(tx, "update_direct_care_settings", ctx, &request_json, &())
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
        let ping_id = cairn_types::StreamId::new_v7();
        let workflow_id = WorkflowId::new_v7();
        let mut tx = self.store.db().begin().await?;
        let pinged = crate::probe::ProbePinged {
            sent_at: self.now(),
        };
        let stream_type =
            StreamType::parse(crate::probe::STREAM_TYPE).expect("a valid stream type");
        let appended = self
            .store
            .append_in(
                &mut tx,
                AppendRequest::new(
                    stream_type,
                    ping_id,
                    vec![pinged.to_event(ctx.metadata(OrgId::PROBE))],
                )
                .expect(Expected::NoStream),
            )
            .await?;
        self.engine
            .start_in(
                &mut tx,
                Start {
                    id: workflow_id,
                    kind: crate::probe::WORKFLOW.to_owned(),
                    input: json!({ "ping_id": ping_id }),
                    correlation_id: ctx.correlation_id,
                    org_id: Some(OrgId::PROBE),
                    actor: Some(ctx.actor()),
                    parent: None,
                },
            )
            .await?;
        tx.commit().await?;
        let dispatched =
            appended
                .events
                .into_iter()
                .next()
                .ok_or_else(|| CommandError::InvalidState {
                    message: "the probe's append stored no event".to_owned(),
                })?;
        Ok(crate::probe::Ping {
            ping_id,
            position: dispatched.event.position,
            workflow_id,
            correlation_id: ctx.correlation_id,
            outcome: dispatched.outcome,
        })
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
        let request_json = json!({ "org_id": org_id, "invitee": request });
        let (mut tx, repeated) = self.begin("invite", ctx, &request_json).await?;
        if let Some(stored) = repeated {
            return Self::repeat(stored);
        }
        let organization = self.live_organization(&mut tx, org_id).await?;
        if let Some(existing) =
            queries::user_by_email(&mut tx.conn(), org_id, email.as_str()).await?
        {
            let what = if existing.status == "invited" {
                "has already been invited"
            } else {
                "is already a member"
            };
            return Err(CommandError::Conflict(invalid(
                "email",
                format!("{email} {what}"),
            )));
        }
        let user_id = UserId::new_v7();
        let invitation_id = InvitationId::new_v7();
        let workflow_id = WorkflowId::new_v7();
        let invited = UserInvited {
            org_id,
            email: email.clone(),
            name: name.clone(),
            roles: roles.clone(),
            invitation_id,
        };
        let stream_type = StreamType::parse(stream::USER).expect("a valid stream type");
        self.append_applied(
            &mut tx,
            AppendRequest::new(
                stream_type,
                user_id.into(),
                vec![invited.to_event(ctx.metadata(org_id))],
            )
            .expect(Expected::NoStream),
        )
        .await?;
        let mailing = Mailing {
            invitation_id,
            user_id,
            org_id,
            org_name: Name::parse(&organization.name)
                .map_err(|message| CommandError::InvalidState { message })?,
            sender_address: Email::parse(&organization.sender_address)
                .map_err(|message| CommandError::InvalidState { message })?,
            email,
            name,
            roles,
            send_number: 1,
            ttl_seconds: self.config.invitation_ttl.num_seconds(),
            accept_url: self.config.accept_url.clone(),
        };
        self.engine
            .start_in(&mut tx, self.delivery_start(ctx, workflow_id, &mailing))
            .await?;
        let started = InvitationStarted {
            invitation_id,
            user_id,
            workflow_id,
            correlation_id: ctx.correlation_id,
        };
        self.finish(tx, "invite", ctx, &request_json, &started)
            .await?;
        Ok(started)
    }

    async fn existing_invitation(
        &self,
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

    /// Sends a pending or expired invitation again, with a new token and expiry.
    pub async fn resend_invitation(
        &self,
        ctx: &CommandContext,
        invitation_id: InvitationId,
    ) -> Result<InvitationStarted, CommandError> {
        let request_json = json!({ "invitation_id": invitation_id });
        let (mut tx, repeated) = self.begin("resend_invitation", ctx, &request_json).await?;
        if let Some(stored) = repeated {
            return Self::repeat(stored);
        }
        let invitation = self.existing_invitation(&mut tx, invitation_id).await?;
        ctx.authorize_found(
            Action::ResendInvitation(invitation.org_id),
            invitation.org_id,
            "invitation",
            invitation_id.to_string(),
        )?;
        if invitation.status != "pending" && invitation.status != "expired" {
            return Err(CommandError::InvalidState {
                message: format!(
                    "invitation {invitation_id} is {}: only a pending or expired invitation can be resent",
                    invitation.status
                ),
            });
        }
        if let Some(running) = queries::delivery_in_progress(&mut tx.conn(), invitation_id).await? {
            return Err(CommandError::InvalidState {
                message: format!(
                    "invitation {invitation_id} is being sent already (workflow {running}); wait for that email before sending another"
                ),
            });
        }
        let organization = self.live_organization(&mut tx, invitation.org_id).await?;
        let user = queries::user(&mut tx.conn(), invitation.user_id).await?;
        let mailing = Mailing {
            invitation_id,
            user_id: invitation.user_id,
            org_id: invitation.org_id,
            org_name: Name::parse(&organization.name)
                .map_err(|message| CommandError::InvalidState { message })?,
            sender_address: Email::parse(&organization.sender_address)
                .map_err(|message| CommandError::InvalidState { message })?,
            email: Email::parse(&invitation.email)
                .map_err(|message| CommandError::InvalidState { message })?,
            name: Name::parse(
                user.as_ref()
                    .map_or(invitation.email.as_str(), |u| u.name.as_str()),
            )
            .map_err(|message| CommandError::InvalidState { message })?,
            roles: invitation.roles.clone(),
            send_number: u32::try_from(invitation.send_count + 1).unwrap_or(u32::MAX),
            ttl_seconds: self.config.invitation_ttl.num_seconds(),
            accept_url: self.config.accept_url.clone(),
        };
        let workflow_id = WorkflowId::new_v7();
        self.engine
            .start_in(&mut tx, self.delivery_start(ctx, workflow_id, &mailing))
            .await?;
        let started = InvitationStarted {
            invitation_id,
            user_id: invitation.user_id,
            workflow_id,
            correlation_id: ctx.correlation_id,
        };
        self.finish(tx, "resend_invitation", ctx, &request_json, &started)
            .await?;
        Ok(started)
    }

    /// Withdraws a pending invitation.
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
        let request_json = json!({ "invitation_id": invitation_id, "reason": reason });
        let (mut tx, repeated) = self.begin("revoke_invitation", ctx, &request_json).await?;
        if let Some(stored) = repeated {
            return Self::repeat(stored);
        }
        let invitation = self.existing_invitation(&mut tx, invitation_id).await?;
        ctx.authorize_found(
            Action::RevokeInvitation(invitation.org_id),
            invitation.org_id,
            "invitation",
            invitation_id.to_string(),
        )?;
        if invitation.status != "pending" {
            return Err(CommandError::InvalidState {
                message: format!(
                    "invitation {invitation_id} is {}: only a pending invitation can be revoked",
                    invitation.status
                ),
            });
        }
        let revoked = InvitationRevoked {
            reason: reason.to_owned(),
        };
        let stream_type = StreamType::parse(stream::INVITATION).expect("a valid stream type");
        self.append_applied(
            &mut tx,
            AppendRequest::new(
                stream_type,
                invitation_id.into(),
                vec![revoked.to_event(ctx.metadata(invitation.org_id))],
            ),
        )
        .await?;
        self.finish(tx, "revoke_invitation", ctx, &request_json, &())
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
        let hash = token_hash(token);
        let request_json = json!({ "token_hash": hash });
        let (mut tx, repeated) = self.begin("accept_invitation", ctx, &request_json).await?;
        if let Some(stored) = repeated {
            return Self::repeat(stored);
        }
        let invitation = queries::invitation_by_token_hash(&mut tx.conn(), &hash)
            .await?
            .ok_or_else(|| CommandError::NotFound {
                what: "invitation for this token",
                id: "(the link may have been replaced by a newer email)".to_owned(),
            })?;
        let refuse = |message: String| Err(CommandError::InvalidState { message });
        match invitation.status.as_str() {
            "accepted" => {
                return refuse(
                    "this invitation was already accepted: its link works once".to_owned(),
                );
            }
            "revoked" => return refuse("this invitation was revoked".to_owned()),
            "expired" => {
                return refuse(
                    "this invitation has expired; ask for it to be sent again".to_owned(),
                );
            }
            _ => {}
        }
        if invitation.expires_at <= self.now() {
            return refuse("this invitation has expired; ask for it to be sent again".to_owned());
        }
        let mut metadata = ctx.metadata(invitation.org_id);
        metadata.actor = Some(Actor::User(invitation.user_id));
        let accepted = InvitationAccepted {
            user_id: invitation.user_id,
        };
        let invitation_stream = StreamType::parse(stream::INVITATION).expect("a valid stream type");
        self.append_applied(
            &mut tx,
            AppendRequest::new(
                invitation_stream,
                invitation.id.into(),
                vec![accepted.to_event(metadata.clone())],
            ),
        )
        .await?;
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
        let user_stream = StreamType::parse(stream::USER).expect("a valid stream type");
        self.append_applied(
            &mut tx,
            AppendRequest::new(user_stream, invitation.user_id.into(), user_events),
        )
        .await?;
        let acceptance = InvitationAcceptance {
            invitation_id: invitation.id,
            user_id: invitation.user_id,
            org_id: invitation.org_id,
        };
        self.finish(tx, "accept_invitation", ctx, &request_json, &acceptance)
            .await?;
        Ok(acceptance)
    }
}
