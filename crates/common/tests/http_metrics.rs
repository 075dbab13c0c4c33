//! `http_requests_total` and `http_request_duration_seconds` from the hardening stack, read back
//! from the process's Prometheus recorder. Its own test binary: the recorder is process-wide.

mod support;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;

/// The value of the series of `name` whose label set contains every one of `labels`.
fn series(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn requests_are_counted_per_route_method_and_status() {
    let handle = common::telemetry::prometheus();
    let app = Router::new()
        .route(
            "/things/{id}",
            get(|| async { "ok" }).post(|| async { StatusCode::CREATED }),
        )
        .route("/broken", get(|| async { StatusCode::SERVICE_UNAVAILABLE }))
        .route(
            "/panics",
            get(|| async {
                if true {
                    panic!("a handler bug");
                }
                "unreachable"
            }),
        );
    let (base, stop) = support::serve_hardened(app).await;
    let client = reqwest::Client::new();
    for (method, path, times) in [
        ("GET", "/things/a", 3),
        ("GET", "/things/b", 2),
        ("POST", "/things/c", 4),
        ("GET", "/broken", 2),
        ("GET", "/nowhere", 1),
        ("GET", "/panics", 1),
    ] {
        for _ in 0..times {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            client
                .request(method, format!("{base}{path}"))
                .send()
                .await
                .unwrap();
        }
    }
    let text = handle.render();
    let count = |labels: &[&str]| series(&text, "http_requests_total", labels);
    // The route template, never the raw path (which may hold ids).
    assert_eq!(
        count(&[
            r#"route="/things/{id}""#,
            r#"method="GET""#,
            r#"status="200""#
        ]),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        count(&[
            r#"route="/things/{id}""#,
            r#"method="POST""#,
            r#"status="201""#
        ]),
        Some(4.0)
    );
    assert_eq!(count(&[r#"route="/broken""#, r#"status="503""#]), Some(2.0));
    // A panic's 500 counts against availability like any other.
    assert_eq!(count(&[r#"route="/panics""#, r#"status="500""#]), Some(1.0));
    assert_eq!(
        count(&[r#"route="unmatched""#, r#"status="404""#]),
        Some(1.0)
    );
    assert!(
        !text.contains("/things/a"),
        "a raw path leaked into a label"
    );
    let durations = |method: &str| {
        series(
            &text,
            "http_request_duration_seconds_count",
            &[r#"route="/things/{id}""#, &format!(r#"method="{method}""#)],
        )
    };
    assert_eq!(durations("GET"), Some(5.0));
    assert_eq!(durations("POST"), Some(4.0));
    stop.cancel();
}

#[tokio::test]
async fn methods_outside_the_standard_set_share_one_label() {
    let handle = common::telemetry::prometheus();
    let app = Router::new().route("/odd", axum::routing::any(|| async { "ok" }));
    let (base, stop) = support::serve_hardened(app).await;
    let client = reqwest::Client::new();
    for i in 0..20 {
        let method = reqwest::Method::from_bytes(format!("PROBE{i}").as_bytes()).unwrap();
        let response = client
            .request(method, format!("{base}/odd"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    client.get(format!("{base}/odd")).send().await.unwrap();

    // Every invented method would otherwise be a series of its own, on every scrape, forever.
    let text = handle.render();
    assert!(!text.contains("PROBE"), "a client's method became a label");
    let count = |method: &str| {
        series(
            &text,
            "http_requests_total",
            &[r#"route="/odd""#, &format!(r#"method="{method}""#)],
        )
    };
    assert_eq!(count("_OTHER"), Some(20.0), "{text}");
    assert_eq!(count("GET"), Some(1.0));
    stop.cancel();
}
