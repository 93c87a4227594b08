//! Properties of the parsers that names and identifiers pass through at the edge.
//!
//! Each property runs a moderate number of cases so that the suite stays fast; to
//! run them at volume:
//!
//! ```text
//! PROPTEST_CASES=100000 cargo test -p cairn-types --test parse_properties
//! ```

use proptest::prelude::*;

use cairn_types::{
    Actor, CorrelationId, ErrorCode, EventId, EventType, NameError, OrgId, StreamId, StreamType,
    UserId, WorkflowId,
};

/// One level of a name: lower-case words joined by single underscores, starting with
/// a letter.
const LEVEL: &str = "[a-z][a-z0-9]{0,7}(_[a-z0-9]{1,6}){0,3}";

fn level() -> impl Strategy<Value = String> {
    LEVEL.prop_map(|level| level.to_string())
}

/// A name that follows the convention: at least two levels, at most 128 bytes.
fn event_name() -> impl Strategy<Value = String> {
    prop::collection::vec(level(), 2..6)
        .prop_map(|levels| levels.join("."))
        .prop_filter("within the length limit", |name| name.len() <= 128)
}

/// Text near the convention (its alphabet, with a few strays) and anything at all.
fn near_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_.]{0,40}",
        "[a-zA-Z0-9_.\\- ]{0,40}",
        "[a-z._]{120,140}",
        any::<String>(),
        "\\PC{0,20}",
    ]
}

/// What an error says it is about: every error names the rule and (but for an empty
/// name) the name itself.
fn names_the_input(error: &NameError, input: &str) -> bool {
    let text = error.to_string();
    match error {
        NameError::Empty { .. } => input.is_empty(),
        _ => text.contains(&format!("{input:?}")),
    }
}

fn config() -> ProptestConfig {
    // PROPTEST_CASES in the environment overrides the default count.
    ProptestConfig {
        cases: ProptestConfig::default().cases.max(512),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn valid_event_types_round_trip(name in event_name()) {
        let parsed = EventType::parse(&name).expect("a conventional name parses");
        prop_assert_eq!(parsed.to_string(), name.clone());
        prop_assert_eq!(parsed.as_str(), name.as_str());
        let shown = parsed.to_string();
        prop_assert_eq!(EventType::parse(&shown), Ok(parsed.clone()));
        prop_assert_eq!(name.parse::<EventType>(), Ok(parsed.clone()));
        prop_assert_eq!(parsed.levels().collect::<Vec<_>>().join("."), name.clone());
        // Through JSON too: serialized as the bare name, deserialized with the check.
        let json = serde_json::to_string(&parsed).expect("serializes");
        prop_assert_eq!(&json, &serde_json::to_string(&name).expect("serializes"));
        prop_assert_eq!(serde_json::from_str::<EventType>(&json).expect("deserializes"), parsed);
    }

    #[test]
    fn valid_stream_types_round_trip(name in level()) {
        let parsed = StreamType::parse(&name).expect("a conventional name parses");
        prop_assert_eq!(parsed.to_string(), name.clone());
        prop_assert_eq!(name.parse::<StreamType>(), Ok(parsed.clone()));
        let json = serde_json::to_string(&parsed).expect("serializes");
        prop_assert_eq!(serde_json::from_str::<StreamType>(&json).expect("deserializes"), parsed);
    }

    #[test]
    fn any_text_is_an_event_type_exactly_or_an_error(input in near_name()) {
        match EventType::parse(&input) {
            Ok(parsed) => {
                prop_assert_eq!(parsed.to_string(), input.clone());
                prop_assert!(input.len() <= 128);
                prop_assert!(parsed.levels().count() >= 2);
                prop_assert!(input.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.'));
                // Anything accepted is also accepted as JSON, and the other way round.
                let json = serde_json::to_string(&input).expect("serializes");
                prop_assert_eq!(serde_json::from_str::<EventType>(&json).expect("deserializes"), parsed);
            }
            Err(error) => {
                prop_assert!(names_the_input(&error, &input), "{error} does not name {input:?}");
                let json = serde_json::to_string(&input).expect("serializes");
                prop_assert!(serde_json::from_str::<EventType>(&json).is_err());
            }
        }
    }

    #[test]
    fn any_text_is_a_stream_type_exactly_or_an_error(input in near_name()) {
        match StreamType::parse(&input) {
            Ok(parsed) => {
                prop_assert_eq!(parsed.to_string(), input.clone());
                prop_assert!(!input.contains('.'));
                prop_assert!(input.len() <= 128);
                // A stream type is the first level of some event type.
                let event = format!("{input}.happened");
                prop_assert!(EventType::parse(&event).is_ok(), "{event:?}");
            }
            Err(error) => {
                prop_assert!(names_the_input(&error, &input), "{error} does not name {input:?}");
            }
        }
    }

    #[test]
    fn an_event_type_is_its_levels_each_a_stream_type(input in near_name()) {
        // The two parsers agree on what one level is.
        if let Ok(parsed) = EventType::parse(&input) {
            for level in parsed.levels() {
                prop_assert!(StreamType::parse(level).is_ok(), "level {level:?} of {input:?}");
            }
        }
        let levels: Vec<&str> = input.split('.').collect();
        if levels.len() >= 2
            && input.len() <= 128
            && levels.iter().all(|level| StreamType::parse(level).is_ok())
        {
            prop_assert!(EventType::parse(&input).is_ok(), "{input:?}");
        }
    }

    #[test]
    fn ids_round_trip(bits in any::<u128>()) {
        let uuid = uuid::Uuid::from_u128(bits);
        let id = StreamId::from_uuid(uuid);
        let text = id.to_string();
        prop_assert_eq!(StreamId::parse(&text), Ok(id));
        prop_assert_eq!(text.parse::<StreamId>(), Ok(id));
        // The simple (unhyphenated) and upper-case forms, and surrounding blanks, are
        // read too, and displayed in the one canonical form.
        prop_assert_eq!(StreamId::parse(&uuid.simple().to_string()), Ok(id));
        prop_assert_eq!(StreamId::parse(&text.to_uppercase()), Ok(id));
        prop_assert_eq!(StreamId::parse(&format!("  {text}\n")), Ok(id));
        prop_assert_eq!(OrgId::parse(&text).map(|id| id.to_string()), Ok(text.clone()));
        prop_assert_eq!(UserId::parse(&text).map(|id| id.as_uuid()), Ok(uuid));
        let json = serde_json::to_string(&id).expect("serializes");
        prop_assert_eq!(json, format!("\"{text}\""));
    }

    #[test]
    fn any_text_is_an_id_or_an_error_naming_it(input in prop_oneof![
        "[0-9a-fA-F\\-{}]{0,40}",
        "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        any::<String>(),
    ]) {
        match EventId::parse(&input) {
            Ok(id) => {
                let text = id.to_string();
                // Display is the canonical form: lower-case and hyphenated, and it
                // reads back as the same id.
                prop_assert_eq!(text.len(), 36);
                prop_assert_eq!(EventId::parse(&text), Ok(id));
                let canonical = uuid::Uuid::parse_str(&input.trim().to_ascii_lowercase())
                    .map(|uuid| uuid.hyphenated().to_string());
                prop_assert_eq!(Ok(text.clone()), canonical);
                if input == input.trim().to_ascii_lowercase() && input.len() == 36 {
                    prop_assert_eq!(text, input.clone());
                }
            }
            Err(error) => {
                prop_assert_eq!(error.kind, EventId::KIND);
                prop_assert_eq!(&error.input, &input);
                prop_assert!(error.to_string().contains(&format!("{input:?}")), "{error}");
                prop_assert!(error.to_string().contains("event id"));
            }
        }
        // Every kind of id reads the same texts.
        prop_assert_eq!(
            WorkflowId::parse(&input).map(|id| id.as_uuid()).ok(),
            CorrelationId::parse(&input).map(|id| id.as_uuid()).ok()
        );
    }

    #[test]
    fn actors_round_trip(bits in any::<u128>(), service in "[a-z][a-z0-9_\\-]{0,63}") {
        let user = Actor::User(UserId::from_uuid(uuid::Uuid::from_u128(bits)));
        prop_assert_eq!(Actor::parse(&user.to_string()), Ok(user.clone()));
        let account = Actor::service(&service).expect("a valid service name");
        prop_assert_eq!(account.to_string(), format!("service:{service}"));
        prop_assert_eq!(Actor::parse(&account.to_string()), Ok(account));
    }

    #[test]
    fn any_text_is_an_actor_exactly_or_an_error(input in prop_oneof![
        "(user|service|admin)?:?[a-z0-9\\-_:]{0,70}",
        any::<String>(),
    ]) {
        match Actor::parse(&input) {
            Ok(actor) => {
                // A user id may be read from a non-canonical form; a service name is
                // kept as given.
                prop_assert_eq!(Actor::parse(&actor.to_string()), Ok(actor.clone()));
                if let Actor::Service(_) = actor {
                    prop_assert_eq!(actor.to_string(), input.clone());
                }
            }
            Err(error) => {
                prop_assert!(error.to_string().contains(&format!("{input:?}")), "{error}");
            }
        }
    }

    #[test]
    fn any_text_is_an_error_code_or_an_error(input in prop_oneof![
        "[pP]?9?0{0,3}[0-9]{0,2}",
        any::<String>(),
    ]) {
        match input.parse::<ErrorCode>() {
            Ok(code) => {
                prop_assert!(code.to_string().eq_ignore_ascii_case(input.trim()));
                prop_assert_eq!(code.to_string().parse::<ErrorCode>(), Ok(code));
            }
            Err(error) => {
                prop_assert!(error.to_string().contains(&format!("{input:?}")), "{error}");
            }
        }
    }
}
