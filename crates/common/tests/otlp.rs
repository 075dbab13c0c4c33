//! Traces leave over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set: a request's span, with
//! the caller's W3C trace id, reaches a collector. The collector is a small HTTP server in the
//! test that records what is posted to `/v1/traces` (no OpenTelemetry collector is installed
//! here). Its own test binary, because the tracing subscriber is process-wide.

mod support;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use common::config::{LogFormat, TelemetryConfig};

#[derive(Clone, Default)]
struct Posted(Arc<Mutex<Vec<(String, Bytes)>>>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_are_exported_to_the_otlp_endpoint() {
    // The collector.
    let posted = Posted::default();
    let sink = posted.clone();
    let collector = Router::new().route(
        "/v1/traces",
        post(move |headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                let content_type = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                sink.0.lock().unwrap().push((content_type, body));
                ""
            }
        }),
    );
    let collector_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = collector_listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(collector_listener, collector).await });

    let config = TelemetryConfig {
        log_format: LogFormat::Json,
        log_filter: "info".into(),
        otlp_endpoint: Some(format!("http://{collector_addr}/")),
    };
    let guard = common::telemetry::init_with_writer("otlp-test", &config, std::io::sink).unwrap();

    // The service, with the shared hardening stack (which opens the request span).
    let router = Router::new().route("/v1/things/{id}", get(|| async { "ok" }));
    let (base, token) = support::serve_hardened(router).await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = reqwest::Client::new()
        .get(format!("{base}/v1/things/abc"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Dropping the guard shuts the provider down, which exports what is queued. It blocks, so
    // off the async threads.
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();

    let posted = posted.0.lock().unwrap().clone();
    assert!(!posted.is_empty(), "nothing reached /v1/traces");
    let (content_type, _) = &posted[0];
    assert_eq!(content_type, "application/x-protobuf");
    // The protobuf carries the trace id as 16 raw bytes and the span's attributes as text.
    let raw_trace_id: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let all: Vec<u8> = posted.iter().flat_map(|(_, b)| b.to_vec()).collect();
    assert!(
        all.windows(16).any(|w| w == raw_trace_id.as_slice()),
        "the caller's trace id is in the export"
    );
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.contains("otlp-test"),
        "the service name is the resource"
    );
    assert!(
        text.contains("/v1/things/{id}"),
        "the route template, not the raw path"
    );
    assert!(
        !text.contains("/v1/things/abc"),
        "the raw path stays out of traces"
    );
    token.cancel();
}
