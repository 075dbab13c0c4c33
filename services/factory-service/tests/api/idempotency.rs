//! CONTRACT 3.4: replay, 409 while in flight (one side effect), 422 on a changed request, 400
//! on a bad key, 5xx not stored, Redis down gives 503 without a side effect, and a crash between
//! commit and Redis does not repeat the side effect.

use factory_service::users::Role;
use reqwest::Method;
use serde_json::json;

use crate::helpers::{assert_error, body, spawn_app, spawn_app_with};

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

#[tokio::test]
async fn a_crash_after_commit_replays_from_postgres_instead_of_repeating() {
    let app = spawn_app().await;
    let op = app.signed_in(Role::Operator).await;
    let req = json!({"name": "A", "sku": "A-1"});
    let first = app
        .post("/v1/products", &op.access, &req, Some("durable"))
        .await;
    assert_eq!(first.status(), 201);
    let first = body(first).await;
    // Simulate dying after the commit, before Redis learnt the result: Redis knows nothing.
    let mut redis = app.redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:idem:*", app.redis_prefix))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
    let _: () = redis::cmd("DEL")
        .arg(&keys)
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

#[tokio::test]
async fn an_abandoned_request_gives_its_claim_back() {
    // A request cut off by the request timeout: its claim must not block retries until the
    // lease runs out, and its transaction must not have committed.
    let app = spawn_app_with(|env| env.with("REQUEST_TIMEOUT_SEC", "1")).await;
    let op = app.signed_in(Role::Operator).await;
    let product = app.product(&op.access).await;
    let req = json!({"product_id": product, "quantity": 100000});
    let r = app
        .post("/v1/batches", &op.access, &req, Some("slow"))
        .await;
    if r.status() == 201 {
        eprintln!("the batch finished within the 1 s timeout; nothing to abandon on this machine");
        return;
    }
    assert_error(r, 503, "service_unavailable").await;
    let mut redis = app.redis().await;
    let mut claims = 1;
    for _ in 0..50 {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:idem:*", app.redis_prefix))
            .query_async(&mut redis)
            .await
            .unwrap();
        claims = keys.len();
        if claims == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(claims, 0, "the claim was given back");
    assert_eq!(app.count("SELECT count(*) FROM batches").await, 0);
}
