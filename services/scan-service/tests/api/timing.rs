//! CONTRACT 2.3: the floor holds for 200, 400, 401 and 404; 429 leaves at once; the jitter
//! spans its range. Floors only, and generous ceilings: the machine running tests is noisy.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::helpers::TestEnv;

#[tokio::test]
async fn floor_holds_for_every_normalized_status_and_429_is_fast() {
    let env = TestEnv::new().await;
    let app = env
        .spawn(&[
            ("SCAN_MIN_RESPONSE_MS", "500"),
            ("SCAN_JITTER_MS", "50"),
            ("RATE_LIMIT_IP_PER_MINUTE", "1"),
            ("RATE_LIMIT_IP_BURST", "5"),
        ])
        .await;
    let tag = env.tag().await;
    let floor = Duration::from_millis(450);
    let cases: [(&str, Option<&str>, StatusCode); 5] = [
        (tag.as_str(), None, StatusCode::OK),
        (tag.as_str(), None, StatusCode::OK), // from the cache this time
        ("bad!", None, StatusCode::BAD_REQUEST),
        (
            tag.as_str(),
            Some("vt_abcdefgh_wrong"),
            StatusCode::UNAUTHORIZED,
        ),
        ("NoSuchTag_0123456789", None, StatusCode::NOT_FOUND),
    ];
    for (tag_id, key, status) in cases {
        let started = Instant::now();
        let r = match key {
            Some(key) => app.scan_with_key(tag_id, key).await,
            None => app.scan(tag_id).await,
        };
        let took = started.elapsed();
        assert_eq!(r.status(), status);
        assert!(
            took >= floor,
            "{status} answered in {took:?}, under the floor"
        );
    }
    // The bucket of 5 is spent: the refusal is not held.
    let started = Instant::now();
    let r = app.scan(&tag).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        started.elapsed() < floor,
        "429 held for {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn jitter_spans_its_range() {
    let env = TestEnv::new().await;
    let app = env
        .spawn(&[("SCAN_MIN_RESPONSE_MS", "100"), ("SCAN_JITTER_MS", "50")])
        .await;
    let mut times = Vec::new();
    for _ in 0..40 {
        let started = Instant::now();
        let r = app.scan("NoSuchTag_0123456789").await;
        times.push(started.elapsed());
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    let min = *times.iter().min().unwrap();
    let max = *times.iter().max().unwrap();
    assert!(
        min >= Duration::from_millis(50),
        "under the lowest release time: {min:?}"
    );
    // Uniform over 100 ± 50 ms: some answers come before the nominal floor, some well after.
    assert!(
        min < Duration::from_millis(100),
        "no negative jitter seen: {min:?}"
    );
    assert!(
        max > Duration::from_millis(120),
        "no positive jitter seen: {max:?}"
    );
    assert!(
        max - min >= Duration::from_millis(40),
        "spread {:?}",
        max - min
    );
}

#[tokio::test]
async fn work_longer_than_the_target_is_counted_as_an_overrun() {
    common::in_own_process!();
    let env = TestEnv::new().await;
    // A 1 ms target: the first scan opens the database connection, which takes longer.
    let app = env
        .spawn(&[("SCAN_MIN_RESPONSE_MS", "1"), ("SCAN_JITTER_MS", "0")])
        .await;
    let tag = env.tag().await;
    assert_eq!(app.scan(&tag).await.status(), StatusCode::OK);
    let metrics = app.metrics().await;
    let overruns = crate::helpers::metric(&metrics, "scan_timing_overrun_total").unwrap_or(0.0);
    assert!(overruns >= 1.0, "no overrun counted:\n{metrics}");
}
