//! The audit log's settings (`AUDIT_*`), parsed once at start-up. The signing key is loaded
//! here, so a missing or malformed key stops start-up with one clear line.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::config::{ConfigError, Env};

use super::signing::{self, PublicKey, Signer};

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
            Some(path) => Some(Signer::from_file(Path::new(path), key_id).map_err(|e| {
                ConfigError::new(
                    "AUDIT_SIGNING_KEY_FILE",
                    path,
                    false,
                    e,
                    "a readable PKCS#8 PEM RSA private key of 2048 to 4096 bits",
                )
            })?),
        };
        let signer = match (signer, previous_public_keys(env)?) {
            (Some(signer), Some(previous)) => {
                // The current key must stay the one its id verifies with.
                if previous.iter().any(|(id, _)| id == signer.key_id()) {
                    return Err(ConfigError::new(
                        "AUDIT_PREVIOUS_PUBLIC_KEYS",
                        env.raw("AUDIT_PREVIOUS_PUBLIC_KEYS").unwrap_or_default(),
                        false,
                        format!("lists the current key id {:?}", signer.key_id()),
                        "only the ids of earlier keys, none of them AUDIT_SIGNING_KEY_ID",
                    ));
                }
                Some(signer.with_previous_keys(previous))
            }
            (None, Some(_)) => {
                return Err(ConfigError::missing(
                    "AUDIT_SIGNING_KEY_FILE",
                    "the current signing key when AUDIT_PREVIOUS_PUBLIC_KEYS lists earlier ones",
                ));
            }
            (signer, None) => signer,
        };
        let signer = signer.map(Arc::new);
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

/// `AUDIT_PREVIOUS_PUBLIC_KEYS`: `KEY_ID=FILE` pairs, comma-separated, of the keys the signing
/// key succeeded, or `none`; `None` when unset.
fn previous_public_keys(env: &Env) -> Result<Option<Vec<(String, PublicKey)>>, ConfigError> {
    const VAR: &str = "AUDIT_PREVIOUS_PUBLIC_KEYS";
    const EXPECTED: &str = "comma-separated KEY_ID=FILE pairs, each FILE a PEM RSA public key \
        (BEGIN PUBLIC KEY or BEGIN RSA PUBLIC KEY), e.g. audit-2026-01=/keys/old.pub.pem, or none";
    let Some(raw) = env.raw(VAR) else {
        return Ok(None);
    };
    // Strict, with no earlier key: any key id but the current one is a break.
    if raw == "none" {
        return Ok(Some(Vec::new()));
    }
    let mut keys = Vec::new();
    for entry in env.list(VAR) {
        let bad = |problem: String| ConfigError::new(VAR, raw, false, problem, EXPECTED);
        let (id, path) = entry
            .split_once('=')
            .ok_or_else(|| bad(format!("{entry:?} is not KEY_ID=FILE")))?;
        let (id, path) = (id.trim(), path.trim());
        if !signing::valid_key_id(id) {
            return Err(bad(format!(
                "{id:?} is not a key id (1 to 64 of A-Z a-z 0-9 . _ -)"
            )));
        }
        let pem = common::config::read_key_file_text(path)
            .map_err(|e| bad(format!("cannot read {path}: {e}")))?;
        let key = PublicKey::from_pem(&pem).map_err(|e| bad(format!("{path}: {e}")))?;
        if keys.iter().any(|(known, _)| known == id) {
            return Err(bad(format!("{id:?} is listed twice")));
        }
        keys.push((id.to_owned(), key));
    }
    Ok(Some(keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    fn config(previous: &str, with_key: bool) -> Result<AuditConfig, String> {
        let mut pairs = vec![("AUDIT_PREVIOUS_PUBLIC_KEYS".to_owned(), previous.to_owned())];
        if with_key {
            pairs.push(("AUDIT_SIGNING_KEY_FILE".into(), fixture("audit_k2.pem")));
            pairs.push(("AUDIT_SIGNING_KEY_ID".into(), "k2".into()));
        }
        AuditConfig::from_env(&Env::from_pairs(pairs)).map_err(|e| e.to_string())
    }

    #[test]
    fn previous_public_keys_are_loaded_or_refused_naming_the_variable() {
        let previous = |c: &AuditConfig| {
            c.signer.as_ref().and_then(|s| {
                s.previous_keys()
                    .map(|k| k.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>())
            })
        };
        let pair = format!("k1={}", fixture("audit_k1.pub.pem"));
        assert_eq!(
            config(&pair, true).map(|c| previous(&c)),
            Ok(Some(vec!["k1".to_owned()]))
        );
        assert_eq!(config("none", true).map(|c| previous(&c)), Ok(Some(vec![])));
        assert_eq!(config("", true).map(|c| previous(&c)), Ok(None));
        for (value, problem) in [
            ("k1", "\"k1\" is not KEY_ID=FILE"),
            ("bad id=/x", "\"bad id\" is not a key id"),
            ("k1=/nonexistent.pem", "cannot read /nonexistent.pem"),
            (
                &format!("k1={0},k1={0}", fixture("audit_k1.pub.pem")),
                "\"k1\" is listed twice",
            ),
            (
                &format!("k2={}", fixture("audit_k1.pub.pem")),
                "lists the current key id \"k2\"",
            ),
        ] {
            let e = config(value, true).err().unwrap_or_default();
            assert!(
                e.contains("AUDIT_PREVIOUS_PUBLIC_KEYS") && e.contains(problem),
                "{value}: {e}"
            );
        }
        // A private key where the public one belongs is refused, not used.
        let private = format!("k1={}", fixture("audit_k1.pem"));
        assert!(config(&private, true).is_err());
        let e = config(&pair, false).err().unwrap_or_default();
        assert!(e.contains("AUDIT_SIGNING_KEY_FILE"), "{e}");
    }
}
