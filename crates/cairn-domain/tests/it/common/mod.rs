//! A domain on a test database, for the domain's tests.

#![allow(dead_code)]

use std::sync::Arc;

use cairn_dispatch::{EventStore, Registry};
use cairn_domain::{Domain, DomainConfig};
use cairn_mail::{Mailer, SmtpMailer};
use cairn_testkit::{SmtpSink, TestDb};
use cairn_workflow::{Clock, EngineConfig, SystemClock};

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
