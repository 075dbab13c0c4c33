//! The factory service's configuration, parsed once at start-up.

use common::config::{CommonConfig, ConfigError, Env};

/// Everything the factory service reads from the environment.
#[derive(Debug, Clone)]
pub struct FactoryConfig {
    /// Shared settings.
    pub common: CommonConfig,
}

impl FactoryConfig {
    /// Parses the factory service's variables.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let common = CommonConfig::from_env(env, "127.0.0.1:8081")?;
        Ok(Self { common })
    }
}
