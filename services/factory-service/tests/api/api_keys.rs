//! CONTRACT 3.2: the key is shown once and only its hash is stored; list; revoke.

use factory_service::users::Role;
use redis::AsyncCommands as _;
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{assert_error, body, spawn_app};

#[tokio::test]
async fn a_key_is_shown_once_and_only_its_hash_is_stored() {
    let app = spawn_app().await;
    let admin = app.signed_in(Role::Admin).await;
    let r = app
        .req(Method::POST, "/v1/api-keys", Some(&admin.access))
        .header("User-Agent", "key-tests/2.0")
        .json(&json!({"name": "Retail app", "rate_limit_per_minute": 1200}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created = body(r).await;
    let key = created["key"].as_str().unwrap().to_owned();
    let prefix = created["prefix"].as_str().unwrap().to_owned();
    assert!(
        key.starts_with(&format!("{prefix}_")) && prefix.starts_with("vt_") && prefix.len() == 11
    );
    let secret = &key[prefix.len() + 1..];
    assert!(
        secret.len() >= 32
            && secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    // Exactly the contract's fields.
    let fields = |v: &serde_json::Value| {
        let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    assert_eq!(
        fields(&created),
        ["created_at", "id", "key", "name", "prefix"],
        "{created}"
    );
    for field in ["id", "name", "prefix", "key", "created_at"] {
        assert!(!created[field].is_null(), "{field} in {created}");
    }

    // The row: the prefix, SHA-256 of the whole key, and nothing that contains the key.
    let (stored_prefix, hash, rate, row): (String, Vec<u8>, Option<i32>, String) = sqlx::query_as(
        "SELECT prefix, key_hash, rate_limit_per_minute, row_to_json(api_keys)::text FROM api_keys",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(stored_prefix, prefix);
    assert_eq!(hash, Sha256::digest(key.as_bytes()).to_vec());
    assert_eq!(rate, Some(1200));
    assert!(!row.contains(secret), "the secret is not stored: {row}");

    // Listed without secrets.
    let list = body(app.get("/v1/api-keys", &admin.access).await).await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(
        fields(&items[0]),
        ["created_at", "id", "name", "prefix", "revoked_at"],
        "{}",
        items[0]
    );
    assert!(items[0].get("key").is_none() && items[0]["revoked_at"].is_null());
    assert!(!list.to_string().contains(secret));

    // Audited with actor, IP and user agent.
    let (actor, ip, ua, details): (Option<String>, Option<String>, Option<String>, Value) =
        sqlx::query_as(
            "SELECT actor_email, client_ip, user_agent, details FROM audit_events WHERE action = 'api_key.created'",
        )
        .fetch_one(&app.db.pool)
        .await
        .expect("the creation's audit event");
    assert!(actor.is_some_and(|a| a.starts_with("admin-")));
    assert_eq!(ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(ua.as_deref(), Some("key-tests/2.0"));
    // What the key may do is part of what was done.
    assert_eq!(
        details,
        json!({"name": created["name"], "prefix": created["prefix"], "rate_limit_per_minute": 1200})
    );
}

#[tokio::test]
async fn revoking_a_key_marks_it_and_drops_the_scan_cache_entry() {
    let app = spawn_app().await;
    let admin = app.signed_in(Role::Admin).await;
    let created = body(
        app.post("/v1/api-keys", &admin.access, &json!({"name": "k"}), None)
            .await,
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let hash = hex::encode(Sha256::digest(created["key"].as_str().unwrap().as_bytes()));
    let cache_key = format!("{}:apikey:{{{hash}}}", app.redis_prefix);
    let mut redis = app.redis().await;
    let _: () = redis.set_ex(&cache_key, "cached", 60).await.unwrap();

    let r = app
        .req(
            Method::DELETE,
            &format!("/v1/api-keys/{id}"),
            Some(&admin.access),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let revoked = body(r).await;
    assert_eq!(revoked["id"], id);
    assert!(revoked["revoked_at"].is_string());
    let exists: bool = redis.exists(&cache_key).await.unwrap();
    assert!(!exists, "the scan service's cached look-up is dropped");

    let list = body(app.get("/v1/api-keys", &admin.access).await).await;
    assert!(list["items"][0]["revoked_at"].is_string());
    assert_eq!(app.audit_count("api_key.revoked").await, 1);

    // Again: the same revocation, no new event.
    let again = app
        .req(
            Method::DELETE,
            &format!("/v1/api-keys/{id}"),
            Some(&admin.access),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(body(again).await["revoked_at"], revoked["revoked_at"]);
    assert_eq!(app.audit_count("api_key.revoked").await, 1);

    let unknown = app
        .req(
            Method::DELETE,
            &format!("/v1/api-keys/{}", uuid::Uuid::new_v4()),
            Some(&admin.access),
        )
        .send()
        .await
        .unwrap();
    assert_error(unknown, 404, "not_found").await;
}

#[tokio::test]
async fn key_input_is_validated() {
    let app = spawn_app().await;
    let admin = app.signed_in(Role::Admin).await;
    let r = app
        .post("/v1/api-keys", &admin.access, &json!({"name": ""}), None)
        .await;
    assert_error(r, 400, "validation_failed").await;
    let r = app
        .post(
            "/v1/api-keys",
            &admin.access,
            &json!({"name": "k", "rate_limit_per_minute": 0}),
            None,
        )
        .await;
    assert_error(r, 400, "validation_failed").await;
    // Past what the column holds: the same 400 with the bounds, not serde's type name.
    let r = app
        .post(
            "/v1/api-keys",
            &admin.access,
            &json!({"name": "k", "rate_limit_per_minute": 3_000_000_000_u64}),
            None,
        )
        .await;
    let b = assert_error(r, 400, "validation_failed").await;
    assert!(
        b["detail"].as_str().unwrap().contains("1 to 1000000"),
        "{b}"
    );
    // Not a number at all: the shape error, in plain words.
    let r = app
        .post(
            "/v1/api-keys",
            &admin.access,
            &json!({"name": "k", "rate_limit_per_minute": "fast"}),
            None,
        )
        .await;
    let b = assert_error(r, 400, "invalid_body").await;
    let detail = b["detail"].as_str().unwrap();
    assert!(detail.contains("expected an integer"), "{detail}");
    assert!(!detail.contains("i64"), "{detail}");
    assert_eq!(app.count("SELECT count(*) FROM api_keys").await, 0);
}

#[tokio::test]
async fn a_key_created_with_an_idempotency_key_is_replayed_but_stored_nowhere_in_clear() {
    let app = spawn_app().await;
    let admin = app.signed_in(Role::Admin).await;
    let idem = uuid::Uuid::new_v4().to_string();
    let req = json!({"name": "Replayable"});
    let first = app
        .post("/v1/api-keys", &admin.access, &req, Some(&idem))
        .await;
    assert_eq!(first.status(), 201);
    let created = body(first).await;
    let key = created["key"].as_str().unwrap().to_owned();
    // Everything after `vt_<prefix>_`: the secret is base64url and may hold `_` itself, so the
    // part after the last `_` can be a few characters that turn up anywhere by chance.
    let prefix = created["prefix"].as_str().unwrap();
    let secret = key[prefix.len() + 1..].to_owned();
    assert_eq!(secret.len(), 43, "the whole 256-bit secret");

    // Not in the idempotency record (either column, in any encoding we use) ...
    let rows: Vec<(Option<String>, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT body::text, sealed_body FROM idempotency_keys")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 1);
    for (plain, sealed) in &rows {
        assert!(plain.is_none(), "a clear body was kept: {plain:?}");
        let sealed = sealed.as_deref().unwrap();
        assert!(!sealed.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }
    // ... nor in Redis, raw or base64-decoded.
    let mut redis = app.redis().await;
    let names: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:idem:*", app.redis_prefix))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(names.len(), 1);
    let stored: String = redis.get(&names[0]).await.unwrap();
    assert!(!stored.contains(&secret));
    let entry: serde_json::Value = serde_json::from_str(&stored).unwrap();
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(entry["body"].as_str().unwrap())
        .unwrap();
    assert!(
        !decoded
            .windows(secret.len())
            .any(|w| w == secret.as_bytes())
    );

    // The retry with the same key gets the same answer, key included: from Redis, then from
    // PostgreSQL once Redis has forgotten it.
    for from in ["redis", "postgres"] {
        let again = app
            .post("/v1/api-keys", &admin.access, &req, Some(&idem))
            .await;
        assert_eq!(again.status(), 201, "{from}");
        assert_eq!(again.headers()["idempotent-replayed"], "true", "{from}");
        assert_eq!(body(again).await, created, "{from}");
        let _: () = redis.del(&names[0]).await.unwrap();
    }
    assert_eq!(
        app.count("SELECT count(*) FROM api_keys WHERE name = 'Replayable'")
            .await,
        1
    );
}
