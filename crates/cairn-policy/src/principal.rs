//! Principals, roles and scopes.

use std::collections::BTreeSet;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use cairn_types::{Actor, OrgId, UserId};

/// What a user may do in their organization.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Manages the organization: settings, users, invitations, its events and workflows.
    Admin,
    /// Provides direct care.
    Clinician,
    /// Schedules and coordinates care.
    Coordinator,
    /// Reads, changes nothing.
    Viewer,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::Admin,
        Role::Clinician,
        Role::Coordinator,
        Role::Viewer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Clinician => "clinician",
            Role::Coordinator => "coordinator",
            Role::Viewer => "viewer",
        }
    }

    /// Parses a role name.
    pub fn parse(text: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| {
                format!(
                    "{text:?} is not a role; the roles are admin, clinician, coordinator and viewer"
                )
            })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A cross-tenant permission granted to a service account.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum Scope {
    /// Bootstrap new organizations.
    #[serde(rename = "organizations:bootstrap")]
    OrganizationsBootstrap,
    /// Read every organization, its users and invitations.
    #[serde(rename = "organizations:read")]
    OrganizationsRead,
    /// Change any organization's settings and invitations.
    #[serde(rename = "organizations:write")]
    OrganizationsWrite,
    /// Read every workflow run.
    #[serde(rename = "workflows:read")]
    WorkflowsRead,
    /// Read every event.
    #[serde(rename = "events:read")]
    EventsRead,
    /// Retry or skip failed events.
    #[serde(rename = "events:retry")]
    EventsRetry,
    /// Pause and resume handler routes.
    #[serde(rename = "handlers:pause")]
    HandlersPause,
    /// Pause and resume workflow kinds and any workflow run.
    #[serde(rename = "workflows:pause")]
    WorkflowsPause,
    /// Subscribe to the live feed of every tenant's events.
    #[serde(rename = "events:subscribe")]
    EventsSubscribe,
    /// Run the integration probe (its synthetic command on the probe's own tenant).
    #[serde(rename = "health:probe")]
    HealthProbe,
}

/// Text that is not a scope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a scope; the scopes are {}", Scope::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))]
pub struct UnknownScope {
    input: String,
}

impl Scope {
    pub const ALL: [Scope; 10] = [
        Scope::OrganizationsBootstrap,
        Scope::OrganizationsRead,
        Scope::OrganizationsWrite,
        Scope::WorkflowsRead,
        Scope::EventsRead,
        Scope::EventsRetry,
        Scope::HandlersPause,
        Scope::WorkflowsPause,
        Scope::EventsSubscribe,
        Scope::HealthProbe,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::OrganizationsBootstrap => "organizations:bootstrap",
            Scope::OrganizationsRead => "organizations:read",
            Scope::OrganizationsWrite => "organizations:write",
            Scope::WorkflowsRead => "workflows:read",
            Scope::EventsRead => "events:read",
            Scope::EventsRetry => "events:retry",
            Scope::HandlersPause => "handlers:pause",
            Scope::WorkflowsPause => "workflows:pause",
            Scope::EventsSubscribe => "events:subscribe",
            Scope::HealthProbe => "health:probe",
        }
    }

    pub fn parse(text: &str) -> Result<Scope, UnknownScope> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == text)
            .ok_or_else(|| UnknownScope {
                input: text.to_owned(),
            })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No credentials.
    Anonymous,
    /// A person, bound to one organization.
    User {
        user_id: UserId,
        org_id: OrgId,
        roles: BTreeSet<Role>,
    },
    /// A service account with explicitly granted cross-tenant scopes.
    Service {
        name: String,
        scopes: BTreeSet<Scope>,
    },
    /// An administrator of the whole platform.
    PlatformAdmin { name: String },
    /// Someone at the command line with direct access to the database: everything a
    /// platform administrator may do, named so the log says who.
    Operator { name: String },
}

/// Why a service account may not have a name: it would be recorded as the same actor
/// as someone else (an anonymous caller, a platform administrator, cairn itself).
pub fn reserved_service_name(name: &str) -> Option<&'static str> {
    if name == "anonymous" {
        Some("\"anonymous\" is the actor of unauthenticated requests")
    } else if name.starts_with("platform-admin-") {
        Some("names starting with \"platform-admin-\" are the actors of platform administrators")
    } else if name.starts_with("cairn-") {
        Some("names starting with \"cairn-\" are cairn's own actors (its engine, its command line)")
    } else {
        None
    }
}

impl Principal {
    /// The key under which cairn keeps what belongs to this principal: the answers
    /// stored under its idempotency keys and its share of live subscriptions. A person
    /// is keyed within their organization, so a token of one tenant whose subject is
    /// another tenant's user id reaches nothing of that user's.
    pub fn state_key(&self) -> String {
        match self {
            Principal::User {
                user_id, org_id, ..
            } => format!("org:{org_id}/user:{user_id}"),
            Principal::Operator { name } => format!("operator:{name}"),
            Principal::Anonymous | Principal::Service { .. } | Principal::PlatformAdmin { .. } => {
                self.actor().to_string()
            }
        }
    }

    /// The actor recorded on the events this principal causes.
    pub fn actor(&self) -> Actor {
        match self {
            Principal::Anonymous => Actor::Service("anonymous".to_owned()),
            Principal::User { user_id, .. } => Actor::User(*user_id),
            Principal::Service { name, .. } => Actor::Service(name.clone()),
            Principal::PlatformAdmin { name } => Actor::Service(format!("platform-admin-{name}")),
            Principal::Operator { name } => Actor::Service(name.clone()),
        }
    }

    /// Who read, as the access log records it: `user:<id>`, `service:<name>`,
    /// `platform-admin:<name>`, `operator:<name>` or `anonymous`.
    pub fn who(&self) -> String {
        match self {
            Principal::Anonymous => "anonymous".to_owned(),
            Principal::User { user_id, .. } => format!("user:{user_id}"),
            Principal::Service { name, .. } => format!("service:{name}"),
            Principal::PlatformAdmin { name } => format!("platform-admin:{name}"),
            Principal::Operator { name } => format!("operator:{name}"),
        }
    }

    /// The person, when the principal is one.
    pub fn user_id(&self) -> Option<UserId> {
        match self {
            Principal::User { user_id, .. } => Some(*user_id),
            _ => None,
        }
    }

    /// The organization a user belongs to.
    pub fn org_id(&self) -> Option<OrgId> {
        match self {
            Principal::User { org_id, .. } => Some(*org_id),
            _ => None,
        }
    }

    /// The kind, for messages and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Principal::Anonymous => "anonymous",
            Principal::User { .. } => "user",
            Principal::Service { .. } => "service",
            Principal::PlatformAdmin { .. } => "platform_admin",
            Principal::Operator { .. } => "operator",
        }
    }

    /// Describes the principal for a denial message.
    pub fn describe(&self) -> String {
        match self {
            Principal::Anonymous => "an anonymous caller".to_owned(),
            Principal::User { org_id, roles, .. } => {
                let roles: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
                let roles = if roles.is_empty() {
                    "no role".to_owned()
                } else {
                    roles.join(", ")
                };
                format!("a user of organization {org_id} ({roles})")
            }
            Principal::Service { name, .. } => format!("service account {name:?}"),
            Principal::PlatformAdmin { name } => format!("platform administrator {name:?}"),
            Principal::Operator { name } => format!("operator {name:?}"),
        }
    }
}
