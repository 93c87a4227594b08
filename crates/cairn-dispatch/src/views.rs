//! Views: the current read model of one stream (an organization, a user, a workflow
//! run), as the API shows it. The realtime feed sends each event with the views of its
//! stream, so a subscriber sees what the event changed without a second request.

use async_trait::async_trait;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::Serialize;
use serde_json::Value;

use cairn_log::Conn;
use cairn_types::StreamId;

/// Reads the read model of one stream.
#[async_trait]
pub trait View: Send + Sync + 'static {
    /// The name the view is delivered under: `organization`, `workflow_run`.
    fn name(&self) -> &'static str;

    /// The JSON Schema of what [`View::read`] returns, for the contracts.
    fn schema(&self, generator: &mut SchemaGenerator) -> Schema;

    /// The view of the stream now, or `None` when the stream has none (yet).
    async fn read(
        &self,
        conn: &mut Conn<'_>,
        stream_id: StreamId,
    ) -> Result<Option<Value>, cairn_log::DbError>;
}

/// A [`View`] from a name, a typed read and the read model's type.
pub struct TypedView<T, F> {
    name: &'static str,
    read: F,
    _model: std::marker::PhantomData<fn() -> T>,
}

impl<T, F> TypedView<T, F> {
    pub fn new(name: &'static str, read: F) -> Self {
        Self {
            name,
            read,
            _model: std::marker::PhantomData,
        }
    }
}

/// The read function of a [`TypedView`]: boxed, because it borrows the connection.
pub type ReadFuture<'a, T> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Option<T>, cairn_log::DbError>> + Send + 'a>,
>;

#[async_trait]
impl<T, F> View for TypedView<T, F>
where
    T: Serialize + JsonSchema + Send + 'static,
    F: for<'a, 'c> Fn(&'a mut Conn<'c>, StreamId) -> ReadFuture<'a, T> + Send + Sync + 'static,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn schema(&self, generator: &mut SchemaGenerator) -> Schema {
        generator.subschema_for::<T>()
    }

    async fn read(
        &self,
        conn: &mut Conn<'_>,
        stream_id: StreamId,
    ) -> Result<Option<Value>, cairn_log::DbError> {
        let model = (self.read)(conn, stream_id).await?;
        model
            .map(|model| {
                serde_json::to_value(model).map_err(|e| cairn_log::DbError::decode("(view)", e))
            })
            .transpose()
    }
}
