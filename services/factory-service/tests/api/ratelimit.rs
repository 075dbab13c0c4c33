//! The per-client token bucket on the admin API: 25 rapid requests, 20 pass; health exempt.

use factory_service::users::Role;
use futures::future::join_all;
use reqwest::Method;

use crate::helpers::{body, spawn_app_with};

#[tokio::test]
async fn twenty_five_rapid_requests_twenty_pass() {
    // Burst 20 (the default); a refill of 1/s keeps the count exact however slow the machine.
    let app = spawn_app_with(|env| {
        env.with("ADMIN_RATE_LIMIT_BURST", "20")
            .with("ADMIN_RATE_LIMIT_RPS", "1")
    })
    .await;
    let admin = app.signed_in(Role::Admin).await;
    let first = app.get("/v1/api-keys", &admin.access).await;
    assert_eq!(first.headers()["x-ratelimit-limit"], "60");
    assert_eq!(first.headers()["x-ratelimit-remaining"], "19");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await; // the token comes back
    let started = std::time::Instant::now();
    let responses = join_all((0..25).map(|_| app.get("/v1/api-keys", &admin.access))).await;
    // With a refill of 1/s, exactly 20 pass unless the machine needed over a second for 25
    // local requests (then one more token may have come back meanwhile).
    let refilled = started.elapsed().as_secs() as usize;
    let passed = responses.iter().filter(|r| r.status() == 200).count();
    let limited: Vec<_> = responses
        .into_iter()
        .filter(|r| r.status() == 429)
        .collect();
    assert!((20..=20 + refilled).contains(&passed), "{passed} passed");
    assert_eq!(passed + limited.len(), 25);
    let r = limited.into_iter().next().unwrap();
    assert_eq!(r.headers()["x-ratelimit-limit"], "60");
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    assert!(r.headers().contains_key("x-ratelimit-reset"));
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let b = body(r).await;
    assert_eq!(b["error"], "rate_limited");
    assert_eq!(b["retry_after"], retry_after);
    assert_eq!(
        b["detail"],
        format!("Rate limit exceeded. Try again in {retry_after} seconds")
    );

    // Another client (by token subject) has its own bucket.
    let other = app.signed_in(Role::Viewer).await;
    assert_eq!(app.get("/v1/api-keys", &other.access).await.status(), 403);
}

#[tokio::test]
async fn health_and_metrics_are_never_limited() {
    let app = spawn_app_with(|env| {
        env.with("ADMIN_RATE_LIMIT_BURST", "1")
            .with("ADMIN_RATE_LIMIT_RPS", "1")
    })
    .await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        for _ in 0..5 {
            let r = app.req(Method::GET, path, None).send().await.unwrap();
            assert_ne!(r.status(), 429, "{path}");
            assert!(r.headers().get("x-ratelimit-limit").is_none());
        }
    }
    // The API itself is limited by client IP when no token is sent.
    let first = app
        .req(Method::GET, "/openapi.json", None)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let second = app
        .req(Method::GET, "/openapi.json", None)
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 429);
}
