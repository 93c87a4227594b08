//! Reads for everything outside the domain (the HTTP API, realtime): each takes the
//! [`Grant`] the policy gave for it. A read runs in a transaction confined to the
//! grant's tenancy (on PostgreSQL, row-level security as the tenant reader role) and
//! filters by the tenancy in SQL as well, so a grant for organization A can never
//! return a row of organization B.

use cairn_dispatch::EventStore;
use cairn_log::{Db, EventFilter, ReadError, RecordedEvent};
use cairn_policy::{Action, Grant};
use cairn_types::Tenancy;
use cairn_types::{EventId, InvitationId, OrgId, Position, UserId, WorkflowId};
use cairn_workflow::{Run, RunFilter, RunWithSteps};
use schemars::JsonSchema;
use serde::Serialize;

use crate::queries;
pub use crate::queries::{Invitation, OrgFilter, Organization, Page, Standing, User};

/// Why a read did not run.
#[derive(Debug, thiserror::Error)]
pub enum ReadsError {
    #[error("database error while reading")]
    Database(#[from] cairn_log::DbError),
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

/// Organizations the grant sees that match `filter`, oldest first.
pub async fn organizations_matching(
    db: &Db,
    grant: &Grant,
    filter: &queries::OrgFilter,
    page: Page<OrgId>,
) -> Result<Vec<Organization>, ReadsError> {
    let tenancy = require(grant, Action::ListOrganizations)?;
    if *tenancy == Tenancy::None {
        return Ok(Vec::new());
    }
    let mut scoped = db.scoped(tenancy).await?;
    Ok(queries::organizations_matching(&mut scoped.conn(), tenancy.org(), filter, page).await?)
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

/// What `term` finds among the organizations, people, invitations, runs, events and
/// requests the grant sees (see [`crate::search`]).
pub async fn search(
    db: &Db,
    grant: &Grant,
    term: &crate::search::Term,
) -> Result<Vec<crate::search::Hit>, ReadsError> {
    let tenancy = require(grant, Action::Search)?;
    if *tenancy == Tenancy::None {
        return Ok(Vec::new());
    }
    let mut scoped = db.scoped(tenancy).await?;
    let hits = crate::search::find(&mut scoped.conn(), tenancy.org(), term).await?;
    Ok(hits
        .into_iter()
        .filter(|hit| hit.kind == crate::search::HitKind::Request || tenancy.sees(hit.org_id))
        .collect())
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
    if filter.org_id != Some(OrgId::PROBE) {
        // The probe's synthetic runs show only to whoever asks for them by name.
        filter.exclude_org = Some(OrgId::PROBE);
    }
    let mut scoped = db.scoped(tenancy).await?;
    let runs = cairn_workflow::state::list(&mut scoped.conn(), &filter).await?;
    Ok(runs
        .into_iter()
        .filter(|run| tenancy.sees(run.org_id))
        .collect())
}

/// How many runs the grant sees, by status; running ones asleep at `now` counted
/// apart (see [`cairn_workflow::state::counts`]).
pub async fn workflow_counts(
    db: &Db,
    grant: &Grant,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<cairn_workflow::state::RunCounts, ReadsError> {
    let tenancy = require(grant, Action::ListWorkflows)?;
    let (only, excluded) = match tenancy {
        Tenancy::None => return Ok(Default::default()),
        Tenancy::Org(org) => (Some(*org), None),
        Tenancy::All => (None, Some(OrgId::PROBE)),
    };
    let mut scoped = db.scoped(tenancy).await?;
    Ok(cairn_workflow::state::counts(&mut scoped.conn(), only, excluded, now).await?)
}

/// The names of the organizations among `ids` the grant sees (to name a list's rows).
pub async fn organization_names(
    db: &Db,
    grant: &Grant,
    ids: &[OrgId],
) -> Result<std::collections::HashMap<OrgId, String>, ReadsError> {
    let tenancy = require(grant, Action::ListOrganizations)?;
    let mut names = std::collections::HashMap::new();
    let mut ids: Vec<OrgId> = ids
        .iter()
        .copied()
        .filter(|id| tenancy.sees(Some(*id)))
        .collect();
    ids.sort();
    ids.dedup();
    if ids.is_empty() {
        return Ok(names);
    }
    let mut scoped = db.scoped(tenancy).await?;
    for (id, name) in queries::organization_names(&mut scoped.conn(), &ids).await? {
        names.insert(id, name);
    }
    Ok(names)
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

/// Events the grant sees, at the current versions of their payloads.
pub async fn events(
    store: &EventStore,
    grant: &Grant,
    mut filter: EventFilter,
) -> Result<Vec<RecordedEvent>, ReadsError> {
    let (db, registry) = (store.db(), store.dispatcher().registry());
    let tenancy = require(grant, Action::ListEvents)?;
    match tenancy {
        Tenancy::None => return Ok(Vec::new()),
        // Another tenant's events, asked for by its id: none.
        Tenancy::Org(org) if filter.org_id.is_some_and(|asked| asked != *org) => {
            return Ok(Vec::new());
        }
        Tenancy::Org(org) => filter.org_id = Some(*org),
        Tenancy::All => {}
    }
    if filter.org_id != Some(OrgId::PROBE) {
        // The probe's synthetic events show only to whoever asks for them by name.
        filter.exclude_org = Some(OrgId::PROBE);
    }
    let mut scoped = db.scoped(tenancy).await?;
    let events = scoped.conn().read_events(&filter).await?;
    drop(scoped);
    let seen: Vec<RecordedEvent> = events
        .into_iter()
        .filter(|e| tenancy.sees(e.metadata.org_id))
        .collect();
    Ok(cairn_dispatch::current_events(db, registry, seen).await?)
}

/// The first position of the log stored at or after `at`, among the events the grant
/// sees (for [`Action::ListEvents`]): where a time range of the log begins or ends.
pub async fn first_position_since(
    db: &Db,
    grant: &Grant,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<Position, ReadsError> {
    let tenancy = require(grant, Action::ListEvents)?;
    if matches!(tenancy, Tenancy::None) {
        return Ok(Position::new(1));
    }
    let mut scoped = db.scoped(tenancy).await?;
    Ok(scoped.conn().first_position_since(at).await?)
}

/// How many of the events the grant sees failed, by error code (for [`Action::ListEvents`]).
pub async fn failures_by_code(
    db: &Db,
    grant: &Grant,
) -> Result<Vec<cairn_log::FailureCount>, ReadsError> {
    let tenancy = require(grant, Action::ListEvents)?;
    let org_id = match tenancy {
        Tenancy::None => return Ok(Vec::new()),
        Tenancy::Org(org) => Some(*org),
        Tenancy::All => None,
    };
    // The probe's synthetic events show only to whoever asks for them by name.
    let exclude_org = (org_id != Some(OrgId::PROBE)).then_some(OrgId::PROBE);
    let mut scoped = db.scoped(tenancy).await?;
    Ok(scoped.conn().failures_by_code(org_id, exclude_org).await?)
}

/// One event, if the grant sees its tenant, at the current version of its payload.
pub async fn event(
    store: &EventStore,
    grant: &Grant,
    id: EventId,
) -> Result<Option<RecordedEvent>, ReadsError> {
    let tenancy = require(grant, Action::ListEvents)?;
    let mut scoped = store.db().scoped(tenancy).await?;
    let found = scoped.conn().event_by_id(id).await?;
    drop(scoped);
    match found.filter(|e| tenancy.sees(e.metadata.org_id)) {
        Some(event) => Ok(Some(
            cairn_dispatch::current_event(store.db(), store.dispatcher().registry(), event).await?,
        )),
        None => Ok(None),
    }
}

/// What the integration probe reads to check its hops: its event in the log, its row
/// in the projection, its workflow run.
#[derive(Debug, Clone)]
pub struct ProbeFacts {
    pub event: Option<RecordedEvent>,
    pub recorded_at: Option<chrono::DateTime<chrono::Utc>>,
    pub run: Option<Run>,
}

/// The facts of one ping. The probe's rows belong to no tenant, so this reads as the
/// owner, for a grant to run the probe.
pub async fn probe_facts(
    db: &Db,
    grant: &Grant,
    ping: &crate::probe::Ping,
) -> Result<ProbeFacts, ReadsError> {
    require(grant, Action::RunProbe)?;
    let mut snapshot = db.snapshot().await?;
    let mut conn = snapshot.conn();
    let event = conn.event_at(ping.position).await?;
    let recorded_at = crate::probe::recorded(&mut conn, ping.ping_id).await?;
    let run = cairn_workflow::state::load_run(&mut conn, ping.workflow_id).await?;
    Ok(ProbeFacts {
        event,
        recorded_at,
        run,
    })
}

/// Streams held behind one of their events, oldest first, after the position a
/// previous page ended at: a tenant sees its own.
pub async fn held_streams(
    db: &Db,
    grant: &Grant,
    after: Position,
    limit: u32,
) -> Result<Vec<cairn_dispatch::HeldStream>, ReadsError> {
    let tenancy = require(grant, Action::ListEvents)?;
    if *tenancy == Tenancy::None {
        return Ok(Vec::new());
    }
    let mut scoped = db.scoped(tenancy).await?;
    let held = cairn_dispatch::held_streams(&mut scoped.conn(), after, limit).await?;
    Ok(held
        .into_iter()
        .filter(|held| tenancy.sees(held.org_id))
        .collect())
}

/// The paused handler routes: platform-wide, so anyone who may read events sees
/// them (their own commands are refused while one is paused).
pub async fn paused_routes(
    db: &Db,
    grant: &Grant,
) -> Result<Vec<cairn_dispatch::RoutePause>, ReadsError> {
    let tenancy = require(grant, Action::ListEvents)?;
    if *tenancy == Tenancy::None {
        return Ok(Vec::new());
    }
    let mut scoped = db.scoped(tenancy).await?;
    let paused = cairn_dispatch::PausedRoutes::load(&mut scoped.conn()).await?;
    Ok(paused.iter().cloned().collect())
}

/// The paused workflow kinds: platform-wide, like the paused routes.
pub async fn paused_kinds(
    db: &Db,
    grant: &Grant,
) -> Result<Vec<cairn_workflow::KindPause>, ReadsError> {
    let tenancy = require(grant, Action::ListWorkflows)?;
    if *tenancy == Tenancy::None {
        return Ok(Vec::new());
    }
    let mut scoped = db.scoped(tenancy).await?;
    Ok(cairn_workflow::control::kind_pauses(&mut scoped.conn()).await?)
}

/// Everything that is paused or held, for the health checks, which anyone may read:
/// platform-wide pauses with who, why and since when; runs and streams by id, who and
/// since when, never with text that may be a tenant's (a run's reason can quote a mail
/// server's refusal of someone's address; a failure's message, someone's data). The
/// runs' own pages and `/v1/streams/held` have the rest, for those who may read them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
pub struct Paused {
    /// Paused handler routes.
    pub routes: Vec<cairn_dispatch::RoutePause>,
    /// Paused workflow kinds.
    pub workflow_kinds: Vec<cairn_workflow::KindPause>,
    /// Runs paused on their own (by an operator, or when a step's attempts ran out).
    pub workflow_runs: i64,
    /// The first of them.
    pub runs: Vec<PausedRun>,
    /// Streams held behind a failed event or a paused route.
    pub held_streams: i64,
    /// Events that wait in them.
    pub held_events: i64,
    /// The first of the held streams.
    pub held: Vec<HeldSummary>,
}

/// A run paused on its own.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct PausedRun {
    pub id: WorkflowId,
    pub kind: String,
    /// `service:workflow-engine` when a step's attempts ran out.
    pub paused_by: String,
    pub since: chrono::DateTime<chrono::Utc>,
}

/// A held stream, as the health checks show it.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct HeldSummary {
    pub stream_type: cairn_types::StreamType,
    pub stream_id: cairn_types::StreamId,
    pub cause: cairn_log::HoldCause,
    /// The position of the event it waits behind.
    pub behind: Position,
    /// That event's type.
    pub behind_event_type: cairn_types::EventType,
    pub n_held: u64,
    pub since: chrono::DateTime<chrono::Utc>,
}

/// Whose run this is (`Some(None)`: a run of no organization), or `None` when there
/// is no such run: what the policy needs to decide who may pause it. It answers that
/// and nothing else.
pub async fn run_tenant(db: &Db, id: WorkflowId) -> Result<Option<Option<OrgId>>, ReadsError> {
    let mut reader = db.reader().await?;
    let row = reader
        .conn()
        .fetch_optional(
            "SELECT org_id FROM workflow_runs WHERE id = $1",
            cairn_log::args![id],
        )
        .await?;
    Ok(row
        .map(|row| row.get::<Option<OrgId>>("org_id"))
        .transpose()?)
}

/// A workflow run that should have moved on and has not.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct StuckRun {
    pub id: WorkflowId,
    pub kind: String,
    pub status: String,
    /// When it was due, or when it last changed.
    pub since: chrono::DateTime<chrono::Utc>,
}

/// The state of the whole system, without any tenant's data: for health checks and
/// metrics, which anyone may read.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct SystemHealth {
    /// The log's last position.
    pub head: Position,
    /// Events stored a while ago and never processed (should stay 0).
    pub unprocessed_events: i64,
    /// Events whose last processing failed.
    pub failed_events: i64,
    /// Workflow runs by status.
    pub workflows: std::collections::BTreeMap<String, i64>,
    /// Runs overdue by more than the deadline, and runs whose compensation failed
    /// (paused runs are not stuck: they are counted in `paused`).
    pub stuck_workflows: i64,
    /// The first of them.
    pub stuck: Vec<StuckRun>,
    /// What operators paused, and what is held.
    pub paused: Paused,
    /// Event types with events a newer build wrote, at versions this build does not
    /// read (should stay empty: this build is older than the log).
    pub newer_events: Vec<cairn_dispatch::NewerEvents>,
}

/// When things count as stuck.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// A workflow run this long overdue is stuck.
    pub stuck_after: chrono::Duration,
    /// An event this old without an outcome is unprocessed.
    pub unprocessed_after: chrono::Duration,
}

/// Event types with events a newer build wrote (see [`SystemHealth::newer_events`]),
/// alone: cheap enough for every readiness check.
pub async fn newer_events(
    store: &EventStore,
    grant: &Grant,
) -> Result<Vec<cairn_dispatch::NewerEvents>, ReadsError> {
    require(grant, Action::ReadPublic)?;
    let mut reader = store.db().reader().await?;
    Ok(cairn_dispatch::newer_events(&mut reader.conn(), store.dispatcher().registry()).await?)
}

/// Reads [`SystemHealth`].
pub async fn system_health(
    store: &EventStore,
    grant: &Grant,
    thresholds: Thresholds,
) -> Result<SystemHealth, ReadsError> {
    let db = store.db();
    let Thresholds {
        stuck_after,
        unprocessed_after,
    } = thresholds;
    require(grant, Action::ReadPublic)?;
    let now = chrono::Utc::now();
    let mut snapshot = db.snapshot().await?;
    let mut conn = snapshot.conn();
    let head = conn.head().await?;
    let unprocessed: i64 = conn
        .fetch_one(
            "SELECT COUNT(*) AS n FROM domain_events \
             WHERE processed_at IS NULL AND processing_error_code IS NULL AND created_at < $1 \
             AND held_behind IS NULL",
            cairn_log::args![now - unprocessed_after],
        )
        .await?
        .get("n")?;
    let mut workflows = std::collections::BTreeMap::new();
    for row in conn
        .fetch_all(
            "SELECT status, COUNT(*) AS n FROM workflow_runs GROUP BY status ORDER BY status",
            cairn_log::args![],
        )
        .await?
    {
        workflows.insert(row.get::<String>("status")?, row.get::<i64>("n")?);
    }
    let overdue = now - stuck_after;
    let stuck_filter = "((status IN ('running', 'compensating') AND next_run_at IS NOT NULL AND next_run_at < $1 \
         AND paused_at IS NULL AND kind NOT IN (SELECT kind FROM workflow_kind_pauses)) \
         OR status = 'compensation_failed')";
    let stuck_workflows: i64 = conn
        .fetch_one(
            cairn_log::Sql::built(format!(
                "SELECT COUNT(*) AS n FROM workflow_runs WHERE {stuck_filter}"
            )),
            cairn_log::args![overdue],
        )
        .await?
        .get("n")?;
    let stuck = conn
        .fetch_all(
            cairn_log::Sql::built(format!(
                "SELECT id, kind, status, COALESCE(next_run_at, updated_at) AS since FROM workflow_runs \
                 WHERE {stuck_filter} ORDER BY since LIMIT 10"
            )),
            cairn_log::args![overdue],
        )
        .await?
        .iter()
        .map(|row| {
            Ok(StuckRun {
                id: row.get("id")?,
                kind: row.get("kind")?,
                status: row.get("status")?,
                since: row.get("since")?,
            })
        })
        .collect::<Result<Vec<_>, cairn_log::DbError>>()?;
    let paused = paused(&mut conn).await?;
    let newer_events =
        cairn_dispatch::newer_events(&mut conn, store.dispatcher().registry()).await?;
    Ok(SystemHealth {
        head: head.last_position,
        unprocessed_events: unprocessed,
        failed_events: head.failed_events,
        workflows,
        stuck_workflows,
        stuck,
        paused,
        newer_events,
    })
}

/// What is paused or held, with the first few of each.
async fn paused(conn: &mut cairn_log::Conn<'_>) -> Result<Paused, ReadsError> {
    const FIRST: u32 = 10;
    let routes = cairn_dispatch::PausedRoutes::load(conn)
        .await?
        .iter()
        .cloned()
        .collect();
    let workflow_kinds = cairn_workflow::control::kind_pauses(conn).await?;
    let workflow_runs: i64 = conn
        .fetch_one(
            "SELECT COUNT(*) AS n FROM workflow_runs WHERE paused_at IS NOT NULL",
            cairn_log::args![],
        )
        .await?
        .get("n")?;
    let runs = conn
        .fetch_all(
            "SELECT id, kind, paused_by, paused_at FROM workflow_runs \
             WHERE paused_at IS NOT NULL ORDER BY paused_at LIMIT $1",
            cairn_log::args![i64::from(FIRST)],
        )
        .await?
        .iter()
        .map(|row| {
            Ok(PausedRun {
                id: row.get("id")?,
                kind: row.get("kind")?,
                paused_by: row.get("paused_by")?,
                since: row.get("paused_at")?,
            })
        })
        .collect::<Result<Vec<_>, cairn_log::DbError>>()?;
    let (held_streams, held_events) = cairn_dispatch::held_counts(conn).await?;
    let held = cairn_dispatch::held_streams(conn, Position::START, FIRST)
        .await?
        .into_iter()
        .map(|held| HeldSummary {
            stream_type: held.stream_type,
            stream_id: held.stream_id,
            cause: held.cause,
            behind: held.behind.position,
            behind_event_type: held.behind.event_type,
            n_held: held.n_held,
            since: held.since,
        })
        .collect();
    Ok(Paused {
        routes,
        workflow_kinds,
        workflow_runs,
        runs,
        held_streams: i64::try_from(held_streams).unwrap_or(i64::MAX),
        held_events: i64::try_from(held_events).unwrap_or(i64::MAX),
        held,
    })
}

/// Whether `correlation_id` is already carried by an event or a span outside `org_id`
/// (for another tenant or for none; for anyone when `org_id` is `None`). Requests
/// ask before they honour a correlation id their caller chose, so that no tenant can
/// write into another tenant's timeline. It answers yes or no, nothing else.
pub async fn correlation_used_elsewhere(
    db: &Db,
    correlation_id: cairn_types::CorrelationId,
    org_id: Option<OrgId>,
) -> Result<bool, ReadsError> {
    let mut reader = db.reader().await?;
    Ok(reader
        .conn()
        .correlation_used_elsewhere(correlation_id, org_id)
        .await?)
}

/// The log's last position, read from the database (not from this process's view of
/// it, which may lag behind another process's appends).
pub async fn log_head(db: &Db) -> Result<Position, ReadsError> {
    let mut reader = db.reader().await?;
    Ok(reader.conn().head().await?.last_position)
}

/// Where the person behind a token stands now (whether their tokens work, and the
/// roles they hold): read to authenticate a request, before any policy is asked, so
/// it needs no grant. It says nothing about the person but that.
pub async fn standing(db: &Db, user_id: UserId) -> Result<Option<Standing>, ReadsError> {
    let mut reader = db.reader().await?;
    Ok(crate::queries::standing(&mut reader.conn(), user_id).await?)
}

/// The invitation email as its last send wrote it, for an admin to check: its link's
/// token is never shown.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct EmailPreview {
    pub from: String,
    pub to: String,
    pub subject: String,
    pub text: String,
    /// Which send of the invitation it is: 1 for the first email.
    pub send_number: u32,
}

/// The email of invitation `id`'s last send, as [`Action::FindInvitation`] sees it;
/// `None` when there is no such invitation in the grant's tenants, or nothing to show
/// (the person was erased or is restricted).
pub async fn invitation_email(
    domain: &crate::Domain,
    grant: &Grant,
    id: InvitationId,
) -> Result<Option<EmailPreview>, ReadsError> {
    let Some(invitation) = invitation(domain.store().db(), grant, id).await? else {
        return Ok(None);
    };
    if invitation.erased_at.is_some() || invitation.restricted_at.is_some() {
        return Ok(None);
    }
    let tenancy = grant.tenancy();
    let mut scoped = domain.store().db().scoped(tenancy).await?;
    let (Some(organization), Some(person)) = (
        queries::organization(&mut scoped.conn(), invitation.org_id).await?,
        queries::user(&mut scoped.conn(), invitation.user_id).await?,
    ) else {
        return Ok(None);
    };
    drop(scoped);
    let (Ok(org_name), Ok(sender), Ok(email), Ok(name)) = (
        crate::model::Name::parse(&organization.name),
        crate::model::Email::parse(&organization.sender_address),
        crate::model::Email::parse(&person.email),
        crate::model::Name::parse(&person.name),
    ) else {
        return Ok(None);
    };
    let send_number = u32::try_from(invitation.send_count.max(1)).unwrap_or(u32::MAX);
    let mailing = crate::mailing::Mailing {
        invitation_id: invitation.id,
        user_id: invitation.user_id,
        org_id: invitation.org_id,
        org_name,
        sender_address: sender,
        email: None,
        name: None,
        roles: invitation.roles.clone(),
        send_number,
        ttl_seconds: 0,
        accept_url: domain.config().accept_url.clone(),
    };
    let message =
        crate::mailing::invitation_message(&mailing, &email, &name, "…", invitation.expires_at);
    Ok(Some(EmailPreview {
        from: format!("{} <{}>", organization.name, message.from),
        to: format!("{} <{}>", person.name, message.to),
        subject: message.subject,
        text: message.text,
        send_number,
    }))
}

/// The log as it stood at each of `marks` (for [`Action::ReadPublic`]): the last
/// position stored by then, and how many of the events up to it stand failed now. What
/// a health chart shows of a time before its process started.
pub async fn log_history(
    db: &Db,
    grant: &Grant,
    marks: &[chrono::DateTime<chrono::Utc>],
) -> Result<Vec<(chrono::DateTime<chrono::Utc>, Position, i64)>, ReadsError> {
    require(grant, Action::ReadPublic)?;
    let mut snapshot = db.snapshot().await?;
    let mut conn = snapshot.conn();
    let mut history = Vec::with_capacity(marks.len());
    for at in marks {
        let head = Position::new(conn.first_position_since(*at).await?.get() - 1);
        let failed = conn.failed_through(head).await?;
        history.push((*at, head, failed));
    }
    Ok(history)
}

/// What the bootstrap of organization `org_id` asked for (its
/// `organization.bootstrap.initiated`, at its current version, its people's names and
/// addresses opened unless withheld), as [`Action::ListEvents`] sees it: to start a
/// failed bootstrap again with the same details.
pub async fn bootstrap_asked(
    store: &EventStore,
    grant: &Grant,
    org_id: OrgId,
) -> Result<Option<crate::events::BootstrapInitiated>, ReadsError> {
    let filter = EventFilter {
        stream_id: Some(org_id.into()),
        event_type: cairn_types::EventType::parse(
            <crate::events::BootstrapInitiated as cairn_dispatch::EventPayload>::EVENT_TYPE,
        )
        .ok(),
        limit: Some(1),
        ..EventFilter::default()
    };
    let found = events(store, grant, filter).await?;
    Ok(found
        .first()
        .and_then(|event| cairn_dispatch::payload(event).ok()))
}
