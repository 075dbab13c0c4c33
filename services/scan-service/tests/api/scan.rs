//! The scan route's answers: known, revoked and unknown tags, API keys, bad input.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Proxy, TestApp, TestEnv, header, metric, shared_redis};

const SECURITY_HEADERS: [(&str, &str); 3] = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("cache-control", "no-store"),
];

#[tokio::test]
async fn known_tag_answers_authentic_with_product_and_counts() {
    let env = TestEnv::new().await;
    let app = env.spawn(&[]).await;
    let tag = env.tag().await;
    sqlx::query("UPDATE tags SET scan_count = 7, first_scanned_at = '2026-11-01T10:00:00Z' WHERE tag_id = $1")
        .bind(&tag)
        .execute(env.pool())
        .await
        .unwrap();
    let r = app.scan(&tag).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(header(&r, "x-request-id").is_some_and(|v| !v.is_empty()));
    for (name, value) in SECURITY_HEADERS {
        assert_eq!(header(&r, name), Some(value), "{name}");
    }
    for name in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ] {
        assert!(header(&r, name).is_some(), "{name} missing");
    }
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        json!({
            "tag_id": tag,
            "status": "authentic",
            "product": {"id": env.product_id, "name": "Gold Watch", "sku": body["product"]["sku"]},
            "batch_id": env.batch_id,
            "scan_count": 7,
            "first_scanned_at": "2026-11-01T10:00:00.000Z",
        })
    );
    assert!(body["product"]["sku"].as_str().unwrap().starts_with("SKU-"));
}

#[tokio::test]
async fn unknown_tag_is_404_with_status_unknown() {
    let env = TestEnv::new().await;
    let app = env.spawn(&[]).await;
    for _ in 0..2 {
        // The second answer comes from the negative cache entry.
        let r = app.scan("NoSuchTag_0123456789").await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert!(header(&r, "x-ratelimit-remaining").is_some());
        assert_eq!(
            r.text().await.unwrap(),
            r#"{"tag_id":"NoSuchTag_0123456789","status":"unknown"}"#,
            "exactly the contract's body, keys in its order"
        );
    }
}

#[tokio::test]
async fn revoked_tag_shows_within_five_seconds() {
    let env = TestEnv::new().await;
    let app = env.spawn(&[]).await;
    let tag = env.tag().await;
    let r = app.scan(&tag).await;
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "authentic");
    revoke(&env, &tag).await;
    answers_revoked_within_five_seconds(&app, &tag, Duration::from_millis(200), "").await;
}

async fn revoke(env: &TestEnv, tag: &str) {
    sqlx::query("UPDATE tags SET status = 'revoked', revoked_at = now() WHERE tag_id = $1")
        .bind(tag)
        .execute(env.pool())
        .await
        .unwrap();
}

/// Scans `tag` every `every` until it answers `revoked`, failing (with `why`) if it still
/// answers `authentic` 5 s after the call.
async fn answers_revoked_within_five_seconds(app: &TestApp, tag: &str, every: Duration, why: &str) {
    let since = Instant::now();
    loop {
        let r = app.scan(tag).await;
        assert_eq!(r.status(), StatusCode::OK);
        if r.json::<Value>().await.unwrap()["status"] == "revoked" {
            return;
        }
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "still authentic after 5 s{why}"
        );
        tokio::time::sleep(every).await;
    }
}

/// A tag scanned all the time is renewed in the in-process cache from the database itself, so
/// its revocation shows even while the Redis tier still holds the old answer. Here the old
/// answer is put back into Redis on purpose, sealed with this deployment's key for an entry's
/// lifetime (as an instance would seal it), again and again: without the renewal, the
/// in-process entry would expire, refill from Redis, and answer `authentic` for as long.
#[tokio::test]
async fn a_tag_scanned_all_the_time_is_renewed_from_the_database_not_from_redis() {
    let env = TestEnv::new().await;
    let app = env.spawn(&[]).await;
    let tag = env.tag().await;
    let r = app.scan(&tag).await;
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "authentic");
    let key = format!("{}:tag:{{{tag}}}", env.prefix);
    let mut redis = shared_redis().await;
    // The service writes its cache entry in the background.
    let deadline = Instant::now() + Duration::from_secs(5);
    let authentic: Vec<u8> = loop {
        let held: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        if let Some(held) = held {
            break held;
        }
        assert!(
            Instant::now() < deadline,
            "the tag never reached the Redis tier"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    revoke(&env, &tag).await;
    // The entry is MAC ‖ expiry (8 bytes) ‖ JSON (scan_service::cache::Seal).
    let json = authentic.get(40..).expect("a sealed entry");
    let json = json.to_vec();
    let put_back = tokio::spawn(async move {
        loop {
            let authentic = sealed(&key, unix_ms() + 2_000, &json);
            let () = redis::cmd("SET")
                .arg(&key)
                .arg(&authentic)
                .arg("PX")
                .arg(2_000)
                .query_async(&mut redis)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    answers_revoked_within_five_seconds(
        &app,
        &tag,
        Duration::from_millis(100),
        ": the stale Redis entry was served",
    )
    .await;
    put_back.abort();
}

/// An entry sealed with this deployment's key by an instance whose clock runs an hour ahead
/// expires an hour later than it should: put back into Redis after its tag was revoked, it
/// answered `authentic` for that hour. It is not believed (`reason="future"`).
#[tokio::test]
async fn an_entry_sealed_by_an_instance_whose_clock_runs_ahead_is_not_believed() {
    let env = TestEnv::new().await;
    let app = env.spawn(&[]).await;
    let tag = env.tag().await;
    revoke(&env, &tag).await;
    let key = format!("{}:tag:{{{tag}}}", env.prefix);
    let authentic = json!({
        "tag_id": tag,
        "status": "authentic",
        "product": {"id": Uuid::new_v4(), "name": "Handbag", "sku": "SKU-1"},
        "batch_id": Uuid::new_v4(),
        "scan_count": 0,
        "first_scanned_at": null,
    });
    let entry = sealed(
        &key,
        unix_ms() + 3_600_000,
        authentic.to_string().as_bytes(),
    );
    let mut redis = shared_redis().await;
    let () = redis::cmd("SET")
        .arg(&key)
        .arg(&entry)
        .arg("PX")
        .arg(60_000)
        .query_async(&mut redis)
        .await
        .unwrap();
    let r = app.scan(&tag).await;
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "revoked");
    let text = app.metrics().await;
    assert_eq!(
        metric(&text, "scan_cache_rejected_total{reason=\"future\"}"),
        Some(1.0),
        "{text}"
    );
}

/// `json` sealed at `key` to expire at `expires_ms`, as an instance of the test deployment
/// would seal it.
fn sealed(key: &str, expires_ms: u64, json: &[u8]) -> Vec<u8> {
    scan_service::cache::Seal::derive(&crate::helpers::IP_HASH_KEY.to_owned().into())
        .seal(key, expires_ms, json)
}

/// Milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// `scan_db_lookups_total{kind}` as last scraped.
async fn db_lookups(app: &TestApp, kind: &str) -> f64 {
    let text = app.metrics().await;
    metric(&text, &format!("scan_db_lookups_total{{kind=\"{kind}\"}}")).unwrap_or(0.0)
}

#[tokio::test]
async fn concurrent_scans_of_an_uncached_tag_and_key_are_one_database_look_up_each() {
    common::in_own_process!();
    let env = TestEnv::new().await;
    let app = env.spawn(&[]).await;
    let tag = env.tag().await;
    let (_, key) = env.api_key(None).await;
    let (tags_before, keys_before) = (
        db_lookups(&app, "tag").await,
        db_lookups(&app, "api_key").await,
    );
    // Neither is in any cache yet: every one of these scans misses both tiers at once.
    let answers = futures::future::join_all((0..32).map(|_| app.scan_with_key(&tag, &key))).await;
    for r in &answers {
        assert_eq!(r.status(), StatusCode::OK);
    }
    assert_eq!(
        db_lookups(&app, "tag").await - tags_before,
        1.0,
        "the tag is read from the database once for all 32 scans"
    );
    assert_eq!(
        db_lookups(&app, "api_key").await - keys_before,
        1.0,
        "the key is read from the database once for all 32 scans"
    );
}

#[tokio::test]
async fn request_id_is_kept_when_sane() {
    let env = TestEnv::new().await;
    let app = env.spawn(&[]).await;
    let r = app
        .client
        .get(app.url("/v1/scan/NoSuchTag_0123456789"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "x-request-id"), Some("abc-123"));
    let r = app
        .client
        .get(app.url("/v1/scan/NoSuchTag_0123456789"))
        .header("x-request-id", "<script>")
        .send()
        .await
        .unwrap();
    assert_ne!(header(&r, "x-request-id"), Some("<script>"));
}

/// `GET path` over a bare connection (for what reqwest will not send); the whole answer.
async fn raw_get(app: &TestApp, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

async fn assert_json_4xx(r: reqwest::Response, expected: StatusCode, code: &str, what: &str) {
    assert_eq!(r.status(), expected, "{what}");
    assert!(
        header(&r, "content-type").is_some_and(|ct| ct.starts_with("application/json")),
        "{what}: not JSON"
    );
    assert_eq!(
        header(&r, "x-content-type-options"),
        Some("nosniff"),
        "{what}"
    );
    let text = r.text().await.unwrap();
    // The contract's shape, keys in its order: `error` first, then `detail`.
    assert!(
        text.starts_with(&format!(r#"{{"error":"{code}","detail":""#)),
        "{what}: {text}"
    );
    let body: Value = serde_json::from_str(&text).unwrap();
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{what}: {body}"
    );
}

#[tokio::test]
async fn malformed_tag_ids_are_400_json() {
    let env = TestEnv::new().await;
    let app = env.spawn(&[]).await;
    let long = "a".repeat(65);
    let huge = "b".repeat(20_000);
    for bad in [
        "short",
        "a234567890abcde",
        long.as_str(),
        huge.as_str(),
        "bad!chars_0123456789",
        "with%20space_0123456789",
        "caf%C3%A9_0123456789abc",
        "nul%00_0123456789abcdef",
        "invalid-utf8-%FF%FE_0123456",
        "dots..0123456789abcdef",
        "%2Fslash_0123456789abcdef",
    ] {
        let r = app.scan(bad).await;
        assert!(
            header(&r, "x-ratelimit-limit").is_some(),
            "{bad}: no rate-limit headers"
        );
        assert_json_4xx(r, StatusCode::BAD_REQUEST, "invalid_tag_id", bad).await;
    }
}

#[tokio::test]
async fn odd_paths_methods_and_headers_are_clear_4xx() {
    let env = TestEnv::new().await;
    let app = env.spawn(&[]).await;
    let tag = env.tag().await;

    let huge_path = format!("/{}", "x/".repeat(8_000));
    for (path, status, code) in [
        ("/v1/scan", StatusCode::NOT_FOUND, "not_found"),
        (huge_path.as_str(), StatusCode::NOT_FOUND, "not_found"),
    ] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_json_4xx(r, status, code, &path[..path.len().min(40)]).await;
    }
    // Over 64 KiB, hyper refuses the URI before the router sees it (and reqwest will not even
    // send it, so this goes over a bare socket): still the contract's JSON error and headers.
    let answer = raw_get(&app, &format!("/v1/scan/{}", "c".repeat(70_000))).await;
    let (head, body) = answer.split_once("\r\n\r\n").expect("a whole answer");
    assert!(head.starts_with("HTTP/1.1 414 "), "{head}");
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert!(head.contains("x-request-id: "), "{head}");
    let body: Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(body["error"], "uri_too_long", "{body}");
    // An empty tag id, or one with a `/` in it, is a malformed tag id: 400, charged like any
    // other scan (so it carries the rate-limit headers).
    for path in [
        "/v1/scan/",
        "/v1/scan/aaaaaaaaaaaaaaaa/extra",
        "/v1/scan/aaaaaaaa/bbbbbbbb",
        "/v1/scan/a/b/c/d/e/f",
        "/v1/scan/aaaaaaaaaaaaaaaa/",
    ] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert!(
            header(&r, "x-ratelimit-limit").is_some(),
            "{path}: no rate-limit headers"
        );
        assert_json_4xx(r, StatusCode::BAD_REQUEST, "invalid_tag_id", path).await;
    }
    let r = app
        .client
        .post(app.url(&format!("/v1/scan/{tag}")))
        .send()
        .await
        .unwrap();
    // Charged like a scan, so it carries the rate-limit headers too.
    assert!(
        header(&r, "x-ratelimit-remaining").is_some(),
        "POST: no rate-limit headers"
    );
    assert_eq!(header(&r, "allow"), Some("GET,HEAD"));
    assert_json_4xx(
        r,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "POST",
    )
    .await;

    // Keys that cannot be keys, and two keys at once: 401, never a 5xx.
    let long_key = "k".repeat(5_000);
    for key in ["", "   ", "vt_short", long_key.as_str()] {
        let r = app.scan_with_key(&tag, key).await;
        assert_json_4xx(r, StatusCode::UNAUTHORIZED, "invalid_api_key", "odd key").await;
    }
    let (_, good) = env.api_key(None).await;
    let r = app
        .client
        .get(app.url(&format!("/v1/scan/{tag}")))
        .header("x-api-key", &good)
        .header("x-api-key", "vt_other")
        .send()
        .await
        .unwrap();
    assert_json_4xx(r, StatusCode::UNAUTHORIZED, "invalid_api_key", "two keys").await;

    // Odd but harmless headers do not change the answer.
    let r = app
        .client
        .get(app.url(&format!("/v1/scan/{tag}")))
        .header(
            "user-agent",
            reqwest::header::HeaderValue::from_bytes(b"\xff\xfe odd agent").unwrap(),
        )
        .header("x-forwarded-for", "not-an-ip, 999.1.1.1")
        .header("x-request-id", "x".repeat(4000))
        .header("x-padding", "p".repeat(16_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn api_key_valid_unknown_and_revoked_within_five_seconds() {
    let env = TestEnv::new().await;
    let app = env.spawn(&[]).await;
    let tag = env.tag().await;
    let (id, key) = env.api_key(None).await;
    assert_eq!(app.scan_with_key(&tag, &key).await.status(), StatusCode::OK);

    let r = app
        .scan_with_key(&tag, "vt_abcdefgh_not-a-real-secret")
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_api_key");

    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1")
        .bind(id)
        .execute(env.pool())
        .await
        .unwrap();
    let revoked_at = Instant::now();
    loop {
        let status = app.scan_with_key(&tag, &key).await.status();
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert_eq!(status, StatusCode::OK);
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "revoked key still accepted after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A bad key was charged to its client's IP only after the database had been asked, so a
/// client sending a new made-up key with every request reached the database every time,
/// however throttled. Bad keys now also spend a budget of the client network's (here 10 a
/// minute and a burst of 100, from IP limits of 1 and 5); once it is spent, further look-ups
/// from that network are refused with 429 without a query. Valid keys never spend it.
#[tokio::test]
async fn made_up_keys_reach_the_database_only_within_a_budget() {
    common::in_own_process!();
    let env = TestEnv::new().await;
    let app = env
        .spawn(&[
            ("RATE_LIMIT_IP_PER_MINUTE", "1"),
            ("RATE_LIMIT_IP_BURST", "5"),
        ])
        .await;
    let tag = env.tag().await;
    let before = db_lookups(&app, "api_key").await;
    // Valid keys, each looked up: none spends the budget.
    for _ in 0..7 {
        let (_, key) = env.api_key(None).await;
        assert_eq!(app.scan_with_key(&tag, &key).await.status(), StatusCode::OK);
    }
    let made_up = || format!("vt_madeup00_{}", Uuid::new_v4().simple());
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for _ in 0..110 {
        let r = app.scan_with_key(&tag, &made_up()).await;
        *statuses.entry(r.status().as_u16()).or_default() += 1;
    }
    // Five within the IP's burst, then the IP bucket refuses; the database was asked for the
    // first 101 (the 101st found the budget spent), not for the other nine.
    assert_eq!(statuses, [(401, 5), (429, 105)].into());
    assert_eq!(
        db_lookups(&app, "api_key").await - before,
        7.0 + 101.0,
        "the last nine did not reach the database"
    );
    let text = app.metrics().await;
    assert_eq!(
        metric(&text, "scan_api_key_lookups_refused_total"),
        Some(9.0)
    );
    // A refusal by the budget: the contract's 429, with the budget's figures.
    let r = app.scan_with_key(&tag, &made_up()).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        header(&r, "x-ratelimit-limit"),
        Some("10"),
        "the budget's rate"
    );
    assert_eq!(header(&r, "x-ratelimit-remaining"), Some("0"));
    let retry: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
    assert!((1..=6).contains(&retry), "a token every 6 s: {retry}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited", "{body}");
}

/// Once a network has spent its bad-key budget, its look-ups stay within the budget's rate
/// however many it has in flight. It paid only after each answer, so every request in flight
/// when a block (a token's time) ended reached the database: bursts of 40 made-up keys, one a
/// second, made about 40 look-ups each instead of the 10 the budget earns in a second (600 a
/// minute, from an IP rate of 60).
#[tokio::test]
async fn a_network_that_spent_its_bad_key_budget_stays_within_its_rate_under_concurrency() {
    common::in_own_process!();
    let env = TestEnv::new().await;
    let app = std::sync::Arc::new(
        env.spawn(&[
            ("RATE_LIMIT_IP_PER_MINUTE", "60"),
            ("RATE_LIMIT_IP_BURST", "5"),
        ])
        .await,
    );
    let tag = env.tag().await;
    let made_up = || format!("vt_madeup00_{}", Uuid::new_v4().simple());
    // The budget's burst of 100, and more until a look-up finds it spent: the budget's own
    // refusal (its rate, 600 a minute, in the headers; the IP bucket's says 60). A slow machine
    // earns tokens back meanwhile, so a fixed count may fall short.
    let mut spent = false;
    for _ in 0..1000 {
        let r = app.scan_with_key(&tag, &made_up()).await;
        if header(&r, "x-ratelimit-limit") == Some("600") && r.status() == 429 {
            spent = true;
            break;
        }
    }
    assert!(spent, "the budget was never spent");
    let before = db_lookups(&app, "api_key").await;
    let started = Instant::now();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let burst: Vec<_> = (0..40)
            .map(|_| {
                let (app, tag, key) = (app.clone(), tag.clone(), made_up());
                tokio::spawn(async move { app.scan_with_key(&tag, &key).await.status() })
            })
            .collect();
        for request in burst {
            request.await.unwrap();
        }
    }
    let looked_up = db_lookups(&app, "api_key").await - before;
    // 10 a second earned meanwhile, and a few more for a slow machine's seconds.
    let earned = started.elapsed().as_secs_f64() * 10.0;
    assert!(
        looked_up <= earned + 5.0,
        "{looked_up} look-ups in {:?} (the budget earns {earned:.0})",
        started.elapsed()
    );
}

/// A busy client's valid key that has just left the caches: its concurrent requests are one
/// database look-up, and the bad-key budget (here the IP burst of 5) refuses none of them.
#[tokio::test]
async fn concurrent_requests_of_an_uncached_valid_key_are_one_look_up_and_never_refused() {
    common::in_own_process!();
    let env = TestEnv::new().await;
    let proxy = Proxy::start("127.0.0.1:5432").await.expect("proxy");
    let app = env
        .spawn(&[
            (
                "DATABASE_READ_URL",
                &env.database_url_via(&format!("127.0.0.1:{}", proxy.port)),
            ),
            ("RATE_LIMIT_IP_PER_MINUTE", "60"),
            ("RATE_LIMIT_IP_BURST", "5"),
            ("RATE_LIMIT_KEY_PER_MINUTE", "600"),
            ("RATE_LIMIT_KEY_BURST", "100"),
        ])
        .await;
    let tag = env.tag().await;
    let (_, key) = env.api_key(None).await;
    let app = std::sync::Arc::new(app);
    // The key's query waits in the proxy, so every request below is waiting for it at once.
    proxy.stall_when_sent(b"api_keys");
    let requests: Vec<_> = (0..150)
        .map(|_| {
            let (app, tag, key) = (app.clone(), tag.clone(), key.clone());
            tokio::spawn(async move { app.scan_with_key(&tag, &key).await.status() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.resume();
    let mut ok = 0;
    for r in requests {
        let status = r.await.unwrap();
        assert!(
            status == StatusCode::OK || status == StatusCode::TOO_MANY_REQUESTS,
            "{status}"
        );
        ok += usize::from(status == StatusCode::OK);
    }
    // The key's own bucket (burst 100) decides.
    assert_eq!(ok, 100);
    let text = app.metrics().await;
    assert_eq!(
        metric(&text, "scan_api_key_lookups_refused_total"),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, "scan_db_lookups_total{kind=\"api_key\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn health_routes_are_never_rate_limited_and_readyz_names_a_dead_dependency() {
    let env = TestEnv::new().await;
    let app = env
        .spawn(&[
            ("RATE_LIMIT_IP_PER_MINUTE", "1"),
            ("RATE_LIMIT_IP_BURST", "1"),
        ])
        .await;
    for _ in 0..5 {
        for path in ["/healthz", "/readyz", "/metrics"] {
            let r = app.client.get(app.url(path)).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            assert!(header(&r, "x-ratelimit-limit").is_none(), "{path}");
        }
    }

    let dead = env.spawn(&[("REDIS_URL", "redis://127.0.0.1:1")]).await;
    let r = dead.client.get(dead.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["failing"], json!(["redis"]));
    assert_eq!(
        dead.client
            .get(dead.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

/// The read replica is unreachable (a closed port: a real refused connection): a key that cannot
/// be checked and a tag that cannot be looked up both answer 503 JSON, and both still carry the
/// rate-limit headers, because the request was charged to its IP before the look-up failed.
#[tokio::test]
async fn a_dead_read_replica_answers_503_with_rate_limit_headers() {
    let env = TestEnv::new().await;
    let tag = env.tag().await;
    let (_, key) = env.api_key(None).await;
    let app = env
        .spawn(&[
            (
                "DATABASE_READ_URL",
                "postgres://postgres@127.0.0.1:1/voketag",
            ),
            ("RATE_LIMIT_IP_PER_MINUTE", "60"),
        ])
        .await;
    for (what, r) in [
        ("unchecked key", app.scan_with_key(&tag, &key).await),
        ("uncached tag", app.scan(&tag).await),
    ] {
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{what}");
        for name in [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ] {
            assert!(header(&r, name).is_some(), "{what}: {name} missing");
        }
        assert_eq!(
            header(&r, "x-ratelimit-limit"),
            Some("60"),
            "{what}: charged to the IP"
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "service_unavailable", "{what}: {body}");
    }
}

/// The app with its read replica reached through a proxy the test controls, and a `postgres`
/// breaker that opens after 2 failures and probes after 1 s.
async fn behind_a_database_proxy(env: &TestEnv) -> (Proxy, TestApp) {
    let proxy = Proxy::start("127.0.0.1:5432").await.expect("proxy");
    let app = env
        .spawn(&[
            (
                "DATABASE_READ_URL",
                &env.database_url_via(&format!("127.0.0.1:{}", proxy.port)),
            ),
            ("CIRCUIT_BREAKER_THRESHOLD", "2"),
            ("CIRCUIT_BREAKER_TIMEOUT_SEC", "1"),
        ])
        .await;
    (proxy, app)
}

/// The read replica goes away while the service runs: after `CIRCUIT_BREAKER_THRESHOLD` failed
/// look-ups its breaker opens, and a scan that needs the database answers 503 at once, without
/// trying (before, each one waited out the pool's connect timeout). Once the database is back,
/// a probe after `CIRCUIT_BREAKER_TIMEOUT_SEC` closes the breaker and scans answer again.
#[tokio::test]
async fn the_database_breaker_opens_on_failed_look_ups_and_closes_when_it_is_back() {
    common::in_own_process!();
    let env = TestEnv::new().await;
    let (mut proxy, app) = behind_a_database_proxy(&env).await;
    let state = "circuit_breaker_state{name=\"postgres\"}";
    let rejections = "circuit_breaker_rejections_total{name=\"postgres\"}";
    let tag = env.tag().await;
    assert_eq!(app.scan(&tag).await.status(), StatusCode::OK);

    proxy.down().await;
    // Unknown ids, so that no cache can answer.
    for i in 0..2 {
        let r = app.scan(&format!("unknown_tag_id_{i:04}")).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(metric(&app.metrics().await, state), Some(1.0), "open");
    let r = app.scan("unknown_tag_id_0002").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(header(&r, "retry-after").is_some());
    assert!(header(&r, "x-ratelimit-limit").is_some());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "service_unavailable");
    assert!(
        metric(&app.metrics().await, rejections).unwrap_or(0.0) >= 1.0,
        "the open breaker answered without trying the database"
    );

    proxy.up().expect("proxy listening again");
    let fresh = env.tag().await;
    app.scan_until_ok(&fresh, "after the database came back")
        .await;
    assert_eq!(metric(&app.metrics().await, state), Some(0.0), "closed");
}

/// The read replica restarts while the pool's connections sit idle (here the proxy cuts them and
/// listens again): the next look-up gets a new connection, not a failure on a dead one. The
/// pool pings only connections idle for a second or more (a ping before every query was a
/// second round trip per look-up); without any ping, this scan was a 503.
#[tokio::test]
async fn connections_cut_while_idle_are_replaced_before_a_look_up_uses_them() {
    let env = TestEnv::new().await;
    let (mut proxy, app) = behind_a_database_proxy(&env).await;
    let tag = env.tag().await;
    assert_eq!(app.scan(&tag).await.status(), StatusCode::OK);
    proxy.down().await;
    proxy.up().expect("proxy listening again");
    tokio::time::sleep(
        scan_service::lookup::PING_IF_IDLE_FOR + std::time::Duration::from_millis(200),
    )
    .await;
    // An unknown id, so that no cache can answer.
    let r = app.scan("unknown_tag_id_after_a_cut").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// The read replica stops answering in the middle of a look-up, without closing anything (a
/// partition: connections stay open, the query gets no reply). The scan fails with 503 after
/// the look-up bound (`lookup::LOOKUP_TIMEOUT`, 1 s), the breaker counts it, and scans answer
/// again by themselves once the replica does. Without the bound (the pool's own timeout covers
/// only getting a connection), every such scan waited for the request timeout (30 s by default)
/// and ended as that layer's 503, which the breaker never saw, so it never opened. The 10 s
/// below is a liveness bound, not a measurement.
#[tokio::test]
async fn a_read_replica_that_stops_answering_costs_a_bounded_wait_not_a_hang() {
    common::in_own_process!();
    let env = TestEnv::new().await;
    let (proxy, app) = behind_a_database_proxy(&env).await;
    let tag = env.tag().await;
    // The pool now holds a live connection through the proxy.
    assert_eq!(app.scan(&tag).await.status(), StatusCode::OK);

    // The look-up of an id starting so stalls the proxy as it goes through, after the pool has
    // handed out (and pinged) the connection.
    proxy.stall_when_sent(b"stalled_replica_");
    for i in 0..2 {
        // Unknown ids, so that no cache can answer.
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            app.scan(&format!("stalled_replica_{i:04}")),
        )
        .await
        .expect("no answer within 10 s: the scan waits on the stalled database");
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(header(&r, "retry-after").is_some());
        assert!(header(&r, "x-ratelimit-limit").is_some());
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "service_unavailable", "{body}");
    }
    assert_eq!(
        metric(
            &app.metrics().await,
            "circuit_breaker_state{name=\"postgres\"}"
        ),
        Some(1.0),
        "two timed-out look-ups opened the breaker"
    );

    proxy.resume();
    let fresh = env.tag().await;
    app.scan_until_ok(&fresh, "after the database answered again")
        .await;
}

/// An address already in use stops start-up before anything connects: here Redis is a listener
/// of the test's own, which must see no connection.
#[tokio::test]
async fn an_address_in_use_stops_start_up_before_redis_is_touched() {
    let env = TestEnv::new().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let redis = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    redis.set_nonblocking(true).unwrap();
    let mut vars = env.env.clone();
    for (k, v) in [
        ("BIND_ADDR", taken.local_addr().unwrap().to_string()),
        (
            "REDIS_URL",
            format!("redis://{}", redis.local_addr().unwrap()),
        ),
    ] {
        vars = vars.with(k, &v);
    }
    let config = scan_service::ScanConfig::from_env(&vars).unwrap();
    let Err(e) = scan_service::Application::build(config).await else {
        panic!("started on an address in use");
    };
    assert!(format!("{e:#}").starts_with("binding 127.0.0.1:"), "{e:#}");
    let touched = redis.accept();
    assert!(
        matches!(&touched, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "Redis was connected to: {touched:?}"
    );
}

/// HEAD on the scan route is a scan (axum answers it as the GET without the body): it costs a
/// token like any scan. A HEAD that cost nothing would tell for free which tags exist.
#[tokio::test]
async fn head_is_a_scan_and_costs_a_token() {
    let env = TestEnv::new().await;
    let app = env
        .spawn(&[
            ("RATE_LIMIT_IP_PER_MINUTE", "60"),
            ("RATE_LIMIT_IP_BURST", "20"),
        ])
        .await;
    let tag = env.tag().await;
    let head = app
        .client
        .head(app.url(&format!("/v1/scan/{tag}")))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(&head, "x-ratelimit-remaining"), Some("19"));
    assert_eq!(head.bytes().await.expect("body").len(), 0);
    let unknown = app
        .client
        .head(app.url("/v1/scan/unknown_tag_0123456789"))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(header(&unknown, "x-ratelimit-remaining"), Some("18"));
    let get = app.scan(&tag).await;
    assert_eq!(header(&get, "x-ratelimit-remaining"), Some("17"));
}

/// Whoever can write to Redis but does not hold `IP_HASH_KEY` cannot make a tag that was never
/// issued answer `authentic`, nor have a made-up API key accepted: cache entries are sealed,
/// and one that does not open is a miss (counted), answered from PostgreSQL. Before, the
/// service believed any JSON it found at the key, for as long as Redis kept it.
#[tokio::test]
async fn entries_put_in_redis_by_someone_else_are_not_believed() {
    use sha2::{Digest as _, Sha256};

    let env = TestEnv::new().await;
    let app = env.spawn(&[]).await;
    let mut redis = shared_redis().await;
    let never_issued = format!("COUNTERFEIT{}", Uuid::new_v4().simple());
    let forged_tag = json!({
        "tag_id": never_issued,
        "status": "authentic",
        "product": {"id": Uuid::new_v4(), "name": "Handbag", "sku": "FAKE-1"},
        "batch_id": Uuid::new_v4(),
        "scan_count": 0,
        "first_scanned_at": null,
    });
    let made_up_key = format!("vt_{}", Uuid::new_v4().simple());
    let key_hash = hex::encode(Sha256::digest(made_up_key.as_bytes()));
    let forged_key = json!({"id": Uuid::new_v4(), "rate_limit_per_minute": 1_000_000});
    for (key, value) in [
        (format!("{}:tag:{{{never_issued}}}", env.prefix), forged_tag),
        (format!("{}:apikey:{{{key_hash}}}", env.prefix), forged_key),
    ] {
        let () = redis::cmd("SET")
            .arg(key)
            .arg(value.to_string())
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    let r = app.scan(&never_issued).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "unknown");
    let tag = env.tag().await;
    let r = app.scan_with_key(&tag, &made_up_key).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_api_key");
    let text = app.metrics().await;
    assert_eq!(
        metric(&text, "scan_cache_rejected_total{reason=\"forged\"}"),
        Some(2.0),
        "{text}"
    );
}
