//! An OTLP endpoint that does not answer is reported, not silent: the first failed export is a
//! warning (without the endpoint, which may carry credentials), counted in
//! `otlp_export_failures_total`; further failures stay quiet, and a line says when traces get
//! through again. The endpoint is a real closed port, then a small collector started on it. Its
//! own test binary, because the tracing subscriber is process-wide.

mod support;

use std::sync::Arc;

use axum::Router;
use axum::routing::post;
use common::config::{LogFormat, TelemetryConfig};
use common::telemetry::TelemetryGuard;
use support::LogBuffer;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Records a span and exports it now; whether the export went through.
async fn export_a_span(guard: &Arc<TelemetryGuard>) -> Result<bool, tokio::task::JoinError> {
    tracing::info_span!("some_work").in_scope(|| {});
    let guard = Arc::clone(guard);
    // Flushing blocks until the exporter is done, retries included.
    tokio::task::spawn_blocking(move || guard.flush().is_ok()).await
}

const WARNING: &str = "traces are not reaching the OTLP endpoint";
const BACK: &str = "traces reach the OTLP endpoint again";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_otlp_endpoint_is_warned_about_counted_and_its_return_noted() -> TestResult {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let endpoint = format!("127.0.0.1:{port}");
    let logs = LogBuffer::default();
    let config = TelemetryConfig {
        log_format: LogFormat::Json,
        log_filter: "info".into(),
        otlp_endpoint: Some(format!("http://{endpoint}")),
    };
    let metrics = common::telemetry::prometheus();
    let guard = Arc::new(common::telemetry::init_with_writer(
        "otlp-unreachable-test",
        &config,
        logs.clone(),
    )?);

    // The counter is there before any failure, so that the first one is an increase.
    let scraped = metrics.render();
    assert!(
        scraped.contains("otlp_export_failures_total 0"),
        "{scraped}"
    );

    // Nothing listens: the export fails, and says so once.
    assert!(!export_a_span(&guard).await?, "the export should fail");
    assert!(!export_a_span(&guard).await?, "the export should fail");
    let text = logs.text();
    assert_eq!(text.matches(WARNING).count(), 1, "one warning: {text}");
    let warning = text
        .lines()
        .find(|l| l.contains(WARNING))
        .unwrap_or_default();
    assert!(warning.contains("\"level\":\"WARN\""), "{warning}");
    assert!(
        !text.contains(&endpoint),
        "the endpoint stays out of logs: {text}"
    );
    assert!(!text.contains(BACK), "{text}");
    let scraped = metrics.render();
    assert!(
        scraped.contains("otlp_export_failures_total 2"),
        "both failures counted: {scraped}"
    );

    // A collector comes up on that port: the next export goes through, and that is said.
    let collector = Router::new().route("/v1/traces", post(|| async { "" }));
    let listener = tokio::net::TcpListener::bind(&endpoint).await?;
    tokio::spawn(async move { axum::serve(listener, collector).await });
    assert!(export_a_span(&guard).await?, "the export should go through");
    let text = logs.text();
    assert_eq!(text.matches(BACK).count(), 1, "{text}");
    assert_eq!(text.matches(WARNING).count(), 1, "{text}");
    // Shutting the provider down blocks on its last export.
    tokio::task::spawn_blocking(move || drop(guard)).await?;
    Ok(())
}
