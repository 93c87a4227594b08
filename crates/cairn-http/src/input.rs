//! Reading a request's input: path, query and body, each against the operation's own
//! types, and each field checked against where it belongs.
//!
//! A field sent somewhere the operation does not read it is never ignored. If it
//! belongs elsewhere (a body field sent in the query string, the seed's `workflowId`
//! incident) the answer is a 400 `wrong_location` that says where it belongs; if the
//! operation has no such field at all, a 400 `unknown_field`. Unknown fields inside the
//! body are refused too, with their path.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::header;
use axum::http::request::Parts;
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::problem::{FieldProblem, Location, Problem, ProblemCode};

/// The largest body accepted, in bytes.
pub const BODY_LIMIT: usize = 64 * 1024;

/// No input of this kind: no path parameters, no query parameters, or no body.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// The top-level field names an operation reads, by location.
#[derive(Debug, Clone, Default)]
pub struct Fields {
    pub path: BTreeSet<String>,
    pub query: BTreeSet<String>,
    pub body: BTreeSet<String>,
    /// Whether the operation takes a body at all.
    pub takes_body: bool,
}

fn property_names<T: JsonSchema>() -> BTreeSet<String> {
    let schema = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>();
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|properties| properties.keys().cloned().collect())
        .unwrap_or_default()
}

impl Fields {
    /// The fields of an operation reading `P` from the path, `Q` from the query and
    /// `B` from the body (`Empty` for none).
    pub fn of<P: JsonSchema, Q: JsonSchema, B: JsonSchema + 'static>() -> Fields {
        Fields {
            path: property_names::<P>(),
            query: property_names::<Q>(),
            body: property_names::<B>(),
            takes_body: std::any::TypeId::of::<B>() != std::any::TypeId::of::<Empty>(),
        }
    }

    /// Where a field of this name belongs, if anywhere.
    fn home(&self, name: &str) -> Option<Location> {
        if self.path.contains(name) {
            Some(Location::Path)
        } else if self.query.contains(name) {
            Some(Location::Query)
        } else if self.body.contains(name) {
            Some(Location::Body)
        } else {
            None
        }
    }

    /// The problem with a field sent at `location` that is not read there.
    fn misplaced(&self, name: &str, location: Location) -> FieldProblem {
        match self.home(name) {
            Some(expected) => FieldProblem {
                field: name.to_owned(),
                location,
                expected_location: Some(expected),
                message: format!(
                    "{name} belongs in the {}, not the {}",
                    expected.as_str(),
                    location.as_str()
                ),
            },
            None => FieldProblem {
                field: name.to_owned(),
                location,
                expected_location: None,
                message: format!("this operation takes no {} field {name}", location.as_str()),
            },
        }
    }
}

/// Turns misplaced-field problems into one problem.
fn misplaced_problem(problems: Vec<FieldProblem>) -> Problem {
    let code = if problems.iter().any(|p| p.expected_location.is_some()) {
        ProblemCode::WrongLocation
    } else {
        ProblemCode::UnknownField
    };
    let detail = problems
        .iter()
        .map(|p| p.message.clone())
        .collect::<Vec<_>>()
        .join("; ");
    let mut problem = Problem::new(code, detail);
    problem.errors = problems;
    problem
}

/// Turns a serde error at `path` into a field problem, naming an unknown or missing
/// field precisely.
fn deserialize_problem(path: &str, message: &str, location: Location) -> Problem {
    let join = |name: &str| {
        if path.is_empty() || path == "." {
            name.to_owned()
        } else if path == name || path.ends_with(&format!(".{name}")) {
            // serde_path_to_error already counts an unknown key as the last segment.
            path.to_owned()
        } else {
            format!("{path}.{name}")
        }
    };
    let between_backticks = |text: &str| text.split('`').nth(1).map(str::to_owned);
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some(name) = between_backticks(&format!("`{rest}"))
    {
        return misplaced_problem(vec![FieldProblem {
            field: join(&name),
            location,
            expected_location: None,
            message: format!("unknown field {}: {}", join(&name), message),
        }]);
    }
    if let Some(rest) = message.strip_prefix("missing field `")
        && let Some(name) = between_backticks(&format!("`{rest}"))
    {
        return Problem::field(
            ProblemCode::InvalidField,
            FieldProblem {
                field: join(&name),
                location,
                expected_location: None,
                message: "is required".to_owned(),
            },
        );
    }
    let field = if path.is_empty() || path == "." {
        location.as_str().to_owned()
    } else {
        path.to_owned()
    };
    Problem::field(
        ProblemCode::InvalidField,
        FieldProblem {
            field,
            location,
            expected_location: None,
            message: message.to_owned(),
        },
    )
}

fn deserialize_value<T: DeserializeOwned>(value: Value, location: Location) -> Result<T, Problem> {
    let mut track = serde_path_to_error::Track::new();
    let deserializer = serde_path_to_error::Deserializer::new(value, &mut track);
    T::deserialize(deserializer).map_err(|error| {
        deserialize_problem(&track.path().to_string(), &error.to_string(), location)
    })
}

/// Reads the path parameters.
pub fn path<P: DeserializeOwned>(params: &[(String, String)]) -> Result<P, Problem> {
    let object: Map<String, Value> = params
        .iter()
        .map(|(name, value)| (name.clone(), Value::String(value.clone())))
        .collect();
    deserialize_value(Value::Object(object), Location::Path)
}

/// Reads the query string.
pub fn query<Q: DeserializeOwned>(parts: &Parts, fields: &Fields) -> Result<Q, Problem> {
    let raw = parts.uri.query().unwrap_or("");
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw).map_err(|e| {
        Problem::field(
            ProblemCode::InvalidField,
            FieldProblem {
                field: "query".to_owned(),
                location: Location::Query,
                expected_location: None,
                message: format!("the query string cannot be read: {e}"),
            },
        )
    })?;
    let misplaced: Vec<FieldProblem> = pairs
        .iter()
        .filter(|(name, _)| !fields.query.contains(name))
        .map(|(name, _)| fields.misplaced(name, Location::Query))
        .collect();
    if !misplaced.is_empty() {
        return Err(misplaced_problem(misplaced));
    }
    let mut seen = BTreeSet::new();
    for (name, _) in pairs {
        if !seen.insert(name.clone()) {
            return Err(Problem::field(
                ProblemCode::InvalidField,
                FieldProblem {
                    field: name,
                    location: Location::Query,
                    expected_location: None,
                    message: "is given more than once".to_owned(),
                },
            ));
        }
    }
    // Query values arrive as text; numbers and booleans are read from it.
    let deserializer = serde_urlencoded::Deserializer::new(form_urlencoded::parse(raw.as_bytes()));
    let mut track = serde_path_to_error::Track::new();
    Q::deserialize(serde_path_to_error::Deserializer::new(
        deserializer,
        &mut track,
    ))
    .map_err(|error| {
        deserialize_problem(
            &track.path().to_string(),
            &error.to_string(),
            Location::Query,
        )
    })
}

/// The path of the first string (or key) with a NUL character: no backend stores one
/// in JSON, so it is refused at the door with its path rather than deep in an append.
fn find_nul(value: &Value, path: String) -> Option<String> {
    let at = |name: &str| {
        if path.is_empty() {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        }
    };
    match value {
        Value::String(text) => text.contains('\0').then_some(path),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(index, item)| find_nul(item, format!("{path}[{index}]"))),
        Value::Object(object) => object.iter().find_map(|(key, item)| {
            if key.contains('\0') {
                Some(at(key))
            } else {
                find_nul(item, at(key))
            }
        }),
        _ => None,
    }
}

/// Why a body could not be read: too large (413), not there in time (408), or anything
/// else (a malformed chunked encoding, a client that hung up mid-body: 400).
pub fn body_problem(error: &axum::Error, limit: usize) -> Problem {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if cause.is::<http_body_util::LengthLimitError>() {
            return Problem::new(
                ProblemCode::PayloadTooLarge,
                format!("the body is larger than {limit} bytes"),
            );
        }
        if let Some(timed_out) = cause.downcast_ref::<crate::server::BodyTimedOut>() {
            return Problem::new(ProblemCode::RequestTimeout, timed_out.to_string());
        }
        source = cause.source();
    }
    Problem::new(
        ProblemCode::UnreadableBody,
        format!(
            "the body could not be read: {}",
            cairn_types::error_chain(error)
        ),
    )
}

/// Reads the body: JSON, within the size limit, every field where it belongs.
pub async fn body<B: DeserializeOwned>(
    parts: &Parts,
    body: Body,
    fields: &Fields,
) -> Result<B, Problem> {
    let bytes = axum::body::to_bytes(body, BODY_LIMIT)
        .await
        .map_err(|error| body_problem(&error, BODY_LIMIT))?;
    let blank = bytes.iter().all(u8::is_ascii_whitespace);
    if blank {
        if fields.takes_body {
            return Err(Problem::field(
                ProblemCode::InvalidField,
                FieldProblem {
                    field: "body".to_owned(),
                    location: Location::Body,
                    expected_location: None,
                    message: "this operation needs a JSON object in the body".to_owned(),
                },
            ));
        }
        return deserialize_value(Value::Object(Map::new()), Location::Body);
    }
    let json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            let v = v.trim().to_ascii_lowercase();
            v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
        });
    if !json {
        return Err(Problem::new(
            ProblemCode::UnsupportedMediaType,
            "send the body as application/json",
        ));
    }
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        Problem::new(
            ProblemCode::InvalidJson,
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(object) = value else {
        return Err(Problem::field(
            ProblemCode::InvalidField,
            FieldProblem {
                field: "body".to_owned(),
                location: Location::Body,
                expected_location: None,
                message: "the body must be a JSON object".to_owned(),
            },
        ));
    };
    if let Some(path) = find_nul(&Value::Object(object.clone()), String::new()) {
        return Err(Problem::field(
            ProblemCode::InvalidField,
            FieldProblem {
                field: path,
                location: Location::Body,
                expected_location: None,
                message: "contains a NUL character (\\u0000), which cairn does not store"
                    .to_owned(),
            },
        ));
    }
    let misplaced: Vec<FieldProblem> = object
        .keys()
        .filter(|name| !fields.body.contains(*name))
        .map(|name| fields.misplaced(name, Location::Body))
        .collect();
    if !misplaced.is_empty() {
        return Err(misplaced_problem(misplaced));
    }
    deserialize_value(Value::Object(object), Location::Body)
}
