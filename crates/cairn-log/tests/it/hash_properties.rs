//! Properties of the canonical JSON form and the hash chain built on it.
//!
//! Each property runs a moderate number of cases so that the suite stays fast; to
//! run them at volume:
//!
//! ```text
//! PROPTEST_CASES=100000 cargo nextest run -p cairn-log -E 'test(/^hash_properties::/)'
//! ```

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{Map, Value};

use cairn_log::HashedColumns;
use cairn_types::{EventId, EventType, Position, StreamId, StreamType, StreamVersion};

fn config() -> ProptestConfig {
    // PROPTEST_CASES in the environment overrides the default count.
    ProptestConfig {
        cases: ProptestConfig::default().cases.max(512),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any text, now and then with a NUL, a quote, a backslash or a control character.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z_]{0,8}",
        2 => any::<String>(),
        1 => "[\"\\\\\u{0}\u{1}\u{1f}\u{7f}\u{2028}é😀a]{0,6}",
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has finite numbers only", |f| f.is_finite())
            .prop_map(Value::from),
        (-1_000_i32..1_000, -6_i32..6).prop_map(|(m, e)| Value::from(f64::from(m) * 10f64.powi(e))),
        Just(Value::from(-0.0)),
        Just(Value::from(0.0)),
    ]
}

/// Any JSON value, nested a few levels.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((text(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn canonical(value: &Value) -> String {
    let mut out = String::new();
    cairn_log::canonical_json(value, &mut out);
    out
}

/// JSON text of `value` with every object's keys written in the order `order` gives,
/// and whitespace between tokens.
fn written_in_order(value: &Value, reverse: bool, out: &mut String) {
    match value {
        Value::Object(object) => {
            let mut keys: Vec<&String> = object.keys().collect();
            if reverse {
                keys.reverse();
            } else {
                // Longest first, then by text: an order unrelated to the sorted one.
                keys.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
            }
            out.push_str("{ ");
            for (index, key) in keys.into_iter().enumerate() {
                if index > 0 {
                    out.push_str(" ,\n");
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push_str(" :\t");
                written_in_order(&object[key], reverse, out);
            }
            out.push_str(" }");
        }
        Value::Array(items) => {
            out.push_str("[ ");
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push_str(", ");
                }
                written_in_order(item, reverse, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn time() -> impl Strategy<Value = DateTime<Utc>> {
    // 1970 to 9999, whole microseconds.
    (0_i64..253_402_300_799, 0_u32..1_000_000).prop_map(|(seconds, micros)| {
        Utc.timestamp_opt(seconds, micros * 1_000)
            .single()
            .expect("in range")
    })
}

#[derive(Debug, Clone)]
struct Event {
    position: Position,
    event_id: EventId,
    stream_type: StreamType,
    stream_id: StreamId,
    stream_version: StreamVersion,
    event_type: EventType,
    event_version: u32,
    data: Value,
    metadata: Value,
    created_at: DateTime<Utc>,
}

impl Event {
    fn columns(&self) -> HashedColumns<'_> {
        HashedColumns {
            position: self.position,
            event_id: self.event_id,
            stream_type: &self.stream_type,
            stream_id: self.stream_id,
            stream_version: self.stream_version,
            event_type: &self.event_type,
            event_version: self.event_version,
            data: &self.data,
            metadata: &self.metadata,
            created_at: self.created_at,
        }
    }
}

fn event() -> impl Strategy<Value = Event> {
    (
        (
            1_i64..i64::MAX,
            any::<u128>(),
            any::<u128>(),
            1_i64..1_000_000,
        ),
        ("[a-z]{1,8}", "[a-z]{1,8}"),
        json(),
        json(),
        time(),
    )
        .prop_map(
            |((position, event_id, stream_id, version), (stream, fact), data, metadata, at)| {
                Event {
                    position: Position::new(position),
                    event_id: EventId::from_uuid(uuid::Uuid::from_u128(event_id)),
                    stream_type: StreamType::parse(&stream).expect("a stream type"),
                    stream_id: StreamId::from_uuid(uuid::Uuid::from_u128(stream_id)),
                    stream_version: StreamVersion::new(version),
                    event_type: EventType::parse(&format!("{stream}.{fact}"))
                        .expect("an event type"),
                    event_version: 1,
                    data,
                    metadata,
                    created_at: at,
                }
            },
        )
}

fn previous() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(cairn_log::GENESIS.to_owned()),
        any::<[u8; 32]>().prop_map(|bytes| cairn_log::hex(&bytes)),
    ]
}

fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(object) => object
            .iter()
            .any(|(key, item)| key.contains('\0') || has_nul(item)),
        _ => false,
    }
}

fn has_negative_zero(value: &Value) -> bool {
    match value {
        Value::Number(number) => number
            .as_f64()
            .is_some_and(|f| f == 0.0 && f.is_sign_negative() && number.is_f64()),
        Value::Array(items) => items.iter().any(has_negative_zero),
        Value::Object(object) => object.values().any(has_negative_zero),
        _ => false,
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_canonical_form_is_json_of_the_same_value(value in json()) {
        let form = canonical(&value);
        let back: Value = serde_json::from_str(&form).expect("the canonical form is JSON");
        prop_assert_eq!(&back, &value);
        // No whitespace outside strings: compact, as serde_json writes it.
        prop_assert_eq!(form.len(), serde_json::to_string(&value).expect("serializes").len());
    }

    #[test]
    fn the_canonical_form_survives_reordering_and_reserialization(value in json()) {
        let form = canonical(&value);
        for text in [
            serde_json::to_string(&value).expect("serializes"),
            serde_json::to_string_pretty(&value).expect("serializes"),
            form.clone(),
            {
                let mut out = String::new();
                written_in_order(&value, true, &mut out);
                out
            },
            {
                let mut out = String::new();
                written_in_order(&value, false, &mut out);
                out
            },
        ] {
            let reread: Value = serde_json::from_str(&text).expect("reads back");
            prop_assert_eq!(canonical(&reread), form.clone(), "read back from {}", text);
        }
        // Through bytes and a typed round trip too, as a backend hands a row back.
        let bytes = serde_json::to_vec(&value).expect("serializes");
        let reread: Value = serde_json::from_slice(&bytes).expect("reads back");
        prop_assert_eq!(canonical(&reread), form);
    }

    #[test]
    fn normalizing_refuses_exactly_the_nuls_and_is_stable(value in json()) {
        let mut normalized = value.clone();
        let mut path = "event_data".to_owned();
        match cairn_log::normalize_json(&mut normalized, &mut path) {
            Ok(()) => {
                prop_assert!(!has_nul(&value));
                prop_assert_eq!(&path, "event_data");
                // Idempotent, and what it gives hashes the same after a round trip.
                let mut again = normalized.clone();
                cairn_log::normalize_json(&mut again, &mut String::new()).expect("still valid");
                prop_assert_eq!(&again, &normalized);
                let form = canonical(&normalized);
                prop_assert!(!has_negative_zero(&normalized), "{}", form);
                let reread: Value = serde_json::from_str(&form).expect("reads back");
                prop_assert_eq!(canonical(&reread), form);
            }
            Err(message) => {
                prop_assert!(has_nul(&value));
                prop_assert!(message.starts_with("event_data"), "{}", message);
                prop_assert!(message.contains("NUL character"), "{}", message);
            }
        }
    }

    #[test]
    fn hashing_is_deterministic_and_ignores_key_order(event in event(), previous in previous()) {
        let hash = cairn_log::event_hash(&previous, &event.columns());
        prop_assert_eq!(hash.len(), 64);
        prop_assert!(hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        prop_assert_eq!(&hash, &cairn_log::event_hash(&previous, &event.columns()));
        // The same event read back from storage: JSON re-read from text with its keys
        // in another order.
        let mut data = String::new();
        written_in_order(&event.data, true, &mut data);
        let mut metadata = String::new();
        written_in_order(&event.metadata, false, &mut metadata);
        let reread = Event {
            data: serde_json::from_str(&data).expect("reads back"),
            metadata: serde_json::from_str(&metadata).expect("reads back"),
            ..event
        };
        prop_assert_eq!(hash, cairn_log::event_hash(&previous, &reread.columns()));
    }

    #[test]
    fn different_events_hash_differently(
        event in event(),
        other_data in json(),
        other_previous in previous(),
        previous in previous(),
        shift in 1_i64..1_000,
    ) {
        let hash = cairn_log::event_hash(&previous, &event.columns());
        if canonical(&other_data) != canonical(&event.data) {
            let changed = Event { data: other_data.clone(), ..event.clone() };
            prop_assert_ne!(&hash, &cairn_log::event_hash(&previous, &changed.columns()));
            // Moving a payload from data to metadata is a change too.
            let swapped = Event { data: event.metadata.clone(), metadata: event.data.clone(), ..event.clone() };
            if canonical(&event.data) != canonical(&event.metadata) {
                prop_assert_ne!(&hash, &cairn_log::event_hash(&previous, &swapped.columns()));
            }
        }
        if other_previous != previous {
            prop_assert_ne!(&hash, &cairn_log::event_hash(&other_previous, &event.columns()));
        }
        let moved = Event {
            position: Position::new(event.position.get().saturating_add(shift).max(1)),
            ..event.clone()
        };
        if moved.position != event.position {
            prop_assert_ne!(&hash, &cairn_log::event_hash(&previous, &moved.columns()));
        }
        let later = Event {
            created_at: event.created_at + chrono::Duration::microseconds(shift),
            ..event.clone()
        };
        prop_assert_ne!(&hash, &cairn_log::event_hash(&previous, &later.columns()));
    }

    #[test]
    fn the_version_changes_the_hash_and_version_1_hashes_as_before_versions(
        event in event(),
        previous in previous(),
        version in prop_oneof![Just(0_u32), 2_u32..u32::MAX],
        other in 2_u32..u32::MAX,
    ) {
        let unversioned = cairn_log::event_hash(&previous, &event.columns());
        let versioned = Event { event_version: version, ..event.clone() };
        let hash = cairn_log::event_hash(&previous, &versioned.columns());
        prop_assert_ne!(&hash, &unversioned);
        if other != version {
            let other = Event { event_version: other, ..event.clone() };
            prop_assert_ne!(&hash, &cairn_log::event_hash(&previous, &other.columns()));
        }
    }

    #[test]
    fn any_text_that_is_json_canonicalizes_without_panicking(
        text in prop_oneof![
            "[\\[\\]{}\":,0-9.eE+\\- a-z\\\\]{0,40}",
            any::<String>(),
        ]
    ) {
        if let Ok(mut value) = serde_json::from_str::<Value>(&text) {
            let form = canonical(&value);
            let reread: Value = serde_json::from_str(&form).expect("reads back");
            prop_assert_eq!(canonical(&reread), form);
            let _ = cairn_log::normalize_json(&mut value, &mut String::new());
        }
    }
}

// A float whose shortest text the parser once read back as its neighbour: the hash
// computed at append and the one the audit recomputes from the stored row disagreed,
// and an untouched log was reported as tampered with.
cairn_testkit::backend_test!(
    floats_read_back_from_storage_hash_as_written,
    |t: cairn_testkit::TestDb| async move {
        let db = t.db();
        for number in [2.785_317_792_678_161_3e-226, 1.0e-300, 7.0e22, 0.1] {
            let data = serde_json::json!({ "x": number, "xs": [number, -number] });
            let event = cairn_log::NewEvent::new(
                EventType::parse("test.measured")?,
                data,
                cairn_types::Metadata::new(),
            );
            let request = cairn_log::AppendRequest::new(
                StreamType::parse("test")?,
                StreamId::new_v7(),
                vec![event],
            );
            let mut tx = db.begin().await?;
            if let cairn_log::Prepared::New(pending) = tx.prepare_append(request).await? {
                tx.write_append(pending).await?;
            }
            tx.commit().await?;
        }
        let report = db.verify_chain(&mut |_, _| {}).await?;
        assert!(report.is_intact(), "{report:?}");
        assert_eq!(report.n_checked, 4);
        Ok(())
    }
);

/// One event as release 0.1.0 hashed it. Stored hashes and signed checkpoints of every
/// earlier release depend on this value: it must never change.
#[test]
fn an_event_hashes_as_release_0_1_0_did() {
    let event = Event {
        position: Position::new(42),
        event_id: EventId::from_uuid(uuid::Uuid::from_u128(
            0x0190_0000_0000_7000_8000_0000_0000_0001,
        )),
        stream_type: StreamType::parse("organization").expect("a stream type"),
        stream_id: StreamId::from_uuid(uuid::Uuid::from_u128(
            0x0190_0000_0000_7000_8000_0000_0000_0002,
        )),
        stream_version: StreamVersion::new(3),
        event_type: EventType::parse("organization.created").expect("an event type"),
        event_version: 1,
        data: serde_json::json!({"name": "Acme Ltd", "domain": "acme.co.uk", "seats": 5, "tags": ["a", "b"]}),
        metadata: serde_json::json!({"org_id": "0190", "correlation_id": "c-1", "actor": {"kind": "system"}}),
        created_at: Utc
            .timestamp_opt(1_765_000_000, 123_456_000)
            .single()
            .expect("in range"),
    };
    assert_eq!(
        cairn_log::event_hash(cairn_log::GENESIS, &event.columns()),
        "d02bc9c3bf11ed77ffc7004829a7567340ab2c513096a3d3ac4e99c3f9c7e58f"
    );
}
