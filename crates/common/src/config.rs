//! Typed configuration from environment variables, parsed once at start-up.
//!
//! Every variable is read through [`Env`], which holds a snapshot of the environment; nothing
//! reads `std::env` after start-up. A bad value becomes a [`ConfigError`] whose one-line message
//! names the variable, what is wrong with the value and the expected form.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::fmt::Display;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use ipnet::IpNet;
use secrecy::SecretString;

/// A configuration value that could not be used. Displays as one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {var}={shown}: {problem} (expected {expected})")]
pub struct ConfigError {
    /// The variable's name.
    pub var: String,
    /// The value as it may be shown (secrets are masked).
    pub shown: String,
    /// What is wrong with it.
    pub problem: String,
    /// The form the value should take.
    pub expected: String,
}

impl ConfigError {
    /// Builds an error for `var`, masking the value when `secret` is set.
    pub fn new(
        var: &str,
        value: &str,
        secret: bool,
        problem: impl Display,
        expected: impl Display,
    ) -> Self {
        let shown = if secret {
            "<redacted>".to_owned()
        } else if value.is_empty() {
            "\"\"".to_owned()
        } else {
            format!("{value:?}")
        };
        Self {
            var: var.to_owned(),
            shown,
            problem: problem.to_string(),
            expected: expected.to_string(),
        }
    }

    /// An error for a variable that must be set but is not.
    pub fn missing(var: &str, expected: impl Display) -> Self {
        Self {
            var: var.to_owned(),
            shown: "<unset>".to_owned(),
            problem: "required but not set".to_owned(),
            expected: expected.to_string(),
        }
    }
}

/// A snapshot of environment variables to parse configuration from.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
    /// Variables of the process environment whose value is not UTF-8: no setting can use one.
    not_utf8: BTreeSet<String>,
    /// The first of those that configuration read (see [`Env::refuse_unreadable`]).
    read_not_utf8: Arc<OnceLock<String>>,
    /// Why the `.env` file could not be read completely, when it could not.
    dotenv_error: Option<ConfigError>,
    /// Every variable configuration has asked for (see [`Env::read_names`]).
    read: Arc<Mutex<BTreeSet<String>>>,
}

impl Env {
    /// The process environment, after loading `.env` from the working directory if one exists
    /// (development convenience; variables already set win). A process started with `APP_ENV`
    /// set to anything but `development` or empty (a deployment) never reads `.env`. A value
    /// that is not UTF-8 is an error only if configuration reads its variable
    /// ([`Env::refuse_unreadable`]); variables whose name is not UTF-8 are none of ours.
    pub fn from_process() -> Self {
        let dotenv_error = if reads_dotenv(std::env::var_os("APP_ENV").as_deref()) {
            load_dotenv()
        } else {
            None
        };
        Self {
            dotenv_error,
            ..Self::from_os_vars(std::env::vars_os())
        }
    }

    /// An environment made of these pairs as the operating system gives them.
    pub fn from_os_vars(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Self {
        let mut env = Self::default();
        for (name, value) in vars {
            let Ok(name) = name.into_string() else {
                continue;
            };
            match value.into_string() {
                Ok(value) => {
                    env.vars.insert(name, value);
                }
                Err(_) => {
                    env.not_utf8.insert(name);
                }
            }
        }
        env
    }

    /// Refuses a value that is not UTF-8 in a variable that configuration has read. Such a
    /// value reads as unset, so this is called once every setting is parsed: without it the
    /// default would be used in silence (a random `IP_HASH_KEY`, say).
    ///
    /// A `.env` file that exists but could not be read completely comes first: the parser
    /// stops at a bad line, and every setting after it would read as unset.
    pub fn refuse_unreadable(&self) -> Result<(), ConfigError> {
        if let Some(e) = &self.dotenv_error {
            return Err(e.clone());
        }
        match self.read_not_utf8.get() {
            None => Ok(()),
            Some(var) => Err(ConfigError {
                var: var.clone(),
                shown: "<not UTF-8>".to_owned(),
                problem: "not valid UTF-8".to_owned(),
                expected: "UTF-8 text".to_owned(),
            }),
        }
    }

    /// An environment made of exactly these pairs (tests, tools).
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            ..Self::default()
        }
    }

    /// The names of the variables configuration has asked for so far, set or not (tests check
    /// them against [`crate::startup_warnings::SETTINGS`]).
    pub fn read_names(&self) -> Vec<String> {
        self.read
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Every variable and its value, in no particular order (to start a child process with the
    /// same environment: tests, tools).
    pub fn vars(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Returns a copy with `var` set to `value`.
    pub fn with(mut self, var: &str, value: &str) -> Self {
        self.vars.insert(var.to_owned(), value.to_owned());
        self
    }

    /// The raw value, `None` when unset or empty (or not UTF-8: see
    /// [`Env::refuse_unreadable`]).
    pub fn raw(&self, var: &str) -> Option<&str> {
        self.read
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(var.to_owned());
        if self.not_utf8.contains(var) {
            // The first one read is the one reported.
            let _ = self.read_not_utf8.set(var.to_owned());
        }
        self.vars
            .get(var)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// A string, or `default` when unset.
    pub fn string(&self, var: &str, default: &str) -> String {
        self.raw(var).unwrap_or(default).to_owned()
    }

    /// A secret string (never shown in errors or logs), or `None` when unset. Trimmed like
    /// every value: a key written with a trailing newline is the same key.
    pub fn secret(&self, var: &str) -> Option<SecretString> {
        self.raw(var).map(|v| SecretString::from(v.to_owned()))
    }

    /// A password (never shown in errors or logs), or `None` when unset or blank. Kept as
    /// given, spaces included: a password set with surrounding spaces is the password its user
    /// types at the login form. Line endings at the end are dropped, as from a password read
    /// as a line: a secret stored with `echo … | gcloud secrets create --data-file=-` ends in
    /// `\n`, and nobody types a line break at a login form.
    pub fn password(&self, var: &str) -> Option<SecretString> {
        self.raw(var)?;
        self.vars
            .get(var)
            .map(|v| SecretString::from(strip_line_ending(v).to_owned()))
    }

    /// A value parsed with [`FromStr`], or `default` when unset.
    pub fn parse<T>(&self, var: &str, default: T, expected: &str) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.raw(var) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|e| ConfigError::new(var, v, false, e, expected)),
        }
    }

    /// A whole number in `min..=max`, or `default` when unset.
    pub fn int_in<T>(&self, var: &str, default: T, min: T, max: T) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Display + Copy,
        T::Err: Display,
    {
        let expected = format!("a whole number from {min} to {max}");
        let value = self.parse(var, default, &expected)?;
        if value < min || value > max {
            let raw = self.raw(var).unwrap_or_default();
            return Err(ConfigError::new(var, raw, false, "out of range", expected));
        }
        Ok(value)
    }

    /// `true`/`false` (also `1`/`0`, `yes`/`no`), or `default` when unset.
    pub fn bool(&self, var: &str, default: bool) -> Result<bool, ConfigError> {
        match self.raw(var).map(str::to_ascii_lowercase).as_deref() {
            None => Ok(default),
            Some("true" | "1" | "yes" | "on") => Ok(true),
            Some("false" | "0" | "no" | "off") => Ok(false),
            Some(_) => Err(ConfigError::new(
                var,
                self.raw(var).unwrap_or_default(),
                false,
                "not a boolean",
                "true or false (1/0, yes/no and on/off are read the same way)",
            )),
        }
    }

    /// A comma-separated list (empty items dropped), or empty when unset.
    pub fn list(&self, var: &str) -> Vec<String> {
        self.raw(var)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The largest key or secret file read at start-up. Keys are a few KiB; a path to something
/// else (`/dev/zero`, a log) would otherwise be read for ever or into memory whole.
pub const KEY_FILE_MAX_BYTES: u64 = 64 * 1024;

/// The contents of the key or secret file at `path`, refused past [`KEY_FILE_MAX_BYTES`].
pub fn read_key_file(path: impl AsRef<std::path::Path>) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut contents = Vec::new();
    std::fs::File::open(path)?
        .take(KEY_FILE_MAX_BYTES + 1)
        .read_to_end(&mut contents)?;
    if contents.len() as u64 > KEY_FILE_MAX_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "larger than {} KiB: not a key file",
                KEY_FILE_MAX_BYTES / 1024
            ),
        ));
    }
    Ok(contents)
}

/// [`read_key_file`] as text.
pub fn read_key_file_text(path: impl AsRef<std::path::Path>) -> std::io::Result<String> {
    String::from_utf8(read_key_file(path)?)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// `value` without the line endings (`\n`, `\r`) at its end: a password as typed.
pub fn strip_line_ending(value: &str) -> &str {
    value.trim_end_matches(['\r', '\n'])
}

/// `OTEL_EXPORTER_OTLP_ENDPOINT`: an `http://` or `https://` base URL with a host (traces go to
/// its `/v1/traces`), checked here so a typo stops start-up naming the variable, rather than
/// failing later inside the exporter. A bad value is not shown: an endpoint may carry
/// credentials (`user:password@` or a token in the query).
fn otlp_endpoint(env: &Env) -> Result<Option<String>, ConfigError> {
    const VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
    const EXPECTED: &str =
        "an http:// or https:// URL such as http://127.0.0.1:4318, without user, password or query";
    let Some(raw) = env.raw(VAR) else {
        return Ok(None);
    };
    let uri: axum::http::Uri = raw
        .parse()
        .map_err(|e| ConfigError::new(VAR, raw, true, e, EXPECTED))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let host_ok = uri.host().is_some_and(|h| !h.is_empty());
    // The exporter sends neither `user:password@` nor a query (`/v1/traces` is appended to the
    // path), and the HTTP client logs the authority at trace level: refused, not leaked.
    let has_credentials = uri.authority().is_some_and(|a| a.as_str().contains('@'));
    let problem = if !scheme_ok {
        Some("not an http or https URL")
    } else if !host_ok {
        Some("no host")
    } else if has_credentials {
        Some(
            "credentials in the URL are not sent by the exporter (put the collector on a private network, or behind an authenticating proxy)",
        )
    } else if uri.query().is_some() {
        Some("a query is not supported (traces go to the URL's path + /v1/traces)")
    } else {
        None
    };
    if let Some(problem) = problem {
        return Err(ConfigError::new(VAR, raw, true, problem, EXPECTED));
    }
    Ok(Some(raw.to_owned()))
}

/// Whether `origin` is one a browser can send in `Origin` (and so can match it exactly):
/// `http` or `https`, a lowercase host, an optional port, nothing else.
fn is_exact_origin(origin: &str) -> bool {
    let Ok(uri) = origin.parse::<http::Uri>() else {
        return false;
    };
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return false;
    };
    let host = authority.host();
    matches!(scheme, "http" | "https")
        && origin == format!("{scheme}://{authority}")
        && !authority.as_str().contains('@')
        && !host.is_empty()
        && (host.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        }) || bracketed_ipv6(host).is_some_and(|ip| format!("[{ip}]") == host))
        && match authority.as_str().strip_prefix(host) {
            Some("") => true,
            // Browsers leave out the scheme's default port and write the port plainly.
            Some(port) => port
                .strip_prefix(':')
                .and_then(|p| p.parse::<u16>().ok().filter(|n| n.to_string() == p))
                .is_some_and(|p| p != 0 && p != if scheme == "https" { 443 } else { 80 }),
            None => false,
        }
}

/// Loads `.env` from the working directory (only there: not from a parent directory, which
/// the process's operator may not know about); what is wrong with it, unless it is absent or
/// fine.
fn load_dotenv() -> Option<ConfigError> {
    let path = std::env::current_dir().ok()?.join(".env");
    dotenv_problem(&path, dotenvy::from_path(&path).err())
}

/// What is wrong with the `.env` file at `path` that `dotenvy` tried to load, unless there is
/// none. No text of the file is shown, since any of it may be a secret: `dotenvy` reports the
/// part it could not parse, which is often the value itself (a space or a bad escape in it).
/// The line is named by its number and, when it begins `NAME=`, by its variable.
fn dotenv_problem(path: &std::path::Path, error: Option<dotenvy::Error>) -> Option<ConfigError> {
    let error = error.filter(|e| !e.not_found())?;
    let problem = match &error {
        dotenvy::Error::LineParse(fragment, _) => {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            // dotenvy quotes from the bad line on (to the end of the file for an unclosed
            // quote), or only the line's value: its first line is in the bad line.
            let first = fragment.lines().next().unwrap_or_default().trim();
            let line = (!first.is_empty())
                .then(|| {
                    text.lines().enumerate().find(|(_, line)| {
                        !line.trim_start().starts_with('#') && line.contains(first)
                    })
                })
                .flatten();
            let which = match line {
                Some((index, line)) => match dotenv_variable(line) {
                    Some(name) => format!("line {} (setting {name})", index + 1),
                    None => format!("line {}", index + 1),
                },
                None => "a line".to_owned(),
            };
            format!("{which} cannot be parsed; it and every line after it were not read")
        }
        other => format!("cannot be read: {}", dotenv_read_problem(other)),
    };
    Some(ConfigError {
        var: path.display().to_string(),
        shown: "<not shown>".to_owned(),
        problem,
        expected: "a readable file of NAME=value lines, values with spaces quoted".to_owned(),
    })
}

/// The variable a `.env` line sets, if it begins `NAME=` (or `export NAME=`).
fn dotenv_variable(line: &str) -> Option<&str> {
    let line = line.trim_start();
    let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
    let end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.')))
        .unwrap_or(line.len());
    let (name, rest) = line.split_at(end);
    (!name.is_empty() && name.len() <= 64 && rest.trim_start().starts_with('=')).then_some(name)
}

/// Why `.env` could not be read, for errors other than a line that does not parse. Only an
/// I/O error's own text is shown (it holds none of the file); anything else could quote it.
fn dotenv_read_problem(error: &dotenvy::Error) -> String {
    match error {
        dotenvy::Error::Io(e) => e.to_string(),
        _ => "not a valid .env file".to_owned(),
    }
}

/// Whether `.env` is read, given the process's own `APP_ENV`: unset (empty counts as unset, as
/// for every variable) or `development` only.
fn reads_dotenv(app_env: Option<&std::ffi::OsStr>) -> bool {
    app_env.is_none_or(|v| {
        v.to_str().is_some_and(|v| {
            let v = v.trim();
            v.is_empty() || v.eq_ignore_ascii_case("development")
        })
    })
}

/// Where a process runs (`APP_ENV`). Only `development` relaxes anything; the others differ in
/// name only, and all of them demand full configuration. An unknown value is refused rather
/// than read as production, so a mistyped `developmnet` stops start-up instead of quietly
/// demanding a JWT secret (or a mistyped `prodution` passing for anything else).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppEnv {
    /// A developer's machine: `.env` is read, a JWT secret may be generated.
    Development,
    /// Automated tests.
    Test,
    /// A pre-production deployment.
    Staging,
    /// A production deployment (the default).
    Production,
}

impl FromStr for AppEnv {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "development" => Ok(Self::Development),
            "test" => Ok(Self::Test),
            "staging" => Ok(Self::Staging),
            "production" => Ok(Self::Production),
            _ => Err("unknown environment".into()),
        }
    }
}

/// The log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (production).
    Json,
    /// Human-readable lines (development).
    Pretty,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "pretty" | "text" => Ok(Self::Pretty),
            _ => Err("unknown log format".into()),
        }
    }
}

/// Logging and tracing settings.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `LOG_FORMAT`.
    pub log_format: LogFormat,
    /// `RUST_LOG` directives.
    pub log_filter: String,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: traces are exported there when set.
    pub otlp_endpoint: Option<String>,
}

/// Settings of a circuit breaker (`CIRCUIT_BREAKER_*`).
#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub threshold: u32,
    /// Time open before one half-open probe is let through.
    pub open_timeout: Duration,
}

/// Pub/Sub settings shared by publisher and consumer.
#[derive(Debug, Clone)]
pub struct PubSubConfig {
    /// `PUBSUB_PROJECT_ID`.
    pub project_id: String,
    /// `PUBSUB_EMULATOR_HOST` (`host:port`), `None` for real Google Cloud.
    pub emulator_host: Option<String>,
    /// `SCAN_EVENTS_TOPIC`.
    pub topic: String,
    /// `SCAN_EVENTS_SUBSCRIPTION`.
    pub subscription: String,
    /// `SCAN_EVENTS_DLQ_TOPIC`.
    pub dlq_topic: String,
}

impl PubSubConfig {
    /// Full topic resource name, `projects/{p}/topics/{t}`.
    pub fn topic_path(&self, topic: &str) -> String {
        format!("projects/{}/topics/{}", self.project_id, topic)
    }

    /// Full subscription resource name, `projects/{p}/subscriptions/{s}`.
    pub fn subscription_path(&self, sub: &str) -> String {
        format!("projects/{}/subscriptions/{}", self.project_id, sub)
    }
}

/// HTTP hardening settings.
#[derive(Debug, Clone, Default)]
pub struct HttpConfig {
    /// `TRUSTED_PROXIES`: peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// `CORS_ORIGINS`: exact origins allowed.
    pub cors_origins: Vec<String>,
    /// Largest request body accepted.
    pub body_limit_bytes: usize,
    /// Longest time a request may take before it is answered 503.
    pub request_timeout: Duration,
}

/// The IPv6 address of `[addr]`, if `host` is one.
fn bracketed_ipv6(host: &str) -> Option<std::net::Ipv6Addr> {
    host.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

/// `host:port` with a host and a port from 1 to 65535 (the form `PUBSUB_EMULATOR_HOST` takes).
fn is_host_port(value: &str) -> bool {
    value.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && !host.contains(['/', '@', ' '])
            // An IPv6 address only in brackets (`[::1]:8085`): `::1:8085` passed here and
            // failed later as the transport's "invalid authority", naming no variable.
            && (!host.contains([':', '[', ']']) || bracketed_ipv6(host).is_some())
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|p| p > 0)
    })
}

/// Configuration both services share.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    /// `BIND_ADDR`.
    pub bind_addr: SocketAddr,
    /// `DATABASE_URL` (may carry a password).
    pub database_url: SecretString,
    /// `DATABASE_IDLE_TX_TIMEOUT_SEC`: PostgreSQL ends a session of ours that sits this long
    /// idle inside a transaction (a frozen or cut-off client), releasing its locks.
    pub database_idle_tx_timeout: Duration,
    /// `REDIS_URL` (may carry a password).
    pub redis_url: SecretString,
    /// `REDIS_TIMEOUT_MS`: hard timeout of every Redis call on a request path.
    pub redis_timeout: Duration,
    /// `REDIS_KEY_PREFIX` (default `vt`): every key starts with it, so environments (and
    /// parallel tests) can share one Redis.
    pub redis_key_prefix: String,
    /// Pub/Sub names.
    pub pubsub: PubSubConfig,
    /// `CIRCUIT_BREAKER_*`.
    pub breaker: BreakerConfig,
    /// Hardening layers.
    pub http: HttpConfig,
    /// Logs and traces.
    pub telemetry: TelemetryConfig,
    /// `APP_ENV` (`production` unless told otherwise).
    pub app_env: AppEnv,
}

/// Default PostgreSQL URL of the contract.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/voketag";
/// Default Redis URL of the contract.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

impl CommonConfig {
    /// Parses the shared variables; `default_bind` differs per service.
    pub fn from_env(env: &Env, default_bind: &str) -> Result<Self, ConfigError> {
        let bind_addr = bind_addr(
            env,
            default_bind.parse().expect("default bind address is valid"),
        )?;
        let database_url = postgres_url(env, "DATABASE_URL", DEFAULT_DATABASE_URL)?;
        let idle_tx_secs: u64 = env.int_in("DATABASE_IDLE_TX_TIMEOUT_SEC", 60, 1, 86_400)?;
        let redis_url = url_secret(
            env,
            "REDIS_URL",
            DEFAULT_REDIS_URL,
            // No `rediss://`: the Redis client is built without TLS, so such a URL would only
            // fail later, as "not a valid URL".
            &["redis"],
            |v| redis::Client::open(v).is_ok(),
        )?;
        let redis_timeout_ms: u64 = env.int_in("REDIS_TIMEOUT_MS", 50, 1, 60_000)?;
        let redis_key_prefix = env.string("REDIS_KEY_PREFIX", "vt");
        if !redis_key_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_:.".contains(c))
            || redis_key_prefix.len() > 64
        {
            return Err(ConfigError::new(
                "REDIS_KEY_PREFIX",
                &redis_key_prefix,
                false,
                "has characters outside A-Z a-z 0-9 - _ : .",
                "a short token such as vt or vt-staging",
            ));
        }
        let threshold = env.int_in("CIRCUIT_BREAKER_THRESHOLD", 5u32, 1, 1_000_000)?;
        let open_secs: u64 = env.int_in("CIRCUIT_BREAKER_TIMEOUT_SEC", 60, 1, 86_400)?;

        let trusted_proxies = env
            .list("TRUSTED_PROXIES")
            .into_iter()
            .map(|item| parse_cidr(&item).ok_or(item))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|bad| {
                ConfigError::new(
                    "TRUSTED_PROXIES",
                    env.raw("TRUSTED_PROXIES").unwrap_or_default(),
                    false,
                    format!("{bad:?} is not an IP address or CIDR"),
                    "comma-separated CIDRs, e.g. 10.0.0.0/8,127.0.0.1",
                )
            })?;
        let cors_origins = env.list("CORS_ORIGINS");
        for origin in &cors_origins {
            if !is_exact_origin(origin) {
                return Err(ConfigError::new(
                    "CORS_ORIGINS",
                    env.raw("CORS_ORIGINS").unwrap_or_default(),
                    false,
                    format!("{origin:?} is not an exact origin"),
                    "comma-separated origins like https://admin.example.com (http or https, a lowercase host, an optional port; no path, query, user or *)",
                ));
            }
        }
        let body_limit_bytes =
            env.int_in("MAX_BODY_BYTES", 1_048_576usize, 1024, 64 * 1_048_576)?;
        let timeout_secs: u64 = env.int_in("REQUEST_TIMEOUT_SEC", 30, 1, 3600)?;

        let emulator_host = env.raw("PUBSUB_EMULATOR_HOST").map(str::to_owned);
        if let Some(host) = emulator_host.as_deref().filter(|h| !is_host_port(h)) {
            return Err(ConfigError::new(
                "PUBSUB_EMULATOR_HOST",
                host,
                false,
                "not host:port",
                "host:port, e.g. 127.0.0.1:8085 or [::1]:8085",
            ));
        }
        let pubsub = PubSubConfig {
            project_id: project_id(env, "PUBSUB_PROJECT_ID", "voketag-local")?,
            emulator_host,
            topic: pubsub_id(env, "SCAN_EVENTS_TOPIC", "scan-events")?,
            subscription: pubsub_id(env, "SCAN_EVENTS_SUBSCRIPTION", "factory-scan-events")?,
            dlq_topic: pubsub_id(env, "SCAN_EVENTS_DLQ_TOPIC", "scan-events-dlq")?,
        };

        Ok(Self {
            bind_addr,
            database_url,
            database_idle_tx_timeout: Duration::from_secs(idle_tx_secs),
            redis_url,
            redis_timeout: Duration::from_millis(redis_timeout_ms),
            redis_key_prefix,
            pubsub,
            breaker: BreakerConfig {
                threshold,
                open_timeout: Duration::from_secs(open_secs),
            },
            http: HttpConfig {
                trusted_proxies,
                cors_origins,
                body_limit_bytes,
                request_timeout: Duration::from_secs(timeout_secs),
            },
            telemetry: TelemetryConfig {
                log_format: env.parse(
                    "LOG_FORMAT",
                    LogFormat::Json,
                    "json or pretty (or text, the same as pretty)",
                )?,
                log_filter: env.string("RUST_LOG", "info"),
                otlp_endpoint: otlp_endpoint(env)?,
            },
            app_env: env.parse(
                "APP_ENV",
                AppEnv::Production,
                "development, test, staging or production",
            )?,
        })
    }

    /// Whether `APP_ENV=development`.
    pub fn is_development(&self) -> bool {
        self.app_env == AppEnv::Development
    }
}

fn url_secret(
    env: &Env,
    var: &str,
    default: &str,
    schemes: &[&str],
    parses: fn(&str) -> bool,
) -> Result<SecretString, ConfigError> {
    let value = env.raw(var).unwrap_or(default);
    let expected = format!("{}://[user[:password]@]host[:port][/path]", schemes[0]);
    let scheme = value.split_once("://").map(|(s, _)| s);
    if !scheme.is_some_and(|s| schemes.contains(&s)) {
        let problem = "not a URL with a supported scheme";
        return Err(ConfigError::new(var, value, true, problem, expected));
    }
    // Parsed as the client will parse it (a bad port, say), so the failure names this variable
    // here rather than surfacing later from the client. The client's own message is not
    // shown: it may quote the URL, password included.
    if !parses(value) {
        return Err(ConfigError::new(
            var,
            value,
            true,
            "not a valid URL",
            expected,
        ));
    }
    Ok(SecretString::from(value.to_owned()))
}

/// A PostgreSQL URL from `var` (else `default`), checked as the client parses it; the error
/// names `var` and never shows the value (it may carry a password).
pub fn postgres_url(env: &Env, var: &str, default: &str) -> Result<SecretString, ConfigError> {
    // Before sqlx parses it: sqlx logs a parameter it does not know with its value.
    let value = env.raw(var).unwrap_or(default);
    if let Some(problem) = crate::db::unsupported_parameter(value) {
        return Err(ConfigError::new(
            var,
            value,
            true,
            problem,
            "postgres://[user[:password]@]host[:port][/database][?sslmode=…]",
        ));
    }
    url_secret(env, var, default, &["postgres", "postgresql"], |v| {
        v.parse::<sqlx::postgres::PgConnectOptions>().is_ok()
    })
}

/// `PUBSUB_PROJECT_ID`: checked only for what may stand in a resource path (the emulator takes
/// any project id; Google Cloud's own rules are checked by Google).
fn project_id(env: &Env, var: &str, default: &str) -> Result<String, ConfigError> {
    pubsub_name(
        env,
        var,
        default,
        |v| v.len() <= 255 && v.chars().all(is_pubsub_name_char),
        "not a valid Pub/Sub project id",
        "letters, digits and - _ . ~ + %, at most 255 characters",
    )
}

/// A topic or subscription id, by Pub/Sub's rules (which the emulator enforces too): 3 to 255
/// characters, a letter first, then letters, digits and `- _ . ~ + %`, and not starting with
/// `goog`. A name Pub/Sub would refuse stops start-up here, rather than every publish or pull
/// failing later.
fn pubsub_id(env: &Env, var: &str, default: &str) -> Result<String, ConfigError> {
    pubsub_name(
        env,
        var,
        default,
        |v| {
            (3..=255).contains(&v.len())
                && v.starts_with(|c: char| c.is_ascii_alphabetic())
                && v.chars().all(is_pubsub_name_char)
                && !v.starts_with("goog")
        },
        "not a valid Pub/Sub topic or subscription id",
        "3 to 255 letters, digits and - _ . ~ + %, starting with a letter and not with goog",
    )
}

/// `var` (else `default`) when `valid`; otherwise the error, with `problem` and `expected`.
fn pubsub_name(
    env: &Env,
    var: &str,
    default: &str,
    valid: impl Fn(&str) -> bool,
    problem: &str,
    expected: &str,
) -> Result<String, ConfigError> {
    let value = env.string(var, default);
    if valid(&value) {
        Ok(value)
    } else {
        Err(ConfigError::new(var, &value, false, problem, expected))
    }
}

fn is_pubsub_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.~+%".contains(c)
}

/// `BIND_ADDR`: an IP address and port, or a host name and port resolved once here (an IPv4
/// address of the name when it has one, so `localhost:8080` listens where clients of
/// `localhost` and of `127.0.0.1` both reach it).
fn bind_addr(env: &Env, default: SocketAddr) -> Result<SocketAddr, ConfigError> {
    const EXPECTED: &str = "host:port, the host an IP address or a name this machine resolves, \
                            e.g. 127.0.0.1:8080, 0.0.0.0:8080, [::]:8080 or localhost:8080";
    let Some(value) = env.raw("BIND_ADDR") else {
        return Ok(default);
    };
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let refused = |problem: String| ConfigError::new("BIND_ADDR", value, false, problem, EXPECTED);
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(refused("no port".to_owned()));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(refused("not a host and a port from 0 to 65535".to_owned()));
    }
    let resolved: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(value)
        .map_err(|e| refused(format!("the host name does not resolve ({e})")))?
        .collect();
    resolved
        .iter()
        .find(|a| a.is_ipv4())
        .or(resolved.first())
        .copied()
        .ok_or_else(|| refused("the host name resolves to no address".to_owned()))
}

/// Parses `10.0.0.0/8` or a bare address (taken as a single host).
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    let net = s
        .parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))?;
    // Client addresses are compared as plain IPv4 when they are IPv4-mapped
    // (`::ffff:10.0.0.1` is 10.0.0.1), so such an entry is too: as written, it would never match.
    Some(match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::V4(ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).ok()?),
            None => net,
        },
        _ => net,
    })
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;
    use secrecy::ExposeSecret;

    fn parse(pairs: &[(&str, &str)]) -> Result<CommonConfig, ConfigError> {
        CommonConfig::from_env(&Env::from_pairs(pairs.iter().copied()), "127.0.0.1:8080")
    }

    /// dotenvy reports the text it could not parse, which for a bad value is the value (a
    /// space or a bad escape in a secret): none of it is shown, only the line and its variable.
    #[test]
    fn a_dotenv_line_that_does_not_parse_is_named_without_its_text() -> Result<(), String> {
        let dir = std::env::temp_dir().join(format!("voketag-dotenv-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let cases = [
            (
                "A=1\nBOOTSTRAP_ADMIN_PASSWORD=correcthorse battery staple\n",
                "line 2 (setting BOOTSTRAP_ADMIN_PASSWORD)",
                "correcthorse",
            ),
            (
                "export JWT_SECRET=Ex0123456789abcdef\\x\n",
                "line 1 (setting JWT_SECRET)",
                "Ex0123456789",
            ),
            (
                "A=1\n\nonly-a-password-here\n",
                "line 3 cannot",
                "only-a-password",
            ),
        ];
        for (i, (file, said, secret)) in cases.iter().enumerate() {
            let path = dir.join(format!("case{i}.env"));
            std::fs::write(&path, file).map_err(|e| e.to_string())?;
            let error = dotenvy::from_path_iter(&path)
                .map_err(|e| e.to_string())?
                .find_map(Result::err);
            let message = dotenv_problem(&path, error)
                .map(|e| e.to_string())
                .ok_or(format!("case {i}: no error"))?;
            if !message.contains(said) || message.contains(secret) {
                return Err(format!("case {i}: {message}"));
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn dotenv_is_read_only_outside_deployments() {
        use std::ffi::OsStr;
        assert!(reads_dotenv(None));
        assert!(reads_dotenv(Some(OsStr::new("development"))));
        assert!(!reads_dotenv(Some(OsStr::new("production"))));
        assert!(!reads_dotenv(Some(OsStr::new("test"))));
        // The same spelling rules as the parsed APP_ENV.
        assert!(reads_dotenv(Some(OsStr::new("Development"))));
        assert!(!reads_dotenv(Some(OsStr::new("developmnet"))));
        assert!(reads_dotenv(Some(OsStr::new(" "))), "empty is unset");
    }

    #[test]
    fn app_env_is_one_of_four_names_and_only_development_relaxes() -> Result<(), ConfigError> {
        assert_eq!(parse(&[])?.app_env, AppEnv::Production);
        for (value, expected, development) in [
            ("development", AppEnv::Development, true),
            ("Development", AppEnv::Development, true),
            ("test", AppEnv::Test, false),
            ("staging", AppEnv::Staging, false),
            ("PRODUCTION", AppEnv::Production, false),
        ] {
            let c = parse(&[("APP_ENV", value)])?;
            assert_eq!(c.app_env, expected, "{value}");
            assert_eq!(c.is_development(), development, "{value}");
        }
        // A typo stops start-up, naming the variable, the value and the accepted names.
        for typo in ["developmnet", "prod", "dev"] {
            let e = parse(&[("APP_ENV", typo)]).unwrap_err();
            assert_eq!(e.var, "APP_ENV");
            let line = e.to_string();
            assert!(line.contains(typo), "{line}");
            assert!(
                line.contains("development, test, staging or production"),
                "{line}"
            );
        }
        Ok(())
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.bind_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.database_url.expose_secret(), DEFAULT_DATABASE_URL);
        assert_eq!(c.database_idle_tx_timeout, Duration::from_secs(60));
        assert_eq!(c.redis_url.expose_secret(), DEFAULT_REDIS_URL);
        assert_eq!(c.redis_timeout, Duration::from_millis(50));
        assert_eq!(c.breaker.threshold, 5);
        assert_eq!(c.breaker.open_timeout, Duration::from_secs(60));
        assert_eq!(c.pubsub.project_id, "voketag-local");
        assert_eq!(c.pubsub.topic, "scan-events");
        assert_eq!(c.pubsub.subscription, "factory-scan-events");
        assert_eq!(c.pubsub.dlq_topic, "scan-events-dlq");
        assert!(c.pubsub.emulator_host.is_none());
        assert!(c.http.trusted_proxies.is_empty());
        assert!(c.http.cors_origins.is_empty());
        assert_eq!(c.telemetry.log_format, LogFormat::Json);
        assert_eq!(c.telemetry.log_filter, "info");
    }

    #[test]
    fn bad_number_names_variable_value_and_form() {
        let e = parse(&[("REDIS_TIMEOUT_MS", "fast")]).unwrap_err();
        assert_eq!(e.var, "REDIS_TIMEOUT_MS");
        let line = e.to_string();
        assert!(!line.contains('\n'));
        assert!(line.contains("REDIS_TIMEOUT_MS=\"fast\""), "{line}");
        assert!(
            line.contains("expected a whole number from 1 to 60000"),
            "{line}"
        );
    }

    /// A value that is not UTF-8 was left out of the snapshot, so its variable read as unset
    /// and got its default in silence.
    #[test]
    #[cfg(unix)]
    fn a_value_that_is_not_utf8_stops_start_up_only_if_read() -> Result<(), Box<dyn Error>> {
        use std::os::unix::ffi::OsStringExt as _;
        let not_utf8 = || OsString::from_vec(vec![b'4', 0xff]);
        let env = Env::from_os_vars([
            ("REDIS_TIMEOUT_MS".into(), not_utf8()),
            ("BIND_ADDR".into(), "127.0.0.1:9999".into()),
        ]);
        CommonConfig::from_env(&env, "127.0.0.1:8080")?;
        let e = env.refuse_unreadable().err().ok_or("refused")?;
        assert_eq!(e.var, "REDIS_TIMEOUT_MS");
        assert_eq!(
            e.to_string(),
            "invalid configuration: REDIS_TIMEOUT_MS=<not UTF-8>: not valid UTF-8 \
             (expected UTF-8 text)"
        );
        // Someone else's variable is no concern of ours.
        let env = Env::from_os_vars([("SOMEONE_ELSES".into(), not_utf8())]);
        CommonConfig::from_env(&env, "127.0.0.1:8080")?;
        assert_eq!(env.refuse_unreadable(), Ok(()));
        Ok(())
    }

    #[test]
    fn pubsub_names_pubsub_would_refuse_stop_start_up() -> Result<(), Box<dyn Error>> {
        for var in [
            "SCAN_EVENTS_TOPIC",
            "SCAN_EVENTS_SUBSCRIPTION",
            "SCAN_EVENTS_DLQ_TOPIC",
        ] {
            // Each of these the emulator refuses as "Invalid [topics] name".
            for bad in ["1events", "ab", "goog-events", "scan events", "scan/x"] {
                let e = parse(&[(var, bad)]).err().ok_or(bad)?.to_string();
                assert!(e.contains(&format!("{var}={bad:?}")), "{e}");
                assert!(e.contains("starting with a letter"), "{e}");
            }
            for good in ["abc", "scan-events-2", "Scan_Events.v1~+%", "GOOG-events"] {
                let c = parse(&[(var, good)])?;
                let names = [c.pubsub.topic, c.pubsub.subscription, c.pubsub.dlq_topic];
                assert!(names.contains(&good.to_owned()), "{var}={good}");
            }
        }
        // A project id is only checked for what may stand in a resource path.
        assert_eq!(
            parse(&[("PUBSUB_PROJECT_ID", "X_y")])?.pubsub.project_id,
            "X_y"
        );
        let e = parse(&[("PUBSUB_PROJECT_ID", "a/b")])
            .err()
            .ok_or("a/b")?
            .to_string();
        assert!(e.contains("PUBSUB_PROJECT_ID=\"a/b\""), "{e}");
        Ok(())
    }

    #[test]
    fn the_idle_transaction_bound_is_whole_seconds_of_at_least_one() {
        let c = parse(&[("DATABASE_IDLE_TX_TIMEOUT_SEC", "5")]).unwrap();
        assert_eq!(c.database_idle_tx_timeout, Duration::from_secs(5));
        for bad in ["0", "1.5", "-1", "86401"] {
            let e = parse(&[("DATABASE_IDLE_TX_TIMEOUT_SEC", bad)]).unwrap_err();
            assert_eq!(e.var, "DATABASE_IDLE_TX_TIMEOUT_SEC", "{bad}");
        }
    }

    #[test]
    fn out_of_range_is_refused() {
        let e = parse(&[("CIRCUIT_BREAKER_THRESHOLD", "0")]).unwrap_err();
        assert_eq!(e.var, "CIRCUIT_BREAKER_THRESHOLD");
        assert!(e.problem.contains("out of range"));
    }

    #[test]
    fn bad_bind_addr() {
        for bad in [
            "localhost",
            "8080",
            ":8080",
            "localhost:http",
            "localhost:70000",
            "no-such-host.invalid:8080",
        ] {
            let e = parse(&[("BIND_ADDR", bad)]).unwrap_err();
            assert_eq!(e.var, "BIND_ADDR", "{bad}");
            assert!(e.expected.contains("localhost:8080"), "{e}");
        }
    }

    #[test]
    fn bind_addr_takes_ip_addresses_and_names_that_resolve() {
        for (value, want) in [
            ("127.0.0.1:9000", "127.0.0.1:9000"),
            ("[::1]:9000", "[::1]:9000"),
            ("0.0.0.0:0", "0.0.0.0:0"),
            // A name is resolved once, to an IPv4 address when it has one.
            ("localhost:9000", "127.0.0.1:9000"),
        ] {
            let config = parse(&[("BIND_ADDR", value)]).expect(value);
            assert_eq!(config.bind_addr.to_string(), want);
        }
    }

    /// A parameter sqlx does not read was ignored (`connect_timeout` did nothing) and logged
    /// by sqlx at WARN with its value (`sslpassword=…` in clear) as each pool was made.
    #[test]
    fn postgres_url_parameters_the_client_ignores_are_refused_unshown() {
        for (url, named) in [
            (
                "postgres://u@db/x?sslmode=require&sslpassword=KeyPassphrase42",
                "connection parameter `sslpassword`",
            ),
            ("postgres://u@db/x?connect_timeout=10", "`connect_timeout`"),
            ("postgres://u@db/x?S3cret%21=1", "a connection parameter is"),
        ] {
            let e = parse(&[("DATABASE_URL", url)]).unwrap_err().to_string();
            assert!(
                e.starts_with("invalid configuration: DATABASE_URL=<redacted>: "),
                "{e}"
            );
            assert!(e.contains(named), "{e}");
            assert!(e.contains("it reads sslmode, ssl-mode, sslrootcert"), "{e}");
            assert!(
                !e.contains("KeyPassphrase42") && !e.contains("S3cret"),
                "{e}"
            );
        }
        for url in [
            "postgres://u@db/x?sslmode=verify-full&sslrootcert=/ca.pem&application_name=a",
            // sqlx's aliases and server settings, and names percent-encoded.
            "postgres://u@db/x?ssl-mode=require&ssl-ca=/ca.pem&options[statement_timeout]=5s",
            "postgres://u@db/x?options%5Bstatement_timeout%5D=5s&ssl%6Dode=disable",
            "postgres://u@db/x?",
            "postgres://u@db/x",
        ] {
            assert!(parse(&[("DATABASE_URL", url)]).is_ok(), "{url}");
        }
    }

    #[test]
    fn secret_url_is_never_shown() {
        let e = parse(&[("DATABASE_URL", "mysql://root:hunter2@db/x")]).unwrap_err();
        assert_eq!(e.var, "DATABASE_URL");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.to_string().contains("<redacted>"));
        let shown = format!(
            "{:?}",
            parse(&[("DATABASE_URL", "postgres://u:hunter2@db/x")]).unwrap()
        );
        assert!(
            !shown.contains("hunter2"),
            "Debug leaks the secret: {shown}"
        );
        // Right scheme, but not a URL the clients accept: still this variable's error, at
        // start-up, with the password hidden.
        for (var, value) in [
            ("DATABASE_URL", "postgres://u:hunter2@db:notaport/x"),
            ("REDIS_URL", "redis://:hunter2@cache:notaport"),
        ] {
            let e = parse(&[(var, value)]).unwrap_err();
            assert_eq!(e.var, var);
            assert!(!e.to_string().contains("hunter2"), "{e}");
            assert!(
                e.to_string().contains("://"),
                "names the expected form: {e}"
            );
        }
        // TLS to Redis is not built in: refused by scheme, naming the form that works.
        let e = parse(&[("REDIS_URL", "rediss://:hunter2@cache:6380")]).unwrap_err();
        assert_eq!(e.var, "REDIS_URL");
        assert!(e.to_string().contains("supported scheme"), "{e}");
        assert!(e.to_string().contains("redis://"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn trusted_proxies_and_cors() {
        let c = parse(&[
            ("TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1"),
            ("CORS_ORIGINS", "https://a.example, http://localhost:3000"),
        ])
        .unwrap();
        assert_eq!(c.http.trusted_proxies.len(), 2);
        assert_eq!(
            c.http.cors_origins,
            ["https://a.example", "http://localhost:3000"]
        );
        let e = parse(&[("TRUSTED_PROXIES", "10.0.0.0/8,nonsense")]).unwrap_err();
        assert_eq!(e.var, "TRUSTED_PROXIES");
        assert!(e.problem.contains("nonsense"));
        // IPv4-mapped entries are the IPv4 addresses clients are compared as.
        let c = parse(&[(
            "TRUSTED_PROXIES",
            "::ffff:127.0.0.1,::ffff:10.0.0.0/104,::1",
        )])
        .unwrap();
        assert_eq!(
            c.http.trusted_proxies,
            [
                parse_cidr("127.0.0.1/32").unwrap(),
                parse_cidr("10.0.0.0/8").unwrap(),
                parse_cidr("::1/128").unwrap()
            ]
        );
        let e = parse(&[("CORS_ORIGINS", "*")]).unwrap_err();
        assert_eq!(e.var, "CORS_ORIGINS");
        // Nothing a browser could send as `Origin`: refused rather than silently never matching.
        for bad in [
            "https://a.example/path/",
            "https://a.example/path",
            "https://a.example/",
            "https://a.example?q=1",
            "https://a.example#x",
            "https://user@a.example",
            "https://a.example:99999",
            "https://a.example:0",
            "https://a.example:443",
            "http://a.example:80",
            "https://a.example:08443",
            "https://a example",
            "https://A.EXAMPLE",
            // A wildcard never matches (browsers send the host itself), nor does a host that
            // is not in the ASCII form browsers send.
            "https://*.example.com",
            "https://b\u{fc}cher.example",
            "https://[2001:DB8::1]",
            "https://[zz]",
            "https://[]",
            "ftp://a.example",
            "a.example",
            "https://",
        ] {
            let e = parse(&[("CORS_ORIGINS", bad)]).unwrap_err();
            assert_eq!(e.var, "CORS_ORIGINS", "{bad}");
        }
        for good in [
            "https://a.example:8443",
            "http://127.0.0.1:3000",
            "http://[::1]:8080",
        ] {
            let c = parse(&[("CORS_ORIGINS", good)]).unwrap();
            assert_eq!(c.http.cors_origins, [good]);
        }
    }

    /// `JWT_KEY_FILE=/dev/zero` was read for ever, start-up hanging without a word.
    #[test]
    #[cfg(unix)]
    fn key_files_past_64_kib_are_refused_not_read_for_ever() {
        let e = read_key_file("/dev/zero").unwrap_err();
        assert_eq!(e.to_string(), "larger than 64 KiB: not a key file");
        let e = read_key_file_text("/dev/zero").unwrap_err();
        assert_eq!(e.to_string(), "larger than 64 KiB: not a key file");
    }

    #[test]
    fn passwords_are_kept_exactly_as_given_and_secrets_trimmed() {
        let env = Env::from_pairs([
            ("P", "  pass word  "),
            ("BLANK", "   "),
            ("K", "key\n"),
            ("FROM_SECRET_MANAGER", "elevenchars\n"),
            ("CRLF", " crlf pass \r\n"),
        ]);
        assert_eq!(
            env.password("P").map(|s| s.expose_secret().to_owned()),
            Some("  pass word  ".to_owned())
        );
        // A line ending at the end (`echo pw | gcloud secrets create --data-file=-`) is not
        // part of the password its user types; the spaces before it are.
        assert_eq!(
            env.password("FROM_SECRET_MANAGER")
                .map(|s| s.expose_secret().to_owned()),
            Some("elevenchars".to_owned())
        );
        assert_eq!(
            env.password("CRLF").map(|s| s.expose_secret().to_owned()),
            Some(" crlf pass ".to_owned())
        );
        assert!(env.password("BLANK").is_none());
        assert!(env.password("UNSET").is_none());
        // Keys and plain values are trimmed (a trailing newline from a secret file).
        assert_eq!(
            env.secret("K").map(|s| s.expose_secret().to_owned()),
            Some("key".to_owned())
        );
        assert_eq!(env.raw("P"), Some("pass word"));
    }

    #[test]
    fn bools_and_formats() {
        let env = Env::from_pairs([("A", "TRUE"), ("B", "0"), ("C", "maybe")]);
        assert!(env.bool("A", false).unwrap());
        assert!(!env.bool("B", true).unwrap());
        assert!(env.bool("MISSING", true).unwrap());
        assert_eq!(env.bool("C", false).unwrap_err().var, "C");
        let e = parse(&[("LOG_FORMAT", "xml")]).unwrap_err();
        assert_eq!(e.var, "LOG_FORMAT");
        assert!(e.expected.contains("json or pretty"));
    }

    #[test]
    fn otlp_endpoint_must_be_an_http_url() {
        for bad in [
            "localhost:4318",
            "grpc://collector:4317",
            "http://",
            "not a url",
        ] {
            let e = parse(&[("OTEL_EXPORTER_OTLP_ENDPOINT", bad)]).unwrap_err();
            assert_eq!(e.var, "OTEL_EXPORTER_OTLP_ENDPOINT", "{bad}");
            assert!(e.to_string().contains("http://"), "{bad}: {e}");
        }
        // Credentials in a bad endpoint are not repeated in the error. In a good-looking one
        // they are refused: the exporter does not send them, and its HTTP client logs the
        // authority at trace level.
        for bad in [
            "ftp://otel:hunter2@otel.example",
            "otel.example:4318?token=hunter2",
            "http://otel:hunter2@otel.example:4318",
            "https://otel.example:4318/?token=hunter2",
        ] {
            let e = parse(&[("OTEL_EXPORTER_OTLP_ENDPOINT", bad)]).unwrap_err();
            assert!(!e.to_string().contains("hunter2"), "{e}");
            assert!(e.to_string().contains("<redacted>"), "{e}");
        }
        let c = parse(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otel.example:4318/")]).unwrap();
        assert_eq!(
            c.telemetry.otlp_endpoint.as_deref(),
            Some("https://otel.example:4318/")
        );
    }

    #[test]
    fn emulator_host_must_be_host_port() {
        for bad in [
            "http://x/",
            "127.0.0.1:",
            ":8085",
            "127.0.0.1:99999",
            "127.0.0.1:0",
            "host:+1",
            "::1:8085",
            "[::1:8085",
            "[]:8085",
            "[zz]:8085",
        ] {
            let e = parse(&[("PUBSUB_EMULATOR_HOST", bad)]).unwrap_err();
            assert_eq!(e.var, "PUBSUB_EMULATOR_HOST", "{bad}");
        }
        let c = parse(&[("PUBSUB_EMULATOR_HOST", "[::1]:8085")]).unwrap();
        assert_eq!(c.pubsub.emulator_host.as_deref(), Some("[::1]:8085"));
        let c = parse(&[("PUBSUB_EMULATOR_HOST", "127.0.0.1:8085")]).unwrap();
        assert_eq!(c.pubsub.emulator_host.as_deref(), Some("127.0.0.1:8085"));
    }

    #[test]
    fn empty_value_counts_as_unset() {
        let c = parse(&[("REDIS_TIMEOUT_MS", "  ")]).unwrap();
        assert_eq!(c.redis_timeout, Duration::from_millis(50));
    }
}
