//! Short-lived access tokens: HS256 JWTs carrying the user's id, email and role.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::JwtSecret;
use crate::users::Role;

const ISSUER: &str = "voketag-factory";
const AUDIENCE: &str = "voketag-admin";

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user's id.
    pub sub: Uuid,
    /// The user's email when the token was issued.
    pub email: String,
    /// The user's role when the token was issued.
    pub role: Role,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Expires at (Unix seconds).
    pub exp: u64,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Token id.
    pub jti: Uuid,
}

/// Why an access token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRejection {
    /// Well-formed and signed, but past its expiry.
    Expired,
    /// Anything else: bad signature, wrong issuer, garbage.
    Invalid,
}

/// Signs and checks access tokens. Cheap to clone.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl JwtKeys {
    /// Keys for `secret`; tokens live `ttl`.
    pub fn new(secret: &JwtSecret, ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is exact: the TTL is already short, and tests check it to the second.
        validation.leeway = 0;
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        // A token that says it is not valid yet is not (the service issues none with `nbf`).
        validation.validate_nbf = true;
        Self {
            encoding: EncodingKey::from_secret(secret.expose()),
            decoding: DecodingKey::from_secret(secret.expose()),
            validation,
            ttl,
        }
    }

    /// Token lifetime in seconds (the `expires_in` of token responses).
    pub fn ttl_secs(&self) -> u64 {
        self.ttl.as_secs()
    }

    /// Issues a token for this user.
    pub fn issue(
        &self,
        user_id: Uuid,
        email: &str,
        role: Role,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: user_id,
            email: email.to_owned(),
            role,
            iat: now,
            exp: now + self.ttl.as_secs(),
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            jti: Uuid::new_v4(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    /// Checks a token's signature, issuer, audience, expiry and `nbf` when it has one.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenRejection> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenRejection::Expired,
                _ => TokenRejection::Invalid,
            })
    }
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: u8) -> JwtKeys {
        JwtKeys::new(&JwtSecret::new(vec![secret; 32]), Duration::from_secs(60))
    }

    #[test]
    fn round_trip_and_wrong_key() {
        let id = Uuid::new_v4();
        let token = keys(1).issue(id, "a@b.c", Role::Viewer).unwrap();
        let claims = keys(1).verify(&token).unwrap();
        assert_eq!((claims.sub, claims.role), (id, Role::Viewer));
        assert_eq!(keys(2).verify(&token).unwrap_err(), TokenRejection::Invalid);
        assert_eq!(
            keys(1).verify("garbage").unwrap_err(),
            TokenRejection::Invalid
        );
    }

    /// A token signed with the right key but not valid before a time still to come.
    #[test]
    fn a_token_not_valid_yet_is_refused() -> Result<(), jsonwebtoken::errors::Error> {
        let now = jsonwebtoken::get_current_timestamp();
        let token = |nbf: u64| {
            let claims = serde_json::json!({
                "sub": Uuid::new_v4(), "email": "a@b.c", "role": "viewer", "iat": now,
                "exp": now + 60, "iss": ISSUER, "aud": AUDIENCE, "jti": Uuid::new_v4(),
                "nbf": nbf,
            });
            let key = EncodingKey::from_secret(&[1; 32]);
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
        };
        assert!(keys(1).verify(&token(now)?).is_ok());
        assert_eq!(
            keys(1).verify(&token(now + 30)?).err(),
            Some(TokenRejection::Invalid)
        );
        Ok(())
    }
}
