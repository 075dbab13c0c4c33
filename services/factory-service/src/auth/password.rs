//! Password hashing with argon2id (PHC strings), off the async runtime's worker threads.
//!
//! Each hash or verification holds 19 MiB for its whole run. Login is unauthenticated, so how
//! many run at once is bounded by [`RUNNING`] permits, one per core: further requests wait
//! their turn as small futures (and give up with their request timeout), rather than each
//! taking a blocking thread and 19 MiB (up to 512 threads, almost 10 GiB).

use std::sync::LazyLock;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

use crate::error::FactoryError;

/// Hashes and verifications allowed to run at once: one per core.
static RUNNING: LazyLock<Semaphore> = LazyLock::new(|| {
    Semaphore::new(std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get))
});

/// Runs `work` on the blocking pool once a permit is free, holding the permit until it ends
/// (the blocking task runs to its end even if the request is dropped meanwhile).
async fn bounded<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, FactoryError> {
    let permit = RUNNING
        .acquire()
        .await
        .map_err(|e| FactoryError::Internal(format!("password permits: {e}")))?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work()
    })
    .await
    .map_err(|e| FactoryError::Internal(format!("password task: {e}")))
}

/// Hashes `password` with argon2id and a fresh random salt.
pub async fn hash(password: SecretString) -> Result<String, FactoryError> {
    bounded(move || {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        Argon2::default()
            .hash_password(password.expose_secret().as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| FactoryError::Internal(format!("argon2 hash: {e}")))
    })
    .await?
}

/// Whether `password` matches the PHC string `hash`. A malformed stored hash counts as a
/// mismatch (and is logged), so it can never let anyone in.
pub async fn verify(password: SecretString, hash: String) -> Result<bool, FactoryError> {
    bounded(move || match PasswordHash::new(&hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.expose_secret().as_bytes(), &parsed)
            .is_ok(),
        Err(e) => {
            tracing::error!(error = %e, "stored password hash is malformed");
            false
        }
    })
    .await
}

/// A hash of a random password with the same parameters as real ones. Verifying against it
/// for an unknown email costs the same time as a wrong password, so timing does not reveal
/// which emails have accounts.
pub async fn dummy_hash() -> Result<String, FactoryError> {
    let mut bytes = [0u8; 24];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    hash(SecretString::from(hex::encode(bytes))).await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_one_hashing_per_core_runs_at_once() {
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (running, peak) = (running.clone(), peak.clone());
                tokio::spawn(bounded(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(30));
                    running.fetch_sub(1, Ordering::SeqCst);
                }))
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        let peak = peak.load(Ordering::SeqCst);
        assert!(peak <= cores, "{peak} ran at once on {cores} cores");
        assert!(peak >= 1);
    }

    #[tokio::test]
    async fn a_password_verifies_against_its_own_hash_only() {
        let hashed = hash(SecretString::from("correct horse")).await.unwrap();
        assert!(
            verify(SecretString::from("correct horse"), hashed.clone())
                .await
                .unwrap()
        );
        assert!(
            !verify(SecretString::from("wrong horse"), hashed)
                .await
                .unwrap()
        );
        assert!(
            !verify(SecretString::from("x"), "not a phc string".into())
                .await
                .unwrap()
        );
    }
}
