//! Redis unusable (down, or slower than `REDIS_TIMEOUT_MS`) in both `RATE_LIMIT_FAIL_CLOSED`
//! modes, and the breaker opening after the threshold and closing after a healthy probe.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{OwnRedis, Proxy, TestEnv, black_hole, header, metric};

/// Nobody listens on port 1.
const DEAD_REDIS: &str = "redis://127.0.0.1:1";

async fn assert_fail_closed(r: reqwest::Response) {
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry_after: u64 = header(&r, "retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    // Like every scan answer, it carries the rate-limit headers: the caller's limit, and
    // nothing to spend until the limiter is back.
    let limit: u64 = header(&r, "x-ratelimit-limit")
        .expect("X-RateLimit-Limit")
        .parse()
        .unwrap();
    assert!(limit > 0);
    assert_eq!(header(&r, "x-ratelimit-remaining"), Some("0"));
    let reset: u64 = header(&r, "x-ratelimit-reset")
        .expect("X-RateLimit-Reset")
        .parse()
        .unwrap();
    let now = chrono::Utc::now().timestamp() as u64;
    assert!(
        (now..=now + retry_after + 1).contains(&reset),
        "reset {reset} at {now}"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "service_unavailable");
    assert!(body["detail"].is_string());
}

#[tokio::test]
async fn redis_down_fail_closed_answers_503_with_retry_after() {
    common::in_own_process!();
    let env = TestEnv::new().await;
    let app = env
        .spawn(&[
            ("REDIS_URL", DEAD_REDIS),
            ("RATE_LIMIT_FAIL_CLOSED", "true"),
        ])
        .await;
    let tag = env.tag().await;
    for _ in 0..3 {
        assert_fail_closed(app.scan(&tag).await).await;
    }
    let metrics = app.metrics().await;
    assert!(
        metric(
            &metrics,
            "rate_limit_decisions_total{outcome=\"fail_closed\"}"
        )
        .unwrap()
            >= 3.0
    );
}

#[tokio::test]
async fn redis_down_fail_open_falls_back_to_a_local_bucket_with_the_same_limits() {
    common::in_own_process!();
    let env = TestEnv::new().await;
    let app = env
        .spawn(&[
            ("REDIS_URL", DEAD_REDIS),
            ("RATE_LIMIT_FAIL_CLOSED", "false"),
            ("RATE_LIMIT_IP_PER_MINUTE", "60"),
            ("RATE_LIMIT_IP_BURST", "3"),
        ])
        .await;
    let tag = env.tag().await;
    for i in 0..3 {
        let r = app.scan(&tag).await;
        assert_eq!(r.status(), StatusCode::OK, "request {i}");
        assert_eq!(header(&r, "x-ratelimit-limit"), Some("60"));
        assert_eq!(
            header(&r, "x-ratelimit-remaining"),
            Some((2 - i).to_string().as_str())
        );
    }
    let r = app.scan(&tag).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&r, "retry-after"), Some("1"));
    let metrics = app.metrics().await;
    assert!(metric(&metrics, "rate_limit_decisions_total{outcome=\"fallback\"}").unwrap() >= 4.0);
}

#[tokio::test]
async fn redis_slower_than_the_timeout_follows_each_fail_mode_quickly() {
    let env = TestEnv::new().await;
    let (hang, _server) = black_hole().await;
    let url = format!("redis://{hang}");
    let tag = env.tag().await;
    for fail_closed in [true, false] {
        let app = env
            .spawn(&[
                ("REDIS_URL", url.as_str()),
                ("REDIS_TIMEOUT_MS", "50"),
                (
                    "RATE_LIMIT_FAIL_CLOSED",
                    if fail_closed { "true" } else { "false" },
                ),
            ])
            .await;
        for _ in 0..3 {
            let started = Instant::now();
            let r = app.scan(&tag).await;
            // Bounded by the 50 ms timeout (twice at most: the tag cache read is bounded too),
            // with a generous allowance for a busy machine.
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "took {:?}",
                started.elapsed()
            );
            if fail_closed {
                assert_fail_closed(r).await;
            } else {
                assert_eq!(r.status(), StatusCode::OK);
                assert!(header(&r, "x-ratelimit-remaining").is_some());
            }
        }
        app.stop().await;
    }
}

#[tokio::test]
async fn breaker_opens_after_the_threshold_and_closes_after_a_healthy_probe() {
    common::in_own_process!();
    let env = TestEnv::new().await;
    let mut redis = OwnRedis::start().await;
    let app = env
        .spawn(&[
            ("REDIS_URL", redis.url().as_str()),
            ("RATE_LIMIT_FAIL_CLOSED", "true"),
            ("CIRCUIT_BREAKER_THRESHOLD", "3"),
            ("CIRCUIT_BREAKER_TIMEOUT_SEC", "1"),
        ])
        .await;
    let tag = env.tag().await;
    let state = "circuit_breaker_state{name=\"redis-ratelimit\"}";
    let rejections = "circuit_breaker_rejections_total{name=\"redis-ratelimit\"}";

    assert_eq!(app.scan(&tag).await.status(), StatusCode::OK);
    assert_eq!(metric(&app.metrics().await, state), Some(0.0));

    redis.down();
    for _ in 0..3 {
        assert_fail_closed(app.scan(&tag).await).await;
    }
    let metrics = app.metrics().await;
    assert_eq!(metric(&metrics, state), Some(1.0), "open after 3 failures");
    // Open: refused without trying Redis.
    let before = metric(&metrics, rejections).unwrap_or(0.0);
    assert_fail_closed(app.scan(&tag).await).await;
    assert_eq!(metric(&app.metrics().await, rejections), Some(before + 1.0));

    redis.up().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The first call after the open timeout is the probe; Redis answers, so it closes.
    assert_eq!(app.scan(&tag).await.status(), StatusCode::OK);
    assert_eq!(metric(&app.metrics().await, state), Some(0.0));
    assert_eq!(app.scan(&tag).await.status(), StatusCode::OK);
}

/// A real Redis that turns slow after the service connected: `CLIENT PAUSE` holds every
/// command on the established connections, so the call (not the connection set-up) must time
/// out. A Redis of the test's own, since pausing the shared one would slow every other test.
#[tokio::test]
async fn established_connection_to_a_paused_redis_times_out_in_both_modes() {
    let env = TestEnv::new().await;
    let redis = OwnRedis::start().await;
    let tag = env.tag().await;
    for fail_closed in [true, false] {
        let app = env
            .spawn(&[
                ("REDIS_URL", redis.url().as_str()),
                ("REDIS_TIMEOUT_MS", "50"),
                (
                    "RATE_LIMIT_FAIL_CLOSED",
                    if fail_closed { "true" } else { "false" },
                ),
            ])
            .await;
        assert_eq!(app.scan(&tag).await.status(), StatusCode::OK);

        let mut admin = redis::Client::open(redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(1500)
            .arg("ALL")
            .query_async::<()>(&mut admin)
            .await
            .unwrap();
        let started = Instant::now();
        let r = app.scan(&tag).await;
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "waited for the paused Redis: {:?}",
            started.elapsed()
        );
        if fail_closed {
            assert_fail_closed(r).await;
        } else {
            assert_eq!(r.status(), StatusCode::OK);
        }
        // After the pause, Redis decides again.
        tokio::time::sleep(Duration::from_millis(1600)).await;
        let r = app.scan(&tag).await;
        assert_eq!(r.status(), StatusCode::OK);
        app.stop().await;
    }
}

/// `/readyz` asks whether Redis answers within the readiness bound (2 s), not within a scan's
/// `REDIS_TIMEOUT_MS`: a Redis that is slow to answer (as on a saturated machine) is still
/// there, and taking the instance out of rotation would only move its load. The shared Redis,
/// behind a proxy of the test's own that holds what the service sends for 300 ms: first a
/// `PING` on the open connection, then, once that connection was cut, the handshake of the
/// connection the probe has to open again.
#[tokio::test]
async fn readyz_counts_a_slow_redis_answer_as_an_answer() {
    let env = TestEnv::new().await;
    let mut proxy = Proxy::start("127.0.0.1:6379").await.expect("proxy");
    let url = format!("redis://127.0.0.1:{}", proxy.port);
    let app = env
        .spawn(&[("REDIS_URL", url.as_str()), ("REDIS_TIMEOUT_MS", "50")])
        .await;
    app.ready().await;

    for (what, held) in [
        ("an answer", &b"PING"[..]),
        ("a reconnect", &b"SETINFO"[..]),
    ] {
        if what == "a reconnect" {
            // Cut the service's connection; a probe while nothing listens finds it gone.
            proxy.down().await;
            let (status, _) = app.readyz().await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            proxy.up().expect("proxy listening again");
        }
        proxy.stall_when_sent(held);
        let started = Instant::now();
        let (status, body) = tokio::join!(app.readyz(), async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            proxy.resume();
        })
        .0;
        assert_eq!(status, StatusCode::OK, "{what} held: {body}");
        assert_eq!(body["checks"]["redis"], "ok", "{what} held: {body}");
        // And it was held, past the 50 ms a scan's call may wait (else this shows nothing).
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "{what} was not held: {:?}",
            started.elapsed()
        );
    }
    app.stop().await;
}
