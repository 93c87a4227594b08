//! Signed checkpoints of the log's head.
//!
//! A checkpoint is the head (position and hash) at a moment, signed with an Ed25519 key
//! that is not kept in the database, and stored where the database cannot rewrite it (a
//! file). Whoever can rewrite the log and recompute its hashes cannot produce a
//! checkpoint for the rewritten head without the key; a walk holding the log to a
//! checkpoint ([`super::ChainCheck::anchors`]) finds the rewrite. A checkpoint of
//! format 2 holds the access log's head too (its last record and that record's
//! hash), so the access log's own chain is held to it the same way.
//!
//! The signed message is the text
//!
//! ```text
//! cairn-audit-checkpoint/1
//! position: 42
//! hash: <64 hexadecimal digits>
//! time: 2025-01-01T12:00:00.000000Z
//! ```
//!
//! and, in format 2 (`cairn-audit-checkpoint/2` on its first line), two lines more:
//!
//! ```text
//! access-seq: 7
//! access-hash: <64 hexadecimal digits>
//! ```

use std::fmt;

use chrono::{DateTime, SubsecRound as _, Utc};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use cairn_types::Position;

use super::Anchor;
use crate::hash::{canonical_time, hex};

/// The `format` of a checkpoint of the log's head alone, and the first line of its
/// signed message. Checkpoints signed before the access log existed, and ever valid.
pub(crate) const FORMAT: &str = "cairn-audit-checkpoint/1";
/// The `format` of a checkpoint of the log's head and the access log's.
pub(crate) const FORMAT_2: &str = "cairn-audit-checkpoint/2";

const SECRET_PREFIX: &str = "ed25519-secret-key:";
const PUBLIC_PREFIX: &str = "ed25519-public-key:";

/// A key that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "this is a public key; signing needs the secret key (the file `cairn audit keygen --out` \
         wrote, not its .pub)"
    )]
    PublicNotSecret,
    #[error("not a signing key: expected `{SECRET_PREFIX}` and 64 hexadecimal digits")]
    NotASecretKey,
    #[error(
        "not a public key: expected `{PUBLIC_PREFIX}` and 64 hexadecimal digits, or the digits \
         alone"
    )]
    NotAPublicKey,
    #[error("not a valid Ed25519 public key")]
    InvalidPublicKey,
}

/// Decodes exactly `N` bytes of hexadecimal (either case).
fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != N * 2 {
        return None;
    }
    let mut out = [0_u8; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let high = char::from(pair[0]).to_digit(16)?;
        let low = char::from(pair[1]).to_digit(16)?;
        *byte = u8::try_from(high * 16 + low).ok()?;
    }
    Some(out)
}

/// The key that signs checkpoints.
pub struct AuditKey(SigningKey);

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuditKey(public {})", self.public_key())
    }
}

impl AuditKey {
    /// The key made from 32 random bytes.
    pub fn from_seed(seed: [u8; 32]) -> AuditKey {
        AuditKey(SigningKey::from_bytes(&seed))
    }

    /// Reads a key as [`AuditKey::to_text`] writes it (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<AuditKey, KeyError> {
        let text = text.trim();
        if text.starts_with(PUBLIC_PREFIX) {
            return Err(KeyError::PublicNotSecret);
        }
        let seed = text
            .strip_prefix(SECRET_PREFIX)
            .and_then(unhex::<32>)
            .ok_or(KeyError::NotASecretKey)?;
        Ok(AuditKey::from_seed(seed))
    }

    /// The key as one line of text, for a file readable by its owner only.
    pub fn to_text(&self) -> String {
        format!("{SECRET_PREFIX}{}\n", hex(self.0.as_bytes()))
    }

    /// The public half, which verifies what this key signs.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Signs the head `position`, `hash` as of `time` (kept to the microsecond).
    pub fn sign(&self, position: Position, hash: &str, time: DateTime<Utc>) -> Checkpoint {
        self.sign_with_access(position, hash, None, time)
    }

    /// Signs the head `position`, `hash` and, when given, the access log's head
    /// (format 2), as of `time` (kept to the microsecond).
    pub fn sign_with_access(
        &self,
        position: Position,
        hash: &str,
        access: Option<AccessMark>,
        time: DateTime<Utc>,
    ) -> Checkpoint {
        let time = time.trunc_subsecs(6);
        let position = u64::try_from(position.get()).unwrap_or(0);
        let message = signed_message(position, hash, access.as_ref(), time);
        let signature = self.0.sign(message.as_bytes());
        Checkpoint {
            format: if access.is_some() { FORMAT_2 } else { FORMAT }.to_owned(),
            position,
            hash: hash.to_owned(),
            time,
            access,
            public_key: self.public_key().to_hex(),
            signature: hex(&signature.to_bytes()),
        }
    }
}

/// A key that verifies checkpoints.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl PublicKey {
    /// Reads a public key: `ed25519-public-key:` and 64 hexadecimal digits, or the
    /// digits alone (as a checkpoint's `public_key` holds them).
    pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
        let text = text.trim();
        if text.starts_with(SECRET_PREFIX) {
            return Err(KeyError::NotAPublicKey);
        }
        let digits = text.strip_prefix(PUBLIC_PREFIX).unwrap_or(text);
        let bytes = unhex::<32>(digits).ok_or(KeyError::NotAPublicKey)?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|_| KeyError::InvalidPublicKey)
    }

    /// The key's 64 hexadecimal digits.
    pub fn to_hex(&self) -> String {
        hex(self.0.as_bytes())
    }

    /// The key as one line of text, for a `.pub` file.
    pub fn to_text(&self) -> String {
        format!("{PUBLIC_PREFIX}{}\n", self.to_hex())
    }
}

/// The access log's head as a checkpoint holds it: its last record (0 when it had
/// none) and that record's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessMark {
    pub seq: u64,
    pub hash: String,
}

/// A signed head of the log, as stored in a checkpoint file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// `cairn-audit-checkpoint/1`, or `/2` with the access log's head.
    pub format: String,
    /// The head's position (0 for an empty log).
    pub position: u64,
    /// The head's hash: the hash of the event at `position`.
    pub hash: String,
    /// When it was signed (just after the chain up to the head was checked).
    pub time: DateTime<Utc>,
    /// The access log's head (format 2 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<AccessMark>,
    /// The key that signed it (64 hexadecimal digits).
    pub public_key: String,
    /// The Ed25519 signature of the signed message (128 hexadecimal digits).
    pub signature: String,
}

/// A checkpoint that proves nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// Not a checkpoint: bad JSON, a missing field, a value of the wrong form.
    #[error("not a checkpoint: {0}")]
    Malformed(String),
    /// The signature does not verify against the key the checkpoint names.
    #[error(
        "the signature does not verify: the checkpoint was altered after it was signed, or \
         was never signed by the key it names"
    )]
    BadSignature,
    /// Signed by another key than the one the operator pinned.
    #[error("signed by key {found}, not by the pinned key {pinned}")]
    UnknownKey { found: String, pinned: String },
}

fn signed_message(
    position: u64,
    hash: &str,
    access: Option<&AccessMark>,
    time: DateTime<Utc>,
) -> String {
    let time = canonical_time(time);
    match access {
        None => format!("{FORMAT}\nposition: {position}\nhash: {hash}\ntime: {time}\n"),
        Some(access) => format!(
            "{FORMAT_2}\nposition: {position}\nhash: {hash}\ntime: {time}\naccess-seq: {}\naccess-hash: {}\n",
            access.seq, access.hash
        ),
    }
}

fn is_hash(text: &str) -> bool {
    let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    text.len() == 64 && text.bytes().all(lower_hex)
}

impl Checkpoint {
    /// Reads a checkpoint file's text.
    pub fn parse(text: &str) -> Result<Checkpoint, CheckpointError> {
        let checkpoint: Checkpoint =
            serde_json::from_str(text).map_err(|e| CheckpointError::Malformed(e.to_string()))?;
        match (checkpoint.format.as_str(), &checkpoint.access) {
            (FORMAT, None) | (FORMAT_2, Some(_)) => {}
            (FORMAT, Some(_)) => {
                return Err(CheckpointError::Malformed(format!(
                    "format {FORMAT:?} holds no access log head, but this one has one"
                )));
            }
            (FORMAT_2, None) => {
                return Err(CheckpointError::Malformed(format!(
                    "format {FORMAT_2:?} holds the access log's head, and this one has none"
                )));
            }
            (other, _) => {
                return Err(CheckpointError::Malformed(format!(
                    "format is {other:?}, expected {FORMAT:?} or {FORMAT_2:?}"
                )));
            }
        }
        if let Some(access) = &checkpoint.access {
            if i64::try_from(access.seq).is_err() {
                return Err(CheckpointError::Malformed(format!(
                    "access.seq {} is out of range",
                    access.seq
                )));
            }
            if !is_hash(&access.hash) {
                return Err(CheckpointError::Malformed(
                    "access.hash is not 64 lower-case hexadecimal digits".to_owned(),
                ));
            }
        }
        if i64::try_from(checkpoint.position).is_err() {
            return Err(CheckpointError::Malformed(format!(
                "position {} is out of range",
                checkpoint.position
            )));
        }
        if !is_hash(&checkpoint.hash) {
            return Err(CheckpointError::Malformed(
                "hash is not 64 lower-case hexadecimal digits".to_owned(),
            ));
        }
        Ok(checkpoint)
    }

    /// The checkpoint as pretty JSON, for its file.
    pub fn to_json(&self) -> String {
        // Serializing plain strings and numbers cannot fail.
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// The position, as the log numbers it.
    pub fn log_position(&self) -> Position {
        Position::new(i64::try_from(self.position).unwrap_or(i64::MAX))
    }

    /// Checks the signature, against `pinned` if given (else against the key the
    /// checkpoint names), and returns what the log must still hold.
    pub fn verify(&self, pinned: Option<&PublicKey>) -> Result<Anchor, CheckpointError> {
        let named = PublicKey::parse(&self.public_key)
            .map_err(|e| CheckpointError::Malformed(format!("public_key: {e}")))?;
        if let Some(pinned) = pinned
            && *pinned != named
        {
            return Err(CheckpointError::UnknownKey {
                found: named.to_hex(),
                pinned: pinned.to_hex(),
            });
        }
        let signature = unhex::<64>(&self.signature)
            .map(|bytes| Signature::from_bytes(&bytes))
            .ok_or_else(|| {
                CheckpointError::Malformed("signature is not 128 hexadecimal digits".to_owned())
            })?;
        let message = signed_message(self.position, &self.hash, self.access.as_ref(), self.time);
        named
            .0
            .verify_strict(message.as_bytes(), &signature)
            .map_err(|_| CheckpointError::BadSignature)?;
        Ok(Anchor {
            position: self.log_position(),
            hash: self.hash.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AuditKey {
        AuditKey::from_seed([7; 32])
    }

    #[test]
    fn a_checkpoint_of_the_access_log_too_verifies_and_its_access_head_is_signed() {
        let mark = AccessMark {
            seq: 7,
            hash: "ef".repeat(32),
        };
        let checkpoint = key().sign_with_access(
            Position::new(42),
            &"ab".repeat(32),
            Some(mark.clone()),
            Utc::now(),
        );
        assert_eq!(checkpoint.format, FORMAT_2);
        let read = Checkpoint::parse(&checkpoint.to_json()).expect("it reads back");
        assert_eq!(read.access, Some(mark));
        assert!(read.verify(None).is_ok());

        let mut moved = read.clone();
        moved.access = Some(AccessMark {
            seq: 6,
            hash: "ef".repeat(32),
        });
        assert_eq!(moved.verify(None), Err(CheckpointError::BadSignature));
        // Passed off as format 1, without its access head: the signature is of format 2.
        let mut dropped = read.clone();
        dropped.format = FORMAT.to_owned();
        dropped.access = None;
        assert_eq!(dropped.verify(None), Err(CheckpointError::BadSignature));
        // Each format says whether it holds an access head.
        let mut text: serde_json::Value = serde_json::from_str(&read.to_json()).unwrap();
        text["format"] = serde_json::json!(FORMAT);
        assert!(matches!(
            Checkpoint::parse(&text.to_string()),
            Err(CheckpointError::Malformed(m)) if m.contains("holds no access log head")
        ));
        let mut text: serde_json::Value = serde_json::from_str(&read.to_json()).unwrap();
        text.as_object_mut().unwrap().remove("access");
        assert!(matches!(
            Checkpoint::parse(&text.to_string()),
            Err(CheckpointError::Malformed(m)) if m.contains("has none")
        ));
        text["format"] = serde_json::json!("cairn-audit-checkpoint/3");
        assert!(matches!(
            Checkpoint::parse(&text.to_string()),
            Err(CheckpointError::Malformed(m)) if m.contains("expected")
        ));
    }

    #[test]
    fn a_signed_checkpoint_verifies_and_survives_its_file() {
        let at = DateTime::parse_from_rfc3339("2025-03-04T05:06:07.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        let checkpoint = key().sign(Position::new(42), &"ab".repeat(32), at);
        assert_eq!(
            canonical_time(checkpoint.time),
            "2025-03-04T05:06:07.123456Z"
        );
        let read = Checkpoint::parse(&checkpoint.to_json()).unwrap();
        assert_eq!(read, checkpoint);
        let anchor = read.verify(Some(&key().public_key())).unwrap();
        assert_eq!(anchor.position, Position::new(42));
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let checkpoint = key().sign(Position::new(3), &"cd".repeat(32), Utc::now());
        let mut moved = checkpoint.clone();
        moved.position = 2;
        assert_eq!(moved.verify(None), Err(CheckpointError::BadSignature));
        let mut rehashed = checkpoint.clone();
        rehashed.hash = "ef".repeat(32);
        assert_eq!(rehashed.verify(None), Err(CheckpointError::BadSignature));
        let mut redated = checkpoint.clone();
        redated.time += chrono::Duration::seconds(1);
        assert_eq!(redated.verify(None), Err(CheckpointError::BadSignature));
        let other = AuditKey::from_seed([8; 32]);
        let mut resigned = checkpoint.clone();
        resigned.public_key = other.public_key().to_hex();
        assert_eq!(resigned.verify(None), Err(CheckpointError::BadSignature));
        assert!(matches!(
            checkpoint.verify(Some(&other.public_key())),
            Err(CheckpointError::UnknownKey { .. })
        ));
    }

    #[test]
    fn keys_round_trip_and_are_told_apart() {
        let key = key();
        let read = AuditKey::parse(&key.to_text()).unwrap();
        assert_eq!(read.public_key(), key.public_key());
        let public = key.public_key().to_text();
        assert_eq!(
            AuditKey::parse(&public).unwrap_err(),
            KeyError::PublicNotSecret
        );
        assert_eq!(PublicKey::parse(&public).unwrap(), key.public_key());
        assert_eq!(
            PublicKey::parse(&key.public_key().to_hex()).unwrap(),
            key.public_key()
        );
        assert_eq!(
            PublicKey::parse(&key.to_text()).unwrap_err(),
            KeyError::NotAPublicKey
        );
        assert_eq!(AuditKey::parse("zz").unwrap_err(), KeyError::NotASecretKey);
    }

    #[test]
    fn malformed_checkpoints_are_named() {
        assert!(matches!(
            Checkpoint::parse("{\"position\": "),
            Err(CheckpointError::Malformed(_))
        ));
        let mut checkpoint = key().sign(Position::new(1), &"ab".repeat(32), Utc::now());
        checkpoint.format = "other".to_owned();
        let err = Checkpoint::parse(&checkpoint.to_json()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "not a checkpoint: format is \"other\", expected \"cairn-audit-checkpoint/1\" or \"cairn-audit-checkpoint/2\""
        );
    }
}
