//! Reading the onboarding projections.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

use cairn_log::{Arg, Conn, IntoArg, Row, args};
use cairn_types::{InvitationId, OrgId, UserId, WorkflowId};

use crate::model::{DirectCareSettings, Role};

fn decode<T: serde::de::DeserializeOwned>(
    column: &str,
    value: Value,
) -> Result<T, cairn_log::DbError> {
    serde_json::from_value(value).map_err(|e| cairn_log::DbError::decode(column, e))
}

/// An organization.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Organization {
    pub id: OrgId,
    pub name: String,
    pub slug: String,
    pub sender_domain: String,
    pub sender_address: String,
    /// `bootstrapping`, `active` or `failed`.
    pub status: String,
    pub is_active: bool,
    pub direct_care_settings: DirectCareSettings,
    pub workflow_id: Option<WorkflowId>,
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deactivated_at: Option<DateTime<Utc>>,
}

const ORG_COLUMNS: &str = "id, name, slug, sender_domain, sender_address, status, is_active, direct_care_settings, \
     workflow_id, failure_reason, created_at, updated_at, deactivated_at";

fn organization_from_row(row: &Row) -> Result<Organization, cairn_log::DbError> {
    Ok(Organization {
        id: row.get("id")?,
        name: row.get("name")?,
        slug: row.get("slug")?,
        sender_domain: row.get("sender_domain")?,
        sender_address: row.get("sender_address")?,
        status: row.get("status")?,
        is_active: row.get("is_active")?,
        direct_care_settings: decode(
            "direct_care_settings",
            row.get_json("direct_care_settings")?,
        )?,
        workflow_id: row.get("workflow_id")?,
        failure_reason: row.get("failure_reason")?,
        created_at: row.get("created_at")?,
        updated_at: row.get("updated_at")?,
        deactivated_at: row.get("deactivated_at")?,
    })
}

/// A user, with their roles.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct User {
    pub id: UserId,
    pub org_id: OrgId,
    pub email: String,
    pub name: String,
    /// `invited` or `active`.
    pub status: String,
    pub roles: Vec<Role>,
    /// Who invited them (`user:<uuid>` or `service:<name>`); absent for users created
    /// directly, and for those invited before it was recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invited_by: Option<String>,
    /// When they were erased at their request: their name and address are gone
    /// (empty here), and every event about them reads them as `{"withheld": "erased"}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub erased_at: Option<DateTime<Utc>>,
    /// When they were restricted until their erasure: their name and address are
    /// shown to no one (empty here), and every event about them reads them as
    /// `{"withheld": "restricted"}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restricted_at: Option<DateTime<Utc>>,
    /// When they were deactivated: their tokens do not work until they are
    /// reactivated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deactivated_at: Option<DateTime<Utc>>,
    /// Why they were deactivated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deactivation_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An invitation. Its token is never shown.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Invitation {
    pub id: InvitationId,
    pub org_id: OrgId,
    pub user_id: UserId,
    pub email: String,
    pub roles: Vec<Role>,
    /// `pending`, `accepted`, `revoked`, `expired`, or `refused` (the mail server
    /// refused its last email for good: see `delivery_reply`).
    pub status: String,
    pub expires_at: DateTime<Utc>,
    pub send_count: i64,
    pub message_id: String,
    pub last_sent_at: DateTime<Utc>,
    pub accepted_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoke_reason: Option<String>,
    pub expired_at: Option<DateTime<Utc>>,
    /// When the mail server refused its last email for good.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused_at: Option<DateTime<Utc>>,
    /// What the mail server said when it refused it (the address cut out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_reply: Option<String>,
    /// When the invitee was erased: the address is gone (empty here).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub erased_at: Option<DateTime<Utc>>,
    /// When the invitee was restricted: the address is shown to no one (empty here).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restricted_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const INVITATION_COLUMNS: &str = "id, org_id, user_id, email, roles, status, expires_at, send_count, message_id, \
     last_sent_at, accepted_at, revoked_at, revoke_reason, expired_at, refused_at, delivery_reply, erased_at, restricted_at, \
     created_at, updated_at";

fn invitation_from_row(row: &Row) -> Result<Invitation, cairn_log::DbError> {
    Ok(Invitation {
        id: row.get("id")?,
        org_id: row.get("org_id")?,
        user_id: row.get("user_id")?,
        email: row.get("email")?,
        roles: decode("roles", row.get_json("roles")?)?,
        status: row.get("status")?,
        expires_at: row.get("expires_at")?,
        send_count: row.get("send_count")?,
        message_id: row.get("message_id")?,
        last_sent_at: row.get("last_sent_at")?,
        accepted_at: row.get("accepted_at")?,
        revoked_at: row.get("revoked_at")?,
        revoke_reason: row.get("revoke_reason")?,
        expired_at: row.get("expired_at")?,
        refused_at: row.get("refused_at")?,
        delivery_reply: row.get("delivery_reply")?,
        erased_at: row.get("erased_at")?,
        restricted_at: row.get("restricted_at")?,
        created_at: row.get("created_at")?,
        updated_at: row.get("updated_at")?,
    })
}

/// A page of a list: items after a cursor (ids are time-ordered), at most `limit`.
#[derive(Debug, Clone, Copy)]
pub struct Page<Id> {
    pub after: Option<Id>,
    pub limit: u32,
}

impl<Id> Default for Page<Id> {
    fn default() -> Self {
        Self {
            after: None,
            limit: 50,
        }
    }
}

/// Builds `SELECT … WHERE <conditions> AND id > cursor ORDER BY id LIMIT n`.
fn page_sql(
    select: &str,
    mut conditions: Vec<(&str, Arg)>,
    after: Option<Arg>,
    limit: u32,
) -> (String, Vec<Arg>) {
    let mut sql = format!("{select} WHERE 1 = 1");
    let mut args = Vec::new();
    if let Some(after) = after {
        conditions.push(("id >", after));
    }
    for (clause, arg) in conditions {
        args.push(arg);
        sql.push_str(&format!(" AND {clause} ${}", args.len()));
    }
    args.push(i64::from(limit.clamp(1, 1000)).into_arg());
    sql.push_str(&format!(" ORDER BY id LIMIT ${}", args.len()));
    (sql, args)
}

/// One organization.
pub async fn organization(
    conn: &mut Conn<'_>,
    id: OrgId,
) -> Result<Option<Organization>, cairn_log::DbError> {
    let sql = cairn_log::Sql::built(format!(
        "SELECT {ORG_COLUMNS} FROM organizations WHERE id = $1"
    ));
    conn.fetch_optional(sql, args![id])
        .await?
        .as_ref()
        .map(organization_from_row)
        .transpose()
}

/// The organization that holds a slug. An organization whose bootstrap failed lets go
/// of its slug once it is deactivated (the compensation's last step), so that the
/// slug can be bootstrapped again; until then it still holds it.
pub async fn organization_by_slug(
    conn: &mut Conn<'_>,
    slug: &str,
) -> Result<Option<Organization>, cairn_log::DbError> {
    let sql = cairn_log::Sql::built(format!(
        "SELECT {ORG_COLUMNS} FROM organizations WHERE slug = $1 AND (status <> 'failed' OR is_active) \
         ORDER BY id DESC LIMIT 1"
    ));
    conn.fetch_optional(sql, args![slug])
        .await?
        .as_ref()
        .map(organization_from_row)
        .transpose()
}

/// Organizations, oldest first; `only` narrows to one tenant.
pub async fn organizations(
    conn: &mut Conn<'_>,
    only: Option<OrgId>,
    page: Page<OrgId>,
) -> Result<Vec<Organization>, cairn_log::DbError> {
    organizations_matching(conn, only, &OrgFilter::default(), page).await
}

/// The names of the organizations `ids` (those that exist).
pub async fn organization_names(
    conn: &mut Conn<'_>,
    ids: &[OrgId],
) -> Result<Vec<(OrgId, String)>, cairn_log::DbError> {
    let placeholders: Vec<String> = (1..=ids.len()).map(|n| format!("${n}")).collect();
    let sql = format!(
        "SELECT id, name FROM organizations WHERE id IN ({})",
        placeholders.join(", ")
    );
    let args = ids.iter().map(|id| id.into_arg()).collect();
    let rows = conn.fetch_all(cairn_log::Sql::built(sql), args).await?;
    rows.iter()
        .map(|row| Ok((row.get("id")?, row.get("name")?)))
        .collect()
}

/// What a list of organizations is narrowed to: part of a name or slug, a status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrgFilter {
    pub text: Option<String>,
    pub status: Option<String>,
}

/// [`organizations`], narrowed by `filter`.
pub async fn organizations_matching(
    conn: &mut Conn<'_>,
    only: Option<OrgId>,
    filter: &OrgFilter,
    page: Page<OrgId>,
) -> Result<Vec<Organization>, cairn_log::DbError> {
    let mut conditions = only
        .map(|id| vec![("id =", id.into_arg())])
        .unwrap_or_default();
    if let Some(text) = filter
        .text
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        // The text is matched as it is: `%` and `\` are dropped rather than read as
        // patterns.
        let text: String = text
            .to_lowercase()
            .chars()
            .filter(|c| !matches!(c, '%' | '\\'))
            .collect();
        conditions.push((
            "(LOWER(name) || ' ' || slug) LIKE",
            format!("%{text}%").into_arg(),
        ));
    }
    if let Some(status) = filter.status.clone() {
        conditions.push(("status =", status.into_arg()));
    }
    let (sql, args) = page_sql(
        &format!("SELECT {ORG_COLUMNS} FROM organizations"),
        conditions,
        page.after.map(IntoArg::into_arg),
        page.limit,
    );
    let rows = conn.fetch_all(cairn_log::Sql::built(sql), args).await?;
    rows.iter().map(organization_from_row).collect()
}

async fn roles_of(conn: &mut Conn<'_>, user_id: UserId) -> Result<Vec<Role>, cairn_log::DbError> {
    let rows = conn
        .fetch_all(
            "SELECT role FROM role_assignments WHERE user_id = $1 ORDER BY role",
            args![user_id],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let role: String = row.get("role")?;
            Role::parse(&role).map_err(|e| cairn_log::DbError::decode("role", e))
        })
        .collect()
}

async fn user_from_row(conn: &mut Conn<'_>, row: &Row) -> Result<User, cairn_log::DbError> {
    let id: UserId = row.get("id")?;
    Ok(User {
        id,
        org_id: row.get("org_id")?,
        email: row.get("email")?,
        name: row.get("name")?,
        status: row.get("status")?,
        roles: roles_of(conn, id).await?,
        invited_by: row.get("invited_by")?,
        erased_at: row.get("erased_at")?,
        restricted_at: row.get("restricted_at")?,
        deactivated_at: row.get("deactivated_at")?,
        deactivation_reason: row.get("deactivation_reason")?,
        created_at: row.get("created_at")?,
        updated_at: row.get("updated_at")?,
    })
}

/// One user.
pub async fn user(conn: &mut Conn<'_>, id: UserId) -> Result<Option<User>, cairn_log::DbError> {
    let row = conn
        .fetch_optional(
            "SELECT id, org_id, email, name, status, invited_by, erased_at, restricted_at, deactivated_at, deactivation_reason, created_at, updated_at FROM users WHERE id = $1",
            args![id],
        )
        .await?;
    match row {
        Some(row) => Ok(Some(user_from_row(conn, &row).await?)),
        None => Ok(None),
    }
}

/// The users of an organization, oldest first.
pub async fn users(
    conn: &mut Conn<'_>,
    org_id: OrgId,
    page: Page<UserId>,
) -> Result<Vec<User>, cairn_log::DbError> {
    let (sql, args) = page_sql(
        "SELECT id, org_id, email, name, status, invited_by, erased_at, restricted_at, deactivated_at, deactivation_reason, created_at, updated_at FROM users",
        vec![("org_id =", org_id.into_arg())],
        page.after.map(IntoArg::into_arg),
        page.limit,
    );
    let rows = conn.fetch_all(cairn_log::Sql::built(sql), args).await?;
    let mut users = Vec::with_capacity(rows.len());
    for row in &rows {
        users.push(user_from_row(conn, row).await?);
    }
    Ok(users)
}

/// The user of an organization with an email, if any.
pub async fn user_by_email(
    conn: &mut Conn<'_>,
    org_id: OrgId,
    email: &str,
) -> Result<Option<User>, cairn_log::DbError> {
    let row = conn
        .fetch_optional(
            "SELECT id, org_id, email, name, status, invited_by, erased_at, restricted_at, deactivated_at, deactivation_reason, created_at, updated_at FROM users WHERE org_id = $1 AND email = $2",
            args![org_id, email],
        )
        .await?;
    match row {
        Some(row) => Ok(Some(user_from_row(conn, &row).await?)),
        None => Ok(None),
    }
}

/// One invitation.
pub async fn invitation(
    conn: &mut Conn<'_>,
    id: InvitationId,
) -> Result<Option<Invitation>, cairn_log::DbError> {
    let sql = cairn_log::Sql::built(format!(
        "SELECT {INVITATION_COLUMNS} FROM invitations WHERE id = $1"
    ));
    conn.fetch_optional(sql, args![id])
        .await?
        .as_ref()
        .map(invitation_from_row)
        .transpose()
}

/// The invitation a token belongs to.
pub async fn invitation_by_token_hash(
    conn: &mut Conn<'_>,
    token_hash: &str,
) -> Result<Option<Invitation>, cairn_log::DbError> {
    let sql = cairn_log::Sql::built(format!(
        "SELECT {INVITATION_COLUMNS} FROM invitations WHERE token_hash = $1"
    ));
    conn.fetch_optional(sql, args![token_hash])
        .await?
        .as_ref()
        .map(invitation_from_row)
        .transpose()
}

/// The invitations of an organization, oldest first.
pub async fn invitations(
    conn: &mut Conn<'_>,
    org_id: OrgId,
    page: Page<InvitationId>,
) -> Result<Vec<Invitation>, cairn_log::DbError> {
    let (sql, args) = page_sql(
        &format!("SELECT {INVITATION_COLUMNS} FROM invitations"),
        vec![("org_id =", org_id.into_arg())],
        page.after.map(IntoArg::into_arg),
        page.limit,
    );
    let rows = conn.fetch_all(cairn_log::Sql::built(sql), args).await?;
    rows.iter().map(invitation_from_row).collect()
}

/// The invitations of one user, oldest first.
pub async fn invitations_of_user(
    conn: &mut Conn<'_>,
    user_id: UserId,
) -> Result<Vec<Invitation>, cairn_log::DbError> {
    let sql = cairn_log::Sql::built(format!(
        "SELECT {INVITATION_COLUMNS} FROM invitations WHERE user_id = $1 ORDER BY id"
    ));
    let rows = conn.fetch_all(sql, args![user_id]).await?;
    rows.iter().map(invitation_from_row).collect()
}

/// A delivery of this invitation that has not finished yet, if there is one.
pub async fn delivery_in_progress(
    conn: &mut Conn<'_>,
    invitation_id: InvitationId,
) -> Result<Option<WorkflowId>, cairn_log::DbError> {
    let sql = cairn_log::dialect(
        conn.backend(),
        "SELECT id FROM workflow_runs WHERE kind = $1 AND status IN ('running', 'compensating') \
         AND json_extract(input, '$.invitation_id') = $2 LIMIT 1",
        "SELECT id FROM workflow_runs WHERE kind = $1 AND status IN ('running', 'compensating') \
         AND input->>'invitation_id' = $2 LIMIT 1",
    );
    let row = conn
        .fetch_optional(
            sql,
            args![
                crate::invitations::DELIVERY_WORKFLOW,
                invitation_id.to_string()
            ],
        )
        .await?;
    row.map(|row| row.get::<WorkflowId>("id")).transpose()
}

/// A delivery to this user that has not finished yet, if there is one.
pub async fn delivery_in_progress_for_user(
    conn: &mut Conn<'_>,
    user_id: UserId,
) -> Result<Option<WorkflowId>, cairn_log::DbError> {
    let sql = cairn_log::dialect(
        conn.backend(),
        "SELECT id FROM workflow_runs WHERE kind = $1 AND status IN ('running', 'compensating') \
         AND json_extract(input, '$.user_id') = $2 LIMIT 1",
        "SELECT id FROM workflow_runs WHERE kind = $1 AND status IN ('running', 'compensating') \
         AND input->>'user_id' = $2 LIMIT 1",
    );
    let row = conn
        .fetch_optional(
            sql,
            args![crate::invitations::DELIVERY_WORKFLOW, user_id.to_string()],
        )
        .await?;
    row.map(|row| row.get::<WorkflowId>("id")).transpose()
}

/// Where a person stands for their tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    pub org_id: OrgId,
    /// Why their tokens do not work: `deactivated`, `erased` or `restricted`.
    pub withdrawn: Option<&'static str>,
    /// They accepted their invitation (or were created active).
    pub joined: bool,
    pub roles: Vec<Role>,
}

/// Where the person `id` stands, if cairn holds them.
pub async fn standing(
    conn: &mut Conn<'_>,
    id: UserId,
) -> Result<Option<Standing>, cairn_log::DbError> {
    let Some(user) = user(conn, id).await? else {
        return Ok(None);
    };
    let withdrawn = if user.erased_at.is_some() {
        Some("erased")
    } else if user.restricted_at.is_some() {
        Some("restricted")
    } else if user.deactivated_at.is_some() {
        Some("deactivated")
    } else {
        None
    };
    Ok(Some(Standing {
        org_id: user.org_id,
        withdrawn,
        joined: user.status == "active",
        roles: user.roles,
    }))
}
