//! Personal data sealed under a data key per person, and erased by destroying it.
//!
//! - A person's (a subject's) fields are sealed with AES-256-GCM under their own data
//!   key, with the event's type and stream, the field and the person bound into the
//!   seal: a sealed value moved to another field or event no longer opens. A sealed
//!   field is stored as one string, `{"$sealed": "2.<person>.<sealed bytes>.<field>"}`.
//!   Fields sealed by earlier releases, as an object sealed with XChaCha20-Poly1305
//!   (`{"$sealed": {"subject", "field", "data"}}`), still open; stored events are never
//!   rewritten.
//! - Data keys are stored wrapped by the key-encryption key ([`Kek`]), which lives
//!   outside the database. `pii_keys` records which one is current, so a process given
//!   another key refuses to start instead of sealing under a key the others lack.
//! - Erasing a person destroys their data key in the unit of work that records the
//!   erasure. The chain covers only the sealed form, so it still verifies.
//! - Keys are cached only once committed: a key read inside a write transaction may be
//!   that transaction's own, and die with it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use aes_gcm::Aes256Gcm;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chacha20poly1305::aead::{Aead, AeadInPlace, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

use cairn_types::{SEALED_KEY, SealedField, StreamId, UserId, Withheld, WithheldReason};

use crate::args;
use crate::backend::Conn;
use crate::db::Db;
use crate::error::DbError;

/// The nonce of XChaCha20-Poly1305: wrapped data keys, and fields sealed by earlier
/// releases.
const NONCE_LEN: usize = 24;
/// The nonce of AES-256-GCM: fields sealed in the compact envelope.
const GCM_NONCE_LEN: usize = 12;

/// How a sealed field is stored: the envelope's format, which says its cipher and
/// the label its associated data starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// `{"subject", "field", "data"}`, XChaCha20-Poly1305: written by earlier releases.
    Object,
    /// `"2.<subject>.<data>.<field>"`, AES-256-GCM.
    Compact,
}

impl Format {
    fn aad_label(self) -> &'static [u8] {
        match self {
            Format::Object => b"cairn-seal-v1\0",
            Format::Compact => b"cairn-seal-v2\0",
        }
    }
}

/// A person's data key, unwrapped, with the cipher made from it once (its key
/// schedule), for every field it seals or opens.
pub(crate) struct DataKey {
    key: Key,
    cipher: Aes256Gcm,
}

impl DataKey {
    fn new(key: Key) -> DataKey {
        DataKey {
            cipher: Aes256Gcm::new(&key),
            key,
        }
    }
}

/// A person's data key, shared by the keyring and the transactions that use it.
pub(crate) type SharedKey = Arc<DataKey>;

/// The key-encryption key: wraps every person's data key. Kept in a file (or an
/// environment variable) apart from the database and its backups.
#[derive(Clone)]
pub struct Kek {
    id: String,
    key: Key,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kek")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why a key-encryption key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KekError {
    #[error("cannot read the personal-data key file {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{place} is not a personal-data key: {reason}")]
    Malformed { place: String, reason: String },
    #[error("cannot write the personal-data key file {path}: {reason}")]
    Unwritable { path: String, reason: String },
}

impl Kek {
    /// A new random key.
    pub fn generate() -> Result<Kek, KekError> {
        let mut bytes = [0_u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| KekError::Unwritable {
            path: "(new key)".to_owned(),
            reason: format!("no randomness: {e}"),
        })?;
        Ok(Kek::from_bytes(bytes))
    }

    fn from_bytes(bytes: [u8; 32]) -> Kek {
        let mut digest = Sha256::new();
        digest.update(b"cairn-pii-kek\0");
        digest.update(bytes);
        let id = crate::hex(&digest.finalize()[..8]);
        Kek {
            id,
            key: Key::from(bytes),
        }
    }

    /// Reads a key from its text: 32 bytes in base64 (standard or URL-safe), on the
    /// first line that is not a `#` comment. `place` names where the text came from.
    pub fn parse(text: &str, place: &str) -> Result<Kek, KekError> {
        let malformed = |reason: String| KekError::Malformed {
            place: place.to_owned(),
            reason,
        };
        let line = text
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty() && !line.starts_with('#'))
            .ok_or_else(|| malformed("it is empty".to_owned()))?;
        let bytes = B64
            .decode(
                line.trim_end_matches('=')
                    .replace('+', "-")
                    .replace('/', "_"),
            )
            .map_err(|e| malformed(format!("not base64: {e}")))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| malformed(format!("{} bytes, not 32", b.len())))?;
        Ok(Kek::from_bytes(bytes))
    }

    /// Reads the key file at `path`.
    pub fn load(path: &Path) -> Result<Kek, KekError> {
        let text = std::fs::read_to_string(path).map_err(|e| KekError::Unreadable {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Kek::parse(&text, &path.display().to_string())
    }

    /// Writes this key to a new file at `path` (never over an existing one), readable
    /// by its owner only.
    pub fn write_new(&self, path: &Path) -> Result<(), KekError> {
        use std::io::Write as _;
        let unwritable = |e: std::io::Error| KekError::Unwritable {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(unwritable)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(unwritable)?;
        write!(
            file,
            "# cairn personal-data key {}: it unwraps every person's data key.\n\
             # Keep it secret, and keep it apart from the database and its backups.\n{}\n",
            self.id,
            B64.encode(&self.key[..])
        )
        .and_then(|()| file.sync_all())
        .map_err(unwritable)
    }

    /// The key's id: a digest of it, safe to show and store.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn wrap(&self, subject: UserId, data_key: &Key) -> Result<String, SealError> {
        seal_bytes(&self.key, &wrap_aad(subject), &data_key[..])
    }

    fn unwrap_key(&self, subject: UserId, wrapped: &str) -> Option<Key> {
        let bytes = open_bytes(&self.key, &wrap_aad(subject), wrapped)?;
        let bytes: [u8; 32] = bytes.try_into().ok()?;
        Some(Key::from(bytes))
    }
}

fn wrap_aad(subject: UserId) -> Vec<u8> {
    format!("cairn-dek-v1\0{subject}").into_bytes()
}

/// Seals `plaintext`. The nonce is synthetic: a keyed digest of the place and the
/// plaintext, so the same value sealed at the same place under the same key seals the
/// same (a repeated request with an idempotency key matches its first copy, and no
/// digest of the plaintext itself is ever stored), and a nonce never repeats for two
/// different plaintexts.
fn seal_bytes(key: &Key, aad: &[u8], plaintext: &[u8]) -> Result<String, SealError> {
    let digest = synthetic_nonce(key, b"cairn-seal-nonce-v1\0", aad, plaintext)?;
    let mut nonce = [0_u8; NONCE_LEN];
    nonce.copy_from_slice(&digest[..NONCE_LEN]);
    let ciphertext = XChaCha20Poly1305::new(key)
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| SealError::Randomness("the cipher refused the input".to_owned()))?;
    let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    Ok(B64.encode(out))
}

/// A keyed digest of `label`, the associated data and the plaintext: the nonce of a
/// seal is its first bytes.
fn synthetic_nonce(
    key: &Key,
    label: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<[u8; 32], SealError> {
    use hmac::Mac as _;
    let mut mac = <hmac::Hmac<Sha256> as hmac::Mac>::new_from_slice(&key[..])
        .map_err(|e| SealError::Randomness(e.to_string()))?;
    mac.update(label);
    mac.update(&(aad.len() as u64).to_be_bytes());
    mac.update(aad);
    mac.update(plaintext);
    Ok(mac.finalize().into_bytes().into())
}

/// Seals `plaintext` with AES-256-GCM, for the compact envelope: the nonce, then the
/// ciphertext and tag, base64url. The nonce is synthetic, as in [`seal_bytes`]: 96
/// bits of a keyed digest, under a key that is one person's, which seals a handful of
/// fields in its life, so two different plaintexts never meet under one nonce.
fn seal_compact(key: &DataKey, aad: &[u8], plaintext: &[u8]) -> Result<String, SealError> {
    let digest = synthetic_nonce(&key.key, b"cairn-seal-nonce-v2\0", aad, plaintext)?;
    let mut nonce = [0_u8; GCM_NONCE_LEN];
    nonce.copy_from_slice(&digest[..GCM_NONCE_LEN]);
    let mut out = Vec::with_capacity(GCM_NONCE_LEN + plaintext.len() + 16);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = key
        .cipher
        .encrypt_in_place_detached(&aes_gcm::Nonce::from(nonce), aad, &mut out[GCM_NONCE_LEN..])
        .map_err(|_| SealError::Randomness("the cipher refused the input".to_owned()))?;
    out.extend_from_slice(&tag);
    Ok(B64.encode(out))
}

/// The sealed envelope of one personal field's `value`, in the compact format.
fn seal_field(
    key: &DataKey,
    place: SealPlace<'_>,
    field: &PersonalField,
    value: &Value,
) -> Result<Value, SealError> {
    let plaintext = serde_json::to_vec(value)
        .map_err(|e| SealError::Randomness(format!("cannot encode the field: {e}")))?;
    let aad = place.aad(Format::Compact, &field.pointer, field.subject);
    let sealed = seal_compact(key, &aad, &plaintext)?;
    let envelope = SealedField::compact_envelope(field.subject, &sealed, &field.pointer);
    let mut object = serde_json::Map::new();
    object.insert(SEALED_KEY.to_owned(), Value::String(envelope));
    Ok(Value::Object(object))
}

fn open_bytes(key: &Key, aad: &[u8], data: &str) -> Option<Vec<u8>> {
    let mut buffer = Vec::new();
    open_xchacha(key, aad, data, &mut buffer).then_some(buffer)
}

/// Opens XChaCha20-Poly1305 `data` into `buffer` (cleared first, and reused across
/// fields so that opening a page of events allocates once): whether it opened.
fn open_xchacha(key: &Key, aad: &[u8], data: &str, buffer: &mut Vec<u8>) -> bool {
    let Some(nonce) = split_nonce::<NONCE_LEN>(data, buffer) else {
        return false;
    };
    XChaCha20Poly1305::new(key)
        .decrypt_in_place(&XNonce::from(nonce), aad, buffer)
        .is_ok()
}

/// Decodes base64url `data` into `buffer` (cleared first) and takes its first `N`
/// bytes off, the nonce: `None` when it is not base64url or too short.
fn split_nonce<const N: usize>(data: &str, buffer: &mut Vec<u8>) -> Option<[u8; N]> {
    buffer.clear();
    if B64.decode_vec(data, buffer).is_err() || buffer.len() < N {
        return None;
    }
    let mut nonce = [0_u8; N];
    nonce.copy_from_slice(&buffer[..N]);
    buffer.drain(..N);
    Some(nonce)
}

/// Opens a sealed field's `data` of `format` into `buffer`, as [`open_xchacha`] does.
fn open_into(key: &DataKey, format: Format, aad: &[u8], data: &str, buffer: &mut Vec<u8>) -> bool {
    if format == Format::Object {
        return open_xchacha(&key.key, aad, data, buffer);
    }
    let Some(nonce) = split_nonce::<GCM_NONCE_LEN>(data, buffer) else {
        return false;
    };
    key.cipher
        .decrypt_in_place(&aes_gcm::Nonce::from(nonce), aad, buffer)
        .is_ok()
}

/// The parts of a sealed field's envelope, borrowed from it: whose key seals it, the
/// field it was sealed at, and the sealed bytes.
#[derive(Debug, PartialEq)]
struct Envelope<'a> {
    format: Format,
    subject: UserId,
    field: &'a str,
    data: &'a str,
}

fn envelope_parts(envelope: &Value) -> Result<Envelope<'_>, String> {
    let malformed = |what: String| format!("its envelope is malformed: {what}");
    if let Value::String(text) = envelope {
        let (subject, data, field) = SealedField::compact_parts(text).map_err(malformed)?;
        let subject = subject
            .parse::<UserId>()
            .map_err(|e| malformed(format!("the person: {e}")))?;
        return Ok(Envelope {
            format: Format::Compact,
            subject,
            field,
            data,
        });
    }
    let object = envelope
        .as_object()
        .ok_or_else(|| malformed("it is neither a string nor an object".to_owned()))?;
    if let Some(extra) = object
        .keys()
        .find(|key| !matches!(key.as_str(), "subject" | "field" | "data"))
    {
        return Err(malformed(format!("unknown field `{extra}`")));
    }
    let text = |name: &str| {
        object
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| malformed(format!("`{name}` is missing or not a string")))
    };
    let subject = text("subject")?
        .parse::<UserId>()
        .map_err(|e| malformed(format!("`subject`: {e}")))?;
    Ok(Envelope {
        format: Format::Object,
        subject,
        field: text("field")?,
        data: text("data")?,
    })
}

/// What a seal is bound to besides the person and the field: the event's type and
/// stream.
#[derive(Debug, Clone, Copy)]
pub struct SealPlace<'a> {
    pub event_type: &'a str,
    pub stream_id: StreamId,
}

impl SealPlace<'_> {
    fn aad(&self, format: Format, field: &str, subject: UserId) -> Vec<u8> {
        let mut aad = Vec::new();
        self.aad_into(&mut aad, format, field, subject);
        aad
    }

    /// The associated data of a seal at this place, written into `aad` (cleared
    /// first): the format's label (`cairn-seal-v1`, `cairn-seal-v2`), the event type,
    /// the stream, the field and the person, each followed by a NUL but the last.
    fn aad_into(&self, aad: &mut Vec<u8>, format: Format, field: &str, subject: UserId) {
        let mut uuid = uuid::Uuid::encode_buffer();
        aad.clear();
        aad.extend_from_slice(format.aad_label());
        aad.extend_from_slice(self.event_type.as_bytes());
        aad.push(0);
        aad.extend_from_slice(
            self.stream_id
                .as_uuid()
                .hyphenated()
                .encode_lower(&mut uuid)
                .as_bytes(),
        );
        aad.push(0);
        aad.extend_from_slice(field.as_bytes());
        aad.push(0);
        aad.extend_from_slice(
            subject
                .as_uuid()
                .hyphenated()
                .encode_lower(&mut uuid)
                .as_bytes(),
        );
    }
}

/// A personal field of one event: where it is (a JSON pointer) and whose it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonalField {
    pub pointer: String,
    pub subject: UserId,
}

/// An event's payload with its personal fields sealed ahead of its transaction
/// ([`Keyring::seal_ahead`]), and the keys they were sealed with.
#[derive(Clone)]
pub struct SealedAhead {
    data: Value,
    keys: Vec<(UserId, SharedKey)>,
}

impl SealedAhead {
    /// Whether these are the fields and keys it was sealed for and with.
    fn sealed_with(&self, keys: &[(&PersonalField, SharedKey)]) -> bool {
        keys.len() == self.keys.len()
            && keys
                .iter()
                .zip(&self.keys)
                .all(|((field, key), (subject, ahead))| {
                    field.subject == *subject && Arc::ptr_eq(key, ahead)
                })
    }
}

impl std::fmt::Debug for SealedAhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedAhead")
            .field(
                "subjects",
                &self.keys.iter().map(|(s, _)| s).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Why personal data was not sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "person {subject} was erased: no personal data about them can be recorded again (field {field})"
    )]
    Erased { subject: UserId, field: String },
    #[error(
        "person {subject} is restricted until their erasure: no personal data about them can be recorded (field {field})"
    )]
    Restricted { subject: UserId, field: String },
    #[error(
        "no personal-data key was given to this process, so it cannot seal field {field}; start it with --pii-key"
    )]
    NoKey { field: String },
    #[error(
        "the personal-data key {kek_id} this process was given is no longer the database's current key (it was rotated); restart with the current key"
    )]
    Rotated { kek_id: String },
    #[error(
        "field {field} is already sealed: personal data is given in the clear and sealed by the log"
    )]
    AlreadySealed { field: String },
    #[error("the data key of person {subject} cannot be unwrapped by key {kek_id}")]
    Unwrap { subject: UserId, kek_id: String },
    #[error("cannot seal: {0}")]
    Randomness(String),
    #[error(transparent)]
    Database(#[from] DbError),
}

/// A sealed field that could not be opened. The field is read as
/// `{"withheld": "unreadable"}` and the fault says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sealed field {pointer} of person {subject} cannot be opened: {reason}")]
pub struct SealFault {
    pub pointer: String,
    pub subject: UserId,
    pub reason: String,
}

/// What is known of one person's data key.
#[derive(Clone)]
pub(crate) enum KeyState {
    Active(SharedKey),
    Erased,
    /// Restricted until their erasure: the key is kept, and neither opens nor seals.
    Restricted,
    /// No key was ever made for them (their data predates sealing, or there is none).
    Absent,
    /// The key is there but this process's key-encryption key does not unwrap it.
    Unreadable(String),
}

/// Never shows a key.
impl std::fmt::Debug for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyState::Active(_) => f.write_str("Active(..)"),
            KeyState::Erased => f.write_str("Erased"),
            KeyState::Restricted => f.write_str("Restricted"),
            KeyState::Absent => f.write_str("Absent"),
            KeyState::Unreadable(kek_id) => write!(f, "Unreadable({kek_id})"),
        }
    }
}

/// The data keys a batch of events needs, read once before opening them.
#[derive(Default, Clone)]
pub struct KeySet {
    keys: HashMap<UserId, KeyState>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("subjects", &self.keys.len())
            .finish()
    }
}

/// Where a person stands.
#[derive(Debug, Clone, PartialEq)]
pub enum SubjectState {
    /// Their data is sealed under a live key (since `since`).
    Active { since: DateTime<Utc> },
    /// Restricted until their erasure: the receipt the restriction returned.
    Restricted { receipt: Value },
    /// Erased: the receipt the erasure returned, and the restriction's receipt when
    /// they were restricted until it.
    Erased {
        receipt: Value,
        restriction: Option<Value>,
    },
    /// cairn has sealed nothing about them.
    Unknown,
}

/// What a restriction did.
#[derive(Debug, Clone, PartialEq)]
pub enum Restriction {
    /// The person is restricted from now; the receipt is stored with their key.
    Restricted { receipt: Value },
    /// The person was restricted before: the first restriction's receipt.
    Already { receipt: Value },
    /// The person was erased: there is nothing left to restrict.
    Erased { receipt: Value },
}

/// What an erasure did.
#[derive(Debug, Clone, PartialEq)]
pub enum Erasure {
    /// The key was destroyed now; the receipt is stored with it.
    Erased { receipt: Value },
    /// The person was erased before: the first erasure's receipt.
    Already { receipt: Value },
}

/// The personal-data keys of one database: the key-encryption key this process was
/// given, and the data keys it has read, once committed.
#[derive(Default)]
pub struct Keyring {
    kek: RwLock<Option<Arc<Kek>>>,
    cache: Mutex<HashMap<UserId, KeyState>>,
    /// The number of the last erasure (or restriction) this process has learnt of:
    /// every person erased or restricted by it or an earlier one is `Erased` or
    /// `Restricted` in the cache, or was read after it. A cached key is trusted for
    /// sealing only while the head's count of erasures is no greater.
    learnt_erasures: AtomicI64,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("kek", &self.kek_id())
            .finish_non_exhaustive()
    }
}

/// Why a key-encryption key was refused for a database.
#[derive(Debug, thiserror::Error)]
pub enum KekMismatch {
    #[error(
        "the personal-data key given (key id {given}) opens nothing in this database: its data keys are wrapped by key id {current}. Start with the key whose id is {current}"
    )]
    Other { given: String, current: String },
    #[error(
        "the personal-data key given (key id {given}) was retired by a rotation; the current key is {current}"
    )]
    Retired { given: String, current: String },
    #[error(transparent)]
    Database(#[from] DbError),
}

impl Keyring {
    fn kek_arc(&self) -> Option<Arc<Kek>> {
        self.kek
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The key-encryption key this process was given.
    pub fn kek(&self) -> Option<Kek> {
        self.kek_arc().map(|kek| kek.as_ref().clone())
    }

    /// The id of the key-encryption key this process was given.
    pub fn kek_id(&self) -> Option<String> {
        self.kek_arc().map(|kek| kek.id.clone())
    }

    fn cached(&self, subject: UserId) -> Option<KeyState> {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&subject)
            .cloned()
    }

    /// Keeps keys a committed transaction sealed with (never over an erasure or a
    /// restriction learnt), and learns the erasures and restrictions it committed.
    pub(crate) fn remember(&self, keys: &[(UserId, KeyState)]) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        for (subject, state) in keys {
            match state {
                KeyState::Active(key) => {
                    cache
                        .entry(*subject)
                        .or_insert_with(|| KeyState::Active(key.clone()));
                }
                KeyState::Restricted => {
                    if !matches!(cache.get(subject), Some(KeyState::Erased)) {
                        cache.insert(*subject, KeyState::Restricted);
                    }
                }
                KeyState::Erased => {
                    cache.insert(*subject, KeyState::Erased);
                }
                KeyState::Absent | KeyState::Unreadable(_) => {}
            }
        }
    }

    /// Whether this process holds any person's data key.
    fn holds_keys(&self) -> bool {
        !self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// How many erasures this process has learnt of (counted since the database's
    /// first): the number of the last one.
    pub fn erasures_learnt(&self) -> i64 {
        self.learnt_erasures.load(Ordering::Acquire)
    }

    /// Whether this process has learnt of every erasure up to the `erasures`th.
    fn has_learnt(&self, erasures: i64) -> bool {
        self.learnt_erasures.load(Ordering::Acquire) >= erasures
    }

    /// Learns of the erasures (and restrictions, which are counted with them)
    /// committed since the last one this process learnt of: their people's cached
    /// keys are dropped, and then their count is recorded.
    async fn learn_erasures(&self, pools: &crate::backend::Pools) -> Result<(), DbError> {
        let learnt = self.learnt_erasures.load(Ordering::Acquire);
        let mut reader = crate::db::Reader::new(pools.reader().await?);
        let mut conn = reader.conn();
        let count: i64 = conn
            .fetch_one("SELECT erasures FROM log_head WHERE id = 1", Vec::new())
            .await?
            .get("erasures")?;
        if count <= learnt {
            return Ok(());
        }
        // Read after the count: every erasure it counts has committed, and is found.
        let rows = conn
            .fetch_all(
                "SELECT subject_id, state FROM subject_keys WHERE erasure_seq > $1",
                args![learnt],
            )
            .await?;
        {
            // What is cached here wins over a read that saw them before it.
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            for row in rows {
                let state = match row.get::<String>("state")?.as_str() {
                    "erased" => KeyState::Erased,
                    _ => KeyState::Restricted,
                };
                cache.insert(row.get("subject_id")?, state);
            }
        }
        self.learnt_erasures.fetch_max(count, Ordering::AcqRel);
        Ok(())
    }

    /// Remembers that `subject` was erased (after the erasure committed).
    pub fn forget(&self, subject: UserId) {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(subject, KeyState::Erased);
    }

    /// The state of each of `subjects`' keys, as stored. A restricted person's key is
    /// unwrapped only for a disclosure (`disclose`), and then never kept.
    async fn read_rows(
        &self,
        conn: &mut Conn<'_>,
        subjects: &[UserId],
        disclose: bool,
    ) -> Result<HashMap<UserId, KeyState>, DbError> {
        let mut found = HashMap::with_capacity(subjects.len());
        for chunk in subjects.chunks(200) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT subject_id, state, kek_id, wrapped, restricted_at FROM subject_keys \
                 WHERE subject_id IN ({})",
                placeholders.join(", ")
            );
            let args = chunk.iter().map(|s| crate::IntoArg::into_arg(*s)).collect();
            for row in conn.fetch_all(crate::Sql::built(sql), args).await? {
                let subject: UserId = row.get("subject_id")?;
                let state: String = row.get("state")?;
                let kek_id: Option<String> = row.get("kek_id")?;
                let wrapped: Option<String> = row.get("wrapped")?;
                let restricted: Option<DateTime<Utc>> = row.get("restricted_at")?;
                let key = match (state.as_str(), kek_id, wrapped) {
                    ("erased", _, _) => KeyState::Erased,
                    _ if restricted.is_some() && !disclose => KeyState::Restricted,
                    (_, Some(kek_id), Some(wrapped)) => match self
                        .kek_arc()
                        .filter(|kek| kek.id == kek_id)
                        .and_then(|kek| kek.unwrap_key(subject, &wrapped))
                    {
                        Some(key) => KeyState::Active(Arc::new(DataKey::new(key))),
                        None => KeyState::Unreadable(kek_id),
                    },
                    _ => KeyState::Unreadable("(none)".to_owned()),
                };
                found.insert(subject, key);
            }
        }
        for subject in subjects {
            found.entry(*subject).or_insert(KeyState::Absent);
        }
        Ok(found)
    }

    /// The keys of `subjects`, read through the database's readers (committed keys
    /// only) where this process does not hold them yet; what was read is kept.
    pub async fn keys(&self, db: &Db, subjects: &[UserId]) -> Result<KeySet, DbError> {
        let (mut set, missing) = self.cached_keys(subjects);
        if !missing.is_empty() {
            let mut reader = db.reader().await?;
            let read = self.read_rows(&mut reader.conn(), &missing, false).await?;
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            for (subject, state) in read {
                // An erasure learnt meanwhile wins over what the read saw before it.
                if matches!(
                    state,
                    KeyState::Active(_) | KeyState::Erased | KeyState::Restricted
                ) {
                    cache.entry(subject).or_insert_with(|| state.clone());
                }
                set.keys.insert(subject, state);
            }
        }
        Ok(set)
    }

    /// `subject`'s key for a disclosure of what the log holds about them: unwrapped
    /// while they are restricted too (GDPR art. 18(2) lets restricted data be used for
    /// legal claims), read through the database's readers and never kept, so that
    /// every other read still withholds them. An erased person's key is gone.
    pub async fn disclosure_keys(&self, db: &Db, subject: UserId) -> Result<KeySet, DbError> {
        let mut reader = db.reader().await?;
        let keys = self.read_rows(&mut reader.conn(), &[subject], true).await?;
        Ok(KeySet { keys })
    }

    /// The keys of `subjects`, read inside a write transaction: what is read there is
    /// not kept, as the transaction may yet roll back.
    pub async fn keys_in(
        &self,
        conn: &mut Conn<'_>,
        subjects: &[UserId],
    ) -> Result<KeySet, DbError> {
        let (mut set, missing) = self.cached_keys(subjects);
        if !missing.is_empty() {
            set.keys
                .extend(self.read_rows(conn, &missing, false).await?);
        }
        Ok(set)
    }

    fn cached_keys(&self, subjects: &[UserId]) -> (KeySet, Vec<UserId>) {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let mut set = KeySet::default();
        let mut missing = Vec::new();
        for subject in subjects {
            match cache.get(subject) {
                Some(state) => {
                    set.keys.insert(*subject, state.clone());
                }
                None if !missing.contains(subject) => missing.push(*subject),
                None => {}
            }
        }
        (set, missing)
    }

    /// Seals `fields` of `data` in place, inside the write transaction that stores the
    /// event. A person with no data key gets one, in the same transaction. Refuses a
    /// person who was erased.
    ///
    /// `ahead`, the same fields sealed by [`Keyring::seal_ahead`] before the
    /// transaction, is taken as it is when every key it was sealed with is still the
    /// person's key to seal with; otherwise the fields are sealed here.
    pub async fn seal_in(
        &self,
        tx: &mut crate::Tx,
        place: SealPlace<'_>,
        data: &mut Value,
        fields: &[PersonalField],
        ahead: Option<&SealedAhead>,
    ) -> Result<(), SealError> {
        let mut keys = Vec::with_capacity(fields.len());
        for field in fields {
            let Some(value) = cairn_types::pointer::pointer(data, &field.pointer) else {
                continue;
            };
            if value.is_null() {
                continue;
            }
            if value.get(SEALED_KEY).is_some() {
                return Err(SealError::AlreadySealed {
                    field: field.pointer.clone(),
                });
            }
            keys.push((field, self.key_for_sealing(tx, field).await?));
        }
        if let Some(ahead) = ahead
            && ahead.sealed_with(&keys)
        {
            data.clone_from(&ahead.data);
            return Ok(());
        }
        for (field, key) in keys {
            if let Some(value) = cairn_types::pointer::pointer_mut(data, &field.pointer) {
                *value = seal_field(&key, place, field, value)?;
            }
        }
        Ok(())
    }

    /// Seals `fields` of a copy of `data` before any transaction, with the keys this
    /// process holds, so that the writer need not: `None` when it lacks one of them,
    /// or when there is nothing to seal. Whether those keys may still be sealed with
    /// is known only in the transaction that stores the event: [`Keyring::seal_in`]
    /// checks it, and seals anew when they may not.
    pub fn seal_ahead(
        &self,
        place: SealPlace<'_>,
        data: &Value,
        fields: &[PersonalField],
    ) -> Option<SealedAhead> {
        let mut sealed = data.clone();
        let mut keys: Vec<(UserId, SharedKey)> = Vec::with_capacity(fields.len());
        for field in fields {
            let value = cairn_types::pointer::pointer_mut(&mut sealed, &field.pointer)?;
            if value.is_null() {
                continue;
            }
            if value.get(SEALED_KEY).is_some() {
                return None;
            }
            let Some(KeyState::Active(key)) = self.cached(field.subject) else {
                return None;
            };
            *value = seal_field(&key, place, field, value).ok()?;
            keys.push((field.subject, key));
        }
        (!keys.is_empty()).then_some(SealedAhead { data: sealed, keys })
    }

    async fn key_for_sealing(
        &self,
        tx: &mut crate::Tx,
        field: &PersonalField,
    ) -> Result<SharedKey, SealError> {
        let subject = field.subject;
        let erased = || SealError::Erased {
            subject,
            field: field.pointer.clone(),
        };
        let restricted = || SealError::Restricted {
            subject,
            field: field.pointer.clone(),
        };
        let cached = self.cached(subject);
        match cached {
            Some(KeyState::Erased) => return Err(erased()),
            Some(KeyState::Restricted) => return Err(restricted()),
            _ => {}
        }
        // Made, read or checked in this transaction (or erased or restricted by it):
        // kept by the keyring once it commits, and meanwhile found again here by the
        // transaction's later seals.
        if let Some((_, state)) = tx.log.sealed_keys.iter().rev().find(|(s, _)| *s == subject) {
            return match state {
                KeyState::Active(key) => Ok(key.clone()),
                KeyState::Restricted => Err(restricted()),
                _ => Err(erased()),
            };
        }
        // A key cached as active may have been erased since, by another process or an
        // earlier unit of this batch. An erasure counts itself in the head, under the
        // head lock, where it appends its event and scrubs the projections: so it
        // either committed before this transaction took the lock, and the count read
        // with the lock says whether this process has learnt of it, or it scrubs after
        // this transaction commits. When the count says the cache may be stale, the
        // person's state is read in this transaction.
        let head = tx.lock_head().await?;
        if let Some(KeyState::Active(key)) = cached {
            if self.has_learnt(head.erasures) {
                tx.log
                    .sealed_keys
                    .push((subject, KeyState::Active(key.clone())));
                return Ok(key);
            }
            let row = tx
                .conn()
                .fetch_optional(
                    "SELECT state, restricted_at FROM subject_keys WHERE subject_id = $1",
                    args![subject],
                )
                .await?;
            if let Some(row) = row {
                if row.get::<String>("state")? == "erased" {
                    return Err(erased());
                }
                if row.get::<Option<DateTime<Utc>>>("restricted_at")?.is_some() {
                    return Err(restricted());
                }
            }
            tx.log
                .sealed_keys
                .push((subject, KeyState::Active(key.clone())));
            return Ok(key);
        }
        let read = self.read_rows(&mut tx.conn(), &[subject], false).await?;
        match read.get(&subject).cloned().unwrap_or(KeyState::Absent) {
            KeyState::Active(key) => {
                tx.log
                    .sealed_keys
                    .push((subject, KeyState::Active(key.clone())));
                Ok(key)
            }
            KeyState::Erased => Err(erased()),
            KeyState::Restricted => Err(restricted()),
            KeyState::Unreadable(kek_id) => Err(SealError::Unwrap { subject, kek_id }),
            KeyState::Absent => {
                let kek = self.kek_arc().ok_or_else(|| SealError::NoKey {
                    field: field.pointer.clone(),
                })?;
                let key = Arc::new(DataKey::new(make_key(tx, &kek, subject, None).await?));
                tx.log
                    .sealed_keys
                    .push((subject, KeyState::Active(key.clone())));
                Ok(key)
            }
        }
    }

    /// Opens the sealed `fields` of `data` in place with `keys`: each becomes its
    /// value, or `{"withheld": "erased"}` when its person was erased
    /// (`{"withheld": "restricted"}` while they are restricted). A field stored in the
    /// clear (written before sealing) is withheld too once its person is erased or
    /// restricted. A seal that does not open becomes `{"withheld": "unreadable"}`, and the
    /// fault is returned.
    pub fn open(
        keys: &KeySet,
        place: SealPlace<'_>,
        data: &mut Value,
        fields: &[PersonalField],
    ) -> Vec<SealFault> {
        let mut faults = Vec::new();
        // Reused for every field.
        let mut aad = Vec::new();
        let mut buffer = Vec::new();
        for field in fields {
            let Some(value) = cairn_types::pointer::pointer_mut(data, &field.pointer) else {
                continue;
            };
            let envelope = match value.get(SEALED_KEY) {
                Some(envelope) => envelope,
                None => {
                    match keys.keys.get(&field.subject) {
                        _ if value.is_null() => {}
                        Some(KeyState::Erased) => *value = Withheld::ERASED.to_value(),
                        Some(KeyState::Restricted) => *value = Withheld::RESTRICTED.to_value(),
                        _ => {}
                    }
                    continue;
                }
            };
            let opened = match envelope_parts(envelope) {
                Err(reason) => Err(reason),
                Ok(Envelope { subject, .. }) if subject != field.subject => Err(format!(
                    "it was sealed for person {subject}, not the person the event names here"
                )),
                Ok(Envelope {
                    format,
                    subject,
                    field: sealed_at,
                    data: sealed,
                }) => {
                    match keys.keys.get(&subject) {
                        Some(KeyState::Erased) => Ok(Withheld::ERASED.to_value()),
                        Some(KeyState::Restricted) => Ok(Withheld::RESTRICTED.to_value()),
                        Some(KeyState::Active(key)) => {
                            place.aad_into(&mut aad, format, sealed_at, subject);
                            if open_into(key, format, &aad, sealed, &mut buffer) {
                                serde_json::from_slice(&buffer)
                                    .map_err(|e| format!("what it holds is not JSON: {e}"))
                            } else {
                                Err("the seal does not match what was sealed (tampered with, or moved)"
                                .to_owned())
                            }
                        }
                        Some(KeyState::Unreadable(kek_id)) => Err(format!(
                            "its data key is wrapped by key id {kek_id}, which this process was not given"
                        )),
                        Some(KeyState::Absent) | None => {
                            Err("there is no data key for its person".to_owned())
                        }
                    }
                }
            };
            match opened {
                Ok(opened) => *value = opened,
                Err(reason) => {
                    *value = Withheld {
                        withheld: WithheldReason::Unreadable,
                    }
                    .to_value();
                    faults.push(SealFault {
                        pointer: field.pointer.clone(),
                        subject: field.subject,
                        reason,
                    });
                }
            }
        }
        faults
    }

    /// Destroys `subject`'s data key inside the caller's write transaction (the unit
    /// of work that records the erasure), storing `receipt`. A person erased before
    /// gets the first receipt back and nothing changes. Call [`Keyring::forget`] once
    /// the transaction has committed.
    pub async fn erase_in(
        &self,
        tx: &mut crate::Tx,
        subject: UserId,
        receipt: Value,
    ) -> Result<Erasure, DbError> {
        let head = tx.lock_head().await?;
        let mut conn = tx.conn();
        let existing = conn
            .fetch_optional(
                "SELECT state, erasure FROM subject_keys WHERE subject_id = $1",
                args![subject],
            )
            .await?;
        let now = Utc::now();
        // This erasure's number: processes that cache keys learn of it by it.
        let seq = head.erasures + 1;
        match existing {
            Some(row) if row.get::<String>("state")? == "erased" => {
                return Ok(Erasure::Already {
                    receipt: row.get_json_opt("erasure")?.unwrap_or(Value::Null),
                });
            }
            Some(_) => {
                conn.execute(
                    "UPDATE subject_keys SET state = 'erased', kek_id = NULL, wrapped = NULL, \
                     erased_at = $2, erasure = $3, erasure_seq = $4 WHERE subject_id = $1",
                    args![subject, now, receipt.clone(), seq],
                )
                .await?;
            }
            None => {
                conn.execute(
                    "INSERT INTO subject_keys (subject_id, state, created_at, erased_at, erasure, \
                     erasure_seq) VALUES ($1, 'erased', $2, $2, $3, $4)",
                    args![subject, now, receipt.clone(), seq],
                )
                .await?;
            }
        }
        // A seal later in this transaction (a later unit of the writer's batch) finds
        // it erased, though an earlier one found their key.
        count_in(tx, seq, subject, KeyState::Erased).await?;
        Ok(Erasure::Erased { receipt })
    }

    /// Restricts `subject` inside the caller's write transaction (the unit of work
    /// that records the restriction), storing `receipt`: their data stays sealed under
    /// their key and is read as `{"withheld": "restricted"}`, and nothing new about
    /// them is sealed, until their erasure. A person with no data key yet (their data
    /// predates sealing) gets one, so that the restriction has a row to live in.
    /// Restricting again returns the first receipt; an erased person's receipt says
    /// so.
    pub async fn restrict_in(
        &self,
        tx: &mut crate::Tx,
        subject: UserId,
        receipt: Value,
    ) -> Result<Restriction, SealError> {
        let head = tx.lock_head().await?;
        let existing = tx
            .conn()
            .fetch_optional(
                "SELECT state, erasure, restriction FROM subject_keys WHERE subject_id = $1",
                args![subject],
            )
            .await?;
        let now = Utc::now();
        let seq = head.erasures + 1;
        match existing {
            Some(row) if row.get::<String>("state")? == "erased" => {
                return Ok(Restriction::Erased {
                    receipt: row.get_json_opt("erasure")?.unwrap_or(Value::Null),
                });
            }
            Some(row) => {
                if let Some(first) = row.get_json_opt("restriction")? {
                    return Ok(Restriction::Already { receipt: first });
                }
                tx.conn()
                    .execute(
                        "UPDATE subject_keys SET restricted_at = $2, restriction = $3, \
                         erasure_seq = $4 WHERE subject_id = $1",
                        args![subject, now, receipt.clone(), seq],
                    )
                    .await?;
            }
            None => {
                let kek = self.kek_arc().ok_or_else(|| SealError::NoKey {
                    field: "(none: a restriction)".to_owned(),
                })?;
                make_key(tx, &kek, subject, Some((now, receipt.clone(), seq))).await?;
            }
        }
        count_in(tx, seq, subject, KeyState::Restricted).await?;
        Ok(Restriction::Restricted { receipt })
    }

    /// Where `subject` stands.
    pub async fn state(&self, db: &Db, subject: UserId) -> Result<SubjectState, DbError> {
        let mut reader = db.reader().await?;
        let row = reader
            .conn()
            .fetch_optional(
                "SELECT state, created_at, erasure, restriction FROM subject_keys \
                 WHERE subject_id = $1",
                args![subject],
            )
            .await?;
        let Some(row) = row else {
            return Ok(SubjectState::Unknown);
        };
        Ok(if row.get::<String>("state")? == "erased" {
            SubjectState::Erased {
                receipt: row.get_json_opt("erasure")?.unwrap_or(Value::Null),
                restriction: row.get_json_opt("restriction")?,
            }
        } else if let Some(receipt) = row.get_json_opt("restriction")? {
            SubjectState::Restricted { receipt }
        } else {
            SubjectState::Active {
                since: row.get("created_at")?,
            }
        })
    }

    /// The people erased whose copies outside the database are not yet removed.
    pub async fn unswept(&self, db: &Db) -> Result<Vec<UserId>, DbError> {
        let mut reader = db.reader().await?;
        let rows = reader
            .conn()
            .fetch_all(
                "SELECT subject_id FROM subject_keys WHERE state = 'erased' AND swept_at IS NULL",
                Vec::new(),
            )
            .await?;
        rows.iter().map(|row| row.get("subject_id")).collect()
    }

    /// Records that `subject`'s copies outside the database were removed.
    pub async fn mark_swept(&self, db: &Db, subject: UserId) -> Result<(), DbError> {
        let mut tx = db.begin().await?;
        tx.conn()
            .execute(
                "UPDATE subject_keys SET swept_at = $2 WHERE subject_id = $1",
                args![subject, Utc::now()],
            )
            .await?;
        tx.commit().await
    }
}

/// Counts the erasure or restriction numbered `seq` in the head, in `tx` and in the
/// head the writer holds for its next batch, and notes `subject`'s new `state` in the
/// transaction's keys: a later seal in it (a later unit of the batch) is refused
/// though an earlier one found their key, and the keyring learns it at commit.
async fn count_in(
    tx: &mut crate::Tx,
    seq: i64,
    subject: UserId,
    state: KeyState,
) -> Result<(), DbError> {
    tx.conn()
        .execute("UPDATE log_head SET erasures = $1 WHERE id = 1", args![seq])
        .await?;
    if let Some(head) = tx.log.head.as_mut() {
        head.erasures = seq;
    }
    tx.log.sealed_keys.push((subject, state));
    Ok(())
}

/// Makes `subject`'s data key inside `tx`, wrapped by `kek`, which must be the
/// database's current key-encryption key; `restricted` makes it restricted from the
/// start (when, the receipt, the restriction's number).
async fn make_key(
    tx: &mut crate::Tx,
    kek: &Kek,
    subject: UserId,
    restricted: Option<(DateTime<Utc>, Value, i64)>,
) -> Result<Key, SealError> {
    let mut bytes = [0_u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| SealError::Randomness(e.to_string()))?;
    let key = Key::from(bytes);
    let wrapped = kek.wrap(subject, &key)?;
    let (restricted_at, restriction, seq) = match restricted {
        Some((at, receipt, seq)) => (Some(at), Some(receipt), Some(seq)),
        None => (None, None, None),
    };
    let inserted = tx
        .conn()
        .execute(
            "INSERT INTO subject_keys (subject_id, state, kek_id, wrapped, created_at, \
             restricted_at, restriction, erasure_seq) \
             SELECT $1, 'active', $2, $3, $4, $5, $6, $7 \
             WHERE EXISTS (SELECT 1 FROM pii_keys WHERE kek_id = $2 AND state = 'current')",
            args![
                subject,
                kek.id.clone(),
                wrapped,
                Utc::now(),
                restricted_at,
                restriction,
                seq
            ],
        )
        .await?;
    if inserted == 0 {
        return Err(SealError::Rotated {
            kek_id: kek.id.clone(),
        });
    }
    Ok(key)
}

impl Db {
    /// The personal-data keys of this database.
    pub fn keyring(&self) -> &Arc<Keyring> {
        self.keyring_ref()
    }

    /// The id of this database's current key-encryption key, if it has one yet.
    pub async fn current_kek_id(&self) -> Result<Option<String>, DbError> {
        let mut reader = self.reader().await?;
        let row = reader
            .conn()
            .fetch_optional(
                "SELECT kek_id FROM pii_keys WHERE state = 'current'",
                Vec::new(),
            )
            .await?;
        row.map(|row| row.get("kek_id")).transpose()
    }

    /// Gives this process its key-encryption key. The first key given to a database
    /// becomes its current one; any other is refused, naming both ids.
    pub async fn install_kek(&self, kek: Kek) -> Result<(), KekMismatch> {
        let mut tx = self.begin().await?;
        let mut conn = tx.conn();
        conn.execute(
            "INSERT INTO pii_keys (kek_id, state, created_at) \
             SELECT $1, 'current', $2 WHERE NOT EXISTS (SELECT 1 FROM pii_keys)",
            args![kek.id.clone(), Utc::now()],
        )
        .await?;
        let rows = conn
            .fetch_all("SELECT kek_id, state FROM pii_keys", Vec::new())
            .await?;
        // Every erasure counted here has committed: a key read once the key-encryption
        // key is in place, which is after this, knows of it.
        let erasures: i64 = conn
            .fetch_one("SELECT erasures FROM log_head WHERE id = 1", Vec::new())
            .await?
            .get("erasures")?;
        tx.commit().await?;
        let mut current = None;
        let mut retired = false;
        for row in rows {
            let id: String = row.get("kek_id")?;
            let state: String = row.get("state")?;
            if state == "current" {
                current = Some(id);
            } else if id == kek.id {
                retired = true;
            }
        }
        let current = current.unwrap_or_default();
        if current != kek.id {
            return Err(match retired {
                true => KekMismatch::Retired {
                    given: kek.id,
                    current,
                },
                false => KekMismatch::Other {
                    given: kek.id,
                    current,
                },
            });
        }
        let keyring = self.keyring_ref();
        let mut slot = keyring.kek.write().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            // No key was unwrapped before this: the cache holds none read before the
            // count. (Given again, the watcher learns the count as usual.)
            keyring
                .learnt_erasures
                .fetch_max(erasures, Ordering::AcqRel);
        }
        *slot = Some(Arc::new(kek));
        drop(slot);
        self.watch_erasures();
        Ok(())
    }

    /// Learns of erasures other processes commit: on every new head (debounced), the
    /// people erased since the last erasure this process learnt of are forgotten by
    /// its keyring, so that it reads them as erased, and its cached keys are trusted
    /// for sealing again.
    fn watch_erasures(&self) {
        let mut heads = self.head_watch();
        let pools = self.pools_ref().clone();
        let after = Arc::downgrade(self.after_ref());
        let Some(mut stop) = after.upgrade().map(|a| a.head.stop.subscribe()) else {
            return;
        };
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = heads.changed() => if changed.is_err() { return },
                    _ = stop.changed() => return,
                }
                let Some(keyring) = after.upgrade().map(|after| after.keyring.clone()) else {
                    return;
                };
                if keyring.holds_keys()
                    && let Err(error) = keyring.learn_erasures(&pools).await
                {
                    tracing::warn!(%error, "cannot read the people erased lately");
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        });
    }

    /// Re-wraps every live data key under `new`, which becomes the current key; `old`
    /// (the current one) is retired. One transaction: all or nothing. Returns how many
    /// data keys were re-wrapped. Processes still running with `old` refuse to seal
    /// for new people until they restart with `new`.
    pub async fn rotate_kek(&self, old: &Kek, new: &Kek) -> Result<u64, RotateError> {
        let current = self.current_kek_id().await?;
        if current.as_deref() != Some(old.id()) {
            return Err(RotateError::NotCurrent {
                given: old.id.clone(),
                current: current.unwrap_or_else(|| "none".to_owned()),
            });
        }
        if old.id == new.id {
            return Err(RotateError::Same);
        }
        let mut tx = self.begin().await?;
        let mut conn = tx.conn();
        let rows = conn
            .fetch_all(
                "SELECT subject_id, kek_id, wrapped FROM subject_keys WHERE state = 'active'",
                Vec::new(),
            )
            .await?;
        let mut n = 0;
        for row in rows {
            let subject: UserId = row.get("subject_id")?;
            let kek_id: String = row.get("kek_id")?;
            let wrapped: String = row.get("wrapped")?;
            let key = (kek_id == old.id)
                .then(|| old.unwrap_key(subject, &wrapped))
                .flatten()
                .ok_or_else(|| RotateError::Unwrap {
                    subject,
                    kek_id: kek_id.clone(),
                })?;
            let rewrapped = new
                .wrap(subject, &key)
                .map_err(|e| RotateError::Seal(e.to_string()))?;
            conn.execute(
                "UPDATE subject_keys SET kek_id = $2, wrapped = $3 WHERE subject_id = $1",
                args![subject, new.id.clone(), rewrapped],
            )
            .await?;
            n += 1;
        }
        conn.execute(
            "UPDATE pii_keys SET state = 'retired' WHERE kek_id = $1",
            args![old.id.clone()],
        )
        .await?;
        conn.execute(
            "INSERT INTO pii_keys (kek_id, state, created_at) VALUES ($1, 'current', $2)",
            args![new.id.clone(), Utc::now()],
        )
        .await?;
        tx.commit().await?;
        Ok(n)
    }

    /// On SQLite, copies the write-ahead log into the database and empties it, so
    /// that no page image from before an erasure stays in it (deleted content is
    /// zeroed in the database itself). Best effort: a reader in the middle of a long
    /// read may keep it from finishing, and the next erasure tries again. Nothing on
    /// PostgreSQL, whose old row versions go with VACUUM.
    pub async fn compact_wal(&self) -> Result<(), DbError> {
        if self.backend() == crate::Backend::Sqlite {
            let mut session = self.writing_session().await?;
            session
                .conn()
                .execute_script("PRAGMA wal_checkpoint(TRUNCATE)")
                .await?;
        }
        Ok(())
    }

    /// On SQLite, once an erasure or a restriction has happened since the last time,
    /// empties and refills `tables` (those that hold people's data in the clear) and
    /// the data keys' table, in one transaction, then empties the write-ahead log.
    /// SQLite zeroes what it deletes, but a page that splits or merges keeps copies of
    /// the cells that moved out of it in its unused space, where an erased person's
    /// address or wrapped key could outlive the erasure; emptying a table frees, and
    /// zeroes, every page it had. Returns whether it rebuilt. Nothing on PostgreSQL,
    /// whose old row versions go with VACUUM.
    ///
    /// Erasures that come together share one rebuild; one that a process stopped
    /// before is covered by the next call (at start, or after the next erasure).
    pub async fn scrub_erased(&self, tables: &[&str]) -> Result<bool, DbError> {
        if self.backend() != crate::Backend::Sqlite {
            return Ok(false);
        }
        let mut tx = self.begin().await?;
        let mut conn = tx.conn();
        let head = conn
            .fetch_one(
                "SELECT erasures, scrubbed_erasures FROM log_head WHERE id = 1",
                Vec::new(),
            )
            .await?;
        let erasures: i64 = head.get("erasures")?;
        if head.get::<i64>("scrubbed_erasures")? >= erasures {
            tx.rollback().await?;
            return Ok(false);
        }
        for table in tables.iter().copied().chain(["subject_keys"]) {
            let columns = conn
                .fetch_all(
                    "SELECT name FROM pragma_table_info($1)",
                    args![table.to_owned()],
                )
                .await?
                .iter()
                .map(|row| {
                    row.get::<String>("name")
                        .map(|name| crate::db::quote_ident(&name))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if columns.is_empty() {
                return Err(DbError::decode(
                    "(scrub)",
                    format!("there is no table {table} to rebuild"),
                ));
            }
            let columns = columns.join(", ");
            let table = crate::db::quote_ident(table);
            // Row ids are kept, so the rows come back as they were.
            conn.execute_script(crate::value::Sql::built(format!(
                "CREATE TEMP TABLE cairn_scrub AS SELECT rowid AS cairn_rowid, {columns} FROM main.{table}; \
                 DELETE FROM main.{table}; \
                 INSERT INTO main.{table} (rowid, {columns}) \
                 SELECT cairn_rowid, {columns} FROM temp.cairn_scrub ORDER BY cairn_rowid; \
                 DROP TABLE temp.cairn_scrub;"
            )))
            .await?;
        }
        conn.execute(
            "UPDATE log_head SET scrubbed_erasures = $1 WHERE id = 1",
            args![erasures],
        )
        .await?;
        tx.commit().await?;
        self.compact_wal().await?;
        Ok(true)
    }

    /// How many people have a live data key.
    pub async fn sealed_subjects(&self) -> Result<i64, DbError> {
        let mut reader = self.reader().await?;
        let row = reader
            .conn()
            .fetch_one(
                "SELECT COUNT(*) AS n FROM subject_keys WHERE state = 'active'",
                Vec::new(),
            )
            .await?;
        row.get("n")
    }
}

/// Why a rotation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("the key given as the old one (key id {given}) is not the current key ({current})")]
    NotCurrent { given: String, current: String },
    #[error("the new key is the current key: give another")]
    Same,
    #[error(
        "the data key of person {subject} is wrapped by key id {kek_id}, which the old key is not: nothing was changed"
    )]
    Unwrap { subject: UserId, kek_id: String },
    #[error("cannot wrap: {0}")]
    Seal(String),
    #[error(transparent)]
    Database(#[from] DbError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place() -> (StreamId, &'static str) {
        (StreamId::new_v7(), "user.created")
    }

    #[test]
    fn a_key_reads_back_from_its_file_text_and_keeps_its_id() {
        let kek = Kek::generate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/pii.key");
        kek.write_new(&path).unwrap();
        let read = Kek::load(&path).unwrap();
        assert_eq!(read.id(), kek.id());
        assert_eq!(read.id().len(), 16);
        assert!(kek.write_new(&path).is_err(), "never overwrites a key");
    }

    #[test]
    fn text_that_is_no_key_is_refused_saying_why() {
        for (text, why) in [
            ("", "it is empty"),
            ("# only a comment\n", "it is empty"),
            ("not base64 at all!", "not base64"),
            ("AAAA", "3 bytes, not 32"),
        ] {
            let error = Kek::parse(text, "CAIRN_PII_KEY").unwrap_err().to_string();
            assert!(
                error.contains("CAIRN_PII_KEY") && error.contains(why),
                "{text:?}: {error}"
            );
        }
    }

    #[test]
    fn a_wrapped_key_opens_only_with_its_kek_and_for_its_subject() {
        let kek = Kek::generate().unwrap();
        let other = Kek::generate().unwrap();
        let subject = UserId::new_v7();
        let key = Key::from([7_u8; 32]);
        let wrapped = kek.wrap(subject, &key).unwrap();
        assert_eq!(kek.unwrap_key(subject, &wrapped), Some(key));
        assert_eq!(other.unwrap_key(subject, &wrapped), None);
        assert_eq!(kek.unwrap_key(UserId::new_v7(), &wrapped), None);
    }

    /// `value` sealed as earlier releases sealed it: an object, XChaCha20-Poly1305.
    fn sealed_as_before(
        key: &Key,
        place: SealPlace<'_>,
        field: &str,
        subject: UserId,
        value: &Value,
    ) -> Value {
        let data = seal_bytes(
            key,
            &place.aad(Format::Object, field, subject),
            &serde_json::to_vec(value).unwrap(),
        )
        .unwrap();
        serde_json::json!({ SEALED_KEY: { "subject": subject, "field": field, "data": data } })
    }

    /// `value` sealed as this release seals it: the compact envelope.
    fn sealed_now(
        key: &DataKey,
        place: SealPlace<'_>,
        field: &str,
        subject: UserId,
        value: &Value,
    ) -> Value {
        let field = PersonalField {
            pointer: field.to_owned(),
            subject,
        };
        seal_field(key, place, &field, value).unwrap()
    }

    #[test]
    fn an_envelope_that_is_not_one_says_what_is_wrong_with_it() {
        let subject = UserId::new_v7();
        let good = serde_json::json!({"subject": subject, "field": "/email", "data": "AAAA"});
        let parts = |format| Envelope {
            format,
            subject,
            field: "/email",
            data: "AAAA",
        };
        assert_eq!(
            envelope_parts(&good),
            Ok(parts(Format::Object)),
            "a well-formed envelope is read in place"
        );
        let compact = Value::from(format!("2.{subject}.AAAA./email"));
        assert_eq!(envelope_parts(&compact), Ok(parts(Format::Compact)));
        for (envelope, says) in [
            (serde_json::json!(7), "neither a string nor an object"),
            (serde_json::json!("AAAA"), "does not start with `2.`"),
            (serde_json::json!("2.nobody.AAAA./email"), "the person"),
            (Value::from(format!("2.{subject}.AAAA")), "names no field"),
            (
                serde_json::json!({"subject": subject, "field": "/email"}),
                "`data` is missing",
            ),
            (
                serde_json::json!({"subject": "nobody", "field": "/email", "data": "AAAA"}),
                "`subject`",
            ),
            (
                serde_json::json!({"subject": subject, "field": "/email", "data": "AAAA", "key": 1}),
                "unknown field `key`",
            ),
        ] {
            let error = envelope_parts(&envelope).expect_err("malformed");
            assert!(error.contains(says), "{envelope}: {error}");
        }
    }

    #[test]
    fn the_associated_data_is_what_every_seal_so_far_was_bound_to() {
        let stream = StreamId::new_v7();
        let subject = UserId::new_v7();
        let place = SealPlace {
            event_type: "user.invited",
            stream_id: stream,
        };
        for (format, label) in [
            (Format::Object, "cairn-seal-v1"),
            (Format::Compact, "cairn-seal-v2"),
        ] {
            let mut aad = b"left over from the last field".to_vec();
            place.aad_into(&mut aad, format, "/email", subject);
            assert_eq!(
                aad,
                format!("{label}\0user.invited\0{stream}\0/email\0{subject}").into_bytes()
            );
        }
    }

    #[test]
    fn the_same_value_seals_the_same_at_the_same_place_and_differently_elsewhere() {
        let key = Key::from([3_u8; 32]);
        let a = seal_bytes(&key, b"place one", b"\"ada@example.com\"").unwrap();
        assert_eq!(
            a,
            seal_bytes(&key, b"place one", b"\"ada@example.com\"").unwrap()
        );
        assert_ne!(
            a,
            seal_bytes(&key, b"place two", b"\"ada@example.com\"").unwrap()
        );
        assert_ne!(
            a,
            seal_bytes(&key, b"place one", b"\"bob@example.com\"").unwrap()
        );
        assert_ne!(
            a,
            seal_bytes(&Key::from([4_u8; 32]), b"place one", b"\"ada@example.com\"").unwrap()
        );
        let key = DataKey::new(Key::from([3_u8; 32]));
        let seal = |key: &DataKey, aad: &[u8], text: &[u8]| seal_compact(key, aad, text).unwrap();
        let a = seal(&key, b"place one", b"\"ada@example.com\"");
        assert_eq!(a, seal(&key, b"place one", b"\"ada@example.com\""));
        assert_ne!(a, seal(&key, b"place two", b"\"ada@example.com\""));
        assert_ne!(a, seal(&key, b"place one", b"\"bob@example.com\""));
        let other = DataKey::new(Key::from([4_u8; 32]));
        assert_ne!(a, seal(&other, b"place one", b"\"ada@example.com\""));
    }

    #[test]
    fn a_seal_opens_only_where_it_was_sealed() {
        let (stream_id, event_type) = place();
        let place = SealPlace {
            event_type,
            stream_id,
        };
        let subject = UserId::new_v7();
        let key = DataKey::new(Key::from([1_u8; 32]));
        let email = serde_json::json!("ada@example.com");
        let formats = [
            sealed_as_before(&key.key, place, "/email", subject, &email),
            sealed_now(&key, place, "/email", subject, &email),
        ];
        let mut keys = KeySet::default();
        keys.keys.insert(subject, KeyState::Active(Arc::new(key)));
        let fields = [PersonalField {
            pointer: "/email".to_owned(),
            subject,
        }];
        for sealed in formats {
            // Where it was sealed: the value.
            let mut data = serde_json::json!({ "email": sealed.clone() });
            assert!(Keyring::open(&keys, place, &mut data, &fields).is_empty());
            assert_eq!(data["email"], "ada@example.com", "{sealed}");

            // Another stream, or another event type: unreadable, and the fault says so.
            for other in [
                SealPlace {
                    event_type,
                    stream_id: StreamId::new_v7(),
                },
                SealPlace {
                    event_type: "user.invited",
                    stream_id,
                },
            ] {
                let mut data = serde_json::json!({ "email": sealed.clone() });
                let faults = Keyring::open(&keys, other, &mut data, &fields);
                assert_eq!(faults.len(), 1, "{faults:?}");
                assert!(faults[0].reason.contains("does not match"), "{faults:?}");
                assert_eq!(data["email"], serde_json::json!({"withheld": "unreadable"}));
            }

            // One flipped character of the ciphertext (in the middle: every bit of it
            // is the ciphertext's, none base64's padding): unreadable.
            let flip = |text: &str| {
                let middle = text.len() / 2;
                let flipped = if &text[middle..=middle] == "A" {
                    "B"
                } else {
                    "A"
                };
                format!("{}{flipped}{}", &text[..middle], &text[middle + 1..])
            };
            let mut tampered = sealed.clone();
            match &sealed[SEALED_KEY] {
                Value::String(text) => {
                    let (person, data, field) = SealedField::compact_parts(text).unwrap();
                    tampered[SEALED_KEY] = Value::from(SealedField::compact_envelope(
                        person.parse().unwrap(),
                        &flip(data),
                        field,
                    ));
                }
                _ => {
                    let text = sealed[SEALED_KEY]["data"].as_str().unwrap();
                    tampered[SEALED_KEY]["data"] = Value::from(flip(text));
                }
            }
            assert_ne!(tampered, sealed);
            let mut data = serde_json::json!({ "email": tampered });
            let faults = Keyring::open(&keys, place, &mut data, &fields);
            assert_eq!(faults.len(), 1, "{faults:?}");
            assert!(faults[0].reason.contains("does not match"), "{faults:?}");

            // Where the event names another person: unreadable, saying whose it is.
            let someone_else = [PersonalField {
                pointer: "/email".to_owned(),
                subject: UserId::new_v7(),
            }];
            let mut data = serde_json::json!({ "email": sealed.clone() });
            let faults = Keyring::open(&keys, place, &mut data, &someone_else);
            assert_eq!(faults.len(), 1, "{faults:?}");
            assert!(faults[0].reason.contains("sealed for person"), "{faults:?}");
            assert_eq!(data["email"], serde_json::json!({"withheld": "unreadable"}));
        }
    }

    /// What the release before the compact envelope wrote, in `cairn demo`: its
    /// key-encryption key, a person's wrapped data key and one of their events. Those
    /// bytes must open with every later build.
    #[test]
    fn fields_an_earlier_release_sealed_still_open_with_its_wrapped_key() {
        let kek = Kek::parse("1USkiPyegI9YzOqYHmXjshdojOZr9jzOEkMcRRkG8iI", "the test").unwrap();
        assert_eq!(kek.id(), "164d6d840b8c6431");
        let grace: UserId = "01a25350-55b2-7220-9e3c-4ed14cf55f3e".parse().unwrap();
        let wrapped = "kdLiQjOvEwgNlZe2wP_in1BXBZd9ZbIzJi3QnVpWQltkcptMDb3R9y3rAsEaceqwAnWr18snaoB4JG55tc76gDnzGRzGFyqu";
        let key = kek
            .unwrap_key(grace, wrapped)
            .expect("the wrapped key opens");
        let mut keys = KeySet::default();
        keys.keys
            .insert(grace, KeyState::Active(Arc::new(DataKey::new(key))));
        let mut data: Value = serde_json::from_str(
            r#"{"email":{"$sealed":{"data":"rNClnT_lUjROZ7hIqLOV7t3BwltAnL_1YBetbGeNcc_txF2_qm2lPlq4c2LihxnsKcAzcp0xh8jyI3c","field":"/email","subject":"01a25350-55b2-7220-9e3c-4ed14cf55f3e"}},"invitation_id":"01a25350-55b2-7220-9e3c-4ed2575e264f","invited_by":"service:cairn-demo","name":{"$sealed":{"data":"KT-xXl_SCM8TCStjbcuyf30lCdcvZ-n9moaDcDox_m60JtegBLZzHhmJbfqtz02AkppcgPuc","field":"/name","subject":"01a25350-55b2-7220-9e3c-4ed14cf55f3e"}},"org_id":"01a25350-55b3-77a6-9934-1fc1f2420fa2","roles":["clinician"]}"#,
        )
        .unwrap();
        let place = SealPlace {
            event_type: "user.invited",
            stream_id: StreamId::from_uuid(grace.as_uuid()),
        };
        let fields = ["/email", "/name"].map(|pointer| PersonalField {
            pointer: pointer.to_owned(),
            subject: grace,
        });
        let faults = Keyring::open(&keys, place, &mut data, &fields);
        assert!(faults.is_empty(), "{faults:?}");
        assert_eq!(data["email"], "grace@example.com");
        assert_eq!(data["name"], "Grace Hopper");
    }

    #[test]
    fn an_erased_persons_fields_read_as_erased_sealed_or_not() {
        let (stream_id, event_type) = place();
        let place = SealPlace {
            event_type,
            stream_id,
        };
        let subject = UserId::new_v7();
        let key = Key::from([2_u8; 32]);
        let mut keys = KeySet::default();
        keys.keys.insert(subject, KeyState::Erased);
        let fields = [
            PersonalField {
                pointer: "/email".to_owned(),
                subject,
            },
            PersonalField {
                pointer: "/phone".to_owned(),
                subject,
            },
            PersonalField {
                pointer: "/name".to_owned(),
                subject,
            },
        ];
        let mut data = serde_json::json!({
            "email": sealed_as_before(&key, place, "/email", subject, &serde_json::json!("ada@example.com")),
            "phone": sealed_now(&DataKey::new(key), place, "/phone", subject, &serde_json::json!("+44 20 7946 0000")),
            "name": "Ada, written before sealing",
            "org_id": "kept",
        });
        assert!(Keyring::open(&keys, place, &mut data, &fields).is_empty());
        assert_eq!(
            data,
            serde_json::json!({
                "email": {"withheld": "erased"},
                "phone": {"withheld": "erased"},
                "name": {"withheld": "erased"},
                "org_id": "kept",
            })
        );
    }
}
