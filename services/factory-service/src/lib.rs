//! The factory service: the admin API brand staff use to manage products, batches, tags and keys.

pub mod audit;
pub mod cli;
pub mod config;
pub mod db;
pub mod startup;

pub use config::FactoryConfig;
pub use startup::Application;
