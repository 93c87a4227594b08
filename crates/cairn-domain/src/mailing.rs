//! Sending an invitation and recording that it was sent: the two steps every
//! invitation goes through, in the bootstrap saga and in a later invite or resend.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use cairn_dispatch::EventPayload;
use cairn_log::{AppendRequest, Expected};
use cairn_mail::{Mailer, OutboundMessage};
use cairn_types::{InvitationId, OrgId, StreamType, UserId};
use cairn_workflow::{Exhaustion, RetryPolicy, StepContext, StepError};

use crate::events::{InvitationRefused, InvitationResent, InvitationSent, stream};
use crate::model::{Email, Name, Role};
use crate::tokens::{TokenKey, token_hash};

/// The kind of the workflow that expires an invitation.
pub const EXPIRY_WORKFLOW: &str = "invitation_expiry";

/// The longest wait between two tries of a send: once the mail server is back, every
/// waiting send goes out within it (and its run finishes within a minute).
pub const MAIL_RETRY_MAX_WAIT: Duration = Duration::from_secs(45);

/// How mail steps are retried: a refused connection, a timeout or a 4xx reply (the
/// server says "not now") is tried again with growing waits (2 s, 4 s, … up to
/// [`MAIL_RETRY_MAX_WAIT`]) for at least `window`; then the run pauses, keeping what it
/// did, for an operator to resume once mail flows again. A 5xx reply (the server says
/// "never") fails the step at once, and its run compensates.
pub fn mail_retry(window: Duration) -> RetryPolicy {
    RetryPolicy::for_window(
        Duration::from_secs(2),
        2.0,
        MAIL_RETRY_MAX_WAIT,
        window,
        Exhaustion::Pause,
    )
}

/// What a send does when the mail server refuses the email for good (a 5xx reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The step fails, and its run compensates (the bootstrap's invitations).
    Fail,
    /// The refusal is the step's result, recorded by the next step as
    /// `invitation.refused` for the organization to correct or withdraw (an invitation
    /// sent on its own).
    Record,
}

/// Everything needed to send one invitation email.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mailing {
    pub invitation_id: InvitationId,
    pub user_id: UserId,
    pub org_id: OrgId,
    pub org_name: Name,
    pub sender_address: Email,
    /// The address and name the bootstrap planned, kept only in memory: the send
    /// reads them from the person's projection row, so a run's stored input carries
    /// no personal data and an erased person is never mailed. Inputs stored by
    /// earlier releases may carry them; they are not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<Email>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Name>,
    pub roles: Vec<Role>,
    /// 1 for the first email, then 2, 3, … for each resend.
    pub send_number: u32,
    /// How long the link stays valid, in seconds.
    pub ttl_seconds: i64,
    /// The page the link points at; the token is added as `?token=`.
    pub accept_url: String,
}

/// What the send step records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sent {
    pub message_id: String,
    pub transport: String,
    pub detail: String,
    pub expires_at: DateTime<Utc>,
    /// True when an earlier, interrupted attempt had already delivered it.
    pub recovered: bool,
}

fn roles_text(roles: &[Role]) -> String {
    let names: Vec<&str> = roles.iter().map(|role| role.as_str()).collect();
    match names.as_slice() {
        [] => "a member".to_owned(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// The Message-ID of one send: stable across attempts, so an in-doubt retry can ask
/// whether it was already delivered.
pub fn message_id(mailing: &Mailing) -> String {
    format!(
        "invitation-{}-{}@{}",
        mailing.invitation_id,
        mailing.send_number,
        mailing.sender_address.address().domain()
    )
}

/// When a link sent at `now`, valid for `ttl_seconds`, stops working. A TTL that ends
/// outside the years 0 to 9999 is an error no retry can fix: past them chrono cannot
/// count, and RFC 3339 (how SQLite stores a time, and reads it back) cannot write them.
pub fn expires_at(now: DateTime<Utc>, ttl_seconds: i64) -> Result<DateTime<Utc>, StepError> {
    use chrono::Datelike as _;
    chrono::Duration::try_seconds(ttl_seconds)
        .and_then(|ttl| now.checked_add_signed(ttl))
        .filter(|at| (0..=9999).contains(&at.year()))
        .ok_or_else(|| {
            StepError::permanent(format!(
                "an invitation valid for {ttl_seconds} seconds from {} would expire outside \
                 the years 0 to 9999, the dates that can be stored: configure a shorter TTL",
                now.format("%Y-%m-%d %H:%M UTC")
            ))
        })
}

/// Sends the invitation email.
pub async fn send(
    mailer: &Arc<dyn Mailer>,
    tokens: &TokenKey,
    mailing: &Mailing,
    refusal: Refusal,
    ctx: &StepContext<'_>,
) -> Result<Value, StepError> {
    let expires_at = expires_at(ctx.now(), mailing.ttl_seconds)?;
    let token = tokens.token(mailing.invitation_id, mailing.send_number);
    let message_id = message_id(mailing);
    if ctx.in_doubt()
        && let Some(delivery) = mailer.delivered(&message_id).await.map_err(|e| {
            StepError::retryable(format!(
                "cannot tell whether {message_id} was delivered: {e}"
            ))
        })?
    {
        let sent = Sent {
            message_id,
            transport: delivery.transport.to_owned(),
            detail: delivery.detail,
            expires_at,
            recovered: true,
        };
        return serde_json::to_value(sent).map_err(|e| StepError::permanent(e.to_string()));
    }
    let (email, name) = match recipient(ctx.store(), mailing.user_id).await? {
        Recipient::To(email, name) => (email, name),
        Recipient::Withheld(why) => return Ok(skipped(mailing, why)),
    };
    let message = invitation_message(mailing, &email, &name, &token, expires_at);
    let started_at = chrono::Utc::now();
    let sent = {
        use tracing::Instrument as _;
        mailer
            .send(&message)
            .instrument(tracing::info_span!(
                "cairn.email",
                message_id = %message_id,
                transport = %mailer.describe(),
                correlation_id = %ctx.run().correlation_id,
            ))
            .await
    };
    ctx.store().db().record_span(
        cairn_log::SpanRecord::ending_now(
            ctx.run().correlation_id,
            cairn_log::SpanKind::Email,
            format!("invitation email to user {}", mailing.user_id),
            started_at,
        )
        .org(Some(mailing.org_id))
        .attribute("message_id", message_id.as_str())
        .attribute("via", mailer.describe())
        .attribute("attempt", ctx.attempt())
        .attribute("step", ctx.step())
        .error(
            sent.as_ref()
                .err()
                .map(|error| without_address(&error.to_string(), &email)),
        ),
    );
    match sent {
        Ok(delivery) => {
            let sent = Sent {
                message_id,
                transport: delivery.transport.to_owned(),
                detail: without_address(&delivery.detail, &email),
                expires_at,
                recovered: false,
            };
            serde_json::to_value(sent).map_err(|e| StepError::permanent(e.to_string()))
        }
        // What the server said may quote the address: it is cut out, so that failures,
        // spans and step records name the person only by id.
        Err(error) if error.permanent && refusal == Refusal::Record => Ok(json!({
            "invitation_id": mailing.invitation_id,
            "message_id": message_id,
            "refused": without_address(&error.to_string(), &email),
        })),
        Err(error) if error.permanent => Err(StepError::permanent(format!(
            "mail to user {} was refused for good by {}: {}",
            mailing.user_id,
            mailer.describe(),
            without_address(&error.to_string(), &email)
        ))),
        // The server may have taken it: the retry sends it again under the same
        // Message-ID, as after a crash, so that a receiver can drop the copy.
        Err(error) if error.in_doubt => Err(StepError::retryable(format!(
            "mail to user {} is in doubt: {}; the retry sends it again as {message_id}",
            mailing.user_id,
            without_address(&error.to_string(), &email)
        ))),
        Err(error) => Err(StepError::retryable(format!(
            "mail to user {} could not be sent through {}: {}",
            mailing.user_id,
            mailer.describe(),
            without_address(&error.to_string(), &email)
        ))),
    }
}

/// The invitation email to `email`, with its link's `token`.
pub(crate) fn invitation_message(
    mailing: &Mailing,
    email: &Email,
    name: &Name,
    token: &str,
    expires_at: DateTime<Utc>,
) -> OutboundMessage {
    OutboundMessage {
        message_id: message_id(mailing),
        from: mailing.sender_address.address().clone(),
        from_name: Some(mailing.org_name.to_string()),
        to: email.address().clone(),
        to_name: Some(name.to_string()),
        subject: format!("You're invited to join {} on cairn", mailing.org_name),
        text: format!(
            "Hello {name},\n\n\
             {org} has invited you to join them on cairn as {roles}.\n\n\
             Accept the invitation:\n{url}?token={token}\n\n\
             The link works once, and expires on {expires} UTC.\n\
             If you did not expect this email, you can ignore it.\n\n\
             -- {org}, via cairn\n",
            name = name,
            org = mailing.org_name,
            roles = roles_text(&mailing.roles),
            url = mailing.accept_url,
            expires = expires_at.format("%Y-%m-%d %H:%M"),
        ),
    }
}

/// Whom an invitation goes to, or why it goes to no one.
enum Recipient {
    To(Email, Name),
    /// The person was erased, or is restricted until their erasure: nothing is sent
    /// to them, and that is an outcome of the run, not a failure.
    Withheld(String),
}

/// The address and name an invitation goes to, read from the person's projection
/// row: never from a run's input, so that an erased person is never mailed.
async fn recipient(
    store: &cairn_dispatch::EventStore,
    user_id: UserId,
) -> Result<Recipient, StepError> {
    let mut reader = store.db().reader().await?;
    let user = crate::queries::user(&mut reader.conn(), user_id)
        .await?
        .ok_or_else(|| StepError::permanent(format!("user {user_id} does not exist")))?;
    if user.erased_at.is_some() {
        return Ok(Recipient::Withheld(format!(
            "user {user_id} was erased: no invitation goes to them"
        )));
    }
    if user.restricted_at.is_some() {
        return Ok(Recipient::Withheld(format!(
            "user {user_id} is restricted until their erasure: no invitation goes to them"
        )));
    }
    let email = Email::parse(&user.email)
        .map_err(|e| StepError::permanent(format!("user {user_id}'s address: {e}")))?;
    let name = Name::parse(&user.name)
        .map_err(|e| StepError::permanent(format!("user {user_id}'s name: {e}")))?;
    Ok(Recipient::To(email, name))
}

/// The result of a send or record step that had nothing to do, and why: the run goes
/// on (a bootstrap to its next invitation) and ends with it as its outcome.
pub(crate) fn skipped(mailing: &Mailing, why: String) -> Value {
    json!({ "invitation_id": mailing.invitation_id, "skipped": why })
}

/// Whether a send step's result says nothing was sent.
fn was_skipped(result: &Value) -> bool {
    result.get("skipped").is_some()
}

/// `text` with every copy of the address cut out (as the server wrote it, in any
/// case).
fn without_address(text: &str, email: &Email) -> String {
    let address = email.as_str().to_ascii_lowercase();
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut rest = 0;
    for (at, _) in lower.match_indices(&address) {
        out.push_str(&text[rest..at]);
        out.push_str("<recipient>");
        rest = at + address.len();
    }
    out.push_str(&text[rest..]);
    out
}

/// Records that the invitation was sent (or sent again), and for a first send starts
/// the workflow that will expire it, all in the step's transaction.
pub async fn record(
    tokens: &TokenKey,
    mailing: &Mailing,
    sent: &Value,
    ctx: &mut StepContext<'_>,
) -> Result<Value, StepError> {
    if was_skipped(sent) {
        return Ok(sent.clone());
    }
    if let Some(reply) = sent.get("refused").and_then(Value::as_str) {
        return record_refusal(mailing, sent, reply, ctx).await;
    }
    let sent: Sent = serde_json::from_value(sent.clone())
        .map_err(|e| StepError::permanent(format!("the send step's result cannot be read: {e}")))?;
    let token_hash = token_hash(&tokens.token(mailing.invitation_id, mailing.send_number));
    let mut metadata = ctx.metadata();
    metadata.org_id = Some(mailing.org_id);
    let stream_type = StreamType::parse(stream::INVITATION).expect("a valid stream type");
    let (event, expected) = if mailing.send_number == 1 {
        let email = match recipient(ctx.store(), mailing.user_id).await? {
            Recipient::To(email, _) => email,
            // Erased or restricted while the email was on its way: its token is never
            // recorded, so its link cannot be used.
            Recipient::Withheld(why) => {
                return Ok(skipped(
                    mailing,
                    format!("{why}; the email that went out will not work"),
                ));
            }
        };
        let payload = InvitationSent {
            org_id: mailing.org_id,
            user_id: mailing.user_id,
            email: email.into(),
            roles: mailing.roles.clone(),
            token_hash,
            expires_at: sent.expires_at,
            message_id: sent.message_id.clone(),
            send_number: 1,
        };
        (payload.to_event(metadata), Expected::NoStream)
    } else {
        let payload = InvitationResent {
            token_hash,
            expires_at: sent.expires_at,
            message_id: sent.message_id.clone(),
            send_number: mailing.send_number,
        };
        (payload.to_event(metadata), Expected::Any)
    };
    // Under the head lock, so that no revoke or acceptance can slip in between this
    // look and the append: a resend never reopens a closed invitation.
    let status = {
        let tx = ctx.tx()?;
        tx.lock_head().await?;
        crate::queries::invitation(&mut tx.conn(), mailing.invitation_id)
            .await?
            .map(|invitation| invitation.status)
    };
    if let Some(closed) = status
        .as_deref()
        .filter(|status| *status == "accepted" || *status == "revoked")
    {
        // The email went out, but its token is never recorded, so its link cannot be
        // used: the invitation stays as it is.
        return Ok(json!({
            "invitation_id": mailing.invitation_id,
            "superseded": format!("the invitation was {closed} while this email was being sent; its link will not work"),
        }));
    }
    // An expired invitation's expiry has finished, and a refused one's may have (or, if
    // its first email was refused, never started): the resend starts one.
    let was_expired =
        mailing.send_number > 1 && matches!(status.as_deref(), Some("expired") | Some("refused"));
    ctx.append_applied(
        AppendRequest::new(stream_type, mailing.invitation_id.into(), vec![event]).expect(expected),
    )
    .await?;
    let expiry = if mailing.send_number == 1 || was_expired {
        Some(
            ctx.start_workflow(
                EXPIRY_WORKFLOW,
                json!({ "invitation_id": mailing.invitation_id }),
            )
            .await?,
        )
    } else {
        None
    };
    Ok(json!({ "invitation_id": mailing.invitation_id, "expiry_workflow": expiry }))
}

/// Records that the mail server refused the email for good, unless the invitation was
/// accepted or revoked meanwhile.
async fn record_refusal(
    mailing: &Mailing,
    sent: &Value,
    reply: &str,
    ctx: &mut StepContext<'_>,
) -> Result<Value, StepError> {
    let status = {
        let tx = ctx.tx()?;
        tx.lock_head().await?;
        crate::queries::invitation(&mut tx.conn(), mailing.invitation_id)
            .await?
            .map(|invitation| invitation.status)
    };
    if let Some(closed) = status
        .as_deref()
        .filter(|status| *status == "accepted" || *status == "revoked")
    {
        return Ok(json!({
            "invitation_id": mailing.invitation_id,
            "superseded": format!("the invitation was {closed} while this email was being refused"),
        }));
    }
    let refused = InvitationRefused {
        org_id: mailing.org_id,
        user_id: mailing.user_id,
        roles: mailing.roles.clone(),
        message_id: sent["message_id"].as_str().unwrap_or_default().to_owned(),
        send_number: mailing.send_number,
        reply: reply.to_owned(),
    };
    let mut metadata = ctx.metadata();
    metadata.org_id = Some(mailing.org_id);
    let expected = if mailing.send_number == 1 {
        Expected::NoStream
    } else {
        Expected::Any
    };
    let stream_type = StreamType::parse(stream::INVITATION).expect("a valid stream type");
    ctx.append_applied(
        AppendRequest::new(
            stream_type,
            mailing.invitation_id.into(),
            vec![refused.to_event(metadata)],
        )
        .expect(expected),
    )
    .await?;
    Ok(json!({ "invitation_id": mailing.invitation_id, "refused": reply }))
}

#[cfg(test)]
mod tests {
    use super::{expires_at, without_address};

    #[test]
    fn a_servers_reply_keeps_no_copy_of_the_address() {
        let email = crate::model::Email::parse("Ada.L@Example.com").unwrap();
        assert_eq!(
            without_address(
                "550 5.1.1 <ada.l@example.com>: unknown; ADA.L@EXAMPLE.COM",
                &email
            ),
            "550 5.1.1 <<recipient>>: unknown; <recipient>"
        );
        assert_eq!(without_address("421 try later", &email), "421 try later");
    }
    use chrono::{DateTime, Utc};

    #[test]
    fn an_expiry_past_what_a_date_can_hold_is_a_permanent_error_not_a_panic() {
        let now = DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
            .map(|at| at.with_timezone(&Utc))
            .expect("a valid time");
        assert_eq!(
            expires_at(now, 7 * 86_400).ok(),
            DateTime::parse_from_rfc3339("2026-12-07T12:00:00Z")
                .map(|at| at.with_timezone(&Utc))
                .ok()
        );
        // (TTL in seconds) → refused: 300000000 days overflows chrono when added to
        // now; i64::MAX overflows the duration itself; 8,000 years passes 9999.
        for ttl in [
            300_000_000 * 86_400,
            i64::MAX,
            i64::MIN,
            8_000 * 366 * 86_400,
        ] {
            let error = expires_at(now, ttl).expect_err("refused");
            assert!(!error.retryable, "{ttl}: no retry can fix it");
            assert!(
                error.message.contains("outside the years 0 to 9999"),
                "{ttl}: {}",
                error.message
            );
        }
        let last = expires_at(now, (9999 - 2026) * 365 * 86_400).expect("year 9999 is fine");
        assert!(last.to_rfc3339().starts_with("99"), "{last}");
    }
}
