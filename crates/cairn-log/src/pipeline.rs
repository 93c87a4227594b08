//! PostgreSQL writes sent together: an optimistic batch in as few round trips as it
//! has reads, plus one.
//!
//! A handler's write waits for PostgreSQL's answer before the next one goes out, and
//! on a busy log those round trips, not the work, are what a batch spends its time
//! on. In an optimistic batch (see [`crate::writer`]) a write is therefore queued
//! instead of sent, and reported as having changed one row, which is what a handler's
//! write to its own projection row does. The queue goes out as one simple-protocol
//! script when the transaction next needs an answer (a read), or at the end of the
//! batch together with the rows of the log and the commit itself. Each statement is
//! prepared once per connection with its parameters' types (as sqlx binds them), and
//! run with its arguments written as literals.
//!
//! The report is checked by PostgreSQL itself: a queued write runs as
//! `WITH w AS (<write> RETURNING 1) SELECT 1 / (count(*) = 1)::int FROM w`, which
//! fails when it changed other than one row. A failure stops the script before its
//! commit; the transaction is rolled back and the writer runs the batch again with
//! savepoints and nothing queued, where every statement is answered as it runs.
//!
//! Literals: every value is a quoted string (`'…'`, quotes doubled), cast by the
//! prepared statement to its parameter's type, or `NULL`. The connection runs with
//! `standard_conforming_strings` on, so a backslash is an ordinary character; a value
//! holding a NUL (which PostgreSQL's text cannot) is never queued.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use futures::TryStreamExt as _;
use sha2::{Digest, Sha256};
use sqlx::postgres::PgConnection;

use crate::error::DbError;
use crate::sql::{Arg, Sql, Track};

/// The statements prepared on the writer's connection, by name. Cleared whenever the
/// pool opens a new connection.
pub(crate) type Prepared = Arc<Mutex<HashSet<String>>>;

/// One statement waiting to go out: the text to prepare (a write wrapped in its
/// check, or the batch's own final statement) and its arguments.
#[derive(Debug)]
struct Queued {
    text: String,
    args: Vec<Arg>,
}

/// Writes queued in one transaction.
#[derive(Debug)]
pub(crate) struct Pipeline {
    queued: Mutex<Vec<Queued>>,
    prepared: Prepared,
}

/// The write wrapped so that PostgreSQL refuses it unless it changed exactly one row;
/// `None` for a statement that cannot be wrapped (not a plain write, or one that
/// already returns rows).
fn checked(sql: &str) -> Option<String> {
    let text = sql.trim().trim_end_matches(';').trim_end();
    let head: String = text
        .chars()
        .take(6)
        .collect::<String>()
        .to_ascii_uppercase();
    let writes = ["INSERT", "UPDATE", "DELETE"].contains(&head.as_str());
    let upper = text.to_ascii_uppercase();
    if !writes || upper.contains("RETURNING") || text.contains(';') || text.contains("--") {
        return None;
    }
    Some(format!(
        "WITH w AS ({text} RETURNING 1) SELECT 1 / (count(*) = 1)::int AS one FROM w"
    ))
}

impl Pipeline {
    pub(crate) fn new(prepared: Prepared) -> Pipeline {
        Pipeline {
            queued: Mutex::new(Vec::new()),
            prepared,
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Vec<Queued>> {
        self.queued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a write, if it can be checked by PostgreSQL and written as literals.
    pub(crate) fn push(&self, sql: &Sql, args: &[Arg]) -> bool {
        // JSON is written with control characters escaped; only text can hold one.
        let has_nul = args
            .iter()
            .any(|arg| matches!(arg, Arg::Text(Some(text)) if text.contains('\0')));
        if has_nul || sql.as_str().contains('\0') {
            return false;
        }
        let Some(text) = checked(sql.as_str()) else {
            return false;
        };
        self.queue().push(Queued {
            text,
            args: args.to_vec(),
        });
        true
    }

    /// Queues the batch's own final statement (its rows of the log), unchecked.
    pub(crate) fn push_final(&self, text: &'static str, args: Vec<Arg>) {
        self.queue().push(Queued {
            text: text.to_owned(),
            args,
        });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue().is_empty()
    }

    /// Whether a statement of this name is prepared on the connection.
    pub(crate) fn is_prepared(&self, name: &str) -> bool {
        self.prepared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(name)
    }

    /// Remembers that a statement of this name is prepared on the connection.
    pub(crate) fn mark_prepared(&self, name: &str) {
        self.prepared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_owned());
    }

    /// Sends what is queued, in one round trip, followed by `COMMIT` if `commit`. Any
    /// failure (a write that changed other than one row among them) stops the script
    /// before the commit, poisons the transaction and comes back as the error.
    pub(crate) async fn send(
        &self,
        conn: &mut PgConnection,
        track: Option<&Track>,
        commit: bool,
    ) -> Result<(), DbError> {
        let queued = std::mem::take(&mut *self.queue());
        if queued.is_empty() && !commit {
            return Ok(());
        }
        // The name a statement of the script prepares, if it is a PREPARE.
        let mut prepares: Vec<Option<String>> = Vec::new();
        let mut script = String::new();
        {
            let prepared = self
                .prepared
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut preparing = HashSet::new();
            for item in &queued {
                let name = statement_name(&item.text, &item.args);
                if !prepared.contains(&name) && preparing.insert(name.clone()) {
                    let types: Vec<&str> = item.args.iter().map(type_of).collect();
                    let _ = writeln!(
                        script,
                        "PREPARE {name} ({}) AS {};",
                        types.join(", "),
                        item.text
                    );
                    prepares.push(Some(name.clone()));
                }
                let _ = write!(script, "EXECUTE {name}(");
                for (index, arg) in item.args.iter().enumerate() {
                    if index > 0 {
                        script.push_str(", ");
                    }
                    literal(arg, &mut script);
                }
                script.push_str(");\n");
                prepares.push(None);
            }
        }
        if commit {
            script.push_str("COMMIT;");
        }
        let mut results = sqlx::raw_sql(sqlx::AssertSqlSafe(script)).execute_many(conn);
        let mut index = 0;
        loop {
            match results.try_next().await {
                Ok(Some(_)) => {
                    if let Some(Some(name)) = prepares.get(index) {
                        self.prepared
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .insert(name.clone());
                    }
                    index += 1;
                }
                Ok(None) => return Ok(()),
                Err(error) => {
                    if let Some(track) = track {
                        track
                            .failures
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    return Err(error.into());
                }
            }
        }
    }
}

/// A prepared statement's name: its text and its parameters' types, hashed.
fn statement_name(sql: &str, args: &[Arg]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(sql.as_bytes());
    for arg in args {
        hasher.update(type_of(arg).as_bytes());
        hasher.update(b",");
    }
    let digest = hasher.finalize();
    format!("cairn_w_{}", crate::hash::hex(&digest[..10]))
}

/// The PostgreSQL type sqlx binds a value of this kind as.
fn type_of(arg: &Arg) -> &'static str {
    match arg {
        Arg::Bool(_) => "boolean",
        Arg::Int(_) => "bigint",
        Arg::Float(_) => "double precision",
        Arg::Text(_) => "text",
        Arg::Uuid(_) => "uuid",
        Arg::Json(_) => "jsonb",
        Arg::Time(_) => "timestamptz",
    }
}

fn quoted(text: &str, out: &mut String) {
    out.push('\'');
    for c in text.chars() {
        if c == '\'' {
            out.push('\'');
        }
        out.push(c);
    }
    out.push('\'');
}

/// Writes a value as a literal for an EXECUTE argument.
fn literal(arg: &Arg, out: &mut String) {
    match arg {
        Arg::Bool(Some(value)) => out.push_str(if *value { "true" } else { "false" }),
        Arg::Int(Some(value)) => quoted(&value.to_string(), out),
        Arg::Float(Some(value)) => {
            let text = if value.is_nan() {
                "NaN".to_owned()
            } else if value.is_infinite() {
                if *value > 0.0 {
                    "Infinity"
                } else {
                    "-Infinity"
                }
                .to_owned()
            } else {
                format!("{value:?}")
            };
            quoted(&text, out);
        }
        Arg::Text(Some(value)) => quoted(value, out),
        Arg::Uuid(Some(value)) => quoted(&value.hyphenated().to_string(), out),
        Arg::Json(Some(value)) => quoted(&value.to_string(), out),
        Arg::Time(Some(value)) => quoted(
            &value.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            out,
        ),
        Arg::Bool(None)
        | Arg::Int(None)
        | Arg::Float(None)
        | Arg::Text(None)
        | Arg::Uuid(None)
        | Arg::Json(None)
        | Arg::Time(None) => out.push_str("NULL"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[track_caller]
    fn check(arg: Arg, expect: &str) {
        let mut out = String::new();
        literal(&arg, &mut out);
        assert_eq!(out, expect);
    }

    #[test]
    fn literals_quote_every_value_and_double_quotes() {
        check(Arg::Text(Some("it's".into())), "'it''s'");
        check(Arg::Text(Some("back\\slash".into())), "'back\\slash'");
        check(
            Arg::Text(Some("'); DROP TABLE x; --".into())),
            "'''); DROP TABLE x; --'",
        );
        check(
            Arg::Int(Some(-9_223_372_036_854_775_808)),
            "'-9223372036854775808'",
        );
        check(Arg::Float(Some(f64::NAN)), "'NaN'");
        check(Arg::Float(Some(f64::NEG_INFINITY)), "'-Infinity'");
        check(Arg::Float(Some(0.1)), "'0.1'");
        check(Arg::Bool(Some(true)), "true");
        check(Arg::Json(Some(json!({"a": "b'c"}))), "'{\"a\":\"b''c\"}'");
        check(Arg::Uuid(None), "NULL");
    }

    #[test]
    fn only_plain_writes_are_queued_and_each_is_checked() {
        assert_eq!(
            checked("UPDATE t SET x = $1 WHERE id = $2").as_deref(),
            Some(
                "WITH w AS (UPDATE t SET x = $1 WHERE id = $2 RETURNING 1) SELECT 1 / (count(*) = 1)::int AS one FROM w"
            )
        );
        assert!(checked("  insert into t values ($1);").is_some());
        assert!(checked("SELECT 1").is_none());
        assert!(checked("INSERT INTO t VALUES ($1) RETURNING id").is_none());
        assert!(checked("DELETE FROM t; DELETE FROM u").is_none());
        assert!(checked("UPDATE t SET x = 1 -- a comment").is_none());
        assert!(checked("WITH x AS (DELETE FROM t RETURNING *) SELECT 1").is_none());
    }

    #[test]
    fn values_holding_nul_are_not_queued() {
        let pipeline = Pipeline::new(Prepared::default());
        let sql = Sql::from("UPDATE t SET x = $1");
        assert!(!pipeline.push(&sql, &[Arg::Text(Some("a\0b".into()))]));
        assert!(pipeline.is_empty());
        assert!(pipeline.push(&sql, &[Arg::Text(Some("ab".into()))]));
        assert!(!pipeline.is_empty());
    }

    #[test]
    fn names_depend_on_text_and_types() {
        let text = "UPDATE t SET x = $1";
        assert_eq!(
            statement_name(text, &[Arg::Int(Some(1))]),
            statement_name(text, &[Arg::Int(None)])
        );
        assert_ne!(
            statement_name(text, &[Arg::Int(Some(1))]),
            statement_name(text, &[Arg::Text(Some("1".into()))])
        );
    }
}
