//! The admin API against real PostgreSQL and Redis: every test starts the service on port 0
//! with a fresh database and its own Redis key prefix, so tests run in parallel.
//! Run with `cargo nextest run -p factory-service --test api`.

mod api_keys;
mod auth;
mod catalog;
mod config;
mod errors;
mod health;
mod helpers;
mod idempotency;
mod migrations;
mod ratelimit;
mod roles;
mod shutdown;
mod users;
