//! The scan service: `GET /v1/scan/{tag_id}` for shoppers' phones and retailers' scanners.

pub mod api_keys;
pub mod cache;
pub mod config;
pub mod error;
pub mod events;
pub mod lookup;
pub mod near_cache;
pub mod ratelimit;
pub mod redis_conn;
pub mod routes;
pub mod scan;
pub mod startup;
pub mod tags;
pub mod timing;

pub use config::ScanConfig;
pub use startup::Application;
