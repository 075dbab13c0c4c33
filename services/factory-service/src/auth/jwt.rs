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
    /// The session (refresh-token family) the token was issued in: the token works only while
    /// that session lasts (see `auth::confirm_session`).
    pub sid: Uuid,
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

    /// Issues a token for this user's session `session_id`, living the configured lifetime but
    /// never past `not_after` (Unix seconds: the session's refresh token's expiry, so that no
    /// access token outlives its session). Returns it with its lifetime in seconds (the
    /// `expires_in` of token responses).
    pub fn issue(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        email: &str,
        role: Role,
        not_after: u64,
    ) -> Result<(String, u64), jsonwebtoken::errors::Error> {
        let now = jsonwebtoken::get_current_timestamp();
        let exp = (now + self.ttl.as_secs()).min(not_after);
        let claims = Claims {
            sub: user_id,
            sid: session_id,
            email: email.to_owned(),
            role,
            iat: now,
            exp,
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            jti: Uuid::new_v4(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok((token, exp.saturating_sub(now)))
    }

    /// Checks a token's signature, issuer, audience, expiry and `nbf` when it has one.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenRejection> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenRejection::Expired,
                _ => TokenRejection::Invalid,
            })?;
        // RFC 7519 4.1.4: not accepted on or after `exp`. jsonwebtoken refuses only after it,
        // which made a token good for the second of its expiry too.
        if claims.exp <= jsonwebtoken::get_current_timestamp() {
            return Err(TokenRejection::Expired);
        }
        Ok(claims)
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
    fn round_trip_and_wrong_key() -> Result<(), jsonwebtoken::errors::Error> {
        let (id, session) = (Uuid::new_v4(), Uuid::new_v4());
        let (token, expires_in) = keys(1).issue(id, session, "a@b.c", Role::Viewer, u64::MAX)?;
        assert_eq!(expires_in, 60);
        assert_eq!(
            keys(1).verify(&token).map(|c| (c.sub, c.sid, c.role)),
            Ok((id, session, Role::Viewer))
        );
        assert_eq!(keys(2).verify(&token).err(), Some(TokenRejection::Invalid));
        assert_eq!(
            keys(1).verify("garbage").err(),
            Some(TokenRejection::Invalid)
        );
        Ok(())
    }

    /// A session that ends in 10 s gets a token that expires with it, not in a minute.
    #[test]
    fn a_token_never_outlives_its_session() -> Result<(), jsonwebtoken::errors::Error> {
        let now = jsonwebtoken::get_current_timestamp();
        let (id, session) = (Uuid::new_v4(), Uuid::new_v4());
        let (token, expires_in) = keys(1).issue(id, session, "a@b.c", Role::Admin, now + 10)?;
        assert!(expires_in <= 10, "{expires_in}");
        assert_eq!(keys(1).verify(&token).map(|c| c.exp), Ok(now + 10));
        Ok(())
    }

    fn signed(claims: &serde_json::Value) -> Result<String, jsonwebtoken::errors::Error> {
        let key = EncodingKey::from_secret(&[1; 32]);
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key)
    }

    /// A token without a session (as issued before tokens carried one) is not valid: it could
    /// not be tied to a session that may have ended.
    #[test]
    fn a_token_without_a_session_is_refused() -> Result<(), jsonwebtoken::errors::Error> {
        let now = jsonwebtoken::get_current_timestamp();
        let mut claims = serde_json::json!({
            "sub": Uuid::new_v4(), "sid": Uuid::new_v4(), "email": "a@b.c", "role": "viewer",
            "iat": now, "exp": now + 60, "iss": ISSUER, "aud": AUDIENCE, "jti": Uuid::new_v4(),
        });
        assert!(keys(1).verify(&signed(&claims)?).is_ok());
        if let Some(map) = claims.as_object_mut() {
            map.remove("sid");
        }
        assert_eq!(
            keys(1).verify(&signed(&claims)?).err(),
            Some(TokenRejection::Invalid)
        );
        Ok(())
    }

    /// Not accepted on or after `exp` (RFC 7519 4.1.4): the second of its expiry too, which
    /// jsonwebtoken alone accepts.
    #[test]
    fn a_token_is_expired_at_its_exp() -> Result<(), jsonwebtoken::errors::Error> {
        let now = jsonwebtoken::get_current_timestamp();
        let token = |exp: u64| {
            signed(&serde_json::json!({
                "sub": Uuid::new_v4(), "sid": Uuid::new_v4(), "email": "a@b.c",
                "role": "viewer", "iat": now, "exp": exp, "iss": ISSUER, "aud": AUDIENCE,
                "jti": Uuid::new_v4(),
            }))
        };
        // Read again after signing: the second may have turned meanwhile.
        let now = jsonwebtoken::get_current_timestamp();
        assert_eq!(
            keys(1).verify(&token(now)?).err(),
            Some(TokenRejection::Expired)
        );
        assert!(keys(1).verify(&token(now + 30)?).is_ok());
        Ok(())
    }

    /// A token signed with the right key but not valid before a time still to come.
    #[test]
    fn a_token_not_valid_yet_is_refused() -> Result<(), jsonwebtoken::errors::Error> {
        let now = jsonwebtoken::get_current_timestamp();
        let token = |nbf: u64| {
            signed(&serde_json::json!({
                "sub": Uuid::new_v4(), "sid": Uuid::new_v4(), "email": "a@b.c",
                "role": "viewer", "iat": now, "exp": now + 60, "iss": ISSUER, "aud": AUDIENCE,
                "jti": Uuid::new_v4(), "nbf": nbf,
            }))
        };
        assert!(keys(1).verify(&token(now)?).is_ok());
        assert_eq!(
            keys(1).verify(&token(now + 30)?).err(),
            Some(TokenRejection::Invalid)
        );
        Ok(())
    }
}
