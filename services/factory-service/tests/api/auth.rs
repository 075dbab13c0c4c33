//! CONTRACT 3.1: login, access-token expiry, refresh rotation, reuse and device binding, CSRF,
//! logout, login rate limit.

use std::time::{Duration, Instant};

use factory_service::users::Role;
use reqwest::Method;
use serde_json::json;

use common::testing::Proxy;

use crate::helpers::{
    DEVICE, JWT_SECRET, PASSWORD, assert_error, body, session_of, set_cookie, spawn_app,
    spawn_app_with,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[tokio::test]
async fn login_returns_an_access_token_and_the_contract_cookies() {
    let app = spawn_app().await;
    let email = app.user(Role::Admin).await;
    let r = app.login_raw(&email, PASSWORD, DEVICE).await;
    assert_eq!(r.status(), 200);
    let (_, refresh_attrs) = set_cookie(r.headers(), "__Host-vt_refresh").expect("refresh cookie");
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(
            refresh_attrs.contains(flag),
            "refresh cookie has {flag}: {refresh_attrs}"
        );
    }
    let (_, csrf_attrs) = set_cookie(r.headers(), "__Host-vt_csrf").expect("csrf cookie");
    for flag in ["Secure", "SameSite=Strict", "Path=/"] {
        assert!(
            csrf_attrs.contains(flag),
            "csrf cookie has {flag}: {csrf_attrs}"
        );
    }
    assert!(
        !csrf_attrs.contains("HttpOnly"),
        "the console's script must read the csrf cookie"
    );
    let session = session_of(r).await;
    let r = app.get("/v1/api-keys", &session.access).await;
    assert_eq!(r.status(), 200);
    assert_eq!(app.audit_count("auth.login").await, 1);
    let (ip, ua): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT client_ip, user_agent FROM audit_events WHERE action = 'auth.login'",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(ua.as_deref(), Some("api-tests/1.0"));
}

#[tokio::test]
async fn login_body_has_token_type_and_expiry() {
    let app = spawn_app().await;
    let email = app.user(Role::Viewer).await;
    let b = body(app.login_raw(&email, PASSWORD, DEVICE).await).await;
    assert_eq!(b["token_type"], "Bearer");
    assert_eq!(b["expires_in"], 900);
}

#[tokio::test]
async fn wrong_password_and_unknown_email_look_the_same() {
    let app = spawn_app().await;
    let email = app.user(Role::Admin).await;
    // Warm up the connection pool so neither measurement pays for it.
    let _ = app.login_raw("warmup@example.com", "x", DEVICE).await;

    // The fastest of three tries each, so a busy machine's hiccups do not decide the test.
    let mut wrong_time = Duration::MAX;
    let mut unknown_time = Duration::MAX;
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let wrong = app
            .login_raw(&email, "not the password at all", DEVICE)
            .await;
        wrong_time = wrong_time.min(started.elapsed());
        bodies.push(assert_error(wrong, 401, "invalid_credentials").await);

        let started = Instant::now();
        let unknown = app
            .login_raw("nobody@example.com", "not the password at all", DEVICE)
            .await;
        unknown_time = unknown_time.min(started.elapsed());
        bodies.push(assert_error(unknown, 401, "invalid_credentials").await);
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "same body for both: {bodies:?}"
    );
    // Both verify one argon2 hash; without the dummy hash the unknown email would answer in
    // a small fraction of the time.
    assert!(
        unknown_time * 3 > wrong_time && wrong_time * 3 > unknown_time,
        "similar time: wrong {wrong_time:?}, unknown {unknown_time:?}"
    );
    assert_eq!(app.audit_count("auth.login_failed").await, 7);
}

/// Text that no stored address could be (a NUL, a control character, no `@`) is a wrong email
/// like any other: the same 401, and a failed login on record. A NUL sent on to PostgreSQL in
/// the look-up was refused there, and came back as 400 `validation_failed`.
#[tokio::test]
async fn an_email_no_account_could_have_is_invalid_credentials() {
    let app = spawn_app().await;
    for given in [
        "nul\u{0}@example.com",
        "bell\u{7}@example.com",
        "no-at-sign",
    ] {
        assert_error(
            app.login_raw(given, "not the password at all", DEVICE)
                .await,
            401,
            "invalid_credentials",
        )
        .await;
    }
    assert_eq!(app.audit_count("auth.login_failed").await, 3);
}

/// An `auth.login_failed` event: actor email, target type and id, details.
type FailedLogin = (
    Option<String>,
    Option<String>,
    Option<String>,
    serde_json::Value,
);

/// The audit chain is permanent, so a failed login records the address of the account it was
/// against, and nothing of text that matched no account: that may be a password typed into the
/// wrong field, or anything an anonymous caller wants written into the log.
#[tokio::test]
async fn a_failed_login_never_records_what_matched_no_account() {
    let app = spawn_app().await;
    let email = app.user(Role::Operator).await;
    for (given, password) in [
        (email.to_uppercase(), "not the password at all"),
        ("MyS3cretPassw0rd!".to_owned(), "whatever"),
        ("nobody@example.com".to_owned(), "whatever"),
    ] {
        assert_error(
            app.login_raw(&given, password, DEVICE).await,
            401,
            "invalid_credentials",
        )
        .await;
    }
    // A disabled account, with its right password.
    let disabled = app.user(Role::Viewer).await;
    sqlx::query("UPDATE users SET disabled_at = now() WHERE email = $1")
        .bind(&disabled)
        .execute(&app.db.pool)
        .await
        .expect("disable");
    assert_error(
        app.login_raw(&disabled, PASSWORD, DEVICE).await,
        401,
        "invalid_credentials",
    )
    .await;
    let id_of = async |email: &str| -> uuid::Uuid {
        sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
            .bind(email)
            .fetch_one(&app.db.pool)
            .await
            .expect("the user")
    };
    let user_id = id_of(&email).await;
    let disabled_id = id_of(&disabled).await;
    let rows: Vec<FailedLogin> = sqlx::query_as(
        "SELECT actor_email, target_type, target_id, details FROM audit_events \
             WHERE action = 'auth.login_failed' ORDER BY seq",
    )
    .fetch_all(&app.db.pool)
    .await
    .expect("audit events");
    let against_the_account = (
        Some(email.clone()),
        Some("user".to_owned()),
        Some(user_id.to_string()),
        json!({"reason": "wrong_password"}),
    );
    let against_nothing = (None, None, None, json!({"reason": "unknown_email"}));
    let against_the_disabled_account = (
        Some(disabled.clone()),
        Some("user".to_owned()),
        Some(disabled_id.to_string()),
        json!({"reason": "user_disabled"}),
    );
    assert_eq!(
        rows,
        vec![
            against_the_account,
            against_nothing.clone(),
            against_nothing,
            against_the_disabled_account
        ]
    );
    let dump: String = sqlx::query_scalar("SELECT string_agg(e::text, ' ') FROM audit_events e")
        .fetch_one(&app.db.pool)
        .await
        .expect("audit text");
    assert!(!dump.to_lowercase().contains("mys3cret"), "{dump}");
    assert!(!dump.contains("nobody@"), "{dump}");
}

#[tokio::test]
async fn login_needs_a_device_id_of_16_to_128_characters() {
    let app = spawn_app().await;
    let email = app.user(Role::Admin).await;
    assert_error(
        app.login_raw(&email, PASSWORD, "short").await,
        400,
        "invalid_device_id",
    )
    .await;
    assert_error(
        app.login_raw(&email, PASSWORD, &"d".repeat(129)).await,
        400,
        "invalid_device_id",
    )
    .await;
}

#[tokio::test]
async fn access_tokens_expire() {
    // Two seconds: a token is expired at its `exp`, so one of a second's lifetime issued late
    // in a second would already be expired by the first request.
    let app = spawn_app_with(|env| env.with("ACCESS_TOKEN_TTL_SEC", "2")).await;
    let session = app.signed_in(Role::Admin).await;
    assert_eq!(app.get("/v1/api-keys", &session.access).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_error(
        app.get("/v1/api-keys", &session.access).await,
        401,
        "token_expired",
    )
    .await;
    assert_error(
        app.get("/v1/api-keys", "not-a-token").await,
        401,
        "invalid_token",
    )
    .await;
}

#[tokio::test]
async fn refresh_rotates_both_cookies_and_issues_a_working_token() {
    let app = spawn_app().await;
    let s1 = app.signed_in(Role::Admin).await;
    let r = app.refresh(&s1.cookie(), Some(&s1.csrf), DEVICE).await;
    assert_eq!(r.status(), 200);
    let s2 = session_of(r).await;
    assert_ne!(s2.refresh, s1.refresh, "refresh token rotated");
    assert_ne!(s2.csrf, s1.csrf, "csrf token rotated");
    assert_eq!(app.get("/v1/api-keys", &s2.access).await.status(), 200);
    // And again with the new pair.
    let r = app.refresh(&s2.cookie(), Some(&s2.csrf), DEVICE).await;
    assert_eq!(r.status(), 200);
    let stored = app.count("SELECT count(*) FROM refresh_tokens").await;
    assert_eq!(stored, 3);
}

#[tokio::test]
async fn reusing_a_rotated_refresh_token_revokes_the_whole_family() {
    let app = spawn_app().await;
    let s1 = app.signed_in(Role::Admin).await;
    let s2 = session_of(app.refresh(&s1.cookie(), Some(&s1.csrf), DEVICE).await).await;
    // An attacker replays the first token (with the CSRF pair from that time).
    assert_error(
        app.refresh(&s1.cookie(), Some(&s1.csrf), DEVICE).await,
        401,
        "refresh_token_reused",
    )
    .await;
    // The newest token of the family is dead too, and so are the access tokens issued in it
    // (the thief's and the rightful user's), at once rather than when they expire.
    assert_error(
        app.refresh(&s2.cookie(), Some(&s2.csrf), DEVICE).await,
        401,
        "invalid_refresh_token",
    )
    .await;
    for access in [&s1.access, &s2.access] {
        assert_error(app.get("/v1/api-keys", access).await, 401, "session_ended").await;
    }
    // Replayed again later, the old token is still reported as reused (not as unknown), and the
    // family is not revoked twice.
    assert_error(
        app.refresh(&s1.cookie(), Some(&s1.csrf), DEVICE).await,
        401,
        "refresh_token_reused",
    )
    .await;
    assert_eq!(app.audit_count("auth.refresh_reuse_detected").await, 1);
    let reason: Option<String> = sqlx::query_scalar("SELECT revoked_reason FROM refresh_families")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(reason.as_deref(), Some("reuse"));
}

#[tokio::test]
async fn refresh_from_another_device_revokes_the_family() {
    let app = spawn_app().await;
    // A well-formed other id, and a malformed one: both are not the login's device.
    for other in ["another-device-0123456789", "short"] {
        let s1 = app.signed_in(Role::Admin).await;
        assert_eq!(app.get("/v1/api-keys", &s1.access).await.status(), 200);
        let r = app.refresh(&s1.cookie(), Some(&s1.csrf), other).await;
        assert_error(r, 401, "device_mismatch").await;
        assert_error(
            app.get("/v1/api-keys", &s1.access).await,
            401,
            "session_ended",
        )
        .await;
        // The rightful device cannot continue either: the family is gone.
        assert_error(
            app.refresh(&s1.cookie(), Some(&s1.csrf), DEVICE).await,
            401,
            "invalid_refresh_token",
        )
        .await;
    }
}

/// The `Max-Age` of the refresh cookie `headers` set.
fn refresh_max_age(headers: &reqwest::header::HeaderMap) -> i64 {
    let (_, attrs) = set_cookie(headers, "__Host-vt_refresh").expect("refresh cookie");
    attrs
        .split(';')
        .find_map(|a| a.trim().strip_prefix("Max-Age="))
        .and_then(|v| v.parse().ok())
        .expect("Max-Age")
}

/// Sets every session's login to `secs` seconds ago.
async fn sessions_started_ago(app: &crate::helpers::TestApp, secs: f64) {
    sqlx::query("UPDATE refresh_families SET created_at = now() - make_interval(secs => $1)")
        .bind(secs)
        .execute(&app.db.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_session_ends_at_its_maximum_lifetime_however_often_it_is_refreshed() {
    // The lifetimes are at least a minute, too long to wait for in a test: the login is moved
    // back in the database instead (time passing, not a stand-in for a dependency).
    let app = spawn_app_with(|env| {
        env.with("REFRESH_TOKEN_TTL_SEC", "3600")
            .with("REFRESH_SESSION_MAX_SEC", "7200")
    })
    .await;
    let email = app.user(Role::Admin).await;
    let r = app.login_raw(&email, PASSWORD, DEVICE).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        refresh_max_age(r.headers()),
        3600,
        "a login's token: its whole lifetime"
    );
    let s1 = session_of(r).await;

    // Refreshed 100 s before the session's end: the new token lives only until that end.
    sessions_started_ago(&app, 7100.0).await;
    let r = app.refresh(&s1.cookie(), Some(&s1.csrf), DEVICE).await;
    assert_eq!(r.status(), 200);
    let max_age = refresh_max_age(r.headers());
    assert!(
        (95..=100).contains(&max_age),
        "cookie cut at the session's end: {max_age}"
    );
    let s2 = session_of(r).await;
    let left: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM t.expires_at - f.created_at)::float8 \
         FROM refresh_tokens t JOIN refresh_families f ON f.id = t.family_id \
         WHERE t.rotated_at IS NULL",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(left, 7200.0, "the token expires with the session");
    // So does the access token issued with it, not 15 minutes later.
    assert!(
        (95..=100).contains(&s2.expires_in),
        "access token cut at the session's end: {}",
        s2.expires_in
    );
    assert_eq!(app.get("/v1/api-keys", &s2.access).await.status(), 200);

    // Past the end, the newest token is refused, though its own expiry was not cut yet.
    sessions_started_ago(&app, 7201.0).await;
    sqlx::query("UPDATE refresh_tokens SET expires_at = now() + interval '1 hour'")
        .execute(&app.db.pool)
        .await
        .unwrap();
    assert_error(
        app.refresh(&s2.cookie(), Some(&s2.csrf), DEVICE).await,
        401,
        "invalid_refresh_token",
    )
    .await;
}

/// Whether `headers` delete both session cookies.
fn clears_both_cookies(headers: &reqwest::header::HeaderMap) -> bool {
    ["__Host-vt_refresh", "__Host-vt_csrf"].iter().all(|name| {
        set_cookie(headers, name)
            .is_some_and(|(value, attrs)| value.is_empty() && attrs.contains("Max-Age=0"))
    })
}

#[tokio::test]
async fn a_reused_or_foreign_refresh_cookie_is_deleted_but_not_on_a_csrf_failure() {
    let app = spawn_app().await;
    // Reused: the replayed token's answer deletes the cookies it came with.
    let s1 = app.signed_in(Role::Admin).await;
    let _s2 = session_of(app.refresh(&s1.cookie(), Some(&s1.csrf), DEVICE).await).await;
    let r = app.refresh(&s1.cookie(), Some(&s1.csrf), DEVICE).await;
    assert!(clears_both_cookies(r.headers()), "{:?}", r.headers());
    assert_error(r, 401, "refresh_token_reused").await;
    // Another device.
    let s = app.signed_in(Role::Admin).await;
    let r = app
        .refresh(&s.cookie(), Some(&s.csrf), "another-device-0123456789")
        .await;
    assert!(clears_both_cookies(r.headers()), "{:?}", r.headers());
    assert_error(r, 401, "device_mismatch").await;
    // Signing out with a cookie the server no longer knows still deletes it.
    let r = app
        .req(Method::POST, "/v1/auth/logout", None)
        .header("Cookie", "__Host-vt_refresh=gone; __Host-vt_csrf=x.y")
        .header("X-CSRF-Token", "x.y")
        .send()
        .await
        .unwrap();
    assert!(clears_both_cookies(r.headers()), "{:?}", r.headers());
    assert_error(r, 401, "invalid_refresh_token").await;
    // A CSRF failure deletes nothing, and the session goes on. (An unknown cookie, and none:
    // `refresh_without_a_cookie_or_with_an_unknown_one_is_401`.)
    let s = app.signed_in(Role::Admin).await;
    let r = app.refresh(&s.cookie(), Some("wrong.csrf"), DEVICE).await;
    assert!(r.headers().get("set-cookie").is_none(), "{:?}", r.headers());
    assert_error(r, 403, "csrf_failed").await;
    assert_eq!(
        app.refresh(&s.cookie(), Some(&s.csrf), DEVICE)
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn successful_logins_do_not_use_up_the_login_limits() {
    let app = spawn_app().await;
    let email = app.user(Role::Viewer).await;
    // More than the email's burst of 10: only failed attempts count.
    for i in 0..12 {
        let r = app.login_raw(&email, PASSWORD, DEVICE).await;
        assert_eq!(r.status(), 200, "login {i}");
    }
}

/// A client that stops waiting for its login (a timeout shorter than the password check, a
/// connection dropped) with the right password: the attempt was cut off with the request, after
/// it had spent a login token and before the refund a success gives, so 10 such attempts (the burst) locked
/// the account out for everyone, with nothing in the audit log to say why. Each attempt is held
/// after its password check (the test holds the user's row), its client's connection reset,
/// and then let go.
#[tokio::test]
async fn logins_whose_clients_stop_waiting_are_decided_and_do_not_use_up_the_limit() -> TestResult {
    use tokio::io::AsyncWriteExt as _;
    let app = spawn_app().await;
    let email = app.user(Role::Viewer).await;
    let mut hold = app.db.pool.begin().await?;
    sqlx::query("SELECT 1 FROM users WHERE email = $1 FOR UPDATE")
        .bind(&email)
        .execute(&mut *hold)
        .await?;
    let login = json!({"email": email, "password": PASSWORD}).to_string();
    let request = format!(
        "POST /v1/auth/login HTTP/1.1\r\nHost: test\r\nX-Device-ID: {DEVICE}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{login}",
        login.len()
    );
    // The email's burst: each attempt takes a token before its password check.
    let mut clients = Vec::new();
    for _ in 0..10 {
        let mut stream =
            tokio::net::TcpStream::connect(app.base.trim_start_matches("http://")).await?;
        stream.write_all(request.as_bytes()).await?;
        clients.push(stream);
    }
    let mut waiting = 0;
    for _ in 0..600 {
        waiting = app
            .count(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event_type = 'Lock' AND query LIKE '%FOR SHARE%'",
            )
            .await;
        if waiting == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(waiting, 10, "all 10 logins passed their password check");
    for stream in clients {
        stream.set_zero_linger()?;
        drop(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    hold.rollback().await?;
    let mut recorded = 0;
    for _ in 0..100 {
        recorded = app.audit_count("auth.login").await;
        if recorded == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(recorded, 10, "each attempt decided and recorded");
    let r = app.login_raw(&email, PASSWORD, DEVICE).await;
    assert_eq!(r.status(), 200, "the account is not locked out");
    Ok(())
}

#[tokio::test]
async fn csrf_missing_wrong_or_from_another_session_is_403() {
    let app = spawn_app().await;
    let email = app.user(Role::Admin).await;
    let s = app.login(&email).await;
    let other = app.login(&email).await;

    // Missing header.
    assert_error(
        app.refresh(&s.cookie(), None, DEVICE).await,
        403,
        "csrf_failed",
    )
    .await;
    // Header differs from the cookie.
    assert_error(
        app.refresh(&s.cookie(), Some("x.y"), DEVICE).await,
        403,
        "csrf_failed",
    )
    .await;
    // Header equals the cookie, but both were minted for another session.
    let mixed = format!(
        "__Host-vt_refresh={}; __Host-vt_csrf={}",
        s.refresh, other.csrf
    );
    let r = app.refresh(&mixed, Some(&other.csrf), DEVICE).await;
    assert!(r.headers().get("set-cookie").is_none(), "{:?}", r.headers());
    assert_error(r, 403, "csrf_failed").await;
    // Missing cookie.
    let no_csrf_cookie = format!("__Host-vt_refresh={}", s.refresh);
    assert_error(
        app.refresh(&no_csrf_cookie, Some(&s.csrf), DEVICE).await,
        403,
        "csrf_failed",
    )
    .await;

    // Logout checks it the same way.
    let logout = |cookie: String, csrf: Option<String>| {
        let mut b = app
            .req(Method::POST, "/v1/auth/logout", None)
            .header("Cookie", cookie);
        if let Some(c) = csrf {
            b = b.header("X-CSRF-Token", c);
        }
        b.send()
    };
    // A 403 deletes nothing.
    for r in [
        logout(s.cookie(), None).await.unwrap(),
        logout(mixed.clone(), Some(other.csrf.clone()))
            .await
            .unwrap(),
    ] {
        assert!(r.headers().get("set-cookie").is_none(), "{:?}", r.headers());
        assert_error(r, 403, "csrf_failed").await;
    }

    // None of that hurt the real session.
    assert_eq!(
        app.refresh(&s.cookie(), Some(&s.csrf), DEVICE)
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn logout_revokes_the_family_and_clears_both_cookies() -> TestResult {
    let app = spawn_app().await;
    let email = app.user(Role::Operator).await;
    let s = app.login(&email).await;
    // The same user signed in elsewhere: another session, which signing out here leaves alone.
    let elsewhere = app.login(&email).await;
    let product = format!("/v1/products/{}", app.product(&s.access).await);
    assert_eq!(app.get(&product, &s.access).await.status(), 200);
    let r = app.logout(&s).await?;
    assert!(clears_both_cookies(r.headers()), "{:?}", r.headers());
    assert_error(
        app.refresh(&s.cookie(), Some(&s.csrf), DEVICE).await,
        401,
        "invalid_refresh_token",
    )
    .await;
    assert_eq!(app.audit_count("auth.logout").await, 1);
    // The session's access token ends with it, not when it expires.
    assert_error(app.get(&product, &s.access).await, 401, "session_ended").await;
    assert_eq!(app.get(&product, &elsewhere.access).await.status(), 200);
    Ok(())
}

/// Signing out with a rotated refresh token (a stolen copy) ends the session as any sign-out
/// does, but is recorded as the reuse it is, not as the user's own sign-out.
#[tokio::test]
async fn signing_out_with_a_rotated_token_is_recorded_as_reuse() -> TestResult {
    let app = spawn_app().await;
    let s1 = app.signed_in(Role::Admin).await;
    let s2 = session_of(app.refresh(&s1.cookie(), Some(&s1.csrf), DEVICE).await).await;
    app.logout(&s1).await?;
    assert_eq!(app.audit_count("auth.refresh_reuse_detected").await, 1);
    assert_eq!(app.audit_count("auth.logout").await, 0);
    let reason: Option<String> = sqlx::query_scalar("SELECT revoked_reason FROM refresh_families")
        .fetch_one(&app.db.pool)
        .await?;
    assert_eq!(reason.as_deref(), Some("reuse"));
    assert_error(
        app.refresh(&s2.cookie(), Some(&s2.csrf), DEVICE).await,
        401,
        "invalid_refresh_token",
    )
    .await;
    Ok(())
}

/// The admin limit charges a request to the user its token names before the session is
/// looked up. A token whose session has ended (a thief's, after reuse was detected) is charged
/// to its address instead, and its answers show that bucket's figures: it can neither use up
/// nor watch the budget of the user's live session.
#[tokio::test]
async fn a_token_whose_session_ended_is_limited_by_its_address_not_the_users_budget() -> TestResult
{
    let app = spawn_app_with(|env| {
        env.with("ADMIN_RATE_LIMIT_BURST", "20")
            .with("ADMIN_RATE_LIMIT_RPS", "1")
    })
    .await;
    let email = app.user(Role::Viewer).await;
    let (ended, live) = (app.login(&email).await, app.login(&email).await);
    app.logout(&ended).await?;
    let mut answers = Vec::new();
    for _ in 0..30 {
        let r = app.get("/v1/api-keys", &ended.access).await;
        let remaining = r
            .headers()
            .get("x-ratelimit-remaining")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        answers.push((r.status().as_u16(), remaining));
    }
    // The address's bucket (which the two logins and the logout also took from) runs out; the
    // 401s count its tokens down.
    assert!(
        answers.iter().all(|(s, _)| [401, 429].contains(s))
            && answers.iter().any(|(s, _)| *s == 429),
        "the ended session's answers: {answers:?}"
    );
    let counted: Vec<u64> = answers
        .iter()
        .filter(|(s, _)| *s == 401)
        .filter_map(|(_, left)| left.as_deref()?.parse().ok())
        .collect();
    assert!(
        counted.len() > 5 && counted.windows(2).all(|w| w[1] < w[0]),
        "the 401s show the address's tokens running out: {answers:?}"
    );
    // The user's own bucket is untouched by them: its first request leaves 19 of 20.
    let r = app.get("/v1/api-keys", &live.access).await;
    assert_eq!(r.headers()["x-ratelimit-remaining"], "19");
    assert_error(r, 403, "forbidden").await;
    Ok(())
}

#[tokio::test]
async fn tokens_already_issued_act_with_the_accounts_role_now_and_end_for_good_when_it_is_disabled()
-> TestResult {
    let app = spawn_app().await;
    let email = app.user(Role::Admin).await;
    let s = app.login(&email).await;
    assert_eq!(app.get("/v1/api-keys", &s.access).await.status(), 200);
    let product = format!("/v1/products/{}", app.product(&s.access).await);
    let set = |sql: &'static str| {
        let (pool, email) = (app.db.pool.clone(), email.clone());
        async move {
            sqlx::query(sql)
                .bind(email)
                .execute(&pool)
                .await
                .map(|_| ())
        }
    };
    set("UPDATE users SET role = 'viewer' WHERE email = $1").await?;
    assert_error(app.get("/v1/api-keys", &s.access).await, 403, "forbidden").await;
    assert_eq!(app.get(&product, &s.access).await.status(), 200);
    set("UPDATE users SET disabled_at = now() WHERE email = $1").await?;
    assert_error(app.get(&product, &s.access).await, 401, "session_ended").await;
    // Enabled again (by SQL, as it was disabled): the sessions stay ended, so an attacker's
    // session on a compromised account does not come back with it. The user signs in anew.
    set("UPDATE users SET disabled_at = NULL WHERE email = $1").await?;
    assert_error(app.get(&product, &s.access).await, 401, "session_ended").await;
    assert_error(
        app.refresh(&s.cookie(), Some(&s.csrf), DEVICE).await,
        401,
        "invalid_refresh_token",
    )
    .await;
    let again = app.login(&email).await;
    assert_eq!(app.get(&product, &again.access).await.status(), 200);
    Ok(())
}

/// The session look-up needs PostgreSQL. While it is away a request with a valid token gets
/// the contract's 503 (not a 401, which would send the user to sign in again), and the same
/// token works once it is back. (At least 3 s: the pool's acquire timeout.)
#[tokio::test]
async fn a_token_while_postgres_is_away_is_503_and_works_again_after() -> TestResult {
    let admin = common::testing::admin_url();
    let (head, rest) = admin.split_once('@').ok_or("user@host in the test URL")?;
    let (server, _) = rest.split_once('/').ok_or("host/db in the test URL")?;
    let mut proxy = Proxy::start(server).await?;
    let port = proxy.port;
    let app = spawn_app_with(|env| {
        let own = env.raw("DATABASE_URL").unwrap_or_default().to_owned();
        let name = own.rsplit_once('/').map_or("", |(_, name)| name);
        env.with("DATABASE_URL", &format!("{head}@127.0.0.1:{port}/{name}"))
    })
    .await;
    let email = app.user(Role::Viewer).await;
    let (s, ended) = (app.login(&email).await, app.login(&email).await);
    app.logout(&ended).await?;
    assert_eq!(app.get("/v1/api-keys", &s.access).await.status(), 403);
    assert_error(
        app.get("/v1/api-keys", &ended.access).await,
        401,
        "session_ended",
    )
    .await;
    proxy.down().await;
    assert_error(
        app.get("/v1/api-keys", &s.access).await,
        503,
        "service_unavailable",
    )
    .await;
    // A session found ended is remembered: its token is refused without asking PostgreSQL
    // again (a revoked token sent in a loop costs no query).
    assert_error(
        app.get("/v1/api-keys", &ended.access).await,
        401,
        "session_ended",
    )
    .await;
    proxy.up()?;
    assert_eq!(app.get("/v1/api-keys", &s.access).await.status(), 403);
    Ok(())
}

#[tokio::test]
async fn refresh_without_a_cookie_or_with_an_unknown_one_is_401() {
    let app = spawn_app().await;
    // No cookie sent (what a forged cross-site form gets, SameSite=Strict): nothing deleted.
    let r = app.refresh("", Some("x"), DEVICE).await;
    assert!(r.headers().get("set-cookie").is_none(), "{:?}", r.headers());
    assert_error(r, 401, "invalid_refresh_token").await;
    // A cookie the server does not know is deleted.
    let r = app
        .refresh(
            "__Host-vt_refresh=unknown; __Host-vt_csrf=a.b",
            Some("a.b"),
            DEVICE,
        )
        .await;
    assert!(clears_both_cookies(r.headers()), "{:?}", r.headers());
    assert_error(r, 401, "invalid_refresh_token").await;
}

#[tokio::test]
async fn login_is_rate_limited_per_email() {
    let app = spawn_app().await;
    let email = app.user(Role::Viewer).await;
    // 10 at once, refilling one every 6 s: a slow machine may earn one more on the way.
    let mut statuses = Vec::new();
    for _ in 0..13 {
        let status = app
            .login_raw(&email, "wrong password!!", DEVICE)
            .await
            .status()
            .as_u16();
        statuses.push(status);
        if status == 429 {
            break;
        }
    }
    assert_eq!(statuses[..10], [401; 10]);
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    // The right password is refused too while the email's bucket is empty.
    let r = app.login_raw(&email, PASSWORD, DEVICE).await;
    assert!(r.headers().contains_key("retry-after"));
    assert!(
        !r.headers().contains_key("x-ratelimit-remaining"),
        "the admin bucket's figures would contradict the login refusal"
    );
    let b = body(r).await;
    assert_eq!(b["error"], "rate_limited");
    assert!(b["retry_after"].as_u64().is_some_and(|s| s >= 1));
}

#[tokio::test]
async fn login_is_rate_limited_per_client_ip() {
    let app = spawn_app().await;
    // Different emails, one address: the IP's bucket (30, refilling 0.5 a second) runs out.
    // A slow machine refills a token or two during the loop, hence the few extra attempts.
    let mut statuses = Vec::new();
    for i in 0..40 {
        let email = format!("nobody{i}@example.com");
        let status = app
            .login_raw(&email, "wrong password!!", DEVICE)
            .await
            .status()
            .as_u16();
        statuses.push(status);
        if status == 429 {
            break;
        }
    }
    assert!(statuses[..30].iter().all(|s| *s == 401), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
}

#[tokio::test]
async fn start_up_needs_a_jwt_secret_outside_development() {
    let db = common::testing::TestDb::new().await;
    let env = common::testing::env_for(&db); // APP_ENV=test, no JWT_SECRET
    let config = factory_service::FactoryConfig::from_env(&env).unwrap();
    let err = factory_service::Application::build(config)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("JWT_SECRET"), "{err}");
    let dev =
        factory_service::FactoryConfig::from_env(&env.with("APP_ENV", "development")).unwrap();
    assert!(
        factory_service::Application::build(dev).await.is_ok(),
        "development makes one up"
    );
}

/// A session is found ended for the user its token names. A token (signed with the service's
/// secret, so only a holder of it can make one) naming one user and another user's session
/// finds no live session; it must not end that session's own tokens on this instance. It did,
/// until the token's `exp`, when the instance remembered the session alone.
#[tokio::test]
async fn a_token_naming_another_users_session_does_not_end_that_session() -> TestResult {
    use factory_service::auth::JwtKeys;
    use factory_service::config::JwtSecret;

    let app = spawn_app().await;
    let admin = app.signed_in(Role::Admin).await;
    let viewer = app.signed_in(Role::Viewer).await;
    let keys = JwtKeys::new(
        &JwtSecret::new(JWT_SECRET.as_bytes().to_vec()),
        Duration::from_secs(3600),
    );
    let (admin_claims, viewer_claims) = (
        keys.verify(&admin.access).map_err(|e| format!("{e:?}"))?,
        keys.verify(&viewer.access).map_err(|e| format!("{e:?}"))?,
    );
    let (mixed, _) = keys.issue(
        viewer_claims.sub,
        admin_claims.sid,
        &viewer_claims.email,
        Role::Viewer,
        u64::MAX,
    )?;
    let refused = || async {
        let r = app.get("/v1/products/00000000-0000-0000-0000-000000000000", &mixed);
        assert_error(r.await, 401, "session_ended").await;
    };
    refused().await;
    // The admin's own token of that session still works, and so does the viewer's.
    assert_eq!(app.get("/v1/api-keys", &admin.access).await.status(), 200);
    let product = app.product(&admin.access).await;
    let product = format!("/v1/products/{product}");
    assert_eq!(app.get(&product, &viewer.access).await.status(), 200);
    // And the mixed token stays refused (now from memory).
    refused().await;
    Ok(())
}

/// Two `Authorization` headers are an invalid token, whichever comes first: the first one
/// counted, so a viewer's token before an admin's was 403 and the other way round 200 (and a
/// proxy in front may count the other one).
#[tokio::test]
async fn two_authorization_headers_are_an_invalid_token() -> TestResult {
    let app = spawn_app().await;
    let admin = app.signed_in(Role::Admin).await;
    let viewer = app.signed_in(Role::Viewer).await;
    for (first, second) in [
        (&admin.access, &viewer.access),
        (&viewer.access, &admin.access),
    ] {
        let r = app
            .client
            .get(format!("{}/v1/api-keys", app.base))
            .header("Authorization", format!("Bearer {first}"))
            .header("Authorization", format!("Bearer {second}"))
            .send()
            .await?;
        assert_error(r, 401, "invalid_token").await;
    }
    // One header still works.
    assert_eq!(app.get("/v1/api-keys", &admin.access).await.status(), 200);
    Ok(())
}
