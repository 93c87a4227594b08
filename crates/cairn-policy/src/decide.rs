//! The policy: one function that decides every access.

use cairn_types::OrgId;
use cairn_types::Tenancy;

use crate::principal::{Principal, Role, Scope};

/// Everything that can be asked of cairn, with the tenant it concerns where there is
/// one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read the API's contracts and health: open to anyone.
    ReadPublic,
    BootstrapOrganization,
    ListOrganizations,
    ReadOrganization(OrgId),
    UpdateDirectCareSettings(OrgId),
    ReadUsers(OrgId),
    ReadInvitations(OrgId),
    Invite(OrgId),
    ResendInvitation(OrgId),
    RevokeInvitation(OrgId),
    /// Erase a person of this organization at their request.
    EraseSubject(OrgId),
    /// Read what the log holds about a person of this organization, restricted or not,
    /// for a legal claim (GDPR art. 18(2)): a read on record with its reason.
    DiscloseSubject(OrgId),
    /// Change the roles of, deactivate or reactivate a person of this organization.
    ManagePeople(OrgId),
    /// Look an invitation up by its id, within the tenants the principal sees.
    FindInvitation,
    /// Accept an invitation: the token is the credential.
    AcceptInvitation,
    /// List or look up workflow runs, within the tenants the principal sees.
    ListWorkflows,
    /// List or look up events, within the tenants the principal sees.
    ListEvents,
    RetryEvents,
    /// Mark a failed event as not to be applied.
    SkipEvents,
    /// Pause or resume a handler route (for every tenant).
    PauseHandlers,
    /// Pause or resume every run of a workflow kind (for every tenant).
    PauseWorkflowKinds,
    /// Pause, resume, cancel or retry one workflow run, of this organization (or of
    /// none).
    PauseRun(Option<OrgId>),
    /// Subscribe to the live feed.
    Subscribe,
    /// Receive one event on a subscription.
    ReceiveEvent(Option<OrgId>),
    /// Read the timeline of one request.
    ReadTrace,
    /// Find organizations, people, invitations, runs, events and requests by what an
    /// operator has (an email, a slug, a name, an id), within the tenants the
    /// principal sees.
    Search,
    /// Run the integration probe's synthetic command.
    RunProbe,
}

impl Action {
    /// A short name for messages.
    pub fn describe(&self) -> String {
        match self {
            Action::ReadPublic => "read the public contracts".into(),
            Action::BootstrapOrganization => "bootstrap an organization".into(),
            Action::ListOrganizations => "list organizations".into(),
            Action::ReadOrganization(org) => format!("read organization {org}"),
            Action::UpdateDirectCareSettings(org) => {
                format!("change the settings of organization {org}")
            }
            Action::ReadUsers(org) => format!("read the users of organization {org}"),
            Action::ReadInvitations(org) => format!("read the invitations of organization {org}"),
            Action::Invite(org) => format!("invite people to organization {org}"),
            Action::ResendInvitation(org) => format!("resend invitations of organization {org}"),
            Action::RevokeInvitation(org) => format!("revoke invitations of organization {org}"),
            Action::EraseSubject(org) => format!("erase people of organization {org}"),
            Action::DiscloseSubject(org) => {
                format!("disclose the data of people of organization {org}")
            }
            Action::ManagePeople(org) => format!("manage the people of organization {org}"),
            Action::FindInvitation => "read invitations".into(),
            Action::AcceptInvitation => "accept an invitation".into(),
            Action::ListWorkflows => "read workflows".into(),
            Action::ListEvents => "read events".into(),
            Action::RetryEvents => "retry failed events".into(),
            Action::SkipEvents => "skip failed events".into(),
            Action::PauseHandlers => "pause or resume handler routes".into(),
            Action::PauseWorkflowKinds => "pause or resume workflow kinds".into(),
            Action::PauseRun(Some(org)) => {
                format!("pause, resume, cancel or retry workflow runs of organization {org}")
            }
            Action::PauseRun(None) => "pause, resume, cancel or retry workflow runs".into(),
            Action::Subscribe => "subscribe to the event feed".into(),
            Action::ReceiveEvent(_) => "receive this event".into(),
            Action::ReadTrace => "read request timelines".into(),
            Action::Search => "search".into(),
            Action::RunProbe => "run the integration probe".into(),
        }
    }
}

/// Why an access was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// No credentials were given, and the action needs them.
    #[error("authentication required to {action}")]
    Unauthenticated { action: String },
    /// The principal may not do this.
    #[error("{who} may not {action}: {reason}")]
    Forbidden {
        who: String,
        action: String,
        reason: String,
    },
}

/// Proof that the policy allowed an action. Only [`authorize`] makes one.
///
/// ```compile_fail
/// // Nothing outside cairn-policy can construct a grant.
/// let grant = cairn_policy::Grant {
///     principal: cairn_policy::Principal::Anonymous,
///     action: cairn_policy::Action::ListEvents,
///     tenancy: cairn_policy::Tenancy::All,
/// };
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    principal: Principal,
    action: Action,
    tenancy: Tenancy,
}

impl Grant {
    /// Who was allowed.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// What they were allowed to do.
    pub fn action(&self) -> Action {
        self.action
    }

    /// The tenants the grant's reads are confined to.
    pub fn tenancy(&self) -> &Tenancy {
        &self.tenancy
    }
}

/// What a member of an organization may do there, by role.
fn member_may(roles: &std::collections::BTreeSet<Role>, action: &Action) -> Result<(), String> {
    let admin = roles.contains(&Role::Admin);
    let any_role = !roles.is_empty();
    let needs_admin = |what: &str| {
        if admin {
            Ok(())
        } else {
            Err(format!("{what} needs the admin role"))
        }
    };
    match action {
        Action::ReadPublic | Action::AcceptInvitation => Ok(()),
        Action::ListOrganizations | Action::ReadOrganization(_) | Action::ReadUsers(_) => {
            if any_role {
                Ok(())
            } else {
                Err("a user with no role can read nothing".to_owned())
            }
        }
        Action::UpdateDirectCareSettings(_)
        | Action::ReadInvitations(_)
        | Action::FindInvitation
        | Action::Invite(_)
        | Action::ResendInvitation(_)
        | Action::RevokeInvitation(_)
        | Action::EraseSubject(_)
        | Action::DiscloseSubject(_)
        | Action::ManagePeople(_) => needs_admin("managing the organization"),
        Action::ListWorkflows => needs_admin("reading workflows"),
        Action::PauseRun(_) => needs_admin("pausing the organization's workflow runs"),
        Action::ListEvents | Action::Subscribe | Action::ReceiveEvent(_) | Action::ReadTrace => {
            needs_admin("reading events")
        }
        Action::Search => needs_admin("searching the organization"),
        Action::BootstrapOrganization => {
            Err("only platform administrators bootstrap organizations".to_owned())
        }
        Action::RetryEvents => Err("only platform administrators retry events".to_owned()),
        Action::SkipEvents => Err("only platform administrators skip events".to_owned()),
        Action::PauseHandlers => Err(
            "only platform administrators pause handler routes: a pause holds every tenant's events"
                .to_owned(),
        ),
        Action::PauseWorkflowKinds => Err(
            "only platform administrators pause workflow kinds: a pause holds every tenant's runs; pause a run instead"
                .to_owned(),
        ),
        Action::RunProbe => Err("only the platform runs the integration probe".to_owned()),
    }
}

/// The scope a service account needs for an action.
fn scope_for(action: &Action) -> Option<Scope> {
    match action {
        Action::ReadPublic | Action::AcceptInvitation => None,
        Action::BootstrapOrganization => Some(Scope::OrganizationsBootstrap),
        Action::ListOrganizations
        | Action::ReadOrganization(_)
        | Action::ReadUsers(_)
        | Action::ReadInvitations(_)
        | Action::FindInvitation => Some(Scope::OrganizationsRead),
        Action::UpdateDirectCareSettings(_)
        | Action::Invite(_)
        | Action::ResendInvitation(_)
        | Action::RevokeInvitation(_)
        | Action::EraseSubject(_)
        | Action::ManagePeople(_) => Some(Scope::OrganizationsWrite),
        // Refused to every service in `authorize`; the scope it would need.
        Action::DiscloseSubject(_) => Some(Scope::OrganizationsWrite),
        Action::ListWorkflows => Some(Scope::WorkflowsRead),
        // A search finds what the log holds: events, and the runs and people they name.
        Action::ListEvents | Action::ReadTrace | Action::Search => Some(Scope::EventsRead),
        Action::RetryEvents | Action::SkipEvents => Some(Scope::EventsRetry),
        Action::PauseHandlers => Some(Scope::HandlersPause),
        Action::PauseWorkflowKinds | Action::PauseRun(_) => Some(Scope::WorkflowsPause),
        Action::Subscribe | Action::ReceiveEvent(_) => Some(Scope::EventsSubscribe),
        Action::RunProbe => Some(Scope::HealthProbe),
    }
}

/// The tenant an action names, if any.
fn tenant_of(action: &Action) -> Option<Option<OrgId>> {
    match action {
        Action::ReadOrganization(org)
        | Action::UpdateDirectCareSettings(org)
        | Action::ReadUsers(org)
        | Action::ReadInvitations(org)
        | Action::Invite(org)
        | Action::ResendInvitation(org)
        | Action::RevokeInvitation(org)
        | Action::EraseSubject(org)
        | Action::DiscloseSubject(org)
        | Action::ManagePeople(org) => Some(Some(*org)),
        Action::ReceiveEvent(org) | Action::PauseRun(org) => Some(*org),
        _ => None,
    }
}

/// Decides whether `principal` may do `action`.
///
/// ```
/// use std::collections::BTreeSet;
/// use cairn_policy::{Action, Principal, Role, Tenancy, authorize};
/// use cairn_types::{OrgId, UserId};
///
/// let (org_a, org_b) = (OrgId::new_v7(), OrgId::new_v7());
/// let admin_of_a = Principal::User { user_id: UserId::new_v7(), org_id: org_a, roles: BTreeSet::from([Role::Admin]) };
/// let grant = authorize(&admin_of_a, &Action::Invite(org_a)).expect("an admin invites to their own organization");
/// assert_eq!(grant.tenancy(), &Tenancy::Org(org_a));
/// assert!(authorize(&admin_of_a, &Action::Invite(org_b)).is_err());
/// ```
pub fn authorize(principal: &Principal, action: &Action) -> Result<Grant, Denial> {
    let forbidden = |reason: String| Denial::Forbidden {
        who: principal.describe(),
        action: action.describe(),
        reason,
    };
    let grant = |tenancy: Tenancy| Grant {
        principal: principal.clone(),
        action: *action,
        tenancy,
    };
    match principal {
        Principal::PlatformAdmin { .. } | Principal::Operator { .. } => Ok(grant(Tenancy::All)),
        Principal::Anonymous => match action {
            Action::ReadPublic | Action::AcceptInvitation => Ok(grant(Tenancy::None)),
            _ => Err(Denial::Unauthenticated {
                action: action.describe(),
            }),
        },
        Principal::Service { scopes, .. } => match scope_for(action) {
            // A disclosure opens a restricted person's data in every tenant a service
            // sees: only a person who answers for it may ask (see `member_may`).
            _ if matches!(action, Action::DiscloseSubject(_)) => Err(forbidden(
                "only an organization's admin or a platform administrator discloses a person's data"
                    .to_owned(),
            )),
            None => Ok(grant(Tenancy::None)),
            Some(scope) if scopes.contains(&scope) => Ok(grant(Tenancy::All)),
            Some(scope) => Err(forbidden(format!("it lacks the {scope} scope"))),
        },
        Principal::User { org_id, roles, .. } => {
            member_may(roles, action).map_err(forbidden)?;
            match tenant_of(action) {
                Some(Some(tenant)) if tenant != *org_id => Err(forbidden(format!(
                    "it belongs to organization {tenant}, not the user's"
                ))),
                Some(None) => Err(forbidden("it belongs to no organization".to_owned())),
                Some(Some(_)) | None => match action {
                    Action::ReadPublic | Action::AcceptInvitation => Ok(grant(Tenancy::None)),
                    _ => Ok(grant(Tenancy::Org(*org_id))),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use cairn_types::{OrgId, UserId};

    use super::*;

    #[test]
    fn a_disclosure_is_for_the_persons_admin_or_a_platform_administrator_only() {
        let (org, other) = (OrgId::new_v7(), OrgId::new_v7());
        let member = |org_id, role| Principal::User {
            user_id: UserId::new_v7(),
            org_id,
            roles: BTreeSet::from([role]),
        };
        let every_scope = Principal::Service {
            name: "etl".to_owned(),
            scopes: BTreeSet::from(Scope::ALL),
        };
        let cases: Vec<(Principal, Option<Tenancy>)> = vec![
            (member(org, Role::Admin), Some(Tenancy::Org(org))),
            (member(other, Role::Admin), None),
            (member(org, Role::Viewer), None),
            (member(org, Role::Clinician), None),
            (every_scope, None),
            (Principal::Anonymous, None),
            (
                Principal::PlatformAdmin {
                    name: "ops".to_owned(),
                },
                Some(Tenancy::All),
            ),
        ];
        for (principal, expected) in cases {
            let decided = authorize(&principal, &Action::DiscloseSubject(org));
            assert_eq!(
                decided.as_ref().ok().map(Grant::tenancy),
                expected.as_ref(),
                "{principal:?}: {decided:?}"
            );
        }
    }
}
