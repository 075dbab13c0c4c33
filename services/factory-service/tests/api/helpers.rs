//! `spawn_app()` and the small client the tests drive the API with.

use std::time::Duration;

use common::Env;
use common::testing::TestDb;
use factory_service::audit::{Actor, AuditLog};
use factory_service::users::{Role, create_user};
use factory_service::{Application, FactoryConfig};
use reqwest::header::{HeaderMap, SET_COOKIE};
use reqwest::{Method, RequestBuilder, Response};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A device id long enough for the contract (16 to 128 characters).
pub const DEVICE: &str = "test-device-0123456789";
/// The password every test user gets.
pub const PASSWORD: &str = "correct horse battery staple";
/// The `JWT_SECRET` of every test app (a test that forges tokens signs with it).
pub const JWT_SECRET: &str = "an-integration-test-secret-of-48-bytes-0123456789";

/// A running service and what the test needs to poke at it.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The test's own database.
    pub db: TestDb,
    /// This app's Redis key prefix.
    pub redis_prefix: String,
    /// A client without a cookie store: the `__Host-` cookies are `Secure`, so the tests send
    /// them by hand over plain HTTP.
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    running: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The service with test defaults: a known JWT secret, a rate limit high enough not to get in
/// the way, a generous Redis timeout for a busy test machine.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|env| env).await
}

/// The service with `adjust` applied to the test environment.
pub async fn spawn_app_with(adjust: impl FnOnce(Env) -> Env) -> TestApp {
    let db = TestDb::new().await;
    let env = common::testing::env_for(&db)
        .with("JWT_SECRET", JWT_SECRET)
        .with("ADMIN_RATE_LIMIT_BURST", "100000")
        .with("REDIS_TIMEOUT_MS", "2000");
    let config = FactoryConfig::from_env(&adjust(env)).expect("test configuration");
    let redis_prefix = config.common.redis_key_prefix.clone();
    let app = Application::build(config).await.expect("build the app");
    let base = format!("http://{}", app.local_addr());
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        base,
        db,
        redis_prefix,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("client"),
        shutdown,
        running: Some(running),
    }
}

/// A signed-in session as a browser would hold it.
#[derive(Debug, Clone)]
pub struct Session {
    pub access: String,
    /// The access token's lifetime in seconds, as the response gave it.
    pub expires_in: u64,
    pub refresh: String,
    pub csrf: String,
}

impl Session {
    /// The `Cookie` header a browser would send.
    pub fn cookie(&self) -> String {
        format!(
            "__Host-vt_refresh={}; __Host-vt_csrf={}",
            self.refresh, self.csrf
        )
    }
}

/// The value of cookie `name` among the response's `Set-Cookie` headers, with its attributes.
pub fn set_cookie(headers: &HeaderMap, name: &str) -> Option<(String, String)> {
    headers.get_all(SET_COOKIE).iter().find_map(|v| {
        let v = v.to_str().ok()?;
        let (pair, attrs) = v.split_once(';').unwrap_or((v, ""));
        let (k, value) = pair.split_once('=')?;
        (k == name).then(|| (value.to_owned(), attrs.trim().to_owned()))
    })
}

impl TestApp {
    /// Shuts the service down as SIGTERM does, and waits until it has stopped.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        match self.running.take() {
            Some(running) => running.await?,
            None => Ok(()),
        }
    }

    /// The value of the `/metrics` series that begins with `series` (name and labels), if
    /// exported.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = self
            .req(Method::GET, "/metrics", None)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// A request to `path` with the access token, if given.
    pub fn req(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let b = self.client.request(method, format!("{}{path}", self.base));
        match token {
            Some(t) => b.bearer_auth(t),
            None => b,
        }
    }

    /// Creates a user with [`PASSWORD`]; returns its email.
    pub async fn user(&self, role: Role) -> String {
        let email = format!("{}-{}@example.com", role, Uuid::new_v4().simple());
        create_user(
            &self.db.pool,
            &AuditLog::new(),
            &email,
            &SecretString::from(PASSWORD),
            role,
            Actor::System,
        )
        .await
        .expect("create user");
        email
    }

    /// Raw login.
    pub async fn login_raw(&self, email: &str, password: &str, device: &str) -> Response {
        self.req(Method::POST, "/v1/auth/login", None)
            .header("X-Device-ID", device)
            .header("User-Agent", "api-tests/1.0")
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .expect("login request")
    }

    /// Signs in and returns the session.
    pub async fn login(&self, email: &str) -> Session {
        let r = self.login_raw(email, PASSWORD, DEVICE).await;
        assert_eq!(r.status(), 200, "login of {email}");
        session_of(r).await
    }

    /// A new user of `role`, signed in.
    pub async fn signed_in(&self, role: Role) -> Session {
        let email = self.user(role).await;
        self.login(&email).await
    }

    /// Signs `session` out (`POST /v1/auth/logout`); an error unless the answer is 204.
    pub async fn logout(&self, session: &Session) -> Result<Response, Box<dyn std::error::Error>> {
        let r = self
            .req(Method::POST, "/v1/auth/logout", None)
            .header("Cookie", session.cookie())
            .header("X-CSRF-Token", &session.csrf)
            .send()
            .await?;
        if r.status() != 204 {
            return Err(format!("logout answered {}", r.status()).into());
        }
        Ok(r)
    }

    /// `POST /v1/auth/refresh` with these cookies, CSRF header and device.
    pub async fn refresh(&self, cookie: &str, csrf: Option<&str>, device: &str) -> Response {
        let mut b = self
            .req(Method::POST, "/v1/auth/refresh", None)
            .header("Cookie", cookie)
            .header("X-Device-ID", device);
        if let Some(csrf) = csrf {
            b = b.header("X-CSRF-Token", csrf);
        }
        b.send().await.expect("refresh request")
    }

    /// POSTs JSON with the token and an optional idempotency key.
    pub async fn post(&self, path: &str, token: &str, body: &Value, key: Option<&str>) -> Response {
        let mut b = self.req(Method::POST, path, Some(token)).json(body);
        if let Some(key) = key {
            b = b.header("Idempotency-Key", key);
        }
        b.send().await.expect("POST")
    }

    /// GETs with the token.
    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.req(Method::GET, path, Some(token))
            .send()
            .await
            .expect("GET")
    }

    /// Creates a product and returns its id.
    pub async fn product(&self, token: &str) -> String {
        let sku = format!("SKU-{}", Uuid::new_v4().simple());
        let r = self
            .post(
                "/v1/products",
                token,
                &json!({"name": "Bag", "sku": sku}),
                None,
            )
            .await;
        assert_eq!(r.status(), 201);
        body(r).await["id"].as_str().expect("id").to_owned()
    }

    /// A Redis connection.
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open("redis://127.0.0.1:6379")
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis")
    }

    /// How many audit events with `action` exist.
    pub async fn audit_count(&self, action: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE action = $1")
            .bind(action)
            .fetch_one(&self.db.pool)
            .await
            .expect("count audit events")
    }

    /// A scalar count query.
    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.db.pool)
            .await
            .expect("count")
    }

    /// [`TestApp::count`] every 50 ms until it is above 0, `stop` says to, or 30 s have passed;
    /// the last count. For waiting until a statement waits on a lock.
    pub async fn count_until_positive(&self, sql: &str, mut stop: impl FnMut() -> bool) -> i64 {
        let mut n = 0;
        for _ in 0..600 {
            n = self.count(sql).await;
            if n > 0 || stop() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        n
    }
}

/// The session a login or refresh response hands out.
pub async fn session_of(r: Response) -> Session {
    let refresh = set_cookie(r.headers(), "__Host-vt_refresh")
        .expect("refresh cookie")
        .0;
    let csrf = set_cookie(r.headers(), "__Host-vt_csrf")
        .expect("csrf cookie")
        .0;
    let b = body(r).await;
    Session {
        access: b["access_token"].as_str().expect("access_token").to_owned(),
        // Checked by `login_body_has_token_type_and_expiry`; 0 here fails any lifetime check.
        expires_in: b["expires_in"].as_u64().unwrap_or_default(),
        refresh,
        csrf,
    }
}

/// The JSON body.
pub async fn body(r: Response) -> Value {
    let text = r.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Asserts the contract's error shape and code; returns the body.
pub async fn assert_error(r: Response, status: u16, code: &str) -> Value {
    assert_eq!(r.status(), status, "status");
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(ct.starts_with("application/json"), "content type {ct}");
    let b = body(r).await;
    assert_eq!(b["error"], code, "body {b}");
    assert!(
        b["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "detail in {b}"
    );
    b
}
