//! CONTRACT 3.6: bad JSON, missing fields, wrong types, huge bodies, wrong content type,
//! unknown routes and methods all answer the contract's JSON error, with the security headers.

use factory_service::users::Role;
use reqwest::Method;
use serde_json::json;

use crate::helpers::{assert_error, body, spawn_app};

#[tokio::test]
async fn malformed_bodies_get_json_errors() {
    let app = spawn_app().await;
    let op = app.signed_in(Role::Operator).await;
    let raw = |body: &'static str| {
        app.req(Method::POST, "/v1/products", Some(&op.access))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
    };
    assert_error(raw("{not json").await.unwrap(), 400, "invalid_json").await;
    let b = assert_error(raw(r#"{"name":"x"}"#).await.unwrap(), 400, "invalid_body").await;
    assert!(
        b["detail"].as_str().unwrap().contains("sku"),
        "names the missing field: {b}"
    );
    assert_error(
        raw(r#"{"name":1,"sku":"s"}"#).await.unwrap(),
        400,
        "invalid_body",
    )
    .await;
    let r = app
        .post(
            "/v1/batches",
            &op.access,
            &json!({"product_id": "nope", "quantity": "many"}),
            None,
        )
        .await;
    assert_error(r, 400, "invalid_body").await;
    let r = app
        .req(Method::POST, "/v1/products", Some(&op.access))
        .header("Content-Type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_error(r, 415, "unsupported_media_type").await;
    // JSON is UTF-8: a body labelled with another charset is refused, not read as UTF-8.
    let r = app
        .req(Method::POST, "/v1/products", Some(&op.access))
        .header("Content-Type", "application/json; charset=latin1")
        .body(r#"{"name":"Caf\u00e9","sku":"L-1"}"#)
        .send()
        .await
        .unwrap();
    assert_error(r, 415, "unsupported_media_type").await;
    assert_eq!(app.count("SELECT count(*) FROM products").await, 0);
}

#[tokio::test]
async fn huge_bodies_are_413() {
    let app = spawn_app().await;
    let op = app.signed_in(Role::Operator).await;
    let huge = format!(r#"{{"name":"{}","sku":"s"}}"#, "x".repeat(2 * 1024 * 1024));
    for key in [None, Some("with-key")] {
        let mut b = app
            .req(Method::POST, "/v1/products", Some(&op.access))
            .header("Content-Type", "application/json")
            .body(huge.clone());
        if let Some(k) = key {
            b = b.header("Idempotency-Key", k);
        }
        assert_error(b.send().await.unwrap(), 413, "payload_too_large").await;
    }
    let login = app
        .req(Method::POST, "/v1/auth/login", None)
        .header("Content-Type", "application/json")
        .header("X-Device-ID", crate::helpers::DEVICE)
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_error(login, 413, "payload_too_large").await;
}

#[tokio::test]
async fn unknown_routes_and_methods_are_json_with_security_headers() {
    let app = spawn_app().await;
    let r = app
        .req(Method::GET, "/v1/nothing-here", None)
        .send()
        .await
        .unwrap();
    for (h, v) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("cache-control", "no-store"),
        ("referrer-policy", "no-referrer"),
    ] {
        assert_eq!(r.headers()[h], v, "{h}");
    }
    assert!(r.headers().contains_key("x-request-id"));
    assert_error(r, 404, "not_found").await;
    let r = app
        .req(Method::PUT, "/v1/products", None)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(body(r).await["error"], "method_not_allowed");
}

#[tokio::test]
async fn the_openapi_document_lists_every_route() {
    let app = spawn_app().await;
    let doc = body(
        app.req(Method::GET, "/openapi.json", None)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/auth/login", "post"),
        ("/v1/auth/refresh", "post"),
        ("/v1/auth/logout", "post"),
        ("/v1/api-keys", "post"),
        ("/v1/api-keys", "get"),
        ("/v1/api-keys/{id}", "delete"),
        ("/v1/products", "post"),
        ("/v1/products/{id}", "get"),
        ("/v1/batches", "post"),
        ("/v1/batches/{id}/tags", "get"),
        ("/v1/tags/{tag_id}", "get"),
        ("/v1/tags/{tag_id}/revoke", "post"),
        ("/v1/audit/events", "get"),
        ("/v1/audit/verify", "get"),
        ("/v1/audit/checkpoint", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} documented"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    // Bounds a client can check before sending.
    let rate = &doc["components"]["schemas"]["NewApiKey"]["properties"]["rate_limit_per_minute"];
    assert_eq!(
        (rate["minimum"].as_f64(), rate["maximum"].as_f64()),
        (Some(1.0), Some(1e6)),
        "{rate}"
    );
}

#[tokio::test]
async fn login_bodies_are_checked_like_every_other_body() {
    let app = spawn_app().await;
    let login = |body: &'static str| {
        app.req(Method::POST, "/v1/auth/login", None)
            .header("Content-Type", "application/json")
            .header("X-Device-ID", "errors-test-device-0001")
            .body(body)
            .send()
    };
    // An unknown field is refused, as on every other route.
    let b = assert_error(
        login(r#"{"email":"a@example.com","password":"p","remember_me":true}"#)
            .await
            .unwrap(),
        400,
        "invalid_body",
    )
    .await;
    assert!(b["detail"].as_str().unwrap().contains("remember_me"), "{b}");
    // The detail says what was expected without naming the server's own types.
    for body in ["[]", r#"["a@example.com"]"#, "1"] {
        let b = assert_error(login(body).await.unwrap(), 400, "invalid_body").await;
        let detail = b["detail"].as_str().unwrap();
        assert!(!detail.contains("LoginRequest"), "{detail}");
        assert!(!detail.contains("struct"), "{detail}");
    }
}

#[tokio::test]
async fn a_long_non_ascii_field_name_is_a_400_not_a_500() {
    let app = spawn_app().await;
    let op = app.signed_in(Role::Operator).await;
    // serde quotes the unknown field's name; the detail is cut to 300 bytes, which must not
    // fall inside a three-byte character.
    for pad in 0..3 {
        let name = format!("{}{}", "x".repeat(pad), "€".repeat(200));
        let r = app
            .req(Method::POST, "/v1/products", Some(&op.access))
            .header("Content-Type", "application/json")
            .body(format!(r#"{{"name":"n","sku":"s","{name}":1}}"#))
            .send()
            .await
            .unwrap();
        let b = assert_error(r, 400, "invalid_body").await;
        assert!(b["detail"].as_str().unwrap().len() <= 300, "{b}");
    }
}

/// A unique violation that is not the caller's doing (here a stray row already at the audit
/// chain's next seq, as only tampering or a bug could leave) is a 500, not a 409 `conflict`
/// that tells the client to change its request. A duplicate SKU stays a 409.
#[tokio::test]
async fn a_duplicate_key_of_our_own_is_a_500_not_the_callers_conflict() {
    let app = spawn_app().await;
    let op = app.signed_in(Role::Operator).await;
    let product = json!({"name": "Bag", "sku": "DUP-1"});
    assert_eq!(
        app.post("/v1/products", &op.access, &product, None)
            .await
            .status(),
        201
    );
    let again = assert_error(
        app.post("/v1/products", &op.access, &product, None).await,
        409,
        "conflict",
    )
    .await;
    assert!(again["detail"].as_str().unwrap().contains("SKU"), "{again}");

    // A copy of the newest audit event at the next seq: the next append collides with it.
    sqlx::query(
        "INSERT INTO audit_events SELECT (jsonb_populate_record(NULL::audit_events, \
             to_jsonb(e) || jsonb_build_object('seq', e.seq + 1, 'event_id', gen_random_uuid()))).* \
         FROM audit_events e ORDER BY seq DESC LIMIT 1",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    let r = app
        .post(
            "/v1/products",
            &op.access,
            &json!({"name": "Bag", "sku": "DUP-2"}),
            None,
        )
        .await;
    assert_error(r, 500, "internal_error").await;
    assert_eq!(
        app.count("SELECT count(*) FROM products WHERE sku = 'DUP-2'")
            .await,
        0,
        "the product rolled back with its audit event"
    );
}

/// A session holding the audit chain's head (an operator's psql, a frozen instance) makes an
/// audited write wait at most the pool's lock bound (a third of the request timeout), then 503.
/// PostgreSQL drops the wait too, so the connection goes back to the pool: before, the request
/// timed out and its statement went on waiting, and sixteen such writes held every connection,
/// so reads answered 503 as well until the lock was released.
#[tokio::test]
async fn a_write_waiting_on_a_held_audit_head_gives_up_and_frees_its_connection()
-> Result<(), Box<dyn std::error::Error>> {
    let app = crate::helpers::spawn_app_with(|env| env.with("REQUEST_TIMEOUT_SEC", "6")).await;
    let op = app.signed_in(Role::Operator).await;
    let mut holder = app.db.pool.begin().await?;
    sqlx::query("SELECT seq FROM audit_chain_head FOR UPDATE")
        .execute(&mut *holder)
        .await?;
    let product = json!({"name": "Held", "sku": "HELD-1"});
    let write = app.post("/v1/products", &op.access, &product, None);
    let waiting = "SELECT count(*) FROM pg_stat_activity \
                   WHERE datname = current_database() AND wait_event_type = 'Lock'";
    let watch = async {
        assert_eq!(app.count_until_positive(waiting, || false).await, 1);
        // Past the lock bound (2 s), well before the request timeout (6 s).
        tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
        app.count(waiting).await
    };
    let (r, still_waiting) = tokio::join!(write, watch);
    assert_eq!(
        still_waiting, 0,
        "the write's statement still waits for the head"
    );
    assert_error(r, 503, "service_unavailable").await;
    holder.rollback().await?;
    assert_eq!(app.count("SELECT count(*) FROM products").await, 0);
    Ok(())
}
