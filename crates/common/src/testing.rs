//! Test support (feature `testing`): a fresh, migrated database per test, a unique Redis key
//! prefix per test, and an environment pointing at the local services, so tests run in parallel
//! against real PostgreSQL, Redis and the Pub/Sub emulator.

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use crate::config::Env;

/// The server tests create their databases on (`TEST_DATABASE_URL`).
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/voketag_test".to_owned())
}

/// A database of its own for one test, migrated to the current schema.
pub struct TestDb {
    /// The database's name (`voketag_t_<uuid>`).
    pub name: String,
    /// Its URL.
    pub url: SecretString,
    /// A pool on it.
    pub pool: PgPool,
}

impl TestDb {
    /// Creates and migrates a new database. Databases are dropped by `make test` before the next
    /// run (`scripts/test.sh`), not here, so a failed test's data can be inspected.
    pub async fn new() -> Self {
        let admin = admin_url();
        let name = format!("voketag_t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin)
            .await
            .expect("connect to the test PostgreSQL (is it running? make services-up)");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let _ = conn.close().await;
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        let pool = PgPool::connect(&url)
            .await
            .expect("connect to test database");
        crate::db::MIGRATOR
            .run(&pool)
            .await
            .expect("migrate test database");
        Self {
            name,
            url: SecretString::from(url),
            pool,
        }
    }
}

/// A Redis key prefix no other test uses.
pub fn redis_prefix() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// An environment for a service under test: bind to port 0, the given database, a fresh Redis
/// prefix, the local emulator, quiet logs.
pub fn env_for(db: &TestDb) -> Env {
    Env::from_pairs([
        ("BIND_ADDR", "127.0.0.1:0"),
        ("DATABASE_URL", db.url.expose_secret()),
        ("REDIS_URL", "redis://127.0.0.1:6379"),
        ("REDIS_KEY_PREFIX", redis_prefix().as_str()),
        ("PUBSUB_EMULATOR_HOST", "127.0.0.1:8085"),
        ("APP_ENV", "test"),
        ("RUST_LOG", "warn"),
    ])
}

/// The address a child process logs after `marker` (such as `"listening on http://"`) on its
/// piped standard output, waiting up to 30 s for the line. The rest of its output keeps being
/// read, so the child never blocks on a full pipe.
pub async fn logged_address(
    stdout: std::process::ChildStdout,
    marker: &'static str,
) -> Result<std::net::SocketAddr, String> {
    use std::io::BufRead as _;
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    tokio::task::spawn_blocking(move || {
        loop {
            let line = lines
                .recv_timeout(std::time::Duration::from_secs(30))
                .map_err(|_| format!("no log line with {marker:?} within 30 s"))?;
            if let Some(rest) = line.split(marker).nth(1) {
                let end = rest
                    .find(|c: char| c == '"' || c.is_whitespace())
                    .unwrap_or(rest.len());
                return rest[..end]
                    .parse()
                    .map_err(|e| format!("{:?} is not a socket address: {e}", &rest[..end]));
            }
        }
    })
    .await
    .map_err(|e| format!("log reader: {e}"))?
}

/// A child process (a service binary a test started) killed and reaped when dropped, so a
/// failed assertion leaves none behind.
pub struct ChildGuard(pub std::process::Child);

impl ChildGuard {
    /// Sends it SIGTERM (`kill -TERM`).
    pub fn terminate(&self) -> std::io::Result<()> {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "kill -TERM {} failed: {status}",
                self.0.id()
            )))
        }
    }

    /// How it exited, waiting up to `within` for it to exit by itself (a `TimedOut` error
    /// after that).
    pub async fn exit_status(
        &mut self,
        within: std::time::Duration,
    ) -> std::io::Result<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.0.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() >= deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("still running {within:?} later"),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// How the service `command` starts exits when SIGTERM comes while its start-up waits on
/// `dependency`: a listener the test holds, which accepts connections and never answers. Waits
/// up to 20 s for the service's first connection to it, then up to 15 s for the exit.
pub async fn exit_on_sigterm_during_start_up(
    command: &mut std::process::Command,
    dependency: &tokio::net::TcpListener,
) -> std::io::Result<std::process::ExitStatus> {
    use std::process::Stdio;
    let mut child = ChildGuard(
        command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let _held = tokio::time::timeout(std::time::Duration::from_secs(20), dependency.accept())
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the service did not connect to the dependency within 20 s",
            )
        })??;
    child.terminate()?;
    child.exit_status(std::time::Duration::from_secs(15)).await
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port nobody listens on right now (bound and released at once): where to point a
/// client at a dependency that is away, or a port to listen on later.
pub fn closed_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The JSON body of the first `/readyz` 200 of the service at `base` (`http://host:port`)
/// within `limit`, asked every 200 ms: on a busy machine a probe can miss its 2 s bound, and
/// readiness is what comes back by itself. The error holds the last answer.
pub async fn ready_within(
    client: &reqwest::Client,
    base: &str,
    limit: std::time::Duration,
) -> Result<serde_json::Value, String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let last = match client.get(format!("{base}/readyz")).send().await {
            Ok(r) => {
                let status = r.status();
                match r.json::<serde_json::Value>().await {
                    Ok(body) if status == reqwest::StatusCode::OK => return Ok(body),
                    Ok(body) => format!("{status} {body}"),
                    Err(e) => format!("{status}, body not JSON: {e}"),
                }
            }
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("not ready within {limit:?}: {last}"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A TCP proxy on a fixed local port that can be cut and restored, to take a dependency away
/// and bring it back without restarting it, or stalled: connections stay open and nothing
/// goes through them (a network partition, as seen from the client).
#[derive(Debug)]
pub struct Proxy {
    /// The port it listens on.
    pub port: u16,
    target: String,
    running: Option<JoinHandle<()>>,
    stall: Arc<Stall>,
}

/// When a [`Proxy`] stops forwarding.
#[derive(Debug)]
struct Stall {
    /// Nothing goes through while this is true.
    on: tokio::sync::watch::Sender<bool>,
    /// Bytes that, seen going from a client to the target, turn `on` before they are forwarded.
    trigger: std::sync::Mutex<Option<Vec<u8>>>,
}

impl Stall {
    fn trigger(&self) -> std::sync::MutexGuard<'_, Option<Vec<u8>>> {
        // Nothing panics while holding it; a poisoned lock would still hold a valid value.
        self.trigger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Proxy {
    /// A proxy to `target` (`host:port`) on a free loopback port, forwarding.
    pub async fn start(target: &str) -> std::io::Result<Self> {
        let mut proxy = Self {
            port: closed_port()?,
            target: target.to_owned(),
            running: None,
            stall: Arc::new(Stall {
                on: tokio::sync::watch::Sender::new(false),
                trigger: std::sync::Mutex::new(None),
            }),
        };
        proxy.up()?;
        Ok(proxy)
    }

    /// Listens again (on the same port) and forwards connections.
    pub fn up(&mut self) -> std::io::Result<()> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(([127, 0, 0, 1], self.port).into())?;
        let listener = socket.listen(128)?;
        let target = Arc::new(self.target.clone());
        let stall = self.stall.clone();
        self.running = Some(tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                let (stall, target) = (stall.clone(), target.clone());
                links.spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(target.as_str()).await {
                        let (from_client, to_client) = inbound.into_split();
                        let (from_target, to_target) = outbound.into_split();
                        tokio::join!(
                            pump(from_client, to_target, &stall, true),
                            pump(from_target, to_client, &stall, false),
                        );
                    }
                });
            }
        }));
        Ok(())
    }

    /// Stops forwarding as soon as a client sends `pattern` (that message included):
    /// connections, old and new, stay open, and what is sent through them waits in the proxy
    /// until [`Proxy::resume`]. A partition in the middle of a query, which a test cannot
    /// otherwise time.
    pub fn stall_when_sent(&self, pattern: &[u8]) {
        *self.stall.trigger() = Some(pattern.to_vec());
    }

    /// Forwards again, what waited first.
    pub fn resume(&self) {
        *self.stall.trigger() = None;
        self.stall.on.send_replace(false);
    }

    /// Stops listening and cuts every open connection (the task owning them is aborted, which
    /// drops the sockets).
    pub async fn down(&mut self) {
        if let Some(task) = self.running.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

/// Copies one direction of a proxied connection, holding what it read while the proxy is
/// stalled; on the client's side, it stalls the proxy when it reads the trigger.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stall: &Stall,
    from_client: bool,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stalled = stall.on.subscribe();
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if from_client {
            let trigger = stall.trigger();
            if let Some(pattern) = trigger.as_deref()
                && buf[..n].windows(pattern.len()).any(|w| w == pattern)
            {
                stall.on.send_replace(true);
            }
        }
        if stalled.wait_for(|stalled| !*stalled).await.is_err()
            || to.write_all(&buf[..n]).await.is_err()
        {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Marks a test process that [`own_process`] started for one test.
const OWN_PROCESS: &str = "VOKETAG_TEST_OWN_PROCESS";

/// Whether this process runs one test only: a child [`own_process`] started, or any test under
/// cargo-nextest, which gives every test a process of its own.
fn runs_one_test() -> bool {
    std::env::var_os(OWN_PROCESS).is_some()
        || std::env::var("NEXTEST_EXECUTION_MODE").is_ok_and(|mode| mode == "process-per-test")
}

/// The libtest name of a test from the type name of an item declared in its body, such as
/// `api::events::broker_away::{{closure}}::here` (an async test's body is a closure):
/// `events::broker_away`, without the crate, the closures and the item.
fn test_name(item_path: &str) -> String {
    let mut segments: Vec<&str> = item_path
        .split("::")
        .skip(1)
        .filter(|s| *s != "{{closure}}")
        .collect();
    segments.pop();
    segments.join("::")
}

/// Runs the calling test in a process of its own, for tests that read the process-wide metrics
/// recorder (`metrics` has one per process, so under `cargo test` every test of a binary adds to
/// the same counters). Under cargo-nextest, or in the child, it returns `true` and the test runs
/// here. Otherwise it runs this one test in a child process of the same test binary, waits,
/// panics with the child's output if the child failed or ran no test, and returns `false`: the
/// test has then passed, and its caller returns. Use it through [`in_own_process!`].
///
/// [`in_own_process!`]: crate::in_own_process
pub fn own_process(item_path: &str) -> bool {
    if runs_one_test() {
        return true;
    }
    run_alone(&test_name(item_path));
    false
}

/// Runs the test `name` (its libtest name) alone in a child process of this test binary, and
/// panics with the child's output unless exactly that test ran and passed.
fn run_alone(name: &str) {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => panic!("{name}: the test binary's path: {e}"),
    };
    let output = std::process::Command::new(exe)
        .args([name, "--exact", "--test-threads=1"])
        .env(OWN_PROCESS, "1")
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) => panic!("{name}: could not start its own process: {e}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    // Not only a clean exit: a name that matches no test, or an ignored test, runs nothing.
    let passed = stdout.contains("test result: ok. 1 passed;");
    if !output.status.success() || !passed {
        let what = if output.status.success() {
            "no such test ran"
        } else {
            "failed"
        };
        panic!(
            "{name} in its own process: {what} ({}):\n--- stdout\n{stdout}\n--- stderr\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
        );
    }
}

/// Runs the enclosing test in a process of its own (see [`testing::own_process`]): write
/// `common::in_own_process!();` as the test's first statement (`in_own_process!(Ok(()))` in a
/// test returning a `Result`). The test must be a `#[test]` or `#[tokio::test]` function (its libtest name is derived from the item's path;
/// a name that matches no test fails the test rather than passing it).
///
/// [`testing::own_process`]: crate::testing::own_process
#[macro_export]
macro_rules! in_own_process {
    () => {
        $crate::in_own_process!(())
    };
    // In a test returning a `Result`: `in_own_process!(Ok(()))`.
    ($passed:expr) => {{
        fn here() {}
        if !$crate::testing::own_process(::std::any::type_name_of_val(&here)) {
            return $passed;
        }
    }};
}

/// Log output captured in memory: a `MakeWriter` for a tracing subscriber (clone it into
/// `with_writer(move || logs.clone())`), read back with [`CapturedLogs::text`].
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// Everything written so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }

    /// How many bytes were written so far (to read only what came after, with [`Self::since`]).
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What was written after the first `from` bytes, as text.
    pub fn since(&self, from: usize) -> String {
        String::from_utf8_lossy(self.bytes().get(from..).unwrap_or_default()).into_owned()
    }

    fn bytes(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{run_alone, test_name};

    #[test]
    fn a_test_name_drops_the_crate_the_closures_and_the_item() {
        assert_eq!(
            test_name("api::events::broker_away::{{closure}}::here"),
            "events::broker_away"
        );
        assert_eq!(
            test_name("consumer::a_duplicated_event_counts_once::{{closure}}::here"),
            "a_duplicated_event_counts_once"
        );
        assert_eq!(test_name("audit::synchronous::here"), "synchronous");
    }

    /// The child runs this module's other test, by its libtest name.
    #[test]
    fn a_test_runs_alone_in_a_child_process() {
        run_alone("testing::tests::a_test_name_drops_the_crate_the_closures_and_the_item");
    }

    /// A name that matches no test is a failure, not a child that passes by running nothing.
    #[test]
    #[should_panic(expected = "no such test ran")]
    fn a_name_that_matches_no_test_fails() {
        run_alone("testing::tests::no_such_test");
    }
}
