//! This machine's clock against the database's.
//!
//! Some times are this machine's (scan events' `scanned_at`, access tokens' `iat` and `exp`,
//! the scan cache's expiries, refresh tokens' session start), others the database's (audit
//! events and checkpoints, refresh-token expiry, retention), and Pub/Sub's (`publish_time`). An
//! instance whose clock is off shows it only through what goes wrong: tokens already expired
//! at other instances, scan events dead-lettered or dated before their tag, cache entries not
//! believed. [`spawn_watch`] measures the offset every minute into `clock_offset_seconds`
//! (this machine minus the database, the query's round trip halved) and warns once while it
//! is over [`WARN_OVER`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// An offset past which the watch warns.
pub const WARN_OVER: Duration = Duration::from_secs(2);

/// How often the watch measures.
const EVERY: Duration = Duration::from_secs(60);

/// This machine's clock minus the database's, in seconds: of three queries on one connection
/// (taken from the pool first, so that waiting for it counts in no reading), the one with the
/// shortest round trip, whose midpoint is taken as the moment the database read its clock (off
/// by at most half that round trip).
pub async fn offset(pool: &PgPool) -> Result<f64, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let mut best: Option<(f64, f64)> = None;
    for _ in 0..3 {
        let before = unix_secs();
        let database: f64 =
            sqlx::query_scalar("SELECT extract(epoch FROM clock_timestamp())::float8")
                .fetch_one(&mut *conn)
                .await?;
        let after = unix_secs();
        let reading = (after - before, (before + after) / 2.0 - database);
        if best.is_none_or(|(round_trip, _)| reading.0 < round_trip) {
            best = Some(reading);
        }
    }
    Ok(best.map_or(0.0, |(_, offset)| offset))
}

/// Measures [`offset`] now and every minute until `stop`, into `clock_offset_seconds`; warns
/// when it goes over [`WARN_OVER`] and says when it is back under.
pub fn spawn_watch(pool: PgPool, stop: CancellationToken) {
    tokio::spawn(async move {
        let gauge = metrics::gauge!("clock_offset_seconds");
        let mut every = tokio::time::interval(EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut off = false;
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = stop.cancelled() => return,
            }
            // A database away is told by the readiness check and the requests themselves.
            let Ok(seconds) = offset(&pool).await else {
                continue;
            };
            gauge.set(seconds);
            let over = seconds.abs() > WARN_OVER.as_secs_f64();
            if over && !off {
                tracing::warn!(
                    offset_seconds = seconds,
                    "this machine's clock is off the database's (positive: ahead); tokens, scan \
                     events and cache entries dated by it are off as much: check its time sync"
                );
            } else if !over && off {
                tracing::info!(
                    offset_seconds = seconds,
                    "this machine's clock agrees with the database's again"
                );
            }
            off = over;
        }
    });
}

fn unix_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
