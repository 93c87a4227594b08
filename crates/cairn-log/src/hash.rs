//! The tamper-evidence hash chain.
//!
//! Each event's hash is `SHA-256(previous hash ‖ canonical form of the event)`, where the
//! canonical form covers every immutable column but `correlation_id` and `org_id`: those
//! are copies of fields of the hashed metadata, and the audit walk holds them to it.
//! Changing, removing or moving any event changes every hash from that position on, so
//! `cairn audit verify` can name the first position at fault. The hash is unkeyed:
//! whoever can rewrite the table can recompute it, which only a signed checkpoint of
//! the audit shows.
//!
//! The payload version is hashed only when it is not 1: every event written before
//! versions were recorded is version 1 and keeps the hash it was written with.
//!
//! JSON is hashed in a canonical form (object keys sorted, no whitespace, serde_json's
//! number and string rendering) so that PostgreSQL's `jsonb`, which reorders keys and
//! drops whitespace, hashes the same as SQLite's text.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

use cairn_types::{EventId, EventType, Position, StreamId, StreamType, StreamVersion};

/// The hash before the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Lower-case hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

/// Writes `value` in canonical form.
pub fn canonical_json(value: &Value, out: &mut String) {
    match value {
        Value::Object(object) => {
            let mut keys: Vec<&String> = object.keys().collect();
            keys.sort();
            out.push('{');
            for (index, key) in keys.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                push_string(key, out);
                out.push(':');
                canonical_json(&object[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        Value::String(text) => push_string(text, out),
        Value::Number(number) => out.push_str(&number.to_string()),
        Value::Bool(flag) => out.push_str(if *flag { "true" } else { "false" }),
        Value::Null => out.push_str("null"),
    }
}

fn push_string(text: &str, out: &mut String) {
    // serde_json's string rendering cannot fail for a &str.
    out.push_str(&Value::String(text.to_owned()).to_string());
}

/// The canonical form of an instant: RFC 3339, UTC, microseconds.
pub(crate) fn canonical_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The immutable columns of one event, as hashed.
#[derive(Debug)]
pub struct HashedColumns<'a> {
    pub position: Position,
    pub event_id: EventId,
    pub stream_type: &'a StreamType,
    pub stream_id: StreamId,
    pub stream_version: StreamVersion,
    pub event_type: &'a EventType,
    /// The version of the event type's payload the event was written at. The hash
    /// covers it only when it is not 1, the version of every event written before
    /// versions were recorded, so their hashes are unchanged.
    pub event_version: u32,
    pub data: &'a Value,
    pub metadata: &'a Value,
    pub created_at: DateTime<Utc>,
}

/// The chained hash of one event.
pub fn event_hash(previous: &str, columns: &HashedColumns<'_>) -> String {
    let mut canonical = String::with_capacity(256);
    canonical.push_str(previous);
    canonical.push('\n');
    canonical.push_str(&columns.position.to_string());
    canonical.push('\n');
    canonical.push_str(&columns.event_id.to_string());
    canonical.push('\n');
    canonical.push_str(columns.stream_type.as_str());
    canonical.push('\n');
    canonical.push_str(&columns.stream_id.to_string());
    canonical.push('\n');
    canonical.push_str(&columns.stream_version.to_string());
    canonical.push('\n');
    canonical.push_str(columns.event_type.as_str());
    canonical.push('\n');
    canonical_json(columns.data, &mut canonical);
    canonical.push('\n');
    canonical_json(columns.metadata, &mut canonical);
    canonical.push('\n');
    canonical.push_str(&canonical_time(columns.created_at));
    if columns.event_version != 1 {
        // The time has no newline, so this suffix cannot be confused with a field.
        canonical.push_str("\nv");
        canonical.push_str(&columns.event_version.to_string());
    }
    hex(&Sha256::digest(canonical.as_bytes()))
}

/// The fields of one access record, as hashed (see [`crate::access`]).
#[derive(Debug)]
pub(crate) struct AccessColumns<'a> {
    pub(crate) seq: i64,
    pub(crate) recorded_at: DateTime<Utc>,
    pub(crate) who: &'a str,
    pub(crate) via: &'a str,
    pub(crate) correlation_id: &'a str,
    /// Empty when the read was of no organization.
    pub(crate) org_id: &'a str,
    pub(crate) resource: &'a str,
    /// The subjects' ids, comma-separated.
    pub(crate) subjects: &'a str,
}

/// The chained hash of one access record: `SHA-256(previous hash ‖ its fields)`, the
/// event chain's style on a chain of its own. Text fields a person chose (`who`,
/// `resource`) are hashed as JSON strings, so that no field can be confused with the
/// next.
pub(crate) fn access_hash(previous: &str, columns: &AccessColumns<'_>) -> String {
    let mut canonical = String::with_capacity(256);
    canonical.push_str(previous);
    canonical.push('\n');
    canonical.push_str(&columns.seq.to_string());
    canonical.push('\n');
    canonical.push_str(&canonical_time(columns.recorded_at));
    canonical.push('\n');
    push_string(columns.who, &mut canonical);
    canonical.push('\n');
    canonical.push_str(columns.via);
    canonical.push('\n');
    canonical.push_str(columns.correlation_id);
    canonical.push('\n');
    canonical.push_str(columns.org_id);
    canonical.push('\n');
    push_string(columns.resource, &mut canonical);
    canonical.push('\n');
    canonical.push_str(columns.subjects);
    hex(&Sha256::digest(canonical.as_bytes()))
}

/// Makes a JSON value safe to store on both backends and stable under a round trip
/// through PostgreSQL's `jsonb`, or says why it cannot be.
///
/// `jsonb` has no negative zero and no NUL character in strings; a negative zero is
/// stored as zero, a NUL is refused.
pub fn normalize_json(value: &mut Value, path: &mut String) -> Result<(), String> {
    match value {
        Value::Object(object) => {
            for (key, item) in object.iter_mut() {
                if key.contains('\0') {
                    return Err(format!(
                        "{path}: an object key contains a NUL character (\\u0000)"
                    ));
                }
                let len = path.len();
                path.push('.');
                path.push_str(key);
                normalize_json(item, path)?;
                path.truncate(len);
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{index}]"));
                normalize_json(item, path)?;
                path.truncate(len);
            }
        }
        Value::String(text) => {
            if text.contains('\0') {
                return Err(format!(
                    "{path}: the string contains a NUL character (\\u0000)"
                ));
            }
        }
        Value::Number(number) => {
            if number.as_f64() == Some(0.0) && number.is_f64() {
                *value = Value::from(0.0);
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let mut out = String::new();
        canonical_json(
            &json!({"b": 1, "a": {"d": [true, null], "c": "x\"y"}}),
            &mut out,
        );
        assert_eq!(out, r#"{"a":{"c":"x\"y","d":[true,null]},"b":1}"#);
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0x00, 0xab, 0xff]), "00abff");
    }

    #[test]
    fn normalize_refuses_nul_and_names_the_path() {
        let mut value = json!({"a": [1, {"b": "x\u{0}y"}]});
        let err = normalize_json(&mut value, &mut "event_data".to_owned()).unwrap_err();
        assert_eq!(
            err,
            "event_data.a[1].b: the string contains a NUL character (\\u0000)"
        );
    }

    #[test]
    fn normalize_turns_negative_zero_into_zero() {
        let mut value = json!({"x": -0.0});
        normalize_json(&mut value, &mut String::new()).unwrap();
        let mut out = String::new();
        canonical_json(&value, &mut out);
        assert_eq!(out, r#"{"x":0.0}"#);
    }
}
