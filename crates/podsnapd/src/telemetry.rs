//! Logging and trace export: the `tracing` subscriber (text or JSON lines on stderr, level from
//! `RUST_LOG`) and, only when an OTLP endpoint is configured, an OpenTelemetry layer that exports
//! podsnapd's spans to a collector over OTLP/gRPC.
//!
//! Without an endpoint nothing OpenTelemetry is installed: no layer, no exporter, no thread, and
//! the gRPC server does not look at the trace context beyond the `trace_id`/`parent_span_id`
//! span fields it always records. With one, spans are batched on the SDK's own thread and sent
//! in the background; a collector that is down or slow costs dropped spans and a warning, never
//! a failed or delayed job.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use tonic::codegen::http::HeaderMap;
use tracing::{Level, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{Config, LogFormat};

/// `service.name` of the exported resource, and the tracer's instrumentation scope.
pub const SERVICE_NAME: &str = "podsnapd";

/// How long a graceful shutdown waits for the last spans to reach the collector.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

/// What [`init`] set up; [`Telemetry::shutdown`] flushes it.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still queued (bounded by a few seconds) and stops the exporter.
    /// Call it outside the async runtime's worker threads while the runtime is still alive:
    /// the gRPC channel to the collector is driven by that runtime.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown_with_timeout(SHUTDOWN_FLUSH) {
                tracing::warn!(error = %e, "OTLP trace export: not every span was flushed at shutdown");
            }
        }
    }
}

/// Installs the global subscriber for `cfg`: logging always, OTLP trace export when
/// `cfg.otlp_endpoint` is set. Must run inside the Tokio runtime's context (`Runtime::enter`)
/// when exporting, since the exporter's gRPC channel is spawned on it.
pub fn init(cfg: &Config) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = match &cfg.otlp_endpoint {
        Some(endpoint) => Some(provider(endpoint, &cfg.node_name)?),
        None => None,
    };
    let tracer = provider.as_ref().map(|p| p.tracer(SERVICE_NAME));
    subscriber(cfg.log_format, filter, tracer)
        .try_init()
        .context("installing the log subscriber")?;
    if let Some(endpoint) = &cfg.otlp_endpoint {
        tracing::info!(%endpoint, "exporting trace spans over OTLP/gRPC");
    }
    Ok(Telemetry { provider })
}

/// The subscriber: with `tracer`, log lines filtered by `filter` plus an OpenTelemetry layer
/// for podsnap's own spans at INFO and above; without it, exactly the log subscriber.
pub fn subscriber(
    format: LogFormat,
    filter: EnvFilter,
    tracer: Option<SdkTracer>,
) -> tracing::Dispatch {
    let registry = tracing_subscriber::registry();
    match tracer {
        None => registry.with(filter).with(log_layer(format)).into(),
        Some(tracer) => {
            // Only podsnap's spans: never the exporter's own gRPC client (tonic, hyper, h2),
            // whose spans would otherwise be exported in turn. Independent of RUST_LOG, so
            // quieter logs do not thin out the traces.
            let podsnap = Targets::new()
                .with_target("podsnapd", Level::INFO)
                .with_target("podsnap_store", Level::INFO)
                .with_target("podsnap_runtime", Level::INFO);
            registry
                .with(log_layer(format).with_filter(filter))
                .with(
                    tracing_opentelemetry::layer()
                        .with_tracer(tracer)
                        .with_filter(podsnap),
                )
                .into()
        }
    }
}

fn log_layer<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => layer.json().flatten_event(true).boxed(),
        LogFormat::Text => layer.boxed(),
    }
}

/// A tracer provider with a batch OTLP/gRPC exporter to `endpoint`. An `https://` endpoint
/// is verified against the system's roots plus, if set, the CA certificate (PEM) named by
/// `OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE` or `OTEL_EXPORTER_OTLP_CERTIFICATE`. The other standard
/// `OTEL_*` variables (headers, timeout, compression, `OTEL_BSP_*` batching,
/// `OTEL_RESOURCE_ATTRIBUTES`) apply as the OpenTelemetry SDK defines them.
pub fn provider(endpoint: &str, node_name: &str) -> anyhow::Result<SdkTracerProvider> {
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint);
    if endpoint.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new().with_enabled_roots();
        // A collector with a private CA: the standard OTLP variable names its PEM file.
        if let Some(ca) = [
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        ]
        .iter()
        .find_map(|v| std::env::var_os(v).filter(|p| !p.is_empty()))
        {
            let pem = std::fs::read(&ca).with_context(|| {
                format!(
                    "reading the OTLP collector's CA certificate {}",
                    ca.to_string_lossy()
                )
            })?;
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
        }
        exporter = exporter.with_tls_config(tls);
    }
    let exporter = exporter
        .build()
        .with_context(|| format!("setting up OTLP trace export to {endpoint}"))?;
    let resource = Resource::builder()
        .with_service_name(SERVICE_NAME)
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("host.name", node_name.to_string()),
        ])
        .build();
    Ok(SdkTracerProvider::builder()
        .with_resource(resource)
        .with_batch_exporter(Reporting::new(exporter))
        .build())
}

/// Makes the span of an incoming gRPC call a server span named after the method, and a child
/// of the caller's span when the headers carry a valid W3C `traceparent` (and `tracestate`).
/// Only called when spans are exported.
pub fn continue_trace(span: &tracing::Span, method: &str, headers: &HeaderMap) {
    span.record("otel.name", method.trim_start_matches('/'));
    span.record("otel.kind", "server");
    let cx = TraceContextPropagator::new().extract(&Headers(headers));
    if cx.span().span_context().is_valid() {
        // Fails only for a span that already started, which this one has not.
        let _ = span.set_parent(cx);
    }
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Passes spans to the OTLP exporter and reports failures: one warning when export starts
/// failing (collector down, refused, timed out), one line when it works again.
#[derive(Debug)]
struct Reporting<E> {
    inner: E,
    failing: AtomicBool,
}

impl<E> Reporting<E> {
    fn new(inner: E) -> Self {
        Reporting {
            inner,
            failing: AtomicBool::new(false),
        }
    }
}

impl<E: SpanExporter> SpanExporter for Reporting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let res = self.inner.export(batch).await;
        match &res {
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, spans, "OTLP trace export failed; spans are dropped until the collector accepts them again");
                }
            }
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("OTLP trace export works again");
                }
            }
        }
        res
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn shutdown(&self) -> OTelSdkResult {
        self.inner.shutdown()
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span_has_otel_context(dispatch: &tracing::Dispatch) -> bool {
        tracing::dispatcher::with_default(dispatch, || {
            let span = tracing::info_span!(target: "podsnapd::engine", "checkpoint");
            let id = span.id().expect("an enabled span");
            tracing_opentelemetry::get_otel_context(&id, dispatch).is_some()
        })
    }

    #[test]
    fn without_a_tracer_no_opentelemetry_layer_is_installed() {
        let d = subscriber(LogFormat::Text, EnvFilter::new("info"), None);
        assert!(!span_has_otel_context(&d));
    }

    #[test]
    fn with_a_tracer_podsnap_spans_get_an_opentelemetry_context() {
        let provider = SdkTracerProvider::builder().build();
        let d = subscriber(
            LogFormat::Json,
            // Quiet logs do not disable exported spans.
            EnvFilter::new("warn"),
            Some(provider.tracer(SERVICE_NAME)),
        );
        assert!(span_has_otel_context(&d));
    }

    #[test]
    fn a_traceparent_becomes_the_parent_of_the_call_span() {
        let provider = SdkTracerProvider::builder().build();
        let d = subscriber(
            LogFormat::Text,
            EnvFilter::new("info"),
            Some(provider.tracer(SERVICE_NAME)),
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        tracing::dispatcher::with_default(&d, || {
            let span = tracing::info_span!(
                target: "podsnapd::server",
                "grpc",
                otel.name = tracing::field::Empty,
                otel.kind = tracing::field::Empty
            );
            continue_trace(&span, "/podsnap.v1.Podsnap/ListJobs", &headers);
            let cx = span.context();
            let sc = cx.span().span_context().clone();
            assert_eq!(
                sc.trace_id().to_string(),
                "4bf92f3577b34da6a3ce929d0e0e4736"
            );
            assert!(sc.is_sampled());
        });
    }
}
