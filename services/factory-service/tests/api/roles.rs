//! Roles per route group: admin everything, operator the catalog, viewer reads only; no token
//! is 401 everywhere.

use factory_service::users::Role;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{TestApp, assert_error, body, spawn_app};

/// Seeds a product, a batch and a tag with an admin; returns (product, batch, tag).
async fn seed(app: &TestApp) -> (String, String, String) {
    let admin = app.signed_in(Role::Admin).await;
    let product = app.product(&admin.access).await;
    let r = app
        .post(
            "/v1/batches",
            &admin.access,
            &json!({"product_id": product, "quantity": 2}),
            None,
        )
        .await;
    let batch = body(r).await["id"].as_str().unwrap().to_owned();
    let tag: String = sqlx::query_scalar("SELECT tag_id FROM tags LIMIT 1")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    (product, batch, tag)
}

/// Status of each route group for `token`.
async fn statuses(
    app: &TestApp,
    token: Option<&str>,
    product: &str,
    batch: &str,
    tag: &str,
) -> Vec<(String, StatusCode)> {
    let sku = uuid::Uuid::new_v4().to_string();
    let calls: Vec<(Method, String, Option<serde_json::Value>)> = vec![
        (Method::GET, format!("/v1/products/{product}"), None),
        (Method::GET, format!("/v1/batches/{batch}/tags"), None),
        (Method::GET, format!("/v1/tags/{tag}"), None),
        (
            Method::POST,
            "/v1/products".into(),
            Some(json!({"name": "n", "sku": sku})),
        ),
        (
            Method::POST,
            "/v1/batches".into(),
            Some(json!({"product_id": product, "quantity": 1})),
        ),
        (
            Method::POST,
            format!("/v1/tags/{tag}/revoke"),
            Some(json!({"reason": "lost"})),
        ),
        (Method::GET, "/v1/api-keys".into(), None),
        (
            Method::POST,
            "/v1/api-keys".into(),
            Some(json!({"name": "k"})),
        ),
        (
            Method::DELETE,
            format!("/v1/api-keys/{}", uuid::Uuid::new_v4()),
            None,
        ),
    ];
    let mut out = Vec::new();
    for (method, path, json) in calls {
        let mut b = app.req(method.clone(), &path, token);
        if let Some(j) = json {
            b = b.json(&j);
        }
        let r = b.send().await.unwrap();
        out.push((format!("{method} {path}"), r.status()));
    }
    out
}

fn codes(s: &[(String, StatusCode)]) -> Vec<u16> {
    s.iter().map(|(_, c)| c.as_u16()).collect()
}

#[tokio::test]
async fn viewer_reads_but_cannot_change_anything() {
    let app = spawn_app().await;
    let (p, b, t) = seed(&app).await;
    let viewer = app.signed_in(Role::Viewer).await;
    let got = statuses(&app, Some(&viewer.access), &p, &b, &t).await;
    assert_eq!(
        codes(&got),
        [200, 200, 200, 403, 403, 403, 403, 403, 403],
        "{got:?}"
    );
    let r = app
        .post(
            "/v1/products",
            &viewer.access,
            &json!({"name": "n", "sku": "s"}),
            None,
        )
        .await;
    assert_error(r, 403, "forbidden").await;
}

#[tokio::test]
async fn operator_manages_the_catalog_but_not_api_keys() {
    let app = spawn_app().await;
    let (p, b, t) = seed(&app).await;
    let operator = app.signed_in(Role::Operator).await;
    let got = statuses(&app, Some(&operator.access), &p, &b, &t).await;
    assert_eq!(
        codes(&got),
        [200, 200, 200, 201, 201, 200, 403, 403, 403],
        "{got:?}"
    );
}

#[tokio::test]
async fn admin_may_do_everything() {
    let app = spawn_app().await;
    let (p, b, t) = seed(&app).await;
    let admin = app.signed_in(Role::Admin).await;
    let got = statuses(&app, Some(&admin.access), &p, &b, &t).await;
    // The DELETE names a key that does not exist: allowed, then not found.
    assert_eq!(
        codes(&got),
        [200, 200, 200, 201, 201, 200, 200, 201, 404],
        "{got:?}"
    );
}

#[tokio::test]
async fn no_token_is_401_on_every_group() {
    let app = spawn_app().await;
    let (p, b, t) = seed(&app).await;
    let got = statuses(&app, None, &p, &b, &t).await;
    assert!(
        got.iter().all(|(_, c)| *c == StatusCode::UNAUTHORIZED),
        "{got:?}"
    );
    let r = app
        .req(Method::GET, "/v1/api-keys", None)
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;
}
