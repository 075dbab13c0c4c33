//! The audit log's error type.

/// What can go wrong in the audit log (appending, signing, verifying, loading keys).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The database failed or refused a statement.
    #[error("audit database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A key file could not be read.
    #[error("cannot read key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A PEM did not hold a usable RSA key.
    #[error("invalid RSA key ({what}): {reason}")]
    InvalidKey {
        /// Which key (file name or key id).
        what: String,
        /// Why it is unusable.
        reason: String,
    },
    /// Signing failed (the key is unusable for RSASSA-PKCS1-v1_5 with SHA-256).
    #[error("signing with key {key_id} failed: {reason}")]
    Signing {
        /// The key id.
        key_id: String,
        /// Why.
        reason: String,
    },
    /// A checkpoint given to the verifier is malformed.
    #[error("invalid checkpoint: {0}")]
    InvalidCheckpoint(String),
    /// The chain since the last checkpoint does not verify, so the checkpointer will not sign
    /// its head.
    #[error("audit chain broken at seq {seq} ({reason}): {detail}; not checkpointing it")]
    Unverifiable {
        /// The first bad seq.
        seq: i64,
        /// The break's code.
        reason: &'static str,
        /// Specifics.
        detail: String,
    },
    /// A stored row does not have the shape of its format version (e.g. a hash that is not 32
    /// bytes); the verifier reports this as a break, other callers as an error.
    #[error("malformed audit row at seq {seq}: {reason}")]
    MalformedRow {
        /// The row's seq.
        seq: i64,
        /// What is wrong.
        reason: String,
    },
}
