//! The contract documents the API serves about itself.

use axum::http::{Method, StatusCode};
use serde_json::Value;

use cairn_policy::Action;

use super::allow;
use crate::AppState;
use crate::api::{Api, Op, Reply};
use crate::context::Ctx;
use crate::input::Empty;
use crate::problem::Problem;

/// The value type of a served contract document.
pub type Document = Value;

/// The OpenAPI and AsyncAPI documents.
pub(super) fn ops(api: Api) -> Api {
    api.op(
        op!(GET "/v1/openapi.json", "openapi", "contracts", OK, public: true, command: false,
            "This API's OpenAPI 3.1 document", "Generated from the route table that serves the API."),
        openapi,
    )
    .op(
        op!(GET "/v1/asyncapi.json", "asyncapi", "contracts", OK, public: true, command: false,
            "The event contracts, as AsyncAPI 3.0", "Every stream type and event type with its payload schema and the metadata envelope, generated from the event registry."),
        asyncapi,
    )
}

/// `GET /v1/openapi.json`: this API's OpenAPI document.
async fn openapi(
    state: AppState,
    ctx: Ctx,
    _: Empty,
    _: Empty,
    _: Empty,
) -> Result<Reply<Document>, Problem> {
    allow(&ctx, Action::ReadPublic)?;
    Ok(Reply::ok(state.openapi().clone()))
}

/// `GET /v1/asyncapi.json`: the event contracts' AsyncAPI document.
async fn asyncapi(
    state: AppState,
    ctx: Ctx,
    _: Empty,
    _: Empty,
    _: Empty,
) -> Result<Reply<Document>, Problem> {
    allow(&ctx, Action::ReadPublic)?;
    Ok(Reply::ok(state.asyncapi().clone()))
}
