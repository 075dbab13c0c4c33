//! What both VokeTag services share: typed configuration, telemetry, the HTTP hardening stack,
//! health routes, graceful shutdown, the circuit breaker, and connection set-up.

pub mod breaker;
pub mod clock;
pub mod config;
pub mod db;
pub mod health;
pub mod http;
pub mod metric_handles;
pub mod outage;
pub mod pubsub;
pub mod report;
pub mod server;
pub mod startup_warnings;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod text;
pub mod timestamp;

pub use breaker::{BreakerError, BreakerState, CircuitBreaker};
pub use config::{CommonConfig, ConfigError, Env};
