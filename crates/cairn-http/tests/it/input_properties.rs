//! Properties of the input layer: whatever arrives in a query string or a body, the
//! answer is the operation's input or a problem that names the field at fault and
//! where it was, never a panic.
//!
//! Each property runs a moderate number of cases so that the suite stays fast; to
//! run them at volume:
//!
//! ```text
//! PROPTEST_CASES=100000 cargo nextest run -p cairn-http -E 'test(/^input_properties::/)'
//! ```

use axum::body::Body;
use axum::http::Request;
use axum::http::request::Parts;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use cairn_domain::BootstrapRequest;
use cairn_http::input::{self, Empty, Fields};
use cairn_http::problem::{Location, Problem, ProblemCode};
use cairn_http::routes::{EventsQuery, FailedEventsQuery, PageQuery, RetryFailedRequest};
use cairn_http::stream::StreamQuery;
use cairn_types::OrgId;

fn config() -> ProptestConfig {
    // PROPTEST_CASES in the environment overrides the default count.
    ProptestConfig {
        cases: ProptestConfig::default().cases.max(512),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn parts(query: &str, content_type: Option<&str>) -> Option<Parts> {
    let uri = if query.is_empty() {
        "/v1/x".to_owned()
    } else {
        format!("/v1/x?{query}")
    };
    let mut request = Request::builder().uri(uri);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    request.body(()).ok().map(|request| request.into_parts().0)
}

/// The field names the list operations read, a body field, and strangers.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "after", "limit", "stream_id", "stream_type", "event_type", "correlation_id",
            "code", "org_id", "views", "heartbeat", "access_token", "organization",
        ])
        .prop_map(str::to_owned),
        1 => "[a-zA-Z_]{0,10}",
        1 => any::<String>(),
    ]
}

/// Values near the fields' types (numbers at and past their limits, ids, names) and
/// anything at all.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (-2_i64..300).prop_map(|n| n.to_string()),
        Just("18446744073709551616".to_owned()),
        Just("9223372036854775808".to_owned()),
        Just(String::new()),
        any::<u128>().prop_map(|bits| uuid::Uuid::from_u128(bits).to_string()),
        "[a-z]{1,8}(\\.[a-z]{1,8}){0,2}",
        "(true|false|1|0|yes|P900[0-9]| 5|5 |\\+5|0x10|1e3|1\\.5)",
        any::<String>(),
    ]
}

/// A query string: encoded pairs, or raw text with stray escapes and separators.
fn query_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec((name(), value()), 0..5).prop_map(|pairs| {
            let mut serializer = form_urlencoded::Serializer::new(String::new());
            for (name, value) in &pairs {
                serializer.append_pair(name, value);
            }
            serializer.finish()
        }),
        1 => "[a-z_=&%0-9A-F+.;,~\\-]{0,40}",
        1 => "((after|limit|views|heartbeat)=(%[0-9a-fA-F]{2}|%[g-z]|[0-9\\-]){1,4}&?){1,3}",
    ]
}

/// Whether a problem is a well-formed refusal of input at `location`: a 400 (or the
/// media-type and size refusals of a body) and, for a field at fault, its name.
fn names_a_field(problem: &Problem, location: Location) -> Result<(), String> {
    match problem.code {
        ProblemCode::InvalidField | ProblemCode::UnknownField | ProblemCode::WrongLocation => {
            if problem.status != 400 {
                return Err(format!("status {} for {problem:?}", problem.status));
            }
            if problem.errors.is_empty() {
                return Err(format!("no field named in {problem:?}"));
            }
            for error in &problem.errors {
                if error.location != location {
                    return Err(format!("{:?} is not {location:?}", error.location));
                }
                if error.message.trim().is_empty() {
                    return Err(format!("an empty message in {problem:?}"));
                }
                if problem.code == ProblemCode::WrongLocation
                    && error.expected_location.is_none()
                    && problem.errors.len() == 1
                {
                    return Err(format!("a wrong location that names none: {problem:?}"));
                }
            }
            Ok(())
        }
        ProblemCode::InvalidJson | ProblemCode::UnsupportedMediaType
            if location == Location::Body =>
        {
            Ok(())
        }
        other => Err(format!("unexpected code {other:?}: {problem:?}")),
    }
}

/// The decoded pairs of a query string, as the input layer sees them.
fn pairs(raw: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.as_bytes())
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect()
}

fn body_of(parts: &Parts, bytes: Vec<u8>, fields: &Fields) -> Result<BootstrapRequest, Problem> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    runtime.block_on(input::body::<BootstrapRequest>(
        parts,
        Body::from(bytes),
        fields,
    ))
}

/// A JSON value shaped like a bootstrap request, now and then with a field missing,
/// misplaced, unknown, of the wrong type or holding a NUL.
fn bootstrapish() -> impl Strategy<Value = Value> {
    let text = prop_oneof![
        "[a-z\\-]{0,12}",
        "[a-z]{1,8}@[a-z]{1,8}\\.example",
        any::<String>(),
        Just("a\u{0}b".to_owned()),
    ];
    let scalar = prop_oneof![
        text.clone().prop_map(Value::String),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
    ];
    let key = prop_oneof![
        4 => prop::sample::select(vec![
            "organization", "admin", "invitees", "name", "slug", "sender_domain",
            "direct_care_settings", "email", "roles", "max_caseload", "visit_verification",
            "client_assignment", "after", "limit",
        ])
        .prop_map(str::to_owned),
        1 => "[a-z_]{1,8}",
        1 => any::<String>(),
    ];
    scalar.prop_recursive(3, 40, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn valid_bootstrap() -> Value {
    json!({
        "organization": {
            "name": "Sunrise Care",
            "slug": "sunrise-care",
            "sender_domain": "sunrise.example",
        },
        "admin": {"email": "ada@sunrise.example", "name": "Ada"},
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_query_is_input_or_a_problem_naming_a_field(raw in query_string()) {
        let Some(parts) = parts(&raw, None) else {
            // Not a URI at all: the server refuses it before any operation runs.
            return Ok(());
        };
        let fields = Fields::of::<Empty, EventsQuery, Empty>();
        match input::query::<EventsQuery>(&parts, &fields) {
            Ok(query) => {
                // What was read is what was sent: every name is a field, each once.
                let pairs = pairs(parts.uri.query().unwrap_or(""));
                for (name, value) in &pairs {
                    prop_assert!(fields.query.contains(name), "{name} accepted");
                    prop_assert_eq!(pairs.iter().filter(|(n, _)| n == name).count(), 1);
                    if name == "after" {
                        prop_assert_eq!(query.after, value.parse::<i64>().ok());
                    }
                    if name == "limit" {
                        prop_assert_eq!(query.limit, value.parse::<u32>().ok());
                    }
                }
            }
            Err(problem) => {
                if let Err(message) = names_a_field(&problem, Location::Query) {
                    prop_assert!(false, "{} for {:?}", message, raw);
                }
                // The named field is one that was sent (or the query string as a
                // whole, when it cannot be read).
                let pairs = pairs(parts.uri.query().unwrap_or(""));
                for error in &problem.errors {
                    prop_assert!(
                        error.field == "query" || pairs.iter().any(|(name, _)| *name == error.field),
                        "{:?} names {:?}, which was not sent", raw, error.field
                    );
                }
            }
        }
    }

    #[test]
    fn other_query_types_answer_the_same_way(raw in query_string()) {
        let Some(parts) = parts(&raw, None) else { return Ok(()) };
        let problems = [
            input::query::<StreamQuery>(&parts, &Fields::of::<Empty, StreamQuery, Empty>()).err(),
            input::query::<FailedEventsQuery>(&parts, &Fields::of::<Empty, FailedEventsQuery, Empty>()).err(),
            input::query::<PageQuery<OrgId>>(&parts, &Fields::of::<Empty, PageQuery<OrgId>, Empty>()).err(),
            input::query::<Empty>(&parts, &Fields::of::<Empty, Empty, RetryFailedRequest>()).err(),
        ];
        for problem in problems.iter().flatten() {
            if let Err(message) = names_a_field(problem, Location::Query) {
                prop_assert!(false, "{} for {:?}", message, raw);
            }
        }
    }

    #[test]
    fn a_field_sent_in_the_wrong_place_is_told_where_it_belongs(
        in_query in prop::sample::subsequence(vec!["code", "stream_type"], 0..=2),
        strangers in prop::collection::btree_set("[a-z]{1,6}", 0..3),
    ) {
        // The retry operation reads `code` and `stream_type` from the body only.
        let fields = Fields::of::<Empty, Empty, RetryFailedRequest>();
        let mut serializer = form_urlencoded::Serializer::new(String::new());
        for name in &in_query {
            serializer.append_pair(name, "P9001");
        }
        let strangers: Vec<String> = strangers
            .into_iter()
            .filter(|name| name != "code" && !fields.path.contains(name) && !fields.body.contains(name))
            .collect();
        for name in &strangers {
            serializer.append_pair(name, "1");
        }
        let raw = serializer.finish();
        let parts = parts(&raw, None).expect("an encoded query is a URI");
        match input::query::<Empty>(&parts, &fields) {
            Ok(_) => prop_assert!(in_query.is_empty() && strangers.is_empty(), "{raw}"),
            Err(problem) => {
                let expected = if in_query.is_empty() {
                    ProblemCode::UnknownField
                } else {
                    ProblemCode::WrongLocation
                };
                prop_assert_eq!(problem.code, expected);
                prop_assert_eq!(problem.errors.len(), in_query.len() + strangers.len());
                for error in &problem.errors {
                    prop_assert_eq!(error.location, Location::Query);
                    if in_query.contains(&error.field.as_str()) {
                        prop_assert_eq!(error.expected_location, Some(Location::Body));
                        prop_assert!(error.message.contains("belongs in the body"), "{}", error.message);
                    } else {
                        prop_assert!(strangers.contains(&error.field), "{}", error.field);
                        prop_assert_eq!(error.expected_location, None);
                    }
                }
            }
        }
    }

    #[test]
    fn any_body_is_input_or_a_problem_naming_a_field(value in bootstrapish()) {
        let fields = Fields::of::<Empty, EventsQuery, BootstrapRequest>();
        let parts = parts("", Some("application/json")).expect("a URI");
        let bytes = serde_json::to_vec(&value).expect("serializes");
        match body_of(&parts, bytes, &fields) {
            Ok(request) => {
                // Only an object with the request's fields, each where it belongs.
                let object = value.as_object().expect("an object");
                prop_assert!(object.keys().all(|key| fields.body.contains(key)));
                prop_assert_eq!(
                    serde_json::to_value(&request).ok().and_then(|v| v.get("admin").cloned()),
                    object.get("admin").cloned()
                );
            }
            Err(problem) => {
                prop_assert!(problem.code != ProblemCode::InvalidJson, "{:?}", problem);
                if let Err(message) = names_a_field(&problem, Location::Body) {
                    prop_assert!(false, "{} for {}", message, value);
                }
                // A query field sent in the body is told where it belongs.
                if let Some(object) = value.as_object()
                    && object.keys().any(|key| key == "after" || key == "limit")
                    && !input_has_nul(&value)
                {
                    prop_assert_eq!(problem.code, ProblemCode::WrongLocation);
                    for error in &problem.errors {
                        if error.field == "after" || error.field == "limit" {
                            prop_assert_eq!(error.expected_location, Some(Location::Query));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_valid_body_with_one_change_is_input_or_names_the_change(
        path in prop::sample::select(vec![
            "organization", "admin", "organization.slug", "organization.name",
            "organization.sender_domain", "admin.email", "admin.name",
        ]),
        replacement in prop_oneof![
            Just(None),
            any::<i64>().prop_map(|n| Some(Value::from(n))),
            "[a-z\\-]{0,8}".prop_map(|s| Some(Value::String(s))),
            Just(Some(Value::Null)),
            Just(Some(json!({"extra": 1}))),
        ],
    ) {
        let fields = Fields::of::<Empty, Empty, BootstrapRequest>();
        let parts = parts("", Some("application/json")).expect("a URI");
        let mut value = valid_bootstrap();
        let (parent, leaf) = match path.split_once('.') {
            Some((parent, leaf)) => (value.get_mut(parent).expect("a parent"), leaf),
            None => (&mut value, path),
        };
        let object = parent.as_object_mut().expect("an object");
        match &replacement {
            None => {
                object.remove(leaf);
            }
            Some(replacement) => {
                object.insert(leaf.to_owned(), replacement.clone());
            }
        }
        let bytes = serde_json::to_vec(&value).expect("serializes");
        match body_of(&parts, bytes, &fields) {
            // The input layer checks types and presence; lengths and patterns are the
            // domain's.
            Ok(_) => prop_assert!(matches!(&replacement, Some(Value::String(_)))),
            Err(problem) => {
                prop_assert!(
                    matches!(problem.code, ProblemCode::InvalidField | ProblemCode::UnknownField),
                    "{:?}", problem
                );
                prop_assert_eq!(problem.errors.len(), 1);
                let error = &problem.errors[0];
                prop_assert_eq!(error.location, Location::Body);
                prop_assert!(
                    error.field == path || error.field.starts_with(&format!("{path}.")),
                    "{:?} for a change at {}", error.field, path
                );
            }
        }
    }

    #[test]
    fn any_bytes_are_input_or_a_problem(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            "[{}\\[\\]\":,a-z0-9 \\\\]{0,40}".prop_map(String::into_bytes),
        ],
        content_type in prop_oneof![
            Just(None),
            Just(Some("application/json")),
            Just(Some("application/problem+json; charset=utf-8")),
            Just(Some("text/plain")),
            Just(Some("APPLICATION/JSON")),
        ],
    ) {
        let fields = Fields::of::<Empty, Empty, BootstrapRequest>();
        let parts = parts("", content_type).expect("a URI");
        let blank = bytes.iter().all(u8::is_ascii_whitespace);
        match body_of(&parts, bytes.clone(), &fields) {
            Ok(_) => prop_assert!(serde_json::from_slice::<Value>(&bytes).is_ok()),
            Err(problem) => {
                if let Err(message) = names_a_field(&problem, Location::Body) {
                    prop_assert!(false, "{} for {:?}", message, bytes);
                }
                match problem.code {
                    ProblemCode::InvalidJson => {
                        prop_assert!(serde_json::from_slice::<Value>(&bytes).is_err());
                    }
                    ProblemCode::UnsupportedMediaType => {
                        prop_assert!(!blank);
                        prop_assert!(matches!(content_type, None | Some("text/plain")));
                    }
                    _ => {}
                }
                if blank {
                    prop_assert_eq!(problem.errors.first().map(|e| e.field.as_str()), Some("body"));
                }
            }
        }
    }
}

fn input_has_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(input_has_nul),
        Value::Object(object) => object
            .iter()
            .any(|(key, item)| key.contains('\0') || input_has_nul(item)),
        _ => false,
    }
}
