//! The capability to write projection tables.

use cairn_log::{Arg, Backend, Conn, Row};

use crate::registry::HandlerError;

/// The handle through which a handler writes projection tables.
///
/// Only the dispatcher creates one, inside the savepoint it opens for one event, so a
/// projection write can only happen as part of applying an event: there is no other
/// way to get a connection that may write projections.
///
/// ```compile_fail
/// // Nothing outside cairn-dispatch can construct the handle.
/// fn forge(conn: cairn_log::Conn<'_>) -> cairn_dispatch::Projections<'_> {
///     cairn_dispatch::Projections::new(conn)
/// }
/// ```
///
/// ```compile_fail
/// fn forge(conn: cairn_log::Conn<'_>) -> cairn_dispatch::Projections<'_> {
///     cairn_dispatch::Projections { conn }
/// }
/// ```
#[derive(Debug)]
pub struct Projections<'c> {
    conn: Conn<'c>,
}

impl<'c> Projections<'c> {
    pub(crate) fn new(conn: Conn<'c>) -> Self {
        Self { conn }
    }

    /// The backend, for the rare statement whose dialects differ.
    pub fn backend(&self) -> Backend {
        self.conn.backend()
    }

    /// Runs a statement; returns how many rows it changed. Statements are fixed text
    /// with `$1, $2, …` placeholders, valid on both backends.
    pub async fn execute(
        &mut self,
        sql: &'static str,
        args: Vec<Arg>,
    ) -> Result<u64, HandlerError> {
        Ok(self.conn.execute(sql, args).await?)
    }

    /// Runs a query and returns its first row, if any.
    pub async fn fetch_optional(
        &mut self,
        sql: &'static str,
        args: Vec<Arg>,
    ) -> Result<Option<Row>, HandlerError> {
        Ok(self.conn.fetch_optional(sql, args).await?)
    }

    /// Runs a query and returns every row.
    pub async fn fetch_all(
        &mut self,
        sql: &'static str,
        args: Vec<Arg>,
    ) -> Result<Vec<Row>, HandlerError> {
        Ok(self.conn.fetch_all(sql, args).await?)
    }
}
