//! Personal data in event payloads: a person's name, email address or any free text
//! about them. In the log such a field is sealed under the person's data key; read
//! back, it is the value, or a marker saying why the value is withheld.

use std::borrow::Cow;
use std::marker::PhantomData;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, IntoDeserializer, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::UserId;

/// The key of the object a sealed field is stored as: `{"$sealed": "2.…"}` (see
/// [`SealedField`]).
pub const SEALED_KEY: &str = "$sealed";
/// The key of the object a withheld field is read as: `{"withheld": "erased"}`.
pub const WITHHELD_KEY: &str = "withheld";

/// A personal field of an event payload.
///
/// Written, it is [`Personal::Known`]: the log seals it before the event is stored.
/// Read, it is the value when its person's data key opens it, and
/// [`Personal::Withheld`] when the person was erased (their key is gone) or the seal
/// cannot be opened. [`Personal::Sealed`] is the stored form, seen only by readers of
/// the raw log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Personal<T> {
    Known(T),
    Withheld(Withheld),
    Sealed(Sealed),
}

impl<T> Personal<T> {
    /// The value, when it is known.
    pub fn known(&self) -> Option<&T> {
        match self {
            Personal::Known(value) => Some(value),
            Personal::Withheld(_) | Personal::Sealed(_) => None,
        }
    }

    /// The value, when it is known.
    pub fn into_known(self) -> Option<T> {
        match self {
            Personal::Known(value) => Some(value),
            Personal::Withheld(_) | Personal::Sealed(_) => None,
        }
    }
}

impl<T> From<T> for Personal<T> {
    fn from(value: T) -> Self {
        Personal::Known(value)
    }
}

impl<T: std::fmt::Display> std::fmt::Display for Personal<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Personal::Known(value) => value.fmt(f),
            Personal::Withheld(withheld) => write!(f, "[{}]", withheld.withheld.as_str()),
            Personal::Sealed(_) => f.write_str("[sealed]"),
        }
    }
}

/// Read by the shape of what is there, without buffering it: a scalar or an array is
/// the value; an object whose first key is `withheld` or `$sealed` is that marker
/// (with no other key), and any other object is the value's.
impl<'de, T: Deserialize<'de>> Deserialize<'de> for Personal<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PersonalVisitor(PhantomData))
    }
}

struct PersonalVisitor<T>(PhantomData<T>);

impl<T> PersonalVisitor<T> {
    fn known<'de, E: de::Error>(value: impl IntoDeserializer<'de, E>) -> Result<Personal<T>, E>
    where
        T: Deserialize<'de>,
    {
        T::deserialize(value.into_deserializer()).map(Personal::Known)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for PersonalVisitor<T> {
    type Value = Personal<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a personal field: its value, a withheld marker or a sealed envelope")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Self::known(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Self::known(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Self::known(v)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Self::known(v)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Self::known(v)
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Self::known(de::value::BorrowedStrDeserializer::new(v))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Self::known(v)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Self::known(())
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Self::known(())
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        T::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(Personal::Known)
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let only = |map: &mut A, marker: &str| -> Result<(), A::Error> {
            match map.next_key::<de::IgnoredAny>()? {
                None => Ok(()),
                Some(_) => Err(de::Error::custom(format!(
                    "a {marker} marker has no other field"
                ))),
            }
        };
        let Some(first) = map.next_key::<String>()? else {
            return T::deserialize(Value::Object(serde_json::Map::new()))
                .map(Personal::Known)
                .map_err(de::Error::custom);
        };
        match first.as_str() {
            WITHHELD_KEY => {
                let withheld = map.next_value::<WithheldReason>()?;
                only(&mut map, "withheld")?;
                Ok(Personal::Withheld(Withheld { withheld }))
            }
            SEALED_KEY => {
                let sealed = map.next_value::<SealedField>()?;
                only(&mut map, "sealed")?;
                Ok(Personal::Sealed(Sealed { sealed }))
            }
            _ => {
                // The value is an object itself: gathered, then read as the value.
                let mut object = serde_json::Map::new();
                object.insert(first, map.next_value::<Value>()?);
                while let Some((key, value)) = map.next_entry::<String, Value>()? {
                    object.insert(key, value);
                }
                T::deserialize(Value::Object(object))
                    .map(Personal::Known)
                    .map_err(de::Error::custom)
            }
        }
    }
}

/// Why a personal field's value is not shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Withheld {
    pub withheld: WithheldReason,
}

impl Withheld {
    /// The marker of an erased person's field.
    pub const ERASED: Withheld = Withheld {
        withheld: WithheldReason::Erased,
    };

    /// The marker of a restricted person's field.
    pub const RESTRICTED: Withheld = Withheld {
        withheld: WithheldReason::Restricted,
    };

    /// The marker as JSON.
    pub fn to_value(&self) -> Value {
        serde_json::json!({ WITHHELD_KEY: self.withheld.as_str() })
    }
}

/// Why a value is withheld.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WithheldReason {
    /// The person was erased: their data key is destroyed and the value is gone.
    Erased,
    /// The person's data is restricted (kept, and shown to no one) until their
    /// erasure at the end of its retention period.
    Restricted,
    /// The seal could not be opened: it was tampered with, or its key is wrapped by a
    /// key this process was not given. The event's failure says which.
    Unreadable,
}

impl WithheldReason {
    /// The reason as shown: `erased`, `restricted`, `unreadable`.
    pub const fn as_str(self) -> &'static str {
        match self {
            WithheldReason::Erased => "erased",
            WithheldReason::Restricted => "restricted",
            WithheldReason::Unreadable => "unreadable",
        }
    }
}

/// A sealed field as the log stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sealed {
    #[serde(rename = "$sealed")]
    pub sealed: SealedField,
}

/// The envelope of a sealed field: whose key seals it, where in the payload it was
/// sealed (bound into the seal with the event's type and stream), and the sealed bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum SealedField {
    /// `2.<user id>.<sealed>.<field>`: the person's user id; AES-256-GCM's 12-byte
    /// nonce, then the ciphertext and tag, base64url; the field's JSON pointer, last.
    Compact(String),
    /// The form earlier releases wrote, sealed with XChaCha20-Poly1305.
    Object(SealedObject),
}

/// A sealed field as earlier releases stored it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SealedObject {
    /// The person the field is about; their data key seals it.
    pub subject: UserId,
    /// The field's JSON pointer in the payload when it was sealed, e.g. `/admin/email`.
    pub field: String,
    /// XChaCha20-Poly1305: the 24-byte nonce, then the ciphertext and tag; base64url.
    pub data: String,
}

/// The first part of a compact envelope: its format.
const COMPACT_PREFIX: &str = "2.";

impl SealedField {
    /// The text of a compact envelope.
    pub fn compact_envelope(subject: UserId, data: &str, field: &str) -> String {
        let mut uuid = uuid::Uuid::encode_buffer();
        let subject = subject.as_uuid().hyphenated().encode_lower(&mut uuid);
        let mut text = String::with_capacity(
            COMPACT_PREFIX.len() + subject.len() + data.len() + field.len() + 2,
        );
        text.push_str(COMPACT_PREFIX);
        text.push_str(subject);
        text.push('.');
        text.push_str(data);
        text.push('.');
        text.push_str(field);
        text
    }

    /// The parts of a compact envelope's text, borrowed from it: the person (as
    /// written), the sealed bytes (base64url) and the field. The person and the bytes
    /// hold no dot, so the field, last, may hold any.
    pub fn compact_parts(text: &str) -> Result<(&str, &str, &str), String> {
        let rest = text
            .strip_prefix(COMPACT_PREFIX)
            .ok_or_else(|| format!("it does not start with `{COMPACT_PREFIX}`"))?;
        let (subject, rest) = rest
            .split_once('.')
            .ok_or_else(|| "it has no sealed bytes".to_owned())?;
        let (data, field) = rest
            .split_once('.')
            .ok_or_else(|| "it names no field".to_owned())?;
        if !field.starts_with('/') {
            return Err(format!("its field `{field}` is not a JSON pointer"));
        }
        Ok((subject, data, field))
    }

    /// The person whose key seals it, when the envelope names one.
    pub fn subject(&self) -> Option<UserId> {
        match self {
            SealedField::Compact(text) => Self::compact_parts(text)
                .ok()
                .and_then(|(subject, _, _)| subject.parse().ok()),
            SealedField::Object(object) => Some(object.subject),
        }
    }
}

/// Read by its shape: a string must be a whole compact envelope, and says what it
/// lacks when it is not one.
impl<'de> Deserialize<'de> for SealedField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Shape {
            Compact(String),
            Object(SealedObject),
        }
        match Shape::deserialize(deserializer)? {
            Shape::Compact(text) => match SealedField::compact_parts(&text) {
                Ok(_) => Ok(SealedField::Compact(text)),
                Err(what) => Err(de::Error::custom(format!(
                    "a sealed field's envelope is malformed: {what}"
                ))),
            },
            Shape::Object(object) => Ok(SealedField::Object(object)),
        }
    }
}

impl JsonSchema for SealedField {
    fn schema_name() -> Cow<'static, str> {
        "SealedEnvelope".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let object = generator.subschema_for::<SealedObject>();
        json_schema!({
            "description": "A sealed field's envelope: `2.<user id>.<sealed>.<field>` (AES-256-GCM; the 12-byte nonce, then the ciphertext and tag, base64url; the field's JSON pointer last), or the object earlier releases wrote (XChaCha20-Poly1305).",
            "anyOf": [
                {"type": "string", "pattern": "^2\\.[0-9a-f-]{36}\\.[A-Za-z0-9_-]+\\./"},
                object
            ]
        })
    }
}

impl JsonSchema for Sealed {
    fn schema_name() -> Cow<'static, str> {
        "SealedField".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let field = generator.subschema_for::<SealedField>();
        json_schema!({
            "type": "object",
            "description": "A personal field as the log stores it, sealed under its person's data key. Reads never serve this form.",
            "properties": { SEALED_KEY: field },
            "required": [SEALED_KEY],
            "additionalProperties": false
        })
    }
}

impl<T: JsonSchema> JsonSchema for Personal<T> {
    fn schema_name() -> Cow<'static, str> {
        format!("Personal_{}", T::schema_name()).into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let known = generator.subschema_for::<T>();
        let withheld = generator.subschema_for::<Withheld>();
        let sealed = generator.subschema_for::<Sealed>();
        json_schema!({
            "description": "Personal data: the value, or {\"withheld\": \"erased\"} once its person was erased (\"unreadable\" when its seal cannot be opened). The log stores it sealed; reads never serve the sealed form.",
            "anyOf": [known, withheld, sealed]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_form_reads_back_as_itself() {
        let known: Personal<String> = serde_json::from_value(serde_json::json!("Ada")).unwrap();
        assert_eq!(known, Personal::Known("Ada".to_owned()));
        let withheld: Personal<String> =
            serde_json::from_value(serde_json::json!({"withheld": "erased"})).unwrap();
        assert_eq!(withheld, Personal::Withheld(Withheld::ERASED));
        assert_eq!(withheld.to_string(), "[erased]");
        let subject = UserId::new_v7();
        let sealed: Personal<String> = serde_json::from_value(serde_json::json!({
            "$sealed": {"subject": subject, "field": "/name", "data": "AAAA"}
        }))
        .unwrap();
        assert!(matches!(sealed, Personal::Sealed(ref s) if s.sealed.subject() == Some(subject)));
        assert_eq!(sealed.known(), None);
        let compact = SealedField::compact_envelope(subject, "AAAA", "/admin/name.first");
        let sealed: Personal<String> =
            serde_json::from_value(serde_json::json!({ "$sealed": compact })).unwrap();
        assert!(matches!(sealed, Personal::Sealed(ref s) if s.sealed.subject() == Some(subject)));
        assert_eq!(
            SealedField::compact_parts(&compact),
            Ok((subject.to_string().as_str(), "AAAA", "/admin/name.first"))
        );
    }

    #[test]
    fn each_shape_reads_as_what_it_is() {
        #[derive(Debug, PartialEq, Deserialize)]
        struct Pair {
            a: u32,
            b: u32,
        }
        let cases: Vec<(serde_json::Value, Option<Personal<Pair>>)> = vec![
            (
                serde_json::json!({"a": 1, "b": 2}),
                Some(Personal::Known(Pair { a: 1, b: 2 })),
            ),
            (
                serde_json::json!({"withheld": "unreadable"}),
                Some(Personal::Withheld(Withheld {
                    withheld: WithheldReason::Unreadable,
                })),
            ),
            // A marker with anything else is neither a marker nor the value.
            (serde_json::json!({"withheld": "erased", "a": 1}), None),
            (serde_json::json!({"a": 1}), None),
            (serde_json::json!("text"), None),
        ];
        for (json, expected) in cases {
            let read = serde_json::from_value::<Personal<Pair>>(json.clone()).ok();
            assert_eq!(read, expected, "{json}");
        }
        // Scalars and arrays are the value, read from text as from a value.
        let names: Personal<Vec<String>> = serde_json::from_str(r#"["Ada", "Grace"]"#).unwrap();
        assert_eq!(names.known().map(Vec::len), Some(2));
        let n: Personal<u64> = serde_json::from_str("7").unwrap();
        assert_eq!(n, Personal::Known(7));
        let name: Personal<String> = serde_json::from_str(r#""Ada""#).unwrap();
        assert_eq!(name, Personal::Known("Ada".to_owned()));
    }

    #[test]
    fn a_compact_envelope_that_is_not_one_says_what_is_missing() {
        let cases = [
            ("", "does not start with `2.`"),
            ("1.x.y./a", "does not start with `2.`"),
            ("2.", "no sealed bytes"),
            ("2.person", "no sealed bytes"),
            ("2.person.bytes", "names no field"),
            ("2.person.bytes.name", "not a JSON pointer"),
        ];
        for (text, says) in cases {
            let error = SealedField::compact_parts(text).expect_err(text);
            assert!(error.contains(says), "{text}: {error}");
            // Read as a payload's field, it is refused saying the same.
            let read =
                serde_json::from_value::<Personal<String>>(serde_json::json!({ "$sealed": text }));
            let error = read.expect_err(text).to_string();
            assert!(error.contains(says), "{text}: {error}");
        }
    }

    #[test]
    fn a_marker_that_is_neither_is_refused() {
        let wrong: Result<Personal<u32>, _> =
            serde_json::from_value(serde_json::json!({"withheld": "forgotten"}));
        assert!(wrong.is_err());
    }
}
