//! What start-up warns about in a configuration it accepts: a variable that looks like one of
//! ours but is not (a misspelling is otherwise silently ignored, and its setting takes its
//! default), and, in production, settings left at their development defaults.

use crate::config::{AppEnv, CommonConfig, Env};

/// Every variable either service or `factory-service`'s commands read (docs/CONFIGURATION.md).
/// Each service's tests check that its configuration reads no other.
pub const SETTINGS: &[&str] = &[
    "ACCESS_TOKEN_TTL_SEC",
    "ADMIN_RATE_LIMIT_BURST",
    "ADMIN_RATE_LIMIT_RPS",
    "APP_ENV",
    "AUDIT_CHECKPOINT_EVERY",
    "AUDIT_CHECKPOINT_INTERVAL_SEC",
    "AUDIT_PREVIOUS_PUBLIC_KEYS",
    "AUDIT_SIGNING_KEY_FILE",
    "AUDIT_SIGNING_KEY_ID",
    "AUDIT_SIGN_EVENTS",
    "AUDIT_VERIFY_INTERVAL_SEC",
    "BIND_ADDR",
    "BOOTSTRAP_ADMIN_EMAIL",
    "BOOTSTRAP_ADMIN_PASSWORD",
    "CIRCUIT_BREAKER_THRESHOLD",
    "CIRCUIT_BREAKER_TIMEOUT_SEC",
    "CORS_ORIGINS",
    "DATABASE_IDLE_TX_TIMEOUT_SEC",
    "DATABASE_READ_URL",
    "DATABASE_URL",
    "FACTORY_USER_PASSWORD",
    "IDEMPOTENCY_TTL_SEC",
    "IP_HASH_KEY",
    "JWT_KEY_FILE",
    "JWT_SECRET",
    "LOG_FORMAT",
    "MAX_BODY_BYTES",
    "MAX_DELIVERY_ATTEMPTS",
    "NO_COLOR",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "PUBSUB_EMULATOR_HOST",
    "PUBSUB_PROJECT_ID",
    "RATE_LIMIT_FAIL_CLOSED",
    "RATE_LIMIT_IP_BURST",
    "RATE_LIMIT_IP_PER_MINUTE",
    "RATE_LIMIT_KEY_BURST",
    "RATE_LIMIT_KEY_PER_MINUTE",
    "REDIS_KEY_PREFIX",
    "REDIS_TIMEOUT_MS",
    "REDIS_URL",
    "REFRESH_SESSION_MAX_SEC",
    "REFRESH_TOKEN_TTL_SEC",
    "REQUEST_TIMEOUT_SEC",
    "RUST_LOG",
    "SCANS_RETENTION_DAYS",
    "SCAN_EVENTS_BATCH_SIZE",
    "SCAN_EVENTS_BATCH_WAIT_MS",
    "SCAN_EVENTS_CONSUMER",
    "SCAN_EVENTS_DB_CONNECTIONS",
    "SCAN_EVENTS_DLQ_TOPIC",
    "SCAN_EVENTS_HOLD_SEC",
    "SCAN_EVENTS_MAX_OUTSTANDING",
    "SCAN_EVENTS_STREAMS",
    "SCAN_EVENTS_SUBSCRIPTION",
    "SCAN_EVENTS_TOPIC",
    "SCAN_JITTER_MS",
    "SCAN_MIN_RESPONSE_MS",
    "TRUSTED_PROXIES",
];

/// Variables of this repository's scripts and compose file (scripts/, docker-compose.yml), not
/// settings of the services but often in the environment that starts them: not warned about.
const PROJECT_VARIABLES: &[&str] = &[
    "AUDIT_PUBLIC_KEY_FILE",
    "AUDIT_VERIFY_APP_ENV",
    "FACTORY_BIN",
    "FACTORY_BIND_ADDR",
    "FACTORY_HOST_PORT",
    "POSTGRES_HOST_PORT",
    "PUBSUB_HOST_PORT",
    "REDIS_HOST_PORT",
    "SCAN_BIND_ADDR",
    "SCAN_HOST_PORT",
    "SCAN_SERVICE_BIN",
];

/// The variables `env` has been asked for that are not in [`SETTINGS`]: each service's tests
/// parse their configuration and expect none, so that setting any of them is never warned
/// about as a misspelling.
pub fn unlisted_reads(env: &Env) -> Vec<String> {
    env.read_names()
        .into_iter()
        .filter(|name| !SETTINGS.contains(&name.as_str()))
        .collect()
}

/// First words that only our settings start with: a variable starting with one that is not a
/// setting is taken for a misspelt one. (`OTEL_` is left out: the OpenTelemetry SDK reads its
/// own `OTEL_*` variables.)
const OUR_WORDS: &[&str] = &[
    "ACCESS",
    "ADMIN",
    "APP",
    "AUDIT",
    "BIND",
    "BOOTSTRAP",
    "CIRCUIT",
    "CORS",
    "DATABASE",
    "IDEMPOTENCY",
    "JWT",
    "PUBSUB",
    "RATE",
    "REDIS",
    "REFRESH",
    "SCAN",
    "SCANS",
    "TRUSTED",
];

/// What a process (a service, or a command) connects to, so that only the defaults it uses
/// are warned about.
#[derive(Debug, Clone, Copy)]
pub struct Uses<'a> {
    /// The variables that name its database, any one of which will do (scan: the read URL,
    /// whose default is `DATABASE_URL`); empty when it has none.
    pub database: &'a [&'a str],
    /// Whether it uses `REDIS_URL`.
    pub redis: bool,
    /// Whether it uses Pub/Sub (`PUBSUB_PROJECT_ID`, `PUBSUB_EMULATOR_HOST`).
    pub pubsub: bool,
}

/// The warnings for this environment and the configuration parsed from it, for a process that
/// `uses` these dependencies, one sentence each, for the caller to log once telemetry is up.
/// No value is quoted (any may be a secret).
pub fn startup_warnings(env: &Env, config: &CommonConfig, uses: Uses<'_>) -> Vec<String> {
    let mut warnings: Vec<String> = env
        .vars()
        .filter_map(|(name, _)| unknown_setting(name))
        .collect();
    warnings.sort();
    if config.app_env == AppEnv::Production {
        let database_defaulted = uses
            .database
            .first()
            .filter(|_| uses.database.iter().all(|var| env.raw(var).is_none()));
        let defaulted: Vec<&str> = database_defaulted
            .copied()
            .into_iter()
            .chain(["REDIS_URL"].into_iter().filter(|_| uses.redis))
            .chain(["PUBSUB_PROJECT_ID"].into_iter().filter(|_| uses.pubsub))
            .filter(|var| env.raw(var).is_none())
            .collect();
        if !defaulted.is_empty() {
            warnings.push(format!(
                "APP_ENV=production with {} unset: using the local development default{} \
                 (127.0.0.1, voketag-local)",
                defaulted.join(", "),
                if defaulted.len() > 1 { "s" } else { "" }
            ));
        }
        if uses.pubsub && config.pubsub.emulator_host.is_some() {
            warnings.push(
                "APP_ENV=production with PUBSUB_EMULATOR_HOST set: scan events go to a Pub/Sub \
                 emulator, not to Google Cloud"
                    .to_owned(),
            );
        }
    }
    warnings
}

/// A warning about `name` when it looks like one of our settings but is none, naming the
/// setting it most likely meant.
fn unknown_setting(name: &str) -> Option<String> {
    if SETTINGS.contains(&name) || PROJECT_VARIABLES.contains(&name) {
        return None;
    }
    let ours = name
        .split_once('_')
        .is_some_and(|(word, _)| OUR_WORDS.contains(&word));
    // Another program's variable may be a letter or two from one of ours (RUSTFLAGS, RUST_LOG):
    // only one that starts like ours is taken for a misspelling of more than one letter.
    let nearest = SETTINGS
        .iter()
        .map(|s| (strsim::damerau_levenshtein(name, s), *s))
        .min()
        .filter(|(distance, _)| *distance <= if ours { 3 } else { 1 });
    match nearest {
        Some((_, meant)) => Some(format!(
            "{name} is not a VokeTag setting and is ignored; did you mean {meant}?"
        )),
        None if ours => Some(format!(
            "{name} is not a VokeTag setting and is ignored (docs/CONFIGURATION.md lists them)"
        )),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: Uses<'static> = Uses {
        database: &["DATABASE_URL"],
        redis: true,
        pubsub: true,
    };

    fn warnings_of(pairs: &[(&str, &str)], uses: Uses<'_>) -> Vec<String> {
        let env = Env::from_pairs(pairs.iter().copied());
        let config = CommonConfig::from_env(&env, "127.0.0.1:8080").expect("valid");
        startup_warnings(&env, &config, uses)
    }

    fn warnings(pairs: &[(&str, &str)]) -> Vec<String> {
        warnings_of(pairs, SERVICE)
    }

    /// `migrate` in production (the Terraform job sets no `REDIS_URL`, which it never uses)
    /// warned about REDIS_URL at every release; the scan service given only its read URL,
    /// about DATABASE_URL.
    #[test]
    fn only_the_defaults_a_process_uses_are_told() {
        let migrate = Uses {
            database: &["DATABASE_URL"],
            redis: false,
            pubsub: false,
        };
        let w = warnings_of(
            &[
                ("APP_ENV", "production"),
                ("DATABASE_URL", "postgres://u@db/x"),
                ("PUBSUB_EMULATOR_HOST", "127.0.0.1:8085"),
            ],
            migrate,
        );
        assert_eq!(w, Vec::<String>::new());
        let scan = Uses {
            database: &["DATABASE_READ_URL", "DATABASE_URL"],
            redis: true,
            pubsub: true,
        };
        let production = [
            ("APP_ENV", "production"),
            ("REDIS_URL", "redis://cache:6379"),
            ("PUBSUB_PROJECT_ID", "acme-prod"),
        ];
        let mut with_read_url = production.to_vec();
        with_read_url.push(("DATABASE_READ_URL", "postgres://u@replica/x"));
        assert_eq!(warnings_of(&with_read_url, scan), Vec::<String>::new());
        assert_eq!(
            warnings_of(&production, scan),
            [
                "APP_ENV=production with DATABASE_READ_URL unset: using the local development \
              default (127.0.0.1, voketag-local)"
            ]
        );
    }

    #[test]
    fn misspelt_settings_are_named_with_the_one_they_likely_meant() {
        let w = warnings(&[
            ("APP_ENV", "development"),
            ("RATE_LIMIT_FAILCLOSED", "true"),
            ("TRUSTED_PROXY", "10.0.0.0/8"),
            ("CORS_ORIGIN", "https://a.example"),
            ("REDIS_TIMEOUT", "100"),
            ("SCAN_EVENTS_DEAD_LETTER_TOPIC", "dlq"),
            ("DATABSE_URL", "postgres://u@db/x"),
        ]);
        assert_eq!(
            w,
            [
                "CORS_ORIGIN is not a VokeTag setting and is ignored; did you mean CORS_ORIGINS?",
                "DATABSE_URL is not a VokeTag setting and is ignored; did you mean DATABASE_URL?",
                "RATE_LIMIT_FAILCLOSED is not a VokeTag setting and is ignored; did you mean \
                 RATE_LIMIT_FAIL_CLOSED?",
                "REDIS_TIMEOUT is not a VokeTag setting and is ignored; did you mean \
                 REDIS_TIMEOUT_MS?",
                "SCAN_EVENTS_DEAD_LETTER_TOPIC is not a VokeTag setting and is ignored \
                 (docs/CONFIGURATION.md lists them)",
                "TRUSTED_PROXY is not a VokeTag setting and is ignored; did you mean \
                 TRUSTED_PROXIES?",
            ]
        );
    }

    #[test]
    fn other_programs_variables_and_our_own_settings_pass_in_silence() {
        let w = warnings(&[
            ("APP_ENV", "development"),
            ("PATH", "/usr/bin"),
            ("HOME", "/root"),
            ("PORT", "8080"),
            ("K_SERVICE", "scan"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=b"),
            ("PGSSLMODE", "require"),
            ("RUSTFLAGS", "-Cforce-frame-pointers"),
            // scripts/run.sh's own, inherited by the services it starts.
            ("SCAN_BIND_ADDR", "127.0.0.1:9080"),
            ("REDIS_HOST_PORT", "16379"),
            ("APPDATA", "x"),
            ("RATE_LIMIT_FAIL_CLOSED", "true"),
            ("DATABASE_URL", "postgres://u@db/x"),
        ]);
        assert_eq!(w, Vec::<String>::new());
    }

    #[test]
    fn production_on_development_defaults_is_told() {
        let w = warnings(&[
            ("APP_ENV", "production"),
            ("REDIS_URL", "redis://cache:6379"),
        ]);
        assert_eq!(
            w,
            [
                "APP_ENV=production with DATABASE_URL, PUBSUB_PROJECT_ID unset: using the local \
              development defaults (127.0.0.1, voketag-local)"
            ]
        );
        let w = warnings(&[
            ("APP_ENV", "production"),
            ("DATABASE_URL", "postgres://u:pw@db/x"),
            ("REDIS_URL", "redis://cache:6379"),
            ("PUBSUB_PROJECT_ID", "acme-prod"),
            ("PUBSUB_EMULATOR_HOST", "127.0.0.1:8085"),
        ]);
        assert_eq!(
            w,
            [
                "APP_ENV=production with PUBSUB_EMULATOR_HOST set: scan events go to a Pub/Sub \
              emulator, not to Google Cloud"
            ]
        );
        assert!(!w.iter().any(|w| w.contains("pw")));
        // Development's defaults are meant.
        assert_eq!(
            warnings(&[("APP_ENV", "development")]),
            Vec::<String>::new()
        );
    }
}
