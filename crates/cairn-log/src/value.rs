//! Statements and their values, the same on both backends.
//!
//! Queries use `$1, $2, …` placeholders, which SQLite and PostgreSQL both accept.
//! Arguments are [`Arg`] values, bound by each backend with its own type for the value
//! (a UUID is text on SQLite and `uuid` on PostgreSQL, JSON is text and `jsonb`), so
//! the same statement works against either. Nothing here knows a driver: the backends
//! bind, run and read.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use cairn_types::{
    CausationId, CorrelationId, ErrorCode, EventId, EventType, InvitationId, OrgId, Position,
    StreamId, StreamType, StreamVersion, UserId, WorkflowId,
};

/// Which database a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// The embedded default: one file, one writer.
    Sqlite,
    /// The production backend, shared by several processes.
    Postgres,
}

impl Backend {
    /// `sqlite` or `postgres`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text of a statement: a literal, or text built from fixed fragments whose values
/// are all bound as arguments.
#[derive(Debug, Clone)]
pub struct Sql(SqlText);

#[derive(Debug, Clone)]
pub(crate) enum SqlText {
    Literal(&'static str),
    Built(Arc<str>),
}

impl Sql {
    /// A statement assembled at run time. Only fixed fragments and placeholders may go
    /// into the text; every value is bound as an argument.
    pub fn built(text: impl Into<String>) -> Sql {
        Sql(SqlText::Built(Arc::from(text.into())))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            SqlText::Literal(text) => text,
            SqlText::Built(text) => text,
        }
    }

    /// The text, as a literal or shared: what a driver takes without copying.
    pub(crate) fn text(&self) -> SqlText {
        self.0.clone()
    }

    /// Whether the statement only reads (so a unit of work that ran only such
    /// statements has nothing to undo).
    pub(crate) fn reads_only(&self) -> bool {
        let text = self.as_str().trim_start();
        let head = text.get(..6).unwrap_or(text);
        head.eq_ignore_ascii_case("SELECT")
    }
}

impl From<&'static str> for Sql {
    fn from(text: &'static str) -> Sql {
        Sql(SqlText::Literal(text))
    }
}

/// One bound argument. Each variant carries an `Option` so that a NULL still has the
/// type PostgreSQL needs to accept it.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Bool(Option<bool>),
    Int(Option<i64>),
    Float(Option<f64>),
    Text(Option<String>),
    Uuid(Option<Uuid>),
    Json(Option<Value>),
    Time(Option<DateTime<Utc>>),
    /// One value per row, for a column bound as an array (PostgreSQL's `UNNEST`): see
    /// [`Columns`].
    #[doc(hidden)]
    Array(ArgType, Vec<Arg>),
}

/// The type of an [`Arg`], as PostgreSQL names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[doc(hidden)]
pub enum ArgType {
    Bool,
    Int,
    Float,
    Text,
    Uuid,
    Json,
    Time,
}

impl ArgType {
    /// The PostgreSQL type a value of this kind is bound as.
    pub(crate) const fn postgres(self) -> &'static str {
        match self {
            ArgType::Bool => "boolean",
            ArgType::Int => "bigint",
            ArgType::Float => "double precision",
            ArgType::Text => "text",
            ArgType::Uuid => "uuid",
            ArgType::Json => "jsonb",
            ArgType::Time => "timestamptz",
        }
    }
}

impl Arg {
    /// The argument's type; an array's is its elements'.
    pub(crate) fn arg_type(&self) -> ArgType {
        match self {
            Arg::Bool(_) => ArgType::Bool,
            Arg::Int(_) => ArgType::Int,
            Arg::Float(_) => ArgType::Float,
            Arg::Text(_) => ArgType::Text,
            Arg::Uuid(_) => ArgType::Uuid,
            Arg::Json(_) => ArgType::Json,
            Arg::Time(_) => ArgType::Time,
            Arg::Array(of, _) => *of,
        }
    }
}

/// A value that can be bound as an [`Arg`].
pub trait IntoArg {
    /// The value as an argument.
    fn into_arg(self) -> Arg;
    /// A NULL of this value's type.
    fn null() -> Arg;
}

impl<T: IntoArg> IntoArg for Option<T> {
    fn into_arg(self) -> Arg {
        match self {
            Some(value) => value.into_arg(),
            None => T::null(),
        }
    }
    fn null() -> Arg {
        T::null()
    }
}

impl<T: IntoArg + Clone> IntoArg for &T {
    fn into_arg(self) -> Arg {
        self.clone().into_arg()
    }
    fn null() -> Arg {
        T::null()
    }
}

macro_rules! into_arg {
    ($ty:ty, $variant:ident, |$v:ident| $convert:expr) => {
        impl IntoArg for $ty {
            fn into_arg(self) -> Arg {
                let $v = self;
                Arg::$variant(Some($convert))
            }
            fn null() -> Arg {
                Arg::$variant(None)
            }
        }
    };
}

into_arg!(bool, Bool, |v| v);
into_arg!(i64, Int, |v| v);
into_arg!(i32, Int, |v| i64::from(v));
into_arg!(u32, Int, |v| i64::from(v));
into_arg!(f64, Float, |v| v);
into_arg!(String, Text, |v| v);
into_arg!(&str, Text, |v| v.to_owned());
into_arg!(Uuid, Uuid, |v| v);
into_arg!(Value, Json, |v| v);
into_arg!(DateTime<Utc>, Time, |v| v);
into_arg!(Position, Int, |v| v.get());
into_arg!(StreamVersion, Int, |v| v.get());
into_arg!(EventType, Text, |v| v.as_str().to_owned());
into_arg!(StreamType, Text, |v| v.as_str().to_owned());
into_arg!(ErrorCode, Text, |v| v.as_str().to_owned());
into_arg!(EventId, Uuid, |v| v.as_uuid());
into_arg!(StreamId, Uuid, |v| v.as_uuid());
into_arg!(CorrelationId, Uuid, |v| v.as_uuid());
into_arg!(CausationId, Uuid, |v| v.as_uuid());
into_arg!(OrgId, Uuid, |v| v.as_uuid());
into_arg!(UserId, Uuid, |v| v.as_uuid());
into_arg!(WorkflowId, Uuid, |v| v.as_uuid());
into_arg!(InvitationId, Uuid, |v| v.as_uuid());

/// Builds a `Vec<Arg>` from values of any [`IntoArg`] type.
///
/// ```
/// let args = cairn_log::args![7_i64, "seven", None::<String>];
/// assert_eq!(args.len(), 3);
/// ```
#[macro_export]
macro_rules! args {
    ($($value:expr),* $(,)?) => {
        vec![$($crate::IntoArg::into_arg($value)),*]
    };
}

/// Picks the statement text for the backend at hand, where the dialects differ.
pub const fn dialect(
    backend: Backend,
    sqlite: &'static str,
    postgres: &'static str,
) -> &'static str {
    match backend {
        Backend::Sqlite => sqlite,
        Backend::Postgres => postgres,
    }
}

/// Rows of one table, written together: on PostgreSQL bound one array per column and
/// unnested, so that many rows go in one statement with a fixed number of arguments
/// (`INSERT INTO t (a, b) SELECT * FROM UNNEST($1::bigint[], $2::text[])`); on SQLite
/// one prepared statement per row, which costs no round trip there.
#[derive(Debug)]
pub(crate) struct Columns {
    table: &'static str,
    columns: &'static [(&'static str, ArgType)],
    rows: Vec<Vec<Arg>>,
}

impl Columns {
    pub(crate) fn new(table: &'static str, columns: &'static [(&'static str, ArgType)]) -> Columns {
        Columns {
            table,
            columns,
            rows: Vec::new(),
        }
    }

    /// Adds a row: one value per column, in the columns' order.
    pub(crate) fn row(&mut self, row: Vec<Arg>) {
        debug_assert_eq!(row.len(), self.columns.len(), "a value per column");
        self.rows.push(row);
    }

    fn names(&self) -> String {
        let names: Vec<&str> = self.columns.iter().map(|(name, _)| *name).collect();
        names.join(", ")
    }

    /// One statement for every row, its placeholders numbered from `*next` on (which
    /// it advances), and its arguments: an array per column.
    pub(crate) fn unnest(self, next: &mut usize) -> (String, Vec<Arg>) {
        let mut arrays = Vec::with_capacity(self.columns.len());
        let mut columns: Vec<Vec<Arg>> = self
            .columns
            .iter()
            .map(|_| Vec::with_capacity(self.rows.len()))
            .collect();
        for row in self.rows.iter().cloned() {
            for (column, value) in columns.iter_mut().zip(row) {
                column.push(value);
            }
        }
        let mut args = Vec::with_capacity(self.columns.len());
        for ((_, of), values) in self.columns.iter().zip(columns) {
            arrays.push(format!("${}::{}[]", *next, of.postgres()));
            *next += 1;
            args.push(Arg::Array(*of, values));
        }
        let sql = format!(
            "INSERT INTO {} ({}) SELECT * FROM UNNEST({})",
            self.table,
            self.names(),
            arrays.join(", ")
        );
        (sql, args)
    }

    /// A statement for one row, and each row's arguments.
    pub(crate) fn each(self) -> (String, Vec<Vec<Arg>>) {
        let placeholders: Vec<String> = (1..=self.columns.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            self.table,
            self.names(),
            placeholders.join(", ")
        );
        (sql, self.rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_selects_count_as_reads() {
        assert!(Sql::from("SELECT 1").reads_only());
        assert!(Sql::from("  select x FROM t").reads_only());
        assert!(!Sql::from("INSERT INTO t VALUES (1)").reads_only());
        assert!(!Sql::from("WITH x AS (DELETE FROM t RETURNING *) SELECT 1").reads_only());
        assert!(!Sql::from("SEL").reads_only());
    }

    #[test]
    fn columns_bind_one_array_each() {
        const COLUMNS: &[(&str, ArgType)] = &[("a", ArgType::Int), ("b", ArgType::Text)];
        let mut rows = Columns::new("t", COLUMNS);
        rows.row(crate::args![1_i64, "one"]);
        rows.row(crate::args![2_i64, None::<String>]);
        let (one, each) = Columns {
            rows: rows.rows.clone(),
            ..Columns::new("t", COLUMNS)
        }
        .each();
        assert_eq!(one, "INSERT INTO t (a, b) VALUES ($1, $2)");
        assert_eq!(each.len(), 2);
        let mut next = 3;
        let (sql, args) = rows.unnest(&mut next);
        assert_eq!(
            sql,
            "INSERT INTO t (a, b) SELECT * FROM UNNEST($3::bigint[], $4::text[])"
        );
        assert_eq!(next, 5);
        assert_eq!(
            args,
            vec![
                Arg::Array(ArgType::Int, vec![Arg::Int(Some(1)), Arg::Int(Some(2))]),
                Arg::Array(
                    ArgType::Text,
                    vec![Arg::Text(Some("one".into())), Arg::Text(None)]
                ),
            ]
        );
    }
}
