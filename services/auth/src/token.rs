//! Issuing and verifying access tokens.

use std::collections::HashMap;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Caller, KeyRing, SigningKey};

/// The `iss` and `aud` of every Rally access token.
const ISSUER: &str = "rally";
/// Tokens longer than this are rejected before any parsing.
const MAX_TOKEN_BYTES: usize = 4096;
/// Clock skew tolerated between the issuing and the verifying replica.
const LEEWAY_SECS: u64 = 5;

/// The claims of a Rally access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Always `rally`.
    pub iss: String,
    /// Always `rally`.
    pub aud: String,
    /// The user id.
    pub sub: String,
    /// The session id.
    pub sid: String,
    /// Issued at, seconds since the Unix epoch.
    pub iat: i64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: i64,
}

/// A freshly issued access token.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken {
    /// The compact JWT.
    pub token: String,
    /// When it expires, seconds since the Unix epoch.
    pub expires_at: i64,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Why an access token was not accepted (or could not be made).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No `authorization` metadata.
    #[error("missing access token: send `authorization: Bearer <token>`")]
    Missing,
    /// The metadata is not `Bearer <token>`.
    #[error("the authorization metadata must be `Bearer <token>`")]
    NotBearer,
    /// Not a well-formed token of ours.
    #[error("malformed access token")]
    Malformed,
    /// Signed with a key this server does not know (or names none).
    #[error("access token signed with an unknown key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("access token signature is invalid")]
    BadSignature,
    /// Past its expiry.
    #[error("access token expired")]
    Expired,
    /// Well-formed and signed, but not a Rally access token (issuer, audience or claims wrong).
    #[error("access token is not valid for Rally: {0}")]
    Invalid(String),
    /// Signing failed (a broken key).
    #[error("could not sign the access token: {0}")]
    Sign(String),
}

/// Signs access tokens with one key.
pub struct TokenIssuer {
    kid: String,
    encoding: EncodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("kid", &self.kid)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl TokenIssuer {
    /// An issuer that signs with `key` tokens valid for `ttl`.
    pub fn new(key: &SigningKey, ttl: Duration) -> Self {
        Self {
            kid: key.kid().to_owned(),
            encoding: EncodingKey::from_ed_der(key.pkcs8()),
            ttl,
        }
    }

    /// How long issued tokens are valid.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Issues a token for `user` in `session`, as of `now` (seconds since the Unix epoch).
    ///
    /// ```
    /// # use rally_auth::{KeyRing, SigningKey, TokenIssuer, TokenVerifier};
    /// # use std::time::Duration;
    /// let key = SigningKey::generate()?;
    /// let issuer = TokenIssuer::new(&key, Duration::from_secs(900));
    /// let verifier = TokenVerifier::new(KeyRing::of(&key));
    /// let (user, session) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    /// let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    /// let token = issuer.issue(user, session, now)?;
    /// assert_eq!(verifier.verify(&token.token)?.user_id, user);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn issue(&self, user: Uuid, session: Uuid, now: i64) -> Result<AccessToken, TokenError> {
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        let expires_at = now.saturating_add(ttl);
        let claims = Claims {
            iss: ISSUER.into(),
            aud: ISSUER.into(),
            sub: user.to_string(),
            sid: session.to_string(),
            iat: now,
            exp: expires_at,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| TokenError::Sign(e.to_string()))?;
        Ok(AccessToken { token, expires_at })
    }
}

/// Verifies access tokens against a [`KeyRing`], locally.
pub struct TokenVerifier {
    keys: HashMap<String, DecodingKey>,
    validation: Validation,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<_> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("TokenVerifier")
            .field("kids", &kids)
            .finish()
    }
}

impl TokenVerifier {
    /// A verifier accepting tokens signed by any key in `ring`.
    pub fn new(ring: KeyRing) -> Self {
        let keys = ring
            .kids()
            .into_iter()
            .filter_map(|kid| {
                let public = *ring.get(&kid)?;
                Some((kid, DecodingKey::from_ed_der(&public)))
            })
            .collect();
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;
        Self { keys, validation }
    }

    /// Verifies a compact token and returns who it speaks for.
    pub fn verify(&self, token: &str) -> Result<Caller, TokenError> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let key = self.keys.get(&kid).ok_or(TokenError::UnknownKey)?;
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    ErrorKind::InvalidSignature => TokenError::BadSignature,
                    ErrorKind::InvalidIssuer => TokenError::Invalid("wrong issuer".into()),
                    ErrorKind::InvalidAudience => TokenError::Invalid("wrong audience".into()),
                    ErrorKind::MissingRequiredClaim(claim) => {
                        TokenError::Invalid(format!("missing claim {claim}"))
                    }
                    _ => TokenError::Malformed,
                }
            })?;
        let parse = |field: &str, value: &str| {
            Uuid::parse_str(value)
                .map_err(|_| TokenError::Invalid(format!("{field} is not a UUID")))
        };
        Ok(Caller {
            user_id: parse("sub", &data.claims.sub)?,
            session_id: parse("sid", &data.claims.sid)?,
            expires_at: data.claims.exp,
        })
    }

    /// Verifies the value of an `authorization` header (`Bearer <token>`).
    pub fn verify_authorization(
        &self,
        value: Option<&http::HeaderValue>,
    ) -> Result<Caller, TokenError> {
        let value = value.ok_or(TokenError::Missing)?;
        let text = value.to_str().map_err(|_| TokenError::NotBearer)?;
        let (scheme, token) = text.split_once(' ').ok_or(TokenError::NotBearer)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(TokenError::NotBearer);
        }
        self.verify(token.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use proptest::prelude::*;

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default()
    }

    fn setup() -> (TokenIssuer, TokenVerifier) {
        let key = SigningKey::generate().expect("key");
        (
            TokenIssuer::new(&key, Duration::from_secs(900)),
            TokenVerifier::new(KeyRing::of(&key)),
        )
    }

    #[test]
    fn a_fresh_token_verifies_to_its_user_and_session() {
        let (issuer, verifier) = setup();
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        let token = issuer.issue(user, session, now()).expect("issue");
        let caller = verifier.verify(&token.token).expect("verify");
        assert_eq!(
            caller,
            Caller {
                user_id: user,
                session_id: session,
                expires_at: token.expires_at,
            }
        );
    }

    #[test]
    fn an_expired_token_is_rejected_as_expired() {
        let (issuer, verifier) = setup();
        let token = issuer
            .issue(Uuid::new_v4(), Uuid::new_v4(), now() - 3600)
            .expect("issue");
        assert_eq!(verifier.verify(&token.token), Err(TokenError::Expired));
    }

    #[test]
    fn a_token_of_an_unknown_key_is_refused() {
        let (_, verifier) = setup();
        let (other, _) = setup();
        let token = other
            .issue(Uuid::new_v4(), Uuid::new_v4(), now())
            .expect("issue");
        assert_eq!(verifier.verify(&token.token), Err(TokenError::UnknownKey));
    }

    #[test]
    fn a_token_signed_by_another_key_under_our_kid_fails_the_signature() {
        let ours = SigningKey::generate().expect("key");
        let verifier = TokenVerifier::new(KeyRing::of(&ours));
        let attacker = SigningKey::generate().expect("key");
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(ours.kid().to_owned());
        let claims = Claims {
            iss: ISSUER.into(),
            aud: ISSUER.into(),
            sub: Uuid::new_v4().to_string(),
            sid: Uuid::new_v4().to_string(),
            iat: now(),
            exp: now() + 900,
        };
        let forged = jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_ed_der(attacker.pkcs8()),
        )
        .expect("sign");
        assert_eq!(verifier.verify(&forged), Err(TokenError::BadSignature));
    }

    #[test]
    fn a_tampered_payload_fails_the_signature() {
        let (issuer, verifier) = setup();
        let token = issuer
            .issue(Uuid::new_v4(), Uuid::new_v4(), now())
            .expect("issue");
        let mut parts: Vec<String> = token.token.split('.').map(str::to_owned).collect();
        let claims = serde_json::json!({
            "iss": "rally", "aud": "rally", "sub": Uuid::new_v4().to_string(),
            "sid": Uuid::new_v4().to_string(), "iat": now(), "exp": now() + 900,
        });
        parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
        assert_eq!(
            verifier.verify(&parts.join(".")),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn alg_none_and_hmac_tokens_are_refused() {
        let (issuer, verifier) = setup();
        let token = issuer
            .issue(Uuid::new_v4(), Uuid::new_v4(), now())
            .expect("issue");
        let mut parts: Vec<String> = token.token.split('.').map(str::to_owned).collect();
        for alg in ["none", "HS256"] {
            parts[0] =
                URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","kid":"{}"}}"#, issuer.kid));
            let result = verifier.verify(&parts.join("."));
            assert!(
                matches!(result, Err(TokenError::Malformed | TokenError::Invalid(_))),
                "{alg}: {result:?}"
            );
        }
    }

    #[test]
    fn authorization_header_must_be_bearer() {
        let (issuer, verifier) = setup();
        let token = issuer
            .issue(Uuid::new_v4(), Uuid::new_v4(), now())
            .expect("issue");
        let header = |s: &str| http::HeaderValue::from_str(s).expect("header");
        assert_eq!(
            verifier.verify_authorization(None),
            Err(TokenError::Missing)
        );
        assert_eq!(
            verifier.verify_authorization(Some(&header(&format!("Basic {}", token.token)))),
            Err(TokenError::NotBearer)
        );
        assert_eq!(
            verifier.verify_authorization(Some(&header(&token.token))),
            Err(TokenError::NotBearer)
        );
        assert!(
            verifier
                .verify_authorization(Some(&header(&format!("bearer {}", token.token))))
                .is_ok()
        );
    }

    #[test]
    fn rotation_keeps_tokens_of_the_previous_key_valid() {
        let old = SigningKey::generate().expect("key");
        let new = SigningKey::generate().expect("key");
        let mut ring = KeyRing::of(&new);
        ring.insert_public(old.public_key());
        let verifier = TokenVerifier::new(ring);
        for key in [&old, &new] {
            let token = TokenIssuer::new(key, Duration::from_secs(60))
                .issue(Uuid::new_v4(), Uuid::new_v4(), now())
                .expect("issue");
            assert!(verifier.verify(&token.token).is_ok());
        }
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_verify_and_never_panic(s in "\\PC{0,300}") {
            let (_, verifier) = setup();
            prop_assert!(verifier.verify(&s).is_err());
        }

        #[test]
        fn arbitrary_three_part_tokens_never_verify(a in "[A-Za-z0-9_-]{0,80}", b in "[A-Za-z0-9_-]{0,200}", c in "[A-Za-z0-9_-]{0,90}") {
            let (_, verifier) = setup();
            let token = [a, b, c].join(".");
            prop_assert!(verifier.verify(&token).is_err());
        }
    }
}
