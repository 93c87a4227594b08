//! Tampering as a database administrator could: the audit tests' adversary.

use cairn_log::{Backend, Db, Sql, args};
use cairn_log::{GENESIS, HashedColumns};
use cairn_types::{EventId, EventType, Position, StreamId, StreamType, StreamVersion};

/// Lifts the immutability triggers, runs `statements` and, with `recompute`, rewrites
/// every hash and the head so that the chain is consistent again.
pub async fn tamper(db: &Db, statements: &str, recompute: bool) -> anyhow::Result<()> {
    let mut tx = db.begin().await?;
    let mut conn = tx.conn();
    match conn.backend() {
        Backend::Sqlite => {
            conn.execute_script(
                "DROP TRIGGER IF EXISTS domain_events_immutable; \
                 DROP TRIGGER IF EXISTS domain_events_no_delete",
            )
            .await?
        }
        Backend::Postgres => {
            conn.execute_script("ALTER TABLE domain_events DISABLE TRIGGER USER")
                .await?
        }
    }
    if !statements.is_empty() {
        conn.execute_script(Sql::built(statements)).await?;
    }
    if recompute {
        let rows = conn
            .fetch_all(
                "SELECT position, event_id, stream_type, stream_id, stream_version, event_type, \
                 event_version, event_data, event_metadata, created_at FROM domain_events ORDER BY position",
                args![],
            )
            .await?;
        let mut previous = GENESIS.to_owned();
        let mut last = 0_i64;
        for row in &rows {
            let position: i64 = row.get("position")?;
            let stream_type = StreamType::parse(&row.get::<String>("stream_type")?)?;
            let event_type = EventType::parse(&row.get::<String>("event_type")?)?;
            let data = row.get_json("event_data")?;
            let metadata = row.get_json("event_metadata")?;
            let hash = cairn_log::event_hash(
                &previous,
                &HashedColumns {
                    position: Position::new(position),
                    event_id: row.get::<EventId>("event_id")?,
                    stream_type: &stream_type,
                    stream_id: row.get::<StreamId>("stream_id")?,
                    stream_version: StreamVersion::new(row.get("stream_version")?),
                    event_type: &event_type,
                    event_version: u32::try_from(row.get::<i64>("event_version")?)?,
                    data: &data,
                    metadata: &metadata,
                    created_at: row.get("created_at")?,
                },
            );
            conn.execute(
                "UPDATE domain_events SET hash = $1 WHERE position = $2",
                args![hash.as_str(), position],
            )
            .await?;
            previous = hash;
            last = position;
        }
        conn.execute(
            "UPDATE log_head SET last_position = $1, last_hash = $2 WHERE id = 1",
            args![last, previous],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Lifts the access log's append-only triggers and runs `statements` on its tables,
/// as a database administrator could; hashes are left as they are.
pub async fn tamper_access(db: &Db, statements: &str) -> anyhow::Result<()> {
    let mut tx = db.begin().await?;
    let mut conn = tx.conn();
    match conn.backend() {
        Backend::Sqlite => {
            conn.execute_script(
                "DROP TRIGGER IF EXISTS access_log_no_update; \
                 DROP TRIGGER IF EXISTS access_log_no_delete; \
                 DROP TRIGGER IF EXISTS access_head_forward",
            )
            .await?
        }
        Backend::Postgres => {
            conn.execute_script(
                "ALTER TABLE access_log DISABLE TRIGGER USER; \
                 ALTER TABLE access_head DISABLE TRIGGER USER",
            )
            .await?
        }
    }
    conn.execute_script(Sql::built(statements)).await?;
    tx.commit().await?;
    Ok(())
}
