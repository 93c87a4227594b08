//! A mail outage with a crash in it, on both backends (issue "Through outages and
//! mistakes"): 200 bootstraps through `cairn serve` while a real SMTP server refuses
//! every message with a 451, a `kill -9` of the server during the outage and a
//! restart, then the server's return. Sends keep being retried (the outage lasts well
//! past the half minute after which every run used to give up and deactivate its
//! organization); no organization is deactivated, every bootstrap completes within a
//! minute of the server's return, no email goes out twice, and the log verifies. The
//! ten-minute version, on a clock the test moves, is
//! `crates/cairn-domain/tests/it/mail_outage.rs`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cairn_testkit::{SinkOptions, SmtpSink, TestDb, backend_test};

use crate::common::server::Server;
use crate::common::{assert_exit, cairn, token};

const BOOTSTRAPS: usize = 200;
/// The outage, in real time: more than twice the half minute of retries a send used
/// to get before its run compensated.
const OUTAGE: Duration = Duration::from_secs(75);

fn request(n: usize) -> String {
    serde_json::json!({
        "organization": {"name": format!("Outage Care {n}"), "slug": format!("outage-{n}"), "sender_domain": "mail.outage.example.com"},
        "admin": {"email": format!("admin-{n}@example.com"), "name": "Ada Lovelace"},
    })
    .to_string()
}

/// Bootstrap runs by status.
async fn statuses(t: &TestDb) -> anyhow::Result<BTreeMap<String, i64>> {
    let mut reader = t.db().reader().await?;
    let rows = reader
        .conn()
        .fetch_all(
            "SELECT status, COUNT(*) AS n FROM workflow_runs \
             WHERE kind = 'organization_bootstrap' GROUP BY status",
            cairn_log::args![],
        )
        .await?;
    let mut by_status = BTreeMap::new();
    for row in &rows {
        by_status.insert(row.get::<String>("status")?, row.get::<i64>("n")?);
    }
    Ok(by_status)
}

backend_test!(
    a_mail_outage_with_a_crash_in_it_undoes_no_onboarding,
    |t: TestDb| async move {
        let sink = SmtpSink::start(SinkOptions::default()).await?;
        sink.set_outage(true)?;
        let outage_began = Instant::now();
        let mail = sink.url();
        let mut server = Server::with_short_lease(t.url(), &mail).await?;
        let token = token(t.url(), &["--platform-admin", "ops"]).await?;

        let mut requests = tokio::task::JoinSet::new();
        for client in 0..8 {
            let (base, token) = (server.base.clone(), token.clone());
            requests.spawn(async move {
                let http = reqwest::Client::new();
                for n in (client..BOOTSTRAPS).step_by(8) {
                    let response = http
                        .post(format!("{base}/v1/organizations"))
                        .bearer_auth(&token)
                        .header("content-type", "application/json")
                        .body(request(n))
                        .send()
                        .await?;
                    anyhow::ensure!(
                        response.status() == 202,
                        "bootstrap {n}: {}",
                        response.status()
                    );
                }
                anyhow::Ok(())
            });
        }
        while let Some(done) = requests.join_next().await {
            done??;
        }

        // Mid-outage, the server is killed and started again.
        tokio::time::sleep(Duration::from_secs(20)).await;
        server.child.kill().await?;
        let server = Server::with_short_lease(t.url(), &mail).await?;
        tokio::time::sleep(OUTAGE.saturating_sub(outage_began.elapsed())).await;
        let during = statuses(&t).await?;
        assert_eq!(
            during,
            BTreeMap::from([("running".to_owned(), BOOTSTRAPS as i64)]),
            "after {OUTAGE:?} of outage every bootstrap still waits for its mail"
        );
        assert!(sink.messages().is_empty());

        // The mail server is back: within a minute every bootstrap completes.
        sink.set_outage(false)?;
        let recovered = Instant::now();
        loop {
            let now = statuses(&t).await?;
            if now.get("completed") == Some(&(BOOTSTRAPS as i64)) {
                break;
            }
            assert!(
                recovered.elapsed() <= Duration::from_secs(60),
                "not every bootstrap completed within 60 s of the mail server's return: {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let took = recovered.elapsed();
        let mut server = server;
        server.child.kill().await?;

        let mut reader = t.db().reader().await?;
        let row = reader
            .conn()
            .fetch_one(
                "SELECT COUNT(*) AS n, \
                 SUM(CASE WHEN is_active AND status = 'active' AND deactivated_at IS NULL THEN 1 ELSE 0 END) AS active \
                 FROM organizations",
                cairn_log::args![],
            )
            .await?;
        assert_eq!(row.get::<i64>("n")?, BOOTSTRAPS as i64);
        assert_eq!(
            row.get::<i64>("active")?,
            BOOTSTRAPS as i64,
            "no organization was deactivated"
        );
        drop(reader);
        let messages = sink.messages();
        let mut ids: Vec<&str> = messages.iter().map(|m| m.message_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), BOOTSTRAPS, "every admin's invitation went out");
        assert_eq!(
            messages.len(),
            BOOTSTRAPS,
            "no email went out twice: the kill came while nothing could be accepted"
        );
        eprintln!(
            "{}: {BOOTSTRAPS} bootstraps through a {OUTAGE:?} mail outage ({} refusals) and a kill; \
             all completed {took:?} after the server's return",
            t.backend(),
            sink.refused_in_outages()
        );

        let verified = cairn(t.url(), &["replay", "--verify"]).await;
        assert_exit(&verified, 0);
        let audit = cairn(t.url(), &["audit", "verify"]).await;
        assert_exit(&audit, 0);
        Ok(())
    }
);
