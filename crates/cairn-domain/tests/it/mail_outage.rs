//! A mail provider's maintenance window undoes no onboarding (issue "Through outages
//! and mistakes"): 200 bootstraps while a real SMTP server refuses every message with
//! a 451 for ten minutes of the engine's clock, then recovers. Every send is retried
//! with waits of at most 45 s; no organization is deactivated, and every bootstrap
//! completes within a minute of the server's return. The same with `kill -9` during
//! the outage, in real time, is `crates/cairn/tests/it/mail_outage.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use cairn_domain::queries::{self, Page};
use cairn_domain::{BootstrapRequest, CommandContext};
use cairn_mail::SmtpMailer;
use cairn_policy::Principal;
use cairn_testkit::{SinkOptions, SmtpSink, TestDb, backend_test};
use cairn_workflow::{Clock, ManualClock, RunFilter, RunStatus};
use serde_json::json;

use crate::common;

const BOOTSTRAPS: usize = 200;

fn request(n: usize) -> anyhow::Result<BootstrapRequest> {
    Ok(serde_json::from_value(json!({
        "organization": {"name": format!("Outage Care {n}"), "slug": format!("outage-{n}"), "sender_domain": "mail.outage.example.com"},
        "admin": {"email": format!("admin-{n}@example.com"), "name": "Ada Lovelace"},
    }))?)
}

/// The runs of the bootstrap, by status.
async fn statuses(domain: &cairn_domain::Domain) -> anyhow::Result<HashMap<RunStatus, usize>> {
    let mut reader = domain.store().db().reader().await?;
    let runs = cairn_workflow::state::list(
        &mut reader.conn(),
        &RunFilter {
            kind: Some(cairn_domain::bootstrap::KIND.to_owned()),
            limit: Some(10_000),
            ..RunFilter::default()
        },
    )
    .await?;
    let mut by_status = HashMap::new();
    for run in runs {
        *by_status.entry(run.status).or_insert(0) += 1;
    }
    Ok(by_status)
}

backend_test!(
    a_ten_minute_mail_outage_undoes_no_onboarding,
    |t: TestDb| async move {
        let sink = SmtpSink::start(SinkOptions::default()).await?;
        sink.set_outage(true)?;
        let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
        let common::World { t, domain } = common::world(
            t,
            Arc::new(SmtpMailer::from_url(&sink.url())?),
            clock.clone(),
        )
        .await?;
        let ctx = CommandContext::new(Principal::PlatformAdmin { name: "ops".into() });
        for n in 0..BOOTSTRAPS {
            domain.bootstrap(&ctx, &request(n)?).await?;
        }
        let engine = domain.engine();

        // Ten minutes of outage, on the engine's clock.
        let outage_began = clock.now();
        while clock.now() - outage_began < chrono::Duration::minutes(10) {
            engine.run_until_idle().await?;
            clock.advance(chrono::Duration::seconds(50));
        }
        engine.run_until_idle().await?;
        let during = statuses(&domain).await?;
        assert_eq!(
            during,
            HashMap::from([(RunStatus::Running, BOOTSTRAPS)]),
            "every bootstrap still waits for its mail, none undone"
        );
        assert!(sink.messages().is_empty());
        assert!(
            sink.refused_in_outages() >= BOOTSTRAPS * 10,
            "each send was tried again and again: {} refusals",
            sink.refused_in_outages()
        );

        // The server is back: within a minute every bootstrap completes.
        sink.set_outage(false)?;
        let recovered = clock.now();
        while statuses(&domain).await?.get(&RunStatus::Completed) != Some(&BOOTSTRAPS) {
            assert!(
                clock.now() - recovered <= chrono::Duration::seconds(60),
                "not every bootstrap completed within 60 s of the server's return: {:?}",
                statuses(&domain).await?
            );
            clock.advance(chrono::Duration::seconds(5));
            engine.run_until_idle().await?;
        }
        let mut reader = t.db().reader().await?;
        let organizations = queries::organizations(
            &mut reader.conn(),
            None,
            Page {
                after: None,
                limit: 1_000,
            },
        )
        .await?;
        assert_eq!(organizations.len(), BOOTSTRAPS);
        assert!(
            organizations
                .iter()
                .all(|org| org.is_active && org.status == "active" && org.deactivated_at.is_none()),
            "no organization was deactivated"
        );
        let messages = sink.messages();
        let mut ids: Vec<&str> = messages.iter().map(|m| m.message_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), BOOTSTRAPS, "each invitation went out once");
        assert_eq!(messages.len(), BOOTSTRAPS);
        let report = domain
            .store()
            .verify_projections(cairn_dispatch::VerifyOptions::default(), &mut |_, _| {})
            .await?;
        assert!(report.is_clean(), "{:#?}", report.drift);
        Ok(())
    }
);
