//! The factory service: the admin API brand staff use to manage products, batches, tags and keys.

pub mod admin;
pub mod api_keys;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod db;
pub mod error;
pub mod events;
pub mod idempotency;
pub mod openapi;
pub mod path;
pub mod ratelimit;
pub mod routes;
pub mod scan_cache;
pub mod startup;
pub mod state;
pub mod text;
pub mod users;

pub use config::FactoryConfig;
pub use error::FactoryError;
pub use startup::Application;
