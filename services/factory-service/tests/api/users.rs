//! Users: the bootstrap admin at start-up, and `factory-service user create`.

use std::io::Write as _;
use std::process::{Command, Stdio};

use common::testing::{TestDb, env_for};
use factory_service::{Application, FactoryConfig};
use secrecy::{ExposeSecret as _, SecretString};

use crate::helpers::{PASSWORD, spawn_app_with};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[tokio::test]
async fn the_bootstrap_admin_is_created_once_when_no_user_exists() {
    let app = spawn_app_with(|env| {
        env.with("BOOTSTRAP_ADMIN_EMAIL", "Boss@Example.com")
            .with("BOOTSTRAP_ADMIN_PASSWORD", PASSWORD)
    })
    .await;
    let session = app.login("boss@example.com").await;
    assert_eq!(
        app.get("/v1/api-keys", &session.access).await.status(),
        200,
        "an admin"
    );
    let actor: Option<String> =
        sqlx::query_scalar("SELECT actor_email FROM audit_events WHERE action = 'user.created'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(actor.as_deref(), Some("system"));

    // Another instance starting on the same database leaves the users alone.
    let env = env_for(&app.db)
        .with(
            "JWT_SECRET",
            "an-integration-test-secret-of-48-bytes-0123456789",
        )
        .with("BOOTSTRAP_ADMIN_EMAIL", "second@example.com")
        .with("BOOTSTRAP_ADMIN_PASSWORD", PASSWORD);
    let second = Application::build(FactoryConfig::from_env(&env).unwrap())
        .await
        .unwrap();
    drop(second);
    assert_eq!(app.count("SELECT count(*) FROM users").await, 1);
}

/// An address already in use stops start-up before anything is done: no bootstrap admin is
/// created by an instance that then cannot serve.
#[tokio::test]
async fn an_address_in_use_stops_start_up_before_the_bootstrap_admin_is_created() {
    let db = TestDb::new().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let env = env_for(&db)
        .with("BIND_ADDR", &taken.local_addr().unwrap().to_string())
        .with(
            "JWT_SECRET",
            "an-integration-test-secret-of-48-bytes-0123456789",
        )
        .with("BOOTSTRAP_ADMIN_EMAIL", "boss@example.com")
        .with("BOOTSTRAP_ADMIN_PASSWORD", PASSWORD);
    let Err(e) = Application::build(FactoryConfig::from_env(&env).unwrap()).await else {
        panic!("started on an address in use");
    };
    assert!(format!("{e:#}").starts_with("binding 127.0.0.1:"), "{e:#}");
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(users, 0);
}

fn user_create(db: &TestDb, email: &str, role: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_factory-service"));
    cmd.args(["user", "create", "--email", email, "--role", role])
        .env("DATABASE_URL", db.url.expose_secret())
        .env("RUST_LOG", "warn")
        .env_remove("FACTORY_USER_PASSWORD")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

async fn password_matches(db: &TestDb, email: &str, password: &str) -> bool {
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE email = $1")
        .bind(email)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(hash.starts_with("$argon2id$"), "argon2id: {hash}");
    factory_service::auth::password::verify(SecretString::from(password), hash)
        .await
        .unwrap()
}

#[tokio::test]
async fn user_create_reads_the_password_from_the_environment_or_stdin() -> TestResult {
    let db = TestDb::new().await;

    let out = user_create(&db, "ops@example.com", "operator")
        .env("FACTORY_USER_PASSWORD", "from the environment")
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(password_matches(&db, "ops@example.com", "from the environment").await);

    let mut child = user_create(&db, "viewer@example.com", "viewer")
        .stdin(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or("piped stdin")?
        .write_all(b"typed on standard input\n")?;
    let out = child.wait_with_output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(password_matches(&db, "viewer@example.com", "typed on standard input").await);

    let roles: Vec<String> = sqlx::query_scalar("SELECT role FROM users ORDER BY email")
        .fetch_all(&db.pool)
        .await?;
    assert_eq!(roles, ["operator", "viewer"]);

    // A password is never an argument; a taken email and a bad role are refused.
    let out = user_create(&db, "x@example.com", "admin")
        .arg("--password")
        .arg("nope")
        .output()?;
    assert!(!out.status.success());
    let out = user_create(&db, "ops@example.com", "admin")
        .env("FACTORY_USER_PASSWORD", "another password")
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = user_create(&db, "y@example.com", "root").output()?;
    assert!(!out.status.success());
    // An email that could never be used is refused before a password is asked for.
    let out = user_create(&db, "not-an-email", "admin")
        .stdin(Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("not an email address"), "{stderr}");
    assert!(!stderr.contains("password (one line"), "{stderr}");
    // Nothing on standard input is "no password given", not "too short".
    let out = user_create(&db, "z@example.com", "admin")
        .stdin(Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no password given"), "{stderr}");
    Ok(())
}

/// `migrate` and `user create` with nothing listening where `DATABASE_URL` points: one line
/// naming the place and the cause (not the pool's "timed out"), no password asked for, and the
/// URL's password nowhere. `user create`, run by hand, says it once (on stderr only); `migrate`,
/// which deployments run as a job, also logs it.
#[test]
fn commands_with_postgres_away_name_the_place_and_the_cause() {
    let port = common::testing::closed_port().unwrap();
    let url = format!("postgres://postgres:s3cret-pw@127.0.0.1:{port}/voketag");
    let expected =
        format!("cannot connect to PostgreSQL at 127.0.0.1:{port}/voketag (DATABASE_URL)");
    for args in [
        &["migrate"][..],
        &[
            "user",
            "create",
            "--email",
            "a@example.com",
            "--role",
            "admin",
        ],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_factory-service"))
            .args(args)
            .env("DATABASE_URL", &url)
            // Logs on, as an operator runs it: stderr still says the failure once.
            .env("RUST_LOG", "info")
            .env("LOG_FORMAT", "json")
            .env_remove("FACTORY_USER_PASSWORD")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(&expected), "{args:?}: {stderr}");
        let logged = stdout
            .lines()
            .any(|l| l.contains("\"level\":\"ERROR\"") && l.contains(&expected));
        assert_eq!(logged, args[0] == "migrate", "{args:?}: {stdout}");
        assert_eq!(
            stderr.matches(&expected).count(),
            1,
            "{args:?}: said once on stderr: {stderr}"
        );
        assert!(
            stderr.contains("is it running there?"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("timed out"), "{args:?}: {stderr}");
        assert!(!stderr.contains("password (one line"), "{args:?}: {stderr}");
        assert!(
            !format!("{stdout}{stderr}").contains("s3cret-pw"),
            "{args:?}"
        );
    }
}
