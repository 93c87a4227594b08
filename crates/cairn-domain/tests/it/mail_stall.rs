//! A mail server that stalls, on both backends (issue 20, point 3): one that accepts
//! the connection and never greets, and one that takes the message and never answers
//! its final `.`. Either left the bootstrap's send step in its first attempt for good.
//!
//! Now the send's deadline (a short one, set in the mail URL) fails the attempt in
//! time, retryably, the second kind as in doubt; the engine goes on with other work;
//! and once the server answers again, the retry delivers the email, once, under the
//! Message-ID the invitation records.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_domain::BootstrapRequest;
use cairn_mail::SmtpMailer;
use cairn_testkit::{Stall, StallingSmtp, TestDb, backend_test};
use cairn_workflow::{ManualClock, RunStatus, StepStatus};
use serde_json::json;

use crate::common;

/// The send's deadline, in the mail URL.
const DEADLINE: Duration = Duration::from_millis(500);

fn request() -> anyhow::Result<BootstrapRequest> {
    Ok(serde_json::from_value(json!({
        "organization": {"name": "Stall Care", "slug": "stall-care", "sender_domain": "mail.stall.example.com"},
        "admin": {"email": "ada@example.com", "name": "Ada Lovelace"},
        "invitees": []
    }))?)
}

async fn check(t: TestDb, stall: Stall, says: &str) -> anyhow::Result<()> {
    let smtp = StallingSmtp::start(stall).await?;
    let mailer = SmtpMailer::from_url(&format!("{}?timeout=500ms", smtp.url()))?;
    assert_eq!(mailer.deadline(), DEADLINE);
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let w = common::world(t, Arc::new(mailer), clock.clone()).await?;
    let accepted = w
        .domain
        .bootstrap(&common::admin_actor(), &request()?)
        .await?;

    // The first attempt fails within the deadline (and a margin for a slow machine),
    // and the run waits for its retry.
    let began = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), w.domain.engine().run_until_idle())
        .await
        .map_err(|_| anyhow::anyhow!("the send was still waiting on the server after 10 s"))??;
    let took = began.elapsed();
    assert!(
        took < DEADLINE + Duration::from_secs(3),
        "the attempt took {took:?}"
    );
    assert_eq!(smtp.stalled(), 1, "the server stalled the first attempt");
    let history = {
        let mut reader = w.t.db().reader().await?;
        cairn_workflow::state::load_history(&mut reader.conn(), accepted.workflow_id).await?
    };
    let send = history
        .steps
        .iter()
        .find(|step| step.name.starts_with("send_invitation:"))
        .ok_or_else(|| anyhow::anyhow!("no send step: {history:?}"))?;
    assert_eq!(send.status, StepStatus::Retrying, "{send:?}");
    assert_eq!(send.attempts, 1, "{send:?}");
    let error = send.last_error.clone().unwrap_or_default();
    assert!(error.contains(says), "{error}");
    assert_eq!(
        common::workflow_status(&w, accepted.workflow_id).await?,
        RunStatus::Running
    );

    // The server answers again: the retry delivers the email once.
    smtp.set_stall(Stall::Nowhere);
    clock.advance(chrono::Duration::seconds(5));
    w.domain.engine().run_until_idle().await?;
    assert_eq!(
        common::workflow_status(&w, accepted.workflow_id).await?,
        RunStatus::Completed
    );
    let message_ids: Vec<String> = {
        let mut reader = w.t.db().reader().await?;
        let rows = reader
            .conn()
            .fetch_all(
                "SELECT message_id FROM invitations WHERE org_id = $1",
                cairn_log::args![accepted.org_id],
            )
            .await?;
        rows.iter()
            .map(|row| row.get::<String>("message_id"))
            .collect::<Result<_, _>>()?
    };
    assert_eq!(smtp.accepted(), message_ids);
    Ok(())
}

backend_test!(
    issue_20_a_server_that_never_greets_fails_the_send_in_time,
    |t: TestDb| async move { check(t, Stall::Greeting, "the message was not handed over").await }
);

backend_test!(
    issue_20_a_server_that_never_answers_the_final_dot_fails_the_send_in_doubt,
    |t: TestDb| async move { check(t, Stall::FinalDot, "is in doubt").await }
);
