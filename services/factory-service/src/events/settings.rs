//! The consumer's and the set-up's tunables, derived once from the factory configuration.

use std::time::Duration;

use common::config::{ConfigError, Env, PubSubConfig};

use crate::config::FactoryConfig;

/// Everything the event pipeline needs to know about its plumbing.
#[derive(Debug, Clone)]
pub struct EventsSettings {
    /// Project, emulator and the topic, subscription and DLQ topic names.
    pub pubsub: PubSubConfig,
    /// `MAX_DELIVERY_ATTEMPTS`: on this delivery a message that still fails is dead-lettered.
    pub max_delivery_attempts: u32,
    /// The subscription's ack deadline, and what the client extends a lease by each time while
    /// a message is worked on. It is also how long a message delivered to a consumer that then
    /// dies waits before it is delivered again.
    pub ack_deadline: Duration,
    /// Shortest wait before a nacked message is redelivered (subscription retry policy).
    pub min_backoff: Duration,
    /// Longest wait before a nacked message is redelivered.
    pub max_backoff: Duration,
    /// How one consumer pulls and batches (`SCAN_EVENTS_*`).
    pub consumer: ConsumerConfig,
    /// How long shutdown waits for in-flight messages before nacking them.
    pub drain_timeout: Duration,
    /// The longest one batch's transactions may take. A database that stops answering in the
    /// middle of one (a partition: the connection stays open) would otherwise hold the batch,
    /// its messages and one of the consumer's few connections for as long as TCP keeps it;
    /// past this the batch gives up like after any database failure (held and tried again, see
    /// [`ConsumerConfig::hold`]).
    pub apply_timeout: Duration,
}

/// How one consumer pulls messages and applies them in micro-batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// `SCAN_EVENTS_STREAMS`: streaming pulls opened by one consumer (one emulator stream
    /// delivers only about 1,900 messages/s).
    pub streams: usize,
    /// `SCAN_EVENTS_MAX_OUTSTANDING`: flow control, messages the server may have outstanding on
    /// one stream.
    pub max_outstanding_messages: i64,
    /// `SCAN_EVENTS_BATCH_SIZE`: most events applied in one transaction.
    pub batch_size: usize,
    /// `SCAN_EVENTS_BATCH_WAIT_MS`: longest a batch waits for more events after its first.
    pub batch_wait: Duration,
    /// `SCAN_EVENTS_DB_CONNECTIONS`: the consumer's pool, and so the batches applied at once.
    pub db_connections: u32,
    /// `SCAN_EVENTS_HOLD_SEC`: how long a batch whose events the database could not take (it
    /// is unreachable, or did not answer in time) keeps its messages and tries again, before
    /// nacking them. Other transient failures (a deadlock, a lock timeout) are nacked at once. A nack
    /// spends one of `MAX_DELIVERY_ATTEMPTS`, so without holding, an outage of a couple of
    /// minutes dead-lettered every event that came during it. `0`: nack at once.
    pub hold: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            streams: 4,
            max_outstanding_messages: 500,
            batch_size: 500,
            batch_wait: Duration::from_millis(5),
            db_connections: 3,
            hold: Duration::from_secs(300),
        }
    }
}

impl ConsumerConfig {
    /// Parses the `SCAN_EVENTS_*` tuning variables.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let d = Self::default();
        let wait_ms: u64 = env.int_in(
            "SCAN_EVENTS_BATCH_WAIT_MS",
            duration_ms(d.batch_wait),
            0,
            1_000,
        )?;
        Ok(Self {
            streams: env.int_in("SCAN_EVENTS_STREAMS", d.streams, 1, 32)?,
            max_outstanding_messages: env.int_in(
                "SCAN_EVENTS_MAX_OUTSTANDING",
                d.max_outstanding_messages,
                1,
                100_000,
            )?,
            batch_size: env.int_in("SCAN_EVENTS_BATCH_SIZE", d.batch_size, 1, 10_000)?,
            batch_wait: Duration::from_millis(wait_ms),
            db_connections: env.int_in("SCAN_EVENTS_DB_CONNECTIONS", d.db_connections, 1, 100)?,
            // Well below the client's 60-minute limit on extending a lease, which counts from
            // a message's receipt (it may wait for a batch slot before its own hold starts).
            hold: Duration::from_secs(env.int_in(
                "SCAN_EVENTS_HOLD_SEC",
                d.hold.as_secs(),
                0,
                1_500,
            )?),
        })
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl EventsSettings {
    /// The production settings for `config`.
    pub fn from_config(config: &FactoryConfig) -> Self {
        Self {
            consumer: config.scan_events,
            ..Self::new(config.common.pubsub.clone(), config.max_delivery_attempts)
        }
    }

    /// Defaults for everything but the names and the attempt limit.
    pub fn new(pubsub: PubSubConfig, max_delivery_attempts: u32) -> Self {
        Self {
            pubsub,
            max_delivery_attempts,
            // Pub/Sub's own default and its minimum. The client extends leases for as long as a
            // message is worked on, so a longer deadline buys nothing but a longer wait for the
            // messages of a consumer that crashed or was cut off (on the emulator, also of one
            // stopped gracefully: docs/SCAN_EVENTS.md, "Emulator caveat").
            ack_deadline: Duration::from_secs(10),
            min_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(600),
            consumer: ConsumerConfig::default(),
            drain_timeout: Duration::from_secs(10),
            // A batch takes milliseconds. Its messages' leases are extended meanwhile, so this
            // bound is about a stuck database, not about the ack deadline.
            apply_timeout: Duration::from_secs(30),
        }
    }

    /// The subscription on the DLQ topic that `dlq list` and `dlq replay` read.
    pub fn inspect_subscription(&self) -> String {
        format!("{}-inspect", self.pubsub.dlq_topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message leased to a consumer that is gone comes back only when its lease ends. On the
    /// emulator that includes every consumer stopped on the same subscription: with one earlier
    /// consumer, new events reached the running one after 60 s with leases of 60 s, after 10 s
    /// with leases of 10 s (docs/SCAN_EVENTS.md, "Emulator caveat").
    #[test]
    fn leases_are_pub_subs_shortest() {
        let pubsub = PubSubConfig {
            project_id: "p".into(),
            emulator_host: None,
            topic: "t".into(),
            subscription: "s".into(),
            dlq_topic: "d".into(),
        };
        assert_eq!(
            EventsSettings::new(pubsub, 5).ack_deadline,
            Duration::from_secs(10)
        );
    }

    #[test]
    fn tuning_defaults_and_overrides() {
        let d =
            ConsumerConfig::from_env(&Env::from_pairs(std::iter::empty::<(&str, &str)>())).unwrap();
        assert_eq!(d, ConsumerConfig::default());
        let c = ConsumerConfig::from_env(&Env::from_pairs([
            ("SCAN_EVENTS_STREAMS", "2"),
            ("SCAN_EVENTS_MAX_OUTSTANDING", "100"),
            ("SCAN_EVENTS_BATCH_SIZE", "50"),
            ("SCAN_EVENTS_BATCH_WAIT_MS", "0"),
            ("SCAN_EVENTS_DB_CONNECTIONS", "8"),
            ("SCAN_EVENTS_HOLD_SEC", "120"),
        ]))
        .unwrap();
        assert_eq!(
            c,
            ConsumerConfig {
                streams: 2,
                max_outstanding_messages: 100,
                batch_size: 50,
                batch_wait: Duration::ZERO,
                db_connections: 8,
                hold: Duration::from_secs(120),
            }
        );
        let e =
            ConsumerConfig::from_env(&Env::from_pairs([("SCAN_EVENTS_STREAMS", "0")])).unwrap_err();
        assert_eq!(e.var, "SCAN_EVENTS_STREAMS");
    }
}
