//! Logs: JSON lines carrying the request id and the caller's W3C trace id. Its own test binary,
//! because the tracing subscriber is process-wide.

mod support;

use axum::Router;
use axum::routing::get;
use common::config::{LogFormat, TelemetryConfig};
use support::LogBuffer;

#[tokio::test]
async fn every_log_line_of_a_request_carries_its_request_id_and_trace_id() {
    let logs = LogBuffer::default();
    let config = TelemetryConfig {
        log_format: LogFormat::Json,
        log_filter: "info".into(),
        otlp_endpoint: None,
    };
    let _guard = common::telemetry::init_with_writer("test", &config, logs.clone()).unwrap();

    let router = Router::new().route(
        "/v1/things/{id}",
        get(|| async {
            tracing::info!(secret_free = true, "inside handler");
            "ok"
        }),
    );
    let (base, token) = support::serve_hardened(router).await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = reqwest::Client::new()
        .get(format!("{base}/v1/things/SECRET-TAG-ID-123456"))
        .header("x-request-id", "rid-42")
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .header("authorization", "Bearer super-secret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    token.cancel();

    let text = logs.text();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let handler_line = lines
        .iter()
        .find(|l| l["message"] == "inside handler")
        .unwrap_or_else(|| panic!("no handler line in {text}"));
    assert_eq!(
        handler_line["span"]["request_id"], "rid-42",
        "{handler_line}"
    );
    assert_eq!(handler_line["span"]["trace_id"], trace_id, "{handler_line}");
    assert_eq!(
        handler_line["span"]["route"], "/v1/things/{id}",
        "route template, not the raw path"
    );
    let access_line = lines
        .iter()
        .find(|l| l["message"].as_str().is_some_and(|m| m.contains("-> 200")))
        .unwrap_or_else(|| panic!("no access line in {text}"));
    assert_eq!(access_line["span"]["request_id"], "rid-42");
    assert!(
        !text.contains("SECRET-TAG-ID-123456"),
        "raw path leaked into logs: {text}"
    );
    assert!(
        !text.contains("super-secret-token"),
        "credential leaked into logs"
    );
}

#[tokio::test]
async fn an_invalid_rust_log_is_one_configuration_line_naming_it() {
    let config = TelemetryConfig {
        log_format: LogFormat::Json,
        log_filter: "info,,,=".into(),
        otlp_endpoint: None,
    };
    // Refused before anything is installed, so the other test's subscriber is not disturbed.
    let Err(e) = common::telemetry::init_with_writer("test", &config, std::io::sink) else {
        panic!("an invalid filter was accepted");
    };
    let line = format!("{e:#}");
    assert!(
        line.starts_with("invalid configuration: RUST_LOG=\"info,,,=\": not a valid filter"),
        "{line}"
    );
    assert!(line.contains("expected"), "{line}");
    assert!(!line.contains('\n'), "{line}");
}
