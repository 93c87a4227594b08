//! An invitation TTL too long for a date to hold, on both backends: the send step fails
//! for good with a message saying so (no panic, no retries), nothing is sent, and the
//! bootstrap compensates.

use std::sync::Arc;

use cairn_domain::{BootstrapRequest, CommandContext, DomainConfig, queries};
use cairn_log::EventFilter;
use cairn_policy::Principal;
use cairn_testkit::{TestDb, backend_test};
use cairn_workflow::{RunStatus, SystemClock};
use serde_json::json;

use crate::common;

fn request() -> anyhow::Result<BootstrapRequest> {
    Ok(serde_json::from_value(json!({
        "organization": {
            "name": "Sunrise Care",
            "slug": "sunrise-forever",
            "sender_domain": "mail.sunrise.example.co.uk"
        },
        "admin": {"email": "ada@example.com", "name": "Ada Lovelace"},
        "invitees": [
            {"email": "grace@example.com", "name": "Grace Hopper", "roles": ["clinician"]}
        ]
    }))?)
}

backend_test!(
    a_ttl_past_what_a_date_can_hold_fails_the_send_for_good_without_a_panic,
    |t: TestDb| async move {
        let outbox = tempfile::tempdir()?;
        let mailer = cairn_mail::mailer_from_url(&format!("outbox:{}", outbox.path().display()))?;
        let config = DomainConfig {
            invitation_ttl: chrono::Duration::days(300_000_000),
            ..common::config()
        };
        let common::World { t, domain } =
            common::world_with(t, mailer, Arc::new(SystemClock), config).await?;
        let ctx = CommandContext::new(Principal::PlatformAdmin {
            name: "console".into(),
        });
        let accepted = domain.bootstrap(&ctx, &request()?).await?;
        domain.engine().run_until_idle().await?;

        let mut reader = t.db().reader().await?;
        let run = cairn_workflow::state::load_run(&mut reader.conn(), accepted.workflow_id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no run"))?;
        assert_eq!(run.status, RunStatus::Failed);
        let org = queries::organization(&mut reader.conn(), accepted.org_id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no organization"))?;
        assert_eq!(org.status.as_str(), "failed");

        let filter = EventFilter {
            correlation_id: Some(ctx.correlation_id),
            ..EventFilter::default()
        };
        let events = reader.conn().read_events(&filter).await?;
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        assert!(
            !types.contains(&"workflow.step_attempt_failed"),
            "no retries: {types:?}"
        );
        let failed = events
            .iter()
            .find(|e| e.event_type.as_str() == "workflow.step_failed")
            .ok_or_else(|| anyhow::anyhow!("no failed step in {types:?}"))?;
        drop(reader);
        let w = common::World { t, domain };
        let ada = common::person(&w, accepted.org_id, "ada@example.com").await?;
        assert_eq!(failed.data["step"], json!(ada.step("send_invitation")));
        assert_eq!(failed.data["attempt"], json!(1));
        assert_eq!(failed.data["permanent"], json!(true));
        let error = failed.data["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("outside the years 0 to 9999") && !error.contains("panicked"),
            "{error}"
        );
        assert_eq!(
            std::fs::read_dir(outbox.path())?.count(),
            0,
            "nothing was sent"
        );
        Ok(())
    }
);
