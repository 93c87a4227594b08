//! Every error is `application/problem+json` (RFC 9457) with a stable code.
//!
//! The codes are defined and documented here, once. A code is never reused for another
//! meaning.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Serialize;

use cairn_types::CorrelationId;

/// Where in a request a field is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Location {
    Body,
    Query,
    Path,
    Header,
}

impl Location {
    pub fn as_str(self) -> &'static str {
        match self {
            Location::Body => "body",
            Location::Query => "query",
            Location::Path => "path",
            Location::Header => "header",
        }
    }
}

/// One input that is wrong: the field, where it was, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct FieldProblem {
    /// The field's path: `organization.slug`, `invitees[1].roles[0]`, `after`.
    pub field: String,
    /// Where the field was sent (or, for a missing field, where it belongs).
    pub location: Location,
    /// Where the field belongs, when it was sent somewhere else.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_location: Option<Location>,
    pub message: String,
}

/// The stable, machine-readable problem codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProblemCode {
    /// 400: a field is missing or has a wrong value; `errors` names each one.
    InvalidField,
    /// 400: a field the operation does not know was sent.
    UnknownField,
    /// 400: a field was sent in the wrong place (the body instead of the query, …);
    /// `errors[].expected_location` says where it belongs.
    WrongLocation,
    /// 400: the body is not JSON.
    InvalidJson,
    /// 401: the operation needs a bearer token and none was sent.
    Unauthenticated,
    /// 401: the bearer token is malformed, has a bad signature or names no principal.
    InvalidToken,
    /// 401: the bearer token has expired.
    TokenExpired,
    /// 403: the principal may not do this.
    Forbidden,
    /// 404: there is no such resource (or the principal may not know of it).
    NotFound,
    /// 405: the path exists but not with this method.
    MethodNotAllowed,
    /// 408: the request's header, or its body, did not arrive in time; the connection is
    /// closed.
    RequestTimeout,
    /// 409: the request conflicts with the current state (a taken slug, an invitation
    /// that is no longer pending, a stream version).
    Conflict,
    /// 409: the idempotency key was used before with a different request.
    IdempotencyKeyReused,
    /// 409: the events would be held, not applied: their stream waits behind an
    /// earlier event that failed (retry or skip it first). For a retry or a skip, the
    /// event named waits behind another one, which the detail names.
    Held,
    /// 409: a handler route or a workflow is paused by an operator (the detail says
    /// who, since when and why); try again once it is resumed.
    Paused,
    /// 400: the body could not be read (a malformed chunked encoding, or the client
    /// hung up mid-body).
    UnreadableBody,
    /// 413: the body is larger than the limit.
    PayloadTooLarge,
    /// 415: the body is not `application/json`.
    UnsupportedMediaType,
    /// 426: a WebSocket endpoint was called without the upgrade.
    UpgradeRequired,
    /// 429: the principal has as many live subscriptions open as it may.
    TooManySubscriptions,
    /// 429: the principal's organization (or, for a principal of no organization, all
    /// such principals together) holds as many live subscriptions as one organization
    /// may on this server.
    TooManyOrganizationSubscriptions,
    /// 431: the request's headers are larger than the limit.
    HeadersTooLarge,
    /// 500: a fault in cairn; the correlation id finds it in the logs.
    Internal,
    /// 503: the database cannot be reached. `Retry-After` says when to try again.
    Unavailable,
    /// 503: the log writer's queue is full; nothing was done. `Retry-After` says when
    /// to try again.
    Overloaded,
    /// 503: the server holds as many live subscriptions as it takes (the rest of its
    /// connections are kept for requests). `Retry-After` says when to try again.
    SubscriptionsAtCapacity,
}

impl ProblemCode {
    pub const ALL: [ProblemCode; 26] = [
        ProblemCode::InvalidField,
        ProblemCode::UnknownField,
        ProblemCode::WrongLocation,
        ProblemCode::InvalidJson,
        ProblemCode::Unauthenticated,
        ProblemCode::InvalidToken,
        ProblemCode::TokenExpired,
        ProblemCode::Forbidden,
        ProblemCode::NotFound,
        ProblemCode::MethodNotAllowed,
        ProblemCode::RequestTimeout,
        ProblemCode::Conflict,
        ProblemCode::IdempotencyKeyReused,
        ProblemCode::Held,
        ProblemCode::Paused,
        ProblemCode::UnreadableBody,
        ProblemCode::PayloadTooLarge,
        ProblemCode::UnsupportedMediaType,
        ProblemCode::UpgradeRequired,
        ProblemCode::TooManySubscriptions,
        ProblemCode::TooManyOrganizationSubscriptions,
        ProblemCode::HeadersTooLarge,
        ProblemCode::Internal,
        ProblemCode::Unavailable,
        ProblemCode::Overloaded,
        ProblemCode::SubscriptionsAtCapacity,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProblemCode::InvalidField => "invalid_field",
            ProblemCode::UnknownField => "unknown_field",
            ProblemCode::WrongLocation => "wrong_location",
            ProblemCode::InvalidJson => "invalid_json",
            ProblemCode::Unauthenticated => "unauthenticated",
            ProblemCode::InvalidToken => "invalid_token",
            ProblemCode::TokenExpired => "token_expired",
            ProblemCode::Forbidden => "forbidden",
            ProblemCode::NotFound => "not_found",
            ProblemCode::MethodNotAllowed => "method_not_allowed",
            ProblemCode::RequestTimeout => "request_timeout",
            ProblemCode::Conflict => "conflict",
            ProblemCode::IdempotencyKeyReused => "idempotency_key_reused",
            ProblemCode::Held => "held",
            ProblemCode::Paused => "paused",
            ProblemCode::UnreadableBody => "unreadable_body",
            ProblemCode::PayloadTooLarge => "payload_too_large",
            ProblemCode::UnsupportedMediaType => "unsupported_media_type",
            ProblemCode::UpgradeRequired => "upgrade_required",
            ProblemCode::TooManySubscriptions => "too_many_subscriptions",
            ProblemCode::TooManyOrganizationSubscriptions => "too_many_organization_subscriptions",
            ProblemCode::HeadersTooLarge => "headers_too_large",
            ProblemCode::Internal => "internal",
            ProblemCode::Unavailable => "unavailable",
            ProblemCode::Overloaded => "overloaded",
            ProblemCode::SubscriptionsAtCapacity => "subscriptions_at_capacity",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ProblemCode::InvalidField
            | ProblemCode::UnknownField
            | ProblemCode::WrongLocation
            | ProblemCode::InvalidJson
            | ProblemCode::UnreadableBody => StatusCode::BAD_REQUEST,
            ProblemCode::Unauthenticated
            | ProblemCode::InvalidToken
            | ProblemCode::TokenExpired => StatusCode::UNAUTHORIZED,
            ProblemCode::Forbidden => StatusCode::FORBIDDEN,
            ProblemCode::NotFound => StatusCode::NOT_FOUND,
            ProblemCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProblemCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ProblemCode::Conflict
            | ProblemCode::IdempotencyKeyReused
            | ProblemCode::Held
            | ProblemCode::Paused => StatusCode::CONFLICT,
            ProblemCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProblemCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProblemCode::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            ProblemCode::TooManySubscriptions | ProblemCode::TooManyOrganizationSubscriptions => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ProblemCode::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProblemCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ProblemCode::Unavailable
            | ProblemCode::Overloaded
            | ProblemCode::SubscriptionsAtCapacity => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            ProblemCode::InvalidField => "A field is missing or invalid",
            ProblemCode::UnknownField => "Unknown field",
            ProblemCode::WrongLocation => "A field was sent in the wrong place",
            ProblemCode::InvalidJson => "The body is not valid JSON",
            ProblemCode::Unauthenticated => "Authentication required",
            ProblemCode::InvalidToken => "Invalid bearer token",
            ProblemCode::TokenExpired => "Bearer token expired",
            ProblemCode::Forbidden => "Forbidden",
            ProblemCode::NotFound => "Not found",
            ProblemCode::MethodNotAllowed => "Method not allowed",
            ProblemCode::RequestTimeout => "Request timeout",
            ProblemCode::Conflict => "Conflict with the current state",
            ProblemCode::IdempotencyKeyReused => "Idempotency key reused",
            ProblemCode::Held => "Held behind an earlier event",
            ProblemCode::Paused => "Paused by an operator",
            ProblemCode::UnreadableBody => "The body could not be read",
            ProblemCode::PayloadTooLarge => "Payload too large",
            ProblemCode::UnsupportedMediaType => "Unsupported media type",
            ProblemCode::UpgradeRequired => "Upgrade required",
            ProblemCode::TooManySubscriptions => "Too many subscriptions",
            ProblemCode::TooManyOrganizationSubscriptions => {
                "Too many subscriptions for one organization"
            }
            ProblemCode::HeadersTooLarge => "Request headers too large",
            ProblemCode::Internal => "Internal error",
            ProblemCode::Unavailable => "Service unavailable",
            ProblemCode::Overloaded => "Server overloaded",
            ProblemCode::SubscriptionsAtCapacity => {
                "The server holds all the subscriptions it takes"
            }
        }
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Problem {
    /// A URI naming the problem type: `https://cairn.dev/problems/<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// The stable, machine-readable code.
    pub code: ProblemCode,
    /// What went wrong, for people.
    pub detail: String,
    /// The request's correlation id: `cairn trace` shows its timeline.
    pub correlation_id: Option<CorrelationId>,
    /// Each field at fault, for input problems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldProblem>,
}

impl Problem {
    /// A problem with a code and a message.
    pub fn new(code: ProblemCode, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("https://cairn.dev/problems/{}", code.as_str()),
            title: code.title().to_owned(),
            status: code.status().as_u16(),
            code,
            detail: detail.into(),
            correlation_id: None,
            errors: Vec::new(),
        }
    }

    /// A problem about one input field.
    pub fn field(code: ProblemCode, field: FieldProblem) -> Self {
        let detail = match field.expected_location {
            Some(expected) => format!(
                "{} was sent in the {} but belongs in the {}",
                field.field,
                field.location.as_str(),
                expected.as_str()
            ),
            None => format!(
                "{} ({}): {}",
                field.field,
                field.location.as_str(),
                field.message
            ),
        };
        let mut problem = Problem::new(code, detail);
        problem.errors.push(field);
        problem
    }

    /// Problems about several input fields.
    pub fn fields(fields: Vec<FieldProblem>) -> Self {
        let detail = fields
            .iter()
            .map(|f| format!("{} ({}): {}", f.field, f.location.as_str(), f.message))
            .collect::<Vec<_>>()
            .join("; ");
        let mut problem = Problem::new(ProblemCode::InvalidField, detail);
        problem.errors = fields;
        problem
    }

    /// Fills in the correlation id.
    pub fn correlated(mut self, correlation_id: CorrelationId) -> Self {
        self.correlation_id = Some(correlation_id);
        self
    }

    /// An internal fault: logged with its detail, shown without it.
    pub fn internal(error: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error = %cairn_types::error_chain(error), "internal error");
        Problem::new(
            ProblemCode::Internal,
            "an internal error occurred; the correlation id finds it in the logs",
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.code.status();
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            let challenge = match self.code {
                ProblemCode::Unauthenticated => "Bearer realm=\"cairn\"",
                _ => "Bearer realm=\"cairn\", error=\"invalid_token\"",
            };
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_and_named_consistently() {
        let mut seen = HashSet::new();
        for code in ProblemCode::ALL {
            assert!(seen.insert(code.as_str()), "{} twice", code.as_str());
            let serialized = serde_json::to_value(code).unwrap();
            assert_eq!(serialized, serde_json::json!(code.as_str()));
        }
    }
}
