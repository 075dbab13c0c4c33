//! Logs (JSON or pretty, on stdout or a given sink), OpenTelemetry traces over OTLP, W3C trace
//! context propagation, and the Prometheus recorder.

use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, TelemetryConfig};
use crate::outage::{OutageLog, Report};

/// Keeps the trace pipeline alive; dropping it flushes queued spans.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl TelemetryGuard {
    /// Exports the spans queued so far and waits for it (blocking: call it off async threads).
    pub fn flush(&self) -> OTelSdkResult {
        self.provider.force_flush()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// Installs the global subscriber writing to stdout. Call once, at start-up. Pretty logs are
/// coloured only when stdout is a terminal (in a file or a pipe the escape codes are noise) and
/// `NO_COLOR` is unset or empty (no-color.org).
pub fn init(service: &'static str, config: &TelemetryConfig) -> anyhow::Result<TelemetryGuard> {
    use std::io::IsTerminal as _;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    install(
        service,
        config,
        std::io::stdout,
        std::io::stdout().is_terminal() && !no_color,
    )
}

/// Installs the global subscriber writing to `writer` (tests pass a buffer or a sink), without
/// colour.
pub fn init_with_writer<W>(
    service: &'static str,
    config: &TelemetryConfig,
    writer: W,
) -> anyhow::Result<TelemetryGuard>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    install(service, config, writer, false)
}

fn install<W>(
    service: &'static str,
    config: &TelemetryConfig,
    writer: W,
    ansi: bool,
) -> anyhow::Result<TelemetryGuard>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    // The provider always exists so incoming trace context is honoured and trace ids reach the
    // logs; it exports only when an endpoint is configured.
    let mut builder = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service).build());
    if let Some(endpoint) = &config.otlp_endpoint {
        let endpoint = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .build()
            .context("building the OTLP span exporter")?;
        builder = builder.with_batch_exporter(WatchedExporter::new(exporter));
        // Exported at 0 from the start, so that the first failure is an increase.
        prometheus();
        metrics::counter!("otlp_export_failures_total").absolute(0);
    }
    let provider = builder.build();
    let tracer = provider.tracer(service);

    let filter = EnvFilter::try_new(&config.log_filter).with_context(|| {
        format!(
            "invalid configuration: RUST_LOG={:?}: not a valid filter (expected directives \
                 such as info or warn,{}=debug)",
            config.log_filter,
            service.replace('-', "_")
        )
    })?;
    if let Some(word) = silences(&config.log_filter, &service.replace('-', "_")) {
        // Not through the filter that turns it off; on stderr, beside the logs.
        eprintln!(
            "{service}: warning: RUST_LOG={:?} turns off every log line of {service}, errors \
             included: a word alone names a target, and {word:?} is not a level (error, warn, \
             info, debug, trace, off); expected e.g. warn, or info,sqlx=debug",
            config.log_filter
        );
    }
    let fmt_layer = match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_target(true)
            .with_writer(writer)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(writer)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init()
        .context("a global tracing subscriber is already installed")?;
    Ok(TelemetryGuard { provider })
}

/// The word that makes `filter` turn off every log line of the crate `own` by mistake, if it
/// does: a directive without `=` that is not a level names a target (`RUST_LOG=warning` lets
/// through only target `warning`), and no other directive sets a level for everything or names
/// the crate or one of its modules. An explicit `off`, or `sqlx=debug` beside `info`, is meant and passes.
fn silences<'a>(filter: &'a str, own: &str) -> Option<&'a str> {
    let mut mistaken = None;
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        // A level as tracing reads one (a name in any case, or 0 to 5).
        if directive
            .parse::<tracing_subscriber::filter::LevelFilter>()
            .is_ok()
        {
            return None;
        }
        let target = directive
            .split(['[', '='])
            .next()
            .unwrap_or_default()
            .trim();
        if !target.is_empty() && (own.starts_with(target) || target.starts_with(own)) {
            return None;
        }
        if !directive.contains(['=', '[']) {
            mistaken.get_or_insert(directive);
        }
    }
    mistaken
}

/// The OTLP exporter, watched. The exporter retries within its timeout and then drops the
/// batch without a word (the SDK's own report of it is compiled out here), so an unreachable or
/// refusing collector would lose every trace silently. Each failed export is counted in
/// `otlp_export_failures_total`; the first is logged as a warning, again every
/// [`crate::outage::WARN_AGAIN_EVERY`] while exports keep failing, and a line says when they
/// succeed again. The endpoint is not logged: it may carry credentials.
#[derive(Debug)]
struct WatchedExporter<E> {
    inner: E,
    outages: Mutex<OutageLog>,
}

impl<E> WatchedExporter<E> {
    fn new(inner: E) -> Self {
        Self {
            inner,
            outages: Mutex::new(OutageLog::default()),
        }
    }
}

impl<E: SpanExporter> SpanExporter for WatchedExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        if result.is_err() {
            metrics::counter!("otlp_export_failures_total").increment(1);
        }
        let report = self
            .outages
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .observe(result.is_ok(), Instant::now());
        match (report, &result) {
            (Report::Warn, Err(error)) => tracing::warn!(
                %error,
                spans,
                "traces are not reaching the OTLP endpoint (OTEL_EXPORTER_OTLP_ENDPOINT); \
                 spans that cannot be exported are dropped"
            ),
            (Report::Back, _) => tracing::info!("traces reach the OTLP endpoint again"),
            _ => {}
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Histogram buckets, in seconds: fine below a millisecond (rate-limit decisions), coarse above.
const BUCKETS: &[f64] = &[
    0.0001, 0.0002, 0.0003, 0.0004, 0.0005, 0.00075, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.075,
    0.08, 0.085, 0.09, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets of histograms whose name ends in `_batch_size`: item counts, not seconds.
const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0, 1000.0, 5000.0,
];

/// How often recorded histogram samples are folded into their buckets.
///
/// The recorder keeps every sample until upkeep (or a scrape) drains it: without a periodic
/// upkeep, a process nobody scrapes grows by every request it serves (about 24 bytes per sample,
/// several samples per request). Each second's drain bounds that to one second of samples.
pub const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// The process's Prometheus recorder, installed on first use (the `metrics` facade is
/// process-wide, so every app in a process shares it). The first call also starts the
/// recorder's upkeep on a small thread of its own (every [`METRICS_UPKEEP_EVERY`]), so it runs
/// whatever runtime, if any, the caller has.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // The builder refuses only an empty bucket list; should that ever happen, metrics
            // are still served, as summaries, rather than the process failing.
            let builder = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Suffix("_batch_size".into()),
                        BATCH_SIZE_BUCKETS,
                    )
                })
                .unwrap_or_else(|e| {
                    tracing::error!(error = %e, "histogram buckets refused; serving summaries");
                    PrometheusBuilder::new()
                });
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (a test harness): then ours only renders
            // what is recorded through it, which is nothing; that is a wiring bug worth a log.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::error!("a metrics recorder was already installed; /metrics will be empty");
            }
            spawn_upkeep(handle.clone());
            handle
        })
        .clone()
}

/// Drains histogram samples into their buckets every [`METRICS_UPKEEP_EVERY`], for the life
/// of the process.
fn spawn_upkeep(handle: PrometheusHandle) {
    let started = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(METRICS_UPKEEP_EVERY);
                handle.run_upkeep();
            }
        });
    if let Err(e) = started {
        // Scrapes still drain the samples; only an unscraped process grows.
        tracing::error!(error = %e, "could not start the metrics upkeep thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogFormat;

    /// `RUST_LOG=warning` (not a level: a target) turned off every line of the service, and a
    /// scan-service that then failed to start exited 1 without a word.
    #[test]
    fn a_filter_that_silences_the_service_by_mistake_is_found() {
        let own = "scan_service";
        for filter in [
            "warning",
            "verbose",
            "information,sqlx=debug",
            " Warning ",
            "6",
        ] {
            assert!(silences(filter, own).is_some(), "{filter}");
        }
        assert_eq!(silences("sqlx=debug,warning", own), Some("warning"));
        for filter in [
            "info",
            "WARN",
            "off",
            "2",
            "0",
            "warn,sqlx=debug",
            "scan_service",
            "scan_service=debug",
            "scan_service::ratelimit=trace,hyper",
            "scan_service[request]=debug",
            "sqlx=debug",
            "",
        ] {
            assert_eq!(silences(filter, own), None, "{filter}");
        }
    }

    /// The example in the error names the service whose start-up failed (the factory's said
    /// `scan_service=debug`).
    #[test]
    fn a_bad_rust_log_is_explained_with_the_services_own_target() {
        let config = TelemetryConfig {
            log_format: LogFormat::Json,
            log_filter: "info,[".to_owned(),
            otlp_endpoint: None,
        };
        let refused = init_with_writer("factory-service", &config, std::io::sink).err();
        let message = refused.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains("RUST_LOG=\"info,[\"") && message.contains("factory_service=debug"),
            "{message}"
        );
    }
}
