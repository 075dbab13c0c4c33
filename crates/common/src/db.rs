//! Connection set-up for PostgreSQL (sqlx) and Redis (deadpool-redis), and the per-call Redis
//! timeout.

use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use deadpool_redis::{Pool as RedisPool, PoolConfig, Runtime, Timeouts};
use futures::FutureExt as _;
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection as _, PgPool};

/// The migrations in `migrations/` (one history for both services), embedded at build time.
/// Applied only by `factory-service migrate`, never raced at start-up.
///
/// A database may also hold migrations this build does not know: a newer release applied them
/// and was rolled back. A migration must leave a schema the release before it still runs on
/// (infra/terraform/README.md), so that is not an error (`ignore_missing`): it would stop the
/// rollback at its migrate step. The checksums of the migrations this build knows are still
/// checked.
pub static MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> =
    std::sync::LazyLock::new(|| migrator(true));

/// [`MIGRATOR`], with or without sqlx's own lock: `factory-service migrate` takes its own
/// (factory `db::migrate`), since sqlx's waits in a statement that holds a snapshot, which a
/// `CREATE INDEX CONCURRENTLY` of the run holding the lock then waits for: a deadlock.
pub fn migrator(locking: bool) -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("../../migrations");
    migrator.set_ignore_missing(true);
    migrator.set_locking(locking);
    migrator
}

/// The versions of this build's migrations, each once ([`MIGRATOR`] lists a reversible
/// migration's up and down halves).
pub fn needed_migrations() -> Vec<i64> {
    let mut versions: Vec<i64> = MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| m.version)
        .collect();
    versions.sort_unstable();
    versions.dedup();
    versions
}

/// The versions of the migrations applied to `pool`'s database (an undefined-table error when
/// it was never migrated: [`is_undefined_table`]).
pub async fn applied_migrations(pool: &PgPool) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
        .fetch_all(pool)
        .await
}

/// Which of this build's migrations `pool`'s database lacks: all of them when it was never
/// migrated. Migrations a newer release applied first are none of its business.
pub async fn missing_migrations(pool: &PgPool) -> Result<Vec<i64>, sqlx::Error> {
    let applied = match applied_migrations(pool).await {
        Ok(applied) => applied,
        Err(e) if is_undefined_table(&e) => Vec::new(),
        Err(e) => return Err(e),
    };
    Ok(needed_migrations()
        .into_iter()
        .filter(|v| !applied.contains(v))
        .collect())
}

/// What to tell someone whose database lacks the schema.
pub const MIGRATE_HINT: &str = "run `factory-service migrate`";

/// How long a request waits for a connection from a [`pg_pool`] before giving up.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether PostgreSQL refused a statement because a table does not exist (SQLSTATE 42P01,
/// `undefined_table`): the database was never migrated.
pub fn is_undefined_table(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|code| code == "42P01")
}

/// A PostgreSQL pool that connects lazily, so a service starts (and reports not-ready) while the
/// database is away, and heals by itself when it returns.
///
/// Each of its sessions asks PostgreSQL to end it when it sits idle inside a transaction for
/// `idle_tx_timeout` (`DATABASE_IDLE_TX_TIMEOUT_SEC`). Our code never waits inside a
/// transaction; a session that does is one whose client froze or was cut off by the network
/// after taking locks, such as the audit chain's head, which every audited write in every
/// instance needs. Without this, PostgreSQL keeps those locks until TCP gives up on the client
/// (hours with the kernel's defaults); with it, the transaction is rolled back and the others
/// go on.
///
/// Its sessions carry `name` as their `application_name` (unless `DATABASE_URL` gives one), so
/// that `pg_stat_activity` tells which service and pool holds which connections.
pub fn pg_pool(
    url: &SecretString,
    name: &str,
    max_connections: u32,
    idle_tx_timeout: Duration,
) -> anyhow::Result<PgPool> {
    let options = session_options(url, name, idle_tx_timeout)?;
    Ok(pool_options(max_connections).connect_lazy_with(options))
}

/// `DATABASE_URL`'s options with the idle-in-transaction bound every pool's sessions get, and
/// `name` as their `application_name` unless the URL names one.
fn session_options(
    url: &SecretString,
    name: &str,
    idle_tx_timeout: Duration,
) -> anyhow::Result<PgConnectOptions> {
    let options = connect_options(url, "DATABASE_URL")?;
    let options = if options.get_application_name().is_some() {
        options
    } else {
        options.application_name(name)
    };
    Ok(options.options([(
        "idle_in_transaction_session_timeout",
        idle_tx_timeout.as_millis().to_string(),
    )]))
}

/// How long PostgreSQL itself lets a service's statement run, and wait for a lock, before it
/// cancels it. A bound kept only on the client (a request timeout, a look-up timeout) stops
/// waiting but leaves the statement running, holding its pool connection: a session that held
/// the audit chain's head (or locked a table) for minutes left every connection of the pool
/// waiting behind it, so even plain reads answered 503 for as long.
#[derive(Debug, Clone, Copy)]
pub struct QueryBounds {
    /// `statement_timeout`.
    pub statement: Duration,
    /// `lock_timeout`.
    pub lock: Duration,
}

/// When a pool of [`service_pg_pool`] checks a connection with a ping before handing it out.
#[derive(Debug, Clone, Copy)]
pub enum Ping {
    /// Before every acquisition (sqlx's default): a connection that died is never handed out,
    /// at the cost of a round trip per query.
    EveryAcquire,
    /// Only for a connection that sat idle this long or longer. A busy pool's connections were
    /// used a moment ago, so most queries save the round trip (for the scan service, a
    /// look-up 35 ms away from its replica already overran the 80 ms timing floor with it);
    /// one that died while idle longer is still caught. One that died within the window
    /// (a sub-second restart) fails its query, as the outage would have.
    IfIdleFor(Duration),
}

/// [`pg_pool`] for a service's requests: its statements bounded by `bounds`, its connections
/// checked as `ping` says.
pub fn service_pg_pool(
    url: &SecretString,
    name: &str,
    max_connections: u32,
    idle_tx_timeout: Duration,
    bounds: QueryBounds,
    ping: Ping,
) -> anyhow::Result<PgPool> {
    let options = session_options(url, name, idle_tx_timeout)?.options([
        (
            "statement_timeout",
            bounds.statement.as_millis().to_string(),
        ),
        ("lock_timeout", bounds.lock.as_millis().to_string()),
    ]);
    let pool = pool_options(max_connections);
    let pool = match ping {
        Ping::EveryAcquire => pool,
        Ping::IfIdleFor(idle) => {
            pool.test_before_acquire(false)
                .before_acquire(move |conn, meta| {
                    Box::pin(async move {
                        if meta.idle_for >= idle {
                            // An error closes the connection, and the pool hands out another.
                            sqlx::Connection::ping(conn).await?;
                        }
                        Ok(true)
                    })
                })
        }
    };
    Ok(pool.connect_lazy_with(options))
}

fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .idle_timeout(Duration::from_secs(300))
}

/// `url` parsed, with statements logged at TRACE only; `given_by` names where it came from.
/// sqlx parses any scheme as PostgreSQL's, so another database's URL (`mysql://…`) is refused
/// here rather than tried as PostgreSQL on port 5432.
fn connect_options(url: &SecretString, given_by: &str) -> anyhow::Result<PgConnectOptions> {
    let url = url.expose_secret();
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    anyhow::ensure!(
        matches!(scheme, Some("postgres" | "postgresql")),
        "{given_by} is not a PostgreSQL URL (expected postgres://user@host:port/database)"
    );
    if let Some(problem) = unsupported_parameter(url) {
        anyhow::bail!("{given_by}: {problem}");
    }
    let options: PgConnectOptions = url
        .parse()
        .with_context(|| format!("{given_by} is not a valid PostgreSQL URL"))?;
    Ok(options.log_statements(tracing::log::LevelFilter::Trace))
}

/// The connection parameters of a URL's query that the PostgreSQL client (sqlx 0.8) reads,
/// with its aliases; `options[NAME]` (a server setting) too.
pub const URL_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "application_name",
    "options",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "statement-cache-capacity",
];

/// What is wrong with a PostgreSQL URL's query, if a parameter in it is one the client does
/// not read: sqlx would ignore it (`connect_timeout` would do nothing) and log it with its
/// value (`sslpassword=…` in clear). Names are decoded as sqlx decodes them. A name is shown
/// only when it is plainly one (a malformed URL may put part of a password where the query
/// should be).
pub fn unsupported_parameter(url: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    let name = url::form_urlencoded::parse(query.as_bytes())
        .map(|(name, _)| name)
        .find(|name| {
            let read = URL_PARAMETERS.contains(&name.as_ref())
                || (name.starts_with("options[") && name.ends_with(']'));
            !read
        })?;
    let plain = name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'-');
    let named = if plain {
        format!("connection parameter `{name}`")
    } else {
        "a connection parameter".to_owned()
    };
    Some(format!(
        "{named} is not one this service's PostgreSQL client reads (it would be ignored); \
         it reads {} and options[NAME]",
        URL_PARAMETERS.join(", ")
    ))
}

/// For the commands run by hand (`migrate`, `user create`, `audit verify`): one direct
/// connection, so that when PostgreSQL cannot be reached the error says where and why. A pool
/// would retry a refused connection until its acquire timeout and then say only "pool timed
/// out while waiting for an open connection". The place named never includes the password;
/// `given_by` says where the URL came from (`DATABASE_URL`, a flag). Waits at most
/// [`REACH_TIMEOUT`].
pub async fn ensure_reachable(url: &SecretString, given_by: &str) -> anyhow::Result<()> {
    let options = connect_options(url, given_by)?;
    let place = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or(options.get_username())
    );
    match tokio::time::timeout(REACH_TIMEOUT, sqlx::PgConnection::connect_with(&options)).await {
        Ok(Ok(conn)) => {
            // Only the connection's own goodbye can fail here, and it changes nothing.
            let _ = conn.close().await;
            Ok(())
        }
        Ok(Err(e)) => {
            // Not for a file it could not read (`sslrootcert`) or a certificate it refused; but
            // a Unix socket that is not there is a server not running.
            let hint = match &e {
                sqlx::Error::Io(io)
                    if options.get_socket().is_some()
                        || !matches!(
                            io.kind(),
                            std::io::ErrorKind::NotFound
                                | std::io::ErrorKind::PermissionDenied
                                | std::io::ErrorKind::InvalidData
                                | std::io::ErrorKind::InvalidInput
                        ) =>
                {
                    "; is it running there? (`make services-up` starts one)"
                }
                _ => "",
            };
            Err(anyhow::anyhow!(
                "cannot connect to PostgreSQL at {place} ({given_by}): {e}{hint}"
            ))
        }
        Err(_) => Err(anyhow::anyhow!(
            "PostgreSQL at {place} ({given_by}) did not answer within {} s",
            REACH_TIMEOUT.as_secs()
        )),
    }
}

/// How long [`ensure_reachable`] waits for a connection.
pub const REACH_TIMEOUT: Duration = Duration::from_secs(5);

/// A Redis pool whose checkout and connection set-up are bounded by `timeout` (and at least
/// 1 s for creating a connection, which includes the TCP handshake).
pub fn redis_pool(
    url: &SecretString,
    timeout: Duration,
    max_size: usize,
) -> anyhow::Result<RedisPool> {
    let mut config = deadpool_redis::Config::from_url(url.expose_secret());
    let mut pool = PoolConfig::new(max_size);
    pool.timeouts = Timeouts {
        wait: Some(timeout),
        create: Some(timeout.max(Duration::from_secs(1))),
        recycle: Some(timeout),
    };
    config.pool = Some(pool);
    config
        .create_pool(Some(Runtime::Tokio1))
        .context("REDIS_URL is not a valid Redis URL")
}

/// Why a bounded Redis call failed.
#[derive(Debug, thiserror::Error)]
pub enum RedisCallError {
    /// No answer within the timeout.
    #[error("redis call timed out after {0:?}")]
    Timeout(Duration),
    /// Not tried: the circuit breaker around Redis is open.
    #[error("redis circuit breaker open; retry after {0:?}")]
    BreakerOpen(Duration),
    /// No connection could be had from the pool.
    #[error("redis pool: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    /// Redis answered with an error, or the connection broke.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Runs one Redis call under a hard timeout.
///
/// A plain function returning the timeout future mapped, not an `async fn`: an `async fn`
/// keeps its future argument and the awaited copy of it side by side, doubling the size of
/// every future that awaits this one (and what moving it costs) on the request path.
pub fn bounded<T, E, F>(
    timeout: Duration,
    call: F,
) -> impl Future<Output = Result<T, RedisCallError>>
where
    F: Future<Output = Result<T, E>>,
    RedisCallError: From<E>,
{
    tokio::time::timeout(timeout, call).map(move |result| match result {
        Ok(r) => r.map_err(RedisCallError::from),
        Err(_) => Err(RedisCallError::Timeout(timeout)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_holds_its_call_once() {
        let call = || async {
            let buf = [7u8; 4096];
            tokio::task::yield_now().await;
            Ok::<u8, redis::RedisError>(std::hint::black_box(buf)[0])
        };
        let inner = std::mem::size_of_val(&call());
        let sleep = std::mem::size_of::<tokio::time::Sleep>();
        let timed = bounded(Duration::from_secs(1), call());
        // As an `async fn` it held the call twice, once as its argument and once in the
        // timeout it awaited.
        assert!(
            std::mem::size_of_val(&timed) < inner + sleep + 128,
            "{} bytes for a {inner}-byte call",
            std::mem::size_of_val(&timed)
        );
        assert_eq!(timed.await.unwrap(), 7);
    }

    /// The test server's URL (`TEST_DATABASE_URL`, else the local one).
    fn admin_url() -> String {
        std::env::var("TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
    }

    /// Managed PostgreSQL takes only encrypted connections, and its URLs say so
    /// (`sslmode=require`, as in infra/terraform). This machine kind's PostgreSQL has TLS on;
    /// one without it refuses such a URL for its own reason, never for want of TLS in our build.
    #[tokio::test]
    async fn a_url_that_requires_tls_gets_an_encrypted_connection() -> anyhow::Result<()> {
        let admin = admin_url();
        let plain = pg_pool(
            &SecretString::from(admin.clone()),
            "voketag-test",
            1,
            Duration::from_secs(60),
        )?;
        let server_tls: String = sqlx::query_scalar("SHOW ssl").fetch_one(&plain).await?;
        let sep = if admin.contains('?') { '&' } else { '?' };
        let url = SecretString::from(format!("{admin}{sep}sslmode=require"));
        let required = pg_pool(&url, "voketag-test", 1, Duration::from_secs(60))?;
        let encrypted = sqlx::query_scalar::<_, bool>(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        )
        .fetch_one(&required)
        .await;
        if server_tls == "on" {
            assert!(encrypted?, "the connection is not encrypted");
            ensure_reachable(&url, "DATABASE_URL").await?;
        } else {
            let e = encrypted.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(!e.contains("without TLS support"), "{e}");
        }
        Ok(())
    }

    /// Sessions carry the pool's name as `application_name` (before, it was empty, so
    /// `pg_stat_activity` could not tell the services' and pools' connections apart), unless
    /// the URL names one.
    #[tokio::test]
    async fn sessions_carry_the_pool_name_unless_the_url_names_one() -> anyhow::Result<()> {
        let admin = admin_url();
        let named = pg_pool(
            &SecretString::from(admin.clone()),
            "voketag-test-pool",
            1,
            Duration::from_secs(60),
        )?;
        let name: String = sqlx::query_scalar("SHOW application_name")
            .fetch_one(&named)
            .await?;
        assert_eq!(name, "voketag-test-pool");
        let sep = if admin.contains('?') { '&' } else { '?' };
        let url = SecretString::from(format!("{admin}{sep}application_name=operator-choice"));
        let bounded = service_pg_pool(
            &url,
            "voketag-test-pool",
            1,
            Duration::from_secs(60),
            QueryBounds {
                statement: Duration::from_secs(5),
                lock: Duration::from_secs(1),
            },
            Ping::EveryAcquire,
        )?;
        let name: String = sqlx::query_scalar("SHOW application_name")
            .fetch_one(&bounded)
            .await?;
        assert_eq!(name, "operator-choice");
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_times_out() {
        let never = std::future::pending::<Result<(), redis::RedisError>>();
        let err = bounded(Duration::from_millis(50), never).await.unwrap_err();
        assert!(matches!(err, RedisCallError::Timeout(d) if d == Duration::from_millis(50)));
    }
}
