//! `factory-service pubsub setup`: creates, idempotently, the scan-event topic, the dead-letter
//! topic, the consumer's subscription and the DLQ inspection subscription. Existing
//! subscriptions are brought up to the configured settings.

use std::fmt;
use std::time::Duration;

use google_cloud_gax::error::rpc::Code;
use google_cloud_pubsub::client::{SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::model::{
    DeadLetterPolicy, ExpirationPolicy, RetryPolicy, Subscription, Topic, UpdateSubscriptionRequest,
};
use google_cloud_wkt as wkt;

use super::{EventsError, EventsSettings};

/// Pub/Sub accepts dead-letter policies from 5 to 100 attempts. The consumer dead-letters on
/// attempt `MAX_DELIVERY_ATTEMPTS` itself; the policy (clamped to that range) is the safety net
/// for a message the consumer could not dead-letter, and is what makes Pub/Sub count attempts.
pub const POLICY_ATTEMPTS: std::ops::RangeInclusive<u32> = 5..=100;
/// Longest retry back-off Pub/Sub accepts.
const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// Dead letters are kept as long as Pub/Sub allows (7 days) for inspection and replay.
const DLQ_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// What `setup` did to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// It did not exist and was created.
    Created,
    /// A subscription that existed with other settings, brought up to these.
    Updated,
    /// It existed as configured.
    Existed,
}

/// One resource and what happened to it.
#[derive(Debug, Clone)]
pub struct Resource {
    /// The full resource name.
    pub name: String,
    /// Created or already there.
    pub change: Change,
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.change {
            Change::Created => "created",
            Change::Updated => "updated",
            Change::Existed => "exists",
        };
        write!(f, "{what:>7}  {}", self.name)
    }
}

/// Creates whatever is missing; running it twice changes nothing the second time.
pub async fn setup(settings: &EventsSettings) -> Result<Vec<Resource>, EventsError> {
    let ps = &settings.pubsub;
    let topics = common::pubsub::topic_admin(ps).await?;
    let subs = common::pubsub::subscription_admin(ps).await?;
    let topic = ps.topic_path(&ps.topic);
    let dlq_topic = ps.topic_path(&ps.dlq_topic);
    let mut done = vec![
        create_topic(&topics, &topic).await?,
        create_topic(&topics, &dlq_topic).await?,
    ];
    done.push(ensure_subscription(&subs, main_subscription(settings)?).await?);
    done.push(ensure_subscription(&subs, inspect_subscription(settings)?).await?);
    Ok(done)
}

/// The consumer's subscription: ack deadline, dead-letter policy, retry back-off, no expiry.
pub fn main_subscription(settings: &EventsSettings) -> Result<Subscription, EventsError> {
    let ps = &settings.pubsub;
    let attempts = settings
        .max_delivery_attempts
        .clamp(*POLICY_ATTEMPTS.start(), *POLICY_ATTEMPTS.end());
    let retry = RetryPolicy::new()
        .set_minimum_backoff(wkt_duration(
            "min_backoff",
            settings.min_backoff.min(MAX_BACKOFF),
        )?)
        .set_maximum_backoff(wkt_duration(
            "max_backoff",
            settings.max_backoff.min(MAX_BACKOFF),
        )?);
    Ok(Subscription::new()
        .set_name(ps.subscription_path(&ps.subscription))
        .set_topic(ps.topic_path(&ps.topic))
        .set_ack_deadline_seconds(ack_deadline_seconds(settings.ack_deadline))
        .set_dead_letter_policy(
            DeadLetterPolicy::new()
                .set_dead_letter_topic(ps.topic_path(&ps.dlq_topic))
                .set_max_delivery_attempts(attempts as i32),
        )
        .set_retry_policy(retry)
        .set_expiration_policy(ExpirationPolicy::new()))
}

/// The DLQ inspection subscription `dlq list` and `dlq replay` read: long retention, no
/// expiry, no dead-lettering of its own.
pub fn inspect_subscription(settings: &EventsSettings) -> Result<Subscription, EventsError> {
    let ps = &settings.pubsub;
    Ok(Subscription::new()
        .set_name(ps.subscription_path(&settings.inspect_subscription()))
        .set_topic(ps.topic_path(&ps.dlq_topic))
        .set_ack_deadline_seconds(60)
        .set_message_retention_duration(wkt_duration("dlq retention", DLQ_RETENTION)?)
        .set_expiration_policy(ExpirationPolicy::new()))
}

async fn create_topic(admin: &TopicAdmin, name: &str) -> Result<Resource, EventsError> {
    let change = match admin
        .create_topic()
        .with_request(Topic::new().set_name(name))
        .send()
        .await
    {
        Ok(_) => Change::Created,
        Err(e) if is(&e, Code::AlreadyExists) => Change::Existed,
        Err(e) => return Err(EventsError::rpc(format!("creating topic {name}"), e)),
    };
    Ok(Resource {
        name: name.to_owned(),
        change,
    })
}

async fn ensure_subscription(
    admin: &SubscriptionAdmin,
    wanted: Subscription,
) -> Result<Resource, EventsError> {
    let name = wanted.name.clone();
    match admin
        .create_subscription()
        .with_request(wanted.clone())
        .send()
        .await
    {
        Ok(_) => {
            return Ok(Resource {
                name,
                change: Change::Created,
            });
        }
        Err(e) if is(&e, Code::AlreadyExists) => {}
        Err(e) => return Err(EventsError::rpc(format!("creating subscription {name}"), e)),
    }
    let existing = admin
        .get_subscription()
        .set_subscription(name.clone())
        .send()
        .await
        .map_err(|e| EventsError::rpc(format!("reading subscription {name}"), e))?;
    let changed = changed_fields(&existing, &wanted);
    if !changed.is_empty() {
        let update = UpdateSubscriptionRequest::new()
            .set_subscription(wanted)
            .set_update_mask(wkt::FieldMask::default().set_paths(changed.clone()));
        if let Err(e) = admin
            .update_subscription()
            .with_request(update)
            .send()
            .await
        {
            return Err(EventsError::rpc(
                format!("updating {} of subscription {name}", changed.join(", ")),
                e,
            ));
        }
        tracing::info!(
            subscription = %name,
            fields = ?changed,
            "subscription brought up to the settings"
        );
    }
    Ok(Resource {
        name,
        change: if changed.is_empty() {
            Change::Existed
        } else {
            Change::Updated
        },
    })
}

/// The settings of `wanted` that `existing` does not have. Only what `wanted` sets is compared,
/// so defaults chosen by the service are left alone (and the emulator, which cannot update
/// every field, is asked only when something really changed).
fn changed_fields(existing: &Subscription, wanted: &Subscription) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if existing.ack_deadline_seconds != wanted.ack_deadline_seconds {
        changed.push("ack_deadline_seconds");
    }
    if wanted.dead_letter_policy.is_some()
        && existing.dead_letter_policy != wanted.dead_letter_policy
    {
        changed.push("dead_letter_policy");
    }
    if wanted.retry_policy.is_some() && existing.retry_policy != wanted.retry_policy {
        changed.push("retry_policy");
    }
    if wanted.message_retention_duration.is_some()
        && existing.message_retention_duration != wanted.message_retention_duration
    {
        changed.push("message_retention_duration");
    }
    // Wanted: never expire. Only an expiry that is set needs clearing.
    let expires = existing
        .expiration_policy
        .as_ref()
        .is_some_and(|p| p.ttl.is_some());
    if wanted.expiration_policy.is_some() && expires {
        changed.push("expiration_policy");
    }
    changed
}

fn is(e: &google_cloud_pubsub::Error, code: Code) -> bool {
    e.status().is_some_and(|s| s.code == code)
}

fn ack_deadline_seconds(d: Duration) -> i32 {
    // Pub/Sub accepts 10 to 600 seconds.
    d.as_secs().clamp(10, 600) as i32
}

fn wkt_duration(setting: &'static str, d: Duration) -> Result<wkt::Duration, EventsError> {
    wkt::Duration::try_from(d).map_err(|e| EventsError::Setting {
        setting,
        problem: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use common::config::PubSubConfig;

    use super::*;

    fn settings(max: u32) -> EventsSettings {
        EventsSettings::new(
            PubSubConfig {
                project_id: "p".into(),
                emulator_host: None,
                topic: "t".into(),
                subscription: "s".into(),
                dlq_topic: "d".into(),
            },
            max,
        )
    }

    #[test]
    fn the_policy_is_clamped_to_what_pubsub_accepts() {
        let policy = |max| {
            main_subscription(&settings(max))
                .unwrap()
                .dead_letter_policy
                .unwrap()
        };
        assert_eq!(policy(2).max_delivery_attempts, 5);
        assert_eq!(policy(7).max_delivery_attempts, 7);
        assert_eq!(policy(100).dead_letter_topic, "projects/p/topics/d");
    }

    #[test]
    fn only_settings_that_differ_are_updated() {
        let wanted = main_subscription(&settings(5)).unwrap();
        assert!(changed_fields(&wanted, &wanted).is_empty());
        let mut existing = wanted.clone();
        existing.ack_deadline_seconds = 30;
        existing.dead_letter_policy = None;
        // A service default the settings do not mention is left alone.
        existing.message_retention_duration = Some(wkt::Duration::clamp(3600, 0));
        assert_eq!(
            changed_fields(&existing, &wanted),
            ["ack_deadline_seconds", "dead_letter_policy"]
        );
        existing = wanted.clone();
        existing.expiration_policy =
            Some(ExpirationPolicy::new().set_ttl(wkt::Duration::clamp(86_400, 0)));
        assert_eq!(changed_fields(&existing, &wanted), ["expiration_policy"]);
    }
}
