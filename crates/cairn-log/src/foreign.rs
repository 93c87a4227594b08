//! Another system's PostgreSQL database, read and never written: the source of an
//! import.
//!
//! A [`ForeignDb`] has connections and nothing else: no log writer, no head watch, no
//! migrations, since the database is not cairn's. Every transaction on it is
//! read-only, so a statement that would change the other system's data fails there
//! instead.

use crate::backend::Pools;
use crate::db::Reader;
use crate::error::{ConnectError, DbError};

/// Another system's PostgreSQL database, open for reading.
#[derive(Debug)]
pub struct ForeignDb {
    pools: Pools,
}

impl ForeignDb {
    /// Connects to the PostgreSQL database `url` names, read-only. Any other kind of
    /// URL is refused.
    pub async fn connect(url: &str, max_connections: u32) -> Result<ForeignDb, ConnectError> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConnectError::UnsupportedUrl {
                url: crate::redact_url(url),
            });
        }
        let pools = crate::backend::connect_foreign(url, max_connections).await?;
        Ok(ForeignDb { pools })
    }

    /// The URL, its password hidden.
    pub fn describe(&self) -> String {
        self.pools.describe()
    }

    /// A pooled connection for reads, outside any transaction.
    pub async fn reader(&self) -> Result<Reader, DbError> {
        Ok(Reader::new(self.pools.reader().await?))
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pools.close().await;
    }
}
