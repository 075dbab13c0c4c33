//! Password hashing with argon2id (PHC strings), off the async runtime's worker threads.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use secrecy::{ExposeSecret, SecretString};

use crate::error::FactoryError;

/// Hashes `password` with argon2id and a fresh random salt.
pub async fn hash(password: SecretString) -> Result<String, FactoryError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        Argon2::default()
            .hash_password(password.expose_secret().as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| FactoryError::Internal(format!("argon2 hash: {e}")))
    })
    .await
    .map_err(|e| FactoryError::Internal(format!("hashing task: {e}")))?
}

/// Whether `password` matches the PHC string `hash`. A malformed stored hash counts as a
/// mismatch (and is logged), so it can never let anyone in.
pub async fn verify(password: SecretString, hash: String) -> Result<bool, FactoryError> {
    tokio::task::spawn_blocking(move || match PasswordHash::new(&hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.expose_secret().as_bytes(), &parsed)
            .is_ok(),
        Err(e) => {
            tracing::error!(error = %e, "stored password hash is malformed");
            false
        }
    })
    .await
    .map_err(|e| FactoryError::Internal(format!("verification task: {e}")))
}

/// A hash of a random password with the same parameters as real ones. Verifying against it
/// for an unknown email costs the same time as a wrong password, so timing does not reveal
/// which emails have accounts.
pub async fn dummy_hash() -> Result<String, FactoryError> {
    let mut bytes = [0u8; 24];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    hash(SecretString::from(hex::encode(bytes))).await
}
