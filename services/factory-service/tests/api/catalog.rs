//! CONTRACT 3.3: products, batches of up to 100000 tags in one request, the streamed CSV, tag
//! look-up and revocation (with the scan cache entry dropped).

use std::collections::HashSet;

use factory_service::users::Role;
use redis::AsyncCommands as _;
use serde_json::json;

use crate::helpers::{assert_error, body, spawn_app};

fn is_tag_id(id: &str) -> bool {
    (16..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[tokio::test]
async fn products_are_created_and_read_and_skus_are_unique() {
    let app = spawn_app().await;
    let op = app.signed_in(Role::Operator).await;
    let r = app
        .post(
            "/v1/products",
            &op.access,
            &json!({"name": "Handbag", "sku": "HB-1"}),
            None,
        )
        .await;
    assert_eq!(r.status(), 201);
    let created = body(r).await;
    let got = body(
        app.get(
            &format!("/v1/products/{}", created["id"].as_str().unwrap()),
            &op.access,
        )
        .await,
    )
    .await;
    assert_eq!(got, created);
    let dup = app
        .post(
            "/v1/products",
            &op.access,
            &json!({"name": "Other", "sku": "HB-1"}),
            None,
        )
        .await;
    let b = assert_error(dup, 409, "conflict").await;
    assert!(
        !b.to_string().contains("products_sku_key"),
        "no SQL names leak: {b}"
    );
    let missing = app
        .get(
            &format!("/v1/products/{}", uuid::Uuid::new_v4()),
            &op.access,
        )
        .await;
    assert_error(missing, 404, "not_found").await;
    let bad = app.get("/v1/products/not-a-uuid", &op.access).await;
    assert_error(bad, 400, "invalid_id").await;
}

#[tokio::test]
async fn a_batch_of_100000_tags_is_created_in_one_request() {
    let app = spawn_app().await;
    let op = app.signed_in(Role::Operator).await;
    let product = app.product(&op.access).await;
    let r = app
        .post(
            "/v1/batches",
            &op.access,
            &json!({"product_id": product, "quantity": 100000}),
            None,
        )
        .await;
    assert_eq!(r.status(), 201);
    let batch = body(r).await;
    assert_eq!(batch["quantity"], 100000);
    assert_eq!(batch["product_id"], product.as_str());
    let batch_id: uuid::Uuid = batch["id"].as_str().unwrap().parse().unwrap();
    let ids: Vec<String> = sqlx::query_scalar("SELECT tag_id FROM tags WHERE batch_id = $1")
        .bind(batch_id)
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(ids.len(), 100000);
    assert!(
        ids.iter().all(|id| is_tag_id(id)),
        "every id matches ^[A-Za-z0-9_-]{{16,64}}$"
    );
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        100000,
        "ids are unique"
    );
    assert_eq!(app.audit_count("batch.created").await, 1);
}

/// Batch creates take turns in an instance: one runs, the others wait without a connection of
/// the API pool. Each used to wait (for the audit chain's head the running one holds) on a
/// connection of its own, and 16 of them took the whole pool: every other request, sign-ins
/// included, got 503. Here the first create is held on a lock of the tags table.
#[tokio::test]
async fn batch_creates_take_turns_without_holding_the_pool() {
    let app = spawn_app().await;
    let op = app.signed_in(Role::Operator).await;
    let product = app.product(&op.access).await;
    let mut lock = app.db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE tags IN EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let req = json!({"product_id": product, "quantity": 5});
    // The first create's client stops waiting (no idempotency key) while it holds the turn:
    // cancelled with its request, it gave the turn up while PostgreSQL went on waiting for it,
    // and the next create took the turn and another connection.
    let first = tokio::spawn(
        app.req(reqwest::Method::POST, "/v1/batches", Some(&op.access))
            .json(&req)
            .send(),
    );
    app.count_until_positive(API_WAITING_ON_A_LOCK, || false)
        .await;
    first.abort();
    let creates: Vec<_> = (0..3)
        .map(|_| {
            let r = app.req(reqwest::Method::POST, "/v1/batches", Some(&op.access));
            tokio::spawn(r.json(&req).send())
        })
        .collect();
    app.count_until_positive(API_BUSY, || false).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        app.count(API_BUSY).await,
        1,
        "one create at a time holds a connection"
    );
    // Other requests are served meanwhile.
    let r = app
        .get(&format!("/v1/products/{product}"), &op.access)
        .await;
    assert_eq!(r.status(), 200);
    lock.rollback().await.unwrap();
    for create in creates {
        assert_eq!(create.await.unwrap().unwrap().status(), 201);
    }
    // The first too: it ran to its end.
    assert_eq!(app.count("SELECT count(*) FROM batches").await, 4);
}

/// The API pool's connections waiting on a lock.
const API_WAITING_ON_A_LOCK: &str = "SELECT count(*) FROM pg_stat_activity \
    WHERE datname = current_database() AND application_name = 'voketag-factory-api' \
    AND wait_event_type = 'Lock'";

/// The API pool's connections in use (not idle).
const API_BUSY: &str = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                        AND application_name = 'voketag-factory-api' AND state <> 'idle'";

/// Tag CSV downloads take turns, two at a time in an instance: each holds a connection of the
/// API pool while PostgreSQL sorts its batch's ids and the client reads them, and a viewer
/// asking again and again (within the rate limit) slowed every admin request to seconds. Here
/// the downloads are held on a lock of the tags table.
#[tokio::test]
async fn tag_downloads_take_turns_two_at_a_time() {
    let app = spawn_app().await;
    let op = app.signed_in(Role::Operator).await;
    let product = app.product(&op.access).await;
    let batch = created_batch(&app, &op.access, &product, 5).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut lock = app.db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE tags IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let path = format!("/v1/batches/{batch}/tags");
    let downloads: Vec<_> = (0..5)
        .map(|_| {
            let r = app.req(reqwest::Method::GET, &path, Some(&op.access));
            tokio::spawn(async move { r.send().await?.text().await })
        })
        .collect();
    app.count_until_positive(API_BUSY, || false).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        app.count(API_BUSY).await,
        2,
        "two downloads at a time hold a connection"
    );
    lock.rollback().await.unwrap();
    for download in downloads {
        assert_eq!(download.await.unwrap().unwrap().lines().count(), 5);
    }
}

#[tokio::test]
async fn batch_input_is_validated() {
    let app = spawn_app().await;
    let op = app.signed_in(Role::Operator).await;
    let product = app.product(&op.access).await;
    for q in [0, 100001, -5] {
        let r = app
            .post(
                "/v1/batches",
                &op.access,
                &json!({"product_id": product, "quantity": q}),
                None,
            )
            .await;
        assert_error(r, 400, "validation_failed").await;
    }
    let r = app
        .post(
            "/v1/batches",
            &op.access,
            &json!({"product_id": uuid::Uuid::new_v4(), "quantity": 1}),
            None,
        )
        .await;
    assert_error(r, 404, "not_found").await;
    assert_eq!(app.count("SELECT count(*) FROM batches").await, 0);
}

#[tokio::test]
async fn the_tag_csv_is_streamed() {
    let app = spawn_app().await;
    let op = app.signed_in(Role::Operator).await;
    let product = app.product(&op.access).await;
    let batch = created_batch(&app, &op.access, &product, 5000).await;
    let viewer = app.signed_in(Role::Viewer).await;
    let mut r = app
        .get(
            &format!("/v1/batches/{}/tags", batch["id"].as_str().unwrap()),
            &viewer.access,
        )
        .await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    // Streamed: chunked, no length known up front, arriving in several pieces.
    assert!(r.headers().get("content-length").is_none());
    assert_eq!(
        r.headers()
            .get("transfer-encoding")
            .map(|v| v.to_str().unwrap()),
        Some("chunked")
    );
    let mut text = String::new();
    let mut chunks = 0;
    while let Some(chunk) = r.chunk().await.unwrap() {
        chunks += 1;
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(chunks > 1, "more than one chunk");
    // Every line is a tag id: no header line.
    let ids: HashSet<&str> = text.lines().collect();
    assert_eq!(text.lines().count(), 5000);
    assert_eq!(ids.len(), 5000);
    assert!(ids.iter().all(|id| is_tag_id(id)));
    let missing = app
        .get(
            &format!("/v1/batches/{}/tags", uuid::Uuid::new_v4()),
            &viewer.access,
        )
        .await;
    assert_error(missing, 404, "not_found").await;
}

#[tokio::test]
async fn tags_are_looked_up_and_revoked_and_the_scan_cache_entry_dropped() {
    let app = spawn_app().await;
    let op = app.signed_in(Role::Operator).await;
    let product = app.product(&op.access).await;
    let batch = created_batch(&app, &op.access, &product, 3).await;
    let tag: String = sqlx::query_scalar("SELECT tag_id FROM tags LIMIT 1")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();

    let got = body(app.get(&format!("/v1/tags/{tag}"), &op.access).await).await;
    assert_eq!(got["status"], "authentic");
    assert_eq!(got["product"]["id"], product.as_str());
    assert_eq!(got["batch_id"], batch["id"]);
    assert_eq!(got["scan_count"], 0);
    assert!(got["first_scanned_at"].is_null());
    // As recorded from a scan event whose scanned_at fell on a whole second: shown in the
    // event's own form, three fractional digits included, as the scan service shows it.
    sqlx::query(
        "UPDATE tags SET scan_count = 1, first_scanned_at = '2026-12-01T10:00:00Z' WHERE tag_id = $1",
    )
    .bind(&tag)
    .execute(&app.db.pool)
    .await
    .expect("record a scan");
    let got = body(app.get(&format!("/v1/tags/{tag}"), &op.access).await).await;
    assert_eq!(got["first_scanned_at"], "2026-12-01T10:00:00.000Z");

    let cache_key = format!("{}:tag:{{{tag}}}", app.redis_prefix);
    let mut redis = app.redis().await;
    let _: () = redis
        .set_ex(&cache_key, "{\"status\":\"authentic\"}", 300)
        .await
        .unwrap();
    let r = app
        .post(
            &format!("/v1/tags/{tag}/revoke"),
            &op.access,
            &json!({"reason": "stolen shipment"}),
            None,
        )
        .await;
    assert_eq!(r.status(), 200);
    let revoked = body(r).await;
    assert_eq!(revoked["status"], "revoked");
    let exists: bool = redis.exists(&cache_key).await.unwrap();
    assert!(!exists, "the scan service's cached look-up is dropped");
    let got = body(app.get(&format!("/v1/tags/{tag}"), &op.access).await).await;
    assert_eq!(got["status"], "revoked");
    assert_eq!(got["revoked_reason"], "stolen shipment");
    assert_eq!(app.audit_count("tag.revoked").await, 1);

    assert_error(
        app.get("/v1/tags/short", &op.access).await,
        400,
        "invalid_tag_id",
    )
    .await;
    assert_error(
        app.get("/v1/tags/AAAAAAAAAAAAAAAAAAAAAA", &op.access).await,
        404,
        "not_found",
    )
    .await;
    let r = app
        .post(
            &format!("/v1/tags/{tag}/revoke"),
            &op.access,
            &json!({"reason": ""}),
            None,
        )
        .await;
    assert_error(r, 400, "validation_failed").await;
}

#[tokio::test]
async fn text_with_a_nul_or_control_character_is_refused_not_a_server_error() {
    let app = spawn_app().await;
    let admin = app.signed_in(Role::Admin).await;
    // PostgreSQL refuses NUL in text and jsonb; that must be the caller's 400, not our 500.
    for (path, body) in [
        ("/v1/products", json!({"name": "bag\u{0}x", "sku": "NUL-1"})),
        ("/v1/products", json!({"name": "bag", "sku": "NUL\u{0}2"})),
        (
            "/v1/products",
            json!({"name": "bell\u{7}bag", "sku": "NUL-3"}),
        ),
        ("/v1/api-keys", json!({"name": "key\u{0}"})),
        // Names and SKUs are one line, and bidirectional controls could make a name shown to
        // shoppers read as something else.
        (
            "/v1/products",
            json!({"name": "bag\nline", "sku": "LINE-1"}),
        ),
        ("/v1/products", json!({"name": "bag", "sku": "LINE\t2"})),
        (
            "/v1/products",
            json!({"name": "bag \u{202E}gab", "sku": "BIDI-1"}),
        ),
        (
            "/v1/products",
            json!({"name": "bag", "sku": "BIDI\u{2066}2"}),
        ),
        ("/v1/api-keys", json!({"name": "key\r\nname"})),
        (
            "/v1/products",
            json!({"name": "bag\u{2028}x", "sku": "SEP-1"}),
        ),
        (
            "/v1/products",
            json!({"name": "bag\u{200F}x", "sku": "MARK-1"}),
        ),
    ] {
        let r = app.post(path, &admin.access, &body, None).await;
        assert_error(r, 400, "validation_failed").await;
    }
    let product = app.product(&admin.access).await;
    let batch = created_batch(&app, &admin.access, &product, 1).await;
    let tag = first_tag(&app, &admin.access, &batch).await;
    let r = app
        .post(
            &format!("/v1/tags/{tag}/revoke"),
            &admin.access,
            &json!({"reason": "stolen\u{0}"}),
            None,
        )
        .await;
    assert_error(r, 400, "validation_failed").await;
    // Line breaks and tabs are fine in a reason.
    let r = app
        .post(
            &format!("/v1/tags/{tag}/revoke"),
            &admin.access,
            &json!({"reason": "stolen\n\tin transit"}),
            None,
        )
        .await;
    assert_eq!(r.status(), 200);
    // Where no field rule applies (the login email), the database's refusal is still a 4xx.
    let r = app
        .login_raw("admin\u{0}@example.com", "whatever-password", "device-1")
        .await;
    assert!(r.status().is_client_error(), "{}", r.status());
}

/// Names, SKUs and reasons are shown to people: a value must show what it is (crate `text`).
#[tokio::test]
async fn text_that_would_show_as_something_else_is_refused() {
    let app = spawn_app().await;
    let admin = app.signed_in(Role::Admin).await;
    for (body, says) in [
        // Nothing visible: zero-width spaces, a soft hyphen, a Hangul filler.
        (
            json!({"name": "\u{200B}\u{200B}", "sku": "VIS-1"}),
            "visible",
        ),
        (json!({"name": "\u{AD}", "sku": "VIS-2"}), "visible"),
        (json!({"name": "bag", "sku": "\u{3164}"}), "visible"),
        // Noncharacters.
        (
            json!({"name": "bag\u{FFFE}", "sku": "NON-1"}),
            "noncharacters",
        ),
        (
            json!({"name": "bag", "sku": "NON\u{10FFFF}"}),
            "noncharacters",
        ),
        // A SKU people tell apart by eye holds no format character.
        (
            json!({"name": "bag", "sku": "CAF\u{200B}\u{C9}"}),
            "invisible",
        ),
        (json!({"name": "bag", "sku": "\u{FEFF}CAFE"}), "invisible"),
    ] {
        let r = app.post("/v1/products", &admin.access, &body, None).await;
        let b = assert_error(r, 400, "validation_failed").await;
        assert!(
            b["detail"].as_str().is_some_and(|d| d.contains(says)),
            "{body}: {b}"
        );
    }
    assert_error(
        app.post(
            "/v1/api-keys",
            &admin.access,
            &json!({"name": "\u{2060}"}),
            None,
        )
        .await,
        400,
        "validation_failed",
    )
    .await;
    assert_eq!(app.count("SELECT count(*) FROM products").await, 0);
    // A reason with an override displayed "defective counterfeit" for "evitcefed counterfeit".
    let product = app.product(&admin.access).await;
    let batch = created_batch(&app, &admin.access, &product, 1).await;
    let tag = first_tag(&app, &admin.access, &batch).await;
    let r = app
        .post(
            &format!("/v1/tags/{tag}/revoke"),
            &admin.access,
            &json!({"reason": "\u{202E}evitcefed\u{202C} counterfeit"}),
            None,
        )
        .await;
    let b = assert_error(r, 400, "validation_failed").await;
    assert!(
        b["detail"]
            .as_str()
            .is_some_and(|d| d.contains("bidirectional")),
        "{b}"
    );
    // Joiners inside visible text are text (an emoji sequence, a Persian word).
    let r = app
        .post(
            "/v1/products",
            &admin.access,
            &json!({"name": "👩🏽\u{200D}💻 می\u{200C}خواهم", "sku": "ZWJ-1"}),
            None,
        )
        .await;
    assert_eq!(r.status(), 201);
}

/// "É" typed as one code point or as "E" and a combining accent is one SKU: stored composed, so
/// the second form is the taken SKU, not a second product that looks the same.
#[tokio::test]
async fn a_sku_is_the_same_sku_in_either_unicode_form() {
    let app = spawn_app().await;
    let op = app.signed_in(Role::Operator).await;
    let r = app
        .post(
            "/v1/products",
            &op.access,
            &json!({"name": "Café", "sku": "CAFE\u{301}-1"}),
            None,
        )
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(body(r).await["sku"], "CAF\u{C9}-1");
    let r = app
        .post(
            "/v1/products",
            &op.access,
            &json!({"name": "Café", "sku": "CAF\u{C9}-1"}),
            None,
        )
        .await;
    assert_error(r, 409, "conflict").await;
    // Case still tells SKUs apart (documented).
    let r = app
        .post(
            "/v1/products",
            &op.access,
            &json!({"name": "Café", "sku": "caf\u{E9}-1"}),
            None,
        )
        .await;
    assert_eq!(r.status(), 201);
}

/// A tag path whose percent-decoded bytes are not UTF-8 holds no tag id: `invalid_tag_id`, as
/// the scan service answers, not the UUID paths' `invalid_id`.
#[tokio::test]
async fn a_tag_path_that_is_not_utf8_is_an_invalid_tag_id() {
    let app = spawn_app().await;
    let admin = app.signed_in(Role::Admin).await;
    let path = "/v1/tags/%FF%FEabcdefghijklmnopq";
    assert_error(app.get(path, &admin.access).await, 400, "invalid_tag_id").await;
    let r = app
        .post(
            &format!("{path}/revoke"),
            &admin.access,
            &json!({"reason": "stolen"}),
            None,
        )
        .await;
    assert_error(r, 400, "invalid_tag_id").await;
}

/// The first tag id of `batch` (a created batch's body), from its CSV.
async fn first_tag(
    app: &crate::helpers::TestApp,
    access: &str,
    batch: &serde_json::Value,
) -> String {
    let csv = app
        .get(
            &format!("/v1/batches/{}/tags", batch["id"].as_str().unwrap()),
            access,
        )
        .await
        .text()
        .await
        .unwrap();
    csv.lines().next().unwrap().to_owned()
}

/// Creates a batch of `quantity` tags of `product`; its body.
async fn created_batch(
    app: &crate::helpers::TestApp,
    access: &str,
    product: &str,
    quantity: u32,
) -> serde_json::Value {
    let r = app
        .post(
            "/v1/batches",
            access,
            &json!({"product_id": product, "quantity": quantity}),
            None,
        )
        .await;
    assert_eq!(r.status(), 201);
    body(r).await
}
