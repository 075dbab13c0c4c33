//! The consumer's and the set-up's tunables, derived once from the factory configuration.

use std::time::Duration;

use common::config::PubSubConfig;

use crate::config::FactoryConfig;

/// Everything the event pipeline needs to know about its plumbing.
#[derive(Debug, Clone)]
pub struct EventsSettings {
    /// Project, emulator and the topic, subscription and DLQ topic names.
    pub pubsub: PubSubConfig,
    /// `MAX_DELIVERY_ATTEMPTS`: on this delivery a message that still fails is dead-lettered.
    pub max_delivery_attempts: u32,
    /// The subscription's ack deadline (the client extends leases while a message is worked on).
    pub ack_deadline: Duration,
    /// Shortest wait before a nacked message is redelivered (subscription retry policy).
    pub min_backoff: Duration,
    /// Longest wait before a nacked message is redelivered.
    pub max_backoff: Duration,
    /// Flow control: messages the server may have outstanding on one consumer's stream.
    pub max_outstanding_messages: i64,
    /// Messages worked on at the same time by one consumer.
    pub concurrency: usize,
    /// How long shutdown waits for in-flight messages before nacking them.
    pub drain_timeout: Duration,
}

impl EventsSettings {
    /// The production settings for `config`.
    pub fn from_config(config: &FactoryConfig) -> Self {
        Self::new(config.common.pubsub.clone(), config.max_delivery_attempts)
    }

    /// Defaults for everything but the names and the attempt limit.
    pub fn new(pubsub: PubSubConfig, max_delivery_attempts: u32) -> Self {
        Self {
            pubsub,
            max_delivery_attempts,
            ack_deadline: Duration::from_secs(60),
            min_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(600),
            max_outstanding_messages: 1000,
            concurrency: 32,
            drain_timeout: Duration::from_secs(10),
        }
    }

    /// The subscription on the DLQ topic that `dlq list` and `dlq replay` read.
    pub fn inspect_subscription(&self) -> String {
        format!("{}-inspect", self.pubsub.dlq_topic)
    }
}
