//! Password hashing with argon2id (PHC strings), off the async runtime's worker threads.
//!
//! Each hash or verification holds 19 MiB for its whole run. Login is unauthenticated, so how
//! many run at once is bounded by [`TURNS`], one per core: further requests wait their turn as
//! small futures, rather than each taking a blocking thread and 19 MiB (up to 512 threads,
//! almost 10 GiB). The wait is bounded too, in time and in number: with no bound, a flood of
//! attempts (from about a hundred addresses, each within its own limit) made every real sign-in
//! wait behind it until its request timed out. Past either bound: 503 with `Retry-After` at
//! once.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{Semaphore, SemaphorePermit};

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

    /// Waits for a turn: 503 when too many wait already, or it does not come in time.
    async fn turn(&'static self) -> Result<Turn, FactoryError> {
        let busy = || {
            metrics::counter!("password_checks_refused_total").increment(1);
            FactoryError::Busy("sign-ins")
        };
        if let Ok(permit) = self.running.try_acquire() {
            return Ok(Turn(permit));
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(busy());
        }
        // Counted out however the wait ends, the caller dropped meanwhile included.
        let _waiting = Waiting(&self.waiting);
        match tokio::time::timeout(self.wait, self.running.acquire()).await {
            Ok(Ok(permit)) => Ok(Turn(permit)),
            Ok(Err(_)) | Err(_) => Err(busy()),
        }
    }
}

/// One waiter of [`Turns`], counted out when dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A turn at a hash or verification, held until dropped.
pub struct Turn(#[allow(dead_code, reason = "held for its drop")] SemaphorePermit<'static>);

/// Waits for a turn at a password check (one per core at once; see the module docs): 503
/// `Busy` when too many wait already or it does not come within 10 s.
pub async fn turn() -> Result<Turn, FactoryError> {
    TURNS.turn().await
}

/// Runs `work` on the blocking pool in `turn`, holding it until the work ends (the blocking
/// task runs to its end even if the caller is dropped meanwhile).
async fn run_in<T: Send + 'static>(
    turn: Turn,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, FactoryError> {
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        work()
    })
    .await
    .map_err(|e| FactoryError::Internal(format!("password task: {e}")))
}

/// Runs `work` once it has a turn at the process's [`TURNS`].
async fn bounded<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, FactoryError> {
    run_in(TURNS.turn().await?, work).await
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

/// Whether `password` matches the PHC string `hash`, checked in `turn` (a login waits for its
/// turn before it is detached from its request: see `auth::routes::login`). A malformed stored
/// hash counts as a mismatch (and is logged), so it can never let anyone in.
pub async fn verify(
    turn: Turn,
    password: SecretString,
    hash: String,
) -> Result<bool, FactoryError> {
    run_in(turn, move || match PasswordHash::new(&hash) {
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

    /// Polls `done` every 5 ms for up to 10 s.
    async fn until(mut done: impl FnMut() -> bool) {
        for _ in 0..2000 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("not reached in 10 s");
    }

    /// With one turn taken and two waiting, a fourth is refused at once; a waiter whose turn
    /// does not come within the bound is refused then; a waiter whose caller is dropped
    /// leaves its place. Without the bounds, attempts whose clients left (they run to their
    /// end) queued without end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_is_bounded_in_number_and_time() {
        let turns: &'static Turns = Box::leak(Box::new(Turns::new(1, 2, Duration::from_secs(2))));
        let held = turns.turn().await.expect("the one turn");
        let waiters: Vec<_> = (0..2).map(|_| tokio::spawn(turns.turn())).collect();
        until(|| turns.waiting.load(Ordering::SeqCst) == 2).await;
        let asked = std::time::Instant::now();
        assert!(matches!(
            turns.turn().await,
            Err(FactoryError::Busy("sign-ins"))
        ));
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "refused at once, not after the 2 s wait"
        );
        for waiter in waiters {
            assert!(matches!(
                waiter.await.unwrap(),
                Err(FactoryError::Busy("sign-ins"))
            ));
        }
        assert_eq!(turns.waiting.load(Ordering::SeqCst), 0);
        // A waiter dropped while it waits.
        let dropped = tokio::spawn(turns.turn());
        until(|| turns.waiting.load(Ordering::SeqCst) == 1).await;
        dropped.abort();
        until(|| turns.waiting.load(Ordering::SeqCst) == 0).await;
        drop(held);
        assert!(turns.turn().await.is_ok(), "a turn once one is free");
    }

    #[tokio::test]
    async fn a_password_verifies_against_its_own_hash_only() {
        let hashed = hash(SecretString::from("correct horse")).await.unwrap();
        let check = |password: &str, hash: String| {
            let password = SecretString::from(password);
            async move { verify(turn().await.unwrap(), password, hash).await.unwrap() }
        };
        assert!(check("correct horse", hashed.clone()).await);
        assert!(!check("wrong horse", hashed).await);
        assert!(!check("x", "not a phc string".into()).await);
    }
}
