//! A consecutive-failures circuit breaker, generic over any async call.
//!
//! CLOSED counts consecutive failures; at the threshold it turns OPEN and rejects calls fast.
//! After the open timeout the next call becomes the single HALF_OPEN probe (every other call is
//! still rejected while it runs); the probe's success closes the breaker, its failure re-opens it.
//!
//! Every state change starts a new *generation*, and each permit remembers the generation it was
//! issued in. Only results from the current generation count: a call admitted while CLOSED that
//! finishes after the breaker opened (or after it re-closed) cannot close, re-open or re-count
//! anything, so only the probe's own outcome moves the breaker out of OPEN/HALF_OPEN.
//!
//! A call through a CLOSED breaker with no failure counted changes nothing, and neither does its
//! success: that, the common case on every request path, reads one atomic word and takes no
//! lock, so calls from different threads do not queue on the breaker or pass its cache line to
//! and fro. Every state change, failure and recovery takes the lock.
//!
//! Time comes from `tokio::time::Instant`, so tests drive it with `tokio::time::pause()` and
//! `advance()` instead of sleeping.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::BreakerConfig;

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls pass; failures are counted.
    Closed,
    /// Calls are rejected until the timeout passes.
    Open,
    /// One probe call is in flight; others are rejected.
    HalfOpen,
}

impl BreakerState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "CLOSED",
            Self::Open => "OPEN",
            Self::HalfOpen => "HALF_OPEN",
        }
    }

    /// The value exported in `circuit_breaker_state` (0 closed, 1 open, 2 half-open).
    pub fn gauge_value(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::Open => 1.0,
            Self::HalfOpen => 2.0,
        }
    }
}

/// Why a call through the breaker failed.
#[derive(Debug, thiserror::Error)]
pub enum BreakerError<E> {
    /// The breaker did not let the call run.
    #[error("circuit breaker open; retry after {retry_after:?}")]
    Rejected {
        /// How long until a probe may be let through.
        retry_after: Duration,
    },
    /// The call ran and failed.
    #[error(transparent)]
    Inner(E),
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    failures: u32,
    opened_at: Instant,
    /// Bumped on every state change; permits from an older generation are stale. Kept below
    /// [`CLEAN`], so that it fits the word beside it.
    generation: u64,
}

impl Inner {
    /// The word [`Shared::clean`] holds for this state.
    fn clean_word(&self) -> u64 {
        if self.state == BreakerState::Closed && self.failures == 0 {
            CLEAN | self.generation
        } else {
            0
        }
    }
}

/// The flag of [`Shared::clean`]: the breaker is CLOSED with no failure counted.
const CLEAN: u64 = 1 << 63;

#[derive(Debug)]
struct Shared {
    /// `CLEAN | generation` while the breaker is CLOSED with no failure counted, else 0. Written
    /// only with the lock held, after `inner` changed; read without it by the calls that would
    /// change nothing.
    clean: AtomicU64,
    inner: Mutex<Inner>,
}

/// A named circuit breaker; cheap to clone (clones share state).
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    name: Arc<str>,
    threshold: u32,
    open_timeout: Duration,
    shared: Arc<Shared>,
}

/// Permission to run one call; report its outcome with [`Permit::success`] or [`Permit::failure`].
/// A permit dropped without a report (the call was cancelled) counts as a failure if it was the
/// half-open probe, so the breaker never stays stuck half-open.
#[must_use]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    /// The breaker generation the permit was issued in.
    generation: u64,
    /// Whether this is the half-open probe.
    probe: bool,
    done: bool,
}

impl Permit<'_> {
    /// The call succeeded.
    pub fn success(mut self) {
        self.done = true;
        self.breaker.on_success(self.generation, self.probe);
    }

    /// The call failed.
    pub fn failure(mut self) {
        self.done = true;
        self.breaker.on_failure(self.generation, self.probe);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.done && self.probe {
            self.breaker.on_failure(self.generation, true);
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`CircuitBreaker::call`]. Written out rather than an `async fn`, which
    /// would hold `call` twice (the argument and the awaited copy): on the request path that
    /// doubled the size of every enclosing future and what moving them costs.
    #[must_use = "futures do nothing unless polled"]
    pub struct BreakerCall<'a, F> {
        breaker: &'a CircuitBreaker,
        permit: Option<Permit<'a>>,
        #[pin]
        call: F,
    }
}

impl<F, T, E> Future for BreakerCall<'_, F>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, BreakerError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if this.permit.is_none() {
            match this.breaker.acquire() {
                Ok(permit) => *this.permit = Some(permit),
                Err(retry_after) => {
                    return Poll::Ready(Err(BreakerError::Rejected { retry_after }));
                }
            }
        }
        let result = std::task::ready!(this.call.poll(cx));
        // Always there: it was set above, and a future is not polled again once ready.
        if let Some(permit) = this.permit.take() {
            match &result {
                Ok(_) => permit.success(),
                Err(_) => permit.failure(),
            }
        }
        Poll::Ready(result.map_err(BreakerError::Inner))
    }
}

impl CircuitBreaker {
    /// A closed breaker named `name` (used in logs and metric labels).
    pub fn new(name: &str, config: BreakerConfig) -> Self {
        let breaker = Self {
            name: Arc::from(name),
            threshold: config.threshold.max(1),
            open_timeout: config.open_timeout,
            shared: Arc::new(Shared {
                clean: AtomicU64::new(CLEAN),
                inner: Mutex::new(Inner {
                    state: BreakerState::Closed,
                    failures: 0,
                    opened_at: Instant::now(),
                    generation: 0,
                }),
            }),
        };
        breaker.export(BreakerState::Closed);
        breaker
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current state (an OPEN breaker whose timeout has passed still reads OPEN until a call
    /// arrives to probe).
    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    /// Asks to run one call. `Err(retry_after)` when rejected.
    pub fn acquire(&self) -> Result<Permit<'_>, Duration> {
        let clean = self.shared.clean.load(Ordering::Acquire);
        if clean & CLEAN != 0 {
            return Ok(self.permit(clean & !CLEAN, false));
        }
        let mut inner = self.lock();
        match inner.state {
            BreakerState::Closed => Ok(self.permit(inner.generation, false)),
            BreakerState::Open => {
                let elapsed = inner.opened_at.elapsed();
                if elapsed >= self.open_timeout {
                    self.transition(
                        &mut inner,
                        BreakerState::HalfOpen,
                        "timeout passed; letting one probe through",
                    );
                    Ok(self.permit(inner.generation, true))
                } else {
                    drop(inner);
                    self.reject(self.open_timeout - elapsed)
                }
            }
            BreakerState::HalfOpen => {
                drop(inner);
                // A probe is in flight: others wait for its verdict.
                self.reject(Duration::from_secs(1))
            }
        }
    }

    /// Runs `call` through the breaker. The permit is asked for when the returned future is
    /// first polled, as with an `async fn`.
    pub fn call<F, T, E>(&self, call: F) -> BreakerCall<'_, F>
    where
        F: Future<Output = Result<T, E>>,
    {
        BreakerCall {
            breaker: self,
            permit: None,
            call,
        }
    }

    fn permit(&self, generation: u64, probe: bool) -> Permit<'_> {
        Permit {
            breaker: self,
            generation,
            probe,
            done: false,
        }
    }

    fn reject(&self, retry_after: Duration) -> Result<Permit<'_>, Duration> {
        metrics::counter!("circuit_breaker_rejections_total", "name" => self.name.to_string())
            .increment(1);
        Err(retry_after.max(Duration::from_millis(1)))
    }

    /// Whether a result reported for a permit of `generation` still counts: it must come from
    /// the current generation, and be the probe's if (and only if) the breaker is half-open.
    /// Anything else is a late result of a call admitted before the last state change.
    fn is_current(&self, inner: &Inner, generation: u64, probe: bool) -> bool {
        let current = inner.generation == generation
            && match inner.state {
                BreakerState::Closed => !probe,
                BreakerState::HalfOpen => probe,
                BreakerState::Open => false,
            };
        if !current {
            tracing::debug!(
                breaker = %self.name,
                state = inner.state.as_str(),
                "[CircuitBreaker:{}] ignoring the late result of a call from an earlier generation",
                self.name
            );
        }
        current
    }

    fn on_success(&self, generation: u64, probe: bool) {
        // Still CLOSED in the permit's generation with nothing counted: nothing to reset.
        if !probe && self.shared.clean.load(Ordering::Acquire) == CLEAN | generation {
            return;
        }
        let mut inner = self.lock();
        if !self.is_current(&inner, generation, probe) {
            return;
        }
        inner.failures = 0;
        if inner.state == BreakerState::HalfOpen {
            self.transition(&mut inner, BreakerState::Closed, "probe succeeded");
        }
        self.publish(&inner);
    }

    fn on_failure(&self, generation: u64, probe: bool) {
        let mut inner = self.lock();
        if !self.is_current(&inner, generation, probe) {
            return;
        }
        match inner.state {
            BreakerState::Closed => {
                inner.failures = inner.failures.saturating_add(1);
                if inner.failures >= self.threshold {
                    let why = format!("{} consecutive failures", inner.failures);
                    inner.opened_at = Instant::now();
                    self.transition(&mut inner, BreakerState::Open, &why);
                }
            }
            BreakerState::HalfOpen => {
                inner.opened_at = Instant::now();
                self.transition(&mut inner, BreakerState::Open, "probe failed");
            }
            // Unreachable: no permit is current while OPEN.
            BreakerState::Open => {}
        }
        self.publish(&inner);
    }

    fn transition(&self, inner: &mut Inner, to: BreakerState, why: &str) {
        let from = inner.state;
        inner.state = to;
        inner.generation = inner.generation.wrapping_add(1) & !CLEAN;
        if to == BreakerState::Closed {
            inner.failures = 0;
        }
        if to == BreakerState::Open {
            tracing::warn!(breaker = %self.name, "[CircuitBreaker:{}] {} -> {}: {}", self.name, from.as_str(), to.as_str(), why);
        } else {
            tracing::info!(breaker = %self.name, "[CircuitBreaker:{}] {} -> {}: {}", self.name, from.as_str(), to.as_str(), why);
        }
        self.publish(inner);
        self.export(to);
    }

    /// Makes the lock-free readers see `inner` (call with the lock held, after a change).
    fn publish(&self, inner: &Inner) {
        self.shared
            .clean
            .store(inner.clean_word(), Ordering::Release);
    }

    fn export(&self, state: BreakerState) {
        metrics::gauge!("circuit_breaker_state", "name" => self.name.to_string())
            .set(state.gauge_value());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The lock is never held across an await or user code, so poisoning means a bug
        // elsewhere panicked mid-update; the state is still a valid enum, so keep going.
        self.shared.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn breaker(threshold: u32, secs: u64) -> CircuitBreaker {
        CircuitBreaker::new(
            "test",
            BreakerConfig {
                threshold,
                open_timeout: Duration::from_secs(secs),
            },
        )
    }

    async fn fail(b: &CircuitBreaker) -> Result<(), BreakerError<&'static str>> {
        b.call(async { Err::<(), _>("boom") }).await
    }

    async fn succeed(b: &CircuitBreaker) -> Result<(), BreakerError<&'static str>> {
        b.call(async { Ok::<(), &str>(()) }).await
    }

    /// A log sink for a thread-local subscriber.
    #[derive(Clone, Default)]
    struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn state_changes_are_logged_with_the_breaker_name() {
        let lines = Lines::default();
        let sink = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let b = breaker(2, 10);
        fail(&b).await.unwrap_err();
        fail(&b).await.unwrap_err();
        tokio::time::advance(Duration::from_secs(11)).await;
        succeed(&b).await.unwrap();
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let logged: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_once("[CircuitBreaker:test] ").map(|(_, m)| m))
            .collect();
        assert_eq!(logged.len(), 3, "{text}");
        assert!(logged[0].starts_with("CLOSED -> OPEN"), "{text}");
        assert!(logged[1].starts_with("OPEN -> HALF_OPEN"), "{text}");
        assert!(logged[2].starts_with("HALF_OPEN -> CLOSED"), "{text}");
        assert!(text.contains("WARN"), "opening is a warning: {text}");
    }

    /// A future holding 4 KiB across an await, like the Redis calls of the scan path.
    async fn big_call() -> Result<u8, &'static str> {
        let buf = [7u8; 4096];
        tokio::task::yield_now().await;
        Ok(std::hint::black_box(buf)[0])
    }

    #[tokio::test]
    async fn a_call_holds_its_future_once() {
        let b = breaker(3, 60);
        let inner = std::mem::size_of_val(&big_call());
        let call = b.call(big_call());
        // An `async fn` taking the future by value held it twice (8 KiB here): every future
        // awaiting a breaker call, a scan's included, grew and was copied accordingly.
        assert!(
            std::mem::size_of_val(&call) < inner + 128,
            "{} bytes for a {inner}-byte call",
            std::mem::size_of_val(&call)
        );
        assert_eq!(call.await.unwrap(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn the_permit_is_asked_for_when_first_polled() {
        let b = breaker(1, 60);
        // Made while closed, run after the breaker opened: rejected, like an `async fn` would be.
        let early = b.call(async { Ok::<(), &str>(()) });
        fail(&b).await.unwrap_err();
        assert!(matches!(early.await, Err(BreakerError::Rejected { .. })));
        // A probe made but never polled does not count as a failure.
        tokio::time::advance(Duration::from_secs(61)).await;
        drop(b.call(async { Ok::<(), &str>(()) }));
        succeed(&b).await.unwrap();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    /// Runs a successful call through `b` on another thread while this one holds the breaker's
    /// lock, and says whether it finished within a second, without the lock. Returns once the
    /// call has finished (after the lock was released, if it needed it).
    fn succeeds_while_locked(b: &CircuitBreaker) -> bool {
        use futures::FutureExt as _;
        let (done, finished) = std::sync::mpsc::channel();
        let other = b.clone();
        let held = b.lock();
        let call = std::thread::spawn(move || {
            let result = other.call(async { Ok::<(), ()>(()) }).now_or_never();
            let _ = done.send(());
            result
        });
        let without_lock = finished.recv_timeout(Duration::from_secs(1)).is_ok();
        drop(held);
        let result = call.join().expect("the call's thread");
        assert!(matches!(result, Some(Ok(()))), "the call succeeds");
        without_lock
    }

    #[test]
    fn a_successful_call_through_a_clean_closed_breaker_takes_no_lock() {
        let b = breaker(3, 60);
        assert!(
            succeeds_while_locked(&b),
            "closed, nothing counted: no lock"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_failure_the_next_success_takes_the_lock_and_clears_the_count() {
        let b = breaker(3, 60);
        fail(&b).await.unwrap_err();
        // The count must be reset, which needs the lock: the call waits for it.
        assert!(!succeeds_while_locked(&b));
        // That call reset the count once it had the lock: the next one needs no lock, and the
        // count starts again from zero.
        assert!(succeeds_while_locked(&b));
        fail(&b).await.unwrap_err();
        fail(&b).await.unwrap_err();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_consecutive_failures() {
        let b = breaker(3, 60);
        fail(&b).await.unwrap_err();
        fail(&b).await.unwrap_err();
        succeed(&b).await.unwrap(); // resets the count
        fail(&b).await.unwrap_err();
        fail(&b).await.unwrap_err();
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b).await.unwrap_err();
        assert_eq!(b.state(), BreakerState::Open);
        match succeed(&b).await {
            Err(BreakerError::Rejected { retry_after }) => {
                assert!(
                    retry_after <= Duration::from_secs(60) && retry_after > Duration::from_secs(59)
                );
            }
            other => panic!("expected rejection, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_probe_success_closes() {
        let b = breaker(1, 60);
        fail(&b).await.unwrap_err();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(matches!(
            succeed(&b).await,
            Err(BreakerError::Rejected { .. })
        ));
        tokio::time::advance(Duration::from_secs(30)).await;
        succeed(&b).await.unwrap();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_probe_failure_reopens_with_fresh_timeout() {
        let b = breaker(1, 60);
        fail(&b).await.unwrap_err();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(matches!(fail(&b).await, Err(BreakerError::Inner("boom"))));
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(matches!(
            succeed(&b).await,
            Err(BreakerError::Rejected { .. })
        ));
        tokio::time::advance(Duration::from_secs(1)).await;
        succeed(&b).await.unwrap();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_probe_counts_as_failure() {
        let b = breaker(1, 10);
        fail(&b).await.unwrap_err();
        tokio::time::advance(Duration::from_secs(10)).await;
        let permit = b.acquire().unwrap();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        drop(permit);
        assert_eq!(b.state(), BreakerState::Open);
    }

    /// Opens a threshold-1 breaker while `old` (admitted while CLOSED) is still running, then
    /// waits out the timeout and takes the probe: the breaker is HALF_OPEN with the probe running.
    async fn half_open_with_old_call(b: &CircuitBreaker) -> (Permit<'_>, Permit<'_>) {
        let old = b.acquire().unwrap();
        fail(b).await.unwrap_err();
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(60)).await;
        let probe = b.acquire().unwrap();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        (old, probe)
    }

    #[tokio::test(start_paused = true)]
    async fn late_success_of_closed_call_does_not_close_open_breaker() {
        let b = breaker(3, 60);
        let old = b.acquire().unwrap();
        for _ in 0..3 {
            fail(&b).await.unwrap_err();
        }
        assert_eq!(b.state(), BreakerState::Open);
        old.success();
        assert_eq!(b.state(), BreakerState::Open);
        // Still rejecting fast until the timeout, then exactly one probe decides.
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(matches!(
            succeed(&b).await,
            Err(BreakerError::Rejected { .. })
        ));
        tokio::time::advance(Duration::from_secs(1)).await;
        let probe = b.acquire().unwrap();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        probe.success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn late_failure_of_closed_call_does_not_extend_open() {
        let b = breaker(1, 60);
        let old = b.acquire().unwrap();
        fail(&b).await.unwrap_err();
        tokio::time::advance(Duration::from_secs(30)).await;
        old.failure();
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(30)).await;
        let _probe = b
            .acquire()
            .expect("the timeout counts from the original opening");
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn late_success_in_half_open_does_not_close_while_probe_runs() {
        let b = breaker(1, 60);
        let (old, probe) = half_open_with_old_call(&b).await;
        old.success();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(matches!(
            succeed(&b).await,
            Err(BreakerError::Rejected { .. })
        ));
        probe.failure();
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn late_failure_in_half_open_does_not_reopen_probe_success_closes() {
        let b = breaker(1, 60);
        let (old, probe) = half_open_with_old_call(&b).await;
        old.failure();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(matches!(
            succeed(&b).await,
            Err(BreakerError::Rejected { .. })
        ));
        probe.success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn late_failure_in_half_open_does_not_reopen_probe_failure_reopens() {
        let b = breaker(1, 60);
        let (old, probe) = half_open_with_old_call(&b).await;
        old.failure();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        probe.failure();
        assert_eq!(b.state(), BreakerState::Open);
        // A fresh timeout from the probe's failure.
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(matches!(
            succeed(&b).await,
            Err(BreakerError::Rejected { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn late_result_from_earlier_closed_generation_does_not_reset_count() {
        let b = breaker(2, 60);
        let old = b.acquire().unwrap();
        fail(&b).await.unwrap_err();
        fail(&b).await.unwrap_err();
        tokio::time::advance(Duration::from_secs(60)).await;
        succeed(&b).await.unwrap();
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b).await.unwrap_err();
        old.success(); // from the generation before the outage: must not reset the count
        fail(&b).await.unwrap_err();
        assert_eq!(b.state(), BreakerState::Open);
    }

    /// Many tasks hit a half-open breaker at once: exactly one probe runs, the rest are rejected
    /// fast while it is in flight.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exactly_one_probe_under_concurrency() {
        let b = breaker(1, 1);
        fail(&b).await.unwrap_err();
        // Real time here (multi-threaded runtime): wait out the 1 s timeout.
        tokio::time::sleep(Duration::from_millis(1050)).await;
        let ran = Arc::new(AtomicUsize::new(0));
        let rejected = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Barrier::new(64));
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (b, ran, rejected, gate) = (b.clone(), ran.clone(), rejected.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                gate.wait().await;
                let r = b
                    .call(async {
                        ran.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok::<(), ()>(())
                    })
                    .await;
                if matches!(r, Err(BreakerError::Rejected { .. })) {
                    rejected.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(ran.load(Ordering::SeqCst), 1, "exactly one probe");
        assert_eq!(rejected.load(Ordering::SeqCst), 63);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    /// Concurrent failures from many tasks open the breaker once and never lose a count.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_failures_open_once() {
        let b = breaker(50, 60);
        let mut tasks = Vec::new();
        for _ in 0..49 {
            let b = b.clone();
            tasks.push(tokio::spawn(async move { fail(&b).await }));
        }
        for t in tasks {
            t.await.unwrap().unwrap_err();
        }
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b).await.unwrap_err();
        assert_eq!(b.state(), BreakerState::Open);
    }
}
