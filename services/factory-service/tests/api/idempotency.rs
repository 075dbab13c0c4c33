//! CONTRACT 3.4: replay, 409 while in flight (one side effect), 422 on a changed request, 400
//! on a bad key, 5xx not stored, Redis down gives 503 without a side effect, and a crash between
//! commit and Redis does not repeat the side effect. Refusals that are not the request's result
//! (a run that lost a race after its lease ran out, a role refusal) are not stored.

use std::time::Duration;

use common::testing::Proxy;
use factory_service::idempotency::{IdempotencyKey, SealKey, record};
use factory_service::users::Role;
use reqwest::Method;
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::helpers::{TestApp, assert_error, body, spawn_app, spawn_app_with};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[tokio::test]
async fn a_finished_request_is_replayed_with_the_header() {
    let app = spawn_app().await;
    let op = app.signed_in(Role::Operator).await;
    let req = json!({"name": "Wallet", "sku": "W-1"});
    let first = app
        .post("/v1/products", &op.access, &req, Some("create-wallet"))
        .await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first = body(first).await;
    let again = app
        .post("/v1/products", &op.access, &req, Some("create-wallet"))
        .await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(body(again).await, first);
    assert_eq!(app.count("SELECT count(*) FROM products").await, 1);
}

#[tokio::test]
async fn two_concurrent_requests_with_one_key_have_one_side_effect() {
    let app = spawn_app().await;
    let op = app.signed_in(Role::Operator).await;
    let product = app.product(&op.access).await;
    let req = json!({"product_id": product, "quantity": 40000});
    let (a, b) = tokio::join!(
        app.post("/v1/batches", &op.access, &req, Some("big-batch")),
        app.post("/v1/batches", &op.access, &req, Some("big-batch")),
    );
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [201, 409]);
    let conflict = if a.status() == 409 { a } else { b };
    // When to try again: the replay below.
    assert_eq!(conflict.headers()["retry-after"], "1");
    assert_error(conflict, 409, "idempotency_key_in_use").await;
    assert_eq!(app.count("SELECT count(*) FROM batches").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM tags").await, 40000);
    // Once it finished, the key replays.
    let replay = app
        .post("/v1/batches", &op.access, &req, Some("big-batch"))
        .await;
    assert_eq!(replay.status(), 201);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
}

#[tokio::test]
async fn the_same_key_for_a_different_request_is_422() {
    let app = spawn_app().await;
    let op = app.signed_in(Role::Operator).await;
    let r = app
        .post(
            "/v1/products",
            &op.access,
            &json!({"name": "A", "sku": "A-1"}),
            Some("k1"),
        )
        .await;
    assert_eq!(r.status(), 201);
    let r = app
        .post(
            "/v1/products",
            &op.access,
            &json!({"name": "B", "sku": "B-1"}),
            Some("k1"),
        )
        .await;
    assert_error(r, 422, "idempotency_key_reused").await;
    assert_eq!(app.count("SELECT count(*) FROM products").await, 1);
}

/// A key holding a control character (DEL, 0x01) is not a header value hyper takes: it
/// refused the whole head with its generic 400 `bad_request`, before the idempotency layer saw
/// the key. Clients such as Python's http.client send such a value as given. The answer is now
/// CONTRACT 3.4's `invalid_idempotency_key`, with the contract's headers; a control character
/// in another header stays `bad_request`. Raw requests, since reqwest refuses to send them.
#[tokio::test]
async fn a_key_with_a_control_character_is_invalid_idempotency_key() -> TestResult {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let app = spawn_app().await;
    let op = app.signed_in(Role::Operator).await;
    let address = app.base.trim_start_matches("http://").to_owned();
    let send = |header: &'static [u8]| {
        let (address, token) = (address.clone(), op.access.clone());
        async move {
            let body = br#"{"name":"A","sku":"CTL-1"}"#;
            let mut request = format!(
                "POST /v1/products HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            )
            .into_bytes();
            request.extend_from_slice(header);
            request.extend_from_slice(b"\r\n\r\n");
            request.extend_from_slice(body);
            let mut stream = tokio::net::TcpStream::connect(&address).await?;
            stream.write_all(&request).await?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await?;
            Ok::<String, std::io::Error>(String::from_utf8_lossy(&answer).into_owned())
        }
    };
    for header in [
        &b"Idempotency-Key: abc\x7fdef"[..],
        b"idempotency-key: \x01abc",
    ] {
        let answer = send(header).await?;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert!(
            answer.contains(r#""error":"invalid_idempotency_key""#),
            "{answer}"
        );
        assert!(
            answer.contains("x-content-type-options: nosniff"),
            "{answer}"
        );
    }
    let answer = send(b"X-Trace-Note: a\x01b").await?;
    assert!(answer.contains(r#""error":"bad_request""#), "{answer}");
    assert_eq!(app.count("SELECT count(*) FROM products").await, 0);
    Ok(())
}

#[tokio::test]
async fn malformed_keys_are_400() {
    let app = spawn_app().await;
    let op = app.signed_in(Role::Operator).await;
    let req = json!({"name": "A", "sku": "A-1"});
    for key in ["", "has space", &"x".repeat(256)] {
        let r = app.post("/v1/products", &op.access, &req, Some(key)).await;
        assert_error(r, 400, "invalid_idempotency_key").await;
    }
    let r = app
        .req(Method::POST, "/v1/products", Some(&op.access))
        .header(
            "Idempotency-Key",
            reqwest::header::HeaderValue::from_bytes("clé".as_bytes()).unwrap(),
        )
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_idempotency_key").await;
    assert_eq!(app.count("SELECT count(*) FROM products").await, 0);
    // 255 visible characters are fine.
    let r = app
        .post("/v1/products", &op.access, &req, Some(&"x".repeat(255)))
        .await;
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn without_a_token_a_malformed_key_is_401_not_400() {
    let app = spawn_app().await;
    let req = json!({"name": "A", "sku": "A-1"});
    for token in [None, Some("not-a-token")] {
        let r = app
            .req(Method::POST, "/v1/products", token)
            .header("Idempotency-Key", "has space")
            .json(&req)
            .send()
            .await
            .expect("POST");
        assert_eq!(r.status(), 401, "token {token:?}");
    }
    assert_eq!(app.count("SELECT count(*) FROM products").await, 0);
}

#[tokio::test]
async fn server_errors_are_not_stored() {
    let app = spawn_app().await;
    let op = app.signed_in(Role::Operator).await;
    let req = json!({"name": "A", "sku": "A-1"});
    // Break the table the handler writes to, so the first attempt fails with a 500.
    sqlx::query("ALTER TABLE products RENAME TO products_away")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let r = app
        .post("/v1/products", &op.access, &req, Some("retry-me"))
        .await;
    let b = assert_error(r, 500, "internal_error").await;
    assert!(
        !b.to_string().to_lowercase().contains("relation"),
        "no SQL leaks: {b}"
    );
    sqlx::query("ALTER TABLE products_away RENAME TO products")
        .execute(&app.db.pool)
        .await
        .unwrap();
    // The retry runs for real instead of replaying the 500.
    let r = app
        .post("/v1/products", &op.access, &req, Some("retry-me"))
        .await;
    assert_eq!(r.status(), 201);
    assert!(r.headers().get("idempotent-replayed").is_none());
    assert_eq!(app.count("SELECT count(*) FROM products").await, 1);
}

#[tokio::test]
async fn redis_down_is_503_and_nothing_happens() {
    let app = spawn_app_with(|env| {
        env.with("REDIS_URL", "redis://127.0.0.1:1")
            .with("REDIS_TIMEOUT_MS", "200")
    })
    .await;
    let op = app.signed_in(Role::Operator).await;
    let r = app
        .post(
            "/v1/products",
            &op.access,
            &json!({"name": "A", "sku": "A-1"}),
            Some("k"),
        )
        .await;
    assert_error(r, 503, "service_unavailable").await;
    assert_eq!(app.count("SELECT count(*) FROM products").await, 0);
}

/// A keyed write refused because Redis is away is logged once, with the cause: it was two
/// warnings per request (the layer's, then the 503's generic one), doubling the log volume of
/// an outage. Once the breaker is open, refusals log no warning each (the breaker said it
/// opened): before, every keyed write of an outage added one.
#[tokio::test]
async fn a_keyed_write_refused_with_redis_away_logs_one_warning_with_its_cause() {
    common::in_own_process!();
    let logs = common::testing::CapturedLogs::default();
    let config = common::config::TelemetryConfig {
        log_format: common::config::LogFormat::Json,
        log_filter: "warn".into(),
        otlp_endpoint: None,
    };
    let writer = logs.clone();
    let _telemetry =
        common::telemetry::init_with_writer("idempotency-test", &config, move || writer.clone())
            .unwrap();
    let app = spawn_app_with(|env| {
        env.with("REDIS_URL", "redis://127.0.0.1:1")
            .with("REDIS_TIMEOUT_MS", "200")
    })
    .await;
    let op = app.signed_in(Role::Operator).await;
    let before = logs.len();
    let r = app
        .post(
            "/v1/products",
            &op.access,
            &json!({"name": "A", "sku": "A-1"}),
            Some("k"),
        )
        .await;
    assert_error(r, 503, "service_unavailable").await;
    let text = logs.since(before);
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains(r#""WARN""#)).collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(warnings[0].contains("idempotency claim failed"), "{text}");
    assert!(warnings[0].contains("error"), "{text}");

    // Twenty more: the breaker (threshold 5 by default) opens on the way.
    for i in 0..20 {
        let r = app
            .post(
                "/v1/products",
                &op.access,
                &json!({"name": "A", "sku": "A-1"}),
                Some(&format!("k{i}")),
            )
            .await;
        assert_error(r, 503, "service_unavailable").await;
    }
    let text = logs.since(before);
    let claims = text
        .lines()
        .filter(|l| l.contains(r#""WARN""#) && l.contains("idempotency claim failed"))
        .count();
    assert!(claims <= 5, "{claims} warnings for 21 refusals:\n{text}");
    assert!(text.contains("CLOSED -> OPEN"), "{text}");
}

#[tokio::test]
async fn the_redis_breaker_opens_after_the_threshold_then_refuses_without_waiting() {
    common::in_own_process!();
    // Nothing listens on port 1: every Redis call fails, a real failure.
    let app = spawn_app_with(|env| {
        env.with("REDIS_URL", "redis://127.0.0.1:1")
            .with("CIRCUIT_BREAKER_THRESHOLD", "2")
    })
    .await;
    let op = app.signed_in(Role::Operator).await;
    for i in 0..4 {
        let r = app
            .post(
                "/v1/products",
                &op.access,
                &json!({"name": "A", "sku": format!("A-{i}")}),
                Some(&format!("key-{i}")),
            )
            .await;
        assert_error(r, 503, "service_unavailable").await;
    }
    // Two failures opened it; the next two were refused by it without a Redis call.
    assert_eq!(
        app.metric("circuit_breaker_state{name=\"redis\"}").await,
        Some(1.0)
    );
    assert_eq!(
        app.metric("circuit_breaker_rejections_total{name=\"redis\"}")
            .await,
        Some(2.0)
    );
    assert_eq!(app.count("SELECT count(*) FROM products").await, 0);
}

#[tokio::test]
async fn a_crash_after_commit_replays_from_postgres_instead_of_repeating() {
    let app = spawn_app().await;
    let op = app.signed_in(Role::Operator).await;
    let req = json!({"name": "A", "sku": "A-1"});
    let (first, entry) = created_with_key(&app, &op.access, &req, "durable").await;
    // Simulate dying after the commit, before Redis learnt the result: Redis knows nothing.
    let mut redis = app.redis().await;
    let _: () = redis::cmd("DEL")
        .arg(&entry)
        .query_async(&mut redis)
        .await
        .unwrap();

    let again = app
        .post("/v1/products", &op.access, &req, Some("durable"))
        .await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(body(again).await, first);
    assert_eq!(app.count("SELECT count(*) FROM products").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM idempotency_keys").await, 1);
}

/// As above, for requests whose side effect would succeed a second time (a new key, a new
/// batch): the retry finds the record when it commits, rolls its own run back and replays.
#[tokio::test]
async fn a_crash_after_commit_rolls_a_repeated_side_effect_back_and_replays() -> TestResult {
    let app = spawn_app().await;
    let admin = app.signed_in(Role::Admin).await;
    let product = app.product(&admin.access).await;
    let tables = "SELECT (SELECT count(*) FROM api_keys) * 1000000 \
                  + (SELECT count(*) FROM batches) * 10000 + (SELECT count(*) FROM tags) \
                  + (SELECT count(*) FROM audit_events) * 100000000";
    for (path, req) in [
        ("/v1/api-keys", json!({"name": "scanner"})),
        ("/v1/batches", json!({"product_id": product, "quantity": 3})),
    ] {
        let key = format!("durable-{path}");
        let first = app.post(path, &admin.access, &req, Some(&key)).await;
        assert_eq!(first.status(), 201, "{path}");
        let first = body(first).await;
        let before = app.count(tables).await;
        // Dying after the commit, before Redis learnt the result: Redis knows nothing.
        let mut redis = app.redis().await;
        let entries = idempotency_entries(&app).await;
        let _: () = redis::cmd("DEL")
            .arg(&entries)
            .query_async(&mut redis)
            .await?;

        let again = app.post(path, &admin.access, &req, Some(&key)).await;
        assert_eq!(again.status(), 201, "{path}");
        assert_eq!(again.headers()["idempotent-replayed"], "true", "{path}");
        assert_eq!(body(again).await, first, "{path}");
        assert_eq!(app.count(tables).await, before, "{path}: nothing new");
    }
    Ok(())
}

/// A success is stored in Redis after it is answered, and shutdown waits for that store. Cut
/// off, it would leave the key claimed in Redis until the claim's lease ran out. Redis is
/// reached through a proxy here, which holds the store until shutdown has begun.
#[tokio::test]
async fn shutdown_waits_for_the_result_of_an_answered_request_to_be_stored() -> TestResult {
    let proxy = Proxy::start("127.0.0.1:6379").await?;
    let redis_url = format!("redis://127.0.0.1:{}", proxy.port);
    let mut app = spawn_app_with(|env| env.with("REDIS_URL", &redis_url)).await;
    let op = app.signed_in(Role::Operator).await;
    let complete = redis::Script::new(include_str!("../../src/idempotency/complete.lua"));
    proxy.stall_when_sent(complete.get_hash().as_bytes());
    let created = app
        .post(
            "/v1/products",
            &op.access,
            &json!({"name": "Stored", "sku": "STORED-1"}),
            Some("stored"),
        )
        .await;
    assert_eq!(created.status(), 201);

    let stop_then_look = async {
        app.stop().await?;
        let mut redis = app.redis().await;
        let keys = idempotency_entries(&app).await;
        let entry: String = redis::cmd("GET").arg(&keys).query_async(&mut redis).await?;
        Ok::<_, Box<dyn std::error::Error>>(entry)
    };
    let resume = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        proxy.resume();
    };
    let (entry, ()) = tokio::join!(stop_then_look, resume);
    let entry: serde_json::Value = serde_json::from_str(&entry?)?;
    assert_eq!(entry["state"], "done", "{entry}");
    assert_eq!(entry["status"], 201);
    Ok(())
}

/// Retries `key` (the same product each time) while it answers 409 `idempotency_key_in_use`,
/// for at most 10 s, and asserts that the retry then ran: 201, and one product.
async fn the_retry_runs(app: &TestApp, access: &str, key: &str, sku: &str) {
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut in_use = 0;
    let status = loop {
        let r = app
            .post(
                "/v1/products",
                access,
                &json!({"name": "Bag", "sku": sku}),
                Some(key),
            )
            .await;
        if r.status() != 409 || tokio::time::Instant::now() >= until {
            break r.status();
        }
        in_use += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 201, "the retry ran, after {in_use} answers of 409");
    assert_eq!(app.count("SELECT count(*) FROM products").await, 1);
}

/// The claim of a keyed write whose client went away while the claim was on its way to Redis,
/// granted after the request was dropped: given back, so the retry runs. Awaited in the request,
/// such a claim had nobody to run or release it, and every retry got 409 until its lease (a
/// minute) ran out (soak). Redis is reached through a proxy that holds the claim's `SET` until
/// the request is gone: a slow network, which a real Redis cannot produce on demand.
#[tokio::test]
async fn a_claim_granted_after_its_client_went_away_is_given_back() -> TestResult {
    let proxy = Proxy::start("127.0.0.1:6379").await?;
    let redis_url = format!("redis://127.0.0.1:{}", proxy.port);
    let app = spawn_app_with(|env| env.with("REDIS_URL", &redis_url)).await;
    let op = app.signed_in(Role::Operator).await;
    proxy.stall_when_sent(br#""state":"pending""#);
    let gone = tokio::spawn(
        app.req(Method::POST, "/v1/products", Some(&op.access))
            .header("Idempotency-Key", "gone-while-claiming")
            .json(&json!({"name": "Bag", "sku": "GONE-1"}))
            .send(),
    );
    // Held for less than the Redis client's own response timeout (500 ms), so the claim is
    // granted, not timed out (the next test has that case).
    tokio::time::sleep(Duration::from_millis(150)).await;
    gone.abort();
    tokio::time::sleep(Duration::from_millis(150)).await;
    // The `SET` reaches Redis now, after its request was dropped.
    proxy.resume();
    the_retry_runs(&app, &op.access, "gone-while-claiming", "GONE-1").await;
    Ok(())
}

/// A claim whose `SET` got no answer within `REDIS_TIMEOUT_MS` (503), and which
/// Redis carried out after all: withdrawn, so the retry runs. Left, it held the key for its whole
/// lease with no run behind it. The proxy holds the `SET` past the timeout (a slow network).
#[tokio::test]
async fn a_claim_that_timed_out_but_was_made_is_withdrawn() -> TestResult {
    let proxy = Proxy::start("127.0.0.1:6379").await?;
    let redis_url = format!("redis://127.0.0.1:{}", proxy.port);
    let app = spawn_app_with(|env| {
        env.with("REDIS_URL", &redis_url)
            .with("REDIS_TIMEOUT_MS", "300")
    })
    .await;
    let op = app.signed_in(Role::Operator).await;
    proxy.stall_when_sent(br#""state":"pending""#);
    let resume = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        proxy.resume();
    };
    let product = json!({"name": "Bag", "sku": "SLOW-1"});
    let (timed_out, ()) = tokio::join!(
        app.post(
            "/v1/products",
            &op.access,
            &product,
            Some("claimed-too-slowly"),
        ),
        resume
    );
    assert_error(timed_out, 503, "service_unavailable").await;
    the_retry_runs(&app, &op.access, "claimed-too-slowly", "SLOW-1").await;
    Ok(())
}

/// A keyed write still running at shutdown, its client gone (held here on a lock of the
/// products table): cut once the shutdown's grace is over, its claim given back. Left to be
/// dropped with the runtime, it kept the claim to its lease, and every retry got 409 for a
/// minute after each deploy.
#[tokio::test]
async fn a_keyed_write_still_running_at_shutdown_gives_its_claim_back() -> TestResult {
    let mut app = spawn_app().await;
    let op = app.signed_in(Role::Operator).await;
    let mut lock = app.db.pool.begin().await?;
    sqlx::query("LOCK TABLE products IN EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await?;
    let cut = tokio::spawn(
        app.req(Method::POST, "/v1/products", Some(&op.access))
            .header("Idempotency-Key", "at-shutdown")
            .json(&json!({"name": "Bag", "sku": "SHUTDOWN-1"}))
            .send(),
    );
    let waiting = app
        .count_until_positive(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name = 'voketag-factory-api' AND wait_event_type = 'Lock'",
            || false,
        )
        .await;
    assert_eq!(waiting, 1, "held on the lock");
    assert_eq!(idempotency_entries(&app).await.len(), 1, "claimed");
    // Its client goes away.
    cut.abort();
    app.stop().await?;
    assert_eq!(
        idempotency_entries(&app).await,
        Vec::<String>::new(),
        "the claim was given back"
    );
    lock.rollback().await?;
    Ok(())
}

/// A keyed write whose body stops half-way is 408 (the body's bound is half the request
/// timeout), not the 413 every unreadable body got before, and its key is left unused.
#[tokio::test]
async fn a_keyed_write_whose_body_stalls_is_408_and_leaves_the_key_unused() -> TestResult {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let app = spawn_app_with(|env| env.with("REQUEST_TIMEOUT_SEC", "2")).await;
    let op = app.signed_in(Role::Operator).await;
    let mut stream = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://")).await?;
    let head = format!(
        "POST /v1/products HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nIdempotency-Key: stalled\r\n\
         Content-Length: 100\r\n\r\n{{\"name\":",
        op.access
    );
    stream.write_all(head.as_bytes()).await?;
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer)).await??;
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""error":"request_timeout""#), "{answer}");
    assert!(idempotency_entries(&app).await.is_empty());

    let r = app
        .post(
            "/v1/products",
            &op.access,
            &json!({"name": "Stalled", "sku": "STALLED-1"}),
            Some("stalled"),
        )
        .await;
    assert_eq!(r.status(), 201);
    assert!(!r.headers().contains_key("idempotent-replayed"));
    Ok(())
}

#[tokio::test]
async fn keys_are_scoped_to_the_caller() {
    let app = spawn_app().await;
    let a = app.signed_in(Role::Operator).await;
    let b = app.signed_in(Role::Operator).await;
    let r = app
        .post(
            "/v1/products",
            &a.access,
            &json!({"name": "A", "sku": "A-1"}),
            Some("same"),
        )
        .await;
    assert_eq!(r.status(), 201);
    let r = app
        .post(
            "/v1/products",
            &b.access,
            &json!({"name": "B", "sku": "B-1"}),
            Some("same"),
        )
        .await;
    assert_eq!(r.status(), 201);
    assert!(r.headers().get("idempotent-replayed").is_none());
    assert_eq!(app.count("SELECT count(*) FROM products").await, 2);
}

#[tokio::test]
async fn deletes_are_idempotent_too() {
    let app = spawn_app().await;
    let admin = app.signed_in(Role::Admin).await;
    let key = body(
        app.post("/v1/api-keys", &admin.access, &json!({"name": "k"}), None)
            .await,
    )
    .await;
    let path = format!("/v1/api-keys/{}", key["id"].as_str().unwrap());
    let del = || {
        app.req(Method::DELETE, &path, Some(&admin.access))
            .header("Idempotency-Key", "revoke-k")
            .send()
    };
    let first = del().await.unwrap();
    assert_eq!(first.status(), 200);
    let again = del().await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(app.audit_count("api_key.revoked").await, 1);
}

/// A request cut off by the request timeout: its run goes on to its end (it was cancelled, and
/// gave its claim back, while PostgreSQL could still be carrying out its statements), holds its
/// claim meanwhile (409 to a retry) and is then the key's result, replayed to the retry.
#[tokio::test]
async fn a_request_cut_by_the_request_timeout_runs_to_its_end_and_is_replayed() -> TestResult {
    let app = spawn_app_with(|env| env.with("REQUEST_TIMEOUT_SEC", "1")).await;
    let op = app.signed_in(Role::Operator).await;
    let product = app.product(&op.access).await;
    let req = json!({"product_id": product, "quantity": 100000});
    let r = app
        .post("/v1/batches", &op.access, &req, Some("slow"))
        .await;
    if r.status() == 201 {
        eprintln!("the batch finished within the 1 s timeout; nothing to abandon on this machine");
        return Ok(());
    }
    assert_error(r, 503, "service_unavailable").await;
    let replayed = retry_until_finished(&app, &op.access, "/v1/batches", &req, "slow").await?;
    assert_eq!(replayed.status(), 201);
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    assert_eq!(app.count("SELECT count(*) FROM batches").await, 1);
    assert_eq!(app.audit_count("batch.created").await, 1);
    Ok(())
}

/// A client whose timeout is shorter than the work (the products table is locked meanwhile),
/// retrying with its key after each timeout. Each cancelled attempt gave its claim back while
/// PostgreSQL still waited on the lock for it, so every retry started the work once more, on one
/// more of the pool's connections: a few such retries took the whole pool, for every user. Now
/// the first attempt runs to its end; retries get 409 meanwhile, then its result.
#[tokio::test]
async fn retries_after_client_timeouts_do_not_start_the_work_again() -> TestResult {
    let app = spawn_app().await;
    let op = app.signed_in(Role::Operator).await;
    let req = json!({"name": "Bag", "sku": format!("SKU-{}", Uuid::new_v4().simple())});
    let mut lock = app.db.pool.begin().await?;
    sqlx::query("LOCK TABLE products IN EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await?;
    let attempt = |timeout_ms: u64| {
        app.req(Method::POST, "/v1/products", Some(&op.access))
            .header("Idempotency-Key", "patient")
            .json(&req)
            .timeout(Duration::from_millis(timeout_ms))
            .send()
    };
    let first = attempt(300).await;
    assert!(
        first.is_err_and(|e| e.is_timeout()),
        "the first attempt waits on the lock"
    );
    // Retries that would also time out if they ran the work (the lock is held for longer),
    // but wait long enough for a busy machine's 409.
    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(match attempt(5_000).await {
            Ok(r) => r.status().as_u16(),
            Err(e) if e.is_timeout() => 0,
            Err(e) => return Err(e.into()),
        });
    }
    let waiting = app
        .count(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .await;
    assert_eq!(
        answers, [409; 5],
        "retries while the first runs (0: timed out)"
    );
    assert_eq!(waiting, 1, "one run of the work");
    lock.rollback().await?;
    let replayed = retry_until_finished(&app, &op.access, "/v1/products", &req, "patient").await?;
    assert_eq!(replayed.status(), 201);
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    assert_eq!(app.count("SELECT count(*) FROM products").await, 1);
    assert_eq!(app.audit_count("product.created").await, 1);
    Ok(())
}

/// Retries `path` with `key` every 100 ms while it answers 409 `idempotency_key_in_use` (up to
/// 30 s); the first other answer.
async fn retry_until_finished(
    app: &TestApp,
    access: &str,
    path: &str,
    req: &serde_json::Value,
    key: &str,
) -> Result<reqwest::Response, Box<dyn std::error::Error>> {
    for _ in 0..300 {
        let r = app.post(path, access, req, Some(key)).await;
        if r.status() != 409 {
            return Ok(r);
        }
        assert_error(r, 409, "idempotency_key_in_use").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("still in use after 30 s".into())
}

#[tokio::test]
async fn a_run_that_lost_the_race_after_its_lease_ran_out_answers_the_winners_result() -> TestResult
{
    common::in_own_process!(Ok(()));
    let app = spawn_app().await;
    let email = app.user(Role::Operator).await;
    let op = app.login(&email).await;
    let product = app.product(&op.access).await;
    let req = json!({"product_id": product, "quantity": 5});
    let key = key_as_the_layer_derives_it(&app, &email, "/v1/batches", &req, "raced").await?;
    let other_result = json!({"id": Uuid::new_v4(), "product_id": product, "quantity": 5});

    // Hold the record table so the first run stops right before it records its result.
    let mut other = app.db.pool.begin().await?;
    sqlx::query("LOCK TABLE idempotency_keys IN SHARE MODE")
        .execute(&mut *other)
        .await?;
    let first = app.post("/v1/batches", &op.access, &req, Some("raced"));
    let other_run = async {
        let waiting = app
            .count_until_positive(
                "SELECT count(*) FROM pg_locks \
                 WHERE database = (SELECT oid FROM pg_database \
                                   WHERE datname = current_database()) \
                   AND relation = 'idempotency_keys'::regclass AND NOT granted",
                || false,
            )
            .await;
        assert_eq!(waiting, 1, "the first run waits to record its result");
        // Its lease runs out: Redis forgets the claim, and another run takes the key over,
        // acts and commits first.
        let mut redis = app.redis().await;
        let keys = idempotency_entries(&app).await;
        assert_eq!(keys.len(), 1);
        let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut redis).await?;
        record_result(&mut other, &key, &other_result).await?;
        other.commit().await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    };
    let (first, other_ran) = tokio::join!(first, other_run);
    other_ran?;
    // The first run finds the other run's record at commit, backs out and answers it.
    assert_eq!(first.status(), 201);
    assert_eq!(first.headers()["idempotent-replayed"], "true");
    assert_eq!(body(first).await, other_result);
    assert_eq!(app.count("SELECT count(*) FROM batches").await, 0);

    // So does a retry.
    for _ in 0..2 {
        let retry = app
            .post("/v1/batches", &op.access, &req, Some("raced"))
            .await;
        assert_eq!(retry.status(), 201);
        assert_eq!(retry.headers()["idempotent-replayed"], "true");
        assert_eq!(body(retry).await, other_result);
    }
    assert_eq!(app.count("SELECT count(*) FROM batches").await, 0);
    // Each of the three answered a record, though each claimed the key and ran.
    assert_eq!(app.metric(REPLAYED).await, Some(3.0));
    assert_eq!(app.metric(CLAIMED).await, None);
    Ok(())
}

const REPLAYED: &str = "idempotency_requests_total{outcome=\"replayed\"}";
const CLAIMED: &str = "idempotency_requests_total{outcome=\"claimed\"}";

#[tokio::test]
async fn a_run_refused_by_the_side_effect_of_a_run_that_committed_meanwhile_replays_its_record()
-> TestResult {
    // Two runs of one key overlap when its claim is lost (Redis failing over, the lease running
    // out) or given back by a run abandoned while its COMMIT was on its way. The other run is
    // played here by the test: it has created the product and recorded its result, and has
    // not committed yet when this run begins.
    common::in_own_process!(Ok(()));
    let app = spawn_app().await;
    let email = app.user(Role::Operator).await;
    let op = app.login(&email).await;
    let req = json!({"name": "Overlap", "sku": "OVERLAP-1"});
    let key = key_as_the_layer_derives_it(&app, &email, "/v1/products", &req, "overlap").await?;
    let product = Uuid::new_v4();
    let other_result = json!({"id": product, "name": "Overlap", "sku": "OVERLAP-1"});
    let mut other = app.db.pool.begin().await?;
    sqlx::query("INSERT INTO products (id, name, sku) VALUES ($1, 'Overlap', 'OVERLAP-1')")
        .bind(product)
        .execute(&mut *other)
        .await?;
    record_result(&mut other, &key, &other_result).await?;

    let this_run = app.post("/v1/products", &op.access, &req, Some("overlap"));
    let other_commits = async {
        // This run finds no record yet, and its insert waits on the other run's SKU.
        let waiting = app
            .count_until_positive(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock' \
                   AND query LIKE 'INSERT INTO products%'",
                || false,
            )
            .await;
        assert_eq!(waiting, 1, "this run waits on the other run's SKU");
        other.commit().await?;
        Ok::<(), sqlx::Error>(())
    };
    let (this_run, committed) = tokio::join!(this_run, other_commits);
    committed?;
    // The duplicate SKU this run ran into is the other run's product: its result is the key's.
    assert_eq!(this_run.status(), 201);
    assert_eq!(this_run.headers()["idempotent-replayed"], "true");
    assert_eq!(body(this_run).await, other_result);
    let retry = app
        .post("/v1/products", &op.access, &req, Some("overlap"))
        .await;
    assert_eq!(retry.status(), 201);
    assert_eq!(body(retry).await, other_result);
    assert_eq!(app.count("SELECT count(*) FROM products").await, 1);
    assert_eq!(app.metric(REPLAYED).await, Some(2.0));
    assert_eq!(app.metric(CLAIMED).await, None);
    Ok(())
}

/// A stored result (here an API key's, which holds the key in clear) is replayed only to a
/// token whose session lasts: the session is checked before the idempotency layer runs.
#[tokio::test]
async fn a_token_whose_session_ended_gets_no_replay() -> TestResult {
    let app = spawn_app().await;
    let admin = app.signed_in(Role::Admin).await;
    let req = json!({"name": "scanner"});
    let first = app
        .post("/v1/api-keys", &admin.access, &req, Some("new-key"))
        .await;
    assert_eq!(first.status(), 201);
    app.logout(&admin).await?;
    let replay = app
        .post("/v1/api-keys", &admin.access, &req, Some("new-key"))
        .await;
    assert!(replay.headers().get("idempotent-replayed").is_none());
    assert_error(replay, 401, "session_ended").await;
    Ok(())
}

#[tokio::test]
async fn a_role_refusal_is_not_stored() {
    let app = spawn_app().await;
    let email = app.user(Role::Viewer).await;
    let viewer = app.login(&email).await;
    let req = json!({"name": "A", "sku": "A-1"});
    let r = app
        .post("/v1/products", &viewer.access, &req, Some("promote-me"))
        .await;
    assert_error(r, 403, "forbidden").await;
    // Promoted, signed in again: the same request with the same key now runs.
    sqlx::query("UPDATE users SET role = 'operator' WHERE email = $1")
        .bind(&email)
        .execute(&app.db.pool)
        .await
        .unwrap();
    let op = app.login(&email).await;
    let r = app
        .post("/v1/products", &op.access, &req, Some("promote-me"))
        .await;
    assert_eq!(r.status(), 201);
    assert!(r.headers().get("idempotent-replayed").is_none());
    assert_eq!(app.count("SELECT count(*) FROM products").await, 1);
}

/// A stored result is replayed only to a role that may make the request: an admin made an
/// operator gets 403 for the key of an API key it created, not the key's secret again. The
/// result is kept: promoted back, the same request replays it.
#[tokio::test]
async fn a_stored_result_is_not_replayed_to_a_role_that_may_no_longer_make_the_request()
-> TestResult {
    let app = spawn_app().await;
    let email = app.user(Role::Admin).await;
    let admin = app.login(&email).await;
    let set_role = |role: &'static str| {
        let (pool, email) = (app.db.pool.clone(), email.clone());
        async move {
            sqlx::query("UPDATE users SET role = $1 WHERE email = $2")
                .bind(role)
                .bind(email)
                .execute(&pool)
                .await
                .map(|_| ())
        }
    };
    let req = json!({"name": "scanner"});
    let first = app
        .post("/v1/api-keys", &admin.access, &req, Some("demoted"))
        .await;
    assert_eq!(first.status(), 201);
    let first = body(first).await;
    set_role("operator").await?;
    let replay = app
        .post("/v1/api-keys", &admin.access, &req, Some("demoted"))
        .await;
    assert!(replay.headers().get("idempotent-replayed").is_none());
    assert_error(replay, 403, "forbidden").await;
    set_role("admin").await?;
    let replay = app
        .post("/v1/api-keys", &admin.access, &req, Some("demoted"))
        .await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(body(replay).await, first);
    Ok(())
}

#[tokio::test]
async fn a_claim_left_by_a_run_that_committed_replays_from_postgres_not_409() {
    let app = spawn_app().await;
    let op = app.signed_in(Role::Operator).await;
    let req = json!({"name": "B", "sku": "B-1"});
    let (first, entry) = created_with_key(&app, &op.access, &req, "stuck").await;
    // Simulate a run that committed and then could not store its result in Redis (Redis
    // failed at that moment, or the process died): its in-flight claim is still there, with
    // the request's fingerprint and a lease of a minute.
    let mut redis = app.redis().await;
    // A success is stored in Redis just after it is answered.
    let mut done = serde_json::Value::Null;
    for _ in 0..100 {
        let entry: String = redis::cmd("GET")
            .arg(&entry)
            .query_async(&mut redis)
            .await
            .unwrap();
        done = serde_json::from_str(&entry).unwrap();
        if done["state"] == "done" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(done["state"], "done");
    let pending = json!({"state": "pending", "fp": done["fp"], "claim": "a-run-that-committed"});
    let _: () = redis::cmd("SET")
        .arg(&entry)
        .arg(pending.to_string())
        .arg("PX")
        .arg(60_000)
        .query_async(&mut redis)
        .await
        .unwrap();

    // Retries get the committed result at once, not 409 until the lease runs out.
    for _ in 0..2 {
        let again = app
            .post("/v1/products", &op.access, &req, Some("stuck"))
            .await;
        assert_eq!(again.status(), 201);
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        assert_eq!(body(again).await, first);
    }
    // A different request with the key is still refused.
    assert_error(
        app.post(
            "/v1/products",
            &op.access,
            &json!({"name": "B", "sku": "B-2"}),
            Some("stuck"),
        )
        .await,
        422,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(app.count("SELECT count(*) FROM products").await, 1);
}

#[tokio::test]
async fn a_wrong_content_type_is_not_stored() {
    let app = spawn_app().await;
    let op = app.signed_in(Role::Operator).await;
    let body = r#"{"name":"C","sku":"C-1"}"#;
    let send = |content_type: &'static str| {
        app.req(Method::POST, "/v1/products", Some(&op.access))
            .header("Content-Type", content_type)
            .header("Idempotency-Key", "typed")
            .body(body)
            .send()
    };
    assert_error(
        send("text/plain").await.unwrap(),
        415,
        "unsupported_media_type",
    )
    .await;
    // The same key and body with the right header runs: the header is not in the fingerprint,
    // so replaying the 415 would leave the key unusable.
    let r = send("application/json").await.unwrap();
    assert_eq!(r.status(), 201);
    assert!(r.headers().get("idempotent-replayed").is_none());
    let again = send("application/json").await.unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(app.count("SELECT count(*) FROM products").await, 1);
}

/// A 4xx may be this run's answer to what an earlier run of the key did (a duplicate SKU after
/// a crash that lost the claim), so the layer asks PostgreSQL for the key's record before it
/// keeps the 4xx. When PostgreSQL cannot say in time, the 4xx is not kept as the key's result
/// for a day: the answer is 503 and a retry asks again.
#[tokio::test]
async fn a_4xx_is_not_kept_for_the_key_when_postgres_cannot_say_whether_a_record_explains_it()
-> TestResult {
    let app = spawn_app().await;
    let op = app.signed_in(Role::Operator).await;
    let req = json!({"name": "Taken", "sku": "TAKEN-1"});
    assert_eq!(
        app.post("/v1/products", &op.access, &req, None)
            .await
            .status(),
        201
    );

    // The record table cannot be read until the lock is let go.
    let mut lock = app.db.pool.begin().await?;
    sqlx::query("LOCK TABLE idempotency_keys IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await?;
    let r = app
        .post("/v1/products", &op.access, &req, Some("unsure"))
        .await;
    assert_eq!(r.headers()["retry-after"], "1");
    assert_error(r, 503, "service_unavailable").await;
    lock.rollback().await?;

    // Asked again, PostgreSQL says there is no record: the 409 is the key's result.
    let r = app
        .post("/v1/products", &op.access, &req, Some("unsure"))
        .await;
    assert!(r.headers().get("idempotent-replayed").is_none());
    assert_error(r, 409, "conflict").await;
    let r = app
        .post("/v1/products", &op.access, &req, Some("unsure"))
        .await;
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_error(r, 409, "conflict").await;
    Ok(())
}

/// A method a route does not have is 405 whatever the key says, and the key stays unused: the
/// layer wrapped the route's 405 too, so it judged the key first (400 for an empty one), then
/// stored the 405, replayed it, and refused the key's real request as a different one (422).
#[tokio::test]
async fn a_wrong_method_is_405_and_does_not_use_the_key() -> TestResult {
    let app = spawn_app().await;
    let admin = app.signed_in(Role::Admin).await;
    for (method, path) in [
        (Method::DELETE, "/v1/products"),
        (Method::PUT, "/v1/api-keys"),
        (
            Method::POST,
            "/v1/api-keys/00000000-0000-0000-0000-000000000000",
        ),
        (Method::DELETE, "/v1/batches"),
        (Method::PATCH, "/v1/tags/AAAAAAAAAAAAAAAAAAAA/revoke"),
    ] {
        for key in ["", "wrong-method"] {
            let r = app
                .req(method.clone(), path, Some(&admin.access))
                .header("Idempotency-Key", key)
                .send()
                .await?;
            assert_eq!(
                r.headers().get("idempotent-replayed"),
                None,
                "{method} {path}"
            );
            assert!(r.headers().contains_key("allow"), "{method} {path}");
            assert_error(r, 405, "method_not_allowed").await;
        }
    }
    assert!(idempotency_entries(&app).await.is_empty());
    // The key's real request runs.
    let r = app
        .post(
            "/v1/products",
            &admin.access,
            &json!({"name": "M", "sku": "M-1"}),
            Some("wrong-method"),
        )
        .await;
    assert_eq!(r.status(), 201);
    assert!(r.headers().get("idempotent-replayed").is_none());
    Ok(())
}

/// The key exactly as the layer derives it for `POST path` with body `req` and Idempotency-Key
/// `raw`, sent by the user `email`.
async fn key_as_the_layer_derives_it(
    app: &TestApp,
    email: &str,
    path: &str,
    req: &serde_json::Value,
    raw: &str,
) -> Result<IdempotencyKey, Box<dyn std::error::Error>> {
    let user_id: Uuid = sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
        .bind(email)
        .fetch_one(&app.db.pool)
        .await?;
    let mut fingerprint = Sha256::new();
    fingerprint.update(format!("POST\n{path}\n").as_bytes());
    fingerprint.update(serde_json::to_vec(req)?);
    Ok(IdempotencyKey {
        user_id,
        key_hash: Sha256::digest(raw.as_bytes()).into(),
        fingerprint: fingerprint.finalize().into(),
        seal: SealKey::derive(raw.as_bytes(), user_id).map_err(|e| format!("{e:?}"))?,
    })
}

/// Records `result` (201) for `key` on `conn`, as another run of the key would.
async fn record_result(
    conn: &mut sqlx::PgConnection,
    key: &IdempotencyKey,
    result: &serde_json::Value,
) -> Result<(), Box<dyn std::error::Error>> {
    let sealed = key
        .seal_body(&serde_json::to_vec(result)?)
        .map_err(|e| format!("{e:?}"))?;
    let saved = record::save(conn, key, Duration::from_secs(86_400), 201, &sealed).await?;
    assert!(saved, "the record was saved");
    Ok(())
}

/// Creates a product with Idempotency-Key `key` (201) and returns its body and the one
/// idempotency entry Redis holds for it.
async fn created_with_key(
    app: &TestApp,
    access: &str,
    req: &serde_json::Value,
    key: &str,
) -> (serde_json::Value, String) {
    let first = app.post("/v1/products", access, req, Some(key)).await;
    assert_eq!(first.status(), 201);
    let first = body(first).await;
    let mut keys = idempotency_entries(app).await;
    assert_eq!(keys.len(), 1);
    (first, keys.remove(0))
}

/// The Redis keys of the app's idempotency entries.
async fn idempotency_entries(app: &TestApp) -> Vec<String> {
    let mut redis = app.redis().await;
    redis::cmd("KEYS")
        .arg(format!("{}:idem:*", app.redis_prefix))
        .query_async(&mut redis)
        .await
        .unwrap()
}
