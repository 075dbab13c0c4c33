//! CONTRACT 2.4 on the emulator: body and attributes; buffering while the broker is away; the
//! flush at shutdown.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{EMULATOR, Proxy, TestEnv, expected_ip_hash, free_port, metric, receive};

/// A `User-Agent` with bytes outside ASCII (obs-text, which HTTP allows) is kept, those bytes
/// as replacement characters, rather than published as null.
#[tokio::test]
async fn a_user_agent_with_non_ascii_bytes_is_kept() {
    let env = TestEnv::new().await;
    let mut stream = env.subscribe().await;
    let app = env.spawn(&[]).await;
    let tag = env.tag().await;
    let agent = reqwest::header::HeaderValue::from_bytes(b"Caf\xe9Scanner/1.0").unwrap();
    let r = app
        .client
        .get(app.url(&format!("/v1/scan/{tag}")))
        .header("user-agent", agent)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let got = receive(&mut stream, 1, Duration::from_secs(30)).await;
    assert_eq!(got[0].body["user_agent"], "Caf\u{fffd}Scanner/1.0");
}

#[tokio::test]
async fn each_scan_publishes_the_contract_event() {
    common::in_own_process!();
    let env = TestEnv::new().await;
    let mut stream = env.subscribe().await;
    let app = env.spawn(&[]).await;
    let tag = env.tag().await;
    let (key_id, key) = env.api_key(None).await;

    let r = app
        .client
        .get(app.url(&format!("/v1/scan/{tag}")))
        .header("x-api-key", &key)
        .header("user-agent", "ScannerApp/2.1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .client
        .get(app.url("/v1/scan/NoSuchTag_0123456789"))
        .header("user-agent", "")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Not reaching the look-up: no event.
    assert_eq!(app.scan("bad!").await.status(), StatusCode::BAD_REQUEST);

    let mut got = receive(&mut stream, 2, Duration::from_secs(30)).await;
    got.sort_by_key(|m| m.body["result"].as_str().unwrap().to_owned());
    for m in &got {
        assert_eq!(
            m.attributes.get("event_type").map(String::as_str),
            Some("scan")
        );
        assert_eq!(
            m.attributes.get("schema_version").map(String::as_str),
            Some("1")
        );
        let body = m.body.as_object().unwrap();
        let mut fields: Vec<&str> = body.keys().map(String::as_str).collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "api_key_id",
                "client_ip_hash",
                "event_id",
                "result",
                "scanned_at",
                "tag_id",
                "user_agent"
            ]
        );
        let id: Uuid = body["event_id"].as_str().unwrap().parse().unwrap();
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(body["client_ip_hash"], expected_ip_hash("127.0.0.1"));
        let at = body["scanned_at"].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(at).is_ok(), "{at}");
        assert!(
            at.ends_with('Z') && at.len() == "2026-11-25T10:00:00.123Z".len(),
            "{at}"
        );
    }
    let (authentic, unknown) = (&got[0].body, &got[1].body);
    assert_eq!(authentic["result"], "authentic");
    assert_eq!(authentic["tag_id"], tag);
    assert_eq!(authentic["api_key_id"], key_id.to_string());
    assert_eq!(authentic["user_agent"], "ScannerApp/2.1");
    assert_eq!(unknown["result"], "unknown");
    assert_eq!(unknown["tag_id"], "NoSuchTag_0123456789");
    assert!(unknown["api_key_id"].is_null());

    // The subscriber can see a message before the publisher's acknowledgement comes back and
    // the counter moves, so the counter is polled rather than read once.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let published = metric(&app.metrics().await, "scan_events_published_total");
        if published.is_some_and(|n| n >= 2.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "scan_events_published_total stayed at {published:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The broker is taken away by cutting a TCP proxy in front of the shared emulator: the
/// emulator keeps its topic and subscription, so every event that arrives afterwards must have
/// waited in the service's buffer. (Restarting an emulator would lose the topic, and a message
/// published between re-creating the topic and its subscription would vanish, which proves
/// nothing about us.)
#[tokio::test]
async fn broker_away_scans_still_answer_and_buffered_events_arrive_after() {
    common::in_own_process!();
    let env = TestEnv::new().await;
    let mut stream = env.subscribe().await;
    let mut proxy = Proxy::start(EMULATOR).await.expect("proxy");
    let via_proxy = format!("127.0.0.1:{}", proxy.port);
    let app = env
        .spawn(&[
            ("PUBSUB_EMULATOR_HOST", via_proxy.as_str()),
            ("CIRCUIT_BREAKER_THRESHOLD", "2"),
            ("CIRCUIT_BREAKER_TIMEOUT_SEC", "1"),
        ])
        .await;
    let tag = env.tag().await;

    assert_eq!(app.scan(&tag).await.status(), StatusCode::OK);
    receive(&mut stream, 1, Duration::from_secs(30)).await;

    proxy.down().await;
    let mut tags = Vec::new();
    for _ in 0..3 {
        let t = env.tag().await;
        let started = Instant::now();
        assert_eq!(app.scan(&t).await.status(), StatusCode::OK);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a dead broker slowed a scan"
        );
        tags.push(t);
    }
    // Let the worker fail against the dead broker for a while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = app.metrics().await;
    // All three wait: in the queue, or in the batch the worker holds. (The gauge is read when
    // scraped; set by the worker, it read 1 here, the batch of a publish attempt still running.)
    assert_eq!(
        metric(&metrics, "scan_events_buffered"),
        Some(3.0),
        "the buffered gauge"
    );
    let published_before = metric(&metrics, "scan_events_published_total").unwrap_or(0.0);
    assert_eq!(published_before, 1.0);
    // Scans answer, but the process is not ready: one of its dependencies does not answer.
    let (status, body) = app.readyz().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["failing"], json!(["pubsub"]), "{body}");
    assert_eq!(body["checks"]["pubsub"], "unavailable", "{body}");

    proxy.up().expect("proxy listening again");
    let got = receive(&mut stream, 3, Duration::from_secs(60)).await;
    let mut arrived: Vec<String> = got
        .iter()
        .map(|m| m.body["tag_id"].as_str().unwrap().to_owned())
        .collect();
    arrived.sort();
    tags.sort();
    assert_eq!(arrived, tags);
    assert_eq!(app.events().dropped_total(), 0);
    // Ready again by itself.
    let body = app.ready().await;
    assert_eq!(body["checks"]["pubsub"], "ok", "{body}");
}

#[tokio::test]
async fn shutdown_flushes_queued_events() {
    let env = TestEnv::new().await;
    let mut stream = env.subscribe().await;
    let app = env.spawn(&[]).await;
    let mut tags = Vec::new();
    for _ in 0..5 {
        let t = env.tag().await;
        assert_eq!(app.scan(&t).await.status(), StatusCode::OK);
        tags.push(t);
    }
    app.stop().await;
    let got = receive(&mut stream, 5, Duration::from_secs(30)).await;
    let mut arrived: Vec<String> = got
        .iter()
        .map(|m| m.body["tag_id"].as_str().unwrap().to_owned())
        .collect();
    arrived.sort();
    tags.sort();
    assert_eq!(arrived, tags);
}

#[tokio::test]
async fn starts_and_answers_with_the_broker_unreachable() {
    let env = TestEnv::new().await;
    let dead = format!("127.0.0.1:{}", free_port());
    let app = env.spawn(&[("PUBSUB_EMULATOR_HOST", dead.as_str())]).await;
    let tag = env.tag().await;
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(app.scan(&tag).await.status(), StatusCode::OK);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a dead broker slowed a scan"
        );
    }
    let (status, body) = app.readyz().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["failing"], json!(["pubsub"]), "{body}");
    assert_eq!(body["checks"]["postgres"], "ok", "{body}");
    assert_eq!(body["checks"]["redis"], "ok", "{body}");
}

/// The broker answers, but the topic this instance publishes to does not exist (a deployment
/// that skipped `pubsub setup`): every event would fail, so the instance is not ready.
#[tokio::test]
async fn readyz_names_pubsub_while_the_topic_is_missing() {
    let env = TestEnv::new().await;
    let missing = format!("no-such-topic-{}", Uuid::new_v4().simple());
    let app = env.spawn(&[("SCAN_EVENTS_TOPIC", missing.as_str())]).await;
    let (status, body) = app.readyz().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["failing"], json!(["pubsub"]), "{body}");

    let ready = env.spawn(&[]).await;
    let body = ready.ready().await;
    assert_eq!(
        body["checks"],
        json!({"postgres": "ok", "redis": "ok", "pubsub": "ok"}),
        "{body}"
    );
}

#[tokio::test]
async fn event_and_timing_metrics_are_exported_at_zero_from_the_first_scrape() {
    common::in_own_process!();
    let env = TestEnv::new().await;
    let app = env.spawn(&[]).await;
    let metrics = app.metrics().await;
    for name in [
        "scan_events_published_total",
        "scan_events_dropped_total",
        "scan_events_buffered",
        "scan_timing_overrun_total",
    ] {
        // Present before anything happened (0 under nextest's process per test; another
        // test in the same process may have counted already under plain `cargo test`).
        assert!(metric(&metrics, name).is_some(), "{name} in\n{metrics}");
    }
}
