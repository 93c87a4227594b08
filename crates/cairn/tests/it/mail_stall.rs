//! `cairn serve` against a mail server that takes a message and never answers its
//! final `.` (issue 20, point 3): `SIGTERM` with `--shutdown-grace 3s` had not stopped
//! the process 30 s later, its engine waiting on the send for good.
//!
//! The grace now bounds the steps in flight too: the process exits within it (and a
//! margin), abandoning the stuck step as a crash would; once its lease has run out, a
//! new process performs the step again, and the email is delivered.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use cairn_testkit::{Stall, StallingSmtp, TestDb, backend_test};

use crate::common::server::Server;
use crate::common::{bootstrap_request, token};

/// The shutdown grace.
const GRACE: Duration = Duration::from_secs(2);

/// `cairn serve` with the grace and a short workflow lease, so that the abandoned run
/// is taken over soon.
async fn serve(url: &str, mail: &str) -> anyhow::Result<Server> {
    Server::start_with(
        url,
        mail,
        &["--shutdown-grace", "2s", "--workflow-lease-seconds", "3"],
    )
    .await
}

backend_test!(
    issue_20_sigterm_abandons_a_step_stuck_on_a_silent_mail_server,
    |t: TestDb| async move {
        // The mailer's own deadline (30 s by default) is far past the grace.
        let smtp = StallingSmtp::start(Stall::FinalDot).await?;
        let mut server = serve(t.url(), &smtp.url()).await?;
        let token = token(t.url(), &["--platform-admin", "ops"]).await?;
        let accepted = server
            .bootstrap(&token, bootstrap_request("stalled-care"))
            .await?;
        let workflow_id = accepted["workflow_id"]
            .as_str()
            .context("a workflow id")?
            .to_owned();
        smtp.wait_stalled(1, Duration::from_secs(30)).await?;

        let pid = server.child.id().context("a pid")?;
        let signalled = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        assert!(signalled.success());
        let began = Instant::now();
        let status = tokio::time::timeout(Duration::from_secs(20), server.child.wait())
            .await
            .context("cairn serve was still running 20 s after SIGTERM")??;
        let took = began.elapsed();
        assert!(status.success(), "{status}");
        assert!(
            took < GRACE + Duration::from_secs(3),
            "cairn serve took {took:?} to stop with a grace of {GRACE:?}"
        );

        // The server answers again: a new process takes the run over once its lease
        // has run out, sends the email again (in doubt, under the same Message-ID),
        // and the bootstrap completes.
        smtp.set_stall(Stall::Nowhere);
        let server = serve(t.url(), &smtp.url()).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let run = server
                .get(&token, &format!("/v1/workflows/{workflow_id}"))
                .await?;
            if run["status"] == "completed" {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the bootstrap did not complete within a minute of the restart: {run}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let delivered = smtp.accepted();
        assert_eq!(
            delivered.len(),
            3,
            "three invitations, each once: {delivered:?}"
        );
        let mut distinct = delivered.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 3, "{delivered:?}");
        Ok(())
    }
);
