//! After an erasure, nothing of the erased people is left in the SQLite file's unused
//! space. SQLite zeroes what it deletes, but a page that splits keeps copies of the
//! cells that moved out of it; rebuilding the tables that hold people's data in the
//! clear frees those pages, and the rows come back as they were.

use cairn_log::{Backend, Db, Erasure, args};
use cairn_testkit::{TestDb, TestResult};
use cairn_types::UserId;
use serde_json::json;

const PEOPLE: usize = 2_000;

fn email(n: usize) -> String {
    format!("person{n}@scrub.example")
}

/// Every row of `people`, with its row id, in order.
async fn rows(db: &Db) -> anyhow::Result<Vec<(i64, String, String, String)>> {
    let mut reader = db.reader().await?;
    let rows = reader
        .conn()
        .fetch_all(
            "SELECT rowid AS n, id, email, note FROM people ORDER BY rowid",
            args![],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.get("n")?,
                row.get("id")?,
                row.get("email")?,
                row.get("note")?,
            ))
        })
        .collect()
}

/// How many of the erased addresses the database file holds anywhere, after its
/// write-ahead log has been copied into it.
async fn addresses_left(t: &TestDb) -> anyhow::Result<usize> {
    t.db().compact_wal().await?;
    let path = t.url().trim_start_matches("sqlite://");
    let mut bytes = std::fs::read(path)?;
    if let Ok(wal) = std::fs::read(format!("{path}-wal")) {
        bytes.extend(wal);
    }
    // The standard library's search, compiled with optimizations even in a test build.
    let text = String::from_utf8_lossy(&bytes);
    Ok((0..PEOPLE).filter(|n| text.contains(&email(*n))).count())
}

/// Fills `people` the way a projection fills over months: rows inserted in order, a
/// fifth of them growing later (a page that overflows splits), then every address
/// erased.
async fn fill_then_erase(db: &Db) -> anyhow::Result<()> {
    let mut tx = db.begin().await?;
    tx.conn()
        .execute_script(
            "CREATE TABLE people (id TEXT PRIMARY KEY, email TEXT NOT NULL, note TEXT NOT NULL); \
             CREATE UNIQUE INDEX people_by_email ON people (email) WHERE email <> ''",
        )
        .await?;
    for n in 0..PEOPLE {
        tx.conn()
            .execute(
                "INSERT INTO people (id, email, note) VALUES ($1, $2, '')",
                args![format!("{n:08}"), email(n)],
            )
            .await?;
    }
    for n in (0..PEOPLE).step_by(5) {
        tx.conn()
            .execute(
                "UPDATE people SET note = $2 WHERE id = $1",
                args![format!("{n:08}"), "g".repeat(300)],
            )
            .await?;
    }
    tx.commit().await?;

    let mut tx = db.begin().await?;
    tx.conn()
        .execute("UPDATE people SET email = ''", args![])
        .await?;
    // The erasure that counts: the rebuild follows the erasures' count.
    let erased = db
        .keyring()
        .erase_in(&mut tx, UserId::new_v7(), json!({"reason": "asked"}))
        .await?;
    assert!(matches!(erased, Erasure::Erased { .. }), "{erased:?}");
    tx.commit().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_leaves_nothing_in_the_unused_space_of_sqlite_pages() -> TestResult {
    cairn_testkit::run(
        Backend::Sqlite,
        "scrub::an_erasure_leaves_nothing_in_the_unused_space_of_sqlite_pages",
        |t: TestDb| async move {
            let db = t.db();
            fill_then_erase(db).await?;
            let before = rows(db).await?;
            let left = addresses_left(&t).await?;
            assert!(
                left > 0,
                "the pages that split kept no copy of an erased address: this SQLite zeroes \
                 what moves, and the test no longer shows what the rebuild is for"
            );

            assert!(db.scrub_erased(&["people"]).await?, "a rebuild was due");
            assert_eq!(
                addresses_left(&t).await?,
                0,
                "erased addresses left in the file after the rebuild (were {left})"
            );
            assert_eq!(rows(db).await?, before, "the rows came back changed");

            // Nothing new erased: nothing to rebuild.
            assert!(!db.scrub_erased(&["people"]).await?);
            Ok(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_that_is_not_there_is_named_and_nothing_is_rebuilt() -> TestResult {
    cairn_testkit::run(
        Backend::Sqlite,
        "scrub::a_table_that_is_not_there_is_named_and_nothing_is_rebuilt",
        |t: TestDb| async move {
            let db = t.db();
            fill_then_erase(db).await?;
            let error = db
                .scrub_erased(&["people", "no_such_table"])
                .await
                .expect_err("an unknown table");
            assert!(error.to_string().contains("no_such_table"), "{error}");
            // Still due, and the table already rebuilt in the failed attempt was
            // rolled back with it.
            assert!(db.scrub_erased(&["people"]).await?);
            Ok(())
        },
    )
    .await
}
