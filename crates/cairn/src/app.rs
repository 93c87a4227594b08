//! Assembling cairn: the migrations of every layer, the routing table, the database.

use anyhow::Context as _;

use cairn_dispatch::{EventStore, Registry};
use cairn_log::{Db, DbOptions, Migration};

/// Every migration, in layer order.
pub fn migrations() -> Vec<&'static [Migration]> {
    vec![cairn_log::migrate::MIGRATIONS]
}

/// The routing table of this build.
pub fn registry() -> Registry {
    Registry::builder()
        .admin_routes()
        .build()
        .expect("the built-in registry is checked by the registry_is_valid test")
}

/// Opens the database a URL names and brings its schema up to date.
pub async fn open_db(url: &str, options: &DbOptions) -> anyhow::Result<Db> {
    let db = Db::connect(url, options).await?;
    db.migrate(&migrations())
        .await
        .with_context(|| format!("migrating {}", db.describe()))?;
    Ok(db)
}

/// Opens the database and the event store over it.
pub async fn open(url: &str) -> anyhow::Result<EventStore> {
    let db = open_db(url, &DbOptions::default()).await?;
    Ok(EventStore::new(db, registry()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn registry_is_valid() {
        assert!(
            super::registry()
                .route(&cairn_types::StreamType::parse("test").expect("name"))
                .is_some()
        );
    }
}
