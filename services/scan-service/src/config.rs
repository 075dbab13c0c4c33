//! The scan service's configuration, parsed once at start-up.

use std::time::Duration;

use common::config::{CommonConfig, ConfigError, Env};
use rand::RngCore as _;
use secrecy::{ExposeSecret as _, SecretString};

/// Parameters of one token bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BucketLimits {
    /// Refill, in tokens per minute (also the `X-RateLimit-Limit` header).
    pub per_minute: u32,
    /// Capacity: the burst a new client may spend at once.
    pub burst: u32,
}

/// `RATE_LIMIT_*`.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitConfig {
    /// Anonymous callers, per client IP.
    pub ip: BucketLimits,
    /// Callers with a valid API key, per key (unless the key carries its own rate).
    pub key: BucketLimits,
    /// `RATE_LIMIT_FAIL_CLOSED`: refuse with 503 (true) or fall back to an in-process limiter
    /// (false) when Redis is unusable.
    pub fail_closed: bool,
}

/// `SCAN_MIN_RESPONSE_MS` / `SCAN_JITTER_MS`.
#[derive(Debug, Clone, Copy)]
pub struct TimingConfig {
    /// The response-time floor.
    pub min_response: Duration,
    /// Half-width of the uniform jitter added to the floor.
    pub jitter: Duration,
}

/// A timing setting that is used, but not as written (start-up warns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimingWarning {
    /// `SCAN_JITTER_MS` was set with `SCAN_MIN_RESPONSE_MS=0`: normalization is off.
    JitterIgnored,
    /// `SCAN_JITTER_MS` exceeds `SCAN_MIN_RESPONSE_MS`: release times below zero delay are
    /// cut to no delay, so the spread is lopsided.
    JitterClipped,
}

/// Everything the scan service reads from the environment.
#[derive(Debug, Clone)]
pub struct ScanConfig {
    /// Shared settings.
    pub common: CommonConfig,
    /// `DATABASE_READ_URL`: replica for tag and key look-ups (defaults to `DATABASE_URL`).
    pub database_read_url: SecretString,
    /// Rate limiting.
    pub rate_limit: RateLimitConfig,
    /// Timing normalization.
    pub timing: TimingConfig,
    /// Set when the timing settings are used other than as written.
    pub timing_warning: Option<TimingWarning>,
    /// `IP_HASH_KEY`: HMAC key for the client-IP hash in scan events.
    pub ip_hash_key: SecretString,
    /// Whether `ip_hash_key` was generated because `IP_HASH_KEY` was unset (start-up warns:
    /// hashes then differ per process and per restart).
    pub ip_hash_key_generated: bool,
    /// Whether the given `IP_HASH_KEY` is shorter than [`IP_HASH_KEY_MIN`] characters. HMAC
    /// takes a key of any length, so it is used; start-up warns that it is easy to guess.
    pub ip_hash_key_short: bool,
}

/// Characters below which `IP_HASH_KEY` is used but warned about.
pub const IP_HASH_KEY_MIN: usize = 16;

/// Limits are capped so that `per_minute * 60` seconds of state and every header value stay
/// well inside the integers Redis and Lua handle exactly.
const MAX_RATE: u32 = 10_000_000;

impl ScanConfig {
    /// Parses the scan service's variables. A variable it reads whose value is not UTF-8 is
    /// the error reported, whatever else failed: such a value reads as unset, and an error
    /// saying so ("required but not set") would mislead.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let parsed = Self::read(env);
        env.refuse_unreadable()?;
        parsed
    }

    fn read(env: &Env) -> Result<Self, ConfigError> {
        let common = CommonConfig::from_env(env, "127.0.0.1:8080")?;
        let database_read_url = common::config::postgres_url(
            env,
            "DATABASE_READ_URL",
            common.database_url.expose_secret(),
        )?;
        let rate_limit = RateLimitConfig {
            ip: BucketLimits {
                per_minute: env.int_in("RATE_LIMIT_IP_PER_MINUTE", 60, 1, MAX_RATE)?,
                burst: env.int_in("RATE_LIMIT_IP_BURST", 20, 1, MAX_RATE)?,
            },
            key: BucketLimits {
                per_minute: env.int_in("RATE_LIMIT_KEY_PER_MINUTE", 600, 1, MAX_RATE)?,
                burst: env.int_in("RATE_LIMIT_KEY_BURST", 100, 1, MAX_RATE)?,
            },
            fail_closed: env.bool("RATE_LIMIT_FAIL_CLOSED", false)?,
        };
        let min_ms: u64 = env.int_in("SCAN_MIN_RESPONSE_MS", 80, 0, 10_000)?;
        let jitter_ms: u64 = env.int_in("SCAN_JITTER_MS", 10, 0, 10_000)?;
        // A floor of 0 turns normalization off whatever the jitter (a jitter around no floor
        // hides nothing), so `SCAN_MIN_RESPONSE_MS=0` alone is enough. A jitter wider than a
        // non-zero floor is used, its lower end cut at no delay; start-up warns about both.
        let timing_warning = match (min_ms, jitter_ms) {
            (0, 0) => None,
            (0, _) => Some(TimingWarning::JitterIgnored),
            (min, jitter) if jitter > min => Some(TimingWarning::JitterClipped),
            _ => None,
        };
        let jitter_ms = if min_ms == 0 { 0 } else { jitter_ms };
        // A scan held up to the request timeout is answered 503 instead (the timing layer sits
        // inside the timeout).
        let timeout_ms = common.http.request_timeout.as_millis();
        if u128::from(min_ms + jitter_ms) >= timeout_ms {
            return Err(ConfigError::new(
                "SCAN_MIN_RESPONSE_MS",
                &min_ms.to_string(),
                false,
                format!(
                    "with SCAN_JITTER_MS={jitter_ms}, scans would be held up to {} ms, not \
                     below REQUEST_TIMEOUT_SEC ({timeout_ms} ms), so those held longest would \
                     be answered 503",
                    min_ms + jitter_ms
                ),
                "SCAN_MIN_RESPONSE_MS + SCAN_JITTER_MS below REQUEST_TIMEOUT_SEC",
            ));
        }
        let (ip_hash_key, ip_hash_key_generated) = match env.raw("IP_HASH_KEY") {
            Some(v) => (SecretString::from(v.to_owned()), false),
            None => {
                let mut key = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut key);
                (SecretString::from(hex::encode(key)), true)
            }
        };
        Ok(Self {
            common,
            database_read_url,
            rate_limit,
            timing: TimingConfig {
                min_response: Duration::from_millis(min_ms),
                jitter: Duration::from_millis(jitter_ms),
            },
            timing_warning,
            ip_hash_key_short: !ip_hash_key_generated
                && ip_hash_key.expose_secret().chars().count() < IP_HASH_KEY_MIN,
            ip_hash_key,
            ip_hash_key_generated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<ScanConfig, ConfigError> {
        ScanConfig::from_env(&Env::from_pairs(pairs.iter().copied()))
    }

    /// Start-up warns about variables that look like settings but are none
    /// (`common::startup_warnings`): every variable read here must be in its list, or setting
    /// it would be warned about as a misspelling.
    #[test]
    fn every_variable_read_is_a_known_setting() -> Result<(), ConfigError> {
        let env = Env::from_pairs([("APP_ENV", "development")]);
        ScanConfig::from_env(&env)?;
        assert!(env.read_names().len() > 20, "{:?}", env.read_names());
        assert_eq!(
            common::startup_warnings::unlisted_reads(&env),
            Vec::<String>::new(),
            "read but not in SETTINGS"
        );
        Ok(())
    }

    /// An `IP_HASH_KEY` that is not UTF-8 stops start-up: read as unset, it became a random
    /// key of this process alone, and the warning said it was not set.
    #[test]
    #[cfg(unix)]
    fn an_ip_hash_key_that_is_not_utf8_stops_start_up() -> Result<(), &'static str> {
        use std::os::unix::ffi::OsStringExt as _;
        let env = Env::from_os_vars([(
            "IP_HASH_KEY".into(),
            std::ffi::OsString::from_vec(vec![0xde, 0xad, 0xbe, 0xef]),
        )]);
        let e = ScanConfig::from_env(&env).err().ok_or("refused")?;
        assert_eq!(e.var, "IP_HASH_KEY");
        assert!(!e.to_string().contains('\n'));
        Ok(())
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = parse(&[]).unwrap();
        assert_eq!(
            c.rate_limit.ip,
            BucketLimits {
                per_minute: 60,
                burst: 20
            }
        );
        assert_eq!(
            c.rate_limit.key,
            BucketLimits {
                per_minute: 600,
                burst: 100
            }
        );
        assert!(!c.rate_limit.fail_closed);
        assert_eq!(c.timing.min_response, Duration::from_millis(80));
        assert_eq!(c.timing.jitter, Duration::from_millis(10));
        assert!(c.ip_hash_key_generated);
        assert_eq!(c.ip_hash_key.expose_secret().len(), 64);
        // A new random key per process.
        assert_ne!(
            parse(&[]).unwrap().ip_hash_key.expose_secret(),
            c.ip_hash_key.expose_secret()
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value) in [
            ("RATE_LIMIT_IP_PER_MINUTE", "0"),
            ("RATE_LIMIT_IP_BURST", "lots"),
            ("RATE_LIMIT_KEY_PER_MINUTE", "-5"),
            ("RATE_LIMIT_KEY_BURST", "1.5"),
            ("RATE_LIMIT_FAIL_CLOSED", "maybe"),
            ("SCAN_MIN_RESPONSE_MS", "fast"),
            ("SCAN_JITTER_MS", "-1"),
            ("DATABASE_READ_URL", "mysql://x"),
            ("DATABASE_READ_URL", "postgres://db:notaport/x"),
        ] {
            let e = parse(&[(var, value)]).unwrap_err();
            assert_eq!(e.var, var);
            assert!(!e.to_string().contains('\n'));
        }
    }

    #[test]
    fn a_zero_floor_turns_normalization_off_whatever_the_jitter() {
        // The default jitter (10) with the floor at 0: off, not a start-up failure.
        let c = parse(&[("SCAN_MIN_RESPONSE_MS", "0")]).unwrap();
        assert_eq!(c.timing.min_response, Duration::ZERO);
        assert_eq!(c.timing.jitter, Duration::ZERO);
        assert_eq!(c.timing_warning, Some(TimingWarning::JitterIgnored));
        let c = parse(&[("SCAN_MIN_RESPONSE_MS", "0"), ("SCAN_JITTER_MS", "0")]).unwrap();
        assert_eq!(c.timing_warning, None);
        // A jitter wider than a non-zero floor is kept, with a warning.
        let c = parse(&[("SCAN_MIN_RESPONSE_MS", "5"), ("SCAN_JITTER_MS", "10")]).unwrap();
        assert_eq!(c.timing.jitter, Duration::from_millis(10));
        assert_eq!(c.timing_warning, Some(TimingWarning::JitterClipped));
        assert_eq!(parse(&[]).unwrap().timing_warning, None);
    }

    #[test]
    fn a_floor_the_request_timeout_would_cut_refuses_start_up() {
        let held_past = |min: &str, jitter: &str| {
            parse(&[
                ("SCAN_MIN_RESPONSE_MS", min),
                ("SCAN_JITTER_MS", jitter),
                ("REQUEST_TIMEOUT_SEC", "1"),
            ])
        };
        let e = held_past("3000", "0").unwrap_err();
        assert_eq!(e.var, "SCAN_MIN_RESPONSE_MS");
        assert!(e.to_string().contains("REQUEST_TIMEOUT_SEC"), "{e}");
        // The jitter's upper end counts.
        assert!(held_past("950", "50").is_err());
        assert!(held_past("900", "50").is_ok());
        // Off is off, whatever the timeout.
        assert!(held_past("0", "5000").is_ok());
    }

    #[test]
    fn a_short_ip_hash_key_is_used_with_a_warning() {
        let c = parse(&[("IP_HASH_KEY", "short-secret")]).unwrap();
        assert_eq!(c.ip_hash_key.expose_secret(), "short-secret");
        assert!(c.ip_hash_key_short && !c.ip_hash_key_generated);
        let c = parse(&[("IP_HASH_KEY", "0123456789abcdef")]).unwrap();
        assert!(!c.ip_hash_key_short);
        assert!(!parse(&[]).unwrap().ip_hash_key_short);
    }

    #[test]
    fn explicit_values() {
        let c = parse(&[
            ("RATE_LIMIT_FAIL_CLOSED", "true"),
            ("SCAN_MIN_RESPONSE_MS", "0"),
            ("SCAN_JITTER_MS", "0"),
            ("IP_HASH_KEY", "0123456789abcdef0123"),
        ])
        .unwrap();
        assert!(c.rate_limit.fail_closed);
        assert_eq!(c.timing.min_response, Duration::ZERO);
        assert!(!c.ip_hash_key_generated);
    }
}
