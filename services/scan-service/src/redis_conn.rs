//! Redis connections for the request path.
//!
//! A pooled connection (deadpool) costs a `PING` on every checkout, which would double the round
//! trips of a rate-limit decision. The hot path therefore keeps a few long-lived multiplexed
//! connections instead (each carries any number of concurrent requests), connects them lazily,
//! and drops one when it breaks so the next call reconnects. Every call, connecting included,
//! is bounded by `REDIS_TIMEOUT_MS` (or, off the request path, by its caller's bound).

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::db::{RedisCallError, bounded};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisResult};
use secrecy::{ExposeSecret as _, SecretString};

struct Slot {
    conn: Mutex<Option<MultiplexedConnection>>,
    /// Serializes reconnects so a burst of requests after a failure makes one connection attempt,
    /// not one each.
    connecting: tokio::sync::Mutex<()>,
}

/// A small set of shared multiplexed Redis connections with a per-call timeout.
pub struct RedisConn {
    client: redis::Client,
    config: AsyncConnectionConfig,
    slots: Box<[Slot]>,
    next: AtomicUsize,
    timeout: Duration,
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConn")
            .field("slots", &self.slots.len())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisConn {
    /// Connections to `url` (opened on first use), `slots` of them, each call bounded by
    /// `timeout`.
    pub fn new(url: &SecretString, timeout: Duration, slots: usize) -> RedisResult<Self> {
        let client = redis::Client::open(url.expose_secret())?;
        // `bounded` enforces the timeout on every call, connecting included (a connection's
        // set-up gets the bound of the call that opens it). The crate's own response timeout
        // stays off: it would arm a second timer per command.
        let config = AsyncConnectionConfig::new().set_response_timeout(None);
        let slots = (0..slots.max(1))
            .map(|_| Slot {
                conn: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
            })
            .collect();
        Ok(Self {
            client,
            config,
            slots,
            next: AtomicUsize::new(0),
            timeout,
        })
    }

    /// The per-call timeout (`REDIS_TIMEOUT_MS`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `call` on one of the connections, connecting it first if needed, all within the
    /// timeout. A connection that reports an I/O failure is dropped so the next call reconnects.
    pub async fn run<T, F, Fut>(&self, call: F) -> Result<T, RedisCallError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.run_within(self.timeout, call).await
    }

    /// [`RedisConn::run`] with a bound of the caller's own instead of `REDIS_TIMEOUT_MS`: for
    /// calls off the request path, such as the readiness probe.
    pub async fn run_within<T, F, Fut>(
        &self,
        within: Duration,
        call: F,
    ) -> Result<T, RedisCallError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let slot = &self.slots[index];
        bounded(within, async {
            let conn = self.connection(slot, within).await?;
            let result = call(conn).await;
            if let Err(e) = &result
                && (e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error())
            {
                *lock(&slot.conn) = None;
            }
            result
        })
        .await
    }

    /// Opens every connection now, so the first burst of requests does not pay (and time out
    /// on) connection set-up, which would count against the breakers. Failures are only logged:
    /// the service starts without Redis and connects when it comes.
    pub async fn warm_up(&self, within: Duration) {
        let attempts = self
            .slots
            .iter()
            .map(|slot| tokio::time::timeout(within, self.connection(slot, within)));
        let failed = futures::future::join_all(attempts)
            .await
            .into_iter()
            .filter(|r| !matches!(r, Ok(Ok(_))))
            .count();
        if failed > 0 {
            tracing::warn!(
                failed,
                "Redis connections could not be opened at start-up; retrying on use"
            );
        }
    }

    /// The slot's connection, opened first (within `within`, handshake included) if it has none.
    async fn connection(
        &self,
        slot: &Slot,
        within: Duration,
    ) -> RedisResult<MultiplexedConnection> {
        if let Some(conn) = lock(&slot.conn).clone() {
            return Ok(conn);
        }
        let _connecting = slot.connecting.lock().await;
        if let Some(conn) = lock(&slot.conn).clone() {
            return Ok(conn);
        }
        let config = self
            .config
            .clone()
            .set_connection_timeout(Some(within.max(Duration::from_millis(1))));
        // Boxed: connecting is rare, and its future (kilobytes) would otherwise be part of
        // the future of every call on the request path.
        let conn = Box::pin(
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await?;
        *lock(&slot.conn) = Some(conn.clone());
        Ok(conn)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Held only to clone or replace a handle, never across an await: a poisoned lock still holds
    // a usable value.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
