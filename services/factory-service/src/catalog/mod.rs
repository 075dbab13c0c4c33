//! The catalog (CONTRACT 3.3): products, batches of tags, and tag revocation.

pub mod batches;
pub mod bulk;
pub mod products;
pub mod repo;
pub mod routes;
pub mod tag_id;
pub mod tags;
