//! The audit log's settings (`AUDIT_*`), parsed once at start-up. The signing key is loaded
//! here, so a missing or malformed key stops start-up with one clear line.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::config::{ConfigError, Env};

use super::signing::{self, Signer};

/// Audit settings.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// The signing key from `AUDIT_SIGNING_KEY_FILE` (id `AUDIT_SIGNING_KEY_ID`, default the key's
    /// fingerprint); `None`: the chain is hashed but unsigned.
    pub signer: Option<Arc<Signer>>,
    /// `AUDIT_SIGN_EVENTS`: sign every event, not only checkpoints.
    pub sign_events: bool,
    /// `AUDIT_CHECKPOINT_EVERY`: checkpoint after this many events.
    pub checkpoint_every: i64,
    /// `AUDIT_CHECKPOINT_INTERVAL_SEC`: checkpoint at least this often while events arrive.
    pub checkpoint_interval: Duration,
    /// `AUDIT_VERIFY_INTERVAL_SEC`: how often the background job verifies new events.
    pub verify_interval: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            signer: None,
            sign_events: false,
            checkpoint_every: 100,
            checkpoint_interval: Duration::from_secs(60),
            verify_interval: Duration::from_secs(300),
        }
    }
}

impl AuditConfig {
    /// Parses the `AUDIT_*` variables and loads the key.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let key_id = env.raw("AUDIT_SIGNING_KEY_ID");
        if let Some(id) = key_id
            && !signing::valid_key_id(id)
        {
            return Err(ConfigError::new(
                "AUDIT_SIGNING_KEY_ID",
                id,
                false,
                "not a valid key id",
                "1 to 64 of A-Z a-z 0-9 . _ -",
            ));
        }
        let signer = match env.raw("AUDIT_SIGNING_KEY_FILE") {
            None => {
                if key_id.is_some() {
                    return Err(ConfigError::missing(
                        "AUDIT_SIGNING_KEY_FILE",
                        "the PKCS#8 PEM RSA private key for AUDIT_SIGNING_KEY_ID",
                    ));
                }
                None
            }
            Some(path) => Some(Arc::new(
                Signer::from_file(Path::new(path), key_id).map_err(|e| {
                    ConfigError::new(
                        "AUDIT_SIGNING_KEY_FILE",
                        path,
                        false,
                        e,
                        "a readable PKCS#8 PEM RSA private key of 2048 to 4096 bits",
                    )
                })?,
            )),
        };
        let sign_events = env.bool("AUDIT_SIGN_EVENTS", false)?;
        if sign_events && signer.is_none() {
            return Err(ConfigError::missing(
                "AUDIT_SIGNING_KEY_FILE",
                "a PKCS#8 PEM RSA private key when AUDIT_SIGN_EVENTS=true",
            ));
        }
        Ok(Self {
            signer,
            sign_events,
            checkpoint_every: env.int_in("AUDIT_CHECKPOINT_EVERY", 100, 1, 1_000_000)?,
            checkpoint_interval: Duration::from_secs(env.int_in(
                "AUDIT_CHECKPOINT_INTERVAL_SEC",
                60,
                1,
                86_400,
            )?),
            verify_interval: Duration::from_secs(env.int_in(
                "AUDIT_VERIFY_INTERVAL_SEC",
                300,
                10,
                86_400,
            )?),
        })
    }
}
