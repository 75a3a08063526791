//! Per-request telemetry for every HTTP service: a span per request (continuing the
//! caller's W3C trace context when it sends one), and two metrics with low-cardinality
//! labels: `http_requests_total{method,route,status}` and
//! `http_request_duration_seconds{method,route}`.

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use tracing::Instrument;

/// Wraps every route of `router` with the span and the metrics.
pub fn instrument(router: Router) -> Router {
    router.layer(middleware::from_fn(observe))
}

async fn observe(request: Request, next: Next) -> Response {
    // The route template (`/v1/customers/{id}/risk`), never the raw path: bounded labels.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    // `otel.name` and `otel.kind` name the exported span as HTTP's conventions do
    // (`POST /v1/transactions`, a server span).
    let span = tracing::info_span!(
        "http request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.method = %method,
        http.route = %route,
        http.status = tracing::field::Empty
    );
    let received: Vec<(&str, &str)> = fraud_telemetry::propagation::TRACE_HEADERS
        .iter()
        .filter_map(|name| Some((*name, request.headers().get(*name)?.to_str().ok()?)))
        .collect();
    fraud_telemetry::propagation::follow(&span, &received);
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.status", status);
    let labels = [
        ("method", method),
        ("route", route),
        ("status", status.to_string()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels[..2])
        .record(started.elapsed().as_secs_f64());
    response
}
