//! Invitation tokens.
//!
//! A token is derived, not stored: HMAC-SHA-256 over the invitation id and the send
//! number, with a key kept in the database. So the step that sends an invitation makes
//! the same token on every attempt (a retry after a crash mails the same link), the log
//! and the projections keep only the token's SHA-256, and a resend (a new send number)
//! makes a new token that replaces the old one.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use cairn_log::{Db, args};
use cairn_types::InvitationId;

const KEY_NAME: &str = "invitation_token_key";

/// The key tokens are derived with.
#[derive(Clone)]
pub struct TokenKey(Vec<u8>);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(…)")
    }
}

fn hex(bytes: &[u8]) -> String {
    cairn_log::hex(bytes)
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Why the token key is not available.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("database error while loading the invitation token key")]
    Database(#[from] cairn_log::DbError),
    #[error("cannot draw random bytes for the invitation token key: {0}")]
    Random(String),
    #[error("a stored secret is not valid hex")]
    Corrupt,
}

/// Loads a random 32-byte secret kept in the database under `name`, creating it on
/// first use. Every process sharing the database gets the same secret.
pub async fn load_or_create_secret(db: &Db, name: &str) -> Result<Vec<u8>, KeyError> {
    let mut fresh = [0_u8; 32];
    getrandom::fill(&mut fresh).map_err(|e| KeyError::Random(e.to_string()))?;
    let mut tx = db.begin().await?;
    tx.conn()
        .execute(
            "INSERT INTO domain_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            args![name, hex(&fresh)],
        )
        .await?;
    let row = tx
        .conn()
        .fetch_one(
            "SELECT value FROM domain_secrets WHERE name = $1",
            args![name],
        )
        .await?;
    tx.commit().await?;
    let value: String = row.get("value")?;
    unhex(&value).ok_or(KeyError::Corrupt)
}

impl TokenKey {
    /// Loads the key, creating it on first use. Every process sharing the database
    /// ends up with the same key.
    pub async fn load_or_create(db: &Db) -> Result<TokenKey, KeyError> {
        load_or_create_secret(db, KEY_NAME).await.map(TokenKey)
    }

    /// The token for one send of one invitation.
    pub fn token(&self, invitation_id: InvitationId, send_number: u32) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(format!("invitation:{invitation_id}:{send_number}").as_bytes());
        hex(&mac.finalize().into_bytes())
    }
}

/// What is stored instead of a token.
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.trim().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stable_per_send_and_differ_between_sends() {
        let key = TokenKey(vec![7; 32]);
        let id = InvitationId::new_v7();
        assert_eq!(key.token(id, 1), key.token(id, 1));
        assert_ne!(key.token(id, 1), key.token(id, 2));
        assert_ne!(key.token(id, 1), TokenKey(vec![8; 32]).token(id, 1));
        assert_eq!(key.token(id, 1).len(), 64);
        assert_eq!(token_hash(&key.token(id, 1)).len(), 64);
        assert_eq!(unhex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(unhex("0"), None);
    }
}
