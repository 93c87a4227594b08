//! Reads for everything outside the domain (the HTTP API, realtime): each takes the
//! [`Grant`] the policy gave for it. A read runs in a transaction confined to the
//! grant's tenancy (on PostgreSQL, row-level security as the tenant reader role) and
//! filters by the tenancy in SQL as well, so a grant for organization A can never
//! return a row of organization B.

use cairn_log::{Db, EventFilter, ReadError, RecordedEvent, Tenancy};
use cairn_policy::{Action, Grant};
use cairn_types::{EventId, InvitationId, OrgId, UserId, WorkflowId};
use cairn_workflow::{Run, RunFilter, RunWithSteps};

use crate::queries;
pub use crate::queries::{Invitation, Organization, Page, User};

/// Why a read did not run.
#[derive(Debug, thiserror::Error)]
pub enum ReadsError {
    #[error("database error while reading")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Log(#[from] ReadError),
    /// A grant for one action was used for another: a bug in the caller.
    #[error("a grant to {granted} does not cover {needed}")]
    WrongGrant { granted: String, needed: String },
}

fn require(grant: &Grant, needed: Action) -> Result<&Tenancy, ReadsError> {
    if grant.action() == needed {
        Ok(grant.tenancy())
    } else {
        Err(ReadsError::WrongGrant {
            granted: grant.action().describe(),
            needed: needed.describe(),
        })
    }
}

/// Organizations the grant sees, oldest first.
pub async fn organizations(
    db: &Db,
    grant: &Grant,
    page: Page<OrgId>,
) -> Result<Vec<Organization>, ReadsError> {
    let tenancy = require(grant, Action::ListOrganizations)?;
    if *tenancy == Tenancy::None {
        return Ok(Vec::new());
    }
    let mut scoped = db.scoped(tenancy).await?;
    Ok(queries::organizations(&mut scoped.conn(), tenancy.org(), page).await?)
}

/// One organization.
pub async fn organization(
    db: &Db,
    grant: &Grant,
    org_id: OrgId,
) -> Result<Option<Organization>, ReadsError> {
    let tenancy = require(grant, Action::ReadOrganization(org_id))?;
    let mut scoped = db.scoped(tenancy).await?;
    let found = queries::organization(&mut scoped.conn(), org_id).await?;
    Ok(found.filter(|org| tenancy.sees(Some(org.id))))
}

/// The users of an organization.
pub async fn users(
    db: &Db,
    grant: &Grant,
    org_id: OrgId,
    page: Page<UserId>,
) -> Result<Vec<User>, ReadsError> {
    let tenancy = require(grant, Action::ReadUsers(org_id))?;
    let mut scoped = db.scoped(tenancy).await?;
    let users = queries::users(&mut scoped.conn(), org_id, page).await?;
    Ok(users
        .into_iter()
        .filter(|user| tenancy.sees(Some(user.org_id)))
        .collect())
}

/// One user of an organization.
pub async fn user(
    db: &Db,
    grant: &Grant,
    org_id: OrgId,
    user_id: UserId,
) -> Result<Option<User>, ReadsError> {
    let tenancy = require(grant, Action::ReadUsers(org_id))?;
    let mut scoped = db.scoped(tenancy).await?;
    let found = queries::user(&mut scoped.conn(), user_id).await?;
    Ok(found.filter(|user| user.org_id == org_id && tenancy.sees(Some(user.org_id))))
}

/// The invitations of an organization.
pub async fn invitations(
    db: &Db,
    grant: &Grant,
    org_id: OrgId,
    page: Page<InvitationId>,
) -> Result<Vec<Invitation>, ReadsError> {
    let tenancy = require(grant, Action::ReadInvitations(org_id))?;
    let mut scoped = db.scoped(tenancy).await?;
    let invitations = queries::invitations(&mut scoped.conn(), org_id, page).await?;
    Ok(invitations
        .into_iter()
        .filter(|i| tenancy.sees(Some(i.org_id)))
        .collect())
}

/// One invitation, if the grant sees its tenant.
pub async fn invitation(
    db: &Db,
    grant: &Grant,
    id: InvitationId,
) -> Result<Option<Invitation>, ReadsError> {
    let tenancy = require(grant, Action::FindInvitation)?;
    let mut scoped = db.scoped(tenancy).await?;
    let found = queries::invitation(&mut scoped.conn(), id).await?;
    Ok(found.filter(|i| tenancy.sees(Some(i.org_id))))
}

/// Workflow runs the grant sees.
pub async fn workflows(
    db: &Db,
    grant: &Grant,
    mut filter: RunFilter,
) -> Result<Vec<Run>, ReadsError> {
    let tenancy = require(grant, Action::ListWorkflows)?;
    match tenancy {
        Tenancy::None => return Ok(Vec::new()),
        Tenancy::Org(org) => filter.org_id = Some(*org),
        Tenancy::All => {}
    }
    let mut scoped = db.scoped(tenancy).await?;
    let runs = cairn_workflow::state::list(&mut scoped.conn(), &filter).await?;
    Ok(runs
        .into_iter()
        .filter(|run| tenancy.sees(run.org_id))
        .collect())
}

/// One workflow run with its steps, if the grant sees its tenant.
pub async fn workflow(
    db: &Db,
    grant: &Grant,
    id: WorkflowId,
) -> Result<Option<RunWithSteps>, ReadsError> {
    let tenancy = require(grant, Action::ListWorkflows)?;
    let mut scoped = db.scoped(tenancy).await?;
    let found = cairn_workflow::state::load(&mut scoped.conn(), id).await?;
    Ok(found.filter(|run| tenancy.sees(run.run.org_id)))
}

/// Events the grant sees.
pub async fn events(
    db: &Db,
    grant: &Grant,
    mut filter: EventFilter,
) -> Result<Vec<RecordedEvent>, ReadsError> {
    let tenancy = require(grant, Action::ListEvents)?;
    match tenancy {
        Tenancy::None => return Ok(Vec::new()),
        Tenancy::Org(org) => filter.org_id = Some(*org),
        Tenancy::All => {}
    }
    let mut scoped = db.scoped(tenancy).await?;
    let events = scoped.conn().read_events(&filter).await?;
    Ok(events
        .into_iter()
        .filter(|e| tenancy.sees(e.metadata.org_id))
        .collect())
}

/// One event, if the grant sees its tenant.
pub async fn event(
    db: &Db,
    grant: &Grant,
    id: EventId,
) -> Result<Option<RecordedEvent>, ReadsError> {
    let tenancy = require(grant, Action::ListEvents)?;
    let mut scoped = db.scoped(tenancy).await?;
    let found = scoped.conn().event_by_id(id).await?;
    Ok(found.filter(|e| tenancy.sees(e.metadata.org_id)))
}
