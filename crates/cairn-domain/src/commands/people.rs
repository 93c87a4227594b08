//! A person's life in their organization after they joined: their roles changed, and
//! their access withdrawn (deactivated) and given back (reactivated).
//!
//! An organization always keeps an active admin: a change that would leave it without
//! one is refused, so that nobody but a platform administrator could manage it again.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use cairn_dispatch::EventPayload;
use cairn_log::{AppendRequest, BoxFuture, Tx};
use cairn_policy::Action;
use cairn_types::UserId;
use schemars::JsonSchema;

use super::subjects::{checked_reason, existing_user};
use super::{
    Changes, Command, CommandContext, CommandError, Domain, invalid, parse_roles, stream_type,
};
use crate::events::{UserDeactivated, UserReactivated, UserRolesChanged, stream};
use crate::model::Role;
use crate::queries;

/// A person's new roles: the whole set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RolesRequest {
    /// One or more of admin, clinician, coordinator, viewer, each once.
    #[schemars(with = "Vec<Role>", length(min = 1), extend("uniqueItems" = true))]
    pub roles: Vec<String>,
}

/// Where a person stands after a change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PersonStanding {
    pub user_id: UserId,
    /// `active` or `deactivated`.
    pub status: String,
    pub roles: Vec<Role>,
}

/// Asks the policy whether the principal may manage `user`; to anyone of another
/// tenant the person does not exist.
fn authorize_person(ctx: &CommandContext, user: &queries::User) -> Result<(), CommandError> {
    ctx.authorize_found(
        Action::ManagePeople(user.org_id),
        user.org_id,
        "user",
        user.id.to_string(),
    )?;
    Ok(())
}

/// Refuses a change to someone who has not joined, or whose data is gone.
fn joined(user: &queries::User, what: &str) -> Result<(), CommandError> {
    let refuse = |why: String| Err(CommandError::InvalidState { message: why });
    if user.erased_at.is_some() {
        return refuse(format!(
            "user {} was erased: {what} is not possible",
            user.id
        ));
    }
    if user.restricted_at.is_some() {
        return refuse(format!(
            "user {} is restricted until their erasure: {what} is not possible",
            user.id
        ));
    }
    if user.status != "active" {
        return refuse(format!(
            "user {} has not accepted their invitation yet: {what} is not possible; \
             revoke the invitation and invite them again instead",
            user.id
        ));
    }
    Ok(())
}

/// Refuses a change that would leave the organization without an active admin.
async fn keeps_an_admin(tx: &mut Tx, user: &queries::User, what: &str) -> Result<(), CommandError> {
    let others = queries::users(
        &mut tx.conn(),
        user.org_id,
        queries::Page {
            after: None,
            limit: 10_000,
        },
    )
    .await?
    .into_iter()
    .filter(|other| {
        other.id != user.id
            && other.status == "active"
            && other.deactivated_at.is_none()
            && other.erased_at.is_none()
            && other.restricted_at.is_none()
            && other.roles.contains(&Role::Admin)
    })
    .count();
    if others == 0 {
        return Err(CommandError::Conflict(invalid(
            "user",
            format!(
                "user {} is the organization's only active admin: {what} would leave nobody to manage it; make someone else an admin first",
                user.id
            ),
        )));
    }
    Ok(())
}

fn standing(user: &queries::User, deactivated: bool, roles: Vec<Role>) -> PersonStanding {
    PersonStanding {
        user_id: user.id,
        status: if deactivated { "deactivated" } else { "active" }.to_owned(),
        roles,
    }
}

struct ChangeRoles {
    user_id: UserId,
    request: RolesRequest,
    roles: Vec<Role>,
}

impl Command for ChangeRoles {
    const NAME: &'static str = "change_roles";
    type Response = PersonStanding;

    fn request(&self) -> Value {
        json!({ "user_id": self.user_id, "request": self.request })
    }

    fn authorize<'t>(
        &'t self,
        ctx: &'t CommandContext,
        tx: &'t mut Tx,
    ) -> BoxFuture<'t, Result<(), CommandError>> {
        Box::pin(async move { authorize_person(ctx, &existing_user(tx, self.user_id).await?) })
    }

    fn decide<'t>(
        &'t self,
        _domain: &'t Domain,
        ctx: &'t CommandContext,
        tx: &'t mut Tx,
    ) -> BoxFuture<'t, Result<Changes<PersonStanding>, CommandError>> {
        Box::pin(async move {
            let user = existing_user(tx, self.user_id).await?;
            joined(&user, "changing their roles")?;
            let mut roles = self.roles.clone();
            roles.sort();
            let mut before = user.roles.clone();
            before.sort();
            let deactivated = user.deactivated_at.is_some();
            if roles == before {
                return Ok(Changes::answer(standing(&user, deactivated, roles)));
            }
            if before.contains(&Role::Admin) && !roles.contains(&Role::Admin) && !deactivated {
                keeps_an_admin(tx, &user, "taking away their admin role").await?;
            }
            let changed = UserRolesChanged {
                org_id: user.org_id,
                roles: roles.clone(),
                changed_by: ctx.actor(),
            };
            Ok(
                Changes::answer(standing(&user, deactivated, roles)).append(AppendRequest::new(
                    stream_type(stream::USER),
                    user.id.into(),
                    vec![changed.to_event(ctx.metadata(user.org_id))],
                )),
            )
        })
    }
}

struct Deactivate {
    user_id: UserId,
    reason: String,
}

impl Command for Deactivate {
    const NAME: &'static str = "deactivate_user";
    type Response = PersonStanding;

    fn request(&self) -> Value {
        json!({ "user_id": self.user_id, "reason": self.reason })
    }

    fn authorize<'t>(
        &'t self,
        ctx: &'t CommandContext,
        tx: &'t mut Tx,
    ) -> BoxFuture<'t, Result<(), CommandError>> {
        Box::pin(async move { authorize_person(ctx, &existing_user(tx, self.user_id).await?) })
    }

    fn decide<'t>(
        &'t self,
        _domain: &'t Domain,
        ctx: &'t CommandContext,
        tx: &'t mut Tx,
    ) -> BoxFuture<'t, Result<Changes<PersonStanding>, CommandError>> {
        Box::pin(async move {
            let user = existing_user(tx, self.user_id).await?;
            joined(&user, "deactivating them")?;
            if user.deactivated_at.is_some() {
                return Ok(Changes::answer(standing(&user, true, user.roles.clone())));
            }
            if ctx.principal.user_id() == Some(user.id) {
                return Err(CommandError::Conflict(invalid(
                    "user",
                    "you cannot deactivate yourself: ask another admin",
                )));
            }
            if user.roles.contains(&Role::Admin) {
                keeps_an_admin(tx, &user, "deactivating them").await?;
            }
            let deactivated = UserDeactivated {
                org_id: user.org_id,
                reason: self.reason.clone(),
                deactivated_by: ctx.actor(),
            };
            Ok(
                Changes::answer(standing(&user, true, user.roles.clone())).append(
                    AppendRequest::new(
                        stream_type(stream::USER),
                        user.id.into(),
                        vec![deactivated.to_event(ctx.metadata(user.org_id))],
                    ),
                ),
            )
        })
    }
}

struct Reactivate {
    user_id: UserId,
}

impl Command for Reactivate {
    const NAME: &'static str = "reactivate_user";
    type Response = PersonStanding;

    fn request(&self) -> Value {
        json!({ "user_id": self.user_id })
    }

    fn authorize<'t>(
        &'t self,
        ctx: &'t CommandContext,
        tx: &'t mut Tx,
    ) -> BoxFuture<'t, Result<(), CommandError>> {
        Box::pin(async move { authorize_person(ctx, &existing_user(tx, self.user_id).await?) })
    }

    fn decide<'t>(
        &'t self,
        _domain: &'t Domain,
        ctx: &'t CommandContext,
        tx: &'t mut Tx,
    ) -> BoxFuture<'t, Result<Changes<PersonStanding>, CommandError>> {
        Box::pin(async move {
            let user = existing_user(tx, self.user_id).await?;
            joined(&user, "reactivating them")?;
            if user.deactivated_at.is_none() {
                return Ok(Changes::answer(standing(&user, false, user.roles.clone())));
            }
            let reactivated = UserReactivated {
                org_id: user.org_id,
                reactivated_by: ctx.actor(),
            };
            Ok(
                Changes::answer(standing(&user, false, user.roles.clone())).append(
                    AppendRequest::new(
                        stream_type(stream::USER),
                        user.id.into(),
                        vec![reactivated.to_event(ctx.metadata(user.org_id))],
                    ),
                ),
            )
        })
    }
}

impl Domain {
    /// Gives a person who has joined a new set of roles. Their tokens are honoured for
    /// the roles they still hold: a role taken away stops working at once, a role
    /// given works with their next token.
    pub async fn change_roles(
        &self,
        ctx: &CommandContext,
        user_id: UserId,
        request: &RolesRequest,
    ) -> Result<PersonStanding, CommandError> {
        let mut errors = Vec::new();
        let roles = parse_roles("roles", &request.roles, &mut errors);
        if !errors.is_empty() {
            return Err(CommandError::Invalid(errors));
        }
        self.execute(
            ctx,
            ChangeRoles {
                user_id,
                request: request.clone(),
                roles,
            },
        )
        .await
    }

    /// Deactivates a person: their tokens stop working in the API, the feed and the
    /// console. Deactivating someone deactivated returns where they stand.
    pub async fn deactivate_user(
        &self,
        ctx: &CommandContext,
        user_id: UserId,
        reason: &str,
    ) -> Result<PersonStanding, CommandError> {
        let reason = checked_reason(reason)?;
        self.execute(ctx, Deactivate { user_id, reason }).await
    }

    /// Reactivates a deactivated person: their tokens work again.
    pub async fn reactivate_user(
        &self,
        ctx: &CommandContext,
        user_id: UserId,
    ) -> Result<PersonStanding, CommandError> {
        self.execute(ctx, Reactivate { user_id }).await
    }
}
