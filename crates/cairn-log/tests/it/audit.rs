//! The audit walk on both backends, against a database administrator who lifts the
//! immutability triggers: anchors from signed checkpoints find rewrites that recompute
//! every hash and cut tails; the columns reads filter on are held to the hashed
//! metadata; a row that no longer decodes is a breach at its position.

use cairn_log::{Anchor, AnchorStatus, AuditReport, ChainCheck, GENESIS, Problem};
use cairn_log::{Db, NewEvent, args};
use cairn_testkit::{Backend, TestDb, backend_test, tamper};
use cairn_types::{EventType, Metadata, OrgId, Position, StreamId};
use serde_json::json;

use crate::common::{append, assert_breach, request};

/// Appends `n` events, each on its own stream; the even ones belong to an organization.
async fn append_events(db: &Db, n: i64) -> anyhow::Result<()> {
    for i in 1..=n {
        let mut metadata = Metadata::new();
        if i % 2 == 0 {
            metadata.org_id = Some(OrgId::new_v7());
        }
        let event = NewEvent::new(EventType::parse("test.pinged")?, json!({"n": i}), metadata);
        append(db, request(StreamId::new_v7(), vec![event])).await?;
    }
    Ok(())
}

/// The hash the log holds at `position`.
async fn hash_at(db: &Db, position: i64) -> anyhow::Result<String> {
    let mut reader = db.reader().await?;
    let row = reader
        .conn()
        .fetch_one(
            "SELECT hash FROM domain_events WHERE position = $1",
            args![position],
        )
        .await?;
    Ok(row.get("hash")?)
}

async fn anchor(db: &Db, position: i64) -> anyhow::Result<Anchor> {
    Ok(Anchor {
        position: Position::new(position),
        hash: hash_at(db, position).await?,
    })
}

async fn walk(db: &Db, check: ChainCheck) -> anyhow::Result<AuditReport> {
    Ok(db.verify_chain_with(&check, &mut |_, _| {}).await?)
}

fn anchored(anchors: Vec<Anchor>) -> ChainCheck {
    ChainCheck {
        anchors,
        start: None,
    }
}

fn edit_data(backend: Backend, position: i64) -> String {
    let cast = match backend {
        Backend::Sqlite => "",
        Backend::Postgres => "::jsonb",
    };
    format!(
        "UPDATE domain_events SET event_data = '{{\"n\":1000}}'{cast} WHERE position = {position}"
    )
}

backend_test!(anchors_hold_on_an_untouched_log, |t: TestDb| async move {
    let db = t.db();
    append_events(db, 5).await?;
    let genesis = Anchor {
        position: Position::START,
        hash: GENESIS.to_owned(),
    };
    let anchors = vec![anchor(db, 3).await?, anchor(db, 5).await?, genesis];
    let report = walk(db, anchored(anchors)).await?;
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.anchors, vec![AnchorStatus::Holds; 3]);
    assert_eq!(report.n_checked, 5);
    assert_eq!(report.head_hash, hash_at(db, 5).await?);
    Ok(())
});

backend_test!(
    a_rewrite_that_recomputes_every_hash_contradicts_a_later_anchor,
    |t: TestDb| async move {
        let db = t.db();
        append_events(db, 5).await?;
        let anchors = vec![anchor(db, 4).await?, anchor(db, 1).await?];
        tamper(db, &edit_data(t.backend(), 2), true).await?;
        // Consistent with itself: the chain alone cannot tell.
        assert!(db.verify_chain(&mut |_, _| {}).await?.is_intact());

        let report = walk(db, anchored(anchors)).await?;
        assert_breach(&report, 4, Problem::CheckpointMismatch);
        assert_eq!(
            report.anchors,
            vec![AnchorStatus::Contradicted, AnchorStatus::Holds]
        );
        assert_eq!(report.n_checked, 3);
        Ok(())
    }
);

backend_test!(
    a_cut_tail_with_a_rewritten_head_leaves_an_anchor_beyond_the_log,
    |t: TestDb| async move {
        let db = t.db();
        append_events(db, 5).await?;
        let anchors = vec![anchor(db, 5).await?, anchor(db, 2).await?];
        tamper(
            db,
            "DELETE FROM domain_events WHERE position > 3; \
             UPDATE log_head SET last_position = 3, \
             last_hash = (SELECT hash FROM domain_events WHERE position = 3) WHERE id = 1",
            false,
        )
        .await?;
        assert!(db.verify_chain(&mut |_, _| {}).await?.is_intact());

        let report = walk(db, anchored(anchors)).await?;
        assert_breach(&report, 4, Problem::Truncated);
        assert_eq!(
            report.anchors,
            vec![AnchorStatus::BeyondTheLog, AnchorStatus::Holds]
        );
        Ok(())
    }
);

backend_test!(
    a_walk_from_an_anchor_rehashes_what_follows_it,
    |t: TestDb| async move {
        let db = t.db();
        append_events(db, 5).await?;
        let start = anchor(db, 3).await?;
        let report = walk(
            db,
            ChainCheck {
                anchors: Vec::new(),
                start: Some(start.clone()),
            },
        )
        .await?;
        assert!(report.is_intact(), "{report:?}");
        assert_eq!((report.from, report.n_checked), (Position::new(3), 2));

        // An event after the anchor edited naively: found.
        tamper(db, &edit_data(t.backend(), 4), false).await?;
        let report = walk(
            db,
            ChainCheck {
                anchors: Vec::new(),
                start: Some(start.clone()),
            },
        )
        .await?;
        assert_breach(&report, 4, Problem::HashMismatch);

        // Rewritten before the anchor, hashes recomputed: the anchor no longer holds.
        tamper(db, &edit_data(t.backend(), 2), true).await?;
        let report = walk(
            db,
            ChainCheck {
                anchors: Vec::new(),
                start: Some(start.clone()),
            },
        )
        .await?;
        assert_breach(&report, 3, Problem::CheckpointMismatch);

        // Cut below the anchor.
        tamper(db, "DELETE FROM domain_events WHERE position >= 3", true).await?;
        let report = walk(
            db,
            ChainCheck {
                anchors: Vec::new(),
                start: Some(start),
            },
        )
        .await?;
        assert_breach(&report, 3, Problem::Truncated);
        Ok(())
    }
);

backend_test!(
    the_columns_reads_filter_on_are_held_to_the_hashed_metadata,
    |t: TestDb| async move {
        let db = t.db();
        append_events(db, 4).await?;
        let cast = match t.backend() {
            Backend::Sqlite => "",
            Backend::Postgres => "::uuid",
        };
        let other = uuid::Uuid::now_v7();
        // From the end of the log backwards, so that each edit is the first breach.
        for (statement, position, column) in [
            // Out of its request's timeline.
            (
                format!(
                    "UPDATE domain_events SET correlation_id = '{other}'{cast} WHERE position = 3"
                ),
                3,
                "correlation_id",
            ),
            // Out of its organization.
            (
                "UPDATE domain_events SET org_id = NULL WHERE position = 2".to_owned(),
                2,
                "org_id",
            ),
            // Into another one.
            (
                format!("UPDATE domain_events SET org_id = '{other}'{cast} WHERE position = 1"),
                1,
                "org_id",
            ),
        ] {
            tamper(db, &statement, false).await?;
            let report = db.verify_chain(&mut |_, _| {}).await?;
            assert_breach(&report, position, Problem::ColumnMismatch);
            let detail = &report.breach.as_ref().expect("a breach").detail;
            assert!(detail.contains(column), "{column} in {detail}");
        }
        Ok(())
    }
);

backend_test!(
    a_row_that_no_longer_decodes_is_a_breach_at_its_position,
    |t: TestDb| async move {
        let db = t.db();
        append_events(db, 3).await?;
        // (statement, the column named, whether the hashes are then recomputed)
        let edits: &[(&str, &str, bool)] = match t.backend() {
            Backend::Sqlite => &[
                (
                    "UPDATE domain_events SET event_id = 'forged' WHERE position = 3",
                    "event_id",
                    false,
                ),
                (
                    "UPDATE domain_events SET event_data = 'not json' WHERE position = 2",
                    "event_data",
                    false,
                ),
                (
                    "UPDATE domain_events SET created_at = 'yesterday' WHERE position = 1",
                    "created_at",
                    false,
                ),
            ],
            Backend::Postgres => &[
                // Hashes true, as a rewrite makes it, but is not metadata.
                (
                    "UPDATE domain_events SET event_metadata = '[]'::jsonb WHERE position = 3",
                    "event_metadata",
                    true,
                ),
                (
                    "UPDATE domain_events SET event_data = '{\"n\": 1e400}'::jsonb WHERE position = 2",
                    "event_data",
                    false,
                ),
                (
                    "UPDATE domain_events SET created_at = 'infinity' WHERE position = 1",
                    "created_at",
                    false,
                ),
            ],
        };
        for (position, (statement, column, recompute)) in (1..=3).rev().zip(edits) {
            tamper(db, statement, *recompute).await?;
            let report = db.verify_chain(&mut |_, _| {}).await?;
            assert_breach(&report, position, Problem::Undecodable);
            let detail = &report.breach.as_ref().expect("a breach").detail;
            assert!(detail.contains(column), "{column} in {detail}");
        }
        Ok(())
    }
);
