//! The one sanctioned projection write that is not a handler's.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use cairn_log::{Migration, Tx, args};
use cairn_types::CorrelationId;

use crate::projections::Projections;

/// The dispatcher's own tables.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        id: "dispatch/0001_safety_net_writes",
        sqlite: include_str!("schema/sqlite/0001_safety_net.sql"),
        postgres: include_str!("schema/postgres/0001_safety_net.sql"),
    },
    Migration {
        id: "dispatch/0002_paused_routes",
        sqlite: include_str!("schema/sqlite/0002_paused_routes.sql"),
        postgres: include_str!("schema/postgres/0002_paused_routes.sql"),
    },
];

/// Why a safety-net write is being made, recorded with it.
#[derive(Debug, Clone, Serialize)]
pub struct SafetyNetRecord {
    /// The projection table written.
    pub projection: &'static str,
    /// The row's key.
    pub row_key: Value,
    /// Why an event could not be used.
    pub reason: String,
    /// The request that led here.
    pub correlation_id: CorrelationId,
    /// Anything else worth keeping (workflow id, the failed event's id, …).
    pub context: Value,
    pub at: DateTime<Utc>,
}

/// The explicit, audited exception to "only handlers write projections".
///
/// When emitting an event has itself failed (the append errored, or its handler
/// failed), a compensation that must still take effect (deactivating an organization
/// whose bootstrap failed) may write the projection directly through this. Every use
/// stores a [`SafetyNetRecord`] in `safety_net_writes`, in the same transaction as the
/// write, and logs an error. `cairn replay --verify` will show the row as drift until
/// the failed event is retried, which is what an operator should see.
#[derive(Debug)]
pub struct SafetyNet;

impl SafetyNet {
    /// Records the exception and hands out a projection handle on `tx`. The write and
    /// its record commit or roll back together with `tx`.
    pub async fn open<'t>(
        tx: &'t mut Tx,
        record: &SafetyNetRecord,
    ) -> Result<Projections<'t>, cairn_log::DbError> {
        tracing::error!(
            projection = record.projection,
            key = %record.row_key,
            reason = %record.reason,
            correlation_id = %record.correlation_id,
            "safety net: writing a projection without an event"
        );
        let mut conn = tx.conn();
        conn.execute(
            "INSERT INTO safety_net_writes (id, at, projection, row_key, reason, correlation_id, context)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            args![
                uuid::Uuid::now_v7(),
                record.at,
                record.projection,
                record.row_key.clone(),
                record.reason.clone(),
                record.correlation_id,
                record.context.clone(),
            ],
        )
        .await?;
        Ok(Projections::new(conn))
    }
}
