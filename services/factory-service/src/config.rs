//! The factory service's configuration, parsed once at start-up.

use std::time::Duration;

use common::config::{CommonConfig, ConfigError, Env};
use secrecy::{ExposeSecret, SecretBox, SecretString};

/// Shortest accepted access-token signing secret: HS256 wants at least as many bytes as its
/// output (32).
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// Everything the factory service reads from the environment.
#[derive(Debug, Clone)]
pub struct FactoryConfig {
    /// Shared settings.
    pub common: CommonConfig,
    /// Sign-in and tokens.
    pub auth: AuthConfig,
    /// `ADMIN_RATE_LIMIT_*`: the per-client token bucket on the admin API.
    pub admin_rate_limit: RateLimitConfig,
    /// `IDEMPOTENCY_TTL_SEC`: how long idempotent results are kept.
    pub idempotency_ttl: Duration,
    /// `MAX_DELIVERY_ATTEMPTS` (1 to 100, Pub/Sub's ceiling): deliveries of a scan event before
    /// it is dead-lettered.
    pub max_delivery_attempts: u32,
    /// `SCAN_EVENTS_STREAMS`, `_MAX_OUTSTANDING`, `_BATCH_SIZE`, `_BATCH_WAIT_MS`,
    /// `_DB_CONNECTIONS`: how one scan-event consumer pulls and batches.
    pub scan_events: crate::events::settings::ConsumerConfig,
    /// `SCAN_EVENTS_CONSUMER` (default true): whether `serve` runs the scan-event consumer
    /// beside the API. A deployment whose `worker`s consume turns it off, so that the API's
    /// instances neither pull nor need the right to. `worker` always consumes.
    pub serve_consumer: bool,
    /// `AUDIT_*`: the audit log's signing key and checkpoint/verification cadence.
    pub audit: crate::audit::AuditConfig,
    /// `SCANS_RETENTION_DAYS` (default 0: every scan kept): the days a `scans` row is kept
    /// (`events::retention`).
    pub scans_retention_days: Option<u32>,
}

/// Token lifetimes, the signing secret and the bootstrap admin.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// `JWT_SECRET` or the contents of `JWT_KEY_FILE`; `None` when neither is set (allowed only
    /// in development, where [`FactoryConfig::jwt_secret`] makes one up).
    pub jwt_secret: Option<JwtSecret>,
    /// `ACCESS_TOKEN_TTL_SEC`.
    pub access_ttl: Duration,
    /// `REFRESH_TOKEN_TTL_SEC`.
    pub refresh_ttl: Duration,
    /// `REFRESH_SESSION_MAX_SEC`: how long after its login a session can be refreshed at all.
    pub refresh_session_max: Duration,
    /// `BOOTSTRAP_ADMIN_EMAIL` / `BOOTSTRAP_ADMIN_PASSWORD`.
    pub bootstrap_admin: Option<BootstrapAdmin>,
}

/// The access-token signing secret (never logged).
#[derive(Debug, Clone)]
pub struct JwtSecret(pub std::sync::Arc<SecretBox<Vec<u8>>>);

impl JwtSecret {
    /// Wraps raw secret bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(std::sync::Arc::new(SecretBox::new(Box::new(bytes))))
    }

    /// The secret bytes, for building keys.
    pub fn expose(&self) -> &[u8] {
        self.0.expose_secret()
    }
}

/// The first admin, created at start-up when the users table is empty.
#[derive(Debug, Clone)]
pub struct BootstrapAdmin {
    /// Their email.
    pub email: String,
    /// Their password (never logged).
    pub password: SecretString,
}

/// A token bucket: `rps` tokens per second, at most `burst` banked.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitConfig {
    /// Refill rate in tokens per second.
    pub rps: u32,
    /// Bucket size.
    pub burst: u32,
}

impl FactoryConfig {
    /// Parses the factory service's variables. A variable it reads whose value is not UTF-8 is
    /// the error reported, whatever else failed: such a value reads as unset, and an error
    /// saying so ("required but not set") would mislead.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let parsed = Self::read(env);
        env.refuse_unreadable()?;
        parsed
    }

    fn read(env: &Env) -> Result<Self, ConfigError> {
        let common = CommonConfig::from_env(env, "127.0.0.1:8081")?;
        let access_secs: u64 = env.int_in("ACCESS_TOKEN_TTL_SEC", 900, 1, 86_400)?;
        let refresh_secs: u64 = env.int_in("REFRESH_TOKEN_TTL_SEC", 2_592_000, 60, 31_536_000)?;
        let auth = AuthConfig {
            jwt_secret: jwt_secret(env)?,
            access_ttl: Duration::from_secs(access_secs),
            refresh_ttl: Duration::from_secs(refresh_secs),
            refresh_session_max: Duration::from_secs(session_max_secs(env, refresh_secs)?),
            bootstrap_admin: bootstrap_admin(env)?,
        };
        let admin_rate_limit = RateLimitConfig {
            rps: env.int_in("ADMIN_RATE_LIMIT_RPS", 10, 1, 1_000_000)?,
            burst: env.int_in("ADMIN_RATE_LIMIT_BURST", 20, 1, 1_000_000)?,
        };
        let idempotency_secs: u64 = env.int_in("IDEMPOTENCY_TTL_SEC", 86_400, 1, 2_592_000)?;
        Ok(Self {
            common,
            auth,
            admin_rate_limit,
            idempotency_ttl: Duration::from_secs(idempotency_secs),
            max_delivery_attempts: env.int_in("MAX_DELIVERY_ATTEMPTS", 5, 1, 100)?,
            scan_events: crate::events::settings::ConsumerConfig::from_env(env)?,
            serve_consumer: env.bool("SCAN_EVENTS_CONSUMER", true)?,
            audit: crate::audit::AuditConfig::from_env(env)?,
            scans_retention_days: scans_retention_days(env)?,
        })
    }

    /// The signing secret for serving. Outside development a missing secret is an error; in
    /// development a random one is made up (tokens then die with the process), and the second
    /// value says so, so that start-up can warn once logging is up.
    pub fn jwt_secret(&self) -> Result<(JwtSecret, bool), ConfigError> {
        match &self.auth.jwt_secret {
            Some(secret) => Ok((secret.clone(), false)),
            None if self.common.is_development() => {
                let mut bytes = vec![0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
                Ok((JwtSecret::new(bytes), true))
            }
            None => Err(ConfigError::missing(
                "JWT_SECRET",
                "JWT_SECRET (at least 32 bytes) or JWT_KEY_FILE (a file holding at least 32 bytes); \
                 only APP_ENV=development may run without one",
            )),
        }
    }
}

/// `SCANS_RETENTION_DAYS`: 0 (the default) keeps every scan; otherwise the days a `scans` row
/// is kept, at least `events::retention::MIN_DAYS` (longer than Pub/Sub keeps a message, so
/// that a deleted row's event cannot come again and be counted twice).
fn scans_retention_days(env: &Env) -> Result<Option<u32>, ConfigError> {
    use crate::events::retention::{MAX_DAYS, MIN_DAYS};
    let expected = format!(
        "0 (keep every scan) or a whole number of days from {MIN_DAYS} to {MAX_DAYS} \
         (longer than Pub/Sub keeps a message)"
    );
    // Refusals name the whole rule, not only the outer range.
    let days: u32 = env
        .int_in("SCANS_RETENTION_DAYS", 0, 0, MAX_DAYS)
        .map_err(|e| ConfigError {
            expected: expected.clone(),
            ..e
        })?;
    match days {
        0 => Ok(None),
        d if d < MIN_DAYS => Err(ConfigError::new(
            "SCANS_RETENTION_DAYS",
            env.raw("SCANS_RETENTION_DAYS").unwrap_or_default(),
            false,
            "too short",
            expected,
        )),
        d => Ok(Some(d)),
    }
}

fn jwt_secret(env: &Env) -> Result<Option<JwtSecret>, ConfigError> {
    let expected = "at least 32 bytes of random data, e.g. `openssl rand -base64 48`";
    if let Some(secret) = env.secret("JWT_SECRET") {
        let bytes = secret.expose_secret().as_bytes().to_vec();
        if bytes.len() < MIN_JWT_SECRET_BYTES {
            return Err(ConfigError::new(
                "JWT_SECRET",
                "",
                true,
                "too short",
                expected,
            ));
        }
        return Ok(Some(JwtSecret::new(bytes)));
    }
    let Some(path) = env.raw("JWT_KEY_FILE") else {
        return Ok(None);
    };
    let contents = common::config::read_key_file(path).map_err(|e| {
        ConfigError::new(
            "JWT_KEY_FILE",
            path,
            false,
            format!("cannot be read ({e})"),
            "a readable file path",
        )
    })?;
    // Editors add a trailing newline; it is not part of the secret.
    let trimmed = contents.trim_ascii().to_vec();
    if trimmed.len() < MIN_JWT_SECRET_BYTES {
        return Err(ConfigError::new(
            "JWT_KEY_FILE",
            path,
            false,
            "the file holds fewer than 32 bytes",
            expected,
        ));
    }
    Ok(Some(JwtSecret::new(trimmed)))
}

fn bootstrap_admin(env: &Env) -> Result<Option<BootstrapAdmin>, ConfigError> {
    let email = env.raw("BOOTSTRAP_ADMIN_EMAIL");
    let password = env.password("BOOTSTRAP_ADMIN_PASSWORD");
    match (email, password) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError::missing(
            "BOOTSTRAP_ADMIN_PASSWORD",
            "a password of at least 12 characters, set together with BOOTSTRAP_ADMIN_EMAIL",
        )),
        (None, Some(_)) => Err(ConfigError::missing(
            "BOOTSTRAP_ADMIN_EMAIL",
            "an email address, set together with BOOTSTRAP_ADMIN_PASSWORD",
        )),
        (Some(email), Some(password)) => {
            let email = crate::users::normalize_email(email).map_err(|problem| {
                ConfigError::new(
                    "BOOTSTRAP_ADMIN_EMAIL",
                    email,
                    false,
                    problem,
                    "an email address such as admin@example.com",
                )
            })?;
            crate::users::check_password(password.expose_secret()).map_err(|problem| {
                ConfigError::new(
                    "BOOTSTRAP_ADMIN_PASSWORD",
                    "",
                    true,
                    problem,
                    "12 to 1024 characters",
                )
            })?;
            Ok(Some(BootstrapAdmin { email, password }))
        }
    }
}

/// `REFRESH_SESSION_MAX_SEC`: 90 days by default, never shorter than one refresh token's
/// lifetime (so a login's first token is never cut short).
fn session_max_secs(env: &Env, refresh_secs: u64) -> Result<u64, ConfigError> {
    const VAR: &str = "REFRESH_SESSION_MAX_SEC";
    const MAX: u64 = 315_360_000;
    // One expected form for every refusal, naming the lower bound's variable.
    let expected = format!("a whole number from REFRESH_TOKEN_TTL_SEC ({refresh_secs}) to {MAX}");
    let secs: u64 = env.parse(VAR, refresh_secs.max(7_776_000), &expected)?;
    let problem = if secs < refresh_secs {
        "shorter than REFRESH_TOKEN_TTL_SEC"
    } else if secs > MAX {
        "out of range"
    } else {
        return Ok(secs);
    };
    Err(ConfigError::new(
        VAR,
        env.raw(VAR).unwrap_or_default(),
        false,
        problem,
        expected,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<FactoryConfig, ConfigError> {
        FactoryConfig::from_env(&Env::from_pairs(pairs.iter().copied()))
    }

    /// Start-up warns about variables that look like settings but are none
    /// (`common::startup_warnings`): every variable read here must be in its list, or setting
    /// it would be warned about as a misspelling.
    #[test]
    fn every_variable_read_is_a_known_setting() -> Result<(), ConfigError> {
        let env = Env::from_pairs([("APP_ENV", "development")]);
        FactoryConfig::from_env(&env)?.jwt_secret()?;
        let _ = env.password("FACTORY_USER_PASSWORD");
        assert!(env.read_names().len() > 30, "{:?}", env.read_names());
        assert_eq!(
            common::startup_warnings::unlisted_reads(&env),
            Vec::<String>::new(),
            "read but not in SETTINGS"
        );
        Ok(())
    }

    /// A `JWT_SECRET` that is not UTF-8 stops start-up naming it, rather than reading as
    /// unset (a start-up error about a missing secret, or a random one in development).
    #[test]
    #[cfg(unix)]
    fn a_jwt_secret_that_is_not_utf8_stops_start_up() -> Result<(), &'static str> {
        use std::os::unix::ffi::OsStringExt as _;
        let env = Env::from_os_vars([
            ("APP_ENV".into(), "development".into()),
            (
                "JWT_SECRET".into(),
                std::ffi::OsString::from_vec([0xff; 48].to_vec()),
            ),
        ]);
        let e = FactoryConfig::from_env(&env).err().ok_or("refused")?;
        assert_eq!(e.var, "JWT_SECRET");
        assert_eq!(e.problem, "not valid UTF-8");
        // Read as unset, it would fail a check of its own ("set together"): still reported as
        // what it is.
        let env = Env::from_os_vars([
            ("BOOTSTRAP_ADMIN_EMAIL".into(), "admin@example.com".into()),
            (
                "BOOTSTRAP_ADMIN_PASSWORD".into(),
                std::ffi::OsString::from_vec([0xff; 16].to_vec()),
            ),
        ]);
        let e = FactoryConfig::from_env(&env).err().ok_or("refused")?;
        assert_eq!(e.var, "BOOTSTRAP_ADMIN_PASSWORD");
        assert_eq!(e.problem, "not valid UTF-8");
        Ok(())
    }

    /// `SCANS_RETENTION_DAYS`: 0 (the default) keeps every scan; a retention shorter than
    /// Pub/Sub keeps a message is refused, naming the range.
    #[test]
    fn scans_retention_is_off_by_default_and_longer_than_pubsub_keeps_a_message()
    -> Result<(), &'static str> {
        let days = |v: &str| parse(&[("SCANS_RETENTION_DAYS", v)]).map(|c| c.scans_retention_days);
        assert_eq!(
            parse(&[]).map_err(|_| "defaults")?.scans_retention_days,
            None
        );
        assert_eq!(days("0").map_err(|_| "0")?, None);
        assert_eq!(days("32").map_err(|_| "32")?, Some(32));
        for refused in ["1", "31", "36501", "-1", "thirty"] {
            let e = days(refused).err().ok_or("refused")?;
            assert_eq!(e.var, "SCANS_RETENTION_DAYS");
            assert!(e.expected.contains("32 to 36500"), "{}", e.expected);
        }
        Ok(())
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.auth.access_ttl, Duration::from_secs(900));
        assert_eq!(c.auth.refresh_ttl, Duration::from_secs(2_592_000));
        assert_eq!(c.auth.refresh_session_max, Duration::from_secs(7_776_000));
        assert_eq!((c.admin_rate_limit.rps, c.admin_rate_limit.burst), (10, 20));
        assert_eq!(c.idempotency_ttl, Duration::from_secs(86_400));
        assert_eq!(c.max_delivery_attempts, 5);
    }

    #[test]
    fn a_session_lives_at_least_as_long_as_one_refresh_token() {
        let year = parse(&[("REFRESH_TOKEN_TTL_SEC", "31536000")]).unwrap();
        assert_eq!(
            year.auth.refresh_session_max,
            Duration::from_secs(31_536_000)
        );
        let set = parse(&[("REFRESH_SESSION_MAX_SEC", "2592000")]).unwrap();
        assert_eq!(set.auth.refresh_session_max, Duration::from_secs(2_592_000));
        let e = parse(&[
            ("REFRESH_TOKEN_TTL_SEC", "86400"),
            ("REFRESH_SESSION_MAX_SEC", "3600"),
        ])
        .unwrap_err();
        assert_eq!(e.var, "REFRESH_SESSION_MAX_SEC");
        assert!(
            e.to_string().contains("REFRESH_TOKEN_TTL_SEC (86400)"),
            "{e}"
        );
        // Every refusal gives the same expected form: the lower bound is the token's lifetime
        // (the upper one's message said "from 0").
        for bad in ["ninety days", "315360001", "0"] {
            let e = parse(&[("REFRESH_SESSION_MAX_SEC", bad)]).unwrap_err();
            assert_eq!(e.var, "REFRESH_SESSION_MAX_SEC");
            assert!(
                e.to_string()
                    .contains("from REFRESH_TOKEN_TTL_SEC (2592000) to 315360000"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn jwt_secret_required_outside_development() {
        let c = parse(&[]).unwrap();
        let e = c.jwt_secret().unwrap_err();
        assert_eq!(e.var, "JWT_SECRET");
        let dev = parse(&[("APP_ENV", "development")]).unwrap();
        let (secret, generated) = dev.jwt_secret().unwrap();
        assert!(generated);
        assert_eq!(secret.expose().len(), 32);
    }

    #[test]
    fn short_secret_rejected_without_showing_it() {
        let e = parse(&[("JWT_SECRET", "tooshort")]).unwrap_err();
        assert_eq!(e.var, "JWT_SECRET");
        assert!(!e.to_string().contains("tooshort"));
    }

    #[test]
    fn jwt_key_file_is_read_trimmed_and_checked() {
        let dir = std::env::temp_dir().join(format!("vt-jwt-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.key");
        let secret = "0123456789abcdef0123456789abcdef0123";
        std::fs::write(&good, format!("{secret}\n")).unwrap();
        let c = parse(&[("JWT_KEY_FILE", good.to_str().unwrap())]).unwrap();
        let (read, generated) = c.jwt_secret().unwrap();
        assert!(!generated);
        assert_eq!(
            read.expose(),
            secret.as_bytes(),
            "the trailing newline is not part of it"
        );

        let short = dir.join("short.key");
        std::fs::write(&short, "short\n").unwrap();
        let e = parse(&[("JWT_KEY_FILE", short.to_str().unwrap())]).unwrap_err();
        assert_eq!(e.var, "JWT_KEY_FILE");
        assert!(!e.to_string().contains("short\n"));

        let missing = dir.join("missing.key");
        let e = parse(&[("JWT_KEY_FILE", missing.to_str().unwrap())]).unwrap_err();
        assert_eq!(e.var, "JWT_KEY_FILE");
        std::fs::remove_dir_all(&dir).unwrap();

        // Not a key file: refused, not read for ever (start-up hung).
        #[cfg(unix)]
        {
            let e = parse(&[("JWT_KEY_FILE", "/dev/zero")]).unwrap_err();
            assert_eq!(e.var, "JWT_KEY_FILE");
            assert!(e.problem.contains("larger than 64 KiB"), "{e}");
        }
    }

    #[test]
    fn bootstrap_needs_both() {
        assert!(parse(&[("BOOTSTRAP_ADMIN_EMAIL", "a@example.com")]).is_err());
        let c = parse(&[
            ("BOOTSTRAP_ADMIN_EMAIL", "Admin@Example.com"),
            ("BOOTSTRAP_ADMIN_PASSWORD", "correct horse battery"),
        ])
        .unwrap();
        assert_eq!(c.auth.bootstrap_admin.unwrap().email, "admin@example.com");
    }
}
