//! Google Pub/Sub clients pointed at the right place.
//!
//! The `google-cloud-pubsub` crate ignores `PUBSUB_EMULATOR_HOST`, so a client built with its
//! defaults would go to Google Cloud with Application Default Credentials even in development.
//! Every client builder goes through [`configure`] instead: with an emulator configured it gets the
//! emulator's plaintext endpoint and anonymous credentials; without one it is left untouched (real
//! Google Cloud, ADC).

use std::time::Duration;

use google_cloud_auth::credentials::Credentials;
use google_cloud_auth::credentials::anonymous::Builder as Anonymous;
use google_cloud_gax::retry_policy::{
    Aip194Strict, NeverRetry, RetryPolicy, RetryPolicyArg, RetryPolicyExt as _,
};
use google_cloud_pubsub::builder::publisher::{BasePublisherBuilder, PublisherBuilder};
use google_cloud_pubsub::builder::subscriber::ClientBuilder as SubscriberBuilder;
use google_cloud_pubsub::client::{Publisher, Subscriber, SubscriptionAdmin, TopicAdmin};

use crate::config::PubSubConfig;

/// Why a Pub/Sub client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("building the Pub/Sub {client} client: {source}")]
pub struct ClientError {
    /// Which client.
    pub client: &'static str,
    /// The library's error.
    #[source]
    pub source: google_cloud_gax::client_builder::Error,
}

/// A Pub/Sub client builder whose endpoint and credentials can be set. Implemented for every
/// builder of the crate (publisher, base publisher, subscriber, and the admin clients).
pub trait PubSubClientBuilder: Sized {
    /// Sets the service endpoint (`http://host:port` for the emulator).
    fn set_endpoint(self, endpoint: String) -> Self;
    /// Sets the credentials.
    fn set_credentials(self, credentials: Credentials) -> Self;
}

impl PubSubClientBuilder for PublisherBuilder {
    fn set_endpoint(self, endpoint: String) -> Self {
        self.with_endpoint(endpoint)
    }
    fn set_credentials(self, credentials: Credentials) -> Self {
        self.with_credentials(credentials)
    }
}

impl PubSubClientBuilder for BasePublisherBuilder {
    fn set_endpoint(self, endpoint: String) -> Self {
        self.with_endpoint(endpoint)
    }
    fn set_credentials(self, credentials: Credentials) -> Self {
        self.with_credentials(credentials)
    }
}

impl PubSubClientBuilder for SubscriberBuilder {
    fn set_endpoint(self, endpoint: String) -> Self {
        self.with_endpoint(endpoint)
    }
    fn set_credentials(self, credentials: Credentials) -> Self {
        self.with_credentials(credentials)
    }
}

/// The admin clients (`TopicAdmin`, `SubscriptionAdmin`, `SchemaService`) share gax's generic
/// builder.
impl<F> PubSubClientBuilder for google_cloud_gax::client_builder::ClientBuilder<F, Credentials> {
    fn set_endpoint(self, endpoint: String) -> Self {
        self.with_endpoint(endpoint)
    }
    fn set_credentials(self, credentials: Credentials) -> Self {
        self.with_credentials(credentials)
    }
}

/// The emulator's endpoint URL (`http://host:port`), `None` for real Google Cloud.
pub fn emulator_endpoint(config: &PubSubConfig) -> Option<String> {
    config
        .emulator_host
        .as_deref()
        .map(|host| format!("http://{host}"))
}

/// Points `builder` at the emulator (plaintext endpoint, anonymous credentials) when
/// `PUBSUB_EMULATOR_HOST` is set; otherwise returns it unchanged.
pub fn configure<B: PubSubClientBuilder>(builder: B, config: &PubSubConfig) -> B {
    match emulator_endpoint(config) {
        Some(endpoint) => builder
            .set_endpoint(endpoint)
            .set_credentials(Anonymous::new().build()),
        None => builder,
    }
}

/// A publisher on `topic` (a short name, e.g. `scan-events`) with the library's default batching.
/// Callers that need other settings start from `Publisher::builder` and call [`configure`].
pub async fn publisher(config: &PubSubConfig, topic: &str) -> Result<Publisher, ClientError> {
    configure(Publisher::builder(config.topic_path(topic)), config)
        .build()
        .await
        .map_err(|source| ClientError {
            client: "publisher",
            source,
        })
}

/// A subscriber client (streaming pull).
pub async fn subscriber(config: &PubSubConfig) -> Result<Subscriber, ClientError> {
    configure(Subscriber::builder(), config)
        .build()
        .await
        .map_err(|source| ClientError {
            client: "subscriber",
            source,
        })
}

/// The longest an admin call retries a transient failure (nothing listening, `UNAVAILABLE`)
/// before it reports it: at most 5 attempts within 10 s, with the library's jittered back-off,
/// so it may give up sooner. The library's default, a minute, kept `pubsub setup` silent for
/// that long when the emulator was not running. It also bounds each attempt.
pub const ADMIN_RETRY_LIMIT: Duration = Duration::from_secs(10);

fn admin_retry_policy() -> impl RetryPolicy {
    Aip194Strict
        .with_attempt_limit(5)
        .with_time_limit(ADMIN_RETRY_LIMIT)
}

/// A topic admin client (create, get, delete topics).
pub async fn topic_admin(config: &PubSubConfig) -> Result<TopicAdmin, ClientError> {
    topic_admin_with(config, admin_retry_policy().into(), "topic admin").await
}

/// A subscription admin client (create, get, delete subscriptions).
pub async fn subscription_admin(config: &PubSubConfig) -> Result<SubscriptionAdmin, ClientError> {
    subscription_admin_with(config, admin_retry_policy().into(), "subscription admin").await
}

/// The admin clients behind the `/readyz` probes: one attempt per call, never retried. The
/// probe's caller bounds how long it waits and asks again on the next probe, so a retry would
/// only hide an outage for longer.
pub struct ProbeClients;

impl ProbeClients {
    /// A topic admin client for [`crate::health::ReadinessCheck::pubsub_topic`].
    pub async fn topics(config: &PubSubConfig) -> Result<TopicAdmin, ClientError> {
        topic_admin_with(config, NeverRetry.into(), "topic admin (readiness)").await
    }

    /// A subscription admin client for
    /// [`crate::health::ReadinessCheck::pubsub_subscription`].
    pub async fn subscriptions(config: &PubSubConfig) -> Result<SubscriptionAdmin, ClientError> {
        subscription_admin_with(config, NeverRetry.into(), "subscription admin (readiness)").await
    }
}

async fn topic_admin_with(
    config: &PubSubConfig,
    retries: RetryPolicyArg,
    client: &'static str,
) -> Result<TopicAdmin, ClientError> {
    configure(TopicAdmin::builder(), config)
        .with_retry_policy(retries)
        .build()
        .await
        .map_err(|source| ClientError { client, source })
}

async fn subscription_admin_with(
    config: &PubSubConfig,
    retries: RetryPolicyArg,
    client: &'static str,
) -> Result<SubscriptionAdmin, ClientError> {
    configure(SubscriptionAdmin::builder(), config)
        .with_retry_policy(retries)
        .build()
        .await
        .map_err(|source| ClientError { client, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(emulator: Option<&str>) -> PubSubConfig {
        PubSubConfig {
            project_id: "voketag-local".into(),
            emulator_host: emulator.map(str::to_owned),
            topic: "scan-events".into(),
            subscription: "factory-scan-events".into(),
            dlq_topic: "scan-events-dlq".into(),
        }
    }

    #[test]
    fn endpoint_only_with_an_emulator() {
        assert_eq!(
            emulator_endpoint(&config(Some("127.0.0.1:8085"))).as_deref(),
            Some("http://127.0.0.1:8085")
        );
        assert_eq!(emulator_endpoint(&config(None)), None);
    }

    /// Against the running emulator (`scripts/dev-services.sh up`), like every test here that
    /// needs a backend: each client kind the helper configures really talks to it.
    #[tokio::test]
    async fn clients_reach_the_emulator() {
        let cfg = config(Some("127.0.0.1:8085"));
        let name = format!("common-pubsub-{}", uuid::Uuid::new_v4().simple());
        let topics = topic_admin(&cfg).await.unwrap();
        topics
            .create_topic()
            .set_name(cfg.topic_path(&name))
            .send()
            .await
            .unwrap();
        let subs = subscription_admin(&cfg).await.unwrap();
        subs.create_subscription()
            .set_name(cfg.subscription_path(&name))
            .set_topic(cfg.topic_path(&name))
            .send()
            .await
            .unwrap();
        let publisher = publisher(&cfg, &name).await.unwrap();
        publisher
            .publish(google_cloud_pubsub::model::Message::new().set_data("hello"))
            .await
            .unwrap();
        let client = subscriber(&cfg).await.unwrap();
        let mut stream = client.subscribe(cfg.subscription_path(&name)).build();
        let (message, handler) =
            tokio::time::timeout(std::time::Duration::from_secs(20), stream.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        handler.ack();
        assert_eq!(&message.data[..], b"hello");
    }
}
