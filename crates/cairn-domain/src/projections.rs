//! The handlers: the only code that writes the onboarding projections.
//!
//! Every handler is idempotent (upserts keyed by the event's ids, times taken from the
//! event), so replaying or re-dispatching an event leaves the same rows.

use async_trait::async_trait;
use serde_json::Value;

use cairn_dispatch::{
    Handler, HandlerError, ProjectionTable, Projections, ReadFuture, RegistryBuilder, TypedView,
    payload,
};
use cairn_log::{Conn, RecordedEvent, args};
use cairn_types::{InvitationId, OrgId, StreamId, UserId};

use crate::events::{
    BootstrapCompleted, BootstrapFailed, BootstrapInitiated, DirectCareSettingsUpdated,
    InvitationAccepted, InvitationExpired, InvitationRefused, InvitationResent, InvitationRevoked,
    InvitationSent, OrganizationCreated, OrganizationDeactivated, RoleAssigned, UserActivated,
    UserAddressCorrected, UserCreated, UserDeactivated, UserErased, UserInvited, UserReactivated,
    UserRestricted, UserRolesChanged, stream,
};

macro_rules! handler {
    ($name:ident, $payload:ty, |$event:ident, $data:ident, $p:ident| $body:block) => {
        struct $name;

        #[async_trait]
        impl Handler for $name {
            async fn handle(
                &self,
                $event: &RecordedEvent,
                $p: &mut Projections<'_>,
            ) -> Result<(), HandlerError> {
                let $data: $payload = payload($event)?;
                let () = $body;
                Ok(())
            }
        }
    };
}

fn json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// Fails the event when an update found no row: the stream's first event is missing.
fn require_row(changed: u64, what: &str, event: &RecordedEvent) -> Result<(), HandlerError> {
    if changed == 0 {
        return Err(HandlerError::failed(format!(
            "{what} {} does not exist: {} cannot apply to it",
            event.stream_id, event.event_type
        )));
    }
    Ok(())
}

handler!(OnBootstrapInitiated, BootstrapInitiated, |event, e, p| {
    p.execute(
        "INSERT INTO organizations (id, name, slug, sender_domain, sender_address, status, is_active,
             direct_care_settings, workflow_id, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, 'bootstrapping', FALSE, $6, $7, $8, $8)
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, slug = excluded.slug,
             sender_domain = excluded.sender_domain, sender_address = excluded.sender_address,
             direct_care_settings = excluded.direct_care_settings, workflow_id = excluded.workflow_id",
        args![
            event.stream_id,
            e.name.as_str(),
            e.slug.as_str(),
            e.sender_domain.as_str(),
            e.sender_address.as_str(),
            json(&e.direct_care_settings),
            e.workflow_id,
            event.created_at,
        ],
    )
    .await?;
});

handler!(OnOrganizationCreated, OrganizationCreated, |event, e, p| {
    p.execute(
        "INSERT INTO organizations (id, name, slug, sender_domain, sender_address, status, is_active,
             direct_care_settings, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, 'bootstrapping', TRUE, $6, $7, $7)
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, slug = excluded.slug,
             sender_domain = excluded.sender_domain, sender_address = excluded.sender_address,
             direct_care_settings = excluded.direct_care_settings, is_active = TRUE,
             updated_at = excluded.updated_at",
        args![
            event.stream_id,
            e.name.as_str(),
            e.slug.as_str(),
            e.sender_domain.as_str(),
            e.sender_address.as_str(),
            json(&e.direct_care_settings),
            event.created_at,
        ],
    )
    .await?;
});

handler!(
    OnDirectCareSettingsUpdated,
    DirectCareSettingsUpdated,
    |event, e, p| {
        let changed = p
            .execute(
                "UPDATE organizations SET direct_care_settings = $2, updated_at = $3 WHERE id = $1",
                args![event.stream_id, json(&e.settings), event.created_at],
            )
            .await?;
        require_row(changed, "organization", event)?;
    }
);

handler!(OnBootstrapCompleted, BootstrapCompleted, |event, _e, p| {
    let changed = p
        .execute(
            "UPDATE organizations SET status = 'active', updated_at = $2 WHERE id = $1",
            args![event.stream_id, event.created_at],
        )
        .await?;
    require_row(changed, "organization", event)?;
});

handler!(OnBootstrapFailed, BootstrapFailed, |event, e, p| {
    let changed = p
        .execute(
            "UPDATE organizations SET status = 'failed', failure_reason = $2, updated_at = $3 WHERE id = $1",
            args![event.stream_id, format!("step {}: {}", e.step, e.reason), event.created_at],
        )
        .await?;
    require_row(changed, "organization", event)?;
});

handler!(
    OnOrganizationDeactivated,
    OrganizationDeactivated,
    |event, _e, p| {
        let changed = p
        .execute(
            "UPDATE organizations SET is_active = FALSE, deactivated_at = $2, updated_at = $2 WHERE id = $1",
            args![event.stream_id, event.created_at],
        )
        .await?;
        require_row(changed, "organization", event)?;
    }
);

handler!(OnUserCreated, UserCreated, |event, e, p| {
    p.execute(
        "INSERT INTO users (id, org_id, email, name, status, created_at, updated_at)
         VALUES ($1, $2, $3, $4, 'active', $5, $5)
         ON CONFLICT (id) DO UPDATE SET org_id = excluded.org_id, email = excluded.email,
             name = excluded.name, status = 'active', updated_at = excluded.updated_at",
        args![
            event.stream_id,
            e.org_id,
            e.email.known().map_or("", |email| email.as_str()),
            e.name.known().map_or("", |name| name.as_str()),
            event.created_at
        ],
    )
    .await?;
});

handler!(OnUserInvited, UserInvited, |event, e, p| {
    p.execute(
        "INSERT INTO users (id, org_id, email, name, status, created_at, updated_at, invited_by)
         VALUES ($1, $2, $3, $4, 'invited', $5, $5, $6)
         ON CONFLICT (id) DO UPDATE SET org_id = excluded.org_id, email = excluded.email,
             name = excluded.name, updated_at = excluded.updated_at,
             invited_by = excluded.invited_by",
        args![
            event.stream_id,
            e.org_id,
            e.email.known().map_or("", |email| email.as_str()),
            e.name.known().map_or("", |name| name.as_str()),
            event.created_at,
            e.invited_by.as_ref().map(ToString::to_string)
        ],
    )
    .await?;
});

/// The projection tables that hold people's names and addresses in the clear: what an
/// erasure or a restriction empties of them, and what is rebuilt after it (see
/// `Db::scrub_erased`).
pub(crate) const PERSONAL_TABLES: &[&str] = &["users", "invitations"];

// The tombstone of an erased person: their rows stay (ids, status, roles: what the
// organization's records need), with no name or address.
handler!(OnUserErased, UserErased, |event, _e, p| {
    let changed = p
        .execute(
            "UPDATE users SET email = '', name = '', erased_at = $2, updated_at = $2 WHERE id = $1",
            args![event.stream_id, event.created_at],
        )
        .await?;
    require_row(changed, "user", event)?;
    p.execute(
        "UPDATE invitations SET email = '', erased_at = $2, updated_at = $2 WHERE user_id = $1",
        args![event.stream_id, event.created_at],
    )
    .await?;
});

// A restricted person's rows keep no name or address either: while restricted their
// data lives only sealed in the log, under a key that opens it for no one's read.
handler!(OnUserRestricted, UserRestricted, |event, _e, p| {
    let changed = p
        .execute(
            "UPDATE users SET email = '', name = '', restricted_at = $2, updated_at = $2 WHERE id = $1",
            args![event.stream_id, event.created_at],
        )
        .await?;
    require_row(changed, "user", event)?;
    p.execute(
        "UPDATE invitations SET email = '', restricted_at = $2, updated_at = $2 WHERE user_id = $1",
        args![event.stream_id, event.created_at],
    )
    .await?;
});

handler!(OnRoleAssigned, RoleAssigned, |event, e, p| {
    p.execute(
        "INSERT INTO role_assignments (user_id, role, org_id, assigned_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (user_id, role) DO NOTHING",
        args![event.stream_id, e.role.as_str(), e.org_id, event.created_at],
    )
    .await?;
});

handler!(OnUserActivated, UserActivated, |event, _e, p| {
    let changed = p
        .execute(
            "UPDATE users SET status = 'active', updated_at = $2 WHERE id = $1",
            args![event.stream_id, event.created_at],
        )
        .await?;
    require_row(changed, "user", event)?;
});

handler!(OnInvitationSent, InvitationSent, |event, e, p| {
    p.execute(
        "INSERT INTO invitations (id, org_id, user_id, email, roles, status, token_hash, expires_at,
             send_count, message_id, last_sent_at, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8, $9, $10, $10, $10)
         ON CONFLICT (id) DO UPDATE SET org_id = excluded.org_id, user_id = excluded.user_id,
             email = excluded.email, roles = excluded.roles, token_hash = excluded.token_hash,
             expires_at = excluded.expires_at, send_count = excluded.send_count,
             message_id = excluded.message_id, last_sent_at = excluded.last_sent_at,
             updated_at = excluded.updated_at",
        args![
            event.stream_id,
            e.org_id,
            e.user_id,
            e.email.known().map_or("", |email| email.as_str()),
            json(&e.roles),
            e.token_hash.as_str(),
            e.expires_at,
            e.send_number,
            e.message_id.as_str(),
            event.created_at,
        ],
    )
    .await?;
});

handler!(OnInvitationResent, InvitationResent, |event, e, p| {
    // A resend reopens an expired or refused invitation, never an accepted or revoked
    // one.
    let changed = p
        .execute(
            "UPDATE invitations SET status = 'pending', token_hash = $2, expires_at = $3, send_count = $4,
                 message_id = $5, last_sent_at = $6, expired_at = NULL, refused_at = NULL,
                 delivery_reply = NULL, updated_at = $6
             WHERE id = $1 AND status IN ('pending', 'expired', 'refused')",
            args![event.stream_id, e.token_hash.as_str(), e.expires_at, e.send_number, e.message_id.as_str(), event.created_at],
        )
        .await?;
    if changed == 0 {
        let closed = p
            .fetch_optional(
                "SELECT status FROM invitations WHERE id = $1 AND status IN ('accepted', 'revoked')",
                args![event.stream_id],
            )
            .await?;
        if closed.is_none() {
            require_row(changed, "invitation", event)?;
        }
    }
});

handler!(OnInvitationAccepted, InvitationAccepted, |event, _e, p| {
    let changed = p
        .execute(
            "UPDATE invitations SET status = 'accepted', accepted_at = $2, updated_at = $2 WHERE id = $1",
            args![event.stream_id, event.created_at],
        )
        .await?;
    require_row(changed, "invitation", event)?;
});

handler!(OnInvitationRevoked, InvitationRevoked, |event, e, p| {
    let changed = p
        .execute(
            "UPDATE invitations SET status = 'revoked', revoked_at = $2, revoke_reason = $3, updated_at = $2 WHERE id = $1",
            args![event.stream_id, event.created_at, e.reason.as_str()],
        )
        .await?;
    require_row(changed, "invitation", event)?;
});

handler!(OnInvitationExpired, InvitationExpired, |event, e, p| {
    let changed = p
        .execute(
            "UPDATE invitations SET status = 'expired', expired_at = $2, updated_at = $3 WHERE id = $1",
            args![event.stream_id, e.expired_at, event.created_at],
        )
        .await?;
    require_row(changed, "invitation", event)?;
});

// A refused first send is where the invitation's row begins, with the address the
// person has now; a refused resend closes the invitation until a corrected address or a
// withdrawal. An accepted or revoked invitation stays as it is.
handler!(OnInvitationRefused, InvitationRefused, |event, e, p| {
    p.execute(
        "INSERT INTO invitations (id, org_id, user_id, email, roles, status, token_hash, expires_at,
             send_count, message_id, last_sent_at, refused_at, delivery_reply, created_at, updated_at,
             erased_at, restricted_at)
         SELECT $1, $2, $3, users.email, $4, 'refused', $5, $6, $7, $8, $6, $6, $9, $6, $6,
             users.erased_at, users.restricted_at
         FROM users WHERE users.id = $3
         ON CONFLICT (id) DO UPDATE SET status = 'refused', send_count = excluded.send_count,
             message_id = excluded.message_id, last_sent_at = excluded.last_sent_at,
             refused_at = excluded.refused_at, delivery_reply = excluded.delivery_reply,
             updated_at = excluded.updated_at
         WHERE invitations.status IN ('pending', 'expired', 'refused')",
        args![
            event.stream_id,
            e.org_id,
            e.user_id,
            json(&e.roles),
            // Never a token's hash (64 hexadecimal digits): no link opens it.
            format!("refused:{}", event.stream_id),
            event.created_at,
            e.send_number,
            e.message_id.as_str(),
            e.reply.as_str(),
        ],
    )
    .await?;
});

// The corrected address replaces the old one on the person and on their open
// invitations; an erased or restricted person's rows keep none.
handler!(
    OnUserAddressCorrected,
    UserAddressCorrected,
    |event, e, p| {
        let email = e.email.known().map_or("", |email| email.as_str());
        let changed = p
            .execute(
                "UPDATE users SET email = $2, updated_at = $3
             WHERE id = $1 AND erased_at IS NULL AND restricted_at IS NULL",
                args![event.stream_id, email, event.created_at],
            )
            .await?;
        if changed == 1 {
            p.execute(
                "UPDATE invitations SET email = $2, updated_at = $3
             WHERE user_id = $1 AND status IN ('pending', 'expired', 'refused')",
                args![event.stream_id, email, event.created_at],
            )
            .await?;
        }
    }
);

handler!(OnUserRolesChanged, UserRolesChanged, |event, e, p| {
    p.execute(
        "DELETE FROM role_assignments WHERE user_id = $1",
        args![event.stream_id],
    )
    .await?;
    for role in &e.roles {
        p.execute(
            "INSERT INTO role_assignments (user_id, role, org_id, assigned_at) VALUES ($1, $2, $3, $4)",
            args![event.stream_id, role.as_str(), e.org_id, event.created_at],
        )
        .await?;
    }
    let changed = p
        .execute(
            "UPDATE users SET updated_at = $2 WHERE id = $1",
            args![event.stream_id, event.created_at],
        )
        .await?;
    require_row(changed, "user", event)?;
});

handler!(OnUserDeactivated, UserDeactivated, |event, e, p| {
    let changed = p
        .execute(
            "UPDATE users SET deactivated_at = $2, deactivation_reason = $3, updated_at = $2 WHERE id = $1",
            args![event.stream_id, event.created_at, e.reason.as_str()],
        )
        .await?;
    require_row(changed, "user", event)?;
});

handler!(OnUserReactivated, UserReactivated, |event, _e, p| {
    let changed = p
        .execute(
            "UPDATE users SET deactivated_at = NULL, deactivation_reason = NULL, updated_at = $2 WHERE id = $1",
            args![event.stream_id, event.created_at],
        )
        .await?;
    require_row(changed, "user", event)?;
});

/// The onboarding projection tables.
pub const TABLES: [ProjectionTable; 4] = [
    ProjectionTable {
        name: "organizations",
        key: &["id"],
    },
    ProjectionTable {
        name: "users",
        key: &["id"],
    },
    ProjectionTable {
        name: "role_assignments",
        key: &["user_id", "role"],
    },
    ProjectionTable {
        name: "invitations",
        key: &["id"],
    },
];

/// Registers the organization, user and invitation routers and their projections.
///
/// Which routes hold a stream behind a failed event (see
/// [`cairn_dispatch::RouterBuilder::hold_streams`]):
/// - `invitation` holds: an invitation is a state machine (sent, resent, then accepted,
///   revoked or expired), and `invitation.resent` makes it pending again with a new
///   token. Applied late, after a retry, it would reopen an accepted or revoked
///   invitation with a live link. Its later events wait for the failed one instead.
/// - `user` holds: `user.created` and `user.invited` replace the person's name and
///   email; applied late, they would put back an older name over a newer one.
/// - `organization` does not: its usual failure is "the organization does not exist
///   yet" (an event appended before the one that creates it), which is fixed by
///   appending the creating event to the same stream and then retrying. A hold would
///   keep that creating event from ever applying. Its other events replace one value
///   each (the settings, the status), and the bootstrap's commands never append on
///   top of a failure (they require every event applied).
pub fn routes(builder: RegistryBuilder) -> RegistryBuilder {
    let builder = builder
        .router(stream::ORGANIZATION, |r| {
            r.event::<BootstrapInitiated>(OnBootstrapInitiated)
                .event::<OrganizationCreated>(OnOrganizationCreated)
                .event::<DirectCareSettingsUpdated>(OnDirectCareSettingsUpdated)
                .event::<BootstrapCompleted>(OnBootstrapCompleted)
                .event::<BootstrapFailed>(OnBootstrapFailed)
                .event::<OrganizationDeactivated>(OnOrganizationDeactivated)
        })
        .router(stream::USER, |r| {
            r.event::<UserCreated>(OnUserCreated)
                .event::<UserInvited>(OnUserInvited)
                .event::<RoleAssigned>(OnRoleAssigned)
                .event::<UserActivated>(OnUserActivated)
                .event::<UserErased>(OnUserErased)
                .event::<UserRestricted>(OnUserRestricted)
                .event::<UserAddressCorrected>(OnUserAddressCorrected)
                .event::<UserRolesChanged>(OnUserRolesChanged)
                .event::<UserDeactivated>(OnUserDeactivated)
                .event::<UserReactivated>(OnUserReactivated)
                .hold_streams()
        })
        .router(stream::INVITATION, |r| {
            r.event::<InvitationSent>(OnInvitationSent)
                .event::<InvitationResent>(OnInvitationResent)
                .event::<InvitationAccepted>(OnInvitationAccepted)
                .event::<InvitationRevoked>(OnInvitationRevoked)
                .event::<InvitationExpired>(OnInvitationExpired)
                .event::<InvitationRefused>(OnInvitationRefused)
                .hold_streams()
        });
    let builder = builder
        .view(
            stream::ORGANIZATION,
            TypedView::new("organization", organization_view),
        )
        .view(stream::USER, TypedView::new("user", user_view))
        .view(
            stream::INVITATION,
            TypedView::new("invitation", invitation_view),
        );
    TABLES
        .into_iter()
        .fold(builder, |builder, table| builder.projection(table))
}

fn organization_view<'a>(
    conn: &'a mut Conn<'_>,
    id: StreamId,
) -> ReadFuture<'a, crate::queries::Organization> {
    Box::pin(crate::queries::organization(
        conn,
        OrgId::from_uuid(id.as_uuid()),
    ))
}

fn user_view<'a>(conn: &'a mut Conn<'_>, id: StreamId) -> ReadFuture<'a, crate::queries::User> {
    Box::pin(crate::queries::user(conn, UserId::from_uuid(id.as_uuid())))
}

fn invitation_view<'a>(
    conn: &'a mut Conn<'_>,
    id: StreamId,
) -> ReadFuture<'a, crate::queries::Invitation> {
    Box::pin(crate::queries::invitation(
        conn,
        InvitationId::from_uuid(id.as_uuid()),
    ))
}
