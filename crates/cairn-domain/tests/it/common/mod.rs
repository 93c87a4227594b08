//! A domain on a test database, for the domain's tests.

#![allow(dead_code)]

use std::sync::Arc;

use cairn_dispatch::{EventStore, Registry, VerifyOptions};
use cairn_domain::queries;
use cairn_domain::{CommandContext, Domain, DomainConfig};
use cairn_mail::{Mailer, SmtpMailer};
use cairn_policy::Principal;
use cairn_testkit::{Received, SmtpSink, TestDb};
use cairn_types::{InvitationId, OrgId, UserId, WorkflowId};
use cairn_workflow::{Clock, EngineConfig, RunStatus, SystemClock};

/// Every route the domain and the workflow engine register.
pub fn registry() -> Registry {
    let builder = cairn_workflow::routes(Registry::builder().admin_routes());
    cairn_domain::routes(builder)
        .build()
        .expect("a valid registry")
}

/// A migrated test database and the domain on it.
pub struct World {
    pub t: TestDb,
    pub domain: Domain,
}

/// The domain on `t`, mailing through `mailer`, on `clock`.
pub async fn world(
    t: TestDb,
    mailer: Arc<dyn Mailer>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<World> {
    world_with(t, mailer, clock, config()).await
}

/// The domain's settings in tests: links point at a test address.
pub fn config() -> DomainConfig {
    DomainConfig {
        accept_url: "https://app.example.test/invitations/accept".to_owned(),
        ..DomainConfig::default()
    }
}

/// [`world`] with settings of the test's own.
pub async fn world_with(
    t: TestDb,
    mailer: Arc<dyn Mailer>,
    clock: Arc<dyn Clock>,
    config: DomainConfig,
) -> anyhow::Result<World> {
    t.migrate_sets(&[
        cairn_dispatch::MIGRATIONS,
        cairn_workflow::MIGRATIONS,
        cairn_domain::MIGRATIONS,
    ])
    .await?;
    let store = EventStore::new(t.db().clone(), registry());
    let domain = Domain::open(store, mailer, clock, config, EngineConfig::default()).await?;
    Ok(World { t, domain })
}

/// The domain on `t`, mailing through the SMTP server `sink`, on the system clock.
pub async fn smtp_world(t: TestDb, sink: &SmtpSink) -> anyhow::Result<World> {
    world(
        t,
        Arc::new(SmtpMailer::from_url(&sink.url())?),
        Arc::new(SystemClock),
    )
    .await
}

/// A platform administrator, as the console acts.
pub fn admin_actor() -> CommandContext {
    CommandContext::new(Principal::PlatformAdmin {
        name: "console".into(),
    })
}

/// The status of the workflow run `id`.
pub async fn workflow_status(w: &World, id: WorkflowId) -> anyhow::Result<RunStatus> {
    let mut reader = w.t.db().reader().await?;
    Ok(cairn_workflow::state::load_run(&mut reader.conn(), id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no run {id}"))?
        .status)
}

/// The organization `id`, as the queries read it.
pub async fn organization(w: &World, id: OrgId) -> anyhow::Result<queries::Organization> {
    let mut reader = w.t.db().reader().await?;
    queries::organization(&mut reader.conn(), id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no organization {id}"))
}

/// Replaying the log (each event dispatched twice) gives the projections as they are.
pub async fn assert_no_drift(w: &World) -> anyhow::Result<()> {
    let report = w
        .domain
        .store()
        .verify_projections(
            VerifyOptions {
                dispatch_twice: true,
            },
            &mut |_, _| {},
        )
        .await?;
    assert!(report.is_clean(), "drift: {:#?}", report.drift);
    Ok(())
}

/// The invitation token in the link of an email.
pub fn token_in(message: &Received) -> String {
    let start = message.body.find("token=").expect("a token in the link") + "token=".len();
    message.body[start..start + 64].to_owned()
}

/// A person of a bootstrap, by the ids its command drew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Person {
    pub user_id: UserId,
    pub invitation_id: InvitationId,
}

impl Person {
    /// The name of this person's step `step` (`send_invitation`, …) in a bootstrap run.
    pub fn step(&self, step: &str) -> String {
        match step {
            "invite" => format!("invite:{}", self.user_id),
            _ => format!("{step}:{}", self.invitation_id),
        }
    }
}

/// The person the bootstrap of `org_id` planned for the email address `email`: from
/// the organization's `organization.bootstrap.initiated` event, the only place that
/// holds both.
pub async fn person(w: &World, org_id: OrgId, email: &str) -> anyhow::Result<Person> {
    let mut reader = w.t.db().reader().await?;
    let filter = cairn_log::EventFilter {
        stream_id: Some(org_id.into()),
        event_type: Some(cairn_types::EventType::parse(
            "organization.bootstrap.initiated",
        )?),
        ..cairn_log::EventFilter::default()
    };
    let events = reader.conn().read_events(&filter).await?;
    drop(reader);
    let events =
        cairn_dispatch::current_events(w.t.db(), w.domain.store().dispatcher().registry(), events)
            .await?;
    let initiated: cairn_domain::events::BootstrapInitiated = serde_json::from_value(
        events
            .first()
            .ok_or_else(|| anyhow::anyhow!("organization {org_id} was never bootstrapped"))?
            .data
            .clone(),
    )?;
    if initiated
        .admin
        .email
        .known()
        .is_some_and(|e| e.as_str() == email)
    {
        return Ok(Person {
            user_id: initiated.admin.user_id,
            invitation_id: initiated.admin.invitation_id,
        });
    }
    initiated
        .invitees
        .iter()
        .find(|invitee| invitee.email.known().is_some_and(|e| e.as_str() == email))
        .map(|invitee| Person {
            user_id: invitee.user_id,
            invitation_id: invitee.invitation_id,
        })
        .ok_or_else(|| anyhow::anyhow!("no {email} in the bootstrap of {org_id}"))
}
