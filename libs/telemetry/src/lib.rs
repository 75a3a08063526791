//! Telemetry for every service: logs, traces and metrics, set up in one call.
//!
//! [`init`] installs the `tracing` subscriber (pretty or JSON logs under the log filter,
//! and an OpenTelemetry layer exporting `info` spans over OTLP/HTTP when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` variable is set, whatever the log filter) and the W3C
//! trace-context propagator.
//! [`metrics`] owns the process's Prometheus recorder, rendered by `/metrics`.
//! [`propagation`] carries the trace context through Kafka and AMQP headers, so an
//! alert traces back to the POST that caused it.

pub mod metrics;
pub mod propagation;

use fraud_config::{LogFormat, TelemetryConfig};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The standard variable that switches OTLP export on.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry.log_filter `{filter}` is not a valid filter: {reason}")]
    InvalidFilter { filter: String, reason: String },
    #[error("failed to build the OTLP span exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("a global tracing subscriber is already installed: {0}")]
    AlreadyInstalled(#[from] tracing_subscriber::util::TryInitError),
}

/// Keeps the trace exporter alive; dropping it flushes the spans still buffered.
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.tracer_provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("failed to flush traces at shutdown: {error}");
        }
    }
}

/// Installs logging, tracing export and the propagator for `service_name`.
pub fn init(
    service_name: &'static str,
    config: &TelemetryConfig,
) -> Result<TelemetryGuard, TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(from_env) if !from_env.trim().is_empty() => parse_filter(&from_env)?,
        _ => parse_filter(&config.log_filter)?,
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let tracer_provider = match std::env::var(OTLP_ENDPOINT_ENV) {
        Ok(endpoint) if !endpoint.trim().is_empty() => Some(otlp_tracer_provider(service_name)?),
        _ => None,
    };
    // Spans are exported at `info` whatever the log filter says: a quiet log must not
    // break the trace (the context a hop sends on is its span's).
    let otel_layer = tracer_provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service_name))
            .with_filter(LevelFilter::INFO)
    });
    if let Some(provider) = &tracer_provider {
        opentelemetry::global::set_tracer_provider(provider.clone());
    }

    let logs = match config.log_format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer().with_filter(filter).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_filter(filter)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(logs)
        .with(otel_layer)
        .try_init()?;
    metrics::install();
    Ok(TelemetryGuard { tracer_provider })
}

fn parse_filter(filter: &str) -> Result<EnvFilter, TelemetryError> {
    EnvFilter::try_new(filter).map_err(|error| TelemetryError::InvalidFilter {
        filter: filter.to_owned(),
        reason: error.to_string(),
    })
}

fn otlp_tracer_provider(service_name: &'static str) -> Result<SdkTracerProvider, TelemetryError> {
    // The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT (and the other standard variables).
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_filter_is_a_clear_error() {
        let error = parse_filter("info,[[[").expect_err("invalid");
        assert!(
            error.to_string().contains("telemetry.log_filter"),
            "{error}"
        );
    }
}
