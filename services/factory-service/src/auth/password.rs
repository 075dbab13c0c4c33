//! Password hashing with argon2id (PHC strings), off the async runtime's worker threads.
//!
//! Each hash or verification holds 19 MiB for its whole run. Login is unauthenticated, so how
//! many run at once is bounded by [`TURNS`], one per core: further requests wait their turn as
//! small futures, rather than each taking a blocking thread and 19 MiB (up to 512 threads,
//! almost 10 GiB). The wait is bounded too, in time and in number: a login attempt runs to its
//! end even when its client leaves (`auth::routes::login`), so with no bound, a flood of
//! attempts whose clients hung up at once would queue without end, and a real sign-in behind
//! them would wait as long. Past either bound: 503 with `Retry-After` at once.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

use crate::error::FactoryError;

/// Hashes and verifications: one per core at once, at most [`WAITING_PER_CORE`] per core
/// waiting, each at most [`TURN_WAIT`].
static TURNS: LazyLock<Turns> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    Turns::new(cores, cores * WAITING_PER_CORE, TURN_WAIT)
});

/// How long a hash or verification waits for its turn. About 400 run per core in that time.
const TURN_WAIT: Duration = Duration::from_secs(10);

/// How many may wait per core: more than its share of [`TURN_WAIT`] would not get a turn in
/// time anyway.
const WAITING_PER_CORE: usize = 400;

/// Turns at something costly: so many at once, so many waiting, so long a wait.
struct Turns {
    running: Semaphore,
    waiting: AtomicUsize,
    max_waiting: usize,
    wait: Duration,
}

impl Turns {
    fn new(at_once: usize, max_waiting: usize, wait: Duration) -> Self {
        Self {
            running: Semaphore::new(at_once),
            waiting: AtomicUsize::new(0),
            max_waiting,
            wait,
        }
    }

    /// Runs `work` on the blocking pool once it has a turn, holding the turn until it ends
    /// (the blocking task runs to its end even if the caller is dropped meanwhile). 503 when
    /// too many wait already, or the turn does not come in time.
    async fn run<T: Send + 'static>(
        &'static self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, FactoryError> {
        let busy = || {
            metrics::counter!("password_checks_refused_total").increment(1);
            FactoryError::Busy("sign-ins")
        };
        let permit = match self.running.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(busy());
                }
                let turn = tokio::time::timeout(self.wait, self.running.acquire()).await;
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                match turn {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_)) | Err(_) => return Err(busy()),
                }
            }
        };
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|e| FactoryError::Internal(format!("password task: {e}")))
    }
}

/// [`Turns::run`] on the process's [`TURNS`].
async fn bounded<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, FactoryError> {
    TURNS.run(work).await
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

    /// With one running and two waiting, a fourth is refused at once; a waiter whose turn
    /// does not come within the bound is refused then. Without the bounds, attempts whose
    /// clients left (they run to their end) queued without end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_is_bounded_in_number_and_time() {
        let turns: &'static Turns =
            Box::leak(Box::new(Turns::new(1, 2, Duration::from_millis(300))));
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let running = tokio::spawn(turns.run(move || hold.recv().ok()));
        while turns.running.available_permits() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let waiters: Vec<_> = (0..2).map(|_| tokio::spawn(turns.run(|| ()))).collect();
        while turns.waiting.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let started = std::time::Instant::now();
        assert!(matches!(
            turns.run(|| ()).await,
            Err(FactoryError::Busy("sign-ins"))
        ));
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "refused at once"
        );
        for waiter in waiters {
            assert!(matches!(
                waiter.await.unwrap(),
                Err(FactoryError::Busy("sign-ins"))
            ));
        }
        release.send(()).unwrap();
        running.await.unwrap().unwrap();
        assert!(turns.run(|| ()).await.is_ok(), "a turn once one is free");
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
