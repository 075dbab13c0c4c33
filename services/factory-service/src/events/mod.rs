//! The scan-event pipeline: scan events published by the scan service (contract 2.4) are
//! consumed here to keep scan history and the tags' counters.
//!
//! - [`schema`] parses and validates a message, telling poison (can never succeed) apart.
//! - [`apply`] records valid events exactly once, a micro-batch per transaction.
//! - [`consumer`] is the streaming-pull worker (inside `serve`, or alone as `worker`); its
//!   streams feed the `batcher`, and `delivery` acks, nacks or dead-letters each message.
//! - [`dead_letter`] is the format of dead-lettered messages; [`dlq`] lists and replays them.
//! - [`setup`] creates the topics and subscriptions (`pubsub setup`).
//! - [`commands`] is the command-line edge of all of the above.

pub mod apply;
mod batcher;
pub mod commands;
pub mod consumer;
pub mod dead_letter;
mod delivery;
pub mod dlq;
pub mod error;
pub mod metrics;
pub mod retention;
pub mod schema;
pub mod settings;
pub mod setup;
pub mod watch;

pub use consumer::Consumer;
pub use error::EventsError;
pub use settings::EventsSettings;

use common::config::PubSubConfig;
use common::health::ReadinessCheck;

/// The `/readyz` check of a process that consumes scan events (`serve` and `worker`): the
/// broker answers for the subscription it pulls from.
pub async fn readiness(
    pubsub: &PubSubConfig,
) -> Result<ReadinessCheck, common::pubsub::ClientError> {
    let admin = common::pubsub::ProbeClients::subscriptions(pubsub).await?;
    Ok(ReadinessCheck::pubsub_subscription(
        admin,
        pubsub.subscription_path(&pubsub.subscription),
    ))
}
