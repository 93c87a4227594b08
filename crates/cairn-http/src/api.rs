//! The route table: each operation is registered once, with its types, and the same
//! registration both serves it and documents it. The OpenAPI document is generated
//! from this table, so it cannot say anything the server does not do.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::context::Ctx;
use crate::input::{self, Empty, Fields};
use crate::problem::{Problem, ProblemCode};

/// What an operation is, for people and for the contract.
#[derive(Debug, Clone)]
pub struct Op {
    pub method: Method,
    /// The path, with `{name}` for each path parameter.
    pub path: &'static str,
    pub id: &'static str,
    pub tag: &'static str,
    pub summary: &'static str,
    pub description: &'static str,
    /// The status of a success.
    pub success: StatusCode,
    /// Whether anyone may call it without a token (the policy decides; the contract
    /// says so).
    pub public: bool,
    /// Whether it changes state.
    pub command: bool,
    /// Whether it takes an `Idempotency-Key` (a repeat with the same key returns the
    /// first response). Refused with a clear problem where it does not.
    pub idempotency_key: bool,
    /// Whether a 503 answers with the success's schema (a health check that reports
    /// what is wrong) rather than a problem.
    pub unhealthy_503: bool,
    /// OpenAPI links from the success response to operations that take what it
    /// returns: (operation id, parameter, runtime expression).
    pub links: &'static [(&'static str, &'static str, &'static str)],
}

/// A successful response.
#[derive(Debug)]
pub struct Reply<R> {
    pub status: StatusCode,
    pub body: R,
}

impl<R> Reply<R> {
    pub fn ok(body: R) -> Self {
        Self {
            status: StatusCode::OK,
            body,
        }
    }

    pub fn accepted(body: R) -> Self {
        Self {
            status: StatusCode::ACCEPTED,
            body,
        }
    }
}

impl<R: Serialize> IntoResponse for Reply<R> {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn schema_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// What an operation answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Produces {
    /// One JSON document.
    Json,
    /// Server-Sent Events, each event's data one JSON message.
    EventStream,
    /// A WebSocket, each text frame one JSON message.
    WebSocket,
    /// Metrics in the OpenMetrics text format.
    OpenMetrics,
}

/// An operation as documented.
#[derive(Clone)]
pub struct Documented {
    pub op: Op,
    fields: Arc<Fields>,
    path: SchemaFn,
    query: SchemaFn,
    body: Option<SchemaFn>,
    /// The response's schema: the document, or each streamed message.
    response: SchemaFn,
    produces: Produces,
}

impl std::fmt::Debug for Documented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Documented").field("op", &self.op).finish()
    }
}

/// Builds the router and the route table together.
pub struct Api {
    router: Router<AppState>,
    documented: Vec<Documented>,
}

fn filter(method: &Method) -> MethodFilter {
    match *method {
        Method::POST => MethodFilter::POST,
        Method::PUT => MethodFilter::PUT,
        Method::DELETE => MethodFilter::DELETE,
        Method::PATCH => MethodFilter::PATCH,
        _ => MethodFilter::GET,
    }
}

impl Api {
    pub fn new() -> Self {
        Self {
            router: Router::new(),
            documented: Vec::new(),
        }
    }

    /// Registers an operation reading `P` from the path, `Q` from the query and `B`
    /// from the body (each `Empty` when absent), answering `R`.
    pub fn op<P, Q, B, R, F, Fut>(mut self, op: Op, handler: F) -> Self
    where
        P: DeserializeOwned + JsonSchema + Send + 'static,
        Q: DeserializeOwned + JsonSchema + Send + 'static,
        B: DeserializeOwned + JsonSchema + Send + 'static,
        R: Serialize + JsonSchema + Send + 'static,
        F: Fn(AppState, Ctx, P, Q, B) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Reply<R>, Problem>> + Send + 'static,
    {
        let fields = Arc::new(Fields::of::<P, Q, B>());
        let route_fields = fields.clone();
        let keyed = op.idempotency_key;
        let route = move |State(state): State<AppState>, request: Request| {
            let handler = handler.clone();
            let fields = route_fields.clone();
            async move {
                let (mut parts, body) = request.into_parts();
                let ctx = match Ctx::from_request_parts(&mut parts, &state).await {
                    Ok(ctx) => ctx,
                    Err(problem) => return problem.into_response(),
                };
                if !keyed && ctx.idempotency_key.is_some() {
                    return crate::context::header_problem(
                        crate::context::IDEMPOTENCY_HEADER,
                        "this operation does not take an idempotency key: see its description for what a repeat does".to_owned(),
                    )
                    .into_response();
                }
                let raw: Vec<(String, String)> =
                    match axum::extract::RawPathParams::from_request_parts(&mut parts, &state).await
                    {
                        Ok(raw) => raw
                            .iter()
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                            .collect(),
                        Err(rejection) => {
                            return Problem::new(ProblemCode::NotFound, rejection.body_text())
                                .into_response();
                        }
                    };
                let input = async {
                    let path = input::path::<P>(&raw)?;
                    let query = input::query::<Q>(&parts, &fields)?;
                    let body = input::body::<B>(&parts, body, &fields).await?;
                    Ok::<_, Problem>((path, query, body))
                };
                let (path, query, body) = match input.await {
                    Ok(input) => input,
                    Err(problem) => return problem.into_response(),
                };
                match handler(state, ctx, path, query, body).await {
                    Ok(reply) => reply.into_response(),
                    Err(problem) => problem.into_response(),
                }
            }
        };
        self.router = self.router.route(op.path, on(filter(&op.method), route));
        let takes_body = std::any::TypeId::of::<B>() != std::any::TypeId::of::<Empty>();
        self.documented.push(Documented {
            op: op.clone(),
            fields,
            path: schema_of::<P>,
            query: schema_of::<Q>,
            body: takes_body.then_some(schema_of::<B> as SchemaFn),
            response: schema_of::<R>,
            produces: Produces::Json,
        });
        self
    }

    /// Registers an operation that does not answer one JSON document: it streams
    /// messages of type `M` (Server-Sent Events or a WebSocket), or answers text. It
    /// reads `Q` from the query and hands the handler the request's parts, for the
    /// upgrade and its headers.
    pub fn raw<Q, M, F, Fut>(mut self, op: Op, produces: Produces, handler: F) -> Self
    where
        Q: DeserializeOwned + JsonSchema + Send + 'static,
        M: JsonSchema + 'static,
        F: Fn(AppState, Ctx, Q, Parts) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Response, Problem>> + Send + 'static,
    {
        let fields = Arc::new(Fields::of::<Empty, Q, Empty>());
        let route_fields = fields.clone();
        let route = move |State(state): State<AppState>, request: Request| {
            let handler = handler.clone();
            let fields = route_fields.clone();
            async move {
                let (mut parts, _body) = request.into_parts();
                let ctx = match Ctx::from_request_parts(&mut parts, &state).await {
                    Ok(ctx) => ctx,
                    Err(problem) => return problem.into_response(),
                };
                let query = match input::query::<Q>(&parts, &fields) {
                    Ok(query) => query,
                    Err(problem) => return problem.into_response(),
                };
                match handler(state, ctx, query, parts).await {
                    Ok(response) => response,
                    Err(problem) => problem.into_response(),
                }
            }
        };
        self.router = self.router.route(op.path, on(filter(&op.method), route));
        self.documented.push(Documented {
            op,
            fields,
            path: schema_of::<Empty>,
            query: schema_of::<Q>,
            body: None,
            response: schema_of::<M>,
            produces,
        });
        self
    }

    /// The router and the route table.
    pub fn finish(self) -> (Router<AppState>, Vec<Documented>) {
        (self.router, self.documented)
    }
}

impl Default for Api {
    fn default() -> Self {
        Self::new()
    }
}

/// A schema generator that files every named type under `#/components/schemas/`.
pub fn components_generator() -> SchemaGenerator {
    schemars::generate::SchemaSettings::draft2020_12()
        .with(|settings| {
            settings.definitions_path = "#/components/schemas/".into();
            settings.meta_schema = None;
        })
        .into_generator()
}

/// The object schema behind a (possibly `$ref`) schema.
fn resolve(schema: &Schema, generator: &SchemaGenerator) -> Value {
    let value = schema.as_value().clone();
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let name = reference.rsplit('/').next().unwrap_or_default();
            generator.definitions().get(name).cloned().unwrap_or(value)
        }
        None => value,
    }
}

fn parameters(schema: &Schema, generator: &SchemaGenerator, location: &str) -> Vec<Value> {
    let object = resolve(schema, generator);
    let required: Vec<&str> = object
        .get("required")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(properties) = object.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    properties
        .iter()
        .map(|(name, property)| {
            let mut schema = property.clone();
            let description = schema
                .as_object_mut()
                .and_then(|o| o.remove("description"))
                .unwrap_or_else(|| json!(""));
            json!({
                "name": name,
                "in": location,
                "required": location == "path" || required.contains(&name.as_str()),
                "description": description,
                "schema": schema,
            })
        })
        .collect()
}

fn problem_response(description: &str, codes: &[ProblemCode]) -> Value {
    let codes: Vec<&str> = codes.iter().map(|c| c.as_str()).collect();
    json!({
        "description": format!("{description} Problem codes: {}.", codes.join(", ")),
        "headers": response_headers(),
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    })
}

fn response_headers() -> Value {
    json!({
        "x-correlation-id": {
            "description": "The request's correlation id, also written into every event it causes. A repeat answered from its Idempotency-Key names the request that first ran the command, whose events carry it; a caller-chosen id already used by another tenant is replaced by a fresh one.",
            "schema": {"type": "string", "format": "uuid"}
        },
        "traceparent": {
            "description": "W3C trace context carrying the correlation id as the trace id.",
            "schema": {"type": "string"}
        }
    })
}

/// The OpenAPI 3.1 document of the route table.
pub fn openapi(documented: &[Documented]) -> Value {
    let mut generator = components_generator();
    generator.subschema_for::<Problem>();
    let mut paths = Map::new();
    for doc in documented {
        let op = &doc.op;
        let mut params = parameters(&(doc.path)(&mut generator), &generator, "path");
        params.extend(parameters(
            &(doc.query)(&mut generator),
            &generator,
            "query",
        ));
        params.push(json!({
            "name": "x-correlation-id", "in": "header", "required": false,
            "description": "A correlation id (UUID) to carry through every hop; one is made when absent. A W3C traceparent is read too.",
            "schema": {"type": "string", "format": "uuid"}
        }));
        if op.idempotency_key {
            params.push(json!({
                "name": "Idempotency-Key", "in": "header", "required": false,
                "description": "Makes the command safe to repeat: a repeat with the same key returns the first response.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"}
            }));
        }
        let message = (doc.response)(&mut generator);
        let message_schema_for_503 = message.clone();
        let (success_status, mut success) = match doc.produces {
            Produces::Json => (
                op.success.as_u16().to_string(),
                json!({
                    "description": "Success.",
                    "headers": response_headers(),
                    "content": {"application/json": {"schema": message}}
                }),
            ),
            Produces::EventStream => (
                op.success.as_u16().to_string(),
                json!({
                    "description": "A stream of Server-Sent Events; the schema describes one event. Its `event` field is the message type, its `id` the log position to resume after (send it back as `Last-Event-ID`), its `data` one JSON message. /v1/asyncapi.json documents the messages.",
                    "headers": response_headers(),
                    "content": {"text/event-stream": {"schema": {
                        "type": "object",
                        "required": ["event", "data"],
                        "properties": {
                            "event": {
                                "type": "string",
                                "enum": ["subscribed", "event", "heartbeat", "end", "error"],
                                "description": "The message's `type`; `error` only if a message could not be encoded, with its reason as plain text."
                            },
                            "id": {
                                "type": "string",
                                "pattern": "^[0-9]+$",
                                "description": "The log position this message brings the subscriber to."
                            },
                            "retry": {
                                "type": "integer",
                                "description": "Milliseconds an EventSource waits before reconnecting; sent once, with `subscribed`."
                            },
                            "data": {
                                "type": "string",
                                "contentMediaType": "application/json",
                                "contentSchema": message,
                            }
                        }
                    }}},
                }),
            ),
            Produces::OpenMetrics => (
                op.success.as_u16().to_string(),
                json!({
                    "description": "Every metric, in the OpenMetrics text format (Prometheus scrapes it).",
                    "headers": response_headers(),
                    "content": {"application/openmetrics-text": {"schema": {"type": "string"}}},
                }),
            ),
            Produces::WebSocket => (
                "101".to_owned(),
                json!({
                    "description": "Switching Protocols: a WebSocket whose text frames are JSON messages as `x-message-schema` describes; the server pings, and closes a connection that stops answering. /v1/asyncapi.json documents the messages.",
                    "x-message-schema": message,
                }),
            ),
        };
        if !op.links.is_empty() {
            let mut links = Map::new();
            for (operation, parameter, expression) in op.links {
                links.insert(
                    format!("{operation}_{parameter}"),
                    json!({"operationId": operation, "parameters": {*parameter: expression}}),
                );
            }
            success["links"] = Value::Object(links);
        }
        let mut responses = Map::new();
        responses.insert(success_status, success);
        let mut bad_request = vec![
            ProblemCode::InvalidField,
            ProblemCode::UnknownField,
            ProblemCode::WrongLocation,
        ];
        if doc.body.is_some() {
            bad_request.push(ProblemCode::InvalidJson);
            bad_request.push(ProblemCode::UnreadableBody);
        }
        responses.insert(
            "400".into(),
            problem_response(
                "The input is wrong; `errors` names each field and where it was.",
                &bad_request,
            ),
        );
        responses.insert(
            "401".into(),
            problem_response(
                "No valid bearer token.",
                &[
                    ProblemCode::Unauthenticated,
                    ProblemCode::InvalidToken,
                    ProblemCode::TokenExpired,
                ],
            ),
        );
        if !op.public {
            responses.insert(
                "403".into(),
                problem_response("The policy refused.", &[ProblemCode::Forbidden]),
            );
        }
        if !doc.fields.path.is_empty() || op.command {
            responses.insert(
                "404".into(),
                problem_response("No such resource.", &[ProblemCode::NotFound]),
            );
        }
        if op.command {
            let codes: &[ProblemCode] = if op.idempotency_key {
                &[ProblemCode::Conflict, ProblemCode::IdempotencyKeyReused]
            } else {
                &[ProblemCode::Conflict]
            };
            responses.insert(
                "409".into(),
                problem_response("The request conflicts with the current state.", codes),
            );
        }
        if matches!(doc.produces, Produces::WebSocket | Produces::EventStream) {
            responses.insert(
                "429".into(),
                problem_response(
                    "The principal has as many live subscriptions open as it may (100 by default, `cairn serve --max-subscriptions`), or its organization holds as many as one organization may (`--max-subscriptions-per-organization`; principals of no organization share one such bound).",
                    &[
                        ProblemCode::TooManySubscriptions,
                        ProblemCode::TooManyOrganizationSubscriptions,
                    ],
                ),
            );
        }
        if doc.produces == Produces::WebSocket {
            responses.insert(
                "426".into(),
                problem_response(
                    "The request is not a WebSocket upgrade.",
                    &[ProblemCode::UpgradeRequired],
                ),
            );
        }
        if doc.body.is_some() {
            responses.insert(
                "413".into(),
                problem_response("The body is too large.", &[ProblemCode::PayloadTooLarge]),
            );
            responses.insert(
                "415".into(),
                problem_response(
                    "The body is not JSON.",
                    &[ProblemCode::UnsupportedMediaType],
                ),
            );
        }
        responses.insert(
            "431".into(),
            problem_response(
                "The request's headers are larger than 16 KiB. (Headers past 64 KiB are refused by the HTTP layer with a 431 and no body.)",
                &[ProblemCode::HeadersTooLarge],
            ),
        );
        responses.insert(
            "408".into(),
            problem_response(
                "The request's header did not arrive within the server's header timeout (`--header-timeout`, 10 s by default), or its body within the body timeout (`--body-timeout`, 30 s by default); the connection is closed. A connection that sent nothing is closed without an answer.",
                &[ProblemCode::RequestTimeout],
            ),
        );
        responses.insert(
            "414".into(),
            json!({"description": "The URI is longer than the HTTP layer reads (64 KiB): refused before cairn sees the request, with no body."}),
        );
        responses.insert(
            "500".into(),
            problem_response("A fault in cairn.", &[ProblemCode::Internal]),
        );
        if op.unhealthy_503 {
            responses.insert(
                "503".into(),
                json!({
                    "description": "Something is broken: the body says what (same schema as 200).",
                    "headers": response_headers(),
                    "content": {"application/json": {"schema": message_schema_for_503}},
                }),
            );
        } else if matches!(doc.produces, Produces::WebSocket | Produces::EventStream) {
            let mut unavailable = problem_response(
                "The database cannot be reached, the server is overloaded, or it holds as many live subscriptions as it takes (`--max-subscriptions-total`: by default three quarters of its connections, the rest kept for requests).",
                &[
                    ProblemCode::Unavailable,
                    ProblemCode::Overloaded,
                    ProblemCode::SubscriptionsAtCapacity,
                ],
            );
            unavailable["headers"]["Retry-After"] = json!({
                "description": "Seconds to wait before trying again.",
                "schema": {"type": "integer", "minimum": 0}
            });
            responses.insert("503".into(), unavailable);
        } else {
            let mut unavailable = problem_response(
                "The database cannot be reached, or the log writer's queue is full; nothing was done.",
                &[ProblemCode::Unavailable, ProblemCode::Overloaded],
            );
            unavailable["headers"]["Retry-After"] = json!({
                "description": "Seconds to wait before trying again.",
                "schema": {"type": "integer", "minimum": 0}
            });
            responses.insert("503".into(), unavailable);
        }
        responses.insert(
            "default".into(),
            problem_response("Any other failure.", &[ProblemCode::MethodNotAllowed]),
        );
        let mut operation = json!({
            "operationId": op.id,
            "summary": op.summary,
            "description": op.description,
            "tags": [op.tag],
            "parameters": params,
            "responses": responses,
            "security": if op.public { json!([{}, {"bearer": []}]) } else { json!([{"bearer": []}]) },
        });
        if let Some(body) = doc.body {
            operation["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": body(&mut generator)}}
            });
        }
        let entry = paths.entry(op.path.to_owned()).or_insert_with(|| json!({}));
        entry[op.method.as_str().to_ascii_lowercase()] = operation;
    }
    let schemas = Value::Object(generator.take_definitions(true));
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "cairn",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The cairn HTTP API. Every error is application/problem+json with a stable `code`; \
                            every response carries the request's correlation id. Generated from the route table.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    })
}
