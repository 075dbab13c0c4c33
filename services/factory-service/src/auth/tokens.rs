//! Opaque refresh tokens (stored only as SHA-256) and the signed double-submit CSRF token.
//!
//! The CSRF token is `<nonce>.<mac>` with `mac = HMAC-SHA256(csrf_key, family_id || nonce)`,
//! both base64url. The browser echoes the cookie in `X-CSRF-Token`; the server checks that the
//! two are equal *and* that the MAC binds the token to the refresh family it arrived with, so a
//! token minted for another session (or planted by an attacker) fails.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::config::JwtSecret;

type HmacSha256 = Hmac<Sha256>;

/// 256 random bits, base64url: a new refresh token.
pub fn new_refresh_token() -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// SHA-256 of a token string, as stored.
pub fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Signs and checks CSRF tokens.
pub struct CsrfKey(SecretBox<[u8; 32]>);

impl CsrfKey {
    /// A key derived from the access-token secret under its own label, so one configured
    /// secret yields two keys that never sign the same kind of message.
    pub fn derive(secret: &JwtSecret) -> Self {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(secret.expose())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(b"voketag csrf key v1");
        Self(SecretBox::new(Box::new(mac.finalize().into_bytes().into())))
    }

    fn mac(&self, family_id: Uuid, nonce: &[u8]) -> HmacSha256 {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(self.0.expose_secret())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(family_id.as_bytes());
        mac.update(nonce);
        mac
    }

    /// A fresh token for this refresh family.
    pub fn issue(&self, family_id: Uuid) -> String {
        let mut nonce = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        let tag = self.mac(family_id, &nonce).finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(nonce),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// Whether `token` was issued for this family (constant-time comparison).
    pub fn verify(&self, family_id: Uuid, token: &str) -> bool {
        let Some((nonce, tag)) = token.split_once('.') else {
            return false;
        };
        let (Ok(nonce), Ok(tag)) = (URL_SAFE_NO_PAD.decode(nonce), URL_SAFE_NO_PAD.decode(tag))
        else {
            return false;
        };
        self.mac(family_id, &nonce).verify_slice(&tag).is_ok()
    }
}

impl std::fmt::Debug for CsrfKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CsrfKey(<redacted>)")
    }
}

/// Constant-time equality of two strings (header against cookie): no early exit on the first
/// differing byte.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_is_bound_to_the_family() {
        let key = CsrfKey::derive(&JwtSecret::new(vec![7; 32]));
        let family = Uuid::new_v4();
        let token = key.issue(family);
        assert!(key.verify(family, &token));
        assert!(!key.verify(Uuid::new_v4(), &token));
        assert!(!key.verify(family, "x.y"));
        assert!(!key.verify(family, "garbage"));
        let other = CsrfKey::derive(&JwtSecret::new(vec![8; 32]));
        assert!(!other.verify(family, &token));
    }

    #[test]
    fn refresh_tokens_are_random() {
        let a = new_refresh_token();
        assert_eq!(a.len(), 43);
        assert_ne!(a, new_refresh_token());
        assert_eq!(sha256(&a), sha256(&a));
    }
}
