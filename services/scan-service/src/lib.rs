//! The scan service: `GET /v1/scan/{tag_id}` for shoppers' phones and retailers' scanners.

pub mod config;
pub mod startup;

pub use config::ScanConfig;
pub use startup::Application;
