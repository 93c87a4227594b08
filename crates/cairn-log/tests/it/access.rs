//! The access log on both backends: records chain and verify, the export finds a
//! person's records, a tampered, deleted or reordered record is named, the tables
//! refuse edits, and pruning removes only the oldest records past the retention while
//! the rest of the chain still verifies.

use chrono::{Duration, Utc};

use cairn_log::{AccessRecord, AccessVia, Db, Problem};
use cairn_testkit::{TestDb, backend_test, tamper_access};
use cairn_types::{CorrelationId, OrgId, UserId};

/// A read by `who` of `subjects`, `days_ago` days ago.
fn read(who: &str, subjects: Vec<UserId>, days_ago: i64) -> AccessRecord {
    let mut record = AccessRecord::now(
        who,
        AccessVia::Api,
        CorrelationId::new_v7(),
        "organization users",
        subjects,
    )
    .org(Some(OrgId::new_v7()));
    record.recorded_at -= Duration::days(days_ago);
    record
}

async fn verify(db: &Db) -> anyhow::Result<cairn_log::AccessAuditReport> {
    Ok(db.verify_access_chain().await?)
}

#[track_caller]
fn assert_access_breach(report: &cairn_log::AccessAuditReport, seq: i64, problem: Problem) {
    let breach = report.breach.as_ref().expect("a breach");
    assert_eq!((breach.seq, breach.problem), (seq, problem), "{breach:?}");
}

backend_test!(
    recorded_reads_chain_verify_and_export,
    |t: TestDb| async move {
        let db = t.db();
        let alice = UserId::new_v7();
        let bob = UserId::new_v7();
        assert!(verify(db).await?.is_intact());
        db.record_access(read("user:reader", vec![alice, bob], 0))
            .await;
        db.record_access(read("service:ops", vec![bob], 0)).await;
        db.record_access(read("operator:root", Vec::new(), 0)).await;
        db.flush_access().await;

        let report = verify(db).await?;
        assert!(report.is_intact(), "{report:?}");
        assert_eq!((report.n_checked, report.head), (3, 3));

        let bobs = db.read_access(bob, None, 100).await?;
        assert_eq!(
            bobs.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 2],
            "{bobs:?}"
        );
        assert_eq!(bobs[0].record.subjects, vec![alice, bob]);
        assert_eq!(bobs[1].record.who, "service:ops");
        assert_eq!(db.read_access(alice, None, 100).await?.len(), 1);
        let later = Utc::now() + Duration::minutes(1);
        assert!(db.read_access(bob, Some(later), 100).await?.is_empty());
        Ok(())
    }
);

backend_test!(
    records_written_together_chain_in_their_order,
    |t: TestDb| async move {
        let db = t.db();
        let people: Vec<UserId> = (0..5).map(|_| UserId::new_v7()).collect();
        // One unit of work, one statement on PostgreSQL: five records.
        db.write_access(
            people
                .iter()
                .map(|person| read("user:reader", vec![*person], 0))
                .collect(),
        )
        .await?;
        db.write_access(vec![read("service:ops", vec![people[0]], 0)])
            .await?;
        let report = verify(db).await?;
        assert!(report.is_intact(), "{report:?}");
        assert_eq!((report.n_checked, report.head), (6, 6));
        for (seq, person) in (1..).zip(&people) {
            let theirs = db.read_access(*person, None, 100).await?;
            assert_eq!(theirs[0].seq, seq, "{theirs:?}");
        }
        Ok(())
    }
);

backend_test!(an_edited_access_record_is_named, |t: TestDb| async move {
    let db = t.db();
    for _ in 0..4 {
        db.write_access(vec![read("user:reader", vec![UserId::new_v7()], 0)])
            .await?;
    }
    tamper_access(
        db,
        "UPDATE access_log SET who = 'user:someone-else' WHERE seq = 3",
    )
    .await?;
    let report = verify(db).await?;
    assert_access_breach(&report, 3, Problem::HashMismatch);
    assert_eq!(report.n_checked, 2);
    Ok(())
});

backend_test!(
    a_deleted_or_cut_access_record_is_named,
    |t: TestDb| async move {
        let db = t.db();
        for _ in 0..4 {
            db.write_access(vec![read("user:reader", Vec::new(), 0)])
                .await?;
        }
        tamper_access(db, "DELETE FROM access_log WHERE seq = 2").await?;
        assert_access_breach(&verify(db).await?, 2, Problem::Missing);

        tamper_access(db, "DELETE FROM access_log WHERE seq >= 2").await?;
        let report = verify(db).await?;
        assert_access_breach(&report, 2, Problem::Missing);
        assert!(report.breach.unwrap().detail.contains("head records 4"));
        Ok(())
    }
);

backend_test!(
    the_access_tables_refuse_edits_and_early_deletes,
    |t: TestDb| async move {
        let db = t.db();
        db.write_access(vec![read("user:reader", Vec::new(), 0)])
            .await?;
        for statement in [
            "UPDATE access_log SET who = 'x' WHERE seq = 1",
            "DELETE FROM access_log WHERE seq = 1",
            "UPDATE access_head SET last_seq = 0 WHERE id = 1",
            "DELETE FROM access_head",
        ] {
            let mut tx = db.begin().await?;
            let refused = tx
                .conn()
                .execute_script(cairn_log::Sql::built(statement))
                .await;
            assert!(refused.is_err(), "{statement} was allowed");
            drop(tx);
        }
        assert!(verify(db).await?.is_intact());
        Ok(())
    }
);

backend_test!(
    pruning_removes_only_the_oldest_records_past_the_retention,
    |t: TestDb| async move {
        let db = t.db();
        // Two old, one recent, then an old one again (a clock step): pruning stops at
        // the recent one, so the chain keeps its order.
        for days in [3000, 2500, 1, 2400] {
            db.write_access(vec![read("user:reader", Vec::new(), days)])
                .await?;
        }
        // Pruning spans never touches the access log.
        db.prune_spans(Utc::now()).await?;
        assert_eq!(verify(db).await?.n_checked, 4);

        let pruned = db.prune_access(Utc::now() - Duration::days(2190)).await?;
        assert_eq!(pruned, 2);
        let report = verify(db).await?;
        assert!(report.is_intact(), "{report:?}");
        assert_eq!(
            (report.pruned_through, report.n_checked, report.head),
            (2, 2, 4)
        );
        // Nothing more is old enough at the oldest end.
        assert_eq!(db.prune_access(Utc::now() - Duration::days(2190)).await?, 0);

        // New records chain on; a pruned anchor that is tampered with breaks the walk.
        db.write_access(vec![read("user:reader", Vec::new(), 0)])
            .await?;
        assert!(verify(db).await?.is_intact());
        tamper_access(
            db,
            "UPDATE access_head SET pruned_hash = 'aaaa' WHERE id = 1",
        )
        .await?;
        assert_access_breach(&verify(db).await?, 3, Problem::HashMismatch);
        Ok(())
    }
);

backend_test!(
    a_record_that_cannot_be_written_is_counted_not_dropped_silently,
    |t: TestDb| async move {
        let db = t.connect_again().await?;
        db.record_access(read("user:reader", Vec::new(), 0)).await;
        db.close().await;
        let failed = cairn_observe::metrics().access_records_failed.get();
        // The database is closed: the record cannot be queued, and says so.
        db.record_access(read("user:reader", Vec::new(), 0)).await;
        assert!(cairn_observe::metrics().access_records_failed.get() > failed);
        // What was queued before the close was written.
        assert_eq!(verify(t.db()).await?.n_checked, 1);
        Ok(())
    }
);
