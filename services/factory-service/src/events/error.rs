//! Failures of the event pipeline's Pub/Sub plumbing.

use common::pubsub::ClientError;

/// Why a Pub/Sub operation of the event pipeline failed.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// A client could not be built.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// An admin or streaming call failed.
    #[error("{operation}: {source}")]
    Rpc {
        /// What was being done.
        operation: String,
        /// The library's error.
        #[source]
        source: google_cloud_pubsub::Error,
    },
    /// A message could not be published.
    #[error("publishing to {topic}: {source}")]
    Publish {
        /// The short topic name.
        topic: String,
        /// The library's error.
        #[source]
        source: google_cloud_pubsub::error::PublishError,
    },
    /// Publishing did not finish in time.
    #[error("publishing to {topic} timed out")]
    PublishTimeout {
        /// The short topic name.
        topic: String,
    },
    /// Pub/Sub did not answer a call in time.
    #[error("{operation}: Pub/Sub did not answer within {seconds} s")]
    Timeout {
        /// What was being done.
        operation: String,
        /// How long it waited.
        seconds: u64,
    },
    /// A setting cannot be expressed to Pub/Sub.
    #[error("invalid setting {setting}: {problem}")]
    Setting {
        /// Which setting.
        setting: &'static str,
        /// What is wrong.
        problem: String,
    },
}

impl EventsError {
    /// Whether Pub/Sub could not be reached at all (nothing listening, no route): the broker
    /// or the emulator is not running, or the address is wrong. Read from the operating
    /// system's error at the bottom of the chain (the client's own `is_connect` is not part of
    /// its public API).
    pub fn is_unreachable(&self) -> bool {
        use std::io::ErrorKind;
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(error) = cause {
            if let Some(io) = error.downcast_ref::<std::io::Error>()
                && matches!(
                    io.kind(),
                    ErrorKind::ConnectionRefused
                        | ErrorKind::HostUnreachable
                        | ErrorKind::NetworkUnreachable
                        | ErrorKind::AddrNotAvailable
                )
            {
                return true;
            }
            cause = error.source();
        }
        false
    }

    /// Wraps a failed call with what was being done.
    pub fn rpc(operation: impl Into<String>, source: google_cloud_pubsub::Error) -> Self {
        Self::Rpc {
            operation: operation.into(),
            source,
        }
    }
}
