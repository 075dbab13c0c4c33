//! The scan service's configuration, parsed once at start-up.

use common::config::{CommonConfig, ConfigError, Env};
use secrecy::SecretString;

/// Everything the scan service reads from the environment.
#[derive(Debug, Clone)]
pub struct ScanConfig {
    /// Shared settings.
    pub common: CommonConfig,
    /// `DATABASE_READ_URL`: replica for tag and key look-ups (defaults to `DATABASE_URL`).
    pub database_read_url: SecretString,
}

impl ScanConfig {
    /// Parses the scan service's variables.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let common = CommonConfig::from_env(env, "127.0.0.1:8080")?;
        let database_read_url = match env.raw("DATABASE_READ_URL") {
            None => common.database_url.clone(),
            Some(v) if v.starts_with("postgres://") || v.starts_with("postgresql://") => {
                SecretString::from(v.to_owned())
            }
            Some(v) => {
                return Err(ConfigError::new(
                    "DATABASE_READ_URL",
                    v,
                    true,
                    "not a PostgreSQL URL",
                    "postgres://[user[:password]@]host[:port]/db",
                ));
            }
        };
        Ok(Self {
            common,
            database_read_url,
        })
    }
}
