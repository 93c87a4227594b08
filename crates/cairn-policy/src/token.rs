//! Bearer tokens: JWTs that name a principal.
//!
//! Development uses HS256 with a shared secret (`cairn token` mints them). Production
//! verifies RS256 or ES256 signatures with a configured public key or JWKS file; a
//! server so configured refuses HS256 tokens.

use std::collections::BTreeSet;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use cairn_types::{OrgId, UserId};

use crate::principal::{Principal, Role, Scope};

/// The issuer every cairn token names.
pub const ISSUER: &str = "cairn";

/// The kind of principal a token names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    User,
    Service,
    PlatformAdmin,
}

/// The claims of a cairn token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    pub iss: String,
    /// `user:<uuid>`, `service:<name>` or `admin:<name>`.
    pub sub: String,
    pub iat: i64,
    pub exp: i64,
    pub kind: TokenKind,
    /// A user's organization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<OrgId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<Role>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<Scope>,
}

impl Claims {
    /// Claims for a principal, valid for `ttl` from now.
    pub fn for_principal(principal: &Principal, ttl: Duration) -> Result<Claims, TokenError> {
        Self::build(principal, ttl, true)
    }

    fn build(
        principal: &Principal,
        ttl: Duration,
        check_reserved: bool,
    ) -> Result<Claims, TokenError> {
        let now = chrono::Utc::now().timestamp();
        let exp = now + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let base = |sub: String, kind: TokenKind| Claims {
            iss: ISSUER.to_owned(),
            sub,
            iat: now,
            exp,
            kind,
            org: None,
            roles: Vec::new(),
            scopes: Vec::new(),
        };
        match principal {
            Principal::User {
                user_id,
                org_id,
                roles,
            } => Ok(Claims {
                org: Some(*org_id),
                roles: roles.iter().copied().collect(),
                ..base(format!("user:{user_id}"), TokenKind::User)
            }),
            Principal::Service { name, scopes } => {
                if let Some(reason) =
                    crate::principal::reserved_service_name(name).filter(|_| check_reserved)
                {
                    return Err(TokenError::Invalid {
                        reason: format!("service account {name:?}: {reason}"),
                    });
                }
                Ok(Claims {
                    scopes: scopes.iter().copied().collect(),
                    ..base(format!("service:{name}"), TokenKind::Service)
                })
            }
            Principal::PlatformAdmin { name } => {
                Ok(base(format!("admin:{name}"), TokenKind::PlatformAdmin))
            }
            Principal::Anonymous | Principal::Operator { .. } => Err(TokenError::Invalid {
                reason: format!("no token names {}", principal.describe()),
            }),
        }
    }

    /// The principal the claims name.
    pub fn principal(&self) -> Result<Principal, TokenError> {
        self.resolve(true)
    }

    fn resolve(&self, check_reserved: bool) -> Result<Principal, TokenError> {
        let invalid = |reason: String| TokenError::Invalid { reason };
        let (prefix, rest) = self
            .sub
            .split_once(':')
            .ok_or_else(|| invalid(format!("sub {:?} has no kind prefix", self.sub)))?;
        match (self.kind, prefix) {
            (TokenKind::User, "user") => {
                let user_id = UserId::parse(rest).map_err(|e| invalid(format!("sub: {e}")))?;
                let org_id = self
                    .org
                    .ok_or_else(|| invalid("a user token needs an org claim".to_owned()))?;
                Ok(Principal::User {
                    user_id,
                    org_id,
                    roles: self.roles.iter().copied().collect::<BTreeSet<_>>(),
                })
            }
            (TokenKind::Service, "service") if !rest.is_empty() => {
                if let Some(reason) =
                    crate::principal::reserved_service_name(rest).filter(|_| check_reserved)
                {
                    return Err(invalid(format!("service account {rest:?}: {reason}")));
                }
                Ok(Principal::Service {
                    name: rest.to_owned(),
                    scopes: self.scopes.iter().copied().collect(),
                })
            }
            (TokenKind::PlatformAdmin, "admin") if !rest.is_empty() => {
                Ok(Principal::PlatformAdmin {
                    name: rest.to_owned(),
                })
            }
            (kind, prefix) => Err(invalid(format!(
                "a {kind:?} token cannot have a sub of kind {prefix:?}"
            ))),
        }
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the bearer token has expired")]
    Expired,
    #[error("the bearer token is not valid: {reason}")]
    Invalid { reason: String },
    #[error("the key configuration is not valid: {reason}")]
    Config { reason: String },
}

/// Where verification keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// HS256 with a shared secret: for development.
    Secret(Vec<u8>),
    /// RS256 or ES256 with one public key in PEM.
    PublicKeyPem(String),
    /// RS256 or ES256 with the keys of a JWKS document, chosen by the token's `kid`.
    Jwks(String),
}

/// Verifies bearer tokens and turns them into principals.
#[derive(Clone)]
pub struct Authenticator {
    keys: Keys,
    /// A key only this process knows, for its requests to itself (the integration
    /// probe's); tokens signed with it name it by `kid`.
    process: Option<Vec<u8>>,
}

/// The `kid` of tokens signed with the process's own key.
const PROCESS_KID: &str = "cairn-process";

#[derive(Clone)]
enum Keys {
    Secret(DecodingKey),
    Pem {
        key: DecodingKey,
        algorithm: Algorithm,
    },
    Jwks(JwkSet),
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.keys {
            Keys::Secret(_) => "HS256 secret",
            Keys::Pem { .. } => "public key",
            Keys::Jwks(_) => "JWKS",
        };
        f.debug_struct("Authenticator")
            .field("keys", &kind)
            .finish()
    }
}

fn config_error(reason: impl std::fmt::Display) -> TokenError {
    TokenError::Config {
        reason: reason.to_string(),
    }
}

impl Authenticator {
    /// An authenticator for a key source.
    pub fn new(source: &KeySource) -> Result<Authenticator, TokenError> {
        let keys = match source {
            KeySource::Secret(secret) => {
                if secret.len() < 32 {
                    return Err(config_error("an HS256 secret needs at least 32 bytes"));
                }
                Keys::Secret(DecodingKey::from_secret(secret))
            }
            KeySource::PublicKeyPem(pem) => {
                if let Ok(key) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
                    Keys::Pem {
                        key,
                        algorithm: Algorithm::RS256,
                    }
                } else {
                    let key = DecodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| {
                        config_error(format!(
                            "the PEM is neither an RSA nor an EC public key: {e}"
                        ))
                    })?;
                    Keys::Pem {
                        key,
                        algorithm: Algorithm::ES256,
                    }
                }
            }
            KeySource::Jwks(json) => {
                let set: JwkSet = serde_json::from_str(json)
                    .map_err(|e| config_error(format!("the JWKS document: {e}")))?;
                if set.keys.is_empty() {
                    return Err(config_error("the JWKS document has no keys"));
                }
                Keys::Jwks(set)
            }
        };
        Ok(Authenticator {
            keys,
            process: None,
        })
    }

    /// Verifies a bearer token and returns the principal it names.
    pub fn authenticate(&self, token: &str) -> Result<Principal, TokenError> {
        self.verify(token).map(|verified| verified.principal)
    }

    /// Adds a random key that only this process knows, so that it can call itself
    /// (the integration probe does) whatever keys it verifies others' tokens with.
    pub fn with_process_key(mut self) -> Result<Authenticator, TokenError> {
        let mut secret = vec![0_u8; 32];
        getrandom::fill(&mut secret)
            .map_err(|e| config_error(format!("no randomness for the process key: {e}")))?;
        self.process = Some(secret);
        Ok(self)
    }

    /// A token for this process's own requests, signed with its process key. Its
    /// principal may carry a name reserved for cairn itself.
    pub fn mint_for_process(
        &self,
        principal: &Principal,
        ttl: Duration,
    ) -> Result<String, TokenError> {
        let secret = self
            .process
            .as_ref()
            .ok_or_else(|| config_error("this authenticator has no process key"))?;
        let claims = Claims::build(principal, ttl, false)?;
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(PROCESS_KID.to_owned());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret)).map_err(|e| {
            TokenError::Invalid {
                reason: e.to_string(),
            }
        })
    }

    /// Verifies a bearer token and returns the principal it names and when it expires.
    pub fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        let process_token = jsonwebtoken::decode_header(token)
            .ok()
            .is_some_and(|header| header.kid.as_deref() == Some(PROCESS_KID));
        if process_token {
            let secret = self.process.as_ref().ok_or_else(|| TokenError::Invalid {
                reason: "the token names this process's own key, which it does not have".to_owned(),
            })?;
            let data = decode_checked(token, &DecodingKey::from_secret(secret), Algorithm::HS256)?;
            return Ok(Verified {
                principal: data.claims.resolve(false)?,
                expires_at: chrono::DateTime::from_timestamp(data.claims.exp, 0)
                    .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC),
            });
        }
        let (key, algorithm) = match &self.keys {
            Keys::Secret(key) => (key.clone(), Algorithm::HS256),
            Keys::Pem { key, algorithm } => (key.clone(), *algorithm),
            Keys::Jwks(set) => {
                let header =
                    jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid {
                        reason: e.to_string(),
                    })?;
                let kid = header.kid.ok_or_else(|| TokenError::Invalid {
                    reason: "the token names no key (kid)".to_owned(),
                })?;
                let jwk = set.find(&kid).ok_or_else(|| TokenError::Invalid {
                    reason: format!("no key {kid:?} in the JWKS"),
                })?;
                let key = DecodingKey::from_jwk(jwk).map_err(|e| TokenError::Invalid {
                    reason: e.to_string(),
                })?;
                if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
                    return Err(TokenError::Invalid {
                        reason: format!(
                            "algorithm {:?} is not accepted; use RS256 or ES256",
                            header.alg
                        ),
                    });
                }
                (key, header.alg)
            }
        };
        let data = decode_checked(token, &key, algorithm)?;
        Ok(Verified {
            principal: data.claims.principal()?,
            expires_at: chrono::DateTime::from_timestamp(data.claims.exp, 0)
                .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC),
        })
    }
}

/// A verified token: who it names, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub principal: Principal,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

fn decode_checked(
    token: &str,
    key: &DecodingKey,
    algorithm: Algorithm,
) -> Result<jsonwebtoken::TokenData<Claims>, TokenError> {
    let mut validation = Validation::new(algorithm);
    validation.set_issuer(&[ISSUER]);
    validation.set_required_spec_claims(&["exp", "iss", "sub"]);
    validation.leeway = 5;
    jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
        _ => TokenError::Invalid {
            reason: e.to_string(),
        },
    })
}

/// Mints an HS256 token for a principal: development and tests.
pub fn mint(principal: &Principal, secret: &[u8], ttl: Duration) -> Result<String, TokenError> {
    let claims = Claims::for_principal(principal, ttl)?;
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| TokenError::Invalid {
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a development secret of at least 32 bytes!";

    #[test]
    fn a_minted_token_authenticates_as_its_principal() {
        let principal = Principal::User {
            user_id: UserId::new_v7(),
            org_id: OrgId::new_v7(),
            roles: BTreeSet::from([Role::Admin]),
        };
        let token = mint(&principal, SECRET, Duration::from_secs(60)).unwrap();
        let auth = Authenticator::new(&KeySource::Secret(SECRET.to_vec())).unwrap();
        assert_eq!(auth.authenticate(&token).unwrap(), principal);
        let service = Principal::Service {
            name: "reporting".into(),
            scopes: BTreeSet::from([Scope::EventsRead]),
        };
        let token = mint(&service, SECRET, Duration::from_secs(60)).unwrap();
        assert_eq!(auth.authenticate(&token).unwrap(), service);
    }

    #[test]
    fn a_service_account_cannot_pass_for_another_actor() {
        let auth = Authenticator::new(&KeySource::Secret(SECRET.to_vec())).unwrap();
        for name in ["anonymous", "platform-admin-ops", "cairn-workflow-engine"] {
            let service = Principal::Service {
                name: name.into(),
                scopes: BTreeSet::new(),
            };
            let refused = mint(&service, SECRET, Duration::from_secs(60)).unwrap_err();
            assert!(refused.to_string().contains(name), "{refused}");
            // Nor is such a token, minted elsewhere, accepted.
            let mut claims = Claims::for_principal(
                &Principal::Service {
                    name: "fine".into(),
                    scopes: BTreeSet::new(),
                },
                Duration::from_secs(60),
            )
            .unwrap();
            claims.sub = format!("service:{name}");
            let forged = jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(SECRET),
            )
            .unwrap();
            assert!(matches!(
                auth.authenticate(&forged),
                Err(TokenError::Invalid { .. })
            ));
        }
    }

    #[test]
    fn only_this_process_can_mint_with_its_process_key() {
        let auth = Authenticator::new(&KeySource::Secret(SECRET.to_vec()))
            .unwrap()
            .with_process_key()
            .unwrap();
        let probe = Principal::Service {
            name: "cairn-probe".into(),
            scopes: BTreeSet::from([Scope::HealthProbe]),
        };
        let token = auth
            .mint_for_process(&probe, Duration::from_secs(60))
            .unwrap();
        assert_eq!(auth.authenticate(&token).unwrap(), probe);
        // Another process (another key) cannot verify it, nor can anyone forge one
        // with the configured secret under the process key's name.
        let other = Authenticator::new(&KeySource::Secret(SECRET.to_vec()))
            .unwrap()
            .with_process_key()
            .unwrap();
        assert!(matches!(
            other.authenticate(&token),
            Err(TokenError::Invalid { .. })
        ));
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(PROCESS_KID.to_owned());
        let forged = jsonwebtoken::encode(
            &header,
            &Claims::build(&probe, Duration::from_secs(60), false).unwrap(),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert!(matches!(
            auth.authenticate(&forged),
            Err(TokenError::Invalid { .. })
        ));
    }

    #[test]
    fn bad_tokens_say_why() {
        let auth = Authenticator::new(&KeySource::Secret(SECRET.to_vec())).unwrap();
        let admin = Principal::PlatformAdmin { name: "ops".into() };
        let other = mint(
            &admin,
            b"another secret that is also long enough!!",
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(matches!(
            auth.authenticate(&other),
            Err(TokenError::Invalid { .. })
        ));
        assert!(matches!(
            auth.authenticate("not.a.token"),
            Err(TokenError::Invalid { .. })
        ));
        let mut claims = Claims::for_principal(&admin, Duration::from_secs(60)).unwrap();
        claims.exp = chrono::Utc::now().timestamp() - 3_600;
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(auth.authenticate(&expired), Err(TokenError::Expired));
        assert!(Authenticator::new(&KeySource::Secret(b"short".to_vec())).is_err());
    }
}
