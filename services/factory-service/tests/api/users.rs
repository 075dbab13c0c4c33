//! Users: the bootstrap admin at start-up, and `factory-service user ...` (create, list,
//! disable, enable, set-role, set-password, end-sessions).

use std::io::Write as _;
use std::process::{Command, Stdio};

use common::testing::{TestDb, env_for};
use factory_service::{Application, FactoryConfig};
use secrecy::{ExposeSecret as _, SecretString};

use crate::helpers::{DEVICE, PASSWORD, TestApp, assert_error, spawn_app, spawn_app_with};
use factory_service::users::Role;
use serde_json::{Value, json};

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
    user_command(db, &["create", "--email", email, "--role", role])
}

/// `factory-service user <args>` against `db`, the password not set in the environment.
fn user_command(db: &TestDb, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_factory-service"));
    cmd.arg("user")
        .args(args)
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
    let turn = factory_service::auth::password::turn().await.unwrap();
    factory_service::auth::password::verify(turn, SecretString::from(password), hash)
        .await
        .unwrap()
}

/// An address is stored in one Unicode form, so it is found as either form is typed; and one
/// that would display as another address (an override, a zero-width space) cannot be made:
/// the console and the audit view showed such an account as `admin@example.com`.
#[tokio::test]
async fn an_email_is_one_account_in_either_unicode_form_and_shows_what_it_is() -> TestResult {
    let app = spawn_app().await;
    let out = user_create(&app.db, "Jose\u{301}@example.com", "viewer")
        .env("FACTORY_USER_PASSWORD", PASSWORD)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored: String = sqlx::query_scalar("SELECT email FROM users")
        .fetch_one(&app.db.pool)
        .await?;
    assert_eq!(stored, "jos\u{E9}@example.com");
    app.login("jos\u{E9}@example.com").await;
    app.login("JOSE\u{301}@EXAMPLE.COM").await;
    let out = user_create(&app.db, "JOS\u{C9}@example.com", "viewer")
        .env("FACTORY_USER_PASSWORD", PASSWORD)
        .output()?;
    assert!(!out.status.success(), "the same address again");
    for disguised in [
        "\u{202E}moc.elpmaxe@nimda",
        "admin\u{200B}@example.com",
        "\u{FEFF}admin@example.com",
    ] {
        let out = user_create(&app.db, disguised, "viewer")
            .env("FACTORY_USER_PASSWORD", PASSWORD)
            .output()?;
        assert!(!out.status.success(), "{disguised:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("not an email address"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.db.pool)
        .await?;
    assert_eq!(users, 1);
    Ok(())
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

/// At a terminal, the password is read without echo: it was shown as typed, so it stayed on
/// screen and in scrollback. `script` (util-linux) runs the command on a real pseudo-terminal
/// whose line discipline echoes input unless the program turns echo off.
#[tokio::test]
async fn a_password_typed_at_a_terminal_is_not_shown() -> TestResult {
    let db = TestDb::new().await;
    let password = "typed-at-a-tty-Zq81";
    let command = format!(
        "{} user create --email tty@example.com --role viewer",
        env!("CARGO_BIN_EXE_factory-service")
    );
    let mut child = Command::new("script")
        .args(["--quiet", "--return", "--command", &command, "/dev/null"])
        .env("DATABASE_URL", db.url.expose_secret())
        .env("RUST_LOG", "warn")
        .env_remove("FACTORY_USER_PASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdout = child.stdout.take().ok_or("piped stdout")?;
    let (sender, seen) = std::sync::mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok(n @ 1..) = std::io::Read::read(&mut stdout, &mut buf) {
            if sender.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    // Type only once the prompt is up and echo is off (rpassword turns it off right after the
    // prompt), as a person would; the pause leaves a busy machine ample time for that.
    let mut screen = Vec::new();
    while !String::from_utf8_lossy(&screen).contains("password") {
        screen.extend(seen.recv_timeout(std::time::Duration::from_secs(30))?);
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    let mut stdin = child.stdin.take().ok_or("piped stdin")?;
    stdin.write_all(format!("{password}\r").as_bytes())?;
    while let Ok(chunk) = seen.recv_timeout(std::time::Duration::from_secs(30)) {
        screen.extend(chunk);
    }
    drop(stdin);
    let status = child.wait()?;
    let _ = reader.join();
    let screen = String::from_utf8_lossy(&screen);
    assert!(status.success(), "{screen}");
    assert!(
        screen.contains("created viewer user tty@example.com"),
        "{screen}"
    );
    assert!(
        !screen.contains(password),
        "the password was shown: {screen}"
    );
    assert!(password_matches(&db, "tty@example.com", password).await);
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

/// Runs `factory-service user <args>` against the app's database; an error unless it succeeds.
/// Returns its stdout and stderr.
fn run_user(app: &TestApp, args: &[&str]) -> Result<(String, String), Box<dyn std::error::Error>> {
    let out = user_command(&app.db, args).stdin(Stdio::null()).output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(format!("user {args:?} failed: {stderr}").into());
    }
    Ok((stdout, stderr))
}

/// The details of the audit events with `action`, in order.
async fn audit_details(app: &TestApp, action: &str) -> Result<Vec<Value>, sqlx::Error> {
    sqlx::query_scalar("SELECT details FROM audit_events WHERE action = $1 ORDER BY seq")
        .bind(action)
        .fetch_all(&app.db.pool)
        .await
}

#[tokio::test]
async fn user_disable_ends_every_session_at_once_and_enable_lets_the_user_sign_in_again()
-> TestResult {
    let app = spawn_app().await;
    let email = app.user(Role::Operator).await;
    let s = app.login(&email).await;
    let product = format!("/v1/products/{}", app.product(&s.access).await);

    let (stdout, _) = run_user(&app, &["disable", "--email", &email])?;
    assert!(stdout.contains("1 live session(s) ended"), "{stdout}");
    // The token and the refresh cookie stop working now, and the password too.
    assert_error(app.get(&product, &s.access).await, 401, "session_ended").await;
    assert_eq!(
        app.refresh(&s.cookie(), Some(&s.csrf), DEVICE)
            .await
            .status(),
        401
    );
    assert_error(
        app.login_raw(&email, PASSWORD, DEVICE).await,
        401,
        "invalid_credentials",
    )
    .await;
    let user_id: String = sqlx::query_scalar("SELECT id::text FROM users WHERE email = $1")
        .bind(&email)
        .fetch_one(&app.db.pool)
        .await?;
    let target: Option<String> =
        sqlx::query_scalar("SELECT target_id FROM audit_events WHERE action = 'user.disabled'")
            .fetch_one(&app.db.pool)
            .await?;
    assert_eq!(target.as_deref(), Some(user_id.as_str()));
    assert_eq!(
        audit_details(&app, "user.disabled").await?,
        [json!({"email": email, "sessions_ended": 1})]
    );

    // Again: nothing to do, and nothing audited.
    let (stdout, _) = run_user(&app, &["disable", "--email", &email])?;
    assert!(stdout.contains("already disabled"), "{stdout}");
    assert_eq!(app.audit_count("user.disabled").await, 1);

    // Enabled, the user signs in anew; the old session stays ended.
    let (stdout, _) = run_user(&app, &["enable", "--email", &email.to_uppercase()])?;
    assert!(stdout.contains("enabled"), "{stdout}");
    assert_eq!(app.audit_count("user.enabled").await, 1);
    let again = app.login(&email).await;
    assert_eq!(app.get(&product, &again.access).await.status(), 200);
    assert_error(app.get(&product, &s.access).await, 401, "session_ended").await;
    let (stdout, _) = run_user(&app, &["enable", "--email", &email])?;
    assert!(stdout.contains("was not disabled"), "{stdout}");
    assert_eq!(app.audit_count("user.enabled").await, 1);

    // An email no user has is an error that names it, and changes nothing.
    let out = user_command(&app.db, &["disable", "--email", "nobody@example.com"]).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no user has the email nobody@example.com"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn user_set_role_applies_to_tokens_already_issued_and_is_audited() -> TestResult {
    let app = spawn_app().await;
    let email = app.user(Role::Admin).await;
    let s = app.login(&email).await;
    assert_eq!(app.get("/v1/api-keys", &s.access).await.status(), 200);

    let (stdout, stderr) = run_user(&app, &["set-role", "--email", &email, "--role", "viewer"])?;
    assert!(stdout.contains("is now viewer (was admin)"), "{stdout}");
    // The only admin is gone: the operator is told.
    assert!(stderr.contains("no active admin is left"), "{stderr}");
    assert_error(app.get("/v1/api-keys", &s.access).await, 403, "forbidden").await;
    assert_eq!(
        audit_details(&app, "user.role_changed").await?,
        [json!({"email": email, "from": "admin", "to": "viewer"})]
    );

    let (stdout, _) = run_user(&app, &["set-role", "--email", &email, "--role", "viewer"])?;
    assert!(stdout.contains("already viewer"), "{stdout}");
    let (_, stderr) = run_user(&app, &["set-role", "--email", &email, "--role", "admin"])?;
    assert!(!stderr.contains("no active admin"), "{stderr}");
    assert_eq!(app.get("/v1/api-keys", &s.access).await.status(), 200);
    assert_eq!(app.audit_count("user.role_changed").await, 2);
    let out = user_command(&app.db, &["set-role", "--email", &email, "--role", "root"]).output()?;
    assert!(!out.status.success());
    Ok(())
}

#[tokio::test]
async fn user_set_password_replaces_the_password_and_ends_every_session() -> TestResult {
    let app = spawn_app().await;
    let email = app.user(Role::Viewer).await;
    let s = app.login(&email).await;
    assert_error(app.get("/v1/api-keys", &s.access).await, 403, "forbidden").await;
    let new_password = "a new password of some length";

    // A password that breaks the rules changes nothing.
    let out = user_command(&app.db, &["set-password", "--email", &email])
        .env("FACTORY_USER_PASSWORD", "short")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("shorter than 12 characters"), "{stderr}");
    assert_eq!(app.login_raw(&email, PASSWORD, DEVICE).await.status(), 200);

    let mut child = user_command(&app.db, &["set-password", "--email", &email])
        .stdin(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or("piped stdin")?
        .write_all(format!("{new_password}\n").as_bytes())?;
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Both sessions: the one above and the check's login.
    assert!(stdout.contains("2 live session(s) ended"), "{stdout}");

    assert_error(
        app.login_raw(&email, PASSWORD, DEVICE).await,
        401,
        "invalid_credentials",
    )
    .await;
    assert_eq!(
        app.login_raw(&email, new_password, DEVICE).await.status(),
        200
    );
    // A viewer's token was refused this route as forbidden; its session has ended now.
    assert_error(
        app.get("/v1/api-keys", &s.access).await,
        401,
        "session_ended",
    )
    .await;
    // The event says whose password changed, never the password or its hash.
    assert_eq!(
        audit_details(&app, "user.password_changed").await?,
        [json!({"email": email, "sessions_ended": 2})]
    );
    Ok(())
}

#[tokio::test]
async fn user_end_sessions_signs_a_user_out_everywhere_and_user_list_shows_it() -> TestResult {
    let app = spawn_app().await;
    let email = app.user(Role::Operator).await;
    let other = app.user(Role::Viewer).await;
    let first = app.login(&email).await;
    let second = app.login(&email).await;
    let others = app.login(&other).await;
    let product = format!("/v1/products/{}", app.product(&first.access).await);

    let (stdout, _) = run_user(&app, &["list"])?;
    let line = |stdout: &str, email: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{email}\t")))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    assert!(
        line(&stdout, &email).starts_with(&format!("{email}\toperator\tactive\t2\t")),
        "{stdout}"
    );

    let (stdout, _) = run_user(&app, &["end-sessions", "--email", &email])?;
    assert!(stdout.contains("2 live session(s)"), "{stdout}");
    for s in [&first, &second] {
        assert_error(app.get(&product, &s.access).await, 401, "session_ended").await;
    }
    // Another user's session is left alone, and the user signs in again.
    assert_eq!(app.get(&product, &others.access).await.status(), 200);
    app.login(&email).await;
    assert_eq!(
        audit_details(&app, "user.sessions_ended").await?,
        [json!({"email": email, "sessions_ended": 2})]
    );

    run_user(&app, &["disable", "--email", &other])?;
    let (stdout, _) = run_user(&app, &["list"])?;
    assert!(
        line(&stdout, &email).starts_with(&format!("{email}\toperator\tactive\t1\t")),
        "{stdout}"
    );
    assert!(
        line(&stdout, &other).starts_with(&format!("{other}\tviewer\tdisabled since ")),
        "{stdout}"
    );
    assert!(line(&stdout, &other).contains("\t0\t"), "{stdout}");
    Ok(())
}

/// A login that read the account just before an operator's change to it (here a new password
/// and its sessions ended, as `user set-password` does in one transaction) does not get a
/// session past the change: it waits for the change, sees that the account it verified is no
/// longer the account, and is refused. Before, its session was inserted after the change's
/// revocations and survived it.
#[tokio::test]
async fn a_login_racing_an_operators_change_to_the_account_does_not_survive_it() -> TestResult {
    let app = spawn_app().await;
    let email = app.user(Role::Operator).await;
    let new_hash =
        factory_service::auth::password::hash(SecretString::from("the operator's new password"))
            .await?;
    // The operator's change holds the user's row, as `lock_user` does.
    let mut change = app.db.pool.begin().await?;
    let id: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM users WHERE email = $1 FOR NO KEY UPDATE")
            .bind(&email)
            .fetch_one(&mut *change)
            .await?;
    // The login reads the account (no lock) and checks the old password meanwhile.
    let login = {
        let client = app.client.clone();
        let url = format!("{}/v1/auth/login", app.base);
        let email = email.clone();
        tokio::spawn(async move {
            client
                .post(url)
                .header("X-Device-ID", DEVICE)
                .json(&json!({"email": email, "password": PASSWORD}))
                .send()
                .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
        .bind(id)
        .bind(&new_hash)
        .execute(&mut *change)
        .await?;
    sqlx::query(
        "UPDATE refresh_families SET revoked_at = now(), revoked_reason = 'password_changed' \
         WHERE user_id = $1 AND revoked_at IS NULL",
    )
    .bind(id)
    .execute(&mut *change)
    .await?;
    change.commit().await?;
    assert_error(login.await??, 401, "invalid_credentials").await;
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM refresh_families WHERE user_id = '{id}' AND revoked_at IS NULL"
        ))
        .await,
        0,
        "no live session"
    );
    Ok(())
}

/// An operator's change to an account goes through while that account's own writes run. Each
/// write referencing the user (a new API key, an idempotency record) holds a key-share lock on
/// its row until it commits; played here by the test's transactions. The change locked the user
/// `FOR UPDATE`, which waits for every such lock: a stream of writes made it wait for minutes.
/// And a keyed write holds the audit chain's head before it records its key: with the change
/// holding the user and wanting the head, that was a deadlock (the change failed, or the write
/// got a 500).
#[tokio::test]
async fn a_change_to_an_account_does_not_wait_for_or_deadlock_with_its_own_writes() -> TestResult {
    let app = spawn_app().await;
    let email = app.user(Role::Admin).await;
    let user_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
        .bind(&email)
        .fetch_one(&app.db.pool)
        .await?;
    let reference_the_user = "INSERT INTO api_keys (id, name, prefix, key_hash, created_by) \
        VALUES (gen_random_uuid(), 'in flight', left(md5(random()::text), 8), \
                sha256(random()::text::bytea), $1)";
    let finished = |mut change: std::process::Child| async move {
        for _ in 0..1200 {
            if let Some(status) = change.try_wait()? {
                return Ok::<_, Box<dyn std::error::Error>>(Some(status));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        change.kill()?;
        Ok(None)
    };

    // A write in flight that references the user: the change does not wait for it.
    let mut write = app.db.pool.begin().await?;
    sqlx::query(reference_the_user)
        .bind(user_id)
        .execute(&mut *write)
        .await?;
    let args = ["set-role", "--email", email.as_str(), "--role", "operator"];
    let change = user_command(&app.db, &args).stdin(Stdio::null()).spawn()?;
    let status = finished(change).await?;
    assert!(
        status.is_some_and(|s| s.success()),
        "set-role finished while the write ran: {status:?}"
    );
    write.commit().await?;

    for args in [
        ["end-sessions", "--email", email.as_str()].as_slice(),
        ["disable", "--email", email.as_str()].as_slice(),
    ] {
        // A session for end-sessions to end.
        app.login(&email).await;
        // A keyed write: its audit event appended (the head held), its key not yet recorded.
        let mut write = app.db.pool.begin().await?;
        sqlx::query("SELECT 1 FROM audit_chain_head FOR UPDATE")
            .execute(&mut *write)
            .await?;
        let mut change = user_command(&app.db, args).stdin(Stdio::null()).spawn()?;
        // The change holds the user and waits for the head.
        let waiting = app
            .count_until_positive(
                // (The append's text is longer than pg_stat_activity keeps of it.)
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock' \
                   AND query LIKE '-- Appends %'",
                || change.try_wait().is_ok_and(|exited| exited.is_some()),
            )
            .await;
        assert!(waiting > 0, "{args:?}: the change waits for the head");
        // The write records its key, referencing the user, and commits.
        sqlx::query(reference_the_user)
            .bind(user_id)
            .execute(&mut *write)
            .await?;
        write.commit().await?;
        let status = finished(change).await?;
        assert!(status.is_some_and(|s| s.success()), "{args:?}: {status:?}");
    }
    assert_eq!(app.audit_count("user.role_changed").await, 1);
    assert_eq!(app.audit_count("user.disabled").await, 1);
    Ok(())
}
