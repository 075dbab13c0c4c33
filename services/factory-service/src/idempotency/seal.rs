//! Stored results are sealed with a key only the caller holds.
//!
//! A result may carry a secret: `POST /v1/api-keys` answers the new key in clear, once, and a
//! replay must answer it again. The server keeps only a hash of an API key, so the replay copy
//! must not be readable either: each result is sealed (AES-256-GCM) under a key derived with
//! HKDF-SHA256 from the raw `Idempotency-Key` value, salted with the caller's id. The server
//! stores only a SHA-256 of that value, so neither PostgreSQL, Redis nor a dump of them can
//! open a result; a retry bringing the same `Idempotency-Key` can. The request fingerprint is
//! the associated data, so a sealed result only opens for the request that produced it.
//!
//! Callers should use unguessable keys (a random UUID): a guessable key is as good as no seal.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::error::Unspecified;
use ring::hkdf::{HKDF_SHA256, Salt};
use ring::rand::{SecureRandom as _, SystemRandom};
use uuid::Uuid;

/// HKDF `info`: what the derived key is for (and its format version).
const INFO: &[u8] = b"voketag idempotent result seal v1";

/// The key sealing one caller's results under one `Idempotency-Key`.
#[derive(Clone)]
pub struct SealKey([u8; 32]);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    /// The key for the raw header value `idempotency_key` of caller `user_id`.
    pub fn derive(idempotency_key: &[u8], user_id: Uuid) -> Result<Self, Unspecified> {
        let prk = Salt::new(HKDF_SHA256, user_id.as_bytes()).extract(idempotency_key);
        let mut key = [0u8; 32];
        prk.expand(&[INFO], HKDF_SHA256)?.fill(&mut key)?;
        Ok(Self(key))
    }

    fn aead(&self) -> Result<LessSafeKey, Unspecified> {
        Ok(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.0)?))
    }

    /// `plain` sealed, bound to `context`: a random nonce, then the ciphertext and its tag.
    pub fn seal(&self, context: &[u8], plain: &[u8]) -> Result<Vec<u8>, Unspecified> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce)?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + plain.len() + AES_256_GCM.tag_len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(plain);
        let mut body = sealed.split_off(NONCE_LEN);
        self.aead()?.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(context),
            &mut body,
        )?;
        sealed.append(&mut body);
        Ok(sealed)
    }

    /// What [`SealKey::seal`] sealed with this key and `context`; `None` for anything else.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let plain = self
            .aead()
            .ok()?
            .open_in_place(nonce, Aad::from(context), &mut body)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_only_with_the_same_key_caller_and_context() {
        let user = Uuid::new_v4();
        let key = SealKey::derive(b"retry-7f3a", user).unwrap();
        let sealed = key
            .seal(b"fingerprint", b"{\"key\":\"vt_secret\"}")
            .unwrap();
        assert!(!sealed.windows(9).any(|w| w == b"vt_secret"));
        assert_eq!(
            key.open(b"fingerprint", &sealed).as_deref(),
            Some(&b"{\"key\":\"vt_secret\"}"[..])
        );
        // Another header value, another caller, another request, or a flipped bit: no.
        let other_key = SealKey::derive(b"retry-7f3b", user).unwrap();
        let other_user = SealKey::derive(b"retry-7f3a", Uuid::new_v4()).unwrap();
        assert_eq!(other_key.open(b"fingerprint", &sealed), None);
        assert_eq!(other_user.open(b"fingerprint", &sealed), None);
        assert_eq!(key.open(b"other", &sealed), None);
        let mut flipped = sealed.clone();
        flipped[NONCE_LEN] ^= 1;
        assert_eq!(key.open(b"fingerprint", &flipped), None);
        assert_eq!(key.open(b"fingerprint", &sealed[..5]), None);
        // A fresh nonce per seal.
        assert_ne!(
            key.seal(b"fingerprint", b"x").unwrap(),
            key.seal(b"fingerprint", b"x").unwrap()
        );
        assert_eq!(format!("{key:?}"), "SealKey(..)");
    }
}
